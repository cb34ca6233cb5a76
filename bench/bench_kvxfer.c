/*
 * bench_kvxfer.c - `tandem bench kvxfer`: KV transfer bandwidth and
 * per-transfer latency between two processes over UCX, for block sizes and
 * block counts, coalesced (adjacent blocks go as one put) and not (every
 * block its own put), with `ucx_perftest -t ucp_put_bw` run in the same
 * invocation on the same transport for the same put sizes.
 *
 * Both pools use 4 KiB units; a "block" of S bytes is S/4K consecutive
 * units. Coalesced transfers map blocks to consecutive destinations (one
 * put per transfer); uncoalesced ones scatter the destination blocks (one
 * put per block).
 */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "cm_cli.h"
#include "kvx.h"

static const char *g_tls, *g_sizes, *g_counts, *g_receiver, *g_out;
static uint64_t g_min_ms, g_pool, g_rpoll_ms;
static bool g_perftest;

static const cm_flag_t k_flags[] = {
    {.name = "tls",
     .type = CM_FLAG_STRING,
     .dst = &g_tls,
     .def = "shm,self",
     .help = "UCX transports (UCX_TLS) for both sides"},
    {.name = "sizes",
     .type = CM_FLAG_STRING,
     .dst = &g_sizes,
     .def = "16K,64K,256K,1M,4M",
     .help = "block sizes"},
    {.name = "counts",
     .type = CM_FLAG_STRING,
     .dst = &g_counts,
     .def = "1,16,256,1024",
     .help = "blocks per transfer"},
    {.name = "min-time",
     .type = CM_FLAG_DURATION,
     .dst = &g_min_ms,
     .def = "300ms",
     .help = "time per measurement"},
    {.name = "receiver-poll",
     .type = CM_FLAG_DURATION,
     .dst = &g_rpoll_ms,
     .def = "1ms",
     .help = "the receiver's longest sleep between progress calls (a decode worker's while "
             "KV is expected; see kvx.h on wakeups over shared memory)"},
    {.name = "pool",
     .type = CM_FLAG_SIZE,
     .dst = &g_pool,
     .def = "512M",
     .help = "pool size on each side (bounds size x count)"},
    {.name = "perftest",
     .type = CM_FLAG_BOOL,
     .dst = &g_perftest,
     .def = "true",
     .help = "also run ucx_perftest ucp_put_bw for the same put sizes"},
    {.name = "out",
     .type = CM_FLAG_STRING,
     .dst = &g_out,
     .def = "",
     .help = "write the results as JSON lines to this file"},
    {.name = "receiver",
     .type = CM_FLAG_STRING,
     .dst = &g_receiver,
     .def = "",
     .help = "(internal) run as the receiving process, publishing the descriptor here"},
    {0},
};

#define UNIT 4096u
#define FP   0x62656e6368ull

static eng_kv_geom_t unit_geom(uint64_t pool) {
    eng_kv_geom_t g = {.n_layers = 1,
                       .n_blocks = (uint32_t)(pool / UNIT),
                       .block_size = 1,
                       .kv_heads = 1,
                       .head_dim = UNIT / 8,
                       .dtype_bytes = 4};
    return g;
}

static int receiver(void) {
    kvx_ctx_t *c;
    if (kvx_ctx_new(NULL, NULL, &c) != CM_OK) return 10;
    eng_kv_geom_t g = unit_geom(g_pool);
    kvx_pool_t *p;
    if (kvx_pool_register(c, &g, NULL, FP, (uint64_t)getpid(), &p) != CM_OK) return 11;
    uint8_t *d;
    size_t dl;
    if (kvx_pool_export(p, &d, &dl) != CM_OK) return 12;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", g_receiver);
    FILE *f = fopen(tmp, "wb");
    if (!f || fwrite(d, 1, dl, f) != dl || fclose(f) || rename(tmp, g_receiver)) return 13;
    cm_free(d);
    /* Serve until the sender is done (it kills us) or 30 minutes pass. */
    cm_deadline_t end = cm_deadline_in_ms(30 * 60 * 1000);
    while (!cm_deadline_expired(end) && getppid() != 1) {
        kvx_ctx_progress(c);
        struct pollfd pf = {kvx_ctx_fd(c), POLLIN, 0};
        poll(&pf, 1, (int)g_rpoll_ms);
    }
    kvx_ctx_free(c);
    return 0;
}

static int done_count;
static cm_status_t done_st;
static void on_done(void *ud, cm_status_t st) {
    (void)ud;
    done_count++;
    if (st != CM_OK) done_st = st;
}

/* Parses "16K,1M" into sizes; returns the count. */
static int parse_list(const char *s, uint64_t *out, int cap, bool sizes) {
    int n = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t && n < cap;
         t = strtok_r(NULL, ",", &save)) {
        uint64_t v;
        int64_t iv;
        if (sizes ? cm_parse_size(t, &v) != CM_OK : cm_parse_int64(t, &iv) != CM_OK) return -1;
        out[n++] = sizes ? v : (uint64_t)iv;
    }
    return n;
}

/* Runs ucx_perftest ucp_put_bw for @size; returns overall MB/s or 0. */
static double perftest(uint64_t size) {
    int port = 20000 + (int)(getpid() % 20000);
    char cmd[512];
    uint64_t iters = (uint64_t)(g_min_ms * 1e-3 * 20e9 / (double)size);
    if (iters < 200) iters = 200;
    if (iters > 200000) iters = 200000;
    snprintf(cmd, sizeof cmd,
             "UCX_TLS=%s timeout 60 ucx_perftest -p %d >/dev/null 2>&1 & sleep 0.5; "
             "UCX_TLS=%s timeout 60 ucx_perftest 127.0.0.1 -p %d -t ucp_put_bw -s %llu -n %llu "
             "2>/dev/null | grep '^Final:'; wait",
             g_tls, port, g_tls, port, (unsigned long long)size, (unsigned long long)iters);
    FILE *p = popen(cmd, "r");
    if (!p) return 0;
    char line[512] = "";
    double v[8] = {0};
    if (fgets(line, sizeof line, p))
        sscanf(line, "Final: %lf %lf %lf %lf %lf %lf %lf %lf", &v[0], &v[1], &v[2], &v[3], &v[4],
               &v[5], &v[6], &v[7]);
    pclose(p);
    return v[5]; /* overall bandwidth, MB/s */
}

int bench_kvxfer_main(int argc, char **argv) {
    static const cm_flag_t *const tables[] = {k_flags, NULL};
    const cm_cmd_spec_t spec = {.prog = "tandem bench kvxfer",
                                .summary =
                                    "KV transfer bandwidth/latency over UCX vs ucx_perftest.",
                                .tables = tables};
    int code, npos;
    if (!cm_cli_parse(&spec, argc, argv, NULL, &npos, &code)) return code;
    setenv("UCX_TLS", g_tls, 1);
    if (g_receiver[0]) return receiver();
    uint64_t sizes[16], counts[16];
    int ns = parse_list(g_sizes, sizes, 16, true), nc = parse_list(g_counts, counts, 16, false);
    if (ns <= 0 || nc <= 0) {
        fprintf(stderr, "tandem bench kvxfer: bad --sizes or --counts\n");
        return CM_EXIT_USAGE;
    }
    for (int i = 0; i < ns; i++)
        if (sizes[i] < UNIT || sizes[i] % UNIT) {
            fprintf(stderr, "tandem bench kvxfer: sizes must be multiples of 4K\n");
            return CM_EXIT_USAGE;
        }
    char path[256];
    snprintf(path, sizeof path, "/tmp/tandem-kvx-bench-%d.desc", (int)getpid());
    unlink(path);
    char self[4096];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0) return CM_EXIT_FAILURE;
    self[sl] = '\0';
    pid_t pid = fork();
    if (pid == 0) {
        char a1[300], a2[64], a3[64], a4[64];
        snprintf(a1, sizeof a1, "--receiver=%s", path);
        snprintf(a2, sizeof a2, "--pool=%llu", (unsigned long long)g_pool);
        snprintf(a3, sizeof a3, "--tls=%s", g_tls);
        snprintf(a4, sizeof a4, "--receiver-poll=%llums", (unsigned long long)g_rpoll_ms);
        execl(self, "tandem", "bench", "kvxfer", a1, a2, a3, a4, "--log-level=warn", (char *)NULL);
        _exit(127);
    }
    uint8_t desc[65536];
    size_t dl = 0;
    cm_deadline_t dd = cm_deadline_in_ms(20000);
    while (!cm_deadline_expired(dd)) {
        FILE *f = fopen(path, "rb");
        if (f) {
            dl = fread(desc, 1, sizeof desc, f);
            fclose(f);
            break;
        }
        cm_time_sleep_ns(20000000);
    }
    unlink(path);
    kvx_ctx_t *c = NULL;
    kvx_peer_t *peer;
    kvx_pool_t *src;
    eng_kv_geom_t g = unit_geom(g_pool);
    uint8_t *mem = cm_aligned_alloc(4096, g_pool);
    int rc = CM_EXIT_FAILURE;
    FILE *out = g_out[0] ? fopen(g_out, "w") : NULL;
    if (!dl || !mem || kvx_ctx_new(NULL, NULL, &c) != CM_OK ||
        kvx_peer_connect(c, desc, dl, FP, &peer) != CM_OK ||
        kvx_pool_register(c, &g, mem, FP, 1, &src) != CM_OK) {
        fprintf(stderr, "tandem bench kvxfer: set-up failed\n");
        goto out;
    }
    memset(mem, 0x5a, g_pool);
    printf("transport %s, pool %llu MiB per side\n\n", g_tls, (unsigned long long)(g_pool >> 20));
    printf("%-8s %-7s %-10s %10s %12s %9s %12s %8s\n", "block", "blocks", "mode", "GB/s",
           "us/transfer", "puts", "perftest", "ratio");
    for (int si = 0; si < ns; si++) {
        for (int ci = 0; ci < nc; ci++) {
            uint64_t S = sizes[si], N = counts[ci];
            if (S * N > g_pool) continue;
            uint32_t units = (uint32_t)(S / UNIT);
            size_t np = (size_t)N * units;
            kvx_pair_t *pairs = cm_malloc_array(np, sizeof *pairs);
            for (int mode = 0; mode < 2 && pairs; mode++) {
                /* mode 0: coalesced (identity); mode 1: blocks scattered
                 * (block b goes to slot N-1-b: no two adjacent). */
                for (uint64_t b = 0; b < N; b++) {
                    uint64_t db = mode == 0 ? b : (N - 1 - b);
                    for (uint32_t u = 0; u < units; u++)
                        pairs[b * units + u] =
                            (kvx_pair_t){(int32_t)(b * units + u), (int32_t)(db * units + u)};
                }
                if (mode == 1 && N == 1) continue;
                kvx_stats_t s0, s1;
                kvx_ctx_stats(c, &s0);
                uint64_t t0 = cm_time_mono_ns(), iters = 0;
                done_st = CM_OK;
                while (cm_time_mono_ns() - t0 < g_min_ms * 1000000ull && done_st == CM_OK) {
                    done_count = 0;
                    kvx_send(peer, src, iters, 0, 1, pairs, np, false, 10000, on_done, NULL);
                    while (done_count == 0) kvx_ctx_progress(c);
                    iters++;
                }
                double dt = (double)(cm_time_mono_ns() - t0) * 1e-9;
                kvx_ctx_stats(c, &s1);
                double gbps = (double)(S * N) * (double)iters / dt / 1e9;
                double us = dt / (double)iters * 1e6;
                uint64_t puts = (s1.puts - s0.puts) / (iters ? iters : 1);
                uint64_t put_size = S * N / (puts ? puts : 1);
                double pt = g_perftest ? perftest(put_size) / 1e3 : 0; /* GB/s */
                double ratio = pt > 0 ? gbps / pt : 0;
                char sz[32];
                snprintf(sz, sizeof sz, "%lluK", (unsigned long long)(S >> 10));
                printf("%-8s %-7llu %-10s %10.2f %12.1f %9llu %12.2f %8.3f%s\n", sz,
                       (unsigned long long)N, mode ? "per-block" : "coalesced", gbps, us,
                       (unsigned long long)puts, pt, ratio, done_st != CM_OK ? " (error)" : "");
                fflush(stdout);
                if (out)
                    fprintf(out,
                            "{\"tls\":\"%s\",\"block_bytes\":%llu,\"blocks\":%llu,\"mode\":\"%s\","
                            "\"gbps\":%.4f,\"us_per_transfer\":%.2f,\"puts_per_transfer\":%llu,"
                            "\"put_bytes\":%llu,\"perftest_gbps\":%.4f,\"ratio\":%.4f}\n",
                            g_tls, (unsigned long long)S, (unsigned long long)N,
                            mode ? "per-block" : "coalesced", gbps, us, (unsigned long long)puts,
                            (unsigned long long)put_size, pt, ratio);
            }
            cm_free(pairs);
        }
    }
    rc = CM_EXIT_OK;
out:
    if (out) fclose(out);
    kvx_ctx_free(c);
    cm_aligned_free(mem);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return rc;
}
