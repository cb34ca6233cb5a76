/*
 * tok.h - tokenizers from Hugging Face tokenizer.json: byte-level BPE
 * (GPT-2 / Llama 3 / Qwen / DeepSeek style: added tokens first, the Split
 * pre-tokenizer regexes compiled with PCRE2 in UTF+UCP mode, the ByteLevel
 * byte<->unicode map, merges by rank with ignore_merges), the
 * TemplateProcessing post-processor (BOS), decoding, a streaming decoder
 * that never emits a broken UTF-8 sequence, and chat templates (ChatML,
 * Llama 3, DeepSeek) selected from tokenizer_config.json.
 *
 * Threading: a loaded tok_t is read-only and may be shared by threads for
 * encode/decode; a tok_stream_t belongs to one thread.
 */
#ifndef TANDEM_TOK_H
#define TANDEM_TOK_H

#include "cm_base.h"

typedef struct tok tok_t;

/* Loads @dir/tokenizer.json (and tokenizer_config.json when present). */
cm_status_t tok_load(const char *dir, tok_t **out, char *err, size_t errlen);
void tok_free(tok_t *t);

/* Highest token id + 1. */
uint32_t tok_vocab_size(const tok_t *t);
/* BOS id or -1; the EOS id from tokenizer_config.json or -1. */
int32_t tok_bos(const tok_t *t);
int32_t tok_eos(const tok_t *t);
/* Id of @token (exact vocabulary or added-token string), or -1. */
int32_t tok_token_id(const tok_t *t, const char *token);

/*
 * Encodes @text (UTF-8; invalid bytes are encoded as their bytes). Added
 * tokens written in the text (e.g. "<|im_start|>") become their ids. With
 * @add_special the post-processor's tokens (e.g. Llama 3's BOS) are added.
 * *@ids is cm_malloc'ed. Returns CM_OK or CM_ERR_NO_MEMORY.
 */
cm_status_t tok_encode(const tok_t *t, const char *text, size_t len, bool add_special,
                       int32_t **ids, size_t *n);

/* Decodes @ids to bytes (cm_malloc'ed, NUL-terminated). Special tokens are
 * left out when @skip_special. Ids outside the vocabulary: CM_ERR_OUT_OF_RANGE. */
/* Unicode NFC (UAX #15) of valid UTF-8 text, as the "NFC" normalizer of
 * tokenizer.json applies it. *out = NULL when the text is NFC by
 * construction (ASCII: use the input); otherwise a cm_malloc'd,
 * NUL-terminated string of *out_len bytes. Tables: Unicode
 * tok_nfc_unicode_version(), from scripts/gen_unicode_nfc.py. */
cm_status_t tok_nfc(const char *text, size_t len, char **out, size_t *out_len);
const char *tok_nfc_unicode_version(void);

cm_status_t tok_decode(const tok_t *t, const int32_t *ids, size_t n, bool skip_special, char **text,
                       size_t *len);

/* Streaming decoder: push ids one at a time; only complete UTF-8 comes out
 * (incomplete trailing bytes wait for the next id; flush emits them). Each
 * maximal subpart of an ill-formed sequence becomes one U+FFFD, as in HF
 * tokenizers' decode and Python's bytes.decode("utf-8", "replace"). Ids
 * outside the vocabulary are ignored. */
typedef struct tok_stream tok_stream_t;
tok_stream_t *tok_stream_new(const tok_t *t, bool skip_special);
/* Writes the newly complete text to @out (at most @cap bytes; text that
 * does not fit waits for the next call: with @cap >= 4 each call makes
 * progress) and returns its length. */
size_t tok_stream_push(tok_stream_t *s, int32_t id, char *out, size_t cap);
/* Writes what is left, an incomplete sequence as U+FFFD; call until it
 * returns 0 when @cap may be smaller than the text held back. */
size_t tok_stream_flush(tok_stream_t *s, char *out, size_t cap);
void tok_stream_free(tok_stream_t *s);

/* Chat templates. */
typedef enum {
    TOK_CHAT_NONE = 0,
    TOK_CHAT_CHATML,
    TOK_CHAT_LLAMA3,
    TOK_CHAT_DEEPSEEK,
    TOK_CHAT_MISTRAL /* Mistral / Mixtral-8x7B-Instruct: [INST] ... [/INST] */
} tok_chat_t;

typedef struct {
    const char *role; /* system, user, assistant */
    const char *content;
} tok_msg_t;

/* The template family found in tokenizer_config.json (NONE if unknown). */
tok_chat_t tok_chat_kind(const tok_t *t);
/* Renders @msgs as the model's chat template does (transformers'
 * apply_chat_template with tokenize=False). CM_ERR_UNSUPPORTED without a
 * known template. *@out is cm_malloc'ed. */
cm_status_t tok_chat_apply(const tok_t *t, const tok_msg_t *msgs, size_t n,
                           bool add_generation_prompt, char **out, size_t *len);

/* `tandem tokenize` (tok_cmd.c). Returns the exit code. */
int tok_cmd_tokenize(int argc, char **argv);

#endif /* TANDEM_TOK_H */
