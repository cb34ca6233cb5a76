/*
 * bench_http.c - a small HTTP/1.1 client on libuv for load generation: POST
 * requests over a pool of keep-alive connections to one server, responses
 * parsed incrementally by llhttp (response mode), body bytes handed over with
 * the time they were read, a deadline per request and failures sorted by
 * kind. Streaming bodies (chunked SSE) are delivered as they arrive.
 */
#include <arpa/inet.h>
#include <llhttp.h>
#include <stdio.h>
#include <string.h>

#include "bench_load.h"

/* Bytes read per read callback. */
enum { HTTP_READ_BUF = 64 * 1024 };

typedef struct http_conn http_conn_t;
typedef struct http_req http_req_t;

struct http_req {
    bench_http_t *c;
    http_conn_t *conn;       /* the connection serving it, or NULL while queued */
    http_req_t *prev, *next; /* wait queue links */
    bool queued;
    bool fresh_only; /* retrying: must not reuse an idle connection */
    bool got_bytes;  /* some response bytes arrived */
    bool done;
    int status;
    char *wire; /* the whole request: head and body */
    size_t wire_len;
    uv_timer_t timer;
    bench_http_cb_t cb;
    void *ud;
};

struct http_conn {
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_write_t write;
    llhttp_t parser;
    bench_http_t *c;
    http_req_t *req;        /* current request, NULL when idle */
    http_conn_t *idle_next; /* idle list link */
    http_conn_t *all_prev, *all_next;
    bool connected, closing, reused, msg_done, body_failed;
    uint64_t read_ns; /* arrival time of the bytes being parsed */
    char rbuf[HTTP_READ_BUF];
};

struct bench_http {
    uv_loop_t *loop;
    struct sockaddr_storage addr;
    char host[300];
    size_t max_conns, n_conns, pending;
    http_req_t *q_head, *q_tail;
    http_conn_t *idle;
    http_conn_t *all;
    uv_timer_t kick; /* dispatches queued requests on the next loop turn */
    llhttp_settings_t settings;
    bool freeing;
    size_t handles; /* handles not yet closed while freeing */
};

static void http_dispatch(bench_http_t *c);
static void http_conn_close(http_conn_t *k);

const char *bench_err_name(bench_err_t e) {
    static const char *const names[] = {
#define BENCH_ERR_NAME_(name, text) text,
        BENCH_ERR_LIST(BENCH_ERR_NAME_)
#undef BENCH_ERR_NAME_
    };
    return (unsigned)e < BENCH_ERR_COUNT ? names[e] : "unknown";
}

bench_err_t bench_err_from_status(int status) {
    if (status >= 400 && status < 500) return BENCH_ERR_HTTP_4XX;
    if (status >= 500 && status < 600) return BENCH_ERR_HTTP_5XX;
    if (status >= 200 && status < 300) return BENCH_ERR_NONE;
    return BENCH_ERR_HTTP_OTHER;
}

cm_status_t bench_url_parse(const char *url, char *host, size_t hostlen, int *port, char *base,
                            size_t baselen) {
    if (!url || strncmp(url, "http://", 7) != 0) return CM_ERR_INVALID_ARG;
    const char *auth = url + 7;
    const char *slash = strchr(auth, '/');
    const char *aend = slash ? slash : auth + strlen(auth);
    const char *h = auth, *hend = aend, *colon = NULL;
    if (h < aend && h[0] == '[') { /* [v6addr]:port */
        const char *rb = memchr(h, ']', (size_t)(aend - h));
        if (!rb) return CM_ERR_INVALID_ARG;
        if (rb + 1 < aend) {
            if (rb[1] != ':') return CM_ERR_INVALID_ARG;
            colon = rb + 1;
        }
        h++;
        hend = rb;
    } else {
        colon = memchr(h, ':', (size_t)(aend - h));
        if (colon) hend = colon;
    }
    int p = 80;
    if (colon) {
        if (aend - colon < 2 || aend - colon > 6) return CM_ERR_INVALID_ARG;
        p = 0;
        for (const char *d = colon + 1; d < aend; d++) {
            if (*d < '0' || *d > '9') return CM_ERR_INVALID_ARG;
            p = p * 10 + (*d - '0');
        }
        if (p < 1 || p > 65535) return CM_ERR_INVALID_ARG;
    }
    size_t hl = (size_t)(hend - h);
    if (hl == 0 || hl >= hostlen) return CM_ERR_INVALID_ARG;
    for (size_t i = 0; i < hl; i++)
        if (h[i] <= ' ' || h[i] == '@' || h[i] == 0x7f) return CM_ERR_INVALID_ARG;
    const char *b = slash ? slash : "";
    size_t bl = strlen(b);
    while (bl > 0 && b[bl - 1] == '/') bl--;
    if (bl >= baselen) return CM_ERR_INVALID_ARG;
    for (size_t i = 0; i < bl; i++)
        if (b[i] <= ' ' || b[i] == 0x7f) return CM_ERR_INVALID_ARG;
    memcpy(host, h, hl);
    host[hl] = '\0';
    memcpy(base, b, bl);
    base[bl] = '\0';
    *port = p;
    return CM_OK;
}

static const struct sockaddr *pick_addr(const struct addrinfo *ai) {
    for (const struct addrinfo *a = ai; a; a = a->ai_next)
        if (a->ai_family == AF_INET) return a->ai_addr;
    return ai->ai_addr;
}

cm_status_t bench_http_open_url(uv_loop_t *loop, const char *url, size_t max_conns,
                                bench_http_t **out, char *base, size_t baselen, char *err,
                                size_t errlen) {
    char host[256];
    int port;
    if (bench_url_parse(url, host, sizeof host, &port, base, baselen) != CM_OK) {
        snprintf(err, errlen, "bad --url '%s' (want http://host[:port][/base])", url);
        return CM_ERR_INVALID_ARG;
    }
    /* Resolve the host once; the name does not change during a run. */
    uv_getaddrinfo_t gai;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    int grc = uv_getaddrinfo(loop, &gai, NULL, host, portstr, &hints);
    if (grc != 0 || !gai.addrinfo) {
        snprintf(err, errlen, "cannot resolve '%s': %s", host, uv_strerror(grc));
        return CM_ERR_NOT_FOUND;
    }
    char hosthdr[300];
    snprintf(hosthdr, sizeof hosthdr, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
    cm_status_t st = bench_http_new(loop, pick_addr(gai.addrinfo), hosthdr, max_conns, out);
    uv_freeaddrinfo(gai.addrinfo);
    if (st != CM_OK) snprintf(err, errlen, "cannot set up the client: %s", cm_strerror(st));
    return st;
}

/* ---- request lifetime --------------------------------------------------- */

/* Every handle (kick timer, request timers, connections) is counted in
 * c->handles from init to close callback; @c is freed after the last. */
static void http_handle_closed(bench_http_t *c) {
    if (--c->handles == 0 && c->freeing) cm_free(c);
}

static void http_req_timer_closed(uv_handle_t *h) {
    http_req_t *r = h->data;
    bench_http_t *c = r->c;
    cm_free(r->wire);
    cm_free(r);
    http_handle_closed(c);
}

static void http_queue_remove(bench_http_t *c, http_req_t *r) {
    if (!r->queued) return;
    if (r->prev)
        r->prev->next = r->next;
    else
        c->q_head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        c->q_tail = r->prev;
    r->prev = r->next = NULL;
    r->queued = false;
}

static void http_queue_push(bench_http_t *c, http_req_t *r, bool front) {
    r->queued = true;
    if (front) {
        r->prev = NULL;
        r->next = c->q_head;
        if (c->q_head)
            c->q_head->prev = r;
        else
            c->q_tail = r;
        c->q_head = r;
    } else {
        r->next = NULL;
        r->prev = c->q_tail;
        if (c->q_tail)
            c->q_tail->next = r;
        else
            c->q_head = r;
        c->q_tail = r;
    }
}

/* Ends @r: detaches it, reports once, releases it. */
static void http_req_finish(http_req_t *r, bench_err_t err) {
    if (r->done) return;
    bench_http_t *c = r->c;
    r->done = true;
    http_queue_remove(c, r);
    if (r->conn) {
        r->conn->req = NULL;
        r->conn = NULL;
    }
    c->pending--;
    uv_timer_stop(&r->timer);
    if (r->cb.on_done) r->cb.on_done(r->ud, err, r->status, cm_time_mono_ns());
    uv_close((uv_handle_t *)&r->timer, http_req_timer_closed);
}

/* A failure on @k's current request: retried once when a reused connection
 * died before any byte of the answer (the server closed it while idle). */
static void http_conn_fail(http_conn_t *k, bench_err_t err) {
    http_req_t *r = k->req;
    bench_http_t *c = k->c;
    bool retry = r && k->reused && !r->got_bytes && !r->fresh_only &&
                 (err == BENCH_ERR_CLOSED || err == BENCH_ERR_RESET) && !c->freeing;
    http_conn_close(k);
    if (!r) return;
    if (retry) {
        r->conn = NULL;
        r->fresh_only = true;
        http_queue_push(c, r, true);
        http_dispatch(c);
        return;
    }
    http_req_finish(r, err);
}

static void http_req_timeout(uv_timer_t *t) {
    http_req_t *r = t->data;
    if (r->conn) {
        http_conn_t *k = r->conn;
        k->req = NULL;
        r->conn = NULL;
        http_conn_close(k); /* the answer may still be on its way */
    }
    http_req_finish(r, BENCH_ERR_TIMEOUT);
}

/* ---- connections -------------------------------------------------------- */

static void http_conn_closed(uv_handle_t *h) {
    http_conn_t *k = h->data;
    bench_http_t *c = k->c;
    cm_free(k);
    http_handle_closed(c);
}

static void http_idle_remove(bench_http_t *c, http_conn_t *k) {
    for (http_conn_t **pp = &c->idle; *pp; pp = &(*pp)->idle_next)
        if (*pp == k) {
            *pp = k->idle_next;
            k->idle_next = NULL;
            return;
        }
}

/* Closes @k (its request, if any, must have been detached or handled). */
static void http_conn_close(http_conn_t *k) {
    if (k->closing) return;
    bench_http_t *c = k->c;
    k->closing = true;
    if (k->req) {
        k->req->conn = NULL;
        k->req = NULL;
    }
    http_idle_remove(c, k);
    if (k->all_prev)
        k->all_prev->all_next = k->all_next;
    else
        c->all = k->all_next;
    if (k->all_next) k->all_next->all_prev = k->all_prev;
    c->n_conns--;
    uv_close((uv_handle_t *)&k->tcp, http_conn_closed);
    if (!c->freeing) http_dispatch(c); /* a slot opened */
}

static void http_write_done(uv_write_t *w, int status) {
    http_conn_t *k = w->data;
    if (status == 0 || k->closing) return;
    http_conn_fail(k, status == UV_ECONNRESET || status == UV_EPIPE ? BENCH_ERR_RESET
                                                                    : BENCH_ERR_CLOSED);
}

static void http_conn_send(http_conn_t *k) {
    http_req_t *r = k->req;
    llhttp_init(&k->parser, HTTP_RESPONSE, &k->c->settings);
    k->parser.data = k;
    k->msg_done = false;
    k->body_failed = false;
    uv_buf_t b = uv_buf_init(r->wire, (unsigned)r->wire_len);
    k->write.data = k;
    int rc = uv_write(&k->write, (uv_stream_t *)&k->tcp, &b, 1, http_write_done);
    if (rc != 0) http_conn_fail(k, BENCH_ERR_RESET);
}

static void http_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    http_conn_t *k = h->data;
    *buf = uv_buf_init(k->rbuf, sizeof k->rbuf);
}

static int http_on_headers(llhttp_t *p) {
    http_conn_t *k = p->data;
    http_req_t *r = k->req;
    r->status = llhttp_get_status_code(p);
    if (r->cb.on_head) r->cb.on_head(r->ud, r->status, k->read_ns);
    return 0;
}

static int http_on_body(llhttp_t *p, const char *at, size_t len) {
    http_conn_t *k = p->data;
    http_req_t *r = k->req;
    if (r->cb.on_body && r->cb.on_body(r->ud, at, len, k->read_ns) != 0) {
        k->body_failed = true;
        return -1;
    }
    return 0;
}

static int http_on_complete(llhttp_t *p) {
    http_conn_t *k = p->data;
    k->msg_done = true;
    return HPE_PAUSED; /* finish outside the parser, which may be reused */
}

/* The message on @k completed; @extra bytes followed it in the same read. */
static void http_conn_complete(http_conn_t *k, size_t extra) {
    http_req_t *r = k->req;
    bench_http_t *c = k->c;
    bool keep = llhttp_should_keep_alive(&k->parser) && extra == 0;
    if (!keep)
        cm_log_debug("bench", "connection not reused (keep-alive %d, %zu bytes after the response)",
                     llhttp_should_keep_alive(&k->parser), extra);
    k->req = NULL;
    r->conn = NULL;
    if (keep) {
        k->reused = true;
        k->idle_next = c->idle;
        c->idle = k;
    } else {
        http_conn_close(k);
    }
    http_req_finish(r, BENCH_ERR_NONE);
    http_dispatch(c);
}

static void http_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    http_conn_t *k = s->data;
    if (k->closing) return;
    uint64_t now = cm_time_mono_ns();
    if (nread == 0) return;
    if (!k->req) { /* idle: the server closed it, or sent junk */
        http_conn_close(k);
        return;
    }
    http_req_t *r = k->req;
    if (nread < 0) {
        cm_log_debug("bench", "connection read ended: %s", uv_strerror((int)nread));
        if (nread == UV_EOF && r->got_bytes) {
            /* A body delimited by the end of the connection ends here. */
            k->read_ns = now;
            llhttp_finish(&k->parser);
            if (k->msg_done) {
                http_conn_complete(k, 1);
                return;
            }
        }
        http_conn_fail(k, nread == UV_EOF ? BENCH_ERR_CLOSED : BENCH_ERR_RESET);
        return;
    }
    r->got_bytes = true;
    k->read_ns = now;
    llhttp_errno_t e = llhttp_execute(&k->parser, buf->base, (size_t)nread);
    if (e == HPE_PAUSED && k->msg_done) {
        const char *pos = llhttp_get_error_pos(&k->parser);
        size_t used = pos ? (size_t)(pos - buf->base) : (size_t)nread;
        http_conn_complete(k, (size_t)nread - (used < (size_t)nread ? used : (size_t)nread));
        return;
    }
    if (e != HPE_OK) {
        cm_log_debug("bench", "HTTP parse error: %s", llhttp_errno_name(e));
        http_conn_fail(k, k->body_failed ? BENCH_ERR_STREAM : BENCH_ERR_PROTOCOL);
    }
}

static void http_connected(uv_connect_t *cr, int status) {
    http_conn_t *k = cr->data;
    if (k->closing) return;
    if (status != 0) {
        http_conn_fail(k,
                       status == UV_ECONNREFUSED ? BENCH_ERR_CONNECT_REFUSED : BENCH_ERR_CONNECT);
        return;
    }
    k->connected = true;
    uv_tcp_nodelay(&k->tcp, 1);
    int rc = uv_read_start((uv_stream_t *)&k->tcp, http_alloc, http_read);
    if (rc != 0) {
        http_conn_fail(k, BENCH_ERR_CONNECT);
        return;
    }
    if (k->req)
        http_conn_send(k);
    else {
        /* Its request timed out while connecting: keep it for the next. */
        k->reused = false;
        k->idle_next = k->c->idle;
        k->c->idle = k;
        http_dispatch(k->c);
    }
}

/* Opens a connection for @r. On failure @r ends with a connect error. */
static void http_conn_open(bench_http_t *c, http_req_t *r) {
    cm_log_debug("bench", "opening connection %zu", c->n_conns + 1);
    http_conn_t *k = cm_calloc(1, sizeof *k);
    if (!k) {
        http_req_finish(r, BENCH_ERR_CONNECT);
        return;
    }
    k->c = c;
    if (uv_tcp_init(c->loop, &k->tcp) != 0) {
        cm_free(k);
        http_req_finish(r, BENCH_ERR_CONNECT);
        return;
    }
    k->tcp.data = k;
    c->handles++;
    k->all_next = c->all;
    if (c->all) c->all->all_prev = k;
    c->all = k;
    c->n_conns++;
    k->req = r;
    r->conn = k;
    k->connect.data = k;
    int rc =
        uv_tcp_connect(&k->connect, &k->tcp, (const struct sockaddr *)&c->addr, http_connected);
    if (rc != 0)
        http_conn_fail(k, rc == UV_ECONNREFUSED ? BENCH_ERR_CONNECT_REFUSED : BENCH_ERR_CONNECT);
}

static void http_dispatch(bench_http_t *c) {
    while (c->q_head && !c->freeing) {
        http_req_t *r = c->q_head;
        http_conn_t *k = r->fresh_only ? NULL : c->idle;
        if (k) {
            c->idle = k->idle_next;
            k->idle_next = NULL;
            http_queue_remove(c, r);
            k->req = r;
            r->conn = k;
            http_conn_send(k);
        } else if (c->n_conns < c->max_conns) {
            http_queue_remove(c, r);
            http_conn_open(c, r);
        } else if (r->fresh_only && c->idle) {
            /* No room for a fresh one: drop an idle connection to make room. */
            http_conn_close(c->idle);
        } else {
            break;
        }
    }
}

static void http_kick(uv_timer_t *t) { http_dispatch(t->data); }

/* ---- public ------------------------------------------------------------- */

cm_status_t bench_http_new(uv_loop_t *loop, const struct sockaddr *addr, const char *host,
                           size_t max_conns, bench_http_t **out) {
    if (!loop || !addr || !host || max_conns == 0 ||
        strlen(host) >= sizeof(((bench_http_t *)0)->host))
        return CM_ERR_INVALID_ARG;
    size_t alen = addr->sa_family == AF_INET    ? sizeof(struct sockaddr_in)
                  : addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                : 0;
    if (alen == 0) return CM_ERR_INVALID_ARG;
    bench_http_t *c = cm_calloc(1, sizeof *c);
    if (!c) return CM_ERR_NO_MEMORY;
    c->loop = loop;
    memcpy(&c->addr, addr, alen);
    snprintf(c->host, sizeof c->host, "%s", host);
    c->max_conns = max_conns;
    llhttp_settings_init(&c->settings);
    c->settings.on_headers_complete = http_on_headers;
    c->settings.on_body = http_on_body;
    c->settings.on_message_complete = http_on_complete;
    uv_timer_init(loop, &c->kick);
    c->kick.data = c;
    c->handles = 1;
    *out = c;
    return CM_OK;
}

cm_status_t bench_http_post(bench_http_t *c, const char *path, const char *body, size_t len,
                            uint64_t timeout_ms, const bench_http_cb_t *cb, void *ud) {
    if (!c || !path || path[0] != '/' || (!body && len) || timeout_ms == 0 || !cb || c->freeing)
        return CM_ERR_INVALID_ARG;
    for (const char *p = path; *p; p++)
        if (*p <= ' ' || *p == 0x7f) return CM_ERR_INVALID_ARG;
    http_req_t *r = cm_calloc(1, sizeof *r);
    if (!r) return CM_ERR_NO_MEMORY;
    char head[1024];
    int hl = snprintf(head, sizeof head,
                      "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tandem-bench/%s\r\n"
                      "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                      "Content-Length: %zu\r\nConnection: keep-alive\r\n\r\n",
                      path, c->host, cm_version(), len);
    if (hl < 0 || (size_t)hl >= sizeof head) {
        cm_free(r);
        return CM_ERR_INVALID_ARG;
    }
    r->wire = cm_malloc((size_t)hl + len);
    if (!r->wire) {
        cm_free(r);
        return CM_ERR_NO_MEMORY;
    }
    memcpy(r->wire, head, (size_t)hl);
    if (len) memcpy(r->wire + hl, body, len);
    r->wire_len = (size_t)hl + len;
    r->c = c;
    r->cb = *cb;
    r->ud = ud;
    uv_timer_init(c->loop, &r->timer);
    r->timer.data = r;
    c->handles++;
    uv_timer_start(&r->timer, http_req_timeout, timeout_ms, 0);
    c->pending++;
    http_queue_push(c, r, false);
    uv_timer_start(&c->kick, http_kick, 0, 0);
    return CM_OK;
}

size_t bench_http_pending(const bench_http_t *c) { return c->pending; }
size_t bench_http_open_conns(const bench_http_t *c) { return c->n_conns; }

static void http_kick_closed(uv_handle_t *h) { http_handle_closed(h->data); }

void bench_http_free(bench_http_t *c) {
    if (!c) return;
    c->freeing = true;
    c->handles++; /* held until this function is done */
    while (c->q_head) http_req_finish(c->q_head, BENCH_ERR_CLOSED);
    while (c->all) {
        http_conn_t *k = c->all;
        http_req_t *r = k->req;
        http_conn_close(k);
        if (r) http_req_finish(r, BENCH_ERR_CLOSED);
    }
    uv_close((uv_handle_t *)&c->kick, http_kick_closed);
    http_handle_closed(c);
}
