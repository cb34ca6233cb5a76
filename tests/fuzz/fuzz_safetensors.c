/*
 * fuzz_safetensors.c - libFuzzer target for the safetensors loader.
 * Build with `make fuzz`, run e.g.
 *   build/fuzz/fuzz_safetensors -max_total_time=300 -max_len=65536 CORPUS
 *
 * Input: byte 0 chooses the layout. Even: the rest is model.safetensors.
 * Odd: bytes 1-2 (little-endian) are the length L of a
 * model.safetensors.index.json that follows, and the remaining bytes are the
 * shard s.safetensors (which the index may or may not name).
 *
 * Whatever mdl_weights_open accepts must hold up: every tensor the header
 * (or the index) names is found with its own number of dimensions,
 * nbytes == product(shape) * dtype size, every byte of its data is read,
 * and, for a tensor of the fuzzed file, the bytes equal the input's bytes at
 * its data_offsets (the input is an exact-size heap copy, so ASan sees any
 * offset past the end). A refusal must come with a message.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_files.h"
#include "mdl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The header of safetensors bytes @p (NULL when it does not parse). */
static cJSON *parse_header(const uint8_t *p, size_t n, uint64_t *hlen) {
    if (n < 8) return NULL;
    uint64_t h = 0;
    for (int i = 0; i < 8; i++) h |= (uint64_t)p[i] << (8 * i);
    if (h > n - 8) return NULL;
    *hlen = h;
    return cJSON_ParseWithLength((const char *)p + 8, (size_t)h);
}

/* Looks up @name and checks what the loader returns for it. @file, @hdr and
 * @hlen are the fuzzed file, which may hold it (@file NULL: unknown). */
static void check_tensor(const mdl_weights_t *w, const char *name, const uint8_t *file,
                         size_t file_len, const cJSON *hdr, uint64_t hlen, uint64_t *sum) {
    static const uint64_t any[4] = {0, 0, 0, 0};
    char err[256];
    mdl_tensor_t t;
    bool found = false;
    uint32_t nd = 0;
    for (; nd <= 4; nd++) {
        err[0] = '\0';
        cm_status_t st = mdl_weights_find(w, name, nd, any, &t, &found, err, sizeof err);
        if (!found) abort(); /* every name of an accepted header or index is there */
        if (st == CM_OK) break;
        if (st != CM_ERR_BAD_FORMAT || !err[0]) abort();
    }
    if (nd > 4 || t.ndim != nd || strcmp(t.name, name) != 0) abort();
    uint64_t numel = 1, nbytes;
    for (uint32_t i = 0; i < t.ndim; i++)
        if (__builtin_mul_overflow(numel, t.shape[i], &numel)) abort();
    if (__builtin_mul_overflow(numel, (uint64_t)mdl_dtype_size(t.dtype), &nbytes)) abort();
    if (t.nbytes != nbytes) abort();
    /* Aligned for its dtype (the engine reads it as float or uint16_t). */
    if ((uintptr_t)t.data % mdl_dtype_size(t.dtype) != 0) abort();
    /* A shape that cannot match names the tensor. */
    const uint64_t huge[4] = {UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX};
    mdl_tensor_t u;
    err[0] = '\0';
    if (mdl_weights_get(w, name, 4, huge, &u, err, sizeof err) != CM_ERR_BAD_FORMAT || !err[0])
        abort();
    const uint8_t *d = t.data;
    for (size_t i = 0; i < t.nbytes; i++) *sum += d[i];
    if (!file || !hdr) return;
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(hdr, name);
    if (!e) return; /* in another shard */
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!cJSON_IsString(dt) || strcmp(dt->valuestring, mdl_dtype_name(t.dtype)) != 0) abort();
    if (cJSON_GetArraySize(sh) != (int)t.ndim) abort();
    for (uint32_t i = 0; i < t.ndim; i++) {
        const cJSON *v = cJSON_GetArrayItem(sh, (int)i);
        if (!cJSON_IsNumber(v) || v->valuedouble != (double)t.shape[i]) abort();
    }
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    const cJSON *b = cJSON_GetArrayItem(off, 0), *en = cJSON_GetArrayItem(off, 1);
    /* Offsets are integers in the file, and end - begin is nbytes. */
    if (!cJSON_IsNumber(b) || !cJSON_IsNumber(en) || b->valuedouble < 0 ||
        b->valuedouble > (double)file_len || b->valuedouble != (double)(uint64_t)b->valuedouble ||
        en->valuedouble - b->valuedouble != (double)t.nbytes)
        abort();
    size_t at = 8 + (size_t)hlen + (size_t)b->valuedouble;
    if (at > file_len || t.nbytes > file_len - at) abort();
    if (t.nbytes && memcmp(t.data, file + at, t.nbytes) != 0) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const bool sharded = data[0] & 1;
    const uint8_t *file = data + 1; /* the fuzzed safetensors bytes */
    size_t file_len = size - 1;
    const uint8_t *index = NULL;
    size_t index_len = 0;
    if (sharded) {
        if (size < 3) return 0;
        index_len = (size_t)data[1] | (size_t)data[2] << 8;
        if (index_len > size - 3) index_len = size - 3;
        index = data + 3;
        file = index + index_len;
        file_len = size - 3 - index_len;
        fuzz_put("model.safetensors.index.json", index, index_len);
        fuzz_put("s.safetensors", file, file_len);
        fuzz_drop("model.safetensors");
    } else {
        fuzz_drop("model.safetensors.index.json");
        fuzz_put("model.safetensors", file, file_len);
    }
    /* An exact-size copy, so reading past the end is an ASan report. */
    uint8_t *copy = malloc(file_len ? file_len : 1);
    if (!copy) abort();
    memcpy(copy, file, file_len);
    mdl_weights_t *w = NULL;
    char err[512] = "";
    cm_status_t st = mdl_weights_open(fuzz_dir(), &w, err, sizeof err);
    if (st != CM_OK) {
        if (st > 0 || !err[0] || w) abort();
        free(copy);
        return 0;
    }
    uint64_t hlen = 0, sum = 0;
    cJSON *hdr = parse_header(copy, file_len, &hlen);
    cJSON *idx = sharded ? cJSON_ParseWithLength((const char *)index, index_len) : NULL;
    const cJSON *names = sharded ? cJSON_GetObjectItemCaseSensitive(idx, "weight_map") : hdr;
    /* The fuzzed shard is the tensors' file only when the index names it. */
    bool own = !sharded;
    const cJSON *e;
    cJSON_ArrayForEach(e, names) {
        if (cJSON_IsString(e) && !strcmp(e->valuestring, "s.safetensors")) own = true;
    }
    int n = 0;
    cJSON_ArrayForEach(e, names) {
        if (n++ == 64) break;
        if (!e->string || !strcmp(e->string, "__metadata__")) continue;
        check_tensor(w, e->string, own ? copy : NULL, file_len, hdr, hlen, &sum);
    }
    /* Names that are not there are not found. */
    mdl_tensor_t t;
    bool found = true;
    if (mdl_weights_find(w, "no such tensor \x01", 0, NULL, &t, &found, err, sizeof err) != CM_OK ||
        found)
        abort();
    cJSON_Delete(idx);
    cJSON_Delete(hdr);
    mdl_weights_close(w);
    free(copy);
    /* Keeps the reads from being optimized away. */
    volatile uint64_t sink = sum;
    (void)sink;
    return 0;
}
