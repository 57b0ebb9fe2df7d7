/* test_ring.c — the shared-memory token ring: layout boundaries, bad headers,
 * two-process and two-thread stress, producer death, waiting without spinning,
 * names squatted by someone else, a /dev/shm too small for the ring.
 *
 * RILL_STRESS_RECORDS sets the stress size (default 10 million; the TSan run
 * uses fewer because TSan is slow).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <stdbool.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/err.h"
#include "common/ring.h"

static char ring_name_buf[64];
static const char *fresh_name(void)
{
    static int n;
    snprintf(ring_name_buf, sizeof ring_name_buf, "/rill-test-%d-%d", (int)getpid(), n++);
    return ring_name_buf;
}

static void drain_all(struct ring *c, unsigned *count)
{
    const void *d;
    uint32_t len, kind;
    while (ring_next(c, &d, &len, &kind) == 0)
        (*count)++;
    ring_release(c);
}

static void test_ring_rounds_capacity_and_creates_owner_only_object(void **state)
{
    (void)state;
    struct ring *p;
    const char *name = fresh_name();
    assert_int_equal(ring_create(name, 5000, &p, NULL, 0), 0);
    assert_int_equal(ring_capacity(p), 8192);
    char path[128];
    snprintf(path, sizeof path, "/dev/shm%s", name);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_true(ring_epoch(p) != 0);
    assert_int_equal(ring_producer_pid(p), getpid());
    ring_close(p, true);
    assert_int_equal(stat(path, &st), -1);
}

static void test_ring_records_are_invisible_until_published(void **state)
{
    (void)state;
    struct ring *p, *c;
    const char *name = fresh_name();
    assert_int_equal(ring_create(name, 4096, &p, NULL, 0), 0);
    assert_int_equal(ring_open(name, &c, NULL, 0), 0);
    assert_int_equal(ring_push(p, "abc", 3, 1, 0), 0);
    assert_int_equal(ring_push(p, "defgh", 5, 2, 0), 0);
    const void *d;
    uint32_t len, kind;
    assert_int_equal(ring_next(c, &d, &len, &kind), RILL_E_AGAIN);
    assert_int_equal(ring_publish(p), 2);
    assert_int_equal(ring_next(c, &d, &len, &kind), 0);
    assert_int_equal(len, 3);
    assert_int_equal(kind, 1);
    assert_memory_equal(d, "abc", 3);
    assert_int_equal(ring_next(c, &d, &len, &kind), 0);
    assert_int_equal(len, 5);
    assert_int_equal(kind, 2);
    assert_memory_equal(d, "defgh", 5);
    assert_int_equal(ring_next(c, &d, &len, &kind), RILL_E_AGAIN);
    ring_release(c);
    assert_int_equal(ring_publish(p), 0); /* nothing new: no store, no wake */
    ring_close(c, false);
    ring_close(p, true);
}

static void test_ring_zero_length_record(void **state)
{
    (void)state;
    struct ring *p, *c;
    const char *name = fresh_name();
    assert_int_equal(ring_create(name, 4096, &p, NULL, 0), 0);
    assert_int_equal(ring_open(name, &c, NULL, 0), 0);
    assert_int_equal(ring_push(p, NULL, 0, 7, 0), 0);
    ring_publish(p);
    const void *d;
    uint32_t len = 99, kind = 0;
    assert_int_equal(ring_next(c, &d, &len, &kind), 0);
    assert_int_equal(len, 0);
    assert_int_equal(kind, 7);
    ring_close(c, false);
    ring_close(p, true);
}

static void test_ring_exactly_full_then_reports_full(void **state)
{
    (void)state;
    struct ring *p, *c;
    const char *name = fresh_name();
    assert_int_equal(ring_create(name, 4096, &p, NULL, 0), 0);
    assert_int_equal(ring_open(name, &c, NULL, 0), 0);
    /* 4096 bytes = 64 records of 8 header + 56 payload. */
    char buf[56];
    for (int i = 0; i < 64; i++) {
        memset(buf, i, sizeof buf);
        assert_int_equal(ring_push(p, buf, 56, 1, 0), 0);
    }
    assert_int_equal(ring_free_bytes(p), 0);
    assert_int_equal(ring_push(p, NULL, 0, 1, 0), RILL_E_FULL);
    /* The full attempt published what was reserved, so the consumer can drain. */
    unsigned n = 0;
    const void *d;
    uint32_t len, kind;
    while (ring_next(c, &d, &len, &kind) == 0) {
        assert_int_equal(len, 56);
        assert_int_equal(((const unsigned char *)d)[0], n);
        assert_int_equal(((const unsigned char *)d)[55], n);
        n++;
    }
    assert_int_equal(n, 64);
    ring_release(c);
    assert_int_equal(ring_free_bytes(p), 4096);
    ring_close(c, false);
    ring_close(p, true);
}

static void test_ring_wraps_without_splitting_a_record(void **state)
{
    (void)state;
    struct ring *p, *c;
    const char *name = fresh_name();
    assert_int_equal(ring_create(name, 4096, &p, NULL, 0), 0);
    assert_int_equal(ring_open(name, &c, NULL, 0), 0);
    /* Records of 8+1000 bytes: the 5th no longer fits in the tail (4096-4032=64)
     * so a 64-byte pad record fills the tail and the record starts at 0. */
    char buf[1000];
    unsigned seen = 0;
    for (int round = 0; round < 50; round++) {
        for (int i = 0; i < 3; i++) {
            memset(buf, (round * 3 + i) & 0xff, sizeof buf);
            assert_int_equal(ring_push(p, buf, sizeof buf, 3, 0), 0);
        }
        ring_publish(p);
        const void *d;
        uint32_t len, kind;
        while (ring_next(c, &d, &len, &kind) == 0) {
            assert_int_equal(len, 1000);
            assert_int_equal(kind, 3); /* pad records are never returned */
            const unsigned char *u = d;
            /* A record is contiguous in the mapping: first and last byte agree. */
            assert_int_equal(u[0], seen & 0xff);
            assert_int_equal(u[999], seen & 0xff);
            seen++;
        }
        ring_release(c);
    }
    assert_int_equal(seen, 150);
    ring_close(c, false);
    ring_close(p, true);
}

static void test_ring_pad_record_fills_the_tail(void **state)
{
    (void)state;
    struct ring *p, *c;
    const char *name = fresh_name();
    assert_int_equal(ring_create(name, 4096, &p, NULL, 0), 0);
    assert_int_equal(ring_open(name, &c, NULL, 0), 0);
    char buf[4096] = {0};
    /* Fill to 4088: 8 bytes left at the end, exactly one pad header. */
    assert_int_equal(ring_push(p, buf, 2032, 1, 0), 0);
    assert_int_equal(ring_push(p, buf, 2032, 1, 0), 0);
    assert_int_equal(ring_push(p, buf, 0, 1, 0), 0);
    ring_publish(p);
    unsigned n = 0;
    drain_all(c, &n);
    assert_int_equal(n, 3);
    /* Needs 16 bytes; the 8-byte tail gets a pad with payload length 0. */
    assert_int_equal(ring_push(p, "12345678", 8, 1, 0), 0);
    ring_publish(p);
    const void *d;
    uint32_t len, kind;
    assert_int_equal(ring_next(c, &d, &len, &kind), 0);
    assert_int_equal(len, 8);
    assert_memory_equal(d, "12345678", 8);
    ring_release(c);
    assert_int_equal(ring_free_bytes(p), 4096);
    ring_close(c, false);
    ring_close(p, true);
}

static void test_ring_maximum_length_record(void **state)
{
    (void)state;
    struct ring *p, *c;
    const char *name = fresh_name();
    assert_int_equal(ring_create(name, 8192, &p, NULL, 0), 0);
    assert_int_equal(ring_open(name, &c, NULL, 0), 0);
    uint32_t max = ring_max_payload(p);
    assert_int_equal(max, 4096 - 8);
    char *buf = malloc(max + 1);
    for (uint32_t i = 0; i <= max; i++)
        buf[i] = (char)(i * 7);
    int err = 0;
    assert_null(ring_reserve(p, max + 1, 1, 0, &err));
    assert_int_equal(err, RILL_E_TOO_LARGE);
    /* Worst position for it: tail one byte short, so it needs pad + record. */
    for (int shift = 0; shift < 3; shift++) {
        assert_int_equal(ring_push(p, buf, 100 + shift * 8, 1, 0), 0);
        assert_int_equal(ring_push(p, buf, max, 2, 0), 0);
        ring_publish(p);
        const void *d;
        uint32_t len, kind;
        assert_int_equal(ring_next(c, &d, &len, &kind), 0);
        assert_int_equal(ring_next(c, &d, &len, &kind), 0);
        assert_int_equal(len, max);
        assert_memory_equal(d, buf, max);
        ring_release(c);
    }
    free(buf);
    ring_close(c, false);
    ring_close(p, true);
}

/* Corrupt one header field through a separate mapping, then open. */
static void corrupt_and_open(size_t off, const void *val, size_t n, const char *expect)
{
    struct ring *p, *c = NULL;
    const char *name = fresh_name();
    assert_int_equal(ring_create(name, 4096, &p, NULL, 0), 0);
    int fd = shm_open(name, O_RDWR, 0);
    assert_true(fd >= 0);
    unsigned char *h = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(h != MAP_FAILED);
    memcpy(h + off, val, n);
    char why[256] = "";
    assert_int_equal(ring_open(name, &c, why, sizeof why), RILL_E_BAD_FORMAT);
    assert_null(c);
    assert_non_null(strstr(why, expect));
    munmap(h, 4096);
    close(fd);
    ring_close(p, true);
}

static void test_ring_open_rejects_bad_magic(void **state)
{
    (void)state;
    uint64_t bad = 0x1234;
    corrupt_and_open(0, &bad, 8, "bad magic");
}

static void test_ring_open_rejects_bad_version(void **state)
{
    (void)state;
    uint32_t v = 99;
    corrupt_and_open(8, &v, 4, "version 99");
}

static void test_ring_open_rejects_bad_capacity_and_size(void **state)
{
    (void)state;
    uint64_t cap = 5000;
    corrupt_and_open(16, &cap, 8, "bad capacity");
    cap = 8192; /* a power of two, but not what the object holds */
    corrupt_and_open(16, &cap, 8, "size mismatch");
}

static void test_ring_open_rejects_small_object_and_missing_name(void **state)
{
    (void)state;
    const char *name = fresh_name();
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 100), 0);
    struct ring *c = NULL;
    char why[256] = "";
    assert_int_equal(ring_open(name, &c, why, sizeof why), RILL_E_BAD_FORMAT);
    assert_non_null(strstr(why, "too small"));
    close(fd);
    shm_unlink(name);
    assert_int_equal(ring_open("/rill-test-does-not-exist", &c, why, sizeof why), RILL_E_IO);
    assert_int_equal(ring_open("no-slash", &c, why, sizeof why), RILL_E_BAD_CONFIG);
}

/* --- stress ------------------------------------------------------------------ */

static uint64_t stress_records(void)
{
    const char *e = getenv("RILL_STRESS_RECORDS");
    return e ? strtoull(e, NULL, 10) : 10000000ull;
}

static inline uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Record: u64 seq, u32 checksum of the payload after it, payload bytes. */
static uint32_t fnv1a(const unsigned char *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static void produce(struct ring *p, uint64_t n)
{
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    uint64_t seq = 0;
    while (seq < n) {
        unsigned batch = 1 + (unsigned)(xorshift(&rng) % 64);
        for (unsigned b = 0; b < batch && seq < n; b++, seq++) {
            uint32_t extra = (uint32_t)(xorshift(&rng) % 200);
            int err;
            unsigned char *rec = ring_reserve(p, 12 + extra, 1, -1, &err);
            assert_non_null(rec);
            for (uint32_t i = 0; i < extra; i++)
                rec[12 + i] = (unsigned char)(seq + i);
            uint32_t sum = fnv1a(rec + 12, extra);
            memcpy(rec, &seq, 8);
            memcpy(rec + 8, &sum, 4);
        }
        ring_publish(p);
    }
}

/* Returns the number of records checked; fails the test on any error. */
static uint64_t consume(struct ring *c, uint64_t n)
{
    uint64_t expect = 0;
    while (expect < n) {
        const void *d;
        uint32_t len, kind;
        int rc = ring_next(c, &d, &len, &kind);
        if (rc == RILL_E_AGAIN) {
            ring_release(c);
            ring_wait_data(c, 1000);
            continue;
        }
        assert_int_equal(rc, 0);
        assert_true(len >= 12);
        const unsigned char *u = d;
        uint64_t seq;
        uint32_t sum;
        memcpy(&seq, u, 8);
        memcpy(&sum, u + 8, 4);
        if (seq != expect)
            fail_msg("order/loss: got seq %llu, want %llu", (unsigned long long)seq, (unsigned long long)expect);
        if (fnv1a(u + 12, len - 12) != sum)
            fail_msg("corrupt record %llu", (unsigned long long)seq);
        expect++;
        if ((expect & 255) == 0)
            ring_release(c);
    }
    ring_release(c);
    return expect;
}

static void test_ring_two_process_stress_keeps_order_without_loss(void **state)
{
    (void)state;
    uint64_t n = stress_records();
    const char *name = fresh_name();
    struct ring *p, *c;
    /* Small ring so that the producer really waits for space many times. */
    assert_int_equal(ring_create(name, 1 << 16, &p, NULL, 0), 0);
    assert_int_equal(ring_open(name, &c, NULL, 0), 0);
    uint64_t t0 = clock_ns();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        ring_close(c, false);
        produce(p, n);
        ring_close(p, false);
        _exit(0);
    }
    assert_int_equal(consume(c, n), n);
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    print_message("    %llu records across processes in %.2f s\n", (unsigned long long)n,
                  (double)(clock_ns() - t0) / 1e9);
    ring_close(c, false);
    ring_close(p, true);
}

struct thread_arg { struct ring *r; uint64_t n; };

static void *producer_thread(void *a)
{
    struct thread_arg *t = a;
    produce(t->r, t->n);
    return NULL;
}

static void test_ring_two_thread_stress_keeps_order_without_loss(void **state)
{
    (void)state;
    uint64_t n = stress_records() / 4;
    const char *name = fresh_name();
    struct ring *p, *c;
    assert_int_equal(ring_create(name, 1 << 14, &p, NULL, 0), 0);
    assert_int_equal(ring_open(name, &c, NULL, 0), 0);
    pthread_t th;
    struct thread_arg a = {p, n};
    pthread_create(&th, NULL, producer_thread, &a);
    assert_int_equal(consume(c, n), n);
    pthread_join(th, NULL);
    ring_close(c, false);
    ring_close(p, true);
}

/* --- death and restart -------------------------------------------------------------- */

static void test_ring_killed_producer_leaves_only_published_records(void **state)
{
    (void)state;
    const char *name = fresh_name();
    struct ring *c;
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct ring *p;
        if (ring_create(name, 1 << 16, &p, NULL, 0) != 0)
            _exit(1);
        /* 10 whole batches of 10 records, then a batch reserved but never
         * published, then tell the parent and wait to be killed. */
        for (uint64_t seq = 0; seq < 100; seq++) {
            ring_push(p, &seq, 8, 1, 0);
            if (seq % 10 == 9)
                ring_publish(p);
        }
        for (uint64_t seq = 100; seq < 105; seq++)
            ring_push(p, &seq, 8, 1, 0);
        char ok = 'k';
        if (write(pipefd[1], &ok, 1) != 1)
            _exit(1);
        for (;;)
            pause();
    }
    close(pipefd[1]);
    char ok;
    assert_int_equal(read(pipefd[0], &ok, 1), 1);
    assert_int_equal(ring_open(name, &c, NULL, 0), 0);
    assert_true(ring_producer_alive(c));
    uint64_t epoch = ring_epoch(c);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    assert_false(ring_producer_alive(c));
    uint64_t seq = 0;
    const void *d;
    uint32_t len, kind;
    while (ring_next(c, &d, &len, &kind) == 0) {
        assert_int_equal(len, 8);
        uint64_t v;
        memcpy(&v, d, 8);
        assert_int_equal(v, seq);
        seq++;
    }
    assert_int_equal(seq, 100); /* the unpublished batch never shows */
    /* A restarted producer replaces the object: same name, new epoch. */
    struct ring *p2;
    assert_int_equal(ring_create(name, 1 << 16, &p2, NULL, 0), 0);
    uint64_t e2 = ring_epoch_of(name);
    assert_true(e2 != 0 && e2 != epoch);
    assert_int_equal(e2, ring_epoch(p2));
    assert_false(ring_producer_alive(c)); /* the old mapping still says dead */
    ring_close(c, false);
    ring_close(p2, true);
    close(pipefd[0]);
}

static void test_ring_create_refuses_a_live_producers_name(void **state)
{
    (void)state;
    const char *name = fresh_name();
    struct ring *p, *p2 = NULL;
    assert_int_equal(ring_create(name, 4096, &p, NULL, 0), 0);
    assert_int_equal(ring_create(name, 4096, &p2, NULL, 0), RILL_E_EXISTS);
    assert_null(p2);
    ring_close(p, true);
}

static void test_ring_cleanup_removes_only_dead_producers_rings(void **state)
{
    (void)state;
    char prefix[32];
    snprintf(prefix, sizeof prefix, "rill-cleanup-%d-", (int)getpid());
    char live_name[64], dead_name[64];
    snprintf(live_name, sizeof live_name, "/%slive", prefix);
    snprintf(dead_name, sizeof dead_name, "/%sdead", prefix);
    struct ring *live;
    assert_int_equal(ring_create(live_name, 4096, &live, NULL, 0), 0);
    pid_t pid = fork();
    if (pid == 0) {
        struct ring *d;
        _exit(ring_create(dead_name, 4096, &d, NULL, 0) == 0 ? 0 : 1); /* dies without unlinking */
    }
    int status;
    waitpid(pid, &status, 0);
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_true(ring_epoch_of(dead_name) != 0);
    assert_int_equal(ring_cleanup_stale(prefix), 1);
    assert_int_equal(ring_epoch_of(dead_name), 0);
    assert_true(ring_epoch_of(live_name) != 0);
    ring_close(live, true);
}

/* --- ownership and reservation -------------------------------------------------- */

/* An object under `name` as a squatter would leave it: `mode`, owned by `uid`
 * (a real ring when `as_ring`, so that only the ownership can be wrong). */
static void squat(const char *name, bool as_ring, uid_t uid, mode_t mode)
{
    int fd;
    if (as_ring) {
        struct ring *p;
        assert_int_equal(ring_create(name, 4096, &p, NULL, 0), 0);
        fd = shm_open(name, O_RDWR, 0);
        ring_close(p, false); /* the object stays, its producer gone */
    } else {
        fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, RING_HDR_BYTES + RING_MIN_CAPACITY), 0);
    }
    assert_true(fd >= 0);
    assert_int_equal(fchmod(fd, mode), 0);
    if (uid != geteuid())
        assert_int_equal(fchown(fd, uid, uid), 0);
    close(fd);
}

static void assert_untouched(const char *name, uid_t uid, mode_t mode)
{
    char path[128];
    snprintf(path, sizeof path, "/dev/shm%s", name);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_uid, uid);
    assert_int_equal(st.st_mode & 0777, mode);
}

static void test_ring_create_and_open_refuse_a_name_another_user_owns(void **state)
{
    (void)state;
    if (geteuid() != 0)
        skip(); /* giving an object to another uid takes root */
    const uid_t nobody = 65534;
    const char *name = fresh_name();
    char why[512] = "", expect[160];
    snprintf(expect, sizeof expect, "ring %s: /dev/shm%s belongs to uid 65534, not to us (uid 0)", name, name);

    /* Pre-created by "someone else": never replaced, never used. */
    squat(name, false, nobody, 0600);
    struct ring *p = NULL, *c = NULL;
    assert_int_equal(ring_create(name, 4096, &p, why, sizeof why), RILL_E_UNAUTHORIZED);
    assert_null(p);
    assert_non_null(strstr(why, expect));
    assert_untouched(name, nobody, 0600);
    shm_unlink(name);

    /* A whole, valid ring that someone else owns: the consumer refuses it. */
    name = fresh_name();
    snprintf(expect, sizeof expect, "ring %s: /dev/shm%s belongs to uid 65534", name, name);
    squat(name, true, nobody, 0600);
    why[0] = 0;
    assert_int_equal(ring_open(name, &c, why, sizeof why), RILL_E_UNAUTHORIZED);
    assert_null(c);
    assert_non_null(strstr(why, expect));
    assert_int_equal(ring_epoch_of(name), 0); /* not ours: not even its header is read */
    /* Nor does stale-ring cleanup remove it, dead producer or not. */
    assert_int_equal(ring_cleanup_stale(name + 1), 0);
    assert_untouched(name, nobody, 0600);
    shm_unlink(name);
}

static void test_ring_create_and_open_refuse_an_object_others_may_use(void **state)
{
    (void)state;
    const char *name = fresh_name();
    char why[512] = "", expect[160];
    snprintf(expect, sizeof expect, "ring %s: /dev/shm%s has mode 0644, but a ring is 0600", name, name);
    squat(name, false, geteuid(), 0644);
    struct ring *p = NULL, *c = NULL;
    assert_int_equal(ring_create(name, 4096, &p, why, sizeof why), RILL_E_UNAUTHORIZED);
    assert_null(p);
    assert_non_null(strstr(why, expect));
    assert_untouched(name, geteuid(), 0644);
    shm_unlink(name);

    name = fresh_name();
    snprintf(expect, sizeof expect, "ring %s: /dev/shm%s has mode 0660", name, name);
    squat(name, true, geteuid(), 0660);
    why[0] = 0;
    assert_int_equal(ring_open(name, &c, why, sizeof why), RILL_E_UNAUTHORIZED);
    assert_null(c);
    assert_non_null(strstr(why, expect));
    assert_untouched(name, geteuid(), 0660);
    shm_unlink(name);
}

static void test_ring_create_and_open_never_follow_a_symlink(void **state)
{
    (void)state;
    char target[] = "/tmp/rill-test-ring-target-XXXXXX";
    int tfd = mkstemp(target);
    assert_true(tfd >= 0);
    assert_int_equal(write(tfd, "keep", 4), 4);
    close(tfd);
    const char *name = fresh_name();
    char path[128];
    snprintf(path, sizeof path, "/dev/shm%s", name);
    assert_int_equal(symlink(target, path), 0);
    struct ring *p = NULL, *c = NULL;
    char why[512] = "";
    char expect[160];
    snprintf(expect, sizeof expect, "ring %s: /dev/shm%s is a symbolic link, not a ring", name, name);
    assert_int_equal(ring_create(name, 4096, &p, why, sizeof why), RILL_E_UNAUTHORIZED);
    assert_non_null(strstr(why, expect));
    why[0] = 0;
    assert_int_equal(ring_open(name, &c, why, sizeof why), RILL_E_UNAUTHORIZED);
    assert_non_null(strstr(why, expect));
    assert_null(p);
    assert_null(c);
    struct stat st;
    assert_int_equal(stat(target, &st), 0);
    assert_int_equal(st.st_size, 4); /* the file behind the link is as it was */
    unlink(path);
    unlink(target);
}

static void test_ring_create_reserves_its_memory(void **state)
{
    (void)state;
    const char *name = fresh_name();
    struct ring *p;
    assert_int_equal(ring_create(name, 1 << 20, &p, NULL, 0), 0);
    char path[128];
    snprintf(path, sizeof path, "/dev/shm%s", name);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, RING_HDR_BYTES + (1 << 20));
    /* Allocated, not sparse: a later write cannot find /dev/shm full. */
    assert_true((long long)st.st_blocks * 512 >= (long long)st.st_size);
    ring_close(p, true);
}

/* In a child with a private 1 MiB /dev/shm: a 4 MiB ring is refused at
 * creation with the free and needed sizes; one that fits is created.  The
 * child reports "rc|why|rc2" on a pipe, or "skip" without the privilege. */
static void test_ring_create_reports_a_dev_shm_too_small(void **state)
{
    (void)state;
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        char msg[700];
        if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
            mount("tmpfs", "/dev/shm", "tmpfs", 0, "size=1m") != 0) {
            snprintf(msg, sizeof msg, "skip");
        } else {
            struct ring *p = NULL, *q = NULL;
            char why[512] = "";
            int rc = ring_create("/rill-test-small", 4 << 20, &p, why, sizeof why);
            int rc2 = ring_create("/rill-test-fits", 256 << 10, &q, NULL, 0);
            struct statvfs vfs;
            statvfs("/dev/shm", &vfs);
            snprintf(msg, sizeof msg, "%d|%s|%d|%llu", rc, why, rc2,
                     (unsigned long long)(vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize);
        }
        ssize_t n = write(pfd[1], msg, strlen(msg));
        _exit(n > 0 ? 0 : 1);
    }
    close(pfd[1]);
    char buf[700] = "";
    ssize_t n = read(pfd[0], buf, sizeof buf - 1);
    close(pfd[0]);
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFEXITED(status)); /* no SIGBUS */
    assert_true(n > 0);
    if (strcmp(buf, "skip") == 0)
        skip(); /* a private mount of /dev/shm takes CAP_SYS_ADMIN */
    char expect[700];
    snprintf(expect, sizeof expect, "%d|ring /rill-test-small: /dev/shm has 1.0 MiB free, the ring needs 4.0 MiB|0|%u",
             RILL_E_NOMEM, RING_HDR_BYTES + (256u << 10));
    assert_string_equal(buf, expect); /* the refused ring left nothing behind, the other took all its bytes */
}

/* --- waiting ------------------------------------------------------------------ */

static double thread_cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void test_ring_idle_consumer_sleeps_instead_of_spinning(void **state)
{
    (void)state;
    const char *name = fresh_name();
    struct ring *p, *c;
    assert_int_equal(ring_create(name, 4096, &p, NULL, 0), 0);
    assert_int_equal(ring_open(name, &c, NULL, 0), 0);
    double cpu0 = thread_cpu_ms();
    uint64_t t0 = clock_ns();
    assert_int_equal(ring_wait_data(c, 300), RILL_E_AGAIN);
    double wall = (double)(clock_ns() - t0) / 1e6;
    double cpu = thread_cpu_ms() - cpu0;
    assert_true(wall >= 290);
    /* Asleep in the kernel: a few ms of CPU at most for 300 ms of waiting. */
    if (cpu > 30)
        fail_msg("waiting consumer used %.1f ms CPU in %.0f ms", cpu, wall);
    ring_close(c, false);
    ring_close(p, true);
}

struct waker { struct ring *p; struct ring *c; int mode; };
static void *wake_later(void *a)
{
    struct waker *w = a;
    usleep(50000);
    if (w->mode == 0) {
        ring_push(w->p, "x", 1, 1, 0);
        ring_publish(w->p);
    } else {
        ring_wake_consumer(w->c);
    }
    return NULL;
}

static void test_ring_sleeping_consumer_is_woken_by_publish_and_by_wake(void **state)
{
    (void)state;
    const char *name = fresh_name();
    struct ring *p, *c;
    assert_int_equal(ring_create(name, 4096, &p, NULL, 0), 0);
    assert_int_equal(ring_open(name, &c, NULL, 0), 0);
    for (int mode = 0; mode < 2; mode++) {
        pthread_t th;
        struct waker w = {p, c, mode};
        uint64_t seen = ring_write_index(c);
        pthread_create(&th, NULL, wake_later, &w);
        uint64_t t0 = clock_ns();
        int rc = ring_wait(c, seen, 5000);
        double ms = (double)(clock_ns() - t0) / 1e6;
        pthread_join(th, NULL);
        assert_int_equal(rc, mode == 0 ? 0 : RILL_E_AGAIN);
        assert_true(ms < 2000); /* woken, not timed out */
    }
    ring_close(c, false);
    ring_close(p, true);
}

static void *slow_consumer(void *a)
{
    struct ring *c = a;
    usleep(100000);
    unsigned n = 0;
    drain_all(c, &n);
    return NULL;
}

static void test_ring_full_producer_waits_for_space(void **state)
{
    (void)state;
    const char *name = fresh_name();
    struct ring *p, *c;
    assert_int_equal(ring_create(name, 4096, &p, NULL, 0), 0);
    assert_int_equal(ring_open(name, &c, NULL, 0), 0);
    char buf[2000] = {0};
    assert_int_equal(ring_push(p, buf, sizeof buf, 1, 0), 0);
    assert_int_equal(ring_push(p, buf, sizeof buf, 1, 0), 0);
    /* Timed wait with nobody reading: full after the timeout. */
    uint64_t t0 = clock_ns();
    assert_int_equal(ring_push(p, buf, sizeof buf, 1, 50), RILL_E_FULL);
    assert_true(clock_ns() - t0 >= 45000000ull);
    /* Blocking wait: returns once the consumer drains. */
    pthread_t th;
    pthread_create(&th, NULL, slow_consumer, c);
    assert_int_equal(ring_push(p, buf, sizeof buf, 1, -1), 0);
    pthread_join(th, NULL);
    ring_close(c, false);
    ring_close(p, true);
}

static void test_ring_consumer_rejects_corrupt_record_header(void **state)
{
    (void)state;
    const char *name = fresh_name();
    struct ring *p, *c;
    assert_int_equal(ring_create(name, 4096, &p, NULL, 0), 0);
    assert_int_equal(ring_open(name, &c, NULL, 0), 0);
    int err;
    uint32_t *rec = ring_reserve(p, 8, 1, 0, &err);
    assert_non_null(rec);
    rec[-2] = 100000; /* a length past everything published */
    ring_publish(p);
    const void *d;
    uint32_t len, kind;
    assert_int_equal(ring_next(c, &d, &len, &kind), RILL_E_BAD_FORMAT);
    ring_close(c, false);
    ring_close(p, true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ring_rounds_capacity_and_creates_owner_only_object),
        cmocka_unit_test(test_ring_records_are_invisible_until_published),
        cmocka_unit_test(test_ring_zero_length_record),
        cmocka_unit_test(test_ring_exactly_full_then_reports_full),
        cmocka_unit_test(test_ring_wraps_without_splitting_a_record),
        cmocka_unit_test(test_ring_pad_record_fills_the_tail),
        cmocka_unit_test(test_ring_maximum_length_record),
        cmocka_unit_test(test_ring_open_rejects_bad_magic),
        cmocka_unit_test(test_ring_open_rejects_bad_version),
        cmocka_unit_test(test_ring_open_rejects_bad_capacity_and_size),
        cmocka_unit_test(test_ring_open_rejects_small_object_and_missing_name),
        cmocka_unit_test(test_ring_consumer_rejects_corrupt_record_header),
        cmocka_unit_test(test_ring_two_process_stress_keeps_order_without_loss),
        cmocka_unit_test(test_ring_two_thread_stress_keeps_order_without_loss),
        cmocka_unit_test(test_ring_killed_producer_leaves_only_published_records),
        cmocka_unit_test(test_ring_create_refuses_a_live_producers_name),
        cmocka_unit_test(test_ring_cleanup_removes_only_dead_producers_rings),
        cmocka_unit_test(test_ring_create_and_open_refuse_a_name_another_user_owns),
        cmocka_unit_test(test_ring_create_and_open_refuse_an_object_others_may_use),
        cmocka_unit_test(test_ring_create_and_open_never_follow_a_symlink),
        cmocka_unit_test(test_ring_create_reserves_its_memory),
        cmocka_unit_test(test_ring_create_reports_a_dev_shm_too_small),
        cmocka_unit_test(test_ring_idle_consumer_sleeps_instead_of_spinning),
        cmocka_unit_test(test_ring_sleeping_consumer_is_woken_by_publish_and_by_wake),
        cmocka_unit_test(test_ring_full_producer_waits_for_space),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
