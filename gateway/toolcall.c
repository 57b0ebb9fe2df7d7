/* toolcall.c — see toolcall.h.  One buffer holds what might still be a call;
 * four states say what it might be.  A call is checked by cJSON only once its
 * JSON has closed, so a half-written call is never sent and never lost: it is
 * either a whole call or, unchanged, content. */
#include "toolcall.h"
#include "common/err.h"
#include <assert.h>
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static const char HTAG[] = "<tool_call>";
static const char ETAG[] = "</tool_call>";
static const char PTAG[] = "<|python_tag|>";
#define HTAG_LEN (sizeof HTAG - 1)
#define ETAG_LEN (sizeof ETAG - 1)
#define PTAG_LEN (sizeof PTAG - 1)

enum tc_state {
    TC_START,   /* turn start or after a call: whitespace held, a call may begin */
    TC_TEXT,    /* plain text; only a <tool_call> tag starts a call */
    TC_HERMES,  /* inside <tool_call>, waiting for </tool_call> */
    TC_JSON,    /* inside a bare JSON object (Llama), waiting for its closing brace */
};

struct toolcall {
    enum tc_state st;
    char *buf;
    size_t len, cap;
    size_t at;       /* HERMES: where the tag begins; JSON: where '{' is */
    size_t scanned;  /* bytes of buf already looked at in HERMES/JSON */
    int depth;
    bool in_str, esc;
    uint32_t calls;
    uint64_t rng;
};

struct toolcall *toolcall_new(uint64_t seed)
{
    struct toolcall *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->rng = seed ? seed : 0x9e3779b97f4a7c15ull;
    return t;
}

void toolcall_free(struct toolcall *t)
{
    if (!t)
        return;
    free(t->buf);
    free(t);
}

uint32_t toolcall_count(const struct toolcall *t) { return t->calls; }

size_t toolcall_held(const struct toolcall *t) { return t->len; }

static bool is_ws(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

/* s[0..n) begins with the whole of tag */
static bool starts(const char *s, size_t n, const char *tag, size_t tn) { return n >= tn && memcmp(s, tag, tn) == 0; }

/* s[0..n) is a proper beginning of tag (it may still become it) */
static bool may_become(const char *s, size_t n, const char *tag, size_t tn) { return n < tn && memcmp(s, tag, n) == 0; }

static void drop(struct toolcall *t, size_t n)
{
    assert(n <= t->len);
    memmove(t->buf, t->buf + n, t->len - n);
    t->len -= n;
}

static int content(const char *s, size_t n, toolcall_emit_fn emit, void *ctx)
{
    if (n == 0)
        return 0;
    struct toolcall_ev ev = {.kind = TOOLCALL_CONTENT, .text = s, .n = n};
    return emit(ctx, &ev);
}

/* Release buf[0..n) as content and forget it. */
static int release(struct toolcall *t, size_t n, toolcall_emit_fn emit, void *ctx)
{
    int rc = content(t->buf, n, emit, ctx);
    drop(t, n);
    return rc;
}

static void make_id(struct toolcall *t, char id[TOOLCALL_ID_LEN + 1])
{
    static const char az[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    memcpy(id, "call_", 5);
    for (int i = 5; i < TOOLCALL_ID_LEN; i++) {
        /* xorshift64*: ids need to be distinct, not secret */
        t->rng ^= t->rng >> 12;
        t->rng ^= t->rng << 25;
        t->rng ^= t->rng >> 27;
        id[i] = az[((t->rng * 0x2545F4914F6CDD1Dull) >> 33) % (sizeof az - 1)];
    }
    id[TOOLCALL_ID_LEN] = '\0';
}

/* If s[0..n) is one JSON object with a string "name" (and "arguments" or
 * "parameters"), send it as a call and return 1; 0 when it is not a call;
 * <0 on an error (the emit function's, or no memory). */
static int try_call(struct toolcall *t, const char *s, size_t n, toolcall_emit_fn emit, void *ctx)
{
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithLengthOpts(s, n, &end, false);
    if (!o)
        return 0;
    int rc = 0;
    char *printed = NULL;
    while (end && end < s + n && is_ws(*end))
        end++;
    cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name");
    cJSON *args = cJSON_GetObjectItemCaseSensitive(o, "arguments");
    if (!args)
        args = cJSON_GetObjectItemCaseSensitive(o, "parameters");
    if (end != s + n || !cJSON_IsObject(o) || !cJSON_IsString(name) || !name->valuestring[0])
        goto out;
    const char *a = "{}";
    if (cJSON_IsString(args)) {
        a = args->valuestring;  /* some models write the arguments as a JSON string */
    } else if (args) {
        printed = cJSON_PrintUnformatted(args);
        if (!printed) {
            rc = RILL_E_NOMEM;
            goto out;
        }
        a = printed;
    }
    char id[TOOLCALL_ID_LEN + 1];
    make_id(t, id);
    uint32_t index = t->calls++;
    struct toolcall_ev ev = {.kind = TOOLCALL_START, .text = name->valuestring, .n = strlen(name->valuestring),
                             .index = index, .id = id};
    if ((rc = emit(ctx, &ev)) != 0)
        goto out;
    size_t an = strlen(a);
    for (size_t off = 0; off < an;) {
        size_t k = an - off < TOOLCALL_ARGS_PIECE ? an - off : TOOLCALL_ARGS_PIECE;
        /* never split a UTF-8 character: each piece is text on its own */
        while (off + k < an && k > 1 && ((unsigned char)a[off + k] & 0xC0) == 0x80)
            k--;
        struct toolcall_ev p = {.kind = TOOLCALL_ARGS, .text = a + off, .n = k, .index = index};
        if ((rc = emit(ctx, &p)) != 0)
            goto out;
        off += k;
    }
    rc = 1;
out:
    free(printed);
    cJSON_Delete(o);
    return rc;
}

/* Run the states over what is held until nothing more can be decided. */
static int run(struct toolcall *t, toolcall_emit_fn emit, void *ctx)
{
    int rc;
    for (;;) {
        switch (t->st) {
        case TC_START: {
            size_t i = 0;
            while (i < t->len && (is_ws(t->buf[i]) || (t->calls && t->buf[i] == ';')))
                i++;
            const char *r = t->buf + i;
            size_t rn = t->len - i;
            if (rn == 0)
                return 0;
            if (starts(r, rn, HTAG, HTAG_LEN)) {
                t->st = TC_HERMES, t->at = i, t->scanned = i + HTAG_LEN;
                continue;
            }
            if (starts(r, rn, PTAG, PTAG_LEN)) {
                size_t j = i + PTAG_LEN;
                while (j < t->len && is_ws(t->buf[j]))
                    j++;
                if (j == t->len)
                    return 0;
                if (t->buf[j] != '{') {
                    t->st = TC_TEXT;
                    continue;
                }
                i = j, r = t->buf + i;
            }
            if (*r == '{') {
                t->st = TC_JSON, t->at = i, t->scanned = i, t->depth = 0, t->in_str = t->esc = false;
                continue;
            }
            if (may_become(r, rn, HTAG, HTAG_LEN) || may_become(r, rn, PTAG, PTAG_LEN))
                return 0;
            t->st = TC_TEXT;
            continue;
        }
        case TC_TEXT: {
            const char *p = memmem(t->buf, t->len, HTAG, HTAG_LEN);
            if (p) {
                if ((rc = release(t, (size_t)(p - t->buf), emit, ctx)) != 0)
                    return rc;
                t->st = TC_HERMES, t->at = 0, t->scanned = HTAG_LEN;
                continue;
            }
            size_t keep = HTAG_LEN - 1 < t->len ? HTAG_LEN - 1 : t->len;
            while (keep && !may_become(t->buf + t->len - keep, keep, HTAG, HTAG_LEN))
                keep--;
            return release(t, t->len - keep, emit, ctx);
        }
        case TC_HERMES: {
            size_t from = t->scanned >= t->at + HTAG_LEN + ETAG_LEN ? t->scanned - ETAG_LEN + 1 : t->at + HTAG_LEN;
            const char *p = memmem(t->buf + from, t->len - from, ETAG, ETAG_LEN);
            if (!p) {
                t->scanned = t->len;
                if (t->len - t->at <= TOOLCALL_MAX)
                    return 0;
                t->st = TC_TEXT;  /* too long to be a call: it was text */
                return release(t, t->len, emit, ctx);
            }
            size_t body = t->at + HTAG_LEN, e = (size_t)(p - t->buf);
            rc = try_call(t, t->buf + body, e - body, emit, ctx);
            if (rc < 0)
                return rc;
            if (rc == 1) {
                drop(t, e + ETAG_LEN);
                t->st = TC_START;
            } else {
                if ((rc = release(t, e + ETAG_LEN, emit, ctx)) != 0)
                    return rc;
                t->st = TC_TEXT;
            }
            continue;
        }
        case TC_JSON: {
            size_t e = 0;
            bool closed = false;
            for (size_t i = t->scanned; i < t->len && !closed; i++) {
                char c = t->buf[i];
                if (t->in_str) {
                    if (t->esc)
                        t->esc = false;
                    else if (c == '\\')
                        t->esc = true;
                    else if (c == '"')
                        t->in_str = false;
                } else if (c == '"') {
                    t->in_str = true;
                } else if (c == '{' || c == '[') {
                    t->depth++;
                } else if ((c == '}' || c == ']') && --t->depth == 0) {
                    closed = true, e = i + 1;
                }
            }
            if (!closed) {
                t->scanned = t->len;
                if (t->len - t->at <= TOOLCALL_MAX)
                    return 0;
                t->st = TC_TEXT;
                return release(t, t->len, emit, ctx);
            }
            rc = try_call(t, t->buf + t->at, e - t->at, emit, ctx);
            if (rc < 0)
                return rc;
            if (rc == 1) {
                drop(t, e);
                t->st = TC_START;
            } else {
                if ((rc = release(t, e, emit, ctx)) != 0)
                    return rc;
                t->st = TC_TEXT;
            }
            continue;
        }
        }
    }
}

int toolcall_feed(struct toolcall *t, const char *s, size_t n, toolcall_emit_fn emit, void *ctx)
{
    if (n == 0)
        return 0;
    if (t->len + n > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->len + n)
            cap *= 2;
        char *b = realloc(t->buf, cap);
        if (!b)
            return RILL_E_NOMEM;
        t->buf = b, t->cap = cap;
    }
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    return run(t, emit, ctx);
}

int toolcall_finish(struct toolcall *t, toolcall_emit_fn emit, void *ctx)
{
    int rc = 0;
    bool only_ws = true;
    for (size_t i = 0; i < t->len && only_ws; i++)
        only_ws = is_ws(t->buf[i]) || t->buf[i] == ';';
    if (t->st == TC_START && t->calls && only_ws)
        t->len = 0;  /* the newline between a call and the end of the turn is not content */
    else
        rc = release(t, t->len, emit, ctx);
    t->st = TC_TEXT;
    return rc;
}
