/*
 * cm_flags.h - command-line flags with environment-variable fallback.
 *
 * Every flag --some-name is also read from TANDEM_SOME_NAME (upper case,
 * dashes become underscores), as Kubernetes users expect. Precedence: the
 * command line, then the environment, then the default. Values from either
 * source are validated the same way; a bad value is a one-line error that
 * names where it came from.
 *
 * Part of the base library; included by cm_base.h users that parse flags.
 * Not thread-safe (parse once at start-up).
 */
#ifndef TANDEM_CM_FLAGS_H
#define TANDEM_CM_FLAGS_H

#include <stdio.h>

#include "cm_base.h"

typedef enum {
    CM_FLAG_BOOL,     /* bool *: --x, --x=true|false|1|0|yes|no, --no-x */
    CM_FLAG_INT,      /* int64_t *: decimal, range [min, max] when min < max */
    CM_FLAG_DOUBLE,   /* double *: range [fmin, fmax] when fmin < fmax */
    CM_FLAG_STRING,   /* const char **: points into argv, environ or default */
    CM_FLAG_SIZE,     /* uint64_t * bytes: 4096, 64K, 16M, 2G, 1GiB, 512KB */
    CM_FLAG_DURATION, /* uint64_t * milliseconds: 250ms, 5s, 2m, 1h */
    CM_FLAG_CHOICE,   /* const char **: one of choices "a|b|c" */
} cm_flag_type_t;

typedef struct {
    const char *name; /* without dashes, e.g. "kv-pool-size"; NULL ends a table */
    cm_flag_type_t type;
    void *dst;           /* see the type comments above */
    const char *def;     /* default, parsed like a user value; NULL = unset */
    const char *help;    /* one line */
    const char *choices; /* CM_FLAG_CHOICE only: "a|b|c" */
    int64_t min, max;    /* CM_FLAG_INT range when min < max */
    double fmin, fmax;   /* CM_FLAG_DOUBLE range when fmin < fmax */
    bool required;       /* error when neither argv nor env gives a value */
} cm_flag_t;

/* What a command declares about itself, for parsing and --help. */
typedef struct {
    const char *prog;               /* "tandem router" */
    const char *summary;            /* one line */
    const char *args_usage;         /* positional arguments, e.g. "[kvxfer|engine]"; NULL = none */
    const cm_flag_t *const *tables; /* NULL-terminated list of flag tables */
    int max_positional;             /* most positional arguments accepted */
} cm_cmd_spec_t;

/*
 * Parses @argv[0..argc) (arguments after the command name). Positional
 * arguments are stored in @pos (capacity spec->max_positional), their count
 * in *@npos. Returns CM_OK; CM_IN_PROGRESS when --help was given (usage was
 * printed to stdout and the caller should exit 0); or an error after writing
 * a one-line reason into @err. Outputs are written only on success.
 */
cm_status_t cm_flags_parse(const cm_cmd_spec_t *spec, int argc, char **argv, char **pos, int *npos,
                           char *err, size_t errlen);

/* Prints usage, every flag with its default and environment variable. */
void cm_flags_usage(const cm_cmd_spec_t *spec, FILE *out);

/* Writes the environment variable name of flag @name into @buf. */
void cm_flags_env_name(const char *name, char *buf, size_t buflen);

/* Parsers shared with other code (all return CM_ERR_INVALID_ARG on junk). */
cm_status_t cm_parse_size(const char *s, uint64_t *out);
cm_status_t cm_parse_duration_ms(const char *s, uint64_t *out);
cm_status_t cm_parse_bool(const char *s, bool *out);
cm_status_t cm_parse_int64(const char *s, int64_t *out);

#endif /* TANDEM_CM_FLAGS_H */
