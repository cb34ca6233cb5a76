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
    FILE *f = fopen(path, "rb");
    TT_ASSERT_MSG(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    TT_ASSERT(buf && fread(buf, 1, (size_t)n, f) == (size_t)n);
    buf[n] = 0;
    fclose(f);
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
