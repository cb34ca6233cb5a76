/*
 * dw_stop.h - stop-string matching over streamed text, as OpenAI and vLLM
 * define it: generation ends at the first occurrence of any stop string,
 * and the returned text excludes it. Text that could still turn out to be
 * the start of a stop string is held back until the next delta decides.
 *
 * Pure (no I/O); one matcher per request; not thread-safe.
 */
#ifndef TANDEM_DW_STOP_H
#define TANDEM_DW_STOP_H

#include "cm_base.h"

typedef struct dw_stop dw_stop_t;

/* Creates a matcher for @n stop strings (each non-empty; copied). Returns
 * NULL on OOM or an empty string. */
dw_stop_t *dw_stop_new(const char *const *stops, size_t n);
void dw_stop_free(dw_stop_t *s);

/*
 * Feeds the next text delta. Writes into *@out (pointer into the matcher,
 * valid until the next call) / *@out_len the text that is now safe to
 * emit. Returns true when a stop string matched: *@out then holds the text
 * up to (not including) it, and nothing more will be emitted.
 */
bool dw_stop_feed(dw_stop_t *s, const char *delta, size_t len, const char **out, size_t *out_len);

/* At the end of generation: the held-back text (no stop string matched). */
void dw_stop_flush(dw_stop_t *s, const char **out, size_t *out_len);

#endif /* TANDEM_DW_STOP_H */
