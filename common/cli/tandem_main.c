/*
 * tandem_main.c - the one binary: `tandem <command> [flags]`.
 *
 * Each command lives in the folder of its component and is listed in
 * k_commands below. A command whose component is not in this build yet is
 * listed with run == NULL: it answers with exit code 69 and says so.
 */
#include <stdio.h>
#include <string.h>

#include "cm_base.h"
#include "cm_cli.h"
#include "bench.h"
#include "dw_cmd.h"
#include "pw_cmd.h"
#include "rt_cmd.h"
#include "tok.h"
#include "cm_gpu.h"

typedef struct {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv); /* argv[0] is the first flag */
} tandem_cmd_t;

static const tandem_cmd_t k_commands[] = {
    {"router", "HTTP/gRPC front end and scheduler (OpenAI API)", rt_cmd_router},
    {"prefill", "prefill worker: runs prompts, streams KV blocks to decode workers",
     pw_cmd_prefill},
    {"decode", "decode worker: receives KV blocks, batches and generates tokens", dw_cmd_decode},
    {"worker", "colocated worker: prefill and decode in one process", dw_cmd_worker},
    {"up", "launch and supervise a local cluster (router + workers)", cm_cmd_up},
    {"generate", "generate text from a model in this process", dw_cmd_generate},
    {"tokenize", "tokenize stdin text to ids, or decode ids to text", tok_cmd_tokenize},
    {"bench", "benchmarks (see tandem bench --help)", bench_main},
};
enum { N_COMMANDS = sizeof k_commands / sizeof k_commands[0] };

static void print_version(FILE *out) {
    fprintf(out, "tandem %s (commit %s)\n", cm_version(), cm_build_commit());
    cm_gpu_info_t gi;
    cm_status_t st = cm_gpu_query(&gi);
    if (!cm_gpu_built())
        fprintf(out, "cuda: not built in\n");
    else if (st == CM_OK)
        fprintf(out, "cuda: built in, runtime %d, %d device(s), device 0: %s (sm_%d%d)\n",
                gi.runtime_version, gi.device_count, gi.name, gi.cc_major, gi.cc_minor);
    else
        fprintf(out, "cuda: built in, runtime %d, no usable device\n", gi.runtime_version);
}

static void print_help(FILE *out) {
    fprintf(out, "tandem - disaggregated prefill/decode LLM serving\n\n"
                 "usage: tandem <command> [flags]\n"
                 "       tandem <command> --help\n"
                 "       tandem --version\n\ncommands:\n");
    for (int i = 0; i < N_COMMANDS; i++)
        fprintf(out, "  %-10s %s%s\n", k_commands[i].name, k_commands[i].summary,
                k_commands[i].run ? "" : " (not yet available)");
    fprintf(out,
            "\nEvery flag --some-flag can also be set as TANDEM_SOME_FLAG in the environment;\n"
            "the command line wins. Docs: README.md, docs/ARCHITECTURE.md, docs/STATUS.md.\n");
}

/* Handles a command that is not in this build: --help works, the rest
 * answers with a one-line reason and exit code 69. */
static int run_unavailable(const tandem_cmd_t *cmd, int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: tandem %s [flags]\n\n%s\n\nThis command is not yet available in "
                   "this build (see docs/STATUS.md).\n",
                   cmd->name, cmd->summary);
            return CM_EXIT_OK;
        }
    }
    fprintf(stderr, "tandem %s: not yet available in this build (see docs/STATUS.md)\n", cmd->name);
    return CM_EXIT_UNAVAILABLE;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        print_help(stderr);
        return CM_EXIT_USAGE;
    }
    const char *name = argv[1];
    if (!strcmp(name, "--help") || !strcmp(name, "-h") || !strcmp(name, "help")) {
        if (argc > 2 && strcmp(name, "help") == 0) {
            /* `tandem help router` == `tandem router --help` */
            for (int i = 0; i < N_COMMANDS; i++) {
                if (!strcmp(argv[2], k_commands[i].name)) {
                    char *hargv[] = {(char *)"--help", NULL};
                    return k_commands[i].run ? k_commands[i].run(1, hargv)
                                             : run_unavailable(&k_commands[i], 1, hargv);
                }
            }
            fprintf(stderr, "tandem: unknown command '%s' (see tandem --help)\n", argv[2]);
            return CM_EXIT_USAGE;
        }
        print_help(stdout);
        return CM_EXIT_OK;
    }
    if (!strcmp(name, "--version") || !strcmp(name, "-V") || !strcmp(name, "version")) {
        print_version(stdout);
        return CM_EXIT_OK;
    }
    for (int i = 0; i < N_COMMANDS; i++) {
        if (!strcmp(name, k_commands[i].name)) {
            return k_commands[i].run ? k_commands[i].run(argc - 2, argv + 2)
                                     : run_unavailable(&k_commands[i], argc - 2, argv + 2);
        }
    }
    if (name[0] == '-')
        fprintf(stderr, "tandem: unknown flag '%s' (see tandem --help)\n", name);
    else
        fprintf(stderr, "tandem: unknown command '%s' (see tandem --help)\n", name);
    return CM_EXIT_USAGE;
}
