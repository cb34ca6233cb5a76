/*
 * test_tok.c - the tokenizer against Hugging Face `tokenizers` and
 * transformers' apply_chat_template on the real Qwen3, Llama 3.1 and
 * DeepSeek V3 tokenizers (goldens: tests/fixtures/gen_tok_goldens.py), on
 * SentencePiece-style fixtures and on Mistral's own v1 and v3 tokenizers.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tok.h"
#include "tt.h"

/* Goldens files: the real tokenizers in ../shared/tokenizers, then the
 * fixtures in tests/fixtures/tok/: SentencePiece-style ones trained here
 * ("sp_*", tests/fixtures/gen_sp_tokenizers.py) and Mistral's own models
 * converted by transformers ("mistral_*", gen_mistral_tokenizers.py). */
static const char *const k_gold_files[] = {"goldens.json", "sp_goldens.json",
                                           "mistral_goldens.json"};
static cJSON *g_golds[3];

static int fixture_kind(const char *name) {
    return !strncmp(name, "sp_", 3) ? 1 : !strncmp(name, "mistral_", 8) ? 2 : 0;
}

/* tests/fixtures/tok/@file, parsed. */
static cJSON *read_json(const char *file) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/fixtures/tok/%s", tt_root(), file);
    char *b = tt_read_file(path, NULL);
    cJSON *j = cJSON_Parse(b);
    free(b);
    TT_ASSERT(j);
    return j;
}

static const cJSON *goldens(const char *name) {
    cJSON **g = &g_golds[fixture_kind(name)];
    if (!*g) *g = read_json(k_gold_files[fixture_kind(name)]);
    return cJSON_GetObjectItem(*g, name);
}

static tok_t *open_tok(const char *name) {
    char dir[1024], err[512];
    if (fixture_kind(name))
        snprintf(dir, sizeof dir, "%s/tests/fixtures/tok/%s", tt_root(), name);
    else
        snprintf(dir, sizeof dir, "%s/../shared/tokenizers/%s", tt_root(), name);
    char probe[1100];
    snprintf(probe, sizeof probe, "%s/tokenizer.json", dir);
    FILE *f = fopen(probe, "rb");
    if (!f) TT_SKIP("../shared/tokenizers not present beside the checkout");
    fclose(f);
    tok_t *t;
    cm_status_t st = tok_load(dir, &t, err, sizeof err);
    TT_ASSERT_MSG(st == CM_OK, "tok_load %s: %s", name, err);
    return t;
}

static bool ids_equal(const int32_t *a, size_t n, const cJSON *b) {
    if ((int)n != cJSON_GetArraySize(b)) return false;
    for (size_t i = 0; i < n; i++)
        if (a[i] != cJSON_GetArrayItem(b, (int)i)->valueint) return false;
    return true;
}

static void check_tokenizer(const char *name) {
    tok_t *t = open_tok(name);
    const cJSON *g = goldens(name), *e;
    int n_checked = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(g, "strings")) {
        const char *text = cJSON_GetObjectItem(e, "text")->valuestring;
        int32_t *ids;
        size_t n;
        TT_ASSERT_EQ_INT(tok_encode(t, text, strlen(text), false, &ids, &n), CM_OK);
        if (!ids_equal(ids, n, cJSON_GetObjectItem(e, "ids"))) {
            char *got = cJSON_PrintUnformatted(cJSON_GetObjectItem(e, "ids"));
            fprintf(stderr, "%s: '%.80s': %zu ids, want %s\n  got:", name, text, n, got);
            for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", ids[i]);
            fprintf(stderr, "\n");
            free(got);
            TT_FAILF("%s: ids differ from HF tokenizers", name);
        }
        int32_t *ids2;
        size_t n2;
        TT_ASSERT_EQ_INT(tok_encode(t, text, strlen(text), true, &ids2, &n2), CM_OK);
        TT_ASSERT_MSG(ids_equal(ids2, n2, cJSON_GetObjectItem(e, "ids_special")),
                      "%s: '%.60s': ids with special tokens differ", name, text);
        char *dec;
        size_t dl;
        TT_ASSERT_EQ_INT(tok_decode(t, ids, n, false, &dec, &dl), CM_OK);
        TT_ASSERT_MSG(strcmp(dec, cJSON_GetObjectItem(e, "decoded")->valuestring) == 0,
                      "%s: decode of '%.60s' differs", name, text);
        /* Streaming: one id at a time, every piece valid UTF-8, same text. */
        tok_stream_t *s = tok_stream_new(t, false);
        char *acc = malloc(dl + 64), piece[512];
        size_t al = 0;
        for (size_t i = 0; i < n; i++) {
            size_t pl = tok_stream_push(s, ids[i], piece, sizeof piece);
            TT_ASSERT_MSG(cm_utf8_valid(piece, pl), "%s: broken UTF-8 piece", name);
            memcpy(acc + al, piece, pl);
            al += pl;
        }
        al += tok_stream_flush(s, acc + al, 64);
        tok_stream_free(s);
        TT_ASSERT_MSG(al == dl && memcmp(acc, dec, dl) == 0, "%s: stream decode of '%.60s' differs",
                      name, text);
        free(acc);
        cm_free(dec);
        const cJSON *skip = cJSON_GetObjectItem(e, "decoded_skip");
        if (skip) { /* without special tokens, whole and streamed */
            TT_ASSERT_EQ_INT(tok_decode(t, ids, n, true, &dec, &dl), CM_OK);
            TT_ASSERT_MSG(strcmp(dec, skip->valuestring) == 0,
                          "%s: decode (skip special) of '%.60s': '%s', want '%s'", name, text, dec,
                          skip->valuestring);
            s = tok_stream_new(t, true);
            acc = malloc(dl + 64);
            al = 0;
            for (size_t i = 0; i < n; i++) {
                size_t pl = tok_stream_push(s, ids[i], piece, sizeof piece);
                memcpy(acc + al, piece, pl);
                al += pl;
            }
            al += tok_stream_flush(s, acc + al, 64);
            tok_stream_free(s);
            TT_ASSERT_MSG(al == dl && memcmp(acc, dec, dl) == 0,
                          "%s: stream decode (skip special) of '%.60s' differs", name, text);
            free(acc);
            cm_free(dec);
        }
        cm_free(ids);
        cm_free(ids2);
        n_checked++;
    }
    TT_ASSERT(n_checked >= 200);
    tok_free(t);
}

TT_TEST(tok, qwen3_matches_hf_tokenizers) { check_tokenizer("qwen3"); }
TT_TEST(tok, llama3_matches_hf_tokenizers) { check_tokenizer("llama3_1"); }
TT_TEST(tok, deepseek_v3_matches_hf_tokenizers) { check_tokenizer("deepseek_v3"); }
/* SentencePiece-style BPE with byte fallback, in the three tokenizer.json
 * layouts of Llama 2 / Mistral / Mixtral conversions. */
TT_TEST(tok, sentencepiece_legacy_matches_hf_tokenizers) { check_tokenizer("sp_legacy"); }
TT_TEST(tok, sentencepiece_metaspace_matches_hf_tokenizers) { check_tokenizer("sp_metaspace"); }
TT_TEST(tok, sentencepiece_metaspace_split_matches_hf_tokenizers) { check_tokenizer("sp_split"); }
/* Mistral 7B v0.1 / Mixtral 8x7B (the same tokenizer.model) and the v3
 * tokenizer with 771 control tokens (Mistral 7B v0.3, Mixtral 8x22B). */
TT_TEST(tok, mistral_v1_matches_hf_tokenizers) { check_tokenizer("mistral_v1"); }
TT_TEST(tok, mistral_v3_matches_hf_tokenizers) { check_tokenizer("mistral_v3"); }

static void check_chat(const char *name, tok_chat_t want) {
    tok_t *t = open_tok(name);
    TT_ASSERT_EQ_INT(tok_chat_kind(t), want);
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(goldens(name), "chat")) {
        const cJSON *ms = cJSON_GetObjectItem(e, "messages"), *m;
        tok_msg_t msgs[8];
        size_t n = 0;
        cJSON_ArrayForEach(m, ms) {
            msgs[n].role = cJSON_GetObjectItem(m, "role")->valuestring;
            msgs[n].content = cJSON_GetObjectItem(m, "content")->valuestring;
            n++;
        }
        char *out;
        size_t len;
        TT_ASSERT_EQ_INT(
            tok_chat_apply(t, msgs, n,
                           cJSON_IsTrue(cJSON_GetObjectItem(e, "add_generation_prompt")), &out,
                           &len),
            CM_OK);
        const char *wanted = cJSON_GetObjectItem(e, "text")->valuestring;
        TT_ASSERT_MSG(strcmp(out, wanted) == 0, "%s chat:\n--- got ---\n%s\n--- want ---\n%s", name,
                      out, wanted);
        cm_free(out);
    }
    tok_msg_t bad = {"robot", "x"};
    char *out;
    size_t len;
    TT_ASSERT_EQ_INT(tok_chat_apply(t, &bad, 1, true, &out, &len), CM_ERR_INVALID_ARG);
    tok_free(t);
}

TT_TEST(tok, chatml_qwen3_matches_transformers) { check_chat("qwen3", TOK_CHAT_CHATML); }
TT_TEST(tok, llama3_chat_matches_transformers) { check_chat("llama3_1", TOK_CHAT_LLAMA3); }
TT_TEST(tok, deepseek_chat_matches_transformers) { check_chat("deepseek_v3", TOK_CHAT_DEEPSEEK); }
TT_TEST(tok, mistral_chat_matches_transformers) {
    check_chat("sp_legacy", TOK_CHAT_MISTRAL);
    check_chat("mistral_v1", TOK_CHAT_MISTRAL);
    /* The template raises for a system turn and for roles out of order. */
    tok_t *t = open_tok("sp_legacy");
    char *out;
    size_t len;
    tok_msg_t sys[] = {{"system", "Be brief."}, {"user", "Hi"}};
    TT_ASSERT_EQ_INT(tok_chat_apply(t, sys, 2, true, &out, &len), CM_ERR_INVALID_ARG);
    tok_msg_t twice[] = {{"user", "a"}, {"user", "b"}};
    TT_ASSERT_EQ_INT(tok_chat_apply(t, twice, 2, true, &out, &len), CM_ERR_INVALID_ARG);
    tok_free(t);
}

/* NFC against HF tokenizers' NFC normalizer: the NFD of every precomposed
 * character, Hangul, and random runs of combining marks. */
TT_TEST(tok, nfc_matches_hf_tokenizers) {
    const cJSON *cases = goldens("nfc");
    TT_ASSERT(cJSON_GetArraySize(cases) > 100);
    const cJSON *c;
    size_t n = 0, changed = 0;
    cJSON_ArrayForEach(c, cases) {
        const char *in = cJSON_GetObjectItem(c, "in")->valuestring;
        const char *want = cJSON_GetObjectItem(c, "out")->valuestring;
        char *got;
        size_t gl;
        TT_ASSERT_EQ_INT(tok_nfc(in, strlen(in), &got, &gl), CM_OK);
        const char *g = got ? got : in;
        size_t glen = got ? gl : strlen(in);
        TT_ASSERT_MSG(glen == strlen(want) && !memcmp(g, want, glen),
                      "case %zu: NFC of '%s' is '%.*s', HF says '%s'", n, in, (int)glen, g, want);
        changed += strcmp(in, want) != 0;
        cm_free(got);
        n++;
    }
    TT_ASSERT(changed > 100); /* the cases do exercise composition */
}

/* Ids whose bytes are not well-formed UTF-8 (lone continuation bytes,
 * overlong forms, surrogates, sequences cut short...) against HF
 * tokenizers' decode (tests/fixtures/gen_tok_lossy_goldens.py): decode
 * gives the raw bytes; the streaming decoder gives HF's text, one U+FFFD
 * per maximal subpart, whatever its output capacity (text that does not
 * fit waits for the next call). */
static void check_lossy(const char *name) {
    static cJSON *all;
    if (!all) all = read_json("lossy_goldens.json");
    tok_t *t = open_tok(name);
    const cJSON *e;
    size_t n_cases = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(all, name)) {
        const cJSON *jids = cJSON_GetObjectItem(e, "ids");
        const char *hex = cJSON_GetObjectItem(e, "bytes")->valuestring;
        const char *want = cJSON_GetObjectItem(e, "decoded")->valuestring;
        size_t n = (size_t)cJSON_GetArraySize(jids), wl = strlen(want);
        int32_t ids[64];
        TT_ASSERT(n <= 64);
        for (size_t i = 0; i < n; i++) ids[i] = cJSON_GetArrayItem(jids, (int)i)->valueint;
        char *raw;
        size_t rl;
        TT_ASSERT_EQ_INT(tok_decode(t, ids, n, false, &raw, &rl), CM_OK);
        TT_ASSERT(rl * 2 == strlen(hex));
        for (size_t i = 0; i < rl; i++) {
            unsigned v;
            TT_ASSERT(sscanf(hex + 2 * i, "%2x", &v) == 1 && (unsigned char)raw[i] == v);
        }
        cm_free(raw);
        static const size_t caps[] = {4, 5, 7, 512};
        for (size_t c = 0; c < 4; c++) {
            tok_stream_t *s = tok_stream_new(t, false);
            char got[1024], piece[512];
            size_t gl = 0, pl;
            for (size_t i = 0; i < n; i++) {
                pl = tok_stream_push(s, ids[i], piece, caps[c]);
                TT_ASSERT(pl <= caps[c] && gl + pl <= sizeof got);
                TT_ASSERT_MSG(cm_utf8_valid(piece, pl), "%s: broken UTF-8 piece", name);
                memcpy(got + gl, piece, pl);
                gl += pl;
            }
            while ((pl = tok_stream_flush(s, piece, caps[c])) > 0) {
                TT_ASSERT(pl <= caps[c] && gl + pl <= sizeof got);
                memcpy(got + gl, piece, pl);
                gl += pl;
            }
            tok_stream_free(s);
            TT_ASSERT_MSG(gl == wl && !memcmp(got, want, wl),
                          "%s: bytes %s, capacity %zu: streamed '%.*s', HF decodes '%s'", name, hex,
                          caps[c], (int)gl, got, want);
        }
        n_cases++;
    }
    TT_ASSERT(n_cases >= 80);
    tok_free(t);
}

TT_TEST(tok, qwen3_stream_decode_of_ill_formed_utf8_matches_hf) { check_lossy("qwen3"); }
TT_TEST(tok, llama3_stream_decode_of_ill_formed_utf8_matches_hf) { check_lossy("llama3_1"); }
TT_TEST(tok, deepseek_v3_stream_decode_of_ill_formed_utf8_matches_hf) {
    check_lossy("deepseek_v3");
}

/* Malformed tokenizer.json files: refused with a message, or loaded and
 * usable; never a crash. The first two cases crashed before (found by
 * tests/fuzz/fuzz_tok_load.c): a post-processor SpecialToken without a
 * string id, and a pre-tokenizer regex that is not UTF-8. */
static cm_status_t load_json_text(const char *text, size_t len, tok_t **t, char *err,
                                  size_t errlen) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer.json", tt_tmpdir());
    FILE *f = fopen(path, "wb");
    TT_ASSERT(f && fwrite(text, 1, len, f) == len);
    fclose(f);
    err[0] = '\0';
    return tok_load(tt_tmpdir(), t, err, errlen);
}

static const char k_tiny_fmt[] =
    "{\"added_tokens\":[{\"id\":3,\"content\":\"<s>\",\"special\":true}],\"normalizer\":null,"
    "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":"
    "{\"Regex\":\"%s\"},\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\","
    "\"add_prefix_space\":false,\"use_regex\":false}]},\"post_processor\":{\"type\":"
    "\"TemplateProcessing\",\"single\":[%s,{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}]},"
    "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,"
    "\"ab\":2,\" \":4},\"merges\":[\"a b\"]}}";

static void expect_tiny_ids(const char *regex, const char *special, const int32_t *want,
                            size_t n_want) {
    char text[2048], err[512];
    snprintf(text, sizeof text, k_tiny_fmt, regex, special);
    tok_t *t;
    TT_ASSERT_MSG(load_json_text(text, strlen(text), &t, err, sizeof err) == CM_OK, "%s", err);
    int32_t *ids;
    size_t n;
    TT_ASSERT_EQ_INT(tok_encode(t, "ab", 2, true, &ids, &n), CM_OK);
    TT_ASSERT_MSG(n == n_want && !memcmp(ids, want, n * sizeof *ids), "%s: %zu ids", special, n);
    cm_free(ids);
    tok_free(t);
}

TT_TEST(tok, malformed_tokenizer_json_is_refused_or_loaded) {
    const int32_t with_bos[] = {3, 2}, plain[] = {2};
    expect_tiny_ids("\\\\s+|[ab]+", "{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}}", with_bos,
                    2);
    expect_tiny_ids("\\\\s+|[ab]+", "{\"SpecialToken\":{}}", plain, 1);
    expect_tiny_ids("\\\\s+|[ab]+", "{\"SpecialToken\":{\"id\":7}}", plain, 1);
    expect_tiny_ids("\\\\s+|[ab]+", "{\"SpecialToken\":\"<s>\"}", plain, 1);
    char text[2048], err[512];
    tok_t *t;
    snprintf(text, sizeof text, k_tiny_fmt, "\\\\s+|\xfb\x01[ab]+", "{\"Sequence\":{}}");
    TT_ASSERT_EQ_INT(load_json_text(text, strlen(text), &t, err, sizeof err), CM_ERR_BAD_FORMAT);
    TT_ASSERT_MSG(strstr(err, "regex"), "message: %s", err);
    /* Every truncation of a valid file. */
    snprintf(text, sizeof text, k_tiny_fmt, "\\\\s+|[ab]+",
             "{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}}");
    size_t full = strlen(text), loaded = 0;
    for (size_t len = 0; len < full; len++) {
        cm_status_t st = load_json_text(text, len, &t, err, sizeof err);
        if (st != CM_OK) {
            TT_ASSERT_MSG(err[0], "truncated at %zu: status %d without a message", len, (int)st);
            continue;
        }
        int32_t *ids;
        size_t n;
        TT_ASSERT_EQ_INT(tok_encode(t, "ab ab", 5, true, &ids, &n), CM_OK);
        for (size_t i = 0; i < n; i++)
            TT_ASSERT(ids[i] >= 0 && (uint32_t)ids[i] < tok_vocab_size(t));
        cm_free(ids);
        tok_free(t);
        loaded++;
    }
    TT_ASSERT(loaded == 0); /* no prefix of the file is a whole JSON document */
    /* FIFOs named like the files: refused, not waited on (the open hung). */
    char path[1100];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", tt_tmpdir());
    TT_ASSERT(mkfifo(path, 0600) == 0);
    snprintf(text, sizeof text, k_tiny_fmt, "\\\\s+|[ab]+", "{\"Sequence\":{}}");
    TT_ASSERT_EQ_INT(load_json_text(text, strlen(text), &t, err, sizeof err), CM_ERR_BAD_FORMAT);
    TT_ASSERT_MSG(strstr(err, "tokenizer_config.json: not a regular file"), "%s", err);
    TT_ASSERT(unlink(path) == 0);
    snprintf(path, sizeof path, "%s/tokenizer.json", tt_tmpdir());
    TT_ASSERT(unlink(path) == 0 && mkfifo(path, 0600) == 0);
    err[0] = '\0';
    TT_ASSERT_EQ_INT(tok_load(tt_tmpdir(), &t, err, sizeof err), CM_ERR_BAD_FORMAT);
    TT_ASSERT_MSG(strstr(err, "tokenizer.json: not a regular file"), "%s", err);
}
