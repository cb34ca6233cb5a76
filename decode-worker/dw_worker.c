/*
 * dw_worker.c - the worker process: `tandem worker` (colocated: runs both
 * phases) on the control plane.
 *
 * Two threads. The loop thread runs libuv: the control-plane agent
 * (register, heartbeats with load, deregister), signals, and turning
 * scheduler events into TokenStream messages. The compute thread owns the
 * runner (engine, KV pool, scheduler) and steps it while there is work.
 * They meet in two mutex-guarded queues: commands (add, cancel) one way,
 * events the other (with a uv_async wake-up).
 *
 * SIGTERM drains: heartbeats say "draining" so the router sends nothing
 * new, in-flight requests finish (deadline --drain-timeout), then the
 * worker deregisters and exits 0. A second signal exits at once.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>
#include <zmq.h>

#include "cm_cli.h"
#include "cm_cp_agent.h"
#include "dw_cmd.h"
#include "dw_runner.h"

static const char *g_router, *g_model, *g_name, *g_backend, *g_worker_id;
static uint64_t g_pool, g_drain_ms;
static int64_t g_block_size, g_max_seqs, g_max_batch_tokens, g_max_context;

static const cm_flag_t k_flags[] = {
    {.name = "router",
     .type = CM_FLAG_STRING,
     .dst = &g_router,
     .def = "tcp://127.0.0.1:5557",
     .help = "the router's control-plane endpoint"},
    {.name = "model",
     .type = CM_FLAG_STRING,
     .dst = &g_model,
     .required = true,
     .help = "model directory (Hugging Face layout)"},
    {.name = "served-model-name",
     .type = CM_FLAG_STRING,
     .dst = &g_name,
     .help = "model name the router serves (default: the --model directory's name)"},
    {.name = "backend",
     .type = CM_FLAG_CHOICE,
     .dst = &g_backend,
     .def = "cpu",
     .choices = "ref|cpu|cuda",
     .help = "compute backend"},
    {.name = "worker-id",
     .type = CM_FLAG_STRING,
     .dst = &g_worker_id,
     .help = "name of this worker (default: <hostname>-<pid>)"},
    {.name = "kv-pool-size",
     .type = CM_FLAG_SIZE,
     .dst = &g_pool,
     .def = "256M",
     .help = "KV cache pool size"},
    {.name = "block-size",
     .type = CM_FLAG_INT,
     .dst = &g_block_size,
     .def = "16",
     .help = "tokens per KV block",
     .min = 1,
     .max = 1024},
    {.name = "max-batch",
     .type = CM_FLAG_INT,
     .dst = &g_max_seqs,
     .def = "64",
     .help = "sequences in the running batch",
     .min = 1,
     .max = 4096},
    {.name = "max-batch-tokens",
     .type = CM_FLAG_INT,
     .dst = &g_max_batch_tokens,
     .def = "512",
     .help = "tokens per model step (prefill chunking)",
     .min = 1,
     .max = 1 << 20},
    {.name = "max-context",
     .type = CM_FLAG_INT,
     .dst = &g_max_context,
     .def = "0",
     .help = "context limit in tokens (0 = the model's)",
     .min = 0,
     .max = 1 << 24},
    {.name = "drain-timeout",
     .type = CM_FLAG_DURATION,
     .dst = &g_drain_ms,
     .def = "30s",
     .help = "on SIGTERM, wait this long for in-flight requests"},
    {0},
};

typedef enum { CMD_ADD, CMD_CANCEL } cmd_kind_t;

typedef struct cmd {
    struct cmd *next;
    cmd_kind_t kind;
    uint64_t id;
    dw_request_t req; /* CMD_ADD: owns prompt and stop strings */
    int32_t *prompt;
    char **stop;
} cmd_t;

typedef struct evt {
    struct evt *next;
    uint64_t id;
    int32_t *ids;
    size_t n;
    char *text;
    size_t text_len;
    float *logprobs;
    eng_logprob_t *top;
    size_t top_per_token;
    dw_finish_t finish;
    cm_status_t error;
    uint32_t prompt_tokens, completion_tokens;
} evt_t;

typedef struct {
    uv_loop_t *loop;
    void *zctx;
    cm_cp_agent_t *agent;
    uv_async_t async;
    uv_signal_t sigint, sigterm;
    uv_timer_t drain_timer;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    cmd_t *cmd_head, *cmd_tail;
    evt_t *evt_head, *evt_tail;
    bool stop;
    /* Published by the compute thread under mu, for heartbeats. */
    uint32_t running, waiting, free_blocks, used_blocks;
    /* Loop-thread state. */
    dw_runner_t *runner;
    uint32_t vocab;
    int32_t eos[ENG_SAMPLER_MAX_STOP];
    uint32_t n_eos;
    uint64_t *live_ids; /* requests accepted and not yet finished */
    size_t live, cap_live;
    bool draining, stopping;
    int exit_code;
} wk_t;

static wk_t g_wk;

/* ---- compute thread ---------------------------------------------------- */

static void on_sched_event(void *ud, const dw_event_t *e) {
    wk_t *w = ud;
    evt_t *v = cm_calloc(1, sizeof *v);
    if (!v) return;
    v->id = e->id;
    v->finish = e->finish;
    v->error = e->error;
    v->prompt_tokens = e->prompt_tokens;
    v->completion_tokens = e->completion_tokens;
    if (e->n) {
        v->ids = cm_malloc_array(e->n, sizeof *v->ids);
        if (v->ids) memcpy(v->ids, e->ids, e->n * sizeof *v->ids);
        v->n = v->ids ? e->n : 0;
    }
    if (e->text_len) {
        v->text = cm_strndup(e->text, e->text_len);
        v->text_len = v->text ? e->text_len : 0;
    }
    if (e->logprobs && v->n) {
        v->logprobs = cm_malloc_array(v->n, sizeof *v->logprobs);
        if (v->logprobs) memcpy(v->logprobs, e->logprobs, v->n * sizeof *v->logprobs);
    }
    if (e->top && e->top_per_token && v->n) {
        v->top = cm_malloc_array(v->n * e->top_per_token, sizeof *v->top);
        if (v->top) {
            memcpy(v->top, e->top, v->n * e->top_per_token * sizeof *v->top);
            v->top_per_token = e->top_per_token;
        }
    }
    pthread_mutex_lock(&w->mu);
    if (w->evt_tail)
        w->evt_tail->next = v;
    else
        w->evt_head = v;
    w->evt_tail = v;
    pthread_mutex_unlock(&w->mu);
    uv_async_send(&w->async);
}

static void cmd_free(cmd_t *c) {
    if (!c) return;
    cm_free(c->prompt);
    for (size_t i = 0; c->stop && i < c->req.n_stop; i++) cm_free(c->stop[i]);
    cm_free(c->stop);
    cm_free(c);
}

static void *compute_main(void *arg) {
    wk_t *w = arg;
    dw_sched_t *s = dw_runner_sched(w->runner);
    eng_kv_t *kv = dw_runner_kv(w->runner);
    for (;;) {
        pthread_mutex_lock(&w->mu);
        for (;;) {
            cmd_t *c = w->cmd_head;
            while (c) {
                cmd_t *next = c->next;
                pthread_mutex_unlock(&w->mu);
                if (c->kind == CMD_ADD) {
                    cm_status_t st = dw_sched_add(s, &c->req);
                    if (st != CM_OK) {
                        dw_event_t e = {.id = c->id, .finish = DW_FINISH_ERROR, .error = st};
                        on_sched_event(w, &e);
                    }
                } else {
                    dw_sched_cancel(s, c->id);
                }
                cmd_free(c);
                pthread_mutex_lock(&w->mu);
                c = next;
            }
            w->cmd_head = w->cmd_tail = NULL;
            eng_kv_stats_t ks;
            eng_kv_stats(kv, &ks);
            w->running = dw_sched_running(s);
            w->waiting = dw_sched_waiting(s);
            w->free_blocks = ks.n_free + ks.n_cached;
            w->used_blocks = ks.n_used;
            if (w->stop || w->running || w->waiting) break;
            pthread_cond_wait(&w->cv, &w->mu);
            if (!w->cmd_head && !w->stop) continue;
        }
        bool stop = w->stop;
        pthread_mutex_unlock(&w->mu);
        if (stop) return NULL;
        dw_sched_step(s);
    }
}

static void post(wk_t *w, cmd_t *c) {
    pthread_mutex_lock(&w->mu);
    if (w->cmd_tail)
        w->cmd_tail->next = c;
    else
        w->cmd_head = c;
    w->cmd_tail = c;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* ---- loop thread ------------------------------------------------------- */

static cm_cp_msg_t envelope(void) {
    cm_cp_msg_t m = TANDEM__CP__ENVELOPE__INIT;
    m.version = CM_CP_VERSION;
    return m;
}

static void send_error(wk_t *w, uint64_t id, cm_status_t code, const char *msg) {
    Tandem__Cp__Error e = TANDEM__CP__ERROR__INIT;
    e.request_id = id;
    e.code = code;
    e.message = (char *)msg;
    cm_cp_msg_t m = envelope();
    m.body_case = TANDEM__CP__ENVELOPE__BODY_ERROR;
    m.error = &e;
    cm_cp_agent_send(w->agent, &m);
}

static void maybe_finish_drain(wk_t *w);

static bool live_add(wk_t *w, uint64_t id) {
    if (w->live == w->cap_live) {
        size_t cap = w->cap_live ? w->cap_live * 2 : 64;
        uint64_t *n = cm_realloc_array(w->live_ids, cap, sizeof *n);
        if (!n) return false;
        w->live_ids = n;
        w->cap_live = cap;
    }
    w->live_ids[w->live++] = id;
    return true;
}

/* Returns true when @id was live (and now is not). */
static bool live_remove(wk_t *w, uint64_t id) {
    for (size_t i = 0; i < w->live; i++) {
        if (w->live_ids[i] == id) {
            w->live_ids[i] = w->live_ids[--w->live];
            return true;
        }
    }
    return false;
}

static void on_async(uv_async_t *a) {
    wk_t *w = a->data;
    pthread_mutex_lock(&w->mu);
    evt_t *v = w->evt_head;
    w->evt_head = w->evt_tail = NULL;
    pthread_mutex_unlock(&w->mu);
    while (v) {
        evt_t *next = v->next;
        if (v->finish == DW_FINISH_ERROR) {
            send_error(w, v->id, v->error, cm_strerror(v->error));
        } else {
            Tandem__Cp__TokenStream ts = TANDEM__CP__TOKEN_STREAM__INIT;
            ts.request_id = v->id;
            ts.n_token_ids = v->n;
            ts.token_ids = v->ids;
            ts.text = v->text ? v->text : "";
            if (v->logprobs) {
                ts.n_logprobs = v->n;
                ts.logprobs = v->logprobs;
            }
            size_t ntop = v->top ? v->n * v->top_per_token : 0;
            Tandem__Cp__TopLogprob *tl = ntop ? cm_calloc(ntop, sizeof *tl) : NULL;
            Tandem__Cp__TopLogprob **tlp = ntop ? cm_calloc(ntop, sizeof *tlp) : NULL;
            if (tl && tlp) {
                for (size_t i = 0; i < ntop; i++) {
                    tl[i] = (Tandem__Cp__TopLogprob)TANDEM__CP__TOP_LOGPROB__INIT;
                    tl[i].token_id = v->top[i].token;
                    tl[i].logprob = v->top[i].logprob;
                    tlp[i] = &tl[i];
                }
                ts.n_top_logprobs = ntop;
                ts.top_logprobs = tlp;
            }
            ts.finish_reason = v->finish == DW_FINISH_STOP ? TANDEM__CP__FINISH_REASON__FINISH_STOP
                               : v->finish == DW_FINISH_LENGTH
                                   ? TANDEM__CP__FINISH_REASON__FINISH_LENGTH
                                   : TANDEM__CP__FINISH_REASON__FINISH_NONE;
            ts.prompt_tokens = v->prompt_tokens;
            ts.completion_tokens = v->completion_tokens;
            cm_cp_msg_t m = envelope();
            m.body_case = TANDEM__CP__ENVELOPE__BODY_TOKENS;
            m.tokens = &ts;
            cm_status_t st = cm_cp_agent_send(w->agent, &m);
            if (st != CM_OK)
                cm_log_warn("worker", "token stream %llu: %s", (unsigned long long)v->id,
                            cm_strerror(st));
            cm_free(tl);
            cm_free(tlp);
        }
        if (v->finish != DW_FINISH_NONE) live_remove(w, v->id);
        cm_free(v->ids);
        cm_free(v->text);
        cm_free(v->logprobs);
        cm_free(v->top);
        cm_free(v);
        v = next;
    }
    maybe_finish_drain(w);
}

/* PrefillJob without a decode worker: run the whole request here. */
static void on_job(wk_t *w, const Tandem__Cp__PrefillJob *j) {
    if (w->draining) {
        send_error(w, j->request_id, CM_ERR_NO_RESOURCES, "worker is draining");
        return;
    }
    if (j->decode_worker_id[0]) {
        send_error(w, j->request_id, CM_ERR_UNSUPPORTED,
                   "this worker is colocated: it does not send KV to decode workers");
        return;
    }
    cmd_t *c = cm_calloc(1, sizeof *c);
    if (!c) {
        send_error(w, j->request_id, CM_ERR_NO_MEMORY, "out of memory");
        return;
    }
    c->kind = CMD_ADD;
    c->id = j->request_id;
    c->prompt = cm_malloc_array(j->n_prompt_tokens, sizeof *c->prompt);
    c->stop = j->n_stop ? cm_calloc(j->n_stop, sizeof *c->stop) : NULL;
    bool ok = c->prompt && (!j->n_stop || c->stop);
    for (size_t i = 0; ok && i < j->n_stop; i++) ok = (c->stop[i] = cm_strdup(j->stop[i])) != NULL;
    for (size_t i = 0; ok && i < j->n_prompt_tokens; i++)
        ok = (uint32_t)j->prompt_tokens[i] < w->vocab;
    if (!ok) {
        send_error(w, j->request_id, CM_ERR_INVALID_ARG, "bad prompt or out of memory");
        cmd_free(c);
        return;
    }
    memcpy(c->prompt, j->prompt_tokens, j->n_prompt_tokens * sizeof *c->prompt);
    const Tandem__Cp__SamplingParams *sp = j->sampling;
    dw_request_t *q = &c->req;
    q->id = j->request_id;
    q->prompt = c->prompt;
    q->n_prompt = (uint32_t)j->n_prompt_tokens;
    q->stop = (const char *const *)c->stop;
    q->n_stop = j->n_stop;
    eng_sampler_params_t *p = &q->params;
    eng_sampler_params_default(p);
    p->temperature = sp->temperature;
    p->top_k = sp->top_k > 0 ? sp->top_k : 0;
    p->top_p = sp->top_p > 0 ? sp->top_p : 1.0f;
    p->min_p = sp->min_p;
    p->repetition_penalty = sp->repetition_penalty > 0 ? sp->repetition_penalty : 1.0f;
    p->presence_penalty = sp->presence_penalty;
    p->frequency_penalty = sp->frequency_penalty;
    p->max_tokens = sp->max_tokens;
    p->logprobs = sp->logprobs;
    p->top_logprobs = sp->logprobs ? sp->top_logprobs : 0;
    if (sp->has_seed)
        p->seed = sp->seed;
    else if (getrandom(&p->seed, sizeof p->seed, 0) != (ssize_t)sizeof p->seed)
        p->seed = cm_time_wall_ns() ^ j->request_id;
    for (size_t i = 0; i < sp->n_stop_token_ids && p->n_stop < ENG_SAMPLER_MAX_STOP; i++)
        p->stop_ids[p->n_stop++] = sp->stop_token_ids[i];
    if (!sp->ignore_eos)
        for (uint32_t i = 0; i < w->n_eos && p->n_stop < ENG_SAMPLER_MAX_STOP; i++)
            p->stop_ids[p->n_stop++] = w->eos[i];
    char err[256];
    if (eng_sampler_params_validate(p, w->vocab, err, sizeof err) != CM_OK) {
        send_error(w, j->request_id, CM_ERR_INVALID_ARG, err);
        cmd_free(c);
        return;
    }
    if (!live_add(w, c->id)) {
        send_error(w, j->request_id, CM_ERR_NO_MEMORY, "out of memory");
        cmd_free(c);
        return;
    }
    post(w, c);
}

static void on_msg(void *ud, const cm_cp_msg_t *msg) {
    wk_t *w = ud;
    switch (msg->body_case) {
    case TANDEM__CP__ENVELOPE__BODY_PREFILL_JOB:
        on_job(w, msg->prefill_job);
        break;
    case TANDEM__CP__ENVELOPE__BODY_CANCEL: {
        cmd_t *c = cm_calloc(1, sizeof *c);
        if (!c) break;
        c->kind = CMD_CANCEL;
        c->id = msg->cancel->request_id;
        post(w, c);
        live_remove(w, c->id); /* no event will come for it */
        maybe_finish_drain(w);
        break;
    }
    default:
        cm_log_debug("worker", "ignored %s", cm_cp_body_name(msg));
    }
}

static void on_refused(void *ud, const char *reason) {
    wk_t *w = ud;
    fprintf(stderr, "tandem worker: the router refused this worker: %s\n", reason);
    w->exit_code = CM_EXIT_FAILURE;
    raise(SIGTERM);
}

static void fill_load(void *ud, Tandem__Cp__Heartbeat *hb) {
    wk_t *w = ud;
    pthread_mutex_lock(&w->mu);
    hb->running = w->running;
    hb->queued = w->waiting;
    hb->free_blocks = w->free_blocks;
    hb->used_blocks = w->used_blocks;
    pthread_mutex_unlock(&w->mu);
}

static void shutdown_now(wk_t *w) {
    if (w->stopping) return;
    w->stopping = true;
    cm_cp_agent_stop(w->agent, w->draining ? "drained" : "stopping");
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    uv_timer_stop(&w->drain_timer);
    uv_close((uv_handle_t *)&w->drain_timer, NULL);
    uv_close((uv_handle_t *)&w->async, NULL);
    uv_close((uv_handle_t *)&w->sigint, NULL);
    uv_close((uv_handle_t *)&w->sigterm, NULL);
}

static void maybe_finish_drain(wk_t *w) {
    if (w->draining && w->live == 0) shutdown_now(w);
}

static void on_drain_timeout(uv_timer_t *t) {
    wk_t *w = t->data;
    cm_log_warn("worker", "drain deadline passed with %zu requests in flight", w->live);
    shutdown_now(w);
}

static void on_signal(uv_signal_t *s, int signum) {
    wk_t *w = s->data;
    if (w->draining || signum == SIGINT) {
        shutdown_now(w);
        return;
    }
    cm_log_info("worker", "SIGTERM: draining %zu requests", w->live);
    w->draining = true;
    cm_cp_agent_set_draining(w->agent);
    uv_timer_start(&w->drain_timer, on_drain_timeout, g_drain_ms, 0);
    maybe_finish_drain(w);
}

int dw_cmd_worker(int argc, char **argv) {
    static const cm_flag_t *const tables[] = {k_flags, NULL};
    const cm_cmd_spec_t spec = {.prog = "tandem worker",
                                .summary = "Colocated worker: prefill and decode in one process, "
                                           "registered with the router's control plane.",
                                .tables = tables};
    int code, npos;
    if (!cm_cli_parse(&spec, argc, argv, NULL, &npos, &code)) return code;
    wk_t *w = &g_wk;
    memset(w, 0, sizeof *w);
    char namebuf[256], idbuf[128], err[512];
    if (!g_name || !g_name[0]) {
        const char *base = strrchr(g_model, '/');
        snprintf(namebuf, sizeof namebuf, "%s", base && base[1] ? base + 1 : g_model);
        g_name = namebuf;
    }
    if (!g_worker_id || !g_worker_id[0]) {
        char host[64] = "worker";
        gethostname(host, sizeof host - 1);
        for (char *p = host; *p; p++)
            if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                  (*p >= '0' && *p <= '9') || *p == '-' || *p == '.'))
                *p = '-';
        snprintf(idbuf, sizeof idbuf, "%s-%d", host, (int)getpid());
        g_worker_id = idbuf;
    }
    eng_backend_kind_t be;
    eng_backend_parse(g_backend, &be);
    dw_runner_config_t rc = {.model_dir = g_model,
                             .model_id = g_name,
                             .backend = be,
                             .kv_pool_bytes = g_pool,
                             .block_size = (uint32_t)g_block_size,
                             .max_seqs = (uint32_t)g_max_seqs,
                             .max_batch_tokens = (uint32_t)g_max_batch_tokens,
                             .max_context = (uint32_t)g_max_context};
    if (dw_runner_new(&rc, on_sched_event, w, &w->runner, err, sizeof err) != CM_OK) {
        fprintf(stderr, "tandem worker: %s\n", err);
        return CM_EXIT_FAILURE;
    }
    w->vocab = dw_runner_vocab(w->runner);
    w->n_eos = dw_runner_eos(w->runner, w->eos, ENG_SAMPLER_MAX_STOP);
    w->loop = uv_default_loop();
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    uv_async_init(w->loop, &w->async, on_async);
    w->async.data = w;
    uv_timer_init(w->loop, &w->drain_timer);
    w->drain_timer.data = w;
    uv_signal_init(w->loop, &w->sigint);
    uv_signal_init(w->loop, &w->sigterm);
    w->sigint.data = w->sigterm.data = w;
    uv_signal_start(&w->sigint, on_signal, SIGINT);
    uv_signal_start(&w->sigterm, on_signal, SIGTERM);
    const eng_kv_geom_t *g = eng_kv_geom(dw_runner_kv(w->runner));
    w->zctx = zmq_ctx_new();
    cm_cp_agent_config_t ac = {.router = g_router,
                               .worker_id = g_worker_id,
                               .role = TANDEM__CP__ROLE__ROLE_COLOCATED,
                               .model = g_name,
                               .fingerprint = dw_runner_fingerprint(w->runner),
                               .block_size = g->block_size,
                               .total_blocks = g->n_blocks,
                               .max_batch = (uint32_t)g_max_seqs,
                               .max_context = dw_runner_max_context(w->runner),
                               .vocab_size = w->vocab};
    cm_cp_limits_default(&ac.limits);
    ac.limits.vocab_size = w->vocab;
    cm_cp_agent_callbacks_t cb = {
        .on_msg = on_msg, .on_refused = on_refused, .fill_load = fill_load};
    if (cm_cp_agent_new(w->loop, w->zctx, &ac, &cb, w, &w->agent) != CM_OK) {
        fprintf(stderr, "tandem worker: cannot start the control plane to %s\n", g_router);
        return CM_EXIT_FAILURE;
    }
    if (pthread_create(&w->thread, NULL, compute_main, w) != 0) {
        fprintf(stderr, "tandem worker: cannot start the compute thread\n");
        return CM_EXIT_FAILURE;
    }
    cm_log_info("worker", "%s serving '%s' (%s backend, %u KV blocks of %u tokens, context %u)",
                g_worker_id, g_name, g_backend, g->n_blocks, g->block_size,
                dw_runner_max_context(w->runner));
    uv_run(w->loop, UV_RUN_DEFAULT);
    pthread_join(w->thread, NULL);
    uv_loop_close(w->loop);
    zmq_ctx_term(w->zctx);
    while (w->cmd_head) {
        cmd_t *c = w->cmd_head;
        w->cmd_head = c->next;
        cmd_free(c);
    }
    while (w->evt_head) {
        evt_t *v = w->evt_head;
        w->evt_head = v->next;
        cm_free(v->ids);
        cm_free(v->text);
        cm_free(v->logprobs);
        cm_free(v->top);
        cm_free(v);
    }
    dw_runner_free(w->runner);
    cm_free(w->live_ids);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    cm_log_info("worker", "stopped");
    return w->exit_code;
}
