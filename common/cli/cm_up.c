/*
 * cm_up.c - `tandem up`: launches a local cluster (one router plus prefill,
 * decode and/or colocated workers, each its own `tandem` process), waits
 * until the router reports ready, prints a ready-to-paste curl, restarts
 * workers that crash (with backoff), and on Ctrl-C / SIGTERM stops
 * everything cleanly: workers first (they drain and deregister), then the
 * router, each stage with a deadline after which stragglers are killed.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "cm_cli.h"

enum { UP_MAX_CHILDREN = 64, UP_MAX_ARGS = 48 };

typedef struct up up_t;

typedef struct {
    up_t *up;
    char name[48]; /* "router", "prefill-0", ... */
    char *argv[UP_MAX_ARGS];
    int argc;
    char argbuf[UP_MAX_ARGS][256];
    uv_process_t proc;
    bool running, is_router;
    unsigned restarts;
    uint64_t backoff_ms;
    uv_timer_t restart_timer;
} up_child_t;

struct up {
    uv_loop_t *loop;
    up_child_t children[UP_MAX_CHILDREN];
    int n;
    int stage; /* 0 starting/running, 1 stopping workers, 2 stopping router, 3 done */
    int exit_code;
    bool ready, restart;
    uint64_t t_start;
    uv_signal_t sigint, sigterm;
    uv_timer_t poll_timer, stage_timer;
    /* Readiness probe. */
    uv_tcp_t probe;
    uv_connect_t probe_conn;
    uv_write_t probe_write;
    bool probing;
    char probe_buf[512];
    size_t probe_len;
};

/* Flags. */
static const char *g_model, *g_name, *g_host, *g_backend, *g_worker_args;
static int64_t g_port, g_cp_port, g_prefill, g_decode, g_colocated;
static uint64_t g_ready_timeout_ms, g_stop_timeout_ms;
static bool g_restart;

static const cm_flag_t k_up_flags[] = {
    {.name = "model",
     .type = CM_FLAG_STRING,
     .dst = &g_model,
     .def = "models/demo",
     .help = "model directory (Hugging Face layout)"},
    {.name = "served-model-name",
     .type = CM_FLAG_STRING,
     .dst = &g_name,
     .help = "name clients use (default: the model directory's name)"},
    {.name = "host",
     .type = CM_FLAG_STRING,
     .dst = &g_host,
     .def = "127.0.0.1",
     .help = "HTTP listen host"},
    {.name = "port",
     .type = CM_FLAG_INT,
     .dst = &g_port,
     .def = "8000",
     .help = "HTTP port",
     .min = 1,
     .max = 65535},
    {.name = "cp-port",
     .type = CM_FLAG_INT,
     .dst = &g_cp_port,
     .def = "5557",
     .help = "control-plane (ZeroMQ) port on 127.0.0.1",
     .min = 1,
     .max = 65535},
    {.name = "prefill",
     .type = CM_FLAG_INT,
     .dst = &g_prefill,
     .def = "1",
     .help = "prefill workers",
     .min = 0,
     .max = 16},
    {.name = "decode",
     .type = CM_FLAG_INT,
     .dst = &g_decode,
     .def = "1",
     .help = "decode workers",
     .min = 0,
     .max = 16},
    {.name = "colocated",
     .type = CM_FLAG_INT,
     .dst = &g_colocated,
     .def = "0",
     .help = "colocated workers (both phases)",
     .min = 0,
     .max = 16},
    {.name = "backend",
     .type = CM_FLAG_CHOICE,
     .dst = &g_backend,
     .def = "cpu",
     .choices = "ref|cpu|cuda",
     .help = "compute backend of the workers"},
    {.name = "worker-args",
     .type = CM_FLAG_STRING,
     .dst = &g_worker_args,
     .def = "",
     .help = "extra flags for every worker, space-separated"},
    {.name = "ready-timeout",
     .type = CM_FLAG_DURATION,
     .dst = &g_ready_timeout_ms,
     .def = "120s",
     .help = "give up if the cluster is not ready by then"},
    {.name = "stop-timeout",
     .type = CM_FLAG_DURATION,
     .dst = &g_stop_timeout_ms,
     .def = "10s",
     .help = "per stage of shutdown, before stragglers are killed"},
    {.name = "restart",
     .type = CM_FLAG_BOOL,
     .dst = &g_restart,
     .def = "true",
     .help = "restart workers that exit unexpectedly"},
    {0},
};

static void up_arg(up_child_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void up_arg(up_child_t *c, const char *fmt, ...) {
    if (c->argc >= UP_MAX_ARGS - 1) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->argbuf[c->argc], sizeof c->argbuf[c->argc], fmt, ap);
    va_end(ap);
    c->argv[c->argc] = c->argbuf[c->argc];
    c->argc++;
    c->argv[c->argc] = NULL;
}

static void start_child(up_child_t *c);
static void advance(up_t *up);

static void on_handle_closed(uv_handle_t *h) { (void)h; }

static void on_restart_timer(uv_timer_t *t) {
    up_child_t *c = t->data;
    if (c->up->stage == 0) start_child(c);
}

static void on_child_exit(uv_process_t *p, int64_t status, int sig) {
    up_child_t *c = p->data;
    up_t *up = c->up;
    c->running = false;
    uv_close((uv_handle_t *)p, on_handle_closed);
    if (up->stage > 0) {
        advance(up);
        return;
    }
    if (sig)
        cm_log_warn("up", "%s was killed by signal %d", c->name, sig);
    else
        cm_log_warn("up", "%s exited with status %lld", c->name, (long long)status);
    /* Not a crash: this build or these flags cannot run it. */
    if (!sig && (status == CM_EXIT_UNAVAILABLE || status == CM_EXIT_USAGE)) {
        fprintf(stderr, "tandem up: 'tandem %s' %s; stopping the cluster\n", c->argv[1],
                status == CM_EXIT_UNAVAILABLE ? "is not available in this build"
                                              : "rejected its flags");
        up->exit_code = status == CM_EXIT_UNAVAILABLE ? CM_EXIT_UNAVAILABLE : CM_EXIT_FAILURE;
        up->stage = 1;
        advance(up);
        return;
    }
    if (c->is_router || !up->restart) {
        fprintf(stderr, "tandem up: %s stopped; stopping the cluster\n", c->name);
        up->exit_code = CM_EXIT_FAILURE;
        up->stage = 1;
        advance(up);
        return;
    }
    c->restarts++;
    c->backoff_ms = c->backoff_ms ? c->backoff_ms * 2 : 1000;
    if (c->backoff_ms > 30000) c->backoff_ms = 30000;
    cm_log_info("up", "restarting %s in %llu ms (restart %u)", c->name,
                (unsigned long long)c->backoff_ms, c->restarts);
    uv_timer_start(&c->restart_timer, on_restart_timer, c->backoff_ms, 0);
}

static void start_child(up_child_t *c) {
    static char self[4096];
    if (!self[0]) {
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n > 0) self[n] = '\0';
    }
    uv_stdio_container_t stdio[3] = {{.flags = UV_IGNORE},
                                     {.flags = UV_INHERIT_FD, .data.fd = 1},
                                     {.flags = UV_INHERIT_FD, .data.fd = 2}};
    uv_process_options_t opt = {
        .file = self, .args = c->argv, .exit_cb = on_child_exit, .stdio_count = 3, .stdio = stdio};
    c->proc.data = c;
    int rc = uv_spawn(c->up->loop, &c->proc, &opt);
    if (rc != 0) {
        fprintf(stderr, "tandem up: cannot start %s: %s\n", c->name, uv_strerror(rc));
        uv_close((uv_handle_t *)&c->proc, on_handle_closed);
        c->up->exit_code = CM_EXIT_FAILURE;
        c->up->stage = 1;
        advance(c->up);
        return;
    }
    c->running = true;
    cm_log_info("up", "started %s (pid %d)", c->name, c->proc.pid);
}

static void signal_children(up_t *up, bool routers, int sig) {
    for (int i = 0; i < up->n; i++) {
        up_child_t *c = &up->children[i];
        if (c->running && c->is_router == routers) uv_process_kill(&c->proc, sig);
    }
}

static bool any_running(up_t *up, bool routers) {
    for (int i = 0; i < up->n; i++)
        if (up->children[i].running && up->children[i].is_router == routers) return true;
    return false;
}

static void on_stage_timer(uv_timer_t *t) {
    up_t *up = t->data;
    /* Deadline of the current stage: kill what is left of it. */
    if (up->stage == 1 && any_running(up, false)) {
        cm_log_warn("up", "workers did not stop within the deadline: killing them");
        signal_children(up, false, SIGKILL);
    } else if (up->stage == 2 && any_running(up, true)) {
        cm_log_warn("up", "router did not stop within the deadline: killing it");
        signal_children(up, true, SIGKILL);
    }
}

static void close_all(up_t *up) {
    uv_close((uv_handle_t *)&up->sigint, on_handle_closed);
    uv_close((uv_handle_t *)&up->sigterm, on_handle_closed);
    uv_close((uv_handle_t *)&up->poll_timer, on_handle_closed);
    uv_close((uv_handle_t *)&up->stage_timer, on_handle_closed);
    if (up->probing) uv_close((uv_handle_t *)&up->probe, on_handle_closed);
    for (int i = 0; i < up->n; i++)
        uv_close((uv_handle_t *)&up->children[i].restart_timer, on_handle_closed);
}

/* Moves shutdown forward: workers, then the router, then done. */
static void advance(up_t *up) {
    if (up->stage == 1) {
        uv_timer_stop(&up->poll_timer);
        for (int i = 0; i < up->n; i++) uv_timer_stop(&up->children[i].restart_timer);
        if (any_running(up, false)) {
            if (!uv_is_active((uv_handle_t *)&up->stage_timer)) {
                signal_children(up, false, SIGTERM);
                uv_timer_start(&up->stage_timer, on_stage_timer, g_stop_timeout_ms, 0);
            }
            return;
        }
        uv_timer_stop(&up->stage_timer);
        up->stage = 2;
    }
    if (up->stage == 2) {
        if (any_running(up, true)) {
            if (!uv_is_active((uv_handle_t *)&up->stage_timer)) {
                signal_children(up, true, SIGTERM);
                uv_timer_start(&up->stage_timer, on_stage_timer, g_stop_timeout_ms, 0);
            }
            return;
        }
        uv_timer_stop(&up->stage_timer);
        up->stage = 3;
        close_all(up);
    }
}

static void on_signal(uv_signal_t *s, int signum) {
    up_t *up = s->data;
    if (up->stage == 0) {
        fprintf(stderr, "\ntandem up: stopping (signal %d)...\n", signum);
        up->stage = 1;
        advance(up);
    } else if (up->stage < 3) {
        /* A second Ctrl-C: do not wait for the deadlines. */
        signal_children(up, false, SIGKILL);
        signal_children(up, true, SIGKILL);
    }
}

/* --- readiness probe: GET /ready on the router ---------------------------- */

static void probe_done(up_t *up, bool ready);

static void on_probe_closed(uv_handle_t *h) {
    up_t *up = h->data;
    up->probing = false;
}

static void on_probe_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
    up_t *up = h->data;
    b->base = up->probe_buf + up->probe_len;
    b->len = sizeof up->probe_buf - 1 - up->probe_len;
}

static void on_probe_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
    up_t *up = s->data;
    if (n > 0) {
        up->probe_len += (size_t)n;
        up->probe_buf[up->probe_len] = '\0';
        if (!strstr(up->probe_buf, "\r\n") && up->probe_len < sizeof up->probe_buf - 1) return;
    }
    bool ready = strncmp(up->probe_buf, "HTTP/1.1 200", 12) == 0 ||
                 strncmp(up->probe_buf, "HTTP/1.0 200", 12) == 0;
    uv_read_stop(s);
    uv_close((uv_handle_t *)s, on_probe_closed);
    probe_done(up, ready);
}

static void on_probe_write(uv_write_t *w, int status) {
    (void)w;
    (void)status;
}

static void on_probe_connect(uv_connect_t *req, int status) {
    up_t *up = req->handle->data;
    if (status != 0) {
        uv_close((uv_handle_t *)req->handle, on_probe_closed);
        return;
    }
    static char get[128];
    snprintf(get, sizeof get, "GET /ready HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n",
             g_host);
    uv_buf_t b = uv_buf_init(get, (unsigned)strlen(get));
    uv_write(&up->probe_write, req->handle, &b, 1, on_probe_write);
    uv_read_start(req->handle, on_probe_alloc, on_probe_read);
}

static void on_poll_timer(uv_timer_t *t) {
    up_t *up = t->data;
    if (up->stage != 0 || up->ready) return;
    if (cm_time_mono_ms() - up->t_start > g_ready_timeout_ms) {
        fprintf(stderr, "tandem up: the cluster was not ready within %llu ms; stopping\n",
                (unsigned long long)g_ready_timeout_ms);
        up->exit_code = CM_EXIT_FAILURE;
        up->stage = 1;
        advance(up);
        return;
    }
    if (up->probing) return;
    struct sockaddr_in addr;
    if (uv_ip4_addr(strcmp(g_host, "0.0.0.0") == 0 ? "127.0.0.1" : g_host, (int)g_port, &addr))
        return;
    uv_tcp_init(up->loop, &up->probe);
    up->probe.data = up;
    up->probing = true;
    up->probe_len = 0;
    up->probe_buf[0] = '\0';
    if (uv_tcp_connect(&up->probe_conn, &up->probe, (const struct sockaddr *)&addr,
                       on_probe_connect) != 0)
        uv_close((uv_handle_t *)&up->probe, on_probe_closed);
}

/* True when --model is Tandem's shipped demo model (models/demo, recognized
 * by its canary.json), whose ready message shows a retrieval question. */
static bool up_is_demo_model(void) {
    char path[4096];
    snprintf(path, sizeof path, "%s/canary.json", g_model);
    FILE *f = fopen(path, "r");
    if (f) fclose(f);
    return f != NULL;
}

static void probe_done(up_t *up, bool ready) {
    if (!ready || up->ready || up->stage != 0) return;
    up->ready = true;
    uv_timer_stop(&up->poll_timer);
    printf("\nTandem is ready: model '%s' at http://%s:%lld (%lld prefill, %lld decode, %lld "
           "colocated workers). Try:\n\n",
           g_name, g_host, (long long)g_port, (long long)g_prefill, (long long)g_decode,
           (long long)g_colocated);
    if (up_is_demo_model()) /* The demo model's checkable skill: it answers "fuz=tam". */
        printf("  curl http://%s:%lld/v1/chat/completions -H 'Content-Type: application/json' "
               "\\\n    -d '{\"model\": \"%s\", \"max_tokens\": 16, \"messages\": [{\"role\": "
               "\"user\", \"content\": \"Records: zob=kel fuz=tam pim=dor\\nWhat is the value "
               "of fuz?\"}]}'\n\n"
               "(the demo model answers \"fuz=tam\"; see models/demo/README.md for its skills)\n",
               g_host, (long long)g_port, g_name);
    else
        printf("  curl http://%s:%lld/v1/completions -H 'Content-Type: application/json' \\\n"
               "    -d '{\"model\": \"%s\", \"prompt\": \"Hello\", \"max_tokens\": 32}'\n\n"
               "(or /v1/chat/completions with \"messages\" when the model has a chat "
               "template)\n",
               g_host, (long long)g_port, g_name);
    printf("Press Ctrl-C to stop.\n");
    fflush(stdout);
}

/* --- set-up ------------------------------------------------------------- */

static up_child_t *add_child(up_t *up, const char *name, const char *cmd) {
    up_child_t *c = &up->children[up->n++];
    memset(c, 0, sizeof *c);
    c->up = up;
    snprintf(c->name, sizeof c->name, "%s", name);
    up_arg(c, "tandem");
    up_arg(c, "%s", cmd);
    up_arg(c, "--log-level=%s", cm_cli_log_level());
    up_arg(c, "--log-format=%s", cm_cli_log_format());
    uv_timer_init(up->loop, &c->restart_timer);
    c->restart_timer.data = c;
    return c;
}

static void add_worker(up_t *up, const char *role, int idx) {
    char name[48];
    snprintf(name, sizeof name, "%s-%d", role, idx);
    up_child_t *c = add_child(up, name, role);
    up_arg(c, "--router=tcp://127.0.0.1:%lld", (long long)g_cp_port);
    up_arg(c, "--model=%s", g_model);
    up_arg(c, "--served-model-name=%s", g_name);
    up_arg(c, "--backend=%s", g_backend);
    up_arg(c, "--worker-id=%s", name);
    /* Extra flags, split on spaces. */
    char extra[1024];
    snprintf(extra, sizeof extra, "%s", g_worker_args);
    for (char *save = NULL, *tok = strtok_r(extra, " ", &save); tok;
         tok = strtok_r(NULL, " ", &save))
        up_arg(c, "%s", tok);
}

int cm_cmd_up(int argc, char **argv) {
    static const cm_flag_t *const tables[] = {k_up_flags, NULL};
    const cm_cmd_spec_t spec = {
        .prog = "tandem up",
        .summary = "Launch and supervise a local cluster: a router and prefill/decode (or "
                   "colocated) workers, each its own process. Ctrl-C stops it cleanly.",
        .tables = tables};
    int code, npos;
    if (!cm_cli_parse(&spec, argc, argv, NULL, &npos, &code)) return code;
    if (g_prefill + g_decode + g_colocated == 0 || (g_prefill > 0) != (g_decode > 0)) {
        fprintf(stderr, "tandem up: need --prefill N with --decode M (both > 0), and/or "
                        "--colocated K > 0\n");
        return CM_EXIT_USAGE;
    }
    char namebuf[256];
    if (!g_name || !g_name[0]) {
        const char *base = strrchr(g_model, '/');
        snprintf(namebuf, sizeof namebuf, "%s", base && base[1] ? base + 1 : g_model);
        size_t l = strlen(namebuf);
        while (l > 0 && namebuf[l - 1] == '/') namebuf[--l] = '\0';
        g_name = namebuf;
    }
    static up_t up;
    memset(&up, 0, sizeof up);
    up.loop = uv_default_loop();
    up.restart = g_restart;
    up.t_start = cm_time_mono_ms();
    uv_signal_init(up.loop, &up.sigint);
    uv_signal_init(up.loop, &up.sigterm);
    up.sigint.data = up.sigterm.data = &up;
    uv_signal_start(&up.sigint, on_signal, SIGINT);
    uv_signal_start(&up.sigterm, on_signal, SIGTERM);
    uv_timer_init(up.loop, &up.poll_timer);
    uv_timer_init(up.loop, &up.stage_timer);
    up.poll_timer.data = up.stage_timer.data = &up;

    up_child_t *r = add_child(&up, "router", "router");
    r->is_router = true;
    up_arg(r, "--listen=%s:%lld", g_host, (long long)g_port);
    up_arg(r, "--cp-bind=tcp://127.0.0.1:%lld", (long long)g_cp_port);
    up_arg(r, "--model=%s", g_model);
    up_arg(r, "--served-model-name=%s", g_name);
    for (int i = 0; i < g_prefill; i++) add_worker(&up, "prefill", i);
    for (int i = 0; i < g_decode; i++) add_worker(&up, "decode", i);
    for (int i = 0; i < g_colocated; i++) add_worker(&up, "worker", i);
    for (int i = 0; i < up.n && up.stage == 0; i++) start_child(&up.children[i]);
    if (up.stage == 0) uv_timer_start(&up.poll_timer, on_poll_timer, 200, 200);
    uv_run(up.loop, UV_RUN_DEFAULT);
    uv_loop_close(up.loop);
    return up.exit_code;
}
