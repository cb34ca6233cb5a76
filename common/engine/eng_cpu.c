/*
 * eng_cpu.c - the fast CPU backend: blocked AVX-512 or AVX2/FMA/F16C matmul
 * kernels chosen at run time (scalar fallback), split over a persistent
 * thread pool by output rows (bf16 weights repacked into panels handed out
 * in chunks). Same interface and layouts as eng_ref.c; results differ from
 * it only by summation order, except in the opt-in TANDEM_CPU_PRECISION=bf16
 * mode (eng_cpu_dp.c), which rounds matmul inputs to bf16.
 */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eng_backend.h"
#include "eng_cpu_amx.h"
#include "eng_cpu_dp.h"
#include "eng_cpu_pk2.h"
#include "eng_cpu_ops.h"
#include "eng_cpu_tiles.h"

typedef float (*dot_fn)(const float *x, const void *w, size_t n);
/* y[r][o] for r < rows, o_lo <= o < o_hi (see eng_backend_i.matmul). */
typedef void (*mm_fn)(const float *x, size_t rows, size_t in, const void *w, size_t o_lo,
                      size_t o_hi, const float *bias, size_t out, float *y);

static float dot_f32_scalar(const float *x, const void *w, size_t n) {
    const float *v = w;
    float a[4] = {0};
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++) a[k] += x[i + k] * v[i + k];
    float s = (a[0] + a[1]) + (a[2] + a[3]);
    for (; i < n; i++) s += x[i] * v[i];
    return s;
}

static float dot_16_scalar(const float *x, const void *w, size_t n, mdl_dtype_t t) {
    float buf[256], s = 0.0f;
    const uint16_t *v = w;
    for (size_t i = 0; i < n; i += 256) {
        size_t m = n - i < 256 ? n - i : 256;
        eng_to_f32(v + i, t, m, buf);
        s += dot_f32_scalar(x + i, buf, m);
    }
    return s;
}

static float dot_bf16_scalar(const float *x, const void *w, size_t n) {
    return dot_16_scalar(x, w, n, MDL_BF16);
}

static float dot_f16_scalar(const float *x, const void *w, size_t n) {
    return dot_16_scalar(x, w, n, MDL_F16);
}

#if defined(__x86_64__)
/* ---- blocked matmul kernels ------------------------------------------
 * A block of R input rows x 4 output rows: each weight chunk is loaded and
 * widened once for R rows, 4 weight rows stream at once. Every (row,
 * output) pair is one accumulator over the same chunks in the same order,
 * whatever the block shape or batch: results are bit-identical for a row
 * alone or inside any batch (batch invariance), as with the ref backend.
 * Output indexes past the slice are clamped to its last row (computed
 * twice, stored once more with the same value). */

/* Pointers to weight rows o .. o+n-1 (each @in elements of @es bytes),
 * indexes past @o_hi clamped to its last row. */
static inline void block_rows(const void *w, size_t in, size_t es, size_t o, size_t o_hi, int n,
                              const char **wr, size_t *oo) {
    for (int k = 0; k < n; k++) {
        oo[k] = o + (size_t)k < o_hi ? o + (size_t)k : o_hi - 1;
        wr[k] = (const char *)w + oo[k] * in * es;
    }
}

AVX512 static inline __m512 w16(const void *w, size_t i, mdl_dtype_t t, __mmask16 m) {
    if (t == MDL_F32) return _mm512_maskz_loadu_ps(m, (const float *)w + i);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w + i);
    if (t == MDL_BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

#define MM_R512 4  /* input rows per block */
#define MM_TILE 64 /* input rows per tile: a tile of x stays in L2 while the weights stream */

/* One chunk (16 inputs, mask @m) of a 4 x 4 block: x rows x0..x3 against
 * weight rows W[0..3] (dtype T) into the 16 named accumulators aRK.
 * Written out by hand: with an accumulator array and unroll pragmas GCC
 * kept the accumulators on the stack (stores in the inner loop), which
 * cost about half of the kernel's speed. */
#define MM4_ROW(R, XR)                                         \
    do {                                                       \
        __m512 xv = _mm512_maskz_loadu_ps(m_, (XR) + c_ * 16); \
        a##R##0 = _mm512_fmadd_ps(xv, w0, a##R##0);            \
        a##R##1 = _mm512_fmadd_ps(xv, w1, a##R##1);            \
        a##R##2 = _mm512_fmadd_ps(xv, w2, a##R##2);            \
        a##R##3 = _mm512_fmadd_ps(xv, w3, a##R##3);            \
    } while (0)
#define MM4_STEP(c, m, W, T)                                                   \
    do {                                                                       \
        const size_t c_ = (c);                                                 \
        const __mmask16 m_ = (m);                                              \
        __m512 w0 = w16(W[0], c_ * 16, T, m_), w1 = w16(W[1], c_ * 16, T, m_); \
        __m512 w2 = w16(W[2], c_ * 16, T, m_), w3 = w16(W[3], c_ * 16, T, m_); \
        MM4_ROW(0, x0);                                                        \
        MM4_ROW(1, x1);                                                        \
        MM4_ROW(2, x2);                                                        \
        MM4_ROW(3, x3);                                                        \
    } while (0)
#define MM4_STORE(R)                                                             \
    do {                                                                         \
        float *yr = y + (r + R) * out;                                           \
        yr[oo[0]] = _mm512_reduce_add_ps(a##R##0) + (bias ? bias[oo[0]] : 0.0f); \
        yr[oo[1]] = _mm512_reduce_add_ps(a##R##1) + (bias ? bias[oo[1]] : 0.0f); \
        yr[oo[2]] = _mm512_reduce_add_ps(a##R##2) + (bias ? bias[oo[2]] : 0.0f); \
        yr[oo[3]] = _mm512_reduce_add_ps(a##R##3) + (bias ? bias[oo[3]] : 0.0f); \
    } while (0)

/* A 4-row block of x (from row r) against 4 weight rows W of dtype T. */
#define MM4_BLOCK(W, T)                                                            \
    do {                                                                           \
        const float *x0 = x + r * in, *x1 = x0 + in, *x2 = x1 + in, *x3 = x2 + in; \
        __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;         \
        __m512 a10 = a00, a11 = a00, a12 = a00, a13 = a00;                         \
        __m512 a20 = a00, a21 = a00, a22 = a00, a23 = a00;                         \
        __m512 a30 = a00, a31 = a00, a32 = a00, a33 = a00;                         \
        size_t c = 0;                                                              \
        for (; c < nfull; c++) MM4_STEP(c, (__mmask16)0xFFFF, W, T);               \
        if (c < nch) MM4_STEP(c, tm, W, T);                                        \
        MM4_STORE(0);                                                              \
        MM4_STORE(1);                                                              \
        MM4_STORE(2);                                                              \
        MM4_STORE(3);                                                              \
    } while (0)

AVX512 __attribute__((always_inline)) static inline void
mm512_body(const float *x, size_t rows, size_t in, const void *w, size_t o_lo, size_t o_hi,
           const float *bias, size_t out, float *y, mdl_dtype_t t) {
    const size_t es = mdl_dtype_size(t), nfull = in / 16, nch = (in + 15) / 16;
    const __mmask16 tm = (__mmask16)((1u << (in & 15)) - 1);
    for (size_t r0 = 0; r0 < rows; r0 += MM_TILE) {
        size_t r1 = r0 + MM_TILE < rows ? r0 + MM_TILE : rows;
        for (size_t o = o_lo; o < o_hi; o += 4) {
            const char *wr[4];
            size_t oo[4];
            block_rows(w, in, es, o, o_hi, 4, wr, oo);
            size_t r = r0;
            for (; r + MM_R512 <= r1; r += MM_R512) MM4_BLOCK(wr, t);
        }
        /* Rows left over (all of them at batch 1): one row against 8
         * weight rows at a time, 8 independent chains and streams. */
        size_t rl = r0 + (r1 - r0) / MM_R512 * MM_R512;
        for (size_t o = o_lo; rl < r1 && o < o_hi; o += 8) {
            const char *wr[8];
            size_t oo[8];
            block_rows(w, in, es, o, o_hi, 8, wr, oo);
            for (size_t r = rl; r < r1; r++) {
                const float *xr = x + r * in;
                __m512 acc[8];
#pragma GCC unroll 8
                for (int k = 0; k < 8; k++) acc[k] = _mm512_setzero_ps();
                size_t c = 0;
                /* The next 8 rows follow these in memory: fetch them while
                 * these stream (prefetches never fault past the end). */
                const size_t next = 8 * in * es;
                for (; c < nfull; c++) {
                    __m512 xv = _mm512_loadu_ps(xr + c * 16);
                    if (!(c & (64 / (16 * es) - 1)) && r == rl)
#pragma GCC unroll 8
                        for (int k = 0; k < 8; k++)
                            _mm_prefetch(wr[k] + next + c * 16 * es, _MM_HINT_T0);
#pragma GCC unroll 8
                    for (int k = 0; k < 8; k++)
                        acc[k] =
                            _mm512_fmadd_ps(xv, w16(wr[k], c * 16, t, (__mmask16)0xFFFF), acc[k]);
                }
                if (c < nch) {
                    __m512 xv = _mm512_maskz_loadu_ps(tm, xr + c * 16);
#pragma GCC unroll 8
                    for (int k = 0; k < 8; k++)
                        acc[k] = _mm512_fmadd_ps(xv, w16(wr[k], c * 16, t, tm), acc[k]);
                }
                for (int k = 0; k < 8; k++)
                    y[r * out + oo[k]] = _mm512_reduce_add_ps(acc[k]) + (bias ? bias[oo[k]] : 0.0f);
            }
        }
    }
}

/* ---- bf16 pair-split kernel (AVX-512) ------------------------------
 * 32 bf16 weights are one 64-byte load; the even ones become f32 by a
 * shift (bf16 << 16), the odd ones by masking off the low half: 2 ALU
 * uops per 32 weights instead of 4 (widen + shift per 16). x is copied
 * once per matmul into the matching order (xperm_pairs: per 32 inputs,
 * the 16 even then the 16 odd, zero-padded to a multiple of 32, 64-byte
 * aligned), so lane i of an accumulator sums x[32c + 2i] * w[32c + 2i]
 * then x[32c + 2i + 1] * w[32c + 2i + 1] over chunks c in order. The
 * block path (MM_PR rows x MM_PO outputs) and the one-row path sum in
 * exactly that order: bit-identical for a row alone or in any batch. */
#define MM_PR 4 /* input rows per block */
#define MM_PO 4 /* output rows per block */

static inline size_t in_pairs32(size_t in) { return (in + 31) / 32 * 32; }

/* Copies rows [r0, r1) of x into @xp in pair-split order (row stride
 * in_pairs32(in)). */
static void xperm_pairs(const float *x, size_t r0, size_t r1, size_t in, float *xp) {
    const size_t xs = in_pairs32(in);
    for (size_t r = r0; r < r1; r++) {
        const float *xr = x + r * in;
        float *o = xp + r * xs;
        for (size_t c = 0; c < xs; c += 32)
            for (size_t i = 0; i < 16; i++) {
                size_t e = c + 2 * i;
                o[c + i] = e < in ? xr[e] : 0.0f;
                o[c + 16 + i] = e + 1 < in ? xr[e + 1] : 0.0f;
            }
    }
}

/* y[r][o] for r < rows, o_lo <= o < o_hi: @xp in pair-split order, @w
 * bf16 [out][in] (any alignment). */
AVX512 static void mm512_bf16_pairs(const float *xp, size_t rows, size_t in, const void *w,
                                    size_t o_lo, size_t o_hi, const float *bias, size_t out,
                                    float *y) {
    const size_t xs = in_pairs32(in), np = xs / 32, nfull = in / 32;
    const __mmask32 tm = (__mmask32)((1ull << (in & 31)) - 1);
    const __m512i hi = _mm512_set1_epi32((int)0xFFFF0000u);
    for (size_t r0 = 0; r0 < rows; r0 += MM_TILE) {
        size_t r1 = r0 + MM_TILE < rows ? r0 + MM_TILE : rows;
        size_t rl = r0 + (r1 - r0) / MM_PR * MM_PR;
        for (size_t o = o_lo; r0 < rl && o < o_hi; o += MM_PO) {
            const char *wc[MM_PO];
            size_t oo[MM_PO];
            block_rows(w, in, 2, o, o_hi, MM_PO, wc, oo);
            const uint16_t *wr[MM_PO];
            for (int k = 0; k < MM_PO; k++) wr[k] = (const uint16_t *)wc[k];
            for (size_t r = r0; r < rl; r += MM_PR) {
                __m512 acc[MM_PR][MM_PO];
#pragma GCC unroll 8
                for (int i = 0; i < MM_PR; i++)
#pragma GCC unroll 8
                    for (int k = 0; k < MM_PO; k++) acc[i][k] = _mm512_setzero_ps();
                for (size_t c = 0; c < np; c++) {
                    const __mmask32 m = c < nfull ? (__mmask32)~0u : tm;
                    __m512i raw[MM_PO];
                    __m512 wv[MM_PO];
#pragma GCC unroll 8
                    for (int k = 0; k < MM_PO; k++) {
                        raw[k] = _mm512_maskz_loadu_epi16(m, wr[k] + c * 32);
                        /* One load per 32 weights: without this GCC
                         * folds it into both the shift and the mask. */
                        __asm__("" : "+v"(raw[k]));
                        wv[k] = _mm512_castsi512_ps(_mm512_slli_epi32(raw[k], 16));
                    }
#pragma GCC unroll 8
                    for (int i = 0; i < MM_PR; i++) {
                        __m512 xv = _mm512_load_ps(xp + (r + (size_t)i) * xs + c * 32);
#pragma GCC unroll 8
                        for (int k = 0; k < MM_PO; k++)
                            acc[i][k] = _mm512_fmadd_ps(xv, wv[k], acc[i][k]);
                    }
#pragma GCC unroll 8
                    for (int k = 0; k < MM_PO; k++)
                        wv[k] = _mm512_castsi512_ps(_mm512_and_si512(raw[k], hi));
#pragma GCC unroll 8
                    for (int i = 0; i < MM_PR; i++) {
                        __m512 xv = _mm512_load_ps(xp + (r + (size_t)i) * xs + c * 32 + 16);
#pragma GCC unroll 8
                        for (int k = 0; k < MM_PO; k++)
                            acc[i][k] = _mm512_fmadd_ps(xv, wv[k], acc[i][k]);
                    }
                }
#pragma GCC unroll 8
                for (int i = 0; i < MM_PR; i++)
#pragma GCC unroll 8
                    for (int k = 0; k < MM_PO; k++)
                        y[(r + (size_t)i) * out + oo[k]] =
                            _mm512_reduce_add_ps(acc[i][k]) + (bias ? bias[oo[k]] : 0.0f);
            }
        }
        /* Rows left over (all of them at batch 1): one row against 8
         * weight rows at a time, 8 independent chains and streams. */
        for (size_t o = o_lo; rl < r1 && o < o_hi; o += 8) {
            const char *wc[8];
            size_t oo[8];
            block_rows(w, in, 2, o, o_hi, 8, wc, oo);
            for (size_t r = rl; r < r1; r++) {
                const float *xr = xp + r * xs;
                __m512 acc[8];
#pragma GCC unroll 8
                for (int k = 0; k < 8; k++) acc[k] = _mm512_setzero_ps();
                /* The next 8 rows follow these in memory: fetch them while
                 * these stream (prefetches never fault past the end). */
                const size_t next = 8 * in * 2;
                for (size_t c = 0; c < np; c++) {
                    const __mmask32 m = c < nfull ? (__mmask32)~0u : tm;
                    if (r == rl)
#pragma GCC unroll 8
                        for (int k = 0; k < 8; k++)
                            _mm_prefetch(wc[k] + next + c * 64, _MM_HINT_T0);
                    __m512 xe = _mm512_load_ps(xr + c * 32), xo = _mm512_load_ps(xr + c * 32 + 16);
#pragma GCC unroll 8
                    for (int k = 0; k < 8; k++) {
                        __m512i raw = _mm512_maskz_loadu_epi16(m, (const uint16_t *)wc[k] + c * 32);
                        __asm__("" : "+v"(raw));
                        acc[k] = _mm512_fmadd_ps(
                            xe, _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16)), acc[k]);
                        acc[k] = _mm512_fmadd_ps(xo, _mm512_castsi512_ps(_mm512_and_si512(raw, hi)),
                                                 acc[k]);
                    }
                }
                for (int k = 0; k < 8; k++)
                    y[r * out + oo[k]] = _mm512_reduce_add_ps(acc[k]) + (bias ? bias[oo[k]] : 0.0f);
            }
        }
    }
}

/* ---- bf16 panel kernel (AVX-512) ----------------------------------
 * Weights repacked once at load (cpu_pack) into panels of 32 outputs:
 * panel p holds, for each input k in order, the 32 weights
 * W[32p + j][k] (one 64-byte line; the last panel zero-padded). A panel
 * line widens like the pair-split kernel (evens by a shift, odds by a
 * mask: outputs 32p + 2i and 32p + 2i + 1 in lane i) and multiplies
 * x[r][k] broadcast: y[r][o] is one FMA chain over k in order from 0 --
 * the ref backend's order -- whatever the block shape, batch or thread
 * split (bit-identical rows alone or in any batch). x is read in place
 * (one broadcast per row and input), a weight line once per block of
 * rows. Rows go in tiles of at most PK_TILE (a tile's x stays in L2 while
 * the panels stream), each weight line fetched from memory once per tile
 * (eng_panel_tiles): a tile of up to 12 rows is one block (one row: 8
 * panels streaming at once, a range's last panels in blocks of 4, 2 and
 * 1; 2 x 4, 3 x 3, 4 x 3, 5 x 2, 6 x 2 panels; 7 to 12 rows x 1 panel,
 * up to 24 accumulators), a bigger one blocks of 6 to 12 rows x 1 panel,
 * each panel's blocks one after another.
 *
 * f16 and f32 weights use the same panels and kernels, the 16 even
 * outputs' weights first, then the 16 odd ones' (pk_fill): in
 * one line of halves that VCVTPH2PS widens exactly, or in two lines of
 * floats, into the lanes the bf16 shift and mask fill, so the same FMA
 * chains and interleave follow. */
#define PK_W    ENG_PK_W /* outputs per panel (32) */
#define PK_TILE 48       /* rows per tile */
#ifndef PK_PF
#define PK_PF 16 /* lines of a panel prefetched ahead at one row */
#endif
#define PK_PF_FAR 256 /* lines ahead a one-panel block also fetches into L2 */

static inline size_t pk_panels(size_t out) { return (out + PK_W - 1) / PK_W; }

/* A panel's weight type. */
#define PK_BF16 ENG_PK_BF16
#define PK_F16  ENG_PK_F16
#define PK_F32  ENG_PK_F32

/* uint16_t units per input of a panel of type @T. */
#define PK_LW(T) ((T) == PK_F32 ? 2 * PK_W : PK_W)

/* Input @k's weights of panel @pp as f32: even outputs (lane i = output
 * 2i of the panel) in *@e, odd ones in *@o; bf16 by shift and mask, f16 by
 * conversion, f32 as stored. */
AVX512 __attribute__((always_inline)) static inline void
pk_load(const uint16_t *pp, size_t k, __m512i hi, const int T, __m512 *e, __m512 *o) {
    const uint16_t *l = pp + k * PK_LW(T);
    if (T == PK_F32) {
        *e = _mm512_load_ps(l);
        *o = _mm512_load_ps(l + PK_W);
        return;
    }
    __m512i raw = _mm512_load_si512(l);
    /* One load per line: without this GCC folds it into both the shift
     * and the mask. */
    __asm__("" : "+v"(raw));
    if (T == PK_F16) {
        *e = _mm512_cvtph_ps(_mm512_castsi512_si256(raw));
        *o = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(raw, 1));
        return;
    }
    *e = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
    *o = _mm512_castsi512_ps(_mm512_and_si512(raw, hi));
}

/* Rows [r, r + R) of x against panels p .. p + NP - 1 (indexes past
 * @p_hi clamped to its last panel: computed, not stored). */
AVX512 __attribute__((always_inline)) static inline void
pk_block(const float *x, size_t in, const uint16_t *P, size_t r, size_t p, size_t p_hi,
         const float *bias, size_t out, float *y, bool nt, const int R, const int NP, const int T) {
    const __m512i hi = _mm512_set1_epi32((int)0xFFFF0000u);
    const uint16_t *pp[8];
#pragma GCC unroll 8
    for (int q = 0; q < NP; q++)
        pp[q] = P + (p + (size_t)q < p_hi ? p + (size_t)q : p_hi - 1) * in * PK_LW(T);
    __m512 ae[12][8], ao[12][8];
#pragma GCC unroll 16
    for (int i = 0; i < R; i++)
#pragma GCC unroll 8
        for (int q = 0; q < NP; q++) ae[i][q] = ao[i][q] = _mm512_setzero_ps();
    const float *xr = x + r * in;
    for (size_t k = 0; R == 1 && k < in; k++) {
        /* One row (decode): the weights stream from memory, 8 panels at
         * once, each line widened and used at once (holding all 16
         * widened lines spilled registers); fetch ahead of the hardware
         * prefetcher (never faults). */
        const __m512 xb = _mm512_set1_ps(xr[k]);
#pragma GCC unroll 8
        for (int q = 0; q < NP; q++) {
            _mm_prefetch(pp[q] + (k + PK_PF) * PK_LW(T), _MM_HINT_T0);
            if (T == PK_F32) _mm_prefetch(pp[q] + (k + PK_PF) * PK_LW(T) + PK_W, _MM_HINT_T0);
            __m512 we, wo;
            pk_load(pp[q], k, hi, T, &we, &wo);
            ae[0][q] = _mm512_fmadd_ps(xb, we, ae[0][q]);
            ao[0][q] = _mm512_fmadd_ps(xb, wo, ao[0][q]);
        }
    }
    for (size_t k = 0; R > 1 && k < in; k++) {
        __m512 we[8], wo[8];
#pragma GCC unroll 8
        for (int q = 0; q < NP; q++) {
            /* Decode batches stream the weights from memory too (a
             * prefill's tile finds them in cache: cheap there). */
            _mm_prefetch(pp[q] + (k + PK_PF) * PK_LW(T), _MM_HINT_T0);
            if (T == PK_F32) _mm_prefetch(pp[q] + (k + PK_PF) * PK_LW(T) + PK_W, _MM_HINT_T0);
            /* A one-panel block (7-12 rows) streams one run of lines at
             * 14-24 FMAs a line: fetch far ahead into L2 too (decode 8-32
             * sequences 1.02-1.09x, prefill level). */
            if (NP == 1) _mm_prefetch(pp[q] + (k + PK_PF_FAR) * PK_LW(T), _MM_HINT_T2);
            pk_load(pp[q], k, hi, T, &we[q], &wo[q]);
        }
#pragma GCC unroll 16
        for (int i = 0; i < R; i++) {
            __m512 xb = _mm512_set1_ps(xr[(size_t)i * in + k]);
#pragma GCC unroll 8
            for (int q = 0; q < NP; q++) {
                ae[i][q] = _mm512_fmadd_ps(xb, we[q], ae[i][q]);
                ao[i][q] = _mm512_fmadd_ps(xb, wo[q], ao[i][q]);
            }
        }
    }
    /* Lane i of ae / ao = outputs 2i / 2i + 1: interleave into order. */
    const __m512i ilo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i ihi =
        _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
#pragma GCC unroll 8
    for (int q = 0; q < NP; q++) {
        if (p + (size_t)q >= p_hi) break;
        size_t o0 = (p + (size_t)q) * PK_W, n = out - o0 < PK_W ? out - o0 : PK_W;
        __mmask16 m0 = (__mmask16)(n >= 16 ? 0xFFFF : (1u << n) - 1);
        __mmask16 m1 = (__mmask16)(n >= 32 ? 0xFFFF : n > 16 ? (1u << (n - 16)) - 1 : 0);
        __m512 b0 = bias ? _mm512_maskz_loadu_ps(m0, bias + o0) : _mm512_setzero_ps();
        __m512 b1 = bias ? _mm512_maskz_loadu_ps(m1, bias + o0 + 16) : _mm512_setzero_ps();
#pragma GCC unroll 16
        for (int i = 0; i < R; i++) {
            float *yr = y + (r + (size_t)i) * out + o0;
            __m512 v0 = _mm512_permutex2var_ps(ae[i][q], ilo, ao[i][q]);
            __m512 v1 = _mm512_permutex2var_ps(ae[i][q], ihi, ao[i][q]);
            if (bias) v0 = _mm512_add_ps(v0, b0), v1 = _mm512_add_ps(v1, b1);
            if (nt && n == PK_W && !((uintptr_t)yr & 63)) {
                _mm512_stream_ps(yr, v0);
                _mm512_stream_ps(yr + 16, v1);
            } else {
                _mm512_mask_storeu_ps(yr, m0, v0);
                _mm512_mask_storeu_ps(yr + 16, m1, v1);
            }
        }
    }
}

#define PK_SHAPE(R, NP)                                                                            \
    AVX512 static void pk_##R##x##NP(const void *x, size_t in, const void *P, size_t r, size_t p,  \
                                     size_t p_hi, const float *bias, size_t out, float *y,         \
                                     bool nt) {                                                    \
        pk_block(x, in, P, r, p, p_hi, bias, out, y, nt, R, NP, PK_BF16);                          \
    }                                                                                              \
    AVX512 static void pkh_##R##x##NP(const void *x, size_t in, const void *P, size_t r, size_t p, \
                                      size_t p_hi, const float *bias, size_t out, float *y,        \
                                      bool nt) {                                                   \
        pk_block(x, in, P, r, p, p_hi, bias, out, y, nt, R, NP, PK_F16);                           \
    }                                                                                              \
    AVX512 static void pkf_##R##x##NP(const void *x, size_t in, const void *P, size_t r, size_t p, \
                                      size_t p_hi, const float *bias, size_t out, float *y,        \
                                      bool nt) {                                                   \
        pk_block(x, in, P, r, p, p_hi, bias, out, y, nt, R, NP, PK_F32);                           \
    }
PK_SHAPE(1, 8)
PK_SHAPE(1, 4)
PK_SHAPE(1, 2)
PK_SHAPE(1, 1)
PK_SHAPE(2, 4)
PK_SHAPE(3, 3)
PK_SHAPE(4, 3)
PK_SHAPE(5, 2)
PK_SHAPE(6, 2)
PK_SHAPE(6, 1)
PK_SHAPE(7, 1)
PK_SHAPE(8, 1)
PK_SHAPE(9, 1)
PK_SHAPE(10, 1)
PK_SHAPE(11, 1)
PK_SHAPE(12, 1)

/* Blocks per panel type ([PK_BF16], [PK_F16], [PK_F32]): a tile of up to
 * 12 rows in one block (2 x 2R x NP accumulators, NP panels streaming
 * side by side), bigger ones in blocks of 6 to 12 rows x 1 panel. */
#define PK_BLK(R, NP, p) \
    { R, NP, p##_##R##x##NP }
#define PK_ONE(p)                                                                                 \
    {                                                                                             \
        PK_BLK(1, 8, p), PK_BLK(2, 4, p), PK_BLK(3, 3, p), PK_BLK(4, 3, p), PK_BLK(5, 2, p),      \
            PK_BLK(6, 2, p), PK_BLK(7, 1, p), PK_BLK(8, 1, p), PK_BLK(9, 1, p), PK_BLK(10, 1, p), \
            PK_BLK(11, 1, p), PK_BLK(12, 1, p)                                                    \
    }
#define PK_MANY(p)                                                                            \
    {                                                                                         \
        PK_BLK(6, 1, p), PK_BLK(7, 1, p), PK_BLK(8, 1, p), PK_BLK(9, 1, p), PK_BLK(10, 1, p), \
            PK_BLK(11, 1, p), PK_BLK(12, 1, p)                                                \
    }
static const eng_blk_shape_t k_pk_one[3][12] = {PK_ONE(pk), PK_ONE(pkh), PK_ONE(pkf)};
static const eng_blk_shape_t k_pk_many[3][7] = {PK_MANY(pk), PK_MANY(pkh), PK_MANY(pkf)};
static const eng_panel_plan_t k_pk_plan[3] = {{k_pk_one[0], k_pk_many[0], 12, 12, PK_TILE},
                                              {k_pk_one[1], k_pk_many[1], 12, 12, PK_TILE},
                                              {k_pk_one[2], k_pk_many[2], 12, 12, PK_TILE}};
static const eng_blk_shape_t k_pk_row[3][4] = {
    {PK_BLK(1, 8, pk), PK_BLK(1, 4, pk), PK_BLK(1, 2, pk), PK_BLK(1, 1, pk)},
    {PK_BLK(1, 8, pkh), PK_BLK(1, 4, pkh), PK_BLK(1, 2, pkh), PK_BLK(1, 1, pkh)},
    {PK_BLK(1, 8, pkf), PK_BLK(1, 4, pkf), PK_BLK(1, 2, pkf), PK_BLK(1, 1, pkf)}};

static int pk_type(mdl_dtype_t t) {
    return t == MDL_F16 ? PK_F16 : t == MDL_F32 ? PK_F32 : PK_BF16;
}

/* y[r][o] for r < rows and the outputs of panels [p_lo, p_hi); @P the
 * panels of a [out][in] matrix of dtype @t (bf16, f16 or f32). */
static void mm512_panels(const float *x, size_t rows, size_t in, const uint16_t *P, size_t p_lo,
                         size_t p_hi, const float *bias, size_t out, float *y, mdl_dtype_t t) {
    const int T = pk_type(t);
    if (rows == 1) /* decode: blocks of 8 panels, the tail in 4, 2 and 1 */
        eng_panel_row(k_pk_row[T], 4, x, in, P, p_lo, p_hi, bias, out, y);
    else
        eng_panel_tiles(&k_pk_plan[T], x, rows, in, P, p_lo, p_hi, bias, out, y);
    _mm_sfence(); /* the non-temporal stores, before the job ends */
}

/* The panel width of mm512_panels' blocks for @rows rows. */
static size_t pk_width(size_t rows) {
    return eng_panel_width(&k_pk_plan[PK_BF16], rows); /* the same shapes for every type */
}

/* Panels [p_lo, p_hi) of @w ([out][in], dtype @t) into @P: per input, the
 * panel's 32 weights in output order (bf16), or the 16 even outputs'
 * then the 16 odd ones' (f16, f32: see pk_load). */
static void pk_fill(const void *w, mdl_dtype_t t, size_t in, size_t out, size_t p_lo, size_t p_hi,
                    void *P) {
    const size_t es = mdl_dtype_size(t);
    for (size_t p = p_lo; p < p_hi; p++)
        for (size_t j = 0; j < PK_W; j++) {
            size_t o = p * PK_W + j, at = t == MDL_BF16 ? j : j % 2 ? PK_W / 2 + j / 2 : j / 2;
            const void *src = o < out ? (const char *)w + o * in * es : NULL;
            void *d = (char *)P + (p * in * PK_W + at) * es;
            if (es == 4)
                for (size_t k = 0; k < in; k++)
                    ((float *)d)[k * PK_W] = src ? ((const float *)src)[k] : 0.0f;
            else
                for (size_t k = 0; k < in; k++)
                    ((uint16_t *)d)[k * PK_W] = src ? ((const uint16_t *)src)[k] : 0;
        }
}

AVX2 static inline __m256 w8(const void *w, size_t i, mdl_dtype_t t) {
    if (t == MDL_F32) return _mm256_loadu_ps((const float *)w + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    if (t == MDL_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

/* Chunk @c of 8 of weight row @wr (the last one zero-padded via @pad). */
AVX2 static inline __m256 w8c(const char *wr, size_t c, size_t nfull, size_t in, mdl_dtype_t t,
                              float *pad) {
    if (c < nfull) return w8(wr, c * 8, t);
    memset(pad, 0, 8 * sizeof *pad);
    eng_to_f32(wr + c * 8 * mdl_dtype_size(t), t, in - c * 8, pad);
    return _mm256_loadu_ps(pad);
}

AVX2 static inline __m256 x8c(const float *xr, size_t c, size_t nfull, size_t in, float *pad) {
    if (c < nfull) return _mm256_loadu_ps(xr + c * 8);
    memset(pad, 0, 8 * sizeof *pad);
    memcpy(pad, xr + c * 8, (in - c * 8) * sizeof *pad);
    return _mm256_loadu_ps(pad);
}

#define MM_R256 2

#define ROW8_FMA(k)   a##k = _mm256_fmadd_ps(xv, w8(w##k, c * 8, t), a##k)
#define ROW8_TAIL(k)  a##k = _mm256_fmadd_ps(xv, w8c(w##k, c, nfull, in, t, pad), a##k)
#define ROW8_PF(k)    _mm_prefetch(w##k + next + c * 8 * es, _MM_HINT_T0)
#define ROW8_STORE(k) yr[oo[k]] = hsum(a##k) + (bias ? bias[oo[k]] : 0.0f)

/* Row @xr of x against the 8 weight rows @wr (outputs @oo) into row @yr of
 * y: 8 independent FMA chains with named accumulators (an array of them
 * lived on the stack, 4 outputs at a time: decode at batch 1 ran at 45% of
 * the read bandwidth on a Zen 3 core). Each output is summed as in
 * mm256_body's 2-row block (one 8-lane chain over the chunks in order, the
 * padded tail last, then hsum), so a row gets the same bits in any batch.
 * With @pf, fetches the 8 rows that follow these in memory (the next
 * block) while these stream; prefetches never fault past the end. */
AVX2 __attribute__((always_inline)) static inline void
mm256_row8(const float *xr, size_t in, const char *const *wr, const size_t *oo, const float *bias,
           float *yr, mdl_dtype_t t, bool pf) {
    const size_t es = mdl_dtype_size(t), nfull = in / 8, nch = (in + 7) / 8, next = 8 * in * es;
    const size_t pf_every = 64 / (8 * es) - 1; /* chunks per cache line of a row, minus 1 */
    const char *w0 = wr[0], *w1 = wr[1], *w2 = wr[2], *w3 = wr[3];
    const char *w4 = wr[4], *w5 = wr[5], *w6 = wr[6], *w7 = wr[7];
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    float pad[8];
    size_t c = 0;
    for (; c < nfull; c++) {
        if (pf && !(c & pf_every)) {
            ROW8_PF(0), ROW8_PF(1), ROW8_PF(2), ROW8_PF(3);
            ROW8_PF(4), ROW8_PF(5), ROW8_PF(6), ROW8_PF(7);
        }
        __m256 xv = _mm256_loadu_ps(xr + c * 8);
        ROW8_FMA(0), ROW8_FMA(1), ROW8_FMA(2), ROW8_FMA(3);
        ROW8_FMA(4), ROW8_FMA(5), ROW8_FMA(6), ROW8_FMA(7);
    }
    if (c < nch) {
        __m256 xv = x8c(xr, c, nfull, in, pad);
        ROW8_TAIL(0), ROW8_TAIL(1), ROW8_TAIL(2), ROW8_TAIL(3);
        ROW8_TAIL(4), ROW8_TAIL(5), ROW8_TAIL(6), ROW8_TAIL(7);
    }
    ROW8_STORE(0), ROW8_STORE(1), ROW8_STORE(2), ROW8_STORE(3);
    ROW8_STORE(4), ROW8_STORE(5), ROW8_STORE(6), ROW8_STORE(7);
}

AVX2 __attribute__((always_inline)) static inline void
mm256_body(const float *x, size_t rows, size_t in, const void *w, size_t o_lo, size_t o_hi,
           const float *bias, size_t out, float *y, mdl_dtype_t t) {
    const size_t es = mdl_dtype_size(t), nfull = in / 8, nch = (in + 7) / 8;
    float pad[8];
    for (size_t r0 = 0; r0 < rows; r0 += MM_TILE) {
        size_t r1 = r0 + MM_TILE < rows ? r0 + MM_TILE : rows;
        for (size_t o = o_lo; r0 + MM_R256 <= r1 && o < o_hi; o += 4) {
            const char *wr[4];
            size_t oo[4];
            block_rows(w, in, es, o, o_hi, 4, wr, oo);
            size_t r = r0;
            for (; r + MM_R256 <= r1; r += MM_R256) {
                /* Named accumulators, full chunks then the padded tail (an
                 * accumulator array kept them on the stack, see MM4_STEP). */
                const float *x0 = x + r * in, *x1 = x0 + in;
                __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
                __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
                size_t c = 0;
                for (; c < nfull; c++) {
                    __m256 w0 = w8(wr[0], c * 8, t), w1 = w8(wr[1], c * 8, t);
                    __m256 w2 = w8(wr[2], c * 8, t), w3 = w8(wr[3], c * 8, t);
                    __m256 xv = _mm256_loadu_ps(x0 + c * 8);
                    a00 = _mm256_fmadd_ps(xv, w0, a00);
                    a01 = _mm256_fmadd_ps(xv, w1, a01);
                    a02 = _mm256_fmadd_ps(xv, w2, a02);
                    a03 = _mm256_fmadd_ps(xv, w3, a03);
                    xv = _mm256_loadu_ps(x1 + c * 8);
                    a10 = _mm256_fmadd_ps(xv, w0, a10);
                    a11 = _mm256_fmadd_ps(xv, w1, a11);
                    a12 = _mm256_fmadd_ps(xv, w2, a12);
                    a13 = _mm256_fmadd_ps(xv, w3, a13);
                }
                if (c < nch) {
                    __m256 w0 = w8c(wr[0], c, nfull, in, t, pad);
                    __m256 w1 = w8c(wr[1], c, nfull, in, t, pad);
                    __m256 w2 = w8c(wr[2], c, nfull, in, t, pad);
                    __m256 w3 = w8c(wr[3], c, nfull, in, t, pad);
                    __m256 xv = x8c(x0, c, nfull, in, pad);
                    a00 = _mm256_fmadd_ps(xv, w0, a00);
                    a01 = _mm256_fmadd_ps(xv, w1, a01);
                    a02 = _mm256_fmadd_ps(xv, w2, a02);
                    a03 = _mm256_fmadd_ps(xv, w3, a03);
                    xv = x8c(x1, c, nfull, in, pad);
                    a10 = _mm256_fmadd_ps(xv, w0, a10);
                    a11 = _mm256_fmadd_ps(xv, w1, a11);
                    a12 = _mm256_fmadd_ps(xv, w2, a12);
                    a13 = _mm256_fmadd_ps(xv, w3, a13);
                }
                float *y0 = y + r * out, *y1 = y0 + out;
                y0[oo[0]] = hsum(a00) + (bias ? bias[oo[0]] : 0.0f);
                y0[oo[1]] = hsum(a01) + (bias ? bias[oo[1]] : 0.0f);
                y0[oo[2]] = hsum(a02) + (bias ? bias[oo[2]] : 0.0f);
                y0[oo[3]] = hsum(a03) + (bias ? bias[oo[3]] : 0.0f);
                y1[oo[0]] = hsum(a10) + (bias ? bias[oo[0]] : 0.0f);
                y1[oo[1]] = hsum(a11) + (bias ? bias[oo[1]] : 0.0f);
                y1[oo[2]] = hsum(a12) + (bias ? bias[oo[2]] : 0.0f);
                y1[oo[3]] = hsum(a13) + (bias ? bias[oo[3]] : 0.0f);
            }
        }
        /* Rows left over (all of them at batch 1): one row against 8
         * weight rows at a time (mm256_row8). */
        size_t rl = r0 + (r1 - r0) / MM_R256 * MM_R256;
        for (size_t o = o_lo; rl < r1 && o < o_hi; o += 8) {
            const char *wr[8];
            size_t oo[8];
            block_rows(w, in, es, o, o_hi, 8, wr, oo);
            for (size_t r = rl; r < r1; r++)
                mm256_row8(x + r * in, in, wr, oo, bias, y + r * out, t, r == rl);
        }
    }
}

#define MM_VARIANT(isa, attr, t, tn)                                                          \
    attr static void mm_##isa##_##tn(const float *x, size_t rows, size_t in, const void *w,   \
                                     size_t o_lo, size_t o_hi, const float *bias, size_t out, \
                                     float *y) {                                              \
        isa##_body(x, rows, in, w, o_lo, o_hi, bias, out, y, t);                              \
    }
MM_VARIANT(mm512, AVX512, MDL_F32, f32)
MM_VARIANT(mm512, AVX512, MDL_F16, f16)
MM_VARIANT(mm256, AVX2, MDL_F32, f32)
MM_VARIANT(mm256, AVX2, MDL_BF16, bf16)
MM_VARIANT(mm256, AVX2, MDL_F16, f16)
#endif

typedef void (*swiglu_fn)(float *g, const float *u, size_t n);
typedef void (*rms_fn)(const float *x, size_t dim, const float *w, float eps, float *y);

static void swiglu_scalar(float *g, const float *u, size_t n) {
    for (size_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void rmsnorm_scalar(const float *x, size_t dim, const float *w, float eps, float *y) {
    float ss = 0.0f;
    for (size_t i = 0; i < dim; i++) ss += x[i] * x[i];
    float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    for (size_t i = 0; i < dim; i++) y[i] = w[i] * (x[i] * inv);
}

/* ---- thread pool ------------------------------------------------------
 * The caller runs part 0 of each job, n workers the others. Workers spin
 * briefly for the next job (a forward pass issues hundreds of small ones
 * back to back) before sleeping on a condition variable. */

typedef void (*part_fn)(const void *arg, int part, int parts);

typedef struct {
    pthread_t *threads;
    int n; /* workers besides the caller */
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    _Atomic uint64_t gen;
    _Atomic int pending;
    _Atomic bool stop;
    int sleepers; /* under mu */
    part_fn fn;   /* the job: published by the release increment of gen */
    const void *arg;
    dot_fn dots[3];
    mm_fn mms[3];
    eng_head_fn head[2];   /* [kv_bf16] */
    eng_heads_fn heads[2]; /* or NULL: head one query head at a time */
    swiglu_fn swiglu;
    rms_fn rms;
    bool bf16_pairs; /* bf16 weights go through mm512_bf16_pairs */
    bool pk2;        /* no AVX-512: panels (pk_fill) multiplied by eng_pk2_mm */
    bool dp;         /* TANDEM_CPU_PRECISION=bf16: eng_dp_mm for packed, non-exact bf16 */
    bool amx;        /* and TANDEM_CPU_AMX=1: eng_amx_mm instead */
    bool dp_fma;     /* or, from DP_FMA_ROWS rows, eng_dp_mm_fma (same bits) */
    float *xp;       /* x in pair-split order for it, xp_cap floats, 64-byte aligned */
    size_t xp_cap;
    uint32_t head_w;  /* floats per vector of head: head_dim must be a multiple */
    float *sc;        /* attention scratch, (n + 1) * sc_per floats */
    size_t sc_stride; /* scores per row: sc_per >= ENG_ATTN_QB * sc_stride */
    size_t sc_per;
    size_t *blk; /* token blocks of the attention in progress, blk_cap entries */
    size_t blk_cap;
    cm_hpool_t *weights; /* pack's panels: huge pages, freed with the backend */
    const char *isa;
} cpu_t;

enum { POOL_SPIN = 20000 };

static inline void cpu_relax(void) {
#if defined(__x86_64__)
    _mm_pause();
#endif
}

typedef struct {
    cpu_t *pool;
    int idx;
} worker_arg_t;

static void *worker(void *arg) {
    worker_arg_t *wa = arg;
    cpu_t *p = wa->pool;
    int idx = wa->idx;
    free(wa);
    uint64_t seen = 0;
    for (;;) {
        uint64_t g;
        for (int spins = 0; (g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen &&
                            !atomic_load_explicit(&p->stop, memory_order_relaxed);) {
            if (++spins < POOL_SPIN) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            p->sleepers++;
            while (atomic_load(&p->gen) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->go, &p->mu);
            p->sleepers--;
            pthread_mutex_unlock(&p->mu);
            spins = 0;
        }
        if (atomic_load(&p->stop)) return NULL;
        seen = g;
        p->fn(p->arg, idx + 1, p->n + 1);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

/* Runs fn(arg, part, n + 1) for every part, part 0 on the caller. */
static void pool_run(cpu_t *p, part_fn fn, const void *arg) {
    if (p->n == 0) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->pending, p->n, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_mutex_lock(&p->mu);
    if (p->sleepers) pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    fn(arg, 0, p->n + 1);
    for (int spins = 0; atomic_load_explicit(&p->pending, memory_order_acquire) > 0;) {
        if (++spins < POOL_SPIN) {
            cpu_relax();
            continue;
        }
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->pending) > 0) pthread_cond_wait(&p->done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}

typedef struct {
    const float *x;
    size_t rows, in, out;
    const mdl_tensor_t *w;
    const float *bias;
    float *y;
    dot_fn dot;
    mm_fn mm;     /* blocked kernel, or NULL: one dot per (row, output) */
    bool panels;  /* w->packed holds mm512_panels' panels (bf16, f16 or f32) */
    bool pk2;     /* ... multiplied by eng_pk2_mm (AVX2), else mm512_panels */
    bool dp;      /* w->packed holds eng_dp_mm's panels, x is in bf16 pairs */
    bool amx;     /* dp panels multiplied on AMX tiles (eng_amx_mm) */
    bool dp_fma;  /* dp panels by eng_dp_mm_fma, x rounded to bf16 as f32 */
    bool guided;  /* one row: chunks shrink towards the end */
    int parts;    /* threads taking chunks */
    size_t chunk; /* panels per chunk (the first ones when guided) */
    /* Panel jobs: matrices mats[0 .. n_mm) of one x, their panels numbered
     * one after another from off[i]; rows from r0 (y rows r0 ..). */
    const eng_mm_t *mats;
    size_t n_mm, r0, off[ENG_MM_MAX + 1];
    _Atomic size_t *next; /* the next panel to hand out */
} job_t;

/* Panels per chunk of a panel job over @np panels, @rows rows and @parts
 * threads, its kernel's blocks @width panels wide. Up to 4 rows
 * (memory-bound): about 16 chunks per thread, at least one block of 8
 * panels, so a large matrix (the LM head) still streams long runs. Else
 * about 8 chunks per thread, whole blocks: a matrix of 32 panels still
 * splits evenly between the threads. */
static size_t panel_chunk(size_t np, size_t rows, int parts, size_t width) {
    if (rows <= 4) return (np + (size_t)parts * 16 * 8 - 1) / ((size_t)parts * 16 * 8) * 8;
    size_t c = (np + (size_t)parts * 8 - 1) / ((size_t)parts * 8);
    return (c + width - 1) / width * width;
}

/* The next chunk of a panel job: its first panel in *@lo and its length,
 * 0 when all are taken. One row (the kernels then take any number of
 * panels): the last chunks shrink to half of what is left per thread,
 * down to 4 panels, so threads finish within a few panels of each
 * other (a matrix ends in a wait for the slowest thread) while most
 * panels still stream 8 at a time. */
static size_t take_chunk(const job_t *j, size_t *lo) {
    const size_t np = j->off[j->n_mm];
    size_t cur = atomic_load_explicit(j->next, memory_order_relaxed);
    for (;;) {
        if (cur >= np) return 0;
        size_t rem = np - cur, c = j->chunk;
        if (j->guided && rem < (size_t)j->parts * 2 * c) {
            c = rem / ((size_t)j->parts * 2);
            c = c >= 8 ? c / 8 * 8 : 4;
        }
        if (c > rem) c = rem;
        if (atomic_compare_exchange_weak_explicit(j->next, &cur, cur + c, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            *lo = cur;
            return c;
        }
    }
}

static void run_slice(const void *arg, int part, int parts) {
    const job_t *j = arg;
    if (j->dp || j->panels) {
        /* Chunks of panels from a shared counter: a thread the host slows
         * down (a busy neighbour, preemption) takes fewer and the others
         * more. Each output is computed whole by one thread in a fixed
         * order: results do not depend on who takes what. */
        size_t lo, n;
        while ((n = take_chunk(j, &lo)))
            for (size_t i = 0; i < j->n_mm; i++) {
                size_t a = lo > j->off[i] ? lo : j->off[i],
                       b = lo + n < j->off[i + 1] ? lo + n : j->off[i + 1];
                if (a >= b) continue;
                const eng_mm_t *m = &j->mats[i];
                float *y = m->y + j->r0 * m->out;
                if (j->dp_fma)
                    eng_dp_mm_fma(j->x, j->rows, j->in, m->w->packed, a - j->off[i], b - j->off[i],
                                  m->bias, m->out, y);
                else if (j->dp)
                    (j->amx ? eng_amx_mm : eng_dp_mm)((const uint32_t *)j->x, j->rows, j->in,
                                                      m->w->packed, a - j->off[i], b - j->off[i],
                                                      m->bias, m->out, y);
#if defined(__x86_64__)
                else if (j->pk2)
                    eng_pk2_mm(j->x, j->rows, j->in, m->w->packed, a - j->off[i], b - j->off[i],
                               m->bias, m->out, y, pk_type(m->w->dtype));
                else
                    mm512_panels(j->x, j->rows, j->in, m->w->packed, a - j->off[i], b - j->off[i],
                                 m->bias, m->out, y, m->w->dtype);
#endif
            }
        return;
    }
    size_t lo = j->out * (size_t)part / (size_t)parts,
           hi = j->out * (size_t)(part + 1) / (size_t)parts;
    if (j->mm) {
        if (hi > lo) j->mm(j->x, j->rows, j->in, j->w->data, lo, hi, j->bias, j->out, j->y);
        return;
    }
    size_t es = mdl_dtype_size(j->w->dtype);
    for (size_t o = lo; o < hi; o++) {
        const char *wr = (const char *)j->w->data + o * j->in * es;
        float b = j->bias ? j->bias[o] : 0.0f;
        for (size_t r = 0; r < j->rows; r++)
            j->y[r * j->out + o] = j->dot(j->x + r * j->in, wr, j->in) + b;
    }
}

#if defined(__x86_64__) /* the x copy of mm512_bf16_pairs */
typedef struct {
    const float *x;
    size_t rows, in;
    float *xp;
} perm_job_t;

static void perm_slice(const void *arg, int part, int parts) {
    const perm_job_t *j = arg;
    xperm_pairs(j->x, j->rows * (size_t)part / (size_t)parts,
                j->rows * (size_t)(part + 1) / (size_t)parts, j->in, j->xp);
}

static void xconv_slice(const void *arg, int part, int parts) {
    const perm_job_t *j = arg;
    eng_dp_xconv(j->x, j->rows * (size_t)part / (size_t)parts,
                 j->rows * (size_t)(part + 1) / (size_t)parts, j->in, (uint32_t *)j->xp);
}

static void xconvf_slice(const void *arg, int part, int parts) {
    const perm_job_t *j = arg;
    eng_dp_xconv_f32(j->x, j->rows * (size_t)part / (size_t)parts,
                     j->rows * (size_t)(part + 1) / (size_t)parts, j->in, j->xp);
}

/* Room for @n floats of pair-split x; false when memory ran out. */
static bool xp_reserve(cpu_t *p, size_t n) {
    if (n <= p->xp_cap) return true;
    size_t cap = n + n / 4, bytes;
    if (!cm_mul_ok(cap, sizeof(float), &bytes)) return false;
    float *xp = cm_aligned_alloc(64, bytes);
    if (!xp) return false;
    cm_aligned_free(p->xp);
    p->xp = xp;
    p->xp_cap = cap;
    return true;
}
#endif

/* fn over the pool, or on the caller alone for less than 64K elements
 * of @work: small jobs are not worth waking the pool. */
static void run_parts(cpu_t *p, part_fn fn, const void *arg, size_t work) {
    if (p->n == 0 || work < (1u << 16))
        fn(arg, 0, 1);
    else
        pool_run(p, fn, arg);
}

/* Rows from which cpu_t.dp_fma runs bf16 products as FMAs: 1 and 2 rows
 * stream 8 panels at once on VDPBF16PS (2 rows 1.05-1.12x the FMA
 * kernel's speed, 3-6 rows 0.8-0.97x). */
#define DP_FMA_ROWS 3

/* Which kernel runs a matmul of @w. */
typedef enum { MM_PLAIN, MM_PANELS, MM_DP } mm_route_t;

/* Whether cpu_pack puts @w into eng_dp_mm's panels (else mm512_panels'). */
static bool dp_packed(const cpu_t *p, const mdl_tensor_t *w) {
    return p->dp && !w->exact && w->dtype == MDL_BF16;
}

static mm_route_t mm_route(const cpu_t *p, const mdl_tensor_t *w) {
    if (!w->packed) return MM_PLAIN;
    return dp_packed(p, w) ? MM_DP : p->bf16_pairs || p->pk2 ? MM_PANELS : MM_PLAIN;
}

#if defined(__x86_64__)
/* Matmuls mm[0 .. n) of one x whose weights are all packed for @route, as
 * one panel job (dp: x rounded to bf16 pairs first, all rows at once or,
 * short of memory for that, a tile or a row at a time: same bits). */
static void panel_matmuls(cpu_t *p, mm_route_t route, const float *x, size_t rows, size_t in,
                          size_t n, const eng_mm_t *mm) {
    _Atomic size_t next = 0;
    job_t j = {.x = x, .rows = rows, .in = in, .mats = mm, .n_mm = n, .next = &next};
    j.dp = route == MM_DP;
    j.amx = j.dp && p->amx;
    j.panels = !j.dp;
    j.pk2 = j.panels && p->pk2;
    for (size_t i = 0; i < n; i++)
        j.off[i + 1] = j.off[i] + (j.dp ? eng_dp_panels(mm[i].out) : pk_panels(mm[i].out));
    size_t ch = rows, nxp, work = 0;
    for (size_t i = 0; i < n; i++) work += in * mm[i].out;
    if (j.dp) {
        /* x as bf16 pairs, or as f32 for eng_dp_mm_fma (twice the room). */
        const size_t np = eng_dp_pairs(in) * (p->dp_fma && !j.amx && rows >= DP_FMA_ROWS ? 2 : 1);
        while (ch > 0 && !(cm_mul_ok(ch, np, &nxp) && xp_reserve(p, nxp)))
            ch = ch > DP_TILE ? DP_TILE : ch > 1 ? 1 : 0;
        if (!ch) {
            CM_LOG(CM_LOG_ERROR, "engine", "cpu backend: no memory for %zu bf16 inputs", in);
            for (size_t i = 0; i < n; i++) memset(mm[i].y, 0, rows * mm[i].out * sizeof(float));
            return;
        }
        j.x = p->xp;
    }
    for (size_t r = 0; r < rows; r += ch) {
        j.rows = rows - r < ch ? rows - r : ch;
        j.r0 = r;
        j.parts = p->n + 1;
        j.guided = j.rows == 1;
        j.dp_fma = j.dp && p->dp_fma && !j.amx && j.rows >= DP_FMA_ROWS;
        j.chunk = panel_chunk(j.off[n], j.rows, j.parts,
                              j.dp_fma ? eng_dp_fma_width(j.rows)
                              : j.dp   ? eng_dp_width(j.rows)
                              : j.pk2  ? eng_pk2_width(j.rows)
                                       : pk_width(j.rows));
        atomic_store_explicit(&next, 0, memory_order_relaxed);
        if (j.dp) {
            perm_job_t pj = {x + r * in, j.rows, in, p->xp};
            run_parts(p, j.dp_fma ? xconvf_slice : xconv_slice, &pj, j.rows * in);
        }
        run_parts(p, run_slice, &j, j.rows * work);
    }
}
#endif

static void cpu_matmul(void *ctx, const float *x, size_t rows, size_t in, const mdl_tensor_t *w,
                       const float *bias, size_t out, float *y) {
    cpu_t *p = ctx;
#if defined(__x86_64__)
    mm_route_t route = mm_route(p, w);
    if (route != MM_PLAIN) {
        eng_mm_t one = {w, bias, out, y};
        panel_matmuls(p, route, x, rows, in, 1, &one);
        return;
    }
#endif
    job_t j = {.x = x,
               .rows = rows,
               .in = in,
               .out = out,
               .w = w,
               .bias = bias,
               .y = y,
               .dot = p->dots[w->dtype],
               .mm = p->mms[w->dtype]};
#if defined(__x86_64__)
    size_t nxp;
    if (w->dtype == MDL_BF16 && p->bf16_pairs) {
        if (cm_mul_ok(rows, in_pairs32(in), &nxp) && xp_reserve(p, nxp)) {
            perm_job_t pj = {x, rows, in, p->xp};
            run_parts(p, perm_slice, &pj, nxp);
            j.x = p->xp;
            j.mm = mm512_bf16_pairs;
        } else {
            /* Out of memory for the copy: one dot per (row, output),
             * slower and summed in another order, but a result. */
            CM_LOG(CM_LOG_WARN, "engine", "cpu backend: no memory for a %zu x %zu matmul's x copy",
                   rows, in);
        }
    }
#endif
    run_parts(p, run_slice, &j, rows * in * out);
}

/* Matmuls of one x whose weights share a panel route run as one job;
 * others one at a time. */
static void cpu_matmul_n(void *ctx, const float *x, size_t rows, size_t in, size_t n,
                         const eng_mm_t *mm) {
    cpu_t *p = ctx;
#if defined(__x86_64__)
    const mm_route_t route = n >= 1 && n <= ENG_MM_MAX ? mm_route(p, mm[0].w) : MM_PLAIN;
    bool same = route != MM_PLAIN;
    for (size_t i = 1; same && i < n; i++) same = mm_route(p, mm[i].w) == route;
    if (same) {
        panel_matmuls(p, route, x, rows, in, n, mm);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++)
        cpu_matmul(p, x, rows, in, mm[i].w, mm[i].bias, mm[i].out, mm[i].y);
}

typedef struct {
    const cpu_t *pool;
    const eng_attn_t *a;
    size_t nblk;          /* blocks of tokens: [blk[b], blk[b + 1]) */
    _Atomic size_t *next; /* the next (block, kv head) item to hand out */
    bool amx;             /* on AMX tiles (eng_head_amx) */
} attn_job_t;

/* The ref backend's attention, one token at a time, as a eng_head_fn. */
static void head_ref(const eng_attn_t *a, size_t t0, uint32_t nq, uint32_t h, float *sc,
                     size_t stride) {
    (void)stride;
    for (uint32_t i = 0; i < nq; i++) eng_attn_head_ref(a, t0 + i, h, sc);
}

/* Items of (block, kv head) from a shared counter: the query heads that
 * share a kv head run on one thread, one after the other, while its K/V
 * rows are in cache (interleaving heads over threads made every thread
 * read every kv head); the counter balances causal prefill rows of
 * different lengths and threads the host slows. */
static void attn_slice(const void *arg, int part, int parts) {
    (void)parts;
    const attn_job_t *j = arg;
    const eng_attn_t *a = j->a;
    const size_t stride = j->pool->sc_stride;
    const uint32_t g = a->n_heads / a->kv_heads;
    float *sc = j->pool->sc + (size_t)part * j->pool->sc_per;
    const bool vec = a->head_dim % j->pool->head_w == 0;
    eng_head_fn head = vec ? j->pool->head[a->kv_bf16] : head_ref;
    eng_heads_fn heads = vec && g > 1 ? j->pool->heads[a->kv_bf16] : NULL;
    for (;;) {
        size_t i = atomic_fetch_add_explicit(j->next, 1, memory_order_relaxed);
        if (i >= j->nblk * a->kv_heads) return;
        size_t b = i / a->kv_heads, t0 = j->pool->blk[b];
        uint32_t h0 = (uint32_t)(i % a->kv_heads) * g, nq = (uint32_t)(j->pool->blk[b + 1] - t0);
        if (j->amx && nq == 1 && g > 1) /* on tiles: a token's heads as rows */
            for (uint32_t h = h0; h < h0 + g; h += ENG_ATTN_QB)
                eng_heads_amx(a, t0, h, h0 + g - h < ENG_ATTN_QB ? h0 + g - h : ENG_ATTN_QB, sc);
        else if (j->amx) /* on tiles: V's tiles built once for the kv head's query heads */
            eng_head_amx(a, t0, nq, h0, g, sc);
        else if (nq == 1 && heads) /* one token: its query heads as the rows of a block */
            for (uint32_t h = h0; h < h0 + g; h += ENG_ATTN_QB)
                heads(a, t0, h, h0 + g - h < ENG_ATTN_QB ? h0 + g - h : ENG_ATTN_QB, sc, stride);
        else
            for (uint32_t h = h0; h < h0 + g; h++) head(a, t0, nq, h, sc, stride);
    }
}

static cm_status_t cpu_attention(void *ctx, const eng_attn_t *a) {
    cpu_t *p = ctx;
    size_t most = 1;
    for (size_t t = 0; t < a->T; t++) most = a->ctx[t] > most ? a->ctx[t] : most;
    const bool amx = p->amx && a->kv_bf16 && eng_amx_attn_ok(a->head_dim);
    if (most > p->sc_stride ||
        (amx && eng_amx_attn_floats((uint32_t)most, a->head_dim) > p->sc_per)) {
        size_t stride = most > p->sc_stride ? most + 1024 : p->sc_stride,
               per = ENG_ATTN_QB * stride;
        if (amx && eng_amx_attn_floats((uint32_t)stride, a->head_dim) > per)
            per = eng_amx_attn_floats((uint32_t)stride, a->head_dim);
        float *sc = cm_realloc_array(p->sc, per * (size_t)(p->n + 1), sizeof *sc);
        if (!sc) return CM_ERR_NO_MEMORY;
        p->sc = sc;
        p->sc_stride = stride;
        p->sc_per = per;
    }
    if (a->T + 1 > p->blk_cap) {
        size_t *blk = cm_realloc_array(p->blk, a->T + 1, sizeof *blk);
        if (!blk) return CM_ERR_NO_MEMORY;
        p->blk = blk;
        p->blk_cap = a->T + 1;
    }
    /* Blocks of up to ENG_ATTN_QB consecutive tokens over the same K/V rows
     * (one sequence's tokens share one row array). */
    _Atomic size_t next = 0;
    attn_job_t j = {p, a, 0, &next, amx};
    for (size_t t = 0; t < a->T; t++)
        if (!j.nblk || t - p->blk[j.nblk - 1] == ENG_ATTN_QB ||
            a->k[t] != a->k[p->blk[j.nblk - 1]] || a->v[t] != a->v[p->blk[j.nblk - 1]])
            p->blk[j.nblk++] = t;
    p->blk[j.nblk] = a->T;
    /* A lone short row is not worth waking the pool. */
    if (a->T * a->n_heads * most * a->head_dim < (1u << 14))
        attn_slice(&j, 0, 1);
    else
        pool_run(p, attn_slice, &j);
    return CM_OK;
}

typedef struct {
    const cpu_t *pool;
    const float *x, *w;
    float *y;
    size_t rows, dim;
    float eps;
} rms_job_t;

static void rms_slice(const void *arg, int part, int parts) {
    const rms_job_t *j = arg;
    size_t lo = j->rows * (size_t)part / (size_t)parts;
    size_t hi = j->rows * (size_t)(part + 1) / (size_t)parts;
    for (size_t r = lo; r < hi; r++)
        j->pool->rms(j->x + r * j->dim, j->dim, j->w, j->eps, j->y + r * j->dim);
}

static void cpu_rmsnorm(void *ctx, const float *x, size_t rows, size_t dim, const float *weight,
                        float eps, float *y) {
    cpu_t *p = ctx;
    rms_job_t j = {p, x, weight, y, rows, dim, eps};
    if (p->n == 0 || rows * dim < (1u << 15))
        rms_slice(&j, 0, 1);
    else
        pool_run(p, rms_slice, &j);
}

typedef struct {
    const cpu_t *pool;
    float *g;
    const float *u;
    size_t n;
} swiglu_job_t;

static void swiglu_slice(const void *arg, int part, int parts) {
    const swiglu_job_t *j = arg;
    size_t lo = j->n * (size_t)part / (size_t)parts / 16 * 16;
    size_t hi = part + 1 == parts ? j->n : j->n * (size_t)(part + 1) / (size_t)parts / 16 * 16;
    if (hi > lo) j->pool->swiglu(j->g + lo, j->u + lo, hi - lo);
}

#if defined(__x86_64__)
typedef struct {
    const mdl_tensor_t *w;
    uint16_t *P;
} pack_job_t;

static void pack_slice(const void *arg, int part, int parts) {
    const pack_job_t *j = arg;
    size_t out = j->w->shape[0], np = pk_panels(out);
    pk_fill(j->w->data, j->w->dtype, j->w->shape[1], out, np * (size_t)part / (size_t)parts,
            np * (size_t)(part + 1) / (size_t)parts, j->P);
}

static void dp_pack_slice(const void *arg, int part, int parts) {
    const pack_job_t *j = arg;
    size_t out = j->w->shape[0], np = eng_dp_panels(out);
    eng_dp_fill(j->w->data, j->w->shape[1], out, np * (size_t)part / (size_t)parts,
                np * (size_t)(part + 1) / (size_t)parts, (uint32_t *)j->P);
}
#endif

/* Matrices of 32 outputs or more (bf16, f16, f32) go into mm512_panels'
 * layout on the AVX-512 and AVX2 paths (AVX2: eng_pk2_mm multiplies them),
 * or bf16 ones of 16 or more into eng_dp_mm's
 * with TANDEM_CPU_PRECISION=bf16 (not w->exact ones; f16 weights keep f32
 * inputs: rounding them to bf16 would lose 3 bits of the weights' own
 * precision); everything else stays as it is (w->packed NULL). */
static cm_status_t cpu_pack(void *ctx, mdl_tensor_t *w) {
    cpu_t *p = ctx;
    w->packed = NULL;
#if defined(__x86_64__)
    if (!(p->bf16_pairs || p->pk2) || w->ndim != 2 || !w->shape[1]) return CM_OK;
    const bool dp = dp_packed(p, w);
    if (w->shape[0] < (dp ? DP_W : PK_W)) return CM_OK;
    size_t n, bytes;
    if (dp ? !cm_mul_ok(eng_dp_panels(w->shape[0]), eng_dp_pairs(w->shape[1]), &n) ||
                 !cm_mul_ok(n, DP_W * sizeof(uint32_t), &bytes)
           : !cm_mul_ok(pk_panels(w->shape[0]), w->shape[1], &n) || !cm_mul_ok(n, PK_W, &n) ||
                 !cm_mul_ok(n, mdl_dtype_size(w->dtype), &bytes))
        return CM_ERR_NO_MEMORY;
    if (!p->weights && !(p->weights = cm_hpool_new((size_t)64 << 20))) return CM_ERR_NO_MEMORY;
    uint16_t *P = cm_hpool_alloc(p->weights, 64, bytes);
    if (!P) return CM_ERR_NO_MEMORY;
    pack_job_t j = {w, P};
    part_fn fill = dp ? dp_pack_slice : pack_slice;
    if (p->n == 0 || w->shape[0] < 4 * PK_W)
        fill(&j, 0, 1);
    else
        pool_run(p, fill, &j);
    w->packed = P;
#else
    (void)p;
#endif
    return CM_OK;
}

static void cpu_swiglu(void *ctx, float *g, const float *u, size_t n) {
    cpu_t *p = ctx;
    swiglu_job_t j = {p, g, u, n};
    if (p->n == 0 || n < (1u << 14))
        swiglu_slice(&j, 0, 1);
    else
        pool_run(p, swiglu_slice, &j);
}

static void cpu_free(void *ctx) {
    cpu_t *p = ctx;
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, true);
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    cm_free(p->threads);
    cm_free(p->sc);
    cm_free(p->blk);
    cm_aligned_free(p->xp);
    cm_hpool_free(p->weights);
    cm_free(p);
}

static const eng_backend_i k_cpu = {.name = "cpu",
                                    .matmul = cpu_matmul,
                                    .matmul_n = cpu_matmul_n,
                                    .rmsnorm = cpu_rmsnorm,
                                    .swiglu = cpu_swiglu,
                                    .attention = cpu_attention,
                                    .pack = cpu_pack,
                                    .free = cpu_free};

bool eng_cpu_isa_available(const char *isa) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                __builtin_cpu_supports("f16c");
    if (!strcmp(isa, "avx2")) return avx2;
    if (!strcmp(isa, "avx512"))
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
    return !strcmp(isa, "scalar");
}

const char *eng_cpu_isa(const eng_backend_t *b) {
    return b->iface == &k_cpu ? ((const cpu_t *)b->ctx)->isa : NULL;
}

const char *eng_cpu_precision(const eng_backend_t *b) {
    return b->iface != &k_cpu             ? NULL
           : ((const cpu_t *)b->ctx)->amx ? "bf16-amx"
           : ((const cpu_t *)b->ctx)->dp  ? "bf16"
                                          : "f32";
}

cm_status_t eng_backend_cpu_new(eng_backend_t *out) {
    cpu_t *p = cm_calloc(1, sizeof *p);
    if (!p) return CM_ERR_NO_MEMORY;
    p->dots[MDL_F32] = dot_f32_scalar;
    p->dots[MDL_BF16] = dot_bf16_scalar;
    p->dots[MDL_F16] = dot_f16_scalar;
    p->head[0] = p->head[1] = head_ref;
    p->swiglu = swiglu_scalar;
    p->rms = rmsnorm_scalar;
    p->head_w = 1;
    p->isa = "scalar";
    /* TANDEM_CPU_ISA=scalar|avx2|avx512 caps the instruction set (tests
     * run every path the machine has); unset = the best one present. */
    const char *want = getenv("TANDEM_CPU_ISA");
    int cap = !want || !*want ? 2 : !strcmp(want, "avx512") ? 2 : !strcmp(want, "avx2") ? 1 : 0;
#if defined(__x86_64__)
    if (cap >= 1 && eng_cpu_isa_available("avx2")) {
        p->mms[MDL_F32] = mm_mm256_f32;
        p->mms[MDL_BF16] = mm_mm256_bf16;
        p->mms[MDL_F16] = mm_mm256_f16;
        p->head[0] = eng_head_avx2;
        p->head[1] = eng_head_avx2_bf16;
        p->heads[0] = eng_heads_avx2;
        p->heads[1] = eng_heads_avx2_bf16;
        p->swiglu = eng_swiglu256;
        p->rms = eng_rmsnorm256;
        p->head_w = 8;
        p->isa = "avx2";
        p->pk2 = true;
    }
    if (cap >= 2 && eng_cpu_isa_available("avx512")) {
        p->mms[MDL_F32] = mm_mm512_f32;
        p->mms[MDL_BF16] = NULL; /* mm512_bf16_pairs, see cpu_matmul */
        p->bf16_pairs = true;
        p->pk2 = false;
        p->mms[MDL_F16] = mm_mm512_f16;
        p->head[0] = eng_head_avx512;
        p->head[1] = eng_head_avx512_bf16;
        p->heads[0] = eng_heads_avx512;
        p->heads[1] = eng_heads_avx512_bf16;
        p->swiglu = eng_swiglu512;
        p->rms = eng_rmsnorm512;
        p->head_w = 16;
        p->isa = "avx512";
    }
    /* TANDEM_CPU_PRECISION=bf16: matmuls with bf16 weights round their
     * inputs to bf16 (VDPBF16PS, as llama.cpp); f32 (default) keeps them
     * exact. */
    const char *prec = getenv("TANDEM_CPU_PRECISION");
    if (prec && *prec && strcmp(prec, "f32") != 0) {
        if (strcmp(prec, "bf16") != 0)
            CM_LOG(CM_LOG_WARN, "engine", "TANDEM_CPU_PRECISION=%s: not f32 or bf16, using f32",
                   prec);
        else if (!p->bf16_pairs || !eng_dp_available())
            CM_LOG(CM_LOG_WARN, "engine",
                   "TANDEM_CPU_PRECISION=bf16 needs AVX-512 with AVX512_BF16: using f32");
        else
            p->dp = true;
    }
    /* TANDEM_CPU_AMX=1 with bf16: the same products on AMX tiles (prefill
     * several times faster, one-row decode slower; for prefill workers). */
    const char *amx = getenv("TANDEM_CPU_AMX");
    if (p->dp && amx && *amx && strcmp(amx, "0") != 0) {
        if (eng_amx_available())
            p->amx = true;
        else
            CM_LOG(CM_LOG_WARN, "engine",
                   "TANDEM_CPU_AMX=%s: this CPU or kernel has no AMX-BF16: using AVX512_BF16", amx);
    }
    /* bf16 mode without AMX: batches run VDPBF16PS's products as f32 FMAs
     * (same bits) where a probe finds FMAs at least 1.5x the products per
     * second (AMX-era Xeons retire VDPBF16PS every other cycle: 2.1-2.2x;
     * there prefill 1.3-1.5x, decode at 8-64 sequences 1.2-1.4x).
     * TANDEM_CPU_BF16_FMA=0 / 1 sets it. */
    if (p->dp && !p->amx) {
        const char *fma = getenv("TANDEM_CPU_BF16_FMA");
        double up = fma && *fma ? 0 : eng_dp_fma_speedup();
        p->dp_fma = fma && *fma ? strcmp(fma, "0") != 0 : up >= 1.5;
        if (p->dp_fma && up > 0)
            CM_LOG(CM_LOG_INFO, "engine",
                   "bf16 batches: VDPBF16PS's products as f32 FMAs (%.1fx the products/s here)",
                   up);
    }
#endif
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    const char *env = getenv("TANDEM_THREADS");
    int n = env ? atoi(env) : (int)(cores > 0 ? cores : 1);
    if (n < 1) n = 1;
    if (n > 64) n = 64;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    p->threads = cm_calloc((size_t)n, sizeof *p->threads);
    if (!p->threads) {
        cpu_free(p);
        return CM_ERR_NO_MEMORY;
    }
    for (int i = 0; i < n - 1; i++) {
        worker_arg_t *wa = malloc(sizeof *wa);
        if (!wa) break;
        wa->pool = p;
        wa->idx = i;
        if (pthread_create(&p->threads[i], NULL, worker, wa) != 0) {
            free(wa);
            break;
        }
        p->n++;
    }
    out->iface = &k_cpu;
    out->ctx = p;
    return CM_OK;
}
