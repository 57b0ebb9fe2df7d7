/* frames.c — see frames.h.  Token items are encoded once, when the record
 * arrives; a frame is then the items with a prefix and a suffix. */
#include "frames.h"
#include "common/err.h"
#include "common/jsonw.h"
#include "common/tokjson.h"
#include "common/log.h"

#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The most a client's id takes in a JSON frame: every byte a \u00XX escape,
 * and the quotes.  Frame buffers that hold an id are sized from it. */
#define ID_JSON_MAX (6 * CREQ_ID_MAX + 2)

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

/* --- small messages ---------------------------------------------------------------------- */

int frames_error(struct obuf *out, bool msgpack, const struct creq_id *id, int code, const char *msg, bool recoverable)
{
    int wire = rill_err_wire(code);
    if (msgpack) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, out, mp_write);
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
        return obuf_put(out, buf, jsonw_len(&w));
    }
    return 0;
}

int frames_accepted(struct obuf *out, bool msgpack, const struct creq_id *id, const char *worker,
                    const char *resume_token)
{
    if (msgpack) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, out, mp_write);
        msgpack_pack_map(&pk, 3 + (resume_token ? 1 : 0));
        mp_key(&pk, "type");
        mp_key(&pk, "accepted");
        mp_key(&pk, "id");
        mp_id(&pk, id);
        mp_key(&pk, "worker");
        mp_key(&pk, worker);
        if (resume_token) {
            mp_key(&pk, "resume_token");
            mp_key(&pk, resume_token);
        }
    } else {
        char buf[ID_JSON_MAX + 256];
        struct jsonw w;
        jsonw_init(&w, buf, sizeof buf);
        jsonw_obj_begin(&w);
        jsonw_key_str(&w, "type", "accepted");
        jsonw_key(&w, "id");
        creq_id_json(&w, id);
        jsonw_key_str(&w, "worker", worker);
        if (resume_token)
            jsonw_key_str(&w, "resume_token", resume_token);
        jsonw_obj_end(&w);
        return obuf_put(out, buf, jsonw_len(&w));
    }
    return 0;
}

int frames_resumed(struct obuf *out, bool msgpack, const struct creq_id *id, uint32_t from)
{
    if (msgpack) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, out, mp_write);
        msgpack_pack_map(&pk, 3);
        mp_key(&pk, "type");
        mp_key(&pk, "resumed");
        mp_key(&pk, "id");
        mp_id(&pk, id);
        mp_key(&pk, "from");
        msgpack_pack_uint32(&pk, from);
        return 0;
    }
    char buf[ID_JSON_MAX + 128];
    struct jsonw w;
    jsonw_init(&w, buf, sizeof buf);
    jsonw_obj_begin(&w);
    jsonw_key_str(&w, "type", "resumed");
    jsonw_key(&w, "id");
    creq_id_json(&w, id);
    jsonw_key_uint(&w, "from", from);
    jsonw_obj_end(&w);
    return obuf_put(out, buf, jsonw_len(&w));
}

int frames_hello(struct obuf *out, bool msgpack, const struct frames_hello *h)
{
    const char *proto = msgpack ? "rill.msgpack.v1" : "rill.json.v1";
    if (msgpack) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, out, mp_write);
        msgpack_pack_map(&pk, 6);
        mp_key(&pk, "type");
        mp_key(&pk, "hello");
        mp_key(&pk, "server");
        mp_key(&pk, "rill");
        mp_key(&pk, "protocol");
        mp_key(&pk, proto);
        mp_key(&pk, "authenticated");
        if (h->authenticated)
            msgpack_pack_true(&pk);
        else
            msgpack_pack_false(&pk);
        mp_key(&pk, "max_tokens_limit");
        msgpack_pack_uint32(&pk, h->max_tokens_limit);
        mp_key(&pk, "max_streams");
        msgpack_pack_uint32(&pk, h->max_streams);
    } else {
        char buf[512];
        struct jsonw w;
        jsonw_init(&w, buf, sizeof buf);
        jsonw_obj_begin(&w);
        jsonw_key_str(&w, "type", "hello");
        jsonw_key_str(&w, "server", "rill");
        jsonw_key_str(&w, "protocol", proto);
        jsonw_key_bool(&w, "authenticated", h->authenticated);
        jsonw_key_uint(&w, "max_tokens_limit", h->max_tokens_limit);
        jsonw_key_uint(&w, "max_streams", h->max_streams);
        jsonw_obj_end(&w);
        return obuf_put(out, buf, jsonw_len(&w));
    }
    return 0;
}

/* --- tokens ---------------------------------------------------------------------------------- */

int frames_token_item(struct obuf *b, bool msgpack, bool first, bool timestamps, const struct proto_token *t)
{
    double lat_ms = t->latency_us / 1000.0;
    if (msgpack) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, b, mp_write);
        msgpack_pack_map(&pk, 5 + (t->n_top ? 1 : 0) + (timestamps ? 1 : 0));
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
        if (timestamps) {
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
        if (!first)
            jsonw_raw(&w, ",", 1);
        jsonw_obj_begin(&w);
        const struct tokjson_opts o = {.logprob_digits = 5, .gen_us = timestamps};
        tokjson_fields(&w, t, &o);
        jsonw_obj_end(&w);
        if (obuf_put(b, buf, jsonw_len(&w)))
            return RILL_E_NOMEM;
    }
    return 0;
}

int frames_tokens(struct obuf *out, bool msgpack, const struct creq_id *id, const struct obuf *items, uint32_t n)
{
    bool many = n > 1;
    int rc = 0;
    if (msgpack) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, out, mp_write);
        msgpack_pack_map(&pk, 3);
        mp_key(&pk, "type");
        mp_key(&pk, many ? "tokens" : "token");
        mp_key(&pk, "id");
        mp_id(&pk, id);
        mp_key(&pk, many ? "tokens" : "token");
        if (many)
            msgpack_pack_array(&pk, n);
        rc = obuf_put(out, obuf_data(items), items->len);
    } else {
        char pre[ID_JSON_MAX + 64];
        struct jsonw w;
        jsonw_init(&w, pre, sizeof pre);
        jsonw_obj_begin(&w);
        jsonw_key_str(&w, "type", many ? "tokens" : "token");
        jsonw_key(&w, "id");
        creq_id_json(&w, id);
        jsonw_key(&w, many ? "tokens" : "token");
        rc = obuf_put(out, pre, jsonw_len(&w));
        if (!rc && many)
            rc = obuf_put(out, "[", 1);
        if (!rc)
            rc = obuf_put(out, obuf_data(items), items->len);
        if (!rc)
            rc = obuf_put(out, many ? "]}" : "}", many ? 2 : 1);
    }
    return rc;
}

/* --- tool calls ------------------------------------------------------------------------------ */

int frames_tool_call(struct obuf *out, bool msgpack, const struct creq_id *id, const struct wstool_call *c)
{
    if (msgpack) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, out, mp_write);
        msgpack_pack_map(&pk, 6);
        mp_key(&pk, "type");
        mp_key(&pk, "tool_call");
        mp_key(&pk, "id");
        mp_id(&pk, id);
        mp_key(&pk, "index");
        msgpack_pack_uint32(&pk, c->index);
        mp_key(&pk, "call_id");
        mp_key(&pk, c->id);
        mp_key(&pk, "name");
        mp_str_utf8(&pk, c->name, c->name_n);
        mp_key(&pk, "arguments");
        mp_str_utf8(&pk, c->args, c->args_n);
        return 0;
    }
    /* A call may be long (up to TOOLCALL_MAX): the buffer is sized from it,
     * every byte possibly a \u00XX escape. */
    size_t cap = ID_JSON_MAX + 6 * (c->name_n + c->args_n) + 128;
    char *buf = malloc(cap);
    if (!buf)
        return RILL_E_NOMEM;
    struct jsonw w;
    jsonw_init(&w, buf, cap);
    jsonw_obj_begin(&w);
    jsonw_key_str(&w, "type", "tool_call");
    jsonw_key(&w, "id");
    creq_id_json(&w, id);
    jsonw_key_uint(&w, "index", c->index);
    jsonw_key_str(&w, "call_id", c->id);
    jsonw_key(&w, "name");
    jsonw_strn(&w, c->name, c->name_n);
    jsonw_key(&w, "arguments");
    jsonw_strn(&w, c->args, c->args_n);
    jsonw_obj_end(&w);
    int rc = jsonw_ok(&w) ? obuf_put(out, buf, jsonw_len(&w)) : RILL_E_INTERNAL;
    free(buf);
    return rc;
}

/* --- the end of a stream --------------------------------------------------------------------- */

int frames_complete(struct obuf *out, bool msgpack, const struct creq_id *id, const char *finish,
                    const struct stream_summary *s)
{
    struct stream_summary u = *s;
    if (msgpack) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, out, mp_write);
        msgpack_pack_map(&pk, 4);
        mp_key(&pk, "type");
        mp_key(&pk, "complete");
        mp_key(&pk, "id");
        mp_id(&pk, id);
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
    creq_id_json(&w, id);
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
