/*
 * cm_hash.c - XXH64 (reference algorithm by Yann Collet, re-implemented from
 * the public specification), CRC-32C with a hardware path, and the chained
 * KV block hash.
 */
#include <string.h>

#include "cm_base.h"

#define P1 0x9E3779B185EBCA87ull
#define P2 0xC2B2AE3D27D4EB4Full
#define P3 0x165667B19E3779F9ull
#define P4 0x85EBCA77C2B2AE63ull
#define P5 0x27D4EB2F165667C5ull

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t rd64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline uint32_t rd32(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}

static inline uint64_t xxh_round(uint64_t acc, uint64_t input) {
    acc += input * P2;
    acc = rotl64(acc, 31);
    return acc * P1;
}

static inline uint64_t xxh_merge(uint64_t acc, uint64_t val) {
    acc ^= xxh_round(0, val);
    return acc * P1 + P4;
}

uint64_t cm_hash64(const void *data, size_t len, uint64_t seed) {
    const unsigned char *p = data;
    const unsigned char *end = p + len;
    uint64_t h;

    if (len >= 32) {
        uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
        const unsigned char *limit = end - 32;
        do {
            v1 = xxh_round(v1, rd64(p));
            v2 = xxh_round(v2, rd64(p + 8));
            v3 = xxh_round(v3, rd64(p + 16));
            v4 = xxh_round(v4, rd64(p + 24));
            p += 32;
        } while (p <= limit);
        h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
        h = xxh_merge(h, v1);
        h = xxh_merge(h, v2);
        h = xxh_merge(h, v3);
        h = xxh_merge(h, v4);
    } else {
        h = seed + P5;
    }
    h += (uint64_t)len;
    while (p + 8 <= end) {
        h ^= xxh_round(0, rd64(p));
        h = rotl64(h, 27) * P1 + P4;
        p += 8;
    }
    if (p + 4 <= end) {
        h ^= (uint64_t)rd32(p) * P1;
        h = rotl64(h, 23) * P2 + P3;
        p += 4;
    }
    while (p < end) {
        h ^= (uint64_t)(*p) * P5;
        h = rotl64(h, 11) * P1;
        p++;
    }
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

/* ------------------------------------------------------------------------ */

static uint32_t g_crc_table[8][256];
static int g_crc_ready; /* 0 = not yet, 1 = tables built */

static void crc32c_init_tables(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        g_crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        for (int t = 1; t < 8; t++)
            g_crc_table[t][i] =
                (g_crc_table[t - 1][i] >> 8) ^ g_crc_table[0][g_crc_table[t - 1][i] & 0xff];
    }
    __atomic_store_n(&g_crc_ready, 1, __ATOMIC_RELEASE);
}

/* Slice-by-8 software CRC-32C on the pre-inverted running value. */
static uint32_t crc32c_sw(uint32_t c, const unsigned char *p, size_t n) {
    if (!__atomic_load_n(&g_crc_ready, __ATOMIC_ACQUIRE)) crc32c_init_tables();
    while (n >= 8) {
        uint32_t lo = rd32(p) ^ c, hi = rd32(p + 4);
        c = g_crc_table[7][lo & 0xff] ^ g_crc_table[6][(lo >> 8) & 0xff] ^
            g_crc_table[5][(lo >> 16) & 0xff] ^ g_crc_table[4][lo >> 24] ^
            g_crc_table[3][hi & 0xff] ^ g_crc_table[2][(hi >> 8) & 0xff] ^
            g_crc_table[1][(hi >> 16) & 0xff] ^ g_crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) c = (c >> 8) ^ g_crc_table[0][(c ^ *p++) & 0xff];
    return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t c, const unsigned char *p,
                                                            size_t n) {
    uint64_t c64 = c;
    while (n >= 8) {
        c64 = __builtin_ia32_crc32di(c64, rd64(p));
        p += 8;
        n -= 8;
    }
    c = (uint32_t)c64;
    while (n--) c = __builtin_ia32_crc32qi(c, *p++);
    return c;
}
#endif

uint32_t cm_crc32c(uint32_t crc, const void *data, size_t len) {
    uint32_t c = ~crc;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2")) return ~crc32c_hw(c, data, len);
#endif
    return ~crc32c_sw(c, data, len);
}

/* Exposed for tests: the portable path regardless of the CPU. */
uint32_t cm_crc32c_portable(uint32_t crc, const void *data, size_t len);
uint32_t cm_crc32c_portable(uint32_t crc, const void *data, size_t len) {
    return ~crc32c_sw(~crc, data, len);
}

/* ------------------------------------------------------------------------ */

uint64_t cm_block_hash(uint64_t parent, uint64_t fingerprint, const int32_t *tokens,
                       size_t n_tokens) {
    /* Small blocks (block_size <= 64) hash from a stack buffer in one call. */
    unsigned char buf[16 + 64 * 4];
    unsigned char *p = buf;
    unsigned char *heap = NULL;
    size_t len = 16 + n_tokens * 4;
    if (n_tokens > 64) {
        heap = cm_malloc_array(n_tokens + 4, 4);
        if (!heap) return 0;
        p = heap;
    }
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(parent >> (8 * i));
    for (int i = 0; i < 8; i++) p[8 + i] = (unsigned char)(fingerprint >> (8 * i));
    for (size_t t = 0; t < n_tokens; t++) {
        uint32_t v = (uint32_t)tokens[t];
        for (int i = 0; i < 4; i++) p[16 + 4 * t + (size_t)i] = (unsigned char)(v >> (8 * i));
    }
    uint64_t h = cm_hash64(p, len, 0);
    cm_free(heap);
    return h;
}
