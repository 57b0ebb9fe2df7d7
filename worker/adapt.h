/* adapt.h — the worker's batch cap (the spec's AdaptiveBatchSizeController,
 * worker side): how many sequences one decode step may advance.
 *
 * Two owners, one concern each.  This controller owns the latency cap
 * (`own`): it moves on step times only.  The supervisor owns the memory
 * bound (`limit`, from set_batch): it moves on memory and pressure only
 * (supervisor/batchctl.h).  The cap in force is the smaller of the two,
 * within [min_cap, max_cap].  Neither reacts to the other's signal, so one
 * slow stretch is answered once, not twice.
 *
 * Evidence: decode-only steps (batch > 0), in windows of ADAPT_WINDOW steps
 * taken under one cap in force (every change of it starts a new window).  A
 * window is slow when its median step time is above max_ms — a single slow
 * step (a page fault, a heartbeat) is not enough — and its batch is the
 * largest one it ran.
 *
 * Rules, at the end of each window:
 *  - Slow: halve the batch that ran (min(own, batch) / 2, at least
 *    min_cap).  The cap before the first cut of an episode is kept as
 *    `prev`.  A cut preempts nothing, so its verdict waits for a window
 *    whose batch is down to the new cap.
 *  - A halving that does not make the steps faster (that window is still
 *    slow and its median above ADAPT_FUTILE, 3/4, of the one before) proves
 *    the batch is not what makes them slow: another process has the CPU.
 *    The cut is undone and no cut is tried for ADAPT_HOLD windows or until
 *    a window is not slow — a smaller batch would only queue requests
 *    behind it (what took the cap 64 -> 1 under CPU contention and the
 *    TTFT from 0.1 s to tens of seconds).
 *  - Not slow, and the cap below `prev`: recovery, multiplicative — the cap
 *    doubles per window, up to prev (a good cap before the episode), so a
 *    transient costs a few windows, not minutes.
 *  - Under target, the batch at the cap in force, own the binding one:
 *    growth past anything known, by a quarter (at least one) per window.
 *  - Hysteresis.  Between target and max nothing rises but a recovery.  Two
 *    slow windows in a row right after a rise (growth or recovery) that the
 *    batch grew into undo it, and the cap is remembered as too slow: rises
 *    stop a quarter below it (one slow window may be noise).  If undoing
 *    the rise does not make the steps faster either, the rise was not the
 *    cause: it is restored and the ceiling forgotten.  The ceiling is also
 *    forgotten when steps get twice as fast as they were just below it
 *    (the contention that made it too slow is over), or after ADAPT_HOLD
 *    windows — and a recovery it blocked that long ends there, so the same
 *    wall is not probed again and again.
 *  - Pressure.  While the level is not normal the latency cap does not rise
 *    (the supervisor's bound is falling); it never cuts on the level.
 * Every change carries a reason string for the log (a->reason).
 *
 * Not thread-safe; the worker's loop owns it.  Nothing is allocated.
 */
#ifndef RILL_ADAPT_H
#define RILL_ADAPT_H

#include <stdbool.h>
#include <stdint.h>

#include "common/pressure_level.h"

#define ADAPT_WINDOW 8    /* steps per decision */
#define ADAPT_HOLD   64   /* windows a too-slow cap, or a useless cut, is remembered */
#define ADAPT_FUTILE 0.75 /* a halving that leaves more than this of the step time did not help */

struct adapt {
    uint32_t min_cap, max_cap;     /* config bounds */
    uint32_t limit;                /* the supervisor's bound (memory) */
    uint32_t own;                  /* the latency cap: this controller's */
    uint32_t cap;                  /* in force: min(own, limit) within [min_cap, max_cap] */
    double target_ms, max_ms;
    double lat[ADAPT_WINDOW];      /* the current window, in arrival order */
    uint32_t bsz[ADAPT_WINDOW];
    uint32_t n;                    /* steps in the window */
    uint32_t prev;                 /* own before the current episode of cuts (0: none) */
    uint32_t cut_from;             /* the last change was a latency cut from this own (0: it was not) */
    double cut_ms;                 /* the window median that caused it */
    bool cut_undoes_rise;          /* that cut undid a rise (and set the ceiling) */
    uint32_t rose_from;            /* the last change was a rise from this own, unconfirmed (0: none) */
    bool rise_suspect;             /* one slow window since that rise */
    uint32_t ceiling, hold;        /* a cap found too slow; windows before rises may reach it again */
    double ceiling_ms;             /* median step just below it when found (0: not measured yet) */
    uint32_t futile;               /* windows in which no cut is tried: the last one did not help */
    enum pressure_level pressure;
    uint64_t windows;              /* windows judged (for tests and stats) */
    char reason[160];              /* why the last change happened */
};

/* Start with own = initial (clamped), no supervisor bound (max_cap), level
 * normal.  max_ms below target_ms is raised to it. */
void adapt_init(struct adapt *a, uint32_t min_cap, uint32_t max_cap, uint32_t initial, double target_ms,
                double max_ms);

/* Record a step: `ms` for a step that advanced `batch` decode sequences
 * (batch 0 is no evidence and ignored).  Returns true if the cap in force
 * changed (see a->cap, a->reason). */
bool adapt_step(struct adapt *a, double ms, uint32_t batch);

/* The supervisor's bound (0 counts as 1).  Returns true if the cap in force
 * changed. */
bool adapt_set_limit(struct adapt *a, uint32_t limit);

/* The memory-pressure level.  Never changes the cap (memory is the
 * supervisor's: it sends a bound); only holds rises while not normal. */
void adapt_set_pressure(struct adapt *a, enum pressure_level level);

#endif
