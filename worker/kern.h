/* kern.h — the worker's numeric kernels: matrix products over every weight
 * type rill loads, dot products, norms.
 *
 * Batch invariance is the rule here: every output element of kern_matmul()
 * is accumulated in one fixed order — eight lanes, lane j summing the
 * products k ≡ j (mod 8) in increasing k with fused multiply-adds, then a
 * fixed pairwise reduction of the lanes — whatever the batch size, the tile
 * shape that computed it, the thread that ran it or the instruction set.  So
 * a sequence gets bit-identical logits whether it is decoded alone, in a
 * batch of 64, prefilled in one chunk or in many, or recomputed after a
 * preemption; and a seeded stream is the same wherever it runs.  The scalar
 * path emulates the AVX2 one exactly (fmaf per lane, same reduction).
 *
 * F32, F16 and BF16 weights are multiplied as floats, in that order.  The
 * block types (Q4_0 ... Q8_0, the K types) multiply their integer codes with
 * activations quantized to int8 per block (quant.h), as llama.cpp does: a
 * row's activations are quantized the same way whatever else is in the
 * batch, and the integer sums are exact, so the same invariance holds; the
 * float steps after them have a fixed order of their own (quant.h).
 *
 * Weights are packed at load time into groups of KERN_GROUP rows whose
 * eight-weight slices are interleaved, so that a tile reads one sequential
 * stream instead of four short ones: the hardware prefetcher keeps up, and a
 * single-row decode runs at memory bandwidth.
 */
#ifndef RILL_KERN_H
#define RILL_KERN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "quant.h"

#define KERN_GROUP 4

/* Ordered: each includes the one before.  KERN_AVX512 runs the AVX2 code
 * where it has no 512-bit kernel of its own; its own kernels keep two rows
 * (of activations or of weights) in the two halves of a register, each half
 * doing what an AVX2 register does, so every path gives the same bits. */
enum kern_isa { KERN_SCALAR = 0, KERN_AVX2 = 1, KERN_AVX512 = 2 };

/* The instruction set in use: AVX-512 F/BW/DQ/VL/VNNI when the CPU has them,
 * else AVX2+FMA+F16C, else scalar. */
enum kern_isa kern_isa(void);
/* Whether this CPU can run isa. */
bool kern_isa_supported(enum kern_isa isa);
/* Force one (tests compare them; ignored if the CPU lacks it); returns the
 * previous one. */
enum kern_isa kern_set_isa(enum kern_isa isa);
const char *kern_isa_name(enum kern_isa isa);

/* A weight matrix packed for the kernels.  Layout by type, per group g of 4
 * rows (rows past `rows` are zero):
 *   F32, F16: for each slice s of 8 columns: 4 rows x 8 weights;
 *   BF16:     as F16;
 *   the integer types (quant_act_kind() != QACT_NONE): the file's rows, one
 *             after the other, or where the CPU has AVX-512 (`pairs`) in
 *             pairs with their blocks alternating (quant_pack_pairs()).
 * `src` keeps the unpacked matrix (the scalar path and OpenBLAS read it). */
struct kmat {
    const struct wmat *src;
    enum wtype type;
    uint32_t rows, cols, groups;
    size_t group_bytes;
    bool pairs;          /* integer types: laid out by quant_pack_pairs() */
    void *data;          /* owned */
    size_t bytes;
};

/* Pack w (cols % 8 == 0, and whole blocks).  RILL_E_UNSUPPORTED for a type
 * or shape the kernels cannot take, RILL_E_NOMEM. */
int kern_pack(const struct wmat *w, struct kmat *out);
void kern_unpack_free(struct kmat *m);

/* y[b*ldy + n] = sum_k W[n][k] * x[b*ldx + k]  for n in [n0, n1), b < B.
 * n0 must be a multiple of KERN_GROUP (n1 may be any, up to rows).  x and y
 * must not overlap. */
void kern_matmul(const struct kmat *m, const float *x, size_t ldx, uint32_t B, float *y, size_t ldy,
                 uint32_t n0, uint32_t n1);

/* The input of matrix products, prepared once for every matrix that reads
 * it: the floats, and their int8 quantization for the integer types. */
struct kern_act {
    const float *x;
    size_t ldx;
    uint32_t B, K;
    struct quant_act q32, q256;
    bool has32, has256;
};

/* Room for B rows of K (so that preparing never allocates on the hot
 * path); RILL_E_NOMEM. */
int kern_act_reserve(struct kern_act *a, uint32_t B, uint32_t K);
/* Prepare x [B][ldx] (K columns) for the n matrices ms (borrowed until the
 * next prepare); RILL_E_NOMEM. */
int kern_act_prepare(struct kern_act *a, const float *x, size_t ldx, uint32_t B, uint32_t K,
                     const struct kmat *const *ms, uint32_t n);
void kern_act_free(struct kern_act *a);
/* kern_matmul() of prepared input: m must be one of those it was prepared
 * for.  The same bits as kern_matmul(m, a->x, ...). */
void kern_matmul_act(const struct kmat *m, const struct kern_act *a, float *y, size_t ldy, uint32_t n0, uint32_t n1);

/* Dot product of n floats (n % 8 == 0), in the same fixed order. */
float kern_dot(const float *a, const float *b, uint32_t n);

/* Attention of one head over positions 0..n-1 kept in blocks of `bt`
 * positions: block i's keys start at k_blocks[i], its values at v_blocks[i],
 * consecutive positions `stride` floats apart.
 *   out = sum_t softmax_t(scale * q.k_t) v_t
 * with the arithmetic of kern_dot (scores), a sequential float softmax and
 * kern_axpy in position order (values) — so it gives the same bits as doing
 * those steps one call at a time.  hd % 8 == 0, hd <= KERN_MAX_HEAD_DIM;
 * `scores` is scratch for n floats. */
#define KERN_MAX_HEAD_DIM 256
void kern_attention(const float *q, uint32_t hd, const float *const *k_blocks, const float *const *v_blocks,
                    size_t stride, uint32_t bt, uint32_t n, float scale, float *scores, float *out);

/* kern_attention() of R <= KERN_ATT_ROWS queries of one head over the same
 * blocks (a prompt's consecutive rows): query r is q + r*ldq over positions
 * 0..n[r]-1 and writes out + r*ldo, its scores scratch at scores + r*lds
 * (lds >= n[r]).  Each query gets the bits kern_attention() gives it alone;
 * the keys and values it shares with the others are read once for all. */
#define KERN_ATT_ROWS 4
void kern_attention_rows(const float *q, size_t ldq, uint32_t R, uint32_t hd, const float *const *k_blocks,
                         const float *const *v_blocks, size_t stride, uint32_t bt, const uint32_t *n, float scale,
                         float *scores, size_t lds, float *out, size_t ldo);

/* y[i] += a * x[i], fused (each element as fmaf would). */
void kern_axpy(float a, const float *x, float *y, uint32_t n);

/* out[i] = x[i] * w[i] / sqrt(mean(x^2) + eps)  (n % 8 == 0) */
void kern_rmsnorm(float *out, const float *x, const float *w, uint32_t n, float eps);

/* Dequantize row r of w into out (any type). */
void kern_row(const struct wmat *w, uint32_t r, float *out);

#endif
