/*
 * test_dw_stop.c - stop strings over streamed text. The reference is the
 * whole-text definition (OpenAI/vLLM): output = text before the first
 * occurrence of any stop string; every way of splitting the text into
 * deltas must give exactly that, with nothing emitted past a stop.
 */
#include "dw_stop.h"
#include "tt.h"

/* Reference: text up to the earliest stop, and whether one matched. */
static size_t reference(const char *text, const char *const *stops, size_t n, bool *hit) {
    size_t first = strlen(text);
    *hit = false;
    for (size_t i = 0; i < n; i++) {
        const char *p = strstr(text, stops[i]);
        if (p && (size_t)(p - text) <= first) {
            if ((size_t)(p - text) < first || !*hit) first = (size_t)(p - text);
            *hit = true;
        }
    }
    return first;
}

/* Streams @text in pieces given by the bits of @cuts; returns the output. */
static void stream(const char *text, const char *const *stops, size_t n, uint64_t cuts, char *got,
                   bool *stopped) {
    dw_stop_t *s = dw_stop_new(stops, n);
    TT_ASSERT(s);
    size_t len = strlen(text), start = 0, g = 0;
    *stopped = false;
    for (size_t i = 1; i <= len; i++) {
        if (i < len && !((cuts >> (i % 64)) & 1)) continue;
        const char *out;
        size_t out_len;
        bool st = dw_stop_feed(s, text + start, i - start, &out, &out_len);
        TT_ASSERT_MSG(!*stopped || out_len == 0, "emitted after the stop");
        memcpy(got + g, out, out_len);
        g += out_len;
        *stopped = *stopped || st;
        start = i;
    }
    if (!*stopped) {
        const char *out;
        size_t out_len;
        dw_stop_flush(s, &out, &out_len);
        memcpy(got + g, out, out_len);
        g += out_len;
    }
    got[g] = '\0';
    dw_stop_free(s);
}

TT_TEST(dw_stop, every_split_matches_whole_text_definition) {
    static const char *const texts[] = {
        "Hello world. The answer is 42.\n\nUser: next",
        "abababababc",
        "no stop here at all",
        "ends with a partial stop Us",
        "\xe4\xb8\xad\xe6\x96\x87 stop\xe2\x80\x94here \xe2\x80\x94 done",
        "aaaab",
        "",
    };
    static const char *const stops_a[] = {"\n\nUser:", "42"};
    static const char *const stops_b[] = {"ababc"};
    static const char *const stops_c[] = {"\xe2\x80\x94 d", "zzz"};
    static const char *const stops_d[] = {"aab", "aaab", "b"};
    struct {
        const char *const *s;
        size_t n;
    } sets[] = {{stops_a, 2}, {stops_b, 1}, {stops_c, 2}, {stops_d, 3}, {NULL, 0}};
    uint64_t rng = 88172645463325252ull;
    for (size_t t = 0; t < sizeof texts / sizeof texts[0]; t++) {
        for (size_t k = 0; k < sizeof sets / sizeof sets[0]; k++) {
            bool want_hit;
            size_t want = reference(texts[t], sets[k].s, sets[k].n, &want_hit);
            for (int trial = 0; trial < 200; trial++) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                uint64_t cuts = trial == 0 ? ~0ull : trial == 1 ? 0 : rng;
                char got[256];
                bool stopped;
                stream(texts[t], sets[k].s, sets[k].n, cuts, got, &stopped);
                TT_ASSERT_MSG(strlen(got) == want && memcmp(got, texts[t], want) == 0,
                              "text %zu set %zu cuts %016llx: got '%s' want %zu bytes", t, k,
                              (unsigned long long)cuts, got, want);
                TT_ASSERT_EQ_INT(stopped, want_hit);
            }
        }
    }
}

TT_TEST(dw_stop, holds_back_only_possible_prefixes) {
    static const char *const stops[] = {"STOP"};
    dw_stop_t *s = dw_stop_new(stops, 1);
    const char *out;
    size_t n;
    TT_ASSERT(!dw_stop_feed(s, "hello S", 7, &out, &n));
    TT_ASSERT_EQ_INT(n, 6); /* "S" could start STOP */
    TT_ASSERT(!dw_stop_feed(s, "T", 1, &out, &n));
    TT_ASSERT_EQ_INT(n, 0);
    TT_ASSERT(!dw_stop_feed(s, "x", 1, &out, &n)); /* "STx" cannot */
    TT_ASSERT_EQ_INT(n, 3);
    TT_ASSERT(memcmp(out, "STx", 3) == 0);
    TT_ASSERT(dw_stop_feed(s, "aSTOPb", 6, &out, &n));
    TT_ASSERT_EQ_INT(n, 1);
    TT_ASSERT(dw_stop_feed(s, "more", 4, &out, &n)); /* stays stopped */
    TT_ASSERT_EQ_INT(n, 0);
    dw_stop_free(s);
    static const char *const empty[] = {""};
    TT_ASSERT(dw_stop_new(empty, 1) == NULL);
}
