/* cm_cp_agent.c - worker registration, heartbeats and deregistration. */
#include "cm_cp_agent.h"

#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

struct cm_cp_agent {
    uv_loop_t *loop;
    cm_cp_endpoint_t *ep;
    cm_cp_agent_callbacks_t cb;
    void *ud;
    Tandem__Cp__Register reg; /* kept ready to (re)send */
    char *worker_id, *model;
    uint8_t *desc;
    uint64_t incarnation;
    uint32_t retry_ms, heartbeat_ms;
    bool registered, refused, draining, stopping;
    uv_timer_t timer;
};

static cm_cp_msg_t envelope(void) {
    cm_cp_msg_t m = TANDEM__CP__ENVELOPE__INIT;
    m.version = CM_CP_VERSION;
    return m;
}

static void send_register(cm_cp_agent_t *a) {
    cm_cp_msg_t m = envelope();
    m.body_case = TANDEM__CP__ENVELOPE__BODY_REGISTER;
    m.register_ = &a->reg;
    cm_status_t st = cm_cp_endpoint_send(a->ep, NULL, &m);
    if (st != CM_OK) cm_log_warn("cp", "register: %s", cm_strerror(st));
}

static void send_heartbeat(cm_cp_agent_t *a) {
    Tandem__Cp__Heartbeat hb = TANDEM__CP__HEARTBEAT__INIT;
    if (a->cb.fill_load) a->cb.fill_load(a->ud, &hb);
    hb.incarnation = a->incarnation;
    hb.draining = a->draining;
    cm_cp_msg_t m = envelope();
    m.body_case = TANDEM__CP__ENVELOPE__BODY_HEARTBEAT;
    m.heartbeat = &hb;
    cm_status_t st = cm_cp_endpoint_send(a->ep, NULL, &m);
    if (st != CM_OK) cm_log_warn("cp", "heartbeat: %s", cm_strerror(st));
}

static void on_timer(uv_timer_t *t) {
    cm_cp_agent_t *a = t->data;
    if (a->stopping || a->refused) return;
    if (a->registered)
        send_heartbeat(a);
    else
        send_register(a);
}

static void schedule(cm_cp_agent_t *a) {
    uint32_t ms = a->registered ? a->heartbeat_ms : a->retry_ms;
    uv_timer_start(&a->timer, on_timer, ms, ms);
}

static void on_msg(void *ud, const char *peer, const cm_cp_msg_t *msg) {
    (void)peer;
    cm_cp_agent_t *a = ud;
    if (a->stopping) return;
    switch (msg->body_case) {
    case TANDEM__CP__ENVELOPE__BODY_REGISTER_ACK: {
        const Tandem__Cp__RegisterAck *ack = msg->register_ack;
        if (ack->incarnation != a->incarnation) return; /* for an older incarnation */
        if (!ack->accepted) {
            a->refused = true;
            uv_timer_stop(&a->timer);
            cm_log_error("cp", "router refused worker %s: %s", a->worker_id, ack->reason);
            if (a->cb.on_refused) a->cb.on_refused(a->ud, ack->reason);
            return;
        }
        bool first = !a->registered;
        a->registered = true;
        a->heartbeat_ms = ack->heartbeat_interval_ms;
        schedule(a);
        if (first) {
            cm_log_info("cp", "registered as %s/%llu (heartbeat %u ms)", a->worker_id,
                        (unsigned long long)a->incarnation, a->heartbeat_ms);
            send_heartbeat(a);
            if (a->cb.on_registered) a->cb.on_registered(a->ud);
        }
        return;
    }
    case TANDEM__CP__ENVELOPE__BODY_ERROR:
        if (msg->error->request_id == 0 && msg->error->code == CM_ERR_NOT_FOUND) {
            /* The router does not know us (it restarted): register again. */
            if (a->registered)
                cm_log_warn("cp", "router forgot this worker (%s): registering again",
                            msg->error->message);
            a->registered = false;
            send_register(a);
            schedule(a);
            return;
        }
        break;
    default:
        break;
    }
    if (a->cb.on_msg) a->cb.on_msg(a->ud, msg);
}

static void on_bad(void *ud, const char *peer, cm_status_t st, const char *reason) {
    (void)ud;
    (void)peer;
    cm_log_warn("cp", "dropped an invalid message from the router: %s: %s", cm_strerror(st),
                reason);
}

static uint64_t draw_incarnation(void) {
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v)
        v = cm_time_wall_ns() ^ ((uint64_t)getpid() << 32);
    return v ? v : 1;
}

static void free_agent(cm_cp_agent_t *a) {
    cm_free(a->worker_id);
    cm_free(a->model);
    cm_free(a->desc);
    cm_free(a);
}

static void on_timer_closed(uv_handle_t *h) { free_agent(h->data); }

cm_status_t cm_cp_agent_new(uv_loop_t *loop, void *zctx, const cm_cp_agent_config_t *cfg,
                            const cm_cp_agent_callbacks_t *cb, void *ud, cm_cp_agent_t **out) {
    if (!cfg || !cfg->router || !cfg->worker_id || !cfg->model) return CM_ERR_INVALID_ARG;
    cm_cp_agent_t *a = cm_calloc(1, sizeof *a);
    if (!a) return CM_ERR_NO_MEMORY;
    a->loop = loop;
    if (cb) a->cb = *cb;
    a->ud = ud;
    a->incarnation = draw_incarnation();
    a->retry_ms = cfg->register_retry_ms ? cfg->register_retry_ms : 500;
    a->worker_id = cm_strdup(cfg->worker_id);
    a->model = cm_strdup(cfg->model);
    if (cfg->kvx_descriptor_len) {
        a->desc = cm_malloc(cfg->kvx_descriptor_len);
        if (a->desc) memcpy(a->desc, cfg->kvx_descriptor, cfg->kvx_descriptor_len);
    }
    if (!a->worker_id || !a->model || (cfg->kvx_descriptor_len && !a->desc)) {
        free_agent(a);
        return CM_ERR_NO_MEMORY;
    }
    a->reg = (Tandem__Cp__Register)TANDEM__CP__REGISTER__INIT;
    a->reg.worker_id = a->worker_id;
    a->reg.role = cfg->role;
    a->reg.incarnation = a->incarnation;
    a->reg.model = a->model;
    a->reg.layout_fingerprint = cfg->fingerprint;
    a->reg.block_size = cfg->block_size;
    a->reg.total_blocks = cfg->total_blocks;
    a->reg.max_batch = cfg->max_batch;
    a->reg.max_context = cfg->max_context;
    a->reg.vocab_size = cfg->vocab_size;
    a->reg.kvx_descriptor.data = a->desc;
    a->reg.kvx_descriptor.len = cfg->kvx_descriptor_len;
    /* Check the registration before connecting: a bad config is the
     * operator's error and deserves a clear message now. */
    cm_cp_msg_t m = envelope();
    m.body_case = TANDEM__CP__ENVELOPE__BODY_REGISTER;
    m.register_ = &a->reg;
    char err[256];
    cm_status_t st = cm_cp_validate(&m, &cfg->limits, err, sizeof err);
    if (st != CM_OK) {
        cm_log_error("cp", "invalid worker registration: %s", err);
        free_agent(a);
        return st;
    }
    char rid[128];
    snprintf(rid, sizeof rid, "%s/%llu", cfg->worker_id, (unsigned long long)a->incarnation);
    cm_cp_endpoint_config_t ec = {.kind = CM_CP_DEALER,
                                  .endpoint = cfg->router,
                                  .routing_id = rid,
                                  .limits = cfg->limits,
                                  .linger_ms = 500};
    static const cm_cp_callbacks_t k_cb = {on_msg, on_bad};
    st = cm_cp_endpoint_new(loop, zctx, &ec, &k_cb, a, &a->ep);
    if (st != CM_OK) {
        free_agent(a);
        return st;
    }
    uv_timer_init(loop, &a->timer);
    a->timer.data = a;
    send_register(a);
    schedule(a);
    *out = a;
    return CM_OK;
}

cm_status_t cm_cp_agent_send(cm_cp_agent_t *a, const cm_cp_msg_t *msg) {
    if (a->stopping) return CM_ERR_CLOSED;
    return cm_cp_endpoint_send(a->ep, NULL, msg);
}

bool cm_cp_agent_registered(const cm_cp_agent_t *a) { return a->registered; }

uint64_t cm_cp_agent_incarnation(const cm_cp_agent_t *a) { return a->incarnation; }

void cm_cp_agent_set_draining(cm_cp_agent_t *a) {
    if (a->draining) return;
    a->draining = true;
    if (a->registered) send_heartbeat(a);
}

void cm_cp_agent_stop(cm_cp_agent_t *a, const char *reason) {
    if (!a || a->stopping) return;
    /* A Register is always in flight or answered (sent at start): a
     * worker stopped before the reply must still deregister, or the
     * router counts it until its heartbeats expire. The router ignores a
     * Deregister from a worker it does not know. */
    if (!a->refused) {
        Tandem__Cp__Deregister d = TANDEM__CP__DEREGISTER__INIT;
        d.incarnation = a->incarnation;
        d.reason = (char *)(reason ? reason : "stopping");
        cm_cp_msg_t m = envelope();
        m.body_case = TANDEM__CP__ENVELOPE__BODY_DEREGISTER;
        m.deregister = &d;
        cm_cp_endpoint_send(a->ep, NULL, &m);
    }
    a->stopping = true;
    uv_timer_stop(&a->timer);
    cm_cp_endpoint_close(a->ep);
    uv_close((uv_handle_t *)&a->timer, on_timer_closed);
}
