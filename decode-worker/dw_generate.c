/*
 * dw_generate.c - `tandem generate`: one request through the same runner
 * and scheduler the workers use, in this process (no router, no network).
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "cm_cli.h"
#include "dw_cmd.h"
#include "dw_runner.h"

static const char *g_model, *g_prompt, *g_prompt_ids, *g_backend;
static bool g_chat, g_json, g_ignore_eos;
static int64_t g_max_tokens, g_top_k, g_logprobs, g_seed;
static double g_temperature, g_top_p, g_min_p;

static const cm_flag_t k_flags[] = {
    {.name = "model",
     .type = CM_FLAG_STRING,
     .dst = &g_model,
     .required = true,
     .help = "model directory (Hugging Face layout)"},
    {.name = "prompt", .type = CM_FLAG_STRING, .dst = &g_prompt, .help = "prompt text"},
    {.name = "prompt-ids",
     .type = CM_FLAG_STRING,
     .dst = &g_prompt_ids,
     .help = "prompt as comma-separated token ids"},
    {.name = "chat",
     .type = CM_FLAG_BOOL,
     .dst = &g_chat,
     .def = "false",
     .help = "wrap the prompt as a user message in the chat template"},
    {.name = "max-tokens",
     .type = CM_FLAG_INT,
     .dst = &g_max_tokens,
     .def = "64",
     .help = "tokens to generate",
     .min = 1,
     .max = 1 << 20},
    {.name = "temperature",
     .type = CM_FLAG_DOUBLE,
     .dst = &g_temperature,
     .def = "0",
     .help = "sampling temperature (0 = greedy)",
     .fmin = 0,
     .fmax = 100},
    {.name = "top-p",
     .type = CM_FLAG_DOUBLE,
     .dst = &g_top_p,
     .def = "1",
     .help = "nucleus",
     .fmin = 0,
     .fmax = 1},
    {.name = "top-k",
     .type = CM_FLAG_INT,
     .dst = &g_top_k,
     .def = "0",
     .help = "top-k (0 = off)",
     .min = 0,
     .max = 1 << 24},
    {.name = "min-p",
     .type = CM_FLAG_DOUBLE,
     .dst = &g_min_p,
     .def = "0",
     .help = "min-p",
     .fmin = 0,
     .fmax = 1},
    {.name = "seed",
     .type = CM_FLAG_INT,
     .dst = &g_seed,
     .def = "-1",
     .help = "sampling seed (-1 = random)",
     .min = -1,
     .max = INT64_MAX},
    {.name = "logprobs",
     .type = CM_FLAG_INT,
     .dst = &g_logprobs,
     .def = "0",
     .help = "top-N logprobs per token in --json output",
     .min = 0,
     .max = 20},
    {.name = "ignore-eos",
     .type = CM_FLAG_BOOL,
     .dst = &g_ignore_eos,
     .def = "false",
     .help = "do not stop at end-of-sequence tokens"},
    {.name = "backend",
     .type = CM_FLAG_CHOICE,
     .dst = &g_backend,
     .def = "cpu",
     .choices = "ref|cpu|cuda",
     .help = "compute backend"},
    {.name = "json",
     .type = CM_FLAG_BOOL,
     .dst = &g_json,
     .def = "false",
     .help = "print a JSON object (ids, text, logprobs) instead of streaming text"},
    {0},
};

typedef struct {
    cJSON *ids, *lps, *tops;
    char *text;
    size_t len;
    dw_finish_t finish;
    cm_status_t error;
    const char *why; /* static text, or NULL */
    bool done;
} gen_t;

static void on_event(void *ud, const dw_event_t *e) {
    gen_t *g = ud;
    for (size_t i = 0; i < e->n; i++) {
        cJSON_AddItemToArray(g->ids, cJSON_CreateNumber(e->ids[i]));
        if (e->logprobs) cJSON_AddItemToArray(g->lps, cJSON_CreateNumber(e->logprobs[i]));
        if (e->top) {
            cJSON *row = cJSON_CreateArray();
            for (size_t k = 0; k < e->top_per_token; k++) {
                cJSON *o = cJSON_CreateObject();
                cJSON_AddNumberToObject(o, "id", e->top[i * e->top_per_token + k].token);
                cJSON_AddNumberToObject(o, "logprob", e->top[i * e->top_per_token + k].logprob);
                cJSON_AddItemToArray(row, o);
            }
            cJSON_AddItemToArray(g->tops, row);
        }
    }
    if (e->text_len) {
        char *t = cm_realloc_array(g->text, g->len + e->text_len + 1, 1);
        if (t) {
            memcpy(t + g->len, e->text, e->text_len);
            g->len += e->text_len;
            t[g->len] = '\0';
            g->text = t;
        }
        if (!g_json) {
            fwrite(e->text, 1, e->text_len, stdout);
            fflush(stdout);
        }
    }
    if (e->finish != DW_FINISH_NONE) {
        g->done = true;
        g->finish = e->finish;
        g->error = e->error;
        g->why = e->why;
    }
}

/* "1, 2,3" -> ids. */
static cm_status_t parse_ids(const char *s, int32_t **out, size_t *n) {
    size_t cap = 16, k = 0;
    int32_t *ids = cm_malloc_array(cap, sizeof *ids);
    while (ids && *s) {
        while (*s == ' ' || *s == ',') s++;
        if (!*s) break;
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 0 || v > INT32_MAX) {
            cm_free(ids);
            return CM_ERR_INVALID_ARG;
        }
        if (k == cap) {
            int32_t *n2 = cm_realloc_array(ids, cap *= 2, sizeof *ids);
            if (!n2) break;
            ids = n2;
        }
        ids[k++] = (int32_t)v;
        s = end;
    }
    if (!ids) return CM_ERR_NO_MEMORY;
    *out = ids;
    *n = k;
    return k ? CM_OK : CM_ERR_INVALID_ARG;
}

int dw_cmd_generate(int argc, char **argv) {
    static const cm_flag_t *const tables[] = {k_flags, NULL};
    const cm_cmd_spec_t spec = {.prog = "tandem generate",
                                .summary = "Generate from a model in this process (the same "
                                           "engine and scheduler the workers run).",
                                .tables = tables};
    int code, npos;
    if (!cm_cli_parse(&spec, argc, argv, NULL, &npos, &code)) return code;
    if (!!g_prompt == !!g_prompt_ids) {
        fprintf(stderr, "tandem generate: give exactly one of --prompt or --prompt-ids\n");
        return CM_EXIT_USAGE;
    }
    eng_backend_kind_t be;
    eng_backend_parse(g_backend, &be);
    gen_t g = {.ids = cJSON_CreateArray(), .lps = cJSON_CreateArray(), .tops = cJSON_CreateArray()};
    char err[512];
    dw_runner_t *r;
    dw_runner_config_t rc = {.model_dir = g_model, .backend = be, .kv_pool_bytes = 64u << 20};
    if (dw_runner_new(&rc, on_event, &g, &r, err, sizeof err) != CM_OK) {
        fprintf(stderr, "tandem generate: %s\n", err);
        return CM_EXIT_FAILURE;
    }
    int rcode = CM_EXIT_FAILURE;
    int32_t *ids = NULL;
    size_t n = 0;
    char *chat = NULL;
    if (g_prompt_ids) {
        if (parse_ids(g_prompt_ids, &ids, &n) != CM_OK) {
            fprintf(stderr, "tandem generate: bad --prompt-ids '%s'\n", g_prompt_ids);
            rcode = CM_EXIT_USAGE;
            goto out;
        }
    } else {
        const tok_t *t = dw_runner_tok(r);
        if (!t) {
            fprintf(stderr, "tandem generate: %s has no tokenizer.json; use --prompt-ids\n",
                    g_model);
            rcode = CM_EXIT_USAGE;
            goto out;
        }
        const char *text = g_prompt;
        size_t tl = strlen(text);
        if (g_chat) {
            tok_msg_t m = {"user", g_prompt};
            if (tok_chat_apply(t, &m, 1, true, &chat, &tl) != CM_OK) {
                fprintf(stderr, "tandem generate: the model has no known chat template\n");
                rcode = CM_EXIT_USAGE;
                goto out;
            }
            text = chat;
        }
        /* A chat template already carries its BOS. */
        if (tok_encode(t, text, tl, !g_chat, &ids, &n) != CM_OK || n == 0) {
            fprintf(stderr, "tandem generate: the prompt is empty\n");
            rcode = CM_EXIT_USAGE;
            goto out;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if ((uint32_t)ids[i] >= dw_runner_vocab(r)) {
            fprintf(stderr, "tandem generate: token id %d is outside the vocabulary (%u)\n", ids[i],
                    dw_runner_vocab(r));
            rcode = CM_EXIT_USAGE;
            goto out;
        }
    }
    dw_request_t q = {.id = 1, .prompt = ids, .n_prompt = (uint32_t)n};
    eng_sampler_params_default(&q.params);
    q.params.temperature = (float)g_temperature;
    q.params.top_p = (float)g_top_p;
    q.params.top_k = (int32_t)g_top_k;
    q.params.min_p = (float)g_min_p;
    q.params.max_tokens = (uint32_t)g_max_tokens;
    q.params.logprobs = g_logprobs > 0 || g_json;
    q.params.top_logprobs = (uint32_t)g_logprobs;
    if (g_seed >= 0)
        q.params.seed = (uint64_t)g_seed;
    else if (getrandom(&q.params.seed, sizeof q.params.seed, 0) != (ssize_t)sizeof q.params.seed)
        q.params.seed = cm_time_wall_ns();
    if (!g_ignore_eos) q.params.n_stop = dw_runner_eos(r, q.params.stop_ids, ENG_SAMPLER_MAX_STOP);
    char perr[256];
    if (eng_sampler_params_validate(&q.params, 0, perr, sizeof perr) != CM_OK) {
        fprintf(stderr, "tandem generate: %s\n", perr); /* e.g. --top-p 0 */
        rcode = CM_EXIT_USAGE;
        goto out;
    }
    cm_status_t st = dw_sched_add(dw_runner_sched(r), &q);
    if (st != CM_OK) {
        fprintf(stderr, "tandem generate: %s (context limit %u tokens)\n", cm_strerror(st),
                dw_runner_max_context(r));
        rcode = CM_EXIT_USAGE;
        goto out;
    }
    while (!g.done && dw_sched_step(dw_runner_sched(r))) {
    }
    if (g.finish == DW_FINISH_ERROR) {
        fprintf(stderr, "tandem generate: %s\n", g.why ? g.why : cm_strerror(g.error));
        goto out;
    }
    if (g_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON *pi = cJSON_AddArrayToObject(o, "prompt_ids");
        for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(pi, cJSON_CreateNumber(ids[i]));
        cJSON_AddItemToObject(o, "token_ids", g.ids);
        /* Escaped here: the text may hold U+0000, where a cJSON string ends. */
        char *quoted = cm_json_quote(g.text ? g.text : "", g.len);
        cJSON_AddItemToObject(o, "text", quoted ? cJSON_CreateRaw(quoted) : cJSON_CreateString(""));
        cm_free(quoted);
        cJSON_AddItemToObject(o, "logprobs", g.lps);
        if (g_logprobs)
            cJSON_AddItemToObject(o, "top_logprobs", g.tops);
        else
            cJSON_Delete(g.tops);
        cJSON_AddStringToObject(o, "finish_reason", g.finish == DW_FINISH_STOP ? "stop" : "length");
        g.ids = g.lps = g.tops = NULL;
        char *s = cJSON_PrintUnformatted(o);
        printf("%s\n", s);
        cJSON_free(s);
        cJSON_Delete(o);
    } else {
        printf("\n");
    }
    rcode = CM_EXIT_OK;
out:
    cJSON_Delete(g.ids);
    cJSON_Delete(g.lps);
    cJSON_Delete(g.tops);
    cm_free(g.text);
    cm_free(ids);
    cm_free(chat);
    dw_runner_free(r);
    return rcode;
}
