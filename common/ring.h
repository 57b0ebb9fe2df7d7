/* ring.h — a single-producer, single-consumer ring of variable-length records
 * in POSIX shared memory: the token plane between one worker (producer) and
 * its gateway (consumer).
 *
 * Layout: one header page, then `capacity` bytes of data (a power of two).
 * Indices are free-running byte counts (never wrapped), so full and empty are
 * told apart without a spare slot.  A record is an 8-byte header
 * {u32 len, u32 kind} and len payload bytes, padded to 8; a record never
 * splits across the end of the buffer: a pad record fills the tail instead.
 *
 * Visibility: records the producer writes stay invisible until ring_publish(),
 * which makes all of them visible with one release store of the write index
 * and at most one futex wake-up (only when the consumer sleeps).  So a
 * producer killed mid-batch leaves only whole, published records behind.
 *
 * Waiting: the consumer sleeps on a futex in the shared header when the ring
 * is empty (after a short bounded spin); the producer sleeps on another when
 * the ring is full.  Neither ever busy-polls while idle, and the producer
 * never overwrites unread data.
 *
 * Liveness: the producer holds an exclusive flock() on the object for its
 * whole life, so a reader tells a dead producer from a quiet one without
 * trusting pids (which are reused).  Each producer incarnation writes a fresh
 * random epoch into the header, so a restarted producer is told from the one
 * before.
 *
 * Ownership: /dev/shm is writable by every local user, so anyone can take a
 * name first.  Both sides use only an object of their own uid and mode 0600
 * (never a symlink); the producer creates it with O_EXCL and reserves its
 * memory at once.
 *
 * Threads: one thread produces and one consumes; every other function
 * (liveness, wake) may be called from any thread.
 */
#ifndef RILL_RING_H
#define RILL_RING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define RING_MAGIC        0x474e49524c4c4952ull /* "RILLRING" little-endian */
#define RING_VERSION      1
#define RING_HDR_BYTES    4096u
#define RING_REC_HDR      8u
#define RING_MIN_CAPACITY 4096u
#define RING_MAX_CAPACITY (1ull << 34)
#define RING_NAME_MAX     64

struct ring;

/* Create the ring `name` ("/rill-<uid>-<instance>-w<k>", see cfg_ring_name())
 * as its producer: a new object (O_EXCL) of mode 0600 whose memory is
 * reserved at once (posix_fallocate), so a /dev/shm too small for it fails
 * here instead of with SIGBUS on a later write.  An object already under the
 * name is replaced only when it is ours (our uid, mode 0600, a regular file)
 * and no live producer holds it: a dead predecessor's.  `capacity` is rounded
 * up to a power of two within [RING_MIN_CAPACITY, RING_MAX_CAPACITY].
 * Returns 0 and *out, or an error with a one-line reason in `why` (may be
 * NULL, `why_len` bytes):
 *   RILL_E_EXISTS        a live producer holds the name (or it reappeared
 *                        while we replaced a dead one);
 *   RILL_E_UNAUTHORIZED  the name is taken by an object that is not ours to
 *                        reuse: another uid owns it, group or other may use it,
 *                        or it is not a regular file (a squatter);
 *   RILL_E_NOMEM         /dev/shm cannot hold the ring ("/dev/shm has 3.0 MiB
 *                        free, the ring needs 4.0 MiB");
 *   RILL_E_IO            any other system failure;
 *   RILL_E_BAD_CONFIG    a bad name. */
int ring_create(const char *name, size_t capacity, struct ring **out, char *why, size_t why_len);

/* Open the ring `name` as its consumer and check the object, then its header:
 * RILL_E_UNAUTHORIZED when it is not ours to trust (another uid owns it, group
 * or other may use it, or it is not a regular file); RILL_E_BAD_FORMAT for
 * wrong magic, version, capacity or object size; RILL_E_IO if it cannot be
 * opened.  The reason goes to `why` (may be NULL, `why_len` bytes). */
int ring_open(const char *name, struct ring **out, char *why, size_t why_len);

/* Unmap and close.  The producer also unlinks the name when `unlink_name`
 * (a clean exit); a consumer never unlinks.  NULL is ignored. */
void ring_close(struct ring *r, bool unlink_name);

/* --- producer ---------------------------------------------------------------- */

/* Largest payload a record of this ring may carry (capacity/2 - 8). */
uint32_t ring_max_payload(const struct ring *r);

/* Reserve a record of `len` payload bytes with the caller's `kind` (1..0xfffe)
 * and return where to write its payload; the record becomes visible at the
 * next ring_publish().  When the ring is too full, earlier reserved records
 * are published first (so the consumer can drain them), then:
 * timeout_ms == 0 fails with RILL_E_FULL at once, > 0 waits that long, < 0
 * waits for ever.  Returns NULL and sets *err (RILL_E_FULL, RILL_E_TOO_LARGE)
 * on failure.  The pointer is valid until the next reserve or publish. */
void *ring_reserve(struct ring *r, uint32_t len, uint32_t kind, int timeout_ms, int *err);

/* ring_reserve + memcpy. */
int ring_push(struct ring *r, const void *data, uint32_t len, uint32_t kind, int timeout_ms);

/* Make every reserved record visible: one release store, and one futex wake
 * if (and only if) the consumer is asleep.  Returns the number of records
 * published. */
unsigned ring_publish(struct ring *r);

/* Wait until at least `bytes` are free (publishing reserved records first),
 * up to timeout_ms (0: just check, < 0: for ever).  0 or RILL_E_FULL. */
int ring_wait_space(struct ring *r, size_t bytes, int timeout_ms);

/* Bytes currently free for the producer (capacity minus unread, published or
 * not). */
size_t ring_free_bytes(const struct ring *r);

/* --- consumer -------------------------------------------------------------- */

/* The next published record: 0 with *data, *len and *kind set, RILL_E_AGAIN
 * when none is published, RILL_E_BAD_FORMAT when the shared data is corrupt
 * (a record header that cannot be right).  The record stays readable until
 * ring_release(). */
int ring_next(struct ring *r, const void **data, uint32_t *len, uint32_t *kind);

/* Give the space of every record returned by ring_next() back to the producer
 * (one release store; wakes the producer only if it waits for space). */
void ring_release(struct ring *r);

/* Whether a published record is waiting. */
bool ring_readable(const struct ring *r);

/* Sleep until a record past the consumer's read cursor is published (the
 * usual wait after ring_next() said RILL_E_AGAIN), ring_wake_consumer() is
 * called, or timeout_ms passes (< 0: no timeout).  Spins briefly first.
 * Returns 0 if data is there, RILL_E_AGAIN on timeout or wake-up. */
int ring_wait_data(const struct ring *r, int timeout_ms);

/* The same, for a thread that only watches: sleep until the published write
 * index differs from `seen`, an index it observed earlier.  (Passing a fresh
 * ring_write_index() would sleep through a publish that came after the
 * caller last looked.) */
int ring_wait(const struct ring *r, uint64_t seen, int timeout_ms);

/* The published write index (acquire): bytes ever published. */
uint64_t ring_write_index(const struct ring *r);

/* Interrupt a consumer sleeping in ring_wait() (from another thread). */
void ring_wake_consumer(struct ring *r);

/* --- identity and liveness ------------------------------------------------------ */

uint64_t ring_epoch(const struct ring *r);
pid_t ring_producer_pid(const struct ring *r);
size_t ring_capacity(const struct ring *r);
const char *ring_name(const struct ring *r);

/* Whether the producer of this mapping still lives (it holds the lock). */
bool ring_producer_alive(const struct ring *r);

/* Epoch of the object now under `name` (0 if there is none, it is not a
 * ring, or it is not ours): differs from ring_epoch(r) when the producer was
 * replaced. */
uint64_t ring_epoch_of(const char *name);

/* Unlink every ring of ours (our uid, mode 0600) in /dev/shm whose name
 * starts with `prefix` (see cfg_ring_prefix(); no slash) and whose producer is
 * dead.  Returns how many were removed. */
int ring_cleanup_stale(const char *prefix);

#endif
