/*
 * test_rt_grpc.c - the gRPC front end against the reference client
 * (Debian python3-grpcio, tests/fixtures/grpc_client.py): unary and
 * streaming answers, error statuses, client deadlines that cancel the
 * request, and concurrent streams, with a colocated worker process that
 * speaks the control-plane protocol (the scripted worker of test_rt_sched.c).
 */
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rt_core.h"
#include "rt_grpc.h"
#include "tt.h"

extern char **environ;

static bool core_ready(rt_core_t *core, uv_loop_t *loop, long ms) {
    uint64_t t0 = cm_time_mono_ms();
    while (!rt_core_ready(core)) {
        if ((long)(cm_time_mono_ms() - t0) > ms) return false;
        uv_run(loop, UV_RUN_NOWAIT);
        cm_time_sleep_ns(2000000);
    }
    return true;
}

TT_TEST_T(rt_grpc, reference_client, 120) {
    if (access("/usr/bin/python3", X_OK) != 0) TT_SKIP("no /usr/bin/python3");
    uv_loop_t loop;
    uv_loop_init(&loop);
    rt_core_config_t cfg = {.served_model_name = "tiny",
                            .cp_bind = "tcp://127.0.0.1:*",
                            .heartbeat_interval_ms = 100,
                            .missed_heartbeats = 5};
    rt_core_t *core = rt_core_new(&loop, &cfg);
    TT_ASSERT(core);
    rt_grpc_t *g;
    TT_ASSERT_EQ_INT(rt_grpc_start(&loop, core, "127.0.0.1", 0, &g), CM_OK);
    int report[2];
    TT_ASSERT(pipe(report) == 0);
    char fd[16];
    snprintf(fd, sizeof fd, "%d", report[1]);
    /* role 3 = colocated, no delay, not silent, no crash, batch 32. */
    pid_t worker = tt_spawn("sched_worker", (const char *[]){rt_core_cp_address(core), "co0", "3",
                                                             "0", "0", "0", "32", fd, NULL});
    TT_ASSERT_MSG(core_ready(core, &loop, 5000), "worker did not register");

    char target[64], proto_dir[512];
    snprintf(target, sizeof target, "127.0.0.1:%d", rt_grpc_port(g));
    snprintf(proto_dir, sizeof proto_dir, "%s/proto", tt_root());
    char script[512];
    snprintf(script, sizeof script, "%s/tests/fixtures/grpc_client.py", tt_root());
    char *argv[] = {"/usr/bin/python3", script, target, proto_dir, (char *)tt_tmpdir(), NULL};
    pid_t client;
    TT_ASSERT(posix_spawn(&client, argv[0], NULL, NULL, argv, environ) == 0);
    int status = 0;
    uint64_t t0 = cm_time_mono_ms();
    while (waitpid(client, &status, WNOHANG) == 0) {
        if (cm_time_mono_ms() - t0 > 90000) {
            kill(client, SIGKILL);
            waitpid(client, &status, 0);
            break;
        }
        uv_run(&loop, UV_RUN_NOWAIT);
        cm_time_sleep_ns(500000);
    }
    kill(worker, SIGKILL);
    waitpid(worker, NULL, 0);
    rt_grpc_stop(g);
    rt_core_free(core);
    uv_run(&loop, UV_RUN_DEFAULT);
    TT_ASSERT_EQ_INT(uv_loop_close(&loop), 0);
    close(report[0]);
    close(report[1]);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code == 77) TT_SKIP("grpcio or protoc not installed (scripts/install-deps.sh)");
    TT_ASSERT_MSG(code == 0, "reference client failed with status %d (see output above)", code);
}
