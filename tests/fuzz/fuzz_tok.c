/*
 * fuzz_tok.c - libFuzzer target for the tokenizer: encode, decode, the
 * streaming decoder and chat templates on the real tokenizers. Build with
 * `make fuzz` and run from the checkout (with ../shared beside it), e.g.
 *   build/fuzz/fuzz_tok -max_total_time=60 -max_len=4096
 *
 * Input: byte 0 picks the tokenizer, byte 1 the mode and flags, the rest
 * is the payload. Properties checked (abort() on a violation):
 *   - every id encode returns is inside the vocabulary;
 *   - byte-level tokenizers round-trip valid UTF-8: decode(encode(s)) is
 *     s, or NFC(s) under an NFC normalizer (compared after NFC);
 *   - the streaming decoder, fed the ids one by one with any output
 *     capacity, writes exactly what decode gives, with each ill-formed
 *     subsequence replaced by U+FFFD as Python's
 *     bytes.decode("utf-8", "replace") does;
 *   - decode refuses ids outside the vocabulary.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok.h"
#include "tok_impl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Tokenizer directories, relative to FUZZ_TOK_ROOT (the checkout; the
 * unit suite's replay, tests/unit/test_fuzz_replay_tok.c, sets it). */
#ifndef FUZZ_TOK_ROOT
#define FUZZ_TOK_ROOT "."
#endif
static const char *const k_dirs[] = {
    "../shared/tokenizers/qwen3",       "../shared/tokenizers/llama3_1",
    "../shared/tokenizers/deepseek_v3", "tests/fixtures/tok/mistral_v1",
    "tests/fixtures/tok/mistral_v3",    "tests/fixtures/tok/sp_legacy",
    "tests/fixtures/tok/sp_metaspace",  "tests/fixtures/tok/sp_split",
};
enum { N_DIRS = sizeof k_dirs / sizeof k_dirs[0] };
static tok_t *g_tok[N_DIRS];
static size_t g_n;

static void load_all(void) {
    char err[512], dir[1024];
    for (size_t i = 0; i < N_DIRS; i++) {
        tok_t *t;
        snprintf(dir, sizeof dir, "%s/%s", FUZZ_TOK_ROOT, k_dirs[i]);
        if (tok_load(dir, &t, err, sizeof err) == CM_OK)
            g_tok[g_n++] = t;
        else
            fprintf(stderr, "fuzz_tok: skipping %s: %s\n", k_dirs[i], err);
    }
    if (!g_n) {
        fprintf(stderr, "fuzz_tok: no tokenizer loaded (run from the checkout)\n");
        abort();
    }
}

/* Length of the well-formed UTF-8 sequence at @s (Unicode Table 3-7), or
 * 0 with *@sub the length of its maximal subpart (>= 1). */
static size_t wf_len(const unsigned char *s, size_t n, size_t *sub) {
    unsigned c = s[0];
    size_t L;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF)
        L = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        L = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        L = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        *sub = 1;
        return 0;
    }
    size_t k = 1;
    for (; k < L && k < n; k++) {
        unsigned b = s[k];
        if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) break;
    }
    if (k == L) return L;
    *sub = k;
    return 0;
}

/* @s with each maximal subpart of an ill-formed sequence replaced by
 * U+FFFD (malloc'ed; *@olen). */
static char *lossy(const char *s, size_t n, size_t *olen) {
    char *o = malloc(n * 3 + 1);
    size_t w = 0;
    for (size_t i = 0; i < n;) {
        size_t sub = 0, L = wf_len((const unsigned char *)s + i, n - i, &sub);
        if (L) {
            memcpy(o + w, s + i, L);
            w += L;
            i += L;
        } else {
            memcpy(o + w, "\xEF\xBF\xBD", 3);
            w += 3;
            i += sub;
        }
    }
    *olen = w;
    return o;
}

static char *nfc_dup(const char *s, size_t n, size_t *olen) {
    char *norm;
    size_t nl;
    if (tok_nfc(s, n, &norm, &nl) != CM_OK) abort();
    char *o = malloc(n + 1 > nl + 1 ? n + 1 : nl + 1);
    if (norm) {
        memcpy(o, norm, nl);
        *olen = nl;
        cm_free(norm);
    } else {
        memcpy(o, s, n);
        *olen = n;
    }
    return o;
}

/* Streams @ids through a tok_stream, one push per id and then flushes
 * until one returns nothing, each call with output capacity @cap, and
 * checks the text equals lossy(decode(ids)). */
static void check_stream(const tok_t *t, const int32_t *ids, size_t n, bool skip, size_t cap) {
    char *want;
    size_t wl;
    cm_status_t st = tok_decode(t, ids, n, skip, &want, &wl);
    if (st != CM_OK) return; /* ids outside the vocabulary: decode refuses */
    size_t el;
    char *exp = lossy(want, wl, &el);
    cm_free(want);
    tok_stream_t *s = tok_stream_new(t, skip);
    if (!s) abort();
    size_t room = el + 64, got = 0;
    char *out = malloc(room);
    char piece[4096];
    for (size_t i = 0; i < n; i++) {
        size_t pl = tok_stream_push(s, ids[i], piece, cap);
        if (pl > cap || got + pl > room) abort();
        memcpy(out + got, piece, pl);
        got += pl;
    }
    for (int k = 0; k < 1 << 20; k++) { /* flush until it has nothing left */
        size_t pl = tok_stream_flush(s, piece, cap);
        if (pl > cap || got + pl > room) abort();
        if (!pl) break;
        memcpy(out + got, piece, pl);
        got += pl;
    }
    if (got != el || memcmp(out, exp, el) != 0) {
        fprintf(stderr, "stream (cap %zu) != lossy(decode): %zu vs %zu bytes\n", cap, got, el);
        abort();
    }
    tok_stream_free(s);
    free(out);
    free(exp);
}

static void mode_encode(const tok_t *t, const char *p, size_t n, unsigned flags) {
    int32_t *ids;
    size_t k;
    bool add = flags & 1;
    if (tok_encode(t, p, n, add, &ids, &k) != CM_OK) abort();
    for (size_t i = 0; i < k; i++)
        if (ids[i] < 0 || (uint32_t)ids[i] >= tok_vocab_size(t)) abort();
    char *d;
    size_t dl;
    if (tok_decode(t, ids, k, false, &d, &dl) != CM_OK) abort();
    if (!add && !t->sp && cm_utf8_valid(p, n)) {
        size_t al, bl;
        char *a = t->nfc ? nfc_dup(p, n, &al) : NULL, *b = t->nfc ? nfc_dup(d, dl, &bl) : NULL;
        bool same = t->nfc ? al == bl && !memcmp(a, b, al) : dl == n && !memcmp(d, p, n);
        if (!same) {
            fprintf(stderr, "byte-level round trip differs (%zu -> %zu bytes)\n", n, dl);
            abort();
        }
        free(a);
        free(b);
    }
    cm_free(d);
    static const size_t caps[] = {4, 5, 7, 64, 4096};
    check_stream(t, ids, k, flags & 2, caps[(flags >> 2) % 5]);
    cm_free(ids);
}

static void mode_ids(const tok_t *t, const uint8_t *p, size_t n, unsigned flags) {
    size_t k = n / 3;
    int32_t *ids = malloc((k ? k : 1) * sizeof *ids);
    uint32_t v = tok_vocab_size(t);
    bool bad = false;
    for (size_t i = 0; i < k; i++) {
        uint32_t raw =
            (uint32_t)p[3 * i] | (uint32_t)p[3 * i + 1] << 8 | (uint32_t)p[3 * i + 2] << 16;
        /* Mostly in range; the top byte's high values give ids past it. */
        ids[i] = p[3 * i + 2] >= 0xF8 ? (int32_t)(v + raw % 16) - 8 : (int32_t)(raw % v);
        bad |= ids[i] < 0 || (uint32_t)ids[i] >= v;
    }
    char *d;
    size_t dl;
    cm_status_t st = tok_decode(t, ids, k, flags & 2, &d, &dl);
    if (bad != (st != CM_OK)) abort();
    if (st == CM_OK) cm_free(d);
    static const size_t caps[] = {4, 6, 16, 4096};
    check_stream(t, ids, k, flags & 2, caps[(flags >> 2) % 4]);
    free(ids);
}

static void mode_chat(const tok_t *t, const char *p, size_t n, unsigned flags) {
    static const char *const roles[] = {"system", "user", "assistant", "user"};
    tok_msg_t msgs[16];
    char *copy = malloc(n + 1);
    memcpy(copy, p, n);
    copy[n] = '\0';
    size_t m = 0;
    for (char *c = copy; m < 16;) {
        msgs[m].role = roles[(m + (flags >> 2)) % 4];
        msgs[m++].content = c;
        char *z = memchr(c, '\0', (size_t)(copy + n - c) + 1);
        if (z >= copy + n) break;
        c = z + 1;
    }
    char *out;
    size_t ol;
    cm_status_t st = tok_chat_apply(t, msgs, m, flags & 2, &out, &ol);
    if (st == CM_OK) {
        mode_encode(t, out, ol, 0);
        cm_free(out);
    }
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_n) load_all();
    if (size < 2) return 0;
    const tok_t *t = g_tok[data[0] % g_n];
    unsigned flags = data[1];
    const char *p = (const char *)data + 2;
    size_t n = size - 2;
    switch (flags % 3) {
    case 0:
        mode_encode(t, p, n, flags / 3);
        break;
    case 1:
        mode_ids(t, data + 2, n, flags / 3);
        break;
    default:
        mode_chat(t, p, n, flags / 3);
        break;
    }
    return 0;
}
