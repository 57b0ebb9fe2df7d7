/* kern.c — see kern.h.
 *
 * The AVX2 matmul walks the output in tiles of R weight rows by C batch rows,
 * keeping R*C accumulators (one __m256 each) in registers: per step of eight
 * k it loads R weight vectors (converted to float) and C activation vectors
 * and issues R*C FMAs.  The weights of a tile are read from memory once and
 * reused for every batch row, which is what makes batched decoding cheap.
 * Tiles only change which elements are computed together, never how one is.
 */
#include "kern.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

static enum kern_isa isa_in_use = (enum kern_isa)-1;

enum kern_isa kern_isa(void)
{
    if (isa_in_use == (enum kern_isa)-1) {
        __builtin_cpu_init();
        isa_in_use = (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                      __builtin_cpu_supports("f16c"))
                         ? KERN_AVX2
                         : KERN_SCALAR;
    }
    return isa_in_use;
}

enum kern_isa kern_set_isa(enum kern_isa isa)
{
    enum kern_isa old = kern_isa();
    if (isa == KERN_AVX2 && old != KERN_AVX2 && !__builtin_cpu_supports("avx2"))
        return old;
    isa_in_use = isa;
    return old;
}

const char *kern_isa_name(enum kern_isa isa) { return isa == KERN_AVX2 ? "avx2" : "scalar"; }

/* --- scalar: the reference order, lane by lane -------------------------------- */

/* The fixed reduction of eight lanes: (l0+l4, l1+l5, l2+l6, l3+l7), then
 * (a0+a2, a1+a3), then b0+b1 — what hsum256() does with shuffles. */
static inline float reduce8(const float l[8])
{
    float a0 = l[0] + l[4], a1 = l[1] + l[5], a2 = l[2] + l[6], a3 = l[3] + l[7];
    float b0 = a0 + a2, b1 = a1 + a3;
    return b0 + b1;
}

static inline float weight_at(const struct wmat *w, const void *row, uint32_t k)
{
    switch (w->type) {
    case WT_F32: return ((const float *)row)[k];
    case WT_F16: return f16_to_f32(((const uint16_t *)row)[k]);
    case WT_Q8_0: {
        const struct q8_0_block *b = (const struct q8_0_block *)row + k / Q8_0_BLOCK;
        return (float)b->qs[k % Q8_0_BLOCK] * f16_to_f32(b->d);
    }
    }
    return 0;
}

static void matmul_scalar(const struct wmat *w, const float *x, size_t ldx, uint32_t B, float *y, size_t ldy,
                          uint32_t n0, uint32_t n1)
{
    uint32_t K = w->cols;
    for (uint32_t n = n0; n < n1; n++) {
        const void *row = (const char *)w->data + (size_t)n * w->row_bytes;
        for (uint32_t b = 0; b < B; b++) {
            const float *xb = x + (size_t)b * ldx;
            float lanes[8] = {0};
            for (uint32_t k = 0; k < K; k += 8)
                for (int j = 0; j < 8; j++)
                    lanes[j] = fmaf(weight_at(w, row, k + (uint32_t)j), xb[k + (uint32_t)j], lanes[j]);
            y[(size_t)b * ldy + n] = reduce8(lanes);
        }
    }
}

static float dot_scalar(const float *a, const float *b, uint32_t n)
{
    float lanes[8] = {0};
    for (uint32_t k = 0; k < n; k += 8)
        for (int j = 0; j < 8; j++)
            lanes[j] = fmaf(a[k + (uint32_t)j], b[k + (uint32_t)j], lanes[j]);
    return reduce8(lanes);
}

/* --- AVX2 ------------------------------------------------------------------------ */

AVX2_TARGET static inline float hsum256(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 a = _mm_add_ps(lo, hi);                 /* l0+l4, l1+l5, l2+l6, l3+l7 */
    __m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a)); /* a0+a2, a1+a3 */
    __m128 c = _mm_add_ss(b, _mm_movehdup_ps(b));  /* b0+b1 */
    return _mm_cvtss_f32(c);
}

/* Eight weights of row `row` at k, as floats.  For Q8_0 the scale multiplies
 * the converted integers first, exactly as weight_at() does. */
AVX2_TARGET static inline __m256 load_w(enum wtype t, const void *row, uint32_t k)
{
    if (t == WT_F32)
        return _mm256_loadu_ps((const float *)row + k);
    if (t == WT_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + k)));
    const struct q8_0_block *b = (const struct q8_0_block *)row + k / Q8_0_BLOCK;
    __m128i q = _mm_loadl_epi64((const __m128i *)(b->qs + k % Q8_0_BLOCK));
    __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
    __m256 d = _mm256_set1_ps(_cvtsh_ss(b->d));
    return _mm256_mul_ps(f, d);
}

/* One tile: rows n..n+R-1, batch rows b..b+C-1. */
#define DEFINE_TILE(T, TNAME, R, C)                                                                      \
    AVX2_TARGET __attribute__((noinline)) static void tile_##TNAME##_##R##x##C(                          \
        const struct wmat *w, const float *x, size_t ldx, float *y, size_t ldy, uint32_t n, uint32_t b) \
    {                                                                                                    \
        uint32_t K = w->cols;                                                                            \
        const char *base = (const char *)w->data + (size_t)n * w->row_bytes;                             \
        __m256 acc[R][C];                                                                                \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                              \
            _Pragma("GCC unroll 8") for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();         \
        for (uint32_t k = 0; k < K; k += 8) {                                                            \
            __m256 wv[R];                                                                                \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                          \
                wv[r] = load_w(T, base + (size_t)r * w->row_bytes, k);                                   \
            _Pragma("GCC unroll 8") for (int c = 0; c < C; c++) {                                        \
                __m256 xv = _mm256_loadu_ps(x + (size_t)(b + (uint32_t)c) * ldx + k);                    \
                _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                      \
                    acc[r][c] = _mm256_fmadd_ps(wv[r], xv, acc[r][c]);                                   \
            }                                                                                            \
        }                                                                                                \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                              \
            _Pragma("GCC unroll 8") for (int c = 0; c < C; c++)                                          \
                y[(size_t)(b + (uint32_t)c) * ldy + n + (uint32_t)r] = hsum256(acc[r][c]);               \
    }

/* Q8_0 tiles walk whole 32-weight blocks so that each row's scale is
 * converted once per block; the arithmetic per weight is still
 * (float)q * d, then one FMA — the order of weight_at(). */
#define DEFINE_Q8_TILE(R, C)                                                                             \
    AVX2_TARGET __attribute__((noinline)) static void tile_q8_##R##x##C(                                 \
        const struct wmat *w, const float *x, size_t ldx, float *y, size_t ldy, uint32_t n, uint32_t b) \
    {                                                                                                    \
        uint32_t nb = w->cols / Q8_0_BLOCK;                                                              \
        const struct q8_0_block *rows[R];                                                                \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                              \
            rows[r] = (const struct q8_0_block *)((const char *)w->data + (size_t)(n + (uint32_t)r) * w->row_bytes); \
        __m256 acc[R][C];                                                                                \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                              \
            _Pragma("GCC unroll 8") for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();         \
        for (uint32_t blk = 0; blk < nb; blk++) {                                                        \
            __m256 d[R];                                                                                 \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                          \
                d[r] = _mm256_set1_ps(_cvtsh_ss(rows[r][blk].d));                                        \
            _Pragma("GCC unroll 4") for (uint32_t j = 0; j < 4; j++) {                                   \
                __m256 wv[R];                                                                            \
                _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                                    \
                    __m128i q = _mm_loadl_epi64((const __m128i *)(rows[r][blk].qs + 8 * j));             \
                    wv[r] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d[r]);            \
                }                                                                                        \
                uint32_t k = blk * Q8_0_BLOCK + 8 * j;                                                   \
                _Pragma("GCC unroll 8") for (int c = 0; c < C; c++) {                                    \
                    __m256 xv = _mm256_loadu_ps(x + (size_t)(b + (uint32_t)c) * ldx + k);                \
                    _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                  \
                        acc[r][c] = _mm256_fmadd_ps(wv[r], xv, acc[r][c]);                               \
                }                                                                                        \
            }                                                                                            \
        }                                                                                                \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                              \
            _Pragma("GCC unroll 8") for (int c = 0; c < C; c++)                                          \
                y[(size_t)(b + (uint32_t)c) * ldy + n + (uint32_t)r] = hsum256(acc[r][c]);               \
    }

/* Tile shapes: wide (RW rows x 4 batch rows) for batches, narrow (4 x 1) for
 * single rows, and 1-row remainders. */
#define DEFINE_TILES(T, TNAME, RW)   \
    DEFINE_TILE(T, TNAME, 4, 1)      \
    DEFINE_TILE(T, TNAME, 1, 1)      \
    DEFINE_TILE(T, TNAME, RW, 4)     \
    DEFINE_TILE(T, TNAME, 1, 4)      \
    DEFINE_TILE(T, TNAME, RW, 1)

DEFINE_TILES(WT_F32, f32, 3)
DEFINE_TILES(WT_F16, f16, 3)
DEFINE_Q8_TILE(4, 1)
DEFINE_Q8_TILE(1, 1)
DEFINE_Q8_TILE(2, 4)
DEFINE_Q8_TILE(1, 4)
DEFINE_Q8_TILE(2, 1)

typedef void (*tile_fn)(const struct wmat *, const float *, size_t, float *, size_t, uint32_t, uint32_t);

struct tile_set {
    uint32_t rw; /* rows of the wide tiles */
    tile_fn t4x1, t1x1, wide, t1x4, wide1;
};

static const struct tile_set tiles_f32 = {3, tile_f32_4x1, tile_f32_1x1, tile_f32_3x4, tile_f32_1x4, tile_f32_3x1};
static const struct tile_set tiles_f16 = {3, tile_f16_4x1, tile_f16_1x1, tile_f16_3x4, tile_f16_1x4, tile_f16_3x1};
static const struct tile_set tiles_q8 = {2, tile_q8_4x1, tile_q8_1x1, tile_q8_2x4, tile_q8_1x4, tile_q8_2x1};

static void matmul_avx2(const struct wmat *w, const float *x, size_t ldx, uint32_t B, float *y, size_t ldy,
                        uint32_t n0, uint32_t n1)
{
    const struct tile_set *ts = w->type == WT_F32 ? &tiles_f32 : w->type == WT_F16 ? &tiles_f16 : &tiles_q8;
    if (B < 4) {
        /* Few batch rows: memory-bound; four weight rows in flight per pass. */
        for (uint32_t b = 0; b < B; b++) {
            uint32_t n = n0;
            for (; n + 4 <= n1; n += 4)
                ts->t4x1(w, x, ldx, y, ldy, n, b);
            for (; n < n1; n++)
                ts->t1x1(w, x, ldx, y, ldy, n, b);
        }
        return;
    }
    uint32_t n = n0;
    for (; n + ts->rw <= n1; n += ts->rw) {
        uint32_t b = 0;
        for (; b + 4 <= B; b += 4)
            ts->wide(w, x, ldx, y, ldy, n, b);
        for (; b < B; b++)
            ts->wide1(w, x, ldx, y, ldy, n, b);
    }
    for (; n < n1; n++) {
        uint32_t b = 0;
        for (; b + 4 <= B; b += 4)
            ts->t1x4(w, x, ldx, y, ldy, n, b);
        for (; b < B; b++)
            ts->t1x1(w, x, ldx, y, ldy, n, b);
    }
}

AVX2_TARGET static float dot_avx2(const float *a, const float *b, uint32_t n)
{
    __m256 acc = _mm256_setzero_ps();
    for (uint32_t k = 0; k < n; k += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc);
    return hsum256(acc);
}

/* --- dispatch ------------------------------------------------------------------------ */

void kern_matmul(const struct wmat *w, const float *x, size_t ldx, uint32_t B, float *y, size_t ldy, uint32_t n0,
                 uint32_t n1)
{
    if (n0 >= n1 || B == 0)
        return;
    if (kern_isa() == KERN_AVX2)
        matmul_avx2(w, x, ldx, B, y, ldy, n0, n1);
    else
        matmul_scalar(w, x, ldx, B, y, ldy, n0, n1);
}

float kern_dot(const float *a, const float *b, uint32_t n)
{
    return kern_isa() == KERN_AVX2 ? dot_avx2(a, b, n) : dot_scalar(a, b, n);
}

void kern_axpy(float a, const float *x, float *y, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        y[i] = fmaf(a, x[i], y[i]);
}

void kern_rmsnorm(float *out, const float *x, const float *w, uint32_t n, float eps)
{
    float ss = kern_dot(x, x, n);
    float scale = 1.0f / sqrtf(ss / (float)n + eps);
    for (uint32_t i = 0; i < n; i++)
        out[i] = x[i] * scale * w[i];
}

void kern_row(const struct wmat *w, uint32_t r, float *out)
{
    const void *row = (const char *)w->data + (size_t)r * w->row_bytes;
    for (uint32_t k = 0; k < w->cols; k++)
        out[k] = weight_at(w, row, k);
}
