/* session.c — see session.h. */
#include "session.h"
#include "frames.h"
#include "http.h"
#include "wstool.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/utf8.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static struct conn *conn_of(struct writer *w) { return (struct conn *)w; }

/* --- small frames --------------------------------------------------------------------------- */

static void send_error_r(struct conn *c, const struct creq_id *id, int code, const char *msg, bool recoverable)
{
    struct obuf b = {0};
    if (frames_error(&b, c->msgpack, id, code, msg, recoverable) == 0) {
        c->ss->m->errors[rill_err_index(rill_err_wire(code))]++;
        writer_queue(&c->w, &b, true);
    }
    obuf_free(&b);
}

static void send_error(struct conn *c, const struct creq_id *id, int code, const char *msg)
{
    send_error_r(c, id, code, msg, rill_err_recoverable(rill_err_wire(code)));
}

/* Tell the client why, then close once that has gone out. */
static void close_with(struct conn *c, const struct creq_id *id, int code, const char *msg)
{
    send_error(c, id, code, msg);
    c->w.closing = true;
    lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, 5);
}

static void send_hello(struct conn *c)
{
    const struct rill_config *cf = c->ss->c;
    struct frames_hello h = {c->authed, (uint32_t)cf->max_tokens_limit, (uint32_t)cf->max_streams_per_conn};
    struct obuf b = {0};
    if (frames_hello(&b, c->msgpack, &h) == 0)
        writer_queue(&c->w, &b, true);
    obuf_free(&b);
}

/* --- the connection's streams ------------------------------------------------------------------ */

static struct stream *find_stream(struct conn *c, const struct creq_id *id)
{
    for (struct stream *s = c->streams; s; s = s->next)
        if (s->state != STREAM_DONE && !strcmp(s->cid.s, id->s) && s->cid.is_num == id->is_num)
            return s;
    return NULL;
}

static void tools_close(struct conn *c, const struct stream *s);

/* Take s out of its connection (its unsent tokens and its tool-call
 * reading with it). */
static void unlink_stream(struct conn *c, struct stream *s)
{
    for (struct stream **pp = &c->streams; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    if (c->rr == s)
        c->rr = s->next;
    c->n_streams--;
    writer_account(&c->w, -(long)s->out.pending.len);
    s->out.pending.len = 0;
    s->out.n_pending = 0;
    s->next = NULL;
    tools_close(c, s);
}

/* Unlink s from its connection and release it. */
static void drop_stream(struct conn *c, struct stream *s)
{
    unlink_stream(c, s);
    stream_release(c->ss->streams, s);
}

static void drop_streams(struct conn *c)
{
    while (c->streams)
        drop_stream(c, c->streams);
}

/* The client cannot keep up: drop what it could not take, tell it why, stop
 * its generations. */
static void fail_slow(struct conn *c)
{
    if (c->w.closing)
        return;
    rlog_info("client %s is too slow (%zu bytes queued): closing it", c->ip, c->w.queued_bytes);
    c->ss->m->slow_closed++;
    writer_drop_queue(&c->w);
    drop_streams(c);
    c->w.queued_bytes = 0;
    close_with(c, NULL, RILL_E_SLOW_CONSUMER, "the client did not read its stream fast enough");
}

/* --- stream events -------------------------------------------------------------------------------- */

static void on_accepted(void *ctx, struct stream *s)
{
    struct session *ss = ctx;
    struct conn *c = s->owner;
    struct obuf b = {0};
    char token[STREAM_TOKEN_LEN];
    stream_resume_token(ss->streams, s, token);
    if (frames_accepted(&b, c->msgpack, &s->cid, transport_worker_id(ss->tp, s->worker),
                        ss->streams->resume_window_ns ? token : NULL) == 0)
        writer_queue(&c->w, &b, true);
    obuf_free(&b);
}

/* t as the next pending item of s.  RILL_E_NOMEM, or RILL_E_SLOW_CONSUMER:
 * the connection is past its bound now (the caller fails it). */
static int put_token(struct conn *c, struct stream *s, const struct proto_token *t)
{
    struct stream_out *o = &s->out;
    size_t before = o->pending.len;
    if (frames_token_item(&o->pending, c->msgpack, o->n_pending == 0, o->timestamps, t))
        return RILL_E_NOMEM;
    o->n_pending++;
    if (o->n_pending > o->pend_cap) {
        uint32_t cap = o->pend_cap ? o->pend_cap * 2 : 8;
        uint64_t *a = realloc(o->pend_gen_ns, cap * sizeof *a);
        if (a) {
            o->pend_gen_ns = a;
            o->pend_cap = cap;
        }
    }
    if (o->n_pending <= o->pend_cap)
        o->pend_gen_ns[o->n_pending - 1] = t->t_gen_ns;
    return writer_account(&c->w, (long)(o->pending.len - before)) ? 0 : RILL_E_SLOW_CONSUMER;
}

/* --- tool calls ------------------------------------------------------------------------------ */

/* A generation with tools on this connection: its tokens pass through
 * wstool, its calls leave as tool_call frames.  The reading belongs to the
 * connection, not the stream: a detached stream's tokens only go to its
 * log, so a resume rebuilds the reading from position 0. */
struct conn_tools {
    struct conn_tools *next;
    const struct stream *s;
    struct wstool *w;
    uint32_t from;               /* the tokens before it were sent already (a resume's from) */
    bool quiet;                  /* and so were the calls before the token at from - 1 */
};

/* One feed's output: the sinks only note a full connection, since failing
 * it would free the wstool they are called from. */
struct tools_feed {
    struct conn *c;
    struct stream *s;
    struct conn_tools *t;
    bool slow;
};

static bool has_tools(const struct stream *s) { return s->submit.tools.len > 0; }

static struct conn_tools *tools_of(struct conn *c, const struct stream *s)
{
    struct conn_tools *t = c->tools;
    while (t && t->s != s)
        t = t->next;
    return t;
}

static void tools_close(struct conn *c, const struct stream *s)
{
    for (struct conn_tools **pp = &c->tools; *pp; pp = &(*pp)->next)
        if ((*pp)->s == s) {
            struct conn_tools *t = *pp;
            *pp = t->next;
            wstool_free(t->w);
            free(t);
            return;
        }
}

/* The call ids come from the stream's seed and id, so that a rebuild (on
 * any connection) gives the client the same ids again.  NULL: no memory. */
static struct conn_tools *tools_open(struct conn *c, const struct stream *s, uint32_t from)
{
    struct conn_tools *t = calloc(1, sizeof *t);
    if (!t || !(t->w = wstool_new(s->submit.seed ^ s->req_id))) {
        free(t);
        return NULL;
    }
    t->s = s;
    t->from = from;
    t->quiet = from > 0;
    t->next = c->tools;
    c->tools = t;
    return t;
}

static int sink_token(void *ctx, const struct proto_token *tk)
{
    struct tools_feed *f = ctx;
    if (tk->position < f->t->from) {
        f->t->quiet = tk->position + 1 < f->t->from;
        return 0;
    }
    int rc = put_token(f->c, f->s, tk);
    f->slow |= rc == RILL_E_SLOW_CONSUMER;
    return rc == RILL_E_SLOW_CONSUMER ? 0 : rc;
}

/* A call leaves as a frame of its own, after the tokens before it: those
 * are framed now and queued ahead of it (their delivery time is not
 * measured). */
static int sink_call(void *ctx, const struct wstool_call *k)
{
    struct tools_feed *f = ctx;
    if (f->t->quiet)
        return 0;
    struct conn *c = f->c;
    struct stream_out *o = &f->s->out;
    struct obuf b = {0};
    int rc = 0;
    if (o->n_pending) {
        rc = frames_tokens(&b, c->msgpack, &f->s->cid, &o->pending, o->n_pending);
        writer_account(&c->w, -(long)o->pending.len);
        o->pending.len = 0;
        o->n_pending = 0;
        rc = rc || writer_queue(&c->w, &b, true);
    }
    rc = rc || frames_tool_call(&b, c->msgpack, &f->s->cid, k) || writer_queue(&c->w, &b, true);
    obuf_free(&b);
    f->slow |= !writer_account(&c->w, 0);
    return rc ? RILL_E_NOMEM : 0;
}

/* Feed one token of s (tk), or end its turn (tk NULL).  0, RILL_E_SLOW_CONSUMER
 * or another error (no memory). */
static int tools_feed(struct conn *c, struct stream *s, struct conn_tools *t, const struct proto_token *tk)
{
    struct tools_feed f = {c, s, t, false};
    const struct wstool_sink k = {&f, sink_token, sink_call};
    int rc = tk ? wstool_token(t->w, tk, &k) : wstool_finish(t->w, &k);
    return rc ? rc : f.slow ? RILL_E_SLOW_CONSUMER : 0;
}

/* A resume of a generation with tools: its reading is built again from
 * position 0 — the same content, the same calls with the same ids — and
 * what came after the token at from - 1 is sent.  false: failed. */
static bool replay_tools(struct conn *c, struct stream *s, uint32_t from)
{
    tools_close(c, s);
    struct conn_tools *t = tools_open(c, s, from);
    int rc = t ? 0 : RILL_E_NOMEM;
    for (uint32_t pos = 0; pos < s->next_pos && !rc; pos++) {
        struct proto_token tk;
        rc = stream_log_get(s, pos, &tk);
        rc = rc ? rc : tools_feed(c, s, t, &tk);
    }
    if (!rc && s->state == STREAM_DONE)
        rc = tools_feed(c, s, t, NULL);
    struct stream_out *o = &s->out;
    uint32_t n = o->n_pending < o->pend_cap ? o->n_pending : o->pend_cap;
    if (n) /* delivery times are not measured for replayed tokens */
        memset(o->pend_gen_ns, 0, n * sizeof *o->pend_gen_ns);
    if (rc == RILL_E_SLOW_CONSUMER)
        fail_slow(c);
    return rc == 0;
}

static int on_token(void *ctx, struct stream *s, const struct proto_token *t, uint64_t now_ns)
{
    struct session *ss = ctx;
    struct conn *c = s->owner;
    struct conn_tools *tools = has_tools(s) ? tools_of(c, s) : NULL;
    int rc = tools ? tools_feed(c, s, tools, t) : put_token(c, s, t);
    if (rc && rc != RILL_E_SLOW_CONSUMER) {
        stream_end(ss->streams, s, RILL_E_INTERNAL, PROTO_FINISH_ERROR, "out of memory");
        return -1;
    }
    ss->m->tokens++;
    if (s->n_tokens == 1)
        telemetry_ttft(ss->tel, (now_ns - s->t_submit_ns) / 1000);
    if (telemetry_sample(ss->tel))
        telemetry_token(ss->tel, t->latency_us);
    if (rc) {
        fail_slow(c);
        return -1;
    }
    writer_want(&c->w, now_ns);
    return 0;
}

static void on_ended(void *ctx, struct stream *s)
{
    struct session *ss = ctx;
    struct conn *c = s->owner;
    if (!s->term_code)
        ss->m->requests_ok++;
    /* What the tool-call parser still holds is decided now, and its tokens
     * go out (past the bound too: the end must reach the client anyway). */
    struct conn_tools *tools = has_tools(s) ? tools_of(c, s) : NULL;
    int rc = tools ? tools_feed(c, s, tools, NULL) : 0;
    if (rc && rc != RILL_E_SLOW_CONSUMER)
        rlog_warn("request %s: no memory for the rest of its tool calls", s->cid.s);
    /* The end goes out after the stream's pending tokens. */
    writer_wake(&c->w);
}


/* --- writing ----------------------------------------------------------------------------------- */

/* The next stream after the round-robin point (wrapping) with something to
 * send: tokens (when allowed) or, once its tokens are out, its end. */
static struct stream *next_ready(struct conn *c, bool tokens_allowed)
{
    struct stream *start = c->rr ? c->rr : c->streams;
    if (!start)
        return NULL;
    struct stream *s = start;
    do {
        if ((tokens_allowed && s->out.n_pending) || (s->state == STREAM_DONE && !s->out.n_pending))
            return s;
        s = s->next ? s->next : c->streams;
    } while (s != start);
    return NULL;
}

static int write_tokens(struct conn *c, struct stream *s, uint64_t now)
{
    struct session *ss = c->ss;
    struct stream_out *o = &s->out;
    uint32_t n = o->n_pending < o->pend_cap ? o->n_pending : o->pend_cap;
    /* One buffer for every connection's token frames: writer_send() is
     * done with a frame when it returns (copied into the batch, sent, or
     * buffered by lws), and a malloc a frame showed in the profile. */
    struct obuf *b = &ss->scratch;
    b->len = 0;
    int rc = frames_tokens(b, c->msgpack, &s->cid, &o->pending, o->n_pending);
    ss->m->coalesced_tokens += o->n_pending > 1 ? o->n_pending - 1 : 0;
    writer_account(&c->w, -(long)o->pending.len);
    o->pending.len = 0;
    o->n_pending = 0;
    rc = rc || writer_send(&c->w, b);
    if (b->cap > 65536)
        obuf_free(b); /* a rare large frame's buffer is not kept */
    if (rc)
        return -1;
    /* Delivery: from the worker's ring publish to this frame's write. */
    uint64_t t_write = clock_ns();
    for (uint32_t i = 0; i < n; i++)
        if (o->pend_gen_ns[i] && t_write > o->pend_gen_ns[i] && telemetry_sample(ss->tel))
            telemetry_delivery(ss->tel, (t_write - o->pend_gen_ns[i]) / 1000);
    writer_coalesce(&c->w, now);
    return 0;
}

static int write_end(struct conn *c, struct stream *s)
{
    int rc = 0;
    if (s->term_code) {
        send_error_r(c, &s->cid, s->term_code, s->term_msg, stream_recoverable(s));
    } else {
        struct stream_summary u;
        stream_summary(s, &u);
        const char *finish = proto_finish_name((enum proto_finish)s->finish);
        struct conn_tools *tools = has_tools(s) ? tools_of(c, s) : NULL;
        if (tools && wstool_calls(tools->w) && (s->finish == PROTO_FINISH_STOP || s->finish == PROTO_FINISH_EOS))
            finish = "tool_calls"; /* the turn ended by itself after its calls, as /v1 says */
        rlog_info("request %s done (%s): %u tokens in %.3f s, first after %.1f ms, token latency avg %.1f p95 %.1f "
                  "ms, %.1f tokens/s, batch %u, max memory %u MB",
                  s->cid.s, finish, u.total_tokens, u.duration_s, u.ttft_ms, u.avg_ms, u.p95_ms, u.e2e_tps, u.batch,
                  u.max_mem_mb);
        struct obuf b = {0};
        rc = frames_complete(&b, c->msgpack, &s->cid, finish, &u) || writer_send(&c->w, &b);
        obuf_free(&b);
    }
    unlink_stream(c, s);
    stream_retire(c->ss->streams, s, clock_ns()); /* a resume may still ask for its end */
    return rc ? -1 : 0;
}

static int pull(void *ctx, struct writer *w, uint64_t now, bool tokens_allowed)
{
    (void)ctx;
    struct conn *c = conn_of(w);
    struct stream *s = next_ready(c, tokens_allowed);
    if (!s)
        return 0;
    c->rr = s->next;
    int rc = s->out.n_pending ? write_tokens(c, s, now) : write_end(c, s);
    return rc < 0 ? -1 : 1;
}

static bool has_more(void *ctx, struct writer *w, bool tokens_allowed)
{
    (void)ctx;
    return next_ready(conn_of(w), tokens_allowed) != NULL;
}

static void on_slow(void *ctx, struct writer *w)
{
    (void)ctx;
    fail_slow(conn_of(w));
}

void session_writer_cb(struct session *ss, struct writer_cb *cb)
{
    *cb = (struct writer_cb){ss, pull, has_more, on_slow};
}

int session_writable(struct conn *c) { return writer_writable(&c->w); }

/* --- messages from the client ----------------------------------------------------------------- */

static void handle_generate(struct conn *c, struct creq *r)
{
    struct session *ss = c->ss;
    const struct rill_config *cf = ss->c;
    if (!c->authed) {
        close_with(c, &r->id, RILL_E_UNAUTHORIZED,
                   "an API key is required (Authorization: Bearer, ?key=, or hello.key)");
        return;
    }
    if (ss->shutting_down) {
        send_error(c, &r->id, RILL_E_SHUTTING_DOWN, "the server is shutting down");
        return;
    }
    if (c->n_streams >= (uint32_t)cf->max_streams_per_conn) {
        char m[96];
        snprintf(m, sizeof m, "at most %lld generations at once on one connection", (long long)cf->max_streams_per_conn);
        send_error(c, &r->id, RILL_E_TOO_MANY_STREAMS, m);
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
        send_error(c, &r->id, RILL_E_DUPLICATE_ID, "a generation with this id is still running");
        return;
    }
    uint64_t now = clock_ns();
    if (!limits_rate_ok(ss->limits, c->bucket_key, now)) {
        send_error(c, &r->id, RILL_E_RATE_LIMITED, "too many requests: slow down");
        return;
    }
    struct proto_submit p = {0};
    p.prompt = r->prompt;
    p.prompt_len = r->prompt_len;
    p.max_tokens = r->max_tokens;
    p.temperature = r->temperature;
    p.top_p = r->top_p;
    p.top_k = r->top_k;
    p.min_p = r->min_p;
    p.repetition_penalty = r->repetition_penalty;
    p.presence_penalty = r->presence_penalty;
    p.frequency_penalty = r->frequency_penalty;
    p.seed = r->seed;
    p.has_seed = r->has_seed;
    p.n_stop = r->n_stop;
    memcpy(p.stop, r->stop, sizeof p.stop);
    p.top_logprobs = r->top_logprobs;
    p.parse_special = r->parse_special;
    p.ignore_eos = r->ignore_eos;
    p.messages = (struct proto_text){r->messages, r->messages_len};
    p.tools = (struct proto_text){r->tools, r->tools_len};
    struct stream *s = stream_new(ss->streams, c, &ss->ev, &r->id, &p, now);
    if (!s) {
        send_error(c, &r->id, RILL_E_INTERNAL, "out of memory");
        return;
    }
    r->prompt = NULL; /* the stream owns it now, and the messages */
    r->messages = NULL;
    r->tools = NULL;
    if (has_tools(s) && !tools_open(c, s, 0)) {
        stream_release(ss->streams, s);
        send_error(c, &r->id, RILL_E_INTERNAL, "out of memory");
        return;
    }
    s->out.timestamps = r->timestamps;
    if (ss->limits->n_keys) /* only the same key may resume it */
        snprintf(s->key_name, sizeof s->key_name, "%s", c->bucket_key);
    s->next = c->streams;
    c->streams = s;
    c->n_streams++;
    ss->m->requests++;
    stream_start(ss->streams, s);
}

static void handle_cancel(struct conn *c, const struct creq *r)
{
    if (!r->id.present) {
        for (struct stream *s = c->streams; s; s = s->next)
            stream_cancel(c->ss->streams, s);
        return;
    }
    struct stream *s = find_stream(c, &r->id);
    if (!s) {
        send_error(c, &r->id, RILL_E_NOT_FOUND, "no running generation has this id");
        return;
    }
    stream_cancel(c->ss->streams, s);
}

/* Queue the logged tokens of s from position `from` as if they had just
 * come.  false: the client is too slow for them (failed). */
static bool replay(struct conn *c, struct stream *s, uint32_t from)
{
    if (has_tools(s))
        return replay_tools(c, s, from);
    struct stream_out *o = &s->out;
    for (uint32_t pos = from; pos < s->next_pos; pos++) {
        struct proto_token tk;
        if (stream_log_get(s, pos, &tk))
            break; /* checked before: cannot happen */
        size_t before = o->pending.len;
        if (frames_token_item(&o->pending, c->msgpack, o->n_pending == 0, o->timestamps, &tk))
            return false;
        o->n_pending++;
        if (!writer_account(&c->w, (long)(o->pending.len - before))) {
            fail_slow(c);
            return false;
        }
    }
    /* Delivery times are not measured for replayed tokens (0). */
    if (o->n_pending > o->pend_cap) {
        uint64_t *a = realloc(o->pend_gen_ns, o->n_pending * sizeof *a);
        if (!a)
            return true;
        o->pend_gen_ns = a;
        o->pend_cap = o->n_pending;
    }
    memset(o->pend_gen_ns, 0, o->n_pending * sizeof *o->pend_gen_ns);
    return true;
}

/* A resume of a request this process does not know yet, with a genuine
 * token, while workers still replay what the previous gateway process left:
 * it waits for them (session_tick). */
struct parked_resume {
    struct parked_resume *next;
    struct conn *c;
    struct creq_id id;
    char token[CREQ_TOKEN_MAX + 1];
    uint32_t from;
};
#define MAX_PARKED 4096

static void handle_resume(struct conn *c, struct creq *r);

static bool park(struct conn *c, const struct creq *r)
{
    struct session *ss = c->ss;
    uint32_t n = 0;
    for (struct parked_resume *p = ss->parked; p; p = p->next)
        n++;
    struct parked_resume *p = n < MAX_PARKED ? calloc(1, sizeof *p) : NULL;
    if (!p)
        return false;
    p->c = c;
    p->id = r->id;
    snprintf(p->token, sizeof p->token, "%s", r->resume_token);
    p->from = r->from;
    p->next = ss->parked;
    ss->parked = p;
    c->n_parked++;
    return true;
}

/* Take c's parked resumes out (all, or with `run`, answer them now). */
static void unpark(struct session *ss, struct conn *only, bool run)
{
    struct parked_resume *keep = NULL, *todo = NULL;
    while (ss->parked) {
        struct parked_resume *p = ss->parked;
        ss->parked = p->next;
        struct parked_resume **to = only && p->c != only ? &keep : &todo;
        p->next = *to;
        *to = p;
    }
    ss->parked = keep;
    while (todo) {
        struct parked_resume *p = todo;
        todo = p->next;
        p->c->n_parked--;
        if (run) {
            struct creq r = {.type = CREQ_RESUME, .id = p->id, .from = p->from};
            snprintf(r.resume_token, sizeof r.resume_token, "%s", p->token);
            handle_resume(p->c, &r);
        }
        free(p);
    }
}

void session_tick(struct session *ss, uint64_t now_ns)
{
    if (ss->parked && !transport_adopting(ss->tp, now_ns))
        unpark(ss, NULL, true);
}

void session_fini(struct session *ss)
{
    unpark(ss, NULL, false);
    obuf_free(&ss->scratch);
}

static void handle_resume(struct conn *c, struct creq *r)
{
    struct session *ss = c->ss;
    if (!c->authed) {
        close_with(c, &r->id, RILL_E_UNAUTHORIZED,
                   "an API key is required (Authorization: Bearer, ?key=, or hello.key)");
        return;
    }
    bool genuine;
    struct stream *s = stream_by_token(ss->streams, r->resume_token, ss->limits->n_keys ? c->bucket_key : "", &genuine);
    if (!s && genuine && transport_adopting(ss->tp, clock_ns()) && park(c, r))
        return;
    if (!s) {
        send_error(c, &r->id, RILL_E_RESUME_FAILED,
                   "no generation has this resume token (it ended more than resume_window_s ago, or never existed)");
        return;
    }
    if (!r->id.present) {
        r->id = s->cid;
    }
    struct stream *same = find_stream(c, &r->id);
    if (same && same != s) {
        send_error(c, &r->id, RILL_E_DUPLICATE_ID, "a generation with this id is still running");
        return;
    }
    if (r->from > s->next_pos) {
        char m[128];
        snprintf(m, sizeof m, "from %u is beyond the %u tokens generated so far", r->from, s->next_pos);
        send_error(c, &r->id, RILL_E_BAD_REQUEST, m);
        return;
    }
    if (r->from < s->next_pos && r->from < s->log_first) {
        char m[160];
        snprintf(m, sizeof m, "the tokens from position %u are no longer kept (kept: from %u on)", r->from,
                 s->log_first);
        send_error(c, &r->id, RILL_E_RESUME_FAILED, m);
        return;
    }
    if (has_tools(s) && s->log_first > 0) {
        send_error(c, &r->id, RILL_E_RESUME_FAILED,
                   "the tool calls of this generation cannot be read again: its first tokens are no longer kept");
        return;
    }
    if (!s->detached_ns) {
        /* Its old connection is still open (half-open, or this one): the
         * new one takes over. */
        struct conn *old = s->owner;
        if (s->ev != &ss->ev) {
            send_error(c, &r->id, RILL_E_RESUME_FAILED, "this generation is served on another interface");
            return;
        }
        unlink_stream(old, s);
        stream_detach(ss->streams, s, clock_ns());
    }
    if (c->n_streams >= (uint32_t)ss->c->max_streams_per_conn) {
        send_error(c, &r->id, RILL_E_TOO_MANY_STREAMS, "too many generations on this connection to resume one more");
        return;
    }
    stream_attach(ss->streams, s, c, &ss->ev);
    s->cid = r->id;
    s->next = c->streams;
    c->streams = s;
    c->n_streams++;
    rlog_info("request %llu resumed as %s from position %u", (unsigned long long)s->req_id, s->cid.s, r->from);
    struct obuf b = {0};
    if (frames_resumed(&b, c->msgpack, &s->cid, r->from) == 0)
        writer_queue(&c->w, &b, true);
    obuf_free(&b);
    if (!replay(c, s, r->from))
        return;
    writer_want(&c->w, clock_ns());
    writer_wake(&c->w);
}

static void on_message(struct conn *c, const unsigned char *buf, size_t len, bool binary)
{
    struct session *ss = c->ss;
    if (c->w.closing)
        return;
    ss->m->bytes_in += len;
    if (!binary && utf8_valid_prefix((const char *)buf, len) != len) {
        send_error(c, NULL, RILL_E_BAD_REQUEST, "text frame is not valid UTF-8");
        return;
    }
    if (binary != c->msgpack) {
        send_error(c, NULL, RILL_E_BAD_REQUEST,
                   binary ? "binary frame on rill.json.v1: send JSON text frames"
                          : "text frame on rill.msgpack.v1: send msgpack binary frames");
        return;
    }
    struct creq r;
    char msg[256];
    int rc = creq_parse(buf, len, binary, &ss->lim, &r, msg, sizeof msg);
    rlog_debug("message from %s: %zu bytes, %s", c->ip, len, rc ? msg : "ok");
    if (rc) {
        send_error(c, &r.id, rc, msg);
        return;
    }
    switch (r.type) {
    case CREQ_HELLO:
        if (r.has_key) {
            if (!limits_key_ok(ss->limits, r.key)) {
                close_with(c, NULL, RILL_E_UNAUTHORIZED, "invalid API key");
                break;
            }
            c->authed = true;
            limits_key_name(r.key, c->bucket_key, sizeof c->bucket_key);
        }
        if (r.client[0])
            rlog_debug("client %s says hello from %s", r.client, c->ip);
        send_hello(c);
        break;
    case CREQ_GENERATE:
        handle_generate(c, &r);
        break;
    case CREQ_CANCEL:
        handle_cancel(c, &r);
        break;
    case CREQ_RESUME:
        handle_resume(c, &r);
        break;
    case CREQ_SUBSCRIBE:
        /* Telemetry names workers, rates and errors: with keys on, a key. */
        if (!c->authed)
            close_with(c, NULL, RILL_E_UNAUTHORIZED, "an API key is required for telemetry");
        else if (c->msgpack)
            send_error(c, NULL, RILL_E_BAD_REQUEST, "telemetry is sent on rill.json.v1 connections");
        else if (telemetry_subscribe(ss->tel, &c->w, r.telemetry))
            send_error(c, NULL, RILL_E_INTERNAL, "out of memory");
        else
            c->subscribed = r.telemetry;
        break;
    default:
        break;
    }
    creq_free(&r);
}

void session_receive(struct conn *c, const void *in, size_t len)
{
    if (c->w.closing)
        return;
    size_t cap = (size_t)c->ss->c->max_message_bytes;
    bool first = lws_is_first_fragment(c->wsi), final = lws_is_final_fragment(c->wsi);
    if (first) {
        c->rx_len = 0;
        c->rx_discard = false;
    }
    if (!c->rx_discard && c->rx_len + len > cap) {
        c->rx_discard = true;
        char m[96];
        snprintf(m, sizeof m, "message over %zu bytes", cap);
        send_error(c, NULL, RILL_E_TOO_LARGE, m);
    }
    if (!c->rx_discard) {
        if (c->rx_len + len > c->rx_cap) {
            size_t ncap = c->rx_cap ? c->rx_cap : 1024;
            while (ncap < c->rx_len + len)
                ncap *= 2;
            unsigned char *p = realloc(c->rx, ncap);
            if (!p) {
                c->rx_discard = true;
                send_error(c, NULL, RILL_E_INTERNAL, "out of memory");
            } else {
                c->rx = p;
                c->rx_cap = ncap;
            }
        }
        /* lws hands over empty fragments as (NULL, 0): memcpy from NULL is
         * undefined even for no bytes (UBSan stops the gateway on it). */
        if (!c->rx_discard && len) {
            memcpy(c->rx + c->rx_len, in, len);
            c->rx_len += len;
        }
    }
    if (!final)
        return;
    bool binary = lws_frame_is_binary(c->wsi);
    if (!c->rx_discard)
        on_message(c, c->rx, c->rx_len, binary);
    c->rx_len = 0;
    /* A big message's buffer is not kept for an idle connection. */
    if (c->rx_cap > 16384) {
        free(c->rx);
        c->rx = NULL;
        c->rx_cap = 0;
    }
}

/* --- the connection's life ------------------------------------------------------------------- */

void session_init(struct session *ss, const struct rill_config *c, struct limits *limits,
                  struct stream_table *streams, struct writer_set *writers, struct telemetry *tel,
                  struct metrics *m, struct transport *tp)
{
    memset(ss, 0, sizeof *ss);
    ss->c = c;
    ss->limits = limits;
    ss->streams = streams;
    ss->writers = writers;
    ss->tel = tel;
    ss->m = m;
    ss->tp = tp;
    ss->lim.max_message_bytes = (uint32_t)c->max_message_bytes;
    ss->lim.max_prompt_bytes = (uint32_t)c->max_prompt_bytes;
    ss->lim.max_tokens_limit = (uint32_t)c->max_tokens_limit;
    ss->ev = (struct stream_events){ss, on_accepted, on_token, on_ended};
}

int session_handshake(struct session *ss, struct conn *c, struct lws *wsi)
{
    char uri[256] = "";
    lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI);
    if (strcmp(uri, ss->c->ws_path) != 0)
        return -1; /* not our WebSocket path */
    memset(c, 0, sizeof *c);
    c->ss = ss;
    lws_get_peer_simple(wsi, c->ip, sizeof c->ip);
    /* lws accepts permessage-deflate whenever a client offers it; the
     * extension may need writable callbacks of its own, so such connections
     * are only written from the callback. */
    char ext[256] = "";
    lws_hdr_copy(wsi, ext, sizeof ext, WSI_TOKEN_EXTENSIONS);
    c->w.deflate = strstr(ext, "permessage-deflate") != NULL;
    bool has_origin, has_host;
    char *origin = http_header_dup(wsi, WSI_TOKEN_ORIGIN, &has_origin);
    char *host = http_header_dup(wsi, WSI_TOKEN_HOST, &has_host);
    /* Remember the verdicts: the errors are sent once established.  An
     * Origin that is present but could not be read is not "no Origin". */
    if ((has_origin && !origin) || !limits_origin_ok(ss->limits, origin, host))
        c->verdict = RILL_E_FORBIDDEN_ORIGIN;
    free(origin);
    free(host);
    char key[CREQ_KEY_MAX + 16];
    http_request_key(wsi, key, sizeof key);
    c->authed = limits_key_ok(ss->limits, key[0] ? key : NULL);
    if (key[0] && !c->authed && !c->verdict)
        c->verdict = RILL_E_UNAUTHORIZED;
    if (key[0] && c->authed)
        limits_key_name(key, c->bucket_key, sizeof c->bucket_key);
    else
        snprintf(c->bucket_key, sizeof c->bucket_key, "ip:%s", c->ip);
    memset(key, 0, sizeof key);
    return 0;
}

void session_established(struct conn *c, struct lws *wsi, bool msgpack)
{
    struct session *ss = c->ss;
    assert(ss);
    bool deflate = c->w.deflate;
    c->wsi = wsi;
    c->msgpack = msgpack;
    c->established = true;
    writer_open(&c->w, ss->writers, wsi, msgpack, deflate);
    ss->m->connections_total++;
    rlog_debug("connection from %s (%s)", c->ip, msgpack ? "rill.msgpack.v1" : "rill.json.v1");
    /* Bound the kernel's send buffer too: autotuned, it grows to tcp_wmem's
     * maximum (4 MiB by default) for a client that stopped reading, so the
     * gateway would only see the client as slow — and hold its memory —
     * long after client_buffer_bytes.  The kernel doubles the value. */
    int fd = lws_get_socket_fd(wsi);
    int sndbuf = (int)ss->c->client_buffer_bytes;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    int verdict = c->verdict;
    if (!verdict && !limits_ip_acquire(ss->limits, c->ip))
        verdict = RILL_E_TOO_MANY_CONNS;
    else if (!verdict)
        c->counted_ip = true;
    if (verdict) {
        const char *why = verdict == RILL_E_FORBIDDEN_ORIGIN ? "this Origin is not allowed"
                          : verdict == RILL_E_UNAUTHORIZED    ? "invalid API key"
                                                              : "too many connections from this address";
        close_with(c, NULL, verdict, why);
    }
}

void session_peer_close(struct conn *c, const void *in, size_t len)
{
    const unsigned char *p = in;
    c->closed_by_client = len >= 2 && ((unsigned)p[0] << 8 | p[1]) == LWS_CLOSE_STATUS_NORMAL;
}

void session_closed(struct conn *c)
{
    if (!c->ss)
        return; /* refused before the handshake was read */
    if (c->subscribed)
        telemetry_subscribe(c->ss->tel, &c->w, false);
    /* A dropped connection does not end its generations: they run on for
     * resume_window_s, for a resume on another connection.  A client that
     * closed with 1000 (normal closure) said it is done: they end now, as a
     * cancel would end them, and are not kept. */
    uint64_t now = clock_ns();
    if (c->n_parked)
        unpark(c->ss, c, false);
    while (c->streams) {
        struct stream *s = c->streams;
        unlink_stream(c, s);
        if (c->closed_by_client)
            stream_release(c->ss->streams, s);
        else
            stream_detach(c->ss->streams, s, now);
    }
    writer_close(&c->w);
    free(c->rx);
    c->rx = NULL;
    if (c->counted_ip) {
        limits_ip_release(c->ss->limits, c->ip);
        c->counted_ip = false;
    }
}
