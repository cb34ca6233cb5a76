/*
 * cm_base.h - the base library every Tandem component links: status codes,
 * logging, allocation helpers, monotonic time and hashing.
 *
 * Threading: every function here may be called from any thread unless its
 * comment says otherwise. The logger serializes whole lines with one write().
 */
#ifndef TANDEM_CM_BASE_H
#define TANDEM_CM_BASE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Status codes                                                             */
/* ------------------------------------------------------------------------ */

/*
 * One status type for the whole project. 0 is success, positive values mean
 * "in progress", negative values are errors. Each entry: (NAME, value, text).
 * Foreign error codes (errno, UCX, ZeroMQ, CUDA) are translated into these
 * where the foreign library is called.
 */
#define CM_STATUS_LIST(X)                                        \
    X(OK, 0, "success")                                          \
    X(IN_PROGRESS, 1, "operation in progress")                   \
    X(ERR_INVALID_ARG, -1, "invalid argument")                   \
    X(ERR_NO_MEMORY, -2, "out of memory")                        \
    X(ERR_IO, -3, "input/output error")                          \
    X(ERR_TIMEOUT, -4, "deadline exceeded")                      \
    X(ERR_NOT_FOUND, -5, "not found")                            \
    X(ERR_EXISTS, -6, "already exists")                          \
    X(ERR_PROTOCOL, -7, "malformed message")                     \
    X(ERR_TOO_LARGE, -8, "too large")                            \
    X(ERR_OUT_OF_RANGE, -9, "value out of range")                \
    X(ERR_UNSUPPORTED, -10, "not supported")                     \
    X(ERR_CANCELED, -11, "canceled")                             \
    X(ERR_PEER_DEAD, -12, "peer unreachable or dead")            \
    X(ERR_BUSY, -13, "resource busy, try again")                 \
    X(ERR_CLOSED, -14, "closed")                                 \
    X(ERR_VERSION, -15, "protocol version mismatch")             \
    X(ERR_FINGERPRINT, -16, "model/layout fingerprint mismatch") \
    X(ERR_STALE, -17, "stale peer incarnation")                  \
    X(ERR_NO_RESOURCES, -18, "no resources available")           \
    X(ERR_TRUNCATED, -19, "truncated input")                     \
    X(ERR_BAD_FORMAT, -20, "bad file format")                    \
    X(ERR_CHECKSUM, -21, "checksum mismatch")                    \
    X(ERR_NO_DEVICE, -22, "no such device")                      \
    X(ERR_INTERNAL, -23, "internal error")

typedef enum {
#define CM_STATUS_ENUM_(name, value, text) CM_##name = (value),
    CM_STATUS_LIST(CM_STATUS_ENUM_)
#undef CM_STATUS_ENUM_
} cm_status_t;

/* Returns a static, human-readable description of @st (never NULL). */
const char *cm_strerror(cm_status_t st);
/* Returns the static symbolic name of @st, e.g. "ERR_TIMEOUT" (never NULL). */
const char *cm_status_name(cm_status_t st);
/* Translates an errno value into the closest status. */
cm_status_t cm_status_from_errno(int err);

/* ------------------------------------------------------------------------ */
/* Logging                                                                  */
/* ------------------------------------------------------------------------ */

typedef enum {
    CM_LOG_TRACE = 0,
    CM_LOG_DEBUG,
    CM_LOG_INFO,
    CM_LOG_WARN,
    CM_LOG_ERROR,
    CM_LOG_OFF,
} cm_log_level_t;

typedef enum { CM_LOG_FORMAT_TEXT = 0, CM_LOG_FORMAT_JSON } cm_log_format_t;

/*
 * Configures the process-wide logger. Call before starting threads. Lines go
 * to @fd (2 = stderr by default). Subsystem names are free-form short strings
 * ("router", "kvx", "engine", ...).
 */
void cm_log_configure(cm_log_level_t level, cm_log_format_t format, int fd);
/* Parses "trace|debug|info|warn|error|off"; returns CM_ERR_INVALID_ARG otherwise. */
cm_status_t cm_log_level_parse(const char *s, cm_log_level_t *out);
/* Parses "text|json". */
cm_status_t cm_log_format_parse(const char *s, cm_log_format_t *out);
/* Returns true when a message at @level would be written. */
bool cm_log_enabled(cm_log_level_t level);
/* Writes one log line; use the macros below instead. */
void cm_log_write(cm_log_level_t level, const char *subsys, const char *file, int line,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void cm_log_vwrite(cm_log_level_t level, const char *subsys, const char *file, int line,
                   const char *fmt, va_list ap);

#define CM_LOG(level, subsys, ...)                                                               \
    do {                                                                                         \
        if (cm_log_enabled(level)) cm_log_write(level, subsys, __FILE__, __LINE__, __VA_ARGS__); \
    } while (0)
#define cm_log_trace(subsys, ...) CM_LOG(CM_LOG_TRACE, subsys, __VA_ARGS__)
#define cm_log_debug(subsys, ...) CM_LOG(CM_LOG_DEBUG, subsys, __VA_ARGS__)
#define cm_log_info(subsys, ...)  CM_LOG(CM_LOG_INFO, subsys, __VA_ARGS__)
#define cm_log_warn(subsys, ...)  CM_LOG(CM_LOG_WARN, subsys, __VA_ARGS__)
#define cm_log_error(subsys, ...) CM_LOG(CM_LOG_ERROR, subsys, __VA_ARGS__)

/* ------------------------------------------------------------------------ */
/* Allocation                                                               */
/* ------------------------------------------------------------------------ */

/*
 * Allocation helpers. All return NULL on failure (and on size overflow for the
 * n*size forms); none aborts. Memory from cm_malloc/cm_calloc/cm_realloc is
 * released with cm_free; memory from cm_aligned_alloc with cm_aligned_free.
 */
void *cm_malloc(size_t size);
void *cm_calloc(size_t n, size_t size);
void *cm_malloc_array(size_t n, size_t size);
void *cm_realloc_array(void *p, size_t n, size_t size);
void cm_free(void *p);
/* @align must be a power of two >= sizeof(void *). Size is rounded up. */
void *cm_aligned_alloc(size_t align, size_t size);
void cm_aligned_free(void *p);
/* Returns a heap copy of @s (NULL if @s is NULL or on failure). */
char *cm_strdup(const char *s);
char *cm_strndup(const char *s, size_t n);
/* Returns true and stores a*b in *out when it does not overflow size_t. */
static inline bool cm_mul_ok(size_t a, size_t b, size_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool cm_add_ok(size_t a, size_t b, size_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

/*
 * A bump arena with a hard cap, for decoding untrusted input: every
 * allocation fails once the cap would be exceeded, so a hostile message can
 * never make the process allocate more than the cap. Not thread-safe.
 */
typedef struct cm_arena cm_arena_t;
/* Creates an arena that hands out at most @cap bytes in total. */
cm_arena_t *cm_arena_new(size_t cap);
/* Returns @size bytes aligned to 16, or NULL when the cap would be exceeded. */
void *cm_arena_alloc(cm_arena_t *a, size_t size);
/* Forgets every allocation; keeps the first chunk for reuse. */
void cm_arena_reset(cm_arena_t *a);
/* Bytes handed out since the last reset. */
size_t cm_arena_used(const cm_arena_t *a);
void cm_arena_free(cm_arena_t *a);

/*
 * Large, long-lived memory that is read as a stream (model weights, KV
 * pools): anonymous mappings aligned to 2 MiB and advised for transparent
 * huge pages (MADV_HUGEPAGE, a hint: 4 KiB pages still work). Fewer TLB
 * misses: a 2-core Xeon VM read 3-5% faster from it. Zero-filled; pages are
 * backed when first touched. cm_huge_map's memory is released with
 * cm_huge_unmap(p, n) (same n); NULL on failure.
 */
void *cm_huge_map(size_t n);
void cm_huge_unmap(void *p, size_t n);

/*
 * A bump allocator over cm_huge_map chunks of at least @chunk bytes (a
 * larger request gets a chunk of its own), freed all at once. The untouched
 * tail of a chunk costs address space only. Not thread-safe.
 */
typedef struct cm_hpool cm_hpool_t;
cm_hpool_t *cm_hpool_new(size_t chunk);
/* @n bytes aligned to @align (a power of two <= 4096), or NULL. */
void *cm_hpool_alloc(cm_hpool_t *h, size_t align, size_t n);
/* Bytes handed out. */
size_t cm_hpool_used(const cm_hpool_t *h);
void cm_hpool_free(cm_hpool_t *h);

/* ------------------------------------------------------------------------ */
/* Time                                                                     */
/* ------------------------------------------------------------------------ */

/* Monotonic clock (CLOCK_MONOTONIC) in nanoseconds. */
uint64_t cm_time_mono_ns(void);
/* Monotonic clock in milliseconds. */
uint64_t cm_time_mono_ms(void);
/* Wall clock (CLOCK_REALTIME) in nanoseconds since the Unix epoch. */
uint64_t cm_time_wall_ns(void);
/* Sleeps at least @ns nanoseconds (restarts after signals). */
void cm_time_sleep_ns(uint64_t ns);

/* A deadline on the monotonic clock. 0 means "no deadline" is NOT allowed:
 * every wait in Tandem has one. */
typedef struct {
    uint64_t at_ns;
} cm_deadline_t;

static inline cm_deadline_t cm_deadline_in_ms(uint64_t ms) {
    cm_deadline_t d = {cm_time_mono_ns() + ms * 1000000ull};
    return d;
}
/* Nanoseconds left (0 when expired). */
static inline uint64_t cm_deadline_left_ns(cm_deadline_t d) {
    uint64_t now = cm_time_mono_ns();
    return now >= d.at_ns ? 0 : d.at_ns - now;
}
/* Milliseconds left, rounded up, clamped to INT32_MAX (for poll()). */
int cm_deadline_left_ms(cm_deadline_t d);
static inline bool cm_deadline_expired(cm_deadline_t d) { return cm_time_mono_ns() >= d.at_ns; }

/* ------------------------------------------------------------------------ */
/* Hashing and checksums                                                    */
/* ------------------------------------------------------------------------ */

/* XXH64 of @len bytes with @seed (bit-identical to the reference xxHash). */
uint64_t cm_hash64(const void *data, size_t len, uint64_t seed);
/* CRC-32C (Castagnoli), as used by iSCSI/ext4; @crc is the running value
 * (start with 0). */
uint32_t cm_crc32c(uint32_t crc, const void *data, size_t len);
/*
 * Chained KV block hash (DESIGN.md section 3): XXH64 over the little-endian
 * bytes of (parent hash, fingerprint, token ids as uint32), seed 0. The first
 * block of a sequence uses parent = 0.
 */
uint64_t cm_block_hash(uint64_t parent, uint64_t fingerprint, const int32_t *tokens,
                       size_t n_tokens);

/* ------------------------------------------------------------------------ */
/* Build information                                                        */
/* ------------------------------------------------------------------------ */

/* Version string, e.g. "0.1.0". */
const char *cm_version(void);
/* Git description the binary was built from ("unknown" if not in git). */
const char *cm_build_commit(void);

/* ------------------------------------------------------------------------ */
/* UTF-8                                                                    */
/* ------------------------------------------------------------------------ */

/* Returns true when @s[0..len) is well-formed UTF-8 (no overlongs, no
 * surrogates, no code points above U+10FFFF). */
bool cm_utf8_valid(const char *s, size_t len);
/* Length of the longest prefix of @s[0..len) that does not end inside a
 * UTF-8 sequence (drops a character a fixed-size snprintf cut short). */
size_t cm_utf8_trim(const char *s, size_t len);
/* Writes @src[0..len) (UTF-8) escaped as the inside of a JSON string to
 * @dst (capacity @cap, NUL-terminated): '"', '\\' and every control
 * character, U+0000 included ("\\u0000"), escaped as cJSON does, other
 * bytes as they are. Stops before an escape that would not fit. Returns the
 * bytes written, NUL not counted; with @dst NULL, the bytes the whole
 * escaping needs. */
size_t cm_json_escape(char *dst, size_t cap, const char *src, size_t len);
/* @src[0..len) as a whole JSON string literal, quotes included (cm_malloc'ed,
 * NUL-terminated; NULL when out of memory). */
char *cm_json_quote(const char *src, size_t len);

/* ------------------------------------------------------------------------ */
/* Files                                                                    */
/* ------------------------------------------------------------------------ */

/* Reads the regular file @path whole into *@out (cm_malloc'ed and
 * NUL-terminated; *@len its bytes when @len is not NULL). The open never
 * blocks: a FIFO or device named like the file is refused, not waited on.
 * Returns CM_OK; CM_ERR_NOT_FOUND when it does not exist (no message);
 * otherwise CM_ERR_BAD_FORMAT (not a regular file), CM_ERR_TOO_LARGE (over
 * @max bytes), CM_ERR_IO or CM_ERR_NO_MEMORY with the reason, naming
 * @path, in @err. */
cm_status_t cm_read_file(const char *path, size_t max, char **out, size_t *len, char *err,
                         size_t errlen);

#ifdef __cplusplus
}
#endif
#endif /* TANDEM_CM_BASE_H */
