/*
 * fuzz_files.h - a scratch directory for libFuzzer targets that hand their
 * input to a loader as files (one per process, under $TMPDIR or /tmp).
 */
#ifndef TANDEM_FUZZ_FILES_H
#define TANDEM_FUZZ_FILES_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* The directory, created on the first call. */
static const char *fuzz_dir(void) {
    static char dir[256];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "%s/fuzz.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        if (!mkdtemp(dir)) abort();
    }
    return dir;
}

/* Writes @p[0..n) as file @name of it. */
static void fuzz_put(const char *name, const void *p, size_t n) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f) != 0) abort();
}

/* Removes file @name of it, if there. */
static void fuzz_drop(const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", fuzz_dir(), name);
    (void)unlink(path);
}

#endif /* TANDEM_FUZZ_FILES_H */
