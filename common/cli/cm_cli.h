/*
 * cm_cli.h - glue every `tandem <command>` uses: flag parsing with the
 * global flags (--log-level, --log-format) added, logging configured, help
 * and errors reported in one consistent way.
 */
#ifndef TANDEM_CM_CLI_H
#define TANDEM_CM_CLI_H

#include "cm_flags.h"

/* Exit codes shared by every command. */
enum {
    CM_EXIT_OK = 0,
    CM_EXIT_FAILURE = 1,      /* the command ran and failed */
    CM_EXIT_USAGE = 2,        /* bad flags or arguments */
    CM_EXIT_UNAVAILABLE = 69, /* feature not in this build */
};

/*
 * Parses flags for a command (see cm_flags_parse), adding the global flags,
 * and configures logging from them. Returns true when the command should
 * run; otherwise stores the process exit code in *@exit_code (0 after
 * --help, CM_EXIT_USAGE after printing a one-line error to stderr).
 */
bool cm_cli_parse(const cm_cmd_spec_t *spec, int argc, char **argv, char **pos, int *npos,
                  int *exit_code);

/* The global --log-level / --log-format values in force (after parsing),
 * for passing on to child processes. */
const char *cm_cli_log_level(void);
const char *cm_cli_log_format(void);

/* `tandem up` (cm_up.c). Returns the process exit code. */
int cm_cmd_up(int argc, char **argv);

#endif /* TANDEM_CM_CLI_H */
