/*
 * bench_engine.c - `tandem bench engine`: prefill and decode throughput of
 * the engine on a checkpoint, next to the machine's limits measured in the
 * same run: decode as a fraction of memory bandwidth (weight bytes read per
 * step / step time, against a multi-threaded copy), prefill as a fraction
 * of the backend's own matmul peak on a large product.
 */
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "cm_cli.h"
#include "eng.h"
#include "eng_backend.h"
#include "eng_cuda.h"

static const char *g_model, *g_backend, *g_batches;
static int64_t g_prompt, g_steps, g_rounds;

static const cm_flag_t k_flags[] = {
    {.name = "model",
     .type = CM_FLAG_STRING,
     .dst = &g_model,
     .required = true,
     .help = "model directory"},
    {.name = "backend",
     .type = CM_FLAG_CHOICE,
     .dst = &g_backend,
     .def = "cpu",
     .choices = "ref|cpu|cuda",
     .help = "compute backend"},
    {.name = "batches",
     .type = CM_FLAG_STRING,
     .dst = &g_batches,
     .def = "1,8,32,64",
     .help = "batch sizes (sequences)"},
    {.name = "prompt-len",
     .type = CM_FLAG_INT,
     .dst = &g_prompt,
     .def = "128",
     .help = "prompt tokens per sequence",
     .min = 1,
     .max = 1 << 16},
    {.name = "decode-steps",
     .type = CM_FLAG_INT,
     .dst = &g_steps,
     .def = "16",
     .help = "decode steps timed per batch size",
     .min = 1,
     .max = 1 << 16},
    {.name = "rounds",
     .type = CM_FLAG_INT,
     .dst = &g_rounds,
     .def = "1",
     .help = "decode rounds per batch size, each right after its own bandwidth probes "
             "(host); medians reported",
     .min = 1,
     .max = 99},
    {0},
};

typedef struct {
    char *src, *dst;
    size_t n;
    int reps;
    bool pf; /* read_thread: read64pf's pattern */
} copy_arg_t;

static void *copy_thread(void *p) {
    copy_arg_t *a = p;
    for (int r = 0; r < a->reps; r++) {
        memcpy(a->dst, a->src, a->n);
        __asm__ volatile("" : : "r"(a->dst) : "memory");
    }
    return NULL;
}

/* XOR of @n bytes (a multiple of 512) read @reps times, 8 streams of
 * vectors of W bytes: the widest loads the CPU has (narrow ones do not
 * reach a core's read bandwidth on every host). */
#define READ_LOOP(name, W, attr)                                                            \
    attr static void name(const char *src, size_t n, int reps, char *dst) {                 \
        typedef uint64_t v_t __attribute__((vector_size(W)));                               \
        v_t a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0}; \
        for (int r = 0; r < reps; r++) {                                                    \
            const v_t *v = (const v_t *)(const void *)src;                                  \
            for (size_t i = 0; i + 8 <= n / W; i += 8) {                                    \
                a0 ^= v[i];                                                                 \
                a1 ^= v[i + 1];                                                             \
                a2 ^= v[i + 2];                                                             \
                a3 ^= v[i + 3];                                                             \
                a4 ^= v[i + 4];                                                             \
                a5 ^= v[i + 5];                                                             \
                a6 ^= v[i + 6];                                                             \
                a7 ^= v[i + 7];                                                             \
            }                                                                               \
        }                                                                                   \
        a0 ^= a1 ^ a2 ^ a3 ^ a4 ^ a5 ^ a6 ^ a7;                                             \
        memcpy(dst, &a0, sizeof a0); /* keeps the loads */                                  \
    }
READ_LOOP(read16, 16, )
#if defined(__x86_64__)
READ_LOOP(read64, 64, __attribute__((target("avx512f"))))
READ_LOOP(read32, 32, __attribute__((target("avx2"))))
#endif

#if defined(__x86_64__)
/* The same bytes as 4 streams (quarters) read side by side, each line
 * prefetched 2 KiB ahead: on some hosts (2-core Xeon VMs) this reads
 * 1.2-1.3x faster than one stream, as the weight panels do. */
__attribute__((target("avx512f"))) static void read64pf(const char *src, size_t n, int reps,
                                                        char *dst) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    const size_t q = n / 4 / 64 * 64;
    for (int r = 0; r < reps; r++)
        for (size_t i = 0; i < q; i += 64) {
            const char *s = src + i;
            _mm_prefetch(s + 2048, _MM_HINT_T0);
            _mm_prefetch(s + q + 2048, _MM_HINT_T0);
            _mm_prefetch(s + 2 * q + 2048, _MM_HINT_T0);
            _mm_prefetch(s + 3 * q + 2048, _MM_HINT_T0);
            a0 = _mm512_xor_si512(a0, _mm512_load_si512(s));
            a1 = _mm512_xor_si512(a1, _mm512_load_si512(s + q));
            a2 = _mm512_xor_si512(a2, _mm512_load_si512(s + 2 * q));
            a3 = _mm512_xor_si512(a3, _mm512_load_si512(s + 3 * q));
        }
    a0 = _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3));
    _mm512_storeu_si512(dst, a0); /* keeps the loads */
}
#endif

static void *read_thread(void *p) {
    copy_arg_t *a = p;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (a->pf && __builtin_cpu_supports("avx512f")) {
        read64pf(a->src, a->n, a->reps, a->dst);
        return NULL;
    }
    if (__builtin_cpu_supports("avx512f")) {
        read64(a->src, a->n, a->reps, a->dst);
        return NULL;
    }
    if (__builtin_cpu_supports("avx2")) {
        read32(a->src, a->n, a->reps, a->dst);
        return NULL;
    }
#endif
    read16(a->src, a->n, a->reps, a->dst);
    return NULL;
}

/* Trials per bandwidth probe (each one pass over 512 MiB): the fastest
 * counts, as in STREAM. */
#define PROBE_TRIALS 4

/* Both probes stream memory of the kind the weights are packed into
 * (cm_huge_map: huge pages where the kernel gives them).
 *
 * Read-only bandwidth with @threads threads streaming 512 MiB (what a
 * decode step does with the weights; memcpy's non-temporal stores let a
 * copy count more bytes per second than a pure read stream on some
 * hosts): the fastest trial of one stream per thread or read64pf's four. */
static double read_gbps(int threads) {
    size_t total = 512u << 20, per = total / (size_t)threads / 512 * 512;
    char *src = cm_huge_map(total), *dst = cm_aligned_alloc(64, 256 * 64);
    if (!src || !dst) {
        cm_huge_unmap(src, total);
        cm_aligned_free(dst);
        return 0;
    }
    memset(src, 1, total);
    pthread_t th[64];
    copy_arg_t a[64];
    double best = 0;
    for (int trial = 0; trial < 2 * PROBE_TRIALS; trial++) {
        const bool pf = trial % 2;
        uint64_t t0 = cm_time_mono_ns();
        for (int i = 0; i < threads; i++) {
            a[i] = (copy_arg_t){src + (size_t)i * per, dst + (size_t)(i % 64) * 256, per, 1, pf};
            pthread_create(&th[i], NULL, read_thread, &a[i]);
        }
        for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
        double dt = (double)(cm_time_mono_ns() - t0) * 1e-9,
               g = (double)per * (double)threads / dt / 1e9;
        if (g > best) best = g;
    }
    cm_huge_unmap(src, total);
    cm_aligned_free(dst);
    return best;
}

/* Copy bandwidth with @threads threads over 512 MiB (read + write bytes):
 * the best of PROBE_TRIALS trials, as STREAM reports its best. */
static double copy_gbps(int threads) {
    size_t total = 512u << 20, per = total / (size_t)threads;
    char *src = cm_huge_map(total), *dst = cm_huge_map(total);
    if (!src || !dst) {
        cm_huge_unmap(src, total);
        cm_huge_unmap(dst, total);
        return 0;
    }
    memset(src, 1, total);
    memset(dst, 2, total);
    pthread_t th[64];
    copy_arg_t a[64];
    double best = 0;
    for (int trial = 0; trial < PROBE_TRIALS; trial++) {
        uint64_t t0 = cm_time_mono_ns();
        for (int i = 0; i < threads; i++) {
            a[i] = (copy_arg_t){src + (size_t)i * per, dst + (size_t)i * per, per, 1, false};
            pthread_create(&th[i], NULL, copy_thread, &a[i]);
        }
        for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
        double dt = (double)(cm_time_mono_ns() - t0) * 1e-9,
               g = 2.0 * (double)total / dt / 1e9; /* bytes read + written */
        if (g > best) best = g;
    }
    cm_huge_unmap(src, total);
    cm_huge_unmap(dst, total);
    return best;
}

static int dbl_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, dbl_cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The backend's matmul on a prefill-sized product: GFLOP/s. */
static double matmul_gflops(eng_backend_kind_t kind, mdl_dtype_t dt) {
    eng_backend_t be;
    if ((kind == ENG_BACKEND_CPU ? eng_backend_cpu_new(&be) : eng_backend_ref_new(&be)) != CM_OK)
        return 0;
    size_t rows = 256, in = 1024, out = 2048;
    float *x = cm_malloc_array(rows * in, sizeof(float)), *y = cm_malloc_array(rows * out, 4);
    void *w = cm_malloc(out * in * mdl_dtype_size(dt));
    mdl_tensor_t t = {.dtype = dt, .ndim = 2, .shape = {out, in}, .data = w};
    double gflops = 0;
    if (!x || !y || !w) goto out;
    for (size_t i = 0; i < rows * in; i++) x[i] = (float)(i % 7) * 0.1f;
    memset(w, 0x3c, out * in * mdl_dtype_size(dt));
    /* In the layout the backend gives a loaded model's weights. */
    if (be.iface->pack && be.iface->pack(be.ctx, &t) != CM_OK) goto out;
    be.iface->matmul(be.ctx, x, rows, in, &t, NULL, out, y); /* warm-up */
    /* The best of 5 windows of 100 ms: a slow spell of a shared host
     * lowers one window, not the peak. */
    for (int win = 0; win < 5; win++) {
        uint64_t t0 = cm_time_mono_ns();
        int reps = 0;
        do {
            be.iface->matmul(be.ctx, x, rows, in, &t, NULL, out, y);
            reps++;
        } while (cm_time_mono_ns() - t0 < 100000000ull);
        double s = (double)(cm_time_mono_ns() - t0) * 1e-9,
               g = 2.0 * (double)rows * (double)in * (double)out * reps / s / 1e9;
        if (g > gflops) gflops = g;
    }
out:
    be.iface->free(be.ctx);
    cm_free(x);
    cm_free(y);
    cm_free(w);
    return gflops;
}

int bench_engine_main(int argc, char **argv) {
    static const cm_flag_t *const tables[] = {k_flags, NULL};
    const cm_cmd_spec_t spec = {.prog = "tandem bench engine",
                                .summary = "Prefill and decode tokens/s vs measured memory "
                                           "bandwidth and matmul peak.",
                                .tables = tables};
    int code, npos;
    if (!cm_cli_parse(&spec, argc, argv, NULL, &npos, &code)) return code;
    eng_backend_kind_t kind;
    eng_backend_parse(g_backend, &kind);
    char err[512];
    eng_model_t *m;
    if (eng_model_load(g_model, kind, &m, err, sizeof err) != CM_OK) {
        fprintf(stderr, "tandem bench engine: %s\n", err);
        return CM_EXIT_FAILURE;
    }
    const mdl_config_t *c = eng_model_config(m);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    const char *te = getenv("TANDEM_THREADS");
    int threads = te ? atoi(te) : (int)cores;
    if (threads < 1) threads = 1;
    bool dev = eng_model_on_device(m);
    /* On a GPU the ceilings are the device's: device-to-device copy
     * bandwidth and cuBLAS's bf16 GEMM rate, measured now. */
    double bw = dev ? eng_cuda_copy_gbps((size_t)2 << 30) : copy_gbps(threads);
    double rbw = dev ? 0 : read_gbps(threads);
    mdl_dtype_t wdt = MDL_BF16;
    double peak = dev ? eng_cuda_gemm_tflops(8192) * 1e3 : matmul_gflops(kind, wdt);
    size_t wbytes = eng_model_weight_bytes(m);
    const char *prec = eng_model_cpu_precision(m);
    printf("model %s (%s, %u layers, hidden %u, %u experts), backend %s%s%s, KV cache %s, %d "
           "threads\n",
           g_model, c->arch_name, c->n_layers, c->hidden, c->n_experts, g_backend,
           prec ? ", matmul inputs " : "", prec ? prec : "", eng_model_kv_dtype(m), threads);
    printf("weights read per decode step (dense path, top-k experts): %.1f MB\n",
           (double)wbytes / 1e6);
    if (dev)
        printf("device %s: copy bandwidth %.1f GB/s (device to device), cuBLAS bf16 GEMM peak "
               "%.1f TFLOP/s (8192^3)\n\n",
               eng_model_device_name(m), bw, peak / 1e3);
    else
        printf("copy bandwidth %.2f GB/s (%d threads), read bandwidth %.2f GB/s, bf16 matmul "
               "peak %.1f GFLOP/s\n\n",
               bw, threads, rbw, peak);
    /* "of bw": weight bytes per decode step / step time / copy bandwidth;
     * "of read": the same against the read-only stream (host only). */
    int R = (int)g_rounds;
    if (R > 1)
        printf("decode: median of %d rounds of %lld steps; on the host each round's fractions "
               "are against copy and read probes run just before it\n",
               R, (long long)g_steps);
    printf("%6s %14s %10s %14s %12s %10s %10s\n", "batch", "prefill tok/s", "of peak",
           "decode tok/s", "step ms", "of bw", "of read");
    uint64_t bs[16];
    int nb = 0;
    char list[128];
    snprintf(list, sizeof list, "%s", g_batches);
    for (char *sv = NULL, *t = strtok_r(list, ",", &sv); t && nb < 16; t = strtok_r(NULL, ",", &sv))
        bs[nb++] = (uint64_t)atoll(t);
    for (int bi = 0; bi < nb; bi++) {
        uint32_t B = (uint32_t)bs[bi], P = (uint32_t)g_prompt;
        eng_kv_config_t kc = {
            .geom = eng_model_kv_geom(m, B * ((P + (uint32_t)(g_steps * R)) / 16 + 2), 16),
            .fingerprint = 1,
            .mem_mode = ENG_KV_MEM_ALLOC,
            .prefault = true};
        void *pool = NULL;
        if (dev) {
            kc.mem_bytes = eng_kv_geom_pool_bytes(&kc.geom);
            kc.mem = pool = eng_model_kv_alloc(m, kc.mem_bytes);
            kc.mem_mode = ENG_KV_MEM_EXTERNAL;
            if (!pool) continue;
        }
        eng_kv_t *kv;
        if (eng_kv_init(&kc, &kv) != CM_OK) {
            eng_model_kv_release(m, pool);
            continue;
        }
        eng_kv_seq_t **seqs = cm_calloc(B, sizeof *seqs);
        eng_item_t *items = cm_calloc(B, sizeof *items);
        float *logits = cm_aligned_alloc(64, (size_t)B * c->vocab * sizeof(float));
        int32_t *prompt = cm_malloc_array(P, sizeof *prompt);
        for (uint32_t i = 0; i < P; i++) prompt[i] = (int32_t)((i * 7919u + 13u) % c->vocab);
        for (uint32_t b = 0; b < B; b++) {
            prompt[0] = (int32_t)(b % c->vocab);
            eng_kv_seq_new(kv, prompt, P, 0, &seqs[b], NULL);
            items[b] = (eng_item_t){seqs[b], 0, P, true};
        }
        /* One untimed pass first (it writes the same KV again): first-use
         * costs (scratch growth, lazily loaded GPU kernels, cuBLAS
         * heuristics) are not what a serving engine pays per request. */
        eng_forward(m, kv, items, B, logits);
        uint64_t t0 = cm_time_mono_ns();
        eng_forward(m, kv, items, B, logits);
        double pre_s = (double)(cm_time_mono_ns() - t0) * 1e-9;
        for (uint32_t b = 0; b < B; b++) eng_kv_seq_set_computed(kv, seqs[b], P);
        double pre_tps = (double)B * P / pre_s;
        /* Every layer's weights for every token, the LM head once per sequence. */
        double body = (double)(wbytes - eng_model_lm_head_bytes(m)) / mdl_dtype_size(wdt);
        double head = (double)eng_model_lm_head_bytes(m) / mdl_dtype_size(wdt);
        double pre_flops = 2.0 * body * B * P + 2.0 * head * B;
        /* Step 0 of each round is untimed (the first round's warms up
         * the decode shape; the others follow a probe that evicted it). */
        double tps[99], fbw[99], frd[99], steps[99];
        for (int r = 0; r < R; r++) {
            double rbw_r = rbw, bw_r = bw;
            if (R > 1 && !dev) {
                bw_r = copy_gbps(threads);
                rbw_r = read_gbps(threads);
            }
            for (int s = 0; s <= g_steps; s++) {
                if (s == 1) t0 = cm_time_mono_ns();
                for (uint32_t b = 0; b < B; b++) {
                    int32_t tok = (int32_t)((s * 31 + b) % c->vocab);
                    uint32_t len = eng_kv_seq_len(seqs[b]);
                    eng_kv_seq_append(kv, seqs[b], &tok, 1);
                    items[b] = (eng_item_t){seqs[b], len, 1, true};
                }
                eng_forward(m, kv, items, B, logits);
                for (uint32_t b = 0; b < B; b++)
                    eng_kv_seq_set_computed(kv, seqs[b], eng_kv_seq_len(seqs[b]));
            }
            double dec_s = (double)(cm_time_mono_ns() - t0) * 1e-9;
            double step = dec_s / (double)g_steps;
            tps[r] = (double)B * g_steps / dec_s;
            steps[r] = step * 1e3;
            fbw[r] = 100.0 * (double)wbytes / step / 1e9 / bw_r;
            frd[r] = rbw_r > 0 ? 100.0 * (double)wbytes / step / 1e9 / rbw_r : 0.0;
        }
        printf("%6u %14.0f %9.1f%% %14.1f %12.2f %9.1f%% %9.1f%%\n", B, pre_tps,
               100.0 * pre_flops / pre_s / 1e9 / peak, median(tps, R), median(steps, R),
               median(fbw, R), median(frd, R));
        fflush(stdout);
        for (uint32_t b = 0; b < B; b++) eng_kv_seq_free(kv, seqs[b]);
        cm_free(seqs);
        cm_free(items);
        cm_aligned_free(logits);
        cm_free(prompt);
        eng_kv_free(kv);
        eng_model_kv_release(m, pool);
    }
    eng_model_free(m);
    return CM_EXIT_OK;
}
