/* pool.c — see pool.h. */
#include "pool.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SPIN_ITERS 20000 /* ~100 µs of pause instructions before sleeping */

struct pool {
    uint32_t n_threads;
    pthread_t *threads;
    /* The current job.  `gen` is bumped (and futex-woken) to start a job. */
    pool_fn fn;
    void *ctx;
    uint32_t n_tasks;
    _Alignas(64) _Atomic uint32_t gen;
    _Atomic uint32_t sleepers;
    _Alignas(64) _Atomic uint32_t next_task;
    _Alignas(64) _Atomic uint32_t done_threads;
    _Atomic bool stop;
};

struct helper_arg { struct pool *p; uint32_t idx; };

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void run_tasks(struct pool *p, uint32_t thread)
{
    for (;;) {
        uint32_t t = atomic_fetch_add_explicit(&p->next_task, 1, memory_order_relaxed);
        if (t >= p->n_tasks)
            break;
        p->fn(p->ctx, t, thread);
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
            if (++spins < SPIN_ITERS) {
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
        run_tasks(p, idx);
        atomic_fetch_add_explicit(&p->done_threads, 1, memory_order_acq_rel);
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

void pool_run(struct pool *p, pool_fn fn, void *ctx, uint32_t n_tasks)
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
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next_task, 0, memory_order_relaxed);
    atomic_store_explicit(&p->done_threads, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&p->sleepers, memory_order_seq_cst))
        syscall(SYS_futex, &p->gen, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    run_tasks(p, 0);
    while (atomic_load_explicit(&p->done_threads, memory_order_acquire) != p->n_threads - 1)
        cpu_relax();
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
