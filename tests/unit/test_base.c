/* test_base.c - the base library: status, hashing, UTF-8, arena, time, log. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "cm_base.h"
#include "tt.h"

uint32_t cm_crc32c_portable(uint32_t crc, const void *data, size_t len);

TT_TEST(status, names_and_text_are_distinct) {
    static const cm_status_t all[] = {
#define X_(name, value, text) CM_##name,
        CM_STATUS_LIST(X_)
#undef X_
    };
    size_t n = sizeof all / sizeof all[0];
    for (size_t i = 0; i < n; i++) {
        TT_ASSERT(strcmp(cm_strerror(all[i]), "unknown error") != 0);
        for (size_t j = i + 1; j < n; j++) {
            TT_ASSERT_MSG(all[i] != all[j], "duplicate value %d", all[i]);
            TT_ASSERT(strcmp(cm_status_name(all[i]), cm_status_name(all[j])) != 0);
            TT_ASSERT(strcmp(cm_strerror(all[i]), cm_strerror(all[j])) != 0);
        }
    }
    TT_ASSERT_STR_EQ(cm_status_name(CM_ERR_TIMEOUT), "ERR_TIMEOUT");
    TT_ASSERT_STR_EQ(cm_strerror(CM_ERR_TIMEOUT), "deadline exceeded");
    TT_ASSERT_STR_EQ(cm_strerror((cm_status_t)-9999), "unknown error");
    TT_ASSERT_STR_EQ(cm_status_name((cm_status_t)-9999), "UNKNOWN");
    TT_ASSERT_EQ_INT(cm_status_from_errno(ETIMEDOUT), CM_ERR_TIMEOUT);
    TT_ASSERT_EQ_INT(cm_status_from_errno(ECONNRESET), CM_ERR_PEER_DEAD);
    TT_ASSERT_EQ_INT(cm_status_from_errno(0), CM_OK);
}

/* Golden values from the reference implementation (python-xxhash 3.x,
 * xxhash.xxh64(bytes((i*7+3) & 255 for i in range(n)), seed=s)). */
static const struct {
    size_t n;
    uint64_t seed, want;
} k_xxh64[] = {
    {0, 0x0ull, 0xef46db3751d8e999ull},    {0, 0x9e3779b97f4a7c15ull, 0xc4349fc93c010000ull},
    {1, 0x0ull, 0x1f25c8d0bc1f4bb6ull},    {1, 0x9e3779b97f4a7c15ull, 0x79826bcd749d267aull},
    {3, 0x0ull, 0x31d2363f52e564c9ull},    {3, 0x9e3779b97f4a7c15ull, 0x78efd77575e26575ull},
    {4, 0x0ull, 0x9bb64b7d66ee9fdaull},    {4, 0x9e3779b97f4a7c15ull, 0x6f0a6c97d68bf353ull},
    {7, 0x0ull, 0x9a7b149959ce60d8ull},    {7, 0x9e3779b97f4a7c15ull, 0xd97ede93c9d66a0dull},
    {8, 0x0ull, 0xdab99d95c6f90092ull},    {8, 0x9e3779b97f4a7c15ull, 0xa2f1e28437a78a1bull},
    {9, 0x0ull, 0x170bb6bf975b4c02ull},    {9, 0x9e3779b97f4a7c15ull, 0x9c9a3cd83532d84full},
    {31, 0x0ull, 0xa2aa5f33cc4a6119ull},   {31, 0x9e3779b97f4a7c15ull, 0x755437271d1d0a84ull},
    {32, 0x0ull, 0x23c3c17ef790fd97ull},   {32, 0x9e3779b97f4a7c15ull, 0xbf624b932c090428ull},
    {33, 0x0ull, 0x50a7cfc7ba588784ull},   {33, 0x9e3779b97f4a7c15ull, 0x7aceaf1e9d34ea35ull},
    {64, 0x0ull, 0x0eb64b3ef6eeb01full},   {64, 0x9e3779b97f4a7c15ull, 0x4af341f14e3a6fc9ull},
    {100, 0x0ull, 0xa61f8d4c170fe531ull},  {100, 0x9e3779b97f4a7c15ull, 0xf6d8f65c625abb4full},
    {1000, 0x0ull, 0x5f235fa033f1a3fbull}, {1000, 0x9e3779b97f4a7c15ull, 0x442acd0a822e86f6ull},
};

TT_TEST(hash, xxh64_matches_reference) {
    unsigned char buf[1000];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (unsigned char)((i * 7 + 3) & 255);
    for (size_t i = 0; i < sizeof k_xxh64 / sizeof k_xxh64[0]; i++)
        TT_ASSERT_EQ_U64(cm_hash64(buf, k_xxh64[i].n, k_xxh64[i].seed), k_xxh64[i].want);
}

TT_TEST(hash, crc32c_rfc3720_vectors) {
    /* RFC 3720 appendix B.4 and the common "123456789" check value. */
    unsigned char zeros[32] = {0}, ones[32], inc[32], dec[32];
    for (int i = 0; i < 32; i++) {
        ones[i] = 0xff;
        inc[i] = (unsigned char)i;
        dec[i] = (unsigned char)(31 - i);
    }
    uint32_t (*fns[2])(uint32_t, const void *, size_t) = {cm_crc32c, cm_crc32c_portable};
    for (int f = 0; f < 2; f++) {
        TT_ASSERT_EQ_U64(fns[f](0, "123456789", 9), 0xE3069283u);
        TT_ASSERT_EQ_U64(fns[f](0, zeros, 32), 0x8A9136AAu);
        TT_ASSERT_EQ_U64(fns[f](0, ones, 32), 0x62A8AB43u);
        TT_ASSERT_EQ_U64(fns[f](0, inc, 32), 0x46DD794Eu);
        TT_ASSERT_EQ_U64(fns[f](0, dec, 32), 0x113FDB5Cu);
        /* Running value: crc(a||b) == crc(crc(a), b). */
        TT_ASSERT_EQ_U64(fns[f](fns[f](0, "12345", 5), "6789", 4), 0xE3069283u);
    }
    /* Hardware and portable paths agree on every length/offset. */
    unsigned char big[4099];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (unsigned char)(i * 2654435761u >> 13);
    for (size_t off = 0; off < 9; off++)
        for (size_t n = 0; n + off <= sizeof big; n += 37)
            TT_ASSERT_EQ_U64(cm_crc32c(7, big + off, n), cm_crc32c_portable(7, big + off, n));
}

TT_TEST(hash, block_hash_is_chained) {
    int32_t a[16], b[16];
    for (int i = 0; i < 16; i++) a[i] = b[i] = i * 1000 + 7;
    uint64_t h1 = cm_block_hash(0, 42, a, 16);
    TT_ASSERT(h1 == cm_block_hash(0, 42, b, 16));
    TT_ASSERT(h1 != cm_block_hash(1, 42, a, 16)); /* parent matters */
    TT_ASSERT(h1 != cm_block_hash(0, 43, a, 16)); /* fingerprint matters */
    b[15]++;
    TT_ASSERT(h1 != cm_block_hash(0, 42, b, 16)); /* every token matters */
    /* Definition: XXH64 of LE (parent, fingerprint, tokens as u32), seed 0. */
    unsigned char raw[16 + 16 * 4];
    uint64_t parent = 0x1122334455667788ull, fp = 0x99;
    memcpy(raw, &parent, 8);
    memcpy(raw + 8, &fp, 8);
    memcpy(raw + 16, a, sizeof a);
    TT_ASSERT_EQ_U64(cm_block_hash(parent, fp, a, 16), cm_hash64(raw, sizeof raw, 0));
    /* Large blocks take the heap path and agree with the definition. */
    int32_t *many = calloc(300, sizeof *many);
    unsigned char *raw2 = calloc(16 + 300 * 4, 1);
    for (int i = 0; i < 300; i++) many[i] = i;
    memcpy(raw2, &parent, 8);
    memcpy(raw2 + 8, &fp, 8);
    memcpy(raw2 + 16, many, 300 * 4);
    TT_ASSERT_EQ_U64(cm_block_hash(parent, fp, many, 300), cm_hash64(raw2, 16 + 300 * 4, 0));
    free(many);
    free(raw2);
}

TT_TEST(utf8, accepts_valid_rejects_invalid) {
    TT_ASSERT(cm_utf8_valid("", 0));
    TT_ASSERT(cm_utf8_valid("hello", 5));
    TT_ASSERT(cm_utf8_valid("h\xc3\xa9llo \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80", 18));
    TT_ASSERT(cm_utf8_valid("\xf4\x8f\xbf\xbf", 4));  /* U+10FFFF */
    TT_ASSERT(!cm_utf8_valid("\xf4\x90\x80\x80", 4)); /* U+110000 */
    TT_ASSERT(!cm_utf8_valid("\xc0\xaf", 2));         /* overlong '/' */
    TT_ASSERT(!cm_utf8_valid("\xe0\x80\xaf", 3));     /* overlong */
    TT_ASSERT(!cm_utf8_valid("\xed\xa0\x80", 3));     /* surrogate D800 */
    TT_ASSERT(!cm_utf8_valid("\xe4\xb8", 2));         /* truncated */
    TT_ASSERT(!cm_utf8_valid("\x80", 1));             /* lone continuation */
    TT_ASSERT(!cm_utf8_valid("a\xffz", 3));
}

/* A character cut short at the end is dropped, nothing else: every prefix
 * of a string of 1- to 4-byte characters trims to a valid one, the last
 * whole character kept. */
TT_TEST(utf8, trim_drops_a_cut_character_only) {
    static const char s[] = "a\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80z";
    static const size_t bounds[] = {0, 1, 3, 6, 10, 11}; /* character starts */
    for (size_t len = 0; len <= sizeof s - 1; len++) {
        size_t want = 0;
        for (size_t b = 0; b < 6; b++)
            if (bounds[b] <= len) want = bounds[b];
        TT_ASSERT_EQ_U64(cm_utf8_trim(s, len), want);
        TT_ASSERT(cm_utf8_valid(s, cm_utf8_trim(s, len)));
    }
    TT_ASSERT_EQ_U64(cm_utf8_trim("\x80\x80", 2), 2); /* not UTF-8 at all: untouched */
}

/* cJSON's own printing is the reference for strings it can hold (no NUL). */
static void expect_quote_as_cjson(const char *s) {
    size_t n = strlen(s);
    cJSON *v = cJSON_CreateString(s);
    char *want = cJSON_PrintUnformatted(v);
    char *got = cm_json_quote(s, n);
    TT_ASSERT_STR_EQ(got, want);
    TT_ASSERT_EQ_U64(cm_json_escape(NULL, 0, s, n), strlen(want) - 2);
    cm_free(got);
    cJSON_free(want);
    cJSON_Delete(v);
}

TT_TEST(utf8, json_quote_escapes_as_cjson_and_keeps_nul) {
    expect_quote_as_cjson("");
    expect_quote_as_cjson("plain \"q\" back\\slash /");
    expect_quote_as_cjson("\b\t\n\v\f\r\x01\x1f\x7f h\xc3\xa9 \xf0\x9f\x98\x80");
    uint64_t rng = 7;
    for (int round = 0; round < 500; round++) {
        char s[64];
        size_t n = tt_rng_next(&rng) % sizeof s;
        for (size_t i = 0; i < n; i++) s[i] = (char)(1 + tt_rng_next(&rng) % 127);
        s[n] = '\0';
        expect_quote_as_cjson(s);
    }
    /* U+0000 is escaped, and what follows it kept. */
    char *q = cm_json_quote("a\0b\0", 4);
    TT_ASSERT_STR_EQ(q, "\"a\\u0000b\\u0000\"");
    cm_free(q);
    /* A small buffer takes whole escapes only, always NUL-terminated. */
    char buf[8];
    TT_ASSERT_EQ_U64(cm_json_escape(buf, sizeof buf, "ab\n\0", 4), 4);
    TT_ASSERT_STR_EQ(buf, "ab\\n");
    TT_ASSERT_EQ_U64(cm_json_escape(buf, 3, "abc", 3), 2);
    TT_ASSERT_STR_EQ(buf, "ab");
}

TT_TEST(alloc, overflow_is_refused) {
    TT_ASSERT(cm_malloc_array(SIZE_MAX / 2, 3) == NULL);
    TT_ASSERT(cm_calloc(SIZE_MAX / 8, 16) == NULL);
    void *p = cm_malloc_array(10, 10);
    TT_ASSERT(p != NULL);
    TT_ASSERT(cm_realloc_array(p, SIZE_MAX / 4, 8) == NULL); /* p untouched */
    cm_free(p);
    void *a = cm_aligned_alloc(4096, 100);
    TT_ASSERT(a && ((uintptr_t)a & 4095) == 0);
    cm_aligned_free(a);
    TT_ASSERT(cm_aligned_alloc(3, 100) == NULL);
    char *s = cm_strndup("abcdef", 3);
    TT_ASSERT_STR_EQ(s, "abc");
    cm_free(s);
}

TT_TEST(alloc, arena_enforces_cap) {
    cm_arena_t *a = cm_arena_new(10000);
    TT_ASSERT(a);
    size_t got = 0;
    void *prev = NULL;
    for (;;) {
        unsigned char *p = cm_arena_alloc(a, 100);
        if (!p) break;
        TT_ASSERT(((uintptr_t)p & 15) == 0);
        TT_ASSERT(p != prev);
        memset(p, 0xab, 100); /* ASan checks the bytes are really ours */
        prev = p;
        got += 112;
    }
    TT_ASSERT(got <= 10000 && got > 10000 - 112);
    TT_ASSERT_EQ_INT(cm_arena_used(a), got);
    TT_ASSERT(cm_arena_alloc(a, 1) == NULL || cm_arena_used(a) <= 10000);
    cm_arena_reset(a);
    TT_ASSERT_EQ_INT(cm_arena_used(a), 0);
    TT_ASSERT(cm_arena_alloc(a, 9000) != NULL);
    TT_ASSERT(cm_arena_alloc(a, 2000) == NULL);
    TT_ASSERT(cm_arena_alloc(a, SIZE_MAX - 3) == NULL); /* no wrap-around */
    cm_arena_free(a);
}

/* cm_huge_map: 2 MiB aligned, zero-filled, writable to the last byte;
 * cm_hpool hands out aligned, disjoint ranges from chunks, a request
 * larger than a chunk included, and refuses bad alignments and sizes. */
TT_TEST(alloc, huge_map_and_hpool) {
    size_t n = (3u << 20) + 5;
    unsigned char *m = cm_huge_map(n);
    TT_ASSERT(m);
    TT_ASSERT_EQ_INT((uintptr_t)m % (2u << 20), 0);
    TT_ASSERT(m[0] == 0 && m[n - 1] == 0);
    memset(m, 0xab, n);
    TT_ASSERT(m[n - 1] == 0xab);
    cm_huge_unmap(m, n);
    TT_ASSERT(cm_huge_map(SIZE_MAX - 100) == NULL);

    cm_hpool_t *h = cm_hpool_new(1u << 20);
    TT_ASSERT(h);
    enum { N = 40 };
    static const size_t k_align[] = {1, 8, 64, 4096};
    unsigned char *p[N];
    size_t sz[N], want = 0;
    for (int i = 0; i < N; i++) {
        /* Mostly small, every 13th larger than a chunk. */
        sz[i] = i % 13 == 12 ? (3u << 20) + (size_t)i : (size_t)(i * 7919) % 200000 + 1;
        size_t al = k_align[i % 4];
        p[i] = cm_hpool_alloc(h, al, sz[i]);
        TT_ASSERT_MSG(p[i], "allocation %d of %zu bytes", i, sz[i]);
        TT_ASSERT_EQ_INT((uintptr_t)p[i] % al, 0);
        TT_ASSERT(p[i][0] == 0 && p[i][sz[i] - 1] == 0);
        memset(p[i], i + 1, sz[i]);
        want += sz[i];
    }
    TT_ASSERT_EQ_INT(cm_hpool_used(h), want);
    /* Disjoint: every range still holds its own byte. */
    for (int i = 0; i < N; i++)
        TT_ASSERT_MSG(p[i][0] == i + 1 && p[i][sz[i] / 2] == i + 1 && p[i][sz[i] - 1] == i + 1,
                      "allocation %d overwritten", i);
    TT_ASSERT(cm_hpool_alloc(h, 3, 10) == NULL);
    TT_ASSERT(cm_hpool_alloc(h, 8192, 10) == NULL);
    TT_ASSERT(cm_hpool_alloc(h, 64, SIZE_MAX - 100) == NULL);
    TT_ASSERT_EQ_INT(cm_hpool_used(h), want);
    cm_hpool_free(h);
    cm_hpool_free(NULL);
}

TT_TEST(time, monotonic_and_deadlines) {
    uint64_t t0 = cm_time_mono_ns();
    cm_deadline_t d = cm_deadline_in_ms(30);
    TT_ASSERT(!cm_deadline_expired(d));
    TT_ASSERT(cm_deadline_left_ms(d) <= 30 && cm_deadline_left_ms(d) > 0);
    cm_time_sleep_ns(40 * 1000000ull);
    TT_ASSERT(cm_deadline_expired(d));
    TT_ASSERT_EQ_INT(cm_deadline_left_ms(d), 0);
    TT_ASSERT(cm_time_mono_ns() - t0 >= 40 * 1000000ull);
    TT_ASSERT(cm_time_wall_ns() > 1600000000ull * 1000000000ull);
}

/* Reads a whole small file into a static buffer. */
static const char *slurp(const char *path) {
    static char buf[8192];
    FILE *f = fopen(path, "r");
    if (!f) return "";
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

TT_TEST(log, levels_and_json_lines) {
    char path[512];
    snprintf(path, sizeof path, "%s/log.txt", tt_tmpdir());
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    TT_ASSERT(fd >= 0);
    cm_log_level_t lvl;
    cm_log_format_t fmt;
    TT_ASSERT_EQ_INT(cm_log_level_parse("warn", &lvl), CM_OK);
    TT_ASSERT_EQ_INT(cm_log_level_parse("loud", &lvl), CM_ERR_INVALID_ARG);
    TT_ASSERT_EQ_INT(cm_log_format_parse("json", &fmt), CM_OK);
    cm_log_configure(CM_LOG_WARN, CM_LOG_FORMAT_JSON, fd);
    cm_log_info("test", "hidden %d", 1);
    cm_log_warn("test", "quote \" backslash \\ newline \n tab \t ctl \x01 end");
    cm_log_error("kvx", "second %s", "line");
    cm_log_configure(CM_LOG_INFO, CM_LOG_FORMAT_TEXT, fd);
    cm_log_debug("test", "hidden too");
    cm_log_info("router", "text line %d", 3);
    close(fd);
    cm_log_configure(CM_LOG_INFO, CM_LOG_FORMAT_TEXT, 2);
    const char *s = slurp(path);
    TT_ASSERT(!strstr(s, "hidden"));
    TT_ASSERT(strstr(s, "\"level\":\"warn\",\"subsys\":\"test\""));
    TT_ASSERT(
        strstr(s, "\"msg\":\"quote \\\" backslash \\\\ newline \\n tab \\t ctl \\u0001 end\"}"));
    TT_ASSERT(strstr(s, "\"level\":\"error\",\"subsys\":\"kvx\""));
    TT_ASSERT(strstr(s, "info  [router] text line 3 (test_base.c:"));
    /* Exactly three lines, the JSON ones each a complete object. */
    int lines = 0;
    for (const char *p = s; *p; p++) lines += *p == '\n';
    TT_ASSERT_EQ_INT(lines, 3);
}
