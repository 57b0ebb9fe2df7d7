/* oaijson.c — see oaijson.h. */
#include "oaijson.h"
#include "chatmsg.h"
#include "common/err.h"
#include "common/jsonw.h"
#include "common/sampling.h"
#include "common/utf8.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void oaijson_req_free(struct oaijson_req *r)
{
    if (!r)
        return;
    free((void *)r->submit.prompt);
    r->submit.prompt = NULL;
    free(r->messages);
    r->messages = NULL;
    free(r->tools);
    r->tools = NULL;
}

/* --- parsing ------------------------------------------------------------------------------------ */

struct pctx {
    char *param;
    size_t param_len;
    char *msg;
    size_t msg_len;
};

static int fail(struct pctx *p, int code, const char *param, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail(struct pctx *p, int code, const char *param, const char *fmt, ...)
{
    if (p->param && p->param_len)
        snprintf(p->param, p->param_len, "%s", param ? param : "");
    if (p->msg && p->msg_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->msg, p->msg_len, fmt, ap);
        va_end(ap);
    }
    return code;
}

static const cJSON *field(const cJSON *root, const char *name)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, name);
    return j && !cJSON_IsNull(j) ? j : NULL;
}

static bool is_whole(const cJSON *j, double lo, double hi)
{
    return cJSON_IsNumber(j) && isfinite(j->valuedouble) && j->valuedouble == floor(j->valuedouble) &&
           j->valuedouble >= lo && j->valuedouble <= hi;
}

/* A string cJSON decoded: its length, or -1 when it holds a NUL (cJSON
 * stops at it; the JSON text had \u0000) or is not UTF-8. */
static long text_len(const cJSON *j)
{
    size_t n = strlen(j->valuestring);
    return utf8_valid_prefix(j->valuestring, n) == n ? (long)n : -1;
}

/* A sampling parameter from the one table (sampling.h). */
static int number_param(struct pctx *p, const cJSON *root, enum sampling_param sp, float *dst)
{
    const struct sampling_range *r = &sampling_ranges[sp];
    const cJSON *j = field(root, r->name);
    if (!j)
        return 0;
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble))
        return fail(p, RILL_E_BAD_REQUEST, r->name, "%s: expected a number", r->name);
    if (!sampling_ok(sp, j->valuedouble))
        return fail(p, RILL_E_BAD_REQUEST, r->name, "%s: %g is out of range [%g, %g]", r->name, j->valuedouble, r->lo,
                    r->hi);
    *dst = (float)j->valuedouble;
    return 0;
}

/* Parameters rill's sampler does not have: their neutral value only. */
static int neutral_only(struct pctx *p, const cJSON *root)
{
    static const char *const no[] = {"echo"};
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        const cJSON *j = field(root, no[i]);
        if (j && !cJSON_IsFalse(j))
            return fail(p, RILL_E_BAD_REQUEST, no[i], "%s: not supported by this server (only false is accepted)", no[i]);
    }
    const cJSON *j = field(root, "n");
    if (j && !(cJSON_IsNumber(j) && j->valuedouble == 1))
        return fail(p, RILL_E_BAD_REQUEST, "n", "n: only n = 1 is supported (one choice per request)");
    j = field(root, "best_of");
    if (j && !(cJSON_IsNumber(j) && j->valuedouble == 1))
        return fail(p, RILL_E_BAD_REQUEST, "best_of", "best_of: only 1 is supported");
    j = field(root, "suffix");
    if (j && !(cJSON_IsString(j) && !j->valuestring[0]))
        return fail(p, RILL_E_BAD_REQUEST, "suffix", "suffix: not supported by this server");
    j = field(root, "logit_bias");
    if (j && !(cJSON_IsObject(j) && !j->child))
        return fail(p, RILL_E_BAD_REQUEST, "logit_bias", "logit_bias: not supported by this server");
    return 0;
}

static int parse_stop(struct pctx *p, const cJSON *j, struct proto_submit *s)
{
    if (cJSON_IsString(j)) {
        long n = text_len(j);
        if (n < 1 || n > PROTO_STOP_LEN)
            return fail(p, RILL_E_BAD_REQUEST, "stop", "stop: 1 to %d bytes of UTF-8 text expected", PROTO_STOP_LEN);
        memcpy(s->stop[0], j->valuestring, (size_t)n + 1);
        s->n_stop = 1;
        return 0;
    }
    if (!cJSON_IsArray(j))
        return fail(p, RILL_E_BAD_REQUEST, "stop", "stop: expected a string or a list of strings");
    int cnt = cJSON_GetArraySize(j);
    if (cnt > PROTO_MAX_STOP)
        return fail(p, RILL_E_BAD_REQUEST, "stop", "stop: at most %d strings", PROTO_MAX_STOP);
    int i = 0;
    for (const cJSON *e = j->child; e; e = e->next, i++) {
        long n = cJSON_IsString(e) ? text_len(e) : -1;
        if (n < 1 || n > PROTO_STOP_LEN)
            return fail(p, RILL_E_BAD_REQUEST, "stop", "stop[%d]: 1 to %d bytes of UTF-8 text expected", i,
                        PROTO_STOP_LEN);
        memcpy(s->stop[i], e->valuestring, (size_t)n + 1);
    }
    s->n_stop = (uint8_t)cnt;
    return 0;
}

static int parse_sampling(struct pctx *p, const cJSON *root, const struct creq_limits *lim, struct oaijson_req *r)
{
    struct proto_submit *s = &r->submit;
    s->max_tokens = r->kind == OAIJSON_CHAT ? PROTO_DEFAULT_MAX_TOKENS : 16;
    if (s->max_tokens > lim->max_tokens_limit)
        s->max_tokens = lim->max_tokens_limit;
    s->temperature = PROTO_DEFAULT_TEMPERATURE;
    s->top_p = PROTO_DEFAULT_TOP_P;
    s->top_k = PROTO_DEFAULT_TOP_K;
    s->min_p = PROTO_DEFAULT_MIN_P;
    s->repetition_penalty = PROTO_DEFAULT_REP_PENALTY;
    /* max_completion_tokens is the newer name: it wins when both are there. */
    const char *mt_name = "max_completion_tokens";
    const cJSON *j = field(root, mt_name);
    if (!j)
        j = field(root, mt_name = "max_tokens");
    if (j) {
        if (!is_whole(j, 1, 1e15))
            return fail(p, RILL_E_BAD_REQUEST, mt_name, "%s: expected a positive integer", mt_name);
        if (j->valuedouble > lim->max_tokens_limit)
            return fail(p, RILL_E_MAX_TOKENS, mt_name, "%s: %.0f is over the limit of %u", mt_name, j->valuedouble,
                        lim->max_tokens_limit);
        s->max_tokens = (uint32_t)j->valuedouble;
    }
    int rc;
    if ((rc = number_param(p, root, SAMPLING_TEMPERATURE, &s->temperature)) ||
        (rc = number_param(p, root, SAMPLING_TOP_P, &s->top_p)) ||
        (rc = number_param(p, root, SAMPLING_MIN_P, &s->min_p)) ||
        (rc = number_param(p, root, SAMPLING_REPETITION_PENALTY, &s->repetition_penalty)) ||
        (rc = number_param(p, root, SAMPLING_PRESENCE_PENALTY, &s->presence_penalty)) ||
        (rc = number_param(p, root, SAMPLING_FREQUENCY_PENALTY, &s->frequency_penalty)))
        return rc;
    if ((j = field(root, "top_k"))) {
        /* vLLM's "off" is -1, llama.cpp's 0: both mean no top-k here. */
        bool off = cJSON_IsNumber(j) && j->valuedouble == -1;
        if (!off && !(cJSON_IsNumber(j) && sampling_ok(SAMPLING_TOP_K, j->valuedouble)))
            return fail(p, RILL_E_BAD_REQUEST, "top_k", "top_k: expected a non-negative integer (or -1: off)");
        s->top_k = off ? 0 : (uint32_t)j->valuedouble;
    }
    if ((j = field(root, "ignore_eos"))) {
        if (!cJSON_IsBool(j))
            return fail(p, RILL_E_BAD_REQUEST, "ignore_eos", "ignore_eos: expected true or false");
        s->ignore_eos = cJSON_IsTrue(j);
    }
    if ((j = field(root, "seed"))) {
        if (!is_whole(j, 0, 9007199254740991.0))
            return fail(p, RILL_E_BAD_REQUEST, "seed", "seed: expected an integer in [0, 2^53)");
        s->seed = (uint64_t)j->valuedouble;
        s->has_seed = true;
    }
    if ((j = field(root, "stop")) && (rc = parse_stop(p, j, s)))
        return rc;
    /* logprobs: an integer (the alternatives per token) for completions;
     * true/false plus top_logprobs for chat. */
    j = field(root, "logprobs");
    if (r->kind == OAIJSON_COMPLETIONS && j) {
        if (!(cJSON_IsNumber(j) && sampling_ok(SAMPLING_TOP_LOGPROBS, j->valuedouble)))
            return fail(p, RILL_E_BAD_REQUEST, "logprobs", "logprobs: expected an integer in [0, %d]", PROTO_MAX_TOP);
        r->logprobs = true;
        s->top_logprobs = (uint32_t)j->valuedouble;
    } else if (r->kind == OAIJSON_CHAT) {
        if (j && !cJSON_IsBool(j))
            return fail(p, RILL_E_BAD_REQUEST, "logprobs", "logprobs: expected true or false");
        r->logprobs = j && cJSON_IsTrue(j);
        const cJSON *t = field(root, "top_logprobs");
        if (t) {
            if (!(cJSON_IsNumber(t) && sampling_ok(SAMPLING_TOP_LOGPROBS, t->valuedouble)))
                return fail(p, RILL_E_BAD_REQUEST, "top_logprobs", "top_logprobs: expected an integer in [0, %d]",
                            PROTO_MAX_TOP);
            if (!r->logprobs && t->valuedouble > 0)
                return fail(p, RILL_E_BAD_REQUEST, "top_logprobs", "top_logprobs: needs logprobs: true");
            s->top_logprobs = (uint32_t)t->valuedouble;
        }
    }
    if ((j = field(root, "stream"))) {
        if (!cJSON_IsBool(j))
            return fail(p, RILL_E_BAD_REQUEST, "stream", "stream: expected true or false");
        r->stream = cJSON_IsTrue(j);
    }
    if ((j = field(root, "stream_options"))) {
        if (!cJSON_IsObject(j))
            return fail(p, RILL_E_BAD_REQUEST, "stream_options", "stream_options: expected an object");
        const cJSON *u = field(j, "include_usage");
        if (u && !cJSON_IsBool(u))
            return fail(p, RILL_E_BAD_REQUEST, "stream_options", "stream_options.include_usage: expected true or false");
        r->include_usage = u && cJSON_IsTrue(u);
    }
    if ((j = field(root, "user")) && !cJSON_IsString(j))
        return fail(p, RILL_E_BAD_REQUEST, "user", "user: expected a string");
    /* Control-token text ("<|im_start|>") is the control token, as in
     * llama.cpp's server and the WebSocket's default; a template's output
     * always is. */
    s->parse_special = true;
    if ((j = field(root, "parse_special")) && r->kind == OAIJSON_COMPLETIONS) {
        if (!cJSON_IsBool(j))
            return fail(p, RILL_E_BAD_REQUEST, "parse_special", "parse_special: expected true or false");
        s->parse_special = cJSON_IsTrue(j);
    }
    return neutral_only(p, root);
}

static int parse_prompt(struct pctx *p, const cJSON *root, const struct creq_limits *lim, struct oaijson_req *r)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (!j)
        return fail(p, RILL_E_BAD_REQUEST, "prompt", "prompt: missing");
    if (cJSON_IsArray(j)) {
        if (cJSON_GetArraySize(j) != 1 || !cJSON_IsString(j->child))
            return fail(p, RILL_E_BAD_REQUEST, "prompt",
                        "prompt: a string, or a list of exactly one string (one prompt per request; token "
                        "lists are not supported)");
        j = j->child;
    }
    if (!cJSON_IsString(j))
        return fail(p, RILL_E_BAD_REQUEST, "prompt", "prompt: expected a string");
    long n = text_len(j);
    if (n < 0)
        return fail(p, RILL_E_BAD_REQUEST, "prompt", "prompt: not valid UTF-8 text");
    if ((size_t)n > lim->max_prompt_bytes)
        return fail(p, RILL_E_PROMPT_TOO_LONG, "prompt", "prompt: %ld bytes, at most %u allowed", n,
                    lim->max_prompt_bytes);
    char *copy = malloc((size_t)n + 1);
    if (!copy)
        return fail(p, RILL_E_NOMEM, NULL, "out of memory");
    memcpy(copy, j->valuestring, (size_t)n + 1);
    r->submit.prompt = copy;
    r->submit.prompt_len = (uint32_t)n;
    return 0;
}

static int parse_messages(struct pctx *p, cJSON *root, const struct creq_limits *lim, struct oaijson_req *r)
{
    cJSON *j = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (!j)
        return fail(p, RILL_E_BAD_REQUEST, "messages", "messages: missing");
    size_t cap = lim->max_prompt_bytes < PROTO_MAX_TEXT ? lim->max_prompt_bytes : PROTO_MAX_TEXT;
    /* The one check of chat messages (chatmsg.h), the WebSocket's too. */
    int rc = chatmsg_take(j, cap, &r->messages, &r->messages_len, p->msg, p->msg_len);
    if (rc && p->param && p->param_len)
        snprintf(p->param, p->param_len, "%s", rc == RILL_E_NOMEM ? "" : "messages");
    return rc;
}

/* tools and tool_choice as the WebSocket takes them (chatmsg_tools_chosen);
 * only chat completions have a template to render them. */
static int parse_tools(struct pctx *p, cJSON *root, enum oaijson_kind kind, const struct creq_limits *lim,
                       struct oaijson_req *r)
{
    const cJSON *j = field(root, "tools");
    if (kind != OAIJSON_CHAT && cJSON_IsArray(j) && j->child)
        return fail(p, RILL_E_BAD_REQUEST, "tools", "tools: only on /v1/chat/completions");
    size_t cap = lim->max_prompt_bytes < PROTO_MAX_TEXT ? lim->max_prompt_bytes : PROTO_MAX_TEXT;
    const char *param;
    int rc = chatmsg_tools_chosen(j, field(root, "tool_choice"), cap, &r->tools, &r->tools_len, &param, p->msg,
                                  p->msg_len);
    if (rc && p->param && p->param_len)
        snprintf(p->param, p->param_len, "%s", param);
    return rc;
}

/* Where a NUL would enter the JSON text: a raw 0x00 byte or a \u0000
 * escape (cJSON would cut its string there).  The same reading as the
 * WebSocket parser's: the escaped backslash of \\u0000 is not the escape. */
static bool has_nul(const char *b, size_t len)
{
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        if (b[i] == 0)
            return true;
        if (!in_str) {
            in_str = b[i] == '"';
        } else if (b[i] == '"') {
            in_str = false;
        } else if (b[i] == '\\' && i + 1 < len) {
            if (b[i + 1] == 'u' && i + 5 < len && !memcmp(b + i + 2, "0000", 4))
                return true;
            i++;
        }
    }
    return false;
}

int oaijson_parse(const void *body, size_t len, enum oaijson_kind kind, const struct creq_limits *lim,
                  struct oaijson_req *out, char *param, size_t param_len, char *msg, size_t msg_len)
{
    struct pctx p = {param, param_len, msg, msg_len};
    memset(out, 0, sizeof *out);
    out->kind = kind;
    fail(&p, 0, NULL, "%s", "");
    if (len > lim->max_message_bytes)
        return fail(&p, RILL_E_TOO_LARGE, NULL, "request body of %zu bytes, at most %u allowed", len,
                    lim->max_message_bytes);
    if (has_nul(body, len))
        return fail(&p, RILL_E_BAD_REQUEST, NULL, "the body holds a NUL byte (raw or \\u0000): not accepted");
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, false);
    if (!root) {
        size_t at = end ? (size_t)(end - (const char *)body) : 0;
        return fail(&p, RILL_E_BAD_REQUEST, NULL,
                    "We could not parse the JSON body of your request: malformed JSON near byte %zu", at);
    }
    int rc = 0;
    for (size_t i = (size_t)(end - (const char *)body); i < len && !rc; i++) {
        char ch = ((const char *)body)[i];
        if (ch != ' ' && ch != '\n' && ch != '\r' && ch != '\t')
            rc = fail(&p, RILL_E_BAD_REQUEST, NULL,
                      "We could not parse the JSON body of your request: trailing data at byte %zu", i);
    }
    if (!rc && !cJSON_IsObject(root))
        rc = fail(&p, RILL_E_BAD_REQUEST, NULL, "the body must be a JSON object");
    const cJSON *m = rc ? NULL : field(root, "model");
    if (m && (!cJSON_IsString(m) || strlen(m->valuestring) > OAIJSON_MODEL_MAX))
        rc = fail(&p, RILL_E_BAD_REQUEST, "model", "model: expected a string of at most %d bytes", OAIJSON_MODEL_MAX);
    else if (m)
        snprintf(out->model, sizeof out->model, "%s", m->valuestring);
    if (!rc)
        rc = parse_sampling(&p, root, lim, out);
    if (!rc)
        rc = kind == OAIJSON_CHAT ? parse_messages(&p, root, lim, out) : parse_prompt(&p, root, lim, out);
    if (!rc)
        rc = parse_tools(&p, root, kind, lim, out);
    cJSON_Delete(root);
    if (rc)
        oaijson_req_free(out);
    return rc;
}

/* --- errors ------------------------------------------------------------------------------------ */

void oaijson_status(int code, struct oaijson_status *st)
{
    int w = rill_err_wire(code);
    *st = (struct oaijson_status){400, "invalid_request_error", rill_err_name(w)};
    switch (w) {
    case RILL_E_UNAUTHORIZED:
        *st = (struct oaijson_status){401, "invalid_request_error", "invalid_api_key"};
        break;
    case RILL_E_FORBIDDEN_ORIGIN:
        st->http = 403;
        break;
    case RILL_E_NOT_FOUND:
        st->http = 404;
        break;
    case RILL_E_TOO_LARGE:
        st->http = 413;
        break;
    case RILL_E_CONTEXT_LENGTH:
        st->code = "context_length_exceeded";
        break;
    case RILL_E_RATE_LIMITED:
        *st = (struct oaijson_status){429, "rate_limit_error", "rate_limit_exceeded"};
        break;
    case RILL_E_TOO_MANY_STREAMS:
    case RILL_E_TOO_MANY_CONNS:
        st->http = 429;
        st->type = "rate_limit_error";
        break;
    case RILL_E_OVERLOADED:
    case RILL_E_SHUTTING_DOWN:
    case RILL_E_MEMORY_LIMIT:
    case RILL_E_NO_WORKER:
    case RILL_E_WORKER_LOST:
    case RILL_E_SLOW_CONSUMER:
        st->http = 503;
        st->type = "server_error";
        break;
    case RILL_E_TIMEOUT:
        st->http = 504;
        st->type = "server_error";
        break;
    case RILL_E_INTERNAL:
        st->http = 500;
        st->type = "server_error";
        break;
    default:
        break;
    }
}

/* --- encoding ------------------------------------------------------------------------------------ */

/* Run enc into out's free space, growing it until the JSON fits. */
typedef void (*enc_fn)(struct jsonw *w, const void *arg);

static int put_json(struct obuf *out, const char *pre, const char *post, enc_fn enc, const void *arg, size_t guess)
{
    size_t npre = strlen(pre), npost = strlen(post);
    for (size_t cap = guess + 256;; cap *= 2) {
        if (obuf_reserve(out, npre + cap + npost))
            return RILL_E_NOMEM;
        char *at = (char *)obuf_data(out) + out->len;
        memcpy(at, pre, npre);
        struct jsonw w;
        jsonw_init(&w, at + npre, cap);
        enc(&w, arg);
        if (jsonw_ok(&w)) {
            memcpy(at + npre + jsonw_len(&w), post, npost);
            out->len += npre + jsonw_len(&w) + npost;
            return 0;
        }
        if (cap > (64u << 20))
            return RILL_E_NOMEM;
    }
}

struct err_arg {
    int code;
    const char *param, *msg;
};

static void enc_error(struct jsonw *w, const void *arg)
{
    const struct err_arg *a = arg;
    struct oaijson_status st;
    oaijson_status(a->code, &st);
    jsonw_obj_begin(w);
    jsonw_key(w, "error");
    jsonw_obj_begin(w);
    jsonw_key_str(w, "message", a->msg ? a->msg : "");
    jsonw_key_str(w, "type", st.type);
    jsonw_key(w, "param");
    if (a->param && a->param[0])
        jsonw_str(w, a->param);
    else
        jsonw_null(w);
    jsonw_key_str(w, "code", st.code);
    jsonw_obj_end(w);
    jsonw_obj_end(w);
}

int oaijson_error(struct obuf *out, int code, const char *param, const char *msg)
{
    struct err_arg a = {code, param, msg};
    return put_json(out, "", "", enc_error, &a, msg ? strlen(msg) * 6 : 0);
}

int oaijson_error_event(struct obuf *out, int code, const char *msg)
{
    struct err_arg a = {code, NULL, msg};
    return put_json(out, "data: ", "\n\n", enc_error, &a, msg ? strlen(msg) * 6 : 0);
}

const char *oaijson_finish(int finish)
{
    switch (finish) {
    case PROTO_FINISH_STOP:
    case PROTO_FINISH_EOS: return "stop";
    case PROTO_FINISH_LENGTH: return "length";
    default: return NULL;
    }
}

size_t oaijson_utf8_tail(const char *s, size_t n)
{
    /* A character is at most 4 bytes: an unfinished one starts in the last
     * 3, at the last byte that is not a continuation byte. */
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        const uint8_t *c = (const uint8_t *)s + n - k;
        if ((*c & 0xC0) == 0x80)
            continue; /* a continuation byte: the start is further back */
        return utf8_scan(c, k) == 0 ? k : 0;
    }
    return 0;
}

static void alt_name(char *buf, size_t n, const struct proto_token *t, int32_t id, const char **s, size_t *len)
{
    if (id == t->token_id) {
        *s = t->text;
        *len = t->text_len;
    } else {
        *len = (size_t)snprintf(buf, n, "token_id:%d", id);
        *s = buf;
    }
}

static void bytes_array(struct jsonw *w, const char *s, size_t n)
{
    jsonw_arr_begin(w);
    for (size_t i = 0; i < n; i++)
        jsonw_uint(w, (uint8_t)s[i]);
    jsonw_arr_end(w);
}

struct lp_arg {
    bool chat;
    const struct proto_token *t;
    uint32_t offset;
};

/* chat: {"token","logprob","bytes","top_logprobs":[{"token","logprob","bytes"}]}
 * completions: one token's columns, written as a fragment the caller joins
 * ("token"\x1f logprob \x1f {top} \x1f offset): see join_completion_lp. */
static void enc_lp(struct jsonw *w, const void *arg)
{
    const struct lp_arg *a = arg;
    const struct proto_token *t = a->t;
    char buf[32];
    const char *s;
    size_t n;
    if (a->chat) {
        jsonw_obj_begin(w);
        jsonw_key(w, "token");
        jsonw_strn(w, t->text ? t->text : "", t->text_len);
        jsonw_key_double(w, "logprob", t->logprob, 6);
        jsonw_key(w, "bytes");
        bytes_array(w, t->text, t->text_len);
        jsonw_key(w, "top_logprobs");
        jsonw_arr_begin(w);
        for (unsigned i = 0; i < t->n_top; i++) {
            alt_name(buf, sizeof buf, t, t->top[i].token_id, &s, &n);
            jsonw_obj_begin(w);
            jsonw_key(w, "token");
            jsonw_strn(w, s, n);
            jsonw_key_double(w, "logprob", t->top[i].logprob, 6);
            jsonw_key(w, "bytes");
            if (t->top[i].token_id == t->token_id)
                bytes_array(w, s, n);
            else
                jsonw_null(w);
            jsonw_obj_end(w);
        }
        jsonw_arr_end(w);
        jsonw_obj_end(w);
        return;
    }
    /* completions: [token, logprob, {alternatives}, text_offset] */
    jsonw_arr_begin(w);
    jsonw_strn(w, t->text ? t->text : "", t->text_len);
    jsonw_double(w, t->logprob, 6);
    jsonw_obj_begin(w);
    for (unsigned i = 0; i < t->n_top; i++) {
        alt_name(buf, sizeof buf, t, t->top[i].token_id, &s, &n);
        char key[PROTO_MAX_TOKEN_TEXT + 1];
        memcpy(key, s, n);
        key[n] = 0;
        jsonw_key(w, key);
        jsonw_double(w, t->top[i].logprob, 6);
    }
    jsonw_obj_end(w);
    jsonw_uint(w, a->offset);
    jsonw_arr_end(w);
}

int oaijson_logprob_item(struct obuf *out, bool chat, bool first, const struct proto_token *t, uint32_t text_offset)
{
    struct lp_arg a = {chat, t, text_offset};
    return put_json(out, first ? "" : ",", "", enc_lp, &a, t->text_len * 10u + t->n_top * 96u + 128);
}

/* The completions API's logprobs are columns ({"tokens":[..],
 * "token_logprobs":[..],"top_logprobs":[..],"text_offset":[..]}); the items
 * are rows [token, logprob, {top}, offset]: turn them. */
static void enc_completion_lp(struct jsonw *w, const char *lp, size_t n)
{
    char *txt = malloc(n + 3);
    cJSON *rows = NULL;
    if (txt) {
        txt[0] = '[';
        memcpy(txt + 1, lp, n);
        txt[n + 1] = ']';
        txt[n + 2] = 0;
        rows = cJSON_ParseWithLength(txt, n + 2);
    }
    free(txt);
    static const char *const cols[] = {"tokens", "token_logprobs", "top_logprobs", "text_offset"};
    jsonw_obj_begin(w);
    for (int c = 0; c < 4; c++) {
        jsonw_key(w, cols[c]);
        jsonw_arr_begin(w);
        for (const cJSON *r = rows ? rows->child : NULL; r; r = r->next) {
            const cJSON *v = cJSON_GetArrayItem(r, c);
            char *s = v ? cJSON_PrintUnformatted(v) : NULL;
            if (s)
                jsonw_raw(w, s, strlen(s));
            cJSON_free(s);
        }
        jsonw_arr_end(w);
    }
    jsonw_obj_end(w);
    cJSON_Delete(rows);
}

static void enc_lp_field(struct jsonw *w, bool chat, const char *lp, size_t n)
{
    jsonw_key(w, "logprobs");
    if (!lp) {
        jsonw_null(w);
    } else if (chat) {
        jsonw_obj_begin(w);
        jsonw_key(w, "content");
        jsonw_arr_begin(w);
        if (n)
            jsonw_raw(w, lp, n);
        jsonw_arr_end(w);
        jsonw_obj_end(w);
    } else {
        enc_completion_lp(w, lp, n);
    }
}

static void enc_head(struct jsonw *w, const struct oaijson_head *h, const char *object)
{
    jsonw_key_str(w, "id", h->id);
    jsonw_key_str(w, "object", object);
    jsonw_key_int(w, "created", h->created);
    jsonw_key_str(w, "model", h->model);
}

static void enc_usage(struct jsonw *w, const struct oaijson_usage *u)
{
    jsonw_key(w, "usage");
    jsonw_obj_begin(w);
    jsonw_key_uint(w, "prompt_tokens", u->prompt_tokens);
    jsonw_key_uint(w, "completion_tokens", u->completion_tokens);
    jsonw_key_uint(w, "total_tokens", (uint64_t)u->prompt_tokens + u->completion_tokens);
    jsonw_obj_end(w);
}

struct chunk_arg {
    const struct oaijson_head *h;
    bool role;
    const char *text;
    size_t n;
    const char *finish;
    const char *lp;
    size_t lp_n;
    const struct oaijson_usage *usage; /* the usage chunk */
    const char *tool_calls;            /* response: a JSON array of calls, or NULL */
    size_t tool_calls_n;
};

static void enc_chunk(struct jsonw *w, const void *arg)
{
    const struct chunk_arg *a = arg;
    const struct oaijson_head *h = a->h;
    jsonw_obj_begin(w);
    enc_head(w, h, h->chat ? "chat.completion.chunk" : "text_completion");
    jsonw_key(w, "choices");
    jsonw_arr_begin(w);
    if (!a->usage) {
        jsonw_obj_begin(w);
        jsonw_key_int(w, "index", 0);
        if (h->chat) {
            jsonw_key(w, "delta");
            jsonw_obj_begin(w);
            if (a->role)
                jsonw_key_str(w, "role", "assistant");
            if (a->role || a->n || !a->finish) {
                jsonw_key(w, "content");
                jsonw_strn(w, a->text ? a->text : "", a->n);
            }
            jsonw_obj_end(w);
        } else {
            jsonw_key(w, "text");
            jsonw_strn(w, a->text ? a->text : "", a->n);
        }
        enc_lp_field(w, h->chat, a->lp, a->lp_n);
        jsonw_key(w, "finish_reason");
        if (a->finish)
            jsonw_str(w, a->finish);
        else
            jsonw_null(w);
        jsonw_obj_end(w);
    }
    jsonw_arr_end(w);
    if (a->usage) {
        enc_usage(w, a->usage);
    } else if (h->include_usage) {
        jsonw_key(w, "usage");
        jsonw_null(w);
    }
    jsonw_obj_end(w);
}

int oaijson_chunk(struct obuf *out, const struct oaijson_head *h, bool role, const char *text, size_t n,
                  const char *finish, const char *lp, size_t lp_n)
{
    struct chunk_arg a = {h, role, text, n, finish, lp, lp_n, NULL, NULL, 0};
    return put_json(out, "data: ", "\n\n", enc_chunk, &a, n * 6 + lp_n * 2 + 256);
}

int oaijson_usage_chunk(struct obuf *out, const struct oaijson_head *h, const struct oaijson_usage *u)
{
    struct chunk_arg a = {h, false, NULL, 0, NULL, NULL, 0, u, NULL, 0};
    return put_json(out, "data: ", "\n\n", enc_chunk, &a, 256);
}

int oaijson_done(struct obuf *out)
{
    static const char d[] = "data: [DONE]\n\n";
    return obuf_put(out, d, sizeof d - 1);
}

static void enc_response(struct jsonw *w, const void *arg)
{
    const struct chunk_arg *a = arg;
    const struct oaijson_head *h = a->h;
    jsonw_obj_begin(w);
    enc_head(w, h, h->chat ? "chat.completion" : "text_completion");
    jsonw_key(w, "choices");
    jsonw_arr_begin(w);
    jsonw_obj_begin(w);
    jsonw_key_int(w, "index", 0);
    if (h->chat) {
        jsonw_key(w, "message");
        jsonw_obj_begin(w);
        jsonw_key_str(w, "role", "assistant");
        jsonw_key(w, "content");
        if (a->tool_calls && !a->n)
            jsonw_null(w);  /* OpenAI's content beside tool calls */
        else
            jsonw_strn(w, a->text ? a->text : "", a->n);
        if (a->tool_calls) {
            jsonw_key(w, "tool_calls");
            jsonw_raw(w, a->tool_calls, a->tool_calls_n);
        }
        jsonw_obj_end(w);
    } else {
        jsonw_key(w, "text");
        jsonw_strn(w, a->text ? a->text : "", a->n);
    }
    enc_lp_field(w, h->chat, a->lp, a->lp_n);
    jsonw_key(w, "finish_reason");
    if (a->finish)
        jsonw_str(w, a->finish);
    else
        jsonw_null(w);
    jsonw_obj_end(w);
    jsonw_arr_end(w);
    enc_usage(w, a->usage);
    jsonw_obj_end(w);
}

int oaijson_response(struct obuf *out, const struct oaijson_head *h, const char *text, size_t n,
                     const char *finish, const char *lp, size_t lp_n, const struct oaijson_usage *u)
{
    struct chunk_arg a = {h, false, text, n, finish, lp, lp_n, u, NULL, 0};
    return put_json(out, "", "", enc_response, &a, n * 6 + lp_n * 2 + 512);
}

int oaijson_response_tools(struct obuf *out, const struct oaijson_head *h, const char *text, size_t n,
                           const char *finish, const struct oaijson_usage *u, const char *calls, size_t calls_n)
{
    struct chunk_arg a = {h, false, text, n, finish, NULL, 0, u, calls, calls_n};
    return put_json(out, "", "", enc_response, &a, n * 6 + calls_n + 512);
}

struct tool_arg {
    uint32_t index;
    const char *id, *name, *args;
    size_t args_n;
    const struct oaijson_head *h;
};

static void enc_tool_call(struct jsonw *w, const struct tool_arg *a)
{
    jsonw_obj_begin(w);
    if (a->h)
        jsonw_key_int(w, "index", a->index);
    if (a->id) {
        jsonw_key_str(w, "id", a->id);
        jsonw_key_str(w, "type", "function");
    }
    jsonw_key(w, "function");
    jsonw_obj_begin(w);
    if (a->id)
        jsonw_key_str(w, "name", a->name);
    jsonw_key(w, "arguments");
    jsonw_strn(w, a->args ? a->args : "", a->args_n);
    jsonw_obj_end(w);
    jsonw_obj_end(w);
}

static void enc_tool_chunk(struct jsonw *w, const void *arg)
{
    const struct tool_arg *a = arg;
    jsonw_obj_begin(w);
    enc_head(w, a->h, "chat.completion.chunk");
    jsonw_key(w, "choices");
    jsonw_arr_begin(w);
    jsonw_obj_begin(w);
    jsonw_key_int(w, "index", 0);
    jsonw_key(w, "delta");
    jsonw_obj_begin(w);
    jsonw_key(w, "tool_calls");
    jsonw_arr_begin(w);
    enc_tool_call(w, a);
    jsonw_arr_end(w);
    jsonw_obj_end(w);
    jsonw_key(w, "finish_reason");
    jsonw_null(w);
    jsonw_obj_end(w);
    jsonw_arr_end(w);
    if (a->h->include_usage) {
        jsonw_key(w, "usage");
        jsonw_null(w);
    }
    jsonw_obj_end(w);
}

int oaijson_tool_chunk(struct obuf *out, const struct oaijson_head *h, uint32_t index, const char *id,
                       const char *name, const char *args, size_t args_n)
{
    struct tool_arg a = {index, id, name, args, args_n, h};
    return put_json(out, "data: ", "\n\n", enc_tool_chunk, &a, args_n * 6 + (name ? strlen(name) * 6 : 0) + 256);
}

static void enc_tool_item(struct jsonw *w, const void *arg) { enc_tool_call(w, arg); }

int oaijson_tool_call(struct obuf *out, const char *id, const char *name, const char *args, size_t args_n)
{
    struct tool_arg a = {0, id, name, args, args_n, NULL};
    return put_json(out, "", "", enc_tool_item, &a, args_n * 6 + strlen(name) * 6 + 128);
}

struct model_arg {
    const char *model;
    int64_t created;
    bool list;
};

static void enc_model(struct jsonw *w, const void *arg)
{
    const struct model_arg *a = arg;
    if (a->list) {
        jsonw_obj_begin(w);
        jsonw_key_str(w, "object", "list");
        jsonw_key(w, "data");
        jsonw_arr_begin(w);
    }
    jsonw_obj_begin(w);
    jsonw_key_str(w, "id", a->model);
    jsonw_key_str(w, "object", "model");
    jsonw_key_int(w, "created", a->created);
    jsonw_key_str(w, "owned_by", "rill");
    jsonw_obj_end(w);
    if (a->list) {
        jsonw_arr_end(w);
        jsonw_obj_end(w);
    }
}

int oaijson_models(struct obuf *out, const char *model, int64_t created)
{
    struct model_arg a = {model, created, true};
    return put_json(out, "", "", enc_model, &a, strlen(model) * 6 + 128);
}

int oaijson_model(struct obuf *out, const char *model, int64_t created)
{
    struct model_arg a = {model, created, false};
    return put_json(out, "", "", enc_model, &a, strlen(model) * 6 + 128);
}
