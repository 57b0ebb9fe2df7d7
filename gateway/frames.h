/* frames.h — what the gateway sends a client, in both protocols
 * (rill.json.v1 text, rill.msgpack.v1 the same maps in msgpack):
 *
 *   {"type":"hello","server":"rill","protocol":..,"authenticated":b,..}
 *   {"type":"accepted","id":X,"worker":"w0","resume_token":"…"}
 *   {"type":"resumed","id":X,"from":17}
 *   {"type":"token","id":X,"token":{"id":8204,"text":" quantum","position":12,
 *     "latency_ms":38.5,"logprob":-0.52[,"gen_us":..][,"top_logprobs":[..]]}}
 *   {"type":"tokens","id":X,"tokens":[{...},{...}]}     several coalesced
 *   {"type":"tool_call","id":X,"index":0,"call_id":"call_…","name":"get_weather",
 *     "arguments":"{\"city\":\"Paris\"}"}             a whole call (wstool.h)
 *   {"type":"complete","id":X,"finish_reason":"length","summary":{...}}
 *   {"type":"error","id"?:X,"error":{"code":"..","message":"..","recoverable":b}}
 *
 * Pure encoders: each appends one frame (or, for token items, one item) to
 * `out` and returns 0 or RILL_E_NOMEM.  Text that is not UTF-8 (a message
 * quoting a client's bytes, a token cut by a stop string) is sent with
 * U+FFFD in place of the bad bytes in both protocols.
 */
#ifndef RILL_FRAMES_H
#define RILL_FRAMES_H

#include <stdbool.h>
#include <stdint.h>

#include "common/proto.h"
#include "obuf.h"
#include "creq.h"
#include "stream.h"
#include "wstool.h"

struct frames_hello {
    bool authenticated;
    uint32_t max_tokens_limit, max_streams;
};

int frames_hello(struct obuf *out, bool msgpack, const struct frames_hello *h);
int frames_accepted(struct obuf *out, bool msgpack, const struct creq_id *id, const char *worker,
                    const char *resume_token);
int frames_resumed(struct obuf *out, bool msgpack, const struct creq_id *id, uint32_t from);
/* `code` is any rill error; the frame carries its wire code. */
int frames_error(struct obuf *out, bool msgpack, const struct creq_id *id, int code, const char *msg,
                 bool recoverable);
/* A token as one item of a "token"/"tokens" frame, appended to `items`
 * (first: the first item in the buffer, no separator). */
int frames_token_item(struct obuf *items, bool msgpack, bool first, bool timestamps, const struct proto_token *t);
/* The frame of n items: "token" for one, "tokens" for several, so that
 * coalescing costs a memcpy, not a re-encode. */
int frames_tokens(struct obuf *out, bool msgpack, const struct creq_id *id, const struct obuf *items, uint32_t n);
/* A whole tool call of generation `id`: its arguments are a JSON text, sent
 * as a string (OpenAI's shape). */
int frames_tool_call(struct obuf *out, bool msgpack, const struct creq_id *id, const struct wstool_call *c);
int frames_complete(struct obuf *out, bool msgpack, const struct creq_id *id, const char *finish,
                    const struct stream_summary *u);

#endif
