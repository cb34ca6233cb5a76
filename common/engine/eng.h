/*
 * eng.h - the model engine: loads a Hugging Face checkpoint (common/model)
 * onto a compute backend and runs the forward pass over the paged KV cache
 * (eng_kvcache.h) for a mixed batch: prompt chunks of some sequences and
 * single decode tokens of others, in one call.
 *
 * Architectures: Llama (incl. llama3 RoPE scaling, tied embeddings), Qwen2
 * (QKV bias), Qwen3 (q/k RMSNorm), Mixtral, Qwen2-MoE (shared expert with
 * sigmoid gate), Qwen3-MoE (norm_topk_prob). On the host backends
 * activations and the KV cache are f32 and weights stay in their checkpoint
 * dtype (bf16/f16/f32, mmap'd); the cuda backend (eng_cuda.h) feeds its
 * GEMMs in the weights' dtype and keeps an f32 KV pool in device memory.
 *
 * Threading: a model is read-only after loading; one thread runs
 * eng_forward at a time per model (it keeps scratch buffers).
 */
#ifndef TANDEM_ENG_H
#define TANDEM_ENG_H

#include "eng_kvcache.h"
#include "mdl.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct eng_model eng_model_t;

typedef enum { ENG_BACKEND_REF = 0, ENG_BACKEND_CPU, ENG_BACKEND_CUDA } eng_backend_kind_t;

/* Parses "ref", "cpu", "cuda". */
cm_status_t eng_backend_parse(const char *s, eng_backend_kind_t *out);

/* Loads @dir on @backend. Errors name the file/tensor in @err. */
cm_status_t eng_model_load(const char *dir, eng_backend_kind_t backend, eng_model_t **out,
                           char *err, size_t errlen);
void eng_model_free(eng_model_t *m);
const mdl_config_t *eng_model_config(const eng_model_t *m);
const char *eng_model_backend_name(const eng_model_t *m);
/* The cpu backend's matmul input precision ("f32", "bf16" or "bf16-amx", see
 * eng_cpu_precision); NULL for other backends. */
const char *eng_model_cpu_precision(const eng_model_t *m);
/* Bytes of weights read per forward pass over all layers (dense path,
 * top-k experts per MoE layer), LM head included. */
size_t eng_model_weight_bytes(const eng_model_t *m);
/* Bytes of the LM head alone (applied once per sequence in prefill). */
size_t eng_model_lm_head_bytes(const eng_model_t *m);

/* True when the model computes on a GPU: its KV pool must then be device
 * memory from eng_model_kv_alloc (ENG_KV_MEM_EXTERNAL, mem_is_host false). */
bool eng_model_on_device(const eng_model_t *m);
/* The GPU's name for the cuda backend, "cpu" otherwise. */
const char *eng_model_device_name(const eng_model_t *m);
/* Zeroed pool memory of @bytes where the backend computes: device memory for
 * cuda; NULL for the host backends (let the block manager allocate) or when
 * the device is full. Release with eng_model_kv_release after eng_kv_free. */
void *eng_model_kv_alloc(eng_model_t *m, size_t bytes);
void eng_model_kv_release(eng_model_t *m, void *mem);

/* The KV cache's element type, "f32" or "bf16" (TANDEM_KV_DTYPE; "auto"
 * gives bf16 with TANDEM_CPU_PRECISION=bf16 on the cpu backend). */
const char *eng_model_kv_dtype(const eng_model_t *m);
/* KV geometry of this model for a pool of @n_blocks blocks of @block_size
 * tokens (all layers, all KV heads, eng_model_kv_dtype elements). */
eng_kv_geom_t eng_model_kv_geom(const eng_model_t *m, uint32_t n_blocks, uint32_t block_size);
/* Layout fingerprint of that pool (model name, dtype, block size, heads,
 * head_dim, TP 1): peers with different fingerprints refuse each other. */
uint64_t eng_model_kv_fingerprint(const eng_model_t *m, const char *model_id, uint32_t block_size);

/* One entry of a forward batch: @n new tokens of @seq at positions
 * [start, start + n), already appended to the sequence; positions before
 * @start are computed (their KV is in the pool). */
typedef struct {
    eng_kv_seq_t *seq;
    uint32_t start;
    uint32_t n;
    bool logits; /* wants the logits row of its last new token */
} eng_item_t;

/*
 * Runs the model on @n items: writes the new tokens' K/V into their
 * sequences' blocks in @kv and, for items with .logits, one row of vocab
 * floats each into consecutive rows of @logits. Items are independent:
 * results do not depend on what else is in the batch. Errors:
 * CM_ERR_INVALID_ARG (bad item), CM_ERR_NO_MEMORY.
 */
cm_status_t eng_forward(eng_model_t *m, eng_kv_t *kv, const eng_item_t *items, size_t n,
                        float *logits);

/* Called during a forward pass once layer @layer's K/V rows of every item
 * are in the pool (before that layer's attention runs), on the calling
 * thread: a prefill worker ships layer @layer's blocks while the next
 * layers compute. The pass can still fail after the hook ran (out of
 * memory): whoever ships blocks from the hook keeps them until those sends
 * ended. The cuda backend computes into device memory and calls it for
 * every layer after the step has finished. */
typedef void (*eng_layer_fn)(void *ud, uint32_t layer);

/* eng_forward with a layer hook (@on_layer may be NULL). */
cm_status_t eng_forward_hooked(eng_model_t *m, eng_kv_t *kv, const eng_item_t *items, size_t n,
                               float *logits, eng_layer_fn on_layer, void *ud);

#ifdef __cplusplus
}
#endif
#endif /* TANDEM_ENG_H */
