/*
 * eng_internal.h - the loaded model as the forward passes see it: shared by
 * eng_model.c (host backends) and eng_cuda.cu (which uploads it). Not part
 * of the public API.
 */
#ifndef TANDEM_ENG_INTERNAL_H
#define TANDEM_ENG_INTERNAL_H

#include "eng.h"
#include "eng_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    mdl_tensor_t gate, up, down; /* [ff][h], [ff][h], [h][ff] */
} mlp_t;

typedef struct {
    float *attn_norm, *mlp_norm; /* [hidden] f32 */
    float *q_norm, *k_norm;      /* [head_dim] f32 (Qwen3) */
    mdl_tensor_t wq, wk, wv, wo;
    float *bq, *bk, *bv; /* biases (Qwen2) or NULL */
    bool moe;
    mlp_t mlp;           /* dense */
    mdl_tensor_t router; /* [experts][hidden] */
    mlp_t *experts;
    bool has_shared;
    mlp_t shared;
    mdl_tensor_t shared_gate; /* [1][hidden] */
} layer_t;

struct eng_model {
    mdl_config_t c;
    mdl_weights_t *w;
    eng_backend_t be;
    eng_backend_kind_t kind;
    mdl_tensor_t embed, lm_head;
    float *final_norm;
    layer_t *layers;
    float *inv_freq; /* [head_dim / 2] */
    size_t weight_bytes;
    struct eng_cuda *cuda; /* the cuda backend's device copy, or NULL */
    bool kv_bf16;          /* KV cache rows in bf16 (TANDEM_KV_DTYPE), else f32 */
    /* Scratch, grown as needed. */
    float *buf;
    size_t buf_cap;
};

#ifdef __cplusplus
}
#endif
#endif /* TANDEM_ENG_INTERNAL_H */
