/* cm_file.c - reading a whole regular file without blocking on a FIFO. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cm_base.h"

cm_status_t cm_read_file(const char *path, size_t max, char **out, size_t *len, char *err,
                         size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR) return CM_ERR_NOT_FOUND;
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return CM_ERR_IO;
    }
    struct stat sb;
    cm_status_t st = CM_OK;
    char *text = NULL;
    size_t n = 0;
    if (fstat(fd, &sb) != 0) {
        snprintf(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        st = CM_ERR_IO;
    } else if (!S_ISREG(sb.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        st = CM_ERR_BAD_FORMAT;
    } else if ((uint64_t)sb.st_size > max) {
        snprintf(err, errlen, "%s: %lld bytes, more than the %zu allowed", path,
                 (long long)sb.st_size, max);
        st = CM_ERR_TOO_LARGE;
    } else if (!(text = cm_malloc((size_t)sb.st_size + 1))) {
        snprintf(err, errlen, "%s: out of memory", path);
        st = CM_ERR_NO_MEMORY;
    } else {
        while (n < (size_t)sb.st_size) {
            ssize_t r = read(fd, text + n, (size_t)sb.st_size - n);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;
            n += (size_t)r;
        }
        if (n != (size_t)sb.st_size) {
            snprintf(err, errlen, "%s: short read", path);
            st = CM_ERR_IO;
        }
    }
    close(fd);
    if (st != CM_OK) {
        cm_free(text);
        return st;
    }
    text[n] = '\0';
    *out = text;
    if (len) *len = n;
    return CM_OK;
}
