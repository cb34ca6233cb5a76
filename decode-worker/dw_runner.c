/* dw_runner.c - engine + tokenizer + KV pool + scheduler in one object. */
#include "dw_runner.h"

#include <stdio.h>
#include <string.h>

struct dw_runner {
    eng_model_t *model;
    tok_t *tok;
    eng_kv_t *kv;
    dw_sched_t *sched;
    uint32_t max_context;
    uint64_t fingerprint;
    void *dev_pool; /* device KV pool (cuda backend), released after kv */
};

static cm_status_t fwd(void *ctx, eng_kv_t *kv, const dw_item_t *items, size_t n, float *logits,
                       eng_layer_fn on_layer, void *layer_ud) {
    return eng_forward_hooked(((dw_runner_t *)ctx)->model, kv, items, n, logits, on_layer,
                              layer_ud);
}

/* Without a tokenizer there is no text: this sentinel stands for the
 * detokenizer state and yields nothing. */
static char k_no_text;

static void *detok_new(void *ctx) {
    dw_runner_t *r = ctx;
    return r->tok ? (void *)tok_stream_new(r->tok, true) : (void *)&k_no_text;
}

static size_t detok_push(void *st, int32_t id, char *out, size_t cap) {
    return st == &k_no_text ? 0 : tok_stream_push(st, id, out, cap);
}

static size_t detok_flush(void *st, char *out, size_t cap) {
    return st == &k_no_text ? 0 : tok_stream_flush(st, out, cap);
}

static void detok_free(void *st) {
    if (st != &k_no_text) tok_stream_free(st);
}

cm_status_t dw_runner_new(const dw_runner_config_t *cfg, dw_emit_fn emit, void *ud,
                          dw_runner_t **out, char *err, size_t errlen) {
    dw_runner_t *r = cm_calloc(1, sizeof *r);
    if (!r) return CM_ERR_NO_MEMORY;
    cm_status_t st = eng_model_load(cfg->model_dir, cfg->backend, &r->model, err, errlen);
    if (st) goto fail;
    char tp[4096];
    snprintf(tp, sizeof tp, "%s/tokenizer.json", cfg->model_dir);
    FILE *f = fopen(tp, "rb");
    if (f) {
        fclose(f);
        if ((st = tok_load(cfg->model_dir, &r->tok, err, errlen))) goto fail;
    }
    const mdl_config_t *c = eng_model_config(r->model);
    uint32_t bs = cfg->block_size ? cfg->block_size : 16;
    eng_kv_geom_t g1 = eng_model_kv_geom(r->model, 1, bs);
    uint64_t per_block = (uint64_t)eng_kv_geom_block_bytes(&g1) * c->n_layers;
    uint64_t pool = cfg->kv_pool_bytes ? cfg->kv_pool_bytes : (256ull << 20);
    uint64_t nb = pool / per_block;
    if (nb < 4) {
        snprintf(err, errlen, "KV pool of %llu bytes holds %llu blocks of %llu bytes: too small",
                 (unsigned long long)pool, (unsigned long long)nb, (unsigned long long)per_block);
        st = CM_ERR_INVALID_ARG;
        goto fail;
    }
    if (nb > (1u << 24)) nb = 1u << 24;
    const char *id = cfg->model_id ? cfg->model_id : cfg->model_dir;
    r->fingerprint = eng_model_kv_fingerprint(r->model, id, bs);
    eng_kv_config_t kc = {.geom = eng_model_kv_geom(r->model, (uint32_t)nb, bs),
                          .fingerprint = r->fingerprint,
                          .mem_mode = ENG_KV_MEM_ALLOC,
                          .prefault = true,
                          .enable_prefix_cache = true};
    if (eng_model_on_device(r->model)) {
        if (cfg->kv_alloc) {
            /* kvxfer registers host pools only until GPU staging lands. */
            snprintf(err, errlen,
                     "the cuda backend cannot share its KV pool over kvxfer yet "
                     "(GPU staging is missing): use it with `tandem worker` or "
                     "`tandem generate`");
            st = CM_ERR_UNSUPPORTED;
            goto fail;
        }
        kc.mem_bytes = eng_kv_geom_pool_bytes(&kc.geom);
        kc.mem = r->dev_pool = eng_model_kv_alloc(r->model, kc.mem_bytes);
        if (!kc.mem) {
            snprintf(err, errlen, "could not allocate a device KV pool of %zu bytes", kc.mem_bytes);
            st = CM_ERR_NO_MEMORY;
            goto fail;
        }
        kc.mem_mode = ENG_KV_MEM_EXTERNAL;
        kc.mem_is_host = false;
    } else if (cfg->kv_alloc) {
        kc.mem = cfg->kv_alloc(cfg->kv_alloc_ud, &kc.geom, r->fingerprint);
        if (!kc.mem) {
            snprintf(err, errlen, "could not provide KV pool memory (%llu blocks)",
                     (unsigned long long)nb);
            st = CM_ERR_NO_MEMORY;
            goto fail;
        }
        kc.mem_mode = ENG_KV_MEM_EXTERNAL;
        kc.mem_bytes = eng_kv_geom_pool_bytes(&kc.geom);
        kc.mem_is_host = true;
    }
    if ((st = eng_kv_init(&kc, &r->kv))) {
        snprintf(err, errlen, "KV pool of %llu blocks: %s", (unsigned long long)nb,
                 cm_strerror(st));
        goto fail;
    }
    uint32_t ctx = cfg->max_context ? cfg->max_context : c->max_position;
    if (ctx > c->max_position) ctx = c->max_position;
    if ((uint64_t)ctx > nb * bs) ctx = (uint32_t)(nb * bs);
    r->max_context = ctx;
    dw_model_t m = {.ctx = r,
                    .vocab = c->vocab,
                    .forward = fwd,
                    .detok_new = detok_new,
                    .detok_push = detok_push,
                    .detok_flush = detok_flush,
                    .detok_free = detok_free};
    dw_sched_config_t sc = {.max_seqs = cfg->max_seqs,
                            .max_batch_tokens = cfg->max_batch_tokens,
                            .max_context = ctx,
                            .layer_events = cfg->layer_events};
    if ((st = dw_sched_new(r->kv, &m, &sc, emit, ud, &r->sched))) goto fail;
    *out = r;
    return CM_OK;
fail:
    dw_runner_free(r);
    return st;
}

void dw_runner_free(dw_runner_t *r) {
    if (!r) return;
    dw_sched_free(r->sched);
    eng_kv_free(r->kv);
    if (r->model) eng_model_kv_release(r->model, r->dev_pool);
    tok_free(r->tok);
    eng_model_free(r->model);
    cm_free(r);
}

eng_model_t *dw_runner_model(dw_runner_t *r) { return r->model; }
const tok_t *dw_runner_tok(dw_runner_t *r) { return r->tok; }
eng_kv_t *dw_runner_kv(dw_runner_t *r) { return r->kv; }
dw_sched_t *dw_runner_sched(dw_runner_t *r) { return r->sched; }
uint32_t dw_runner_max_context(const dw_runner_t *r) { return r->max_context; }
uint32_t dw_runner_vocab(const dw_runner_t *r) { return eng_model_config(r->model)->vocab; }
uint64_t dw_runner_fingerprint(const dw_runner_t *r) { return r->fingerprint; }

uint32_t dw_runner_eos(const dw_runner_t *r, int32_t *ids, uint32_t cap) {
    const mdl_config_t *c = eng_model_config(r->model);
    uint32_t n = 0;
    for (uint32_t i = 0; i < c->n_eos && n < cap; i++) ids[n++] = c->eos[i];
    int32_t te = r->tok ? tok_eos(r->tok) : -1;
    bool seen = false;
    for (uint32_t i = 0; i < n; i++) seen |= ids[i] == te;
    if (te >= 0 && !seen && n < cap) ids[n++] = te;
    return n;
}
