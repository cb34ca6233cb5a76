/*
 * bench_serve.c - `tandem bench serve`: load against an OpenAI-compatible
 * endpoint (streaming always on), in phases: warm-up (discarded), a
 * sequential baseline, a closed-loop concurrency sweep and an open-loop
 * (Poisson) rate sweep. Every streamed chunk is timestamped when its bytes
 * are read. Writes PREFIX.json, PREFIX.csv and PREFIX.requests.csv and a
 * table on stdout. Metric definitions: bench/README.md.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "bench_load.h"
#include "cm_cli.h"

/* ---- flags -------------------------------------------------------------- */

static const char *g_baseline_lens;
static const char *g_url, *g_endpoint, *g_model, *g_workload, *g_sharegpt, *g_conc, *g_rate, *g_out,
    *g_task;
static int64_t g_context, g_digits;
static int64_t g_input_len, g_output_len, g_prefix_len, g_turns, g_turn_len, g_max_tokens, g_seed,
    g_warmup, g_baseline, g_num_requests, g_max_conns;
static uint64_t g_duration_ms, g_timeout_ms;
static double g_temperature;
static bool g_ignore_eos;

static const cm_flag_t k_flags[] = {
    {.name = "url",
     .type = CM_FLAG_STRING,
     .dst = &g_url,
     .def = "http://127.0.0.1:8000",
     .help = "server base URL (http only)"},
    {.name = "endpoint",
     .type = CM_FLAG_STRING,
     .dst = &g_endpoint,
     .def = "/v1/completions",
     .help = "/v1/completions or /v1/chat/completions"},
    {.name = "model",
     .type = CM_FLAG_STRING,
     .dst = &g_model,
     .def = "",
     .help = "model name sent in each request (omitted when empty)"},
    {.name = "workload",
     .type = CM_FLAG_CHOICE,
     .dst = &g_workload,
     .def = "fixed",
     .choices = "fixed|sharegpt|multiturn|task",
     .help = "what to send (see bench/README.md)"},
    {.name = "task",
     .type = CM_FLAG_CHOICE,
     .dst = &g_task,
     .def = "retrieval",
     .choices = "retrieval|addition|copy",
     .help = "task: which checkable task (graded; needs the chat endpoint)"},
    {.name = "context",
     .type = CM_FLAG_INT,
     .dst = &g_context,
     .def = "512",
     .help = "task: target tokens per retrieval/copy problem",
     .min = 16,
     .max = 1 << 20},
    {.name = "digits",
     .type = CM_FLAG_INT,
     .dst = &g_digits,
     .def = "4",
     .help = "task: addition digits per operand",
     .min = 1,
     .max = 18},
    {.name = "input-len",
     .type = CM_FLAG_INT,
     .dst = &g_input_len,
     .def = "128",
     .help = "fixed: prompt tokens (words)",
     .min = 1,
     .max = 1 << 20},
    {.name = "output-len",
     .type = CM_FLAG_INT,
     .dst = &g_output_len,
     .def = "64",
     .help = "fixed: output tokens; multiturn: answer tokens A",
     .min = 1,
     .max = 1 << 20},
    {.name = "sharegpt",
     .type = CM_FLAG_STRING,
     .dst = &g_sharegpt,
     .help = "sharegpt: read this ShareGPT JSON instead of the synthetic model"},
    {.name = "prefix-len",
     .type = CM_FLAG_INT,
     .dst = &g_prefix_len,
     .def = "512",
     .help = "multiturn: shared prefix tokens P",
     .min = 0,
     .max = 1 << 20},
    {.name = "turns",
     .type = CM_FLAG_INT,
     .dst = &g_turns,
     .def = "3",
     .help = "multiturn: turns T per conversation",
     .min = 1,
     .max = 1000},
    {.name = "turn-len",
     .type = CM_FLAG_INT,
     .dst = &g_turn_len,
     .def = "64",
     .help = "multiturn: prompt tokens Q per turn",
     .min = 1,
     .max = 1 << 20},
    {.name = "max-tokens",
     .type = CM_FLAG_INT,
     .dst = &g_max_tokens,
     .def = "0",
     .help = "cap on max_tokens of every request (0 = none)",
     .min = 0,
     .max = 1 << 20},
    {.name = "ignore-eos",
     .type = CM_FLAG_BOOL,
     .dst = &g_ignore_eos,
     .def = "false",
     .help = "send ignore_eos so every request produces max_tokens"},
    {.name = "temperature",
     .type = CM_FLAG_DOUBLE,
     .dst = &g_temperature,
     .def = "0",
     .help = "sampling temperature sent",
     .fmin = 0,
     .fmax = 2},
    {.name = "seed",
     .type = CM_FLAG_INT,
     .dst = &g_seed,
     .def = "0",
     .help = "seed of prompts, lengths and arrivals",
     .min = 0,
     .max = INT64_MAX - 1},
    {.name = "warmup",
     .type = CM_FLAG_INT,
     .dst = &g_warmup,
     .def = "2",
     .help = "sequential warm-up requests (discarded)",
     .min = 0,
     .max = 100000},
    {.name = "baseline",
     .type = CM_FLAG_INT,
     .dst = &g_baseline,
     .def = "0",
     .help = "sequential baseline requests (0 = no baseline point)",
     .min = 0,
     .max = 1000000},
    {.name = "baseline-lens",
     .type = CM_FLAG_STRING,
     .dst = &g_baseline_lens,
     .def = "",
     .help = "run the baseline at each of these prompt lengths instead, e.g. 128,512,1024"},
    {.name = "concurrency",
     .type = CM_FLAG_STRING,
     .dst = &g_conc,
     .def = "1",
     .help = "closed-loop sweep, e.g. 1,2,4,8 (empty = none)"},
    {.name = "rate",
     .type = CM_FLAG_STRING,
     .dst = &g_rate,
     .def = "",
     .help = "open-loop Poisson sweep in requests/s, e.g. 1,2,5,10"},
    {.name = "duration",
     .type = CM_FLAG_DURATION,
     .dst = &g_duration_ms,
     .def = "30s",
     .help = "issue requests for this long per sweep point"},
    {.name = "num-requests",
     .type = CM_FLAG_INT,
     .dst = &g_num_requests,
     .def = "0",
     .help = "at most this many requests per sweep point (0 = duration only)",
     .min = 0,
     .max = INT64_MAX / 2},
    {.name = "timeout",
     .type = CM_FLAG_DURATION,
     .dst = &g_timeout_ms,
     .def = "60s",
     .help = "deadline of each request, queueing included"},
    {.name = "max-connections",
     .type = CM_FLAG_INT,
     .dst = &g_max_conns,
     .def = "512",
     .help = "most connections open at once",
     .min = 1,
     .max = 65536},
    {.name = "out",
     .type = CM_FLAG_STRING,
     .dst = &g_out,
     .help = "write PREFIX.json, PREFIX.csv and PREFIX.requests.csv"},
    {0},
};

/* ---- run state ---------------------------------------------------------- */

enum { MAX_POINTS = 64, MAX_TEXT = 4 << 20, SSE_MAX = 4 << 20 };

typedef enum { PH_BASELINE, PH_CONCURRENCY, PH_RATE } phase_t;
static const char *const k_phase_names[] = {"baseline", "concurrency", "rate"};

typedef struct {
    uint64_t session;
    uint32_t turn;
    uint64_t t_start, t_first, t_end; /* ns, monotonic */
    int64_t in_tokens, out_tokens;
    int32_t chunks;
    int status;
    bench_err_t err;
    bool usage, graded, correct;
} rq_result_t;

typedef struct {
    phase_t phase;
    int conc;
    double rate;
    char label[64];
    int32_t input_len; /* baseline at a fixed prompt length, else 0 */
    uint64_t t_start, t_end;
    rq_result_t *res;
    size_t n_res, cap_res;
    bench_vec_t itl; /* ms, every gap between content chunks of successful requests */
} point_t;

typedef struct run run_t;

typedef struct {
    run_t *run;
    bench_session_t *s;
    uint64_t index;
    size_t turn;
    char **answers; /* [n_turns] received text of finished turns */
    int64_t *answer_tokens;
} user_t;

typedef struct {
    run_t *run;
    user_t *user;
    bench_sse_t *sse;
    bench_vec_t gaps;
    char *text;
    size_t text_len, text_cap;
    uint64_t t_start, t_first, t_last, t_prev; /* t_last: latest read; t_prev: previous chunk */
    int64_t usage_in, usage_out, in_est;
    int32_t chunks;
    int status;
    bool done_seen, finished, stream_err;
} rq_t;

struct run {
    uv_loop_t loop;
    bench_http_t *http;
    bench_workload_t *wl;
    char path[512];
    bool chat;
    /* the point being run */
    point_t *pt; /* NULL during warm-up */
    bool open_loop, issuing, aborted;
    uint64_t stop_at_ns, max_requests, issued;
    double rate;
    size_t users;
    uint64_t next_session;
    uint64_t next_arrival_ns;
    bench_rng_t arr_rng;
    uv_timer_t arrival, stop, guard;
    cm_status_t fatal;
};

static void user_next(user_t *u);

static bool run_may_issue(run_t *r) {
    if (!r->issuing || r->aborted || r->fatal != CM_OK) return false;
    if (r->max_requests && r->issued >= r->max_requests) return false;
    if (cm_time_mono_ns() >= r->stop_at_ns) return false;
    return true;
}

static bool run_point_done(run_t *r) {
    return r->users == 0 && (!r->open_loop || !run_may_issue(r));
}

static void run_check_done(run_t *r) {
    if (run_point_done(r)) {
        r->issuing = false;
        uv_timer_stop(&r->arrival);
    }
}

/* ---- one request ------------------------------------------------------- */

static int rq_on_event(void *ud, const char *event, char *data, size_t len) {
    rq_t *q = ud;
    bench_chunk_t c;
    if (bench_chunk_parse(data, len, q->run->chat, &c) != CM_OK) {
        return 1; /* rq_on_done reports it as a protocol error */
    }
    if (c.prompt_tokens >= 0) q->usage_in = c.prompt_tokens;
    if (c.completion_tokens >= 0) q->usage_out = c.completion_tokens;
    switch (c.kind) {
    case BENCH_CHUNK_DONE:
        q->done_seen = true;
        break;
    case BENCH_CHUNK_ERROR:
        q->stream_err = true;
        return 1;
    case BENCH_CHUNK_DELTA:
        if (c.finished) q->finished = true;
        if (c.text_len > 0) {
            /* A chunk arrived when the bytes that completed it were read. */
            if (q->chunks == 0)
                q->t_first = q->t_last;
            else if (bench_vec_push(&q->gaps, (double)(q->t_last - q->t_prev) / 1e6) != CM_OK)
                return 1;
            q->t_prev = q->t_last;
            q->chunks++;
            if (q->text_len + c.text_len <= MAX_TEXT) {
                if (q->text_len + c.text_len + 1 > q->text_cap) {
                    size_t nc = q->text_cap ? q->text_cap : 256;
                    while (nc < q->text_len + c.text_len + 1) nc *= 2;
                    char *nt = cm_realloc_array(q->text, nc, 1);
                    if (!nt) return 1;
                    q->text = nt;
                    q->text_cap = nc;
                }
                memcpy(q->text + q->text_len, c.text, c.text_len);
                q->text_len += c.text_len;
                q->text[q->text_len] = '\0';
            }
        }
        break;
    default:
        break;
    }
    return 0;
}

static void rq_on_head(void *ud, int status, uint64_t t_ns) {
    rq_t *q = ud;
    q->status = status;
}

static int rq_on_body(void *ud, const char *data, size_t len, uint64_t t_ns) {
    rq_t *q = ud;
    if (q->status != 200) return 0; /* an error body: its status says it all */
    q->t_last = t_ns;
    return bench_sse_feed(q->sse, data, len) == CM_OK ? 0 : 1;
}

static void rq_free(rq_t *q) {
    bench_sse_free(q->sse);
    bench_vec_free(&q->gaps);
    cm_free(q->text);
    cm_free(q);
}

static cm_status_t point_add(point_t *pt, const rq_result_t *res) {
    if (pt->n_res == pt->cap_res) {
        size_t nc = pt->cap_res ? pt->cap_res * 2 : 64;
        rq_result_t *nr = cm_realloc_array(pt->res, nc, sizeof *nr);
        if (!nr) return CM_ERR_NO_MEMORY;
        pt->res = nr;
        pt->cap_res = nc;
    }
    pt->res[pt->n_res++] = *res;
    return CM_OK;
}

static void rq_on_done(void *ud, bench_err_t err, int status, uint64_t t_ns) {
    rq_t *q = ud;
    run_t *r = q->run;
    user_t *u = q->user;
    rq_result_t res = {.session = u->index,
                       .turn = (uint32_t)u->turn,
                       .t_start = q->t_start,
                       .t_end = t_ns,
                       .status = status,
                       .chunks = q->chunks};
    if (err == BENCH_ERR_NONE) {
        if (status != 200) {
            err = bench_err_from_status(status);
            if (err == BENCH_ERR_NONE) err = BENCH_ERR_HTTP_OTHER;
        } else if (q->stream_err) {
            err = BENCH_ERR_STREAM;
        } else if (!q->done_seen && !q->finished) {
            err = BENCH_ERR_INCOMPLETE;
        }
    } else if (err == BENCH_ERR_STREAM && !q->stream_err) {
        /* The body callback stopped on a bad payload (or lack of memory). */
        err = BENCH_ERR_PROTOCOL;
    }
    res.err = err;
    res.t_first = q->chunks ? q->t_first : 0;
    res.usage = q->usage_out >= 0;
    res.out_tokens = q->usage_out >= 0 ? q->usage_out : q->chunks;
    res.in_tokens = q->usage_in >= 0 ? q->usage_in : q->in_est;
    bool ok = err == BENCH_ERR_NONE;
    void *gctx;
    bench_grade_fn grade = bench_workload_grader(r->wl, &gctx);
    if (ok && grade) {
        bool correct = false;
        if (grade(gctx, u->s, u->turn, q->text ? q->text : "", q->text_len, &correct) == CM_OK) {
            res.graded = true;
            res.correct = correct;
        }
    }
    if (r->pt) {
        if (point_add(r->pt, &res) != CM_OK) r->fatal = CM_ERR_NO_MEMORY;
        if (ok)
            for (size_t i = 0; i < q->gaps.n; i++)
                if (bench_vec_push(&r->pt->itl, q->gaps.v[i]) != CM_OK) r->fatal = CM_ERR_NO_MEMORY;
    }
    if (ok) {
        u->answers[u->turn] = q->text ? q->text : cm_strdup("");
        q->text = NULL;
        u->answer_tokens[u->turn] = res.out_tokens;
        u->turn++;
    } else {
        u->turn = u->s->n_turns; /* later turns need this one's answer */
    }
    rq_free(q);
    user_next(u);
}

/* Builds the JSON body of @u's current turn; returns a heap string or NULL. */
static char *rq_body(run_t *r, user_t *u, int64_t *in_est) {
    const bench_session_t *s = u->s;
    size_t t = u->turn;
    int64_t est = s->system_est;
    cJSON *root = cJSON_CreateObject();
    char *out = NULL, *prompt = NULL;
    if (!root) return NULL;
    if (g_model[0] && !cJSON_AddStringToObject(root, "model", g_model)) goto cleanup;
    if (r->chat) {
        cJSON *msgs = cJSON_AddArrayToObject(root, "messages");
        if (!msgs) goto cleanup;
        for (size_t i = 0; i <= t; i++) {
            const char *role[2] = {"user", "assistant"};
            const char *text[2] = {s->user[i], i < t ? u->answers[i] : NULL};
            if (i == 0 && s->system) {
                cJSON *m = cJSON_CreateObject();
                if (!m) goto cleanup;
                cJSON_AddItemToArray(msgs, m);
                if (!cJSON_AddStringToObject(m, "role", "system") ||
                    !cJSON_AddStringToObject(m, "content", s->system))
                    goto cleanup;
            }
            for (int k = 0; k < 2 && text[k]; k++) {
                cJSON *m = cJSON_CreateObject();
                if (!m) goto cleanup;
                cJSON_AddItemToArray(msgs, m);
                if (!cJSON_AddStringToObject(m, "role", role[k]) ||
                    !cJSON_AddStringToObject(m, "content", text[k]))
                    goto cleanup;
            }
            est += s->input_est[i] + (i < t ? u->answer_tokens[i] : 0);
        }
    } else {
        /* Plain completions: the conversation as one text, turns on new lines. */
        size_t len = 0, cap = 0;
        for (int pass = 0; pass < 2; pass++) {
            if (pass == 1 && !(prompt = cm_malloc(cap + 1))) goto cleanup;
            len = 0;
#define PUT(str)                                      \
    do {                                              \
        size_t l_ = strlen(str);                      \
        if (pass == 1) memcpy(prompt + len, str, l_); \
        len += l_;                                    \
    } while (0)
            if (s->system) {
                PUT(s->system);
                PUT("\n\n");
            }
            for (size_t i = 0; i <= t; i++) {
                PUT(s->user[i]);
                if (i < t) {
                    PUT("\n\n");
                    PUT(u->answers[i]);
                    PUT("\n\n");
                }
            }
#undef PUT
            cap = len;
        }
        prompt[len] = '\0';
        for (size_t i = 0; i <= t; i++) est += s->input_est[i] + (i < t ? u->answer_tokens[i] : 0);
        if (!cJSON_AddStringToObject(root, "prompt", prompt)) goto cleanup;
    }
    int64_t max_tokens = s->max_tokens[t];
    if (g_max_tokens > 0 && max_tokens > g_max_tokens) max_tokens = g_max_tokens;
    cJSON *so;
    if (!cJSON_AddNumberToObject(root, "max_tokens", (double)max_tokens) ||
        !cJSON_AddBoolToObject(root, "stream", 1) ||
        !(so = cJSON_AddObjectToObject(root, "stream_options")) ||
        !cJSON_AddBoolToObject(so, "include_usage", 1) ||
        !cJSON_AddNumberToObject(root, "temperature", g_temperature))
        goto cleanup;
    if (g_ignore_eos && !cJSON_AddBoolToObject(root, "ignore_eos", 1)) goto cleanup;
    out = cJSON_PrintUnformatted(root);
    *in_est = est;
cleanup:
    cm_free(prompt);
    cJSON_Delete(root);
    return out;
}

static const bench_http_cb_t k_rq_cb = {
    .on_head = rq_on_head, .on_body = rq_on_body, .on_done = rq_on_done};

/* Sends @u's current turn. Returns false when nothing was sent. */
static bool rq_send(user_t *u) {
    run_t *r = u->run;
    rq_t *q = cm_calloc(1, sizeof *q);
    if (!q) goto oom;
    q->run = r;
    q->user = u;
    q->usage_in = q->usage_out = -1;
    q->sse = bench_sse_new(SSE_MAX, rq_on_event, q);
    char *body = q->sse ? rq_body(r, u, &q->in_est) : NULL;
    if (!body) goto oom;
    q->t_start = cm_time_mono_ns();
    cm_status_t st =
        bench_http_post(r->http, r->path, body, strlen(body), g_timeout_ms, &k_rq_cb, q);
    cJSON_free(body);
    if (st != CM_OK) {
        r->fatal = st;
        rq_free(q);
        return false;
    }
    r->issued++;
    return true;
oom:
    if (q) rq_free(q);
    r->fatal = CM_ERR_NO_MEMORY;
    return false;
}

static void user_free(user_t *u) {
    if (u->s)
        for (size_t i = 0; i < u->s->n_turns; i++) cm_free(u->answers[i]);
    cm_free(u->answers);
    cm_free(u->answer_tokens);
    bench_session_free(u->s);
    u->s = NULL;
    u->answers = NULL;
    u->answer_tokens = NULL;
}

/* Loads the next session into @u. */
static bool user_take_session(user_t *u) {
    run_t *r = u->run;
    user_free(u);
    u->index = r->next_session++;
    u->turn = 0;
    if (bench_workload_session(r->wl, u->index, &u->s) != CM_OK) goto oom;
    u->answers = cm_calloc(u->s->n_turns, sizeof *u->answers);
    u->answer_tokens = cm_calloc(u->s->n_turns, sizeof *u->answer_tokens);
    if (!u->answers || !u->answer_tokens) goto oom;
    return true;
oom:
    r->fatal = CM_ERR_NO_MEMORY;
    return false;
}

/* Sends @u's next request, or retires @u. Closed-loop users move on to a
 * new session when theirs ends; open-loop users run one session. */
static void user_next(user_t *u) {
    run_t *r = u->run;
    if (run_may_issue(r)) {
        bool have = u->s && u->turn < u->s->n_turns;
        if (!have && !r->open_loop) have = user_take_session(u);
        if (have && rq_send(u)) return;
    }
    user_free(u);
    cm_free(u);
    r->users--;
    run_check_done(r);
}

static void user_start(run_t *r) {
    user_t *u = cm_calloc(1, sizeof *u);
    if (!u) {
        r->fatal = CM_ERR_NO_MEMORY;
        return;
    }
    u->run = r;
    r->users++;
    if (r->open_loop) user_take_session(u); /* on failure user_next retires it */
    user_next(u);
}

static void run_arrival(uv_timer_t *t) {
    run_t *r = t->data;
    uint64_t now = cm_time_mono_ns();
    while (run_may_issue(r) && r->next_arrival_ns <= now) {
        user_start(r);
        r->next_arrival_ns += (uint64_t)(bench_rng_exp_gap(&r->arr_rng, r->rate) * 1e9);
    }
    if (run_may_issue(r)) {
        uint64_t wait_ms = (r->next_arrival_ns - now + 999999) / 1000000;
        uv_timer_start(&r->arrival, run_arrival, wait_ms, 0);
    } else {
        run_check_done(r);
    }
}

static void run_stop_issuing(uv_timer_t *t) {
    run_t *r = t->data;
    r->issuing = false;
    run_check_done(r);
}

static void run_guard(uv_timer_t *t) {
    run_t *r = t->data;
    cm_log_error("bench", "a sweep point overran its deadline; abandoning it");
    r->aborted = true;
    r->issuing = false;
}

/*
 * Runs one point: closed loop with @conc users, or open loop at @rate.
 * Requests stop being issued after @duration_ms or @max_requests (0 = no
 * cap); in-flight ones finish (each under its deadline).
 */
static cm_status_t run_point(run_t *r, point_t *pt, int conc, double rate, uint64_t duration_ms,
                             uint64_t max_requests) {
    r->pt = pt;
    r->open_loop = rate > 0;
    r->rate = rate;
    r->issuing = true;
    r->aborted = false;
    r->issued = 0;
    r->max_requests = max_requests;
    r->users = 0;
    uint64_t now = cm_time_mono_ns();
    r->stop_at_ns = now + duration_ms * 1000000ull;
    if (pt) pt->t_start = now;
    uv_timer_start(&r->stop, run_stop_issuing, duration_ms, 0);
    uv_timer_start(&r->guard, run_guard, duration_ms + g_timeout_ms * 2 + 10000, 0);
    if (r->open_loop) {
        r->next_arrival_ns = now;
        run_arrival(&r->arrival);
    } else {
        for (int i = 0; i < conc && run_may_issue(r); i++) user_start(r);
    }
    /* The guard timer is active throughout, so each turn makes progress. */
    while (!run_point_done(r) && !r->aborted) uv_run(&r->loop, UV_RUN_ONCE);
    uv_timer_stop(&r->stop);
    uv_timer_stop(&r->guard);
    uv_timer_stop(&r->arrival);
    if (pt) {
        pt->t_end = cm_time_mono_ns();
        /* The measured interval ends with the last response. */
        uint64_t last = pt->t_start;
        for (size_t i = 0; i < pt->n_res; i++)
            if (pt->res[i].t_end > last) last = pt->res[i].t_end;
        if (pt->n_res) pt->t_end = last;
    }
    r->pt = NULL;
    if (r->aborted) return CM_ERR_TIMEOUT;
    return r->fatal;
}

/* ---- reporting ---------------------------------------------------------- */

typedef struct {
    size_t n, ok, failed, graded, correct, usage;
    size_t errors[BENCH_ERR_COUNT];
    int64_t in_tokens, out_tokens;
    double seconds, req_s, out_tok_s, total_tok_s, success_rate, accuracy;
    bench_summary_t ttft, tpot, itl, e2e;
} point_stats_t;

static cm_status_t point_stats(point_t *pt, point_stats_t *s) {
    memset(s, 0, sizeof *s);
    bench_vec_t ttft = {0}, tpot = {0}, e2e = {0};
    cm_status_t st = CM_OK;
    s->n = pt->n_res;
    for (size_t i = 0; i < pt->n_res && st == CM_OK; i++) {
        const rq_result_t *q = &pt->res[i];
        if (q->err != BENCH_ERR_NONE) {
            s->failed++;
            s->errors[q->err]++;
            continue;
        }
        s->ok++;
        s->usage += q->usage;
        s->in_tokens += q->in_tokens;
        s->out_tokens += q->out_tokens;
        s->graded += q->graded;
        s->correct += q->correct;
        double e = (double)(q->t_end - q->t_start) / 1e6;
        st = bench_vec_push(&e2e, e);
        if (st == CM_OK && q->chunks > 0) {
            double f = (double)(q->t_first - q->t_start) / 1e6;
            st = bench_vec_push(&ttft, f);
            if (st == CM_OK && q->out_tokens > 1)
                st = bench_vec_push(&tpot, (e - f) / (double)(q->out_tokens - 1));
        }
    }
    s->seconds = (double)(pt->t_end - pt->t_start) / 1e9;
    if (s->seconds > 0) {
        s->req_s = (double)s->ok / s->seconds;
        s->out_tok_s = (double)s->out_tokens / s->seconds;
        s->total_tok_s = (double)(s->out_tokens + s->in_tokens) / s->seconds;
    }
    s->success_rate = s->n ? (double)s->ok / (double)s->n : NAN;
    s->accuracy = s->graded ? (double)s->correct / (double)s->graded : NAN;
    bench_summarize(ttft.v, ttft.n, &s->ttft);
    bench_summarize(tpot.v, tpot.n, &s->tpot);
    bench_summarize(pt->itl.v, pt->itl.n, &s->itl);
    bench_summarize(e2e.v, e2e.n, &s->e2e);
    bench_vec_free(&ttft);
    bench_vec_free(&tpot);
    bench_vec_free(&e2e);
    return st;
}

static cJSON *json_num(double x) {
    return isfinite(x) ? cJSON_CreateNumber(x) : cJSON_CreateNull();
}

static void json_summary(cJSON *obj, const char *name, const bench_summary_t *s) {
    cJSON *o = cJSON_AddObjectToObject(obj, name);
    if (!o) return;
    cJSON_AddNumberToObject(o, "n", (double)s->n);
    const char *keys[] = {"mean", "stddev", "min", "p50", "p90", "p95", "p99", "max"};
    const double vals[] = {s->mean, s->stddev, s->min, s->p50, s->p90, s->p95, s->p99, s->max};
    for (int i = 0; i < 8; i++) cJSON_AddItemToObject(o, keys[i], json_num(vals[i]));
}

static cJSON *json_point(const point_t *pt, const point_stats_t *s) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "phase", k_phase_names[pt->phase]);
    cJSON_AddStringToObject(o, "label", pt->label);
    if (pt->input_len) cJSON_AddNumberToObject(o, "input_len", pt->input_len);
    cJSON_AddItemToObject(o, "concurrency",
                          pt->phase == PH_RATE ? cJSON_CreateNull() : cJSON_CreateNumber(pt->conc));
    cJSON_AddItemToObject(o, "rate",
                          pt->phase == PH_RATE ? cJSON_CreateNumber(pt->rate) : cJSON_CreateNull());
    cJSON_AddNumberToObject(o, "duration_s", s->seconds);
    cJSON_AddNumberToObject(o, "requests", (double)s->n);
    cJSON_AddNumberToObject(o, "ok", (double)s->ok);
    cJSON_AddNumberToObject(o, "failed", (double)s->failed);
    cJSON_AddItemToObject(o, "success_rate", json_num(s->success_rate));
    cJSON *errs = cJSON_AddObjectToObject(o, "errors");
    for (int e = 1; e < BENCH_ERR_COUNT && errs; e++)
        if (s->errors[e]) cJSON_AddNumberToObject(errs, bench_err_name(e), (double)s->errors[e]);
    cJSON_AddNumberToObject(o, "input_tokens", (double)s->in_tokens);
    cJSON_AddNumberToObject(o, "output_tokens", (double)s->out_tokens);
    cJSON_AddNumberToObject(o, "usage_reported", (double)s->usage);
    cJSON_AddNumberToObject(o, "req_s", s->req_s);
    cJSON_AddNumberToObject(o, "output_tok_s", s->out_tok_s);
    cJSON_AddNumberToObject(o, "total_tok_s", s->total_tok_s);
    json_summary(o, "ttft_ms", &s->ttft);
    json_summary(o, "tpot_ms", &s->tpot);
    json_summary(o, "itl_ms", &s->itl);
    json_summary(o, "e2e_ms", &s->e2e);
    cJSON_AddNumberToObject(o, "graded", (double)s->graded);
    cJSON_AddItemToObject(o, "accuracy", json_num(s->accuracy));
    return o;
}

static void csv_num(FILE *f, double x) {
    if (isfinite(x))
        fprintf(f, ",%.6g", x);
    else
        fputs(",", f);
}

static void csv_point(FILE *f, const point_t *pt, const point_stats_t *s) {
    fprintf(f, "%s,%s", k_phase_names[pt->phase], pt->label);
    csv_num(f, pt->phase == PH_RATE ? NAN : pt->conc);
    csv_num(f, pt->phase == PH_RATE ? pt->rate : NAN);
    fprintf(f, ",%.6g,%zu,%zu,%zu", s->seconds, s->n, s->ok, s->failed);
    csv_num(f, s->success_rate);
    fprintf(f, ",%.6g,%.6g,%.6g,%lld,%lld", s->req_s, s->out_tok_s, s->total_tok_s,
            (long long)s->in_tokens, (long long)s->out_tokens);
    const bench_summary_t *ms[] = {&s->ttft, &s->tpot, &s->itl, &s->e2e};
    for (int m = 0; m < 4; m++) {
        csv_num(f, ms[m]->mean);
        csv_num(f, ms[m]->p50);
        csv_num(f, ms[m]->p90);
        csv_num(f, ms[m]->p95);
        csv_num(f, ms[m]->p99);
    }
    fputc(',', f);
    bool first = true;
    for (int e = 1; e < BENCH_ERR_COUNT; e++)
        if (s->errors[e]) {
            fprintf(f, "%s%s:%zu", first ? "" : ";", bench_err_name(e), s->errors[e]);
            first = false;
        }
    csv_num(f, s->accuracy);
    fputc('\n', f);
}

static const char k_csv_head[] =
    "phase,label,concurrency,rate,duration_s,requests,ok,failed,success_rate,req_s,"
    "output_tok_s,total_tok_s,input_tokens,output_tokens,"
    "ttft_ms_mean,ttft_ms_p50,ttft_ms_p90,ttft_ms_p95,ttft_ms_p99,"
    "tpot_ms_mean,tpot_ms_p50,tpot_ms_p90,tpot_ms_p95,tpot_ms_p99,"
    "itl_ms_mean,itl_ms_p50,itl_ms_p90,itl_ms_p95,itl_ms_p99,"
    "e2e_ms_mean,e2e_ms_p50,e2e_ms_p90,e2e_ms_p95,e2e_ms_p99,errors,accuracy\n";

static void table_row(const point_t *pt, const point_stats_t *s) {
    printf("%-16s %6zu %6.1f%% %7.2f %9.1f %8.1f %8.1f %7.2f %7.2f %7.2f %8.1f %8.1f\n", pt->label,
           s->n, 100.0 * (isfinite(s->success_rate) ? s->success_rate : 0), s->req_s, s->out_tok_s,
           s->ttft.p50, s->ttft.p99, s->tpot.p50, s->tpot.p99, s->itl.p50, s->e2e.p50, s->e2e.p99);
}

static cm_status_t write_outputs(const char *prefix, point_t *pts, size_t n, cJSON *config) {
    cm_status_t st = CM_ERR_IO;
    char path[4096];
    FILE *fj = NULL, *fc = NULL, *fr = NULL;
    char *text = NULL;
    cJSON *root = cJSON_CreateObject();
    if (!root) return CM_ERR_NO_MEMORY;
    cJSON_AddStringToObject(root, "tool", "tandem bench serve");
    cJSON_AddStringToObject(root, "version", cm_version());
    cJSON_AddStringToObject(root, "commit", cm_build_commit());
    cJSON_AddNumberToObject(root, "unix_time_s", (double)(cm_time_wall_ns() / 1000000000ull));
    cJSON_AddItemReferenceToObject(root, "config", config);
    cJSON *arr = cJSON_AddArrayToObject(root, "points");
    if (prefix) {
        snprintf(path, sizeof path, "%s.csv", prefix);
        if (!(fc = fopen(path, "w"))) goto cleanup;
        fputs(k_csv_head, fc);
        snprintf(path, sizeof path, "%s.requests.csv", prefix);
        if (!(fr = fopen(path, "w"))) goto cleanup;
        fputs("point,session,turn,start_ms,ttft_ms,e2e_ms,input_tokens,output_tokens,chunks,"
              "usage_reported,status,error\n",
              fr);
    }
    printf("\n%-16s %6s %7s %7s %9s %8s %8s %7s %7s %7s %8s %8s\n", "point", "reqs", "ok", "req/s",
           "out tok/s", "TTFT p50", "TTFT p99", "TPOT p50", "p99", "ITL p50", "E2E p50", "E2E p99");
    printf("%-16s %6s %7s %7s %9s %8s %8s %7s %7s %7s %8s %8s\n", "", "", "", "", "", "(ms)",
           "(ms)", "(ms)", "(ms)", "(ms)", "(ms)", "(ms)");
    for (size_t i = 0; i < n; i++) {
        point_stats_t s;
        if ((st = point_stats(&pts[i], &s)) != CM_OK) goto cleanup;
        st = CM_ERR_IO;
        table_row(&pts[i], &s);
        cJSON *o = json_point(&pts[i], &s);
        if (!o || !arr) goto cleanup;
        cJSON_AddItemToArray(arr, o);
        if (fc) csv_point(fc, &pts[i], &s);
        for (size_t k = 0; fr && k < pts[i].n_res; k++) {
            const rq_result_t *q = &pts[i].res[k];
            fprintf(fr, "%s,%llu,%u,%.3f", pts[i].label, (unsigned long long)q->session, q->turn,
                    (double)(q->t_start - pts[0].t_start) / 1e6);
            csv_num(fr, q->chunks && q->t_first ? (double)(q->t_first - q->t_start) / 1e6 : NAN);
            fprintf(fr, ",%.3f,%lld,%lld,%d,%d,%d,%s\n", (double)(q->t_end - q->t_start) / 1e6,
                    (long long)q->in_tokens, (long long)q->out_tokens, q->chunks, q->usage,
                    q->status, bench_err_name(q->err));
        }
    }
    for (size_t i = 0; i < n; i++) {
        point_stats_t s;
        if (point_stats(&pts[i], &s) != CM_OK) break;
        bool any = false;
        for (int e = 1; e < BENCH_ERR_COUNT; e++)
            if (s.errors[e]) {
                if (!any) printf("errors at %s:", pts[i].label);
                printf(" %s=%zu", bench_err_name(e), s.errors[e]);
                any = true;
            }
        if (any) printf("\n");
        if (s.graded)
            printf("accuracy at %s: %.3f of %zu graded\n", pts[i].label, s.accuracy, s.graded);
    }
    if (prefix) {
        snprintf(path, sizeof path, "%s.json", prefix);
        if (!(text = cJSON_Print(root)) || !(fj = fopen(path, "w"))) goto cleanup;
        if (fputs(text, fj) < 0 || fputc('\n', fj) == EOF) goto cleanup;
        printf("wrote %s.json, %s.csv, %s.requests.csv\n", prefix, prefix, prefix);
    }
    st = CM_OK;
cleanup:
    if (fj && fclose(fj) != 0) st = CM_ERR_IO;
    if (fc && fclose(fc) != 0) st = CM_ERR_IO;
    if (fr && fclose(fr) != 0) st = CM_ERR_IO;
    cJSON_free(text);
    cJSON_Delete(root);
    return st;
}

/* ---- command ------------------------------------------------------------ */

/* Parses "1,2,4" (ints when @ints) into @out; returns the count or -1. */
static int parse_list(const char *s, double *out, int cap, bool ints) {
    int n = 0;
    const char *p = s;
    if (!*p) return 0;
    while (*p) {
        char *end;
        double v = strtod(p, &end);
        if (end == p || !(v > 0) || !isfinite(v) || n == cap) return -1;
        if (ints && (v != floor(v) || v > 100000)) return -1;
        if (!ints && v > 1e6) return -1;
        out[n++] = v;
        if (*end == ',')
            end++;
        else if (*end)
            return -1;
        p = end;
    }
    return n;
}

/* The first IPv4 address of @ai, else its first address: "localhost" often
 * resolves to ::1 first while servers commonly listen on 127.0.0.1. */
static void close_walk(uv_handle_t *h, void *arg) {
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

int bench_serve_main(int argc, char **argv) {
    static const cm_flag_t *const tables[] = {k_flags, NULL};
    const cm_cmd_spec_t spec = {
        .prog = "tandem bench serve",
        .summary = "Load an OpenAI-compatible endpoint: TTFT, TPOT, latency, throughput.",
        .tables = tables};
    int code, npos;
    if (!cm_cli_parse(&spec, argc, argv, NULL, &npos, &code)) return code;
    const char *prog = spec.prog;
    double concs[MAX_POINTS], rates[MAX_POINTS], blens[MAX_POINTS];
    int n_conc = parse_list(g_conc, concs, MAX_POINTS, true);
    int n_rate = parse_list(g_rate, rates, MAX_POINTS, false);
    int n_blen = parse_list(g_baseline_lens, blens, MAX_POINTS, true);
    if (n_conc < 0 || n_rate < 0 || n_blen < 0) {
        fprintf(stderr,
                "%s: --concurrency, --rate and --baseline-lens take comma-separated positive "
                "numbers (integers but for --rate), at most %d\n",
                prog, MAX_POINTS);
        return CM_EXIT_USAGE;
    }
    if (n_blen > 0 && g_baseline == 0) {
        fprintf(stderr, "%s: --baseline-lens needs --baseline N (requests per length)\n", prog);
        return CM_EXIT_USAGE;
    }
    if (n_conc + n_rate == 0 && g_baseline == 0) {
        fprintf(stderr, "%s: nothing to run: give --concurrency, --rate or --baseline\n", prog);
        return CM_EXIT_USAGE;
    }
    if (g_duration_ms == 0 || g_timeout_ms == 0) {
        fprintf(stderr, "%s: --duration and --timeout must be positive\n", prog);
        return CM_EXIT_USAGE;
    }
    char base[256], err[256];
    {
        char h[256];
        int port;
        if (bench_url_parse(g_url, h, sizeof h, &port, base, sizeof base) != CM_OK) {
            fprintf(stderr, "%s: bad --url '%s' (want http://host[:port][/base])\n", prog, g_url);
            return CM_EXIT_USAGE;
        }
    }
    if (g_endpoint[0] != '/' || strlen(g_endpoint) > 200 || strpbrk(g_endpoint, " \r\n\t")) {
        fprintf(stderr, "%s: bad --endpoint '%s'\n", prog, g_endpoint);
        return CM_EXIT_USAGE;
    }
    bench_wl_cfg_t wc = {.seed = (uint64_t)g_seed,
                         .input_len = (int32_t)g_input_len,
                         .output_len = (int32_t)g_output_len,
                         .sharegpt = (bench_sharegpt_model_t)BENCH_SHAREGPT_DEFAULTS,
                         .sharegpt_file = g_sharegpt,
                         .prefix_len = (int32_t)g_prefix_len,
                         .turns = (int32_t)g_turns,
                         .turn_len = (int32_t)g_turn_len};
    wc.kind = !strcmp(g_workload, "fixed")      ? BENCH_WL_FIXED
              : !strcmp(g_workload, "sharegpt") ? BENCH_WL_SHAREGPT
              : !strcmp(g_workload, "task")     ? BENCH_WL_TASK
                                                : BENCH_WL_MULTITURN;
    if (wc.kind == BENCH_WL_TASK) {
        bench_task_t t;
        bench_task_parse(g_task, &t);
        wc.task = (int32_t)t;
        wc.task_size = (int32_t)bench_task_size(t, (uint32_t)g_context, (uint32_t)g_digits);
        size_t el = strlen(g_endpoint);
        if (el < 16 || strcmp(g_endpoint + el - 16, "chat/completions") != 0) {
            fprintf(stderr, "%s: --workload task needs --endpoint /v1/chat/completions\n", prog);
            return CM_EXIT_USAGE;
        }
    }
    if (g_sharegpt && wc.kind != BENCH_WL_SHAREGPT) {
        fprintf(stderr, "%s: --sharegpt needs --workload sharegpt\n", prog);
        return CM_EXIT_USAGE;
    }

    int rc = CM_EXIT_FAILURE;
    run_t *r = cm_calloc(1, sizeof *r);
    point_t *pts = cm_calloc(MAX_POINTS * 3 + 1, sizeof *pts);
    cJSON *config = cJSON_CreateObject();
    size_t n_pts = 0;
    bool loop_ready = false;
    if (!r || !pts || !config) {
        fprintf(stderr, "%s: out of memory\n", prog);
        goto cleanup;
    }
    if (bench_workload_new(&wc, &r->wl, err, sizeof err) != CM_OK) {
        fprintf(stderr, "%s: %s\n", prog, err);
        rc = CM_EXIT_USAGE;
        goto cleanup;
    }
    uv_loop_init(&r->loop);
    loop_ready = true;
    uv_timer_init(&r->loop, &r->arrival);
    uv_timer_init(&r->loop, &r->stop);
    uv_timer_init(&r->loop, &r->guard);
    r->arrival.data = r->stop.data = r->guard.data = r;
    bench_rng_seed(&r->arr_rng, (uint64_t)g_seed ^ 0xa11a11a11a11a11aull);
    snprintf(r->path, sizeof r->path, "%s%s", base, g_endpoint);
    size_t pl = strlen(g_endpoint);
    r->chat = pl >= 16 && !strcmp(g_endpoint + pl - 16, "chat/completions");

    if (bench_http_open_url(&r->loop, g_url, (size_t)g_max_conns, &r->http, base, sizeof base, err,
                            sizeof err) != CM_OK) {
        fprintf(stderr, "%s: %s\n", prog, err);
        goto cleanup;
    }

    cJSON_AddStringToObject(config, "url", g_url);
    cJSON_AddStringToObject(config, "endpoint", g_endpoint);
    cJSON_AddStringToObject(config, "model", g_model);
    cJSON_AddStringToObject(config, "workload", bench_workload_name(r->wl));
    cJSON_AddNumberToObject(config, "input_len", (double)g_input_len);
    cJSON_AddNumberToObject(config, "output_len", (double)g_output_len);
    if (g_sharegpt) cJSON_AddStringToObject(config, "sharegpt_file", g_sharegpt);
    if (wc.kind == BENCH_WL_MULTITURN) {
        cJSON_AddNumberToObject(config, "prefix_len", (double)g_prefix_len);
        cJSON_AddNumberToObject(config, "turns", (double)g_turns);
        cJSON_AddNumberToObject(config, "turn_len", (double)g_turn_len);
    }
    if (wc.kind == BENCH_WL_TASK) {
        cJSON_AddStringToObject(config, "task", g_task);
        cJSON_AddNumberToObject(config, "task_size", wc.task_size);
    }
    cJSON_AddNumberToObject(config, "max_tokens_cap", (double)g_max_tokens);
    cJSON_AddBoolToObject(config, "ignore_eos", g_ignore_eos);
    cJSON_AddNumberToObject(config, "temperature", g_temperature);
    cJSON_AddNumberToObject(config, "seed", (double)g_seed);
    cJSON_AddNumberToObject(config, "warmup", (double)g_warmup);
    cJSON_AddNumberToObject(config, "duration_s", (double)g_duration_ms / 1000.0);
    cJSON_AddNumberToObject(config, "num_requests", (double)g_num_requests);
    cJSON_AddNumberToObject(config, "timeout_s", (double)g_timeout_ms / 1000.0);

    cm_status_t st;
    /* Warm-up and baseline are sequential; their length is their request
     * count, bounded by the deadline of each request. */
    uint64_t seq_ms = g_timeout_ms * (uint64_t)(g_warmup + g_baseline + 1);
    if (g_warmup > 0) {
        printf("warm-up: %lld requests\n", (long long)g_warmup);
        fflush(stdout);
        if ((st = run_point(r, NULL, 1, 0, seq_ms, (uint64_t)g_warmup)) != CM_OK) goto failed;
    }
    for (int i = 0; i < n_blen; i++) {
        /* Fixed prompts of each length, from the same seed. */
        point_t *pt = &pts[n_pts++];
        pt->phase = PH_BASELINE;
        pt->conc = 1;
        pt->input_len = (int32_t)blens[i];
        snprintf(pt->label, sizeof pt->label, "baseline@in=%d", pt->input_len);
        bench_wl_cfg_t bc = {.kind = BENCH_WL_FIXED,
                             .seed = (uint64_t)g_seed,
                             .input_len = pt->input_len,
                             .output_len = (int32_t)g_output_len};
        bench_workload_t *main_wl = r->wl, *bwl;
        if (bench_workload_new(&bc, &bwl, err, sizeof err) != CM_OK) {
            fprintf(stderr, "%s: --baseline-lens: %s\n", prog, err);
            goto cleanup;
        }
        printf("%s: %lld sequential requests\n", pt->label, (long long)g_baseline);
        fflush(stdout);
        r->wl = bwl;
        st = run_point(r, pt, 1, 0, seq_ms, (uint64_t)g_baseline);
        r->wl = main_wl;
        bench_workload_free(bwl);
        if (st != CM_OK) goto failed;
    }
    if (g_baseline > 0 && n_blen == 0) {
        point_t *pt = &pts[n_pts++];
        pt->phase = PH_BASELINE;
        pt->conc = 1;
        snprintf(pt->label, sizeof pt->label, "baseline");
        printf("baseline: %lld sequential requests\n", (long long)g_baseline);
        fflush(stdout);
        if ((st = run_point(r, pt, 1, 0, seq_ms, (uint64_t)g_baseline)) != CM_OK) goto failed;
    }
    for (int i = 0; i < n_conc; i++) {
        point_t *pt = &pts[n_pts++];
        pt->phase = PH_CONCURRENCY;
        pt->conc = (int)concs[i];
        snprintf(pt->label, sizeof pt->label, "concurrency=%d", pt->conc);
        printf("%s\n", pt->label);
        fflush(stdout);
        if ((st = run_point(r, pt, pt->conc, 0, g_duration_ms, (uint64_t)g_num_requests)) != CM_OK)
            goto failed;
    }
    for (int i = 0; i < n_rate; i++) {
        point_t *pt = &pts[n_pts++];
        pt->phase = PH_RATE;
        pt->rate = rates[i];
        snprintf(pt->label, sizeof pt->label, "rate=%g", pt->rate);
        printf("%s\n", pt->label);
        fflush(stdout);
        if ((st = run_point(r, pt, 0, pt->rate, g_duration_ms, (uint64_t)g_num_requests)) != CM_OK)
            goto failed;
    }
    if ((st = write_outputs(g_out, pts, n_pts, config)) != CM_OK) {
        fprintf(stderr, "%s: cannot write results under '%s': %s\n", prog, g_out ? g_out : "-",
                cm_strerror(st));
        goto cleanup;
    }
    rc = CM_EXIT_OK;
    goto cleanup;
failed:
    fprintf(stderr, "%s: run stopped: %s\n", prog, cm_strerror(st));
    if (n_pts > 0) write_outputs(g_out, pts, n_pts, config); /* what was measured */
cleanup:
    if (r && loop_ready) {
        bench_http_free(r->http);
        r->http = NULL;
        uv_walk(&r->loop, close_walk, NULL);
        while (uv_run(&r->loop, UV_RUN_DEFAULT) != 0) {
        }
        uv_loop_close(&r->loop);
    }
    if (pts)
        for (size_t i = 0; i < n_pts; i++) {
            cm_free(pts[i].res);
            bench_vec_free(&pts[i].itl);
        }
    cm_free(pts);
    cJSON_Delete(config);
    if (r) bench_workload_free(r->wl);
    cm_free(r);
    return rc;
}
