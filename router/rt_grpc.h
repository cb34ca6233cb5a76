/*
 * rt_grpc.h - the gRPC front end (proto/tandem_api.proto) over HTTP/2
 * cleartext (prior knowledge) with nghttp2 on the router's libuv loop: a
 * thin layer over the request core (rt_core.h), like the OpenAI HTTP one.
 *
 * Unary Generate returns the whole completion; GenerateStream sends one
 * GenerateChunk per delta and a last chunk with finish reason and usage.
 * Request bodies are bounded (4 MiB, gRPC's default), the grpc-timeout
 * header becomes the request deadline, and a stream the client resets or
 * a connection that drops cancels its request.
 *
 * Threading: the loop's thread.
 */
#ifndef TANDEM_RT_GRPC_H
#define TANDEM_RT_GRPC_H

#include <uv.h>

#include "rt_core.h"

typedef struct rt_grpc rt_grpc_t;

/* Listens on @host:@port (0 = an ephemeral port). Returns CM_OK and *@out,
 * or CM_ERR_EXISTS (address in use) / CM_ERR_INVALID_ARG, logged. */
cm_status_t rt_grpc_start(uv_loop_t *loop, rt_core_t *core, const char *host, int port,
                          rt_grpc_t **out);

/* The bound port. */
int rt_grpc_port(const rt_grpc_t *g);

/* Stops listening, cancels live requests, closes connections; frees the
 * server once libuv has closed its handles (keep running the loop). */
void rt_grpc_stop(rt_grpc_t *g);

/* gRPC status code for an HTTP-style status from the core. */
int rt_grpc_status_from_http(int http_status);

#endif /* TANDEM_RT_GRPC_H */
