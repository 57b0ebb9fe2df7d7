/* machlim.h — this machine's limits, measured the way /work/shared/ANCHORS.md
 * measured them for llama.cpp's figures, so that an engine's speed can be
 * carried across machines as a ratio: decode GB/s ÷ read bandwidth and
 * prefill GFLOP/s ÷ FP32 FMA peak.
 *
 *   bandwidth: one thread per CPU (pinned), each summing its share of a
 *              256 MiB float array on huge pages (madvise) into 8 vector
 *              accumulators; a pass is 10 sweeps, the first dropped, the
 *              median of the other 9 kept.
 *   peak:      one thread per CPU (pinned), 12 independent FMA chains for
 *              25M iterations, with 256-bit (AVX2) and, where the CPU has it,
 *              512-bit (AVX-512F) registers; the peak is the larger.  (On Zen 4
 *              both give the same; on cores with full-width 512-bit FMA units
 *              the AVX-512 figure is twice the AVX2 one, and llama.cpp built
 *              for the host uses it.)
 *
 * The machine is shared: each measurement also reports how much CPU other
 * processes used while it ran (from /proc/stat), in cores.
 */
#ifndef RILL_MACHLIM_H
#define RILL_MACHLIM_H

#include <stdbool.h>

struct machlim {
    double read_gbs;        /* median of the kept sweeps, GB/s (1e9 bytes) */
    double read_min, read_max;
    double peak_avx2;       /* GFLOP/s, every thread together */
    double peak_avx512;     /* 0 when the CPU has no AVX-512F */
    double peak;            /* the larger */
    int threads;
    double others;          /* cores other processes used meanwhile */
};

/* Measure with `threads` threads (0: one per online CPU).  Takes about 2-4 s.
 * RILL_E_NOMEM when the array cannot be had, RILL_E_IO when threads cannot
 * start. */
int machlim_measure(int threads, struct machlim *out);

/* Busy cores of the whole machine over the next `seconds` (from /proc/stat);
 * NAN if it cannot be read. */
double machlim_busy(double seconds);

#endif
