/*
 * bench_chunk.c - decodes the JSON payload of one OpenAI streaming event
 * (completions or chat completions) into what a load generator measures:
 * the text delta, the finish flag, usage counts and in-stream errors.
 */
#include <cjson/cJSON.h>
#include <string.h>

#include "bench_load.h"

/* A number field as int64, or -1 when absent or not a non-negative number. */
static int64_t chunk_count(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 9.0e15) return -1;
    return (int64_t)v->valuedouble;
}

cm_status_t bench_chunk_parse(char *data, size_t len, bool chat, bench_chunk_t *out) {
    size_t a = 0, b = len;
    while (a < b && (data[a] == ' ' || data[a] == '\t' || data[a] == '\n')) a++;
    while (b > a && (data[b - 1] == ' ' || data[b - 1] == '\t' || data[b - 1] == '\n')) b--;
    if (b - a == 6 && !memcmp(data + a, "[DONE]", 6)) {
        bench_chunk_t c = {.kind = BENCH_CHUNK_DONE, .prompt_tokens = -1, .completion_tokens = -1};
        *out = c;
        return CM_OK;
    }
    cJSON *root = cJSON_ParseWithLength(data, len);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return CM_ERR_PROTOCOL;
    }
    bench_chunk_t c = {.kind = BENCH_CHUNK_OTHER, .prompt_tokens = -1, .completion_tokens = -1};
    const cJSON *usage = cJSON_GetObjectItemCaseSensitive(root, "usage");
    if (cJSON_IsObject(usage)) {
        c.prompt_tokens = chunk_count(usage, "prompt_tokens");
        c.completion_tokens = chunk_count(usage, "completion_tokens");
    }
    const cJSON *obj = cJSON_GetObjectItemCaseSensitive(root, "object");
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
    if (cJSON_GetObjectItemCaseSensitive(root, "error") ||
        (cJSON_IsString(obj) && !strcmp(obj->valuestring, "error"))) {
        c.kind = BENCH_CHUNK_ERROR;
    } else if (cJSON_IsArray(choices) && cJSON_GetArraySize(choices) > 0) {
        const cJSON *ch = cJSON_GetArrayItem(choices, 0);
        const cJSON *text = NULL;
        if (chat) {
            const cJSON *delta = cJSON_GetObjectItemCaseSensitive(ch, "delta");
            text = cJSON_GetObjectItemCaseSensitive(delta, "content");
            if (!cJSON_IsString(text))
                text = cJSON_GetObjectItemCaseSensitive(delta, "reasoning_content");
        } else {
            text = cJSON_GetObjectItemCaseSensitive(ch, "text");
        }
        c.finished = cJSON_IsString(cJSON_GetObjectItemCaseSensitive(ch, "finish_reason"));
        if (cJSON_IsString(text)) {
            c.kind = BENCH_CHUNK_DELTA;
            /* The unescaped text is never longer than its JSON source. */
            size_t n = strlen(text->valuestring);
            if (n > len) n = len;
            memcpy(data, text->valuestring, n);
            data[n] = '\0';
            c.text = data;
            c.text_len = n;
        } else if (c.finished) {
            c.kind = BENCH_CHUNK_DELTA;
            data[0] = '\0';
            c.text = data;
        }
    } else if (c.prompt_tokens >= 0 || c.completion_tokens >= 0) {
        c.kind = BENCH_CHUNK_USAGE;
    }
    cJSON_Delete(root);
    *out = c;
    return CM_OK;
}
