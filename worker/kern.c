/* kern.c — see kern.h.
 *
 * The AVX2 matmul walks the output in tiles of one packed group (4 weight
 * rows) by C batch rows, keeping 4*C accumulators (one __m256 each) in
 * registers: per slice of eight k it loads C activation vectors and 4 weight
 * vectors (converted to float) and issues 4*C FMAs.  A group's weights are
 * read from memory once per batch and reused for every batch row, which is
 * what makes batched decoding cheap.  Tiles only change which elements are
 * computed together, never how one is.
 *
 * F32 with AVX-512 from F32_BLOCKED_MIN_ROWS batch rows has a kernel of its
 * own (matmul_f32_512): two groups by six batch rows in 24 registers, over
 * column blocks that stay in L1 — the same lanes and the same order, so the
 * same bits, at about three quarters of the AVX-512 FMA peak where the AVX2
 * tiles reach under half of it (bench-engine's kernel table).
 */
#include "kern.h"

#include <assert.h>
#include <immintrin.h>
#include <pthread.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "common/err.h"
#include "quant.h"
#include "vexp.h"

#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))
#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))

static enum kern_isa isa_in_use = (enum kern_isa)-1;

static bool cpu_has(enum kern_isa isa)
{
    __builtin_cpu_init();
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (isa == KERN_AVX2)
        return avx2;
    if (isa == KERN_AVX512)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512vnni");
    return isa == KERN_SCALAR;
}

enum kern_isa kern_isa(void)
{
    if (isa_in_use == (enum kern_isa)-1)
        isa_in_use = cpu_has(KERN_AVX512) ? KERN_AVX512 : cpu_has(KERN_AVX2) ? KERN_AVX2 : KERN_SCALAR;
    return isa_in_use;
}

bool kern_isa_supported(enum kern_isa isa) { return cpu_has(isa); }

enum kern_isa kern_set_isa(enum kern_isa isa)
{
    enum kern_isa old = kern_isa();
    if (!cpu_has(isa))
        return old;
    isa_in_use = isa;
    return old;
}

const char *kern_isa_name(enum kern_isa isa)
{
    return isa == KERN_AVX512 ? "avx512" : isa == KERN_AVX2 ? "avx2" : "scalar";
}

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
    case WT_BF16: return quant_bf16_to_f32(((const uint16_t *)row)[k]);
    default: return 0; /* the block types never come here (quant_matmul) */
    }
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

/* --- packing ------------------------------------------------------------------------- */

static bool is_int_type(enum wtype t) { return quant_act_kind(t) != QACT_NONE; }

int kern_pack(const struct wmat *w, struct kmat *out)
{
    memset(out, 0, sizeof *out);
    uint32_t bs = quant_block(w->type);
    if (!bs || w->cols % (bs > 8 ? bs : 8u) || w->rows == 0)
        return RILL_E_UNSUPPORTED;
    out->src = w;
    out->type = w->type;
    out->rows = w->rows;
    out->cols = w->cols;
    out->groups = (w->rows + KERN_GROUP - 1) / KERN_GROUP;
    if (is_int_type(w->type))
        out->group_bytes = KERN_GROUP * w->row_bytes;
    else
        out->group_bytes = (size_t)KERN_GROUP * w->cols * (w->type == WT_F32 ? 4 : 2);
    out->bytes = out->groups * out->group_bytes;
    /* Anonymous memory, huge pages when the kernel gives them: fewer TLB
     * misses on a stream of hundreds of megabytes. */
    void *p = mmap(NULL, out->bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return RILL_E_NOMEM;
    madvise(p, out->bytes, MADV_HUGEPAGE);
    out->data = p;
    if (is_int_type(w->type)) {
        /* Pairs where the AVX-512 decode kernels will read them; else the
         * file's layout (AVX2 reads a row at a time: one stream). */
        out->pairs = kern_isa() >= KERN_AVX512;
        if (out->pairs)
            quant_pack_pairs(w->type, w->data, w->row_bytes, w->rows, p); /* the padding rows stay zero */
        else
            memcpy(p, w->data, (size_t)w->rows * w->row_bytes);
        return 0;
    }
    size_t esz = w->type == WT_F32 ? 4 : 2;
    for (uint32_t g = 0; g < out->groups; g++) {
        unsigned char *gp = (unsigned char *)p + g * out->group_bytes;
        for (uint32_t r = 0; r < KERN_GROUP; r++) {
            uint32_t row = g * KERN_GROUP + r;
            if (row >= w->rows)
                continue; /* stays zero */
            const unsigned char *src = (const unsigned char *)w->data + (size_t)row * w->row_bytes;
            for (uint32_t sl = 0; sl < w->cols / 8; sl++)
                memcpy(gp + ((size_t)sl * KERN_GROUP + r) * 8 * esz, src + (size_t)sl * 8 * esz, 8 * esz);
        }
    }
    return 0;
}

void kern_unpack_free(struct kmat *m)
{
    if (m && m->data)
        munmap(m->data, m->bytes);
    if (m)
        memset(m, 0, sizeof *m);
}

/* --- AVX2 tiles over packed groups -------------------------------------------------------- */

/* Eight weights of row r of a group at slice s, as floats. */
AVX2_TARGET static inline __m256 load_slice(enum wtype t, const unsigned char *gp, uint32_t s, int r)
{
    if (t == WT_F32)
        return _mm256_load_ps((const float *)gp + ((size_t)s * KERN_GROUP + (uint32_t)r) * 8);
    if (t == WT_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)gp + ((size_t)s * KERN_GROUP + (uint32_t)r) * 8))),
            16));
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)gp + ((size_t)s * KERN_GROUP + (uint32_t)r) * 8)));
}

/* One group (4 weight rows) against C batch rows starting at b; writes the
 * first `nr` rows.  F32 and F16. */
#define DEFINE_TILE(T, TNAME, C)                                                                         \
    AVX2_TARGET __attribute__((noinline)) static void tile_##TNAME##_##C(                                \
        const struct kmat *m, const float *x, size_t ldx, float *y, size_t ldy, uint32_t g, uint32_t b,  \
        uint32_t nr)                                                                                     \
    {                                                                                                    \
        const unsigned char *gp = (const unsigned char *)m->data + (size_t)g * m->group_bytes;          \
        uint32_t S = m->cols / 8;                                                                        \
        __m256 acc[KERN_GROUP][C];                                                                       \
        _Pragma("GCC unroll 4") for (int r = 0; r < KERN_GROUP; r++)                                     \
            _Pragma("GCC unroll 4") for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();         \
        for (uint32_t s = 0; s < S; s++) {                                                               \
            __m256 xv[C];                                                                                \
            _Pragma("GCC unroll 4") for (int c = 0; c < C; c++)                                          \
                xv[c] = _mm256_loadu_ps(x + (size_t)(b + (uint32_t)c) * ldx + (size_t)s * 8);            \
            _Pragma("GCC unroll 4") for (int r = 0; r < KERN_GROUP; r++) {                               \
                __m256 wv = load_slice(T, gp, s, r);                                                     \
                _Pragma("GCC unroll 4") for (int c = 0; c < C; c++)                                      \
                    acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);                                   \
            }                                                                                            \
        }                                                                                                \
        uint32_t n = g * KERN_GROUP;                                                                     \
        _Pragma("GCC unroll 4") for (int r = 0; r < KERN_GROUP; r++)                                     \
            if ((uint32_t)r < nr)                                                                        \
                _Pragma("GCC unroll 4") for (int c = 0; c < C; c++)                                      \
                    y[(size_t)(b + (uint32_t)c) * ldy + n + (uint32_t)r] = hsum256(acc[r][c]);           \
    }

DEFINE_TILE(WT_F32, f32, 1)
DEFINE_TILE(WT_F32, f32, 2)
DEFINE_TILE(WT_F32, f32, 3)
DEFINE_TILE(WT_F16, f16, 1)
DEFINE_TILE(WT_F16, f16, 2)
DEFINE_TILE(WT_F16, f16, 3)
DEFINE_TILE(WT_BF16, bf16, 1)
DEFINE_TILE(WT_BF16, bf16, 2)
DEFINE_TILE(WT_BF16, bf16, 3)

typedef void (*tile_fn)(const struct kmat *, const float *, size_t, float *, size_t, uint32_t, uint32_t, uint32_t);

struct tile_set {
    uint32_t wide;       /* batch rows of the wide tile */
    tile_fn one, two, many; /* two: for a remainder of 2 rows */
};

static const struct tile_set tiles_f32 = {3, tile_f32_1, tile_f32_2, tile_f32_3};
static const struct tile_set tiles_f16 = {3, tile_f16_1, tile_f16_2, tile_f16_3};
static const struct tile_set tiles_bf16 = {3, tile_bf16_1, tile_bf16_2, tile_bf16_3};

/* --- batched F16 / BF16: convert a block once, reuse it for every batch tile ------ */

/* A block of columns of a few groups, converted to floats, stays in L1
 * while every batch tile runs over it; F16 and BF16 weights are converted
 * once per pass of activation rows instead of once per pair of batch rows.
 * The accumulators of a (group, batch tile) stay in memory between blocks; each
 * lane still sums its products in increasing k with the same arithmetic,
 * so the result is bit for bit that of the direct tiles. */

#define DEFINE_BLOCK_TILE(C)                                                                             \
    AVX2_TARGET __attribute__((noinline)) static void btile_##C(const float *w, uint32_t ns, const float *x, \
                                                                size_t ldx, float *acc)                  \
    {                                                                                                    \
        __m256 a[KERN_GROUP][C];                                                                         \
        _Pragma("GCC unroll 4") for (int c = 0; c < C; c++)                                              \
            _Pragma("GCC unroll 4") for (int r = 0; r < KERN_GROUP; r++)                                 \
                a[r][c] = _mm256_load_ps(acc + ((size_t)c * KERN_GROUP + (size_t)r) * 8);                \
        for (uint32_t s = 0; s < ns; s++) {                                                              \
            __m256 xv[C];                                                                                \
            _Pragma("GCC unroll 4") for (int c = 0; c < C; c++)                                          \
                xv[c] = _mm256_loadu_ps(x + (size_t)c * ldx + (size_t)s * 8);                            \
            _Pragma("GCC unroll 4") for (int r = 0; r < KERN_GROUP; r++) {                               \
                __m256 wv = _mm256_load_ps(w + ((size_t)s * KERN_GROUP + (size_t)r) * 8);                \
                _Pragma("GCC unroll 4") for (int c = 0; c < C; c++)                                      \
                    a[r][c] = _mm256_fmadd_ps(wv, xv[c], a[r][c]);                                       \
            }                                                                                            \
        }                                                                                                \
        _Pragma("GCC unroll 4") for (int c = 0; c < C; c++)                                              \
            _Pragma("GCC unroll 4") for (int r = 0; r < KERN_GROUP; r++)                                 \
                _mm256_store_ps(acc + ((size_t)c * KERN_GROUP + (size_t)r) * 8, a[r][c]);                \
    }

DEFINE_BLOCK_TILE(1)
DEFINE_BLOCK_TILE(2)
DEFINE_BLOCK_TILE(3)

/* The weights of group g, columns [k0, k0 + 8*ns), converted to floats in
 * the F32 pack's layout ([slice][row][8]), exactly as the direct tiles
 * convert them. */
AVX2_TARGET static void block_weights(const struct kmat *m, uint32_t g, uint32_t k0, uint32_t ns, float *buf)
{
    const unsigned char *gp = (const unsigned char *)m->data + (size_t)g * m->group_bytes;
    for (uint32_t s = 0; s < ns; s++)
        for (int r = 0; r < KERN_GROUP; r++)
            _mm256_store_ps(buf + ((size_t)s * KERN_GROUP + (size_t)r) * 8, load_slice(m->type, gp, k0 / 8 + s, r));
}

/* AVX-512 block tiles: rows r and r+1 of the group share a register (the
 * pack puts their slices side by side), the activations' eight floats are
 * in both halves; each lane does the AVX2 tile's FMA, so the bits are the
 * same, with half the instructions. */
#define DEFINE_BLOCK_TILE512(C)                                                                          \
    AVX512_TARGET __attribute__((noinline)) static void btile512_##C(const float *w, uint32_t ns,         \
                                                                     const float *x, size_t ldx, float *acc) \
    {                                                                                                    \
        __m512 a[2][C];                                                                                  \
        _Pragma("GCC unroll 8") for (int c = 0; c < C; c++)                                              \
            _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++)                                          \
                a[h][c] = _mm512_load_ps(acc + ((size_t)c * KERN_GROUP + 2 * (size_t)h) * 8);            \
        for (uint32_t s = 0; s < ns; s++) {                                                              \
            __m512 w0 = _mm512_load_ps(w + (size_t)s * KERN_GROUP * 8);                                  \
            __m512 w1 = _mm512_load_ps(w + (size_t)s * KERN_GROUP * 8 + 16);                             \
            _Pragma("GCC unroll 8") for (int c = 0; c < C; c++) {                                        \
                __m512 xv = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + (size_t)c * ldx + (size_t)s * 8)); \
                a[0][c] = _mm512_fmadd_ps(w0, xv, a[0][c]);                                              \
                a[1][c] = _mm512_fmadd_ps(w1, xv, a[1][c]);                                              \
            }                                                                                            \
        }                                                                                                \
        _Pragma("GCC unroll 8") for (int c = 0; c < C; c++)                                              \
            _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++)                                          \
                _mm512_store_ps(acc + ((size_t)c * KERN_GROUP + 2 * (size_t)h) * 8, a[h][c]);            \
    }

DEFINE_BLOCK_TILE512(1)
DEFINE_BLOCK_TILE512(2)
DEFINE_BLOCK_TILE512(3)
DEFINE_BLOCK_TILE512(4)
DEFINE_BLOCK_TILE512(5)
DEFINE_BLOCK_TILE512(6)

typedef void (*btile_fn)(const float *w, uint32_t ns, const float *x, size_t ldx, float *acc);
static const btile_fn btiles512[7] = {NULL, btile512_1, btile512_2, btile512_3, btile512_4, btile512_5, btile512_6};
static const btile_fn btiles256[4] = {NULL, btile_1, btile_2, btile_3};

/* The blocking of the converted path: CB columns of CG groups are converted
 * at a time (CG * 4 rows x CB floats = 16 KiB, in L1), and run against CP
 * activation rows (their accumulators, CG * CP * 128 bytes, in L1/L2) before
 * the next columns; so an activation tile is read from cache once for CG
 * groups instead of once for each, and no row's activations are read from
 * farther than L2 more than once per CG groups. */
#define CB 256
#define CG 4
#define CP 64

/* Per-thread scratch, freed when its thread ends (a key's destructor: pools
 * come and go). */
static _Thread_local float tl_acc[CG * CP * KERN_GROUP * 8] __attribute__((aligned(64)));
static _Thread_local float tl_wbuf[2 * 1024 * KERN_GROUP] __attribute__((aligned(64))); /* AVX-512: XB below */

/* AVX2 (AVX-512 has matmul_converted_512()). */
AVX2_TARGET static void matmul_converted(const struct kmat *m, const float *x, size_t ldx, uint32_t B, float *y,
                                         size_t ldy, uint32_t g0, uint32_t g1, uint32_t n1)
{
    uint32_t K = m->cols;
    const size_t gacc = (size_t)CP * KERN_GROUP * 8; /* one group's accumulators */
    for (uint32_t gb = g0; gb < g1; gb += CG) {
        uint32_t ng = g1 - gb < CG ? g1 - gb : CG;
        for (uint32_t p0 = 0; p0 < B; p0 += CP) {
            uint32_t np = B - p0 < CP ? B - p0 : CP;
            memset(tl_acc, 0, sizeof tl_acc);
            for (uint32_t k0 = 0; k0 < K; k0 += CB) {
                uint32_t ns = (K - k0 < CB ? K - k0 : CB) / 8;
                for (uint32_t gi = 0; gi < ng; gi++)
                    block_weights(m, gb + gi, k0, ns, tl_wbuf + (size_t)gi * CB * KERN_GROUP);
                for (uint32_t b = 0; b < np; b += 3) {
                    uint32_t c = np - b < 3 ? np - b : 3;
                    const float *xb = x + (size_t)(p0 + b) * ldx + k0;
                    for (uint32_t gi = 0; gi < ng; gi++)
                        btiles256[c](tl_wbuf + (size_t)gi * CB * KERN_GROUP, ns, xb, ldx,
                                     tl_acc + gi * gacc + (size_t)b * KERN_GROUP * 8);
                }
            }
            for (uint32_t gi = 0; gi < ng; gi++) {
                uint32_t n = (gb + gi) * KERN_GROUP, nr = n1 - n < KERN_GROUP ? n1 - n : KERN_GROUP;
                for (uint32_t b = 0; b < np; b++)
                    for (uint32_t r = 0; r < nr; r++)
                        y[(size_t)(p0 + b) * ldy + n + r] =
                            hsum256(_mm256_load_ps(tl_acc + gi * gacc + ((size_t)b * KERN_GROUP + r) * 8));
            }
        }
    }
}

/* hsum256() of eight vectors at once: lane j of the result is
 * reduce8(a[j]), with the same additions in the same order. */
AVX2_TARGET static inline __m256 reduce8x8(const __m256 a[8])
{
    /* (l0+l4, l1+l5, l2+l6, l3+l7) of two vectors per register */
    __m256 t01 = _mm256_add_ps(_mm256_permute2f128_ps(a[0], a[1], 0x20), _mm256_permute2f128_ps(a[0], a[1], 0x31));
    __m256 t23 = _mm256_add_ps(_mm256_permute2f128_ps(a[2], a[3], 0x20), _mm256_permute2f128_ps(a[2], a[3], 0x31));
    __m256 t45 = _mm256_add_ps(_mm256_permute2f128_ps(a[4], a[5], 0x20), _mm256_permute2f128_ps(a[4], a[5], 0x31));
    __m256 t67 = _mm256_add_ps(_mm256_permute2f128_ps(a[6], a[7], 0x20), _mm256_permute2f128_ps(a[6], a[7], 0x31));
    /* (a0+a2, a1+a3): [0 0 2 2 | 1 1 3 3] and [4 4 6 6 | 5 5 7 7] */
    __m256 b0 = _mm256_add_ps(_mm256_shuffle_ps(t01, t23, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm256_shuffle_ps(t01, t23, _MM_SHUFFLE(3, 2, 3, 2)));
    __m256 b1 = _mm256_add_ps(_mm256_shuffle_ps(t45, t67, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm256_shuffle_ps(t45, t67, _MM_SHUFFLE(3, 2, 3, 2)));
    /* b0+b1: [s0 s2 s4 s6 | s1 s3 s5 s7], then in order */
    __m256 c = _mm256_add_ps(_mm256_shuffle_ps(b0, b1, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm256_shuffle_ps(b0, b1, _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm256_permutevar8x32_ps(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* --- F32 with AVX-512: a register-blocked kernel straight on the pack ------------ */

/* reduce8x8() of eight rows held two to a register (a0 = rows 0 and 1, ...,
 * a3 = rows 6 and 7, as the pair tiles keep them): lane i of the result is
 * reduce8() of row i, with the same additions — (l0+l4 .. l3+l7), then
 * (a0+a2, a1+a3), then b0+b1 — in nine shuffles and four adds instead of
 * the twenty-nine operations of extracting the halves first. */
AVX512_TARGET static inline __m256 reduce_pairs8(__m512 a0, __m512 a1, __m512 a2, __m512 a3)
{
    /* one row's l0+l4 .. l3+l7 per 128-bit lane: rows 0-3, and 4-7 */
    __m512 t01 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, _MM_SHUFFLE(2, 0, 2, 0)),
                               _mm512_shuffle_f32x4(a0, a1, _MM_SHUFFLE(3, 1, 3, 1)));
    __m512 t23 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, _MM_SHUFFLE(2, 0, 2, 0)),
                               _mm512_shuffle_f32x4(a2, a3, _MM_SHUFFLE(3, 1, 3, 1)));
    /* lane k: rows k and k+4's (a0+a2, a1+a3) */
    __m512 b = _mm512_add_ps(_mm512_shuffle_ps(t01, t23, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(t01, t23, _MM_SHUFFLE(3, 2, 3, 2)));
    /* lane k: rows k and k+4's b0+b1 (twice) */
    __m512 c = _mm512_add_ps(_mm512_shuffle_ps(b, b, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_ps(b, b, _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_castps512_ps256(
        _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0), c));
}

/* Two groups (8 weight rows, four registers of two rows each) against C
 * batch rows: 4*C accumulators, and per slice of eight k four weight loads
 * and C activation loads for 4*C FMAs, so the FMA units, not the loads, set
 * the pace.  wa and wb are the groups' packed slices (wb = wa + gstride);
 * acc holds group 0's accumulators at acc + c*32 and group 1's at
 * acc + gacc + c*32, read unless this is the first column block (then they
 * start at zero); when pf is not NULL, the line at pf + 64*s is prefetched
 * with slice s.  With y (the last column block, all eight rows wanted), the
 * eight outputs of batch row c go to y + c*ldy instead of acc.  Each lane does btile512's FMA in the same order, so
 * the bits are those of every other path. */
#define DEFINE_PAIR_TILE512(C)                                                                           \
    AVX512_TARGET __attribute__((noinline)) static void ptile512_##C(const float *wa, size_t gstride,   \
                                                                     uint32_t ns, const float *x,        \
                                                                     size_t ldx, float *acc, size_t gacc, \
                                                                     const char *pf, bool first,         \
                                                                     float *y, size_t ldy)               \
    {                                                                                                    \
        const float *wb = wa + gstride;                                                                  \
        __m512 a[4][C];                                                                                  \
        _Pragma("GCC unroll 8") for (int c = 0; c < C; c++)                                              \
            _Pragma("GCC unroll 4") for (int h = 0; h < 4; h++)                                          \
                a[h][c] = first ? _mm512_setzero_ps()                                                    \
                                : _mm512_load_ps(acc + (size_t)(h / 2) * gacc +                          \
                                                 ((size_t)c * KERN_GROUP + 2 * (size_t)(h % 2)) * 8);    \
        for (uint32_t s = 0; s < ns; s++) {                                                              \
            __m512 w[4];                                                                                 \
            w[0] = _mm512_load_ps(wa + (size_t)s * KERN_GROUP * 8);                                      \
            w[1] = _mm512_load_ps(wa + (size_t)s * KERN_GROUP * 8 + 16);                                 \
            w[2] = _mm512_load_ps(wb + (size_t)s * KERN_GROUP * 8);                                      \
            w[3] = _mm512_load_ps(wb + (size_t)s * KERN_GROUP * 8 + 16);                                 \
            if (pf)                                                                                      \
                _mm_prefetch(pf + (size_t)s * 64, _MM_HINT_T0);                                          \
            _Pragma("GCC unroll 8") for (int c = 0; c < C; c++) {                                        \
                __m512 xv = _mm512_broadcast_f32x8(_mm256_loadu_ps(x + (size_t)c * ldx + (size_t)s * 8)); \
                _Pragma("GCC unroll 4") for (int h = 0; h < 4; h++)                                      \
                    a[h][c] = _mm512_fmadd_ps(w[h], xv, a[h][c]);                                        \
            }                                                                                            \
        }                                                                                                \
        if (y) {                                                                                         \
            _Pragma("GCC unroll 8") for (int c = 0; c < C; c++)                                          \
                _mm256_storeu_ps(y + (size_t)c * ldy, reduce_pairs8(a[0][c], a[1][c], a[2][c], a[3][c])); \
            return;                                                                                      \
        }                                                                                                \
        _Pragma("GCC unroll 8") for (int c = 0; c < C; c++)                                              \
            _Pragma("GCC unroll 4") for (int h = 0; h < 4; h++)                                          \
                _mm512_store_ps(acc + (size_t)(h / 2) * gacc + ((size_t)c * KERN_GROUP + 2 * (size_t)(h % 2)) * 8, \
                                a[h][c]);                                                                \
    }

DEFINE_PAIR_TILE512(1)
DEFINE_PAIR_TILE512(2)
DEFINE_PAIR_TILE512(3)
DEFINE_PAIR_TILE512(4)
DEFINE_PAIR_TILE512(5)
DEFINE_PAIR_TILE512(6)

typedef void (*ptile_fn)(const float *wa, size_t gstride, uint32_t ns, const float *x, size_t ldx, float *acc,
                         size_t gacc, const char *pf, bool first, float *y, size_t ldy);
static const ptile_fn ptiles512[7] = {NULL, ptile512_1, ptile512_2, ptile512_3, ptile512_4, ptile512_5, ptile512_6};

/* The blocking: FB columns of FG groups (2 x 4 rows x 1024 floats = 32 KiB,
 * read from the pack in place, in L1) run against every tile of up to FP
 * activation rows (from L2) before the next columns; the accumulators wait
 * in tl_acc between column blocks.  Long blocks keep the accumulators'
 * loads and stores, and each call's setup, small next to its FMAs (chosen
 * by measurement on Zen 5: 256 x 8 groups, 512 x 4 and 2048 x 2 were
 * slower or no faster). */
#define FB 1024
#define FG 2
#define FP 64
_Static_assert(FG * FP <= CG * CP, "tl_acc holds the F32 kernel's accumulators");

/* Batch rows of the next tile: six, but 8 as 4 + 4 (a tile of 2 wastes
 * more than two of 4). */
static inline uint32_t tile_rows(uint32_t left) { return left == 8 ? 4 : left < 6 ? left : 6; }

AVX512_TARGET static void matmul_f32_512(const struct kmat *m, const float *x, size_t ldx, uint32_t B, float *y,
                                         size_t ldy, uint32_t g0, uint32_t g1, uint32_t n1)
{
    uint32_t K = m->cols;
    const size_t gacc = (size_t)FP * KERN_GROUP * 8, gstride = m->group_bytes / sizeof(float);
    for (uint32_t gb = g0; gb < g1; gb += FG) {
        uint32_t ng = g1 - gb < FG ? g1 - gb : FG;
        const float *wg = (const float *)m->data + (size_t)gb * gstride;
        for (uint32_t p0 = 0; p0 < B; p0 += FP) {
            uint32_t np = B - p0 < FP ? B - p0 : FP;
            if (ng % 2) /* a lone group's tiles start from memory */
                memset(tl_acc + (ng - 1) * gacc, 0, (size_t)np * KERN_GROUP * 8 * sizeof(float));
            /* The next groups' weights (one stretch of memory) are prefetched
             * a line per slice over every tile of the first pass, so that
             * they arrive while these compute instead of all at once. */
            const char *pf = (const char *)(wg + FG * gstride), *pf_end = pf + FG * m->group_bytes;
            if (p0 || gb + FG >= g1)
                pf = pf_end;
            uint32_t n = gb * KERN_GROUP;
            bool whole = ng == 2 && n1 - n >= 2 * KERN_GROUP; /* the pair's outputs go straight to y */
            for (uint32_t k0 = 0; k0 < K; k0 += FB) {
                uint32_t ns = (K - k0 < FB ? K - k0 : FB) / 8;
                bool last = k0 + FB >= K;
                for (uint32_t b = 0, c; b < np; b += c) {
                    c = tile_rows(np - b);
                    const float *xb = x + (size_t)(p0 + b) * ldx + k0;
                    uint32_t gi = 0;
                    for (; gi + 2 <= ng; gi += 2) {
                        ptiles512[c](wg + gi * gstride + (size_t)k0 * KERN_GROUP, gstride, ns, xb, ldx,
                                     tl_acc + gi * gacc + (size_t)b * KERN_GROUP * 8, gacc, pf < pf_end ? pf : NULL,
                                     k0 == 0, whole && last ? y + (size_t)(p0 + b) * ldy + n : NULL, ldy);
                        pf += (size_t)ns * 64;
                    }
                    if (gi < ng)
                        btiles512[c](wg + gi * gstride + (size_t)k0 * KERN_GROUP, ns, xb, ldx,
                                     tl_acc + gi * gacc + (size_t)b * KERN_GROUP * 8);
                }
            }
            if (whole)
                continue;
            for (uint32_t gi = 0; gi < ng; gi++) {
                uint32_t nr = n1 - n - gi * KERN_GROUP < KERN_GROUP ? n1 - n - gi * KERN_GROUP : KERN_GROUP;
                for (uint32_t b = 0; b < np; b++)
                    for (uint32_t r = 0; r < nr; r++)
                        y[(size_t)(p0 + b) * ldy + n + gi * KERN_GROUP + r] =
                            hsum256(_mm256_load_ps(tl_acc + gi * gacc + ((size_t)b * KERN_GROUP + r) * 8));
            }
        }
    }
}


/* F16 and BF16 with AVX-512: the F32 kernel's blocking on weights
 * converted to floats, run XB columns at a time (2 x 4 rows x 1024 floats
 * = 32 KiB, in L1) through its pair tile (24 accumulators for 6 batch rows).
 * With more than one pass of activation rows, a few pairs of groups are
 * converted whole (up to 4 x 2 x 4 rows x K floats, 96 KiB at K = 768, in
 * L2) once for every pass, and each pass runs all of them, so that its
 * activations are read from L2 for every pair but the first, not from L3
 * for each.  Each lane does the same conversion and the same FMAs in
 * increasing k as the direct tiles, and the same final reduction, so the
 * bits are theirs. */
#define XB 1024
_Static_assert(2 * XB * KERN_GROUP <= sizeof tl_wbuf / sizeof(float), "tl_wbuf holds two converted groups");

/* This thread's room for converted pairs, grown on demand and freed with
 * the thread; NULL when out of memory (then each pair is converted again
 * for every pass, in tl_wbuf). */
static _Thread_local float *tl_pair;
static _Thread_local size_t tl_pair_floats;
static pthread_key_t pair_key;
static pthread_once_t pair_once = PTHREAD_ONCE_INIT;

static void pair_key_make(void) { pthread_key_create(&pair_key, free); }

static float *pair_room(size_t floats)
{
    if (tl_pair_floats >= floats)
        return tl_pair;
    pthread_once(&pair_once, pair_key_make);
    free(tl_pair);
    tl_pair = aligned_alloc(64, floats * sizeof(float));
    tl_pair_floats = tl_pair ? floats : 0;
    pthread_setspecific(pair_key, tl_pair);
    return tl_pair;
}

AVX512_TARGET static void matmul_converted_512(const struct kmat *m, const float *x, size_t ldx, uint32_t B,
                                               float *y, size_t ldy, uint32_t g0, uint32_t g1, uint32_t n1)
{
    uint32_t K = m->cols;
    /* Pairs converted together: up to 4, fewer for long rows (L2). */
    uint32_t npairs = K <= 1024 ? 4 : K <= 2048 ? 2 : 1;
    float *wbuf = B > FP ? pair_room((size_t)npairs * 2 * KERN_GROUP * K) : NULL;
    if (!wbuf)
        npairs = 1;
    const size_t gacc = (size_t)FP * KERN_GROUP * 8;
    const size_t wstride = (wbuf ? (size_t)K : (size_t)XB) * KERN_GROUP; /* group 1 after group 0 */
    for (uint32_t gs = g0; gs < g1; gs += 2 * npairs) {
        uint32_t gend = g1 - gs < 2 * npairs ? g1 : gs + 2 * npairs;
        for (uint32_t p0 = 0; p0 < B; p0 += FP) {
            uint32_t np = B - p0 < FP ? B - p0 : FP;
            for (uint32_t gb = gs, pi = 0; gb < gend; gb += 2, pi++) {
                uint32_t ng = gend - gb < 2 ? gend - gb : 2, n = gb * KERN_GROUP;
                bool whole = ng == 2 && n1 - n >= 2 * KERN_GROUP; /* the pair's outputs go straight to y */
                if (ng % 2) /* a lone group's tiles start from memory */
                    memset(tl_acc, 0, (size_t)np * KERN_GROUP * 8 * sizeof(float));
                /* The weights of the pair as many groups ahead are prefetched a
                 * line per slice over the tiles of the last pass (earlier,
                 * the activations streaming through would evict them again):
                 * its conversion then reads them from cache, not memory. */
                const char *pf = (const char *)m->data + (size_t)(gb + 2 * npairs) * m->group_bytes,
                           *pf_end = pf + 2 * m->group_bytes;
                if (p0 + FP < B || gb + 2 * npairs >= g1)
                    pf = pf_end;
                for (uint32_t k0 = 0; k0 < K; k0 += XB) {
                    uint32_t ns = (K - k0 < XB ? K - k0 : XB) / 8;
                    bool last = k0 + XB >= K;
                    float *w = wbuf ? wbuf + pi * 2 * wstride + (size_t)k0 * KERN_GROUP : tl_wbuf;
                    if (p0 == 0 || !wbuf)
                        for (uint32_t gi = 0; gi < ng; gi++)
                            block_weights(m, gb + gi, k0, ns, w + gi * wstride);
                    for (uint32_t b = 0, c; b < np; b += c) {
                        c = tile_rows(np - b);
                        const float *xb = x + (size_t)(p0 + b) * ldx + k0;
                        if (ng == 2) {
                            ptiles512[c](w, wstride, ns, xb, ldx, tl_acc + (size_t)b * KERN_GROUP * 8, gacc,
                                         pf < pf_end ? pf : NULL, k0 == 0,
                                         whole && last ? y + (size_t)(p0 + b) * ldy + n : NULL, ldy);
                            pf += (size_t)ns * 64;
                        } else
                            btiles512[c](w, ns, xb, ldx, tl_acc + (size_t)b * KERN_GROUP * 8);
                    }
                }
                if (whole)
                    continue;
                for (uint32_t gi = 0; gi < ng; gi++) {
                    uint32_t nr = n1 - n - gi * KERN_GROUP < KERN_GROUP ? n1 - n - gi * KERN_GROUP : KERN_GROUP;
                    for (uint32_t b = 0; b < np; b++)
                        for (uint32_t r = 0; r < nr; r++)
                            y[(size_t)(p0 + b) * ldy + n + gi * KERN_GROUP + r] =
                                hsum256(_mm256_load_ps(tl_acc + gi * gacc + ((size_t)b * KERN_GROUP + r) * 8));
                }
            }
        }
    }
}

/* From this many batch rows the blocked F32 kernel beats the direct tiles. */
#define F32_BLOCKED_MIN_ROWS 4

/* From this many batch rows, converting F16 / BF16 weights once per step
 * beats converting them in every tile (measured: bench-engine). */
#define CONVERT_MIN_ROWS 4

static void matmul_avx2(const struct kmat *m, const float *x, size_t ldx, uint32_t B, float *y, size_t ldy,
                        uint32_t n0, uint32_t n1)
{
    if (m->type == WT_F32 && B >= F32_BLOCKED_MIN_ROWS && kern_isa() >= KERN_AVX512) {
        matmul_f32_512(m, x, ldx, B, y, ldy, n0 / KERN_GROUP, (n1 + KERN_GROUP - 1) / KERN_GROUP, n1);
        return;
    }
    if (m->type != WT_F32 && B >= CONVERT_MIN_ROWS && kern_isa() >= KERN_AVX512) {
        matmul_converted_512(m, x, ldx, B, y, ldy, n0 / KERN_GROUP, (n1 + KERN_GROUP - 1) / KERN_GROUP, n1);
        return;
    }
    if (m->type != WT_F32 && B >= CONVERT_MIN_ROWS) {
        matmul_converted(m, x, ldx, B, y, ldy, n0 / KERN_GROUP, (n1 + KERN_GROUP - 1) / KERN_GROUP, n1);
        return;
    }
    const struct tile_set *ts = m->type == WT_F32    ? &tiles_f32
                                : m->type == WT_F16  ? &tiles_f16
                                                     : &tiles_bf16;
    uint32_t g0 = n0 / KERN_GROUP, g1 = (n1 + KERN_GROUP - 1) / KERN_GROUP;
    for (uint32_t g = g0; g < g1; g++) {
        uint32_t nr = n1 - g * KERN_GROUP < KERN_GROUP ? n1 - g * KERN_GROUP : KERN_GROUP;
        uint32_t b = 0;
        for (; b + ts->wide <= B; b += ts->wide)
            ts->many(m, x, ldx, y, ldy, g, b, nr);
        if (B - b == 2) {
            ts->two(m, x, ldx, y, ldy, g, b, nr);
            b += 2;
        }
        for (; b < B; b++)
            ts->one(m, x, ldx, y, ldy, g, b, nr);
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

static void matmul_float(const struct kmat *m, const float *x, size_t ldx, uint32_t B, float *y, size_t ldy,
                         uint32_t n0, uint32_t n1)
{
    if (kern_isa() >= KERN_AVX2)
        matmul_avx2(m, x, ldx, B, y, ldy, n0, n1);
    else
        matmul_scalar(m->src, x, ldx, B, y, ldy, n0, n1);
}

/* This thread's activations for kern_matmul() of the integer types, freed
 * with the thread like the accumulators. */
static _Thread_local struct quant_act *tl_act;
static pthread_key_t act_key;
static pthread_once_t act_once = PTHREAD_ONCE_INIT;

static void act_free(void *p)
{
    quant_act_free(p);
    free(p);
}
static void act_key_make(void) { pthread_key_create(&act_key, act_free); }

void kern_matmul(const struct kmat *m, const float *x, size_t ldx, uint32_t B, float *y, size_t ldy, uint32_t n0,
                 uint32_t n1)
{
    if (n1 > m->rows)
        n1 = m->rows;
    if (n0 >= n1 || B == 0)
        return;
    if (!is_int_type(m->type)) {
        matmul_float(m, x, ldx, B, y, ldy, n0, n1);
        return;
    }
    if (!tl_act) {
        if (!(tl_act = calloc(1, sizeof *tl_act)))
            abort(); /* a few dozen bytes */
        pthread_once(&act_once, act_key_make);
        pthread_setspecific(act_key, tl_act);
    }
    if (quant_act_quantize(tl_act, quant_act_kind(m->type), kern_isa() >= KERN_AVX2, x, ldx, B, m->cols))
        abort(); /* out of memory for B x K bytes: as the accumulators, nothing to fall back to */
    quant_matmul(m->type, (int)kern_isa(), m->data, m->src->row_bytes, m->pairs, n0, n1, tl_act, y, ldy);
}

int kern_act_reserve(struct kern_act *a, uint32_t B, uint32_t K)
{
    /* Room is by elements: rounding K up to whole blocks of both kinds
     * leaves room for every narrower input too. */
    uint32_t k = (K + QK_K - 1) / QK_K * QK_K;
    int rc = quant_act_reserve(&a->q32, QACT_32, B, k);
    return rc ? rc : quant_act_reserve(&a->q256, QACT_256, B, k);
}

int kern_act_prepare(struct kern_act *a, const float *x, size_t ldx, uint32_t B, uint32_t K,
                     const struct kmat *const *ms, uint32_t n)
{
    a->x = x;
    a->ldx = ldx;
    a->B = B;
    a->K = K;
    a->has32 = a->has256 = false;
    bool avx2 = kern_isa() >= KERN_AVX2;
    for (uint32_t i = 0; i < n; i++) {
        enum qact_kind k = quant_act_kind(ms[i]->type);
        bool *has = k == QACT_32 ? &a->has32 : &a->has256;
        if (k == QACT_NONE || *has)
            continue;
        int rc = quant_act_quantize(k == QACT_32 ? &a->q32 : &a->q256, k, avx2, x, ldx, B, K);
        if (rc)
            return rc;
        *has = true;
    }
    return 0;
}

void kern_act_free(struct kern_act *a)
{
    quant_act_free(&a->q32);
    quant_act_free(&a->q256);
    memset(a, 0, sizeof *a);
}

void kern_matmul_act(const struct kmat *m, const struct kern_act *a, float *y, size_t ldy, uint32_t n0, uint32_t n1)
{
    if (n1 > m->rows)
        n1 = m->rows;
    if (n0 >= n1 || a->B == 0)
        return;
    enum qact_kind k = quant_act_kind(m->type);
    if (k == QACT_NONE) {
        matmul_float(m, a->x, a->ldx, a->B, y, ldy, n0, n1);
        return;
    }
    assert(k == QACT_32 ? a->has32 : a->has256);
    quant_matmul(m->type, (int)kern_isa(), m->data, m->src->row_bytes, m->pairs, n0, n1, k == QACT_32 ? &a->q32 : &a->q256,
                 y, ldy);
}

float kern_dot(const float *a, const float *b, uint32_t n)
{
    return kern_isa() >= KERN_AVX2 ? dot_avx2(a, b, n) : dot_scalar(a, b, n);
}

AVX2_TARGET static void axpy_avx2(float a, const float *x, float *y, uint32_t n)
{
    __m256 av = _mm256_set1_ps(a);
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] = fmaf(a, x[i], y[i]);
}

void kern_axpy(float a, const float *x, float *y, uint32_t n)
{
    if (kern_isa() >= KERN_AVX2) {
        axpy_avx2(a, x, y, n);
        return;
    }
    for (uint32_t i = 0; i < n; i++)
        y[i] = fmaf(a, x[i], y[i]);
}

/* The softmax's middle, shared by every attention kernel: s[t] =
 * expf(s[t] - mx), then 1 / their sum, added in position order.  The
 * exponentials are vexp_shifted()'s in isa (bit for bit glibc's expf in
 * every ISA, so the kernels agree); the sum stays sequential. */
static float softmax_exps(float *s, uint32_t n, float mx, enum kern_isa isa)
{
    vexp_shifted(s, n, mx, isa);
    float sum = 0;
    for (uint32_t t = 0; t < n; t++)
        sum += s[t];
    return 1.0f / sum;
}

/* The scalar version: the same steps, one call each. */
static void attention_scalar(const float *q, uint32_t hd, const float *const *kb, const float *const *vb, size_t stride,
                             uint32_t bt, uint32_t n, float scale, float *s, float *out)
{
    float mx = -INFINITY;
    for (uint32_t t = 0; t < n; t++) {
        s[t] = dot_scalar(q, kb[t / bt] + (size_t)(t % bt) * stride, hd) * scale;
        if (s[t] > mx)
            mx = s[t];
    }
    float inv = softmax_exps(s, n, mx, KERN_SCALAR);
    memset(out, 0, hd * sizeof *out);
    for (uint32_t t = 0; t < n; t++) {
        const float *v = vb[t / bt] + (size_t)(t % bt) * stride;
        float a = s[t] * inv;
        for (uint32_t i = 0; i < hd; i++)
            out[i] = fmaf(a, v[i], out[i]);
    }
}

/* q and the output stay in registers (hd/8 of each); keys and values are
 * walked block by block with a pointer step instead of an index division
 * per position. */
AVX2_TARGET static void attention_avx2(const float *q, uint32_t hd, const float *const *kb, const float *const *vb,
                                       size_t stride, uint32_t bt, uint32_t n, float scale, float *s, float *out)
{
    uint32_t nv = hd / 8;
    __m256 qv[KERN_MAX_HEAD_DIM / 8], ov[KERN_MAX_HEAD_DIM / 8];
    for (uint32_t i = 0; i < nv; i++)
        qv[i] = _mm256_loadu_ps(q + 8 * i);
    float mx = -INFINITY;
    for (uint32_t t0 = 0, blk = 0; t0 < n; t0 += bt, blk++) {
        const float *k = kb[blk];
        uint32_t m = n - t0 < bt ? n - t0 : bt;
        uint32_t t = 0;
        /* Eight positions at a time: one transposed reduction instead of
         * eight horizontal sums (the same additions, in the same order). */
        for (; t + 8 <= m; t += 8, k += 8 * stride) {
            __m256 a[8];
            for (int j = 0; j < 8; j++)
                a[j] = _mm256_setzero_ps();
            for (uint32_t i = 0; i < nv; i++)
                for (int j = 0; j < 8; j++)
                    a[j] = _mm256_fmadd_ps(qv[i], _mm256_loadu_ps(k + (size_t)j * stride + 8 * i), a[j]);
            __m256 sc = _mm256_mul_ps(reduce8x8(a), _mm256_set1_ps(scale));
            _mm256_storeu_ps(s + t0 + t, sc);
            for (int j = 0; j < 8; j++)
                if (s[t0 + t + (uint32_t)j] > mx)
                    mx = s[t0 + t + (uint32_t)j];
        }
        for (; t < m; t++, k += stride) {
            __m256 acc = _mm256_setzero_ps();
            for (uint32_t i = 0; i < nv; i++)
                acc = _mm256_fmadd_ps(qv[i], _mm256_loadu_ps(k + 8 * i), acc);
            float sc = hsum256(acc) * scale;
            s[t0 + t] = sc;
            if (sc > mx)
                mx = sc;
        }
    }
    float inv = softmax_exps(s, n, mx, KERN_AVX2);
    for (uint32_t i = 0; i < nv; i++)
        ov[i] = _mm256_setzero_ps();
    for (uint32_t t0 = 0, blk = 0; t0 < n; t0 += bt, blk++) {
        const float *v = vb[blk];
        uint32_t m = n - t0 < bt ? n - t0 : bt;
        for (uint32_t t = 0; t < m; t++, v += stride) {
            __m256 a = _mm256_set1_ps(s[t0 + t] * inv);
            for (uint32_t i = 0; i < nv; i++)
                ov[i] = _mm256_fmadd_ps(a, _mm256_loadu_ps(v + 8 * i), ov[i]);
        }
    }
    for (uint32_t i = 0; i < nv; i++)
        _mm256_storeu_ps(out + 8 * i, ov[i]);
}

/* attention_avx2() with AVX-512 for a head size known at compile time (NV
 * eight-float slices): q and the output in registers for certain, the
 * scores of positions 2p and 2p+1 in the two halves of one register (q in
 * both), the values' update sixteen elements to an FMA.  Each score lane and
 * each output element sees the same FMAs in the same order, so the bits are
 * attention_avx2()'s. */
AVX512_TARGET static inline __attribute__((always_inline)) void attention_512(
    const uint32_t NV, const float *q, const float *const *kb, const float *const *vb, size_t stride, uint32_t bt,
    uint32_t n, float scale, float *s, float *out)
{
    __m512 qv[16], ov[8];
    _Pragma("GCC unroll 16")
    for (uint32_t i = 0; i < NV; i++)
        qv[i] = _mm512_broadcast_f32x8(_mm256_loadu_ps(q + 8 * i));
    float mx = -INFINITY;
    for (uint32_t t0 = 0, blk = 0; t0 < n; t0 += bt, blk++) {
        const float *k = kb[blk];
        uint32_t m = n - t0 < bt ? n - t0 : bt;
        uint32_t t = 0;
        for (; t + 8 <= m; t += 8, k += 8 * stride) {
            __m512 a[4];
            _Pragma("GCC unroll 16")
            for (int p = 0; p < 4; p++)
                a[p] = _mm512_setzero_ps();
            _Pragma("GCC unroll 16")
            for (uint32_t i = 0; i < NV; i++)
                _Pragma("GCC unroll 16")
                for (int p = 0; p < 4; p++) {
                    const float *k0 = k + (size_t)(2 * p) * stride + 8 * i;
                    __m512 kv = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(k0)),
                                                   _mm256_loadu_ps(k0 + stride), 1);
                    a[p] = _mm512_fmadd_ps(qv[i], kv, a[p]);
                }
            __m256 r[8];
            _Pragma("GCC unroll 16")
            for (int p = 0; p < 4; p++) {
                r[2 * p] = _mm512_castps512_ps256(a[p]);
                r[2 * p + 1] = _mm512_extractf32x8_ps(a[p], 1);
            }
            __m256 sc = _mm256_mul_ps(reduce8x8(r), _mm256_set1_ps(scale));
            _mm256_storeu_ps(s + t0 + t, sc);
            _Pragma("GCC unroll 16")
            for (int j = 0; j < 8; j++)
                if (s[t0 + t + (uint32_t)j] > mx)
                    mx = s[t0 + t + (uint32_t)j];
        }
        for (; t < m; t++, k += stride) {
            __m256 acc = _mm256_setzero_ps();
            _Pragma("GCC unroll 16")
            for (uint32_t i = 0; i < NV; i++)
                acc = _mm256_fmadd_ps(_mm512_castps512_ps256(qv[i]), _mm256_loadu_ps(k + 8 * i), acc);
            float sc = hsum256(acc) * scale;
            s[t0 + t] = sc;
            if (sc > mx)
                mx = sc;
        }
    }
    float inv = softmax_exps(s, n, mx, KERN_AVX512);
    _Pragma("GCC unroll 16")
    for (uint32_t i = 0; i < NV / 2; i++)
        ov[i] = _mm512_setzero_ps();
    for (uint32_t t0 = 0, blk = 0; t0 < n; t0 += bt, blk++) {
        const float *v = vb[blk];
        uint32_t m = n - t0 < bt ? n - t0 : bt;
        for (uint32_t t = 0; t < m; t++, v += stride) {
            __m512 a = _mm512_set1_ps(s[t0 + t] * inv);
            _Pragma("GCC unroll 16")
            for (uint32_t i = 0; i < NV / 2; i++)
                ov[i] = _mm512_fmadd_ps(a, _mm512_loadu_ps(v + 16 * i), ov[i]);
        }
    }
    _Pragma("GCC unroll 16")
    for (uint32_t i = 0; i < NV / 2; i++)
        _mm512_storeu_ps(out + 16 * i, ov[i]);
}

AVX512_TARGET __attribute__((noinline)) static void attention_512_64(const float *q, const float *const *kb,
                                                                     const float *const *vb, size_t stride,
                                                                     uint32_t bt, uint32_t n, float scale, float *s,
                                                                     float *out)
{
    attention_512(8, q, kb, vb, stride, bt, n, scale, s, out);
}

AVX512_TARGET __attribute__((noinline)) static void attention_512_128(const float *q, const float *const *kb,
                                                                      const float *const *vb, size_t stride,
                                                                      uint32_t bt, uint32_t n, float scale, float *s,
                                                                      float *out)
{
    attention_512(16, q, kb, vb, stride, bt, n, scale, s, out);
}

/* kern_attention() of up to KERN_ATT_ROWS queries of one head at once, with
 * AVX-512 for a head size known at compile time (NV eight-float slices):
 * every key and value is loaded once for all of them instead of once each,
 * so a prompt's attention reads the cache a quarter as often.  Queries 2p
 * and 2p+1 share a register (one in each half), the key's eight floats are
 * broadcast to both; the positions all queries see, [0, min n), are done
 * together, each query's further ones after them.  Per query and position
 * every lane sees the FMAs of attention_512() in the same order, the same
 * reduction and scaling, the same softmax over its own scores and the same
 * value FMAs in position order, so the bits are kern_attention()'s. */
AVX512_TARGET static inline __attribute__((always_inline)) void attention_rows_512(
    const uint32_t NV, const float *q, size_t ldq, uint32_t R, const float *const *kb, const float *const *vb,
    size_t stride, uint32_t bt, const uint32_t *n, float scale, float *s, size_t lds, float *out, size_t ldo)
{
    enum { P = KERN_ATT_ROWS / 2 };
    __m512 qp[P][16];
    uint32_t nmin = n[0];
    for (uint32_t r = 1; r < R; r++)
        nmin = n[r] < nmin ? n[r] : nmin;
    _Pragma("GCC unroll 2")
    for (uint32_t p = 0; p < P; p++)
        _Pragma("GCC unroll 16")
        for (uint32_t i = 0; i < NV; i++) {
            __m256 lo = 2 * p < R ? _mm256_loadu_ps(q + (size_t)(2 * p) * ldq + 8 * i) : _mm256_setzero_ps();
            __m256 hi = 2 * p + 1 < R ? _mm256_loadu_ps(q + (size_t)(2 * p + 1) * ldq + 8 * i) : _mm256_setzero_ps();
            qp[p][i] = _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
        }
    /* Scores of the shared positions, eight at a time where a block has them. */
    for (uint32_t t0 = 0, blk = 0; t0 < nmin; t0 += bt, blk++) {
        const float *k = kb[blk];
        uint32_t m = nmin - t0 < bt ? nmin - t0 : bt;
        uint32_t t = 0;
        for (; t + 8 <= m; t += 8, k += 8 * stride) {
            __m512 a[8][P];
            _Pragma("GCC unroll 8")
            for (int j = 0; j < 8; j++)
                _Pragma("GCC unroll 2")
                for (int p = 0; p < P; p++)
                    a[j][p] = _mm512_setzero_ps();
            /* i not unrolled: the 16 accumulators stay in registers, the
             * queries are read from the stack (2 loads per 16 FMAs) */
            _Pragma("GCC unroll 1")
            for (uint32_t i = 0; i < NV; i++)
                _Pragma("GCC unroll 8")
                for (int j = 0; j < 8; j++) {
                    __m512 kv = _mm512_broadcast_f32x8(_mm256_loadu_ps(k + (size_t)j * stride + 8 * i));
                    _Pragma("GCC unroll 2")
                    for (int p = 0; p < P; p++)
                        a[j][p] = _mm512_fmadd_ps(qp[p][i], kv, a[j][p]);
                }
            _Pragma("GCC unroll 2")
            for (uint32_t p = 0; p < P; p++) {
                __m256 lo[8], hi[8];
                _Pragma("GCC unroll 8")
                for (int j = 0; j < 8; j++) {
                    lo[j] = _mm512_castps512_ps256(a[j][p]);
                    hi[j] = _mm512_extractf32x8_ps(a[j][p], 1);
                }
                if (2 * p < R)
                    _mm256_storeu_ps(s + (size_t)(2 * p) * lds + t0 + t, _mm256_mul_ps(reduce8x8(lo), _mm256_set1_ps(scale)));
                if (2 * p + 1 < R)
                    _mm256_storeu_ps(s + (size_t)(2 * p + 1) * lds + t0 + t,
                                     _mm256_mul_ps(reduce8x8(hi), _mm256_set1_ps(scale)));
            }
        }
        for (; t < m; t++, k += stride) {
            __m512 a[P];
            _Pragma("GCC unroll 2")
            for (int p = 0; p < P; p++)
                a[p] = _mm512_setzero_ps();
            _Pragma("GCC unroll 16")
            for (uint32_t i = 0; i < NV; i++) {
                __m512 kv = _mm512_broadcast_f32x8(_mm256_loadu_ps(k + 8 * i));
                _Pragma("GCC unroll 2")
                for (int p = 0; p < P; p++)
                    a[p] = _mm512_fmadd_ps(qp[p][i], kv, a[p]);
            }
            for (uint32_t r = 0; r < R; r++) {
                __m256 h = r % 2 ? _mm512_extractf32x8_ps(a[r / 2], 1) : _mm512_castps512_ps256(a[r / 2]);
                s[(size_t)r * lds + t0 + t] = hsum256(h) * scale;
            }
        }
    }
    /* Each query's own further positions. */
    for (uint32_t r = 0; r < R; r++) {
        const float *qr = q + (size_t)r * ldq;
        float *sr = s + (size_t)r * lds;
        for (uint32_t t = nmin; t < n[r]; t++) {
            const float *k = kb[t / bt] + (size_t)(t % bt) * stride;
            __m256 acc = _mm256_setzero_ps();
            _Pragma("GCC unroll 16")
            for (uint32_t i = 0; i < NV; i++)
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(qr + 8 * i), _mm256_loadu_ps(k + 8 * i), acc);
            sr[t] = hsum256(acc) * scale;
        }
    }
    /* softmax_exps() of each query: its maximum and its sum stay sequential
     * chains in position order, but the queries' chains run side by side
     * (a lone chain waits on each add's latency); a missing query reads
     * query 0's scores and is dropped. */
    const float *sp[KERN_ATT_ROWS];
    float mx[KERN_ATT_ROWS], sum[KERN_ATT_ROWS], inv[KERN_ATT_ROWS];
    _Pragma("GCC unroll 4")
    for (uint32_t r = 0; r < KERN_ATT_ROWS; r++) {
        sp[r] = s + (r < R ? (size_t)r * lds : 0);
        mx[r] = -INFINITY;
        sum[r] = 0;
    }
    for (uint32_t t = 0; t < nmin; t++)
        _Pragma("GCC unroll 4")
        for (uint32_t r = 0; r < KERN_ATT_ROWS; r++)
            if (sp[r][t] > mx[r])
                mx[r] = sp[r][t];
    for (uint32_t r = 0; r < R; r++) {
        for (uint32_t t = nmin; t < n[r]; t++)
            if (sp[r][t] > mx[r])
                mx[r] = sp[r][t];
        vexp_shifted(s + (size_t)r * lds, n[r], mx[r], KERN_AVX512);
    }
    for (uint32_t t = 0; t < nmin; t++)
        _Pragma("GCC unroll 4")
        for (uint32_t r = 0; r < KERN_ATT_ROWS; r++)
            sum[r] += sp[r][t];
    for (uint32_t r = 0; r < R; r++) {
        for (uint32_t t = nmin; t < n[r]; t++)
            sum[r] += sp[r][t];
        inv[r] = 1.0f / sum[r];
    }
    /* The values, 64 dimensions at a time (4 x R accumulators). */
    _Pragma("GCC unroll 2")
    for (uint32_t d = 0; d < NV / 8; d++) {
        __m512 o[KERN_ATT_ROWS][4];
        _Pragma("GCC unroll 4")
        for (int r = 0; r < KERN_ATT_ROWS; r++)
            _Pragma("GCC unroll 4")
            for (int u = 0; u < 4; u++)
                o[r][u] = _mm512_setzero_ps();
        for (uint32_t t0 = 0, blk = 0; t0 < nmin; t0 += bt, blk++) {
            const float *v = vb[blk] + 64 * d;
            uint32_t m = nmin - t0 < bt ? nmin - t0 : bt;
            for (uint32_t t = 0; t < m; t++, v += stride) {
                __m512 vv[4];
                _Pragma("GCC unroll 4")
                for (int u = 0; u < 4; u++)
                    vv[u] = _mm512_loadu_ps(v + 16 * u);
                _Pragma("GCC unroll 4")
                for (uint32_t r = 0; r < KERN_ATT_ROWS; r++)
                    if (r < R) {
                        __m512 a = _mm512_set1_ps(s[(size_t)r * lds + t0 + t] * inv[r]);
                        _Pragma("GCC unroll 4")
                        for (int u = 0; u < 4; u++)
                            o[r][u] = _mm512_fmadd_ps(a, vv[u], o[r][u]);
                    }
            }
        }
        _Pragma("GCC unroll 4")
        for (uint32_t r = 0; r < KERN_ATT_ROWS; r++) {
            if (r >= R)
                continue;
            for (uint32_t t = nmin; t < n[r]; t++) {
                const float *v = vb[t / bt] + (size_t)(t % bt) * stride + 64 * d;
                __m512 a = _mm512_set1_ps(s[(size_t)r * lds + t] * inv[r]);
                _Pragma("GCC unroll 4")
                for (int u = 0; u < 4; u++)
                    o[r][u] = _mm512_fmadd_ps(a, _mm512_loadu_ps(v + 16 * u), o[r][u]);
            }
            _Pragma("GCC unroll 4")
            for (int u = 0; u < 4; u++)
                _mm512_storeu_ps(out + (size_t)r * ldo + 64 * d + 16 * u, o[r][u]);
        }
    }
}

AVX512_TARGET __attribute__((noinline)) static void attention_rows_512_64(
    const float *q, size_t ldq, uint32_t R, const float *const *kb, const float *const *vb, size_t stride,
    uint32_t bt, const uint32_t *n, float scale, float *s, size_t lds, float *out, size_t ldo)
{
    attention_rows_512(8, q, ldq, R, kb, vb, stride, bt, n, scale, s, lds, out, ldo);
}

AVX512_TARGET __attribute__((noinline)) static void attention_rows_512_128(
    const float *q, size_t ldq, uint32_t R, const float *const *kb, const float *const *vb, size_t stride,
    uint32_t bt, const uint32_t *n, float scale, float *s, size_t lds, float *out, size_t ldo)
{
    attention_rows_512(16, q, ldq, R, kb, vb, stride, bt, n, scale, s, lds, out, ldo);
}

void kern_attention_rows(const float *q, size_t ldq, uint32_t R, uint32_t hd, const float *const *k_blocks,
                         const float *const *v_blocks, size_t stride, uint32_t bt, const uint32_t *n, float scale,
                         float *scores, size_t lds, float *out, size_t ldo)
{
    assert(R >= 1 && R <= KERN_ATT_ROWS);
    if (R > 1 && kern_isa() >= KERN_AVX512 && hd == 64)
        attention_rows_512_64(q, ldq, R, k_blocks, v_blocks, stride, bt, n, scale, scores, lds, out, ldo);
    else if (R > 1 && kern_isa() >= KERN_AVX512 && hd == 128)
        attention_rows_512_128(q, ldq, R, k_blocks, v_blocks, stride, bt, n, scale, scores, lds, out, ldo);
    else
        for (uint32_t r = 0; r < R; r++)
            kern_attention(q + (size_t)r * ldq, hd, k_blocks, v_blocks, stride, bt, n[r], scale,
                           scores + (size_t)r * lds, out + (size_t)r * ldo);
}

void kern_attention(const float *q, uint32_t hd, const float *const *k_blocks, const float *const *v_blocks,
                    size_t stride, uint32_t bt, uint32_t n, float scale, float *scores, float *out)
{
    if (kern_isa() >= KERN_AVX512 && hd == 64)
        attention_512_64(q, k_blocks, v_blocks, stride, bt, n, scale, scores, out);
    else if (kern_isa() >= KERN_AVX512 && hd == 128)
        attention_512_128(q, k_blocks, v_blocks, stride, bt, n, scale, scores, out);
    else if (kern_isa() >= KERN_AVX2)
        attention_avx2(q, hd, k_blocks, v_blocks, stride, bt, n, scale, scores, out);
    else
        attention_scalar(q, hd, k_blocks, v_blocks, stride, bt, n, scale, scores, out);
}

void kern_rmsnorm(float *out, const float *x, const float *w, uint32_t n, float eps)
{
    float ss = kern_dot(x, x, n);
    float scale = 1.0f / sqrtf(ss / (float)n + eps);
    for (uint32_t i = 0; i < n; i++)
        out[i] = x[i] * scale * w[i];
}

void kern_row(const struct wmat *w, uint32_t r, float *out) { wmat_row_f32(w, r, out); }
