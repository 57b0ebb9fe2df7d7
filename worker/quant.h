/* quant.h — ggml's block-quantized weight types: what a block holds, the
 * value each weight stands for (dequantizing), writing blocks (quantizing,
 * for rill-mkmodel and tests), and the integer dot products kern.c builds its
 * matrix products of these types on.
 *
 * Block layouts (little-endian; "half" is an IEEE binary16; ggml's
 * ggml-common.h defines them, gguf.md names them):
 *   q4_0  32 weights, 18 bytes: half d; u8 qs[16]
 *         w[j] = d * ((qs[j] & 15) - 8), w[j+16] = d * ((qs[j] >> 4) - 8)
 *   q4_1  32, 20: half d, m; u8 qs[16]        w = d * q + m, q the nibble as above
 *   q5_0  32, 22: half d; u8 qh[4]; u8 qs[16]  q = nibble | bit e of qh << 4;  w = d * (q - 16)
 *   q5_1  32, 24: half d, m; u8 qh[4]; u8 qs[16]  w = d * q + m
 *   q8_0  32, 34: half d; i8 qs[32]            w = d * qs[j]
 *   q2_K  256, 84: u8 scales[16]; u8 qs[64]; half d, dmin
 *         16 groups of 16; group g: w = d * (scales[g] & 15) * q - dmin * (scales[g] >> 4),
 *         q two bits: element 128n + 32j + l is (qs[32n + l] >> 2j) & 3
 *   q3_K  256, 110: u8 hmask[32]; u8 qs[64]; u8 scales[12]; half d
 *         16 groups of 16 with 6-bit scales s (packed in 12 bytes); w = d * (s - 32) * q,
 *         q = two low bits as in q2_K, minus 4 unless bit (4n + j) of hmask[l] is set
 *   q4_K  256, 144: half d, dmin; u8 scales[12]; u8 qs[128]
 *         8 groups of 32 with 6-bit scale sc and min m; w = d * sc * q - dmin * m;
 *         element 64j + l is qs[32j + l] & 15, element 64j + 32 + l is qs[32j + l] >> 4
 *   q5_K  256, 176: half d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]
 *         as q4_K with a fifth bit: bit g of qh[l] for element 32g + l
 *   q6_K  256, 210: u8 ql[128]; u8 qh[64]; i8 scales[16]; half d
 *         16 groups of 16; w = d * scales[g] * (q - 32), q six bits
 *   bf16  the high half of an IEEE binary32
 * (the .c file spells out the bit positions).
 *
 * Dequantized values are exact: every product of a half scale and the small
 * integers is representable in a float, so each weight is its exact value
 * rounded once to float (to nearest even) — whichever order of operations
 * computes it.  That makes a dequantizer easy to check against a plain
 * reference.
 *
 * Integer dot products (the types of quant_int_type()): activations are
 * quantized per row, per block of 32 (QACT_32: q4_0, q4_1, q5_0, q5_1,
 * q8_0) or 256 (QACT_256: the K types) to int8 with one float scale, as
 * llama.cpp does, so the weights never become floats.  For one weight row
 * and one activation row, each block gives eight exact int32 lane sums; the
 * float arithmetic is then fixed: lane j accumulates, block after block,
 * fmaf(d_w * d_x, lane_j, acc_j) (and for types with a min, a second fmaf),
 * and the row's result is the kern.h reduction of the eight lanes (plus,
 * for q4_1/q5_1, a separate sum of the min terms).  Which lane an integer
 * product lands in is defined by the AVX2 code's layout and reproduced by
 * the scalar code, so the AVX2 and scalar kernels give the same bits, for
 * any batch size, tile and row range (quant.c says which lanes).
 *
 * q4_0 and q8_0 have four lanes a block instead: lane j is the exact sum of
 * w_e * a_e over e = 4j..4j+3 and 16+4j..16+4j+3, w_e the signed code (q8_0:
 * qs[e]; q4_0: its nibble minus 8, so qs[j] holds elements j and j+16 of
 * the same lane); acc_j = fmaf(d_w * d_x, lane_j, acc_j) block after block,
 * and the result is (acc0 + acc2) + (acc1 + acc3).  Four lanes let a
 * 512-bit register hold four activation rows' lanes in their prefill tile,
 * so that each scale product, conversion and FMA serves twice the products
 * it would with eight (q8_0's prefill ran 1.4x faster, q4_0's 1.15-1.35x).
 */
#ifndef RILL_QUANT_H
#define RILL_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"

#define QK_K 256

/* Elements per block and bytes per block of t (1 and the element size for
 * F32/F16/BF16); 0 for a type rill does not compute with. */
uint32_t quant_block(enum wtype t);
uint32_t quant_block_bytes(enum wtype t);
/* Whether rill can load and compute with t. */
bool quant_supported(enum wtype t);

/* Dequantize n weights of type t (n a multiple of its block) at src. */
void quant_dequant(enum wtype t, const void *src, float *out, size_t n);

/* Quantize n floats (a multiple of the block) into blocks of t at dst.
 * Simple round-to-nearest choices of scales (not llama.cpp's searches); every
 * block is valid for the format.  F32, F16, BF16 and every block type. */
void quant_quantize(enum wtype t, const float *x, void *dst, size_t n);

/* BF16 <-> float: the high half, rounded to nearest even (NaN stays NaN). */
float quant_bf16_to_f32(uint16_t h);
uint16_t quant_f32_to_bf16(float f);

/* ---- integer dot products ------------------------------------------------- */

enum qact_kind { QACT_NONE = 0, QACT_32 = 1, QACT_256 = 2 };

/* Which activation quantization t's integer kernels read; QACT_NONE for the
 * float types (F32, F16, BF16), which kern.c multiplies as floats. */
enum qact_kind quant_act_kind(enum wtype t);

/* Activations quantized for the integer kernels: B rows of K values (K a
 * multiple of the block), row b's block i is x ~= d * q with
 *   d = max|x| / 127 over the block (0 for an all-zero or negligible block),
 *   q = round-to-nearest-even(x * (127 / max|x|)), in [-127, 127].
 * QACT_32 keeps s = d * (sum of the block's q) per block (for the min term
 * of q4_1 / q5_1); QACT_256 keeps the int16 sums of each 16 q (bsum). */
struct quant_act {
    enum qact_kind kind;
    uint32_t B, K;
    int8_t *q;        /* [B][K] */
    float *d;         /* [B][K / block] */
    float *s;         /* QACT_32: [B][K / 32] */
    int16_t *bsum;    /* QACT_256: [B][K / 16] */
    size_t cap;       /* elements allocated for */
};

/* Quantize rows x[b * ldx + k] (b < B, k < K) into a (its buffers grow as
 * needed; RILL_E_NOMEM).  `avx2`: use the AVX2 code (same bits as the scalar
 * code).  RILL_E_UNSUPPORTED if K is not a multiple of the kind's block. */
int quant_act_quantize(struct quant_act *a, enum qact_kind kind, bool avx2, const float *x, size_t ldx, uint32_t B,
                  uint32_t K);
/* Make room for B rows of K without quantizing (so the hot path does not
 * allocate). */
int quant_act_reserve(struct quant_act *a, enum qact_kind kind, uint32_t B, uint32_t K);
void quant_act_free(struct quant_act *a);

/* Instruction sets of quant_matmul() (the values of kern.h's enum kern_isa). */
#define QUANT_SCALAR 0
#define QUANT_AVX2   1
#define QUANT_AVX512 2 /* AVX-512 F/BW/DQ/VL/VNNI: two rows per register */

/* The layout the AVX-512 decode kernels want: rows in pairs (2q, 2q+1), the
 * blocks of a pair alternating (block 0 of row 2q, block 0 of row 2q+1,
 * block 1 of row 2q, ...), so that a pair computed at once is one sequential
 * stream (as two streams a row long each, the hardware prefetcher loses
 * them at every pair: half the speed from memory).  Copies `rows` rows of t
 * (row_bytes apart at src) to dst, which has room for rows rounded up to
 * even (an odd last row's partner is left as dst had it). */
void quant_pack_pairs(enum wtype t, const void *src, size_t row_bytes, uint32_t rows, void *dst);

/* y[b * ldy + n] = row n of w (type t, rows of `row_bytes`, a->K columns;
 * `pairs`: laid out by quant_pack_pairs(), else one row after the other)
 * dotted with activation row b, for n in [n0, n1) (n0 even) and b < a->B.  t must have
 * quant_act_kind(t) == a->kind.  `isa`: QUANT_SCALAR, QUANT_AVX2 or
 * QUANT_AVX512 (the caller checked the CPU); every one gives the scalar
 * kernels' bits. */
void quant_matmul(enum wtype t, int isa, const void *w, size_t row_bytes, bool pairs, uint32_t n0, uint32_t n1,
                  const struct quant_act *a, float *y, size_t ldy);

#endif
