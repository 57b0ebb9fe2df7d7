/* stream.h — each generation's life in the gateway, as one state machine:
 *
 *   QUEUED ──accepted──▶ ACCEPTED ──first token──▶ STREAMING ──┐
 *     │  ╲                  │                          │        │
 *     │   rejected: route   └──────────────┬───────────┘        │
 *     │   to another worker                ▼                    ▼
 *     └──────────no worker / refused────▶ DONE ◀──last token / error / lost
 *
 * A stream keeps what running it again needs: the submit message (prompt,
 * parameters, and a seed: the client's or one drawn here) and the ids of
 * the tokens delivered.  When its worker dies, the stream is submitted
 * again — to a live worker, or to the restarted one within
 * failover_timeout_s — with those ids as prefill and `skip` = their count;
 * the kernels are batch-invariant and the sampler's randomness is a
 * function of (seed, position), so the new worker goes on with exactly the
 * tokens the old one would have given.  The client sees no error, no gap
 * and no duplicate: only records of the stream's current worker count, and
 * a position already delivered is dropped.
 *
 * Routing: requests whose prompts (or messages) begin alike go to the same
 * worker, whose prefix cache then holds that beginning (a shared system
 * prompt is computed once), unless it is much busier than the others.  This layer is
 * the one place that decides how a generation ends and what the client is
 * told about it (code, message, finish reason); the session layer above
 * only encodes and writes what it is given, through the events below.
 *
 * Resume: a stream outlives its client's connection by resume_window_s
 * (detached: still running, or finished and kept), with a log of its token
 * records, so that a client can take it up again on any connection with
 * its resume token (an unguessable secret, bound to the API key's name) and
 * the position to go on from.
 *
 * Every record of a request arrives in order on its worker's ring
 * (accepted or rejected, tokens, the last one); a record for an id not in
 * the table (a stream its client abandoned) is dropped.
 *
 * Threads: the lws service thread only.
 */
#ifndef RILL_STREAM_H
#define RILL_STREAM_H

#include <stdbool.h>
#include <stdint.h>

#include "common/proto.h"
#include "common/reclog.h"
#include "obuf.h"
#include "creq.h"
#include "transport.h"

enum stream_state { STREAM_QUEUED, STREAM_ACCEPTED, STREAM_STREAMING, STREAM_DONE };

/* Output state kept with the stream for the session layer: token items
 * encoded but not yet framed. */
struct stream_out {
    bool timestamps;             /* token items carry gen_us */
    struct obuf pending;
    uint32_t n_pending;
    uint64_t *pend_gen_ns;       /* ring publish time of each pending token */
    uint32_t pend_cap;
};

struct stream {
    struct stream *next;         /* in the owner's list */
    void *owner;                 /* a WebSocket connection, an HTTP request, … */
    const struct stream_events *ev;  /* what the owner is told */
    uint64_t req_id;             /* the gateway's id, unique in this process */
    struct creq_id cid;          /* the client's id */
    enum stream_state state;
    int worker;                  /* transport index, -1 while unrouted */
    uint64_t tried;              /* workers that refused it (bit per index) */
    int refusal;                 /* the last refusal's code (0: none) */
    bool awaiting_reply;         /* submitted; its accepted/rejected has not come */
    struct proto_submit submit;  /* what running it again needs (owns prompt) */
    uint32_t next_pos;           /* the next position the client expects */
    int32_t *ids;                /* ids[0 .. next_pos): the tokens delivered */
    uint32_t ids_cap;
    uint32_t failovers;          /* times it was submitted again */
    uint64_t affinity;           /* hash of the prompt's first bytes: the worker whose cache has them */
    uint64_t waiting_since_ns;   /* failing over with no worker to take it (0: not) */
    /* resume */
    char key_name[72];           /* the API key's name it is bound to ("" : none) */
    bool adopted;                /* left on its worker by a previous gateway process */
    bool adopt_first;            /* adopted, and no record of it has come yet */
    uint64_t detached_ns;        /* no owner since (0: attached) */
    bool retired;                /* its end was sent; kept only for resumes */
    struct reclog log;           /* encoded token records of positions [log_first, next_pos) */
    uint32_t log_first;
    /* the end, once DONE */
    int term_code;               /* 0: complete */
    bool term_final;             /* not recoverable, whatever its code says */
    int finish;                  /* enum proto_finish */
    char term_msg[160];
    /* for the summary */
    uint64_t t_submit_ns, t_first_ns, t_last_ns;
    uint32_t n_tokens;
    float *lat_ms;               /* per token, as the worker measured */
    uint32_t lat_cap;
    double lat_sum_ms;
    uint32_t max_mem_mb;
    uint16_t batch_val[8];       /* most common batch size: a small tally */
    uint32_t batch_cnt[8];
    struct stream_out out;
};

/* What the owner is told.  Each runs on the service thread, from inside a
 * stream_* call.  Owners of different kinds (the WebSocket session, the
 * HTTP API) give their own. */
struct stream_events {
    void *ctx;
    /* The worker took s: tell the client. */
    void (*accepted)(void *ctx, struct stream *s);
    /* A token for the client (in position order).  Nonzero: the owner could
     * not take it (it has ended s or its connection). */
    int (*token)(void *ctx, struct stream *s, const struct proto_token *t, uint64_t now_ns);
    /* s is DONE: send its end once its tokens are out, then stream_release(). */
    void (*ended)(void *ctx, struct stream *s);
};

struct stream_table {
    struct transport *tp;
    uint64_t failover_timeout_ns;
    uint32_t waiting;            /* streams failing over that no worker took yet */
    uint64_t failovers;          /* for /metrics */
    uint64_t resume_window_ns;   /* 0: a stream dies with its connection */
    size_t log_cap, log_total_cap, log_total;
    uint32_t detached, retired;
    uint64_t resumes, next_sweep_ns;
    struct stream **map;         /* by req_id: open addressing, linear probing */
    uint32_t cap, used, tombs;
    uint64_t next_req_id;
    uint8_t key[16];             /* resume tokens' MAC key (stream_table_key) */
};

/* Request ids are <epoch:32><counter:32>, the epoch random per process, so a
 * restarted gateway never takes over its predecessor's requests. */
void stream_table_init(struct stream_table *t, struct transport *tp, uint32_t epoch, uint64_t failover_timeout_ns);
/* Retry the streams that wait for a worker; end those waiting too long. */
void stream_table_tick(struct stream_table *t, uint64_t now_ns);
/* Frees the map and the streams nobody owns (kept for a resume); release
 * the owned ones first (closing their connections does). */
void stream_table_fini(struct stream_table *t);
/* Resume settings (0 window: no resume). */
void stream_table_resume(struct stream_table *t, uint64_t window_ns, size_t log_cap, size_t log_total_cap);
/* Streams that have not ended and been sent (retired ones are only kept). */
static inline uint32_t stream_table_active(const struct stream_table *t) { return t->used - t->retired; }

/* A new QUEUED stream for `owner`, told through `ev` (which must outlive
 * it), with the client's id and the request (its prompt and messages are
 * taken over: *submit's prompt is set to NULL; the caller forgets the
 * messages once this succeeds).  It is in the
 * table but not yet routed: link it into the owner's list, then
 * stream_start().  NULL when out of memory (submit unchanged). */
struct stream *stream_new(struct stream_table *t, void *owner, const struct stream_events *ev, const struct creq_id *cid,
                          struct proto_submit *submit, uint64_t now_ns);
/* Route s to the least-loaded worker that has not refused it; when none
 * can take it, s ends (the ended event) with the reason. */
void stream_start(struct stream_table *t, struct stream *s);
/* The client asked to stop s: the worker finishes it with "cancelled".
 * Idempotent; nothing for a stream that has ended. */
void stream_cancel(struct stream_table *t, struct stream *s);
/* End s now with code (0: complete), finish reason and message. */
void stream_end(struct stream_table *t, struct stream *s, int code, int finish, const char *msg);
/* Whether the client may retry s's error. */
bool stream_recoverable(const struct stream *s);
/* Take s out of the table and free it (cancelling it at its worker if it
 * has not ended): after its end was sent, or when its owner goes away. */
void stream_release(struct stream_table *t, struct stream *s);

/* --- resume ------------------------------------------------------------------------ */

#define STREAM_TOKEN_LEN 50  /* 16 hex digits, '.', 32 hex digits, NUL */
#define STREAM_KEY_LEN   16
/* The key of the resume tokens' MAC.  Kept in the run dir, so that a
 * gateway that restarts checks the tokens its predecessor gave out. */
void stream_table_key(struct stream_table *t, const uint8_t key[STREAM_KEY_LEN]);
/* s's resume token: "<req_id hex>.<SipHash-128 of (req_id, key name) hex>". */
void stream_resume_token(const struct stream_table *t, const struct stream *s, char out[STREAM_TOKEN_LEN]);
/* The stream a resume token names, if it is still kept and bound to
 * key_name (NULL or "" when keys are off).  NULL otherwise; *genuine says
 * whether the token itself was one this gateway (or a predecessor with the
 * same key) gave out under key_name. */
struct stream *stream_by_token(struct stream_table *t, const char *token, const char *key_name, bool *genuine);
/* The owner goes away: keep s for resume_window_s (running on, or kept
 * with its end), or release it when resume is off.  Unlink it first. */
void stream_detach(struct stream_table *t, struct stream *s, uint64_t now_ns);
/* The end of s was sent: keep it for a resume that may still ask, or
 * release it.  Unlink it first. */
void stream_retire(struct stream_table *t, struct stream *s, uint64_t now_ns);
/* A new owner (a resume).  s must be detached. */
void stream_attach(struct stream_table *t, struct stream *s, void *owner, const struct stream_events *ev);
/* The record of position pos from the log into *tk (valid until the log
 * changes).  RILL_E_NOT_FOUND when it is no longer kept. */
int stream_log_get(const struct stream *s, uint32_t pos, struct proto_token *tk);

/* Records from the transport. */
/* A message record: accepted, rejected, or (a previous gateway's request
 * the worker replays) a submit, whose buffers the table may take. */
void stream_on_msg(struct stream_table *t, int worker, struct proto_msg *m);
void stream_on_token(struct stream_table *t, int worker, const struct proto_token *t_, uint64_t now_ns);
/* The worker stopped: its streams fail over to another worker (or wait
 * for one). */
void stream_worker_lost(struct stream_table *t, int worker);

struct stream_summary {
    uint32_t total_tokens;
    double duration_s, ttft_ms, avg_ms, p95_ms, avg_tps, e2e_tps;
    uint32_t max_mem_mb, errors, batch;
};
/* The figures of a finished stream (sorts its latencies). */
void stream_summary(struct stream *s, struct stream_summary *u);

#endif
