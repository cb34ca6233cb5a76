/* cm_cp_zmq.c - control-plane messages over ZeroMQ inside a libuv loop. */
#include "cm_cp_zmq.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <zmq.h>

typedef struct qmsg {
    struct qmsg *next;
    char *peer; /* NULL for DEALER */
    uint8_t *data;
    size_t len;
} qmsg_t;

struct cm_cp_endpoint {
    uv_loop_t *loop;
    void *sock;
    cm_cp_kind_t kind;
    cm_cp_callbacks_t cb;
    void *ud;
    cm_cp_limits_t limits;
    cm_cp_decoder_t *dec;
    uv_poll_t poll;
    uv_check_t check;
    uv_idle_t idle; /* runs drain() on the next loop turn after a send */
    int open_handles;
    bool closing;
    int depth; /* nesting of drain() through callbacks */
    uint64_t seq;
    qmsg_t *qhead, *qtail;
    size_t qlen, qmax;
    char address[256];
};

static void drain(cm_cp_endpoint_t *ep);

static void on_handle_closed(uv_handle_t *h) {
    cm_cp_endpoint_t *ep = h->data;
    if (--ep->open_handles == 0) {
        cm_cp_decoder_free(ep->dec);
        cm_free(ep);
    }
}

static void on_poll(uv_poll_t *p, int status, int events) {
    (void)status;
    (void)events;
    drain(p->data);
}

static void on_check(uv_check_t *c) { drain(c->data); }

static void on_idle(uv_idle_t *i) {
    uv_idle_stop(i);
    drain(i->data);
}

/*
 * After a send: ZeroMQ may have consumed the fd's edge while processing
 * commands, so ZMQ_EVENTS is re-checked; if anything is pending, drain() runs
 * on the next loop turn (an idle handle keeps the loop from blocking). Not
 * draining here keeps callbacks from re-entering the caller of send.
 */
static void kick(cm_cp_endpoint_t *ep) {
    int events = 0;
    size_t len = sizeof events;
    if (zmq_getsockopt(ep->sock, ZMQ_EVENTS, &events, &len) != 0) return;
    if ((events & ZMQ_POLLIN) || ((events & ZMQ_POLLOUT) && ep->qhead))
        uv_idle_start(&ep->idle, on_idle);
}

static void set_int(void *sock, int opt, int v) { zmq_setsockopt(sock, opt, &v, sizeof v); }

cm_status_t cm_cp_endpoint_new(uv_loop_t *loop, void *zctx, const cm_cp_endpoint_config_t *cfg,
                               const cm_cp_callbacks_t *cb, void *ud, cm_cp_endpoint_t **out) {
    cm_status_t st = CM_ERR_NO_MEMORY;
    if (!loop || !zctx || !cfg || !cfg->endpoint || !cb || !cb->on_msg) return CM_ERR_INVALID_ARG;
    if (cfg->kind == CM_CP_DEALER &&
        (!cfg->routing_id || !cfg->routing_id[0] || strlen(cfg->routing_id) > 255))
        return CM_ERR_INVALID_ARG;
    cm_cp_endpoint_t *ep = cm_calloc(1, sizeof *ep);
    if (!ep) return CM_ERR_NO_MEMORY;
    ep->loop = loop;
    ep->kind = cfg->kind;
    ep->cb = *cb;
    ep->ud = ud;
    ep->limits = cfg->limits;
    ep->qmax = cfg->max_queue ? cfg->max_queue : 65536;
    ep->dec = cm_cp_decoder_new(&cfg->limits);
    if (!ep->dec) goto fail;
    ep->sock = zmq_socket(zctx, cfg->kind == CM_CP_ROUTER ? ZMQ_ROUTER : ZMQ_DEALER);
    if (!ep->sock) {
        cm_log_error("cp", "zmq_socket: %s", zmq_strerror(zmq_errno()));
        st = CM_ERR_IO;
        goto fail;
    }
    set_int(ep->sock, ZMQ_LINGER, (int)cfg->linger_ms);
    int64_t maxsize = (int64_t)cfg->limits.max_msg_bytes;
    zmq_setsockopt(ep->sock, ZMQ_MAXMSGSIZE, &maxsize, sizeof maxsize);
    /* ZMTP heartbeats: a silent TCP peer is noticed at the transport too. */
    set_int(ep->sock, ZMQ_HEARTBEAT_IVL, 1000);
    set_int(ep->sock, ZMQ_HEARTBEAT_TIMEOUT, 5000);
    if (cfg->kind == CM_CP_ROUTER) {
        set_int(ep->sock, ZMQ_ROUTER_MANDATORY, 1);
        set_int(ep->sock, ZMQ_ROUTER_HANDOVER, 1);
        if (zmq_bind(ep->sock, cfg->endpoint) != 0) {
            int e = zmq_errno();
            cm_log_error("cp", "bind %s: %s", cfg->endpoint, zmq_strerror(e));
            st = e == EADDRINUSE ? CM_ERR_EXISTS : CM_ERR_INVALID_ARG;
            goto fail;
        }
        size_t alen = sizeof ep->address;
        if (zmq_getsockopt(ep->sock, ZMQ_LAST_ENDPOINT, ep->address, &alen) != 0)
            snprintf(ep->address, sizeof ep->address, "%s", cfg->endpoint);
    } else {
        zmq_setsockopt(ep->sock, ZMQ_ROUTING_ID, cfg->routing_id, strlen(cfg->routing_id));
        /* Reconnect quickly after a router restart. */
        set_int(ep->sock, ZMQ_RECONNECT_IVL, 100);
        set_int(ep->sock, ZMQ_RECONNECT_IVL_MAX, 2000);
        if (zmq_connect(ep->sock, cfg->endpoint) != 0) {
            cm_log_error("cp", "connect %s: %s", cfg->endpoint, zmq_strerror(zmq_errno()));
            st = CM_ERR_INVALID_ARG;
            goto fail;
        }
    }
    int fd;
    size_t fdlen = sizeof fd;
    if (zmq_getsockopt(ep->sock, ZMQ_FD, &fd, &fdlen) != 0) {
        st = CM_ERR_IO;
        goto fail;
    }
    if (uv_poll_init_socket(loop, &ep->poll, fd) != 0) {
        st = CM_ERR_IO;
        goto fail;
    }
    ep->poll.data = ep;
    ep->open_handles++;
    uv_check_init(loop, &ep->check);
    ep->check.data = ep;
    ep->open_handles++;
    uv_idle_init(loop, &ep->idle);
    ep->idle.data = ep;
    ep->open_handles++;
    uv_poll_start(&ep->poll, UV_READABLE, on_poll);
    uv_check_start(&ep->check, on_check);
    /* The socket may already hold events the fd edge will not repeat. */
    drain(ep);
    *out = ep;
    return CM_OK;
fail:
    if (ep->sock) zmq_close(ep->sock);
    cm_cp_decoder_free(ep->dec);
    cm_free(ep);
    return st;
}

/* Tries to hand one frame set to ZeroMQ. Returns 0 sent, EAGAIN, or an
 * errno for a permanent failure. */
static int try_send(cm_cp_endpoint_t *ep, const char *peer, const uint8_t *data, size_t len) {
    if (ep->kind == CM_CP_ROUTER) {
        if (zmq_send(ep->sock, peer, strlen(peer), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
            return zmq_errno();
    }
    if (zmq_send(ep->sock, data, len, ZMQ_DONTWAIT) < 0) return zmq_errno();
    return 0;
}

static void flush_queue(cm_cp_endpoint_t *ep) {
    while (ep->qhead) {
        qmsg_t *q = ep->qhead;
        int e = try_send(ep, q->peer, q->data, q->len);
        if (e == EAGAIN) return;
        if (e != 0)
            cm_log_warn("cp", "dropping queued message to %s: %s", q->peer ? q->peer : "router",
                        zmq_strerror(e));
        ep->qhead = q->next;
        if (!ep->qhead) ep->qtail = NULL;
        ep->qlen--;
        cm_free(q->peer);
        cm_free(q->data);
        cm_free(q);
    }
}

/* Receives one message (all its frames). Returns false when none waits. */
static bool recv_one(cm_cp_endpoint_t *ep) {
    char peer[256] = "";
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, ep->sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return false;
    }
    if (ep->kind == CM_CP_ROUTER) {
        /* Our workers use printable ids; ZeroMQ's automatic ids start with
         * a zero byte: show those as hex. */
        size_t n = zmq_msg_size(&m);
        const unsigned char *id = zmq_msg_data(&m);
        bool printable = n > 0 && n < sizeof peer;
        for (size_t i = 0; i < n && printable; i++) printable = id[i] >= 0x21 && id[i] < 0x7f;
        if (printable) {
            memcpy(peer, id, n);
            peer[n] = '\0';
        } else {
            size_t w = 0;
            for (size_t i = 0; i < n && w + 3 < sizeof peer; i++)
                w += (size_t)snprintf(peer + w, sizeof peer - w, "%02x", id[i]);
        }
        if (!zmq_msg_more(&m)) {
            zmq_msg_close(&m);
            return true;
        }
        zmq_msg_close(&m);
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, ep->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return true;
        }
    }
    /* A well-formed peer sends exactly one payload frame; drain extras. */
    bool extra = zmq_msg_more(&m);
    if (extra) {
        zmq_msg_t x;
        do {
            zmq_msg_init(&x);
            if (zmq_msg_recv(&x, ep->sock, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&x);
                break;
            }
            bool more = zmq_msg_more(&x);
            zmq_msg_close(&x);
            if (!more) break;
        } while (1);
    }
    char err[256];
    const cm_cp_msg_t *msg = NULL;
    cm_status_t st =
        extra ? CM_ERR_PROTOCOL
              : cm_cp_decode(ep->dec, zmq_msg_data(&m), zmq_msg_size(&m), &msg, err, sizeof err);
    if (extra) snprintf(err, sizeof err, "message has more than one payload frame");
    zmq_msg_close(&m);
    if (st != CM_OK) {
        cm_log_warn("cp", "dropped message from %s: %s: %s", peer[0] ? peer : "router",
                    cm_strerror(st), err);
        if (ep->cb.on_bad) ep->cb.on_bad(ep->ud, peer, st, err);
        return true;
    }
    ep->cb.on_msg(ep->ud, peer, msg);
    return true;
}

static void drain(cm_cp_endpoint_t *ep) {
    if (ep->closing || ep->depth > 0) return;
    ep->depth++;
    for (int guard = 0; guard < 100000 && !ep->closing; guard++) {
        int events = 0;
        size_t len = sizeof events;
        if (zmq_getsockopt(ep->sock, ZMQ_EVENTS, &events, &len) != 0) break;
        bool progressed = false;
        if ((events & ZMQ_POLLOUT) && ep->qhead) {
            size_t before = ep->qlen;
            flush_queue(ep);
            progressed = ep->qlen != before;
        }
        if (events & ZMQ_POLLIN) progressed = recv_one(ep) || progressed;
        if (!progressed) break;
    }
    ep->depth--;
    if (ep->closing && ep->depth == 0 && ep->sock) {
        zmq_close(ep->sock);
        ep->sock = NULL;
    }
}

cm_status_t cm_cp_endpoint_send(cm_cp_endpoint_t *ep, const char *peer, const cm_cp_msg_t *msg) {
    if (ep->closing) return CM_ERR_CLOSED;
    if (ep->kind == CM_CP_ROUTER && (!peer || !peer[0])) return CM_ERR_INVALID_ARG;
    cm_cp_msg_t copy = *msg;
    copy.seq = ++ep->seq;
    uint8_t *buf = NULL;
    size_t len = 0;
    char err[256];
    cm_status_t st = cm_cp_encode(&copy, &ep->limits, &buf, &len, err, sizeof err);
    if (st != CM_OK) {
        cm_log_error("cp", "refusing to send an invalid %s: %s", cm_cp_body_name(msg), err);
        return st;
    }
    int e = ep->qhead ? EAGAIN : try_send(ep, peer, buf, len);
    if (e == 0) {
        cm_free(buf);
        kick(ep); /* re-check ZMQ_EVENTS after every send */
        return CM_OK;
    }
    if (e == EHOSTUNREACH) {
        cm_free(buf);
        return CM_ERR_PEER_DEAD;
    }
    if (e != EAGAIN) {
        cm_free(buf);
        cm_log_error("cp", "send: %s", zmq_strerror(e));
        return CM_ERR_IO;
    }
    if (ep->qlen >= ep->qmax) {
        cm_free(buf);
        return CM_ERR_BUSY;
    }
    qmsg_t *q = cm_calloc(1, sizeof *q);
    char *p = ep->kind == CM_CP_ROUTER ? cm_strdup(peer) : NULL;
    if (!q || (ep->kind == CM_CP_ROUTER && !p)) {
        cm_free(q);
        cm_free(p);
        cm_free(buf);
        return CM_ERR_NO_MEMORY;
    }
    q->peer = p;
    q->data = buf;
    q->len = len;
    if (ep->qtail)
        ep->qtail->next = q;
    else
        ep->qhead = q;
    ep->qtail = q;
    ep->qlen++;
    kick(ep);
    return CM_OK;
}

size_t cm_cp_endpoint_queued(const cm_cp_endpoint_t *ep) { return ep->qlen; }

const char *cm_cp_endpoint_address(const cm_cp_endpoint_t *ep) {
    return ep->kind == CM_CP_ROUTER ? ep->address : NULL;
}

void cm_cp_endpoint_close(cm_cp_endpoint_t *ep) {
    if (!ep || ep->closing) return;
    ep->closing = true;
    while (ep->qhead) {
        qmsg_t *q = ep->qhead;
        ep->qhead = q->next;
        cm_free(q->peer);
        cm_free(q->data);
        cm_free(q);
    }
    ep->qtail = NULL;
    ep->qlen = 0;
    uv_poll_stop(&ep->poll);
    uv_check_stop(&ep->check);
    uv_idle_stop(&ep->idle);
    /* The poll handle watches the socket's fd: close it before the socket. */
    uv_close((uv_handle_t *)&ep->poll, on_handle_closed);
    uv_close((uv_handle_t *)&ep->check, on_handle_closed);
    uv_close((uv_handle_t *)&ep->idle, on_handle_closed);
    if (ep->depth == 0) {
        zmq_close(ep->sock);
        ep->sock = NULL;
    }
}
