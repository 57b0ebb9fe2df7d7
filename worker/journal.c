/* journal.c — see journal.h. */
#include "journal.h"
#include "common/err.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/reclog.h"

#include <assert.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct jentry {
    struct jentry *prev, *next;  /* in arrival order */
    struct jentry *hnext;        /* in its bucket */
    uint64_t id;
    unsigned char *submit;       /* the submit message, encoded */
    size_t submit_len;
    int32_t *ids;                /* ids[0 .. n_ids): the output positions so far */
    uint32_t n_ids, ids_cap;
    bool accepted;
    uint32_t prompt_tokens;
    struct reclog rec;           /* the kept records */
    uint32_t last_pos;           /* of the newest kept record */
    bool finished;
    uint64_t end_ns;
};

struct journal {
    uint64_t window_ns;
    size_t per_cap, total_cap, total;
    struct jentry *head, *tail;
    struct jentry **buckets;
    uint32_t n_buckets, n;
};

int journal_create(uint64_t window_ns, size_t per_cap, size_t total_cap, struct journal **out)
{
    struct journal *j = calloc(1, sizeof *j);
    if (!j)
        return RILL_E_NOMEM;
    j->window_ns = window_ns;
    j->per_cap = per_cap;
    j->total_cap = total_cap;
    j->n_buckets = 256;
    j->buckets = calloc(j->n_buckets, sizeof *j->buckets);
    if (!j->buckets) {
        free(j);
        return RILL_E_NOMEM;
    }
    *out = j;
    return 0;
}

static void entry_free(struct jentry *e)
{
    free(e->submit);
    free(e->ids);
    reclog_free(&e->rec);
    free(e);
}

void journal_free(struct journal *j)
{
    if (!j)
        return;
    for (struct jentry *e = j->head, *n; e; e = n) {
        n = e->next;
        entry_free(e);
    }
    free(j->buckets);
    free(j);
}

static struct jentry **bucket_of(const struct journal *j, uint64_t id)
{
    return &j->buckets[hash_u64(id) & (j->n_buckets - 1)];
}

static struct jentry *find(const struct journal *j, uint64_t id)
{
    if (!j->window_ns)
        return NULL;
    for (struct jentry *e = *bucket_of(j, id); e; e = e->hnext)
        if (e->id == id)
            return e;
    return NULL;
}

/* Twice the buckets when the chains grow long (a failed resize keeps the
 * old table: only slower). */
static void grow(struct journal *j)
{
    uint32_t nb = j->n_buckets * 2;
    struct jentry **b = calloc(nb, sizeof *b);
    if (!b)
        return;
    for (struct jentry *e = j->head; e; e = e->next) {
        struct jentry **slot = &b[hash_u64(e->id) & (nb - 1)];
        e->hnext = *slot;
        *slot = e;
    }
    free(j->buckets);
    j->buckets = b;
    j->n_buckets = nb;
}

static void unlink_entry(struct journal *j, struct jentry *e)
{
    struct jentry **p = bucket_of(j, e->id);
    while (*p != e)
        p = &(*p)->hnext;
    *p = e->hnext;
    if (e->prev)
        e->prev->next = e->next;
    else
        j->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        j->tail = e->prev;
    j->total -= e->rec.len;
    j->n--;
    entry_free(e);
}

static int put_id(struct jentry *e, uint32_t pos, int32_t id)
{
    if (pos >= e->ids_cap) {
        uint32_t cap = e->ids_cap ? e->ids_cap * 2 : 64;
        while (cap <= pos)
            cap *= 2;
        int32_t *a = realloc(e->ids, cap * sizeof *a);
        if (!a)
            return RILL_E_NOMEM;
        e->ids = a;
        e->ids_cap = cap;
    }
    /* Positions come in order; a gap (none is expected) repeats the last. */
    for (uint32_t p = e->n_ids; p < pos; p++)
        e->ids[p] = p ? e->ids[p - 1] : 0;
    e->ids[pos] = id;
    if (pos >= e->n_ids)
        e->n_ids = pos + 1;
    return 0;
}

static int append(struct journal *j, struct jentry *e, const void *bytes, size_t len);

/* The gateway's records of the positions just before skip (a failover's):
 * kept as if written here, so that a client behind the gateway when it
 * died, too, still finds them.  Bad ones are skipped. */
static void keep_prior(struct journal *j, struct jentry *e, const struct proto_submit *req)
{
    const unsigned char *p = (const unsigned char *)req->prior.p;
    size_t left = req->prior.len;
    while (p && left >= 4) {
        uint32_t len = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        if (len > left - 4)
            break;
        struct proto_token t;
        if (proto_token_decode(p + 4, len, &t) == 0 && t.req_id == req->id && t.position < e->n_ids &&
            t.token_id == e->ids[t.position] && !(t.flags & PROTO_TOK_LAST) &&
            (!e->rec.n || t.position > e->last_pos) && append(j, e, p + 4, len) == 0)
            e->last_pos = t.position;
        p += 4 + len;
        left -= 4 + len;
    }
}

int journal_open(struct journal *j, const struct proto_submit *req)
{
    if (!j->window_ns)
        return 0;
    if (find(j, req->id))
        return RILL_E_DUPLICATE_ID;
    struct jentry *e = calloc(1, sizeof *e);
    if (!e)
        return RILL_E_NOMEM;
    e->id = req->id;
    struct proto_msg m = {.type = PROTO_SUBMIT};
    m.u.submit = *req;
    m.u.submit.prior = (struct proto_text){0}; /* kept as records below */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    int rc = proto_encode(&m, &sb, NULL, 0);
    if (rc) {
        msgpack_sbuffer_destroy(&sb);
        free(e);
        return rc;
    }
    e->submit = (unsigned char *)sb.data; /* the sbuffer's malloc'ed bytes are ours now */
    e->submit_len = sb.size;
    uint32_t skip = req->skip <= req->n_prompt_tokens ? req->skip : 0;
    for (uint32_t i = 0; i < skip; i++)
        if ((rc = put_id(e, i, req->prompt_tokens[req->n_prompt_tokens - skip + i]))) {
            entry_free(e);
            return rc;
        }
    keep_prior(j, e, req);
    e->prev = j->tail;
    if (j->tail)
        j->tail->next = e;
    else
        j->head = e;
    j->tail = e;
    struct jentry **b = bucket_of(j, e->id);
    e->hnext = *b;
    *b = e;
    if (++j->n > 2 * j->n_buckets)
        grow(j);
    return 0;
}

void journal_accepted(struct journal *j, uint64_t id, uint32_t prompt_tokens)
{
    struct jentry *e = find(j, id);
    if (e) {
        e->accepted = true;
        e->prompt_tokens = prompt_tokens;
    }
}

void journal_drop(struct journal *j, uint64_t id)
{
    struct jentry *e = find(j, id);
    if (e)
        unlink_entry(j, e);
}

/* Drop the older half of e's records. */
static void drop_front(struct journal *j, struct jentry *e)
{
    j->total -= reclog_drop_front(&e->rec, NULL);
}

/* Make room for `need` more bytes in all: finished requests go first. */
static void make_room(struct journal *j, const struct jentry *keep, size_t need)
{
    for (struct jentry *e = j->head, *n; e && j->total + need > j->total_cap; e = n) {
        n = e->next;
        if (e->finished && e != keep)
            unlink_entry(j, e);
    }
}

static int append(struct journal *j, struct jentry *e, const void *bytes, size_t len)
{
    if (len > j->per_cap || len > j->total_cap)
        return RILL_E_TOO_LARGE;
    while (e->rec.n && e->rec.len + len > j->per_cap)
        drop_front(j, e);
    if (j->total + len > j->total_cap)
        make_room(j, e, len);
    while (e->rec.n && j->total + len > j->total_cap)
        drop_front(j, e);
    if (j->total + len > j->total_cap)
        return RILL_E_TOO_LARGE;
    if (reclog_append(&e->rec, bytes, len))
        return RILL_E_NOMEM;
    j->total += len;
    return 0;
}

void journal_record(struct journal *j, const struct proto_token *t, const void *bytes, size_t len, uint64_t now_ns)
{
    struct jentry *e = find(j, t->req_id);
    if (!e)
        return;
    int rc = t->token_id >= 0 ? put_id(e, t->position, t->token_id) : 0;
    if (!rc)
        rc = append(j, e, bytes, len);
    if (rc) {
        /* A gateway that adopts it later gets it from the next record on:
         * a resume before that fails clearly (resume_failed). */
        rlog_warn("request %llu: record at position %u not kept for a restarted gateway: %s",
                  (unsigned long long)t->req_id, t->position, rill_err_name(rc));
        j->total -= e->rec.len;
        reclog_free(&e->rec);
    }
    if (t->flags & PROTO_TOK_LAST) {
        e->finished = true;
        e->end_ns = now_ns;
    }
}

void journal_sweep(struct journal *j, uint64_t now_ns)
{
    for (struct jentry *e = j->head, *n; e; e = n) {
        n = e->next;
        if (e->finished && now_ns > e->end_ns && now_ns - e->end_ns > j->window_ns)
            unlink_entry(j, e);
    }
}

static int replay_one(const struct jentry *e, const struct journal_sink *out)
{
    struct proto_msg m;
    char why[160] = "";
    int rc = proto_decode(e->submit, e->submit_len, &m, why, sizeof why);
    if (rc) {
        rlog_error("request %llu: its kept submit does not decode: %s", (unsigned long long)e->id, why);
        return 0; /* not this one; the others still go */
    }
    /* Run again from here: the output so far is the rest of the prompt. */
    const int32_t *own = m.u.submit.prompt_tokens;
    m.u.submit.prompt_tokens = e->n_ids ? e->ids : NULL;
    m.u.submit.n_prompt_tokens = e->n_ids;
    m.u.submit.skip = e->n_ids;
    rc = out->emit_msg(out->ctx, &m);
    m.u.submit.prompt_tokens = own;
    proto_msg_free(&m);
    if (rc || !e->accepted)
        return rc;
    struct proto_msg a = {.type = PROTO_ACCEPTED};
    a.u.accepted.id = e->id;
    a.u.accepted.prompt_tokens = e->prompt_tokens;
    if ((rc = out->emit_msg(out->ctx, &a)))
        return rc;
    for (uint32_t i = 0; i < e->rec.n; i++) {
        size_t len;
        const unsigned char *r = reclog_get(&e->rec, i, &len);
        if ((rc = out->emit_rec(out->ctx, r, len)))
            return rc;
    }
    return 0;
}

int journal_replay(struct journal *j, const struct journal_sink *out)
{
    for (struct jentry *e = j->head; e; e = e->next) {
        int rc = replay_one(e, out);
        if (rc)
            return rc;
    }
    return 0;
}

uint32_t journal_count(const struct journal *j) { return j->n; }
size_t journal_bytes(const struct journal *j) { return j->total; }
