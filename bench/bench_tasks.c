/*
 * bench_tasks.c - the demo model's checkable tasks: seeded problem
 * generators and exact grading. The formats match scripts/demo/tasks.py,
 * which the model was trained on; problems here come from their own seed
 * stream, so evaluation never replays training data.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "bench_load.h"

static const char k_consonants[] = "bdfgklmnprstvz";
static const char k_vowels[] = "aeiou";

cm_status_t bench_task_parse(const char *name, bench_task_t *out) {
    if (!strcmp(name, "retrieval"))
        *out = BENCH_TASK_RETRIEVAL;
    else if (!strcmp(name, "addition"))
        *out = BENCH_TASK_ADDITION;
    else if (!strcmp(name, "copy"))
        *out = BENCH_TASK_COPY;
    else
        return CM_ERR_INVALID_ARG;
    return CM_OK;
}

const char *bench_task_name(bench_task_t t) {
    return t == BENCH_TASK_RETRIEVAL ? "retrieval" : t == BENCH_TASK_ADDITION ? "addition" : "copy";
}

uint32_t bench_task_size(bench_task_t t, uint32_t context, uint32_t digits) {
    uint32_t n;
    switch (t) {
    case BENCH_TASK_RETRIEVAL:
        /* ~20 tokens of template and question, 2 per " key=value"
         * (" fuz", "=tam" in the demo vocabulary). At most 900 keys:
         * there are 980 distinct words. */
        n = context > 20 ? (context - 20) / 2 : 1;
        if (n > 900) n = 900;
        break;
    case BENCH_TASK_COPY:
        /* ~16 tokens of template, 1 per word, each word twice. */
        n = context > 16 ? (context - 16) / 2 : 1;
        break;
    default:
        n = digits;
        break;
    }
    return n ? n : 1;
}

/* A made-up CVC word ("zob", 980 of them: one token each in the demo
 * model's vocabulary), written to w[0..2], NUL at w[3]. */
static void task_word(bench_rng_t *r, char w[4]) {
    for (int i = 0; i < 3; i++)
        w[i] = (i & 1) ? k_vowels[bench_rng_below(r, 5)] : k_consonants[bench_rng_below(r, 14)];
    w[3] = '\0';
}

typedef struct {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf_t;

static void sb_add(sbuf_t *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = cm_realloc_array(b->p, cap, 1);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(sbuf_t *b, const char *s) { sb_add(b, s, strlen(s)); }

static void sb_fmt_u64(sbuf_t *b, uint64_t v) {
    char t[24];
    int n = snprintf(t, sizeof t, "%llu", (unsigned long long)v);
    sb_add(b, t, (size_t)n);
}

static uint64_t task_operand(bench_rng_t *r, uint32_t digits) {
    uint64_t lo = 1, hi;
    for (uint32_t i = 1; i < digits; i++) lo *= 10;
    hi = lo * 10 - 1;
    if (digits == 1) lo = 0;
    return lo + bench_rng_below(r, hi - lo + 1);
}

cm_status_t bench_task_make(bench_task_t t, uint32_t size, uint64_t seed, uint64_t index,
                            char **prompt, char **answer) {
    bench_rng_t r;
    bench_rng_seed(&r, seed ^ (index + 1) * 0x9E3779B97F4A7C15ull);
    sbuf_t p = {0}, a = {0};
    if (size == 0) size = 1;
    if (t == BENCH_TASK_RETRIEVAL) {
        if (size > 900) size = 900; /* distinct keys */
        char(*keys)[4] = cm_calloc(size, sizeof *keys);
        if (!keys) return CM_ERR_NO_MEMORY;
        for (uint32_t i = 0; i < size; i++) {
            bool dup;
            do { /* distinct keys */
                task_word(&r, keys[i]);
                dup = false;
                for (uint32_t j = 0; j < i && !dup; j++) dup = !memcmp(keys[j], keys[i], 3);
            } while (dup);
        }
        uint32_t q = (uint32_t)bench_rng_below(&r, size);
        sb_str(&p, "Records:");
        for (uint32_t i = 0; i < size; i++) {
            char v[4];
            task_word(&r, v);
            sb_str(&p, " ");
            sb_str(&p, keys[i]);
            sb_str(&p, "=");
            sb_str(&p, v);
            if (i == q) { /* the reply restates the record: "fuz=tam" */
                sb_str(&a, keys[i]);
                sb_str(&a, "=");
                sb_str(&a, v);
            }
        }
        sb_str(&p, "\nWhat is the value of ");
        sb_str(&p, keys[q]);
        sb_str(&p, "?");
        cm_free(keys);
    } else if (t == BENCH_TASK_ADDITION) {
        if (size > 18) size = 18;
        uint64_t x = task_operand(&r, size), y = task_operand(&r, size);
        sb_str(&p, "What is ");
        sb_fmt_u64(&p, x);
        sb_str(&p, "+");
        sb_fmt_u64(&p, y);
        sb_str(&p, "?");
        /* The sum zero-padded to one digit more than the operands
         * ("08576"): the demo model's reply format (scripts/demo/tasks.py,
         * ADD_PAD): each answer digit sits a fixed distance after its
         * column's operand digits. */
        char sum[32];
        int n = snprintf(sum, sizeof sum, "%0*llu", (int)size + 1, (unsigned long long)(x + y));
        sb_add(&a, sum, (size_t)n);
    } else {
        sb_str(&p, "Repeat exactly:\n");
        for (uint32_t i = 0; i < size; i++) {
            char w[4];
            task_word(&r, w);
            if (i) sb_str(&a, " ");
            sb_str(&a, w);
        }
        sb_str(&p, a.p ? a.p : "");
    }
    if (p.oom || a.oom || !p.p || !a.p) {
        cm_free(p.p);
        cm_free(a.p);
        return CM_ERR_NO_MEMORY;
    }
    *prompt = p.p;
    *answer = a.p;
    return CM_OK;
}

static bool is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

bool bench_task_grade(const char *answer, const char *output, size_t len) {
    size_t a = 0, e = len;
    while (a < e && is_space(output[a])) a++;
    while (e > a && is_space(output[e - 1])) e--;
    return e - a == strlen(answer) && !memcmp(output + a, answer, e - a);
}

void bench_wilson95(size_t k, size_t n, double *lo, double *hi) {
    if (n == 0) {
        *lo = 0;
        *hi = 1;
        return;
    }
    const double z = 1.959963984540054;
    double p = (double)k / (double)n, nn = (double)n, z2 = z * z;
    double den = 1 + z2 / nn;
    double c = (p + z2 / (2 * nn)) / den;
    double h = z * sqrt(p * (1 - p) / nn + z2 / (4 * nn * nn)) / den;
    *lo = c - h < 0 ? 0 : c - h;
    *hi = c + h > 1 ? 1 : c + h;
}
