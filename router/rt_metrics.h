/*
 * rt_metrics.h - Prometheus histograms for the router's latency metrics
 * (TTFT, time per output token, end-to-end). Fixed buckets in seconds,
 * cumulative counts rendered in the text exposition format. Pure; one
 * thread.
 */
#ifndef TANDEM_RT_METRICS_H
#define TANDEM_RT_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define RT_HIST_BUCKETS 16

typedef struct {
    const char *name; /* e.g. "tandem_ttft_seconds" */
    const char *help;
    double bounds[RT_HIST_BUCKETS]; /* upper bounds, ascending; +Inf is implicit */
    int n_bounds;
    uint64_t counts[RT_HIST_BUCKETS + 1];
    double sum;
    uint64_t count;
} rt_hist_t;

/* Latency buckets from 1 ms to 60 s. */
void rt_hist_init_latency(rt_hist_t *h, const char *name, const char *help);
void rt_hist_observe(rt_hist_t *h, double seconds);
/* Appends the histogram to @buf like snprintf; returns the length it needs. */
size_t rt_hist_render(const rt_hist_t *h, char *buf, size_t cap);

#endif /* TANDEM_RT_METRICS_H */
