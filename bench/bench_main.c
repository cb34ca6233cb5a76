/*
 * bench_main.c - `tandem bench <name> [flags]`: dispatches to one benchmark.
 * Each benchmark lives beside its subject and is listed in k_benches.
 */
#include <stdio.h>
#include <string.h>

#include "bench.h"
#include "cm_cli.h"

typedef struct {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv); /* argv[0] is the first flag */
} bench_entry_t;

static const bench_entry_t k_benches[] = {
    {"hash", "hashing and checksum throughput (XXH64, CRC-32C)", bench_hash_main},
    {"kvxfer", "KV block transfers over UCX vs ucx_perftest", bench_kvxfer_main},
    {"engine", "prefill/decode tokens/s vs memory bandwidth and matmul peak", bench_engine_main},
    {"serve", "load an OpenAI-compatible endpoint: TTFT, TPOT, latency, throughput",
     bench_serve_main},
    {"compare", "side-by-side report of two `bench serve` results", bench_compare_main},
    {"accuracy", "Pass@1 on seeded checkable tasks, via an endpoint or in-process",
     bench_accuracy_main},
};
enum { N_BENCHES = sizeof k_benches / sizeof k_benches[0] };

static void bench_usage(FILE *out) {
    fprintf(out, "usage: tandem bench <benchmark> [flags]\n\nbenchmarks:\n");
    for (int i = 0; i < N_BENCHES; i++)
        fprintf(out, "  %-10s %s\n", k_benches[i].name, k_benches[i].summary);
    fprintf(out, "\nSee `tandem bench <benchmark> --help` for each one's flags.\n");
}

int bench_main(int argc, char **argv) {
    if (argc < 1) {
        bench_usage(stderr);
        return CM_EXIT_USAGE;
    }
    if (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) {
        bench_usage(stdout);
        return CM_EXIT_OK;
    }
    for (int i = 0; i < N_BENCHES; i++)
        if (!strcmp(argv[0], k_benches[i].name)) return k_benches[i].run(argc - 1, argv + 1);
    fprintf(stderr, "tandem bench: unknown benchmark '%s' (see tandem bench --help)\n", argv[0]);
    return CM_EXIT_USAGE;
}
