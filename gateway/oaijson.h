/* oaijson.h — the OpenAI API's JSON, apart from libwebsockets so that it can
 * be tested and fuzzed alone: request bodies of /v1/completions and
 * /v1/chat/completions parsed and checked into a submit, and the answers
 * encoded (one JSON object, or Server-Sent Events chunks).
 *
 * Requests (unknown fields are ignored, as OpenAI does):
 *   model (any string: rill serves one model), prompt (completions: a
 *   string, or a list of one string), messages (chat: checked by chatmsg.h, kept
 *   as JSON text for the worker's chat template),
 *   max_tokens / max_completion_tokens, temperature, top_p, seed, stop
 *   (string or list), presence_penalty and frequency_penalty (-2..2, over
 *   the output so far, as OpenAI defines them), n (1 only), stream,
 *   stream_options.include_usage,
 *   logprobs (completions: an integer, the alternatives per token; chat:
 *   true/false with top_logprobs), user, and the extensions other servers
 *   take: top_k (-1 or 0: off), min_p, repetition_penalty, ignore_eos, and
 *   the WebSocket's parse_special (completions; default true: control-token
 *   text in the prompt is the control token, as in llama.cpp's server)
 *   Chat: tools (checked by chatmsg_tools, kept as JSON text for the
 *   template) and tool_choice: "auto" (or absent) sends the tools, "none"
 *   drops them; "required" and a named function are refused (param
 *   tool_choice): rill does not constrain sampling, so it cannot force a call.
 *   ignore_eos is accepted as false, echo as false, suffix as empty and
 *   best_of as 1: the worker has none of them, so any other value is
 *   refused by name.
 *   Ranges come from common/sampling.h (the one table).
 *
 * Defaults when a request says nothing: the WebSocket protocol's sampling
 * defaults (proto.h), so the same request gives the same tokens on both;
 * max_tokens 16 for completions (OpenAI's) and PROTO_DEFAULT_MAX_TOKENS
 * for chat, both capped at max_tokens_limit.
 *
 * Errors are rill codes (err.h) with a message and the parameter's name;
 * oaijson_status() maps a code to its HTTP status and OpenAI error type.
 */
#ifndef RILL_OAIJSON_H
#define RILL_OAIJSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/proto.h"
#include "obuf.h"
#include "creq.h"

#define OAIJSON_MODEL_MAX 128
#define OAIJSON_PARAM_MAX 40

enum oaijson_kind { OAIJSON_COMPLETIONS, OAIJSON_CHAT };

struct oaijson_req {
    enum oaijson_kind kind;
    struct proto_submit submit;  /* prompt (completions) on the heap, sampling, stop */
    char *messages;              /* chat: the messages array as JSON text (heap), or NULL */
    uint32_t messages_len;
    char *tools;                 /* chat: the tools as JSON text (heap), or NULL: none (or tool_choice "none") */
    uint32_t tools_len;
    bool stream, include_usage;
    bool logprobs;               /* the answer carries logprobs (submit.top_logprobs alternatives) */
    char model[OAIJSON_MODEL_MAX + 1];
};

/* Parse one request body.  Returns 0 with *out filled (release with
 * oaijson_req_free), or a rill error with `msg` saying why and `param` the
 * field at fault ("" when none).  Codes: RILL_E_BAD_REQUEST, RILL_E_TOO_LARGE
 * (body over max_message_bytes), RILL_E_PROMPT_TOO_LONG, RILL_E_MAX_TOKENS,
 * RILL_E_NOMEM. */
int oaijson_parse(const void *body, size_t len, enum oaijson_kind kind, const struct creq_limits *lim,
                  struct oaijson_req *out, char *param, size_t param_len, char *msg, size_t msg_len);
void oaijson_req_free(struct oaijson_req *r);


/* The HTTP status and OpenAI error type of a rill code, and the code
 * string clients see (OpenAI's where it has one: invalid_api_key,
 * rate_limit_exceeded, context_length_exceeded; rill's wire name else). */
struct oaijson_status {
    unsigned http;
    const char *type;
    const char *code;
};
void oaijson_status(int code, struct oaijson_status *st);

/* {"error":{"message","type","param","code"}} for a rill code; param NULL
 * or "" is null.  Appends to out; RILL_E_NOMEM. */
int oaijson_error(struct obuf *out, int code, const char *param, const char *msg);

/* What every answer of one request shares. */
struct oaijson_head {
    const char *id;              /* "cmpl-…" / "chatcmpl-…" */
    int64_t created;             /* seconds since the epoch */
    const char *model;
    bool chat;
    bool include_usage;          /* streamed chunks carry "usage":null, and a last usage chunk */
};

struct oaijson_usage {
    uint32_t prompt_tokens, completion_tokens;
};

/* One token's logprobs, as the answer shows them.  Alternatives are named
 * by their text when it is the sampled token's, else "token_id:N" (the
 * gateway has no vocabulary, and the worker sends only their ids). */
int oaijson_logprob_item(struct obuf *out, bool chat, bool first, const struct proto_token *t, uint32_t text_offset);

/* Streaming: one SSE event "data: {chunk}\n\n".
 *   role: the chat delta's first chunk ({"role":"assistant","content":""});
 *   text/n: the content piece (chat) or text (completions);
 *   finish: NULL, or the finish reason of the last choice chunk;
 *   lp/lp_n: logprob items (oaijson_logprob_item) for the piece, or NULL. */
int oaijson_chunk(struct obuf *out, const struct oaijson_head *h, bool role, const char *text, size_t n,
                  const char *finish, const char *lp, size_t lp_n);
/* The usage chunk (choices empty), then nothing but [DONE]. */
int oaijson_usage_chunk(struct obuf *out, const struct oaijson_head *h, const struct oaijson_usage *u);
/* "data: [DONE]\n\n". */
int oaijson_done(struct obuf *out);
/* An error inside an event stream: "data: {"error":{...}}\n\n". */
int oaijson_error_event(struct obuf *out, int code, const char *msg);

/* The whole answer of stream:false. */
int oaijson_response(struct obuf *out, const struct oaijson_head *h, const char *text, size_t n,
                     const char *finish, const char *lp, size_t lp_n, const struct oaijson_usage *u);

/* Tool calls (toolcall.h).  Streaming: one chunk whose delta is
 * {"tool_calls":[{index, id, type:"function", function:{name, arguments:""}}]}
 * when id is given (a call's first chunk), else
 * {"tool_calls":[{index, function:{arguments: the piece}}]}. */
int oaijson_tool_chunk(struct obuf *out, const struct oaijson_head *h, uint32_t index, const char *id,
                       const char *name, const char *args, size_t args_n);
/* stream:false: one call {id, type, function:{name, arguments}} appended to
 * out (the caller writes the array's brackets and commas). */
int oaijson_tool_call(struct obuf *out, const char *id, const char *name, const char *args, size_t args_n);
/* The whole answer with message.tool_calls (calls: a JSON array); content
 * is null when text is empty. */
int oaijson_response_tools(struct obuf *out, const struct oaijson_head *h, const char *text, size_t n,
                           const char *finish, const struct oaijson_usage *u, const char *calls, size_t calls_n);

/* GET /v1/models: the one model served. */
int oaijson_models(struct obuf *out, const char *model, int64_t created);
int oaijson_model(struct obuf *out, const char *model, int64_t created);

/* OpenAI's finish_reason for a rill finish: "stop" (stop string or end of
 * sequence), "length"; NULL for the others. */
const char *oaijson_finish(int finish);

/* How many bytes at the end of s[0..n) are the start of a UTF-8 character
 * that continues in the next token: they are held back, so that every
 * piece a client gets is whole text (0..3). */
size_t oaijson_utf8_tail(const char *s, size_t n);

#endif
