/* session.h — one client's WebSocket connection: its handshake verdicts,
 * its messages (hello, generate, cancel, subscribe in rill.json.v1 or
 * rill.msgpack.v1), and its generations' output.
 *
 * A generation's messages reach its client in this order: accepted, token
 * frames in position order (for a generation with tools, tool_call frames
 * among them, each before the tokens that wrote its call: wstool.h), then
 * complete or error — and every accepted
 * generation ends with one of those two (cancelled ones with a complete
 * whose finish_reason is "cancelled").  What to say comes from the stream
 * layer (stream.h); this layer encodes it (frames.h) and writes it
 * (writer.h): a connection first writes its queued frames, then its
 * streams' pending tokens round robin, one stream per frame, so no
 * generation starves another; a stream's end goes out only once its tokens
 * have.  Past client_buffer_bytes of output the client gets slow_consumer
 * and is closed; its generations are cancelled.
 *
 * Threads: the lws service thread only.
 */
#ifndef RILL_SESSION_H
#define RILL_SESSION_H

#include <libwebsockets.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/config.h"
#include "limits.h"
#include "metrics.h"
#include "creq.h"
#include "stream.h"
#include "telemetry.h"
#include "transport.h"
#include "writer.h"

/* The gateway-wide state the sessions share; the parts are the server's. */
struct session {
    const struct rill_config *c;
    struct creq_limits lim;
    struct limits *limits;
    struct stream_table *streams;
    struct writer_set *writers;
    struct telemetry *tel;
    struct metrics *m;
    struct transport *tp;
    bool shutting_down;          /* refuse new generations */
    struct stream_events ev;     /* the sessions' stream events */
    struct parked_resume *parked; /* resumes waiting for the workers' replays */
    struct obuf scratch;         /* a token frame being built (one at a time) */
};

struct conn_tools;

/* One connection (lws's per-session user data, zeroed by lws). */
struct conn {
    struct writer w;             /* first: the writer callbacks get &c->w */
    struct session *ss;
    struct lws *wsi;
    bool msgpack;
    bool authed;
    bool established;
    bool counted_ip;
    int verdict;                 /* the handshake's refusal, sent once established (0: none) */
    char ip[48];
    char bucket_key[72];         /* rate limiting: the key's name, or the IP */
    struct stream *streams;
    uint32_t n_streams;
    struct stream *rr;           /* next stream to write, round robin */
    unsigned char *rx;           /* a message being assembled from fragments */
    size_t rx_len, rx_cap;
    bool rx_discard;             /* the message is over the cap: skip to its end */
    uint64_t next_auto_id;
    bool subscribed;
    uint32_t n_parked;           /* its resumes waiting in session.parked */
    bool closed_by_client;       /* a close frame with 1000 came: the client is done */
    struct conn_tools *tools;    /* the tool-call reading of its generations with tools (session.c) */
};

void session_init(struct session *ss, const struct rill_config *c, struct limits *limits,
                  struct stream_table *streams, struct writer_set *writers, struct telemetry *tel,
                  struct metrics *m, struct transport *tp);
/* The callbacks the writers call into. */
void session_writer_cb(struct session *ss, struct writer_cb *cb);

/* The handshake (FILTER_PROTOCOL_CONNECTION): headers are only there now.
 * -1: not our WebSocket path (lws drops it); 0 otherwise (a refusal is
 * remembered and sent once established). */
int session_handshake(struct session *ss, struct conn *c, struct lws *wsi);
void session_established(struct conn *c, struct lws *wsi, bool msgpack);
/* A fragment of a client message. */
void session_receive(struct conn *c, const void *in, size_t len);
/* SERVER_WRITEABLE: -1 closes the connection. */
int session_writable(struct conn *c);
/* WS_PEER_INITIATED_CLOSE: the close frame's payload (status, reason). */
void session_peer_close(struct conn *c, const void *in, size_t len);
void session_closed(struct conn *c);
/* Periodically: answer the resumes that waited for the workers to replay
 * what a previous gateway process left (transport_adopting). */
void session_tick(struct session *ss, uint64_t now_ns);
/* Free what waits (at exit). */
void session_fini(struct session *ss);

#endif
