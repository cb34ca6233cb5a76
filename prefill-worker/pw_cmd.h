/* pw_cmd.h - the prefill worker's command-line entry point. */
#ifndef TANDEM_PW_CMD_H
#define TANDEM_PW_CMD_H

/* `tandem prefill`. Returns the exit code. */
int pw_cmd_prefill(int argc, char **argv);

#endif /* TANDEM_PW_CMD_H */
