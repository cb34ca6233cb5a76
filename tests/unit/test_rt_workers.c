/*
 * test_rt_workers.c - the router core's control plane against worker
 * agents in real child processes over loopback TCP: registration makes the
 * router ready, kill -9 is noticed through missed heartbeats, SIGTERM
 * deregisters at once, a wrong model is refused with a reason, and workers
 * re-register by themselves after a router restart.
 */
#include <signal.h>
#include <unistd.h>
#include <sys/wait.h>
#include <zmq.h>

#include "cm_cp_agent.h"
#include "rt_core.h"
#include "tt.h"

typedef struct {
    uv_loop_t *loop;
    cm_cp_agent_t *agent;
    uv_signal_t sig;
    int registrations;
    int exit_code;
} child_t;

static void child_registered(void *ud) { ((child_t *)ud)->registrations++; }

static void child_refused(void *ud, const char *reason) {
    child_t *c = ud;
    c->exit_code = strstr(reason, "serves model") ? 3 : 4;
    uv_signal_stop(&c->sig);
    uv_close((uv_handle_t *)&c->sig, NULL);
    cm_cp_agent_stop(c->agent, "refused");
}

static void child_fill(void *ud, Tandem__Cp__Heartbeat *hb) {
    hb->free_blocks = 10;
    hb->used_blocks = 6;
}

static void child_sigterm(uv_signal_t *s, int signum) {
    child_t *c = s->data;
    uv_signal_stop(s);
    uv_close((uv_handle_t *)s, NULL);
    cm_cp_agent_stop(c->agent, "SIGTERM");
}

/* A worker process: registers and heartbeats until SIGTERM or refusal. */
static int run_worker(const char *router, const char *model, const char *id) {
    void *z = zmq_ctx_new();
    uv_loop_t loop;
    uv_loop_init(&loop);
    child_t c = {.loop = &loop};
    cm_cp_agent_config_t cfg = {.router = router,
                                .worker_id = id,
                                .role = TANDEM__CP__ROLE__ROLE_COLOCATED,
                                .model = model,
                                .fingerprint = 0x5eed,
                                .block_size = 16,
                                .total_blocks = 16,
                                .max_batch = 4,
                                .max_context = 512,
                                .vocab_size = 1000,
                                .register_retry_ms = 50};
    cm_cp_limits_default(&cfg.limits);
    cm_cp_agent_callbacks_t cb = {
        .on_registered = child_registered, .on_refused = child_refused, .fill_load = child_fill};
    uv_signal_init(&loop, &c.sig);
    c.sig.data = &c;
    uv_signal_start(&c.sig, child_sigterm, SIGTERM);
    if (cm_cp_agent_new(&loop, z, &cfg, &cb, &c, &c.agent) != CM_OK) return 20;
    uv_run(&loop, UV_RUN_DEFAULT); /* ends when the agent and signal closed */
    uv_loop_close(&loop);
    zmq_ctx_term(z); /* lets the Deregister leave (linger) */
    return c.exit_code;
}

TT_CHILD(rt_worker) { return argc == 3 ? run_worker(argv[0], argv[1], argv[2]) : 99; }

static pid_t spawn_worker(const char *router, const char *model, const char *id) {
    return tt_spawn("rt_worker", (const char *[]){router, model, id, NULL});
}

/* Turns the loop until @pred(core) is @want or @ms pass; returns elapsed
 * ms or -1 on timeout. */
static long wait_ready(uv_loop_t *loop, rt_core_t *core, bool want, long ms) {
    uint64_t t0 = cm_time_mono_ms();
    while (rt_core_ready(core) != want) {
        if ((long)(cm_time_mono_ms() - t0) > ms) return -1;
        uv_run(loop, UV_RUN_NOWAIT);
        cm_time_sleep_ns(2000000);
    }
    return (long)(cm_time_mono_ms() - t0);
}

static rt_core_t *make_core(uv_loop_t *loop, const char *bind, uint32_t missed) {
    rt_core_config_t cfg = {.served_model_name = "tiny",
                            .cp_bind = bind,
                            .heartbeat_interval_ms = 100,
                            .missed_heartbeats = missed};
    return rt_core_new(loop, &cfg);
}

static void free_core(uv_loop_t *loop, rt_core_t *core) {
    rt_core_free(core);
    uv_run(loop, UV_RUN_DEFAULT);
}

static int reap(pid_t pid, long ms) {
    int status;
    uint64_t t0 = cm_time_mono_ms();
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if ((long)(cm_time_mono_ms() - t0) > ms) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        cm_time_sleep_ns(5000000);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TT_TEST_T(rt_workers, register_then_kill9_expires, 30) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    rt_core_t *core = make_core(&loop, "tcp://127.0.0.1:*", 3);
    TT_ASSERT(core);
    TT_ASSERT(!rt_core_ready(core));
    char addr[256];
    snprintf(addr, sizeof addr, "%s", rt_core_cp_address(core));
    pid_t pid = spawn_worker(addr, "tiny", "w0");
    long t = wait_ready(&loop, core, true, 5000);
    TT_ASSERT_MSG(t >= 0, "worker did not register within 5 s");
    char metrics[4096];
    rt_core_metrics(core, metrics, sizeof metrics);
    TT_ASSERT(strstr(metrics, "tandem_workers{role=\"colocated\"} 1"));
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    /* 3 missed 100 ms heartbeats + one expiry tick: well under 1 s. */
    t = wait_ready(&loop, core, false, 2000);
    TT_ASSERT_MSG(t >= 0, "dead worker still counted after 2 s");
    printf("dead worker dropped after %ld ms\n", t);
    TT_ASSERT(t >= 150); /* not before heartbeats were actually missed */
    free_core(&loop, core);
    TT_ASSERT_EQ_INT(uv_loop_close(&loop), 0);
}

TT_TEST_T(rt_workers, sigterm_deregisters_immediately, 30) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    /* Expiry would take 50 x 100 ms = 5 s; deregistration must be faster. */
    rt_core_t *core = make_core(&loop, "tcp://127.0.0.1:*", 50);
    TT_ASSERT(core);
    pid_t pid = spawn_worker(rt_core_cp_address(core), "tiny", "w1");
    TT_ASSERT_MSG(wait_ready(&loop, core, true, 5000) >= 0, "no registration within 5 s");
    kill(pid, SIGTERM);
    long t = wait_ready(&loop, core, false, 2000);
    TT_ASSERT_MSG(t >= 0, "SIGTERM'd worker still counted after 2 s");
    printf("deregistered after %ld ms\n", t);
    TT_ASSERT_EQ_INT(reap(pid, 5000), 0);
    free_core(&loop, core);
    TT_ASSERT_EQ_INT(uv_loop_close(&loop), 0);
}

/* A worker stopped before the router answered its Register (here: the
 * router's loop does not run until the worker has exited) deregisters
 * anyway: the router drops it at once, not after 50 missed heartbeats. */
TT_TEST_T(rt_workers, sigterm_before_register_reply_deregisters, 30) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    rt_core_t *core = make_core(&loop, "tcp://127.0.0.1:*", 50);
    TT_ASSERT(core);
    pid_t pid = spawn_worker(rt_core_cp_address(core), "tiny", "w2");
    cm_time_sleep_ns(500000000ull); /* its Register waits in the router's socket */
    kill(pid, SIGTERM);
    TT_ASSERT_EQ_INT(reap(pid, 5000), 0);
    uint64_t t0 = cm_time_mono_ms();
    bool seen = false;
    while (cm_time_mono_ms() - t0 < 1000) {
        uv_run(&loop, UV_RUN_NOWAIT);
        seen = seen || rt_core_ready(core);
        cm_time_sleep_ns(2000000);
    }
    TT_ASSERT_MSG(!rt_core_ready(core), "worker stopped before its reply still counted after 1 s");
    printf("register seen by the router: %s\n", seen ? "yes" : "no");
    free_core(&loop, core);
    TT_ASSERT_EQ_INT(uv_loop_close(&loop), 0);
}

TT_TEST_T(rt_workers, wrong_model_is_refused_with_reason, 30) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    rt_core_t *core = make_core(&loop, "tcp://127.0.0.1:*", 3);
    TT_ASSERT(core);
    pid_t pid = spawn_worker(rt_core_cp_address(core), "other", "w2");
    int code = -1;
    uint64_t t0 = cm_time_mono_ms();
    while (cm_time_mono_ms() - t0 < 5000) {
        uv_run(&loop, UV_RUN_NOWAIT);
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
            break;
        }
        cm_time_sleep_ns(2000000);
    }
    if (code < 0) kill(pid, SIGKILL), waitpid(pid, NULL, 0);
    TT_ASSERT_EQ_INT(code, 3); /* the agent saw "serves model" and gave up */
    TT_ASSERT(!rt_core_ready(core));
    free_core(&loop, core);
    TT_ASSERT_EQ_INT(uv_loop_close(&loop), 0);
}

TT_TEST_T(rt_workers, workers_reregister_after_router_restart, 30) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    rt_core_t *core = make_core(&loop, "tcp://127.0.0.1:*", 3);
    TT_ASSERT(core);
    char addr[256];
    snprintf(addr, sizeof addr, "%s", rt_core_cp_address(core));
    pid_t pid = spawn_worker(addr, "tiny", "w3");
    TT_ASSERT_MSG(wait_ready(&loop, core, true, 5000) >= 0, "no registration within 5 s");
    /* The router restarts on the same address and knows nobody. */
    free_core(&loop, core);
    core = make_core(&loop, addr, 3);
    TT_ASSERT_MSG(core, "could not rebind %s", addr);
    TT_ASSERT(!rt_core_ready(core));
    long t = wait_ready(&loop, core, true, 5000);
    TT_ASSERT_MSG(t >= 0, "worker did not re-register within 5 s of the restart");
    printf("re-registered %ld ms after the router restart\n", t);
    kill(pid, SIGTERM);
    TT_ASSERT_EQ_INT(reap(pid, 5000), 0);
    free_core(&loop, core);
    TT_ASSERT_EQ_INT(uv_loop_close(&loop), 0);
}
