/* dw_stop.c - stop strings over streamed text with minimal hold-back. */
#include "dw_stop.h"

#include <string.h>

struct dw_stop {
    char **stops;
    size_t *lens;
    size_t n, max_len;
    char *buf; /* held-back text followed by the new delta */
    size_t len, cap;
    char *out; /* what the last call returned */
    size_t out_cap;
    bool stopped;
};

dw_stop_t *dw_stop_new(const char *const *stops, size_t n) {
    dw_stop_t *s = cm_calloc(1, sizeof *s);
    if (!s) return NULL;
    s->stops = cm_calloc(n ? n : 1, sizeof *s->stops);
    s->lens = cm_calloc(n ? n : 1, sizeof *s->lens);
    if (!s->stops || !s->lens) goto fail;
    for (size_t i = 0; i < n; i++) {
        if (!stops[i] || !stops[i][0]) goto fail;
        s->stops[i] = cm_strdup(stops[i]);
        if (!s->stops[i]) goto fail;
        s->lens[i] = strlen(stops[i]);
        if (s->lens[i] > s->max_len) s->max_len = s->lens[i];
        s->n = i + 1;
    }
    return s;
fail:
    dw_stop_free(s);
    return NULL;
}

void dw_stop_free(dw_stop_t *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n; i++) cm_free(s->stops[i]);
    cm_free(s->stops);
    cm_free(s->lens);
    cm_free(s->buf);
    cm_free(s->out);
    cm_free(s);
}

static bool reserve(char **p, size_t *cap, size_t need) {
    if (need <= *cap) return true;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    char *n = cm_realloc_array(*p, c, 1);
    if (!n) return false;
    *p = n;
    *cap = c;
    return true;
}

/* Longest suffix of buf[0..len) that is a proper prefix of some stop. */
static size_t holdback(const dw_stop_t *s) {
    size_t best = 0;
    size_t lim = s->max_len - 1 < s->len ? s->max_len - 1 : s->len;
    for (size_t k = lim; k > 0 && best == 0; k--) {
        const char *tail = s->buf + s->len - k;
        for (size_t i = 0; i < s->n; i++) {
            if (s->lens[i] > k && memcmp(s->stops[i], tail, k) == 0) {
                best = k;
                break;
            }
        }
    }
    return best;
}

static void emit(dw_stop_t *s, size_t n, const char **out, size_t *out_len) {
    if (!reserve(&s->out, &s->out_cap, n + 1)) n = 0;
    if (n) memcpy(s->out, s->buf, n);
    if (s->out) s->out[n] = '\0';
    *out = s->out ? s->out : "";
    *out_len = n;
}

bool dw_stop_feed(dw_stop_t *s, const char *delta, size_t len, const char **out, size_t *out_len) {
    *out = "";
    *out_len = 0;
    if (s->stopped) return true;
    if (!reserve(&s->buf, &s->cap, s->len + len + 1)) return false;
    memcpy(s->buf + s->len, delta, len);
    s->len += len;
    s->buf[s->len] = '\0';
    if (s->n == 0) {
        emit(s, s->len, out, out_len);
        s->len = 0;
        return false;
    }
    /* Earliest match of any stop string in the buffer. Only the held-back
     * part and the new delta are here, so each byte is scanned a bounded
     * number of times. */
    size_t first = SIZE_MAX;
    for (size_t i = 0; i < s->n; i++) {
        const char *hit = memmem(s->buf, s->len, s->stops[i], s->lens[i]);
        if (hit && (size_t)(hit - s->buf) < first) first = (size_t)(hit - s->buf);
    }
    if (first != SIZE_MAX) {
        emit(s, first, out, out_len);
        s->stopped = true;
        s->len = 0;
        return true;
    }
    size_t keep = holdback(s);
    size_t n = s->len - keep;
    emit(s, n, out, out_len);
    memmove(s->buf, s->buf + n, keep);
    s->len = keep;
    return false;
}

void dw_stop_flush(dw_stop_t *s, const char **out, size_t *out_len) {
    if (s->stopped) {
        *out = "";
        *out_len = 0;
        return;
    }
    emit(s, s->len, out, out_len);
    s->len = 0;
}
