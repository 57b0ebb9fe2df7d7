/* test_wstool.c — a WebSocket generation's tool calls (gateway/wstool.c)
 * and their frame (frames_tool_call): every token comes out once, in
 * position order, with only its content as text; a call comes out whole
 * before the tokens that wrote it; malformed calls are their tokens' text;
 * the same seed gives the same ids; both protocols' frames. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/frames.h"
#include "gateway/toolcall.h"
#include "gateway/wstool.h"

/* What came out, as one line per event: "T<pos>:<text>" or
 * "C<index>:<name>:<args>". */
struct out {
    char log[16384];
    size_t len;
    unsigned tokens, calls;
    uint32_t next_pos;
    char content[4096];
    char id[4][TOOLCALL_ID_LEN + 1];
};

static void put(struct out *o, const char *s, size_t n)
{
    assert_true(o->len + n < sizeof o->log);
    memcpy(o->log + o->len, s, n);
    o->len += n;
    o->log[o->len] = 0;
}

static int on_tok(void *ctx, const struct proto_token *t)
{
    struct out *o = ctx;
    assert_int_equal(t->position, o->next_pos); /* contiguous, each once */
    assert_int_equal(t->token_id, 1000 + (int)t->position);
    o->next_pos++;
    o->tokens++;
    char h[32];
    put(o, h, (size_t)snprintf(h, sizeof h, "T%u:", t->position));
    put(o, t->text, t->text_len);
    put(o, "\n", 1);
    strncat(o->content, t->text, t->text_len);
    return 0;
}

static int on_call(void *ctx, const struct wstool_call *c)
{
    struct out *o = ctx;
    assert_int_equal(c->index, o->calls);
    assert_int_equal(strlen(c->id), TOOLCALL_ID_LEN);
    memcpy(o->id[o->calls & 3], c->id, TOOLCALL_ID_LEN + 1);
    o->calls++;
    char h[32];
    put(o, h, (size_t)snprintf(h, sizeof h, "C%u:", c->index));
    put(o, c->name, c->name_n);
    put(o, ":", 1);
    put(o, c->args, c->args_n);
    put(o, "\n", 1);
    return 0;
}

/* Feed the pieces as tokens 0..n-1, then end the turn. */
static void run(struct out *o, uint64_t seed, const char *const *pieces, size_t n)
{
    memset(o, 0, sizeof *o);
    struct wstool *w = wstool_new(seed);
    assert_non_null(w);
    const struct wstool_sink k = {o, on_tok, on_call};
    for (size_t i = 0; i < n; i++) {
        struct proto_token t = {.req_id = 7, .position = (uint32_t)i, .token_id = 1000 + (int32_t)i,
                                .logprob = -0.5f, .text = pieces[i], .text_len = (uint16_t)strlen(pieces[i])};
        assert_int_equal(wstool_token(w, &t, &k), 0);
    }
    assert_int_equal(wstool_finish(w, &k), 0);
    assert_int_equal(o->calls, wstool_calls(w));
    assert_int_equal(o->tokens, n);
    wstool_free(w);
}

static void test_text_without_calls_is_each_tokens_text(void **state)
{
    (void)state;
    static const char *const p[] = {"Hello", " <b>", "world", " a < b", "."};
    struct out o;
    run(&o, 1, p, 5);
    assert_string_equal(o.log, "T0:Hello\nT1: <b>\nT2:world\nT3: a < b\nT4:.\n");
}

static void test_a_call_split_across_tokens_comes_whole_before_its_tokens(void **state)
{
    (void)state;
    static const char *const p[] = {"Sure.", " <tool", "_call>\n{\"na", "me\": \"get_weather\", \"argu",
                                    "ments\": {\"city\": \"Pa", "ris\"}}\n</tool_call>", "\n"};
    struct out o;
    run(&o, 1, p, 7);
    assert_string_equal(o.log, "T0:Sure.\n"
                               "C0:get_weather:{\"city\":\"Paris\"}\n"
                               "T1: \nT2:\nT3:\nT4:\nT5:\nT6:\n");
}

static void test_text_after_a_call_stays_with_its_token(void **state)
{
    (void)state;
    static const char *const p[] = {"<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>",
                                    "<tool_call>{\"name\": \"g\", \"arguments\": {\"x\": [1]}}</tool_call> done",
                                    " here"};
    struct out o;
    run(&o, 1, p, 3);
    assert_string_equal(o.log, "C0:f:{}\nT0:\nC1:g:{\"x\":[1]}\nT1: done\nT2: here\n");
}

static void test_a_malformed_call_is_its_tokens_text(void **state)
{
    (void)state;
    static const char *const p[] = {"<tool_call>{\"name\"", ": oops}</tool", "_call> after"};
    struct out o;
    run(&o, 1, p, 3);
    assert_int_equal(o.calls, 0);
    assert_string_equal(o.log, "T0:<tool_call>{\"name\"\nT1:: oops}</tool\nT2:_call> after\n");
}

static void test_a_call_never_closed_is_text_at_the_end(void **state)
{
    (void)state;
    static const char *const p[] = {"ok ", "<tool_call>", "{\"name\": \"f\", \"arguments\": {\"a\""};
    struct out o;
    run(&o, 1, p, 3);
    assert_int_equal(o.calls, 0);
    assert_string_equal(o.log, "T0:ok \nT1:<tool_call>\nT2:{\"name\": \"f\", \"arguments\": {\"a\"\n");
}

/* Any split of the turn into tokens: the same content, the same call. */
static void test_every_split_gives_the_same_reading(void **state)
{
    (void)state;
    const char *turn = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
                       "</tool_call>";
    size_t n = strlen(turn);
    char a[256], b[256], c[256];
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j < n; j += 7) {
            snprintf(a, sizeof a, "%.*s", (int)i, turn);
            snprintf(b, sizeof b, "%.*s", (int)(j - i), turn + i);
            snprintf(c, sizeof c, "%s", turn + j);
            const char *const p[] = {a, b, c};
            struct out o;
            run(&o, 3, p, 3);
            assert_int_equal(o.calls, 1);
            assert_string_equal(o.content, "Let me check.\n");
            assert_non_null(strstr(o.log, "C0:get_weather:{\"city\":\"Paris\"}\n"));
        }
}

static void test_the_same_seed_gives_the_same_ids(void **state)
{
    (void)state;
    static const char *const p[] = {"<tool_call>{\"name\": \"f\"}</tool_call><tool_call>{\"name\": \"g\"}</tool_call>"};
    struct out x, y, z;
    run(&x, 42, p, 1);
    run(&y, 42, p, 1);
    run(&z, 43, p, 1);
    assert_int_equal(x.calls, 2);
    assert_string_equal(x.id[0], y.id[0]);
    assert_string_equal(x.id[1], y.id[1]);
    assert_string_not_equal(x.id[0], x.id[1]);
    assert_string_not_equal(x.id[0], z.id[0]);
}

#define ARGS "{\"city\":\"Paris \\\"Nord\\\"\",\"t\":\"\xc3\xa9\"}"
static const struct wstool_call CALL = {2, "call_abcdefghijklmnopqrstuvwx", "get_weather", 11, ARGS, sizeof ARGS - 1};

static void test_tool_call_frame_in_json(void **state)
{
    (void)state;
    struct creq_id id = {.present = true};
    snprintf(id.s, sizeof id.s, "q1");
    struct obuf b = {0};
    assert_int_equal(frames_tool_call(&b, false, &id, &CALL), 0);
    char *s = strndup((const char *)obuf_data(&b), b.len);
    assert_string_equal(s, "{\"type\":\"tool_call\",\"id\":\"q1\",\"index\":2,\"call_id\":\"call_abcdefghijklmnopqrstuvwx\","
                           "\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Paris \\\\\\\"Nord\\\\\\\"\\\","
                           "\\\"t\\\":\\\"\xc3\xa9\\\"}\"}");
    free(s);
    /* a long call: the frame grows with it */
    char *args = malloc(70000);
    memset(args, '"', 69999);
    args[69999] = 0;
    struct wstool_call big = CALL;
    big.args = args;
    big.args_n = 69999;
    b.len = 0;
    assert_int_equal(frames_tool_call(&b, false, &id, &big), 0);
    assert_true(b.len > 2 * 69999);
    free(args);
    obuf_free(&b);
}

static void test_tool_call_frame_in_msgpack(void **state)
{
    (void)state;
    struct creq_id id = {.present = true, .is_num = true};
    snprintf(id.s, sizeof id.s, "17");
    struct obuf b = {0};
    assert_int_equal(frames_tool_call(&b, true, &id, &CALL), 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, (const char *)obuf_data(&b), b.len, NULL), MSGPACK_UNPACK_SUCCESS);
    msgpack_object o = u.data;
    assert_int_equal(o.type, MSGPACK_OBJECT_MAP);
    assert_int_equal(o.via.map.size, 6);
    static const char *const keys[] = {"type", "id", "index", "call_id", "name", "arguments"};
    for (uint32_t i = 0; i < 6; i++) {
        msgpack_object_kv *kv = &o.via.map.ptr[i];
        assert_int_equal(kv->key.type, MSGPACK_OBJECT_STR);
        assert_int_equal(kv->key.via.str.size, strlen(keys[i]));
        assert_memory_equal(kv->key.via.str.ptr, keys[i], strlen(keys[i]));
    }
    msgpack_object_kv *kv = o.via.map.ptr;
    assert_memory_equal(kv[0].val.via.str.ptr, "tool_call", 9);
    assert_int_equal(kv[1].val.type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_int_equal(kv[1].val.via.u64, 17);
    assert_int_equal(kv[2].val.via.u64, 2);
    assert_memory_equal(kv[3].val.via.str.ptr, CALL.id, TOOLCALL_ID_LEN);
    assert_int_equal(kv[5].val.type, MSGPACK_OBJECT_STR);
    assert_int_equal(kv[5].val.via.str.size, CALL.args_n);
    assert_memory_equal(kv[5].val.via.str.ptr, CALL.args, CALL.args_n);
    msgpack_unpacked_destroy(&u);
    obuf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_without_calls_is_each_tokens_text),
        cmocka_unit_test(test_a_call_split_across_tokens_comes_whole_before_its_tokens),
        cmocka_unit_test(test_text_after_a_call_stays_with_its_token),
        cmocka_unit_test(test_a_malformed_call_is_its_tokens_text),
        cmocka_unit_test(test_a_call_never_closed_is_text_at_the_end),
        cmocka_unit_test(test_every_split_gives_the_same_reading),
        cmocka_unit_test(test_the_same_seed_gives_the_same_ids),
        cmocka_unit_test(test_tool_call_frame_in_json),
        cmocka_unit_test(test_tool_call_frame_in_msgpack),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
