/* cm_time.c - monotonic and wall clocks, sleeps and deadlines. */
#include <errno.h>
#include <limits.h>
#include <time.h>

#include "cm_base.h"

uint64_t cm_time_mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t cm_time_mono_ms(void) { return cm_time_mono_ns() / 1000000ull; }

uint64_t cm_time_wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void cm_time_sleep_ns(uint64_t ns) {
    struct timespec req = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    struct timespec rem;
    while (nanosleep(&req, &rem) != 0 && errno == EINTR) req = rem;
}

int cm_deadline_left_ms(cm_deadline_t d) {
    uint64_t ns = cm_deadline_left_ns(d);
    uint64_t ms = (ns + 999999ull) / 1000000ull;
    return ms > (uint64_t)INT_MAX ? INT_MAX : (int)ms;
}
