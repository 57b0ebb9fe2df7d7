/* adapt.h — the worker's adaptive batch-size controller (the spec's
 * AdaptiveBatchSizeController): how many sequences one decode step may
 * advance.
 *
 * Inputs: each step's time and batch size, the memory-pressure level, and the
 * supervisor's upper bound (set_batch).  Rules:
 *  - a sliding window of the last ADAPT_WINDOW steps that had decode rows;
 *  - raise the cap by one when the last three steps averaged under the
 *    target latency *and* the batch was actually at the cap (otherwise there
 *    is no evidence that a bigger batch stays fast);
 *  - lower it (by a quarter, at least one) when the average rises above the
 *    maximum latency;
 *  - hysteresis: after a decrease, no increase for ADAPT_COOLDOWN steps, and
 *    the cap must have been good for a full window before rising past a
 *    value it was lowered from — so it does not oscillate around the edge;
 *  - pressure: warning halves the cap once on entering it; critical halves
 *    it again (and the scheduler preempts); back to normal returns it to
 *    what it was before the pressure, within the supervisor's bound — which
 *    the supervisor raises back gradually, so the recovery is paced there.
 * Every change carries a reason string for the log.
 */
#ifndef RILL_ADAPT_H
#define RILL_ADAPT_H

#include <stdbool.h>
#include <stdint.h>

#define ADAPT_WINDOW   10
#define ADAPT_COOLDOWN 20

struct adapt {
    uint32_t min_cap, max_cap;     /* config bounds */
    uint32_t limit;                /* supervisor's bound (<= max_cap) */
    uint32_t cap;                  /* current cap */
    double target_ms, max_ms;
    double lat[ADAPT_WINDOW];
    uint32_t bsz[ADAPT_WINDOW];
    uint32_t n, head;              /* samples held, next slot */
    uint32_t cooldown;             /* steps before the cap may rise */
    uint32_t ceiling;              /* a cap that proved too slow (0: none) */
    uint32_t good_streak;          /* consecutive good windows at the ceiling - 1 */
    int pressure;                  /* 0 normal .. 3 emergency */
    uint32_t pre_pressure_cap;     /* the cap when pressure began */
    char reason[128];              /* why the last change happened */
};

void adapt_init(struct adapt *a, uint32_t min_cap, uint32_t max_cap, uint32_t initial, double target_ms,
                double max_ms);

/* Record a step: `ms` for a step that advanced `batch` decode sequences.
 * Returns true if the cap changed (see a->cap, a->reason). */
bool adapt_step(struct adapt *a, double ms, uint32_t batch);

/* A new pressure level (0..3).  Returns true if the cap changed. */
bool adapt_pressure(struct adapt *a, int level);

/* The supervisor's bound.  Returns true if the cap changed. */
bool adapt_set_limit(struct adapt *a, uint32_t limit);

#endif
