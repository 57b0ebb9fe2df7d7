/* test_prefix.c — the prefix cache (worker/kvcache.h, worker/sched.h).
 *
 * What it promises: full blocks of computed tokens are kept under a chained
 * hash of their tokens; a new sequence reuses exactly the blocks that hold
 * its first tokens (the same tokens from position 0, not merely the same
 * block), computes only the rest, and gets bit-identical keys, values,
 * logits and tokens to a computation from scratch; idle cached blocks give
 * way (least recently used first, a chain's tail before its head) to any
 * sequence that needs room before anything is preempted, and go first
 * under memory pressure; the heartbeat carries the counters.
 *
 * The block-table tests need no model.  The others run the tiny models that
 * $RILL_TEST_BUILD/rill-mkmodel (build/ by default) makes in a temporary
 * directory, through engine_open() as the worker does.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"
#include "common/err.h"
#include "common/log.h"
#include "common/proto.h"
#include "worker/engine.h"
#include "worker/forward.h"
#include "worker/kvcache.h"
#include "worker/sched.h"
#include "testutil.h"

static char tmpdir[64];
static char tiny_path[160], tiny_q8_path[160];

static int setup(void **state)
{
    (void)state;
    rlog_init("test", NULL, RLOG_ERROR, false, 2);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/rill-test-prefix-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    char corpus[128], cmd[1024];
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", tmpdir);
    if (tu_write_corpus(corpus))
        return -1;
    snprintf(tiny_path, sizeof tiny_path, "%s/tiny.gguf", tmpdir);
    snprintf(tiny_q8_path, sizeof tiny_q8_path, "%s/tiny-q8.gguf", tmpdir);
    const char *paths[] = {tiny_path, tiny_q8_path}, *types[] = {"f32", "q8_0"};
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd, "%s/rill-mkmodel --shape tiny --dtype %s --seed 7 --corpus %s --out %s 2>%s/mk.log",
                 tu_build_dir(), types[i], corpus, paths[i], tmpdir);
        if (system(cmd) != 0) {
            fprintf(stderr, "failed: %s (build it first: make %s/rill-mkmodel)\n", cmd, tu_build_dir());
            return -1;
        }
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- the block table, without a model ------------------------------------------------------ */

#define BT 4 /* tokens per block in these tests */

static struct kv *small_kv(uint32_t blocks)
{
    struct kv *kv;
    /* 1 layer, kv_dim 8, 4 tokens: 256 bytes of floats, one page a block. */
    assert_int_equal(kv_create(1, 8, BT, (size_t)blocks * (size_t)sysconf(_SC_PAGESIZE), &kv), 0);
    assert_int_equal(kv_blocks_total(kv), blocks);
    kv_prefix_enable(kv, true);
    return kv;
}

/* A sequence that "computed" tokens[0, n): holds its blocks, published. */
static void computed(struct kv *kv, struct kv_seq *s, const int32_t *tokens, uint32_t n)
{
    memset(s, 0, sizeof *s);
    assert_int_equal(kv_reserve(kv, s, n), 0);
    kv_prefix_publish(kv, s, tokens, n);
}

static uint32_t cached_blocks(const struct kv *kv)
{
    struct kv_prefix_stats st;
    kv_prefix_stats(kv, &st);
    return st.cached;
}

static void test_only_full_computed_blocks_are_published_and_attach_finds_them(void **state)
{
    (void)state;
    struct kv *kv = small_kv(16);
    int32_t t[16];
    for (int i = 0; i < 16; i++)
        t[i] = 100 + i;
    struct kv_seq a = {0};
    assert_int_equal(kv_reserve(kv, &a, 11), 0); /* 3 blocks */
    kv_prefix_publish(kv, &a, t, 3);             /* block 0 not full yet */
    assert_int_equal(cached_blocks(kv), 0);
    kv_prefix_publish(kv, &a, t, 10); /* blocks 0, 1 full; 2 is not */
    assert_int_equal(cached_blocks(kv), 2);
    kv_prefix_publish(kv, &a, t, 10); /* nothing new */
    assert_int_equal(cached_blocks(kv), 2);
    assert_int_equal(a.n_hashed, 2);

    /* Another sequence with the same 11 tokens shares blocks 0 and 1 (the
     * very blocks of a), and the limit is a cap in whole blocks. */
    struct kv_seq b = {0};
    assert_int_equal(kv_prefix_attach(kv, &b, t, 11), 8);
    assert_int_equal(b.n_blocks, 2);
    assert_int_equal(b.blocks[0], a.blocks[0]);
    assert_int_equal(b.blocks[1], a.blocks[1]);
    kv_release(kv, &b);
    assert_int_equal(kv_prefix_attach(kv, &b, t, 7), 4);
    kv_release(kv, &b);
    assert_int_equal(kv_prefix_attach(kv, &b, t, 3), 0);
    kv_release(kv, &b);
    /* Held by a and b at once: a's release leaves them to b. */
    assert_int_equal(kv_prefix_attach(kv, &b, t, 16), 8);
    uint32_t free_before = kv_blocks_free(kv);
    kv_release(kv, &a);
    assert_int_equal(kv_blocks_free(kv), free_before + 1); /* a's private block 2 */
    assert_int_equal(cached_blocks(kv), 2);
    /* b goes on from there: its next full block chains onto the shared ones. */
    assert_int_equal(kv_reserve(kv, &b, 12), 0);
    kv_prefix_publish(kv, &b, t, 12);
    assert_int_equal(cached_blocks(kv), 3);
    kv_release(kv, &b);
    struct kv_prefix_stats st;
    kv_prefix_stats(kv, &st);
    assert_int_equal(st.idle, 3);
    assert_int_equal(kv_blocks_free(kv), 16); /* idle cached blocks count as free */
    assert_int_equal(kv_bytes_used(kv), 0);
    assert_int_equal(kv_prefix_attach(kv, &b, t, 16), 12);
    kv_release(kv, &b);
    kv_free(kv);
}

static void test_a_block_matches_only_after_the_same_tokens_from_position_zero(void **state)
{
    (void)state;
    struct kv *kv = small_kv(16);
    int32_t x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    struct kv_seq a;
    computed(kv, &a, x, 8);

    /* Block 1's tokens first: not a prefix (the chain starts at 0). */
    int32_t shifted[8] = {5, 6, 7, 8, 5, 6, 7, 8};
    struct kv_seq b = {0};
    assert_int_equal(kv_prefix_attach(kv, &b, shifted, 8), 0);
    kv_release(kv, &b);
    /* The same second block after a different first one: nothing. */
    int32_t other_head[8] = {1, 2, 3, 9, 5, 6, 7, 8};
    assert_int_equal(kv_prefix_attach(kv, &b, other_head, 8), 0);
    kv_release(kv, &b);
    /* Diverging in the second block: the first only. */
    int32_t other_tail[8] = {1, 2, 3, 4, 5, 6, 7, 9};
    assert_int_equal(kv_prefix_attach(kv, &b, other_tail, 8), 4);
    kv_release(kv, &b);

    /* That other chain, computed, is cached beside a's: each finds its own
     * second block after the shared first. */
    struct kv_seq c;
    computed(kv, &c, other_tail, 8);
    assert_int_equal(cached_blocks(kv), 3); /* c's first block equals a's and stays private */
    assert_int_equal(kv_prefix_attach(kv, &b, other_tail, 8), 8);
    assert_int_equal(b.blocks[0], a.blocks[0]);
    assert_int_equal(b.blocks[1], c.blocks[1]);
    kv_release(kv, &b);
    assert_int_equal(kv_prefix_attach(kv, &b, x, 8), 8);
    assert_int_equal(b.blocks[1], a.blocks[1]);
    kv_release(kv, &b);
    kv_release(kv, &a);
    kv_release(kv, &c);
    /* c's private copy of the first block went back to the free list. */
    struct kv_prefix_stats st;
    kv_prefix_stats(kv, &st);
    assert_int_equal(st.idle, 3);
    assert_int_equal(kv_blocks_free(kv), 16);
    kv_free(kv);
}

static void test_idle_blocks_are_evicted_least_recently_used_first_tail_before_head(void **state)
{
    (void)state;
    struct kv *kv = small_kv(10);
    int32_t p1[12], p2[8];
    for (int i = 0; i < 12; i++)
        p1[i] = 1000 + i;
    for (int i = 0; i < 8; i++)
        p2[i] = 2000 + i;
    struct kv_seq a, b, c = {0}, d = {0};
    computed(kv, &a, p1, 12); /* 3 blocks */
    computed(kv, &b, p2, 8);  /* 2 blocks */
    kv_release(kv, &a);       /* LRU: p1[2] p1[1] p1[0] */
    kv_release(kv, &b);       /*      p2[1] p2[0] */
    assert_int_equal(kv_blocks_free(kv), 10);
    /* 5 free + 5 idle: a reservation of 6 takes the free ones, then the
     * least recently used idle one, p1's deepest block. */
    assert_int_equal(kv_reserve(kv, &c, 6 * BT), 0);
    struct kv_prefix_stats st;
    kv_prefix_stats(kv, &st);
    assert_int_equal(st.evictions, 1);
    assert_int_equal(st.cached, 4);
    assert_int_equal(kv_prefix_attach(kv, &d, p1, 12), 8);
    kv_release(kv, &d); /* used: LRU p2[1] p2[0] p1[1] p1[0] */
    assert_int_equal(kv_reserve(kv, &c, 7 * BT), 0);
    assert_int_equal(kv_prefix_attach(kv, &d, p2, 8), 4); /* its tail went, its head stays */
    kv_release(kv, &d); /* LRU p1[1] p1[0] p2[0] */
    assert_int_equal(kv_prefix_attach(kv, &d, p1, 12), 8);
    kv_release(kv, &d); /* LRU p2[0] p1[1] p1[0] */
    assert_int_equal(kv_reserve(kv, &c, 8 * BT), 0);
    assert_int_equal(kv_prefix_attach(kv, &d, p2, 8), 0);
    kv_release(kv, &d);
    /* Held blocks are never evicted: 8 held by c, 2 by d, none left. */
    assert_int_equal(kv_prefix_attach(kv, &d, p1, 12), 8);
    assert_int_equal(kv_blocks_free(kv), 0);
    struct kv_seq e = {0};
    assert_int_equal(kv_reserve(kv, &e, 1), RILL_E_NOMEM);
    assert_int_equal(e.n_blocks, 0);
    kv_release(kv, &d);
    kv_release(kv, &c);
    kv_prefix_stats(kv, &st);
    assert_int_equal(st.evictions, 3);
    assert_int_equal(st.idle, 2);
    /* Evicted blocks go to the free list, where kv_trim returns them. */
    kv_trim(kv);
    assert_int_equal(kv_prefix_evict(kv, 1), 1);
    assert_int_equal(kv_trim(kv), kv_block_bytes(kv));
    assert_int_equal(kv_prefix_attach(kv, &d, p1, 12), 4);
    kv_release(kv, &d);
    assert_int_equal(kv_prefix_evict(kv, 5), 1);
    assert_int_equal(kv_prefix_evict(kv, 5), 0);
    kv_prefix_stats(kv, &st);
    assert_int_equal(st.cached, 0);
    assert_int_equal(st.evictions, 5);
    assert_int_equal(kv_blocks_free(kv), 10);
    kv_free(kv);
}

static void test_the_idle_cache_is_bounded_and_its_pages_are_reused(void **state)
{
    (void)state;
    struct kv *kv = small_kv(20);
    kv_prefix_limit(kv, 3 * kv_block_bytes(kv)); /* 3 idle blocks at most */
    int32_t p[5][8];
    for (int k = 0; k < 5; k++)
        for (int i = 0; i < 8; i++)
            p[k][i] = 100 * (k + 1) + i;
    kv_trim(kv);
    for (int k = 0; k < 5; k++) {
        struct kv_seq s;
        computed(kv, &s, p[k], 8); /* 2 blocks each */
        kv_release(kv, &s);
        struct kv_prefix_stats st;
        kv_prefix_stats(kv, &st);
        assert_true(st.idle <= 3);
    }
    /* The newest prompt's head block is still there; the oldest are gone. */
    struct kv_seq d = {0};
    assert_int_equal(kv_prefix_attach(kv, &d, p[4], 8), 8);
    kv_release(kv, &d);
    assert_int_equal(kv_prefix_attach(kv, &d, p[0], 8), 0);
    kv_release(kv, &d);
    /* Five prompts of 2 blocks touched no more than 3 cached + 2 in use:
     * evicted blocks went to the top of the free stack and were reused. */
    assert_true(kv_bytes_resident(kv) <= 5 * kv_block_bytes(kv));
    /* A lower bound evicts at once. */
    kv_prefix_limit(kv, 1 * kv_block_bytes(kv));
    struct kv_prefix_stats st;
    kv_prefix_stats(kv, &st);
    assert_int_equal(st.idle, 1);
    kv_free(kv);
}

static void test_a_disabled_cache_publishes_and_attaches_nothing(void **state)
{
    (void)state;
    struct kv *kv = small_kv(8);
    int32_t t[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    struct kv_seq a, b = {0};
    computed(kv, &a, t, 8);
    kv_release(kv, &a);
    assert_int_equal(cached_blocks(kv), 2);
    kv_prefix_enable(kv, false); /* evicts what is idle */
    assert_int_equal(cached_blocks(kv), 0);
    assert_int_equal(kv_prefix_attach(kv, &b, t, 8), 0);
    kv_release(kv, &b);
    computed(kv, &a, t, 8);
    assert_int_equal(cached_blocks(kv), 0);
    kv_release(kv, &a);
    assert_int_equal(kv_blocks_free(kv), 8);
    kv_free(kv);
}

/* ---- exactness of the forward pass after cached blocks ---------------------------------------- */

struct rig {
    struct engine e;
    struct coll {
        uint64_t *id;
        int32_t *tok;
        uint32_t *flags;
        size_t n, cap;
    } c;
    struct sched_out out;
};

static int coll_emit(void *ctx, const struct proto_token *t)
{
    struct coll *c = ctx;
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 1024;
        c->id = realloc(c->id, c->cap * sizeof *c->id);
        c->tok = realloc(c->tok, c->cap * sizeof *c->tok);
        c->flags = realloc(c->flags, c->cap * sizeof *c->flags);
        assert_true(c->id && c->tok && c->flags);
    }
    c->id[c->n] = t->req_id;
    c->tok[c->n] = t->token_id;
    c->flags[c->n] = t->flags;
    c->n++;
    return 0;
}

static void coll_flush(void *ctx) { (void)ctx; }

static void rig_open(struct rig *r, const char *model, bool prefix, const char *kv_bytes, int max_batch)
{
    memset(r, 0, sizeof *r);
    struct rill_config c;
    cfg_defaults(&c);
    char why[512] = "", mb[16];
    snprintf(mb, sizeof mb, "%d", max_batch);
    const char *kvs[][2] = {
        {"model", model}, {"threads", "1"}, {"max_batch", mb}, {"prefill_chunk", "128"}, {"context", "512"},
        {"kv_block_tokens", "16"}, {"prefix_cache", prefix ? "true" : "false"},
        /* a slow shared machine must not shrink the batch a test counts on */
        {"target_latency_ms", "10000"}, {"max_latency_ms", "60000"},
    };
    for (size_t i = 0; i < sizeof kvs / sizeof kvs[0]; i++)
        if (cfg_set(&c, kvs[i][0], kvs[i][1], why, sizeof why))
            fail_msg("cfg_set %s: %s", kvs[i][0], why);
    if (kv_bytes)
        assert_int_equal(cfg_set(&c, "kv_cache_bytes", kv_bytes, why, sizeof why), 0);
    int rc = engine_open(&c, false, &r->e, why, sizeof why);
    if (rc)
        fail_msg("engine_open: %s: %s", rill_err_name(rc), why);
    assert_int_equal(kv_prefix_enabled(r->e.kv), prefix);
    r->out = (struct sched_out){&r->c, coll_emit, coll_flush};
}

static void rig_close(struct rig *r)
{
    engine_close(&r->e);
    free(r->c.id);
    free(r->c.tok);
    free(r->c.flags);
    memset(r, 0, sizeof *r);
}

/* Token ids of a test sequence: a fixed pseudo-random walk over the vocabulary. */
static void walk(uint64_t seed, int32_t *t, uint32_t n, uint32_t V)
{
    uint64_t x = 0x9e3779b97f4a7c15ull * (seed + 1);
    for (uint32_t k = 0; k < n; k++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        t[k] = (int32_t)(x % V);
    }
}

/* Run rows [from, to) of tokens in one step, logits for every row into out. */
static void run_rows(struct rig *r, struct kv_seq *s, const int32_t *t, uint32_t from, uint32_t to, float *out)
{
    uint32_t V = r->e.model->cfg.vocab, n = to - from;
    struct fwd_row *rows = calloc(n, sizeof *rows);
    for (uint32_t k = 0; k < n; k++)
        rows[k] = (struct fwd_row){t[from + k], from + k, s, (int32_t)k};
    assert_int_equal(kv_reserve(r->e.kv, s, to), 0);
    assert_int_equal(fwd_run(r->e.fwd, rows, n, out), 0);
    free(rows);
    (void)V;
}

static void check_suffix_after_cached_blocks(const char *model)
{
    struct rig r;
    rig_open(&r, model, true, NULL, 8);
    const struct model_config *mc = &r.e.model->cfg;
    uint32_t V = mc->vocab, kvd = mc->n_kv_heads * mc->head_dim;
    enum { N = 75, HIT = 64 }; /* 4 full blocks of 16, then 11 tokens */
    int32_t t[N];
    walk(42, t, N, V);

    /* From scratch, the whole prompt in one step. */
    struct kv_seq a = {0};
    float *full = malloc((size_t)N * V * sizeof(float));
    run_rows(&r, &a, t, 0, N, full);
    kv_prefix_publish(r.e.kv, &a, t, N);
    assert_int_equal(cached_blocks(r.e.kv), 4);

    /* A second sequence: the 4 blocks from the cache, the 11 rows after
     * them computed in one step.  Same keys, values and logits, bit for bit. */
    struct kv_seq b = {0};
    assert_int_equal(kv_prefix_attach(r.e.kv, &b, t, N - 1), HIT);
    float *suf = malloc((size_t)(N - HIT) * V * sizeof(float));
    run_rows(&r, &b, t, HIT, N, suf);
    if (memcmp(suf, full + (size_t)HIT * V, (size_t)(N - HIT) * V * sizeof(float)))
        fail_msg("%s: logits of the rows after the cached prefix differ from a full prefill", model);
    for (uint32_t l = 0; l < mc->n_layers; l++)
        for (uint32_t p = HIT; p < N; p++) {
            assert_true(kv_k(r.e.kv, &b, l, p) != kv_k(r.e.kv, &a, l, p)); /* b's own block */
            if (memcmp(kv_k(r.e.kv, &b, l, p), kv_k(r.e.kv, &a, l, p), kvd * sizeof(float)) ||
                memcmp(kv_v(r.e.kv, &b, l, p), kv_v(r.e.kv, &a, l, p), kvd * sizeof(float)))
                fail_msg("%s: K/V of layer %u position %u differ after a cached prefix", model, l, p);
        }

    /* And from scratch with a different chunking (16 rows a step), which
     * publishes equal blocks that stay private: the same logits again. */
    struct kv_seq c = {0};
    float *chunked = malloc((size_t)16 * V * sizeof(float));
    for (uint32_t from = 0; from < N; from += 16) {
        uint32_t to = from + 16 < N ? from + 16 : N;
        run_rows(&r, &c, t, from, to, chunked);
        kv_prefix_publish(r.e.kv, &c, t, to);
        if (to == N && memcmp(chunked, full + (size_t)from * V, (size_t)(to - from) * V * sizeof(float)))
            fail_msg("%s: a chunked prefill differs from the whole one", model);
    }
    assert_int_equal(cached_blocks(r.e.kv), 4);
    kv_release(r.e.kv, &a);
    kv_release(r.e.kv, &b);
    kv_release(r.e.kv, &c);
    free(full);
    free(suf);
    free(chunked);
    rig_close(&r);
}

static void test_suffix_prefill_after_cached_blocks_gives_the_same_kv_and_logits(void **state)
{
    (void)state;
    check_suffix_after_cached_blocks(tiny_path);
    check_suffix_after_cached_blocks(tiny_q8_path); /* int8 activations too */
}

/* ---- the scheduler, with and without the cache ---------------------------------------------- */

static void step(struct rig *r)
{
    int rc = sched_step(r->e.sched, &r->out);
    if (rc < 0)
        fail_msg("sched_step: %s", rill_err_name(rc));
}

static void drive(struct rig *r)
{
    for (int i = 0; sched_busy(r->e.sched); i++) {
        if (i > 100000)
            fail_msg("the scheduler does not finish");
        step(r);
    }
}

/* A request of exactly the token ids t (no text: no BOS), greedy or seeded. */
static struct proto_submit treq(uint64_t id, const int32_t *t, uint32_t n, uint32_t max_tokens, bool seeded)
{
    struct proto_submit q = {0};
    q.id = id;
    q.prompt = "";
    q.prompt_tokens = t;
    q.n_prompt_tokens = n;
    q.max_tokens = max_tokens;
    q.top_p = 1;
    q.repetition_penalty = 1;
    q.has_seed = true;
    q.seed = 7000 + id;
    if (seeded) {
        q.temperature = 0.9f;
        q.top_k = 40;
        q.repetition_penalty = 1.2f;
    }
    return q;
}

static void submit_ok(struct rig *r, const struct proto_submit *q)
{
    char why[256] = "";
    int rc = sched_submit(r->e.sched, q, 0, why, sizeof why);
    if (rc)
        fail_msg("submit %llu: %s: %s", (unsigned long long)q->id, rill_err_name(rc), why);
}

/* The tokens request id produced, in order (malloc'd, *n of them); checks
 * that exactly one record is LAST and it is the last. */
static int32_t *tokens_of(const struct rig *r, uint64_t id, uint32_t *n)
{
    int32_t *t = malloc((r->c.n + 1) * sizeof *t);
    *n = 0;
    bool last = false;
    for (size_t i = 0; i < r->c.n; i++) {
        if (r->c.id[i] != id)
            continue;
        assert_false(last);
        last = r->c.flags[i] & PROTO_TOK_LAST;
        assert_false(r->c.flags[i] & PROTO_TOK_ERROR);
        if (r->c.tok[i] >= 0)
            t[(*n)++] = r->c.tok[i];
    }
    assert_true(last);
    return t;
}

#define SYS 150   /* shared "system prompt" tokens */
#define USER 20
#define NQ 8

/* NQ requests: a shared system prompt, then each its own user message;
 * even ones greedy, odd ones seeded.  Round 0 one after the other; round 1
 * the first alone until its prompt is in, then the rest at once while it
 * decodes (they share blocks it holds). */
static void shared_prefix_run(bool prefix, int round, int32_t (*t)[SYS + USER], int32_t **out, uint32_t *n_out,
                              struct sched_stats *st)
{
    struct rig r;
    rig_open(&r, tiny_path, prefix, NULL, 16);
    for (uint32_t i = 0; i < NQ; i++) {
        struct proto_submit q = treq(10 + i, t[i], SYS + USER, 24, i % 2);
        submit_ok(&r, &q);
        if (round == 0)
            drive(&r);
        /* Round 1: the rest join while the first decodes, sharing its blocks. */
        for (struct sched_stats s0; round == 1 && i == 0;) {
            sched_stats(r.e.sched, &s0);
            if (s0.prefill_tokens >= SYS + USER)
                break;
            step(&r);
        }
    }
    drive(&r);
    for (uint32_t i = 0; i < NQ; i++)
        out[i] = tokens_of(&r, 10 + i, &n_out[i]);
    sched_stats(r.e.sched, st);
    rig_close(&r);
}

static void test_shared_prefix_requests_give_the_same_tokens_with_and_without_the_cache(void **state)
{
    (void)state;
    int32_t t[NQ][SYS + USER];
    for (uint32_t i = 0; i < NQ; i++) {
        walk(1, t[i], SYS, 512);          /* the same system prompt */
        walk(100 + i, t[i] + SYS, USER, 512);
    }
    for (int round = 0; round < 2; round++) {
        int32_t *off[NQ], *on[NQ];
        uint32_t n_off[NQ], n_on[NQ];
        struct sched_stats s_off, s_on;
        shared_prefix_run(false, round, t, off, n_off, &s_off);
        shared_prefix_run(true, round, t, on, n_on, &s_on);
        for (uint32_t i = 0; i < NQ; i++) {
            assert_true(n_off[i] > 0);
            if (n_on[i] != n_off[i] || memcmp(on[i], off[i], n_on[i] * sizeof *on[i]))
                fail_msg("round %d, request %u (%s): the tokens differ with the prefix cache", round, i,
                         i % 2 ? "seeded" : "greedy");
            free(off[i]);
            free(on[i]);
        }
        assert_int_equal(s_off.prefix_lookups, 0);
        assert_int_equal(s_off.prefix_hit_tokens, 0);
        assert_int_equal(s_on.prefix_lookups, NQ);
        /* 150 shared tokens: 9 full blocks of 16 (144 tokens). */
        assert_int_equal(s_on.prefix_hits, NQ - 1);
        assert_int_equal(s_on.prefix_hit_tokens, (uint64_t)(NQ - 1) * 144);
        assert_int_equal(s_on.prefix_lookup_tokens, (uint64_t)NQ * (SYS + USER));
        assert_int_equal(s_on.prefill_tokens + s_on.prefix_hit_tokens, s_off.prefill_tokens);
        print_message("  round %d: %llu of %u requests hit, prefill %llu tokens (without the cache %llu)\n", round,
                      (unsigned long long)s_on.prefix_hits, NQ, (unsigned long long)s_on.prefill_tokens,
                      (unsigned long long)s_off.prefill_tokens);
        if (round == 0)
            assert_true(s_on.prefix_blocks >= 9);
    }
}

static void test_a_resumed_request_reuses_the_blocks_of_its_delivered_tokens(void **state)
{
    (void)state;
    /* Failover resubmits prompt + delivered tokens with skip: the blocks
     * the first run computed (output included) are found, and the rest is
     * exactly what the uninterrupted run produced. */
    int32_t t[40];
    walk(5, t, 40, 512);
    for (int seeded = 0; seeded < 2; seeded++) {
        struct rig r;
        rig_open(&r, tiny_path, true, NULL, 8);
        struct proto_submit q = treq(1, t, 40, 60, seeded);
        submit_ok(&r, &q);
        drive(&r);
        uint32_t n_full;
        int32_t *full = tokens_of(&r, 1, &n_full);
        assert_true(n_full > 32);
        /* 40 prompt + 30 delivered = 70 tokens: 4 full blocks before the last. */
        int32_t carried[70];
        memcpy(carried, t, sizeof t);
        memcpy(carried + 40, full, 30 * sizeof *full);
        struct proto_submit qr = treq(2, carried, 70, 60, seeded);
        qr.seed = q.seed;
        qr.skip = 30;
        submit_ok(&r, &qr);
        drive(&r);
        uint32_t n_res;
        int32_t *res = tokens_of(&r, 2, &n_res);
        assert_int_equal(n_res, n_full - 30);
        if (memcmp(res, full + 30, n_res * sizeof *res))
            fail_msg("%s: the resumed request's tokens differ from the uninterrupted run", seeded ? "seeded" : "greedy");
        struct sched_stats st;
        sched_stats(r.e.sched, &st);
        assert_int_equal(st.prefix_hits, 1);
        assert_int_equal(st.prefix_hit_tokens, 64);
        free(full);
        free(res);
        rig_close(&r);
    }
}

static void test_a_prompt_of_whole_blocks_seen_before_still_computes_its_last_token(void **state)
{
    (void)state;
    /* 32 tokens: two whole blocks, both cached after the first request.
     * The second attaches only the first (the last token's row gives the
     * logits, so its block is computed again) and streams the same tokens. */
    int32_t t[32];
    walk(77, t, 32, 512);
    struct rig r;
    rig_open(&r, tiny_path, true, NULL, 8);
    for (uint64_t id = 1; id <= 2; id++) {
        struct proto_submit q = treq(id, t, 32, 10, false);
        submit_ok(&r, &q);
        drive(&r);
    }
    struct sched_stats st;
    sched_stats(r.e.sched, &st);
    assert_int_equal(st.prefix_hits, 1);
    assert_int_equal(st.prefix_hit_tokens, 16);
    uint32_t n1, n2;
    int32_t *a = tokens_of(&r, 1, &n1), *b = tokens_of(&r, 2, &n2);
    assert_true(n1 > 0);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1 * sizeof *a);
    free(a);
    free(b);
    rig_close(&r);
}

static void test_cached_blocks_give_way_before_anything_is_preempted(void **state)
{
    (void)state;
    /* Tiny model: a block is 2 layers x K,V x 16 x 32 floats = 8 KiB; 160K
     * holds 20 blocks.  Four finished requests (49 prompt tokens, up to 16
     * out: at most 4 blocks each) leave their full blocks cached; then four
     * new ones need the room: the cache gives it up, nothing is preempted,
     * and the tokens are those of a run without the cache. */
    enum { P = 49, OUT = 16 };
    int32_t t[8][P];
    for (int i = 0; i < 8; i++)
        walk(300 + (uint64_t)i, t[i], P, 512);
    int32_t *got[2][8];
    uint32_t n_got[2][8];
    for (int prefix = 0; prefix < 2; prefix++) {
        struct rig r;
        rig_open(&r, tiny_path, prefix, "160K", 8);
        assert_int_equal(kv_blocks_total(r.e.kv), 20);
        for (int i = 0; i < 4; i++) {
            struct proto_submit q = treq(1 + (uint64_t)i, t[i], P, OUT, false);
            submit_ok(&r, &q);
        }
        drive(&r);
        struct sched_stats st;
        sched_stats(r.e.sched, &st);
        uint32_t cached = 0;
        for (int i = 0; i < 4; i++) {
            got[prefix][i] = tokens_of(&r, 1 + (uint64_t)i, &n_got[prefix][i]);
            cached += (P + n_got[prefix][i] - 1) / 16; /* all but the last token computed */
        }
        if (prefix) {
            assert_int_equal(st.prefix_blocks, cached);
            assert_true(cached > 4);
            assert_int_equal(kv_blocks_free(r.e.kv), 20);
            assert_int_equal(st.kv_used, 0);
        }
        for (int i = 4; i < 8; i++) {
            struct proto_submit q = treq(1 + (uint64_t)i, t[i], P, OUT, i % 2);
            submit_ok(&r, &q);
        }
        drive(&r);
        sched_stats(r.e.sched, &st);
        assert_int_equal(st.preemptions, 0);
        assert_int_equal(st.finished, 8);
        if (prefix) {
            assert_true(st.prefix_evictions >= cached - 4);
            assert_int_equal(st.prefix_hits, 0);
        }
        for (int i = 4; i < 8; i++)
            got[prefix][i] = tokens_of(&r, 1 + (uint64_t)i, &n_got[prefix][i]);
        rig_close(&r);
    }
    for (int i = 0; i < 8; i++) {
        assert_int_equal(n_got[0][i], n_got[1][i]);
        assert_memory_equal(got[0][i], got[1][i], n_got[0][i] * sizeof(int32_t));
        free(got[0][i]);
        free(got[1][i]);
    }
}

static void test_memory_pressure_evicts_cached_blocks_least_recently_used_first(void **state)
{
    (void)state;
    struct rig r;
    rig_open(&r, tiny_path, true, NULL, 8);
    /* Eight finished requests, one after the other: 8 x 2 cached blocks
     * (31 prompt + 7 computed output tokens). */
    int32_t t[8][31];
    for (int i = 0; i < 8; i++) {
        walk(400 + (uint64_t)i, t[i], 31, 512);
        struct proto_submit q = treq(1 + (uint64_t)i, t[i], 31, 8, false);
        submit_ok(&r, &q);
        drive(&r);
    }
    struct sched_stats st;
    sched_stats(r.e.sched, &st);
    assert_int_equal(st.prefix_blocks, 16);
    /* Normal: nothing goes. */
    assert_int_equal(sched_trim(r.e.sched), 0);
    /* Warning: a quarter, the least recently used: the first two requests'. */
    sched_set_pressure(r.e.sched, PRESSURE_WARNING);
    assert_true(sched_trim(r.e.sched) >= 4 * kv_block_bytes(r.e.kv));
    sched_stats(r.e.sched, &st);
    assert_int_equal(st.prefix_blocks, 12);
    assert_int_equal(st.prefix_evictions, 4);
    sched_set_pressure(r.e.sched, PRESSURE_NORMAL);
    uint64_t hits = st.prefix_hit_tokens;
    for (int i = 0; i < 8; i++) {
        struct proto_submit q = treq(100 + (uint64_t)i, t[i], 31, 2, false);
        submit_ok(&r, &q);
        drive(&r);
        sched_stats(r.e.sched, &st);
        assert_int_equal(st.prefix_hit_tokens - hits, i < 2 ? 0 : 16); /* the last token runs */
        hits = st.prefix_hit_tokens;
    }
    /* Critical: all of them, before the running set is touched. */
    sched_set_pressure(r.e.sched, PRESSURE_CRITICAL);
    sched_stats(r.e.sched, &st);
    assert_int_equal(st.prefix_blocks, 0);
    assert_int_equal(st.preemptions, 0);
    rig_close(&r);
}

/* ---- the heartbeat --------------------------------------------------------------------------- */

static void test_the_heartbeat_carries_the_prefix_counters(void **state)
{
    (void)state;
    struct proto_msg m = {.type = PROTO_HEARTBEAT};
    struct proto_heartbeat *h = &m.u.heartbeat;
    snprintf(h->id, sizeof h->id, "w0");
    h->prefix_lookups = 10;
    h->prefix_hits = 7;
    h->prefix_lookup_tokens = 5200;
    h->prefix_hit_tokens = 1ull << 40;
    h->prefix_evictions = 3;
    h->prefix_blocks = 123456;
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    char why[256] = "";
    assert_int_equal(proto_encode(&m, &b, why, sizeof why), 0);
    struct proto_msg o;
    assert_int_equal(proto_decode(b.data, b.size, &o, why, sizeof why), 0);
    const struct proto_heartbeat *g = &o.u.heartbeat;
    assert_int_equal(g->prefix_lookups, 10);
    assert_int_equal(g->prefix_hits, 7);
    assert_int_equal(g->prefix_lookup_tokens, 5200);
    assert_true(g->prefix_hit_tokens == 1ull << 40);
    assert_int_equal(g->prefix_evictions, 3);
    assert_int_equal(g->prefix_blocks, 123456);
    proto_msg_free(&o);
    msgpack_sbuffer_destroy(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_only_full_computed_blocks_are_published_and_attach_finds_them),
        cmocka_unit_test(test_a_block_matches_only_after_the_same_tokens_from_position_zero),
        cmocka_unit_test(test_idle_blocks_are_evicted_least_recently_used_first_tail_before_head),
        cmocka_unit_test(test_the_idle_cache_is_bounded_and_its_pages_are_reused),
        cmocka_unit_test(test_a_disabled_cache_publishes_and_attaches_nothing),
        cmocka_unit_test(test_suffix_prefill_after_cached_blocks_gives_the_same_kv_and_logits),
        cmocka_unit_test(test_shared_prefix_requests_give_the_same_tokens_with_and_without_the_cache),
        cmocka_unit_test(test_a_resumed_request_reuses_the_blocks_of_its_delivered_tokens),
        cmocka_unit_test(test_a_prompt_of_whole_blocks_seen_before_still_computes_its_last_token),
        cmocka_unit_test(test_cached_blocks_give_way_before_anything_is_preempted),
        cmocka_unit_test(test_memory_pressure_evicts_cached_blocks_least_recently_used_first),
        cmocka_unit_test(test_the_heartbeat_carries_the_prefix_counters),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
