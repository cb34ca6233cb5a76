/*
 * eng_kvcache.h - the paged KV block manager (DESIGN.md section 3).
 *
 * The KV pool is cut into blocks of `block_size` tokens. One block id names
 * the same slot in every layer; the memory of one (layer, block) pair is
 * `block_bytes` contiguous bytes laid out as
 *
 *     pool[layer][block][K|V][block_size][kv_heads][head_dim]   (dtype_bytes each)
 *
 * so for one layer the blocks of a request are contiguous when their ids are
 * adjacent (kvxfer coalesces them into one put), and one layer's blocks can
 * leave as soon as that layer is computed. `kv_heads` here is the number of
 * KV heads this process holds (the per-rank count under tensor parallelism).
 *
 * Each block is in exactly one state:
 *   FREE    refcount 0, no hash, on the free stack (last freed = next given);
 *   CACHED  refcount 0, registered in the prefix cache under its chained hash,
 *           on the LRU list; it is evicted (hash dropped, content forgotten)
 *           only when an allocation finds the free stack empty;
 *   USED    refcount > 0 (held by that many sequences / reservations); may
 *           also be registered in the prefix cache.
 *
 * A sequence owns a block table (block ids, one per `block_size` tokens), its
 * token ids, and the chained hash of every full block. Tokens are first
 * appended (slots allocated), then marked computed once the forward pass wrote
 * their KV; only full, computed blocks are registered in the prefix cache, so
 * nobody can share a block whose KV is not there yet. Blocks shared between
 * sequences (prefix hits, forks) are always full and are never written again.
 *
 * Block identity: hash_i = cm_block_hash(hash_{i-1}, fingerprint, tokens of
 * block i), hash_{-1} = 0 (see cm_base.h). Two blocks with the same hash are
 * treated as holding the same KV (64-bit collisions are accepted, as in
 * vLLM's default).
 *
 * When a sequence is freed, its blocks are released tail first: a block whose
 * refcount drops to 0 goes to the most-recently-used end of the LRU list if
 * it is registered, else onto the free stack. Releasing tail first makes the
 * last blocks of a prefix the first to be evicted.
 *
 * Threading: an eng_kv_t and its sequences are not thread-safe; one thread
 * (the engine's scheduler thread) owns them. The pool memory itself may be
 * read and written by any thread (forward pass, UCX) under the owner's
 * coordination.
 */
#ifndef TANDEM_ENG_KVCACHE_H
#define TANDEM_ENG_KVCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cm_base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Hard limits that keep every size computation far from overflow. */
#define ENG_KV_MAX_BLOCKS     (1u << 24)
#define ENG_KV_MAX_LAYERS     1024u
#define ENG_KV_MAX_BLOCK_SIZE 4096u
#define ENG_KV_MAX_SEQ_TOKENS (1u << 26)

/* Geometry of a KV pool. Every field must be nonzero. */
typedef struct {
    uint32_t n_layers;    /* layers stored in this pool */
    uint32_t n_blocks;    /* blocks per layer (block ids are 0..n_blocks-1) */
    uint32_t block_size;  /* tokens per block */
    uint32_t kv_heads;    /* KV heads held by this process */
    uint32_t head_dim;    /* elements per head */
    uint32_t dtype_bytes; /* bytes per element (2 for bf16/f16, 4 for f32) */
} eng_kv_geom_t;

/* Returns CM_OK when @g is usable (all fields nonzero, within the limits
 * above, pool size fits in size_t); CM_ERR_INVALID_ARG or CM_ERR_TOO_LARGE. */
cm_status_t eng_kv_geom_check(const eng_kv_geom_t *g);
/* Bytes of one (layer, block): 2 * block_size * kv_heads * head_dim *
 * dtype_bytes. @g must have passed eng_kv_geom_check. */
size_t eng_kv_geom_block_bytes(const eng_kv_geom_t *g);
/* Bytes of the whole pool: n_layers * n_blocks * block_bytes. */
size_t eng_kv_geom_pool_bytes(const eng_kv_geom_t *g);
/* Byte offset of (layer, block) from the pool base:
 * (layer * n_blocks + block) * block_bytes. Inside one block, K starts at 0
 * and V at block_bytes / 2; the K or V element of (token t, head h, dim d)
 * is at ((t * kv_heads + h) * head_dim + d) * dtype_bytes from there.
 * Returns CM_ERR_OUT_OF_RANGE for a layer or block outside the geometry. */
cm_status_t eng_kv_geom_offset(const eng_kv_geom_t *g, uint32_t layer, int32_t block, size_t *out);

/* What the layout fingerprint covers. Strings must be non-NULL. */
typedef struct {
    const char *model_id; /* e.g. the HF repo name or a checkpoint digest */
    const char *dtype;    /* KV dtype name: "bf16", "f16", "f32" */
    uint32_t n_layers;
    uint32_t block_size;
    uint32_t kv_heads; /* total KV heads of the model (not per rank) */
    uint32_t head_dim;
    uint32_t tp_size; /* tensor-parallel degree (1 without TP) */
} eng_kv_fp_params_t;

/*
 * Layout fingerprint: XXH64 (seed 0) of the bytes
 *   "tandem-kv-fp-v1" | u32 len(model_id) | model_id | u32 len(dtype) | dtype |
 *   u32 n_layers | u32 block_size | u32 kv_heads | u32 head_dim | u32 tp_size
 * with every u32 little-endian. Peers exchange it on connect and it seeds the
 * block hashes, so mismatched layouts never share or accept blocks.
 * Returns 0 only if @p or one of its strings is NULL.
 */
uint64_t eng_kv_fingerprint(const eng_kv_fp_params_t *p);

typedef enum {
    ENG_KV_MEM_NONE = 0, /* bookkeeping only: no pool memory (block_ptr gives NULL) */
    ENG_KV_MEM_ALLOC,    /* the manager allocates the pool (4096-aligned host memory) */
    ENG_KV_MEM_EXTERNAL, /* the caller provides it (host, pinned or device memory) */
} eng_kv_mem_mode_t;

typedef enum {
    ENG_KV_EVENT_STORED = 1,  /* a block was registered in the prefix cache */
    ENG_KV_EVENT_REMOVED = 2, /* a registered block was evicted or the cache reset */
} eng_kv_event_t;

/* Called synchronously from the operation that caused the event, on the
 * owner's thread. It must not call back into the manager. */
typedef void (*eng_kv_event_fn)(void *ud, eng_kv_event_t ev, uint64_t hash, int32_t block);

typedef struct {
    eng_kv_geom_t geom;
    uint64_t fingerprint; /* seeds the chained block hashes (eng_kv_fingerprint) */
    eng_kv_mem_mode_t mem_mode;
    void *mem;                /* ENG_KV_MEM_EXTERNAL: pool base, not owned */
    size_t mem_bytes;         /* ENG_KV_MEM_EXTERNAL: must be >= the pool size */
    bool mem_is_host;         /* ENG_KV_MEM_EXTERNAL: memory is CPU-addressable */
    bool prefault;            /* ENG_KV_MEM_ALLOC: write every page now */
    bool enable_prefix_cache; /* false: never register or look up blocks */
    eng_kv_event_fn on_event; /* optional */
    void *event_ud;
} eng_kv_config_t;

typedef struct eng_kv eng_kv_t;
typedef struct eng_kv_seq eng_kv_seq_t;

/* Creates a manager with every block FREE. Returns CM_OK and *out, or
 * CM_ERR_INVALID_ARG (bad geometry, external memory too small or NULL),
 * CM_ERR_NO_MEMORY. The caller frees it with eng_kv_free. */
cm_status_t eng_kv_init(const eng_kv_config_t *cfg, eng_kv_t **out);
/* Frees the manager, every sequence and reservation still open, and the pool
 * memory when the manager allocated it. NULL is a no-op. */
void eng_kv_free(eng_kv_t *kv);

const eng_kv_geom_t *eng_kv_geom(const eng_kv_t *kv);
uint64_t eng_kv_fingerprint_of(const eng_kv_t *kv);
/* Pool base (NULL in ENG_KV_MEM_NONE) and size in bytes. */
void *eng_kv_pool_base(const eng_kv_t *kv);
size_t eng_kv_pool_bytes(const eng_kv_t *kv);
/* Address of (layer, block): base + eng_kv_geom_offset. NULL when out of
 * range or there is no pool memory. */
void *eng_kv_block_ptr(const eng_kv_t *kv, uint32_t layer, int32_t block);
/* K and V addresses of token slot @offset (< block_size) of @block in @layer:
 * each points at [kv_heads][head_dim] elements. Returns CM_ERR_OUT_OF_RANGE,
 * or CM_ERR_UNSUPPORTED when there is no pool memory. */
cm_status_t eng_kv_slot_ptrs(const eng_kv_t *kv, uint32_t layer, int32_t block, uint32_t offset,
                             void **k, void **v);
/* Copies block @src to block @dst in every layer (host memory only).
 * Returns CM_ERR_UNSUPPORTED without host memory, CM_ERR_OUT_OF_RANGE. */
cm_status_t eng_kv_block_copy(eng_kv_t *kv, int32_t src, int32_t dst);

/* Block counts and counters. n_free + n_cached + n_used == n_blocks. */
typedef struct {
    uint32_t n_blocks;
    uint32_t n_free;         /* FREE */
    uint32_t n_cached;       /* CACHED (refcount 0, evictable) */
    uint32_t n_used;         /* refcount > 0 */
    uint32_t n_seqs;         /* open sequences, reservations included */
    uint32_t n_reservations; /* open reservations */
    uint32_t n_registered;   /* blocks in the prefix cache (CACHED or USED) */
    uint64_t n_evictions;    /* cached blocks evicted so far */
    uint64_t n_query_blocks; /* full blocks looked up by new/reserve */
    uint64_t n_hit_blocks;   /* ... of which were found in the cache */
} eng_kv_stats_t;

void eng_kv_stats(const eng_kv_t *kv, eng_kv_stats_t *out);
/* Blocks an allocation can obtain now (FREE + CACHED). */
uint32_t eng_kv_available(const eng_kv_t *kv);
/* Blocks needed to hold @n_tokens tokens: ceil(n_tokens / block_size). */
uint32_t eng_kv_blocks_for(const eng_kv_t *kv, uint64_t n_tokens);

/*
 * Verifies every internal invariant (block states and lists, refcounts equal
 * to the references held by open sequences, hash index, per-sequence tables
 * and hashes). Returns CM_OK, CM_ERR_INTERNAL (the first violation is logged
 * under "kv"), or CM_ERR_NO_MEMORY. O(n_blocks + total table length); meant
 * for tests and debug builds.
 */
cm_status_t eng_kv_check(const eng_kv_t *kv);

/* ---- prefix cache ---------------------------------------------------- */

/* Number of leading full blocks of @tokens[0..n) registered in the prefix
 * cache (stops at the first miss). Pure: changes no LRU order or counters. */
uint32_t eng_kv_prefix_lookup(const eng_kv_t *kv, const int32_t *tokens, uint32_t n);
/* Returns true when a block with @hash is registered. */
bool eng_kv_cache_contains(const eng_kv_t *kv, uint64_t hash);
/* Evicts every CACHED block (REMOVED events); USED blocks stay registered. */
void eng_kv_cache_reset(eng_kv_t *kv);

/* ---- sequences ------------------------------------------------------- */

/*
 * Opens a sequence holding @tokens[0..n). Its leading full blocks that are in
 * the prefix cache are shared (at most floor(@max_hit_tokens / block_size) of
 * them; pass n - 1 so that at least one token is left to compute logits for),
 * the rest get fresh blocks. The shared tokens count as computed.
 * Returns CM_OK with *out and *n_hit_tokens (hit blocks * block_size; may be
 * NULL), CM_ERR_INVALID_ARG (negative token id, NULL), CM_ERR_TOO_LARGE (n >
 * ENG_KV_MAX_SEQ_TOKENS), CM_ERR_NO_RESOURCES (not enough blocks),
 * CM_ERR_NO_MEMORY. On error nothing changed.
 */
cm_status_t eng_kv_seq_new(eng_kv_t *kv, const int32_t *tokens, uint32_t n, uint32_t max_hit_tokens,
                           eng_kv_seq_t **out, uint32_t *n_hit_tokens);
/* Appends @n tokens, allocating blocks as needed (evicting cached blocks when
 * the free stack is empty). All-or-nothing: CM_ERR_NO_RESOURCES or
 * CM_ERR_NO_MEMORY leave the sequence and the pool unchanged. Refused
 * (CM_ERR_BUSY) on an uncommitted reservation. */
cm_status_t eng_kv_seq_append(eng_kv_t *kv, eng_kv_seq_t *seq, const int32_t *tokens, uint32_t n);
/* Marks the first @n_computed tokens as computed (their KV is in the pool)
 * and registers the newly full, computed blocks in the prefix cache (a block
 * whose hash is already registered by another block stays unregistered).
 * @n_computed may not decrease and may not exceed the sequence length:
 * CM_ERR_OUT_OF_RANGE. CM_ERR_BUSY on an uncommitted reservation. */
cm_status_t eng_kv_seq_set_computed(eng_kv_t *kv, eng_kv_seq_t *seq, uint32_t n_computed);
/*
 * Forks @src: the child shares src's full blocks and gets a fresh block for
 * src's partial tail block, if any. The caller must copy that block's KV
 * (every layer) from *copy_src to *copy_dst before using the child
 * (eng_kv_block_copy does it for host pools); both are -1 when there is no
 * partial block. Returns CM_ERR_NO_RESOURCES / CM_ERR_NO_MEMORY with nothing
 * changed, CM_ERR_BUSY on an uncommitted reservation.
 */
cm_status_t eng_kv_seq_fork(eng_kv_t *kv, const eng_kv_seq_t *src, eng_kv_seq_t **out,
                            int32_t *copy_src, int32_t *copy_dst);
/* Fresh blocks that appending @n tokens to @seq would take. */
uint32_t eng_kv_seq_blocks_needed(const eng_kv_t *kv, const eng_kv_seq_t *seq, uint32_t n);
/* Closes a sequence (or a reservation: same as eng_kv_reserve_cancel) and
 * releases its blocks. NULL is a no-op. */
void eng_kv_seq_free(eng_kv_t *kv, eng_kv_seq_t *seq);

/* Accessors. The arrays stay valid until the next call that modifies this
 * sequence. */
uint32_t eng_kv_seq_len(const eng_kv_seq_t *seq);      /* tokens appended */
uint32_t eng_kv_seq_computed(const eng_kv_seq_t *seq); /* tokens computed */
uint32_t eng_kv_seq_n_blocks(const eng_kv_seq_t *seq);
const int32_t *eng_kv_seq_blocks(const eng_kv_seq_t *seq); /* [n_blocks] block ids */
const int32_t *eng_kv_seq_tokens(const eng_kv_seq_t *seq); /* [len] token ids */
/* Chained hash of full block @i (i < len / block_size); 0 otherwise. */
uint64_t eng_kv_seq_block_hash(const eng_kv_seq_t *seq, uint32_t i);
/* Block and in-block offset of token position @pos (< len); false otherwise. */
bool eng_kv_seq_slot(const eng_kv_seq_t *seq, uint32_t pos, int32_t *block, uint32_t *offset);
bool eng_kv_seq_is_reservation(const eng_kv_seq_t *seq);

/* ---- reservations for a remote prefill ------------------------------- */

/*
 * Reserves blocks for a prompt whose KV a remote prefill worker will write.
 * Like eng_kv_seq_new: leading cached blocks are shared (*n_hit_blocks of
 * them; the prefill worker need not send those), the rest are fresh. The
 * reservation is a sequence that refuses append/fork/set_computed until
 * committed. Errors as eng_kv_seq_new; on error nothing changed.
 */
cm_status_t eng_kv_reserve(eng_kv_t *kv, const int32_t *tokens, uint32_t n, uint32_t max_hit_tokens,
                           eng_kv_seq_t **out, uint32_t *n_hit_blocks);
/* The KV of every reserved token arrived: the reservation becomes an
 * ordinary sequence with all tokens computed, and its full blocks are
 * registered in the prefix cache. CM_ERR_INVALID_ARG if @seq is not an open
 * reservation. */
cm_status_t eng_kv_reserve_commit(eng_kv_t *kv, eng_kv_seq_t *seq);
/* The transfer failed or was abandoned: releases every reserved block (fresh
 * blocks go back FREE, never into the prefix cache) and frees @seq. */
void eng_kv_reserve_cancel(eng_kv_t *kv, eng_kv_seq_t *seq);

#ifdef __cplusplus
}
#endif
#endif /* TANDEM_ENG_KVCACHE_H */
