/* siphash.h — SipHash-2-4 (Aumasson and Bernstein), a keyed hash that is a
 * pseudorandom function for short inputs: a MAC for the gateway's resume
 * tokens, whose key outlives a gateway process so that a restarted gateway
 * can check tokens its predecessor gave out.  64- and 128-bit outputs, as
 * the reference specifies them (test vectors in tests/unit/test_siphash.c).
 */
#ifndef RILL_SIPHASH_H
#define RILL_SIPHASH_H

#include <stddef.h>
#include <stdint.h>

#define SIPHASH_KEY_LEN 16

uint64_t siphash64(const uint8_t key[SIPHASH_KEY_LEN], const void *in, size_t len);
/* The 128-bit output, as 16 bytes (the reference's byte order). */
void siphash128(const uint8_t key[SIPHASH_KEY_LEN], const void *in, size_t len, uint8_t out[16]);

#endif
