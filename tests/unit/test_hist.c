/* test_hist.c — log-linear latency histograms: percentiles within the
 * documented error on random data, merge, edges, le export, bytes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "hist.h"

#define N_SAMPLES 200000

/* --- fixed-seed random data ------------------------------------------------------ */

static uint64_t rng_state;

static uint64_t rng_next(void) /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_unit(void) { return (double)(rng_next() >> 11) / 9007199254740992.0; }

static double rng_normal(void)
{
    double u1 = rng_unit(), u2 = rng_unit();
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
}

enum dist { DIST_UNIFORM, DIST_LOGNORMAL, DIST_OUTLIERS };

static void fill(uint64_t *v, size_t n, enum dist d, uint64_t seed)
{
    rng_state = seed;
    for (size_t i = 0; i < n; i++) {
        switch (d) {
        case DIST_UNIFORM: /* 0 .. 1 s in microseconds */
            v[i] = rng_next() % 1000001;
            break;
        case DIST_LOGNORMAL: /* median 20 ms, long right tail */
            v[i] = (uint64_t)llround(exp(log(20000.0) + 1.0 * rng_normal()));
            break;
        case DIST_OUTLIERS: { /* ~5 ms steps, 1% stalls of 1..100 s, a few zeros */
            double x = 5000 + 300 * rng_normal();
            uint64_t r = rng_next() % 1000;
            if (r < 10)
                x = 1e6 * (1 + (double)(rng_next() % 100));
            else if (r == 10)
                x = 0;
            v[i] = x < 0 ? 0 : (uint64_t)x;
            break;
        }
        }
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted data, with the rank computed exactly as
 * hist_percentile() documents it. */
static uint64_t exact_percentile(const uint64_t *sorted, size_t n, double q)
{
    double r = ceil(q * (double)n);
    size_t rank = r < 1 ? 1 : r >= (double)n ? n : (size_t)r;
    return sorted[rank - 1];
}

static uint64_t exact_le(const uint64_t *v, size_t n, uint64_t b)
{
    uint64_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += v[i] <= b;
    return c;
}

static void check_percentiles_on(enum dist d, uint64_t seed)
{
    static const double qs[] = {0.5, 0.9, 0.95, 0.99, 0.999, 0.0001, 0.25, 0.75};
    uint64_t *v = malloc(N_SAMPLES * sizeof *v);
    assert_non_null(v);
    fill(v, N_SAMPLES, d, seed);

    struct hist *h = malloc(sizeof *h);
    assert_non_null(h);
    hist_init(h);
    uint64_t sum = 0;
    for (size_t i = 0; i < N_SAMPLES; i++) {
        hist_record(h, v[i]);
        sum += v[i];
    }
    qsort(v, N_SAMPLES, sizeof *v, cmp_u64);

    assert_int_equal(h->count, N_SAMPLES);
    assert_int_equal(h->sum, sum);
    assert_int_equal(h->min, v[0]);
    assert_int_equal(h->max, v[N_SAMPLES - 1]);
    assert_true(fabs(hist_mean(h) - (double)sum / N_SAMPLES) < 1e-6);

    for (size_t k = 0; k < sizeof qs / sizeof qs[0]; k++) {
        uint64_t x = exact_percentile(v, N_SAMPLES, qs[k]);
        uint64_t e = hist_percentile(h, qs[k]);
        double err = fabs((double)e - (double)x);
        if (err > (double)x * HIST_REL_ERROR)
            fail_msg("dist %d q=%g: exact %llu, histogram %llu (error %.5f > 1/128)", d, qs[k],
                     (unsigned long long)x, (unsigned long long)e, x ? err / (double)x : err);
    }
    assert_int_equal(hist_percentile(h, 0), v[0]);
    assert_int_equal(hist_percentile(h, 1), v[N_SAMPLES - 1]);
    free(h);
    free(v);
}

static void test_hist_percentiles_of_uniform_data_within_bound(void **state)
{
    check_percentiles_on(DIST_UNIFORM, 1);
}

static void test_hist_percentiles_of_lognormal_data_within_bound(void **state)
{
    check_percentiles_on(DIST_LOGNORMAL, 2);
}

static void test_hist_percentiles_with_outliers_within_bound(void **state)
{
    check_percentiles_on(DIST_OUTLIERS, 3);
}

/* Every q on a fine grid, on a distribution that spans many powers of two. */
static void test_hist_percentile_error_bound_holds_for_every_q(void **state)
{
    size_t n = 50000;
    uint64_t *v = malloc(n * sizeof *v);
    struct hist *h = malloc(sizeof *h);
    assert_non_null(v);
    assert_non_null(h);
    rng_state = 4;
    hist_init(h);
    for (size_t i = 0; i < n; i++) {
        v[i] = rng_next() >> (24 + rng_next() % 40); /* 0 .. 2^40 */
        hist_record(h, v[i]);
    }
    qsort(v, n, sizeof *v, cmp_u64);
    double worst = 0;
    for (int k = 0; k <= 10000; k++) {
        double q = k / 10000.0;
        uint64_t x = exact_percentile(v, n, q), e = hist_percentile(h, q);
        double err = fabs((double)e - (double)x);
        if (x <= 128)
            assert_int_equal(e, x);
        else if (err / (double)x > worst)
            worst = err / (double)x;
    }
    assert_true(worst <= HIST_REL_ERROR);
    free(h);
    free(v);
}

/* --- bucket layout ------------------------------------------------------------- */

static void test_hist_buckets_tile_the_range_with_bounded_width(void **state)
{
    uint64_t v = 0, buckets = 0;
    for (;;) {
        uint64_t lo, hi;
        hist_bucket_range(v, &lo, &hi);
        assert_int_equal(lo, v);              /* no gap after the previous bucket */
        assert_true(hi >= lo);
        if (lo <= 128)
            assert_int_equal(hi, lo);         /* small values are exact */
        else
            assert_true((hi - lo + 1) * 64 <= lo); /* width <= 1/64 of the values */
        /* every value of the bucket maps to it */
        uint64_t l2, h2;
        hist_bucket_range(hi, &l2, &h2);
        assert_int_equal(l2, lo);
        assert_int_equal(h2, hi);
        buckets++;
        if (hi == HIST_MAX_VALUE)
            break;
        v = hi + 1;
    }
    assert_int_equal(buckets, HIST_BUCKETS);
    uint64_t lo, hi;
    hist_bucket_range(HIST_MAX_VALUE + 1, &lo, &hi);
    assert_int_equal(lo, HIST_MAX_VALUE + 1);
    /* powers of two are bucket tops: (lo, 1024] */
    hist_bucket_range(1024, &lo, &hi);
    assert_int_equal(hi, 1024);
    hist_bucket_range(1025, &lo, &hi);
    assert_int_equal(lo, 1025);
}

/* --- edge values ----------------------------------------------------------------- */

static void test_hist_empty_histogram_answers_zero(void **state)
{
    struct hist h;
    hist_init(&h);
    assert_int_equal(hist_percentile(&h, 0.5), 0);
    assert_true(hist_mean(&h) == 0.0);
    uint64_t le = 10, out = 99;
    hist_cumulative(&h, &le, 1, &out);
    assert_int_equal(out, 0);
}

static void test_hist_edge_values_zero_one_and_huge(void **state)
{
    struct hist h;
    hist_init(&h);
    hist_record(&h, 0);
    hist_record(&h, 1);
    hist_record(&h, HIST_MAX_VALUE);
    hist_record(&h, HIST_MAX_VALUE + 1);
    hist_record(&h, UINT64_MAX);
    assert_int_equal(h.count, 5);
    assert_int_equal(h.overflow, 2);
    assert_int_equal(h.min, 0);
    assert_int_equal(h.max, UINT64_MAX);
    assert_int_equal(h.sum, UINT64_MAX); /* saturated, not wrapped */
    assert_int_equal(h.buckets[0], 1);
    assert_int_equal(h.buckets[1], 1);
    assert_int_equal(h.buckets[HIST_BUCKETS - 1], 1);

    assert_int_equal(hist_percentile(&h, 0), 0);
    assert_int_equal(hist_percentile(&h, 0.2), 0);
    assert_int_equal(hist_percentile(&h, 0.4), 1);
    uint64_t p = hist_percentile(&h, 0.6);
    assert_true(fabs((double)p - (double)HIST_MAX_VALUE) <= HIST_MAX_VALUE * HIST_REL_ERROR);
    assert_int_equal(hist_percentile(&h, 0.8), UINT64_MAX); /* overflow answers max */
    assert_int_equal(hist_percentile(&h, 1), UINT64_MAX);

    uint64_t le[] = {0, 1, HIST_MAX_VALUE, HIST_MAX_VALUE + 1, UINT64_MAX}, out[5];
    hist_cumulative(&h, le, 5, out);
    assert_int_equal(out[0], 1);
    assert_int_equal(out[1], 2);
    assert_int_equal(out[2], 3);
    assert_true(out[3] <= 4); /* conservative inside the overflow range */
    assert_int_equal(out[4], 5);
}

static void test_hist_small_values_are_exact(void **state)
{
    struct hist h;
    hist_init(&h);
    for (uint64_t v = 0; v <= 128; v++)
        hist_record(&h, v);
    for (uint64_t k = 1; k <= 129; k++)
        assert_int_equal(hist_percentile(&h, (double)k / 129.0), k - 1);
}

static void test_hist_single_value_is_its_own_percentile(void **state)
{
    struct hist h;
    hist_init(&h);
    hist_record(&h, 123457);
    assert_int_equal(hist_percentile(&h, 0.5), 123457); /* clamped to [min, max] */
    assert_int_equal(hist_percentile(&h, 0.99), 123457);
}

static void test_hist_reset_keeps_edges(void **state)
{
    struct hist h;
    assert_int_equal(hist_init_prom(&h, 1000000), 0);
    hist_record(&h, 2500);
    hist_reset(&h);
    assert_int_equal(h.count, 0);
    assert_int_equal(h.min, UINT64_MAX);
    assert_int_equal(h.n_edges, HIST_PROM_LE_COUNT);
    assert_int_equal(h.edge_counts[1], 0);
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        assert_int_equal(h.buckets[i], 0);
}

/* --- merge ------------------------------------------------------------------------ */

static void test_hist_merge_equals_histogram_of_the_union(void **state)
{
    uint64_t *v = malloc(N_SAMPLES * sizeof *v);
    struct hist *a = malloc(sizeof *a), *b = malloc(sizeof *b), *u = malloc(sizeof *u);
    assert_non_null(v);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(u);
    fill(v, N_SAMPLES, DIST_OUTLIERS, 5);
    assert_int_equal(hist_init_prom(a, 1000000), 0);
    assert_int_equal(hist_init_prom(b, 1000000), 0);
    assert_int_equal(hist_init_prom(u, 1000000), 0);
    for (size_t i = 0; i < N_SAMPLES; i++) {
        hist_record(i % 3 ? a : b, v[i]);
        hist_record(u, v[i]);
    }
    hist_record(b, HIST_MAX_VALUE + 7); /* overflow merges too */
    hist_record(u, HIST_MAX_VALUE + 7);
    assert_int_equal(hist_merge(a, b), 0);
    assert_memory_equal(a, u, sizeof *u);

    /* merging an empty histogram changes nothing, min included */
    hist_reset(b);
    assert_int_equal(hist_merge(a, b), 0);
    assert_memory_equal(a, u, sizeof *u);
    free(a);
    free(b);
    free(u);
    free(v);
}

static void test_hist_merge_refuses_different_edges(void **state)
{
    struct hist *a = malloc(sizeof *a), *b = malloc(sizeof *b), *copy = malloc(sizeof *copy);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(copy);
    assert_int_equal(hist_init_prom(a, 1000000), 0);
    hist_init(b);
    hist_record(a, 10);
    hist_record(b, 20);
    memcpy(copy, a, sizeof *a);
    assert_int_equal(hist_merge(a, b), RILL_E_BAD_CONFIG);
    assert_memory_equal(a, copy, sizeof *a);
    free(a);
    free(b);
    free(copy);
}

/* --- le export ------------------------------------------------------------------------ */

static void test_hist_prom_edges_need_whole_units(void **state)
{
    struct hist h;
    assert_int_equal(hist_init_prom(&h, 1000000), 0);
    assert_int_equal(h.edges[0], 1000);
    assert_int_equal(h.edges[1], 2500);
    assert_int_equal(h.edges[12], 10000000);
    assert_int_equal(hist_init_prom(&h, 1000000000), 0); /* nanoseconds */
    assert_int_equal(hist_init_prom(&h, 1000), RILL_E_BAD_CONFIG); /* 2.5 ms in ms */
    assert_int_equal(h.n_edges, 0);
    uint64_t bad[] = {5, 5};
    assert_int_equal(hist_init_edges(&h, bad, 2), RILL_E_BAD_CONFIG);
    uint64_t big[] = {HIST_MAX_VALUE + 1};
    assert_int_equal(hist_init_edges(&h, big, 1), RILL_E_BAD_CONFIG);
}

/* Prometheus bounds in microseconds, with many samples exactly on a bound
 * (and one off either side): the export equals an exact count. */
static void test_hist_le_export_is_exact_at_edges(void **state)
{
    size_t n = N_SAMPLES;
    uint64_t *v = malloc(n * sizeof *v);
    struct hist *h = malloc(sizeof *h);
    assert_non_null(v);
    assert_non_null(h);
    assert_int_equal(hist_init_prom(h, 1000000), 0);
    fill(v, n, DIST_LOGNORMAL, 6);
    rng_state = 7;
    for (size_t i = 0; i < n; i += 7) {
        uint64_t b = h->edges[rng_next() % HIST_PROM_LE_COUNT];
        v[i] = b + (rng_next() % 3) - 1; /* b-1, b or b+1 */
    }
    for (size_t i = 0; i < n; i++)
        hist_record(h, v[i]);

    uint64_t out[HIST_PROM_LE_COUNT];
    hist_cumulative(h, h->edges, HIST_PROM_LE_COUNT, out);
    for (int k = 0; k < HIST_PROM_LE_COUNT; k++) {
        uint64_t want = exact_le(v, n, h->edges[k]);
        if (out[k] != want)
            fail_msg("le=%llu: exported %llu, exact %llu", (unsigned long long)h->edges[k],
                     (unsigned long long)out[k], (unsigned long long)want);
        if (k)
            assert_true(out[k] >= out[k - 1]);
    }
    free(h);
    free(v);
}

/* Without edges: never above the exact count, below it only by the samples
 * of the one bucket that straddles the bound; exact at bucket tops. */
static void test_hist_le_export_without_edges_is_conservative(void **state)
{
    size_t n = N_SAMPLES;
    uint64_t *v = malloc(n * sizeof *v);
    struct hist *h = malloc(sizeof *h);
    assert_non_null(v);
    assert_non_null(h);
    hist_init(h);
    fill(v, n, DIST_LOGNORMAL, 8);
    for (size_t i = 0; i < n; i += 5)
        v[i] = 2500; /* on the bound, inside a bucket (2496, 2528] */
    for (size_t i = 1; i < n; i += 11)
        v[i] = 4096; /* on a bucket top */
    for (size_t i = 0; i < n; i++)
        hist_record(h, v[i]);

    uint64_t le[HIST_PROM_LE_COUNT + 3], out[HIST_PROM_LE_COUNT + 3];
    for (int k = 0; k < HIST_PROM_LE_COUNT; k++)
        le[k] = (uint64_t)llround(hist_prom_le_seconds[k] * 1e6);
    le[HIST_PROM_LE_COUNT] = 4096;
    le[HIST_PROM_LE_COUNT + 1] = 100;
    le[HIST_PROM_LE_COUNT + 2] = 65536;
    hist_cumulative(h, le, HIST_PROM_LE_COUNT + 3, out);
    for (int k = 0; k < HIST_PROM_LE_COUNT + 3; k++) {
        uint64_t lo, hi;
        hist_bucket_range(le[k], &lo, &hi);
        uint64_t exact = exact_le(v, n, le[k]), floor_ = exact_le(v, n, lo - 1);
        assert_true(out[k] <= exact);
        assert_true(out[k] >= floor_);
        if (hi == le[k])
            assert_int_equal(out[k], exact);
    }
    free(h);
    free(v);
}

/* --- bytes ------------------------------------------------------------------------ */

static void test_hist_serialize_round_trip(void **state)
{
    uint64_t *v = malloc(N_SAMPLES * sizeof *v);
    struct hist *h = malloc(sizeof *h), *back = malloc(sizeof *back);
    uint8_t *buf = malloc(HIST_ENCODED_MAX);
    assert_non_null(v);
    assert_non_null(h);
    assert_non_null(back);
    assert_non_null(buf);
    size_t len;

    /* empty, with and without edges */
    hist_init(h);
    assert_int_equal(hist_encode(h, buf, HIST_ENCODED_MAX, &len), 0);
    assert_int_equal(hist_decode(back, buf, len), 0);
    assert_memory_equal(back, h, sizeof *h);

    assert_int_equal(hist_init_prom(h, 1000000), 0);
    fill(v, N_SAMPLES, DIST_OUTLIERS, 9);
    for (size_t i = 0; i < N_SAMPLES; i++)
        hist_record(h, v[i]);
    hist_record(h, HIST_MAX_VALUE + 1);
    assert_int_equal(hist_encode(h, buf, HIST_ENCODED_MAX, &len), 0);
    print_message("encoded %zu samples in %zu bytes\n", (size_t)h->count, len);
    assert_true(len < 2048); /* small enough for a heartbeat */
    assert_int_equal(hist_decode(back, buf, len), 0);
    assert_memory_equal(back, h, sizeof *h);

    /* too small a buffer is an error, the exact size is enough */
    size_t need = len;
    assert_int_equal(hist_encode(h, buf, need - 1, &len), RILL_E_TOO_LARGE);
    assert_int_equal(hist_encode(h, buf, need, &len), 0);

    /* the worst case fits HIST_ENCODED_MAX */
    hist_init(h);
    hist_record(h, 0);
    hist_record(h, HIST_MAX_VALUE); /* min and max where the buckets say */
    for (unsigned i = 0; i < HIST_BUCKETS; i++) /* every count a full varint */
        h->buckets[i] = UINT64_MAX / HIST_BUCKETS;
    h->count = (UINT64_MAX / HIST_BUCKETS) * HIST_BUCKETS;
    assert_int_equal(hist_encode(h, buf, HIST_ENCODED_MAX, &len), 0);
    assert_int_equal(hist_decode(back, buf, len), 0);
    assert_memory_equal(back, h, sizeof *h);
    free(buf);
    free(back);
    free(h);
    free(v);
}

static void test_hist_decode_rejects_bad_bytes(void **state)
{
    struct hist *h = malloc(sizeof *h), *back = malloc(sizeof *back);
    uint8_t buf[4096], bad[4096];
    size_t len;
    assert_non_null(h);
    assert_non_null(back);
    assert_int_equal(hist_init_prom(h, 1000000), 0);
    uint64_t vals[] = {0, 1, 77, 2500, 99999, 1000000, 5000000};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++)
        hist_record(h, vals[i]);
    assert_int_equal(hist_encode(h, buf, sizeof buf, &len), 0);

    /* every truncation, and a trailing byte */
    for (size_t l = 0; l < len; l++)
        assert_int_equal(hist_decode(back, buf, l), RILL_E_BAD_FORMAT);
    memcpy(bad, buf, len);
    bad[len] = 0;
    assert_int_equal(hist_decode(back, bad, len + 1), RILL_E_BAD_FORMAT);
    assert_int_equal(back->count, 0); /* left empty */

    /* wrong magic, wrong version */
    memcpy(bad, buf, len);
    bad[0] ^= 1;
    assert_int_equal(hist_decode(back, bad, len), RILL_E_BAD_FORMAT);
    memcpy(bad, buf, len);
    bad[1] = 2;
    assert_int_equal(hist_decode(back, bad, len), RILL_E_BAD_FORMAT);

    /* random corruption never crashes, and what decodes is self-consistent */
    rng_state = 10;
    for (int t = 0; t < 20000; t++) {
        memcpy(bad, buf, len);
        int flips = 1 + (int)(rng_next() % 4);
        for (int f = 0; f < flips; f++)
            bad[rng_next() % len] ^= (uint8_t)(1u << (rng_next() % 8));
        if (hist_decode(back, bad, len) == 0) {
            uint64_t total = back->overflow;
            for (unsigned i = 0; i < HIST_BUCKETS; i++)
                total += back->buckets[i];
            assert_int_equal(total, back->count);
            (void)hist_percentile(back, 0.99);
        }
    }
    free(h);
    free(back);
}

/* --- threads ---------------------------------------------------------------------- */

#define ATOMIC_THREADS 4
#define ATOMIC_EACH    100000

static struct hist shared_hist;

static void *record_atomic_thread(void *arg)
{
    uint64_t seed = (uint64_t)(uintptr_t)arg;
    for (uint64_t i = 0; i < ATOMIC_EACH; i++)
        hist_record_atomic(&shared_hist, (seed * 7919 + i * 104729) % 5000000);
    return NULL;
}

static void test_hist_atomic_records_from_many_threads_add_up(void **state)
{
    pthread_t t[ATOMIC_THREADS];
    struct hist *snap = malloc(sizeof *snap), *want = malloc(sizeof *want);
    assert_non_null(snap);
    assert_non_null(want);
    assert_int_equal(hist_init_prom(&shared_hist, 1000000), 0);
    assert_int_equal(hist_init_prom(want, 1000000), 0);
    for (uintptr_t k = 0; k < ATOMIC_THREADS; k++)
        assert_int_equal(pthread_create(&t[k], NULL, record_atomic_thread, (void *)(k + 1)), 0);
    for (int s = 0; s < 20; s++) { /* readers snapshot while writers run */
        hist_snapshot(snap, &shared_hist);
        assert_true(snap->count <= ATOMIC_THREADS * ATOMIC_EACH);
        (void)hist_percentile(snap, 0.99);
    }
    for (int k = 0; k < ATOMIC_THREADS; k++)
        pthread_join(t[k], NULL);
    for (uint64_t k = 1; k <= ATOMIC_THREADS; k++)
        for (uint64_t i = 0; i < ATOMIC_EACH; i++)
            hist_record(want, (k * 7919 + i * 104729) % 5000000);
    hist_snapshot(snap, &shared_hist);
    assert_memory_equal(snap, want, sizeof *want);
    free(snap);
    free(want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hist_percentiles_of_uniform_data_within_bound),
        cmocka_unit_test(test_hist_percentiles_of_lognormal_data_within_bound),
        cmocka_unit_test(test_hist_percentiles_with_outliers_within_bound),
        cmocka_unit_test(test_hist_percentile_error_bound_holds_for_every_q),
        cmocka_unit_test(test_hist_buckets_tile_the_range_with_bounded_width),
        cmocka_unit_test(test_hist_empty_histogram_answers_zero),
        cmocka_unit_test(test_hist_edge_values_zero_one_and_huge),
        cmocka_unit_test(test_hist_small_values_are_exact),
        cmocka_unit_test(test_hist_single_value_is_its_own_percentile),
        cmocka_unit_test(test_hist_reset_keeps_edges),
        cmocka_unit_test(test_hist_merge_equals_histogram_of_the_union),
        cmocka_unit_test(test_hist_merge_refuses_different_edges),
        cmocka_unit_test(test_hist_prom_edges_need_whole_units),
        cmocka_unit_test(test_hist_le_export_is_exact_at_edges),
        cmocka_unit_test(test_hist_le_export_without_edges_is_conservative),
        cmocka_unit_test(test_hist_serialize_round_trip),
        cmocka_unit_test(test_hist_decode_rejects_bad_bytes),
        cmocka_unit_test(test_hist_atomic_records_from_many_threads_add_up),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
