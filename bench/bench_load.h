/*
 * bench_load.h - the pieces of `tandem bench serve` (an OpenAI-API load
 * generator) and `tandem bench compare`, as a library: a pure SSE parser, a
 * pure stream-chunk decoder, exact statistics, a seeded random source with
 * Poisson arrivals, workload generators, an HTTP/1.1 keep-alive client on
 * libuv, and the arithmetic of comparison reports.
 *
 * Threading: nothing here is thread-safe; the HTTP client runs on the libuv
 * loop it was created with and must only be called from that loop's thread.
 * Every other object may be used from any one thread at a time.
 */
#ifndef TANDEM_BENCH_LOAD_H
#define TANDEM_BENCH_LOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "cm_base.h"

/* ------------------------------------------------------------------------ */
/* Server-sent events (WHATWG HTML "event stream" parsing, no I/O)          */
/* ------------------------------------------------------------------------ */

/*
 * Called once per dispatched event. @event is the "event:" field ("message"
 * when absent), @data the "data:" lines joined with '\n' (NUL-terminated,
 * @len bytes without the NUL); the callback may modify @data in place (e.g.
 * with bench_chunk_parse). Both are valid only during the call. Return 0 to
 * go on, anything else to stop: bench_sse_feed then returns CM_ERR_CANCELED
 * and the parser must be reset before further use.
 */
typedef int (*bench_sse_event_fn)(void *ud, const char *event, char *data, size_t len);

typedef struct bench_sse bench_sse_t;

/*
 * Returns a parser that accepts lines and events up to @max_bytes long (a
 * longer one is a CM_ERR_TOO_LARGE error), or NULL without memory. Lines may
 * end in CRLF, LF or CR and may be split anywhere across feeds; comment
 * lines (":...") are ignored; one leading space after "field:" is removed;
 * an event is dispatched at a blank line and only if it has data; a
 * trailing event without its blank line is never dispatched.
 */
bench_sse_t *bench_sse_new(size_t max_bytes, bench_sse_event_fn fn, void *ud);
/* Feeds @len bytes. Returns CM_OK, CM_ERR_TOO_LARGE, or CM_ERR_CANCELED. */
cm_status_t bench_sse_feed(bench_sse_t *p, const char *buf, size_t len);
/* Forgets any partial line or event (keeps the callback). */
void bench_sse_reset(bench_sse_t *p);
void bench_sse_free(bench_sse_t *p);

/* ------------------------------------------------------------------------ */
/* OpenAI streaming chunks (pure)                                           */
/* ------------------------------------------------------------------------ */

typedef enum {
    BENCH_CHUNK_DELTA = 0, /* a choice with text (possibly empty) */
    BENCH_CHUNK_USAGE,     /* the usage-only chunk (include_usage), no choices */
    BENCH_CHUNK_DONE,      /* the literal "[DONE]" */
    BENCH_CHUNK_ERROR,     /* an {"error": ...} object in the stream */
    BENCH_CHUNK_OTHER,     /* valid JSON of no interest (e.g. a role-only delta) */
} bench_chunk_kind_t;

typedef struct {
    bench_chunk_kind_t kind;
    const char *text; /* DELTA: choices[0].text or .delta.content; points into @data */
    size_t text_len;
    bool finished;             /* choices[0].finish_reason is a string */
    int64_t prompt_tokens;     /* usage.prompt_tokens, -1 when absent */
    int64_t completion_tokens; /* usage.completion_tokens, -1 when absent */
} bench_chunk_t;

/*
 * Decodes one SSE data payload of a /v1/completions (@chat false) or
 * /v1/chat/completions (@chat true) stream. The text is unescaped in place,
 * so @data (NUL-terminated, @len bytes) is modified and must outlive the use
 * of out->text. Returns CM_OK, or CM_ERR_PROTOCOL for a payload that is not
 * a JSON object (out untouched).
 */
cm_status_t bench_chunk_parse(char *data, size_t len, bool chat, bench_chunk_t *out);

/* ------------------------------------------------------------------------ */
/* Statistics                                                               */
/* ------------------------------------------------------------------------ */

/* A growable array of doubles. Zero-initialize; release with bench_vec_free. */
typedef struct {
    double *v;
    size_t n, cap;
} bench_vec_t;
/* Appends @x. Returns CM_OK or CM_ERR_NO_MEMORY (the vector is unchanged). */
cm_status_t bench_vec_push(bench_vec_t *vec, double x);
void bench_vec_free(bench_vec_t *vec);

/*
 * The @p-th percentile (0 <= p <= 100) of @n ascending-sorted values with
 * linear interpolation between closest ranks: rank h = (n-1)*p/100, result
 * x[floor h] + (h - floor h) * (x[floor h + 1] - x[floor h]). This is
 * numpy.percentile's default ("linear") method. Returns NAN when n is 0.
 */
double bench_percentile_sorted(const double *sorted, size_t n, double p);

typedef struct {
    size_t n;
    double mean, stddev; /* population standard deviation */
    double min, p50, p90, p95, p99, max;
} bench_summary_t;

/* Sorts @values in place and writes its summary; with n = 0 every field but n
 * is NAN. Exact: no sketches or histograms. */
void bench_summarize(double *values, size_t n, bench_summary_t *out);

/* ------------------------------------------------------------------------ */
/* Random numbers and arrivals                                              */
/* ------------------------------------------------------------------------ */

/* xoshiro256** seeded through splitmix64: identical streams for equal seeds. */
typedef struct {
    uint64_t s[4];
} bench_rng_t;

void bench_rng_seed(bench_rng_t *r, uint64_t seed);
uint64_t bench_rng_next(bench_rng_t *r);
/* Uniform in the open interval (0, 1). */
double bench_rng_uniform(bench_rng_t *r);
/* Standard normal (Box-Muller). */
double bench_rng_normal(bench_rng_t *r);
/* Uniform integer in [0, n) for n > 0 (unbiased). */
uint64_t bench_rng_below(bench_rng_t *r, uint64_t n);
/*
 * Gap in seconds to the next arrival of a Poisson process of @rate events
 * per second (exponential with mean 1/rate): -ln(U)/rate. @rate must be > 0.
 */
double bench_rng_exp_gap(bench_rng_t *r, double rate);

/* ------------------------------------------------------------------------ */
/* Workloads                                                                */
/* ------------------------------------------------------------------------ */

/*
 * A session is what one simulated user sends: one or more turns issued one
 * after the other, each turn resending the whole conversation so far. A
 * single-turn workload has sessions of one turn.
 */
typedef struct {
    char *system;        /* shared prefix (chat: the system message), or NULL */
    size_t n_turns;      /* >= 1 */
    char **user;         /* [n_turns] user text of each turn */
    int32_t *max_tokens; /* [n_turns] output tokens asked for each turn */
    int32_t *input_est;  /* [n_turns] estimated tokens of each user text */
    int32_t system_est;  /* estimated tokens of @system */
    void *task;          /* a task workload's item for its grader (freed with the
                          * session), else NULL; TASK: the expected answer */
} bench_session_t;

void bench_session_free(bench_session_t *s);

typedef enum {
    BENCH_WL_FIXED = 0, /* every prompt input_len words, output_len tokens */
    BENCH_WL_SHAREGPT,  /* lengths from the synthetic ShareGPT-like model, or a file */
    BENCH_WL_MULTITURN, /* shared prefix + turns (llm-d / vLLM offload workload) */
    BENCH_WL_TASK,      /* the demo model's checkable tasks, graded exactly */
} bench_wl_kind_t;

/*
 * The synthetic ShareGPT-like length model: input and output token counts are
 * independent log-normals, round(exp(mu + sigma * N(0,1))), clamped to
 * [min, max]. The defaults (BENCH_SHAREGPT_DEFAULTS) give the shape of
 * ShareGPT conversations as load generators use them: medians ~130 tokens,
 * means ~215 (input) and ~200 (output) tokens before clamping, long right
 * tails, inputs clamped at 2,048 tokens. They are chosen to resemble the data
 * set, not fitted to it; pass a real file for the real distribution.
 */
typedef struct {
    double in_mu, in_sigma;
    int32_t in_min, in_max;
    double out_mu, out_sigma;
    int32_t out_min, out_max;
} bench_sharegpt_model_t;

#define BENCH_SHAREGPT_DEFAULTS                                                      \
    {                                                                                \
        .in_mu = 4.87, .in_sigma = 1.0, .in_min = 4, .in_max = 2048, .out_mu = 4.88, \
        .out_sigma = 0.9, .out_min = 4, .out_max = 1024                              \
    }

typedef struct {
    bench_wl_kind_t kind;
    uint64_t seed;
    int32_t input_len, output_len; /* FIXED; MULTITURN uses output_len as A */
    bench_sharegpt_model_t sharegpt;
    const char *sharegpt_file; /* SHAREGPT: a real ShareGPT JSON, or NULL */
    int32_t prefix_len;        /* MULTITURN: P shared prefix tokens */
    int32_t turns;             /* MULTITURN: T turns */
    int32_t turn_len;          /* MULTITURN: Q prompt tokens per turn */
    int32_t max_output_cap;    /* cap on max_tokens of any turn, 0 = none */
    int32_t task;              /* TASK: a bench_task_t */
    int32_t task_size;         /* TASK: bench_task_size() of the problems */
} bench_wl_cfg_t;

/*
 * A task workload (the demo model's checkable tasks) plugs in here: it makes
 * sessions whose ->task points at its item, and grades each turn's full
 * output. Returns CM_OK and *correct, or an error when it cannot grade.
 */
typedef cm_status_t (*bench_grade_fn)(void *ctx, const bench_session_t *s, size_t turn,
                                      const char *output, size_t len, bool *correct);

typedef struct bench_workload bench_workload_t;

/*
 * Creates a workload from @cfg (validated; reads cfg->sharegpt_file when
 * set). Returns CM_OK and *out, or an error with a one-line reason in @err.
 */
cm_status_t bench_workload_new(const bench_wl_cfg_t *cfg, bench_workload_t **out, char *err,
                               size_t errlen);
/*
 * Makes session number @index (deterministic in seed and index; sessions
 * from a file repeat cyclically). The caller owns *out (bench_session_free).
 */
cm_status_t bench_workload_session(bench_workload_t *w, uint64_t index, bench_session_t **out);
/* Installs a grader; the runner then reports accuracy. NULL clears it. */
void bench_workload_set_grader(bench_workload_t *w, bench_grade_fn fn, void *ctx);
bench_grade_fn bench_workload_grader(const bench_workload_t *w, void **ctx);
/* "fixed", "sharegpt", "sharegpt-file", "multiturn", "task". */
const char *bench_workload_name(const bench_workload_t *w);
void bench_workload_free(bench_workload_t *w);

/*
 * Appends @n words (each one token in common BPE tokenizers, separated by
 * spaces, no leading space) drawn from @r to the NUL-terminated heap string
 * *@buf of length *@len. Returns CM_OK or CM_ERR_NO_MEMORY.
 */
cm_status_t bench_words_append(bench_rng_t *r, size_t n, char **buf, size_t *len);
/* The word list used for prompts (NULL-terminated), for tests. */
extern const char *const bench_words[];

/* ------------------------------------------------------------------------ */
/* Checkable tasks (the demo model's skills; scripts/demo/tasks.py trains   */
/* on the same formats)                                                     */
/* ------------------------------------------------------------------------ */

typedef enum {
    BENCH_TASK_RETRIEVAL = 0, /* "Records: k=v, ...\nWhat is the value of k?" */
    BENCH_TASK_ADDITION,      /* "What is a+b?" */
    BENCH_TASK_COPY,          /* "Repeat exactly:\nw1 ... wn" */
} bench_task_t;

/* "retrieval" | "addition" | "copy"; CM_ERR_INVALID_ARG otherwise. */
cm_status_t bench_task_parse(const char *name, bench_task_t *out);
const char *bench_task_name(bench_task_t t);
/*
 * The problem size for a target context of @context tokens (retrieval:
 * key=value pairs; copy: words, prompt and answer together) or, for
 * addition, @digits per operand. Sizes are at least 1.
 */
uint32_t bench_task_size(bench_task_t t, uint32_t context, uint32_t digits);
/*
 * Problem number @index of stream @seed (deterministic in both, independent
 * of other indexes): the user message and the exact expected reply, both
 * heap strings the caller frees. CM_ERR_NO_MEMORY or CM_OK.
 */
cm_status_t bench_task_make(bench_task_t t, uint32_t size, uint64_t seed, uint64_t index,
                            char **prompt, char **answer);
/* Exact grading: @output without leading/trailing whitespace == @answer. */
bool bench_task_grade(const char *answer, const char *output, size_t len);
/* Wilson score interval for @k successes in @n trials at z = 1.96. */
void bench_wilson95(size_t k, size_t n, double *lo, double *hi);

/* ------------------------------------------------------------------------ */
/* HTTP/1.1 client with a keep-alive pool                                    */
/* ------------------------------------------------------------------------ */

/* Failure kinds of one request; NONE is success at the transport level. */
#define BENCH_ERR_LIST(X)                 \
    X(NONE, "ok")                         \
    X(CONNECT_REFUSED, "connect_refused") \
    X(CONNECT, "connect_error")           \
    X(RESET, "connection_reset")          \
    X(CLOSED, "closed_early")             \
    X(TIMEOUT, "timeout")                 \
    X(HTTP_4XX, "http_4xx")               \
    X(HTTP_5XX, "http_5xx")               \
    X(HTTP_OTHER, "http_other")           \
    X(PROTOCOL, "protocol_error")         \
    X(STREAM, "stream_error")             \
    X(INCOMPLETE, "incomplete_stream")

typedef enum {
#define BENCH_ERR_ENUM_(name, text) BENCH_ERR_##name,
    BENCH_ERR_LIST(BENCH_ERR_ENUM_)
#undef BENCH_ERR_ENUM_
        BENCH_ERR_COUNT
} bench_err_t;

/* Returns the static snake_case name of @e ("connect_refused", ...). */
const char *bench_err_name(bench_err_t e);
/* Maps an HTTP status >= 300 to its error kind. */
bench_err_t bench_err_from_status(int status);

typedef struct {
    /* Response head parsed: @status, at monotonic time @t_ns. */
    void (*on_head)(void *ud, int status, uint64_t t_ns);
    /* Body bytes (de-chunked) read at monotonic time @t_ns. Return 0 to go
     * on, anything else to fail the request with BENCH_ERR_STREAM. */
    int (*on_body)(void *ud, const char *data, size_t len, uint64_t t_ns);
    /* Exactly once per accepted request: @err NONE when the whole response
     * arrived (any status; statuses are the caller's to judge). */
    void (*on_done)(void *ud, bench_err_t err, int status, uint64_t t_ns);
} bench_http_cb_t;

typedef struct bench_http bench_http_t;

/*
 * Creates a client for one server at @addr (copied), sending "Host: @host"
 * (copied), with at most @max_conns connections open at once (requests
 * beyond wait for a free one; their deadline runs while they wait). Returns
 * CM_OK and *out, or CM_ERR_INVALID_ARG / CM_ERR_NO_MEMORY.
 */
cm_status_t bench_http_new(uv_loop_t *loop, const struct sockaddr *addr, const char *host,
                           size_t max_conns, bench_http_t **out);
/*
 * Sends POST @path with JSON @body (copied) and "Accept: text/event-stream".
 * @timeout_ms (> 0) bounds the whole request from this call to the last byte.
 * A reused keep-alive connection that the server had closed is retried once
 * on a fresh one, silently. Returns CM_OK (callbacks follow, never from
 * inside this call) or an error (no callbacks).
 */
cm_status_t bench_http_post(bench_http_t *c, const char *path, const char *body, size_t len,
                            uint64_t timeout_ms, const bench_http_cb_t *cb, void *ud);
/* Requests accepted and not done yet. */
size_t bench_http_pending(const bench_http_t *c);
/* Connections open (busy or idle). */
size_t bench_http_open_conns(const bench_http_t *c);
/*
 * Fails every pending request with BENCH_ERR_CLOSED (their on_done runs
 * inside this call and may not post again), closes every connection and
 * frees @c once its handles are closed (run the loop to finish). Never call
 * it from one of @c's callbacks. Passing NULL does nothing.
 */
void bench_http_free(bench_http_t *c);

/*
 * Parses "http://host[:port][/base]" into @host (for the Host header and
 * name resolution), @port and @base (without a trailing '/', possibly "").
 * Returns CM_OK or CM_ERR_INVALID_ARG (https, bad port, too long).
 */
cm_status_t bench_url_parse(const char *url, char *host, size_t hostlen, int *port, char *base,
                            size_t baselen);

/*
 * Parses @url, resolves its host (blocking, once) and creates a client for
 * it; the URL's base path goes to @base. Returns CM_OK, or an error with a
 * one-line reason in @err.
 */
cm_status_t bench_http_open_url(uv_loop_t *loop, const char *url, size_t max_conns,
                                bench_http_t **out, char *base, size_t baselen, char *err,
                                size_t errlen);

/* ------------------------------------------------------------------------ */
/* Comparison reports                                                       */
/* ------------------------------------------------------------------------ */

typedef struct {
    char point[64];     /* "baseline", "concurrency=8", "rate=2" */
    char metric[48];    /* "output_tok_s", "ttft_ms.p50", ... */
    double a, b;        /* NAN when the point or metric is missing on a side */
    double diff;        /* b - a (NAN if either is NAN) */
    double pct;         /* 100 * (b - a) / |a|; NAN when a is 0 or NAN */
    bool higher_better; /* for reading the sign */
} bench_cmp_row_t;

/* The difference and % change of one metric, as in bench_cmp_row_t. */
void bench_compare_values(double a, double b, double *diff, double *pct);
/*
 * Builds the rows comparing two result documents (the JSON text written by
 * `tandem bench serve`): for every metric, one row per point present in
 * either, points in A's order then B's extra points. Returns CM_OK and a
 * heap array (cm_free) in *rows, or CM_ERR_BAD_FORMAT with a reason in @err.
 */
cm_status_t bench_compare_build(const char *a_json, const char *b_json, bench_cmp_row_t **rows,
                                size_t *n_rows, char *err, size_t errlen);

#endif /* TANDEM_BENCH_LOAD_H */
