/*
 * fuzz_tok_load.c - libFuzzer target for the tokenizer loader. Build with
 * `make fuzz`, run e.g.
 *   build/fuzz/fuzz_tok_load -max_total_time=60 -max_len=65536 CORPUS
 * (seeds: small tokenizer.json files, optionally followed by a NUL and a
 * tokenizer_config.json).
 *
 * The input up to its first NUL is written as tokenizer.json, the rest (if
 * any) as tokenizer_config.json, and the directory is loaded. A refusal
 * must come with a message; a tokenizer that loads must encode, decode,
 * stream and render a chat without error, its ids inside the vocabulary.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_files.h"
#include "tok.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void exercise(const tok_t *t, const char *text, size_t len) {
    int32_t *ids;
    size_t n;
    if (tok_encode(t, text, len, true, &ids, &n) != CM_OK) abort();
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (uint32_t)ids[i] >= tok_vocab_size(t)) abort();
    char *d;
    size_t dl;
    if (tok_decode(t, ids, n, false, &d, &dl) != CM_OK) abort();
    cm_free(d);
    tok_stream_t *s = tok_stream_new(t, true);
    if (!s) abort();
    char piece[64];
    for (size_t i = 0; i < n; i++) tok_stream_push(s, ids[i], piece, sizeof piece);
    while (tok_stream_flush(s, piece, sizeof piece)) {
    }
    tok_stream_free(s);
    cm_free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *z = memchr(data, 0, size);
    size_t n1 = z ? (size_t)(z - data) : size;
    fuzz_put("tokenizer.json", data, n1);
    if (z)
        fuzz_put("tokenizer_config.json", z + 1, size - n1 - 1);
    else
        fuzz_drop("tokenizer_config.json");
    tok_t *t;
    char err[512] = "";
    if (tok_load(fuzz_dir(), &t, err, sizeof err) != CM_OK) {
        if (!err[0]) abort(); /* a refusal says why */
        return 0;
    }
    static const char *const texts[] = {
        "Hello, world! It's 12345 tokens.",
        "  spaces\n\n\ttabs ",
        "中文 😀 é",
        "<|im_start|>x<s>",
        "\xff\xfe bad \xe4\xb8",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        exercise(t, texts[i], strlen(texts[i]));
    tok_msg_t msgs[] = {{"system", "s"}, {"user", "u"}, {"assistant", "a"}, {"user", "v"}};
    char *out;
    size_t ol;
    for (size_t k = 1; k <= 4; k++)
        if (tok_chat_apply(t, msgs + (k == 4 ? 1 : 0), k == 4 ? 3 : k, true, &out, &ol) == CM_OK) {
            exercise(t, out, ol);
            cm_free(out);
        }
    tok_free(t);
    return 0;
}
