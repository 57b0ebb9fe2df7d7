/* batchctl.h — the supervisor's upper bound on each worker's batch cap (the
 * spec's AdaptiveBatchSizeController, host side): the memory bound, sent as
 * `set_batch`.
 *
 * One owner per concern.  The supervisor sees the machine's memory and every
 * worker, so it owns the memory bound; the worker owns its latency cap
 * (worker/adapt.h) and runs at the smaller of the two.  This controller does
 * not look at step times: a slow stretch is the worker's to answer, once
 * (when both halved on the same slow heartbeats, one CPU-contention
 * transient took the cap from 64 to 1 for a minute).
 *
 * Inputs: heartbeats (struct proto_heartbeat) and pressure levels, each with
 * a CLOCK_MONOTONIC time in ns given by the caller (tests script it), and
 * the memory share of one worker.  Output per worker: whether the bound
 * changed, the new bound and a reason.
 *
 * Rules, per worker, bound always within [min_batch, max_batch]:
 *  - Goal.  Without memory trouble the bound is `initial` (max_batch by
 *    default): where a worker starts and the most it climbs back to.
 *  - Memory.  A bound from memory: (share - base) / per_seq sequences, where
 *    base = rss_bytes - kv_bytes (everything but the KV cache: weights,
 *    buffers, and KV pages of finished sequences not yet trimmed — so it errs
 *    high, which is the safe side) and per_seq is the KV bytes of one
 *    sequence: measured as kv_bytes / active when the worker runs something
 *    (rising to a bigger sample at once, decaying towards smaller ones by
 *    1/10 per heartbeat, because sequences grow as they generate and the
 *    estimate must not lag a growing batch), and never below the configured
 *    kv_bytes_per_token x assumed_tokens (a floor for the start, when the
 *    first sequences are short).  With neither, or share 0, there is no
 *    memory bound.  A bound above the memory bound is cut to it; climbs stop
 *    `mem_headroom` (10 %) below it, so a memory bound that jitters by a few
 *    sequences does not move the bound up and down.
 *  - Pressure.  Entering warning halves the bound (once per entry);
 *    entering critical halves it again (normal -> critical: a quarter);
 *    entering emergency drops it to at most the worker's active sequences
 *    (at least min_batch), so nothing new gets in — refusing admissions is
 *    the worker's job.  A jump over levels applies the cuts of every level
 *    crossed (normal -> emergency: a quarter, then the active sequences),
 *    so a sudden spike is never treated more gently than a gradual one.
 *    These cuts are immediate.  While the level is not normal the bound
 *    never rises (memory cuts still happen).
 *  - Climbing back.  Level normal for min_interval: a bound below its goal
 *    (initial, at most the memory bound less the headroom) rises by 25 %
 *    (at least 1) per min_interval, whether or not the worker is saturated
 *    (so it is ready when the load returns).  Not at once, so a recovery
 *    cannot throw the memory straight back over the threshold (16 -> 64 in
 *    7 s).  Pressure that comes back while the bound is still climbing, or
 *    within forget_ns (60 s) of the last episode, marks that bound as where
 *    memory runs out: climbs stop a step (25 %) below it for forget_ns, or
 *    the bound would cycle between the cut and the same wall.
 *  - Pace.  Apart from the pressure cuts, a worker's bound changes at most
 *    once per min_interval_ns (1 s; 10 heartbeats).
 * A worker that reports a batch_limit other than its bound (it restarted,
 * or missed a set_batch) gets `resend`, at most once per min_interval.
 *
 * Not thread-safe; the supervisor's loop owns it.  Nothing is allocated.
 */
#ifndef RILL_BATCHCTL_H
#define RILL_BATCHCTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto.h"
#include "supervisor/pressure.h"

struct rill_config;

#define BATCHCTL_MAX_WORKERS PROTO_MAX_WORKERS

/* Why a bound moved, for the reason text and the /metrics counters. */
enum batchctl_why {
    BATCHCTL_WHY_MEMORY = 0,       /* over the memory bound */
    BATCHCTL_WHY_PRESSURE,         /* entering warning / critical / emergency */
    BATCHCTL_WHY_RECOVER,          /* climbing back towards the goal */
    BATCHCTL_WHY_COUNT
};

struct batchctl_config {
    uint32_t min_batch, max_batch; /* worker.min_batch / max_batch */
    uint32_t initial;             /* a worker's goal and first bound (0: max_batch) */
    uint64_t min_interval_ns;     /* between two changes of one worker (1 s) */
    uint64_t forget_ns;           /* how long a bound where pressure came back caps climbs (60 s) */
    double mem_headroom;          /* climbs stop this fraction below the memory bound (0.1) */
    uint64_t kv_bytes_per_token;  /* 0: unknown (the model's layers x kv_dim x 2 x 4) */
    uint32_t assumed_tokens;      /* context a sequence is assumed to use (256) */
};

/* State of one worker; read-only for the caller (metrics). */
struct batchctl_worker {
    bool in_use;
    char id[PROTO_ID_LEN + 1];
    uint32_t bound;
    uint32_t active;              /* from the last heartbeat */
    uint32_t mem_bound;           /* from the last heartbeat; max_batch when none */
    double kv_per_seq;            /* measured estimate, bytes; 0: none yet */
    uint64_t last_change_ns, last_send_ns; /* 0: never */
    bool recovering;              /* climbing back after pressure */
    uint64_t episode_ns;          /* when the last pressure episode began (0: never) */
    uint32_t pressed_at;          /* a bound at which pressure came back (0: none) */
    uint64_t pressed_ns;          /* when; climbs stay below it for forget_ns */
};

struct batchctl {
    struct batchctl_config cfg;
    uint64_t share_bytes;         /* one worker's memory share; 0: no memory bound */
    enum pressure_level level;
    uint64_t normal_since_ns;
    uint64_t changes[BATCHCTL_WHY_COUNT]; /* bound changes per reason kind */
    uint64_t resends;
    struct batchctl_worker w[BATCHCTL_MAX_WORKERS];
};

/* One worker's outcome. */
struct batchctl_change {
    char id[PROTO_ID_LEN + 1];
    bool changed;                 /* the bound moved: send set_batch {bound, reason} */
    bool resend;                  /* it did not, but the worker has another limit: send it again */
    uint32_t bound, old_bound;
    enum batchctl_why why;        /* when changed */
    char reason[PROTO_NOTE_LEN + 1]; /* "pressure warning: 64 -> 32" */
};

/* Defaults above with the worker keys of the config (min/max batch);
 * kv_bytes_per_token is left 0 for the caller who knows the model. */
void batchctl_config_from(const struct rill_config *c, struct batchctl_config *out);

/* Start with no workers, level normal, no memory share.  RILL_E_BAD_CONFIG
 * if min_batch is 0 or above max_batch, or mem_headroom is outside
 * [0, 0.9]. */
int batchctl_init(struct batchctl *b, const struct batchctl_config *cfg);

/* One worker's memory share in bytes (budget minus the gateway's and the
 * supervisor's part, divided among the workers); 0 removes the memory
 * bound.  Takes effect at each worker's next heartbeat. */
void batchctl_set_share(struct batchctl *b, uint64_t share_bytes);

/* A heartbeat of worker hb->id at now_ns (its rss, kv bytes, active
 * sequences and batch_limit are read; its step times are not).  A worker
 * not seen before starts at cfg.initial under the current pressure cuts.  *out tells what to do.
 * Errors: RILL_E_BAD_REQUEST (empty id), RILL_E_FULL (more than
 * BATCHCTL_MAX_WORKERS workers; forget dead ones). */
int batchctl_heartbeat(struct batchctl *b, const struct proto_heartbeat *hb, uint64_t now_ns,
                       struct batchctl_change *out);

/* The pressure level at now_ns (call it with every level the monitor
 * reports; the same level again is a no-op).  Writes one entry per worker
 * whose bound changed, at most `cap` (BATCHCTL_MAX_WORKERS suffices; a
 * change beyond `cap` still happens and reaches the worker as a `resend`
 * a min_interval later), and returns how many; RILL_E_BAD_REQUEST for a level out of range. */
int batchctl_pressure(struct batchctl *b, enum pressure_level level, uint64_t now_ns, struct batchctl_change *out,
                      size_t cap);

/* Drop a worker's state (it died; its successor starts afresh). */
void batchctl_forget(struct batchctl *b, const char *id);

/* A worker's state, NULL if unknown. */
const struct batchctl_worker *batchctl_find(const struct batchctl *b, const char *id);

/* "memory", "pressure", "recover": metric labels. */
const char *batchctl_why_name(enum batchctl_why why);

#endif
