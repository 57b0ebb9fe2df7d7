/* scale.h — how many workers the supervisor runs: between min_workers and
 * max_workers, following the load and memory pressure (the spec's
 * "component unloading under extreme pressure").
 *
 * The supervisor calls scale_decide() after every pressure sample with what
 * it knows of each worker slot; at most one decision comes back, which the
 * supervisor carries out (supervisor/sup.c) and logs with its reason.  The
 * rules, first match wins:
 *
 *  1. Unload (down, "pressure"): the level is emergency and more than
 *     min_workers run.  The ready worker with the fewest requests (running +
 *     waiting; ties: the highest slot) is unloaded at once: its requests
 *     move to the other workers (`migrate`), so its memory is freed now, not
 *     when its generations end.  The unload is owed back.
 *  2. Bring back (up, "pressure_relieved"): an unload is owed and the level
 *     is normal again.  If by then the load fits in the workers running
 *     (rule 4's test, without its wait), the debt is forgiven instead.
 *  3. Add (up, "queue"): the mean of the ready workers' waiting requests has
 *     stayed >= up_queued for up_ns.
 *  4. Retire (down, "idle"): nothing waits anywhere and the running
 *     sequences are at most half of what the other workers' batch caps
 *     hold (sum active <= (n - 1) * mean batch_cap / 2), held for down_ns.
 *     The ready worker with the fewest running sequences drains in place
 *     (no migration: nothing is urgent) and stops.
 *
 * Every rule waits cooldown_ns after the previous decision, except that an
 * unload waits only for the previous unload (a worker just added may be
 * what pushed memory over: it goes at once).  Starting a
 * worker (rules 2 and 3) also needs: fewer than max_workers running, no
 * worker starting, the level normal, and memory headroom: with a known
 * budget, used + the ready workers' mean RSS <= warning * budget.  Rules 3
 * and 4 never fire while a worker is starting or restarting.
 *
 * Pure: no clock, no I/O; the caller owns the struct.
 */
#ifndef RILL_SCALE_H
#define RILL_SCALE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/pressure_level.h"

struct rill_config;

enum scale_dir { SCALE_NONE = 0, SCALE_UP, SCALE_DOWN };

enum scale_why {
    SCALE_WHY_QUEUE = 0,          /* up: requests wait */
    SCALE_WHY_PRESSURE_RELIEVED,  /* up: an unload under pressure is given back */
    SCALE_WHY_PRESSURE,           /* down: emergency memory pressure */
    SCALE_WHY_IDLE,               /* down: the load fits in one worker fewer */
    SCALE_WHY_COUNT
};

/* A worker slot as the supervisor sees it. */
enum scale_slot {
    SCALE_SLOT_READY = 0,         /* running and said hello */
    SCALE_SLOT_STARTING,          /* spawned, no hello yet */
    SCALE_SLOT_RESTARTING,        /* crashed, will be started again */
    SCALE_SLOT_OFF,               /* stopped by a scaling decision: may be started */
    SCALE_SLOT_GONE               /* given up on, or draining to stop: neither */
};

struct scale_worker {
    enum scale_slot slot;
    uint32_t active, queued;      /* running sequences, requests waiting (heartbeat) */
    uint32_t batch_cap;           /* the worker's current cap */
    uint64_t rss;                 /* bytes; 0 when unknown */
};

struct scale_input {
    const struct scale_worker *w; /* every slot, by slot number */
    int n;
    enum pressure_level level;
    bool have_budget;             /* budget and used are known */
    uint64_t budget, used;
    uint64_t now_ns;
};

struct scale_config {
    int min, max;                 /* 1 <= min <= max */
    double up_queued;             /* waiting requests per ready worker */
    uint64_t up_ns, down_ns, cooldown_ns;
    double warning;               /* used/budget a new worker must stay under */
};

struct scale_decision {
    enum scale_dir dir;
    enum scale_why why;
    int slot;                     /* the slot to start (an OFF one) or stop (a READY one) */
    bool migrate;                 /* down: move its requests away now (else drain in place) */
    int before, after;            /* workers running */
    char detail[160];             /* the figures behind it, for the log */
};

struct scale {
    struct scale_config c;
    uint64_t queue_since_ns;      /* the queue rule has held since (0: not now) */
    uint64_t idle_since_ns;       /* the idle rule has held since (0: not now) */
    uint64_t last_ns;             /* the last decision (0: none yet) */
    uint64_t last_unload_ns;      /* the last unload (0: none yet) */
    uint32_t owed;                /* unloads under pressure not yet given back */
    uint64_t events[SCALE_WHY_COUNT];
    struct scale_decision last;   /* the last decision (dir NONE before any) */
};

/* The configuration from the config keys: min_workers / max_workers (0:
 * workers; max at least min), scale_*.  The number of workers to start
 * with is `workers` clamped to [min, max]; returns it, or RILL_E_BAD_CONFIG
 * with `why` when min > max. */
int scale_config_from(const struct rill_config *c, struct scale_config *out, char *why, size_t why_len);

void scale_init(struct scale *s, const struct scale_config *c);

/* Workers running: READY, STARTING or RESTARTING slots. */
int scale_running(const struct scale_input *in);

/* At most one decision for this moment (true), counted in s->events and
 * kept in s->last; false when nothing is to be done. */
bool scale_decide(struct scale *s, const struct scale_input *in, struct scale_decision *out);

const char *scale_why_name(enum scale_why why);
const char *scale_dir_name(enum scale_dir dir);
/* The direction of a reason. */
enum scale_dir scale_why_dir(enum scale_why why);

#endif
