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
#include <sys/types.h>
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
/* The whole file @path, malloc'ed and NUL-terminated (*@len its bytes when
 * @len is not NULL); fails the test when it cannot be read. */
char *tt_read_file(const char *path, size_t *len);
/* A deterministic xorshift64 step for seeded random tests (@state != 0). */
uint64_t tt_rng_next(uint64_t *state);

/*
 * Child programs: a test that needs other processes (a worker, a peer)
 * starts them with tt_spawn, which fork+execs this binary with
 * "--child NAME args...". Exec matters: a plain fork of a process that
 * already runs threads (ZeroMQ, UCX, the sanitizers' allocators) can leave
 * the child deadlocked on a lock another thread held.
 *
 *   TT_CHILD(worker) { return run_worker(argv[0], atoi(argv[1])); }
 *   pid_t pid = tt_spawn("worker", (const char *[]){addr, "3", NULL});
 *
 * The child's exit status is the function's return value. File
 * descriptors without FD_CLOEXEC (e.g. from pipe()) are inherited.
 */
typedef struct tt_child {
    const char *name;
    int (*fn)(int argc, char **argv);
    struct tt_child *next;
} tt_child_t;

void tt_register_child(tt_child_t *c);
/* Starts child program @name with the NULL-terminated @args; returns its
 * pid (the test fails if it cannot be started). */
pid_t tt_spawn(const char *name, const char *const *args);

#define TT_CHILD(name_)                                                   \
    static int tt_child_fn_##name_(int argc, char **argv);                \
    static tt_child_t tt_crec_##name_ = {#name_, tt_child_fn_##name_, 0}; \
    __attribute__((constructor)) static void tt_creg_##name_(void) {      \
        tt_register_child(&tt_crec_##name_);                              \
    }                                                                     \
    static int tt_child_fn_##name_(int argc, char **argv)

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
