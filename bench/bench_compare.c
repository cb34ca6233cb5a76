/*
 * bench_compare.c - `tandem bench compare A.json B.json`: the side-by-side
 * report of two `tandem bench serve` runs ("NO-OFFLOAD | NATIVE-OFFLOAD |
 * Difference | % Change"), one table per metric, one row per sweep point.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "bench.h"
#include "bench_load.h"
#include "cm_cli.h"

typedef struct {
    const char *path; /* "ttft_ms.p50": object key, then an optional sub-key */
    bool higher_better;
} cmp_metric_t;

static const cmp_metric_t k_metrics[] = {
    {"success_rate", true},  {"req_s", true},        {"output_tok_s", true}, {"total_tok_s", true},
    {"ttft_ms.mean", false}, {"ttft_ms.p50", false}, {"ttft_ms.p90", false}, {"ttft_ms.p99", false},
    {"tpot_ms.mean", false}, {"tpot_ms.p50", false}, {"tpot_ms.p90", false}, {"tpot_ms.p99", false},
    {"itl_ms.p50", false},   {"itl_ms.p99", false},  {"e2e_ms.mean", false}, {"e2e_ms.p50", false},
    {"e2e_ms.p90", false},   {"e2e_ms.p99", false},
};
enum { N_METRICS = sizeof k_metrics / sizeof k_metrics[0] };

void bench_compare_values(double a, double b, double *diff, double *pct) {
    *diff = isfinite(a) && isfinite(b) ? b - a : NAN;
    *pct = isfinite(*diff) && a != 0 ? 100.0 * (b - a) / fabs(a) : NAN;
}

static double cmp_metric(const cJSON *point, const char *path) {
    if (!point) return NAN;
    char key[48];
    snprintf(key, sizeof key, "%s", path);
    char *dot = strchr(key, '.');
    if (dot) *dot = '\0';
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(point, key);
    if (dot) v = cJSON_GetObjectItemCaseSensitive(v, dot + 1);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static const cJSON *cmp_find(const cJSON *points, const char *label) {
    const cJSON *p;
    cJSON_ArrayForEach(p, points) {
        const cJSON *l = cJSON_GetObjectItemCaseSensitive(p, "label");
        if (cJSON_IsString(l) && !strcmp(l->valuestring, label)) return p;
    }
    return NULL;
}

/* The "points" array of a result document, every entry with a string label. */
static const cJSON *cmp_points(const cJSON *doc) {
    const cJSON *pts = cJSON_GetObjectItemCaseSensitive(doc, "points");
    if (!cJSON_IsArray(pts)) return NULL;
    const cJSON *p;
    cJSON_ArrayForEach(p, pts) {
        const cJSON *l = cJSON_GetObjectItemCaseSensitive(p, "label");
        if (!cJSON_IsString(l) || strlen(l->valuestring) >= 64) return NULL;
    }
    return pts;
}

cm_status_t bench_compare_build(const char *a_json, const char *b_json, bench_cmp_row_t **rows,
                                size_t *n_rows, char *err, size_t errlen) {
    cm_status_t st = CM_ERR_BAD_FORMAT;
    cJSON *a = cJSON_Parse(a_json), *b = cJSON_Parse(b_json);
    const cJSON *pa = cmp_points(a), *pb = cmp_points(b);
    bench_cmp_row_t *out = NULL;
    if (!pa || !pb) {
        snprintf(err, errlen, "%s is not a `tandem bench serve` result (no labelled points)",
                 !pa ? "the first file" : "the second file");
        goto cleanup;
    }
    /* Points: A's order, then B's that A lacks. */
    size_t na = (size_t)cJSON_GetArraySize(pa), nb = (size_t)cJSON_GetArraySize(pb);
    const char **labels = cm_calloc(na + nb + 1, sizeof *labels);
    if (!labels) {
        st = CM_ERR_NO_MEMORY;
        goto cleanup;
    }
    size_t nl = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, pa) {
        const char *l = cJSON_GetObjectItemCaseSensitive(p, "label")->valuestring;
        bool dup = false;
        for (size_t i = 0; i < nl; i++) dup |= !strcmp(labels[i], l);
        if (!dup) labels[nl++] = l;
    }
    cJSON_ArrayForEach(p, pb) {
        const char *l = cJSON_GetObjectItemCaseSensitive(p, "label")->valuestring;
        bool dup = false;
        for (size_t i = 0; i < nl; i++) dup |= !strcmp(labels[i], l);
        if (!dup) labels[nl++] = l;
    }
    out = cm_calloc(nl * N_METRICS + 1, sizeof *out);
    if (!out) {
        cm_free(labels);
        st = CM_ERR_NO_MEMORY;
        goto cleanup;
    }
    size_t n = 0;
    for (size_t m = 0; m < N_METRICS; m++)
        for (size_t i = 0; i < nl; i++) {
            bench_cmp_row_t *r = &out[n++];
            snprintf(r->point, sizeof r->point, "%s", labels[i]);
            snprintf(r->metric, sizeof r->metric, "%s", k_metrics[m].path);
            r->a = cmp_metric(cmp_find(pa, labels[i]), k_metrics[m].path);
            r->b = cmp_metric(cmp_find(pb, labels[i]), k_metrics[m].path);
            r->higher_better = k_metrics[m].higher_better;
            bench_compare_values(r->a, r->b, &r->diff, &r->pct);
        }
    cm_free(labels);
    *rows = out;
    *n_rows = n;
    out = NULL;
    st = CM_OK;
cleanup:
    cm_free(out);
    cJSON_Delete(a);
    cJSON_Delete(b);
    return st;
}

/* Reads a whole file (at most 256 MiB) into a NUL-terminated heap string. */
static char *cmp_read(const char *path) {
    FILE *f = fopen(path, "rb");
    struct stat sb;
    char *buf = NULL;
    if (!f) return NULL;
    if (fstat(fileno(f), &sb) == 0 && sb.st_size >= 0 && sb.st_size < (256 << 20)) {
        buf = cm_malloc((size_t)sb.st_size + 1);
        if (buf && fread(buf, 1, (size_t)sb.st_size, f) != (size_t)sb.st_size) {
            cm_free(buf);
            buf = NULL;
        }
        if (buf) buf[sb.st_size] = '\0';
    }
    fclose(f);
    return buf;
}

/* A table cell: @x with 3 decimals (@sign: with its sign; @pct: as a
 * percentage with 1 decimal), or "-" when it is not a number. */
static void cmp_cell(char *buf, size_t n, double x, bool sign, bool pct) {
    if (!isfinite(x))
        snprintf(buf, n, "-");
    else if (pct)
        snprintf(buf, n, "%+.1f%%", x);
    else if (sign)
        snprintf(buf, n, "%+.3f", x);
    else
        snprintf(buf, n, "%.3f", x);
}

static const char *g_label_a, *g_label_b, *g_csv;
static const cm_flag_t k_flags[] = {
    {.name = "label-a",
     .type = CM_FLAG_STRING,
     .dst = &g_label_a,
     .def = "A",
     .help = "column name of the first run"},
    {.name = "label-b",
     .type = CM_FLAG_STRING,
     .dst = &g_label_b,
     .def = "B",
     .help = "column name of the second run"},
    {.name = "csv",
     .type = CM_FLAG_STRING,
     .dst = &g_csv,
     .help = "also write the rows to this CSV file"},
    {0},
};

int bench_compare_main(int argc, char **argv) {
    static const cm_flag_t *const tables[] = {k_flags, NULL};
    const cm_cmd_spec_t spec = {.prog = "tandem bench compare",
                                .summary = "Side-by-side report of two `bench serve` results.",
                                .args_usage = "A.json B.json",
                                .tables = tables,
                                .max_positional = 2};
    char *pos[2];
    int code, npos;
    if (!cm_cli_parse(&spec, argc, argv, pos, &npos, &code)) return code;
    if (npos != 2) {
        fprintf(stderr, "%s: needs two result files: A.json B.json\n", spec.prog);
        return CM_EXIT_USAGE;
    }
    int rc = CM_EXIT_FAILURE;
    char *ta = cmp_read(pos[0]), *tb = cmp_read(pos[1]);
    bench_cmp_row_t *rows = NULL;
    size_t n = 0;
    char err[256];
    FILE *fc = NULL;
    if (!ta || !tb) {
        fprintf(stderr, "%s: cannot read '%s'\n", spec.prog, !ta ? pos[0] : pos[1]);
        goto cleanup;
    }
    if (bench_compare_build(ta, tb, &rows, &n, err, sizeof err) != CM_OK) {
        fprintf(stderr, "%s: %s\n", spec.prog, err);
        goto cleanup;
    }
    if (g_csv && !(fc = fopen(g_csv, "w"))) {
        fprintf(stderr, "%s: cannot write '%s'\n", spec.prog, g_csv);
        goto cleanup;
    }
    if (fc) fprintf(fc, "metric,point,%s,%s,difference,pct_change\n", g_label_a, g_label_b);
    printf("A = %s (%s)\nB = %s (%s)\n", g_label_a, pos[0], g_label_b, pos[1]);
    for (size_t i = 0; i < n; i++) {
        const bench_cmp_row_t *r = &rows[i];
        if (i == 0 || strcmp(r->metric, rows[i - 1].metric)) {
            printf("\n%s (%s is better)\n", r->metric, r->higher_better ? "higher" : "lower");
            printf("  %-18s | %14s | %14s | %12s | %9s\n", "point", g_label_a, g_label_b,
                   "Difference", "% Change");
        }
        char ca[32], cb[32], cd[32], cp[32];
        cmp_cell(ca, sizeof ca, r->a, false, false);
        cmp_cell(cb, sizeof cb, r->b, false, false);
        cmp_cell(cd, sizeof cd, r->diff, true, false);
        cmp_cell(cp, sizeof cp, r->pct, false, true);
        printf("  %-18s | %14s | %14s | %12s | %9s\n", r->point, ca, cb, cd, cp);
        if (fc) {
            fprintf(fc, "%s,%s", r->metric, r->point);
            const double v[] = {r->a, r->b, r->diff, r->pct};
            for (int k = 0; k < 4; k++) {
                if (isfinite(v[k]))
                    fprintf(fc, ",%.9g", v[k]);
                else
                    fputs(",", fc);
            }
            fputc('\n', fc);
        }
    }
    rc = CM_EXIT_OK;
cleanup:
    if (fc && fclose(fc) != 0) rc = CM_EXIT_FAILURE;
    cm_free(rows);
    cm_free(ta);
    cm_free(tb);
    return rc;
}
