/* test_intake.c — the tokenizer thread on its own: requests come back in the
 * order they went in, tokenized exactly as prompt_tokenize does it, with
 * the tokenizer's errors; a cancel while a request is there is remembered
 * (and is idempotent); the loop's side never waits for a prompt; stopping
 * hands back what was never tokenized.
 *
 * The tokenizer is the tiny model's, made by $RILL_TEST_BUILD/rill-mkmodel.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "worker/intake.h"
#include "worker/model.h"
#include "worker/prompt.h"
#include "testutil.h"

#define CTX 256

static char tmpdir[64];
static struct model *model;

static int setup(void **state)
{
    (void)state;
    rlog_init("test", NULL, RLOG_ERROR, false, 2);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/rill-test-intake-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    char corpus[128], path[160], cmd[1024];
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", tmpdir);
    if (tu_write_corpus(corpus))
        return -1;
    snprintf(path, sizeof path, "%s/tiny.gguf", tmpdir);
    snprintf(cmd, sizeof cmd, "%s/rill-mkmodel --shape tiny --seed 7 --corpus %s --out %s 2>%s/mk.log",
             tu_build_dir(), corpus, path, tmpdir);
    if (system(cmd) != 0) {
        fprintf(stderr, "failed: %s (build it first: make %s/rill-mkmodel)\n", cmd, tu_build_dir());
        return -1;
    }
    char why[256];
    return model_load(path, false, &model, why, sizeof why) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    model_free(model);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A request whose prompt is heap memory, as proto_decode leaves it. */
static struct proto_submit req(uint64_t id, const char *text, size_t len)
{
    struct proto_submit q = {0};
    q.id = id;
    char *p = malloc(len + 1);
    assert_non_null(p);
    memcpy(p, text, len);
    p[len] = 0;
    q.prompt = p;
    q.prompt_len = (uint32_t)len;
    q.max_tokens = 4;
    return q;
}

/* len bytes of words, over and over: ~len/2 tokens of the tiny vocabulary. */
static char *words(size_t len)
{
    static const char w[] = "the quick brown fox jumps over the lazy dog and then some ";
    char *t = malloc(len);
    assert_non_null(t);
    for (size_t i = 0; i < len; i++)
        t[i] = w[i % (sizeof w - 1)];
    return t;
}

static struct intake_job *pop_wait(struct intake *in, int timeout_ms)
{
    uint64_t end = clock_ns() + (uint64_t)timeout_ms * 1000000;
    for (;;) {
        struct intake_job *j = intake_pop(in);
        if (j || clock_ns() > end)
            return j;
        struct pollfd p = {.fd = intake_fd(in), .events = POLLIN};
        poll(&p, 1, 10);
    }
}

static void test_requests_come_back_in_order_tokenized_as_prompt_tokenize_does(void **state)
{
    (void)state;
    struct intake *in;
    assert_int_equal(intake_create(model->tok, CTX, &in), 0);
    char *big = words(64 << 10); /* far beyond CTX tokens */
    const char *texts[] = {"hello world", "", "the lazy dog"};
    struct proto_submit q[5] = {req(1, texts[0], strlen(texts[0])), req(2, big, 64 << 10), req(3, texts[1], 0),
                                req(4, texts[2], strlen(texts[2])), req(5, "x", 1)};
    int32_t oov = (int32_t)tok_n_vocab(model->tok);
    q[4].prompt_tokens = malloc(sizeof oov);
    memcpy((void *)q[4].prompt_tokens, &oov, sizeof oov);
    q[4].n_prompt_tokens = 1;
    uint64_t want_bytes = 0;
    for (int i = 0; i < 5; i++) {
        want_bytes += q[i].prompt_len;
        assert_int_equal(intake_push(in, &q[i], 100 + (uint64_t)i), 0);
        /* The prompt moved into the job. */
        assert_null(q[i].prompt);
        assert_int_equal(q[i].prompt_len, 0);
        assert_null(q[i].prompt_tokens);
    }
    assert_int_equal(intake_count(in), 5);
    assert_int_equal(intake_bytes(in), want_bytes);
    assert_true(intake_has(in, 3));
    assert_false(intake_has(in, 6));

    int want_rc[5] = {0, RILL_E_CONTEXT_LENGTH, 0, 0, RILL_E_BAD_REQUEST};
    for (int i = 0; i < 5; i++) {
        struct intake_job *j = pop_wait(in, 5000);
        assert_non_null(j);
        assert_int_equal(j->req.id, (uint64_t)i + 1);
        assert_int_equal(j->t_arrive, 100 + (uint64_t)i);
        assert_false(j->cancelled);
        if (j->rc != want_rc[i])
            fail_msg("request %d: %s (%s), expected %s", i + 1, rill_err_name(j->rc), j->why,
                     rill_err_name(want_rc[i]));
        if (want_rc[i]) {
            assert_true(j->why[0] != 0);
            assert_null(j->prompt.tokens);
        } else {
            struct prompt p;
            char why[256];
            assert_int_equal(prompt_tokenize(model->tok, CTX, &j->req, &p, why, sizeof why), 0);
            assert_int_equal(j->prompt.n, p.n);
            assert_memory_equal(j->prompt.tokens, p.tokens, p.n * sizeof *p.tokens);
            prompt_free(&p);
        }
        intake_job_free(j);
    }
    assert_null(intake_pop(in));
    assert_int_equal(intake_count(in), 0);
    assert_int_equal(intake_bytes(in), 0);
    /* Quiet again: nothing is ready, so the fd is not readable. */
    struct pollfd p = {.fd = intake_fd(in), .events = POLLIN};
    assert_int_equal(poll(&p, 1, 0), 0);
    free(big);
    intake_free(in);
}

/* A long prompt first: what comes behind it is still in the intake. */
static void test_a_cancel_while_tokenizing_is_remembered_and_idempotent(void **state)
{
    (void)state;
    struct intake *in;
    assert_int_equal(intake_create(model->tok, CTX, &in), 0);
    size_t big_len = 1 << 20;
    char *big = words(big_len);
    struct proto_submit q[4] = {req(0x100000001ull, big, big_len), req(0x100000002ull, "hi", 2),
                                req(0x200000003ull, "ho", 2), req(0x100000004ull, "ha", 2)};
    uint64_t t0 = clock_ns();
    for (int i = 0; i < 4; i++)
        assert_int_equal(intake_push(in, &q[i], 0), 0);
    /* The loop's side never waits for the tokenizer. */
    double push_ms = clock_ms_since(t0);
    assert_int_equal(intake_cancel(in, 0x100000002ull), 0);
    assert_int_equal(intake_cancel(in, 0x100000002ull), 0);
    assert_int_equal(intake_cancel(in, 0x999ull), RILL_E_NOT_FOUND);
    /* A gateway's epoch gone: its requests here, each counted once. */
    assert_int_equal(intake_cancel_matching(in, 0xffffffff00000000ull, 0x100000000ull), 2);
    assert_int_equal(intake_cancel_matching(in, 0xffffffff00000000ull, 0x100000000ull), 0);
    double cancel_ms = clock_ms_since(t0);
    assert_false(intake_wait(in, 0)); /* the long one is still being tokenized */
    bool want_cancelled[4] = {true, true, false, true};
    for (int i = 0; i < 4; i++) {
        struct intake_job *j = pop_wait(in, 10000);
        assert_non_null(j);
        assert_int_equal(j->cancelled, want_cancelled[i]);
        assert_int_equal(j->rc, i == 0 ? RILL_E_CONTEXT_LENGTH : 0);
        if (i == 0)
            fprintf(stderr, "pushing took %.2f ms, cancelling %.2f ms; the long prompt came back after %.1f ms\n",
                    push_ms, cancel_ms - push_ms, clock_ms_since(t0));
        intake_job_free(j);
    }
    /* Gone from the intake: a cancel now is not found here. */
    assert_int_equal(intake_cancel(in, 0x100000002ull), RILL_E_NOT_FOUND);
    assert_true(cancel_ms < 50);
    free(big);
    intake_free(in);
}

static void test_stopping_hands_back_what_was_never_tokenized(void **state)
{
    (void)state;
    struct intake *in;
    assert_int_equal(intake_create(model->tok, CTX, &in), 0);
    size_t big_len = 1 << 20;
    char *big = words(big_len);
    struct proto_submit q[3] = {req(1, big, big_len), req(2, "hi", 2), req(3, "ho", 2)};
    for (int i = 0; i < 3; i++)
        assert_int_equal(intake_push(in, &q[i], 0), 0);
    usleep(1000); /* the thread is on the long prompt, most likely */
    intake_stop(in, RILL_E_SHUTTING_DOWN);
    /* The one it was on finishes (if it had started); the others, behind a
     * megabyte, were never started. */
    for (int i = 0; i < 3; i++) {
        struct intake_job *j = intake_pop(in);
        assert_non_null(j);
        assert_int_equal(j->req.id, (uint64_t)i + 1);
        if (i > 0 || j->rc != RILL_E_CONTEXT_LENGTH)
            assert_int_equal(j->rc, RILL_E_SHUTTING_DOWN);
        intake_job_free(j);
    }
    /* After the stop, a request is answered at once. */
    struct proto_submit late = req(4, "hey", 3);
    assert_int_equal(intake_push(in, &late, 0), 0);
    struct intake_job *j = intake_pop(in);
    assert_non_null(j);
    assert_int_equal(j->rc, RILL_E_SHUTTING_DOWN);
    intake_job_free(j);
    /* What is left at the end is freed (ASan checks it). */
    struct proto_submit left = req(5, "hey", 3);
    assert_int_equal(intake_push(in, &left, 0), 0);
    free(big);
    intake_free(in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_requests_come_back_in_order_tokenized_as_prompt_tokenize_does),
        cmocka_unit_test(test_a_cancel_while_tokenizing_is_remembered_and_idempotent),
        cmocka_unit_test(test_stopping_hands_back_what_was_never_tokenized),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
