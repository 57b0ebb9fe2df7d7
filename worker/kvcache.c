/* kvcache.c — see kvcache.h. */
#include "kvcache.h"
#include "common/err.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

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
};

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
    if (n > UINT32_MAX / 2)
        return RILL_E_BAD_REQUEST;
    struct kv *kv = calloc(1, sizeof *kv);
    if (!kv)
        return RILL_E_NOMEM;
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
    kv->free_ids = malloc(n * sizeof *kv->free_ids);
    kv->dirty = calloc(n, sizeof *kv->dirty);
    if (kv->arena == MAP_FAILED || !kv->free_ids || !kv->dirty) {
        if (kv->arena != MAP_FAILED)
            munmap(kv->arena, kv->arena_bytes);
        free(kv->free_ids);
        free(kv->dirty);
        free(kv);
        return RILL_E_NOMEM;
    }
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
    munmap(kv->arena, kv->arena_bytes);
    free(kv->free_ids);
    free(kv->dirty);
    free(kv);
}

uint32_t kv_blocks_for(const struct kv *kv, uint32_t n_tokens)
{
    return (uint32_t)(((uint64_t)n_tokens + kv->block_tokens - 1) / kv->block_tokens);
}

int kv_reserve(struct kv *kv, struct kv_seq *s, uint32_t n_tokens)
{
    uint32_t need = kv_blocks_for(kv, n_tokens);
    if (need <= s->n_blocks)
        return 0;
    uint32_t more = need - s->n_blocks;
    if (more > kv->n_free)
        return RILL_E_NOMEM;
    if (need > s->cap) {
        uint32_t cap = s->cap ? s->cap : 8;
        while (cap < need)
            cap *= 2;
        uint32_t *b = realloc(s->blocks, cap * sizeof *b);
        if (!b)
            return RILL_E_NOMEM;
        s->blocks = b;
        s->cap = cap;
    }
    for (uint32_t i = 0; i < more; i++) {
        uint32_t id = kv->free_ids[--kv->n_free];
        kv->dirty[id] = true;
        s->blocks[s->n_blocks++] = id;
    }
    return 0;
}

void kv_release(struct kv *kv, struct kv_seq *s)
{
    for (uint32_t i = 0; i < s->n_blocks; i++)
        kv->free_ids[kv->n_free++] = s->blocks[i];
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
uint32_t kv_blocks_free(const struct kv *kv) { return kv->n_free; }
size_t kv_block_bytes(const struct kv *kv) { return kv->block_bytes; }
size_t kv_bytes_used(const struct kv *kv) { return (size_t)(kv->n_blocks - kv->n_free) * kv->block_bytes; }

size_t kv_trim(struct kv *kv)
{
    size_t released = 0;
    for (uint32_t i = 0; i < kv->n_free; i++) {
        uint32_t id = kv->free_ids[i];
        if (!kv->dirty[id])
            continue;
        madvise(kv->arena + (size_t)id * kv->block_bytes, kv->block_bytes, MADV_DONTNEED);
        kv->dirty[id] = false;
        released += kv->block_bytes;
    }
    return released;
}
