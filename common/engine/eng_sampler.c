/*
 * eng_sampler.c - penalties, temperature, top-k / top-p / min-p, the
 * counter-based draw and logprobs. See eng_sampler.h for the contract.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_sampler.h"

typedef struct {
    float v;    /* processed logit */
    float e;    /* exp(v - max processed logit) */
    int32_t id; /* token id */
} sm_pair_t;

struct eng_sampler {
    uint32_t vocab;
    float *work;     /* [vocab] processed logits */
    float *ex;       /* [vocab] exp(work - max work) */
    uint32_t *stamp; /* [vocab] marks for de-duplicating history tokens */
    uint32_t *count; /* [vocab] output counts, valid where stamp == gen */
    sm_pair_t *cand; /* [vocab] surviving tokens */
    sm_pair_t *heap; /* [vocab] top-k heap */
    uint32_t gen;
};

/* ------------------------------------------------------------------------ */
/* Parameters                                                               */
/* ------------------------------------------------------------------------ */

void eng_sampler_params_default(eng_sampler_params_t *p) {
    memset(p, 0, sizeof *p);
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->repetition_penalty = 1.0f;
    p->max_tokens = 16;
}

bool eng_sampler_params_greedy(const eng_sampler_params_t *p) {
    return p->temperature < ENG_SAMPLER_GREEDY_EPS;
}

#define SM_ERR(code, ...)                                        \
    do {                                                         \
        if (err && err_len) snprintf(err, err_len, __VA_ARGS__); \
        return code;                                             \
    } while (0)

static bool in_range(float x, float lo, float hi) { return isfinite(x) && x >= lo && x <= hi; }

cm_status_t eng_sampler_params_validate(const eng_sampler_params_t *p, uint32_t vocab, char *err,
                                        size_t err_len) {
    if (err && err_len) err[0] = 0;
    if (!p) SM_ERR(CM_ERR_INVALID_ARG, "no sampling parameters");
    if (!in_range(p->temperature, 0.0f, 100.0f))
        SM_ERR(CM_ERR_OUT_OF_RANGE, "temperature must be between 0 and 100, got %g",
               (double)p->temperature);
    if (p->top_k < 0)
        SM_ERR(CM_ERR_OUT_OF_RANGE, "top_k must be 0 (off) or a positive count, got %d",
               (int)p->top_k);
    if (!isfinite(p->top_p) || !(p->top_p > 0.0f) || p->top_p > 1.0f)
        SM_ERR(CM_ERR_OUT_OF_RANGE, "top_p must be in (0, 1], got %g", (double)p->top_p);
    if (!in_range(p->min_p, 0.0f, 1.0f))
        SM_ERR(CM_ERR_OUT_OF_RANGE, "min_p must be in [0, 1], got %g", (double)p->min_p);
    if (!isfinite(p->repetition_penalty) || !(p->repetition_penalty > 0.0f) ||
        p->repetition_penalty > 10.0f)
        SM_ERR(CM_ERR_OUT_OF_RANGE, "repetition_penalty must be in (0, 10], got %g",
               (double)p->repetition_penalty);
    if (!in_range(p->presence_penalty, -2.0f, 2.0f))
        SM_ERR(CM_ERR_OUT_OF_RANGE, "presence_penalty must be in [-2, 2], got %g",
               (double)p->presence_penalty);
    if (!in_range(p->frequency_penalty, -2.0f, 2.0f))
        SM_ERR(CM_ERR_OUT_OF_RANGE, "frequency_penalty must be in [-2, 2], got %g",
               (double)p->frequency_penalty);
    if (p->max_tokens < 1)
        SM_ERR(CM_ERR_OUT_OF_RANGE, "max_tokens must be at least 1, got %u", p->max_tokens);
    if (p->top_logprobs > ENG_SAMPLER_MAX_LOGPROBS)
        SM_ERR(CM_ERR_OUT_OF_RANGE, "top_logprobs must be between 0 and %d, got %u",
               ENG_SAMPLER_MAX_LOGPROBS, p->top_logprobs);
    if (p->top_logprobs > 0 && !p->logprobs)
        SM_ERR(CM_ERR_INVALID_ARG, "top_logprobs requires logprobs to be enabled");
    if (p->n_stop > ENG_SAMPLER_MAX_STOP)
        SM_ERR(CM_ERR_OUT_OF_RANGE, "at most %d stop token ids are allowed, got %u",
               ENG_SAMPLER_MAX_STOP, p->n_stop);
    for (uint32_t i = 0; i < p->n_stop; i++)
        if (p->stop_ids[i] < 0 || (vocab && (uint32_t)p->stop_ids[i] >= vocab))
            SM_ERR(CM_ERR_OUT_OF_RANGE, "stop token id %d is outside the vocabulary [0, %u)",
                   (int)p->stop_ids[i], vocab);
    return CM_OK;
}

eng_sampler_stop_t eng_sampler_stop_check(const eng_sampler_params_t *p, int32_t token,
                                          uint32_t n_generated) {
    uint32_t n = p->n_stop < ENG_SAMPLER_MAX_STOP ? p->n_stop : ENG_SAMPLER_MAX_STOP;
    for (uint32_t i = 0; i < n; i++)
        if (p->stop_ids[i] == token) return ENG_SAMPLER_STOP_TOKEN;
    if (n_generated >= p->max_tokens) return ENG_SAMPLER_STOP_LENGTH;
    return ENG_SAMPLER_CONTINUE;
}

/* ------------------------------------------------------------------------ */
/* Generator                                                                */
/* ------------------------------------------------------------------------ */

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double eng_sampler_uniform(uint64_t seed, uint64_t step) {
    uint64_t z = mix64(mix64(seed) + 0x9E3779B97F4A7C15ull * (step + 1));
    return (double)(z >> 11) * 0x1.0p-53;
}

/* ------------------------------------------------------------------------ */
/* Sampler object                                                           */
/* ------------------------------------------------------------------------ */

cm_status_t eng_sampler_new(uint32_t vocab, eng_sampler_t **out) {
    if (!out || vocab == 0 || vocab > ENG_SAMPLER_MAX_VOCAB) return CM_ERR_INVALID_ARG;
    eng_sampler_t *s = cm_calloc(1, sizeof *s);
    if (!s) return CM_ERR_NO_MEMORY;
    s->vocab = vocab;
    s->work = cm_malloc_array(vocab, sizeof *s->work);
    s->ex = cm_malloc_array(vocab, sizeof *s->ex);
    s->stamp = cm_calloc(vocab, sizeof *s->stamp);
    s->count = cm_calloc(vocab, sizeof *s->count);
    s->cand = cm_malloc_array(vocab, sizeof *s->cand);
    s->heap = cm_malloc_array(vocab, sizeof *s->heap);
    if (!s->work || !s->ex || !s->stamp || !s->count || !s->cand || !s->heap) {
        eng_sampler_free(s);
        return CM_ERR_NO_MEMORY;
    }
    *out = s;
    return CM_OK;
}

void eng_sampler_free(eng_sampler_t *s) {
    if (!s) return;
    cm_free(s->work);
    cm_free(s->ex);
    cm_free(s->stamp);
    cm_free(s->count);
    cm_free(s->cand);
    cm_free(s->heap);
    cm_free(s);
}

uint32_t eng_sampler_vocab(const eng_sampler_t *s) { return s->vocab; }

/* A fresh stamp generation; clears the marks when the counter wraps. */
static uint32_t next_gen(eng_sampler_t *s) {
    if (++s->gen == 0) {
        memset(s->stamp, 0, (size_t)s->vocab * sizeof *s->stamp);
        s->gen = 1;
    }
    return s->gen;
}

static void apply_penalties(eng_sampler_t *s, const eng_sampler_params_t *p,
                            const eng_sampler_history_t *h) {
    uint32_t V = s->vocab;
    float *w = s->work;
    if (!h) return;
    if (p->repetition_penalty != 1.0f) {
        uint32_t g = next_gen(s);
        float rp = p->repetition_penalty;
        for (int part = 0; part < 2; part++) {
            const int32_t *t = part ? h->output : h->prompt;
            uint32_t n = part ? h->n_output : h->n_prompt;
            if (!t) continue;
            for (uint32_t i = 0; i < n; i++) {
                int32_t id = t[i];
                if (id < 0 || (uint32_t)id >= V || s->stamp[id] == g) continue;
                s->stamp[id] = g;
                w[id] = w[id] < 0 ? w[id] * rp : w[id] / rp;
            }
        }
    }
    if ((p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f) && h->output && h->n_output) {
        uint32_t g = next_gen(s);
        for (uint32_t i = 0; i < h->n_output; i++) {
            int32_t id = h->output[i];
            if (id < 0 || (uint32_t)id >= V) continue;
            if (s->stamp[id] != g) {
                s->stamp[id] = g;
                s->count[id] = 0;
            }
            s->count[id]++;
        }
        for (uint32_t i = 0; i < h->n_output; i++) {
            int32_t id = h->output[i];
            if (id < 0 || (uint32_t)id >= V || s->count[id] == 0) continue;
            w[id] -= p->frequency_penalty * (float)s->count[id] + p->presence_penalty;
            s->count[id] = 0; /* applied once per distinct token */
        }
    }
}

/* Descending value, then ascending id. */
static int pair_cmp_desc(const void *a, const void *b) {
    const sm_pair_t *x = a, *y = b;
    if (x->v > y->v) return -1;
    if (x->v < y->v) return 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Strictly ahead in the survivor order: larger value, or equal value and
 * smaller id. A total order, so selections are deterministic. */
static inline bool ahead(const sm_pair_t *a, const sm_pair_t *b) {
    return a->v > b->v || (a->v == b->v && a->id < b->id);
}

/* Min-heap on value (the root is the smallest of the k largest so far). */
static void heap_sift_down(sm_pair_t *hp, uint32_t n, uint32_t i) {
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && hp[l].v < hp[m].v) m = l;
        if (r < n && hp[r].v < hp[m].v) m = r;
        if (m == i) return;
        sm_pair_t t = hp[i];
        hp[i] = hp[m];
        hp[m] = t;
        i = m;
    }
}

/* Value of the k-th largest entry of w[0..V) (1 <= k <= V). */
static float kth_largest(sm_pair_t *hp, const float *w, uint32_t V, uint32_t k) {
    for (uint32_t i = 0; i < k; i++) hp[i] = (sm_pair_t){w[i], 0.0f, (int32_t)i};
    for (uint32_t i = k / 2; i-- > 0;) heap_sift_down(hp, k, i);
    float root = hp[0].v;
    for (uint32_t i = k; i < V; i++) {
        if (w[i] > root) {
            hp[0] = (sm_pair_t){w[i], 0.0f, (int32_t)i};
            heap_sift_down(hp, k, 0);
            root = hp[0].v;
        }
    }
    return root;
}

/*
 * exp(x) for x <= 0 in float: Cephes' expf polynomial after reduction by
 * ln 2 (relative error about 2e-7), 0 below -87. Branch-free, so the loops
 * calling it vectorize.
 */
static inline float fast_exp(float x) {
    float xc = x < -87.0f ? -87.0f : x;
    float n = __builtin_rintf(xc * 1.44269504088896341f);
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float q = 1.9875691500e-4f;
    q = q * r + 1.3981999507e-3f;
    q = q * r + 8.3334519073e-3f;
    q = q * r + 4.1665795894e-2f;
    q = q * r + 1.6666665459e-1f;
    q = q * r + 5.0000001201e-1f;
    q = q * r * r + r + 1.0f;
    union {
        uint32_t u;
        float f;
    } sc;
    sc.u = (uint32_t)((int32_t)n + 127) << 23;
    return x < -87.0f ? 0.0f : q * sc.f;
}

/* ------------------------------------------------------------------------ */
/* Row kernels: 8-wide GCC vector code, cloned for AVX-512, AVX2 and the    */
/* baseline and picked at load time (ifunc), so one binary runs anywhere.   */
/* ------------------------------------------------------------------------ */

/* The helpers below pass 32-byte vectors by value; they are static and always
 * inlined into the clones, so no ABI boundary is crossed. */
#pragma GCC diagnostic ignored "-Wpsabi"

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

/* ThreadSanitizer instruments the ifunc resolvers target_clones creates,
 * and they run before its runtime is up (a crash at load time): under TSan
 * the rows use the baseline code only. */
#if defined(__SANITIZE_THREAD__)
#define SM_CLONES
#else
#define SM_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif

static inline __attribute__((always_inline)) v8f v8f_load(const float *p) {
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline __attribute__((always_inline)) void v8f_store(float *p, v8f v) {
    memcpy(p, &v, sizeof v);
}

static inline __attribute__((always_inline)) v8f v8f_set1(float x) {
    return (v8f){x, x, x, x, x, x, x, x};
}

static inline __attribute__((always_inline)) v8f v8f_select(v8i mask, v8f a, v8f b) {
    return (v8f)(((v8i)a & mask) | ((v8i)b & ~mask));
}

/* fast_exp on 8 lanes (same polynomial, round-to-nearest by the 1.5 * 2^23
 * trick). */
static inline __attribute__((always_inline)) v8f v8f_exp(v8f x) {
    v8i under = x < v8f_set1(-87.0f);
    v8f xc = v8f_select(under, v8f_set1(-87.0f), x);
    const v8f magic = v8f_set1(12582912.0f);
    v8f n = (xc * v8f_set1(1.44269504088896341f) + magic) - magic;
    v8f r = xc - n * v8f_set1(0.693359375f);
    r = r - n * v8f_set1(-2.12194440e-4f);
    v8f q = v8f_set1(1.9875691500e-4f);
    q = q * r + v8f_set1(1.3981999507e-3f);
    q = q * r + v8f_set1(8.3334519073e-3f);
    q = q * r + v8f_set1(4.1665795894e-2f);
    q = q * r + v8f_set1(1.6666665459e-1f);
    q = q * r + v8f_set1(5.0000001201e-1f);
    q = q * r * r + r + v8f_set1(1.0f);
    v8i ni = __builtin_convertvector(n, v8i);
    v8f sc = (v8f)((ni + 127) << 23);
    return v8f_select(under, v8f_set1(0.0f), q * sc);
}

static inline __attribute__((always_inline)) float v8f_hmax(v8f v) {
    float m = v[0];
    for (int k = 1; k < 8; k++) m = v[k] > m ? v[k] : m;
    return m;
}

static inline __attribute__((always_inline)) double v8f_hsum(v8f v) {
    double t = 0.0;
    for (int k = 0; k < 8; k++) t += v[k];
    return t;
}

/* Copies x to w; returns the number of finite-or-(-inf) entries that are not
 * -inf, or UINT32_MAX when x holds a NaN or +inf. */
SM_CLONES static uint32_t row_copy_check(float *w, const float *x, uint32_t V) {
    uint32_t i = 0, n_ninf = 0;
    v8i bad = {0}, ninf = {0};
    const v8f pinf = v8f_set1(INFINITY), minf = v8f_set1(-INFINITY);
    for (; i + 8 <= V; i += 8) {
        v8f v = v8f_load(x + i);
        bad |= (v != v) | (v == pinf);
        ninf -= (v == minf);
        v8f_store(w + i, v);
    }
    uint32_t b = 0;
    for (int k = 0; k < 8; k++) {
        b |= (uint32_t)bad[k];
        n_ninf += (uint32_t)ninf[k];
    }
    for (; i < V; i++) {
        float v = x[i];
        b |= (v != v) | (v == INFINITY);
        n_ninf += v == -INFINITY;
        w[i] = v;
    }
    return b ? UINT32_MAX : V - n_ninf;
}

SM_CLONES static float row_max(const float *w, uint32_t V) {
    uint32_t i = 0;
    v8f m = v8f_set1(-INFINITY);
    for (; i + 8 <= V; i += 8) {
        v8f v = v8f_load(w + i);
        m = v8f_select(v > m, v, m);
    }
    float r = v8f_hmax(m);
    for (; i < V; i++) r = w[i] > r ? w[i] : r;
    return r;
}

SM_CLONES static uint32_t row_count_ge(const float *e, uint32_t V, float thr) {
    uint32_t i = 0, n = 0;
    v8i cnt = {0};
    const v8f tv = v8f_set1(thr);
    for (; i + 8 <= V; i += 8) cnt -= v8f_load(e + i) >= tv;
    for (int k = 0; k < 8; k++) n += (uint32_t)cnt[k];
    for (; i < V; i++) n += e[i] >= thr;
    return n;
}

SM_CLONES static void row_div(float *w, uint32_t V, float t) {
    uint32_t i = 0;
    const v8f tv = v8f_set1(t);
    for (; i + 8 <= V; i += 8) v8f_store(w + i, v8f_load(w + i) / tv);
    for (; i < V; i++) w[i] = w[i] / t;
}

/* e[i] = exp(w[i] - m) (e may be NULL: sum only); returns the sum, accumulated
 * in float lanes per chunk of 1024 and in double across chunks. */
SM_CLONES static double row_exp_sum(float *e, const float *w, uint32_t V, float m) {
    uint32_t i = 0;
    double z = 0.0;
    const v8f mv = v8f_set1(m);
    while (i + 8 <= V) {
        v8f acc = v8f_set1(0.0f);
        uint32_t end = i + 1024 < V ? i + 1024 : V;
        for (; i + 8 <= end; i += 8) {
            v8f ev = v8f_exp(v8f_load(w + i) - mv);
            if (e) v8f_store(e + i, ev);
            acc += ev;
        }
        z += v8f_hsum(acc);
    }
    for (; i < V; i++) {
        float ev = fast_exp(w[i] - m);
        if (e) e[i] = ev;
        z += ev;
    }
    return z;
}

/*
 * Top-p by partial selection: reorders c[0..n) so that the survivors come
 * first and returns their count: in the (value desc, id asc) order, a token
 * survives while the mass strictly ahead of it is below @target. Expected
 * O(n): a quickselect that recurses into one side, guided by mass.
 */
static uint32_t select_by_mass(sm_pair_t *c, uint32_t n, double target) {
    uint32_t lo = 0, hi = n, seed = 0x9e3779b9u;
    double acc = 0.0; /* mass of c[0..lo), all of which survive */
    while (hi - lo > 32) {
        /* Median of three pseudo-random picks (deterministic). */
        uint32_t span = hi - lo, idx[3];
        for (int k = 0; k < 3; k++) {
            seed = seed * 1664525u + 1013904223u;
            idx[k] = lo + (uint32_t)(((uint64_t)seed * span) >> 32);
        }
        const sm_pair_t *a = &c[idx[0]], *b = &c[idx[1]], *d = &c[idx[2]], *med;
        if (ahead(a, b))
            med = ahead(b, d) ? b : (ahead(a, d) ? d : a);
        else
            med = ahead(a, d) ? a : (ahead(b, d) ? d : b);
        sm_pair_t piv = *med;
        /* Partition: entries ahead of the pivot first. */
        uint32_t u = lo;
        double mass_u = 0.0;
        for (uint32_t i = lo; i < hi; i++) {
            if (ahead(&c[i], &piv)) {
                mass_u += c[i].e;
                sm_pair_t t = c[u];
                c[u] = c[i];
                c[i] = t;
                u++;
            }
        }
        if (u > lo && acc + mass_u >= target) {
            /* The cut lies among the entries ahead of the pivot. The first
             * one always survives (the mass ahead of it is acc < target). */
            hi = u;
            continue;
        }
        /* Everything ahead of the pivot survives, and so does the pivot. */
        acc += mass_u;
        for (uint32_t i = u; i < hi; i++)
            if (c[i].id == piv.id) {
                sm_pair_t t = c[u];
                c[u] = c[i];
                c[i] = t;
                break;
            }
        acc += c[u].e;
        lo = u + 1;
        if (acc >= target) return lo;
    }
    qsort(c + lo, hi - lo, sizeof *c, pair_cmp_desc);
    for (uint32_t i = lo; i < hi; i++) {
        if (acc >= target && i > 0) return i;
        acc += c[i].e;
    }
    return hi;
}

/*
 * A lower bound on the exponentials that can survive top-p, so that only
 * the plausible nucleus takes part in the selection. Tokens are bucketed by
 * the binary exponent of e (e <= 1); walking up from the smallest bucket,
 * whole buckets are excluded while their cumulative mass stays within
 * (1 - top_p) / 2 of the total. HF's rule (drop tokens in ascending order
 * while the cumulative mass stays <= 1 - top_p) drops every excluded token,
 * since they are the smallest ones and together hold less than that.
 */
static float nucleus_floor(const float *e, uint32_t V, double z, float top_p) {
    float mass[4][130]; /* float is plenty for a bound with a factor-2 margin */
    memset(mass, 0, sizeof mass);
    uint32_t i = 0;
    for (; i + 4 <= V; i += 4)
        for (int k = 0; k < 4; k++) {
            uint32_t bits;
            memcpy(&bits, &e[i + k], 4);
            mass[k][bits >> 23] += e[i + k]; /* exponent field, 0..127 */
        }
    for (; i < V; i++) {
        uint32_t bits;
        memcpy(&bits, &e[i], 4);
        mass[0][bits >> 23] += e[i];
    }
    double budget = 0.5 * (1.0 - (double)top_p) * z, cum = 0.0;
    uint32_t b = 0;
    for (; b < 128; b++) {
        double mb = (double)mass[0][b] + mass[1][b] + mass[2][b] + mass[3][b];
        if (cum + mb > budget) break;
        cum += mb;
    }
    /* Smallest float with exponent field b; b == 0 keeps everything > 0. */
    uint32_t bits = b << 23;
    float thr;
    memcpy(&thr, &bits, 4);
    return b == 0 ? 1e-45f : thr;
}

/* Every finite logit of the row overflowed to -inf (huge negative logits
 * under a repetition penalty or a tiny temperature), so exp(v - max) has
 * no finite reference: the distribution is concentrated on the largest
 * logit of the row as given; take the first, as the +inf case does. */
static cm_status_t all_overflowed(const float *logits, uint32_t V, int32_t *greedy_tok) {
    uint32_t best = 0;
    for (uint32_t i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    *greedy_tok = (int32_t)best;
    return CM_OK;
}

/*
 * Runs the pipeline on @logits. For greedy parameters sets *greedy_tok.
 * Otherwise leaves the survivors in s->cand[0..*n_cand) with e = exp(v - max)
 * and *z = the sum of their e.
 */
static cm_status_t prepare(eng_sampler_t *s, const eng_sampler_params_t *p, const float *logits,
                           const eng_sampler_history_t *h, int32_t *greedy_tok, uint32_t *n_cand,
                           double *z) {
    uint32_t V = s->vocab;
    if (!p || !logits) return CM_ERR_INVALID_ARG;
    if (eng_sampler_params_validate(p, 0, NULL, 0) != CM_OK) return CM_ERR_INVALID_ARG;
    float *w = s->work;
    uint32_t n_finite = row_copy_check(w, logits, V);
    if (n_finite == UINT32_MAX || n_finite == 0) return CM_ERR_OUT_OF_RANGE;
    apply_penalties(s, p, h);

    float m = row_max(w, V);
    *greedy_tok = -1;
    if (m == -INFINITY) return all_overflowed(logits, V, greedy_tok);
    if (eng_sampler_params_greedy(p) || m == INFINITY) {
        uint32_t best = 0;
        while (w[best] != m) best++;
        *greedy_tok = (int32_t)best;
        return CM_OK;
    }
    if (p->temperature != 1.0f) {
        row_div(w, V, p->temperature);
        m = m / p->temperature; /* division by a positive number keeps the maximum */
    }
    if (m == -INFINITY) return all_overflowed(logits, V, greedy_tok);
    if (m == INFINITY) {
        /* A logit overflowed (huge logits under a tiny temperature or
         * penalty): the distribution is concentrated on the overflowing
         * tokens; take the first, as the temperature -> 0 limit would. */
        uint32_t best = 0;
        while (w[best] != m) best++;
        *greedy_tok = (int32_t)best;
        return CM_OK;
    }

    float *e = s->ex;
    sm_pair_t *c = s->cand;
    uint32_t n = 0;
    double zsum;
    if (p->top_k > 0 && (uint32_t)p->top_k < n_finite) {
        /* Only the top-k survivors need their exponentials. */
        float kth = kth_largest(s->heap, w, V, (uint32_t)p->top_k);
        for (uint32_t i = 0; i < V; i++)
            if (w[i] >= kth) c[n++] = (sm_pair_t){w[i], 0.0f, (int32_t)i};
        zsum = 0.0;
        for (uint32_t i = 0; i < n; i++) zsum += c[i].e = fast_exp(c[i].v - m);
    } else {
        zsum = row_exp_sum(e, w, V, m);
        if (p->top_p < 1.0f) {
            /* Tokens below thr can never survive: all of them together hold
             * at most V * thr = (1 - top_p) / 2 of the mass, and HF's rule
             * drops tokens in ascending order while the cumulative mass stays
             * <= 1 - top_p. When that loose bound leaves many tokens (a flat
             * distribution), a histogram gives a tighter one. */
            float thr = (float)(0.5 * (1.0 - (double)p->top_p) * zsum / (double)V);
            if (row_count_ge(e, V, thr) > 4096) thr = nucleus_floor(e, V, zsum, p->top_p);
            for (uint32_t i = 0; i < V; i++)
                if (e[i] >= thr) c[n++] = (sm_pair_t){w[i], e[i], (int32_t)i};
        } else if (p->min_p > 0.0f) {
            float mp = p->min_p;
            zsum = 0.0;
            for (uint32_t i = 0; i < V; i++)
                if (e[i] >= mp) c[n++] = (sm_pair_t){w[i], e[i], (int32_t)i};
            for (uint32_t i = 0; i < n; i++) zsum += c[i].e;
        } else {
            /* No filter: the draw walks e[] itself in id order. */
            *n_cand = UINT32_MAX;
            *z = zsum;
            return CM_OK;
        }
    }
    if (p->top_p < 1.0f) {
        n = select_by_mass(c, n, (double)p->top_p * zsum);
        zsum = 0.0;
        for (uint32_t i = 0; i < n; i++) zsum += c[i].e;
    }
    if (p->min_p > 0.0f) {
        /* e is the probability relative to the most likely token, which
         * every earlier filter keeps. */
        float mp = p->min_p;
        uint32_t k = 0;
        zsum = 0.0;
        for (uint32_t i = 0; i < n; i++) {
            c[k] = c[i];
            k += c[i].e >= mp;
        }
        n = k;
        for (uint32_t i = 0; i < n; i++) zsum += c[i].e;
    }
    *n_cand = n;
    *z = zsum;
    return CM_OK;
}

/* Worse in the top-logprob order: smaller value, or equal value and larger id. */
static inline bool lp_worse(float av, int32_t aid, float bv, int32_t bid) {
    return av < bv || (av == bv && aid > bid);
}

static void lp_sift_down(sm_pair_t *hp, uint32_t n, uint32_t i) {
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && lp_worse(hp[l].v, hp[l].id, hp[m].v, hp[m].id)) m = l;
        if (r < n && lp_worse(hp[r].v, hp[r].id, hp[m].v, hp[m].id)) m = r;
        if (m == i) return;
        sm_pair_t t = hp[i];
        hp[i] = hp[m];
        hp[m] = t;
        i = m;
    }
}

static void fill_logprobs(const eng_sampler_t *s, const eng_sampler_params_t *p,
                          const float *logits, eng_sample_t *out) {
    uint32_t V = s->vocab;
    float m = row_max(logits, V);
    double sum = row_exp_sum(NULL, logits, V, m);
    double lse = (double)m + log(sum);
    out->logprob = (float)((double)logits[out->token] - lse);
    uint32_t k = p->top_logprobs < V ? p->top_logprobs : V;
    sm_pair_t hp[ENG_SAMPLER_MAX_LOGPROBS];
    uint32_t n = 0;
    for (uint32_t i = 0; i < V && k > 0; i++) {
        if (n < k) {
            hp[n++] = (sm_pair_t){logits[i], 0.0f, (int32_t)i};
            if (n == k)
                for (uint32_t j = k / 2; j-- > 0;) lp_sift_down(hp, k, j);
        } else if (lp_worse(hp[0].v, hp[0].id, logits[i], (int32_t)i)) {
            hp[0] = (sm_pair_t){logits[i], 0.0f, (int32_t)i};
            lp_sift_down(hp, k, 0);
        }
    }
    qsort(hp, n, sizeof *hp, pair_cmp_desc);
    for (uint32_t i = 0; i < n; i++)
        out->top[i] = (eng_logprob_t){hp[i].id, (float)((double)hp[i].v - lse)};
    out->n_top = n;
}

cm_status_t eng_sampler_sample(eng_sampler_t *s, const eng_sampler_params_t *p, const float *logits,
                               const eng_sampler_history_t *h, uint64_t step, eng_sample_t *out) {
    if (!s || !out) return CM_ERR_INVALID_ARG;
    int32_t tok;
    uint32_t n;
    double z;
    cm_status_t st = prepare(s, p, logits, h, &tok, &n, &z);
    if (st != CM_OK) return st;
    if (tok < 0) {
        double target = eng_sampler_uniform(p->seed, step) * z, acc = 0.0;
        if (n == UINT32_MAX) {
            const float *e = s->ex;
            tok = -1;
            for (uint32_t i = 0; i < s->vocab; i++) {
                if (e[i] > 0.0f) tok = (int32_t)i; /* last possible token */
                acc += e[i];
                if (acc > target && e[i] > 0.0f) break;
            }
        } else {
            const sm_pair_t *c = s->cand;
            tok = c[n - 1].id;
            for (uint32_t i = 0; i < n; i++) {
                acc += c[i].e;
                if (acc > target) {
                    tok = c[i].id;
                    break;
                }
            }
        }
    }
    memset(out, 0, sizeof *out);
    out->token = tok;
    if (p->logprobs) fill_logprobs(s, p, logits, out);
    return CM_OK;
}

cm_status_t eng_sampler_probs(eng_sampler_t *s, const eng_sampler_params_t *p, const float *logits,
                              const eng_sampler_history_t *h, float *probs) {
    if (!s || !probs) return CM_ERR_INVALID_ARG;
    int32_t tok;
    uint32_t n;
    double z;
    cm_status_t st = prepare(s, p, logits, h, &tok, &n, &z);
    if (st != CM_OK) return st;
    memset(probs, 0, (size_t)s->vocab * sizeof *probs);
    if (tok >= 0) {
        probs[tok] = 1.0f;
        return CM_OK;
    }
    if (n == UINT32_MAX) {
        for (uint32_t i = 0; i < s->vocab; i++) probs[i] = (float)(s->ex[i] / z);
        return CM_OK;
    }
    for (uint32_t i = 0; i < n; i++) probs[s->cand[i].id] = (float)(s->cand[i].e / z);
    return CM_OK;
}
