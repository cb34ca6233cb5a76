/* dw_sched.c - continuous batching with chunked prefill and preemption. */
#include "dw_sched.h"

#include <string.h>

#include "dw_stop.h"

typedef struct dw_seq {
    uint64_t id;
    int32_t *ctx; /* prompt followed by generated tokens */
    uint32_t n_prompt, n_out, cap;
    eng_sampler_params_t params;
    dw_stop_t *stop;
    void *detok;
    eng_kv_seq_t *kv; /* NULL while waiting */
    bool prefill_only;
    bool pending_first; /* disaggregated: report the given first token */
    eng_sample_t first;
    uint32_t cached;
    bool stopped;  /* a stop string matched: no more text */
    bool streamed; /* layer events went out: its KV may be in flight */
    bool in_running;
    struct dw_seq *next;
} dw_seq_t;

struct dw_sched {
    eng_kv_t *kv;
    dw_model_t m;
    dw_sched_config_t cfg;
    dw_emit_fn emit;
    void *ud;
    eng_sampler_t *sampler;
    dw_seq_t *waiting; /* FIFO: head first */
    dw_seq_t *running; /* in admission order: oldest first */
    uint32_t n_running, n_waiting;
    uint64_t preemptions;
    /* Per-step scratch. */
    dw_item_t *items;
    dw_seq_t **item_seq;
    float *logits;
    size_t cap_items, n_items;
    char *text;
    size_t text_cap;
};

static dw_seq_t **tail_of(dw_seq_t **head) {
    while (*head) head = &(*head)->next;
    return head;
}

static void seq_free(dw_sched_t *s, dw_seq_t *q) {
    if (q->kv) eng_kv_seq_free(s->kv, q->kv);
    if (q->detok) s->m.detok_free(q->detok);
    dw_stop_free(q->stop);
    cm_free(q->ctx);
    cm_free(q);
}

cm_status_t dw_sched_new(eng_kv_t *kv, const dw_model_t *model, const dw_sched_config_t *cfg,
                         dw_emit_fn emit, void *ud, dw_sched_t **out) {
    dw_sched_t *s = cm_calloc(1, sizeof *s);
    if (!s) return CM_ERR_NO_MEMORY;
    s->kv = kv;
    s->m = *model;
    s->cfg = *cfg;
    if (!s->cfg.max_seqs) s->cfg.max_seqs = 64;
    if (!s->cfg.max_batch_tokens) s->cfg.max_batch_tokens = 512;
    if (!s->cfg.max_context) s->cfg.max_context = 4096;
    if (s->cfg.max_batch_tokens < s->cfg.max_seqs) s->cfg.max_batch_tokens = s->cfg.max_seqs;
    s->emit = emit;
    s->ud = ud;
    s->text_cap = 4096;
    s->text = cm_malloc(s->text_cap);
    cm_status_t st = s->text ? eng_sampler_new(model->vocab, &s->sampler) : CM_ERR_NO_MEMORY;
    if (st != CM_OK) {
        cm_free(s->text);
        cm_free(s);
        return st;
    }
    *out = s;
    return CM_OK;
}

void dw_sched_free(dw_sched_t *s) {
    if (!s) return;
    for (dw_seq_t **l = &s->waiting; l; l = l == &s->waiting ? &s->running : NULL) {
        while (*l) {
            dw_seq_t *q = *l;
            *l = q->next;
            seq_free(s, q);
        }
    }
    eng_sampler_free(s->sampler);
    cm_free(s->items);
    cm_free(s->item_seq);
    cm_aligned_free(s->logits);
    cm_free(s->text);
    cm_free(s);
}

static dw_seq_t *find(dw_sched_t *s, uint64_t id, dw_seq_t ***link) {
    for (dw_seq_t **l = &s->waiting; l; l = l == &s->waiting ? &s->running : NULL) {
        for (dw_seq_t **p = l; *p; p = &(*p)->next) {
            if ((*p)->id == id) {
                if (link) *link = p;
                return *p;
            }
        }
    }
    return NULL;
}

cm_status_t dw_sched_add(dw_sched_t *s, const dw_request_t *r) {
    if (find(s, r->id, NULL)) return CM_ERR_EXISTS;
    if (r->n_prompt == 0 || r->n_prompt >= s->cfg.max_context) return CM_ERR_OUT_OF_RANGE;
    dw_seq_t *q = cm_calloc(1, sizeof *q);
    if (!q) return CM_ERR_NO_MEMORY;
    q->id = r->id;
    q->params = r->params;
    q->n_prompt = r->n_prompt;
    q->cap = r->n_prompt + 16;
    q->ctx = cm_malloc_array(q->cap, sizeof *q->ctx);
    q->detok = s->m.detok_new(s->m.ctx);
    q->stop = r->n_stop ? dw_stop_new(r->stop, r->n_stop) : NULL;
    if (!q->ctx || !q->detok || (r->n_stop && !q->stop)) {
        seq_free(s, q);
        return CM_ERR_NO_MEMORY;
    }
    memcpy(q->ctx, r->prompt, r->n_prompt * sizeof *q->ctx);
    q->prefill_only = r->prefill_only;
    if (r->seq) {
        /* Disaggregated: KV present, first token sampled elsewhere. */
        q->kv = r->seq;
        q->pending_first = true;
        q->first.token = r->first_token;
        q->first.logprob = r->first_logprob;
        q->first.n_top = r->n_first_top;
        memcpy(q->first.top, r->first_top, r->n_first_top * sizeof r->first_top[0]);
        q->cached = 0;
        q->in_running = true;
        *tail_of(&s->running) = q;
        s->n_running++;
    } else {
        *tail_of(&s->waiting) = q;
        s->n_waiting++;
    }
    return CM_OK;
}

static void unlink_seq(dw_sched_t *s, dw_seq_t *q) {
    dw_seq_t **link;
    dw_seq_t *f = find(s, q->id, &link);
    if (!f) return;
    *link = q->next;
    q->next = NULL;
    if (q->in_running)
        s->n_running--;
    else
        s->n_waiting--;
    q->in_running = false;
}

bool dw_sched_cancel(dw_sched_t *s, uint64_t id) {
    dw_seq_t *q = find(s, id, NULL);
    if (!q) return false;
    unlink_seq(s, q);
    seq_free(s, q);
    return true;
}

/* Grows the text scratch to hold @n more bytes after @len. */
static bool text_room(dw_sched_t *s, size_t need) {
    if (need <= s->text_cap) return true;
    size_t cap = s->text_cap * 2;
    while (cap < need) cap *= 2;
    char *t = cm_realloc_array(s->text, cap, 1);
    if (!t) return false;
    s->text = t;
    s->text_cap = cap;
    return true;
}

/* Appends a generated token and reports it; finishes the sequence when a
 * stop condition holds. Returns true when the sequence ended. */
static bool report(dw_sched_t *s, dw_seq_t *q, const eng_sample_t *smp) {
    if (q->n_prompt + q->n_out + 1 > q->cap) {
        uint32_t cap = q->cap * 2;
        int32_t *c = cm_realloc_array(q->ctx, cap, sizeof *c);
        if (!c) {
            dw_event_t e = {.id = q->id, .finish = DW_FINISH_ERROR, .error = CM_ERR_NO_MEMORY};
            s->emit(s->ud, &e);
            return true;
        }
        q->ctx = c;
        q->cap = cap;
    }
    q->ctx[q->n_prompt + q->n_out++] = smp->token;
    eng_sampler_stop_t why = eng_sampler_stop_check(&q->params, smp->token, q->n_out);
    bool at_limit = q->n_prompt + q->n_out >= s->cfg.max_context;
    bool done = why != ENG_SAMPLER_CONTINUE || at_limit || q->prefill_only;
    /* Text: the detokenizer's complete UTF-8 (all of it at the end), then
     * the stop strings. A stop token adds no text of its own. */
    size_t len = 0;
    if (!q->stopped && text_room(s, 1024)) {
        if (why != ENG_SAMPLER_STOP_TOKEN)
            len = s->m.detok_push(q->detok, smp->token, s->text, s->text_cap);
        for (size_t f = done; f && text_room(s, len + 1024); len += f) /* until it is empty */
            f = s->m.detok_flush(q->detok, s->text + len, s->text_cap - len);
    }
    const char *text = s->text;
    if (q->stop && !q->stopped) {
        const char *safe;
        size_t safe_len;
        if (dw_stop_feed(q->stop, s->text, len, &safe, &safe_len)) {
            q->stopped = true;
            done = true;
            why = ENG_SAMPLER_STOP_TOKEN; /* a stop string finishes as "stop" */
        } else if (done) {
            /* The end: release what the matcher held back, after @safe
             * (both live in the matcher, so copy @safe out first). */
            const char *held;
            size_t held_len;
            if (text_room(s, safe_len + 1)) memmove(s->text, safe, safe_len);
            dw_stop_flush(q->stop, &held, &held_len);
            if (text_room(s, safe_len + held_len + 1)) memcpy(s->text + safe_len, held, held_len);
            safe = s->text;
            safe_len += held_len;
        }
        text = safe;
        len = safe_len;
    } else if (q->stopped) {
        len = 0;
    }
    float lp = smp->logprob;
    dw_event_t e = {.id = q->id,
                    .ids = &smp->token,
                    .n = 1,
                    .text = text,
                    .text_len = len,
                    .logprobs = q->params.logprobs ? &lp : NULL,
                    .top = q->params.logprobs && smp->n_top ? smp->top : NULL,
                    .top_per_token = q->params.logprobs ? smp->n_top : 0,
                    .prompt_tokens = q->n_prompt,
                    .completion_tokens = q->n_out,
                    .cached_tokens = q->cached,
                    .rng_step = q->n_out};
    if (done) {
        if (q->prefill_only) {
            e.finish = DW_FINISH_PREFILL;
            e.seq = q->kv; /* handed over */
            q->kv = NULL;
        } else {
            e.finish = why == ENG_SAMPLER_STOP_TOKEN ? DW_FINISH_STOP : DW_FINISH_LENGTH;
        }
    }
    s->emit(s->ud, &e);
    return done;
}

/* Frees the newest running sequence's blocks and requeues it for
 * recompute. Returns false when nothing can be preempted except @keep. */
static bool preempt(dw_sched_t *s, dw_seq_t *keep) {
    dw_seq_t *last = NULL, *prev = NULL, *p = NULL;
    for (dw_seq_t *q = s->running; q; prev = q, q = q->next)
        if (q != keep && !q->pending_first) {
            last = q;
            p = prev;
        }
    if (!last) return false;
    if (p)
        p->next = last->next;
    else
        s->running = last->next;
    s->n_running--;
    last->in_running = false;
    eng_kv_seq_free(s->kv, last->kv);
    last->kv = NULL;
    last->next = s->waiting; /* first in line to come back */
    s->waiting = last;
    s->n_waiting++;
    s->preemptions++;
    return true;
}

static bool grow_items(dw_sched_t *s, size_t n) {
    if (n <= s->cap_items) return true;
    size_t cap = s->cap_items ? s->cap_items * 2 : 64;
    while (cap < n) cap *= 2;
    dw_item_t *it = cm_realloc_array(s->items, cap, sizeof *it);
    if (it) s->items = it;
    dw_seq_t **sq = cm_realloc_array(s->item_seq, cap, sizeof *sq);
    if (sq) s->item_seq = sq;
    /* On 64-byte lines (the LM head writes whole lines); rewritten each step. */
    size_t bytes;
    float *lg = cm_mul_ok(cap * (size_t)s->m.vocab, sizeof *lg, &bytes)
                    ? cm_aligned_alloc(64, bytes)
                    : NULL;
    if (lg) {
        cm_aligned_free(s->logits);
        s->logits = lg;
    }
    if (!it || !sq || !lg) return false;
    s->cap_items = cap;
    return true;
}

static void finish_error_why(dw_sched_t *s, dw_seq_t *q, cm_status_t st, const char *why) {
    unlink_seq(s, q);
    dw_event_t e = {.id = q->id,
                    .finish = DW_FINISH_ERROR,
                    .error = st,
                    .why = why,
                    .prompt_tokens = q->n_prompt,
                    .completion_tokens = q->n_out};
    if (q->streamed) {
        e.seq = q->kv; /* its blocks may be in flight: the receiver frees them */
        q->kv = NULL;
    }
    s->emit(s->ud, &e);
    seq_free(s, q);
}

static void finish_error(dw_sched_t *s, dw_seq_t *q, cm_status_t st) {
    finish_error_why(s, q, st, NULL);
}

/* The forward pass's layer hook: announces the layer for every item that
 * completes a prefill_only prompt in this step. */
static void on_layer(void *ud, uint32_t layer) {
    dw_sched_t *s = ud;
    for (size_t i = 0; i < s->n_items; i++) {
        dw_seq_t *q = s->item_seq[i];
        if (!s->items[i].logits || !q->prefill_only || q->n_out) continue;
        q->streamed = true;
        dw_event_t e = {.id = q->id,
                        .kv_layers = layer + 1,
                        .kv_blocks = eng_kv_seq_blocks(q->kv),
                        .n_kv_blocks = eng_kv_seq_n_blocks(q->kv)};
        s->emit(s->ud, &e);
    }
}

bool dw_sched_step(dw_sched_t *s) {
    /* 1. First tokens sampled by a prefill worker: report, no model run. */
    for (dw_seq_t *q = s->running, *next; q; q = next) {
        next = q->next;
        if (!q->pending_first) continue;
        q->pending_first = false;
        if (report(s, q, &q->first)) {
            unlink_seq(s, q);
            seq_free(s, q);
        }
    }
    if (!s->running && !s->waiting) return false;
    size_t n = 0;
    uint32_t budget = s->cfg.max_batch_tokens;
    /* 2. Running sequences: whatever is not computed yet (one new token in
     * steady state, a prompt chunk while prefilling). */
    for (dw_seq_t *q = s->running, *next; q && budget; q = next) {
        next = q->next;
        uint32_t ctx_len = q->n_prompt + q->n_out;
        uint32_t kv_len = eng_kv_seq_len(q->kv);
        if (kv_len < ctx_len) {
            cm_status_t st;
            while ((st = eng_kv_seq_append(s->kv, q->kv, q->ctx + kv_len, ctx_len - kv_len)) ==
                   CM_ERR_NO_RESOURCES) {
                if (!preempt(s, q)) break;
                next = q->next; /* the list changed */
            }
            if (st != CM_OK) {
                finish_error(s, q, st);
                continue;
            }
        }
        uint32_t done = eng_kv_seq_computed(q->kv);
        uint32_t left = ctx_len - done;
        if (left == 0) continue;
        uint32_t take = left < budget ? left : budget;
        if (!grow_items(s, n + 1)) break;
        s->items[n] = (dw_item_t){q->kv, done, take, take == left};
        s->item_seq[n++] = q;
        budget -= take;
    }
    /* 3. Admit waiting requests while blocks, slots and budget allow. */
    while (s->waiting && budget > 0 && s->n_running < s->cfg.max_seqs) {
        dw_seq_t *q = s->waiting;
        uint32_t ctx_len = q->n_prompt + q->n_out;
        uint32_t hit = 0;
        eng_kv_seq_t *kv;
        cm_status_t st = eng_kv_seq_new(s->kv, q->ctx, ctx_len, ctx_len - 1, &kv, &hit);
        if (st == CM_ERR_NO_RESOURCES) {
            if (s->running) break;  /* wait for running ones to finish */
            finish_error(s, q, st); /* can never fit */
            continue;
        }
        if (st != CM_OK) {
            finish_error(s, q, st);
            continue;
        }
        s->waiting = q->next;
        s->n_waiting--;
        q->next = NULL;
        q->kv = kv;
        q->in_running = true;
        if (q->n_out == 0) q->cached = hit;
        *tail_of(&s->running) = q;
        s->n_running++;
        uint32_t left = ctx_len - hit;
        uint32_t take = left < budget ? left : budget;
        if (!grow_items(s, n + 1)) break;
        s->items[n] = (dw_item_t){kv, hit, take, take == left};
        s->item_seq[n++] = q;
        budget -= take;
    }
    if (n == 0) return s->running || s->waiting;
    /* 4. One model step for the whole batch. */
    bool hook = false;
    for (size_t i = 0; s->cfg.layer_events && i < n; i++)
        hook |= s->items[i].logits && s->item_seq[i]->prefill_only;
    s->n_items = n;
    cm_status_t st =
        s->m.forward(s->m.ctx, s->kv, s->items, n, s->logits, hook ? on_layer : NULL, s);
    if (st != CM_OK) {
        for (size_t i = 0; i < n; i++) finish_error(s, s->item_seq[i], st);
        return true;
    }
    /* 5. Mark computed, sample, report. */
    size_t row = 0;
    for (size_t i = 0; i < n; i++) {
        dw_seq_t *q = s->item_seq[i];
        const dw_item_t *it = &s->items[i];
        eng_kv_seq_set_computed(s->kv, q->kv, it->start + it->n);
        if (!it->logits) continue;
        const float *lg = s->logits + row++ * (size_t)s->m.vocab;
        eng_sampler_history_t h = {q->ctx, q->n_prompt, q->ctx + q->n_prompt, q->n_out};
        eng_sample_t smp;
        st = eng_sampler_sample(s->sampler, &q->params, lg, &h, q->n_out, &smp);
        if (st != CM_OK) {
            const char *why = st == CM_ERR_OUT_OF_RANGE
                                  ? "the model's logits hold NaN or +inf, or no finite value "
                                    "(overflowing weights or activations)"
                                  : NULL;
            cm_log_error("sched", "request %llu, output token %u: %s", (unsigned long long)q->id,
                         q->n_out, why ? why : cm_strerror(st));
            finish_error_why(s, q, st, why);
            continue;
        }
        if (report(s, q, &smp)) {
            unlink_seq(s, q);
            seq_free(s, q);
        }
    }
    return true;
}

uint32_t dw_sched_running(const dw_sched_t *s) { return s->n_running; }
uint32_t dw_sched_waiting(const dw_sched_t *s) { return s->n_waiting; }
uint64_t dw_sched_preemptions(const dw_sched_t *s) { return s->preemptions; }
