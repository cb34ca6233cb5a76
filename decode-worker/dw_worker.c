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
#include "kvx.h"

static const char *g_router, *g_model, *g_name, *g_backend, *g_worker_id, *g_kv_stream;
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
    {.name = "kv-stream",
     .type = CM_FLAG_CHOICE,
     .dst = &g_kv_stream,
     .def = "layer",
     .choices = "layer|off",
     .help = "prefill: ship each layer's KV as soon as the prompt's last chunk computed it "
             "(layer), or all layers after the forward pass (off)"},
    {.name = "drain-timeout",
     .type = CM_FLAG_DURATION,
     .dst = &g_drain_ms,
     .def = "30s",
     .help = "on SIGTERM, wait this long for in-flight requests"},
    {0},
};

typedef enum { WK_COLOCATED = 0, WK_PREFILL, WK_DECODE } wk_role_t;

typedef enum { CMD_ADD, CMD_CANCEL, CMD_RESERVE, CMD_COMMIT, CMD_FREE_SEQ } cmd_kind_t;

typedef struct cmd {
    struct cmd *next;
    cmd_kind_t kind;
    uint64_t id;
    eng_kv_seq_t *seq; /* CMD_FREE_SEQ */
    dw_request_t req;  /* CMD_ADD: owns prompt and stop strings */
    int32_t *prompt;
    char **stop;
} cmd_t;

typedef enum { EVT_SCHED = 0, EVT_RESERVED, EVT_RESERVE_FAILED, EVT_LAYER } evt_kind_t;

typedef struct evt {
    struct evt *next;
    evt_kind_t kind;
    uint64_t id;
    eng_kv_seq_t *seq; /* DW_FINISH_PREFILL: the prompt's KV, handed over */
    int32_t *blocks;   /* its block ids, or the reserved ones (EVT_RESERVED) */
    uint32_t n_blocks, cached_blocks, cached_tokens;
    uint32_t layers; /* EVT_LAYER: layers [0, layers) of the prompt are computed */
    int32_t *ids;
    size_t n;
    char *text;
    size_t text_len;
    float *logprobs;
    eng_logprob_t *top;
    size_t top_per_token;
    dw_finish_t finish;
    cm_status_t error;
    const char *why; /* static text (dw_event_t.why), or NULL */
    uint32_t prompt_tokens, completion_tokens;
} evt_t;

/* Decode: a reserved request waiting for its KV and first token. */
typedef struct {
    uint64_t id;
    cmd_t *add;      /* the request to add once everything arrived */
    uint32_t layers; /* layers landed so far (notices) */
    bool replied;    /* ReserveReply sent: the prefill may be writing the blocks */
    bool kv_ready;   /* KvReady from the router arrived */
    uint64_t deadline_ms;
} pend_t;

/* Prefill: where a request's KV goes. */
typedef struct {
    uint64_t id;
    kvx_peer_t *peer;
    uint32_t *dst;
    size_t n_dst;
    uint32_t skip;
    uint64_t deadline_ms;
    /* After the transfer: what KvReady says. */
    int32_t first_token;
    float first_logprob;
    uint32_t n_top;
    eng_logprob_t top[ENG_SAMPLER_MAX_LOGPROBS];
    uint32_t prompt_tokens, cached_tokens;
    eng_kv_seq_t *seq;  /* ours once the prefill finished (or failed after streaming) */
    bool sending;       /* a send was posted: the job ends when they all end */
    bool prefill_done;  /* first token known, seq handed over */
    uint32_t posted;    /* layers [0, posted) are posted */
    uint32_t inflight;  /* sends not completed */
    cm_status_t err;    /* first failure (of a send or of the prefill) */
    const char *why;    /* its message */
    uint64_t t_post_ns; /* first send posted */
    uint64_t t_done_ns; /* forward pass of the prompt ended */
} job_t;

typedef struct {
    wk_role_t role;
    uv_loop_t *loop;
    void *zctx;
    cm_cp_agent_t *agent;
    /* kvxfer (prefill and decode). */
    kvx_ctx_t *kvx;
    kvx_pool_t *pool;
    uint8_t *desc;
    size_t desc_len;
    uint64_t fingerprint;
    uv_poll_t kvx_poll;
    uv_timer_t kvx_timer;
    pend_t *pend;
    size_t n_pend, cap_pend;
    /* Reservations given up while KV may still be in flight: released at
     * .at_ms (see release_resv). */
    struct {
        uint64_t id, at_ms;
    } * quar;
    size_t n_quar, cap_quar;
    job_t *jobs;
    size_t n_jobs, cap_jobs;
    uint64_t kv_transfers, kv_transfer_us, kv_wait_us;
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

static void push_evt(wk_t *w, evt_t *v);

static void on_sched_event(void *ud, const dw_event_t *e) {
    wk_t *w = ud;
    evt_t *v = cm_calloc(1, sizeof *v);
    if (!v) return;
    v->id = e->id;
    v->finish = e->finish;
    v->error = e->error;
    v->why = e->why;
    v->prompt_tokens = e->prompt_tokens;
    v->completion_tokens = e->completion_tokens;
    v->cached_tokens = e->cached_tokens;
    if (e->kv_layers) {
        /* Layer streaming: the blocks are stable for the rest of the step. */
        v->kind = EVT_LAYER;
        v->layers = e->kv_layers;
        v->n_blocks = e->n_kv_blocks;
        v->blocks = cm_malloc_array(v->n_blocks ? v->n_blocks : 1, sizeof *v->blocks);
        if (!v->blocks) {
            cm_free(v);
            return; /* the layers go with the rest after the prefill */
        }
        memcpy(v->blocks, e->kv_blocks, v->n_blocks * sizeof *v->blocks);
        push_evt(w, v);
        return;
    }
    if (e->seq) {
        /* Prefill done: its blocks are stable until CMD_FREE_SEQ. */
        v->seq = e->seq;
        v->n_blocks = eng_kv_seq_n_blocks(e->seq);
        v->blocks = cm_malloc_array(v->n_blocks ? v->n_blocks : 1, sizeof *v->blocks);
        if (v->blocks)
            memcpy(v->blocks, eng_kv_seq_blocks(e->seq), v->n_blocks * sizeof *v->blocks);
    }
    if (e->n) {
        v->ids = cm_malloc_array(e->n, sizeof *v->ids);
        if (v->ids) memcpy(v->ids, e->ids, e->n * sizeof *v->ids);
        v->n = v->ids ? e->n : 0;
    }
    if (e->text_len) {
        v->text = cm_malloc(e->text_len);
        if (v->text) memcpy(v->text, e->text, e->text_len);
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
    push_evt(w, v);
}

static void push_evt(wk_t *w, evt_t *v) {
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

/* Reservations made for remote prefills (compute thread only). */
typedef struct {
    uint64_t id;
    eng_kv_seq_t *seq;
} resv_t;
static resv_t *g_resv;
static size_t g_n_resv, g_cap_resv;

static eng_kv_seq_t *resv_take(uint64_t id) {
    for (size_t i = 0; i < g_n_resv; i++) {
        if (g_resv[i].id == id) {
            eng_kv_seq_t *s = g_resv[i].seq;
            g_resv[i] = g_resv[--g_n_resv];
            return s;
        }
    }
    return NULL;
}

static void push_evt(wk_t *w, evt_t *v);

static void do_reserve(wk_t *w, cmd_t *c) {
    eng_kv_t *kv = dw_runner_kv(w->runner);
    evt_t *v = cm_calloc(1, sizeof *v);
    if (!v) return;
    v->id = c->id;
    eng_kv_seq_t *seq = NULL;
    uint32_t hit = 0;
    cm_status_t st = CM_ERR_NO_MEMORY;
    if (g_n_resv == g_cap_resv) {
        size_t cap = g_cap_resv ? g_cap_resv * 2 : 64;
        resv_t *n = cm_realloc_array(g_resv, cap, sizeof *n);
        if (n) {
            g_resv = n;
            g_cap_resv = cap;
        }
    }
    if (g_n_resv < g_cap_resv)
        st = eng_kv_reserve(kv, c->prompt, c->req.n_prompt, c->req.n_prompt - 1, &seq, &hit);
    if (st == CM_OK) {
        g_resv[g_n_resv++] = (resv_t){c->id, seq};
        v->kind = EVT_RESERVED;
        v->n_blocks = eng_kv_seq_n_blocks(seq);
        v->blocks = cm_malloc_array(v->n_blocks, sizeof *v->blocks);
        if (v->blocks) memcpy(v->blocks, eng_kv_seq_blocks(seq), v->n_blocks * sizeof *v->blocks);
        v->cached_blocks = hit;
    } else {
        v->kind = EVT_RESERVE_FAILED;
        v->error = st;
    }
    push_evt(w, v);
}

/* Executes one command on the compute thread. */
static void run_cmd(wk_t *w, cmd_t *c) {
    dw_sched_t *s = dw_runner_sched(w->runner);
    eng_kv_t *kv = dw_runner_kv(w->runner);
    if (c->kind == CMD_ADD || c->kind == CMD_COMMIT) {
        cm_status_t st = CM_OK;
        if (c->kind == CMD_COMMIT) {
            c->req.seq = resv_take(c->id);
            st = c->req.seq ? eng_kv_reserve_commit(kv, c->req.seq) : CM_ERR_NOT_FOUND;
        }
        if (st == CM_OK) st = dw_sched_add(s, &c->req);
        if (st != CM_OK) {
            if (c->req.seq) eng_kv_seq_free(kv, c->req.seq);
            dw_event_t e = {.id = c->id, .finish = DW_FINISH_ERROR, .error = st};
            on_sched_event(w, &e);
        }
    } else if (c->kind == CMD_RESERVE) {
        do_reserve(w, c);
    } else if (c->kind == CMD_FREE_SEQ) {
        eng_kv_seq_free(kv, c->seq);
    } else {
        eng_kv_seq_t *r = resv_take(c->id);
        if (r)
            eng_kv_reserve_cancel(kv, r);
        else
            dw_sched_cancel(s, c->id);
    }
}

static void *compute_main(void *arg) {
    wk_t *w = arg;
    dw_sched_t *s = dw_runner_sched(w->runner);
    eng_kv_t *kv = dw_runner_kv(w->runner);
    for (;;) {
        pthread_mutex_lock(&w->mu);
        for (;;) {
            /* Take the whole queue at once: commands posted while these
             * run are picked up on the next turn, never lost. */
            while (w->cmd_head) {
                cmd_t *c = w->cmd_head;
                w->cmd_head = w->cmd_tail = NULL;
                pthread_mutex_unlock(&w->mu);
                while (c) {
                    cmd_t *next = c->next;
                    run_cmd(w, c);
                    cmd_free(c);
                    c = next;
                }
                pthread_mutex_lock(&w->mu);
            }
            eng_kv_stats_t ks;
            eng_kv_stats(kv, &ks);
            w->running = dw_sched_running(s);
            w->waiting = dw_sched_waiting(s);
            w->free_blocks = ks.n_free + ks.n_cached;
            w->used_blocks = ks.n_used;
            if (w->stop || w->running || w->waiting) break;
            pthread_cond_wait(&w->cv, &w->mu);
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

static void evt_free(evt_t *v) {
    cm_free(v->ids);
    cm_free(v->text);
    cm_free(v->logprobs);
    cm_free(v->top);
    cm_free(v->blocks);
    cm_free(v);
}

static void send_tokens(wk_t *w, const evt_t *v) {
    Tandem__Cp__TokenStream ts = TANDEM__CP__TOKEN_STREAM__INIT;
    ts.request_id = v->id;
    ts.n_token_ids = v->n;
    ts.token_ids = v->ids;
    ts.text.data = (uint8_t *)v->text;
    ts.text.len = v->text ? v->text_len : 0;
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
    ts.finish_reason = v->finish == DW_FINISH_STOP     ? TANDEM__CP__FINISH_REASON__FINISH_STOP
                       : v->finish == DW_FINISH_LENGTH ? TANDEM__CP__FINISH_REASON__FINISH_LENGTH
                                                       : TANDEM__CP__FINISH_REASON__FINISH_NONE;
    ts.prompt_tokens = v->prompt_tokens;
    ts.completion_tokens = v->completion_tokens;
    cm_cp_msg_t m = envelope();
    m.body_case = TANDEM__CP__ENVELOPE__BODY_TOKENS;
    m.tokens = &ts;
    cm_status_t st = cm_cp_agent_send(w->agent, &m);
    if (st != CM_OK)
        cm_log_warn("worker", "token stream %llu: %s", (unsigned long long)v->id, cm_strerror(st));
    cm_free(tl);
    cm_free(tlp);
}

/* ---- prefill: ship the KV, then report the first token ------------------- */

static job_t *job_find(wk_t *w, uint64_t id) {
    for (size_t i = 0; i < w->n_jobs; i++)
        if (w->jobs[i].id == id) return &w->jobs[i];
    return NULL;
}

static void job_remove(wk_t *w, uint64_t id) {
    for (size_t i = 0; i < w->n_jobs; i++) {
        if (w->jobs[i].id == id) {
            cm_free(w->jobs[i].dst);
            w->jobs[i] = w->jobs[--w->n_jobs];
            return;
        }
    }
}

static void free_seq_later(wk_t *w, eng_kv_seq_t *seq) {
    cmd_t *c = cm_calloc(1, sizeof *c);
    if (!c) return; /* leaks one sequence's blocks rather than crash */
    c->kind = CMD_FREE_SEQ;
    c->seq = seq;
    post(w, c);
}

static void on_kv_sent(void *ud, cm_status_t st);

/* Ends a job once its prefill finished and no send is in flight: KvReady
 * when every layer landed, else an error. Frees the prompt's blocks. */
static void job_try_finish(wk_t *w, job_t *j) {
    uint32_t layers = eng_model_config(dw_runner_model(w->runner))->n_layers;
    if (!j->prefill_done || j->inflight) return;
    if (j->err == CM_OK && j->posted < layers) return; /* cannot happen: posted at prefill end */
    uint64_t id = j->id;
    if (j->err == CM_OK && j->t_post_ns) {
        uint64_t now = cm_time_mono_ns();
        w->kv_transfers++;
        w->kv_transfer_us += (now - j->t_post_ns) / 1000;
        w->kv_wait_us += (now - j->t_done_ns) / 1000;
    }
    if (j->err == CM_OK) {
        Tandem__Cp__KvReady k = TANDEM__CP__KV_READY__INIT;
        Tandem__Cp__TopLogprob tl[ENG_SAMPLER_MAX_LOGPROBS], *tlp[ENG_SAMPLER_MAX_LOGPROBS];
        for (uint32_t i = 0; i < j->n_top; i++) {
            tl[i] = (Tandem__Cp__TopLogprob)TANDEM__CP__TOP_LOGPROB__INIT;
            tl[i].token_id = j->top[i].token;
            tl[i].logprob = j->top[i].logprob;
            tlp[i] = &tl[i];
        }
        k.request_id = id;
        k.first_token = j->first_token;
        k.first_logprob = j->first_logprob < 0 ? j->first_logprob : 0;
        k.n_first_top_logprobs = j->n_top;
        k.first_top_logprobs = tlp;
        k.rng_counter = 1;
        k.prompt_tokens = j->prompt_tokens;
        k.cached_tokens = j->cached_tokens < j->prompt_tokens ? j->cached_tokens : 0;
        cm_cp_msg_t m = envelope();
        m.body_case = TANDEM__CP__ENVELOPE__BODY_KV_READY;
        m.kv_ready = &k;
        cm_cp_agent_send(w->agent, &m);
    } else {
        send_error(w, id, j->err, j->why ? j->why : "KV transfer to the decode worker failed");
    }
    if (j->seq) free_seq_later(w, j->seq);
    live_remove(w, id);
    job_remove(w, id);
    maybe_finish_drain(w);
}

/* Posts layers [j->posted, hi) of the job's blocks @blocks (the prompt's,
 * n_blocks of them) to the decode worker. The send's callback may run in
 * here and end the job: callers find it again by id afterwards. */
static void kvx_cadence(wk_t *w);

static void job_post(wk_t *w, job_t *j, const int32_t *blocks, uint32_t n_blocks, uint32_t hi) {
    if (j->err != CM_OK || hi <= j->posted) return;
    if (n_blocks < j->n_dst) {
        j->err = CM_ERR_INTERNAL;
        return;
    }
    size_t np = j->n_dst - j->skip;
    if (np == 0) { /* all cached on the decode side */
        j->posted = hi;
        return;
    }
    kvx_pair_t *pairs = cm_malloc_array(np, sizeof *pairs);
    if (!pairs) {
        j->err = CM_ERR_NO_MEMORY;
        return;
    }
    for (size_t i = 0; i < np; i++)
        pairs[i] = (kvx_pair_t){blocks[j->skip + i], (int32_t)j->dst[j->skip + i]};
    uint64_t now = cm_time_mono_ms();
    uint64_t left = j->deadline_ms > now ? j->deadline_ms - now : 1;
    uint32_t lo = j->posted;
    if (!j->t_post_ns) j->t_post_ns = cm_time_mono_ns();
    j->sending = true;
    j->inflight++;
    j->posted = hi;
    cm_status_t st = kvx_send(j->peer, w->pool, j->id, lo, hi, pairs, np, false, left, on_kv_sent,
                              (void *)(uintptr_t)j->id);
    cm_free(pairs);
    if (st != CM_OK) { /* no callback: @j is still there */
        j->inflight--;
        j->err = st;
    }
    kvx_cadence(w);
}

static void on_kv_sent(void *ud, cm_status_t st) {
    wk_t *w = &g_wk;
    job_t *j = job_find(w, (uint64_t)(uintptr_t)ud);
    if (!j) return;
    j->inflight--;
    if (st != CM_OK && j->err == CM_OK) j->err = st;
    job_try_finish(w, j);
}

/* Layer streaming: the prompt's layers [0, v->layers) are computed. */
static void on_layer_ready(wk_t *w, evt_t *v) {
    job_t *j = job_find(w, v->id);
    if (!j) return; /* canceled meanwhile: the prefill's end frees the blocks */
    job_post(w, j, v->blocks, v->n_blocks, v->layers);
    kvx_ctx_progress(w->kvx); /* the job's prefill is not done: it stays */
}

static void on_prefill_done(wk_t *w, evt_t *v) {
    job_t *j = job_find(w, v->id);
    if (!j) { /* canceled meanwhile */
        free_seq_later(w, v->seq);
        return;
    }
    j->seq = v->seq;
    j->prefill_done = true;
    j->t_done_ns = cm_time_mono_ns();
    j->first_token = v->n ? v->ids[0] : 0;
    j->first_logprob = v->logprobs ? v->logprobs[0] : 0;
    j->n_top = v->top ? (uint32_t)v->top_per_token : 0;
    if (j->n_top) memcpy(j->top, v->top, j->n_top * sizeof *j->top);
    j->prompt_tokens = v->prompt_tokens;
    j->cached_tokens = v->cached_tokens;
    /* Whatever was not streamed (all of it with --kv-stream off). */
    uint64_t id = j->id;
    job_post(w, j, v->blocks, v->n_blocks, eng_model_config(dw_runner_model(w->runner))->n_layers);
    kvx_ctx_progress(w->kvx);
    if ((j = job_find(w, id))) job_try_finish(w, j);
}

/* The prefill failed: a job whose layers were streamed gets its blocks
 * back with the error (sends from them may still be in flight). */
static void on_prefill_error(wk_t *w, evt_t *v) {
    job_t *j = job_find(w, v->id);
    if (!j) {
        if (v->seq) free_seq_later(w, v->seq);
        send_error(w, v->id, v->error, v->why ? v->why : cm_strerror(v->error));
        live_remove(w, v->id);
        return;
    }
    j->seq = v->seq;
    j->prefill_done = true;
    if (j->err == CM_OK) {
        j->err = v->error;
        j->why = v->why ? v->why : cm_strerror(v->error);
    }
    job_try_finish(w, j);
}

/* ---- decode: commit once all layers and the first token arrived ---------- */

static pend_t *pend_find(wk_t *w, uint64_t id) {
    for (size_t i = 0; i < w->n_pend; i++)
        if (w->pend[i].id == id) return &w->pend[i];
    return NULL;
}

static void pend_remove(wk_t *w, uint64_t id, bool free_cmd) {
    for (size_t i = 0; i < w->n_pend; i++) {
        if (w->pend[i].id == id) {
            if (free_cmd) cmd_free(w->pend[i].add);
            w->pend[i] = w->pend[--w->n_pend];
            return;
        }
    }
}

static void maybe_commit(wk_t *w, pend_t *p) {
    uint32_t layers = eng_model_config(dw_runner_model(w->runner))->n_layers;
    if (!p->kv_ready || p->layers < layers) return;
    cmd_t *c = p->add;
    c->kind = CMD_COMMIT;
    uint64_t id = p->id;
    pend_remove(w, id, false);
    post(w, c); /* live since the reservation */
}

/* How long a reservation given up before all its KV landed stays out of
 * the pool: puts the prefill worker posted before it learnt of the end
 * still land (it posts nothing new once canceled, and a put completes in
 * milliseconds); blocks reused at once could take a stale write. */
#define KV_QUARANTINE_MS 2000

static void cancel_now(wk_t *w, uint64_t id) {
    cmd_t *c = cm_calloc(1, sizeof *c);
    if (!c) return;
    c->kind = CMD_CANCEL;
    c->id = id;
    post(w, c);
}

/* Gives up the reservation @id (pending as @p): at once, or after
 * KV_QUARANTINE_MS when the prefill worker may still be writing into it. */
static void release_resv(wk_t *w, uint64_t id, const pend_t *p) {
    uint32_t layers = eng_model_config(dw_runner_model(w->runner))->n_layers;
    if (!p || !p->replied || p->layers >= layers) {
        cancel_now(w, id);
        return;
    }
    if (w->n_quar == w->cap_quar) {
        size_t cap = w->cap_quar ? w->cap_quar * 2 : 16;
        void *n = cm_realloc_array(w->quar, cap, sizeof *w->quar);
        if (!n) {
            cancel_now(w, id);
            return;
        }
        w->quar = n;
        w->cap_quar = cap;
    }
    w->quar[w->n_quar].id = id;
    w->quar[w->n_quar++].at_ms = cm_time_mono_ms() + KV_QUARANTINE_MS;
}

static void on_kvx_notice(void *ud, const kvx_notice_t *n) {
    wk_t *w = ud;
    pend_t *p = pend_find(w, n->req_id);
    if (!p) return; /* canceled or unknown: the router cleans up */
    if (n->status != CM_OK) return;
    p->layers += n->layer_hi - n->layer_lo;
    maybe_commit(w, p);
}

static void on_async(uv_async_t *a) {
    wk_t *w = a->data;
    pthread_mutex_lock(&w->mu);
    evt_t *v = w->evt_head;
    w->evt_head = w->evt_tail = NULL;
    pthread_mutex_unlock(&w->mu);
    while (v) {
        evt_t *next = v->next;
        if (v->kind == EVT_RESERVED) {
            if (!pend_find(w, v->id)) {
                /* Canceled while reserving: give the blocks back. */
                cmd_t *c = cm_calloc(1, sizeof *c);
                if (c) {
                    c->kind = CMD_CANCEL;
                    c->id = v->id;
                    post(w, c);
                }
            } else {
                Tandem__Cp__ReserveReply r = TANDEM__CP__RESERVE_REPLY__INIT;
                uint32_t *ids = cm_malloc_array(v->n_blocks ? v->n_blocks : 1, sizeof *ids);
                for (uint32_t i = 0; ids && i < v->n_blocks; i++) ids[i] = (uint32_t)v->blocks[i];
                r.request_id = v->id;
                r.n_block_ids = ids ? v->n_blocks : 0;
                r.block_ids = ids;
                r.cached_blocks = v->cached_blocks;
                cm_cp_msg_t m = envelope();
                m.body_case = TANDEM__CP__ENVELOPE__BODY_RESERVE_REPLY;
                m.reserve_reply = &r;
                cm_cp_agent_send(w->agent, &m);
                cm_free(ids);
                pend_find(w, v->id)->replied = true;
            }
        } else if (v->kind == EVT_RESERVE_FAILED) {
            if (pend_find(w, v->id)) {
                pend_remove(w, v->id, true);
                live_remove(w, v->id);
                send_error(w, v->id,
                           v->error == CM_ERR_NO_RESOURCES ? CM_ERR_NO_RESOURCES : v->error,
                           "cannot reserve KV blocks");
            }
        } else if (v->kind == EVT_LAYER) {
            /* A later notice of the same request covers this one. */
            if (!(next && next->kind == EVT_LAYER && next->id == v->id)) on_layer_ready(w, v);
        } else if (v->finish == DW_FINISH_PREFILL) {
            on_prefill_done(w, v);
        } else if (v->finish == DW_FINISH_ERROR) {
            on_prefill_error(w, v);
        } else {
            send_tokens(w, v);
            if (v->finish != DW_FINISH_NONE) live_remove(w, v->id);
        }
        evt_free(v);
        v = next;
    }
    maybe_finish_drain(w);
}

/* A request to add: prompt, sampling and stop strings copied. */
static cmd_t *build_add(wk_t *w, uint64_t id, const int32_t *prompt, size_t n,
                        const Tandem__Cp__SamplingParams *sp, char **stop, size_t n_stop, char *err,
                        size_t errlen) {
    cmd_t *c = cm_calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->kind = CMD_ADD;
    c->id = id;
    c->prompt = cm_malloc_array(n ? n : 1, sizeof *c->prompt);
    c->stop = n_stop ? cm_calloc(n_stop, sizeof *c->stop) : NULL;
    c->req.n_stop = 0;
    bool ok = c->prompt && (!n_stop || c->stop);
    for (size_t i = 0; ok && i < n_stop; i++) {
        ok = (c->stop[i] = cm_strdup(stop[i])) != NULL;
        c->req.n_stop += ok;
    }
    for (size_t i = 0; ok && i < n; i++) ok = (uint32_t)prompt[i] < w->vocab;
    if (!ok) {
        snprintf(err, errlen, "bad prompt (ids must be < %u) or out of memory", w->vocab);
        cmd_free(c);
        return NULL;
    }
    memcpy(c->prompt, prompt, n * sizeof *c->prompt);
    dw_request_t *q = &c->req;
    q->id = id;
    q->prompt = c->prompt;
    q->n_prompt = (uint32_t)n;
    q->stop = (const char *const *)c->stop;
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
        p->seed = cm_time_wall_ns() ^ id;
    for (size_t i = 0; i < sp->n_stop_token_ids && p->n_stop < ENG_SAMPLER_MAX_STOP; i++)
        p->stop_ids[p->n_stop++] = sp->stop_token_ids[i];
    if (!sp->ignore_eos)
        for (uint32_t i = 0; i < w->n_eos && p->n_stop < ENG_SAMPLER_MAX_STOP; i++)
            p->stop_ids[p->n_stop++] = w->eos[i];
    if (eng_sampler_params_validate(p, w->vocab, err, errlen) != CM_OK) {
        cmd_free(c);
        return NULL;
    }
    return c;
}

static void on_job(wk_t *w, const Tandem__Cp__PrefillJob *j) {
    char err[256];
    if (w->draining) {
        send_error(w, j->request_id, CM_ERR_NO_RESOURCES, "worker is draining");
        return;
    }
    bool remote = j->decode_worker_id[0] != '\0';
    if (w->role == WK_DECODE || (w->role == WK_COLOCATED && remote) ||
        (w->role == WK_PREFILL && !remote)) {
        send_error(w, j->request_id, CM_ERR_UNSUPPORTED,
                   remote ? "this worker does not send KV to decode workers"
                          : "this prefill worker needs a decode worker to send KV to");
        return;
    }
    cmd_t *c = build_add(w, j->request_id, j->prompt_tokens, j->n_prompt_tokens, j->sampling,
                         j->stop, j->n_stop, err, sizeof err);
    if (!c) {
        send_error(w, j->request_id, CM_ERR_INVALID_ARG, err);
        return;
    }
    if (remote) {
        kvx_peer_t *peer;
        cm_status_t st = kvx_peer_connect(w->kvx, j->decode_kvx_descriptor.data,
                                          j->decode_kvx_descriptor.len, w->fingerprint, &peer);
        size_t need = (j->n_prompt_tokens + eng_kv_geom(dw_runner_kv(w->runner))->block_size - 1) /
                      eng_kv_geom(dw_runner_kv(w->runner))->block_size;
        if (st == CM_OK && (j->n_dst_block_ids != need || j->skip_blocks > need))
            st = CM_ERR_INVALID_ARG;
        if (st == CM_OK && w->n_jobs == w->cap_jobs) {
            size_t cap = w->cap_jobs ? w->cap_jobs * 2 : 32;
            job_t *nj = cm_realloc_array(w->jobs, cap, sizeof *nj);
            if (nj) {
                w->jobs = nj;
                w->cap_jobs = cap;
            } else {
                st = CM_ERR_NO_MEMORY;
            }
        }
        uint32_t *dst = st == CM_OK ? cm_malloc_array(need ? need : 1, sizeof *dst) : NULL;
        if (st == CM_OK && !dst) st = CM_ERR_NO_MEMORY;
        if (st != CM_OK) {
            cm_free(dst);
            cmd_free(c);
            send_error(w, j->request_id, st,
                       st == CM_ERR_FINGERPRINT ? "decode worker has a different KV layout"
                                                : "cannot reach the decode worker's KV pool");
            return;
        }
        memcpy(dst, j->dst_block_ids, need * sizeof *dst);
        w->jobs[w->n_jobs++] = (job_t){.id = j->request_id,
                                       .peer = peer,
                                       .dst = dst,
                                       .n_dst = need,
                                       .skip = j->skip_blocks,
                                       .deadline_ms = cm_time_mono_ms() + j->deadline_ms};
        c->req.prefill_only = true;
    }
    if (!live_add(w, c->id)) {
        job_remove(w, c->id);
        send_error(w, j->request_id, CM_ERR_NO_MEMORY, "out of memory");
        cmd_free(c);
        return;
    }
    post(w, c);
}

/* Decode: reserve blocks now, admit the request when its KV is in. */
static void on_reserve(wk_t *w, const Tandem__Cp__ReserveBlocks *r) {
    char err[256];
    if (w->draining) {
        send_error(w, r->request_id, CM_ERR_NO_RESOURCES, "worker is draining");
        return;
    }
    if (w->role != WK_DECODE) {
        send_error(w, r->request_id, CM_ERR_UNSUPPORTED, "not a decode worker");
        return;
    }
    cmd_t *add = build_add(w, r->request_id, r->prompt_tokens, r->n_prompt_tokens, r->sampling,
                           r->stop, r->n_stop, err, sizeof err);
    cmd_t *res = cm_calloc(1, sizeof *res);
    int32_t *pr = cm_malloc_array(r->n_prompt_tokens, sizeof *pr);
    if (w->n_pend == w->cap_pend) {
        size_t cap = w->cap_pend ? w->cap_pend * 2 : 32;
        pend_t *np = cm_realloc_array(w->pend, cap, sizeof *np);
        if (np) {
            w->pend = np;
            w->cap_pend = cap;
        }
    }
    if (!add || !res || !pr || w->n_pend >= w->cap_pend || !live_add(w, r->request_id)) {
        cmd_free(add);
        cm_free(res);
        cm_free(pr);
        send_error(w, r->request_id, add ? CM_ERR_NO_MEMORY : CM_ERR_INVALID_ARG,
                   add ? "out of memory" : err);
        return;
    }
    memcpy(pr, r->prompt_tokens, r->n_prompt_tokens * sizeof *pr);
    res->kind = CMD_RESERVE;
    res->id = r->request_id;
    res->prompt = pr;
    res->req.n_prompt = (uint32_t)r->n_prompt_tokens;
    w->pend[w->n_pend++] = (pend_t){
        .id = r->request_id, .add = add, .deadline_ms = cm_time_mono_ms() + r->deadline_ms};
    post(w, res);
    kvx_cadence(w);
}

static void on_kv_ready(wk_t *w, const Tandem__Cp__KvReady *k) {
    pend_t *p = pend_find(w, k->request_id);
    if (!p || k->status != 0) return; /* the router cancels failed prefills */
    dw_request_t *q = &p->add->req;
    q->first_token = k->first_token;
    q->first_logprob = k->first_logprob;
    q->n_first_top = 0;
    for (size_t i = 0; i < k->n_first_top_logprobs && i < ENG_SAMPLER_MAX_LOGPROBS; i++) {
        q->first_top[i].token = k->first_top_logprobs[i]->token_id;
        q->first_top[i].logprob = k->first_top_logprobs[i]->logprob;
        q->n_first_top++;
    }
    p->kv_ready = true;
    maybe_commit(w, p);
}

static void on_msg(void *ud, const cm_cp_msg_t *msg) {
    wk_t *w = ud;
    switch (msg->body_case) {
    case TANDEM__CP__ENVELOPE__BODY_PREFILL_JOB:
        on_job(w, msg->prefill_job);
        break;
    case TANDEM__CP__ENVELOPE__BODY_RESERVE:
        on_reserve(w, msg->reserve);
        break;
    case TANDEM__CP__ENVELOPE__BODY_KV_READY:
        on_kv_ready(w, msg->kv_ready);
        break;
    case TANDEM__CP__ENVELOPE__BODY_CANCEL: {
        uint64_t id = msg->cancel->request_id;
        pend_t *p = pend_find(w, id);
        if (p) {
            release_resv(w, id, p);
            pend_remove(w, id, true);
        }
        job_t *j = job_find(w, id);
        if (j && !j->sending) {
            job_remove(w, id);
        } else if (j && j->err == CM_OK) {
            /* Sends in flight finish on their own; no further layer is
             * posted into blocks the decode worker is freeing. */
            j->err = CM_ERR_CANCELED;
            j->why = "canceled";
        }
        if (!p) cancel_now(w, id); /* a running request, or a prefill */
        live_remove(w, id);        /* no event will come for it */
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
    if (w->kvx) {
        kvx_stats_t ks;
        kvx_ctx_stats(w->kvx, &ks);
        hb->kv_bytes_sent = ks.bytes;
        hb->kv_notices_received = ks.notices;
        hb->kv_transfers_sent = w->kv_transfers;
        hb->kv_transfer_us_total = w->kv_transfer_us;
        hb->kv_wait_us_total = w->kv_wait_us;
    }
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
    if (w->kvx) {
        uv_poll_stop(&w->kvx_poll);
        uv_close((uv_handle_t *)&w->kvx_poll, NULL);
        uv_timer_stop(&w->kvx_timer);
        uv_close((uv_handle_t *)&w->kvx_timer, NULL);
    }
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

/* How often the kvx timer progresses: every millisecond while KV is
 * expected (reservations waiting) or being sent or staged through a GPU
 * mirror (kvx_ctx_busy: copies are polled, not waited on), every 20 ms
 * otherwise. Notices wake the fd (kvx.h, "Wakeups"); the timer is for
 * deadlines, copies and a backstop. */
static void on_kvx_timer(uv_timer_t *t);
static void kvx_cadence(wk_t *w) {
    if (!w->kvx || uv_is_closing((uv_handle_t *)&w->kvx_timer)) return;
    uint64_t want = w->n_pend || kvx_ctx_busy(w->kvx) ? 1 : 20;
    if (uv_timer_get_repeat(&w->kvx_timer) != want)
        uv_timer_start(&w->kvx_timer, on_kvx_timer, want, want);
}

static void on_kvx_poll(uv_poll_t *h, int status, int events) {
    (void)status;
    (void)events;
    kvx_ctx_progress(((wk_t *)h->data)->kvx);
}

/* Progress for deadlines, and reservations whose KV never came. */
static void on_kvx_timer(uv_timer_t *t) {
    wk_t *w = t->data;
    kvx_ctx_progress(w->kvx);
    uint64_t now = cm_time_mono_ms();
    for (size_t i = 0; i < w->n_pend;) {
        if (now < w->pend[i].deadline_ms) {
            i++;
            continue;
        }
        uint64_t id = w->pend[i].id;
        cm_log_warn("worker", "request %llu: KV did not arrive before its deadline",
                    (unsigned long long)id);
        release_resv(w, id, &w->pend[i]);
        pend_remove(w, id, true);
        live_remove(w, id);
        send_error(w, id, CM_ERR_TIMEOUT, "KV did not arrive before the deadline");
    }
    for (size_t i = 0; i < w->n_quar;) {
        if (now < w->quar[i].at_ms) {
            i++;
            continue;
        }
        cancel_now(w, w->quar[i].id);
        w->quar[i] = w->quar[--w->n_quar];
    }
    kvx_cadence(w);
    maybe_finish_drain(w);
}

/* Decode: the KV pool lives in memory UCX allocated (fastest put target). */
static void *kv_alloc_ucx(void *ud, const eng_kv_geom_t *g, uint64_t fingerprint) {
    wk_t *w = ud;
    w->fingerprint = fingerprint;
    uint64_t inc = 0;
    if (getrandom(&inc, sizeof inc, 0) != (ssize_t)sizeof inc) inc = cm_time_wall_ns();
    if (kvx_pool_register(w->kvx, g, NULL, w->fingerprint, inc | 1, &w->pool) != CM_OK) return NULL;
    return kvx_pool_base(w->pool);
}

static int run_worker(wk_role_t role, int argc, char **argv) {
    static const cm_flag_t *const tables[] = {k_flags, NULL};
    static const char *const progs[] = {"tandem worker", "tandem prefill", "tandem decode"};
    static const char *const sums[] = {
        "Colocated worker: prefill and decode in one process, registered with the router.",
        "Prefill worker: runs prompts and sends their KV blocks to decode workers over UCX.",
        "Decode worker: reserves KV blocks, receives them over UCX, batches and generates."};
    const cm_cmd_spec_t spec = {.prog = progs[role], .summary = sums[role], .tables = tables};
    int code, npos;
    if (!cm_cli_parse(&spec, argc, argv, NULL, &npos, &code)) return code;
    wk_t *w = &g_wk;
    memset(w, 0, sizeof *w);
    w->role = role;
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
                             .max_context = (uint32_t)g_max_context,
                             .layer_events = role == WK_PREFILL && !strcmp(g_kv_stream, "layer")};
    if (role != WK_COLOCATED && kvx_ctx_new(on_kvx_notice, w, &w->kvx) != CM_OK) {
        fprintf(stderr, "%s: UCX could not start\n", progs[role]);
        return CM_EXIT_FAILURE;
    }
    if (role == WK_DECODE) { /* the pool in UCX-registered memory */
        rc.kv_alloc = kv_alloc_ucx;
        rc.kv_alloc_ud = w;
    }
    if (dw_runner_new(&rc, on_sched_event, w, &w->runner, err, sizeof err) != CM_OK) {
        fprintf(stderr, "%s: %s\n", progs[role], err);
        return CM_EXIT_FAILURE;
    }
    /* The layout fingerprint: model, block size and the KV dtype the
     * engine chose (TANDEM_KV_DTYPE). */
    w->fingerprint = dw_runner_fingerprint(w->runner);
    if (role == WK_PREFILL && kvx_pool_register(w->kvx, eng_kv_geom(dw_runner_kv(w->runner)),
                                                eng_kv_pool_base(dw_runner_kv(w->runner)),
                                                w->fingerprint, 1, &w->pool) != CM_OK) {
        fprintf(stderr, "%s: cannot register the KV pool with UCX\n", progs[role]);
        return CM_EXIT_FAILURE;
    }
    if (w->pool && kvx_pool_export(w->pool, &w->desc, &w->desc_len) != CM_OK) {
        fprintf(stderr, "%s: cannot export the KV pool descriptor\n", progs[role]);
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
    if (w->kvx) {
        uv_poll_init(w->loop, &w->kvx_poll, kvx_ctx_fd(w->kvx));
        w->kvx_poll.data = w;
        uv_poll_start(&w->kvx_poll, UV_READABLE, on_kvx_poll);
        uv_timer_init(w->loop, &w->kvx_timer);
        w->kvx_timer.data = w;
        uv_timer_start(&w->kvx_timer, on_kvx_timer, 20, 20);
    }
    static const Tandem__Cp__Role roles[] = {TANDEM__CP__ROLE__ROLE_COLOCATED,
                                             TANDEM__CP__ROLE__ROLE_PREFILL,
                                             TANDEM__CP__ROLE__ROLE_DECODE};
    cm_cp_agent_config_t ac = {.router = g_router,
                               .worker_id = g_worker_id,
                               .role = roles[role],
                               .kvx_descriptor = w->desc,
                               .kvx_descriptor_len = w->desc_len,
                               .model = g_name,
                               .fingerprint = w->fingerprint,
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
    cm_log_info("worker",
                "%s: %s serving '%s' (%s backend, %u KV blocks of %u tokens in %s, context %u)",
                progs[role], g_worker_id, g_name, g_backend, g->n_blocks, g->block_size,
                eng_model_kv_dtype(dw_runner_model(w->runner)), dw_runner_max_context(w->runner));
    uv_run(w->loop, UV_RUN_DEFAULT);
    pthread_join(w->thread, NULL);
    kvx_ctx_free(w->kvx); /* after the compute thread: no more block reads */
    cm_free(w->desc);
    for (size_t i = 0; i < w->n_pend; i++) cmd_free(w->pend[i].add);
    cm_free(w->pend);
    cm_free(w->quar);
    for (size_t i = 0; i < w->n_jobs; i++) cm_free(w->jobs[i].dst);
    cm_free(w->jobs);
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

int dw_cmd_worker(int argc, char **argv) { return run_worker(WK_COLOCATED, argc, argv); }
int dw_cmd_decode(int argc, char **argv) { return run_worker(WK_DECODE, argc, argv); }
int dw_cmd_prefill(int argc, char **argv) { return run_worker(WK_PREFILL, argc, argv); }
