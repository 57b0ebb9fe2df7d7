/* test_proto.c — msgpack messages and token records: round trips, every class
 * of malformed input, truncation, hostile sizes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include <cmocka.h>
#include <msgpack.h>

#include "clock.h"
#include "err.h"
#include "proto.h"

/* --- allocation watch ---------------------------------------------------------
 * Outside sanitizer builds (which bring their own malloc) the test binary
 * replaces malloc to record the largest single request while armed: that is
 * how the hostile-count tests see that msgpack-c was never asked for
 * gigabytes.  glibc permits replacing malloc this way. */
#if !defined(RILL_SANITIZE) && defined(__GLIBC__)
#define WATCH_ALLOC 1
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);

static int watch_armed;
static size_t watch_max;

static void watch_note(size_t n)
{
    if (watch_armed && n > watch_max)
        watch_max = n;
}

void *malloc(size_t n) { watch_note(n); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { watch_note(a * b); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { watch_note(n); return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }
#endif

/* --- helpers ---------------------------------------------------------------- */

/* Encode, decode, re-encode: the two encodings must be the same bytes.
 * Returns the decoded message (to free) and its encoded size. */
static size_t round_trip(const struct proto_msg *in, struct proto_msg *out)
{
    msgpack_sbuffer a, b;
    msgpack_sbuffer_init(&a);
    msgpack_sbuffer_init(&b);
    char why[128];
    int rc = proto_encode(in, &a, why, sizeof why);
    if (rc)
        fail_msg("encode: %d %s", rc, why);
    rc = proto_decode(a.data, a.size, out, why, sizeof why);
    if (rc)
        fail_msg("decode: %d %s", rc, why);
    assert_int_equal(out->type, in->type);
    assert_int_equal(proto_encode(out, &b, NULL, 0), 0);
    assert_int_equal(a.size, b.size);
    assert_memory_equal(a.data, b.data, a.size);
    size_t n = a.size;
    msgpack_sbuffer_destroy(&a);
    msgpack_sbuffer_destroy(&b);
    return n;
}

static void fill(char *dst, size_t n, char c)
{
    memset(dst, c, n);
    dst[n] = '\0';
}

static int decode_bytes(const void *p, size_t n, char *why, size_t why_len)
{
    struct proto_msg m;
    int rc = proto_decode(p, n, &m, why, why_len);
    proto_msg_free(&m);
    return rc;
}

static int decode_sb(const msgpack_sbuffer *sb, char *why, size_t why_len)
{
    return decode_bytes(sb->data, sb->size, why, why_len);
}

static void pk_cstr(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

/* A valid submit map, with field `key` packed by `val` instead (NULL: left
 * out); a `key` that is not a submit field is added. */
static const char *const submit_keys[] = {
    "id", "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p",
    "repetition_penalty", "seed", "has_seed", "stop", "skip", "top_logprobs", "priority",
};
#define N_SUBMIT_KEYS (sizeof submit_keys / sizeof submit_keys[0])

static void pack_default(msgpack_packer *pk, const char *k)
{
    if (!strcmp(k, "prompt"))
        pk_cstr(pk, "Hello");
    else if (!strcmp(k, "stop")) {
        msgpack_pack_array(pk, 1);
        pk_cstr(pk, "\n\n");
    } else if (!strcmp(k, "has_seed"))
        msgpack_pack_true(pk);
    else if (!strcmp(k, "temperature") || !strcmp(k, "top_p") || !strcmp(k, "min_p") ||
             !strcmp(k, "repetition_penalty"))
        msgpack_pack_float(pk, 0.5f);
    else
        msgpack_pack_uint32(pk, 7);
}

static void pack_submit(msgpack_sbuffer *sb, const char *key, void (*val)(msgpack_packer *))
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    bool known = false;
    for (size_t i = 0; i < N_SUBMIT_KEYS; i++)
        known |= key && !strcmp(key, submit_keys[i]);
    size_t n = 1 + N_SUBMIT_KEYS + (key && !known) - (key && known && !val);
    msgpack_pack_map(&pk, n);
    pk_cstr(&pk, "t");
    pk_cstr(&pk, "submit");
    for (size_t i = 0; i < N_SUBMIT_KEYS; i++) {
        const char *k = submit_keys[i];
        if (key && !strcmp(key, k)) {
            if (val) {
                pk_cstr(&pk, k);
                val(&pk);
            }
            continue;
        }
        pk_cstr(&pk, k);
        pack_default(&pk, k);
    }
    if (key && !known) {
        pk_cstr(&pk, key);
        val(&pk);
    }
}

/* The decode result of a submit with one field replaced. */
static int submit_with(const char *key, void (*val)(msgpack_packer *), char *why, size_t why_len)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    pack_submit(&sb, key, val);
    int rc = decode_sb(&sb, why, why_len);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

static void v_neg(msgpack_packer *pk) { msgpack_pack_int64(pk, -1); }
static void v_2p40(msgpack_packer *pk) { msgpack_pack_uint64(pk, 1ull << 40); }
static void v_21(msgpack_packer *pk) { msgpack_pack_uint32(pk, 21); }
static void v_20(msgpack_packer *pk) { msgpack_pack_uint32(pk, 20); }
static void v_str(msgpack_packer *pk) { pk_cstr(pk, "x"); }
static void v_nil(msgpack_packer *pk) { msgpack_pack_nil(pk); }
static void v_int3(msgpack_packer *pk) { msgpack_pack_int32(pk, 3); }
static void v_negint(msgpack_packer *pk) { msgpack_pack_int32(pk, -2); }
static void v_f64(msgpack_packer *pk) { msgpack_pack_double(pk, 0.25); }
static void v_nan(msgpack_packer *pk) { msgpack_pack_double(pk, NAN); }
static void v_inf(msgpack_packer *pk) { msgpack_pack_float(pk, INFINITY); }
static void v_huge(msgpack_packer *pk) { msgpack_pack_double(pk, 1e300); }
static void v_float_for_int(msgpack_packer *pk) { msgpack_pack_double(pk, 3.0); }
static void v_int_bool(msgpack_packer *pk) { msgpack_pack_uint32(pk, 1); }
static void v_i32_over(msgpack_packer *pk) { msgpack_pack_int64(pk, (int64_t)INT32_MAX + 1); }
static void v_i32_under(msgpack_packer *pk) { msgpack_pack_int64(pk, (int64_t)INT32_MIN - 1); }
static void v_stop9(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 9);
    for (int i = 0; i < 9; i++)
        pk_cstr(pk, "s");
}
static void v_stop_long(msgpack_packer *pk)
{
    char s[66];
    fill(s, 65, 'a');
    msgpack_pack_array(pk, 1);
    pk_cstr(pk, s);
}
static void v_stop_empty(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    pk_cstr(pk, "");
}
static void v_stop_nul(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    msgpack_pack_str(pk, 3);
    msgpack_pack_str_body(pk, "a\0b", 3);
}
static void v_stop_not_str(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    msgpack_pack_uint32(pk, 1);
}
static void v_prompt_big(msgpack_packer *pk)
{
    static char big[PROTO_MAX_PROMPT + 1];
    msgpack_pack_bin(pk, sizeof big);
    msgpack_pack_bin_body(pk, big, sizeof big);
}
static void v_tokens_big(msgpack_packer *pk)
{
    msgpack_pack_array(pk, PROTO_MAX_TOKENS + 1);
    for (int i = 0; i <= PROTO_MAX_TOKENS; i++)
        msgpack_pack_uint32(pk, 1);
}
static void v_tokens_neg(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 3);
    msgpack_pack_uint32(pk, 1);
    msgpack_pack_int32(pk, -5);
    msgpack_pack_uint32(pk, 1);
}
static void v_tokens_over_i32(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 1);
    msgpack_pack_uint64(pk, (uint64_t)INT32_MAX + 1);
}
static void v_tokens_not_array(msgpack_packer *pk) { msgpack_pack_uint32(pk, 1); }
static void v_deep(msgpack_packer *pk)
{
    for (int i = 0; i < PROTO_MAX_DEPTH; i++)
        msgpack_pack_array(pk, 1);
    msgpack_pack_nil(pk);
}
static void v_shallow_enough(msgpack_packer *pk)
{
    /* the root map is one level: this makes PROTO_MAX_DEPTH in all */
    for (int i = 0; i < PROTO_MAX_DEPTH - 1; i++)
        msgpack_pack_array(pk, 1);
    msgpack_pack_nil(pk);
}
static void v_nils(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 70000);
    for (int i = 0; i < 70000; i++)
        msgpack_pack_nil(pk);
}
static void v_ext(msgpack_packer *pk)
{
    msgpack_pack_ext(pk, 4, 7);
    msgpack_pack_ext_body(pk, "abcd", 4);
}

/* --- names ------------------------------------------------------------------ */

static void test_type_names_map_both_ways(void **state)
{
    for (int t = 1; t < PROTO_TYPE_COUNT; t++) {
        const char *n = proto_type_name((enum proto_type)t);
        assert_non_null(n);
        assert_int_equal(proto_type_from_name(n), t);
    }
    assert_string_equal(proto_type_name(PROTO_SET_BATCH), "set_batch");
    assert_null(proto_type_name(PROTO_TYPE_COUNT));
    assert_int_equal(proto_type_from_name("nope"), PROTO_NONE);
    assert_string_equal(proto_role_name(PROTO_ROLE_GATEWAY), "gateway");
    assert_null(proto_role_name((enum proto_role)0));
    assert_string_equal(proto_finish_name(PROTO_FINISH_LENGTH), "length");
    assert_null(proto_finish_name(PROTO_FINISH_COUNT));
}

/* --- round trips ------------------------------------------------------------ */

static void test_submit_round_trips_at_max_sizes(void **state)
{
    struct proto_msg m = { .type = PROTO_SUBMIT }, d;
    struct proto_submit *s = &m.u.submit;
    char *prompt = malloc(PROTO_MAX_PROMPT);
    int32_t *toks = malloc(PROTO_MAX_TOKENS * sizeof *toks);
    for (uint32_t i = 0; i < PROTO_MAX_PROMPT; i++)
        prompt[i] = (char)(i * 31 + 7); /* every byte value, NULs included */
    for (uint32_t i = 0; i < PROTO_MAX_TOKENS; i++)
        toks[i] = i == 0 ? INT32_MAX : (int32_t)(i * 2654435761u % 200000);
    s->id = UINT64_MAX;
    s->prompt = prompt;
    s->prompt_len = PROTO_MAX_PROMPT;
    s->prompt_tokens = toks;
    s->n_prompt_tokens = PROTO_MAX_TOKENS;
    s->max_tokens = UINT32_MAX;
    s->temperature = 0.7f;
    s->top_p = 0.95f;
    s->top_k = 40;
    s->min_p = 0.05f;
    s->repetition_penalty = 1.1f;
    s->presence_penalty = -1.5f;
    s->frequency_penalty = 2.0f;
    s->seed = UINT64_MAX - 1;
    s->has_seed = true;
    s->n_stop = PROTO_MAX_STOP;
    for (int i = 0; i < PROTO_MAX_STOP; i++)
        fill(s->stop[i], PROTO_STOP_LEN, (char)('a' + i));
    s->skip = 12345;
    s->top_logprobs = PROTO_MAX_TOP;
    s->priority = INT32_MIN;

    size_t n = round_trip(&m, &d);
    assert_true(n <= PROTO_MAX_MSG);
    const struct proto_submit *o = &d.u.submit;
    assert_true(o->id == UINT64_MAX);
    assert_int_equal(o->prompt_len, PROTO_MAX_PROMPT);
    assert_memory_equal(o->prompt, prompt, PROTO_MAX_PROMPT);
    assert_int_equal(o->prompt[PROTO_MAX_PROMPT], '\0');
    assert_int_equal(o->n_prompt_tokens, PROTO_MAX_TOKENS);
    assert_memory_equal(o->prompt_tokens, toks, PROTO_MAX_TOKENS * sizeof *toks);
    assert_int_equal(o->max_tokens, UINT32_MAX);
    assert_true(o->temperature == 0.7f && o->top_p == 0.95f && o->min_p == 0.05f &&
                o->repetition_penalty == 1.1f);
    assert_true(o->presence_penalty == -1.5f && o->frequency_penalty == 2.0f);
    assert_int_equal(o->top_k, 40);
    assert_true(o->seed == UINT64_MAX - 1);
    assert_true(o->has_seed);
    assert_int_equal(o->n_stop, PROTO_MAX_STOP);
    for (int i = 0; i < PROTO_MAX_STOP; i++)
        assert_string_equal(o->stop[i], s->stop[i]);
    assert_int_equal(o->skip, 12345);
    assert_int_equal(o->top_logprobs, PROTO_MAX_TOP);
    assert_int_equal(o->priority, INT32_MIN);
    proto_msg_free(&d);
    assert_null(d.u.submit.prompt);
    proto_msg_free(&d); /* twice is harmless */
    free(prompt);
    free(toks);
}

static void v_false(msgpack_packer *pk) { msgpack_pack_false(pk); }

/* parse_special is optional and true when absent (older senders); an explicit
 * false survives a round trip; a non-boolean is refused. */
static void test_submit_parse_special_defaults_to_true(void **state)
{
    msgpack_sbuffer sb;
    struct proto_msg d;
    msgpack_sbuffer_init(&sb);
    pack_submit(&sb, NULL, NULL);
    assert_int_equal(proto_decode(sb.data, sb.size, &d, NULL, 0), 0);
    assert_true(d.u.submit.parse_special);
    proto_msg_free(&d);
    msgpack_sbuffer_destroy(&sb);

    msgpack_sbuffer_init(&sb);
    pack_submit(&sb, "parse_special", v_false);
    assert_int_equal(proto_decode(sb.data, sb.size, &d, NULL, 0), 0);
    assert_false(d.u.submit.parse_special);
    proto_msg_free(&d);
    msgpack_sbuffer_destroy(&sb);

    assert_int_equal(submit_with("parse_special", v_int_bool, NULL, 0), RILL_E_BAD_REQUEST);

    struct proto_msg m = { .type = PROTO_SUBMIT };
    m.u.submit.parse_special = false;
    round_trip(&m, &d);
    assert_false(d.u.submit.parse_special);
    proto_msg_free(&d);
    m.u.submit.parse_special = true;
    round_trip(&m, &d);
    assert_true(d.u.submit.parse_special);
    proto_msg_free(&d);
}

static void v_neg_half(msgpack_packer *pk) { msgpack_pack_float(pk, -0.5f); }

/* presence_penalty and frequency_penalty are optional: absent is 0 (older
 * senders), 0 is not sent, any other value survives the round trip. */
static void test_submit_penalties_round_trip_and_default_to_zero(void **state)
{
    struct proto_msg m = { .type = PROTO_SUBMIT }, d;
    m.u.submit.presence_penalty = -2.0f;
    m.u.submit.frequency_penalty = 1.25f;
    size_t with = round_trip(&m, &d);
    assert_true(d.u.submit.presence_penalty == -2.0f && d.u.submit.frequency_penalty == 1.25f);
    proto_msg_free(&d);

    m.u.submit.presence_penalty = 0;
    m.u.submit.frequency_penalty = 0.5f;
    round_trip(&m, &d);
    assert_true(d.u.submit.presence_penalty == 0 && d.u.submit.frequency_penalty == 0.5f);
    proto_msg_free(&d);

    m.u.submit.frequency_penalty = 0;
    size_t without = round_trip(&m, &d);
    assert_true(d.u.submit.presence_penalty == 0 && d.u.submit.frequency_penalty == 0);
    proto_msg_free(&d);
    /* both keys and their floats are left out ("presence_penalty" + a float32) */
    assert_true(with >= without + strlen("presence_penalty") + strlen("frequency_penalty") + 2 * 5);

    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    pack_submit(&sb, NULL, NULL);
    assert_int_equal(proto_decode(sb.data, sb.size, &d, NULL, 0), 0);
    assert_true(d.u.submit.presence_penalty == 0 && d.u.submit.frequency_penalty == 0);
    proto_msg_free(&d);
    msgpack_sbuffer_destroy(&sb);

    msgpack_sbuffer_init(&sb);
    pack_submit(&sb, "frequency_penalty", v_neg_half);
    assert_int_equal(proto_decode(sb.data, sb.size, &d, NULL, 0), 0);
    assert_true(d.u.submit.frequency_penalty == -0.5f && d.u.submit.presence_penalty == 0);
    proto_msg_free(&d);
    msgpack_sbuffer_destroy(&sb);
    assert_int_equal(submit_with("presence_penalty", v_false, NULL, 0), RILL_E_BAD_REQUEST);
}

static void test_submit_round_trips_empty(void **state)
{
    struct proto_msg m = { .type = PROTO_SUBMIT }, d;
    size_t n = round_trip(&m, &d);
    assert_true(n < 200);
    const struct proto_submit *o = &d.u.submit;
    assert_true(o->id == 0);
    assert_non_null(o->prompt); /* decoded prompts are never NULL */
    assert_int_equal(o->prompt_len, 0);
    assert_string_equal(o->prompt, "");
    assert_null(o->prompt_tokens);
    assert_int_equal(o->n_prompt_tokens, 0);
    assert_int_equal(o->n_stop, 0);
    assert_int_equal(o->priority, 0);
    assert_false(o->has_seed);
    proto_msg_free(&d);
}

static void test_request_replies_round_trip(void **state)
{
    struct proto_msg d;
    uint64_t ids[] = { 0, 1, 1ull << 32, UINT64_MAX };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        struct proto_msg c = { .type = PROTO_CANCEL, .u.cancel.id = ids[i] };
        round_trip(&c, &d);
        assert_true(d.u.cancel.id == ids[i]);
        proto_msg_free(&d);

        struct proto_msg a = { .type = PROTO_ACCEPTED };
        a.u.accepted.id = ids[i];
        a.u.accepted.queue_position = (uint32_t)(UINT32_MAX - i);
        round_trip(&a, &d);
        assert_true(d.u.accepted.id == ids[i]);
        assert_int_equal(d.u.accepted.queue_position, UINT32_MAX - i);
        proto_msg_free(&d);
    }
    struct proto_msg r = { .type = PROTO_REJECTED };
    r.u.rejected.id = UINT64_MAX;
    r.u.rejected.code = RILL_E_OVERLOADED;
    fill(r.u.rejected.message, PROTO_REASON_LEN, 'm');
    round_trip(&r, &d);
    assert_true(d.u.rejected.id == UINT64_MAX);
    assert_int_equal(d.u.rejected.code, RILL_E_OVERLOADED);
    assert_string_equal(d.u.rejected.message, r.u.rejected.message);
    proto_msg_free(&d);

    r.u.rejected.message[0] = '\0';
    r.u.rejected.code = INT32_MIN;
    round_trip(&r, &d);
    assert_string_equal(d.u.rejected.message, "");
    assert_int_equal(d.u.rejected.code, INT32_MIN);
}

static void test_hello_round_trips_for_every_role(void **state)
{
    for (int role = PROTO_ROLE_WORKER; role <= PROTO_ROLE_SUPERVISOR; role++) {
        struct proto_msg m = { .type = PROTO_HELLO }, d;
        struct proto_hello *h = &m.u.hello;
        h->role = (enum proto_role)role;
        fill(h->id, PROTO_ID_LEN, 'i');
        h->pid = role == PROTO_ROLE_WORKER ? INT32_MAX : -1;
        if (role != PROTO_ROLE_GATEWAY)
            fill(h->ring, PROTO_RING_LEN, 'r');
        fill(h->endpoint, PROTO_ENDPOINT_LEN, 'e');
        fill(h->model, PROTO_MODEL_LEN, 'M');
        h->n_ctx = 4096;
        h->max_batch = UINT32_MAX;
        h->epoch = UINT64_MAX;
        round_trip(&m, &d);
        const struct proto_hello *o = &d.u.hello;
        assert_int_equal(o->role, role);
        assert_string_equal(o->id, h->id);
        assert_int_equal(o->pid, h->pid);
        assert_string_equal(o->ring, h->ring);
        assert_string_equal(o->endpoint, h->endpoint);
        assert_string_equal(o->model, h->model);
        assert_int_equal(o->n_ctx, 4096);
        assert_int_equal(o->max_batch, UINT32_MAX);
        assert_true(o->epoch == UINT64_MAX);
        proto_msg_free(&d);
    }
}

static void heartbeat_example(struct proto_msg *m, unsigned n_metrics)
{
    memset(m, 0, sizeof *m);
    m->type = PROTO_HEARTBEAT;
    struct proto_heartbeat *h = &m->u.heartbeat;
    strcpy(h->id, "w0");
    h->seq = UINT64_MAX;
    h->active = 17;
    h->queued = 3;
    h->step_ms = 12.5f;
    h->step_p50_ms = 11.0f;
    h->step_p99_ms = 40.25f;
    h->tokens_per_s = 1234.5f;
    h->prefill_tokens_per_s = 9876.0f;
    h->rss_bytes = 3ull << 30;
    h->kv_bytes = 1ull << 33;
    h->kv_capacity_bytes = UINT64_MAX;
    h->batch_cap = 16;
    h->batch_limit = 64;
    h->preemptions = 2;
    h->tokens_total = 1ull << 40;
    h->requests_total = 99;
    h->pressure_level = PRESSURE_EMERGENCY;
    h->state = PROTO_STATE_DRAINING;
    h->n_metrics = (uint8_t)n_metrics;
    for (unsigned i = 0; i < n_metrics; i++) {
        snprintf(h->metrics[i].name, sizeof h->metrics[i].name, "%0*u", PROTO_METRIC_LEN, i);
        h->metrics[i].value = i == 0 ? -1e300 : i * 0.1;
    }
}

static void test_heartbeat_round_trips_with_and_without_metrics(void **state)
{
    unsigned counts[] = { 0, 1, PROTO_MAX_METRICS };
    for (size_t k = 0; k < 3; k++) {
        struct proto_msg m, d;
        heartbeat_example(&m, counts[k]);
        round_trip(&m, &d);
        const struct proto_heartbeat *h = &m.u.heartbeat, *o = &d.u.heartbeat;
        assert_string_equal(o->id, "w0");
        assert_true(o->seq == UINT64_MAX && o->kv_capacity_bytes == UINT64_MAX);
        assert_int_equal(o->active, 17);
        assert_int_equal(o->queued, 3);
        assert_true(o->step_ms == 12.5f && o->step_p50_ms == 11.0f && o->step_p99_ms == 40.25f);
        assert_true(o->tokens_per_s == 1234.5f && o->prefill_tokens_per_s == 9876.0f);
        assert_true(o->rss_bytes == h->rss_bytes && o->kv_bytes == h->kv_bytes);
        assert_int_equal(o->batch_cap, 16);
        assert_int_equal(o->batch_limit, 64);
        assert_true(o->preemptions == 2 && o->tokens_total == 1ull << 40 && o->requests_total == 99);
        assert_int_equal(o->pressure_level, PRESSURE_EMERGENCY);
        assert_int_equal(o->state, PROTO_STATE_DRAINING);
        assert_int_equal(o->n_metrics, counts[k]);
        for (unsigned i = 0; i < counts[k]; i++) {
            assert_string_equal(o->metrics[i].name, h->metrics[i].name);
            assert_true(o->metrics[i].value == h->metrics[i].value);
        }
        proto_msg_free(&d);
    }
}

static void test_control_commands_round_trip(void **state)
{
    struct proto_msg d;
    struct proto_msg sb = { .type = PROTO_SET_BATCH };
    sb.u.set_batch.max_batch = UINT32_MAX;
    fill(sb.u.set_batch.reason, PROTO_NOTE_LEN, 'x');
    round_trip(&sb, &d);
    assert_int_equal(d.u.set_batch.max_batch, UINT32_MAX);
    assert_string_equal(d.u.set_batch.reason, sb.u.set_batch.reason);

    struct proto_msg p = { .type = PROTO_PRESSURE };
    p.u.pressure.level = PRESSURE_CRITICAL;
    strcpy(p.u.pressure.reason, "psi some avg10=42");
    round_trip(&p, &d);
    assert_int_equal(d.u.pressure.level, PRESSURE_CRITICAL);
    assert_string_equal(d.u.pressure.reason, "psi some avg10=42");

    struct proto_msg dr = { .type = PROTO_DRAIN }, sh = { .type = PROTO_SHUTDOWN };
    assert_true(round_trip(&dr, &d) < 16);
    assert_int_equal(d.type, PROTO_DRAIN);
    assert_true(round_trip(&sh, &d) < 16);
    assert_int_equal(d.type, PROTO_SHUTDOWN);
}

static void test_workers_list_round_trips_full_and_empty(void **state)
{
    static struct proto_msg m, d; /* static: keep the stack small */
    memset(&m, 0, sizeof m);
    m.type = PROTO_WORKERS;
    round_trip(&m, &d);
    assert_int_equal(d.u.workers.n_workers, 0);

    m.u.workers.n_workers = PROTO_MAX_WORKERS;
    for (int i = 0; i < PROTO_MAX_WORKERS; i++) {
        struct proto_worker_info *w = &m.u.workers.workers[i];
        snprintf(w->id, sizeof w->id, "w%d", i);
        if (i % 2)
            fill(w->ring, PROTO_RING_LEN, 'r');
        fill(w->endpoint, PROTO_ENDPOINT_LEN, 'e');
        w->state = (uint8_t)(i % 5);
        w->epoch = i == 0 ? UINT64_MAX : (uint64_t)i;
    }
    round_trip(&m, &d);
    assert_int_equal(d.u.workers.n_workers, PROTO_MAX_WORKERS);
    for (int i = 0; i < PROTO_MAX_WORKERS; i++) {
        const struct proto_worker_info *a = &m.u.workers.workers[i], *b = &d.u.workers.workers[i];
        assert_string_equal(a->id, b->id);
        assert_string_equal(a->ring, b->ring);
        assert_string_equal(a->endpoint, b->endpoint);
        assert_int_equal(a->state, b->state);
        assert_true(a->epoch == b->epoch);
    }
}

/* --- lenient where it should be --------------------------------------------- */

static void test_decode_accepts_integers_and_doubles_for_floats(void **state)
{
    assert_int_equal(submit_with("temperature", v_int3, NULL, 0), 0);
    assert_int_equal(submit_with("min_p", v_negint, NULL, 0), 0);
    assert_int_equal(submit_with("top_p", v_f64, NULL, 0), 0);

    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    pack_submit(&sb, "temperature", v_int3);
    struct proto_msg m;
    assert_int_equal(proto_decode(sb.data, sb.size, &m, NULL, 0), 0);
    assert_true(m.u.submit.temperature == 3.0f);
    assert_true(m.u.submit.top_p == 0.5f);
    proto_msg_free(&m);
    msgpack_sbuffer_destroy(&sb);
}

static void test_decode_ignores_unknown_keys_and_ext_values(void **state)
{
    assert_int_equal(submit_with("future_field", v_str, NULL, 0), 0);
    assert_int_equal(submit_with("future_ext", v_ext, NULL, 0), 0);
    assert_int_equal(submit_with("future_nested", v_shallow_enough, NULL, 0), 0);
}

static void test_decode_leaves_optional_fields_zero(void **state)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    pack_submit(&sb, "priority", NULL);
    struct proto_msg m;
    assert_int_equal(proto_decode(sb.data, sb.size, &m, NULL, 0), 0);
    assert_int_equal(m.u.submit.priority, 0);
    assert_null(m.u.submit.prompt_tokens);
    assert_string_equal(m.u.submit.prompt, "Hello");
    assert_string_equal(m.u.submit.stop[0], "\n\n");
    proto_msg_free(&m);
    msgpack_sbuffer_destroy(&sb);
}

/* --- malformed input -------------------------------------------------------- */

static void test_decode_rejects_wrong_types(void **state)
{
    char why[128];
    assert_int_equal(submit_with("id", v_str, why, sizeof why), RILL_E_BAD_REQUEST);
    assert_string_equal(why, "submit.id: expected an integer");
    assert_int_equal(submit_with("max_tokens", v_float_for_int, NULL, 0), RILL_E_BAD_REQUEST);
    assert_int_equal(submit_with("temperature", v_str, NULL, 0), RILL_E_BAD_REQUEST);
    assert_int_equal(submit_with("has_seed", v_int_bool, NULL, 0), RILL_E_BAD_REQUEST);
    assert_int_equal(submit_with("prompt", v_int3, NULL, 0), RILL_E_BAD_REQUEST);
    assert_int_equal(submit_with("stop", v_str, NULL, 0), RILL_E_BAD_REQUEST);
    assert_int_equal(submit_with("stop", v_stop_not_str, NULL, 0), RILL_E_BAD_REQUEST);
    assert_int_equal(submit_with("prompt_tokens", v_tokens_not_array, NULL, 0), RILL_E_BAD_REQUEST);
    assert_int_equal(submit_with("seed", v_nil, NULL, 0), RILL_E_BAD_REQUEST);
}

static void test_decode_rejects_missing_required_fields(void **state)
{
    char why[128];
    for (size_t i = 0; i < N_SUBMIT_KEYS; i++) {
        int rc = submit_with(submit_keys[i], NULL, why, sizeof why);
        if (!strcmp(submit_keys[i], "priority")) {
            assert_int_equal(rc, 0);
        } else {
            assert_int_equal(rc, RILL_E_BAD_REQUEST);
            assert_non_null(strstr(why, submit_keys[i]));
            assert_non_null(strstr(why, "missing"));
        }
    }
}

static void test_decode_rejects_out_of_range_integers(void **state)
{
    char why[128];
    assert_int_equal(submit_with("max_tokens", v_2p40, why, sizeof why), RILL_E_BAD_REQUEST);
    assert_string_equal(why, "submit.max_tokens: integer out of range");
    assert_int_equal(submit_with("id", v_neg, why, sizeof why), RILL_E_BAD_REQUEST);
    assert_string_equal(why, "submit.id: negative integer");
    assert_int_equal(submit_with("skip", v_neg, NULL, 0), RILL_E_BAD_REQUEST);
    assert_int_equal(submit_with("top_logprobs", v_21, NULL, 0), RILL_E_BAD_REQUEST);
    assert_int_equal(submit_with("top_logprobs", v_20, NULL, 0), 0);
    assert_int_equal(submit_with("priority", v_i32_over, NULL, 0), RILL_E_BAD_REQUEST);
    assert_int_equal(submit_with("priority", v_i32_under, NULL, 0), RILL_E_BAD_REQUEST);
    assert_int_equal(submit_with("priority", v_neg, NULL, 0), 0);
    assert_int_equal(submit_with("prompt_tokens", v_tokens_neg, NULL, 0), RILL_E_BAD_REQUEST);
    assert_int_equal(submit_with("prompt_tokens", v_tokens_over_i32, NULL, 0), RILL_E_BAD_REQUEST);

    /* u8 fields with a named range */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    pk_cstr(&pk, "t");
    pk_cstr(&pk, "pressure");
    pk_cstr(&pk, "level");
    msgpack_pack_uint32(&pk, 4);
    pk_cstr(&pk, "reason");
    pk_cstr(&pk, "");
    assert_int_equal(decode_sb(&sb, why, sizeof why), RILL_E_BAD_REQUEST);
    assert_string_equal(why, "pressure.level: integer out of range");
    sb.size = 0;
    msgpack_pack_map(&pk, 4);
    pk_cstr(&pk, "t");
    pk_cstr(&pk, "rejected");
    pk_cstr(&pk, "id");
    msgpack_pack_uint32(&pk, 1);
    pk_cstr(&pk, "code");
    msgpack_pack_uint32(&pk, 0); /* an error code is negative */
    pk_cstr(&pk, "message");
    pk_cstr(&pk, "");
    assert_int_equal(decode_sb(&sb, NULL, 0), RILL_E_BAD_REQUEST);
    msgpack_sbuffer_destroy(&sb);
}

static void test_decode_rejects_non_finite_and_unrepresentable_floats(void **state)
{
    assert_int_equal(submit_with("temperature", v_nan, NULL, 0), RILL_E_BAD_REQUEST);
    assert_int_equal(submit_with("top_p", v_inf, NULL, 0), RILL_E_BAD_REQUEST);
    assert_int_equal(submit_with("min_p", v_huge, NULL, 0), RILL_E_BAD_REQUEST);
}

static void test_decode_rejects_oversized_strings_and_arrays(void **state)
{
    char why[128];
    assert_int_equal(submit_with("stop", v_stop9, why, sizeof why), RILL_E_TOO_LARGE);
    assert_string_equal(why, "submit.stop: too many stop strings");
    assert_int_equal(submit_with("stop", v_stop_long, NULL, 0), RILL_E_TOO_LARGE);
    assert_int_equal(submit_with("prompt", v_prompt_big, NULL, 0), RILL_E_TOO_LARGE);
    assert_int_equal(submit_with("prompt_tokens", v_tokens_big, NULL, 0), RILL_E_TOO_LARGE);

    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    char s[300];
    fill(s, PROTO_NOTE_LEN + 1, 'r');
    msgpack_pack_map(&pk, 3);
    pk_cstr(&pk, "t");
    pk_cstr(&pk, "set_batch");
    pk_cstr(&pk, "max_batch");
    msgpack_pack_uint32(&pk, 4);
    pk_cstr(&pk, "reason");
    pk_cstr(&pk, s);
    assert_int_equal(decode_sb(&sb, why, sizeof why), RILL_E_TOO_LARGE);
    assert_string_equal(why, "set_batch.reason: string too long");

    /* 65 workers */
    sb.size = 0;
    msgpack_pack_map(&pk, 2);
    pk_cstr(&pk, "t");
    pk_cstr(&pk, "workers");
    pk_cstr(&pk, "workers");
    msgpack_pack_array(&pk, PROTO_MAX_WORKERS + 1);
    for (int i = 0; i <= PROTO_MAX_WORKERS; i++) {
        msgpack_pack_map(&pk, 5);
        pk_cstr(&pk, "id"); pk_cstr(&pk, "w");
        pk_cstr(&pk, "ring"); pk_cstr(&pk, "");
        pk_cstr(&pk, "endpoint"); pk_cstr(&pk, "");
        pk_cstr(&pk, "state"); msgpack_pack_uint32(&pk, 2);
        pk_cstr(&pk, "epoch"); msgpack_pack_uint32(&pk, 2);
    }
    assert_int_equal(decode_sb(&sb, NULL, 0), RILL_E_TOO_LARGE);

    /* a worker entry with a too long endpoint names its index */
    sb.size = 0;
    fill(s, PROTO_ENDPOINT_LEN + 1, 'e');
    msgpack_pack_map(&pk, 2);
    pk_cstr(&pk, "t");
    pk_cstr(&pk, "workers");
    pk_cstr(&pk, "workers");
    msgpack_pack_array(&pk, 2);
    for (int i = 0; i < 2; i++) {
        msgpack_pack_map(&pk, 5);
        pk_cstr(&pk, "id"); pk_cstr(&pk, "w");
        pk_cstr(&pk, "ring"); pk_cstr(&pk, "");
        pk_cstr(&pk, "endpoint"); pk_cstr(&pk, i == 1 ? s : "");
        pk_cstr(&pk, "state"); msgpack_pack_uint32(&pk, 2);
        pk_cstr(&pk, "epoch"); msgpack_pack_uint32(&pk, 2);
    }
    assert_int_equal(decode_sb(&sb, why, sizeof why), RILL_E_TOO_LARGE);
    assert_string_equal(why, "workers.workers[1].endpoint: string too long");

    /* 65 metrics */
    struct proto_msg hb;
    heartbeat_example(&hb, PROTO_MAX_METRICS);
    sb.size = 0;
    assert_int_equal(proto_encode(&hb, &sb, NULL, 0), 0);
    /* the metrics map is the last field: bump its count from 64 to 65 and
     * append one entry (map16 header 0xde 0x00 0x40). */
    char *hdr = memmem(sb.data, sb.size, "\xa7" "metrics\xde\x00\x40", 11);
    assert_non_null(hdr);
    hdr[10] = 0x41;
    pk_cstr(&pk, "extra");
    msgpack_pack_double(&pk, 1.0);
    assert_int_equal(decode_sb(&sb, why, sizeof why), RILL_E_TOO_LARGE);
    assert_string_equal(why, "heartbeat.metrics: too many metrics");
    msgpack_sbuffer_destroy(&sb);

    /* input over PROTO_MAX_MSG, before looking at it */
    assert_int_equal(decode_bytes("", (size_t)PROTO_MAX_MSG + 1, NULL, 0), RILL_E_TOO_LARGE);
}

static void test_decode_rejects_bad_strings(void **state)
{
    assert_int_equal(submit_with("stop", v_stop_empty, NULL, 0), RILL_E_BAD_REQUEST);
    assert_int_equal(submit_with("stop", v_stop_nul, NULL, 0), RILL_E_BAD_REQUEST);

    struct proto_msg hb;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    heartbeat_example(&hb, 2);
    strcpy(hb.u.heartbeat.metrics[1].name, hb.u.heartbeat.metrics[0].name);
    char why[128];
    assert_int_equal(proto_encode(&hb, &sb, why, sizeof why), RILL_E_BAD_REQUEST);
    assert_string_equal(why, "heartbeat.metrics: repeated metric name");
    /* the same on the decode side, by patching a valid encoding */
    strcpy(hb.u.heartbeat.metrics[1].name, "b");
    strcpy(hb.u.heartbeat.metrics[0].name, "a");
    assert_int_equal(proto_encode(&hb, &sb, NULL, 0), 0);
    char *b = memmem(sb.data, sb.size, "\xa1" "b", 2);
    assert_non_null(b);
    b[1] = 'a';
    assert_int_equal(decode_sb(&sb, NULL, 0), RILL_E_BAD_REQUEST);

    /* unknown role, empty id */
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    for (int k = 0; k < 2; k++) {
        sb.size = 0;
        msgpack_pack_map(&pk, 10);
        pk_cstr(&pk, "t"); pk_cstr(&pk, "hello");
        pk_cstr(&pk, "role"); pk_cstr(&pk, k == 0 ? "client" : "worker");
        pk_cstr(&pk, "id"); pk_cstr(&pk, k == 0 ? "w0" : "");
        pk_cstr(&pk, "pid"); msgpack_pack_int32(&pk, 1);
        pk_cstr(&pk, "ring"); pk_cstr(&pk, "");
        pk_cstr(&pk, "endpoint"); pk_cstr(&pk, "");
        pk_cstr(&pk, "model"); pk_cstr(&pk, "");
        pk_cstr(&pk, "n_ctx"); msgpack_pack_uint32(&pk, 1);
        pk_cstr(&pk, "max_batch"); msgpack_pack_uint32(&pk, 1);
        pk_cstr(&pk, "epoch"); msgpack_pack_uint32(&pk, 1);
        assert_int_equal(decode_sb(&sb, why, sizeof why), RILL_E_BAD_REQUEST);
        assert_string_equal(why, k == 0 ? "hello.role: unknown role" : "hello.id: empty string");
    }
    msgpack_sbuffer_destroy(&sb);
}

static void test_decode_rejects_bad_message_shapes(void **state)
{
    char why[128];
    /* hand-written msgpack */
#define CASE(lit, w) { lit, sizeof(lit) - 1, w }
    static const struct {
        const char *bytes;
        size_t n;
        const char *why;
    } cases[] = {
        CASE("\x81\xa1t\xa4nope", "message.t: unknown type"),
        CASE("\x81\xa1t\x01", "message.t: expected a string"),
        CASE("\x81\xa2id\x01", "message.t: missing"),
        CASE("\x80", "message.t: missing"),
        CASE("\x91\x01", "message: not a map"),
        CASE("\xa6" "cancel", "message: not a map"),
        /* a repeated key */
        CASE("\x83\xa1t\xa6" "cancel\xa2id\x01\xa2id\x02", "cancel.id: repeated key"),
        CASE("\x83\xa1t\xa6" "cancel\xa1t\xa6" "cancel\xa2id\x01", "cancel.t: repeated key"),
        /* a non-string key */
        CASE("\x83\xa1t\xa6" "cancel\xa2id\x01\x01\x01", "cancel: a key is not a string"),
        /* trailing garbage after a valid cancel */
        CASE("\x82\xa1t\xa6" "cancel\xa2id\x01\xc0", "message: trailing bytes"),
        CASE("\x82\xa1t\xa6" "cancel\xa2id\xc1", "message: invalid msgpack byte 0xc1"),
        CASE("", "message: empty message"),
    };
#undef CASE
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(decode_bytes(cases[i].bytes, cases[i].n, why, sizeof why), RILL_E_BAD_REQUEST);
        assert_string_equal(why, cases[i].why);
    }
    /* the valid cancel the cases above are built on */
    assert_int_equal(decode_bytes("\x82\xa1t\xa6" "cancel\xa2id\x01", 14, NULL, 0), 0);
    /* nested too deep (counting the root map) */
    assert_int_equal(submit_with("future", v_deep, why, sizeof why), RILL_E_BAD_REQUEST);
    assert_string_equal(why, "message: nested too deep");
}

/* --- encoding checks ------------------------------------------------------- */

static void test_encode_rejects_what_decode_would_and_appends_nothing(void **state)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_sbuffer_write(&sb, "keep", 4);
    char why[128];

    struct proto_msg m = { .type = PROTO_SUBMIT };
    m.u.submit.temperature = NAN;
    assert_int_equal(proto_encode(&m, &sb, why, sizeof why), RILL_E_BAD_REQUEST);
    assert_string_equal(why, "submit.temperature: not a finite number");
    assert_int_equal(sb.size, 4);

    m.u.submit.temperature = 1;
    m.u.submit.n_stop = PROTO_MAX_STOP + 1;
    assert_int_equal(proto_encode(&m, &sb, NULL, 0), RILL_E_TOO_LARGE);
    m.u.submit.n_stop = 1; /* an empty stop string */
    assert_int_equal(proto_encode(&m, &sb, NULL, 0), RILL_E_BAD_REQUEST);
    m.u.submit.n_stop = 0;
    m.u.submit.top_logprobs = PROTO_MAX_TOP + 1;
    assert_int_equal(proto_encode(&m, &sb, NULL, 0), RILL_E_BAD_REQUEST);
    m.u.submit.top_logprobs = 0;
    m.u.submit.prompt_len = 5; /* with a NULL prompt */
    assert_int_equal(proto_encode(&m, &sb, NULL, 0), RILL_E_BAD_REQUEST);
    m.u.submit.prompt_len = PROTO_MAX_PROMPT + 1;
    m.u.submit.prompt = "";
    assert_int_equal(proto_encode(&m, &sb, NULL, 0), RILL_E_TOO_LARGE);
    m.u.submit.prompt_len = 0;
    int32_t neg = -1;
    m.u.submit.prompt_tokens = &neg;
    m.u.submit.n_prompt_tokens = 1;
    assert_int_equal(proto_encode(&m, &sb, NULL, 0), RILL_E_BAD_REQUEST);
    assert_int_equal(sb.size, 4);

    struct proto_msg r = { .type = PROTO_REJECTED };
    r.u.rejected.code = RILL_E_INTERNAL;
    memset(r.u.rejected.message, 'x', sizeof r.u.rejected.message); /* no NUL */
    assert_int_equal(proto_encode(&r, &sb, why, sizeof why), RILL_E_TOO_LARGE);
    assert_string_equal(why, "rejected.message: string too long (no NUL within its cap)");
    r.u.rejected.message[0] = '\0';
    r.u.rejected.code = 0;
    assert_int_equal(proto_encode(&r, &sb, NULL, 0), RILL_E_BAD_REQUEST);

    struct proto_msg h = { .type = PROTO_HELLO };
    strcpy(h.u.hello.id, "w0");
    assert_int_equal(proto_encode(&h, &sb, why, sizeof why), RILL_E_BAD_REQUEST);
    assert_string_equal(why, "hello.role: unknown role");

    struct proto_msg hb;
    heartbeat_example(&hb, 0);
    hb.u.heartbeat.state = 3;
    assert_int_equal(proto_encode(&hb, &sb, NULL, 0), RILL_E_BAD_REQUEST);
    heartbeat_example(&hb, 1);
    hb.u.heartbeat.metrics[0].value = INFINITY;
    assert_int_equal(proto_encode(&hb, &sb, NULL, 0), RILL_E_BAD_REQUEST);
    heartbeat_example(&hb, 0);
    hb.u.heartbeat.n_metrics = PROTO_MAX_METRICS + 1;
    assert_int_equal(proto_encode(&hb, &sb, NULL, 0), RILL_E_TOO_LARGE);

    struct proto_msg none = { .type = PROTO_NONE }, bad = { .type = PROTO_TYPE_COUNT };
    assert_int_equal(proto_encode(&none, &sb, NULL, 0), RILL_E_BAD_REQUEST);
    assert_int_equal(proto_encode(&bad, &sb, NULL, 0), RILL_E_BAD_REQUEST);
    assert_int_equal(sb.size, 4);
    assert_memory_equal(sb.data, "keep", 4);
    msgpack_sbuffer_destroy(&sb);
}

static void test_free_leaves_caller_buffers_alone(void **state)
{
    char prompt[] = "abc";
    struct proto_msg m = { .type = PROTO_SUBMIT };
    m.u.submit.prompt = prompt;
    m.u.submit.prompt_len = 3;
    proto_msg_free(&m); /* not decoded: must not free the stack array */
    assert_ptr_equal(m.u.submit.prompt, prompt);
    proto_msg_free(NULL);
}

/* --- truncation and hostile sizes ---------------------------------------------- */

static void every_prefix_fails(const struct proto_msg *m)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    assert_int_equal(proto_encode(m, &sb, NULL, 0), 0);
    for (size_t n = 0; n < sb.size; n++) {
        /* a copy of exactly n bytes, so ASan sees any read past the end */
        char *p = malloc(n ? n : 1);
        memcpy(p, sb.data, n);
        int rc = decode_bytes(p, n, NULL, 0);
        if (rc == 0)
            fail_msg("prefix of %zu/%zu bytes of a %s decoded", n, sb.size,
                     proto_type_name(m->type));
        assert_true(rc == RILL_E_BAD_REQUEST || rc == RILL_E_TOO_LARGE);
        free(p);
    }
    assert_int_equal(decode_sb(&sb, NULL, 0), 0);
    msgpack_sbuffer_destroy(&sb);
}

static void test_every_truncation_of_every_message_fails_cleanly(void **state)
{
    static struct proto_msg m;
    int32_t toks[300];
    for (int i = 0; i < 300; i++)
        toks[i] = i * 1000;
    memset(&m, 0, sizeof m);
    m.type = PROTO_SUBMIT;
    m.u.submit.id = UINT64_MAX;
    m.u.submit.prompt = "Once upon a time";
    m.u.submit.prompt_len = 16;
    m.u.submit.prompt_tokens = toks;
    m.u.submit.n_prompt_tokens = 300;
    m.u.submit.n_stop = 2;
    strcpy(m.u.submit.stop[0], "END");
    strcpy(m.u.submit.stop[1], "\n\n");
    m.u.submit.temperature = 0.8f;
    m.u.submit.priority = -3;
    every_prefix_fails(&m);

    for (int t = PROTO_CANCEL; t < PROTO_TYPE_COUNT; t++) {
        memset(&m, 0, sizeof m);
        m.type = (enum proto_type)t;
        switch (t) {
        case PROTO_REJECTED: m.u.rejected.code = RILL_E_OVERLOADED; break;
        case PROTO_HELLO:
            m.u.hello.role = PROTO_ROLE_WORKER;
            strcpy(m.u.hello.id, "w1");
            strcpy(m.u.hello.endpoint, "ipc:///run/rill/w1.sock");
            break;
        case PROTO_HEARTBEAT: heartbeat_example(&m, 5); break;
        case PROTO_WORKERS:
            m.u.workers.n_workers = 3;
            for (int i = 0; i < 3; i++)
                snprintf(m.u.workers.workers[i].id, PROTO_ID_LEN, "w%d", i);
            break;
        }
        every_prefix_fails(&m);
    }
}

static void test_hostile_container_counts_fail_fast_without_allocating(void **state)
{
    /* 20 bytes claiming a 2^32-1 element array (and map) inside a submit */
    static const char arr[] = "\x82\xa1t\xa6submit\xa4stop\xdd\xff\xff\xff\xff";
    static const char map[] = "\x82\xa1t\xa6submit\xa4stop\xdf\xff\xff\xff\xff";
    /* 2^24 elements: msgpack-c alone would allocate 400 MB and succeed */
    static const char mid[] = "\x82\xa1t\xa6submit\xa4stop\xdd\x01\x00\x00\x00";
    _Static_assert(sizeof arr - 1 == 20, "20 bytes");
    /* a root array of 16 bytes, each claiming 2^32 elements */
    char nest[24] = "\xdc\x00\x10";
    memset(nest + 3, 0xdd, sizeof nest - 3);
    struct {
        const char *p;
        size_t n;
    } in[] = { { arr, 20 }, { map, 20 }, { mid, 20 }, { nest, sizeof nest } };
    _Static_assert(sizeof map - 1 == 20 && sizeof mid - 1 == 20, "20 bytes");

    for (size_t i = 0; i < sizeof in / sizeof in[0]; i++) {
#ifdef WATCH_ALLOC
        watch_max = 0;
        watch_armed = 1;
#endif
        uint64_t t0 = clock_ns();
        int rc = decode_bytes(in[i].p, in[i].n, NULL, 0);
        uint64_t dt = clock_ns() - t0;
#ifdef WATCH_ALLOC
        watch_armed = 0;
        if (watch_max > 64 * 1024)
            fail_msg("input %zu: an allocation of %zu bytes", i, watch_max);
#endif
        assert_true(rc == RILL_E_BAD_REQUEST || rc == RILL_E_TOO_LARGE);
        assert_true(dt < 50 * 1000 * 1000ull);
    }

    /* even a valid message near the object cap keeps msgpack-c's allocation
     * within a few MB */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    pack_submit(&sb, "prompt_tokens", v_tokens_big); /* rejected, but fully parsed */
#ifdef WATCH_ALLOC
    watch_max = 0;
    watch_armed = 1;
#endif
    assert_int_equal(decode_sb(&sb, NULL, 0), RILL_E_TOO_LARGE);
#ifdef WATCH_ALLOC
    watch_armed = 0;
    assert_true(watch_max < 4u << 20);
#endif
    /* too many objects in total: a 70000-element array of nils */
    sb.size = 0;
    pack_submit(&sb, "junk", v_nils);
    char why[64];
    assert_int_equal(decode_sb(&sb, why, sizeof why), RILL_E_TOO_LARGE);
    assert_string_equal(why, "message: too many objects");
    msgpack_sbuffer_destroy(&sb);
}

/* --- token records ------------------------------------------------------------ */

static struct proto_token token_example(char *text)
{
    struct proto_token t = {
        .req_id = UINT64_MAX,
        .position = 4000000000u,
        .token_id = 151643,
        .flags = PROTO_TOK_LAST | PROTO_TOK_FINISH(PROTO_FINISH_LENGTH),
        .t_gen_ns = 0x0123456789abcdefull,
        .latency_us = 12345,
        .logprob = -0.125f,
        .batch = 65535,
        .mem_mb = 4096,
        .n_top = PROTO_MAX_TOP,
        .text_len = PROTO_MAX_TOKEN_TEXT,
        .text = text,
    };
    for (int i = 0; i < PROTO_MAX_TOP; i++) {
        t.top[i].token_id = i * 7919;
        t.top[i].logprob = -(float)i / 3;
    }
    for (int i = 0; i < PROTO_MAX_TOKEN_TEXT; i++)
        text[i] = (char)(0x80 | i);
    return t;
}

static void test_token_record_round_trips_at_max_size(void **state)
{
    char text[PROTO_MAX_TOKEN_TEXT];
    struct proto_token t = token_example(text), d;
    size_t n = proto_token_size(t.n_top, t.text_len);
    assert_int_equal(n, PROTO_TOK_MAX_SIZE);
    /* encode in place into a buffer of exactly that size, as into a ring
     * reservation; an odd address proves no alignment is assumed */
    uint8_t *buf = malloc(n + 1);
    assert_int_equal(proto_token_encode(buf + 1, n, &t), (int)n);
    assert_int_equal(proto_token_decode(buf + 1, n, &d), 0);
    assert_true(d.req_id == t.req_id && d.t_gen_ns == t.t_gen_ns);
    assert_int_equal(d.position, t.position);
    assert_int_equal(d.token_id, t.token_id);
    assert_int_equal(d.flags, t.flags);
    assert_int_equal(proto_tok_finish(d.flags), PROTO_FINISH_LENGTH);
    assert_int_equal(d.error, 0);
    assert_int_equal(d.latency_us, 12345);
    assert_true(d.logprob == -0.125f);
    assert_int_equal(d.batch, 65535);
    assert_int_equal(d.mem_mb, 4096);
    assert_int_equal(d.n_top, PROTO_MAX_TOP);
    assert_memory_equal(d.top, t.top, sizeof t.top);
    assert_int_equal(d.text_len, PROTO_MAX_TOKEN_TEXT);
    assert_ptr_equal(d.text, (char *)buf + 1 + PROTO_TOK_HDR + 8 * PROTO_MAX_TOP);
    assert_memory_equal(d.text, text, PROTO_MAX_TOKEN_TEXT);
    /* little-endian on the wire, whatever the host */
    assert_int_equal(buf[1], 0xff);
    assert_int_equal(buf[1 + 8], 0xef);
    assert_int_equal(buf[1 + 49], PROTO_TOK_VERSION);
    free(buf);
}

static void test_token_record_round_trips_minimal_and_error(void **state)
{
    uint8_t buf[PROTO_TOK_MAX_SIZE];
    struct proto_token t = { .req_id = 0, .position = 0, .token_id = 0, .flags = PROTO_TOK_FIRST }, d;
    assert_int_equal(proto_token_size(0, 0), PROTO_TOK_HDR);
    assert_int_equal(proto_token_encode(buf, sizeof buf, &t), PROTO_TOK_HDR);
    assert_int_equal(proto_token_decode(buf, PROTO_TOK_HDR, &d), 0);
    assert_int_equal(d.flags, PROTO_TOK_FIRST);
    assert_int_equal(d.text_len, 0);
    assert_int_equal(d.n_top, 0);

    struct proto_token e = {
        .req_id = 9, .position = 3, .token_id = -1,
        .flags = PROTO_TOK_LAST | PROTO_TOK_ERROR | PROTO_TOK_FINISH(PROTO_FINISH_ERROR),
        .error = RILL_E_MEMORY_LIMIT,
    };
    int n = proto_token_encode(buf, sizeof buf, &e);
    assert_int_equal(n, PROTO_TOK_HDR);
    assert_int_equal(proto_token_decode(buf, (size_t)n, &d), 0);
    assert_int_equal(d.token_id, -1);
    assert_int_equal(d.error, RILL_E_MEMORY_LIMIT);
    assert_int_equal(proto_tok_finish(d.flags), PROTO_FINISH_ERROR);
}

static void test_token_encode_checks_rules_and_room(void **state)
{
    char text[PROTO_MAX_TOKEN_TEXT];
    uint8_t buf[PROTO_TOK_MAX_SIZE + 8];
    struct proto_token t = token_example(text);
    assert_int_equal(proto_token_encode(buf, PROTO_TOK_MAX_SIZE - 1, &t), RILL_E_TOO_LARGE);

    struct proto_token b = t;
    b.n_top = PROTO_MAX_TOP + 1;
    assert_int_equal(proto_token_encode(buf, sizeof buf, &b), RILL_E_BAD_FORMAT);
    b = t;
    b.text_len = PROTO_MAX_TOKEN_TEXT + 1;
    assert_int_equal(proto_token_encode(buf, sizeof buf, &b), RILL_E_BAD_FORMAT);
    b = t;
    b.text = NULL;
    assert_int_equal(proto_token_encode(buf, sizeof buf, &b), RILL_E_BAD_FORMAT);
    b = t;
    b.flags = PROTO_TOK_LAST; /* LAST without a reason */
    assert_int_equal(proto_token_encode(buf, sizeof buf, &b), RILL_E_BAD_FORMAT);
    b.flags = PROTO_TOK_FINISH(PROTO_FINISH_EOS); /* a reason without LAST */
    assert_int_equal(proto_token_encode(buf, sizeof buf, &b), RILL_E_BAD_FORMAT);
    b.flags = PROTO_TOK_LAST | PROTO_TOK_FINISH(PROTO_FINISH_COUNT);
    assert_int_equal(proto_token_encode(buf, sizeof buf, &b), RILL_E_BAD_FORMAT);
    b.flags = 0x10000;
    assert_int_equal(proto_token_encode(buf, sizeof buf, &b), RILL_E_BAD_FORMAT);
    b.flags = PROTO_TOK_ERROR; /* ERROR without a code */
    assert_int_equal(proto_token_encode(buf, sizeof buf, &b), RILL_E_BAD_FORMAT);
    b.flags = 0;
    b.error = RILL_E_INTERNAL; /* a code without ERROR */
    assert_int_equal(proto_token_encode(buf, sizeof buf, &b), RILL_E_BAD_FORMAT);
    b.error = 0;
    b.token_id = -2;
    assert_int_equal(proto_token_encode(buf, sizeof buf, &b), RILL_E_BAD_FORMAT);
}

static void test_token_decode_rejects_every_wrong_length_and_field(void **state)
{
    char text[PROTO_MAX_TOKEN_TEXT];
    struct proto_token t = token_example(text), d;
    uint8_t buf[PROTO_TOK_MAX_SIZE + 1];
    int n = proto_token_encode(buf, sizeof buf, &t);
    assert_int_equal(n, PROTO_TOK_MAX_SIZE);
    for (int len = 0; len < n; len++) {
        uint8_t *p = malloc(len ? (size_t)len : 1);
        memcpy(p, buf, (size_t)len);
        assert_int_equal(proto_token_decode(p, (size_t)len, &d), RILL_E_BAD_FORMAT);
        free(p);
    }
    buf[n] = 0;
    assert_int_equal(proto_token_decode(buf, (size_t)n + 1, &d), RILL_E_BAD_FORMAT);

    struct {
        size_t off;
        uint8_t val;
    } pokes[] = {
        { 49, 2 },                 /* version */
        { 50, 1 },                 /* reserved */
        { 48, PROTO_MAX_TOP + 1 }, /* n_top */
        { 47, 0xff },              /* text_len over its cap */
        { 26, 0x01 },              /* unknown flag bit 16 */
        { 25, 0x00 },              /* LAST without a reason */
        { 28, 0x01 },              /* an error code without ERROR */
        { 23, 0xf0 },              /* token_id < -1 */
    };
    for (size_t i = 0; i < sizeof pokes / sizeof pokes[0]; i++) {
        uint8_t c[PROTO_TOK_MAX_SIZE];
        memcpy(c, buf, sizeof c);
        c[pokes[i].off] = pokes[i].val;
        if (proto_token_decode(c, sizeof c, &d) != RILL_E_BAD_FORMAT)
            fail_msg("poke %zu decoded", i);
    }
}

/* --- fuzz seeds ---------------------------------------------------------------- */

static void write_file(const char *dir, const char *name, const void *p, size_t n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
}

static void write_seed_msg(const char *dir, const struct proto_msg *m)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    if (proto_encode(m, &sb, NULL, 0) != 0)
        abort();
    char name[64];
    snprintf(name, sizeof name, "msg_%s.bin", proto_type_name(m->type));
    write_file(dir, name, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

/* RILL_PROTO_SEEDS=dir: write one small valid encoding of every message and
 * two token records, the fuzzer's starting corpus (tests/fuzz/seeds). */
static void write_seeds(const char *dir)
{
    static struct proto_msg m;
    int32_t toks[] = { 1, 300, 70000, 0 };
    for (int t = PROTO_SUBMIT; t < PROTO_TYPE_COUNT; t++) {
        memset(&m, 0, sizeof m);
        m.type = (enum proto_type)t;
        switch (t) {
        case PROTO_SUBMIT:
            m.u.submit.id = 42;
            m.u.submit.prompt = "The quick brown fox";
            m.u.submit.prompt_len = 19;
            m.u.submit.prompt_tokens = toks;
            m.u.submit.n_prompt_tokens = 4;
            m.u.submit.max_tokens = 128;
            m.u.submit.temperature = 0.8f;
            m.u.submit.top_p = 0.95f;
            m.u.submit.top_k = 40;
            m.u.submit.repetition_penalty = 1.1f;
            m.u.submit.seed = 1234;
            m.u.submit.has_seed = true;
            m.u.submit.n_stop = 2;
            strcpy(m.u.submit.stop[0], "\n\n");
            strcpy(m.u.submit.stop[1], "END");
            m.u.submit.skip = 3;
            m.u.submit.top_logprobs = 5;
            m.u.submit.priority = -1;
            break;
        case PROTO_CANCEL: m.u.cancel.id = UINT64_MAX; break;
        case PROTO_ACCEPTED: m.u.accepted.id = 42; m.u.accepted.queue_position = 2; break;
        case PROTO_REJECTED:
            m.u.rejected.id = 42;
            m.u.rejected.code = RILL_E_OVERLOADED;
            strcpy(m.u.rejected.message, "queue full");
            break;
        case PROTO_HELLO:
            m.u.hello.role = PROTO_ROLE_WORKER;
            strcpy(m.u.hello.id, "w0");
            m.u.hello.pid = 4242;
            strcpy(m.u.hello.ring, "/rill-main-w0");
            strcpy(m.u.hello.endpoint, "ipc:///run/rill/w0.sock");
            strcpy(m.u.hello.model, "tiny-24M");
            m.u.hello.n_ctx = 2048;
            m.u.hello.max_batch = 32;
            m.u.hello.epoch = 0x1234567890abcdefull;
            break;
        case PROTO_HEARTBEAT: heartbeat_example(&m, 3); break;
        case PROTO_SET_BATCH:
            m.u.set_batch.max_batch = 8;
            strcpy(m.u.set_batch.reason, "memory pressure");
            break;
        case PROTO_PRESSURE:
            m.u.pressure.level = PRESSURE_WARNING;
            strcpy(m.u.pressure.reason, "psi");
            break;
        case PROTO_WORKERS:
            m.u.workers.n_workers = 2;
            for (int i = 0; i < 2; i++) {
                struct proto_worker_info *w = &m.u.workers.workers[i];
                snprintf(w->id, sizeof w->id, "w%d", i);
                snprintf(w->ring, sizeof w->ring, "/rill-main-w%d", i);
                snprintf(w->endpoint, sizeof w->endpoint, "ipc:///run/rill/w%d.sock", i);
                w->state = (uint8_t)(PROTO_WSTATE_READY + i);
                w->epoch = 77 + (uint64_t)i;
            }
            break;
        }
        write_seed_msg(dir, &m);
    }

    uint8_t buf[PROTO_TOK_MAX_SIZE];
    struct proto_token t = {
        .req_id = 42, .position = 0, .token_id = 1017, .flags = PROTO_TOK_FIRST,
        .t_gen_ns = 123456789, .latency_us = 80000, .logprob = -0.5f, .batch = 4,
        .mem_mb = 300, .n_top = 2, .top = { { 1017, -0.5f }, { 20, -1.25f } },
        .text_len = 6, .text = " hello",
    };
    int n = proto_token_encode(buf, sizeof buf, &t);
    write_file(dir, "tok_first.bin", buf, (size_t)n);
    struct proto_token e = {
        .req_id = 42, .position = 9, .token_id = -1,
        .flags = PROTO_TOK_LAST | PROTO_TOK_ERROR | PROTO_TOK_FINISH(PROTO_FINISH_ERROR),
        .error = RILL_E_MEMORY_LIMIT,
    };
    n = proto_token_encode(buf, sizeof buf, &e);
    write_file(dir, "tok_error.bin", buf, (size_t)n);
}

int main(void)
{
    const char *seeds = getenv("RILL_PROTO_SEEDS");
    if (seeds)
        write_seeds(seeds);

    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_names_map_both_ways),
        cmocka_unit_test(test_submit_round_trips_at_max_sizes),
        cmocka_unit_test(test_submit_penalties_round_trip_and_default_to_zero),
        cmocka_unit_test(test_submit_round_trips_empty),
        cmocka_unit_test(test_submit_parse_special_defaults_to_true),
        cmocka_unit_test(test_request_replies_round_trip),
        cmocka_unit_test(test_hello_round_trips_for_every_role),
        cmocka_unit_test(test_heartbeat_round_trips_with_and_without_metrics),
        cmocka_unit_test(test_control_commands_round_trip),
        cmocka_unit_test(test_workers_list_round_trips_full_and_empty),
        cmocka_unit_test(test_decode_accepts_integers_and_doubles_for_floats),
        cmocka_unit_test(test_decode_ignores_unknown_keys_and_ext_values),
        cmocka_unit_test(test_decode_leaves_optional_fields_zero),
        cmocka_unit_test(test_decode_rejects_wrong_types),
        cmocka_unit_test(test_decode_rejects_missing_required_fields),
        cmocka_unit_test(test_decode_rejects_out_of_range_integers),
        cmocka_unit_test(test_decode_rejects_non_finite_and_unrepresentable_floats),
        cmocka_unit_test(test_decode_rejects_oversized_strings_and_arrays),
        cmocka_unit_test(test_decode_rejects_bad_strings),
        cmocka_unit_test(test_decode_rejects_bad_message_shapes),
        cmocka_unit_test(test_encode_rejects_what_decode_would_and_appends_nothing),
        cmocka_unit_test(test_free_leaves_caller_buffers_alone),
        cmocka_unit_test(test_every_truncation_of_every_message_fails_cleanly),
        cmocka_unit_test(test_hostile_container_counts_fail_fast_without_allocating),
        cmocka_unit_test(test_token_record_round_trips_at_max_size),
        cmocka_unit_test(test_token_record_round_trips_minimal_and_error),
        cmocka_unit_test(test_token_encode_checks_rules_and_room),
        cmocka_unit_test(test_token_decode_rejects_every_wrong_length_and_field),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
