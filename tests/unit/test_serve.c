/* test_serve.c — the worker's loop (serve_run) through its wire: the test is
 * the gateway, with a DEALER on the worker's request socket and the token
 * ring read as the gateway reads it.
 *
 * What it checks is what new requests do to running ones: tokenizing a long
 * prompt must not hold up the streams that are running (the loop once
 * tokenized on its own thread, and every stream waited for it); an error the
 * tokenizer finds still reaches the gateway as a rejection with its code; a
 * request cancelled while it is being tokenized ends exactly once, as
 * cancelled.
 *
 * The worker runs in a forked child (engine_open + serve_run, as
 * rill-worker does), with --fake_tokens: a token per sequence every 5 ms,
 * whatever the machine's speed and never an end of sequence, so that a
 * stall shows as a gap between a stream's records.  A prompt of
 * PROTO_MAX_PROMPT bytes takes the tiny model's tokenizer ~100-250 ms here.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/err.h"
#include "common/log.h"
#include "common/plane.h"
#include "common/proto.h"
#include "common/ring.h"
#include "common/zsock.h"
#include "worker/engine.h"
#include "worker/serve.h"
#include "worker/tokenizer.h"
#include "testutil.h"

#define STEP_MS   5
#define EPOCH     (7ull << 32)  /* the gateway's epoch in its request ids */

static char tmpdir[64];
static char model_path[160];
static char *long_prompt;       /* PROTO_MAX_PROMPT bytes of English-like text */
static size_t long_len;
static double tokenize_ms;      /* what the long prompt takes to tokenize here (best of 3) */

static int setup(void **state)
{
    (void)state;
    rlog_init("test", NULL, RLOG_ERROR, false, 2);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/rill-test-serve-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    char corpus[128], cmd[1024];
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", tmpdir);
    if (tu_write_corpus(corpus))
        return -1;
    snprintf(model_path, sizeof model_path, "%s/tiny.gguf", tmpdir);
    snprintf(cmd, sizeof cmd, "%s/rill-mkmodel --shape tiny --dtype f32 --seed 7 --corpus %s --out %s 2>%s/mk.log",
             tu_build_dir(), corpus, model_path, tmpdir);
    if (system(cmd) != 0) {
        fprintf(stderr, "failed: %s (build it first: make %s/rill-mkmodel)\n", cmd, tu_build_dir());
        return -1;
    }
    /* The long prompt: the corpus over and over. */
    FILE *f = fopen(corpus, "rb");
    if (!f)
        return -1;
    char buf[65536];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    long_len = PROTO_MAX_PROMPT;
    long_prompt = malloc(long_len);
    if (!long_prompt || n == 0)
        return -1;
    for (size_t i = 0; i < long_len; i++)
        long_prompt[i] = buf[i % n];
    /* How long the tokenizer takes on it, measured before any worker runs. */
    struct model *m;
    char why[256];
    if (model_load(model_path, false, &m, why, sizeof why))
        return -1;
    size_t cap = 4096, got = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    tokenize_ms = 1e9;
    for (int r = 0; r < 3; r++) {
        uint64_t t0 = clock_ns();
        tok_encode(m->tok, long_prompt, long_len, true, ids, cap, &got);
        double ms = clock_ms_since(t0);
        if (ms < tokenize_ms)
            tokenize_ms = ms;
    }
    free(ids);
    model_free(m);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    free(long_prompt);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- a worker in a child process, and the test as its gateway ------------------------------ */

struct rig {
    pid_t pid;
    struct rill_config c;
    char run_dir[128];
    void *zctx, *dealer;
    struct ring *ring;
};

static void set(struct rill_config *c, const char *key, const char *val)
{
    char why[256] = "";
    if (cfg_set(c, key, val, why, sizeof why))
        fail_msg("cfg_set %s %s: %s", key, val, why);
}

static void child_main(struct rill_config *c)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* a test that fails leaves no worker behind */
    struct engine e;
    char why[512] = "";
    int rc = engine_open(c, false, &e, why, sizeof why);
    if (rc) {
        fprintf(stderr, "engine_open: %s: %s\n", rill_err_name(rc), why);
        _exit(3);
    }
    rc = serve_run(c, &e);
    engine_close(&e);
    _exit(rc ? 1 : 0);
}

static void rig_open(struct rig *r)
{
    memset(r, 0, sizeof *r);
    cfg_defaults(&r->c);
    char v[64];
    set(&r->c, "model", model_path);
    /* Each rig its own names: a worker a failed test left behind is in
     * nobody's way. */
    static int n_rigs;
    snprintf(v, sizeof v, "ts%d-%d", (int)getpid(), n_rigs);
    set(&r->c, "instance", v);
    snprintf(r->run_dir, sizeof r->run_dir, "%s/r%d", tmpdir, n_rigs++);
    set(&r->c, "run_dir", r->run_dir);
    set(&r->c, "threads", "1");
    set(&r->c, "max_batch", "8");
    set(&r->c, "kv_cache_bytes", "4M");
    set(&r->c, "fake_tokens", "true");
    snprintf(v, sizeof v, "%d", STEP_MS);
    set(&r->c, "target_latency_ms", v);
    set(&r->c, "log_level", "error");
    fflush(NULL);
    r->pid = fork();
    assert_true(r->pid >= 0);
    if (r->pid == 0)
        child_main(&r->c);
    /* The ring exists once the worker is set up. */
    char name[RING_NAME_MAX], why[256];
    assert_int_equal(cfg_ring_name(&r->c, "w0", name, sizeof name), 0);
    for (int i = 0; ring_open(name, &r->ring, why, sizeof why) != 0; i++) {
        if (i > 1000 || waitpid(r->pid, NULL, WNOHANG) == r->pid)
            fail_msg("the worker did not come up: %s", why);
        usleep(10000);
    }
    assert_int_equal(zs_ctx_new(&r->zctx), 0);
    struct zs_id id;
    zs_id_from_str(&id, "gw-test");
    assert_int_equal(zs_dealer(r->zctx, &id, false, &r->dealer), 0);
    char ep[ZS_ENDPOINT_MAX];
    assert_int_equal(zs_endpoint_ipc(ep, sizeof ep, r->run_dir, "w0.sock"), 0);
    assert_int_equal(zs_connect(r->dealer, ep), 0);
}

/* Two signals: the worker ends what runs (shutting_down) and exits. */
static void rig_close(struct rig *r)
{
    kill(r->pid, SIGTERM);
    usleep(20000);
    kill(r->pid, SIGTERM);
    int status = 0;
    for (int i = 0; waitpid(r->pid, &status, WNOHANG) != r->pid; i++) {
        if (i > 500) {
            kill(r->pid, SIGKILL);
            waitpid(r->pid, &status, 0);
            break;
        }
        usleep(10000);
    }
    zs_close(&r->dealer);
    zs_ctx_term(&r->zctx);
    ring_close(r->ring, false);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void submit(struct rig *r, uint64_t id, const char *prompt, size_t len, uint32_t max_tokens)
{
    struct proto_msg m = {.type = PROTO_SUBMIT};
    struct proto_submit *q = &m.u.submit;
    q->id = id;
    q->prompt = prompt;
    q->prompt_len = (uint32_t)len;
    q->max_tokens = max_tokens;
    q->top_p = 1;
    q->repetition_penalty = 1;
    q->has_seed = true;
    assert_int_equal(plane_send(r->dealer, NULL, &m), 0);
}

static void cancel(struct rig *r, uint64_t id)
{
    struct proto_msg m = {.type = PROTO_CANCEL};
    m.u.cancel.id = id;
    assert_int_equal(plane_send(r->dealer, NULL, &m), 0);
}

/* What came back for one request. */
struct seen {
    uint64_t id;
    int replied;                /* 0 none yet, 1 accepted, -1 rejected */
    int32_t code;
    uint64_t t_reply;
    uint32_t n_rec, n_last;
    uint32_t last_flags;
    int32_t last_pos, last_tok;
    uint64_t t_prev, max_gap_ns; /* between records, from the records' own times */
    uint64_t gap_from, gap_to;   /* only gaps that end inside this window count */
    bool until;                  /* pump() returns once this one is answered */
};

/* Read replies and records for up to `ms`, or until every one of s[0..n)
 * with `until` set has its answer. */
static bool answered(const struct seen *s, int n)
{
    bool any = false;
    for (int i = 0; i < n; i++) {
        if (s[i].until && !s[i].replied)
            return false;
        any |= s[i].until;
    }
    return any;
}

static void pump(struct rig *r, struct seen *s, int n, int ms)
{
    uint64_t end = clock_ns() + (uint64_t)ms * 1000000;
    while (clock_ns() < end && !answered(s, n)) {
        const void *data;
        uint32_t len, kind;
        bool any = false;
        while (ring_next(r->ring, &data, &len, &kind) == 0) {
            any = true;
            /* Answers travel in the ring, ahead of the request's tokens. */
            if (kind == PROTO_MSG_KIND) {
                struct proto_msg m;
                char why[256];
                if (proto_decode(data, len, &m, why, sizeof why) != 0)
                    continue;
                for (int i = 0; i < n; i++) {
                    if (m.type == PROTO_ACCEPTED && m.u.accepted.id == s[i].id)
                        s[i].replied = 1, s[i].t_reply = clock_ns();
                    if (m.type == PROTO_REJECTED && m.u.rejected.id == s[i].id)
                        s[i].replied = -1, s[i].code = m.u.rejected.code, s[i].t_reply = clock_ns();
                }
                proto_msg_free(&m);
                continue;
            }
            struct proto_token t;
            if (kind != PROTO_TOK_KIND || proto_token_decode(data, len, &t) < 0)
                continue;
            for (int i = 0; i < n; i++) {
                if (t.req_id != s[i].id)
                    continue;
                s[i].n_rec++;
                if (s[i].t_prev && t.t_gen_ns >= s[i].gap_from && t.t_gen_ns <= s[i].gap_to &&
                    t.t_gen_ns - s[i].t_prev > s[i].max_gap_ns)
                    s[i].max_gap_ns = t.t_gen_ns - s[i].t_prev;
                s[i].t_prev = t.t_gen_ns;
                if (t.flags & PROTO_TOK_LAST) {
                    s[i].n_last++;
                    s[i].last_flags = t.flags;
                    s[i].last_pos = (int32_t)t.position;
                    s[i].last_tok = t.token_id;
                }
            }
        }
        if (any)
            ring_release(r->ring);
        else
            usleep(500);
    }
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_a_long_prompt_does_not_hold_up_running_streams(void **state)
{
    (void)state;
    struct rig r;
    rig_open(&r);
    /* Two streams that run for ~4 s (800 fake tokens at 5 ms). */
    struct seen s[3] = {{.id = EPOCH | 1, .until = true}, {.id = EPOCH | 2, .until = true}, {.id = EPOCH | 3}};
    for (int i = 0; i < 3; i++)
        s[i].gap_to = UINT64_MAX;
    submit(&r, s[0].id, "the quick brown fox", 19, 800);
    submit(&r, s[1].id, "jumps over", 10, 800);
    pump(&r, s, 3, 2000);
    assert_int_equal(s[0].replied, 1);
    assert_int_equal(s[1].replied, 1);
    s[0].until = s[1].until = false;
    pump(&r, s, 3, 300); /* they are streaming */
    assert_true(s[0].n_rec > 10);

    /* Gaps count from here until the long prompt's answer (+2 steps). */
    uint64_t t_send = clock_ns();
    for (int i = 0; i < 2; i++)
        s[i].gap_from = t_send, s[i].max_gap_ns = 0;
    s[2].until = true;
    submit(&r, s[2].id, long_prompt, long_len, 16);
    pump(&r, s, 3, 10000);
    s[2].until = false;
    for (int i = 0; i < 2; i++)
        s[i].gap_to = s[2].t_reply + 2 * STEP_MS * 1000000ull;
    pump(&r, s, 3, 4 * STEP_MS);
    double waited = (double)(s[2].t_reply - t_send) / 1e6;

    rig_close(&r);

    /* The tokenizer's error still reaches the gateway, with its code. */
    assert_int_equal(s[2].replied, -1);
    assert_int_equal(s[2].code, RILL_E_CONTEXT_LENGTH);
    /* Meanwhile the streams kept their cadence: no gap near what the
     * tokenizer took (the loop that tokenized itself stalled for all of it). */
    double limit = tokenize_ms / 2 > 4 * STEP_MS ? tokenize_ms / 2 : 4 * STEP_MS;
    for (int i = 0; i < 2; i++) {
        double gap = (double)s[i].max_gap_ns / 1e6;
        fprintf(stderr, "stream %d: longest gap %.1f ms while the prompt was tokenized (%.1f ms to the answer; "
                        "tokenizing it takes %.1f ms)\n", i, gap, waited, tokenize_ms);
        if (gap >= limit)
            fail_msg("stream %d waited %.1f ms for a step (limit %.1f ms): the long prompt held it up", i, gap,
                     limit);
    }
    assert_true(tokenize_ms > 4 * STEP_MS); /* else this test could not tell */
}

static void test_cancel_while_tokenizing_ends_the_request_once(void **state)
{
    (void)state;
    struct rig r;
    rig_open(&r);
    /* The long prompt first: the short one behind it waits in the intake
     * while the long one is tokenized, and is cancelled there, twice. */
    struct seen s[2] = {{.id = EPOCH | 10, .until = true}, {.id = EPOCH | 11, .until = true}};
    for (int i = 0; i < 2; i++)
        s[i].gap_to = UINT64_MAX;
    submit(&r, s[0].id, long_prompt, long_len, 16);
    submit(&r, s[1].id, "hello", 5, 500);
    cancel(&r, s[1].id);
    cancel(&r, s[1].id);
    pump(&r, s, 2, 10000);
    s[0].until = s[1].until = false;
    pump(&r, s, 2, 500);
    cancel(&r, s[1].id); /* a third, after the end: nothing more */
    pump(&r, s, 2, 200);
    rig_close(&r);

    assert_int_equal(s[0].replied, -1);
    assert_int_equal(s[0].code, RILL_E_CONTEXT_LENGTH);
    /* Accepted (the cancel is the client's; the request was fine), then one
     * record: FIRST and LAST, no token, finish cancelled, at position 0. */
    assert_int_equal(s[1].replied, 1);
    assert_int_equal(s[1].n_rec, 1);
    assert_int_equal(s[1].n_last, 1);
    assert_int_equal(s[1].last_flags, PROTO_TOK_FIRST | PROTO_TOK_LAST | PROTO_TOK_FINISH(PROTO_FINISH_CANCELLED));
    assert_int_equal(s[1].last_pos, 0);
    assert_int_equal(s[1].last_tok, -1);
    assert_int_equal(s[0].n_rec, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_long_prompt_does_not_hold_up_running_streams),
        cmocka_unit_test(test_cancel_while_tokenizing_ends_the_request_once),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
