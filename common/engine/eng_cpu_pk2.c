/*
 * eng_cpu_pk2.c - the panel matmul on AVX2 (see eng_cpu_pk2.h).
 *
 * The panels are mm512_panels' (eng_cpu.c, pk_fill): per input k, one
 * line of the panel's 32 weights (64 bytes of bf16 in output order, or of
 * f16 with the 16 even outputs' first, or 128 bytes of f32 likewise). A
 * 256-bit kernel takes a line in two halves: half h gives outputs 16h + 2i
 * in lane i of one vector (bf16: a shift; f16: VCVTPH2PS of 8 halves; f32:
 * a load) and 16h + 2i + 1 in another (bf16: a mask), four accumulators
 * per row and panel. y[r][o] is one FMA chain over k in order from 0,
 * whatever the block shape, batch or thread split: the bits of the
 * AVX-512 kernels and of the ref backend.
 *
 * Blocks (16 vector registers): one row against 3 panels (12 chains,
 * the decode case: 3 streams of lines fetched ahead; a range's last
 * panels in blocks of 2 and 1; 1.1x the 2-panel block's decode tok/s on a
 * Zen 3 core); 2 to 6 rows against one panel, a half at a time (blkh: 2R
 * chains, each widened half line used by R rows, the second half read
 * again from cache; on Zen 3 prefill 1.4x and batched decode 1.2-1.4x
 * what 2 and 3 rows x both halves did). A tile of up to 6 rows is one
 * block per panel, a bigger one blocks of 3 to 6 rows, each panel's
 * blocks one after another so the panel comes from memory once per tile
 * (eng_panel_tiles).
 */
#if defined(__x86_64__)
#include "eng_cpu_pk2.h"

#include <immintrin.h>
#include <stdbool.h>

#include "eng_cpu_ops.h"
#include "eng_cpu_tiles.h"

#define PK2_TILE 48 /* rows per tile: a tile's x stays in L2 */
#define PK2_PF   16 /* lines of a panel fetched ahead */

/* uint16_t units per input of a panel of type @T. */
#define LW(T) ((T) == ENG_PK_F32 ? 2 * ENG_PK_W : ENG_PK_W)

/* Half @h of input @k's line of panel @pp as f32: lane i of *@e is output
 * 16h + 2i, of *@o output 16h + 2i + 1. */
AVX2 __attribute__((always_inline)) static inline void
ld(const uint16_t *pp, size_t k, int h, const int T, __m256i mask, __m256 *e, __m256 *o) {
    const uint16_t *l = pp + k * LW(T);
    if (T == ENG_PK_F32) {
        *e = _mm256_load_ps((const float *)l + 8 * h);
        *o = _mm256_load_ps((const float *)l + 16 + 8 * h);
    } else if (T == ENG_PK_F16) {
        *e = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(l + 8 * h)));
        *o = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(l + 16 + 8 * h)));
    } else {
        __m256i raw = _mm256_load_si256((const __m256i *)(l + 16 * h));
        __asm__("" : "+x"(raw)); /* one load, not one folded into each use */
        *e = _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
        *o = _mm256_castsi256_ps(_mm256_and_si256(raw, mask));
    }
}

/* Outputs 16h .. 16h + 15 of a panel from its even / odd sums, + bias,
 * into @yr (@n of them valid, n >= 1); whole aligned lines non-temporal
 * with @nt. */
AVX2 __attribute__((always_inline)) static inline void put(float *yr, __m256 e, __m256 o,
                                                           const float *b, size_t n, bool nt) {
    __m256 lo = _mm256_unpacklo_ps(e, o), hi = _mm256_unpackhi_ps(e, o);
    __m256 v[2] = {_mm256_permute2f128_ps(lo, hi, 0x20), _mm256_permute2f128_ps(lo, hi, 0x31)};
    for (int s = 0; s < 2; s++) {
        size_t m = n > (size_t)8 * s ? n - (size_t)8 * s : 0;
        if (!m) break;
        float *d = yr + 8 * s;
        if (m >= 8) {
            __m256 w = b ? _mm256_add_ps(v[s], _mm256_loadu_ps(b + 8 * s)) : v[s];
            if (nt && !((uintptr_t)d & 31))
                _mm256_stream_ps(d, w);
            else
                _mm256_storeu_ps(d, w);
        } else {
            const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            __m256i mk = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)m), idx);
            __m256 w = v[s];
            if (b) w = _mm256_add_ps(w, _mm256_maskload_ps(b + 8 * s, mk));
            _mm256_maskstore_ps(d, mk, w);
        }
    }
}

/* Row @r of x against panels p .. p + NP - 1 (NP <= 3; indexes past
 * @p_hi clamped to its last panel: computed, not stored): the decode
 * block, NP streams of lines fetched ahead of the hardware prefetcher
 * (prefetches never fault), each half line widened and used at once. */
AVX2 __attribute__((always_inline)) static inline void
row(const float *x, size_t in, const uint16_t *P, size_t r, size_t p, size_t p_hi,
    const float *bias, size_t out, float *y, bool nt, const int NP, const int T) {
    const __m256i mask = _mm256_set1_epi32((int)0xFFFF0000u);
    const uint16_t *src[3];
    __m256 se[3][2], so[3][2]; /* [panel][half]: even / odd outputs */
#pragma GCC unroll 3
    for (int q = 0; q < NP; q++) {
        size_t pq = p + (size_t)q < p_hi ? p + (size_t)q : p_hi - 1;
        src[q] = P + pq * in * LW(T);
        se[q][0] = se[q][1] = so[q][0] = so[q][1] = _mm256_setzero_ps();
    }
    const float *xr = x + r * in;
    for (size_t k = 0; k < in; k++) {
        const __m256 xb = _mm256_broadcast_ss(xr + k);
#pragma GCC unroll 3
        for (int q = 0; q < NP; q++) {
            _mm_prefetch(src[q] + (k + PK2_PF) * LW(T), _MM_HINT_T0);
            if (T == ENG_PK_F32) _mm_prefetch(src[q] + (k + PK2_PF) * LW(T) + 32, _MM_HINT_T0);
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                __m256 we, wo;
                ld(src[q], k, h, T, mask, &we, &wo);
                se[q][h] = _mm256_fmadd_ps(xb, we, se[q][h]);
                so[q][h] = _mm256_fmadd_ps(xb, wo, so[q][h]);
            }
        }
    }
    float *yr = y + r * out;
#pragma GCC unroll 3
    for (int q = 0; q < NP; q++) {
        if (p + (size_t)q >= p_hi) break;
        size_t o0 = (p + (size_t)q) * ENG_PK_W, n = out - o0 < ENG_PK_W ? out - o0 : ENG_PK_W;
        put(yr + o0, se[q][0], so[q][0], bias ? bias + o0 : NULL, n, nt);
        if (n > 16) put(yr + o0 + 16, se[q][1], so[q][1], bias ? bias + o0 + 16 : NULL, n - 16, nt);
    }
}

/* Rows [r, r + R) of x (R <= 6) against panel @p, one half of it at a
 * time: 2R accumulators, one line half widened per input and used by R
 * rows (the 6 x 16 outputs of a BLIS-style AVX2 kernel, 12 FMAs to 2
 * widening uops per input), the panel's second half read again from
 * cache. */
AVX2 __attribute__((always_inline)) static inline void
blkh(const float *x, size_t in, const uint16_t *P, size_t r, size_t p, size_t p_hi,
     const float *bias, size_t out, float *y, bool nt, const int R, const int T) {
    const __m256i mask = _mm256_set1_epi32((int)0xFFFF0000u);
    const uint16_t *pp = P + (p < p_hi ? p : p_hi - 1) * in * LW(T);
    const size_t o0 = p * ENG_PK_W, n = out - o0 < ENG_PK_W ? out - o0 : ENG_PK_W;
    const float *xr = x + r * in;
    for (int h = 0; h < 2; h++) {
        __m256 ae[6], ao[6];
#pragma GCC unroll 6
        for (int i = 0; i < R; i++) ae[i] = ao[i] = _mm256_setzero_ps();
        for (size_t k = 0; k < in; k++) {
            if (!h) {
                _mm_prefetch(pp + (k + PK2_PF) * LW(T), _MM_HINT_T0);
                if (T == ENG_PK_F32) _mm_prefetch(pp + (k + PK2_PF) * LW(T) + 32, _MM_HINT_T0);
            }
            __m256 we, wo;
            ld(pp, k, h, T, mask, &we, &wo);
#pragma GCC unroll 6
            for (int i = 0; i < R; i++) {
                __m256 xb = _mm256_broadcast_ss(xr + (size_t)i * in + k);
                ae[i] = _mm256_fmadd_ps(xb, we, ae[i]);
                ao[i] = _mm256_fmadd_ps(xb, wo, ao[i]);
            }
        }
        if (p >= p_hi || n <= (size_t)16 * h) continue;
#pragma GCC unroll 6
        for (int i = 0; i < R; i++)
            put(y + (r + (size_t)i) * out + o0 + 16 * h, ae[i], ao[i],
                bias ? bias + o0 + 16 * h : NULL, n - 16 * (size_t)h, nt);
    }
}

/* The block @name of each panel type: @fn(..., args, type). */
#define PK2_BLOCK(name, fn, ...)                                                                 \
    AVX2 static void b16_##name(const void *x, size_t in, const void *P, size_t r, size_t p,     \
                                size_t p_hi, const float *bias, size_t out, float *y, bool nt) { \
        fn(x, in, P, r, p, p_hi, bias, out, y, nt, __VA_ARGS__, ENG_PK_BF16);                    \
    }                                                                                            \
    AVX2 static void h16_##name(const void *x, size_t in, const void *P, size_t r, size_t p,     \
                                size_t p_hi, const float *bias, size_t out, float *y, bool nt) { \
        fn(x, in, P, r, p, p_hi, bias, out, y, nt, __VA_ARGS__, ENG_PK_F16);                     \
    }                                                                                            \
    AVX2 static void f32_##name(const void *x, size_t in, const void *P, size_t r, size_t p,     \
                                size_t p_hi, const float *bias, size_t out, float *y, bool nt) { \
        fn(x, in, P, r, p, p_hi, bias, out, y, nt, __VA_ARGS__, ENG_PK_F32);                     \
    }
PK2_BLOCK(1x3, row, 3)
PK2_BLOCK(1x2, row, 2)
PK2_BLOCK(1x1, row, 1)
PK2_BLOCK(2x1h, blkh, 2)
PK2_BLOCK(3x1h, blkh, 3)
PK2_BLOCK(4x1h, blkh, 4)
PK2_BLOCK(5x1h, blkh, 5)
PK2_BLOCK(6x1h, blkh, 6)

#define BLK(R, NP, t) \
    { R, NP, t##_##R##x##NP }
#define BLKH(R, t) \
    { R, 1, t##_##R##x1h }
#define ONE(t) \
    { BLK(1, 1, t), BLKH(2, t), BLKH(3, t), BLKH(4, t), BLKH(5, t), BLKH(6, t) }
#define MANY(t) \
    { BLKH(3, t), BLKH(4, t), BLKH(5, t), BLKH(6, t) }
static const eng_blk_shape_t k_one[3][6] = {ONE(b16), ONE(h16), ONE(f32)};
static const eng_blk_shape_t k_many[3][4] = {MANY(b16), MANY(h16), MANY(f32)};
static const eng_panel_plan_t k_plan[3] = {{k_one[0], k_many[0], 6, 6, PK2_TILE},
                                           {k_one[1], k_many[1], 6, 6, PK2_TILE},
                                           {k_one[2], k_many[2], 6, 6, PK2_TILE}};
static const eng_blk_shape_t k_row[3][3] = {{BLK(1, 3, b16), BLK(1, 2, b16), BLK(1, 1, b16)},
                                            {BLK(1, 3, h16), BLK(1, 2, h16), BLK(1, 1, h16)},
                                            {BLK(1, 3, f32), BLK(1, 2, f32), BLK(1, 1, f32)}};

void eng_pk2_mm(const float *x, size_t rows, size_t in, const uint16_t *P, size_t p_lo, size_t p_hi,
                const float *bias, size_t out, float *y, int T) {
    if (rows == 1) /* decode: blocks of 3 panels, the tail in 2 and 1 */
        eng_panel_row(k_row[T], 3, x, in, P, p_lo, p_hi, bias, out, y);
    else
        eng_panel_tiles(&k_plan[T], x, rows, in, P, p_lo, p_hi, bias, out, y);
    _mm_sfence(); /* the non-temporal stores, before the job ends */
}

size_t eng_pk2_width(size_t rows) { return eng_panel_width(&k_plan[ENG_PK_BF16], rows); }
#endif
