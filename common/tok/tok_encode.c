/* tok_encode.c - byte-level BPE encoding, decoding and streaming decode. */
#include <stdio.h>
#include <string.h>

#include "tok_impl.h"

typedef struct {
    int32_t *v;
    size_t n, cap;
} ids_t;

static bool push_id(ids_t *a, int32_t id) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        int32_t *v = cm_realloc_array(a->v, cap, sizeof *v);
        if (!v) return false;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return true;
}

static const tok_merge_t *merge_find(const tok_t *t, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = cm_hash64(&key, 8, 0) & (t->merges_cap - 1);
    while (t->merges[i].rank >= 0) {
        if (t->merges[i].pair == key) return &t->merges[i];
        i = (i + 1) & (t->merges_cap - 1);
    }
    return NULL;
}

/* Min-heap of candidate merges (rank, left symbol). */
typedef struct {
    int32_t rank;
    uint32_t pos;
    int32_t left, right; /* ids when pushed: stale entries are skipped */
} cand_t;

static void heap_push(cand_t *h, size_t *n, cand_t c) {
    size_t i = (*n)++;
    h[i] = c;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p].rank < h[i].rank || (h[p].rank == h[i].rank && h[p].pos <= h[i].pos)) break;
        cand_t tmp = h[p];
        h[p] = h[i];
        h[i] = tmp;
        i = p;
    }
}

static cand_t heap_pop(cand_t *h, size_t *n) {
    cand_t top = h[0];
    h[0] = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && (h[l].rank < h[m].rank || (h[l].rank == h[m].rank && h[l].pos < h[m].pos)))
            m = l;
        if (r < *n && (h[r].rank < h[m].rank || (h[r].rank == h[m].rank && h[r].pos < h[m].pos)))
            m = r;
        if (m == i) break;
        cand_t tmp = h[m];
        h[m] = h[i];
        h[i] = tmp;
        i = m;
    }
    return top;
}

/* Applies the merges by rank to the @len symbols @id (consumed), appending
 * the result to @out. */
static bool bpe_merge(const tok_t *t, int32_t *id, size_t len, ids_t *out) {
    int32_t *prev = cm_malloc_array(len, sizeof *prev);
    int32_t *next = cm_malloc_array(len, sizeof *next);
    cand_t *heap = cm_malloc_array(len * 2 + 2, sizeof *heap);
    size_t hn = 0;
    bool ok = prev && next && heap;
    for (size_t i = 0; ok && i < len; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < len ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; ok && i + 1 < len; i++) {
        const tok_merge_t *m = merge_find(t, id[i], id[i + 1]);
        if (m) heap_push(heap, &hn, (cand_t){m->rank, (uint32_t)i, id[i], id[i + 1]});
    }
    while (ok && hn > 0) {
        cand_t c = heap_pop(heap, &hn);
        int32_t r = next[c.pos];
        if (id[c.pos] != c.left || r < 0 || id[r] != c.right) continue; /* stale */
        const tok_merge_t *m = merge_find(t, c.left, c.right);
        id[c.pos] = m->merged;
        next[c.pos] = next[r];
        if (next[r] >= 0) prev[next[r]] = (int32_t)c.pos;
        id[r] = -2; /* gone */
        if (prev[c.pos] >= 0) {
            const tok_merge_t *pm = merge_find(t, id[prev[c.pos]], id[c.pos]);
            if (pm)
                heap_push(heap, &hn,
                          (cand_t){pm->rank, (uint32_t)prev[c.pos], id[prev[c.pos]], id[c.pos]});
        }
        if (next[c.pos] >= 0) {
            const tok_merge_t *nm = merge_find(t, id[c.pos], id[next[c.pos]]);
            if (nm) heap_push(heap, &hn, (cand_t){nm->rank, c.pos, id[c.pos], id[next[c.pos]]});
        }
    }
    for (int32_t i = 0; ok && len && i >= 0; i = next[i])
        if (id[i] >= 0) ok = push_id(out, id[i]);
    cm_free(prev);
    cm_free(next);
    cm_free(heap);
    return ok;
}

/* BPE of one pre-token (raw bytes), byte-level. */
static bool bpe(const tok_t *t, const unsigned char *s, size_t len, ids_t *out) {
    char small[1024];
    char *mapped = len * 2 <= sizeof small ? small : cm_malloc(len * 2 + 1);
    if (!mapped) return false;
    size_t ml = 0;
    for (size_t i = 0; i < len; i++) ml += tok_utf8_put(t->byte_to_cp[s[i]], mapped + ml);
    bool ok = true;
    int32_t whole = t->ignore_merges || len == 1 ? tok_vocab_find(t, mapped, ml) : -1;
    if (whole >= 0) {
        ok = push_id(out, whole);
    } else {
        int32_t *id = cm_malloc_array(len ? len : 1, sizeof *id);
        ok = id != NULL;
        for (size_t i = 0; ok && i < len; i++) {
            char one[4];
            size_t ol = tok_utf8_put(t->byte_to_cp[s[i]], one);
            id[i] = tok_vocab_find(t, one, ol);
        }
        ok = ok && bpe_merge(t, id, len, out);
        cm_free(id);
    }
    if (mapped != small) cm_free(mapped);
    return ok;
}

/* Length of the UTF-8 character at @s (1 for a byte that starts none). */
static size_t char_len(const unsigned char *s, size_t left) {
    size_t L = s[0] < 0x80 ? 1 : s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC0 ? 2 : 1;
    return L <= left && cm_utf8_valid((const char *)s, L) ? L : 1;
}

/* SentencePiece-style BPE of one word (U+2581 already in place): one
 * symbol per character; a character outside the vocabulary becomes its
 * <0xXX> byte tokens, else <unk> (runs fused with fuse_unk). */
static bool bpe_sp(const tok_t *t, const unsigned char *s, size_t len, ids_t *out) {
    if (t->ignore_merges) {
        int32_t whole = tok_vocab_find(t, (const char *)s, len);
        if (whole >= 0) return push_id(out, whole);
    }
    int32_t *id = cm_malloc_array(len ? len : 1, sizeof *id);
    if (!id) return false;
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        size_t L = char_len(s + i, len - i);
        int32_t v = tok_vocab_find(t, (const char *)s + i, L);
        bool bytes = v < 0 && t->byte_fallback;
        for (size_t k = 0; bytes && k < L; k++) bytes = t->byte_ids[s[i + k]] >= 0;
        if (v >= 0) {
            id[n++] = v;
        } else if (bytes) {
            for (size_t k = 0; k < L; k++) id[n++] = t->byte_ids[s[i + k]];
        } else if (t->unk >= 0 && !(t->fuse_unk && n && id[n - 1] == t->unk)) {
            id[n++] = t->unk;
        }
        i += L;
    }
    bool ok = bpe_merge(t, id, n, out);
    cm_free(id);
    return ok;
}

/* A text segment (between added tokens) of a SentencePiece tokenizer:
 * spaces to U+2581, the leading U+2581 as the normalizer or Metaspace
 * says, split at each U+2581 when Metaspace splits. @at_start: the segment
 * begins the text. */
static bool sp_segment(const tok_t *t, const char *s, size_t len, bool at_start, ids_t *out) {
    char *buf = cm_malloc(len * 3 + 4);
    if (!buf) return false;
    size_t n = 0;
    if (t->sp_norm_prepend) {
        memcpy(buf, TOK_SP_SPACE, 3);
        n = 3;
    }
    bool replace = t->sp_norm_replace || t->sp_meta;
    for (size_t i = 0; i < len; i++) {
        if (replace && s[i] == ' ') {
            memcpy(buf + n, TOK_SP_SPACE, 3);
            n += 3;
        } else {
            buf[n++] = s[i];
        }
    }
    bool lead = n >= 3 && !memcmp(buf, TOK_SP_SPACE, 3);
    if (t->sp_meta && !lead && (t->sp_meta_prepend == 2 || (t->sp_meta_prepend == 1 && at_start))) {
        memmove(buf + 3, buf, n);
        memcpy(buf, TOK_SP_SPACE, 3);
        n += 3;
    }
    bool ok = true;
    if (t->sp_meta && t->sp_meta_split) {
        /* Split before each U+2581 (merged with what follows). */
        size_t a = 0;
        for (size_t i = 3; ok && i + 3 <= n; i++) {
            if (memcmp(buf + i, TOK_SP_SPACE, 3)) continue;
            ok = bpe_sp(t, (const unsigned char *)buf + a, i - a, out);
            a = i;
            i += 2;
        }
        if (ok && n > a) ok = bpe_sp(t, (const unsigned char *)buf + a, n - a, out);
    } else if (n) {
        ok = bpe_sp(t, (const unsigned char *)buf, n, out);
    }
    cm_free(buf);
    return ok;
}

/* Applies split regex @k onward to text[0..len), then BPE on each piece. */
static bool pretok(const tok_t *t, size_t k, const char *s, size_t len, ids_t *out,
                   pcre2_match_data *md) {
    if (len == 0) return true;
    if (k == t->n_splits) return bpe(t, (const unsigned char *)s, len, out);
    size_t pos = 0;
    while (pos < len) {
        int rc = pcre2_match(t->splits[k], (PCRE2_SPTR)s, len, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc < 0) break;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t a = ov[0], b = ov[1];
        if (b == a) {
            /* Empty match: step over one character. */
            size_t step = 1;
            while (a + step < len && ((unsigned char)s[a + step] & 0xC0) == 0x80) step++;
            if (!pretok(t, k + 1, s + pos, a + step - pos, out, md)) return false;
            pos = a + step;
            continue;
        }
        if (a > pos && !pretok(t, k + 1, s + pos, a - pos, out, md)) return false;
        if (!pretok(t, k + 1, s + a, b - a, out, md)) return false;
        pos = b;
    }
    return pos >= len || pretok(t, k + 1, s + pos, len - pos, out, md);
}

cm_status_t tok_encode(const tok_t *t, const char *text, size_t len, bool add_special,
                       int32_t **ids, size_t *n) {
    ids_t out = {0};
    pcre2_match_data *md = t->n_splits ? pcre2_match_data_create(4, NULL) : NULL;
    bool ok = !t->n_splits || md;
    /* Invalid UTF-8 cannot go through the UTF regexes: such input is
     * encoded without the regex split (bytes still round-trip). */
    bool valid = cm_utf8_valid(text, len);
    if (add_special)
        for (uint32_t i = 0; ok && i < t->n_prefix; i++) ok = push_id(&out, t->prefix[i]);
    size_t seg = 0;
    for (size_t i = 0; ok && i <= len; i++) {
        const tok_added_t *hit = NULL;
        if (i < len && t->n_added) {
            for (size_t a = 0; a < t->n_added; a++) {
                const tok_added_t *ad = &t->added[a];
                if (ad->len <= len - i && ad->content[0] == text[i] &&
                    memcmp(ad->content, text + i, ad->len) == 0) {
                    hit = ad;
                    break; /* longest first */
                }
            }
        }
        if (!hit && i < len) continue;
        if (i > seg) {
            if (t->sp) {
                char *norm = NULL;
                size_t nl = i - seg;
                if (valid && t->nfc) ok = tok_nfc(text + seg, i - seg, &norm, &nl) == CM_OK;
                if (ok) ok = sp_segment(t, norm ? norm : text + seg, nl, seg == 0, &out);
                cm_free(norm);
            } else if (valid && t->nfc) {
                char *norm;
                size_t nl;
                ok = tok_nfc(text + seg, i - seg, &norm, &nl) == CM_OK;
                if (ok) ok = pretok(t, 0, norm ? norm : text + seg, norm ? nl : i - seg, &out, md);
                cm_free(norm);
            } else if (valid) {
                ok = pretok(t, 0, text + seg, i - seg, &out, md);
            } else {
                ok = bpe(t, (const unsigned char *)text + seg, i - seg, &out);
            }
        }
        if (ok && hit) {
            ok = push_id(&out, hit->id);
            i += hit->len - 1;
            seg = i + 1;
        }
    }
    if (add_special)
        for (uint32_t i = 0; ok && i < t->n_suffix; i++) ok = push_id(&out, t->suffix[i]);
    pcre2_match_data_free(md);
    if (!ok) {
        cm_free(out.v);
        return CM_ERR_NO_MEMORY;
    }
    if (!out.v) out.v = cm_malloc(sizeof(int32_t));
    *ids = out.v;
    *n = out.n;
    return CM_OK;
}

cm_status_t tok_decode(const tok_t *t, const int32_t *ids, size_t n, bool skip_special, char **text,
                       size_t *len) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (uint32_t)ids[i] >= t->n_ids) return CM_ERR_OUT_OF_RANGE;
        total += t->id_len[ids[i]];
    }
    char *o = cm_malloc(total + 1);
    if (!o) return CM_ERR_NO_MEMORY;
    size_t k = 0;
    bool first = true;
    for (size_t i = 0; i < n; i++) {
        if (skip_special && t->id_special[ids[i]]) continue;
        const char *b = t->id_bytes[ids[i]];
        size_t bl = b ? t->id_len[ids[i]] : 0;
        if (first && t->sp_strip_lead && bl && b[0] == ' ') { /* SentencePiece */
            b++;
            bl--;
        }
        first = false;
        if (bl) memcpy(o + k, b, bl);
        k += bl;
    }
    o[k] = '\0';
    *text = o;
    *len = k;
    return CM_OK;
}

/* ------------------------------------------------------------------------ */

struct tok_stream {
    const tok_t *t;
    bool skip_special;
    bool started; /* an id was pushed (SentencePiece: no leading space then) */
    /* Bytes not yet written out: text that did not fit in the caller's
     * buffer, then an incomplete UTF-8 sequence waiting for more bytes. */
    char *buf;
    size_t n, cap;
};

tok_stream_t *tok_stream_new(const tok_t *t, bool skip_special) {
    tok_stream_t *s = cm_calloc(1, sizeof *s);
    if (s) {
        s->t = t;
        s->skip_special = skip_special;
    }
    return s;
}

void tok_stream_free(tok_stream_t *s) {
    if (s) cm_free(s->buf);
    cm_free(s);
}

/* The well-formed UTF-8 sequence at @p (Unicode Table 3-7): its length,
 * or 0 with *@sub the length of its maximal subpart (the bytes one
 * U+FFFD replaces) and *@open whether the bytes end before the sequence
 * does (more bytes may still complete it). */
static size_t wf_len(const unsigned char *p, size_t n, size_t *sub, bool *open) {
    unsigned c = p[0], lo = 0x80, hi = 0xBF;
    size_t L;
    *open = false;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        L = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        L = 3;
        lo = c == 0xE0 ? 0xA0 : 0x80;
        hi = c == 0xED ? 0x9F : 0xBF;
    } else if (c >= 0xF0 && c <= 0xF4) {
        L = 4;
        lo = c == 0xF0 ? 0x90 : 0x80;
        hi = c == 0xF4 ? 0x8F : 0xBF;
    } else {
        *sub = 1;
        return 0;
    }
    size_t k = 1;
    for (; k < L && k < n; k++) {
        unsigned b = p[k];
        if (b < (k == 1 ? lo : 0x80u) || b > (k == 1 ? hi : 0xBFu)) break;
    }
    if (k == L) return L;
    *sub = k;
    *open = k == n;
    return 0;
}

/* Writes the complete text of s->buf to @out (at most @cap bytes), each
 * maximal subpart of an ill-formed sequence as one U+FFFD (as Python's
 * bytes.decode("utf-8", "replace") and Rust's from_utf8_lossy, which HF
 * tokenizers' decode uses); an incomplete tail is kept unless @final.
 * What does not fit stays for the next call. Returns bytes written. */
static size_t emit(tok_stream_t *s, char *out, size_t cap, bool final) {
    const unsigned char *in = (const unsigned char *)s->buf;
    size_t w = 0, i = 0;
    while (i < s->n) {
        size_t sub = 0;
        bool open;
        size_t L = wf_len(in + i, s->n - i, &sub, &open);
        if (!L && open && !final) break;
        const char *src = L ? (const char *)in + i : "\xEF\xBF\xBD";
        size_t sl = L ? L : 3;
        if (w + sl > cap) break;
        memcpy(out + w, src, sl);
        w += sl;
        i += L ? L : sub;
    }
    if (i) {
        memmove(s->buf, s->buf + i, s->n - i);
        s->n -= i;
    }
    return w;
}

size_t tok_stream_push(tok_stream_t *s, int32_t id, char *out, size_t cap) {
    const tok_t *t = s->t;
    if (id >= 0 && (uint32_t)id < t->n_ids && t->id_bytes[id] &&
        !(s->skip_special && t->id_special[id])) {
        const char *b = t->id_bytes[id];
        size_t bl = t->id_len[id];
        if (!s->started && t->sp_strip_lead && bl && b[0] == ' ') {
            b++;
            bl--;
        }
        s->started = true;
        if (s->n + bl > s->cap) {
            size_t nc = s->cap ? s->cap : 64;
            while (nc < s->n + bl) nc *= 2;
            char *nb = cm_realloc_array(s->buf, nc, 1);
            if (!nb) return emit(s, out, cap, false); /* the token is lost */
            s->buf = nb;
            s->cap = nc;
        }
        if (bl) memcpy(s->buf + s->n, b, bl);
        s->n += bl;
    }
    return emit(s, out, cap, false);
}

size_t tok_stream_flush(tok_stream_t *s, char *out, size_t cap) {
    /* An incomplete sequence at the end is one replacement character, as
     * Python's decode(errors="replace") gives. */
    return emit(s, out, cap, true);
}
