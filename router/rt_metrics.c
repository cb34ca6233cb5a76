/* rt_metrics.c - fixed-bucket Prometheus histograms. */
#include "rt_metrics.h"

#include <stdio.h>

void rt_hist_init_latency(rt_hist_t *h, const char *name, const char *help) {
    static const double b[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                               0.5,   1.0,    2.5,   5.0,  10.0,  30.0, 60.0};
    *h = (rt_hist_t){.name = name, .help = help, .n_bounds = (int)(sizeof b / sizeof b[0])};
    for (int i = 0; i < h->n_bounds; i++) h->bounds[i] = b[i];
}

void rt_hist_observe(rt_hist_t *h, double v) {
    int i = 0;
    while (i < h->n_bounds && v > h->bounds[i]) i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

size_t rt_hist_render(const rt_hist_t *h, char *buf, size_t cap) {
    size_t n = 0;
#define APPEND(...)                                                                             \
    do {                                                                                        \
        int w_ = snprintf(buf ? buf + (n < cap ? n : cap) : NULL, buf && n < cap ? cap - n : 0, \
                          __VA_ARGS__);                                                         \
        if (w_ > 0) n += (size_t)w_;                                                            \
    } while (0)
    APPEND("# HELP %s %s\n# TYPE %s histogram\n", h->name, h->help, h->name);
    uint64_t cum = 0;
    for (int i = 0; i < h->n_bounds; i++) {
        cum += h->counts[i];
        APPEND("%s_bucket{le=\"%g\"} %llu\n", h->name, h->bounds[i], (unsigned long long)cum);
    }
    cum += h->counts[h->n_bounds];
    APPEND("%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", h->name,
           (unsigned long long)cum, h->name, h->sum, h->name, (unsigned long long)h->count);
#undef APPEND
    return n;
}
