/* jsonw.h — a small JSON writer into a caller's buffer, for the hot paths
 * (token frames, log lines) where building a cJSON tree per token would
 * allocate.  Parsing JSON is cJSON's job, not this file's.
 *
 * Commas are placed automatically.  On overflow the writer stops writing and
 * jsonw_ok() returns false; the buffer then holds a truncated prefix.
 * Strings are escaped per RFC 8259; invalid UTF-8 bytes become U+FFFD so that
 * the output is always valid JSON.  Non-finite doubles are written as null.
 */
#ifndef RILL_JSONW_H
#define RILL_JSONW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JSONW_MAX_DEPTH 16

struct jsonw {
    char *buf;
    size_t cap, len;
    bool overflow;
    int depth;
    bool need_comma[JSONW_MAX_DEPTH];
    bool after_key;
};

void jsonw_init(struct jsonw *w, char *buf, size_t cap);
static inline size_t jsonw_len(const struct jsonw *w) { return w->len; }
static inline bool jsonw_ok(const struct jsonw *w) { return !w->overflow && w->depth == 0; }

void jsonw_obj_begin(struct jsonw *w);
void jsonw_obj_end(struct jsonw *w);
void jsonw_arr_begin(struct jsonw *w);
void jsonw_arr_end(struct jsonw *w);
void jsonw_key(struct jsonw *w, const char *key);
void jsonw_str(struct jsonw *w, const char *s);
void jsonw_strn(struct jsonw *w, const char *s, size_t n);
void jsonw_int(struct jsonw *w, int64_t v);
void jsonw_uint(struct jsonw *w, uint64_t v);
/* `prec` significant decimals after the point (0..9). */
void jsonw_double(struct jsonw *w, double v, int prec);
void jsonw_bool(struct jsonw *w, bool v);
void jsonw_null(struct jsonw *w);
/* Already-encoded JSON text (trusted), inserted as one value. */
void jsonw_raw(struct jsonw *w, const char *json, size_t n);

static inline void jsonw_key_str(struct jsonw *w, const char *k, const char *v) { jsonw_key(w, k); jsonw_str(w, v); }
static inline void jsonw_key_int(struct jsonw *w, const char *k, int64_t v) { jsonw_key(w, k); jsonw_int(w, v); }
static inline void jsonw_key_uint(struct jsonw *w, const char *k, uint64_t v) { jsonw_key(w, k); jsonw_uint(w, v); }
static inline void jsonw_key_double(struct jsonw *w, const char *k, double v, int prec) { jsonw_key(w, k); jsonw_double(w, v, prec); }
static inline void jsonw_key_bool(struct jsonw *w, const char *k, bool v) { jsonw_key(w, k); jsonw_bool(w, v); }

#include "utf8.h" /* utf8_valid_prefix(), for the callers that escape text */

#endif
