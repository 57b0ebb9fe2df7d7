/* test_forward.c — exactness of the forward pass.
 *
 * The design promises that a row's logits do not depend on what else runs
 * in the step: decoding alone, in a batch, prefilling at once or in chunks,
 * recomputing, on any number of threads, with the scalar or the AVX2
 * kernels — bit-identical.  These tests hold the forward pass to that with
 * memcmp, and hold its arithmetic to a plain double-precision Llama forward
 * written here (llama2.c style, reading weights through wmat_row_f32 only).
 *
 * Models are made by $RILL_TEST_BUILD/rill-mkmodel (build/ by default) in a
 * temporary directory, from a corpus the test writes (so the tokenizer does
 * not depend on the shipped one):
 *   tiny     --shape tiny (dim 64, 2 layers, 4 heads / 2 KV heads, ffn 128, vocab 512)
 *   gqa      --dim 128 --layers 2 --heads 4 --kv-heads 2 --ffn 256 --vocab 512
 *   each in f32, f16 and q8_0;
 *   mha64    --dim 128 --layers 2 --heads 2 --kv-heads 2 --ffn 256 --vocab 512
 *            (f32): heads of 64 without grouped queries;
 *   and for the reference test also
 *   odd      --dim 96 --layers 3 --heads 3 --kv-heads 3 --ffn 160 --vocab 509 --tied (f32):
 *            plain multi-head attention, tied output, a vocabulary that is
 *            not a multiple of the kernels' row groups;
 *   and one model of every other weight type (quantized ones compute with
 *   int8 activations), --dim 256 --layers 2 --heads 4 --kv-heads 2 --ffn 512
 *   --vocab 512, plus mixed files (q4_K_M; q5_K_M tied; q4_K_M on rows of
 *   96, where K types fall back to q5_0/q8_0), for their own exactness test.
 *
 * Golden file: tests/data/golden-tiny.txt holds the greedy tokens of the tiny
 * f32 model (seed 7) after a fixed prompt of token ids.  When the change is
 * intended (new weights generator, new forward pass), regenerate it with
 *   make build/tests/test_forward build/rill-mkmodel
 *   RILL_UPDATE_GOLDEN=1 RILL_TEST_BUILD=build build/tests/test_forward
 * from the repository root (RILL_TEST_DATA=dir points elsewhere), and say
 * why in the commit.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "worker/forward.h"
#include "worker/kern.h"
#include "worker/kvcache.h"
#include "worker/model.h"
#include "worker/pool.h"
#include "worker/tokenizer.h"
#include "testutil.h"

#define MAX_CTX 512
#define SEED "7"

static char tmpdir[64];

struct mspec {
    const char *name;
    const char *args;
};

/* The models the exactness tests run on (every one of them). */
static const struct mspec models[] = {
    {"tiny-f32", "--shape tiny --dtype f32"},
    {"tiny-f16", "--shape tiny --dtype f16"},
    {"tiny-q8_0", "--shape tiny --dtype q8_0"},
    {"gqa-f32", "--dim 128 --layers 2 --heads 4 --kv-heads 2 --ffn 256 --vocab 512 --dtype f32"},
    {"gqa-f16", "--dim 128 --layers 2 --heads 4 --kv-heads 2 --ffn 256 --vocab 512 --dtype f16"},
    {"gqa-q8_0", "--dim 128 --layers 2 --heads 4 --kv-heads 2 --ffn 256 --vocab 512 --dtype q8_0"},
    /* heads of 64 without grouped queries: AVX-512 attention of a prompt's
     * consecutive rows together */
    {"mha64-f32", "--dim 128 --layers 2 --heads 2 --kv-heads 2 --ffn 256 --vocab 512 --dtype f32"},
};
#define N_MODELS (sizeof models / sizeof models[0])
static const struct mspec odd_model = {
    "odd-f32", "--dim 96 --layers 3 --heads 3 --kv-heads 3 --ffn 160 --vocab 509 --tied --dtype f32"};
#define QSHAPE "--dim 256 --layers 2 --heads 4 --kv-heads 2 --ffn 512 --vocab 512 "
static const struct mspec qmodels[] = {
    {"qt-bf16", QSHAPE "--dtype bf16"},     {"qt-q4_0", QSHAPE "--dtype q4_0"},
    {"qt-q4_1", QSHAPE "--dtype q4_1"},     {"qt-q5_0", QSHAPE "--dtype q5_0"},
    {"qt-q5_1", QSHAPE "--dtype q5_1"},     {"qt-q2_K", QSHAPE "--dtype q2_K"},
    {"qt-q3_K", QSHAPE "--dtype q3_K"},     {"qt-q4_K", QSHAPE "--dtype q4_K"},
    {"qt-q5_K", QSHAPE "--dtype q5_K"},     {"qt-q6_K", QSHAPE "--dtype q6_K"},
    {"qt-q4_K_M", QSHAPE "--dtype q4_K_M"}, {"qt-q5_K_M-tied", QSHAPE "--dtype q5_K_M --tied"},
    {"qt-q4_K_M-96", "--dim 96 --layers 2 --heads 3 --kv-heads 3 --ffn 256 --vocab 509 --tied --dtype q4_K_M"},
};
#define N_QMODELS (sizeof qmodels / sizeof qmodels[0])

static const char *tpath(const char *name)
{
    static char p[8][160];
    static int k;
    k = (k + 1) % 8;
    snprintf(p[k], sizeof p[k], "%s/%s.gguf", tmpdir, name);
    return p[k];
}

static int make_model(const struct mspec *ms, const char *corpus)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s/rill-mkmodel %s --seed " SEED " --corpus %s --out %s 2>%s/mk.log",
             tu_build_dir(), ms->args, corpus, tpath(ms->name), tmpdir);
    if (system(cmd) != 0) {
        fprintf(stderr, "failed: %s\n", cmd);
        snprintf(cmd, sizeof cmd, "cat %s/mk.log >&2", tmpdir);
        if (system(cmd)) {
        }
        return -1;
    }
    return 0;
}

static int setup(void **state)
{
    (void)state;
    rlog_init("test", NULL, RLOG_WARN, false, 2);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/rill-test-forward-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    char bin[512];
    snprintf(bin, sizeof bin, "%s/rill-mkmodel", tu_build_dir());
    if (access(bin, X_OK) != 0) {
        fprintf(stderr, "%s not found: build it first (make %s)\n", bin, bin);
        return -1;
    }
    char corpus[128];
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", tmpdir);
    if (tu_write_corpus(corpus))
        return -1;
    for (size_t i = 0; i < N_MODELS; i++)
        if (make_model(&models[i], corpus))
            return -1;
    for (size_t i = 0; i < N_QMODELS; i++)
        if (make_model(&qmodels[i], corpus))
            return -1;
    return make_model(&odd_model, corpus);
}

static void free_cache(void);

static int teardown(void **state)
{
    (void)state;
    free_cache();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- a forward pass to test -------------------------------------------------------- */

struct rig {
    struct model *m;
    struct pool *pool;
    struct kv *kv;
    struct fwd *f;
    uint32_t V, max_rows;
};

static void rig_open(struct rig *r, const char *name, uint32_t threads, uint32_t max_rows)
{
    memset(r, 0, sizeof *r);
    char why[512] = "";
    int rc = model_load(tpath(name), false, &r->m, why, sizeof why);
    if (rc)
        fail_msg("loading %s: %s: %s", name, rill_err_name(rc), why);
    r->pool = pool_create(threads);
    assert_non_null(r->pool);
    const struct model_config *c = &r->m->cfg;
    /* Room for 24 sequences of MAX_CTX tokens (reserved address space only). */
    size_t per_tok = (size_t)c->n_layers * 2 * c->n_kv_heads * c->head_dim * sizeof(float);
    assert_int_equal(kv_create(c->n_layers, c->n_kv_heads * c->head_dim, 16, per_tok * MAX_CTX * 24, &r->kv), 0);
    rc = fwd_create(r->m, r->kv, r->pool, max_rows, MAX_CTX, &r->f, why, sizeof why);
    if (rc)
        fail_msg("fwd_create %s: %s: %s", name, rill_err_name(rc), why);
    r->V = c->vocab;
    r->max_rows = max_rows;
}

static void rig_close(struct rig *r)
{
    fwd_free(r->f);
    kv_free(r->kv);
    pool_free(r->pool);
    model_free(r->m);
    memset(r, 0, sizeof *r);
}

/* Token ids of test sequence i, length n: a fixed pseudo-random walk. */
static int32_t *seq_tokens(uint32_t i, uint32_t n, uint32_t V)
{
    int32_t *t = malloc(n * sizeof *t);
    uint64_t x = 0x9e3779b97f4a7c15ull * (i + 1);
    for (uint32_t k = 0; k < n; k++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        t[k] = (int32_t)(x % V);
    }
    return t;
}

/* A schedule: sequence s joins at step start[s] and then feeds up to
 * chunk[s] of its tokens per step, one fwd_run per step over every
 * sequence's rows.  With all_logits every row gets logits; otherwise only
 * the last row of each chunk (what the scheduler does) and the other
 * positions of out[] are left as they were.  out[s] holds len[s] * V floats. */
struct sched_spec {
    uint32_t n;
    const int32_t *const *tok;
    const uint32_t *len, *start, *chunk;
    bool all_logits;
};

static void run_schedule(struct rig *r, const struct sched_spec *sp, float **out)
{
    struct kv_seq *kvs = calloc(sp->n, sizeof *kvs);
    uint32_t *done = calloc(sp->n, sizeof *done);
    struct fwd_row *rows = calloc(r->max_rows, sizeof *rows);
    uint32_t *row_seq = calloc(r->max_rows, sizeof *row_seq);
    float *logits = malloc((size_t)r->max_rows * r->V * sizeof(float));
    for (uint32_t step = 0;; step++) {
        uint32_t n = 0, nl = 0;
        bool left = false;
        for (uint32_t s = 0; s < sp->n; s++) {
            if (done[s] < sp->len[s])
                left = true;
            if (step < sp->start[s] || done[s] >= sp->len[s])
                continue;
            uint32_t c = sp->len[s] - done[s] < sp->chunk[s] ? sp->len[s] - done[s] : sp->chunk[s];
            assert_true(n + c <= r->max_rows);
            assert_int_equal(kv_reserve(r->kv, &kvs[s], done[s] + c), 0);
            for (uint32_t k = 0; k < c; k++) {
                uint32_t pos = done[s] + k;
                bool want = sp->all_logits || k == c - 1;
                rows[n] = (struct fwd_row){sp->tok[s][pos], pos, &kvs[s], want ? (int32_t)nl : -1};
                if (want)
                    row_seq[nl++] = s;
                n++;
            }
        }
        if (!left)
            break;
        if (n == 0)
            continue;
        assert_int_equal(fwd_run(r->f, rows, n, logits), 0);
        for (uint32_t k = 0; k < n; k++) {
            if (rows[k].logits_row < 0)
                continue;
            uint32_t s = row_seq[rows[k].logits_row];
            memcpy(out[s] + (size_t)rows[k].pos * r->V, logits + (size_t)rows[k].logits_row * r->V,
                   r->V * sizeof(float));
        }
        for (uint32_t s = 0; s < sp->n; s++)
            if (step >= sp->start[s] && done[s] < sp->len[s])
                done[s] += sp->len[s] - done[s] < sp->chunk[s] ? sp->len[s] - done[s] : sp->chunk[s];
    }
    for (uint32_t s = 0; s < sp->n; s++)
        kv_release(r->kv, &kvs[s]);
    free(kvs);
    free(done);
    free(rows);
    free(row_seq);
    free(logits);
}

/* Logits of every position of one sequence decoded alone, one row a step. */
static float *decode_alone(struct rig *r, const int32_t *tok, uint32_t len)
{
    float *out = calloc((size_t)len * r->V, sizeof(float));
    uint32_t zero = 0, one = 1;
    struct sched_spec sp = {1, &tok, &len, &zero, &one, true};
    run_schedule(r, &sp, &out);
    return out;
}

/* memcmp of position p of two logit sets, with a message naming the first
 * differing element. */
static void assert_same_logits(const float *a, const float *b, uint32_t V, const char *what, const char *model,
                               uint32_t seq, uint32_t pos)
{
    if (memcmp(a, b, V * sizeof(float)) == 0)
        return;
    uint32_t i = 0;
    while (i < V && memcmp(a + i, b + i, sizeof(float)) == 0)
        i++;
    fail_msg("%s: %s, sequence %u, position %u: logit %u is %.9g, expected %.9g (bit-identical)", model, what, seq,
             pos, i, (double)b[i], (double)a[i]);
}

#define N_SEQ 6
static const uint32_t seq_len[N_SEQ] = {20, 33, 41, 17, 50, 29};

struct seqset {
    int32_t *tok[N_SEQ];
    float *alone[N_SEQ];
};

/* The sequences decoded alone, per model: computed once (1 thread) and
 * shared by the tests, which compare their own schedules against them. */
static struct seqset cache[N_MODELS];

static struct seqset *seqset_get(const struct rig *r, size_t mi)
{
    struct seqset *ss = &cache[mi];
    if (!ss->tok[0]) {
        struct rig one;
        rig_open(&one, models[mi].name, 1, 8);
        for (uint32_t s = 0; s < N_SEQ; s++) {
            ss->tok[s] = seq_tokens(s, seq_len[s], one.V);
            ss->alone[s] = decode_alone(&one, ss->tok[s], seq_len[s]);
        }
        rig_close(&one);
    }
    assert_int_equal(r->V, r->m->cfg.vocab);
    return ss;
}

static void seqset_free(struct seqset *ss)
{
    for (uint32_t s = 0; s < N_SEQ; s++) {
        free(ss->tok[s]);
        free(ss->alone[s]);
    }
    memset(ss, 0, sizeof *ss);
}

static void free_cache(void)
{
    for (size_t i = 0; i < N_MODELS; i++)
        seqset_free(&cache[i]);
}

/* Run a schedule over the set and compare every logit it produced with the
 * sequences decoded alone. */
static void check_schedule(struct rig *r, struct seqset *ss, const uint32_t *start, const uint32_t *chunk,
                           bool all_logits, const char *what, const char *model)
{
    float *out[N_SEQ];
    for (uint32_t s = 0; s < N_SEQ; s++)
        out[s] = calloc((size_t)seq_len[s] * r->V, sizeof(float));
    struct sched_spec sp = {N_SEQ, (const int32_t *const *)ss->tok, seq_len, start, chunk, all_logits};
    run_schedule(r, &sp, out);
    for (uint32_t s = 0; s < N_SEQ; s++) {
        uint32_t c = chunk[s];
        for (uint32_t p = 0; p < seq_len[s]; p++) {
            bool has = all_logits || (p + 1) % c == 0 || p == seq_len[s] - 1;
            if (has)
                assert_same_logits(ss->alone[s] + (size_t)p * r->V, out[s] + (size_t)p * r->V, r->V, what, model, s,
                                   p);
        }
        free(out[s]);
    }
}

/* ---- exactness ------------------------------------------------------------------------ */

static void test_batched_decode_is_bit_identical_to_decoding_alone(void **state)
{
    (void)state;
    for (size_t mi = 0; mi < N_MODELS; mi++) {
        struct rig r;
        rig_open(&r, models[mi].name, 2, 64);
        struct seqset *ss = seqset_get(&r, mi);
        /* Staggered joins: the batch grows 1..6 and shrinks again, so every
         * tile shape (3-wide, 2-wide, single rows) computes some row, and the
         * rows of a step are at different positions.  2 threads, as the
         * worker runs; the sequences alone ran on 1. */
        uint32_t start[N_SEQ] = {0, 1, 2, 3, 4, 5}, one[N_SEQ] = {1, 1, 1, 1, 1, 1};
        check_schedule(&r, ss, start, one, true, "batched decode", models[mi].name);
        /* And everyone at once. */
        uint32_t zero[N_SEQ] = {0};
        check_schedule(&r, ss, zero, one, true, "batched decode, all joined at step 0", models[mi].name);
        rig_close(&r);
    }
}

static void test_incremental_decode_equals_prefill_of_the_whole_sequence(void **state)
{
    (void)state;
    for (size_t mi = 0; mi < N_MODELS; mi++) {
        struct rig r;
        rig_open(&r, models[mi].name, 1, 64);
        struct seqset *ss = seqset_get(&r, mi);
        /* Each sequence recomputed in one fwd_run of all its rows. */
        for (uint32_t s = 0; s < N_SEQ; s++) {
            float *out = calloc((size_t)seq_len[s] * r.V, sizeof(float));
            uint32_t zero = 0;
            const int32_t *t = ss->tok[s];
            struct sched_spec sp = {1, &t, &seq_len[s], &zero, &seq_len[s], true};
            run_schedule(&r, &sp, &out);
            for (uint32_t p = 0; p < seq_len[s]; p++)
                assert_same_logits(ss->alone[s] + (size_t)p * r.V, out + (size_t)p * r.V, r.V,
                                   "prefill at once vs incremental decode", models[mi].name, s, p);
            free(out);
        }
        rig_close(&r);
    }
}

static void test_chunked_prefill_equals_prefill_at_once(void **state)
{
    (void)state;
    static const uint32_t chunks[] = {1, 3, 7, 16};
    for (size_t mi = 0; mi < N_MODELS; mi++) {
        struct rig r;
        rig_open(&r, models[mi].name, 1, N_SEQ * 16);
        struct seqset *ss = seqset_get(&r, mi);
        for (size_t ci = 0; ci < sizeof chunks / sizeof *chunks; ci++) {
            uint32_t zero[N_SEQ] = {0}, c[N_SEQ];
            for (int s = 0; s < N_SEQ; s++)
                c[s] = chunks[ci];
            char what[64];
            /* One sequence at a time (a prefill alone in its steps)… */
            for (uint32_t s = 0; s < N_SEQ; s++) {
                float *out = calloc((size_t)seq_len[s] * r.V, sizeof(float));
                const int32_t *t = ss->tok[s];
                struct sched_spec sp = {1, &t, &seq_len[s], zero, c, true};
                run_schedule(&r, &sp, &out);
                snprintf(what, sizeof what, "prefill in chunks of %u", chunks[ci]);
                for (uint32_t p = 0; p < seq_len[s]; p++)
                    assert_same_logits(ss->alone[s] + (size_t)p * r.V, out + (size_t)p * r.V, r.V, what,
                                       models[mi].name, s, p);
                free(out);
            }
            /* …and the scheduler's way: logits for the last row of a chunk only. */
            snprintf(what, sizeof what, "chunks of %u, last-row logits", chunks[ci]);
            check_schedule(&r, ss, zero, c, false, what, models[mi].name);
        }
        rig_close(&r);
    }
}

static void test_prefill_chunks_riding_along_with_decode_rows_are_exact(void **state)
{
    (void)state;
    for (size_t mi = 0; mi < N_MODELS; mi++) {
        struct rig r;
        rig_open(&r, models[mi].name, 1, 64);
        struct seqset *ss = seqset_get(&r, mi);
        /* Sequences 0, 2, 4 prefill in chunks of 7, 5, 9 while 1, 3, 5 decode. */
        uint32_t start[N_SEQ] = {0, 0, 3, 1, 6, 2}, c[N_SEQ] = {7, 1, 5, 1, 9, 1};
        check_schedule(&r, ss, start, c, true, "mixed prefill and decode", models[mi].name);
        check_schedule(&r, ss, start, c, false, "mixed prefill and decode, last-row logits", models[mi].name);
        rig_close(&r);
    }
}

static void test_logits_do_not_depend_on_the_thread_count(void **state)
{
    (void)state;
    /* The cached sequences were decoded with 1 thread; 2 and 3 threads
     * split the matrix products into other tasks on other threads (3 is
     * more threads than this machine may have cores: slow, but the same). */
    static const uint32_t threads[] = {2, 3};
    for (size_t mi = 0; mi < N_MODELS; mi++) {
        struct rig r1;
        rig_open(&r1, models[mi].name, 1, 8);
        struct seqset *ss = seqset_get(&r1, mi);
        rig_close(&r1);
        /* 3 threads only on two models: oversubscribed, it is slow. */
        for (size_t ti = 0; ti < (mi == 0 || mi == 5 ? 2u : 1u); ti++) {
            struct rig r;
            rig_open(&r, models[mi].name, threads[ti], 64);
            uint32_t start[N_SEQ] = {0, 1, 2, 0, 1, 2}, c[N_SEQ] = {1, 4, 1, 11, 1, 1};
            char what[64];
            snprintf(what, sizeof what, "%u threads vs 1", threads[ti]);
            check_schedule(&r, ss, start, c, true, what, models[mi].name);
            rig_close(&r);
        }
    }
}

static void test_scalar_path_equals_avx2_bit_for_bit(void **state)
{
    (void)state;
    if (kern_isa() == KERN_SCALAR)
        skip(); /* nothing to compare on this CPU */
    for (size_t mi = 0; mi < N_MODELS; mi++) {
        struct rig r;
        rig_open(&r, models[mi].name, 1, 64);
        struct seqset *ss = seqset_get(&r, mi); /* AVX2, or AVX-512 where the CPU has it */
        enum kern_isa simd = kern_set_isa(KERN_SCALAR);
        assert_true(simd >= KERN_AVX2);
        assert_int_equal(kern_isa(), KERN_SCALAR);
        uint32_t start[N_SEQ] = {0, 1, 2, 3, 4, 5}, c[N_SEQ] = {1, 1, 3, 1, 7, 1};
        check_schedule(&r, ss, start, c, true, "scalar kernels vs AVX2", models[mi].name);
        kern_set_isa(simd);
        rig_close(&r);
    }
}

static double max_abs(const float *v, uint32_t n)
{
    double m = 0;
    for (uint32_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)v[i]));
    return m;
}

static void test_blas_matmul_is_batch_invariant_within_tolerance(void **state)
{
    (void)state;
    /* OpenBLAS (F32 only) blocks its sums by the shape of the call, so a row
     * in a batch may round differently from the row alone: 1e-4 of the
     * largest logit bounds that (single-precision sums of a few hundred
     * terms over 2 layers are ~1e-6 apart), and it agrees with the native
     * kernels to the same bound. */
    const double tol = 1e-4;
    const size_t which[] = {0, 3}; /* tiny-f32, gqa-f32 */
    for (int w = 0; w < 2; w++) {
        size_t mi = which[w];
        const char *name = models[mi].name;
        struct rig r;
        rig_open(&r, name, 1, 64);
        struct seqset *ss = seqset_get(&r, mi); /* native */
        fwd_set_matmul(r.f, FWD_BLAS, 1);
        float *blas_alone[N_SEQ];
        for (uint32_t s = 0; s < N_SEQ; s++)
            blas_alone[s] = decode_alone(&r, ss->tok[s], seq_len[s]);
        float *out[N_SEQ];
        for (uint32_t s = 0; s < N_SEQ; s++)
            out[s] = calloc((size_t)seq_len[s] * r.V, sizeof(float));
        uint32_t start[N_SEQ] = {0, 1, 2, 3, 4, 5}, c[N_SEQ] = {1, 1, 1, 1, 1, 1};
        struct sched_spec sp = {N_SEQ, (const int32_t *const *)ss->tok, seq_len, start, c, true};
        run_schedule(&r, &sp, out);
        double worst = 0;
        for (uint32_t s = 0; s < N_SEQ; s++)
            for (uint32_t p = 0; p < seq_len[s]; p++) {
                const float *a = blas_alone[s] + (size_t)p * r.V, *b = out[s] + (size_t)p * r.V,
                            *nat = ss->alone[s] + (size_t)p * r.V;
                double scale = max_abs(a, r.V);
                for (uint32_t i = 0; i < r.V; i++) {
                    double d1 = fabs((double)a[i] - b[i]) / scale, d2 = fabs((double)a[i] - nat[i]) / scale;
                    worst = fmax(worst, fmax(d1, d2));
                    if (d1 > tol || d2 > tol)
                        fail_msg("%s blas: sequence %u position %u logit %u: alone %.9g, batched %.9g, native %.9g",
                                 name, s, p, i, (double)a[i], (double)b[i], (double)nat[i]);
                }
            }
        print_message("  %s: blas batched/alone/native worst relative difference %.2e\n", name, worst);
        for (uint32_t s = 0; s < N_SEQ; s++) {
            free(out[s]);
            free(blas_alone[s]);
        }
        rig_close(&r);
    }
}

static void test_forward_rejects_bad_rows(void **state)
{
    (void)state;
    struct rig r;
    rig_open(&r, "tiny-f32", 1, 4);
    struct kv_seq s = {0};
    assert_int_equal(kv_reserve(r.kv, &s, MAX_CTX), 0);
    float *logits = malloc((size_t)5 * r.V * sizeof(float));
    struct fwd_row rows[5];
    for (int i = 0; i < 5; i++)
        rows[i] = (struct fwd_row){1, (uint32_t)i, &s, i};
    assert_int_equal(fwd_run(r.f, rows, 5, logits), RILL_E_TOO_LARGE); /* max_rows 4 */
    rows[0].token = (int32_t)r.V;
    assert_int_equal(fwd_run(r.f, rows, 1, logits), RILL_E_BAD_REQUEST);
    rows[0].token = -1;
    assert_int_equal(fwd_run(r.f, rows, 1, logits), RILL_E_BAD_REQUEST);
    rows[0] = (struct fwd_row){1, MAX_CTX, &s, 0};
    assert_int_equal(fwd_run(r.f, rows, 1, logits), RILL_E_BAD_REQUEST);
    rows[0] = (struct fwd_row){1, MAX_CTX - 1, &s, 0};
    assert_int_equal(fwd_run(r.f, rows, 1, logits), 0);
    assert_int_equal(fwd_run(r.f, rows, 0, logits), 0);
    free(logits);
    kv_release(r.kv, &s);
    rig_close(&r);
}

/* ---- a plain reference forward pass ----------------------------------------------------- *
 *
 * llama2.c's forward() in double precision: no kernels, no packing, no
 * BLAS, the weights read row by row through wmat_row_f32().  RMSNorm; RoPE
 * rotating adjacent pairs (2i, 2i+1) of each head's first rope_dim dims by
 * theta = pos * base^(-2i/rope_dim); grouped-query attention (query head h
 * reads KV head h / (n_heads / n_kv_heads)); SwiGLU; the output is
 * token_embd when the file has no output.weight. */

struct ref {
    const struct model *m;
    uint32_t max_pos;
    double *kc, *vc;                 /* [layer][pos][kv_dim] */
    double *x, *xb, *q, *k, *v, *att, *tmp, *hb, *hb2, *sc;
    float *row;
    double *xq;   /* ref_matvec's input as int8 codes times their scale */
    bool q8_acts; /* Q8_0 weights multiply x quantized as the kernels do */
};

static void ref_init(struct ref *R, const struct model *m, uint32_t max_pos)
{
    const struct model_config *c = &m->cfg;
    R->m = m;
    R->max_pos = max_pos;
    size_t kvd = (size_t)c->n_kv_heads * c->head_dim, qd = (size_t)c->n_heads * c->head_dim;
    R->kc = calloc((size_t)c->n_layers * max_pos * kvd, sizeof(double));
    R->vc = calloc((size_t)c->n_layers * max_pos * kvd, sizeof(double));
    size_t big = c->dim > c->ffn_dim ? c->dim : c->ffn_dim;
    big = big > qd ? big : qd;
    double **bufs[] = {&R->x, &R->xb, &R->q, &R->k, &R->v, &R->att, &R->tmp, &R->hb, &R->hb2};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        *bufs[i] = calloc(big, sizeof(double));
    R->sc = calloc(max_pos, sizeof(double));
    R->row = calloc(big > c->vocab ? big : c->vocab, sizeof(float));
    R->xq = calloc(big, sizeof(double));
    R->q8_acts = false;
}

static void ref_free(struct ref *R)
{
    double *bufs[] = {R->kc, R->vc, R->x, R->xb, R->q, R->k, R->v, R->att, R->tmp, R->hb, R->hb2, R->sc};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        free(bufs[i]);
    free(R->row);
    free(R->xq);
}

static void ref_rmsnorm(double *o, const double *x, const float *w, uint32_t n, double eps)
{
    double ss = 0;
    for (uint32_t i = 0; i < n; i++)
        ss += x[i] * x[i];
    double s = 1.0 / sqrt(ss / n + eps);
    for (uint32_t i = 0; i < n; i++)
        o[i] = x[i] * s * w[i];
}

/* o = W x, W rows x cols.  With q8_acts, Q8_0 weights multiply x as the
 * kernels see it (quant.h): each block of 32 rounded to int8 codes
 * q = round(x * 127 / max|x|) times d = max|x| / 127 — in double here. */
static void ref_matvec(struct ref *R, double *o, const struct wmat *W, const double *x)
{
    if (R->q8_acts && W->type == WT_Q8_0) {
        for (uint32_t k0 = 0; k0 < W->cols; k0 += 32) {
            double amax = 0;
            for (uint32_t k = k0; k < k0 + 32; k++)
                amax = fmax(amax, fabs(x[k]));
            for (uint32_t k = k0; k < k0 + 32; k++)
                R->xq[k] = amax > 0 ? nearbyint(x[k] * (127 / amax)) * (amax / 127) : 0;
        }
        x = R->xq;
    }
    for (uint32_t r = 0; r < W->rows; r++) {
        wmat_row_f32(W, r, R->row);
        double s = 0;
        for (uint32_t k = 0; k < W->cols; k++)
            s += (double)R->row[k] * x[k];
        o[r] = s;
    }
}

static void ref_rope(double *v, uint32_t n_heads, uint32_t hd, uint32_t rope_dim, double base, uint32_t pos)
{
    for (uint32_t h = 0; h < n_heads; h++)
        for (uint32_t i = 0; i < rope_dim / 2; i++) {
            double theta = pos * pow(base, -2.0 * i / rope_dim);
            double *p = v + (size_t)h * hd + 2 * i, a = p[0], b = p[1];
            p[0] = a * cos(theta) - b * sin(theta);
            p[1] = a * sin(theta) + b * cos(theta);
        }
}

static void ref_forward(struct ref *R, int32_t token, uint32_t pos, double *logits)
{
    const struct model *m = R->m;
    const struct model_config *c = &m->cfg;
    uint32_t dim = c->dim, hd = c->head_dim, kvd = c->n_kv_heads * hd, ffn = c->ffn_dim;
    assert_true(pos < R->max_pos);
    wmat_row_f32(&m->tok_embd, (uint32_t)token, R->row);
    for (uint32_t i = 0; i < dim; i++)
        R->x[i] = R->row[i];
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const struct layer_weights *L = &m->layers[l];
        ref_rmsnorm(R->xb, R->x, L->attn_norm, dim, c->norm_eps);
        ref_matvec(R, R->q, &L->wq, R->xb);
        ref_matvec(R, R->k, &L->wk, R->xb);
        ref_matvec(R, R->v, &L->wv, R->xb);
        ref_rope(R->q, c->n_heads, hd, c->rope_dim, c->rope_base, pos);
        ref_rope(R->k, c->n_kv_heads, hd, c->rope_dim, c->rope_base, pos);
        double *kl = R->kc + (size_t)l * R->max_pos * kvd, *vl = R->vc + (size_t)l * R->max_pos * kvd;
        memcpy(kl + (size_t)pos * kvd, R->k, kvd * sizeof(double));
        memcpy(vl + (size_t)pos * kvd, R->v, kvd * sizeof(double));
        for (uint32_t h = 0; h < c->n_heads; h++) {
            uint32_t g = h / (c->n_heads / c->n_kv_heads);
            const double *q = R->q + (size_t)h * hd;
            double mx = -INFINITY;
            for (uint32_t t = 0; t <= pos; t++) {
                const double *k = kl + (size_t)t * kvd + (size_t)g * hd;
                double s = 0;
                for (uint32_t i = 0; i < hd; i++)
                    s += q[i] * k[i];
                R->sc[t] = s / sqrt((double)hd);
                mx = fmax(mx, R->sc[t]);
            }
            double sum = 0;
            for (uint32_t t = 0; t <= pos; t++)
                sum += R->sc[t] = exp(R->sc[t] - mx);
            double *o = R->att + (size_t)h * hd;
            for (uint32_t i = 0; i < hd; i++)
                o[i] = 0;
            for (uint32_t t = 0; t <= pos; t++) {
                const double *v = vl + (size_t)t * kvd + (size_t)g * hd;
                for (uint32_t i = 0; i < hd; i++)
                    o[i] += R->sc[t] / sum * v[i];
            }
        }
        ref_matvec(R, R->tmp, &L->wo, R->att);
        for (uint32_t i = 0; i < dim; i++)
            R->x[i] += R->tmp[i];
        ref_rmsnorm(R->xb, R->x, L->ffn_norm, dim, c->norm_eps);
        ref_matvec(R, R->hb, &L->w_gate, R->xb);
        ref_matvec(R, R->hb2, &L->w_up, R->xb);
        for (uint32_t i = 0; i < ffn; i++)
            R->hb[i] = R->hb[i] / (1.0 + exp(-R->hb[i])) * R->hb2[i];
        ref_matvec(R, R->tmp, &L->w_down, R->hb);
        for (uint32_t i = 0; i < dim; i++)
            R->x[i] += R->tmp[i];
    }
    ref_rmsnorm(R->xb, R->x, m->out_norm, dim, c->norm_eps);
    ref_matvec(R, logits, m->tied_output ? &m->tok_embd : &m->output, R->xb);
}

static uint32_t argmax_f(const float *v, uint32_t n)
{
    uint32_t b = 0;
    for (uint32_t i = 1; i < n; i++)
        if (v[i] > v[b])
            b = i;
    return b;
}

static uint32_t argmax_d(const double *v, uint32_t n, double *margin)
{
    uint32_t b = 0;
    for (uint32_t i = 1; i < n; i++)
        if (v[i] > v[b])
            b = i;
    double second = -INFINITY;
    for (uint32_t i = 0; i < n; i++)
        if (i != b)
            second = fmax(second, v[i]);
    *margin = v[b] - second;
    return b;
}

/* Tolerance of the fast pass against the double reference, relative to the
 * largest |logit| of the position.  The fast pass computes in float with
 * fused multiply-adds: each of the 2-3 layers' dot products (length <= 256)
 * rounds at ~6e-8 relative per add, a few e-6 relative in all after the
 * layers compound it; softmax and RoPE tables add ~1e-7.  Measured worst
 * case is printed (about 1e-6); 1e-4 of the largest logit is two orders above it and
 * orders below what a real mistake gives (a wrong RoPE pair, GQA group,
 * norm or tied matrix changes logits by O(1) of their scale).  The same
 * bound holds for F16, because the reference reads the same dequantized
 * weights: only the arithmetic differs; and for Q8_0, whose kernels
 * multiply int8 activations, with the reference quantizing its activations
 * the same way (R.q8_acts) — measured ~2e-7 over these 40 positions.
 *
 * Over the 300 steps of the long run, a few Q8_0 activations land within
 * float rounding of a code boundary (x * 127 / max|x| near k + 1/2), where
 * the fast pass's float and the reference's double take neighbouring
 * codes: that activation moves by 1/127 of its block's largest, and the
 * KV cache keeps the difference (measured worst 1.9e-2 of the largest
 * logit, as int8 activations cost; test_every_weight_type_...'s 0.08 is
 * the same bound for the other block types).  Q8_ACT_TOL is the long run's
 * bound for Q8_0: still far below what a wrong position or cache row gives. */
#define REF_TOL 1e-4
#define Q8_ACT_TOL 4e-2

static void check_against_reference(const char *name, uint32_t len)
{
    struct rig r;
    rig_open(&r, name, 1, 64);
    if (!strcmp(name, odd_model.name))
        assert_true(r.m->tied_output);
    else
        assert_false(r.m->tied_output);
    int32_t *tok = seq_tokens(11, len, r.V);
    float *fast = decode_alone(&r, tok, len);
    struct ref R;
    ref_init(&R, r.m, len);
    R.q8_acts = true;
    double *ref = malloc(r.V * sizeof(double));
    double worst = 0;
    for (uint32_t p = 0; p < len; p++) {
        ref_forward(&R, tok[p], p, ref);
        const float *f = fast + (size_t)p * r.V;
        double scale = 0;
        for (uint32_t i = 0; i < r.V; i++)
            scale = fmax(scale, fabs(ref[i]));
        for (uint32_t i = 0; i < r.V; i++) {
            double d = fabs(f[i] - ref[i]) / scale;
            worst = fmax(worst, d);
            if (d > REF_TOL)
                fail_msg("%s: position %u logit %u: fast %.9g, reference %.9g (max |logit| %.4g)", name, p, i,
                         (double)f[i], ref[i], scale);
        }
    }
    print_message("  %-10s worst |fast - reference| / max|logit| over %u positions: %.2e\n", name, len, worst);
    free(ref);
    free(fast);
    free(tok);
    ref_free(&R);
    rig_close(&r);
}

static void test_fast_forward_agrees_with_a_plain_double_reference(void **state)
{
    (void)state;
    for (size_t mi = 0; mi < N_MODELS; mi++)
        check_against_reference(models[mi].name, 40);
    check_against_reference(odd_model.name, 40);
}

static void test_greedy_argmax_matches_the_reference_on_a_long_run(void **state)
{
    (void)state;
    /* The fast pass generates greedily for 300 tokens; the reference is fed
     * the same tokens and must pick the same one at every step.  Where the
     * reference's top two are closer than the tolerance, either choice is
     * right (rounding decides); those near-ties are counted and must stay
     * rare, and the run continues with the fast pass's token. */
    const char *names[] = {"tiny-f32", "gqa-q8_0", "odd-f32"};
    const uint32_t prompt_len = 4, gen = 300;
    for (int mi = 0; mi < 3; mi++) {
        struct rig r;
        rig_open(&r, names[mi], 1, 8);
        struct ref R;
        ref_init(&R, r.m, prompt_len + gen);
        R.q8_acts = true;
        int32_t *prompt = seq_tokens(3, prompt_len, r.V);
        struct kv_seq s = {0};
        float *logits = malloc(r.V * sizeof(float));
        double *ref = malloc(r.V * sizeof(double));
        uint32_t ties = 0, distinct = 0;
        bool seen[1024] = {0};
        double worst = 0, tol = r.m->cfg.dtype == WT_Q8_0 ? Q8_ACT_TOL : REF_TOL;
        int32_t tok = prompt[0];
        for (uint32_t p = 0; p < prompt_len + gen - 1; p++) {
            assert_int_equal(kv_reserve(r.kv, &s, p + 1), 0);
            struct fwd_row row = {tok, p, &s, 0};
            assert_int_equal(fwd_run(r.f, &row, 1, logits), 0);
            ref_forward(&R, tok, p, ref);
            if (p + 1 < prompt_len) {
                tok = prompt[p + 1];
                continue;
            }
            double margin;
            uint32_t want = argmax_d(ref, r.V, &margin), got = argmax_f(logits, r.V);
            double scale = 0, diff = 0;
            for (uint32_t i = 0; i < r.V; i++)
                scale = fmax(scale, fabs(ref[i]));
            for (uint32_t i = 0; i < r.V; i++)
                diff = fmax(diff, fabs(logits[i] - ref[i]) / scale);
            worst = fmax(worst, diff);
            if (got != want) {
                if (margin > 2 * tol * scale)
                    fail_msg("%s: step %u: fast greedy picked %u, the reference %u by a margin of %.3g", names[mi],
                             p, got, want, margin);
                ties++;
            }
            if (!seen[got])
                distinct++;
            seen[got] = true;
            tok = (int32_t)got;
        }
        print_message("  %-10s %u greedy steps, %u distinct tokens, %u near-ties, worst |fast - reference| / "
                      "max|logit| %.2e\n", names[mi], gen, distinct, ties, worst);
        assert_true(ties <= 3);
        if (worst > tol)
            fail_msg("%s: %.3g of the largest logit away from the reference (bound %.3g)", names[mi], worst, tol);
        free(logits);
        free(ref);
        free(prompt);
        kv_release(r.kv, &s);
        ref_free(&R);
        rig_close(&r);
    }
}


/* ---- every weight type ------------------------------------------------------------------------ */

#define NQ_SEQ 3
static const uint32_t qseq_len[NQ_SEQ] = {21, 30, 17};

/* A schedule of the NQ_SEQ sequences against their logits decoded alone. */
static void check_q_schedule(struct rig *r, int32_t *const *tok, float *const *alone, const uint32_t *start,
                             const uint32_t *chunk, bool all_logits, const char *what, const char *model)
{
    float *out[NQ_SEQ];
    for (uint32_t s = 0; s < NQ_SEQ; s++)
        out[s] = calloc((size_t)qseq_len[s] * r->V, sizeof(float));
    struct sched_spec sp = {NQ_SEQ, (const int32_t *const *)tok, qseq_len, start, chunk, all_logits};
    run_schedule(r, &sp, out);
    for (uint32_t s = 0; s < NQ_SEQ; s++) {
        for (uint32_t p = 0; p < qseq_len[s]; p++)
            if (all_logits || (p + 1) % chunk[s] == 0 || p == qseq_len[s] - 1)
                assert_same_logits(alone[s] + (size_t)p * r->V, out[s] + (size_t)p * r->V, r->V, what, model, s,
                                   p);
        free(out[s]);
    }
}

/* Each type's model (and the mixed ones): a sequence's logits are the same
 * bits decoded alone (1 thread), in a batch of staggered joins mixed with
 * prefill chunks (2 threads), prefilled in chunks, and with the scalar
 * kernels — so its stream is the same alone or in a batch.  And the pass
 * computes the model: against the double reference (float activations,
 * the same dequantized weights), within what int8 activations cost —
 * measured 2-4e-2 of the largest logit (1.5-3e-2 RMS) on these random
 * models, as llama.cpp's int8 activations cost; bf16, computed in floats,
 * ~1e-6.  A wrong tensor, type or layout is O(1). */
static void test_every_weight_type_gives_the_same_logits_alone_batched_chunked_threaded_and_scalar(void **state)
{
    (void)state;
    for (size_t mi = 0; mi < N_QMODELS; mi++) {
        const char *name = qmodels[mi].name;
        struct rig r;
        rig_open(&r, name, 1, 8);
        int32_t *tok[NQ_SEQ];
        float *alone[NQ_SEQ];
        for (uint32_t s = 0; s < NQ_SEQ; s++) {
            tok[s] = seq_tokens(s + 20, qseq_len[s], r.V);
            alone[s] = decode_alone(&r, tok[s], qseq_len[s]);
        }
        /* the reference, on sequence 0 */
        struct ref R;
        ref_init(&R, r.m, qseq_len[0]);
        double *ref = malloc(r.V * sizeof(double)), worst = 0;
        for (uint32_t p = 0; p < qseq_len[0]; p++) {
            ref_forward(&R, tok[0][p], p, ref);
            double scale = 0;
            for (uint32_t i = 0; i < r.V; i++)
                scale = fmax(scale, fabs(ref[i]));
            for (uint32_t i = 0; i < r.V; i++)
                worst = fmax(worst, fabs(alone[0][(size_t)p * r.V + i] - ref[i]) / scale);
        }
        print_message("  %-15s worst |fast - reference| / max|logit|: %.2e\n", name, worst);
        if (worst > (r.m->cfg.dtype == WT_BF16 ? REF_TOL : 0.08))
            fail_msg("%s: the forward pass is %.3g of the largest logit away from the reference", name, worst);
        free(ref);
        ref_free(&R);
        rig_close(&r);

        rig_open(&r, name, 2, 64);
        uint32_t start[NQ_SEQ] = {0, 1, 2}, c1[NQ_SEQ] = {1, 5, 1}, zero[NQ_SEQ] = {0}, c2[NQ_SEQ] = {7, 1, 3};
        check_q_schedule(&r, tok, alone, start, c1, true, "staggered batch with a prefill, 2 threads", name);
        check_q_schedule(&r, tok, alone, zero, c2, false, "chunked prefills, last-row logits", name);
        rig_close(&r);
        if (kern_isa() != KERN_SCALAR) {
            rig_open(&r, name, 1, 64);
            enum kern_isa simd = kern_set_isa(KERN_SCALAR);
            uint32_t c3[NQ_SEQ] = {1, 3, 1};
            check_q_schedule(&r, tok, alone, start, c3, true, "scalar kernels vs AVX2", name);
            kern_set_isa(simd);
            rig_close(&r);
        }
        for (uint32_t s = 0; s < NQ_SEQ; s++) {
            free(tok[s]);
            free(alone[s]);
        }
    }
}

/* ---- golden ---------------------------------------------------------------------------- */

#define GOLDEN_GEN 64
static const int32_t golden_prompt[] = {1, 77, 300, 12, 451, 9, 140, 33};
#define GOLDEN_PROMPT_LEN (sizeof golden_prompt / sizeof golden_prompt[0])

static const char *data_dir(char *buf, size_t cap)
{
    const char *d = getenv("RILL_TEST_DATA");
    if (d && *d)
        return d;
    if (access("tests/data", F_OK) == 0)
        return "tests/data";
    /* The build directory is usually the repository's build/ or build/asan/. */
    snprintf(buf, cap, "%s/../tests/data", tu_build_dir());
    if (access(buf, F_OK) == 0)
        return buf;
    snprintf(buf, cap, "%s/../../tests/data", tu_build_dir());
    return buf;
}

static void greedy_tokens(struct rig *r, const int32_t *prompt, uint32_t n_prompt, uint32_t gen, int32_t *out)
{
    struct kv_seq s = {0};
    float *logits = malloc((size_t)n_prompt * r->V * sizeof(float));
    struct fwd_row rows[GOLDEN_PROMPT_LEN];
    assert_true(n_prompt <= GOLDEN_PROMPT_LEN);
    assert_int_equal(kv_reserve(r->kv, &s, n_prompt), 0);
    for (uint32_t p = 0; p < n_prompt; p++)
        rows[p] = (struct fwd_row){prompt[p], p, &s, p == n_prompt - 1 ? 0 : -1};
    assert_int_equal(fwd_run(r->f, rows, n_prompt, logits), 0);
    for (uint32_t i = 0; i < gen; i++) {
        out[i] = (int32_t)argmax_f(logits, r->V); /* ties: the lowest id */
        if (i + 1 == gen)
            break;
        uint32_t pos = n_prompt + i;
        assert_int_equal(kv_reserve(r->kv, &s, pos + 1), 0);
        rows[0] = (struct fwd_row){out[i], pos, &s, 0};
        assert_int_equal(fwd_run(r->f, rows, 1, logits), 0);
    }
    kv_release(r->kv, &s);
    free(logits);
}

static void test_greedy_generation_matches_the_golden_file(void **state)
{
    (void)state;
    struct rig r;
    rig_open(&r, "tiny-f32", 1, 16);
    int32_t got[GOLDEN_GEN];
    greedy_tokens(&r, golden_prompt, GOLDEN_PROMPT_LEN, GOLDEN_GEN, got);
    rig_close(&r);

    char buf[600], path[700];
    snprintf(path, sizeof path, "%s/golden-tiny.txt", data_dir(buf, sizeof buf));
    const char *upd = getenv("RILL_UPDATE_GOLDEN");
    if (upd && *upd && strcmp(upd, "0")) {
        FILE *f = fopen(path, "w");
        if (!f)
            fail_msg("cannot write %s", path);
        fprintf(f, "# Greedy tokens of rill-mkmodel --shape tiny --dtype f32 --seed " SEED
                   " (any corpus: only ids matter),\n"
                   "# after the prompt below, from tests/unit/test_forward.c\n"
                   "# (test_greedy_generation_matches_the_golden_file).  Regenerate, when a change is meant to\n"
                   "# change them, from the repository root:\n"
                   "#   RILL_UPDATE_GOLDEN=1 RILL_TEST_BUILD=build build/tests/test_forward\n");
        fprintf(f, "prompt");
        for (size_t i = 0; i < GOLDEN_PROMPT_LEN; i++)
            fprintf(f, " %d", golden_prompt[i]);
        fprintf(f, "\ntokens");
        for (int i = 0; i < GOLDEN_GEN; i++)
            fprintf(f, " %d", got[i]);
        fprintf(f, "\n");
        assert_int_equal(fclose(f), 0);
        print_message("  wrote %s\n", path);
        return;
    }
    FILE *f = fopen(path, "r");
    if (!f)
        fail_msg("cannot read %s (regenerate with RILL_UPDATE_GOLDEN=1)", path);
    char line[4096];
    int32_t want[GOLDEN_GEN];
    int n_want = -1, n_prompt = -1;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#')
            continue;
        char *p = line;
        bool is_prompt = !strncmp(p, "prompt", 6), is_tokens = !strncmp(p, "tokens", 6);
        if (!is_prompt && !is_tokens)
            continue;
        p += 6;
        int n = 0;
        char *end;
        for (long v; (v = strtol(p, &end, 10)), end != p; p = end, n++) {
            if (is_tokens && n < GOLDEN_GEN)
                want[n] = (int32_t)v;
            if (is_prompt && (n >= (int)GOLDEN_PROMPT_LEN || v != golden_prompt[n]))
                fail_msg("%s: the prompt differs from the test's (regenerate the file)", path);
        }
        if (is_prompt)
            n_prompt = n;
        else
            n_want = n;
    }
    fclose(f);
    assert_int_equal(n_prompt, GOLDEN_PROMPT_LEN);
    assert_int_equal(n_want, GOLDEN_GEN);
    for (int i = 0; i < GOLDEN_GEN; i++)
        if (got[i] != want[i])
            fail_msg("greedy token %d is %d, the golden file says %d (%s; RILL_UPDATE_GOLDEN=1 regenerates it "
                     "if the change is intended)", i, got[i], want[i], path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batched_decode_is_bit_identical_to_decoding_alone),
        cmocka_unit_test(test_incremental_decode_equals_prefill_of_the_whole_sequence),
        cmocka_unit_test(test_chunked_prefill_equals_prefill_at_once),
        cmocka_unit_test(test_prefill_chunks_riding_along_with_decode_rows_are_exact),
        cmocka_unit_test(test_logits_do_not_depend_on_the_thread_count),
        cmocka_unit_test(test_scalar_path_equals_avx2_bit_for_bit),
        cmocka_unit_test(test_blas_matmul_is_batch_invariant_within_tolerance),
        cmocka_unit_test(test_forward_rejects_bad_rows),
        cmocka_unit_test(test_fast_forward_agrees_with_a_plain_double_reference),
        cmocka_unit_test(test_greedy_argmax_matches_the_reference_on_a_long_run),
        cmocka_unit_test(test_greedy_generation_matches_the_golden_file),
        cmocka_unit_test(test_every_weight_type_gives_the_same_logits_alone_batched_chunked_threaded_and_scalar),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
