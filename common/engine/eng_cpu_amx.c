/*
 * eng_cpu_amx.c - bf16 matmul on AMX tiles (TDPBF16PS): the opt-in
 * TANDEM_CPU_AMX=1 of the TANDEM_CPU_PRECISION=bf16 mode.
 *
 * eng_dp_mm's panels are already AMX's B layout: the 16 pairs kk .. kk + 15
 * of panel p are 16 lines of 64 bytes (dword j = the pair of output
 * 16p + j), one B tile. The bf16 input pairs of 16 rows, 16 pairs each,
 * are one A tile (row stride: the row's pairs). A block is 32 rows x 2
 * panels (2 A tiles, 2 B tiles, 4 C tiles of f32) or, for fewer rows, up
 * to 16 rows x 4 panels (one A tile, B tiles 5-7 in turn). Pairs
 * past the last whole group of 16 are added after the tiles, with
 * VDPBF16PS on the stored sums, in order. Every row goes through the same
 * steps whatever the block height (a tile's rows are independent), so
 * results do not depend on the batch.
 *
 * Prefill-sized products run several times faster than VDPBF16PS; one
 * row streams the panels about 10% slower (tile loads, measured on a
 * 2-core Xeon VM): the mode is meant for prefill workers.
 */
#include "eng_cpu_amx.h"

#include <math.h>
#include <string.h>

#include "eng_cpu_dp.h"
#include "eng_cpu_ops.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#define AMX                                                                                  \
    __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16," \
                          "xsave")))

#define AMX_PANELS 4  /* C tiles per block */
#define AMX_ROWS   16 /* rows per block: a tile's height */
#define AMX_RT     64 /* rows per pass over a group of panels (their x stays in L2) */

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_cfg_t;

/* Tiles 0-3: C, @m rows of 16 f32; 4: A, @m rows of 16 pairs; 5-7: B, 16
 * pairs of 16 outputs. Loading a configuration zeroes every tile. */
AMX static void amx_config(int m) {
    amx_cfg_t c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) {
        c.rows[t] = (uint8_t)(t < 5 ? m : 16);
        c.colsb[t] = 64;
    }
    _tile_loadconfig(&c);
}

/* C tiles for rows [r, r + m) (the configured height) and panels p .. p +
 * n - 1 over the first @nk pairs (a multiple of 16), stored to c[q]. */
AMX static void amx_block(const uint32_t *xb, size_t np, size_t nk, const uint32_t *P, size_t p,
                          int n, size_t r, float c[AMX_PANELS][AMX_ROWS][16]) {
    const uint32_t *a = xb + r * np, *b[AMX_PANELS];
    for (int q = 0; q < AMX_PANELS; q++) b[q] = P + (p + (size_t)(q < n ? q : 0)) * np * DP_W;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (size_t k = 0; k < nk; k += 16) {
        _tile_loadd(4, a + k, (long)(np * 4));
        _tile_loadd(5, b[0] + k * DP_W, 64);
        _tile_dpbf16ps(0, 4, 5);
        if (n > 1) {
            _tile_loadd(6, b[1] + k * DP_W, 64);
            _tile_dpbf16ps(1, 4, 6);
        }
        if (n > 2) {
            _tile_loadd(7, b[2] + k * DP_W, 64);
            _tile_dpbf16ps(2, 4, 7);
        }
        if (n > 3) {
            _tile_loadd(5, b[3] + k * DP_W, 64);
            _tile_dpbf16ps(3, 4, 5);
        }
    }
    _tile_stored(0, c[0], 64);
    _tile_stored(1, c[1], 64);
    _tile_stored(2, c[2], 64);
    _tile_stored(3, c[3], 64);
}

/* 32 rows [r, r + 32) x panels p, p + 1 (height 16 configured): A tiles 4
 * and 5, B tiles 6 and 7, one load per product; c[0], c[1] the first 16
 * rows, c[2], c[3] the next. The same products as amx_block's, per row. */
AMX static void amx_block22(const uint32_t *xb, size_t np, size_t nk, const uint32_t *P, size_t p,
                            size_t r, float c[AMX_PANELS][AMX_ROWS][16]) {
    const uint32_t *a0 = xb + r * np, *a1 = a0 + 16 * np, *b0 = P + p * np * DP_W,
                   *b1 = b0 + np * DP_W;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (size_t k = 0; k < nk; k += 16) {
        _tile_loadd(4, a0 + k, (long)(np * 4));
        _tile_loadd(6, b0 + k * DP_W, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_loadd(7, b1 + k * DP_W, 64);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(5, a1 + k, (long)(np * 4));
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, c[0], 64);
    _tile_stored(1, c[1], 64);
    _tile_stored(2, c[2], 64);
    _tile_stored(3, c[3], 64);
}

/* Rows [r, r + m) x panels p .. p + n - 1 from the tile sums: the pairs
 * [nk, np) added in order, the bias, stored (outputs past @out dropped). */
AMX static void amx_finish(const uint32_t *xb, size_t np, size_t nk, const uint32_t *P, size_t p,
                           int n, size_t r, int m, const float (*c)[AMX_ROWS][16],
                           const float *bias, size_t out, float *y) {
    for (int q = 0; q < n; q++) {
        const uint32_t *pan = P + (p + (size_t)q) * np * DP_W;
        size_t o0 = (p + (size_t)q) * DP_W, w = out - o0 < DP_W ? out - o0 : DP_W;
        __mmask16 mk = (__mmask16)(w >= 16 ? 0xFFFF : (1u << w) - 1);
        __m512 bv = bias ? _mm512_maskz_loadu_ps(mk, bias + o0) : _mm512_setzero_ps();
        for (int i = 0; i < m; i++) {
            const uint32_t *xr = xb + (r + (size_t)i) * np;
            __m512 acc = _mm512_loadu_ps(c[q][i]);
            for (size_t kk = nk; kk < np; kk++)
                acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_set1_epi32((int)xr[kk]),
                                       (__m512bh)_mm512_load_si512(pan + kk * DP_W));
            if (bias) acc = _mm512_add_ps(acc, bv);
            _mm512_mask_storeu_ps(y + (r + (size_t)i) * out + o0, mk, acc);
        }
    }
}

AMX static void amx_mm(const uint32_t *xb, size_t rows, size_t in, const uint32_t *P, size_t p_lo,
                       size_t p_hi, const float *bias, size_t out, float *y) {
    const size_t np = eng_dp_pairs(in), nk = np / 16 * 16;
    float c[AMX_PANELS][AMX_ROWS][16] __attribute__((aligned(64)));
    int cur = 0;
    for (size_t r0 = 0; r0 < rows; r0 += AMX_RT) {
        size_t r1 = rows - r0 < AMX_RT ? rows : r0 + AMX_RT;
        for (size_t p = p_lo; p < p_hi; p += AMX_PANELS) {
            int n = (int)(p_hi - p < AMX_PANELS ? p_hi - p : AMX_PANELS);
            for (size_t r = r0; r < r1; r += AMX_ROWS) {
                int m = (int)(r1 - r < AMX_ROWS ? r1 - r : AMX_ROWS);
                if (nk && n >= 2 && r1 - r >= 2 * AMX_ROWS) { /* 2 x 2 tiles, then 1 x 1 */
                    if (cur != AMX_ROWS) amx_config(cur = AMX_ROWS);
                    for (int q = 0; q < n; q += 2) {
                        if (q + 1 < n) {
                            amx_block22(xb, np, nk, P, p + (size_t)q, r, c);
                            amx_finish(xb, np, nk, P, p + (size_t)q, 2, r, AMX_ROWS, c, bias, out,
                                       y);
                            amx_finish(xb, np, nk, P, p + (size_t)q, 2, r + AMX_ROWS, AMX_ROWS,
                                       (const float(*)[AMX_ROWS][16])c + 2, bias, out, y);
                            continue;
                        }
                        for (size_t h = 0; h < 2 * AMX_ROWS; h += AMX_ROWS) {
                            amx_block(xb, np, nk, P, p + (size_t)q, 1, r + h, c);
                            amx_finish(xb, np, nk, P, p + (size_t)q, 1, r + h, AMX_ROWS, c, bias,
                                       out, y);
                        }
                    }
                    r += AMX_ROWS; /* and the loop's */
                    continue;
                }
                if (nk) {
                    if (m != cur) amx_config(cur = m);
                    amx_block(xb, np, nk, P, p, n, r, c);
                } else {
                    memset(c, 0, sizeof c);
                }
                amx_finish(xb, np, nk, P, p, n, r, m, c, bias, out, y);
            }
        }
    }
    if (cur) _tile_release();
}

void eng_amx_mm(const uint32_t *xb, size_t rows, size_t in, const uint32_t *P, size_t p_lo,
                size_t p_hi, const float *bias, size_t out, float *y) {
    amx_mm(xb, rows, in, P, p_lo, p_hi, bias, out, y);
}

/* ---- attention on tiles ------------------------------------------------
 * Up to 16 rows (a block of tokens of one head, or one token's query heads
 * of one kv head) over bf16 K/V rows, q and the probabilities rounded to
 * bf16 as the matmuls' inputs are. Scores transposed, S^T = K Q^T: A
 * tiles are 16 key rows straight from the pool (32 values of a head at a
 * time), B tiles Q^T as pairs; the softmax runs down the 16 rows at once
 * (lane i = row i, keys in order: a row's sums do not depend on the other
 * rows or on keys past its context, which weigh 0); P then goes to A
 * tiles (a row's probabilities as pairs of keys) and V to B tiles (pairs
 * of key rows interleaved), O = P V. Keys in chunks of 16 (scores) and
 * 32 (sums) from position 0, so every row takes the same steps whatever
 * shares its block: a token gives the same bits alone, in a block of
 * tokens or as one of its heads. */
#define AMXA                                                                                 \
    __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16," \
                          "xsave,fma,f16c")))

static inline bool rows_uniform(const eng_kv_row_t *K, uint32_t p0, ptrdiff_t *rs) {
    *rs = K[p0 + 1].h - K[p0].h;
    for (uint32_t i = 2; i < 16; i++)
        if (K[p0 + i].h != K[p0].h + (ptrdiff_t)i * *rs) return false;
    return true;
}

/* V's B tiles for keys [0, npad) (rows past nmax - 1 repeat it; their
 * probabilities are 0): tile (c, j) at vt + (c * hd / 16 + j) * 256 holds,
 * for pair kp, the values of columns 16j .. 16j + 15 of key rows 32c + 2kp
 * and 32c + 2kp + 1 interleaved. Built once for all query heads of a kv
 * head. */
AMXA static void amx_v_tiles(const eng_kv_row_t *V, size_t kvo, uint32_t nmax, uint32_t hd,
                             uint32_t *vt) {
    const uint32_t npad = (nmax + 31) / 32 * 32, nt = hd / 16;
    for (uint32_t c = 0; c < npad / 32; c++)
        for (uint32_t kp = 0; kp < 16; kp++) {
            uint32_t p0 = c * 32 + 2 * kp, p1 = p0 + 1;
            const uint16_t *v0 = V[p0 < nmax ? p0 : nmax - 1].h + kvo,
                           *v1 = V[p1 < nmax ? p1 : nmax - 1].h + kvo;
            for (uint32_t j = 0; j < nt; j++)
                _mm512_storeu_si512(
                    vt + ((size_t)c * nt + j) * 256 + kp * 16,
                    _mm512_or_si512(
                        _mm512_cvtepu16_epi32(
                            _mm256_loadu_si256((const __m256i *)(const void *)(v0 + 16 * j))),
                        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(
                                              (const __m256i *)(const void *)(v1 + 16 * j))),
                                          16)));
        }
}

/* One head's 16 rows after their scores (S^T at @st, [npad][16]): softmax
 * down the rows (lane i stops at rctx[i]), P's tiles after S^T, O = P V
 * into ov[i] for i < nq. Tiles configured by the caller. */
AMXA static void amx_softmax_pv(const eng_attn_t *a, const uint32_t *vt, uint32_t nq,
                                float *const *ov, const uint32_t *rctx, uint32_t nmax, float *st,
                                float (*ct)[16]) {
    const uint32_t hd = a->head_dim, npad = (nmax + 31) / 32 * 32;
    uint32_t *pa = (uint32_t *)(void *)(st + (size_t)npad * 16); /* P: [npad / 32][16][16] */
    /* Softmax down the rows: lane i stops at rctx[i]. */
    const __m512i ctxv = _mm512_loadu_si512(rctx);
    const __m512 scale = _mm512_set1_ps(a->scale);
    __m512 mx = _mm512_set1_ps(-INFINITY), sum = _mm512_setzero_ps();
    for (uint32_t p = 0; p < nmax; p++) {
        __mmask16 live = _mm512_cmpgt_epu32_mask(ctxv, _mm512_set1_epi32((int)p));
        __m512 s = _mm512_mul_ps(_mm512_loadu_ps(st + (size_t)p * 16), scale);
        _mm512_storeu_ps(st + (size_t)p * 16, s);
        mx = _mm512_mask_max_ps(mx, live, mx, s);
    }
    for (uint32_t p = 0; p < nmax; p++) {
        __mmask16 live = _mm512_cmpgt_epu32_mask(ctxv, _mm512_set1_epi32((int)p));
        __m512 e = _mm512_maskz_mov_ps(
            live, exp512(_mm512_sub_ps(_mm512_loadu_ps(st + (size_t)p * 16), mx)));
        _mm512_storeu_ps(st + (size_t)p * 16, e);
        sum = _mm512_add_ps(sum, e);
    }
    for (uint32_t p = nmax; p < npad; p++)
        _mm512_storeu_ps(st + (size_t)p * 16, _mm512_setzero_ps());
    /* P as A tiles: row i, pair kp = keys 2kp, 2kp + 1 of the chunk. */
    const __m512i lane16 =
        _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                           _mm512_set1_epi32(16));
    for (uint32_t c = 0; c < npad / 32; c++)
        for (uint32_t kp = 0; kp < 16; kp++) {
            size_t p = (size_t)c * 32 + 2 * kp;
            __m256i lo =
                (__m256i)_mm512_cvtneps_pbh(_mm512_div_ps(_mm512_loadu_ps(st + p * 16), sum));
            __m256i hi =
                (__m256i)_mm512_cvtneps_pbh(_mm512_div_ps(_mm512_loadu_ps(st + (p + 1) * 16), sum));
            __m512i d = _mm512_or_si512(_mm512_cvtepu16_epi32(lo),
                                        _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16));
            _mm512_i32scatter_epi32(pa + (size_t)c * 256 + kp, lane16, d, 4);
        }
    /* O = P V, 16 output columns per C tile, 4 tiles at a time. */
    for (uint32_t g = 0; g < hd / 16; g += 4) {
        const uint32_t nt = hd / 16 - g < 4 ? hd / 16 - g : 4;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (uint32_t c = 0; c < npad / 32; c++) {
            const uint32_t *v = vt + ((size_t)c * (hd / 16) + g) * 256;
            _tile_loadd(4, pa + (size_t)c * 256, 64);
            _tile_loadd(5, v, 64);
            _tile_dpbf16ps(0, 4, 5);
            if (nt > 1) {
                _tile_loadd(6, v + 256, 64);
                _tile_dpbf16ps(1, 4, 6);
            }
            if (nt > 2) {
                _tile_loadd(7, v + 512, 64);
                _tile_dpbf16ps(2, 4, 7);
            }
            if (nt > 3) {
                _tile_loadd(5, v + 768, 64);
                _tile_dpbf16ps(3, 4, 5);
            }
        }
#define AMX_OUT(T)                                                       \
    if (nt > (T)) {                                                      \
        _tile_stored(T, ct, 64);                                         \
        for (uint32_t i = 0; i < nq; i++)                                \
            memcpy(ov[i] + (size_t)(g + (T)) * 16, ct[i], sizeof ct[i]); \
    }
        AMX_OUT(0)
        AMX_OUT(1)
        AMX_OUT(2)
        AMX_OUT(3)
#undef AMX_OUT
    }
}

#define AMX_HEADS 4 /* query heads whose scores share each key tile */

/* Floats of scratch amx_attn_rows needs past the V tiles for @nmax keys:
 * per head S^T ([npad][16] f32), then P's tiles ([npad / 32][16][16]). */
static size_t amx_attn_scratch(uint32_t nmax) {
    return (size_t)(nmax + 31) / 32 * 32 * 24 * AMX_HEADS;
}

/* @nh <= AMX_HEADS query heads of one kv head over the same 16 rows
 * (tokens): qv[h][i] / ov[h][i] is row i's q / output of head h. Their
 * scores take each tile of 16 key rows once; then each head's softmax
 * and P V on its own (the same steps, per head, as one head alone). */
AMXA static void amx_attn_rows(const eng_attn_t *a, const eng_kv_row_t *K, const uint32_t *vt,
                               size_t kvo, uint32_t nq, uint32_t nh,
                               const float *const qv[AMX_HEADS][16], float *const ov[AMX_HEADS][16],
                               const uint32_t *rctx, uint32_t nmax, float *scb) {
    const uint32_t hd = a->head_dim, nc = hd / 32, npad = (nmax + 31) / 32 * 32;
    _Alignas(64) uint32_t qt[AMX_HEADS][8][16][16]; /* Q^T: [head][chunk c][pair kp][row i] */
    _Alignas(64) uint16_t kb[16][256];              /* key rows that are not evenly spaced */
    _Alignas(64) float ct[16][16];
    for (uint32_t h = 0; h < nh; h++)
        for (uint32_t i = 0; i < 16; i++) {
            uint16_t qh[256]; /* row i in bf16; pair j = values 2j, 2j + 1 */
            eng_bf16_round_row(qv[h][i], hd, qh);
            for (uint32_t j = 0; j < hd / 2; j++) memcpy(&qt[h][j / 16][j % 16][i], qh + 2 * j, 4);
        }
    amx_config(16);
    /* Scores: 16 keys x 16 rows per C tile, C tile h for head h. */
    for (uint32_t k0 = 0; k0 < nmax; k0 += 16) {
        ptrdiff_t rs = 0;
        const uint16_t *k = NULL;
        if (k0 + 16 <= nmax && rows_uniform(K, k0, &rs)) {
            k = K[k0].h + kvo;
        } else {
            for (uint32_t i = 0; i < 16; i++)
                memcpy(kb[i], K[k0 + i < nmax ? k0 + i : nmax - 1].h + kvo, hd * 2);
            k = kb[0];
            rs = 256;
        }
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (uint32_t c = 0; c < nc; c++) {
            _tile_loadd(4, k + 32 * c, (long)(rs * 2));
            _tile_loadd(5, qt[0][c], 64);
            _tile_dpbf16ps(0, 4, 5);
            if (nh > 1) {
                _tile_loadd(6, qt[1][c], 64);
                _tile_dpbf16ps(1, 4, 6);
            }
            if (nh > 2) {
                _tile_loadd(7, qt[2][c], 64);
                _tile_dpbf16ps(2, 4, 7);
            }
            if (nh > 3) {
                _tile_loadd(5, qt[3][c], 64);
                _tile_dpbf16ps(3, 4, 5);
            }
        }
        const size_t at = (size_t)k0 * 16, hs = (size_t)npad * 24;
        _tile_stored(0, scb + at, 64);
        if (nh > 1) _tile_stored(1, scb + hs + at, 64);
        if (nh > 2) _tile_stored(2, scb + 2 * hs + at, 64);
        if (nh > 3) _tile_stored(3, scb + 3 * hs + at, 64);
    }
    for (uint32_t h = 0; h < nh; h++)
        amx_softmax_pv(a, vt, nq, ov[h], rctx, nmax, scb + (size_t)h * npad * 24, ct);
    _tile_release();
}

bool eng_amx_attn_ok(uint32_t head_dim) { return head_dim % 32 == 0 && head_dim <= 256; }

void eng_head_amx(const eng_attn_t *a, size_t t0, uint32_t nq, uint32_t h0, uint32_t ng,
                  float *sc) {
    const uint32_t hd = a->head_dim;
    const size_t qd = (size_t)a->n_heads * hd, kvo = (size_t)(h0 / (a->n_heads / a->kv_heads)) * hd;
    const float *qv[AMX_HEADS][16];
    float *ov[AMX_HEADS][16];
    _Alignas(64) uint32_t rctx[16];
    uint32_t nmax = 0;
    for (uint32_t i = 0; i < 16; i++) { /* padding rows repeat the last token */
        size_t ti = t0 + (i < nq ? i : nq - 1);
        rctx[i] = a->ctx[ti];
        nmax = rctx[i] > nmax ? rctx[i] : nmax;
    }
    uint32_t *vt = (uint32_t *)(void *)(sc + amx_attn_scratch(nmax));
    amx_v_tiles(a->v[t0], kvo, nmax, hd, vt);
    for (uint32_t h = h0; h < h0 + ng; h += AMX_HEADS) {
        uint32_t nh = h0 + ng - h < AMX_HEADS ? h0 + ng - h : AMX_HEADS;
        for (uint32_t x = 0; x < nh; x++)
            for (uint32_t i = 0; i < 16; i++) {
                size_t ti = t0 + (i < nq ? i : nq - 1);
                qv[x][i] = a->q + ti * qd + (size_t)(h + x) * hd;
                ov[x][i] = a->out + ti * qd + (size_t)(h + x) * hd;
            }
        amx_attn_rows(a, a->k[t0], vt, kvo, nq, nh, qv, ov, rctx, nmax, sc);
    }
}

void eng_heads_amx(const eng_attn_t *a, size_t t, uint32_t h0, uint32_t ng, float *sc) {
    const uint32_t hd = a->head_dim;
    const size_t qd = (size_t)a->n_heads * hd, kvo = (size_t)(h0 / (a->n_heads / a->kv_heads)) * hd;
    const float *qv[AMX_HEADS][16];
    float *ov[AMX_HEADS][16];
    _Alignas(64) uint32_t rctx[16];
    for (uint32_t i = 0; i < 16; i++) { /* padding rows repeat the last head */
        uint32_t hi = h0 + (i < ng ? i : ng - 1);
        qv[0][i] = a->q + t * qd + (size_t)hi * hd;
        ov[0][i] = a->out + t * qd + (size_t)hi * hd;
        rctx[i] = a->ctx[t];
    }
    uint32_t *vt = (uint32_t *)(void *)(sc + amx_attn_scratch(a->ctx[t]));
    amx_v_tiles(a->v[t], kvo, a->ctx[t], hd, vt);
    amx_attn_rows(a, a->k[t], vt, kvo, ng, 1, qv, ov, rctx, a->ctx[t], sc);
}

size_t eng_amx_attn_floats(uint32_t ctx, uint32_t head_dim) {
    return amx_attn_scratch(ctx) + (size_t)(ctx + 31) / 32 * 32 * head_dim / 2;
}

#define ARCH_REQ_XCOMP_PERM_ 0x1023
#define XFEATURE_XTILEDATA_  18

AMX static unsigned long long amx_xcr0(void) { return _xgetbv(0); }

bool eng_amx_available(void) {
    static _Atomic int have = -1; /* first calls may race: all store the same value */
    if (have < 0) {
        unsigned a, b, c, d;
        bool ok = eng_dp_available() && __get_cpuid_count(7, 0, &a, &b, &c, &d) &&
                  (d & (1u << 22)) && (d & (1u << 24)); /* AMX-BF16, AMX-TILE */
        /* The OS saves tile state (XCR0 bits 17, 18; OSXSAVE checked by
         * eng_dp_available's AVX-512) and lets this process use it. */
        ok = ok && (amx_xcr0() & (3ull << 17)) == (3ull << 17) &&
             syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM_, XFEATURE_XTILEDATA_) == 0;
        have = ok;
    }
    return have;
}
#else
void eng_amx_mm(const uint32_t *xb, size_t rows, size_t in, const uint32_t *P, size_t p_lo,
                size_t p_hi, const float *bias, size_t out, float *y) {
    (void)xb, (void)rows, (void)in, (void)P, (void)p_lo, (void)p_hi, (void)bias, (void)out, (void)y;
}

bool eng_amx_available(void) { return false; }
bool eng_amx_attn_ok(uint32_t head_dim) {
    (void)head_dim;
    return false;
}
void eng_head_amx(const eng_attn_t *a, size_t t0, uint32_t nq, uint32_t h0, uint32_t ng,
                  float *sc) {
    (void)a, (void)t0, (void)nq, (void)h0, (void)ng, (void)sc;
}
void eng_heads_amx(const eng_attn_t *a, size_t t, uint32_t h0, uint32_t ng, float *sc) {
    (void)a, (void)t, (void)h0, (void)ng, (void)sc;
}
size_t eng_amx_attn_floats(uint32_t ctx, uint32_t head_dim) {
    (void)ctx, (void)head_dim;
    return 0;
}
#endif
