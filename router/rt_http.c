/* rt_http.c - OpenAI HTTP/1.1 front end: libuv + llhttp over rt_core. */
#include "rt_http.h"

#include <llhttp.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "rt_metrics.h"
#include "rt_openai.h"

enum { EP_COMPLETIONS, EP_CHAT, EP_MODELS, EP_HEALTH, EP_READY, EP_METRICS, EP_OTHER, EP_N };
static const char *const k_ep_names[EP_N] = {"completions", "chat_completions", "models", "health",
                                             "ready",       "metrics",          "other"};
static const int k_codes[] = {200, 400, 404, 405, 413, 429, 431, 500, 503, 504};
enum { N_CODES = sizeof k_codes / sizeof k_codes[0] };
#define PENDING_MAX     (1u << 20)
#define WRITE_QUEUE_MAX (32u << 20)

typedef struct conn conn_t;

struct rt_http {
    uv_loop_t *loop;
    rt_core_t *core;
    rt_http_config_t cfg;
    uv_tcp_t listener;
    int port;
    conn_t *conns;
    bool stopping;
    int open_handles;
    uint64_t id_base, id_seq;
    uint64_t started_wall_s;
    /* Metrics. */
    uint64_t requests[EP_N][N_CODES + 1];
    uint64_t in_flight, prompt_tokens, generation_tokens;
    rt_hist_t ttft, tpot, e2e;
};

struct conn {
    rt_http_t *h;
    uv_tcp_t tcp;
    uv_timer_t timer;
    int open;
    bool closing, paused, close_after;
    conn_t *next, *prev;
    llhttp_t parser;
    llhttp_settings_t settings;
    /* The request being received. */
    char *url;
    size_t url_len;
    char *body;
    size_t body_len, body_cap;
    size_t header_bytes;
    bool too_large, header_too_large, expect_continue;
    char field[32];
    size_t field_len;
    int hdr; /* 1 = current header is Expect */
    /* Bytes received after a complete request, parsed once it is answered. */
    char *pending;
    size_t pending_len;
    /* The request being answered. */
    int ep;
    bool keep_alive, streaming, headers_sent;
    rt_req_t *req;
    rt_oai_req_t *oai;
    rt_oai_resp_t *resp;
    uint64_t t_start, t_first, t_last;
    uint32_t tokens;
};

static void conn_close(conn_t *c);
static void process_pending(conn_t *c);

static int code_slot(int code) {
    for (int i = 0; i < N_CODES; i++)
        if (k_codes[i] == code) return i;
    return N_CODES;
}

static const char *reason(int code) {
    switch (code) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Error";
    }
}

/* ------------------------------------------------------------------------ */
/* Writing                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct {
    uv_write_t req;
    conn_t *c;
    bool last; /* close the connection once written */
    char data[];
} wr_t;

static void on_shutdown(uv_shutdown_t *s, int status) {
    (void)status;
    conn_t *c = s->data;
    cm_free(s);
    conn_close(c);
}

static void on_written(uv_write_t *w, int status) {
    wr_t *wr = (wr_t *)w;
    conn_t *c = wr->c;
    bool last = wr->last;
    cm_free(wr);
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (last && !c->closing) {
        uv_shutdown_t *s = cm_malloc(sizeof *s);
        if (!s || uv_shutdown(s, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
            cm_free(s);
            conn_close(c);
            return;
        }
        s->data = c;
    }
}

/* Queues @len bytes (two parts) for the client. */
static bool send_bytes(conn_t *c, const char *a, size_t la, const char *b, size_t lb, bool last) {
    if (c->closing) return false;
    wr_t *w = cm_malloc(sizeof *w + la + lb);
    if (!w) {
        conn_close(c);
        return false;
    }
    w->c = c;
    w->last = last;
    memcpy(w->data, a, la);
    if (lb) memcpy(w->data + la, b, lb);
    uv_buf_t buf = uv_buf_init(w->data, (unsigned)(la + lb));
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, on_written) != 0) {
        cm_free(w);
        conn_close(c);
        return false;
    }
    return true;
}

static void count(conn_t *c, int code) { c->h->requests[c->ep][code_slot(code)]++; }

/* A whole response with a body; the connection stays open if keep-alive. */
static void respond(conn_t *c, int code, const char *ctype, const char *body, size_t len,
                    const char *extra) {
    char head[512];
    bool last = !c->keep_alive;
    int n =
        snprintf(head, sizeof head,
                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                 "Connection: %s\r\n%s\r\n",
                 code, reason(code), ctype, len, last ? "close" : "keep-alive", extra ? extra : "");
    count(c, code);
    send_bytes(c, head, (size_t)n, body, len, last);
}

static void respond_error(conn_t *c, int code, const char *type, const char *message,
                          const char *param, uint32_t retry_after_s) {
    char *body = rt_oai_error_body(type, message, param);
    char extra[64] = "";
    if (retry_after_s) snprintf(extra, sizeof extra, "Retry-After: %u\r\n", retry_after_s);
    respond(c, code, "application/json", body ? body : "{}", body ? strlen(body) : 2, extra);
    cm_free(body);
}

static void send_chunk(conn_t *c, const char *data) {
    if (!data) return;
    size_t len = strlen(data);
    if (!len) return;
    char head[32];
    int n = snprintf(head, sizeof head, "%zx\r\n", len);
    char *buf = cm_malloc(len + 2);
    if (!buf) return;
    memcpy(buf, data, len);
    memcpy(buf + len, "\r\n", 2);
    send_bytes(c, head, (size_t)n, buf, len + 2, false);
    cm_free(buf);
    /* A client that stopped reading must not make the router buffer
     * without bound: drop it (and its request). */
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > WRITE_QUEUE_MAX) {
        cm_log_warn("http", "client is not reading its stream: closing the connection");
        conn_close(c);
    }
}

/* ------------------------------------------------------------------------ */
/* Request lifecycle                                                        */
/* ------------------------------------------------------------------------ */

static void reset_request(conn_t *c) {
    cm_free(c->url);
    cm_free(c->body);
    c->url = c->body = NULL;
    c->url_len = c->body_len = c->body_cap = c->header_bytes = 0;
    c->too_large = c->header_too_large = c->expect_continue = false;
    rt_oai_free(c->oai);
    rt_oai_resp_free(c->resp);
    c->oai = NULL;
    c->resp = NULL;
    c->req = NULL;
    c->streaming = c->headers_sent = false;
    c->tokens = 0;
    c->t_first = c->t_last = 0;
}

static void on_timer(uv_timer_t *t) {
    conn_t *c = t->data;
    if (c->req) return; /* generation has its own deadline in the core */
    conn_close(c);
}

/* The current request is answered: go on with the next one. */
static void request_done(conn_t *c) {
    if (c->req || c->closing) return;
    c->h->in_flight -= c->t_start != 0;
    c->t_start = 0;
    reset_request(c);
    if (!c->keep_alive) return; /* closed after the write */
    c->paused = false;
    llhttp_resume(&c->parser);
    uv_timer_start(&c->timer, on_timer, c->h->cfg.idle_timeout_ms, 0);
    process_pending(c);
}

static void on_delta(void *ud, const rt_delta_t *d) {
    conn_t *c = ud;
    uint64_t now = cm_time_mono_ns();
    if (!c->t_first) {
        c->t_first = now;
        rt_hist_observe(&c->h->ttft, (double)(now - c->t_start) / 1e9);
    } else if (d->n) {
        rt_hist_observe(&c->h->tpot, (double)(now - c->t_last) / 1e9 / (double)d->n);
    }
    c->t_last = now;
    c->tokens += (uint32_t)d->n;
    c->h->generation_tokens += d->n;
    if (c->streaming) {
        char *ev = rt_oai_sse_delta(c->resp, d);
        send_chunk(c, ev);
        cm_free(ev);
    } else {
        rt_oai_accumulate(c->resp, d);
    }
}

static void on_done(void *ud, rt_finish_t why, uint32_t prompt, uint32_t completion) {
    conn_t *c = ud;
    c->req = NULL;
    rt_hist_observe(&c->h->e2e, (double)(cm_time_mono_ns() - c->t_start) / 1e9);
    c->h->prompt_tokens += prompt;
    if (c->streaming) {
        char *ev = rt_oai_sse_end(c->resp, why, prompt, completion);
        send_chunk(c, ev);
        cm_free(ev);
        send_bytes(c, "0\r\n\r\n", 5, NULL, 0, !c->keep_alive);
        count(c, 200);
    } else {
        char *body = rt_oai_body(c->resp, why, prompt, completion);
        respond(c, 200, "application/json", body ? body : "{}", body ? strlen(body) : 2, NULL);
        cm_free(body);
    }
    request_done(c);
}

static void on_error(void *ud, int status, const char *type, const char *message) {
    conn_t *c = ud;
    c->req = NULL;
    if (c->streaming) {
        /* Headers are out: the error travels as an SSE event. */
        char *ev = rt_oai_sse_error(status, type, message);
        send_chunk(c, ev);
        cm_free(ev);
        send_bytes(c, "0\r\n\r\n", 5, NULL, 0, !c->keep_alive);
        count(c, status);
    } else {
        respond_error(c, status, type, message, NULL, status == 503 || status == 429 ? 1 : 0);
    }
    request_done(c);
}

static const rt_req_cb_t k_cb = {on_delta, on_done, on_error};

static void make_id(rt_http_t *h, bool chat, char *buf, size_t cap) {
    uint64_t v = h->id_base ^ (++h->id_seq * 0x9E3779B97F4A7C15ull);
    snprintf(buf, cap, "%s-%016llx%08x", chat ? "chatcmpl" : "cmpl", (unsigned long long)v,
             (unsigned)h->id_seq);
}

static void handle_generate(conn_t *c, rt_oai_kind_t kind) {
    rt_http_t *h = c->h;
    rt_oai_error_t err;
    if (rt_oai_parse(kind, c->body ? c->body : "", c->body_len, &c->oai, &err) != CM_OK) {
        respond_error(c, err.status, err.type, err.message, err.param, 0);
        request_done(c);
        return;
    }
    char id[64];
    make_id(h, kind == RT_OAI_CHAT, id, sizeof id);
    c->resp = rt_oai_resp_new(c->oai, id, cm_time_wall_ns() / 1000000000ull);
    c->streaming = rt_oai_stream(c->oai);
    rt_error_t e;
    c->t_start = cm_time_mono_ns();
    h->in_flight++;
    if (!c->resp || rt_core_submit(h->core, rt_oai_gen(c->oai), &k_cb, c, &c->req, &e) != CM_OK) {
        if (!c->resp) {
            e.http_status = 503;
            e.type = "service_unavailable";
            snprintf(e.message, sizeof e.message, "out of memory");
            e.retry_after_s = 1;
        }
        c->req = NULL;
        respond_error(c, e.http_status, e.type, e.message, NULL, e.retry_after_s);
        request_done(c);
        return;
    }
    if (c->streaming) {
        static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                   "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n";
        char conn_hdr[64];
        int n = snprintf(conn_hdr, sizeof conn_hdr, "Connection: %s\r\n\r\n",
                         c->keep_alive ? "keep-alive" : "close");
        send_bytes(c, head, sizeof head - 1, conn_hdr, (size_t)n, false);
        c->headers_sent = true;
        char *ev = rt_oai_sse_start(c->resp);
        send_chunk(c, ev);
        cm_free(ev);
    }
}

static void handle_metrics(conn_t *c) {
    rt_http_t *h = c->h;
    size_t cap = 1 << 16, n = 0;
    char *buf = cm_malloc(cap);
    if (!buf) {
        respond_error(c, 500, "internal_error", "out of memory", NULL, 0);
        return;
    }
#define APPEND(...)                                                                       \
    do {                                                                                  \
        int w_ = snprintf(buf + (n < cap ? n : cap), n < cap ? cap - n : 0, __VA_ARGS__); \
        if (w_ > 0) n += (size_t)w_;                                                      \
    } while (0)
    /* This request counts too, as a 200. */
    h->requests[EP_METRICS][code_slot(200)]++;
    APPEND("# HELP tandem_http_requests_total HTTP requests by endpoint and status.\n"
           "# TYPE tandem_http_requests_total counter\n");
    for (int e = 0; e < EP_N; e++)
        for (int k = 0; k <= N_CODES; k++)
            if (h->requests[e][k])
                APPEND("tandem_http_requests_total{endpoint=\"%s\",code=\"%s%d\"} %llu\n",
                       k_ep_names[e], k == N_CODES ? "other" : "", k == N_CODES ? 0 : k_codes[k],
                       (unsigned long long)h->requests[e][k]);
    APPEND("# HELP tandem_http_in_flight Generation requests being answered.\n"
           "# TYPE tandem_http_in_flight gauge\ntandem_http_in_flight %llu\n"
           "# HELP tandem_prompt_tokens_total Prompt tokens of finished requests.\n"
           "# TYPE tandem_prompt_tokens_total counter\ntandem_prompt_tokens_total %llu\n"
           "# HELP tandem_generation_tokens_total Tokens sent to clients.\n"
           "# TYPE tandem_generation_tokens_total counter\ntandem_generation_tokens_total %llu\n",
           (unsigned long long)h->in_flight, (unsigned long long)h->prompt_tokens,
           (unsigned long long)h->generation_tokens);
#undef APPEND
    n += rt_hist_render(&h->ttft, buf + (n < cap ? n : cap), n < cap ? cap - n : 0);
    n += rt_hist_render(&h->tpot, buf + (n < cap ? n : cap), n < cap ? cap - n : 0);
    n += rt_hist_render(&h->e2e, buf + (n < cap ? n : cap), n < cap ? cap - n : 0);
    n += rt_core_metrics(h->core, buf + (n < cap ? n : cap), n < cap ? cap - n : 0);
    if (n >= cap) n = cap - 1;
    h->requests[EP_METRICS][code_slot(200)]--; /* respond() counts it */
    respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", buf, n, NULL);
    cm_free(buf);
}

/* Routes a complete request. */
static void dispatch(conn_t *c) {
    uv_timer_stop(&c->timer);
    const char *method = llhttp_method_name(llhttp_get_method(&c->parser));
    char path[256];
    size_t plen = c->url_len;
    const char *q = c->url ? memchr(c->url, '?', c->url_len) : NULL;
    if (q) plen = (size_t)(q - c->url);
    snprintf(path, sizeof path, "%.*s", (int)(plen < sizeof path ? plen : sizeof path - 1),
             c->url ? c->url : "");
    bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    struct {
        const char *path;
        int ep;
        bool post;
    } routes[] = {{"/v1/completions", EP_COMPLETIONS, true},
                  {"/v1/chat/completions", EP_CHAT, true},
                  {"/v1/models", EP_MODELS, false},
                  {"/health", EP_HEALTH, false},
                  {"/ready", EP_READY, false},
                  {"/metrics", EP_METRICS, false}};
    c->ep = EP_OTHER;
    int route = -1;
    for (int i = 0; i < (int)(sizeof routes / sizeof routes[0]); i++)
        if (!strcmp(path, routes[i].path)) route = i;
    if (route >= 0) c->ep = routes[route].ep;
    if (c->header_too_large) {
        c->keep_alive = false;
        respond_error(c, 431, "invalid_request_error", "Request headers are too large.", NULL, 0);
    } else if (c->too_large) {
        c->keep_alive = false;
        char msg[128];
        snprintf(msg, sizeof msg, "The request body exceeds %zu bytes.", c->h->cfg.max_body);
        respond_error(c, 413, "invalid_request_error", msg, NULL, 0);
    } else if (route < 0) {
        char msg[320];
        snprintf(msg, sizeof msg, "No route for %s %s.", method, path);
        respond_error(c, 404, "invalid_request_error", msg, NULL, 0);
    } else if ((routes[route].post && !post) || (!routes[route].post && !get)) {
        char msg[320];
        snprintf(msg, sizeof msg, "%s is not allowed on %s; use %s.", method, path,
                 routes[route].post ? "POST" : "GET");
        respond_error(c, 405, "invalid_request_error", msg, NULL, 0);
    } else if (c->ep == EP_COMPLETIONS || c->ep == EP_CHAT) {
        handle_generate(c, c->ep == EP_CHAT ? RT_OAI_CHAT : RT_OAI_COMPLETIONS);
        return;
    } else if (c->ep == EP_HEALTH) {
        respond(c, 200, "application/json", "{\"status\":\"ok\"}", 15, NULL);
    } else if (c->ep == EP_READY) {
        bool ready = rt_core_ready(c->h->core);
        if (ready)
            respond(c, 200, "application/json", "{\"status\":\"ready\"}", 18, NULL);
        else
            respond_error(c, 503, "service_unavailable", "No workers can serve yet.", NULL, 1);
    } else if (c->ep == EP_MODELS) {
        char *body = rt_oai_models_body(rt_core_model_name(c->h->core), c->h->started_wall_s,
                                        rt_core_max_context(c->h->core));
        respond(c, 200, "application/json", body ? body : "{}", body ? strlen(body) : 2, NULL);
        cm_free(body);
    } else {
        handle_metrics(c);
    }
    request_done(c);
}

/* ------------------------------------------------------------------------ */
/* llhttp callbacks                                                         */
/* ------------------------------------------------------------------------ */

static conn_t *conn_of(llhttp_t *p) { return p->data; }

static int cb_message_begin(llhttp_t *p) {
    conn_t *c = conn_of(p);
    reset_request(c);
    uv_timer_start(&c->timer, on_timer, c->h->cfg.read_timeout_ms, 0);
    return 0;
}

static bool count_header(conn_t *c, size_t n) {
    c->header_bytes += n;
    if (c->header_bytes > c->h->cfg.max_header) c->header_too_large = true;
    return !c->header_too_large;
}

static int cb_url(llhttp_t *p, const char *at, size_t len) {
    conn_t *c = conn_of(p);
    if (!count_header(c, len)) return 0;
    char *u = cm_realloc_array(c->url, c->url_len + len + 1, 1);
    if (!u) return -1;
    memcpy(u + c->url_len, at, len);
    c->url_len += len;
    u[c->url_len] = '\0';
    c->url = u;
    return 0;
}

static int cb_header_field(llhttp_t *p, const char *at, size_t len) {
    conn_t *c = conn_of(p);
    count_header(c, len);
    size_t room = sizeof c->field - 1 - c->field_len;
    size_t n = len < room ? len : room;
    memcpy(c->field + c->field_len, at, n);
    c->field_len += n;
    c->field[c->field_len] = '\0';
    return 0;
}

static int cb_header_field_complete(llhttp_t *p) {
    conn_t *c = conn_of(p);
    c->hdr = strcasecmp(c->field, "expect") == 0 ? 1 : 0;
    c->field_len = 0;
    return 0;
}

static int cb_header_value(llhttp_t *p, const char *at, size_t len) {
    conn_t *c = conn_of(p);
    count_header(c, len);
    if (c->hdr == 1 && len >= 12 && strncasecmp(at, "100-continue", 12) == 0)
        c->expect_continue = true;
    return 0;
}

static int cb_headers_complete(llhttp_t *p) {
    conn_t *c = conn_of(p);
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > c->h->cfg.max_body)
        c->too_large = true;
    if (c->expect_continue && !c->too_large && !c->header_too_large)
        send_bytes(c, "HTTP/1.1 100 Continue\r\n\r\n", 25, NULL, 0, false);
    return 0;
}

static int cb_body(llhttp_t *p, const char *at, size_t len) {
    conn_t *c = conn_of(p);
    if (c->too_large || c->header_too_large) return 0;
    if (c->body_len + len > c->h->cfg.max_body) {
        c->too_large = true;
        return 0;
    }
    if (c->body_len + len + 1 > c->body_cap) {
        size_t cap = c->body_cap ? c->body_cap * 2 : 4096;
        while (cap < c->body_len + len + 1) cap *= 2;
        char *b = cm_realloc_array(c->body, cap, 1);
        if (!b) return -1;
        c->body = b;
        c->body_cap = cap;
    }
    memcpy(c->body + c->body_len, at, len);
    c->body_len += len;
    c->body[c->body_len] = '\0';
    return 0;
}

static int cb_message_complete(llhttp_t *p) {
    conn_t *c = conn_of(p);
    c->keep_alive = llhttp_should_keep_alive(p);
    c->paused = true;
    /* Answer it before parsing what follows (pipelining keeps order). */
    return HPE_PAUSED;
}

/* Feeds bytes to the parser, stashing what follows a complete request. */
static void feed(conn_t *c, const char *data, size_t len) {
    while (len > 0 && !c->closing) {
        if (c->paused) {
            if (c->pending_len + len > PENDING_MAX) {
                conn_close(c);
                return;
            }
            char *p = cm_realloc_array(c->pending, c->pending_len + len, 1);
            if (!p) {
                conn_close(c);
                return;
            }
            memcpy(p + c->pending_len, data, len);
            c->pending = p;
            c->pending_len += len;
            return;
        }
        llhttp_errno_t e = llhttp_execute(&c->parser, data, len);
        if (e == HPE_OK) return;
        if (e == HPE_PAUSED) {
            const char *pos = llhttp_get_error_pos(&c->parser);
            size_t used = pos ? (size_t)(pos - data) : len;
            data += used;
            len -= used;
            dispatch(c); /* may answer at once and unpause */
            continue;
        }
        c->ep = EP_OTHER;
        c->keep_alive = false;
        char msg[200];
        snprintf(msg, sizeof msg, "Malformed HTTP request: %s.", llhttp_errno_name(e));
        respond_error(c, 400, "invalid_request_error", msg, NULL, 0);
        c->paused = true; /* parse nothing more on this connection */
        return;
    }
}

static void process_pending(conn_t *c) {
    if (!c->pending_len || c->paused || c->closing) return;
    char *p = c->pending;
    size_t n = c->pending_len;
    c->pending = NULL;
    c->pending_len = 0;
    feed(c, p, n);
    cm_free(p);
}

/* ------------------------------------------------------------------------ */
/* Connections                                                              */
/* ------------------------------------------------------------------------ */

static void on_conn_handle_closed(uv_handle_t *hd) {
    conn_t *c = hd->data;
    if (--c->open > 0) return;
    rt_http_t *h = c->h;
    cm_free(c->pending);
    cm_free(c);
    if (--h->open_handles == 0 && h->stopping) cm_free(h);
}

static void conn_close(conn_t *c) {
    if (c->closing) return;
    c->closing = true;
    if (c->req) {
        /* The client went away mid-request: free its blocks everywhere. */
        rt_core_cancel(c->req);
        c->req = NULL;
    }
    if (c->t_start) c->h->in_flight--;
    c->t_start = 0;
    reset_request(c);
    rt_http_t *h = c->h;
    if (c->prev)
        c->prev->next = c->next;
    else
        h->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
}

static void on_alloc(uv_handle_t *hd, size_t sz, uv_buf_t *b) {
    (void)hd;
    b->base = cm_malloc(sz);
    b->len = b->base ? sz : 0;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
    conn_t *c = s->data;
    if (n < 0)
        conn_close(c);
    else if (n > 0)
        feed(c, b->base, (size_t)n);
    cm_free(b->base);
}

static void on_connection(uv_stream_t *server, int status) {
    rt_http_t *h = server->data;
    if (status != 0 || h->stopping) return;
    conn_t *c = cm_calloc(1, sizeof *c);
    if (!c) return;
    c->h = h;
    uv_tcp_init(h->loop, &c->tcp);
    uv_timer_init(h->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->open = 2;
    h->open_handles++;
    c->next = h->conns;
    if (h->conns) h->conns->prev = c;
    h->conns = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1); /* SSE chunks must not wait for Nagle */
    llhttp_settings_init(&c->settings);
    c->settings.on_message_begin = cb_message_begin;
    c->settings.on_url = cb_url;
    c->settings.on_header_field = cb_header_field;
    c->settings.on_header_field_complete = cb_header_field_complete;
    c->settings.on_header_value = cb_header_value;
    c->settings.on_headers_complete = cb_headers_complete;
    c->settings.on_body = cb_body;
    c->settings.on_message_complete = cb_message_complete;
    llhttp_init(&c->parser, HTTP_REQUEST, &c->settings);
    c->parser.data = c;
    uv_timer_start(&c->timer, on_timer, h->cfg.idle_timeout_ms, 0);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void on_listener_closed(uv_handle_t *hd) {
    rt_http_t *h = hd->data;
    if (--h->open_handles == 0) cm_free(h);
}

cm_status_t rt_http_start(uv_loop_t *loop, rt_core_t *core, const char *host, int port,
                          const rt_http_config_t *cfg, rt_http_t **out) {
    struct sockaddr_storage addr;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0) {
        cm_log_error("http", "bad listen host '%s'", host);
        return CM_ERR_INVALID_ARG;
    }
    rt_http_t *h = cm_calloc(1, sizeof *h);
    if (!h) return CM_ERR_NO_MEMORY;
    h->loop = loop;
    h->core = core;
    h->cfg = *cfg;
    if (!h->cfg.max_body) h->cfg.max_body = 8u << 20;
    if (!h->cfg.max_header) h->cfg.max_header = 32u << 10;
    if (!h->cfg.idle_timeout_ms) h->cfg.idle_timeout_ms = 60000;
    if (!h->cfg.read_timeout_ms) h->cfg.read_timeout_ms = 30000;
    if (getrandom(&h->id_base, sizeof h->id_base, 0) != (ssize_t)sizeof h->id_base)
        h->id_base = cm_time_wall_ns();
    h->started_wall_s = cm_time_wall_ns() / 1000000000ull;
    rt_hist_init_latency(&h->ttft, "tandem_time_to_first_token_seconds",
                         "Time from request arrival to its first token.");
    rt_hist_init_latency(&h->tpot, "tandem_time_per_output_token_seconds",
                         "Time between tokens of a stream, per token.");
    rt_hist_init_latency(&h->e2e, "tandem_e2e_request_latency_seconds",
                         "Time from request arrival to its last token.");
    uv_tcp_init(loop, &h->listener);
    h->listener.data = h;
    h->open_handles = 1;
    int rc = uv_tcp_bind(&h->listener, (const struct sockaddr *)&addr, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&h->listener, 1024, on_connection);
    if (rc != 0) {
        cm_log_error("http", "listen on %s:%d: %s", host, port, uv_strerror(rc));
        h->stopping = true;
        uv_close((uv_handle_t *)&h->listener, on_listener_closed);
        return rc == UV_EADDRINUSE ? CM_ERR_EXISTS : CM_ERR_INVALID_ARG;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    uv_tcp_getsockname(&h->listener, (struct sockaddr *)&bound, &blen);
    h->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    cm_log_info("http", "OpenAI API listening on http://%s:%d", host, h->port);
    *out = h;
    return CM_OK;
}

int rt_http_port(const rt_http_t *h) { return h->port; }

void rt_http_stop(rt_http_t *h) {
    if (!h || h->stopping) return;
    h->stopping = true;
    while (h->conns) conn_close(h->conns);
    uv_close((uv_handle_t *)&h->listener, on_listener_closed);
}
