/* transport.h — the gateway's bottom layer: it only moves records.
 *
 * For each worker: its token ring (read by the service thread, watched by a
 * reader thread that sleeps on the ring's futex and wakes the loop) and a
 * ZeroMQ DEALER to its request socket (submit, cancel).  For the supervisor:
 * a DEALER to its control socket (hello, heartbeat out; workers, drain,
 * shutdown, stats in).  Everything that comes in is handed up through the
 * callbacks given to transport_init(); the layer knows nothing of streams,
 * connections or clients.
 *
 * Workers come from the supervisor's `workers` messages, or, without a
 * supervisor, from worker_list ("endpoint@ring,..."), re-opened when a
 * worker comes back with a new ring epoch.  A worker the supervisor lists as
 * draining keeps its ring read (its running requests finish) but is picked
 * for nothing new.
 *
 * Threads: every function runs on the lws service thread; the reader
 * threads only touch the atomic flags of their worker.
 */
#ifndef RILL_TRANSPORT_H
#define RILL_TRANSPORT_H

#include <libwebsockets.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/config.h"
#include "common/proto.h"
#include "common/ring.h"

#define TRANSPORT_MAX_WORKERS PROTO_MAX_WORKERS
/* The lws protocol of the ZeroMQ descriptors adopted into the loop; it
 * belongs on a vhost that does not listen, so no client can select it. */
#define TRANSPORT_LWS_PROTOCOL "rill-zmq"

/* What the layer above is told.  Every callback runs on the service thread;
 * `ctx` is the one given to transport_init(). */
struct transport_cb {
    void *ctx;
    /* A message record from a worker's ring (accepted, rejected), in order
     * with its tokens; the callee may keep what it takes out of m. */
    void (*on_msg)(void *ctx, int worker, struct proto_msg *m);
    /* A token record from a worker's ring. */
    void (*on_token)(void *ctx, int worker, const struct proto_token *t, uint64_t now_ns);
    /* The end of one pass over the rings (write what it gave clients). */
    void (*on_batch_end)(void *ctx);
    /* A worker went down (ring producer died, or the supervisor stopped
     * listing it): its requests will get nothing more from it. */
    void (*on_worker_down)(void *ctx, int worker);
    /* From the supervisor: drain, shutdown, stats. */
    void (*on_control)(void *ctx, struct proto_msg *m);
    /* Fill in the gateway's own figures for its heartbeat (active, tokens,
     * requests, state); the transport adds what it knows. */
    void (*fill_heartbeat)(void *ctx, struct proto_heartbeat *h);
};

struct transport_worker {
    int idx;
    bool in_use;
    char id[PROTO_ID_LEN + 1];
    char ring_name[PROTO_RING_LEN + 1];
    char endpoint[PROTO_ENDPOINT_LEN + 1];
    uint64_t epoch;
    bool up;                     /* ring open and dealer connected */
    bool draining;               /* finishing its requests: picked for nothing new */
    bool failed;                 /* the supervisor gave up on it: it will not come back */
    struct ring *ring;
    void *dealer;
    struct lws *zwsi;            /* the dealer's ZMQ_FD, adopted into lws */
    pthread_t reader;
    bool reader_running;
    _Atomic bool reader_stop;
    _Atomic bool pending;        /* reader -> service: new records */
    _Atomic bool dead;           /* reader -> service: producer died */
    uint32_t inflight;           /* requests routed here and not finished */
    bool adopting;               /* its replay of what a previous gateway left has not ended */
    uint64_t adopt_since_ns;
    uint64_t last_retry_ns;
};

struct transport {
    const struct rill_config *c;
    struct lws_context *ctx;
    struct lws_vhost *vh;        /* where the ZeroMQ descriptors are adopted */
    struct transport_cb cb;
    void *zctx;
    void *control;               /* DEALER to the supervisor, or NULL */
    struct lws *control_wsi;
    struct transport_worker workers[TRANSPORT_MAX_WORKERS];
    int n_workers;
    bool standalone;             /* no supervisor: worker_list */
    uint32_t req_epoch;          /* this gateway's request-id epoch (ids' high half) */
    uint64_t hb_seq, next_hb_ns;
    uint64_t started_ns;
};

/* Connect to the supervisor (say hello) or read worker_list.  `vh` must not
 * listen.  Returns 0 or an error (bad worker_list, sockets). */
int transport_init(struct transport *t, const struct rill_config *c, struct lws_context *ctx, struct lws_vhost *vh,
                   uint32_t req_epoch, const struct transport_cb *cb);
/* Stop the reader threads, close sockets and rings.  Safe after a failed init. */
void transport_fini(struct transport *t);

/* Drain every ring that has news, then on_batch_end (service thread, on
 * lws's cancel-service wake-up). */
void transport_poll_rings(struct transport *t);
/* An adopted ZeroMQ descriptor is readable (lws RAW_RX_FILE). */
void transport_on_fd(struct transport *t, struct lws *wsi);
/* Heartbeats to the supervisor, and (standalone) workers coming back. */
void transport_tick(struct transport *t, uint64_t now_ns);

/* Least-loaded ready worker not in `exclude` (a bit per index), or -1. */
int transport_pick(const struct transport *t, uint64_t exclude);
/* The same, but requests with the same affinity key (a hash of their
 * prompt's beginning) go to the same worker — the one whose prefix cache
 * holds it — by rendezvous hashing over the workers that can take them,
 * unless that worker has TRANSPORT_AFFINITY_SLACK more requests in flight
 * than the least loaded one.  Key 0: the least loaded. */
#define TRANSPORT_AFFINITY_SLACK 4
int transport_pick_affine(const struct transport *t, uint64_t exclude, uint64_t key);
/* Workers that can take new requests. */
int transport_ready(const struct transport *t);
/* Whether a worker may still become ready (false once the supervisor has
 * given up on every one). */
bool transport_can_come_back(const struct transport *t);
/* Send a submit or cancel to a worker; RILL_E_PEER_DEAD when it is down.
 * Never calls back. */
int transport_send(struct transport *t, int worker, const struct proto_msg *m);
/* The worker's name ("w0"). */
const char *transport_worker_id(const struct transport *t, int worker);
/* Whether a worker that is up has not finished replaying what a previous
 * gateway process left on it (see worker/journal.h), for at most
 * TRANSPORT_ADOPT_WAIT_NS after it came up; or, in the first
 * TRANSPORT_ADOPT_WAIT_NS of this process, a worker is not known, not up or
 * not replayed yet: a resume of a request not known yet may be one of
 * theirs. */
#define TRANSPORT_ADOPT_WAIT_NS 3000000000ull
bool transport_adopting(const struct transport *t, uint64_t now_ns);
/* Count a request routed to (+1) or finished on (-1) a worker. */
void transport_inflight(struct transport *t, int worker, int delta);

#endif
