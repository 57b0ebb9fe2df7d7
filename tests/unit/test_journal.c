/* test_journal.c — what a worker keeps for a restarted gateway: the replay
 * runs each request again from where it is, its records within the byte
 * budgets, finished ones for the window only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/err.h"
#include "common/proto.h"
#include "worker/journal.h"

#define SEC 1000000000ull

struct seen {
    int n_submit, n_accepted, n_rec;
    struct proto_submit sub;
    int32_t ids[256];
    uint32_t n_ids;
    char prompt[64];
    uint32_t acc_prompt;
    uint32_t rec_pos[256];
};

static int on_msg(void *ctx, const struct proto_msg *m)
{
    struct seen *s = ctx;
    if (m->type == PROTO_SUBMIT) {
        s->n_submit++;
        s->sub = m->u.submit;
        s->n_ids = m->u.submit.n_prompt_tokens;
        memcpy(s->ids, m->u.submit.prompt_tokens, s->n_ids * sizeof(int32_t));
        snprintf(s->prompt, sizeof s->prompt, "%s", m->u.submit.prompt);
    } else if (m->type == PROTO_ACCEPTED) {
        s->n_accepted++;
        s->acc_prompt = m->u.accepted.prompt_tokens;
    }
    return 0;
}

static int on_rec(void *ctx, const void *b, size_t len)
{
    struct seen *s = ctx;
    struct proto_token t;
    assert_int_equal(proto_token_decode(b, len, &t), 0);
    s->rec_pos[s->n_rec++] = t.position;
    return 0;
}

static void record(struct journal *j, uint64_t id, uint32_t pos, int32_t tok, uint32_t flags, uint64_t now)
{
    struct proto_token t = {.req_id = id, .position = pos, .token_id = tok, .flags = flags, .text = "ab", .text_len = 2};
    unsigned char buf[PROTO_TOK_MAX_SIZE];
    int n = proto_token_encode(buf, sizeof buf, &t);
    assert_true(n > 0);
    journal_record(j, &t, buf, (size_t)n, now);
}

static struct proto_submit submit(uint64_t id, const int32_t *pt, uint32_t n, uint32_t skip)
{
    struct proto_submit s = {.id = id, .prompt = "hello", .prompt_len = 5, .max_tokens = 50, .temperature = 0.5f,
                             .top_p = 1, .seed = 42, .has_seed = true, .prompt_tokens = pt, .n_prompt_tokens = n,
                             .skip = skip, .parse_special = true};
    return s;
}

static void test_the_replay_runs_a_request_again_from_where_it_is(void **state)
{
    (void)state;
    struct journal *j;
    assert_int_equal(journal_create(60 * SEC, 1 << 20, 1 << 20, &j), 0);
    const int32_t delivered[] = {5, 6}; /* a failover's prefill: positions 0 and 1 */
    struct proto_submit s = submit(7, delivered, 2, 2);
    assert_int_equal(journal_open(j, &s), 0);
    assert_int_equal(journal_open(j, &s), RILL_E_DUPLICATE_ID);
    journal_accepted(j, 7, 3);
    for (uint32_t p = 2; p < 6; p++)
        record(j, 7, p, (int32_t)(100 + p), 0, SEC);
    struct seen seen = {0};
    struct journal_sink sink = {&seen, on_msg, on_rec};
    assert_int_equal(journal_replay(j, &sink), 0);
    assert_int_equal(seen.n_submit, 1);
    assert_int_equal(seen.n_accepted, 1);
    assert_int_equal(seen.acc_prompt, 3);
    assert_string_equal(seen.prompt, "hello");
    assert_int_equal(seen.sub.seed, 42);
    /* prompt_tokens: the whole output so far; skip: its length */
    assert_int_equal(seen.n_ids, 6);
    assert_int_equal(seen.sub.skip, 6);
    const int32_t want[] = {5, 6, 102, 103, 104, 105};
    assert_memory_equal(seen.ids, want, sizeof want);
    assert_int_equal(seen.n_rec, 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(seen.rec_pos[i], 2 + i);
    journal_free(j);
}

static void test_a_failovers_prior_records_are_kept_before_its_own(void **state)
{
    (void)state;
    struct journal *j;
    assert_int_equal(journal_create(60 * SEC, 1 << 20, 1 << 20, &j), 0);
    const int32_t delivered[] = {10, 11, 12, 13};
    unsigned char blob[4 * (4 + PROTO_TOK_MAX_SIZE)];
    size_t n = 0;
    for (uint32_t p = 1; p < 5; p++) { /* positions 1..3 fit; 4 is beyond skip: dropped */
        struct proto_token t = {.req_id = 9, .position = p, .token_id = p < 4 ? delivered[p] : 99, .text = "x",
                                .text_len = 1};
        int len = proto_token_encode(blob + n + 4, sizeof blob - n - 4, &t);
        assert_true(len > 0);
        blob[n] = (unsigned char)len;
        blob[n + 1] = blob[n + 2] = blob[n + 3] = 0;
        n += 4 + (size_t)len;
    }
    struct proto_submit s = submit(9, delivered, 4, 4);
    s.prior = (struct proto_text){(const char *)blob, (uint32_t)n};
    assert_int_equal(journal_open(j, &s), 0);
    journal_accepted(j, 9, 2);
    record(j, 9, 4, 14, 0, SEC);
    struct seen seen = {0};
    struct journal_sink sink = {&seen, on_msg, on_rec};
    journal_replay(j, &sink);
    assert_int_equal(seen.n_ids, 5);
    assert_int_equal(seen.n_rec, 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(seen.rec_pos[i], 1 + i);
    journal_free(j);
}

static void test_budgets_drop_old_records_but_keep_every_id(void **state)
{
    (void)state;
    struct journal *j;
    size_t one = proto_token_size(0, 2);
    assert_int_equal(journal_create(60 * SEC, 4 * one, 1 << 20, &j), 0);
    struct proto_submit s = submit(1, NULL, 0, 0);
    assert_int_equal(journal_open(j, &s), 0);
    journal_accepted(j, 1, 1);
    for (uint32_t p = 0; p < 20; p++)
        record(j, 1, p, (int32_t)p, 0, SEC);
    assert_true(journal_bytes(j) <= 4 * one);
    struct seen seen = {0};
    struct journal_sink sink = {&seen, on_msg, on_rec};
    journal_replay(j, &sink);
    assert_int_equal(seen.n_ids, 20);
    assert_true(seen.n_rec >= 2 && seen.n_rec <= 4);
    assert_int_equal(seen.rec_pos[seen.n_rec - 1], 19); /* the newest are kept, in order */
    for (int i = 1; i < seen.n_rec; i++)
        assert_int_equal(seen.rec_pos[i], seen.rec_pos[i - 1] + 1);
    journal_free(j);
}

static void test_finished_requests_go_first_and_after_the_window(void **state)
{
    (void)state;
    struct journal *j;
    size_t one = proto_token_size(0, 2);
    assert_int_equal(journal_create(10 * SEC, 1 << 20, 6 * one, &j), 0);
    struct proto_submit a = submit(1, NULL, 0, 0), b = submit(2, NULL, 0, 0), c = submit(3, NULL, 0, 0);
    assert_int_equal(journal_open(j, &a), 0);
    assert_int_equal(journal_open(j, &b), 0);
    assert_int_equal(journal_open(j, &c), 0);
    journal_drop(j, 3); /* refused: forgotten */
    assert_int_equal(journal_count(j), 2);
    for (uint32_t p = 0; p < 3; p++)
        record(j, 1, p, 1, p == 2 ? PROTO_TOK_LAST | PROTO_TOK_FINISH(PROTO_FINISH_LENGTH) : 0, SEC);
    for (uint32_t p = 0; p < 3; p++)
        record(j, 2, p, 1, 0, SEC);
    assert_int_equal(journal_count(j), 2);
    record(j, 2, 3, 1, 0, SEC); /* over the total: the finished one goes */
    assert_int_equal(journal_count(j), 1);
    for (uint32_t p = 4; p < 6; p++)
        record(j, 2, p, 1, p == 5 ? PROTO_TOK_LAST | PROTO_TOK_FINISH(PROTO_FINISH_EOS) : 0, 2 * SEC);
    journal_sweep(j, 5 * SEC);
    assert_int_equal(journal_count(j), 1);
    journal_sweep(j, 13 * SEC);
    assert_int_equal(journal_count(j), 0);
    assert_int_equal(journal_bytes(j), 0);
    journal_free(j);
}

static void test_a_zero_window_keeps_nothing(void **state)
{
    (void)state;
    struct journal *j;
    assert_int_equal(journal_create(0, 1 << 20, 1 << 20, &j), 0);
    struct proto_submit s = submit(1, NULL, 0, 0);
    assert_int_equal(journal_open(j, &s), 0);
    record(j, 1, 0, 1, 0, SEC);
    assert_int_equal(journal_count(j), 0);
    journal_free(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_the_replay_runs_a_request_again_from_where_it_is),
        cmocka_unit_test(test_a_failovers_prior_records_are_kept_before_its_own),
        cmocka_unit_test(test_budgets_drop_old_records_but_keep_every_id),
        cmocka_unit_test(test_finished_requests_go_first_and_after_the_window),
        cmocka_unit_test(test_a_zero_window_keeps_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
