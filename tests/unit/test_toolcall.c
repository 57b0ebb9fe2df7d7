/* test_toolcall.c — the gateway's tool-call parser: Hermes/Qwen tags and
 * Llama JSON as the chat templates write them, the same text split at every
 * byte, text held back only while it may still be a call, malformed calls
 * given back as text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/oaijson.h"
#include "gateway/toolcall.h"
#include <cjson/cJSON.h>
#include "worker/chat.h"

struct got {
    char content[8192];
    size_t content_len;
    unsigned calls;
    char name[8][64];
    char id[8][TOOLCALL_ID_LEN + 1];
    char args[8][1024];
    int last_kind;        /* order check: ARGS only after START of the same index */
    unsigned events;
};

static int collect(void *ctx, const struct toolcall_ev *ev)
{
    struct got *g = ctx;
    g->events++;
    switch (ev->kind) {
    case TOOLCALL_CONTENT:
        assert_true(ev->n > 0);
        assert_true(g->content_len + ev->n < sizeof g->content);
        memcpy(g->content + g->content_len, ev->text, ev->n);
        g->content_len += ev->n;
        g->content[g->content_len] = '\0';
        break;
    case TOOLCALL_START:
        assert_int_equal(ev->index, g->calls);
        assert_true(ev->n < 64);
        memcpy(g->name[g->calls], ev->text, ev->n);
        g->name[g->calls][ev->n] = '\0';
        assert_int_equal(strlen(ev->id), TOOLCALL_ID_LEN);
        memcpy(g->id[g->calls], ev->id, TOOLCALL_ID_LEN + 1);
        g->calls++;
        break;
    case TOOLCALL_ARGS:
        assert_int_equal(ev->index + 1, g->calls);
        assert_true(ev->n <= TOOLCALL_ARGS_PIECE);
        strncat(g->args[ev->index], ev->text, ev->n);
        break;
    }
    g->last_kind = ev->kind;
    return 0;
}

/* Feed s in pieces of `step` bytes (0: split once at `cut`), then finish. */
static void run_split(const char *s, size_t cut, size_t step, struct got *g)
{
    memset(g, 0, sizeof *g);
    struct toolcall *t = toolcall_new(42);
    assert_non_null(t);
    size_t n = strlen(s);
    if (step == 0) {
        assert_int_equal(toolcall_feed(t, s, cut, collect, g), 0);
        assert_int_equal(toolcall_feed(t, s + cut, n - cut, collect, g), 0);
    } else {
        for (size_t i = 0; i < n; i += step)
            assert_int_equal(toolcall_feed(t, s + i, n - i < step ? n - i : step, collect, g), 0);
    }
    assert_int_equal(toolcall_finish(t, collect, g), 0);
    assert_int_equal(toolcall_count(t), g->calls);
    toolcall_free(t);
}

/* The result must not depend on how the text is split. */
static void check_every_split(const char *s, const struct got *want)
{
    struct got g;
    size_t n = strlen(s);
    for (size_t cut = 0; cut <= n; cut++) {
        run_split(s, cut, 0, &g);
        assert_string_equal(g.content, want->content);
        assert_int_equal(g.calls, want->calls);
        for (unsigned i = 0; i < g.calls; i++) {
            assert_string_equal(g.name[i], want->name[i]);
            assert_string_equal(g.args[i], want->args[i]);
        }
    }
    for (size_t step = 1; step <= 7; step++) {
        run_split(s, 0, step, &g);
        assert_string_equal(g.content, want->content);
        assert_int_equal(g.calls, want->calls);
        for (unsigned i = 0; i < g.calls; i++)
            assert_string_equal(g.args[i], want->args[i]);
    }
}

static void test_hermes_two_calls_split_at_every_byte(void **state)
{
    (void)state;
    const char *s = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Z\\u00fcrich\", \"days\": [1, 2]}}\n</tool_call>\n"
                    "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": \"CET\"}}\n</tool_call>\n";
    struct got want = {.calls = 2};
    strcpy(want.content, "Let me check.\n");
    strcpy(want.name[0], "get_weather");
    strcpy(want.args[0], "{\"city\":\"Z\xc3\xbcrich\",\"days\":[1,2]}");
    strcpy(want.name[1], "get_time");
    strcpy(want.args[1], "{\"tz\":\"CET\"}");
    check_every_split(s, &want);
    struct got g;
    run_split(s, 0, 1, &g);
    assert_memory_equal(g.id[0], "call_", 5);
    assert_string_not_equal(g.id[0], g.id[1]);
}

static void test_llama_json_with_and_without_python_tag(void **state)
{
    (void)state;
    struct got want = {.calls = 1};
    strcpy(want.name[0], "get_weather");
    strcpy(want.args[0], "{\"city\":\"Paris\"}");
    check_every_split("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}", &want);
    check_every_split("  <|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}", &want);
    /* braces inside strings do not close the object */
    strcpy(want.args[0], "{\"q\":\"a}b{\\\"\"}");
    check_every_split("{\"name\": \"get_weather\", \"parameters\": {\"q\": \"a}b{\\\"\"}}\n", &want);
}

static void test_plain_text_leaves_at_once(void **state)
{
    (void)state;
    struct got g = {0};
    struct toolcall *t = toolcall_new(1);
    assert_int_equal(toolcall_feed(t, "Hello", 5, collect, &g), 0);
    assert_string_equal(g.content, "Hello");
    /* "<tool" may become a tag: held; "<tools" cannot: released */
    assert_int_equal(toolcall_feed(t, " <tool", 6, collect, &g), 0);
    assert_string_equal(g.content, "Hello ");
    assert_int_equal(toolcall_feed(t, "s> a < b", 8, collect, &g), 0);
    assert_string_equal(g.content, "Hello <tools> a < b");
    /* a brace mid-turn is text (only the turn's start may be Llama JSON) */
    assert_int_equal(toolcall_feed(t, " {x}", 4, collect, &g), 0);
    assert_string_equal(g.content, "Hello <tools> a < b {x}");
    assert_int_equal(toolcall_finish(t, collect, &g), 0);
    assert_int_equal(toolcall_count(t), 0);
    toolcall_free(t);
}

static void test_malformed_calls_are_text(void **state)
{
    (void)state;
    struct got want = {0};
    const char *bad[] = {
        "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": }</tool_call> after",   /* bad JSON */
        "<tool_call>{\"arguments\": {}}</tool_call>",                               /* no name */
        "<tool_call>{\"name\": 3}</tool_call>",                                      /* name not a string */
        "<tool_call>{\"name\": \"f\"} trailing</tool_call>",                         /* more than one value */
        "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}",                    /* never closed */
        "{\"name\": \"f\", \"parameters\": {\"a\": 1}",                               /* Llama never closed */
        "{\"not\": \"a call\"} and more",                                           /* JSON, not a call */
        "<|python_tag|>brave_search.call(query=\"x\")",                              /* built-in tool syntax */
        "<tool_c",                                                                   /* a tag cut off */
        "   ",                                                                       /* only whitespace */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        strcpy(want.content, bad[i]);
        check_every_split(bad[i], &want);
    }
}

static void test_malformed_then_good_call(void **state)
{
    (void)state;
    struct got want = {.calls = 1};
    strcpy(want.content, "<tool_call>{oops}</tool_call>ok ");
    strcpy(want.name[0], "f");
    strcpy(want.args[0], "{}");
    check_every_split("<tool_call>{oops}</tool_call>ok <tool_call>{\"name\":\"f\"}</tool_call>", &want);
}

static int count_bytes(void *ctx, const struct toolcall_ev *ev)
{
    assert_int_equal(ev->kind, TOOLCALL_CONTENT);
    *(size_t *)ctx += ev->n;
    return 0;
}

static void test_a_call_too_long_is_text(void **state)
{
    (void)state;
    size_t n = TOOLCALL_MAX + 100;
    char *s = malloc(n + 1);
    memcpy(s, "<tool_call>{\"name\": \"f\", \"arguments\": \"", 39);
    memset(s + 39, 'x', n - 39);
    s[n] = '\0';
    struct toolcall *t = toolcall_new(7);
    size_t released = 0;
    for (size_t i = 0; i < n; i += 1000)
        assert_int_equal(toolcall_feed(t, s + i, n - i < 1000 ? n - i : 1000, count_bytes, &released), 0);
    /* given back before the turn ends: the parser never holds more than TOOLCALL_MAX */
    assert_int_equal(released, n);
    assert_int_equal(toolcall_finish(t, count_bytes, &released), 0);
    assert_int_equal(released, n);
    assert_int_equal(toolcall_count(t), 0);
    toolcall_free(t);
    free(s);
}

/* The calls as the real templates write an assistant turn with tool_calls:
 * the parser reads back what the template rendered. */
static char *read_template(const char *name, size_t *len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", getenv("RILL_TEMPLATES") ? getenv("RILL_TEMPLATES") : "/work/shared/data/chat-templates", name);
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    *len = fread(b, 1, (size_t)n, f);
    b[*len] = '\0';
    fclose(f);
    return b;
}

static void parse_rendered_turn(const char *tmpl_name, const char *turn_start, const char *turn_end, const char *want_args)
{
    size_t tl = 0;
    char *tmpl = read_template(tmpl_name, &tl);
    if (!tmpl) {
        print_message("skipped: %s not found\n", tmpl_name);
        return;
    }
    const char *msgs = "[{\"role\":\"user\",\"content\":\"Weather in Paris?\"},"
                       "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\","
                       "\"function\":{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}}]}]";
    const char *tools = "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":\"d\","
                        "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}}}}]";
    struct chat_opts o = {.tools_json = tools, .tools_len = strlen(tools), .bos_token = "", .eos_token = ""};
    char *out = NULL, why[256] = "";
    size_t on = 0;
    assert_int_equal(chat_render(tmpl, tl, msgs, strlen(msgs), &o, &out, &on, why, sizeof why), 0);
    /* the assistant's turn: after its header, up to its end marker */
    const char *a = strstr(out, turn_start);
    assert_non_null(a);
    const char *last = a;
    while ((a = strstr(last + 1, turn_start)))
        last = a;
    last += strlen(turn_start);
    const char *e = strstr(last, turn_end);
    assert_non_null(e);
    char turn[1024];
    snprintf(turn, sizeof turn, "%.*s", (int)(e - last), last);
    struct got want = {.calls = 1};
    strcpy(want.name[0], "get_weather");
    strcpy(want.args[0], want_args);
    check_every_split(turn, &want);
    free(out);
    free(tmpl);
}

static void test_reads_back_hermes_template_output(void **state)
{
    (void)state;
    parse_rendered_turn("NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja", "<|im_start|>assistant\n", "<|im_end|>",
                        "{\"city\":\"Paris\"}");
}

static void test_reads_back_qwen_template_output(void **state)
{
    (void)state;
    parse_rendered_turn("Qwen-Qwen2.5-7B-Instruct.jinja", "<|im_start|>assistant\n", "<|im_end|>", "{\"city\":\"Paris\"}");
}

static void test_reads_back_llama31_template_output(void **state)
{
    (void)state;
    parse_rendered_turn("meta-llama-Llama-3.1-8B-Instruct.jinja", "<|start_header_id|>assistant<|end_header_id|>\n\n",
                        "<|eot_id|>", "{\"city\":\"Paris\"}");
}

/* The parser's events as gateway/openai.c sends them: OpenAI's SSE chunks. */
static const struct oaijson_head HEAD = {"chatcmpl-1", 1700000000, "m", true, false};

static int to_sse(void *ctx, const struct toolcall_ev *ev)
{
    struct obuf *out = ctx;
    if (ev->kind == TOOLCALL_CONTENT)
        return oaijson_chunk(out, &HEAD, false, ev->text, ev->n, NULL, NULL, 0);
    if (ev->kind == TOOLCALL_START)
        return oaijson_tool_chunk(out, &HEAD, ev->index, ev->id, ev->text, "", 0);
    return oaijson_tool_chunk(out, &HEAD, ev->index, NULL, NULL, ev->text, ev->n);
}

static void test_calls_become_openai_tool_call_chunks(void **state)
{
    (void)state;
    const char *s = "Sure.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"note\": \""
                    "a long note that takes more than one piece of arguments to send, with \\\"quotes\\\"\"}}\n</tool_call>";
    struct obuf out = {0};
    struct toolcall *t = toolcall_new(3);
    for (size_t i = 0; s[i]; i++)
        assert_int_equal(toolcall_feed(t, s + i, 1, to_sse, &out), 0);
    assert_int_equal(toolcall_finish(t, to_sse, &out), 0);
    toolcall_free(t);
    char *all = strndup((const char *)obuf_data(&out), out.len), *save = NULL;
    char content[64] = "", args[512] = "";
    int n_calls = 0, n_args = 0;
    for (char *ev = strtok_r(all, "\n", &save); ev; ev = strtok_r(NULL, "\n", &save)) {
        assert_memory_equal(ev, "data: ", 6);
        cJSON *c = cJSON_Parse(ev + 6);
        assert_non_null(c);
        assert_string_equal(cJSON_GetObjectItem(c, "object")->valuestring, "chat.completion.chunk");
        cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(c, "choices"), 0);
        assert_true(cJSON_IsNull(cJSON_GetObjectItem(ch, "finish_reason")));
        cJSON *d = cJSON_GetObjectItem(ch, "delta");
        cJSON *tc = cJSON_GetObjectItem(d, "tool_calls");
        if (!tc) {
            strcat(content, cJSON_GetObjectItem(d, "content")->valuestring);
        } else {
            assert_int_equal(cJSON_GetArraySize(tc), 1);
            cJSON *call = cJSON_GetArrayItem(tc, 0), *fn = cJSON_GetObjectItem(call, "function");
            assert_int_equal(cJSON_GetObjectItem(call, "index")->valueint, 0);
            if (cJSON_GetObjectItem(call, "id")) { /* the first: id, type, name, empty arguments */
                assert_int_equal(n_calls++, 0);
                assert_memory_equal(cJSON_GetObjectItem(call, "id")->valuestring, "call_", 5);
                assert_string_equal(cJSON_GetObjectItem(call, "type")->valuestring, "function");
                assert_string_equal(cJSON_GetObjectItem(fn, "name")->valuestring, "get_weather");
                assert_string_equal(cJSON_GetObjectItem(fn, "arguments")->valuestring, "");
            } else {              /* then arguments only */
                assert_int_equal(n_calls, 1);
                assert_null(cJSON_GetObjectItem(fn, "name"));
                assert_null(cJSON_GetObjectItem(call, "type"));
                strcat(args, cJSON_GetObjectItem(fn, "arguments")->valuestring);
                n_args++;
            }
        }
        cJSON_Delete(c);
    }
    assert_string_equal(content, "Sure.");
    assert_true(n_args >= 2);
    cJSON *a = cJSON_Parse(args);
    assert_non_null(a);
    assert_string_equal(cJSON_GetObjectItem(a, "city")->valuestring, "Paris");
    assert_non_null(strstr(cJSON_GetObjectItem(a, "note")->valuestring, "\"quotes\""));
    cJSON_Delete(a);
    free(all);

    /* stream:false: message.tool_calls, content null */
    struct obuf calls = {0}, resp = {0};
    assert_int_equal(obuf_put(&calls, "[", 1), 0);
    assert_int_equal(oaijson_tool_call(&calls, "call_x", "get_weather", "{\"city\":\"Paris\"}", 17), 0);
    assert_int_equal(obuf_put(&calls, "]", 1), 0);
    struct oaijson_usage u = {5, 9};
    assert_int_equal(oaijson_response_tools(&resp, &HEAD, "", 0, "tool_calls", &u, (const char *)obuf_data(&calls),
                                            calls.len), 0);
    char *r = strndup((const char *)obuf_data(&resp), resp.len);
    cJSON *doc = cJSON_Parse(r);
    assert_non_null(doc);
    cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "choices"), 0);
    assert_string_equal(cJSON_GetObjectItem(ch, "finish_reason")->valuestring, "tool_calls");
    cJSON *m = cJSON_GetObjectItem(ch, "message");
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(m, "content")));
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(m, "tool_calls"), 0);
    assert_string_equal(cJSON_GetObjectItem(c0, "id")->valuestring, "call_x");
    assert_null(cJSON_GetObjectItem(c0, "index"));
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "function"), "arguments")->valuestring,
                        "{\"city\":\"Paris\"}");
    cJSON_Delete(doc);
    free(r);
    obuf_free(&out);
    obuf_free(&calls);
    obuf_free(&resp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hermes_two_calls_split_at_every_byte),
        cmocka_unit_test(test_llama_json_with_and_without_python_tag),
        cmocka_unit_test(test_plain_text_leaves_at_once),
        cmocka_unit_test(test_malformed_calls_are_text),
        cmocka_unit_test(test_malformed_then_good_call),
        cmocka_unit_test(test_a_call_too_long_is_text),
        cmocka_unit_test(test_reads_back_hermes_template_output),
        cmocka_unit_test(test_reads_back_qwen_template_output),
        cmocka_unit_test(test_reads_back_llama31_template_output),
        cmocka_unit_test(test_calls_become_openai_tool_call_chunks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
