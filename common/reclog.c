/* reclog.c — see reclog.h. */
#include "reclog.h"
#include "err.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

unsigned char *reclog_reserve(struct reclog *l, size_t len)
{
    if (l->len + len > l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 1024;
        while (cap < l->len + len)
            cap *= 2;
        unsigned char *a = realloc(l->p, cap);
        if (!a)
            return NULL;
        l->p = a;
        l->cap = cap;
    }
    if (l->n == l->off_cap) {
        uint32_t cap = l->off_cap ? l->off_cap * 2 : 64;
        uint32_t *a = realloc(l->off, cap * sizeof *a);
        if (!a)
            return NULL;
        l->off = a;
        l->off_cap = cap;
    }
    return l->p + l->len;
}

void reclog_commit(struct reclog *l, size_t len)
{
    assert(l->n < l->off_cap && l->len + len <= l->cap && l->len + len <= UINT32_MAX);
    l->off[l->n++] = (uint32_t)l->len;
    l->len += len;
}

int reclog_append(struct reclog *l, const void *bytes, size_t len)
{
    unsigned char *d = reclog_reserve(l, len);
    if (!d)
        return RILL_E_NOMEM;
    memcpy(d, bytes, len);
    reclog_commit(l, len);
    return 0;
}

size_t reclog_drop_front(struct reclog *l, uint32_t *records)
{
    uint32_t k = l->n / 2 ? l->n / 2 : l->n;
    size_t cut = k < l->n ? l->off[k] : l->len;
    memmove(l->p, l->p + cut, l->len - cut);
    l->len -= cut;
    for (uint32_t i = k; i < l->n; i++)
        l->off[i - k] = l->off[i] - (uint32_t)cut;
    l->n -= k;
    if (records)
        *records = k;
    return cut;
}

const unsigned char *reclog_get(const struct reclog *l, uint32_t i, size_t *len)
{
    assert(i < l->n);
    size_t end = i + 1 < l->n ? l->off[i + 1] : l->len;
    *len = end - l->off[i];
    return l->p + l->off[i];
}

void reclog_free(struct reclog *l)
{
    free(l->p);
    free(l->off);
    memset(l, 0, sizeof *l);
}
