/* toolcall.h — the model's tool calls found in its streamed text, for a
 * request that carried tools.  Pure C (no sockets, no libwebsockets) so that
 * it is tested alone on any split of the text.
 *
 * Formats (the ones the chat templates in shared/data/chat-templates ask for):
 *   Hermes / Qwen:  <tool_call>{"name": "f", "arguments": {...}}</tool_call>,
 *                   any number, anywhere in the turn;
 *   Llama 3.1/3.2/3.3: the turn begins (after optional whitespace, or after
 *                   <|python_tag|>) with {"name": "f", "parameters": {...}};
 *                   more may follow, separated by whitespace or ';'.
 * "arguments" and "parameters" are both accepted in either format.
 *
 * Text is fed as it arrives (token texts, split anywhere).  What cannot be
 * the start of a call leaves at once as content; what might be is held back
 * only while it still might be.  A call is sent when its JSON is complete and
 * valid: first TOOLCALL_START (index, id "call_" + 24 random letters/digits,
 * function name), then the arguments (a JSON text) in TOOLCALL_ARGS pieces.
 * A malformed call — bad JSON, no name, never closed by the end of the turn,
 * or longer than TOOLCALL_MAX bytes — is given back as content, unchanged.
 */
#ifndef RILL_TOOLCALL_H
#define RILL_TOOLCALL_H

#include <stddef.h>
#include <stdint.h>

#define TOOLCALL_MAX (64u * 1024u)   /* one held call, bytes */
#define TOOLCALL_ID_LEN 29           /* "call_" + 24 */
#define TOOLCALL_ARGS_PIECE 64       /* arguments leave in pieces of at most this many bytes */

enum toolcall_kind { TOOLCALL_CONTENT, TOOLCALL_START, TOOLCALL_ARGS };

struct toolcall_ev {
    enum toolcall_kind kind;
    const char *text;            /* CONTENT: the text; ARGS: the piece; START: the name */
    size_t n;
    uint32_t index;              /* START/ARGS: the call's index in the turn, from 0 */
    const char *id;              /* START: the call's id (NUL-terminated) */
};

/* Called for every event, in order; the pointers live until it returns.
 * A non-zero return stops the feed and is returned by it. */
typedef int (*toolcall_emit_fn)(void *ctx, const struct toolcall_ev *ev);

struct toolcall;

/* A parser for one turn; `seed` makes the ids (any value; the gateway gives
 * a random one).  NULL when out of memory.  Free with toolcall_free. */
struct toolcall *toolcall_new(uint64_t seed);
void toolcall_free(struct toolcall *t);

/* Feed the next n bytes of the turn.  0, the emit function's non-zero
 * return, or RILL_E_NOMEM. */
int toolcall_feed(struct toolcall *t, const char *s, size_t n, toolcall_emit_fn emit, void *ctx);

/* The turn has ended: whatever is held leaves as content (a call never
 * closed is text), except whitespace after the last call. */
int toolcall_finish(struct toolcall *t, toolcall_emit_fn emit, void *ctx);

/* How many calls were sent so far (finish_reason "tool_calls" when > 0). */
uint32_t toolcall_count(const struct toolcall *t);

/* Bytes fed and not yet decided: neither given back as content nor taken
 * by a call (or dropped as the whitespace around one).  Decisions are made
 * in the order the bytes came, and a CONTENT event's text always begins at
 * the first undecided byte, so a reader that counts the bytes it fed knows
 * where each piece of content came from: (fed - held) when the event runs. */
size_t toolcall_held(const struct toolcall *t);

#endif
