/* procstat.h — small facts about processes and samples, read one way
 * everywhere: resident memory from /proc, and the nearest-rank percentile
 * of a sorted sample (the summaries' p95). */
#ifndef RILL_PROCSTAT_H
#define RILL_PROCSTAT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Resident bytes of process `pid` (0: this process) from /proc/PID/statm;
 * 0 when it cannot be read (the process is gone). */
uint64_t procstat_rss(pid_t pid);

/* Peak resident bytes of process `pid` (0: this process) since it started:
 * VmHWM of /proc/PID/status; 0 when it cannot be read. */
uint64_t procstat_peak_rss(pid_t pid);

/* The index of the q-quantile (0 < q <= 1) in a sorted sample of n > 0
 * values, by nearest rank: the smallest value with at least q of the
 * sample at or below it. */
size_t procstat_rank(size_t n, double q);

#endif
