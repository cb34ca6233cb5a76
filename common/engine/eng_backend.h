/*
 * eng_backend.h - the compute backend interface the forward pass is written
 * against once ({iface, ctx}, like ggml_backend_i). `ref` is plain loops,
 * obviously correct, the oracle every faster backend is tested against.
 */
#ifndef TANDEM_ENG_BACKEND_H
#define TANDEM_ENG_BACKEND_H

#include "mdl.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A K or V row of the paged cache: f32 or bf16 (eng_attn_t.kv_bf16). */
typedef union {
    const float *f;
    const uint16_t *h;
} eng_kv_row_t;

/* Causal attention of T query tokens over a paged KV cache. Token t
 * attends to its first ctx[t] positions; k[t][p] / v[t][p] point at
 * position p's key / value row (kv_heads * head_dim values: .f floats, or
 * .h bf16 values widened exactly when kv_bf16). q and out are
 * [T][n_heads * head_dim] floats; query head h reads kv head
 * h / (n_heads / kv_heads). Rows for one (token, head) never depend on the
 * other tokens in the batch. */
typedef struct {
    size_t T;
    uint32_t n_heads, kv_heads, head_dim;
    float scale;
    const float *q;
    float *out;
    const uint32_t *ctx;
    const eng_kv_row_t *const *k;
    const eng_kv_row_t *const *v;
    bool kv_bf16;
} eng_attn_t;

/* One matmul of several over the same x (eng_backend_i.matmul_n). */
typedef struct {
    const mdl_tensor_t *w;
    const float *bias; /* or NULL */
    size_t out;
    float *y;
} eng_mm_t;

#define ENG_MM_MAX 4 /* matmuls one matmul_n call takes */

typedef struct {
    const char *name;
    /* y[r][o] = sum_i x[r][i] * W[o][i] (+ bias[o]) for r < rows; W is
     * [out][in] in its checkpoint dtype, x and y f32 row-major. */
    void (*matmul)(void *ctx, const float *x, size_t rows, size_t in, const mdl_tensor_t *w,
                   const float *bias, size_t out, float *y);
    /* Optional (NULL: matmul once per entry). @n <= ENG_MM_MAX matmuls
     * of the same x ([rows][in]), mm[i].y = x W_i^T (+ bias_i): the same
     * bits as separate matmul calls, run as one job (one wait for all,
     * as Q/K/V or gate/up projections). */
    void (*matmul_n)(void *ctx, const float *x, size_t rows, size_t in, size_t n,
                     const eng_mm_t *mm);
    /* y[r] = x[r] / rms(x[r]) * weight, per row of @dim; y may equal x. */
    void (*rmsnorm)(void *ctx, const float *x, size_t rows, size_t dim, const float *weight,
                    float eps, float *y);
    /* g[i] = silu(g[i]) * u[i] for i < @n (the SwiGLU of an MLP's gate
     * and up projections); element-wise, so any batch gives the same
     * value for an element. */
    void (*swiglu)(void *ctx, float *g, const float *u, size_t n);
    /* Attention as described at eng_attn_t. */
    cm_status_t (*attention)(void *ctx, const eng_attn_t *a);
    /* Optional (NULL: none). Copies a weight matrix's values into this
     * backend's faster layout: sets w->packed (the backend's memory, valid
     * until the backend is freed; huge pages on the cpu backend) or leaves
     * it NULL when the backend has none for this tensor. matmul then reads w->packed; a
     * tensor gives the same results packed or not up to summation order
     * (and the cpu backend's bf16 input rounding, TANDEM_CPU_PRECISION),
     * and each row the same alone or in any batch. */
    cm_status_t (*pack)(void *ctx, mdl_tensor_t *w);
    /* Frees the context. */
    void (*free)(void *ctx);
} eng_backend_i;

typedef struct {
    const eng_backend_i *iface;
    void *ctx;
} eng_backend_t;

/* Scalar reference backend. */
cm_status_t eng_backend_ref_new(eng_backend_t *out);
/* Fast CPU backend (SIMD + threads). */
cm_status_t eng_backend_cpu_new(eng_backend_t *out);

/* Whether this machine runs the cpu backend's @isa path ("scalar",
 * "avx2", "avx512"); the env TANDEM_CPU_ISA caps the one it picks. */
bool eng_cpu_isa_available(const char *isa);
/* The path a cpu backend uses (NULL for other backends). */
const char *eng_cpu_isa(const eng_backend_t *b);
/* The precision of a cpu backend's matmul inputs (NULL for other
 * backends): "f32" (exact, the default) or "bf16" (the env
 * TANDEM_CPU_PRECISION=bf16 on a CPU with AVX512_BF16: inputs rounded to
 * bf16, products summed in f32; matrices marked exact stay f32) or
 * "bf16-amx" (that, with TANDEM_CPU_AMX=1 on a CPU with AMX-BF16: the
 * products on AMX tiles). */
const char *eng_cpu_precision(const eng_backend_t *b);

/* One (token @t, head @h) of @a in plain loops (the ref backend's
 * attention); @sc holds a->ctx[t] floats of scratch. */
void eng_attn_head_ref(const eng_attn_t *a, size_t t, uint32_t h, float *sc);

/* Converts @n elements of @src (dtype @t) to f32. */
void eng_to_f32(const void *src, mdl_dtype_t t, size_t n, float *dst);

#ifdef __cplusplus
}
#endif
#endif /* TANDEM_ENG_BACKEND_H */
