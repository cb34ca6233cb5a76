/*
 * test_kvcache.c - the KV block manager (eng_kvcache.h) and the hashes it is
 * built on.
 *
 * Suite `hash`: cm_hash64, cm_block_hash and eng_kv_fingerprint against the
 * Python `xxhash` package (tests/fixtures/gen_block_hash.py).
 * Suite `kv`: a randomized property test against a naive reference model of
 * the documented policy (free stack, LRU of cached blocks, tail-first
 * release), plus targeted tests for prefix hits, reservations and running
 * out of blocks.
 */
#include <cjson/cJSON.h>

#include "cm_base.h"
#include "eng_kvcache.h"
#include "tt.h"

/* ------------------------------------------------------------------------ */
/* Fixture loading                                                          */
/* ------------------------------------------------------------------------ */

static cJSON *load_json(const char *rel) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", tt_root(), rel);
    char *buf = tt_read_file(path, NULL);
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    TT_ASSERT_MSG(j, "cannot parse %s", path);
    return j;
}

static uint64_t json_u64(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    TT_ASSERT_MSG(cJSON_IsString(v), "field %s is not a decimal string", key);
    return strtoull(v->valuestring, NULL, 10);
}

static int json_tokens(const cJSON *arr, int32_t *out, int cap) {
    int n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        TT_ASSERT(n < cap);
        out[n++] = (int32_t)e->valuedouble;
    }
    return n;
}

/* ------------------------------------------------------------------------ */
/* Suite hash                                                               */
/* ------------------------------------------------------------------------ */

TT_TEST(hash, xxh64_matches_python_xxhash) {
    cJSON *j = load_json("tests/fixtures/block_hash.json");
    const cJSON *e;
    int count = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(j, "hash64")) {
        const char *hex = cJSON_GetObjectItem(e, "data")->valuestring;
        size_t n = strlen(hex) / 2;
        unsigned char *d = malloc(n + 1);
        for (size_t i = 0; i < n; i++) {
            unsigned v;
            sscanf(hex + 2 * i, "%2x", &v);
            d[i] = (unsigned char)v;
        }
        uint64_t seed = json_u64(e, "seed");
        TT_ASSERT_EQ_U64(cm_hash64(d, n, seed), json_u64(e, "hash"));
        free(d);
        count++;
    }
    TT_ASSERT(count >= 101);
    cJSON_Delete(j);
}

TT_TEST(hash, block_hash_matches_python_xxhash) {
    cJSON *j = load_json("tests/fixtures/block_hash.json");
    const cJSON *e;
    int32_t toks[64];
    int count = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(j, "block")) {
        int n = json_tokens(cJSON_GetObjectItem(e, "tokens"), toks, 64);
        TT_ASSERT_EQ_U64(cm_block_hash(json_u64(e, "parent"), json_u64(e, "fp"), toks, (size_t)n),
                         json_u64(e, "hash"));
        count++;
    }
    TT_ASSERT(count >= 100);
    cJSON_Delete(j);
}

TT_TEST(hash, fingerprint_matches_python) {
    cJSON *j = load_json("tests/fixtures/block_hash.json");
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(j, "fingerprint")) {
        eng_kv_fp_params_t p = {
            .model_id = cJSON_GetObjectItem(e, "model")->valuestring,
            .dtype = cJSON_GetObjectItem(e, "dtype")->valuestring,
            .n_layers = (uint32_t)cJSON_GetObjectItem(e, "n_layers")->valuedouble,
            .block_size = (uint32_t)cJSON_GetObjectItem(e, "block_size")->valuedouble,
            .kv_heads = (uint32_t)cJSON_GetObjectItem(e, "kv_heads")->valuedouble,
            .head_dim = (uint32_t)cJSON_GetObjectItem(e, "head_dim")->valuedouble,
            .tp_size = (uint32_t)cJSON_GetObjectItem(e, "tp_size")->valuedouble,
        };
        TT_ASSERT_EQ_U64(eng_kv_fingerprint(&p), json_u64(e, "fp"));
    }
    eng_kv_fp_params_t bad = {.model_id = NULL, .dtype = "f32"};
    TT_ASSERT_EQ_U64(eng_kv_fingerprint(&bad), 0);
    cJSON_Delete(j);
}

/* The block manager's per-sequence chain equals the Python chain. */
TT_TEST(hash, kv_sequence_chain_matches_python) {
    cJSON *j = load_json("tests/fixtures/block_hash.json");
    const cJSON *e;
    int32_t toks[256];
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(j, "chain")) {
        uint32_t bs = (uint32_t)cJSON_GetObjectItem(e, "block_size")->valuedouble;
        int n = json_tokens(cJSON_GetObjectItem(e, "tokens"), toks, 256);
        eng_kv_config_t cfg = {.geom = {2, 64, bs, 2, 64, 4},
                               .fingerprint = json_u64(e, "fp"),
                               .enable_prefix_cache = true};
        eng_kv_t *kv;
        TT_ASSERT_EQ_INT(eng_kv_init(&cfg, &kv), CM_OK);
        eng_kv_seq_t *s;
        /* Build it in two appends so both hashing paths are exercised. */
        TT_ASSERT_EQ_INT(eng_kv_seq_new(kv, toks, (uint32_t)n / 3, 0, &s, NULL), CM_OK);
        TT_ASSERT_EQ_INT(eng_kv_seq_append(kv, s, toks + n / 3, (uint32_t)(n - n / 3)), CM_OK);
        const cJSON *h;
        uint32_t i = 0;
        cJSON_ArrayForEach(h, cJSON_GetObjectItem(e, "hashes")) {
            TT_ASSERT_EQ_U64(eng_kv_seq_block_hash(s, i), strtoull(h->valuestring, NULL, 10));
            i++;
        }
        TT_ASSERT_EQ_INT(i, (uint32_t)n / bs);
        TT_ASSERT_EQ_U64(eng_kv_seq_block_hash(s, i), 0);
        eng_kv_free(kv);
    }
    cJSON_Delete(j);
}

/* ------------------------------------------------------------------------ */
/* Reference model: the documented policy, written with arrays and scans    */
/* ------------------------------------------------------------------------ */

#define R_NB     48
#define R_BS     4
#define R_SEQS   20
#define R_TOKS   160
#define R_LAYERS 2

typedef struct {
    uint32_t ref[R_NB];
    int hashed[R_NB];
    uint64_t hash[R_NB];
    int free_stk[R_NB], n_free;
    int lru[R_NB], n_lru; /* lru[0] is evicted first */
    uint64_t evictions;
} ref_pool_t;

typedef struct {
    int live, resv;
    int32_t tok[R_TOKS];
    int n_tok, n_comp, n_reg, n_blk;
    int blk[R_TOKS];
    eng_kv_seq_t *impl;
} ref_seq_t;

static ref_pool_t R;
static ref_seq_t S[R_SEQS];
static const uint64_t R_FP = 0x5eed5eed12345678ull;

static void r_init(void) {
    memset(&R, 0, sizeof R);
    memset(S, 0, sizeof S);
    for (int i = 0; i < R_NB; i++) R.free_stk[i] = R_NB - 1 - i;
    R.n_free = R_NB;
}

static int r_find(uint64_t h) {
    for (int b = 0; b < R_NB; b++)
        if (R.hashed[b] && R.hash[b] == h) return b;
    return -1;
}

static int r_lru_pos(int b) {
    for (int i = 0; i < R.n_lru; i++)
        if (R.lru[i] == b) return i;
    return -1;
}

static void r_lru_del(int pos) {
    memmove(R.lru + pos, R.lru + pos + 1, (size_t)(R.n_lru - pos - 1) * sizeof(int));
    R.n_lru--;
}

static int r_take(void) {
    int b;
    if (R.n_free) {
        b = R.free_stk[--R.n_free];
    } else {
        TT_ASSERT(R.n_lru > 0);
        b = R.lru[0];
        r_lru_del(0);
        R.hashed[b] = 0;
        R.evictions++;
    }
    R.ref[b] = 1;
    return b;
}

static void r_share(int b) {
    int pos = r_lru_pos(b);
    if (pos >= 0) r_lru_del(pos);
    R.ref[b]++;
}

static void r_release(int b) {
    TT_ASSERT(R.ref[b] > 0);
    if (--R.ref[b]) return;
    if (R.hashed[b])
        R.lru[R.n_lru++] = b;
    else
        R.free_stk[R.n_free++] = b;
}

static uint64_t r_seq_hash(const ref_seq_t *s, int i) {
    uint64_t h = 0;
    for (int k = 0; k <= i; k++) h = cm_block_hash(h, R_FP, s->tok + k * R_BS, R_BS);
    return h;
}

static void r_register(ref_seq_t *s) {
    int upto = s->n_comp / R_BS;
    for (int i = s->n_reg; i < upto; i++) {
        int b = s->blk[i];
        uint64_t h = r_seq_hash(s, i);
        if (R.hashed[b] || r_find(h) >= 0) continue;
        R.hashed[b] = 1;
        R.hash[b] = h;
    }
    if (upto > s->n_reg) s->n_reg = upto;
}

static cm_status_t r_open(ref_seq_t *s, const int32_t *t, int n, int max_hit, int resv,
                          int *hits_out) {
    int total = (n + R_BS - 1) / R_BS, max_hits = (max_hit < n ? max_hit : n) / R_BS;
    int hits = 0, hits_cached = 0, blk[R_TOKS];
    uint64_t h = 0;
    memcpy(s->tok, t, (size_t)n * sizeof *t);
    while (hits < max_hits) {
        h = cm_block_hash(h, R_FP, t + hits * R_BS, R_BS);
        int b = r_find(h);
        if (b < 0) break;
        blk[hits] = b;
        if (R.ref[b] == 0) hits_cached++;
        hits++;
    }
    if (total - hits > R.n_free + R.n_lru - hits_cached) return CM_ERR_NO_RESOURCES;
    for (int i = 0; i < hits; i++) r_share(s->blk[i] = blk[i]);
    for (int i = hits; i < total; i++) s->blk[i] = r_take();
    s->n_blk = total;
    s->n_tok = n;
    s->n_comp = s->n_reg = hits * R_BS;
    s->n_reg = hits;
    s->live = 1;
    s->resv = resv;
    *hits_out = hits;
    return CM_OK;
}

static cm_status_t r_append(ref_seq_t *s, const int32_t *t, int n) {
    int need = (s->n_tok + n + R_BS - 1) / R_BS - s->n_blk;
    if (need > R.n_free + R.n_lru) return CM_ERR_NO_RESOURCES;
    memcpy(s->tok + s->n_tok, t, (size_t)n * sizeof *t);
    s->n_tok += n;
    while (s->n_blk < (s->n_tok + R_BS - 1) / R_BS) s->blk[s->n_blk++] = r_take();
    return CM_OK;
}

static void r_free(ref_seq_t *s) {
    for (int i = s->n_blk - 1; i >= 0; i--) r_release(s->blk[i]);
    s->live = 0;
}

/* ------------------------------------------------------------------------ */
/* Property test                                                            */
/* ------------------------------------------------------------------------ */

static uint64_t g_rng;
static uint32_t rnd(uint32_t n) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng % n);
}

/* Stands in for the forward pass: writes each newly computed full block's
 * hash into every layer, so a block handed out while still referenced shows
 * up as a wrong signature. */
static void write_signatures(eng_kv_t *kv, const ref_seq_t *s, int from_tok, int to_tok) {
    for (int i = from_tok / R_BS; i < to_tok / R_BS; i++) {
        uint64_t h = r_seq_hash(s, i);
        for (uint32_t l = 0; l < R_LAYERS; l++)
            memcpy(eng_kv_block_ptr(kv, l, s->blk[i]), &h, sizeof h);
    }
}

static void compare_all(eng_kv_t *kv) {
    eng_kv_stats_t st;
    eng_kv_stats(kv, &st);
    int used = 0, n_live = 0, n_resv = 0, n_reg = 0;
    for (int b = 0; b < R_NB; b++) {
        used += R.ref[b] > 0;
        n_reg += R.hashed[b];
    }
    for (int i = 0; i < R_SEQS; i++) {
        const ref_seq_t *s = &S[i];
        if (!s->live) continue;
        n_live++;
        n_resv += s->resv;
        TT_ASSERT_EQ_INT(eng_kv_seq_len(s->impl), s->n_tok);
        TT_ASSERT_EQ_INT(eng_kv_seq_computed(s->impl), s->n_comp);
        TT_ASSERT_EQ_INT(eng_kv_seq_n_blocks(s->impl), s->n_blk);
        TT_ASSERT(memcmp(eng_kv_seq_tokens(s->impl), s->tok, (size_t)s->n_tok * 4) == 0);
        for (int k = 0; k < s->n_blk; k++) {
            TT_ASSERT_EQ_INT(eng_kv_seq_blocks(s->impl)[k], s->blk[k]);
            /* Every full computed block still holds this sequence's KV. */
            if (k < s->n_comp / R_BS && !s->resv) {
                uint64_t want = r_seq_hash(s, k), got;
                for (uint32_t l = 0; l < R_LAYERS; l++) {
                    memcpy(&got, eng_kv_block_ptr(kv, l, s->blk[k]), sizeof got);
                    TT_ASSERT_EQ_U64(got, want);
                }
            }
        }
    }
    TT_ASSERT_EQ_INT(st.n_free, R.n_free);
    TT_ASSERT_EQ_INT(st.n_cached, R.n_lru);
    TT_ASSERT_EQ_INT(st.n_used, used);
    TT_ASSERT_EQ_INT(st.n_registered, n_reg);
    TT_ASSERT_EQ_INT(st.n_seqs, n_live);
    TT_ASSERT_EQ_INT(st.n_reservations, n_resv);
    TT_ASSERT_EQ_U64(st.n_evictions, R.evictions);
    TT_ASSERT_EQ_INT(eng_kv_check(kv), CM_OK);
}

/* Prompts share prefixes: a few families, cut at random lengths. */
static int make_tokens(int32_t *t, int max) {
    static const int fam_len = 64;
    int fam = (int)rnd(4), n = 1 + (int)rnd((uint32_t)max);
    int keep = (int)rnd(fam_len + 1);
    for (int i = 0; i < n; i++) t[i] = i < keep ? (int32_t)(fam * 1000 + i) : (int32_t)rnd(50000);
    return n;
}

static int pick_live(int want_resv) {
    int cand[R_SEQS], n = 0;
    for (int i = 0; i < R_SEQS; i++)
        if (S[i].live && (want_resv < 0 || S[i].resv == want_resv)) cand[n++] = i;
    return n ? cand[rnd((uint32_t)n)] : -1;
}

static int pick_slot(void) {
    for (int i = 0; i < R_SEQS; i++)
        if (!S[i].live) return i;
    return -1;
}

static void run_property(uint64_t seed, int n_ops) {
    g_rng = seed;
    r_init();
    eng_kv_config_t cfg = {.geom = {R_LAYERS, R_NB, R_BS, 1, 2, 4},
                           .fingerprint = R_FP,
                           .mem_mode = ENG_KV_MEM_ALLOC,
                           .enable_prefix_cache = true};
    eng_kv_t *kv;
    TT_ASSERT_EQ_INT(eng_kv_init(&cfg, &kv), CM_OK);
    int32_t t[R_TOKS];
    int counts[12] = {0}, oom = 0, hit_blocks = 0;
    for (int op = 0; op < n_ops; op++) {
        uint32_t kind = rnd(100);
        int i;
        cm_status_t a, b;
        if (kind < 18 || kind >= 96) { /* open a sequence or a reservation */
            bool resv = kind >= 96 || kind < 4;
            if ((i = pick_slot()) < 0) continue;
            int n = make_tokens(t, R_TOKS / 2);
            int max_hit = rnd(2) ? n - 1 : n, hits_ref = 0;
            uint32_t hits_impl = 0;
            ref_seq_t tmp = {0};
            b = r_open(&tmp, t, n, max_hit, resv, &hits_ref);
            eng_kv_seq_t *s = NULL;
            a = resv ? eng_kv_reserve(kv, t, (uint32_t)n, (uint32_t)max_hit, &s, &hits_impl)
                     : eng_kv_seq_new(kv, t, (uint32_t)n, (uint32_t)max_hit, &s, &hits_impl);
            TT_ASSERT_EQ_INT(a, b);
            if (a == CM_OK) {
                TT_ASSERT_EQ_INT(hits_impl, resv ? (uint32_t)hits_ref : (uint32_t)hits_ref * R_BS);
                S[i] = tmp;
                S[i].impl = s;
                hit_blocks += hits_ref;
            } else {
                oom++;
            }
            counts[resv ? 1 : 0]++;
        } else if (kind < 40) { /* append */
            if ((i = pick_live(0)) < 0) continue;
            int n = 1 + (int)rnd(10);
            if (S[i].n_tok + n > R_TOKS) continue;
            for (int k = 0; k < n; k++) t[k] = (int32_t)rnd(50000);
            b = r_append(&S[i], t, n);
            a = eng_kv_seq_append(kv, S[i].impl, t, (uint32_t)n);
            TT_ASSERT_EQ_INT(a, b);
            oom += a != CM_OK;
            counts[2]++;
        } else if (kind < 60) { /* mark computed */
            if ((i = pick_live(0)) < 0) continue;
            ref_seq_t *s = &S[i];
            int to = rnd(3) ? s->n_tok : s->n_comp + (int)rnd((uint32_t)(s->n_tok - s->n_comp + 1));
            write_signatures(kv, s, s->n_comp, to);
            TT_ASSERT_EQ_INT(eng_kv_seq_set_computed(kv, s->impl, (uint32_t)to), CM_OK);
            s->n_comp = to;
            r_register(s);
            /* Going backwards is refused. */
            if (to > 0)
                TT_ASSERT_EQ_INT(eng_kv_seq_set_computed(kv, s->impl, (uint32_t)to - 1),
                                 CM_ERR_OUT_OF_RANGE);
            counts[3]++;
        } else if (kind < 68) { /* fork */
            int j = pick_slot();
            if ((i = pick_live(0)) < 0 || j < 0) continue;
            ref_seq_t *src = &S[i];
            int full = src->n_tok / R_BS;
            bool partial = src->n_blk > full;
            b = (partial && R.n_free + R.n_lru == 0) ? CM_ERR_NO_RESOURCES : CM_OK;
            eng_kv_seq_t *child = NULL;
            int32_t cs = 7, cd = 7;
            a = eng_kv_seq_fork(kv, src->impl, &child, &cs, &cd);
            TT_ASSERT_EQ_INT(a, b);
            if (a == CM_OK) {
                ref_seq_t *d = &S[j];
                *d = *src;
                d->impl = child;
                for (int k = 0; k < full; k++) R.ref[src->blk[k]]++;
                if (partial) {
                    d->blk[full] = r_take();
                    TT_ASSERT_EQ_INT(cs, src->blk[full]);
                    TT_ASSERT_EQ_INT(cd, d->blk[full]);
                    TT_ASSERT_EQ_INT(eng_kv_block_copy(kv, cs, cd), CM_OK);
                } else {
                    TT_ASSERT(cs == -1 && cd == -1);
                }
            } else {
                oom++;
            }
            counts[4]++;
        } else if (kind < 86) { /* free */
            if ((i = pick_live(0)) < 0) continue;
            eng_kv_seq_free(kv, S[i].impl);
            r_free(&S[i]);
            counts[5]++;
        } else if (kind < 90) { /* commit a reservation: KV arrived */
            if ((i = pick_live(1)) < 0) continue;
            ref_seq_t *s = &S[i];
            write_signatures(kv, s, s->n_comp, s->n_tok);
            TT_ASSERT_EQ_INT(eng_kv_seq_append(kv, s->impl, t, 1), CM_ERR_BUSY);
            TT_ASSERT_EQ_INT(eng_kv_reserve_commit(kv, s->impl), CM_OK);
            TT_ASSERT_EQ_INT(eng_kv_reserve_commit(kv, s->impl), CM_ERR_INVALID_ARG);
            s->resv = 0;
            s->n_comp = s->n_tok;
            r_register(s);
            counts[6]++;
        } else if (kind < 94) { /* cancel a reservation */
            if ((i = pick_live(1)) < 0) continue;
            eng_kv_reserve_cancel(kv, S[i].impl);
            r_free(&S[i]);
            counts[7]++;
        } else if (kind < 95) { /* prefix lookup (pure) */
            int n = make_tokens(t, R_TOKS / 2), want = 0;
            uint64_t h = 0;
            for (int k = 0; k < n / R_BS; k++) {
                h = cm_block_hash(h, R_FP, t + k * R_BS, R_BS);
                if (r_find(h) < 0) break;
                want++;
            }
            TT_ASSERT_EQ_INT(eng_kv_prefix_lookup(kv, t, (uint32_t)n), want);
            counts[8]++;
        } else { /* drop the whole cache (rare) */
            if (rnd(10)) continue;
            eng_kv_cache_reset(kv);
            while (R.n_lru) {
                int blk = R.lru[0];
                r_lru_del(0);
                R.hashed[blk] = 0;
                R.free_stk[R.n_free++] = blk;
            }
            counts[9]++;
        }
        compare_all(kv);
    }
    /* Closing everything returns every block; cached blocks stay cached. */
    for (int i = 0; i < R_SEQS; i++)
        if (S[i].live) {
            eng_kv_seq_free(kv, S[i].impl);
            r_free(&S[i]);
        }
    compare_all(kv);
    eng_kv_stats_t st;
    eng_kv_stats(kv, &st);
    TT_ASSERT_EQ_INT(st.n_used, 0);
    TT_ASSERT_EQ_INT(st.n_free + st.n_cached, R_NB);
    if (getenv("TT_VERBOSE"))
        fprintf(stderr,
                "seed %llu: new %d resv %d append %d computed %d fork %d free %d commit %d "
                "cancel %d lookup %d reset %d; no-resources %d, hit blocks %d, evictions %llu\n",
                (unsigned long long)seed, counts[0], counts[1], counts[2], counts[3], counts[4],
                counts[5], counts[6], counts[7], counts[8], counts[9], oom, hit_blocks,
                (unsigned long long)R.evictions);
    /* The run must have exercised the interesting paths. */
    TT_ASSERT(oom > 0 && hit_blocks > 0 && R.evictions > 0);
    eng_kv_free(kv);
}

TT_TEST_T(kv, property_random_ops_vs_reference, 120) {
    run_property(0x9e3779b97f4a7c15ull, 4000);
    run_property(12345, 4000);
    run_property(777, 4000);
}

/* ------------------------------------------------------------------------ */
/* Targeted tests                                                           */
/* ------------------------------------------------------------------------ */

static eng_kv_t *small_pool(uint32_t n_blocks, uint32_t bs) {
    eng_kv_config_t cfg = {.geom = {2, n_blocks, bs, 2, 8, 2},
                           .fingerprint = 42,
                           .mem_mode = ENG_KV_MEM_ALLOC,
                           .enable_prefix_cache = true};
    eng_kv_t *kv = NULL;
    TT_ASSERT_EQ_INT(eng_kv_init(&cfg, &kv), CM_OK);
    return kv;
}

TT_TEST(kv, geometry_and_offsets) {
    eng_kv_geom_t g = {3, 10, 16, 4, 64, 2};
    TT_ASSERT_EQ_INT(eng_kv_geom_check(&g), CM_OK);
    TT_ASSERT_EQ_INT(eng_kv_geom_block_bytes(&g), 2 * 16 * 4 * 64 * 2);
    TT_ASSERT_EQ_INT(eng_kv_geom_pool_bytes(&g), 3 * 10 * 2 * 16 * 4 * 64 * 2);
    size_t off;
    TT_ASSERT_EQ_INT(eng_kv_geom_offset(&g, 2, 7, &off), CM_OK);
    TT_ASSERT_EQ_INT(off, (2 * 10 + 7) * eng_kv_geom_block_bytes(&g));
    TT_ASSERT_EQ_INT(eng_kv_geom_offset(&g, 3, 0, &off), CM_ERR_OUT_OF_RANGE);
    TT_ASSERT_EQ_INT(eng_kv_geom_offset(&g, 0, 10, &off), CM_ERR_OUT_OF_RANGE);
    TT_ASSERT_EQ_INT(eng_kv_geom_offset(&g, 0, -1, &off), CM_ERR_OUT_OF_RANGE);
    eng_kv_geom_t z = g;
    z.head_dim = 0;
    TT_ASSERT_EQ_INT(eng_kv_geom_check(&z), CM_ERR_INVALID_ARG);
    z = g;
    z.n_blocks = ENG_KV_MAX_BLOCKS + 1;
    TT_ASSERT_EQ_INT(eng_kv_geom_check(&z), CM_ERR_TOO_LARGE);
    z = g;
    z.kv_heads = 1u << 31;
    z.head_dim = 1u << 31;
    TT_ASSERT_EQ_INT(eng_kv_geom_check(&z), CM_ERR_TOO_LARGE);

    /* External memory: addresses are base + offset; too small is refused. */
    size_t pool = eng_kv_geom_pool_bytes(&g);
    char *mem = malloc(pool);
    eng_kv_config_t cfg = {.geom = g,
                           .mem_mode = ENG_KV_MEM_EXTERNAL,
                           .mem = mem,
                           .mem_bytes = pool - 1,
                           .mem_is_host = true};
    eng_kv_t *kv;
    TT_ASSERT_EQ_INT(eng_kv_init(&cfg, &kv), CM_ERR_INVALID_ARG);
    cfg.mem_bytes = pool;
    TT_ASSERT_EQ_INT(eng_kv_init(&cfg, &kv), CM_OK);
    TT_ASSERT(eng_kv_pool_base(kv) == mem);
    TT_ASSERT(eng_kv_block_ptr(kv, 1, 3) == mem + (10 + 3) * eng_kv_geom_block_bytes(&g));
    TT_ASSERT(eng_kv_block_ptr(kv, 1, 10) == NULL);
    /* Copy touches every layer of exactly one block. */
    memset(mem, 0, pool);
    for (uint32_t l = 0; l < 3; l++) memset(eng_kv_block_ptr(kv, l, 2), 0x40 + (int)l, 8);
    TT_ASSERT_EQ_INT(eng_kv_block_copy(kv, 2, 5), CM_OK);
    for (uint32_t l = 0; l < 3; l++)
        TT_ASSERT_EQ_INT(((unsigned char *)eng_kv_block_ptr(kv, l, 5))[7], 0x40 + l);
    TT_ASSERT_EQ_INT(eng_kv_block_copy(kv, 2, 10), CM_ERR_OUT_OF_RANGE);
    eng_kv_free(kv);
    free(mem);

    /* No memory: bookkeeping only. */
    eng_kv_config_t none = {.geom = g};
    TT_ASSERT_EQ_INT(eng_kv_init(&none, &kv), CM_OK);
    TT_ASSERT(eng_kv_block_ptr(kv, 0, 0) == NULL);
    TT_ASSERT_EQ_INT(eng_kv_block_copy(kv, 0, 1), CM_ERR_UNSUPPORTED);
    eng_kv_free(kv);

    /* A large pool goes through mmap with MAP_POPULATE. */
    eng_kv_config_t big = {
        .geom = {2, 64, 16, 8, 128, 2}, .mem_mode = ENG_KV_MEM_ALLOC, .prefault = true};
    TT_ASSERT_EQ_INT(eng_kv_init(&big, &kv), CM_OK);
    memset(eng_kv_pool_base(kv), 1, eng_kv_pool_bytes(kv));
    eng_kv_free(kv);
}

TT_TEST(kv, prefix_hits_after_partial_and_complete_blocks) {
    eng_kv_t *kv = small_pool(32, 16);
    int32_t t[64];
    for (int i = 0; i < 64; i++) t[i] = 100 + i;
    eng_kv_seq_t *a, *b;
    uint32_t hit = 99;
    /* 40 tokens: 2 full blocks + a partial one. Nothing cached yet. */
    TT_ASSERT_EQ_INT(eng_kv_seq_new(kv, t, 40, 39, &a, &hit), CM_OK);
    TT_ASSERT_EQ_INT(hit, 0);
    TT_ASSERT_EQ_INT(eng_kv_seq_n_blocks(a), 3);
    /* Not computed yet: nothing is shareable. */
    TT_ASSERT_EQ_INT(eng_kv_prefix_lookup(kv, t, 40), 0);
    TT_ASSERT_EQ_INT(eng_kv_seq_set_computed(kv, a, 20), CM_OK);
    TT_ASSERT_EQ_INT(eng_kv_prefix_lookup(kv, t, 40), 1);
    TT_ASSERT_EQ_INT(eng_kv_seq_set_computed(kv, a, 40), CM_OK);
    TT_ASSERT_EQ_INT(eng_kv_prefix_lookup(kv, t, 40), 2);
    /* Same 40 tokens: 32 hit (the partial third block never hits). */
    TT_ASSERT_EQ_INT(eng_kv_seq_new(kv, t, 40, 40, &b, &hit), CM_OK);
    TT_ASSERT_EQ_INT(hit, 32);
    TT_ASSERT_EQ_INT(eng_kv_seq_computed(b), 32);
    TT_ASSERT_EQ_INT(eng_kv_seq_blocks(b)[0], eng_kv_seq_blocks(a)[0]);
    TT_ASSERT_EQ_INT(eng_kv_seq_blocks(b)[1], eng_kv_seq_blocks(a)[1]);
    TT_ASSERT(eng_kv_seq_blocks(b)[2] != eng_kv_seq_blocks(a)[2]);
    eng_kv_seq_free(kv, b);
    /* Exactly 32 tokens with max_hit = n - 1: only the first block may hit,
     * so one token is left to compute. */
    TT_ASSERT_EQ_INT(eng_kv_seq_new(kv, t, 32, 31, &b, &hit), CM_OK);
    TT_ASSERT_EQ_INT(hit, 16);
    eng_kv_seq_free(kv, b);
    /* A prompt diverging inside block 1 hits block 0 only. */
    int32_t u[40];
    memcpy(u, t, sizeof u);
    u[20] = 7;
    TT_ASSERT_EQ_INT(eng_kv_prefix_lookup(kv, u, 40), 1);
    TT_ASSERT_EQ_INT(eng_kv_seq_new(kv, u, 40, 39, &b, &hit), CM_OK);
    TT_ASSERT_EQ_INT(hit, 16);
    eng_kv_seq_free(kv, b);
    /* Fewer tokens than a block: no hit. */
    TT_ASSERT_EQ_INT(eng_kv_prefix_lookup(kv, t, 15), 0);
    /* After `a` completes its third block by appending, that one hits too. */
    TT_ASSERT_EQ_INT(eng_kv_seq_append(kv, a, t + 40, 8), CM_OK);
    TT_ASSERT_EQ_INT(eng_kv_seq_set_computed(kv, a, 48), CM_OK);
    TT_ASSERT_EQ_INT(eng_kv_prefix_lookup(kv, t, 64), 3);
    /* Freed sequences leave their blocks cached; they still hit. */
    eng_kv_seq_free(kv, a);
    eng_kv_stats_t st;
    eng_kv_stats(kv, &st);
    TT_ASSERT_EQ_INT(st.n_cached, 3);
    TT_ASSERT_EQ_INT(st.n_used, 0);
    TT_ASSERT_EQ_INT(eng_kv_seq_new(kv, t, 64, 63, &b, &hit), CM_OK);
    TT_ASSERT_EQ_INT(hit, 48);
    uint64_t h42 = eng_kv_seq_block_hash(b, 0);
    TT_ASSERT(eng_kv_cache_contains(kv, h42));
    eng_kv_seq_free(kv, b);
    /* Another fingerprint gives other hashes for the same tokens. */
    eng_kv_config_t cfg = {
        .geom = {2, 32, 16, 2, 8, 2}, .fingerprint = 43, .enable_prefix_cache = true};
    eng_kv_t *kv2;
    TT_ASSERT_EQ_INT(eng_kv_init(&cfg, &kv2), CM_OK);
    eng_kv_seq_t *o;
    TT_ASSERT_EQ_INT(eng_kv_seq_new(kv2, t, 64, 63, &o, &hit), CM_OK);
    TT_ASSERT_EQ_INT(hit, 0);
    TT_ASSERT(eng_kv_seq_block_hash(o, 0) != h42);
    TT_ASSERT(!eng_kv_cache_contains(kv, eng_kv_seq_block_hash(o, 0)));
    TT_ASSERT_EQ_INT(eng_kv_seq_set_computed(kv2, o, 64), CM_OK);
    TT_ASSERT(!eng_kv_cache_contains(kv2, h42));
    eng_kv_seq_free(kv2, o);
    eng_kv_free(kv2);
    TT_ASSERT_EQ_INT(eng_kv_check(kv), CM_OK);
    eng_kv_free(kv);
}

TT_TEST(kv, reservation_cancel_frees_everything) {
    eng_kv_t *kv = small_pool(16, 4);
    int32_t t[40];
    for (int i = 0; i < 40; i++) t[i] = i;
    /* Cache the first 3 blocks through an ordinary sequence. */
    eng_kv_seq_t *a, *r;
    TT_ASSERT_EQ_INT(eng_kv_seq_new(kv, t, 12, 0, &a, NULL), CM_OK);
    TT_ASSERT_EQ_INT(eng_kv_seq_set_computed(kv, a, 12), CM_OK);
    eng_kv_seq_free(kv, a);
    eng_kv_stats_t before, mid, after;
    eng_kv_stats(kv, &before);
    TT_ASSERT_EQ_INT(before.n_cached, 3);
    uint32_t hits = 0;
    TT_ASSERT_EQ_INT(eng_kv_reserve(kv, t, 40, 39, &r, &hits), CM_OK);
    TT_ASSERT_EQ_INT(hits, 3);
    TT_ASSERT(eng_kv_seq_is_reservation(r));
    eng_kv_stats(kv, &mid);
    TT_ASSERT_EQ_INT(mid.n_used, 10);
    TT_ASSERT_EQ_INT(mid.n_reservations, 1);
    /* A reservation refuses use until committed. */
    int32_t one = 5, cs, cd;
    eng_kv_seq_t *f;
    TT_ASSERT_EQ_INT(eng_kv_seq_append(kv, r, &one, 1), CM_ERR_BUSY);
    TT_ASSERT_EQ_INT(eng_kv_seq_set_computed(kv, r, 40), CM_ERR_BUSY);
    TT_ASSERT_EQ_INT(eng_kv_seq_fork(kv, r, &f, &cs, &cd), CM_ERR_BUSY);
    TT_ASSERT_EQ_INT(eng_kv_check(kv), CM_OK);
    eng_kv_reserve_cancel(kv, r);
    eng_kv_stats(kv, &after);
    TT_ASSERT_EQ_INT(after.n_used, 0);
    TT_ASSERT_EQ_INT(after.n_reservations, 0);
    TT_ASSERT_EQ_INT(after.n_seqs, 0);
    /* The received-nothing blocks did not enter the cache. */
    TT_ASSERT_EQ_INT(after.n_cached, 3);
    TT_ASSERT_EQ_INT(after.n_registered, 3);
    TT_ASSERT_EQ_INT(after.n_free, 13);
    TT_ASSERT_EQ_INT(eng_kv_prefix_lookup(kv, t, 40), 3);
    /* Reserve everything, cancel, reserve again: nothing leaked. */
    for (int round = 0; round < 50; round++) {
        TT_ASSERT_EQ_INT(eng_kv_reserve(kv, t, 40, 39, &r, &hits), CM_OK);
        if (round % 2) {
            eng_kv_reserve_cancel(kv, r);
        } else {
            TT_ASSERT_EQ_INT(eng_kv_reserve_commit(kv, r), CM_OK);
            TT_ASSERT_EQ_INT(eng_kv_seq_computed(r), 40);
            eng_kv_seq_free(kv, r);
        }
        TT_ASSERT_EQ_INT(eng_kv_check(kv), CM_OK);
    }
    eng_kv_stats(kv, &after);
    TT_ASSERT_EQ_INT(after.n_used, 0);
    TT_ASSERT_EQ_INT(after.n_free + after.n_cached, 16);
    TT_ASSERT_EQ_INT(eng_kv_prefix_lookup(kv, t, 40), 10);
    /* Closing the manager with an open reservation releases it too (LSan). */
    TT_ASSERT_EQ_INT(eng_kv_reserve(kv, t, 20, 19, &r, &hits), CM_OK);
    eng_kv_free(kv);
}

static void snapshot(eng_kv_t *kv, eng_kv_seq_t *s, eng_kv_stats_t *st, int32_t *blocks,
                     uint32_t *nb) {
    eng_kv_stats(kv, st);
    *nb = eng_kv_seq_n_blocks(s);
    memcpy(blocks, eng_kv_seq_blocks(s), *nb * sizeof *blocks);
}

TT_TEST(kv, out_of_blocks_leaves_state_intact) {
    eng_kv_t *kv = small_pool(8, 4);
    int32_t t[64];
    for (int i = 0; i < 64; i++) t[i] = 1000 + i;
    eng_kv_seq_t *a, *b, *x = NULL;
    TT_ASSERT_EQ_INT(eng_kv_seq_new(kv, t, 14, 13, &a, NULL), CM_OK); /* 4 blocks */
    TT_ASSERT_EQ_INT(eng_kv_seq_set_computed(kv, a, 14), CM_OK);
    TT_ASSERT_EQ_INT(eng_kv_seq_new(kv, t + 32, 12, 0, &b, NULL), CM_OK); /* 3 blocks */
    eng_kv_stats_t s0, s1;
    int32_t bl0[16], bl1[16];
    uint32_t n0, n1;
    snapshot(kv, a, &s0, bl0, &n0);
    TT_ASSERT_EQ_INT(eng_kv_available(kv), 1);
    /* Each of these needs more blocks than exist. */
    TT_ASSERT_EQ_INT(eng_kv_seq_append(kv, a, t, 7), CM_ERR_NO_RESOURCES);
    TT_ASSERT_EQ_INT(eng_kv_seq_new(kv, t + 40, 9, 0, &x, NULL), CM_ERR_NO_RESOURCES);
    TT_ASSERT(x == NULL);
    TT_ASSERT_EQ_INT(eng_kv_reserve(kv, t + 40, 9, 0, &x, NULL), CM_ERR_NO_RESOURCES);
    snapshot(kv, a, &s1, bl1, &n1);
    TT_ASSERT(memcmp(&s0, &s1, sizeof s0) == 0);
    TT_ASSERT(n0 == n1 && memcmp(bl0, bl1, n0 * sizeof *bl0) == 0);
    TT_ASSERT_EQ_INT(eng_kv_seq_len(a), 14);
    TT_ASSERT_EQ_INT(eng_kv_check(kv), CM_OK);
    /* Fork of a sequence with a partial tail takes the last block, then fails. */
    eng_kv_seq_t *c, *d = NULL;
    int32_t cs, cd;
    TT_ASSERT_EQ_INT(eng_kv_seq_fork(kv, a, &c, &cs, &cd), CM_OK);
    TT_ASSERT_EQ_INT(cs, eng_kv_seq_blocks(a)[3]);
    TT_ASSERT_EQ_INT(eng_kv_seq_fork(kv, a, &d, &cs, &cd), CM_ERR_NO_RESOURCES);
    TT_ASSERT(d == NULL);
    /* The pool is full of used blocks: even one token fails when it needs a block. */
    TT_ASSERT_EQ_INT(eng_kv_seq_append(kv, b, t, 1), CM_ERR_NO_RESOURCES);
    TT_ASSERT_EQ_INT(eng_kv_seq_append(kv, a, t, 2), CM_OK); /* fits the tail block */
    TT_ASSERT_EQ_INT(eng_kv_check(kv), CM_OK);
    /* Freeing `a` caches its 3 full computed blocks; they are evicted on demand,
     * the tail block first. */
    eng_kv_seq_free(kv, a);
    eng_kv_seq_free(kv, c);
    TT_ASSERT_EQ_INT(eng_kv_available(kv), 5);
    TT_ASSERT_EQ_INT(eng_kv_seq_append(kv, b, t, 16), CM_OK); /* 4 more blocks */
    eng_kv_stats(kv, &s1);
    TT_ASSERT_EQ_INT(s1.n_evictions, 2);
    TT_ASSERT_EQ_INT(eng_kv_prefix_lookup(kv, t, 14), 1); /* block 0 survived */
    /* Invalid input is refused cleanly. */
    int32_t neg = -1;
    TT_ASSERT_EQ_INT(eng_kv_seq_append(kv, b, &neg, 1), CM_ERR_INVALID_ARG);
    TT_ASSERT_EQ_INT(eng_kv_seq_append(kv, b, NULL, 1), CM_ERR_INVALID_ARG);
    TT_ASSERT_EQ_INT(eng_kv_seq_new(kv, t, ENG_KV_MAX_SEQ_TOKENS + 1u, 0, &x, NULL),
                     CM_ERR_TOO_LARGE);
    TT_ASSERT_EQ_INT(eng_kv_seq_set_computed(kv, b, 1000), CM_ERR_OUT_OF_RANGE);
    TT_ASSERT_EQ_INT(eng_kv_reserve_commit(kv, b), CM_ERR_INVALID_ARG);
    TT_ASSERT_EQ_INT(eng_kv_check(kv), CM_OK);
    eng_kv_seq_free(kv, b);
    eng_kv_free(kv);
}

typedef struct {
    int stored, removed;
} ev_count_t;

static void on_ev(void *ud, eng_kv_event_t ev, uint64_t hash, int32_t block) {
    ev_count_t *c = ud;
    (void)hash;
    (void)block;
    if (ev == ENG_KV_EVENT_STORED) c->stored++;
    if (ev == ENG_KV_EVENT_REMOVED) c->removed++;
}

TT_TEST(kv, events_and_cache_disabled) {
    ev_count_t ev = {0};
    eng_kv_config_t cfg = {.geom = {1, 8, 2, 1, 1, 1},
                           .enable_prefix_cache = true,
                           .on_event = on_ev,
                           .event_ud = &ev};
    eng_kv_t *kv;
    TT_ASSERT_EQ_INT(eng_kv_init(&cfg, &kv), CM_OK);
    int32_t t[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    eng_kv_seq_t *s, *s2;
    TT_ASSERT_EQ_INT(eng_kv_seq_new(kv, t, 6, 0, &s, NULL), CM_OK);
    TT_ASSERT_EQ_INT(eng_kv_seq_set_computed(kv, s, 6), CM_OK);
    TT_ASSERT_EQ_INT(ev.stored, 3);
    /* A second sequence computing the same blocks does not register duplicates. */
    TT_ASSERT_EQ_INT(eng_kv_seq_new(kv, t, 6, 0, &s2, NULL), CM_OK);
    TT_ASSERT_EQ_INT(eng_kv_seq_set_computed(kv, s2, 6), CM_OK);
    TT_ASSERT_EQ_INT(ev.stored, 3);
    eng_kv_seq_free(kv, s2);
    eng_kv_seq_free(kv, s);
    eng_kv_cache_reset(kv);
    TT_ASSERT_EQ_INT(ev.removed, 3);
    TT_ASSERT_EQ_INT(eng_kv_available(kv), 8);
    TT_ASSERT_EQ_INT(eng_kv_check(kv), CM_OK);
    eng_kv_free(kv);

    cfg.enable_prefix_cache = false;
    ev.stored = 0;
    TT_ASSERT_EQ_INT(eng_kv_init(&cfg, &kv), CM_OK);
    TT_ASSERT_EQ_INT(eng_kv_seq_new(kv, t, 6, 0, &s, NULL), CM_OK);
    TT_ASSERT_EQ_INT(eng_kv_seq_set_computed(kv, s, 6), CM_OK);
    eng_kv_seq_free(kv, s);
    TT_ASSERT_EQ_INT(ev.stored, 0);
    TT_ASSERT_EQ_INT(eng_kv_prefix_lookup(kv, t, 6), 0);
    TT_ASSERT_EQ_INT(eng_kv_check(kv), CM_OK);
    eng_kv_free(kv);
}

TT_TEST(kv, slots_map_positions_to_blocks) {
    eng_kv_t *kv = small_pool(8, 4);
    int32_t t[10] = {0};
    eng_kv_seq_t *s;
    TT_ASSERT_EQ_INT(eng_kv_seq_new(kv, t, 10, 0, &s, NULL), CM_OK);
    int32_t blk;
    uint32_t off;
    TT_ASSERT(eng_kv_seq_slot(s, 9, &blk, &off));
    TT_ASSERT_EQ_INT(blk, eng_kv_seq_blocks(s)[2]);
    TT_ASSERT_EQ_INT(off, 1);
    TT_ASSERT(!eng_kv_seq_slot(s, 10, &blk, &off));
    /* Appending 2 more tokens fills block 2; a third needs one more block. */
    TT_ASSERT_EQ_INT(eng_kv_seq_blocks_needed(kv, s, 2), 0);
    TT_ASSERT_EQ_INT(eng_kv_seq_blocks_needed(kv, s, 3), 1);
    TT_ASSERT_EQ_INT(eng_kv_seq_blocks_needed(kv, s, 11), 3);
    /* Slot addresses follow [layer][block][K|V][block_size][kv_heads][head_dim]:
     * this pool has 2 layers, 8 blocks, 4 tokens, 2 heads, head_dim 8, 2 bytes. */
    void *k, *v;
    TT_ASSERT_EQ_INT(eng_kv_slot_ptrs(kv, 1, 5, 3, &k, &v), CM_OK);
    char *base = eng_kv_pool_base(kv);
    size_t bb = 2 * 4 * 2 * 8 * 2;
    TT_ASSERT_EQ_INT((char *)k - base, (8 + 5) * bb + 3 * 2 * 8 * 2);
    TT_ASSERT_EQ_INT((char *)v - base, (8 + 5) * bb + bb / 2 + 3 * 2 * 8 * 2);
    TT_ASSERT_EQ_INT(eng_kv_slot_ptrs(kv, 1, 5, 4, &k, &v), CM_ERR_OUT_OF_RANGE);
    TT_ASSERT_EQ_INT(eng_kv_slot_ptrs(kv, 2, 5, 0, &k, &v), CM_ERR_OUT_OF_RANGE);
    /* Block 0 is handed out first; then 1, 2, ... */
    TT_ASSERT_EQ_INT(eng_kv_seq_blocks(s)[0], 0);
    TT_ASSERT_EQ_INT(eng_kv_seq_blocks(s)[2], 2);
    eng_kv_seq_free(kv, s);
    eng_kv_free(kv);
}
