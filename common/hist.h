/* hist.h — latency histograms with log-linear buckets (HdrHistogram-like).
 *
 * Values are unsigned 64-bit integers in whatever unit the owner picks
 * (rill records microseconds).  The struct is fixed-size and holds its
 * buckets inline: nothing is allocated, ever, so a histogram can live in a
 * static, on the stack of a long-lived loop, or inside another struct.
 *
 * Buckets.  Bucket 0 holds the value 0.  Every other bucket is a range
 * (lo, hi] — open below, closed above, like Prometheus' `le` — found from
 * v-1: values 1..128 each have their own bucket (exact), and above that each
 * power-of-two range of v-1, [2^e, 2^(e+1)), is split into 64 equal
 * sub-buckets of width 2^(e-6).  The buckets cover 0..HIST_MAX_VALUE (2^40:
 * 12.7 days in microseconds); larger values are counted in `overflow`
 * (they still count in count, sum and max).
 *
 * Relative error.  Two values share a bucket only if they differ by less
 * than 1/64 of the smaller one.  hist_percentile() returns the middle of the
 * bucket holding the exact answer (clamped to [min, max]), so its result e
 * and the exact nearest-rank percentile x satisfy |e - x| <= x / 128
 * (HIST_REL_ERROR); it is exact for x <= 128, for q <= 0 (min) and q >= 1
 * (max).  A percentile that falls among overflowed samples answers max.
 *
 * Exact edges.  A histogram may carry up to HIST_EDGES_MAX "edges" (the
 * `le` bounds it will be exported with, e.g. Prometheus' 0.001 .. 10 s in
 * microseconds) with one exact counter each; recording then also finds the
 * first edge >= v by binary search (<= 5 comparisons).  hist_cumulative()
 * is exact at those edges whatever the bucket layout.  At any other bound it
 * is conservative: it counts only the buckets whose whole range is <= the
 * bound, so it never reports a sample as <= le that might be above it, and it
 * undercounts by at most the samples within 1/64 below the bound.  It is also
 * exact at a bucket top (every bound <= 128, and bounds b with b a multiple
 * of the bucket width there), for bounds >= max (everything) and < min
 * (nothing).  A value exactly equal to a bound is <= the bound, as `le` says.
 *
 * Threads.  One writer per histogram: hist_record() is a few plain stores
 * (no lock, no atomic), and that writer's thread may read the histogram
 * directly.  If another thread must read while the writer records, the
 * writer uses hist_record_atomic() (relaxed atomic adds, CAS for min/max)
 * and the reader takes hist_snapshot() and works on its private copy; the
 * copy's fields may disagree by the few records in flight (count may lag the
 * buckets), which the readers here tolerate: percentiles use the bucket
 * totals, not count.  In rill each process records and reads a histogram on
 * one thread (the worker's loop, the gateway's event loop), and ships it to
 * the supervisor serialized, so the atomic path is rarely needed.
 *
 * Memory: sizeof(struct hist) is about 18.2 KiB (2241 u64 buckets plus the
 * summary and edges).
 */
#ifndef RILL_HIST_H
#define RILL_HIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HIST_SUB_BITS   6                              /* 64 sub-buckets per power of two */
#define HIST_SUB_COUNT  (1u << HIST_SUB_BITS)
#define HIST_MAX_VALUE  (1ull << 40)                   /* largest value with a bucket */
#define HIST_BUCKETS    2241u                          /* {0} + 2240 ranges up to 2^40 */
#define HIST_REL_ERROR  (1.0 / 128.0)                  /* percentile bound, see above */
#define HIST_EDGES_MAX  16

/* Worst-case size of hist_encode()'s output (every bucket nonzero, every
 * varint at full length); real histograms take a few hundred bytes. */
#define HIST_ENCODED_MAX (2u + 6u * 10u + HIST_EDGES_MAX * 20u + 3u + HIST_BUCKETS * 13u)

struct hist {
    uint64_t count;                       /* samples, overflowed ones included */
    uint64_t sum;                         /* saturates at UINT64_MAX */
    uint64_t min;                         /* UINT64_MAX while empty */
    uint64_t max;                         /* 0 while empty */
    uint64_t overflow;                    /* samples > HIST_MAX_VALUE */
    uint32_t n_edges;
    uint32_t pad_;
    uint64_t edges[HIST_EDGES_MAX];       /* strictly ascending */
    uint64_t edge_counts[HIST_EDGES_MAX]; /* samples in (edges[i-1], edges[i]] */
    uint64_t buckets[HIST_BUCKETS];
};

/* The Prometheus default latency bounds, in seconds (0.001 .. 10). */
#define HIST_PROM_LE_COUNT 13
extern const double hist_prom_le_seconds[HIST_PROM_LE_COUNT];

/* An empty histogram without edges.  Cannot fail. */
void hist_init(struct hist *h);

/* An empty histogram with exact edges (`n` <= HIST_EDGES_MAX, strictly
 * ascending, each <= HIST_MAX_VALUE; copied).  RILL_E_BAD_CONFIG otherwise,
 * and h is then an empty histogram without edges. */
int hist_init_edges(struct hist *h, const uint64_t *edges, size_t n);

/* An empty histogram whose edges are hist_prom_le_seconds in a unit of
 * which `units_per_second` make a second (1000000 for microseconds).
 * RILL_E_BAD_CONFIG if a bound is not a whole number in that unit (2.5 ms in
 * milliseconds) — an inexact edge would make the exact counts lie. */
int hist_init_prom(struct hist *h, uint64_t units_per_second);

/* Forget every sample; keep the edges. */
void hist_reset(struct hist *h);

/* Add one sample.  O(1), no allocation, one writer (see Threads). */
void hist_record(struct hist *h, uint64_t v);

/* hist_record() that any number of threads may call at once, concurrently
 * with hist_snapshot().  Costs a handful of atomic read-modify-writes. */
void hist_record_atomic(struct hist *h, uint64_t v);

/* Copy `src` into `dst` with relaxed atomic loads: safe while other threads
 * call hist_record_atomic() on `src`. */
void hist_snapshot(struct hist *dst, const struct hist *src);

/* Add every sample of `src` into `dst` (the result is the histogram of the
 * union).  The edge lists must be identical (both may be empty):
 * RILL_E_BAD_CONFIG otherwise, and dst is left unchanged. */
int hist_merge(struct hist *dst, const struct hist *src);

/* The q-quantile (q in [0, 1]; 0.99 for p99) by nearest rank: the smallest
 * recorded value x such that at least ceil(q * n) samples are <= x, within
 * HIST_REL_ERROR of it.  0 for an empty histogram. */
uint64_t hist_percentile(const struct hist *h, double q);

/* sum / count, 0.0 for an empty histogram. */
double hist_mean(const struct hist *h);

/* For each bound le[i] (in the histogram's unit; any order), out[i] = the
 * number of samples <= le[i]: exact at the histogram's edges and in the
 * cases listed above, conservative (never too high) elsewhere.  The
 * `+Inf` bucket is h->count. */
void hist_cumulative(const struct hist *h, const uint64_t *le, size_t n, uint64_t *out);

/* The bucket of v: every value in [*lo, *hi] is recorded indistinguishably
 * from v.  For v > HIST_MAX_VALUE, the overflow range (HIST_MAX_VALUE, max]. */
void hist_bucket_range(uint64_t v, uint64_t *lo, uint64_t *hi);

/* Serialize into buf (cap bytes): a sparse form holding the summary, the
 * edges and only the nonzero buckets, as LEB128 varints.  Returns 0 and the
 * length in *len, or RILL_E_TOO_LARGE if cap is too small (HIST_ENCODED_MAX
 * always suffices). */
int hist_encode(const struct hist *h, uint8_t *buf, size_t cap, size_t *len);

/* Rebuild a histogram from hist_encode()'s bytes.  Input is untrusted: any
 * truncation, unknown version, out-of-range bucket, bucket totals that do
 * not add up to count, or trailing bytes give RILL_E_BAD_FORMAT and leave h
 * an empty histogram without edges. */
int hist_decode(struct hist *h, const uint8_t *buf, size_t len);

#endif
