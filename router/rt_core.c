/*
 * rt_core.c - the router's request core (see rt_core.h).
 *
 * This file holds the parts of the core that do not depend on workers:
 * configuration, model identity, admission checks and metrics. Requests are
 * dispatched to workers by the scheduler once workers have registered;
 * with none registered every request is refused with 503, which is also
 * what a client sees while a cluster is starting.
 */
#include "rt_core.h"

#include <stdio.h>
#include <string.h>

struct rt_core {
    uv_loop_t *loop;
    char *served_model_name;
    char *model_dir;
    uint32_t max_context;
    uint32_t max_queue;
    uint32_t default_deadline_ms;
    uint32_t n_workers_prefill; /* registered, able to serve */
    uint32_t n_workers_decode;
    uint32_t n_workers_colocated;
    /* Metrics. */
    uint64_t n_submitted;
    uint64_t n_refused_by_status[6]; /* 400, 404, 413, 429, 503, other */
};

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
    return c;
fail:
    cm_log_error("router", "core: out of memory");
    rt_core_free(c);
    return NULL;
}

void rt_core_free(rt_core_t *core) {
    if (!core) return;
    cm_free(core->served_model_name);
    cm_free(core->model_dir);
    cm_free(core);
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
    if (core->n_workers_colocated == 0 &&
        (core->n_workers_prefill == 0 || core->n_workers_decode == 0))
        return refuse(core, err, 503, "service_unavailable", 1, CM_ERR_NO_RESOURCES,
                      "No workers are available to serve '%s'; try again shortly.",
                      core->served_model_name);
    return refuse(core, err, 503, "service_unavailable", 1, CM_ERR_UNSUPPORTED,
                  "Request dispatch to workers is not in this build.");
}

void rt_core_cancel(rt_req_t *req) { (void)req; }

const char *rt_core_model_name(const rt_core_t *core) { return core->served_model_name; }

uint32_t rt_core_max_context(const rt_core_t *core) { return core->max_context; }

bool rt_core_ready(const rt_core_t *core) {
    return core->n_workers_colocated > 0 ||
           (core->n_workers_prefill > 0 && core->n_workers_decode > 0);
}

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
           core->n_workers_prefill, core->n_workers_decode, core->n_workers_colocated);
#undef APPEND
    return n;
}
