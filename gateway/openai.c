/* openai.c — see openai.h. */
#include "openai.h"
#include "http.h"
#include "toolcall.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#define REQ_MAGIC 0x6f616921u /* "oai!": the wsi's opaque data is ours */
#define WRITE_MAX (64u << 10)  /* bytes per lws_write */

enum route { ROUTE_NONE, ROUTE_MODELS, ROUTE_MODEL, ROUTE_COMPLETIONS, ROUTE_CHAT };

struct openai_req {
    uint32_t magic;
    struct openai_req *prev, *next;
    struct openai *oa;
    struct lws *wsi;
    enum route route;
    char model_asked[OAIJSON_MODEL_MAX + 1]; /* GET /v1/models/{id} */
    char ip[48];
    char bucket_key[72];
    bool counted_ip;
    /* the body */
    unsigned char *body;
    size_t body_len, body_cap, body_seen;
    bool body_over;
    int early_code;              /* refused before the body was read (0: not) */
    char early_msg[160];
    /* the generation */
    struct stream *s;
    char *messages;              /* chat: the submit's messages (JSON), for the stream's life */
    char *tools;                 /* chat: the submit's tools (JSON), until the stream takes them */
    struct toolcall *tc;         /* the request had tools: the answer's calls are parsed */
    struct obuf calls;           /* stream:false: the calls so far, a JSON array's items */
    char *call_id, *call_name;   /* stream:false: the call being read */
    struct obuf call_args;
    bool tc_failed;
    bool stream_mode, include_usage, logprobs, chat;
    char id[48];
    struct oaijson_head head;
    uint32_t prompt_tokens;
    char hold[4];                /* the start of a character the next token ends */
    size_t n_hold;
    struct obuf text;            /* stream:false: the text so far */
    struct obuf lp;              /* logprob items so far (stream:false), or of this piece */
    uint32_t n_lp;
    uint32_t text_offset;        /* completions logprobs: bytes of text before the token */
    bool accepted;
    /* the answer */
    unsigned status;
    bool sse;                    /* text/event-stream, framed by closing */
    bool head_ready, head_sent;
    bool ended;                  /* everything is in `out`: finish once it has gone */
    bool slow;                   /* cut off: close */
    struct obuf out;
    size_t out_off;
};

/* --- requests' lives ------------------------------------------------------------------------- */

static struct openai_req *req_of(struct lws *wsi)
{
    struct openai_req *r = lws_get_opaque_user_data(wsi);
    return r && r->magic == REQ_MAGIC ? r : NULL;
}

static void req_free(struct openai_req *r)
{
    struct openai *oa = r->oa;
    if (r->s)
        stream_release(oa->streams, r->s); /* cancels it at its worker if it is running */
    free(r->messages);
    free(r->tools);
    toolcall_free(r->tc);
    obuf_free(&r->calls);
    obuf_free(&r->call_args);
    free(r->call_id);
    free(r->call_name);
    if (r->counted_ip)
        limits_ip_release(oa->limits, r->ip);
    if (r->prev)
        r->prev->next = r->next;
    else
        oa->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    lws_set_opaque_user_data(r->wsi, NULL);
    free(r->body);
    obuf_free(&r->text);
    obuf_free(&r->lp);
    obuf_free(&r->out);
    r->magic = 0;
    free(r);
}

static void want_write(struct openai_req *r) { lws_callback_on_writable(r->wsi); }

/* The whole answer is a JSON body with this status. */
static void answer_json(struct openai_req *r, unsigned status)
{
    r->status = status;
    r->sse = false;
    r->head_ready = true;
    r->ended = true;
    want_write(r);
}

/* An OpenAI error body, counted as the WebSocket path counts its errors. */
static void answer_error(struct openai_req *r, int code, const char *param, const char *msg)
{
    struct oaijson_status st;
    oaijson_status(code, &st);
    r->oa->m->errors[rill_err_index(rill_err_wire(code))]++;
    r->out.len = 0;
    r->out_off = 0;
    rlog_debug("openai: %s from %s: %u %s", r->id[0] ? r->id : "request", r->ip, st.http, msg);
    if (oaijson_error(&r->out, code, param, msg)) {
        r->slow = true; /* out of memory: nothing sensible to say */
        want_write(r);
        return;
    }
    answer_json(r, st.http);
}

/* --- stream events ------------------------------------------------------------------------------ */

/* The text of a token that can go now: held bytes first, and a character
 * the token does not finish held for the next. */
static size_t take_text(struct openai_req *r, const struct proto_token *t, char *buf, size_t cap)
{
    size_t n = 0;
    memcpy(buf, r->hold, r->n_hold);
    n = r->n_hold;
    if (t && t->text_len && n + t->text_len <= cap) {
        memcpy(buf + n, t->text, t->text_len);
        n += t->text_len;
    }
    r->n_hold = t ? oaijson_utf8_tail(buf, n) : 0;
    memcpy(r->hold, buf + n - r->n_hold, r->n_hold);
    return n - r->n_hold;
}

static bool past_bound(const struct openai_req *r)
{
    return r->out.len - r->out_off > (size_t)r->oa->c->client_buffer_bytes;
}

static void fail_slow(struct openai_req *r)
{
    struct openai *oa = r->oa;
    rlog_info("openai client %s is too slow (%zu bytes queued): closing it", r->ip, r->out.len - r->out_off);
    oa->m->slow_closed++;
    oa->m->errors[rill_err_index(RILL_E_SLOW_CONSUMER)]++;
    r->slow = true;
    if (r->s && r->s->state != STREAM_DONE)
        stream_end(oa->streams, r->s, RILL_E_SLOW_CONSUMER, PROTO_FINISH_ERROR, "the client did not read fast enough");
    lws_set_timeout(r->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

static void on_accepted(void *ctx, struct stream *s)
{
    (void)ctx;
    struct openai_req *r = s->owner;
    r->accepted = true;
    if (!r->stream_mode)
        return;
    /* From here on the answer is 200 and an event stream: an error is an
     * event in it. */
    r->status = 200;
    r->sse = true;
    r->head_ready = true;
    if (r->chat && oaijson_chunk(&r->out, &r->head, true, "", 0, NULL, NULL, 0)) {
        fail_slow(r);
        return;
    }
    want_write(r);
}

/* stream:false: the call being read joins the list. */
static int flush_call(struct openai_req *r)
{
    if (!r->call_id)
        return 0;
    int rc = (r->calls.len && obuf_put(&r->calls, ",", 1)) ||
             oaijson_tool_call(&r->calls, r->call_id, r->call_name, (const char *)obuf_data(&r->call_args),
                               r->call_args.len);
    free(r->call_id);
    free(r->call_name);
    r->call_id = r->call_name = NULL;
    r->call_args.len = 0;
    return rc ? RILL_E_NOMEM : 0;
}

/* What the tool-call parser found in the text: content as before, calls as
 * delta.tool_calls chunks (or kept for message.tool_calls). */
static int on_tool_event(void *ctx, const struct toolcall_ev *ev)
{
    struct openai_req *r = ctx;
    if (ev->kind == TOOLCALL_CONTENT) {
        if (r->stream_mode)
            return oaijson_chunk(&r->out, &r->head, false, ev->text, ev->n, NULL, NULL, 0) ? RILL_E_NOMEM : 0;
        return obuf_put(&r->text, ev->text, ev->n) ? RILL_E_NOMEM : 0;
    }
    if (r->stream_mode) {
        bool first = ev->kind == TOOLCALL_START;
        int rc = first ? oaijson_tool_chunk(&r->out, &r->head, ev->index, ev->id, ev->text, "", 0)
                       : oaijson_tool_chunk(&r->out, &r->head, ev->index, NULL, NULL, ev->text, ev->n);
        return rc ? RILL_E_NOMEM : 0;
    }
    if (ev->kind == TOOLCALL_START) {
        if (flush_call(r))
            return RILL_E_NOMEM;
        r->call_id = strdup(ev->id);
        r->call_name = strndup(ev->text, ev->n);
        return r->call_id && r->call_name ? 0 : RILL_E_NOMEM;
    }
    return obuf_put(&r->call_args, ev->text, ev->n) ? RILL_E_NOMEM : 0;
}

static int on_token(void *ctx, struct stream *s, const struct proto_token *t, uint64_t now_ns)
{
    struct openai *oa = ctx;
    struct openai_req *r = s->owner;
    if (r->slow)
        return -1;
    oa->m->tokens++;
    if (s->n_tokens == 1)
        telemetry_ttft(oa->tel, (now_ns - s->t_submit_ns) / 1000);
    if (telemetry_sample(oa->tel))
        telemetry_token(oa->tel, t->latency_us);
    if (now_ns > t->t_gen_ns && telemetry_sample(oa->tel))
        telemetry_delivery(oa->tel, (now_ns - t->t_gen_ns) / 1000);
    char piece[PROTO_MAX_TOKEN_TEXT + 8];
    size_t n = take_text(r, t, piece, sizeof piece);
    int rc = 0;
    if (r->logprobs) {
        if (r->stream_mode) {
            r->lp.len = 0;
            r->n_lp = 0;
        }
        rc = oaijson_logprob_item(&r->lp, r->chat, r->n_lp == 0, t, r->text_offset);
        r->n_lp++;
    }
    r->text_offset += t->text_len;
    if (!rc && r->tc) {
        /* logprobs ride on a chunk of their own: the token's text may be held or become a call */
        if (r->logprobs && r->stream_mode)
            rc = oaijson_chunk(&r->out, &r->head, false, "", 0, NULL, (char *)obuf_data(&r->lp), r->lp.len);
        rc = rc || toolcall_feed(r->tc, piece, n, on_tool_event, r);
    } else if (!rc && r->stream_mode) {
        if (n || r->logprobs)
            rc = oaijson_chunk(&r->out, &r->head, false, piece, n, NULL, r->logprobs ? (char *)obuf_data(&r->lp) : NULL,
                               r->lp.len);
    } else if (!rc) {
        rc = obuf_put(&r->text, piece, n);
    }
    if (rc || past_bound(r)) {
        fail_slow(r);
        return -1;
    }
    if (r->stream_mode)
        want_write(r);
    return 0;
}

static void on_ended(void *ctx, struct stream *s)
{
    struct openai *oa = ctx;
    struct openai_req *r = s->owner;
    if (r->slow)
        return;
    if (!s->term_code)
        oa->m->requests_ok++;
    struct oaijson_usage u = {r->prompt_tokens, s->n_tokens};
    const char *finish = oaijson_finish(s->finish);
    char piece[8];
    size_t n = take_text(r, NULL, piece, sizeof piece); /* what was held: the end cuts it */
    int rc = 0;
    if (r->tc && !s->term_code) {
        rc = toolcall_feed(r->tc, piece, n, on_tool_event, r) || toolcall_finish(r->tc, on_tool_event, r) ||
             flush_call(r);
        n = 0;
        if (toolcall_count(r->tc) && (!finish || !strcmp(finish, "stop")))
            finish = "tool_calls";
    }
    if (r->sse) {
        if (s->term_code) {
            oa->m->errors[rill_err_index(rill_err_wire(s->term_code))]++;
            rc = oaijson_error_event(&r->out, s->term_code, s->term_msg);
        } else {
            if (n)
                rc = oaijson_chunk(&r->out, &r->head, false, piece, n, NULL, NULL, 0);
            rc = rc || oaijson_chunk(&r->out, &r->head, false, "", 0, finish ? finish : "stop", NULL, 0);
            if (!rc && r->include_usage)
                rc = oaijson_usage_chunk(&r->out, &r->head, &u);
        }
        rc = rc || oaijson_done(&r->out);
        r->ended = true;
    } else if (s->term_code) {
        answer_error(r, s->term_code, NULL, s->term_msg);
        return;
    } else {
        if (r->tc && toolcall_count(r->tc)) {
            rc = rc || obuf_put(&r->calls, "]", 1);
            struct obuf arr = {0};
            rc = rc || obuf_put(&arr, "[", 1) || obuf_put(&arr, obuf_data(&r->calls), r->calls.len) ||
                 oaijson_response_tools(&r->out, &r->head, (const char *)obuf_data(&r->text), r->text.len, finish,
                                        &u, (const char *)obuf_data(&arr), arr.len);
            obuf_free(&arr);
        } else {
            rc = rc || obuf_put(&r->text, piece, n) ||
                 oaijson_response(&r->out, &r->head, (const char *)obuf_data(&r->text), r->text.len,
                                  finish ? finish : "stop", r->logprobs ? (const char *)obuf_data(&r->lp) : NULL,
                                  r->lp.len, &u);
        }
        r->status = 200;
        r->head_ready = true;
        r->ended = true;
    }
    if (rc)
        r->slow = true;
    if (!s->term_code)
        rlog_debug("openai: %s done (%s): %u + %u tokens", r->id, proto_finish_name((enum proto_finish)s->finish),
                   r->prompt_tokens, s->n_tokens);
    want_write(r);
}

/* --- starting a generation -------------------------------------------------------------------- */

static void start(struct openai_req *r)
{
    struct openai *oa = r->oa;
    uint64_t now = clock_ns();
    if (*oa->shutting_down) {
        answer_error(r, RILL_E_SHUTTING_DOWN, NULL, "the server is shutting down");
        return;
    }
    if (!limits_rate_ok(oa->limits, r->bucket_key, now)) {
        answer_error(r, RILL_E_RATE_LIMITED, NULL, "too many requests: slow down");
        return;
    }
    struct oaijson_req q;
    char param[OAIJSON_PARAM_MAX], msg[256];
    int rc = oaijson_parse(r->body, r->body_len, r->route == ROUTE_CHAT ? OAIJSON_CHAT : OAIJSON_COMPLETIONS, &oa->lim,
                           &q, param, sizeof param, msg, sizeof msg);
    free(r->body);
    r->body = NULL;
    if (rc) {
        answer_error(r, rc, param, msg);
        return;
    }
    if (!limits_ip_acquire(oa->limits, r->ip)) {
        oaijson_req_free(&q);
        answer_error(r, RILL_E_TOO_MANY_CONNS, NULL, "too many connections from this address");
        return;
    }
    r->counted_ip = true;
    r->stream_mode = q.stream;
    r->include_usage = q.stream && q.include_usage;
    r->logprobs = q.logprobs;
    r->chat = q.kind == OAIJSON_CHAT;
    snprintf(r->id, sizeof r->id, "%s-%08x%08llx", r->chat ? "chatcmpl" : "cmpl", oa->epoch,
             (unsigned long long)++oa->next_id);
    r->head = (struct oaijson_head){r->id, (int64_t)time(NULL), oa->model, r->chat, r->include_usage};
    /* The worker renders the messages with the model's chat template; the
     * stream takes them over with the prompt (and may send them again). */
    r->messages = q.messages;
    q.messages = NULL;
    q.submit.messages = (struct proto_text){r->messages, q.messages_len};
    if (q.tools) {
        r->tools = q.tools;
        q.tools = NULL;
        q.submit.tools = (struct proto_text){r->tools, q.tools_len};
        uint64_t seed = 0;
        if (getrandom(&seed, sizeof seed, 0) != sizeof seed)
            seed = now ^ oa->next_id;
        r->tc = toolcall_new(seed);
        if (!r->tc) {
            oaijson_req_free(&q);
            answer_error(r, RILL_E_INTERNAL, NULL, "out of memory");
            return;
        }
    }
    struct creq_id cid = {.present = true};
    snprintf(cid.s, sizeof cid.s, "%s", r->id);
    struct stream *s = stream_new(oa->streams, r, &oa->ev, &cid, &q.submit, now);
    oaijson_req_free(&q); /* the prompt is the stream's now (NULL here) */
    if (!s) {
        answer_error(r, RILL_E_INTERNAL, NULL, "out of memory");
        return;
    }
    r->messages = NULL; /* the stream's */
    r->tools = NULL;
    r->s = s;
    oa->m->requests++;
    /* lws's HTTP timeouts are for reading requests: a generation takes as
     * long as it takes, and its client's going away is seen as a close. */
    lws_set_timeout(r->wsi, NO_PENDING_TIMEOUT, 0);
    /* Bound the kernel's send buffer too, as for a WebSocket client. */
    int fd = lws_get_socket_fd(r->wsi);
    int sndbuf = (int)oa->c->client_buffer_bytes;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    stream_start(oa->streams, s); /* may end it at once (no worker) */
}

/* --- lws events ---------------------------------------------------------------------------------- */

static enum route route_of(const char *uri, int len, char *model, size_t model_n)
{
    static const char models[] = "/v1/models";
    if (len == (int)sizeof models - 1 && !memcmp(uri, models, (size_t)len))
        return ROUTE_MODELS;
    if (len > (int)sizeof models && !memcmp(uri, models, sizeof models - 1) && uri[sizeof models - 1] == '/') {
        snprintf(model, model_n, "%.*s", len - (int)sizeof models, uri + sizeof models);
        return ROUTE_MODEL;
    }
    if (len == 15 && !memcmp(uri, "/v1/completions", 15))
        return ROUTE_COMPLETIONS;
    if (len == 20 && !memcmp(uri, "/v1/chat/completions", 20))
        return ROUTE_CHAT;
    return ROUTE_NONE;
}

bool openai_takes(struct lws *wsi, enum lws_callback_reasons reason)
{
    switch (reason) {
    case LWS_CALLBACK_HTTP: {
        char *uri = NULL;
        int len = 0;
        if (lws_http_get_uri_and_method(wsi, &uri, &len) < 0 || !uri)
            return false;
        return (len == 3 && !memcmp(uri, "/v1", 3)) || (len > 3 && !memcmp(uri, "/v1/", 4));
    }
    case LWS_CALLBACK_HTTP_BODY:
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
    case LWS_CALLBACK_HTTP_WRITEABLE:
    case LWS_CALLBACK_CLOSED_HTTP:
        return req_of(wsi) != NULL;
    default:
        return false;
    }
}

static int on_http(struct openai *oa, struct lws *wsi)
{
    struct openai_req *r = calloc(1, sizeof *r);
    if (!r)
        return -1;
    r->magic = REQ_MAGIC;
    r->oa = oa;
    r->wsi = wsi;
    r->next = oa->reqs;
    if (oa->reqs)
        oa->reqs->prev = r;
    oa->reqs = r;
    lws_set_opaque_user_data(wsi, r);
    lws_get_peer_simple(wsi, r->ip, sizeof r->ip);
    char *uri = NULL;
    int len = 0;
    int method = lws_http_get_uri_and_method(wsi, &uri, &len);
    r->route = route_of(uri, len, r->model_asked, sizeof r->model_asked);
    char key[CREQ_KEY_MAX + 16];
    http_request_key(wsi, key, sizeof key);
    bool authed = limits_key_ok(oa->limits, key[0] ? key : NULL);
    if (key[0] && authed)
        limits_key_name(key, r->bucket_key, sizeof r->bucket_key);
    else
        snprintf(r->bucket_key, sizeof r->bucket_key, "ip:%s", r->ip);
    memset(key, 0, sizeof key);
    bool post = method == LWSHUMETH_POST;
    bool want_post = r->route == ROUTE_COMPLETIONS || r->route == ROUTE_CHAT;
    if (r->route == ROUTE_NONE) {
        r->early_code = RILL_E_NOT_FOUND;
        snprintf(r->early_msg, sizeof r->early_msg, "Invalid URL (%s %.*s)", post ? "POST" : "GET",
                 len > 100 ? 100 : len, uri);
    } else if (!authed) {
        r->early_code = RILL_E_UNAUTHORIZED;
        snprintf(r->early_msg, sizeof r->early_msg, "%s",
                 "Incorrect or missing API key: give it as Authorization: Bearer KEY");
    } else if (want_post != post) {
        r->early_code = RILL_E_NOT_FOUND;
        snprintf(r->early_msg, sizeof r->early_msg, "Invalid method for %.*s: use %s", len > 100 ? 100 : len, uri,
                 want_post ? "POST" : "GET");
    }
    /* A request with a body is answered once the body has been read. */
    bool has_body = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0;
    if (has_body) {
        char cl[32] = "";
        lws_hdr_copy(wsi, cl, sizeof cl, WSI_TOKEN_HTTP_CONTENT_LENGTH);
        has_body = strtoull(cl, NULL, 10) > 0;
    }
    if (has_body && post)
        return 0;
    if (r->early_code) {
        answer_error(r, r->early_code, NULL, r->early_msg);
    } else if (r->route == ROUTE_MODELS || r->route == ROUTE_MODEL) {
        int rc;
        if (r->route == ROUTE_MODEL && strcmp(r->model_asked, oa->model)) {
            char m[200];
            snprintf(m, sizeof m, "The model '%.100s' does not exist (this server serves '%.64s')", r->model_asked,
                     oa->model);
            answer_error(r, RILL_E_NOT_FOUND, "model", m);
            return 0;
        }
        rc = r->route == ROUTE_MODELS ? oaijson_models(&r->out, oa->model, oa->created)
                                      : oaijson_model(&r->out, oa->model, oa->created);
        if (rc)
            return -1;
        answer_json(r, 200);
    } else {
        answer_error(r, RILL_E_BAD_REQUEST, NULL, "a JSON body is required (with a Content-Length)");
    }
    return 0;
}

static void on_body(struct openai_req *r, const void *in, size_t len)
{
    size_t cap = (size_t)r->oa->c->max_message_bytes;
    r->body_seen += len;
    if (r->early_code || r->body_over)
        return;
    if (r->body_len + len > cap) {
        r->body_over = true; /* read on, keep nothing */
        free(r->body);
        r->body = NULL;
        r->body_len = r->body_cap = 0;
        return;
    }
    if (r->body_len + len > r->body_cap) {
        size_t ncap = r->body_cap ? r->body_cap : 4096;
        while (ncap < r->body_len + len)
            ncap *= 2;
        unsigned char *p = realloc(r->body, ncap);
        if (!p) {
            r->early_code = RILL_E_INTERNAL;
            snprintf(r->early_msg, sizeof r->early_msg, "out of memory");
            return;
        }
        r->body = p;
        r->body_cap = ncap;
    }
    if (len) {
        memcpy(r->body + r->body_len, in, len);
        r->body_len += len;
    }
}

static void on_body_done(struct openai_req *r)
{
    r->oa->m->bytes_in += r->body_seen;
    if (r->early_code) {
        answer_error(r, r->early_code, NULL, r->early_msg);
    } else if (r->body_over) {
        char m[96];
        snprintf(m, sizeof m, "request body of %zu bytes, at most %lld allowed (max_message_bytes)", r->body_seen,
                 (long long)r->oa->c->max_message_bytes);
        answer_error(r, RILL_E_TOO_LARGE, NULL, m);
    } else {
        start(r);
    }
}

static int write_head(struct openai_req *r)
{
    unsigned char buf[LWS_PRE + 2048], *start = buf + LWS_PRE, *p = start, *end = buf + sizeof buf - 1;
    struct lws *wsi = r->wsi;
    const char *type = r->sse ? "text/event-stream" : "application/json";
    lws_filepos_t len = r->sse ? LWS_ILLEGAL_HTTP_CONTENT_LEN : (lws_filepos_t)(r->out.len - r->out_off);
    if (lws_add_http_common_headers(wsi, r->status, type, len, &p, end) ||
        lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:", (const unsigned char *)"no-cache", 8,
                                    &p, end))
        return -1;
    if (r->sse && lws_add_http_header_by_name(wsi, (const unsigned char *)"x-accel-buffering:",
                                              (const unsigned char *)"no", 2, &p, end))
        return -1;
    if (lws_finalize_write_http_header(wsi, start, &p, end))
        return -1;
    r->head_sent = true;
    return 0;
}

static int on_writable(struct openai_req *r)
{
    struct openai *oa = r->oa;
    struct lws *wsi = r->wsi;
    if (r->slow)
        return -1;
    if (!r->head_sent) {
        if (!r->head_ready)
            return 0;
        if (write_head(r))
            return -1;
        want_write(r);
        return 0;
    }
    size_t n = r->out.len - r->out_off;
    if (n) {
        if (n > WRITE_MAX)
            n = WRITE_MAX;
        bool last = r->ended && !r->sse && r->out_off + n == r->out.len;
        /* lws may write before the pointer (LWS_PRE): the bytes there were sent already. */
        unsigned char *at = obuf_data(&r->out) + r->out_off;
        if (lws_write(wsi, at, n, last ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP) < (int)n)
            return -1;
        oa->m->bytes_out += n;
        r->out_off += n;
        if (r->out_off == r->out.len)
            r->out.len = r->out_off = 0;
        else if (r->out_off > (1u << 20) && r->out_off > r->out.len / 2) {
            memmove(obuf_data(&r->out), obuf_data(&r->out) + r->out_off, r->out.len - r->out_off);
            r->out.len -= r->out_off;
            r->out_off = 0;
        }
        if (r->out.len || r->ended)
            want_write(r);
        return 0;
    }
    if (!r->ended)
        return 0;
    /* Everything has gone (lws calls this once its own buffer is empty). */
    req_free(r);
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

int openai_callback(struct openai *oa, struct lws *wsi, enum lws_callback_reasons reason, void *in, size_t len)
{
    if (reason == LWS_CALLBACK_HTTP) {
        struct openai_req *old = req_of(wsi);
        if (old)
            req_free(old); /* cannot happen: a request ends before the next is read */
        return on_http(oa, wsi);
    }
    struct openai_req *r = req_of(wsi);
    assert(r);
    switch (reason) {
    case LWS_CALLBACK_HTTP_BODY:
        on_body(r, in, len);
        return 0;
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        on_body_done(r);
        return 0;
    case LWS_CALLBACK_HTTP_WRITEABLE:
        return on_writable(r);
    case LWS_CALLBACK_CLOSED_HTTP:
        if (r->s && r->s->state != STREAM_DONE)
            rlog_info("openai: %s: the client closed its connection: cancelling", r->id);
        req_free(r);
        return 0;
    default:
        return 0;
    }
}

void openai_on_msg(struct openai *oa, const struct proto_msg *m)
{
    if (m->type != PROTO_ACCEPTED)
        return;
    for (struct openai_req *r = oa->reqs; r; r = r->next)
        if (r->s && r->s->req_id == m->u.accepted.id) {
            if (!r->prompt_tokens) /* a failover's accepted says the same (the worker subtracts the prefill) */
                r->prompt_tokens = m->u.accepted.prompt_tokens;
            return;
        }
}

/* The model's name: its file's, without directories or ".gguf". */
static void model_name(const char *path, char *out, size_t n)
{
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    size_t len = strlen(base);
    if (len > 5 && !strcmp(base + len - 5, ".gguf"))
        len -= 5;
    snprintf(out, n, "%.*s", (int)len, base);
    if (!out[0])
        snprintf(out, n, "rill");
}

void openai_init(struct openai *oa, const struct rill_config *c, struct limits *limits, struct stream_table *streams,
                 struct telemetry *tel, struct metrics *m, struct transport *tp, const bool *shutting_down,
                 uint32_t epoch)
{
    memset(oa, 0, sizeof *oa);
    oa->c = c;
    oa->limits = limits;
    oa->streams = streams;
    oa->tel = tel;
    oa->m = m;
    oa->tp = tp;
    oa->shutting_down = shutting_down;
    oa->epoch = epoch;
    oa->created = (int64_t)time(NULL);
    oa->lim.max_message_bytes = (uint32_t)c->max_message_bytes;
    oa->lim.max_prompt_bytes = (uint32_t)c->max_prompt_bytes;
    oa->lim.max_tokens_limit = (uint32_t)c->max_tokens_limit;
    oa->ev = (struct stream_events){oa, on_accepted, on_token, on_ended};
    model_name(c->model, oa->model, sizeof oa->model);
}
