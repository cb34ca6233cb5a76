/*
 * rt_http.h - the OpenAI HTTP/1.1 front end on libuv (llhttp): routes
 *   POST /v1/completions, POST /v1/chat/completions (JSON or SSE stream),
 *   GET /v1/models, GET /health, GET /ready, GET /metrics
 * over the request core (rt_core.h). Keep-alive and pipelining (requests on
 * one connection are answered in order), bounded headers (431) and bodies
 * (413), an idle deadline between requests and a deadline for receiving a
 * request, 100-continue, and a client that disconnects cancels its request
 * on every worker. Errors use OpenAI's {"error": {...}} body.
 *
 * Threading: the loop's thread.
 */
#ifndef TANDEM_RT_HTTP_H
#define TANDEM_RT_HTTP_H

#include <uv.h>

#include "rt_core.h"

typedef struct rt_http rt_http_t;

typedef struct {
    size_t max_body;          /* bytes; larger bodies get 413 (default 8 MiB) */
    size_t max_header;        /* bytes of request line + headers; 431 (default 32 KiB) */
    uint32_t idle_timeout_ms; /* keep-alive idle limit (default 60 s) */
    uint32_t read_timeout_ms; /* a started request must arrive within (default 30 s) */
} rt_http_config_t;

/* Listens on @host:@port (0 = ephemeral). CM_ERR_EXISTS when in use. */
cm_status_t rt_http_start(uv_loop_t *loop, rt_core_t *core, const char *host, int port,
                          const rt_http_config_t *cfg, rt_http_t **out);
int rt_http_port(const rt_http_t *h);
/* Stops listening, cancels live requests, closes connections; frees once
 * libuv closed the handles (keep running the loop). */
void rt_http_stop(rt_http_t *h);

#endif /* TANDEM_RT_HTTP_H */
