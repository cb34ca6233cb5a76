/*
 * bench_accuracy.c - `tandem bench accuracy`: Pass@1 of a model on the
 * demo model's checkable tasks (retrieval, addition, copy), either through
 * an OpenAI-compatible endpoint (--url: chat completions, greedy) or in
 * this process (--model-dir: the runner the workers use, no router).
 *
 * Problems are fresh and seeded (bench_tasks.c); grading is exact. The
 * per-item outputs go to --json so two runs (cluster vs in-process) can be
 * compared answer by answer.
 */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "bench_load.h"
#include "cm_cli.h"
#include "dw_runner.h"

static const char *g_task, *g_url, *g_model, *g_model_dir, *g_json, *g_backend;
static int64_t g_n, g_context, g_digits, g_seed, g_conc, g_timeout_s, g_show;
static double g_min_pass;

static const cm_flag_t k_flags[] = {
    {.name = "task",
     .type = CM_FLAG_CHOICE,
     .dst = &g_task,
     .def = "retrieval",
     .choices = "retrieval|addition|copy",
     .help = "which task"},
    {.name = "n",
     .type = CM_FLAG_INT,
     .dst = &g_n,
     .def = "100",
     .help = "problems",
     .min = 1,
     .max = 1000000},
    {.name = "context",
     .type = CM_FLAG_INT,
     .dst = &g_context,
     .def = "512",
     .help = "target tokens per problem (retrieval: prompt; copy: prompt + answer)",
     .min = 16,
     .max = 1 << 20},
    {.name = "digits",
     .type = CM_FLAG_INT,
     .dst = &g_digits,
     .def = "4",
     .help = "addition: digits per operand",
     .min = 1,
     .max = 18},
    {.name = "seed",
     .type = CM_FLAG_INT,
     .dst = &g_seed,
     .def = "1",
     .help = "problem stream (same seed = same problems)",
     .min = 0,
     .max = INT64_MAX},
    {.name = "url",
     .type = CM_FLAG_STRING,
     .dst = &g_url,
     .def = "http://127.0.0.1:8000",
     .help = "OpenAI-compatible server (ignored with --model-dir)"},
    {.name = "model",
     .type = CM_FLAG_STRING,
     .dst = &g_model,
     .def = "demo",
     .help = "model name sent in each request"},
    {.name = "model-dir",
     .type = CM_FLAG_STRING,
     .dst = &g_model_dir,
     .help = "run in this process on this model folder instead of --url"},
    {.name = "backend",
     .type = CM_FLAG_CHOICE,
     .dst = &g_backend,
     .def = "cpu",
     .choices = "ref|cpu|cuda",
     .help = "compute backend (--model-dir)"},
    {.name = "concurrency",
     .type = CM_FLAG_INT,
     .dst = &g_conc,
     .def = "8",
     .help = "problems in flight",
     .min = 1,
     .max = 4096},
    {.name = "timeout",
     .type = CM_FLAG_INT,
     .dst = &g_timeout_s,
     .def = "300",
     .help = "seconds per request (--url)",
     .min = 1,
     .max = 86400},
    {.name = "json",
     .type = CM_FLAG_STRING,
     .dst = &g_json,
     .help = "write results and items here"},
    {.name = "show",
     .type = CM_FLAG_INT,
     .dst = &g_show,
     .def = "3",
     .help = "print this many wrong answers",
     .min = 0,
     .max = 1000000},
    {.name = "min-pass",
     .type = CM_FLAG_DOUBLE,
     .dst = &g_min_pass,
     .def = "0",
     .help = "exit 1 when Pass@1 is below this",
     .fmin = 0,
     .fmax = 1},
    {0},
};

typedef struct {
    char *prompt, *answer;
    char *out; /* model output (content) */
    size_t out_len, out_cap;
    uint32_t prompt_tokens;
    bool done, correct;
    const char *error; /* NULL, or why no answer came */
    /* --url */
    char *body;
    size_t body_len, body_cap;
    int status;
} item_t;

typedef struct {
    item_t *items;
    size_t n, next, done, running;
    bench_task_t task;
    /* --url */
    uv_loop_t loop;
    bench_http_t *http;
    char path[300];
    bool failed;
} acc_t;

static bool grow_append(char **buf, size_t *len, size_t *cap, const char *s, size_t n) {
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < *len + n + 1) c *= 2;
        char *p = cm_realloc_array(*buf, c, 1);
        if (!p) return false;
        *buf = p;
        *cap = c;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = '\0';
    return true;
}

static uint32_t max_tokens_for(const item_t *it) {
    /* Byte-level BPE never has more tokens than bytes; leave room for EOS. */
    return (uint32_t)strlen(it->answer) + 4;
}

static void finish_item(acc_t *a, item_t *it) {
    it->done = true;
    it->correct = !it->error && bench_task_grade(it->answer, it->out ? it->out : "", it->out_len);
    a->done++;
    a->running--;
}

/* ---- through an endpoint ------------------------------------------------ */

static void url_issue(acc_t *a);

static void url_head(void *ud, int status, uint64_t t_ns) {
    (void)t_ns;
    ((item_t *)ud)->status = status;
}

static int url_body(void *ud, const char *data, size_t len, uint64_t t_ns) {
    (void)t_ns;
    item_t *it = ud;
    if (it->body_len + len > (64u << 20)) return 1;
    return grow_append(&it->body, &it->body_len, &it->body_cap, data, len) ? 0 : 1;
}

static acc_t *g_acc; /* the run the HTTP callbacks belong to */

static void url_parse_reply(item_t *it) {
    cJSON *j = cJSON_ParseWithLength(it->body ? it->body : "", it->body_len);
    const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(ch, "message");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(msg, "content");
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "usage"),
                                                       "prompt_tokens");
    if (!cJSON_IsString(content)) {
        it->error = "reply has no choices[0].message.content";
    } else if (!grow_append(&it->out, &it->out_len, &it->out_cap, content->valuestring,
                            strlen(content->valuestring))) {
        it->error = "out of memory";
    }
    if (cJSON_IsNumber(pt)) it->prompt_tokens = (uint32_t)pt->valuedouble;
    cJSON_Delete(j);
}

static void url_done(void *ud, bench_err_t err, int status, uint64_t t_ns) {
    (void)t_ns;
    item_t *it = ud;
    acc_t *a = g_acc;
    if (err != BENCH_ERR_NONE)
        it->error = bench_err_name(err);
    else if (status != 200)
        it->error = bench_err_name(bench_err_from_status(status));
    else
        url_parse_reply(it);
    if (it->error && it->body && it->body_len) {
        /* keep the server's error body as the output, for the report */
        it->out_len = 0;
        grow_append(&it->out, &it->out_len, &it->out_cap, it->body, it->body_len);
    }
    finish_item(a, it);
    url_issue(a);
    /* Idle keep-alive connections would hold the loop open. */
    if (a->done == a->n) uv_stop(&a->loop);
}

static void url_issue(acc_t *a) {
    static const bench_http_cb_t cb = {url_head, url_body, url_done};
    while (!a->failed && a->next < a->n && a->running < (size_t)g_conc) {
        item_t *it = &a->items[a->next++];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "model", g_model);
        cJSON *msgs = cJSON_AddArrayToObject(o, "messages");
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "user");
        cJSON_AddStringToObject(m, "content", it->prompt);
        cJSON_AddItemToArray(msgs, m);
        cJSON_AddNumberToObject(o, "max_tokens", max_tokens_for(it));
        cJSON_AddNumberToObject(o, "temperature", 0);
        cJSON_AddBoolToObject(o, "stream", false);
        char *body = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        a->running++;
        cm_status_t st = body ? bench_http_post(a->http, a->path, body, strlen(body),
                                                (uint64_t)g_timeout_s * 1000, &cb, it)
                              : CM_ERR_NO_MEMORY;
        cJSON_free(body);
        if (st != CM_OK) {
            it->error = cm_strerror(st);
            finish_item(a, it);
        }
    }
}

static cm_status_t run_url(acc_t *a, char *err, size_t errlen) {
    char base[256];
    uv_loop_init(&a->loop);
    g_acc = a;
    cm_status_t st = bench_http_open_url(&a->loop, g_url, (size_t)g_conc, &a->http, base,
                                         sizeof base, err, errlen);
    if (st == CM_OK) {
        snprintf(a->path, sizeof a->path, "%s/v1/chat/completions", base);
        url_issue(a);
        if (a->done < a->n) uv_run(&a->loop, UV_RUN_DEFAULT);
        bench_http_free(a->http);
        uv_run(&a->loop, UV_RUN_DEFAULT);
    }
    uv_loop_close(&a->loop);
    return st;
}

/* ---- in this process ------------------------------------------------------ */

static void local_event(void *ud, const dw_event_t *e) {
    acc_t *a = ud;
    if (e->id == 0 || e->id > a->n) return;
    item_t *it = &a->items[e->id - 1];
    if (e->text_len && !grow_append(&it->out, &it->out_len, &it->out_cap, e->text, e->text_len))
        it->error = "out of memory";
    if (e->finish != DW_FINISH_NONE) {
        if (e->finish == DW_FINISH_ERROR) it->error = cm_strerror(e->error);
        it->prompt_tokens = e->prompt_tokens;
        finish_item(a, it);
    }
}

static cm_status_t run_local(acc_t *a, char *err, size_t errlen) {
    eng_backend_kind_t be;
    eng_backend_parse(g_backend, &be);
    dw_runner_t *r;
    dw_runner_config_t rc = {.model_dir = g_model_dir, .backend = be};
    cm_status_t st = dw_runner_new(&rc, local_event, a, &r, err, errlen);
    if (st != CM_OK) return st;
    const tok_t *t = dw_runner_tok(r);
    if (!t) {
        snprintf(err, errlen, "%s has no tokenizer.json", g_model_dir);
        dw_runner_free(r);
        return CM_ERR_INVALID_ARG;
    }
    int32_t **ids = cm_calloc(a->n, sizeof *ids);
    if (!ids) {
        dw_runner_free(r);
        return CM_ERR_NO_MEMORY;
    }
    while (a->done < a->n) {
        while (a->next < a->n && a->running < (size_t)g_conc) {
            size_t i = a->next++;
            item_t *it = &a->items[i];
            a->running++;
            char *chat = NULL;
            size_t cl = 0, n = 0;
            tok_msg_t m = {"user", it->prompt};
            st = tok_chat_apply(t, &m, 1, true, &chat, &cl);
            if (st == CM_OK) st = tok_encode(t, chat, cl, false, &ids[i], &n);
            cm_free(chat);
            dw_request_t q = {.id = i + 1, .prompt = ids[i], .n_prompt = (uint32_t)n};
            eng_sampler_params_default(&q.params);
            q.params.temperature = 0;
            q.params.max_tokens = max_tokens_for(it);
            q.params.n_stop = dw_runner_eos(r, q.params.stop_ids, ENG_SAMPLER_MAX_STOP);
            if (st == CM_OK) st = dw_sched_add(dw_runner_sched(r), &q);
            if (st != CM_OK) {
                it->error = cm_strerror(st);
                finish_item(a, it);
            }
        }
        if (!dw_sched_step(dw_runner_sched(r)) && a->done < a->n && a->running) {
            snprintf(err, errlen, "the scheduler stopped with %zu problems unfinished", a->running);
            st = CM_ERR_INTERNAL;
            break;
        }
        st = CM_OK;
    }
    for (size_t i = 0; i < a->n; i++) cm_free(ids[i]);
    cm_free(ids);
    dw_runner_free(r);
    return st;
}

/* ---- report ----------------------------------------------------------------- */

static int write_json(const acc_t *a, size_t k, size_t errors, double lo, double hi, double mean_pt,
                      uint32_t size) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "task", bench_task_name(a->task));
    cJSON_AddStringToObject(o, "mode", g_model_dir ? "in-process" : "url");
    cJSON_AddStringToObject(o, "target", g_model_dir ? g_model_dir : g_url);
    cJSON_AddNumberToObject(o, "n", (double)a->n);
    cJSON_AddNumberToObject(o, "seed", (double)g_seed);
    cJSON_AddNumberToObject(o, "context", (double)g_context);
    cJSON_AddNumberToObject(o, "size", size);
    cJSON_AddNumberToObject(o, "correct", (double)k);
    cJSON_AddNumberToObject(o, "errors", (double)errors);
    cJSON_AddNumberToObject(o, "pass_at_1", (double)k / (double)a->n);
    cJSON_AddNumberToObject(o, "ci95_low", lo);
    cJSON_AddNumberToObject(o, "ci95_high", hi);
    cJSON_AddNumberToObject(o, "prompt_tokens_mean", mean_pt);
    cJSON *items = cJSON_AddArrayToObject(o, "items");
    for (size_t i = 0; i < a->n; i++) {
        const item_t *it = &a->items[i];
        cJSON *x = cJSON_CreateObject();
        cJSON_AddNumberToObject(x, "index", (double)i);
        cJSON_AddStringToObject(x, "prompt", it->prompt);
        cJSON_AddStringToObject(x, "answer", it->answer);
        cJSON_AddStringToObject(x, "output", it->out ? it->out : "");
        cJSON_AddBoolToObject(x, "correct", it->correct);
        cJSON_AddNumberToObject(x, "prompt_tokens", it->prompt_tokens);
        if (it->error) cJSON_AddStringToObject(x, "error", it->error);
        cJSON_AddItemToArray(items, x);
    }
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    FILE *f = s ? fopen(g_json, "w") : NULL;
    int ok = f && fputs(s, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f) != 0) ok = 0;
    cJSON_free(s);
    if (!ok) fprintf(stderr, "tandem bench accuracy: cannot write %s\n", g_json);
    return ok;
}

int bench_accuracy_main(int argc, char **argv) {
    static const cm_flag_t *const tables[] = {k_flags, NULL};
    const cm_cmd_spec_t spec = {
        .prog = "tandem bench accuracy",
        .summary = "Pass@1 on seeded checkable tasks (retrieval, addition, copy), through an "
                   "OpenAI-compatible endpoint or in this process.",
        .tables = tables};
    int code, npos;
    if (!cm_cli_parse(&spec, argc, argv, NULL, &npos, &code)) return code;
    acc_t a = {.n = (size_t)g_n};
    bench_task_parse(g_task, &a.task);
    uint32_t size = bench_task_size(a.task, (uint32_t)g_context, (uint32_t)g_digits);
    a.items = cm_calloc(a.n, sizeof *a.items);
    if (!a.items) {
        fprintf(stderr, "tandem bench accuracy: out of memory\n");
        return CM_EXIT_FAILURE;
    }
    int rc = CM_EXIT_FAILURE;
    for (size_t i = 0; i < a.n; i++) {
        if (bench_task_make(a.task, size, (uint64_t)g_seed, i, &a.items[i].prompt,
                            &a.items[i].answer) != CM_OK) {
            fprintf(stderr, "tandem bench accuracy: out of memory\n");
            goto out;
        }
    }
    char err[512] = "";
    uint64_t t0 = cm_time_mono_ns();
    cm_status_t st = g_model_dir ? run_local(&a, err, sizeof err) : run_url(&a, err, sizeof err);
    double secs = (double)(cm_time_mono_ns() - t0) / 1e9;
    if (st != CM_OK) {
        fprintf(stderr, "tandem bench accuracy: %s\n", err[0] ? err : cm_strerror(st));
        goto out;
    }
    size_t k = 0, errors = 0, shown = 0;
    double pt = 0;
    for (size_t i = 0; i < a.n; i++) {
        const item_t *it = &a.items[i];
        k += it->correct;
        errors += it->error != NULL;
        pt += it->prompt_tokens;
        if (!it->correct && shown < (size_t)g_show) {
            shown++;
            printf("  wrong #%zu: want '%s' got '%.*s'%s%s\n", i, it->answer,
                   (int)(it->out_len > 200 ? 200 : it->out_len), it->out ? it->out : "",
                   it->error ? " error: " : "", it->error ? it->error : "");
        }
    }
    double lo, hi;
    bench_wilson95(k, a.n, &lo, &hi);
    printf("%s size=%u (context %lld) n=%zu: Pass@1 %.3f (95%% CI %.3f-%.3f), %zu errors, "
           "mean prompt %.0f tokens, %.1f s [%s]\n",
           bench_task_name(a.task), size, (long long)g_context, a.n, (double)k / (double)a.n, lo,
           hi, errors, pt / (double)a.n, secs, g_model_dir ? "in-process" : g_url);
    if (g_json && !write_json(&a, k, errors, lo, hi, pt / (double)a.n, size)) goto out;
    if (errors) {
        fprintf(stderr, "tandem bench accuracy: %zu problems got no answer\n", errors);
        goto out;
    }
    rc = (double)k / (double)a.n + 1e-12 < g_min_pass ? CM_EXIT_FAILURE : CM_EXIT_OK;
    if (rc != CM_EXIT_OK)
        fprintf(stderr, "tandem bench accuracy: Pass@1 %.3f is below --min-pass %.3f\n",
                (double)k / (double)a.n, g_min_pass);
out:
    for (size_t i = 0; i < a.n; i++) {
        cm_free(a.items[i].prompt);
        cm_free(a.items[i].answer);
        cm_free(a.items[i].out);
        cm_free(a.items[i].body);
    }
    cm_free(a.items);
    return rc;
}
