/* session.c — one client connection and its generations.
 *
 * A generation's messages reach its client in this order: accepted, token
 * frames in position order, then complete or error — and every accepted
 * generation ends with one of those two (cancelled ones with a complete whose
 * finish_reason is "cancelled").
 *
 * Writing: lws allows one lws_write() per writable callback.  A connection
 * first writes its queued frames (accepted, errors, hello), then the streams'
 * pending tokens round robin, one stream per frame, so no generation starves
 * another; a stream's terminal frame goes out only once its tokens have.
 *
 * Network adaptation: tokens that arrive while a client cannot take them pile
 * up in the stream's pending buffer and leave as one "tokens" frame.  When the
 * client's round trip is long (the kernel's smoothed RTT from TCP_INFO, not an
 * application ping, whose echo would include this loop's own delays) or its
 * backlog is large, the connection also holds token frames for a short window
 * (rtt/4, at most coalesce_max_ms) to send fewer, bigger frames.  Held
 * connections sit in one list that a single gateway timer sweeps.  Past client_buffer_bytes of queued output the
 * client gets slow_consumer and is closed; its generations are cancelled.
 */
#include "gw.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonw.h"
#include "common/log.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- streams -------------------------------------------------------------------------- */

void stream_free(struct stream *s)
{
    obuf_free(&s->pending);
    free(s->pend_gen_ns);
    free((void *)s->submit.prompt);
    free(s->lat_ms);
    free(s);
}

static struct stream *find_stream(struct conn *c, const struct creq_id *id)
{
    for (struct stream *s = c->streams; s; s = s->next)
        if (s->state != ST_DONE && !strcmp(s->cid.s, id->s) && s->cid.is_num == id->is_num)
            return s;
    return NULL;
}

/* Take the stream out of everything and free it. */
static void stream_remove(struct stream *s)
{
    struct conn *c = s->conn;
    struct gw *g = c->gw;
    gw_map_del(g, s->req_id);
    transport_inflight(&g->tp, s->worker, -1);
    for (struct stream **pp = &c->streams; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    if (c->rr == s)
        c->rr = s->next;
    c->n_streams--;
    size_t pend = s->pending.len;
    c->queued_bytes -= pend < c->queued_bytes ? pend : c->queued_bytes;
    stream_free(s);
}

static void send_cancel(struct stream *s)
{
    if (s->worker < 0 || s->state == ST_DONE)
        return;
    struct proto_msg m = {.type = PROTO_CANCEL};
    m.u.cancel.id = s->req_id;
    transport_send(&s->conn->gw->tp, s->worker, &m);
}

void session_end_stream(struct stream *s, int code, int finish, const char *msg)
{
    if (s->term)
        return;
    s->term = true;
    s->term_code = code;
    s->finish = finish;
    snprintf(s->term_msg, sizeof s->term_msg, "%s", msg ? msg : "");
    s->t_last_ns = s->t_last_ns ? s->t_last_ns : clock_ns();
    lws_callback_on_writable(s->conn->wsi);
}

/* Route (or re-route) a stream to the least-loaded worker that has not
 * refused it.  On failure the stream ends with an error. */
static void route(struct gw *g, struct stream *s)
{
    for (;;) {
        int w = transport_pick(&g->tp, s->tried);
        if (w < 0) {
            bool any = transport_ready(&g->tp) > 0;
            if (s->refusal == RILL_E_SHUTTING_DOWN)
                session_end_stream(s, RILL_E_SHUTTING_DOWN, PROTO_FINISH_ERROR, "the workers are shutting down");
            else if (any || transport_can_come_back(&g->tp))
                session_end_stream(s, any ? RILL_E_OVERLOADED : RILL_E_NO_WORKER, PROTO_FINISH_ERROR,
                                   any ? "every worker is busy: try again" : "no worker is ready");
            else {
                session_end_stream(s, RILL_E_NO_WORKER, PROTO_FINISH_ERROR,
                                   "no worker is ready, and none will come back (the supervisor gave up on them)");
                s->term_final = true;
            }
            return;
        }
        s->worker = w;
        s->tried |= 1ull << w;
        struct proto_msg m = {.type = PROTO_SUBMIT};
        m.u.submit = s->submit;
        int rc = transport_send(&g->tp, w, &m);
        rlog_debug("request %llu (%s) to worker %s: %s", (unsigned long long)s->req_id, s->cid.s,
                   transport_worker_id(&g->tp, w),
                   rill_err_name(rc));
        if (rc == 0) {
            transport_inflight(&g->tp, w, +1);
            return;
        }
        rlog_warn("cannot send request to worker %s: %s", transport_worker_id(&g->tp, w), rill_err_name(rc));
        s->worker = -1;
    }
}

/* --- messages from the client ------------------------------------------------------------- */

static void close_with(struct conn *c, const struct creq_id *id, int code, const char *msg)
{
    conn_send_error(c, id, code, msg);
    c->closing = true;
    lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, 5);
}

static void handle_generate(struct conn *c, struct creq *r)
{
    struct gw *g = c->gw;
    const struct rill_config *cf = g->c;
    if (!c->authed) {
        close_with(c, &r->id, RILL_E_UNAUTHORIZED, "an API key is required (Authorization: Bearer, ?key=, or hello.key)");
        return;
    }
    if (g->shutting_down) {
        conn_send_error(c, &r->id, RILL_E_SHUTTING_DOWN, "the server is shutting down");
        return;
    }
    if (c->n_streams >= (uint32_t)cf->max_streams_per_conn) {
        char m[96];
        snprintf(m, sizeof m, "at most %lld generations at once on one connection", (long long)cf->max_streams_per_conn);
        conn_send_error(c, &r->id, RILL_E_TOO_MANY_STREAMS, m);
        return;
    }
    if (!r->id.present) {
        /* A client may name its own generations "gen-N" too: skip the ones
         * running, or two streams would share an id. */
        r->id.present = true;
        do
            snprintf(r->id.s, sizeof r->id.s, "gen-%llu", (unsigned long long)++c->next_auto_id);
        while (find_stream(c, &r->id));
    } else if (find_stream(c, &r->id)) {
        conn_send_error(c, &r->id, RILL_E_DUPLICATE_ID, "a generation with this id is still running");
        return;
    }
    uint64_t now = clock_ns();
    if (!limits_rate_ok(g, c->bucket_key, now)) {
        conn_send_error(c, &r->id, RILL_E_RATE_LIMITED, "too many requests: slow down");
        return;
    }
    struct stream *s = calloc(1, sizeof *s);
    if (!s) {
        conn_send_error(c, &r->id, RILL_E_INTERNAL, "out of memory");
        return;
    }
    s->conn = c;
    s->cid = r->id;
    s->worker = -1;
    s->req_id = ++g->next_req_id;
    s->t_submit_ns = now;
    s->timestamps = r->timestamps;
    struct proto_submit *p = &s->submit;
    p->id = s->req_id;
    p->prompt = r->prompt;   /* the stream owns it now */
    p->prompt_len = r->prompt_len;
    r->prompt = NULL;
    p->max_tokens = r->max_tokens;
    p->temperature = r->temperature;
    p->top_p = r->top_p;
    p->top_k = r->top_k;
    p->min_p = r->min_p;
    p->repetition_penalty = r->repetition_penalty;
    p->seed = r->seed;
    p->has_seed = r->has_seed;
    p->n_stop = r->n_stop;
    memcpy(p->stop, r->stop, sizeof p->stop);
    p->top_logprobs = r->top_logprobs;
    if (gw_map_put(g, s)) {
        stream_free(s);
        conn_send_error(c, &r->id, RILL_E_INTERNAL, "out of memory");
        return;
    }
    s->next = c->streams;
    c->streams = s;
    c->n_streams++;
    g->m.requests++;
    route(g, s);
}

static void handle_cancel(struct conn *c, const struct creq *r)
{
    if (!r->id.present) {
        for (struct stream *s = c->streams; s; s = s->next)
            if (!s->term)
                send_cancel(s);
        return;
    }
    struct stream *s = find_stream(c, &r->id);
    if (!s) {
        conn_send_error(c, &r->id, RILL_E_NOT_FOUND, "no running generation has this id");
        return;
    }
    /* Idempotent: the worker ignores a second cancel of the same request. */
    if (!s->term)
        send_cancel(s);
}

void session_on_message(struct conn *c, const unsigned char *buf, size_t len, bool binary)
{
    struct gw *g = c->gw;
    if (c->closing)
        return;
    g->m.bytes_in += len;
    if (!binary && utf8_valid_prefix((const char *)buf, len) != len) {
        conn_send_error(c, NULL, RILL_E_BAD_REQUEST, "text frame is not valid UTF-8");
        return;
    }
    if (binary != c->msgpack) {
        conn_send_error(c, NULL, RILL_E_BAD_REQUEST,
                        binary ? "binary frame on rill.json.v1: send JSON text frames"
                               : "text frame on rill.msgpack.v1: send msgpack binary frames");
        return;
    }
    struct creq r;
    char msg[256];
    int rc = creq_parse(buf, len, binary, &g->lim, &r, msg, sizeof msg);
    rlog_debug("message from %s: %zu bytes, %s", c->ip, len, rc ? msg : "ok");
    if (rc) {
        conn_send_error(c, &r.id, rc, msg);
        return;
    }
    switch (r.type) {
    case CREQ_HELLO:
        if (r.has_key) {
            if (!limits_key_ok(g, r.key)) {
                close_with(c, NULL, RILL_E_UNAUTHORIZED, "invalid API key");
                break;
            }
            c->authed = true;
            limits_key_name(r.key, c->bucket_key, sizeof c->bucket_key);
        }
        if (r.client[0])
            rlog_debug("client %s says hello from %s", r.client, c->ip);
        conn_send_hello(c);
        break;
    case CREQ_GENERATE:
        handle_generate(c, &r);
        break;
    case CREQ_CANCEL:
        handle_cancel(c, &r);
        break;
    case CREQ_SUBSCRIBE:
        /* Telemetry names workers, rates and errors: with keys on, a key. */
        if (!c->authed)
            close_with(c, NULL, RILL_E_UNAUTHORIZED, "an API key is required for telemetry");
        else if (c->msgpack)
            conn_send_error(c, NULL, RILL_E_BAD_REQUEST, "telemetry is sent on rill.json.v1 connections");
        else
            telemetry_subscribe(c, r.telemetry);
        break;
    default:
        break;
    }
    creq_free(&r);
}

/* --- messages from workers ------------------------------------------------------------------- */

static void mark_accepted(struct stream *s)
{
    if (s->state != ST_SUBMITTED)
        return;
    s->state = ST_RUNNING;
    struct gw *g = s->conn->gw;
    conn_send_accepted(s->conn, &s->cid, transport_worker_id(&g->tp, s->worker));
    /* The prompt stays with the stream: what it needs to run again. */
}

void session_on_worker_reply(struct gw *g, int worker, struct proto_msg *m)
{
    if (m->type == PROTO_ACCEPTED) {
        struct stream *s = gw_map_get(g, m->u.accepted.id);
        if (s && s->worker == worker)
            mark_accepted(s);
        return;
    }
    if (m->type != PROTO_REJECTED)
        return;
    struct stream *s = gw_map_get(g, m->u.rejected.id);
    if (!s || s->worker != worker || s->state != ST_SUBMITTED)
        return;
    int code = m->u.rejected.code;
    transport_inflight(&g->tp, worker, -1);
    s->worker = -1;
    if (code == RILL_E_OVERLOADED || code == RILL_E_SHUTTING_DOWN) {
        s->refusal = code;
        route(g, s); /* another worker may have room */
        return;
    }
    session_end_stream(s, code, PROTO_FINISH_ERROR, m->u.rejected.message);
}

/* A connection has new tokens to write.  Writing them straight after the
 * ring batch, rather than asking lws for a writable callback, saves two
 * epoll_ctl calls and a trip through the event loop per frame: at a thousand
 * streams that is a fifth of the gateway's time.  Connections are written in
 * the order their first token arrived. */
static void want_write(struct conn *c)
{
    struct gw *g = c->gw;
    if (!g->c->direct_write || c->deflate || c->closing) {
        lws_callback_on_writable(c->wsi);
        return;
    }
    if (c->dirty)
        return;
    c->dirty = true;
    c->dirty_next = NULL;
    if (g->dirty_tail)
        g->dirty_tail->dirty_next = c;
    else
        g->dirty = c;
    g->dirty_tail = c;
}

static void undirty(struct conn *c)
{
    if (!c->dirty)
        return;
    struct gw *g = c->gw;
    struct conn *prev = NULL;
    for (struct conn *x = g->dirty; x; prev = x, x = x->dirty_next)
        if (x == c) {
            if (prev)
                prev->dirty_next = c->dirty_next;
            else
                g->dirty = c->dirty_next;
            if (g->dirty_tail == c)
                g->dirty_tail = prev;
            break;
        }
    c->dirty = false;
    c->dirty_next = NULL;
}

void session_flush_writes(struct gw *g)
{
    while (g->dirty) {
        struct conn *c = g->dirty;
        undirty(c);
        /* lws holds the rest of a partial send and flushes it from its own
         * writable callback; a frame written now would overtake it. */
        if (c->closing || lws_partial_buffered(c->wsi)) {
            lws_callback_on_writable(c->wsi);
            continue;
        }
        if (session_writable(c) < 0)
            lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
    }
}

void session_on_token(struct gw *g, const struct proto_token *t, uint64_t now_ns)
{
    struct stream *s = gw_map_get(g, t->req_id);
    if (!s || s->term)
        return; /* abandoned by its client, or already ended */
    struct conn *c = s->conn;
    /* The worker's ring carries the request's accepted ahead of its tokens. */
    if (s->state != ST_RUNNING) {
        rlog_warn("request %llu: a token before its accepted: dropped", (unsigned long long)t->req_id);
        return;
    }
    if (t->token_id >= 0) {
        if (t->position != s->next_pos)
            rlog_warn("request %llu: token position %u, expected %u", (unsigned long long)t->req_id, t->position,
                      s->next_pos);
        s->next_pos = t->position + 1;
        size_t before = s->pending.len;
        if (stream_add_token(s, t)) {
            session_end_stream(s, RILL_E_INTERNAL, PROTO_FINISH_ERROR, "out of memory");
            return;
        }
        c->queued_bytes += s->pending.len - before;
        if (s->n_pending > s->pend_cap) {
            uint32_t cap = s->pend_cap ? s->pend_cap * 2 : 8;
            uint64_t *a = realloc(s->pend_gen_ns, cap * sizeof *a);
            if (a) {
                s->pend_gen_ns = a;
                s->pend_cap = cap;
            }
        }
        if (s->n_pending <= s->pend_cap)
            s->pend_gen_ns[s->n_pending - 1] = t->t_gen_ns;
        if (!s->t_first_ns)
            s->t_first_ns = now_ns;
        s->t_last_ns = now_ns;
        double ms = t->latency_us / 1000.0;
        if (s->n_tokens >= s->lat_cap) {
            uint32_t cap = s->lat_cap ? s->lat_cap * 2 : 64;
            float *a = realloc(s->lat_ms, cap * sizeof *a);
            if (a) {
                s->lat_ms = a;
                s->lat_cap = cap;
            }
        }
        if (s->n_tokens < s->lat_cap)
            s->lat_ms[s->n_tokens] = (float)ms;
        s->lat_sum_ms += ms;
        s->n_tokens++;
        if (t->mem_mb > s->max_mem_mb)
            s->max_mem_mb = t->mem_mb;
        for (int i = 0; i < 8; i++) {
            if (s->batch_cnt[i] == 0 || s->batch_val[i] == t->batch) {
                s->batch_val[i] = t->batch;
                s->batch_cnt[i]++;
                break;
            }
        }
        g->m.tokens++;
        if (s->n_tokens == 1)
            telemetry_ttft(g, (now_ns - s->t_submit_ns) / 1000);
        if (telemetry_sample(g))
            telemetry_token(g, t->latency_us);
        if (c->queued_bytes > (size_t)g->c->client_buffer_bytes) {
            session_fail_slow(c);
            return;
        }
    }
    if (t->flags & PROTO_TOK_LAST) {
        int finish = proto_tok_finish(t->flags);
        if (t->flags & PROTO_TOK_ERROR)
            session_end_stream(s, t->error, finish, rill_err_name(t->error));
        else
            session_end_stream(s, 0, finish, NULL);
        g->m.requests_ok += !(t->flags & PROTO_TOK_ERROR);
    }
    if (!c->hold_until_ns || now_ns >= c->hold_until_ns)
        want_write(c);
}

void session_worker_lost(struct gw *g, int worker)
{
    for (uint32_t i = 0; i < g->map_cap; i++) {
        struct stream *s = g->map[i];
        if (s && s != (struct stream *)1 && s->worker == worker && !s->term)
            session_end_stream(s, RILL_E_WORKER_LOST, PROTO_FINISH_ERROR,
                               "the worker running this generation stopped; resubmit it");
    }
}

static void unhold(struct conn *c);

/* --- the connection ------------------------------------------------------------------------- */

void session_fail_slow(struct conn *c)
{
    if (c->closing)
        return;
    struct gw *g = c->gw;
    rlog_info("client %s is too slow (%zu bytes queued): closing it", c->ip, c->queued_bytes);
    g->m.slow_closed++;
    /* Drop what it could not take; tell it why; stop its generations. */
    for (struct frame *f = c->q_head, *n; f; f = n) {
        n = f->next;
        frame_free(f);
    }
    c->q_head = c->q_tail = NULL;
    c->queued_bytes = 0;
    while (c->streams) {
        send_cancel(c->streams);
        stream_remove(c->streams);
    }
    close_with(c, NULL, RILL_E_SLOW_CONSUMER, "the client did not read its stream fast enough");
}

void session_close_conn(struct conn *c)
{
    if (c->gw) {
        telemetry_subscribe(c, false);
        unhold(c);
        undirty(c);
    }
    while (c->streams) {
        send_cancel(c->streams);
        stream_remove(c->streams);
    }
    for (struct frame *f = c->q_head, *n; f; f = n) {
        n = f->next;
        frame_free(f);
    }
    c->q_head = c->q_tail = NULL;
    free(c->rx);
    c->rx = NULL;
    if (c->counted_ip) {
        limits_ip_release(c->gw, c->ip);
        c->counted_ip = false;
    }
}

static int write_buf(struct conn *c, struct obuf *b)
{
    int n = lws_write(c->wsi, obuf_data(b), b->len, c->msgpack ? LWS_WRITE_BINARY : LWS_WRITE_TEXT);
    if (n < (int)b->len)
        return -1;
    c->gw->m.frames++;
    c->gw->m.bytes_out += b->len;
    return 0;
}

/* Next stream after `from` (wrapping) that has something to send. */
static struct stream *next_ready(struct conn *c, bool tokens_allowed)
{
    struct stream *start = c->rr ? c->rr : c->streams;
    if (!start)
        return NULL;
    struct stream *s = start;
    do {
        if ((tokens_allowed && s->n_pending) || (s->term && !s->n_pending))
            return s;
        s = s->next ? s->next : c->streams;
    } while (s != start);
    return NULL;
}

/* --- holds: one list, one timer ----------------------------------------------------- */

#define HOLD_TICK_US 2000

/* The kernel's smoothed round trip to the client, read at most once a
 * second (one getsockopt). */
static double conn_rtt_ms(struct conn *c, uint64_t now)
{
    if (now - c->rtt_checked_ns > 1000000000ull) {
        c->rtt_checked_ns = now;
        struct tcp_info ti;
        socklen_t len = sizeof ti;
        int fd = lws_get_socket_fd(c->wsi);
        if (fd >= 0 && getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0)
            c->rtt_us = ti.tcpi_rtt;
    }
    return c->rtt_us / 1000.0;
}

static void unhold(struct conn *c)
{
    if (!c->held)
        return;
    struct gw *g = c->gw;
    if (c->held_prev)
        c->held_prev->held_next = c->held_next;
    else
        g->held = c->held_next;
    if (c->held_next)
        c->held_next->held_prev = c->held_prev;
    c->held_prev = c->held_next = NULL;
    c->held = false;
    c->hold_until_ns = 0;
}

static void on_hold_tick(lws_sorted_usec_list_t *sul)
{
    struct gw *g = lws_container_of(sul, struct gw, hold_sul);
    g->hold_sul_armed = false;
    session_release_holds(g);
}

void session_release_holds(struct gw *g)
{
    uint64_t now = clock_ns();
    for (struct conn *c = g->held, *next; c; c = next) {
        next = c->held_next;
        if (now >= c->hold_until_ns) {
            unhold(c);
            want_write(c);
        }
    }
    session_flush_writes(g);
    if (g->held && !g->hold_sul_armed && !g->destroying) {
        g->hold_sul_armed = true;
        lws_sul_schedule(g->ctx, 0, &g->hold_sul, on_hold_tick, HOLD_TICK_US);
    }
}

static void hold(struct conn *c, uint64_t until)
{
    struct gw *g = c->gw;
    c->hold_until_ns = until;
    if (!c->held) {
        c->held = true;
        c->held_prev = NULL;
        c->held_next = g->held;
        if (g->held)
            g->held->held_prev = c;
        g->held = c;
    }
    if (!g->hold_sul_armed) {
        g->hold_sul_armed = true;
        lws_sul_schedule(g->ctx, 0, &g->hold_sul, on_hold_tick, HOLD_TICK_US);
    }
}

/* One frame: a queued one first, else the next stream's tokens or its end.
 * Returns 1 if it wrote one, 0 if there was nothing to write, -1 to close. */
static int write_one(struct conn *c, uint64_t now);

int session_writable(struct conn *c)
{
    /* Several frames while the socket takes them: one frame per callback
     * cannot keep up with many streams on one connection, and a client that
     * reads fine would look slow.  lws_send_pipe_choked() says when the
     * kernel buffer is full (or lws holds a partial write). */
    uint64_t now = clock_ns();
    bool more = false;
    for (int i = 0; i < 64; i++) {
        int rc = write_one(c, now);
        if (rc < 0)
            return -1;
        /* poll() only when there is more to write: most connections have
         * one frame, and the check is a syscall. */
        more = c->q_head || next_ready(c, now >= c->hold_until_ns);
        if (rc == 0 || !more || lws_send_pipe_choked(c->wsi))
            break;
    }
    if (more)
        lws_callback_on_writable(c->wsi);
    else if (c->closing)
        return -1;
    return 0;
}

static int write_one(struct conn *c, uint64_t now)
{
    struct gw *g = c->gw;
    int wrote = 0;
    if (c->q_head) {
        wrote = 1;
        struct frame *f = c->q_head;
        c->q_head = f->next;
        if (!c->q_head)
            c->q_tail = NULL;
        c->queued_bytes -= f->buf.len < c->queued_bytes ? f->buf.len : c->queued_bytes;
        int rc = write_buf(c, &f->buf);
        frame_free(f);
        if (rc)
            return -1;
    } else {
        bool tokens_allowed = now >= c->hold_until_ns;
        struct stream *s = next_ready(c, tokens_allowed);
        if (s) {
            wrote = 1;
            c->rr = s->next;
            struct obuf b = {0};
            if (s->n_pending) {
                uint32_t n = s->n_pending < s->pend_cap ? s->n_pending : s->pend_cap;
                int rc = stream_tokens_frame(s, &b) || write_buf(c, &b);
                obuf_free(&b);
                if (rc)
                    return -1;
                /* Delivery: from the worker's ring publish to this frame's write. */
                uint64_t t_write = clock_ns();
                for (uint32_t i = 0; i < n; i++)
                    if (t_write > s->pend_gen_ns[i] && telemetry_sample(g))
                        telemetry_delivery(g, (t_write - s->pend_gen_ns[i]) / 1000);
                /* Coalesce on a slow path: a long round trip or a backlog. */
                double hold_ms = 0, rtt_ms = conn_rtt_ms(c, now);
                if (rtt_ms > 20)
                    hold_ms = rtt_ms / 4;
                if (c->queued_bytes > (size_t)g->c->client_buffer_bytes / 4)
                    hold_ms = hold_ms > 10 ? hold_ms : 10;
                if (hold_ms > (double)g->c->coalesce_max_ms)
                    hold_ms = (double)g->c->coalesce_max_ms;
                if (hold_ms > 0)
                    hold(c, now + (uint64_t)(hold_ms * 1e6));
            } else if (s->term_code) {
                conn_send_error_r(c, &s->cid, s->term_code, s->term_msg,
                                  !s->term_final && rill_err_recoverable(rill_err_wire(s->term_code)));
                s->state = ST_DONE;
                stream_remove(s);
            } else {
                int rc = stream_terminal_frame(s, &b) || write_buf(c, &b);
                obuf_free(&b);
                s->state = ST_DONE;
                stream_remove(s);
                if (rc)
                    return -1;
            }
        }
    }
    return wrote;
}
