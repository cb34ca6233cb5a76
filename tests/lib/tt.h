/*
 * tt.h - Tandem's unit-test framework.
 *
 * Tests register themselves at load time; the runner (tests/lib/tt_runner.c)
 * runs each one in its own forked process with a timeout, so a crash, a hang
 * or a leak (LeakSanitizer runs at the child's exit) fails only that test.
 *
 *   TT_TEST(codec, rejects_truncated) {
 *       TT_ASSERT_EQ_INT(decode(...), CM_ERR_PROTOCOL);
 *   }
 *   TT_TEST_T(kvx, slow_case, 120) { ... }   // timeout in seconds
 *   TT_SKIP("no GPU");                       // ends the test as skipped
 *
 * A failed assertion prints file:line and both values, then ends the test.
 */
#ifndef TANDEM_TT_H
#define TANDEM_TT_H

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct tt_test {
    const char *suite;
    const char *name;
    void (*fn)(void);
    int timeout_s;
    struct tt_test *next;
} tt_test_t;

void tt_register(tt_test_t *t);
/* Ends the current test as failed (never returns). */
void tt_fail_exit(void) __attribute__((noreturn));
/* Ends the current test as skipped with @reason (never returns). */
void tt_skip_exit(const char *reason) __attribute__((noreturn));
/* Directory for scratch files of the current test (created, unique). */
const char *tt_tmpdir(void);
/* Repository root (where tests/ lives) and build directory. */
const char *tt_root(void);
const char *tt_build(void);

#define TT_DEFAULT_TIMEOUT_S 60

#define TT_TEST_T(suite_, name_, timeout_)                                                   \
    static void tt_fn_##suite_##_##name_(void);                                              \
    static tt_test_t tt_rec_##suite_##_##name_ = {#suite_, #name_, tt_fn_##suite_##_##name_, \
                                                  timeout_, 0};                              \
    __attribute__((constructor)) static void tt_reg_##suite_##_##name_(void) {               \
        tt_register(&tt_rec_##suite_##_##name_);                                             \
    }                                                                                        \
    static void tt_fn_##suite_##_##name_(void)

#define TT_TEST(suite_, name_) TT_TEST_T(suite_, name_, TT_DEFAULT_TIMEOUT_S)

#define TT_FAILF(...)                                   \
    do {                                                \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__); \
        fprintf(stderr, __VA_ARGS__);                   \
        fputc('\n', stderr);                            \
        tt_fail_exit();                                 \
    } while (0)

#define TT_ASSERT(cond)                                       \
    do {                                                      \
        if (!(cond)) TT_FAILF("assertion failed: %s", #cond); \
    } while (0)

#define TT_ASSERT_MSG(cond, ...)            \
    do {                                    \
        if (!(cond)) TT_FAILF(__VA_ARGS__); \
    } while (0)

#define TT_ASSERT_EQ_INT(a, b)                                                        \
    do {                                                                              \
        long long tt_a_ = (long long)(a), tt_b_ = (long long)(b);                     \
        if (tt_a_ != tt_b_) TT_FAILF("%s == %s: %lld != %lld", #a, #b, tt_a_, tt_b_); \
    } while (0)

#define TT_ASSERT_EQ_U64(a, b)                                                             \
    do {                                                                                   \
        uint64_t tt_a_ = (uint64_t)(a), tt_b_ = (uint64_t)(b);                             \
        if (tt_a_ != tt_b_)                                                                \
            TT_FAILF("%s == %s: 0x%016" PRIx64 " != 0x%016" PRIx64, #a, #b, tt_a_, tt_b_); \
    } while (0)

#define TT_ASSERT_STR_EQ(a, b)                                                       \
    do {                                                                             \
        const char *tt_a_ = (a), *tt_b_ = (b);                                       \
        if (!tt_a_ || !tt_b_ || strcmp(tt_a_, tt_b_) != 0)                           \
            TT_FAILF("%s == %s: \"%s\" != \"%s\"", #a, #b, tt_a_ ? tt_a_ : "(null)", \
                     tt_b_ ? tt_b_ : "(null)");                                      \
    } while (0)

#define TT_ASSERT_NEAR(a, b, tol)                                                       \
    do {                                                                                \
        double tt_a_ = (double)(a), tt_b_ = (double)(b), tt_t_ = (double)(tol);         \
        if (!(fabs(tt_a_ - tt_b_) <= tt_t_))                                            \
            TT_FAILF("%s ~= %s: %.9g vs %.9g (tol %.3g)", #a, #b, tt_a_, tt_b_, tt_t_); \
    } while (0)

#define TT_SKIP(reason) tt_skip_exit(reason)

#endif /* TANDEM_TT_H */
