/*
 * bench_stats.c - exact summary statistics (sort, then read ranks) and the
 * seeded random source behind workloads and Poisson arrivals.
 */
#include <math.h>
#include <stdlib.h>

#include "bench_load.h"

cm_status_t bench_vec_push(bench_vec_t *vec, double x) {
    if (vec->n == vec->cap) {
        size_t ncap = vec->cap ? vec->cap * 2 : 64;
        double *nv = cm_realloc_array(vec->v, ncap, sizeof *nv);
        if (!nv) return CM_ERR_NO_MEMORY;
        vec->v = nv;
        vec->cap = ncap;
    }
    vec->v[vec->n++] = x;
    return CM_OK;
}

void bench_vec_free(bench_vec_t *vec) {
    cm_free(vec->v);
    vec->v = NULL;
    vec->n = vec->cap = 0;
}

double bench_percentile_sorted(const double *sorted, size_t n, double p) {
    if (n == 0 || !(p >= 0 && p <= 100)) return NAN;
    double h = (double)(n - 1) * p / 100.0;
    size_t lo = (size_t)floor(h);
    if (lo >= n - 1) return sorted[n - 1];
    double frac = h - (double)lo;
    return sorted[lo] + frac * (sorted[lo + 1] - sorted[lo]);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void bench_summarize(double *values, size_t n, bench_summary_t *out) {
    bench_summary_t s = {.n = n};
    if (n == 0) {
        s.mean = s.stddev = s.min = s.p50 = s.p90 = s.p95 = s.p99 = s.max = NAN;
        *out = s;
        return;
    }
    qsort(values, n, sizeof *values, cmp_double);
    /* Two passes for a numerically stable variance. */
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += values[i];
    s.mean = sum / (double)n;
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += (values[i] - s.mean) * (values[i] - s.mean);
    s.stddev = sqrt(ss / (double)n);
    s.min = values[0];
    s.max = values[n - 1];
    s.p50 = bench_percentile_sorted(values, n, 50);
    s.p90 = bench_percentile_sorted(values, n, 90);
    s.p95 = bench_percentile_sorted(values, n, 95);
    s.p99 = bench_percentile_sorted(values, n, 99);
    *out = s;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void bench_rng_seed(bench_rng_t *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t bench_rng_next(bench_rng_t *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double bench_rng_uniform(bench_rng_t *r) {
    /* 53 random bits, shifted by half a step so 0 and 1 never occur. */
    return ((double)(bench_rng_next(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

double bench_rng_normal(bench_rng_t *r) {
    double u1 = bench_rng_uniform(r), u2 = bench_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

uint64_t bench_rng_below(bench_rng_t *r, uint64_t n) {
    if (n <= 1) return 0;
    uint64_t limit = UINT64_MAX - UINT64_MAX % n; /* reject the biased tail */
    uint64_t x;
    do x = bench_rng_next(r);
    while (x >= limit);
    return x % n;
}

double bench_rng_exp_gap(bench_rng_t *r, double rate) { return -log(bench_rng_uniform(r)) / rate; }
