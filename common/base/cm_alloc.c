/* cm_alloc.c - overflow-checked allocation helpers, a capped bump arena and
 * huge-page mappings. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "cm_base.h"

void *cm_malloc(size_t size) { return malloc(size ? size : 1); }

void *cm_calloc(size_t n, size_t size) {
    size_t total;
    if (!cm_mul_ok(n, size, &total)) return NULL;
    return calloc(total ? total : 1, 1);
}

void *cm_malloc_array(size_t n, size_t size) {
    size_t total;
    if (!cm_mul_ok(n, size, &total)) return NULL;
    return malloc(total ? total : 1);
}

void *cm_realloc_array(void *p, size_t n, size_t size) {
    size_t total;
    if (!cm_mul_ok(n, size, &total)) return NULL;
    return realloc(p, total ? total : 1);
}

void cm_free(void *p) { free(p); }

void *cm_aligned_alloc(size_t align, size_t size) {
    if (align < sizeof(void *) || (align & (align - 1)) != 0) return NULL;
    size_t rounded;
    if (!cm_add_ok(size ? size : 1, align - 1, &rounded)) return NULL;
    rounded &= ~(align - 1);
    void *p = NULL;
    if (posix_memalign(&p, align, rounded) != 0) return NULL;
    return p;
}

void cm_aligned_free(void *p) { free(p); }

char *cm_strdup(const char *s) { return s ? cm_strndup(s, strlen(s)) : NULL; }

char *cm_strndup(const char *s, size_t n) {
    if (!s) return NULL;
    size_t len = strnlen(s, n);
    char *d = malloc(len + 1);
    if (!d) return NULL;
    memcpy(d, s, len);
    d[len] = '\0';
    return d;
}

/* ------------------------------------------------------------------------ */

typedef struct cm_arena_chunk {
    struct cm_arena_chunk *next;
    size_t size; /* usable bytes in data[] */
    size_t used;
    _Alignas(16) unsigned char data[];
} cm_arena_chunk_t;

struct cm_arena {
    size_t cap;  /* most bytes handed out between resets */
    size_t used; /* bytes handed out since the last reset */
    cm_arena_chunk_t *head;
};

enum { CM_ARENA_MIN_CHUNK = 4096 };

cm_arena_t *cm_arena_new(size_t cap) {
    cm_arena_t *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->cap = cap;
    return a;
}

void *cm_arena_alloc(cm_arena_t *a, size_t size) {
    size_t need = (size + 15) & ~(size_t)15;
    if (need < size) return NULL;
    size_t total;
    if (!cm_add_ok(a->used, need, &total) || total > a->cap) return NULL;
    cm_arena_chunk_t *c = a->head;
    if (!c || c->size - c->used < need) {
        size_t csize = need > CM_ARENA_MIN_CHUNK ? need : CM_ARENA_MIN_CHUNK;
        if (c && c->size * 2 > csize && c->size * 2 <= a->cap) csize = c->size * 2;
        c = malloc(sizeof *c + csize);
        if (!c) return NULL;
        c->size = csize;
        c->used = 0;
        c->next = a->head;
        a->head = c;
    }
    void *p = c->data + c->used;
    c->used += need;
    a->used = total;
    return p;
}

void cm_arena_reset(cm_arena_t *a) {
    if (!a) return;
    /* Keep the largest (most recent) chunk, drop the rest. */
    cm_arena_chunk_t *keep = a->head;
    if (keep) {
        cm_arena_chunk_t *c = keep->next;
        while (c) {
            cm_arena_chunk_t *next = c->next;
            free(c);
            c = next;
        }
        keep->next = NULL;
        keep->used = 0;
    }
    a->used = 0;
}

size_t cm_arena_used(const cm_arena_t *a) { return a->used; }

void cm_arena_free(cm_arena_t *a) {
    if (!a) return;
    cm_arena_chunk_t *c = a->head;
    while (c) {
        cm_arena_chunk_t *next = c->next;
        free(c);
        c = next;
    }
    free(a);
}

/* ------------------------------------------------------------------------ */

enum { CM_HUGE = 1 << 21 };

static bool huge_round(size_t n, size_t *out) {
    if (!cm_add_ok(n ? n : 1, CM_HUGE - 1, out)) return false;
    *out &= ~(size_t)(CM_HUGE - 1);
    return true;
}

void *cm_huge_map(size_t n) {
    size_t len, span;
    if (!huge_round(n, &len) || !cm_add_ok(len, CM_HUGE, &span)) return NULL;
    unsigned char *m = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return NULL;
    unsigned char *a = (unsigned char *)(((uintptr_t)m + CM_HUGE - 1) & ~(uintptr_t)(CM_HUGE - 1));
    if (a > m) munmap(m, (size_t)(a - m));
    if (m + span > a + len) munmap(a + len, (size_t)(m + span - (a + len)));
#ifdef MADV_HUGEPAGE
    (void)madvise(a, len, MADV_HUGEPAGE); /* advice only */
#endif
    return a;
}

void cm_huge_unmap(void *p, size_t n) {
    size_t len;
    if (p && huge_round(n, &len)) munmap(p, len);
}

typedef struct cm_hpool_chunk {
    struct cm_hpool_chunk *next;
    unsigned char *mem;
    size_t size, used;
} cm_hpool_chunk_t;

struct cm_hpool {
    size_t chunk, used;
    cm_hpool_chunk_t *head;
};

cm_hpool_t *cm_hpool_new(size_t chunk) {
    cm_hpool_t *h = calloc(1, sizeof *h);
    if (h) h->chunk = chunk;
    return h;
}

void *cm_hpool_alloc(cm_hpool_t *h, size_t align, size_t n) {
    if (!h || !align || align > 4096 || (align & (align - 1))) return NULL;
    n = n ? n : 1;
    cm_hpool_chunk_t *c = h->head;
    size_t at = c ? (c->used + align - 1) & ~(align - 1) : 0;
    if (!c || at > c->size || c->size - at < n) {
        size_t want = n > h->chunk ? n : h->chunk;
        if (!huge_round(want, &want) || !(c = calloc(1, sizeof *c))) return NULL;
        if (!(c->mem = cm_huge_map(want))) {
            free(c);
            return NULL;
        }
        c->size = want;
        c->next = h->head;
        h->head = c;
        at = 0;
    }
    c->used = at + n;
    h->used += n;
    return c->mem + at;
}

size_t cm_hpool_used(const cm_hpool_t *h) { return h ? h->used : 0; }

void cm_hpool_free(cm_hpool_t *h) {
    if (!h) return;
    for (cm_hpool_chunk_t *c = h->head, *next; c; c = next) {
        next = c->next;
        cm_huge_unmap(c->mem, c->size);
        free(c);
    }
    free(h);
}
