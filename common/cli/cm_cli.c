/* cm_cli.c - shared command-line handling for tandem subcommands. */
#include "cm_cli.h"

#include <stdio.h>
#include <string.h>

static const char *g_log_level;
static const char *g_log_format;

static const cm_flag_t k_global_flags[] = {
    {.name = "log-level",
     .type = CM_FLAG_CHOICE,
     .dst = &g_log_level,
     .def = "info",
     .help = "log verbosity",
     .choices = "trace|debug|info|warn|error|off"},
    {.name = "log-format",
     .type = CM_FLAG_CHOICE,
     .dst = &g_log_format,
     .def = "text",
     .help = "log line format",
     .choices = "text|json"},
    {0},
};

bool cm_cli_parse(const cm_cmd_spec_t *spec, int argc, char **argv, char **pos, int *npos,
                  int *exit_code) {
    /* The spec's tables plus the global table, NULL-terminated. */
    const cm_flag_t *tables[16];
    size_t n = 0;
    for (const cm_flag_t *const *t = spec->tables; t && *t && n < 14; t++) tables[n++] = *t;
    tables[n++] = k_global_flags;
    tables[n] = NULL;
    cm_cmd_spec_t full = *spec;
    full.tables = tables;

    char err[512];
    cm_status_t st = cm_flags_parse(&full, argc, argv, pos, npos, err, sizeof err);
    if (st == CM_IN_PROGRESS) {
        *exit_code = CM_EXIT_OK;
        return false;
    }
    if (st != CM_OK) {
        fprintf(stderr, "%s\n", err);
        *exit_code = CM_EXIT_USAGE;
        return false;
    }
    cm_log_level_t level;
    cm_log_format_t format;
    /* Both were validated as choices above. */
    cm_log_level_parse(g_log_level, &level);
    cm_log_format_parse(g_log_format, &format);
    cm_log_configure(level, format, 2);
    return true;
}

const char *cm_cli_log_level(void) { return g_log_level ? g_log_level : "info"; }
const char *cm_cli_log_format(void) { return g_log_format ? g_log_format : "text"; }
