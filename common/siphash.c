/* siphash.c — see siphash.h. */
#include "siphash.h"

#include <string.h>

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

struct sip {
    uint64_t v0, v1, v2, v3;
};

static void rounds(struct sip *s, int n)
{
    for (int i = 0; i < n; i++) {
        s->v0 += s->v1;
        s->v1 = ROTL(s->v1, 13);
        s->v1 ^= s->v0;
        s->v0 = ROTL(s->v0, 32);
        s->v2 += s->v3;
        s->v3 = ROTL(s->v3, 16);
        s->v3 ^= s->v2;
        s->v0 += s->v3;
        s->v3 = ROTL(s->v3, 21);
        s->v3 ^= s->v0;
        s->v2 += s->v1;
        s->v1 = ROTL(s->v1, 17);
        s->v1 ^= s->v2;
        s->v2 = ROTL(s->v2, 32);
    }
}

/* Initialise and absorb the whole input (2 compression rounds a block). */
static void absorb(struct sip *s, const uint8_t key[SIPHASH_KEY_LEN], const uint8_t *in, size_t len, int wide)
{
    uint64_t k0 = le64(key), k1 = le64(key + 8);
    s->v0 = k0 ^ 0x736f6d6570736575ull;
    s->v1 = k1 ^ 0x646f72616e646f6dull;
    s->v2 = k0 ^ 0x6c7967656e657261ull;
    s->v3 = k1 ^ 0x7465646279746573ull;
    if (wide)
        s->v1 ^= 0xee;
    size_t full = len - len % 8;
    for (size_t i = 0; i < full; i += 8) {
        uint64_t m = le64(in + i);
        s->v3 ^= m;
        rounds(s, 2);
        s->v0 ^= m;
    }
    uint8_t last[8] = {0};
    memcpy(last, in + full, len % 8);
    uint64_t b = (uint64_t)len << 56 | le64(last);
    s->v3 ^= b;
    rounds(s, 2);
    s->v0 ^= b;
}

uint64_t siphash64(const uint8_t key[SIPHASH_KEY_LEN], const void *in, size_t len)
{
    struct sip s;
    absorb(&s, key, in, len, 0);
    s.v2 ^= 0xff;
    rounds(&s, 4);
    return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}

void siphash128(const uint8_t key[SIPHASH_KEY_LEN], const void *in, size_t len, uint8_t out[16])
{
    struct sip s;
    absorb(&s, key, in, len, 1);
    s.v2 ^= 0xee;
    rounds(&s, 4);
    put_le64(out, s.v0 ^ s.v1 ^ s.v2 ^ s.v3);
    s.v1 ^= 0xdd;
    rounds(&s, 4);
    put_le64(out + 8, s.v0 ^ s.v1 ^ s.v2 ^ s.v3);
}
