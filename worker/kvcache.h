/* kvcache.h — the worker's KV cache, managed in blocks, with a prefix cache.
 *
 * One arena of `n_blocks` blocks; a block holds the keys and values of
 * `block_tokens` positions of one sequence for every layer:
 *   block = [layer][K|V][slot][kv_dim] floats, rounded up to whole pages.
 * A sequence owns a table of block ids (its pages, in position order), so a
 * finished or preempted sequence returns its memory at once and sequences of
 * any length share one pool without fragmentation.
 *
 * Prefix cache (kv_prefix_enable; off by default).  A full block whose
 * keys and values are computed is published under a chained hash of its
 * tokens: the hash of block i covers block i's tokens and block i-1's hash,
 * so it stands for every token from position 0 to the block's end (vLLM's
 * automatic prefix caching).  A new sequence attaches the longest chain of
 * published blocks that holds its first tokens and computes only the rest.
 * A match is exact, not merely a hash match: the block's tokens are
 * compared, and so is its parent (block id and the generation it had when
 * the child was published), so by induction the whole prefix is equal.
 * Because the forward pass is batch-invariant, the keys and values of a
 * position depend only on the tokens up to it, so an attached block holds
 * bit for bit what recomputing it would write.
 *
 * Blocks are counted by the sequences holding them (a published block may
 * be held by many; nobody writes into a full block).  A published block
 * that no sequence holds any more stays cached, idle, on an LRU list; idle
 * blocks count as free: kv_reserve takes free blocks first, then evicts
 * the least recently used idle ones, so the cache never costs a sequence
 * its room (nothing is preempted while an idle block is left).
 * kv_release hands a sequence's blocks to the list deepest first, so a
 * chain is evicted from its tail and its shared head lives longest.
 *
 * The arena is reserved address space (MAP_NORESERVE): a page costs memory
 * only once written.  kv_trim() gives the pages of free blocks back to the
 * kernel (MADV_DONTNEED), which is what memory pressure asks for; idle
 * cached blocks must be evicted first (kv_prefix_evict) to be trimmed.
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

/* A sequence's view: its blocks, in position order.  Zero it to start. */
struct kv_seq {
    uint32_t *blocks;
    uint32_t n_blocks;     /* blocks held */
    uint32_t cap;          /* entries allocated in blocks[] */
    /* Prefix chain: blocks[0..n_hashed) are attached or offered to the
     * cache; chain_* describe the cached block that stands for the last of
     * them (the sequence's own, or an equal one published before). */
    uint32_t n_hashed;
    uint32_t chain_id, chain_gen;
    uint64_t chain_hash;
};

/* Create a cache of about `bytes` (at least one block).  Errors:
 * RILL_E_NOMEM (address space), RILL_E_BAD_REQUEST (zero sizes). */
int kv_create(uint32_t n_layers, uint32_t kv_dim, uint32_t block_tokens, size_t bytes, struct kv **out);
void kv_free(struct kv *kv);

/* Make s hold blocks for positions [0, n_tokens): all or nothing, taking
 * free blocks first, then evicting idle cached ones (least recently used
 * first).  RILL_E_NOMEM when not enough (s is unchanged). */
int kv_reserve(struct kv *kv, struct kv_seq *s, uint32_t n_tokens);
/* Give every block of s back (and free its table): published blocks no
 * other sequence holds become idle cached blocks, the rest free. */
void kv_release(struct kv *kv, struct kv_seq *s);

/* Pointers to the keys / values of position `pos` of layer `layer` (kv_dim
 * floats); pos must be reserved.  Positions of one block are contiguous. */
float *kv_k(const struct kv *kv, const struct kv_seq *s, uint32_t layer, uint32_t pos);
float *kv_v(const struct kv *kv, const struct kv_seq *s, uint32_t layer, uint32_t pos);

uint32_t kv_block_tokens(const struct kv *kv);
uint32_t kv_blocks_total(const struct kv *kv);
/* Blocks a reservation can take: free ones plus idle cached ones. */
uint32_t kv_blocks_free(const struct kv *kv);
/* Blocks needed for n tokens. */
uint32_t kv_blocks_for(const struct kv *kv, uint32_t n_tokens);
size_t kv_block_bytes(const struct kv *kv);
/* Bytes of blocks held by sequences (idle cached blocks are not). */
size_t kv_bytes_used(const struct kv *kv);

/* Bytes of blocks written since they were last trimmed: held, idle cached,
 * or free and not yet given back (an upper bound on the arena's resident
 * pages: a block's last pages may be unwritten). */
size_t kv_bytes_resident(const struct kv *kv);

/* Return the memory of free blocks to the kernel; returns bytes released. */
size_t kv_trim(struct kv *kv);

/* --- prefix cache ------------------------------------------------------------------- */

/* Turn the prefix cache on or off.  Off: nothing is published or attached,
 * and every idle cached block is evicted. */
void kv_prefix_enable(struct kv *kv, bool on);
/* Keep at most `bytes` of idle cached blocks (whole blocks, rounded down):
 * past it the least recently used are evicted as sequences let go of them.
 * Unbounded until called (then only free room bounds it). */
void kv_prefix_limit(struct kv *kv, size_t bytes);
bool kv_prefix_enabled(const struct kv *kv);

/* s holds no blocks yet.  Attach the longest chain of cached blocks that
 * hold exactly tokens[0, k * block_tokens) with k * block_tokens <= limit;
 * returns the tokens attached (k * block_tokens; 0 when off or no match).
 * The caller passes limit < its token count when it needs the last token's
 * logits (that row must run).  Never fails: without room for the table it
 * attaches nothing. */
uint32_t kv_prefix_attach(struct kv *kv, struct kv_seq *s, const int32_t *tokens, uint32_t limit);

/* The keys and values of positions [0, n_valid) of s are computed from
 * tokens[0, n_valid): publish the full blocks among them not offered yet.
 * A block equal to one already cached stays private to s (its chain goes
 * on from the cached one).  Cheap when there is nothing new. */
void kv_prefix_publish(struct kv *kv, struct kv_seq *s, const int32_t *tokens, uint32_t n_valid);

/* Evict up to n idle cached blocks, least recently used first (they become
 * free, so kv_trim can return them); returns how many were evicted. */
uint32_t kv_prefix_evict(struct kv *kv, uint32_t n);

struct kv_prefix_stats {
    uint32_t cached;       /* published blocks (held or idle) */
    uint32_t idle;         /* of those, held by no sequence */
    uint64_t evictions;    /* blocks evicted (to make room, or under pressure) */
};
void kv_prefix_stats(const struct kv *kv, struct kv_prefix_stats *st);

/* The chained hash of a block of `n` tokens following a block whose hash
 * is `parent` (0 for the first block).  The same on every machine. */
uint64_t kv_prefix_hash(uint64_t parent, const int32_t *tokens, uint32_t n);

#endif
