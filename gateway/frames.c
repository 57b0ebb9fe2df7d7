/* frames.c — what the gateway sends, in both protocols.
 *
 *   {"type":"accepted","id":X,"worker":"w0"}
 *   {"type":"token","id":X,"token":{"id":8204,"text":" quantum","position":12,
 *     "latency_ms":38.5,"logprob":-0.52[,"top_logprobs":[{"id":..,"logprob":..}]]}}
 *   {"type":"tokens","id":X,"tokens":[{...},{...}]}     several coalesced
 *   {"type":"complete","id":X,"finish_reason":"length","summary":{...}}
 *   {"type":"error","id"?:X,"error":{"code":"..","message":"..","recoverable":b}}
 *   {"type":"hello","server":"rill",...}
 * rill.msgpack.v1 frames are the same maps in msgpack.
 *
 * Token items are encoded once, when the record arrives, into the stream's
 * pending buffer; a frame is then the items with a prefix and a suffix, so
 * coalescing several tokens costs a memcpy, not a re-encode.
 */
#include "gw.h"
#include "common/procstat.h"
#include "common/err.h"
#include "common/jsonw.h"
#include "common/log.h"

#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The most a client's id takes in a JSON frame: every byte a \u00XX escape,
 * and the quotes.  Frame buffers that hold an id are sized from it. */
#define ID_JSON_MAX (6 * CREQ_ID_MAX + 2)

/* --- buffers ---------------------------------------------------------------------- */

int obuf_reserve(struct obuf *b, size_t more)
{
    if (b->p && b->cap - b->len >= more)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < more)
        cap *= 2;
    unsigned char *p = realloc(b->p, LWS_PRE + cap);
    if (!p)
        return RILL_E_NOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

int obuf_put(struct obuf *b, const void *data, size_t n)
{
    if (obuf_reserve(b, n))
        return RILL_E_NOMEM;
    memcpy(b->p + LWS_PRE + b->len, data, n);
    b->len += n;
    return 0;
}

void obuf_free(struct obuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

static int mp_write(void *data, const char *buf, size_t len)
{
    return obuf_put(data, buf, len) ? -1 : 0;
}

static void mp_str(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void mp_key(msgpack_packer *pk, const char *k) { mp_str(pk, k, strlen(k)); }

/* A msgpack str must be UTF-8 (strict decoders refuse the frame), but an
 * error message may quote a client's bytes or cut a character in two (a
 * %.32s), and a token's text is cut wherever a client's stop string (which
 * need not be UTF-8) matched: invalid bytes become U+FFFD, as jsonw does for
 * rill.json.v1. */
static void mp_str_utf8(msgpack_packer *pk, const char *s, size_t n)
{
    if (utf8_valid_prefix(s, n) == n) {
        mp_str(pk, s, n);
        return;
    }
    char *out = malloc(3 * n);
    if (!out) {
        mp_str(pk, "", 0);
        return;
    }
    size_t o = 0;
    while (n) {
        size_t k = utf8_valid_prefix(s, n);
        memcpy(out + o, s, k);
        o += k, s += k, n -= k;
        if (n) {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3, s++, n--;
        }
    }
    mp_str(pk, out, o);
    free(out);
}

static void mp_id(msgpack_packer *pk, const struct creq_id *id)
{
    if (id->is_num)
        msgpack_pack_uint64(pk, strtoull(id->s, NULL, 10));
    else
        mp_str(pk, id->s, strlen(id->s));
}

/* --- queue ------------------------------------------------------------------------- */

void frame_free(struct frame *f)
{
    obuf_free(&f->buf);
    free(f);
}

int conn_queue(struct conn *c, struct obuf *body, bool force)
{
    size_t bound = (size_t)c->gw->c->client_buffer_bytes;
    if (!force && c->queued_bytes + body->len > bound) {
        obuf_free(body);
        session_fail_slow(c);
        return RILL_E_SLOW_CONSUMER;
    }
    struct frame *f = calloc(1, sizeof *f);
    if (!f) {
        obuf_free(body);
        return RILL_E_NOMEM;
    }
    f->buf = *body;
    f->binary = c->msgpack;
    memset(body, 0, sizeof *body);
    if (c->q_tail)
        c->q_tail->next = f;
    else
        c->q_head = f;
    c->q_tail = f;
    c->queued_bytes += f->buf.len;
    lws_callback_on_writable(c->wsi);
    return 0;
}

/* --- small messages ---------------------------------------------------------------------- */

void conn_send_error(struct conn *c, const struct creq_id *id, int code, const char *msg)
{
    conn_send_error_r(c, id, code, msg, rill_err_recoverable(rill_err_wire(code)));
}

void conn_send_error_r(struct conn *c, const struct creq_id *id, int code, const char *msg, bool recoverable)
{
    int wire = rill_err_wire(code);
    struct obuf b = {0};
    if (c->msgpack) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, &b, mp_write);
        msgpack_pack_map(&pk, id && id->present ? 3 : 2);
        mp_key(&pk, "type");
        mp_key(&pk, "error");
        if (id && id->present) {
            mp_key(&pk, "id");
            mp_id(&pk, id);
        }
        mp_key(&pk, "error");
        msgpack_pack_map(&pk, 3);
        mp_key(&pk, "code");
        mp_key(&pk, rill_err_name(wire));
        mp_key(&pk, "message");
        mp_str_utf8(&pk, msg, strlen(msg));
        mp_key(&pk, "recoverable");
        if (recoverable)
            msgpack_pack_true(&pk);
        else
            msgpack_pack_false(&pk);
    } else {
        char buf[ID_JSON_MAX + 1024];
        struct jsonw w;
        jsonw_init(&w, buf, sizeof buf);
        jsonw_obj_begin(&w);
        jsonw_key_str(&w, "type", "error");
        if (id && id->present) {
            jsonw_key(&w, "id");
            creq_id_json(&w, id);
        }
        jsonw_key(&w, "error");
        jsonw_obj_begin(&w);
        jsonw_key_str(&w, "code", rill_err_name(wire));
        jsonw_key_str(&w, "message", msg);
        jsonw_key_bool(&w, "recoverable", recoverable);
        jsonw_obj_end(&w);
        jsonw_obj_end(&w);
        obuf_put(&b, buf, jsonw_len(&w));
    }
    c->gw->m.errors[rill_err_index(wire)]++;
    conn_queue(c, &b, true);
}

void conn_send_accepted(struct conn *c, const struct creq_id *id, const char *worker)
{
    struct obuf b = {0};
    if (c->msgpack) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, &b, mp_write);
        msgpack_pack_map(&pk, 3);
        mp_key(&pk, "type");
        mp_key(&pk, "accepted");
        mp_key(&pk, "id");
        mp_id(&pk, id);
        mp_key(&pk, "worker");
        mp_key(&pk, worker);
    } else {
        char buf[ID_JSON_MAX + 256];
        struct jsonw w;
        jsonw_init(&w, buf, sizeof buf);
        jsonw_obj_begin(&w);
        jsonw_key_str(&w, "type", "accepted");
        jsonw_key(&w, "id");
        creq_id_json(&w, id);
        jsonw_key_str(&w, "worker", worker);
        jsonw_obj_end(&w);
        obuf_put(&b, buf, jsonw_len(&w));
    }
    conn_queue(c, &b, true);
}

void conn_send_hello(struct conn *c)
{
    const struct rill_config *cf = c->gw->c;
    struct obuf b = {0};
    const char *proto = c->msgpack ? "rill.msgpack.v1" : "rill.json.v1";
    if (c->msgpack) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, &b, mp_write);
        msgpack_pack_map(&pk, 6);
        mp_key(&pk, "type");
        mp_key(&pk, "hello");
        mp_key(&pk, "server");
        mp_key(&pk, "rill");
        mp_key(&pk, "protocol");
        mp_key(&pk, proto);
        mp_key(&pk, "authenticated");
        if (c->authed)
            msgpack_pack_true(&pk);
        else
            msgpack_pack_false(&pk);
        mp_key(&pk, "max_tokens_limit");
        msgpack_pack_uint32(&pk, (uint32_t)cf->max_tokens_limit);
        mp_key(&pk, "max_streams");
        msgpack_pack_uint32(&pk, (uint32_t)cf->max_streams_per_conn);
    } else {
        char buf[512];
        struct jsonw w;
        jsonw_init(&w, buf, sizeof buf);
        jsonw_obj_begin(&w);
        jsonw_key_str(&w, "type", "hello");
        jsonw_key_str(&w, "server", "rill");
        jsonw_key_str(&w, "protocol", proto);
        jsonw_key_bool(&w, "authenticated", c->authed);
        jsonw_key_uint(&w, "max_tokens_limit", (uint64_t)cf->max_tokens_limit);
        jsonw_key_uint(&w, "max_streams", (uint64_t)cf->max_streams_per_conn);
        jsonw_obj_end(&w);
        obuf_put(&b, buf, jsonw_len(&w));
    }
    conn_queue(c, &b, true);
}

/* --- tokens ---------------------------------------------------------------------------------- */

int stream_add_token(struct stream *s, const struct proto_token *t)
{
    struct obuf *b = &s->pending;
    double lat_ms = t->latency_us / 1000.0;
    if (s->conn->msgpack) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, b, mp_write);
        msgpack_pack_map(&pk, 5 + (t->n_top ? 1 : 0) + (s->timestamps ? 1 : 0));
        mp_key(&pk, "id");
        msgpack_pack_int32(&pk, t->token_id);
        mp_key(&pk, "text");
        mp_str_utf8(&pk, t->text, t->text_len);
        mp_key(&pk, "position");
        msgpack_pack_uint32(&pk, t->position);
        mp_key(&pk, "latency_ms");
        msgpack_pack_double(&pk, lat_ms);
        mp_key(&pk, "logprob");
        msgpack_pack_float(&pk, t->logprob);
        if (s->timestamps) {
            mp_key(&pk, "gen_us");
            msgpack_pack_uint64(&pk, t->t_gen_ns / 1000);
        }
        if (t->n_top) {
            mp_key(&pk, "top_logprobs");
            msgpack_pack_array(&pk, t->n_top);
            for (unsigned i = 0; i < t->n_top; i++) {
                msgpack_pack_map(&pk, 2);
                mp_key(&pk, "id");
                msgpack_pack_int32(&pk, t->top[i].token_id);
                mp_key(&pk, "logprob");
                msgpack_pack_float(&pk, t->top[i].logprob);
            }
        }
    } else {
        /* The worst case: 512 bytes of text escaped as \u00XX, 20 alternatives. */
        char buf[4096];
        struct jsonw w;
        jsonw_init(&w, buf, sizeof buf);
        if (s->n_pending)
            jsonw_raw(&w, ",", 1);
        jsonw_obj_begin(&w);
        jsonw_key_int(&w, "id", t->token_id);
        jsonw_key(&w, "text");
        jsonw_strn(&w, t->text, t->text_len);
        jsonw_key_uint(&w, "position", t->position);
        jsonw_key_double(&w, "latency_ms", lat_ms, 3);
        jsonw_key_double(&w, "logprob", t->logprob, 5);
        if (s->timestamps)
            jsonw_key_uint(&w, "gen_us", t->t_gen_ns / 1000);
        if (t->n_top) {
            jsonw_key(&w, "top_logprobs");
            jsonw_arr_begin(&w);
            for (unsigned i = 0; i < t->n_top; i++) {
                jsonw_obj_begin(&w);
                jsonw_key_int(&w, "id", t->top[i].token_id);
                jsonw_key_double(&w, "logprob", t->top[i].logprob, 5);
                jsonw_obj_end(&w);
            }
            jsonw_arr_end(&w);
        }
        jsonw_obj_end(&w);
        if (obuf_put(b, buf, jsonw_len(&w)))
            return RILL_E_NOMEM;
    }
    s->n_pending++;
    return 0;
}

int stream_tokens_frame(struct stream *s, struct obuf *out)
{
    bool many = s->n_pending > 1;
    int rc = 0;
    if (s->conn->msgpack) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, out, mp_write);
        msgpack_pack_map(&pk, 3);
        mp_key(&pk, "type");
        mp_key(&pk, many ? "tokens" : "token");
        mp_key(&pk, "id");
        mp_id(&pk, &s->cid);
        mp_key(&pk, many ? "tokens" : "token");
        if (many)
            msgpack_pack_array(&pk, s->n_pending);
        rc = obuf_put(out, obuf_data(&s->pending), s->pending.len);
    } else {
        char pre[ID_JSON_MAX + 64];
        struct jsonw w;
        jsonw_init(&w, pre, sizeof pre);
        jsonw_obj_begin(&w);
        jsonw_key_str(&w, "type", many ? "tokens" : "token");
        jsonw_key(&w, "id");
        creq_id_json(&w, &s->cid);
        jsonw_key(&w, many ? "tokens" : "token");
        rc = obuf_put(out, pre, jsonw_len(&w));
        if (!rc && many)
            rc = obuf_put(out, "[", 1);
        if (!rc)
            rc = obuf_put(out, obuf_data(&s->pending), s->pending.len);
        if (!rc)
            rc = obuf_put(out, many ? "]}" : "}", many ? 2 : 1);
    }
    s->conn->gw->m.coalesced_tokens += s->n_pending > 1 ? s->n_pending - 1 : 0;
    s->conn->queued_bytes -= s->pending.len < s->conn->queued_bytes ? s->pending.len : s->conn->queued_bytes;
    s->pending.len = 0;
    s->n_pending = 0;
    return rc;
}

/* --- the end of a stream --------------------------------------------------------------------- */

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

struct summary {
    uint32_t total_tokens;
    double duration_s, ttft_ms, avg_ms, p95_ms, avg_tps, e2e_tps;
    uint32_t max_mem_mb, errors, batch;
};

static void summarize(struct stream *s, struct summary *u)
{
    memset(u, 0, sizeof *u);
    u->total_tokens = s->n_tokens;
    uint64_t end = s->t_last_ns ? s->t_last_ns : s->t_submit_ns;
    u->duration_s = (double)(end - s->t_submit_ns) / 1e9;
    u->ttft_ms = s->t_first_ns ? (double)(s->t_first_ns - s->t_submit_ns) / 1e6 : 0;
    uint32_t n = s->n_tokens < s->lat_cap ? s->n_tokens : s->lat_cap;
    if (n) {
        u->avg_ms = s->lat_sum_ms / s->n_tokens;
        qsort(s->lat_ms, n, sizeof *s->lat_ms, cmp_float);
        u->p95_ms = s->lat_ms[procstat_rank(n, 0.95)];
        u->avg_tps = s->lat_sum_ms > 0 ? s->n_tokens * 1000.0 / s->lat_sum_ms : 0;
    }
    u->e2e_tps = u->duration_s > 0 ? s->n_tokens / u->duration_s : 0;
    u->max_mem_mb = s->max_mem_mb;
    u->errors = s->term_code ? 1 : 0;
    uint32_t best = 0;
    for (int i = 0; i < 8; i++)
        if (s->batch_cnt[i] > best) {
            best = s->batch_cnt[i];
            u->batch = s->batch_val[i];
        }
}

int stream_terminal_frame(struct stream *s, struct obuf *out)
{
    struct conn *c = s->conn;
    struct summary u;
    summarize(s, &u);
    const char *finish = proto_finish_name((enum proto_finish)s->finish);
    rlog_info("request %s done (%s): %u tokens in %.3f s, first after %.1f ms, token latency avg %.1f p95 %.1f ms, "
              "%.1f tokens/s, batch %u, max memory %u MB", s->cid.s, finish, u.total_tokens, u.duration_s, u.ttft_ms,
              u.avg_ms, u.p95_ms, u.e2e_tps, u.batch, u.max_mem_mb);
    if (c->msgpack) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, out, mp_write);
        msgpack_pack_map(&pk, 4);
        mp_key(&pk, "type");
        mp_key(&pk, "complete");
        mp_key(&pk, "id");
        mp_id(&pk, &s->cid);
        mp_key(&pk, "finish_reason");
        mp_key(&pk, finish);
        mp_key(&pk, "summary");
        msgpack_pack_map(&pk, 11);
        mp_key(&pk, "total_tokens");
        msgpack_pack_uint32(&pk, u.total_tokens);
        mp_key(&pk, "session_duration_sec");
        msgpack_pack_double(&pk, u.duration_s);
        mp_key(&pk, "time_to_first_token_ms");
        msgpack_pack_double(&pk, u.ttft_ms);
        mp_key(&pk, "average_token_latency_ms");
        msgpack_pack_double(&pk, u.avg_ms);
        mp_key(&pk, "p95_token_latency_ms");
        msgpack_pack_double(&pk, u.p95_ms);
        mp_key(&pk, "average_throughput_tokens_per_sec");
        msgpack_pack_double(&pk, u.avg_tps);
        mp_key(&pk, "end_to_end_throughput_tokens_per_sec");
        msgpack_pack_double(&pk, u.e2e_tps);
        mp_key(&pk, "max_memory_usage_mb");
        msgpack_pack_uint32(&pk, u.max_mem_mb);
        mp_key(&pk, "error_count");
        msgpack_pack_uint32(&pk, u.errors);
        mp_key(&pk, "error_rate");
        msgpack_pack_double(&pk, u.total_tokens ? (double)u.errors / u.total_tokens : 0);
        mp_key(&pk, "most_common_batch_size");
        msgpack_pack_uint32(&pk, u.batch);
        return 0;
    }
    char buf[ID_JSON_MAX + 1024];
    struct jsonw w;
    jsonw_init(&w, buf, sizeof buf);
    jsonw_obj_begin(&w);
    jsonw_key_str(&w, "type", "complete");
    jsonw_key(&w, "id");
    creq_id_json(&w, &s->cid);
    jsonw_key_str(&w, "finish_reason", finish);
    jsonw_key(&w, "summary");
    jsonw_obj_begin(&w);
    jsonw_key_uint(&w, "total_tokens", u.total_tokens);
    jsonw_key_double(&w, "session_duration_sec", u.duration_s, 6);
    jsonw_key_double(&w, "time_to_first_token_ms", u.ttft_ms, 3);
    jsonw_key_double(&w, "average_token_latency_ms", u.avg_ms, 3);
    jsonw_key_double(&w, "p95_token_latency_ms", u.p95_ms, 3);
    jsonw_key_double(&w, "average_throughput_tokens_per_sec", u.avg_tps, 2);
    jsonw_key_double(&w, "end_to_end_throughput_tokens_per_sec", u.e2e_tps, 2);
    jsonw_key_uint(&w, "max_memory_usage_mb", u.max_mem_mb);
    jsonw_key_uint(&w, "error_count", u.errors);
    jsonw_key_double(&w, "error_rate", u.total_tokens ? (double)u.errors / u.total_tokens : 0, 6);
    jsonw_key_uint(&w, "most_common_batch_size", u.batch);
    jsonw_obj_end(&w);
    jsonw_obj_end(&w);
    return obuf_put(out, buf, jsonw_len(&w));
}
