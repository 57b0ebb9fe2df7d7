/* wstool.h — the tool calls of a WebSocket generation that has tools: its
 * tokens go through the tool-call parser (toolcall.h) and come out again
 * as the client gets them, tokens and calls in one order.
 *
 * Every token still comes out, in position order, with its position, id,
 * logprob and latency: positions stay contiguous, so "the last position I
 * got, plus one" stays the place to resume from.  Its text becomes the part
 * of its own text that is content; bytes that went into a call (and the
 * whitespace around a call) are not sent again as text.  A token comes out
 * once every byte of it is decided, so text the parser holds back (it may
 * still become a call) holds its tokens back with it.  A call comes out
 * whole, when its JSON has closed and parsed, before the tokens whose bytes
 * it took.  A malformed call comes out as the unchanged text of its tokens.
 *
 * The output is a function of (seed, the tokens, whether the turn ended):
 * a resume rebuilds it by feeding the kept tokens again from position 0.
 *
 * Pure C (no sockets, no libwebsockets): tested alone in
 * tests/unit/test_wstool.c.
 */
#ifndef RILL_WSTOOL_H
#define RILL_WSTOOL_H

#include <stddef.h>
#include <stdint.h>

#include "common/proto.h"

struct wstool_call {
    uint32_t index;              /* from 0 in the turn */
    const char *id;              /* "call_" + 24 letters/digits, NUL-terminated */
    const char *name;
    size_t name_n;
    const char *args;            /* the arguments: a JSON text, whole */
    size_t args_n;
};

/* Where the output goes.  The pointers live until the function returns; a
 * non-zero return stops the feed and is returned by it.  Neither may free
 * the wstool it is called from. */
struct wstool_sink {
    void *ctx;
    /* A token, its text (t->text, t->text_len) replaced by its content. */
    int (*token)(void *ctx, const struct proto_token *t);
    int (*call)(void *ctx, const struct wstool_call *c);
};

struct wstool;

/* `seed` makes the call ids (the same seed, the same ids).  NULL when out
 * of memory.  Free with wstool_free. */
struct wstool *wstool_new(uint64_t seed);
void wstool_free(struct wstool *w);

/* The next token (position order).  0, the sink's non-zero return, or
 * RILL_E_NOMEM. */
int wstool_token(struct wstool *w, const struct proto_token *t, const struct wstool_sink *k);

/* The turn has ended (however it ended): what is held is decided (a call
 * never closed is text) and every token still held comes out. */
int wstool_finish(struct wstool *w, const struct wstool_sink *k);

/* Calls sent so far: a turn that ended by itself after one has the
 * finish_reason "tool_calls". */
uint32_t wstool_calls(const struct wstool *w);

#endif
