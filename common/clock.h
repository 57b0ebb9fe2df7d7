/* clock.h — time in one unit: nanoseconds of CLOCK_MONOTONIC.
 *
 * CLOCK_MONOTONIC is shared by every process of a host, so a timestamp a
 * worker writes into a ring record can be compared with the gateway's clock.
 */
#ifndef RILL_CLOCK_H
#define RILL_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline double clock_ms_since(uint64_t t0_ns)
{
    return (double)(clock_ns() - t0_ns) / 1e6;
}

/* Wall-clock time in nanoseconds since the epoch (for logs only). */
static inline uint64_t clock_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#endif
