/*
 * dw_runner.h - one model ready to serve: the engine, its tokenizer (when
 * the model folder has one), a paged KV pool and the continuous-batching
 * scheduler, glued together. Used by `tandem generate` (in-process) and by
 * the worker processes, so all of them produce the same tokens.
 *
 * Threading: one thread owns a runner (the compute thread of a worker).
 */
#ifndef TANDEM_DW_RUNNER_H
#define TANDEM_DW_RUNNER_H

#include "dw_sched.h"
#include "eng.h"
#include "tok.h"

typedef struct {
    const char *model_dir;
    const char *model_id; /* for the KV layout fingerprint */
    eng_backend_kind_t backend;
    uint64_t kv_pool_bytes;    /* 0 = 256 MiB */
    uint32_t block_size;       /* 0 = 16 */
    uint32_t max_seqs;         /* 0 = 64 */
    uint32_t max_batch_tokens; /* 0 = 512 */
    uint32_t max_context;      /* 0 = min(config max positions, pool) */
    bool layer_events;         /* dw_sched_config_t.layer_events */
    /* Optional: provides the KV pool memory for geometry @g (e.g. memory
     * UCX allocated for receiving KV; @fingerprint is its layout
     * fingerprint); NULL result = failure. Without it
     * the KV manager allocates the pool. */
    void *(*kv_alloc)(void *ud, const eng_kv_geom_t *g, uint64_t fingerprint);
    void *kv_alloc_ud;
} dw_runner_config_t;

typedef struct dw_runner dw_runner_t;

/* Loads everything; errors (model, tokenizer, pool) are written to @err. */
cm_status_t dw_runner_new(const dw_runner_config_t *cfg, dw_emit_fn emit, void *ud,
                          dw_runner_t **out, char *err, size_t errlen);
void dw_runner_free(dw_runner_t *r);

eng_model_t *dw_runner_model(dw_runner_t *r);
const tok_t *dw_runner_tok(dw_runner_t *r); /* NULL without tokenizer.json */
eng_kv_t *dw_runner_kv(dw_runner_t *r);
dw_sched_t *dw_runner_sched(dw_runner_t *r);
uint32_t dw_runner_max_context(const dw_runner_t *r);
uint32_t dw_runner_vocab(const dw_runner_t *r);
uint64_t dw_runner_fingerprint(const dw_runner_t *r);

/* Stop ids of the model (generation config's eos ids, the tokenizer's eos),
 * at most @cap written; returns how many. */
uint32_t dw_runner_eos(const dw_runner_t *r, int32_t *ids, uint32_t cap);

#endif /* TANDEM_DW_RUNNER_H */
