/* telemetry.h — the gateway's per-token records and the telemetry stream
 * (docs/telemetry.md): one JSON snapshot per second to every subscribed
 * connection, with the last second's rates and latency percentiles and,
 * under a supervisor, its view of memory pressure and the workers.
 *
 * The token path only increments counters and records into histograms
 * (fixed arrays, no allocation, no lock: one thread).  sampling_rate thins
 * the per-token histogram records, never the counters.
 */
#ifndef RILL_TELEMETRY_H
#define RILL_TELEMETRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "common/hist.h"
#include "metrics.h"
#include "writer.h"

struct telemetry {
    const struct rill_config *c;
    struct metrics *m;           /* the cumulative figures (also written by others) */
    struct hist ttft_us, itl_us, gen_itl_us;  /* the current one-second window */
    struct metrics prev;         /* counters as at the window's start (histograms unused) */
    uint64_t prev_ns, next_ns;
    uint64_t rng;                /* sampling of per-token records */
    struct writer **subs;        /* subscribed connections' writers */
    size_t n_subs, cap_subs;
    bool snapshot_now;           /* a new subscriber: the next tick sends one */
};

/* What the snapshot shows besides the metrics, from the layers that know. */
struct telemetry_gauges {
    uint32_t active_streams, connections;
    int workers_ready;
    const char *supervisor_json; /* the supervisor's latest, or NULL when stale */
    size_t supervisor_json_len;
};

void telemetry_init(struct telemetry *t, const struct rill_config *c, struct metrics *m, uint64_t seed);
void telemetry_fini(struct telemetry *t);
/* Whether this token's per-token record is kept (sampling_rate; telemetry
 * off keeps none).  Counters never go through this. */
bool telemetry_sample(struct telemetry *t);
void telemetry_token(struct telemetry *t, uint64_t gen_itl_us);
void telemetry_delivery(struct telemetry *t, uint64_t delivery_us);
void telemetry_ttft(struct telemetry *t, uint64_t ttft_us);
/* (Un)subscribe a connection's writer.  RILL_E_NOMEM. */
int telemetry_subscribe(struct telemetry *t, struct writer *w, bool on);
/* Send a snapshot to the subscribers if a second has passed (or one just
 * subscribed). */
void telemetry_tick(struct telemetry *t, uint64_t now_ns, const struct telemetry_gauges *g);

#endif
