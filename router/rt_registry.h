/*
 * rt_registry.h - the router's table of workers, built from control-plane
 * messages: Register / Heartbeat / Deregister, and expiry of workers whose
 * heartbeats stopped. Pure state (no I/O, DESIGN.md 6.7): the caller feeds
 * it validated messages with the current time and sends the replies it
 * produces; the core glues it to the ZeroMQ endpoint.
 *
 * Threading: one thread (the router loop).
 */
#ifndef TANDEM_RT_REGISTRY_H
#define TANDEM_RT_REGISTRY_H

#include "cm_cp.h"

typedef struct rt_registry rt_registry_t;

typedef enum {
    RT_ROLE_PREFILL = TANDEM__CP__ROLE__ROLE_PREFILL,
    RT_ROLE_DECODE = TANDEM__CP__ROLE__ROLE_DECODE,
    RT_ROLE_COLOCATED = TANDEM__CP__ROLE__ROLE_COLOCATED,
} rt_role_t;

/* What the router knows of one live worker. Owned by the registry; valid
 * until the worker is removed (see on_down). */
typedef struct rt_worker {
    char peer[256]; /* ZeroMQ routing id "<worker_id>/<incarnation>" */
    char worker_id[65];
    rt_role_t role;
    uint64_t incarnation;
    uint64_t fingerprint;
    uint32_t block_size, total_blocks, max_batch, max_context, vocab_size;
    uint8_t *kvx_descriptor; /* copy of the worker's kvxfer descriptor */
    size_t kvx_descriptor_len;
    /* From the latest heartbeat. */
    uint32_t free_blocks, used_blocks, running, queued;
    bool draining;
    uint64_t kv_bytes_sent, kv_transfers_sent, kv_transfer_us_total, kv_notices_received;
    uint64_t kv_wait_us_total;
    uint64_t registered_ms, last_seen_ms;
} rt_worker_t;

typedef enum {
    RT_DOWN_DEREGISTERED = 0, /* the worker said goodbye */
    RT_DOWN_EXPIRED,          /* heartbeats stopped */
    RT_DOWN_REPLACED,         /* a new incarnation of the same worker_id registered */
} rt_down_reason_t;

typedef struct {
    /* A worker was accepted and can take work. */
    void (*on_up)(void *ud, const rt_worker_t *w);
    /* A worker is about to be removed; @w is valid during the call only. */
    void (*on_down)(void *ud, const rt_worker_t *w, rt_down_reason_t why);
} rt_registry_events_t;

typedef struct {
    const char *model;              /* served model name workers must serve */
    uint64_t fingerprint;           /* required layout fingerprint; 0 = the first worker's */
    uint32_t heartbeat_interval_ms; /* told to workers */
    uint32_t missed_heartbeats;     /* expire after this many intervals of silence */
} rt_registry_config_t;

rt_registry_t *rt_registry_new(const rt_registry_config_t *cfg, const rt_registry_events_t *ev,
                               void *ud);
/* Frees the table (no on_down calls). */
void rt_registry_free(rt_registry_t *reg);

/*
 * Applies a validated message from @peer at time @now_ms. When the sender
 * must be answered, fills *@reply (its strings point into @reg or static
 * storage, valid until the next call) and returns true.
 * Register → RegisterAck (accepted or refused with a reason);
 * Heartbeat/Deregister from an unknown peer → Error CM_ERR_NOT_FOUND, which
 * tells a worker to register again (e.g. after a router restart).
 * Other message kinds are not the registry's and are ignored (false).
 */
bool rt_registry_handle(rt_registry_t *reg, uint64_t now_ms, const char *peer,
                        const cm_cp_msg_t *msg, cm_cp_msg_t *reply);

/* Removes workers silent for longer than the expiry; returns how many. */
size_t rt_registry_expire(rt_registry_t *reg, uint64_t now_ms);

/* Removes worker @peer now (RT_DOWN_EXPIRED): used when the transport
 * says it is gone before its heartbeats do. Returns false if unknown. */
bool rt_registry_drop(rt_registry_t *reg, const char *peer);

/* Looks up a live worker by routing id (NULL when unknown). */
const rt_worker_t *rt_registry_find(const rt_registry_t *reg, const char *peer);

/* Live workers of @role that are not draining. */
size_t rt_registry_count(const rt_registry_t *reg, rt_role_t role);

/* Iterates over live workers: @i from 0 while the result is non-NULL. */
const rt_worker_t *rt_registry_at(const rt_registry_t *reg, size_t i);

/* The fingerprint workers must have (0 until the first registration). */
uint64_t rt_registry_fingerprint(const rt_registry_t *reg);

#endif /* TANDEM_RT_REGISTRY_H */
