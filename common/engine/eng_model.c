/*
 * eng_model.c - checkpoint loading and the forward pass, written once over
 * the backend interface.
 *
 * Per layer: RMSNorm -> Q/K/V projections (+bias) -> q/k RMSNorm (Qwen3)
 * -> RoPE (neox halves, llama3 scaling) -> K/V written into the paged pool
 * -> causal GQA attention over the sequence's blocks -> O projection ->
 * residual -> RMSNorm -> SwiGLU MLP or mixture of experts (softmax router,
 * top-k, optional renormalization, tokens grouped per expert so each expert
 * runs one matmul per batch; Qwen2-MoE adds a sigmoid-gated shared expert)
 * -> residual. Then the final norm and LM head for rows that want logits.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng.h"
#include "eng_backend.h"
#include "eng_cpu_dp.h"
#include "eng_cuda.h"
#include "eng_internal.h"

cm_status_t eng_backend_parse(const char *s, eng_backend_kind_t *out) {
    if (!s) return CM_ERR_INVALID_ARG;
    if (!strcmp(s, "ref"))
        *out = ENG_BACKEND_REF;
    else if (!strcmp(s, "cpu"))
        *out = ENG_BACKEND_CPU;
    else if (!strcmp(s, "cuda"))
        *out = ENG_BACKEND_CUDA;
    else
        return CM_ERR_INVALID_ARG;
    return CM_OK;
}

/* Loads a small vector tensor as f32 (owned). */
static cm_status_t vec_f32(const mdl_weights_t *w, const char *name, uint64_t n, bool required,
                           float **out, char *err, size_t errlen) {
    mdl_tensor_t t;
    bool found = true;
    uint64_t shape[1] = {n};
    cm_status_t st = required ? mdl_weights_get(w, name, 1, shape, &t, err, errlen)
                              : mdl_weights_find(w, name, 1, shape, &t, &found, err, errlen);
    if (st != CM_OK) return st;
    if (!found) {
        *out = NULL;
        return CM_OK;
    }
    float *v = cm_malloc_array(n, sizeof *v);
    if (!v) return CM_ERR_NO_MEMORY;
    eng_to_f32(t.data, t.dtype, n, v);
    *out = v;
    return CM_OK;
}

static cm_status_t mat(const mdl_weights_t *w, const char *name, uint64_t rows, uint64_t cols,
                       mdl_tensor_t *out, size_t *bytes, char *err, size_t errlen) {
    uint64_t shape[2] = {rows, cols};
    cm_status_t st = mdl_weights_get(w, name, 2, shape, out, err, errlen);
    if (st == CM_OK && bytes) *bytes += out->nbytes;
    return st;
}

static cm_status_t load_mlp(const eng_model_t *m, const char *prefix, const char *g, const char *u,
                            const char *d, uint32_t ff, mlp_t *out, size_t *bytes, char *err,
                            size_t errlen) {
    char name[256];
    cm_status_t st;
    snprintf(name, sizeof name, "%s.%s.weight", prefix, g);
    if ((st = mat(m->w, name, ff, m->c.hidden, &out->gate, bytes, err, errlen))) return st;
    snprintf(name, sizeof name, "%s.%s.weight", prefix, u);
    if ((st = mat(m->w, name, ff, m->c.hidden, &out->up, bytes, err, errlen))) return st;
    snprintf(name, sizeof name, "%s.%s.weight", prefix, d);
    return mat(m->w, name, m->c.hidden, ff, &out->down, bytes, err, errlen);
}

static cm_status_t load_layer(eng_model_t *m, uint32_t l, char *err, size_t errlen) {
    const mdl_config_t *c = &m->c;
    layer_t *L = &m->layers[l];
    char p[128], name[256];
    cm_status_t st;
    snprintf(p, sizeof p, "model.layers.%u", l);
#define NAME(fmt) (snprintf(name, sizeof name, "%s." fmt, p), name)
    if ((st = vec_f32(m->w, NAME("input_layernorm.weight"), c->hidden, true, &L->attn_norm, err,
                      errlen)) ||
        (st = vec_f32(m->w, NAME("post_attention_layernorm.weight"), c->hidden, true, &L->mlp_norm,
                      err, errlen)))
        return st;
    uint32_t qd = c->n_heads * c->head_dim, kd = c->n_kv_heads * c->head_dim;
    size_t *b = &m->weight_bytes;
    if ((st = mat(m->w, NAME("self_attn.q_proj.weight"), qd, c->hidden, &L->wq, b, err, errlen)) ||
        (st = mat(m->w, NAME("self_attn.k_proj.weight"), kd, c->hidden, &L->wk, b, err, errlen)) ||
        (st = mat(m->w, NAME("self_attn.v_proj.weight"), kd, c->hidden, &L->wv, b, err, errlen)) ||
        (st = mat(m->w, NAME("self_attn.o_proj.weight"), c->hidden, qd, &L->wo, b, err, errlen)))
        return st;
    /* Biases where the checkpoint has them (Qwen2 family). */
    if ((st = vec_f32(m->w, NAME("self_attn.q_proj.bias"), qd, false, &L->bq, err, errlen)) ||
        (st = vec_f32(m->w, NAME("self_attn.k_proj.bias"), kd, false, &L->bk, err, errlen)) ||
        (st = vec_f32(m->w, NAME("self_attn.v_proj.bias"), kd, false, &L->bv, err, errlen)))
        return st;
    if (c->qk_norm && ((st = vec_f32(m->w, NAME("self_attn.q_norm.weight"), c->head_dim, true,
                                     &L->q_norm, err, errlen)) ||
                       (st = vec_f32(m->w, NAME("self_attn.k_norm.weight"), c->head_dim, true,
                                     &L->k_norm, err, errlen))))
        return st;
    L->moe = mdl_config_layer_is_moe(c, l);
    if (!L->moe) {
        snprintf(p, sizeof p, "model.layers.%u.mlp", l);
        return load_mlp(m, p, "gate_proj", "up_proj", "down_proj", c->intermediate, &L->mlp, b, err,
                        errlen);
    }
    bool mixtral = c->arch == MDL_ARCH_MIXTRAL;
    snprintf(p, sizeof p, "model.layers.%u.%s", l, mixtral ? "block_sparse_moe" : "mlp");
    if ((st = mat(m->w, NAME("gate.weight"), c->n_experts, c->hidden, &L->router, b, err, errlen)))
        return st;
    L->router.exact = true;
    L->experts = cm_calloc(c->n_experts, sizeof *L->experts);
    if (!L->experts) return CM_ERR_NO_MEMORY;
    for (uint32_t e = 0; e < c->n_experts; e++) {
        char ep[160];
        snprintf(ep, sizeof ep, "%s.experts.%u", p, e);
        size_t eb = 0; /* only top_k experts are read per token */
        st = mixtral ? load_mlp(m, ep, "w1", "w3", "w2", c->moe_intermediate, &L->experts[e], &eb,
                                err, errlen)
                     : load_mlp(m, ep, "gate_proj", "up_proj", "down_proj", c->moe_intermediate,
                                &L->experts[e], &eb, err, errlen);
        if (st) return st;
        if (e < c->top_k) m->weight_bytes += eb;
    }
    if (c->arch == MDL_ARCH_QWEN2MOE && c->shared_intermediate) {
        L->has_shared = true;
        char sp[160];
        snprintf(sp, sizeof sp, "%s.shared_expert", p);
        if ((st = load_mlp(m, sp, "gate_proj", "up_proj", "down_proj", c->shared_intermediate,
                           &L->shared, b, err, errlen)) ||
            (st = mat(m->w, NAME("shared_expert_gate.weight"), 1, c->hidden, &L->shared_gate, b,
                      err, errlen)))
            return st;
    }
#undef NAME
    return CM_OK;
}

static void rope_init(eng_model_t *m) {
    const mdl_config_t *c = &m->c;
    uint32_t half = c->head_dim / 2;
    for (uint32_t i = 0; i < half; i++) {
        float f = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->head_dim);
        if (c->rope_llama3) {
            /* transformers' _compute_llama3_parameters */
            float low_wl = (float)c->rope_orig_max / c->rope_low_freq;
            float high_wl = (float)c->rope_orig_max / c->rope_high_freq;
            float wl = 2.0f * (float)M_PI / f;
            float g = wl > low_wl ? f / c->rope_factor : f;
            if (!(wl < high_wl) && !(wl > low_wl)) {
                float s = ((float)c->rope_orig_max / wl - c->rope_low_freq) /
                          (c->rope_high_freq - c->rope_low_freq);
                g = (1.0f - s) * g / c->rope_factor + s * g;
            }
            f = g;
        }
        m->inv_freq[i] = f;
    }
}

/* Calls @fn on every weight matrix a matmul reads (the LM head once,
 * also when it is the embedding); stops at the first error. */
static cm_status_t each_matrix(eng_model_t *m, cm_status_t (*fn)(eng_model_t *, mdl_tensor_t *)) {
    cm_status_t st = CM_OK;
#define M(t)                                        \
    do {                                            \
        if ((st = fn(m, &(t))) != CM_OK) return st; \
    } while (0)
    for (uint32_t l = 0; m->layers && l < m->c.n_layers; l++) {
        layer_t *L = &m->layers[l];
        mlp_t *mlps[2] = {L->moe ? NULL : &L->mlp, L->has_shared ? &L->shared : NULL};
        M(L->wq);
        M(L->wk);
        M(L->wv);
        M(L->wo);
        if (L->moe) {
            M(L->router);
            for (uint32_t e = 0; L->experts && e < m->c.n_experts; e++) {
                M(L->experts[e].gate);
                M(L->experts[e].up);
                M(L->experts[e].down);
            }
        }
        if (L->has_shared) M(L->shared_gate);
        for (int i = 0; i < 2; i++)
            if (mlps[i]) {
                M(mlps[i]->gate);
                M(mlps[i]->up);
                M(mlps[i]->down);
            }
    }
    M(m->lm_head);
#undef M
    return st;
}

/* The backend's own layout of a matrix, when it has one; the mapped pages
 * of the original then leave resident memory (the embedding's stay: rows
 * are looked up from it). */
static cm_status_t pack_one(eng_model_t *m, mdl_tensor_t *t) {
    cm_status_t st = m->be.iface->pack(m->be.ctx, t);
    if (st == CM_OK && t->packed && t->data != m->embed.data) mdl_weights_release(m->w, t);
    return st;
}

static cm_status_t unpack_one(eng_model_t *m, mdl_tensor_t *t) {
    (void)m; /* the memory goes with the backend */
    t->packed = NULL;
    return CM_OK;
}

/* TANDEM_KV_DTYPE: "auto" (or unset) is bf16 where the cpu backend rounds
 * matmul inputs to bf16 (TANDEM_CPU_PRECISION=bf16, as vLLM keeps a bf16
 * model's cache in bf16) and f32 elsewhere; "f32" and "bf16" choose. The
 * cuda backend keeps f32. */
static cm_status_t kv_dtype_init(eng_model_t *m, char *err, size_t errlen) {
    const char *s = getenv("TANDEM_KV_DTYPE");
    if (!s || !*s || !strcmp(s, "auto")) {
        const char *prec = m->kind == ENG_BACKEND_CPU ? eng_cpu_precision(&m->be) : NULL;
        m->kv_bf16 = prec && !strncmp(prec, "bf16", 4);
    } else if (!strcmp(s, "f32")) {
        m->kv_bf16 = false;
    } else if (!strcmp(s, "bf16")) {
        if (m->kind == ENG_BACKEND_CUDA) {
            snprintf(err, errlen,
                     "TANDEM_KV_DTYPE=bf16: the cuda backend keeps its KV cache in f32");
            return CM_ERR_UNSUPPORTED;
        }
        m->kv_bf16 = true;
    } else {
        snprintf(err, errlen, "TANDEM_KV_DTYPE must be auto, f32 or bf16 (got '%s')", s);
        return CM_ERR_INVALID_ARG;
    }
    return CM_OK;
}

cm_status_t eng_model_load(const char *dir, eng_backend_kind_t backend, eng_model_t **out,
                           char *err, size_t errlen) {
    eng_model_t *m = cm_calloc(1, sizeof *m);
    if (!m) return CM_ERR_NO_MEMORY;
    cm_status_t st = mdl_config_load(dir, &m->c, err, errlen);
    if (st) goto fail;
    st = mdl_weights_open(dir, &m->w, err, errlen);
    if (st) goto fail;
    m->kind = backend;
    /* The cuda backend loads the host model below, uploads it and never
     * computes on the host: it gets the thread-free ref backend, not the
     * cpu backend's thread pool. */
    st = backend == ENG_BACKEND_CPU ? eng_backend_cpu_new(&m->be) : eng_backend_ref_new(&m->be);
    if (st) {
        snprintf(err, errlen, "backend could not be created");
        goto fail;
    }
    if ((st = kv_dtype_init(m, err, errlen))) {
        eng_model_free(m);
        return st;
    }
    const mdl_config_t *c = &m->c;
    uint64_t es[2] = {c->vocab, c->hidden};
    if ((st = mdl_weights_get(m->w, "model.embed_tokens.weight", 2, es, &m->embed, err, errlen)))
        goto fail;
    bool found = false;
    st = mdl_weights_find(m->w, "lm_head.weight", 2, es, &m->lm_head, &found, err, errlen);
    if (st) goto fail;
    if (!found) {
        if (!c->tie_embeddings) {
            snprintf(err, errlen, "tensor 'lm_head.weight' is missing and embeddings are not tied");
            st = CM_ERR_NOT_FOUND;
            goto fail;
        }
        m->lm_head = m->embed;
    }
    m->weight_bytes += m->lm_head.nbytes;
    if ((st = vec_f32(m->w, "model.norm.weight", c->hidden, true, &m->final_norm, err, errlen)))
        goto fail;
    m->layers = cm_calloc(c->n_layers, sizeof *m->layers);
    m->inv_freq = cm_malloc_array(c->head_dim / 2 + 1, sizeof *m->inv_freq);
    if (!m->layers || !m->inv_freq) {
        st = CM_ERR_NO_MEMORY;
        goto fail;
    }
    for (uint32_t l = 0; l < c->n_layers; l++)
        if ((st = load_layer(m, l, err, errlen))) goto fail;
    rope_init(m);
    if (backend != ENG_BACKEND_CUDA && m->be.iface->pack && (st = each_matrix(m, pack_one)))
        goto fail;
    if (backend == ENG_BACKEND_CUDA && (st = eng_cuda_new(m, &m->cuda, err, errlen))) {
        eng_model_free(m);
        return st;
    }
    *out = m;
    return CM_OK;
fail:
    if (st == CM_ERR_NO_MEMORY) snprintf(err, errlen, "out of memory loading %s", dir);
    eng_model_free(m);
    return st;
}

void eng_model_free(eng_model_t *m) {
    if (!m) return;
    (void)each_matrix(m, unpack_one);
    for (uint32_t l = 0; m->layers && l < m->c.n_layers; l++) {
        layer_t *L = &m->layers[l];
        cm_free(L->attn_norm);
        cm_free(L->mlp_norm);
        cm_free(L->q_norm);
        cm_free(L->k_norm);
        cm_free(L->bq);
        cm_free(L->bk);
        cm_free(L->bv);
        cm_free(L->experts);
    }
    cm_free(m->layers);
    cm_free(m->final_norm);
    cm_free(m->inv_freq);
    cm_aligned_free(m->buf);
    eng_cuda_free(m->cuda);
    if (m->be.iface) m->be.iface->free(m->be.ctx);
    mdl_weights_close(m->w);
    cm_free(m);
}

const mdl_config_t *eng_model_config(const eng_model_t *m) { return &m->c; }
const char *eng_model_backend_name(const eng_model_t *m) {
    return m->cuda ? "cuda" : m->be.iface->name;
}

const char *eng_model_cpu_precision(const eng_model_t *m) {
    return m->cuda ? NULL : eng_cpu_precision(&m->be);
}

void *eng_model_kv_alloc(eng_model_t *m, size_t bytes) {
    return m->cuda ? eng_cuda_kv_alloc(m->cuda, bytes) : NULL;
}

void eng_model_kv_release(eng_model_t *m, void *mem) {
    if (m->cuda && mem) eng_cuda_kv_free(m->cuda, mem);
}

bool eng_model_on_device(const eng_model_t *m) { return m->cuda != NULL; }
const char *eng_model_device_name(const eng_model_t *m) {
    return m->cuda ? eng_cuda_device_name(m->cuda) : "cpu";
}
size_t eng_model_weight_bytes(const eng_model_t *m) { return m->weight_bytes; }
size_t eng_model_lm_head_bytes(const eng_model_t *m) { return m->lm_head.nbytes; }

eng_kv_geom_t eng_model_kv_geom(const eng_model_t *m, uint32_t n_blocks, uint32_t block_size) {
    eng_kv_geom_t g = {.n_layers = m->c.n_layers,
                       .n_blocks = n_blocks,
                       .block_size = block_size,
                       .kv_heads = m->c.n_kv_heads,
                       .head_dim = m->c.head_dim,
                       .dtype_bytes = m->kv_bf16 ? 2 : 4};
    return g;
}

const char *eng_model_kv_dtype(const eng_model_t *m) { return m->kv_bf16 ? "bf16" : "f32"; }

uint64_t eng_model_kv_fingerprint(const eng_model_t *m, const char *model_id, uint32_t block_size) {
    eng_kv_fp_params_t p = {.model_id = model_id,
                            .dtype = eng_model_kv_dtype(m),
                            .n_layers = m->c.n_layers,
                            .block_size = block_size,
                            .kv_heads = m->c.n_kv_heads,
                            .head_dim = m->c.head_dim,
                            .tp_size = 1};
    return eng_kv_fingerprint(&p);
}

/* ------------------------------------------------------------------------ */
/* Forward                                                                  */
/* ------------------------------------------------------------------------ */

/* A token's RoPE rotation: cs[i] / sn[i] = cos / sin of pos * inv_freq[i]
 * for i < head_dim / 2 (computed once per forward, used by every layer). */
static void rope_angles(const eng_model_t *m, uint32_t pos, float *cs, float *sn) {
    for (uint32_t i = 0; i < m->c.head_dim / 2; i++) {
        float a = (float)pos * m->inv_freq[i];
        cs[i] = cosf(a);
        sn[i] = sinf(a);
    }
}

/* Applies RoPE (rotate_half convention) to @n_heads heads with one token's
 * rope_angles. */
static void rope(const eng_model_t *m, float *x, uint32_t n_heads, const float *cs,
                 const float *sn) {
    uint32_t hd = m->c.head_dim, half = hd / 2;
    for (uint32_t h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * hd;
        for (uint32_t i = 0; i < half; i++) {
            float x0 = v[i], x1 = v[i + half];
            v[i] = x0 * cs[i] - x1 * sn[i];
            v[i + half] = x1 * cs[i] + x0 * sn[i];
        }
    }
}

/* Matmuls of one x: together where the backend can (one wait). */
static void matmuls(eng_model_t *m, const float *x, size_t rows, size_t in, size_t n,
                    const eng_mm_t *mm) {
    const eng_backend_i *be = m->be.iface;
    if (be->matmul_n) {
        be->matmul_n(m->be.ctx, x, rows, in, n, mm);
        return;
    }
    for (size_t i = 0; i < n; i++)
        be->matmul(m->be.ctx, x, rows, in, mm[i].w, mm[i].bias, mm[i].out, mm[i].y);
}

/* out[ff] MLP of rows x[rows][hidden] -> y[rows][hidden] (scratch tmp). */
static void mlp_run(eng_model_t *m, const mlp_t *p, const float *x, size_t rows, uint32_t ff,
                    float *g, float *u, float *y) {
    const eng_backend_i *be = m->be.iface;
    const eng_mm_t gu[2] = {{&p->gate, NULL, ff, g}, {&p->up, NULL, ff, u}};
    matmuls(m, x, rows, m->c.hidden, 2, gu);
    be->swiglu(m->be.ctx, g, u, rows * ff);
    be->matmul(m->be.ctx, g, rows, ff, &p->down, NULL, m->c.hidden, y);
}

/* The forward pass's scratch (contents not kept), on 64-byte lines: the
 * matmuls' output rows then start on a line (whole-line stores). */
static float *scratch(eng_model_t *m, size_t floats) {
    size_t bytes;
    if (floats > m->buf_cap) {
        if (!cm_mul_ok(floats, sizeof(float), &bytes)) return NULL;
        float *b = cm_aligned_alloc(64, bytes);
        if (!b) return NULL;
        cm_aligned_free(m->buf);
        m->buf = b;
        m->buf_cap = floats;
    }
    return m->buf;
}

cm_status_t eng_forward(eng_model_t *m, eng_kv_t *kv, const eng_item_t *items, size_t n,
                        float *logits) {
    return eng_forward_hooked(m, kv, items, n, logits, NULL, NULL);
}

cm_status_t eng_forward_hooked(eng_model_t *m, eng_kv_t *kv, const eng_item_t *items, size_t n,
                               float *logits, eng_layer_fn on_layer, void *ud) {
    const mdl_config_t *c = &m->c;
    const eng_backend_i *be = m->be.iface;
    const eng_kv_geom_t *g = eng_kv_geom(kv);
    if (g->n_layers != c->n_layers || g->kv_heads != c->n_kv_heads || g->head_dim != c->head_dim ||
        g->dtype_bytes != (m->kv_bf16 ? 2u : 4u))
        return CM_ERR_INVALID_ARG;
    size_t T = 0, n_logits = 0;
    for (size_t i = 0; i < n; i++) {
        if (!items[i].seq || items[i].n == 0 ||
            items[i].start + items[i].n > eng_kv_seq_len(items[i].seq))
            return CM_ERR_INVALID_ARG;
        T += items[i].n;
        n_logits += items[i].logits;
    }
    if (m->cuda) {
        cm_status_t cst = T ? eng_cuda_forward(m->cuda, m, kv, items, n, logits) : CM_OK;
        for (uint32_t l = 0; cst == CM_OK && on_layer && l < c->n_layers; l++) on_layer(ud, l);
        return cst;
    }
    uint32_t H = c->hidden, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    uint32_t qd = nh * hd, kd = nkv * hd;
    uint32_t ff = c->intermediate > c->moe_intermediate ? c->intermediate : c->moe_intermediate;
    if (c->shared_intermediate > ff) ff = c->shared_intermediate;
        /* Scratch layout (floats; each array from a 64-byte line). */
#define SCR(n) (((n) + 15) / 16 * 16)
    size_t off_x = 0, off_h = off_x + SCR(T * H), off_q = off_h + SCR(T * H);
    size_t off_k = off_q + SCR(T * qd), off_v = off_k + SCR(T * kd), off_a = off_v + SCR(T * kd);
    size_t off_o = off_a + SCR(T * qd), off_g = off_o + SCR(T * H), off_u = off_g + SCR(T * ff);
    size_t off_r = off_u + SCR(T * ff), off_e = off_r + SCR(T * (c->n_experts + 1));
    size_t off_y = off_e + SCR(T * H), off_rc = off_y + SCR(T * H), total = off_rc + T * hd + 8;
#undef SCR
    float *buf = scratch(m, total);
    int32_t *tok = cm_malloc_array(T, sizeof *tok);
    uint32_t *pos = cm_malloc_array(T, sizeof *pos);
    size_t *owner = cm_malloc_array(T, sizeof *owner);
    uint32_t *sel = cm_malloc_array(T * (c->top_k + 1), sizeof *sel);
    float *selw = cm_malloc_array(T * (c->top_k + 1), sizeof *selw);
    uint32_t *rows_of = cm_malloc_array(T + 1, sizeof *rows_of);
    /* Attention: K/V row pointers per item position, per token its item's
     * rows and its context length. */
    size_t n_rows = 0;
    for (size_t i = 0; i < n; i++) n_rows += items[i].start + items[i].n;
    eng_kv_row_t *krow = cm_malloc_array(n_rows, sizeof *krow);
    eng_kv_row_t *vrow = cm_malloc_array(n_rows, sizeof *vrow);
    const eng_kv_row_t **tk = cm_malloc_array(T, sizeof *tk);
    const eng_kv_row_t **tv = cm_malloc_array(T, sizeof *tv);
    uint32_t *actx = cm_malloc_array(T, sizeof *actx);
    cm_status_t st = CM_OK;
    if (!buf || !tok || !pos || !owner || !sel || !selw || !rows_of || !krow || !vrow || !tk ||
        !tv || !actx) {
        st = CM_ERR_NO_MEMORY;
        goto out;
    }
    float *x = buf + off_x, *h = buf + off_h, *q = buf + off_q, *k = buf + off_k, *v = buf + off_v;
    float *att = buf + off_a, *o = buf + off_o, *gg = buf + off_g, *uu = buf + off_u;
    float *rl = buf + off_r, *ex = buf + off_e, *ey = buf + off_y, *rc = buf + off_rc;
    size_t t = 0;
    for (size_t i = 0, base = 0; i < n; base += items[i].start + items[i].n, i++) {
        const int32_t *ids = eng_kv_seq_tokens(items[i].seq);
        for (uint32_t j = 0; j < items[i].n; j++, t++) {
            tok[t] = ids[items[i].start + j];
            pos[t] = items[i].start + j;
            owner[t] = i;
            tk[t] = krow + base;
            tv[t] = vrow + base;
            actx[t] = pos[t] + 1;
            rope_angles(m, pos[t], rc + t * hd, rc + t * hd + hd / 2);
        }
    }
    size_t esz = mdl_dtype_size(m->embed.dtype);
    for (t = 0; t < T; t++) {
        if (tok[t] < 0 || (uint32_t)tok[t] >= c->vocab) {
            st = CM_ERR_INVALID_ARG;
            goto out;
        }
        eng_to_f32((const char *)m->embed.data + (size_t)tok[t] * H * esz, m->embed.dtype, H,
                   x + t * H);
    }
    float scale = 1.0f / sqrtf((float)hd);
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const layer_t *L = &m->layers[l];
        be->rmsnorm(m->be.ctx, x, T, H, L->attn_norm, c->rms_eps, h);
        const eng_mm_t qkv[3] = {
            {&L->wq, L->bq, qd, q}, {&L->wk, L->bk, kd, k}, {&L->wv, L->bv, kd, v}};
        matmuls(m, h, T, H, 3, qkv);
        if (c->qk_norm) {
            be->rmsnorm(m->be.ctx, q, T * nh, hd, L->q_norm, c->rms_eps, q);
            be->rmsnorm(m->be.ctx, k, T * nkv, hd, L->k_norm, c->rms_eps, k);
        }
        for (t = 0; t < T; t++) {
            const float *cs = rc + t * hd, *sn = cs + hd / 2;
            rope(m, q + t * qd, nh, cs, sn);
            rope(m, k + t * kd, nkv, cs, sn);
            int32_t blk;
            uint32_t slot;
            void *kp, *vp;
            if (!eng_kv_seq_slot(items[owner[t]].seq, pos[t], &blk, &slot) ||
                eng_kv_slot_ptrs(kv, l, blk, slot, &kp, &vp) != CM_OK) {
                st = CM_ERR_INVALID_ARG;
                goto out;
            }
            if (m->kv_bf16) { /* rounded to nearest even, as torch's .to(bfloat16) */
                eng_bf16_round_row(k + t * kd, kd, kp);
                eng_bf16_round_row(v + t * kd, kd, vp);
            } else {
                memcpy(kp, k + t * kd, kd * sizeof(float));
                memcpy(vp, v + t * kd, kd * sizeof(float));
            }
        }
        if (on_layer) on_layer(ud, l);
        /* Causal attention of every new token over its sequence so far:
         * row pointers of this layer's K/V for each item's positions. */
        for (size_t i = 0, base = 0; i < n; base += items[i].start + items[i].n, i++)
            for (uint32_t p = 0; p < items[i].start + items[i].n; p++) {
                int32_t blk;
                uint32_t slot;
                void *kp, *vp;
                if (!eng_kv_seq_slot(items[i].seq, p, &blk, &slot) ||
                    eng_kv_slot_ptrs(kv, l, blk, slot, &kp, &vp) != CM_OK) {
                    st = CM_ERR_INVALID_ARG;
                    goto out;
                }
                if (m->kv_bf16) {
                    krow[base + p].h = kp;
                    vrow[base + p].h = vp;
                } else {
                    krow[base + p].f = kp;
                    vrow[base + p].f = vp;
                }
            }
        eng_attn_t aj = {T, nh, nkv, hd, scale, q, att, actx, tk, tv, m->kv_bf16};
        st = be->attention(m->be.ctx, &aj);
        if (st != CM_OK) goto out;
        be->matmul(m->be.ctx, att, T, qd, &L->wo, NULL, H, o);
        for (size_t i = 0; i < T * H; i++) x[i] += o[i];
        be->rmsnorm(m->be.ctx, x, T, H, L->mlp_norm, c->rms_eps, h);
        if (!L->moe) {
            mlp_run(m, &L->mlp, h, T, c->intermediate, gg, uu, o);
            for (size_t i = 0; i < T * H; i++) x[i] += o[i];
            continue;
        }
        /* Mixture of experts. Router: softmax over experts, top-k. */
        uint32_t E = c->n_experts, K = c->top_k;
        be->matmul(m->be.ctx, h, T, H, &L->router, NULL, E, rl);
        for (t = 0; t < T; t++) {
            float *r = rl + t * E, mx = -INFINITY, sum = 0.0f;
            for (uint32_t e = 0; e < E; e++) mx = r[e] > mx ? r[e] : mx;
            for (uint32_t e = 0; e < E; e++) sum += (r[e] = expf(r[e] - mx));
            for (uint32_t e = 0; e < E; e++) r[e] /= sum;
            float ksum = 0.0f;
            for (uint32_t j = 0; j < K; j++) {
                uint32_t best = 0;
                float bv = -1.0f;
                for (uint32_t e = 0; e < E; e++) {
                    bool taken = false;
                    for (uint32_t z = 0; z < j; z++) taken |= sel[t * K + z] == e;
                    if (!taken && r[e] > bv) {
                        bv = r[e];
                        best = e;
                    }
                }
                sel[t * K + j] = best;
                selw[t * K + j] = bv;
                ksum += bv;
            }
            if (c->norm_topk)
                for (uint32_t j = 0; j < K; j++) selw[t * K + j] /= ksum;
        }
        memset(o, 0, T * H * sizeof *o);
        /* Tokens grouped by expert: one matmul per expert per batch. */
        for (uint32_t e = 0; e < E; e++) {
            uint32_t nr = 0;
            for (t = 0; t < T; t++)
                for (uint32_t j = 0; j < K; j++)
                    if (sel[t * K + j] == e) {
                        memcpy(ex + (size_t)nr * H, h + t * H, H * sizeof *ex);
                        rows_of[nr++] = (uint32_t)(t * K + j);
                    }
            if (!nr) continue;
            mlp_run(m, &L->experts[e], ex, nr, c->moe_intermediate, gg, uu, ey);
            for (uint32_t r = 0; r < nr; r++) {
                size_t tt = rows_of[r] / K;
                float wgt = selw[rows_of[r]];
                for (uint32_t i = 0; i < H; i++) o[tt * H + i] += wgt * ey[(size_t)r * H + i];
            }
        }
        if (L->has_shared) {
            mlp_run(m, &L->shared, h, T, c->shared_intermediate, gg, uu, ey);
            be->matmul(m->be.ctx, h, T, H, &L->shared_gate, NULL, 1, rl);
            for (t = 0; t < T; t++) {
                float sg = 1.0f / (1.0f + expf(-rl[t]));
                for (uint32_t i = 0; i < H; i++) o[t * H + i] += sg * ey[t * H + i];
            }
        }
        for (size_t i = 0; i < T * H; i++) x[i] += o[i];
    }
    /* Final norm on the last token of items that want logits, gathered
     * into h, then one LM head matmul for all of them (it streams the
     * whole head once per call, not once per sequence). */
    size_t row = 0;
    t = 0;
    for (size_t i = 0; i < n; i++) {
        t += items[i].n;
        if (!items[i].logits) continue;
        be->rmsnorm(m->be.ctx, x + (t - 1) * H, 1, H, m->final_norm, c->rms_eps, h + row * H);
        row++;
    }
    if (row) be->matmul(m->be.ctx, h, row, H, &m->lm_head, NULL, c->vocab, logits);
out:
    cm_free(krow);
    cm_free(vrow);
    cm_free(tk);
    cm_free(tv);
    cm_free(actx);
    cm_free(tok);
    cm_free(pos);
    cm_free(owner);
    cm_free(sel);
    cm_free(selw);
    cm_free(rows_of);
    return st;
}
