/*
 * rt_core.c - the router's request core (see rt_core.h): configuration,
 * admission checks, the control plane (ZeroMQ endpoint + worker registry
 * with heartbeat expiry) and metrics. The per-request state machine and
 * scheduling are in rt_sched.c.
 *
 * With no worker able to serve, every request is refused with 503 and a
 * Retry-After, which is also what a client sees while a cluster starts.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <zmq.h>

#include "rt_core_impl.h"

enum { RT_TICK_MS = 50 };

static void on_cp_msg(void *ud, const char *peer, const cm_cp_msg_t *msg) {
    rt_core_t *c = ud;
    cm_cp_msg_t reply;
    switch (msg->body_case) {
    case TANDEM__CP__ENVELOPE__BODY_REGISTER:
    case TANDEM__CP__ENVELOPE__BODY_HEARTBEAT:
    case TANDEM__CP__ENVELOPE__BODY_DEREGISTER:
        if (msg->body_case == TANDEM__CP__ENVELOPE__BODY_HEARTBEAT &&
            rt_registry_find(c->registry, peer)) {
            rt_load_t *l = rt_load_get(c, peer);
            if (l) l->full = false;
        }
        if (rt_registry_handle(c->registry, cm_time_mono_ms(), peer, msg, &reply)) {
            cm_status_t st = cm_cp_endpoint_send(c->cp, peer, &reply);
            if (st != CM_OK) cm_log_warn("router", "reply to %s: %s", peer, cm_strerror(st));
        }
        /* New capacity or fresher load: waiting requests may fit now. */
        rt_sched_pump(c);
        return;
    default:
        rt_sched_on_worker_msg(c, peer, msg);
    }
}

static void on_worker_down(void *ud, const rt_worker_t *w, rt_down_reason_t why) {
    (void)why;
    rt_sched_on_worker_down(ud, w);
}

static void on_tick(uv_timer_t *t) {
    rt_core_t *c = t->data;
    uint64_t now = cm_time_mono_ms();
    rt_sched_drop_unreachable(c);
    rt_registry_expire(c->registry, now);
    rt_sched_expire(c, now);
    rt_sched_pump(c);
}

static cm_status_t start_control_plane(rt_core_t *c, const rt_core_config_t *cfg) {
    rt_registry_config_t rc = {.model = cfg->served_model_name,
                               .heartbeat_interval_ms = cfg->heartbeat_interval_ms,
                               .missed_heartbeats = cfg->missed_heartbeats};
    static const rt_registry_events_t k_ev = {NULL, on_worker_down};
    c->registry = rt_registry_new(&rc, &k_ev, c);
    if (!c->registry) return CM_ERR_NO_MEMORY;
    uv_timer_init(c->loop, &c->tick);
    c->tick.data = c;
    c->tick_open = true;
    uv_timer_start(&c->tick, on_tick, RT_TICK_MS, RT_TICK_MS);
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
    cm_log_info("router", "control plane listening on %s", cm_cp_endpoint_address(c->cp));
    return CM_OK;
}

static void core_release(rt_core_t *core) {
    rt_registry_free(core->registry);
    if (core->cp) cm_cp_endpoint_close(core->cp);
    if (core->own_zctx) zmq_ctx_term(core->zctx);
    cm_free(core->loads);
    cm_free(core->served_model_name);
    cm_free(core->model_dir);
    cm_free(core);
}

rt_core_t *rt_core_new(uv_loop_t *loop, const rt_core_config_t *cfg) {
    if (!loop || !cfg || !cfg->served_model_name || !cfg->served_model_name[0]) {
        cm_log_error("router", "core: a served model name is required");
        return NULL;
    }
    rt_core_t *c = cm_calloc(1, sizeof *c);
    if (!c) goto oom;
    c->loop = loop;
    c->served_model_name = cm_strdup(cfg->served_model_name);
    c->model_dir = cfg->model_dir ? cm_strdup(cfg->model_dir) : NULL;
    if (!c->served_model_name || (cfg->model_dir && !c->model_dir)) goto oom;
    if (cfg->tokenizer) {
        c->tok = *cfg->tokenizer;
        c->have_tok = true;
    }
    c->max_context = cfg->max_context;
    c->max_queue = cfg->max_queue ? cfg->max_queue : 1024;
    c->default_deadline_ms = cfg->default_deadline_ms ? cfg->default_deadline_ms : 600000;
    c->next_id = 1;
    cm_status_t st = start_control_plane(c, cfg);
    if (st != CM_OK) {
        cm_log_error("router", "core: control plane on %s: %s", cfg->cp_bind, cm_strerror(st));
        rt_core_free(c);
        return NULL;
    }
    return c;
oom:
    cm_log_error("router", "core: out of memory");
    if (c) {
        cm_free(c->served_model_name);
        cm_free(c->model_dir);
        cm_free(c);
    }
    return NULL;
}

static void on_tick_closed(uv_handle_t *h) { core_release(h->data); }

void rt_core_free(rt_core_t *core) {
    if (!core) return;
    while (core->reqs)
        rt_req_fail(core->reqs, 503, "service_unavailable", "The router is shutting down.");
    if (core->cp) {
        cm_cp_endpoint_close(core->cp);
        core->cp = NULL;
    }
    if (core->tick_open) {
        uv_close((uv_handle_t *)&core->tick, on_tick_closed);
        return;
    }
    core_release(core);
}

const char *rt_core_cp_address(const rt_core_t *core) {
    return core->cp ? cm_cp_endpoint_address(core->cp) : NULL;
}

static uint32_t count(const rt_core_t *c, rt_role_t role) {
    return c->registry ? (uint32_t)rt_registry_count(c->registry, role) : 0;
}

static bool can_serve(const rt_core_t *c) {
    return count(c, RT_ROLE_COLOCATED) > 0 ||
           (count(c, RT_ROLE_PREFILL) > 0 && count(c, RT_ROLE_DECODE) > 0);
}

/* The context limit in force: configured, else the smallest a live
 * worker declares (0 when no worker is known). */
static uint32_t context_limit(const rt_core_t *c) {
    if (c->max_context) return c->max_context;
    uint32_t m = 0;
    const rt_worker_t *w;
    for (size_t i = 0; (w = rt_registry_at(c->registry, i)); i++)
        if (!m || w->max_context < m) m = w->max_context;
    return m;
}

static uint32_t vocab_limit(const rt_core_t *c) {
    uint32_t m = 0;
    const rt_worker_t *w;
    for (size_t i = 0; (w = rt_registry_at(c->registry, i)); i++)
        if (!m || w->vocab_size < m) m = w->vocab_size;
    return m;
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

/* Tokenizes the request's prompt into *@ids / *@n (cm_malloc'ed). */
static cm_status_t prompt_ids(rt_core_t *core, const rt_gen_request_t *req, int32_t **ids,
                              size_t *n) {
    if (req->prompt_ids) {
        int32_t *copy = cm_malloc_array(req->n_prompt_ids ? req->n_prompt_ids : 1, sizeof *copy);
        if (!copy) return CM_ERR_NO_MEMORY;
        memcpy(copy, req->prompt_ids, req->n_prompt_ids * sizeof *copy);
        *ids = copy;
        *n = req->n_prompt_ids;
        return CM_OK;
    }
    if (!core->have_tok) return CM_ERR_UNSUPPORTED;
    if (!req->chat)
        return core->tok.encode(core->tok.ctx, req->prompt, req->prompt_len, true, ids, n);
    char *text = NULL;
    size_t len = 0;
    cm_status_t st =
        core->tok.apply_chat(core->tok.ctx, req->messages, req->n_messages, &text, &len);
    if (st == CM_ERR_UNSUPPORTED) return CM_ERR_NOT_FOUND; /* no chat template */
    if (st != CM_OK) return st;
    st = core->tok.encode(core->tok.ctx, text, len, false, ids, n);
    cm_free(text);
    return st;
}

static char *dup_or_empty(const char *s) { return cm_strdup(s ? s : ""); }

cm_status_t rt_core_submit(rt_core_t *core, const rt_gen_request_t *req, const rt_req_cb_t *cb,
                           void *ud, rt_req_t **out, rt_error_t *err) {
    core->n_submitted++;
    if (!req->model || strcmp(req->model, core->served_model_name) != 0)
        return refuse(core, err, 404, "invalid_request_error", 0, CM_ERR_NOT_FOUND,
                      "The model '%s' does not exist; this server serves '%s'.",
                      req->model ? req->model : "", core->served_model_name);
    if (req->chat ? req->n_messages == 0 : (req->prompt == NULL && req->prompt_ids == NULL))
        return refuse(core, err, 400, "invalid_request_error", 0, CM_ERR_INVALID_ARG,
                      req->chat ? "'messages' must not be empty." : "'prompt' is required.");
    if (!can_serve(core))
        return refuse(core, err, 503, "service_unavailable", 1, CM_ERR_NO_RESOURCES,
                      "No workers are available to serve '%s'; try again shortly.",
                      core->served_model_name);
    int32_t *ids = NULL;
    size_t n = 0;
    cm_status_t st = prompt_ids(core, req, &ids, &n);
    if (st == CM_ERR_UNSUPPORTED)
        return refuse(core, err, 400, "invalid_request_error", 0, st,
                      "This router has no tokenizer (start it with --model DIR); send the "
                      "prompt as token ids.");
    if (st == CM_ERR_NOT_FOUND)
        return refuse(core, err, 400, "invalid_request_error", 0, st,
                      "This model has no chat template; use /v1/completions.");
    if (st == CM_ERR_INVALID_ARG && req->chat)
        return refuse(core, err, 400, "invalid_request_error", 0, st,
                      "This model's chat template does not accept these messages: roles are "
                      "system, user, assistant (Mistral-style templates: no system message, "
                      "user and assistant alternating from a user message).");
    if (st != CM_OK)
        return refuse(core, err, 400, "invalid_request_error", 0, st,
                      "The prompt could not be tokenized: %s.", cm_strerror(st));
    uint32_t ctx = context_limit(core), vocab = vocab_limit(core);
    uint32_t max_tokens = req->sampling.max_tokens;
    if (n == 0) {
        cm_free(ids);
        return refuse(core, err, 400, "invalid_request_error", 0, CM_ERR_INVALID_ARG,
                      "The prompt is empty.");
    }
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (vocab && (uint32_t)ids[i] >= vocab)) {
            int32_t bad = ids[i];
            cm_free(ids);
            return refuse(core, err, 400, "invalid_request_error", 0, CM_ERR_OUT_OF_RANGE,
                          "Prompt token %zu is %d, outside the vocabulary [0, %u).", i, bad, vocab);
        }
    }
    if (ctx && (n >= ctx || (uint64_t)n + max_tokens > ctx)) {
        cm_free(ids);
        return refuse(core, err, 400, "invalid_request_error", 0, CM_ERR_OUT_OF_RANGE,
                      "This model's maximum context length is %u tokens. However, you requested "
                      "%zu tokens (%zu in the prompt, %u in the completion).",
                      ctx, n + max_tokens, n, max_tokens);
    }
    if (core->qlen >= core->max_queue) {
        cm_free(ids);
        return refuse(core, err, 429, "rate_limit_exceeded", 1, CM_ERR_BUSY,
                      "The server has %zu requests waiting; try again shortly.", core->qlen);
    }

    rt_req_t *r = cm_calloc(1, sizeof *r);
    if (!r) goto oom;
    r->core = core;
    r->id = core->next_id++;
    r->prompt = ids;
    r->n_prompt = n;
    ids = NULL;
    r->cb = *cb;
    r->ud = ud;
    const rt_sampling_t *s = &req->sampling;
    r->sp = (Tandem__Cp__SamplingParams)TANDEM__CP__SAMPLING_PARAMS__INIT;
    r->sp.temperature = s->temperature;
    r->sp.top_p = s->top_p;
    r->sp.top_k = s->top_k;
    r->sp.min_p = s->min_p;
    r->sp.repetition_penalty = s->repetition_penalty;
    r->sp.presence_penalty = s->presence_penalty;
    r->sp.frequency_penalty = s->frequency_penalty;
    r->sp.seed = s->seed;
    r->sp.has_seed = s->has_seed;
    r->sp.max_tokens = max_tokens ? max_tokens : (ctx ? ctx - (uint32_t)n : 256);
    r->sp.top_logprobs = s->top_logprobs;
    r->sp.logprobs = s->logprobs;
    r->sp.ignore_eos = s->ignore_eos;
    if (s->n_stop_token_ids) {
        r->stop_ids = cm_malloc_array(s->n_stop_token_ids, sizeof *r->stop_ids);
        if (!r->stop_ids) goto oom;
        memcpy(r->stop_ids, s->stop_token_ids, s->n_stop_token_ids * sizeof *r->stop_ids);
        r->sp.stop_token_ids = r->stop_ids;
        r->sp.n_stop_token_ids = s->n_stop_token_ids;
    }
    if (s->n_stop) {
        r->stop = cm_calloc(s->n_stop, sizeof *r->stop);
        if (!r->stop) goto oom;
        r->n_stop = s->n_stop;
        for (size_t i = 0; i < s->n_stop; i++)
            if (!(r->stop[i] = dup_or_empty(s->stop[i]))) goto oom;
    }
    uint64_t now = cm_time_mono_ms();
    r->t_submit = now;
    r->deadline_ms = now + (req->deadline_ms ? req->deadline_ms : core->default_deadline_ms);
    /* Link into the live list and the wait queue. */
    r->next = core->reqs;
    if (core->reqs) core->reqs->prev = r;
    core->reqs = r;
    core->n_reqs++;
    if (core->qtail)
        core->qtail->qnext = r;
    else
        core->qhead = r;
    core->qtail = r;
    core->qlen++;
    *out = r;
    rt_sched_pump(core);
    return CM_OK;
oom:
    cm_free(ids);
    if (r) {
        r->core = NULL; /* not linked yet */
        cm_free(r->prompt);
        cm_free(r->stop_ids);
        for (size_t i = 0; r->stop && i < r->n_stop; i++) cm_free(r->stop[i]);
        cm_free(r->stop);
        cm_free(r);
    }
    return refuse(core, err, 503, "service_unavailable", 1, CM_ERR_NO_MEMORY,
                  "The router is out of memory.");
}

const char *rt_core_model_name(const rt_core_t *core) { return core->served_model_name; }

uint32_t rt_core_max_context(const rt_core_t *core) { return context_limit(core); }

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
    APPEND("# HELP tandem_requests_finished_total Requests that started, by outcome.\n"
           "# TYPE tandem_requests_finished_total counter\n"
           "tandem_requests_finished_total{outcome=\"completed\"} %llu\n"
           "tandem_requests_finished_total{outcome=\"failed\"} %llu\n"
           "tandem_requests_finished_total{outcome=\"canceled\"} %llu\n"
           "tandem_requests_finished_total{outcome=\"timed_out\"} %llu\n",
           (unsigned long long)core->n_completed, (unsigned long long)core->n_failed,
           (unsigned long long)core->n_canceled, (unsigned long long)core->n_timed_out);
    APPEND("# HELP tandem_requests_retried_total Requests moved to another worker after a "
           "worker was lost.\n# TYPE tandem_requests_retried_total counter\n"
           "tandem_requests_retried_total %llu\n",
           (unsigned long long)core->n_retried);
    APPEND("# HELP tandem_requests_refused_total Requests refused before starting, by HTTP "
           "status.\n# TYPE tandem_requests_refused_total counter\n");
    for (int i = 0; i < 6; i++)
        APPEND("tandem_requests_refused_total{code=\"%s\"} %llu\n", codes[i],
               (unsigned long long)core->n_refused_by_status[i]);
    APPEND("# HELP tandem_requests_running Requests placed on workers.\n"
           "# TYPE tandem_requests_running gauge\ntandem_requests_running %zu\n"
           "# HELP tandem_queue_depth Requests waiting for a worker.\n"
           "# TYPE tandem_queue_depth gauge\ntandem_queue_depth %zu\n",
           core->n_reqs - core->qlen, core->qlen);
    APPEND("# HELP tandem_workers Registered workers by role (not draining).\n"
           "# TYPE tandem_workers gauge\n"
           "tandem_workers{role=\"prefill\"} %u\ntandem_workers{role=\"decode\"} %u\n"
           "tandem_workers{role=\"colocated\"} %u\n",
           count(core, RT_ROLE_PREFILL), count(core, RT_ROLE_DECODE),
           count(core, RT_ROLE_COLOCATED));
    uint64_t used = 0, total = 0;
    const rt_worker_t *w;
    for (size_t i = 0; (w = rt_registry_at(core->registry, i)); i++) {
        if (w->role == RT_ROLE_PREFILL) continue;
        used += w->used_blocks;
        total += w->total_blocks;
    }
    APPEND("# HELP tandem_kv_blocks KV blocks of decode and colocated workers (from "
           "heartbeats).\n# TYPE tandem_kv_blocks gauge\n"
           "tandem_kv_blocks{state=\"used\"} %llu\ntandem_kv_blocks{state=\"total\"} %llu\n",
           (unsigned long long)used, (unsigned long long)total);
    uint64_t kb = 0, kt = 0, kus = 0, kn = 0, kw = 0;
    for (size_t i = 0; (w = rt_registry_at(core->registry, i)); i++) {
        kb += w->kv_bytes_sent;
        kt += w->kv_transfers_sent;
        kus += w->kv_transfer_us_total;
        kn += w->kv_notices_received;
        kw += w->kv_wait_us_total;
    }
    APPEND(
        "# HELP tandem_kv_transfer_bytes_total KV bytes prefill workers sent (live workers).\n"
        "# TYPE tandem_kv_transfer_bytes_total counter\ntandem_kv_transfer_bytes_total %llu\n"
        "# HELP tandem_kv_transfer_seconds Time from posting a request's KV to its notice.\n"
        "# TYPE tandem_kv_transfer_seconds summary\n"
        "tandem_kv_transfer_seconds_sum %.6f\ntandem_kv_transfer_seconds_count %llu\n"
        "# HELP tandem_kv_notices_received_total KV-landed notices decode workers got.\n"
        "# TYPE tandem_kv_notices_received_total counter\ntandem_kv_notices_received_total %llu\n"
        "# HELP tandem_kv_wait_seconds Time from a prompt's forward pass ending to its KV "
        "landed.\n# TYPE tandem_kv_wait_seconds summary\n"
        "tandem_kv_wait_seconds_sum %.6f\ntandem_kv_wait_seconds_count %llu\n",
        (unsigned long long)kb, (double)kus / 1e6, (unsigned long long)kt, (unsigned long long)kn,
        (double)kw / 1e6, (unsigned long long)kt);
    APPEND("# HELP tandem_phase_seconds Time spent per phase of started requests.\n"
           "# TYPE tandem_phase_seconds summary\n"
           "tandem_phase_seconds_sum{phase=\"queue\"} %.6f\n"
           "tandem_phase_seconds_count{phase=\"queue\"} %llu\n"
           "tandem_phase_seconds_sum{phase=\"reserve_prefill\"} %.6f\n"
           "tandem_phase_seconds_count{phase=\"reserve_prefill\"} %llu\n",
           (double)core->sum_queue_ms / 1e3,
           (unsigned long long)(core->n_completed + core->n_failed + core->n_canceled),
           (double)(core->sum_reserve_ms + core->sum_prefill_ms) / 1e3,
           (unsigned long long)core->n_phase);
#undef APPEND
    return n;
}
