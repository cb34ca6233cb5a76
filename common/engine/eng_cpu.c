/*
 * eng_cpu.c - the fast CPU backend: AVX2/FMA/F16C dot products chosen at
 * run time (scalar fallback), matmuls split over a persistent thread pool by
 * output rows. Same interface and layouts as eng_ref.c; results differ from
 * it only by summation order.
 */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eng_backend.h"

typedef float (*dot_fn)(const float *x, const void *w, size_t n);

static float dot_f32_scalar(const float *x, const void *w, size_t n) {
    const float *v = w;
    float a[4] = {0};
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++) a[k] += x[i + k] * v[i + k];
    float s = (a[0] + a[1]) + (a[2] + a[3]);
    for (; i < n; i++) s += x[i] * v[i];
    return s;
}

static float dot_16_scalar(const float *x, const void *w, size_t n, mdl_dtype_t t) {
    float buf[256], s = 0.0f;
    const uint16_t *v = w;
    for (size_t i = 0; i < n; i += 256) {
        size_t m = n - i < 256 ? n - i : 256;
        eng_to_f32(v + i, t, m, buf);
        s += dot_f32_scalar(x + i, buf, m);
    }
    return s;
}

static float dot_bf16_scalar(const float *x, const void *w, size_t n) {
    return dot_16_scalar(x, w, n, MDL_BF16);
}

static float dot_f16_scalar(const float *x, const void *w, size_t n) {
    return dot_16_scalar(x, w, n, MDL_F16);
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) static inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

__attribute__((target("avx2,fma"))) static float dot_f32_avx2(const float *x, const void *w,
                                                              size_t n) {
    const float *v = w;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(v + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(v + i + 8), a1);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(v + i), a0);
    float s = hsum(_mm256_add_ps(a0, a1));
    for (; i < n; i++) s += x[i] * v[i];
    return s;
}

__attribute__((target("avx2,fma"))) static inline __m256 bf16x8(const uint16_t *p) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

__attribute__((target("avx2,fma"))) static float dot_bf16_avx2(const float *x, const void *w,
                                                               size_t n) {
    const uint16_t *v = w;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), bf16x8(v + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), bf16x8(v + i + 8), a1);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), bf16x8(v + i), a0);
    float s = hsum(_mm256_add_ps(a0, a1));
    if (i < n) s += dot_bf16_scalar(x + i, v + i, n - i);
    return s;
}

__attribute__((target("avx2,fma,f16c"))) static float dot_f16_avx2(const float *x, const void *w,
                                                                   size_t n) {
    const uint16_t *v = w;
    __m256 a0 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i),
                             _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + i))), a0);
    float s = hsum(a0);
    if (i < n) s += dot_f16_scalar(x + i, v + i, n - i);
    return s;
}
#endif

/* ---- thread pool ----------------------------------------------------- */

typedef struct {
    const float *x;
    size_t rows, in, out;
    const mdl_tensor_t *w;
    const float *bias;
    float *y;
    dot_fn dot;
} job_t;

typedef struct {
    pthread_t *threads;
    int n; /* workers besides the caller */
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    uint64_t gen;
    int pending;
    bool stop;
    job_t job;
    dot_fn dots[3];
} cpu_t;

static void run_slice(const job_t *j, int part, int parts) {
    size_t lo = j->out * (size_t)part / (size_t)parts,
           hi = j->out * (size_t)(part + 1) / (size_t)parts;
    size_t es = mdl_dtype_size(j->w->dtype);
    for (size_t o = lo; o < hi; o++) {
        const char *wr = (const char *)j->w->data + o * j->in * es;
        float b = j->bias ? j->bias[o] : 0.0f;
        for (size_t r = 0; r < j->rows; r++)
            j->y[r * j->out + o] = j->dot(j->x + r * j->in, wr, j->in) + b;
    }
}

typedef struct {
    cpu_t *pool;
    int idx;
} worker_arg_t;

static void *worker(void *arg) {
    worker_arg_t *wa = arg;
    cpu_t *p = wa->pool;
    int idx = wa->idx;
    free(wa);
    uint64_t seen = 0;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (!p->stop && p->gen == seen) pthread_cond_wait(&p->go, &p->mu);
        if (p->stop) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        seen = p->gen;
        job_t j = p->job;
        pthread_mutex_unlock(&p->mu);
        run_slice(&j, idx + 1, p->n + 1);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->done);
        pthread_mutex_unlock(&p->mu);
    }
}

static void cpu_matmul(void *ctx, const float *x, size_t rows, size_t in, const mdl_tensor_t *w,
                       const float *bias, size_t out, float *y) {
    cpu_t *p = ctx;
    job_t j = {x, rows, in, out, w, bias, y, p->dots[w->dtype]};
    /* Small products are not worth waking the pool. */
    if (p->n == 0 || rows * in * out < (1u << 16)) {
        run_slice(&j, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->job = j;
    p->pending = p->n;
    p->gen++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    run_slice(&j, 0, p->n + 1);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

static void cpu_rmsnorm(void *ctx, const float *x, size_t rows, size_t dim, const float *weight,
                        float eps, float *y) {
    (void)ctx;
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float ss = 0.0f;
        for (size_t i = 0; i < dim; i++) ss += xr[i] * xr[i];
        float inv = 1.0f / sqrtf(ss / (float)dim + eps);
        for (size_t i = 0; i < dim; i++) y[r * dim + i] = weight[i] * (xr[i] * inv);
    }
}

static void cpu_free(void *ctx) {
    cpu_t *p = ctx;
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    cm_free(p->threads);
    cm_free(p);
}

static const eng_backend_i k_cpu = {"cpu", cpu_matmul, cpu_rmsnorm, cpu_free};

cm_status_t eng_backend_cpu_new(eng_backend_t *out) {
    cpu_t *p = cm_calloc(1, sizeof *p);
    if (!p) return CM_ERR_NO_MEMORY;
    p->dots[MDL_F32] = dot_f32_scalar;
    p->dots[MDL_BF16] = dot_bf16_scalar;
    p->dots[MDL_F16] = dot_f16_scalar;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        p->dots[MDL_F32] = dot_f32_avx2;
        p->dots[MDL_BF16] = dot_bf16_avx2;
        if (__builtin_cpu_supports("f16c")) p->dots[MDL_F16] = dot_f16_avx2;
    }
#endif
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    const char *env = getenv("TANDEM_THREADS");
    int n = env ? atoi(env) : (int)(cores > 0 ? cores : 1);
    if (n < 1) n = 1;
    if (n > 64) n = 64;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    p->threads = cm_calloc((size_t)n, sizeof *p->threads);
    if (!p->threads) {
        cpu_free(p);
        return CM_ERR_NO_MEMORY;
    }
    for (int i = 0; i < n - 1; i++) {
        worker_arg_t *wa = malloc(sizeof *wa);
        if (!wa) break;
        wa->pool = p;
        wa->idx = i;
        if (pthread_create(&p->threads[i], NULL, worker, wa) != 0) {
            free(wa);
            break;
        }
        p->n++;
    }
    out->iface = &k_cpu;
    out->ctx = p;
    return CM_OK;
}
