/*
 * bench_kvxfer.c - `tandem bench kvxfer`: KV transfer bandwidth and
 * per-transfer latency between two processes over UCX, for block sizes and
 * block counts, coalesced (adjacent blocks go as one put) and not (every
 * block its own put), with `ucx_perftest -t ucp_put_bw` run in the same
 * invocation on the same transport for the same put sizes.
 *
 * Each row is the median of --rounds rounds, ours and perftest alternating
 * (this host's memory bandwidth drifts between runs). The receiver sleeps
 * on the kvx fd (--receiver-poll is its longest sleep) and measures each
 * notice's one-way latency: the sender's clock at kvx_send travels as the
 * request id (CLOCK_MONOTONIC is one clock for both processes).
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
#include "bench_load.h"
#include "cm_cli.h"
#include "kvx.h"

static const char *g_tls, *g_sizes, *g_counts, *g_receiver, *g_out;
static uint64_t g_min_ms, g_pool, g_rpoll_ms;
static int64_t g_rounds, g_window;
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
     .def = "100ms",
     .help = "the receiver's longest sleep on the kvx fd between progress calls (notices "
             "must wake it sooner; see kvx.h on wakeups)"},
    {.name = "rounds",
     .type = CM_FLAG_INT,
     .dst = &g_rounds,
     .def = "3",
     .help = "rounds per row, ours and perftest alternating; medians are reported"},
    {.name = "window",
     .type = CM_FLAG_INT,
     .dst = &g_window,
     .def = "8",
     .help = "transfers in flight for the bandwidth column (as perftest keeps puts in "
             "flight); us/xfer and the receiver latency come from one at a time"},
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

#define UNIT   4096u
#define FP     0x62656e6368ull
#define MARKER UINT64_MAX       /* request id asking the receiver for its latencies (then reset) */
#define SYNC   (UINT64_MAX - 1) /* the same without the reset */

static eng_kv_geom_t unit_geom(uint64_t pool) {
    eng_kv_geom_t g = {.n_layers = 1,
                       .n_blocks = (uint32_t)(pool / UNIT),
                       .block_size = 1,
                       .kv_heads = 1,
                       .head_dim = UNIT / 8,
                       .dtype_bytes = 4};
    return g;
}

/* Receiver: one-way latency of each notice (us), reported and reset at a
 * MARKER notice into <descriptor path>.lat as "count p50 p99". */
static bench_vec_t g_lat;

static void on_rnotice(void *ud, const kvx_notice_t *n) {
    (void)ud;
    uint64_t now = cm_time_mono_ns();
    if (n->req_id != MARKER && n->req_id != SYNC) {
        if (n->req_id <= now) bench_vec_push(&g_lat, (double)(now - n->req_id) * 1e-3);
        return;
    }
    bench_summary_t sm;
    bench_summarize(g_lat.v, g_lat.n, &sm);
    char path[4200], tmp[4300];
    snprintf(path, sizeof path, "%s.lat", g_receiver);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (f) {
        fprintf(f, "%zu %.3f %.3f\n", g_lat.n, g_lat.n ? sm.p50 : 0.0, g_lat.n ? sm.p99 : 0.0);
        if (fclose(f) == 0) rename(tmp, path);
    }
    if (n->req_id == MARKER) g_lat.n = 0;
}

static int receiver(void) {
    kvx_ctx_t *c;
    if (kvx_ctx_new(on_rnotice, NULL, &c) != CM_OK) return 10;
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
    /* Serve until the sender is done (it kills us) or goes away (we are
     * re-parented), at most 12 hours: a full table takes far longer than
     * the 30 minutes this once allowed, which failed every later row. */
    cm_deadline_t end = cm_deadline_in_ms(12 * 3600 * 1000);
    /* --receiver-poll 0: spin like perftest's server (no arming: a sender
     * would send a wakeup datagram per notice to an armed fd). */
    for (uint64_t i = 0; !cm_deadline_expired(end); i++) {
        if (g_rpoll_ms == 0) {
            kvx_ctx_poll(c);
            if (i % 4096 == 0 && getppid() == 1) break;
            continue;
        }
        if (getppid() == 1) break;
        kvx_ctx_progress(c);
        struct pollfd pf = {kvx_ctx_fd(c), POLLIN, 0};
        poll(&pf, 1, (int)g_rpoll_ms);
    }
    kvx_ctx_free(c);
    bench_vec_free(&g_lat);
    return 0;
}

/* Asks the receiver for the latencies since the last reset (and resets
 * them when @reset); its answer also says it has seen every notice sent so
 * far. False when it does not answer within 5 s. */
static bool receiver_latency(kvx_ctx_t *c, kvx_peer_t *peer, const kvx_pool_t *src,
                             const char *desc_path, bool reset, double *p50, double *p99);

static int done_count;
static cm_status_t done_st;
static void on_done(void *ud, cm_status_t st) {
    (void)ud;
    done_count++;
    if (st != CM_OK) done_st = st;
}

static double median(double *v, int n) { /* sorts @v */
    bench_summary_t m;
    bench_summarize(v, (size_t)n, &m);
    return m.p50;
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

static bool receiver_latency(kvx_ctx_t *c, kvx_peer_t *peer, const kvx_pool_t *src,
                             const char *desc_path, bool reset, double *p50, double *p99) {
    char lat[300];
    snprintf(lat, sizeof lat, "%s.lat", desc_path);
    unlink(lat);
    kvx_pair_t one = {0, 0};
    done_count = 0;
    if (kvx_send(peer, src, reset ? MARKER : SYNC, 0, 1, &one, 1, false, 5000, on_done, NULL) !=
        CM_OK)
        return false;
    cm_deadline_t d = cm_deadline_in_ms(5000);
    while (!cm_deadline_expired(d)) {
        if (done_count == 0) kvx_ctx_poll(c);
        FILE *f = fopen(lat, "r");
        if (f) {
            unsigned long n = 0;
            int got = fscanf(f, "%lu %lf %lf", &n, p50, p99);
            fclose(f);
            unlink(lat);
            return got == 3;
        }
        if (done_count) cm_time_sleep_ns(200000);
    }
    return false;
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
    if (g_window < 1 || g_window > 1024) {
        fprintf(stderr, "tandem bench kvxfer: --window must be 1..1024\n");
        return CM_EXIT_USAGE;
    }
    if (g_rounds < 1 || g_rounds > 16) {
        fprintf(stderr, "tandem bench kvxfer: --rounds must be 1..16\n");
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
    printf(
        "transport %s, pool %llu MiB per side, %s\n\n", g_tls, (unsigned long long)(g_pool >> 20),
        kvx_peer_mapped(peer) ? "receiver's pool mapped here: kvx copies (kvx.h, \"Mapped peers\")"
                              : "UCX puts");
    if (kvx_peer_mapped(peer)) {
        const char *e = getenv("TANDEM_KVX_STREAM_MIN");
        if (e)
            printf("streaming stores for sends of at least %s (TANDEM_KVX_STREAM_MIN)\n\n", e);
        else
            printf("streaming stores for sends of at least %llu KiB (default)\n\n",
                   (unsigned long long)(kvx_stream_min_default() >> 10));
    }
    printf(
        "GB/s: --window %lld transfers in flight; GB/s 1, us/xfer, recv p50/p99 (one-way, us): one "
        "at a time; ratio: GB/s / perftest at the put size (median [min-max] of %lld rounds), "
        "ratio 1 the same for GB/s 1; vs bytes: GB/s / perftest moving the row's bytes in one "
        "put\n\n",
        (long long)g_window, (long long)g_rounds);
    printf("%-8s %-7s %-10s %8s %8s %10s %9s %9s %6s %9s %6s %-13s %7s %s\n", "block", "blocks",
           "mode", "GB/s", "GB/s 1", "us/xfer", "recv p50", "recv p99", "puts", "perftest", "ratio",
           "[min-max]", "ratio 1", "vs bytes");
    for (int si = 0; si < ns; si++) {
        for (int ci = 0; ci < nc; ci++) {
            uint64_t S = sizes[si], N = counts[ci];
            if (S * N > g_pool) continue;
            uint32_t units = (uint32_t)(S / UNIT);
            size_t np = (size_t)N * units;
            kvx_pair_t *pairs = cm_malloc_array(np, sizeof *pairs);
            double pt_bytes = 0; /* perftest with one put of S x N bytes (mode 0) */
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
                double gb[16], gb1[16], usv[16], ptv[16], rt[16], rt1[16], l50[16], l99[16];
                uint64_t puts = 0, put_size = S * N;
                int R = (int)g_rounds;
                done_st = CM_OK;
                for (int r = 0; r < R; r++) {
                    /* Bandwidth with --window transfers in flight ... */
                    double dt = 0;
                    uint64_t iters = 0;
                    if (g_window > 1) {
                        done_count = 0;
                        uint64_t t0 = cm_time_mono_ns(), span = g_min_ms * 1000000ull;
                        while (cm_time_mono_ns() - t0 < span && done_st == CM_OK) {
                            /* The clock is read per send too: a send may
                             * complete inside kvx_send (mapped peers), and
                             * the window would never fill. */
                            while ((int64_t)(iters - (uint64_t)done_count) < g_window &&
                                   done_st == CM_OK && cm_time_mono_ns() - t0 < span) {
                                if (kvx_send(peer, src, cm_time_mono_ns(), 0, 1, pairs, np, false,
                                             10000, on_done, NULL) != CM_OK) {
                                    done_st = CM_ERR_IO;
                                    break;
                                }
                                iters++;
                            }
                            kvx_ctx_poll(c);
                        }
                        cm_deadline_t dd2 = cm_deadline_in_ms(20000);
                        while ((uint64_t)done_count < iters && !cm_deadline_expired(dd2))
                            kvx_ctx_poll(c);
                        if ((uint64_t)done_count < iters) done_st = CM_ERR_TIMEOUT;
                        dt = (double)(cm_time_mono_ns() - t0) * 1e-9;
                        gb[r] = (double)(S * N) * (double)iters / dt / 1e9;
                    }
                    /* ... then one at a time: latency, and the receiver's
                     * one-way latency of these notices only. */
                    double unused;
                    receiver_latency(c, peer, src, path, true, &unused, &unused);
                    kvx_stats_t s0, s1;
                    kvx_ctx_stats(c, &s0);
                    uint64_t t0 = cm_time_mono_ns();
                    iters = 0;
                    while (cm_time_mono_ns() - t0 < g_min_ms * 1000000ull && done_st == CM_OK) {
                        done_count = 0;
                        if (kvx_send(peer, src, cm_time_mono_ns(), 0, 1, pairs, np, false, 10000,
                                     on_done, NULL) != CM_OK) {
                            done_st = CM_ERR_IO; /* no callback will come */
                            break;
                        }
                        while (done_count == 0) kvx_ctx_poll(c); /* the send's 10 s deadline */
                        iters++;
                    }
                    dt = (double)(cm_time_mono_ns() - t0) * 1e-9;
                    kvx_ctx_stats(c, &s1);
                    gb1[r] = (double)(S * N) * (double)iters / dt / 1e9;
                    if (g_window == 1) gb[r] = gb1[r];
                    usv[r] = dt / (double)(iters ? iters : 1) * 1e6;
                    puts = (s1.puts - s0.puts) / (iters ? iters : 1);
                    put_size = S * N / (puts ? puts : 1);
                    l50[r] = l99[r] = 0;
                    if (!receiver_latency(c, peer, src, path, true, &l50[r], &l99[r]))
                        fprintf(stderr,
                                "tandem bench kvxfer: the receiver did not report latencies\n");
                    /* Our receiver stops while perftest runs (a spinning one
                     * would take a core from it), once it has seen every
                     * notice. */
                    kill(pid, SIGSTOP);
                    ptv[r] = g_perftest ? perftest(put_size) / 1e3 : 0; /* GB/s */
                    kill(pid, SIGCONT);
                    rt[r] = ptv[r] > 0 ? gb[r] / ptv[r] : 0;
                    rt1[r] = ptv[r] > 0 ? gb1[r] / ptv[r] : 0;
                }
                double lat50 = median(l50, R), lat99 = median(l99, R), gbps1 = median(gb1, R),
                       ratio1 = median(rt1, R), gbps = median(gb, R), us = median(usv, R),
                       pt = median(ptv, R);
                bench_summary_t m;
                bench_summarize(rt, (size_t)R, &m);
                double ratio = m.p50, rmin = m.min, rmax = m.max;
                /* Per-block rows also against perftest moving the same bytes
                 * in one put: perftest at the block size reuses one buffer,
                 * which stays in cache; a transfer's blocks do not. */
                if (mode == 0) pt_bytes = pt;
                double ratio_bytes = pt_bytes > 0 ? gbps / pt_bytes : 0;
                char sz[32];
                snprintf(sz, sizeof sz, "%lluK", (unsigned long long)(S >> 10));
                char span[32];
                snprintf(span, sizeof span, "[%.2f-%.2f]", rmin, rmax);
                printf("%-8s %-7llu %-10s %8.2f %8.2f %10.1f %9.1f %9.1f %6llu %9.2f %6.3f %-13s "
                       "%7.3f %.3f%s\n",
                       sz, (unsigned long long)N, mode ? "per-block" : "coalesced", gbps, gbps1, us,
                       lat50, lat99, (unsigned long long)puts, pt, ratio, span, ratio1, ratio_bytes,
                       done_st != CM_OK ? " (error)" : "");
                fflush(stdout);
                if (out)
                    fprintf(out,
                            "{\"tls\":\"%s\",\"block_bytes\":%llu,\"blocks\":%llu,\"mode\":\"%s\","
                            "\"gbps\":%.4f,\"us_per_transfer\":%.2f,\"recv_latency_p50_us\":%.2f,"
                            "\"recv_latency_p99_us\":%.2f,\"puts_per_transfer\":%llu,"
                            "\"put_bytes\":%llu,\"perftest_gbps\":%.4f,\"ratio\":%.4f,"
                            "\"ratio_min\":%.4f,\"ratio_max\":%.4f,\"ratio_same_bytes\":%.4f,"
                            "\"rounds\":%d,\"mapped\":%s,\"window\":%lld,\"gbps_serial\":%.4f,"
                            "\"ratio_serial\":%.4f}\n",
                            g_tls, (unsigned long long)S, (unsigned long long)N,
                            mode ? "per-block" : "coalesced", gbps, us, lat50, lat99,
                            (unsigned long long)puts, (unsigned long long)put_size, pt, ratio, rmin,
                            rmax, ratio_bytes, R, kvx_peer_mapped(peer) ? "true" : "false",
                            (long long)g_window, gbps1, ratio1);
            }
            cm_free(pairs);
            int wst;
            if (waitpid(pid, &wst, WNOHANG) == pid) {
                fprintf(stderr, "tandem bench kvxfer: the receiver exited (status %d)\n", wst);
                pid = -1;
                goto out;
            }
        }
    }
    rc = CM_EXIT_OK;
out:
    unlink(path);
    if (out) fclose(out);
    kvx_ctx_free(c);
    cm_aligned_free(mem);
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    return rc;
}
