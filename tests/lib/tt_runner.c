/*
 * tt_runner.c - runs registered C tests and test scripts, each isolated in its
 * own process group with a deadline, several at a time.
 *
 *   tandem-tests [-j N] [-f SUBSTR]... [-l] [-v] [--timeout S] [--scripts DIR]...
 *
 * Scripts: every executable file named test_* in a --scripts directory. Exit
 * 0 = pass, 77 = skip (last output line is the reason), anything else = fail.
 * A script may set its deadline with a line "# tt-timeout: SECONDS" in its
 * first 10 lines. Children get TANDEM_ROOT, TANDEM_BUILD, TANDEM_BIN and
 * TT_TMPDIR (a fresh scratch directory, removed when the test passes).
 *
 * The last line printed is "N passed, N failed, N skipped"; the exit status
 * is non-zero when anything failed.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>

#include "tt.h"

static tt_test_t *g_tests;
static tt_child_t *g_children;
static const char *g_tmpdir;
static char g_root[PATH_MAX];
static char g_build[PATH_MAX];

void tt_register(tt_test_t *t) {
    t->next = g_tests;
    g_tests = t;
}

void tt_register_child(tt_child_t *c) {
    c->next = g_children;
    g_children = c;
}

pid_t tt_spawn(const char *name, const char *const *args) {
    char *argv[64];
    int n = 0;
    argv[n++] = "tandem-tests";
    argv[n++] = "--child";
    argv[n++] = (char *)name;
    for (int i = 0; args && args[i] && n < 63; i++) argv[n++] = (char *)args[i];
    argv[n] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "tt_spawn %s: fork: %s\n", name, strerror(errno));
        tt_fail_exit();
    }
    if (pid == 0) {
        execv("/proc/self/exe", argv);
        fprintf(stderr, "tt_spawn %s: exec: %s\n", name, strerror(errno));
        _exit(127);
    }
    return pid;
}

void tt_fail_exit(void) {
    fflush(stdout);
    fflush(stderr);
    _exit(1); /* no leak check: the test was cut short */
}

void tt_skip_exit(const char *reason) {
    fprintf(stderr, "%s\n", reason ? reason : "skipped");
    fflush(stdout);
    fflush(stderr);
    _exit(77);
}

const char *tt_tmpdir(void) { return g_tmpdir; }
const char *tt_root(void) { return g_root; }
const char *tt_build(void) { return g_build; }

typedef struct {
    char name[256];
    tt_test_t *test; /* C test, or NULL for a script */
    char path[PATH_MAX];
    int timeout_s;
    pid_t pid;
    double start;
    char out[PATH_MAX];
    char tmp[PATH_MAX];
    int state; /* 0 pending, 1 running, 2 done */
} job_t;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int script_timeout(const char *path, int def) {
    FILE *f = fopen(path, "r");
    if (!f) return def;
    char line[256];
    int t = def;
    for (int i = 0; i < 10 && fgets(line, sizeof line, f); i++) {
        const char *p = strstr(line, "tt-timeout:");
        if (p) t = atoi(p + 11);
    }
    fclose(f);
    return t > 0 ? t : def;
}

static int cmp_jobs(const void *a, const void *b) {
    return strcmp(((const job_t *)a)->name, ((const job_t *)b)->name);
}

static bool matches(const char *name, char **filters, int nf) {
    if (nf == 0) return true;
    for (int i = 0; i < nf; i++)
        if (strstr(name, filters[i])) return true;
    return false;
}

static void rm_rf(const char *path) {
    pid_t p = fork();
    if (p == 0) {
        execlp("rm", "rm", "-rf", path, (char *)NULL);
        _exit(127);
    }
    if (p > 0) waitpid(p, NULL, 0);
}

static void start_job(job_t *j, int idx) {
    snprintf(j->tmp, sizeof j->tmp, "%s/tmp/tests/%d-%d", g_build, (int)getpid(), idx);
    snprintf(j->out, sizeof j->out, "%s.log", j->tmp);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        setpgid(0, 0);
        mkdir(j->tmp, 0777);
        int fd = open(j->out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0) {
            dup2(nul, 0);
            close(nul);
        }
        setenv("TT_TMPDIR", j->tmp, 1);
        if (j->test) {
            /* A fresh image per test: nothing inherited from the runner,
             * and sanitizers that dislike fork (TSan) start clean. */
            execl("/proc/self/exe", "tandem-tests", "--run-one", j->name, (char *)NULL);
            fprintf(stderr, "exec %s: %s\n", j->name, strerror(errno));
            _exit(126);
        }
        if (chdir(g_root) != 0) _exit(126);
        execl(j->path, j->path, (char *)NULL);
        fprintf(stderr, "exec %s: %s\n", j->path, strerror(errno));
        _exit(126);
    }
    setpgid(pid, pid);
    j->pid = pid;
    j->start = now_s();
    j->state = 1;
}

/* Prints the last @max_lines lines of file @path, indented. */
static void print_tail(const char *path, int max_lines, const char *prefix) {
    FILE *f = fopen(path, "r");
    if (!f) return;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    long from = size > 65536 ? size - 65536 : 0;
    fseek(f, from, SEEK_SET);
    char *buf = malloc((size_t)(size - from) + 1);
    size_t n = buf ? fread(buf, 1, (size_t)(size - from), f) : 0;
    fclose(f);
    if (!buf) return;
    buf[n] = '\0';
    int lines = 0;
    char *start = buf + n;
    while (start > buf) {
        if (start[-1] == '\n' && start != buf + n && ++lines > max_lines) break;
        start--;
    }
    for (char *line = strtok(start, "\n"); line; line = strtok(NULL, "\n"))
        printf("%s%s\n", prefix, line);
    free(buf);
}

/* The last non-empty line of @path, for skip reasons. */
static void last_line(const char *path, char *dst, size_t cap) {
    dst[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        if (line[0]) snprintf(dst, cap, "%s", line);
    }
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "--child") == 0) {
        for (tt_child_t *c = g_children; c; c = c->next)
            if (strcmp(c->name, argv[2]) == 0) return c->fn(argc - 3, argv + 3);
        fprintf(stderr, "tandem-tests: no child program '%s'\n", argv[2]);
        return 127;
    }
    if (argc == 3 && strcmp(argv[1], "--run-one") == 0) {
        /* Child of the runner: one test, in this process. */
        snprintf(g_root, sizeof g_root, "%s", getenv("TANDEM_ROOT") ? getenv("TANDEM_ROOT") : ".");
        snprintf(g_build, sizeof g_build, "%s",
                 getenv("TANDEM_BUILD") ? getenv("TANDEM_BUILD") : "build");
        g_tmpdir = getenv("TT_TMPDIR");
        for (tt_test_t *t = g_tests; t; t = t->next) {
            char name[256];
            snprintf(name, sizeof name, "%s.%s", t->suite, t->name);
            if (strcmp(name, argv[2]) != 0) continue;
            t->fn();
            fflush(stdout);
            fflush(stderr);
            return 0; /* a normal exit: LeakSanitizer checks here */
        }
        fprintf(stderr, "tandem-tests: no test '%s'\n", argv[2]);
        return 127;
    }
    int jobs_max = 1, def_timeout = TT_DEFAULT_TIMEOUT_S;
    bool list = false, verbose = false;
    char *filters[64];
    int nf = 0;
    const char *script_dirs[16];
    int nsd = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-j") && i + 1 < argc)
            jobs_max = atoi(argv[++i]);
        else if (!strcmp(a, "-f") && i + 1 < argc && nf < 64)
            filters[nf++] = argv[++i];
        else if (!strcmp(a, "-l"))
            list = true;
        else if (!strcmp(a, "-v"))
            verbose = true;
        else if (!strcmp(a, "--timeout") && i + 1 < argc)
            def_timeout = atoi(argv[++i]);
        else if (!strcmp(a, "--scripts") && i + 1 < argc && nsd < 16)
            script_dirs[nsd++] = argv[++i];
        else {
            fprintf(stderr,
                    "tandem-tests: unknown argument '%s'\n"
                    "usage: tandem-tests [-j N] [-f SUBSTR]... [-l] [-v] [--timeout S] "
                    "[--scripts DIR]...\n",
                    a);
            return 2;
        }
    }
    if (jobs_max < 1) jobs_max = 1;

    /* Build dir = parent of the directory holding this binary. */
    char self[PATH_MAX];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0) {
        perror("readlink /proc/self/exe");
        return 2;
    }
    self[sl] = '\0';
    char *slash = strrchr(self, '/');
    if (slash) *slash = '\0';
    slash = strrchr(self, '/');
    if (slash) *slash = '\0';
    snprintf(g_build, sizeof g_build, "%s", self);
    if (getenv("TANDEM_ROOT"))
        snprintf(g_root, sizeof g_root, "%s", getenv("TANDEM_ROOT"));
    else if (!getcwd(g_root, sizeof g_root))
        return 2;
    char bin[PATH_MAX + 32];
    snprintf(bin, sizeof bin, "%s/bin/tandem", g_build);
    setenv("TANDEM_ROOT", g_root, 1);
    setenv("TANDEM_BUILD", g_build, 1);
    setenv("TANDEM_BIN", bin, 1);
    char tmpd[PATH_MAX + 32];
    snprintf(tmpd, sizeof tmpd, "%s/tmp", g_build);
    mkdir(tmpd, 0777);
    snprintf(tmpd, sizeof tmpd, "%s/tmp/tests", g_build);
    mkdir(tmpd, 0777);

    /* Collect jobs. */
    size_t cap = 64, nj = 0;
    job_t *jobs = calloc(cap, sizeof *jobs);
    for (tt_test_t *t = g_tests; t; t = t->next) {
        if (nj == cap) jobs = realloc(jobs, (cap *= 2) * sizeof *jobs);
        job_t *j = &jobs[nj];
        memset(j, 0, sizeof *j);
        snprintf(j->name, sizeof j->name, "%s.%s", t->suite, t->name);
        j->test = t;
        j->timeout_s = t->timeout_s > 0 ? t->timeout_s : def_timeout;
        if (matches(j->name, filters, nf)) nj++;
    }
    for (int d = 0; d < nsd; d++) {
        DIR *dir = opendir(script_dirs[d]);
        if (!dir) {
            fprintf(stderr, "tandem-tests: cannot open %s: %s\n", script_dirs[d], strerror(errno));
            return 2;
        }
        struct dirent *e;
        while ((e = readdir(dir))) {
            if (strncmp(e->d_name, "test_", 5) != 0) continue;
            char path[PATH_MAX];
            snprintf(path, sizeof path, "%s/%s/%s", g_root, script_dirs[d], e->d_name);
            if (access(path, X_OK) != 0) continue;
            if (nj == cap) jobs = realloc(jobs, (cap *= 2) * sizeof *jobs);
            job_t *j = &jobs[nj];
            memset(j, 0, sizeof *j);
            const char *base = strrchr(script_dirs[d], '/');
            snprintf(j->name, sizeof j->name, "%s.%s", base ? base + 1 : script_dirs[d], e->d_name);
            snprintf(j->path, sizeof j->path, "%s", path);
            j->timeout_s = script_timeout(path, def_timeout);
            if (matches(j->name, filters, nf)) nj++;
        }
        closedir(dir);
    }
    qsort(jobs, nj, sizeof *jobs, cmp_jobs);
    if (list) {
        for (size_t i = 0; i < nj; i++)
            printf("%s (timeout %ds)\n", jobs[i].name, jobs[i].timeout_s);
        return 0;
    }

    signal(SIGPIPE, SIG_IGN);
    int passed = 0, failed = 0, skipped = 0, running = 0;
    size_t next = 0, done = 0;
    double t0 = now_s();
    while (done < nj) {
        while (running < jobs_max && next < nj) {
            start_job(&jobs[next], (int)next);
            next++;
            running++;
        }
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0) {
            double now = now_s();
            for (size_t i = 0; i < nj; i++) {
                job_t *j = &jobs[i];
                if (j->state == 1 && now - j->start > j->timeout_s) {
                    kill(-j->pid, SIGKILL);
                    kill(j->pid, SIGKILL);
                    waitpid(j->pid, NULL, 0);
                    j->state = 2;
                    running--;
                    done++;
                    failed++;
                    printf("FAIL %s: timed out after %ds\n", j->name, j->timeout_s);
                    print_tail(j->out, 40, "    | ");
                }
            }
            struct timespec ts = {0, 5 * 1000 * 1000};
            nanosleep(&ts, NULL);
            continue;
        }
        job_t *j = NULL;
        for (size_t i = 0; i < nj; i++)
            if (jobs[i].state == 1 && jobs[i].pid == pid) j = &jobs[i];
        if (!j) continue;
        /* Kill anything the test left behind in its process group. */
        kill(-j->pid, SIGKILL);
        j->state = 2;
        running--;
        done++;
        double dt = now_s() - j->start;
        int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (code == 0) {
            passed++;
            printf("PASS %s (%.2fs)\n", j->name, dt);
            if (verbose) print_tail(j->out, 200, "    | ");
            rm_rf(j->tmp);
            unlink(j->out);
        } else if (code == 77) {
            char why[512];
            last_line(j->out, why, sizeof why);
            skipped++;
            printf("SKIP %s: %s\n", j->name, why[0] ? why : "(no reason given)");
            rm_rf(j->tmp);
            unlink(j->out);
        } else {
            failed++;
            if (WIFSIGNALED(status))
                printf("FAIL %s: killed by signal %d (%.2fs)\n", j->name, WTERMSIG(status), dt);
            else
                printf("FAIL %s: exit status %d (%.2fs)\n", j->name, code, dt);
            print_tail(j->out, 60, "    | ");
            printf("    (full output: %s)\n", j->out);
        }
        fflush(stdout);
    }
    printf("\nran %zu tests in %.1fs\n", nj, now_s() - t0);
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    free(jobs);
    return failed ? 1 : 0;
}

char *tt_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    TT_ASSERT_MSG(f, "cannot open %s", path);
    TT_ASSERT(fseek(f, 0, SEEK_END) == 0);
    long n = ftell(f);
    TT_ASSERT(n >= 0 && fseek(f, 0, SEEK_SET) == 0);
    char *buf = malloc((size_t)n + 1);
    TT_ASSERT_MSG(buf && fread(buf, 1, (size_t)n, f) == (size_t)n, "cannot read %s", path);
    buf[n] = '\0';
    fclose(f);
    if (len) *len = (size_t)n;
    return buf;
}

uint64_t tt_rng_next(uint64_t *state) {
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *state = x;
}
