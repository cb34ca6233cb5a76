/*
 * eng_cpu_dp.h - the cpu backend's bf16 dot-product matmul (eng_cpu_dp.c):
 * the TANDEM_CPU_PRECISION=bf16 mode on CPUs with AVX512_BF16. Internal to
 * the engine.
 */
#ifndef TANDEM_ENG_CPU_DP_H
#define TANDEM_ENG_CPU_DP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DP_W    16 /* outputs per panel */
#define DP_TILE 48 /* rows per tile: a tile of x stays in L2 while the panels stream */

/* Panels for @out outputs; bf16 pairs for @in inputs. */
size_t eng_dp_panels(size_t out);
size_t eng_dp_pairs(size_t in);
/* Panels [p_lo, p_hi) of bf16 @w ([out][in]) into @P (eng_dp_panels(out)
 * * eng_dp_pairs(in) * DP_W dwords, 64-byte aligned). */
void eng_dp_fill(const uint16_t *w, size_t in, size_t out, size_t p_lo, size_t p_hi, uint32_t *P);
/* Rows [r0, r1) of x ([rows][in] f32) rounded to bf16 pairs into @xb (row
 * stride eng_dp_pairs(in) dwords); the AVX512_BF16 conversion when the CPU
 * has it, else eng_dp_xconv_ref (same bits). */
void eng_dp_xconv(const float *x, size_t r0, size_t r1, size_t in, uint32_t *xb);
void eng_dp_xconv_ref(const float *x, size_t r0, size_t r1, size_t in, uint32_t *xb);
/* y[r][o] (+ bias[o]) for r < rows and the outputs of panels [p_lo, p_hi).
 * Needs eng_dp_available(). */
void eng_dp_mm(const uint32_t *xb, size_t rows, size_t in, const uint32_t *P, size_t p_lo,
               size_t p_hi, const float *bias, size_t out, float *y);
/* The panel width of eng_dp_mm's blocks for @rows rows (chunks of panels
 * are multiples of it). */
size_t eng_dp_width(size_t rows);
/* eng_dp_mm's products as f32 FMAs, for CPUs that run VDPBF16PS at a
 * fraction of their FMA rate (AMX-era Xeons: half the products per
 * second): the same bits (each pair's odd product, then its even one,
 * each rounded once; DAZ and FTZ set for the products). @xf is x rounded to
 * bf16 as f32 (eng_dp_xconv_f32: row stride 2 * eng_dp_pairs(in)).
 * Chunks of panels are multiples of eng_dp_fma_width(rows). Needs
 * eng_dp_available(). */
void eng_dp_mm_fma(const float *xf, size_t rows, size_t in, const uint32_t *P, size_t p_lo,
                   size_t p_hi, const float *bias, size_t out, float *y);
void eng_dp_xconv_f32(const float *x, size_t r0, size_t r1, size_t in, float *xf);
size_t eng_dp_fma_width(size_t rows);
/* Products per second of VFMADD231PS over those of VDPBF16PS on this CPU,
 * measured in register-only loops (~1 ms); 0 where not measured. */
double eng_dp_fma_speedup(void);
/* True when this CPU runs eng_dp_mm (AVX-512 with AVX512_BF16). */
bool eng_dp_available(void);
/* For tests: the bf16 of @f as the conversion rounds it, and one output
 * of eng_dp_mm computed in plain C. */
uint16_t eng_dp_bf16(float f);
/* y[i] = eng_dp_bf16(x[i]) for i < @n (KV cache rows), 8 at a time with
 * AVX2. */
void eng_bf16_round_row(const float *x, size_t n, uint16_t *y);
float eng_dp_ref_dot(const uint32_t *xr, const uint32_t *P, size_t in, size_t o);

#endif /* TANDEM_ENG_CPU_DP_H */
