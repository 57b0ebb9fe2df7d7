/* fuzz_oaijson.c — libFuzzer target for the OpenAI API's request parser
 * (gateway/oaijson.c): the body of POST /v1/completions and
 * /v1/chat/completions, as any HTTP client sends it.
 *
 * Every input is parsed as both kinds, without limits and with small ones.
 * Beyond "no crash, no leak" (ASan, UBSan) it checks what oaijson.h
 * promises: a code of the one list with a message (and the parameter, a
 * short name); nothing to free after an error; a parsed request inside its
 * ranges (sampling_check passes, max_tokens within the limit, stop strings
 * non-empty, a prompt of valid UTF-8 within max_prompt_bytes, messages a
 * JSON array that parses again); a limit only turns an accepted body into
 * too_large, prompt_too_long or max_tokens_exceeded.  The answers built
 * from what was parsed (a response holding the prompt as its text, an
 * error quoting the message) must be JSON that cJSON reads back.  The
 * input's tail also goes through oaijson_utf8_tail: what it holds back is
 * an unfinished character and what it sends ends on a character boundary.
 *
 * Seeds: none kept; start from tests/fuzz/seeds-request's JSON if wanted.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/err.h"
#include "common/sampling.h"
#include "common/utf8.h"
#include "gateway/oaijson.h"

#define CHECK(cond, ...)                                                                 \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "fuzz_oaijson: %s (line %d): ", #cond, __LINE__);            \
            fprintf(stderr, __VA_ARGS__);                                                \
            fputc('\n', stderr);                                                         \
            abort();                                                                     \
        }                                                                                \
    } while (0)

static const struct creq_limits no_limits = {UINT32_MAX, UINT32_MAX, UINT32_MAX};
static const struct creq_limits small_limits = {512, 24, 50};

static bool json_ok(const struct obuf *b)
{
    cJSON *j = cJSON_ParseWithLength((const char *)obuf_data(b), b->len);
    bool ok = j != NULL;
    cJSON_Delete(j);
    return ok;
}

static void check_req(const struct oaijson_req *r, const struct creq_limits *lim)
{
    char why[128];
    CHECK(sampling_check(&r->submit, why, sizeof why) == 0, "%s", why);
    CHECK(r->submit.max_tokens >= 1 && r->submit.max_tokens <= lim->max_tokens_limit, "max_tokens %u",
          r->submit.max_tokens);
    CHECK(r->submit.n_stop <= PROTO_MAX_STOP, "n_stop");
    for (int i = 0; i < r->submit.n_stop; i++)
        CHECK(r->submit.stop[i][0] && strlen(r->submit.stop[i]) <= PROTO_STOP_LEN, "stop %d", i);
    if (r->kind == OAIJSON_CHAT) {
        CHECK(r->messages && !r->submit.prompt && r->submit.parse_special, "chat shape");
        cJSON *m = cJSON_ParseWithLength(r->messages, r->messages_len);
        CHECK(cJSON_IsArray(m) && m->child, "messages not an array");
        cJSON_Delete(m);
    } else {
        CHECK(r->submit.prompt && !r->messages, "completion shape");
        CHECK(r->submit.prompt_len <= lim->max_prompt_bytes, "prompt over the limit");
        CHECK(utf8_valid_prefix(r->submit.prompt, r->submit.prompt_len) == r->submit.prompt_len, "prompt not UTF-8");
        CHECK(strlen(r->submit.prompt) == r->submit.prompt_len, "NUL in the prompt");
        /* The answer quoting it is JSON. */
        struct oaijson_head h = {"cmpl-1", 1, "m", false, r->include_usage};
        struct oaijson_usage u = {1, 2};
        struct obuf b = {0};
        CHECK(oaijson_response(&b, &h, r->submit.prompt, r->submit.prompt_len, "stop", NULL, 0, &u) == 0, "oom");
        CHECK(json_ok(&b), "response is not JSON");
        obuf_free(&b);
    }
}

static int parse_one(const uint8_t *data, size_t size, enum oaijson_kind kind, const struct creq_limits *lim)
{
    struct oaijson_req r;
    char param[OAIJSON_PARAM_MAX], msg[256];
    int rc = oaijson_parse(data, size, kind, lim, &r, param, sizeof param, msg, sizeof msg);
    if (rc) {
        CHECK(rc == RILL_E_BAD_REQUEST || rc == RILL_E_TOO_LARGE || rc == RILL_E_PROMPT_TOO_LONG ||
                  rc == RILL_E_MAX_TOKENS || rc == RILL_E_NOMEM,
              "code %s", rill_err_name(rc));
        CHECK(msg[0], "no message");
        CHECK(strlen(param) < OAIJSON_PARAM_MAX - 1, "param");
        CHECK(!r.submit.prompt && !r.messages, "left something to free");
        struct obuf b = {0};
        CHECK(oaijson_error(&b, rc, param, msg) == 0, "oom");
        CHECK(json_ok(&b), "error is not JSON");
        obuf_free(&b);
        return rc;
    }
    check_req(&r, lim);
    oaijson_req_free(&r);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (int k = 0; k < 2; k++) {
        enum oaijson_kind kind = k ? OAIJSON_CHAT : OAIJSON_COMPLETIONS;
        int big = parse_one(data, size, kind, &no_limits);
        int small = parse_one(data, size, kind, &small_limits);
        if (!big)
            CHECK(!small || small == RILL_E_TOO_LARGE || small == RILL_E_PROMPT_TOO_LONG || small == RILL_E_MAX_TOKENS,
                  "a limit gave %s", rill_err_name(small));
    }
    size_t hold = oaijson_utf8_tail((const char *)data, size);
    CHECK(hold <= 3 && hold <= size, "hold %zu", hold);
    if (hold)
        CHECK(utf8_scan(data + size - hold, hold) == 0, "held a finished or invalid character");
    return 0;
}
