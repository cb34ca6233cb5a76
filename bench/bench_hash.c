/*
 * bench_hash.c - `tandem bench hash`: throughput of the hashes on the KV
 * path (XXH64 for block identity, CRC-32C for transfer checksums) against a
 * memcpy of the same buffer measured in the same run.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "bench.h"
#include "cm_base.h"
#include "cm_cli.h"

static uint64_t g_size;
static uint64_t g_min_ms;

static const cm_flag_t k_flags[] = {
    {.name = "size",
     .type = CM_FLAG_SIZE,
     .dst = &g_size,
     .def = "1M",
     .help = "buffer size per call"},
    {.name = "min-time",
     .type = CM_FLAG_DURATION,
     .dst = &g_min_ms,
     .def = "300ms",
     .help = "minimum time per measurement"},
    {0},
};

/* Runs @fn repeatedly for at least g_min_ms; returns GB/s. */
static double measure(int which, unsigned char *src, unsigned char *dst, size_t n, uint64_t *sink) {
    uint64_t t0 = cm_time_mono_ns(), iters = 0, t;
    do {
        for (int k = 0; k < 8; k++) {
            if (which == 0)
                memcpy(dst, src, n);
            else if (which == 1)
                *sink += cm_hash64(src, n, iters);
            else
                *sink += cm_crc32c((uint32_t)iters, src, n);
            __asm__ volatile("" : : "r"(dst) : "memory");
            iters++;
        }
        t = cm_time_mono_ns() - t0;
    } while (t < g_min_ms * 1000000ull);
    return (double)n * (double)iters / (double)t;
}

int bench_hash_main(int argc, char **argv) {
    static const cm_flag_t *const tables[] = {k_flags, NULL};
    const cm_cmd_spec_t spec = {.prog = "tandem bench hash",
                                .summary = "Throughput of XXH64 and CRC-32C vs memcpy.",
                                .tables = tables};
    int code, npos;
    if (!cm_cli_parse(&spec, argc, argv, NULL, &npos, &code)) return code;
    if (g_size == 0 || g_size > (1ull << 32)) {
        fprintf(stderr, "tandem bench hash: --size must be between 1 and 4G\n");
        return CM_EXIT_USAGE;
    }
    size_t n = (size_t)g_size;
    unsigned char *src = cm_aligned_alloc(64, n), *dst = cm_aligned_alloc(64, n);
    if (!src || !dst) {
        fprintf(stderr, "tandem bench hash: out of memory\n");
        cm_aligned_free(src);
        cm_aligned_free(dst);
        return CM_EXIT_FAILURE;
    }
    for (size_t i = 0; i < n; i++) src[i] = (unsigned char)(i * 131u + 7u);
    memset(dst, 0, n);
    uint64_t sink = 0;
    double copy = measure(0, src, dst, n, &sink);
    double xxh = measure(1, src, dst, n, &sink);
    double crc = measure(2, src, dst, n, &sink);
    printf("{\"size\":%zu,\"memcpy_gbps\":%.2f,\"xxh64_gbps\":%.2f,\"crc32c_gbps\":%.2f,"
           "\"xxh64_vs_memcpy\":%.3f,\"crc32c_vs_memcpy\":%.3f,\"sink\":%" PRIu64 "}\n",
           n, copy, xxh, crc, xxh / copy, crc / copy, sink & 1);
    cm_aligned_free(src);
    cm_aligned_free(dst);
    return CM_EXIT_OK;
}
