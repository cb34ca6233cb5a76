/*
 * fuzz_oai.c - libFuzzer target for the OpenAI request parser and response
 * writer (router/rt_openai.c). Build with `make fuzz`, run e.g.
 *   build/fuzz/fuzz_oai -max_total_time=60 -max_len=4096 -dict=tests/fuzz/oai.dict
 *
 * Input: byte 0 picks /v1/completions or /v1/chat/completions and the
 * finish reason; the rest up to the first NUL is the request body, what
 * follows is the generated text (made well-formed UTF-8 first, as the
 * streaming decoder gives it). Properties checked (abort() on a violation):
 *   - a refused body gets a 4xx with a message, and its error body is
 *     well-formed UTF-8 JSON;
 *   - for an accepted one, every SSE event (role chunk, a delta of one and
 *     of three tokens with logprobs when asked, the end, [DONE]) and the
 *     non-streaming body are `data: <JSON>` events / JSON objects that
 *     parse, are well-formed UTF-8, and carry the generated text exactly.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rt_openai.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* @s with every byte that does not start a well-formed sequence replaced
 * by '?' and NULs by ' ' (malloc'ed, NUL-terminated). */
static char *well_formed(const uint8_t *s, size_t n) {
    char *o = malloc(n + 1);
    size_t i = 0;
    while (i < n) {
        size_t L = s[i] < 0x80 ? 1 : s[i] >= 0xF0 ? 4 : s[i] >= 0xE0 ? 3 : s[i] >= 0xC2 ? 2 : 0;
        if (L && i + L <= n && cm_utf8_valid((const char *)s + i, L)) {
            memcpy(o + i, s + i, L);
            if (L == 1 && !s[i]) o[i] = ' ';
            i += L;
        } else {
            o[i++] = '?';
        }
    }
    o[n] = '\0';
    return o;
}

static void need(bool ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "fuzz_oai: %s\n", what);
        abort();
    }
}

/* The text the first choice of response object @o carries ("" if none). */
static const char *choice_text(const cJSON *o, bool chat, bool streamed) {
    const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    if (!c) return "";
    const cJSON *t =
        chat
            ? cJSON_GetObjectItem(cJSON_GetObjectItem(c, streamed ? "delta" : "message"), "content")
            : cJSON_GetObjectItem(c, "text");
    return cJSON_IsString(t) ? t->valuestring : "";
}

/* Checks SSE events @sse (NULL allowed: no event) and appends the text
 * their first choices carry to @acc. */
static void check_sse(const char *sse, bool chat, char *acc, size_t cap) {
    if (!sse) return;
    need(cm_utf8_valid(sse, strlen(sse)), "SSE not UTF-8");
    const char *p = sse;
    while (*p) {
        need(!strncmp(p, "data: ", 6), "event without data:");
        const char *e = strstr(p, "\n\n");
        need(e != NULL, "event without its blank line");
        size_t len = (size_t)(e - p) - 6;
        if (len == 6 && !memcmp(p + 6, "[DONE]", 6)) {
            need(e[2] == '\0', "[DONE] not last");
            return;
        }
        cJSON *o = cJSON_ParseWithLength(p + 6, len);
        need(cJSON_IsObject(o), "event is not a JSON object");
        const char *t = choice_text(o, chat, true);
        need(strlen(acc) + strlen(t) < cap, "too much text");
        strcat(acc, t);
        cJSON_Delete(o);
        p = e + 2;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    bool chat = data[0] & 1;
    rt_finish_t why = data[0] & 2 ? RT_FINISH_LENGTH : RT_FINISH_STOP;
    const uint8_t *body = data + 1, *z = memchr(body, 0, size - 1);
    size_t blen = z ? (size_t)(z - body) : size - 1;
    char *text = z ? well_formed(z + 1, size - 1 - blen - 1) : well_formed(NULL, 0);
    size_t tl = strlen(text);

    rt_oai_req_t *req = NULL;
    rt_oai_error_t err;
    memset(&err, 0, sizeof err);
    cm_status_t st =
        rt_oai_parse(chat ? RT_OAI_CHAT : RT_OAI_COMPLETIONS, (const char *)body, blen, &req, &err);
    if (st != CM_OK) {
        need(err.status >= 400 && err.status < 500 && err.message[0] && err.type, "bad refusal");
        char *eb = rt_oai_error_body(err.type, err.message, err.param[0] ? err.param : NULL);
        need(eb && cm_utf8_valid(eb, strlen(eb)), "error body not UTF-8");
        cJSON *o = cJSON_Parse(eb);
        need(cJSON_IsObject(cJSON_GetObjectItem(o, "error")), "error body not an error object");
        cJSON_Delete(o);
        cm_free(eb);
        free(text);
        return 0;
    }
    const rt_sampling_t *s = &rt_oai_gen(req)->sampling;
    /* Three tokens, each with its logprob and top entries when asked; the
     * text split after its first character (a delta of one token, then one
     * of two). */
    size_t cut = tl ? 1 : 0;
    while (cut < tl && ((unsigned char)text[cut] & 0xC0) == 0x80) cut++;
    int32_t ids[3] = {5, 17, 99};
    float lps[3] = {-0.25f, -1.5f, -3.0f};
    rt_top_logprob_t top[3 * 20];
    for (size_t i = 0; i < 3 * 20; i++) top[i] = (rt_top_logprob_t){(int32_t)i, -(float)i};
    size_t per = s->top_logprobs;
    rt_delta_t d1 = {ids, 1, text, cut, s->logprobs ? lps : NULL, per ? top : NULL, per};
    rt_delta_t d2 = {
        ids + 1, 2, text + cut, tl - cut, s->logprobs ? lps + 1 : NULL, per ? top + per : NULL,
        per};

    size_t cap = 2 * tl + 64;
    char *acc = calloc(1, cap);
    rt_oai_resp_t *r = rt_oai_resp_new(req, chat ? "chatcmpl-1" : "cmpl-1", 1700000000);
    need(r != NULL, "no response object");
    char *ev[4] = {rt_oai_sse_start(r), rt_oai_sse_delta(r, &d1), rt_oai_sse_delta(r, &d2),
                   rt_oai_sse_end(r, why, 7, 3)};
    need(ev[1] && ev[2] && ev[3] && (ev[0] || !chat), "an SSE event is missing");
    for (int i = 0; i < 4; i++) {
        check_sse(ev[i], chat, acc, cap);
        cm_free(ev[i]);
    }
    need(!strcmp(acc, text), "the streamed text differs from the generated text");
    rt_oai_resp_free(r);

    r = rt_oai_resp_new(req, "x", 1);
    need(r != NULL, "no response object");
    rt_oai_accumulate(r, &d1);
    rt_oai_accumulate(r, &d2);
    char *b = rt_oai_body(r, why, 7, 3);
    need(b && cm_utf8_valid(b, strlen(b)), "body not UTF-8");
    cJSON *o = cJSON_Parse(b);
    need(cJSON_IsObject(o), "body is not a JSON object");
    need(!strcmp(choice_text(o, chat, false), text), "the body's text differs");
    cJSON_Delete(o);
    cm_free(b);
    rt_oai_resp_free(r);
    rt_oai_free(req);
    free(acc);
    free(text);
    return 0;
}
