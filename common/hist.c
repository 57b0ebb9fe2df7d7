/* hist.c — see hist.h. */
#include "hist.h"
#include "err.h"

#include <assert.h>
#include <math.h>
#include <string.h>

const double hist_prom_le_seconds[HIST_PROM_LE_COUNT] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};

#define HIST_MAGIC   0x48 /* 'H' */
#define HIST_VERSION 1

/* --- bucket arithmetic ---------------------------------------------------------
 * Buckets are (lo, hi], so the index comes from u = v - 1: a value that is a
 * bucket's top (1024, say) then belongs to the bucket below it, which is what
 * `le` bounds need.  For u < 128, index = 1 + u.  Above, with e the highest
 * set bit of u and s = e - 6, index = 1 + 64*s + (u >> s): (u >> s) runs
 * over 64..127 inside one power of two, so consecutive ranges tile without a
 * gap (this is HdrHistogram's layout, shifted by one). */

static inline unsigned bucket_of(uint64_t v)
{
    assert(v <= HIST_MAX_VALUE);
    if (v == 0)
        return 0;
    uint64_t u = v - 1;
    if (u < 2 * HIST_SUB_COUNT)
        return 1 + (unsigned)u;
    unsigned s = (unsigned)(63 - __builtin_clzll(u)) - HIST_SUB_BITS;
    return 1 + HIST_SUB_COUNT * s + (unsigned)(u >> s);
}

/* Values of bucket i are [*lo, *hi]. */
static inline void bucket_bounds(unsigned i, uint64_t *lo, uint64_t *hi)
{
    if (i == 0) {
        *lo = *hi = 0;
        return;
    }
    unsigned j = i - 1;
    unsigned s = j < 2 * HIST_SUB_COUNT ? 0 : j / HIST_SUB_COUNT - 1;
    uint64_t ulo = (uint64_t)(j - HIST_SUB_COUNT * s) << s;
    *lo = ulo + 1;
    *hi = ulo + (1ull << s);
}

void hist_bucket_range(uint64_t v, uint64_t *lo, uint64_t *hi)
{
    if (v > HIST_MAX_VALUE) {
        *lo = HIST_MAX_VALUE + 1;
        *hi = UINT64_MAX;
        return;
    }
    bucket_bounds(bucket_of(v), lo, hi);
}

/* Index of the first edge >= v, or n_edges if none. */
static inline uint32_t edge_of(const struct hist *h, uint64_t v)
{
    uint32_t lo = 0, hi = h->n_edges;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (h->edges[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* --- life -------------------------------------------------------------------- */

void hist_reset(struct hist *h)
{
    h->count = h->sum = h->max = h->overflow = 0;
    h->min = UINT64_MAX;
    memset(h->edge_counts, 0, sizeof h->edge_counts);
    memset(h->buckets, 0, sizeof h->buckets);
}

void hist_init(struct hist *h)
{
    h->n_edges = 0;
    h->pad_ = 0;
    memset(h->edges, 0, sizeof h->edges);
    hist_reset(h);
}

int hist_init_edges(struct hist *h, const uint64_t *edges, size_t n)
{
    hist_init(h);
    if (n > HIST_EDGES_MAX)
        return RILL_E_BAD_CONFIG;
    for (size_t i = 0; i < n; i++)
        if (edges[i] > HIST_MAX_VALUE || (i > 0 && edges[i] <= edges[i - 1]))
            return RILL_E_BAD_CONFIG;
    memcpy(h->edges, edges, n * sizeof *edges);
    h->n_edges = (uint32_t)n;
    return 0;
}

int hist_init_prom(struct hist *h, uint64_t units_per_second)
{
    uint64_t e[HIST_PROM_LE_COUNT];
    hist_init(h);
    if (units_per_second == 0)
        return RILL_E_BAD_CONFIG;
    for (int i = 0; i < HIST_PROM_LE_COUNT; i++) {
        double x = hist_prom_le_seconds[i] * (double)units_per_second;
        double r = nearbyint(x);
        /* 0.001 * 1e6 is 1000.0000000000001: allow float noise, not 2.5 ms in ms. */
        if (r < 1 || fabs(x - r) > 1e-6 * r || r > (double)HIST_MAX_VALUE)
            return RILL_E_BAD_CONFIG;
        e[i] = (uint64_t)r;
    }
    return hist_init_edges(h, e, HIST_PROM_LE_COUNT);
}

/* --- recording ----------------------------------------------------------------- */

void hist_record(struct hist *h, uint64_t v)
{
    h->count++;
    if (__builtin_add_overflow(h->sum, v, &h->sum))
        h->sum = UINT64_MAX;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    if (v <= HIST_MAX_VALUE)
        h->buckets[bucket_of(v)]++;
    else
        h->overflow++;
    if (h->n_edges) {
        uint32_t e = edge_of(h, v);
        if (e < h->n_edges)
            h->edge_counts[e]++;
    }
}

void hist_record_atomic(struct hist *h, uint64_t v)
{
    __atomic_fetch_add(&h->count, 1, __ATOMIC_RELAXED);

    uint64_t cur = __atomic_load_n(&h->sum, __ATOMIC_RELAXED), next;
    do {
        if (__builtin_add_overflow(cur, v, &next))
            next = UINT64_MAX;
    } while (!__atomic_compare_exchange_n(&h->sum, &cur, next, true, __ATOMIC_RELAXED,
                                          __ATOMIC_RELAXED));

    cur = __atomic_load_n(&h->min, __ATOMIC_RELAXED);
    while (v < cur && !__atomic_compare_exchange_n(&h->min, &cur, v, true, __ATOMIC_RELAXED,
                                                   __ATOMIC_RELAXED))
        ;
    cur = __atomic_load_n(&h->max, __ATOMIC_RELAXED);
    while (v > cur && !__atomic_compare_exchange_n(&h->max, &cur, v, true, __ATOMIC_RELAXED,
                                                   __ATOMIC_RELAXED))
        ;

    if (v <= HIST_MAX_VALUE)
        __atomic_fetch_add(&h->buckets[bucket_of(v)], 1, __ATOMIC_RELAXED);
    else
        __atomic_fetch_add(&h->overflow, 1, __ATOMIC_RELAXED);
    /* Edges are set before recording starts and never change, so reading
     * them plainly is fine. */
    if (h->n_edges) {
        uint32_t e = edge_of(h, v);
        if (e < h->n_edges)
            __atomic_fetch_add(&h->edge_counts[e], 1, __ATOMIC_RELAXED);
    }
}

void hist_snapshot(struct hist *dst, const struct hist *src)
{
#define LD(f) (dst->f = __atomic_load_n(&src->f, __ATOMIC_RELAXED))
    LD(count);
    LD(sum);
    LD(min);
    LD(max);
    LD(overflow);
    dst->n_edges = src->n_edges;
    dst->pad_ = 0;
    for (unsigned i = 0; i < HIST_EDGES_MAX; i++) {
        dst->edges[i] = src->edges[i];
        LD(edge_counts[i]);
    }
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        LD(buckets[i]);
#undef LD
}

int hist_merge(struct hist *dst, const struct hist *src)
{
    if (dst->n_edges != src->n_edges ||
        memcmp(dst->edges, src->edges, src->n_edges * sizeof src->edges[0]) != 0)
        return RILL_E_BAD_CONFIG;
    dst->count += src->count;
    if (__builtin_add_overflow(dst->sum, src->sum, &dst->sum))
        dst->sum = UINT64_MAX;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    dst->overflow += src->overflow;
    for (uint32_t i = 0; i < src->n_edges; i++)
        dst->edge_counts[i] += src->edge_counts[i];
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        dst->buckets[i] += src->buckets[i];
    return 0;
}

/* --- reading ------------------------------------------------------------------- */

uint64_t hist_percentile(const struct hist *h, double q)
{
    /* The total comes from the buckets, not h->count, so that a snapshot
     * taken mid-record still finds its rank inside the buckets. */
    uint64_t n = h->overflow;
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        n += h->buckets[i];
    if (n == 0)
        return 0;
    if (!(q > 0))                       /* also NaN */
        return h->min;
    if (q >= 1)
        return h->max;

    double r = ceil(q * (double)n);
    uint64_t rank = r < 1 ? 1 : r >= (double)n ? n : (uint64_t)r;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= rank) {
            uint64_t lo, hi;
            bucket_bounds(i, &lo, &hi);
            uint64_t mid = lo + (hi - lo) / 2;
            if (mid < h->min)
                mid = h->min;
            if (mid > h->max)
                mid = h->max;
            return mid;
        }
    }
    return h->max; /* the rank falls among the overflowed samples */
}

double hist_mean(const struct hist *h)
{
    return h->count ? (double)h->sum / (double)h->count : 0.0;
}

/* Samples certainly <= b, from the buckets alone. */
static uint64_t buckets_le(const struct hist *h, uint64_t b)
{
    unsigned last; /* buckets [0, last) count */
    if (b >= HIST_MAX_VALUE) {
        last = HIST_BUCKETS; /* overflowed samples may be > b: left out */
    } else {
        uint64_t lo, hi;
        unsigned i = bucket_of(b);
        bucket_bounds(i, &lo, &hi);
        last = hi == b ? i + 1 : i;
    }
    uint64_t c = 0;
    for (unsigned i = 0; i < last; i++)
        c += h->buckets[i];
    return c;
}

void hist_cumulative(const struct hist *h, const uint64_t *le, size_t n, uint64_t *out)
{
    for (size_t k = 0; k < n; k++) {
        uint64_t b = le[k];
        if (h->count == 0 || b < h->min) {
            out[k] = 0;
        } else if (b >= h->max) {
            out[k] = h->count;
        } else {
            uint32_t e = edge_of(h, b);
            if (e < h->n_edges && h->edges[e] == b) {
                uint64_t c = 0;
                for (uint32_t i = 0; i <= e; i++)
                    c += h->edge_counts[i];
                out[k] = c;
            } else {
                out[k] = buckets_le(h, b);
            }
        }
    }
}

/* --- bytes --------------------------------------------------------------------- */

struct wbuf {
    uint8_t *p;
    size_t len, cap;
    bool overrun;
};

static void put_varint(struct wbuf *w, uint64_t x)
{
    do {
        uint8_t byte = (uint8_t)(x & 0x7f);
        x >>= 7;
        if (x)
            byte |= 0x80;
        if (w->len < w->cap)
            w->p[w->len] = byte;
        else
            w->overrun = true;
        w->len++;
    } while (x);
}

static void put_byte(struct wbuf *w, uint8_t b)
{
    if (w->len < w->cap)
        w->p[w->len] = b;
    else
        w->overrun = true;
    w->len++;
}

int hist_encode(const struct hist *h, uint8_t *buf, size_t cap, size_t *len)
{
    struct wbuf w = {buf, 0, cap, false};
    put_byte(&w, HIST_MAGIC);
    put_byte(&w, HIST_VERSION);
    put_varint(&w, h->count);
    put_varint(&w, h->sum);
    put_varint(&w, h->min);
    put_varint(&w, h->max);
    put_varint(&w, h->overflow);
    put_varint(&w, h->n_edges);
    for (uint32_t i = 0; i < h->n_edges; i++) {
        put_varint(&w, h->edges[i]);
        put_varint(&w, h->edge_counts[i]);
    }
    uint64_t nz = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        nz += h->buckets[i] != 0;
    put_varint(&w, nz);
    /* (gap, count) pairs: gap = buckets skipped since the previous nonzero
     * one, so a dense run costs one byte of index per bucket. */
    unsigned next = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        if (h->buckets[i] == 0)
            continue;
        put_varint(&w, i - next);
        put_varint(&w, h->buckets[i]);
        next = i + 1;
    }
    if (w.overrun)
        return RILL_E_TOO_LARGE;
    *len = w.len;
    return 0;
}

struct rbuf {
    const uint8_t *p;
    size_t len, pos;
};

static int get_varint(struct rbuf *r, uint64_t *out)
{
    uint64_t x = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (r->pos >= r->len)
            return RILL_E_BAD_FORMAT;
        uint8_t b = r->p[r->pos++];
        if (shift == 63 && b > 1) /* more than 64 bits */
            return RILL_E_BAD_FORMAT;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = x;
            return 0;
        }
    }
    return RILL_E_BAD_FORMAT;
}

#define GET(r, x)                                                              \
    do {                                                                       \
        if (get_varint((r), (x)) < 0)                                          \
            goto bad;                                                          \
    } while (0)

int hist_decode(struct hist *h, const uint8_t *buf, size_t len)
{
    struct rbuf r = {buf, len, 0};
    uint64_t n_edges, nz, total, edge_total = 0;
    hist_init(h);
    if (len < 2 || buf[0] != HIST_MAGIC || buf[1] != HIST_VERSION)
        goto bad;
    r.pos = 2;
    GET(&r, &h->count);
    GET(&r, &h->sum);
    GET(&r, &h->min);
    GET(&r, &h->max);
    GET(&r, &h->overflow);
    GET(&r, &n_edges);
    if (n_edges > HIST_EDGES_MAX)
        goto bad;
    h->n_edges = (uint32_t)n_edges;
    for (uint32_t i = 0; i < h->n_edges; i++) {
        GET(&r, &h->edges[i]);
        GET(&r, &h->edge_counts[i]);
        if (h->edges[i] > HIST_MAX_VALUE || (i > 0 && h->edges[i] <= h->edges[i - 1]))
            goto bad;
        if (__builtin_add_overflow(edge_total, h->edge_counts[i], &edge_total))
            goto bad;
    }
    GET(&r, &nz);
    if (nz > HIST_BUCKETS)
        goto bad;
    total = h->overflow;
    int first = -1, last = -1;
    uint64_t next = 0;
    for (uint64_t k = 0; k < nz; k++) {
        uint64_t gap, c;
        GET(&r, &gap);
        GET(&r, &c);
        if (gap >= HIST_BUCKETS - next || c == 0)
            goto bad;
        unsigned i = (unsigned)(next + gap);
        h->buckets[i] = c;
        if (__builtin_add_overflow(total, c, &total))
            goto bad;
        if (first < 0)
            first = (int)i;
        last = (int)i;
        next = i + 1;
    }
    if (r.pos != len || total != h->count || edge_total > h->count)
        goto bad;
    /* min and max must sit where the samples are, or percentile clamping and
     * hist_cumulative's shortcuts would answer nonsense. */
    if (h->count == 0) {
        if (h->min != UINT64_MAX || h->max != 0 || h->sum != 0)
            goto bad;
    } else {
        if (h->min > h->max)
            goto bad;
        if (first >= 0) {
            if (h->min > HIST_MAX_VALUE || bucket_of(h->min) != (unsigned)first)
                goto bad;
        } else if (h->min <= HIST_MAX_VALUE) {
            goto bad;
        }
        if (h->overflow > 0) {
            if (h->max <= HIST_MAX_VALUE)
                goto bad;
        } else if (h->max > HIST_MAX_VALUE || bucket_of(h->max) != (unsigned)last) {
            goto bad;
        }
    }
    return 0;
bad:
    hist_init(h);
    return RILL_E_BAD_FORMAT;
}
