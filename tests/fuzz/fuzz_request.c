/* fuzz_request.c — libFuzzer target for the client request parser
 * (gateway/request.c): what a WebSocket client sends, JSON or msgpack.
 *
 * Every input goes through creq_parse() four times: as a JSON text frame and
 * as a msgpack binary frame, each without limits (every bound at its
 * maximum) and with small ones (so that too_large, prompt_too_long and
 * max_tokens_exceeded are reached).  Beyond "no crash, no leak, no huge
 * allocation" (ASan, UBSan, -rss_limit_mb) it checks what request.h
 * promises: the error codes of the one list with a message, nothing to free
 * after an error, an id that can be echoed (1..64 bytes of UTF-8, or a
 * decimal integer below 2^53, and creq_id_json writes it back as the same
 * JSON value), and every field of a parsed request inside its range.  A
 * limit may only turn an accepted message into too_large, prompt_too_long
 * or max_tokens_exceeded; what passes the limits parses the same without.
 *
 * One more check holds the two protocols to one validator: a JSON input
 * that parses is converted to msgpack (numbers as integers or floats,
 * strings as str or bin, chosen by the input's length), and the msgpack
 * parse must give the same code and the same request.  Inputs whose tree
 * msgpack refuses by design (a key over 64 bytes, nesting past
 * PROTO_MAX_DEPTH, too many objects) are left out of that comparison.
 *
 * Seeds: tests/fuzz/seeds-request (JSON and msgpack messages).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <msgpack.h>

#include "common/err.h"
#include "common/jsonw.h"
#include "common/utf8.h"
#include "gateway/creq.h"

#define CHECK(cond, ...)                                                                 \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "fuzz_request: %s (line %d): ", #cond, __LINE__);            \
            fprintf(stderr, __VA_ARGS__);                                                \
            fputc('\n', stderr);                                                         \
            abort();                                                                     \
        }                                                                                \
    } while (0)

static const struct creq_limits no_limits = {UINT32_MAX, UINT32_MAX, UINT32_MAX};
static const struct creq_limits small_limits = {512, 24, 50};

static void check_id(const struct creq_id *id)
{
    if (!id->present) {
        CHECK(!id->is_num && id->s[0] == 0, "an absent id with content");
        return;
    }
    size_t n = strnlen(id->s, sizeof id->s);
    CHECK(n >= 1 && n <= CREQ_ID_MAX, "id of %zu bytes", n);
    if (id->is_num) {
        /* Written into JSON frames as is (creq_id_json): must be a number. */
        CHECK(n <= 16, "numeric id %s", id->s);
        CHECK(id->s[0] != '0' || n == 1, "numeric id %s with a leading zero", id->s);
        for (size_t i = 0; i < n; i++)
            CHECK(id->s[i] >= '0' && id->s[i] <= '9', "numeric id %s", id->s);
    } else {
        CHECK(utf8_valid_prefix(id->s, n) == n, "id is not UTF-8");
    }
    /* Every reply echoes it: what creq_id_json writes must read back as
     * the same string or number. */
    char buf[6 * CREQ_ID_MAX + 16]; /* a control character is 6 bytes escaped */
    struct jsonw w;
    jsonw_init(&w, buf, sizeof buf);
    jsonw_arr_begin(&w);
    creq_id_json(&w, id);
    jsonw_arr_end(&w);
    CHECK(jsonw_ok(&w), "id does not fit %zu bytes", sizeof buf);
    cJSON *a = cJSON_ParseWithLength(buf, jsonw_len(&w));
    CHECK(a && cJSON_GetArraySize(a) == 1, "echoed id is not JSON: %.*s", (int)jsonw_len(&w), buf);
    const cJSON *e = a->child;
    if (id->is_num)
        CHECK(cJSON_IsNumber(e) && e->valuedouble == strtod(id->s, NULL), "echoed id %s", id->s);
    else
        CHECK(cJSON_IsString(e) && !strcmp(e->valuestring, id->s), "echoed id '%s'", id->s);
    cJSON_Delete(a);
}

static void check_one(const uint8_t *data, size_t size, bool binary, const struct creq_limits *lim, int rc,
                      const struct creq *r, const char *msg)
{
    check_id(&r->id);
    CHECK((size > lim->max_message_bytes) == (rc == RILL_E_TOO_LARGE), "rc %d for %zu bytes (limit %u)", rc,
          size, lim->max_message_bytes);
    if (rc) {
        CHECK(rc == RILL_E_BAD_REQUEST || rc == RILL_E_TOO_LARGE || rc == RILL_E_PROMPT_TOO_LONG ||
                  rc == RILL_E_MAX_TOKENS || rc == RILL_E_NOMEM,
              "rc %d (%s)", rc, msg);
        CHECK(msg[0] != 0, "error %d without a message", rc);
        CHECK(r->prompt == NULL, "an error left a prompt behind");
        return;
    }
    CHECK(msg[0] == 0, "success with a message: %s", msg);
    CHECK(r->type >= CREQ_GENERATE && r->type <= CREQ_SUBSCRIBE, "type %d", r->type);
    CHECK(strnlen(r->key, sizeof r->key) <= CREQ_KEY_MAX, "key not terminated");
    CHECK(strnlen(r->client, sizeof r->client) <= CREQ_CLIENT_MAX, "client not terminated");
    CHECK(r->has_key || r->key[0] == 0, "a key without has_key");
    if (r->type != CREQ_GENERATE) {
        CHECK(r->prompt == NULL && r->prompt_len == 0, "a prompt on a %d", r->type);
        return;
    }
    CHECK(r->prompt != NULL, "generate without a prompt");
    CHECK(strlen(r->prompt) == r->prompt_len, "prompt length %u, strlen %zu", r->prompt_len, strlen(r->prompt));
    CHECK(r->prompt_len <= lim->max_prompt_bytes, "prompt of %u bytes over the limit", r->prompt_len);
    CHECK(r->max_tokens >= 1 && r->max_tokens <= lim->max_tokens_limit, "max_tokens %u", r->max_tokens);
    CHECK(r->temperature >= 0 && r->temperature <= 10, "temperature %g", r->temperature);
    CHECK(r->top_p >= 0 && r->top_p <= 1, "top_p %g", r->top_p);
    CHECK(r->min_p >= 0 && r->min_p <= 1, "min_p %g", r->min_p);
    CHECK(r->repetition_penalty >= 0.01f && r->repetition_penalty <= 10, "repetition_penalty %g",
          r->repetition_penalty);
    CHECK(r->presence_penalty >= -2 && r->presence_penalty <= 2, "presence_penalty %g", r->presence_penalty);
    CHECK(r->frequency_penalty >= -2 && r->frequency_penalty <= 2, "frequency_penalty %g", r->frequency_penalty);
    CHECK(r->top_k <= 1000000000u, "top_k %u", r->top_k);
    CHECK(r->top_logprobs <= PROTO_MAX_TOP, "top_logprobs %u", r->top_logprobs);
    CHECK(!r->has_seed ? r->seed == 0 : r->seed < (1ull << 53), "seed %llu", (unsigned long long)r->seed);
    CHECK(r->n_stop <= PROTO_MAX_STOP, "n_stop %u", r->n_stop);
    for (unsigned i = 0; i < r->n_stop; i++) {
        size_t n = strnlen(r->stop[i], sizeof r->stop[i]);
        CHECK(n >= 1 && n <= PROTO_STOP_LEN, "stop[%u] of %zu bytes", i, n);
    }
    (void)data;
    (void)binary;
}

static int parse_checked(const uint8_t *data, size_t size, bool binary, const struct creq_limits *lim,
                         struct creq *r)
{
    char msg[256];
    memset(msg, 0x55, sizeof msg); /* the parser must write it either way */
    int rc = creq_parse(data, size, binary, lim, r, msg, sizeof msg);
    CHECK(memchr(msg, 0, sizeof msg) != NULL, "message not terminated");
    check_one(data, size, binary, lim, rc, r, msg);
    return rc;
}

/* --- the JSON -> msgpack comparison ------------------------------------------------------ */

struct shape {
    int depth;       /* deepest container (the root is at 0) */
    size_t objects;  /* what proto_unpack counts: every key and value */
    size_t key_max;  /* longest key */
};

static void measure(const cJSON *j, int depth, struct shape *s)
{
    s->objects++;
    if (!cJSON_IsArray(j) && !cJSON_IsObject(j))
        return;
    if (depth > s->depth)
        s->depth = depth;
    for (const cJSON *e = j->child; e; e = e->next) {
        if (cJSON_IsObject(j)) {
            s->objects++;
            size_t n = strlen(e->string);
            if (n > s->key_max)
                s->key_max = n;
        }
        measure(e, depth + 1, s);
    }
}

static void pack(msgpack_packer *pk, const cJSON *j, unsigned style)
{
    if (cJSON_IsObject(j)) {
        msgpack_pack_map(pk, (size_t)cJSON_GetArraySize(j));
        for (const cJSON *e = j->child; e; e = e->next) {
            size_t n = strlen(e->string);
            msgpack_pack_str(pk, n);
            msgpack_pack_str_body(pk, e->string, n);
            pack(pk, e, style);
        }
    } else if (cJSON_IsArray(j)) {
        msgpack_pack_array(pk, (size_t)cJSON_GetArraySize(j));
        for (const cJSON *e = j->child; e; e = e->next)
            pack(pk, e, style);
    } else if (cJSON_IsString(j)) {
        size_t n = strlen(j->valuestring);
        if (style & 2) {
            msgpack_pack_bin(pk, n);
            msgpack_pack_bin_body(pk, j->valuestring, n);
        } else {
            msgpack_pack_str(pk, n);
            msgpack_pack_str_body(pk, j->valuestring, n);
        }
    } else if (cJSON_IsNumber(j)) {
        double v = j->valuedouble;
        if ((style & 1) && isfinite(v) && v == floor(v) && v >= -9.2e18 && v <= 1.8e19)
            v < 0 ? msgpack_pack_int64(pk, (int64_t)v) : msgpack_pack_uint64(pk, (uint64_t)v);
        else
            msgpack_pack_double(pk, v);
    } else if (cJSON_IsBool(j)) {
        cJSON_IsTrue(j) ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    } else {
        msgpack_pack_nil(pk);
    }
}

/* == rather than the bits: JSON's -0 becomes the integer 0 in msgpack. */
static bool same_float(float a, float b) { return a == b; }

static void compare(const struct creq *a, const struct creq *b)
{
    CHECK(a->id.present == b->id.present && a->id.is_num == b->id.is_num && !strcmp(a->id.s, b->id.s),
          "id differs: '%s' / '%s'", a->id.s, b->id.s);
    CHECK(a->type == b->type, "type %d / %d", a->type, b->type);
    CHECK(a->prompt_len == b->prompt_len && (!a->prompt) == (!b->prompt) &&
              (!a->prompt || !memcmp(a->prompt, b->prompt, a->prompt_len)),
          "prompt differs");
    CHECK(a->max_tokens == b->max_tokens, "max_tokens %u / %u", a->max_tokens, b->max_tokens);
    CHECK(same_float(a->temperature, b->temperature) && same_float(a->top_p, b->top_p) &&
              same_float(a->min_p, b->min_p) && same_float(a->repetition_penalty, b->repetition_penalty) &&
              same_float(a->presence_penalty, b->presence_penalty) &&
              same_float(a->frequency_penalty, b->frequency_penalty),
          "a float parameter differs");
    CHECK(a->top_k == b->top_k && a->top_logprobs == b->top_logprobs && a->timestamps == b->timestamps,
          "an integer parameter differs");
    CHECK(a->has_seed == b->has_seed && a->seed == b->seed, "seed differs");
    CHECK(a->n_stop == b->n_stop, "n_stop %u / %u", a->n_stop, b->n_stop);
    for (unsigned i = 0; i < a->n_stop; i++)
        CHECK(!strcmp(a->stop[i], b->stop[i]), "stop[%u] differs", i);
    CHECK(a->has_key == b->has_key && !strcmp(a->key, b->key), "key differs");
    CHECK(!strcmp(a->client, b->client), "client differs");
    CHECK(a->telemetry == b->telemetry, "telemetry differs");
}

static void json_vs_msgpack(const uint8_t *data, size_t size, int json_rc, const struct creq *json_req)
{
    /* Only inputs the JSON path turned into a tree: no raw NUL (refused
     * before parsing), no \u0000 (refused inside strings; this spelling
     * check is wider, so it only skips more), no trailing data. */
    if (memchr(data, 0, size))
        return;
    for (size_t i = 0; i + 6 <= size; i++)
        if (data[i] == '\\' && (data[i + 1] == 'u' || data[i + 1] == 'U') && !memcmp(data + i + 2, "0000", 4))
            return;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts((const char *)data, size, &end, false);
    if (!root)
        return;
    for (const char *p = end; p < (const char *)data + size; p++)
        if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t') {
            cJSON_Delete(root);
            return;
        }
    struct shape s = {0};
    measure(root, 0, &s);
    if (s.depth >= PROTO_MAX_DEPTH || s.objects > PROTO_MAX_OBJECTS / 2 || s.key_max > 64) {
        cJSON_Delete(root);
        return;
    }
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    pack(&pk, root, (unsigned)size & 3);
    cJSON_Delete(root);

    struct creq r;
    int rc = parse_checked((const uint8_t *)sb.data, sb.size, true, &no_limits, &r);
    CHECK(rc == json_rc, "JSON gave %d, the same message as msgpack %d", json_rc, rc);
    compare(json_req, &r);
    if (!rc)
        creq_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

static bool is_limit(int rc)
{
    return rc == RILL_E_TOO_LARGE || rc == RILL_E_PROMPT_TOO_LONG || rc == RILL_E_MAX_TOKENS;
}

/* The same message without and with limits: a limit can only refuse what
 * would otherwise be accepted, with its own code, and what passes the
 * limits is the same request (but for the default max_tokens, which is
 * capped by the limit). */
static void with_and_without_limits(const uint8_t *data, size_t size, bool binary)
{
    static struct creq r, s;
    int rc = parse_checked(data, size, binary, &no_limits, &r);
    if (!binary)
        json_vs_msgpack(data, size, rc, &r);
    int rc_lim = parse_checked(data, size, binary, &small_limits, &s);
    CHECK(rc_lim == 0 || is_limit(rc_lim) || rc_lim == rc, "rc %d without limits, %d with", rc, rc_lim);
    CHECK(rc || rc_lim == 0 || is_limit(rc_lim), "accepted without limits, %d with", rc_lim);
    if (!rc_lim) {
        CHECK(rc == 0, "accepted with limits, %d without", rc);
        if (s.max_tokens == small_limits.max_tokens_limit && r.max_tokens == PROTO_DEFAULT_MAX_TOKENS)
            s.max_tokens = r.max_tokens;
        compare(&r, &s);
    }
    if (!rc)
        creq_free(&r);
    if (!rc_lim)
        creq_free(&s);
    CHECK(r.prompt == NULL && s.prompt == NULL, "creq_free left the prompt");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    with_and_without_limits(data, size, false);
    with_and_without_limits(data, size, true);
    return 0;
}
