/* writer.c — see writer.h. */
#include "writer.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <liburing.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <sys/socket.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>

#define HOLD_TICK_US 2000

/* Fewer writers than this in a batch are sent by the service thread alone:
 * waking a helper costs more than it saves. */
#define PARALLEL_MIN 32

struct writer_sender {
    struct writer_set *set;
    int index;                   /* its slice: index + 1 of n_senders + 1 */
    pthread_t thread;
    bool started;
};

#define FJ_CLOSED ((size_t)1 << 62)

/* With io_uring, a batch's frames leave every URING_CHUNK connections while
 * the rest are still being built: the first clients get theirs (and the
 * client machine starts reading) ~30 µs into the batch instead of after all
 * of it is built; the last leave no later, and a submission costs ~1 µs.
 * So a submission holds at most URING_CHUNK sends, and the ring that many
 * entries. */
#define URING_CHUNK 32
#define SEND_FLAGS (MSG_DONTWAIT | MSG_NOSIGNAL)

static void send_one(struct writer *w)
{
    int fd = lws_get_socket_fd(w->wsi);
    ssize_t k = fd < 0 ? -1 : send(fd, obuf_data(&w->out), w->out.len, SEND_FLAGS);
    w->sent = k >= 0 ? (long)k : (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
}

/* --- io_uring ------------------------------------------------------------------------ */

/* One completion of a send: the bytes taken, 0 for a full socket, -1. */
static long uring_result(int res) { return res >= 0 ? res : (res == -EAGAIN || res == -EWOULDBLOCK) ? 0 : -1; }

/* Wait for `n` completions and store each in its writer (user_data: the
 * index in batch[]).  The sends complete within the submission (the probe
 * below made sure), so this does not block. */
static void uring_reap(struct io_uring *r, struct writer **batch, unsigned n)
{
    while (n) {
        struct io_uring_cqe *cqe;
        int rc = io_uring_wait_cqe(r, &cqe);
        if (rc == -EINTR)
            continue;
        assert(rc == 0);
        if (rc)
            return;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(r, head, cqe) {
            batch[cqe->user_data]->sent = uring_result(cqe->res);
            seen++;
        }
        io_uring_cq_advance(r, seen);
        n -= seen < n ? seen : n;
    }
}

/* Whether a send on a full socket completes at once with -EAGAIN, as a
 * non-blocking send() returns.  A kernel that instead parks the request
 * until the socket has room would leave it holding a buffer the writer
 * reuses, and block uring_reap: such a kernel gets send() instead. */
static bool uring_sends_without_waiting(struct io_uring *r)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv))
        return false;
    static const char fill[4096];
    while (send(sv[0], fill, sizeof fill, SEND_FLAGS) > 0) {
    }
    bool ok = false;
    struct io_uring_sqe *sqe = io_uring_get_sqe(r);
    if (sqe) {
        io_uring_prep_send(sqe, sv[0], fill, sizeof fill, SEND_FLAGS);
        sqe->user_data = 1;
        io_uring_submit(r);
        struct io_uring_cqe *cqe;
        if (io_uring_peek_cqe(r, &cqe) == 0) {
            ok = cqe->res == -EAGAIN;
            io_uring_cqe_seen(r, cqe);
        } else {
            /* parked: cancel it and wait for both completions */
            struct io_uring_sqe *c = io_uring_get_sqe(r);
            if (c) {
                io_uring_prep_cancel64(c, 1, 0);
                c->user_data = 2;
                io_uring_submit(r);
                for (int i = 0; i < 2 && io_uring_wait_cqe(r, &cqe) == 0; i++)
                    io_uring_cqe_seen(r, cqe);
            }
        }
    }
    close(sv[0]);
    close(sv[1]);
    return ok;
}

static struct io_uring *uring_open(void)
{
    struct io_uring *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    int rc = io_uring_queue_init(URING_CHUNK, r, IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN);
    if (rc == -EINVAL) /* a kernel before 5.19 */
        rc = io_uring_queue_init(URING_CHUNK, r, 0);
    if (rc) {
        rlog_info("io_uring unavailable (%s): one send() per connection", strerror(-rc));
        free(r);
        return NULL;
    }
    if (!uring_sends_without_waiting(r)) {
        rlog_info("this kernel's io_uring waits on a full socket: one send() per connection");
        io_uring_queue_exit(r);
        free(r);
        return NULL;
    }
    return r;
}

static void uring_close(struct io_uring *r)
{
    if (!r)
        return;
    io_uring_queue_exit(r);
    free(r);
}

/* Send the batch (at most URING_CHUNK writers, writer_flush() sees to it)
 * with one submission. */
static void uring_send(struct writer_set *s)
{
    assert(s->n_batch <= URING_CHUNK);
    unsigned queued = 0, submitted = 0;
    for (size_t i = 0; i < s->n_batch; i++) {
        struct writer *w = s->batch[i];
        int fd = lws_get_socket_fd(w->wsi);
        w->sent = LONG_MIN; /* not yet sent */
        if (fd < 0) {
            w->sent = -1;
            continue;
        }
        /* the ring has URING_CHUNK entries, all free between batches */
        struct io_uring_sqe *sqe = io_uring_get_sqe(s->uring);
        assert(sqe);
        io_uring_prep_send(sqe, fd, obuf_data(&w->out), w->out.len, SEND_FLAGS);
        sqe->user_data = i;
        queued++;
    }
    /* A kernel without SUBMIT_ALL stops a submission at a request it cannot
     * start (that one completes with its error): go on with the rest. */
    while (submitted < queued) {
        int rc = io_uring_submit(s->uring);
        if (rc == -EINTR)
            continue;
        if (rc <= 0) {
            rlog_warn("io_uring submit: %s; sending with send() from now on", rc ? strerror(-rc) : "nothing taken");
            break;
        }
        submitted += (unsigned)rc;
    }
    uring_reap(s->uring, s->batch, submitted);
    if (submitted < queued) {
        /* everything submitted has completed: the ring holds no buffer */
        uring_close(s->uring);
        s->uring = NULL;
        for (size_t i = 0; i < s->n_batch; i++)
            if (s->batch[i]->sent == LONG_MIN)
                send_one(s->batch[i]);
    }
}

/* Take and send writers of the open batch until none is left.  Each
 * writer's socket is used by the one thread that took it, while the
 * service thread touches nothing else of lws. */
static void take_and_send(struct writer_set *s)
{
    for (;;) {
        size_t i = atomic_fetch_add_explicit(&s->fj_next, 1, memory_order_acq_rel);
        if (i >= atomic_load_explicit(&s->fj_n, memory_order_acquire))
            return;
        send_one(s->batch[i]);
        atomic_fetch_add_explicit(&s->fj_done, 1, memory_order_release);
    }
}

static void *sender_main(void *arg)
{
    struct writer_sender *h = arg;
    struct writer_set *s = h->set;
    uint64_t seen = 0;
    for (;;) {
        pthread_mutex_lock(&s->fj_mu);
        while (s->fj_gen == seen && !s->fj_quit)
            pthread_cond_wait(&s->fj_work, &s->fj_mu);
        bool quit = s->fj_quit;
        seen = s->fj_gen;
        pthread_mutex_unlock(&s->fj_mu);
        if (quit)
            return NULL;
        take_and_send(s);
    }
}

int writer_set_init(struct writer_set *s, struct lws_context *ctx, struct metrics *m, size_t bound, bool direct,
                    double coalesce_max_ms, int send_threads, bool uring, const struct writer_cb *cb)
{
    memset(s, 0, sizeof *s);
    s->ctx = ctx;
    s->m = m;
    s->bound = bound;
    s->direct = direct;
    s->coalesce_max_ms = coalesce_max_ms;
    s->cb = *cb;
    pthread_mutex_init(&s->fj_mu, NULL);
    pthread_cond_init(&s->fj_work, NULL);
    atomic_store(&s->fj_next, FJ_CLOSED);
    atomic_store(&s->fj_n, 0);
    int helpers = send_threads > 1 && direct ? send_threads - 1 : 0;
    if (uring && direct && !helpers)
        s->uring = uring_open();
    if (!helpers)
        return 0;
    s->senders = calloc((size_t)helpers, sizeof *s->senders);
    if (!s->senders)
        return RILL_E_NOMEM;
    for (int i = 0; i < helpers; i++) {
        s->senders[i] = (struct writer_sender){.set = s, .index = i};
        if (pthread_create(&s->senders[i].thread, NULL, sender_main, &s->senders[i]) != 0)
            return RILL_E_IO;
        s->senders[i].started = true;
        s->n_senders++;
    }
    return 0;
}

void writer_set_fini(struct writer_set *s)
{
    if (!s->cb.pull)
        return; /* never set up */
    pthread_mutex_lock(&s->fj_mu);
    s->fj_quit = true;
    pthread_cond_broadcast(&s->fj_work);
    pthread_mutex_unlock(&s->fj_mu);
    for (int i = 0; s->senders && i < s->n_senders; i++)
        if (s->senders[i].started)
            pthread_join(s->senders[i].thread, NULL);
    free(s->senders);
    s->senders = NULL;
    s->n_senders = 0;
    free(s->batch);
    s->batch = NULL;
    uring_close(s->uring);
    s->uring = NULL;
    pthread_mutex_destroy(&s->fj_mu);
    pthread_cond_destroy(&s->fj_work);
    s->cb.pull = NULL;
}

bool writer_set_uring(const struct writer_set *s) { return s->uring != NULL; }

void writer_set_stop(struct writer_set *s)
{
    s->stopped = true;
    lws_sul_cancel(&s->hold_sul);
    s->hold_armed = false;
}

void writer_open(struct writer *w, struct writer_set *s, struct lws *wsi, bool binary, bool deflate)
{
    memset(w, 0, sizeof *w);
    w->set = s;
    w->wsi = wsi;
    w->binary = binary;
    w->deflate = deflate;
}

/* --- lists ------------------------------------------------------------------------------ */

static void unhold(struct writer *w)
{
    if (!w->held)
        return;
    struct writer_set *s = w->set;
    if (w->held_prev)
        w->held_prev->held_next = w->held_next;
    else
        s->held = w->held_next;
    if (w->held_next)
        w->held_next->held_prev = w->held_prev;
    w->held_prev = w->held_next = NULL;
    w->held = false;
    w->hold_until_ns = 0;
}

static void undirty(struct writer *w)
{
    if (!w->dirty)
        return;
    struct writer_set *s = w->set;
    struct writer *prev = NULL;
    for (struct writer *x = s->dirty; x; prev = x, x = x->dirty_next)
        if (x == w) {
            if (prev)
                prev->dirty_next = w->dirty_next;
            else
                s->dirty = w->dirty_next;
            if (s->dirty_tail == w)
                s->dirty_tail = prev;
            break;
        }
    w->dirty = false;
    w->dirty_next = NULL;
}

void writer_drop_queue(struct writer *w)
{
    for (struct writer_frame *f = w->q_head, *n; f; f = n) {
        n = f->next;
        if (f->buf.len <= w->queued_bytes)
            w->queued_bytes -= f->buf.len;
        obuf_free(&f->buf);
        free(f);
    }
    w->q_head = w->q_tail = NULL;
}

void writer_close(struct writer *w)
{
    if (!w->set)
        return;
    unhold(w);
    undirty(w);
    writer_drop_queue(w);
    w->queued_bytes = 0;
    obuf_free(&w->out);
}

/* --- queueing -------------------------------------------------------------------------- */

int writer_queue(struct writer *w, struct obuf *body, bool force)
{
    if (!force && w->queued_bytes + body->len > w->set->bound) {
        obuf_free(body);
        w->set->cb.slow(w->set->cb.ctx, w);
        return RILL_E_SLOW_CONSUMER;
    }
    struct writer_frame *f = calloc(1, sizeof *f);
    if (!f) {
        obuf_free(body);
        return RILL_E_NOMEM;
    }
    f->buf = *body;
    memset(body, 0, sizeof *body);
    if (w->q_tail)
        w->q_tail->next = f;
    else
        w->q_head = f;
    w->q_tail = f;
    w->queued_bytes += f->buf.len;
    lws_callback_on_writable(w->wsi);
    return 0;
}

bool writer_account(struct writer *w, long delta)
{
    if (delta < 0)
        w->queued_bytes -= (size_t)-delta < w->queued_bytes ? (size_t)-delta : w->queued_bytes;
    else
        w->queued_bytes += (size_t)delta;
    return w->queued_bytes <= w->set->bound;
}

/* --- scheduling ------------------------------------------------------------------------ */

/* Writing straight after the ring batch, rather than asking lws for a
 * writable callback, saves two epoll_ctl calls and a trip through the
 * event loop per frame: at a thousand streams that is a fifth of the
 * gateway's time.  Writers are written in the order their first token of
 * the batch arrived. */
void writer_want(struct writer *w, uint64_t now_ns)
{
    if (w->hold_until_ns && now_ns < w->hold_until_ns)
        return; /* the hold timer writes it */
    struct writer_set *s = w->set;
    if (!s->direct || w->deflate || w->closing) {
        lws_callback_on_writable(w->wsi);
        return;
    }
    if (w->dirty)
        return;
    w->dirty = true;
    w->dirty_next = NULL;
    if (s->dirty_tail)
        s->dirty_tail->dirty_next = w;
    else
        s->dirty = w;
    s->dirty_tail = w;
}

void writer_wake(struct writer *w) { lws_callback_on_writable(w->wsi); }

/* Send every collected batch: through io_uring, or in parallel when there
 * are enough. */
static void send_batches(struct writer_set *s)
{
    if (s->uring) {
        uring_send(s);
    } else if (s->n_senders && s->n_batch >= PARALLEL_MIN) {
        /* Open the batch (the index is out of range until now, so a helper
         * still looking at the last one takes nothing of this one). */
        atomic_store_explicit(&s->fj_done, 0, memory_order_relaxed);
        atomic_store_explicit(&s->fj_n, s->n_batch, memory_order_release);
        atomic_store_explicit(&s->fj_next, 0, memory_order_release);
        pthread_mutex_lock(&s->fj_mu);
        s->fj_gen++;
        pthread_cond_broadcast(&s->fj_work);
        pthread_mutex_unlock(&s->fj_mu);
        take_and_send(s);
        /* At most one writer per helper is still being sent. */
        while (atomic_load_explicit(&s->fj_done, memory_order_acquire) < s->n_batch)
            sched_yield();
        atomic_store_explicit(&s->fj_next, FJ_CLOSED, memory_order_release);
    } else {
        for (size_t i = 0; i < s->n_batch; i++)
            send_one(s->batch[i]);
    }
    /* Back on the service thread alone: what a socket did not take goes
     * to lws, which sends it before anything written after it. */
    for (size_t i = 0; i < s->n_batch; i++) {
        struct writer *w = s->batch[i];
        bool dead = w->sent < 0;
        size_t done = dead ? 0 : (size_t)w->sent;
        if (!dead && done < w->out.len &&
            lws_write(w->wsi, obuf_data(&w->out) + done, w->out.len - done, LWS_WRITE_RAW) < 0)
            dead = true;
        if (dead)
            lws_set_timeout(w->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        w->out.len = 0;
        w->out_frames = 0;
        if (w->out.cap > 16384)
            obuf_free(&w->out); /* an idle connection keeps a small buffer at most */
    }
    s->n_batch = 0;
}

void writer_flush(struct writer_set *s)
{
    s->collecting = s->n_senders > 0 || s->uring;
    while (s->dirty) {
        struct writer *w = s->dirty;
        undirty(w);
        /* lws holds the rest of a partial send and flushes it from its own
         * writable callback; a frame written now would overtake it. */
        if (w->closing || lws_partial_buffered(w->wsi)) {
            lws_callback_on_writable(w->wsi);
            continue;
        }
        if (writer_writable(w) < 0) {
            w->out.len = 0;
            lws_set_timeout(w->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
            continue;
        }
        if (!s->collecting || !w->out.len)
            continue;
        if (s->n_batch == s->cap_batch) {
            size_t cap = s->cap_batch ? 2 * s->cap_batch : 256;
            struct writer **a = realloc(s->batch, cap * sizeof *a);
            if (!a) { /* send what is collected so far, then go on */
                s->collecting = false;
                send_batches(s);
                s->collecting = true;
                s->n_batch = 0;
                a = s->batch;
                if (!a) {
                    w->out.len = 0;
                    lws_set_timeout(w->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
                    continue;
                }
            } else {
                s->batch = a;
                s->cap_batch = cap;
            }
        }
        s->batch[s->n_batch++] = w;
        if (s->uring && s->n_batch == URING_CHUNK) {
            s->collecting = false;
            send_batches(s);
            s->collecting = true;
        }
    }
    s->collecting = false;
    if (s->n_batch)
        send_batches(s);
}

static void on_hold_tick(lws_sorted_usec_list_t *sul)
{
    struct writer_set *s = lws_container_of(sul, struct writer_set, hold_sul);
    s->hold_armed = false;
    uint64_t now = clock_ns();
    for (struct writer *w = s->held, *next; w; w = next) {
        next = w->held_next;
        if (now >= w->hold_until_ns) {
            unhold(w);
            writer_want(w, now);
        }
    }
    writer_flush(s);
    if (s->held && !s->stopped) {
        s->hold_armed = true;
        lws_sul_schedule(s->ctx, 0, &s->hold_sul, on_hold_tick, HOLD_TICK_US);
    }
}

static void hold(struct writer *w, uint64_t until)
{
    struct writer_set *s = w->set;
    w->hold_until_ns = until;
    if (!w->held) {
        w->held = true;
        w->held_prev = NULL;
        w->held_next = s->held;
        if (s->held)
            s->held->held_prev = w;
        s->held = w;
    }
    if (!s->hold_armed && !s->stopped) {
        s->hold_armed = true;
        lws_sul_schedule(s->ctx, 0, &s->hold_sul, on_hold_tick, HOLD_TICK_US);
    }
}

/* The kernel's smoothed round trip to the client, read at most once a
 * second (one getsockopt).  Not an application ping, whose echo would
 * include this loop's own delays. */
static double rtt_ms(struct writer *w, uint64_t now)
{
    if (now - w->rtt_checked_ns > 1000000000ull) {
        w->rtt_checked_ns = now;
        struct tcp_info ti;
        socklen_t len = sizeof ti;
        int fd = lws_get_socket_fd(w->wsi);
        if (fd >= 0 && getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0)
            w->rtt_us = ti.tcpi_rtt;
    }
    return w->rtt_us / 1000.0;
}

void writer_coalesce(struct writer *w, uint64_t now_ns)
{
    double hold_ms = 0, r = rtt_ms(w, now_ns);
    if (r > 20)
        hold_ms = r / 4;
    if (w->queued_bytes > w->set->bound / 4)
        hold_ms = hold_ms > 10 ? hold_ms : 10;
    if (hold_ms > w->set->coalesce_max_ms)
        hold_ms = w->set->coalesce_max_ms;
    if (hold_ms > 0)
        hold(w, now_ns + (uint64_t)(hold_ms * 1e6));
}

/* --- writing ---------------------------------------------------------------------------- */

/* Append one whole WebSocket frame (RFC 6455 5.2: FIN, opcode, the length
 * in 7, 16 or 64 bits; server frames are not masked) to w's batch. */
static int collect(struct writer *w, const struct obuf *b)
{
    unsigned char h[10];
    size_t n = b->len, hl;
    h[0] = 0x80 | (w->binary ? 0x2 : 0x1);
    if (n < 126) {
        h[1] = (unsigned char)n;
        hl = 2;
    } else if (n < 65536) {
        h[1] = 126;
        h[2] = (unsigned char)(n >> 8);
        h[3] = (unsigned char)n;
        hl = 4;
    } else {
        h[1] = 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
        hl = 10;
    }
    if (obuf_put(&w->out, h, hl) || obuf_put(&w->out, obuf_data(b), n))
        return -1;
    w->out_frames++;
    w->set->m->frames++;
    w->set->m->bytes_out += n;
    return 0;
}

int writer_send(struct writer *w, struct obuf *b)
{
    if (w->set->collecting)
        return collect(w, b);
    int n = lws_write(w->wsi, obuf_data(b), b->len, w->binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT);
    if (n < (int)b->len)
        return -1;
    w->set->m->frames++;
    w->set->m->bytes_out += b->len;
    return 0;
}

/* One frame: a queued one first, else the owner's next stream frame.
 * 1 if it wrote one, 0 if there was nothing to write, -1 to close. */
static int write_one(struct writer *w, uint64_t now)
{
    if (!w->q_head)
        return w->set->cb.pull(w->set->cb.ctx, w, now, now >= w->hold_until_ns);
    struct writer_frame *f = w->q_head;
    w->q_head = f->next;
    if (!w->q_head)
        w->q_tail = NULL;
    w->queued_bytes -= f->buf.len < w->queued_bytes ? f->buf.len : w->queued_bytes;
    int rc = writer_send(w, &f->buf);
    obuf_free(&f->buf);
    free(f);
    return rc ? -1 : 1;
}

int writer_writable(struct writer *w)
{
    /* Several frames while the socket takes them: one frame per callback
     * cannot keep up with many streams on one connection, and a client that
     * reads fine would look slow.  lws_send_pipe_choked() says when the
     * kernel buffer is full (or lws holds a partial write). */
    uint64_t now = clock_ns();
    bool more = false;
    for (int i = 0; i < 64; i++) {
        int rc = write_one(w, now);
        if (rc < 0)
            return -1;
        /* poll() only when there is more to write: most connections have
         * one frame, and the check is a syscall. */
        more = w->q_head || w->set->cb.has_more(w->set->cb.ctx, w, now >= w->hold_until_ns);
        if (rc == 0 || !more || lws_send_pipe_choked(w->wsi))
            break;
    }
    if (more)
        lws_callback_on_writable(w->wsi);
    else if (w->closing)
        return -1;
    return 0;
}
