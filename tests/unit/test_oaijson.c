/* test_oaijson.c — the OpenAI API's JSON (gateway/oaijson): request bodies
 * to submits with their defaults, limits and refusals by parameter name;
 * error bodies, statuses, chunks and responses byte for byte; the UTF-8
 * hold-back at the end of a token. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "gateway/oaijson.h"

static const struct creq_limits lim = {1 << 20, 1000, 500};

static int parse(const char *body, enum oaijson_kind kind, struct oaijson_req *r, char *param, char *msg)
{
    return oaijson_parse(body, strlen(body), kind, &lim, r, param, OAIJSON_PARAM_MAX, msg, 256);
}

static void refused(const char *body, enum oaijson_kind kind, int code, const char *param)
{
    struct oaijson_req r;
    char p[OAIJSON_PARAM_MAX], m[256];
    int rc = parse(body, kind, &r, p, m);
    if (rc != code || strcmp(p, param))
        fail_msg("%s: got %s (param '%s', %s), want %s (param '%s')", body, rill_err_name(rc), p, m,
                 rill_err_name(code), param);
    assert_true(m[0] != 0);
    assert_null(r.submit.prompt);
    assert_null(r.messages);
}

static void test_oaijson_completion_defaults_are_the_websocket_ones(void **state)
{
    (void)state;
    struct oaijson_req r;
    char p[OAIJSON_PARAM_MAX], m[256];
    assert_int_equal(parse("{\"model\":\"x\",\"prompt\":\"Hi\"}", OAIJSON_COMPLETIONS, &r, p, m), 0);
    assert_string_equal(r.submit.prompt, "Hi");
    assert_int_equal(r.submit.prompt_len, 2);
    assert_int_equal(r.submit.max_tokens, 16); /* OpenAI's default for completions */
    assert_true(r.submit.temperature == PROTO_DEFAULT_TEMPERATURE && r.submit.top_p == PROTO_DEFAULT_TOP_P &&
                r.submit.top_k == PROTO_DEFAULT_TOP_K && r.submit.min_p == PROTO_DEFAULT_MIN_P &&
                r.submit.repetition_penalty == PROTO_DEFAULT_REP_PENALTY);
    assert_false(r.submit.has_seed || r.stream || r.include_usage || r.logprobs);
    assert_true(r.submit.parse_special); /* as the WebSocket's default */
    assert_string_equal(r.model, "x");
    oaijson_req_free(&r);
}

static void test_oaijson_parameters_reach_the_submit(void **state)
{
    (void)state;
    struct oaijson_req r;
    char p[OAIJSON_PARAM_MAX], m[256];
    const char *b = "{\"prompt\":[\"Hi\"],\"max_tokens\":9,\"max_completion_tokens\":7,\"temperature\":0.5,"
                    "\"top_p\":0.5,\"top_k\":-1,\"min_p\":0.1,\"repetition_penalty\":1.2,\"seed\":42,"
                    "\"stop\":\"\\n\",\"logprobs\":3,\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                    "\"user\":\"u\",\"parse_special\":false,\"n\":1,\"presence_penalty\":-1.5,\"frequency_penalty\":0.25,\"ignore_eos\":false,\"whatever\":[1]}";
    assert_int_equal(parse(b, OAIJSON_COMPLETIONS, &r, p, m), 0);
    assert_int_equal(r.submit.max_tokens, 7); /* the newer name wins */
    assert_true(r.submit.temperature == 0.5f && r.submit.top_p == 0.5f && r.submit.top_k == 0 &&
                r.submit.min_p == 0.1f && r.submit.repetition_penalty == 1.2f);
    assert_true(r.submit.presence_penalty == -1.5f && r.submit.frequency_penalty == 0.25f);
    assert_true(r.submit.has_seed && r.submit.seed == 42);
    assert_int_equal(r.submit.n_stop, 1);
    assert_string_equal(r.submit.stop[0], "\n");
    assert_true(r.logprobs && r.submit.top_logprobs == 3 && r.stream && r.include_usage && !r.submit.parse_special);
    oaijson_req_free(&r);

    assert_int_equal(parse("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
                           "{\"type\":\"text\",\"text\":\"b\"}]}],\"logprobs\":true,\"top_logprobs\":2}",
                           OAIJSON_CHAT, &r, p, m),
                     0);
    assert_string_equal(r.messages, "[{\"role\":\"user\",\"content\":\"ab\"}]");
    assert_int_equal(r.messages_len, strlen(r.messages));
    assert_null(r.submit.prompt);
    assert_true(r.submit.parse_special && r.logprobs && r.submit.top_logprobs == 2);
    assert_int_equal(r.submit.max_tokens, PROTO_DEFAULT_MAX_TOKENS);
    oaijson_req_free(&r);
}

static void test_oaijson_refusals_name_the_parameter(void **state)
{
    (void)state;
    refused("{bad", OAIJSON_COMPLETIONS, RILL_E_BAD_REQUEST, "");
    refused("{\"prompt\":\"x\"} x", OAIJSON_COMPLETIONS, RILL_E_BAD_REQUEST, "");
    refused("{\"prompt\":\"a\\u0000b\"}", OAIJSON_COMPLETIONS, RILL_E_BAD_REQUEST, "");
    refused("{\"prompt\":\"x\",\"n\":2}", OAIJSON_COMPLETIONS, RILL_E_BAD_REQUEST, "n");
    refused("{\"prompt\":\"x\",\"presence_penalty\":2.5}", OAIJSON_COMPLETIONS, RILL_E_BAD_REQUEST, "presence_penalty");
    refused("{\"prompt\":\"x\",\"frequency_penalty\":-3}", OAIJSON_COMPLETIONS, RILL_E_BAD_REQUEST, "frequency_penalty");
    refused("{\"prompt\":\"x\",\"frequency_penalty\":\"1\"}", OAIJSON_COMPLETIONS, RILL_E_BAD_REQUEST, "frequency_penalty");
    refused("{\"prompt\":\"x\",\"ignore_eos\":1}", OAIJSON_COMPLETIONS, RILL_E_BAD_REQUEST, "ignore_eos");
    refused("{\"prompt\":\"x\",\"echo\":true}", OAIJSON_COMPLETIONS, RILL_E_BAD_REQUEST, "echo");
    refused("{\"prompt\":\"x\",\"best_of\":2}", OAIJSON_COMPLETIONS, RILL_E_BAD_REQUEST, "best_of");
    refused("{\"prompt\":\"x\",\"suffix\":\"s\"}", OAIJSON_COMPLETIONS, RILL_E_BAD_REQUEST, "suffix");
    refused("{\"prompt\":\"x\",\"logit_bias\":{\"1\":2}}", OAIJSON_COMPLETIONS, RILL_E_BAD_REQUEST, "logit_bias");
    refused("{\"prompt\":\"x\",\"temperature\":10.5}", OAIJSON_COMPLETIONS, RILL_E_BAD_REQUEST, "temperature");
    refused("{\"prompt\":\"x\",\"top_k\":-2}", OAIJSON_COMPLETIONS, RILL_E_BAD_REQUEST, "top_k");
    refused("{\"prompt\":\"x\",\"seed\":1.5}", OAIJSON_COMPLETIONS, RILL_E_BAD_REQUEST, "seed");
    refused("{\"prompt\":\"x\",\"stop\":[\"\"]}", OAIJSON_COMPLETIONS, RILL_E_BAD_REQUEST, "stop");
    refused("{\"prompt\":\"x\",\"max_tokens\":501}", OAIJSON_COMPLETIONS, RILL_E_MAX_TOKENS, "max_tokens");
    refused("{\"prompt\":\"x\",\"stream\":1}", OAIJSON_COMPLETIONS, RILL_E_BAD_REQUEST, "stream");
    refused("{\"prompt\":[1,2]}", OAIJSON_COMPLETIONS, RILL_E_BAD_REQUEST, "prompt");
    refused("{\"model\":7,\"prompt\":\"x\"}", OAIJSON_COMPLETIONS, RILL_E_BAD_REQUEST, "model");
    char big[1100];
    snprintf(big, sizeof big, "{\"prompt\":\"%01001d\"}", 0); /* one byte over */
    refused(big, OAIJSON_COMPLETIONS, RILL_E_PROMPT_TOO_LONG, "prompt");
    refused("{\"messages\":[]}", OAIJSON_CHAT, RILL_E_BAD_REQUEST, "messages");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", OAIJSON_CHAT,
            RILL_E_BAD_REQUEST, "messages");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":1}", OAIJSON_CHAT,
            RILL_E_BAD_REQUEST, "top_logprobs");
    refused("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{}]}", OAIJSON_CHAT, RILL_E_BAD_REQUEST,
            "tools");
}

static void test_oaijson_errors_have_openai_shape_and_status(void **state)
{
    (void)state;
    struct obuf b = {0};
    assert_int_equal(oaijson_error(&b, RILL_E_BAD_REQUEST, "n", "only \"1\""), 0);
    const char want[] = "{\"error\":{\"message\":\"only \\\"1\\\"\",\"type\":\"invalid_request_error\",\"param\":\"n\","
                        "\"code\":\"bad_request\"}}";
    assert_int_equal(b.len, sizeof want - 1);
    assert_memory_equal(obuf_data(&b), want, sizeof want - 1);
    obuf_free(&b);
    const struct {
        int code;
        unsigned http;
        const char *code_s;
    } cases[] = {
        {RILL_E_UNAUTHORIZED, 401, "invalid_api_key"},   {RILL_E_NOT_FOUND, 404, "not_found"},
        {RILL_E_TOO_LARGE, 413, "too_large"},             {RILL_E_RATE_LIMITED, 429, "rate_limit_exceeded"},
        {RILL_E_OVERLOADED, 503, "overloaded"},           {RILL_E_NO_WORKER, 503, "no_worker"},
        {RILL_E_CONTEXT_LENGTH, 400, "context_length_exceeded"}, {RILL_E_NOMEM, 500, "internal"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct oaijson_status st;
        oaijson_status(cases[i].code, &st);
        assert_int_equal(st.http, cases[i].http);
        assert_string_equal(st.code, cases[i].code_s);
    }
}

static void test_oaijson_chunks_are_sse_events(void **state)
{
    (void)state;
    struct oaijson_head h = {"chatcmpl-1", 5, "m", true, true};
    struct obuf b = {0};
    assert_int_equal(oaijson_chunk(&b, &h, true, "", 0, NULL, NULL, 0), 0);
    assert_int_equal(oaijson_chunk(&b, &h, false, "h\xc3\xa9", 3, NULL, NULL, 0), 0);
    assert_int_equal(oaijson_chunk(&b, &h, false, "", 0, "stop", NULL, 0), 0);
    struct oaijson_usage u = {3, 2};
    assert_int_equal(oaijson_usage_chunk(&b, &h, &u), 0);
    assert_int_equal(oaijson_done(&b), 0);
    const char *head = "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"m\",";
    char want[2048];
    snprintf(want, sizeof want,
             "data: %s\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,"
             "\"finish_reason\":null}],\"usage\":null}\n\n"
             "data: %s\"choices\":[{\"index\":0,\"delta\":{\"content\":\"h\xc3\xa9\"},\"logprobs\":null,"
             "\"finish_reason\":null}],\"usage\":null}\n\n"
             "data: %s\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],"
             "\"usage\":null}\n\n"
             "data: %s\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n"
             "data: [DONE]\n\n",
             head, head, head, head);
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(obuf_data(&b), want, b.len);
    obuf_free(&b);
}

static void test_oaijson_response_is_one_object(void **state)
{
    (void)state;
    struct oaijson_head h = {"cmpl-1", 5, "m", false, false};
    struct oaijson_usage u = {4, 1};
    struct obuf b = {0};
    assert_int_equal(oaijson_response(&b, &h, "x\"", 2, "length", NULL, 0, &u), 0);
    const char want[] = "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":5,\"model\":\"m\",\"choices\":"
                        "[{\"index\":0,\"text\":\"x\\\"\",\"logprobs\":null,\"finish_reason\":\"length\"}],"
                        "\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1,\"total_tokens\":5}}";
    assert_int_equal(b.len, sizeof want - 1);
    assert_memory_equal(obuf_data(&b), want, b.len);
    obuf_free(&b);
}

static void test_oaijson_utf8_tail_holds_only_an_unfinished_character(void **state)
{
    (void)state;
    assert_int_equal(oaijson_utf8_tail("abc", 3), 0);
    assert_int_equal(oaijson_utf8_tail("", 0), 0);
    assert_int_equal(oaijson_utf8_tail("a\xc3", 2), 1);            /* é's first byte */
    assert_int_equal(oaijson_utf8_tail("a\xc3\xa9", 3), 0);        /* é whole */
    assert_int_equal(oaijson_utf8_tail("\xe2\x82", 2), 2);         /* € cut after two */
    assert_int_equal(oaijson_utf8_tail("x\xf0\x9f\x98", 4), 3);    /* an emoji's first three */
    assert_int_equal(oaijson_utf8_tail("\xf0\x9f\x98\x80", 4), 0); /* the emoji whole */
    assert_int_equal(oaijson_utf8_tail("a\xff", 2), 0);            /* invalid: sent (as U+FFFD), not held */
    assert_int_equal(oaijson_utf8_tail("a\x80", 2), 0);            /* a stray continuation byte */
    assert_int_equal(oaijson_utf8_tail("\xc0", 1), 0);             /* never valid (overlong lead) */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_oaijson_completion_defaults_are_the_websocket_ones),
        cmocka_unit_test(test_oaijson_parameters_reach_the_submit),
        cmocka_unit_test(test_oaijson_refusals_name_the_parameter),
        cmocka_unit_test(test_oaijson_errors_have_openai_shape_and_status),
        cmocka_unit_test(test_oaijson_chunks_are_sse_events),
        cmocka_unit_test(test_oaijson_response_is_one_object),
        cmocka_unit_test(test_oaijson_utf8_tail_holds_only_an_unfinished_character),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
