/* fuzz_jinja.c — libFuzzer target for the Jinja subset (worker/jinja.c): any
 * bytes as a template must parse or fail with a code, and what parses must
 * render or fail with a code — never a crash, a hang, a leak or memory past
 * the limits.  The context is a small fixed conversation with tools, so that
 * templates reach into nested values; the limits are tight so that every
 * input finishes quickly.
 *
 * Seeds: tests/fuzz/seeds-jinja (small templates that use every construct);
 * the real chat templates of ../shared/data/chat-templates make good extra
 * seeds when they are there.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/err.h"
#include "worker/jinja.h"

#define CHECK(cond, ...)                                                                 \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "fuzz_jinja: %s (line %d): ", #cond, __LINE__);              \
            fprintf(stderr, __VA_ARGS__);                                                \
            fputc('\n', stderr);                                                         \
            abort();                                                                     \
        }                                                                                \
    } while (0)

static const char *const CTX =
    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},"
    " {\"role\": \"user\", \"content\": \"H\\u00e9llo \\\"x\\\"\\n\"},"
    " {\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"id\": \"abcdefghi\", \"type\": \"function\","
    " \"function\": {\"name\": \"f\", \"arguments\": {\"a\": 1.5, \"b\": [true, null]}}}]},"
    " {\"role\": \"tool\", \"tool_call_id\": \"abcdefghi\", \"content\": \"42\"}],"
    " \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"description\": \"d\","
    " \"parameters\": {\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"number\"}}, \"required\": [\"a\"]}}}],"
    " \"add_generation_prompt\": true, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}";

static int ok_code(int rc)
{
    return rc == RILL_E_BAD_FORMAT || rc == RILL_E_BAD_REQUEST || rc == RILL_E_UNSUPPORTED || rc == RILL_E_TOO_LARGE;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static cJSON *ctx;
    if (!ctx)
        ctx = cJSON_Parse(CTX);
    CHECK(ctx != NULL, "context does not parse");
    char why[512];
    struct jinja_tmpl *t = NULL;
    why[0] = 0;
    int rc = jinja_parse((const char *)data, size, &t, why, sizeof why);
    if (rc) {
        CHECK(ok_code(rc) && t == NULL && why[0], "parse: rc %d, why '%s'", rc, why);
        return 0;
    }
    CHECK(t != NULL, "parse gave 0 and no template");
    struct jinja_limits lim = {.max_output = 1 << 20, .max_memory = 32 << 20, .max_steps = 200000,
                               .max_iters = 20000, .max_depth = 50};
    char *out = NULL;
    size_t len = 0;
    int raised = -1;
    why[0] = 0;
    rc = jinja_render(t, ctx, 1721995200, &lim, &out, &len, &raised, why, sizeof why);
    if (rc == 0) {
        CHECK(out != NULL && len <= lim.max_output && out[len] == 0, "render: output of %zu bytes", len);
        CHECK(raised == 0, "raised set on success");
    } else {
        CHECK(ok_code(rc) && out == NULL && (raised == 0 || raised == 1), "render: rc %d, why '%s'", rc, why);
        CHECK(!raised || rc == RILL_E_BAD_REQUEST, "raised with rc %d", rc);
    }
    free(out);
    jinja_free(t);
    return 0;
}
