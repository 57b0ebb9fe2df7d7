/* test_quant.c — ggml's block types (worker/quant.c): the dequantizers
 * against a plain reference written here from ggml's block definitions
 * (long double arithmetic, one rounding to float at the end, so the check is
 * bit for bit), blocks with known values, extreme scales and the smallest
 * and largest codes; the quantizers' round trips; and the integer dot-product
 * kernels against dequantize-then-multiply in double precision, scalar
 * against AVX2 bit for bit, whatever the batch tiling.
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

#include "common/err.h"
#include "worker/gguf.h"
#include "worker/kern.h"
#include "worker/model.h"
#include "worker/quant.h"

static const enum wtype block_types[] = {WT_Q4_0, WT_Q4_1, WT_Q5_0, WT_Q5_1, WT_Q8_0,
                                         WT_Q2_K, WT_Q3_K, WT_Q4_K, WT_Q5_K, WT_Q6_K};
#define N_BLOCK_TYPES (sizeof block_types / sizeof block_types[0])
static const enum wtype int_types[] = {WT_Q4_0, WT_Q4_1, WT_Q5_0, WT_Q5_1, WT_Q8_0,
                                       WT_Q2_K, WT_Q3_K, WT_Q4_K, WT_Q5_K, WT_Q6_K};
#define N_INT_TYPES (sizeof int_types / sizeof int_types[0])

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint64_t next_u64(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static double frand(void) { return (double)(next_u64() >> 11) * 0x1.0p-52 - 1.0; } /* [-1, 1) */

/* ---- the reference ------------------------------------------------------------------- *
 * Straight from ggml's block structs (ggml-common.h) and dequantize_row_*
 * (ggml-quants.c), in the order ggml writes them, without quant.c's
 * unpacking; halves decoded here from their bits. */

typedef long double ld;

static ld ref_half(const uint8_t *p)
{
    unsigned h = p[0] | p[1] << 8, e = (h >> 10) & 31, m = h & 1023;
    ld v = e == 0 ? ldexpl((ld)m, -24) : ldexpl((ld)(m | 1024), (int)e - 25);
    if (e == 31)
        v = m ? NAN : INFINITY;
    return h & 0x8000 ? -v : v;
}

static void ref_get_scale_min_k4(int j, const uint8_t *q, int *d, int *m)
{
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
    }
}

/* One block of type t at b into y (as exact long doubles). */
static void ref_block(enum wtype t, const uint8_t *b, ld *y)
{
    switch (t) {
    case WT_Q4_0: {
        ld d = ref_half(b);
        for (int j = 0; j < 16; j++) {
            y[j] = d * ((b[2 + j] & 0x0F) - 8);
            y[j + 16] = d * ((b[2 + j] >> 4) - 8);
        }
        break;
    }
    case WT_Q4_1: {
        ld d = ref_half(b), m = ref_half(b + 2);
        for (int j = 0; j < 16; j++) {
            y[j] = d * (b[4 + j] & 0x0F) + m;
            y[j + 16] = d * (b[4 + j] >> 4) + m;
        }
        break;
    }
    case WT_Q5_0:
    case WT_Q5_1: {
        bool one = t == WT_Q5_1;
        ld d = ref_half(b), m = one ? ref_half(b + 2) : 0;
        const uint8_t *qhp = b + (one ? 4 : 2), *qs = qhp + 4;
        uint32_t qh = (uint32_t)qhp[0] | (uint32_t)qhp[1] << 8 | (uint32_t)qhp[2] << 16 | (uint32_t)qhp[3] << 24;
        for (int j = 0; j < 16; j++) {
            int xh0 = ((qh >> (j + 0)) << 4) & 0x10;
            int xh1 = ((qh >> (j + 12))) & 0x10;
            int x0 = (qs[j] & 0x0F) | xh0, x1 = (qs[j] >> 4) | xh1;
            y[j] = one ? d * x0 + m : d * (x0 - 16);
            y[j + 16] = one ? d * x1 + m : d * (x1 - 16);
        }
        break;
    }
    case WT_Q8_0: {
        ld d = ref_half(b);
        for (int j = 0; j < 32; j++)
            y[j] = d * (int8_t)b[2 + j];
        break;
    }
    case WT_Q2_K: {
        const uint8_t *scales = b, *q = b + 16;
        ld d = ref_half(b + 80), min = ref_half(b + 82);
        int is = 0;
        for (int n = 0; n < 256; n += 128) {
            int shift = 0;
            for (int j = 0; j < 4; ++j) {
                int sc = scales[is++];
                ld dl = d * (sc & 0xF), ml = min * (sc >> 4);
                for (int l = 0; l < 16; ++l)
                    *y++ = dl * ((q[l] >> shift) & 3) - ml;
                sc = scales[is++];
                dl = d * (sc & 0xF);
                ml = min * (sc >> 4);
                for (int l = 0; l < 16; ++l)
                    *y++ = dl * ((q[l + 16] >> shift) & 3) - ml;
                shift += 2;
            }
            q += 32;
        }
        break;
    }
    case WT_Q3_K: {
        /* ggml's unpacking of the 6-bit scales through four 32-bit words */
        const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
        uint32_t aux[4];
        memcpy(aux, b + 96, 12);
        uint32_t tmp = aux[2];
        aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
        aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
        aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
        aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
        const int8_t *scales = (const int8_t *)aux;
        ld d_all = ref_half(b + 108);
        const uint8_t *q = b + 32, *hm = b;
        uint8_t m = 1;
        int is = 0;
        for (int n = 0; n < 256; n += 128) {
            int shift = 0;
            for (int j = 0; j < 4; ++j) {
                ld dl = d_all * (scales[is++] - 32);
                for (int l = 0; l < 16; ++l)
                    *y++ = dl * ((int8_t)((q[l + 0] >> shift) & 3) - ((hm[l + 0] & m) ? 0 : 4));
                dl = d_all * (scales[is++] - 32);
                for (int l = 0; l < 16; ++l)
                    *y++ = dl * ((int8_t)((q[l + 16] >> shift) & 3) - ((hm[l + 16] & m) ? 0 : 4));
                shift += 2;
                m <<= 1;
            }
            q += 32;
        }
        break;
    }
    case WT_Q4_K:
    case WT_Q5_K: {
        bool five = t == WT_Q5_K;
        ld d = ref_half(b), min = ref_half(b + 2);
        const uint8_t *scales = b + 4, *qh = b + 16, *ql = b + (five ? 48 : 16);
        int is = 0, u1 = 1, u2 = 2;
        for (int j = 0; j < 256; j += 64) {
            int sc, m;
            ref_get_scale_min_k4(is + 0, scales, &sc, &m);
            ld d1 = d * sc, m1 = min * m;
            ref_get_scale_min_k4(is + 1, scales, &sc, &m);
            ld d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; ++l)
                *y++ = d1 * ((ql[l] & 0xF) + (five && (qh[l] & u1) ? 16 : 0)) - m1;
            for (int l = 0; l < 32; ++l)
                *y++ = d2 * ((ql[l] >> 4) + (five && (qh[l] & u2) ? 16 : 0)) - m2;
            ql += 32;
            is += 2;
            u1 <<= 2;
            u2 <<= 2;
        }
        break;
    }
    case WT_Q6_K: {
        ld d = ref_half(b + 208);
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        for (int n = 0; n < 256; n += 128) {
            for (int l = 0; l < 32; ++l) {
                int is = l / 16;
                int q1 = (int8_t)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = (int8_t)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l + 0] = d * sc[is + 0] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
        break;
    }
    default:
        fail_msg("no reference for type %d", t);
    }
}

/* Byte offsets of a block's half fields (d first). */
static int half_fields(enum wtype t, int off[2])
{
    switch (t) {
    case WT_Q4_0: case WT_Q5_0: case WT_Q8_0: off[0] = 0; return 1;
    case WT_Q4_1: case WT_Q5_1: case WT_Q4_K: case WT_Q5_K: off[0] = 0; off[1] = 2; return 2;
    case WT_Q2_K: off[0] = 80; off[1] = 82; return 2;
    case WT_Q3_K: off[0] = 108; return 1;
    case WT_Q6_K: off[0] = 208; return 1;
    default: return 0;
    }
}

static void put_half_bits(uint8_t *p, uint16_t h)
{
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

/* quant_dequant of `n` blocks against the reference, bit for bit. */
static void check_blocks(enum wtype t, const uint8_t *blocks, int n, const char *what)
{
    uint32_t bs = quant_block(t), bb = quant_block_bytes(t);
    float *got = malloc(sizeof(float) * bs * (size_t)n);
    ld *want = malloc(sizeof(ld) * bs);
    quant_dequant(t, blocks, got, (size_t)bs * (size_t)n);
    for (int i = 0; i < n; i++) {
        ref_block(t, blocks + (size_t)i * bb, want);
        for (uint32_t e = 0; e < bs; e++) {
            float w = (float)want[e], g = got[(size_t)i * bs + e];
            if (memcmp(&w, &g, sizeof w) != 0)
                fail_msg("%s %s: block %d element %u: %.9g, reference %.9g", wtype_name(t), what, i, e, (double)g,
                         (double)w);
        }
    }
    free(got);
    free(want);
}

static void test_block_sizes_agree_with_the_gguf_reader(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_BLOCK_TYPES; i++) {
        enum wtype t = block_types[i];
        assert_true(quant_supported(t));
        assert_int_equal(quant_block(t), gguf_ttype_block(t));
        assert_int_equal(quant_block_bytes(t), gguf_ttype_size(t));
        assert_int_equal(wtype_row_bytes(t, 1024), gguf_ttype_bytes(t, 1024));
        assert_string_equal(wtype_name(t), gguf_ttype_name(t));
        assert_int_equal(wtype_from_name(gguf_ttype_name(t)), (int)t);
    }
    assert_int_equal(quant_block_bytes(WT_BF16), 2);
    assert_false(quant_supported((enum wtype)GGUF_T_IQ2_XXS));
    assert_false(quant_supported((enum wtype)GGUF_T_Q8_K));
    assert_int_equal(wtype_from_name("iq4_nl"), -1);
    assert_int_equal(wtype_from_name("q8_K"), -1);
}

/* Blocks of known values: every code byte and scale byte at its largest
 * (0xff) with d = dmin = 1, and at zero; values worked out by hand. */
static void test_dequantizers_give_known_values_for_the_largest_and_smallest_codes(void **state)
{
    (void)state;
    static const struct {
        enum wtype t;
        float all_ff; /* every byte 0xff, then d (and dmin, m) = 1 */
    } cases[] = {
        {WT_Q4_0, 7},        /* (15 - 8) * 1 */
        {WT_Q4_1, 16},       /* 15 * 1 + 1 */
        {WT_Q5_0, 15},       /* (31 - 16) */
        {WT_Q5_1, 32},       /* 31 + 1 */
        {WT_Q8_0, -1},       /* int8 0xff */
        {WT_Q2_K, 30},       /* scale 15, min 15: 15 * 3 - 15 */
        {WT_Q3_K, 93},       /* scale 63 - 32 = 31, high bit set: 31 * 3 */
        {WT_Q4_K, 882},      /* scale 63, min 63: 63 * 15 - 63 */
        {WT_Q5_K, 1890},     /* 63 * 31 - 63 */
        {WT_Q6_K, -31},      /* scale int8 -1, code 63 - 32 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        enum wtype t = cases[i].t;
        uint32_t bs = quant_block(t), bb = quant_block_bytes(t);
        uint8_t blk[256];
        float out[256];
        int off[2], nh = half_fields(t, off);
        memset(blk, 0xff, bb);
        for (int h = 0; h < nh; h++)
            put_half_bits(blk + off[h], 0x3c00); /* 1.0 */
        quant_dequant(t, blk, out, bs);
        for (uint32_t e = 0; e < bs; e++)
            if (out[e] != cases[i].all_ff)
                fail_msg("%s all codes largest: element %u is %g, expected %g", wtype_name(t), e, (double)out[e],
                         (double)cases[i].all_ff);
        check_blocks(t, blk, 1, "largest codes");
        /* Every code and scale byte zero, d = 2, dmin = m = 0.5. */
        memset(blk, 0, bb);
        put_half_bits(blk + off[0], 0x4000); /* 2.0 */
        if (nh > 1)
            put_half_bits(blk + off[1], 0x3800); /* 0.5 */
        quant_dequant(t, blk, out, bs);
        float want = t == WT_Q4_0 ? -16 : t == WT_Q4_1 || t == WT_Q5_1 ? 0.5f : t == WT_Q5_0 ? -32
                     : t == WT_Q3_K ? 256 /* 2 * (0 - 32) * (0 - 4) */ : 0;
        for (uint32_t e = 0; e < bs; e++)
            if (out[e] != want)
                fail_msg("%s all codes zero: element %u is %g, expected %g", wtype_name(t), e, (double)out[e],
                         (double)want);
        check_blocks(t, blk, 1, "zero codes");
    }
    /* q3_K's scale packing by hand: scale 5 has low nibble in byte 5 (low),
     * top bits in byte 9 bits 2-3; scale 13 in byte 5 (high) and byte 9
     * bits 6-7.  Set scale 5 = 0x3f (-> 31) and scale 13 = 0x21 (-> 1);
     * every other scale stays 0 (-> -32). */
    uint8_t b3[110] = {0};
    memset(b3, 0xff, 32); /* hmask: no -4 */
    b3[96 + 5] = 0x1f;    /* low nibble of scale 5 = 0xf, of scale 13 = 0x1 */
    b3[96 + 9] = 0x03 << 2 | 0x02 << 6;
    memset(b3 + 32, 0x55, 64); /* every two-bit code 1 */
    put_half_bits(b3 + 108, 0x3c00);
    float o3[256];
    quant_dequant(WT_Q3_K, b3, o3, 256);
    for (int e = 0; e < 256; e++) {
        float want = e / 16 == 5 ? 31 : e / 16 == 13 ? 1 : -32;
        if (o3[e] != want)
            fail_msg("q3_K element %d (group %d): %g, expected %g", e, e / 16, (double)o3[e], (double)want);
    }
    /* q4_K: scale/min 6 have their top bits in bytes 2 / 6 (bits 6-7). */
    uint8_t b4[144] = {0};
    put_half_bits(b4, 0x3c00);
    put_half_bits(b4 + 2, 0x3c00);
    b4[4 + 2] = 0xc0;          /* scale 6 top bits = 3 */
    b4[4 + 6] = 0x40;          /* min 6 top bits = 1 */
    b4[4 + 10] = 0x21;         /* scale 6 low nibble 1, min 6 low nibble 2 */
    memset(b4 + 16, 0x33, 128); /* every code 3 */
    float o4[256];
    quant_dequant(WT_Q4_K, b4, o4, 256);
    for (int e = 0; e < 256; e++) {
        float want = e / 32 == 6 ? (float)(0x31 * 3 - 0x12) : 0;
        if (o4[e] != want)
            fail_msg("q4_K element %d: %g, expected %g", e, (double)o4[e], (double)want);
    }
}

/* Random blocks with random, extreme and special scales: bit for bit against
 * the reference. */
static void test_dequantizers_match_the_reference_bit_for_bit(void **state)
{
    (void)state;
    static const uint16_t halves[] = {
        0x7bff, /* 65504, the largest half */
        0xfbff, /* -65504 */
        0x0001, /* 2^-24, the smallest subnormal */
        0x8001, 0x03ff, /* the largest subnormal */
        0x0400, /* the smallest normal */
        0x0000, 0x8000, 0x3c00, 0x3555, 0xb2aa, 0x1234, 0x5678,
    };
    const int nh_vals = (int)(sizeof halves / sizeof halves[0]);
    for (size_t ti = 0; ti < N_BLOCK_TYPES; ti++) {
        enum wtype t = block_types[ti];
        uint32_t bb = quant_block_bytes(t);
        const int n = 400;
        uint8_t *blocks = malloc((size_t)bb * n);
        int off[2], nh = half_fields(t, off);
        for (int i = 0; i < n; i++) {
            uint8_t *b = blocks + (size_t)i * bb;
            for (uint32_t k = 0; k < bb; k++)
                b[k] = (uint8_t)next_u64();
            /* Codes at the ends in some blocks. */
            if (i % 7 == 1)
                memset(b, 0xff, bb);
            if (i % 7 == 2)
                memset(b, 0, bb);
            for (int h = 0; h < nh; h++) {
                uint16_t v;
                if (i % 3 == 0)
                    v = halves[(i / 3 + h) % nh_vals];
                else
                    v = (uint16_t)((next_u64() & 0x7fff) % 0x7c00) | (uint16_t)(next_u64() & 0x8000); /* finite */
                put_half_bits(b + off[h], v);
            }
        }
        check_blocks(t, blocks, n, "random blocks");
        free(blocks);
    }
    /* BF16 and F16: every bit pattern that is not NaN. */
    uint8_t p[2];
    for (uint32_t h = 0; h < 65536; h++) {
        put_half_bits(p, (uint16_t)h);
        float bf, f16;
        quant_dequant(WT_BF16, p, &bf, 1);
        quant_dequant(WT_F16, p, &f16, 1);
        uint32_t bits = h << 16, fb;
        memcpy(&fb, &bf, 4);
        if ((h & 0x7fff) <= 0x7f80)
            assert_int_equal(fb, bits);
        if ((h & 0x7fff) <= 0x7c00 && f16 != (float)ref_half(p))
            fail_msg("f16 0x%04x: %g, reference %g", h, (double)f16, (double)ref_half(p));
    }
    assert_int_equal(quant_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(quant_f32_to_bf16(1.00390625f), 0x3f80); /* tie: to even */
    assert_int_equal(quant_f32_to_bf16(1.01171875f), 0x3f82); /* tie: to even */
}

/* ---- quantizers -------------------------------------------------------------------------- */

/* Quantize random rows, dequantize, and bound the error.  The bounds are
 * loose (each format's step, or an RMS a little above what these simple
 * quantizers reach) but far below what a misplaced bit gives. */
static void test_quantizers_round_trip_within_each_formats_step(void **state)
{
    (void)state;
    static const struct {
        enum wtype t;
        double rms; /* of the error, relative to the RMS of the data */
    } cases[] = {
        {WT_Q4_0, 0.10}, {WT_Q4_1, 0.09}, {WT_Q5_0, 0.05}, {WT_Q5_1, 0.045}, {WT_Q8_0, 0.006},
        {WT_Q2_K, 0.40}, {WT_Q3_K, 0.20}, {WT_Q4_K, 0.09}, {WT_Q5_K, 0.045}, {WT_Q6_K, 0.023},
        {WT_F16, 0.0005}, {WT_BF16, 0.003},
    };
    const size_t n = 4096;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    uint8_t *q = malloc(n * 4);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        enum wtype t = cases[ci].t;
        uint32_t bs = quant_block(t);
        for (size_t i = 0; i < n; i++)
            x[i] = (float)(frand() * (1 + 3 * ((i / 64) % 4))); /* groups of different ranges */
        quant_quantize(t, x, q, n);
        quant_dequant(t, q, y, n);
        double se = 0, sx = 0;
        for (size_t b = 0; b < n; b += bs) {
            float lo = 0, hi = 0;
            for (uint32_t e = 0; e < bs; e++) {
                lo = fminf(lo, x[b + e]);
                hi = fmaxf(hi, x[b + e]);
            }
            for (uint32_t e = 0; e < bs; e++) {
                double err = fabs((double)y[b + e] - x[b + e]);
                se += err * err;
                sx += (double)x[b + e] * x[b + e];
                /* Never more than the block's range over 3 (two-bit codes
                 * span it in 3 steps): a wrong bit is worth far more. */
                if (err > (hi - lo) / 3.0 + 1e-6)
                    fail_msg("%s element %zu: %g -> %g", wtype_name(t), b + e, (double)x[b + e], (double)y[b + e]);
            }
        }
        double rel = sqrt(se / sx);
        print_message("  %-5s round trip: RMS error %.4f of the data's RMS\n", wtype_name(t), rel);
        if (rel > cases[ci].rms)
            fail_msg("%s: RMS error %.4f, more than %.4f", wtype_name(t), rel, cases[ci].rms);
    }
    /* Values a format represents exactly come back exactly: q4_0 with
     * d = 0.25 (the extreme -2 maps to code 0), q8_0 with d = 1/127 * 127. */
    for (int e = 0; e < 32; e++)
        x[e] = 0.25f * (float)((e * 5) % 16 - 8);
    quant_quantize(WT_Q4_0, x, q, 32);
    quant_dequant(WT_Q4_0, q, y, 32);
    assert_memory_equal(x, y, 32 * sizeof(float));
    for (int e = 0; e < 32; e++)
        x[e] = (float)(e * 9 % 255 - 127);
    x[3] = 127;
    quant_quantize(WT_Q8_0, x, q, 32);
    quant_dequant(WT_Q8_0, q, y, 32);
    assert_memory_equal(x, y, 32 * sizeof(float));
    /* All zeros stay zeros. */
    memset(x, 0, 256 * sizeof(float));
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        quant_quantize(cases[ci].t, x, q, 256);
        quant_dequant(cases[ci].t, q, y, 256);
        for (int e = 0; e < 256; e++)
            assert_true(y[e] == 0);
    }
    free(x);
    free(y);
    free(q);
}

/* ---- dot-product kernels ------------------------------------------------------------------- */

/* A rows x cols matrix of type t.  Rows cycle through three kinds: real
 * quantized data (quant_quantize of floats with groups of different
 * ranges), random bytes with moderate random half scales (every code
 * pattern), and every code byte 0xff (the largest codes, d = 1, scale bytes
 * 0xff; for q8_0 every code 0x80 = -128, its largest magnitude, which only
 * raw bytes reach) — the largest integer sums the lanes see. */
static void make_qmatrix(struct wmat *w, enum wtype t, uint32_t rows, uint32_t cols)
{
    w->type = t;
    w->rows = rows;
    w->cols = cols;
    w->row_bytes = wtype_row_bytes(t, cols);
    uint8_t *data = malloc(w->row_bytes * rows);
    float *x = malloc(cols * sizeof *x);
    uint32_t bs = quant_block(t), bb = quant_block_bytes(t);
    int off[2], nh = half_fields(t, off);
    for (uint32_t r = 0; r < rows; r++) {
        uint8_t *row = data + (size_t)r * w->row_bytes;
        if (r % 3 == 0) {
            for (uint32_t k = 0; k < cols; k++)
                x[k] = (float)(frand() * (0.5 + (k / 32) % 4));
            quant_quantize(t, x, row, cols);
            continue;
        }
        for (uint32_t b = 0; b < cols / bs; b++) {
            uint8_t *blk = row + (size_t)b * bb;
            if (r % 3 == 1) {
                for (uint32_t k = 0; k < bb; k++)
                    blk[k] = (uint8_t)next_u64();
                for (int h = 0; h < nh; h++)
                    put_half_bits(blk + off[h], f32_to_f16((float)(frand() * 0.05)));
            } else {
                memset(blk, t == WT_Q8_0 ? 0x80 : 0xff, bb);
                for (int h = 0; h < nh; h++)
                    put_half_bits(blk + off[h], 0x3c00);
            }
        }
    }
    w->data = data;
    free(x);
}

/* Activation rows: random, one at the extremes (+-1: every code +-127),
 * one all zero, one with a tiny block. */
static float *make_acts(uint32_t B, uint32_t K)
{
    float *x = malloc(sizeof(float) * B * K);
    for (uint32_t b = 0; b < B; b++)
        for (uint32_t k = 0; k < K; k++) {
            float v = (float)frand();
            if (b % 5 == 1)
                v = k % 3 ? 1.0f : -1.0f;
            else if (b % 5 == 2)
                v = 0;
            else if (b % 5 == 3 && k < 32)
                v *= 1e-38f;
            x[(size_t)b * K + k] = v;
        }
    return x;
}

/* Each kernel against dequantize-then-multiply in double:
 *   - with the activations as the kernel quantized them, to float rounding
 *     (the integer sums are exact; a few float roundings per block remain);
 *   - with the original activations, within what quantizing them can cost:
 *     sum |w| * d_x / 2 over the row (each x moves by at most half a step). */
static void test_int_kernels_agree_with_dequantize_then_multiply_in_double(void **state)
{
    (void)state;
    for (int isa = KERN_SCALAR; isa <= KERN_AVX512; isa++) {
        if (!kern_isa_supported((enum kern_isa)isa))
            continue; /* nothing to check on this CPU */
        enum kern_isa old = kern_set_isa((enum kern_isa)isa);
        for (size_t ti = 0; ti < N_INT_TYPES; ti++) {
            enum wtype t = int_types[ti];
            uint32_t N = 29, K = quant_block(t) == 32 ? 320 : 768, B = 7;
            struct wmat w;
            make_qmatrix(&w, t, N, K);
            float *x = make_acts(B, K), *y = malloc(sizeof(float) * B * N);
            float *wr = malloc(sizeof(float) * K);
            struct kmat km;
            assert_int_equal(kern_pack(&w, &km), 0);
            kern_matmul(&km, x, K, B, y, N, 0, N);
            struct quant_act a = {0};
            assert_int_equal(quant_act_quantize(&a, quant_act_kind(t), false, x, K, B, K), 0);
            uint32_t abs_ = quant_block(t);
            double worst_tight = 0, worst_loose = 0;
            for (uint32_t n = 0; n < N; n++) {
                wmat_row_f32(&w, n, wr);
                for (uint32_t b = 0; b < B; b++) {
                    double ref_q = 0, ref_x = 0, mag = 0, qerr = 0;
                    for (uint32_t k0 = 0; k0 < K; k0 += abs_) {
                        double dx = a.d[((size_t)b * K + k0) / abs_], wmax = 0;
                        for (uint32_t k = k0; k < k0 + abs_; k++)
                            wmax = fmax(wmax, fabs(wr[k]));
                        for (uint32_t k = k0; k < k0 + abs_; k++) {
                            double xq = dx * a.q[(size_t)b * K + k], xv = x[(size_t)b * K + k];
                            ref_q += (double)wr[k] * xq;
                            ref_x += (double)wr[k] * xv;
                            mag += (fabs(wr[k]) + wmax) * fabs(xq);
                            qerr += fabs(wr[k]) * dx * 0.5;
                        }
                    }
                    double got = y[(size_t)b * N + n];
                    double tight = 2e-7 * mag + 1e-30, loose = qerr * (1 + 1e-6) + tight;
                    if (fabs(got - ref_q) > tight || fabs(got - ref_x) > loose)
                        fail_msg("%s (%s) row %u act %u: %.9g; dequantized in double %.9g (tolerance %.3g), "
                                 "with the original activations %.9g (tolerance %.3g)",
                                 wtype_name(t), kern_isa_name(kern_isa()), n, b, got, ref_q, tight, ref_x, loose);
                    if (mag > 0)
                        worst_tight = fmax(worst_tight, fabs(got - ref_q) / mag);
                    if (qerr > 0)
                        worst_loose = fmax(worst_loose, fabs(got - ref_x) / qerr);
                }
            }
            print_message("  %-5s %-6s |y - double| / sum|w a|: %.2e; |y - w.x| / (sum |w| d_x / 2): %.2f\n",
                          wtype_name(t), kern_isa_name(kern_isa()), worst_tight, worst_loose);
            quant_act_free(&a);
            kern_unpack_free(&km);
            free((void *)w.data);
            free(x);
            free(y);
            free(wr);
        }
        kern_set_isa(old);
    }
}

/* Activation quantization: AVX2 and scalar give the same codes and scales. */
static void test_activation_quantization_is_the_same_in_avx2_and_scalar(void **state)
{
    (void)state;
    if (!kern_isa_supported(KERN_AVX2))
        skip();
    uint32_t B = 11, K = 1024;
    float *x = make_acts(B, K);
    x[5] = 3e38f; /* a huge value */
    /* Row 4: every block's max is 127 (so x * 127 / max is x) and the other
     * values are halves: ties, which both must round to even. */
    for (uint32_t k = 0; k < K; k++)
        x[(size_t)4 * K + k] = k % 32 == 7 ? 127.0f : (float)((int)(k % 200) - 100) + 0.5f;
    for (int kind = QACT_32; kind <= QACT_256; kind++) {
        struct quant_act s = {0}, v = {0};
        assert_int_equal(quant_act_quantize(&s, (enum qact_kind)kind, false, x, K, B, K), 0);
        assert_int_equal(quant_act_quantize(&v, (enum qact_kind)kind, true, x, K, B, K), 0);
        uint32_t bs = kind == QACT_32 ? 32 : 256;
        assert_memory_equal(s.q, v.q, (size_t)B * K);
        assert_memory_equal(s.d, v.d, sizeof(float) * B * K / bs);
        if (kind == QACT_32)
            assert_memory_equal(s.s, v.s, sizeof(float) * B * K / 32);
        else
            assert_memory_equal(s.bsum, v.bsum, sizeof(int16_t) * B * K / 16);
        for (size_t i = 0; i < (size_t)B * K; i++)
            assert_true(s.q[i] >= -127 && s.q[i] <= 127);
        /* a block of +-1: codes +-127 and d = 1/127 */
        assert_int_equal(s.q[(size_t)1 * K + 1], 127);
        assert_int_equal(s.q[(size_t)1 * K + 0], -127);
        assert_true(s.d[K / bs] == 1.0f / 127.0f);
        assert_int_equal(s.q[(size_t)4 * K + 0], -100); /* -99.5 */
        assert_int_equal(s.q[(size_t)4 * K + 1], -98);  /* -98.5 */
        quant_act_free(&s);
        quant_act_free(&v);
    }
    free(x);
}

/* The property the worker leans on: an element does not depend on the batch
 * size, the row range, the tile, the instruction set or whether the input
 * was prepared for several matrices at once. */
static void test_int_kernels_are_bit_identical_across_batch_tiles_and_isa(void **state)
{
    (void)state;
    for (size_t ti = 0; ti < N_INT_TYPES; ti++) {
        enum wtype t = int_types[ti];
        uint32_t N = 41, K = quant_block(t) == 32 ? 416 : 512, B = 23;
        struct wmat w;
        make_qmatrix(&w, t, N, K);
        float *x = make_acts(B, K);
        float *full = malloc(sizeof(float) * B * N), *part = malloc(sizeof(float) * B * N);
        struct kmat km;
        assert_int_equal(kern_pack(&w, &km), 0);
        kern_matmul(&km, x, K, B, full, N, 0, N);
        for (uint32_t b = 0; b < B; b++)
            kern_matmul(&km, x + (size_t)b * K, K, 1, part + (size_t)b * N, N, 0, N);
        if (memcmp(full, part, sizeof(float) * B * N))
            fail_msg("%s: one row at a time differs from the batch of %u", wtype_name(t), B);
        memset(part, 0, sizeof(float) * B * N);
        for (uint32_t b = 0; b < B; b += 6) {
            uint32_t nb = B - b < 6 ? B - b : 6;
            for (uint32_t n0 = 0; n0 < N; n0 += 8)
                kern_matmul(&km, x + (size_t)b * K, K, nb, part + (size_t)b * N, N, n0, n0 + 8 < N ? n0 + 8 : N);
        }
        if (memcmp(full, part, sizeof(float) * B * N))
            fail_msg("%s: batches of 6 over row ranges of 8 differ", wtype_name(t));
        /* Prepared once for two matrices (one of them F32), as forward.c does. */
        struct wmat wf = {.type = WT_F32, .rows = 8, .cols = K, .row_bytes = (size_t)K * 4};
        float *fw = calloc((size_t)8 * K, sizeof(float));
        wf.data = fw;
        struct kmat kf;
        assert_int_equal(kern_pack(&wf, &kf), 0);
        const struct kmat *ms[2] = {&kf, &km};
        struct kern_act act = {0};
        assert_int_equal(kern_act_reserve(&act, B, K), 0);
        assert_int_equal(kern_act_prepare(&act, x, K, B, K, ms, 2), 0);
        memset(part, 0, sizeof(float) * B * N);
        kern_matmul_act(&km, &act, part, N, 0, 20);
        kern_matmul_act(&km, &act, part, N, 20, N);
        if (memcmp(full, part, sizeof(float) * B * N))
            fail_msg("%s: prepared input differs", wtype_name(t));
        /* B = 23 takes every tile: AVX-512's 8, 4 and 2 rows, AVX2's 1. */
        for (int isa = KERN_SCALAR; isa <= KERN_AVX512; isa++) {
            if (!kern_isa_supported((enum kern_isa)isa) || (enum kern_isa)isa == kern_isa())
                continue;
            enum kern_isa old = kern_set_isa((enum kern_isa)isa);
            memset(part, 0, sizeof(float) * B * N);
            kern_matmul(&km, x, K, B, part, N, 0, N);
            kern_set_isa(old);
            for (size_t i = 0; i < (size_t)B * N; i++)
                if (memcmp(&full[i], &part[i], sizeof(float)))
                    fail_msg("%s: %s %.9g, %s %.9g at row %zu, act %zu", wtype_name(t),
                             kern_isa_name((enum kern_isa)isa), (double)part[i], kern_isa_name(old), (double)full[i],
                             i % N, i / N);
        }
        kern_act_free(&act);
        kern_unpack_free(&kf);
        free(fw);
        kern_unpack_free(&km);
        free((void *)w.data);
        free(x);
        free(full);
        free(part);
    }
}

/* The AVX-512 prefill kernel of q4_0 and q8_0 (4 or 2 weight rows against
 * tiles of 16 or 8 activation rows, on the raw codes with the offset folded into a
 * per-lane correction) gives the bits of every other path: each batch size
 * (whole tiles and every remainder), row ranges of 6 (tiles of 4, of 2 and a
 * lone row), each row alone (the decode kernel) and the scalar code; and it
 * is within float rounding of the dequantized product in double. */
static void expect_prefill_kernel_bit_identical(enum wtype t)
{
    uint32_t N = 31, K = 320, BMAX = 70;
    struct wmat w;
    make_qmatrix(&w, t, N, K);
    float *x = make_acts(BMAX, K), *alone = malloc(sizeof(float) * BMAX * N), *y = malloc(sizeof(float) * BMAX * N),
          *wr = malloc(sizeof(float) * K);
    struct kmat km;
    assert_int_equal(kern_pack(&w, &km), 0);
    enum kern_isa old = kern_set_isa(KERN_SCALAR);
    kern_matmul(&km, x, K, BMAX, alone, N, 0, N);
    kern_set_isa(old);
    for (uint32_t b = 0; b < BMAX; b++) {
        kern_matmul(&km, x + (size_t)b * K, K, 1, y + (size_t)b * N, N, 0, N);
        if (memcmp(y + (size_t)b * N, alone + (size_t)b * N, sizeof(float) * N))
            fail_msg("%s act %u alone (%s) differs from the scalar code", wtype_name(t), b, kern_isa_name(kern_isa()));
    }
    uint32_t sizes[] = {8, 9, 10, 12, 15, 16, 17, 23, 24, 31, 32, 40, 64, 70};
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        uint32_t B = sizes[si];
        for (int ranges = 0; ranges < 2; ranges++) {
            memset(y, 0, sizeof(float) * B * N);
            for (uint32_t n0 = 0; n0 < N; n0 += ranges ? 6 : N)
                kern_matmul(&km, x, K, B, y, N, n0, ranges ? n0 + 6 : N);
            for (size_t i = 0; i < (size_t)B * N; i++)
                if (memcmp(&y[i], &alone[i], sizeof(float)))
                    fail_msg("%s (%s), batch of %u%s: %.9g, scalar one row at a time %.9g at row %zu, act %zu",
                             wtype_name(t), kern_isa_name(kern_isa()), B, ranges ? " in row ranges of 6" : "", (double)y[i],
                             (double)alone[i], i % N, i / N);
        }
    }
    /* near double precision, with the activations as quantized */
    struct quant_act a = {0};
    assert_int_equal(quant_act_quantize(&a, QACT_32, false, x, K, BMAX, K), 0);
    for (uint32_t n = 0; n < N; n++) {
        wmat_row_f32(&w, n, wr);
        for (uint32_t b = 0; b < BMAX; b++) {
            double ref = 0, mag = 0;
            for (uint32_t k = 0; k < K; k++) {
                double xq = (double)a.d[((size_t)b * K + k) / 32] * a.q[(size_t)b * K + k];
                ref += (double)wr[k] * xq;
                mag += fabs((double)wr[k] * xq);
            }
            if (fabs(y[(size_t)b * N + n] - ref) > 1e-6 * mag + 1e-30)
                fail_msg("%s row %u act %u: %.9g, dequantized in double %.9g", wtype_name(t), n, b,
                         (double)y[(size_t)b * N + n], ref);
        }
    }
    quant_act_free(&a);
    kern_unpack_free(&km);
    free((void *)w.data);
    free(x);
    free(alone);
    free(y);
    free(wr);
}

static void test_raw_code_prefill_kernels_are_bit_identical_across_batch_sizes(void **state)
{
    (void)state;
    expect_prefill_kernel_bit_identical(WT_Q4_0);
    expect_prefill_kernel_bit_identical(WT_Q8_0);
}

/* q4_0's and q8_0's float order as quant.h defines it, written out here from
 * the block bytes and the quantized activations, without quant.c's code:
 * per block, lane j's exact integer L_j = sum of w_e * a_e over e =
 * 4j..4j+3 and 16+4j..16+4j+3 (four lanes; q8_0's w the signed byte,
 * q4_0's the nibble minus 8: low nibbles elements 0-15, high 16-31), then
 * acc_j = fmaf(d_w * d_x, L_j, acc_j) block after block, then
 * (acc0 + acc2) + (acc1 + acc3). */
static float four_lane_ordered_dot(enum wtype t, const uint8_t *row, const struct quant_act *a, uint32_t b)
{
    uint32_t K = a->K, nb = K / 32, bb = t == WT_Q8_0 ? 34 : 18;
    float acc[4] = {0};
    for (uint32_t i = 0; i < nb; i++) {
        const uint8_t *blk = row + (size_t)i * bb;
        const int8_t *aq = a->q + (size_t)b * K + (size_t)i * 32;
        int w[32];
        for (int e = 0; e < 16; e++) {
            w[e] = t == WT_Q8_0 ? (int8_t)blk[2 + e] : (blk[2 + e] & 15) - 8;
            w[16 + e] = t == WT_Q8_0 ? (int8_t)blk[18 + e] : (blk[2 + e] >> 4) - 8;
        }
        float D = f16_to_f32((uint16_t)(blk[0] | blk[1] << 8)) * a->d[(size_t)b * nb + i];
        for (int j = 0; j < 4; j++) {
            int32_t L = 0;
            for (int e = 4 * j; e < 4 * j + 4; e++)
                L += w[e] * aq[e] + w[16 + e] * aq[16 + e];
            acc[j] = fmaf(D, (float)L, acc[j]);
        }
    }
    return (acc[0] + acc[2]) + (acc[1] + acc[3]);
}

/* Every path of t gives exactly the defined order's bits: scalar, AVX2 and
 * AVX-512, decode (one activation row: AVX-512's pairs of weight rows) and
 * prefill (the tiles of 16 and 8 activation rows, the 2/4/8-row kernels,
 * AVX2's 1-4), in both layouts of the packed rows.  A kernel that summed in
 * another order — another split of the lanes, another reduction, a block's
 * lanes added before the scale, d_w * (d_x * L) — fails here even where it
 * agrees with itself across batch sizes. */
static void expect_four_lane_order(enum wtype t)
{
    uint32_t N = 30, K = 512, BMAX = 70;
    struct wmat w;
    make_qmatrix(&w, t, N, K);
    float *x = make_acts(BMAX, K), *y = malloc(sizeof(float) * BMAX * N), *ref = malloc(sizeof(float) * BMAX * N);
    struct quant_act a = {0};
    assert_int_equal(quant_act_quantize(&a, QACT_32, false, x, K, BMAX, K), 0);
    for (uint32_t b = 0; b < BMAX; b++)
        for (uint32_t n = 0; n < N; n++)
            ref[(size_t)b * N + n] = four_lane_ordered_dot(t, (const uint8_t *)w.data + (size_t)n * w.row_bytes, &a, b);
    struct kmat km, kplain;
    assert_int_equal(kern_pack(&w, &km), 0);
    enum kern_isa old = kern_set_isa(KERN_SCALAR);
    assert_int_equal(kern_pack(&w, &kplain), 0);
    const uint32_t sizes[] = {1, 2, 3, 4, 8, 13, 16, 23, 70};
    for (int isa = KERN_SCALAR; isa <= KERN_AVX512; isa++) {
        if (!kern_isa_supported((enum kern_isa)isa))
            continue;
        kern_set_isa((enum kern_isa)isa);
        for (int layout = 0; layout < 2; layout++)
            for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
                uint32_t B = sizes[si];
                memset(y, 0, sizeof(float) * B * N);
                kern_matmul(layout ? &km : &kplain, x, K, B, y, N, 0, N);
                for (size_t i = 0; i < (size_t)B * N; i++)
                    if (memcmp(&y[i], &ref[i], sizeof(float)))
                        fail_msg("%s %s (%s), batch of %u: %.9g, the defined order %.9g at row %zu, act %zu",
                                 wtype_name(t), kern_isa_name((enum kern_isa)isa), layout && km.pairs ? "pairs" : "rows",
                                 B, (double)y[i], (double)ref[i], i % N, i / N);
            }
    }
    kern_set_isa(old);
    quant_act_free(&a);
    kern_unpack_free(&kplain);
    kern_unpack_free(&km);
    free((void *)w.data);
    free(x);
    free(y);
    free(ref);
}

static void test_q8_0_kernels_follow_the_defined_order_bit_for_bit(void **state)
{
    (void)state;
    expect_four_lane_order(WT_Q8_0);
}

static void test_q4_0_kernels_follow_the_defined_order_bit_for_bit(void **state)
{
    (void)state;
    expect_four_lane_order(WT_Q4_0);
}

/* q4_0 decode (one activation row) with AVX-512 takes two blocks of a pair
 * of weight rows at once and a lone last block when a row has an odd number
 * of blocks: rows of 1, 2, 3, 13 and 18 blocks, over row ranges that start at
 * every even row and end at every row (so pairs and a lone last row in every
 * position), give the defined order's bits in both layouts and every
 * instruction set. */
static void test_q4_0_decode_follows_the_defined_order_for_any_row_length_and_range(void **state)
{
    (void)state;
    const uint32_t Ks[] = {32, 64, 96, 416, 576};
    const uint32_t N = 11;
    for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++) {
        uint32_t K = Ks[ki];
        struct wmat w;
        make_qmatrix(&w, WT_Q4_0, N, K);
        float *x = make_acts(5, K), *y = malloc(sizeof(float) * N), ref[11];
        struct quant_act a = {0};
        assert_int_equal(quant_act_quantize(&a, QACT_32, false, x, K, 5, K), 0);
        struct kmat km, kplain;
        assert_int_equal(kern_pack(&w, &km), 0);
        enum kern_isa old = kern_set_isa(KERN_SCALAR);
        assert_int_equal(kern_pack(&w, &kplain), 0);
        for (uint32_t b = 0; b < 5; b++) {
            for (uint32_t n = 0; n < N; n++)
                ref[n] = four_lane_ordered_dot(WT_Q4_0, (const uint8_t *)w.data + (size_t)n * w.row_bytes, &a, b);
            for (int isa = KERN_SCALAR; isa <= KERN_AVX512; isa++) {
                if (!kern_isa_supported((enum kern_isa)isa))
                    continue;
                kern_set_isa((enum kern_isa)isa);
                for (int layout = 0; layout < 2; layout++)
                    for (uint32_t n0 = 0; n0 < N; n0 += 2)
                        for (uint32_t n1 = n0 + 1; n1 <= N; n1++) {
                            for (uint32_t n = 0; n < N; n++)
                                y[n] = -1.0f;
                            kern_matmul(layout ? &km : &kplain, x + (size_t)b * K, K, 1, y, N, n0, n1);
                            for (uint32_t n = 0; n < N; n++) {
                                float want = n >= n0 && n < n1 ? ref[n] : -1.0f;
                                if (memcmp(&y[n], &want, sizeof(float)))
                                    fail_msg("q4_0 %s (%s) K %u act %u rows [%u, %u): %.9g, the defined order %.9g at "
                                             "row %u",
                                             kern_isa_name((enum kern_isa)isa), layout && km.pairs ? "pairs" : "rows", K,
                                             b, n0, n1, (double)y[n], (double)want, n);
                            }
                        }
            }
        }
        kern_set_isa(old);
        quant_act_free(&a);
        kern_unpack_free(&kplain);
        kern_unpack_free(&km);
        free((void *)w.data);
        free(x);
        free(y);
    }
}

/* A long prompt over a wide matrix is computed in passes of activation rows
 * and blocks of weight rows (so the codes stay in cache); an element must not
 * depend on which pass or block it fell in: 53 rows of 4096 columns cross a
 * pass boundary, compared with one row at a time, in every instruction set
 * and in both layouts of the packed rows (one after the other, as packed
 * without AVX-512, and in pairs, as packed with it). */
static void test_int_kernels_give_the_same_bits_across_cache_passes(void **state)
{
    (void)state;
    const enum wtype ts[] = {WT_Q4_0, WT_Q8_0, WT_Q4_K, WT_Q6_K};
    for (size_t ti = 0; ti < sizeof ts / sizeof *ts; ti++) {
        enum wtype t = ts[ti];
        uint32_t N = 70, K = 4096, B = 53;
        struct wmat w;
        make_qmatrix(&w, t, N, K);
        float *x = make_acts(B, K);
        float *full = malloc(sizeof(float) * B * N), *one = malloc(sizeof(float) * B * N);
        struct kmat km, kplain;
        assert_int_equal(kern_pack(&w, &km), 0);
        enum kern_isa old = kern_set_isa(KERN_SCALAR);
        assert_int_equal(kern_pack(&w, &kplain), 0);
        assert_false(kplain.pairs);
        for (uint32_t b = 0; b < B; b++)
            kern_matmul(&kplain, x + (size_t)b * K, K, 1, one + (size_t)b * N, N, 0, N);
        for (int isa = KERN_SCALAR; isa <= KERN_AVX512; isa++) {
            if (!kern_isa_supported((enum kern_isa)isa))
                continue;
            kern_set_isa((enum kern_isa)isa);
            for (int layout = 0; layout < 2; layout++) {
                memset(full, 0, sizeof(float) * B * N);
                kern_matmul(layout ? &km : &kplain, x, K, B, full, N, 0, N);
                for (size_t i = 0; i < (size_t)B * N; i++)
                    if (memcmp(&full[i], &one[i], sizeof(float)))
                        fail_msg("%s %s (%s): batch of %u %.9g, one row at a time (scalar) %.9g at row %zu, act %zu",
                                 wtype_name(t), kern_isa_name((enum kern_isa)isa), layout && km.pairs ? "pairs" : "rows",
                                 B, (double)full[i], (double)one[i], i % N, i / N);
                /* and one row at a time in this layout and instruction set (decode) */
                kern_matmul(layout ? &km : &kplain, x + (size_t)5 * K, K, 1, full, N, 0, N);
                if (memcmp(full, one + (size_t)5 * N, sizeof(float) * N))
                    fail_msg("%s %s: one row differs from the scalar one", wtype_name(t),
                             kern_isa_name((enum kern_isa)isa));
            }
        }
        kern_set_isa(old);
        kern_unpack_free(&kplain);
        kern_unpack_free(&km);
        free((void *)w.data);
        free(x);
        free(full);
        free(one);
    }
}

/* BF16 joins the float kernels: the same bits in AVX2 and scalar, and the
 * exact products of its (exact) floats. */
static void test_bf16_matmul_matches_scalar_and_double(void **state)
{
    (void)state;
    uint32_t N = 21, K = 800, B = 9;
    struct wmat w = {.type = WT_BF16, .rows = N, .cols = K, .row_bytes = (size_t)K * 2};
    uint16_t *d = malloc((size_t)N * K * 2);
    for (size_t i = 0; i < (size_t)N * K; i++)
        d[i] = quant_f32_to_bf16((float)frand());
    w.data = d;
    float *x = make_acts(B, K), *y = malloc(sizeof(float) * B * N), *ys = malloc(sizeof(float) * B * N);
    struct kmat km;
    assert_int_equal(kern_pack(&w, &km), 0);
    kern_matmul(&km, x, K, B, y, N, 0, N);
    enum kern_isa old = kern_set_isa(KERN_SCALAR);
    kern_matmul(&km, x, K, B, ys, N, 0, N);
    kern_set_isa(old);
    assert_memory_equal(y, ys, sizeof(float) * B * N);
    for (uint32_t n = 0; n < N; n++)
        for (uint32_t b = 0; b < B; b++) {
            double ref = 0, mag = 0;
            for (uint32_t k = 0; k < K; k++) {
                double p = (double)quant_bf16_to_f32(d[(size_t)n * K + k]) * x[(size_t)b * K + k];
                ref += p;
                mag += fabs(p);
            }
            assert_true(fabs(y[(size_t)b * N + n] - ref) <= 1e-6 * mag + 1e-30);
        }
    kern_unpack_free(&km);
    free(d);
    free(x);
    free(y);
    free(ys);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_block_sizes_agree_with_the_gguf_reader),
        cmocka_unit_test(test_dequantizers_give_known_values_for_the_largest_and_smallest_codes),
        cmocka_unit_test(test_dequantizers_match_the_reference_bit_for_bit),
        cmocka_unit_test(test_quantizers_round_trip_within_each_formats_step),
        cmocka_unit_test(test_int_kernels_agree_with_dequantize_then_multiply_in_double),
        cmocka_unit_test(test_activation_quantization_is_the_same_in_avx2_and_scalar),
        cmocka_unit_test(test_int_kernels_are_bit_identical_across_batch_tiles_and_isa),
        cmocka_unit_test(test_int_kernels_give_the_same_bits_across_cache_passes),
        cmocka_unit_test(test_raw_code_prefill_kernels_are_bit_identical_across_batch_sizes),
        cmocka_unit_test(test_q8_0_kernels_follow_the_defined_order_bit_for_bit),
        cmocka_unit_test(test_q4_0_kernels_follow_the_defined_order_bit_for_bit),
        cmocka_unit_test(test_q4_0_decode_follows_the_defined_order_for_any_row_length_and_range),
        cmocka_unit_test(test_bf16_matmul_matches_scalar_and_double),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
