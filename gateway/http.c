/* http.c — see http.h. */
#include "http.h"
#include "httppath.h"
#include "creq.h"
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

char *http_header_dup(struct lws *wsi, enum lws_token_indexes h, bool *present)
{
    int n = lws_hdr_total_length(wsi, h);
    *present = n > 0;
    if (n <= 0 || n > 65536)
        return NULL;
    char *v = malloc((size_t)n + 1);
    if (v && lws_hdr_copy(wsi, v, n + 1, h) < 0) {
        free(v);
        v = NULL;
    }
    return v;
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

static void render_metrics(const struct http_view *v, struct prom_buf *b)
{
    const struct metrics *m = v->m;
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
    prom_counter(b, "rill_gateway_failovers_total",
                 "Generations run again on another (or the restarted) worker after theirs stopped.",
                 (double)v->failovers);
    prom_gauge(b, "rill_gateway_connections", "Open WebSocket connections.", (double)v->connections);
    prom_gauge(b, "rill_gateway_active_streams", "Generations in progress.", (double)v->active_streams);
    prom_gauge(b, "rill_gateway_resumable_streams",
               "Generations no connection has, kept for resume_window_s (running or finished).",
               (double)v->resumable_streams);
    prom_gauge(b, "rill_gateway_workers_ready", "Workers that can take requests.", (double)v->workers_ready);
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
               (double)(clock_ns() - v->started_ns) / 1e9);
    /* Under a supervisor: its own and the workers' figures (from their
     * heartbeats), which it sends twice a second. */
    if (v->sup_prom_len)
        prom_printf(b, "%.*s", (int)v->sup_prom_len, v->sup_prom);
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
static bool metrics_allowed(struct lws *wsi, const struct http_view *v)
{
    if (!v->lim->n_keys || limits_is_loopback(v->lim->host))
        return true;
    char key[CREQ_KEY_MAX + 16];
    bool ok = http_request_key(wsi, key, sizeof key) && limits_key_ok(v->lim, key);
    memset(key, 0, sizeof key);
    return ok;
}

int http_serve(struct lws *wsi, const struct http_view *v)
{
    char uri[HTTPPATH_URI_MAX] = "";
    lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI);
    enum httppath_ep ep = httppath_route(uri);
    if (ep == HTTPPATH_HEALTH)
        return respond(wsi, 200, "text/plain", "ok\n", 3);
    if (ep == HTTPPATH_READY) {
        int n = v->workers_ready;
        char body[96];
        int len = snprintf(body, sizeof body, "%s: %d worker%s ready\n", n ? "ready" : "not ready", n, n == 1 ? "" : "s");
        return respond(wsi, n && !v->shutting_down ? 200 : 503, "text/plain", body, (size_t)len);
    }
    if (ep == HTTPPATH_METRICS) {
        if (!metrics_allowed(wsi, v)) {
            static const char m[] = "an API key is required for /metrics (Authorization: Bearer KEY, or ?key=KEY)\n";
            return respond(wsi, 401, "text/plain", m, sizeof m - 1);
        }
        struct prom_buf b;
        prom_init(&b);
        render_metrics(v, &b);
        int rc = b.oom ? respond(wsi, 500, "text/plain", "out of memory\n", 14)
                       : respond(wsi, 200, "text/plain; version=0.0.4; charset=utf-8", b.p, b.len);
        prom_free(&b);
        return rc;
    }
    return respond(wsi, 404, "text/plain", "not found\n", 10);
}
