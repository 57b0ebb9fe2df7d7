/* server.c — the libwebsockets side of the gateway: one port for HTTP and
 * WebSocket, the callback that dispatches lws events to the session,
 * workers and http parts, the request-id map, and the service loop.
 */
#include "server.h"
#include "gw.h"
#include "wsconf.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/hash.h"
#include "common/log.h"

#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

enum { PROTO_ID_JSON = 0, PROTO_ID_MSGPACK = 1, PROTO_ID_ZMQ = 2 };

static volatile sig_atomic_t signals_seen;
static struct lws_context *signal_ctx;

/* libev's signal watcher (lws installs it): the same as our handler. */
static void on_evlib_signal(void *handle, int sig)
{
    (void)handle;
    (void)sig;
    signals_seen++;
}

static void on_signal(int sig)
{
    (void)sig;
    signals_seen++;
    if (signal_ctx)
        lws_cancel_service(signal_ctx);
}

/* --- request-id map: open addressing, linear probing, tombstones -------------------------- */

#define TOMB ((struct stream *)1)

static uint32_t slot_of(uint64_t id, uint32_t cap)
{
    return (uint32_t)hash_u64(id) & (cap - 1);
}

/* Rebuild the table: twice the size when it is filling up with live
 * entries, the same size when it is mostly tombstones. */
static int map_grow(struct gw *g)
{
    uint32_t cap = !g->map_cap ? 1024 : (g->map_used + 1) * 4 > g->map_cap ? g->map_cap * 2 : g->map_cap;
    struct stream **m = calloc(cap, sizeof *m);
    if (!m)
        return RILL_E_NOMEM;
    for (uint32_t i = 0; i < g->map_cap; i++) {
        struct stream *s = g->map[i];
        if (!s || s == TOMB)
            continue;
        uint32_t k = slot_of(s->req_id, cap);
        while (m[k])
            k = (k + 1) & (cap - 1);
        m[k] = s;
    }
    free(g->map);
    g->map = m;
    g->map_cap = cap;
    g->map_tombs = 0;
    return 0;
}

int gw_map_put(struct gw *g, struct stream *s)
{
    /* At most half full, tombstones included, so probes stay short. */
    if ((g->map_used + g->map_tombs + 1) * 2 > g->map_cap && map_grow(g))
        return RILL_E_NOMEM;
    uint32_t k = slot_of(s->req_id, g->map_cap);
    while (g->map[k] && g->map[k] != TOMB)
        k = (k + 1) & (g->map_cap - 1);
    if (g->map[k] == TOMB)
        g->map_tombs--;
    g->map[k] = s;
    g->map_used++;
    return 0;
}

struct stream *gw_map_get(const struct gw *g, uint64_t id)
{
    if (!g->map_cap)
        return NULL;
    uint32_t k = slot_of(id, g->map_cap);
    for (uint32_t n = 0; n < g->map_cap && g->map[k]; n++, k = (k + 1) & (g->map_cap - 1))
        if (g->map[k] != TOMB && g->map[k]->req_id == id)
            return g->map[k];
    return NULL;
}

void gw_map_del(struct gw *g, uint64_t id)
{
    if (!g->map_cap)
        return;
    uint32_t k = slot_of(id, g->map_cap);
    for (uint32_t n = 0; n < g->map_cap && g->map[k]; n++, k = (k + 1) & (g->map_cap - 1))
        if (g->map[k] != TOMB && g->map[k]->req_id == id) {
            g->map[k] = TOMB;
            g->map_used--;
            g->map_tombs++;
            return;
        }
}

/* --- connection set-up ------------------------------------------------------------------------ */

/* Read what the handshake says (headers are only there now) into the conn. */
static int on_handshake(struct lws *wsi, struct gw *g, struct conn *c)
{
    char uri[256] = "";
    lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI);
    if (strcmp(uri, g->c->ws_path) != 0)
        return -1; /* not our WebSocket path */
    memset(c, 0, sizeof *c);
    c->gw = g;
    lws_get_peer_simple(wsi, c->ip, sizeof c->ip);
    /* lws accepts permessage-deflate whenever a client offers it; the
     * extension may need writable callbacks of its own, so such connections
     * are only written from the callback. */
    char ext[256] = "";
    lws_hdr_copy(wsi, ext, sizeof ext, WSI_TOKEN_EXTENSIONS);
    c->deflate = strstr(ext, "permessage-deflate") != NULL;
    char origin[256] = "", host[256] = "";
    lws_hdr_copy(wsi, origin, sizeof origin, WSI_TOKEN_ORIGIN);
    lws_hdr_copy(wsi, host, sizeof host, WSI_TOKEN_HOST);
    /* Remember the verdicts: the errors are sent once established. */
    if (!limits_origin_ok(g, origin, host))
        c->closing = true, c->rx_cap = RILL_E_FORBIDDEN_ORIGIN;
    char key[CREQ_KEY_MAX + 16] = "";
    char auth[CREQ_KEY_MAX + 16] = "";
    if (lws_hdr_copy(wsi, auth, sizeof auth, WSI_TOKEN_HTTP_AUTHORIZATION) > 0 && !strncasecmp(auth, "Bearer ", 7))
        snprintf(key, sizeof key, "%s", auth + 7);
    else {
        /* lws copies the whole "key=VALUE" argument into the buffer (and
         * leaves the last argument there when none matches): the key is
         * what the returned pointer points at. */
        const char *v = lws_get_urlarg_by_name(wsi, "key=", key, sizeof key);
        if (v)
            memmove(key, v, strlen(v) + 1);
        else
            key[0] = 0;
    }
    c->authed = limits_key_ok(g, key[0] ? key : NULL);
    if (key[0] && !c->authed && !c->closing)
        c->closing = true, c->rx_cap = RILL_E_UNAUTHORIZED;
    if (key[0] && c->authed)
        limits_key_name(key, c->bucket_key, sizeof c->bucket_key);
    else
        snprintf(c->bucket_key, sizeof c->bucket_key, "ip:%s", c->ip);
    memset(key, 0, sizeof key);
    memset(auth, 0, sizeof auth);
    return 0;
}

static void on_established(struct lws *wsi, struct gw *g, struct conn *c, bool msgpack)
{
    c->wsi = wsi;
    c->msgpack = msgpack;
    c->gw = g;
    g->m.connections_total++;
    rlog_debug("connection from %s (%s)", c->ip, msgpack ? "rill.msgpack.v1" : "rill.json.v1");
    /* Bound the kernel's send buffer too: autotuned, it grows to tcp_wmem's
     * maximum (4 MiB by default) for a client that stopped reading, so the
     * gateway would only see the client as slow — and hold its memory —
     * long after client_buffer_bytes.  The kernel doubles the value. */
    int fd = lws_get_socket_fd(wsi);
    int sndbuf = (int)g->c->client_buffer_bytes;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    int verdict = c->closing ? (int)c->rx_cap : 0;
    c->closing = false;
    c->rx_cap = 0;
    if (!verdict && !limits_ip_acquire(g, c->ip))
        verdict = RILL_E_TOO_MANY_CONNS;
    else if (!verdict)
        c->counted_ip = true;
    if (verdict) {
        const char *why = verdict == RILL_E_FORBIDDEN_ORIGIN ? "this Origin is not allowed"
                          : verdict == RILL_E_UNAUTHORIZED    ? "invalid API key"
                                                              : "too many connections from this address";
        conn_send_error(c, NULL, verdict, why);
        c->closing = true;
        lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, 5);
    }
}

static void on_receive(struct lws *wsi, struct gw *g, struct conn *c, const void *in, size_t len)
{
    size_t cap = (size_t)g->c->max_message_bytes;
    bool first = lws_is_first_fragment(wsi), final = lws_is_final_fragment(wsi);
    if (first) {
        c->rx_len = 0;
        c->rx_discard = false;
    }
    if (!c->rx_discard && c->rx_len + len > cap) {
        c->rx_discard = true;
        char m[96];
        snprintf(m, sizeof m, "message over %zu bytes", cap);
        conn_send_error(c, NULL, RILL_E_TOO_LARGE, m);
    }
    if (!c->rx_discard) {
        if (c->rx_len + len > c->rx_cap) {
            size_t ncap = c->rx_cap ? c->rx_cap : 1024;
            while (ncap < c->rx_len + len)
                ncap *= 2;
            unsigned char *p = realloc(c->rx, ncap);
            if (!p) {
                c->rx_discard = true;
                conn_send_error(c, NULL, RILL_E_INTERNAL, "out of memory");
            } else {
                c->rx = p;
                c->rx_cap = ncap;
            }
        }
        /* lws hands over empty fragments as (NULL, 0): memcpy from NULL is
         * undefined even for no bytes (UBSan stops the gateway on it). */
        if (!c->rx_discard && len) {
            memcpy(c->rx + c->rx_len, in, len);
            c->rx_len += len;
        }
    }
    if (!final)
        return;
    bool binary = lws_frame_is_binary(wsi);
    if (!c->rx_discard)
        session_on_message(c, c->rx, c->rx_len, binary);
    c->rx_len = 0;
    /* A big message's buffer is not kept for an idle connection. */
    if (c->rx_cap > 16384) {
        free(c->rx);
        c->rx = NULL;
        c->rx_cap = 0;
    }
}

static int gw_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    int wsc = wsconf_callback(wsi, reason, user, in, len); /* RFC 6455 rules lws leaves to us */
    if (wsc != WSCONF_GO_ON)
        return wsc;
    struct lws_context *ctx = lws_get_context(wsi);
    struct gw *g = ctx ? lws_context_user(ctx) : NULL;
    const struct lws_protocols *proto = lws_get_protocol(wsi);
    struct conn *c = user;
    if (!g)
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        return on_handshake(wsi, g, c);
    case LWS_CALLBACK_ESTABLISHED:
        on_established(wsi, g, c, proto && proto->id == PROTO_ID_MSGPACK);
        return 0;
    case LWS_CALLBACK_RECEIVE:
        if (!c->closing)
            on_receive(wsi, g, c, in, len);
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE: {
        int rc = session_writable(c);
        if (rc < 0)
            lws_close_reason(wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION, NULL, 0);
        return rc;
    }
    case LWS_CALLBACK_CLOSED:
        session_close_conn(c);
        return 0;
    case LWS_CALLBACK_HTTP:
        return http_serve(wsi, g, in);
    case LWS_CALLBACK_ADD_HEADERS: {
        /* CORS for the static pages: only for explicitly allowed origins. */
        struct lws_process_html_args *args = in;
        char origin[256] = "";
        if (g->n_origins && lws_hdr_copy(wsi, origin, sizeof origin, WSI_TOKEN_ORIGIN) > 0 &&
            limits_origin_ok(g, origin, NULL)) {
            unsigned char *p = (unsigned char *)args->p, *end = p + args->max_len;
            if (!lws_add_http_header_by_name(wsi, (const unsigned char *)"access-control-allow-origin:",
                                             (const unsigned char *)origin, (int)strlen(origin), &p, end)) {
                args->max_len -= (int)(p - (unsigned char *)args->p);
                args->p = (char *)p;
            }
        }
        return 0;
    }
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        if (proto && proto->id == PROTO_ID_JSON)
            workers_poll_rings(g);
        return 0;
    case LWS_CALLBACK_RAW_RX_FILE:
        workers_on_zmq(g, wsi);
        return 0;
    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

void gw_begin_drain(struct gw *g, const char *why)
{
    if (g->shutting_down)
        return;
    rlog_info("draining (%s): refusing new generations, finishing running ones", why);
    g->shutting_down = true;
    g->drain_deadline_ns = clock_ns() + (uint64_t)g->c->drain_timeout_s * 1000000000ull;
    lws_cancel_service(g->ctx);
}

/* --- the server ----------------------------------------------------------------------------------- */

static const struct lws_protocols protocols[] = {
    {"rill.json.v1", gw_callback, sizeof(struct conn), 4096, PROTO_ID_JSON, NULL, 0},
    {"rill.msgpack.v1", gw_callback, sizeof(struct conn), 4096, PROTO_ID_MSGPACK, NULL, 0},
    {"rill-zmq", gw_callback, 0, 0, PROTO_ID_ZMQ, NULL, 0},
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
    struct gw *g;
};

/* Signals, drains and shutdowns, decided in the loop (with libev the whole
 * loop runs inside one lws_service() call, so there is no outer loop to
 * look at flags between calls). */
static void check_stop(struct gw *g, uint64_t now)
{
    if (signals_seen > g->signals_handled) {
        g->signals_handled = signals_seen;
        if (g->signals_handled == 1) {
            gw_begin_drain(g, "signal");
        } else {
            rlog_info("second signal: stopping now");
            g->stop = true;
        }
    }
    if (g->shutting_down && !g->stop_at_ns && (g->map_used == 0 || now > g->drain_deadline_ns))
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
            lws_context_destroy(t->g->ctx); /* ends the libev loop; finished after it returns */
        }
        return;
    }
    workers_tick(t->g, now);
    telemetry_tick(t->g, now);
    limits_prune(t->g, now);
    /* After a burst, give the allocator's free memory back to the system
     * once the gateway is idle (at most once a second). */
    if (t->g->map_used == 0 && t->g->busy_since_trim && now - t->g->last_trim_ns > 1000000000ull) {
        malloc_trim(0);
        t->g->last_trim_ns = now;
        t->g->busy_since_trim = false;
    }
    if (t->g->map_used)
        t->g->busy_since_trim = true;
    lws_sul_schedule(t->g->ctx, 0, &t->sul, on_tick, 50 * LWS_US_PER_MS);
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

int server_run(const struct rill_config *c)
{
    struct gw *g = calloc(1, sizeof *g);
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
    g->next_req_id = (uint64_t)epoch << 32;
    telemetry_init(g);
    g->lim.max_message_bytes = (uint32_t)c->max_message_bytes;
    g->lim.max_prompt_bytes = (uint32_t)c->max_prompt_bytes;
    g->lim.max_tokens_limit = (uint32_t)c->max_tokens_limit;
    hist_init_prom(&g->m.ttft_us, 1000000);
    hist_init_prom(&g->m.itl_us, 1000000);
    hist_init_prom(&g->m.gen_itl_us, 1000000);
    int rc = parse_listen(c->listen, g->host, sizeof g->host, &g->port);
    if (rc) {
        rlog_error("bad listen address '%s' (want host:port)", c->listen);
        free(g);
        return rc;
    }
    if ((rc = limits_init(g))) {
        limits_fini(g);
        free(g);
        return rc;
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

    /* Idle connections are pinged (and dropped when silent) by lws. */
    static lws_retry_bo_t idle_policy;
    idle_policy.secs_since_valid_ping = (uint16_t)(c->ping_interval_s ? c->ping_interval_s : 30);
    idle_policy.secs_since_valid_hangup = (uint16_t)(3 * idle_policy.secs_since_valid_ping);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = g->port;
    info.iface = g->host;
    info.protocols = protocols;
    info.mounts = &m_ready;
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
        rlog_error("cannot listen on %s (in use, or not allowed)", c->listen);
        limits_fini(g);
        free(g);
        return RILL_E_IO;
    }
    g->vh = lws_get_vhost_by_name(g->ctx, "default");
    if (!g->vh) {
        rlog_error("libwebsockets has no default vhost");
        lws_context_destroy(g->ctx);
        limits_fini(g);
        free(g);
        return RILL_E_INTERNAL;
    }
    if ((rc = workers_init(g))) {
        lws_context_destroy(g->ctx);
        workers_fini(g);
        limits_fini(g);
        free(g);
        return rc;
    }
    signal_ctx = g->ctx;
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
    if (!g->destroying) {
        lws_sul_cancel(&tick.sul);
        lws_sul_cancel(&g->hold_sul);
    }
    lws_sul_cancel(&g->hold_sul);
    signal_ctx = NULL;
    lws_context_destroy(g->ctx);
    workers_fini(g);
    limits_fini(g);
    free(g->map);
    free(g);
    rlog_info("gateway stopped");
    return 0;
}
