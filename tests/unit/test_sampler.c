/*
 * test_sampler.c - the sampler (eng_sampler.h) against Hugging Face
 * transformers' logits processors (tests/fixtures/gen_sampler_goldens.py),
 * plus statistical and determinism checks.
 */
#include <cjson/cJSON.h>

#include "cm_base.h"
#include "eng_sampler.h"
#include "tt.h"

static cJSON *load_goldens(void) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/sampler_goldens.json", tt_root());
    char *buf = tt_read_file(path, NULL);
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    TT_ASSERT_MSG(j, "cannot parse %s", path);
    return j;
}

/* One fixture case, unpacked. Arrays are malloc'ed. */
typedef struct {
    eng_sampler_params_t p;
    float *logits, *probs;
    int32_t *prompt, *output;
    uint32_t V, n_prompt, n_output;
    eng_sampler_history_t h;
} gcase_t;

static float *float_array(const cJSON *a, uint32_t *n) {
    uint32_t k = (uint32_t)cJSON_GetArraySize(a), i = 0;
    float *out = malloc((k ? k : 1) * sizeof *out);
    const cJSON *e;
    cJSON_ArrayForEach(e, a) out[i++] = (float)e->valuedouble;
    *n = k;
    return out;
}

static int32_t *int_array(const cJSON *a, uint32_t *n) {
    uint32_t k = (uint32_t)cJSON_GetArraySize(a), i = 0;
    int32_t *out = malloc((k ? k : 1) * sizeof *out);
    const cJSON *e;
    cJSON_ArrayForEach(e, a) out[i++] = (int32_t)e->valuedouble;
    *n = k;
    return out;
}

static void load_case(const cJSON *c, gcase_t *g) {
    memset(g, 0, sizeof *g);
    const cJSON *pj = cJSON_GetObjectItem(c, "params");
    eng_sampler_params_default(&g->p);
    g->p.temperature = (float)cJSON_GetObjectItem(pj, "temperature")->valuedouble;
    g->p.top_k = (int32_t)cJSON_GetObjectItem(pj, "top_k")->valuedouble;
    g->p.top_p = (float)cJSON_GetObjectItem(pj, "top_p")->valuedouble;
    g->p.min_p = (float)cJSON_GetObjectItem(pj, "min_p")->valuedouble;
    g->p.repetition_penalty = (float)cJSON_GetObjectItem(pj, "repetition_penalty")->valuedouble;
    g->p.presence_penalty = (float)cJSON_GetObjectItem(pj, "presence_penalty")->valuedouble;
    g->p.frequency_penalty = (float)cJSON_GetObjectItem(pj, "frequency_penalty")->valuedouble;
    g->logits = float_array(cJSON_GetObjectItem(c, "logits"), &g->V);
    uint32_t np = 0;
    const cJSON *pr = cJSON_GetObjectItem(c, "probs");
    g->probs = pr ? float_array(pr, &np) : NULL;
    g->prompt = int_array(cJSON_GetObjectItem(c, "prompt"), &g->n_prompt);
    g->output = int_array(cJSON_GetObjectItem(c, "output"), &g->n_output);
    g->h = (eng_sampler_history_t){g->prompt, g->n_prompt, g->output, g->n_output};
}

static void free_case(gcase_t *g) {
    free(g->logits);
    free(g->probs);
    free(g->prompt);
    free(g->output);
}

TT_TEST(sampler, distributions_match_transformers) {
    cJSON *j = load_goldens();
    const cJSON *c;
    int n_cases = 0;
    double worst = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "cases")) {
        gcase_t g;
        load_case(c, &g);
        eng_sampler_t *s;
        TT_ASSERT_EQ_INT(eng_sampler_new(g.V, &s), CM_OK);
        float *probs = malloc(g.V * sizeof *probs);
        TT_ASSERT_EQ_INT(eng_sampler_probs(s, &g.p, g.logits, &g.h, probs), CM_OK);
        for (uint32_t i = 0; i < g.V; i++) {
            /* Same survivors, same renormalized probabilities. */
            TT_ASSERT_MSG((probs[i] > 0) == (g.probs[i] > 0),
                          "case %d token %u: kept %d, transformers kept %d (p=%g vs %g)", n_cases,
                          i, probs[i] > 0, g.probs[i] > 0, (double)probs[i], (double)g.probs[i]);
            double d = fabs((double)probs[i] - g.probs[i]);
            TT_ASSERT_MSG(d <= 2e-6 + 2e-5 * g.probs[i], "case %d token %u: %.9g vs %.9g", n_cases,
                          i, (double)probs[i], (double)g.probs[i]);
            if (d > worst) worst = d;
        }
        free(probs);
        eng_sampler_free(s);
        free_case(&g);
        n_cases++;
    }
    TT_ASSERT(n_cases >= 50);
    if (getenv("TT_VERBOSE")) fprintf(stderr, "%d cases, worst abs diff %.3g\n", n_cases, worst);
    cJSON_Delete(j);
}

TT_TEST(sampler, greedy_is_argmax_lowest_id_on_ties) {
    cJSON *j = load_goldens();
    const cJSON *c;
    int n = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "greedy")) {
        gcase_t g;
        load_case(c, &g);
        eng_sampler_t *s;
        TT_ASSERT_EQ_INT(eng_sampler_new(g.V, &s), CM_OK);
        eng_sample_t out;
        g.p.seed = (uint64_t)n * 77;
        TT_ASSERT_EQ_INT(eng_sampler_sample(s, &g.p, g.logits, &g.h, (uint64_t)n, &out), CM_OK);
        TT_ASSERT_EQ_INT(out.token, (int)cJSON_GetObjectItem(c, "token")->valuedouble);
        eng_sampler_free(s);
        free_case(&g);
        n++;
    }
    TT_ASSERT(n >= 10);
    /* All equal: token 0. */
    float flat[7] = {1, 1, 1, 1, 1, 1, 1};
    eng_sampler_t *s;
    TT_ASSERT_EQ_INT(eng_sampler_new(7, &s), CM_OK);
    eng_sampler_params_t p;
    eng_sampler_params_default(&p);
    p.temperature = 0;
    eng_sample_t out;
    TT_ASSERT_EQ_INT(eng_sampler_sample(s, &p, flat, NULL, 0, &out), CM_OK);
    TT_ASSERT_EQ_INT(out.token, 0);
    eng_sampler_free(s);
    cJSON_Delete(j);
}

TT_TEST(sampler, uniform_matches_python_reference) {
    cJSON *j = load_goldens();
    const cJSON *c;
    int n = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "uniform")) {
        uint64_t seed = strtoull(cJSON_GetObjectItem(c, "seed")->valuestring, NULL, 10);
        uint64_t step = (uint64_t)cJSON_GetObjectItem(c, "step")->valuedouble;
        double want = strtod(cJSON_GetObjectItem(c, "u")->valuestring, NULL);
        double got = eng_sampler_uniform(seed, step);
        TT_ASSERT_MSG(got == want, "seed %llu step %llu: %a vs %a", (unsigned long long)seed,
                      (unsigned long long)step, got, want);
        TT_ASSERT(got >= 0.0 && got < 1.0);
        n++;
    }
    TT_ASSERT(n >= 20);
    cJSON_Delete(j);
}

TT_TEST(sampler, logprobs_are_raw_log_softmax) {
    cJSON *j = load_goldens();
    const cJSON *c;
    int n_chosen_checked = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "cases")) {
        gcase_t g;
        load_case(c, &g);
        eng_sampler_t *s;
        TT_ASSERT_EQ_INT(eng_sampler_new(g.V, &s), CM_OK);
        g.p.logprobs = true;
        g.p.top_logprobs = 5;
        g.p.seed = 3;
        eng_sample_t out;
        TT_ASSERT_EQ_INT(eng_sampler_sample(s, &g.p, g.logits, &g.h, 9, &out), CM_OK);
        TT_ASSERT_EQ_INT(out.n_top, 5);
        const cJSON *ids = cJSON_GetObjectItem(c, "top_ids"),
                    *lps = cJSON_GetObjectItem(c, "top_logprobs");
        for (int k = 0; k < 5; k++) {
            TT_ASSERT_EQ_INT(out.top[k].token, (int)cJSON_GetArrayItem(ids, k)->valuedouble);
            TT_ASSERT_NEAR(out.top[k].logprob, cJSON_GetArrayItem(lps, k)->valuedouble, 2e-5);
        }
        /* The chosen token's logprob is its raw log_softmax value. */
        for (int k = 0; k < 5; k++)
            if (out.token == (int)cJSON_GetArrayItem(ids, k)->valuedouble) {
                TT_ASSERT_NEAR(out.logprob, cJSON_GetArrayItem(lps, k)->valuedouble, 2e-5);
                n_chosen_checked++;
            }
        /* Without logprobs nothing is reported. */
        g.p.logprobs = false;
        g.p.top_logprobs = 0;
        TT_ASSERT_EQ_INT(eng_sampler_sample(s, &g.p, g.logits, &g.h, 9, &out), CM_OK);
        TT_ASSERT(out.n_top == 0 && out.logprob == 0.0f);
        eng_sampler_free(s);
        free_case(&g);
    }
    if (getenv("TT_VERBOSE")) fprintf(stderr, "chosen checked %d\n", n_chosen_checked);
    TT_ASSERT(n_chosen_checked >= 20);
    cJSON_Delete(j);
}

/* Empirical frequencies over many seeded draws follow the transformers
 * distribution: Pearson chi-square below the 1e-4 critical value. */
TT_TEST(sampler, draws_follow_filtered_distribution) {
    cJSON *j = load_goldens();
    const cJSON *c;
    int tested = 0, idx = 0;
    enum { N = 20000 };
    /* Upper 1e-4 quantiles of chi-square for df = 1..40, rounded down to 0.01
     * (bisection on torch.special.gammaincc(df / 2, x / 2) = 1e-4). */
    static const double crit[41] = {0,     15.14, 18.42, 21.11, 23.51, 25.74, 27.86, 29.88, 31.83,
                                    33.72, 35.56, 37.37, 39.13, 40.87, 42.58, 44.26, 45.92, 47.57,
                                    49.19, 50.80, 52.39, 53.96, 55.52, 57.07, 58.61, 60.14, 61.66,
                                    63.16, 64.66, 66.15, 67.63, 69.11, 70.57, 72.03, 73.48, 74.93,
                                    76.36, 77.80, 79.22, 80.65, 82.06};
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "cases")) {
        gcase_t g;
        load_case(c, &g);
        uint32_t kept = 0;
        for (uint32_t i = 0; i < g.V; i++) kept += g.probs[i] > 0;
        if (kept < 2 || kept > 40 || (idx++ % 2)) {
            free_case(&g);
            continue;
        }
        eng_sampler_t *s;
        TT_ASSERT_EQ_INT(eng_sampler_new(g.V, &s), CM_OK);
        uint32_t *cnt = calloc(g.V, sizeof *cnt);
        g.p.seed = 1000 + (uint64_t)tested;
        for (uint64_t step = 0; step < N; step++) {
            eng_sample_t out;
            TT_ASSERT_EQ_INT(eng_sampler_sample(s, &g.p, g.logits, &g.h, step, &out), CM_OK);
            TT_ASSERT_MSG(g.probs[out.token] > 0, "drew removed token %d", out.token);
            cnt[out.token]++;
        }
        /* Pool cells with an expected count below 5 into one. */
        double chi = 0, pool_e = 0, pool_o = 0;
        int cells = 0;
        for (uint32_t i = 0; i < g.V; i++) {
            if (g.probs[i] <= 0) continue;
            double e = g.probs[i] * N;
            if (e < 5) {
                pool_e += e;
                pool_o += cnt[i];
                continue;
            }
            chi += (cnt[i] - e) * (cnt[i] - e) / e;
            cells++;
        }
        if (pool_e > 0) {
            chi += (pool_o - pool_e) * (pool_o - pool_e) / (pool_e > 1 ? pool_e : 1);
            cells++;
        }
        int df = cells - 1;
        if (df >= 1) {
            TT_ASSERT_MSG(chi < crit[df], "case seed %llu: chi2 %.2f >= %.2f (df %d)",
                          (unsigned long long)g.p.seed, chi, crit[df], df);
            if (getenv("TT_VERBOSE"))
                fprintf(stderr, "kept %u df %d chi2 %.2f (bound %.2f)\n", kept, df, chi, crit[df]);
            tested++;
        }
        free(cnt);
        eng_sampler_free(s);
        free_case(&g);
    }
    TT_ASSERT(tested >= 8);
    cJSON_Delete(j);
}

static void random_logits(float *l, uint32_t V, uint64_t seed, float scale) {
    uint64_t x = seed;
    for (uint32_t i = 0; i < V; i++) {
        /* Sum of uniforms: roughly normal, deterministic. */
        double a = 0;
        for (int k = 0; k < 4; k++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            a += (double)(x >> 11) * 0x1.0p-53;
        }
        l[i] = (float)((a - 2.0) * scale);
    }
}

/* Same seed and step: same token, whatever else the sampler did in between
 * and in whatever order the rows of a batch are visited. */
TT_TEST(sampler, deterministic_across_runs_and_batch_order) {
    enum { V = 5000, B = 6, STEPS = 40 };
    float *rows = malloc((size_t)B * V * sizeof *rows);
    eng_sampler_params_t p[B];
    int32_t hist[B][STEPS];
    for (int b = 0; b < B; b++) {
        random_logits(rows + (size_t)b * V, V, 100 + (uint64_t)b, 3.0f);
        eng_sampler_params_default(&p[b]);
        p[b].seed = 7777 + (uint64_t)b * 13;
        p[b].temperature = 0.8f + 0.1f * (float)b;
        p[b].top_k = b % 2 ? 50 : 0;
        p[b].top_p = b % 3 ? 0.9f : 1.0f;
        p[b].min_p = b == 4 ? 0.05f : 0.0f;
        p[b].repetition_penalty = b == 5 ? 1.2f : 1.0f;
        p[b].presence_penalty = b == 3 ? 0.5f : 0.0f;
    }
    int32_t tok_fwd[B][STEPS], tok_rev[B][STEPS], tok_alone[B][STEPS];
    eng_sampler_t *s1, *s2;
    TT_ASSERT_EQ_INT(eng_sampler_new(V, &s1), CM_OK);
    TT_ASSERT_EQ_INT(eng_sampler_new(V, &s2), CM_OK);
    for (int pass = 0; pass < 3; pass++) {
        for (int step = 0; step < STEPS; step++) {
            for (int k = 0; k < B; k++) {
                int b = pass == 1 ? B - 1 - k : k;
                if (pass == 2 && b != step % B) continue; /* one row at a time */
                eng_sampler_history_t h = {NULL, 0, hist[b], (uint32_t)step};
                eng_sample_t out;
                eng_sampler_t *s = pass == 1 ? s2 : s1;
                TT_ASSERT_EQ_INT(
                    eng_sampler_sample(s, &p[b], rows + (size_t)b * V, &h, (uint64_t)step, &out),
                    CM_OK);
                int32_t(*dst)[STEPS] = pass == 0 ? tok_fwd : pass == 1 ? tok_rev : tok_alone;
                dst[b][step] = out.token;
                if (pass == 0) hist[b][step] = out.token;
            }
        }
    }
    int distinct = 0;
    for (int b = 0; b < B; b++)
        for (int st = 0; st < STEPS; st++) {
            TT_ASSERT_EQ_INT(tok_fwd[b][st], tok_rev[b][st]);
            if (st % B == b) TT_ASSERT_EQ_INT(tok_fwd[b][st], tok_alone[b][st]);
            distinct += st > 0 && tok_fwd[b][st] != tok_fwd[b][st - 1];
        }
    TT_ASSERT(distinct > B * STEPS / 4); /* it does sample, not repeat */
    /* A different seed changes the stream. */
    eng_sampler_params_t q = p[0];
    q.seed++;
    int diff = 0;
    for (int st = 0; st < STEPS; st++) {
        eng_sampler_history_t h = {NULL, 0, hist[0], (uint32_t)st};
        eng_sample_t out;
        TT_ASSERT_EQ_INT(eng_sampler_sample(s1, &q, rows, &h, (uint64_t)st, &out), CM_OK);
        diff += out.token != tok_fwd[0][st];
    }
    TT_ASSERT(diff > STEPS / 4);
    eng_sampler_free(s1);
    eng_sampler_free(s2);
    free(rows);
}

TT_TEST(sampler, validation_errors_are_clear) {
    eng_sampler_params_t p;
    char err[200];
    eng_sampler_params_default(&p);
    TT_ASSERT_EQ_INT(eng_sampler_params_validate(&p, 100, err, sizeof err), CM_OK);
    TT_ASSERT_STR_EQ(err, "");
#define BAD(field, value, code, needle)                                                \
    do {                                                                               \
        eng_sampler_params_default(&p);                                                \
        p.field = value;                                                               \
        TT_ASSERT_EQ_INT(eng_sampler_params_validate(&p, 100, err, sizeof err), code); \
        TT_ASSERT_MSG(strstr(err, needle), "message '%s' lacks '%s'", err, needle);    \
    } while (0)
    BAD(temperature, -0.1f, CM_ERR_OUT_OF_RANGE, "temperature");
    BAD(temperature, NAN, CM_ERR_OUT_OF_RANGE, "temperature");
    BAD(temperature, INFINITY, CM_ERR_OUT_OF_RANGE, "temperature");
    BAD(top_k, -1, CM_ERR_OUT_OF_RANGE, "top_k");
    BAD(top_p, 0.0f, CM_ERR_OUT_OF_RANGE, "top_p");
    BAD(top_p, 1.5f, CM_ERR_OUT_OF_RANGE, "top_p");
    BAD(top_p, NAN, CM_ERR_OUT_OF_RANGE, "top_p");
    BAD(min_p, -0.5f, CM_ERR_OUT_OF_RANGE, "min_p");
    BAD(min_p, 1.01f, CM_ERR_OUT_OF_RANGE, "min_p");
    BAD(repetition_penalty, 0.0f, CM_ERR_OUT_OF_RANGE, "repetition_penalty");
    BAD(repetition_penalty, 11.0f, CM_ERR_OUT_OF_RANGE, "repetition_penalty");
    BAD(presence_penalty, 2.5f, CM_ERR_OUT_OF_RANGE, "presence_penalty");
    BAD(frequency_penalty, -3.0f, CM_ERR_OUT_OF_RANGE, "frequency_penalty");
    BAD(max_tokens, 0, CM_ERR_OUT_OF_RANGE, "max_tokens");
    BAD(top_logprobs, 21, CM_ERR_OUT_OF_RANGE, "top_logprobs");
    BAD(top_logprobs, 3, CM_ERR_INVALID_ARG, "logprobs");
    BAD(n_stop, 33, CM_ERR_OUT_OF_RANGE, "stop");
    eng_sampler_params_default(&p);
    p.n_stop = 2;
    p.stop_ids[0] = 5;
    p.stop_ids[1] = 100;
    TT_ASSERT_EQ_INT(eng_sampler_params_validate(&p, 100, err, sizeof err), CM_ERR_OUT_OF_RANGE);
    TT_ASSERT(strstr(err, "100"));
    TT_ASSERT_EQ_INT(eng_sampler_params_validate(&p, 101, NULL, 0), CM_OK);
    TT_ASSERT_EQ_INT(eng_sampler_params_validate(NULL, 0, err, sizeof err), CM_ERR_INVALID_ARG);
#undef BAD
    /* The sampler refuses what validation refuses, and bad rows. */
    eng_sampler_t *s;
    TT_ASSERT_EQ_INT(eng_sampler_new(0, &s), CM_ERR_INVALID_ARG);
    TT_ASSERT_EQ_INT(eng_sampler_new(4, &s), CM_OK);
    float row[4] = {0, 1, 2, 3};
    eng_sample_t out;
    eng_sampler_params_default(&p);
    p.top_p = 2.0f;
    TT_ASSERT_EQ_INT(eng_sampler_sample(s, &p, row, NULL, 0, &out), CM_ERR_INVALID_ARG);
    eng_sampler_params_default(&p);
    row[2] = NAN;
    TT_ASSERT_EQ_INT(eng_sampler_sample(s, &p, row, NULL, 0, &out), CM_ERR_OUT_OF_RANGE);
    float ninf[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    TT_ASSERT_EQ_INT(eng_sampler_sample(s, &p, ninf, NULL, 0, &out), CM_ERR_OUT_OF_RANGE);
    /* Masked tokens (-inf) are never drawn; ids outside the vocabulary in the
     * history are ignored. */
    float masked[4] = {-INFINITY, 0.5f, -INFINITY, 0.2f};
    int32_t weird[3] = {-5, 99, 1};
    eng_sampler_history_t h = {weird, 3, weird, 3};
    p.repetition_penalty = 1.5f;
    p.frequency_penalty = 0.5f;
    for (uint64_t st = 0; st < 200; st++) {
        TT_ASSERT_EQ_INT(eng_sampler_sample(s, &p, masked, &h, st, &out), CM_OK);
        TT_ASSERT(out.token == 1 || out.token == 3);
    }
    eng_sampler_free(s);
}

TT_TEST(sampler, stop_conditions) {
    eng_sampler_params_t p;
    eng_sampler_params_default(&p);
    p.max_tokens = 3;
    p.n_stop = 2;
    p.stop_ids[0] = 2;
    p.stop_ids[1] = 151645;
    TT_ASSERT_EQ_INT(eng_sampler_stop_check(&p, 7, 1), ENG_SAMPLER_CONTINUE);
    TT_ASSERT_EQ_INT(eng_sampler_stop_check(&p, 151645, 1), ENG_SAMPLER_STOP_TOKEN);
    TT_ASSERT_EQ_INT(eng_sampler_stop_check(&p, 7, 3), ENG_SAMPLER_STOP_LENGTH);
    TT_ASSERT_EQ_INT(eng_sampler_stop_check(&p, 2, 3), ENG_SAMPLER_STOP_TOKEN);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct {
    double v;
    uint32_t i;
} vi_t;

static int cmp_vi(const void *x, const void *y) {
    double u = ((const vi_t *)x)->v, v = ((const vi_t *)y)->v;
    return (u > v) - (u < v);
}

/* A direct transcription of the HF processors with full sorts, in double. */
static void naive_probs(const float *logits, uint32_t V, const eng_sampler_params_t *p,
                        const eng_sampler_history_t *h, double *out) {
    double *w = malloc(V * sizeof *w), *tmp = malloc(V * sizeof *tmp);
    float *pen = malloc(V * sizeof *pen);
    uint32_t *cnt = calloc(V, sizeof *cnt);
    unsigned char *seen = calloc(V, 1), *rm = calloc(V, 1);
    memcpy(pen, logits, V * sizeof *pen);
    for (uint32_t i = 0; i < h->n_prompt + h->n_output; i++) {
        int32_t t = i < h->n_prompt ? h->prompt[i] : h->output[i - h->n_prompt];
        if (p->repetition_penalty != 1.0f && !seen[t]) {
            seen[t] = 1;
            pen[t] = pen[t] < 0 ? pen[t] * p->repetition_penalty : pen[t] / p->repetition_penalty;
        }
    }
    for (uint32_t i = 0; i < h->n_output; i++) cnt[h->output[i]]++;
    for (uint32_t i = 0; i < V; i++)
        if (cnt[i]) pen[i] -= p->frequency_penalty * (float)cnt[i] + p->presence_penalty;
    for (uint32_t i = 0; i < V; i++) w[i] = (double)(pen[i] / p->temperature);
    if (p->top_k > 0) {
        memcpy(tmp, w, V * sizeof *tmp);
        for (uint32_t i = 0; i < V; i++) tmp[i] = -tmp[i];
        qsort(tmp, V, sizeof *tmp, cmp_double);
        double kth = -tmp[p->top_k - 1];
        for (uint32_t i = 0; i < V; i++) rm[i] |= w[i] < kth;
    }
    double m = -INFINITY, z = 0;
    for (uint32_t i = 0; i < V; i++)
        if (!rm[i] && w[i] > m) m = w[i];
    for (uint32_t i = 0; i < V; i++) z += rm[i] ? 0 : exp(w[i] - m);
    if (p->top_p < 1.0f) {
        /* Ascending order of probability; drop while cumsum <= 1 - top_p. */
        vi_t *a = malloc(V * sizeof *a);
        for (uint32_t i = 0; i < V; i++) a[i] = (vi_t){rm[i] ? -INFINITY : w[i], i};
        qsort(a, V, sizeof *a, cmp_vi);
        double cum = 0;
        for (uint32_t k = 0; k + 1 < V; k++) {
            cum += rm[a[k].i] ? 0 : exp(a[k].v - m) / z;
            if (cum <= 1.0 - p->top_p) rm[a[k].i] = 1;
        }
        free(a);
    }
    if (p->min_p > 0)
        for (uint32_t i = 0; i < V; i++) rm[i] |= exp(w[i] - m) < p->min_p;
    z = 0;
    for (uint32_t i = 0; i < V; i++) z += rm[i] ? 0 : exp(w[i] - m);
    for (uint32_t i = 0; i < V; i++) out[i] = rm[i] ? 0 : exp(w[i] - m) / z;
    free(w);
    free(tmp);
    free(pen);
    free(cnt);
    free(seen);
    free(rm);
}

/* Qwen-sized vocabulary: the pruned paths agree with full sorts, and the
 * time per row is reported (TT_VERBOSE=1). */
TT_TEST_T(sampler, large_vocab_matches_full_sort_reference, 120) {
    enum { V = 151936 };
    float *row = malloc(V * sizeof *row), *probs = malloc(V * sizeof *probs);
    double *ref = malloc(V * sizeof *ref);
    int32_t hist[64];
    for (int i = 0; i < 64; i++) hist[i] = (i * 7919) % V;
    eng_sampler_history_t h = {hist, 32, hist + 32, 32};
    eng_sampler_t *s;
    TT_ASSERT_EQ_INT(eng_sampler_new(V, &s), CM_OK);
    struct {
        const char *name;
        float t, top_p, min_p, rp, pres;
        int32_t top_k;
        bool lp;
    } cfgs[] = {
        {"greedy", 0, 1, 0, 1, 0, 0, false},
        {"temperature", 0.8f, 1, 0, 1, 0, 0, false},
        {"top_p_0.9", 0.7f, 0.9f, 0, 1, 0, 0, false},
        {"top_p_0.99", 1.0f, 0.99f, 0, 1, 0, 0, false},
        {"top_k_50", 1.0f, 1, 0, 1, 0, 50, false},
        {"top_k_40+top_p_0.95", 0.8f, 0.95f, 0, 1, 0, 40, false},
        {"min_p_0.05", 1.0f, 1, 0.05f, 1, 0, 0, false},
        {"penalties+top_p", 0.7f, 0.8f, 0, 1.2f, 0.5f, 0, false},
        {"top_p_0.9+logprobs20", 0.7f, 0.9f, 0, 1, 0, 0, true},
    };
    for (size_t c = 0; c < sizeof cfgs / sizeof cfgs[0]; c++) {
        random_logits(row, V, 4242 + c, 3.0f);
        row[17] += 12.0f; /* a few confident tokens, like a real model */
        row[99] += 11.0f;
        row[12345] += 10.5f;
        eng_sampler_params_t p;
        eng_sampler_params_default(&p);
        p.temperature = cfgs[c].t;
        p.top_p = cfgs[c].top_p;
        p.min_p = cfgs[c].min_p;
        p.top_k = cfgs[c].top_k;
        p.repetition_penalty = cfgs[c].rp;
        p.presence_penalty = cfgs[c].pres;
        p.logprobs = cfgs[c].lp;
        p.top_logprobs = cfgs[c].lp ? 20 : 0;
        TT_ASSERT_EQ_INT(eng_sampler_probs(s, &p, row, &h, probs), CM_OK);
        if (p.temperature > 0) {
            naive_probs(row, V, &p, &h, ref);
            uint32_t kept = 0;
            for (uint32_t i = 0; i < V; i++) {
                TT_ASSERT_MSG((probs[i] > 0) == (ref[i] > 0), "%s: token %u kept %d vs %d",
                              cfgs[c].name, i, probs[i] > 0, ref[i] > 0);
                TT_ASSERT_NEAR(probs[i], ref[i], 1e-7 + 1e-5 * ref[i]);
                kept += ref[i] > 0;
            }
            if (getenv("TT_VERBOSE")) fprintf(stderr, "%-22s kept %6u", cfgs[c].name, kept);
        } else if (getenv("TT_VERBOSE")) {
            fprintf(stderr, "%-22s kept %6u", cfgs[c].name, 1u);
        }
        uint64_t t0 = cm_time_mono_ns();
        int iters = 20;
        for (int it = 0; it < iters; it++) {
            eng_sample_t out;
            TT_ASSERT_EQ_INT(eng_sampler_sample(s, &p, row, &h, (uint64_t)it, &out), CM_OK);
            TT_ASSERT(probs[out.token] > 0);
        }
        double us = (double)(cm_time_mono_ns() - t0) / 1e3 / iters;
        if (getenv("TT_VERBOSE")) fprintf(stderr, "  %8.1f us/row\n", us);
    }
    eng_sampler_free(s);
    free(row);
    free(probs);
    free(ref);
}

TT_TEST(sampler, overflowing_logits_stay_defined) {
    float row[6] = {1e30f, 3e35f, -1e35f, 3e35f, 0.0f, -INFINITY};
    eng_sampler_t *s;
    TT_ASSERT_EQ_INT(eng_sampler_new(6, &s), CM_OK);
    eng_sampler_params_t p;
    eng_sampler_params_default(&p);
    p.temperature = 2e-5f; /* 3e35 / 2e-5 overflows to +inf */
    p.top_p = 0.5f;
    eng_sample_t out;
    float probs[6];
    for (uint64_t st = 0; st < 20; st++) {
        TT_ASSERT_EQ_INT(eng_sampler_sample(s, &p, row, NULL, st, &out), CM_OK);
        TT_ASSERT_EQ_INT(out.token, 1);
    }
    TT_ASSERT_EQ_INT(eng_sampler_probs(s, &p, row, NULL, probs), CM_OK);
    TT_ASSERT(probs[1] == 1.0f && probs[3] == 0.0f);
    /* Moderate values at the same temperature sample normally. */
    float calm[6] = {0.0f, 2e-4f, 0.0f, 0.0f, 0.0f, -INFINITY};
    p.top_p = 1.0f;
    TT_ASSERT_EQ_INT(eng_sampler_probs(s, &p, calm, NULL, probs), CM_OK);
    TT_ASSERT(probs[1] > 0.99f && probs[5] == 0.0f);
    eng_sampler_free(s);
}

/* The other direction (found by tests/fuzz/fuzz_sampler.c): every finite
 * logit overflows to -inf under a tiny temperature or a repetition
 * penalty. Before, exp(v - max) was NaN and the sampler returned CM_OK
 * with token -1; now the largest logit as given wins, as in the limit. */
TT_TEST(sampler, logits_overflowing_to_minus_inf_pick_the_largest) {
    float row[4] = {-INFINITY, -3.1e38f, -3e38f, -INFINITY};
    eng_sampler_t *s;
    TT_ASSERT_EQ_INT(eng_sampler_new(4, &s), CM_OK);
    eng_sampler_params_t p;
    eng_sampler_params_default(&p);
    p.temperature = 0.05f; /* -3e38 / 0.05 overflows to -inf */
    p.logprobs = true;
    p.top_logprobs = 2;
    eng_sample_t out;
    float probs[4];
    for (uint64_t st = 0; st < 8; st++) {
        TT_ASSERT_EQ_INT(eng_sampler_sample(s, &p, row, NULL, st, &out), CM_OK);
        TT_ASSERT_EQ_INT(out.token, 2);
        TT_ASSERT(out.logprob <= 0.0f && !isnan(out.logprob));
    }
    TT_ASSERT_EQ_INT(eng_sampler_probs(s, &p, row, NULL, probs), CM_OK);
    TT_ASSERT(probs[2] == 1.0f && probs[1] == 0.0f && probs[0] == 0.0f);
    /* A repetition penalty of 10 on seen tokens 1 and 2: both -inf. */
    int32_t seen[2] = {1, 2};
    eng_sampler_history_t h = {seen, 2, NULL, 0};
    p.repetition_penalty = 10.0f;
    p.temperature = 1.0f;
    float pen[4] = {-INFINITY, -3.1e38f, -3e38f, -INFINITY};
    TT_ASSERT_EQ_INT(eng_sampler_sample(s, &p, pen, &h, 0, &out), CM_OK);
    TT_ASSERT_EQ_INT(out.token, 2);
    p.temperature = 0.0f; /* greedy: not the first -inf of the row either */
    TT_ASSERT_EQ_INT(eng_sampler_sample(s, &p, pen, &h, 0, &out), CM_OK);
    TT_ASSERT_EQ_INT(out.token, 2);
    eng_sampler_free(s);
}
