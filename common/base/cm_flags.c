/* cm_flags.c - flag parsing with TANDEM_* environment fallback. */
#include "cm_flags.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum { CM_FLAGS_MAX = 256 };

void cm_flags_env_name(const char *name, char *buf, size_t buflen) {
    size_t n = (size_t)snprintf(buf, buflen, "TANDEM_");
    for (const char *p = name; *p && n + 1 < buflen; p++)
        buf[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    if (n < buflen) buf[n] = '\0';
}

cm_status_t cm_parse_int64(const char *s, int64_t *out) {
    if (!s || !*s) return CM_ERR_INVALID_ARG;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0' || isspace((unsigned char)*s)) return CM_ERR_INVALID_ARG;
    *out = v;
    return CM_OK;
}

cm_status_t cm_parse_bool(const char *s, bool *out) {
    if (!s) return CM_ERR_INVALID_ARG;
    if (!strcasecmp(s, "1") || !strcasecmp(s, "true") || !strcasecmp(s, "yes") ||
        !strcasecmp(s, "on")) {
        *out = true;
        return CM_OK;
    }
    if (!strcasecmp(s, "0") || !strcasecmp(s, "false") || !strcasecmp(s, "no") ||
        !strcasecmp(s, "off")) {
        *out = false;
        return CM_OK;
    }
    return CM_ERR_INVALID_ARG;
}

/* Parses "<digits>[.<digits>]<suffix>" into a number and the suffix. */
static cm_status_t split_number(const char *s, double *num, const char **suffix) {
    if (!s || !isdigit((unsigned char)*s)) return CM_ERR_INVALID_ARG;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || !isfinite(v) || v < 0) return CM_ERR_INVALID_ARG;
    *num = v;
    *suffix = end;
    return CM_OK;
}

cm_status_t cm_parse_size(const char *s, uint64_t *out) {
    double v;
    const char *suf;
    if (split_number(s, &v, &suf) != CM_OK) return CM_ERR_INVALID_ARG;
    static const struct {
        const char *suf;
        double mul;
    } k[] = {{"", 1},
             {"B", 1},
             {"K", 1024.0},
             {"KB", 1024.0},
             {"KiB", 1024.0},
             {"M", 1048576.0},
             {"MB", 1048576.0},
             {"MiB", 1048576.0},
             {"G", 1073741824.0},
             {"GB", 1073741824.0},
             {"GiB", 1073741824.0},
             {"T", 1099511627776.0},
             {"TB", 1099511627776.0},
             {"TiB", 1099511627776.0}};
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        if (strcasecmp(suf, k[i].suf) == 0) {
            double b = v * k[i].mul;
            if (b >= 18446744073709551616.0 || b != floor(b)) return CM_ERR_INVALID_ARG;
            *out = (uint64_t)b;
            return CM_OK;
        }
    }
    return CM_ERR_INVALID_ARG;
}

cm_status_t cm_parse_duration_ms(const char *s, uint64_t *out) {
    double v;
    const char *suf;
    if (split_number(s, &v, &suf) != CM_OK) return CM_ERR_INVALID_ARG;
    double mul;
    if (!strcmp(suf, "ms"))
        mul = 1;
    else if (!strcmp(suf, "s"))
        mul = 1000;
    else if (!strcmp(suf, "m"))
        mul = 60000;
    else if (!strcmp(suf, "h"))
        mul = 3600000;
    else
        return CM_ERR_INVALID_ARG; /* a bare number is ambiguous: demand a unit */
    double ms = v * mul;
    if (ms >= 9.2e18 || ms != floor(ms)) return CM_ERR_INVALID_ARG;
    *out = (uint64_t)ms;
    return CM_OK;
}

static bool choice_ok(const char *choices, const char *v) {
    size_t vl = strlen(v);
    const char *p = choices;
    while (p && *p) {
        const char *bar = strchr(p, '|');
        size_t l = bar ? (size_t)(bar - p) : strlen(p);
        if (l == vl && strncmp(p, v, l) == 0) return true;
        p = bar ? bar + 1 : NULL;
    }
    return false;
}

/* Parsed value of one flag, held until the whole command line validated. */
typedef union {
    bool b;
    int64_t i;
    double d;
    const char *s;
    uint64_t u;
} flag_val_t;

static cm_status_t parse_value(const cm_flag_t *f, const char *v, flag_val_t *out, char *why,
                               size_t whylen) {
    switch (f->type) {
    case CM_FLAG_BOOL:
        if (cm_parse_bool(v, &out->b) != CM_OK) {
            snprintf(why, whylen, "expected true or false");
            return CM_ERR_INVALID_ARG;
        }
        return CM_OK;
    case CM_FLAG_INT:
        if (cm_parse_int64(v, &out->i) != CM_OK) {
            snprintf(why, whylen, "expected an integer");
            return CM_ERR_INVALID_ARG;
        }
        if (f->min < f->max && (out->i < f->min || out->i > f->max)) {
            snprintf(why, whylen, "must be between %lld and %lld", (long long)f->min,
                     (long long)f->max);
            return CM_ERR_OUT_OF_RANGE;
        }
        return CM_OK;
    case CM_FLAG_DOUBLE: {
        char *end;
        errno = 0;
        out->d = v && *v ? strtod(v, &end) : NAN;
        if (!v || !*v || errno != 0 || *end != '\0' || !isfinite(out->d)) {
            snprintf(why, whylen, "expected a number");
            return CM_ERR_INVALID_ARG;
        }
        if (f->fmin < f->fmax && (out->d < f->fmin || out->d > f->fmax)) {
            snprintf(why, whylen, "must be between %g and %g", f->fmin, f->fmax);
            return CM_ERR_OUT_OF_RANGE;
        }
        return CM_OK;
    }
    case CM_FLAG_STRING:
        out->s = v;
        return CM_OK;
    case CM_FLAG_SIZE:
        if (cm_parse_size(v, &out->u) != CM_OK) {
            snprintf(why, whylen, "expected a size such as 4096, 64K, 16M or 2G");
            return CM_ERR_INVALID_ARG;
        }
        return CM_OK;
    case CM_FLAG_DURATION:
        if (cm_parse_duration_ms(v, &out->u) != CM_OK) {
            snprintf(why, whylen, "expected a duration such as 250ms, 5s or 2m");
            return CM_ERR_INVALID_ARG;
        }
        return CM_OK;
    case CM_FLAG_CHOICE:
        if (!choice_ok(f->choices, v)) {
            snprintf(why, whylen, "expected one of %s", f->choices);
            return CM_ERR_INVALID_ARG;
        }
        out->s = v;
        return CM_OK;
    }
    snprintf(why, whylen, "unknown flag type");
    return CM_ERR_INTERNAL;
}

static void store_value(const cm_flag_t *f, const flag_val_t *v) {
    switch (f->type) {
    case CM_FLAG_BOOL:
        *(bool *)f->dst = v->b;
        break;
    case CM_FLAG_INT:
        *(int64_t *)f->dst = v->i;
        break;
    case CM_FLAG_DOUBLE:
        *(double *)f->dst = v->d;
        break;
    case CM_FLAG_STRING:
    case CM_FLAG_CHOICE:
        *(const char **)f->dst = v->s;
        break;
    case CM_FLAG_SIZE:
    case CM_FLAG_DURATION:
        *(uint64_t *)f->dst = v->u;
        break;
    }
}

/* Collects every flag of the spec into @all; returns the count or -1. */
static int collect(const cm_cmd_spec_t *spec, const cm_flag_t **all) {
    int n = 0;
    for (const cm_flag_t *const *t = spec->tables; t && *t; t++) {
        for (const cm_flag_t *f = *t; f->name; f++) {
            if (n == CM_FLAGS_MAX) return -1;
            all[n++] = f;
        }
    }
    return n;
}

static const cm_flag_t *find_flag(const cm_flag_t **all, int n, const char *name, size_t len) {
    for (int i = 0; i < n; i++)
        if (strlen(all[i]->name) == len && strncmp(all[i]->name, name, len) == 0) return all[i];
    return NULL;
}

cm_status_t cm_flags_parse(const cm_cmd_spec_t *spec, int argc, char **argv, char **pos, int *npos,
                           char *err, size_t errlen) {
    const cm_flag_t *all[CM_FLAGS_MAX];
    flag_val_t vals[CM_FLAGS_MAX];
    bool set[CM_FLAGS_MAX] = {0};
    char why[160];
    int n = collect(spec, all);
    if (n < 0) {
        snprintf(err, errlen, "%s: too many flags declared", spec->prog);
        return CM_ERR_INTERNAL;
    }
    int np = 0;
    bool only_pos = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (only_pos || a[0] != '-' || a[1] == '\0') {
            if (np >= spec->max_positional) {
                snprintf(err, errlen, "%s: unexpected argument '%s' (see %s --help)", spec->prog, a,
                         spec->prog);
                return CM_ERR_INVALID_ARG;
            }
            pos[np++] = (char *)a;
            continue;
        }
        if (!strcmp(a, "--")) {
            only_pos = true;
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            cm_flags_usage(spec, stdout);
            return CM_IN_PROGRESS;
        }
        if (a[1] != '-') {
            snprintf(err, errlen, "%s: unknown flag '%s' (flags are --long-form; see %s --help)",
                     spec->prog, a, spec->prog);
            return CM_ERR_INVALID_ARG;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const cm_flag_t *f = find_flag(all, n, name, nlen);
        const char *value = eq ? eq + 1 : NULL;
        bool negated = false;
        if (!f && nlen > 3 && !strncmp(name, "no-", 3)) {
            f = find_flag(all, n, name + 3, nlen - 3);
            if (f && f->type != CM_FLAG_BOOL) f = NULL;
            negated = f != NULL;
        }
        if (!f) {
            snprintf(err, errlen, "%s: unknown flag '--%.*s' (see %s --help)", spec->prog,
                     (int)nlen, name, spec->prog);
            return CM_ERR_INVALID_ARG;
        }
        int idx = 0;
        while (all[idx] != f) idx++;
        if (f->type == CM_FLAG_BOOL && !value) {
            value = negated ? "false" : "true";
        } else if (negated && value) {
            snprintf(err, errlen, "%s: '--no-%s' takes no value", spec->prog, f->name);
            return CM_ERR_INVALID_ARG;
        } else if (!value) {
            if (i + 1 >= argc) {
                snprintf(err, errlen, "%s: flag '--%s' needs a value", spec->prog, f->name);
                return CM_ERR_INVALID_ARG;
            }
            value = argv[++i];
        }
        cm_status_t st = parse_value(f, value, &vals[idx], why, sizeof why);
        if (st != CM_OK) {
            snprintf(err, errlen, "%s: bad value '%s' for --%s: %s", spec->prog, value, f->name,
                     why);
            return st;
        }
        set[idx] = true;
    }
    /* Environment, then defaults, for flags the command line left unset. */
    for (int i = 0; i < n; i++) {
        if (set[i]) continue;
        char env[128];
        cm_flags_env_name(all[i]->name, env, sizeof env);
        const char *v = getenv(env);
        if (v) {
            cm_status_t st = parse_value(all[i], v, &vals[i], why, sizeof why);
            if (st != CM_OK) {
                snprintf(err, errlen, "%s: bad value '%s' in %s: %s", spec->prog, v, env, why);
                return st;
            }
            set[i] = true;
        } else if (all[i]->def) {
            cm_status_t st = parse_value(all[i], all[i]->def, &vals[i], why, sizeof why);
            if (st != CM_OK) {
                snprintf(err, errlen, "%s: bad default for --%s: %s", spec->prog, all[i]->name,
                         why);
                return CM_ERR_INTERNAL;
            }
            set[i] = true;
        } else if (all[i]->required) {
            snprintf(err, errlen, "%s: missing required flag --%s (or %s)", spec->prog,
                     all[i]->name, env);
            return CM_ERR_INVALID_ARG;
        }
    }
    for (int i = 0; i < n; i++)
        if (set[i]) store_value(all[i], &vals[i]);
    *npos = np;
    return CM_OK;
}

static const char *type_hint(const cm_flag_t *f) {
    switch (f->type) {
    case CM_FLAG_BOOL:
        return "";
    case CM_FLAG_INT:
        return " N";
    case CM_FLAG_DOUBLE:
        return " X";
    case CM_FLAG_STRING:
        return " STR";
    case CM_FLAG_SIZE:
        return " SIZE";
    case CM_FLAG_DURATION:
        return " DUR";
    case CM_FLAG_CHOICE:
        return " CHOICE";
    }
    return "";
}

void cm_flags_usage(const cm_cmd_spec_t *spec, FILE *out) {
    fprintf(out, "usage: %s [flags]%s%s\n\n%s\n\nflags:\n", spec->prog, spec->args_usage ? " " : "",
            spec->args_usage ? spec->args_usage : "", spec->summary);
    for (const cm_flag_t *const *t = spec->tables; t && *t; t++) {
        for (const cm_flag_t *f = *t; f->name; f++) {
            char left[64], env[128];
            snprintf(left, sizeof left, "--%s%s", f->name, type_hint(f));
            cm_flags_env_name(f->name, env, sizeof env);
            fprintf(out, "  %-26s %s", left, f->help ? f->help : "");
            if (f->type == CM_FLAG_CHOICE) fprintf(out, " (%s)", f->choices);
            if (f->def) fprintf(out, " [default: %s]", f->def);
            if (f->required) fprintf(out, " [required]");
            fprintf(out, " [env: %s]\n", env);
        }
    }
    fprintf(out, "  %-26s %s\n", "-h, --help", "show this help");
}
