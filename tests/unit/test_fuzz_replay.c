/*
 * test_fuzz_replay.c - the libFuzzer targets' properties in the unit suite
 * (and so in CI, also under ASan + UBSan): each target's
 * LLVMFuzzerTestOneInput runs on the inputs that found bugs and on seeded
 * random inputs. A violated property aborts, which fails the test.
 */
#include "tt.h"

/* tests/fuzz/fuzz_tok.c with the tokenizers found from the checkout. */
#define FUZZ_TOK_ROOT          tt_root()
#define LLVMFuzzerTestOneInput fuzz_tok_one
#include "../fuzz/fuzz_tok.c"
#undef LLVMFuzzerTestOneInput

/* Text made of pieces tokenizers treat specially: added tokens, runs of
 * spaces and newlines, digits, CJK, emoji, combining marks (NFC), Hangul
 * jamo, ill-formed bytes and cut-off sequences. */
static size_t random_text(uint64_t *s, uint8_t *out, size_t cap) {
    static const char *const pieces[] = {
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<s>",
        "</s>",
        "[INST]",
        "[/INST]",
        "<|begin_of_text|>",
        " ",
        "   ",
        "\n",
        "\n\n\t ",
        "\r\n",
        "a",
        "Hello",
        " world",
        "It's",
        "'ll",
        "12345",
        "3.14",
        "中文",
        "日本語",
        "😀",
        "👩‍💻",
        "e\xcc\x81",
        "\xcc\x81",
        "A\xcc\x8a",
        "\xe1\x84\x80\xe1\x85\xa1",
        "▁",
        "\xff",
        "\xe4\xb8",
        "\xed\xa0\x80",
        "\xc0\x80",
        "\x80\x80",
        "\x00",
        "def f(x):\n    return x",
        "{\"k\": [1, 2]}",
    };
    size_t n = 0, k = 1 + tt_rng_next(s) % 24;
    for (size_t i = 0; i < k; i++) {
        const char *p = pieces[tt_rng_next(s) % (sizeof pieces / sizeof pieces[0])];
        size_t l = p[0] ? strlen(p) : 1;
        if (n + l > cap) break;
        memcpy(out + n, p, l);
        n += l;
    }
    return n;
}

TT_TEST_T(fuzz_replay, tok_inputs_that_found_bugs_and_random_text, 120) {
    char probe[1100];
    snprintf(probe, sizeof probe, "%s/../shared/tokenizers/qwen3/tokenizer.json", tt_root());
    FILE *f = fopen(probe, "rb");
    if (!f) TT_SKIP("../shared/tokenizers not present beside the checkout");
    fclose(f);
    /* A ChatML rendering of one empty message streamed 4 bytes at a time
     * (before the fix: text past the first piece was lost). */
    static const uint8_t chat_empty[] = {0x00, 0x02};
    fuzz_tok_one(chat_empty, sizeof chat_empty);
    uint8_t buf[600];
    uint64_t seed = 20261203;
    for (int i = 0; i < 6000; i++) {
        buf[0] = (uint8_t)tt_rng_next(&seed);
        buf[1] = (uint8_t)tt_rng_next(&seed);
        size_t n = 2;
        if (buf[1] % 3 == 1) /* ids mode: random bytes */
            for (size_t k = tt_rng_next(&seed) % 120; k > 0; k--)
                buf[n++] = (uint8_t)tt_rng_next(&seed);
        else
            n += random_text(&seed, buf + 2, sizeof buf - 2);
        fuzz_tok_one(buf, n);
    }
    TT_ASSERT(g_n == N_DIRS); /* every tokenizer was there */
    for (size_t i = 0; i < g_n; i++) tok_free(g_tok[i]);
    g_n = 0;
}

/* tests/fuzz/fuzz_sampler.c */
#define LLVMFuzzerTestOneInput fuzz_sampler_one
#include "../fuzz/fuzz_sampler.c"
#undef LLVMFuzzerTestOneInput

TT_TEST_T(fuzz_replay, sampler_inputs_that_found_bugs_and_random_bytes, 120) {
    /* Temperature 0.086 on logits {-inf x4, -3e38} (before the fix: NaN
     * exponentials, CM_OK with token -1), and vocabulary 1 with 7 top
     * logprobs asked for. */
    static const uint8_t overflow[] = {0x01, 0x0b, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x03,
                                       0x00, 0x00, 0x00, 0x00, 0x04, 0xff, 0xff, 0xff, 0xff, 0xfb};
    static const uint8_t tiny_vocab[] = {0x00, 0x00, 0x00, 0x60, 0xdb, 0xf6,
                                         0x0b, 0xff, 0x00, 0xff, 0x00};
    fuzz_sampler_one(overflow, sizeof overflow);
    fuzz_sampler_one(tiny_vocab, sizeof tiny_vocab);
    uint8_t buf[400];
    uint64_t seed = 4242;
    for (int i = 0; i < 20000; i++) {
        size_t n = tt_rng_next(&seed) % sizeof buf;
        for (size_t k = 0; k < n; k++) {
            uint64_t r = tt_rng_next(&seed);
            /* Logit bytes near the special values half the time. */
            buf[k] = (uint8_t)(r & 0x100 ? 251 + (r >> 9) % 5 : r);
        }
        fuzz_sampler_one(buf, n);
    }
}

/* tests/fuzz/fuzz_oai.c */
#define LLVMFuzzerTestOneInput fuzz_oai_one
#include "../fuzz/fuzz_oai.c"
#undef LLVMFuzzerTestOneInput

/* A request body: a valid base for the endpoint (@chat), then random
 * known fields, each with a value that is valid for it half the time and a
 * JSON value of any type, in range or not, otherwise; a NUL; generated
 * text. */
static size_t random_request(uint64_t *s, bool chat, uint8_t *out, size_t cap) {
    static const struct {
        const char *key, *good;
    } fields[] = {
        {"max_tokens", "5"},
        {"temperature", "0.7"},
        {"temperature", "0"},
        {"top_p", "0.5"},
        {"top_k", "5"},
        {"min_p", "0.1"},
        {"n", "1"},
        {"stream", "true"},
        {"stop", "\"\\n\""},
        {"stop", "[\"a\",\"\\u4e2d\"]"},
        {"stop_token_ids", "[1,2]"},
        {"seed", "42"},
        {"logprobs", "3"},
        {"logprobs", "true"},
        {"top_logprobs", "2"},
        {"ignore_eos", "true"},
        {"stream_options", "{\"include_usage\":true}"},
        {"presence_penalty", "0.5"},
        {"frequency_penalty", "-0.5"},
        {"repetition_penalty", "1.1"},
        {"user", "\"u\""},
        {"return_tokens_as_token_ids", "true"},
        {"max_completion_tokens", "7"},
        {"model", "\"\\u4e2d\\u6587\""},
        {"best_of", "2"},
        {"echo", "true"},
    };
    static const char *const odd[] = {
        "\"\"",  "0",  "-1",         "2.5",          "21",
        "1e309", "-0", "4294967296", "false",        "null",
        "[]",    "{}", "[[1,2]]",    "\"\\u0000x\"", "[{\"role\":\"robot\",\"content\":\"x\"}]",
    };
    size_t n = (size_t)snprintf(
        (char *)out, cap, "{\"model\":\"m\",%s",
        chat                 ? "\"messages\":[{\"role\":\"system\",\"content\":[{\"type\":\"text\","
                               "\"text\":\"a\"}]},{\"role\":\"user\",\"content\":\"b\"}]"
        : tt_rng_next(s) & 1 ? "\"prompt\":\"Hello \\u4e16\\u754c\""
                             : "\"prompt\":[[1,2,3]]");
    for (size_t k = tt_rng_next(s) % 6; k > 0 && n + 200 < cap; k--) {
        size_t f = tt_rng_next(s) % (sizeof fields / sizeof fields[0]);
        const char *v = tt_rng_next(s) & 1 ? fields[f].good
                                           : odd[tt_rng_next(s) % (sizeof odd / sizeof odd[0])];
        n += (size_t)snprintf((char *)out + n, cap - n, ",\"%s\":%s", fields[f].key, v);
    }
    n += (size_t)snprintf((char *)out + n, cap - n, "}");
    out[n++] = '\0';
    n += random_text(s, out + n, cap - n);
    return n;
}

TT_TEST_T(fuzz_replay, oai_inputs_that_found_bugs_and_random_requests, 120) {
    /* A role with bytes that are not UTF-8, echoed into the error body. */
    static const char bad_role[] = "\x03{\"model\":\"m\",\"messages\":[{\"role\":\"us\xfe\xd7"
                                   "er\",\"content\":\"q\"}],\"n\":0}";
    fuzz_oai_one((const uint8_t *)bad_role, sizeof bad_role - 1);
    uint8_t buf[2048];
    uint64_t seed = 77;
    for (int i = 0; i < 20000; i++) {
        buf[0] = (uint8_t)tt_rng_next(&seed);
        size_t n = 1 + random_request(&seed, buf[0] & 1, buf + 1, sizeof buf - 1);
        fuzz_oai_one(buf, n);
    }
}
