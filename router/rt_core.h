/*
 * rt_core.h - the router's request core: validation against the model,
 * tokenization, scheduling onto workers, the per-request state machine and
 * the worker registry. It knows nothing of HTTP or gRPC (DESIGN.md
 * section 2): the OpenAI HTTP/SSE front end and the gRPC front end are thin
 * layers that fill an rt_gen_request_t and render the callbacks.
 *
 * Threading: every function here, and every callback, runs on the thread of
 * the libuv loop the core was created with.
 */
#ifndef TANDEM_RT_CORE_H
#define TANDEM_RT_CORE_H

#include <uv.h>

#include "cm_base.h"

typedef struct rt_core rt_core_t;
typedef struct rt_req rt_req_t;

/* Sampling parameters as the OpenAI API names them, after front-end
 * validation of types and ranges. */
typedef struct {
    float temperature;        /* 0 = greedy; default 1 */
    float top_p;              /* (0, 1]; default 1 */
    int32_t top_k;            /* -1 = disabled */
    float min_p;              /* [0, 1]; 0 = disabled */
    float repetition_penalty; /* 1 = disabled */
    float presence_penalty;   /* [-2, 2] */
    float frequency_penalty;  /* [-2, 2] */
    bool has_seed;
    uint64_t seed;
    uint32_t max_tokens; /* 0 = until the context is full */
    const int32_t *stop_token_ids;
    size_t n_stop_token_ids;
    const char *const *stop; /* stop strings, NUL-terminated */
    size_t n_stop;
    bool logprobs;
    uint32_t top_logprobs; /* 0..20 */
    bool ignore_eos;
} rt_sampling_t;

typedef struct {
    const char *role;    /* "system", "user", "assistant" */
    const char *content; /* UTF-8 */
} rt_chat_msg_t;

/* One generation request. Everything it points to need only live until
 * rt_core_submit returns: the core copies what it keeps. */
typedef struct {
    const char *model; /* served model name the client asked for */
    bool chat;         /* chat completion: messages; else prompt */
    const char *prompt;
    size_t prompt_len;
    const int32_t *prompt_ids; /* completions may send token ids instead */
    size_t n_prompt_ids;
    const rt_chat_msg_t *messages;
    size_t n_messages;
    rt_sampling_t sampling;
    uint32_t deadline_ms; /* 0 = the core's default */
} rt_gen_request_t;

typedef enum {
    RT_FINISH_STOP = 0, /* stop token or string */
    RT_FINISH_LENGTH,   /* max_tokens or context limit */
} rt_finish_t;

typedef struct {
    int32_t token_id;
    float logprob;
} rt_top_logprob_t;

/* Newly generated tokens of one request. */
typedef struct {
    const int32_t *ids;
    size_t n;
    const char *text; /* UTF-8 delta (never a split character) */
    size_t text_len;
    const float *logprobs;       /* n entries, or NULL */
    const rt_top_logprob_t *top; /* n * top_per_token entries, or NULL */
    size_t top_per_token;
} rt_delta_t;

typedef struct {
    /* Zero or more times. */
    void (*on_delta)(void *ud, const rt_delta_t *d);
    /* Exactly one of on_done / on_error ends the request; after either,
     * the rt_req_t is gone. */
    void (*on_done)(void *ud, rt_finish_t reason, uint32_t prompt_tokens,
                    uint32_t completion_tokens);
    void (*on_error)(void *ud, int http_status, const char *type, const char *message);
} rt_req_cb_t;

/* A refusal before the request started, with what the client is told. */
typedef struct {
    int http_status;  /* 400, 404, 429, 503, ... */
    const char *type; /* OpenAI error type, e.g. "invalid_request_error" */
    char message[256];
    uint32_t retry_after_s; /* for 429/503, 0 = none */
} rt_error_t;

/*
 * Text to token ids, for prompts given as text or chat messages. The core
 * calls it on the loop thread. Results are cm_malloc'ed, owned by the caller.
 */
typedef struct {
    void *ctx;
    /* Token ids of @text; @add_special adds the model's BOS etc. (plain
     * prompts yes, chat-template output no: the template has them). */
    cm_status_t (*encode)(void *ctx, const char *text, size_t len, bool add_special, int32_t **ids,
                          size_t *n);
    /* The chat template applied to @msgs with the generation prompt added. */
    cm_status_t (*apply_chat)(void *ctx, const rt_chat_msg_t *msgs, size_t n, char **text,
                              size_t *len);
} rt_tokenizer_t;

typedef struct {
    const char *served_model_name;   /* what /v1/models lists */
    const rt_tokenizer_t *tokenizer; /* NULL: only token-id prompts are accepted */
    const char *model_dir;           /* tokenizer and config (may be NULL) */
    uint32_t max_context;            /* tokens; 0 = from the model config */
    uint32_t max_queue;              /* requests waiting for a worker */
    uint32_t default_deadline_ms;
    const char *cp_bind;            /* ZeroMQ endpoint workers connect to; NULL = none */
    void *zmq_ctx;                  /* ZeroMQ context to use; NULL = the core's own */
    uint32_t heartbeat_interval_ms; /* told to workers; 0 = 500 */
    uint32_t missed_heartbeats;     /* drop a worker after this many; 0 = 4 */
} rt_core_config_t;

/* Creates the core on @loop and binds the control plane. Returns NULL and
 * logs the reason on failure (e.g. the address is in use). */
rt_core_t *rt_core_new(uv_loop_t *loop, const rt_core_config_t *cfg);
/* Fails every live request with 503, closes the control plane and frees
 * the core once libuv has closed its handles (keep running the loop). */
void rt_core_free(rt_core_t *core);

/* The bound control-plane address (ports resolved), or NULL. */
const char *rt_core_cp_address(const rt_core_t *core);

/*
 * Starts a request. On CM_OK *@out is live and @cb will be called. On
 * error *@err says what to tell the client and no callback will come.
 */
cm_status_t rt_core_submit(rt_core_t *core, const rt_gen_request_t *req, const rt_req_cb_t *cb,
                           void *ud, rt_req_t **out, rt_error_t *err);

/* The client went away: stop the request and free its KV blocks
 * everywhere. No callback is made after this returns. */
void rt_core_cancel(rt_req_t *req);

/* Served model name and context limit, for /v1/models. */
const char *rt_core_model_name(const rt_core_t *core);
uint32_t rt_core_max_context(const rt_core_t *core);

/* True when at least one worker can serve each phase (for /ready). */
bool rt_core_ready(const rt_core_t *core);

/* Appends the core's Prometheus metrics (text format) to @buf; returns the
 * bytes written or that would be written, like snprintf. */
size_t rt_core_metrics(const rt_core_t *core, char *buf, size_t cap);

#endif /* TANDEM_RT_CORE_H */
