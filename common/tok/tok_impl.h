/* tok_impl.h - internals shared by the tokenizer's files. */
#ifndef TANDEM_TOK_IMPL_H
#define TANDEM_TOK_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tok.h"

typedef struct {
    char *key; /* NUL-terminated; NULL = empty slot */
    size_t len;
    int32_t id;
} tok_slot_t;

typedef struct {
    uint64_t pair; /* (left << 32) | right; 0 with rank < 0 = empty */
    int32_t rank, merged;
} tok_merge_t;

typedef struct {
    char *content;
    size_t len;
    int32_t id;
    bool special;
} tok_added_t;

struct tok {
    /* Vocabulary: byte-level strings <-> ids. */
    tok_slot_t *vocab;
    size_t vocab_cap;
    char **id_bytes; /* decoded bytes per id (NULL = unused id) */
    uint32_t *id_len;
    bool *id_special;
    uint32_t n_ids;
    /* Merges by (left, right) id pair. */
    tok_merge_t *merges;
    size_t merges_cap;
    bool ignore_merges;
    /* Added tokens, longest first; first-byte index for matching. */
    tok_added_t *added;
    size_t n_added;
    /* Pre-tokenizer: Split regexes applied in order, then ByteLevel. */
    pcre2_code **splits;
    size_t n_splits;
    /* Post-processor (add_special): ids before and after the text. */
    int32_t prefix[4], suffix[4];
    uint32_t n_prefix, n_suffix;
    int32_t bos, eos;
    tok_chat_t chat;
    char *bos_str, *eos_str;
    /* Normalizer: NFC before pre-tokenization (added tokens excluded). */
    bool nfc;
    /* SentencePiece-style BPE (Llama 2, Mistral, Mixtral): pieces are
     * UTF-8 with U+2581 for a space, symbols start as characters, a
     * character outside the vocabulary becomes its <0xXX> byte tokens (or
     * <unk>). Spaces become U+2581 either by the normalizer (Prepend +
     * Replace: every text segment gets a leading one) or by the Metaspace
     * pre-tokenizer (prepend always / first segment only / never; split at
     * each U+2581 or not). Decoding drops one leading space. */
    bool sp;
    bool sp_norm_prepend, sp_norm_replace;
    bool sp_meta, sp_meta_split;
    int sp_meta_prepend; /* 0 never, 1 first, 2 always */
    bool sp_strip_lead;
    bool byte_fallback, fuse_unk;
    int32_t unk;
    int32_t byte_ids[256];
    /* Byte <-> unicode map of ByteLevel. */
    uint32_t byte_to_cp[256];
    int16_t cp_to_byte[512];
};

size_t tok_utf8_put(uint32_t cp, char *o);

/* Vocabulary lookup of a UTF-8 string; -1 if absent. */
#define TOK_SP_SPACE "\xe2\x96\x81" /* U+2581, SentencePiece's space */
int32_t tok_vocab_find(const tok_t *t, const char *s, size_t len);

#endif /* TANDEM_TOK_IMPL_H */
