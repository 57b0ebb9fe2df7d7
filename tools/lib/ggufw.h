/* ggufw.h — a streaming GGUF writer, for the model maker (rill-mkmodel) and
 * the tests that make their own files.  The worker only reads GGUF
 * (worker/gguf.h), so the writer lives with the tools.
 */
#ifndef RILL_GGUFW_H
#define RILL_GGUFW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/gguf.h"

/* ---- writer ----------------------------------------------------------------
 * Order of calls: metadata (gguf_w_kv_*) and tensor declarations
 * (gguf_w_add_tensor) in any order, then each tensor's data in the order the
 * tensors were declared (gguf_w_data / gguf_w_data_f32, each possibly in
 * several pieces), then gguf_w_finish.  Metadata and tensor infos are kept in
 * memory (they are small); tensor data is streamed to the file as it comes,
 * so writing a large model never holds it in memory.
 *
 * The file is written under a temporary name in the same directory and
 * renamed over `path` by gguf_w_finish (after fsync), so a reader never sees
 * a half-written model; gguf_w_abort, or any error, removes the temporary.
 *
 * Errors are sticky: the first one is kept (message included), later calls do
 * nothing and return it, and gguf_w_finish returns it.  Codes: RILL_E_IO,
 * RILL_E_NOMEM, RILL_E_BAD_REQUEST (misuse: duplicate key or tensor, unknown
 * type, size not a multiple of the block, data beyond the declared size,
 * calls out of order). */
struct gguf_writer;

/* `alignment`: 0 for the default (32); otherwise a power of two (written as
 * general.alignment when it is not 32).  The message of this and of every
 * later error goes to `why` (may be NULL), which must outlive the writer. */
int gguf_w_open(const char *path, uint32_t alignment, struct gguf_writer **out, char *why, size_t why_len);

int gguf_w_kv_u8(struct gguf_writer *w, const char *key, uint8_t v);
int gguf_w_kv_i8(struct gguf_writer *w, const char *key, int8_t v);
int gguf_w_kv_u16(struct gguf_writer *w, const char *key, uint16_t v);
int gguf_w_kv_i16(struct gguf_writer *w, const char *key, int16_t v);
int gguf_w_kv_u32(struct gguf_writer *w, const char *key, uint32_t v);
int gguf_w_kv_i32(struct gguf_writer *w, const char *key, int32_t v);
int gguf_w_kv_u64(struct gguf_writer *w, const char *key, uint64_t v);
int gguf_w_kv_i64(struct gguf_writer *w, const char *key, int64_t v);
int gguf_w_kv_f32(struct gguf_writer *w, const char *key, float v);
int gguf_w_kv_f64(struct gguf_writer *w, const char *key, double v);
int gguf_w_kv_bool(struct gguf_writer *w, const char *key, bool v);
int gguf_w_kv_str(struct gguf_writer *w, const char *key, const char *s);
int gguf_w_kv_strn(struct gguf_writer *w, const char *key, const char *s, uint64_t len);
/* An array of n numeric or bool elements of `elem_type`, packed in host
 * (little-endian) order at `elems`. */
int gguf_w_kv_arr(struct gguf_writer *w, const char *key, enum gguf_vtype elem_type,
                  const void *elems, uint64_t n);
/* An array of n strings; lens may be NULL (then the strings are NUL-terminated). */
int gguf_w_kv_arr_str(struct gguf_writer *w, const char *key, const char *const *strs,
                      const uint32_t *lens, uint64_t n);

/* Declare a tensor of type `type` (any type gguf_ttype_name() knows) with
 * n_dims (1..4) dimensions ne[0..n_dims-1], each nonzero. */
int gguf_w_add_tensor(struct gguf_writer *w, const char *name, uint32_t type,
                      uint32_t n_dims, const uint64_t *ne);

/* Append `len` raw bytes of the current tensor's data (the first call writes
 * the header, metadata and tensor infos).  Moves to the next tensor when the
 * current one is complete (a piece may not cross tensors). */
int gguf_w_data(struct gguf_writer *w, const void *bytes, size_t len);
/* Append `n` elements given as floats, encoded into the current tensor's type
 * (F32, F16, BF16 or Q8_0; Q8_0 the llama.cpp way: per block of 32,
 * d = max|x| / 127, q = round(x / d)).  n must be a multiple of the block. */
int gguf_w_data_f32(struct gguf_writer *w, const float *x, size_t n);

/* Check that every declared tensor got all its data, flush, fsync, rename
 * into place and free the writer.  Returns the first error if there was one
 * (the temporary file is then removed). */
int gguf_w_finish(struct gguf_writer *w);
/* Give up: remove the temporary file and free the writer.  NULL is a no-op. */
void gguf_w_abort(struct gguf_writer *w);
/* Bytes written to the file so far (the total after the last data piece). */
uint64_t gguf_w_bytes(const struct gguf_writer *w);

/* Encode n floats (a multiple of 32) as Q8_0 blocks (34 bytes each) into out. */
void gguf_quantize_q8_0(const float *x, void *out, size_t n);

#endif
