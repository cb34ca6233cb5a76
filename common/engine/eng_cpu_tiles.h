/*
 * eng_cpu_tiles.h - the tile loop shared by the cpu backend's panel
 * kernels (eng_cpu.c's f32-input panels, eng_cpu_dp.c's bf16 dot
 * products). Internal to the engine.
 */
#ifndef TANDEM_ENG_CPU_TILES_H
#define TANDEM_ENG_CPU_TILES_H

#include <stddef.h>

/* One block of a panel kernel: rows [r, r + R) of @x (row stride @xs
 * elements) against panels p .. p + NP - 1 of @P, indexes past @p_hi
 * clamped to its last panel (computed, not stored). */
typedef void (*eng_blk_fn)(const void *x, size_t xs, const void *P, size_t r, size_t p, size_t p_hi,
                           const float *bias, size_t out, float *y);

typedef struct {
    size_t rows, panels; /* R, NP of the block */
    eng_blk_fn fn;
} eng_blk_shape_t;

/* Rows [0, rows) in tiles of @tile against panels [p_lo, p_hi). In each
 * tile @s[0] takes as many whole blocks of rows as fit, @s[1] as many of
 * the rest, and so on (the last shape has 1 row). Per shape, blocks of
 * panels outer and blocks of rows inner: a block's panels stay in cache
 * while the tile's rows pass. */
static inline void eng_panel_tiles(const eng_blk_shape_t *s, int ns, size_t tile, const void *x,
                                   size_t rows, size_t xs, const void *P, size_t p_lo, size_t p_hi,
                                   const float *bias, size_t out, float *y) {
    for (size_t r0 = 0; r0 < rows; r0 += tile) {
        size_t r1 = r0 + tile < rows ? r0 + tile : rows, lo = r0;
        for (int k = 0; k < ns; k++) {
            size_t hi = lo + (r1 - lo) / s[k].rows * s[k].rows;
            for (size_t p = p_lo; lo < hi && p < p_hi; p += s[k].panels)
                for (size_t r = lo; r < hi; r += s[k].rows)
                    s[k].fn(x, xs, P, r, p, p_hi, bias, out, y);
            lo = hi;
        }
    }
}

/* One row of @x against panels [p_lo, p_hi): blocks of @s[0].panels,
 * the tail in the smaller blocks of @s[1..] (descending to 1 panel), so
 * no panel is computed twice and a range may end on any panel. */
static inline void eng_panel_row(const eng_blk_shape_t *s, int ns, const void *x, size_t xs,
                                 const void *P, size_t p_lo, size_t p_hi, const float *bias,
                                 size_t out, float *y) {
    for (size_t p = p_lo; p < p_hi;) {
        int k = 0;
        while (k + 1 < ns && p_hi - p < s[k].panels) k++;
        s[k].fn(x, xs, P, 0, p, p_hi, bias, out, y);
        p += s[k].panels;
    }
}

#endif /* TANDEM_ENG_CPU_TILES_H */
