/* http.h — the gateway's HTTP endpoints: /health (the process is alive),
 * /ready (at least one worker can take requests), /metrics (Prometheus
 * text).  Static pages come from the file mount (server.c); live figures
 * for the pages come over the WebSocket (telemetry.h).
 */
#ifndef RILL_HTTP_H
#define RILL_HTTP_H

#include <libwebsockets.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "limits.h"
#include "metrics.h"

/* What the endpoints show, filled by the server for each request. */
struct http_view {
    const struct metrics *m;
    const struct limits *lim;
    int workers_ready;
    uint32_t connections, active_streams;
    uint32_t resumable_streams;  /* kept for a resume: no connection has them */
    uint64_t failovers;          /* generations run again after their worker stopped */
    bool shutting_down;
    const char *sup_prom;        /* the supervisor's figures (Prometheus text), or NULL */
    size_t sup_prom_len;
    uint64_t started_ns;
};

/* Answer an HTTP request on a callback mount.  Returns what the lws
 * callback returns. */
int http_serve(struct lws *wsi, const struct http_view *v);
/* The API key a request carries (Authorization: Bearer, or ?key=) into
 * key; false when it carries none. */
bool http_request_key(struct lws *wsi, char *key, size_t n);
/* A header's whole value (malloc'd; NULL when absent or too long to be
 * honest: lws itself caps the header block); *present says whether the
 * request had it.  A fixed buffer would leave a longer value unread, and an
 * unread Origin looked like no Origin at all. */
char *http_header_dup(struct lws *wsi, enum lws_token_indexes h, bool *present);
/* The directory of the web pages: web_root, or gateway/web next to the
 * binaries (build/../gateway/web). */
void http_web_root(const struct rill_config *c, char *out, size_t n);

#endif
