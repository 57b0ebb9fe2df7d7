/* utf8.h — one reading of UTF-8 for the whole project (the tokenizer, the
 * BPE trainer, the JSON writer, the gateway's checks all use it), so that
 * "valid" means the same everywhere: no overlongs, no surrogates, nothing
 * above U+10FFFF. */
#ifndef RILL_UTF8_H
#define RILL_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* The character at s (n >= 1 bytes available): its length (1..4) when
 * valid; -k when the first k bytes are a maximal invalid subpart (Unicode
 * 3.9, "U+FFFD substitution of maximal subparts"); 0 when s is a valid but
 * unfinished prefix that runs to the end of the n bytes. */
int utf8_scan(const uint8_t *s, size_t n);

/* Length of the longest prefix of s[0..n) that is complete, valid UTF-8. */
size_t utf8_valid_prefix(const char *s, size_t n);

#endif
