/* obuf.h — a growable byte buffer with LWS_PRE bytes of headroom, so that
 * a finished frame goes to lws_write() without a copy.
 *
 * A zeroed struct obuf is an empty buffer; obuf_free() returns it to that.
 */
#ifndef RILL_OBUF_H
#define RILL_OBUF_H

#include <libwebsockets.h>
#include <stddef.h>

struct obuf {
    unsigned char *p;   /* p[0 .. LWS_PRE) is headroom; data at p + LWS_PRE */
    size_t len, cap;    /* bytes of data, and room for them */
};

/* Room for `more` bytes after len.  RILL_E_NOMEM (the buffer is unchanged). */
int obuf_reserve(struct obuf *b, size_t more);
/* Append n bytes.  RILL_E_NOMEM (nothing appended). */
int obuf_put(struct obuf *b, const void *data, size_t n);
void obuf_free(struct obuf *b);
static inline unsigned char *obuf_data(const struct obuf *b) { return b->p + LWS_PRE; }

#endif
