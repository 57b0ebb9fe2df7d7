/* wstool.c — see wstool.h.  The held tokens are a queue of encoded records
 * (one arena) with the byte range of the turn each covers; the content
 * given back for them goes to a second arena, in order, because the parser
 * decides bytes in the order they came.  Both arenas empty whenever the
 * queue does, so a long turn costs only what is held at once. */
#include "wstool.h"
#include "toolcall.h"
#include "common/err.h"

#include <assert.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct held {
    size_t rec_off;              /* its record in w->rec */
    uint32_t rec_len;
    uint64_t end;                /* the turn's byte after its text */
    size_t c_off;                /* its content in w->content */
    uint32_t c_n;
};

struct wstool {
    struct toolcall *tc;
    uint64_t fed;                /* bytes of the turn fed to the parser */
    struct held *q;
    uint32_t head, n;            /* q[head .. n) are held */
    size_t cap;
    uint32_t cursor;             /* the first held token content may still go to */
    char *rec;
    size_t rec_len, rec_cap;
    char *content;
    size_t content_len, content_cap;
    /* the call being read: its START came, its ARGS pieces follow */
    bool in_call;
    uint32_t call_index;
    char call_id[TOOLCALL_ID_LEN + 1];
    char *name, *args;
    size_t name_n, name_cap, args_n, args_cap;
    const struct wstool_sink *k;
};

/* p with room for `need` items of `size` (doubling; *cap in items).
 * NULL when out of memory (p is unchanged then). */
static void *room(void *p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return p;
    size_t c = *cap ? *cap : 256;
    while (c < need)
        c *= 2;
    void *q = realloc(p, c * size);
    if (q)
        *cap = c;
    return q;
}

static int room_bytes(char **p, size_t *cap, size_t need)
{
    char *q = room(*p, cap, need, 1);
    if (!q)
        return RILL_E_NOMEM;
    *p = q;
    return 0;
}

struct wstool *wstool_new(uint64_t seed)
{
    struct wstool *w = calloc(1, sizeof *w);
    if (!w || !(w->tc = toolcall_new(seed))) {
        free(w);
        return NULL;
    }
    return w;
}

void wstool_free(struct wstool *w)
{
    if (!w)
        return;
    toolcall_free(w->tc);
    free(w->q);
    free(w->rec);
    free(w->content);
    free(w->name);
    free(w->args);
    free(w);
}

uint32_t wstool_calls(const struct wstool *w) { return toolcall_count(w->tc); }

/* Send the held tokens whose every byte is before `upto`. */
static int release(struct wstool *w, uint64_t upto)
{
    while (w->head < w->n && w->q[w->head].end <= upto) {
        const struct held *h = &w->q[w->head];
        struct proto_token t;
        int rc = proto_token_decode(w->rec + h->rec_off, h->rec_len, &t);
        assert(rc == 0); /* encoded here */
        if (rc)
            return RILL_E_INTERNAL;
        t.text = h->c_n ? w->content + h->c_off : "";
        t.text_len = (uint16_t)h->c_n;
        w->head++;
        if ((rc = w->k->token(w->k->ctx, &t)) != 0)
            return rc;
    }
    if (w->head == w->n) /* nothing held: start the arenas again */
        w->head = w->n = w->cursor = 0, w->rec_len = w->content_len = 0;
    return 0;
}

/* The call read so far is whole (its ARGS pieces come right after its
 * START, so anything else means it ended). */
static int end_call(struct wstool *w)
{
    if (!w->in_call)
        return 0;
    w->in_call = false;
    struct wstool_call c = {w->call_index, w->call_id, w->name, w->name_n, w->args ? w->args : "", w->args_n};
    return w->k->call(w->k->ctx, &c);
}

/* Content [at, at + n) of the turn goes to the held tokens it came from. */
static int attribute(struct wstool *w, uint64_t at, const char *s, size_t n)
{
    if (room_bytes(&w->content, &w->content_cap, w->content_len + n))
        return RILL_E_NOMEM;
    uint64_t e = at + n;
    for (uint32_t i = w->cursor; i < w->n && at < e; i++) {
        struct held *h = &w->q[i];
        if (h->end <= at)
            continue;
        uint64_t stop = h->end < e ? h->end : e;
        size_t k = (size_t)(stop - at);
        if (!h->c_n)
            h->c_off = w->content_len;
        memcpy(w->content + w->content_len, s, k);
        w->content_len += k;
        h->c_n += (uint32_t)k;
        s += k, at += k;
        w->cursor = h->end <= at ? i + 1 : i;
    }
    assert(at == e); /* content is bytes that were fed */
    return 0;
}

static int on_event(void *ctx, const struct toolcall_ev *ev)
{
    struct wstool *w = ctx;
    if (ev->kind == TOOLCALL_ARGS) {
        assert(w->in_call && ev->index == w->call_index);
        if (room_bytes(&w->args, &w->args_cap, w->args_n + ev->n + 1))
            return RILL_E_NOMEM;
        memcpy(w->args + w->args_n, ev->text, ev->n);
        w->args_n += ev->n;
        w->args[w->args_n] = 0;
        return 0;
    }
    /* The first byte the parser has not decided is where this event's text
     * (or call) begins: the tokens wholly before it are out first. */
    uint64_t at = w->fed - toolcall_held(w->tc);
    int rc = end_call(w);
    if (!rc)
        rc = release(w, at);
    if (rc)
        return rc;
    if (ev->kind == TOOLCALL_CONTENT)
        return attribute(w, at, ev->text, ev->n);
    if (room_bytes(&w->name, &w->name_cap, ev->n + 1))
        return RILL_E_NOMEM;
    memcpy(w->name, ev->text, ev->n);
    w->name[ev->n] = 0;
    w->name_n = ev->n;
    w->args_n = 0;
    memcpy(w->call_id, ev->id, sizeof w->call_id);
    w->call_index = ev->index;
    w->in_call = true;
    return 0;
}

int wstool_token(struct wstool *w, const struct proto_token *t, const struct wstool_sink *k)
{
    size_t need = proto_token_size(t->n_top, t->text_len);
    struct held *q = room(w->q, &w->cap, (size_t)w->n + 1, sizeof *w->q);
    if (!q)
        return RILL_E_NOMEM;
    w->q = q;
    if (room_bytes(&w->rec, &w->rec_cap, w->rec_len + need))
        return RILL_E_NOMEM;
    int n = proto_token_encode(w->rec + w->rec_len, need, t);
    if (n < 0)
        return n;
    w->q[w->n++] = (struct held){w->rec_len, (uint32_t)n, w->fed + t->text_len, 0, 0};
    w->rec_len += (size_t)n;
    w->fed += t->text_len;
    w->k = k;
    int rc = toolcall_feed(w->tc, t->text, t->text_len, on_event, w);
    if (!rc)
        rc = end_call(w);
    return rc ? rc : release(w, w->fed - toolcall_held(w->tc));
}

int wstool_finish(struct wstool *w, const struct wstool_sink *k)
{
    w->k = k;
    int rc = toolcall_finish(w->tc, on_event, w);
    if (!rc)
        rc = end_call(w);
    assert(rc || toolcall_held(w->tc) == 0);
    return rc ? rc : release(w, w->fed);
}
