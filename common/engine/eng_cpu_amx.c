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

#include <string.h>

#include "eng_cpu_dp.h"

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
#endif
