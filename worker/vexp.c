/* vexp.c — see vexp.h.
 *
 * glibc's expf (the FMA build, __expf_fma, as objdump shows it in libm.so.6
 * of glibc 2.36), for x with |x| < 88 or in the ranges that need no special
 * case, works in double precision:
 *
 *   kd = fma(InvLn2N, x, SHIFT)          round(x * 32/ln2), in the low bits
 *   ki = bits(kd);  kd -= SHIFT
 *   r  = fma(InvLn2N, x, -kd)            x * 32/ln2 - k, |r| <= 1/2
 *   s  = asdouble(T[ki % 32] + (ki << 47))          2^(k/32)
 *   y  = fma(fma(C0, r, C1), r*r, fma(C2, r, 1)) * s
 *   return (float)y
 *
 * Each of those is one IEEE operation (the two products that glibc's C
 * writes as z = InvLn2N * x and r = z - kd are fused by its compiler, so
 * they are fused here), and each vector lane does the same operation, so
 * each lane gets the same double and the same rounding to float.  The
 * vector code computes every lane this way and then overwrites the lanes
 * glibc treats apart (|x| >= 88 and beyond its thresholds), with the values
 * glibc returns for them.
 *
 * Nothing here may be contracted into other FMAs than the written ones:
 * GCC fuses a vector product that feeds an addition (-ffp-contract=fast),
 * so no _mm*_mul_* result here feeds an _mm*_add_* or _mm*_sub_*.
 */
#include "vexp.h"

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define AVX2_TARGET __attribute__((target("avx2,fma")))
#define AVX512_TARGET __attribute__((target("avx512f,avx512dq,avx2,fma")))
#define INLINE static inline __attribute__((always_inline))

/* glibc's __exp2f_data.tab (EXP2F_TABLE_BITS 5): the bits of 2^(i/32) with
 * i << 47 taken off, so that adding ki << 47 gives 2^(ki/32) for any ki. */
static const uint64_t vexp_tab[32] __attribute__((aligned(64))) = {
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51, 0x3fef72b83c7d517b,
    0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1, 0x3fef06fe0a31b715, 0x3feef1a7373aa9cb,
    0x3feedea64c123422, 0x3feece086061892d, 0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429,
    0x3feea47eb03a5585, 0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d, 0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069, 0x3fef5818dcfba487, 0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da, 0x3fefd0765b6e4540,
};

#define VEXP_INVLN2N 0x1.71547652b82fep+5 /* 32 / ln 2 */
#define VEXP_SHIFT 0x1.8p+52              /* rounds to an integer in the low bits */
#define VEXP_C0 0x1.c6af84b912394p-20     /* 2^(r/32) ~ C0 r^3 + C1 r^2 + C2 r + 1 */
#define VEXP_C1 0x1.ebfce50fac4f3p-13
#define VEXP_C2 0x1.62e42ff0c52d6p-6

/* glibc's special cases, tested in this order there:
 *   x > OFLOW (and +inf)                  +inf  (__math_oflowf: 0x1p97f^2)
 *   x < UFLOW (and -inf)                  0     (__math_uflowf: 0x1p-95f^2)
 *   x < MAY_UFLOW                         0x1p-149f (__math_may_uflowf:
 *                                         0x1.4p-75f^2, the smallest subnormal)
 *   NaN                                   x + x (quieted, same payload) */
#define VEXP_OFLOW 0x1.62e42ep6f
#define VEXP_UFLOW (-0x1.9fe368p6f)
#define VEXP_MAY_UFLOW (-0x1.9d1d9ep6f)
#define VEXP_MAY_UFLOW_VALUE 0x1p-149f

/* --- AVX2: four lanes of double per eight floats ------------------------------------------ */

AVX2_TARGET INLINE __m128 exp4_avx2(__m128 x)
{
    const __m256d invln2n = _mm256_set1_pd(VEXP_INVLN2N), shift = _mm256_set1_pd(VEXP_SHIFT);
    __m256d xd = _mm256_cvtps_pd(x);
    __m256d kd = _mm256_fmadd_pd(invln2n, xd, shift);
    __m256i ki = _mm256_castpd_si256(kd);
    kd = _mm256_sub_pd(kd, shift);
    __m256d r = _mm256_fmsub_pd(invln2n, xd, kd);
    __m256i idx = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
    __m256i t = _mm256_i64gather_epi64((const long long *)vexp_tab, idx, 8);
    __m256d s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64(ki, 47)));
    __m256d z = _mm256_fmadd_pd(_mm256_set1_pd(VEXP_C0), r, _mm256_set1_pd(VEXP_C1));
    __m256d r2 = _mm256_mul_pd(r, r);
    __m256d y = _mm256_fmadd_pd(_mm256_set1_pd(VEXP_C2), r, _mm256_set1_pd(1.0));
    y = _mm256_fmadd_pd(z, r2, y);
    return _mm256_cvtpd_ps(_mm256_mul_pd(y, s));
}

AVX2_TARGET INLINE __m256 exp8_avx2(__m256 x)
{
    __m256 y = _mm256_set_m128(exp4_avx2(_mm256_extractf128_ps(x, 1)), exp4_avx2(_mm256_castps256_ps128(x)));
    y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, _mm256_set1_ps(VEXP_OFLOW), _CMP_GT_OQ));
    y = _mm256_blendv_ps(y, _mm256_set1_ps(VEXP_MAY_UFLOW_VALUE),
                         _mm256_cmp_ps(x, _mm256_set1_ps(VEXP_MAY_UFLOW), _CMP_LT_OQ));
    y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(VEXP_UFLOW), _CMP_LT_OQ));
    return _mm256_blendv_ps(y, _mm256_add_ps(x, x), _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

/* --- AVX-512: eight lanes of double per eight floats, sixteen at a time ------------------- */

AVX512_TARGET INLINE __m256 exp8_512(__m256 x)
{
    const __m512d invln2n = _mm512_set1_pd(VEXP_INVLN2N), shift = _mm512_set1_pd(VEXP_SHIFT);
    __m512d xd = _mm512_cvtps_pd(x);
    __m512d kd = _mm512_fmadd_pd(invln2n, xd, shift);
    __m512i ki = _mm512_castpd_si512(kd);
    kd = _mm512_sub_pd(kd, shift);
    __m512d r = _mm512_fmsub_pd(invln2n, xd, kd);
    /* the table in four registers: two two-register permutes pick by bits
     * 0-3 of ki, bit 4 picks between them */
    const __m512i *tab = (const __m512i *)vexp_tab;
    __m512i t0 = _mm512_permutex2var_epi64(_mm512_load_si512(tab + 0), ki, _mm512_load_si512(tab + 1));
    __m512i t1 = _mm512_permutex2var_epi64(_mm512_load_si512(tab + 2), ki, _mm512_load_si512(tab + 3));
    __m512i t = _mm512_mask_blend_epi64(_mm512_test_epi64_mask(ki, _mm512_set1_epi64(16)), t0, t1);
    __m512d s = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64(ki, 47)));
    __m512d z = _mm512_fmadd_pd(_mm512_set1_pd(VEXP_C0), r, _mm512_set1_pd(VEXP_C1));
    __m512d r2 = _mm512_mul_pd(r, r);
    __m512d y = _mm512_fmadd_pd(_mm512_set1_pd(VEXP_C2), r, _mm512_set1_pd(1.0));
    y = _mm512_fmadd_pd(z, r2, y);
    return _mm512_cvtpd_ps(_mm512_mul_pd(y, s));
}

AVX512_TARGET INLINE __m512 exp16_512(__m512 x)
{
    __m512 y = _mm512_insertf32x8(_mm512_castps256_ps512(exp8_512(_mm512_castps512_ps256(x))),
                                  exp8_512(_mm512_extractf32x8_ps(x, 1)), 1);
    y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, _mm512_set1_ps(VEXP_OFLOW), _CMP_GT_OQ),
                           _mm512_set1_ps(INFINITY));
    y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, _mm512_set1_ps(VEXP_MAY_UFLOW), _CMP_LT_OQ),
                           _mm512_set1_ps(VEXP_MAY_UFLOW_VALUE));
    y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, _mm512_set1_ps(VEXP_UFLOW), _CMP_LT_OQ), _mm512_setzero_ps());
    return _mm512_mask_add_ps(y, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x, x);
}

/* --- the array functions, one per ISA -------------------------------------------------------
 * op 0: y = expf(x); op 1: y = expf(x - shift); op 2: y = x / (1 + expf(-x)) * u.  The AVX2
 * tails go through an eight-float buffer, the AVX-512 ones through masks. */

enum { OP_EXP, OP_SHIFTED, OP_SILU };

AVX2_TARGET INLINE __m256 op8_avx2(int op, __m256 x, const float *u, float shift)
{
    if (op == OP_EXP)
        return exp8_avx2(x);
    if (op == OP_SHIFTED)
        return exp8_avx2(_mm256_sub_ps(x, _mm256_set1_ps(shift)));
    __m256 e = exp8_avx2(_mm256_xor_ps(x, _mm256_set1_ps(-0.0f)));
    return _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), _mm256_loadu_ps(u));
}

AVX2_TARGET INLINE void run_avx2(int op, float *y, const float *x, const float *u, float shift, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, op8_avx2(op, _mm256_loadu_ps(x + i), u + i, shift));
    if (i < n) {
        float xb[8] = {0}, ub[8] = {0}, yb[8];
        memcpy(xb, x + i, (n - i) * sizeof *x);
        if (op == OP_SILU)
            memcpy(ub, u + i, (n - i) * sizeof *u);
        _mm256_storeu_ps(yb, op8_avx2(op, _mm256_loadu_ps(xb), ub, shift));
        memcpy(y + i, yb, (n - i) * sizeof *y);
    }
}

AVX512_TARGET INLINE __m512 op16_512(int op, __m512 x, __m512 u, float shift)
{
    if (op == OP_EXP)
        return exp16_512(x);
    if (op == OP_SHIFTED)
        return exp16_512(_mm512_sub_ps(x, _mm512_set1_ps(shift)));
    __m512 e = exp16_512(_mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN))));
    return _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), u);
}

AVX512_TARGET INLINE void run_512(int op, float *y, const float *x, const float *u, float shift, size_t n)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 uv = op == OP_SILU ? _mm512_loadu_ps(u + i) : _mm512_setzero_ps();
        _mm512_storeu_ps(y + i, op16_512(op, _mm512_loadu_ps(x + i), uv, shift));
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512 uv = op == OP_SILU ? _mm512_maskz_loadu_ps(m, u + i) : _mm512_setzero_ps();
        _mm512_mask_storeu_ps(y + i, m, op16_512(op, _mm512_maskz_loadu_ps(m, x + i), uv, shift));
    }
}

INLINE void run_scalar(int op, float *y, const float *x, const float *u, float shift, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        y[i] = op == OP_EXP ? expf(v) : op == OP_SHIFTED ? expf(v - shift) : v / (1.0f + expf(-v)) * u[i];
    }
}

/* One function per op and ISA, so that every loop is compiled for its op. */
#define VEXP_OP_FUNCS(name, op)                                                                        \
    AVX512_TARGET static void name##_512(float *y, const float *x, const float *u, float shift, size_t n)  \
    {                                                                                                  \
        run_512(op, y, x, u, shift, n);                                                                \
    }                                                                                                  \
    AVX2_TARGET static void name##_avx2(float *y, const float *x, const float *u, float shift, size_t n) \
    {                                                                                                  \
        run_avx2(op, y, x, u, shift, n);                                                               \
    }                                                                                                  \
    static void name##_scalar(float *y, const float *x, const float *u, float shift, size_t n)          \
    {                                                                                                  \
        run_scalar(op, y, x, u, shift, n);                                                             \
    }                                                                                                  \
    static void name(float *y, const float *x, const float *u, float shift, size_t n, enum kern_isa isa) \
    {                                                                                                  \
        if (isa == KERN_AVX512)                                                                        \
            name##_512(y, x, u, shift, n);                                                             \
        else if (isa == KERN_AVX2)                                                                     \
            name##_avx2(y, x, u, shift, n);                                                            \
        else                                                                                           \
            name##_scalar(y, x, u, shift, n);                                                          \
    }

VEXP_OP_FUNCS(run_exp, OP_EXP)
VEXP_OP_FUNCS(run_shifted, OP_SHIFTED)
VEXP_OP_FUNCS(run_silu, OP_SILU)

void vexp_array(float *y, const float *x, size_t n, enum kern_isa isa) { run_exp(y, x, NULL, 0, n, isa); }

void vexp_shifted(float *s, size_t n, float shift, enum kern_isa isa) { run_shifted(s, s, NULL, shift, n, isa); }

void vexp_silu_mul(float *g, const float *u, size_t n, enum kern_isa isa) { run_silu(g, g, u, 0, n, isa); }
