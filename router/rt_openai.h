/*
 * rt_openai.h - the OpenAI API's request and response formats, pure (no
 * I/O): JSON bodies of POST /v1/completions and /v1/chat/completions become
 * rt_gen_request_t, and the core's callbacks become response objects or
 * SSE chunks byte-compatible with OpenAI's (`data: {...}\n\n`, the role in
 * the first chat delta, a usage chunk with stream_options.include_usage,
 * `data: [DONE]\n\n`).
 *
 * Accepted parameters: model, prompt (string, [string], [ids], [[ids]] with
 * one entry), messages (role system|user|assistant|developer, content as a
 * string or text parts), max_tokens / max_completion_tokens, temperature,
 * top_p, top_k, min_p, n (1), stream, stream_options.include_usage, stop
 * (string or up to 16 strings), stop_token_ids, seed, logprobs
 * (completions: 0..5; chat: bool with top_logprobs 0..20),
 * presence/frequency/repetition penalties, ignore_eos, user, and vLLM's
 * return_tokens_as_token_ids (logprob tokens as "token_id:<id>"). Unknown fields
 * are ignored; known fields with wrong types or out of range are a 400
 * naming the parameter. Features Tandem does not have (n > 1, best_of > 1,
 * echo, logit_bias, suffix, tools) are a 400 saying so, never ignored.
 *
 * Threading: none (values only).
 */
#ifndef TANDEM_RT_OPENAI_H
#define TANDEM_RT_OPENAI_H

#include "rt_core.h"

typedef enum { RT_OAI_COMPLETIONS = 0, RT_OAI_CHAT } rt_oai_kind_t;

typedef struct {
    int status; /* HTTP status */
    const char *type;
    char message[256];
    char param[64]; /* "" = null */
} rt_oai_error_t;

typedef struct rt_oai_req rt_oai_req_t;

/* Parses a request body. On CM_OK *@out owns everything rt_oai_gen points
 * into; on error *@err is filled (400) and *@out untouched. */
cm_status_t rt_oai_parse(rt_oai_kind_t kind, const char *body, size_t len, rt_oai_req_t **out,
                         rt_oai_error_t *err);
void rt_oai_free(rt_oai_req_t *r);
const rt_gen_request_t *rt_oai_gen(const rt_oai_req_t *r);
rt_oai_kind_t rt_oai_kind(const rt_oai_req_t *r);
bool rt_oai_stream(const rt_oai_req_t *r);
bool rt_oai_include_usage(const rt_oai_req_t *r);

/*
 * The response of one request. @id ("cmpl-..." / "chatcmpl-...") and
 * @created are fixed for all its chunks. Every returned string is cm_malloc'ed
 * and owned by the caller.
 */
typedef struct rt_oai_resp rt_oai_resp_t;
rt_oai_resp_t *rt_oai_resp_new(const rt_oai_req_t *req, const char *id, uint64_t created);
void rt_oai_resp_free(rt_oai_resp_t *r);

/* Streaming: the chat role chunk (NULL for completions), one chunk per
 * delta, and the end (final chunk, usage chunk if asked, [DONE]). */
char *rt_oai_sse_start(rt_oai_resp_t *r);
char *rt_oai_sse_delta(rt_oai_resp_t *r, const rt_delta_t *d);
char *rt_oai_sse_end(rt_oai_resp_t *r, rt_finish_t why, uint32_t prompt, uint32_t completion);
/* An error after streaming started: an error event, then [DONE]. */
char *rt_oai_sse_error(int status, const char *type, const char *message);

/* Non-streaming: accumulate deltas, then the whole response object. */
void rt_oai_accumulate(rt_oai_resp_t *r, const rt_delta_t *d);
char *rt_oai_body(rt_oai_resp_t *r, rt_finish_t why, uint32_t prompt, uint32_t completion);

/* {"error": {"message", "type", "param", "code"}}. @param may be NULL. */
char *rt_oai_error_body(const char *type, const char *message, const char *param);

/* {"object": "list", "data": [{"id", "object": "model", ...}]} */
char *rt_oai_models_body(const char *model, uint64_t created, uint32_t max_context);

#endif /* TANDEM_RT_OPENAI_H */
