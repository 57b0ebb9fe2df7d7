/* hash.h — the project's two hashes, the same on every machine (tables keyed
 * by them iterate in the same order everywhere, which deterministic BPE
 * training relies on).  Not for adversarial keys. */
#ifndef RILL_HASH_H
#define RILL_HASH_H

#include <stddef.h>
#include <stdint.h>

/* FNV-1a over bytes, with a final fold of the high bits into the low ones
 * (tables index with the low bits). */
static inline uint64_t hash_bytes(const void *p, size_t n)
{
    const uint8_t *s = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

/* splitmix64: a 64-bit mixer (and, stepped by the golden ratio, a PRNG). */
static inline uint64_t hash_u64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* The next splitmix64 number of the stream whose state is *state. */
static inline uint64_t hash_u64_next(uint64_t *state)
{
    uint64_t r = hash_u64(*state);
    *state += 0x9e3779b97f4a7c15ull;
    return r;
}

#endif
