/* kvcache.c — see kvcache.h. */
#include "kvcache.h"
#include "common/err.h"
#include "common/hash.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define KV_NONE UINT32_MAX

struct kv {
    uint32_t n_layers, kv_dim, block_tokens;
    uint32_t n_blocks;
    size_t block_bytes;   /* stride between blocks (whole pages) */
    size_t layer_bytes;   /* K and V of one layer in a block */
    size_t half_bytes;    /* K (or V) of one layer in a block */
    unsigned char *arena;
    size_t arena_bytes;
    uint32_t *free_ids;   /* stack of free block ids */
    uint32_t n_free;
    bool *dirty;          /* the block has resident pages (written since the last trim) */
    uint32_t *ref;        /* sequences holding the block */

    /* Prefix cache: per block, whether it is published and under what key;
     * a hash table of published blocks (heads per bucket, chained through
     * bnext); idle published blocks on a doubly linked LRU list. */
    bool prefix;
    uint32_t max_idle;    /* idle cached blocks kept at most (UINT32_MAX: as many as free room allows) */
    bool *pub;
    uint64_t *hash;
    uint32_t *parent, *parent_gen; /* the cached block before it (KV_NONE: first) */
    uint32_t *gen;        /* bumped when the block leaves the table: a child that
                           * names an old generation never matches again */
    int32_t *toks;        /* block_tokens tokens per block */
    uint32_t *bucket, bucket_mask;
    uint32_t *bnext;
    uint32_t *lru_prev, *lru_next;
    uint32_t lru_head, lru_tail;  /* least recently used first */
    uint32_t n_idle, n_cached;
    uint32_t n_dirty;             /* blocks with dirty[] set */
    uint64_t evictions;
};

static void *alloc_n(size_t n, size_t size) { return calloc(n ? n : 1, size); }

int kv_create(uint32_t n_layers, uint32_t kv_dim, uint32_t block_tokens, size_t bytes, struct kv **out)
{
    *out = NULL;
    if (!n_layers || !kv_dim || !block_tokens)
        return RILL_E_BAD_REQUEST;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t half = (size_t)block_tokens * kv_dim * sizeof(float);
    size_t raw = 2 * half * n_layers;
    size_t block_bytes = (raw + page - 1) / page * page;
    size_t n = bytes / block_bytes;
    if (n < 1)
        n = 1;
    if (n > UINT32_MAX / 4)
        return RILL_E_BAD_REQUEST;
    struct kv *kv = calloc(1, sizeof *kv);
    if (!kv)
        return RILL_E_NOMEM;
    kv->max_idle = UINT32_MAX;
    kv->n_layers = n_layers;
    kv->kv_dim = kv_dim;
    kv->block_tokens = block_tokens;
    kv->n_blocks = (uint32_t)n;
    kv->block_bytes = block_bytes;
    kv->half_bytes = half;
    kv->layer_bytes = 2 * half;
    kv->arena_bytes = n * block_bytes;
    kv->arena = mmap(NULL, kv->arena_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
    uint32_t nb = 16;
    while (nb < n)
        nb *= 2;
    kv->bucket_mask = nb - 1;
    kv->free_ids = alloc_n(n, sizeof *kv->free_ids);
    kv->dirty = alloc_n(n, sizeof *kv->dirty);
    kv->ref = alloc_n(n, sizeof *kv->ref);
    kv->pub = alloc_n(n, sizeof *kv->pub);
    kv->hash = alloc_n(n, sizeof *kv->hash);
    kv->parent = alloc_n(n, sizeof *kv->parent);
    kv->parent_gen = alloc_n(n, sizeof *kv->parent_gen);
    kv->gen = alloc_n(n, sizeof *kv->gen);
    kv->toks = alloc_n(n * block_tokens, sizeof *kv->toks);
    kv->bucket = alloc_n(nb, sizeof *kv->bucket);
    kv->bnext = alloc_n(n, sizeof *kv->bnext);
    kv->lru_prev = alloc_n(n, sizeof *kv->lru_prev);
    kv->lru_next = alloc_n(n, sizeof *kv->lru_next);
    if (kv->arena == MAP_FAILED || !kv->free_ids || !kv->dirty || !kv->ref || !kv->pub || !kv->hash ||
        !kv->parent || !kv->parent_gen || !kv->gen || !kv->toks || !kv->bucket || !kv->bnext || !kv->lru_prev ||
        !kv->lru_next) {
        if (kv->arena == MAP_FAILED)
            kv->arena = NULL;
        kv_free(kv);
        return RILL_E_NOMEM;
    }
    for (uint32_t i = 0; i < nb; i++)
        kv->bucket[i] = KV_NONE;
    kv->lru_head = kv->lru_tail = KV_NONE;
    /* Pop order: block 0 first, so that a lightly used cache touches few pages. */
    for (uint32_t i = 0; i < n; i++)
        kv->free_ids[i] = (uint32_t)n - 1 - i;
    kv->n_free = (uint32_t)n;
    *out = kv;
    return 0;
}

void kv_free(struct kv *kv)
{
    if (!kv)
        return;
    if (kv->arena)
        munmap(kv->arena, kv->arena_bytes);
    free(kv->free_ids);
    free(kv->dirty);
    free(kv->ref);
    free(kv->pub);
    free(kv->hash);
    free(kv->parent);
    free(kv->parent_gen);
    free(kv->gen);
    free(kv->toks);
    free(kv->bucket);
    free(kv->bnext);
    free(kv->lru_prev);
    free(kv->lru_next);
    free(kv);
}

uint32_t kv_blocks_for(const struct kv *kv, uint32_t n_tokens)
{
    return (uint32_t)(((uint64_t)n_tokens + kv->block_tokens - 1) / kv->block_tokens);
}

/* --- the LRU list of idle cached blocks and the table --------------------------------- */

static void lru_unlink(struct kv *kv, uint32_t id)
{
    uint32_t p = kv->lru_prev[id], n = kv->lru_next[id];
    if (p == KV_NONE)
        kv->lru_head = n;
    else
        kv->lru_next[p] = n;
    if (n == KV_NONE)
        kv->lru_tail = p;
    else
        kv->lru_prev[n] = p;
    kv->n_idle--;
}

static void lru_push_tail(struct kv *kv, uint32_t id)
{
    kv->lru_prev[id] = kv->lru_tail;
    kv->lru_next[id] = KV_NONE;
    if (kv->lru_tail == KV_NONE)
        kv->lru_head = id;
    else
        kv->lru_next[kv->lru_tail] = id;
    kv->lru_tail = id;
    kv->n_idle++;
}

/* Take block id out of the table (it keeps its floats; nothing finds them). */
static void unpublish(struct kv *kv, uint32_t id)
{
    assert(kv->pub[id]);
    uint32_t *at = &kv->bucket[kv->hash[id] & kv->bucket_mask];
    while (*at != id) {
        assert(*at != KV_NONE);
        at = &kv->bnext[*at];
    }
    *at = kv->bnext[id];
    kv->pub[id] = false;
    kv->gen[id]++;
    kv->n_cached--;
}

/* The least recently used idle block, out of the table and the list. */
static uint32_t evict_lru(struct kv *kv)
{
    uint32_t id = kv->lru_head;
    assert(id != KV_NONE && kv->ref[id] == 0);
    lru_unlink(kv, id);
    unpublish(kv, id);
    kv->evictions++;
    return id;
}

static uint32_t find(const struct kv *kv, uint64_t h, uint32_t parent, uint32_t parent_gen, const int32_t *t)
{
    for (uint32_t id = kv->bucket[h & kv->bucket_mask]; id != KV_NONE; id = kv->bnext[id])
        if (kv->hash[id] == h && kv->parent[id] == parent && kv->parent_gen[id] == parent_gen &&
            !memcmp(kv->toks + (size_t)id * kv->block_tokens, t, kv->block_tokens * sizeof *t))
            return id;
    return KV_NONE;
}

/* --- sequences --------------------------------------------------------------------------- */

static int grow_table(struct kv_seq *s, uint32_t need)
{
    if (need <= s->cap)
        return 0;
    uint32_t cap = s->cap ? s->cap : 8;
    while (cap < need)
        cap *= 2;
    uint32_t *b = realloc(s->blocks, cap * sizeof *b);
    if (!b)
        return RILL_E_NOMEM;
    s->blocks = b;
    s->cap = cap;
    return 0;
}

int kv_reserve(struct kv *kv, struct kv_seq *s, uint32_t n_tokens)
{
    uint32_t need = kv_blocks_for(kv, n_tokens);
    if (need <= s->n_blocks)
        return 0;
    uint32_t more = need - s->n_blocks;
    if (more > kv->n_free + kv->n_idle)
        return RILL_E_NOMEM;
    if (grow_table(s, need))
        return RILL_E_NOMEM;
    for (uint32_t i = 0; i < more; i++) {
        uint32_t id = kv->n_free ? kv->free_ids[--kv->n_free] : evict_lru(kv);
        assert(kv->ref[id] == 0 && !kv->pub[id]);
        kv->n_dirty += !kv->dirty[id];
        kv->dirty[id] = true;
        kv->ref[id] = 1;
        s->blocks[s->n_blocks++] = id;
    }
    return 0;
}

void kv_release(struct kv *kv, struct kv_seq *s)
{
    /* Deepest block first: a chain's tail becomes the least recently used
     * and is evicted before the head other prompts share. */
    for (uint32_t i = s->n_blocks; i-- > 0;) {
        uint32_t id = s->blocks[i];
        assert(kv->ref[id] > 0);
        if (--kv->ref[id])
            continue;
        if (kv->pub[id] && kv->prefix) {
            lru_push_tail(kv, id);
            /* Over the bound: the least recently used goes back to the free
             * stack, whose top is reused first, so the pages the cache
             * touches stay a bounded set. */
            while (kv->n_idle > kv->max_idle && kv->lru_head != KV_NONE)
                kv->free_ids[kv->n_free++] = evict_lru(kv);
            continue;
        }
        if (kv->pub[id])
            unpublish(kv, id);
        kv->free_ids[kv->n_free++] = id;
    }
    free(s->blocks);
    memset(s, 0, sizeof *s);
}

static inline unsigned char *slot(const struct kv *kv, const struct kv_seq *s, uint32_t layer, uint32_t pos)
{
    uint32_t b = s->blocks[pos / kv->block_tokens];
    return kv->arena + (size_t)b * kv->block_bytes + (size_t)layer * kv->layer_bytes +
           (size_t)(pos % kv->block_tokens) * kv->kv_dim * sizeof(float);
}

float *kv_k(const struct kv *kv, const struct kv_seq *s, uint32_t layer, uint32_t pos)
{
    return (float *)slot(kv, s, layer, pos);
}

float *kv_v(const struct kv *kv, const struct kv_seq *s, uint32_t layer, uint32_t pos)
{
    return (float *)(slot(kv, s, layer, pos) + kv->half_bytes);
}

uint32_t kv_block_tokens(const struct kv *kv) { return kv->block_tokens; }
uint32_t kv_blocks_total(const struct kv *kv) { return kv->n_blocks; }
uint32_t kv_blocks_free(const struct kv *kv) { return kv->n_free + kv->n_idle; }
size_t kv_block_bytes(const struct kv *kv) { return kv->block_bytes; }
size_t kv_bytes_used(const struct kv *kv)
{
    return (size_t)(kv->n_blocks - kv->n_free - kv->n_idle) * kv->block_bytes;
}

size_t kv_bytes_resident(const struct kv *kv) { return (size_t)kv->n_dirty * kv->block_bytes; }

size_t kv_trim(struct kv *kv)
{
    size_t released = 0;
    for (uint32_t i = 0; i < kv->n_free; i++) {
        uint32_t id = kv->free_ids[i];
        if (!kv->dirty[id])
            continue;
        madvise(kv->arena + (size_t)id * kv->block_bytes, kv->block_bytes, MADV_DONTNEED);
        kv->dirty[id] = false;
        kv->n_dirty--;
        released += kv->block_bytes;
    }
    return released;
}

/* --- prefix cache ------------------------------------------------------------------------ */

void kv_prefix_limit(struct kv *kv, size_t bytes)
{
    size_t n = bytes / kv->block_bytes;
    kv->max_idle = n < UINT32_MAX ? (uint32_t)n : UINT32_MAX;
    if (kv->n_idle > kv->max_idle)
        kv_prefix_evict(kv, kv->n_idle - kv->max_idle);
}

void kv_prefix_enable(struct kv *kv, bool on)
{
    kv->prefix = on;
    if (!on)
        kv_prefix_evict(kv, UINT32_MAX);
}

bool kv_prefix_enabled(const struct kv *kv) { return kv->prefix; }

uint64_t kv_prefix_hash(uint64_t parent, const int32_t *tokens, uint32_t n)
{
    uint64_t h = hash_u64(parent ^ 0x72696c6c2d6b7621ull);
    for (uint32_t i = 0; i < n; i++)
        h = hash_u64(h ^ (uint32_t)tokens[i]);
    return h;
}

uint32_t kv_prefix_attach(struct kv *kv, struct kv_seq *s, const int32_t *tokens, uint32_t limit)
{
    uint32_t bt = kv->block_tokens, k_max = limit / bt;
    if (!kv->prefix || s->n_blocks || !k_max || grow_table(s, k_max))
        return 0;
    uint32_t pid = KV_NONE, pgen = 0;
    uint64_t h = 0;
    while (s->n_blocks < k_max) {
        const int32_t *t = tokens + (size_t)s->n_blocks * bt;
        uint64_t hh = kv_prefix_hash(h, t, bt);
        uint32_t id = find(kv, hh, pid, pgen, t);
        if (id == KV_NONE)
            break;
        if (kv->ref[id]++ == 0)
            lru_unlink(kv, id);
        s->blocks[s->n_blocks++] = id;
        h = hh;
        pid = id;
        pgen = kv->gen[id];
    }
    s->n_hashed = s->n_blocks;
    s->chain_id = pid;
    s->chain_gen = pgen;
    s->chain_hash = h;
    return s->n_blocks * bt;
}

void kv_prefix_publish(struct kv *kv, struct kv_seq *s, const int32_t *tokens, uint32_t n_valid)
{
    uint32_t bt = kv->block_tokens;
    if (!kv->prefix)
        return;
    while (s->n_hashed < s->n_blocks && (uint64_t)(s->n_hashed + 1) * bt <= n_valid) {
        const int32_t *t = tokens + (size_t)s->n_hashed * bt;
        uint32_t pid = s->n_hashed ? s->chain_id : KV_NONE, pgen = s->n_hashed ? s->chain_gen : 0;
        uint64_t h = kv_prefix_hash(s->n_hashed ? s->chain_hash : 0, t, bt);
        uint32_t id = find(kv, h, pid, pgen, t);
        if (id == KV_NONE) {
            id = s->blocks[s->n_hashed];
            assert(!kv->pub[id] && kv->ref[id] == 1);
            kv->pub[id] = true;
            kv->hash[id] = h;
            kv->parent[id] = pid;
            kv->parent_gen[id] = pgen;
            memcpy(kv->toks + (size_t)id * bt, t, bt * sizeof *t);
            uint32_t *head = &kv->bucket[h & kv->bucket_mask];
            kv->bnext[id] = *head;
            *head = id;
            kv->n_cached++;
        }
        s->chain_id = id;
        s->chain_gen = kv->gen[id];
        s->chain_hash = h;
        s->n_hashed++;
    }
}

uint32_t kv_prefix_evict(struct kv *kv, uint32_t n)
{
    uint32_t done = 0;
    while (done < n && kv->lru_head != KV_NONE) {
        kv->free_ids[kv->n_free++] = evict_lru(kv);
        done++;
    }
    return done;
}

void kv_prefix_stats(const struct kv *kv, struct kv_prefix_stats *st)
{
    st->cached = kv->n_cached;
    st->idle = kv->n_idle;
    st->evictions = kv->evictions;
}
