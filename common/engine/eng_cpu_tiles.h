/*
 * eng_cpu_tiles.h - the tile loop shared by the cpu backend's panel
 * kernels (eng_cpu.c's f32-input panels, eng_cpu_dp.c's bf16 dot
 * products). Internal to the engine.
 */
#ifndef TANDEM_ENG_CPU_TILES_H
#define TANDEM_ENG_CPU_TILES_H

#include <stdbool.h>
#include <stddef.h>

/* One block of a panel kernel: rows [r, r + R) of @x (row stride @xs
 * elements) against panels p .. p + NP - 1 of @P, indexes past @p_hi
 * clamped to its last panel (computed, not stored). @nt: whole lines of
 * y written with non-temporal stores (the caller fences). */
typedef void (*eng_blk_fn)(const void *x, size_t xs, const void *P, size_t r, size_t p, size_t p_hi,
                           const float *bias, size_t out, float *y, bool nt);

typedef struct {
    size_t rows, panels; /* R, NP of the block */
    eng_blk_fn fn;
} eng_blk_shape_t;

/* The blocks a panel kernel has for a tile of rows: @one[n - 1] takes a
 * whole tile of n <= @max_one rows in one pass over the panels; bigger
 * tiles go in blocks of @many[R - @max_many / 2] (R rows, all of one
 * panel width), R between @max_many / 2 and @max_many. */
typedef struct {
    const eng_blk_shape_t *one, *many;
    int max_one, max_many;
    size_t tile; /* rows per tile: a tile's x stays in L2 */
} eng_panel_plan_t;

/* Up to this many rows (decode batches, the weights streaming from
 * memory) the kernels write y with non-temporal stores: a store to a line
 * not in cache (y was last written a layer ago) otherwise stalls the
 * stream (decode 8 and 12 sequences 1.17x); bigger products keep y in
 * cache for the next op. */
#define ENG_NT_ROWS 16

/* Rows [0, rows) in tiles of at most @s->tile rows, of sizes within one
 * of each other (no small last tile), against panels [p_lo, p_hi). Each
 * weight line comes from memory once per tile, whatever the number of
 * rows: a tile of up to @max_one rows is one block, a bigger one blocks
 * of sizes within one of each other, each reading a panel right after the
 * tile's first block fetched it (from L1 or L2). So a decode batch of 3,
 * 7 or 13 sequences costs about the memory traffic of one. */
static inline void eng_panel_tiles(const eng_panel_plan_t *s, const void *x, size_t rows, size_t xs,
                                   const void *P, size_t p_lo, size_t p_hi, const float *bias,
                                   size_t out, float *y) {
    const size_t nt = (rows + s->tile - 1) / s->tile;
    const bool nts = rows <= ENG_NT_ROWS;
    for (size_t t = 0; t < nt; t++) {
        size_t r0 = rows * t / nt, n = rows * (t + 1) / nt - r0;
        if (n <= (size_t)s->max_one) {
            const eng_blk_shape_t *b = &s->one[n - 1];
            for (size_t p = p_lo; p < p_hi; p += b->panels)
                b->fn(x, xs, P, r0, p, p_hi, bias, out, y, nts);
            continue;
        }
        const size_t nb = (n + (size_t)s->max_many - 1) / (size_t)s->max_many,
                     lo = (size_t)s->max_many / 2;
        for (size_t p = p_lo; p < p_hi; p += s->many[0].panels)
            for (size_t i = 0, r = r0; i < nb; i++) {
                size_t R = (n - (r - r0)) / (nb - i); /* the rest shared out evenly */
                s->many[R - lo].fn(x, xs, P, r, p, p_hi, bias, out, y, nts);
                r += R;
            }
    }
}

/* The panel width of the blocks eng_panel_tiles runs for @rows rows: a
 * job's chunks of panels are multiples of it, so no block reaches past a
 * chunk's end (where it would compute the chunk's last panel again). */
static inline size_t eng_panel_width(const eng_panel_plan_t *s, size_t rows) {
    return rows && rows <= (size_t)s->max_one ? s->one[rows - 1].panels : s->many[0].panels;
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
        s[k].fn(x, xs, P, 0, p, p_hi, bias, out, y, true);
        p += s[k].panels;
    }
}

#endif /* TANDEM_ENG_CPU_TILES_H */
