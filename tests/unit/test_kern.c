/* test_kern.c — kernels, thread pool, KV cache, sampler: the worker's parts
 * that need no model file (the batch controller has test_adapt.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <unistd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "worker/kern.h"
#include "worker/kvcache.h"
#include "worker/pool.h"
#include "worker/sample.h"

static uint64_t rng_state = 88172645463325252ull;
static double frand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) * 0x1.0p-52 - 1.0;
}

/* A random matrix of a float type (F32, F16, BF16); also returns its exact
 * float values.  (The block types, Q8_0 among them, multiply with int8
 * activations: test_quant.c holds their kernels.) */
static void make_matrix(struct wmat *w, enum wtype t, uint32_t rows, uint32_t cols, float **exact)
{
    w->type = t;
    w->rows = rows;
    w->cols = cols;
    w->row_bytes = wtype_row_bytes(t, cols);
    void *data = malloc(w->row_bytes * rows);
    *exact = malloc(sizeof(float) * rows * cols);
    for (uint32_t r = 0; r < rows; r++) {
        char *row = (char *)data + (size_t)r * w->row_bytes;
        for (uint32_t k = 0; k < cols; k++) {
            float v = (float)frand();
            if (t == WT_F32)
                ((float *)row)[k] = v;
            else if (t == WT_F16)
                ((uint16_t *)row)[k] = f32_to_f16(v);
            else
                ((uint16_t *)row)[k] = quant_f32_to_bf16(v);
        }
    }
    w->data = data;
    for (uint32_t r = 0; r < rows; r++)
        kern_row(w, r, *exact + (size_t)r * cols);
}

/* y [B][N] = x [B][K] ex^T within rounding of a double-precision sum. */
static void expect_near_double(const float *ex, const float *x, const float *y, uint32_t B, uint32_t N, uint32_t K,
                               const char *what)
{
    for (uint32_t b = 0; b < B; b++)
        for (uint32_t n = 0; n < N; n++) {
            double ref = 0, mag = 0;
            for (uint32_t k = 0; k < K; k++) {
                ref += (double)ex[(size_t)n * K + k] * x[(size_t)b * K + k];
                mag += fabs((double)ex[(size_t)n * K + k] * x[(size_t)b * K + k]);
            }
            if (fabs(y[(size_t)b * N + n] - ref) > 1e-6 * mag + 1e-7)
                fail_msg("%s: y[%u][%u] = %.9g, want %.9g", what, b, n, y[(size_t)b * N + n], ref);
        }
}

static void test_kern_matmul_agrees_with_double_precision(void **state)
{
    (void)state;
    enum wtype types[] = {WT_F32, WT_F16, WT_BF16};
    /* every instruction set, B = 1 (the direct tiles) and 9 (the converting
     * ones) */
    for (int ti = 0; ti < 3 * 3 * 2; ti++) {
        enum kern_isa isa = (enum kern_isa)(ti / 6 % 3);
        if (!kern_isa_supported(isa))
            continue;
        uint32_t N = 37, K = 96, B = ti % 2 ? 9 : 1;
        struct wmat w;
        float *ex;
        make_matrix(&w, types[ti / 2 % 3], N, K, &ex);
        float *x = malloc(sizeof(float) * B * K), *y = malloc(sizeof(float) * B * N);
        for (uint32_t i = 0; i < B * K; i++)
            x[i] = (float)frand();
        struct kmat km;
        assert_int_equal(kern_pack(&w, &km), 0);
        enum kern_isa old = kern_set_isa(isa);
        kern_matmul(&km, x, K, B, y, N, 0, N);
        kern_set_isa(old);
        char what[64];
        snprintf(what, sizeof what, "%s (%s)", wtype_name(types[ti / 2 % 3]), kern_isa_name(isa));
        expect_near_double(ex, x, y, B, N, K, what);
        kern_unpack_free(&km);
        free((void *)w.data);
        free(ex);
        free(x);
        free(y);
    }
}

/* The property the whole worker leans on: an element's value does not depend
 * on the batch size, the row range, or the instruction set. */
static void test_kern_matmul_is_bit_identical_across_batch_tiles_and_isa(void **state)
{
    (void)state;
    enum wtype types[] = {WT_F32, WT_F16, WT_BF16};
    /* K = 800: the converting kernels' column blocks, whole ones and a part;
     * B = 71: more than one pass of activation rows, 53 rows: several blocks
     * of groups and a partial group. */
    for (int ti = 0; ti < 9; ti++) {
        uint32_t N = 53, K = ti < 3 ? 128 : 800, B = ti < 6 ? 23 : 71;
        struct wmat w;
        float *ex;
        make_matrix(&w, types[ti % 3], N, K, &ex);
        float *x = malloc(sizeof(float) * B * K);
        for (uint32_t i = 0; i < B * K; i++)
            x[i] = (float)frand();
        float *full = malloc(sizeof(float) * B * N), *part = malloc(sizeof(float) * B * N);
        struct kmat km;
        assert_int_equal(kern_pack(&w, &km), 0);
        kern_matmul(&km, x, K, B, full, N, 0, N);
        /* Each batch row alone, and in odd groups, over row ranges of whole groups. */
        for (uint32_t b = 0; b < B; b++)
            kern_matmul(&km, x + (size_t)b * K, K, 1, part + (size_t)b * N, N, 0, N);
        assert_memory_equal(full, part, sizeof(float) * B * N);
        memset(part, 0, sizeof(float) * B * N);
        for (uint32_t b = 0; b < B; b += 5) {
            uint32_t nb = B - b < 5 ? B - b : 5;
            for (uint32_t n0 = 0; n0 < N; n0 += 8)
                kern_matmul(&km, x + (size_t)b * K, K, nb, part + (size_t)b * N, N, n0, n0 + 8 < N ? n0 + 8 : N);
        }
        assert_memory_equal(full, part, sizeof(float) * B * N);
        for (int isa = KERN_SCALAR; isa <= KERN_AVX512; isa++) {
            if (!kern_isa_supported((enum kern_isa)isa))
                continue;
            enum kern_isa old = kern_set_isa((enum kern_isa)isa);
            memset(part, 0, sizeof(float) * B * N);
            kern_matmul(&km, x, K, B, part, N, 0, N);
            kern_set_isa(old);
            if (memcmp(full, part, sizeof(float) * B * N))
                fail_msg("%s, %u rows: %s differs from %s", wtype_name(types[ti % 3]), B,
                         kern_isa_name((enum kern_isa)isa), kern_isa_name(old));
        }
        kern_unpack_free(&km);
        free((void *)w.data);
        free(ex);
        free(x);
        free(full);
        free(part);
    }
}

/* The blocked F32 kernel (AVX-512, from 4 batch rows): a row's outputs are
 * the same bits whatever the batch size (every remainder of its 6-row and
 * 4-row tiles, more than one pass of 64 rows), over row ranges that leave a
 * group without its pair, with K past one column block (1024) and not a
 * whole number of them; the same bits as the scalar reference, and within
 * rounding of a double-precision sum. */
static void expect_blocked_bit_identical(enum wtype t, uint32_t K)
{
    uint32_t N = 30, BMAX = 70; /* 30 rows: 7 groups, the last half full */
    struct wmat w;
    float *ex;
    make_matrix(&w, t, N, K, &ex);
    float *x = malloc(sizeof(float) * BMAX * K), *alone = malloc(sizeof(float) * BMAX * N),
          *y = malloc(sizeof(float) * BMAX * N), *ref = malloc(sizeof(float) * BMAX * N);
    for (uint32_t i = 0; i < BMAX * K; i++)
        x[i] = (float)frand();
    struct kmat km;
    assert_int_equal(kern_pack(&w, &km), 0);
    for (uint32_t b = 0; b < BMAX; b++)
        kern_matmul(&km, x + (size_t)b * K, K, 1, alone + (size_t)b * N, N, 0, N);
    enum kern_isa old = kern_set_isa(KERN_SCALAR);
    kern_matmul(&km, x, K, BMAX, ref, N, 0, N);
    kern_set_isa(old);
    assert_memory_equal(alone, ref, sizeof(float) * BMAX * N);
    char what[64];
    snprintf(what, sizeof what, "%s, each row alone", wtype_name(t));
    expect_near_double(ex, x, alone, BMAX, N, K, what);
    uint32_t sizes[] = {4, 5, 6, 7, 8, 9, 10, 13, 14, 16, 20, 32, 33, 37, 63, 64, 65, 70};
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        uint32_t B = sizes[si];
        memset(y, 0, sizeof(float) * B * N);
        /* the whole matrix, and in ranges of 12 and 8 rows (a lone group) */
        kern_matmul(&km, x, K, B, y, N, 0, N);
        if (memcmp(y, alone, sizeof(float) * B * N))
            fail_msg("%s, %u rows: differs from each row alone (%s)", wtype_name(t), B, kern_isa_name(kern_isa()));
        memset(y, 0, sizeof(float) * B * N);
        for (uint32_t n0 = 0; n0 < N; n0 += si % 2 ? 12 : 8)
            kern_matmul(&km, x, K, B, y, N, n0, n0 + (si % 2 ? 12 : 8));
        if (memcmp(y, alone, sizeof(float) * B * N))
            fail_msg("%s, %u rows in row ranges: differs from each row alone (%s)", wtype_name(t), B,
                     kern_isa_name(kern_isa()));
    }
    kern_unpack_free(&km);
    free((void *)w.data);
    free(ex);
    free(x);
    free(alone);
    free(y);
    free(ref);
}

static void test_kern_f32_blocked_kernel_is_bit_identical_across_batch_sizes(void **state)
{
    (void)state;
    expect_blocked_bit_identical(WT_F32, 2056);
}

/* F16 and BF16 from 4 batch rows convert a block of weights once and run it
 * (with AVX-512) through the F32 kernel's pair tile: the same checks, with K
 * past column blocks (256 with AVX2, 1024 with AVX-512) and not a whole
 * number of them, and within one block. */
static void test_kern_converted_kernels_are_bit_identical_across_batch_sizes(void **state)
{
    (void)state;
    expect_blocked_bit_identical(WT_F16, 2080);
    expect_blocked_bit_identical(WT_BF16, 2080);
    /* two blocks (two pairs converted together for the passes) */
    expect_blocked_bit_identical(WT_F16, 1040);
    /* one block (four pairs converted together, once for every pass of 64
     * activation rows) */
    expect_blocked_bit_identical(WT_F16, 800);
    expect_blocked_bit_identical(WT_BF16, 800);
}

/* Attention over paged keys and values: the same bits in every instruction
 * set (AVX-512 has its own kernels for heads of 64 and 128; 24 takes the
 * AVX2 one), whether the positions fill whole blocks of 16 and groups of 8
 * or not, and near a double-precision softmax. */
static void test_kern_attention_is_bit_identical_across_isa(void **state)
{
    (void)state;
    const uint32_t hds[] = {64, 128, 24}, ns[] = {1, 7, 8, 9, 16, 37, 70}, bt = 16;
    for (size_t hi = 0; hi < sizeof hds / sizeof *hds; hi++) {
        uint32_t hd = hds[hi], stride = 3 * hd, nmax = 70, nblk = (nmax + bt - 1) / bt;
        float *kv = malloc(sizeof(float) * 2 * nblk * bt * stride), q[128], out[128], ref[128], s[70];
        for (size_t i = 0; i < (size_t)2 * nblk * bt * stride; i++)
            kv[i] = (float)frand();
        for (uint32_t i = 0; i < hd; i++)
            q[i] = (float)(2 * frand());
        const float *kb[8], *vb[8];
        /* blocks in reverse order in memory, the head at offset hd of each position */
        for (uint32_t b = 0; b < nblk; b++) {
            kb[b] = kv + (size_t)(nblk - 1 - b) * bt * stride + hd;
            vb[b] = kv + (size_t)(nblk + b) * bt * stride + hd;
        }
        for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
            uint32_t n = ns[ni];
            enum kern_isa old = kern_set_isa(KERN_SCALAR);
            kern_attention(q, hd, kb, vb, stride, bt, n, 0.125f, s, ref);
            kern_set_isa(old);
            for (int isa = KERN_AVX2; isa <= KERN_AVX512; isa++) {
                if (!kern_isa_supported((enum kern_isa)isa))
                    continue;
                old = kern_set_isa((enum kern_isa)isa);
                memset(out, 0, sizeof out);
                kern_attention(q, hd, kb, vb, stride, bt, n, 0.125f, s, out);
                kern_set_isa(old);
                if (memcmp(out, ref, sizeof(float) * hd))
                    fail_msg("attention, head %u, %u positions: %s differs from scalar", hd, n,
                             kern_isa_name((enum kern_isa)isa));
            }
            double sc[70], mx = -INFINITY, sum = 0;
            for (uint32_t t = 0; t < n; t++) {
                const float *k = kb[t / bt] + (size_t)(t % bt) * stride;
                double d = 0;
                for (uint32_t i = 0; i < hd; i++)
                    d += (double)q[i] * k[i];
                sc[t] = d * 0.125;
                mx = fmax(mx, sc[t]);
            }
            for (uint32_t t = 0; t < n; t++)
                sum += sc[t] = exp(sc[t] - mx);
            for (uint32_t i = 0; i < hd; i++) {
                double o = 0;
                for (uint32_t t = 0; t < n; t++)
                    o += sc[t] / sum * vb[t / bt][(size_t)(t % bt) * stride + i];
                if (fabs(out[i] - o) > 1e-5)
                    fail_msg("attention, head %u, %u positions: out[%u] = %.9g, want %.9g", hd, n, i, out[i], o);
            }
        }
        free(kv);
    }
}

/* Attention of several queries at once (a prompt's rows): each query gets
 * the bits that kern_attention() alone gives it in the scalar reference,
 * for every count of queries, whether their positions are consecutive (as
 * a prompt's) or not, share whole groups of 8 and blocks of 16 or not, and
 * whatever the head size (24 takes the one-query fallback). */
static void test_kern_attention_rows_equal_one_query_at_a_time(void **state)
{
    (void)state;
    const uint32_t hds[] = {64, 128, 24}, bt = 16, nmax = 70, lds = 72;
    const uint32_t starts[] = {1, 2, 7, 8, 9, 16, 17, 37, 64, 66};
    const uint32_t mixed[][KERN_ATT_ROWS] = {{37, 9, 70, 16}, {8, 8, 1, 24}, {70, 69, 3, 33}};
    for (size_t hi = 0; hi < sizeof hds / sizeof *hds; hi++) {
        uint32_t hd = hds[hi], stride = 3 * hd, nblk = (nmax + bt - 1) / bt;
        float *kv = malloc(sizeof(float) * 2 * nblk * bt * stride);
        float q[KERN_ATT_ROWS][128], out[KERN_ATT_ROWS][128], ref[128], s[KERN_ATT_ROWS * 72];
        for (size_t i = 0; i < (size_t)2 * nblk * bt * stride; i++)
            kv[i] = (float)frand();
        for (uint32_t r = 0; r < KERN_ATT_ROWS; r++)
            for (uint32_t i = 0; i < hd; i++)
                q[r][i] = (float)(2 * frand());
        const float *kb[8], *vb[8];
        for (uint32_t b = 0; b < nblk; b++) {
            kb[b] = kv + (size_t)(nblk - 1 - b) * bt * stride + hd;
            vb[b] = kv + (size_t)(nblk + b) * bt * stride + hd;
        }
        size_t ncase = sizeof starts / sizeof *starts + sizeof mixed / sizeof *mixed;
        for (size_t ci = 0; ci < ncase; ci++)
            for (uint32_t R = 1; R <= KERN_ATT_ROWS; R++) {
                uint32_t n[KERN_ATT_ROWS];
                for (uint32_t r = 0; r < R; r++)
                    n[r] = ci < sizeof starts / sizeof *starts ? starts[ci] + r
                                                             : mixed[ci - sizeof starts / sizeof *starts][r];
                for (int isa = KERN_SCALAR; isa <= KERN_AVX512; isa++) {
                    if (!kern_isa_supported((enum kern_isa)isa))
                        continue;
                    enum kern_isa old = kern_set_isa((enum kern_isa)isa);
                    memset(out, 0, sizeof out);
                    kern_attention_rows(q[0], 128, R, hd, kb, vb, stride, bt, n, 0.125f, s, lds, out[0], 128);
                    kern_set_isa(KERN_SCALAR);
                    for (uint32_t r = 0; r < R; r++) {
                        kern_attention(q[r], hd, kb, vb, stride, bt, n[r], 0.125f, s, ref);
                        if (memcmp(out[r], ref, sizeof(float) * hd))
                            fail_msg("attention of %u queries, head %u, query %u over %u positions: %s differs from "
                                     "the scalar one-query result",
                                     R, hd, r, n[r], kern_isa_name((enum kern_isa)isa));
                    }
                    kern_set_isa(old);
                }
            }
        free(kv);
    }
}

static void test_kern_dot_matches_scalar_and_rmsnorm_normalizes(void **state)
{
    (void)state;
    float a[64], b[64], out[64], ones[64];
    for (int i = 0; i < 64; i++) {
        a[i] = (float)frand();
        b[i] = (float)frand();
        ones[i] = 1;
    }
    float d = kern_dot(a, b, 64);
    enum kern_isa old = kern_set_isa(KERN_SCALAR);
    float ds = kern_dot(a, b, 64);
    kern_set_isa(old);
    assert_memory_equal(&d, &ds, sizeof d);
    kern_rmsnorm(out, a, ones, 64, 0);
    double ss = 0;
    for (int i = 0; i < 64; i++)
        ss += (double)out[i] * out[i];
    assert_true(fabs(ss / 64 - 1.0) < 1e-5);
}

/* --- pool --------------------------------------------------------------------------- */

static _Atomic uint32_t hits[1000];
static void count_task(void *ctx, uint32_t task, uint32_t thread)
{
    (void)ctx;
    (void)thread;
    atomic_fetch_add(&hits[task], 1);
}

static void test_pool_runs_every_task_exactly_once(void **state)
{
    (void)state;
    struct pool *p = pool_create(3);
    assert_non_null(p);
    assert_int_equal(pool_threads(p), 3);
    for (int round = 0; round < 200; round++) {
        uint32_t n = 1 + (uint32_t)(round * 7 % 1000);
        memset(hits, 0, sizeof hits);
        pool_run(p, count_task, NULL, n);
        for (uint32_t i = 0; i < n; i++)
            assert_int_equal(atomic_load(&hits[i]), 1);
        assert_int_equal(atomic_load(&hits[n < 1000 ? n : 999]), n < 1000 ? 0 : 1);
    }
    pool_free(p);
}

static _Atomic bool hog_stop;
static void *hog(void *a)
{
    (void)a;
    volatile uint64_t x = 0;
    while (!atomic_load(&hog_stop))
        x++;
    return NULL;
}

/* Jobs of changing sizes back to back, with more threads than cores and a
 * busy thread stealing time: helpers wake late all the time.  A late helper
 * must never run a task of the next job twice or under the old job's count
 * (that once hung the caller forever). */
static void test_pool_late_helpers_never_run_a_task_twice(void **state)
{
    (void)state;
    alarm(120); /* a hang here is the bug: let it fail the test, not stall it */
    pthread_t h;
    atomic_store(&hog_stop, false);
    pthread_create(&h, NULL, hog, NULL);
    struct pool *p = pool_create(3);
    for (int job = 0; job < 20000; job++) {
        uint32_t n = 1 + (uint32_t)(job * 7919 % 17);
        memset(hits, 0, sizeof hits);
        pool_run(p, count_task, NULL, n);
        for (uint32_t i = 0; i < 17; i++)
            if (atomic_load(&hits[i]) != (i < n ? 1u : 0u))
                fail_msg("job %d of %u tasks: task %u ran %u times", job, n, i, atomic_load(&hits[i]));
    }
    pool_free(p);
    atomic_store(&hog_stop, true);
    pthread_join(h, NULL);
    alarm(0);
}

/* --- KV cache ------------------------------------------------------------------------ */

static void test_kv_blocks_are_all_or_nothing_and_return_on_release(void **state)
{
    (void)state;
    struct kv *kv;
    /* 2 layers x kv_dim 32 x 16 tokens x 2 x 4 bytes = 8 KiB per block. */
    assert_int_equal(kv_create(2, 32, 16, 10 * 8192, &kv), 0);
    assert_int_equal(kv_blocks_total(kv), 10);
    struct kv_seq a = {0}, b = {0};
    assert_int_equal(kv_reserve(kv, &a, 100), 0); /* 7 blocks */
    assert_int_equal(a.n_blocks, 7);
    assert_int_equal(kv_blocks_free(kv), 3);
    assert_int_equal(kv_reserve(kv, &b, 64), RILL_E_NOMEM); /* needs 4 */
    assert_int_equal(b.n_blocks, 0);
    assert_int_equal(kv_blocks_free(kv), 3);
    assert_int_equal(kv_reserve(kv, &b, 48), 0);
    /* Positions are distinct memory, keys and values apart, layers apart. */
    for (uint32_t pos = 0; pos < 100; pos++)
        for (uint32_t l = 0; l < 2; l++) {
            kv_k(kv, &a, l, pos)[0] = (float)(pos * 10 + l);
            kv_v(kv, &a, l, pos)[31] = -(float)(pos * 10 + l);
        }
    for (uint32_t pos = 0; pos < 48; pos++)
        kv_k(kv, &b, 0, pos)[0] = 12345;
    for (uint32_t pos = 0; pos < 100; pos++)
        for (uint32_t l = 0; l < 2; l++) {
            assert_true(kv_k(kv, &a, l, pos)[0] == (float)(pos * 10 + l));
            assert_true(kv_v(kv, &a, l, pos)[31] == -(float)(pos * 10 + l));
        }
    kv_release(kv, &a);
    assert_int_equal(kv_blocks_free(kv), 7);
    assert_true(kv_trim(kv) >= 7 * 8192);
    assert_int_equal(kv_trim(kv), 0);
    kv_release(kv, &b);
    assert_int_equal(kv_blocks_free(kv), 10);
    kv_free(kv);
}

/* --- sampler ------------------------------------------------------------------------ */

static void test_sample_greedy_picks_argmax_and_reports_logprobs(void **state)
{
    (void)state;
    struct sampler *s = sampler_create(5);
    float logits[5] = {1, 3, 2, 3, 0};
    struct sample_params p = {.temperature = 0, .top_p = 1, .repetition_penalty = 1};
    struct sample_result r;
    sample_next(s, logits, &p, NULL, 0, 0, 3, &r);
    assert_int_equal(r.token, 1); /* tie with 3: the lower id */
    double lse = log(exp(1) + exp(3) + exp(2) + exp(3) + exp(0));
    assert_true(fabs(r.logprob - (3 - lse)) < 1e-5);
    assert_int_equal(r.n_top, 3);
    assert_int_equal(r.top_ids[0], 1);
    assert_int_equal(r.top_ids[1], 3);
    assert_int_equal(r.top_ids[2], 2);
    /* Repetition penalty on token 1 makes 3 the argmax. */
    int32_t hist[] = {1};
    p.repetition_penalty = 2;
    sample_next(s, logits, &p, hist, 1, 0, 0, &r);
    assert_int_equal(r.token, 3);
    sampler_free(s);
}

/* The same choice, log-probability and alternatives, bit for bit. */
static void assert_same_result(const struct sample_result *a, const struct sample_result *b)
{
    assert_int_equal(a->token, b->token);
    assert_memory_equal(&a->logprob, &b->logprob, sizeof a->logprob);
    assert_int_equal(a->n_top, b->n_top);
    assert_memory_equal(a->top_ids, b->top_ids, a->n_top * sizeof *a->top_ids);
    assert_memory_equal(a->top_logprobs, b->top_logprobs, a->n_top * sizeof *a->top_logprobs);
}

/* OpenAI's penalties count the output only: the last `position` tokens of
 * the history.  The logits after them are read back through the reported
 * log-probabilities (every token's, differences against the best). */
static void test_sample_presence_and_frequency_penalties_count_the_output(void **state)
{
    (void)state;
    enum { V = 6 };
    struct sampler *s = sampler_create(V);
    float logits[V] = {0, 1, 2, 3, 4, 5};
    /* prompt 5 5 4, then the output 1 1 1 3 0 (position 5) */
    int32_t hist[] = {5, 5, 4, 1, 1, 1, 3, 0};
    struct sample_params p = {.temperature = 0, .top_p = 1, .repetition_penalty = 1,
                              .presence_penalty = 0.5f, .frequency_penalty = 0.25f};
    struct sample_result r;
    sample_next(s, logits, &p, hist, 8, 5, V, &r);
    /* logit -= count * 0.25 + 0.5 for 0 (once), 1 (three times), 3 (once);
     * 4 and 5 are only in the prompt: unchanged. */
    const float want[V] = {-0.75f, -0.25f, 2, 2.25f, 4, 5};
    const int32_t order[V] = {5, 4, 3, 2, 1, 0};
    assert_int_equal(r.token, 5);
    assert_int_equal(r.n_top, V);
    double lse = 0;
    for (int i = 0; i < V; i++)
        lse += exp(want[i]);
    lse = log(lse);
    for (int i = 0; i < V; i++) {
        assert_int_equal(r.top_ids[i], order[i]);
        if (fabs(r.top_logprobs[i] - (want[order[i]] - lse)) > 1e-5)
            fail_msg("token %d: logprob %g, expected %g", order[i], r.top_logprobs[i], want[order[i]] - lse);
    }
    /* The sampler's counts start from zero every call: the same call again
     * gives the same bits. */
    struct sample_result again;
    sample_next(s, logits, &p, hist, 8, 5, V, &again);
    assert_same_result(&again, &r);

    /* Enough repeats of the best token make the next one win; a negative
     * penalty makes a repeated token win. */
    int32_t fives[] = {5, 5, 5};
    p = (struct sample_params){.temperature = 0, .top_p = 1, .repetition_penalty = 1, .frequency_penalty = 0.5f};
    sample_next(s, logits, &p, fives, 3, 3, 0, &r);
    assert_int_equal(r.token, 4); /* 5 - 3 * 0.5 = 3.5 < 4 */
    sample_next(s, logits, &p, fives, 3, 1, 0, &r);
    assert_int_equal(r.token, 5); /* one output 5: 4.5; the rest is prompt */
    int32_t two[] = {2};
    p = (struct sample_params){.temperature = 0, .top_p = 1, .repetition_penalty = 1, .presence_penalty = -2};
    sample_next(s, logits, &p, two, 1, 1, 0, &r);
    assert_int_equal(r.token, 5); /* 2 + 2 = 4 < 5 */
    p.frequency_penalty = -1.5f;
    sample_next(s, logits, &p, two, 1, 1, 0, &r);
    assert_int_equal(r.token, 2); /* 2 + 1.5 + 2 = 5.5 */

    /* Zero penalties change nothing, whatever the output holds. */
    struct sample_params off = {.temperature = 0.7f, .top_p = 0.9f, .repetition_penalty = 1, .seed = 3};
    struct sample_result a, b;
    sample_next(s, logits, &off, hist, 8, 5, V, &a);
    sample_next(s, logits, &off, NULL, 0, 0, V, &b);
    assert_same_result(&a, &b);
    assert_true(fabs(a.top_logprobs[0] - (5 - log(exp(0) + exp(1) + exp(2) + exp(3) + exp(4) + exp(5)))) < 1e-5);
    sampler_free(s);
}

static void test_sample_is_a_function_of_seed_and_position(void **state)
{
    (void)state;
    uint32_t V = 1000;
    struct sampler *s = sampler_create(V);
    float *logits = malloc(V * sizeof *logits);
    for (uint32_t i = 0; i < V; i++)
        logits[i] = (float)frand() * 3;
    struct sample_params p = {.temperature = 1.0f, .top_p = 0.9f, .top_k = 50, .min_p = 0.01f,
                              .repetition_penalty = 1, .seed = 42};
    int32_t first[64];
    for (uint32_t pos = 0; pos < 64; pos++) {
        struct sample_result r;
        sample_next(s, logits, &p, NULL, 0, pos, 0, &r);
        first[pos] = r.token;
    }
    /* Same seed and positions in reverse order: same tokens. */
    for (int pos = 63; pos >= 0; pos--) {
        struct sample_result r;
        sample_next(s, logits, &p, NULL, 0, (uint32_t)pos, 0, &r);
        assert_int_equal(r.token, first[pos]);
    }
    /* A different seed gives a different stream. */
    p.seed = 43;
    int same = 0;
    for (uint32_t pos = 0; pos < 64; pos++) {
        struct sample_result r;
        sample_next(s, logits, &p, NULL, 0, pos, 0, &r);
        same += r.token == first[pos];
    }
    assert_true(same < 32);
    free(logits);
    sampler_free(s);
}

static void test_sample_top_k_and_top_p_restrict_the_draw(void **state)
{
    (void)state;
    uint32_t V = 100;
    struct sampler *s = sampler_create(V);
    float logits[100];
    for (uint32_t i = 0; i < V; i++)
        logits[i] = (float)i * 0.1f; /* token 99 most likely */
    struct sample_params p = {.temperature = 1.0f, .top_p = 1, .top_k = 3, .repetition_penalty = 1, .seed = 7};
    for (uint32_t pos = 0; pos < 500; pos++) {
        struct sample_result r;
        sample_next(s, logits, &p, NULL, 0, pos, 0, &r);
        assert_true(r.token >= 97);
    }
    /* top_p: the kept set is the smallest top mass >= p (ties kept). */
    float two[100];
    for (uint32_t i = 0; i < V; i++)
        two[i] = i == 10 ? 10.0f : i == 20 ? 9.5f : -10.0f;
    p.top_k = 0;
    p.top_p = 0.5f;
    for (uint32_t pos = 0; pos < 200; pos++) {
        struct sample_result r;
        sample_next(s, two, &p, NULL, 0, pos, 0, &r);
        assert_int_equal(r.token, 10);
    }
    p.top_p = 0.99f;
    int saw20 = 0;
    for (uint32_t pos = 0; pos < 200; pos++) {
        struct sample_result r;
        sample_next(s, two, &p, NULL, 0, pos, 0, &r);
        assert_true(r.token == 10 || r.token == 20);
        saw20 += r.token == 20;
    }
    assert_true(saw20 > 20 && saw20 < 140); /* about 38% */
    sampler_free(s);
}

/* The distribution sample_next should draw from, computed the plain way in
 * double: temperature, top-k by logit (ties by lower id), min-p, top-p by
 * sorting.  want[] gets each token's probability. */
static int cmp_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

static void reference_dist(const float *l, uint32_t V, const struct sample_params *p, double *want)
{
    double mx = -INFINITY;
    for (uint32_t i = 0; i < V; i++)
        mx = l[i] > mx ? l[i] : mx;
    for (uint32_t i = 0; i < V; i++)
        want[i] = exp((l[i] - mx) / p->temperature);
    if (p->top_k > 0 && p->top_k < V)
        for (uint32_t i = 0; i < V; i++) {
            uint32_t better = 0; /* tokens ahead of i: higher logit, or equal and lower id */
            for (uint32_t j = 0; j < V; j++)
                better += l[j] > l[i] || (l[j] == l[i] && j < i);
            if (better >= p->top_k)
                want[i] = 0;
        }
    for (uint32_t i = 0; i < V; i++)
        if (want[i] < p->min_p)
            want[i] = 0;
    double total = 0;
    for (uint32_t i = 0; i < V; i++)
        total += want[i];
    if (p->top_p < 1) {
        double *sorted = malloc(V * sizeof *sorted), acc = 0, t = 0;
        memcpy(sorted, want, V * sizeof *sorted);
        qsort(sorted, V, sizeof *sorted, cmp_desc);
        for (uint32_t i = 0; i < V && sorted[i] > 0; i++) {
            acc += sorted[i];
            t = sorted[i];
            if (acc >= p->top_p * total)
                break;
        }
        free(sorted);
        total = 0;
        for (uint32_t i = 0; i < V; i++) {
            if (want[i] < t)
                want[i] = 0;
            total += want[i];
        }
    }
    for (uint32_t i = 0; i < V; i++)
        want[i] /= total;
}

static void test_sample_draws_follow_the_reference_distribution(void **state)
{
    (void)state;
    enum { V = 400, N = 20000 };
    struct sample_params cases[] = {
        {.temperature = 0.8f, .top_k = 40, .top_p = 0.9f, .min_p = 0.05f, .repetition_penalty = 1, .seed = 1},
        {.temperature = 1.0f, .top_k = 0, .top_p = 0.8f, .min_p = 0, .repetition_penalty = 1, .seed = 2},
        {.temperature = 1.3f, .top_k = 100, .top_p = 1, .min_p = 0, .repetition_penalty = 1, .seed = 3},
        {.temperature = 0.5f, .top_k = 0, .top_p = 1, .min_p = 0.01f, .repetition_penalty = 1, .seed = 4},
    };
    struct sampler *s = sampler_create(V);
    float l[V];
    for (uint32_t i = 0; i < V; i++)
        l[i] = (float)frand() * 4;
    l[7] = l[8]; /* a tie */
    double want[V], lse = 0, mx = -INFINITY;
    for (uint32_t i = 0; i < V; i++)
        mx = l[i] > mx ? l[i] : mx;
    for (uint32_t i = 0; i < V; i++)
        lse += exp(l[i] - mx);
    lse = mx + log(lse);
    static uint32_t count[V];
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        reference_dist(l, V, &cases[c], want);
        memset(count, 0, sizeof count);
        for (uint32_t pos = 0; pos < N; pos++) {
            struct sample_result r;
            sample_next(s, l, &cases[c], NULL, 0, pos, 0, &r);
            assert_true(r.token >= 0 && r.token < V);
            if (want[r.token] <= 0)
                fail_msg("case %zu: drew token %d, which the reference drops", c, r.token);
            assert_true(fabs(r.logprob - (l[r.token] - lse)) < 1e-4);
            count[r.token]++;
        }
        for (uint32_t i = 0; i < V; i++) {
            double f = (double)count[i] / N, sd = sqrt(want[i] * (1 - want[i]) / N);
            if (fabs(f - want[i]) > 5 * sd + 0.002)
                fail_msg("case %zu: token %u drawn %.4f of the time, want %.4f", c, i, f, want[i]);
        }
    }
    sampler_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kern_matmul_agrees_with_double_precision),
        cmocka_unit_test(test_kern_matmul_is_bit_identical_across_batch_tiles_and_isa),
        cmocka_unit_test(test_kern_f32_blocked_kernel_is_bit_identical_across_batch_sizes),
        cmocka_unit_test(test_kern_converted_kernels_are_bit_identical_across_batch_sizes),
        cmocka_unit_test(test_kern_attention_is_bit_identical_across_isa),
        cmocka_unit_test(test_kern_attention_rows_equal_one_query_at_a_time),
        cmocka_unit_test(test_kern_dot_matches_scalar_and_rmsnorm_normalizes),
        cmocka_unit_test(test_pool_runs_every_task_exactly_once),
        cmocka_unit_test(test_pool_late_helpers_never_run_a_task_twice),
        cmocka_unit_test(test_kv_blocks_are_all_or_nothing_and_return_on_release),
        cmocka_unit_test(test_sample_greedy_picks_argmax_and_reports_logprobs),
        cmocka_unit_test(test_sample_presence_and_frequency_penalties_count_the_output),
        cmocka_unit_test(test_sample_is_a_function_of_seed_and_position),
        cmocka_unit_test(test_sample_top_k_and_top_p_restrict_the_draw),
        cmocka_unit_test(test_sample_draws_follow_the_reference_distribution),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
