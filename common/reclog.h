/* reclog.h — variable-length records back to back, with an index, that
 * drops its older half when told: the newest records of a stream, within a
 * byte budget the owner keeps.  The gateway's resume log of a stream and a
 * worker's journal of a request are both one (gateway/stream.h,
 * worker/journal.h).
 *
 * A zeroed struct is an empty log.  Records are opaque bytes (here: token
 * records, proto_token_encode), at most UINT32_MAX bytes in all.
 */
#ifndef RILL_RECLOG_H
#define RILL_RECLOG_H

#include <stddef.h>
#include <stdint.h>

struct reclog {
    unsigned char *p;            /* the records, back to back */
    size_t len, cap;
    uint32_t *off;               /* where record i starts in p */
    uint32_t n, off_cap;
};

/* Room for one more record of up to `len` bytes: where to write it (valid
 * until the next call), or NULL when memory runs out.  reclog_commit() then
 * says how many bytes it took. */
unsigned char *reclog_reserve(struct reclog *l, size_t len);
/* The reserved record holds `len` bytes (<= what was reserved). */
void reclog_commit(struct reclog *l, size_t len);
/* reserve + copy + commit.  0 or RILL_E_NOMEM. */
int reclog_append(struct reclog *l, const void *bytes, size_t len);
/* Drop the older half of the records (the one there is, when one).
 * Returns the bytes it freed; *records (may be NULL) how many records. */
size_t reclog_drop_front(struct reclog *l, uint32_t *records);
/* Record i (0: the oldest kept, i < l->n) and its length. */
const unsigned char *reclog_get(const struct reclog *l, uint32_t i, size_t *len);
/* Empty it, memory and all. */
void reclog_free(struct reclog *l);

#endif
