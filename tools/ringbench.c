/* ringbench — throughput and wake-up latency of the shared-memory ring
 * between two real processes.
 *
 *   ringbench [--json FILE] [--seconds S] [--wakeups N]
 *
 * Throughput: a forked producer pushes records of 16 and 64 payload bytes in
 * batches of 1, 8 and 64 (one publish per batch); the parent consumes and
 * counts.  Each figure is the median of --runs runs.
 * Wake-up: the consumer sleeps on the futex (the producer pauses 1 ms between
 * records so that it surely does), the producer stamps each record with the
 * time just before publishing, and the consumer measures when it runs again.
 */
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonw.h"
#include "common/ring.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static int ring_seq;

static struct ring *make_pair(struct ring **consumer)
{
    char name[64];
    snprintf(name, sizeof name, "/rill-bench-%d-%d", (int)getpid(), ring_seq++);
    struct ring *p;
    if (ring_create(name, 1 << 20, &p, NULL, 0) != 0 || ring_open(name, consumer, NULL, 0) != 0) {
        fprintf(stderr, "ringbench: cannot create ring %s\n", name);
        exit(1);
    }
    return p;
}

/* Records per second for one payload size and batch size. */
static double throughput(uint32_t payload, unsigned batch, double seconds)
{
    struct ring *c, *p = make_pair(&c);
    pid_t pid = fork();
    if (pid == 0) {
        ring_close(c, false);
        unsigned char buf[64] = {0};
        uint64_t seq = 0;
        for (;;) {
            for (unsigned i = 0; i < batch; i++) {
                int err;
                unsigned char *rec = ring_reserve(p, payload, 1, -1, &err);
                if (!rec)
                    _exit(1);
                memcpy(rec, buf, payload);
                memcpy(rec, &seq, 8);
                seq++;
            }
            ring_publish(p);
        }
    }
    /* Warm up for a tenth of the time, then count. */
    uint64_t n = 0, t_start = 0, t0 = clock_ns();
    uint64_t warm = (uint64_t)(seconds * 0.1e9), end = (uint64_t)(seconds * 1e9) + warm;
    for (;;) {
        const void *d;
        uint32_t len, kind;
        unsigned got = 0;
        while (got < 4096 && ring_next(c, &d, &len, &kind) == 0)
            got++;
        ring_release(c);
        uint64_t now = clock_ns();
        if (!t_start && now - t0 >= warm) {
            t_start = now;
            n = 0;
        } else {
            n += got;
        }
        if (now - t0 >= end)
            break;
        if (!got)
            ring_wait_data(c, 10);
    }
    double rate = (double)n / ((double)(clock_ns() - t_start) / 1e9);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    ring_close(c, false);
    ring_close(p, true);
    return rate;
}

/* Wake-up latency samples in microseconds (n of them, sorted). */
static void wakeup(int n, double *us)
{
    struct ring *c, *p = make_pair(&c);
    pid_t pid = fork();
    if (pid == 0) {
        ring_close(c, false);
        for (int i = 0; i < n; i++) {
            usleep(1000);
            uint64_t t = clock_ns();
            ring_push(p, &t, 8, 1, -1);
            ring_publish(p);
        }
        _exit(0);
    }
    int got = 0;
    while (got < n) {
        const void *d;
        uint32_t len, kind;
        if (ring_next(c, &d, &len, &kind) == 0) {
            uint64_t now = clock_ns(), t;
            memcpy(&t, d, 8);
            us[got++] = (double)(now - t) / 1e3;
            ring_release(c);
            continue;
        }
        ring_wait_data(c, 1000);
    }
    waitpid(pid, NULL, 0);
    ring_close(c, false);
    ring_close(p, true);
    qsort(us, (size_t)n, sizeof *us, cmp_double);
}

int main(int argc, char **argv)
{
    const char *json_path = NULL;
    double seconds = 0.6;
    int runs = 5, n_wake = 3000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json_path = argv[++i];
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--wakeups") && i + 1 < argc)
            n_wake = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: ringbench [--json FILE] [--seconds S] [--runs N] [--wakeups N]\n");
            return 2;
        }
    }
    if (runs < 1 || runs > 50 || n_wake < 10 || seconds <= 0) {
        fprintf(stderr, "ringbench: bad arguments\n");
        return 2;
    }
    ring_cleanup_stale("rill-bench-");

    static const uint32_t sizes[] = {16, 64};
    static const unsigned batches[] = {1, 8, 64};
    double rate[2][3];
    printf("ring throughput, two processes, median of %d runs of %.1f s\n", runs, seconds);
    printf("  %-8s %-6s %16s\n", "payload", "batch", "records/s");
    for (int s = 0; s < 2; s++)
        for (int b = 0; b < 3; b++) {
            double v[50];
            for (int r = 0; r < runs; r++)
                v[r] = throughput(sizes[s], batches[b], seconds);
            rate[s][b] = median(v, runs);
            printf("  %-8u %-6u %16.0f\n", sizes[s], batches[b], rate[s][b]);
        }
    double *us = malloc(sizeof(double) * (size_t)n_wake);
    wakeup(n_wake, us);
    double p50 = us[n_wake / 2], p99 = us[(int)(n_wake * 0.99)], max = us[n_wake - 1];
    printf("wake-up latency, sleeping consumer (%d wake-ups): p50 %.1f us, p99 %.1f us, max %.1f us\n",
           n_wake, p50, p99, max);
    printf("targets: >= 20,000,000 records/s (16 B, batch 64): %s; p99 wake-up < 100 us: %s\n",
           rate[0][2] >= 20e6 ? "met" : "MISSED", p99 < 100 ? "met" : "MISSED");

    if (json_path) {
        char buf[4096];
        struct jsonw w;
        jsonw_init(&w, buf, sizeof buf);
        jsonw_obj_begin(&w);
        jsonw_key_double(&w, "records_per_s", rate[0][2], 0);
        jsonw_key_double(&w, "wake_p50_us", p50, 2);
        jsonw_key_double(&w, "wake_p99_us", p99, 2);
        jsonw_key_double(&w, "wake_max_us", max, 2);
        jsonw_key(&w, "throughput");
        jsonw_arr_begin(&w);
        for (int s = 0; s < 2; s++)
            for (int b = 0; b < 3; b++) {
                jsonw_obj_begin(&w);
                jsonw_key_uint(&w, "payload_bytes", sizes[s]);
                jsonw_key_uint(&w, "batch", batches[b]);
                jsonw_key_double(&w, "records_per_s", rate[s][b], 0);
                jsonw_obj_end(&w);
            }
        jsonw_arr_end(&w);
        jsonw_key_uint(&w, "runs", (uint64_t)runs);
        jsonw_obj_end(&w);
        FILE *f = fopen(json_path, "w");
        if (!f || fwrite(buf, 1, jsonw_len(&w), f) != jsonw_len(&w)) {
            fprintf(stderr, "ringbench: cannot write %s\n", json_path);
            return 1;
        }
        fputc('\n', f);
        fclose(f);
    }
    free(us);
    return 0;
}
