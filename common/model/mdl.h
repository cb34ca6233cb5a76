/*
 * mdl.h - Hugging Face model folders: config.json, generation_config.json
 * and safetensors weights (memory-mapped, single or sharded through
 * model.safetensors.index.json), dtypes F32, F16, BF16.
 *
 * Every error names the file and, for tensors, the tensor: a missing
 * tensor, a wrong shape, a truncated or malformed file, an unsupported
 * architecture or dtype.
 *
 * Threading: loading is single-threaded; a loaded mdl_weights_t is
 * read-only and may be used from any thread.
 */
#ifndef TANDEM_MDL_H
#define TANDEM_MDL_H

#include "cm_base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { MDL_F32 = 0, MDL_F16, MDL_BF16 } mdl_dtype_t;

typedef enum {
    MDL_ARCH_LLAMA = 0, /* LlamaForCausalLM */
    MDL_ARCH_QWEN2,     /* Qwen2ForCausalLM: QKV bias */
    MDL_ARCH_QWEN3,     /* Qwen3ForCausalLM: q/k RMSNorm */
    MDL_ARCH_MIXTRAL,   /* MixtralForCausalLM */
    MDL_ARCH_QWEN2MOE,  /* Qwen2MoeForCausalLM: shared expert + sigmoid gate */
    MDL_ARCH_QWEN3MOE,  /* Qwen3MoeForCausalLM */
} mdl_arch_t;

#define MDL_MAX_EOS 8

typedef struct {
    mdl_arch_t arch;
    char arch_name[64];
    uint32_t vocab, hidden, n_layers, n_heads, n_kv_heads, head_dim, intermediate;
    uint32_t max_position;
    float rms_eps, rope_theta;
    bool rope_llama3; /* rope_scaling rope_type llama3 */
    float rope_factor, rope_low_freq, rope_high_freq;
    uint32_t rope_orig_max;
    bool tie_embeddings, qkv_bias, qk_norm;
    /* Mixture of experts (n_experts == 0: dense). */
    uint32_t n_experts, top_k, moe_intermediate, shared_intermediate;
    bool norm_topk;
    uint32_t sparse_step;     /* layer l is MoE when (l + 1) % step == 0 */
    uint64_t mlp_only_layers; /* bit l: layer l is dense despite MoE */
    /* generation_config.json (or config.json) */
    int32_t bos;
    int32_t eos[MDL_MAX_EOS];
    uint32_t n_eos;
} mdl_config_t;

/* Reads @dir/config.json (and generation_config.json if present). */
cm_status_t mdl_config_load(const char *dir, mdl_config_t *out, char *err, size_t errlen);
/* True when layer @l of @c has a mixture-of-experts MLP. */
bool mdl_config_layer_is_moe(const mdl_config_t *c, uint32_t l);

typedef struct {
    const char *name;
    mdl_dtype_t dtype;
    uint32_t ndim;
    uint64_t shape[4];
    const void *data; /* in the mapping; valid until mdl_weights_close */
    size_t nbytes;
    /* A backend's own layout of the same values (eng_backend_i.pack), or
     * NULL; owned by whoever asked for it. */
    void *packed;
    /* Matmuls with it keep exact f32 inputs in every compute mode (MoE
     * routers: a rounded logit can change the experts chosen). */
    bool exact;
} mdl_tensor_t;

typedef struct mdl_weights mdl_weights_t;

/*
 * Maps every safetensors file of @dir and indexes its tensors. A file is
 * refused, with the file and tensor named in @err, when its header is not a
 * JSON object of {dtype, shape, data_offsets} entries, a dtype is not F32,
 * F16 or BF16 (CM_ERR_UNSUPPORTED), a tensor's data does not lie inside the
 * file (CM_ERR_TRUNCATED) or does not match product(shape) * dtype size
 * (CM_ERR_BAD_FORMAT). Tensor data is aligned to its dtype size: a tensor
 * the file does not align gets an aligned copy.
 */
cm_status_t mdl_weights_open(const char *dir, mdl_weights_t **out, char *err, size_t errlen);
void mdl_weights_close(mdl_weights_t *w);
/* Tells the kernel the mapped pages of @t's data are not needed for now
 * (a backend copied them into its own layout): they leave this process's
 * resident memory and fault back in from the file if read again. Pages
 * shared with neighbouring tensors stay. No-op for memory outside @w. */
void mdl_weights_release(const mdl_weights_t *w, const mdl_tensor_t *t);
/* Total bytes of tensor data. */
size_t mdl_weights_bytes(const mdl_weights_t *w);
/*
 * Finds tensor @name and checks it has @ndim dimensions equal to @shape
 * (an entry of 0 matches anything). CM_ERR_NOT_FOUND or
 * CM_ERR_BAD_FORMAT (shape) with the reason in @err.
 */
cm_status_t mdl_weights_get(const mdl_weights_t *w, const char *name, uint32_t ndim,
                            const uint64_t *shape, mdl_tensor_t *out, char *err, size_t errlen);
/* Like mdl_weights_get but a missing tensor is not an error (*found false). */
cm_status_t mdl_weights_find(const mdl_weights_t *w, const char *name, uint32_t ndim,
                             const uint64_t *shape, mdl_tensor_t *out, bool *found, char *err,
                             size_t errlen);

const char *mdl_dtype_name(mdl_dtype_t t);
size_t mdl_dtype_size(mdl_dtype_t t);

#ifdef __cplusplus
}
#endif
#endif /* TANDEM_MDL_H */
