/* machlim.c — see machlim.h. */
#include "machlim.h"

#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"

#define ARRAY_BYTES (256u << 20)
#define SWEEPS      10
#define FMA_ITERS   25000000L
#define MAX_THREADS 64

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double busy_seconds(void)
{
    FILE *f = fopen("/proc/stat", "r");
    unsigned long long v[8] = {0};
    double r = NAN;
    if (f) {
        if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                   &v[6], &v[7]) == 8)
            r = (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
        fclose(f);
    }
    return r;
}

static double self_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double machlim_busy(double seconds)
{
    double b0 = busy_seconds(), t0 = now_s();
    struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    nanosleep(&ts, NULL);
    double b1 = busy_seconds(), t1 = now_s();
    return (b1 - b0) / (t1 - t0);
}

/* ---- the kernels ---------------------------------------------------------------- */

__attribute__((target("avx512f"))) static float sum_avx512(const float *p, size_t n)
{
    __m512 a[8];
    for (int j = 0; j < 8; j++)
        a[j] = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += 128)
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            a[j] = _mm512_add_ps(a[j], _mm512_load_ps(p + i + 16 * (size_t)j));
    for (int j = 1; j < 8; j++)
        a[0] = _mm512_add_ps(a[0], a[j]);
    return _mm512_reduce_add_ps(a[0]);
}

__attribute__((target("avx2"))) static float sum_avx2(const float *p, size_t n)
{
    __m256 a[8];
    for (int j = 0; j < 8; j++)
        a[j] = _mm256_setzero_ps();
    for (size_t i = 0; i < n; i += 64)
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            a[j] = _mm256_add_ps(a[j], _mm256_load_ps(p + i + 8 * (size_t)j));
    for (int j = 1; j < 8; j++)
        a[0] = _mm256_add_ps(a[0], a[j]);
    float t[8];
    _mm256_storeu_ps(t, a[0]);
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}

/* 12 chains: enough independent FMAs to cover 2 pipes x 4-5 cycles of latency. */
#define CHAINS 12

__attribute__((target("avx2,fma"))) static float fma_avx2(long iters)
{
    __m256 a[CHAINS], m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (int j = 0; j < CHAINS; j++)
        a[j] = _mm256_set1_ps((float)j);
    for (long i = 0; i < iters; i++)
#pragma GCC unroll 12
        for (int j = 0; j < CHAINS; j++)
            a[j] = _mm256_fmadd_ps(a[j], m, c);
    for (int j = 1; j < CHAINS; j++)
        a[0] = _mm256_add_ps(a[0], a[j]);
    float t[8];
    _mm256_storeu_ps(t, a[0]);
    return t[0];
}

__attribute__((target("avx512f"))) static float fma_avx512(long iters)
{
    __m512 a[CHAINS], m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (int j = 0; j < CHAINS; j++)
        a[j] = _mm512_set1_ps((float)j);
    for (long i = 0; i < iters; i++)
#pragma GCC unroll 12
        for (int j = 0; j < CHAINS; j++)
            a[j] = _mm512_fmadd_ps(a[j], m, c);
    for (int j = 1; j < CHAINS; j++)
        a[0] = _mm512_add_ps(a[0], a[j]);
    return _mm512_reduce_add_ps(a[0]);
}

/* ---- threads ------------------------------------------------------------------------ */

enum job { JOB_SWEEP, JOB_FMA256, JOB_FMA512 };

struct shared {
    int n;
    bool avx512;
    float *arr;
    size_t n_floats;
    pthread_barrier_t start, done;
    enum job job;
    volatile float sink;
};

struct thr {
    struct shared *s;
    int id;
    pthread_t t;
};

static void pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void run_job(struct shared *s, int id)
{
    float r;
    if (s->job == JOB_SWEEP) {
        size_t per = s->n_floats / (size_t)s->n;
        const float *p = s->arr + per * (size_t)id;
        r = s->avx512 ? sum_avx512(p, per) : sum_avx2(p, per);
    } else {
        r = s->job == JOB_FMA512 ? fma_avx512(FMA_ITERS) : fma_avx2(FMA_ITERS);
    }
    s->sink += r;
}

/* Helper threads loop: wait for a job, run it, report; a negative job count
 * (start barrier passed with arr == NULL) ends them. */
static void *thr_main(void *arg)
{
    struct thr *t = arg;
    pin(t->id);
    for (;;) {
        pthread_barrier_wait(&t->s->start);
        if (!t->s->arr)
            return NULL;
        run_job(t->s, t->id);
        pthread_barrier_wait(&t->s->done);
    }
}

/* Seconds of one job on every thread at once (the caller is thread 0). */
static double timed(struct shared *s, enum job j)
{
    s->job = j;
    double t0 = now_s();
    pthread_barrier_wait(&s->start);
    run_job(s, 0);
    pthread_barrier_wait(&s->done);
    return now_s() - t0;
}

int machlim_measure(int threads, struct machlim *out)
{
    memset(out, 0, sizeof *out);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int n = threads > 0 ? threads : (int)(ncpu > 0 ? ncpu : 1);
    if (n > MAX_THREADS)
        n = MAX_THREADS;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
        return RILL_E_UNSUPPORTED;
    struct shared s = {.n = n, .avx512 = __builtin_cpu_supports("avx512f")};
    s.n_floats = ARRAY_BYTES / sizeof(float);
    void *p = mmap(NULL, ARRAY_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return RILL_E_NOMEM;
    madvise(p, ARRAY_BYTES, MADV_HUGEPAGE);
    s.arr = p;
    for (size_t i = 0; i < s.n_floats; i++)
        s.arr[i] = (float)(i & 1023) * 1e-3f;
    pthread_barrier_init(&s.start, NULL, (unsigned)n);
    pthread_barrier_init(&s.done, NULL, (unsigned)n);
    struct thr th[MAX_THREADS];
    int started = 1, rc = 0;
    for (int i = 1; i < n; i++) {
        th[i] = (struct thr){&s, i, 0};
        if (pthread_create(&th[i].t, NULL, thr_main, &th[i]) != 0) {
            rc = RILL_E_IO;
            break;
        }
        started++;
    }
    cpu_set_t old;
    pthread_getaffinity_np(pthread_self(), sizeof old, &old);
    pin(0);
    double b0 = busy_seconds(), c0 = self_seconds(), w0 = now_s();
    if (!rc && started == n) {
        double gbs[SWEEPS];
        for (int k = 0; k < SWEEPS; k++)
            gbs[k] = (double)ARRAY_BYTES / timed(&s, JOB_SWEEP) / 1e9;
        qsort(gbs + 1, SWEEPS - 1, sizeof *gbs, cmp_double); /* the first sweep is dropped */
        out->read_gbs = (gbs[1 + (SWEEPS - 1) / 2] + gbs[1 + (SWEEPS - 2) / 2]) / 2;
        out->read_min = gbs[1];
        out->read_max = gbs[SWEEPS - 1];
        double flops = 2.0 * CHAINS * (double)FMA_ITERS * n;
        out->peak_avx2 = flops * 8 / timed(&s, JOB_FMA256) / 1e9;
        if (s.avx512)
            out->peak_avx512 = flops * 16 / timed(&s, JOB_FMA512) / 1e9;
        out->peak = fmax(out->peak_avx2, out->peak_avx512);
        out->threads = n;
    } else {
        rc = RILL_E_IO;
    }
    double w = now_s() - w0;
    out->others = fmax(0, ((busy_seconds() - b0) - (self_seconds() - c0)) / w);
    s.arr = NULL; /* tells the helpers to end */
    if (started == n) {
        pthread_barrier_wait(&s.start);
        for (int i = 1; i < n; i++)
            pthread_join(th[i].t, NULL);
    }
    /* (if a thread failed to start, the ones that did are left blocked on the
     * barrier: the process is a measuring tool and exits soon) */
    pthread_setaffinity_np(pthread_self(), sizeof old, &old);
    if (started == n) {
        pthread_barrier_destroy(&s.start);
        pthread_barrier_destroy(&s.done);
    }
    munmap(p, ARRAY_BYTES);
    return rc;
}
