/*
 * rt_sched.c - the router's per-request state machine and placement.
 *
 * Disaggregated: ReserveBlocks -> decode; ReserveReply -> PrefillJob to a
 * prefill worker (with the decode worker's blocks and kvxfer descriptor);
 * KvReady from prefill -> forwarded to decode; TokenStream from decode ->
 * the client. Colocated: PrefillJob with no decode worker; TokenStream from
 * the same worker. A worker that leaves takes its requests with it: those
 * that streamed nothing yet are placed again elsewhere, the rest fail.
 *
 * Placement: the least-loaded worker that is not draining and has room
 * (router-side count of live requests below twice its batch size). A
 * worker that answers "no blocks" is skipped until its next heartbeat, and
 * the request waits in the queue.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "rt_core_impl.h"

enum { RT_MAX_ATTEMPTS = 3 };

rt_load_t *rt_load_get(rt_core_t *core, const char *peer) {
    for (size_t i = 0; i < core->n_loads; i++)
        if (strcmp(core->loads[i].peer, peer) == 0) return &core->loads[i];
    if (core->n_loads == core->cap_loads) {
        size_t cap = core->cap_loads ? core->cap_loads * 2 : 16;
        rt_load_t *n = cm_realloc_array(core->loads, cap, sizeof *n);
        if (!n) return NULL;
        core->loads = n;
        core->cap_loads = cap;
    }
    rt_load_t *l = &core->loads[core->n_loads++];
    memset(l, 0, sizeof *l);
    snprintf(l->peer, sizeof l->peer, "%s", peer);
    return l;
}

static void load_add(rt_core_t *core, const char *peer, int delta) {
    if (!peer[0]) return;
    rt_load_t *l = rt_load_get(core, peer);
    if (!l) return;
    if (delta < 0 && l->assigned < (uint32_t)-delta)
        l->assigned = 0;
    else
        l->assigned = (uint32_t)((int)l->assigned + delta);
}

static cm_cp_msg_t envelope(void) {
    cm_cp_msg_t m = TANDEM__CP__ENVELOPE__INIT;
    m.version = CM_CP_VERSION;
    return m;
}

static void send_cancel(rt_core_t *core, const char *peer, uint64_t id, const char *why) {
    if (!peer[0] || !core->cp || !rt_registry_find(core->registry, peer)) return;
    Tandem__Cp__Cancel c = TANDEM__CP__CANCEL__INIT;
    c.request_id = id;
    c.reason = (char *)why;
    cm_cp_msg_t m = envelope();
    m.body_case = TANDEM__CP__ENVELOPE__BODY_CANCEL;
    m.cancel = &c;
    cm_cp_endpoint_send(core->cp, peer, &m);
}

/* Undoes the placement of @r: cancels it on its workers, returns loads. */
static void unplace(rt_req_t *r, const char *why) {
    rt_core_t *core = r->core;
    if (r->state == RT_REQ_QUEUED) return;
    send_cancel(core, r->prefill_peer, r->id, why);
    if (!r->colocated) send_cancel(core, r->decode_peer, r->id, why);
    load_add(core, r->prefill_peer, -1);
    if (!r->colocated) load_add(core, r->decode_peer, -1);
    r->prefill_peer[0] = r->decode_peer[0] = '\0';
    r->state = RT_REQ_QUEUED;
}

static void queue_remove(rt_core_t *core, rt_req_t *r) {
    rt_req_t **pp = &core->qhead, *prev = NULL;
    while (*pp && *pp != r) {
        prev = *pp;
        pp = &(*pp)->qnext;
    }
    if (!*pp) return;
    *pp = r->qnext;
    if (core->qtail == r) core->qtail = prev;
    r->qnext = NULL;
    core->qlen--;
}

void rt_req_destroy(rt_req_t *r) {
    rt_core_t *core = r->core;
    if (r->state == RT_REQ_QUEUED) queue_remove(core, r);
    if (r->prev)
        r->prev->next = r->next;
    else
        core->reqs = r->next;
    if (r->next) r->next->prev = r->prev;
    core->n_reqs--;
    cm_free(r->prompt);
    cm_free(r->stop_ids);
    for (size_t i = 0; i < r->n_stop; i++) cm_free(r->stop[i]);
    cm_free(r->stop);
    cm_free(r);
}

void rt_req_fail(rt_req_t *r, int http_status, const char *type, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    unplace(r, msg);
    r->core->n_failed++;
    rt_req_cb_t cb = r->cb;
    void *ud = r->ud;
    cm_log_info("router", "request %llu failed (%d): %s", (unsigned long long)r->id, http_status,
                msg);
    rt_req_destroy(r);
    if (cb.on_error) cb.on_error(ud, http_status, type, msg);
}

void rt_core_cancel(rt_req_t *req) {
    if (!req) return;
    unplace(req, "client disconnected");
    req->core->n_canceled++;
    rt_req_destroy(req);
}

static rt_req_t *find_req(rt_core_t *core, uint64_t id) {
    for (rt_req_t *r = core->reqs; r; r = r->next)
        if (r->id == id) return r;
    return NULL;
}

/* Blocks a prompt needs on the decode side. */
static uint32_t blocks_needed(const rt_req_t *r, uint32_t block_size) {
    return (uint32_t)((r->n_prompt + 1 + block_size - 1) / block_size);
}

/* Load score: live requests per batch slot (lower is better). */
static double score(const rt_core_t *core, const rt_worker_t *w) {
    rt_load_t *l = rt_load_get((rt_core_t *)core, w->peer);
    uint32_t assigned = l ? l->assigned : 0;
    return ((double)assigned + (double)w->queued) / (double)(w->max_batch ? w->max_batch : 1);
}

static bool is_unreachable(const rt_core_t *core, const char *peer) {
    for (int i = 0; i < core->n_unreachable; i++)
        if (!strcmp(core->unreachable[i], peer)) return true;
    return false;
}

void rt_sched_drop_unreachable(rt_core_t *core) {
    while (core->n_unreachable > 0) {
        char peer[256];
        snprintf(peer, sizeof peer, "%s", core->unreachable[--core->n_unreachable]);
        rt_registry_drop(core->registry, peer); /* on_down retries its requests */
    }
}

static bool has_room(rt_core_t *core, const rt_worker_t *w, const rt_req_t *r) {
    if (w->draining || is_unreachable(core, w->peer)) return false;
    rt_load_t *l = rt_load_get(core, w->peer);
    if (!l || l->assigned >= 2 * w->max_batch) return false;
    if (w->role != RT_ROLE_PREFILL && l->full) return false;
    if (w->role != RT_ROLE_PREFILL && w->total_blocks < blocks_needed(r, w->block_size))
        return false;
    return true;
}

static const rt_worker_t *pick(rt_core_t *core, rt_role_t role, const rt_req_t *r) {
    const rt_worker_t *best = NULL, *w;
    double best_score = 0;
    for (size_t i = 0; (w = rt_registry_at(core->registry, i)); i++) {
        if (w->role != role || !has_room(core, w, r)) continue;
        double s = score(core, w);
        /* Ties go to the worker with more free blocks. */
        if (!best || s < best_score || (s == best_score && w->free_blocks > best->free_blocks)) {
            best = w;
            best_score = s;
        }
    }
    return best;
}

static bool send_to(rt_core_t *core, const char *peer, const cm_cp_msg_t *m) {
    cm_status_t st = cm_cp_endpoint_send(core->cp, peer, m);
    if (st != CM_OK) {
        cm_log_warn("router", "send %s to %s: %s", cm_cp_body_name(m), peer, cm_strerror(st));
        /* Its connection is gone: stop placing work there now, and drop it
         * (retrying its requests) at the next tick rather than after its
         * heartbeats expire. */
        if (st == CM_ERR_PEER_DEAD && !is_unreachable(core, peer) && core->n_unreachable < 8)
            snprintf(core->unreachable[core->n_unreachable++], 256, "%s", peer);
        return false;
    }
    return true;
}

static uint32_t deadline_left(const rt_req_t *r) {
    uint64_t now = cm_time_mono_ms();
    uint64_t left = r->deadline_ms > now ? r->deadline_ms - now : 1;
    return left > 3600000 ? 3600000 : (uint32_t)left;
}

static bool start_colocated(rt_core_t *core, rt_req_t *r, const rt_worker_t *w) {
    Tandem__Cp__PrefillJob j = TANDEM__CP__PREFILL_JOB__INIT;
    j.request_id = r->id;
    j.n_prompt_tokens = r->n_prompt;
    j.prompt_tokens = r->prompt;
    j.sampling = &r->sp;
    j.decode_worker_id = "";
    j.deadline_ms = deadline_left(r);
    j.n_stop = r->n_stop;
    j.stop = r->stop;
    cm_cp_msg_t m = envelope();
    m.body_case = TANDEM__CP__ENVELOPE__BODY_PREFILL_JOB;
    m.prefill_job = &j;
    if (!send_to(core, w->peer, &m)) return false;
    r->colocated = true;
    snprintf(r->prefill_peer, sizeof r->prefill_peer, "%s", w->peer);
    load_add(core, w->peer, +1);
    r->state = RT_REQ_RUNNING;
    return true;
}

static bool start_reserve(rt_core_t *core, rt_req_t *r, const rt_worker_t *d) {
    Tandem__Cp__ReserveBlocks rb = TANDEM__CP__RESERVE_BLOCKS__INIT;
    rb.request_id = r->id;
    rb.n_prompt_tokens = r->n_prompt;
    rb.prompt_tokens = r->prompt;
    rb.sampling = &r->sp;
    rb.n_stop = r->n_stop;
    rb.stop = r->stop;
    rb.deadline_ms = deadline_left(r);
    cm_cp_msg_t m = envelope();
    m.body_case = TANDEM__CP__ENVELOPE__BODY_RESERVE;
    m.reserve = &rb;
    if (!send_to(core, d->peer, &m)) return false;
    r->colocated = false;
    snprintf(r->decode_peer, sizeof r->decode_peer, "%s", d->peer);
    r->decode_incarnation = d->incarnation;
    load_add(core, d->peer, +1);
    r->state = RT_REQ_RESERVING;
    return true;
}

/* Tries to place the request at the head of the queue. */
static bool place(rt_core_t *core, rt_req_t *r) {
    const rt_worker_t *co = pick(core, RT_ROLE_COLOCATED, r);
    const rt_worker_t *de = pick(core, RT_ROLE_DECODE, r);
    const rt_worker_t *pf = de ? pick(core, RT_ROLE_PREFILL, r) : NULL;
    bool disagg = de && pf;
    if (co && disagg) disagg = score(core, de) < score(core, co);
    if (!co && !disagg) return false;
    r->attempts++;
    r->t_dispatch = cm_time_mono_ms();
    core->sum_queue_ms += r->t_dispatch - r->t_submit;
    return disagg ? start_reserve(core, r, de) : start_colocated(core, r, co);
}

void rt_sched_pump(rt_core_t *core) {
    while (core->qhead) {
        /* Dequeue first: placing sends messages, and nothing may assume
         * the queue is unchanged across a send. */
        rt_req_t *r = core->qhead;
        core->qhead = r->qnext;
        if (!core->qhead) core->qtail = NULL;
        r->qnext = NULL;
        core->qlen--;
        if (place(core, r)) continue;
        r->qnext = core->qhead;
        core->qhead = r;
        if (!core->qtail) core->qtail = r;
        core->qlen++;
        break;
    }
}

/* Puts a placed request back at the front of the queue. */
static void requeue(rt_req_t *r, const char *why) {
    rt_core_t *core = r->core;
    unplace(r, why);
    r->qnext = core->qhead;
    core->qhead = r;
    if (!core->qtail) core->qtail = r;
    core->qlen++;
}

static void retry_or_fail(rt_req_t *r, const char *why) {
    if (!r->streamed && r->attempts < RT_MAX_ATTEMPTS) {
        r->core->n_retried++;
        cm_log_info("router", "request %llu: %s; placing it again", (unsigned long long)r->id, why);
        requeue(r, why);
        return;
    }
    rt_req_fail(r, 503, "service_unavailable", "%s", why);
}

static void on_reserve_reply(rt_core_t *core, rt_req_t *r, const char *peer,
                             const Tandem__Cp__ReserveReply *rep) {
    if (r->state != RT_REQ_RESERVING || strcmp(peer, r->decode_peer) != 0) return;
    r->t_reserved = cm_time_mono_ms();
    core->sum_reserve_ms += r->t_reserved - r->t_dispatch;
    const rt_worker_t *d = rt_registry_find(core->registry, r->decode_peer);
    const rt_worker_t *p = d ? pick(core, RT_ROLE_PREFILL, r) : NULL;
    if (!d || !p) {
        retry_or_fail(r, "no prefill worker is available");
        return;
    }
    Tandem__Cp__PrefillJob j = TANDEM__CP__PREFILL_JOB__INIT;
    j.request_id = r->id;
    j.n_prompt_tokens = r->n_prompt;
    j.prompt_tokens = r->prompt;
    j.sampling = &r->sp;
    j.decode_worker_id = (char *)d->worker_id;
    j.decode_incarnation = d->incarnation;
    j.n_dst_block_ids = rep->n_block_ids;
    j.dst_block_ids = rep->block_ids;
    j.skip_blocks = rep->cached_blocks;
    j.deadline_ms = deadline_left(r);
    j.decode_kvx_descriptor.data = d->kvx_descriptor;
    j.decode_kvx_descriptor.len = d->kvx_descriptor_len;
    cm_cp_msg_t m = envelope();
    m.body_case = TANDEM__CP__ENVELOPE__BODY_PREFILL_JOB;
    m.prefill_job = &j;
    if (!send_to(core, p->peer, &m)) {
        retry_or_fail(r, "could not reach the prefill worker");
        return;
    }
    snprintf(r->prefill_peer, sizeof r->prefill_peer, "%s", p->peer);
    load_add(core, p->peer, +1);
    r->state = RT_REQ_PREFILLING;
}

static void on_kv_ready(rt_core_t *core, rt_req_t *r, const char *peer, const cm_cp_msg_t *msg) {
    if (r->state != RT_REQ_PREFILLING || strcmp(peer, r->prefill_peer) != 0) return;
    const Tandem__Cp__KvReady *k = msg->kv_ready;
    r->t_kv_ready = cm_time_mono_ms();
    core->sum_prefill_ms += r->t_kv_ready - (r->t_reserved ? r->t_reserved : r->t_dispatch);
    core->n_phase++;
    if (k->status != 0) {
        retry_or_fail(r, "prefill failed");
        return;
    }
    /* The prefill worker is done with it; the decode worker takes over
     * with the first token and sampler state. */
    load_add(core, r->prefill_peer, -1);
    r->prefill_peer[0] = '\0';
    if (!send_to(core, r->decode_peer, msg)) {
        retry_or_fail(r, "could not reach the decode worker");
        return;
    }
    r->state = RT_REQ_DECODING;
}

static void on_tokens(rt_core_t *core, rt_req_t *r, const char *peer,
                      const Tandem__Cp__TokenStream *t) {
    const char *owner = r->colocated ? r->prefill_peer : r->decode_peer;
    if ((r->state != RT_REQ_DECODING && r->state != RT_REQ_RUNNING) || strcmp(peer, owner) != 0)
        return;
    if (t->n_token_ids || t->text.len) {
        if (!r->t_first_token) r->t_first_token = cm_time_mono_ms();
        r->streamed = true;
        r->completion_tokens += (uint32_t)t->n_token_ids;
        rt_top_logprob_t *top = NULL;
        size_t per = 0;
        if (t->n_top_logprobs && t->n_token_ids) {
            per = t->n_top_logprobs / t->n_token_ids;
            top = cm_malloc_array(t->n_top_logprobs, sizeof *top);
            for (size_t i = 0; top && i < t->n_top_logprobs; i++) {
                top[i].token_id = t->top_logprobs[i]->token_id;
                top[i].logprob = t->top_logprobs[i]->logprob;
            }
        }
        rt_delta_t d = {.ids = t->token_ids,
                        .n = t->n_token_ids,
                        .text = t->text.len ? (const char *)t->text.data : "",
                        .text_len = t->text.len,
                        .logprobs = t->n_logprobs ? t->logprobs : NULL,
                        .top = top,
                        .top_per_token = top ? per : 0};
        if (r->cb.on_delta) r->cb.on_delta(r->ud, &d);
        cm_free(top);
    }
    if (t->finish_reason == TANDEM__CP__FINISH_REASON__FINISH_NONE) return;
    if (t->finish_reason == TANDEM__CP__FINISH_REASON__FINISH_STOP ||
        t->finish_reason == TANDEM__CP__FINISH_REASON__FINISH_LENGTH) {
        rt_finish_t why = t->finish_reason == TANDEM__CP__FINISH_REASON__FINISH_STOP
                              ? RT_FINISH_STOP
                              : RT_FINISH_LENGTH;
        uint32_t prompt = t->prompt_tokens ? t->prompt_tokens : (uint32_t)r->n_prompt;
        uint32_t completion = t->completion_tokens ? t->completion_tokens : r->completion_tokens;
        rt_req_cb_t cb = r->cb;
        void *ud = r->ud;
        /* The worker finished and freed it: no Cancel. */
        load_add(core, owner, -1);
        r->prefill_peer[0] = r->decode_peer[0] = '\0';
        r->state = RT_REQ_RUNNING;
        core->n_completed++;
        rt_req_destroy(r);
        if (cb.on_done) cb.on_done(ud, why, prompt, completion);
        return;
    }
    rt_req_fail(r, 500, "internal_error", "the worker ended the request (%s)",
                t->finish_reason == TANDEM__CP__FINISH_REASON__FINISH_CANCELED ? "canceled"
                                                                               : "error");
}

static void on_worker_error(rt_core_t *core, rt_req_t *r, const char *peer,
                            const Tandem__Cp__Error *e) {
    bool involved = strcmp(peer, r->prefill_peer) == 0 || strcmp(peer, r->decode_peer) == 0;
    if (!involved) return;
    if (e->code == CM_ERR_NO_RESOURCES && !r->streamed) {
        /* That worker is full until its next heartbeat; wait for room. */
        rt_load_t *l = rt_load_get(core, peer);
        if (l) l->full = true;
        requeue(r, "worker full");
        return;
    }
    if (e->code == CM_ERR_PEER_DEAD || e->code == CM_ERR_TIMEOUT) {
        /* The KV transfer between the pair failed because the other worker
         * died or stalled: that is a lost worker (often reported before its
         * heartbeats stop), so place the request again if nothing streamed,
         * else 503. */
        char why[160];
        snprintf(why, sizeof why, "worker error: %s", e->message ? e->message : "transfer failed");
        retry_or_fail(r, why);
        return;
    }
    rt_req_fail(r, e->code == CM_ERR_NO_RESOURCES ? 503 : 500,
                e->code == CM_ERR_NO_RESOURCES ? "service_unavailable" : "internal_error",
                "worker error: %s", e->message);
}

void rt_sched_on_worker_msg(rt_core_t *core, const char *peer, const cm_cp_msg_t *msg) {
    uint64_t id = 0;
    switch (msg->body_case) {
    case TANDEM__CP__ENVELOPE__BODY_RESERVE_REPLY:
        id = msg->reserve_reply->request_id;
        break;
    case TANDEM__CP__ENVELOPE__BODY_KV_READY:
        id = msg->kv_ready->request_id;
        break;
    case TANDEM__CP__ENVELOPE__BODY_TOKENS:
        id = msg->tokens->request_id;
        break;
    case TANDEM__CP__ENVELOPE__BODY_ERROR:
        id = msg->error->request_id;
        break;
    case TANDEM__CP__ENVELOPE__BODY_CANCEL:
        id = msg->cancel->request_id;
        break;
    default:
        cm_log_warn("router", "unexpected %s from %s", cm_cp_body_name(msg), peer);
        return;
    }
    if (!rt_registry_find(core->registry, peer)) {
        cm_log_warn("router", "%s from unregistered %s ignored", cm_cp_body_name(msg), peer);
        return;
    }
    rt_req_t *r = id ? find_req(core, id) : NULL;
    if (!r) {
        /* Finished, canceled or timed out already: make sure the worker
         * lets go of it too (its reservation would leak otherwise). */
        if (msg->body_case == TANDEM__CP__ENVELOPE__BODY_RESERVE_REPLY ||
            msg->body_case == TANDEM__CP__ENVELOPE__BODY_TOKENS)
            send_cancel(core, peer, id, "request no longer exists");
        return;
    }
    switch (msg->body_case) {
    case TANDEM__CP__ENVELOPE__BODY_RESERVE_REPLY:
        on_reserve_reply(core, r, peer, msg->reserve_reply);
        break;
    case TANDEM__CP__ENVELOPE__BODY_KV_READY:
        on_kv_ready(core, r, peer, msg);
        break;
    case TANDEM__CP__ENVELOPE__BODY_TOKENS:
        on_tokens(core, r, peer, msg->tokens);
        break;
    case TANDEM__CP__ENVELOPE__BODY_ERROR:
        on_worker_error(core, r, peer, msg->error);
        break;
    case TANDEM__CP__ENVELOPE__BODY_CANCEL:
        if (strcmp(peer, r->prefill_peer) == 0 || strcmp(peer, r->decode_peer) == 0)
            retry_or_fail(r, "the worker canceled the request");
        break;
    default:
        break;
    }
    rt_sched_pump(core);
}

void rt_sched_on_worker_down(rt_core_t *core, const rt_worker_t *w) {
    /* Heartbeat-based "full" marks and counts die with the worker. */
    for (size_t i = 0; i < core->n_loads; i++) {
        if (strcmp(core->loads[i].peer, w->peer) == 0) {
            core->loads[i] = core->loads[--core->n_loads];
            break;
        }
    }
    rt_req_t *next;
    for (rt_req_t *r = core->reqs; r; r = next) {
        next = r->next;
        if (r->state == RT_REQ_QUEUED) continue;
        bool on_it = strcmp(r->prefill_peer, w->peer) == 0 || strcmp(r->decode_peer, w->peer) == 0;
        if (!on_it) continue;
        /* Forget the dead worker before unplacing (no Cancel to it). */
        if (strcmp(r->prefill_peer, w->peer) == 0) r->prefill_peer[0] = '\0';
        if (strcmp(r->decode_peer, w->peer) == 0) r->decode_peer[0] = '\0';
        char why[320];
        snprintf(why, sizeof why, "worker %s was lost", w->peer);
        retry_or_fail(r, why);
    }
}

void rt_sched_expire(rt_core_t *core, uint64_t now_ms) {
    rt_req_t *next;
    for (rt_req_t *r = core->reqs; r; r = next) {
        next = r->next;
        if (now_ms < r->deadline_ms) continue;
        core->n_timed_out++;
        core->n_failed--; /* counted as timed out, not failed */
        rt_req_fail(r, 504, "timeout", "The request did not finish within its deadline.");
    }
}
