/* http.c — the gateway's HTTP endpoints: /health (the process is alive),
 * /ready (at least one worker can take requests), /metrics (Prometheus
 * text).  Static pages come from the file mount (server.c); live figures
 * for the pages come over the WebSocket (telemetry.c).
 */
#include "gw.h"
#include "httppath.h"
#include "server.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonw.h"
#include "common/prom.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void http_web_root(const struct rill_config *c, char *out, size_t n)
{
    if (c->web_root[0]) {
        snprintf(out, n, "%s", c->web_root);
        return;
    }
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        exe[len] = 0;
        char *slash = strrchr(exe, '/');
        if (slash)
            *slash = 0;
        /* build/rill-gateway or build/asan/rill-gateway: look upwards. */
        for (int up = 0; up < 3; up++) {
            char cand[PATH_MAX + 32];
            snprintf(cand, sizeof cand, "%s/gateway/web", exe);
            if (access(cand, R_OK) == 0) {
                char *real = realpath(cand, NULL);
                snprintf(out, n, "%s", real ? real : cand);
                free(real);
                return;
            }
            slash = strrchr(exe, '/');
            if (!slash)
                break;
            *slash = 0;
        }
    }
    snprintf(out, n, "gateway/web");
}

static int respond(struct lws *wsi, unsigned status, const char *type, const char *body, size_t len)
{
    unsigned char hdr[LWS_PRE + 1024], *start = hdr + LWS_PRE, *p = start, *end = hdr + sizeof hdr - 1;
    if (lws_add_http_common_headers(wsi, status, type, len, &p, end) ||
        lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:", (const unsigned char *)"no-store", 8,
                                    &p, end) ||
        lws_finalize_write_http_header(wsi, start, &p, end))
        return 1;
    unsigned char *buf = malloc(LWS_PRE + len + 1);
    if (!buf)
        return 1;
    memcpy(buf + LWS_PRE, body, len);
    int n = lws_write(wsi, buf + LWS_PRE, len, LWS_WRITE_HTTP_FINAL);
    free(buf);
    if (n < (int)len)
        return 1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

void http_render_metrics(struct gw *g, void *pb)
{
    struct prom_buf *b = pb;
    const struct gw_metrics *m = &g->m;
    prom_counter(b, "rill_gateway_requests_total", "Generations requested by clients.", (double)m->requests);
    prom_counter(b, "rill_gateway_requests_completed_total", "Generations that ended with complete.",
                 (double)m->requests_ok);
    prom_counter(b, "rill_gateway_tokens_total", "Tokens delivered to clients.", (double)m->tokens);
    prom_counter(b, "rill_gateway_frames_total", "WebSocket frames written.", (double)m->frames);
    prom_counter(b, "rill_gateway_coalesced_tokens_total",
                 "Tokens that shared a frame with an earlier one (client behind).", (double)m->coalesced_tokens);
    prom_counter(b, "rill_gateway_sent_bytes_total", "Bytes of WebSocket payload sent.", (double)m->bytes_out);
    prom_counter(b, "rill_gateway_received_bytes_total", "Bytes of WebSocket payload received.", (double)m->bytes_in);
    prom_counter(b, "rill_gateway_connections_total", "WebSocket connections accepted.", (double)m->connections_total);
    prom_counter(b, "rill_gateway_slow_consumers_total", "Connections closed as slow consumers.",
                 (double)m->slow_closed);
    prom_gauge(b, "rill_gateway_connections", "Open WebSocket connections.", (double)g->n_conns);
    prom_gauge(b, "rill_gateway_active_streams", "Generations in progress.", (double)g->map_used);
    prom_gauge(b, "rill_gateway_workers_ready", "Workers that can take requests.", (double)transport_ready(&g->tp));
    prom_family(b, "rill_gateway_errors_total", "counter", "Errors sent to clients, by code.");
    for (int i = 0; i < RILL_ERR_COUNT; i++) {
        if (!rill_err_is_wire(-(i + 1)))
            continue;
        char lab[64];
        snprintf(lab, sizeof lab, "code=\"%s\"", rill_err_name(-(i + 1)));
        prom_sample(b, "rill_gateway_errors_total", lab, (double)m->errors[i]);
    }
    prom_histogram(b, "rill_gateway_time_to_first_token_seconds",
                   "From a generate request to its first token at the gateway.", NULL, &m->ttft_us, 1e6);
    prom_histogram(b, "rill_gateway_token_delivery_seconds",
                   "Added latency: from the worker's ring publish to the gateway handling the token.", NULL,
                   &m->itl_us, 1e6);
    prom_histogram(b, "rill_gateway_inter_token_seconds", "Time between consecutive tokens of a generation.",
                   NULL, &m->gen_itl_us, 1e6);
    prom_gauge(b, "rill_gateway_uptime_seconds", "Seconds since the gateway started.",
               (double)(clock_ns() - g->started_ns) / 1e9);
    /* Under a supervisor: its own and the workers' figures (from their
     * heartbeats), which it sends twice a second. */
    if (g->sup_prom_len)
        prom_printf(b, "%.*s", (int)g->sup_prom_len, g->sup_prom);
}

bool http_request_key(struct lws *wsi, char *key, size_t n)
{
    char auth[CREQ_KEY_MAX + 16] = "";
    key[0] = 0;
    if (lws_hdr_copy(wsi, auth, sizeof auth, WSI_TOKEN_HTTP_AUTHORIZATION) > 0 && !strncasecmp(auth, "Bearer ", 7)) {
        snprintf(key, n, "%s", auth + 7);
    } else {
        /* lws copies the whole "key=VALUE" argument into the buffer (and
         * leaves the last argument there when none matches): the key is
         * what the returned pointer points at. */
        const char *v = lws_get_urlarg_by_name(wsi, "key=", key, (int)n);
        if (v)
            memmove(key, v, strlen(v) + 1);
        else
            key[0] = 0;
    }
    memset(auth, 0, sizeof auth);
    return key[0] != 0;
}

/* /metrics names workers, rates and error counts: open on a loopback
 * gateway (only local users reach it), with an API key otherwise when keys
 * are configured. */
static bool metrics_allowed(struct lws *wsi, struct gw *g)
{
    if (!g->n_keys || limits_is_loopback(g->host))
        return true;
    char key[CREQ_KEY_MAX + 16];
    bool ok = http_request_key(wsi, key, sizeof key) && limits_key_ok(g, key);
    memset(key, 0, sizeof key);
    return ok;
}

int http_serve(struct lws *wsi, struct gw *g, const char *path)
{
    char uri[HTTPPATH_URI_MAX] = "";
    lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI);
    enum httppath_ep ep = httppath_route(uri);
    if (ep == HTTPPATH_HEALTH)
        return respond(wsi, 200, "text/plain", "ok\n", 3);
    if (ep == HTTPPATH_READY) {
        int n = transport_ready(&g->tp);
        char body[96];
        int len = snprintf(body, sizeof body, "%s: %d worker%s ready\n", n ? "ready" : "not ready", n, n == 1 ? "" : "s");
        return respond(wsi, n && !g->shutting_down ? 200 : 503, "text/plain", body, (size_t)len);
    }
    if (ep == HTTPPATH_METRICS) {
        if (!metrics_allowed(wsi, g)) {
            static const char m[] = "an API key is required for /metrics (Authorization: Bearer KEY, or ?key=KEY)\n";
            return respond(wsi, 401, "text/plain", m, sizeof m - 1);
        }
        struct prom_buf b;
        prom_init(&b);
        http_render_metrics(g, &b);
        int rc = b.oom ? respond(wsi, 500, "text/plain", "out of memory\n", 14)
                       : respond(wsi, 200, "text/plain; version=0.0.4; charset=utf-8", b.p, b.len);
        prom_free(&b);
        return rc;
    }
    (void)path;
    return respond(wsi, 404, "text/plain", "not found\n", 10);
}
