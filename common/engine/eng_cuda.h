/*
 * eng_cuda.h - the cuda backend: the whole forward pass on one GPU.
 *
 * Weights are uploaded once (dense and expert matrices in the checkpoint's
 * dtype, or f32 when TANDEM_CUDA_COMPUTE=f32; Q/K/V and gate/up projections
 * concatenated so each is one GEMM); cuBLAS runs every matrix product (bf16
 * tensor cores with f32 accumulation, or f32 without TF32); kernels do the
 * embedding, RMSNorm (fused with the residual add), bias + q/k norm + RoPE +
 * the paged-KV write (one kernel), paged attention with an online softmax,
 * SwiGLU, the MoE router's softmax/top-k, token grouping per expert (one
 * GEMM per expert per batch) and the weighted combine. The KV pool must be
 * device memory (eng_model_kv_alloc). Logits come back to the host, where
 * the sampler runs.
 *
 * Built only with CUDA (eng_cuda_nocuda.c answers CM_ERR_UNSUPPORTED
 * otherwise). Threading: as eng_forward (one thread at a time per model).
 */
#ifndef TANDEM_ENG_CUDA_H
#define TANDEM_ENG_CUDA_H

#include "eng.h"

#ifdef __cplusplus
extern "C" {
#endif

struct eng_model;
struct eng_cuda;

/* Uploads the loaded host model @m to device 0 (TANDEM_CUDA_DEVICE picks
 * another). CM_ERR_UNSUPPORTED without CUDA, CM_ERR_NO_DEVICE without a GPU,
 * CM_ERR_NO_MEMORY when the weights do not fit; the reason is in @err. */
cm_status_t eng_cuda_new(const struct eng_model *m, struct eng_cuda **out, char *err,
                         size_t errlen);
void eng_cuda_free(struct eng_cuda *c);
/* eng_forward on the GPU; items already validated by the caller. */
cm_status_t eng_cuda_forward(struct eng_cuda *c, const struct eng_model *m, eng_kv_t *kv,
                             const eng_item_t *items, size_t n, float *logits);
/* Device memory for a KV pool (zeroed), or NULL. */
void *eng_cuda_kv_alloc(struct eng_cuda *c, size_t bytes);
void eng_cuda_kv_free(struct eng_cuda *c, void *p);
/* Bytes of device memory the weights take. */
size_t eng_cuda_weight_bytes(const struct eng_cuda *c);
/* Device name, "" when none. */
const char *eng_cuda_device_name(const struct eng_cuda *c);

/* Measurements for `tandem bench engine --backend cuda`, in the same run:
 * device-to-device copy bandwidth over @bytes (read + written bytes per
 * second, GB/s) and the cuBLAS bf16 GEMM rate on an n x n x n product
 * (TFLOP/s). 0 on failure. */
double eng_cuda_copy_gbps(size_t bytes);
double eng_cuda_gemm_tflops(int n);

#ifdef __cplusplus
}
#endif
#endif /* TANDEM_ENG_CUDA_H */
