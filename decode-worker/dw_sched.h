/*
 * dw_sched.h - continuous batching over the paged KV cache: the loop a
 * decode (or colocated) worker's compute thread runs. Each step builds one
 * mixed batch — one token for every running sequence plus prompt chunks of
 * admitted ones, within a token budget — runs the model once, samples, and
 * reports new tokens, text (UTF-8-safe, stop strings applied) and finishes.
 *
 * Requests arrive either as prompts to prefill here (colocated, or a decode
 * worker recomputing) or with their KV already in a committed reservation
 * and the first token sampled by a prefill worker (disaggregated). A
 * request marked prefill_only ends after its first token and hands its KV
 * sequence to the caller (the prefill worker ships it, then frees it).
 *
 * When the pool runs out of blocks the most recently admitted sequence is
 * preempted (its blocks freed, its prompt + output recomputed later), so
 * older requests keep their latency.
 *
 * Threading: not thread-safe; one compute thread owns the scheduler and the
 * KV manager it was given. Events are delivered on that thread.
 */
#ifndef TANDEM_DW_SCHED_H
#define TANDEM_DW_SCHED_H

#include "eng.h"
#include "eng_sampler.h"

/* One entry of a model step (see eng_item_t). */
typedef eng_item_t dw_item_t;

/* The model and tokenizer as the scheduler uses them (an adapter over the
 * engine and tokenizer libraries). */
typedef struct {
    void *ctx;
    uint32_t vocab;
    /* Runs the model on @n items, writing their K/V into their sequences'
     * blocks and, for items with .logits, consecutive rows of @logits;
     * calls @on_layer (when not NULL) as eng_forward_hooked does. */
    cm_status_t (*forward)(void *ctx, eng_kv_t *kv, const dw_item_t *items, size_t n, float *logits,
                           eng_layer_fn on_layer, void *layer_ud);
    /* Streaming detokenizer: a state per request; push returns the bytes of
     * newly complete UTF-8 text written to @out (at most @cap). */
    void *(*detok_new)(void *ctx);
    size_t (*detok_push)(void *state, int32_t id, char *out, size_t cap);
    size_t (*detok_flush)(void *state, char *out, size_t cap);
    void (*detok_free)(void *state);
} dw_model_t;

typedef struct {
    uint64_t id;
    const int32_t *prompt;
    uint32_t n_prompt;
    eng_sampler_params_t params; /* validated; seed already chosen */
    const char *const *stop;     /* stop strings */
    size_t n_stop;
    bool prefill_only; /* end after the first token, keep the KV */
    /* Disaggregated: the prompt's KV is in @seq (committed reservation) and
     * the prefill worker sampled the first token. */
    eng_kv_seq_t *seq;
    int32_t first_token;
    float first_logprob;
    uint32_t n_first_top;
    eng_logprob_t first_top[ENG_SAMPLER_MAX_LOGPROBS];
} dw_request_t;

typedef enum {
    DW_FINISH_NONE = 0,
    DW_FINISH_STOP,    /* stop token or stop string */
    DW_FINISH_LENGTH,  /* max_tokens or the context limit */
    DW_FINISH_PREFILL, /* prefill_only: first token sampled, KV handed over */
    DW_FINISH_ERROR,
} dw_finish_t;

typedef struct {
    uint64_t id;
    const int32_t *ids; /* new tokens (usually one) */
    size_t n;
    const char *text; /* new text (may be empty while UTF-8 or a stop string is pending) */
    size_t text_len;
    const float *logprobs;    /* n entries when requested, else NULL */
    const eng_logprob_t *top; /* n * top_per_token when requested */
    size_t top_per_token;
    dw_finish_t finish;
    cm_status_t error; /* for DW_FINISH_ERROR */
    const char *why;   /* ... and what failed (static text), or NULL: cm_strerror(error) */
    uint32_t prompt_tokens, completion_tokens;
    uint32_t cached_tokens; /* prompt tokens served from the prefix cache */
    /* DW_FINISH_PREFILL: the prompt's KV, now owned by the receiver; also
     * on DW_FINISH_ERROR of a request whose layers were announced (sends
     * from its blocks may still be in flight: the receiver frees it). */
    eng_kv_seq_t *seq;
    uint64_t rng_step; /* sampler counter after this event's tokens */
    /* Layer streaming (config layer_events), an event with nothing else
     * set: layers [0, kv_layers) of a prefill_only request's whole prompt
     * are in these blocks, while the last prompt chunk's later layers are
     * still computing. The sequence stays the scheduler's; DW_FINISH_PREFILL
     * (or DW_FINISH_ERROR with @seq) follows in the same step. */
    uint32_t kv_layers;
    const int32_t *kv_blocks;
    uint32_t n_kv_blocks;
} dw_event_t;

typedef void (*dw_emit_fn)(void *ud, const dw_event_t *e);

typedef struct {
    uint32_t max_seqs;         /* running sequences at most (default 64) */
    uint32_t max_batch_tokens; /* tokens per model step (default 512) */
    uint32_t max_context;      /* prompt + output limit (default 4096) */
    bool layer_events;         /* announce prefill_only KV layer by layer */
} dw_sched_config_t;

typedef struct dw_sched dw_sched_t;

cm_status_t dw_sched_new(eng_kv_t *kv, const dw_model_t *model, const dw_sched_config_t *cfg,
                         dw_emit_fn emit, void *ud, dw_sched_t **out);
/* Frees the scheduler and every request's KV (no events). */
void dw_sched_free(dw_sched_t *s);

/* Queues a request (copied; a given seq becomes the scheduler's). Errors:
 * CM_ERR_EXISTS (same id live), CM_ERR_OUT_OF_RANGE (prompt beyond the
 * context), CM_ERR_NO_MEMORY. */
cm_status_t dw_sched_add(dw_sched_t *s, const dw_request_t *r);
/* Drops a request and frees its KV; no event for it afterwards. Returns
 * false when no such request is live. */
bool dw_sched_cancel(dw_sched_t *s, uint64_t id);
/* Runs one model step if there is work; returns false when idle. A model
 * error fails the step's requests (DW_FINISH_ERROR) and returns true. */
bool dw_sched_step(dw_sched_t *s);

uint32_t dw_sched_running(const dw_sched_t *s);
uint32_t dw_sched_waiting(const dw_sched_t *s);
uint64_t dw_sched_preemptions(const dw_sched_t *s);

#endif /* TANDEM_DW_SCHED_H */
