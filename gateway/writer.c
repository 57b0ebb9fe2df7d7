/* writer.c — see writer.h. */
#include "writer.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"

#include <assert.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>

#define HOLD_TICK_US 2000

void writer_set_init(struct writer_set *s, struct lws_context *ctx, struct metrics *m, size_t bound, bool direct,
                     double coalesce_max_ms, const struct writer_cb *cb)
{
    memset(s, 0, sizeof *s);
    s->ctx = ctx;
    s->m = m;
    s->bound = bound;
    s->direct = direct;
    s->coalesce_max_ms = coalesce_max_ms;
    s->cb = *cb;
}

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

void writer_flush(struct writer_set *s)
{
    while (s->dirty) {
        struct writer *w = s->dirty;
        undirty(w);
        /* lws holds the rest of a partial send and flushes it from its own
         * writable callback; a frame written now would overtake it. */
        if (w->closing || lws_partial_buffered(w->wsi)) {
            lws_callback_on_writable(w->wsi);
            continue;
        }
        if (writer_writable(w) < 0)
            lws_set_timeout(w->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
    }
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

int writer_send(struct writer *w, struct obuf *b)
{
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
