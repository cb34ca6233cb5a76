/* rt_openai.c - OpenAI request parsing and response rendering (pure). */
#include "rt_openai.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define OAI_MAX_STOP     16
#define OAI_MAX_STOP_LEN 256
#define OAI_MAX_TOKENS   (1u << 24)

struct rt_oai_req {
    rt_oai_kind_t kind;
    cJSON *root; /* strings below point into it */
    rt_gen_request_t gen;
    int32_t *prompt_ids;
    rt_chat_msg_t *msgs;
    char **msg_text; /* joined text parts, owned */
    size_t n_msg_text;
    const char *stop[OAI_MAX_STOP];
    int32_t *stop_ids;
    bool stream, include_usage, ids_as_tokens;
};

static cm_status_t bad(rt_oai_error_t *err, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static cm_status_t bad(rt_oai_error_t *err, const char *param, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    /* A long value echoed in the message may be cut inside a character. */
    err->message[cm_utf8_trim(err->message, strlen(err->message))] = '\0';
    err->status = 400;
    err->type = "invalid_request_error";
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    return CM_ERR_INVALID_ARG;
}

static bool present(const cJSON *v) { return v && !cJSON_IsNull(v); }

/* An integral JSON number within [lo, hi]. */
static bool get_int(const cJSON *v, double lo, double hi, int64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!isfinite(d) || d != floor(d) || d < lo || d > hi) return false;
    *out = (int64_t)d;
    return true;
}

static bool get_num(const cJSON *v, double lo, double hi, float *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!isfinite(d) || d < lo || d > hi) return false;
    *out = (float)d;
    return true;
}

/* Parses an array of token ids into a new array. */
static cm_status_t get_ids(const cJSON *a, const char *param, int32_t **out, size_t *n,
                           rt_oai_error_t *err) {
    int count = cJSON_GetArraySize(a);
    int32_t *ids = cm_malloc_array(count > 0 ? (size_t)count : 1, sizeof *ids);
    if (!ids) return bad(err, param, "Out of memory.");
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) {
        int64_t v;
        if (!get_int(e, 0, 2147483647.0, &v)) {
            cm_free(ids);
            return bad(err, param, "'%s' must hold token ids (non-negative integers).", param);
        }
        ids[i++] = (int32_t)v;
    }
    *out = ids;
    *n = (size_t)count;
    return CM_OK;
}

static cm_status_t parse_prompt(rt_oai_req_t *r, const cJSON *p, rt_oai_error_t *err) {
    if (!present(p)) return bad(err, "prompt", "'prompt' is required.");
    if (cJSON_IsString(p)) {
        r->gen.prompt = p->valuestring;
        r->gen.prompt_len = strlen(p->valuestring);
        return CM_OK;
    }
    if (!cJSON_IsArray(p) || cJSON_GetArraySize(p) == 0)
        return bad(err, "prompt",
                   "'prompt' must be a string, an array of token ids, or a "
                   "one-element array of either.");
    const cJSON *first = cJSON_GetArrayItem(p, 0);
    if (cJSON_IsNumber(first))
        return get_ids(p, "prompt", &r->prompt_ids, &r->gen.n_prompt_ids, err);
    if (cJSON_GetArraySize(p) != 1)
        return bad(err, "prompt",
                   "Batched prompts are not supported; send one prompt per "
                   "request.");
    if (cJSON_IsString(first)) {
        r->gen.prompt = first->valuestring;
        r->gen.prompt_len = strlen(first->valuestring);
        return CM_OK;
    }
    if (cJSON_IsArray(first) && cJSON_GetArraySize(first) > 0)
        return get_ids(first, "prompt", &r->prompt_ids, &r->gen.n_prompt_ids, err);
    return bad(err, "prompt", "'prompt' must be a string or token ids.");
}

static cm_status_t parse_messages(rt_oai_req_t *r, const cJSON *m, rt_oai_error_t *err) {
    if (!cJSON_IsArray(m) || cJSON_GetArraySize(m) == 0)
        return bad(err, "messages", "'messages' must be a non-empty array.");
    size_t n = (size_t)cJSON_GetArraySize(m);
    r->msgs = cm_calloc(n, sizeof *r->msgs);
    r->msg_text = cm_calloc(n, sizeof *r->msg_text);
    if (!r->msgs || !r->msg_text) return bad(err, "messages", "Out of memory.");
    size_t i = 0;
    const cJSON *msg;
    cJSON_ArrayForEach(msg, m) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(msg, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(msg, "content");
        if (!cJSON_IsObject(msg) || !cJSON_IsString(role))
            return bad(err, "messages", "messages[%zu] must be an object with a 'role'.", i);
        const char *rs = role->valuestring;
        if (!strcmp(rs, "developer")) rs = "system";
        if (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant")) {
            /* At most 64 bytes of it, whole characters, so the message
             * ends with the roles that are. */
            int shown = (int)cm_utf8_trim(rs, strnlen(rs, 64));
            return bad(err, "messages",
                       "messages[%zu].role '%.*s%s' is not supported (system, "
                       "developer, user, assistant).",
                       i, shown, rs, rs[shown] ? "..." : "");
        }
        r->msgs[i].role = rs;
        if (!present(content) && !strcmp(rs, "assistant")) {
            r->msgs[i].content = "";
        } else if (cJSON_IsString(content)) {
            r->msgs[i].content = content->valuestring;
        } else if (cJSON_IsArray(content)) {
            /* Text parts, joined with newlines (as vLLM does). */
            size_t total = 1;
            const cJSON *part;
            cJSON_ArrayForEach(part, content) {
                const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
                const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
                if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") ||
                    !cJSON_IsString(text))
                    return bad(err, "messages",
                               "messages[%zu].content: only text parts are "
                               "supported.",
                               i);
                total += strlen(text->valuestring) + 1;
            }
            char *joined = cm_malloc(total);
            if (!joined) return bad(err, "messages", "Out of memory.");
            size_t off = 0;
            cJSON_ArrayForEach(part, content) {
                const char *t = cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring;
                if (off) joined[off++] = '\n';
                memcpy(joined + off, t, strlen(t));
                off += strlen(t);
            }
            joined[off] = '\0';
            r->msg_text[r->n_msg_text++] = joined;
            r->msgs[i].content = joined;
        } else {
            return bad(err, "messages",
                       "messages[%zu].content must be a string or an array "
                       "of text parts.",
                       i);
        }
        i++;
    }
    r->gen.messages = r->msgs;
    r->gen.n_messages = n;
    return CM_OK;
}

static cm_status_t parse_stop(rt_oai_req_t *r, const cJSON *s, rt_oai_error_t *err) {
    if (!present(s)) return CM_OK;
    if (cJSON_IsString(s)) {
        if (!s->valuestring[0] || strlen(s->valuestring) > OAI_MAX_STOP_LEN)
            return bad(err, "stop", "'stop' strings must be 1..%d bytes.", OAI_MAX_STOP_LEN);
        r->stop[0] = s->valuestring;
        r->gen.sampling.n_stop = 1;
    } else if (cJSON_IsArray(s)) {
        if (cJSON_GetArraySize(s) > OAI_MAX_STOP)
            return bad(err, "stop", "'stop' may hold at most %d strings.", OAI_MAX_STOP);
        size_t n = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, s) {
            if (!cJSON_IsString(e) || !e->valuestring[0] ||
                strlen(e->valuestring) > OAI_MAX_STOP_LEN)
                return bad(err, "stop", "'stop' must hold strings of 1..%d bytes.",
                           OAI_MAX_STOP_LEN);
            r->stop[n++] = e->valuestring;
        }
        r->gen.sampling.n_stop = n;
    } else {
        return bad(err, "stop", "'stop' must be a string or an array of strings.");
    }
    r->gen.sampling.stop = r->stop;
    return CM_OK;
}

#define TRY(x)                       \
    do {                             \
        cm_status_t st_ = (x);       \
        if (st_ != CM_OK) goto fail; \
    } while (0)

#define FIELD(name) cJSON_GetObjectItemCaseSensitive(root, name)

/* True when the JSON text @s[0..n) holds the escape \u0000. cJSON's
 * strings end at the first NUL, so a prompt "a\u0000b" would lose "b"
 * without a word; such requests are refused instead. Every backslash in
 * valid JSON starts a 2- or 6-character escape, so skipping the character
 * after one keeps "\\u0000" (a backslash, then "u0000") apart. */
static bool has_nul_escape(const char *s, size_t n) {
    for (size_t i = 0; i + 1 < n; i++) {
        if (s[i] != '\\') continue;
        if (s[i + 1] == 'u' && n - i >= 6 && memcmp(s + i + 2, "0000", 4) == 0) return true;
        i++;
    }
    return false;
}

cm_status_t rt_oai_parse(rt_oai_kind_t kind, const char *body, size_t len, rt_oai_req_t **out,
                         rt_oai_error_t *err) {
    rt_oai_req_t *r = cm_calloc(1, sizeof *r);
    if (!r) return bad(err, NULL, "Out of memory.");
    r->kind = kind;
    /* JSON text is UTF-8 (RFC 8259); values echoed in errors and in the
     * response (model, roles) must stay so. */
    if (!cm_utf8_valid(body, len)) {
        bad(err, NULL, "The request body is not valid UTF-8.");
        goto fail;
    }
    if (has_nul_escape(body, len)) {
        bad(err, NULL, "Strings holding U+0000 (\\u0000) are not supported.");
        goto fail;
    }
    cJSON *root = r->root = cJSON_ParseWithLength(body, len);
    const cJSON *v;
    int64_t iv;
    if (!root) {
        bad(err, NULL, "The request body is not valid JSON.");
        goto fail;
    }
    if (!cJSON_IsObject(root)) {
        bad(err, NULL, "The request body must be a JSON object.");
        goto fail;
    }
    rt_sampling_t *s = &r->gen.sampling;
    s->temperature = 1.0f;
    s->top_p = 1.0f;
    s->top_k = -1;
    s->repetition_penalty = 1.0f;
    s->max_tokens = kind == RT_OAI_COMPLETIONS ? 16 : 0;
    r->gen.chat = kind == RT_OAI_CHAT;

    v = FIELD("model");
    if (!cJSON_IsString(v) || !v->valuestring[0]) {
        bad(err, "model", "'model' is required and must be a string.");
        goto fail;
    }
    r->gen.model = v->valuestring;
    if (kind == RT_OAI_COMPLETIONS)
        TRY(parse_prompt(r, FIELD("prompt"), err));
    else
        TRY(parse_messages(r, FIELD("messages"), err));
    r->gen.prompt_ids = r->prompt_ids;

    const char *mt =
        present(FIELD("max_completion_tokens")) ? "max_completion_tokens" : "max_tokens";
    if (present(v = FIELD(mt))) {
        if (!get_int(v, 1, OAI_MAX_TOKENS, &iv)) {
            bad(err, mt, "'%s' must be an integer in [1, %u].", mt, OAI_MAX_TOKENS);
            goto fail;
        }
        s->max_tokens = (uint32_t)iv;
    }
    if (present(v = FIELD("temperature")) && !get_num(v, 0, 2, &s->temperature)) {
        bad(err, "temperature", "'temperature' must be a number in [0, 2].");
        goto fail;
    }
    if (present(v = FIELD("top_p")) && (!get_num(v, 0, 1, &s->top_p) || s->top_p <= 0)) {
        bad(err, "top_p", "'top_p' must be a number in (0, 1].");
        goto fail;
    }
    if (present(v = FIELD("top_k"))) {
        if (!get_int(v, -1, OAI_MAX_TOKENS, &iv)) {
            bad(err, "top_k", "'top_k' must be -1 (off) or a positive integer.");
            goto fail;
        }
        s->top_k = iv <= 0 ? -1 : (int32_t)iv;
    }
    if (present(v = FIELD("min_p")) && !get_num(v, 0, 1, &s->min_p)) {
        bad(err, "min_p", "'min_p' must be a number in [0, 1].");
        goto fail;
    }
    if (present(v = FIELD("presence_penalty")) && !get_num(v, -2, 2, &s->presence_penalty)) {
        bad(err, "presence_penalty", "'presence_penalty' must be a number in [-2, 2].");
        goto fail;
    }
    if (present(v = FIELD("frequency_penalty")) && !get_num(v, -2, 2, &s->frequency_penalty)) {
        bad(err, "frequency_penalty", "'frequency_penalty' must be a number in [-2, 2].");
        goto fail;
    }
    if (present(v = FIELD("repetition_penalty")) &&
        (!get_num(v, 0, 10, &s->repetition_penalty) || s->repetition_penalty <= 0)) {
        bad(err, "repetition_penalty", "'repetition_penalty' must be a number in (0, 10].");
        goto fail;
    }
    if (present(v = FIELD("n")) && (!get_int(v, 1, 1, &iv))) {
        bad(err, "n", "Only n=1 is supported.");
        goto fail;
    }
    if (present(v = FIELD("best_of")) && (!get_int(v, 1, 1, &iv))) {
        bad(err, "best_of", "Only best_of=1 is supported.");
        goto fail;
    }
    if (present(v = FIELD("seed"))) {
        if (!get_int(v, -9223372036854775808.0, 9223372036854774784.0, &iv)) {
            bad(err, "seed", "'seed' must be an integer.");
            goto fail;
        }
        s->has_seed = true;
        s->seed = (uint64_t)iv;
    }
    if (present(v = FIELD("stream"))) {
        if (!cJSON_IsBool(v)) {
            bad(err, "stream", "'stream' must be a boolean.");
            goto fail;
        }
        r->stream = cJSON_IsTrue(v);
    }
    if (present(v = FIELD("stream_options"))) {
        const cJSON *iu = cJSON_GetObjectItemCaseSensitive(v, "include_usage");
        if (!cJSON_IsObject(v) || (present(iu) && !cJSON_IsBool(iu))) {
            bad(err, "stream_options",
                "'stream_options' must be an object with a boolean "
                "'include_usage'.");
            goto fail;
        }
        if (!r->stream) {
            bad(err, "stream_options", "'stream_options' is only allowed with stream=true.");
            goto fail;
        }
        r->include_usage = cJSON_IsTrue(iu);
    }
    TRY(parse_stop(r, FIELD("stop"), err));
    if (present(v = FIELD("stop_token_ids"))) {
        if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > 64) {
            bad(err, "stop_token_ids", "'stop_token_ids' must be an array of at most 64 ids.");
            goto fail;
        }
        TRY(get_ids(v, "stop_token_ids", &r->stop_ids, &s->n_stop_token_ids, err));
        s->stop_token_ids = r->stop_ids;
    }
    if (present(v = FIELD("return_tokens_as_token_ids"))) {
        if (!cJSON_IsBool(v)) {
            bad(err, "return_tokens_as_token_ids",
                "'return_tokens_as_token_ids' must be a boolean.");
            goto fail;
        }
        r->ids_as_tokens = cJSON_IsTrue(v);
    }
    if (present(v = FIELD("ignore_eos"))) {
        if (!cJSON_IsBool(v)) {
            bad(err, "ignore_eos", "'ignore_eos' must be a boolean.");
            goto fail;
        }
        s->ignore_eos = cJSON_IsTrue(v);
    }
    if (kind == RT_OAI_COMPLETIONS) {
        if (present(v = FIELD("logprobs"))) {
            if (!get_int(v, 0, 5, &iv)) {
                bad(err, "logprobs", "'logprobs' must be an integer in [0, 5].");
                goto fail;
            }
            s->logprobs = true;
            s->top_logprobs = (uint32_t)iv;
        }
        if (present(v = FIELD("echo")) && cJSON_IsTrue(v)) {
            bad(err, "echo", "'echo' is not supported.");
            goto fail;
        }
        if (present(v = FIELD("suffix"))) {
            bad(err, "suffix", "'suffix' is not supported.");
            goto fail;
        }
    } else {
        if (present(v = FIELD("logprobs"))) {
            if (!cJSON_IsBool(v)) {
                bad(err, "logprobs", "'logprobs' must be a boolean.");
                goto fail;
            }
            s->logprobs = cJSON_IsTrue(v);
        }
        if (present(v = FIELD("top_logprobs"))) {
            if (!get_int(v, 0, 20, &iv)) {
                bad(err, "top_logprobs", "'top_logprobs' must be an integer in [0, 20].");
                goto fail;
            }
            if (!s->logprobs) {
                bad(err, "top_logprobs", "'top_logprobs' requires logprobs=true.");
                goto fail;
            }
            s->top_logprobs = (uint32_t)iv;
        }
        if ((present(v = FIELD("tools")) && cJSON_GetArraySize(v) > 0) ||
            present(FIELD("functions"))) {
            bad(err, "tools", "Tool calling is not supported.");
            goto fail;
        }
        if (present(v = FIELD("response_format"))) {
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(v, "type");
            if (!cJSON_IsString(t) || strcmp(t->valuestring, "text")) {
                bad(err, "response_format",
                    "Only response_format {\"type\": \"text\"} is "
                    "supported.");
                goto fail;
            }
        }
    }
    if (present(v = FIELD("logit_bias")) && cJSON_GetArraySize(v) > 0) {
        bad(err, "logit_bias", "'logit_bias' is not supported.");
        goto fail;
    }
    *out = r;
    return CM_OK;
fail:
    rt_oai_free(r);
    return CM_ERR_INVALID_ARG;
}

void rt_oai_free(rt_oai_req_t *r) {
    if (!r) return;
    cJSON_Delete(r->root);
    cm_free(r->prompt_ids);
    cm_free(r->msgs);
    for (size_t i = 0; i < r->n_msg_text; i++) cm_free(r->msg_text[i]);
    cm_free(r->msg_text);
    cm_free(r->stop_ids);
    cm_free(r);
}

const rt_gen_request_t *rt_oai_gen(const rt_oai_req_t *r) { return &r->gen; }
rt_oai_kind_t rt_oai_kind(const rt_oai_req_t *r) { return r->kind; }
bool rt_oai_stream(const rt_oai_req_t *r) { return r->stream; }
bool rt_oai_include_usage(const rt_oai_req_t *r) { return r->include_usage; }

/* ------------------------------------------------------------------------ */
/* Rendering                                                                */
/* ------------------------------------------------------------------------ */

struct rt_oai_resp {
    rt_oai_kind_t kind;
    char id[64];
    char model[256];
    uint64_t created;
    bool include_usage, logprobs, ids_as_tokens;
    uint32_t top_n;
    /* Non-streaming accumulation. */
    char *text;
    size_t text_len;
    cJSON *lp; /* logprobs content built so far (chat: array; completions: object) */
    size_t text_offset;
};

rt_oai_resp_t *rt_oai_resp_new(const rt_oai_req_t *req, const char *id, uint64_t created) {
    rt_oai_resp_t *r = cm_calloc(1, sizeof *r);
    if (!r) return NULL;
    r->kind = req->kind;
    snprintf(r->id, sizeof r->id, "%s", id);
    snprintf(r->model, sizeof r->model, "%s", req->gen.model);
    r->model[cm_utf8_trim(r->model, strlen(r->model))] = '\0';
    r->created = created;
    r->include_usage = req->include_usage;
    r->logprobs = req->gen.sampling.logprobs;
    r->top_n = req->gen.sampling.top_logprobs;
    r->ids_as_tokens = req->ids_as_tokens;
    return r;
}

void rt_oai_resp_free(rt_oai_resp_t *r) {
    if (!r) return;
    cm_free(r->text);
    cJSON_Delete(r->lp);
    cm_free(r);
}

/* A JSON string of the UTF-8 text @s[0..n), which may hold U+0000: cJSON's
 * strings end at the first NUL, so the text goes in already escaped. */
static cJSON *json_text(const char *s, size_t n) {
    char *q = cm_json_quote(s, n);
    if (!q) return NULL;
    cJSON *v = cJSON_CreateRaw(q);
    cm_free(q);
    return v;
}

/* The printable name of token i of a delta (*@len bytes): the delta's text
 * when it holds a single token, else "token_id:<id>" (vLLM's convention,
 * also what return_tokens_as_token_ids asks for). */
static void token_name(const rt_oai_resp_t *r, const rt_delta_t *d, size_t i, char *buf, size_t cap,
                       size_t *len) {
    if (d->n == 1 && !r->ids_as_tokens) {
        *len = d->text_len < cap ? d->text_len : cm_utf8_trim(d->text, cap - 1);
        memcpy(buf, d->text, *len);
    } else {
        int w = snprintf(buf, cap, "token_id:%d", d->ids[i]);
        *len = w > 0 && (size_t)w < cap ? (size_t)w : 0;
    }
}

static void top_name(int32_t id, char *buf, size_t cap) { snprintf(buf, cap, "token_id:%d", id); }

static cJSON *bytes_of(const char *s, size_t n) {
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber((unsigned char)s[i]));
    return a;
}

/* Appends the logprobs of @d to @lp in the format of @kind. */
static void add_logprobs(rt_oai_resp_t *r, cJSON *lp, const rt_delta_t *d) {
    char name[512];
    size_t name_len;
    for (size_t i = 0; i < d->n; i++) {
        token_name(r, d, i, name, sizeof name, &name_len);
        float l = d->logprobs ? d->logprobs[i] : 0.0f;
        if (r->kind == RT_OAI_CHAT) {
            cJSON *content = cJSON_GetObjectItemCaseSensitive(lp, "content");
            cJSON *e = cJSON_CreateObject();
            cJSON_AddItemToObject(e, "token", json_text(name, name_len));
            cJSON_AddNumberToObject(e, "logprob", l);
            cJSON_AddItemToObject(e, "bytes", bytes_of(name, name_len));
            cJSON *tops = cJSON_AddArrayToObject(e, "top_logprobs");
            for (size_t k = 0; d->top && k < d->top_per_token && k < r->top_n; k++) {
                const rt_top_logprob_t *t = &d->top[i * d->top_per_token + k];
                char tn[32];
                top_name(t->token_id, tn, sizeof tn);
                cJSON *o = cJSON_CreateObject();
                cJSON_AddStringToObject(o, "token", tn);
                cJSON_AddNumberToObject(o, "logprob", t->logprob);
                cJSON_AddItemToObject(o, "bytes", bytes_of(tn, strlen(tn)));
                cJSON_AddItemToArray(tops, o);
            }
            cJSON_AddItemToArray(content, e);
        } else {
            cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(lp, "tokens"),
                                 json_text(name, name_len));
            cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(lp, "token_logprobs"),
                                 cJSON_CreateNumber(l));
            cJSON *tops = cJSON_CreateObject();
            for (size_t k = 0; d->top && k < d->top_per_token && k < r->top_n; k++) {
                const rt_top_logprob_t *t = &d->top[i * d->top_per_token + k];
                char tn[32];
                top_name(t->token_id, tn, sizeof tn);
                cJSON_AddNumberToObject(tops, tn, t->logprob);
            }
            cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(lp, "top_logprobs"), tops);
            cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(lp, "text_offset"),
                                 cJSON_CreateNumber((double)r->text_offset));
            if (d->n == 1) r->text_offset += d->text_len;
        }
    }
    if (d->n != 1) r->text_offset += d->text_len;
}

static cJSON *new_logprobs(rt_oai_kind_t kind) {
    cJSON *lp = cJSON_CreateObject();
    if (kind == RT_OAI_CHAT) {
        cJSON_AddArrayToObject(lp, "content");
    } else {
        cJSON_AddArrayToObject(lp, "tokens");
        cJSON_AddArrayToObject(lp, "token_logprobs");
        cJSON_AddArrayToObject(lp, "top_logprobs");
        cJSON_AddArrayToObject(lp, "text_offset");
    }
    return lp;
}

static cJSON *chunk_base(const rt_oai_resp_t *r) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", r->id);
    cJSON_AddStringToObject(o, "object",
                            r->kind == RT_OAI_CHAT ? "chat.completion.chunk" : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)r->created);
    cJSON_AddStringToObject(o, "model", r->model);
    return o;
}

static const char *finish_name(rt_finish_t why) {
    return why == RT_FINISH_STOP ? "stop" : "length";
}

/* "data: <json>\n\n" from @o (deleted). */
static char *sse(cJSON *o) {
    char *json = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!json) return NULL;
    size_t n = strlen(json);
    char *out = cm_malloc(n + 9);
    if (out) {
        memcpy(out, "data: ", 6);
        memcpy(out + 6, json, n);
        memcpy(out + 6 + n, "\n\n", 3);
    }
    cJSON_free(json);
    return out;
}

static char *print(cJSON *o) {
    char *json = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!json) return NULL;
    char *out = cm_strdup(json);
    cJSON_free(json);
    return out;
}

static cJSON *choice(const rt_oai_resp_t *r, const char *text, size_t len, cJSON *lp,
                     const char *finish, bool role) {
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    if (r->kind == RT_OAI_CHAT) {
        cJSON *delta = cJSON_AddObjectToObject(c, "delta");
        if (role) cJSON_AddStringToObject(delta, "role", "assistant");
        if (text) cJSON_AddItemToObject(delta, "content", json_text(text, len));
    } else {
        cJSON_AddItemToObject(c, "text", json_text(text ? text : "", len));
    }
    if (lp)
        cJSON_AddItemToObject(c, "logprobs", lp);
    else
        cJSON_AddNullToObject(c, "logprobs");
    if (finish)
        cJSON_AddStringToObject(c, "finish_reason", finish);
    else
        cJSON_AddNullToObject(c, "finish_reason");
    return c;
}

static void add_usage(cJSON *o, uint32_t p, uint32_t c) {
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", p);
    cJSON_AddNumberToObject(u, "completion_tokens", c);
    cJSON_AddNumberToObject(u, "total_tokens", (double)p + c);
}

static char *chunk(rt_oai_resp_t *r, cJSON *ch) {
    cJSON *o = chunk_base(r);
    cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "choices"), ch);
    if (r->include_usage) cJSON_AddNullToObject(o, "usage");
    return sse(o);
}

char *rt_oai_sse_start(rt_oai_resp_t *r) {
    if (r->kind != RT_OAI_CHAT) return NULL;
    return chunk(r, choice(r, "", 0, NULL, NULL, true));
}

char *rt_oai_sse_delta(rt_oai_resp_t *r, const rt_delta_t *d) {
    cJSON *lp = NULL;
    if (r->logprobs) {
        lp = new_logprobs(r->kind);
        add_logprobs(r, lp, d);
    }
    return chunk(r, choice(r, d->text, d->text_len, lp, NULL, false));
}

char *rt_oai_sse_end(rt_oai_resp_t *r, rt_finish_t why, uint32_t prompt, uint32_t completion) {
    cJSON *last = chunk_base(r);
    cJSON *c = choice(r, NULL, 0, NULL, finish_name(why), false);
    if (r->kind == RT_OAI_COMPLETIONS) cJSON_ReplaceItemInObject(c, "text", cJSON_CreateString(""));
    cJSON_AddItemToArray(cJSON_AddArrayToObject(last, "choices"), c);
    if (r->include_usage) cJSON_AddNullToObject(last, "usage");
    char *a = sse(last);
    char *b = NULL;
    if (r->include_usage) {
        cJSON *u = chunk_base(r);
        cJSON_AddArrayToObject(u, "choices");
        add_usage(u, prompt, completion);
        b = sse(u);
    }
    static const char done[] = "data: [DONE]\n\n";
    size_t la = a ? strlen(a) : 0, lb = b ? strlen(b) : 0;
    char *out = cm_malloc(la + lb + sizeof done);
    if (out) {
        memcpy(out, a ? a : "", la);
        memcpy(out + la, b ? b : "", lb);
        memcpy(out + la + lb, done, sizeof done);
    }
    cm_free(a);
    cm_free(b);
    return out;
}

char *rt_oai_sse_error(int status, const char *type, const char *message) {
    cJSON *o = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(e, "message", message);
    cJSON_AddStringToObject(e, "type", type);
    cJSON_AddNullToObject(e, "param");
    cJSON_AddNumberToObject(e, "code", status);
    char *a = sse(o);
    static const char done[] = "data: [DONE]\n\n";
    size_t la = a ? strlen(a) : 0;
    char *out = cm_malloc(la + sizeof done);
    if (out) {
        memcpy(out, a ? a : "", la);
        memcpy(out + la, done, sizeof done);
    }
    cm_free(a);
    return out;
}

void rt_oai_accumulate(rt_oai_resp_t *r, const rt_delta_t *d) {
    char *t = cm_realloc_array(r->text, r->text_len + d->text_len + 1, 1);
    if (t) {
        memcpy(t + r->text_len, d->text, d->text_len);
        r->text_len += d->text_len;
        t[r->text_len] = '\0';
        r->text = t;
    }
    if (r->logprobs) {
        if (!r->lp) r->lp = new_logprobs(r->kind);
        add_logprobs(r, r->lp, d);
    }
}

char *rt_oai_body(rt_oai_resp_t *r, rt_finish_t why, uint32_t prompt, uint32_t completion) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", r->id);
    cJSON_AddStringToObject(o, "object",
                            r->kind == RT_OAI_CHAT ? "chat.completion" : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)r->created);
    cJSON_AddStringToObject(o, "model", r->model);
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    if (r->kind == RT_OAI_CHAT) {
        cJSON *m = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(m, "role", "assistant");
        cJSON_AddItemToObject(m, "content", json_text(r->text ? r->text : "", r->text_len));
    } else {
        cJSON_AddItemToObject(c, "text", json_text(r->text ? r->text : "", r->text_len));
    }
    if (r->logprobs) {
        cJSON_AddItemToObject(c, "logprobs", r->lp ? r->lp : new_logprobs(r->kind));
        r->lp = NULL;
    } else {
        cJSON_AddNullToObject(c, "logprobs");
    }
    cJSON_AddStringToObject(c, "finish_reason", finish_name(why));
    cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "choices"), c);
    add_usage(o, prompt, completion);
    return print(o);
}

char *rt_oai_error_body(const char *type, const char *message, const char *param) {
    cJSON *o = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(e, "message", message);
    cJSON_AddStringToObject(e, "type", type);
    if (param && param[0])
        cJSON_AddStringToObject(e, "param", param);
    else
        cJSON_AddNullToObject(e, "param");
    cJSON_AddNullToObject(e, "code");
    return print(o);
}

char *rt_oai_models_body(const char *model, uint64_t created, uint32_t max_context) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", model);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)created);
    cJSON_AddStringToObject(m, "owned_by", "tandem");
    if (max_context) cJSON_AddNumberToObject(m, "max_model_len", max_context);
    cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "data"), m);
    return print(o);
}
