/* dw_cmd.h - command-line entry points of the decode-worker component. */
#ifndef TANDEM_DW_CMD_H
#define TANDEM_DW_CMD_H

/* `tandem generate`. Returns the exit code. */
int dw_cmd_generate(int argc, char **argv);
/* `tandem worker` (colocated) and `tandem decode`. */
int dw_cmd_worker(int argc, char **argv);
int dw_cmd_decode(int argc, char **argv);
/* `tandem prefill`: the same runtime in the prefill role (prefill-worker/). */
int dw_cmd_prefill(int argc, char **argv);

#endif /* TANDEM_DW_CMD_H */
