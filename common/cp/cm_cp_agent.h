/*
 * cm_cp_agent.h - a worker's side of the control plane: registers with the
 * router (retrying until acknowledged), sends heartbeats with the worker's
 * load, re-registers when the router forgets it (router restart), reports
 * draining, and deregisters on a clean stop.
 *
 * Each agent is one process incarnation: a random non-zero incarnation
 * number is drawn at creation and the ZeroMQ routing id is
 * "<worker_id>/<incarnation>", so a restarted worker is a new peer and the
 * router drops the old one (and its in-flight work).
 *
 * Threading: the loop's thread; callbacks run there.
 */
#ifndef TANDEM_CM_CP_AGENT_H
#define TANDEM_CM_CP_AGENT_H

#include "cm_cp_zmq.h"

typedef struct cm_cp_agent cm_cp_agent_t;

typedef struct {
    const char *router;    /* control-plane endpoint, e.g. tcp://127.0.0.1:5557 */
    const char *worker_id; /* [A-Za-z0-9._:-]{1,64} */
    Tandem__Cp__Role role;
    const char *model;
    uint64_t fingerprint;
    uint32_t block_size, total_blocks, max_batch, max_context, vocab_size;
    const uint8_t *kvx_descriptor; /* copied; may be NULL for colocated */
    size_t kvx_descriptor_len;
    uint32_t register_retry_ms; /* resend Register until acked; 0 = 500 */
    cm_cp_limits_t limits;      /* for messages from the router */
} cm_cp_agent_config_t;

typedef struct {
    /* The router accepted this worker (also after a re-registration). */
    void (*on_registered)(void *ud);
    /* The router refused this worker for good (wrong model, fingerprint);
     * the agent stops retrying. */
    void (*on_refused)(void *ud, const char *reason);
    /* Any other message from the router (jobs, cancels). */
    void (*on_msg)(void *ud, const cm_cp_msg_t *msg);
    /* Fills the load fields of a heartbeat about to be sent (optional). */
    void (*fill_load)(void *ud, Tandem__Cp__Heartbeat *hb);
} cm_cp_agent_callbacks_t;

/* Starts registering at once. Returns CM_OK and *@out or an error. */
cm_status_t cm_cp_agent_new(uv_loop_t *loop, void *zctx, const cm_cp_agent_config_t *cfg,
                            const cm_cp_agent_callbacks_t *cb, void *ud, cm_cp_agent_t **out);

/* Sends a message to the router (see cm_cp_endpoint_send). */
cm_status_t cm_cp_agent_send(cm_cp_agent_t *a, const cm_cp_msg_t *msg);

/* True once the router has accepted this incarnation. */
bool cm_cp_agent_registered(const cm_cp_agent_t *a);
uint64_t cm_cp_agent_incarnation(const cm_cp_agent_t *a);

/* From now on heartbeats say draining: the router sends no new work. */
void cm_cp_agent_set_draining(cm_cp_agent_t *a);

/* Sends Deregister (if registered), then closes; the final message gets up
 * to 500 ms to leave when the ZeroMQ context is terminated. No callback
 * runs after this returns. Frees the agent once libuv closed its handles. */
void cm_cp_agent_stop(cm_cp_agent_t *a, const char *reason);

#endif /* TANDEM_CM_CP_AGENT_H */
