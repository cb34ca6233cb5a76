/*
 * cm_log.c - leveled, subsystem-tagged logging as text or JSON lines.
 *
 * Each line is formatted into a stack buffer and written with a single
 * write(2), so lines from different threads never interleave.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cm_base.h"

static _Atomic int g_level = CM_LOG_INFO;
static _Atomic int g_format = CM_LOG_FORMAT_TEXT;
static _Atomic int g_fd = 2;

static const char *const k_level_names[] = {"trace", "debug", "info", "warn", "error", "off"};

void cm_log_configure(cm_log_level_t level, cm_log_format_t format, int fd) {
    atomic_store(&g_level, (int)level);
    atomic_store(&g_format, (int)format);
    atomic_store(&g_fd, fd);
}

cm_status_t cm_log_level_parse(const char *s, cm_log_level_t *out) {
    if (!s) return CM_ERR_INVALID_ARG;
    for (int i = 0; i <= CM_LOG_OFF; i++) {
        if (strcmp(s, k_level_names[i]) == 0) {
            *out = (cm_log_level_t)i;
            return CM_OK;
        }
    }
    return CM_ERR_INVALID_ARG;
}

cm_status_t cm_log_format_parse(const char *s, cm_log_format_t *out) {
    if (!s) return CM_ERR_INVALID_ARG;
    if (strcmp(s, "text") == 0) {
        *out = CM_LOG_FORMAT_TEXT;
        return CM_OK;
    }
    if (strcmp(s, "json") == 0) {
        *out = CM_LOG_FORMAT_JSON;
        return CM_OK;
    }
    return CM_ERR_INVALID_ARG;
}

bool cm_log_enabled(cm_log_level_t level) {
    return (int)level >= atomic_load_explicit(&g_level, memory_order_relaxed) && level < CM_LOG_OFF;
}

void cm_log_vwrite(cm_log_level_t level, const char *subsys, const char *file, int line,
                   const char *fmt, va_list ap) {
    char msg[2048];
    char out[4096];
    int saved_errno = errno;
    vsnprintf(msg, sizeof msg, fmt, ap);

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[96];
    snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000);
    const char *base = file ? strrchr(file, '/') : NULL;
    base = base ? base + 1 : (file ? file : "?");
    const char *lvl = k_level_names[level < CM_LOG_OFF ? level : CM_LOG_ERROR];

    size_t n = 0;
    if (atomic_load(&g_format) == CM_LOG_FORMAT_JSON) {
        n = (size_t)snprintf(out, sizeof out, "{\"ts\":\"%s\",\"level\":\"%s\",\"subsys\":\"", when,
                             lvl);
        if (!subsys) subsys = "";
        n += cm_json_escape(out + n, sizeof out - 64 - n, subsys, strlen(subsys));
        n += (size_t)snprintf(out + n, sizeof out - n, "\",\"src\":\"%s:%d\",\"msg\":\"", base,
                              line);
        n += cm_json_escape(out + n, sizeof out - 8 - n, msg, strlen(msg));
        n += (size_t)snprintf(out + n, sizeof out - n, "\"}\n");
    } else {
        int w = snprintf(out, sizeof out, "%s %-5s [%s] %s (%s:%d)\n", when, lvl,
                         subsys ? subsys : "-", msg, base, line);
        n = w < 0 ? 0 : (size_t)w;
    }
    if (n >= sizeof out) {
        n = sizeof out - 1;
        out[n - 1] = '\n';
    }
    int fd = atomic_load(&g_fd);
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, out + off, n - off);
        if (w < 0) {
            if (errno == EINTR) continue;
            break;
        }
        off += (size_t)w;
    }
    errno = saved_errno;
}

void cm_log_write(cm_log_level_t level, const char *subsys, const char *file, int line,
                  const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    cm_log_vwrite(level, subsys, file, line, fmt, ap);
    va_end(ap);
}
