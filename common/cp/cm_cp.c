/* cm_cp.c - control-plane codec: bounded decoding and field validation. */
#include "cm_cp.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Absolute maxima, whatever the limits say. */
#define CP_MAX_ID              (1u << 24)
#define CP_MAX_STRING          4096u
#define CP_MAX_NAME            128u
#define CP_MAX_WORKER_ID       64u
#define CP_MAX_DESCRIPTOR      (64u * 1024u)
#define CP_MAX_STOP_STRINGS    16u
#define CP_MAX_STOP_STRING_LEN 256u
#define CP_MAX_STOP_IDS        64u
#define CP_MAX_TOP_LOGPROBS    20u
#define CP_MAX_STREAM_TOKENS   4096u
#define CP_MAX_DEADLINE_MS     3600000u

void cm_cp_limits_default(cm_cp_limits_t *lim) {
    lim->max_msg_bytes = 8u << 20;
    lim->arena_bytes = 64u << 20;
    lim->max_tokens = 1u << 20;
    lim->max_blocks = 1u << 16;
    lim->vocab_size = 0;
    lim->pool_blocks = 0;
}

/* ------------------------------------------------------------------------ */
/* Decoder: protobuf-c unpacking into a capped arena.                      */
/* ------------------------------------------------------------------------ */

struct cm_cp_decoder {
    cm_cp_limits_t lim;
    cm_arena_t *arena;
    bool exhausted; /* the arena refused an allocation during this decode */
    ProtobufCAllocator alloc;
    cm_cp_msg_t *msg;
};

static void *cp_alloc(void *data, size_t size) {
    cm_cp_decoder_t *d = data;
    void *p = cm_arena_alloc(d->arena, size);
    if (!p) d->exhausted = true;
    return p;
}

static void cp_free(void *data, void *p) {
    (void)data;
    (void)p; /* the arena is reset as a whole */
}

cm_cp_decoder_t *cm_cp_decoder_new(const cm_cp_limits_t *lim) {
    cm_cp_decoder_t *d = cm_calloc(1, sizeof *d);
    if (!d) return NULL;
    d->lim = *lim;
    d->arena = cm_arena_new(lim->arena_bytes);
    if (!d->arena) {
        cm_free(d);
        return NULL;
    }
    d->alloc.alloc = cp_alloc;
    d->alloc.free = cp_free;
    d->alloc.allocator_data = d;
    return d;
}

void cm_cp_decoder_free(cm_cp_decoder_t *dec) {
    if (!dec) return;
    cm_arena_free(dec->arena);
    cm_free(dec);
}

cm_status_t cm_cp_decode(cm_cp_decoder_t *dec, const void *buf, size_t len, const cm_cp_msg_t **out,
                         char *err, size_t errlen) {
    char scratch[8];
    if (!err || errlen == 0) {
        err = scratch;
        errlen = sizeof scratch;
    }
    err[0] = '\0';
    if (len > dec->lim.max_msg_bytes) {
        snprintf(err, errlen, "message of %zu bytes exceeds the limit of %zu", len,
                 dec->lim.max_msg_bytes);
        return CM_ERR_TOO_LARGE;
    }
    if (!buf && len > 0) {
        snprintf(err, errlen, "no buffer");
        return CM_ERR_INVALID_ARG;
    }
    cm_arena_reset(dec->arena);
    dec->msg = NULL;
    dec->exhausted = false;
    cm_cp_msg_t *m = tandem__cp__envelope__unpack(&dec->alloc, len, buf);
    if (!m) {
        if (dec->exhausted) {
            snprintf(err, errlen, "decoding needs more than %zu bytes of memory",
                     dec->lim.arena_bytes);
            return CM_ERR_TOO_LARGE;
        }
        snprintf(err, errlen, "not a valid Envelope encoding (%zu bytes)", len);
        return CM_ERR_PROTOCOL;
    }
    cm_status_t st = cm_cp_validate(m, &dec->lim, err, errlen);
    if (st != CM_OK) {
        cm_arena_reset(dec->arena);
        return st;
    }
    dec->msg = m;
    *out = m;
    return CM_OK;
}

/* ------------------------------------------------------------------------ */
/* Validation                                                               */
/* ------------------------------------------------------------------------ */

typedef struct {
    const cm_cp_limits_t *lim;
    char *err;
    size_t errlen;
    const char *where; /* message name for error text */
} vctx_t;

#define FAIL(code, ...)                                                 \
    do {                                                                \
        int n_ = snprintf(v->err, v->errlen, "%s.", v->where);          \
        if (n_ >= 0 && (size_t)n_ < v->errlen)                          \
            snprintf(v->err + n_, v->errlen - (size_t)n_, __VA_ARGS__); \
        return (code);                                                  \
    } while (0)

#define RANGE(cond, ...)                                     \
    do {                                                     \
        if (!(cond)) FAIL(CM_ERR_OUT_OF_RANGE, __VA_ARGS__); \
    } while (0)

static cm_status_t check_string(vctx_t *v, const char *field, const char *s, size_t min,
                                size_t max) {
    if (!s) FAIL(CM_ERR_PROTOCOL, "%s: missing", field);
    size_t n = strnlen(s, max + 1);
    RANGE(n >= min && n <= max, "%s: length %zu%s not in [%zu, %zu]", field, n, n > max ? "+" : "",
          min, max);
    if (!cm_utf8_valid(s, n)) FAIL(CM_ERR_INVALID_ARG, "%s: not valid UTF-8", field);
    return CM_OK;
}

static cm_status_t check_worker_id(vctx_t *v, const char *field, const char *s, bool allow_empty) {
    cm_status_t st = check_string(v, field, s, allow_empty ? 0 : 1, CP_MAX_WORKER_ID);
    if (st != CM_OK) return st;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == ':' || c == '-';
        if (!ok)
            FAIL(CM_ERR_INVALID_ARG, "%s: character 0x%02x not allowed", field, (unsigned char)c);
    }
    return CM_OK;
}

static uint32_t vocab_max(const cm_cp_limits_t *l) {
    return l->vocab_size ? l->vocab_size : CP_MAX_ID;
}

static uint32_t pool_max(const cm_cp_limits_t *l) {
    return l->pool_blocks ? l->pool_blocks : CP_MAX_ID;
}

static cm_status_t check_tokens(vctx_t *v, const char *field, size_t n, const int32_t *ids,
                                size_t min, size_t max) {
    RANGE(n >= min && n <= max, "%s: %zu tokens not in [%zu, %zu]", field, n, min, max);
    uint32_t vmax = vocab_max(v->lim);
    for (size_t i = 0; i < n; i++)
        RANGE(ids[i] >= 0 && (uint32_t)ids[i] < vmax, "%s[%zu]: token id %d not in [0, %u)", field,
              i, ids[i], vmax);
    return CM_OK;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Block ids: count in [min, max_blocks], each < pool size, all distinct. */
static cm_status_t check_blocks(vctx_t *v, const char *field, size_t n, const uint32_t *ids,
                                size_t min) {
    RANGE(n >= min && n <= v->lim->max_blocks, "%s: %zu blocks not in [%zu, %u]", field, n, min,
          v->lim->max_blocks);
    uint32_t pmax = pool_max(v->lim);
    for (size_t i = 0; i < n; i++)
        RANGE(ids[i] < pmax, "%s[%zu]: block id %u >= pool size %u", field, i, ids[i], pmax);
    if (n > 1) {
        uint32_t *copy = cm_malloc_array(n, sizeof *copy);
        if (!copy) FAIL(CM_ERR_NO_MEMORY, "%s: out of memory", field);
        memcpy(copy, ids, n * sizeof *copy);
        qsort(copy, n, sizeof *copy, cmp_u32);
        for (size_t i = 1; i < n; i++) {
            if (copy[i] == copy[i - 1]) {
                uint32_t dup = copy[i];
                cm_free(copy);
                FAIL(CM_ERR_INVALID_ARG, "%s: block id %u appears twice", field, dup);
            }
        }
        cm_free(copy);
    }
    return CM_OK;
}

static cm_status_t check_float(vctx_t *v, const char *field, float x, float lo, float hi) {
    RANGE(isfinite(x) && x >= lo && x <= hi, "%s: %g not in [%g, %g]", field, (double)x, (double)lo,
          (double)hi);
    return CM_OK;
}

static cm_status_t check_top_logprobs(vctx_t *v, const char *field, size_t n,
                                      Tandem__Cp__TopLogprob *const *tl, size_t max) {
    RANGE(n <= max, "%s: %zu entries, at most %zu", field, n, max);
    uint32_t vmax = vocab_max(v->lim);
    for (size_t i = 0; i < n; i++) {
        if (!tl[i]) FAIL(CM_ERR_PROTOCOL, "%s[%zu]: missing", field, i);
        RANGE(tl[i]->token_id >= 0 && (uint32_t)tl[i]->token_id < vmax,
              "%s[%zu].token_id: %d not in [0, %u)", field, i, tl[i]->token_id, vmax);
        RANGE(!isnan(tl[i]->logprob) && tl[i]->logprob <= 0.0f,
              "%s[%zu].logprob: %g is not a log-probability", field, i, (double)tl[i]->logprob);
    }
    return CM_OK;
}

#define TRY(expr)                     \
    do {                              \
        cm_status_t st_ = (expr);     \
        if (st_ != CM_OK) return st_; \
    } while (0)

static cm_status_t check_sampling(vctx_t *v, const Tandem__Cp__SamplingParams *s) {
    if (!s) FAIL(CM_ERR_INVALID_ARG, "sampling: missing");
    TRY(check_float(v, "sampling.temperature", s->temperature, 0.0f, 100.0f));
    TRY(check_float(v, "sampling.top_p", s->top_p, 0.0f, 1.0f));
    RANGE(s->top_k >= -1 && (uint32_t)(s->top_k < 0 ? 0 : s->top_k) <= vocab_max(v->lim),
          "sampling.top_k: %d not -1, 0 or in [1, %u]", s->top_k, vocab_max(v->lim));
    TRY(check_float(v, "sampling.min_p", s->min_p, 0.0f, 1.0f));
    TRY(check_float(v, "sampling.repetition_penalty", s->repetition_penalty, 0.0f, 10.0f));
    TRY(check_float(v, "sampling.presence_penalty", s->presence_penalty, -2.0f, 2.0f));
    TRY(check_float(v, "sampling.frequency_penalty", s->frequency_penalty, -2.0f, 2.0f));
    RANGE(s->max_tokens >= 1 && s->max_tokens <= CP_MAX_ID,
          "sampling.max_tokens: %u not in [1, %u]", s->max_tokens, CP_MAX_ID);
    TRY(check_tokens(v, "sampling.stop_token_ids", s->n_stop_token_ids, s->stop_token_ids, 0,
                     CP_MAX_STOP_IDS));
    RANGE(s->top_logprobs <= CP_MAX_TOP_LOGPROBS, "sampling.top_logprobs: %u, at most %u",
          s->top_logprobs, CP_MAX_TOP_LOGPROBS);
    return CM_OK;
}

static cm_status_t check_stop_strings(vctx_t *v, size_t n, char *const *stop) {
    RANGE(n <= CP_MAX_STOP_STRINGS, "stop: %zu strings, at most %u", n, CP_MAX_STOP_STRINGS);
    for (size_t i = 0; i < n; i++) {
        char field[32];
        snprintf(field, sizeof field, "stop[%zu]", i);
        TRY(check_string(v, field, stop[i], 1, CP_MAX_STOP_STRING_LEN));
    }
    return CM_OK;
}

static cm_status_t check_deadline(vctx_t *v, uint32_t ms) {
    RANGE(ms >= 1 && ms <= CP_MAX_DEADLINE_MS, "deadline_ms: %u not in [1, %u]", ms,
          CP_MAX_DEADLINE_MS);
    return CM_OK;
}

static cm_status_t check_request_id(vctx_t *v, uint64_t id) {
    if (id == 0) FAIL(CM_ERR_INVALID_ARG, "request_id: must be non-zero");
    return CM_OK;
}

static cm_status_t check_register(vctx_t *v, const Tandem__Cp__Register *r) {
    TRY(check_worker_id(v, "worker_id", r->worker_id, false));
    RANGE(r->role >= TANDEM__CP__ROLE__ROLE_PREFILL && r->role <= TANDEM__CP__ROLE__ROLE_COLOCATED,
          "role: %d is not prefill, decode or colocated", (int)r->role);
    if (r->incarnation == 0) FAIL(CM_ERR_INVALID_ARG, "incarnation: must be non-zero");
    TRY(check_string(v, "model", r->model, 1, CP_MAX_NAME));
    if (r->layout_fingerprint == 0)
        FAIL(CM_ERR_INVALID_ARG, "layout_fingerprint: must be non-zero");
    RANGE(r->block_size >= 1 && r->block_size <= 1024, "block_size: %u not in [1, 1024]",
          r->block_size);
    RANGE(r->total_blocks >= 1 && r->total_blocks <= CP_MAX_ID, "total_blocks: %u not in [1, %u]",
          r->total_blocks, CP_MAX_ID);
    RANGE(r->max_batch >= 1 && r->max_batch <= 65536, "max_batch: %u not in [1, 65536]",
          r->max_batch);
    RANGE(r->max_context >= 1 && r->max_context <= CP_MAX_ID, "max_context: %u not in [1, %u]",
          r->max_context, CP_MAX_ID);
    RANGE(r->vocab_size >= 1 && r->vocab_size <= CP_MAX_ID, "vocab_size: %u not in [1, %u]",
          r->vocab_size, CP_MAX_ID);
    RANGE(r->kvx_descriptor.len <= CP_MAX_DESCRIPTOR, "kvx_descriptor: %zu bytes, at most %u",
          r->kvx_descriptor.len, CP_MAX_DESCRIPTOR);
    if (r->role != TANDEM__CP__ROLE__ROLE_COLOCATED && r->kvx_descriptor.len == 0)
        FAIL(CM_ERR_INVALID_ARG, "kvx_descriptor: required for prefill and decode workers");
    return CM_OK;
}

static cm_status_t check_body(vctx_t *v, const cm_cp_msg_t *m) {
    switch (m->body_case) {
    case TANDEM__CP__ENVELOPE__BODY_REGISTER:
        if (!m->register_) break;
        return check_register(v, m->register_);
    case TANDEM__CP__ENVELOPE__BODY_REGISTER_ACK: {
        const Tandem__Cp__RegisterAck *a = m->register_ack;
        if (!a) break;
        if (a->incarnation == 0) FAIL(CM_ERR_INVALID_ARG, "incarnation: must be non-zero");
        TRY(check_string(v, "reason", a->reason, 0, CP_MAX_STRING));
        RANGE(a->heartbeat_interval_ms >= 10 && a->heartbeat_interval_ms <= 60000,
              "heartbeat_interval_ms: %u not in [10, 60000]", a->heartbeat_interval_ms);
        return CM_OK;
    }
    case TANDEM__CP__ENVELOPE__BODY_HEARTBEAT: {
        const Tandem__Cp__Heartbeat *h = m->heartbeat;
        if (!h) break;
        if (h->incarnation == 0) FAIL(CM_ERR_INVALID_ARG, "incarnation: must be non-zero");
        RANGE((uint64_t)h->free_blocks + h->used_blocks <= CP_MAX_ID,
              "free_blocks + used_blocks: %llu exceeds %u",
              (unsigned long long)h->free_blocks + h->used_blocks, CP_MAX_ID);
        RANGE(h->running <= 65536, "running: %u exceeds 65536", h->running);
        return CM_OK;
    }
    case TANDEM__CP__ENVELOPE__BODY_DEREGISTER:
        if (!m->deregister) break;
        if (m->deregister->incarnation == 0)
            FAIL(CM_ERR_INVALID_ARG, "incarnation: must be non-zero");
        return check_string(v, "reason", m->deregister->reason, 0, CP_MAX_STRING);
    case TANDEM__CP__ENVELOPE__BODY_RESERVE: {
        const Tandem__Cp__ReserveBlocks *r = m->reserve;
        if (!r) break;
        TRY(check_request_id(v, r->request_id));
        TRY(check_tokens(v, "prompt_tokens", r->n_prompt_tokens, r->prompt_tokens, 1,
                         v->lim->max_tokens));
        TRY(check_sampling(v, r->sampling));
        TRY(check_stop_strings(v, r->n_stop, r->stop));
        return check_deadline(v, r->deadline_ms);
    }
    case TANDEM__CP__ENVELOPE__BODY_RESERVE_REPLY: {
        const Tandem__Cp__ReserveReply *r = m->reserve_reply;
        if (!r) break;
        TRY(check_request_id(v, r->request_id));
        TRY(check_blocks(v, "block_ids", r->n_block_ids, r->block_ids, 1));
        RANGE(r->cached_blocks <= r->n_block_ids, "cached_blocks: %u > %zu blocks",
              r->cached_blocks, r->n_block_ids);
        return CM_OK;
    }
    case TANDEM__CP__ENVELOPE__BODY_PREFILL_JOB: {
        const Tandem__Cp__PrefillJob *j = m->prefill_job;
        if (!j) break;
        TRY(check_request_id(v, j->request_id));
        TRY(check_tokens(v, "prompt_tokens", j->n_prompt_tokens, j->prompt_tokens, 1,
                         v->lim->max_tokens));
        TRY(check_sampling(v, j->sampling));
        TRY(check_worker_id(v, "decode_worker_id", j->decode_worker_id, true));
        bool remote = j->decode_worker_id[0] != '\0';
        if (remote && j->decode_incarnation == 0)
            FAIL(CM_ERR_INVALID_ARG, "decode_incarnation: required with decode_worker_id");
        TRY(check_blocks(v, "dst_block_ids", j->n_dst_block_ids, j->dst_block_ids, remote ? 1 : 0));
        RANGE(j->skip_blocks <= j->n_dst_block_ids, "skip_blocks: %u > %zu blocks", j->skip_blocks,
              j->n_dst_block_ids);
        RANGE(j->decode_kvx_descriptor.len <= CP_MAX_DESCRIPTOR,
              "decode_kvx_descriptor: %zu bytes, at most %u", j->decode_kvx_descriptor.len,
              CP_MAX_DESCRIPTOR);
        if (remote && j->decode_kvx_descriptor.len == 0)
            FAIL(CM_ERR_INVALID_ARG, "decode_kvx_descriptor: required with decode_worker_id");
        TRY(check_stop_strings(v, j->n_stop, j->stop));
        return check_deadline(v, j->deadline_ms);
    }
    case TANDEM__CP__ENVELOPE__BODY_KV_READY: {
        const Tandem__Cp__KvReady *k = m->kv_ready;
        if (!k) break;
        TRY(check_request_id(v, k->request_id));
        RANGE(k->status <= 0 && k->status >= -1000, "status: %d is not a status code", k->status);
        if (k->status == 0) {
            RANGE(k->first_token >= 0 && (uint32_t)k->first_token < vocab_max(v->lim),
                  "first_token: %d not in [0, %u)", k->first_token, vocab_max(v->lim));
            RANGE(!isnan(k->first_logprob) && k->first_logprob <= 0.0f,
                  "first_logprob: %g is not a log-probability", (double)k->first_logprob);
        }
        TRY(check_top_logprobs(v, "first_top_logprobs", k->n_first_top_logprobs,
                               k->first_top_logprobs, CP_MAX_TOP_LOGPROBS));
        RANGE(k->prompt_tokens <= v->lim->max_tokens, "prompt_tokens: %u exceeds %u",
              k->prompt_tokens, v->lim->max_tokens);
        RANGE(k->cached_tokens <= k->prompt_tokens, "cached_tokens: %u > prompt_tokens %u",
              k->cached_tokens, k->prompt_tokens);
        return CM_OK;
    }
    case TANDEM__CP__ENVELOPE__BODY_TOKENS: {
        const Tandem__Cp__TokenStream *t = m->tokens;
        if (!t) break;
        TRY(check_request_id(v, t->request_id));
        TRY(check_tokens(v, "token_ids", t->n_token_ids, t->token_ids, 0, CP_MAX_STREAM_TOKENS));
        RANGE(t->text.len <= 64u * CP_MAX_STREAM_TOKENS, "text: length %zu not in [0, %u]",
              t->text.len, 64u * CP_MAX_STREAM_TOKENS);
        if (!cm_utf8_valid((const char *)t->text.data, t->text.len))
            FAIL(CM_ERR_INVALID_ARG, "text: not valid UTF-8");
        RANGE(t->n_logprobs == 0 || t->n_logprobs == t->n_token_ids,
              "logprobs: %zu entries for %zu tokens", t->n_logprobs, t->n_token_ids);
        for (size_t i = 0; i < t->n_logprobs; i++)
            RANGE(!isnan(t->logprobs[i]) && t->logprobs[i] <= 0.0f,
                  "logprobs[%zu]: %g is not a log-probability", i, (double)t->logprobs[i]);
        TRY(check_top_logprobs(v, "top_logprobs", t->n_top_logprobs, t->top_logprobs,
                               (size_t)CP_MAX_TOP_LOGPROBS * t->n_token_ids));
        RANGE(t->finish_reason >= TANDEM__CP__FINISH_REASON__FINISH_NONE &&
                  t->finish_reason <= TANDEM__CP__FINISH_REASON__FINISH_ERROR,
              "finish_reason: %d unknown", (int)t->finish_reason);
        return CM_OK;
    }
    case TANDEM__CP__ENVELOPE__BODY_CANCEL:
        if (!m->cancel) break;
        TRY(check_request_id(v, m->cancel->request_id));
        return check_string(v, "reason", m->cancel->reason, 0, CP_MAX_STRING);
    case TANDEM__CP__ENVELOPE__BODY_ERROR:
        if (!m->error) break;
        RANGE(m->error->code < 0 && m->error->code >= -1000, "code: %d is not an error code",
              m->error->code);
        return check_string(v, "message", m->error->message, 0, CP_MAX_STRING);
    case TANDEM__CP__ENVELOPE__BODY__NOT_SET:
    default:
        FAIL(CM_ERR_PROTOCOL, "body: no message body (case %d)", (int)m->body_case);
    }
    FAIL(CM_ERR_PROTOCOL, "body: case %d set without a message", (int)m->body_case);
}

const char *cm_cp_body_name(const cm_cp_msg_t *msg) {
    switch (msg->body_case) {
    case TANDEM__CP__ENVELOPE__BODY_REGISTER:
        return "register";
    case TANDEM__CP__ENVELOPE__BODY_REGISTER_ACK:
        return "register_ack";
    case TANDEM__CP__ENVELOPE__BODY_HEARTBEAT:
        return "heartbeat";
    case TANDEM__CP__ENVELOPE__BODY_DEREGISTER:
        return "deregister";
    case TANDEM__CP__ENVELOPE__BODY_RESERVE:
        return "reserve";
    case TANDEM__CP__ENVELOPE__BODY_RESERVE_REPLY:
        return "reserve_reply";
    case TANDEM__CP__ENVELOPE__BODY_PREFILL_JOB:
        return "prefill_job";
    case TANDEM__CP__ENVELOPE__BODY_KV_READY:
        return "kv_ready";
    case TANDEM__CP__ENVELOPE__BODY_TOKENS:
        return "tokens";
    case TANDEM__CP__ENVELOPE__BODY_CANCEL:
        return "cancel";
    case TANDEM__CP__ENVELOPE__BODY_ERROR:
        return "error";
    default:
        return "none";
    }
}

cm_status_t cm_cp_validate(const cm_cp_msg_t *msg, const cm_cp_limits_t *lim, char *err,
                           size_t errlen) {
    char scratch[8];
    vctx_t ctx = {lim, err && errlen ? err : scratch, err && errlen ? errlen : sizeof scratch,
                  "envelope"};
    vctx_t *v = &ctx;
    v->err[0] = '\0';
    if (msg->version != CM_CP_VERSION)
        FAIL(CM_ERR_VERSION, "version: %u, this build speaks %u", msg->version, CM_CP_VERSION);
    ctx.where = cm_cp_body_name(msg);
    return check_body(v, msg);
}

cm_status_t cm_cp_encode(const cm_cp_msg_t *msg, const cm_cp_limits_t *lim, uint8_t **buf,
                         size_t *len, char *err, size_t errlen) {
    cm_status_t st = cm_cp_validate(msg, lim, err, errlen);
    if (st != CM_OK) return st;
    size_t n = tandem__cp__envelope__get_packed_size(msg);
    if (n > lim->max_msg_bytes) {
        if (err && errlen)
            snprintf(err, errlen, "encoded size %zu exceeds the limit of %zu", n,
                     lim->max_msg_bytes);
        return CM_ERR_TOO_LARGE;
    }
    uint8_t *b = cm_malloc(n);
    if (!b) return CM_ERR_NO_MEMORY;
    size_t w = tandem__cp__envelope__pack(msg, b);
    if (w != n) {
        cm_free(b);
        if (err && errlen) snprintf(err, errlen, "packed %zu bytes, expected %zu", w, n);
        return CM_ERR_INTERNAL;
    }
    *buf = b;
    *len = n;
    return CM_OK;
}
