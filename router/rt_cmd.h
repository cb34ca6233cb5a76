/* rt_cmd.h - the router's command-line entry point. */
#ifndef TANDEM_RT_CMD_H
#define TANDEM_RT_CMD_H

/* `tandem router`; argv[0] is the first flag. Returns the exit code. */
int rt_cmd_router(int argc, char **argv);

#endif /* TANDEM_RT_CMD_H */
