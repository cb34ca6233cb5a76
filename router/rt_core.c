/*
 * rt_core.c - the router's request core (see rt_core.h).
 *
 * This file holds configuration, model identity, admission checks, the
 * control plane (ZeroMQ endpoint + worker registry with heartbeat expiry)
 * and metrics. With no worker able to serve, every request is refused with
 * 503, which is also what a client sees while a cluster is starting.
 */
#include "rt_core.h"

#include <stdio.h>
#include <string.h>
#include <zmq.h>

#include "cm_cp_zmq.h"
#include "rt_registry.h"

struct rt_core {
    uv_loop_t *loop;
    char *served_model_name;
    char *model_dir;
    uint32_t max_context;
    uint32_t max_queue;
    uint32_t default_deadline_ms;
    void *zctx;
    bool own_zctx;
    cm_cp_endpoint_t *cp;
    rt_registry_t *registry;
    uv_timer_t expiry;
    bool expiry_open;
    /* Metrics. */
    uint64_t n_submitted;
    uint64_t n_refused_by_status[6]; /* 400, 404, 413, 429, 503, other */
};

static void on_cp_msg(void *ud, const char *peer, const cm_cp_msg_t *msg) {
    rt_core_t *c = ud;
    cm_cp_msg_t reply;
    if (rt_registry_handle(c->registry, cm_time_mono_ms(), peer, msg, &reply)) {
        cm_status_t st = cm_cp_endpoint_send(c->cp, peer, &reply);
        if (st != CM_OK) cm_log_warn("router", "reply to %s: %s", peer, cm_strerror(st));
    }
}

static void on_expiry(uv_timer_t *t) {
    rt_core_t *c = t->data;
    rt_registry_expire(c->registry, cm_time_mono_ms());
}

static uint32_t count(const rt_core_t *c, rt_role_t role) {
    return c->registry ? (uint32_t)rt_registry_count(c->registry, role) : 0;
}

static bool can_serve(const rt_core_t *c) {
    return count(c, RT_ROLE_COLOCATED) > 0 ||
           (count(c, RT_ROLE_PREFILL) > 0 && count(c, RT_ROLE_DECODE) > 0);
}

static cm_status_t start_control_plane(rt_core_t *c, const rt_core_config_t *cfg) {
    rt_registry_config_t rc = {.model = cfg->served_model_name,
                               .heartbeat_interval_ms = cfg->heartbeat_interval_ms,
                               .missed_heartbeats = cfg->missed_heartbeats};
    c->registry = rt_registry_new(&rc, NULL, c);
    if (!c->registry) return CM_ERR_NO_MEMORY;
    if (!cfg->cp_bind) return CM_OK;
    c->zctx = cfg->zmq_ctx;
    if (!c->zctx) {
        c->zctx = zmq_ctx_new();
        c->own_zctx = true;
        if (!c->zctx) return CM_ERR_IO;
    }
    cm_cp_endpoint_config_t ec = {.kind = CM_CP_ROUTER, .endpoint = cfg->cp_bind};
    cm_cp_limits_default(&ec.limits);
    static const cm_cp_callbacks_t k_cb = {on_cp_msg, NULL};
    cm_status_t st = cm_cp_endpoint_new(c->loop, c->zctx, &ec, &k_cb, c, &c->cp);
    if (st != CM_OK) return st;
    uv_timer_init(c->loop, &c->expiry);
    c->expiry.data = c;
    c->expiry_open = true;
    uint32_t ivl = cfg->heartbeat_interval_ms ? cfg->heartbeat_interval_ms : 500;
    uv_timer_start(&c->expiry, on_expiry, ivl, ivl);
    cm_log_info("router", "control plane listening on %s", cm_cp_endpoint_address(c->cp));
    return CM_OK;
}

rt_core_t *rt_core_new(uv_loop_t *loop, const rt_core_config_t *cfg) {
    if (!loop || !cfg || !cfg->served_model_name || !cfg->served_model_name[0]) {
        cm_log_error("router", "core: a served model name is required");
        return NULL;
    }
    rt_core_t *c = cm_calloc(1, sizeof *c);
    if (!c) goto fail;
    c->loop = loop;
    c->served_model_name = cm_strdup(cfg->served_model_name);
    c->model_dir = cfg->model_dir ? cm_strdup(cfg->model_dir) : NULL;
    if (!c->served_model_name || (cfg->model_dir && !c->model_dir)) goto fail;
    c->max_context = cfg->max_context ? cfg->max_context : 4096;
    c->max_queue = cfg->max_queue ? cfg->max_queue : 1024;
    c->default_deadline_ms = cfg->default_deadline_ms ? cfg->default_deadline_ms : 600000;
    cm_status_t st = start_control_plane(c, cfg);
    if (st != CM_OK) {
        cm_log_error("router", "core: control plane on %s: %s", cfg->cp_bind, cm_strerror(st));
        rt_core_free(c);
        return NULL;
    }
    return c;
fail:
    cm_log_error("router", "core: out of memory");
    rt_core_free(c);
    return NULL;
}

static void core_release(rt_core_t *core) {
    rt_registry_free(core->registry);
    if (core->own_zctx) zmq_ctx_term(core->zctx);
    cm_free(core->served_model_name);
    cm_free(core->model_dir);
    cm_free(core);
}

static void on_expiry_closed(uv_handle_t *h) { core_release(h->data); }

void rt_core_free(rt_core_t *core) {
    if (!core) return;
    if (core->cp) cm_cp_endpoint_close(core->cp);
    /* The endpoint's handles close before the timer's (libuv closes in
     * order), so the ZeroMQ context is terminated after its socket. */
    if (core->expiry_open) {
        uv_close((uv_handle_t *)&core->expiry, on_expiry_closed);
        return;
    }
    core_release(core);
}

const char *rt_core_cp_address(const rt_core_t *core) {
    return core->cp ? cm_cp_endpoint_address(core->cp) : NULL;
}

static int status_slot(int http_status) {
    switch (http_status) {
    case 400:
        return 0;
    case 404:
        return 1;
    case 413:
        return 2;
    case 429:
        return 3;
    case 503:
        return 4;
    default:
        return 5;
    }
}

static cm_status_t refuse(rt_core_t *core, rt_error_t *err, int status, const char *type,
                          uint32_t retry_after_s, cm_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

static cm_status_t refuse(rt_core_t *core, rt_error_t *err, int status, const char *type,
                          uint32_t retry_after_s, cm_status_t st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    err->http_status = status;
    err->type = type;
    err->retry_after_s = retry_after_s;
    core->n_refused_by_status[status_slot(status)]++;
    return st;
}

cm_status_t rt_core_submit(rt_core_t *core, const rt_gen_request_t *req, const rt_req_cb_t *cb,
                           void *ud, rt_req_t **out, rt_error_t *err) {
    (void)cb;
    (void)ud;
    (void)out;
    core->n_submitted++;
    if (!req->model || strcmp(req->model, core->served_model_name) != 0)
        return refuse(core, err, 404, "invalid_request_error", 0, CM_ERR_NOT_FOUND,
                      "The model '%s' does not exist; this server serves '%s'.",
                      req->model ? req->model : "", core->served_model_name);
    if (req->chat ? req->n_messages == 0 : (req->prompt == NULL && req->n_prompt_ids == 0))
        return refuse(core, err, 400, "invalid_request_error", 0, CM_ERR_INVALID_ARG,
                      req->chat ? "'messages' must not be empty." : "'prompt' is required.");
    if (req->n_prompt_ids > core->max_context)
        return refuse(core, err, 400, "invalid_request_error", 0, CM_ERR_OUT_OF_RANGE,
                      "The prompt has %zu tokens; this model's context is %u tokens.",
                      req->n_prompt_ids, core->max_context);
    if (req->sampling.max_tokens > core->max_context)
        return refuse(core, err, 400, "invalid_request_error", 0, CM_ERR_OUT_OF_RANGE,
                      "'max_tokens' is %u; this model's context is %u tokens.",
                      req->sampling.max_tokens, core->max_context);
    if (!can_serve(core))
        return refuse(core, err, 503, "service_unavailable", 1, CM_ERR_NO_RESOURCES,
                      "No workers are available to serve '%s'; try again shortly.",
                      core->served_model_name);
    return refuse(core, err, 503, "service_unavailable", 1, CM_ERR_UNSUPPORTED,
                  "Request dispatch to workers is not in this build.");
}

void rt_core_cancel(rt_req_t *req) { (void)req; }

const char *rt_core_model_name(const rt_core_t *core) { return core->served_model_name; }

uint32_t rt_core_max_context(const rt_core_t *core) { return core->max_context; }

bool rt_core_ready(const rt_core_t *core) { return can_serve(core); }

size_t rt_core_metrics(const rt_core_t *core, char *buf, size_t cap) {
    static const char *const codes[] = {"400", "404", "413", "429", "503", "other"};
    size_t n = 0;
#define APPEND(...)                                                                             \
    do {                                                                                        \
        int w_ = snprintf(buf ? buf + (n < cap ? n : cap) : NULL, buf && n < cap ? cap - n : 0, \
                          __VA_ARGS__);                                                         \
        if (w_ > 0) n += (size_t)w_;                                                            \
    } while (0)
    APPEND("# HELP tandem_requests_submitted_total Requests handed to the core.\n"
           "# TYPE tandem_requests_submitted_total counter\n"
           "tandem_requests_submitted_total %llu\n",
           (unsigned long long)core->n_submitted);
    APPEND("# HELP tandem_requests_refused_total Requests refused before starting, by HTTP "
           "status.\n# TYPE tandem_requests_refused_total counter\n");
    for (int i = 0; i < 6; i++)
        APPEND("tandem_requests_refused_total{code=\"%s\"} %llu\n", codes[i],
               (unsigned long long)core->n_refused_by_status[i]);
    APPEND("# HELP tandem_workers Registered workers by role.\n# TYPE tandem_workers gauge\n"
           "tandem_workers{role=\"prefill\"} %u\ntandem_workers{role=\"decode\"} %u\n"
           "tandem_workers{role=\"colocated\"} %u\n",
           count(core, RT_ROLE_PREFILL), count(core, RT_ROLE_DECODE),
           count(core, RT_ROLE_COLOCATED));
#undef APPEND
    return n;
}
