/* pool.h — the worker's compute threads.
 *
 * pool_run() hands `n_tasks` task indices to every thread (the caller is one
 * of them) through an atomic counter, so a thread slowed by another process
 * on its core simply takes fewer tasks.  Between jobs the helper threads spin
 * for a short, bounded time (a decode step issues a few jobs per layer,
 * microseconds apart) and then sleep on a futex, so an idle worker uses no
 * CPU.  OpenBLAS, when used, is called from inside tasks with its own
 * threading set to 1: two thread pools spinning on the same two cores would
 * steal from each other.
 *
 * One job at a time: pool_run() is called from one thread only.
 */
#ifndef RILL_POOL_H
#define RILL_POOL_H

#include <stdint.h>

struct pool;

/* fn(ctx, task, thread): run task `task` (0..n_tasks-1) on thread `thread`
 * (0..pool_threads()-1; 0 is the caller). */
typedef void (*pool_fn)(void *ctx, uint32_t task, uint32_t thread);

/* Start n_threads-1 helper threads (n_threads >= 1; 0 means one per online
 * CPU).  Returns NULL on failure (errno kept). */
struct pool *pool_create(uint32_t n_threads);
void pool_free(struct pool *p);
uint32_t pool_threads(const struct pool *p);

/* Run every task and return when all are done. */
void pool_run(struct pool *p, pool_fn fn, void *ctx, uint32_t n_tasks);

#endif
