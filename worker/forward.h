/* forward.h — the Llama forward pass over a batch of rows.
 *
 * A row is one token of one sequence at one position.  A decode step is one
 * row per running sequence; a prefill chunk is consecutive rows of one
 * sequence; a step may mix both (chunked prefill rides along with decoding).
 * Every linear layer is one matrix product over all rows of the step.  Each
 * row writes its key and value into its sequence's KV cache at its position
 * before attention, and attends to positions 0..pos of its own sequence, so
 * causality inside a prefill chunk needs no mask.
 *
 * With the native kernels (kern.h) a row's result does not depend on which
 * other rows share the step: decoding alone, in a batch, in a chunk, or
 * recomputing after preemption give bit-identical logits.
 */
#ifndef RILL_FORWARD_H
#define RILL_FORWARD_H

#include <stdbool.h>
#include <stdint.h>

#include "kvcache.h"
#include "model.h"
#include "pool.h"

struct fwd_row {
    int32_t token;
    uint32_t pos;
    struct kv_seq *kv;     /* the row's sequence; blocks reserved past pos */
    int32_t logits_row;    /* where its logits go (row of the logits matrix), or -1 */
};

enum fwd_matmul { FWD_NATIVE = 0, FWD_BLAS = 1 };

struct fwd;

/* Prepare a forward pass for steps of at most `max_rows` rows and sequences
 * of at most `max_ctx` positions.  The model, cache and pool are borrowed.
 * Errors: RILL_E_NOMEM; RILL_E_UNSUPPORTED when a dimension is not a multiple
 * of 8 (32 for Q8_0), which the kernels need. */
int fwd_create(const struct model *m, struct kv *kv, struct pool *pool, uint32_t max_rows, uint32_t max_ctx,
               struct fwd **out, char *why, size_t why_len);
void fwd_free(struct fwd *f);

/* Use OpenBLAS sgemm for F32 weights when a step has at least `min_rows`
 * rows (FWD_BLAS), or the native kernels always (FWD_NATIVE, the default). */
void fwd_set_matmul(struct fwd *f, enum fwd_matmul mode, uint32_t min_rows);

/* Called after every layer of a step (may be NULL): the worker sends its
 * due heartbeats from here, so that a long step is not mistaken for a hang. */
void fwd_set_progress(struct fwd *f, void (*fn)(void *ctx), void *ctx);

/* Run one step.  `logits` receives vocab floats for each row with
 * logits_row >= 0, at logits + logits_row * vocab.  Rows must have valid
 * tokens (< vocab) and positions (< max_ctx): RILL_E_BAD_REQUEST otherwise. */
int fwd_run(struct fwd *f, const struct fwd_row *rows, uint32_t n, float *logits);

/* The pool the pass runs on (the scheduler samples on it too). */
struct pool *fwd_pool(const struct fwd *f);

/* Bytes of scratch memory the pass holds. */
size_t fwd_scratch_bytes(const struct fwd *f);

/* Bytes of weights the pass keeps resident: the packed copies of the
 * matrices, plus the model file's pages not given back after packing (the
 * embeddings, norms, metadata; the whole file on the scalar path). */
size_t fwd_weight_bytes(const struct fwd *f);

#endif
