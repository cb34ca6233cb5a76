/*
 * bench_sse.c - incremental parser of text/event-stream bodies, following
 * the WHATWG HTML "event stream interpretation" rules. It does no I/O: the
 * HTTP client feeds it whatever bytes arrived, split anywhere.
 */
#include <stdlib.h>
#include <string.h>

#include "bench_load.h"

struct bench_sse {
    bench_sse_event_fn fn;
    void *ud;
    size_t max;
    char *line; /* the current, unterminated line */
    size_t line_len, line_cap;
    char *data; /* data lines of the current event, each followed by '\n' */
    size_t data_len, data_cap;
    char event[64]; /* the "event:" field; empty means "message" */
    bool skip_lf;   /* the previous byte was a CR: a following LF ends nothing */
};

bench_sse_t *bench_sse_new(size_t max_bytes, bench_sse_event_fn fn, void *ud) {
    if (!fn || max_bytes == 0) return NULL;
    bench_sse_t *p = cm_calloc(1, sizeof *p);
    if (!p) return NULL;
    p->fn = fn;
    p->ud = ud;
    p->max = max_bytes;
    return p;
}

void bench_sse_reset(bench_sse_t *p) {
    p->line_len = 0;
    p->data_len = 0;
    p->event[0] = '\0';
    p->skip_lf = false;
}

void bench_sse_free(bench_sse_t *p) {
    if (!p) return;
    cm_free(p->line);
    cm_free(p->data);
    cm_free(p);
}

/* Grows *buf to hold @need bytes plus a NUL, never beyond max + 1. */
static cm_status_t sse_reserve(char **buf, size_t *cap, size_t need, size_t max) {
    if (need > max) return CM_ERR_TOO_LARGE;
    if (need + 1 <= *cap) return CM_OK;
    size_t ncap = *cap ? *cap : 256;
    while (ncap < need + 1) ncap *= 2;
    if (ncap > max + 1) ncap = max + 1;
    char *nb = cm_realloc_array(*buf, ncap, 1);
    if (!nb) return CM_ERR_NO_MEMORY;
    *buf = nb;
    *cap = ncap;
    return CM_OK;
}

static cm_status_t sse_dispatch(bench_sse_t *p) {
    if (p->data_len == 0) { /* no data field: nothing to dispatch */
        p->event[0] = '\0';
        return CM_OK;
    }
    p->data_len--; /* drop the last '\n' */
    p->data[p->data_len] = '\0';
    int rc = p->fn(p->ud, p->event[0] ? p->event : "message", p->data, p->data_len);
    p->data_len = 0;
    p->event[0] = '\0';
    return rc ? CM_ERR_CANCELED : CM_OK;
}

/* Interprets one complete line (without its terminator). */
static cm_status_t sse_line(bench_sse_t *p, const char *s, size_t n) {
    if (n == 0) return sse_dispatch(p);
    if (s[0] == ':') return CM_OK; /* comment */
    const char *colon = memchr(s, ':', n);
    size_t flen = colon ? (size_t)(colon - s) : n;
    const char *v = colon ? colon + 1 : s + n;
    size_t vlen = (size_t)(s + n - v);
    if (vlen > 0 && v[0] == ' ') {
        v++;
        vlen--;
    }
    if (flen == 4 && !memcmp(s, "data", 4)) {
        cm_status_t st = sse_reserve(&p->data, &p->data_cap, p->data_len + vlen + 1, p->max);
        if (st != CM_OK) return st;
        memcpy(p->data + p->data_len, v, vlen);
        p->data_len += vlen;
        p->data[p->data_len++] = '\n';
    } else if (flen == 5 && !memcmp(s, "event", 5)) {
        if (vlen >= sizeof p->event) vlen = sizeof p->event - 1;
        memcpy(p->event, v, vlen);
        p->event[vlen] = '\0';
    }
    /* "id", "retry" and unknown fields do not matter to a benchmark. */
    return CM_OK;
}

cm_status_t bench_sse_feed(bench_sse_t *p, const char *buf, size_t len) {
    size_t i = 0;
    while (i < len) {
        if (p->skip_lf) {
            p->skip_lf = false;
            if (buf[i] == '\n') {
                i++;
                continue;
            }
        }
        /* Find the end of the line in this buffer. */
        size_t j = i;
        while (j < len && buf[j] != '\n' && buf[j] != '\r') j++;
        if (j == len) { /* unterminated: keep it for the next feed */
            cm_status_t st = sse_reserve(&p->line, &p->line_cap, p->line_len + (j - i), p->max);
            if (st != CM_OK) return st;
            memcpy(p->line + p->line_len, buf + i, j - i);
            p->line_len += j - i;
            return CM_OK;
        }
        cm_status_t st;
        if (p->line_len == 0) {
            if (j - i > p->max) return CM_ERR_TOO_LARGE;
            st = sse_line(p, buf + i, j - i);
        } else {
            st = sse_reserve(&p->line, &p->line_cap, p->line_len + (j - i), p->max);
            if (st != CM_OK) return st;
            memcpy(p->line + p->line_len, buf + i, j - i);
            size_t n = p->line_len + (j - i);
            p->line_len = 0;
            st = sse_line(p, p->line, n);
        }
        if (buf[j] == '\r') p->skip_lf = true;
        i = j + 1;
        if (st != CM_OK) return st;
    }
    return CM_OK;
}
