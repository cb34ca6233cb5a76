/*
 * rt_core_impl.h - internals of the router core shared by rt_core.c
 * (lifecycle, admission, control plane, metrics) and rt_sched.c (the
 * per-request state machine and scheduling).
 */
#ifndef TANDEM_RT_CORE_IMPL_H
#define TANDEM_RT_CORE_IMPL_H

#include "cm_cp_zmq.h"
#include "rt_core.h"
#include "rt_registry.h"

/*
 * Request states. Disaggregated: QUEUED -> RESERVING (decode reserves
 * blocks) -> PREFILLING (prefill computes and ships KV) -> DECODING.
 * Colocated: QUEUED -> RUNNING. Every state ends in exactly one of
 * on_done / on_error / a client cancel.
 */
typedef enum {
    RT_REQ_QUEUED = 0,
    RT_REQ_RESERVING,
    RT_REQ_PREFILLING,
    RT_REQ_DECODING,
    RT_REQ_RUNNING,
} rt_req_state_t;

struct rt_req {
    rt_core_t *core;
    uint64_t id;
    rt_req_state_t state;
    int32_t *prompt; /* token ids, n_prompt of them */
    size_t n_prompt;
    Tandem__Cp__SamplingParams sp;
    int32_t *stop_ids;
    char **stop;
    size_t n_stop;
    rt_req_cb_t cb;
    void *ud;
    /* Placement. */
    char prefill_peer[256]; /* colocated: the worker */
    char decode_peer[256];
    uint64_t decode_incarnation;
    bool colocated;
    int attempts;
    bool streamed; /* tokens reached the client: no retry */
    /* Timing (monotonic ms) and counters. */
    uint64_t t_submit, t_dispatch, t_reserved, t_kv_ready, t_first_token;
    uint64_t deadline_ms; /* absolute */
    uint32_t completion_tokens;
    struct rt_req *next, *prev; /* all live requests */
    struct rt_req *qnext;       /* the wait queue */
};

/* Router-side bookkeeping per worker, beside the registry's view. */
typedef struct {
    char peer[256];
    uint32_t assigned; /* requests this router placed there, live */
    bool full;         /* said "no blocks"; skipped until its next heartbeat */
} rt_load_t;

struct rt_core {
    uv_loop_t *loop;
    char *served_model_name;
    char *model_dir;
    rt_tokenizer_t tok;
    bool have_tok;
    uint32_t max_context;
    uint32_t max_queue;
    uint32_t default_deadline_ms;
    void *zctx;
    bool own_zctx;
    cm_cp_endpoint_t *cp;
    rt_registry_t *registry;
    uv_timer_t tick; /* heartbeat expiry and request deadlines */
    bool tick_open;
    uint64_t next_id;
    /* Live requests and the FIFO of those waiting for capacity. */
    rt_req_t *reqs;
    size_t n_reqs;
    rt_req_t *qhead, *qtail;
    size_t qlen;
    rt_load_t *loads;
    size_t n_loads, cap_loads;
    /* Workers a send found unreachable: skipped, dropped at the next tick. */
    char unreachable[8][256];
    int n_unreachable;
    /* Metrics. */
    uint64_t n_submitted, n_completed, n_failed, n_canceled, n_retried, n_timed_out;
    uint64_t n_refused_by_status[6]; /* 400, 404, 413, 429, 503, other */
    uint64_t sum_queue_ms, sum_reserve_ms, sum_prefill_ms, n_phase;
    uint64_t kv_blocks_used; /* sum over decode/colocated workers */
};

/* rt_sched.c */
/* Places queued requests while capacity allows. */
void rt_sched_pump(rt_core_t *core);
/* A validated message from a worker that the registry did not consume. */
void rt_sched_on_worker_msg(rt_core_t *core, const char *peer, const cm_cp_msg_t *msg);
/* A worker left: its requests are retried elsewhere or failed. */
void rt_sched_on_worker_down(rt_core_t *core, const rt_worker_t *w);
/* Fails requests whose deadline passed. */
void rt_sched_expire(rt_core_t *core, uint64_t now_ms);
/* Ends a request with an error callback and frees it. */
void rt_req_fail(rt_req_t *r, int http_status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Unlinks and frees a request (no callback). */
void rt_req_destroy(rt_req_t *r);
/* Drops the workers sends found unreachable (their requests are retried). */
void rt_sched_drop_unreachable(rt_core_t *core);
/* Load record of @peer (created on first use; NULL on OOM). */
rt_load_t *rt_load_get(rt_core_t *core, const char *peer);

#endif /* TANDEM_RT_CORE_IMPL_H */
