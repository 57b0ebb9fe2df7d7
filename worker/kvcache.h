/* kvcache.h — the worker's KV cache, managed in blocks.
 *
 * One arena of `n_blocks` blocks; a block holds the keys and values of
 * `block_tokens` positions of one sequence for every layer:
 *   block = [layer][K|V][slot][kv_dim] floats, rounded up to whole pages.
 * A sequence owns a table of block ids (its pages, in position order), so a
 * finished or preempted sequence returns its memory at once and sequences of
 * any length share one pool without fragmentation.
 *
 * The arena is reserved address space (MAP_NORESERVE): a page costs memory
 * only once written.  kv_trim() gives the pages of free blocks back to the
 * kernel (MADV_DONTNEED), which is what memory pressure asks for.
 *
 * Not thread-safe: the scheduler owns it; the forward pass only reads and
 * writes the floats of blocks it was given.
 */
#ifndef RILL_KVCACHE_H
#define RILL_KVCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct kv;

/* A sequence's view: its blocks, in position order. */
struct kv_seq {
    uint32_t *blocks;
    uint32_t n_blocks;     /* blocks held */
    uint32_t cap;          /* entries allocated in blocks[] */
};

/* Create a cache of about `bytes` (at least one block).  Errors:
 * RILL_E_NOMEM (address space), RILL_E_BAD_REQUEST (zero sizes). */
int kv_create(uint32_t n_layers, uint32_t kv_dim, uint32_t block_tokens, size_t bytes, struct kv **out);
void kv_free(struct kv *kv);

/* Make s hold blocks for positions [0, n_tokens): all or nothing.
 * RILL_E_NOMEM when not enough free blocks (s is unchanged). */
int kv_reserve(struct kv *kv, struct kv_seq *s, uint32_t n_tokens);
/* Give every block of s back (and free its table). */
void kv_release(struct kv *kv, struct kv_seq *s);

/* Pointers to the keys / values of position `pos` of layer `layer` (kv_dim
 * floats); pos must be reserved.  Positions of one block are contiguous. */
float *kv_k(const struct kv *kv, const struct kv_seq *s, uint32_t layer, uint32_t pos);
float *kv_v(const struct kv *kv, const struct kv_seq *s, uint32_t layer, uint32_t pos);

uint32_t kv_block_tokens(const struct kv *kv);
uint32_t kv_blocks_total(const struct kv *kv);
uint32_t kv_blocks_free(const struct kv *kv);
/* Blocks needed for n tokens. */
uint32_t kv_blocks_for(const struct kv *kv, uint32_t n_tokens);
size_t kv_block_bytes(const struct kv *kv);
/* Bytes of blocks held by sequences. */
size_t kv_bytes_used(const struct kv *kv);

/* Return the memory of free blocks to the kernel; returns bytes released. */
size_t kv_trim(struct kv *kv);

#endif
