/* gw.h — the gateway's state, shared by its parts (internal to gateway/).
 *
 * Threads: everything here belongs to the libwebsockets service thread,
 * except each worker's ring-reader thread, which only waits on its ring's
 * futex and wakes the service thread (lws_cancel_service) through the
 * atomic flags marked below.  So the token path — ring record to WebSocket
 * frame — runs without locks.
 *
 * Lifetimes: a connection owns its streams (generations); a stream is in the
 * request-id map from submit until its terminal message is queued or its
 * connection closes.  Records for ids not in the map (a stream its client
 * abandoned) are dropped.
 */
#ifndef RILL_GW_H
#define RILL_GW_H

#include <libwebsockets.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/config.h"
#include "common/err.h"
#include "common/hist.h"
#include "common/proto.h"
#include "common/ring.h"
#include "common/zsock.h"
#include "request.h"
#include "transport.h"


struct gw;
struct conn;

/* A growable byte buffer with LWS_PRE bytes of headroom for lws_write(). */
struct obuf {
    unsigned char *p;   /* p[0 .. LWS_PRE) is headroom; data at p + LWS_PRE */
    size_t len, cap;    /* len, cap: bytes of data */
};
int obuf_reserve(struct obuf *b, size_t more);
int obuf_put(struct obuf *b, const void *data, size_t n);
void obuf_free(struct obuf *b);
static inline unsigned char *obuf_data(const struct obuf *b) { return b->p + LWS_PRE; }

/* A frame ready to write (owns its buffer). */
struct frame {
    struct frame *next;
    struct obuf buf;
    bool binary;
};

enum stream_state { ST_SUBMITTED, ST_RUNNING, ST_DONE };

struct stream {
    struct stream *next;         /* in the connection's list */
    struct conn *conn;
    uint64_t req_id;             /* the gateway's id, unique in this process */
    struct creq_id cid;          /* the client's id */
    int worker;                  /* index into gw->workers, -1 while unrouted */
    uint64_t tried;              /* workers that refused it (bit per index) */
    int refusal;                 /* the last refusal's code (0: none) */
    struct proto_submit submit;  /* kept until accepted, to re-route (owns prompt) */
    enum stream_state state;
    bool timestamps;             /* token items carry gen_us */
    /* tokens received, not yet framed (encoded items for the client) */
    struct obuf pending;
    uint32_t n_pending;
    uint64_t *pend_gen_ns;       /* generation time of each pending token */
    uint32_t pend_cap;
    uint32_t next_pos;           /* next position expected */
    /* the terminal message, queued after the pending tokens */
    bool term;
    int term_code;               /* 0: complete */
    bool term_final;             /* the error is not recoverable whatever its code says */
    int finish;                  /* enum proto_finish */
    char term_msg[160];
    /* for the summary */
    uint64_t t_submit_ns, t_first_ns, t_last_ns;
    uint32_t n_tokens;
    float *lat_ms;               /* per token, as the worker measured */
    uint32_t lat_cap;
    double lat_sum_ms;
    uint32_t max_mem_mb;
    uint16_t batch_val[8];       /* most common batch size: a small tally */
    uint32_t batch_cnt[8];
};

struct conn {
    struct lws *wsi;
    struct gw *gw;
    bool msgpack;
    bool authed;
    bool closing;                /* close after the queue drains */
    bool counted_ip;
    char ip[48];
    char bucket_key[72];         /* rate limiting: the key's hash, or the IP */
    /* output */
    struct frame *q_head, *q_tail;
    size_t queued_bytes;         /* queued frames + pending token bytes */
    struct stream *streams;
    uint32_t n_streams;
    struct stream *rr;           /* next stream to write, round robin */
    /* input: a message being assembled from fragments */
    unsigned char *rx;
    size_t rx_len, rx_cap;
    bool rx_discard;             /* the message is over the cap: skip to its end */
    /* network adaptation */
    uint64_t rtt_checked_ns;     /* when rtt_us was last read */
    uint32_t rtt_us;             /* the kernel's smoothed round trip (TCP_INFO) */
    uint64_t hold_until_ns;      /* coalescing: do not write tokens before */
    bool held;                   /* in the gateway's held list */
    struct conn *held_prev, *held_next;
    bool deflate;                /* the client offered permessage-deflate (lws accepts it) */
    bool dirty;                  /* in the gateway's list of connections to write after a ring batch */
    struct conn *dirty_next;
    uint64_t next_auto_id;
    /* telemetry subscription */
    bool subscribed;
    struct conn *sub_prev, *sub_next;
};


/* Token bucket per API key (or per IP when there are no keys). */
struct bucket {
    char key[72];
    double tokens;
    uint64_t t_ns;
};

struct ip_count {
    char ip[48];
    uint32_t n;
};

struct gw_metrics {
    uint64_t requests, requests_ok;
    uint64_t tokens, frames, coalesced_tokens, bytes_out, bytes_in;
    uint64_t connections_total;
    uint64_t errors[RILL_ERR_COUNT];
    uint64_t slow_closed;
    uint64_t http_refused;       /* requests and upgrades refused (Host, subprotocol) */
    struct hist ttft_us;         /* submit -> first token at the gateway */
    struct hist itl_us;          /* ring publish -> frame written (delivery) */
    struct hist gen_itl_us;      /* between tokens at the worker */
};

/* The telemetry stream's state: windows of the last second, and the
 * counters as they were at the last snapshot (for per-second rates). */
struct gw_tel {
    struct hist ttft_us, itl_us, gen_itl_us;
    struct gw_metrics prev;      /* counters only (histograms unused) */
    uint64_t prev_ns, next_ns;
    uint64_t rng;                /* sampling of per-token records */
    struct conn *subs;           /* subscribed connections */
};

struct gw {
    const struct rill_config *c;
    struct lws_context *ctx;
    struct lws_vhost *vh;
    struct creq_limits lim;
    char host[128];
    int port;
    struct transport tp;         /* the workers and the supervisor (transport.h) */
    bool shutting_down;          /* refuse new generations */
    uint64_t drain_deadline_ns;  /* while draining: stop by then at the latest */
    volatile bool stop;          /* leave the service loop */
    bool evlib;                  /* lws runs libev (epoll) rather than poll() */
    bool destroying;             /* the context is being destroyed from its tick */
    int signals_handled;
    uint64_t stop_at_ns;         /* drained: stop once the last frames had time to go */
    uint64_t last_trim_ns;       /* malloc_trim after bursts */
    bool busy_since_trim;
    /* request-id map: open addressing, power-of-two size */
    struct stream **map;
    uint32_t map_cap, map_used, map_tombs;
    uint64_t next_req_id;
    /* limits */
    char **keys;
    size_t n_keys;
    char **origins;
    size_t n_origins;
    bool any_origin;
    char **hosts;                /* Host names clients may use (empty: any) */
    size_t n_hosts;
    bool any_host;
    struct bucket *buckets;
    size_t n_buckets, cap_buckets;
    struct ip_count *ips;
    size_t n_ips, cap_ips;
    uint32_t n_conns;
    /* telemetry */
    struct gw_metrics m;
    struct gw_tel tel;
    /* connections holding token frames to coalesce them (session.c) */
    struct conn *held;
    /* connections with new output from the ring batch being read (session.c) */
    struct conn *dirty, *dirty_tail;
    lws_sorted_usec_list_t hold_sul;
    bool hold_sul_armed;
    /* the supervisor's latest figures (its stats message), owned copies */
    char *sup_prom, *sup_json;
    size_t sup_prom_len, sup_json_len;
    uint64_t sup_stats_ns;       /* when they came */
    uint64_t started_ns;
};

/* Refuse new generations, finish the running ones, then stop (server.c). */
void gw_begin_drain(struct gw *g, const char *why);

/* --- map (gateway/gw.c) --- */
int gw_map_put(struct gw *g, struct stream *s);
struct stream *gw_map_get(const struct gw *g, uint64_t req_id);
void gw_map_del(struct gw *g, uint64_t req_id);

/* --- output (gateway/frames.c) --- */
/* Queue a frame (taking over `body`) and ask lws for a writable callback.
 * `force` queues even past the connection's buffer bound (errors). */
int conn_queue(struct conn *c, struct obuf *body, bool force);
void frame_free(struct frame *f);
void conn_send_error(struct conn *c, const struct creq_id *id, int code, const char *msg);
/* The same with the recoverable flag decided by the caller (no_worker is
 * recoverable only while a worker can come back). */
void conn_send_error_r(struct conn *c, const struct creq_id *id, int code, const char *msg, bool recoverable);
void conn_send_accepted(struct conn *c, const struct creq_id *id, const char *worker);
void conn_send_hello(struct conn *c);
/* Encode a token record as one item of the stream's protocol onto its
 * pending buffer. */
int stream_add_token(struct stream *s, const struct proto_token *t);
/* The frame carrying every pending token of s ("token" for one, "tokens"
 * for several) into out; resets the pending buffer. */
int stream_tokens_frame(struct stream *s, struct obuf *out);
/* The "complete" frame of s, with its summary (an error ending goes out
 * through conn_send_error instead). */
int stream_terminal_frame(struct stream *s, struct obuf *out);

/* --- streams (gateway/session.c) --- */
void session_on_message(struct conn *c, const unsigned char *buf, size_t len, bool binary);
void session_on_token(struct gw *g, const struct proto_token *t, uint64_t now_ns);
void session_on_worker_reply(struct gw *g, int worker, struct proto_msg *m);
void session_worker_lost(struct gw *g, int worker);
void session_close_conn(struct conn *c);
void session_end_stream(struct stream *s, int code, int finish, const char *msg);
void stream_free(struct stream *s);
int session_writable(struct conn *c);
void session_fail_slow(struct conn *c);
/* Release the holds that have expired (the gateway's hold timer). */
void session_release_holds(struct gw *g);
/* Write what the last ring batch gave each connection: directly when its
 * socket has room and nothing is buffered (one send, no epoll round trip),
 * else through lws's writable callback. */
void session_flush_writes(struct gw *g);

/* --- telemetry (gateway/telemetry.c) --- */
void telemetry_init(struct gw *g);
void telemetry_subscribe(struct conn *c, bool on);
/* Send a snapshot to subscribers if a second has passed. */
void telemetry_tick(struct gw *g, uint64_t now_ns);
/* Whether this token's per-token record is kept (sampling_rate; telemetry
 * off keeps none).  Counters never go through this. */
bool telemetry_sample(struct gw *g);
/* Record a token's latencies (cumulative and window histograms). */
void telemetry_token(struct gw *g, uint64_t gen_itl_us);
void telemetry_delivery(struct gw *g, uint64_t delivery_us);
void telemetry_ttft(struct gw *g, uint64_t ttft_us);

/* --- http (gateway/http.c) --- */
int http_serve(struct lws *wsi, struct gw *g, const char *path);
/* The API key a request carries (Authorization: Bearer, or ?key=) into
 * key; false when it carries none. */
bool http_request_key(struct lws *wsi, char *key, size_t n);
void http_render_metrics(struct gw *g, void *prom_buf);

/* --- limits (gateway/limits.c) --- */
int limits_init(struct gw *g);
void limits_fini(struct gw *g);
bool limits_key_ok(const struct gw *g, const char *key);
bool limits_origin_ok(const struct gw *g, const char *origin, const char *host);
/* The Host header names this gateway (allowed_hosts, or the loopback names
 * by default when bound to loopback). */
bool limits_host_ok(const struct gw *g, const char *host);
bool limits_is_loopback(const char *host);
bool limits_ip_acquire(struct gw *g, const char *ip);
void limits_ip_release(struct gw *g, const char *ip);
/* Take one token from the bucket of `key`; false when empty (rate limited). */
bool limits_rate_ok(struct gw *g, const char *key, uint64_t now_ns);
/* Forget buckets that have refilled (their state is the default again). */
void limits_prune(struct gw *g, uint64_t now_ns);
/* A short non-reversible name for a key, for buckets and logs. */
void limits_key_name(const char *key, char *out, size_t n);

#endif
