/*
 * eng_cpu_ops.h - the cpu backend's attention-head, SwiGLU and RMSNorm
 * kernels (eng_cpu_ops.c) and the SIMD helpers eng_cpu.c shares with
 * them. Internal to the engine.
 */
#ifndef TANDEM_ENG_CPU_OPS_H
#define TANDEM_ENG_CPU_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "eng_backend.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c,fma")))
#define AVX2   __attribute__((target("avx2,fma,f16c")))

/* Sum of the 8 lanes of @v. */
__attribute__((target("avx2,fma"))) static inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}
/* exp(x) for x <= 0 in vectors (Cephes' expf: x = n ln2 + r, a degree-5
 * polynomial in r, about 1 ulp; inputs below -87 give exp(-87)). */
#define EXP_POLY(vec, set1, fmadd, mul, add, x, n, y)    \
    do {                                                 \
        vec r_ = fmadd(n, set1(-0.693359375f), x);       \
        r_ = fmadd(n, set1(2.12194440e-4f), r_);         \
        vec p_ = set1(1.9875691500e-4f);                 \
        p_ = fmadd(p_, r_, set1(1.3981999507e-3f));      \
        p_ = fmadd(p_, r_, set1(8.3334519073e-3f));      \
        p_ = fmadd(p_, r_, set1(4.1665795894e-2f));      \
        p_ = fmadd(p_, r_, set1(1.6666665459e-1f));      \
        p_ = fmadd(p_, r_, set1(5.0000001201e-1f));      \
        y = fmadd(p_, mul(r_, r_), add(r_, set1(1.0f))); \
    } while (0)

AVX512 static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 y;
    EXP_POLY(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_mul_ps, _mm512_add_ps, x, n, y);
    return _mm512_scalef_ps(y, n);
}
#endif

#define ENG_ATTN_QB 16 /* tokens per attention block (a multiple of 4), see ATTN_HEAD */

/* Up to ENG_ATTN_QB consecutive tokens t0 .. t0 + nq - 1 of one sequence
 * (the same K/V rows) and query head h; @sc holds ENG_ATTN_QB * @stride
 * floats of scratch. */
typedef void (*eng_head_fn)(const eng_attn_t *a, size_t t0, uint32_t nq, uint32_t h, float *sc,
                            size_t stride);

/* Query heads h0 .. h0 + ng - 1 (ng <= ENG_ATTN_QB, one kv head) of token
 * @t: the rows of one block, so each K/V row is read once for all of them
 * (decode); the same bits as eng_head_fn one head at a time. */
typedef void (*eng_heads_fn)(const eng_attn_t *a, size_t t, uint32_t h0, uint32_t ng, float *sc,
                             size_t stride);

#if defined(__x86_64__)
void eng_heads_avx512(const eng_attn_t *a, size_t t, uint32_t h0, uint32_t ng, float *sc,
                      size_t stride);
void eng_heads_avx2(const eng_attn_t *a, size_t t, uint32_t h0, uint32_t ng, float *sc,
                    size_t stride);
void eng_head_avx512(const eng_attn_t *a, size_t t0, uint32_t nq, uint32_t h, float *sc,
                     size_t stride);
void eng_head_avx2(const eng_attn_t *a, size_t t0, uint32_t nq, uint32_t h, float *sc,
                   size_t stride);
/* The same over bf16 K/V rows (eng_attn_t.kv_bf16). */
void eng_heads_avx512_bf16(const eng_attn_t *a, size_t t, uint32_t h0, uint32_t ng, float *sc,
                           size_t stride);
void eng_heads_avx2_bf16(const eng_attn_t *a, size_t t, uint32_t h0, uint32_t ng, float *sc,
                         size_t stride);
void eng_head_avx512_bf16(const eng_attn_t *a, size_t t0, uint32_t nq, uint32_t h, float *sc,
                          size_t stride);
void eng_head_avx2_bf16(const eng_attn_t *a, size_t t0, uint32_t nq, uint32_t h, float *sc,
                        size_t stride);
/* g[i] = silu(g[i]) * u[i]. */
void eng_swiglu512(float *g, const float *u, size_t n);
void eng_swiglu256(float *g, const float *u, size_t n);
/* One row: y = x / rms(x) * w (y may equal x). */
void eng_rmsnorm512(const float *x, size_t dim, const float *w, float eps, float *y);
void eng_rmsnorm256(const float *x, size_t dim, const float *w, float eps, float *y);
#endif

#endif /* TANDEM_ENG_CPU_OPS_H */
