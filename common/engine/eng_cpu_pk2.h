/*
 * eng_cpu_pk2.h - the cpu backend's panel matmul on AVX2 (eng_cpu_pk2.c):
 * the panels eng_cpu.c packs at load (32 outputs each, bf16, f16 or f32)
 * multiplied with 256-bit FMAs, for CPUs without AVX-512. Internal to the
 * engine.
 */
#ifndef TANDEM_ENG_CPU_PK2_H
#define TANDEM_ENG_CPU_PK2_H

#include <stddef.h>
#include <stdint.h>

#define ENG_PK_W 32 /* outputs per panel */

/* A panel's weight type. */
enum { ENG_PK_BF16, ENG_PK_F16, ENG_PK_F32 };

/* y[r][o] (+ bias[o]) for r < rows and the outputs of panels [p_lo, p_hi)
 * of @P (a [out][in] matrix's panels of type @T). Each output is one FMA
 * chain over the inputs in order from 0, as mm512_panels and the ref
 * backend sum it: the same bits alone or in any batch, on either ISA. */
void eng_pk2_mm(const float *x, size_t rows, size_t in, const uint16_t *P, size_t p_lo, size_t p_hi,
                const float *bias, size_t out, float *y, int T);
/* The panel width of eng_pk2_mm's blocks for @rows rows (chunks of panels
 * are multiples of it). */
size_t eng_pk2_width(size_t rows);

#endif /* TANDEM_ENG_CPU_PK2_H */
