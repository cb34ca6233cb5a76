/*
 * tok_chat.c - chat templates rendered in C, equal to what transformers'
 * apply_chat_template produces from the published Jinja templates for text
 * messages (system, user, assistant): ChatML as in Qwen3 (incl. its
 * <think> handling of assistant turns after the last user query), Llama 3
 * (BOS, header ids, trimmed content), DeepSeek V3 (BOS, merged system
 * prompts, full-width role markers), Mistral/Mixtral ([INST] turns, no
 * system role; add_generation_prompt changes nothing there).
 */
#include <string.h>

#include "tok_impl.h"

typedef struct {
    char *p;
    size_t n, cap;
    bool ok;
} sb_t;

static void put(sb_t *b, const char *s, size_t n) {
    if (!b->ok) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *np = cm_realloc_array(b->p, cap, 1);
        if (!np) {
            b->ok = false;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void puts_(sb_t *b, const char *s) { put(b, s, strlen(s)); }

static bool is_ws(char c) {
    return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

/* Python str.strip() of ASCII whitespace / of one character. */
static void put_stripped(sb_t *b, const char *s, bool (*drop)(char), bool left, bool right) {
    size_t a = 0, e = strlen(s);
    while (left && a < e && drop(s[a])) a++;
    while (right && e > a && drop(s[e - 1])) e--;
    put(b, s + a, e - a);
}

static bool is_nl(char c) { return c == '\n'; }

static void chatml(const tok_msg_t *m, size_t n, bool gen, sb_t *b) {
    size_t start = 0;
    if (n && !strcmp(m[0].role, "system")) {
        puts_(b, "<|im_start|>system\n");
        puts_(b, m[0].content);
        puts_(b, "<|im_end|>\n");
        start = 1;
    }
    /* The last user query: assistant turns after it keep their reasoning. */
    size_t last_query = n ? n - 1 : 0;
    for (size_t i = n; i-- > 0;) {
        if (!strcmp(m[i].role, "user")) {
            last_query = i;
            break;
        }
    }
    for (size_t i = start; i < n; i++) {
        const char *c = m[i].content;
        if (!strcmp(m[i].role, "user") || !strcmp(m[i].role, "system")) {
            puts_(b, "<|im_start|>");
            puts_(b, m[i].role);
            puts_(b, "\n");
            puts_(b, c);
            puts_(b, "<|im_end|>\n");
            continue;
        }
        /* assistant */
        const char *content = c;
        const char *reason = "", *reason_end = "";
        const char *close = NULL;
        for (const char *p = strstr(c, "</think>"); p; p = strstr(p + 1, "</think>")) close = p;
        if (close) {
            content = close + 8;
            while (*content == '\n') content++;
            /* reasoning = before the first </think>, after the last <think> */
            const char *first_close = strstr(c, "</think>");
            const char *open = NULL;
            for (const char *p = c; (p = strstr(p, "<think>")) && p < first_close; p++) open = p;
            reason = open ? open + 7 : c;
            reason_end = first_close;
        }
        puts_(b, "<|im_start|>assistant\n");
        bool has_reason = reason_end > reason;
        if (i > last_query && (i == n - 1 || has_reason)) {
            puts_(b, "<think>\n");
            /* reasoning.strip('\n') */
            const char *a = reason, *e = reason_end;
            while (a < e && *a == '\n') a++;
            while (e > a && e[-1] == '\n') e--;
            put(b, a, (size_t)(e - a));
            puts_(b, "\n</think>\n\n");
            put_stripped(b, content, is_nl, true, false);
        } else {
            puts_(b, content);
        }
        puts_(b, "<|im_end|>\n");
    }
    if (gen) puts_(b, "<|im_start|>assistant\n");
}

static void llama3(const tok_t *t, const tok_msg_t *m, size_t n, bool gen, sb_t *b) {
    for (size_t i = 0; i < n; i++) {
        if (i == 0 && t->bos_str) puts_(b, t->bos_str);
        puts_(b, "<|start_header_id|>");
        puts_(b, m[i].role);
        puts_(b, "<|end_header_id|>\n\n");
        put_stripped(b, m[i].content, is_ws, true, true);
        puts_(b, "<|eot_id|>");
    }
    if (gen) puts_(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static void deepseek(const tok_t *t, const tok_msg_t *m, size_t n, bool gen, sb_t *b) {
    if (t->bos_str) puts_(b, t->bos_str);
    bool first = true;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(m[i].role, "system")) continue;
        if (!first) puts_(b, "\n\n");
        puts_(b, m[i].content);
        first = false;
    }
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(m[i].role, "user")) {
            puts_(b, "<\xef\xbd\x9cUser\xef\xbd\x9c>");
            puts_(b, m[i].content);
        } else if (!strcmp(m[i].role, "assistant")) {
            puts_(b, "<\xef\xbd\x9c"
                     "Assistant\xef\xbd\x9c>");
            puts_(b, m[i].content);
            puts_(b, "<\xef\xbd\x9c"
                     "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>");
        }
    }
    if (gen)
        puts_(b, "<\xef\xbd\x9c"
                 "Assistant\xef\xbd\x9c>");
}

/* Mistral 7B v0.1 / Mixtral-8x7B-Instruct: user and assistant strictly
 * alternating from a user turn, no system role (the template raises). */
static bool mistral(const tok_t *t, const tok_msg_t *m, size_t n, sb_t *b) {
    if (t->bos_str) puts_(b, t->bos_str);
    for (size_t i = 0; i < n; i++) {
        bool user = !strcmp(m[i].role, "user");
        if (user != (i % 2 == 0) || !strcmp(m[i].role, "system")) return false;
        if (user) {
            puts_(b, "[INST] ");
            puts_(b, m[i].content);
            puts_(b, " [/INST]");
        } else {
            puts_(b, m[i].content);
            if (t->eos_str) puts_(b, t->eos_str);
        }
    }
    return true;
}

cm_status_t tok_chat_apply(const tok_t *t, const tok_msg_t *msgs, size_t n,
                           bool add_generation_prompt, char **out, size_t *len) {
    for (size_t i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content ||
            (strcmp(msgs[i].role, "system") && strcmp(msgs[i].role, "user") &&
             strcmp(msgs[i].role, "assistant")))
            return CM_ERR_INVALID_ARG;
    sb_t b = {.ok = true};
    switch (t->chat) {
    case TOK_CHAT_CHATML:
        chatml(msgs, n, add_generation_prompt, &b);
        break;
    case TOK_CHAT_LLAMA3:
        llama3(t, msgs, n, add_generation_prompt, &b);
        break;
    case TOK_CHAT_DEEPSEEK:
        deepseek(t, msgs, n, add_generation_prompt, &b);
        break;
    case TOK_CHAT_MISTRAL:
        if (!mistral(t, msgs, n, &b)) {
            cm_free(b.p);
            return CM_ERR_INVALID_ARG;
        }
        break;
    default:
        return CM_ERR_UNSUPPORTED;
    }
    put(&b, "", 0);
    if (!b.ok || !b.p) {
        cm_free(b.p);
        if (!b.ok) return CM_ERR_NO_MEMORY;
        b.p = cm_strdup("");
        if (!b.p) return CM_ERR_NO_MEMORY;
    }
    *out = b.p;
    *len = b.n;
    return CM_OK;
}
