/*
 * rt_main.c - `tandem router`: the OpenAI HTTP API, the gRPC API and the
 * control plane workers register with, on one libuv loop. SIGINT/SIGTERM
 * stop it: listeners close, live requests fail with 503, workers are told
 * nothing (they notice the router through missed heartbeat answers and
 * re-register when it is back).
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "cm_cli.h"
#include "rt_core.h"
#include "rt_grpc.h"
#include "rt_http.h"
#include "tok.h"

/* The router's tokenizer: the model folder's tokenizer.json. */
static cm_status_t tok_enc(void *ctx, const char *text, size_t len, bool add_special, int32_t **ids,
                           size_t *n) {
    return tok_encode(ctx, text, len, add_special, ids, n);
}

static cm_status_t tok_chat(void *ctx, const rt_chat_msg_t *msgs, size_t n, char **text,
                            size_t *len) {
    tok_msg_t *m = cm_calloc(n ? n : 1, sizeof *m);
    if (!m) return CM_ERR_NO_MEMORY;
    for (size_t i = 0; i < n; i++) {
        m[i].role = msgs[i].role;
        m[i].content = msgs[i].content;
    }
    cm_status_t st = tok_chat_apply(ctx, m, n, true, text, len);
    cm_free(m);
    return st;
}

static const char *g_listen, *g_grpc_listen, *g_cp_bind, *g_name, *g_model;
static int64_t g_max_context, g_max_queue, g_hb_missed;
static uint64_t g_max_body, g_timeout_ms, g_hb_ms, g_idle_ms;

static const cm_flag_t k_flags[] = {
    {.name = "listen",
     .type = CM_FLAG_STRING,
     .dst = &g_listen,
     .def = "127.0.0.1:8000",
     .help = "HTTP (OpenAI API) listen address host:port"},
    {.name = "grpc-listen",
     .type = CM_FLAG_STRING,
     .dst = &g_grpc_listen,
     .def = "127.0.0.1:8001",
     .help = "gRPC listen address host:port (\"off\" to disable)"},
    {.name = "cp-bind",
     .type = CM_FLAG_STRING,
     .dst = &g_cp_bind,
     .def = "tcp://127.0.0.1:5557",
     .help = "control-plane ZeroMQ endpoint workers connect to"},
    {.name = "served-model-name",
     .type = CM_FLAG_STRING,
     .dst = &g_name,
     .help = "model name clients use (default: the --model directory's name)"},
    {.name = "model",
     .type = CM_FLAG_STRING,
     .dst = &g_model,
     .help = "model directory (tokenizer and config); optional"},
    {.name = "max-context",
     .type = CM_FLAG_INT,
     .dst = &g_max_context,
     .def = "0",
     .help = "context limit in tokens (0 = the workers')",
     .min = 0,
     .max = 1 << 24},
    {.name = "max-body-size",
     .type = CM_FLAG_SIZE,
     .dst = &g_max_body,
     .def = "8M",
     .help = "largest request body (413 above)"},
    {.name = "max-queue",
     .type = CM_FLAG_INT,
     .dst = &g_max_queue,
     .def = "1024",
     .help = "requests waiting for a worker before 429",
     .min = 1,
     .max = 1 << 20},
    {.name = "request-timeout",
     .type = CM_FLAG_DURATION,
     .dst = &g_timeout_ms,
     .def = "600s",
     .help = "deadline of a request (504 after)"},
    {.name = "idle-timeout",
     .type = CM_FLAG_DURATION,
     .dst = &g_idle_ms,
     .def = "60s",
     .help = "close keep-alive connections idle this long"},
    {.name = "heartbeat-interval",
     .type = CM_FLAG_DURATION,
     .dst = &g_hb_ms,
     .def = "500ms",
     .help = "heartbeat period workers are told to use"},
    {.name = "missed-heartbeats",
     .type = CM_FLAG_INT,
     .dst = &g_hb_missed,
     .def = "4",
     .help = "drop a worker after this many missed heartbeats",
     .min = 2,
     .max = 100},
    {0},
};

typedef struct {
    uv_signal_t sigint, sigterm;
    rt_http_t *http;
    rt_grpc_t *grpc;
    rt_core_t *core;
} router_t;

static void on_signal(uv_signal_t *s, int signum) {
    router_t *r = s->data;
    cm_log_info("router", "signal %d: stopping", signum);
    uv_signal_stop(&r->sigint);
    uv_signal_stop(&r->sigterm);
    uv_close((uv_handle_t *)&r->sigint, NULL);
    uv_close((uv_handle_t *)&r->sigterm, NULL);
    rt_http_stop(r->http);
    if (r->grpc) rt_grpc_stop(r->grpc);
    rt_core_free(r->core);
}

/* Splits "host:port" ("[v6]:port" too). */
static bool split_addr(const char *s, char *host, size_t cap, int *port) {
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s) return false;
    size_t hl = (size_t)(colon - s);
    if (s[0] == '[' && hl >= 2 && s[hl - 1] == ']') {
        s++;
        hl -= 2;
    }
    if (hl >= cap) return false;
    memcpy(host, s, hl);
    host[hl] = '\0';
    int64_t p;
    if (cm_parse_int64(colon + 1, &p) != CM_OK || p < 0 || p > 65535) return false;
    *port = (int)p;
    return true;
}

int rt_cmd_router(int argc, char **argv) {
    static const cm_flag_t *const tables[] = {k_flags, NULL};
    const cm_cmd_spec_t spec = {.prog = "tandem router",
                                .summary = "The front end: OpenAI HTTP API (with SSE), gRPC "
                                           "API, and the control plane workers register with.",
                                .tables = tables};
    int code, npos;
    if (!cm_cli_parse(&spec, argc, argv, NULL, &npos, &code)) return code;
    char host[256], ghost[256], namebuf[256];
    int port, gport = 0;
    if (!split_addr(g_listen, host, sizeof host, &port)) {
        fprintf(stderr, "tandem router: bad --listen '%s' (want host:port)\n", g_listen);
        return CM_EXIT_USAGE;
    }
    bool grpc = strcmp(g_grpc_listen, "off") != 0 && g_grpc_listen[0];
    if (grpc && !split_addr(g_grpc_listen, ghost, sizeof ghost, &gport)) {
        fprintf(stderr, "tandem router: bad --grpc-listen '%s' (want host:port or off)\n",
                g_grpc_listen);
        return CM_EXIT_USAGE;
    }
    if (!g_name || !g_name[0]) {
        if (!g_model || !g_model[0]) {
            fprintf(stderr, "tandem router: give --served-model-name or --model\n");
            return CM_EXIT_USAGE;
        }
        const char *base = strrchr(g_model, '/');
        snprintf(namebuf, sizeof namebuf, "%s", base && base[1] ? base + 1 : g_model);
        g_name = namebuf;
    }
    tok_t *tok = NULL;
    rt_tokenizer_t tk = {0};
    if (g_model && g_model[0]) {
        char tp[4096], err[512];
        snprintf(tp, sizeof tp, "%s/tokenizer.json", g_model);
        if (access(tp, R_OK) == 0) {
            if (tok_load(g_model, &tok, err, sizeof err) != CM_OK) {
                fprintf(stderr, "tandem router: %s\n", err);
                return CM_EXIT_FAILURE;
            }
            tk = (rt_tokenizer_t){.ctx = tok, .encode = tok_enc, .apply_chat = tok_chat};
        } else {
            cm_log_warn("router", "%s has no tokenizer.json: only token-id prompts", g_model);
        }
    }
    uv_loop_t *loop = uv_default_loop();
    rt_core_config_t cfg = {.served_model_name = g_name,
                            .tokenizer = tok ? &tk : NULL,
                            .model_dir = g_model,
                            .max_context = (uint32_t)g_max_context,
                            .max_queue = (uint32_t)g_max_queue,
                            .default_deadline_ms = (uint32_t)g_timeout_ms,
                            .cp_bind = g_cp_bind,
                            .heartbeat_interval_ms = (uint32_t)g_hb_ms,
                            .missed_heartbeats = (uint32_t)g_hb_missed};
    static router_t r;
    r.core = rt_core_new(loop, &cfg);
    if (!r.core) return CM_EXIT_FAILURE;
    rt_http_config_t hc = {.max_body = g_max_body, .idle_timeout_ms = (uint32_t)g_idle_ms};
    if (rt_http_start(loop, r.core, host, port, &hc, &r.http) != CM_OK) {
        rt_core_free(r.core);
        uv_run(loop, UV_RUN_DEFAULT);
        return CM_EXIT_FAILURE;
    }
    if (grpc && rt_grpc_start(loop, r.core, ghost, gport, &r.grpc) != CM_OK) {
        rt_http_stop(r.http);
        rt_core_free(r.core);
        uv_run(loop, UV_RUN_DEFAULT);
        return CM_EXIT_FAILURE;
    }
    uv_signal_init(loop, &r.sigint);
    uv_signal_init(loop, &r.sigterm);
    r.sigint.data = r.sigterm.data = &r;
    uv_signal_start(&r.sigint, on_signal, SIGINT);
    uv_signal_start(&r.sigterm, on_signal, SIGTERM);
    cm_log_info("router", "serving '%s'", g_name);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    tok_free(tok);
    cm_log_info("router", "stopped");
    return CM_EXIT_OK;
}
