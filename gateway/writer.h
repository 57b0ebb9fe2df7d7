/* writer.h — the one way frames reach a client.
 *
 * A writer is one WebSocket connection's output: a queue of whole frames
 * (hello, accepted, errors, telemetry) and, through the owner's pull
 * callback, its streams' token frames.  It writes them by one of two
 * backends:
 *   - direct: after a batch of ring records, each connection that got
 *     tokens is written at once (writer_flush), one send per frame, with no
 *     trip through the event loop;
 *   - lws: lws_callback_on_writable(), then writer_writable() from the
 *     SERVER_WRITEABLE callback.  Used when direct writing is off, for
 *     permessage-deflate connections (the extension needs its own writable
 *     callbacks), while lws holds the rest of a partial send, and for the
 *     queued frames.
 * Either way frames leave in order: a queued frame before stream frames,
 * and nothing overtakes a partial send.
 *
 * A batch's sends at once: writer_flush() first builds each marked
 * connection's frames (WebSocket headers included) into one buffer, then
 * sends those buffers in one of two ways:
 *   - io_uring (send_uring, where the kernel allows it): one send request
 *     per connection, submitted 32 at a time with one system call, which
 *     runs each non-blocking send at once and returns what each socket
 *     took; the first 32 leave while the rest are still being built.  A
 *     system call costs ~1 µs on our (virtualised) machines, about a
 *     quarter of a frame's whole cost;
 *   - else from the service thread and send_threads-1 helper threads at
 *     once (one send() per connection, and the kernel's TCP work on every
 *     core).  While the helpers send, the service thread does nothing else
 *     with lws, so no socket is used by two threads.
 * Then, on the service thread alone, whatever a socket did not take goes
 * to lws as raw bytes (lws_write LWS_WRITE_RAW buffers the rest and
 * finishes it from its writable callback, before any later frame).
 *
 * Coalescing: after a token frame to a client whose round trip is long (the
 * kernel's smoothed RTT, TCP_INFO) or whose backlog is large, the writer
 * holds further token frames for a short window (rtt/4, at most
 * coalesce_max_ms), so tokens that arrive meanwhile leave as one frame.
 * Held writers sit in one list that one timer sweeps.
 *
 * Bound: queued_bytes counts queued frames and the owner's pending token
 * bytes (writer_account); past `bound` the owner's slow callback runs.
 *
 * Threads: the lws service thread only.  Knows nothing of streams.
 */
#ifndef RILL_WRITER_H
#define RILL_WRITER_H

#include <libwebsockets.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "metrics.h"
#include "obuf.h"

struct writer;

struct writer_cb {
    void *ctx;
    /* Write w's next stream frame with writer_send() (token frames only
     * when tokens_allowed).  1: wrote one, 0: nothing to write, -1: close. */
    int (*pull)(void *ctx, struct writer *w, uint64_t now_ns, bool tokens_allowed);
    /* Whether pull would write something. */
    bool (*has_more)(void *ctx, struct writer *w, bool tokens_allowed);
    /* w went past its bound: the owner drops what it holds and closes. */
    void (*slow)(void *ctx, struct writer *w);
};

struct writer_frame {
    struct writer_frame *next;
    struct obuf buf;
};

struct writer_sender;  /* a helper thread of the parallel send */
struct io_uring;

struct writer_set {
    struct lws_context *ctx;
    struct metrics *m;
    size_t bound;                /* client_buffer_bytes */
    bool direct;                 /* direct_write */
    double coalesce_max_ms;
    struct writer_cb cb;
    struct writer *dirty, *dirty_tail;  /* to write after the ring batch */
    struct writer *held;                /* holding token frames */
    lws_sorted_usec_list_t hold_sul;
    bool hold_armed;
    bool stopped;                /* the context is going away: no timers */
    /* the parallel send of a batch */
    bool collecting;             /* writer_send appends to the writer's batch */
    struct writer **batch;       /* writers with a batch to send */
    size_t n_batch, cap_batch;
    int n_senders;
    struct writer_sender *senders;
    struct io_uring *uring;      /* NULL: send() per connection */
    /* Sending a batch: every thread takes the next unsent writer until
     * none is left, so a helper that is not running costs nothing but the
     * wake-up (the service thread sends it all). */
    pthread_mutex_t fj_mu;
    pthread_cond_t fj_work;
    uint64_t fj_gen;             /* batches handed out */
    bool fj_quit;
    _Atomic size_t fj_next;      /* next index to take (huge between batches) */
    _Atomic size_t fj_n;         /* writers in the batch */
    _Atomic size_t fj_done;      /* writers sent */
};

struct writer {
    struct writer_set *set;
    struct lws *wsi;
    bool binary;                 /* frames are binary (msgpack) */
    bool deflate;                /* permessage-deflate: lws backend only */
    bool closing;                /* close once the queue has drained */
    struct writer_frame *q_head, *q_tail;
    size_t queued_bytes;
    uint64_t rtt_checked_ns;
    uint32_t rtt_us;
    uint64_t hold_until_ns;
    bool held, dirty;
    struct writer *held_prev, *held_next, *dirty_next;
    struct obuf out;             /* collected frames of this batch */
    uint32_t out_frames;
    long sent;                   /* what send() took of out (-errno on failure) */
};

/* send_threads: threads that send a batch (1: the service thread only);
 * uring: send a batch with io_uring when the kernel allows it (and
 * send_threads is 1).  RILL_E_NOMEM, RILL_E_IO (a thread could not
 * start). */
int writer_set_init(struct writer_set *s, struct lws_context *ctx, struct metrics *m, size_t bound, bool direct,
                    double coalesce_max_ms, int send_threads, bool uring, const struct writer_cb *cb);
/* Whether batches go out through io_uring (for the log and tests). */
bool writer_set_uring(const struct writer_set *s);
/* Cancel the hold timer (before the context is destroyed). */
void writer_set_stop(struct writer_set *s);
/* Stop the helper threads and free the set's memory. */
void writer_set_fini(struct writer_set *s);

void writer_open(struct writer *w, struct writer_set *s, struct lws *wsi, bool binary, bool deflate);
/* Drop the queue and leave the set's lists; the writer is then inert. */
void writer_close(struct writer *w);

/* Queue a whole frame, taking over `body` (emptied).  Past the bound, unless
 * `force` (errors, which must reach even a slow client), the frame is
 * dropped, the slow callback runs, and RILL_E_SLOW_CONSUMER is returned.
 * RILL_E_NOMEM. */
int writer_queue(struct writer *w, struct obuf *body, bool force);
/* Drop every queued frame (a slow client's). */
void writer_drop_queue(struct writer *w);
/* The owner's pending bytes grew (delta > 0) or left (< 0).  Returns false
 * when the writer is now past its bound (the caller fails it as slow). */
bool writer_account(struct writer *w, long delta);

/* Token frames are ready: write them after the ring batch (direct) or
 * from the writable callback, unless the writer is holding them. */
void writer_want(struct writer *w, uint64_t now_ns);
/* Something other than tokens is ready (an end, a queued frame): the lws
 * backend. */
void writer_wake(struct writer *w);
/* Write every writer that writer_want() marked since the last call. */
void writer_flush(struct writer_set *s);
/* The SERVER_WRITEABLE callback: write while the socket takes frames.
 * -1: close the connection. */
int writer_writable(struct writer *w);

/* Write one frame now (pull uses it).  -1 when the socket failed. */
int writer_send(struct writer *w, struct obuf *b);
/* After a token frame: hold the next ones if the client is far or behind. */
void writer_coalesce(struct writer *w, uint64_t now_ns);

#endif
