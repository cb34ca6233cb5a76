/* rt_grpc.c - gRPC (h2c) front end over the request core with nghttp2. */
#include "rt_grpc.h"

#include <math.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tandem_api.pb-c.h"

#define GRPC_MAX_BODY    (4u << 20)
#define GRPC_PATH_UNARY  "/tandem.api.v1.Generation/Generate"
#define GRPC_PATH_STREAM "/tandem.api.v1.Generation/GenerateStream"

enum {
    GRPC_OK = 0,
    GRPC_CANCELLED = 1,
    GRPC_INVALID_ARGUMENT = 3,
    GRPC_DEADLINE_EXCEEDED = 4,
    GRPC_NOT_FOUND = 5,
    GRPC_RESOURCE_EXHAUSTED = 8,
    GRPC_UNIMPLEMENTED = 12,
    GRPC_INTERNAL = 13,
    GRPC_UNAVAILABLE = 14,
};

typedef struct conn conn_t;

typedef struct stream {
    conn_t *conn;
    int32_t id;
    struct stream *next;
    char path[128];
    bool grpc_ct; /* content-type application/grpc* */
    uint64_t timeout_ms;
    uint8_t *body;
    size_t body_len;
    bool body_too_large;
    bool started; /* response headers submitted */
    bool streaming;
    rt_req_t *req; /* live request, or NULL */
    /* Outbound gRPC frames not yet taken by nghttp2. */
    uint8_t *out;
    size_t out_len, out_off, out_cap;
    bool done; /* trailers are due once out is drained */
    int status;
    char message[256];
    /* Unary accumulation. */
    char *text;
    size_t text_len;
    int32_t *ids;
    float *lps;
    size_t n_ids, cap_ids;
    bool want_logprobs;
} stream_t;

struct conn {
    rt_grpc_t *g;
    uv_tcp_t tcp;
    nghttp2_session *s;
    stream_t *streams;
    bool closing;
    conn_t *next;
};

struct rt_grpc {
    uv_loop_t *loop;
    rt_core_t *core;
    uv_tcp_t listener;
    int port;
    conn_t *conns;
    bool stopping;
    int open_handles;
};

int rt_grpc_status_from_http(int http_status) {
    switch (http_status) {
    case 400:
        return GRPC_INVALID_ARGUMENT;
    case 404:
        return GRPC_NOT_FOUND;
    case 413:
        return GRPC_RESOURCE_EXHAUSTED;
    case 429:
        return GRPC_RESOURCE_EXHAUSTED;
    case 503:
        return GRPC_UNAVAILABLE;
    case 504:
        return GRPC_DEADLINE_EXCEEDED;
    default:
        return GRPC_INTERNAL;
    }
}

/* ------------------------------------------------------------------------ */
/* Output                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct {
    uv_write_t req;
    uint8_t data[];
} wreq_t;

static void on_written(uv_write_t *w, int status) {
    (void)status;
    cm_free(w);
}

static void conn_close(conn_t *c);

/* Sends what nghttp2 has queued; closes the connection when it is over. */
static void conn_flush(conn_t *c) {
    if (c->closing) return;
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(c->s, &data);
        if (n < 0) {
            conn_close(c);
            return;
        }
        if (n == 0) break;
        wreq_t *w = cm_malloc(sizeof *w + (size_t)n);
        if (!w) {
            conn_close(c);
            return;
        }
        memcpy(w->data, data, (size_t)n);
        uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)n);
        if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0) {
            cm_free(w);
            conn_close(c);
            return;
        }
    }
    if (!nghttp2_session_want_read(c->s) && !nghttp2_session_want_write(c->s)) conn_close(c);
}

static bool out_append(stream_t *st, const uint8_t *msg, size_t len) {
    size_t need = st->out_len + 5 + len;
    if (need > st->out_cap) {
        size_t cap = st->out_cap ? st->out_cap * 2 : 1024;
        while (cap < need) cap *= 2;
        uint8_t *n = cm_realloc_array(st->out, cap, 1);
        if (!n) return false;
        st->out = n;
        st->out_cap = cap;
    }
    uint8_t *p = st->out + st->out_len;
    p[0] = 0; /* not compressed */
    p[1] = (uint8_t)(len >> 24);
    p[2] = (uint8_t)(len >> 16);
    p[3] = (uint8_t)(len >> 8);
    p[4] = (uint8_t)len;
    memcpy(p + 5, msg, len);
    st->out_len = need;
    return true;
}

/* Packs @m, with field 1 (`text`, a string in both GenerateChunk and
 * GenerateResponse) set to @text[0..text_len) when @text is not NULL. The
 * text is written here rather than by protobuf-c, whose strings end at the
 * first NUL, so a text holding U+0000 arrives whole; a parser takes a
 * message's fields in any order. */
static bool out_message(stream_t *st, const ProtobufCMessage *m, const char *text,
                        size_t text_len) {
    uint8_t head[1 + 10];
    size_t nhead = 0;
    if (text) {
        head[nhead++] = 1 << 3 | 2; /* field 1, length-delimited */
        for (uint64_t v = text_len;; v >>= 7) {
            head[nhead++] = (uint8_t)(v & 0x7f) | (v > 0x7f ? 0x80 : 0);
            if (v <= 0x7f) break;
        }
    }
    size_t body = protobuf_c_message_get_packed_size(m);
    size_t len = nhead + (text ? text_len : 0) + body;
    uint8_t *buf = cm_malloc(len ? len : 1);
    if (!buf) return false;
    memcpy(buf, head, nhead);
    if (text) memcpy(buf + nhead, text, text_len);
    protobuf_c_message_pack(m, buf + len - body);
    bool ok = out_append(st, buf, len);
    cm_free(buf);
    return ok;
}

/* grpc-message is percent-encoded (gRPC over HTTP/2 spec). */
static void percent_encode(const char *in, char *out, size_t cap) {
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p && n + 4 < cap; p++) {
        if (*p >= 0x20 && *p <= 0x7e && *p != '%')
            out[n++] = (char)*p;
        else
            n += (size_t)snprintf(out + n, cap - n, "%%%02X", *p);
    }
    out[n] = '\0';
}

#define NV(name, value) \
    { (uint8_t *)(name), (uint8_t *)(value), sizeof(name) - 1, strlen(value), NGHTTP2_NV_FLAG_NONE }

static void submit_trailers(stream_t *st) {
    char code[16], msg[768];
    snprintf(code, sizeof code, "%d", st->status);
    percent_encode(st->message, msg, sizeof msg);
    nghttp2_nv nv[2] = {NV("grpc-status", code), NV("grpc-message", msg)};
    nghttp2_submit_trailer(st->conn->s, st->id, nv, st->message[0] ? 2 : 1);
}

static ssize_t read_out(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                        nghttp2_data_source *src, void *ud) {
    (void)s;
    (void)id;
    (void)ud;
    stream_t *st = src->ptr;
    size_t avail = st->out_len - st->out_off;
    if (avail == 0) {
        if (!st->done) return NGHTTP2_ERR_DEFERRED;
        *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
        submit_trailers(st);
        return 0;
    }
    size_t n = avail < len ? avail : len;
    memcpy(buf, st->out + st->out_off, n);
    st->out_off += n;
    if (st->out_off == st->out_len) st->out_off = st->out_len = 0;
    return (ssize_t)n;
}

/* Response headers with a deferred data provider: frames follow as the
 * request produces them, then trailers. */
static void start_response(stream_t *st) {
    nghttp2_nv nv[2] = {NV(":status", "200"), NV("content-type", "application/grpc")};
    nghttp2_data_provider dp = {.source.ptr = st, .read_callback = read_out};
    nghttp2_submit_response(st->conn->s, st->id, nv, 2, &dp);
    st->started = true;
}

/* An error before any response: a trailers-only response. */
static void respond_error(stream_t *st, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void respond_error(stream_t *st, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(st->message, sizeof st->message, fmt, ap);
    va_end(ap);
    st->status = status;
    st->done = true;
    char code[16], msg[768];
    snprintf(code, sizeof code, "%d", status);
    percent_encode(st->message, msg, sizeof msg);
    nghttp2_nv nv[4] = {NV(":status", "200"), NV("content-type", "application/grpc"),
                        NV("grpc-status", code), NV("grpc-message", msg)};
    nghttp2_submit_response(st->conn->s, st->id, nv, 4, NULL);
    st->started = true;
}

static void finish(stream_t *st, int status, const char *message) {
    st->done = true;
    st->status = status;
    snprintf(st->message, sizeof st->message, "%s", message ? message : "");
    st->req = NULL;
    nghttp2_session_resume_data(st->conn->s, st->id);
    conn_flush(st->conn);
}

/* ------------------------------------------------------------------------ */
/* Request callbacks from the core                                          */
/* ------------------------------------------------------------------------ */

static void on_delta(void *ud, const rt_delta_t *d) {
    stream_t *st = ud;
    if (st->streaming) {
        Tandem__Api__V1__GenerateChunk ch = TANDEM__API__V1__GENERATE_CHUNK__INIT;
        ch.n_token_ids = d->n;
        ch.token_ids = (int32_t *)d->ids;
        if (d->logprobs) {
            ch.n_logprobs = d->n;
            ch.logprobs = (float *)d->logprobs;
        }
        Tandem__Api__V1__TokenLogprob *tl = NULL, **tlp = NULL;
        size_t ntop = d->top ? d->n * d->top_per_token : 0;
        if (ntop) {
            tl = cm_calloc(ntop, sizeof *tl);
            tlp = cm_calloc(ntop, sizeof *tlp);
            for (size_t i = 0; tl && tlp && i < ntop; i++) {
                tandem__api__v1__token_logprob__init(&tl[i]);
                tl[i].has_token_id = tl[i].has_logprob = 1;
                tl[i].token_id = d->top[i].token_id;
                tl[i].logprob = d->top[i].logprob;
                tlp[i] = &tl[i];
            }
            if (tl && tlp) {
                ch.n_top_logprobs = ntop;
                ch.top_logprobs = tlp;
            }
        }
        bool ok = out_message(st, &ch.base, d->text ? d->text : "", d->text_len);
        cm_free(tl);
        cm_free(tlp);
        if (!ok) return;
        nghttp2_session_resume_data(st->conn->s, st->id);
        conn_flush(st->conn);
        return;
    }
    /* Unary: accumulate. */
    char *t = cm_realloc_array(st->text, st->text_len + d->text_len + 1, 1);
    if (t) {
        memcpy(t + st->text_len, d->text, d->text_len);
        st->text_len += d->text_len;
        t[st->text_len] = '\0';
        st->text = t;
    }
    if (st->n_ids + d->n > st->cap_ids) {
        size_t cap = (st->cap_ids ? st->cap_ids * 2 : 64) + d->n;
        int32_t *ni = cm_realloc_array(st->ids, cap, sizeof *ni);
        if (ni) st->ids = ni;
        float *nl = cm_realloc_array(st->lps, cap, sizeof *nl);
        if (nl) st->lps = nl;
        if (!ni || !nl) return;
        st->cap_ids = cap;
    }
    for (size_t i = 0; i < d->n; i++) {
        st->ids[st->n_ids] = d->ids[i];
        st->lps[st->n_ids] = d->logprobs ? d->logprobs[i] : 0.0f;
        st->n_ids++;
    }
}

static void on_done(void *ud, rt_finish_t why, uint32_t prompt, uint32_t completion) {
    stream_t *st = ud;
    Tandem__Api__V1__Usage usage = TANDEM__API__V1__USAGE__INIT;
    usage.has_prompt_tokens = usage.has_completion_tokens = 1;
    usage.prompt_tokens = prompt;
    usage.completion_tokens = completion;
    Tandem__Api__V1__FinishReason fr = why == RT_FINISH_STOP
                                           ? TANDEM__API__V1__FINISH_REASON__FINISH_REASON_STOP
                                           : TANDEM__API__V1__FINISH_REASON__FINISH_REASON_LENGTH;
    if (st->streaming) {
        Tandem__Api__V1__GenerateChunk ch = TANDEM__API__V1__GENERATE_CHUNK__INIT;
        ch.has_finish_reason = 1;
        ch.finish_reason = fr;
        ch.usage = &usage;
        out_message(st, &ch.base, NULL, 0);
    } else {
        Tandem__Api__V1__GenerateResponse r = TANDEM__API__V1__GENERATE_RESPONSE__INIT;
        r.n_token_ids = st->n_ids;
        r.token_ids = st->ids;
        if (st->want_logprobs) {
            r.n_logprobs = st->n_ids;
            r.logprobs = st->lps;
        }
        r.has_finish_reason = 1;
        r.finish_reason = fr;
        r.usage = &usage;
        out_message(st, &r.base, st->text ? st->text : "", st->text_len);
    }
    finish(st, GRPC_OK, NULL);
}

static void on_error(void *ud, int http_status, const char *type, const char *message) {
    (void)type;
    finish(ud, rt_grpc_status_from_http(http_status), message);
}

static const rt_req_cb_t k_req_cb = {on_delta, on_done, on_error};

/* ------------------------------------------------------------------------ */
/* Requests                                                                 */
/* ------------------------------------------------------------------------ */

/* Reads a varint at *@p (before @end); false when it runs past @end or
 * beyond 10 bytes. */
static bool wire_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    *v = 0;
    for (int shift = 0; *p < end && shift < 70; shift += 7) {
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return true;
    }
    return false;
}

/* True when a string field of the message @d packed in @p[0..n), or of a
 * message inside it, holds a NUL byte (U+0000). protobuf-c gives strings as
 * C strings, so one would be cut there without a word; such requests are
 * refused instead. Reads the wire format itself; malformed input (which
 * unpack has already refused) reads as false. */
static bool wire_has_nul(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t n,
                         int depth) {
    const uint8_t *end = p + n;
    while (p < end && depth < 8) {
        uint64_t key, len;
        if (!wire_varint(&p, end, &key)) return false;
        switch (key & 7) {
        case 0:
            if (!wire_varint(&p, end, &len)) return false;
            break;
        case 1:
        case 5: {
            size_t w = (key & 7) == 1 ? 8 : 4;
            if ((size_t)(end - p) < w) return false;
            p += w;
            break;
        }
        case 2: {
            if (!wire_varint(&p, end, &len) || len > (uint64_t)(end - p)) return false;
            const ProtobufCFieldDescriptor *f =
                key >> 3 <= UINT32_MAX
                    ? protobuf_c_message_descriptor_get_field(d, (unsigned)(key >> 3))
                    : NULL;
            if (f && f->type == PROTOBUF_C_TYPE_STRING && memchr(p, 0, (size_t)len)) return true;
            if (f && f->type == PROTOBUF_C_TYPE_MESSAGE &&
                wire_has_nul(f->descriptor, p, (size_t)len, depth + 1))
                return true;
            p += len;
            break;
        }
        default:
            return false;
        }
    }
    return false;
}

/* Checks the sampling fields the core takes as validated. Returns NULL or
 * a reason naming the field. */
static const char *check_sampling(const Tandem__Api__V1__SamplingParams *s, char *why, size_t cap) {
    if (!s) return NULL;
#define BAD(...) (snprintf(why, cap, __VA_ARGS__), why)
    if (s->has_temperature &&
        !(isfinite(s->temperature) && s->temperature >= 0 && s->temperature <= 2))
        return BAD("sampling.temperature must be in [0, 2]");
    if (s->has_top_p && !(isfinite(s->top_p) && s->top_p > 0 && s->top_p <= 1))
        return BAD("sampling.top_p must be in (0, 1]");
    if (s->has_top_k && !(s->top_k == -1 || s->top_k >= 1))
        return BAD("sampling.top_k must be -1 (off) or >= 1");
    if (s->has_min_p && !(isfinite(s->min_p) && s->min_p >= 0 && s->min_p <= 1))
        return BAD("sampling.min_p must be in [0, 1]");
    if (s->has_repetition_penalty && !(isfinite(s->repetition_penalty) &&
                                       s->repetition_penalty > 0 && s->repetition_penalty <= 10))
        return BAD("sampling.repetition_penalty must be in (0, 10]");
    if (s->has_presence_penalty &&
        !(isfinite(s->presence_penalty) && fabsf(s->presence_penalty) <= 2))
        return BAD("sampling.presence_penalty must be in [-2, 2]");
    if (s->has_frequency_penalty &&
        !(isfinite(s->frequency_penalty) && fabsf(s->frequency_penalty) <= 2))
        return BAD("sampling.frequency_penalty must be in [-2, 2]");
    if (s->has_top_logprobs && s->top_logprobs > 20)
        return BAD("sampling.top_logprobs must be at most 20");
    if (s->n_stop > 16) return BAD("sampling.stop: at most 16 strings");
    for (size_t i = 0; i < s->n_stop; i++)
        if (!s->stop[i][0] || strlen(s->stop[i]) > 256)
            return BAD("sampling.stop[%zu] must be 1..256 bytes", i);
    if (s->n_stop_token_ids > 64) return BAD("sampling.stop_token_ids: at most 64");
    for (size_t i = 0; i < s->n_stop_token_ids; i++)
        if (s->stop_token_ids[i] < 0) return BAD("sampling.stop_token_ids[%zu] is negative", i);
#undef BAD
    return NULL;
}

static void handle_request(stream_t *st) {
    bool unary = strcmp(st->path, GRPC_PATH_UNARY) == 0;
    bool streaming = strcmp(st->path, GRPC_PATH_STREAM) == 0;
    if (!unary && !streaming) {
        respond_error(st, GRPC_UNIMPLEMENTED, "unknown method %s", st->path);
        return;
    }
    if (!st->grpc_ct) {
        respond_error(st, GRPC_INVALID_ARGUMENT, "content-type must be application/grpc");
        return;
    }
    if (st->body_too_large) {
        respond_error(st, GRPC_RESOURCE_EXHAUSTED, "request larger than %u bytes", GRPC_MAX_BODY);
        return;
    }
    if (st->body_len < 5) {
        respond_error(st, GRPC_INVALID_ARGUMENT, "missing request message");
        return;
    }
    if (st->body[0] != 0) {
        respond_error(st, GRPC_UNIMPLEMENTED, "compressed messages are not supported");
        return;
    }
    size_t mlen = ((size_t)st->body[1] << 24) | ((size_t)st->body[2] << 16) |
                  ((size_t)st->body[3] << 8) | st->body[4];
    if (mlen != st->body_len - 5) {
        respond_error(st, GRPC_INVALID_ARGUMENT, "expected exactly one request message");
        return;
    }
    Tandem__Api__V1__GenerateRequest *rq =
        tandem__api__v1__generate_request__unpack(NULL, mlen, st->body + 5);
    if (!rq) {
        respond_error(st, GRPC_INVALID_ARGUMENT, "request is not a valid GenerateRequest");
        return;
    }
    char why[256];
    const char *bad = NULL;
    if (wire_has_nul(&tandem__api__v1__generate_request__descriptor, st->body + 5, mlen, 0)) {
        respond_error(st, GRPC_INVALID_ARGUMENT, "strings holding U+0000 are not supported");
        tandem__api__v1__generate_request__free_unpacked(rq, NULL);
        return;
    }
    int inputs = (rq->prompt != NULL) + (rq->n_prompt_ids > 0) + (rq->n_messages > 0);
    if (!rq->model || !rq->model[0])
        bad = "model is required";
    else if (inputs != 1)
        bad = "exactly one of prompt, prompt_ids or messages is required";
    else if ((bad = check_sampling(rq->sampling, why, sizeof why)))
        ;
    else if ((rq->prompt && !cm_utf8_valid(rq->prompt, strlen(rq->prompt))) ||
             (rq->model && !cm_utf8_valid(rq->model, strlen(rq->model))))
        bad = "strings must be valid UTF-8";
    rt_chat_msg_t *msgs = NULL;
    if (!bad && rq->n_messages) {
        msgs = cm_calloc(rq->n_messages, sizeof *msgs);
        for (size_t i = 0; msgs && i < rq->n_messages && !bad; i++) {
            const char *role = rq->messages[i]->role ? rq->messages[i]->role : "";
            if (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant")) {
                snprintf(why, sizeof why, "messages[%zu].role must be system, user or assistant",
                         i);
                bad = why;
            }
            msgs[i].role = role;
            msgs[i].content = rq->messages[i]->content ? rq->messages[i]->content : "";
        }
    }
    if (bad) {
        respond_error(st, GRPC_INVALID_ARGUMENT, "%s", bad);
        cm_free(msgs);
        tandem__api__v1__generate_request__free_unpacked(rq, NULL);
        return;
    }
    const Tandem__Api__V1__SamplingParams *s = rq->sampling;
    rt_gen_request_t g = {.model = rq->model,
                          .chat = rq->n_messages > 0,
                          .prompt = rq->prompt,
                          .prompt_len = rq->prompt ? strlen(rq->prompt) : 0,
                          .prompt_ids = rq->n_prompt_ids ? rq->prompt_ids : NULL,
                          .n_prompt_ids = rq->n_prompt_ids,
                          .messages = msgs,
                          .n_messages = rq->n_messages,
                          .deadline_ms =
                              st->timeout_ms > 3600000 ? 3600000 : (uint32_t)st->timeout_ms};
    g.sampling.temperature = s && s->has_temperature ? s->temperature : 1.0f;
    g.sampling.top_p = s && s->has_top_p ? s->top_p : 1.0f;
    g.sampling.top_k = s && s->has_top_k ? s->top_k : -1;
    g.sampling.min_p = s && s->has_min_p ? s->min_p : 0.0f;
    g.sampling.repetition_penalty = s && s->has_repetition_penalty ? s->repetition_penalty : 1.0f;
    g.sampling.presence_penalty = s && s->has_presence_penalty ? s->presence_penalty : 0.0f;
    g.sampling.frequency_penalty = s && s->has_frequency_penalty ? s->frequency_penalty : 0.0f;
    g.sampling.has_seed = s && s->has_seed;
    g.sampling.seed = s && s->has_seed ? s->seed : 0;
    g.sampling.max_tokens = s && s->has_max_tokens ? s->max_tokens : 0;
    g.sampling.stop = s ? (const char *const *)s->stop : NULL;
    g.sampling.n_stop = s ? s->n_stop : 0;
    g.sampling.stop_token_ids = s ? s->stop_token_ids : NULL;
    g.sampling.n_stop_token_ids = s ? s->n_stop_token_ids : 0;
    g.sampling.logprobs = s && s->has_logprobs && s->logprobs;
    g.sampling.top_logprobs = s && s->has_top_logprobs ? s->top_logprobs : 0;
    g.sampling.ignore_eos = s && s->has_ignore_eos && s->ignore_eos;
    st->streaming = streaming;
    st->want_logprobs = g.sampling.logprobs;
    rt_error_t err;
    cm_status_t rc = rt_core_submit(st->conn->g->core, &g, &k_req_cb, st, &st->req, &err);
    cm_free(msgs);
    tandem__api__v1__generate_request__free_unpacked(rq, NULL);
    if (rc != CM_OK) {
        st->req = NULL;
        respond_error(st, rt_grpc_status_from_http(err.http_status), "%s", err.message);
        return;
    }
    start_response(st);
}

/* ------------------------------------------------------------------------ */
/* nghttp2 callbacks                                                        */
/* ------------------------------------------------------------------------ */

static void stream_free(stream_t *st) {
    if (st->req) rt_core_cancel(st->req);
    cm_free(st->body);
    cm_free(st->out);
    cm_free(st->text);
    cm_free(st->ids);
    cm_free(st->lps);
    cm_free(st);
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
    conn_t *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    stream_t *st = cm_calloc(1, sizeof *st);
    if (!st) return NGHTTP2_ERR_CALLBACK_FAILURE;
    st->conn = c;
    st->id = f->hd.stream_id;
    st->next = c->streams;
    c->streams = st;
    nghttp2_session_set_stream_user_data(s, st->id, st);
    return 0;
}

/* grpc-timeout: up to 8 digits and a unit (H, M, S, m, u, n). */
static uint64_t parse_timeout_ms(const uint8_t *v, size_t len) {
    if (len < 2 || len > 9) return 0;
    uint64_t n = 0;
    for (size_t i = 0; i + 1 < len; i++) {
        if (v[i] < '0' || v[i] > '9') return 0;
        n = n * 10 + (uint64_t)(v[i] - '0');
    }
    switch (v[len - 1]) {
    case 'H':
        return n * 3600000;
    case 'M':
        return n * 60000;
    case 'S':
        return n * 1000;
    case 'm':
        return n;
    case 'u':
        return (n + 999) / 1000;
    case 'n':
        return (n + 999999) / 1000000;
    default:
        return 0;
    }
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *ud) {
    (void)flags;
    (void)ud;
    stream_t *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (!st) return 0;
    if (namelen == 5 && memcmp(name, ":path", 5) == 0)
        snprintf(st->path, sizeof st->path, "%.*s", (int)valuelen, value);
    else if (namelen == 12 && memcmp(name, "content-type", 12) == 0)
        st->grpc_ct = valuelen >= 16 && memcmp(value, "application/grpc", 16) == 0;
    else if (namelen == 12 && memcmp(name, "grpc-timeout", 12) == 0)
        st->timeout_ms = parse_timeout_ms(value, valuelen);
    return 0;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud) {
    (void)flags;
    (void)ud;
    stream_t *st = nghttp2_session_get_stream_user_data(s, id);
    if (!st || st->body_too_large) return 0;
    if (st->body_len + len > GRPC_MAX_BODY + 5) {
        st->body_too_large = true;
        return 0;
    }
    uint8_t *b = cm_realloc_array(st->body, st->body_len + len, 1);
    if (!b) return NGHTTP2_ERR_CALLBACK_FAILURE;
    memcpy(b + st->body_len, data, len);
    st->body = b;
    st->body_len += len;
    return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
    (void)ud;
    if ((f->hd.type == NGHTTP2_DATA || f->hd.type == NGHTTP2_HEADERS) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        stream_t *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
        if (st && !st->started) handle_request(st);
    }
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud) {
    (void)code;
    conn_t *c = ud;
    stream_t *st = nghttp2_session_get_stream_user_data(s, id);
    if (!st) return 0;
    for (stream_t **pp = &c->streams; *pp; pp = &(*pp)->next) {
        if (*pp == st) {
            *pp = st->next;
            break;
        }
    }
    stream_free(st); /* cancels a request the client abandoned */
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Connections                                                              */
/* ------------------------------------------------------------------------ */

static void on_conn_closed(uv_handle_t *h) {
    conn_t *c = h->data;
    rt_grpc_t *g = c->g;
    cm_free(c);
    if (--g->open_handles == 0 && g->stopping) cm_free(g);
}

static void conn_close(conn_t *c) {
    if (c->closing) return;
    c->closing = true;
    while (c->streams) {
        stream_t *st = c->streams;
        c->streams = st->next;
        stream_free(st);
    }
    nghttp2_session_del(c->s);
    c->s = NULL;
    rt_grpc_t *g = c->g;
    for (conn_t **pp = &g->conns; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void on_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
    (void)h;
    b->base = cm_malloc(sz);
    b->len = b->base ? sz : 0;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
    conn_t *c = s->data;
    if (n < 0) {
        conn_close(c);
    } else if (n > 0 && !c->closing) {
        ssize_t r = nghttp2_session_mem_recv(c->s, (const uint8_t *)b->base, (size_t)n);
        if (r < 0) {
            cm_log_warn("grpc", "bad HTTP/2 input: %s", nghttp2_strerror((int)r));
            conn_close(c);
        } else {
            conn_flush(c);
        }
    }
    cm_free(b->base);
}

static void on_connection(uv_stream_t *server, int status) {
    rt_grpc_t *g = server->data;
    if (status != 0 || g->stopping) return;
    conn_t *c = cm_calloc(1, sizeof *c);
    if (!c) return;
    c->g = g;
    uv_tcp_init(g->loop, &c->tcp);
    c->tcp.data = c;
    g->open_handles++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    nghttp2_session_callbacks *cbs;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    int rc = nghttp2_session_server_new(&c->s, cbs, c);
    nghttp2_session_callbacks_del(cbs);
    if (rc != 0) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
        return;
    }
    nghttp2_settings_entry iv[1] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1000}};
    nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, iv, 1);
    c->next = g->conns;
    g->conns = c;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    conn_flush(c);
}

static void on_listener_closed(uv_handle_t *h);

cm_status_t rt_grpc_start(uv_loop_t *loop, rt_core_t *core, const char *host, int port,
                          rt_grpc_t **out) {
    struct sockaddr_storage addr;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0) {
        cm_log_error("grpc", "bad listen host '%s'", host);
        return CM_ERR_INVALID_ARG;
    }
    rt_grpc_t *g = cm_calloc(1, sizeof *g);
    if (!g) return CM_ERR_NO_MEMORY;
    g->loop = loop;
    g->core = core;
    uv_tcp_init(loop, &g->listener);
    g->listener.data = g;
    g->open_handles = 1;
    int rc = uv_tcp_bind(&g->listener, (const struct sockaddr *)&addr, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&g->listener, 512, on_connection);
    if (rc != 0) {
        cm_log_error("grpc", "listen on %s:%d: %s", host, port, uv_strerror(rc));
        g->stopping = true;
        uv_close((uv_handle_t *)&g->listener, on_listener_closed);
        return rc == UV_EADDRINUSE ? CM_ERR_EXISTS : CM_ERR_INVALID_ARG;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    uv_tcp_getsockname(&g->listener, (struct sockaddr *)&bound, &blen);
    g->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    cm_log_info("grpc", "gRPC API listening on %s:%d", host, g->port);
    *out = g;
    return CM_OK;
}

int rt_grpc_port(const rt_grpc_t *g) { return g->port; }

static void on_listener_closed(uv_handle_t *h) {
    rt_grpc_t *g = h->data;
    if (--g->open_handles == 0) cm_free(g);
}

void rt_grpc_stop(rt_grpc_t *g) {
    if (!g || g->stopping) return;
    g->stopping = true;
    while (g->conns) conn_close(g->conns);
    uv_close((uv_handle_t *)&g->listener, on_listener_closed);
}
