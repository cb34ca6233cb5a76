/* cm_alloc.c - overflow-checked allocation helpers and a capped bump arena. */
#include <stdlib.h>
#include <string.h>

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
