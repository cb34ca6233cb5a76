/*
 * bench_workload.c - what `tandem bench serve` sends: prompts made of common
 * words (each one token in the Llama-3, Qwen3 and DeepSeek-V3 tokenizers, as
 * tests/fixtures/gen_bench_words.py checks), with lengths that are fixed,
 * drawn from a ShareGPT-like model, read from a real ShareGPT file, or shaped
 * as multi-turn conversations over a long shared prefix.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "bench_load.h"

const char *const bench_words[] = {
    "the",     "of",        "and",       "to",     "in",      "is",      "was",      "for",
    "on",      "are",       "with",      "as",     "at",      "be",      "by",       "this",
    "have",    "from",      "or",        "one",    "had",     "not",     "but",      "what",
    "all",     "were",      "when",      "we",     "there",   "can",     "an",       "your",
    "which",   "their",     "said",      "if",     "do",      "will",    "each",     "about",
    "how",     "up",        "out",       "them",   "then",    "she",     "many",     "some",
    "so",      "these",     "would",     "other",  "into",    "has",     "more",     "her",
    "two",     "like",      "him",       "see",    "time",    "could",   "no",       "make",
    "than",    "first",     "been",      "its",    "who",     "now",     "people",   "my",
    "made",    "over",      "did",       "down",   "only",    "way",     "find",     "use",
    "may",     "water",     "long",      "little", "very",    "after",   "words",    "called",
    "just",    "where",     "most",      "know",   "get",     "through", "back",     "much",
    "go",      "good",      "new",       "write",  "our",     "me",      "man",      "too",
    "any",     "day",       "same",      "right",  "look",    "think",   "also",     "around",
    "another", "came",      "come",      "work",   "three",   "must",    "because",  "does",
    "part",    "even",      "place",     "well",   "such",    "here",    "take",     "why",
    "help",    "put",       "different", "away",   "again",   "off",     "went",     "old",
    "number",  "great",     "tell",      "men",    "say",     "small",   "every",    "found",
    "still",   "between",   "name",      "should", "home",    "big",     "give",     "air",
    "line",    "set",       "own",       "under",  "read",    "last",    "never",    "us",
    "left",    "end",       "along",     "while",  "might",   "next",    "sound",    "below",
    "saw",     "something", "thought",   "both",   "few",     "those",   "always",   "show",
    "large",   "often",     "together",  "asked",  "house",   "world",   "going",    "want",
    "school",  "important", "until",     "form",   "food",    "keep",    "children", "feet",
    "land",    "side",      "without",   "boy",    "once",    "animal",  "life",     "enough",
    "took",    "four",      "head",      "above",  "kind",    "began",   "almost",   "live",
    "page",    "got",       "earth",     "need",   "far",     "hand",    "high",     "year",
    "mother",  "light",     "country",   "father", "let",     "night",   "picture",  "being",
    "study",   "second",    "soon",      "story",  "since",   "white",   "ever",     "paper",
    "hard",    "near",      "sentence",  "better", "best",    "across",  "during",   "today",
    "however", "sure",      "knew",      "try",    "told",    "young",   "sun",      "thing",
    "whole",   "hear",      "example",   "heard",  "several", "change",  "answer",   "room",
    "sea",     "against",   "top",       "turned", "learn",   "point",   "city",     NULL};
#define N_WORDS (sizeof bench_words / sizeof bench_words[0] - 1)

/* Largest prompt or output length any workload accepts, in tokens. */
enum { WL_MAX_LEN = 1 << 20 };
/* Largest ShareGPT file read (cJSON needs it whole in memory). */
#define WL_MAX_FILE (2ull << 30)

typedef struct {
    char *prompt;
    int32_t input_est, output_len;
} wl_item_t;

struct bench_workload {
    bench_wl_cfg_t cfg;
    wl_item_t *items; /* sharegpt-file only */
    size_t n_items;
    size_t *order; /* shuffled item order */
    char *prefix;  /* multiturn: the shared prefix */
    bench_grade_fn grade;
    void *grade_ctx;
};

cm_status_t bench_words_append(bench_rng_t *r, size_t n, char **buf, size_t *len) {
    if (n == 0) return CM_OK;
    size_t add;
    if (!cm_mul_ok(n, 11, &add) || !cm_add_ok(add, *len + 2, &add)) return CM_ERR_NO_MEMORY;
    char *nb = cm_realloc_array(*buf, add, 1);
    if (!nb) return CM_ERR_NO_MEMORY;
    size_t l = *len;
    for (size_t i = 0; i < n; i++) {
        const char *w = bench_words[bench_rng_below(r, N_WORDS)];
        size_t wl = strlen(w);
        if (l > 0 && nb[l - 1] != ' ' && nb[l - 1] != '\n') nb[l++] = ' ';
        memcpy(nb + l, w, wl);
        l += wl;
    }
    nb[l] = '\0';
    *buf = nb;
    *len = l;
    return CM_OK;
}

/* A string of @n words from @r (heap, caller frees), or NULL. */
static char *wl_words(bench_rng_t *r, size_t n) {
    char *s = NULL;
    size_t l = 0;
    if (n == 0) return cm_strdup("");
    if (bench_words_append(r, n, &s, &l) != CM_OK) {
        cm_free(s);
        return NULL;
    }
    return s;
}

static int32_t wl_lognormal(bench_rng_t *r, double mu, double sigma, int32_t lo, int32_t hi) {
    double x = round(exp(mu + sigma * bench_rng_normal(r)));
    if (!(x >= lo)) return lo; /* also catches NaN */
    if (x > hi) return hi;
    return (int32_t)x;
}

/* Tokens of a text estimated as ceil(bytes / 4), the usual English ratio. */
static int32_t wl_est_tokens(size_t bytes) {
    size_t t = (bytes + 3) / 4;
    return t > WL_MAX_LEN ? WL_MAX_LEN : (int32_t)t;
}

static bool wl_is_human(const char *from) {
    return !strcmp(from, "human") || !strcmp(from, "user");
}
static bool wl_is_model(const char *from) {
    return !strcmp(from, "gpt") || !strcmp(from, "assistant") || !strcmp(from, "chatgpt") ||
           !strcmp(from, "bard") || !strcmp(from, "bing");
}

/*
 * Reads a ShareGPT JSON: an array of {"conversations": [{"from", "value"},
 * ...]}. Each conversation gives one item: its first human message as the
 * prompt and the length of the reply that follows it as the output length.
 * Items with fewer than 4 estimated tokens on either side are skipped, as
 * vLLM's benchmark does.
 */
static cm_status_t wl_load_sharegpt(bench_workload_t *w, const char *path, char *err,
                                    size_t errlen) {
    cm_status_t st = CM_ERR_BAD_FORMAT;
    char *text = NULL;
    cJSON *root = NULL;
    FILE *f = fopen(path, "rb");
    struct stat sb;
    if (!f || fstat(fileno(f), &sb) != 0) {
        snprintf(err, errlen, "cannot open ShareGPT file '%s'", path);
        st = CM_ERR_NOT_FOUND;
        goto cleanup;
    }
    if ((uint64_t)sb.st_size > WL_MAX_FILE) {
        snprintf(err, errlen, "ShareGPT file '%s' is larger than 2 GiB", path);
        st = CM_ERR_TOO_LARGE;
        goto cleanup;
    }
    size_t size = (size_t)sb.st_size;
    text = cm_malloc(size + 1);
    if (!text) {
        st = CM_ERR_NO_MEMORY;
        snprintf(err, errlen, "out of memory reading '%s'", path);
        goto cleanup;
    }
    if (fread(text, 1, size, f) != size) {
        snprintf(err, errlen, "cannot read ShareGPT file '%s'", path);
        st = CM_ERR_IO;
        goto cleanup;
    }
    text[size] = '\0';
    root = cJSON_ParseWithLength(text, size);
    if (!cJSON_IsArray(root)) {
        snprintf(err, errlen, "'%s' is not a ShareGPT JSON array", path);
        goto cleanup;
    }
    size_t n = (size_t)cJSON_GetArraySize(root);
    w->items = cm_calloc(n ? n : 1, sizeof *w->items);
    if (!w->items) {
        st = CM_ERR_NO_MEMORY;
        snprintf(err, errlen, "out of memory");
        goto cleanup;
    }
    const cJSON *conv;
    cJSON_ArrayForEach(conv, root) {
        const cJSON *turns = cJSON_GetObjectItemCaseSensitive(conv, "conversations");
        if (!cJSON_IsArray(turns)) continue;
        const char *prompt = NULL, *reply = NULL;
        const cJSON *t;
        cJSON_ArrayForEach(t, turns) {
            const cJSON *from = cJSON_GetObjectItemCaseSensitive(t, "from");
            const cJSON *value = cJSON_GetObjectItemCaseSensitive(t, "value");
            if (!cJSON_IsString(from) || !cJSON_IsString(value)) break;
            if (!prompt) {
                if (!wl_is_human(from->valuestring)) break;
                prompt = value->valuestring;
            } else {
                if (wl_is_model(from->valuestring)) reply = value->valuestring;
                break;
            }
        }
        if (!prompt || !reply) continue;
        int32_t in = wl_est_tokens(strlen(prompt)), out = wl_est_tokens(strlen(reply));
        if (in < 4 || out < 4) continue;
        wl_item_t *it = &w->items[w->n_items];
        it->prompt = cm_strdup(prompt);
        if (!it->prompt) {
            st = CM_ERR_NO_MEMORY;
            snprintf(err, errlen, "out of memory");
            goto cleanup;
        }
        it->input_est = in;
        it->output_len = out;
        w->n_items++;
    }
    if (w->n_items == 0) {
        snprintf(err, errlen, "'%s' holds no usable conversation (human prompt + reply)", path);
        goto cleanup;
    }
    st = CM_OK;
cleanup:
    cJSON_Delete(root);
    cm_free(text);
    if (f) fclose(f);
    return st;
}

/* The task workload's grader: exact match against the session's answer. */
static cm_status_t wl_task_grade(void *ctx, const bench_session_t *s, size_t turn,
                                 const char *output, size_t len, bool *correct) {
    (void)ctx;
    if (!s->task || turn != 0) return CM_ERR_INVALID_ARG;
    *correct = bench_task_grade(s->task, output, len);
    return CM_OK;
}

cm_status_t bench_workload_new(const bench_wl_cfg_t *cfg, bench_workload_t **out, char *err,
                               size_t errlen) {
    cm_status_t st = CM_ERR_INVALID_ARG;
    bench_workload_t *w = cm_calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return CM_ERR_NO_MEMORY;
    }
    w->cfg = *cfg;
    w->cfg.sharegpt_file = NULL;
    const bench_sharegpt_model_t *m = &cfg->sharegpt;
    switch (cfg->kind) {
    case BENCH_WL_FIXED:
        if (cfg->input_len < 1 || cfg->input_len > WL_MAX_LEN || cfg->output_len < 1 ||
            cfg->output_len > WL_MAX_LEN) {
            snprintf(err, errlen, "input and output lengths must be 1..%d", WL_MAX_LEN);
            goto fail;
        }
        break;
    case BENCH_WL_SHAREGPT:
        if (cfg->sharegpt_file) {
            st = wl_load_sharegpt(w, cfg->sharegpt_file, err, errlen);
            if (st != CM_OK) goto fail;
            w->order = cm_malloc_array(w->n_items, sizeof *w->order);
            if (!w->order) {
                st = CM_ERR_NO_MEMORY;
                snprintf(err, errlen, "out of memory");
                goto fail;
            }
            bench_rng_t r;
            bench_rng_seed(&r, cfg->seed);
            for (size_t i = 0; i < w->n_items; i++) w->order[i] = i;
            for (size_t i = w->n_items; i > 1; i--) { /* Fisher-Yates */
                size_t j = (size_t)bench_rng_below(&r, i);
                size_t t = w->order[i - 1];
                w->order[i - 1] = w->order[j];
                w->order[j] = t;
            }
        } else if (!(m->in_sigma >= 0 && m->out_sigma >= 0 && isfinite(m->in_mu) &&
                     isfinite(m->out_mu) && m->in_min >= 1 && m->in_min <= m->in_max &&
                     m->in_max <= WL_MAX_LEN && m->out_min >= 1 && m->out_min <= m->out_max &&
                     m->out_max <= WL_MAX_LEN)) {
            snprintf(err, errlen, "bad ShareGPT-like length model parameters");
            goto fail;
        }
        break;
    case BENCH_WL_TASK:
        if (cfg->task < BENCH_TASK_RETRIEVAL || cfg->task > BENCH_TASK_COPY || cfg->task_size < 1 ||
            cfg->task_size > 100000) {
            snprintf(err, errlen, "task workload needs a task and a size of 1..100000");
            goto fail;
        }
        w->grade = wl_task_grade;
        break;
    case BENCH_WL_MULTITURN: {
        if (cfg->prefix_len < 0 || cfg->prefix_len > WL_MAX_LEN || cfg->turns < 1 ||
            cfg->turns > 1000 || cfg->turn_len < 1 || cfg->turn_len > WL_MAX_LEN ||
            cfg->output_len < 1 || cfg->output_len > WL_MAX_LEN) {
            snprintf(err, errlen,
                     "multi-turn needs prefix >= 0, 1..1000 turns, turn and answer lengths >= 1");
            goto fail;
        }
        bench_rng_t r;
        bench_rng_seed(&r, cfg->seed ^ 0x5eed5eed5eed5eedull);
        w->prefix = wl_words(&r, (size_t)cfg->prefix_len);
        if (!w->prefix) {
            st = CM_ERR_NO_MEMORY;
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        break;
    }
    default:
        snprintf(err, errlen, "unknown workload kind");
        goto fail;
    }
    if (cfg->max_output_cap < 0) {
        snprintf(err, errlen, "output cap must be >= 0");
        goto fail;
    }
    *out = w;
    return CM_OK;
fail:
    bench_workload_free(w);
    return st;
}

void bench_session_free(bench_session_t *s) {
    if (!s) return;
    if (s->user)
        for (size_t i = 0; i < s->n_turns; i++) cm_free(s->user[i]);
    cm_free(s->user);
    cm_free(s->max_tokens);
    cm_free(s->input_est);
    cm_free(s->system);
    cm_free(s->task);
    cm_free(s);
}

cm_status_t bench_workload_session(bench_workload_t *w, uint64_t index, bench_session_t **out) {
    const bench_wl_cfg_t *cfg = &w->cfg;
    size_t turns = cfg->kind == BENCH_WL_MULTITURN ? (size_t)cfg->turns : 1;
    bench_session_t *s = cm_calloc(1, sizeof *s);
    if (!s) return CM_ERR_NO_MEMORY;
    s->n_turns = turns;
    s->user = cm_calloc(turns, sizeof *s->user);
    s->max_tokens = cm_calloc(turns, sizeof *s->max_tokens);
    s->input_est = cm_calloc(turns, sizeof *s->input_est);
    if (!s->user || !s->max_tokens || !s->input_est) goto oom;
    /* Every session has its own stream, so sessions do not depend on order. */
    bench_rng_t r;
    bench_rng_seed(&r, cfg->seed ^ (index * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull));
    switch (cfg->kind) {
    case BENCH_WL_FIXED:
        s->user[0] = wl_words(&r, (size_t)cfg->input_len);
        s->input_est[0] = cfg->input_len;
        s->max_tokens[0] = cfg->output_len;
        break;
    case BENCH_WL_SHAREGPT:
        if (w->n_items) {
            const wl_item_t *it = &w->items[w->order[index % w->n_items]];
            s->user[0] = cm_strdup(it->prompt);
            s->input_est[0] = it->input_est;
            s->max_tokens[0] = it->output_len;
        } else {
            const bench_sharegpt_model_t *m = &cfg->sharegpt;
            int32_t in = wl_lognormal(&r, m->in_mu, m->in_sigma, m->in_min, m->in_max);
            s->max_tokens[0] = wl_lognormal(&r, m->out_mu, m->out_sigma, m->out_min, m->out_max);
            s->user[0] = wl_words(&r, (size_t)in);
            s->input_est[0] = in;
        }
        break;
    case BENCH_WL_MULTITURN:
        s->system = cm_strdup(w->prefix);
        if (!s->system) goto oom;
        s->system_est = cfg->prefix_len;
        for (size_t t = 0; t < turns; t++) {
            s->user[t] = wl_words(&r, (size_t)cfg->turn_len);
            s->input_est[t] = cfg->turn_len;
            s->max_tokens[t] = cfg->output_len;
        }
        break;
    case BENCH_WL_TASK: {
        char *answer = NULL;
        uint32_t size = (uint32_t)cfg->task_size;
        if (bench_task_make((bench_task_t)cfg->task, size, cfg->seed, index, &s->user[0],
                            &answer) != CM_OK)
            goto oom;
        s->task = answer;
        /* Byte-level BPE: never more tokens than bytes; room for the EOS. */
        s->max_tokens[0] = (int32_t)strlen(answer) + 4;
        s->input_est[0] = (int32_t)(cfg->task == BENCH_TASK_RETRIEVAL ? size * 7 + 20
                                    : cfg->task == BENCH_TASK_COPY    ? size + 16
                                                                      : 2 * size + 8);
        break;
    }
    }
    for (size_t t = 0; t < turns; t++) {
        if (!s->user[t]) goto oom;
        if (cfg->max_output_cap > 0 && s->max_tokens[t] > cfg->max_output_cap)
            s->max_tokens[t] = cfg->max_output_cap;
    }
    *out = s;
    return CM_OK;
oom:
    bench_session_free(s);
    return CM_ERR_NO_MEMORY;
}

void bench_workload_set_grader(bench_workload_t *w, bench_grade_fn fn, void *ctx) {
    w->grade = fn;
    w->grade_ctx = fn ? ctx : NULL;
}

bench_grade_fn bench_workload_grader(const bench_workload_t *w, void **ctx) {
    if (ctx) *ctx = w->grade_ctx;
    return w->grade;
}

const char *bench_workload_name(const bench_workload_t *w) {
    switch (w->cfg.kind) {
    case BENCH_WL_FIXED:
        return "fixed";
    case BENCH_WL_SHAREGPT:
        return w->n_items ? "sharegpt-file" : "sharegpt";
    case BENCH_WL_MULTITURN:
        return "multiturn";
    case BENCH_WL_TASK:
        return "task";
    }
    return "unknown";
}

void bench_workload_free(bench_workload_t *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_items; i++) cm_free(w->items[i].prompt);
    cm_free(w->items);
    cm_free(w->order);
    cm_free(w->prefix);
    cm_free(w);
}
