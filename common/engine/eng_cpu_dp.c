/*
 * eng_cpu_dp.c - the cpu backend's bf16 dot-product matmul (AVX512_BF16
 * VDPBF16PS), the opt-in TANDEM_CPU_PRECISION=bf16 mode: activations
 * rounded to bf16 (round to nearest even), products summed in f32, as
 * llama.cpp and oneDNN do for bf16 weights. Twice the multiply-adds per
 * instruction of the exact mode's f32 FMAs and no widening of weights.
 *
 * Layout (filled once at load, eng_dp_fill): panels of 16 outputs; panel
 * p holds, for each pair of inputs kk in order, one 64-byte line whose
 * dword j is the bf16 pair (W[16p + j][2kk], W[16p + j][2kk + 1]) (even
 * input in the low half; the last pair and the last panel zero-padded).
 * x is rounded once per matmul into the same pairs (eng_dp_xconv). Lane j
 * of an accumulator is output 16p + j: one chain over kk in order from 0
 * whatever the block shape, batch or thread split, so a row gives the same
 * bits alone or in any batch.
 *
 * eng_dp_mm_fma runs the same products as f32 FMAs (odd input, then even,
 * DAZ/FTZ set), the same bits, for CPUs that retire VDPBF16PS at a
 * fraction of their FMA rate.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#include "eng_cpu_dp.h"
#include "eng_cpu_tiles.h"

size_t eng_dp_panels(size_t out) { return (out + DP_W - 1) / DP_W; }

size_t eng_dp_pairs(size_t in) { return (in + 1) / 2; }

void eng_dp_fill(const uint16_t *w, size_t in, size_t out, size_t p_lo, size_t p_hi, uint32_t *P) {
    const size_t np = eng_dp_pairs(in);
    for (size_t p = p_lo; p < p_hi; p++) {
        uint32_t *d = P + p * np * DP_W;
        for (size_t j = 0; j < DP_W; j++) {
            size_t o = p * DP_W + j;
            const uint16_t *src = o < out ? w + o * in : NULL;
            for (size_t kk = 0; kk < np; kk++) {
                uint32_t lo = src ? src[2 * kk] : 0;
                uint32_t hi = src && 2 * kk + 1 < in ? src[2 * kk + 1] : 0;
                d[kk * DP_W + j] = lo | hi << 16;
            }
        }
    }
}

/* bf16 of @f, rounded to nearest even (NaN kept quiet), as VCVTNE2PS2BF16. */
uint16_t eng_dp_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7FFFu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

#if defined(__x86_64__)
/* eng_dp_bf16 on 8 values at a time in integer arithmetic: the same bits,
 * denormals and NaN included (the conversion instructions flush denormal
 * inputs to zero). */
__attribute__((target("avx2"))) static void bf16_row_avx2(const float *x, size_t n, uint16_t *y) {
    const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7FFF),
                  abs = _mm256_set1_epi32(0x7FFFFFFF), inf = _mm256_set1_epi32(0x7F800000),
                  quiet = _mm256_set1_epi32(0x40);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i u = _mm256_loadu_si256((const __m256i *)(const void *)(x + i));
        __m256i r =
            _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, bias),
                                               _mm256_and_si256(_mm256_srli_epi32(u, 16), one)),
                              16);
        __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs), inf);
        r = _mm256_blendv_epi8(r, _mm256_or_si256(_mm256_srli_epi32(u, 16), quiet), nan);
        /* 8 dwords <= 0xFFFF to 8 words: pack within lanes, then join. */
        __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
        _mm_storeu_si128((__m128i *)(void *)(y + i), _mm256_castsi256_si128(p));
    }
    for (; i < n; i++) y[i] = eng_dp_bf16(x[i]);
}
#endif

void eng_bf16_round_row(const float *x, size_t n, uint16_t *y) {
#if defined(__x86_64__)
    static _Atomic int avx2 = -1; /* first calls may race: all store the same value */
    if (avx2 < 0) {
        __builtin_cpu_init();
        avx2 = __builtin_cpu_supports("avx2");
    }
    if (avx2) {
        bf16_row_avx2(x, n, y);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++) y[i] = eng_dp_bf16(x[i]);
}

void eng_dp_xconv_ref(const float *x, size_t r0, size_t r1, size_t in, uint32_t *xb) {
    const size_t np = eng_dp_pairs(in);
    for (size_t r = r0; r < r1; r++) {
        const float *xr = x + r * in;
        uint32_t *o = xb + r * np;
        for (size_t kk = 0; kk < np; kk++) {
            uint32_t lo = eng_dp_bf16(xr[2 * kk]);
            uint32_t hi = 2 * kk + 1 < in ? eng_dp_bf16(xr[2 * kk + 1]) : 0;
            o[kk] = lo | hi << 16;
        }
    }
}

#if defined(__x86_64__)
#define DP512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#ifndef DP_PF
#define DP_PF 8 /* pairs of a panel prefetched ahead at one row */
#endif

/* A block's accumulators (lane j of acc[i][q] = output 16 (p + q) + j of
 * row r + i) + bias into y; panels past @p_hi are not stored. */
DP512 __attribute__((always_inline)) static inline void
dp_store(__m512 acc[][8], size_t r, size_t p, size_t p_hi, const float *bias, size_t out, float *y,
         bool nt, const int R, const int NP) {
#pragma GCC unroll 8
    for (int q = 0; q < NP; q++) {
        if (p + (size_t)q >= p_hi) break;
        size_t o0 = (p + (size_t)q) * DP_W, n = out - o0 < DP_W ? out - o0 : DP_W;
        __mmask16 m = (__mmask16)(n >= 16 ? 0xFFFF : (1u << n) - 1);
        __m512 b = bias ? _mm512_maskz_loadu_ps(m, bias + o0) : _mm512_setzero_ps();
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
            float *yr = y + (r + (size_t)i) * out + o0;
            __m512 v = bias ? _mm512_add_ps(acc[i][q], b) : acc[i][q];
            if (nt && n == DP_W && !((uintptr_t)yr & 63))
                _mm512_stream_ps(yr, v);
            else
                _mm512_mask_storeu_ps(yr, m, v);
        }
    }
}

/* Rows [r, r + R) of xb against panels p .. p + NP - 1 (indexes past
 * @p_hi clamped to its last panel: computed, not stored). */
DP512 __attribute__((always_inline)) static inline void
dp_block(const uint32_t *xb, size_t np, const uint32_t *P, size_t r, size_t p, size_t p_hi,
         const float *bias, size_t out, float *y, bool nt, const int R, const int NP) {
    const uint32_t *pp[8];
#pragma GCC unroll 8
    for (int q = 0; q < NP; q++)
        pp[q] = P + (p + (size_t)q < p_hi ? p + (size_t)q : p_hi - 1) * np * DP_W;
    __m512 acc[8][8];
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 8
        for (int q = 0; q < NP; q++) acc[i][q] = _mm512_setzero_ps();
    const uint32_t *xr = xb + r * np;
    for (size_t kk = 0; kk < np; kk++) {
        __m512bh wv[8];
        /* Decode (one row or a batch): the weights stream from memory,
         * several panels at once; fetch ahead of the hardware prefetcher
         * (never faults; a prefill's tile finds them in cache, where
         * this costs little: 512-token prefill 1.01x with it). */
#pragma GCC unroll 8
        for (int q = 0; q < NP; q++) _mm_prefetch(pp[q] + (kk + DP_PF) * DP_W, _MM_HINT_T0);
#pragma GCC unroll 8
        for (int q = 0; q < NP; q++) wv[q] = (__m512bh)_mm512_load_si512(pp[q] + kk * DP_W);
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
            __m512bh xv = (__m512bh)_mm512_set1_epi32((int)xr[(size_t)i * np + kk]);
#pragma GCC unroll 8
            for (int q = 0; q < NP; q++) acc[i][q] = _mm512_dpbf16_ps(acc[i][q], xv, wv[q]);
        }
    }
    dp_store(acc, r, p, p_hi, bias, out, y, nt, R, NP);
}

#define DP_SHAPE(R, NP)                                                                           \
    DP512 static void dp_##R##x##NP(const void *xb, size_t np, const void *P, size_t r, size_t p, \
                                    size_t p_hi, const float *bias, size_t out, float *y,         \
                                    bool nt) {                                                    \
        dp_block(xb, np, P, r, p, p_hi, bias, out, y, nt, R, NP);                                 \
    }
DP_SHAPE(1, 8)
DP_SHAPE(1, 4)
DP_SHAPE(1, 2)
DP_SHAPE(1, 1)
DP_SHAPE(2, 8)
DP_SHAPE(3, 6)
DP_SHAPE(4, 6)
DP_SHAPE(5, 4)
DP_SHAPE(6, 4)
DP_SHAPE(4, 3)
DP_SHAPE(5, 3)
DP_SHAPE(6, 3)
DP_SHAPE(7, 3)
DP_SHAPE(8, 3)

/* A tile of up to 8 rows in one block (R x NP accumulators), bigger ones
 * in blocks of 4 to 8 rows x 3 panels. */
#define DP_BLK(R, NP) \
    { R, NP, dp_##R##x##NP }
static const eng_blk_shape_t k_dp_one[] = {DP_BLK(1, 8), DP_BLK(2, 8), DP_BLK(3, 6), DP_BLK(4, 6),
                                           DP_BLK(5, 4), DP_BLK(6, 4), DP_BLK(7, 3), DP_BLK(8, 3)};
static const eng_blk_shape_t k_dp_many[] = {DP_BLK(4, 3), DP_BLK(5, 3), DP_BLK(6, 3), DP_BLK(7, 3),
                                            DP_BLK(8, 3)};
static const eng_blk_shape_t k_dp_row[] = {DP_BLK(1, 8), DP_BLK(1, 4), DP_BLK(1, 2), DP_BLK(1, 1)};
static const eng_panel_plan_t k_dp_plan = {k_dp_one, k_dp_many, 8, 8, DP_TILE};

size_t eng_dp_width(size_t rows) { return eng_panel_width(&k_dp_plan, rows); }

/* The same products as f32 FMAs (eng_dp_mm_fma): rows [r, r + R) of xf
 * (x rounded to bf16, as f32, padded to 2 * np) against panels p .. p +
 * NP - 1. Per pair, the odd input's product is added first, then the
 * even one's, each rounded once (a bf16 product is exact in f32): the
 * steps of VDPBF16PS, with DAZ/FTZ set in MXCSR meanwhile. The weights are
 * widened by a mask (odd) and a shift (even) once per line for all R
 * rows. */
DP512 __attribute__((always_inline)) static inline void
dpf_block(const float *xf, size_t np, const uint32_t *P, size_t r, size_t p, size_t p_hi,
          const float *bias, size_t out, float *y, bool nt, const int R, const int NP) {
    const __m512i hi = _mm512_set1_epi32((int)0xFFFF0000u);
    const uint32_t *pp[8];
#pragma GCC unroll 8
    for (int q = 0; q < NP; q++)
        pp[q] = P + (p + (size_t)q < p_hi ? p + (size_t)q : p_hi - 1) * np * DP_W;
    __m512 acc[8][8];
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 8
        for (int q = 0; q < NP; q++) acc[i][q] = _mm512_setzero_ps();
    const float *xr = xf + r * 2 * np;
    /* DAZ and FTZ for the products only: the bias is added as in dp_block. */
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);
    for (size_t kk = 0; kk < np; kk++) {
        __m512 wo[8], we[8];
#pragma GCC unroll 8
        for (int q = 0; q < NP; q++) {
            _mm_prefetch(pp[q] + (kk + DP_PF) * DP_W, _MM_HINT_T0);
            __m512i raw = _mm512_load_si512(pp[q] + kk * DP_W);
            __asm__("" : "+v"(raw)); /* one load, not one per use */
            wo[q] = _mm512_castsi512_ps(_mm512_and_si512(raw, hi));
            we[q] = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
        }
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) {
            const float *xk = xr + (size_t)i * 2 * np + 2 * kk;
            __m512 xo = _mm512_set1_ps(xk[1]), xe = _mm512_set1_ps(xk[0]);
#pragma GCC unroll 8
            for (int q = 0; q < NP; q++)
                acc[i][q] = _mm512_fmadd_ps(xe, we[q], _mm512_fmadd_ps(xo, wo[q], acc[i][q]));
        }
    }
    _mm_setcsr(csr);
    dp_store(acc, r, p, p_hi, bias, out, y, nt, R, NP);
}

#define DPF_SHAPE(R, NP)                                                                           \
    DP512 static void dpf_##R##x##NP(const void *xf, size_t np, const void *P, size_t r, size_t p, \
                                     size_t p_hi, const float *bias, size_t out, float *y,         \
                                     bool nt) {                                                    \
        dpf_block(xf, np, P, r, p, p_hi, bias, out, y, nt, R, NP);                                 \
    }
DPF_SHAPE(1, 8)
DPF_SHAPE(2, 6)
DPF_SHAPE(3, 4)
DPF_SHAPE(4, 4)
DPF_SHAPE(5, 4)
DPF_SHAPE(4, 3)
DPF_SHAPE(5, 3)
DPF_SHAPE(6, 3)
DPF_SHAPE(7, 3)
DPF_SHAPE(8, 3)

/* Up to 31 registers: R x NP accumulators, 2 x NP widened lines, the
 * mask; the x broadcasts come from memory. */
#define DPF_BLK(R, NP) \
    { R, NP, dpf_##R##x##NP }
static const eng_blk_shape_t k_dpf_one[] = {DPF_BLK(1, 8), DPF_BLK(2, 6), DPF_BLK(3, 4),
                                            DPF_BLK(4, 4), DPF_BLK(5, 4), DPF_BLK(6, 3),
                                            DPF_BLK(7, 3), DPF_BLK(8, 3)};
static const eng_blk_shape_t k_dpf_many[] = {DPF_BLK(4, 3), DPF_BLK(5, 3), DPF_BLK(6, 3),
                                             DPF_BLK(7, 3), DPF_BLK(8, 3)};
static const eng_panel_plan_t k_dpf_plan = {k_dpf_one, k_dpf_many, 8, 8, DP_TILE};

size_t eng_dp_fma_width(size_t rows) { return eng_panel_width(&k_dpf_plan, rows); }

/* x rounded to bf16 as eng_dp_xconv rounds it, widened back to f32, each
 * row padded with a zero to 2 * eng_dp_pairs(in) floats. */
DP512 static void xconvf512(const float *x, size_t r0, size_t r1, size_t in, float *xf) {
    const size_t n2 = 2 * eng_dp_pairs(in);
    for (size_t r = r0; r < r1; r++) {
        const float *xr = x + r * in;
        float *o = xf + r * n2;
        for (size_t c = 0; c < n2; c += 16) {
            size_t left = in > c ? in - c : 0, sl = n2 - c < 16 ? n2 - c : 16;
            __mmask16 m = (__mmask16)(left >= 16 ? 0xFFFF : (1u << left) - 1);
            __m256bh b = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, xr + c));
            __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)b), 16);
            _mm512_mask_storeu_ps(o + c, (__mmask16)((1u << sl) - 1), _mm512_castsi512_ps(w));
        }
    }
}

void eng_dp_xconv_f32(const float *x, size_t r0, size_t r1, size_t in, float *xf) {
    xconvf512(x, r0, r1, in, xf);
}

void eng_dp_mm_fma(const float *xf, size_t rows, size_t in, const uint32_t *P, size_t p_lo,
                   size_t p_hi, const float *bias, size_t out, float *y) {
    eng_panel_tiles(&k_dpf_plan, xf, rows, eng_dp_pairs(in), P, p_lo, p_hi, bias, out, y);
    _mm_sfence(); /* the non-temporal stores, before the job ends */
}

/* Products per second of VDPBF16PS and of VFMADD231PS in register-only
 * loops (8 chains each), best of 3 short runs. */
DP512 __attribute__((noinline)) static double rate_dp(int iters) {
    __m512 a[8];
    for (int i = 0; i < 8; i++) a[i] = _mm512_set1_ps((float)i);
    __m512bh b = (__m512bh)_mm512_set1_epi32(0x3F803F80);
    uint64_t t0 = __rdtsc();
    for (int n = 0; n < iters; n++) {
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) a[i] = _mm512_dpbf16_ps(a[i], b, b);
        __asm__ volatile(""
                         : "+v"(a[0]), "+v"(a[1]), "+v"(a[2]), "+v"(a[3]), "+v"(a[4]), "+v"(a[5]),
                           "+v"(a[6]), "+v"(a[7]));
    }
    uint64_t t = __rdtsc() - t0;
    return (double)iters * 8 * 32 / (double)(t ? t : 1);
}

DP512 __attribute__((noinline)) static double rate_fma(int iters) {
    __m512 a[8];
    for (int i = 0; i < 8; i++) a[i] = _mm512_set1_ps((float)i);
    __m512 b = _mm512_set1_ps(1.0f);
    uint64_t t0 = __rdtsc();
    for (int n = 0; n < iters; n++) {
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) a[i] = _mm512_fmadd_ps(a[i], b, b);
        __asm__ volatile(""
                         : "+v"(a[0]), "+v"(a[1]), "+v"(a[2]), "+v"(a[3]), "+v"(a[4]), "+v"(a[5]),
                           "+v"(a[6]), "+v"(a[7]));
    }
    uint64_t t = __rdtsc() - t0;
    return (double)iters * 8 * 16 / (double)(t ? t : 1);
}

double eng_dp_fma_speedup(void) {
    double dp = 0, fma = 0;
    for (int i = 0; i < 3; i++) {
        double d = rate_dp(20000), f = rate_fma(20000);
        if (d > dp) dp = d;
        if (f > fma) fma = f;
    }
    return dp > 0 ? fma / dp : 0;
}

/* The pairs are x's bf16 values in order, low half first: 32 at a time. */
DP512 static void xconv512(const float *x, size_t r0, size_t r1, size_t in, uint32_t *xb) {
    const size_t n2 = 2 * eng_dp_pairs(in);
    for (size_t r = r0; r < r1; r++) {
        const float *xr = x + r * in;
        uint16_t *o = (uint16_t *)(xb + r * (n2 / 2));
        for (size_t c = 0; c < n2; c += 32) {
            size_t left = in - c < 32 ? in - c : 32, sl = n2 - c < 32 ? n2 - c : 32;
            __mmask16 m0 = (__mmask16)(left >= 16 ? 0xFFFF : (1u << left) - 1);
            __mmask16 m1 = (__mmask16)(left >= 32  ? 0xFFFF
                                       : left > 16 ? (1u << (left - 16)) - 1
                                                   : 0);
            __m512 lo = _mm512_maskz_loadu_ps(m0, xr + c),
                   hi = _mm512_maskz_loadu_ps(m1, xr + c + 16);
            __m512i v = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
            _mm512_mask_storeu_epi16(o + c, (__mmask32)(sl >= 32 ? ~0u : (1u << sl) - 1), v);
        }
    }
}

void eng_dp_xconv(const float *x, size_t r0, size_t r1, size_t in, uint32_t *xb) {
    if (eng_dp_available())
        xconv512(x, r0, r1, in, xb);
    else
        eng_dp_xconv_ref(x, r0, r1, in, xb);
}

void eng_dp_mm(const uint32_t *xb, size_t rows, size_t in, const uint32_t *P, size_t p_lo,
               size_t p_hi, const float *bias, size_t out, float *y) {
    if (rows == 1) /* decode: blocks of 8 panels, the tail in 4, 2 and 1 */
        eng_panel_row(k_dp_row, 4, xb, eng_dp_pairs(in), P, p_lo, p_hi, bias, out, y);
    else
        eng_panel_tiles(&k_dp_plan, xb, rows, eng_dp_pairs(in), P, p_lo, p_hi, bias, out, y);
    _mm_sfence(); /* the non-temporal stores, before the job ends */
}

bool eng_dp_available(void) {
    static _Atomic int have = -1; /* first calls may race: all store the same value */
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bf16");
    }
    return have;
}
#else
void eng_dp_mm(const uint32_t *xb, size_t rows, size_t in, const uint32_t *P, size_t p_lo,
               size_t p_hi, const float *bias, size_t out, float *y) {
    (void)xb, (void)rows, (void)in, (void)P, (void)p_lo, (void)p_hi, (void)bias, (void)out, (void)y;
}

bool eng_dp_available(void) { return false; }

size_t eng_dp_width(size_t rows) {
    (void)rows;
    return 1;
}

void eng_dp_xconv(const float *x, size_t r0, size_t r1, size_t in, uint32_t *xb) {
    eng_dp_xconv_ref(x, r0, r1, in, xb);
}

void eng_dp_mm_fma(const float *xf, size_t rows, size_t in, const uint32_t *P, size_t p_lo,
                   size_t p_hi, const float *bias, size_t out, float *y) {
    (void)xf, (void)rows, (void)in, (void)P, (void)p_lo, (void)p_hi, (void)bias, (void)out, (void)y;
}

void eng_dp_xconv_f32(const float *x, size_t r0, size_t r1, size_t in, float *xf) {
    (void)x, (void)r0, (void)r1, (void)in, (void)xf;
}

size_t eng_dp_fma_width(size_t rows) {
    (void)rows;
    return 1;
}

double eng_dp_fma_speedup(void) { return 0; }
#endif

/* The kernel's arithmetic in plain C, for tests: y[r][o] for one (row,
 * output), products of bf16 pairs exact (as a fused multiply-add: not
 * rounded even where they fall below f32's normals), each added in turn
 * (odd input first, as the instruction's reference pseudocode), denormal
 * inputs and results flushed to zero. */
float eng_dp_ref_dot(const uint32_t *xr, const uint32_t *P, size_t in, size_t o) {
    const size_t np = eng_dp_pairs(in);
    const uint32_t *pan = P + o / DP_W * np * DP_W;
    float acc = 0.0f;
    for (size_t kk = 0; kk < np; kk++) {
        uint32_t xw = xr[kk], ww = pan[kk * DP_W + o % DP_W];
        for (int h = 1; h >= 0; h--) {
            uint32_t xa = (xw >> (16 * h)) << 16, wa = (ww >> (16 * h)) << 16;
            if (!(xa & 0x7F800000u)) xa &= 0x80000000u; /* DAZ */
            if (!(wa & 0x7F800000u)) wa &= 0x80000000u;
            float xf, wf;
            memcpy(&xf, &xa, sizeof xf);
            memcpy(&wf, &wa, sizeof wf);
            acc = fmaf(xf, wf, acc); /* the product unrounded, even below 2^-126 */
            uint32_t u;
            memcpy(&u, &acc, sizeof u);
            if (!(u & 0x7F800000u)) acc = 0.0f * acc; /* FTZ, sign kept */
        }
    }
    return acc;
}
