/* kvx_copy.c - streaming-store copies for mapped peers (kvx_copy.h). */
#include "kvx_copy.h"

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("avx512f"))) static void stream_avx512(char *d, const char *s, size_t n) {
    for (size_t i = 0; i < n; i += 128) {
        __m512i a = _mm512_loadu_si512(s + i), b = _mm512_loadu_si512(s + i + 64);
        _mm512_stream_si512((void *)(d + i), a);
        _mm512_stream_si512((void *)(d + i + 64), b);
    }
}

__attribute__((target("avx"))) static void stream_avx(char *d, const char *s, size_t n) {
    for (size_t i = 0; i < n; i += 128) {
        __m256i a = _mm256_loadu_si256((const void *)(s + i));
        __m256i b = _mm256_loadu_si256((const void *)(s + i + 32));
        __m256i c = _mm256_loadu_si256((const void *)(s + i + 64));
        __m256i e = _mm256_loadu_si256((const void *)(s + i + 96));
        _mm256_stream_si256((void *)(d + i), a);
        _mm256_stream_si256((void *)(d + i + 32), b);
        _mm256_stream_si256((void *)(d + i + 64), c);
        _mm256_stream_si256((void *)(d + i + 96), e);
    }
}

static void stream_sse2(char *d, const char *s, size_t n) {
    for (size_t i = 0; i < n; i += 64) {
        __m128i a = _mm_loadu_si128((const void *)(s + i));
        __m128i b = _mm_loadu_si128((const void *)(s + i + 16));
        __m128i c = _mm_loadu_si128((const void *)(s + i + 32));
        __m128i e = _mm_loadu_si128((const void *)(s + i + 48));
        _mm_stream_si128((void *)(d + i), a);
        _mm_stream_si128((void *)(d + i + 16), b);
        _mm_stream_si128((void *)(d + i + 32), c);
        _mm_stream_si128((void *)(d + i + 48), e);
    }
}

static bool has_level(int level) {
    if (level == 2) return __builtin_cpu_supports("avx512f");
    if (level == 1) return __builtin_cpu_supports("avx");
    return level == 0;
}

bool kvx_copy_stream_level(int level, void *dst, const void *src, size_t n) {
    if (!has_level(level)) return false;
    char *d = dst;
    const char *s = src;
    size_t head = (64 - ((uintptr_t)d & 63)) & 63;
    if (n < head + 128) {
        memcpy(d, s, n);
        return true;
    }
    memcpy(d, s, head);
    d += head, s += head, n -= head;
    size_t body = n & ~(size_t)127;
    if (level == 2)
        stream_avx512(d, s, body);
    else if (level == 1)
        stream_avx(d, s, body);
    else
        stream_sse2(d, s, body);
    memcpy(d + body, s + body, n - body);
    return true;
}

void kvx_copy_stream(void *dst, const void *src, size_t n) {
    kvx_copy_stream_level(has_level(2) ? 2 : has_level(1) ? 1 : 0, dst, src, n);
}

void kvx_copy_fence(void) { _mm_sfence(); }

#else

bool kvx_copy_stream_level(int level, void *dst, const void *src, size_t n) {
    if (level != 0) return false;
    memcpy(dst, src, n);
    return true;
}
void kvx_copy_stream(void *dst, const void *src, size_t n) { memcpy(dst, src, n); }
void kvx_copy_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

#endif
