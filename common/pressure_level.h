/* pressure_level.h — the memory-pressure levels: one list for every process.
 *
 * The supervisor's monitor computes the level (supervisor/pressure.h), the
 * control plane carries it (the `pressure` message and heartbeat
 * pressure_level, one byte each), the supervisor's batch bound cuts on it
 * (supervisor/batchctl.h) and the worker acts on it (worker/sched.h: trim the
 * free KV cache from warning, preempt down to the bound from critical, admit
 * nothing at emergency; worker/adapt.h: the latency cap does not rise while
 * the level is not normal).  Memory belongs to the supervisor: the worker
 * never cuts its batch on the level itself, it follows the supervisor's
 * bound (set_batch).
 *
 * The numbering is the wire value: append nothing between the levels.
 */
#ifndef RILL_PRESSURE_LEVEL_H
#define RILL_PRESSURE_LEVEL_H

enum pressure_level {
    PRESSURE_NORMAL = 0,
    PRESSURE_WARNING,
    PRESSURE_CRITICAL,
    PRESSURE_EMERGENCY,
    PRESSURE_LEVELS
};

/* "normal", "warning", "critical", "emergency" ("?" when out of range). */
const char *pressure_level_name(int level);

/* A level from a number that may be out of range (a caller's int): below
 * normal is normal, above emergency is emergency. */
enum pressure_level pressure_level_clamp(int level);

#endif
