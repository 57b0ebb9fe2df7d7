/* server.c — the gateway process: one lws context serving HTTP and
 * WebSocket on one port, and the wiring of its layers (bottom to top):
 *
 *   transport  ring readers, ZeroMQ dealers, the control plane (transport.h)
 *   stream     each generation's life (stream.h)
 *   writer     frames to a client, direct or from lws's writable callback (writer.h)
 *   frames     the protocol encoders (frames.h)
 *   session    a client connection and its messages (session.h)
 *   http       /health, /ready, /metrics (http.h); limits, telemetry
 *
 * This file owns every part (struct server), routes lws events to them, runs
 * the tick (signals, drain, telemetry, rate-limit pruning), and tears all
 * down in one place.
 */
#include "server.h"
#include "http.h"
#include "limits.h"
#include "metrics.h"
#include "openai.h"
#include "session.h"
#include "stream.h"
#include "telemetry.h"
#include "transport.h"
#include "writer.h"
#include "wsconf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/rundir.h"

#include <errno.h>
#include <malloc.h>
#include <netdb.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

struct server {
    const struct rill_config *c;
    struct lws_context *ctx;
    struct lws_vhost *vh;
    char host[128];
    int port;
    struct metrics m;
    struct limits limits;
    struct transport tp;
    struct stream_table streams;
    struct writer_set writers;
    struct telemetry tel;
    struct session ss;
    struct openai oa;            /* the OpenAI-compatible HTTP API (/v1) */
    bool limits_up, transport_up;
    uint64_t drain_deadline_ns;  /* while draining: stop by then at the latest */
    volatile bool stop;          /* leave the service loop */
    bool evlib;                  /* lws runs libev (epoll) rather than poll() */
    bool destroying;             /* the context is being destroyed from its tick */
    int signals_handled;
    uint64_t stop_at_ns;         /* drained: stop once the last frames had time to go */
    uint64_t last_trim_ns;       /* malloc_trim after bursts */
    bool busy_since_trim;
    uint32_t used_at_trim;       /* streams in the table at the last trim */
    /* the supervisor's latest figures (its stats message), owned copies */
    char *sup_prom, *sup_json;
    size_t sup_prom_len, sup_json_len;
    uint64_t sup_stats_ns;
    uint64_t started_ns;
};

enum { PROTO_ID_JSON = 0, PROTO_ID_MSGPACK = 1, PROTO_ID_ZMQ = 2 };

static const struct lws_protocols protocols[3];

static volatile sig_atomic_t signals_seen;
static struct lws_context *signal_ctx;

/* libev's signal watcher (lws installs it): the same as our handler. */
static void on_evlib_signal(void *handle, int sig)
{
    (void)handle;
    (void)sig;
    signals_seen++;
}

/* The supervisor died: drain (a flag, since the kernel may send the
 * parent-death signal more than once; see worker/serve.c). */
static volatile sig_atomic_t parent_gone;

static void on_parent_gone(int sig)
{
    (void)sig;
    parent_gone = 1;
    if (signal_ctx)
        lws_cancel_service(signal_ctx);
}

static void on_signal(int sig)
{
    (void)sig;
    signals_seen++;
    if (signal_ctx)
        lws_cancel_service(signal_ctx);
}

/* --- connection set-up ------------------------------------------------------------------------ */

/* Refuse an HTTP request (or upgrade) with `status` and a one-line reason.
 * Returns what the lws callback should return. */
static int refuse_http(struct lws *wsi, struct server *g, unsigned status, const char *why)
{
    rlog_debug("refused an HTTP request with %u: %s", status, why);
    g->m.http_refused++;
    lws_return_http_status(wsi, status, why);
    return 1;
}

/* Every HTTP request and upgrade goes through here first: a Host this
 * gateway does not answer to (DNS rebinding) gets 403 with a reason. */
static bool host_refused(struct lws *wsi, struct server *g, char *why, size_t n)
{
    bool present;
    char *host = http_header_dup(wsi, WSI_TOKEN_HOST, &present);
    bool ok = limits_host_ok(&g->limits, host);
    if (!ok)
        snprintf(why, n, "%s: this server answers only to the host names in allowed_hosts",
                 present ? "Host header not allowed" : "Host header missing");
    free(host);
    return !ok;
}

static int on_filter_http(struct lws *wsi, struct server *g)
{
    char why[160];
    if (host_refused(wsi, g, why, sizeof why)) {
        refuse_http(wsi, g, HTTP_STATUS_FORBIDDEN, why);
        return -1;
    }
    return 0;
}

static bool is_client_protocol(const char *name, size_t n)
{
    for (const struct lws_protocols *p = protocols; p->name; p++)
        if (strlen(p->name) == n && !memcmp(p->name, name, n))
            return true;
    return false;
}

/* RFC 6455 4.2.2: the server picks one of the subprotocols a client offers,
 * or answers without one.  lws drops the TCP connection when it knows none
 * of them, which tells a client nothing: answer 400 saying what we speak. */
static int on_confirm_upgrade(struct lws *wsi, struct server *g)
{
    char why[200];
    if (host_refused(wsi, g, why, sizeof why))
        return refuse_http(wsi, g, HTTP_STATUS_FORBIDDEN, why);
    bool present;
    char *offer = http_header_dup(wsi, WSI_TOKEN_PROTOCOL, &present);
    if (!present)
        return 0; /* none offered: rill.json.v1 */
    bool ok = false;
    for (const char *p = offer ? offer : ""; *p && !ok;) {
        p += strspn(p, " \t,");
        size_t len = strcspn(p, ",");
        size_t tl = len;
        while (tl && (p[tl - 1] == ' ' || p[tl - 1] == '\t'))
            tl--;
        ok = tl && is_client_protocol(p, tl);
        p += len;
    }
    free(offer);
    if (ok)
        return 0;
    return refuse_http(wsi, g, HTTP_STATUS_BAD_REQUEST,
                       "unsupported WebSocket subprotocol: this server speaks rill.json.v1 and rill.msgpack.v1");
}

/* The supervisor's JSON figures, when fresh enough to show. */
static const char *fresh_sup_json(const struct server *g, size_t *len)
{
    if (!g->sup_json_len || clock_ns() - g->sup_stats_ns > 5000000000ull)
        return NULL;
    *len = g->sup_json_len;
    return g->sup_json;
}

static void http_view_of(const struct server *g, struct http_view *v)
{
    *v = (struct http_view){.m = &g->m,
                            .lim = &g->limits,
                            .workers_ready = transport_ready(&g->tp),
                            .connections = g->limits.n_conns,
                            .active_streams = stream_table_active(&g->streams),
                            .resumable_streams = g->streams.detached,
                            .failovers = g->streams.failovers,
                            .shutting_down = g->ss.shutting_down,
                            .sup_prom = g->sup_prom,
                            .sup_prom_len = g->sup_prom_len,
                            .started_ns = g->started_ns};
}

static void gauges_of(const struct server *g, struct telemetry_gauges *t)
{
    *t = (struct telemetry_gauges){.active_streams = stream_table_active(&g->streams),
                                   .connections = g->limits.n_conns,
                                   .workers_ready = transport_ready(&g->tp)};
    t->supervisor_json = fresh_sup_json(g, &t->supervisor_json_len);
}

static int on_lws(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    int wsc = wsconf_callback(wsi, reason, user, in, len); /* RFC 6455 rules lws leaves to us */
    if (wsc != WSCONF_GO_ON)
        return wsc;
    struct lws_context *ctx = lws_get_context(wsi);
    struct server *g = ctx ? lws_context_user(ctx) : NULL;
    const struct lws_protocols *proto = lws_get_protocol(wsi);
    struct conn *c = user;
    if (!g)
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    if (openai_takes(wsi, reason))
        return openai_callback(&g->oa, wsi, reason, in, len);
    switch (reason) {
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        return on_confirm_upgrade(wsi, g);
    case LWS_CALLBACK_FILTER_HTTP_CONNECTION:
        return on_filter_http(wsi, g);
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        /* Only the client protocols carry a struct conn (asserted: the
         * internal vhost never listens). */
        if (!c || !proto || (proto->id != PROTO_ID_JSON && proto->id != PROTO_ID_MSGPACK))
            return -1;
        return session_handshake(&g->ss, c, wsi);
    case LWS_CALLBACK_ESTABLISHED:
        session_established(c, wsi, proto && proto->id == PROTO_ID_MSGPACK);
        return 0;
    case LWS_CALLBACK_RECEIVE:
        session_receive(c, in, len);
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE: {
        int rc = session_writable(c);
        if (rc < 0)
            lws_close_reason(wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION, NULL, 0);
        return rc;
    }
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        session_peer_close(c, in, len);
        return 0;
    case LWS_CALLBACK_CLOSED:
        session_closed(c);
        return 0;
    case LWS_CALLBACK_HTTP: {
        struct http_view v;
        http_view_of(g, &v);
        return http_serve(wsi, &v);
    }
    case LWS_CALLBACK_ADD_HEADERS: {
        /* CORS for the static pages: only for explicitly allowed origins. */
        struct lws_process_html_args *args = in;
        bool has_origin;
        char *origin = g->limits.n_origins ? http_header_dup(wsi, WSI_TOKEN_ORIGIN, &has_origin) : NULL;
        if (origin && limits_origin_ok(&g->limits, origin, NULL)) {
            unsigned char *p = (unsigned char *)args->p, *end = p + args->max_len;
            if (!lws_add_http_header_by_name(wsi, (const unsigned char *)"access-control-allow-origin:",
                                             (const unsigned char *)origin, (int)strlen(origin), &p, end)) {
                args->max_len -= (int)(p - (unsigned char *)args->p);
                args->p = (char *)p;
            }
        }
        free(origin);
        return 0;
    }
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        if (proto && proto->id == PROTO_ID_JSON)
            transport_poll_rings(&g->tp);
        return 0;
    case LWS_CALLBACK_RAW_RX_FILE:
        transport_on_fd(&g->tp, wsi);
        return 0;
    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

/* Refuse new generations, finish the running ones, then stop. */
static void begin_drain(struct server *g, const char *why)
{
    if (g->ss.shutting_down)
        return;
    rlog_info("draining (%s): refusing new generations, finishing running ones", why);
    g->ss.shutting_down = true;
    g->drain_deadline_ns = clock_ns() + (uint64_t)g->c->drain_timeout_s * 1000000000ull;
    lws_cancel_service(g->ctx);
}

/* --- the server ----------------------------------------------------------------------------------- */

/* What a client may ask for, and nothing else: lws selects a subprotocol by
 * name from the listening vhost's table, so the internal one (the ZeroMQ
 * descriptors adopted into the loop) lives on a vhost that does not listen.
 * A client that could select it got a connection without per-connection
 * state and crashed the gateway before any key check. */
static const struct lws_protocols protocols[3] = {
    {"rill.json.v1", on_lws, sizeof(struct conn), 4096, PROTO_ID_JSON, NULL, 0},
    {"rill.msgpack.v1", on_lws, sizeof(struct conn), 4096, PROTO_ID_MSGPACK, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0}};

static const struct lws_protocols internal_protocols[] = {
    {TRANSPORT_LWS_PROTOCOL, on_lws, 0, 0, PROTO_ID_ZMQ, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0}};

/* permessage-deflate, offered with small windows: the default window and
 * memory level cost ~300 KB per connection, which thousands of streams
 * cannot afford; token frames are small anyway. */
static const struct lws_extension extensions[] = {
    {"permessage-deflate", lws_extension_callback_pm_deflate,
     "permessage-deflate; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits"},
    {NULL, NULL, NULL}};

struct tick {
    lws_sorted_usec_list_t sul;
    struct server *g;
};

/* Signals, drains and shutdowns, decided in the loop (with libev the whole
 * loop runs inside one lws_service() call, so there is no outer loop to
 * look at flags between calls). */
static void check_stop(struct server *g, uint64_t now)
{
    if (parent_gone && !g->ss.shutting_down)
        begin_drain(g, "the supervisor is gone");
    if (signals_seen > g->signals_handled) {
        g->signals_handled = signals_seen;
        if (g->signals_handled == 1) {
            begin_drain(g, "signal");
        } else {
            rlog_info("second signal: stopping now");
            g->stop = true;
        }
    }
    if (g->ss.shutting_down && !g->stop_at_ns && (stream_table_active(&g->streams) == 0 || now > g->drain_deadline_ns))
        g->stop_at_ns = now + 200000000ull; /* let the last frames go out */
    if (g->stop_at_ns && now >= g->stop_at_ns)
        g->stop = true;
}

static void on_tick(lws_sorted_usec_list_t *sul)
{
    struct tick *t = lws_container_of(sul, struct tick, sul);
    uint64_t now = clock_ns();
    check_stop(t->g, now);
    if (t->g->stop) {
        if (t->g->evlib && !t->g->destroying) {
            t->g->destroying = true;
            writer_set_stop(&t->g->writers);
            lws_context_destroy(t->g->ctx); /* ends the libev loop; finished after it returns */
        }
        return;
    }
    transport_tick(&t->g->tp, now);
    stream_table_tick(&t->g->streams, clock_ns()); /* after the transport's news, which may move streams */
    session_tick(&t->g->ss, now);
    struct telemetry_gauges tg;
    gauges_of(t->g, &tg);
    telemetry_tick(&t->g->tel, now, &tg);
    limits_prune(&t->g->limits, now);
    /* After a burst, give the allocator's free memory back to the system
     * once the gateway is idle (at most once a second), and again when
     * streams kept for a resume were let go of since (their logs). */
    bool kept_changed = t->g->streams.used != t->g->used_at_trim;
    if (stream_table_active(&t->g->streams) == 0 && (t->g->busy_since_trim || kept_changed) &&
        now - t->g->last_trim_ns > 1000000000ull) {
        malloc_trim(0);
        t->g->last_trim_ns = now;
        t->g->busy_since_trim = false;
        t->g->used_at_trim = t->g->streams.used;
    }
    if (stream_table_active(&t->g->streams))
        t->g->busy_since_trim = true;
    lws_sul_schedule(t->g->ctx, 0, &t->sul, on_tick, 50 * LWS_US_PER_MS);
}

/* A start-up failure: logged, and under a supervisor written as the cause
 * it prints (common/rundir.h).  Returns rc. */
static int startup_failed(const struct rill_config *c, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int startup_failed(const struct rill_config *c, int rc, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    rlog_error("%s", msg);
    if (c->control[0]) {
        char run_dir[CFG_STR_MAX];
        cfg_run_dir(c, run_dir, sizeof run_dir);
        rundir_write_cause(run_dir, "g0", "gateway: %s", msg);
    }
    return rc;
}

/* lws says only that it could not listen: bind the address ourselves first
 * to tell the operator why (in use, not an address of this machine, not
 * allowed).  0 when it can be bound. */
static int probe_listen(const char *host, int port, char *why, size_t n)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV},
                    *ai = NULL;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int gai = getaddrinfo(host, ps, &hints, &ai);
    if (gai) {
        snprintf(why, n, "%s:%d: cannot resolve the listen address: %s", host, port, gai_strerror(gai));
        return RILL_E_BAD_CONFIG;
    }
    int rc = 0;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        int e = errno;
        const char *fmt = strchr(host, ':') ? "[%s]:%d %s" : "%s:%d %s";
        snprintf(why, n, fmt, host, port,
                 e == EADDRINUSE      ? "already in use"
                 : e == EADDRNOTAVAIL ? "cannot be bound: not an address of this machine"
                 : e == EACCES        ? "cannot be bound: permission denied (a port under 1024?)"
                                      : strerror(e));
        rc = RILL_E_IO;
    }
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    return rc;
}

static int parse_listen(const char *listen, char *host, size_t hn, int *port)
{
    const char *colon = strrchr(listen, ':');
    if (!colon)
        return RILL_E_BAD_CONFIG;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || p < 0 || p > 65535)
        return RILL_E_BAD_CONFIG;
    size_t n = (size_t)(colon - listen);
    if (n >= hn)
        return RILL_E_BAD_CONFIG;
    memcpy(host, listen, n);
    host[n] = 0;
    if (host[0] == '[' && n > 2 && host[n - 1] == ']') { /* [::1] */
        memmove(host, host + 1, n - 2);
        host[n - 2] = 0;
    }
    *port = (int)p;
    return 0;
}

/* --- the transport's callbacks: the layers above it ------------------------------------- */

static void on_worker_msg(void *ctx, int worker, struct proto_msg *m)
{
    struct server *g = ctx;
    openai_on_msg(&g->oa, m);
    stream_on_msg(&g->streams, worker, m);
}

static void on_worker_token(void *ctx, int worker, const struct proto_token *t, uint64_t now_ns)
{
    struct server *g = ctx;
    stream_on_token(&g->streams, worker, t, now_ns);
}

static void on_batch_end(void *ctx)
{
    struct server *g = ctx;
    writer_flush(&g->writers);
}

static void on_worker_down(void *ctx, int worker)
{
    struct server *g = ctx;
    stream_worker_lost(&g->streams, worker);
}

static void on_control_msg(void *ctx, struct proto_msg *m)
{
    struct server *g = ctx;
    switch (m->type) {
    case PROTO_DRAIN:
        begin_drain(g, "the supervisor asked");
        break;
    case PROTO_SHUTDOWN:
        g->ss.shutting_down = true;
        g->stop = true;
        lws_cancel_service(g->ctx);
        break;
    case PROTO_STATS:
        /* Take the decoded buffers over: no copy. */
        free(g->sup_prom);
        free(g->sup_json);
        g->sup_prom = (char *)m->u.stats.prom.p;
        g->sup_prom_len = m->u.stats.prom.len;
        g->sup_json = (char *)m->u.stats.json.p;
        g->sup_json_len = m->u.stats.json.len;
        m->u.stats.prom.p = m->u.stats.json.p = NULL;
        g->sup_stats_ns = clock_ns();
        break;
    default:
        break;
    }
}

static void fill_heartbeat(void *ctx, struct proto_heartbeat *h)
{
    const struct server *g = ctx;
    h->active = stream_table_active(&g->streams);
    h->tokens_total = g->m.tokens;
    h->requests_total = g->m.requests;
    h->state = g->ss.shutting_down ? PROTO_STATE_DRAINING : PROTO_STATE_READY;
}

/* The one teardown, for every stage set-up reached. */
static void server_free(struct server *g)
{
    if (g->ctx) {
        writer_set_stop(&g->writers);
        lws_context_destroy(g->ctx); /* closes every connection: their streams go too */
    }
    writer_set_fini(&g->writers);
    session_fini(&g->ss);
    if (g->transport_up)
        transport_fini(&g->tp);
    stream_table_fini(&g->streams);
    telemetry_fini(&g->tel);
    if (g->limits_up)
        limits_fini(&g->limits);
    free(g->sup_prom);
    free(g->sup_json);
    free(g);
}

int server_run(const struct rill_config *c)
{
    struct server *g = calloc(1, sizeof *g);
    if (!g)
        return RILL_E_NOMEM;
    g->c = c;
    g->started_ns = clock_ns();
    /* Request ids are <epoch:32><counter:32>: a random epoch per process, so
     * that a restarted gateway never takes over a predecessor's requests
     * (and workers can tell its orphans apart and cancel them). */
    uint32_t epoch = 0;
    if (getrandom(&epoch, sizeof epoch, 0) != sizeof epoch || !epoch)
        epoch = (uint32_t)(clock_ns() ^ (uint64_t)getpid() << 16) | 1;
    hist_init_prom(&g->m.ttft_us, 1000000);
    hist_init_prom(&g->m.itl_us, 1000000);
    hist_init_prom(&g->m.gen_itl_us, 1000000);
    telemetry_init(&g->tel, c, &g->m, epoch);
    stream_table_init(&g->streams, &g->tp, epoch, (uint64_t)c->failover_timeout_s * 1000000000ull);
    stream_table_resume(&g->streams, (uint64_t)c->resume_window_s * 1000000000ull, (size_t)c->resume_log_bytes,
                        (size_t)c->resume_log_total_bytes);
    session_init(&g->ss, c, &g->limits, &g->streams, &g->writers, &g->tel, &g->m, &g->tp);
    openai_init(&g->oa, c, &g->limits, &g->streams, &g->tel, &g->m, &g->tp, &g->ss.shutting_down, epoch);
    int rc = parse_listen(c->listen, g->host, sizeof g->host, &g->port);
    if (rc) {
        server_free(g);
        return startup_failed(c, rc, "bad listen address '%s' (want host:port)", c->listen);
    }
    g->limits_up = true;
    if ((rc = limits_init(&g->limits, c, g->host, g->port))) {
        server_free(g);
        return startup_failed(c, rc, "cannot set up keys, origins or hosts (%s)", rill_err_name(rc));
    }
    char why[300];
    if ((rc = probe_listen(g->host, g->port, why, sizeof why))) {
        server_free(g);
        return startup_failed(c, rc, "%s", why);
    }
    /* The resume key, once the gateway can start (a refused start leaves
     * nothing in the run dir). */
    {
        uint8_t key[STREAM_KEY_LEN];
        char run_dir[CFG_STR_MAX];
        cfg_run_dir(c, run_dir, sizeof run_dir);
        if (rundir_key(run_dir, RUNDIR_RESUME_KEY, key, sizeof key)) {
            if (c->resume_window_s)
                rlog_warn("no resume key in %s: resume tokens will not outlive this gateway process", run_dir);
            if (getrandom(key, sizeof key, 0) != sizeof key) {
                server_free(g);
                return startup_failed(c, RILL_E_IO, "no randomness for the resume key");
            }
        }
        stream_table_key(&g->streams, key);
    }
    char web_root[CFG_STR_MAX];
    http_web_root(c, web_root, sizeof web_root);

    static struct lws_http_mount m_root, m_api;
    memset(&m_root, 0, sizeof m_root);
    m_root.mountpoint = "/";
    m_root.mountpoint_len = 1;
    m_root.origin = web_root;
    m_root.def = "index.html";
    m_root.origin_protocol = LWSMPRO_FILE;
    /* GET /dashboard: the live dashboard page (same directory, other default). */
    static struct lws_http_mount m_dash;
    m_dash = m_root;
    m_dash.mount_next = &m_root;
    m_dash.mountpoint = "/dashboard";
    m_dash.mountpoint_len = 10;
    m_dash.def = "dashboard.html";
    memset(&m_api, 0, sizeof m_api);
    m_api.mount_next = &m_dash;
    m_api.mountpoint = "/api";
    m_api.mountpoint_len = 4;
    m_api.origin = "rill.json.v1";
    m_api.origin_protocol = LWSMPRO_CALLBACK;
    static struct lws_http_mount m_metrics, m_health, m_ready;
    m_metrics = m_api;
    m_metrics.mount_next = &m_api;
    m_metrics.mountpoint = "/metrics";
    m_metrics.mountpoint_len = 8;
    m_health = m_api;
    m_health.mount_next = &m_metrics;
    m_health.mountpoint = "/health";
    m_health.mountpoint_len = 7;
    m_ready = m_api;
    m_ready.mount_next = &m_health;
    m_ready.mountpoint = "/ready";
    m_ready.mountpoint_len = 6;
    static struct lws_http_mount m_v1; /* the OpenAI-compatible API (openai.h) */
    m_v1 = m_api;
    m_v1.mount_next = &m_ready;
    m_v1.mountpoint = "/v1";
    m_v1.mountpoint_len = 3;

    /* Idle connections are pinged (and dropped when silent) by lws. */
    static lws_retry_bo_t idle_policy;
    idle_policy.secs_since_valid_ping = (uint16_t)(c->ping_interval_s ? c->ping_interval_s : 30);
    idle_policy.secs_since_valid_hangup = (uint16_t)(3 * idle_policy.secs_since_valid_ping);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = g->port;
    info.iface = g->host;
    info.protocols = protocols;
    info.mounts = &m_v1;
    info.extensions = extensions;
    info.user = g;
    info.retry_and_idle_policy = &idle_policy;
    info.options = LWS_SERVER_OPTION_HTTP_HEADERS_SECURITY_BEST_PRACTICES_ENFORCE |
                   LWS_SERVER_OPTION_DISABLE_IPV6;
    if (strchr(g->host, ':'))
        info.options &= ~(uint64_t)LWS_SERVER_OPTION_DISABLE_IPV6;
    /* No fd_limit_per_thread: below the process's file limit lws finds
     * sockets by a linear scan.  main() raises the limit instead, and
     * max_connections is enforced by limits.c. */
    /* lws's own loop is poll(): every wake-up scans every connection, which
     * at a thousand streams was most of the gateway's time.  Its libev
     * plugin (epoll) costs per ready socket. */
    info.options |= LWS_SERVER_OPTION_LIBEV;
    info.signal_cb = on_evlib_signal;
    info.count_threads = 1;
    info.pt_serv_buf_size = 32768;
    info.timeout_secs = 30;
    lws_set_log_level(LLL_ERR | LLL_WARN, NULL);
    g->ctx = lws_create_context(&info);
    g->evlib = g->ctx != NULL;
    if (!g->ctx) {
        info.options &= ~(uint64_t)LWS_SERVER_OPTION_LIBEV;
        info.signal_cb = NULL;
        g->ctx = lws_create_context(&info);
        if (g->ctx)
            rlog_warn("the libev event loop is not available: using poll(), which scales worse with connections");
    }
    if (!g->ctx) {
        server_free(g);
        return startup_failed(c, RILL_E_IO, "cannot listen on %s (libwebsockets refused it)", c->listen);
    }
    struct writer_cb wcb;
    session_writer_cb(&g->ss, &wcb);
    if ((rc = writer_set_init(&g->writers, g->ctx, &g->m, (size_t)c->client_buffer_bytes, c->direct_write,
                              (double)c->coalesce_max_ms, (int)c->send_threads, c->send_uring, &wcb))) {
        server_free(g);
        return startup_failed(c, rc, "cannot start the send threads (%s)", rill_err_name(rc));
    }
    if (c->direct_write)
        rlog_info("a ring batch's frames go out %s",
                  writer_set_uring(&g->writers) ? "in one io_uring submission per 32 connections"
                  : c->send_threads > 1         ? "from the send threads, one send() per connection"
                                                : "with one send() per connection");
    g->vh = lws_get_vhost_by_name(g->ctx, "default");
    struct lws_context_creation_info vi;
    memset(&vi, 0, sizeof vi);
    vi.port = CONTEXT_PORT_NO_LISTEN;
    vi.protocols = internal_protocols;
    vi.vhost_name = "internal";
    struct lws_vhost *vh_internal = g->vh ? lws_create_vhost(g->ctx, &vi) : NULL;
    if (!g->vh || !vh_internal) {
        server_free(g);
        return startup_failed(c, RILL_E_INTERNAL, "libwebsockets has no default vhost, or cannot make the internal one");
    }
    const struct transport_cb cb = {g, on_worker_msg, on_worker_token, on_batch_end, on_worker_down,
                                    on_control_msg, fill_heartbeat};
    g->transport_up = true;
    if ((rc = transport_init(&g->tp, c, g->ctx, vh_internal, epoch, &cb))) {
        server_free(g);
        return startup_failed(c, rc, "cannot set up the workers' sockets (%s)", rill_err_name(rc));
    }
    signal_ctx = g->ctx;
    struct sigaction pa = {.sa_handler = on_parent_gone};
    sigaction(RILL_PARENT_DEATH_SIGNAL, &pa, NULL);
    if (c->control[0] && getppid() == 1)
        parent_gone = 1;
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    struct tick tick = {.g = g};
    lws_sul_schedule(g->ctx, 0, &tick.sul, on_tick, 1);
    rlog_info("gateway listening on http://%s:%d/ (WebSocket %s, web root %s)", g->host, g->port, c->ws_path,
              web_root);

    /* With libev this runs the loop until the tick destroys the context;
     * with poll() each call is one wake-up. */
    while (!g->stop || (g->evlib && !g->destroying))
        if (lws_service(g->ctx, 0) < 0 || g->destroying)
            break;
    if (!g->destroying)
        lws_sul_cancel(&tick.sul);
    signal_ctx = NULL;
    server_free(g);
    /* Under a supervisor that died first, the last child out cleans up. */
    if (c->control[0]) {
        char run_dir[CFG_STR_MAX];
        cfg_run_dir(c, run_dir, sizeof run_dir);
        rundir_leave(run_dir, NULL);
    }
    rlog_info("gateway stopped");
    return 0;
}
