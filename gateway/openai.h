/* openai.h — the OpenAI-compatible HTTP API on the gateway's port:
 *
 *   GET  /v1/models               the one model served
 *   POST /v1/completions          a prompt
 *   POST /v1/chat/completions     messages, rendered by the worker with the model's chat template
 *
 * Each POST is one generation, run as a stream (stream.h) beside the
 * WebSocket sessions, with the same API keys (Authorization: Bearer, or
 * ?key=), rate limits, per-IP connection limit, /metrics counters and
 * telemetry.  The body is collected up to max_message_bytes (past it the
 * rest is read and dropped, then 413: answering before the body is read
 * would reset the connection under a client still sending).  Bodies and
 * answers are oaijson.h's.
 *
 * stream:false answers one JSON object (Content-Length, keep-alive).
 * stream:true answers Server-Sent Events once the worker has accepted the
 * request (an earlier refusal is an HTTP error with OpenAI's error body):
 * chunks with choices[].delta (the role first, then content pieces), the
 * finish_reason on the last choice chunk, the usage chunk when
 * stream_options.include_usage, then "data: [DONE]".  The event stream is
 * framed by closing the connection (lws's framing for a body of unknown
 * length on HTTP/1.1).  A piece never ends inside a UTF-8 character: its
 * last bytes wait for the next token.  Output is written from
 * LWS_CALLBACK_HTTP_WRITEABLE, one lws_write per callback; a client that
 * lets more than client_buffer_bytes pile up is cut off as a slow consumer
 * (its generation cancelled), as a WebSocket client is.
 *
 * The client closing its connection (LWS_CALLBACK_CLOSED_HTTP) releases
 * the stream, which cancels the generation at its worker.
 *
 * Per-request state is on the heap, found through the wsi's opaque user
 * data (lws_set_opaque_user_data), so the client protocols' per-session
 * size (struct conn) is not involved.
 *
 * Threads: the lws service thread only.
 */
#ifndef RILL_OPENAI_H
#define RILL_OPENAI_H

#include <libwebsockets.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/config.h"
#include "limits.h"
#include "metrics.h"
#include "oaijson.h"
#include "creq.h"
#include "stream.h"
#include "telemetry.h"
#include "transport.h"

struct openai_req;

struct openai {
    const struct rill_config *c;
    struct creq_limits lim;
    struct limits *limits;
    struct stream_table *streams;
    struct telemetry *tel;
    struct metrics *m;
    struct transport *tp;
    const bool *shutting_down;   /* the server's drain flag */
    struct stream_events ev;
    struct openai_req *reqs;     /* every live request */
    char model[OAIJSON_MODEL_MAX + 1];
    int64_t created;
    uint32_t epoch;
    uint64_t next_id;
};

void openai_init(struct openai *oa, const struct rill_config *c, struct limits *limits, struct stream_table *streams,
                 struct telemetry *tel, struct metrics *m, struct transport *tp, const bool *shutting_down,
                 uint32_t epoch);

/* Whether this lws event is the API's: an HTTP request under /v1, or an
 * event of a connection carrying one of its requests. */
bool openai_takes(struct lws *wsi, enum lws_callback_reasons reason);
/* LWS_CALLBACK_HTTP, _HTTP_BODY, _HTTP_BODY_COMPLETION, _HTTP_WRITEABLE,
 * _CLOSED_HTTP for such a connection.  Returns what the lws callback returns. */
int openai_callback(struct openai *oa, struct lws *wsi, enum lws_callback_reasons reason, void *in, size_t len);
/* A message record from a worker (before the stream layer sees it): the
 * accepted message's prompt length, for usage. */
void openai_on_msg(struct openai *oa, const struct proto_msg *m);

#endif
