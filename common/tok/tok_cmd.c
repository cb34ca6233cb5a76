/*
 * tok_cmd.c - `tandem tokenize --model DIR [--decode]`: standard input text
 * to a JSON array of token ids, or (with --decode) a JSON array of ids to
 * text. Bad input is a one-line error and exit status 2.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cm_cli.h"
#include "tok.h"

static const char *g_model;
static bool g_decode, g_special;

static const cm_flag_t k_flags[] = {
    {.name = "model",
     .type = CM_FLAG_STRING,
     .dst = &g_model,
     .required = true,
     .help = "model directory with tokenizer.json"},
    {.name = "decode",
     .type = CM_FLAG_BOOL,
     .dst = &g_decode,
     .def = "false",
     .help = "read a JSON array of ids and print the text"},
    {.name = "add-special",
     .type = CM_FLAG_BOOL,
     .dst = &g_special,
     .def = "false",
     .help = "add the model's special tokens (e.g. BOS) when encoding"},
    {0},
};

static char *read_stdin(size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *b = cm_malloc(cap);
    while (b) {
        if (n == cap) {
            char *nb = cm_realloc_array(b, cap *= 2, 1);
            if (!nb) {
                cm_free(b);
                return NULL;
            }
            b = nb;
        }
        size_t r = fread(b + n, 1, cap - n, stdin);
        if (r == 0) break;
        n += r;
    }
    *len = n;
    return b;
}

int tok_cmd_tokenize(int argc, char **argv) {
    static const cm_flag_t *const tables[] = {k_flags, NULL};
    const cm_cmd_spec_t spec = {.prog = "tandem tokenize",
                                .summary = "Text on stdin -> JSON array of token ids; with "
                                           "--decode, a JSON array of ids -> text.",
                                .tables = tables};
    int code, npos;
    if (!cm_cli_parse(&spec, argc, argv, NULL, &npos, &code)) return code;
    char err[512];
    tok_t *t;
    if (tok_load(g_model, &t, err, sizeof err) != CM_OK) {
        fprintf(stderr, "tandem tokenize: %s\n", err);
        return CM_EXIT_FAILURE;
    }
    size_t len;
    char *in = read_stdin(&len);
    int rc = CM_EXIT_FAILURE;
    if (!in) goto out;
    if (!g_decode) {
        int32_t *ids;
        size_t n;
        if (tok_encode(t, in, len, g_special, &ids, &n) != CM_OK) goto out;
        fputc('[', stdout);
        for (size_t i = 0; i < n; i++) printf(i ? ",%d" : "%d", ids[i]);
        fputs("]\n", stdout);
        cm_free(ids);
        rc = CM_EXIT_OK;
        goto out;
    }
    cJSON *j = cJSON_ParseWithLength(in, len);
    size_t n = cJSON_IsArray(j) ? (size_t)cJSON_GetArraySize(j) : 0;
    int32_t *ids = cm_malloc_array(n ? n : 1, sizeof *ids);
    bool ok = cJSON_IsArray(j) && ids;
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, j) {
        if (!ok) break;
        ok = cJSON_IsNumber(e) && e->valuedouble >= 0 && e->valuedouble < 2147483648.0 &&
             e->valuedouble == (double)(int32_t)e->valuedouble;
        if (ok) ids[i++] = (int32_t)e->valuedouble;
    }
    cJSON_Delete(j);
    if (!ok) {
        fprintf(stderr, "tandem tokenize: --decode expects a JSON array of token ids\n");
        cm_free(ids);
        rc = CM_EXIT_USAGE;
        goto out;
    }
    char *text;
    size_t tl;
    cm_status_t st = tok_decode(t, ids, n, false, &text, &tl);
    cm_free(ids);
    if (st == CM_ERR_OUT_OF_RANGE) {
        fprintf(stderr, "tandem tokenize: a token id is outside the vocabulary (%u)\n",
                tok_vocab_size(t));
        rc = CM_EXIT_USAGE;
        goto out;
    }
    if (st != CM_OK) goto out;
    fwrite(text, 1, tl, stdout);
    cm_free(text);
    rc = CM_EXIT_OK;
out:
    cm_free(in);
    tok_free(t);
    return rc;
}
