/* creq.c — see creq.h. */
#include "creq.h"
#include "chatmsg.h"
#include "common/err.h"
#include "common/jsonw.h"
#include "common/sampling.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void creq_free(struct creq *r)
{
    if (!r)
        return;
    free(r->prompt);
    r->prompt = NULL;
    free(r->messages);
    r->messages = NULL;
    free(r->tools);
    r->tools = NULL;
}

/* --- msgpack -> cJSON (bounded: the input was walked by proto_unpack) ------------------- */

static cJSON *from_msgpack(const msgpack_object *o, int depth)
{
    if (depth > PROTO_MAX_DEPTH)
        return NULL;
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return cJSON_CreateNull();
    case MSGPACK_OBJECT_BOOLEAN: return cJSON_CreateBool(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return cJSON_CreateNumber((double)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return cJSON_CreateNumber((double)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return cJSON_CreateNumber(o->via.f64);
    case MSGPACK_OBJECT_STR:
    case MSGPACK_OBJECT_BIN: {
        /* cJSON strings end at NUL: a NUL inside stays detectable by length. */
        const char *p = o->type == MSGPACK_OBJECT_STR ? o->via.str.ptr : o->via.bin.ptr;
        uint32_t n = o->type == MSGPACK_OBJECT_STR ? o->via.str.size : o->via.bin.size;
        char *s = malloc((size_t)n + 1);
        if (!s)
            return NULL;
        if (n) /* msgpack-c may give an empty string a NULL ptr */
            memcpy(s, p, n);
        s[n] = 0;
        cJSON *j = cJSON_CreateString(s);
        free(s);
        if (j && n && memchr(p, 0, n))
            j->valueint = -1; /* mark: holds a NUL (rejected by the string checks) */
        return j;
    }
    case MSGPACK_OBJECT_ARRAY: {
        cJSON *a = cJSON_CreateArray();
        for (uint32_t i = 0; a && i < o->via.array.size; i++) {
            cJSON *e = from_msgpack(&o->via.array.ptr[i], depth + 1);
            if (!e) {
                cJSON_Delete(a);
                return NULL;
            }
            cJSON_AddItemToArray(a, e);
        }
        return a;
    }
    case MSGPACK_OBJECT_MAP: {
        cJSON *m = cJSON_CreateObject();
        for (uint32_t i = 0; m && i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            if (k->type != MSGPACK_OBJECT_STR || k->via.str.size > 64) {
                cJSON_Delete(m);
                return NULL;
            }
            char key[65];
            if (k->via.str.size)
                memcpy(key, k->via.str.ptr, k->via.str.size);
            key[k->via.str.size] = 0;
            cJSON *v = from_msgpack(&o->via.map.ptr[i].val, depth + 1);
            if (!v) {
                cJSON_Delete(m);
                return NULL;
            }
            cJSON_AddItemToObject(m, key, v);
        }
        return m;
    }
    default: return NULL; /* ext types have no JSON meaning */
    }
}

/* --- field checks ------------------------------------------------------------------------ */

static bool is_int(const cJSON *j, double lo, double hi)
{
    return cJSON_IsNumber(j) && isfinite(j->valuedouble) && j->valuedouble == floor(j->valuedouble) &&
           j->valuedouble >= lo && j->valuedouble <= hi;
}

static bool has_nul(const cJSON *j) { return j->valueint == -1; }

/* A number parameter, checked against the one table of limits. */
static int get_param(const cJSON *obj, enum sampling_param sp, double *out, bool *present, char *msg, size_t n)
{
    const struct sampling_range *r = &sampling_ranges[sp];
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, r->name);
    *present = j != NULL;
    if (!j)
        return 0;
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble))
        return rill_fail(msg, n, RILL_E_BAD_REQUEST, "params.%s: expected a number", r->name);
    if (!sampling_ok(sp, j->valuedouble))
        return rill_fail(msg, n, RILL_E_BAD_REQUEST, "params.%s: %g is out of range [%g, %g]", r->name,
                         j->valuedouble, r->lo, r->hi);
    *out = j->valuedouble;
    return 0;
}

static int parse_id(const cJSON *root, struct creq_id *id, char *msg, size_t n)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, "id");
    if (!j || cJSON_IsNull(j))
        return 0;
    if (cJSON_IsString(j)) {
        size_t len = strlen(j->valuestring);
        if (len == 0 || len > CREQ_ID_MAX || has_nul(j))
            return rill_fail(msg, n, RILL_E_BAD_REQUEST, "id: a string of 1 to %d bytes expected", CREQ_ID_MAX);
        /* Every frame of the generation echoes the id: bytes that are not
         * UTF-8 would make those frames undecodable (a msgpack str and a
         * JSON text must be UTF-8). */
        if (utf8_valid_prefix(j->valuestring, len) != len)
            return rill_fail(msg, n, RILL_E_BAD_REQUEST, "id: not valid UTF-8");
        id->present = true;
        memcpy(id->s, j->valuestring, len + 1);
        return 0;
    }
    if (is_int(j, 0, 9007199254740991.0)) { /* 2^53 - 1: exact in JSON numbers */
        id->present = true;
        id->is_num = true;
        /* Through an integer: "%.0f" would echo JSON's -0 as "-0". */
        snprintf(id->s, sizeof id->s, "%llu", (unsigned long long)j->valuedouble);
        return 0;
    }
    return rill_fail(msg, n, RILL_E_BAD_REQUEST, "id: expected a string or a non-negative integer");
}

static int parse_params(const cJSON *p, struct creq *r, char *msg, size_t n)
{
    if (!cJSON_IsObject(p))
        return rill_fail(msg, n, RILL_E_BAD_REQUEST, "params: expected an object");
    static const char *const known[] = {"temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                                        "presence_penalty", "frequency_penalty",
                                        "seed", "stop", "top_logprobs", "timestamps", "parse_special",
                                        "ignore_eos"};
    for (const cJSON *e = p->child; e; e = e->next) {
        bool ok = false;
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
            ok = ok || !strcmp(e->string, known[i]);
        if (!ok)
            return rill_fail(msg, n, RILL_E_BAD_REQUEST, "params.%.64s: unknown parameter", e->string);
    }
    double v = 0;
    bool have;
    int rc;
    const struct {
        enum sampling_param sp;
        float *dst;
    } nums[] = {
        {SAMPLING_TEMPERATURE, &r->temperature},
        {SAMPLING_TOP_P, &r->top_p},
        {SAMPLING_MIN_P, &r->min_p},
        {SAMPLING_REPETITION_PENALTY, &r->repetition_penalty},
        {SAMPLING_PRESENCE_PENALTY, &r->presence_penalty},
        {SAMPLING_FREQUENCY_PENALTY, &r->frequency_penalty},
    };
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        if ((rc = get_param(p, nums[i].sp, &v, &have, msg, n)))
            return rc;
        if (have)
            *nums[i].dst = (float)v;
    }
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(p, "top_k");
    if (j) {
        if (!cJSON_IsNumber(j) || !sampling_ok(SAMPLING_TOP_K, j->valuedouble))
            return rill_fail(msg, n, RILL_E_BAD_REQUEST, "params.top_k: expected a non-negative integer");
        r->top_k = (uint32_t)j->valuedouble;
    }
    j = cJSON_GetObjectItemCaseSensitive(p, "top_logprobs");
    if (j) {
        if (!cJSON_IsNumber(j) || !sampling_ok(SAMPLING_TOP_LOGPROBS, j->valuedouble))
            return rill_fail(msg, n, RILL_E_BAD_REQUEST, "params.top_logprobs: expected an integer in [0, %d]", PROTO_MAX_TOP);
        r->top_logprobs = (uint32_t)j->valuedouble;
    }
    const struct {
        const char *name;
        bool *dst;
    } flags[] = {{"timestamps", &r->timestamps}, {"ignore_eos", &r->ignore_eos}, {"parse_special", &r->parse_special}};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        j = cJSON_GetObjectItemCaseSensitive(p, flags[i].name);
        if (!j)
            continue;
        if (!cJSON_IsBool(j))
            return rill_fail(msg, n, RILL_E_BAD_REQUEST, "params.%s: expected true or false", flags[i].name);
        *flags[i].dst = cJSON_IsTrue(j);
    }
    j = cJSON_GetObjectItemCaseSensitive(p, "seed");
    if (j && !cJSON_IsNull(j)) {
        if (!is_int(j, 0, 9007199254740991.0))
            return rill_fail(msg, n, RILL_E_BAD_REQUEST, "params.seed: expected an integer in [0, 2^53)");
        r->seed = (uint64_t)j->valuedouble;
        r->has_seed = true;
    }
    j = cJSON_GetObjectItemCaseSensitive(p, "stop");
    if (j && !cJSON_IsNull(j)) {
        if (cJSON_IsString(j)) {
            /* A single string is accepted as a list of one (OpenAI does). */
            const cJSON *one = j;
            size_t len = strlen(one->valuestring);
            if (len == 0 || len > PROTO_STOP_LEN || has_nul(one) || utf8_valid_prefix(one->valuestring, len) != len)
                return rill_fail(msg, n, RILL_E_BAD_REQUEST, "params.stop: strings of 1 to %d bytes of UTF-8 text", PROTO_STOP_LEN);
            memcpy(r->stop[0], one->valuestring, len + 1);
            r->n_stop = 1;
        } else if (cJSON_IsArray(j)) {
            int cnt = cJSON_GetArraySize(j);
            if (cnt > PROTO_MAX_STOP)
                return rill_fail(msg, n, RILL_E_BAD_REQUEST, "params.stop: at most %d strings", PROTO_MAX_STOP);
            int i = 0;
            for (const cJSON *e = j->child; e; e = e->next, i++) {
                if (!cJSON_IsString(e))
                    return rill_fail(msg, n, RILL_E_BAD_REQUEST, "params.stop[%d]: expected a string", i);
                size_t len = strlen(e->valuestring);
                if (len == 0 || len > PROTO_STOP_LEN || has_nul(e) || utf8_valid_prefix(e->valuestring, len) != len)
                    return rill_fail(msg, n, RILL_E_BAD_REQUEST, "params.stop[%d]: 1 to %d bytes of UTF-8 text expected", i, PROTO_STOP_LEN);
                memcpy(r->stop[i], e->valuestring, len + 1);
            }
            r->n_stop = (uint8_t)cnt;
        } else {
            return rill_fail(msg, n, RILL_E_BAD_REQUEST, "params.stop: expected a string or an array of strings");
        }
    }
    return 0;
}

static int parse_generate(const cJSON *root, const struct creq_limits *lim, struct creq *r, char *msg, size_t n)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (p && msgs)
        return rill_fail(msg, n, RILL_E_BAD_REQUEST, "prompt and messages: give one of them");
    if (!p && !msgs)
        return rill_fail(msg, n, RILL_E_BAD_REQUEST, "prompt: missing (or messages)");
    static const cJSON empty = {.type = cJSON_String, .valuestring = (char *)""};
    if (msgs) {
        int rc = chatmsg_take(msgs, lim->max_prompt_bytes < PROTO_MAX_TEXT ? lim->max_prompt_bytes : PROTO_MAX_TEXT,
                              &r->messages, &r->messages_len, msg, n);
        if (rc)
            return rc;
        p = &empty;
    }
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(root, "tools");
    if (tools && !cJSON_IsNull(tools)) {
        if (!msgs)
            return rill_fail(msg, n, RILL_E_BAD_REQUEST, "tools: only with messages (the chat template renders them)");
        const char *param;
        int rc = chatmsg_tools_chosen(tools, cJSON_GetObjectItemCaseSensitive(root, "tool_choice"),
                                      lim->max_prompt_bytes < PROTO_MAX_TEXT ? lim->max_prompt_bytes : PROTO_MAX_TEXT,
                                      &r->tools, &r->tools_len, &param, msg, n);
        if (rc)
            return rc;
    }
    if (!cJSON_IsString(p))
        return rill_fail(msg, n, RILL_E_BAD_REQUEST, "prompt: expected a string");
    if (has_nul(p))
        return rill_fail(msg, n, RILL_E_BAD_REQUEST, "prompt: contains a NUL byte");
    size_t len = strlen(p->valuestring);
    size_t ok = utf8_valid_prefix(p->valuestring, len);
    if (ok != len)
        return rill_fail(msg, n, RILL_E_BAD_REQUEST, "prompt: not valid UTF-8 (at byte %zu)", ok);
    if (len > lim->max_prompt_bytes)
        return rill_fail(msg, n, RILL_E_PROMPT_TOO_LONG, "prompt: %zu bytes, at most %u allowed", len, lim->max_prompt_bytes);
    r->max_tokens = PROTO_DEFAULT_MAX_TOKENS < lim->max_tokens_limit ? PROTO_DEFAULT_MAX_TOKENS : lim->max_tokens_limit;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "max_tokens");
    if (m && !cJSON_IsNull(m)) {
        if (!cJSON_IsNumber(m) || !isfinite(m->valuedouble) || m->valuedouble != floor(m->valuedouble) ||
            m->valuedouble < 1)
            return rill_fail(msg, n, RILL_E_BAD_REQUEST, "max_tokens: expected a positive integer");
        if (m->valuedouble > lim->max_tokens_limit)
            return rill_fail(msg, n, RILL_E_MAX_TOKENS, "max_tokens: %.0f is over the limit of %u", m->valuedouble,
                       lim->max_tokens_limit);
        r->max_tokens = (uint32_t)m->valuedouble;
    }
    r->parse_special = true; /* control-token text is the control token, as in llama.cpp's server */
    r->temperature = PROTO_DEFAULT_TEMPERATURE;
    r->top_p = PROTO_DEFAULT_TOP_P;
    r->top_k = PROTO_DEFAULT_TOP_K;
    r->min_p = PROTO_DEFAULT_MIN_P;
    r->repetition_penalty = PROTO_DEFAULT_REP_PENALTY;
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(root, "params");
    if (params && !cJSON_IsNull(params)) {
        int rc = parse_params(params, r, msg, n);
        if (rc)
            return rc;
    }
    r->prompt = malloc(len + 1);
    if (!r->prompt)
        return rill_fail(msg, n, RILL_E_NOMEM, "out of memory");
    memcpy(r->prompt, p->valuestring, len + 1);
    r->prompt_len = (uint32_t)len;
    return 0;
}

static int parse_hello(const cJSON *root, struct creq *r, char *msg, size_t n)
{
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(root, "key");
    if (k && !cJSON_IsNull(k)) {
        if (!cJSON_IsString(k) || has_nul(k) || strlen(k->valuestring) > CREQ_KEY_MAX)
            return rill_fail(msg, n, RILL_E_BAD_REQUEST, "key: expected a string of at most %d bytes", CREQ_KEY_MAX);
        r->has_key = true;
        snprintf(r->key, sizeof r->key, "%s", k->valuestring);
    }
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, "client");
    if (c && !cJSON_IsNull(c)) {
        if (!cJSON_IsObject(c))
            return rill_fail(msg, n, RILL_E_BAD_REQUEST, "client: expected an object");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(c, "name");
        if (cJSON_IsString(name))
            snprintf(r->client, sizeof r->client, "%s", name->valuestring);
    }
    return 0;
}

static int parse_resume(const cJSON *root, struct creq *r, char *msg, size_t n)
{
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(root, "resume_token");
    if (!cJSON_IsString(k) || has_nul(k) || !k->valuestring[0] || strlen(k->valuestring) > CREQ_TOKEN_MAX)
        return rill_fail(msg, n, RILL_E_BAD_REQUEST, "resume_token: expected the string from accepted");
    snprintf(r->resume_token, sizeof r->resume_token, "%s", k->valuestring);
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, "from");
    if (f && !cJSON_IsNull(f)) {
        if (!cJSON_IsNumber(f) || f->valuedouble < 0 || f->valuedouble > 4294967295.0 ||
            f->valuedouble != (double)(uint32_t)f->valuedouble)
            return rill_fail(msg, n, RILL_E_BAD_REQUEST, "from: expected a position (an integer >= 0)");
        r->from = (uint32_t)f->valuedouble;
    }
    return 0;
}

/* Where a NUL would enter a JSON text, or 0: 1 for a raw 0x00 byte (never
 * valid JSON, and cJSON would cut its string there), 2 for a \u0000 escape
 * inside a string (cJSON decodes it into a NUL that cuts the C string).  A
 * tiny lexer, so that the literal text \\u0000 (an escaped backslash, then
 * "u0000") is not mistaken for the escape. */
static int json_nul_at(const char *b, size_t len, size_t *at)
{
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        if (b[i] == 0) {
            *at = i;
            return 1;
        }
        if (!in_str) {
            in_str = b[i] == '"';
            continue;
        }
        if (b[i] == '"') {
            in_str = false;
        } else if (b[i] == '\\' && i + 1 < len) {
            if ((b[i + 1] == 'u') && i + 5 < len && !memcmp(b + i + 2, "0000", 4)) {
                *at = i;
                return 2;
            }
            i++; /* the escaped character, whatever it is */
        }
    }
    return 0;
}

int creq_parse(const void *buf, size_t len, bool binary, const struct creq_limits *lim, struct creq *out, char *msg,
               size_t msg_len)
{
    memset(out, 0, sizeof *out);
    if (msg && msg_len)
        msg[0] = 0;
    if (len > lim->max_message_bytes)
        return rill_fail(msg, msg_len, RILL_E_TOO_LARGE, "message of %zu bytes, at most %u allowed", len,
                   lim->max_message_bytes);
    cJSON *root = NULL;
    if (binary) {
        msgpack_unpacked up;
        char why[128];
        int rc = proto_unpack(buf, len, lim->max_message_bytes, &up, why, sizeof why);
        if (!rc) {
            root = from_msgpack(&up.data, 0);
            if (!root)
                rc = rill_fail(msg, msg_len, RILL_E_BAD_REQUEST, "invalid msgpack: a map key that is not a short string, "
                                                           "or an ext type");
        } else {
            rc = rill_fail(msg, msg_len, rc == RILL_E_NOMEM ? RILL_E_NOMEM : RILL_E_BAD_REQUEST, "invalid msgpack: %s", why);
        }
        msgpack_unpacked_destroy(&up);
        if (rc)
            return rc;
    } else {
        size_t nul_at;
        int nul = json_nul_at(buf, len, &nul_at);
        if (nul)
            return rill_fail(msg, msg_len, RILL_E_BAD_REQUEST,
                             nul == 1 ? "a raw NUL byte at byte %zu: JSON text may not contain one"
                                      : "strings may not contain NUL (\\u0000, at byte %zu)",
                             nul_at);
        const char *end = NULL;
        root = cJSON_ParseWithLengthOpts(buf, len, &end, false);
        if (!root) {
            size_t at = end ? (size_t)(end - (const char *)buf) : 0;
            return rill_fail(msg, msg_len, RILL_E_BAD_REQUEST, "malformed JSON near byte %zu", at);
        }
        /* Nothing but whitespace may follow the object. */
        for (size_t i = (size_t)(end - (const char *)buf); i < len; i++) {
            char ch = ((const char *)buf)[i];
            if (ch != ' ' && ch != '\n' && ch != '\r' && ch != '\t') {
                cJSON_Delete(root);
                return rill_fail(msg, msg_len, RILL_E_BAD_REQUEST, "malformed JSON: trailing data at byte %zu", i);
            }
        }
    }
    int rc = 0;
    if (!cJSON_IsObject(root)) {
        rc = rill_fail(msg, msg_len, RILL_E_BAD_REQUEST, "a message must be an object");
        goto out;
    }
    if ((rc = parse_id(root, &out->id, msg, msg_len)))
        goto out;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "type");
    if (!t) {
        rc = rill_fail(msg, msg_len, RILL_E_BAD_REQUEST, "type: missing");
        goto out;
    }
    if (!cJSON_IsString(t)) {
        rc = rill_fail(msg, msg_len, RILL_E_BAD_REQUEST, "type: expected a string");
        goto out;
    }
    if (!strcmp(t->valuestring, "generate")) {
        out->type = CREQ_GENERATE;
        rc = parse_generate(root, lim, out, msg, msg_len);
    } else if (!strcmp(t->valuestring, "cancel")) {
        out->type = CREQ_CANCEL;
    } else if (!strcmp(t->valuestring, "hello")) {
        out->type = CREQ_HELLO;
        rc = parse_hello(root, out, msg, msg_len);
    } else if (!strcmp(t->valuestring, "subscribe")) {
        out->type = CREQ_SUBSCRIBE;
        const cJSON *tel = cJSON_GetObjectItemCaseSensitive(root, "telemetry");
        if (!cJSON_IsBool(tel))
            rc = rill_fail(msg, msg_len, RILL_E_BAD_REQUEST, "telemetry: expected true or false");
        else
            out->telemetry = cJSON_IsTrue(tel);
    } else if (!strcmp(t->valuestring, "resume")) {
        out->type = CREQ_RESUME;
        rc = parse_resume(root, out, msg, msg_len);
    } else {
        rc = rill_fail(msg, msg_len, RILL_E_BAD_REQUEST,
                 "type: unknown message type '%.32s' (generate, cancel, hello, subscribe, resume)", t->valuestring);
    }
out:
    cJSON_Delete(root);
    if (rc) {
        free(out->prompt);
        out->prompt = NULL;
        free(out->messages);
        out->messages = NULL;
        free(out->tools);
        out->tools = NULL;
    }
    return rc;
}

void creq_id_json(struct jsonw *w, const struct creq_id *id)
{
    if (id->is_num)
        jsonw_raw(w, id->s, strlen(id->s));
    else
        jsonw_str(w, id->s);
}
