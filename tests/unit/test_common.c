/* test_common.c — the error list and the JSON writer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "common/jsonw.h"
#include "common/sampling.h"
#include "common/siphash.h"
#include "common/reclog.h"

static void test_err_names_round_trip_and_are_unique(void **state)
{
    (void)state;
    for (int i = 0; i < RILL_ERR_COUNT; i++) {
        int code = -(i + 1);
        const char *name = rill_err_name(code);
        assert_int_equal(rill_err_from_name(name), code);
        assert_int_equal(rill_err_index(code), i);
    }
    assert_string_equal(rill_err_name(0), "ok");
    assert_string_equal(rill_err_name(RILL_E_BAD_REQUEST), "bad_request");
    assert_string_equal(rill_err_name(RILL_E_WORKER_LOST), "worker_lost");
    assert_string_equal(rill_err_name(-100000), "internal");
    assert_int_equal(rill_err_from_name("no such code"), 0);
}

static void test_err_recoverable_flags_and_wire_mapping(void **state)
{
    (void)state;
    assert_false(rill_err_recoverable(RILL_E_BAD_REQUEST));
    assert_false(rill_err_recoverable(RILL_E_CANCELLED));
    assert_true(rill_err_recoverable(RILL_E_OVERLOADED));
    assert_true(rill_err_recoverable(RILL_E_WORKER_LOST));
    assert_true(rill_err_recoverable(RILL_E_RATE_LIMITED));
    assert_true(rill_err_is_wire(RILL_E_SLOW_CONSUMER));
    assert_false(rill_err_is_wire(RILL_E_IO));
    assert_int_equal(rill_err_wire(RILL_E_NOMEM), RILL_E_INTERNAL);
    assert_int_equal(rill_err_wire(RILL_E_TIMEOUT), RILL_E_TIMEOUT);
}

static cJSON *parse(const char *buf, size_t n)
{
    cJSON *j = cJSON_ParseWithLength(buf, n);
    assert_non_null(j);
    return j;
}

static void test_jsonw_writes_nested_values_that_cjson_reads_back(void **state)
{
    (void)state;
    char buf[512];
    struct jsonw w;
    jsonw_init(&w, buf, sizeof buf);
    jsonw_obj_begin(&w);
    jsonw_key_str(&w, "type", "token");
    jsonw_key(&w, "token");
    jsonw_obj_begin(&w);
    jsonw_key_int(&w, "id", -5);
    jsonw_key_str(&w, "text", "a\"b\\c\n\t\x01 é 🎉");
    jsonw_key_double(&w, "latency_ms", 38.5, 3);
    jsonw_key_double(&w, "nan", NAN, 3);
    jsonw_obj_end(&w);
    jsonw_key(&w, "list");
    jsonw_arr_begin(&w);
    jsonw_uint(&w, 18446744073709551615ull);
    jsonw_bool(&w, true);
    jsonw_null(&w);
    jsonw_arr_end(&w);
    jsonw_obj_end(&w);
    assert_true(jsonw_ok(&w));
    cJSON *j = parse(buf, jsonw_len(&w));
    assert_string_equal(cJSON_GetObjectItem(j, "type")->valuestring, "token");
    cJSON *t = cJSON_GetObjectItem(j, "token");
    assert_int_equal(cJSON_GetObjectItem(t, "id")->valueint, -5);
    assert_string_equal(cJSON_GetObjectItem(t, "text")->valuestring, "a\"b\\c\n\t\x01 é 🎉");
    assert_true(cJSON_GetObjectItem(t, "latency_ms")->valuedouble == 38.5);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(t, "nan")));
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "list")), 3);
    cJSON_Delete(j);
}

static void test_jsonw_replaces_invalid_utf8_and_reports_overflow(void **state)
{
    (void)state;
    char buf[64];
    struct jsonw w;
    jsonw_init(&w, buf, sizeof buf);
    jsonw_strn(&w, "a\xff\xc3z", 4);
    assert_true(jsonw_ok(&w));
    assert_int_equal(jsonw_len(&w), 2 + 1 + 3 + 3 + 1);
    assert_memory_equal(buf, "\"a\xef\xbf\xbd\xef\xbf\xbdz\"", jsonw_len(&w));
    jsonw_init(&w, buf, 8);
    jsonw_str(&w, "this does not fit");
    assert_false(jsonw_ok(&w));
    assert_int_equal(utf8_valid_prefix("ab\xe6\x97", 4), 2);
    assert_int_equal(utf8_valid_prefix("ab\xe6\x97\xa5", 5), 5);
    assert_int_equal(utf8_valid_prefix("\xed\xa0\x80", 3), 0); /* a surrogate is not UTF-8 */
}

/* One table of limits: the worker's admission refuses exactly what the
 * gateway's parser refuses (the worker took temperatures up to 100). */
static void test_sampling_limits_are_one_table(void **state)
{
    (void)state;
    struct proto_submit s = {.temperature = 0.8f, .top_p = 0.95f, .min_p = 0.05f, .repetition_penalty = 1.0f,
                             .top_k = 40, .top_logprobs = 0, .max_tokens = 1};
    char why[128];
    assert_int_equal(sampling_check(&s, why, sizeof why), 0);
    s.temperature = 10.0f;
    assert_int_equal(sampling_check(&s, why, sizeof why), 0);
    s.temperature = 11.0f;
    assert_int_equal(sampling_check(&s, why, sizeof why), RILL_E_BAD_REQUEST);
    assert_non_null(strstr(why, "temperature"));
    s.temperature = 1.0f;
    s.repetition_penalty = 50.0f;
    assert_int_equal(sampling_check(&s, why, sizeof why), RILL_E_BAD_REQUEST);
    assert_non_null(strstr(why, "repetition_penalty"));
    s.repetition_penalty = 1.0f;
    s.top_logprobs = PROTO_MAX_TOP + 1;
    assert_int_equal(sampling_check(&s, why, sizeof why), RILL_E_BAD_REQUEST);
    s.top_logprobs = PROTO_MAX_TOP;
    s.top_p = NAN;
    assert_int_equal(sampling_check(&s, why, sizeof why), RILL_E_BAD_REQUEST);
    /* OpenAI's range for its penalties, -2..2 inclusive. */
    s.top_p = 0.95f;
    s.presence_penalty = -2.0f;
    s.frequency_penalty = 2.0f;
    assert_int_equal(sampling_check(&s, why, sizeof why), 0);
    s.presence_penalty = -2.5f;
    assert_int_equal(sampling_check(&s, why, sizeof why), RILL_E_BAD_REQUEST);
    assert_string_equal(why, "presence_penalty: -2.5 is out of range [-2, 2]");
    s.presence_penalty = 0;
    s.frequency_penalty = 2.01f;
    assert_int_equal(sampling_check(&s, why, sizeof why), RILL_E_BAD_REQUEST);
    assert_non_null(strstr(why, "frequency_penalty"));
    s.frequency_penalty = INFINITY;
    assert_int_equal(sampling_check(&s, why, sizeof why), RILL_E_BAD_REQUEST);
    assert_false(sampling_ok(SAMPLING_TOP_K, 1.5));
    assert_true(sampling_ok(SAMPLING_TOP_K, 7));
}

/* The reference's vectors: key 00..0f, message 00 01 .. (len-1). */
static void test_siphash_matches_the_reference_vectors(void **state)
{
    (void)state;
    uint8_t key[16], msg[64];
    for (int i = 0; i < 16; i++)
        key[i] = (uint8_t)i;
    for (int i = 0; i < 64; i++)
        msg[i] = (uint8_t)i;
    static const uint64_t want64[] = {0x726fdb47dd0e0e31ull, 0x74f839c593dc67fdull, 0x0d6c8009d9a94f5aull,
                                      0x85676696d7fb7e2dull, 0xcf2794e0277187b7ull, 0x18765564cd99a68dull,
                                      0xcbc9466e58fee3ceull, 0xab0200f58b01d137ull, 0x93f5f5799a932462ull};
    for (size_t n = 0; n < sizeof want64 / sizeof want64[0]; n++)
        assert_int_equal(siphash64(key, msg, n), want64[n]);
    assert_int_equal(siphash64(key, msg, 63), 0x958a324ceb064572ull);
    static const uint8_t want128[16] = {0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25, 0xa8, 0xe6,
                                        0x6d, 0xf6, 0x72, 0x14, 0xc7, 0x55, 0x02, 0x93};
    uint8_t out[16];
    siphash128(key, msg, 0, out);
    assert_memory_equal(out, want128, 16);
    /* A different key or one more byte changes it. */
    uint8_t other[16];
    key[0] ^= 1;
    siphash128(key, msg, 0, other);
    assert_memory_not_equal(out, other, 16);
}

static void test_reclog_keeps_records_in_order_and_drops_the_older_half(void **state)
{
    (void)state;
    struct reclog l = {0};
    char buf[8];
    for (int i = 0; i < 5; i++) {
        int n = snprintf(buf, sizeof buf, "r%d%s", i, i % 2 ? "x" : "");
        assert_int_equal(reclog_append(&l, buf, (size_t)n), 0);
    }
    assert_int_equal(l.n, 5);
    size_t len;
    const unsigned char *r = reclog_get(&l, 3, &len);
    assert_int_equal(len, 3);
    assert_memory_equal(r, "r3x", 3);
    uint32_t k;
    assert_int_equal(reclog_drop_front(&l, &k), 2 + 3); /* "r0", "r1x" */
    assert_int_equal(k, 2);
    assert_int_equal(l.n, 3);
    r = reclog_get(&l, 0, &len);
    assert_int_equal(len, 2);
    assert_memory_equal(r, "r2", 2);
    r = reclog_get(&l, 2, &len);
    assert_memory_equal(r, "r4", 2);
    /* reserve, then commit fewer bytes */
    unsigned char *d = reclog_reserve(&l, 100);
    assert_non_null(d);
    memcpy(d, "tail", 4);
    reclog_commit(&l, 4);
    r = reclog_get(&l, 3, &len);
    assert_int_equal(len, 4);
    assert_memory_equal(r, "tail", 4);
    while (l.n)
        reclog_drop_front(&l, NULL);
    assert_int_equal(l.len, 0);
    reclog_free(&l);
    assert_null(l.p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_err_names_round_trip_and_are_unique),
        cmocka_unit_test(test_err_recoverable_flags_and_wire_mapping),
        cmocka_unit_test(test_jsonw_writes_nested_values_that_cjson_reads_back),
        cmocka_unit_test(test_jsonw_replaces_invalid_utf8_and_reports_overflow),
        cmocka_unit_test(test_sampling_limits_are_one_table),
        cmocka_unit_test(test_siphash_matches_the_reference_vectors),
        cmocka_unit_test(test_reclog_keeps_records_in_order_and_drops_the_older_half),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
