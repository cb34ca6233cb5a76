/*
 * cm_cp_zmq.h - control-plane transport: Envelope messages over ZeroMQ,
 * driven by a libuv loop.
 *
 * The router binds one ROUTER endpoint; each worker connects one DEALER with
 * its routing id set to "<worker_id>/<incarnation>". Every received frame
 * goes through the validating codec (cm_cp.h) before the callback sees it;
 * invalid input is reported to the bad-message callback and dropped, never
 * trusted. Sends never block: they go out with ZMQ_DONTWAIT, and what the
 * socket refuses (high-water mark) waits in a bounded application queue that
 * drains when the socket becomes writable again.
 *
 * ZeroMQ quirks handled here (PITFALLS.md): ZMQ_FD is edge-triggered, so
 * every wake-up drains while ZMQ_EVENTS says POLLIN, and ZMQ_EVENTS is
 * re-checked after every send (pending input is drained on the next loop
 * turn, never inside send, so callbacks do not re-enter the sender); a
 * uv_check handle re-checks once per loop iteration as a safety net. ROUTER_MANDATORY makes unknown
 * peers an error (dropped with a log line) instead of a silent loss; ROUTER_HANDOVER lets a
 * restarted worker take over its routing id; LINGER 0 so close never blocks.
 *
 * Threading: an endpoint belongs to its loop's thread. Callbacks run there
 * and may call cm_cp_endpoint_send and cm_cp_endpoint_close.
 */
#ifndef TANDEM_CM_CP_ZMQ_H
#define TANDEM_CM_CP_ZMQ_H

#include <uv.h>

#include "cm_cp.h"

typedef struct cm_cp_endpoint cm_cp_endpoint_t;

typedef enum {
    CM_CP_ROUTER = 1, /* bind; messages are addressed by peer routing id */
    CM_CP_DEALER = 2, /* connect; one peer, the router */
} cm_cp_kind_t;

typedef struct {
    /* A validated message from @peer (its routing id; for a DEALER, the
     * empty string). @msg lives until the callback returns. */
    void (*on_msg)(void *ud, const char *peer, const cm_cp_msg_t *msg);
    /* An undecodable or invalid frame from @peer was dropped (optional). */
    void (*on_bad)(void *ud, const char *peer, cm_status_t st, const char *reason);
} cm_cp_callbacks_t;

typedef struct {
    cm_cp_kind_t kind;
    const char *endpoint;   /* "tcp://127.0.0.1:5557", "ipc:///path" */
    const char *routing_id; /* DEALER: its routing id (1..255 bytes) */
    cm_cp_limits_t limits;  /* what received messages must satisfy */
    uint32_t max_queue;     /* queued sends before CM_ERR_BUSY; 0 = 65536 */
    uint32_t linger_ms;     /* how long close may keep sending what ZeroMQ still holds
                               (a final Deregister); zmq_ctx_term waits at most this */
} cm_cp_endpoint_config_t;

/*
 * Creates an endpoint on @loop using ZeroMQ context @zctx (shared by the
 * process). Returns CM_OK and *@out, or an error (bad endpoint address,
 * address in use → CM_ERR_EXISTS) with the reason logged.
 */
cm_status_t cm_cp_endpoint_new(uv_loop_t *loop, void *zctx, const cm_cp_endpoint_config_t *cfg,
                               const cm_cp_callbacks_t *cb, void *ud, cm_cp_endpoint_t **out);

/*
 * Validates, encodes and sends @msg to @peer (ROUTER: a routing id; DEALER:
 * ignored, may be NULL). Sets the envelope's seq from the endpoint's counter
 * (the caller's struct is not modified). Returns CM_OK when sent or queued,
 * CM_ERR_PEER_DEAD for an unknown ROUTER peer, CM_ERR_BUSY when the queue is
 * full, or a validation error.
 */
cm_status_t cm_cp_endpoint_send(cm_cp_endpoint_t *ep, const char *peer, const cm_cp_msg_t *msg);

/* Messages waiting in the application queue. */
size_t cm_cp_endpoint_queued(const cm_cp_endpoint_t *ep);

/* The actual bound address (resolves tcp://...:0 / wildcard ports), or
 * NULL for a DEALER. Valid until close. */
const char *cm_cp_endpoint_address(const cm_cp_endpoint_t *ep);

/*
 * Closes the socket at once (queued messages are dropped) and releases the
 * endpoint once libuv has closed its handles. No callback runs after this
 * returns. Safe to call from inside a callback.
 */
void cm_cp_endpoint_close(cm_cp_endpoint_t *ep);

#endif /* TANDEM_CM_CP_ZMQ_H */
