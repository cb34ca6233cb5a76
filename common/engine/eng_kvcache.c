/*
 * eng_kvcache.c - paged KV block manager: block states, free stack, LRU of
 * cached blocks, hash index, sequences and reservations. See eng_kvcache.h.
 */
#include <string.h>

#include "eng_kvcache.h"

#define KV_SUB "kv"

enum { BLK_FREE = 0, BLK_CACHED = 1, BLK_USED = 2 };

typedef struct {
    uint64_t hash;    /* valid when registered */
    uint32_t ref;     /* references held by sequences */
    uint8_t state;    /* BLK_* */
    uint8_t hashed;   /* registered in the hash index */
    int32_t lru_prev; /* CACHED only: LRU neighbours, -1 at the ends */
    int32_t lru_next;
    int32_t hnext; /* next block in the same hash bucket, -1 at the end */
} kv_block_t;

struct eng_kv_seq {
    eng_kv_seq_t *prev, *next; /* list of open sequences */
    int32_t *tokens;           /* [cap_tokens] */
    int32_t *blocks;           /* [cap_blocks] */
    uint64_t *hashes;          /* [cap_blocks]; hashes[i] valid for i < n_tokens / bs */
    uint32_t n_tokens, n_computed, n_blocks;
    uint32_t n_registered; /* leading blocks already offered to the prefix cache */
    uint32_t cap_tokens, cap_blocks;
    uint32_t bs; /* block size of the owning pool */
    bool reservation;
};

struct eng_kv {
    eng_kv_config_t cfg;
    size_t block_bytes, pool_bytes;
    void *mem;
    bool mem_owned, mem_mmap, mem_host;

    kv_block_t *blk;   /* [n_blocks] */
    int32_t *free_stk; /* [n_blocks]; top at free_stk[n_free - 1] */
    uint32_t n_free, n_cached, n_used, n_registered;
    int32_t lru_head, lru_tail; /* head = least recently used (evicted first) */
    int32_t *bucket;            /* [n_buckets] */
    uint32_t bucket_mask;

    eng_kv_seq_t *seqs;
    uint32_t n_seqs, n_reservations;
    uint64_t n_evictions, n_query_blocks, n_hit_blocks;
};

/* ------------------------------------------------------------------------ */
/* Geometry and fingerprint                                                 */
/* ------------------------------------------------------------------------ */

cm_status_t eng_kv_geom_check(const eng_kv_geom_t *g) {
    if (!g || !g->n_layers || !g->n_blocks || !g->block_size || !g->kv_heads || !g->head_dim ||
        !g->dtype_bytes)
        return CM_ERR_INVALID_ARG;
    if (g->n_layers > ENG_KV_MAX_LAYERS || g->n_blocks > ENG_KV_MAX_BLOCKS ||
        g->block_size > ENG_KV_MAX_BLOCK_SIZE || g->dtype_bytes > 16)
        return CM_ERR_TOO_LARGE;
    size_t b = 2, t;
    if (!cm_mul_ok(b, g->block_size, &b) || !cm_mul_ok(b, g->kv_heads, &b) ||
        !cm_mul_ok(b, g->head_dim, &b) || !cm_mul_ok(b, g->dtype_bytes, &b) ||
        !cm_mul_ok(b, g->n_blocks, &t) || !cm_mul_ok(t, g->n_layers, &t) || t > (SIZE_MAX >> 2))
        return CM_ERR_TOO_LARGE;
    return CM_OK;
}

size_t eng_kv_geom_block_bytes(const eng_kv_geom_t *g) {
    return (size_t)2 * g->block_size * g->kv_heads * g->head_dim * g->dtype_bytes;
}

size_t eng_kv_geom_pool_bytes(const eng_kv_geom_t *g) {
    return (size_t)g->n_layers * g->n_blocks * eng_kv_geom_block_bytes(g);
}

cm_status_t eng_kv_geom_offset(const eng_kv_geom_t *g, uint32_t layer, int32_t block, size_t *out) {
    if (!g || !out) return CM_ERR_INVALID_ARG;
    if (layer >= g->n_layers || block < 0 || (uint32_t)block >= g->n_blocks)
        return CM_ERR_OUT_OF_RANGE;
    *out = ((size_t)layer * g->n_blocks + (size_t)block) * eng_kv_geom_block_bytes(g);
    return CM_OK;
}

static size_t put_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
    return 4;
}

uint64_t eng_kv_fingerprint(const eng_kv_fp_params_t *p) {
    static const char tag[] = "tandem-kv-fp-v1";
    if (!p || !p->model_id || !p->dtype) return 0;
    size_t lm = strlen(p->model_id), ld = strlen(p->dtype);
    if (lm > UINT32_MAX / 2 || ld > 4096) return 0;
    size_t n = sizeof tag - 1 + 4 + lm + 4 + ld + 5 * 4;
    unsigned char *buf = cm_malloc(n);
    if (!buf) return 0;
    size_t o = 0;
    memcpy(buf, tag, sizeof tag - 1);
    o += sizeof tag - 1;
    o += put_u32(buf + o, (uint32_t)lm);
    memcpy(buf + o, p->model_id, lm);
    o += lm;
    o += put_u32(buf + o, (uint32_t)ld);
    memcpy(buf + o, p->dtype, ld);
    o += ld;
    o += put_u32(buf + o, p->n_layers);
    o += put_u32(buf + o, p->block_size);
    o += put_u32(buf + o, p->kv_heads);
    o += put_u32(buf + o, p->head_dim);
    o += put_u32(buf + o, p->tp_size);
    uint64_t h = cm_hash64(buf, o, 0);
    cm_free(buf);
    return h;
}

/* ------------------------------------------------------------------------ */
/* Init / free                                                              */
/* ------------------------------------------------------------------------ */

cm_status_t eng_kv_init(const eng_kv_config_t *cfg, eng_kv_t **out) {
    cm_status_t st;
    if (!cfg || !out) return CM_ERR_INVALID_ARG;
    if ((st = eng_kv_geom_check(&cfg->geom)) != CM_OK) {
        cm_log_error(KV_SUB, "invalid KV geometry (%s)", cm_strerror(st));
        return CM_ERR_INVALID_ARG;
    }
    size_t pool = eng_kv_geom_pool_bytes(&cfg->geom);
    if (cfg->mem_mode == ENG_KV_MEM_EXTERNAL && (!cfg->mem || cfg->mem_bytes < pool)) {
        cm_log_error(KV_SUB, "external KV pool missing or too small (%zu < %zu bytes)",
                     cfg->mem_bytes, pool);
        return CM_ERR_INVALID_ARG;
    }
    if (cfg->mem_mode != ENG_KV_MEM_NONE && cfg->mem_mode != ENG_KV_MEM_ALLOC &&
        cfg->mem_mode != ENG_KV_MEM_EXTERNAL)
        return CM_ERR_INVALID_ARG;

    uint32_t nb = cfg->geom.n_blocks;
    eng_kv_t *kv = cm_calloc(1, sizeof *kv);
    if (!kv) return CM_ERR_NO_MEMORY;
    kv->cfg = *cfg;
    kv->block_bytes = eng_kv_geom_block_bytes(&cfg->geom);
    kv->pool_bytes = pool;
    kv->lru_head = kv->lru_tail = -1;
    uint32_t nbk = 16;
    while (nbk < 2 * nb) nbk <<= 1;
    kv->bucket_mask = nbk - 1;
    kv->blk = cm_calloc(nb, sizeof *kv->blk);
    kv->free_stk = cm_malloc_array(nb, sizeof *kv->free_stk);
    kv->bucket = cm_malloc_array(nbk, sizeof *kv->bucket);
    if (!kv->blk || !kv->free_stk || !kv->bucket) {
        st = CM_ERR_NO_MEMORY;
        goto fail;
    }
    for (uint32_t i = 0; i < nbk; i++) kv->bucket[i] = -1;
    /* Block 0 is handed out first. */
    for (uint32_t i = 0; i < nb; i++) {
        kv->blk[i].lru_prev = kv->blk[i].lru_next = kv->blk[i].hnext = -1;
        kv->free_stk[i] = (int32_t)(nb - 1 - i);
    }
    kv->n_free = nb;

    if (cfg->mem_mode == ENG_KV_MEM_ALLOC) {
        /* Large pools come from mmap, 2 MiB aligned and with transparent
         * huge pages asked for: a decode token's attention reads one 4 KiB
         * apart row per position and kv head ([block_size][kv_heads]
         * [head_dim] per block), a TLB miss per row on 4 KiB pages. */
        if (pool >= (1u << 21)) {
            void *m = cm_huge_map(pool);
            if (!m) {
                cm_log_error(KV_SUB, "cannot map a KV pool of %zu bytes", pool);
                st = CM_ERR_NO_MEMORY;
                goto fail;
            }
            if (cfg->prefault) memset(m, 0, pool);
            kv->mem = m;
            kv->mem_mmap = true;
        } else {
            kv->mem = cm_aligned_alloc(4096, pool);
            if (!kv->mem) {
                st = CM_ERR_NO_MEMORY;
                goto fail;
            }
            if (cfg->prefault) memset(kv->mem, 0, pool);
        }
        kv->mem_owned = true;
        kv->mem_host = true;
    } else if (cfg->mem_mode == ENG_KV_MEM_EXTERNAL) {
        kv->mem = cfg->mem;
        kv->mem_host = cfg->mem_is_host;
    }
    *out = kv;
    return CM_OK;
fail:
    cm_free(kv->bucket);
    cm_free(kv->free_stk);
    cm_free(kv->blk);
    cm_free(kv);
    return st;
}

static void seq_destroy(eng_kv_seq_t *s) {
    cm_free(s->tokens);
    cm_free(s->blocks);
    cm_free(s->hashes);
    cm_free(s);
}

void eng_kv_free(eng_kv_t *kv) {
    if (!kv) return;
    eng_kv_seq_t *s = kv->seqs;
    while (s) {
        eng_kv_seq_t *n = s->next;
        seq_destroy(s);
        s = n;
    }
    if (kv->mem_owned) {
        if (kv->mem_mmap)
            cm_huge_unmap(kv->mem, kv->pool_bytes);
        else
            cm_aligned_free(kv->mem);
    }
    cm_free(kv->bucket);
    cm_free(kv->free_stk);
    cm_free(kv->blk);
    cm_free(kv);
}

const eng_kv_geom_t *eng_kv_geom(const eng_kv_t *kv) { return &kv->cfg.geom; }
uint64_t eng_kv_fingerprint_of(const eng_kv_t *kv) { return kv->cfg.fingerprint; }
void *eng_kv_pool_base(const eng_kv_t *kv) { return kv->mem; }
size_t eng_kv_pool_bytes(const eng_kv_t *kv) { return kv->pool_bytes; }

void *eng_kv_block_ptr(const eng_kv_t *kv, uint32_t layer, int32_t block) {
    size_t off;
    if (!kv || !kv->mem || eng_kv_geom_offset(&kv->cfg.geom, layer, block, &off) != CM_OK)
        return NULL;
    return (char *)kv->mem + off;
}

cm_status_t eng_kv_slot_ptrs(const eng_kv_t *kv, uint32_t layer, int32_t block, uint32_t offset,
                             void **k, void **v) {
    if (!kv || !k || !v) return CM_ERR_INVALID_ARG;
    const eng_kv_geom_t *g = &kv->cfg.geom;
    if (offset >= g->block_size) return CM_ERR_OUT_OF_RANGE;
    size_t off;
    cm_status_t st = eng_kv_geom_offset(g, layer, block, &off);
    if (st != CM_OK) return st;
    if (!kv->mem) return CM_ERR_UNSUPPORTED;
    size_t slot = (size_t)offset * g->kv_heads * g->head_dim * g->dtype_bytes;
    *k = (char *)kv->mem + off + slot;
    *v = (char *)kv->mem + off + kv->block_bytes / 2 + slot;
    return CM_OK;
}

cm_status_t eng_kv_block_copy(eng_kv_t *kv, int32_t src, int32_t dst) {
    if (!kv) return CM_ERR_INVALID_ARG;
    if (!kv->mem || !kv->mem_host) return CM_ERR_UNSUPPORTED;
    uint32_t nb = kv->cfg.geom.n_blocks;
    if (src < 0 || dst < 0 || (uint32_t)src >= nb || (uint32_t)dst >= nb)
        return CM_ERR_OUT_OF_RANGE;
    if (src == dst) return CM_OK;
    for (uint32_t l = 0; l < kv->cfg.geom.n_layers; l++)
        memcpy(eng_kv_block_ptr(kv, l, dst), eng_kv_block_ptr(kv, l, src), kv->block_bytes);
    return CM_OK;
}

void eng_kv_stats(const eng_kv_t *kv, eng_kv_stats_t *o) {
    memset(o, 0, sizeof *o);
    o->n_blocks = kv->cfg.geom.n_blocks;
    o->n_free = kv->n_free;
    o->n_cached = kv->n_cached;
    o->n_used = kv->n_used;
    o->n_seqs = kv->n_seqs;
    o->n_reservations = kv->n_reservations;
    o->n_registered = kv->n_registered;
    o->n_evictions = kv->n_evictions;
    o->n_query_blocks = kv->n_query_blocks;
    o->n_hit_blocks = kv->n_hit_blocks;
}

uint32_t eng_kv_available(const eng_kv_t *kv) { return kv->n_free + kv->n_cached; }

uint32_t eng_kv_blocks_for(const eng_kv_t *kv, uint64_t n_tokens) {
    uint64_t bs = kv->cfg.geom.block_size;
    uint64_t b = (n_tokens + bs - 1) / bs;
    return b > UINT32_MAX ? UINT32_MAX : (uint32_t)b;
}

/* ------------------------------------------------------------------------ */
/* Hash index and LRU                                                       */
/* ------------------------------------------------------------------------ */

static inline uint32_t bucket_of(const eng_kv_t *kv, uint64_t h) {
    /* The hash is already well mixed; fold the high bits in anyway. */
    return (uint32_t)(h ^ (h >> 32)) & kv->bucket_mask;
}

static int32_t index_find(const eng_kv_t *kv, uint64_t h) {
    for (int32_t b = kv->bucket[bucket_of(kv, h)]; b >= 0; b = kv->blk[b].hnext)
        if (kv->blk[b].hash == h) return b;
    return -1;
}

static void index_insert(eng_kv_t *kv, int32_t b, uint64_t h) {
    uint32_t k = bucket_of(kv, h);
    kv->blk[b].hash = h;
    kv->blk[b].hashed = 1;
    kv->blk[b].hnext = kv->bucket[k];
    kv->bucket[k] = b;
    kv->n_registered++;
    if (kv->cfg.on_event) kv->cfg.on_event(kv->cfg.event_ud, ENG_KV_EVENT_STORED, h, b);
}

static void index_remove(eng_kv_t *kv, int32_t b) {
    uint64_t h = kv->blk[b].hash;
    int32_t *pp = &kv->bucket[bucket_of(kv, h)];
    while (*pp >= 0 && *pp != b) pp = &kv->blk[*pp].hnext;
    if (*pp == b) *pp = kv->blk[b].hnext;
    kv->blk[b].hnext = -1;
    kv->blk[b].hashed = 0;
    kv->blk[b].hash = 0;
    kv->n_registered--;
    if (kv->cfg.on_event) kv->cfg.on_event(kv->cfg.event_ud, ENG_KV_EVENT_REMOVED, h, b);
}

static void lru_unlink(eng_kv_t *kv, int32_t b) {
    kv_block_t *k = &kv->blk[b];
    if (k->lru_prev >= 0)
        kv->blk[k->lru_prev].lru_next = k->lru_next;
    else
        kv->lru_head = k->lru_next;
    if (k->lru_next >= 0)
        kv->blk[k->lru_next].lru_prev = k->lru_prev;
    else
        kv->lru_tail = k->lru_prev;
    k->lru_prev = k->lru_next = -1;
}

static void lru_push_mru(eng_kv_t *kv, int32_t b) {
    kv_block_t *k = &kv->blk[b];
    k->lru_next = -1;
    k->lru_prev = kv->lru_tail;
    if (kv->lru_tail >= 0)
        kv->blk[kv->lru_tail].lru_next = b;
    else
        kv->lru_head = b;
    kv->lru_tail = b;
}

/* Takes one block; the caller checked that n_free + n_cached > 0. */
static int32_t block_take(eng_kv_t *kv) {
    int32_t b;
    if (kv->n_free > 0) {
        b = kv->free_stk[--kv->n_free];
    } else {
        b = kv->lru_head;
        lru_unlink(kv, b);
        index_remove(kv, b);
        kv->n_cached--;
        kv->n_evictions++;
    }
    kv->blk[b].state = BLK_USED;
    kv->blk[b].ref = 1;
    kv->n_used++;
    return b;
}

/* Adds a reference to a registered block found in the index. */
static void block_share(eng_kv_t *kv, int32_t b) {
    kv_block_t *k = &kv->blk[b];
    if (k->state == BLK_CACHED) {
        lru_unlink(kv, b);
        kv->n_cached--;
        k->state = BLK_USED;
        kv->n_used++;
    }
    k->ref++;
}

static void block_release(eng_kv_t *kv, int32_t b) {
    kv_block_t *k = &kv->blk[b];
    if (--k->ref > 0) return;
    kv->n_used--;
    if (k->hashed) {
        k->state = BLK_CACHED;
        lru_push_mru(kv, b);
        kv->n_cached++;
    } else {
        k->state = BLK_FREE;
        kv->free_stk[kv->n_free++] = b;
    }
}

void eng_kv_cache_reset(eng_kv_t *kv) {
    while (kv->lru_head >= 0) {
        int32_t b = kv->lru_head;
        lru_unlink(kv, b);
        index_remove(kv, b);
        kv->blk[b].state = BLK_FREE;
        kv->n_cached--;
        kv->free_stk[kv->n_free++] = b;
    }
}

bool eng_kv_cache_contains(const eng_kv_t *kv, uint64_t hash) {
    return kv && index_find(kv, hash) >= 0;
}

static bool tokens_valid(const int32_t *t, uint32_t n) {
    if (n && !t) return false;
    for (uint32_t i = 0; i < n; i++)
        if (t[i] < 0) return false;
    return true;
}

uint32_t eng_kv_prefix_lookup(const eng_kv_t *kv, const int32_t *tokens, uint32_t n) {
    if (!kv || !kv->cfg.enable_prefix_cache || n > ENG_KV_MAX_SEQ_TOKENS ||
        !tokens_valid(tokens, n))
        return 0;
    uint32_t bs = kv->cfg.geom.block_size, hits = 0;
    uint64_t h = 0;
    for (uint32_t i = 0; (uint64_t)(i + 1) * bs <= n; i++) {
        h = cm_block_hash(h, kv->cfg.fingerprint, tokens + (size_t)i * bs, bs);
        if (index_find(kv, h) < 0) break;
        hits++;
    }
    return hits;
}

/* ------------------------------------------------------------------------ */
/* Sequences                                                                */
/* ------------------------------------------------------------------------ */

/* Grows the arrays of @s to hold @n_tokens tokens. Changes no contents. */
static cm_status_t seq_reserve_cap(const eng_kv_t *kv, eng_kv_seq_t *s, uint32_t n_tokens) {
    uint32_t bs = kv->cfg.geom.block_size;
    if (n_tokens > s->cap_tokens) {
        uint32_t cap = s->cap_tokens ? s->cap_tokens : 64;
        while (cap < n_tokens) cap = cap > ENG_KV_MAX_SEQ_TOKENS / 2 ? n_tokens : cap * 2;
        int32_t *t = cm_realloc_array(s->tokens, cap, sizeof *t);
        if (!t) return CM_ERR_NO_MEMORY;
        s->tokens = t;
        s->cap_tokens = cap;
    }
    uint32_t nblk = (n_tokens + bs - 1) / bs;
    if (nblk > s->cap_blocks) {
        uint32_t cap = s->cap_blocks ? s->cap_blocks : 8;
        while (cap < nblk) cap *= 2;
        int32_t *b = cm_realloc_array(s->blocks, cap, sizeof *b);
        if (!b) return CM_ERR_NO_MEMORY;
        s->blocks = b;
        uint64_t *h = cm_realloc_array(s->hashes, cap, sizeof *h);
        if (!h) return CM_ERR_NO_MEMORY;
        s->hashes = h;
        s->cap_blocks = cap;
    }
    return CM_OK;
}

/* Appends tokens to @s whose capacity and block budget were checked. */
static void seq_push_tokens(eng_kv_t *kv, eng_kv_seq_t *s, const int32_t *tokens, uint32_t n) {
    uint32_t bs = kv->cfg.geom.block_size;
    uint32_t old_full = s->n_tokens / bs;
    if (n) memcpy(s->tokens + s->n_tokens, tokens, (size_t)n * sizeof *tokens);
    s->n_tokens += n;
    uint32_t need = (s->n_tokens + bs - 1) / bs;
    while (s->n_blocks < need) s->blocks[s->n_blocks++] = block_take(kv);
    uint32_t full = s->n_tokens / bs;
    for (uint32_t i = old_full; i < full; i++)
        s->hashes[i] = cm_block_hash(i ? s->hashes[i - 1] : 0, kv->cfg.fingerprint,
                                     s->tokens + (size_t)i * bs, bs);
}

static void seq_link(eng_kv_t *kv, eng_kv_seq_t *s) {
    s->prev = NULL;
    s->next = kv->seqs;
    if (kv->seqs) kv->seqs->prev = s;
    kv->seqs = s;
    kv->n_seqs++;
    if (s->reservation) kv->n_reservations++;
}

static void seq_unlink(eng_kv_t *kv, eng_kv_seq_t *s) {
    if (s->prev)
        s->prev->next = s->next;
    else
        kv->seqs = s->next;
    if (s->next) s->next->prev = s->prev;
    kv->n_seqs--;
    if (s->reservation) kv->n_reservations--;
}

/* Registers full, computed blocks of @s not yet offered to the cache. */
static void seq_register(eng_kv_t *kv, eng_kv_seq_t *s) {
    uint32_t upto = s->n_computed / kv->cfg.geom.block_size;
    if (!kv->cfg.enable_prefix_cache) {
        s->n_registered = upto > s->n_registered ? upto : s->n_registered;
        return;
    }
    for (uint32_t i = s->n_registered; i < upto; i++) {
        int32_t b = s->blocks[i];
        if (kv->blk[b].hashed) continue; /* shared and registered already */
        if (index_find(kv, s->hashes[i]) >= 0) continue;
        index_insert(kv, b, s->hashes[i]);
    }
    if (upto > s->n_registered) s->n_registered = upto;
}

static cm_status_t seq_open(eng_kv_t *kv, const int32_t *tokens, uint32_t n,
                            uint32_t max_hit_tokens, bool reservation, eng_kv_seq_t **out,
                            uint32_t *n_hit_blocks) {
    if (!kv || !out) return CM_ERR_INVALID_ARG;
    if (n > ENG_KV_MAX_SEQ_TOKENS) return CM_ERR_TOO_LARGE;
    if (!tokens_valid(tokens, n)) return CM_ERR_INVALID_ARG;
    uint32_t bs = kv->cfg.geom.block_size;
    uint32_t total = (n + bs - 1) / bs;
    uint32_t max_hits = (max_hit_tokens < n ? max_hit_tokens : n) / bs;

    eng_kv_seq_t *s = cm_calloc(1, sizeof *s);
    if (!s) return CM_ERR_NO_MEMORY;
    s->reservation = reservation;
    s->bs = kv->cfg.geom.block_size;
    if (seq_reserve_cap(kv, s, n ? n : 1) != CM_OK) {
        seq_destroy(s);
        return CM_ERR_NO_MEMORY;
    }
    /* Hash every full block and find the cached prefix without changing
     * anything, so that a shortage is reported with the pool untouched. */
    uint32_t full = n / bs, hits = 0, hits_cached = 0;
    uint64_t h = 0;
    for (uint32_t i = 0; i < full; i++) {
        h = cm_block_hash(h, kv->cfg.fingerprint, tokens + (size_t)i * bs, bs);
        s->hashes[i] = h;
    }
    if (kv->cfg.enable_prefix_cache) {
        while (hits < max_hits) {
            int32_t b = index_find(kv, s->hashes[hits]);
            if (b < 0) break;
            s->blocks[hits] = b;
            if (kv->blk[b].state == BLK_CACHED) hits_cached++;
            hits++;
        }
    }
    if (total - hits > kv->n_free + kv->n_cached - hits_cached) {
        seq_destroy(s);
        return CM_ERR_NO_RESOURCES;
    }
    kv->n_query_blocks += max_hits < full ? max_hits : full;
    kv->n_hit_blocks += hits;
    for (uint32_t i = 0; i < hits; i++) block_share(kv, s->blocks[i]);
    if (n) memcpy(s->tokens, tokens, (size_t)n * sizeof *tokens);
    s->n_tokens = n;
    s->n_blocks = hits;
    while (s->n_blocks < total) s->blocks[s->n_blocks++] = block_take(kv);
    s->n_computed = hits * bs;
    s->n_registered = hits;
    seq_link(kv, s);
    *out = s;
    if (n_hit_blocks) *n_hit_blocks = hits;
    return CM_OK;
}

cm_status_t eng_kv_seq_new(eng_kv_t *kv, const int32_t *tokens, uint32_t n, uint32_t max_hit_tokens,
                           eng_kv_seq_t **out, uint32_t *n_hit_tokens) {
    uint32_t hits = 0;
    cm_status_t st = seq_open(kv, tokens, n, max_hit_tokens, false, out, &hits);
    if (st == CM_OK && n_hit_tokens) *n_hit_tokens = hits * kv->cfg.geom.block_size;
    return st;
}

cm_status_t eng_kv_seq_append(eng_kv_t *kv, eng_kv_seq_t *s, const int32_t *tokens, uint32_t n) {
    if (!kv || !s) return CM_ERR_INVALID_ARG;
    if (s->reservation) return CM_ERR_BUSY;
    if (n > ENG_KV_MAX_SEQ_TOKENS - s->n_tokens) return CM_ERR_TOO_LARGE;
    if (!tokens_valid(tokens, n)) return CM_ERR_INVALID_ARG;
    uint32_t bs = kv->cfg.geom.block_size;
    uint32_t need = (s->n_tokens + n + bs - 1) / bs - s->n_blocks;
    if (need > kv->n_free + kv->n_cached) return CM_ERR_NO_RESOURCES;
    if (seq_reserve_cap(kv, s, s->n_tokens + n) != CM_OK) return CM_ERR_NO_MEMORY;
    seq_push_tokens(kv, s, tokens, n);
    return CM_OK;
}

cm_status_t eng_kv_seq_set_computed(eng_kv_t *kv, eng_kv_seq_t *s, uint32_t n_computed) {
    if (!kv || !s) return CM_ERR_INVALID_ARG;
    if (s->reservation) return CM_ERR_BUSY;
    if (n_computed < s->n_computed || n_computed > s->n_tokens) return CM_ERR_OUT_OF_RANGE;
    s->n_computed = n_computed;
    seq_register(kv, s);
    return CM_OK;
}

cm_status_t eng_kv_seq_fork(eng_kv_t *kv, const eng_kv_seq_t *src, eng_kv_seq_t **out,
                            int32_t *copy_src, int32_t *copy_dst) {
    if (!kv || !src || !out) return CM_ERR_INVALID_ARG;
    if (src->reservation) return CM_ERR_BUSY;
    uint32_t bs = kv->cfg.geom.block_size;
    uint32_t full = src->n_tokens / bs;
    bool partial = src->n_blocks > full;
    if (partial && kv->n_free + kv->n_cached == 0) return CM_ERR_NO_RESOURCES;
    eng_kv_seq_t *s = cm_calloc(1, sizeof *s);
    if (!s) return CM_ERR_NO_MEMORY;
    s->bs = bs;
    if (seq_reserve_cap(kv, s, src->n_tokens ? src->n_tokens : 1) != CM_OK) {
        seq_destroy(s);
        return CM_ERR_NO_MEMORY;
    }
    if (src->n_tokens) memcpy(s->tokens, src->tokens, (size_t)src->n_tokens * sizeof(int32_t));
    if (full) memcpy(s->hashes, src->hashes, (size_t)full * sizeof(uint64_t));
    for (uint32_t i = 0; i < full; i++) {
        s->blocks[i] = src->blocks[i];
        kv->blk[src->blocks[i]].ref++;
    }
    s->n_blocks = full;
    int32_t cs = -1, cd = -1;
    if (partial) {
        cs = src->blocks[full];
        cd = block_take(kv);
        s->blocks[s->n_blocks++] = cd;
    }
    s->n_tokens = src->n_tokens;
    s->n_computed = src->n_computed;
    s->n_registered = src->n_registered;
    seq_link(kv, s);
    *out = s;
    if (copy_src) *copy_src = cs;
    if (copy_dst) *copy_dst = cd;
    return CM_OK;
}

uint32_t eng_kv_seq_blocks_needed(const eng_kv_t *kv, const eng_kv_seq_t *s, uint32_t n) {
    uint64_t bs = kv->cfg.geom.block_size;
    uint64_t total = ((uint64_t)s->n_tokens + n + bs - 1) / bs;
    return total > s->n_blocks ? (uint32_t)(total - s->n_blocks) : 0;
}

void eng_kv_seq_free(eng_kv_t *kv, eng_kv_seq_t *s) {
    if (!kv || !s) return;
    for (uint32_t i = s->n_blocks; i-- > 0;) block_release(kv, s->blocks[i]);
    seq_unlink(kv, s);
    seq_destroy(s);
}

uint32_t eng_kv_seq_len(const eng_kv_seq_t *s) { return s->n_tokens; }
uint32_t eng_kv_seq_computed(const eng_kv_seq_t *s) { return s->n_computed; }
uint32_t eng_kv_seq_n_blocks(const eng_kv_seq_t *s) { return s->n_blocks; }
const int32_t *eng_kv_seq_blocks(const eng_kv_seq_t *s) { return s->blocks; }
const int32_t *eng_kv_seq_tokens(const eng_kv_seq_t *s) { return s->tokens; }
bool eng_kv_seq_is_reservation(const eng_kv_seq_t *s) { return s->reservation; }

uint64_t eng_kv_seq_block_hash(const eng_kv_seq_t *s, uint32_t i) {
    return i < s->n_tokens / s->bs ? s->hashes[i] : 0;
}

bool eng_kv_seq_slot(const eng_kv_seq_t *s, uint32_t pos, int32_t *block, uint32_t *offset) {
    if (!s || pos >= s->n_tokens) return false;
    if (block) *block = s->blocks[pos / s->bs];
    if (offset) *offset = pos % s->bs;
    return true;
}

/* ------------------------------------------------------------------------ */
/* Reservations                                                             */
/* ------------------------------------------------------------------------ */

cm_status_t eng_kv_reserve(eng_kv_t *kv, const int32_t *tokens, uint32_t n, uint32_t max_hit_tokens,
                           eng_kv_seq_t **out, uint32_t *n_hit_blocks) {
    return seq_open(kv, tokens, n, max_hit_tokens, true, out, n_hit_blocks);
}

cm_status_t eng_kv_reserve_commit(eng_kv_t *kv, eng_kv_seq_t *s) {
    if (!kv || !s || !s->reservation) return CM_ERR_INVALID_ARG;
    s->reservation = false;
    kv->n_reservations--;
    s->n_computed = s->n_tokens;
    seq_register(kv, s);
    return CM_OK;
}

void eng_kv_reserve_cancel(eng_kv_t *kv, eng_kv_seq_t *s) { eng_kv_seq_free(kv, s); }

/* ------------------------------------------------------------------------ */
/* Invariant checker                                                        */
/* ------------------------------------------------------------------------ */

#define KV_CHECK(cond, ...)                                           \
    do {                                                              \
        if (!(cond)) {                                                \
            cm_log_error(KV_SUB, "invariant violated: " __VA_ARGS__); \
            st = CM_ERR_INTERNAL;                                     \
            goto done;                                                \
        }                                                             \
    } while (0)

cm_status_t eng_kv_check(const eng_kv_t *kv) {
    if (!kv) return CM_ERR_INVALID_ARG;
    uint32_t nb = kv->cfg.geom.n_blocks, bs = kv->cfg.geom.block_size;
    cm_status_t st = CM_OK;
    uint32_t *refs = cm_calloc(nb, sizeof *refs);
    uint8_t *seen = cm_calloc(nb, 1);
    if (!refs || !seen) {
        st = CM_ERR_NO_MEMORY;
        goto done;
    }
    uint32_t n_free = 0, n_cached = 0, n_used = 0, n_hashed = 0;
    for (uint32_t b = 0; b < nb; b++) {
        const kv_block_t *k = &kv->blk[b];
        switch (k->state) {
        case BLK_FREE:
            KV_CHECK(k->ref == 0 && !k->hashed, "free block %u has ref %u hashed %d", b, k->ref,
                     k->hashed);
            n_free++;
            break;
        case BLK_CACHED:
            KV_CHECK(k->ref == 0 && k->hashed, "cached block %u has ref %u hashed %d", b, k->ref,
                     k->hashed);
            n_cached++;
            break;
        case BLK_USED:
            KV_CHECK(k->ref > 0, "used block %u has ref 0", b);
            n_used++;
            break;
        default:
            KV_CHECK(0, "block %u has bad state %d", b, k->state);
        }
        if (k->hashed) {
            n_hashed++;
            KV_CHECK(index_find(kv, k->hash) == (int32_t)b,
                     "registered block %u not found under its hash", b);
        }
    }
    KV_CHECK(n_free == kv->n_free && n_cached == kv->n_cached && n_used == kv->n_used,
             "counts free %u/%u cached %u/%u used %u/%u", n_free, kv->n_free, n_cached,
             kv->n_cached, n_used, kv->n_used);
    KV_CHECK(n_free + n_cached + n_used == nb, "states do not add up");
    KV_CHECK(n_hashed == kv->n_registered, "registered %u != %u", n_hashed, kv->n_registered);

    /* Free stack: each entry FREE and present once. */
    for (uint32_t i = 0; i < kv->n_free; i++) {
        int32_t b = kv->free_stk[i];
        KV_CHECK(b >= 0 && (uint32_t)b < nb && kv->blk[b].state == BLK_FREE && !seen[b],
                 "free stack entry %u (block %d) bad or repeated", i, b);
        seen[b] = 1;
    }
    /* LRU list: forward walk, back links, only CACHED blocks, each once. */
    uint32_t n_lru = 0;
    int32_t prev = -1;
    for (int32_t b = kv->lru_head; b >= 0; b = kv->blk[b].lru_next) {
        KV_CHECK((uint32_t)b < nb && kv->blk[b].state == BLK_CACHED && !seen[b],
                 "LRU entry %d bad or repeated", b);
        KV_CHECK(kv->blk[b].lru_prev == prev, "LRU back link of %d broken", b);
        seen[b] = 1;
        prev = b;
        n_lru++;
    }
    KV_CHECK(prev == kv->lru_tail && n_lru == kv->n_cached, "LRU tail/count mismatch");
    /* Hash chains: every entry registered, in its bucket, hashes unique. */
    uint32_t n_index = 0;
    for (uint32_t k = 0; k <= kv->bucket_mask; k++) {
        for (int32_t b = kv->bucket[k]; b >= 0; b = kv->blk[b].hnext) {
            KV_CHECK((uint32_t)b < nb && kv->blk[b].hashed && bucket_of(kv, kv->blk[b].hash) == k,
                     "hash chain entry %d bad", b);
            KV_CHECK(index_find(kv, kv->blk[b].hash) == b, "hash of block %d registered twice", b);
            KV_CHECK(++n_index <= nb, "hash chain cycle");
        }
    }
    KV_CHECK(n_index == kv->n_registered, "index holds %u != %u", n_index, kv->n_registered);

    /* Sequences: tables and references. */
    uint32_t n_seqs = 0, n_resv = 0;
    for (const eng_kv_seq_t *s = kv->seqs; s; s = s->next) {
        KV_CHECK(++n_seqs <= kv->n_seqs, "sequence list longer than %u", kv->n_seqs);
        if (s->reservation) n_resv++;
        uint32_t full = s->n_tokens / bs;
        KV_CHECK(s->n_blocks == (s->n_tokens + bs - 1) / bs,
                 "sequence with %u tokens has %u blocks", s->n_tokens, s->n_blocks);
        KV_CHECK(s->n_computed <= s->n_tokens, "computed %u > len %u", s->n_computed, s->n_tokens);
        KV_CHECK(s->n_registered <= full, "registered %u > full %u", s->n_registered, full);
        uint64_t h = 0;
        for (uint32_t i = 0; i < s->n_blocks; i++) {
            int32_t b = s->blocks[i];
            KV_CHECK(b >= 0 && (uint32_t)b < nb && kv->blk[b].state == BLK_USED,
                     "sequence block %u is %d (state %d)", i, b,
                     b >= 0 && (uint32_t)b < nb ? kv->blk[b].state : -1);
            refs[b]++;
            if (i < full) {
                h = cm_block_hash(h, kv->cfg.fingerprint, s->tokens + (size_t)i * bs, bs);
                KV_CHECK(s->hashes[i] == h, "sequence block %u hash stale", i);
                if (kv->blk[b].hashed)
                    KV_CHECK(kv->blk[b].hash == h, "shared block %d hash differs from content", b);
            } else {
                KV_CHECK(kv->blk[b].ref == 1, "partial block %d shared (ref %u)", b,
                         kv->blk[b].ref);
                KV_CHECK(!kv->blk[b].hashed, "partial block %d registered", b);
            }
        }
    }
    KV_CHECK(n_seqs == kv->n_seqs && n_resv == kv->n_reservations, "sequence counts");
    for (uint32_t b = 0; b < nb; b++)
        KV_CHECK(refs[b] == kv->blk[b].ref, "block %u refcount %u but %u references", b,
                 kv->blk[b].ref, refs[b]);
done:
    cm_free(refs);
    cm_free(seen);
    return st;
}
