/*
 * eng_cpu_amx.h - the cpu backend's bf16 matmul on AMX tiles (eng_cpu_amx.c):
 * TANDEM_CPU_PRECISION=bf16 with TANDEM_CPU_AMX=1 on CPUs with AMX-BF16.
 * Same weight panels and bf16 input pairs as eng_dp_mm; products summed in
 * f32 by TDPBF16PS. Internal to the engine.
 */
#ifndef TANDEM_ENG_CPU_AMX_H
#define TANDEM_ENG_CPU_AMX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eng_backend.h"

/* Drop-in for eng_dp_mm (same arguments, same layouts): y[r][o] (+ bias[o])
 * for r < rows and the outputs of panels [p_lo, p_hi). Each row's result
 * depends only on that row and the matrix (not on @rows, the panel range
 * or the thread), so a row gives the same bits alone or in any batch; they
 * are not eng_dp_mm's bits (the tile unit sums in its own order). Needs
 * eng_amx_available(). */
void eng_amx_mm(const uint32_t *xb, size_t rows, size_t in, const uint32_t *P, size_t p_lo,
                size_t p_hi, const float *bias, size_t out, float *y);
/* True when this CPU has AMX-BF16 and AVX512_BF16 and the kernel lets this
 * process use tile data (asked once, arch_prctl ARCH_REQ_XCOMP_PERM). */
bool eng_amx_available(void);
/* Attention on tiles over bf16 K/V (eng_attn_t.kv_bf16) for head sizes
 * eng_amx_attn_ok accepts, q and the probabilities rounded to bf16, sums
 * in f32. eng_head_amx: tokens t0 .. t0 + nq - 1 (nq <= 16, one sequence)
 * and query heads h0 .. h0 + ng - 1 of one kv head; eng_heads_amx: token
 * t's query heads h0 .. h0 + ng - 1 (ng <= 16) as the rows of one block.
 * A token's rows are the same bits alone, in a block of tokens or as one
 * of its heads; not the vector kernels' bits. @sc holds
 * eng_amx_attn_floats(most context in the call, head_dim) floats. Needs
 * eng_amx_available(). */
bool eng_amx_attn_ok(uint32_t head_dim);
void eng_head_amx(const eng_attn_t *a, size_t t0, uint32_t nq, uint32_t h0, uint32_t ng, float *sc);
void eng_heads_amx(const eng_attn_t *a, size_t t, uint32_t h0, uint32_t ng, float *sc);
size_t eng_amx_attn_floats(uint32_t ctx, uint32_t head_dim);

#endif /* TANDEM_ENG_CPU_AMX_H */
