/*
 * test_model_fuzz.c - the model loader (mdl_weights_open, mdl_config_load)
 * on malformed input: seeded mutation loops over files built from the
 * fixture checkpoints, every truncation of a weights file, and one
 * regression case per bug the libFuzzer targets (tests/fuzz/fuzz_safetensors.c,
 * tests/fuzz/fuzz_model_config.c) found.
 *
 * The contract checked everywhere: either CM_OK, and then every tensor the
 * header names is there with nbytes == product(shape) * dtype size, its data
 * aligned to its dtype and equal to the file's bytes at its data_offsets
 * (which lie inside the file; the file is compared through an exact-size
 * heap copy, so ASan sees any offset past its end); or a negative status
 * with a message that names the file.
 */
#include <cjson/cJSON.h>
#include <float.h>
#include <sys/stat.h>

#include "mdl.h"
#include "tt.h"

static uint64_t rng_below(uint64_t *s, uint64_t n) { return n ? tt_rng_next(s) % n : 0; }

typedef struct {
    uint8_t *p;
    size_t len;
} bytes_t;

static bytes_t slurp(const char *path) {
    bytes_t b;
    b.p = (uint8_t *)tt_read_file(path, &b.len);
    return b;
}

static void put(const char *dir, const char *name, const void *p, size_t n) {
    char path[2048];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    TT_ASSERT_MSG(f, "cannot create %s", path);
    TT_ASSERT(fwrite(p, 1, n, f) == n);
    TT_ASSERT(fclose(f) == 0);
}

static void drop(const char *dir, const char *name) {
    char path[2048];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    (void)unlink(path);
}

static const char *scratch(const char *name) {
    static char dir[2][1024];
    static int k;
    char *d = dir[k++ & 1];
    snprintf(d, sizeof dir[0], "%s/%s", tt_tmpdir(), name);
    TT_ASSERT(mkdir(d, 0700) == 0);
    return d;
}

/* @j printed, in malloc'd memory (mutate_bytes reallocs it). */
static bytes_t json_bytes(const cJSON *j) {
    char *text = cJSON_PrintUnformatted(j);
    TT_ASSERT(text);
    bytes_t b = {(uint8_t *)strdup(text), strlen(text)};
    TT_ASSERT(b.p);
    cJSON_free(text);
    return b;
}

static size_t dsize(const char *dtype) {
    return !strcmp(dtype, "F32") ? 4 : !strcmp(dtype, "F16") || !strcmp(dtype, "BF16") ? 2 : 0;
}

/* A safetensors file of header @h (printed, then padded with spaces to an
 * 8-byte boundary when @pad) and data @d. */
static bytes_t st_file(const cJSON *h, const uint8_t *d, size_t dlen, bool pad) {
    char *text = cJSON_PrintUnformatted(h);
    TT_ASSERT(text);
    size_t hl = strlen(text);
    size_t padded = pad ? (hl + 8 + 7) / 8 * 8 - 8 : hl;
    bytes_t b = {malloc(8 + padded + dlen + 1), 8 + padded + dlen};
    TT_ASSERT(b.p);
    for (int i = 0; i < 8; i++) b.p[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    memcpy(b.p + 8, text, hl);
    memset(b.p + 8 + hl, ' ', padded - hl);
    if (dlen) memcpy(b.p + 8 + padded, d, dlen);
    cJSON_free(text);
    return b;
}

/* The header of safetensors bytes @f, or NULL. */
static cJSON *st_header(const uint8_t *f, size_t len, uint64_t *hlen) {
    if (len < 8) return NULL;
    uint64_t h = 0;
    for (int i = 0; i < 8; i++) h |= (uint64_t)f[i] << (8 * i);
    if (h > len - 8) return NULL;
    *hlen = h;
    return cJSON_ParseWithLength((const char *)f + 8, (size_t)h);
}

/*
 * A small valid file built from fixture @path (a safetensors file): every
 * tensor keeps its name and rank, each dimension is clamped to 3, every
 * third tensor becomes F32 (the rest keep the fixture's dtype), and the
 * tensors are laid out in header order, each aligned to its dtype, over
 * bytes taken from the start of the fixture's data. *@hdr gets the header.
 */
static bytes_t st_base(const char *path, cJSON **hdr, size_t *data_len) {
    bytes_t real = slurp(path);
    uint64_t hl = 0;
    cJSON *h = st_header(real.p, real.len, &hl);
    TT_ASSERT_MSG(cJSON_IsObject(h), "%s: no header", path);
    const uint8_t *src = real.p + 8 + hl;
    size_t src_len = real.len - 8 - hl, off = 0;
    int i = 0;
    cJSON *e;
    cJSON_ArrayForEach(e, h) {
        if (!strcmp(e->string, "__metadata__")) continue;
        cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape"), *d;
        uint64_t n = 1;
        cJSON_ArrayForEach(d, sh) {
            if (d->valuedouble > 3) cJSON_SetNumberValue(d, 3);
            n *= (uint64_t)d->valuedouble;
        }
        if (i++ % 3 == 1) {
            cJSON_ReplaceItemInObjectCaseSensitive(e, "dtype", cJSON_CreateString("F32"));
        }
        size_t es = dsize(cJSON_GetObjectItemCaseSensitive(e, "dtype")->valuestring);
        TT_ASSERT(es);
        off = (off + es - 1) / es * es;
        cJSON *o = cJSON_CreateArray();
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
        off += n * es;
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
        cJSON_ReplaceItemInObjectCaseSensitive(e, "data_offsets", o);
    }
    TT_ASSERT(off <= src_len);
    bytes_t b = st_file(h, src, off, true);
    free(real.p);
    *hdr = h;
    *data_len = off;
    return b;
}

/*
 * Checks every tensor that safetensors bytes @f (an exact-size heap copy)
 * names against what @w returns for it; returns their total bytes. Fails
 * the test on a tensor outside the file, of the wrong size, misaligned or
 * with other bytes than the file's.
 */
static uint64_t check_tensors(const mdl_weights_t *w, const uint8_t *f, size_t len,
                              const char *what) {
    uint64_t hl = 0, total = 0;
    cJSON *h = st_header(f, len, &hl);
    TT_ASSERT_MSG(cJSON_IsObject(h), "%s: accepted without a JSON object header", what);
    const size_t data_size = len - 8 - (size_t)hl;
    const cJSON *e;
    cJSON_ArrayForEach(e, h) {
        const char *name = e->string;
        if (!strcmp(name, "__metadata__")) continue;
        for (const cJSON *o = h->child; o != e; o = o->next)
            TT_ASSERT_MSG(strcmp(o->string, name) != 0, "%s: '%s' twice, accepted", what, name);
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
        const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        TT_ASSERT_MSG(cJSON_IsString(dt) && dsize(dt->valuestring) && cJSON_IsArray(sh) &&
                          cJSON_GetArraySize(sh) <= 4 && cJSON_IsArray(off) &&
                          cJSON_GetArraySize(off) == 2,
                      "%s: malformed entry '%s' accepted", what, name);
        const size_t es = dsize(dt->valuestring);
        uint64_t shape[4] = {0}, nbytes = es;
        uint32_t nd = 0;
        const cJSON *d;
        cJSON_ArrayForEach(d, sh) {
            TT_ASSERT_MSG(cJSON_IsNumber(d) && d->valuedouble >= 0 && d->valuedouble <= 1e15 &&
                              d->valuedouble == floor(d->valuedouble),
                          "%s: '%s': shape entry %g accepted", what, name, d->valuedouble);
            shape[nd] = (uint64_t)d->valuedouble;
            TT_ASSERT_MSG(!__builtin_mul_overflow(nbytes, shape[nd], &nbytes),
                          "%s: '%s': a shape whose byte count wraps around accepted", what, name);
            nd++;
        }
        const cJSON *b = cJSON_GetArrayItem(off, 0), *en = cJSON_GetArrayItem(off, 1);
        TT_ASSERT_MSG(cJSON_IsNumber(b) && cJSON_IsNumber(en) && b->valuedouble >= 0 &&
                          b->valuedouble == floor(b->valuedouble) &&
                          en->valuedouble == floor(en->valuedouble) &&
                          b->valuedouble <= en->valuedouble && en->valuedouble <= (double)data_size,
                      "%s: '%s': data_offsets [%g, %g] accepted (%zu data bytes)", what, name,
                      b->valuedouble, en->valuedouble, data_size);
        const size_t at = 8 + (size_t)hl + (size_t)b->valuedouble;
        TT_ASSERT_MSG((uint64_t)(en->valuedouble - b->valuedouble) == nbytes,
                      "%s: '%s': %g data bytes for %llu accepted", what, name,
                      en->valuedouble - b->valuedouble, (unsigned long long)nbytes);
        mdl_tensor_t t;
        char err[256] = "";
        TT_ASSERT_MSG(mdl_weights_get(w, name, nd, shape, &t, err, sizeof err) == CM_OK,
                      "%s: '%s' not returned as in its header: %s", what, name, err);
        TT_ASSERT(t.ndim == nd && !strcmp(t.name, name));
        TT_ASSERT_STR_EQ(mdl_dtype_name(t.dtype), dt->valuestring);
        TT_ASSERT_EQ_U64(t.nbytes, nbytes);
        TT_ASSERT_MSG((uintptr_t)t.data % es == 0, "%s: '%s' misaligned", what, name);
        TT_ASSERT_MSG(at <= len && t.nbytes <= len - at && memcmp(t.data, f + at, t.nbytes) == 0,
                      "%s: '%s': data not the file's bytes at its offsets", what, name);
        total += nbytes;
    }
    cJSON_Delete(h);
    return total;
}

/*
 * Writes @f as @dir/model.safetensors, opens @dir and checks the contract.
 * Returns the status.
 */
static cm_status_t open_check(const char *dir, const uint8_t *f, size_t len, const char *what) {
    put(dir, "model.safetensors", f, len);
    uint8_t *copy = malloc(len ? len : 1);
    TT_ASSERT(copy);
    if (len) memcpy(copy, f, len);
    mdl_weights_t *w = NULL;
    char err[512] = "";
    cm_status_t st = mdl_weights_open(dir, &w, err, sizeof err);
    if (st == CM_OK) {
        TT_ASSERT(w);
        TT_ASSERT_EQ_U64(check_tensors(w, copy, len, what), mdl_weights_bytes(w));
        mdl_weights_close(w);
    } else {
        TT_ASSERT_MSG(st < 0 && w == NULL, "%s: status %d", what, (int)st);
        TT_ASSERT_MSG(strstr(err, "model.safetensors"), "%s: %s: unclear error '%s'", what,
                      cm_status_name(st), err);
    }
    free(copy);
    return st;
}

/* ---- safetensors: structured and byte-level mutations ------------------ */

static cJSON *pick_entry(cJSON *h, uint64_t *s) {
    int n = cJSON_GetArraySize(h);
    for (int tries = 0; n && tries < 8; tries++) {
        cJSON *e = cJSON_GetArrayItem(h, (int)rng_below(s, (uint64_t)n));
        if (strcmp(e->string, "__metadata__") != 0) return e;
    }
    return NULL;
}

static cJSON *num(double v) { return cJSON_CreateNumber(v); }

/* Edits that free the new item when there is nothing to edit (an earlier
 * mutation removed the key or made the container something else). */
static void set_key(cJSON *o, const char *k, cJSON *v) {
    if (!cJSON_IsObject(o) || !cJSON_ReplaceItemInObjectCaseSensitive(o, k, v)) cJSON_Delete(v);
}

static void set_at(cJSON *a, int i, cJSON *v) {
    if (!cJSON_IsArray(a) || !cJSON_ReplaceItemInArray(a, i, v)) cJSON_Delete(v);
}

static void append(cJSON *a, cJSON *v) {
    if (!cJSON_IsArray(a) || !cJSON_AddItemToArray(a, v)) cJSON_Delete(v);
}

/* One structured mutation of header @h (data section of @dlen bytes). */
static void mutate_header(cJSON *h, size_t dlen, uint64_t *s) {
    static const double k_dims[] = {
        0,     1,  3,   4294967296.0,       4294967297.0,         1e12, 1e12 + 1, 1e13,
        1e300, -1, 1.5, 9007199254740992.0, 1.8446744073709552e19};
    static const char *const k_dtypes[] = {"I8",      "F64",  "bf16", "",   "F32 ",
                                           "F8_E4M3", "BF16", "F16",  "F32"};
    cJSON *e = pick_entry(h, s);
    if (!e) return;
    cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    const double b =
        cJSON_IsNumber(cJSON_GetArrayItem(off, 0)) ? cJSON_GetArrayItem(off, 0)->valuedouble : 0;
    const double offs[] = {(double)dlen,
                           (double)dlen + 1,
                           (double)dlen * 2,
                           9.3e18,
                           1e300,
                           -1,
                           -(double)dlen,
                           0.5,
                           b + 0.5,
                           b + 1,
                           b - 1,
                           0};
    const int n_offs = (int)(sizeof offs / sizeof offs[0]);
    switch (rng_below(s, 14)) {
    case 0: /* a huge, negative or fractional dimension */
        if (cJSON_GetArraySize(sh) > 0)
            set_at(sh, (int)rng_below(s, (uint64_t)cJSON_GetArraySize(sh)),
                   num(k_dims[rng_below(s, sizeof k_dims / sizeof k_dims[0])]));
        break;
    case 1: { /* a shape whose byte count wraps around to 0, with no data */
        cJSON *w = cJSON_CreateArray();
        cJSON_AddItemToArray(w, num(4294967296.0));
        cJSON_AddItemToArray(w, num(4294967296.0));
        if (rng_below(s, 2)) cJSON_AddItemToArray(w, num(2));
        set_key(e, "shape", w);
        cJSON *o = cJSON_CreateArray();
        cJSON_AddItemToArray(o, num(b));
        cJSON_AddItemToArray(o, num(b));
        set_key(e, "data_offsets", o);
        break;
    }
    case 2: /* an offset past the end, negative or fractional */
        if (cJSON_GetArraySize(off) == 2)
            set_at(off, (int)rng_below(s, 2), num(offs[rng_below(s, (uint64_t)n_offs)]));
        break;
    case 3: { /* both offsets shifted: overlaps a neighbour, maybe misaligned */
        double d = (double)rng_below(s, 9) - 4;
        for (int i = 0; i < 2 && cJSON_GetArraySize(off) == 2; i++) {
            cJSON *v = cJSON_GetArrayItem(off, i);
            cJSON_SetNumberValue(v, v->valuedouble + d);
        }
        break;
    }
    case 4: { /* the data_offsets of another tensor */
        cJSON *o = pick_entry(h, s);
        cJSON *oo = o ? cJSON_GetObjectItemCaseSensitive(o, "data_offsets") : NULL;
        if (oo) set_key(e, "data_offsets", cJSON_Duplicate(oo, 1));
        break;
    }
    case 5: /* another dtype string, or not a string */
        if (rng_below(s, 5))
            set_key(
                e, "dtype",
                cJSON_CreateString(k_dtypes[rng_below(s, sizeof k_dtypes / sizeof k_dtypes[0])]));
        else
            set_key(e, "dtype", num(7));
        break;
    case 6: /* the same tensor name twice */
        cJSON_AddItemToObject(h, e->string, cJSON_Duplicate(e, 1));
        break;
    case 7: { /* the entry is not an object */
        cJSON *v[] = {num(1), cJSON_CreateString("x"), cJSON_CreateArray(), cJSON_CreateNull(),
                      cJSON_CreateObject()};
        int k = (int)rng_below(s, 5);
        set_key(h, e->string, v[k]);
        for (int i = 0; i < 5; i++)
            if (i != k) cJSON_Delete(v[i]);
        break;
    }
    case 8: { /* a field missing */
        static const char *const k[] = {"dtype", "shape", "data_offsets"};
        cJSON_DeleteItemFromObjectCaseSensitive(e, k[rng_below(s, 3)]);
        break;
    }
    case 9: /* five dimensions, a non-array shape, a string dimension */
        if (rng_below(s, 3) == 0) {
            while (cJSON_IsArray(sh) && cJSON_GetArraySize(sh) < 5) append(sh, num(1));
        } else if (rng_below(s, 2)) {
            set_key(e, "shape", num(3));
        } else if (cJSON_GetArraySize(sh) > 0) {
            set_at(sh, 0, cJSON_CreateString("3"));
        }
        break;
    case 10: /* data_offsets of the wrong length or type */
        if (rng_below(s, 2) && cJSON_GetArraySize(off) > 0)
            set_at(off, 0, cJSON_CreateString("0"));
        else if (rng_below(s, 2))
            append(off, num(0));
        else
            cJSON_DeleteItemFromArray(off, 0);
        break;
    case 11: /* renamed: empty, __metadata__, or escapes */
        cJSON_AddItemToObject(h, rng_below(s, 2) ? "" : "t\u00e9\\n\"x\"", cJSON_Duplicate(e, 1));
        cJSON_DeleteItemFromObjectCaseSensitive(h, e->string);
        break;
    case 12: /* removed (still valid) */
        cJSON_DeleteItemFromObjectCaseSensitive(h, e->string);
        break;
    default: /* odd metadata */
        cJSON_DeleteItemFromObjectCaseSensitive(h, "__metadata__");
        cJSON_AddItemToObject(h, "__metadata__", rng_below(s, 2) ? num(1) : cJSON_CreateArray());
        break;
    }
}

/* Deeply nested JSON, @n levels (arrays or objects). */
static char *nested(size_t n, bool obj) {
    char *t = malloc(n * 6 + 8), *p = t;
    TT_ASSERT(t);
    for (size_t i = 0; i < n; i++) p += sprintf(p, obj ? "{\"a\":" : "[");
    *p++ = '1';
    for (size_t i = 0; i < n; i++) *p++ = obj ? '}' : ']';
    *p = '\0';
    return t;
}

/* A file whose header is @text verbatim (no data). */
static bytes_t raw_file(const char *text) {
    size_t hl = strlen(text);
    bytes_t b = {malloc(8 + hl + 1), 8 + hl};
    TT_ASSERT(b.p);
    for (int i = 0; i < 8; i++) b.p[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(b.p + 8, text, hl);
    return b;
}

/* One byte-level mutation of @b (capacity grows as needed). */
static void mutate_bytes(bytes_t *b, uint64_t hdr_end, uint64_t *s) {
    uint64_t r = tt_rng_next(s);
    /* Mostly inside the length prefix and the header. */
    size_t lim = rng_below(s, 4) && hdr_end < b->len ? (size_t)hdr_end : b->len;
    size_t pos = lim ? (size_t)rng_below(s, lim) : 0;
    switch (r % 6) {
    case 0: /* flip a bit */
        if (b->len) b->p[pos] ^= (uint8_t)(1u << ((r >> 40) % 8));
        break;
    case 1: /* a random byte */
        if (b->len) b->p[pos] = (uint8_t)(r >> 32);
        break;
    case 2: /* truncate */
        b->len = pos;
        break;
    case 3: { /* insert a byte */
        uint8_t *q = realloc(b->p, b->len + 2);
        TT_ASSERT(q);
        b->p = q;
        memmove(q + pos + 1, q + pos, b->len - pos);
        q[pos] = (uint8_t)(r >> 24);
        b->len++;
        break;
    }
    case 4: /* delete a byte */
        if (b->len) {
            memmove(b->p + pos, b->p + pos + 1, b->len - pos - 1);
            b->len--;
        }
        break;
    default: { /* a lying header length */
        static const uint64_t k[] = {0, 1, 7, UINT64_MAX, 1ull << 63, (100ull << 20) + 1};
        uint64_t v = r & 1 ? k[(r >> 8) % 6] : (uint64_t)b->len - 8 + (r >> 8) % 3;
        if (r & 2 && b->len >= 8) v = (hdr_end - 8) + (r >> 16) % 5 - 2;
        for (int i = 0; i < 8 && i < (int)b->len; i++) b->p[i] = (uint8_t)(v >> (8 * i));
        break;
    }
    }
}

static const char *const k_st_models[] = {"qwen3moe", "qwen3f16", "qwen3"};
#define N_ST (sizeof k_st_models / sizeof k_st_models[0])

TT_TEST_T(model_fuzz, safetensors_mutations, 120) {
    const char *dir = scratch("st");
    cJSON *hdr[N_ST];
    bytes_t base[N_ST];
    size_t dlen[N_ST];
    for (size_t i = 0; i < N_ST; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/tests/fixtures/models/%s/model.safetensors", tt_root(),
                 k_st_models[i]);
        base[i] = st_base(path, &hdr[i], &dlen[i]);
        TT_ASSERT_EQ_INT(open_check(dir, base[i].p, base[i].len, "base"), CM_OK);
    }
    uint64_t seed = 0x5EEDF00DCAFEull;
    int accepted = 0, refused = 0;
    const int iters = 3000;
    for (int it = 0; it < iters; it++) {
        size_t which = (size_t)rng_below(&seed, N_ST);
        const uint8_t *data = base[which].p + base[which].len - dlen[which];
        bytes_t f;
        uint64_t kind = rng_below(&seed, 20);
        if (kind == 0) { /* not an object, or nested deep */
            static const char *const k[] = {
                "[]", "1", "\"x\"", "null", "true", "", "{", "{}", "{\"a\":{\"dtype\":\"F32\"}}"};
            size_t depth = (size_t[]){10, 999, 1000, 1001, 20000}[rng_below(&seed, 5)];
            char *deep = rng_below(&seed, 2) ? nested(depth, rng_below(&seed, 2)) : NULL;
            f = raw_file(deep ? deep : k[rng_below(&seed, sizeof k / sizeof k[0])]);
            free(deep);
        } else {
            cJSON *h = cJSON_Duplicate(hdr[which], 1);
            if (kind < 14) {
                int n = 1 + (int)rng_below(&seed, 3);
                for (int k = 0; k < n; k++) mutate_header(h, dlen[which], &seed);
            }
            f = st_file(h, data, dlen[which], rng_below(&seed, 8) != 0);
            cJSON_Delete(h);
        }
        if (kind >= 10) {
            uint64_t hl = 0;
            for (int i = 0; i < 8 && i < (int)f.len; i++) hl |= (uint64_t)f.p[i] << (8 * i);
            int n = 1 + (int)rng_below(&seed, 4);
            for (int k = 0; k < n; k++) mutate_bytes(&f, hl + 8, &seed);
        }
        char what[64];
        snprintf(what, sizeof what, "iteration %d", it);
        if (open_check(dir, f.p, f.len, what) == CM_OK)
            accepted++;
        else
            refused++;
        free(f.p);
    }
    /* Both outcomes happen often, so both halves of the check ran. */
    TT_ASSERT_MSG(accepted > iters / 20 && refused > iters / 2, "accepted %d, refused %d", accepted,
                  refused);
    for (size_t i = 0; i < N_ST; i++) {
        free(base[i].p);
        cJSON_Delete(hdr[i]);
    }
}

/* Every prefix of a weights file, from 0 bytes to all but the last, is
 * refused as truncated; the whole file loads. */
TT_TEST_T(model_fuzz, safetensors_every_truncation, 120) {
    const char *dir = scratch("trunc");
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/fixtures/models/qwen3/model.safetensors", tt_root());
    cJSON *h;
    size_t dlen;
    bytes_t b = st_base(path, &h, &dlen);
    /* Every byte of the length prefix, the header and the first data
     * bytes, then 7-byte steps through the rest of the data. */
    for (size_t len = 0; len < b.len; len += len < b.len - dlen + 64 ? 1 : 7) {
        char what[64];
        snprintf(what, sizeof what, "truncated to %zu bytes", len);
        TT_ASSERT_MSG(open_check(dir, b.p, len, what) == CM_ERR_TRUNCATED, "%s: not truncated",
                      what);
    }
    TT_ASSERT_EQ_INT(open_check(dir, b.p, b.len, "whole"), CM_OK);
    free(b.p);
    cJSON_Delete(h);
}

/* ---- sharded checkpoints: a mutated index over small shards ------------ */

TT_TEST_T(model_fuzz, sharded_index_mutations, 120) {
    const char *dir = scratch("sharded");
    char fix[1024];
    snprintf(fix, sizeof fix, "%s/tests/fixtures/models/llama", tt_root());
    static const char *const k_shards[] = {"model-00001-of-00003.safetensors",
                                           "model-00002-of-00003.safetensors",
                                           "model-00003-of-00003.safetensors"};
    bytes_t shard[3];
    for (int i = 0; i < 3; i++) {
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", fix, k_shards[i]);
        cJSON *h;
        size_t dlen;
        shard[i] = st_base(path, &h, &dlen);
        cJSON_Delete(h);
        put(dir, k_shards[i], shard[i].p, shard[i].len);
    }
    char ipath[2048];
    snprintf(ipath, sizeof ipath, "%s/model.safetensors.index.json", fix);
    bytes_t itext = slurp(ipath);
    cJSON *index = cJSON_ParseWithLength((const char *)itext.p, itext.len);
    TT_ASSERT(cJSON_IsObject(index));
    static const char *const k_names[] = {"",
                                          ".",
                                          "..",
                                          "a/b",
                                          "/etc/passwd",
                                          "missing.safetensors",
                                          "model.safetensors.index.json",
                                          "model-00001-of-00003.safetensors",
                                          "model-00003-of-00003.safetensors"};
    uint64_t seed = 0xD1CE5EED1234ull;
    int accepted = 0, refused = 0;
    const int iters = 400;
    for (int it = 0; it < iters; it++) {
        cJSON *idx = cJSON_Duplicate(index, 1);
        cJSON *map = cJSON_GetObjectItemCaseSensitive(idx, "weight_map");
        int n = (int)rng_below(&seed, 4);
        for (int k = 0; k < n; k++) {
            int sz = cJSON_GetArraySize(map);
            cJSON *e = sz ? cJSON_GetArrayItem(map, (int)rng_below(&seed, (uint64_t)sz)) : NULL;
            switch (rng_below(&seed, 6)) {
            case 0: /* another file name */
                if (e)
                    cJSON_ReplaceItemInObjectCaseSensitive(
                        map, e->string,
                        cJSON_CreateString(
                            k_names[rng_below(&seed, sizeof k_names / sizeof k_names[0])]));
                break;
            case 1: /* not a string */
                if (e) cJSON_ReplaceItemInObjectCaseSensitive(map, e->string, num(1));
                break;
            case 2: /* a tensor no shard has */
                cJSON_AddItemToObject(map, "model.layers.9.nothing",
                                      cJSON_CreateString(k_shards[0]));
                break;
            case 3: /* a tensor left out of the index (still valid) */
                if (e) cJSON_DeleteItemFromObjectCaseSensitive(map, e->string);
                break;
            case 4: /* no weight_map, or not an object */
                cJSON_ReplaceItemInObjectCaseSensitive(idx, "weight_map",
                                                       rng_below(&seed, 2) ? cJSON_CreateArray()
                                                                           : cJSON_CreateNull());
                map = NULL;
                break;
            default: /* the same name twice */
                if (e) cJSON_AddItemToObject(map, e->string, cJSON_Duplicate(e, 1));
                break;
            }
            if (!map) break;
        }
        bytes_t t = json_bytes(idx);
        cJSON_Delete(idx);
        int nb = (int)rng_below(&seed, 3);
        for (int k = 0; k < nb; k++) mutate_bytes(&t, t.len, &seed); /* no length prefix */
        put(dir, "model.safetensors.index.json", t.p, t.len);
        uint8_t *icopy = malloc(t.len + 1);
        memcpy(icopy, t.p, t.len);
        cJSON *parsed = cJSON_ParseWithLength((const char *)icopy, t.len);
        mdl_weights_t *w = NULL;
        char err[512] = "";
        cm_status_t st = mdl_weights_open(dir, &w, err, sizeof err);
        if (st == CM_OK) {
            accepted++;
            /* Every tensor the index names is there; every loaded shard's
             * tensors hold up, and nothing else was loaded. */
            const cJSON *wm = cJSON_GetObjectItemCaseSensitive(parsed, "weight_map"), *e;
            TT_ASSERT(cJSON_IsObject(wm));
            bool used[3] = {false, false, false};
            cJSON_ArrayForEach(e, wm) {
                mdl_tensor_t x;
                char e2[256];
                bool found = false;
                TT_ASSERT(cJSON_IsString(e));
                TT_ASSERT(mdl_weights_find(w, e->string, 0, NULL, &x, &found, e2, sizeof e2) ==
                              CM_OK ||
                          found);
                TT_ASSERT_MSG(found, "'%s' listed, accepted, not found", e->string);
                int k = 0;
                while (k < 3 && strcmp(e->valuestring, k_shards[k]) != 0) k++;
                TT_ASSERT_MSG(k < 3, "shard '%s' accepted", e->valuestring);
                used[k] = true;
            }
            uint64_t total = 0;
            for (int k = 0; k < 3; k++)
                if (used[k]) total += check_tensors(w, shard[k].p, shard[k].len, k_shards[k]);
            TT_ASSERT_EQ_U64(total, mdl_weights_bytes(w));
            mdl_weights_close(w);
        } else {
            refused++;
            TT_ASSERT_MSG(st < 0 && !w, "status %d", (int)st);
            TT_ASSERT_MSG(strstr(err, dir), "unclear error '%s'", err);
        }
        cJSON_Delete(parsed);
        free(icopy);
        free(t.p);
    }
    TT_ASSERT_MSG(accepted > iters / 20 && refused > iters / 4, "accepted %d, refused %d", accepted,
                  refused);
    cJSON_Delete(index);
    free(itext.p);
    for (int i = 0; i < 3; i++) free(shard[i].p);
}

/* ---- config.json ------------------------------------------------------- */

/* Loads @dir's config and checks the contract: CM_OK with a consistent
 * config, or a refusal naming the file. */
static cm_status_t config_check(const char *dir, const char *what) {
    mdl_config_t c;
    char err[512] = "";
    cm_status_t st = mdl_config_load(dir, &c, err, sizeof err);
    if (st != CM_OK) {
        TT_ASSERT_MSG(st < 0, "%s: status %d", what, (int)st);
        TT_ASSERT_MSG(strstr(err, "config.json"), "%s: unclear error '%s'", what, err);
        return st;
    }
    TT_ASSERT_MSG(c.vocab && c.vocab <= (1u << 24) && c.hidden && c.hidden <= (1u << 20) &&
                      c.n_layers && c.n_layers <= 1024 && c.n_heads && c.n_kv_heads &&
                      c.n_heads % c.n_kv_heads == 0 && c.head_dim && c.head_dim <= (1u << 16) &&
                      (uint64_t)c.n_heads * c.head_dim <= (1u << 20) && c.max_position &&
                      (c.n_experts || c.intermediate),
                  "%s: sizes accepted: vocab %u hidden %u layers %u heads %u/%u head_dim %u", what,
                  c.vocab, c.hidden, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim);
    TT_ASSERT(!c.n_experts || (c.top_k && c.top_k <= c.n_experts && c.moe_intermediate));
    TT_ASSERT(memchr(c.arch_name, 0, sizeof c.arch_name));
    TT_ASSERT(c.n_eos <= MDL_MAX_EOS && c.bos >= 0);
    for (uint32_t i = 0; i < c.n_eos; i++) TT_ASSERT(c.eos[i] >= 0);
    TT_ASSERT_MSG(isfinite(c.rms_eps) && c.rms_eps >= 0 && isfinite(c.rope_theta) &&
                      c.rope_theta > 0,
                  "%s: rms_eps %g rope_theta %g accepted", what, c.rms_eps, c.rope_theta);
    if (c.rope_llama3)
        TT_ASSERT_MSG(c.rope_factor > 0 && isfinite(c.rope_factor) && c.rope_low_freq > 0 &&
                          c.rope_high_freq > c.rope_low_freq && isfinite(c.rope_high_freq) &&
                          c.rope_orig_max,
                      "%s: llama3 rope %g %g %g accepted", what, c.rope_factor, c.rope_low_freq,
                      c.rope_high_freq);
    for (uint32_t l = 0; l < c.n_layers; l++) (void)mdl_config_layer_is_moe(&c, l);
    return st;
}

static cJSON *odd_value(uint64_t *s) {
    static const double k[] = {0,    1,     -1,     1.5,   4294967295.0, 4294967296.0, 2147483648.0,
                               1e10, 1e300, -1e300, 65536, 1e-320,       3.4e38,       3.5e38};
    switch (rng_below(s, 9)) {
    case 0:
        return cJSON_CreateString("7");
    case 1:
        return cJSON_CreateNull();
    case 2:
        return cJSON_CreateTrue();
    case 3:
        return cJSON_CreateObject();
    case 4: {
        cJSON *a = cJSON_CreateArray();
        cJSON_AddItemToArray(a, num(1));
        cJSON_AddItemToArray(a, num(k[rng_below(s, sizeof k / sizeof k[0])]));
        return a;
    }
    case 5: {
        cJSON *r = cJSON_CreateObject();
        cJSON_AddStringToObject(r, "rope_type", rng_below(s, 2) ? "llama3" : "yarn");
        cJSON_AddItemToObject(r, "factor", num(k[rng_below(s, sizeof k / sizeof k[0])]));
        cJSON_AddItemToObject(r, "low_freq_factor", num(rng_below(s, 2) ? 4 : 1));
        cJSON_AddItemToObject(r, "high_freq_factor", num(4));
        return r;
    }
    default:
        return num(k[rng_below(s, sizeof k / sizeof k[0])]);
    }
}

static const char *const k_cfg_models[] = {"llama", "mixtral",  "qwen2",   "qwen2moe",
                                           "qwen3", "qwen3f16", "qwen3moe"};
#define N_CFG (sizeof k_cfg_models / sizeof k_cfg_models[0])

TT_TEST_T(model_fuzz, config_mutations, 120) {
    static const char *const k_keys[] = {"architectures",
                                         "vocab_size",
                                         "hidden_size",
                                         "num_hidden_layers",
                                         "num_attention_heads",
                                         "num_key_value_heads",
                                         "head_dim",
                                         "intermediate_size",
                                         "max_position_embeddings",
                                         "rms_norm_eps",
                                         "rope_theta",
                                         "rope_scaling",
                                         "rope_parameters",
                                         "tie_word_embeddings",
                                         "num_local_experts",
                                         "num_experts",
                                         "num_experts_per_tok",
                                         "moe_intermediate_size",
                                         "decoder_sparse_step",
                                         "mlp_only_layers",
                                         "bos_token_id",
                                         "eos_token_id",
                                         "shared_expert_intermediate_size"};
    const char *dir = scratch("cfg");
    cJSON *cfg[N_CFG];
    bytes_t gen[N_CFG];
    for (size_t i = 0; i < N_CFG; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/tests/fixtures/models/%s/config.json", tt_root(),
                 k_cfg_models[i]);
        bytes_t b = slurp(path);
        cfg[i] = cJSON_ParseWithLength((const char *)b.p, b.len);
        TT_ASSERT(cJSON_IsObject(cfg[i]));
        free(b.p);
        snprintf(path, sizeof path, "%s/tests/fixtures/models/%s/generation_config.json", tt_root(),
                 k_cfg_models[i]);
        gen[i] = slurp(path);
    }
    uint64_t seed = 0xC0FF1CE5EEDull;
    int accepted = 0, refused = 0;
    const int iters = 3000;
    for (int it = 0; it < iters; it++) {
        size_t which = (size_t)rng_below(&seed, N_CFG);
        cJSON *c = cJSON_Duplicate(cfg[which], 1);
        int n = (int)rng_below(&seed, 3);
        for (int k = 0; k < n; k++) {
            const char *key = k_keys[rng_below(&seed, sizeof k_keys / sizeof k_keys[0])];
            cJSON_DeleteItemFromObjectCaseSensitive(c, key);
            if (rng_below(&seed, 5)) cJSON_AddItemToObject(c, key, odd_value(&seed));
        }
        bytes_t t = json_bytes(c);
        cJSON_Delete(c);
        uint64_t kind = rng_below(&seed, 10);
        if (kind == 0) { /* not an object, or nested deep */
            static const char *const k[] = {"[]", "1", "\"x\"", "null", "", "{", "{}"};
            size_t depth = (size_t[]){999, 1000, 1001, 20000}[rng_below(&seed, 4)];
            char *deep = rng_below(&seed, 2) ? nested(depth, rng_below(&seed, 2)) : NULL;
            free(t.p);
            char *text = deep ? deep : strdup(k[rng_below(&seed, sizeof k / sizeof k[0])]);
            t = (bytes_t){(uint8_t *)text, strlen(text)};
        } else if (kind < 4) {
            int nb = 1 + (int)rng_below(&seed, 4);
            for (int k = 0; k < nb; k++) mutate_bytes(&t, t.len, &seed);
        }
        put(dir, "config.json", t.p, t.len);
        /* generation_config.json: absent, the fixture's, or mutated. */
        uint64_t g = rng_below(&seed, 4);
        if (g == 0) {
            drop(dir, "generation_config.json");
        } else {
            bytes_t gb = {malloc(gen[which].len + 1), gen[which].len};
            memcpy(gb.p, gen[which].p, gb.len);
            for (uint64_t k = 1; k < g; k++) mutate_bytes(&gb, gb.len, &seed);
            put(dir, "generation_config.json", gb.p, gb.len);
            free(gb.p);
        }
        char what[64];
        snprintf(what, sizeof what, "iteration %d", it);
        if (config_check(dir, what) == CM_OK)
            accepted++;
        else
            refused++;
        free(t.p);
    }
    TT_ASSERT_MSG(accepted > iters / 10 && refused > iters / 4, "accepted %d, refused %d", accepted,
                  refused);
    /* Every prefix of every config is handled too. */
    drop(dir, "generation_config.json");
    for (size_t i = 0; i < N_CFG; i++) {
        bytes_t text = json_bytes(cfg[i]);
        const size_t len = text.len;
        for (size_t l = 0; l <= len; l++) {
            put(dir, "config.json", text.p, l);
            char what[64];
            snprintf(what, sizeof what, "%s cut to %zu", k_cfg_models[i], l);
            TT_ASSERT_EQ_INT(config_check(dir, what) == CM_OK, l == len);
        }
        free(text.p);
        cJSON_Delete(cfg[i]);
        free(gen[i].p);
    }
}

/* ---- regressions: one case per bug found ------------------------------- */

/* Writes a model.safetensors of header @hdr (verbatim) and @dlen data
 * bytes into @dir; opens it expecting @want with @needle in the error. */
static void expect_st(const char *dir, const char *hdr, size_t dlen, cm_status_t want,
                      const char *needle) {
    size_t hl = strlen(hdr);
    bytes_t b = {calloc(1, 8 + hl + dlen + 1), 8 + hl + dlen};
    TT_ASSERT(b.p);
    for (int i = 0; i < 8; i++) b.p[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(b.p + 8, hdr, hl);
    for (size_t i = 0; i < dlen; i++) b.p[8 + hl + i] = (uint8_t)(i * 37 + 1);
    put(dir, "model.safetensors", b.p, b.len);
    mdl_weights_t *w = NULL;
    char err[512] = "";
    cm_status_t st = mdl_weights_open(dir, &w, err, sizeof err);
    TT_ASSERT_MSG(st == want, "%s: want %s, got %s (%s)", hdr, cm_status_name(want),
                  cm_status_name(st), err);
    if (st == CM_OK) {
        TT_ASSERT_EQ_U64(check_tensors(w, b.p, b.len, hdr), mdl_weights_bytes(w));
        mdl_weights_close(w);
    } else {
        TT_ASSERT_MSG(strstr(err, needle), "%s: error '%s' lacks '%s'", hdr, err, needle);
    }
    free(b.p);
}

TT_TEST(model_fuzz, safetensors_regressions) {
    const char *dir = scratch("reg");
    /* Headers are 54 bytes (data at file offset 62) unless padded. */
#define ENTRY(shape, offs) \
    "{\"w\":{\"dtype\":\"F32\",\"shape\":" shape ",\"data_offsets\":" offs "}}"
    expect_st(dir, ENTRY("[2]", "[0,8]") "  ", 8, CM_OK, "");
    /* A byte count that wraps around: 2^32 * 2^32 * 4 is 0 in 64 bits. It
     * was accepted as a 2^64-element tensor of no data. */
    expect_st(dir, ENTRY("[4294967296,4294967296]", "[0,0]"), 0, CM_ERR_BAD_FORMAT,
              "tensor 'w': data [0, 0) does not fit its shape");
    /* Offsets that are not numbers were read as 0; fractions were cut. */
    expect_st(dir, ENTRY("[1]", "[\"x\",4]"), 8, CM_ERR_BAD_FORMAT,
              "tensor 'w': data_offsets are not [begin, end] byte offsets");
    expect_st(dir, ENTRY("[1]", "[0.5,4.5]"), 8, CM_ERR_BAD_FORMAT, "data_offsets are not");
    expect_st(dir, ENTRY("[1]", "[-4,0]"), 8, CM_ERR_BAD_FORMAT, "data_offsets are not");
    expect_st(dir, ENTRY("[1]", "[4,0]"), 8, CM_ERR_BAD_FORMAT, "data_offsets are not");
    /* A fractional or negative dimension was cut to an integer. */
    expect_st(dir, ENTRY("[1.5]", "[0,4]"), 8, CM_ERR_BAD_FORMAT, "shape entry 0 is not a size");
    expect_st(dir, ENTRY("[2,-1]", "[0,4]"), 8, CM_ERR_BAD_FORMAT, "shape entry 1 is not a size");
    /* Past the end is truncation; offsets past any file are malformed. */
    expect_st(dir, ENTRY("[1]", "[4,8]"), 4, CM_ERR_TRUNCATED, "past the end of the file");
    expect_st(dir, ENTRY("[1]", "[1e300,1e300]"), 4, CM_ERR_BAD_FORMAT, "data_offsets are not");
    /* F32 data at file offset 62 (a 54-byte header, as written before
     * safetensors padded its header): the engine read it as a misaligned
     * float; now it reads an aligned copy equal to the file's bytes (found
     * by fuzz_safetensors on its first seed). */
    expect_st(dir, ENTRY("[1]", "[0,4]"), 4, CM_OK, "");
    /* Duplicate names, a non-object header, deep nesting. */
    expect_st(dir,
              "{\"w\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,2]},"
              "\"w\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[2,4]}} ",
              4, CM_ERR_BAD_FORMAT, "tensor 'w' appears twice");
    expect_st(dir, "[1,2]", 0, CM_ERR_BAD_FORMAT, "header is not a JSON object");
    char *deep = nested(100000, false);
    expect_st(dir, deep, 0, CM_ERR_BAD_FORMAT, "header is not a JSON object");
    free(deep);
#undef ENTRY
    /* A FIFO where the weights should be: the open hung forever. */
    char path[2048];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    TT_ASSERT(unlink(path) == 0 && mkfifo(path, 0600) == 0);
    mdl_weights_t *w = NULL;
    char err[512] = "";
    TT_ASSERT_EQ_INT(mdl_weights_open(dir, &w, err, sizeof err), CM_ERR_BAD_FORMAT);
    TT_ASSERT_MSG(strstr(err, "model.safetensors: not a regular file"), "%s", err);
    /* Index entries naming the directory itself, or a directory as index. */
    static const char *const k_bad[] = {"\"\"", "\".\"", "\"..\"", "\"x/y\"", "3"};
    for (size_t i = 0; i < sizeof k_bad / sizeof k_bad[0]; i++) {
        char idx[256];
        snprintf(idx, sizeof idx, "{\"weight_map\":{\"w\":%s}}", k_bad[i]);
        put(dir, "model.safetensors.index.json", idx, strlen(idx));
        TT_ASSERT_EQ_INT(mdl_weights_open(dir, &w, err, sizeof err), CM_ERR_BAD_FORMAT);
        TT_ASSERT_MSG(strstr(err, "model.safetensors.index.json: bad file name for 'w'"), "%s",
                      err);
    }
    drop(dir, "model.safetensors.index.json");
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    TT_ASSERT(mkdir(path, 0700) == 0);
    TT_ASSERT_EQ_INT(mdl_weights_open(dir, &w, err, sizeof err), CM_ERR_BAD_FORMAT);
    TT_ASSERT_MSG(strstr(err, "model.safetensors.index.json: not a regular file"), "%s", err);
}

/* Writes config.json = @pre + a valid Llama config (the first of two equal
 * keys wins) and, when @gen, generation_config.json; loads @dir expecting
 * @want with @needle in the error. */
static void expect_cfg(const char *dir, const char *pre, const char *gen, cm_status_t want,
                       const char *needle) {
    char text[1024];
    snprintf(text, sizeof text,
             "{%s\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":32,\"hidden_size\":8,"
             "\"num_hidden_layers\":1,\"num_attention_heads\":2,\"intermediate_size\":16}",
             pre);
    put(dir, "config.json", text, strlen(text));
    if (gen)
        put(dir, "generation_config.json", gen, strlen(gen));
    else
        drop(dir, "generation_config.json");
    mdl_config_t c;
    char err[512] = "";
    cm_status_t st = mdl_config_load(dir, &c, err, sizeof err);
    TT_ASSERT_MSG(st == want, "%s: want %s, got %s (%s)", text, cm_status_name(want),
                  cm_status_name(st), err);
    if (st != CM_OK)
        TT_ASSERT_MSG(strstr(err, needle), "%s: error '%s' lacks '%s'", text, err, needle);
}

TT_TEST(model_fuzz, config_regressions) {
    const char *dir = scratch("regcfg");
    expect_cfg(dir, "", NULL, CM_OK, "");
    expect_cfg(dir, "\"eos_token_id\":[1,2],\"bos_token_id\":0,", "{\"eos_token_id\":3}", CM_OK,
               "");
    /* Token ids outside int32 were converted from double (undefined
     * behaviour; fuzz_model_config found eos_token_id 2429497295). */
    const char *ids = "config.json: bos_token_id/eos_token_id must be token ids";
    expect_cfg(dir, "\"eos_token_id\":2429497295,", NULL, CM_ERR_BAD_FORMAT, ids);
    expect_cfg(dir, "\"eos_token_id\":[1,1e300],", NULL, CM_ERR_BAD_FORMAT, ids);
    expect_cfg(dir, "\"eos_token_id\":[-1],", NULL, CM_ERR_BAD_FORMAT, ids);
    expect_cfg(dir, "\"eos_token_id\":\"2\",", NULL, CM_ERR_BAD_FORMAT, ids);
    expect_cfg(dir, "\"bos_token_id\":4294967295,", NULL, CM_ERR_BAD_FORMAT, ids);
    expect_cfg(dir, "", "{\"eos_token_id\":1e10}", CM_ERR_BAD_FORMAT,
               "generation_config.json: bos_token_id/eos_token_id must be token ids");
    expect_cfg(dir, "", "[1]", CM_ERR_BAD_FORMAT, "generation_config.json: not a JSON object");
    /* Floats out of range or zero where the engine divides by them
     * (fuzz_model_config: a llama3 factor of 0 was accepted). */
    const char *sizes = "config.json: missing, out-of-range or inconsistent values";
    expect_cfg(dir, "\"rms_norm_eps\":1e300,", NULL, CM_ERR_BAD_FORMAT, sizes);
    expect_cfg(dir, "\"rms_norm_eps\":-1,", NULL, CM_ERR_BAD_FORMAT, sizes);
    expect_cfg(dir, "\"rope_theta\":1e-320,", NULL, CM_ERR_BAD_FORMAT, sizes);
    expect_cfg(dir, "\"rope_theta\":\"1e4\",", NULL, CM_ERR_BAD_FORMAT, sizes);
    const char *rope = "config.json: llama3 rope_scaling needs";
    expect_cfg(dir, "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":0},", NULL,
               CM_ERR_BAD_FORMAT, rope);
    expect_cfg(dir,
               "\"rope_scaling\":{\"rope_type\":\"llama3\",\"low_freq_factor\":4,"
               "\"high_freq_factor\":4},",
               NULL, CM_ERR_BAD_FORMAT, rope);
    /* Sizes whose products overflow the engine's 32-bit arithmetic
     * (65536 heads of 65536 make 0), and a context of 0 (fuzz_model_config
     * found max_position_embeddings 0 accepted). */
    expect_cfg(dir, "\"num_attention_heads\":65536,\"num_key_value_heads\":1,\"head_dim\":65536,",
               NULL, CM_ERR_BAD_FORMAT, sizes);
    expect_cfg(dir, "\"intermediate_size\":4294967295,", NULL, CM_ERR_BAD_FORMAT, sizes);
    expect_cfg(dir, "\"max_position_embeddings\":0,", NULL, CM_ERR_BAD_FORMAT, sizes);
    expect_cfg(dir, "\"vocab_size\":1.5,", NULL, CM_ERR_BAD_FORMAT, sizes);
    /* FIFOs named like the configs: refused, not waited on (the open of
     * either hung forever, as the weights' did). */
    expect_cfg(dir, "", NULL, CM_OK, "");
    char path[2048], err[512] = "";
    mdl_config_t c;
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    TT_ASSERT(mkfifo(path, 0600) == 0);
    TT_ASSERT_EQ_INT(mdl_config_load(dir, &c, err, sizeof err), CM_ERR_BAD_FORMAT);
    TT_ASSERT_MSG(strstr(err, "generation_config.json: not a regular file"), "%s", err);
    TT_ASSERT(unlink(path) == 0);
    snprintf(path, sizeof path, "%s/config.json", dir);
    TT_ASSERT(unlink(path) == 0 && mkfifo(path, 0600) == 0);
    TT_ASSERT_EQ_INT(mdl_config_load(dir, &c, err, sizeof err), CM_ERR_BAD_FORMAT);
    TT_ASSERT_MSG(strstr(err, "config.json: not a regular file"), "%s", err);
    TT_ASSERT(unlink(path) == 0);
}
