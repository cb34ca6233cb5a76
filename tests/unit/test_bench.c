/*
 * test_bench.c - the pieces of `tandem bench serve` / `compare`
 * (bench/bench_load.h): the SSE parser against the WHATWG event-stream rules,
 * chunk decoding, percentiles and summaries against numpy, the Poisson
 * arrival generator and the ShareGPT-like length model against their
 * distributions, prompt words against three real tokenizers, the compare
 * arithmetic against Python (goldens: tests/fixtures/gen_bench_goldens.py),
 * and the HTTP client against small in-process servers.
 */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>

#include "bench_load.h"
#include "tt.h"

static cJSON *load_goldens(void) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/bench_goldens.json", tt_root());
    char *t = tt_read_file(path, NULL);
    cJSON *j = cJSON_Parse(t);
    free(t);
    TT_ASSERT_MSG(j, "cannot parse %s", path);
    return j;
}

/* ---- SSE ---------------------------------------------------------------- */

typedef struct {
    char log[4096];
    size_t len;
    int stop_after; /* stop at this event (1-based); 0 = never */
    int events;
} sse_log_t;

static int sse_collect(void *ud, const char *event, char *data, size_t len) {
    sse_log_t *l = ud;
    TT_ASSERT_EQ_INT(strlen(data), len);
    l->len += (size_t)snprintf(l->log + l->len, sizeof l->log - l->len, "[%s|%s]", event, data);
    l->events++;
    return l->stop_after && l->events >= l->stop_after;
}

/* Feeds @in in pieces of @step bytes (0 = all at once); returns the log. */
static void sse_run(const char *in, size_t step, sse_log_t *l) {
    memset(l, 0, sizeof *l);
    bench_sse_t *p = bench_sse_new(1024, sse_collect, l);
    TT_ASSERT(p);
    size_t n = strlen(in);
    if (step == 0) step = n ? n : 1;
    for (size_t i = 0; i < n; i += step) {
        size_t k = n - i < step ? n - i : step;
        TT_ASSERT_EQ_INT(bench_sse_feed(p, in + i, k), CM_OK);
    }
    bench_sse_free(p);
}

/* The expected logs below are read off the WHATWG HTML "interpreting an
 * event stream" rules, not produced by the parser. */
static void sse_expect(const char *in, const char *want) {
    sse_log_t l;
    for (size_t step = 0; step <= 7; step++) {
        sse_run(in, step, &l);
        TT_ASSERT_MSG(!strcmp(l.log, want), "step %zu: got %s want %s", step, l.log, want);
    }
}

TT_TEST(bench_sse, basic_events_and_line_ends) {
    sse_expect("data: a\n\ndata: b\n\n", "[message|a][message|b]");
    sse_expect("data: a\r\n\r\ndata: b\r\n\r\n", "[message|a][message|b]");
    sse_expect("data: a\r\rdata: b\r\r", "[message|a][message|b]");
    sse_expect("data: a\r\n\ndata: b\n\r\n", "[message|a][message|b]");
    /* No blank line yet: nothing is dispatched. */
    sse_expect("data: a\n", "");
    sse_expect("data: a\n\ndata: tail", "[message|a]");
}

TT_TEST(bench_sse, fields_comments_multiline) {
    /* Spec example: two data lines joined with LF; comment lines ignored. */
    sse_expect(": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third "
               "event\n\n",
               "[message|first event][message|second event][message| third event]");
    sse_expect("data: YHOO\ndata: +2\ndata: 10\n\n", "[message|YHOO\n+2\n10]");
    /* "data" alone appends an empty line; two of them give a single LF. */
    sse_expect("data\n\ndata\ndata\n\ndata:\n", "[message|][message|\n]");
    sse_expect("event: usage\ndata: {}\n\n", "[usage|{}]");
    /* An event with no data is not dispatched, and its type is forgotten. */
    sse_expect("event: x\n\ndata: y\n\n", "[message|y]");
    /* Unknown fields and retry are ignored; a colon in the value stays. */
    sse_expect("foo: bar\nretry: 10\ndata: a:b\n\n", "[message|a:b]");
    sse_expect("data: [DONE]\n\n", "[message|[DONE]]");
}

TT_TEST(bench_sse, every_split_gives_the_same_events) {
    const char *in = ": c\r\ndata: {\"a\": 1}\r\n\r\ndata: x\ndata: y\n\n:k\rdata: z\r\r";
    const char *want = "[message|{\"a\": 1}][message|x\ny][message|z]";
    size_t n = strlen(in);
    for (size_t i = 0; i <= n; i++)
        for (size_t j = i; j <= n; j++) {
            sse_log_t l = {0};
            bench_sse_t *p = bench_sse_new(1024, sse_collect, &l);
            TT_ASSERT_EQ_INT(bench_sse_feed(p, in, i), CM_OK);
            TT_ASSERT_EQ_INT(bench_sse_feed(p, in + i, j - i), CM_OK);
            TT_ASSERT_EQ_INT(bench_sse_feed(p, in + j, n - j), CM_OK);
            TT_ASSERT_MSG(!strcmp(l.log, want), "split %zu/%zu: %s", i, j, l.log);
            bench_sse_free(p);
        }
}

/* Events as "type\x1edata\x1f..." for the reference comparison. */
typedef struct {
    char *log;
    size_t len, cap;
} sse_raw_t;

static int sse_raw(void *ud, const char *event, char *data, size_t len) {
    sse_raw_t *l = ud;
    size_t need = l->len + strlen(event) + len + 3;
    if (need > l->cap) {
        l->cap = need * 2;
        l->log = realloc(l->log, l->cap);
        TT_ASSERT(l->log);
    }
    l->len += (size_t)sprintf(l->log + l->len, "%s\x1e", event);
    memcpy(l->log + l->len, data, len);
    l->len += len;
    l->log[l->len++] = 0x1f;
    l->log[l->len] = 0;
    return 0;
}

TT_TEST(bench_sse, random_streams_match_python_reference) {
    cJSON *g = load_goldens();
    const cJSON *cases = cJSON_GetObjectItem(g, "sse"), *c;
    bench_rng_t rng;
    bench_rng_seed(&rng, 5);
    int n = 0;
    cJSON_ArrayForEach(c, cases) {
        const char *in = cJSON_GetObjectItem(c, "stream")->valuestring;
        size_t len = strlen(in);
        /* The expected log, from the reference's events. */
        sse_raw_t want = {0};
        const cJSON *ev;
        cJSON_ArrayForEach(ev, cJSON_GetObjectItem(c, "events")) {
            char *d = cJSON_GetArrayItem(ev, 1)->valuestring;
            sse_raw(&want, cJSON_GetArrayItem(ev, 0)->valuestring, d, strlen(d));
        }
        for (int split = 0; split < 6; split++) {
            sse_raw_t got = {0};
            bench_sse_t *p = bench_sse_new(4096, sse_raw, &got);
            for (size_t i = 0; i < len;) {
                size_t k = split == 0 ? len : 1 + (size_t)bench_rng_below(&rng, split * 3);
                if (k > len - i) k = len - i;
                TT_ASSERT_EQ_INT(bench_sse_feed(p, in + i, k), CM_OK);
                i += k;
            }
            TT_ASSERT_MSG((!want.len && !got.len) ||
                              (want.len == got.len && !memcmp(want.log, got.log, want.len)),
                          "case %d split %d: got %zu bytes of events, want %zu", n, split, got.len,
                          want.len);
            bench_sse_free(p);
            free(got.log);
        }
        free(want.log);
        n++;
    }
    TT_ASSERT(n >= 100);
    cJSON_Delete(g);
}

TT_TEST(bench_sse, limits_and_cancel) {
    sse_log_t l = {0};
    bench_sse_t *p = bench_sse_new(16, sse_collect, &l);
    TT_ASSERT_EQ_INT(bench_sse_feed(p, "data: 0123456789abcdef\n", 23), CM_ERR_TOO_LARGE);
    bench_sse_reset(p);
    /* Split: the limit holds across feeds too. */
    TT_ASSERT_EQ_INT(bench_sse_feed(p, "data: 01234", 11), CM_OK);
    TT_ASSERT_EQ_INT(bench_sse_feed(p, "56789abcdef", 11), CM_ERR_TOO_LARGE);
    bench_sse_reset(p);
    /* Many short data lines may not grow the event beyond the limit. */
    cm_status_t st = CM_OK;
    for (int i = 0; i < 20 && st == CM_OK; i++) st = bench_sse_feed(p, "data: ab\n", 9);
    TT_ASSERT_EQ_INT(st, CM_ERR_TOO_LARGE);
    bench_sse_reset(p);
    TT_ASSERT_EQ_INT(bench_sse_feed(p, "data: ok\n\n", 10), CM_OK);
    TT_ASSERT_STR_EQ(l.log, "[message|ok]");
    bench_sse_free(p);

    memset(&l, 0, sizeof l);
    l.stop_after = 1;
    p = bench_sse_new(64, sse_collect, &l);
    TT_ASSERT_EQ_INT(bench_sse_feed(p, "data: a\n\ndata: b\n\n", 18), CM_ERR_CANCELED);
    TT_ASSERT_EQ_INT(l.events, 1);
    bench_sse_free(p);
    TT_ASSERT(bench_sse_new(0, sse_collect, NULL) == NULL);
}

/* ---- chunks ------------------------------------------------------------- */

static bench_chunk_t chunk(const char *json, bool chat, cm_status_t want) {
    static char buf[1024];
    snprintf(buf, sizeof buf, "%s", json);
    bench_chunk_t c = {.kind = -1};
    TT_ASSERT_EQ_INT(bench_chunk_parse(buf, strlen(buf), chat, &c), want);
    return c;
}

TT_TEST(bench_chunk, openai_shapes) {
    bench_chunk_t c = chunk("{\"choices\":[{\"index\":0,\"text\":\" caf\\u00e9\\n\","
                            "\"finish_reason\":null}]}",
                            false, CM_OK);
    TT_ASSERT_EQ_INT(c.kind, BENCH_CHUNK_DELTA);
    TT_ASSERT_EQ_INT(c.text_len, 7);
    TT_ASSERT(!memcmp(c.text, " caf\xc3\xa9\n", 7));
    TT_ASSERT(!c.finished);
    TT_ASSERT_EQ_INT(c.prompt_tokens, -1);

    c = chunk("{\"choices\":[{\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}", true,
              CM_OK);
    TT_ASSERT_EQ_INT(c.kind, BENCH_CHUNK_DELTA);
    TT_ASSERT_EQ_INT(c.text_len, 2);
    TT_ASSERT(c.finished);
    /* Role-only first delta of a chat stream: a delta without text. */
    c = chunk("{\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}", true, CM_OK);
    TT_ASSERT_EQ_INT(c.kind, BENCH_CHUNK_OTHER);
    c = chunk("{\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":5}}", false,
              CM_OK);
    TT_ASSERT_EQ_INT(c.kind, BENCH_CHUNK_USAGE);
    TT_ASSERT_EQ_INT(c.prompt_tokens, 12);
    TT_ASSERT_EQ_INT(c.completion_tokens, 5);
    c = chunk(" [DONE] ", false, CM_OK);
    TT_ASSERT_EQ_INT(c.kind, BENCH_CHUNK_DONE);
    c = chunk("{\"error\":{\"message\":\"x\"}}", false, CM_OK);
    TT_ASSERT_EQ_INT(c.kind, BENCH_CHUNK_ERROR);
    c = chunk("{\"object\":\"error\",\"message\":\"x\"}", true, CM_OK);
    TT_ASSERT_EQ_INT(c.kind, BENCH_CHUNK_ERROR);
    /* Junk and non-objects are protocol errors; hostile usage is ignored. */
    chunk("{\"choices\":", false, CM_ERR_PROTOCOL);
    chunk("[1,2]", false, CM_ERR_PROTOCOL);
    chunk("", false, CM_ERR_PROTOCOL);
    c = chunk("{\"usage\":{\"prompt_tokens\":-4,\"completion_tokens\":\"7\"}}", false, CM_OK);
    TT_ASSERT_EQ_INT(c.prompt_tokens, -1);
    TT_ASSERT_EQ_INT(c.completion_tokens, -1);
    TT_ASSERT_EQ_INT(c.kind, BENCH_CHUNK_OTHER);
}

/* ---- statistics --------------------------------------------------------- */

TT_TEST(bench_stats, percentiles_match_numpy) {
    cJSON *g = load_goldens();
    const cJSON *cases = cJSON_GetObjectItem(g, "percentiles"), *c;
    int n_cases = 0;
    cJSON_ArrayForEach(c, cases) {
        const cJSON *vals = cJSON_GetObjectItem(c, "values");
        size_t n = (size_t)cJSON_GetArraySize(vals);
        double *v = malloc(n * sizeof *v), *sorted = malloc(n * sizeof *v);
        for (size_t i = 0; i < n; i++) v[i] = cJSON_GetArrayItem(vals, (int)i)->valuedouble;
        memcpy(sorted, v, n * sizeof *v);
        bench_summary_t s;
        bench_summarize(sorted, n, &s);
        for (size_t i = 1; i < n; i++) TT_ASSERT(sorted[i - 1] <= sorted[i]);
        const cJSON *ps = cJSON_GetObjectItem(c, "p"), *ex = cJSON_GetObjectItem(c, "expected");
        for (int k = 0; k < cJSON_GetArraySize(ps); k++) {
            double p = cJSON_GetArrayItem(ps, k)->valuedouble;
            double want = cJSON_GetArrayItem(ex, k)->valuedouble;
            double got = bench_percentile_sorted(sorted, n, p);
            TT_ASSERT_NEAR(got, want, 1e-9 * (1 + fabs(want)));
        }
        TT_ASSERT_EQ_INT(s.n, n);
        TT_ASSERT_NEAR(s.mean, cJSON_GetObjectItem(c, "mean")->valuedouble,
                       1e-9 * (1 + fabs(s.mean)));
        TT_ASSERT_NEAR(s.stddev, cJSON_GetObjectItem(c, "std")->valuedouble, 1e-9 * (1 + s.stddev));
        TT_ASSERT_NEAR(s.p50, bench_percentile_sorted(sorted, n, 50), 0);
        TT_ASSERT_NEAR(s.p99, bench_percentile_sorted(sorted, n, 99), 0);
        TT_ASSERT_NEAR(s.min, sorted[0], 0);
        TT_ASSERT_NEAR(s.max, sorted[n - 1], 0);
        free(v);
        free(sorted);
        n_cases++;
    }
    TT_ASSERT(n_cases >= 5);
    cJSON_Delete(g);
}

TT_TEST(bench_stats, empty_and_bad_input) {
    bench_summary_t s;
    bench_summarize(NULL, 0, &s);
    TT_ASSERT_EQ_INT(s.n, 0);
    TT_ASSERT(isnan(s.mean) && isnan(s.p50) && isnan(s.p99));
    double x[] = {1, 2};
    TT_ASSERT(isnan(bench_percentile_sorted(x, 2, -1)));
    TT_ASSERT(isnan(bench_percentile_sorted(x, 2, 101)));
    TT_ASSERT(isnan(bench_percentile_sorted(x, 2, NAN)));
    bench_vec_t v = {0};
    for (int i = 0; i < 1000; i++) TT_ASSERT_EQ_INT(bench_vec_push(&v, i), CM_OK);
    TT_ASSERT_EQ_INT(v.n, 1000);
    TT_ASSERT_NEAR(v.v[999], 999, 0);
    bench_vec_free(&v);
}

/* ---- random numbers and arrivals ----------------------------------------- */

TT_TEST(bench_rng, seeded_and_in_range) {
    bench_rng_t a, b, c;
    bench_rng_seed(&a, 42);
    bench_rng_seed(&b, 42);
    bench_rng_seed(&c, 43);
    int same = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = bench_rng_next(&a), y = bench_rng_next(&b), z = bench_rng_next(&c);
        TT_ASSERT_EQ_U64(x, y);
        same += x == z;
    }
    TT_ASSERT(same == 0);
    /* Uniform: never 0 or 1; mean 1/2 and variance 1/12. */
    double sum = 0, sq = 0;
    enum { N = 200000 };
    for (int i = 0; i < N; i++) {
        double u = bench_rng_uniform(&a);
        TT_ASSERT(u > 0 && u < 1);
        sum += u;
        sq += u * u;
    }
    double mean = sum / N, var = sq / N - mean * mean;
    TT_ASSERT_NEAR(mean, 0.5, 0.005);
    TT_ASSERT_NEAR(var, 1.0 / 12, 0.002);
    /* below(n): a chi-square over 10 bins (9 dof; 27.9 is the 0.999 quantile). */
    int bins[10] = {0};
    for (int i = 0; i < 100000; i++) bins[bench_rng_below(&a, 10)]++;
    double chi = 0;
    for (int i = 0; i < 10; i++) chi += (bins[i] - 10000.0) * (bins[i] - 10000.0) / 10000.0;
    TT_ASSERT_MSG(chi < 27.9, "chi-square %.2f", chi);
    TT_ASSERT_EQ_U64(bench_rng_below(&a, 1), 0);
    /* Normal: mean 0, variance 1. */
    sum = sq = 0;
    for (int i = 0; i < N; i++) {
        double z = bench_rng_normal(&a);
        sum += z;
        sq += z * z;
    }
    TT_ASSERT_NEAR(sum / N, 0, 0.015);
    TT_ASSERT_NEAR(sq / N, 1, 0.02);
}

TT_TEST(bench_rng, poisson_arrivals) {
    /* Gaps of a Poisson process of rate 5/s are exponential: mean 0.2 s,
     * variance 0.04 s^2. Counts in 1 s windows are Poisson: mean = variance
     * = 5. Tolerances are > 5 standard errors for these sample sizes. */
    const double rate = 5;
    bench_rng_t r;
    bench_rng_seed(&r, 889);
    enum { N = 200000 };
    double t = 0, sum = 0, sq = 0;
    int counts[40000] = {0};
    for (int i = 0; i < N; i++) {
        double g = bench_rng_exp_gap(&r, rate);
        TT_ASSERT(g > 0 && isfinite(g));
        sum += g;
        sq += g * g;
        t += g;
        if (t < 39999) counts[(int)t]++;
    }
    double mean = sum / N, var = sq / N - mean * mean;
    TT_ASSERT_NEAR(mean, 0.2, 0.2 * 0.012);
    TT_ASSERT_NEAR(var, 0.04, 0.04 * 0.05);
    int windows = (int)t < 39999 ? (int)t : 39999;
    double cm = 0, cv = 0;
    for (int i = 0; i < windows; i++) cm += counts[i];
    cm /= windows;
    for (int i = 0; i < windows; i++) cv += (counts[i] - cm) * (counts[i] - cm);
    cv /= windows;
    TT_ASSERT_NEAR(cm, rate, 0.1);
    TT_ASSERT_NEAR(cv / cm, 1.0, 0.06); /* dispersion index of a Poisson process */
    /* Same seed, same arrivals. */
    bench_rng_t a, b;
    bench_rng_seed(&a, 7);
    bench_rng_seed(&b, 7);
    for (int i = 0; i < 100; i++)
        TT_ASSERT_NEAR(bench_rng_exp_gap(&a, 2), bench_rng_exp_gap(&b, 2), 0);
}

/* ---- workloads ------------------------------------------------------------ */

static size_t count_words(const char *s) {
    size_t n = 0;
    bool in = false;
    for (; *s; s++) {
        bool sp = *s == ' ' || *s == '\n';
        if (!sp && !in) n++;
        in = !sp;
    }
    return n;
}

TT_TEST(bench_workload, words_are_single_tokens) {
    cJSON *g = load_goldens();
    const cJSON *toks = cJSON_GetObjectItem(g, "words"), *tk;
    int n_tok = 0;
    cJSON_ArrayForEach(tk, toks) {
        const cJSON *single = cJSON_GetObjectItem(tk, "single_token_words");
        for (size_t i = 0; bench_words[i]; i++) {
            bool found = false;
            const cJSON *w;
            cJSON_ArrayForEach(w, single) found |= !strcmp(w->valuestring, bench_words[i]);
            TT_ASSERT_MSG(found, "'%s' is not one token in %s", bench_words[i], tk->string);
        }
        TT_ASSERT_EQ_INT(cJSON_GetObjectItem(tk, "sequence_tokens")->valueint,
                         cJSON_GetObjectItem(tk, "sequence_words")->valueint);
        n_tok++;
    }
    TT_ASSERT_EQ_INT(n_tok, 3);
    cJSON_Delete(g);
}

TT_TEST(bench_workload, fixed_and_multiturn) {
    char err[256];
    bench_workload_t *w;
    bench_wl_cfg_t cfg = {.kind = BENCH_WL_FIXED, .seed = 3, .input_len = 37, .output_len = 9};
    TT_ASSERT_EQ_INT(bench_workload_new(&cfg, &w, err, sizeof err), CM_OK);
    TT_ASSERT_STR_EQ(bench_workload_name(w), "fixed");
    bench_session_t *s0, *s1, *s0b;
    TT_ASSERT_EQ_INT(bench_workload_session(w, 0, &s0), CM_OK);
    TT_ASSERT_EQ_INT(bench_workload_session(w, 1, &s1), CM_OK);
    TT_ASSERT_EQ_INT(bench_workload_session(w, 0, &s0b), CM_OK);
    TT_ASSERT_EQ_INT(s0->n_turns, 1);
    TT_ASSERT_EQ_INT(count_words(s0->user[0]), 37);
    TT_ASSERT(s0->user[0][0] != ' ');
    TT_ASSERT_EQ_INT(s0->max_tokens[0], 9);
    TT_ASSERT_EQ_INT(s0->input_est[0], 37);
    TT_ASSERT(s0->system == NULL);
    TT_ASSERT_STR_EQ(s0->user[0], s0b->user[0]); /* deterministic */
    TT_ASSERT(strcmp(s0->user[0], s1->user[0]) != 0);
    bench_session_free(s0);
    bench_session_free(s1);
    bench_session_free(s0b);
    bench_workload_free(w);

    cfg = (bench_wl_cfg_t){.kind = BENCH_WL_MULTITURN,
                           .seed = 889,
                           .prefix_len = 200,
                           .turns = 4,
                           .turn_len = 16,
                           .output_len = 8,
                           .max_output_cap = 5};
    TT_ASSERT_EQ_INT(bench_workload_new(&cfg, &w, err, sizeof err), CM_OK);
    TT_ASSERT_EQ_INT(bench_workload_session(w, 0, &s0), CM_OK);
    TT_ASSERT_EQ_INT(bench_workload_session(w, 1, &s1), CM_OK);
    TT_ASSERT_EQ_INT(s0->n_turns, 4);
    TT_ASSERT_STR_EQ(s0->system, s1->system); /* the shared prefix */
    TT_ASSERT_EQ_INT(count_words(s0->system), 200);
    TT_ASSERT_EQ_INT(s0->system_est, 200);
    for (size_t t = 0; t < 4; t++) {
        TT_ASSERT_EQ_INT(count_words(s0->user[t]), 16);
        TT_ASSERT_EQ_INT(s0->max_tokens[t], 5); /* capped */
    }
    TT_ASSERT(strcmp(s0->user[0], s1->user[0]) != 0);
    bench_session_free(s0);
    bench_session_free(s1);
    bench_workload_free(w);

    /* Bad configurations are errors with a reason. */
    cfg = (bench_wl_cfg_t){.kind = BENCH_WL_FIXED, .input_len = 0, .output_len = 1};
    TT_ASSERT_EQ_INT(bench_workload_new(&cfg, &w, err, sizeof err), CM_ERR_INVALID_ARG);
    TT_ASSERT(strlen(err) > 0);
    cfg = (bench_wl_cfg_t){.kind = BENCH_WL_MULTITURN, .turns = 0, .turn_len = 1, .output_len = 1};
    TT_ASSERT_EQ_INT(bench_workload_new(&cfg, &w, err, sizeof err), CM_ERR_INVALID_ARG);
    cfg = (bench_wl_cfg_t){.kind = BENCH_WL_SHAREGPT,
                           .sharegpt = {.in_mu = 1,
                                        .in_sigma = -1,
                                        .in_min = 1,
                                        .in_max = 2,
                                        .out_mu = 1,
                                        .out_sigma = 1,
                                        .out_min = 1,
                                        .out_max = 2}};
    TT_ASSERT_EQ_INT(bench_workload_new(&cfg, &w, err, sizeof err), CM_ERR_INVALID_ARG);
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

TT_TEST(bench_workload, sharegpt_like_distribution) {
    /* Lengths are round(exp(mu + sigma Z)) clamped: their quantiles must sit
     * at exp(mu + sigma z_q) with z_0.1 = -1.28155, z_0.5 = 0, z_0.9 = 1.28155. */
    bench_wl_cfg_t cfg = {
        .kind = BENCH_WL_SHAREGPT, .seed = 11, .sharegpt = BENCH_SHAREGPT_DEFAULTS};
    const bench_sharegpt_model_t m = cfg.sharegpt;
    char err[256];
    bench_workload_t *w;
    TT_ASSERT_EQ_INT(bench_workload_new(&cfg, &w, err, sizeof err), CM_OK);
    TT_ASSERT_STR_EQ(bench_workload_name(w), "sharegpt");
    enum { N = 4000 };
    int32_t *in = malloc(N * sizeof *in), *out = malloc(N * sizeof *out);
    for (int i = 0; i < N; i++) {
        bench_session_t *s;
        TT_ASSERT_EQ_INT(bench_workload_session(w, (uint64_t)i, &s), CM_OK);
        in[i] = s->input_est[0];
        out[i] = s->max_tokens[0];
        TT_ASSERT(in[i] >= m.in_min && in[i] <= m.in_max);
        TT_ASSERT(out[i] >= m.out_min && out[i] <= m.out_max);
        if (i < 50) TT_ASSERT_EQ_INT(count_words(s->user[0]), in[i]);
        bench_session_free(s);
    }
    qsort(in, N, sizeof *in, cmp_i32);
    qsort(out, N, sizeof *out, cmp_i32);
    const double z[3] = {-1.2815516, 0, 1.2815516}, q[3] = {0.1, 0.5, 0.9};
    for (int k = 0; k < 3; k++) {
        double wi = exp(m.in_mu + m.in_sigma * z[k]), wo = exp(m.out_mu + m.out_sigma * z[k]);
        double gi = in[(int)(q[k] * N)], go = out[(int)(q[k] * N)];
        TT_ASSERT_MSG(fabs(log(gi / wi)) < 0.08, "input q%.1f: %g vs %g", q[k], gi, wi);
        TT_ASSERT_MSG(fabs(log(go / wo)) < 0.08, "output q%.1f: %g vs %g", q[k], go, wo);
    }
    free(in);
    free(out);
    bench_workload_free(w);
}

TT_TEST(bench_workload, sharegpt_file) {
    char path[4096];
    snprintf(path, sizeof path, "%s/sg.json", tt_tmpdir());
    FILE *f = fopen(path, "w");
    TT_ASSERT(f);
    /* Third: reply too short (skipped); fourth: starts with the model
     * (skipped); fifth: no reply (skipped). */
    fputs("[{\"id\":\"a\",\"conversations\":[{\"from\":\"human\",\"value\":\"tell me about the "
          "sea please\"},{\"from\":\"gpt\",\"value\":\"The sea is large and deep and blue.\"}]},"
          "{\"id\":\"b\",\"conversations\":[{\"from\":\"human\",\"value\":\"write a line of "
          "verse\"},{\"from\":\"gpt\",\"value\":\"0123456789012345678901234567890123456789\"},"
          "{\"from\":\"human\",\"value\":\"more\"}]},"
          "{\"id\":\"c\",\"conversations\":[{\"from\":\"human\",\"value\":\"a long enough "
          "question\"},{\"from\":\"gpt\",\"value\":\"ok\"}]},"
          "{\"id\":\"d\",\"conversations\":[{\"from\":\"gpt\",\"value\":\"hello there, how are "
          "you\"},{\"from\":\"human\",\"value\":\"fine thanks, and you?\"}]},"
          "{\"id\":\"e\",\"conversations\":[{\"from\":\"human\",\"value\":\"nobody answers this "
          "one\"}]}, {\"id\":\"f\"}, 7]",
          f);
    fclose(f);
    bench_wl_cfg_t cfg = {.kind = BENCH_WL_SHAREGPT, .seed = 1, .sharegpt_file = path};
    char err[256];
    bench_workload_t *w;
    TT_ASSERT_EQ_INT(bench_workload_new(&cfg, &w, err, sizeof err), CM_OK);
    TT_ASSERT_STR_EQ(bench_workload_name(w), "sharegpt-file");
    int seen_a = 0, seen_b = 0;
    for (uint64_t i = 0; i < 4; i++) { /* two items, cycled */
        bench_session_t *s;
        TT_ASSERT_EQ_INT(bench_workload_session(w, i, &s), CM_OK);
        if (!strcmp(s->user[0], "tell me about the sea please")) {
            seen_a++;
            TT_ASSERT_EQ_INT(s->max_tokens[0], 9); /* ceil(35 / 4) */
            TT_ASSERT_EQ_INT(s->input_est[0], 7);  /* ceil(28 / 4) */
        } else {
            TT_ASSERT_STR_EQ(s->user[0], "write a line of verse");
            TT_ASSERT_EQ_INT(s->max_tokens[0], 10);
            seen_b++;
        }
        bench_session_free(s);
    }
    TT_ASSERT_EQ_INT(seen_a, 2);
    TT_ASSERT_EQ_INT(seen_b, 2);
    bench_workload_free(w);

    f = fopen(path, "w");
    fputs("{\"not\": \"an array\"}", f);
    fclose(f);
    TT_ASSERT_EQ_INT(bench_workload_new(&cfg, &w, err, sizeof err), CM_ERR_BAD_FORMAT);
    f = fopen(path, "w");
    fputs("[{\"conversations\": [{\"from\": \"human\"", f);
    fclose(f);
    TT_ASSERT_EQ_INT(bench_workload_new(&cfg, &w, err, sizeof err), CM_ERR_BAD_FORMAT);
    f = fopen(path, "w");
    fputs("[]", f);
    fclose(f);
    TT_ASSERT_EQ_INT(bench_workload_new(&cfg, &w, err, sizeof err), CM_ERR_BAD_FORMAT);
    snprintf(path, sizeof path, "%s/missing.json", tt_tmpdir());
    TT_ASSERT_EQ_INT(bench_workload_new(&cfg, &w, err, sizeof err), CM_ERR_NOT_FOUND);
    TT_ASSERT(strstr(err, "missing.json"));
}

static cm_status_t grade_first_word(void *ctx, const bench_session_t *s, size_t turn,
                                    const char *output, size_t len, bool *correct) {
    *correct = len > 0 && !strncmp(output, (const char *)ctx, len);
    return CM_OK;
}

TT_TEST(bench_workload, grader_hook) {
    bench_wl_cfg_t cfg = {.kind = BENCH_WL_FIXED, .input_len = 1, .output_len = 1};
    char err[256];
    bench_workload_t *w;
    TT_ASSERT_EQ_INT(bench_workload_new(&cfg, &w, err, sizeof err), CM_OK);
    void *ctx = (void *)1;
    TT_ASSERT(bench_workload_grader(w, &ctx) == NULL && ctx == NULL);
    bench_workload_set_grader(w, grade_first_word, "yes");
    bench_grade_fn fn = bench_workload_grader(w, &ctx);
    bool ok = false;
    TT_ASSERT(fn == grade_first_word);
    TT_ASSERT_EQ_INT(fn(ctx, NULL, 0, "yes", 3, &ok), CM_OK);
    TT_ASSERT(ok);
    bench_workload_free(w);
}

/* ---- compare --------------------------------------------------------------- */

static double golden_num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItem(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static bool same(double a, double b) {
    return (isnan(a) && isnan(b)) || fabs(a - b) <= 1e-9 * (1 + fabs(b));
}

TT_TEST(bench_compare, rows_match_python) {
    char pa[4096], pb[4096];
    snprintf(pa, sizeof pa, "%s/tests/fixtures/bench_result_a.json", tt_root());
    snprintf(pb, sizeof pb, "%s/tests/fixtures/bench_result_b.json", tt_root());
    char *ta = tt_read_file(pa, NULL), *tb = tt_read_file(pb, NULL), err[256];
    bench_cmp_row_t *rows;
    size_t n;
    TT_ASSERT_EQ_INT(bench_compare_build(ta, tb, &rows, &n, err, sizeof err), CM_OK);
    cJSON *g = load_goldens();
    const cJSON *want = cJSON_GetObjectItem(g, "compare");
    TT_ASSERT_EQ_INT(n, cJSON_GetArraySize(want));
    for (size_t i = 0; i < n; i++) {
        const cJSON *w = cJSON_GetArrayItem(want, (int)i);
        TT_ASSERT_STR_EQ(rows[i].metric, cJSON_GetObjectItem(w, "metric")->valuestring);
        TT_ASSERT_STR_EQ(rows[i].point, cJSON_GetObjectItem(w, "point")->valuestring);
        TT_ASSERT_MSG(same(rows[i].a, golden_num(w, "a")) && same(rows[i].b, golden_num(w, "b")) &&
                          same(rows[i].diff, golden_num(w, "diff")) &&
                          same(rows[i].pct, golden_num(w, "pct")),
                      "row %zu (%s %s): %g %g %g %g", i, rows[i].metric, rows[i].point, rows[i].a,
                      rows[i].b, rows[i].diff, rows[i].pct);
    }
    cm_free(rows);
    /* Not result documents: clear errors. */
    TT_ASSERT_EQ_INT(bench_compare_build("{}", tb, &rows, &n, err, sizeof err), CM_ERR_BAD_FORMAT);
    TT_ASSERT(strstr(err, "first"));
    TT_ASSERT_EQ_INT(bench_compare_build(ta, "not json", &rows, &n, err, sizeof err),
                     CM_ERR_BAD_FORMAT);
    TT_ASSERT(strstr(err, "second"));
    TT_ASSERT_EQ_INT(
        bench_compare_build(ta, "{\"points\":[{\"label\":3}]}", &rows, &n, err, sizeof err),
        CM_ERR_BAD_FORMAT);
    double d, p;
    bench_compare_values(0, 5, &d, &p);
    TT_ASSERT(d == 5 && isnan(p));
    bench_compare_values(-4, -2, &d, &p);
    TT_ASSERT(d == 2 && p == 50);
    cJSON_Delete(g);
    free(ta);
    free(tb);
}

/* ---- URL and HTTP client --------------------------------------------------- */

TT_TEST(bench_http, url_parse) {
    char host[64], base[64];
    int port;
    TT_ASSERT_EQ_INT(bench_url_parse("http://127.0.0.1:8000", host, 64, &port, base, 64), CM_OK);
    TT_ASSERT_STR_EQ(host, "127.0.0.1");
    TT_ASSERT_EQ_INT(port, 8000);
    TT_ASSERT_STR_EQ(base, "");
    TT_ASSERT_EQ_INT(bench_url_parse("http://router/api/", host, 64, &port, base, 64), CM_OK);
    TT_ASSERT_STR_EQ(host, "router");
    TT_ASSERT_EQ_INT(port, 80);
    TT_ASSERT_STR_EQ(base, "/api");
    TT_ASSERT_EQ_INT(bench_url_parse("http://[::1]:9/v", host, 64, &port, base, 64), CM_OK);
    TT_ASSERT_STR_EQ(host, "::1");
    TT_ASSERT_EQ_INT(port, 9);
    TT_ASSERT_STR_EQ(base, "/v");
    const char *bad[] = {"https://x",      "http://",     "http://:80",   "http://h:0",
                         "http://h:65536", "http://h:8a", "http://h:",    "ftp://h",
                         "http://[::1",    "http://u@h",  "http://h/a b", NULL};
    for (int i = 0; bad[i]; i++)
        TT_ASSERT_MSG(bench_url_parse(bad[i], host, 64, &port, base, 64) == CM_ERR_INVALID_ARG,
                      "accepted %s", bad[i]);
    TT_ASSERT_EQ_INT(bench_err_from_status(404), BENCH_ERR_HTTP_4XX);
    TT_ASSERT_EQ_INT(bench_err_from_status(503), BENCH_ERR_HTTP_5XX);
    TT_ASSERT_EQ_INT(bench_err_from_status(302), BENCH_ERR_HTTP_OTHER);
    TT_ASSERT_STR_EQ(bench_err_name(BENCH_ERR_CONNECT_REFUSED), "connect_refused");
    TT_ASSERT_STR_EQ(bench_err_name(BENCH_ERR_COUNT), "unknown");
}

/* A canned server: accepts connections and, per request head read, writes
 * the next scripted answer in the given pieces. */
typedef struct {
    int lfd;
    const char *const *answers; /* per request; NULL entry = close the connection */
    int n_answers;
    int accepted;
    size_t piece; /* write in pieces of this many bytes (0 = whole) */
} canned_t;

static void *canned_main(void *arg) {
    canned_t *c = arg;
    int served = 0;
    while (served < c->n_answers) {
        int fd = accept(c->lfd, NULL, NULL);
        if (fd < 0) return NULL;
        c->accepted++;
        char buf[8192];
        size_t have = 0;
        while (served < c->n_answers) {
            /* Read one request: head then Content-Length bytes. */
            char *end = NULL;
            while (!(end = memmem(buf, have, "\r\n\r\n", 4))) {
                ssize_t k = read(fd, buf + have, sizeof buf - have);
                if (k <= 0) goto next_conn;
                have += (size_t)k;
            }
            const char *cl = strcasestr(buf, "content-length:");
            size_t body = cl ? strtoul(cl + 15, NULL, 10) : 0;
            size_t need = (size_t)(end + 4 - buf) + body;
            while (have < need) {
                ssize_t k = read(fd, buf + have, sizeof buf - have);
                if (k <= 0) goto next_conn;
                have += (size_t)k;
            }
            memmove(buf, buf + need, have - need);
            have -= need;
            const char *a = c->answers[served++];
            if (!a) break;
            size_t n = strlen(a), step = c->piece ? c->piece : n;
            for (size_t i = 0; i < n; i += step) {
                size_t k = n - i < step ? n - i : step;
                if (write(fd, a + i, k) != (ssize_t)k) goto next_conn;
                if (c->piece) usleep(200);
            }
        }
    next_conn:
        close(fd);
    }
    return NULL;
}

static int listen_any(struct sockaddr_in *sa) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    TT_ASSERT(fd >= 0);
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    TT_ASSERT(bind(fd, (struct sockaddr *)sa, sizeof *sa) == 0);
    socklen_t l = sizeof *sa;
    TT_ASSERT(getsockname(fd, (struct sockaddr *)sa, &l) == 0);
    TT_ASSERT(listen(fd, 16) == 0);
    return fd;
}

typedef struct {
    char body[4096];
    size_t body_len;
    int status, done;
    bench_err_t err;
    uint64_t t_head, t_done;
} client_rec_t;

static void rec_head(void *ud, int status, uint64_t t) {
    client_rec_t *r = ud;
    r->status = status;
    r->t_head = t;
}
static int rec_body(void *ud, const char *d, size_t n, uint64_t t) {
    client_rec_t *r = ud;
    TT_ASSERT(r->body_len + n < sizeof r->body);
    memcpy(r->body + r->body_len, d, n);
    r->body_len += n;
    return 0;
}
static void rec_done(void *ud, bench_err_t err, int status, uint64_t t) {
    client_rec_t *r = ud;
    r->err = err;
    r->status = status;
    r->done++;
    r->t_done = t;
}
static const bench_http_cb_t k_rec_cb = {rec_head, rec_body, rec_done};

static void run_until(uv_loop_t *loop, const int *done, int want) {
    uint64_t end = cm_time_mono_ns() + 10ull * 1000000000ull;
    while (*done < want) {
        TT_ASSERT_MSG(cm_time_mono_ns() < end, "client did not finish");
        uv_run(loop, UV_RUN_NOWAIT);
        usleep(200);
    }
}

static void close_all(uv_loop_t *loop, bench_http_t *c) {
    bench_http_free(c);
    for (int i = 0; i < 100 && uv_run(loop, UV_RUN_NOWAIT); i++) usleep(1000);
    TT_ASSERT_EQ_INT(uv_loop_close(loop), 0);
}

TT_TEST(bench_http, chunked_keepalive_and_errors) {
    static const char *const answers[] = {
        /* 1: chunked SSE, kept alive */
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        "9\r\ndata: a\n\n\r\n"
        "e\r\ndata: [DONE]\r\n\r\n0\r\n\r\n",
        /* 2: Content-Length body on the same connection */
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n\r\nbusy!",
        /* 3: the server closes after this one */
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        /* 4: on a new connection: garbage */
        "HTTZ/9 nope\r\n\r\n",
    };
    struct sockaddr_in sa;
    canned_t srv = {.lfd = listen_any(&sa), .answers = answers, .n_answers = 4, .piece = 3};
    pthread_t th;
    TT_ASSERT(pthread_create(&th, NULL, canned_main, &srv) == 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    bench_http_t *c;
    TT_ASSERT_EQ_INT(bench_http_new(&loop, (struct sockaddr *)&sa, "test", 1, &c), CM_OK);
    client_rec_t r[4] = {0};
    for (int i = 0; i < 4; i++)
        TT_ASSERT_EQ_INT(bench_http_post(c, "/v1/completions", "{}", 2, 5000, &k_rec_cb, &r[i]),
                         CM_OK);
    TT_ASSERT_EQ_INT(bench_http_pending(c), 4);
    TT_ASSERT_EQ_INT(r[0].done, 0); /* never called back from inside post */
    for (int i = 0; i < 4; i++) run_until(&loop, &r[i].done, 1);
    TT_ASSERT_EQ_INT(r[0].err, BENCH_ERR_NONE);
    TT_ASSERT_EQ_INT(r[0].status, 200);
    r[0].body[r[0].body_len] = 0;
    TT_ASSERT_STR_EQ(r[0].body, "data: a\n\ndata: [DONE]\r\n"); /* de-chunked */
    TT_ASSERT(r[0].t_head > 0 && r[0].t_head <= r[0].t_done);
    TT_ASSERT_EQ_INT(r[1].err, BENCH_ERR_NONE);
    TT_ASSERT_EQ_INT(r[1].status, 503);
    TT_ASSERT_EQ_INT(r[2].err, BENCH_ERR_NONE);
    TT_ASSERT_EQ_INT(r[3].err, BENCH_ERR_PROTOCOL);
    pthread_join(th, NULL);
    TT_ASSERT_EQ_INT(srv.accepted, 2); /* 1-3 shared one connection */
    TT_ASSERT_EQ_INT(bench_http_pending(c), 0);
    close_all(&loop, c);
    close(srv.lfd);
}

TT_TEST(bench_http, refused_timeout_reset) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    /* Refused: a port that was just closed. */
    struct sockaddr_in sa;
    int fd = listen_any(&sa);
    close(fd);
    bench_http_t *c;
    TT_ASSERT_EQ_INT(bench_http_new(&loop, (struct sockaddr *)&sa, "t", 4, &c), CM_OK);
    client_rec_t r = {0};
    TT_ASSERT_EQ_INT(bench_http_post(c, "/x", "{}", 2, 5000, &k_rec_cb, &r), CM_OK);
    run_until(&loop, &r.done, 1);
    TT_ASSERT_EQ_INT(r.err, BENCH_ERR_CONNECT_REFUSED);
    close_all(&loop, c);

    /* Timeout: a listener that never answers (the kernel completes the
     * handshake from the backlog). */
    uv_loop_init(&loop);
    fd = listen_any(&sa);
    TT_ASSERT_EQ_INT(bench_http_new(&loop, (struct sockaddr *)&sa, "t", 4, &c), CM_OK);
    memset(&r, 0, sizeof r);
    uint64_t t0 = cm_time_mono_ns();
    TT_ASSERT_EQ_INT(bench_http_post(c, "/x", "{}", 2, 200, &k_rec_cb, &r), CM_OK);
    run_until(&loop, &r.done, 1);
    TT_ASSERT_EQ_INT(r.err, BENCH_ERR_TIMEOUT);
    double ms = (double)(cm_time_mono_ns() - t0) / 1e6;
    TT_ASSERT_MSG(ms >= 190 && ms < 1500, "timeout after %.0f ms", ms);
    TT_ASSERT_EQ_INT(bench_http_open_conns(c), 0);
    close_all(&loop, c);
    close(fd);

    /* Closed mid-answer: a partial response, then the server hangs up. */
    static const char *const partial[] = {
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: a\n\n\r\n", NULL};
    uv_loop_init(&loop);
    canned_t srv = {.lfd = listen_any(&sa), .answers = partial, .n_answers = 1};
    pthread_t th;
    TT_ASSERT(pthread_create(&th, NULL, canned_main, &srv) == 0);
    TT_ASSERT_EQ_INT(bench_http_new(&loop, (struct sockaddr *)&sa, "t", 4, &c), CM_OK);
    memset(&r, 0, sizeof r);
    TT_ASSERT_EQ_INT(bench_http_post(c, "/x", "{}", 2, 5000, &k_rec_cb, &r), CM_OK);
    run_until(&loop, &r.done, 1);
    TT_ASSERT_EQ_INT(r.err, BENCH_ERR_CLOSED);
    TT_ASSERT_EQ_INT(r.body_len, 9);
    pthread_join(th, NULL);
    close(srv.lfd);
    /* Bad arguments; pending requests end when the client is freed. */
    TT_ASSERT_EQ_INT(bench_http_post(c, "no-slash", "", 0, 10, &k_rec_cb, &r), CM_ERR_INVALID_ARG);
    TT_ASSERT_EQ_INT(bench_http_post(c, "/a b", "", 0, 10, &k_rec_cb, &r), CM_ERR_INVALID_ARG);
    TT_ASSERT_EQ_INT(bench_http_post(c, "/x", "", 0, 0, &k_rec_cb, &r), CM_ERR_INVALID_ARG);
    memset(&r, 0, sizeof r);
    TT_ASSERT_EQ_INT(bench_http_post(c, "/x", "{}", 2, 5000, &k_rec_cb, &r), CM_OK);
    close_all(&loop, c);
    TT_ASSERT_EQ_INT(r.done, 1);
    TT_ASSERT_EQ_INT(r.err, BENCH_ERR_CLOSED);
}

TT_TEST(bench_http, stale_keepalive_is_retried_once) {
    /* The server answers the first request, then drops the connection on the
     * second without answering (as a server closing an idle keep-alive
     * connection does). The client resends it once on a fresh connection. */
    static const char *const answers[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
        NULL,
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb",
    };
    struct sockaddr_in sa;
    canned_t srv = {.lfd = listen_any(&sa), .answers = answers, .n_answers = 3};
    pthread_t th;
    TT_ASSERT(pthread_create(&th, NULL, canned_main, &srv) == 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    bench_http_t *c;
    TT_ASSERT_EQ_INT(bench_http_new(&loop, (struct sockaddr *)&sa, "t", 1, &c), CM_OK);
    client_rec_t r[2] = {0};
    for (int i = 0; i < 2; i++)
        TT_ASSERT_EQ_INT(bench_http_post(c, "/x", "{}", 2, 5000, &k_rec_cb, &r[i]), CM_OK);
    run_until(&loop, &r[0].done, 1);
    run_until(&loop, &r[1].done, 1);
    TT_ASSERT_EQ_INT(r[0].err, BENCH_ERR_NONE);
    TT_ASSERT_EQ_INT(r[1].err, BENCH_ERR_NONE);
    TT_ASSERT_EQ_INT(r[1].body_len, 1);
    TT_ASSERT_EQ_INT(r[1].body[0], 'b');
    pthread_join(th, NULL);
    TT_ASSERT_EQ_INT(srv.accepted, 2);
    close_all(&loop, c);
    close(srv.lfd);
}
