/* obuf.c — see obuf.h. */
#include "obuf.h"
#include "common/err.h"

#include <stdlib.h>
#include <string.h>

int obuf_reserve(struct obuf *b, size_t more)
{
    if (b->p && b->cap - b->len >= more)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < more)
        cap *= 2;
    unsigned char *p = realloc(b->p, LWS_PRE + cap);
    if (!p)
        return RILL_E_NOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

int obuf_put(struct obuf *b, const void *data, size_t n)
{
    if (obuf_reserve(b, n))
        return RILL_E_NOMEM;
    if (n)
        memcpy(b->p + LWS_PRE + b->len, data, n);
    b->len += n;
    return 0;
}

void obuf_free(struct obuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}
