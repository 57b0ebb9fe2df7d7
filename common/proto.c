/* proto.c — msgpack messages and the binary token record.
 *
 * Each message type is a table of fields (key, kind, offset, range); one
 * walker decodes any table and one encodes it, so the checks of both sides
 * are the same code and cannot drift apart.
 *
 * msgpack-c allocates a container's element array as soon as it reads the
 * header, trusting the count: a 6-byte input claiming 2^32 elements asks for
 * ~100 GB.  So decoding first walks the bytes without allocating, checking
 * every count against the bytes left (an element takes at least one byte),
 * the nesting depth and the total number of objects; only then does
 * msgpack-c see them, and its allocation is bounded by ~24 bytes per object
 * (48 per map entry), a few MB at most.
 */
#include "proto.h"

#include <assert.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "err.h"

/* --- names ------------------------------------------------------------------ */

static const char *const type_names[PROTO_TYPE_COUNT] = {
    [PROTO_SUBMIT] = "submit",       [PROTO_CANCEL] = "cancel",
    [PROTO_ACCEPTED] = "accepted",   [PROTO_REJECTED] = "rejected",   [PROTO_STATS] = "stats",
    [PROTO_HELLO] = "hello",         [PROTO_HEARTBEAT] = "heartbeat",
    [PROTO_SET_BATCH] = "set_batch", [PROTO_PRESSURE] = "pressure",
    [PROTO_DRAIN] = "drain",         [PROTO_SHUTDOWN] = "shutdown",
    [PROTO_WORKERS] = "workers",     [PROTO_ADOPT] = "adopt",
};

static const char *const role_names[] = {
    [PROTO_ROLE_WORKER] = "worker",
    [PROTO_ROLE_GATEWAY] = "gateway",
    [PROTO_ROLE_SUPERVISOR] = "supervisor",
};
#define ROLE_COUNT (sizeof role_names / sizeof role_names[0])

static const char *const finish_names[PROTO_FINISH_COUNT] = {
    "none", "stop", "eos", "length", "cancelled", "error",
};

const char *proto_type_name(enum proto_type t)
{
    return (unsigned)t < PROTO_TYPE_COUNT ? type_names[t] : NULL;
}

enum proto_type proto_type_from_name(const char *name)
{
    for (int t = 1; t < PROTO_TYPE_COUNT; t++)
        if (strcmp(type_names[t], name) == 0)
            return (enum proto_type)t;
    return PROTO_NONE;
}

const char *proto_role_name(enum proto_role r)
{
    return (unsigned)r < ROLE_COUNT ? role_names[r] : NULL;
}

const char *proto_finish_name(enum proto_finish f)
{
    return (unsigned)f < PROTO_FINISH_COUNT ? finish_names[f] : NULL;
}

/* --- field tables ------------------------------------------------------------ */

enum kind {
    K_U64, K_U32, K_U8, K_I32, K_F32, K_BOOL, K_STR, K_ROLE,
    /* fields with their own code */
    K_PROMPT, K_TOKENS, K_STOP, K_METRICS, K_WORKERS, K_BLOB, K_TEXT,
};

#define F_REQ      1u /* required */
#define F_NONEMPTY 2u /* a string that may not be "" */
#define F_DTRUE    4u /* an optional K_BOOL that is true when absent */

struct field {
    const char *key;
    uint8_t kind;
    uint8_t flags;
    uint16_t size; /* sizeof the member, checked against the kind */
    uint32_t off;
    int64_t lo;    /* K_I32: minimum */
    uint64_t hi;   /* integers: maximum; K_STR: cap in bytes */
};

#define FLD(S, m, k, fl, l, h) \
    { #m, k, fl, sizeof(((S *)0)->m), offsetof(S, m), l, h }
#define U64(S, m)        FLD(S, m, K_U64, F_REQ, 0, UINT64_MAX)
#define U32(S, m)        FLD(S, m, K_U32, F_REQ, 0, UINT32_MAX)
#define U32R(S, m, h)    FLD(S, m, K_U32, F_REQ, 0, h)
#define U8R(S, m, h)     FLD(S, m, K_U8, F_REQ, 0, h)
#define I32(S, m, fl, l, h) FLD(S, m, K_I32, fl, l, h)
#define F32(S, m)        FLD(S, m, K_F32, F_REQ, 0, 0)
#define BOOL(S, m)       FLD(S, m, K_BOOL, F_REQ, 0, 0)
#define BOOL_DTRUE(S, m) FLD(S, m, K_BOOL, F_DTRUE, 0, 0)
#define STR(S, m, fl)    FLD(S, m, K_STR, F_REQ | (fl), 0, sizeof(((S *)0)->m) - 1)
#define SPECIAL(S, m, k, fl) FLD(S, m, k, fl, 0, 0)

#define S_ struct proto_submit
static const struct field submit_fields[] = {
    U64(S_, id),
    SPECIAL(S_, prompt, K_PROMPT, F_REQ),
    SPECIAL(S_, prompt_tokens, K_TOKENS, 0),
    U32(S_, max_tokens),
    F32(S_, temperature),
    F32(S_, top_p),
    U32(S_, top_k),
    F32(S_, min_p),
    F32(S_, repetition_penalty),
    U64(S_, seed),
    BOOL(S_, has_seed),
    SPECIAL(S_, stop, K_STOP, F_REQ),
    U32(S_, skip),
    U32R(S_, top_logprobs, PROTO_MAX_TOP),
    I32(S_, priority, 0, INT32_MIN, INT32_MAX),
    BOOL_DTRUE(S_, parse_special),
    SPECIAL(S_, messages, K_TEXT, 0),
    SPECIAL(S_, tools, K_TEXT, 0),
    FLD(S_, presence_penalty, K_F32, 0, 0, 0),
    FLD(S_, frequency_penalty, K_F32, 0, 0, 0),
    SPECIAL(S_, prior, K_TEXT, 0),
    FLD(S_, ignore_eos, K_BOOL, 0, 0, 0),
};
#undef S_

static const struct field cancel_fields[] = {
    U64(struct proto_cancel, id),
};

static const struct field adopt_fields[] = {
    U32(struct proto_adopt, epoch),
    BOOL(struct proto_adopt, keep),
};

static const struct field accepted_fields[] = {
    U64(struct proto_accepted, id),
    U32(struct proto_accepted, queue_position),
    FLD(struct proto_accepted, prompt_tokens, K_U32, 0, 0, UINT32_MAX),
};

static const struct field rejected_fields[] = {
    U64(struct proto_rejected, id),
    I32(struct proto_rejected, code, F_REQ, INT32_MIN, -1),
    STR(struct proto_rejected, message, 0),
};

#define S_ struct proto_hello
static const struct field hello_fields[] = {
    FLD(S_, role, K_ROLE, F_REQ, 0, 0),
    STR(S_, id, F_NONEMPTY),
    I32(S_, pid, F_REQ, INT32_MIN, INT32_MAX),
    STR(S_, ring, 0),
    STR(S_, endpoint, 0),
    STR(S_, model, 0),
    U32(S_, n_ctx),
    U32(S_, max_batch),
    U64(S_, epoch),
};
#undef S_

#define S_ struct proto_heartbeat
static const struct field heartbeat_fields[] = {
    STR(S_, id, F_NONEMPTY),
    U64(S_, seq),
    U32(S_, active),
    U32(S_, queued),
    F32(S_, step_ms),
    F32(S_, step_p50_ms),
    F32(S_, step_p99_ms),
    F32(S_, tokens_per_s),
    F32(S_, prefill_tokens_per_s),
    U64(S_, rss_bytes),
    U64(S_, kv_bytes),
    U64(S_, kv_capacity_bytes),
    U32(S_, batch_cap),
    U32(S_, batch_limit),
    U64(S_, preemptions),
    U64(S_, tokens_total),
    U64(S_, requests_total),
    FLD(S_, prefix_lookups, K_U64, 0, 0, UINT64_MAX),
    FLD(S_, prefix_hits, K_U64, 0, 0, UINT64_MAX),
    FLD(S_, prefix_lookup_tokens, K_U64, 0, 0, UINT64_MAX),
    FLD(S_, prefix_hit_tokens, K_U64, 0, 0, UINT64_MAX),
    FLD(S_, prefix_evictions, K_U64, 0, 0, UINT64_MAX),
    FLD(S_, prefix_blocks, K_U32, 0, 0, UINT32_MAX),
    U8R(S_, pressure_level, PRESSURE_EMERGENCY),
    U8R(S_, state, PROTO_STATE_DRAINING),
    SPECIAL(S_, metrics, K_METRICS, 0),
    SPECIAL(S_, step_hist, K_BLOB, 0),
    SPECIAL(S_, batch_hist, K_BLOB, 0),
};
#undef S_

static const struct field set_batch_fields[] = {
    U32(struct proto_set_batch, max_batch),
    STR(struct proto_set_batch, reason, 0),
};

static const struct field pressure_fields[] = {
    U8R(struct proto_pressure_msg, level, PRESSURE_EMERGENCY),
    STR(struct proto_pressure_msg, reason, 0),
};

static const struct field stats_fields[] = {
    SPECIAL(struct proto_stats, prom, K_TEXT, F_REQ),
    SPECIAL(struct proto_stats, json, K_TEXT, F_REQ),
};

static const struct field workers_fields[] = {
    SPECIAL(struct proto_workers, workers, K_WORKERS, F_REQ),
};

#define S_ struct proto_worker_info
static const struct field worker_info_fields[] = {
    STR(S_, id, F_NONEMPTY),
    STR(S_, ring, 0),
    STR(S_, endpoint, 0),
    U8R(S_, state, PROTO_WSTATE_FAILED),
    U64(S_, epoch),
};
#undef S_

struct table {
    const struct field *f;
    unsigned n;
};
#define TABLE(a) { a, sizeof(a) / sizeof(a[0]) }

static const struct table tables[PROTO_TYPE_COUNT] = {
    [PROTO_SUBMIT] = TABLE(submit_fields),
    [PROTO_CANCEL] = TABLE(cancel_fields),
    [PROTO_ACCEPTED] = TABLE(accepted_fields),
    [PROTO_REJECTED] = TABLE(rejected_fields),
    [PROTO_HELLO] = TABLE(hello_fields),
    [PROTO_HEARTBEAT] = TABLE(heartbeat_fields),
    [PROTO_SET_BATCH] = TABLE(set_batch_fields),
    [PROTO_PRESSURE] = TABLE(pressure_fields),
    [PROTO_DRAIN] = { NULL, 0 },
    [PROTO_SHUTDOWN] = { NULL, 0 },
    [PROTO_WORKERS] = TABLE(workers_fields),
    [PROTO_STATS] = TABLE(stats_fields),
    [PROTO_ADOPT] = TABLE(adopt_fields),
};
static const struct table worker_info_table = TABLE(worker_info_fields);

/* The seen-bitmask of decode holds one bit per field. */
_Static_assert(sizeof(heartbeat_fields) / sizeof(heartbeat_fields[0]) <= 64, "too many fields");
_Static_assert(PROTO_MAX_STOP <= 255 && PROTO_MAX_METRICS <= 255 && PROTO_MAX_WORKERS <= 255,
               "counts are u8");

#ifndef NDEBUG
static const uint16_t kind_size[] = {
    [K_U64] = 8, [K_U32] = 4, [K_U8] = 1, [K_I32] = 4, [K_F32] = 4,
    [K_BOOL] = sizeof(bool), [K_ROLE] = sizeof(enum proto_role),
};
#endif

/* --- errors ---------------------------------------------------------------- */

/* Where we are, for the `why` of an error: "heartbeat.metrics: …",
 * "workers.workers[3].endpoint: …". */
struct ctx {
    char *why;
    size_t why_len;
    const char *msg;  /* type name, or "message" before it is known */
    const char *list; /* non-NULL inside a list entry */
    int idx;
};

static int fail(struct ctx *c, const char *key, int code, const char *reason)
{
    if (!c->why || c->why_len == 0)
        return code;
    char entry[48] = "";
    if (c->list)
        snprintf(entry, sizeof entry, ".%s[%d]", c->list, c->idx);
    snprintf(c->why, c->why_len, "%s%s%s%s: %s", c->msg, entry, key ? "." : "", key ? key : "",
             reason);
    return code;
}

/* --- pre-validation walk ------------------------------------------------------ */

struct walk {
    const uint8_t *p;
    size_t len, pos;
    size_t nobj;
};

/* Big-endian integer of `n` bytes at the cursor; false if the input ends. */
static bool walk_be(struct walk *w, unsigned n, uint64_t *v)
{
    if (w->len - w->pos < n)
        return false;
    uint64_t x = 0;
    for (unsigned i = 0; i < n; i++)
        x = x << 8 | w->p[w->pos + i];
    w->pos += n;
    *v = x;
    return true;
}

/* Skip one object at the cursor, checking that it fits the input; recursion
 * is bounded by PROTO_MAX_DEPTH. */
static int walk_one(struct walk *w, struct ctx *c, int depth)
{
    if (w->pos >= w->len)
        return fail(c, NULL, RILL_E_BAD_REQUEST, "truncated");
    if (++w->nobj > PROTO_MAX_OBJECTS)
        return fail(c, NULL, RILL_E_TOO_LARGE, "too many objects");
    uint8_t b = w->p[w->pos++];
    uint64_t skip = 0, count = 0;
    unsigned lenbytes = 0, extra = 0;
    bool container = false, map = false;

    if (b <= 0x7f || b >= 0xe0)
        return 0;
    if (b <= 0x9f) {
        container = true;
        map = b <= 0x8f;
        count = b & 0x0f;
    } else if (b <= 0xbf) {
        skip = b & 0x1f;
    } else {
        switch (b) {
        case 0xc0: case 0xc2: case 0xc3: return 0;
        case 0xc4: case 0xd9: lenbytes = 1; break;            /* bin8, str8 */
        case 0xc5: case 0xda: lenbytes = 2; break;
        case 0xc6: case 0xdb: lenbytes = 4; break;
        case 0xc7: lenbytes = 1; extra = 1; break;            /* ext + type byte */
        case 0xc8: lenbytes = 2; extra = 1; break;
        case 0xc9: lenbytes = 4; extra = 1; break;
        case 0xca: skip = 4; break;
        case 0xcb: skip = 8; break;
        case 0xcc: case 0xd0: skip = 1; break;
        case 0xcd: case 0xd1: skip = 2; break;
        case 0xce: case 0xd2: skip = 4; break;
        case 0xcf: case 0xd3: skip = 8; break;
        case 0xd4: skip = 2; break;                           /* fixext: type + data */
        case 0xd5: skip = 3; break;
        case 0xd6: skip = 5; break;
        case 0xd7: skip = 9; break;
        case 0xd8: skip = 17; break;
        case 0xdc: container = true; lenbytes = 2; break;
        case 0xdd: container = true; lenbytes = 4; break;
        case 0xde: container = map = true; lenbytes = 2; break;
        case 0xdf: container = map = true; lenbytes = 4; break;
        default: return fail(c, NULL, RILL_E_BAD_REQUEST, "invalid msgpack byte 0xc1");
        }
    }
    if (lenbytes) {
        uint64_t n;
        if (!walk_be(w, lenbytes, &n))
            return fail(c, NULL, RILL_E_BAD_REQUEST, "truncated");
        if (container)
            count = n;
        else
            skip = n + extra;
    }
    if (!container) {
        if (skip > w->len - w->pos)
            return fail(c, NULL, RILL_E_BAD_REQUEST, "truncated");
        w->pos += skip;
        return 0;
    }
    if (depth >= PROTO_MAX_DEPTH)
        return fail(c, NULL, RILL_E_BAD_REQUEST, "nested too deep");
    uint64_t elems = map ? 2 * count : count;
    if (elems > w->len - w->pos)
        return fail(c, NULL, RILL_E_BAD_REQUEST, "truncated (container count exceeds input)");
    if (elems > PROTO_MAX_OBJECTS - w->nobj)
        return fail(c, NULL, RILL_E_TOO_LARGE, "too many objects");
    for (uint64_t i = 0; i < elems; i++) {
        int rc = walk_one(w, c, depth + 1);
        if (rc)
            return rc;
    }
    return 0;
}

/* --- decoding --------------------------------------------------------------- */

static bool key_is(const msgpack_object *k, const char *s)
{
    size_t n = strlen(s);
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n && memcmp(k->via.str.ptr, s, n) == 0;
}

static int dec_uint(struct ctx *c, const char *key, const msgpack_object *o, uint64_t hi, uint64_t *v)
{
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return fail(c, key, RILL_E_BAD_REQUEST, "negative integer");
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return fail(c, key, RILL_E_BAD_REQUEST, "expected an integer");
    if (o->via.u64 > hi)
        return fail(c, key, RILL_E_BAD_REQUEST, "integer out of range");
    *v = o->via.u64;
    return 0;
}

static int dec_int(struct ctx *c, const char *key, const msgpack_object *o, int64_t lo, int64_t hi,
                   int64_t *v)
{
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (hi < 0 || o->via.u64 > (uint64_t)hi || (int64_t)o->via.u64 < lo)
            return fail(c, key, RILL_E_BAD_REQUEST, "integer out of range");
        *v = (int64_t)o->via.u64;
    } else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        if (o->via.i64 < lo || o->via.i64 > hi)
            return fail(c, key, RILL_E_BAD_REQUEST, "integer out of range");
        *v = o->via.i64;
    } else {
        return fail(c, key, RILL_E_BAD_REQUEST, "expected an integer");
    }
    return 0;
}

/* Any msgpack number as a finite double (integers are normal where floats
 * are meant: many encoders write 1.0 as 1). */
static int dec_num(struct ctx *c, const char *key, const msgpack_object *o, double *v)
{
    double d;
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER: d = (double)o->via.u64; break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: d = (double)o->via.i64; break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: d = o->via.f64; break;
    default: return fail(c, key, RILL_E_BAD_REQUEST, "expected a number");
    }
    if (!isfinite(d))
        return fail(c, key, RILL_E_BAD_REQUEST, "not a finite number");
    *v = d;
    return 0;
}

/* A string into dst[cap + 1]; no NUL bytes inside. */
static int dec_str(struct ctx *c, const char *key, const msgpack_object *o, char *dst, size_t cap,
                   bool nonempty)
{
    if (o->type != MSGPACK_OBJECT_STR)
        return fail(c, key, RILL_E_BAD_REQUEST, "expected a string");
    size_t n = o->via.str.size;
    if (n > cap)
        return fail(c, key, RILL_E_TOO_LARGE, "string too long");
    if (n == 0 && nonempty)
        return fail(c, key, RILL_E_BAD_REQUEST, "empty string");
    if (memchr(o->via.str.ptr, 0, n))
        return fail(c, key, RILL_E_BAD_REQUEST, "string contains a NUL byte");
    memcpy(dst, o->via.str.ptr, n);
    dst[n] = '\0';
    return 0;
}

static int dec_map(struct ctx *c, const struct table *t, const msgpack_object *o, void *base,
                   bool top);

/* A bin or str of at most `max` bytes into heap memory with a NUL after it
 * (str and bin share the layout of via.str / via.bin). */
static int dec_bytes(struct ctx *c, const char *key, const msgpack_object *o, uint32_t max, const char *too_long,
                     char **out, uint32_t *out_len)
{
    if (o->type != MSGPACK_OBJECT_BIN && o->type != MSGPACK_OBJECT_STR)
        return fail(c, key, RILL_E_BAD_REQUEST, "expected bytes or a string");
    uint32_t n = o->type == MSGPACK_OBJECT_BIN ? o->via.bin.size : o->via.str.size;
    const char *p = o->type == MSGPACK_OBJECT_BIN ? o->via.bin.ptr : o->via.str.ptr;
    if (n > max)
        return fail(c, key, RILL_E_TOO_LARGE, too_long);
    char *dst = malloc((size_t)n + 1);
    if (!dst)
        return fail(c, key, RILL_E_NOMEM, "out of memory");
    if (n)
        memcpy(dst, p, n);
    dst[n] = '\0';
    *out = dst;
    *out_len = n;
    return 0;
}

static int dec_special(struct ctx *c, const struct field *f, const msgpack_object *o, void *base)
{
    const char *key = f->key;
    int rc;

    switch (f->kind) {
    case K_BLOB: {
        struct proto_blob *b = (struct proto_blob *)((char *)base + f->off);
        if (o->type != MSGPACK_OBJECT_BIN)
            return fail(c, key, RILL_E_BAD_REQUEST, "expected bytes");
        if (o->via.bin.size > PROTO_BLOB_MAX)
            return fail(c, key, RILL_E_TOO_LARGE, "too many bytes");
        memcpy(b->data, o->via.bin.ptr, o->via.bin.size);
        b->len = (uint16_t)o->via.bin.size;
        return 0;
    }
    case K_TEXT: {
        struct proto_text *t = (struct proto_text *)((char *)base + f->off);
        char *dst;
        uint32_t n;
        if ((rc = dec_bytes(c, key, o, PROTO_MAX_TEXT, "text too long", &dst, &n)))
            return rc;
        free((void *)t->p); /* a repeated key: the last one wins */
        t->p = dst;
        t->len = n;
        return 0;
    }
    case K_PROMPT: {
        struct proto_submit *s = base;
        char *dst;
        uint32_t n;
        if ((rc = dec_bytes(c, key, o, PROTO_MAX_PROMPT, "prompt too long", &dst, &n)))
            return rc;
        free((void *)s->prompt);
        s->prompt = dst;
        s->prompt_len = n;
        return 0;
    }
    case K_TOKENS: {
        struct proto_submit *s = base;
        if (o->type != MSGPACK_OBJECT_ARRAY)
            return fail(c, key, RILL_E_BAD_REQUEST, "expected an array");
        uint32_t n = o->via.array.size;
        if (n > PROTO_MAX_TOKENS)
            return fail(c, key, RILL_E_TOO_LARGE, "too many tokens");
        if (n == 0)
            return 0;
        int32_t *ids = malloc((size_t)n * sizeof *ids);
        if (!ids)
            return fail(c, key, RILL_E_NOMEM, "out of memory");
        s->prompt_tokens = ids; /* freed by the caller's cleanup on error */
        for (uint32_t i = 0; i < n; i++) {
            uint64_t v;
            if ((rc = dec_uint(c, key, &o->via.array.ptr[i], INT32_MAX, &v)))
                return rc;
            ids[i] = (int32_t)v;
        }
        s->n_prompt_tokens = n;
        return 0;
    }
    case K_STOP: {
        struct proto_submit *s = base;
        if (o->type != MSGPACK_OBJECT_ARRAY)
            return fail(c, key, RILL_E_BAD_REQUEST, "expected an array");
        if (o->via.array.size > PROTO_MAX_STOP)
            return fail(c, key, RILL_E_TOO_LARGE, "too many stop strings");
        for (uint32_t i = 0; i < o->via.array.size; i++)
            if ((rc = dec_str(c, key, &o->via.array.ptr[i], s->stop[i], PROTO_STOP_LEN, true)))
                return rc;
        s->n_stop = (uint8_t)o->via.array.size;
        return 0;
    }
    case K_METRICS: {
        struct proto_heartbeat *h = base;
        if (o->type != MSGPACK_OBJECT_MAP)
            return fail(c, key, RILL_E_BAD_REQUEST, "expected a map");
        uint32_t n = o->via.map.size;
        if (n > PROTO_MAX_METRICS)
            return fail(c, key, RILL_E_TOO_LARGE, "too many metrics");
        for (uint32_t i = 0; i < n; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            struct proto_metric *m = &h->metrics[i];
            if ((rc = dec_str(c, key, &kv->key, m->name, PROTO_METRIC_LEN, true)) ||
                (rc = dec_num(c, key, &kv->val, &m->value)))
                return rc;
            for (uint32_t j = 0; j < i; j++)
                if (strcmp(h->metrics[j].name, m->name) == 0)
                    return fail(c, key, RILL_E_BAD_REQUEST, "repeated metric name");
        }
        h->n_metrics = (uint8_t)n;
        return 0;
    }
    case K_WORKERS: {
        struct proto_workers *w = base;
        if (o->type != MSGPACK_OBJECT_ARRAY)
            return fail(c, key, RILL_E_BAD_REQUEST, "expected an array");
        if (o->via.array.size > PROTO_MAX_WORKERS)
            return fail(c, key, RILL_E_TOO_LARGE, "too many workers");
        c->list = key;
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            c->idx = (int)i;
            if ((rc = dec_map(c, &worker_info_table, &o->via.array.ptr[i], &w->workers[i], false)))
                return rc;
        }
        c->list = NULL;
        w->n_workers = (uint8_t)o->via.array.size;
        return 0;
    }
    }
    assert(!"unknown field kind");
    return RILL_E_INTERNAL;
}

static int dec_field(struct ctx *c, const struct field *f, const msgpack_object *o, void *base)
{
    char *dst = (char *)base + f->off;
    const char *key = f->key;
    uint64_t u;
    int64_t i;
    double d;
    int rc;

    assert(f->kind >= K_PROMPT || f->kind == K_STR || f->size == kind_size[f->kind]);
    switch (f->kind) {
    case K_U64:
    case K_U32:
    case K_U8:
        if ((rc = dec_uint(c, key, o, f->hi, &u)))
            return rc;
        if (f->kind == K_U64)
            memcpy(dst, &u, 8);
        else if (f->kind == K_U32)
            *(uint32_t *)dst = (uint32_t)u;
        else
            *(uint8_t *)dst = (uint8_t)u;
        return 0;
    case K_I32:
        if ((rc = dec_int(c, key, o, f->lo, (int64_t)f->hi, &i)))
            return rc;
        *(int32_t *)dst = (int32_t)i;
        return 0;
    case K_F32:
        if ((rc = dec_num(c, key, o, &d)))
            return rc;
        if (fabs(d) > FLT_MAX)
            return fail(c, key, RILL_E_BAD_REQUEST, "number out of float range");
        *(float *)dst = (float)d;
        return 0;
    case K_BOOL:
        if (o->type != MSGPACK_OBJECT_BOOLEAN)
            return fail(c, key, RILL_E_BAD_REQUEST, "expected a boolean");
        *(bool *)dst = o->via.boolean;
        return 0;
    case K_STR:
        return dec_str(c, key, o, dst, f->hi, f->flags & F_NONEMPTY);
    case K_ROLE:
        if (o->type != MSGPACK_OBJECT_STR)
            return fail(c, key, RILL_E_BAD_REQUEST, "expected a string");
        for (unsigned r = 1; r < ROLE_COUNT; r++)
            if (key_is(o, role_names[r])) {
                *(enum proto_role *)dst = (enum proto_role)r;
                return 0;
            }
        return fail(c, key, RILL_E_BAD_REQUEST, "unknown role");
    default:
        return dec_special(c, f, o, base);
    }
}

/* Decode the map `o` with table `t` into `base`.  `top`: the message's own
 * map, whose "t" key is not a field. */
static int dec_map(struct ctx *c, const struct table *t, const msgpack_object *o, void *base,
                   bool top)
{
    if (o->type != MSGPACK_OBJECT_MAP)
        return fail(c, NULL, RILL_E_BAD_REQUEST, "expected a map");
    uint64_t seen = 0;
    unsigned n_t = 0;
    for (uint32_t k = 0; k < o->via.map.size; k++) {
        const msgpack_object_kv *kv = &o->via.map.ptr[k];
        if (kv->key.type != MSGPACK_OBJECT_STR)
            return fail(c, NULL, RILL_E_BAD_REQUEST, "a key is not a string");
        if (top && key_is(&kv->key, "t")) {
            if (++n_t > 1)
                return fail(c, "t", RILL_E_BAD_REQUEST, "repeated key");
            continue;
        }
        for (unsigned j = 0; j < t->n; j++) {
            if (!key_is(&kv->key, t->f[j].key))
                continue;
            if (seen & (1ull << j))
                return fail(c, t->f[j].key, RILL_E_BAD_REQUEST, "repeated key");
            seen |= 1ull << j;
            int rc = dec_field(c, &t->f[j], &kv->val, base);
            if (rc)
                return rc;
            break;
        }
    }
    for (unsigned j = 0; j < t->n; j++) {
        if ((t->f[j].flags & F_REQ) && !(seen & (1ull << j)))
            return fail(c, t->f[j].key, RILL_E_BAD_REQUEST, "missing");
        if ((t->f[j].flags & F_DTRUE) && !(seen & (1ull << j)))
            *(bool *)((char *)base + t->f[j].off) = true;
    }
    return 0;
}

static void submit_free(struct proto_submit *s)
{
    free((void *)s->prompt);
    free((void *)s->prompt_tokens);
    free((void *)s->messages.p);
    free((void *)s->tools.p);
    free((void *)s->prior.p);
    s->prior = (struct proto_text){0};
    s->prompt = NULL;
    s->prompt_tokens = NULL;
    s->messages = (struct proto_text){0};
    s->tools = (struct proto_text){0};
    s->prompt_len = 0;
    s->n_prompt_tokens = 0;
}

int proto_unpack(const void *buf, size_t len, size_t max_len, msgpack_unpacked *up, char *why, size_t why_len)
{
    struct ctx c = { .why = why, .why_len = why_len, .msg = "message", .idx = -1 };
    msgpack_unpacked_init(up);
    if (why && why_len)
        why[0] = '\0';
    if (len > max_len)
        return fail(&c, NULL, RILL_E_TOO_LARGE, "message too large");
    if (len == 0 || !buf)
        return fail(&c, NULL, RILL_E_BAD_REQUEST, "empty message");
    struct walk w = { .p = buf, .len = len };
    int rc = walk_one(&w, &c, 0);
    if (rc)
        return rc;
    if (w.pos != len)
        return fail(&c, NULL, RILL_E_BAD_REQUEST, "trailing bytes");
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack_next(up, buf, len, &off);
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len)
        return ur == MSGPACK_UNPACK_NOMEM_ERROR ? fail(&c, NULL, RILL_E_NOMEM, "out of memory")
                                                : fail(&c, NULL, RILL_E_BAD_REQUEST, "malformed msgpack");
    return 0;
}

int proto_decode(const void *buf, size_t len, struct proto_msg *out, char *why, size_t why_len)
{
    struct ctx c = { .why = why, .why_len = why_len, .msg = "message", .idx = -1 };
    memset(out, 0, sizeof *out);
    msgpack_unpacked up;
    int rc = proto_unpack(buf, len, PROTO_MAX_MSG, &up, why, why_len);
    if (rc)
        goto out;
    const msgpack_object *root = &up.data;
    if (root->type != MSGPACK_OBJECT_MAP) {
        rc = fail(&c, NULL, RILL_E_BAD_REQUEST, "not a map");
        goto out;
    }
    const msgpack_object *tv = NULL;
    for (uint32_t k = 0; k < root->via.map.size && !tv; k++)
        if (key_is(&root->via.map.ptr[k].key, "t"))
            tv = &root->via.map.ptr[k].val;
    if (!tv) {
        rc = fail(&c, "t", RILL_E_BAD_REQUEST, "missing");
        goto out;
    }
    enum proto_type type = PROTO_NONE;
    if (tv->type == MSGPACK_OBJECT_STR)
        for (int t = 1; t < PROTO_TYPE_COUNT && !type; t++)
            if (key_is(tv, type_names[t]))
                type = (enum proto_type)t;
    if (!type) {
        rc = fail(&c, "t", RILL_E_BAD_REQUEST, tv->type == MSGPACK_OBJECT_STR ? "unknown type"
                                                                               : "expected a string");
        goto out;
    }
    out->type = type;
    c.msg = type_names[type];
    rc = dec_map(&c, &tables[type], root, &out->u, true);

out:
    msgpack_unpacked_destroy(&up);
    if (rc) {
        out->owned_ = true; /* whatever was allocated before the error */
        proto_msg_free(out);
        memset(out, 0, sizeof *out);
    } else {
        out->owned_ = true;
    }
    return rc;
}

void proto_msg_free(struct proto_msg *m)
{
    if (!m || !m->owned_)
        return;
    if (m->type == PROTO_SUBMIT)
        submit_free(&m->u.submit);
    if (m->type == PROTO_STATS) {
        free((void *)m->u.stats.prom.p);
        free((void *)m->u.stats.json.p);
        memset(&m->u.stats, 0, sizeof m->u.stats);
    }
    m->owned_ = false;
}

/* --- encoding --------------------------------------------------------------- */

struct enc {
    msgpack_packer pk;
    int err; /* any packer failure: out of memory */
};

static void enc_str(struct enc *e, const char *s, size_t n)
{
    e->err |= msgpack_pack_str(&e->pk, n);
    e->err |= msgpack_pack_str_body(&e->pk, s, n);
}

static void enc_key(struct enc *e, const char *k)
{
    enc_str(e, k, strlen(k));
}

/* Length of the string in dst[cap + 1], or -1 without a NUL there. */
static int check_str(struct ctx *c, const char *key, const char *s, size_t cap, bool nonempty,
                     size_t *n)
{
    *n = strnlen(s, cap + 1);
    if (*n > cap)
        return fail(c, key, RILL_E_TOO_LARGE, "string too long (no NUL within its cap)");
    if (*n == 0 && nonempty)
        return fail(c, key, RILL_E_BAD_REQUEST, "empty string");
    return 0;
}

static int check_f32(struct ctx *c, const char *key, float v)
{
    return isfinite(v) ? 0 : fail(c, key, RILL_E_BAD_REQUEST, "not a finite number");
}

/* Whether an optional field is sent: containers only when non-empty. */
static bool enc_present(const struct field *f, const void *base)
{
    if (f->kind == K_TOKENS)
        return ((const struct proto_submit *)base)->n_prompt_tokens > 0;
    if (f->kind == K_METRICS)
        return ((const struct proto_heartbeat *)base)->n_metrics > 0;
    if (f->kind == K_BLOB)
        return ((const struct proto_blob *)((const char *)base + f->off))->len > 0;
    if (f->kind == K_TEXT && !(f->flags & F_REQ))
        return ((const struct proto_text *)((const char *)base + f->off))->len > 0;
    if (f->kind == K_F32 && !(f->flags & F_REQ)) /* absent means 0 */
        return *(const float *)((const char *)base + f->off) != 0;
    return true;
}

static int enc_map(struct ctx *c, struct enc *e, const struct table *t, const void *base,
                   const char *type_name);

static int enc_special(struct ctx *c, struct enc *e, const struct field *f, const void *base)
{
    const char *key = f->key;
    int rc;
    size_t n;

    switch (f->kind) {
    case K_BLOB: {
        const struct proto_blob *b = (const struct proto_blob *)((const char *)base + f->off);
        if (b->len > PROTO_BLOB_MAX)
            return fail(c, key, RILL_E_TOO_LARGE, "too many bytes");
        e->err |= msgpack_pack_bin(&e->pk, b->len);
        e->err |= msgpack_pack_bin_body(&e->pk, b->data, b->len);
        return 0;
    }
    case K_TEXT: {
        const struct proto_text *t = (const struct proto_text *)((const char *)base + f->off);
        if (t->len > PROTO_MAX_TEXT)
            return fail(c, key, RILL_E_TOO_LARGE, "text too long");
        if (t->len && !t->p)
            return fail(c, key, RILL_E_BAD_REQUEST, "NULL text");
        e->err |= msgpack_pack_bin(&e->pk, t->len);
        if (t->len)
            e->err |= msgpack_pack_bin_body(&e->pk, t->p, t->len);
        return 0;
    }
    case K_PROMPT: {
        const struct proto_submit *s = base;
        if (s->prompt_len > PROTO_MAX_PROMPT)
            return fail(c, key, RILL_E_TOO_LARGE, "prompt too long");
        if (s->prompt_len && !s->prompt)
            return fail(c, key, RILL_E_BAD_REQUEST, "NULL prompt");
        /* bin: a prompt is bytes, not necessarily valid UTF-8 */
        e->err |= msgpack_pack_bin(&e->pk, s->prompt_len);
        if (s->prompt_len)
            e->err |= msgpack_pack_bin_body(&e->pk, s->prompt, s->prompt_len);
        return 0;
    }
    case K_TOKENS: {
        const struct proto_submit *s = base;
        if (s->n_prompt_tokens > PROTO_MAX_TOKENS)
            return fail(c, key, RILL_E_TOO_LARGE, "too many tokens");
        if (!s->prompt_tokens)
            return fail(c, key, RILL_E_BAD_REQUEST, "NULL prompt_tokens");
        e->err |= msgpack_pack_array(&e->pk, s->n_prompt_tokens);
        for (uint32_t i = 0; i < s->n_prompt_tokens; i++) {
            if (s->prompt_tokens[i] < 0)
                return fail(c, key, RILL_E_BAD_REQUEST, "negative token id");
            e->err |= msgpack_pack_uint32(&e->pk, (uint32_t)s->prompt_tokens[i]);
        }
        return 0;
    }
    case K_STOP: {
        const struct proto_submit *s = base;
        if (s->n_stop > PROTO_MAX_STOP)
            return fail(c, key, RILL_E_TOO_LARGE, "too many stop strings");
        e->err |= msgpack_pack_array(&e->pk, s->n_stop);
        for (unsigned i = 0; i < s->n_stop; i++) {
            if ((rc = check_str(c, key, s->stop[i], PROTO_STOP_LEN, true, &n)))
                return rc;
            enc_str(e, s->stop[i], n);
        }
        return 0;
    }
    case K_METRICS: {
        const struct proto_heartbeat *h = base;
        if (h->n_metrics > PROTO_MAX_METRICS)
            return fail(c, key, RILL_E_TOO_LARGE, "too many metrics");
        e->err |= msgpack_pack_map(&e->pk, h->n_metrics);
        for (unsigned i = 0; i < h->n_metrics; i++) {
            const struct proto_metric *m = &h->metrics[i];
            if ((rc = check_str(c, key, m->name, PROTO_METRIC_LEN, true, &n)))
                return rc;
            if (!isfinite(m->value))
                return fail(c, key, RILL_E_BAD_REQUEST, "not a finite number");
            for (unsigned j = 0; j < i; j++)
                if (strcmp(h->metrics[j].name, m->name) == 0)
                    return fail(c, key, RILL_E_BAD_REQUEST, "repeated metric name");
            enc_str(e, m->name, n);
            e->err |= msgpack_pack_double(&e->pk, m->value);
        }
        return 0;
    }
    case K_WORKERS: {
        const struct proto_workers *w = base;
        if (w->n_workers > PROTO_MAX_WORKERS)
            return fail(c, key, RILL_E_TOO_LARGE, "too many workers");
        e->err |= msgpack_pack_array(&e->pk, w->n_workers);
        c->list = key;
        for (unsigned i = 0; i < w->n_workers; i++) {
            c->idx = (int)i;
            if ((rc = enc_map(c, e, &worker_info_table, &w->workers[i], NULL)))
                return rc;
        }
        c->list = NULL;
        return 0;
    }
    }
    assert(!"unknown field kind");
    return RILL_E_INTERNAL;
}

static int enc_field(struct ctx *c, struct enc *e, const struct field *f, const void *base)
{
    const char *src = (const char *)base + f->off;
    const char *key = f->key;
    uint64_t u;
    int32_t i;
    float v;
    size_t n;
    int rc;

    assert(f->kind >= K_PROMPT || f->kind == K_STR || f->size == kind_size[f->kind]);
    switch (f->kind) {
    case K_U64:
    case K_U32:
    case K_U8:
        if (f->kind == K_U64)
            memcpy(&u, src, 8);
        else if (f->kind == K_U32)
            u = *(const uint32_t *)src;
        else
            u = *(const uint8_t *)src;
        if (u > f->hi)
            return fail(c, key, RILL_E_BAD_REQUEST, "integer out of range");
        enc_key(e, key);
        e->err |= msgpack_pack_uint64(&e->pk, u);
        return 0;
    case K_I32:
        i = *(const int32_t *)src;
        if (i < f->lo || (int64_t)i > (int64_t)f->hi)
            return fail(c, key, RILL_E_BAD_REQUEST, "integer out of range");
        enc_key(e, key);
        e->err |= msgpack_pack_int32(&e->pk, i);
        return 0;
    case K_F32:
        v = *(const float *)src;
        if ((rc = check_f32(c, key, v)))
            return rc;
        enc_key(e, key);
        e->err |= msgpack_pack_float(&e->pk, v);
        return 0;
    case K_BOOL:
        enc_key(e, key);
        e->err |= *(const bool *)src ? msgpack_pack_true(&e->pk) : msgpack_pack_false(&e->pk);
        return 0;
    case K_STR:
        if ((rc = check_str(c, key, src, f->hi, f->flags & F_NONEMPTY, &n)))
            return rc;
        enc_key(e, key);
        enc_str(e, src, n);
        return 0;
    case K_ROLE: {
        enum proto_role r = *(const enum proto_role *)src;
        const char *name = proto_role_name(r);
        if (!name)
            return fail(c, key, RILL_E_BAD_REQUEST, "unknown role");
        enc_key(e, key);
        enc_key(e, name);
        return 0;
    }
    default:
        enc_key(e, key);
        return enc_special(c, e, f, base);
    }
}

static int enc_map(struct ctx *c, struct enc *e, const struct table *t, const void *base,
                   const char *type_name)
{
    size_t n = type_name ? 1 : 0;
    for (unsigned j = 0; j < t->n; j++)
        n += enc_present(&t->f[j], base);
    e->err |= msgpack_pack_map(&e->pk, n);
    if (type_name) {
        enc_key(e, "t");
        enc_key(e, type_name);
    }
    for (unsigned j = 0; j < t->n; j++) {
        if (!enc_present(&t->f[j], base))
            continue;
        int rc = enc_field(c, e, &t->f[j], base);
        if (rc)
            return rc;
    }
    return 0;
}

int proto_encode(const struct proto_msg *m, msgpack_sbuffer *out, char *why, size_t why_len)
{
    struct ctx c = { .why = why, .why_len = why_len, .msg = "message", .idx = -1 };
    if (why && why_len)
        why[0] = '\0';
    const char *name = proto_type_name(m->type);
    if (m->type == PROTO_NONE || !name)
        return fail(&c, "t", RILL_E_BAD_REQUEST, "unknown type");
    c.msg = name;

    size_t start = out->size;
    struct enc e = { .err = 0 };
    msgpack_packer_init(&e.pk, out, msgpack_sbuffer_write);
    int rc = enc_map(&c, &e, &tables[m->type], &m->u, name);
    if (!rc && e.err)
        rc = fail(&c, NULL, RILL_E_NOMEM, "out of memory");
    if (!rc && out->size - start > PROTO_MAX_MSG)
        rc = fail(&c, NULL, RILL_E_TOO_LARGE, "message too large");
    if (rc)
        out->size = start;
    return rc;
}

/* --- token record ------------------------------------------------------------ */

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p) { return get32(p) | (uint64_t)get32(p + 4) << 32; }

static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

#define TOK_KNOWN_FLAGS (PROTO_TOK_FIRST | PROTO_TOK_LAST | PROTO_TOK_ERROR | PROTO_TOK_FINISH_MASK)

/* The rules of struct proto_token that do not concern lengths. */
static bool token_valid(const struct proto_token *t)
{
    enum proto_finish f = proto_tok_finish(t->flags);
    bool last = t->flags & PROTO_TOK_LAST, error = t->flags & PROTO_TOK_ERROR;
    return t->token_id >= -1 && !(t->flags & ~TOK_KNOWN_FLAGS) && f < PROTO_FINISH_COUNT &&
           last == (f != PROTO_FINISH_NONE) && (error ? t->error < 0 : t->error == 0);
}

int proto_token_encode(void *buf, size_t cap, const struct proto_token *t)
{
    if (t->n_top > PROTO_MAX_TOP || t->text_len > PROTO_MAX_TOKEN_TEXT ||
        (t->text_len && !t->text) || !token_valid(t))
        return RILL_E_BAD_FORMAT;
    size_t size = proto_token_size(t->n_top, t->text_len);
    if (cap < size)
        return RILL_E_TOO_LARGE;
    uint8_t *p = buf;
    put64(p + 0, t->req_id);
    put64(p + 8, t->t_gen_ns);
    put32(p + 16, t->position);
    put32(p + 20, (uint32_t)t->token_id);
    put32(p + 24, t->flags);
    put32(p + 28, (uint32_t)t->error);
    put32(p + 32, t->latency_us);
    put32(p + 36, f2u(t->logprob));
    put32(p + 40, t->mem_mb);
    put16(p + 44, t->batch);
    put16(p + 46, t->text_len);
    p[48] = t->n_top;
    p[49] = PROTO_TOK_VERSION;
    put16(p + 50, 0);
    uint8_t *q = p + PROTO_TOK_HDR;
    for (unsigned i = 0; i < t->n_top; i++, q += 8) {
        put32(q, (uint32_t)t->top[i].token_id);
        put32(q + 4, f2u(t->top[i].logprob));
    }
    if (t->text_len)
        memcpy(q, t->text, t->text_len);
    return (int)size;
}

int proto_token_decode(const void *buf, size_t len, struct proto_token *t)
{
    const uint8_t *p = buf;
    if (len < PROTO_TOK_HDR || p[49] != PROTO_TOK_VERSION || get16(p + 50) != 0)
        return RILL_E_BAD_FORMAT;
    uint8_t n_top = p[48];
    uint16_t text_len = get16(p + 46);
    if (n_top > PROTO_MAX_TOP || text_len > PROTO_MAX_TOKEN_TEXT ||
        len != proto_token_size(n_top, text_len))
        return RILL_E_BAD_FORMAT;
    t->req_id = get64(p + 0);
    t->t_gen_ns = get64(p + 8);
    t->position = get32(p + 16);
    t->token_id = (int32_t)get32(p + 20);
    t->flags = get32(p + 24);
    t->error = (int32_t)get32(p + 28);
    t->latency_us = get32(p + 32);
    t->logprob = u2f(get32(p + 36));
    t->mem_mb = get32(p + 40);
    t->batch = get16(p + 44);
    t->text_len = text_len;
    t->n_top = n_top;
    const uint8_t *q = p + PROTO_TOK_HDR;
    for (unsigned i = 0; i < n_top; i++, q += 8) {
        t->top[i].token_id = (int32_t)get32(q);
        t->top[i].logprob = u2f(get32(q + 4));
    }
    t->text = (const char *)q;
    return token_valid(t) ? 0 : RILL_E_BAD_FORMAT;
}
