/* httppath.h — which of the gateway's own HTTP endpoints a request path
 * names, apart from libwebsockets so that it can be tested and fuzzed alone.
 *
 * lws has already done the URL work when the path gets here: it decoded
 * %XX escapes, folded "//", "/./" and "/../", and moved the query string
 * elsewhere.  Its mounts send /health, /ready, /metrics and /api (each with
 * anything under it) to http_serve(); everything else is a static file.
 * The endpoints match exactly: "/health/" and "/health/x" are not found.
 */
#ifndef RILL_HTTPPATH_H
#define RILL_HTTPPATH_H

#include <stddef.h>

/* The bytes of the path http_serve() copies out of lws: a longer path
 * (lws_hdr_copy fails, leaving "") is not found. */
#define HTTPPATH_URI_MAX 128

enum httppath_ep {
    HTTPPATH_NOT_FOUND = 0,
    HTTPPATH_HEALTH,  /* /health: the process is alive */
    HTTPPATH_READY,   /* /ready: a worker can take requests */
    HTTPPATH_METRICS, /* /metrics: Prometheus text */
};

/* The endpoint `uri` (NUL-terminated; NULL is "") names. */
enum httppath_ep httppath_route(const char *uri);

#endif
