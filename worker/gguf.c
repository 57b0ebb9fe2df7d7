/* gguf.c — see gguf.h. */
#include "gguf.h"
#include "common/hash.h"
#include "err.h"
#include "worker/model.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- type tables ------------------------------------------------------- */

static const struct {
    const char *name;
    uint32_t size;
} vtypes[GGUF_VTYPE_COUNT] = {
    [GGUF_U8] = {"u8", 1},     [GGUF_I8] = {"i8", 1},       [GGUF_U16] = {"u16", 2},
    [GGUF_I16] = {"i16", 2},   [GGUF_U32] = {"u32", 4},     [GGUF_I32] = {"i32", 4},
    [GGUF_F32] = {"f32", 4},   [GGUF_BOOL] = {"bool", 1},   [GGUF_STR] = {"string", 0},
    [GGUF_ARR] = {"array", 0}, [GGUF_U64] = {"u64", 8},     [GGUF_I64] = {"i64", 8},
    [GGUF_F64] = {"f64", 8},
};

/* ggml's block sizes (elements) and block bytes.  Ids that ggml removed
 * (4, 5, 31-33, 36-38) stay empty: such a file is as unknown as type 99. */
#define TTYPE_MAX 40
static const struct {
    const char *name;
    uint32_t block, size;
} ttypes[TTYPE_MAX] = {
    [GGUF_T_F32] = {"f32", 1, 4},          [GGUF_T_F16] = {"f16", 1, 2},
    [GGUF_T_Q4_0] = {"q4_0", 32, 18},      [GGUF_T_Q4_1] = {"q4_1", 32, 20},
    [GGUF_T_Q5_0] = {"q5_0", 32, 22},      [GGUF_T_Q5_1] = {"q5_1", 32, 24},
    [GGUF_T_Q8_0] = {"q8_0", 32, 34},      [GGUF_T_Q8_1] = {"q8_1", 32, 36},
    [GGUF_T_Q2_K] = {"q2_K", 256, 84},     [GGUF_T_Q3_K] = {"q3_K", 256, 110},
    [GGUF_T_Q4_K] = {"q4_K", 256, 144},    [GGUF_T_Q5_K] = {"q5_K", 256, 176},
    [GGUF_T_Q6_K] = {"q6_K", 256, 210},    [GGUF_T_Q8_K] = {"q8_K", 256, 292},
    [GGUF_T_IQ2_XXS] = {"iq2_xxs", 256, 66}, [GGUF_T_IQ2_XS] = {"iq2_xs", 256, 74},
    [GGUF_T_IQ3_XXS] = {"iq3_xxs", 256, 98}, [GGUF_T_IQ1_S] = {"iq1_s", 256, 50},
    [GGUF_T_IQ4_NL] = {"iq4_nl", 32, 18},  [GGUF_T_IQ3_S] = {"iq3_s", 256, 110},
    [GGUF_T_IQ2_S] = {"iq2_s", 256, 82},   [GGUF_T_IQ4_XS] = {"iq4_xs", 256, 136},
    [GGUF_T_I8] = {"i8", 1, 1},            [GGUF_T_I16] = {"i16", 1, 2},
    [GGUF_T_I32] = {"i32", 1, 4},          [GGUF_T_I64] = {"i64", 1, 8},
    [GGUF_T_F64] = {"f64", 1, 8},          [GGUF_T_IQ1_M] = {"iq1_m", 256, 56},
    [GGUF_T_BF16] = {"bf16", 1, 2},        [GGUF_T_TQ1_0] = {"tq1_0", 256, 54},
    [GGUF_T_TQ2_0] = {"tq2_0", 256, 66},   [GGUF_T_MXFP4] = {"mxfp4", 32, 17},
};

uint32_t gguf_vtype_size(uint32_t t) { return t < GGUF_VTYPE_COUNT ? vtypes[t].size : 0; }

const char *gguf_vtype_name(uint32_t t)
{
    return t < GGUF_VTYPE_COUNT ? vtypes[t].name : "?";
}

const char *gguf_ttype_name(uint32_t t) { return t < TTYPE_MAX ? ttypes[t].name : NULL; }
uint32_t gguf_ttype_block(uint32_t t) { return t < TTYPE_MAX ? ttypes[t].block : 0; }
uint32_t gguf_ttype_size(uint32_t t) { return t < TTYPE_MAX ? ttypes[t].size : 0; }

int gguf_ttype_from_name(const char *name)
{
    for (int t = 0; t < TTYPE_MAX; t++)
        if (ttypes[t].name && strcasecmp(ttypes[t].name, name) == 0)
            return t;
    return -1;
}

uint64_t gguf_ttype_bytes(uint32_t t, uint64_t n)
{
    uint32_t blk = gguf_ttype_block(t);
    if (blk == 0 || n % blk != 0)
        return 0;
    uint64_t nb = n / blk, sz = ttypes[t].size;
    if (nb > UINT64_MAX / sz)
        return 0;
    return nb * sz;
}

bool gguf_str_eq(struct gguf_str a, const char *s)
{
    size_t n = strlen(s);
    return a.len == n && memcmp(a.s, s, n) == 0;
}

/* ---- reader ------------------------------------------------------------- */

/* Open addressing over indexes+1 (0 = empty), FNV-1a of the bytes.  A hash
 * both answers lookups and finds duplicates in O(n): a hostile file with a
 * million tensors must not make the duplicate check quadratic. */
struct strset {
    uint32_t *slot;
    uint64_t mask;
};

struct gguf {
    const uint8_t *base;
    uint64_t size;
    bool mapped;
    uint32_t version, alignment;
    uint64_t data_off;
    uint64_t n_kv, n_tensors;
    struct gguf_kv *kv;
    struct gguf_tensor *t;
    struct strset kv_set, t_set;
};

/* The parse cursor.  The context fields say what is being read, so that a
 * truncation message can name it; they are formatted only on error. */
struct rd {
    const uint8_t *p;
    uint64_t size, off;
    char *why;
    size_t why_len;
    const char *item;      /* "metadata pair", "tensor info" or NULL (header) */
    uint64_t idx;
    struct gguf_str name;  /* key or tensor name once read */
    const char *part;      /* "key", "value", "name", … */
    int64_t elem;          /* array element being read, -1 if none */
};

/* A file's string made safe for a message: at most 80 bytes, non-printable
 * bytes as '?'. */
static const char *show(struct gguf_str s, char *buf, size_t cap)
{
    size_t n = 0;
    uint64_t lim = s.len > 80 ? 80 : s.len;
    for (uint64_t i = 0; i < lim && n + 4 < cap; i++) {
        uint8_t c = (uint8_t)s.s[i];
        buf[n++] = (c >= 0x20 && c != 0x7f) ? (char)c : '?';
    }
    if (s.len > lim && n + 4 < cap) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = 0;
    return buf;
}

static void where(const struct rd *r, char *buf, size_t cap)
{
    char nm[96];
    int n = 0;
    if (!r->item) {
        snprintf(buf, cap, "%s", r->part);
        return;
    }
    if (r->elem >= 0)
        n = snprintf(buf, cap, "element %" PRId64 " of the ", r->elem);
    if (n < 0 || (size_t)n >= cap)
        return;
    if (r->name.s)
        snprintf(buf + n, cap - (size_t)n, "%s of %s %" PRIu64 " ('%s')", r->part, r->item, r->idx,
                 show(r->name, nm, sizeof nm));
    else
        snprintf(buf + n, cap - (size_t)n, "%s of %s %" PRIu64, r->part, r->item, r->idx);
}

static int need(struct rd *r, uint64_t n)
{
    if (n <= r->size - r->off)
        return 0;
    char w[256];
    where(r, w, sizeof w);
    return rill_fail(r->why, r->why_len, RILL_E_BAD_FORMAT,
                "truncated file: %s needs %" PRIu64 " bytes at offset %" PRIu64 ", file has %" PRIu64,
                w, n, r->off, r->size);
}

static uint64_t ld64(const uint8_t *p)
{
    uint64_t v = 0;
    memcpy(&v, p, 8);
    return v;
}
static uint32_t ld32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static int rd_u32(struct rd *r, uint32_t *v)
{
    int rc = need(r, 4);
    if (rc)
        return rc;
    *v = ld32(r->p + r->off);
    r->off += 4;
    return 0;
}

static int rd_u64(struct rd *r, uint64_t *v)
{
    int rc = need(r, 8);
    if (rc)
        return rc;
    *v = ld64(r->p + r->off);
    r->off += 8;
    return 0;
}

static int rd_str(struct rd *r, struct gguf_str *s)
{
    uint64_t len;
    int rc = rd_u64(r, &len);
    if (rc)
        return rc;
    if (len > r->size - r->off) {
        char w[256];
        where(r, w, sizeof w);
        return rill_fail(r->why, r->why_len, RILL_E_BAD_FORMAT,
                    "truncated file: %s is a string of %" PRIu64 " bytes at offset %" PRIu64
                    ", file has %" PRIu64,
                    w, len, r->off, r->size);
    }
    s->s = (const char *)r->p + r->off;
    s->len = len;
    r->off += len;
    return 0;
}

/* Read a scalar of type t (not string/array) into kv->v. */
static void scalar(struct gguf_kv *kv, enum gguf_vtype t, const uint8_t *p)
{
    switch (t) {
    case GGUF_U8: kv->v.u = p[0]; break;
    case GGUF_I8: kv->v.i = (int8_t)p[0]; break;
    case GGUF_U16: { uint16_t x; memcpy(&x, p, 2); kv->v.u = x; break; }
    case GGUF_I16: { int16_t x; memcpy(&x, p, 2); kv->v.i = x; break; }
    case GGUF_U32: kv->v.u = ld32(p); break;
    case GGUF_I32: kv->v.i = (int32_t)ld32(p); break;
    case GGUF_U64: kv->v.u = ld64(p); break;
    case GGUF_I64: kv->v.i = (int64_t)ld64(p); break;
    case GGUF_F32: { float x; memcpy(&x, p, 4); kv->v.f = x; break; }
    case GGUF_F64: { double x; memcpy(&x, p, 8); kv->v.f = x; break; }
    case GGUF_BOOL: kv->v.b = p[0] != 0; break;
    default: break;
    }
}

static int rd_value(struct rd *r, struct gguf_kv *kv)
{
    int rc;
    uint32_t t;
    r->part = "value type";
    if ((rc = rd_u32(r, &t)))
        return rc;
    char nm[96];
    if (t >= GGUF_VTYPE_COUNT)
        return rill_fail(r->why, r->why_len, RILL_E_BAD_FORMAT,
                    "unknown value type %" PRIu32 " for metadata '%s'", t,
                    show(kv->key, nm, sizeof nm));
    kv->type = (enum gguf_vtype)t;
    r->part = "value";
    if (t == GGUF_STR)
        return rd_str(r, &kv->v.str);
    if (t != GGUF_ARR) {
        if ((rc = need(r, vtypes[t].size)))
            return rc;
        scalar(kv, kv->type, r->p + r->off);
        r->off += vtypes[t].size;
        return 0;
    }

    uint32_t et;
    uint64_t n;
    r->part = "array element type";
    if ((rc = rd_u32(r, &et)))
        return rc;
    if (et >= GGUF_VTYPE_COUNT || et == GGUF_ARR)
        return rill_fail(r->why, r->why_len, RILL_E_BAD_FORMAT,
                    "%s element type %" PRIu32 " in the array of metadata '%s'",
                    et == GGUF_ARR ? "unsupported (nested array)" : "unknown", et,
                    show(kv->key, nm, sizeof nm));
    r->part = "array length";
    if ((rc = rd_u64(r, &n)))
        return rc;
    kv->v.arr.type = (enum gguf_vtype)et;
    kv->v.arr.n = n;
    kv->v.arr.data = r->p + r->off;
    kv->v.arr.str_off = NULL;
    uint64_t left = r->size - r->off;
    /* Every element takes at least its size (a string at least its 8-byte
     * length), so a count beyond left / size cannot be real: refuse it before
     * allocating or multiplying anything. */
    uint64_t min_size = et == GGUF_STR ? 8 : vtypes[et].size;
    if (n > left / min_size)
        return rill_fail(r->why, r->why_len, RILL_E_BAD_FORMAT,
                    "truncated file: the array of metadata '%s' has %" PRIu64
                    " %s elements, which cannot fit in the %" PRIu64 " bytes left at offset %" PRIu64,
                    show(kv->key, nm, sizeof nm), n, vtypes[et].name, left, r->off);
    if (et != GGUF_STR) {
        r->off += n * min_size;
        return 0;
    }
    uint64_t *offs = malloc(n ? n * sizeof *offs : 1);
    if (!offs)
        return rill_fail(r->why, r->why_len, RILL_E_NOMEM, "out of memory for %" PRIu64 " strings", n);
    kv->v.arr.str_off = offs;
    r->part = "string";
    for (uint64_t i = 0; i < n; i++) {
        struct gguf_str s;
        r->elem = (int64_t)i;
        offs[i] = r->off - (uint64_t)(kv->v.arr.data - r->p);
        if ((rc = rd_str(r, &s)))
            return rc;
    }
    r->elem = -1;
    return 0;
}

static int set_init(struct strset *set, uint64_t n)
{
    uint64_t cap = 16;
    while (cap < 2 * n)
        cap <<= 1;
    set->slot = calloc(cap, sizeof *set->slot);
    set->mask = cap - 1;
    return set->slot ? 0 : RILL_E_NOMEM;
}

/* Find `s` among names(i); insert index `ins` when absent and ins >= 0.
 * Returns the index found, or -1. */
static int64_t set_find(const struct strset *set, const char *s, uint64_t len,
                        const struct gguf_str *(*name_of)(const struct gguf *, uint64_t),
                        const struct gguf *g, int64_t ins)
{
    if (!set->slot)
        return -1;
    uint64_t h = hash_bytes(s, len) & set->mask;
    for (;; h = (h + 1) & set->mask) {
        uint32_t v = set->slot[h];
        if (v == 0) {
            if (ins >= 0)
                set->slot[h] = (uint32_t)ins + 1;
            return -1;
        }
        const struct gguf_str *o = name_of(g, v - 1);
        if (o->len == len && memcmp(o->s, s, len) == 0)
            return v - 1;
    }
}

static const struct gguf_str *kv_name(const struct gguf *g, uint64_t i) { return &g->kv[i].key; }
static const struct gguf_str *t_name(const struct gguf *g, uint64_t i) { return &g->t[i].name; }

/* One pass in the file's own order: header, metadata pairs, tensor infos,
 * then the placement of each tensor in the data section.  Longer than a
 * screen, but it reads top to bottom like the format it checks. */
static int parse(struct gguf *g, char *why, size_t why_len)
{
    struct rd r = {.p = g->base, .size = g->size, .why = why, .why_len = why_len, .elem = -1};
    char nm[96];
    int rc;
    uint32_t magic;

    r.part = "magic";
    if ((rc = rd_u32(&r, &magic)))
        return rc;
    if (magic != GGUF_MAGIC) {
        const uint8_t *m = g->base;
        return rill_fail(why, why_len, RILL_E_BAD_FORMAT,
                    "not a GGUF file (magic %02x %02x %02x %02x, expected \"GGUF\")", m[0], m[1],
                    m[2], m[3]);
    }
    r.part = "version";
    if ((rc = rd_u32(&r, &g->version)))
        return rc;
    if (g->version != 2 && g->version != 3) {
        uint32_t sw = __builtin_bswap32(g->version);
        return rill_fail(why, why_len, RILL_E_UNSUPPORTED,
                    "unsupported GGUF version %" PRIu32 "%s (rill reads versions 2 and 3)",
                    g->version, sw == 2 || sw == 3 ? ", a big-endian file" : "");
    }
    r.part = "tensor count";
    if ((rc = rd_u64(&r, &g->n_tensors)))
        return rc;
    r.part = "metadata count";
    if ((rc = rd_u64(&r, &g->n_kv)))
        return rc;

    /* Counts are checked against the bytes left before they size anything:
     * the smallest pair is an 8-byte key length, a 4-byte type and a 1-byte
     * value (13 bytes); the smallest tensor info 8 + 4 + 8 + 4 + 8 bytes. */
    uint64_t left = r.size - r.off;
    if (g->n_kv > left / 13 || g->n_kv >= UINT32_MAX)
        return rill_fail(why, why_len, RILL_E_BAD_FORMAT,
                    "truncated file: %" PRIu64 " metadata pairs cannot fit in the %" PRIu64
                    " bytes after the header",
                    g->n_kv, left);
    g->kv = calloc(g->n_kv ? g->n_kv : 1, sizeof *g->kv);
    if (!g->kv || set_init(&g->kv_set, g->n_kv))
        return rill_fail(why, why_len, RILL_E_NOMEM, "out of memory");

    r.item = "metadata pair";
    for (uint64_t i = 0; i < g->n_kv; i++) {
        struct gguf_kv *kv = &g->kv[i];
        r.idx = i;
        r.name = (struct gguf_str){0};
        r.part = "key";
        if ((rc = rd_str(&r, &kv->key)))
            return rc;
        r.name = kv->key;
        if (set_find(&g->kv_set, kv->key.s, kv->key.len, kv_name, g, (int64_t)i) >= 0)
            return rill_fail(why, why_len, RILL_E_BAD_FORMAT, "duplicate metadata key '%s'",
                        show(kv->key, nm, sizeof nm));
        if ((rc = rd_value(&r, kv)))
            return rc;
    }

    left = r.size - r.off;
    if (g->n_tensors > left / 32 || g->n_tensors >= UINT32_MAX)
        return rill_fail(why, why_len, RILL_E_BAD_FORMAT,
                    "truncated file: %" PRIu64 " tensor infos cannot fit in the %" PRIu64
                    " bytes after the metadata at offset %" PRIu64,
                    g->n_tensors, left, r.off);
    g->t = calloc(g->n_tensors ? g->n_tensors : 1, sizeof *g->t);
    if (!g->t || set_init(&g->t_set, g->n_tensors))
        return rill_fail(why, why_len, RILL_E_NOMEM, "out of memory");

    r.item = "tensor info";
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        struct gguf_tensor *t = &g->t[i];
        r.idx = i;
        r.name = (struct gguf_str){0};
        r.part = "name";
        if ((rc = rd_str(&r, &t->name)))
            return rc;
        r.name = t->name;
        show(t->name, nm, sizeof nm);
        if (set_find(&g->t_set, t->name.s, t->name.len, t_name, g, (int64_t)i) >= 0)
            return rill_fail(why, why_len, RILL_E_BAD_FORMAT, "duplicate tensor name '%s'", nm);
        r.part = "dimension count";
        if ((rc = rd_u32(&r, &t->n_dims)))
            return rc;
        if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
            return rill_fail(why, why_len, RILL_E_BAD_FORMAT,
                        "tensor '%s' has %" PRIu32 " dimensions (1 to %d are allowed)", nm,
                        t->n_dims, GGUF_MAX_DIMS);
        r.part = "dimensions";
        if ((rc = need(&r, 8ull * t->n_dims)))
            return rc;
        t->n_elems = 1;
        for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
            uint64_t ne = 1;
            if (d < t->n_dims) {
                ne = ld64(r.p + r.off);
                r.off += 8;
            }
            /* ggml keeps dimensions in int64_t. */
            if (ne == 0 || ne > INT64_MAX)
                return rill_fail(why, why_len, RILL_E_BAD_FORMAT,
                            "tensor '%s' has dimension ne[%" PRIu32 "] = %" PRIu64
                            " (must be 1 to 2^63-1)",
                            nm, d, ne);
            if (t->n_elems > INT64_MAX / ne)
                return rill_fail(why, why_len, RILL_E_BAD_FORMAT,
                            "tensor '%s' has too many elements (the dimensions overflow)", nm);
            t->n_elems *= ne;
            t->ne[d] = ne;
        }
        r.part = "type";
        if ((rc = rd_u32(&r, &t->type)))
            return rc;
        const char *tn = gguf_ttype_name(t->type);
        if (!tn)
            return rill_fail(why, why_len, RILL_E_BAD_FORMAT,
                        "unknown tensor type %" PRIu32 " for tensor '%s'", t->type, nm);
        uint32_t blk = gguf_ttype_block(t->type);
        if (t->ne[0] % blk)
            return rill_fail(why, why_len, RILL_E_BAD_FORMAT,
                        "tensor '%s' has rows of %" PRIu64
                        " elements, not a multiple of the %s block (%" PRIu32 ")",
                        nm, t->ne[0], tn, blk);
        t->n_bytes = gguf_ttype_bytes(t->type, t->n_elems);
        if (t->n_bytes == 0)
            return rill_fail(why, why_len, RILL_E_BAD_FORMAT, "tensor '%s' is too large", nm);
        r.part = "data offset";
        if ((rc = rd_u64(&r, &t->offset)))
            return rc;
    }

    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    uint32_t al;
    rc = gguf_get_u32(g, "general.alignment", &al, why, why_len);
    if (rc == 0) {
        if (al == 0 || (al & (al - 1)))
            return rill_fail(why, why_len, RILL_E_BAD_FORMAT,
                        "general.alignment = %" PRIu32 " is not a power of two", al);
        g->alignment = al;
    } else if (rc != RILL_E_NOT_FOUND) {
        return rc;
    }

    /* The data section starts at the next multiple of the alignment; with no
     * tensors there need not be one at all. */
    uint64_t pad = (g->alignment - r.off % g->alignment) % g->alignment;
    g->data_off = r.off + pad;
    if (g->n_tensors == 0)
        return 0;
    if (pad > r.size - r.off)
        return rill_fail(why, why_len, RILL_E_BAD_FORMAT,
                    "truncated file: the data section would start at offset %" PRIu64
                    ", file has %" PRIu64,
                    g->data_off, r.size);
    uint64_t data_size = r.size - g->data_off;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        struct gguf_tensor *t = &g->t[i];
        show(t->name, nm, sizeof nm);
        if (t->offset % g->alignment)
            return rill_fail(why, why_len, RILL_E_BAD_FORMAT,
                        "tensor '%s' data offset %" PRIu64
                        " is not a multiple of the alignment (%" PRIu32 ")",
                        nm, t->offset, g->alignment);
        if (t->offset > data_size || t->n_bytes > data_size - t->offset)
            return rill_fail(why, why_len, RILL_E_BAD_FORMAT,
                        "tensor '%s' data past the end of the file (%" PRIu64
                        " bytes at data offset %" PRIu64 ", but the data section has %" PRIu64
                        " bytes: truncated?)",
                        nm, t->n_bytes, t->offset, data_size);
        t->data = g->base + g->data_off + t->offset;
    }
    return 0;
}

static int open_common(struct gguf *g, struct gguf **out, char *why, size_t why_len)
{
    int rc = parse(g, why, why_len);
    if (rc) {
        gguf_close(g);
        return rc;
    }
    *out = g;
    return 0;
}

int gguf_open_mem(const void *data, size_t len, struct gguf **out, char *why, size_t why_len)
{
    struct gguf *g = calloc(1, sizeof *g);
    if (!g)
        return rill_fail(why, why_len, RILL_E_NOMEM, "out of memory");
    g->base = data;
    g->size = len;
    return open_common(g, out, why, why_len);
}

int gguf_open(const char *path, struct gguf **out, char *why, size_t why_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return rill_fail(why, why_len, RILL_E_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return rill_fail(why, why_len, RILL_E_IO, "cannot stat %s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return rill_fail(why, why_len, RILL_E_IO, "%s is not a regular file", path);
    }
    struct gguf *g = calloc(1, sizeof *g);
    if (!g) {
        close(fd);
        return rill_fail(why, why_len, RILL_E_NOMEM, "out of memory");
    }
    static const uint8_t empty[1];
    g->size = (uint64_t)st.st_size;
    g->base = empty; /* mmap refuses length 0; an empty file is simply truncated */
    if (g->size > 0) {
        /* Read-only and private: the weights are shared with the page cache
         * and with every other process that maps the file.  (If someone
         * truncates the file while it is mapped, touching the lost pages is a
         * SIGBUS: model files are replaced by rename, never rewritten.) */
        void *p = mmap(NULL, g->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            free(g);
            return rill_fail(why, why_len, RILL_E_IO, "cannot map %s: %s", path, strerror(e));
        }
        g->base = p;
        g->mapped = true;
    }
    close(fd);
    return open_common(g, out, why, why_len);
}

void gguf_close(struct gguf *g)
{
    if (!g)
        return;
    if (g->kv)
        for (uint64_t i = 0; i < g->n_kv; i++)
            if (g->kv[i].type == GGUF_ARR)
                free((void *)g->kv[i].v.arr.str_off);
    free(g->kv);
    free(g->t);
    free(g->kv_set.slot);
    free(g->t_set.slot);
    if (g->mapped)
        munmap((void *)g->base, g->size);
    free(g);
}

uint32_t gguf_version(const struct gguf *g) { return g->version; }
uint32_t gguf_alignment(const struct gguf *g) { return g->alignment; }
uint64_t gguf_file_size(const struct gguf *g) { return g->size; }
const void *gguf_base(const struct gguf *g) { return g->base; }
uint64_t gguf_data_offset(const struct gguf *g) { return g->data_off; }
uint64_t gguf_n_kv(const struct gguf *g) { return g->n_kv; }
uint64_t gguf_n_tensors(const struct gguf *g) { return g->n_tensors; }

const struct gguf_kv *gguf_kv_at(const struct gguf *g, uint64_t i)
{
    return i < g->n_kv ? &g->kv[i] : NULL;
}

const struct gguf_tensor *gguf_tensor_at(const struct gguf *g, uint64_t i)
{
    return i < g->n_tensors ? &g->t[i] : NULL;
}

const struct gguf_kv *gguf_find(const struct gguf *g, const char *key)
{
    int64_t i = set_find(&g->kv_set, key, strlen(key), kv_name, g, -1);
    return i < 0 ? NULL : &g->kv[i];
}

const struct gguf_tensor *gguf_find_tensor(const struct gguf *g, const char *name)
{
    int64_t i = set_find(&g->t_set, name, strlen(name), t_name, g, -1);
    return i < 0 ? NULL : &g->t[i];
}

static bool is_unsigned(enum gguf_vtype t)
{
    return t == GGUF_U8 || t == GGUF_U16 || t == GGUF_U32 || t == GGUF_U64;
}
static bool is_signed(enum gguf_vtype t)
{
    return t == GGUF_I8 || t == GGUF_I16 || t == GGUF_I32 || t == GGUF_I64;
}

static int wrong_type(const char *key, enum gguf_vtype t, const char *want, char *why, size_t why_len)
{
    return rill_fail(why, why_len, RILL_E_BAD_FORMAT, "metadata '%s' is a %s, expected %s", key,
                gguf_vtype_name(t), want);
}

/* Any integer as a (negative?, magnitude) pair, for range checks. */
static int get_int(const struct gguf *g, const char *key, bool *neg, uint64_t *mag,
                   char *why, size_t why_len)
{
    const struct gguf_kv *kv = gguf_find(g, key);
    if (!kv)
        return RILL_E_NOT_FOUND;
    if (is_unsigned(kv->type)) {
        *neg = false;
        *mag = kv->v.u;
    } else if (is_signed(kv->type)) {
        *neg = kv->v.i < 0;
        *mag = *neg ? (uint64_t)0 - (uint64_t)kv->v.i : (uint64_t)kv->v.i;
    } else {
        return wrong_type(key, kv->type, "an integer", why, why_len);
    }
    return 0;
}

int gguf_get_u64(const struct gguf *g, const char *key, uint64_t *out, char *why, size_t why_len)
{
    bool neg = false;
    uint64_t mag = 0;
    int rc = get_int(g, key, &neg, &mag, why, why_len);
    if (rc)
        return rc;
    if (neg)
        return rill_fail(why, why_len, RILL_E_BAD_FORMAT, "metadata '%s' = -%" PRIu64 " is negative",
                    key, mag);
    *out = mag;
    return 0;
}

int gguf_get_u32(const struct gguf *g, const char *key, uint32_t *out, char *why, size_t why_len)
{
    uint64_t v = 0;
    int rc = gguf_get_u64(g, key, &v, why, why_len);
    if (rc)
        return rc;
    if (v > UINT32_MAX)
        return rill_fail(why, why_len, RILL_E_BAD_FORMAT,
                    "metadata '%s' = %" PRIu64 " is out of range (at most %" PRIu32 ")", key, v,
                    UINT32_MAX);
    *out = (uint32_t)v;
    return 0;
}

int gguf_get_i64(const struct gguf *g, const char *key, int64_t *out, char *why, size_t why_len)
{
    bool neg = false;
    uint64_t mag = 0;
    int rc = get_int(g, key, &neg, &mag, why, why_len);
    if (rc)
        return rc;
    if (!neg && mag > INT64_MAX)
        return rill_fail(why, why_len, RILL_E_BAD_FORMAT,
                    "metadata '%s' = %" PRIu64 " is out of range for i64", key, mag);
    *out = neg ? (int64_t)(0 - mag) : (int64_t)mag;
    return 0;
}

int gguf_get_f32(const struct gguf *g, const char *key, float *out, char *why, size_t why_len)
{
    const struct gguf_kv *kv = gguf_find(g, key);
    if (!kv)
        return RILL_E_NOT_FOUND;
    if (kv->type != GGUF_F32 && kv->type != GGUF_F64)
        return wrong_type(key, kv->type, "a float", why, why_len);
    *out = (float)kv->v.f;
    return 0;
}

int gguf_get_bool(const struct gguf *g, const char *key, bool *out, char *why, size_t why_len)
{
    const struct gguf_kv *kv = gguf_find(g, key);
    if (!kv)
        return RILL_E_NOT_FOUND;
    if (kv->type != GGUF_BOOL)
        return wrong_type(key, kv->type, "a bool", why, why_len);
    *out = kv->v.b;
    return 0;
}

int gguf_get_str(const struct gguf *g, const char *key, struct gguf_str *out, char *why, size_t why_len)
{
    const struct gguf_kv *kv = gguf_find(g, key);
    if (!kv)
        return RILL_E_NOT_FOUND;
    if (kv->type != GGUF_STR)
        return wrong_type(key, kv->type, "a string", why, why_len);
    *out = kv->v.str;
    return 0;
}

int gguf_get_str_buf(const struct gguf *g, const char *key, char *buf, size_t cap, char *why, size_t why_len)
{
    struct gguf_str s = {"", 0};
    int rc = gguf_get_str(g, key, &s, why, why_len);
    if (rc)
        return rc;
    if (s.len >= cap || memchr(s.s, 0, s.len))
        return rill_fail(why, why_len, RILL_E_BAD_FORMAT,
                    "metadata '%s' is a string of %" PRIu64 " bytes%s (at most %zu allowed)", key,
                    s.len, memchr(s.s, 0, s.len) ? " with a NUL byte" : "", cap ? cap - 1 : 0);
    memcpy(buf, s.s, s.len);
    buf[s.len] = 0;
    return 0;
}

int gguf_get_arr(const struct gguf *g, const char *key, enum gguf_vtype elem_type,
                 const struct gguf_kv **kvp, uint64_t *n, char *why, size_t why_len)
{
    const struct gguf_kv *kv = gguf_find(g, key);
    if (!kv)
        return RILL_E_NOT_FOUND;
    if (kv->type != GGUF_ARR)
        return wrong_type(key, kv->type, "an array", why, why_len);
    if (kv->v.arr.type != elem_type)
        return rill_fail(why, why_len, RILL_E_BAD_FORMAT,
                    "metadata '%s' is an array of %s, expected an array of %s", key,
                    gguf_vtype_name(kv->v.arr.type), gguf_vtype_name(elem_type));
    *kvp = kv;
    *n = kv->v.arr.n;
    return 0;
}

struct gguf_str gguf_arr_str(const struct gguf_kv *kv, uint64_t i)
{
    if (kv->type != GGUF_ARR || kv->v.arr.type != GGUF_STR || i >= kv->v.arr.n)
        return (struct gguf_str){"", 0};
    const uint8_t *p = kv->v.arr.data + kv->v.arr.str_off[i];
    return (struct gguf_str){(const char *)p + 8, ld64(p)};
}

float gguf_arr_f32(const struct gguf_kv *kv, uint64_t i)
{
    if (kv->type != GGUF_ARR || i >= kv->v.arr.n)
        return 0;
    const uint8_t *p = kv->v.arr.data;
    if (kv->v.arr.type == GGUF_F32) {
        float x;
        memcpy(&x, p + 4 * i, 4);
        return x;
    }
    if (kv->v.arr.type == GGUF_F64) {
        double x;
        memcpy(&x, p + 8 * i, 8);
        return (float)x;
    }
    return 0;
}

static bool arr_int(const struct gguf_kv *kv, uint64_t i, struct gguf_kv *tmp)
{
    enum gguf_vtype t = kv->v.arr.type;
    if (kv->type != GGUF_ARR || i >= kv->v.arr.n || !(is_signed(t) || is_unsigned(t) || t == GGUF_BOOL))
        return false;
    scalar(tmp, t, kv->v.arr.data + i * vtypes[t].size);
    if (t == GGUF_BOOL)
        tmp->v.u = tmp->v.b;
    return true;
}

int64_t gguf_arr_i64(const struct gguf_kv *kv, uint64_t i)
{
    struct gguf_kv tmp;
    if (!arr_int(kv, i, &tmp))
        return 0;
    return is_signed(kv->v.arr.type) ? tmp.v.i : (int64_t)tmp.v.u;
}

uint64_t gguf_arr_u64(const struct gguf_kv *kv, uint64_t i)
{
    struct gguf_kv tmp;
    if (!arr_int(kv, i, &tmp))
        return 0;
    return is_signed(kv->v.arr.type) ? (uint64_t)tmp.v.i : tmp.v.u;
}
