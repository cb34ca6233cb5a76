/*
 * pw_main.c - `tandem prefill`: the prefill worker. It shares the worker
 * runtime of decode-worker/dw_worker.c (engine, scheduler, control plane)
 * in the prefill role: each PrefillJob runs its prompt (chunked, batched
 * with other prompts), samples the first token, sends the prompt's KV
 * blocks over kvxfer into the blocks the decode worker reserved, and then
 * reports KvReady (first token, logprobs, sampler step) to the router.
 */
#include "dw_cmd.h"
#include "pw_cmd.h"

int pw_cmd_prefill(int argc, char **argv) { return dw_cmd_prefill(argc, argv); }
