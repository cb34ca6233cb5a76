/*
 * mdl_safetensors.c - memory-mapped safetensors files.
 *
 * Format: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...}, then the
 * data. Every offset is checked against the file size and the shape's byte
 * count, so a truncated or lying file is refused, never read past. The
 * engine reads the data as float or uint16_t: a tensor that does not start
 * aligned to its dtype (files written before safetensors padded its header
 * to 8 bytes) is read from an aligned copy.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mdl.h"

typedef struct {
    void *map;
    size_t size;
} shard_t;

typedef struct {
    char *name;
    mdl_tensor_t t;
    void *copy; /* the aligned copy t.data points to, or NULL (in the mapping) */
} entry_t;

struct mdl_weights {
    shard_t *shards;
    size_t n_shards;
    entry_t *table; /* open addressing, power-of-two capacity */
    size_t cap, n;
    size_t bytes;
};

void mdl_weights_release(const mdl_weights_t *w, const mdl_tensor_t *t) {
    if (!w || !t->data || !t->nbytes) return;
    const long pg = sysconf(_SC_PAGESIZE);
    const uintptr_t a = (uintptr_t)t->data, e = a + t->nbytes;
    for (size_t i = 0; i < w->n_shards; i++) {
        const uintptr_t lo = (uintptr_t)w->shards[i].map, hi = lo + w->shards[i].size;
        if (a < lo || e > hi) continue;
        /* Whole pages inside the tensor only. */
        uintptr_t pa = (a + (uintptr_t)pg - 1) / (uintptr_t)pg * (uintptr_t)pg;
        uintptr_t pe = e / (uintptr_t)pg * (uintptr_t)pg;
        if (pe > pa) (void)madvise((void *)pa, pe - pa, MADV_DONTNEED);
        return;
    }
}

const char *mdl_dtype_name(mdl_dtype_t t) {
    return t == MDL_F32 ? "F32" : t == MDL_F16 ? "F16" : "BF16";
}

size_t mdl_dtype_size(mdl_dtype_t t) { return t == MDL_F32 ? 4 : 2; }

static size_t slot_of(const mdl_weights_t *w, const char *name) {
    size_t i = cm_hash64(name, strlen(name), 0) & (w->cap - 1);
    while (w->table[i].name && strcmp(w->table[i].name, name) != 0) i = (i + 1) & (w->cap - 1);
    return i;
}

static cm_status_t table_grow(mdl_weights_t *w) {
    size_t cap = w->cap ? w->cap * 2 : 1024;
    entry_t *old = w->table;
    size_t oldcap = w->cap;
    w->table = cm_calloc(cap, sizeof *w->table);
    if (!w->table) {
        w->table = old;
        return CM_ERR_NO_MEMORY;
    }
    w->cap = cap;
    for (size_t i = 0; i < oldcap; i++)
        if (old[i].name) w->table[slot_of(w, old[i].name)] = old[i];
    cm_free(old);
    return CM_OK;
}

/* True when JSON number @v is an integer in [0, @max]. */
static bool is_uint(const cJSON *v, double max, uint64_t *out) {
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble > max ||
        v->valuedouble != floor(v->valuedouble))
        return false;
    *out = (uint64_t)v->valuedouble;
    return true;
}

/*
 * Checks header entry @e (the tensor @e->string) of @path, whose data
 * section is @data_size bytes, and fills @t but for
 * its name and data. CM_ERR_BAD_FORMAT, CM_ERR_UNSUPPORTED or (data past
 * the end) CM_ERR_TRUNCATED with the reason in @err.
 */
static cm_status_t parse_entry(const cJSON *e, const char *path, size_t data_size, mdl_tensor_t *t,
                               uint64_t *begin, char *err, size_t errlen) {
    const char *name = e->string;
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(off) ||
        cJSON_GetArraySize(off) != 2 || cJSON_GetArraySize(sh) > 4) {
        snprintf(err, errlen, "%s: tensor '%s': malformed header entry", path, name);
        return CM_ERR_BAD_FORMAT;
    }
    memset(t, 0, sizeof *t);
    if (!strcmp(dt->valuestring, "F32"))
        t->dtype = MDL_F32;
    else if (!strcmp(dt->valuestring, "F16"))
        t->dtype = MDL_F16;
    else if (!strcmp(dt->valuestring, "BF16"))
        t->dtype = MDL_BF16;
    else {
        snprintf(err, errlen, "%s: tensor '%s': unsupported dtype %.32s (F32, F16, BF16)", path,
                 name, dt->valuestring);
        return CM_ERR_UNSUPPORTED;
    }
    /* The byte count of the shape, without wrapping around. */
    const size_t esize = mdl_dtype_size(t->dtype);
    uint64_t nbytes = esize;
    bool overflow = false;
    const cJSON *d;
    cJSON_ArrayForEach(d, sh) {
        uint64_t n;
        if (!is_uint(d, 1e12, &n)) {
            snprintf(err, errlen, "%s: tensor '%s': shape entry %d is not a size", path, name,
                     (int)t->ndim);
            return CM_ERR_BAD_FORMAT;
        }
        t->shape[t->ndim++] = n;
        overflow |= __builtin_mul_overflow(nbytes, n, &nbytes);
    }
    uint64_t b, en;
    if (!is_uint(cJSON_GetArrayItem(off, 0), 1e18, &b) ||
        !is_uint(cJSON_GetArrayItem(off, 1), 1e18, &en) || en < b) {
        snprintf(err, errlen, "%s: tensor '%s': data_offsets are not [begin, end] byte offsets",
                 path, name);
        return CM_ERR_BAD_FORMAT;
    }
    if (en > data_size) {
        snprintf(err, errlen,
                 "%s: tensor '%s': data [%llu, %llu) past the end of the file (%zu data bytes; "
                 "truncated?)",
                 path, name, (unsigned long long)b, (unsigned long long)en, data_size);
        return CM_ERR_TRUNCATED;
    }
    if (overflow || en - b != nbytes) {
        snprintf(err, errlen, "%s: tensor '%s': data [%llu, %llu) does not fit its shape", path,
                 name, (unsigned long long)b, (unsigned long long)en);
        return CM_ERR_BAD_FORMAT;
    }
    t->nbytes = (size_t)nbytes;
    *begin = b;
    return CM_OK;
}

/* Maps @path and indexes its tensors. */
static cm_status_t add_shard(mdl_weights_t *w, const char *path, char *err, size_t errlen) {
    /* O_NONBLOCK: a FIFO named like a shard must not hang the open. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return CM_ERR_NOT_FOUND;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        snprintf(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return CM_ERR_IO;
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        snprintf(err, errlen, "%s: not a regular file", path);
        return CM_ERR_BAD_FORMAT;
    }
    if (sb.st_size < 8) {
        close(fd);
        snprintf(err, errlen, "%s: truncated (%lld bytes, no header)", path, (long long)sb.st_size);
        return CM_ERR_TRUNCATED;
    }
    size_t size = (size_t)sb.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        snprintf(err, errlen, "%s: mmap: %s", path, strerror(errno));
        return CM_ERR_IO;
    }
    shard_t *s = cm_realloc_array(w->shards, w->n_shards + 1, sizeof *s);
    if (!s) {
        munmap(map, size);
        snprintf(err, errlen, "%s: out of memory", path);
        return CM_ERR_NO_MEMORY;
    }
    w->shards = s;
    s = &w->shards[w->n_shards++];
    s->map = map;
    s->size = size;
    const uint8_t *p = map;
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)p[i] << (8 * i);
    if (hlen > size - 8 || hlen > (100u << 20)) {
        snprintf(err, errlen, "%s: truncated or corrupt (header of %llu bytes in a %zu-byte file)",
                 path, (unsigned long long)hlen, size);
        return CM_ERR_TRUNCATED;
    }
    cJSON *h = cJSON_ParseWithLength((const char *)p + 8, (size_t)hlen);
    if (!cJSON_IsObject(h)) {
        cJSON_Delete(h);
        snprintf(err, errlen, "%s: header is not a JSON object", path);
        return CM_ERR_BAD_FORMAT;
    }
    const uint8_t *data = p + 8 + hlen;
    size_t data_size = size - 8 - (size_t)hlen;
    cm_status_t st = CM_OK;
    const cJSON *e;
    cJSON_ArrayForEach(e, h) {
        if (!strcmp(e->string, "__metadata__")) continue;
        mdl_tensor_t t;
        uint64_t b;
        st = parse_entry(e, path, data_size, &t, &b, err, errlen);
        if (st != CM_OK) break;
        t.data = data + b;
        void *copy = NULL;
        if ((uintptr_t)t.data % mdl_dtype_size(t.dtype)) { /* the mapping is page-aligned */
            if (!(copy = cm_aligned_alloc(64, t.nbytes ? t.nbytes : 1))) {
                snprintf(err, errlen, "%s: out of memory", path);
                st = CM_ERR_NO_MEMORY;
                break;
            }
            memcpy(copy, t.data, t.nbytes);
            t.data = copy;
        }
        if ((w->n + 1) * 2 > w->cap && (st = table_grow(w)) != CM_OK) {
            cm_aligned_free(copy);
            snprintf(err, errlen, "%s: out of memory", path);
            break;
        }
        size_t i = slot_of(w, e->string);
        if (w->table[i].name) {
            cm_aligned_free(copy);
            snprintf(err, errlen, "%s: tensor '%s' appears twice", path, e->string);
            st = CM_ERR_BAD_FORMAT;
            break;
        }
        if (!(w->table[i].name = cm_strdup(e->string))) {
            cm_aligned_free(copy);
            snprintf(err, errlen, "%s: out of memory", path);
            st = CM_ERR_NO_MEMORY;
            break;
        }
        t.name = w->table[i].name;
        w->table[i].t = t;
        w->table[i].copy = copy;
        w->n++;
        w->bytes += t.nbytes;
    }
    cJSON_Delete(h);
    return st;
}

void mdl_weights_close(mdl_weights_t *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_shards; i++) {
        munmap(w->shards[i].map, w->shards[i].size);
    }
    for (size_t i = 0; i < w->cap; i++) {
        cm_free(w->table[i].name);
        cm_aligned_free(w->table[i].copy);
    }
    cm_free(w->shards);
    cm_free(w->table);
    cm_free(w);
}

/*
 * Parses the JSON file @path (a regular file of at most 64 MiB) into *@out.
 * CM_ERR_NOT_FOUND when it does not exist (no message); otherwise an error
 * with the reason in @err.
 */
static cm_status_t read_json(const char *path, cJSON **out, char *err, size_t errlen) {
    char *text = NULL;
    size_t n = 0;
    cm_status_t st = cm_read_file(path, 64u << 20, &text, &n, err, errlen);
    if (st == CM_OK && !(*out = cJSON_ParseWithLength(text, n))) {
        snprintf(err, errlen, "%s: not valid JSON", path);
        st = CM_ERR_BAD_FORMAT;
    }
    cm_free(text);
    return st;
}

cm_status_t mdl_weights_open(const char *dir, mdl_weights_t **out, char *err, size_t errlen) {
    mdl_weights_t *w = cm_calloc(1, sizeof *w);
    cm_status_t st = w ? table_grow(w) : CM_ERR_NO_MEMORY;
    if (st != CM_OK) {
        snprintf(err, errlen, "%s: out of memory", dir);
        mdl_weights_close(w);
        return st;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    cJSON *idx = NULL;
    st = read_json(path, &idx, err, errlen);
    if (st == CM_OK) {
        /* Sharded: every distinct file of the weight map. */
        const cJSON *map = cJSON_GetObjectItemCaseSensitive(idx, "weight_map");
        if (!cJSON_IsObject(map)) {
            snprintf(err, errlen, "%s: no \"weight_map\" object", path);
            st = CM_ERR_BAD_FORMAT;
        }
        const cJSON *e;
        char **done = NULL;
        size_t n_done = 0;
        cJSON_ArrayForEach(e, map) {
            if (st != CM_OK) break;
            /* A file of @dir itself: no path, no "." or "..". */
            if (!cJSON_IsString(e) || !e->valuestring[0] || !strcmp(e->valuestring, ".") ||
                !strcmp(e->valuestring, "..") || strchr(e->valuestring, '/')) {
                snprintf(err, errlen, "%s: bad file name for '%s'", path, e->string);
                st = CM_ERR_BAD_FORMAT;
                break;
            }
            bool seen = false;
            for (size_t i = 0; i < n_done && !seen; i++) seen = !strcmp(done[i], e->valuestring);
            if (seen) continue;
            char **nd = cm_realloc_array(done, n_done + 1, sizeof *nd);
            if (!nd) {
                snprintf(err, errlen, "%s: out of memory", path);
                st = CM_ERR_NO_MEMORY;
                break;
            }
            done = nd;
            done[n_done++] = e->valuestring;
            char shard[4096];
            snprintf(shard, sizeof shard, "%s/%s", dir, e->valuestring);
            st = add_shard(w, shard, err, errlen);
        }
        cm_free(done);
        /* Every tensor the index names must be in its shard. */
        cJSON_ArrayForEach(e, map) {
            if (st != CM_OK) break;
            if (!w->table[slot_of(w, e->string)].name) {
                snprintf(err, errlen, "%s: tensor '%s' listed but missing from %s", path, e->string,
                         e->valuestring);
                st = CM_ERR_NOT_FOUND;
            }
        }
        cJSON_Delete(idx);
    } else if (st == CM_ERR_NOT_FOUND) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        st = add_shard(w, path, err, errlen);
    }
    if (st != CM_OK) {
        mdl_weights_close(w);
        return st;
    }
    *out = w;
    return CM_OK;
}

size_t mdl_weights_bytes(const mdl_weights_t *w) { return w->bytes; }

cm_status_t mdl_weights_find(const mdl_weights_t *w, const char *name, uint32_t ndim,
                             const uint64_t *shape, mdl_tensor_t *out, bool *found, char *err,
                             size_t errlen) {
    const entry_t *e = &w->table[slot_of(w, name)];
    *found = e->name != NULL;
    if (!*found) return CM_OK;
    bool ok = e->t.ndim == ndim;
    for (uint32_t i = 0; ok && i < ndim; i++) ok = !shape[i] || shape[i] == e->t.shape[i];
    if (!ok) {
        char want[96] = "", got[96] = "";
        size_t a = 0, b = 0;
        /* Stops at a full buffer (snprintf returns what it would write). */
        for (uint32_t i = 0; i < ndim && a < sizeof want; i++)
            a += (size_t)snprintf(want + a, sizeof want - a, "%s%llu", i ? ", " : "",
                                  (unsigned long long)shape[i]);
        for (uint32_t i = 0; i < e->t.ndim && b < sizeof got; i++)
            b += (size_t)snprintf(got + b, sizeof got - b, "%s%llu", i ? ", " : "",
                                  (unsigned long long)e->t.shape[i]);
        snprintf(err, errlen, "tensor '%s': shape [%s], expected [%s]", name, got, want);
        return CM_ERR_BAD_FORMAT;
    }
    *out = e->t;
    return CM_OK;
}

cm_status_t mdl_weights_get(const mdl_weights_t *w, const char *name, uint32_t ndim,
                            const uint64_t *shape, mdl_tensor_t *out, char *err, size_t errlen) {
    bool found;
    cm_status_t st = mdl_weights_find(w, name, ndim, shape, out, &found, err, errlen);
    if (st == CM_OK && !found) {
        snprintf(err, errlen, "tensor '%s' is missing from the checkpoint", name);
        return CM_ERR_NOT_FOUND;
    }
    return st;
}
