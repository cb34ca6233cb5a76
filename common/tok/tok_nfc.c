/* tok_nfc.c - Unicode Normalization Form C (UAX #15) for the tokenizer's
 * "NFC" normalizer: canonical decomposition, canonical ordering, canonical
 * composition. Tables in tok_nfc_data.h (scripts/gen_unicode_nfc.py). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tok_impl.h"
#include "tok_nfc_data.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

/* Hangul syllables (Unicode 3.12, algorithmic). */
enum {
    S_BASE = 0xAC00,
    L_BASE = 0x1100,
    V_BASE = 0x1161,
    T_BASE = 0x11A7,
    L_COUNT = 19,
    V_COUNT = 21,
    T_COUNT = 28,
    N_COUNT = V_COUNT * T_COUNT,
    S_COUNT = L_COUNT * N_COUNT,
};

static int ccc_of(uint32_t cp) {
    if (cp < 0x300) return 0;
    size_t lo = 0, hi = N_ELEMS(k_nfc_ccc);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (k_nfc_ccc[mid][0] == cp) return (int)k_nfc_ccc[mid][1];
        if (k_nfc_ccc[mid][0] < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

static const uint32_t *decomp_of(uint32_t cp) {
    if (cp < 0xC0) return NULL;
    size_t lo = 0, hi = N_ELEMS(k_nfc_decomp);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (k_nfc_decomp[mid][0] == cp) return k_nfc_decomp[mid];
        if (k_nfc_decomp[mid][0] < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* The primary composite of (a, b), or 0. */
static uint32_t compose(uint32_t a, uint32_t b) {
    if (a - L_BASE < L_COUNT && b - V_BASE < V_COUNT)
        return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
    if (a - S_BASE < S_COUNT && (a - S_BASE) % T_COUNT == 0 && b - T_BASE - 1 < T_COUNT - 1)
        return a + (b - T_BASE);
    uint64_t key = (uint64_t)a << 32 | b;
    size_t lo = 0, hi = N_ELEMS(k_nfc_comp);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        uint64_t k = (uint64_t)k_nfc_comp[mid][0] << 32 | k_nfc_comp[mid][1];
        if (k == key) return k_nfc_comp[mid][2];
        if (k < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

typedef struct {
    uint32_t *v;
    size_t n, cap;
    bool oom;
} cps_t;

static void cps_push(cps_t *a, uint32_t cp) {
    if (a->oom) return;
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        uint32_t *v = cm_realloc_array(a->v, cap, sizeof *v);
        if (!v) {
            a->oom = true;
            return;
        }
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = cp;
}

/* Full canonical decomposition of cp (mappings nest at most a few deep). */
static void decompose(cps_t *a, uint32_t cp, int depth) {
    if (cp - S_BASE < S_COUNT) {
        uint32_t s = cp - S_BASE;
        cps_push(a, L_BASE + s / N_COUNT);
        cps_push(a, V_BASE + (s % N_COUNT) / T_COUNT);
        if (s % T_COUNT) cps_push(a, T_BASE + s % T_COUNT);
        return;
    }
    const uint32_t *d = depth < 8 ? decomp_of(cp) : NULL;
    if (!d) {
        cps_push(a, cp);
        return;
    }
    decompose(a, d[1], depth + 1);
    if (d[2]) decompose(a, d[2], depth + 1);
}

/* Next code point of valid UTF-8 at s[*i]. */
static uint32_t utf8_next(const unsigned char *s, size_t *i) {
    unsigned char c = s[*i];
    if (c < 0x80) {
        *i += 1;
        return c;
    }
    size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
    uint32_t cp = c & (0x7F >> n);
    for (size_t k = 1; k < n; k++) cp = cp << 6 | (s[*i + k] & 0x3F);
    *i += n;
    return cp;
}

const char *tok_nfc_unicode_version(void) { return TOK_NFC_UNICODE_VERSION; }

cm_status_t tok_nfc(const char *text, size_t len, char **out, size_t *out_len) {
    const unsigned char *s = (const unsigned char *)text;
    *out = NULL;
    *out_len = 0;
    size_t i = 0;
    while (i < len && s[i] < 0x80) i++;
    if (i == len) return CM_OK; /* ASCII is already NFC */
    cps_t a = {0};
    for (i = 0; i < len;) decompose(&a, utf8_next(s, &i), 0);
    if (a.oom) {
        cm_free(a.v);
        return CM_ERR_NO_MEMORY;
    }
    /* Canonical ordering: stable sort of each run of non-starters by ccc. */
    for (size_t k = 1; k < a.n; k++) {
        int c = ccc_of(a.v[k]);
        if (c == 0) continue;
        size_t j = k;
        uint32_t cp = a.v[k];
        while (j > 0 && ccc_of(a.v[j - 1]) > c) {
            a.v[j] = a.v[j - 1];
            j--;
        }
        a.v[j] = cp;
    }
    /* Canonical composition: a character C combines with the last starter
     * S unless something between them blocks it (ccc 0, or ccc >= C's). */
    size_t n = 0, starter = SIZE_MAX;
    int last_ccc = 0;
    for (size_t k = 0; k < a.n; k++) {
        uint32_t cp = a.v[k];
        int c = ccc_of(cp);
        if (starter != SIZE_MAX) {
            bool adjacent = n - 1 == starter;
            if (adjacent || (last_ccc != 0 && last_ccc < c)) {
                uint32_t m = compose(a.v[starter], cp);
                if (m) {
                    a.v[starter] = m;
                    continue;
                }
            }
        }
        if (c == 0) starter = n;
        last_ccc = c;
        a.v[n++] = cp;
    }
    char *o = cm_malloc_array(n + 1, 4);
    if (!o) {
        cm_free(a.v);
        return CM_ERR_NO_MEMORY;
    }
    size_t ol = 0;
    for (size_t k = 0; k < n; k++) ol += tok_utf8_put(a.v[k], o + ol);
    o[ol] = '\0';
    cm_free(a.v);
    *out = o;
    *out_len = ol;
    return CM_OK;
}
