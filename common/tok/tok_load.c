/* tok_load.c - reading tokenizer.json / tokenizer_config.json. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok_impl.h"

static size_t utf8_put(uint32_t cp, char *o) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* GPT-2's bytes_to_unicode. */
static void byte_map(tok_t *t) {
    uint32_t n = 0;
    for (int i = 0; i < 512; i++) t->cp_to_byte[i] = -1;
    for (uint32_t b = 0; b < 256; b++) {
        bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        t->byte_to_cp[b] = keep ? b : 256 + n++;
        t->cp_to_byte[t->byte_to_cp[b]] = (int16_t)b;
    }
}

int32_t tok_vocab_find(const tok_t *t, const char *s, size_t len) {
    size_t i = cm_hash64(s, len, 0) & (t->vocab_cap - 1);
    while (t->vocab[i].key) {
        if (t->vocab[i].len == len && memcmp(t->vocab[i].key, s, len) == 0) return t->vocab[i].id;
        i = (i + 1) & (t->vocab_cap - 1);
    }
    return -1;
}

static bool vocab_put(tok_t *t, const char *s, size_t len, int32_t id) {
    size_t i = cm_hash64(s, len, 0) & (t->vocab_cap - 1);
    while (t->vocab[i].key) {
        if (t->vocab[i].len == len && memcmp(t->vocab[i].key, s, len) == 0) return true;
        i = (i + 1) & (t->vocab_cap - 1);
    }
    t->vocab[i].key = cm_strndup(s, len);
    t->vocab[i].len = len;
    t->vocab[i].id = id;
    return t->vocab[i].key != NULL;
}

/* Decoded bytes of a byte-level token string (code points -> bytes). */
static char *unmap(const tok_t *t, const char *s, uint32_t *out_len) {
    size_t n = strlen(s);
    char *o = cm_malloc(n + 1);
    if (!o) return NULL;
    size_t k = 0;
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        uint32_t cp;
        size_t adv;
        if (p[0] < 0x80) {
            cp = p[0];
            adv = 1;
        } else if ((p[0] & 0xE0) == 0xC0 && p[1]) {
            cp = ((uint32_t)(p[0] & 0x1F) << 6) | (p[1] & 0x3F);
            adv = 2;
        } else if ((p[0] & 0xF0) == 0xE0 && p[1] && p[2]) {
            cp = ((uint32_t)(p[0] & 0x0F) << 12) | ((uint32_t)(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
            adv = 3;
        } else {
            cp = 0xFFFFFFFF;
            adv = 1;
        }
        if (cp < 512 && t->cp_to_byte[cp] >= 0) {
            o[k++] = (char)t->cp_to_byte[cp];
        } else {
            memcpy(o + k, p, adv); /* not a byte-level char: keep as is */
            k += adv;
        }
        p += adv;
    }
    o[k] = '\0';
    *out_len = (uint32_t)k;
    return o;
}

/* Decoded bytes of a SentencePiece piece: U+2581 -> ' ', <0xXX> -> byte. */
static char *sp_unmap(const char *s, uint32_t *out_len) {
    size_t n = strlen(s);
    char *o = cm_malloc(n + 1);
    if (!o) return NULL;
    unsigned hex;
    if (n == 6 && s[0] == '<' && s[1] == '0' && s[2] == 'x' && s[5] == '>' &&
        sscanf(s + 3, "%2X", &hex) == 1) {
        o[0] = (char)hex;
        o[1] = '\0';
        *out_len = 1;
        return o;
    }
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        if (!strncmp(s + i, TOK_SP_SPACE, 3)) {
            o[k++] = ' ';
            i += 3;
        } else {
            o[k++] = s[i++];
        }
    }
    o[k] = '\0';
    *out_len = (uint32_t)k;
    return o;
}

/* Whether @node, or a step of it (Sequence), has type @type. */
static bool has_type(const cJSON *node, const char *type) {
    if (!cJSON_IsObject(node)) return false;
    const cJSON *ty = cJSON_GetObjectItem(node, "type");
    if (cJSON_IsString(ty) && !strcmp(ty->valuestring, type)) return true;
    static const char *const lists[] = {"normalizers", "pretokenizers", "decoders"};
    for (size_t i = 0; i < 3; i++) {
        const cJSON *e;
        cJSON_ArrayForEach(e,
                           cJSON_GetObjectItem(node, lists[i])) if (has_type(e, type)) return true;
    }
    return false;
}

static bool str_is(const cJSON *o, const char *key, const char *want) {
    const cJSON *v = cJSON_GetObjectItem(o, key);
    return cJSON_IsString(v) && !strcmp(v->valuestring, want);
}

/* A Metaspace decoder (or one in a Sequence) that drops the first token's
 * leading space: any prepend scheme but "never". */
static bool strips_lead(const cJSON *d) {
    if (!cJSON_IsObject(d)) return false;
    if (str_is(d, "type", "Metaspace"))
        return !str_is(d, "prepend_scheme", "never") &&
               !cJSON_IsFalse(cJSON_GetObjectItem(d, "add_prefix_space"));
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(d, "decoders")) if (strips_lead(e)) return true;
    return false;
}

static bool merge_put(tok_t *t, int32_t a, int32_t b, int32_t rank, int32_t merged) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = cm_hash64(&key, 8, 0) & (t->merges_cap - 1);
    while (t->merges[i].rank >= 0) {
        if (t->merges[i].pair == key) return true; /* first (best) rank wins */
        i = (i + 1) & (t->merges_cap - 1);
    }
    t->merges[i] = (tok_merge_t){key, rank, merged};
    return true;
}

static int cmp_added(const void *a, const void *b) {
    const tok_added_t *x = a, *y = b;
    return x->len < y->len ? 1 : x->len > y->len ? -1 : 0;
}

void tok_free(tok_t *t) {
    if (!t) return;
    for (size_t i = 0; i < t->vocab_cap; i++) cm_free(t->vocab[i].key);
    for (uint32_t i = 0; i < t->n_ids; i++) cm_free(t->id_bytes[i]);
    for (size_t i = 0; i < t->n_added; i++) cm_free(t->added[i].content);
    for (size_t i = 0; i < t->n_splits; i++) pcre2_code_free(t->splits[i]);
    cm_free(t->vocab);
    cm_free(t->id_bytes);
    cm_free(t->id_len);
    cm_free(t->id_special);
    cm_free(t->merges);
    cm_free(t->added);
    cm_free(t->splits);
    cm_free(t->bos_str);
    cm_free(t->eos_str);
    cm_free(t);
}

static cm_status_t add_split(tok_t *t, const char *pattern, char *err, size_t errlen) {
    int ec;
    PCRE2_SIZE eo;
    /* The pattern is checked (cJSON does not check strings are UTF-8); the
     * texts matched are, before each match. */
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        snprintf(err, errlen, "tokenizer.json: pre-tokenizer regex at %zu: %s", (size_t)eo,
                 (char *)msg);
        return CM_ERR_BAD_FORMAT;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    pcre2_code **n = cm_realloc_array(t->splits, t->n_splits + 1, sizeof *n);
    if (!n) {
        pcre2_code_free(re);
        return CM_ERR_NO_MEMORY;
    }
    t->splits = n;
    t->splits[t->n_splits++] = re;
    return CM_OK;
}

#define GPT2_REGEX \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

/* Pre-tokenizers we support: Split(Regex, Isolated), ByteLevel, Sequence. */
static cm_status_t read_pretok(tok_t *t, const cJSON *p, char *err, size_t errlen) {
    if (!p || cJSON_IsNull(p)) return CM_OK;
    const cJSON *type = cJSON_GetObjectItem(p, "type");
    const char *ty = cJSON_IsString(type) ? type->valuestring : "";
    if (!strcmp(ty, "Sequence")) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(p, "pretokenizers")) {
            cm_status_t st = read_pretok(t, e, err, errlen);
            if (st) return st;
        }
        return CM_OK;
    }
    if (!strcmp(ty, "Split")) {
        const cJSON *re = cJSON_GetObjectItem(cJSON_GetObjectItem(p, "pattern"), "Regex");
        const cJSON *beh = cJSON_GetObjectItem(p, "behavior");
        if (!cJSON_IsString(re) || !cJSON_IsString(beh) || strcmp(beh->valuestring, "Isolated") ||
            cJSON_IsTrue(cJSON_GetObjectItem(p, "invert"))) {
            snprintf(err, errlen,
                     "tokenizer.json: unsupported Split pre-tokenizer (only a Regex "
                     "with behavior Isolated)");
            return CM_ERR_UNSUPPORTED;
        }
        return add_split(t, re->valuestring, err, errlen);
    }
    if (!strcmp(ty, "ByteLevel")) {
        if (cJSON_IsTrue(cJSON_GetObjectItem(p, "add_prefix_space"))) {
            snprintf(err, errlen, "tokenizer.json: ByteLevel add_prefix_space is not supported");
            return CM_ERR_UNSUPPORTED;
        }
        if (cJSON_IsTrue(cJSON_GetObjectItem(p, "use_regex")))
            return add_split(t, GPT2_REGEX, err, errlen);
        return CM_OK;
    }
    if (!strcmp(ty, "Metaspace")) {
        if (!str_is(p, "replacement", TOK_SP_SPACE)) {
            snprintf(err, errlen, "tokenizer.json: Metaspace replacement other than U+2581");
            return CM_ERR_UNSUPPORTED;
        }
        t->sp_meta = true;
        const cJSON *split = cJSON_GetObjectItem(p, "split");
        t->sp_meta_split = !cJSON_IsBool(split) || cJSON_IsTrue(split); /* absent: old, split */
        if (str_is(p, "prepend_scheme", "first"))
            t->sp_meta_prepend = 1;
        else if (str_is(p, "prepend_scheme", "never"))
            t->sp_meta_prepend = 0;
        else if (str_is(p, "prepend_scheme", "always"))
            t->sp_meta_prepend = 2;
        else /* before prepend_scheme: add_prefix_space */
            t->sp_meta_prepend = cJSON_IsFalse(cJSON_GetObjectItem(p, "add_prefix_space")) ? 0 : 2;
        return CM_OK;
    }
    snprintf(err, errlen, "tokenizer.json: unsupported pre-tokenizer '%s'", ty);
    return CM_ERR_UNSUPPORTED;
}

static int32_t special_id(const tok_t *t, const cJSON *tokval) {
    /* tokenizer_config.json: "eos_token": "<|im_end|>" or {"content": ...} */
    const cJSON *s = cJSON_IsObject(tokval) ? cJSON_GetObjectItem(tokval, "content") : tokval;
    return cJSON_IsString(s) ? tok_token_id(t, s->valuestring) : -1;
}

static tok_chat_t detect_chat(const char *tpl) {
    if (!tpl) return TOK_CHAT_NONE;
    if (strstr(tpl, "<|im_start|>")) return TOK_CHAT_CHATML;
    if (strstr(tpl, "<|start_header_id|>")) return TOK_CHAT_LLAMA3;
    if (strstr(tpl, "<\xef\xbd\x9cUser\xef\xbd\x9c>")) return TOK_CHAT_DEEPSEEK;
    if (strstr(tpl, "[INST]")) return TOK_CHAT_MISTRAL;
    return TOK_CHAT_NONE;
}

cm_status_t tok_load(const char *dir, tok_t **out, char *err, size_t errlen) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    char *text = NULL;
    cm_status_t rst = cm_read_file(path, 512u << 20, &text, NULL, err, errlen);
    if (rst == CM_ERR_NOT_FOUND) snprintf(err, errlen, "%s: cannot read: no such file", path);
    if (rst != CM_OK) return rst;
    cJSON *j = cJSON_Parse(text);
    cm_free(text);
    tok_t *t = cm_calloc(1, sizeof *t);
    cm_status_t st = CM_OK;
    if (!t) {
        cJSON_Delete(j);
        return CM_ERR_NO_MEMORY;
    }
    t->bos = t->eos = -1;
    byte_map(t);
    const cJSON *model = cJSON_GetObjectItem(j, "model");
    const cJSON *vocab = cJSON_GetObjectItem(model, "vocab");
    const cJSON *mtype = cJSON_GetObjectItem(model, "type");
    if (!cJSON_IsObject(vocab) || !cJSON_IsString(mtype) || strcmp(mtype->valuestring, "BPE")) {
        snprintf(err, errlen, "%s: only BPE models are supported", path);
        st = CM_ERR_UNSUPPORTED;
        goto done;
    }
    /* SentencePiece-style pieces (U+2581 spaces, <0xXX> bytes) rather than
     * ByteLevel's remapped bytes. */
    t->byte_fallback = cJSON_IsTrue(cJSON_GetObjectItem(model, "byte_fallback"));
    t->fuse_unk = cJSON_IsTrue(cJSON_GetObjectItem(model, "fuse_unk"));
    const cJSON *norm = cJSON_GetObjectItem(j, "normalizer");
    t->sp = t->byte_fallback || has_type(norm, "Prepend") || has_type(norm, "Replace") ||
            has_type(cJSON_GetObjectItem(j, "pre_tokenizer"), "Metaspace");
    if (t->sp && has_type(cJSON_GetObjectItem(j, "pre_tokenizer"), "ByteLevel")) {
        snprintf(err, errlen, "%s: byte_fallback/Metaspace together with ByteLevel", path);
        st = CM_ERR_UNSUPPORTED;
        goto done;
    }
    t->ignore_merges = cJSON_IsTrue(cJSON_GetObjectItem(model, "ignore_merges"));
    int nv = cJSON_GetArraySize(vocab);
    const cJSON *added = cJSON_GetObjectItem(j, "added_tokens");
    uint32_t max_id = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) if (cJSON_IsNumber(e) && e->valueint >= 0 &&
                                     (uint32_t)e->valueint + 1 > max_id) max_id =
        (uint32_t)e->valueint + 1;
    cJSON_ArrayForEach(e, added) {
        const cJSON *id = cJSON_GetObjectItem(e, "id");
        if (cJSON_IsNumber(id) && id->valueint >= 0 && (uint32_t)id->valueint + 1 > max_id)
            max_id = (uint32_t)id->valueint + 1;
    }
    if (max_id > (1u << 24)) {
        snprintf(err, errlen, "%s: token ids up to %u are too large", path, max_id);
        st = CM_ERR_BAD_FORMAT;
        goto done;
    }
    t->vocab_cap = 1;
    size_t n_added = (size_t)cJSON_GetArraySize(added); /* O(n): once */
    while (t->vocab_cap < ((size_t)nv + n_added) * 2 + 16) t->vocab_cap <<= 1;
    t->vocab = cm_calloc(t->vocab_cap, sizeof *t->vocab);
    t->n_ids = max_id;
    t->id_bytes = cm_calloc(max_id ? max_id : 1, sizeof *t->id_bytes);
    t->id_len = cm_calloc(max_id ? max_id : 1, sizeof *t->id_len);
    t->id_special = cm_calloc(max_id ? max_id : 1, sizeof *t->id_special);
    if (!t->vocab || !t->id_bytes || !t->id_len || !t->id_special) goto oom;
    cJSON_ArrayForEach(e, vocab) {
        if (!cJSON_IsNumber(e) || e->valueint < 0) continue;
        uint32_t id = (uint32_t)e->valueint;
        if (!vocab_put(t, e->string, strlen(e->string), (int32_t)id)) goto oom;
        if (!t->id_bytes[id] && !(t->id_bytes[id] = t->sp ? sp_unmap(e->string, &t->id_len[id])
                                                          : unmap(t, e->string, &t->id_len[id])))
            goto oom;
    }
    /* Added tokens: matched literally in the text, decoded as written. */
    t->added = cm_calloc((size_t)cJSON_GetArraySize(added) + 1, sizeof *t->added);
    if (!t->added) goto oom;
    cJSON_ArrayForEach(e, added) {
        const cJSON *id = cJSON_GetObjectItem(e, "id"), *c = cJSON_GetObjectItem(e, "content");
        if (!cJSON_IsNumber(id) || !cJSON_IsString(c) || id->valueint < 0 || !c->valuestring[0])
            continue;
        tok_added_t *a = &t->added[t->n_added++];
        a->content = cm_strdup(c->valuestring);
        if (!a->content) goto oom;
        a->len = strlen(a->content);
        a->id = id->valueint;
        a->special = cJSON_IsTrue(cJSON_GetObjectItem(e, "special"));
        uint32_t uid = (uint32_t)a->id;
        cm_free(t->id_bytes[uid]);
        t->id_bytes[uid] = cm_strdup(a->content);
        if (!t->id_bytes[uid]) goto oom;
        t->id_len[uid] = (uint32_t)a->len;
        t->id_special[uid] = a->special;
        if (!vocab_put(t, a->content, a->len, a->id)) goto oom;
    }
    qsort(t->added, t->n_added, sizeof *t->added, cmp_added);
    /* Merges: "a b" strings or [a, b] pairs, rank = position. */
    const cJSON *merges = cJSON_GetObjectItem(model, "merges");
    t->merges_cap = 1;
    size_t n_merges = (size_t)cJSON_GetArraySize(merges); /* O(n): once */
    while (t->merges_cap < n_merges * 2 + 16) t->merges_cap <<= 1;
    t->merges = cm_malloc_array(t->merges_cap, sizeof *t->merges);
    if (!t->merges) goto oom;
    for (size_t i = 0; i < t->merges_cap; i++) t->merges[i].rank = -1;
    int32_t rank = 0;
    cJSON_ArrayForEach(e, merges) {
        const char *a, *b;
        size_t la, lb;
        char tmp[1024];
        if (cJSON_IsString(e)) {
            const char *sp = strchr(e->valuestring, ' ');
            if (!sp) continue;
            a = e->valuestring;
            la = (size_t)(sp - a);
            b = sp + 1;
            lb = strlen(b);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2) {
            a = cJSON_GetArrayItem(e, 0)->valuestring;
            b = cJSON_GetArrayItem(e, 1)->valuestring;
            if (!a || !b) continue;
            la = strlen(a);
            lb = strlen(b);
        } else {
            continue;
        }
        if (la + lb >= sizeof tmp) continue;
        int32_t ia = tok_vocab_find(t, a, la), ib = tok_vocab_find(t, b, lb);
        memcpy(tmp, a, la);
        memcpy(tmp + la, b, lb);
        int32_t im = tok_vocab_find(t, tmp, la + lb);
        if (ia >= 0 && ib >= 0 && im >= 0) merge_put(t, ia, ib, rank, im);
        rank++;
    }
    t->unk = -1;
    const cJSON *unk = cJSON_GetObjectItem(model, "unk_token");
    if (cJSON_IsString(unk)) t->unk = tok_token_id(t, unk->valuestring);
    for (int b = 0; b < 256; b++) {
        char piece[8];
        snprintf(piece, sizeof piece, "<0x%02X>", b);
        t->byte_ids[b] = t->byte_fallback ? tok_token_id(t, piece) : -1;
    }
    /* Decoder: SentencePiece decoders drop the first token's leading space
     * (Strip(' ', 1, 0) after Fuse, or Metaspace with a prepend scheme). */
    const cJSON *dec = cJSON_GetObjectItem(j, "decoder");
    if (t->sp) t->sp_strip_lead = has_type(dec, "Strip") || strips_lead(dec);
    if (cJSON_IsObject(cJSON_GetObjectItem(j, "normalizer"))) {
        const cJSON *nt = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "normalizer"), "type");
        const char *n = cJSON_IsString(nt) ? nt->valuestring : "";
        const cJSON *list =
            cJSON_GetObjectItem(cJSON_GetObjectItem(j, "normalizer"), "normalizers");
        /* NFC, SentencePiece's Prepend("▁") and Replace(" ", "▁"), or a
         * Sequence of those (empty = none). */
        bool ok = true;
        const cJSON *one = cJSON_GetObjectItem(j, "normalizer");
        cJSON *single = NULL;
        if (strcmp(n, "Sequence")) {
            single = cJSON_CreateArray();
            if (!single) goto oom;
            cJSON_AddItemReferenceToArray(single, (cJSON *)one);
            list = single;
        }
        cJSON_ArrayForEach(e, list) {
            const cJSON *et = cJSON_GetObjectItem(e, "type");
            const char *en = cJSON_IsString(et) ? et->valuestring : "?";
            if (!strcmp(en, "NFC")) {
                t->nfc = true;
            } else if (!strcmp(en, "Prepend") && str_is(e, "prepend", TOK_SP_SPACE)) {
                t->sp_norm_prepend = true;
            } else if (!strcmp(en, "Replace") && str_is(e, "content", TOK_SP_SPACE) &&
                       str_is(cJSON_GetObjectItem(e, "pattern"), "String", " ")) {
                t->sp_norm_replace = true;
            } else {
                n = en;
                ok = false;
            }
        }
        cJSON_Delete(single);
        if (!ok) {
            snprintf(err, errlen, "%s: unsupported normalizer '%s'", path, n);
            st = CM_ERR_UNSUPPORTED;
            goto done;
        }
    }
    if ((st = read_pretok(t, cJSON_GetObjectItem(j, "pre_tokenizer"), err, errlen))) goto done;
    /* Post-processor: TemplateProcessing "single" around sequence A. */
    const cJSON *pp = cJSON_GetObjectItem(j, "post_processor");
    const cJSON *procs = cJSON_GetObjectItem(pp, "processors");
    const cJSON *tp = NULL;
    if (procs) {
        cJSON_ArrayForEach(e, procs) {
            const cJSON *ty = cJSON_GetObjectItem(e, "type");
            if (cJSON_IsString(ty) && !strcmp(ty->valuestring, "TemplateProcessing")) tp = e;
        }
    } else if (pp && cJSON_IsString(cJSON_GetObjectItem(pp, "type")) &&
               !strcmp(cJSON_GetObjectItem(pp, "type")->valuestring, "TemplateProcessing")) {
        tp = pp;
    }
    if (tp) {
        bool after = false;
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(tp, "single")) {
            const cJSON *sp = cJSON_GetObjectItem(e, "SpecialToken");
            const cJSON *sid = cJSON_GetObjectItem(sp, "id");
            if (cJSON_GetObjectItem(e, "Sequence")) {
                after = true;
            } else if (cJSON_IsString(sid)) {
                int32_t id = tok_token_id(t, sid->valuestring);
                if (id < 0) continue;
                if (!after && t->n_prefix < 4) t->prefix[t->n_prefix++] = id;
                if (after && t->n_suffix < 4) t->suffix[t->n_suffix++] = id;
            }
        }
    }
    /* tokenizer_config.json: bos/eos and the chat template family. */
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    char *ctext = NULL;
    cm_status_t cst = cm_read_file(path, 64u << 20, &ctext, NULL, err, errlen);
    if (cst != CM_OK && cst != CM_ERR_NOT_FOUND) { /* optional, but not unreadable */
        st = cst;
        goto done;
    }
    if (ctext) {
        cJSON *cfg = cJSON_Parse(ctext);
        cm_free(ctext);
        t->bos = special_id(t, cJSON_GetObjectItem(cfg, "bos_token"));
        t->eos = special_id(t, cJSON_GetObjectItem(cfg, "eos_token"));
        const cJSON *ct = cJSON_GetObjectItem(cfg, "chat_template");
        t->chat = detect_chat(cJSON_IsString(ct) ? ct->valuestring : NULL);
        const cJSON *bs = cJSON_GetObjectItem(cfg, "bos_token");
        if (cJSON_IsObject(bs)) bs = cJSON_GetObjectItem(bs, "content");
        if (cJSON_IsString(bs)) t->bos_str = cm_strdup(bs->valuestring);
        const cJSON *es = cJSON_GetObjectItem(cfg, "eos_token");
        if (cJSON_IsObject(es)) es = cJSON_GetObjectItem(es, "content");
        if (cJSON_IsString(es)) t->eos_str = cm_strdup(es->valuestring);
        cJSON_Delete(cfg);
    }
    goto done;
oom:
    st = CM_ERR_NO_MEMORY;
    snprintf(err, errlen, "out of memory loading %s", dir);
done:
    cJSON_Delete(j);
    if (st != CM_OK) {
        tok_free(t);
        return st;
    }
    *out = t;
    return CM_OK;
}

uint32_t tok_vocab_size(const tok_t *t) { return t->n_ids; }
int32_t tok_bos(const tok_t *t) { return t->bos; }
int32_t tok_eos(const tok_t *t) { return t->eos; }

int32_t tok_token_id(const tok_t *t, const char *token) {
    return tok_vocab_find(t, token, strlen(token));
}

tok_chat_t tok_chat_kind(const tok_t *t) { return t->chat; }

/* Exposed for tok_encode.c. */
size_t tok_utf8_put(uint32_t cp, char *o) { return utf8_put(cp, o); }
