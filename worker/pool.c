/* pool.c — see pool.h.
 *
 * A job is announced by bumping `gen` (and a futex wake if a helper sleeps).
 * Tasks are claimed from one 64-bit word holding <gen:32><tasks:16><next:16>
 * with a compare-and-swap.  Tag, count and index live in one word so that a
 * helper that wakes late — after its job ended — can neither claim a task of
 * the next job under the old tag nor judge the old job's index against the
 * next job's count (that mix once ran a task twice and hung the caller).  The caller
 * waits for *tasks* to finish, not for helpers to check in: a helper that the
 * kernel preempted before it claimed anything does not hold the job up.  All
 * waiting spins briefly (a job is microseconds apart from the next within a
 * step), then yields or sleeps, because on two cores shared with other
 * processes a spinning thread steals the time the one it waits for needs.
 */
#include "pool.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define IDLE_SPINS 2000 /* ~60 µs of pause before a helper sleeps */
#define JOIN_SPINS 500  /* ~15 µs before the caller starts yielding */

struct pool {
    uint32_t n_threads;
    pthread_t *threads;
    /* The current job.  Written by the caller before `gen` is bumped. */
    pool_fn fn;
    void *ctx;
    _Alignas(64) _Atomic uint32_t gen;
    _Atomic uint32_t sleepers;
    _Alignas(64) _Atomic uint64_t claim;  /* <gen:32><tasks:16><next task:16> */
    _Alignas(64) _Atomic uint32_t done;   /* tasks of the current job finished */
    _Atomic bool stop;
};

struct helper_arg { struct pool *p; uint32_t idx; };

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Claim and run tasks of job `gen` until there are none left. */
static void run_tasks(struct pool *p, uint32_t gen, uint32_t thread)
{
    for (;;) {
        uint64_t v = atomic_load_explicit(&p->claim, memory_order_acquire);
        if ((uint32_t)(v >> 32) != gen || (v & 0xffff) >= ((v >> 16) & 0xffff))
            return;
        if (!atomic_compare_exchange_weak_explicit(&p->claim, &v, v + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        /* The job cannot end before this task is done, so fn and ctx stay. */
        p->fn(p->ctx, (uint32_t)(v & 0xffff), thread);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
}

static void *helper_main(void *a)
{
    struct helper_arg *arg = a;
    struct pool *p = arg->p;
    uint32_t idx = arg->idx;
    free(arg);
    /* Generation 0 is "no job yet": a thread that starts late must still
     * take part in a job pool_run() began before it ran. */
    uint32_t seen = 0;
    for (;;) {
        uint32_t g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen) {
            if (++spins < IDLE_SPINS) {
                cpu_relax();
                continue;
            }
            atomic_fetch_add_explicit(&p->sleepers, 1, memory_order_seq_cst);
            if (atomic_load_explicit(&p->gen, memory_order_seq_cst) == seen)
                syscall(SYS_futex, &p->gen, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
            atomic_fetch_sub_explicit(&p->sleepers, 1, memory_order_relaxed);
            spins = 0;
        }
        seen = g;
        if (atomic_load_explicit(&p->stop, memory_order_acquire))
            return NULL;
        run_tasks(p, g, idx);
    }
}

struct pool *pool_create(uint32_t n_threads)
{
    if (n_threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (uint32_t)n : 1;
    }
    struct pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->n_threads = n_threads;
    p->threads = calloc(n_threads, sizeof *p->threads);
    if (!p->threads) {
        free(p);
        return NULL;
    }
    for (uint32_t i = 1; i < n_threads; i++) {
        struct helper_arg *a = malloc(sizeof *a);
        if (a) {
            a->p = p;
            a->idx = i;
        }
        if (!a || pthread_create(&p->threads[i], NULL, helper_main, a) != 0) {
            free(a);
            p->n_threads = i;
            pool_free(p);
            return NULL;
        }
    }
    return p;
}

uint32_t pool_threads(const struct pool *p) { return p->n_threads; }

/* One job of at most 65535 tasks (the claim word's field). */
static void run_job(struct pool *p, pool_fn fn, void *ctx, uint32_t n_tasks);

struct offset_job { pool_fn fn; void *ctx; uint32_t base; };

static void offset_task(void *ctx, uint32_t task, uint32_t thread)
{
    const struct offset_job *o = ctx;
    o->fn(o->ctx, o->base + task, thread);
}

void pool_run(struct pool *p, pool_fn fn, void *ctx, uint32_t n_tasks)
{
    if (n_tasks <= 0xffff) {
        run_job(p, fn, ctx, n_tasks);
        return;
    }
    for (uint32_t base = 0; base < n_tasks; base += 0xffff) {
        struct offset_job o = {fn, ctx, base};
        run_job(p, offset_task, &o, n_tasks - base < 0xffff ? n_tasks - base : 0xffff);
    }
}

static void run_job(struct pool *p, pool_fn fn, void *ctx, uint32_t n_tasks)
{
    if (n_tasks == 0)
        return;
    if (p->n_threads == 1 || n_tasks == 1) {
        for (uint32_t t = 0; t < n_tasks; t++)
            fn(ctx, t, 0);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    uint32_t gen = atomic_load_explicit(&p->gen, memory_order_relaxed) + 1;
    if (gen == 0)
        gen = 1; /* 0 means "no job" to a starting helper */
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->claim, (uint64_t)gen << 32 | (uint64_t)n_tasks << 16, memory_order_release);
    atomic_store_explicit(&p->gen, gen, memory_order_seq_cst);
    if (atomic_load_explicit(&p->sleepers, memory_order_seq_cst))
        syscall(SYS_futex, &p->gen, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    run_tasks(p, gen, 0);
    /* Only tasks a helper already claimed remain: wait for those. */
    for (int spins = 0; atomic_load_explicit(&p->done, memory_order_acquire) != n_tasks; spins++) {
        if (spins < JOIN_SPINS)
            cpu_relax();
        else
            sched_yield();
    }
}

void pool_free(struct pool *p)
{
    if (!p)
        return;
    atomic_store_explicit(&p->stop, true, memory_order_release);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_seq_cst);
    syscall(SYS_futex, &p->gen, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    for (uint32_t i = 1; i < p->n_threads; i++)
        pthread_join(p->threads[i], NULL);
    free(p->threads);
    free(p);
}
