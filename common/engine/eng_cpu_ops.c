/*
 * eng_cpu_ops.c - the cpu backend's attention heads (QK scores, softmax,
 * PV sums), SwiGLU and RMSNorm in AVX-512 and AVX2; eng_cpu.c dispatches
 * to them and spreads them over its threads.
 */
#include <math.h>
#include <string.h>

#include "eng_cpu_ops.h"

/* ---- attention heads --------------------------------------------------
 * One (token, head) at a time, the same steps as eng_attn_head_ref with
 * SIMD dot products and accumulation (order differs only inside a dot). */
#define ATTN_QB ENG_ATTN_QB
#define ATTN_SB 4  /* queries per register block */
#define ATTN_KC 64 /* keys per chunk (K/V rows of a head dim of 128: 32 KiB) */
#ifndef ATTN_PF
#define ATTN_PF 16 /* K/V rows prefetched ahead (into L2: more lines in flight) */
#endif
#ifndef ATTN_HINT
#define ATTN_HINT _MM_HINT_T1
#endif

#if defined(__x86_64__)
AVX512 static void softmax512(float *sc, uint32_t n) {
    __m512 mv = _mm512_set1_ps(-INFINITY);
    uint32_t p = 0;
    for (; p + 16 <= n; p += 16) mv = _mm512_max_ps(mv, _mm512_loadu_ps(sc + p));
    const __mmask16 tm = (__mmask16)((1u << (n - p)) - 1);
    mv = _mm512_mask_max_ps(mv, tm, mv, _mm512_maskz_loadu_ps(tm, sc + p));
    const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(mv));
    __m512 sv = _mm512_setzero_ps();
    for (p = 0; p + 16 <= n; p += 16) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(sc + p), mx));
        _mm512_storeu_ps(sc + p, e);
        sv = _mm512_add_ps(sv, e);
    }
    if (p < n) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(tm, sc + p), mx));
        _mm512_mask_storeu_ps(sc + p, tm, e);
        sv = _mm512_mask_add_ps(sv, tm, sv, e);
    }
    const __m512 sum = _mm512_set1_ps(_mm512_reduce_add_ps(sv));
    for (p = 0; p + 16 <= n; p += 16)
        _mm512_storeu_ps(sc + p, _mm512_div_ps(_mm512_loadu_ps(sc + p), sum));
    if (p < n)
        _mm512_mask_storeu_ps(sc + p, tm, _mm512_div_ps(_mm512_maskz_loadu_ps(tm, sc + p), sum));
}

AVX2 static inline __m256 exp256(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 y;
    EXP_POLY(__m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_mul_ps, _mm256_add_ps, x, n, y);
    __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

AVX2 static void softmax256(float *sc, uint32_t n) {
    float mx = -INFINITY, tail[8];
    uint32_t p = 0;
    for (; p < n; p++) mx = sc[p] > mx ? sc[p] : mx;
    __m256 sv = _mm256_setzero_ps(), m8 = _mm256_set1_ps(mx);
    for (p = 0; p + 8 <= n; p += 8) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(sc + p), m8));
        _mm256_storeu_ps(sc + p, e);
        sv = _mm256_add_ps(sv, e);
    }
    if (p < n) { /* the tail padded with -inf: exp gives 0 */
        for (uint32_t i = 0; i < 8; i++) tail[i] = p + i < n ? sc[p + i] : -INFINITY;
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(tail), m8));
        e = _mm256_and_ps(
            e, _mm256_cmp_ps(_mm256_loadu_ps(tail), _mm256_set1_ps(-INFINITY), _CMP_NEQ_OQ));
        _mm256_storeu_ps(tail, e);
        for (uint32_t i = 0; p + i < n; i++) sc[p + i] = tail[i];
        sv = _mm256_add_ps(sv, e);
    }
    const float sum = hsum(sv);
    for (p = 0; p < n; p++) sc[p] /= sum;
}

/* Scores of QN queries qv[0..QN) against keys [k0, k1) in groups of 4
 * (k1 - k0 a multiple of 4) into sb rows 0..nr, or one key at a time when
 * ONE: QN x 4 independent FMA chains, each summed in one fixed order. */
#define ATTN_QK(QN, ONE, qv, sb, nr, k0, k1, vec, W, load, KT, KF, kload, fmadd, zero, reduce)  \
    do {                                                                                        \
        for (p = (k0); p + (ONE ? 1 : 4) <= (k1); p += (ONE ? 1 : 4)) {                         \
            const uint32_t nk_ = ONE ? 1 : 4;                                                   \
            const KT *kr[4], *kf[4]; /* rows ATTN_PF ahead (clamped): paged rows 4 KiB apart */ \
            _Pragma("GCC unroll 4") for (uint32_t j = 0; j < nk_; j++) {                        \
                kr[j] = K[p + j].KF + kvo;                                                      \
                kf[j] = K[p + ATTN_PF + j < nmax ? p + ATTN_PF + j : nmax - 1].KF + kvo;        \
            }                                                                                   \
            vec acc[QN][4];                                                                     \
            _Pragma("GCC unroll 4") for (int i = 0; i < (QN); i++)                              \
                _Pragma("GCC unroll 4") for (uint32_t j = 0; j < nk_; j++) acc[i][j] = zero();  \
            for (uint32_t c = 0; c < nv; c++) {                                                 \
                vec kc[4];                                                                      \
                _Pragma("GCC unroll 4") for (uint32_t j = 0; j < nk_; j++) {                    \
                    kc[j] = kload(kr[j] + c * (W));                                             \
                    _mm_prefetch((const char *)(kf[j] + c * (W)), ATTN_HINT);                   \
                }                                                                               \
                _Pragma("GCC unroll 4") for (int i = 0; i < (QN); i++) {                        \
                    vec qc = load((qv)[i] + c * (W));                                           \
                    _Pragma("GCC unroll 4") for (uint32_t j = 0; j < nk_; j++) acc[i][j] =      \
                        fmadd(qc, kc[j], acc[i][j]);                                            \
                }                                                                               \
            }                                                                                   \
            for (uint32_t i = 0; i < (nr); i++)                                                 \
                for (uint32_t j = 0; j < nk_; j++)                                              \
                    (sb)[i * stride + p + j] = reduce(acc[i][j]) * a->scale;                    \
        }                                                                                       \
    } while (0)

/* Outputs of QN queries, columns [c0, c0 + G) at a time, over keys [k0,
 * k1): sum over p in order of weight x V row, started from zero at key 0
 * and from the stored partial sums after (stores and loads are exact, so
 * a sum has the same bits however the keys are chunked); weights past a
 * query's context are 0, which leaves its sums unchanged. Rows nr.. are
 * padding: not loaded or stored. */
#define ATTN_PV(QN, G, sb, ovb, nr, k0, k1, vec, W, load, KT, KF, kload, fmadd, set1, zero, store) \
    do {                                                                                           \
        vec o_[QN][G];                                                                             \
        _Pragma("GCC unroll 4") for (int i = 0; i < (QN); i++)                                     \
            _Pragma("GCC unroll 8") for (int c = 0; c < (G); c++) o_[i][c] =                       \
                (k0) && (uint32_t)i < (nr) ? load((ovb)[i] + (size_t)(c0 + (uint32_t)c) * (W))     \
                                           : zero();                                               \
        for (p = (k0); p < (k1); p++) {                                                            \
            const KT *vv = V[p].KF + kvo + (size_t)c0 * (W);                                       \
            const KT *vf = V[p + ATTN_PF < nmax ? p + ATTN_PF : nmax - 1].KF + kvo + c0 * (W);     \
            vec vc[G];                                                                             \
            _Pragma("GCC unroll 8") for (int c = 0; c < (G); c++) {                                \
                vc[c] = kload(vv + c * (W));                                                       \
                _mm_prefetch((const char *)(vf + c * (W)), ATTN_HINT);                             \
            }                                                                                      \
            _Pragma("GCC unroll 4") for (int i = 0; i < (QN); i++) {                               \
                vec w_ = set1((sb)[(size_t)i * stride + p]);                                       \
                _Pragma("GCC unroll 8") for (int c = 0; c < (G); c++) o_[i][c] =                   \
                    fmadd(w_, vc[c], o_[i][c]);                                                    \
            }                                                                                      \
        }                                                                                          \
        for (uint32_t i = 0; i < (nr); i++)                                                        \
            _Pragma("GCC unroll 8") for (int c = 0; c < (G); c++)                                  \
                store((ovb)[i] + (size_t)(c0 + (uint32_t)c) * (W), o_[i][c]);                      \
    } while (0)

/* Up to ATTN_QB consecutive tokens t0.. of one sequence (the same K/V
 * rows) and head h. Queries go in register blocks of ATTN_SB; keys in
 * chunks of ATTN_KC that every block uses while they are in L1, so a K/V
 * row comes from memory or L3 once per ATTN_QB queries. Every score,
 * softmax and output element sums in the same order whether a token is
 * alone (nq 1) or in a block: the result of a (token, head) does not
 * depend on its neighbours. @scb holds ATTN_QB * @stride floats. */
#define ATTN_HEAD(isa, KN, KT, KF, attr, vec, W, load, kload, fmadd, set1, zero, store, reduce,    \
                  softmax)                                                                         \
    attr static void attn_rows_##isa##KN(                                                          \
        const eng_attn_t *a, const eng_kv_row_t *K, const eng_kv_row_t *V, size_t kvo,             \
        uint32_t nq, const float *const *qv, float *const *ov, const uint32_t *rctx,               \
        uint32_t nmax, float *scb, size_t stride) {                                                \
        const uint32_t nv = a->head_dim / (W), nb = (nq + ATTN_SB - 1) / ATTN_SB * ATTN_SB;        \
        uint32_t p;                                                                                \
        const uint32_t n4 = nmax / 4 * 4;                                                          \
        if (nq == 1) {                                                                             \
            ATTN_QK(1, 0, qv, scb, 1, 0, n4, vec, W, load, KT, KF, kload, fmadd, zero, reduce);    \
            ATTN_QK(1, 1, qv, scb, 1, n4, nmax, vec, W, load, KT, KF, kload, fmadd, zero, reduce); \
        } else {                                                                                   \
            for (uint32_t k0 = 0; k0 < n4; k0 += ATTN_KC) {                                        \
                uint32_t k1 = n4 - k0 < ATTN_KC ? n4 : k0 + ATTN_KC;                               \
                for (uint32_t b = 0; b < nb; b += ATTN_SB)                                         \
                    ATTN_QK(ATTN_SB, 0, qv + b, scb + b * stride, nq - b < 4 ? nq - b : 4, k0, k1, \
                            vec, W, load, KT, KF, kload, fmadd, zero, reduce);                     \
            }                                                                                      \
            for (uint32_t b = 0; b < nb; b += ATTN_SB)                                             \
                ATTN_QK(ATTN_SB, 1, qv + b, scb + b * stride, nq - b < 4 ? nq - b : 4, n4, nmax,   \
                        vec, W, load, KT, KF, kload, fmadd, zero, reduce);                         \
        }                                                                                          \
        for (uint32_t i = 0; i < nq; i++) {                                                        \
            const uint32_t n = rctx[i];                                                            \
            float *sc = scb + i * stride;                                                          \
            softmax(sc, n);                                                                        \
            for (p = n; p < nmax; p++) sc[p] = 0.0f;                                               \
        }                                                                                          \
        for (uint32_t i = nq; i < nb; i++) /* rows of the repeated token */                        \
            memset(scb + i * stride, 0, nmax * sizeof *scb);                                       \
        uint32_t c0 = 0;                                                                           \
        if (nq == 1) { /* 8 or 4 accumulators with fixed bounds stay in registers */               \
            for (; c0 + 8 <= nv; c0 += 8)                                                          \
                ATTN_PV(1, 8, scb, ov, 1, 0, nmax, vec, W, load, KT, KF, kload, fmadd, set1, zero, \
                        store);                                                                    \
            for (; c0 + 4 <= nv; c0 += 4)                                                          \
                ATTN_PV(1, 4, scb, ov, 1, 0, nmax, vec, W, load, KT, KF, kload, fmadd, set1, zero, \
                        store);                                                                    \
            for (; c0 < nv; c0++)                                                                  \
                ATTN_PV(1, 1, scb, ov, 1, 0, nmax, vec, W, load, KT, KF, kload, fmadd, set1, zero, \
                        store);                                                                    \
            return;                                                                                \
        }                                                                                          \
        for (uint32_t k0 = 0; k0 < nmax; k0 += ATTN_KC) {                                          \
            uint32_t k1 = nmax - k0 < ATTN_KC ? nmax : k0 + ATTN_KC;                               \
            for (c0 = 0; c0 + 4 <= nv; c0 += 4)                                                    \
                for (uint32_t b = 0; b < nb; b += ATTN_SB)                                         \
                    ATTN_PV(ATTN_SB, 4, scb + b * stride, ov + b, nq - b < 4 ? nq - b : 4, k0, k1, \
                            vec, W, load, KT, KF, kload, fmadd, set1, zero, store);                \
            for (; c0 < nv; c0++)                                                                  \
                for (uint32_t b = 0; b < nb; b += ATTN_SB)                                         \
                    ATTN_PV(ATTN_SB, 1, scb + b * stride, ov + b, nq - b < 4 ? nq - b : 4, k0, k1, \
                            vec, W, load, KT, KF, kload, fmadd, set1, zero, store);                \
        }                                                                                          \
    }                                                                                              \
    attr void eng_head_##isa##KN(const eng_attn_t *a, size_t t0, uint32_t nq, uint32_t h,          \
                                 float *scb, size_t stride) {                                      \
        const uint32_t hd = a->head_dim;                                                           \
        const size_t qd = (size_t)a->n_heads * hd;                                                 \
        const float *qv[ATTN_QB];                                                                  \
        float *ov[ATTN_QB];                                                                        \
        uint32_t rctx[ATTN_QB], nmax = 0;                                                          \
        for (uint32_t i = 0; i < ATTN_QB; i++) { /* padding rows repeat the last token */          \
            size_t ti = t0 + (i < nq ? i : nq - 1);                                                \
            qv[i] = a->q + ti * qd + (size_t)h * hd;                                               \
            ov[i] = a->out + ti * qd + (size_t)h * hd;                                             \
            rctx[i] = a->ctx[ti];                                                                  \
            nmax = rctx[i] > nmax ? rctx[i] : nmax;                                                \
        }                                                                                          \
        attn_rows_##isa##KN(a, a->k[t0], a->v[t0], (size_t)(h / (a->n_heads / a->kv_heads)) * hd,  \
                            nq, qv, ov, rctx, nmax, scb, stride);                                  \
    }                                                                                              \
    attr void eng_heads_##isa##KN(const eng_attn_t *a, size_t t, uint32_t h0, uint32_t ng,         \
                                  float *scb, size_t stride) {                                     \
        const uint32_t hd = a->head_dim;                                                           \
        const size_t qd = (size_t)a->n_heads * hd;                                                 \
        const float *qv[ATTN_QB];                                                                  \
        float *ov[ATTN_QB];                                                                        \
        uint32_t rctx[ATTN_QB];                                                                    \
        for (uint32_t i = 0; i < ATTN_QB; i++) { /* padding rows repeat the last head */           \
            uint32_t hi = h0 + (i < ng ? i : ng - 1);                                              \
            qv[i] = a->q + t * qd + (size_t)hi * hd;                                               \
            ov[i] = a->out + t * qd + (size_t)hi * hd;                                             \
            rctx[i] = a->ctx[t];                                                                   \
        }                                                                                          \
        attn_rows_##isa##KN(a, a->k[t], a->v[t], (size_t)(h0 / (a->n_heads / a->kv_heads)) * hd,   \
                            ng, qv, ov, rctx, a->ctx[t], scb, stride);                             \
    }

/* bf16 K/V values widened exactly: the same floats the ref backend sees. */
AVX512 static inline __m512 ld_bf16_512(const uint16_t *p) {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
AVX2 static inline __m256 ld_bf16_256(const uint16_t *p) {
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

ATTN_HEAD(avx512, , float, f, AVX512, __m512, 16, _mm512_loadu_ps, _mm512_loadu_ps, _mm512_fmadd_ps,
          _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps, _mm512_reduce_add_ps, softmax512)
ATTN_HEAD(avx2, , float, f, AVX2, __m256, 8, _mm256_loadu_ps, _mm256_loadu_ps, _mm256_fmadd_ps,
          _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps, hsum, softmax256)
ATTN_HEAD(avx512, _bf16, uint16_t, h, AVX512, __m512, 16, _mm512_loadu_ps, ld_bf16_512,
          _mm512_fmadd_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
          _mm512_reduce_add_ps, softmax512)
ATTN_HEAD(avx2, _bf16, uint16_t, h, AVX2, __m256, 8, _mm256_loadu_ps, ld_bf16_256, _mm256_fmadd_ps,
          _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps, hsum, softmax256)

/* ---- SwiGLU and RMSNorm ------------------------------------------------
 * silu(g) = g * sigmoid(g), the sigmoid from e = exp(-|g|) (the exp above
 * takes x <= 0): 1 / (1 + e) for g >= 0, e / (1 + e) below. Each element
 * on its own: the same value in any batch. */
AVX512 void eng_swiglu512(float *g, const float *u, size_t n) {
    const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 x = _mm512_maskz_loadu_ps(m, g + i);
        __m512 e = exp512(_mm512_sub_ps(zero, _mm512_abs_ps(x)));
        __m512 num = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, zero, _CMP_LT_OQ), one, e);
        __m512 sg = _mm512_div_ps(num, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(g + i, m,
                              _mm512_mul_ps(_mm512_mul_ps(x, sg), _mm512_maskz_loadu_ps(m, u + i)));
    }
}

AVX2 void eng_swiglu256(float *g, const float *u, size_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i);
        __m256 e = exp256(_mm256_or_ps(x, sign)); /* -|x| */
        __m256 num = _mm256_blendv_ps(one, e, _mm256_cmp_ps(x, zero, _CMP_LT_OQ));
        __m256 sg = _mm256_div_ps(num, _mm256_add_ps(one, e));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_mul_ps(x, sg), _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* One row: y = x / rms(x) * w (y may equal x). */
AVX512 void eng_rmsnorm512(const float *x, size_t dim, const float *w, float eps, float *y) {
    __m512 ss = _mm512_setzero_ps();
    for (size_t i = 0; i < dim; i += 16) {
        __mmask16 m = dim - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (dim - i)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        ss = _mm512_fmadd_ps(v, v, ss);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(ss) / (float)dim + eps));
    for (size_t i = 0; i < dim; i += 16) {
        __mmask16 m = dim - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (dim - i)) - 1);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv);
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, w + i), v));
    }
}

AVX2 void eng_rmsnorm256(const float *x, size_t dim, const float *w, float eps, float *y) {
    __m256 ss = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= dim; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        ss = _mm256_fmadd_ps(v, v, ss);
    }
    float s = hsum(ss);
    for (size_t j = i; j < dim; j++) s += x[j] * x[j];
    const float inv = 1.0f / sqrtf(s / (float)dim + eps);
    const __m256 iv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= dim; i += 8)
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(w + i),
                                              _mm256_mul_ps(_mm256_loadu_ps(x + i), iv)));
    for (; i < dim; i++) y[i] = w[i] * (x[i] * inv);
}
#endif
