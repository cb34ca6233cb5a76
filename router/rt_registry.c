/* rt_registry.c - worker table maintained from control-plane messages. */
#include "rt_registry.h"

#include <stdio.h>
#include <string.h>

struct rt_registry {
    rt_registry_config_t cfg;
    char *model;
    uint64_t fingerprint;
    rt_registry_events_t ev;
    void *ud;
    rt_worker_t **workers;
    size_t n, cap;
    /* Reply storage (valid until the next handle call). */
    Tandem__Cp__RegisterAck ack;
    Tandem__Cp__Error error;
    char reason[256];
};

rt_registry_t *rt_registry_new(const rt_registry_config_t *cfg, const rt_registry_events_t *ev,
                               void *ud) {
    rt_registry_t *r = cm_calloc(1, sizeof *r);
    if (!r) return NULL;
    r->cfg = *cfg;
    if (!r->cfg.heartbeat_interval_ms) r->cfg.heartbeat_interval_ms = 500;
    if (!r->cfg.missed_heartbeats) r->cfg.missed_heartbeats = 4;
    r->model = cm_strdup(cfg->model ? cfg->model : "");
    if (!r->model) {
        cm_free(r);
        return NULL;
    }
    r->fingerprint = cfg->fingerprint;
    if (ev) r->ev = *ev;
    r->ud = ud;
    return r;
}

static void worker_free(rt_worker_t *w) {
    if (!w) return;
    cm_free(w->kvx_descriptor);
    cm_free(w);
}

void rt_registry_free(rt_registry_t *reg) {
    if (!reg) return;
    for (size_t i = 0; i < reg->n; i++) worker_free(reg->workers[i]);
    cm_free(reg->workers);
    cm_free(reg->model);
    cm_free(reg);
}

static ssize_t find_index(const rt_registry_t *reg, const char *peer) {
    for (size_t i = 0; i < reg->n; i++)
        if (strcmp(reg->workers[i]->peer, peer) == 0) return (ssize_t)i;
    return -1;
}

static void remove_at(rt_registry_t *reg, size_t i, rt_down_reason_t why) {
    rt_worker_t *w = reg->workers[i];
    if (reg->ev.on_down) reg->ev.on_down(reg->ud, w, why);
    reg->workers[i] = reg->workers[--reg->n];
    worker_free(w);
}

static const char *role_name(int role) {
    switch (role) {
    case RT_ROLE_PREFILL:
        return "prefill";
    case RT_ROLE_DECODE:
        return "decode";
    case RT_ROLE_COLOCATED:
        return "colocated";
    default:
        return "?";
    }
}

/* Fills the RegisterAck reply. */
static bool ack(rt_registry_t *reg, cm_cp_msg_t *reply, uint64_t incarnation, bool accepted) {
    reg->ack = (Tandem__Cp__RegisterAck)TANDEM__CP__REGISTER_ACK__INIT;
    reg->ack.incarnation = incarnation;
    reg->ack.accepted = accepted;
    reg->ack.reason = accepted ? "" : reg->reason;
    reg->ack.heartbeat_interval_ms = reg->cfg.heartbeat_interval_ms;
    *reply = (cm_cp_msg_t)TANDEM__CP__ENVELOPE__INIT;
    reply->version = CM_CP_VERSION;
    reply->body_case = TANDEM__CP__ENVELOPE__BODY_REGISTER_ACK;
    reply->register_ack = &reg->ack;
    return true;
}

static bool handle_register(rt_registry_t *reg, uint64_t now_ms, const char *peer,
                            const Tandem__Cp__Register *m, cm_cp_msg_t *reply) {
    if (strcmp(m->model, reg->model) != 0) {
        snprintf(reg->reason, sizeof reg->reason,
                 "worker serves model '%s' but this router serves '%s'", m->model, reg->model);
        cm_log_warn("router", "refused %s: %s", peer, reg->reason);
        return ack(reg, reply, m->incarnation, false);
    }
    if (reg->fingerprint && m->layout_fingerprint != reg->fingerprint) {
        snprintf(reg->reason, sizeof reg->reason,
                 "layout fingerprint %016llx differs from the cluster's %016llx (model, dtype, "
                 "block size, heads or TP differ)",
                 (unsigned long long)m->layout_fingerprint, (unsigned long long)reg->fingerprint);
        cm_log_warn("router", "refused %s: %s", peer, reg->reason);
        return ack(reg, reply, m->incarnation, false);
    }
    /* The same routing id registering again (lost ack): refresh it. */
    ssize_t same = find_index(reg, peer);
    if (same >= 0 && reg->workers[same]->incarnation == m->incarnation) {
        reg->workers[same]->last_seen_ms = now_ms;
        return ack(reg, reply, m->incarnation, true);
    }
    /* A new incarnation of a known worker_id replaces the old one. */
    for (size_t i = 0; i < reg->n; i++) {
        if (strcmp(reg->workers[i]->worker_id, m->worker_id) == 0) {
            cm_log_info("router", "worker %s restarted (incarnation %llu -> %llu)", m->worker_id,
                        (unsigned long long)reg->workers[i]->incarnation,
                        (unsigned long long)m->incarnation);
            remove_at(reg, i, RT_DOWN_REPLACED);
            break;
        }
    }
    rt_worker_t *w = cm_calloc(1, sizeof *w);
    if (!w) goto oom;
    snprintf(w->peer, sizeof w->peer, "%s", peer);
    snprintf(w->worker_id, sizeof w->worker_id, "%s", m->worker_id);
    w->role = (rt_role_t)m->role;
    w->incarnation = m->incarnation;
    w->fingerprint = m->layout_fingerprint;
    w->block_size = m->block_size;
    w->total_blocks = m->total_blocks;
    w->free_blocks = m->total_blocks;
    w->max_batch = m->max_batch;
    w->max_context = m->max_context;
    w->vocab_size = m->vocab_size;
    if (m->kvx_descriptor.len) {
        w->kvx_descriptor = cm_malloc(m->kvx_descriptor.len);
        if (!w->kvx_descriptor) goto oom;
        memcpy(w->kvx_descriptor, m->kvx_descriptor.data, m->kvx_descriptor.len);
        w->kvx_descriptor_len = m->kvx_descriptor.len;
    }
    w->registered_ms = w->last_seen_ms = now_ms;
    if (reg->n == reg->cap) {
        size_t cap = reg->cap ? reg->cap * 2 : 8;
        rt_worker_t **nw = cm_realloc_array(reg->workers, cap, sizeof *nw);
        if (!nw) goto oom;
        reg->workers = nw;
        reg->cap = cap;
    }
    reg->workers[reg->n++] = w;
    if (!reg->fingerprint) reg->fingerprint = m->layout_fingerprint;
    cm_log_info("router", "worker %s up: %s, %u blocks of %u tokens, batch %u", peer,
                role_name(w->role), w->total_blocks, w->block_size, w->max_batch);
    if (reg->ev.on_up) reg->ev.on_up(reg->ud, w);
    return ack(reg, reply, m->incarnation, true);
oom:
    worker_free(w);
    snprintf(reg->reason, sizeof reg->reason, "router out of memory");
    return ack(reg, reply, m->incarnation, false);
}

static bool not_registered(rt_registry_t *reg, const char *peer, cm_cp_msg_t *reply) {
    snprintf(reg->reason, sizeof reg->reason, "worker %s is not registered; register again", peer);
    reg->error = (Tandem__Cp__Error)TANDEM__CP__ERROR__INIT;
    reg->error.code = CM_ERR_NOT_FOUND;
    reg->error.message = reg->reason;
    *reply = (cm_cp_msg_t)TANDEM__CP__ENVELOPE__INIT;
    reply->version = CM_CP_VERSION;
    reply->body_case = TANDEM__CP__ENVELOPE__BODY_ERROR;
    reply->error = &reg->error;
    return true;
}

bool rt_registry_handle(rt_registry_t *reg, uint64_t now_ms, const char *peer,
                        const cm_cp_msg_t *msg, cm_cp_msg_t *reply) {
    switch (msg->body_case) {
    case TANDEM__CP__ENVELOPE__BODY_REGISTER:
        return handle_register(reg, now_ms, peer, msg->register_, reply);
    case TANDEM__CP__ENVELOPE__BODY_HEARTBEAT: {
        ssize_t i = find_index(reg, peer);
        if (i < 0 || reg->workers[i]->incarnation != msg->heartbeat->incarnation)
            return not_registered(reg, peer, reply);
        rt_worker_t *w = reg->workers[i];
        w->free_blocks = msg->heartbeat->free_blocks;
        w->used_blocks = msg->heartbeat->used_blocks;
        w->running = msg->heartbeat->running;
        w->queued = msg->heartbeat->queued;
        w->kv_bytes_sent = msg->heartbeat->kv_bytes_sent;
        w->kv_transfers_sent = msg->heartbeat->kv_transfers_sent;
        w->kv_transfer_us_total = msg->heartbeat->kv_transfer_us_total;
        w->kv_wait_us_total = msg->heartbeat->kv_wait_us_total;
        w->kv_notices_received = msg->heartbeat->kv_notices_received;
        if (msg->heartbeat->draining && !w->draining)
            cm_log_info("router", "worker %s is draining", peer);
        w->draining = msg->heartbeat->draining;
        w->last_seen_ms = now_ms;
        return false;
    }
    case TANDEM__CP__ENVELOPE__BODY_DEREGISTER: {
        ssize_t i = find_index(reg, peer);
        if (i < 0) return false; /* already gone: nothing to answer */
        cm_log_info("router", "worker %s deregistered: %s", peer, msg->deregister->reason);
        remove_at(reg, (size_t)i, RT_DOWN_DEREGISTERED);
        return false;
    }
    default:
        return false;
    }
}

size_t rt_registry_expire(rt_registry_t *reg, uint64_t now_ms) {
    uint64_t limit = (uint64_t)reg->cfg.heartbeat_interval_ms * reg->cfg.missed_heartbeats;
    size_t removed = 0;
    for (size_t i = 0; i < reg->n;) {
        rt_worker_t *w = reg->workers[i];
        if (now_ms > w->last_seen_ms + limit) {
            cm_log_warn("router", "worker %s missed heartbeats for %llu ms: dropped", w->peer,
                        (unsigned long long)(now_ms - w->last_seen_ms));
            remove_at(reg, i, RT_DOWN_EXPIRED);
            removed++;
        } else {
            i++;
        }
    }
    return removed;
}

const rt_worker_t *rt_registry_find(const rt_registry_t *reg, const char *peer) {
    ssize_t i = find_index(reg, peer);
    return i < 0 ? NULL : reg->workers[i];
}

size_t rt_registry_count(const rt_registry_t *reg, rt_role_t role) {
    size_t n = 0;
    for (size_t i = 0; i < reg->n; i++)
        n += reg->workers[i]->role == role && !reg->workers[i]->draining;
    return n;
}

const rt_worker_t *rt_registry_at(const rt_registry_t *reg, size_t i) {
    return i < reg->n ? reg->workers[i] : NULL;
}

uint64_t rt_registry_fingerprint(const rt_registry_t *reg) { return reg->fingerprint; }

bool rt_registry_drop(rt_registry_t *reg, const char *peer) {
    ssize_t i = find_index(reg, peer);
    if (i < 0) return false;
    cm_log_warn("router", "worker %s is unreachable: dropped", peer);
    remove_at(reg, (size_t)i, RT_DOWN_EXPIRED);
    return true;
}
