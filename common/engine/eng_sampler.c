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
    float v;
    int32_t id;
} sm_pair_t;

struct eng_sampler {
    uint32_t vocab;
    float *work;     /* [vocab] processed logits */
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
    s->stamp = cm_calloc(vocab, sizeof *s->stamp);
    s->count = cm_calloc(vocab, sizeof *s->count);
    s->cand = cm_malloc_array(vocab, sizeof *s->cand);
    s->heap = cm_malloc_array(vocab, sizeof *s->heap);
    if (!s->work || !s->stamp || !s->count || !s->cand || !s->heap) {
        eng_sampler_free(s);
        return CM_ERR_NO_MEMORY;
    }
    *out = s;
    return CM_OK;
}

void eng_sampler_free(eng_sampler_t *s) {
    if (!s) return;
    cm_free(s->work);
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
    for (uint32_t i = 0; i < k; i++) hp[i] = (sm_pair_t){w[i], (int32_t)i};
    for (uint32_t i = k / 2; i-- > 0;) heap_sift_down(hp, k, i);
    for (uint32_t i = k; i < V; i++) {
        if (w[i] > hp[0].v) {
            hp[0] = (sm_pair_t){w[i], (int32_t)i};
            heap_sift_down(hp, k, 0);
        }
    }
    return hp[0].v;
}

/*
 * Runs the pipeline on @logits. For greedy parameters sets *greedy_tok.
 * Otherwise leaves the survivors in s->cand[0..*n_cand) with their processed
 * logits, *mx the largest of them and *z = sum exp(v - mx) over them.
 */
static cm_status_t prepare(eng_sampler_t *s, const eng_sampler_params_t *p, const float *logits,
                           const eng_sampler_history_t *h, int32_t *greedy_tok, uint32_t *n_cand,
                           float *mx, double *z) {
    uint32_t V = s->vocab;
    if (!p || !logits) return CM_ERR_INVALID_ARG;
    if (eng_sampler_params_validate(p, 0, NULL, 0) != CM_OK) return CM_ERR_INVALID_ARG;
    float *w = s->work;
    uint32_t n_finite = 0;
    for (uint32_t i = 0; i < V; i++) {
        float x = logits[i];
        if (isnan(x) || x == INFINITY) return CM_ERR_OUT_OF_RANGE;
        n_finite += x != -INFINITY;
        w[i] = x;
    }
    if (n_finite == 0) return CM_ERR_OUT_OF_RANGE;
    apply_penalties(s, p, h);

    *greedy_tok = -1;
    if (eng_sampler_params_greedy(p)) {
        uint32_t best = 0;
        for (uint32_t i = 1; i < V; i++)
            if (w[i] > w[best]) best = i;
        *greedy_tok = (int32_t)best;
        return CM_OK;
    }
    if (p->temperature != 1.0f) {
        float t = p->temperature;
        for (uint32_t i = 0; i < V; i++) w[i] = w[i] / t;
    }
    float m = -INFINITY;
    for (uint32_t i = 0; i < V; i++) m = w[i] > m ? w[i] : m;

    sm_pair_t *c = s->cand;
    uint32_t n = 0;
    bool sorted = false;
    double zsum = -1.0; /* sum over the current survivors when known */
    if (p->top_k > 0 && (uint32_t)p->top_k < n_finite) {
        float kth = kth_largest(s->heap, w, V, (uint32_t)p->top_k);
        for (uint32_t i = 0; i < V; i++)
            if (w[i] >= kth) c[n++] = (sm_pair_t){w[i], (int32_t)i};
        qsort(c, n, sizeof *c, pair_cmp_desc);
        sorted = true;
    }
    if (p->top_p < 1.0f) {
        double pp = p->top_p;
        if (!sorted) {
            /* Tokens below thr can never be in the nucleus: all of them
             * together hold at most V * thr <= (1 - top_p) / 2 of the mass, so
             * HF's rule (drop while the ascending cumulative mass stays <=
             * 1 - top_p) drops each of them. Only the rest is sorted. */
            double zall = 0.0;
            for (uint32_t i = 0; i < V; i++) zall += exp((double)w[i] - m);
            double thr = 0.5 * (1.0 - pp) * zall / (double)V;
            for (uint32_t i = 0; i < V; i++)
                if (exp((double)w[i] - m) >= thr) c[n++] = (sm_pair_t){w[i], (int32_t)i};
            qsort(c, n, sizeof *c, pair_cmp_desc);
            sorted = true;
            zsum = zall;
        } else {
            zsum = 0.0;
            for (uint32_t i = 0; i < n; i++) zsum += exp((double)c[i].v - m);
        }
        /* Keep a token while the mass strictly above it is below top_p. */
        double cum = 0.0, limit = pp * zsum;
        uint32_t keep = 0;
        while (keep < n && (keep == 0 || cum < limit)) cum += exp((double)c[keep++].v - m);
        n = keep;
        zsum = cum;
    }
    if (p->min_p > 0.0f) {
        double mp = p->min_p;
        if (sorted) {
            uint32_t keep = 0;
            while (keep < n && exp((double)c[keep].v - m) >= mp) keep++;
            n = keep ? keep : 1;
        } else {
            for (uint32_t i = 0; i < V; i++)
                if (exp((double)w[i] - m) >= mp) c[n++] = (sm_pair_t){w[i], (int32_t)i};
        }
        zsum = -1.0;
    } else if (!sorted) {
        for (uint32_t i = 0; i < V; i++)
            if (w[i] != -INFINITY) c[n++] = (sm_pair_t){w[i], (int32_t)i};
    }
    if (zsum < 0.0) {
        zsum = 0.0;
        for (uint32_t i = 0; i < n; i++) zsum += exp((double)c[i].v - m);
    }
    *n_cand = n;
    *mx = m;
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
    float m = -INFINITY;
    for (uint32_t i = 0; i < V; i++) m = logits[i] > m ? logits[i] : m;
    double sum = 0.0;
    for (uint32_t i = 0; i < V; i++) sum += exp((double)logits[i] - m);
    double lse = (double)m + log(sum);
    out->logprob = (float)((double)logits[out->token] - lse);
    uint32_t k = p->top_logprobs < V ? p->top_logprobs : V;
    sm_pair_t hp[ENG_SAMPLER_MAX_LOGPROBS];
    uint32_t n = 0;
    for (uint32_t i = 0; i < V && k > 0; i++) {
        if (n < k) {
            hp[n++] = (sm_pair_t){logits[i], (int32_t)i};
            if (n == k)
                for (uint32_t j = k / 2; j-- > 0;) lp_sift_down(hp, k, j);
        } else if (lp_worse(hp[0].v, hp[0].id, logits[i], (int32_t)i)) {
            hp[0] = (sm_pair_t){logits[i], (int32_t)i};
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
    float m;
    double z;
    cm_status_t st = prepare(s, p, logits, h, &tok, &n, &m, &z);
    if (st != CM_OK) return st;
    if (tok < 0) {
        const sm_pair_t *c = s->cand;
        double target = eng_sampler_uniform(p->seed, step) * z, acc = 0.0;
        tok = c[n - 1].id;
        for (uint32_t i = 0; i < n; i++) {
            acc += exp((double)c[i].v - m);
            if (acc > target) {
                tok = c[i].id;
                break;
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
    float m;
    double z;
    cm_status_t st = prepare(s, p, logits, h, &tok, &n, &m, &z);
    if (st != CM_OK) return st;
    memset(probs, 0, (size_t)s->vocab * sizeof *probs);
    if (tok >= 0) {
        probs[tok] = 1.0f;
        return CM_OK;
    }
    for (uint32_t i = 0; i < n; i++)
        probs[s->cand[i].id] = (float)(exp((double)s->cand[i].v - m) / z);
    return CM_OK;
}
