/*
 * test_bench_tasks.c - the demo model's task generators and grading
 * (bench_tasks.c): every problem's answer is recomputed here from its prompt
 * text, problems are deterministic per (seed, index), and the Wilson
 * interval matches published values.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "bench_load.h"
#include "tt.h"

static bool is_word(const char *w, size_t n) {
    if (n != 3) return false;
    for (size_t i = 0; i < n; i++) {
        bool vowel = strchr("aeiou", w[i]) != NULL;
        if (!islower((unsigned char)w[i]) || vowel != (i & 1)) return false;
    }
    return true;
}

TT_TEST(bench_tasks, retrieval_answer_is_the_asked_keys_value) {
    for (uint64_t idx = 0; idx < 200; idx++) {
        char *p, *a;
        uint32_t size = 1 + (uint32_t)(idx % 130);
        TT_ASSERT_EQ_INT(bench_task_make(BENCH_TASK_RETRIEVAL, size, 7, idx, &p, &a), CM_OK);
        TT_ASSERT(!strncmp(p, "Records: ", 9));
        const char *q = strstr(p, "\nWhat is the value of ");
        TT_ASSERT(q);
        char key[16] = "";
        TT_ASSERT_EQ_INT(sscanf(q, "\nWhat is the value of %15[a-z]?", key), 1);
        /* Walk " key=val" records: distinct keys, exactly one match; the
         * answer restates that record. */
        char seen[200][4];
        uint32_t n = 0, hits = 0;
        for (const char *s = p + 8; s < q; s += 8) {
            TT_ASSERT(s[0] == ' ' && is_word(s + 1, 3) && s[4] == '=' && is_word(s + 5, 3));
            TT_ASSERT(s[8] == ' ' || s + 8 == q);
            for (uint32_t j = 0; j < n; j++) TT_ASSERT(memcmp(seen[j], s + 1, 3));
            memcpy(seen[n++], s + 1, 3);
            if (!memcmp(s + 1, key, 3) && strlen(key) == 3) {
                hits++;
                TT_ASSERT(strlen(a) == 7 && !memcmp(s + 1, a, 7));
            }
        }
        TT_ASSERT_EQ_INT(n, size);
        TT_ASSERT_EQ_U64(hits, 1u);
        cm_free(p);
        cm_free(a);
    }
}

TT_TEST(bench_tasks, addition_answer_is_the_sum) {
    for (uint32_t d = 1; d <= 18; d++) {
        for (uint64_t idx = 0; idx < 50; idx++) {
            char *p, *a;
            TT_ASSERT_EQ_INT(bench_task_make(BENCH_TASK_ADDITION, d, 3, idx, &p, &a), CM_OK);
            unsigned long long x, y;
            char tail;
            TT_ASSERT_EQ_INT(sscanf(p, "What is %llu+%llu%c", &x, &y, &tail), 3);
            TT_ASSERT_EQ_INT(tail, '?');
            const char *plus = strchr(p, '+');
            TT_ASSERT_EQ_INT((size_t)(plus - (p + 8)), (size_t)d); /* d digits, no leading 0 */
            /* The sum, zero-padded to d + 1 digits (the demo model's
             * reply format): parse it back and check width and value. */
            TT_ASSERT_EQ_U64(strlen(a), (uint64_t)d + 1);
            TT_ASSERT_EQ_U64(strspn(a, "0123456789"), (uint64_t)d + 1);
            TT_ASSERT_EQ_U64(strtoull(a, NULL, 10), (uint64_t)(x + y));
            unsigned long long p10 = 1;
            for (uint32_t i = 0; i < d; i++) p10 *= 10;
            TT_ASSERT_EQ_INT(a[0] == '0', x + y < p10); /* a carry out fills the pad */
            cm_free(p);
            cm_free(a);
        }
    }
}

TT_TEST(bench_tasks, copy_answer_is_the_words) {
    char *p, *a;
    TT_ASSERT_EQ_INT(bench_task_make(BENCH_TASK_COPY, 37, 1, 5, &p, &a), CM_OK);
    TT_ASSERT(!strncmp(p, "Repeat exactly:\n", 16));
    TT_ASSERT_STR_EQ(p + 16, a);
    TT_ASSERT_EQ_U64(strlen(a), 37u * 4 - 1);
    for (size_t i = 0; i < 37; i++) {
        TT_ASSERT(is_word(a + i * 4, 3));
        TT_ASSERT(i == 36 || a[i * 4 + 3] == ' ');
    }
    cm_free(p);
    cm_free(a);
}

TT_TEST(bench_tasks, problems_depend_only_on_seed_and_index) {
    char *p1, *a1, *p2, *a2, *p3, *a3, *p4, *a4;
    TT_ASSERT_EQ_INT(bench_task_make(BENCH_TASK_RETRIEVAL, 20, 9, 4, &p1, &a1), CM_OK);
    TT_ASSERT_EQ_INT(bench_task_make(BENCH_TASK_RETRIEVAL, 20, 9, 5, &p3, &a3), CM_OK);
    TT_ASSERT_EQ_INT(bench_task_make(BENCH_TASK_RETRIEVAL, 20, 9, 4, &p2, &a2), CM_OK);
    TT_ASSERT_EQ_INT(bench_task_make(BENCH_TASK_RETRIEVAL, 20, 10, 4, &p4, &a4), CM_OK);
    TT_ASSERT_STR_EQ(p1, p2);
    TT_ASSERT_STR_EQ(a1, a2);
    TT_ASSERT(strcmp(p1, p3) != 0);
    TT_ASSERT(strcmp(p1, p4) != 0);
    cm_free(p1), cm_free(a1), cm_free(p2), cm_free(a2), cm_free(p3), cm_free(a3), cm_free(p4),
        cm_free(a4);
}

TT_TEST(bench_tasks, sizes_and_names) {
    bench_task_t t;
    TT_ASSERT_EQ_INT(bench_task_parse("copy", &t), CM_OK);
    TT_ASSERT_EQ_INT(t, BENCH_TASK_COPY);
    TT_ASSERT_STR_EQ(bench_task_name(t), "copy");
    TT_ASSERT_EQ_INT(bench_task_parse("Copy", &t), CM_ERR_INVALID_ARG);
    TT_ASSERT_EQ_U64(bench_task_size(BENCH_TASK_RETRIEVAL, 512, 4), 246u);
    TT_ASSERT_EQ_U64(bench_task_size(BENCH_TASK_RETRIEVAL, 1 << 20, 4), 900u);
    TT_ASSERT_EQ_U64(bench_task_size(BENCH_TASK_RETRIEVAL, 16, 4), 1u);
    TT_ASSERT_EQ_U64(bench_task_size(BENCH_TASK_COPY, 512, 4), 248u);
    TT_ASSERT_EQ_U64(bench_task_size(BENCH_TASK_ADDITION, 512, 4), 4u);
}

TT_TEST(bench_tasks, exact_grading) {
    TT_ASSERT(bench_task_grade("1234", "1234", 4));
    TT_ASSERT(bench_task_grade("1234", " 1234\n", 6));
    TT_ASSERT(!bench_task_grade("1234", "12345", 5));
    TT_ASSERT(!bench_task_grade("1234", "123", 3));
    TT_ASSERT(!bench_task_grade("1234", "1234.", 5));
    TT_ASSERT(!bench_task_grade("a b", "a  b", 4));
    TT_ASSERT(!bench_task_grade("1", "", 0));
}

TT_TEST(bench_tasks, wilson_interval_matches_published_values) {
    double lo, hi;
    bench_wilson95(0, 10, &lo, &hi);
    TT_ASSERT_NEAR(lo, 0.0, 1e-9);
    TT_ASSERT_NEAR(hi, 0.27753, 1e-4);
    bench_wilson95(8, 10, &lo, &hi);
    TT_ASSERT_NEAR(lo, 0.49016, 1e-4);
    TT_ASSERT_NEAR(hi, 0.94332, 1e-4);
    bench_wilson95(95, 100, &lo, &hi);
    TT_ASSERT_NEAR(lo, 0.88825, 1e-4);
    TT_ASSERT_NEAR(hi, 0.97846, 1e-4);
}

TT_TEST(bench_tasks, task_workload_sessions_are_graded_exactly) {
    bench_wl_cfg_t cfg = {
        .kind = BENCH_WL_TASK, .seed = 5, .task = BENCH_TASK_ADDITION, .task_size = 4};
    char err[128];
    bench_workload_t *w;
    TT_ASSERT_EQ_INT(bench_workload_new(&cfg, &w, err, sizeof err), CM_OK);
    TT_ASSERT_STR_EQ(bench_workload_name(w), "task");
    bench_session_t *s;
    TT_ASSERT_EQ_INT(bench_workload_session(w, 3, &s), CM_OK);
    char *p, *a;
    TT_ASSERT_EQ_INT(bench_task_make(BENCH_TASK_ADDITION, 4, 5, 3, &p, &a), CM_OK);
    TT_ASSERT_STR_EQ(s->user[0], p); /* the same problem bench accuracy sends */
    TT_ASSERT_STR_EQ((const char *)s->task, a);
    TT_ASSERT_EQ_INT(s->max_tokens[0], (int)strlen(a) + 4);
    void *ctx;
    bench_grade_fn g = bench_workload_grader(w, &ctx);
    TT_ASSERT(g);
    bool ok = false;
    TT_ASSERT_EQ_INT(g(ctx, s, 0, a, strlen(a), &ok), CM_OK);
    TT_ASSERT(ok);
    TT_ASSERT_EQ_INT(g(ctx, s, 0, "0", 1, &ok), CM_OK);
    TT_ASSERT(!ok);
    cm_free(p);
    cm_free(a);
    bench_session_free(s);
    cfg.task_size = 0;
    bench_workload_free(w);
    TT_ASSERT_EQ_INT(bench_workload_new(&cfg, &w, err, sizeof err), CM_ERR_INVALID_ARG);
}
