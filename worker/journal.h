/* journal.h — what a worker keeps of each request so that a gateway that
 * restarted can adopt it: the submit as it came, the ids of the output
 * positions so far, and the encoded token records it wrote to the ring (the
 * newest ones, within a byte budget), for as long as the request runs and
 * window_ns after its last record.
 *
 * Why the worker: the gateway's own record of a stream (its prompt, its
 * delivered ids, its resume log) dies with the gateway process, but the
 * worker that runs the request outlives it.  A new gateway sends `adopt`;
 * the worker answers in its ring, in order with everything else it writes:
 * for each request, the submit that would run it again from where it is
 * (prompt_tokens = the output so far, skip = its count), its `accepted`
 * when it was accepted, then its kept records; then one `adopt` record that
 * says the replay is over.  Records the new gateway read before the replay
 * were for ids it did not know yet and were dropped; the replay carries
 * them again, so nothing is lost and nothing comes twice.
 *
 * Bounds: per request `per_cap` bytes of records (older ones dropped first;
 * the ids are always kept, 4 bytes a position), `total_cap` in all (finished
 * requests are dropped first, oldest first, then running ones' oldest
 * records).
 *
 * Threads: the worker's loop thread only.
 */
#ifndef RILL_JOURNAL_H
#define RILL_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#include "common/proto.h"

struct journal;

/* window_ns 0: keep nothing (journal_* are no-ops).  RILL_E_NOMEM. */
int journal_create(uint64_t window_ns, size_t per_cap, size_t total_cap, struct journal **out);
void journal_free(struct journal *j);

/* A request came (before it is tokenized): keep its submit.  The output
 * positions [0, skip) are the prompt_tokens' last `skip` ids (a failover's
 * prefill); the records in req->prior (the gateway's of the positions just
 * before skip) are kept as if written here.  0, RILL_E_DUPLICATE_ID,
 * RILL_E_NOMEM or an encoding error (then it is not kept). */
int journal_open(struct journal *j, const struct proto_submit *req);
/* The worker accepted it, with this many prompt tokens of its own. */
void journal_accepted(struct journal *j, uint64_t id, uint32_t prompt_tokens);
/* The worker refused it: forget it. */
void journal_drop(struct journal *j, uint64_t id);
/* A record went to the ring: `bytes` is its encoding (len bytes). */
void journal_record(struct journal *j, const struct proto_token *t, const void *bytes, size_t len, uint64_t now_ns);
/* Forget finished requests older than the window. */
void journal_sweep(struct journal *j, uint64_t now_ns);

/* The replay, request by request in the order they came: emit_msg for the
 * submit and the accepted, emit_rec for each kept record.  Stops at the
 * first nonzero return and returns it. */
struct journal_sink {
    void *ctx;
    int (*emit_msg)(void *ctx, const struct proto_msg *m);
    int (*emit_rec)(void *ctx, const void *bytes, size_t len);
};
int journal_replay(struct journal *j, const struct journal_sink *out);

/* Requests kept, and bytes of records kept (for the heartbeat). */
uint32_t journal_count(const struct journal *j);
size_t journal_bytes(const struct journal *j);

#endif
