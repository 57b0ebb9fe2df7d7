/* test_vexp.c — the vector expf gives glibc's expf bits in every ISA: on a
 * sample of every exponent, on every float in the range where glibc's
 * special cases and the subnormal results are (64 <= |x| < 128), on the
 * edges, and through the softmax and SiLU that use it.  All 2^32 inputs:
 * `make check-vexp` (tools/vexp-check.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/kern.h"
#include "worker/vexp.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd32(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Compare vexp_array() in every vector ISA with glibc's expf on x[0..n);
 * the number of mismatches (the first few printed). */
static size_t expect_expf(const float *x, size_t n, const char *what)
{
    float *ref = malloc(n * sizeof *ref), *got = malloc(n * sizeof *got);
    assert_non_null(ref);
    assert_non_null(got);
    for (size_t i = 0; i < n; i++)
        ref[i] = expf(x[i]);
    size_t bad = 0;
    for (int isa = KERN_AVX2; isa <= KERN_AVX512; isa++) {
        if (!kern_isa_supported((enum kern_isa)isa))
            continue;
        vexp_array(got, x, n, (enum kern_isa)isa);
        for (size_t i = 0; i < n; i++)
            if (bits(got[i]) != bits(ref[i]) && bad++ < 5)
                print_error("%s, %s: expf(%a) [0x%08x] = %a [0x%08x], glibc %a [0x%08x]\n", what,
                            kern_isa_name((enum kern_isa)isa), x[i], bits(x[i]), got[i], bits(got[i]), ref[i],
                            bits(ref[i]));
    }
    free(ref);
    free(got);
    return bad;
}

/* 8192 mantissas (the smallest, the largest, the rest random) for each of
 * the 256 exponents and both signs: 4.2 million inputs, subnormals, the
 * infinities and NaNs with random payloads included. */
static void test_vexp_matches_glibc_on_every_exponent(void **state)
{
    (void)state;
    const size_t per = 8192, n = 2 * 256 * per;
    float *x = malloc(n * sizeof *x);
    assert_non_null(x);
    size_t k = 0;
    for (uint32_t sign = 0; sign < 2; sign++)
        for (uint32_t e = 0; e < 256; e++)
            for (size_t i = 0; i < per; i++) {
                uint32_t m = i == 0 ? 0 : i == 1 ? 0x7fffff : rnd32() & 0x7fffff;
                x[k++] = from_bits(sign << 31 | e << 23 | m);
            }
    assert_int_equal(k, n);
    assert_int_equal(expect_expf(x, n, "every exponent"), 0);
    free(x);
}

/* Every float with 64 <= |x| < 128: overflow at 0x1.62e42ep6, the results
 * that round to subnormals and to the smallest one, underflow to zero near
 * -103.97, and the |x| >= 88 lanes glibc sends through its special-case
 * branch without being special. */
static void test_vexp_matches_glibc_on_all_of_the_special_range(void **state)
{
    (void)state;
    const size_t n = (size_t)1 << 24;
    float *x = malloc(n * sizeof *x);
    assert_non_null(x);
    for (uint32_t i = 0; i < n; i++)
        x[i] = from_bits((i >> 23) << 31 | (127u + 6) << 23 | (i & 0x7fffff));
    assert_int_equal(expect_expf(x, n, "64 <= |x| < 128"), 0);
    /* and the sample does hold what it claims to */
    size_t inf = 0, sub = 0, zero = 0;
    for (size_t i = 0; i < n; i++) {
        float y = expf(x[i]);
        inf += isinf(y);
        sub += fpclassify(y) == FP_SUBNORMAL;
        zero += y == 0;
    }
    assert_true(inf > 1000000 && sub > 100000 && zero > 1000000);
    free(x);
}

/* The edges one by one, each with its neighbours a few ulps either way. */
static void test_vexp_matches_glibc_on_the_edges(void **state)
{
    (void)state;
    const float edges[] = {0.0f,           -0.0f,          FLT_MIN,        -FLT_MIN,       FLT_TRUE_MIN,
                           -FLT_TRUE_MIN,  FLT_MAX,        -FLT_MAX,       1.0f,           -1.0f,
                           0x1.62e42ep6f,  0x1.62e430p6f,  -0x1.9fe368p6f, -0x1.9d1d9ep6f, -0x1.9fe36ap6f,
                           -0x1.9e8p6f,    88.0f,          -88.0f,         87.99999f,      -87.99999f,
                           0x1.5p-24f,     -0x1.5p-24f,    0x1p-26f,       -0x1p-26f,      0x1.62e42ep-6f,
                           -103.0f,        -104.0f,        -150.0f,        1e-10f,         -1e-10f};
    float x[sizeof edges / sizeof *edges * 33 + 10];
    size_t n = 0;
    for (size_t e = 0; e < sizeof edges / sizeof *edges; e++)
        for (int d = -16; d <= 16; d++) {
            uint32_t b = bits(edges[e]);
            uint32_t mag = b & 0x7fffffff;
            if ((d < 0 && mag < (uint32_t)-d) || mag + (uint32_t)(d > 0 ? d : 0) >= 0x7f800000)
                continue;
            x[n++] = from_bits((b & 0x80000000) | (mag + (uint32_t)d));
        }
    /* the only two floats whose expf changes if x * 32/ln2 is rounded
     * before the shift and the reduction instead of fused into them (as
     * glibc's FMA build does): vexp-check found them */
    x[n++] = 0x1.04845ep+5f;
    x[n++] = -0x1.f8cbb2p+5f;
    x[n++] = INFINITY;
    x[n++] = -INFINITY;
    x[n++] = from_bits(0x7fc00000);  /* the default NaN */
    x[n++] = from_bits(0xffc00000);  /* negative */
    x[n++] = from_bits(0x7f800001);  /* signaling: quieted, payload kept */
    x[n++] = from_bits(0xff812345);  /* negative signaling with a payload */
    x[n++] = from_bits(0x7fffffff);  /* all payload bits */
    x[n++] = from_bits(0xffdeadbe);
    assert_int_equal(expect_expf(x, n, "edges"), 0);
    /* what glibc returns there, so that a change of libm shows here too */
    float y[sizeof x / sizeof *x];
    const float probe[] = {0.0f, -INFINITY, INFINITY, -0x1.9fe368p6f, -0x1.9fe36ap6f, 0x1.62e430p6f};
    for (int isa = KERN_SCALAR; isa <= KERN_AVX512; isa++) {
        if (!kern_isa_supported((enum kern_isa)isa))
            continue;
        vexp_array(y, probe, 6, (enum kern_isa)isa);
        assert_true(y[0] == 1.0f && y[1] == 0.0f && !signbit(y[1]) && y[2] == INFINITY);
        assert_int_equal(bits(y[3]), 1); /* the smallest subnormal */
        assert_int_equal(bits(y[4]), 0);
        assert_true(y[5] == INFINITY);
        vexp_array(y, x + n - 8, 8, (enum kern_isa)isa);
        assert_int_equal(bits(y[2]), 0x7fc00000);
        assert_int_equal(bits(y[4]), 0x7fc00001);
        assert_int_equal(bits(y[5]), 0xffc12345);
    }
}

/* Every length from 0 to 70 and every offset: the tails (a buffer in AVX2,
 * masks in AVX-512) compute the same bits and write nothing past n. */
static void test_vexp_tails_write_exactly_n(void **state)
{
    (void)state;
    float x[80], y[80], ref[80];
    for (int i = 0; i < 80; i++)
        x[i] = -(float)(rnd32() % 100000) / 1000.0f;
    for (int isa = KERN_SCALAR; isa <= KERN_AVX512; isa++) {
        if (!kern_isa_supported((enum kern_isa)isa))
            continue;
        for (size_t off = 0; off < 3; off++)
            for (size_t n = 0; n + off <= 72; n++) {
                for (int i = 0; i < 80; i++)
                    y[i] = ref[i] = -7.0f;
                for (size_t i = 0; i < n; i++)
                    ref[off + i] = expf(x[off + i]);
                vexp_array(y + off, x + off, n, (enum kern_isa)isa);
                if (memcmp(y, ref, sizeof y))
                    fail_msg("%s: vexp_array of %zu at offset %zu", kern_isa_name((enum kern_isa)isa), n, off);
                /* in place, shifted, as the softmax calls it */
                memcpy(y, x, sizeof y);
                for (size_t i = 0; i < n; i++)
                    ref[off + i] = expf(x[off + i] - -3.5f);
                for (int i = 0; i < 80; i++)
                    if (i < (int)off || i >= (int)(off + n))
                        ref[i] = x[i];
                vexp_shifted(y + off, n, -3.5f, (enum kern_isa)isa);
                if (memcmp(y, ref, sizeof y))
                    fail_msg("%s: vexp_shifted of %zu at offset %zu", kern_isa_name((enum kern_isa)isa), n, off);
            }
    }
}

/* Softmax inputs s - max <= 0 over the whole range a score can take, with
 * the shift done in float first, as the attention kernels do. */
static void test_vexp_shifted_matches_glibc_for_softmax_scores(void **state)
{
    (void)state;
    const size_t n = 1 << 20;
    float *s = malloc(n * sizeof *s), *ref = malloc(n * sizeof *ref), *got = malloc(n * sizeof *got);
    const float shifts[] = {0.0f, 3.25f, -17.0f, 1e4f, INFINITY};
    for (size_t si = 0; si < sizeof shifts / sizeof *shifts; si++) {
        float mx = shifts[si];
        for (size_t i = 0; i < n; i++) {
            /* scores at most the max, spread over 2^-30 .. 2^10 below it */
            float below = ldexpf((float)(rnd32() & 0xffffff) / 0x1p24f, (int)(rnd32() % 41) - 30);
            s[i] = i % 97 == 0 ? mx : isinf(mx) ? -below : mx - below;
            ref[i] = expf(s[i] - mx);
        }
        for (int isa = KERN_SCALAR; isa <= KERN_AVX512; isa++) {
            if (!kern_isa_supported((enum kern_isa)isa))
                continue;
            memcpy(got, s, n * sizeof *s);
            vexp_shifted(got, n, mx, (enum kern_isa)isa);
            for (size_t i = 0; i < n; i++)
                if (bits(got[i]) != bits(ref[i]))
                    fail_msg("%s: expf(%a - %a) = %a, glibc %a", kern_isa_name((enum kern_isa)isa), s[i], mx, got[i],
                             ref[i]);
        }
    }
    free(s);
    free(ref);
    free(got);
}

/* silu(g) * u as forward.c's scalar expression computes it, for g over
 * every exponent and the specials (u finite). */
static void test_vexp_silu_matches_the_scalar_expression(void **state)
{
    (void)state;
    const size_t n = 1 << 20;
    float *g = malloc(n * sizeof *g), *u = malloc(n * sizeof *u), *ref = malloc(n * sizeof *ref),
          *got = malloc(n * sizeof *got);
    for (size_t i = 0; i < n; i++) {
        uint32_t b = rnd32();
        if (i % 4 != 0) /* mostly activation-sized values */
            b = (b & 0x807fffff) | (uint32_t)(127 - 20 + (int)(rnd32() % 28)) << 23;
        g[i] = from_bits(b);
        u[i] = (float)(rnd32() % 20001) / 1000.0f - 10.0f;
    }
    g[0] = INFINITY, g[1] = -INFINITY, g[2] = 0.0f, g[3] = -0.0f, g[4] = from_bits(0x7fc00000);
    g[5] = from_bits(0xff812345), g[6] = 89.0f, g[7] = -89.0f, g[8] = 104.0f, g[9] = -104.0f;
    for (size_t i = 0; i < n; i++)
        ref[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    for (int isa = KERN_SCALAR; isa <= KERN_AVX512; isa++) {
        if (!kern_isa_supported((enum kern_isa)isa))
            continue;
        for (size_t len = n; len >= n - 13; len -= 13) { /* and a tail */
            memcpy(got, g, n * sizeof *g);
            vexp_silu_mul(got, u, len, (enum kern_isa)isa);
            for (size_t i = 0; i < n; i++)
                if (bits(got[i]) != bits(i < len ? ref[i] : g[i]))
                    fail_msg("%s: silu(%a) * %a = %a [0x%08x], scalar %a [0x%08x]", kern_isa_name((enum kern_isa)isa),
                             g[i], u[i], got[i], bits(got[i]), ref[i], bits(ref[i]));
        }
    }
    free(g);
    free(u);
    free(ref);
    free(got);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vexp_matches_glibc_on_every_exponent),
        cmocka_unit_test(test_vexp_matches_glibc_on_all_of_the_special_range),
        cmocka_unit_test(test_vexp_matches_glibc_on_the_edges),
        cmocka_unit_test(test_vexp_tails_write_exactly_n),
        cmocka_unit_test(test_vexp_shifted_matches_glibc_for_softmax_scores),
        cmocka_unit_test(test_vexp_silu_matches_the_scalar_expression),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
