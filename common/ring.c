/* ring.c — see ring.h for the contract.
 *
 * Waking is an eventcount: the sleeper reads a sequence word, announces itself
 * (seq_cst), re-checks the condition and futex-waits on the word; the waker
 * stores its index, fences (seq_cst) and looks at the announcement.  One of
 * the two always sees the other, so no wake-up is lost and a publish costs no
 * system call while the consumer is awake.
 */
#include "ring.h"
#include "err.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define REC_KIND_PAD 0xffffu
#define SPIN_ITERS   2000 /* about 10-20 µs before sleeping */

struct ring_hdr {
    /* Immutable after creation. */
    uint64_t magic;
    uint32_t version;
    uint32_t hdr_bytes;
    uint64_t capacity;
    uint64_t map_bytes;
    uint64_t epoch;
    int32_t producer_pid;
    uint32_t pad0;
    uint64_t created_ns;
    char pad1[64 - 6 * 8];
    /* Written by the producer. */
    _Alignas(64) _Atomic uint64_t write_idx;
    _Atomic uint32_t data_seq;          /* futex the consumer sleeps on */
    _Atomic uint32_t producer_waiting;  /* the producer sleeps on space_seq */
    char pad2[64 - 16];
    /* Written by the consumer. */
    _Alignas(64) _Atomic uint64_t read_idx;
    _Atomic uint32_t space_seq;         /* futex the producer sleeps on */
    _Atomic uint32_t consumer_waiting;  /* the consumer sleeps on data_seq */
    char pad3[64 - 16];
};

_Static_assert(sizeof(struct ring_hdr) <= RING_HDR_BYTES, "ring header fits its page");
_Static_assert(sizeof(_Atomic uint32_t) == 4, "futex words are 32-bit");

struct ring {
    struct ring_hdr *hdr;
    unsigned char *data;
    uint64_t mask;
    size_t map_bytes;
    int fd;
    bool producer;
    uint64_t local;      /* producer: reserved (unpublished) end; consumer: read cursor */
    uint64_t published;  /* producer: what the consumer can see */
    unsigned pending;    /* producer: records reserved since the last publish */
    uint64_t peer;       /* the other side's index as last read: producer, read_idx;
                          * consumer, write_idx.  Reloaded only when it runs out, so
                          * the two processes do not pull each other's cache lines
                          * back and forth on every record. */
    char name[RING_NAME_MAX];
};

static long futex(_Atomic uint32_t *addr, int op, uint32_t val, const struct timespec *ts)
{
    return syscall(SYS_futex, (uint32_t *)addr, op, val, ts, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *seq)
{
    atomic_fetch_add_explicit(seq, 1, memory_order_release);
    futex(seq, FUTEX_WAKE, INT_MAX, NULL);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static bool valid_name(const char *name)
{
    size_t n = strlen(name);
    return n >= 2 && n < RING_NAME_MAX && name[0] == '/' && !strchr(name + 1, '/');
}

static size_t round_capacity(size_t cap)
{
    size_t c = RING_MIN_CAPACITY;
    while (c < cap && c < RING_MAX_CAPACITY)
        c <<= 1;
    return c;
}

static uint64_t fresh_epoch(void)
{
    uint64_t e = 0;
    if (getrandom(&e, sizeof e, 0) != sizeof e) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        e = ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 16);
    }
    return e ? e : 1;
}

/* A producer is alive while it holds LOCK_EX on the object. */
static bool locked_by_other(int fd)
{
    if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
        flock(fd, LOCK_UN);
        return false;
    }
    return errno == EWOULDBLOCK;
}

/* "3.0 MiB", "512 KiB": sizes in the words people use for /dev/shm. */
static const char *fmt_size(char *buf, size_t n, unsigned long long b)
{
    if (b < (1ull << 20))
        snprintf(buf, n, "%llu KiB", b >> 10);
    else if (b < (1ull << 30))
        snprintf(buf, n, "%.1f MiB", (double)b / (1 << 20));
    else
        snprintf(buf, n, "%.1f GiB", (double)b / (1 << 30));
    return buf;
}

/* Whether the object behind `st` is one we may trust as a ring: ours alone.
 * /dev/shm is world-writable, so any local user can make a name first; a
 * file of theirs (or one they may read or write) must never carry our
 * tokens. */
static int check_ours(const char *name, const struct stat *st, char *why, size_t why_len)
{
    if (!S_ISREG(st->st_mode))
        return rill_fail(why, why_len, RILL_E_UNAUTHORIZED, "ring %s: /dev/shm%s is not a regular file", name, name);
    if (st->st_uid != geteuid())
        return rill_fail(why, why_len, RILL_E_UNAUTHORIZED,
                         "ring %s: /dev/shm%s belongs to uid %u, not to us (uid %u): another user holds the name; "
                         "remove it or choose another instance",
                         name, name, (unsigned)st->st_uid, (unsigned)geteuid());
    if (st->st_mode & 077)
        return rill_fail(why, why_len, RILL_E_UNAUTHORIZED,
                         "ring %s: /dev/shm%s has mode %04o, but a ring is 0600 (others could read or write it); "
                         "remove it or choose another instance",
                         name, name, (unsigned)(st->st_mode & 07777));
    return 0;
}

/* Make room for a new ring under `name`: nothing there, or a dead ring of
 * ours (removed).  Anything else stays, and the reason says why. */
static int clear_name(const char *name, char *why, size_t why_len)
{
    int fd = shm_open(name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT)
            return 0;
        if (e == ELOOP)
            return rill_fail(why, why_len, RILL_E_UNAUTHORIZED,
                             "ring %s: /dev/shm%s is a symbolic link, not a ring; remove it or choose another instance",
                             name, name);
        return rill_fail(why, why_len, e == EACCES ? RILL_E_UNAUTHORIZED : RILL_E_IO,
                         "ring %s: /dev/shm%s exists and cannot be opened (%s): it is not ours; "
                         "remove it or choose another instance",
                         name, name, strerror(e));
    }
    struct stat st;
    int rc;
    if (fstat(fd, &st) != 0) {
        rc = rill_fail(why, why_len, RILL_E_IO, "ring %s: fstat: %s", name, strerror(errno));
    } else if ((rc = check_ours(name, &st, why, why_len)) == 0) {
        if (locked_by_other(fd))
            rc = rill_fail(why, why_len, RILL_E_EXISTS, "ring %s is in use: a live producer holds it", name);
        else if (shm_unlink(name) != 0 && errno != ENOENT)
            rc = rill_fail(why, why_len, RILL_E_IO, "ring %s: cannot remove a dead predecessor's object: %s", name,
                           strerror(errno));
    }
    close(fd);
    return rc;
}

/* Take the ring's memory from /dev/shm now.  ftruncate alone makes a sparse
 * object that tmpfs fills page by page on first touch: when it runs out, the
 * writer gets SIGBUS long after start-up. */
static int reserve(int fd, const char *name, size_t bytes, char *why, size_t why_len)
{
    struct statvfs vfs;
    unsigned long long avail = 0;
    bool known = fstatvfs(fd, &vfs) == 0;
    if (known)
        avail = (unsigned long long)vfs.f_bavail * vfs.f_frsize;
    int e;
    do
        e = posix_fallocate(fd, 0, (off_t)bytes);
    while (e == EINTR);
    if (e == 0)
        return 0;
    char have[32], need[32];
    fmt_size(need, sizeof need, bytes);
    if ((e == ENOSPC || e == ENOMEM || e == EFBIG) && known && avail < bytes)
        return rill_fail(why, why_len, RILL_E_NOMEM, "ring %s: /dev/shm has %s free, the ring needs %s", name,
                         fmt_size(have, sizeof have, avail), need);
    errno = e;
    return rill_fail(why, why_len, e == ENOSPC || e == ENOMEM ? RILL_E_NOMEM : RILL_E_IO,
                     "ring %s: cannot reserve %s in /dev/shm: %s", name, need, strerror(e));
}

int ring_create(const char *name, size_t capacity, struct ring **out, char *why, size_t why_len)
{
    *out = NULL;
    if (!valid_name(name))
        return rill_fail(why, why_len, RILL_E_BAD_CONFIG, "bad ring name '%s' (want /name)", name);
    size_t cap = round_capacity(capacity);
    size_t map_bytes = RING_HDR_BYTES + cap;

    int rc = clear_name(name, why, why_len);
    if (rc)
        return rc;
    /* O_EXCL: the object is new and ours, not one slipped in since. */
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        if (errno == EEXIST)
            return rill_fail(why, why_len, RILL_E_EXISTS, "ring %s: the name was taken again while we created it",
                             name);
        return rill_fail(why, why_len, RILL_E_IO, "ring %s: cannot create: %s", name, strerror(errno));
    }
    struct stat st;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0 || fchmod(fd, 0600) != 0 || fstat(fd, &st) != 0) {
        rc = rill_fail(why, why_len, RILL_E_IO, "ring %s: %s", name, strerror(errno));
    } else if ((rc = check_ours(name, &st, why, why_len)) == 0) {
        rc = reserve(fd, name, map_bytes, why, why_len);
    }
    void *p = MAP_FAILED;
    if (rc == 0) {
        p = mmap(NULL, map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED)
            rc = rill_fail(why, why_len, RILL_E_IO, "ring %s: mmap of %zu bytes: %s", name, map_bytes,
                           strerror(errno));
    }
    if (rc) {
        int e = errno;
        close(fd);
        shm_unlink(name);
        errno = e;
        return rc;
    }
    struct ring *r = calloc(1, sizeof *r);
    if (!r) {
        munmap(p, map_bytes);
        close(fd);
        shm_unlink(name);
        return rill_fail(why, why_len, RILL_E_NOMEM, "ring %s: out of memory", name);
    }
    struct ring_hdr *h = p;
    h->version = RING_VERSION;
    h->hdr_bytes = RING_HDR_BYTES;
    h->capacity = cap;
    h->map_bytes = map_bytes;
    h->epoch = fresh_epoch();
    h->producer_pid = (int32_t)getpid();
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    h->created_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    atomic_store_explicit(&h->write_idx, 0, memory_order_relaxed);
    atomic_store_explicit(&h->read_idx, 0, memory_order_relaxed);
    /* The magic goes last: a reader that sees it sees a whole header. */
    atomic_thread_fence(memory_order_release);
    __atomic_store_n(&h->magic, RING_MAGIC, __ATOMIC_RELEASE);

    r->hdr = h;
    r->data = (unsigned char *)p + RING_HDR_BYTES;
    r->mask = cap - 1;
    r->map_bytes = map_bytes;
    r->fd = fd;
    r->producer = true;
    snprintf(r->name, sizeof r->name, "%s", name);
    *out = r;
    return 0;
}

int ring_open(const char *name, struct ring **out, char *why, size_t why_len)
{
    *out = NULL;
    if (!valid_name(name)) {
        rill_why(why, why_len, "bad ring name '%s' (want /name)", name);
        return RILL_E_BAD_CONFIG;
    }
    int fd = shm_open(name, O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        if (e == ELOOP) /* O_NOFOLLOW met a symlink that someone put there */
            return rill_fail(why, why_len, RILL_E_UNAUTHORIZED, "ring %s: /dev/shm%s is a symbolic link, not a ring",
                             name, name);
        rill_why(why, why_len, "cannot open ring %s: %s", name, strerror(e));
        return RILL_E_IO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rill_why(why, why_len, "ring %s: fstat: %s", name, strerror(errno));
        close(fd);
        return RILL_E_IO;
    }
    int rc = check_ours(name, &st, why, why_len);
    if (rc) {
        close(fd);
        return rc;
    }
    if ((size_t)st.st_size < RING_HDR_BYTES + RING_MIN_CAPACITY) {
        rill_why(why, why_len, "ring object too small (%lld bytes, need at least %u)",
                (long long)st.st_size, RING_HDR_BYTES + RING_MIN_CAPACITY);
        close(fd);
        return RILL_E_BAD_FORMAT;
    }
    struct ring_hdr *h = mmap(NULL, RING_HDR_BYTES, PROT_READ, MAP_SHARED, fd, 0);
    if (h == MAP_FAILED) {
        rill_why(why, why_len, "ring %s: mmap: %s", name, strerror(errno));
        close(fd);
        return RILL_E_IO;
    }
    uint64_t magic = __atomic_load_n(&h->magic, __ATOMIC_ACQUIRE);
    uint32_t version = h->version;
    uint64_t cap = h->capacity, map_bytes = h->map_bytes;
    munmap(h, RING_HDR_BYTES);
    if (magic != RING_MAGIC) {
        rill_why(why, why_len, "bad magic 0x%016llx (want 0x%016llx)", (unsigned long long)magic, RING_MAGIC);
        rc = RILL_E_BAD_FORMAT;
    } else if (version != RING_VERSION) {
        rill_why(why, why_len, "unsupported ring version %u (want %d)", version, RING_VERSION);
        rc = RILL_E_BAD_FORMAT;
    } else if (cap < RING_MIN_CAPACITY || cap > RING_MAX_CAPACITY || (cap & (cap - 1))) {
        rill_why(why, why_len, "bad capacity %llu (want a power of two)", (unsigned long long)cap);
        rc = RILL_E_BAD_FORMAT;
    } else if (map_bytes != RING_HDR_BYTES + cap || map_bytes != (uint64_t)st.st_size) {
        rill_why(why, why_len, "size mismatch: header says %llu bytes, object has %lld",
                (unsigned long long)map_bytes, (long long)st.st_size);
        rc = RILL_E_BAD_FORMAT;
    }
    if (rc) {
        close(fd);
        return rc;
    }
    void *p = mmap(NULL, map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        rill_why(why, why_len, "ring %s: mmap of %llu bytes: %s", name, (unsigned long long)map_bytes,
                 strerror(errno));
        close(fd);
        return RILL_E_IO;
    }
    struct ring *r = calloc(1, sizeof *r);
    if (!r) {
        munmap(p, map_bytes);
        close(fd);
        return rill_fail(why, why_len, RILL_E_NOMEM, "ring %s: out of memory", name);
    }
    r->hdr = p;
    r->data = (unsigned char *)p + RING_HDR_BYTES;
    r->mask = cap - 1;
    r->map_bytes = map_bytes;
    r->fd = fd;
    r->producer = false;
    r->local = atomic_load_explicit(&r->hdr->read_idx, memory_order_acquire);
    r->peer = r->local;
    snprintf(r->name, sizeof r->name, "%s", name);
    *out = r;
    return 0;
}

void ring_close(struct ring *r, bool unlink_name)
{
    if (!r)
        return;
    if (r->producer) {
        ring_publish(r);
        /* Wake a sleeping consumer so that it notices the producer is gone. */
        futex_wake_all(&r->hdr->data_seq);
        if (unlink_name)
            shm_unlink(r->name);
    }
    munmap(r->hdr, r->map_bytes);
    close(r->fd); /* releases the producer's lock */
    free(r);
}

/* --- producer --------------------------------------------------------------- */

uint32_t ring_max_payload(const struct ring *r)
{
    uint64_t m = (r->mask + 1) / 2 - RING_REC_HDR;
    return m > UINT32_MAX - 8 ? UINT32_MAX - 8 : (uint32_t)m;
}

static inline uint64_t rec_bytes(uint32_t len)
{
    return RING_REC_HDR + (((uint64_t)len + 7) & ~7ull);
}

static inline uint32_t *rec_hdr_at(struct ring *r, uint64_t idx)
{
    return (uint32_t *)(r->data + (idx & r->mask));
}

size_t ring_free_bytes(const struct ring *r)
{
    uint64_t rd = atomic_load_explicit(&r->hdr->read_idx, memory_order_acquire);
    return (size_t)((r->mask + 1) - (r->local - rd));
}

/* Sleep until the consumer frees space or the deadline passes. */
static int wait_for_space(struct ring *r, uint64_t need, int timeout_ms)
{
    struct ring_hdr *h = r->hdr;
    struct timespec deadline;
    if (timeout_ms > 0) {
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
    }
    for (;;) {
        if (ring_free_bytes(r) >= need)
            return 0;
        if (timeout_ms == 0)
            return RILL_E_FULL;
        uint32_t seq = atomic_load_explicit(&h->space_seq, memory_order_acquire);
        atomic_store_explicit(&h->producer_waiting, 1, memory_order_seq_cst);
        atomic_thread_fence(memory_order_seq_cst);
        if (ring_free_bytes(r) >= need) {
            atomic_store_explicit(&h->producer_waiting, 0, memory_order_relaxed);
            return 0;
        }
        struct timespec rel, *tsp = NULL;
        if (timeout_ms > 0) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            long long ns = (deadline.tv_sec - now.tv_sec) * 1000000000LL + (deadline.tv_nsec - now.tv_nsec);
            if (ns <= 0) {
                atomic_store_explicit(&h->producer_waiting, 0, memory_order_relaxed);
                return ring_free_bytes(r) >= need ? 0 : RILL_E_FULL;
            }
            rel.tv_sec = ns / 1000000000LL;
            rel.tv_nsec = ns % 1000000000LL;
            tsp = &rel;
        }
        futex(&h->space_seq, FUTEX_WAIT, seq, tsp);
        atomic_store_explicit(&h->producer_waiting, 0, memory_order_relaxed);
    }
}

int ring_wait_space(struct ring *r, size_t bytes, int timeout_ms)
{
    if (ring_free_bytes(r) >= bytes)
        return 0;
    ring_publish(r);
    return wait_for_space(r, bytes, timeout_ms);
}

void *ring_reserve(struct ring *r, uint32_t len, uint32_t kind, int timeout_ms, int *err)
{
    if (len > ring_max_payload(r) || kind == 0 || kind >= REC_KIND_PAD) {
        if (err)
            *err = len > ring_max_payload(r) ? RILL_E_TOO_LARGE : RILL_E_BAD_REQUEST;
        return NULL;
    }
    uint64_t size = rec_bytes(len);
    uint64_t cap = r->mask + 1;
    uint64_t tail = cap - (r->local & r->mask); /* bytes to the end of the buffer */
    uint64_t need = size <= tail ? size : tail + size;
    if (cap - (r->local - r->peer) < need)
        r->peer = atomic_load_explicit(&r->hdr->read_idx, memory_order_acquire);
    if (cap - (r->local - r->peer) < need) {
        ring_publish(r); /* let the consumer drain what we have */
        int rc = wait_for_space(r, need, timeout_ms);
        if (rc) {
            if (err)
                *err = rc;
            return NULL;
        }
        r->peer = atomic_load_explicit(&r->hdr->read_idx, memory_order_acquire);
    }
    if (size > tail) {
        uint32_t *pad = rec_hdr_at(r, r->local);
        pad[0] = (uint32_t)(tail - RING_REC_HDR);
        pad[1] = REC_KIND_PAD;
        r->local += tail;
    }
    uint32_t *rh = rec_hdr_at(r, r->local);
    rh[0] = len;
    rh[1] = kind;
    r->local += size;
    r->pending++;
    return rh + 2;
}

int ring_push(struct ring *r, const void *data, uint32_t len, uint32_t kind, int timeout_ms)
{
    int err = 0;
    void *p = ring_reserve(r, len, kind, timeout_ms, &err);
    if (!p)
        return err;
    if (len)
        memcpy(p, data, len);
    return 0;
}

unsigned ring_publish(struct ring *r)
{
    struct ring_hdr *h = r->hdr;
    unsigned n = r->pending;
    if (r->local == r->published)
        return 0;
    atomic_store_explicit(&h->write_idx, r->local, memory_order_release);
    r->published = r->local;
    r->pending = 0;
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&h->consumer_waiting, memory_order_relaxed))
        futex_wake_all(&h->data_seq);
    return n;
}

/* --- consumer --------------------------------------------------------------- */

uint64_t ring_write_index(const struct ring *r)
{
    return atomic_load_explicit(&r->hdr->write_idx, memory_order_acquire);
}

bool ring_readable(const struct ring *r)
{
    return ring_write_index(r) != r->local;
}

int ring_next(struct ring *r, const void **data, uint32_t *len, uint32_t *kind)
{
    uint64_t cap = r->mask + 1;
    for (;;) {
        if (r->peer == r->local)
            r->peer = ring_write_index(r);
        uint64_t w = r->peer;
        if (w == r->local)
            return RILL_E_AGAIN;
        uint64_t avail = w - r->local;
        if (avail > cap || avail < RING_REC_HDR)
            return RILL_E_BAD_FORMAT;
        const uint32_t *rh = rec_hdr_at(r, r->local);
        uint32_t l = rh[0], k = rh[1];
        uint64_t size = rec_bytes(l);
        uint64_t tail = cap - (r->local & r->mask);
        if (size > avail || size > tail)
            return RILL_E_BAD_FORMAT;
        if (k == REC_KIND_PAD) {
            if (size != tail)
                return RILL_E_BAD_FORMAT;
            r->local += size;
            continue;
        }
        *data = rh + 2;
        *len = l;
        if (kind)
            *kind = k;
        r->local += size;
        return 0;
    }
}

void ring_release(struct ring *r)
{
    struct ring_hdr *h = r->hdr;
    if (atomic_load_explicit(&h->read_idx, memory_order_relaxed) == r->local)
        return;
    atomic_store_explicit(&h->read_idx, r->local, memory_order_release);
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&h->producer_waiting, memory_order_relaxed))
        futex_wake_all(&h->space_seq);
}

int ring_wait(const struct ring *r, uint64_t seen, int timeout_ms)
{
    struct ring_hdr *h = r->hdr;
    for (int i = 0; i < SPIN_ITERS; i++) {
        if (ring_write_index(r) != seen)
            return 0;
        cpu_relax();
    }
    if (timeout_ms == 0)
        return RILL_E_AGAIN;
    uint32_t seq = atomic_load_explicit(&h->data_seq, memory_order_acquire);
    atomic_store_explicit(&h->consumer_waiting, 1, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst);
    int rc = RILL_E_AGAIN;
    if (ring_write_index(r) != seen) {
        rc = 0;
    } else {
        struct timespec ts, *tsp = NULL;
        if (timeout_ms > 0) {
            ts.tv_sec = timeout_ms / 1000;
            ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
            tsp = &ts;
        }
        futex(&h->data_seq, FUTEX_WAIT, seq, tsp);
        if (ring_write_index(r) != seen)
            rc = 0;
    }
    atomic_store_explicit(&h->consumer_waiting, 0, memory_order_relaxed);
    return rc;
}

int ring_wait_data(const struct ring *r, int timeout_ms)
{
    return ring_wait(r, r->local, timeout_ms);
}

void ring_wake_consumer(struct ring *r)
{
    futex_wake_all(&r->hdr->data_seq);
}

/* --- identity and liveness ---------------------------------------------------------- */

uint64_t ring_epoch(const struct ring *r) { return r->hdr->epoch; }
pid_t ring_producer_pid(const struct ring *r) { return (pid_t)r->hdr->producer_pid; }
size_t ring_capacity(const struct ring *r) { return (size_t)(r->mask + 1); }
const char *ring_name(const struct ring *r) { return r->name; }

bool ring_producer_alive(const struct ring *r)
{
    if (r->producer)
        return true;
    return locked_by_other(r->fd);
}

/* Read the header of the object `name`, if it is ours (*fd_out stays open
 * on success). */
static int read_header(const char *name, struct ring_hdr *copy, int *fd_out)
{
    int fd = shm_open(name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC, 0);
    if (fd < 0)
        return RILL_E_IO;
    struct stat st;
    if (fstat(fd, &st) != 0 || check_ours(name, &st, NULL, 0) != 0) {
        close(fd);
        return RILL_E_UNAUTHORIZED; /* not ours: neither to read nor to remove */
    }
    if ((size_t)st.st_size < RING_HDR_BYTES) {
        close(fd);
        return RILL_E_BAD_FORMAT;
    }
    void *p = mmap(NULL, RING_HDR_BYTES, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        close(fd);
        return RILL_E_IO;
    }
    memcpy(copy, p, sizeof *copy);
    munmap(p, RING_HDR_BYTES);
    if (copy->magic != RING_MAGIC) {
        close(fd);
        return RILL_E_BAD_FORMAT;
    }
    *fd_out = fd;
    return 0;
}

uint64_t ring_epoch_of(const char *name)
{
    struct ring_hdr h;
    int fd;
    if (!valid_name(name) || read_header(name, &h, &fd) != 0)
        return 0;
    close(fd);
    return h.epoch;
}

int ring_cleanup_stale(const char *prefix)
{
    DIR *d = opendir("/dev/shm");
    if (!d)
        return 0;
    size_t plen = strlen(prefix);
    int removed = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, prefix, plen) != 0 || strlen(e->d_name) + 2 > RING_NAME_MAX)
            continue;
        char name[RING_NAME_MAX];
        snprintf(name, sizeof name, "/%s", e->d_name);
        struct ring_hdr h;
        int fd;
        if (read_header(name, &h, &fd) != 0)
            continue; /* not a ring: not ours to remove */
        if (!locked_by_other(fd) && shm_unlink(name) == 0)
            removed++;
        close(fd);
    }
    closedir(d);
    return removed;
}
