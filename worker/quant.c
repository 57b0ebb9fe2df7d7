/* quant.c — see quant.h.
 *
 * Every block type is read through one unpacking step (unpack32 / unpack256)
 * that turns a block into small unsigned integers u, the integer scale of
 * each group of 16 (or 32) weights, an offset subtracted from u and the
 * float super-scales.  The dequantizer and the scalar integer kernels both
 * read blocks that way, so the reference tests of the dequantizer also vouch
 * for what the kernels see; the AVX2 kernels unpack with vector shuffles and
 * are held to the scalar ones bit for bit.
 */
#include "quant.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

/* ---- types ------------------------------------------------------------------ */

static const struct {
    uint16_t block, bytes;
    enum qact_kind act;
} types[WT_COUNT] = {
    [WT_F32] = {1, 4, QACT_NONE},     [WT_F16] = {1, 2, QACT_NONE},    [WT_BF16] = {1, 2, QACT_NONE},
    [WT_Q4_0] = {32, 18, QACT_32},    [WT_Q4_1] = {32, 20, QACT_32},   [WT_Q5_0] = {32, 22, QACT_32},
    [WT_Q5_1] = {32, 24, QACT_32},    [WT_Q8_0] = {32, 34, QACT_32}, [WT_Q2_K] = {QK_K, 84, QACT_256},
    [WT_Q3_K] = {QK_K, 110, QACT_256}, [WT_Q4_K] = {QK_K, 144, QACT_256}, [WT_Q5_K] = {QK_K, 176, QACT_256},
    [WT_Q6_K] = {QK_K, 210, QACT_256},
};

uint32_t quant_block(enum wtype t) { return (unsigned)t < WT_COUNT ? types[t].block : 0; }
uint32_t quant_block_bytes(enum wtype t) { return (unsigned)t < WT_COUNT ? types[t].bytes : 0; }
bool quant_supported(enum wtype t) { return quant_block(t) != 0; }
enum qact_kind quant_act_kind(enum wtype t) { return (unsigned)t < WT_COUNT ? types[t].act : QACT_NONE; }

static inline float half_at(const uint8_t *p) { return f16_to_f32((uint16_t)(p[0] | p[1] << 8)); }

static inline void put_half(uint8_t *p, float f)
{
    uint16_t h = f32_to_f16(f);
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

float quant_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t quant_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000)
        return (uint16_t)((x >> 16) | 0x40); /* NaN stays NaN (quiet) */
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

/* ---- unpacking ------------------------------------------------------------------ */

/* A 32-weight block: weight e is d * (u[e] - off) + m. */
struct blk32 {
    uint8_t u[32];
    int off;
    float d, m;
    bool has_min;
};

static void unpack32(enum wtype t, const uint8_t *b, struct blk32 *o)
{
    o->d = half_at(b);
    o->m = 0;
    o->has_min = t == WT_Q4_1 || t == WT_Q5_1;
    if (o->has_min)
        o->m = half_at(b + 2);
    const uint8_t *qs = b + (t == WT_Q4_0 ? 2 : t == WT_Q4_1 ? 4 : t == WT_Q5_0 ? 6 : 8);
    uint32_t qh = 0;
    if (t == WT_Q5_0 || t == WT_Q5_1) {
        const uint8_t *h = b + (t == WT_Q5_0 ? 2 : 4);
        qh = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24;
    }
    for (int j = 0; j < 16; j++) {
        o->u[j] = (uint8_t)((qs[j] & 15) | ((qh >> j) & 1) << 4);
        o->u[j + 16] = (uint8_t)((qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4);
    }
    o->off = t == WT_Q4_0 ? 8 : t == WT_Q5_0 ? 16 : 0;
}

/* A 256-weight block: 16 groups of 16; weight e of group g = e / 16 is
 *   d * sc[g] * (u[e] - off) - dmin * mn[g]. */
struct blk256 {
    uint8_t u[QK_K];
    int16_t sc[16], mn[16];
    int off;
    float d, dmin;
    bool has_min;
};

/* q4_K / q5_K: eight 6-bit scales and mins in 12 bytes.  Scales 0-3 and
 * mins 0-3 are the low six bits of bytes 0-3 and 4-7; scale and min 4+i
 * have their low four bits in the low and high nibble of byte 8+i and their
 * top two bits in the top two bits of bytes i and 4+i. */
static void k4_scales(const uint8_t *s, uint8_t sc[8], uint8_t mn[8])
{
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (uint8_t)((s[j + 8] & 15) | (s[j] >> 6) << 4);
        mn[j + 4] = (uint8_t)((s[j + 8] >> 4) | (s[j + 4] >> 6) << 4);
    }
}

/* q3_K: sixteen 6-bit scales in 12 bytes.  Scale i's low four bits are the
 * low (i < 8) or high (i >= 8) nibble of byte i % 8; its top two bits are
 * bits 2 * (i / 4) of byte 8 + i % 4.  Returned minus 32 (signed). */
static void k3_scales(const uint8_t *s, int8_t out[16])
{
    for (int i = 0; i < 16; i++) {
        int lo = i < 8 ? s[i] & 15 : s[i - 8] >> 4;
        int hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        out[i] = (int8_t)((lo | hi << 4) - 32);
    }
}

static void unpack256(enum wtype t, const uint8_t *b, struct blk256 *o)
{
    o->off = 0;
    o->dmin = 0;
    o->has_min = false;
    memset(o->mn, 0, sizeof o->mn);
    switch (t) {
    case WT_Q2_K: {
        const uint8_t *qs = b + 16;
        for (int g = 0; g < 16; g++) {
            o->sc[g] = b[g] & 15;
            o->mn[g] = b[g] >> 4;
        }
        for (int n = 0; n < 2; n++)
            for (int j = 0; j < 4; j++)
                for (int l = 0; l < 32; l++)
                    o->u[128 * n + 32 * j + l] = (qs[32 * n + l] >> (2 * j)) & 3;
        o->d = half_at(b + 80);
        o->dmin = half_at(b + 82);
        o->has_min = true;
        break;
    }
    case WT_Q3_K: {
        const uint8_t *hm = b, *qs = b + 32;
        int8_t s[16];
        k3_scales(b + 96, s);
        for (int g = 0; g < 16; g++)
            o->sc[g] = s[g];
        for (int n = 0; n < 2; n++)
            for (int j = 0; j < 4; j++)
                for (int l = 0; l < 32; l++)
                    o->u[128 * n + 32 * j + l] =
                        (uint8_t)(((qs[32 * n + l] >> (2 * j)) & 3) | ((hm[l] >> (4 * n + j)) & 1) << 2);
        o->off = 4;
        o->d = half_at(b + 108);
        break;
    }
    case WT_Q4_K:
    case WT_Q5_K: {
        uint8_t sc[8], mn[8];
        k4_scales(b + 4, sc, mn);
        for (int g = 0; g < 16; g++) {
            o->sc[g] = sc[g / 2];
            o->mn[g] = mn[g / 2];
        }
        bool five = t == WT_Q5_K;
        const uint8_t *qh = b + 16, *qs = b + (five ? 48 : 16);
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++) {
                uint8_t q = qs[32 * j + l];
                o->u[64 * j + l] = (uint8_t)((q & 15) | (five ? ((qh[l] >> (2 * j)) & 1) << 4 : 0));
                o->u[64 * j + 32 + l] = (uint8_t)((q >> 4) | (five ? ((qh[l] >> (2 * j + 1)) & 1) << 4 : 0));
            }
        o->d = half_at(b);
        o->dmin = half_at(b + 2);
        o->has_min = true;
        break;
    }
    case WT_Q6_K: {
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *s = (const int8_t *)(b + 192);
        for (int g = 0; g < 16; g++)
            o->sc[g] = s[g];
        for (int n = 0; n < 2; n++)
            for (int l = 0; l < 32; l++) {
                const uint8_t *L = ql + 64 * n, h = qh[32 * n + l];
                uint8_t *u = o->u + 128 * n;
                u[l] = (uint8_t)((L[l] & 15) | (h & 3) << 4);
                u[l + 32] = (uint8_t)((L[l + 32] & 15) | ((h >> 2) & 3) << 4);
                u[l + 64] = (uint8_t)((L[l] >> 4) | ((h >> 4) & 3) << 4);
                u[l + 96] = (uint8_t)((L[l + 32] >> 4) | ((h >> 6) & 3) << 4);
            }
        o->off = 32;
        o->d = half_at(b + 208);
        break;
    }
    default:
        memset(o, 0, sizeof *o);
    }
}

/* ---- dequantizing ------------------------------------------------------------------ */

void quant_dequant(enum wtype t, const void *src, float *out, size_t n)
{
    const uint8_t *p = src;
    switch (t) {
    case WT_F32:
        memcpy(out, src, n * sizeof(float));
        return;
    case WT_F16:
        for (size_t i = 0; i < n; i++)
            out[i] = half_at(p + 2 * i);
        return;
    case WT_BF16:
        for (size_t i = 0; i < n; i++)
            out[i] = quant_bf16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        return;
    case WT_Q8_0:
        for (size_t b = 0; b < n / 32; b++, p += 34) {
            float d = half_at(p);
            for (int j = 0; j < 32; j++)
                out[32 * b + (size_t)j] = d * (float)(int8_t)p[2 + j];
        }
        return;
    default:
        break;
    }
    uint32_t bs = quant_block(t), bb = quant_block_bytes(t);
    if (!bs)
        return;
    for (size_t b = 0; b < n / bs; b++, p += bb, out += bs) {
        /* Each product below is exact (a half times integers of at most
         * 14 bits); the one addition rounds once. */
        if (bs == 32) {
            struct blk32 k;
            unpack32(t, p, &k);
            for (int e = 0; e < 32; e++)
                out[e] = k.has_min ? k.d * (float)k.u[e] + k.m : k.d * (float)(k.u[e] - k.off);
        } else {
            struct blk256 k;
            unpack256(t, p, &k);
            for (int e = 0; e < QK_K; e++) {
                float ds = k.d * (float)k.sc[e / 16];
                out[e] = k.has_min ? ds * (float)k.u[e] - k.dmin * (float)k.mn[e / 16]
                                   : ds * (float)(k.u[e] - k.off);
            }
        }
    }
}

/* ---- quantizing ------------------------------------------------------------------------ */

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }
static inline int round_div(float x, float d) { return d != 0 ? (int)lrintf(x / d) : 0; }

/* The value of largest magnitude, with its sign. */
static float signed_amax(const float *x, int n)
{
    float m = 0;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > fabsf(m))
            m = x[i];
    return m;
}

static void quantize32(enum wtype t, const float *x, uint8_t *b)
{
    uint8_t u[32];
    if (t == WT_Q4_0 || t == WT_Q5_0) {
        /* The extreme value maps to -8 (-16), the end with one more step. */
        int half = t == WT_Q4_0 ? 8 : 16;
        float d = signed_amax(x, 32) / (float)-half;
        put_half(b, d);
        d = half_at(b);
        for (int e = 0; e < 32; e++)
            u[e] = (uint8_t)clampi(round_div(x[e], d) + half, 0, 2 * half - 1);
    } else {
        int top = t == WT_Q4_1 ? 15 : 31;
        float lo = x[0], hi = x[0];
        for (int e = 1; e < 32; e++) {
            lo = fminf(lo, x[e]);
            hi = fmaxf(hi, x[e]);
        }
        put_half(b, (hi - lo) / (float)top);
        put_half(b + 2, lo);
        float d = half_at(b), m = half_at(b + 2);
        for (int e = 0; e < 32; e++)
            u[e] = (uint8_t)clampi(round_div(x[e] - m, d), 0, top);
    }
    uint8_t *qs = b + (t == WT_Q4_0 ? 2 : t == WT_Q4_1 ? 4 : t == WT_Q5_0 ? 6 : 8);
    for (int j = 0; j < 16; j++)
        qs[j] = (uint8_t)((u[j] & 15) | (u[j + 16] & 15) << 4);
    if (t == WT_Q5_0 || t == WT_Q5_1) {
        uint32_t qh = 0;
        for (int e = 0; e < 32; e++)
            qh |= (uint32_t)(u[e] >> 4) << e;
        uint8_t *h = b + (t == WT_Q5_0 ? 2 : 4);
        for (int i = 0; i < 4; i++)
            h[i] = (uint8_t)(qh >> (8 * i));
    }
}

/* Groups with a scale and a min (q2_K: 16 groups of 16, 4-bit scales; q4_K,
 * q5_K: 8 of 32, 6-bit): each group's range [min(0, lo), hi] spread over
 * 0..top; the group scales and mins quantized against the block's largest. */
static void quantize_min_groups(const float *x, int groups, int top, int sbits, uint8_t *u, uint8_t *sc,
                                uint8_t *mn, float *d_out, float *dmin_out)
{
    int gs = QK_K / groups, smax = (1 << sbits) - 1;
    float scale[16], min[16], max_scale = 0, max_min = 0;
    for (int g = 0; g < groups; g++) {
        float lo = 0, hi = 0;
        for (int i = 0; i < gs; i++) {
            lo = fminf(lo, x[g * gs + i]);
            hi = fmaxf(hi, x[g * gs + i]);
        }
        scale[g] = (hi - lo) / (float)top;
        min[g] = -lo;
        max_scale = fmaxf(max_scale, scale[g]);
        max_min = fmaxf(max_min, min[g]);
    }
    float d = f16_to_f32(f32_to_f16(max_scale / (float)smax));
    float dmin = f16_to_f32(f32_to_f16(max_min / (float)smax));
    for (int g = 0; g < groups; g++) {
        sc[g] = (uint8_t)clampi(round_div(scale[g], d), 0, smax);
        mn[g] = (uint8_t)clampi(round_div(min[g], dmin), 0, smax);
        float ds = d * (float)sc[g], dm = dmin * (float)mn[g];
        for (int i = 0; i < gs; i++)
            u[g * gs + i] = (uint8_t)clampi(round_div(x[g * gs + i] + dm, ds), 0, top);
    }
    *d_out = d;
    *dmin_out = dmin;
}

/* Groups of 16 with a signed scale (q3_K: 6 bits, q6_K: 8 bits) and values
 * -half..half-1; the extreme value of each group maps to -half. */
static void quantize_signed_groups(const float *x, int half, int smax, int8_t *sc, uint8_t *u, float *d_out)
{
    float scale[16], amax = 0;
    for (int g = 0; g < 16; g++) {
        scale[g] = signed_amax(x + 16 * g, 16) / (float)-half;
        amax = fmaxf(amax, fabsf(scale[g]));
    }
    float d = f16_to_f32(f32_to_f16(amax / (float)smax));
    for (int g = 0; g < 16; g++) {
        sc[g] = (int8_t)clampi(round_div(scale[g], d), -smax, smax);
        float ds = d * (float)sc[g];
        for (int i = 0; i < 16; i++)
            u[16 * g + i] = (uint8_t)(clampi(round_div(x[16 * g + i], ds), -half, half - 1) + half);
    }
    *d_out = d;
}

static void quantize256(enum wtype t, const float *x, uint8_t *b)
{
    uint8_t u[QK_K];
    memset(b, 0, quant_block_bytes(t));
    switch (t) {
    case WT_Q2_K: {
        uint8_t sc[16], mn[16];
        float d, dmin;
        quantize_min_groups(x, 16, 3, 4, u, sc, mn, &d, &dmin);
        for (int g = 0; g < 16; g++)
            b[g] = (uint8_t)(sc[g] | mn[g] << 4);
        for (int n = 0; n < 2; n++)
            for (int j = 0; j < 4; j++)
                for (int l = 0; l < 32; l++)
                    b[16 + 32 * n + l] |= (uint8_t)(u[128 * n + 32 * j + l] << (2 * j));
        put_half(b + 80, d);
        put_half(b + 82, dmin);
        break;
    }
    case WT_Q3_K: {
        int8_t sc[16];
        float d;
        quantize_signed_groups(x, 4, 31, sc, u, &d);
        for (int n = 0; n < 2; n++)
            for (int j = 0; j < 4; j++)
                for (int l = 0; l < 32; l++) {
                    uint8_t v = u[128 * n + 32 * j + l];
                    b[32 + 32 * n + l] |= (uint8_t)((v & 3) << (2 * j));
                    b[l] |= (uint8_t)((v >> 2) << (4 * n + j));
                }
        for (int i = 0; i < 16; i++) {
            int v = sc[i] + 32;
            b[96 + i % 8] |= (uint8_t)((v & 15) << (i < 8 ? 0 : 4));
            b[96 + 8 + i % 4] |= (uint8_t)((v >> 4) << (2 * (i / 4)));
        }
        put_half(b + 108, d);
        break;
    }
    case WT_Q4_K:
    case WT_Q5_K: {
        bool five = t == WT_Q5_K;
        uint8_t sc[8], mn[8];
        float d, dmin;
        quantize_min_groups(x, 8, five ? 31 : 15, 6, u, sc, mn, &d, &dmin);
        put_half(b, d);
        put_half(b + 2, dmin);
        uint8_t *s = b + 4;
        for (int j = 0; j < 4; j++) {
            s[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
            s[j + 4] = (uint8_t)(mn[j] | (mn[j + 4] >> 4) << 6);
            s[j + 8] = (uint8_t)((sc[j + 4] & 15) | (mn[j + 4] & 15) << 4);
        }
        uint8_t *qh = b + 16, *qs = b + (five ? 48 : 16);
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++) {
                uint8_t lo = u[64 * j + l], hi = u[64 * j + 32 + l];
                qs[32 * j + l] = (uint8_t)((lo & 15) | (hi & 15) << 4);
                if (five)
                    qh[l] |= (uint8_t)((lo >> 4) << (2 * j) | (hi >> 4) << (2 * j + 1));
            }
        break;
    }
    case WT_Q6_K: {
        int8_t sc[16];
        float d;
        quantize_signed_groups(x, 32, 127, sc, u, &d);
        uint8_t *ql = b, *qh = b + 128;
        for (int n = 0; n < 2; n++)
            for (int l = 0; l < 32; l++) {
                const uint8_t *v = u + 128 * n;
                ql[64 * n + l] = (uint8_t)((v[l] & 15) | (v[l + 64] & 15) << 4);
                ql[64 * n + l + 32] = (uint8_t)((v[l + 32] & 15) | (v[l + 96] & 15) << 4);
                qh[32 * n + l] = (uint8_t)((v[l] >> 4) | (v[l + 32] >> 4) << 2 | (v[l + 64] >> 4) << 4 |
                                           (v[l + 96] >> 4) << 6);
            }
        memcpy(b + 192, sc, 16);
        put_half(b + 208, d);
        break;
    }
    default:
        break;
    }
}

void quant_quantize(enum wtype t, const float *x, void *dst, size_t n)
{
    uint8_t *p = dst;
    switch (t) {
    case WT_F32:
        memcpy(dst, x, n * sizeof(float));
        return;
    case WT_F16:
    case WT_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h = t == WT_F16 ? f32_to_f16(x[i]) : quant_f32_to_bf16(x[i]);
            p[2 * i] = (uint8_t)h;
            p[2 * i + 1] = (uint8_t)(h >> 8);
        }
        return;
    case WT_Q8_0:
        for (size_t b = 0; b < n / 32; b++, x += 32, p += 34) {
            float amax = 0;
            for (int j = 0; j < 32; j++)
                amax = fmaxf(amax, fabsf(x[j]));
            put_half(p, amax / 127.0f);
            float d = half_at(p);
            for (int j = 0; j < 32; j++)
                p[2 + j] = (uint8_t)(int8_t)clampi(round_div(x[j], d), -127, 127);
        }
        return;
    default:
        break;
    }
    uint32_t bs = quant_block(t), bb = quant_block_bytes(t);
    for (size_t b = 0; bs && b < n / bs; b++, x += bs, p += bb) {
        if (bs == 32)
            quantize32(t, x, p);
        else
            quantize256(t, x, p);
    }
}

/* ---- activations ------------------------------------------------------------------------ */

static uint32_t act_block(enum qact_kind k) { return k == QACT_32 ? 32 : k == QACT_256 ? QK_K : 0; }

int quant_act_reserve(struct quant_act *a, enum qact_kind kind, uint32_t B, uint32_t K)
{
    uint32_t bs = act_block(kind);
    if (!bs || K % bs)
        return RILL_E_UNSUPPORTED;
    size_t n = (size_t)B * K;
    if (n > a->cap) {
        /* Sized by elements, so any later (B, K) of no more elements fits. */
        int8_t *q = aligned_alloc(64, (n + 63) / 64 * 64);
        float *d = malloc((n / 32 + 1) * sizeof *d), *s = malloc((n / 32 + 1) * sizeof *s);
        int16_t *bsum = malloc((n / 16 + 1) * sizeof *bsum);
        if (!q || !d || !s || !bsum) {
            free(q);
            free(d);
            free(s);
            free(bsum);
            return RILL_E_NOMEM;
        }
        quant_act_free(a);
        a->q = q;
        a->d = d;
        a->s = s;
        a->bsum = bsum;
        a->cap = n;
    }
    a->kind = kind;
    a->B = B;
    a->K = K;
    return 0;
}

void quant_act_free(struct quant_act *a)
{
    free(a->q);
    free(a->d);
    free(a->s);
    free(a->bsum);
    memset(a, 0, sizeof *a);
}

/* 127 / max|x|, or 0 when the block is (nearly) zero: 127 / a tiny max would
 * overflow, and such a block contributes nothing anyway. */
static inline float act_inverse(float amax) { return amax > 0x1p-100f ? 127.0f / amax : 0.0f; }

static void act_block_scalar(const float *x, uint32_t bs, int8_t *q, float *d)
{
    float amax = 0;
    for (uint32_t i = 0; i < bs; i++)
        amax = fmaxf(amax, fabsf(x[i]));
    float id = act_inverse(amax);
    *d = amax / 127.0f;
    for (uint32_t i = 0; i < bs; i++)
        q[i] = (int8_t)lrintf(x[i] * id);
}

AVX2_TARGET static void act_block_avx2(const float *x, uint32_t bs, int8_t *q, float *d)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 mx = _mm256_setzero_ps();
    for (uint32_t i = 0; i < bs; i += 8)
        mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float amax = _mm_cvtss_f32(m4);
    __m256 id = _mm256_set1_ps(act_inverse(amax));
    *d = amax / 127.0f;
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (uint32_t i = 0; i < bs; i += 32) {
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), id));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), id));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 16), id));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 24), id));
        /* packs work within 128-bit halves: 0-3 8-11 4-7 12-15 and so on;
         * the permutation puts the 4-byte groups back in order. */
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        _mm256_storeu_si256((__m256i *)(q + i), _mm256_permutevar8x32_epi32(p, perm));
    }
}

int quant_act_quantize(struct quant_act *a, enum qact_kind kind, bool avx2, const float *x, size_t ldx, uint32_t B,
                       uint32_t K)
{
    int rc = quant_act_reserve(a, kind, B, K);
    if (rc)
        return rc;
    uint32_t bs = act_block(kind), nb = K / bs;
    for (uint32_t b = 0; b < B; b++) {
        const float *xr = x + (size_t)b * ldx;
        int8_t *q = a->q + (size_t)b * K;
        float *d = a->d + (size_t)b * nb;
        for (uint32_t i = 0; i < nb; i++) {
            if (avx2)
                act_block_avx2(xr + (size_t)i * bs, bs, q + (size_t)i * bs, d + i);
            else
                act_block_scalar(xr + (size_t)i * bs, bs, q + (size_t)i * bs, d + i);
        }
        /* Exact integer sums: the order does not matter. */
        if (kind == QACT_32) {
            for (uint32_t i = 0; i < nb; i++) {
                int sum = 0;
                for (int e = 0; e < 32; e++)
                    sum += q[32 * i + (uint32_t)e];
                a->s[(size_t)b * nb + i] = d[i] * (float)sum;
            }
        } else {
            int16_t *bsum = a->bsum + (size_t)b * (K / 16);
            for (uint32_t g = 0; g < K / 16; g++) {
                int sum = 0;
                for (int e = 0; e < 16; e++)
                    sum += q[16 * g + (uint32_t)e];
                bsum[g] = (int16_t)sum;
            }
        }
    }
    return 0;
}

/* ---- the integer kernels: scalar ----------------------------------------------------------------
 *
 * Lanes.  Within a block the weights are taken 32 at a time ("chunks", as
 * one AVX2 register of bytes); lane j of a chunk holds elements 4j..4j+3.
 * A block's lane j sums, over its chunks, scale * u * a of those elements
 * (u the unsigned weight code, a the activation, scale the group's integer
 * scale; q4_0 / q5_0 subtract their offset from u first).  q3_K and q6_K
 * subtract their offset afterwards through the activation sums: lane j
 * loses off * (sc[2j] * bsum[2j] + sc[2j+1] * bsum[2j+1]), and the K types
 * with mins keep M_j = mn[2j] * bsum[2j] + mn[2j+1] * bsum[2j+1].  Then, per
 * block and lane, acc_j = fmaf(d_w * d_x, L_j, acc_j) and, with mins,
 * acc_j = fmaf(-(dmin_w * d_x), M_j, acc_j).  q4_1 / q5_1 add
 * fmaf(m_w, s_x, macc) per block to a separate sum, added at the end.
 * q4_0 and q8_0 have four lanes (quant.h): the eight above, lane j + 4
 * added to lane j as integers before the float steps. */

static inline float reduce8(const float l[8])
{
    float a0 = l[0] + l[4], a1 = l[1] + l[5], a2 = l[2] + l[6], a3 = l[3] + l[7];
    float b0 = a0 + a2, b1 = a1 + a3;
    return b0 + b1;
}

/* The four lanes of q4_0 and q8_0 (quant.h): lane j of a block holds
 * elements 4j..4j+3 and 16+4j..16+4j+3; the result is (acc0 + acc2) +
 * (acc1 + acc3). */
static inline float reduce4(const float l[4]) { return (l[0] + l[2]) + (l[1] + l[3]); }

static float dot4_scalar(enum wtype t, const uint8_t *row, size_t step, const struct quant_act *a, uint32_t b)
{
    uint32_t K = a->K, nb = K / 32;
    const int8_t *aq = a->q + (size_t)b * K;
    const float *ad = a->d + (size_t)b * nb;
    float acc[4] = {0};
    for (uint32_t i = 0; i < nb; i++, aq += 32) {
        const uint8_t *blk = row + (size_t)i * step;
        int w[32];
        if (t == WT_Q8_0) {
            for (int e = 0; e < 32; e++)
                w[e] = (int8_t)blk[2 + e];
        } else {
            struct blk32 k;
            unpack32(t, blk, &k);
            for (int e = 0; e < 32; e++)
                w[e] = k.u[e] - k.off;
        }
        float D = half_at(blk) * ad[i];
        for (int j = 0; j < 4; j++) {
            int32_t L = 0;
            for (int e = 4 * j; e < 4 * j + 4; e++)
                L += w[e] * aq[e] + w[16 + e] * aq[16 + e];
            acc[j] = fmaf(D, (float)L, acc[j]);
        }
    }
    return reduce4(acc);
}

static float dot_row_scalar(enum wtype t, const uint8_t *row, size_t step, const struct quant_act *a, uint32_t b)
{
    if (t == WT_Q8_0 || t == WT_Q4_0)
        return dot4_scalar(t, row, step, a, b);
    uint32_t K = a->K, bs = quant_block(t), nb = K / bs;
    const int8_t *aq = a->q + (size_t)b * K;
    const float *ad = a->d + (size_t)b * nb;
    float acc[8] = {0}, macc = 0;
    bool min32 = false;
    for (uint32_t i = 0; i < nb; i++, aq += bs) {
        int32_t L[8] = {0}, M[8] = {0};
        if (bs == 32) {
            struct blk32 k;
            unpack32(t, row + (size_t)i * step, &k);
            for (int e = 0; e < 32; e++)
                L[(e % 32) / 4] += (k.u[e] - k.off) * aq[e];
            float D = k.d * ad[i];
            for (int j = 0; j < 8; j++)
                acc[j] = fmaf(D, (float)L[j], acc[j]);
            if ((min32 = k.has_min))
                macc = fmaf(k.m, a->s[(size_t)b * nb + i], macc);
        } else {
            struct blk256 k;
            unpack256(t, row + (size_t)i * step, &k);
            const int16_t *bsum = a->bsum + ((size_t)b * nb + i) * 16;
            for (int e = 0; e < QK_K; e++)
                L[(e % 32) / 4] += k.sc[e / 16] * k.u[e] * aq[e];
            for (int j = 0; j < 8; j++) {
                if (k.off)
                    L[j] -= k.off * (k.sc[2 * j] * bsum[2 * j] + k.sc[2 * j + 1] * bsum[2 * j + 1]);
                M[j] = k.mn[2 * j] * bsum[2 * j] + k.mn[2 * j + 1] * bsum[2 * j + 1];
            }
            float D = k.d * ad[i], Dm = k.dmin * ad[i];
            for (int j = 0; j < 8; j++) {
                acc[j] = fmaf(D, (float)L[j], acc[j]);
                if (k.has_min)
                    acc[j] = fmaf(-Dm, (float)M[j], acc[j]);
            }
        }
    }
    float y = reduce8(acc);
    return min32 ? y + macc : y;
}

/* ---- the integer kernels: AVX2 ---------------------------------------------------------------- */

/* reduce8() of the lanes, with shuffles. */
AVX2_TARGET static inline float hsum8(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 a = _mm_add_ps(lo, hi);
    __m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));
    __m128 c = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(c);
}

AVX2_TARGET static inline float half_avx2(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

#define ALWAYS_INLINE __attribute__((always_inline)) inline
#define MAXC 4 /* activation rows computed together */

/* 32 nibbles at qs (16 bytes) as bytes in element order: low nibbles are
 * elements 0-15, high nibbles 16-31. */
AVX2_TARGET static ALWAYS_INLINE __m256i nibbles32(const uint8_t *qs)
{
    /* the 16 bytes in both halves, the high half shifted down a nibble */
    __m256i t = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    return _mm256_and_si256(_mm256_srlv_epi64(t, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(15));
}

/* The 32 codes of a q4_0 ... q5_1 block in element order (the nibbles,
 * before their fifth bits and offsets). */
AVX2_TARGET static ALWAYS_INLINE __m256i codes32(const enum wtype t, const uint8_t *blk)
{
    return nibbles32(blk + (t == WT_Q4_0 ? 2 : t == WT_Q4_1 ? 4 : t == WT_Q5_0 ? 6 : 8));
}

/* Byte e is 0xff where bit e of the 32 bits at p is set. */
AVX2_TARGET static ALWAYS_INLINE __m256i bits32(const uint8_t *p)
{
    uint32_t h;
    memcpy(&h, p, 4);
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
                                          3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfeLL);
    __m256i v = _mm256_or_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)h), shuf), bit);
    return _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1));
}

/* q4_1, q5_0, q5_1: one weight row against C activation rows (q4_0 has
 * q8_rows()). */
AVX2_TARGET static ALWAYS_INLINE void rows32(const enum wtype t, const int C, const uint8_t *row, size_t step,
                                             const struct quant_act *a, uint32_t b0, float *y, size_t ldy,
                                             uint32_t n)
{
    const bool has_min = t == WT_Q4_1 || t == WT_Q5_1, is_signed = !has_min;
    uint32_t K = a->K, nb = K / 32;
    const int8_t *aq = a->q + (size_t)b0 * K;
    const float *ad = a->d + (size_t)b0 * nb, *as = a->s + (size_t)b0 * nb;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[MAXC];
    float macc[MAXC];
#pragma GCC unroll 4
    for (int c = 0; c < C; c++) {
        acc[c] = _mm256_setzero_ps();
        macc[c] = 0;
    }
    for (uint32_t i = 0; i < nb; i++) {
        const uint8_t *blk = row + (size_t)i * step;
        float dw = half_avx2(blk);
        __m256i w = codes32(t, blk);
        if (t == WT_Q5_0)
            w = _mm256_or_si256(w, _mm256_andnot_si256(bits32(blk + 2), _mm256_set1_epi8((char)0xf0)));
        else if (t == WT_Q5_1)
            w = _mm256_or_si256(w, _mm256_and_si256(bits32(blk + 4), _mm256_set1_epi8(0x10)));
        __m256i aw = is_signed ? _mm256_abs_epi8(w) : w;
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) {
            __m256i av = _mm256_loadu_si256((const __m256i *)(aq + (size_t)c * K + (size_t)i * 32));
            if (is_signed)
                av = _mm256_sign_epi8(av, w);
            __m256i L = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, av), ones);
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(dw * ad[(size_t)c * nb + i]), _mm256_cvtepi32_ps(L), acc[c]);
            if (has_min)
                macc[c] = fmaf(half_avx2(blk + 2), as[(size_t)c * nb + i], macc[c]);
        }
    }
#pragma GCC unroll 4
    for (int c = 0; c < C; c++) {
        float r = hsum8(acc[c]);
        y[(size_t)(b0 + (uint32_t)c) * ldy + n] = has_min ? r + macc[c] : r;
    }
}

/* The 6-bit scales of q4_K / q5_K (k4_scales) as bytes sc0-7, mn0-7 of a
 * register, with 32-bit word arithmetic instead of byte by byte. */
AVX2_TARGET static ALWAYS_INLINE __m128i k4_scales_vec(const uint8_t *s)
{
    uint32_t w[3];
    memcpy(w, s, 12);
    const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
    uint32_t sc_lo = w[0] & m6, mn_lo = w[1] & m6;
    uint32_t sc_hi = (w[2] & m4) | ((w[0] >> 6) & m2) << 4;
    uint32_t mn_hi = ((w[2] >> 4) & m4) | ((w[1] >> 6) & m2) << 4;
    return _mm_set_epi32((int)mn_hi, (int)mn_lo, (int)sc_hi, (int)sc_lo);
}

/* The sixteen q3_K scales (k3_scales, minus 32) as the bytes of a register. */
AVX2_TARGET static ALWAYS_INLINE __m128i k3_scales_vec(const uint8_t *s)
{
    uint32_t w[3];
    memcpy(w, s, 12);
    const uint32_t m4 = 0x0f0f0f0f, m2 = 0x03030303;
    uint32_t a0 = (w[0] & m4) | ((w[2] >> 0) & m2) << 4;
    uint32_t a1 = (w[1] & m4) | ((w[2] >> 2) & m2) << 4;
    uint32_t a2 = ((w[0] >> 4) & m4) | ((w[2] >> 4) & m2) << 4;
    uint32_t a3 = ((w[1] >> 4) & m4) | ((w[2] >> 6) & m2) << 4;
    return _mm_sub_epi8(_mm_set_epi32((int)a3, (int)a2, (int)a1, (int)a0), _mm_set1_epi8(32));
}

/* The shuffle that spreads the int16 scale of chunk k (of eight, one scale
 * per 32 weights) over all sixteen int16 lanes. */
AVX2_TARGET static ALWAYS_INLINE __m256i scale_ctl32(int k)
{
    return _mm256_set1_epi16((short)((2 * k + 1) << 8 | 2 * k));
}

/* For 16-weight groups: in a register holding scales 8s..8s+7 in both
 * halves, chunk q (of four) needs scale 2q in the low half and 2q+1 in the
 * high half. */
AVX2_TARGET static ALWAYS_INLINE __m256i scale_ctl16(int q)
{
    return _mm256_set_m128i(_mm_set1_epi16((short)((4 * q + 3) << 8 | (4 * q + 2))),
                            _mm_set1_epi16((short)((4 * q + 1) << 8 | 4 * q)));
}

/* u (32 unsigned codes) times the chunk's activations, scaled per int16
 * pair by sc, summed into eight int32 lanes. */
AVX2_TARGET static ALWAYS_INLINE __m256i chunk_dot(__m256i u, const int8_t *a, __m256i sc)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_loadu_si256((const __m256i *)a)), sc);
}

/* The K types: one weight row against C activation rows. */
AVX2_TARGET static ALWAYS_INLINE void rows256(const enum wtype t, const int C, const uint8_t *row, size_t step,
                                              const struct quant_act *a, uint32_t b0, float *y, size_t ldy,
                                              uint32_t n)
{
    uint32_t K = a->K, nb = K / QK_K;
    const int8_t *aq = a->q + (size_t)b0 * K;
    const float *ad = a->d + (size_t)b0 * nb;
    const int16_t *abs16 = a->bsum + (size_t)b0 * nb * 16;
    const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3);
    __m256 acc[MAXC];
#pragma GCC unroll 4
    for (int c = 0; c < C; c++)
        acc[c] = _mm256_setzero_ps();
    for (uint32_t i = 0; i < nb; i++) {
        const uint8_t *blk = row + (size_t)i * step;
        const int8_t *ai = aq + (size_t)i * QK_K;
        __m256i L[MAXC], sc16 = _mm256_setzero_si256(), mn16 = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int c = 0; c < C; c++)
            L[c] = _mm256_setzero_si256();
        float d, dmin = 0;
        if (t == WT_Q4_K || t == WT_Q5_K) {
            __m256i ms = _mm256_cvtepu8_epi16(k4_scales_vec(blk + 4)); /* sc0-7 | mn0-7 */
            __m256i scx = _mm256_permute4x64_epi64(ms, 0x44);
            __m128i m8 = _mm256_extracti128_si256(ms, 1);
            mn16 = _mm256_set_m128i(_mm_unpackhi_epi16(m8, m8), _mm_unpacklo_epi16(m8, m8));
            d = half_avx2(blk);
            dmin = half_avx2(blk + 2);
            const uint8_t *qs = blk + (t == WT_Q5_K ? 48 : 16);
            __m256i h = t == WT_Q5_K ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : _mm256_setzero_si256();
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
                __m256i u0 = _mm256_and_si256(q, m4), u1 = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                if (t == WT_Q5_K) {
                    /* bits 2j and 2j+1 of each qh byte, as 16 */
                    u0 = _mm256_or_si256(u0, _mm256_and_si256(_mm256_slli_epi16(h, 4), _mm256_set1_epi8(0x10)));
                    u1 = _mm256_or_si256(u1, _mm256_and_si256(_mm256_slli_epi16(h, 3), _mm256_set1_epi8(0x10)));
                    h = _mm256_srli_epi16(h, 2);
                }
                __m256i s0 = _mm256_shuffle_epi8(scx, scale_ctl32(2 * j));
                __m256i s1 = _mm256_shuffle_epi8(scx, scale_ctl32(2 * j + 1));
#pragma GCC unroll 4
                for (int c = 0; c < C; c++) {
                    const int8_t *ac = ai + (size_t)c * K + 64 * j;
                    L[c] = _mm256_add_epi32(L[c], chunk_dot(u0, ac, s0));
                    L[c] = _mm256_add_epi32(L[c], chunk_dot(u1, ac + 32, s1));
                }
            }
        } else {
            /* 16-weight groups: q2_K, q3_K, q6_K */
            if (t == WT_Q2_K) {
                __m128i sv = _mm_loadu_si128((const __m128i *)blk);
                sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(sv, _mm_set1_epi8(15)));
                mn16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sv, 4), _mm_set1_epi8(15)));
                d = half_avx2(blk + 80);
                dmin = half_avx2(blk + 82);
            } else if (t == WT_Q3_K) {
                sc16 = _mm256_cvtepi8_epi16(k3_scales_vec(blk + 96));
                d = half_avx2(blk + 108);
            } else {
                sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 192)));
                d = half_avx2(blk + 208);
            }
            __m256i hm = t == WT_Q3_K ? _mm256_loadu_si256((const __m256i *)blk) : _mm256_setzero_si256();
#pragma GCC unroll 2
            for (int n2 = 0; n2 < 2; n2++) {
                __m256i scx = _mm256_permute4x64_epi64(sc16, n2 ? 0xee : 0x44);
                __m256i u[4];
                if (t == WT_Q6_K) {
                    const uint8_t *ql = blk + 64 * n2;
                    __m256i qa = _mm256_loadu_si256((const __m256i *)ql);
                    __m256i qb = _mm256_loadu_si256((const __m256i *)(ql + 32));
                    __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * n2));
                    const __m256i m30 = _mm256_set1_epi8(0x30);
                    u[0] = _mm256_or_si256(_mm256_and_si256(qa, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
                    u[1] = _mm256_or_si256(_mm256_and_si256(qb, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
                    u[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qa, 4), m4), _mm256_and_si256(qh, m30));
                    u[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qb, 4), m4),
                                           _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
                } else {
                    __m256i q = _mm256_loadu_si256((const __m256i *)(blk + (t == WT_Q2_K ? 16 : 32) + 32 * n2));
                    u[0] = _mm256_and_si256(q, m3);
                    u[1] = _mm256_and_si256(_mm256_srli_epi16(q, 2), m3);
                    u[2] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m3);
                    u[3] = _mm256_and_si256(_mm256_srli_epi16(q, 6), m3);
                    if (t == WT_Q3_K) {
                        /* bit 4*n2 + jj of each hmask byte, as 4 */
                        const __m256i b2 = _mm256_set1_epi8(4);
                        u[0] = _mm256_or_si256(u[0], _mm256_and_si256(_mm256_slli_epi16(hm, 2), b2));
                        u[1] = _mm256_or_si256(u[1], _mm256_and_si256(_mm256_slli_epi16(hm, 1), b2));
                        u[2] = _mm256_or_si256(u[2], _mm256_and_si256(hm, b2));
                        u[3] = _mm256_or_si256(u[3], _mm256_and_si256(_mm256_srli_epi16(hm, 1), b2));
                        hm = _mm256_srli_epi16(hm, 4);
                    }
                }
#pragma GCC unroll 4
                for (int jj = 0; jj < 4; jj++) {
                    __m256i s = _mm256_shuffle_epi8(scx, scale_ctl16(jj));
#pragma GCC unroll 4
                    for (int c = 0; c < C; c++)
                        L[c] = _mm256_add_epi32(L[c], chunk_dot(u[jj], ai + (size_t)c * K + 128 * n2 + 32 * jj, s));
                }
            }
        }
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) {
            __m256i bsum = _mm256_loadu_si256((const __m256i *)(abs16 + ((size_t)c * nb + i) * 16));
            if (t == WT_Q3_K || t == WT_Q6_K) {
                __m256i O = _mm256_madd_epi16(sc16, bsum);
                L[c] = _mm256_sub_epi32(L[c], _mm256_slli_epi32(O, t == WT_Q6_K ? 5 : 2));
            }
            float dx = ad[(size_t)c * nb + i];
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(L[c]), acc[c]);
            if (t == WT_Q2_K || t == WT_Q4_K || t == WT_Q5_K)
                acc[c] = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * dx), _mm256_cvtepi32_ps(_mm256_madd_epi16(mn16, bsum)),
                                          acc[c]);
        }
    }
#pragma GCC unroll 4
    for (int c = 0; c < C; c++)
        y[(size_t)(b0 + (uint32_t)c) * ldy + n] = hsum8(acc[c]);
}

/* The signed codes of a q4_0 (nibble - 8) or q8_0 block in element order. */
AVX2_TARGET static ALWAYS_INLINE __m256i signed32(const enum wtype t, const uint8_t *blk)
{
    if (t == WT_Q8_0)
        return _mm256_loadu_si256((const __m256i *)(blk + 2));
    return _mm256_sub_epi8(codes32(t, blk), _mm256_set1_epi8(8));
}

/* q4_0, q8_0: one weight row against C activation rows.  |w| times a
 * negated where w < 0 (-128 is 128 as maddubs reads |w|; a pair's 2 x 128 x
 * 127 = 32512 does not saturate its int16) gives eight lanes of elements
 * 4k..4k+3; the two halves added are the four lanes of quant.h. */
AVX2_TARGET static ALWAYS_INLINE void q8_rows(const enum wtype t, const int C, const uint8_t *row, size_t step,
                                              const struct quant_act *a, uint32_t b0, float *y, size_t ldy,
                                              uint32_t n)
{
    uint32_t K = a->K, nb = K / 32;
    const int8_t *aq = a->q + (size_t)b0 * K;
    const float *ad = a->d + (size_t)b0 * nb;
    const __m256i ones = _mm256_set1_epi16(1);
    __m128 acc[MAXC];
#pragma GCC unroll 4
    for (int c = 0; c < C; c++)
        acc[c] = _mm_setzero_ps();
    for (uint32_t i = 0; i < nb; i++) {
        const uint8_t *blk = row + (size_t)i * step;
        float dw = half_avx2(blk);
        __m256i w = signed32(t, blk), aw = _mm256_abs_epi8(w);
#pragma GCC unroll 4
        for (int c = 0; c < C; c++) {
            __m256i av = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(aq + (size_t)c * K + (size_t)i * 32)), w);
            __m256i L8 = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, av), ones);
            __m128i L = _mm_add_epi32(_mm256_castsi256_si128(L8), _mm256_extracti128_si256(L8, 1));
            acc[c] = _mm_fmadd_ps(_mm_set1_ps(dw * ad[(size_t)c * nb + i]), _mm_cvtepi32_ps(L), acc[c]);
        }
    }
#pragma GCC unroll 4
    for (int c = 0; c < C; c++) {
        float l[4];
        _mm_storeu_ps(l, acc[c]);
        y[(size_t)(b0 + (uint32_t)c) * ldy + n] = reduce4(l);
    }
}

typedef void (*rows_fn)(const uint8_t *row, size_t bs, const struct quant_act *a, uint32_t b0, float *y, size_t ldy,
                        uint32_t n);

#define ROWS_FNS(NAME, BODY, T)                                                                              \
    AVX2_TARGET __attribute__((noinline)) static void NAME##_1(const uint8_t *row, size_t bs, const struct quant_act *a, \
                                                               uint32_t b0, float *y, size_t ldy, uint32_t n) \
    {                                                                                                        \
        BODY(T, 1, row, bs, a, b0, y, ldy, n);                                                                   \
    }                                                                                                        \
    AVX2_TARGET __attribute__((noinline)) static void NAME##_2(const uint8_t *row, size_t bs, const struct quant_act *a, \
                                                               uint32_t b0, float *y, size_t ldy, uint32_t n) \
    {                                                                                                        \
        BODY(T, 2, row, bs, a, b0, y, ldy, n);                                                                   \
    }                                                                                                        \
    AVX2_TARGET __attribute__((noinline)) static void NAME##_3(const uint8_t *row, size_t bs, const struct quant_act *a, \
                                                               uint32_t b0, float *y, size_t ldy, uint32_t n) \
    {                                                                                                        \
        BODY(T, 3, row, bs, a, b0, y, ldy, n);                                                                   \
    }                                                                                                        \
    AVX2_TARGET __attribute__((noinline)) static void NAME##_4(const uint8_t *row, size_t bs, const struct quant_act *a, \
                                                               uint32_t b0, float *y, size_t ldy, uint32_t n) \
    {                                                                                                        \
        BODY(T, 4, row, bs, a, b0, y, ldy, n);                                                                   \
    }                                                                                                        \
    static const rows_fn NAME##_fns[MAXC + 1] = {NULL, NAME##_1, NAME##_2, NAME##_3, NAME##_4};

ROWS_FNS(q4_0, q8_rows, WT_Q4_0)
ROWS_FNS(q4_1, rows32, WT_Q4_1)
ROWS_FNS(q5_0, rows32, WT_Q5_0)
ROWS_FNS(q5_1, rows32, WT_Q5_1)
ROWS_FNS(q8_0, q8_rows, WT_Q8_0)
ROWS_FNS(q2_k, rows256, WT_Q2_K)
ROWS_FNS(q3_k, rows256, WT_Q3_K)
ROWS_FNS(q4_k, rows256, WT_Q4_K)
ROWS_FNS(q5_k, rows256, WT_Q5_K)
ROWS_FNS(q6_k, rows256, WT_Q6_K)

static const rows_fn *avx2_fns(enum wtype t)
{
    switch (t) {
    case WT_Q4_0: return q4_0_fns;
    case WT_Q4_1: return q4_1_fns;
    case WT_Q5_0: return q5_0_fns;
    case WT_Q5_1: return q5_1_fns;
    case WT_Q8_0: return q8_0_fns;
    case WT_Q2_K: return q2_k_fns;
    case WT_Q3_K: return q3_k_fns;
    case WT_Q4_K: return q4_k_fns;
    case WT_Q5_K: return q5_k_fns;
    case WT_Q6_K: return q6_k_fns;
    default: return NULL;
    }
}

/* ---- the integer kernels: AVX-512 ----------------------------------------------------------------
 *
 * Two activation rows in one 512-bit register: row b in the low half, b+1 in
 * the high half, the weights' codes and scales the same in both.  Every
 * 32-bit lane then does exactly what the AVX2 kernel's lane does for its row
 * (the integer sums are exact, the float steps the same operations in the
 * same order), so the results are the AVX2 kernels' bits; only the number
 * of instructions halves, on cores whose 512-bit units are full width.
 * VNNI's dot products replace AVX2's maddubs + madd (no pair sum of
 * |w| <= 128 times |a| <= 127 saturates an int16: 32512) and madd + add (the
 * K types), with the same integer results. */

#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")))
#define MAXP 4 /* pairs of activation rows computed together */

AVX512_TARGET static ALWAYS_INLINE __m512i pair_load(const void *lo, const void *hi)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)lo)),
                              _mm256_loadu_si256((const __m256i *)hi), 1);
}

AVX512_TARGET static ALWAYS_INLINE __m512 pair_set(float lo, float hi)
{
    return _mm512_insertf32x8(_mm512_set1_ps(lo), _mm256_set1_ps(hi), 1);
}

AVX512_TARGET static ALWAYS_INLINE __m512i dup256(__m256i v) { return _mm512_broadcast_i64x4(v); }

AVX512_TARGET static ALWAYS_INLINE void store_pair(__m512 acc, float *y0, float *y1)
{
    *y0 = hsum8(_mm512_castps512_ps256(acc));
    *y1 = hsum8(_mm512_extractf32x8_ps(acc, 1));
}

/* rows32() for 2P activation rows. */
AVX512_TARGET static ALWAYS_INLINE void rows32_x2(const enum wtype t, const int P, const uint8_t *row, size_t step,
                                                  const struct quant_act *a, const float *dT, uint32_t b0, float *y,
                                                  size_t ldy, uint32_t n)
{
    const bool has_min = t == WT_Q4_1 || t == WT_Q5_1, is_signed = !has_min;
    uint32_t K = a->K, nb = K / 32;
    const int8_t *aq = a->q + (size_t)b0 * K;
    const float *as = a->s + (size_t)b0 * nb;
    const __m512i zero = _mm512_setzero_si512();
    __m512 acc[MAXP];
    float macc[2 * MAXP];
#pragma GCC unroll 4
    for (int p = 0; p < P; p++) {
        acc[p] = _mm512_setzero_ps();
        macc[2 * p] = macc[2 * p + 1] = 0;
    }
    for (uint32_t i = 0; i < nb; i++) {
        const uint8_t *blk = row + (size_t)i * step;
        float dw = half_avx2(blk);
        __m256i w = codes32(t, blk);
        if (t == WT_Q5_0)
            w = _mm256_or_si256(w, _mm256_andnot_si256(bits32(blk + 2), _mm256_set1_epi8((char)0xf0)));
        else if (t == WT_Q5_1)
            w = _mm256_or_si256(w, _mm256_and_si256(bits32(blk + 4), _mm256_set1_epi8(0x10)));
        __m512i aw = dup256(is_signed ? _mm256_abs_epi8(w) : w);
        /* AVX2's sign(a, w): a negated where w < 0 (where w == 0 its |w| is
         * 0, so the product is 0 either way) */
        __mmask64 neg = is_signed ? _mm512_movepi8_mask(dup256(w)) : 0;
        __m512 dwv = _mm512_set1_ps(dw);
        __m512 dx8 = _mm512_castps256_ps512(_mm256_loadu_ps(dT + (size_t)i * 8));
#pragma GCC unroll 4
        for (int p = 0; p < P; p++) {
            const int8_t *a0 = aq + (size_t)(2 * p) * K + (size_t)i * 32;
            __m512i av = pair_load(a0, a0 + K);
            if (is_signed)
                av = _mm512_mask_sub_epi8(av, neg, zero, av);
            __m512i L = _mm512_dpbusd_epi32(zero, aw, av); /* no int16 step: maddubs never saturates here */
            /* [dx of row 2p] x 8, [dx of row 2p+1] x 8, from the tile's eight */
            __m512i idx = _mm512_inserti64x4(_mm512_set1_epi32(2 * p), _mm256_set1_epi32(2 * p + 1), 1);
            __m512 D = _mm512_mul_ps(dwv, _mm512_permutexvar_ps(idx, dx8));
            acc[p] = _mm512_fmadd_ps(D, _mm512_cvtepi32_ps(L), acc[p]);
            if (has_min) {
                float m = half_avx2(blk + 2);
                macc[2 * p] = fmaf(m, as[(size_t)(2 * p) * nb + i], macc[2 * p]);
                macc[2 * p + 1] = fmaf(m, as[(size_t)(2 * p + 1) * nb + i], macc[2 * p + 1]);
            }
        }
    }
#pragma GCC unroll 4
    for (int p = 0; p < P; p++) {
        float *y0 = y + (size_t)(b0 + 2 * (uint32_t)p) * ldy + n, *y1 = y0 + ldy;
        store_pair(acc[p], y0, y1);
        if (has_min) {
            *y0 += macc[2 * p];
            *y1 += macc[2 * p + 1];
        }
    }
}

/* rows256() for 2P activation rows. */
AVX512_TARGET static ALWAYS_INLINE void rows256_x2(const enum wtype t, const int P, const uint8_t *row, size_t step,
                                                   const struct quant_act *a, const float *dT, uint32_t b0, float *y,
                                                   size_t ldy, uint32_t n)
{
    (void)dT; /* one scale per 256 weights: read in place */
    uint32_t K = a->K, nb = K / QK_K;
    const int8_t *aq = a->q + (size_t)b0 * K;
    const float *ad = a->d + (size_t)b0 * nb;
    const int16_t *abs16 = a->bsum + (size_t)b0 * nb * 16;
    const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3);
    __m512 acc[MAXP];
#pragma GCC unroll 4
    for (int p = 0; p < P; p++)
        acc[p] = _mm512_setzero_ps();
    for (uint32_t i = 0; i < nb; i++) {
        const uint8_t *blk = row + (size_t)i * step;
        const int8_t *ai = aq + (size_t)i * QK_K;
        __m512i L[MAXP];
        __m256i sc16 = _mm256_setzero_si256(), mn16 = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int p = 0; p < P; p++)
            L[p] = _mm512_setzero_si512();
        float d, dmin = 0;
        if (t == WT_Q4_K || t == WT_Q5_K) {
            __m256i ms = _mm256_cvtepu8_epi16(k4_scales_vec(blk + 4));
            __m256i scx = _mm256_permute4x64_epi64(ms, 0x44);
            __m128i m8 = _mm256_extracti128_si256(ms, 1);
            mn16 = _mm256_set_m128i(_mm_unpackhi_epi16(m8, m8), _mm_unpacklo_epi16(m8, m8));
            d = half_avx2(blk);
            dmin = half_avx2(blk + 2);
            const uint8_t *qs = blk + (t == WT_Q5_K ? 48 : 16);
            __m256i h = t == WT_Q5_K ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : _mm256_setzero_si256();
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
                __m256i u0 = _mm256_and_si256(q, m4), u1 = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                if (t == WT_Q5_K) {
                    u0 = _mm256_or_si256(u0, _mm256_and_si256(_mm256_slli_epi16(h, 4), _mm256_set1_epi8(0x10)));
                    u1 = _mm256_or_si256(u1, _mm256_and_si256(_mm256_slli_epi16(h, 3), _mm256_set1_epi8(0x10)));
                    h = _mm256_srli_epi16(h, 2);
                }
                __m512i U0 = dup256(u0), U1 = dup256(u1);
                __m512i S0 = dup256(_mm256_shuffle_epi8(scx, scale_ctl32(2 * j)));
                __m512i S1 = dup256(_mm256_shuffle_epi8(scx, scale_ctl32(2 * j + 1)));
#pragma GCC unroll 4
                for (int p = 0; p < P; p++) {
                    const int8_t *ac = ai + (size_t)(2 * p) * K + 64 * j;
                    L[p] = _mm512_dpwssd_epi32(L[p], _mm512_maddubs_epi16(U0, pair_load(ac, ac + K)), S0);
                    L[p] = _mm512_dpwssd_epi32(L[p], _mm512_maddubs_epi16(U1, pair_load(ac + 32, ac + K + 32)), S1);
                }
            }
        } else {
            if (t == WT_Q2_K) {
                __m128i sv = _mm_loadu_si128((const __m128i *)blk);
                sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(sv, _mm_set1_epi8(15)));
                mn16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sv, 4), _mm_set1_epi8(15)));
                d = half_avx2(blk + 80);
                dmin = half_avx2(blk + 82);
            } else if (t == WT_Q3_K) {
                sc16 = _mm256_cvtepi8_epi16(k3_scales_vec(blk + 96));
                d = half_avx2(blk + 108);
            } else {
                sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 192)));
                d = half_avx2(blk + 208);
            }
            __m256i hm = t == WT_Q3_K ? _mm256_loadu_si256((const __m256i *)blk) : _mm256_setzero_si256();
#pragma GCC unroll 2
            for (int n2 = 0; n2 < 2; n2++) {
                __m256i scx = _mm256_permute4x64_epi64(sc16, n2 ? 0xee : 0x44);
                __m256i u[4];
                if (t == WT_Q6_K) {
                    const uint8_t *ql = blk + 64 * n2;
                    __m256i qa = _mm256_loadu_si256((const __m256i *)ql);
                    __m256i qb = _mm256_loadu_si256((const __m256i *)(ql + 32));
                    __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * n2));
                    const __m256i m30 = _mm256_set1_epi8(0x30);
                    u[0] = _mm256_or_si256(_mm256_and_si256(qa, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
                    u[1] = _mm256_or_si256(_mm256_and_si256(qb, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
                    u[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qa, 4), m4), _mm256_and_si256(qh, m30));
                    u[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qb, 4), m4),
                                           _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
                } else {
                    __m256i q = _mm256_loadu_si256((const __m256i *)(blk + (t == WT_Q2_K ? 16 : 32) + 32 * n2));
                    u[0] = _mm256_and_si256(q, m3);
                    u[1] = _mm256_and_si256(_mm256_srli_epi16(q, 2), m3);
                    u[2] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m3);
                    u[3] = _mm256_and_si256(_mm256_srli_epi16(q, 6), m3);
                    if (t == WT_Q3_K) {
                        const __m256i b2 = _mm256_set1_epi8(4);
                        u[0] = _mm256_or_si256(u[0], _mm256_and_si256(_mm256_slli_epi16(hm, 2), b2));
                        u[1] = _mm256_or_si256(u[1], _mm256_and_si256(_mm256_slli_epi16(hm, 1), b2));
                        u[2] = _mm256_or_si256(u[2], _mm256_and_si256(hm, b2));
                        u[3] = _mm256_or_si256(u[3], _mm256_and_si256(_mm256_srli_epi16(hm, 1), b2));
                        hm = _mm256_srli_epi16(hm, 4);
                    }
                }
#pragma GCC unroll 4
                for (int jj = 0; jj < 4; jj++) {
                    __m512i U = dup256(u[jj]), S = dup256(_mm256_shuffle_epi8(scx, scale_ctl16(jj)));
#pragma GCC unroll 4
                    for (int p = 0; p < P; p++) {
                        const int8_t *ac = ai + (size_t)(2 * p) * K + 128 * n2 + 32 * jj;
                        L[p] = _mm512_dpwssd_epi32(L[p], _mm512_maddubs_epi16(U, pair_load(ac, ac + K)), S);
                    }
                }
            }
        }
        __m512i SC = dup256(sc16), MN = dup256(mn16);
        __m512 dv = _mm512_set1_ps(d), dmv = _mm512_set1_ps(dmin);
#pragma GCC unroll 4
        for (int p = 0; p < P; p++) {
            size_t r0 = (size_t)(2 * p), r1 = r0 + 1;
            __m512i bsum = pair_load(abs16 + (r0 * nb + i) * 16, abs16 + (r1 * nb + i) * 16);
            if (t == WT_Q3_K || t == WT_Q6_K) {
                __m512i O = _mm512_madd_epi16(SC, bsum);
                L[p] = _mm512_sub_epi32(L[p], _mm512_slli_epi32(O, t == WT_Q6_K ? 5 : 2));
            }
            __m512 dx = pair_set(ad[r0 * nb + i], ad[r1 * nb + i]);
            acc[p] = _mm512_fmadd_ps(_mm512_mul_ps(dv, dx), _mm512_cvtepi32_ps(L[p]), acc[p]);
            if (t == WT_Q2_K || t == WT_Q4_K || t == WT_Q5_K)
                acc[p] = _mm512_fnmadd_ps(_mm512_mul_ps(dmv, dx), _mm512_cvtepi32_ps(_mm512_madd_epi16(MN, bsum)),
                                          acc[p]);
        }
    }
#pragma GCC unroll 4
    for (int p = 0; p < P; p++) {
        float *y0 = y + (size_t)(b0 + 2 * (uint32_t)p) * ldy + n;
        store_pair(acc[p], y0, y0 + ldy);
    }
}

/* q8_rows() for 2P activation rows: the eight lanes of each row folded
 * to four (the 128-bit halves of its 256 added, the sum in both), each
 * lane then doing q8_rows()'s float steps. */
AVX512_TARGET static ALWAYS_INLINE void q8_rows_x2(const enum wtype t, const int P, const uint8_t *row, size_t step,
                                                   const struct quant_act *a, const float *dT, uint32_t b0, float *y,
                                                   size_t ldy, uint32_t n)
{
    uint32_t K = a->K, nb = K / 32;
    const int8_t *aq = a->q + (size_t)b0 * K;
    const __m512i zero = _mm512_setzero_si512();
    __m512 acc[MAXP];
#pragma GCC unroll 4
    for (int p = 0; p < P; p++)
        acc[p] = _mm512_setzero_ps();
    for (uint32_t i = 0; i < nb; i++) {
        const uint8_t *blk = row + (size_t)i * step;
        __m512i w = dup256(signed32(t, blk)), aw = _mm512_abs_epi8(w);
        __mmask64 neg = _mm512_movepi8_mask(w);
        __m512 dwv = _mm512_set1_ps(half_avx2(blk));
        __m512 dx8 = _mm512_castps256_ps512(_mm256_loadu_ps(dT + (size_t)i * 8));
#pragma GCC unroll 4
        for (int p = 0; p < P; p++) {
            const int8_t *a0 = aq + (size_t)(2 * p) * K + (size_t)i * 32;
            __m512i av = pair_load(a0, a0 + K);
            av = _mm512_mask_sub_epi8(av, neg, zero, av);
            __m512i L = _mm512_dpbusd_epi32(zero, aw, av);
            L = _mm512_add_epi32(L, _mm512_shuffle_i32x4(L, L, _MM_SHUFFLE(2, 3, 0, 1)));
            __m512i idx = _mm512_inserti64x4(_mm512_set1_epi32(2 * p), _mm256_set1_epi32(2 * p + 1), 1);
            __m512 D = _mm512_mul_ps(dwv, _mm512_permutexvar_ps(idx, dx8));
            acc[p] = _mm512_fmadd_ps(D, _mm512_cvtepi32_ps(L), acc[p]);
        }
    }
#pragma GCC unroll 4
    for (int p = 0; p < P; p++) {
        float l[16];
        _mm512_storeu_ps(l, acc[p]);
        float *y0 = y + (size_t)(b0 + 2 * (uint32_t)p) * ldy + n;
        y0[0] = reduce4(l);
        y0[ldy] = reduce4(l + 8);
    }
}

/* dT: for 32-weight blocks, the scales of the tile's activation rows,
 * block-major (eight a block: row b0 + r at [i * 8 + r]). */
typedef void (*rows2_fn)(const uint8_t *row, size_t bs, const struct quant_act *a, const float *dT, uint32_t b0, float *y,
                         size_t ldy, uint32_t n);

#define ROWS2_FN(NAME, BODY, T, P)                                                                          \
    AVX512_TARGET __attribute__((noinline)) static void NAME##_x2_##P(const uint8_t *row, size_t bs,       \
                                                                      const struct quant_act *a,            \
                                                                      const float *dT, uint32_t b0, float *y, \
                                                                      size_t ldy, uint32_t n)               \
    {                                                                                                       \
        BODY(T, P, row, bs, a, dT, b0, y, ldy, n);                                                              \
    }
#define ROWS2_FNS(NAME, BODY, T)                                                                            \
    ROWS2_FN(NAME, BODY, T, 1)                                                                              \
    ROWS2_FN(NAME, BODY, T, 2)                                                                              \
    ROWS2_FN(NAME, BODY, T, 4)                                                                              \
    static const rows2_fn NAME##_x2_fns[3] = {NAME##_x2_1, NAME##_x2_2, NAME##_x2_4};

ROWS2_FNS(q4_0, q8_rows_x2, WT_Q4_0)
ROWS2_FNS(q4_1, rows32_x2, WT_Q4_1)
ROWS2_FNS(q5_0, rows32_x2, WT_Q5_0)
ROWS2_FNS(q5_1, rows32_x2, WT_Q5_1)
ROWS2_FNS(q8_0, q8_rows_x2, WT_Q8_0)
ROWS2_FNS(q2_k, rows256_x2, WT_Q2_K)
ROWS2_FNS(q3_k, rows256_x2, WT_Q3_K)
ROWS2_FNS(q4_k, rows256_x2, WT_Q4_K)
ROWS2_FNS(q5_k, rows256_x2, WT_Q5_K)
ROWS2_FNS(q6_k, rows256_x2, WT_Q6_K)

/* 2, 4 and 8 activation rows at once */
static const rows2_fn *avx512_fns(enum wtype t)
{
    switch (t) {
    case WT_Q4_0: return q4_0_x2_fns;
    case WT_Q4_1: return q4_1_x2_fns;
    case WT_Q5_0: return q5_0_x2_fns;
    case WT_Q5_1: return q5_1_x2_fns;
    case WT_Q8_0: return q8_0_x2_fns;
    case WT_Q2_K: return q2_k_x2_fns;
    case WT_Q3_K: return q3_k_x2_fns;
    case WT_Q4_K: return q4_k_x2_fns;
    case WT_Q5_K: return q5_k_x2_fns;
    case WT_Q6_K: return q6_k_x2_fns;
    default: return NULL;
    }
}

/* Decode: one activation row against two weight rows, row n in the low half
 * of a register and n+1 in the high half, the activations in both.  As with
 * the pairs of activation rows, each lane does the AVX2 lane's work.  The
 * pair's blocks alternate in memory (quant.h), so the two rows are one
 * sequential stream: as two streams a row long each, the hardware
 * prefetcher lost them at every pair and a matrix streamed from memory at
 * half the speed. */

AVX512_TARGET static ALWAYS_INLINE __m512i join256(__m256i lo, __m256i hi)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

AVX512_TARGET static ALWAYS_INLINE __m512i bcast_act(const int8_t *a)
{
    return _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)a));
}

/* rows32() of rows n, n+1 (row_bytes apart) against activation row b. */
AVX512_TARGET static ALWAYS_INLINE void rows32_w2(const enum wtype t, const uint8_t *row0, size_t row_bytes,
                                                  const struct quant_act *a, uint32_t b, float *y, size_t ldy,
                                                  uint32_t n)
{
    (void)row_bytes;
    const uint32_t bb = t == WT_Q4_0 ? 18 : t == WT_Q4_1 ? 20 : t == WT_Q5_0 ? 22 : 24;
    const bool has_min = t == WT_Q4_1 || t == WT_Q5_1, is_signed = !has_min;
    uint32_t K = a->K, nb = K / 32;
    const int8_t *aq = a->q + (size_t)b * K;
    const float *ad = a->d + (size_t)b * nb, *as = a->s + (size_t)b * nb;
    const __m512i zero = _mm512_setzero_si512();
    __m512 acc = _mm512_setzero_ps();
    float macc0 = 0, macc1 = 0;
    for (uint32_t i = 0; i < nb; i++) {
        const uint8_t *k0 = row0 + (size_t)i * 2 * bb, *k1 = k0 + bb;
        __m256i w0 = codes32(t, k0), w1 = codes32(t, k1);
        if (t == WT_Q5_0) {
            w0 = _mm256_or_si256(w0, _mm256_andnot_si256(bits32(k0 + 2), _mm256_set1_epi8((char)0xf0)));
            w1 = _mm256_or_si256(w1, _mm256_andnot_si256(bits32(k1 + 2), _mm256_set1_epi8((char)0xf0)));
        } else if (t == WT_Q5_1) {
            w0 = _mm256_or_si256(w0, _mm256_and_si256(bits32(k0 + 4), _mm256_set1_epi8(0x10)));
            w1 = _mm256_or_si256(w1, _mm256_and_si256(bits32(k1 + 4), _mm256_set1_epi8(0x10)));
        }
        __m512i w = join256(w0, w1);
        __m512i av = bcast_act(aq + (size_t)i * 32), aw = w;
        if (is_signed) {
            aw = _mm512_abs_epi8(w);
            av = _mm512_mask_sub_epi8(av, _mm512_movepi8_mask(w), zero, av);
        }
        __m512i L = _mm512_dpbusd_epi32(zero, aw, av); /* no int16 step: maddubs never saturates here */
        __m512 D = _mm512_mul_ps(pair_set(half_avx2(k0), half_avx2(k1)), _mm512_set1_ps(ad[i]));
        acc = _mm512_fmadd_ps(D, _mm512_cvtepi32_ps(L), acc);
        if (has_min) {
            macc0 = fmaf(half_avx2(k0 + 2), as[i], macc0);
            macc1 = fmaf(half_avx2(k1 + 2), as[i], macc1);
        }
    }
    float *y0 = y + (size_t)b * ldy + n;
    store_pair(acc, y0, y0 + 1);
    if (has_min) {
        y0[0] += macc0;
        y0[1] += macc1;
    }
}

/* rows256() of rows n, n+1 (row_bytes apart) against activation row b. */
AVX512_TARGET static ALWAYS_INLINE void rows256_w2(const enum wtype t, const uint8_t *row0, size_t row_bytes,
                                                   const struct quant_act *a, uint32_t b, float *y, size_t ldy,
                                                   uint32_t n)
{
    (void)row_bytes;
    const uint32_t bb = t == WT_Q2_K ? 84 : t == WT_Q3_K ? 110 : t == WT_Q4_K ? 144 : t == WT_Q5_K ? 176 : 210;
    uint32_t K = a->K, nb = K / QK_K;
    const int8_t *aq = a->q + (size_t)b * K;
    const float *ad = a->d + (size_t)b * nb;
    const int16_t *abs16 = a->bsum + (size_t)b * nb * 16;
    const __m512i m4 = _mm512_set1_epi8(15), m3 = _mm512_set1_epi8(3);
    __m512 acc = _mm512_setzero_ps();
    for (uint32_t i = 0; i < nb; i++) {
        const uint8_t *k0 = row0 + (size_t)i * 2 * bb, *k1 = k0 + bb;
        const int8_t *ai = aq + (size_t)i * QK_K;
        __m512i L = _mm512_setzero_si512(), SC = _mm512_setzero_si512(), MN = _mm512_setzero_si512();
        __m512 d, dmin = _mm512_setzero_ps();
        if (t == WT_Q4_K || t == WT_Q5_K) {
            __m256i ms0 = _mm256_cvtepu8_epi16(k4_scales_vec(k0 + 4));
            __m256i ms1 = _mm256_cvtepu8_epi16(k4_scales_vec(k1 + 4));
            __m512i scx = join256(_mm256_permute4x64_epi64(ms0, 0x44), _mm256_permute4x64_epi64(ms1, 0x44));
            __m128i m80 = _mm256_extracti128_si256(ms0, 1), m81 = _mm256_extracti128_si256(ms1, 1);
            MN = join256(_mm256_set_m128i(_mm_unpackhi_epi16(m80, m80), _mm_unpacklo_epi16(m80, m80)),
                         _mm256_set_m128i(_mm_unpackhi_epi16(m81, m81), _mm_unpacklo_epi16(m81, m81)));
            d = pair_set(half_avx2(k0), half_avx2(k1));
            dmin = pair_set(half_avx2(k0 + 2), half_avx2(k1 + 2));
            uint32_t qo = t == WT_Q5_K ? 48 : 16;
            __m512i h = t == WT_Q5_K ? pair_load(k0 + 16, k1 + 16) : _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                __m512i q = pair_load(k0 + qo + 32 * j, k1 + qo + 32 * j);
                __m512i u0 = _mm512_and_si512(q, m4), u1 = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
                if (t == WT_Q5_K) {
                    u0 = _mm512_or_si512(u0, _mm512_and_si512(_mm512_slli_epi16(h, 4), _mm512_set1_epi8(0x10)));
                    u1 = _mm512_or_si512(u1, _mm512_and_si512(_mm512_slli_epi16(h, 3), _mm512_set1_epi8(0x10)));
                    h = _mm512_srli_epi16(h, 2);
                }
                __m512i s0 = _mm512_shuffle_epi8(scx, dup256(scale_ctl32(2 * j)));
                __m512i s1 = _mm512_shuffle_epi8(scx, dup256(scale_ctl32(2 * j + 1)));
                L = _mm512_dpwssd_epi32(L, _mm512_maddubs_epi16(u0, bcast_act(ai + 64 * j)), s0);
                L = _mm512_dpwssd_epi32(L, _mm512_maddubs_epi16(u1, bcast_act(ai + 64 * j + 32)), s1);
            }
        } else {
            if (t == WT_Q2_K) {
                __m128i sv0 = _mm_loadu_si128((const __m128i *)k0), sv1 = _mm_loadu_si128((const __m128i *)k1);
                const __m128i l4 = _mm_set1_epi8(15);
                SC = join256(_mm256_cvtepu8_epi16(_mm_and_si128(sv0, l4)),
                             _mm256_cvtepu8_epi16(_mm_and_si128(sv1, l4)));
                MN = join256(_mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sv0, 4), l4)),
                             _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sv1, 4), l4)));
                d = pair_set(half_avx2(k0 + 80), half_avx2(k1 + 80));
                dmin = pair_set(half_avx2(k0 + 82), half_avx2(k1 + 82));
            } else if (t == WT_Q3_K) {
                SC = join256(_mm256_cvtepi8_epi16(k3_scales_vec(k0 + 96)),
                             _mm256_cvtepi8_epi16(k3_scales_vec(k1 + 96)));
                d = pair_set(half_avx2(k0 + 108), half_avx2(k1 + 108));
            } else {
                SC = join256(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(k0 + 192))),
                             _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(k1 + 192))));
                d = pair_set(half_avx2(k0 + 208), half_avx2(k1 + 208));
            }
            __m512i hm = t == WT_Q3_K ? pair_load(k0, k1) : _mm512_setzero_si512();
#pragma GCC unroll 2
            for (int n2 = 0; n2 < 2; n2++) {
                __m512i scx = _mm512_permutexvar_epi64(n2 ? _mm512_setr_epi64(2, 3, 2, 3, 6, 7, 6, 7)
                                                          : _mm512_setr_epi64(0, 1, 0, 1, 4, 5, 4, 5),
                                                       SC);
                __m512i u[4];
                if (t == WT_Q6_K) {
                    __m512i qa = pair_load(k0 + 64 * n2, k1 + 64 * n2);
                    __m512i qb = pair_load(k0 + 64 * n2 + 32, k1 + 64 * n2 + 32);
                    __m512i qh = pair_load(k0 + 128 + 32 * n2, k1 + 128 + 32 * n2);
                    const __m512i m30 = _mm512_set1_epi8(0x30);
                    u[0] = _mm512_or_si512(_mm512_and_si512(qa, m4), _mm512_and_si512(_mm512_slli_epi16(qh, 4), m30));
                    u[1] = _mm512_or_si512(_mm512_and_si512(qb, m4), _mm512_and_si512(_mm512_slli_epi16(qh, 2), m30));
                    u[2] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(qa, 4), m4), _mm512_and_si512(qh, m30));
                    u[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(qb, 4), m4),
                                           _mm512_and_si512(_mm512_srli_epi16(qh, 2), m30));
                } else {
                    uint32_t qo = (t == WT_Q2_K ? 16 : 32) + 32 * (uint32_t)n2;
                    __m512i q = pair_load(k0 + qo, k1 + qo);
                    u[0] = _mm512_and_si512(q, m3);
                    u[1] = _mm512_and_si512(_mm512_srli_epi16(q, 2), m3);
                    u[2] = _mm512_and_si512(_mm512_srli_epi16(q, 4), m3);
                    u[3] = _mm512_and_si512(_mm512_srli_epi16(q, 6), m3);
                    if (t == WT_Q3_K) {
                        const __m512i b2 = _mm512_set1_epi8(4);
                        u[0] = _mm512_or_si512(u[0], _mm512_and_si512(_mm512_slli_epi16(hm, 2), b2));
                        u[1] = _mm512_or_si512(u[1], _mm512_and_si512(_mm512_slli_epi16(hm, 1), b2));
                        u[2] = _mm512_or_si512(u[2], _mm512_and_si512(hm, b2));
                        u[3] = _mm512_or_si512(u[3], _mm512_and_si512(_mm512_srli_epi16(hm, 1), b2));
                        hm = _mm512_srli_epi16(hm, 4);
                    }
                }
#pragma GCC unroll 4
                for (int jj = 0; jj < 4; jj++) {
                    __m512i S = _mm512_shuffle_epi8(scx, dup256(scale_ctl16(jj)));
                    L = _mm512_dpwssd_epi32(L, _mm512_maddubs_epi16(u[jj], bcast_act(ai + 128 * n2 + 32 * jj)), S);
                }
            }
        }
        __m512i bsum = bcast_act((const int8_t *)(abs16 + (size_t)i * 16));
        if (t == WT_Q3_K || t == WT_Q6_K) {
            __m512i O = _mm512_madd_epi16(SC, bsum);
            L = _mm512_sub_epi32(L, _mm512_slli_epi32(O, t == WT_Q6_K ? 5 : 2));
        }
        __m512 dx = _mm512_set1_ps(ad[i]);
        acc = _mm512_fmadd_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(L), acc);
        if (t == WT_Q2_K || t == WT_Q4_K || t == WT_Q5_K)
            acc = _mm512_fnmadd_ps(_mm512_mul_ps(dmin, dx), _mm512_cvtepi32_ps(_mm512_madd_epi16(MN, bsum)), acc);
    }
    float *y0 = y + (size_t)b * ldy + n;
    store_pair(acc, y0, y0 + 1);
}

/* The decode kernel's -off x (each lane's four activations' sum) of one
 * activation row, eight lanes a block (q8_c1()): off is the offset of the
 * raw codes, 128 for q8_0's sign-flipped bytes, 8 for q4_0's nibbles. */
#define Q8C1_CAP 1024 /* blocks: rows of up to 32768 */
static _Thread_local int32_t tl_q8c1[Q8C1_CAP * 8] __attribute__((aligned(64)));

/* The offset of t's raw codes (u = w + off, unsigned bytes for dpbusd). */
static inline int raw_off(enum wtype t) { return t == WT_Q8_0 ? 128 : 8; }

AVX512_TARGET static void q8_c1(enum wtype t, const struct quant_act *a, uint32_t b)
{
    uint32_t K = a->K, nb = K / 32;
    const __m256i o = _mm256_set1_epi8((char)raw_off(t)), zero = _mm256_setzero_si256();
    for (uint32_t i = 0; i < nb; i++) {
        __m256i av = _mm256_loadu_si256((const __m256i *)(a->q + (size_t)b * K + (size_t)i * 32));
        _mm256_store_si256((__m256i *)(tl_q8c1 + (size_t)i * 8), _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, o, av)));
    }
}

/* q8_rows() of rows n, n+1 (their blocks alternating) against activation
 * row b, folded to four lanes as q8_rows_x2() does; the raw codes (q8_0's
 * with their sign bits flipped, u = q + 128; q4_0's nibbles, u = w + 8)
 * from tl_q8c1's start, as q8_tile().  Only q8_0 decodes here now (q4_0
 * has q4_0_w2x()); the q4_0 branches keep the two layouts' kernel one. */
AVX512_TARGET static ALWAYS_INLINE void q8_rows_w2(const enum wtype t, const uint8_t *row0, size_t row_bytes,
                                                   const struct quant_act *a, uint32_t b, float *y, size_t ldy,
                                                   uint32_t n)
{
    (void)row_bytes;
    const uint32_t bb = t == WT_Q8_0 ? 34 : 18;
    uint32_t K = a->K, nb = K / 32;
    const int8_t *aq = a->q + (size_t)b * K;
    const float *ad = a->d + (size_t)b * nb;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512 acc = _mm512_setzero_ps();
    for (uint32_t i = 0; i < nb; i++) {
        const uint8_t *k0 = row0 + (size_t)i * 2 * bb, *k1 = k0 + bb;
        __m512i u = t == WT_Q8_0 ? _mm512_xor_si512(join256(_mm256_loadu_si256((const __m256i *)(k0 + 2)),
                                                            _mm256_loadu_si256((const __m256i *)(k1 + 2))),
                                                    flip)
                                 : join256(codes32(t, k0), codes32(t, k1));
        __m512i c = _mm512_broadcast_i64x4(_mm256_load_si256((const __m256i *)(tl_q8c1 + (size_t)i * 8)));
        __m512i L = _mm512_dpbusd_epi32(c, u, bcast_act(aq + (size_t)i * 32));
        L = _mm512_add_epi32(L, _mm512_shuffle_i32x4(L, L, _MM_SHUFFLE(2, 3, 0, 1)));
        __m512 D = _mm512_mul_ps(pair_set(half_avx2(k0), half_avx2(k1)), _mm512_set1_ps(ad[i]));
        acc = _mm512_fmadd_ps(D, _mm512_cvtepi32_ps(L), acc);
    }
    float l[16];
    _mm512_storeu_ps(l, acc);
    float *y0 = y + (size_t)b * ldy + n;
    y0[0] = reduce4(l);
    y0[1] = reduce4(l + 8);
}

/* q4_0 decode: a pair of weight rows (rows n, n+1, their blocks
 * alternating), two blocks at once.  One register holds the quarters (row n,
 * block i), (n+1, i), (n, i+1), (n+1, i+1), each quarter a row's four lanes
 * of a block as q8_tile() holds them (quant.h's lanes come straight out of
 * two dpbusd of the low and the high nibbles against the activation's
 * elements 0-15 and 16-31, nothing to fold), so that the integer sums, the
 * conversions and the scale products of two blocks take one instruction
 * each; then block i's FMA (the low half) and block i+1's (the high half)
 * in order, so that every lane sees q8_rows()'s float steps.  The pair's
 * 72 bytes come with one load and one 16-bit permutation (a block is nine
 * words, so every field starts on one).  Decode of a 1B model had been
 * bound by q8_rows_w2()'s unpacking, not by memory: about a third of its
 * instructions per block. */

/* The activation row as the kernel reads it, 256 bytes a block pair
 * (q4_pack1()): the two blocks' elements 0-15 (each twice), their elements
 * 16-31, their lanes' -8 x activation sums (each twice) and their scales
 * (each eight times). */
#define Q4P1_BYTES 256
static _Thread_local uint8_t tl_q4p1[Q8C1_CAP / 2 * Q4P1_BYTES] __attribute__((aligned(64)));

AVX512_TARGET static void q4_pack1(const struct quant_act *a, uint32_t b)
{
    uint32_t K = a->K, nb = K / 32;
    const int8_t *aq = a->q + (size_t)b * K;
    const float *ad = a->d + (size_t)b * nb;
    const __m512i o = _mm512_set1_epi8(8), zero = _mm512_setzero_si512();
    for (uint32_t i = 0; i < nb; i += 2) {
        uint8_t *s = tl_q4p1 + (size_t)i / 2 * Q4P1_BYTES;
        /* the two blocks' 64 codes (the second's zero past an odd row's end) */
        __m512i v = _mm512_maskz_loadu_epi8(i + 1 < nb ? ~0ull : 0xffffffffull, aq + (size_t)i * 32);
        __m512i alo = _mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(2, 2, 0, 0));
        __m512i ahi = _mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(3, 3, 1, 1));
        /* lane j of a quarter: 8 x (elements 4j..4j+3 + 16+4j..16+4j+3) */
        __m512i sum = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, o, alo), o, ahi);
        __m512 dx = _mm512_insertf32x8(_mm512_set1_ps(ad[i]), _mm256_set1_ps(i + 1 < nb ? ad[i + 1] : 0.0f), 1);
        _mm512_store_si512((void *)s, alo);
        _mm512_store_si512((void *)(s + 64), ahi);
        _mm512_store_si512((void *)(s + 128), _mm512_sub_epi32(zero, sum));
        _mm512_store_ps((void *)(s + 192), dx);
    }
}

AVX512_TARGET __attribute__((noinline)) static void q4_0_w2x(const uint8_t *row0, size_t row_bytes,
                                                             const struct quant_act *a, uint32_t b, float *y,
                                                             size_t ldy, uint32_t n)
{
    (void)row_bytes;
    uint32_t nb = a->K / 32;
    /* words of the pair's two blocks (at 0, 9, 18, 27; the fourth's last
     * from the second register): quarter k the codes of (row n + k % 2,
     * block i + k / 2) */
    const __m512i qidx = _mm512_set_epi16(35, 34, 33, 32, 31, 30, 29, 28, 26, 25, 24, 23, 22, 21, 20, 19,
                                          17, 16, 15, 14, 13, 12, 11, 10, 8, 7, 6, 5, 4, 3, 2, 1);
    /* the four scales, each four times */
    const __m512i didx = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                          27, 27, 27, 27, 18, 18, 18, 18, 9, 9, 9, 9, 0, 0, 0, 0);
    const __m512i m4 = _mm512_set1_epi8(15);
    __m256 acc = _mm256_setzero_ps();
    uint32_t i = 0;
    for (; i < nb; i += 2) {
        const uint8_t *k = row0 + (size_t)i * 36, *s = tl_q4p1 + (size_t)i / 2 * Q4P1_BYTES;
        __m512i A, B;
        if (i + 1 < nb) {
            A = _mm512_loadu_si512((const void *)k);
            B = _mm512_zextsi128_si512(_mm_loadl_epi64((const __m128i *)(k + 64)));
        } else {
            /* an odd last block: its 36 bytes (a load of 64 would run past
             * the matrix) */
            A = _mm512_maskz_loadu_epi8(0xfffffffffull, k);
            B = _mm512_setzero_si512();
        }
        __m512i q = _mm512_permutex2var_epi16(A, qidx, B);
        __m512i ulo = _mm512_and_si512(q, m4), uhi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
        __m512i L = _mm512_dpbusd_epi32(_mm512_load_si512((const void *)(s + 128)), ulo,
                                        _mm512_load_si512((const void *)s));
        L = _mm512_dpbusd_epi32(L, uhi, _mm512_load_si512((const void *)(s + 64)));
        __m512 dw = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutex2var_epi16(A, didx, B)));
        __m512 D = _mm512_mul_ps(dw, _mm512_load_ps((const void *)(s + 192)));
        __m512 Lf = _mm512_cvtepi32_ps(L);
        acc = _mm256_fmadd_ps(_mm512_castps512_ps256(D), _mm512_castps512_ps256(Lf), acc);
        if (i + 1 < nb)
            acc = _mm256_fmadd_ps(_mm512_extractf32x8_ps(D, 1), _mm512_extractf32x8_ps(Lf, 1), acc);
    }
    float l[8];
    _mm256_storeu_ps(l, acc);
    float *y0 = y + (size_t)b * ldy + n;
    y0[0] = reduce4(l);
    y0[1] = reduce4(l + 4);
}

typedef void (*rows_w2_fn)(const uint8_t *row, size_t row_bytes, const struct quant_act *a, uint32_t b, float *y,
                           size_t ldy, uint32_t n);

#define ROWSW2_FN(NAME, BODY, T)                                                                                 \
    AVX512_TARGET __attribute__((noinline)) static void NAME##_w2(const uint8_t *row, size_t row_bytes,          \
                                                                  const struct quant_act *a, uint32_t b, float *y, \
                                                                  size_t ldy, uint32_t n)                          \
    {                                                                                                            \
        BODY(T, row, row_bytes, a, b, y, ldy, n);                                                                \
    }

ROWSW2_FN(q4_1, rows32_w2, WT_Q4_1)
ROWSW2_FN(q5_0, rows32_w2, WT_Q5_0)
ROWSW2_FN(q5_1, rows32_w2, WT_Q5_1)
ROWSW2_FN(q8_0, q8_rows_w2, WT_Q8_0)
ROWSW2_FN(q2_k, rows256_w2, WT_Q2_K)
ROWSW2_FN(q3_k, rows256_w2, WT_Q3_K)
ROWSW2_FN(q4_k, rows256_w2, WT_Q4_K)
ROWSW2_FN(q5_k, rows256_w2, WT_Q5_K)
ROWSW2_FN(q6_k, rows256_w2, WT_Q6_K)

static rows_w2_fn avx512_w2_fn(enum wtype t)
{
    switch (t) {
    case WT_Q4_0: return q4_0_w2x;
    case WT_Q4_1: return q4_1_w2;
    case WT_Q5_0: return q5_0_w2;
    case WT_Q5_1: return q5_1_w2;
    case WT_Q8_0: return q8_0_w2;
    case WT_Q2_K: return q2_k_w2;
    case WT_Q3_K: return q3_k_w2;
    case WT_Q4_K: return q4_k_w2;
    case WT_Q5_K: return q5_k_w2;
    case WT_Q6_K: return q6_k_w2;
    default: return NULL;
    }
}

/* Activation rows of one pass (their int8 codes stay in L2 while a block of
 * weight rows runs over them) and weight rows of one block (they stay in
 * L1/L2 while every pass reads them).  Without the passes, a 512-row prompt
 * of an 8192-wide matrix streamed 4 MiB of codes from L3 for every weight
 * row. */
#define ACT_PASS_BYTES (192u << 10)
#define W_BLOCK_BYTES  (32u << 10)
/* The q4_0 / q8_0 tiles (q8_tile()) prepare each pass's lane sums and
 * scales once per block of weight rows: with 32 KiB blocks that was a few
 * tiles' work per preparation on wide rows (a 2048 x 8192 q8_0 matrix ran
 * at 74 GOP/s, against 196 with 256 KiB blocks, which with the pass and its
 * sums still fit a 1 MiB L2). */
#define RAW_W_BLOCK_BYTES (256u << 10)

void quant_pack_pairs(enum wtype t, const void *src, size_t row_bytes, uint32_t rows, void *dst)
{
    size_t bb = quant_block_bytes(t), nb = row_bytes / bb;
    for (uint32_t r = 0; r < rows; r++) {
        const uint8_t *s = (const uint8_t *)src + (size_t)r * row_bytes;
        uint8_t *d = (uint8_t *)dst + (size_t)(r / 2) * 2 * row_bytes + (r % 2) * bb;
        for (size_t i = 0; i < nb; i++)
            memcpy(d + i * 2 * bb, s + i * bb, bb);
    }
}

/* q4_0 and q8_0 prefill with AVX-512: W weight rows (W/2 pairs, each
 * pair's blocks alternating as quant_pack_pairs() lays them) against 4Q
 * activation rows, four rows to a register: with four lanes a block
 * (quant.h), a register holds four rows' lanes, so that one scale product,
 * one conversion and one FMA serve four products of a block where the
 * eight-lane layout needed two of each.  A weight row's raw codes u = w +
 * off (q8_0: its bytes with the sign bit flipped, off 128; q4_0: its
 * nibbles, off 8), elements 0-15 and 16-31, repeat in each 128-bit quarter
 * against four activation rows' elements 0-15 and 16-31 (q8_pack_pass()'s
 * layout); two dpbusd from -off x the lane's eight activations give lane j
 * of each row: sum (w + off) a - off sum a, the exact integer of the
 * definition, and the float steps are q8_rows()'s. */
#define Q8PK_BYTES 256 /* per quad of activation rows and block */

AVX512_TARGET static ALWAYS_INLINE void q8_tile(const enum wtype t, const int W, const int Q, const uint8_t *rp,
                                                size_t row_bytes, uint32_t nb, const uint8_t *pk, float *y, size_t ldy,
                                                uint32_t b0, uint32_t n)
{
    const uint32_t bb = t == WT_Q8_0 ? 34 : 18;
    const __m512i flip = _mm512_set1_epi8((char)0x80), m4 = _mm512_set1_epi8(15);
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < W; r++)
#pragma GCC unroll 4
        for (int q = 0; q < Q; q++)
            acc[r][q] = _mm512_setzero_ps();
    for (uint32_t i = 0; i < nb; i++) {
        __m512i ulo[4], uhi[4];
        __m512 dw[4];
#pragma GCC unroll 4
        for (int r = 0; r < W; r++) {
            const uint8_t *blk = rp + (size_t)(r / 2) * 2 * row_bytes + (size_t)i * 2 * bb + (size_t)(r % 2) * bb;
            dw[r] = _mm512_set1_ps(half_avx2(blk));
            if (t == WT_Q8_0) {
                ulo[r] = _mm512_xor_si512(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(blk + 2))), flip);
                uhi[r] = _mm512_xor_si512(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(blk + 18))), flip);
            } else {
                /* low nibbles are elements 0-15, high nibbles 16-31 */
                __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(blk + 2)));
                ulo[r] = _mm512_and_si512(v, m4);
                uhi[r] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            }
        }
#pragma GCC unroll 4
        for (int q = 0; q < Q; q++) {
            const uint8_t *s = pk + ((size_t)q * nb + i) * Q8PK_BYTES;
            __m512i alo = _mm512_load_si512((const void *)s), ahi = _mm512_load_si512((const void *)(s + 64));
            __m512i c = _mm512_load_si512((const void *)(s + 128));
            __m512 dx = _mm512_load_ps((const void *)(s + 192));
#pragma GCC unroll 4
            for (int r = 0; r < W; r++) {
                __m512i L = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(c, ulo[r], alo), uhi[r], ahi);
                acc[r][q] = _mm512_fmadd_ps(_mm512_mul_ps(dw[r], dx), _mm512_cvtepi32_ps(L), acc[r][q]);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < W; r++)
#pragma GCC unroll 4
        for (int q = 0; q < Q; q++) {
            float l[16];
            _mm512_storeu_ps(l, acc[r][q]);
            for (int k = 0; k < 4; k++)
                y[(size_t)(b0 + 4 * (uint32_t)q + (uint32_t)k) * ldy + n + (uint32_t)r] = reduce4(l + 4 * k);
        }
}

#define Q8_TILE_Q 4 /* quads of activation rows a tile (and 2 for a last 8) */

typedef void (*q8_tile_fn)(const uint8_t *rp, size_t row_bytes, uint32_t nb, const uint8_t *pk, float *y,
                           size_t ldy, uint32_t b0, uint32_t n);

#define Q8_TILE_FN(NAME, T, W, Q)                                                                             \
    AVX512_TARGET __attribute__((noinline)) static void NAME##_tile_##W##x##Q(                                \
        const uint8_t *rp, size_t row_bytes, uint32_t nb, const uint8_t *pk, float *y, size_t ldy, uint32_t b0, \
        uint32_t n)                                                                                           \
    {                                                                                                         \
        q8_tile(T, W, Q, rp, row_bytes, nb, pk, y, ldy, b0, n);                                                \
    }
#define Q8_TILE_FNS(NAME, T)                                                                                  \
    Q8_TILE_FN(NAME, T, 4, 4)                                                                                 \
    Q8_TILE_FN(NAME, T, 2, 4)                                                                                 \
    Q8_TILE_FN(NAME, T, 4, 2)                                                                                 \
    Q8_TILE_FN(NAME, T, 2, 2)                                                                                 \
    /* [16 activation rows?][4 weight rows?] */                                                               \
    static const q8_tile_fn NAME##_tiles[2][2] = {{NAME##_tile_2x2, NAME##_tile_4x2},                          \
                                                  {NAME##_tile_2x4, NAME##_tile_4x4}};

Q8_TILE_FNS(q8_0, WT_Q8_0)
Q8_TILE_FNS(q4_0, WT_Q4_0)

/* q8_tile()'s activations of rows [b0, b1) (b1 - b0 a multiple of 4) for
 * weights of type t: quad q's block i at pk + (q * nb + i) * Q8PK_BYTES: the
 * four rows' elements 0-15, their elements 16-31, the sixteen lanes' -off x
 * activation sums and the rows' scales, each four times. */
AVX512_TARGET static void q8_pack_pass(enum wtype t, const struct quant_act *a, uint32_t b0, uint32_t b1, uint8_t *pk)
{
    uint32_t K = a->K, nb = K / 32;
    const __m512i o = _mm512_set1_epi8((char)raw_off(t)), zero = _mm512_setzero_si512();
    const __m512i quad = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    for (uint32_t b = b0; b < b1; b += 4) {
        const int8_t *r0 = a->q + (size_t)b * K;
        const float *d0 = a->d + (size_t)b * nb;
        for (uint32_t i = 0; i < nb; i++) {
            uint8_t *s = pk + ((size_t)(b - b0) / 4 * nb + i) * Q8PK_BYTES;
            const int8_t *q = r0 + (size_t)i * 32;
            __m512i x = pair_load(q, q + K), z = pair_load(q + 2 * (size_t)K, q + 3 * (size_t)K);
            /* the four rows' first 16 bytes, then their last 16 */
            __m512i alo = _mm512_shuffle_i64x2(x, z, _MM_SHUFFLE(2, 0, 2, 0));
            __m512i ahi = _mm512_shuffle_i64x2(x, z, _MM_SHUFFLE(3, 1, 3, 1));
            __m512i sum = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, o, alo), o, ahi);
            __m128 d4 = _mm_setr_ps(d0[i], d0[nb + i], d0[2 * (size_t)nb + i], d0[3 * (size_t)nb + i]);
            _mm512_store_si512((void *)s, alo);
            _mm512_store_si512((void *)(s + 64), ahi);
            _mm512_store_si512((void *)(s + 128), _mm512_sub_epi32(zero, sum));
            _mm512_store_ps((void *)(s + 192), _mm512_permutexvar_ps(quad, _mm512_castps128_ps512(d4)));
        }
    }
}

/* The most codes of a pass the tiles take (q8_pack_pass() lays out twice
 * as many bytes). */
#define C8_CAP (ACT_PASS_BYTES + (64u << 10))

/* q8_pack_pass()'s layout of a pass: twice its codes. */
#define Q8PK_CAP (2 * C8_CAP)
static _Thread_local uint8_t tl_q8pk[Q8PK_CAP] __attribute__((aligned(64)));

/* The activation scales of a pass, rearranged for the AVX-512 kernels of
 * 32-weight blocks (a pass has at most max(8 rows, ACT_PASS_BYTES of codes):
 * 8 * K / 32 or ACT_PASS_BYTES / 32 scales). */
#define DT_CAP 8192
static _Thread_local float tl_dT[DT_CAP] __attribute__((aligned(64)));

void quant_matmul(enum wtype t, int isa, const void *w, size_t row_bytes, bool pairs, uint32_t n0, uint32_t n1,
                  const struct quant_act *a, float *y, size_t ldy)
{
    const rows_fn *fns = isa >= QUANT_AVX2 ? avx2_fns(t) : NULL;
    const rows2_fn *fns2 = isa >= QUANT_AVX512 ? avx512_fns(t) : NULL;
    const uint8_t *wb = w;
    const size_t bb = quant_block_bytes(t), bs = pairs ? 2 * bb : bb; /* bs: from a block to the row's next */
#define ROW(n) (pairs ? wb + (size_t)((n) / 2) * 2 * row_bytes + ((n) % 2) * bb : wb + (size_t)(n) * row_bytes)
    if (!fns) {
        for (uint32_t n = n0; n < n1; n++)
            for (uint32_t b = 0; b < a->B; b++)
                y[(size_t)b * ldy + n] = dot_row_scalar(t, ROW(n), bs, a, b);
        return;
    }
    const bool raw = fns2 && pairs && (t == WT_Q4_0 || t == WT_Q8_0);
    uint32_t pass = ACT_PASS_BYTES / a->K, wblk = (uint32_t)((raw ? RAW_W_BLOCK_BYTES : W_BLOCK_BYTES) / row_bytes);
    pass = pass < 8 ? 8 : pass / 8 * 8;
    if (raw && pass % (4 * Q8_TILE_Q)) {
        /* whole tiles, where they fit (else the rest in 8s, 4s, 2s) */
        uint32_t up = (pass + 4 * Q8_TILE_Q - 1) / (4 * Q8_TILE_Q) * (4 * Q8_TILE_Q);
        if ((size_t)up * a->K <= C8_CAP && (size_t)up * (a->K / 32) <= DT_CAP)
            pass = up;
    }
    wblk = wblk < 2 ? 2 : wblk / 2 * 2; /* so that a block starts a pair (n0 is even) */
    if (a->kind == QACT_32 && (size_t)pass * (a->K / 32) > DT_CAP)
        fns2 = NULL; /* rows of over 32768: the AVX2 kernels */
    for (uint32_t nb0 = n0; nb0 < n1; nb0 += wblk) {
        uint32_t nb1 = n1 - nb0 < wblk ? n1 : nb0 + wblk;
        for (uint32_t p0 = 0; p0 < a->B; p0 += pass) {
            uint32_t p1 = a->B - p0 < pass ? a->B : p0 + pass;
            if (fns2 && pairs && p1 - p0 == 1) {
                /* a single activation row (decode): weight rows in pairs */
                rows_w2_fn f = avx512_w2_fn(t);
                uint32_t n = nb0;
                if (t == WT_Q8_0)
                    q8_c1(t, a, p0);
                if (t == WT_Q4_0 && nb0 == n0)
                    q4_pack1(a, p0); /* the other blocks of weight rows reuse it */
                for (; n + 2 <= nb1; n += 2)
                    f(ROW(n), row_bytes, a, p0, y, ldy, n);
                if (n < nb1)
                    fns[1](ROW(n), bs, a, p0, y, ldy, n);
                continue;
            }
            uint32_t nbk = a->K / 32;
            if (fns2 && a->kind == QACT_32) {
                /* The pass's activation scales, block-major per tile of 8
                 * rows, so that a kernel reads a block's eight at once. */
                for (uint32_t b = p0; b < p1; b++)
                    for (uint32_t i = 0; i < nbk; i++)
                        tl_dT[(size_t)(b - p0) / 8 * nbk * 8 + (size_t)i * 8 + (b - p0) % 8] =
                            a->d[(size_t)b * nbk + i];
            }
            uint32_t n = nb0;
            /* q4_0, q8_0: W weight rows at once against the pass's whole
             * tiles of 16 activation rows, then of 8 */
            const uint32_t pt = p0 + (p1 - p0) / 8 * 8;
            if (raw && fns2 && pt > p0 && (size_t)(pt - p0) * a->K <= C8_CAP) {
                const q8_tile_fn(*tiles)[2] = t == WT_Q8_0 ? q8_0_tiles : q4_0_tiles;
                q8_pack_pass(t, a, p0, pt, tl_q8pk);
                for (; n + 2 <= nb1; n += nb1 - n >= 4 ? 4 : 2)
                    for (uint32_t b0 = p0, tq; b0 < pt; b0 += tq) {
                        const uint8_t *pk = tl_q8pk + (size_t)(b0 - p0) / 4 * nbk * Q8PK_BYTES;
                        tq = pt - b0 >= 4 * Q8_TILE_Q ? 4 * Q8_TILE_Q : 8;
                        tiles[tq != 8][nb1 - n >= 4](ROW(n), row_bytes, nbk, pk, y, ldy, b0, n);
                    }
                /* the rest of the pass's rows as below (the same bits) */
                for (uint32_t m = nb0; m < n; m++) {
                    const uint8_t *row = ROW(m);
                    uint32_t b0 = pt;
                    for (; p1 - b0 >= 8; b0 += 8)
                        fns2[2](row, bs, a, tl_dT + (size_t)(b0 - p0) / 8 * nbk * 8, b0, y, ldy, m);
                    if (p1 - b0 >= 4) {
                        fns2[1](row, bs, a, tl_dT + (size_t)(b0 - p0) / 8 * nbk * 8 + (b0 - p0) % 8, b0, y, ldy, m);
                        b0 += 4;
                    }
                    if (p1 - b0 >= 2) {
                        fns2[0](row, bs, a, tl_dT + (size_t)(b0 - p0) / 8 * nbk * 8 + (b0 - p0) % 8, b0, y, ldy, m);
                        b0 += 2;
                    }
                    for (; b0 < p1; b0 += MAXC) {
                        uint32_t c = p1 - b0 < MAXC ? p1 - b0 : MAXC;
                        fns[c](row, bs, a, b0, y, ldy, m);
                    }
                }
            }
            for (; n < nb1; n++) {
                const uint8_t *row = ROW(n);
                /* The tile only decides which rows share the row's
                 * unpacking, never how an element is computed. */
                uint32_t b0 = p0;
                if (fns2) {
                    for (; p1 - b0 >= 8; b0 += 8)
                        fns2[2](row, bs, a, tl_dT + (size_t)(b0 - p0) / 8 * nbk * 8, b0, y, ldy, n);
                    if (p1 - b0 >= 4) {
                        fns2[1](row, bs, a, tl_dT + (size_t)(b0 - p0) / 8 * nbk * 8 + (b0 - p0) % 8, b0, y, ldy, n);
                        b0 += 4;
                    }
                    if (p1 - b0 >= 2) {
                        fns2[0](row, bs, a, tl_dT + (size_t)(b0 - p0) / 8 * nbk * 8 + (b0 - p0) % 8, b0, y, ldy, n);
                        b0 += 2;
                    }
                }
                for (; b0 < p1; b0 += MAXC) {
                    uint32_t c = p1 - b0 < MAXC ? p1 - b0 : MAXC;
                    fns[c](row, bs, a, b0, y, ldy, n);
                }
            }
        }
    }
#undef ROW
}
