/* fuzz_http.c — libFuzzer target for what the gateway decides from an HTTP
 * request's path and headers before any WebSocket message: which endpoint a
 * path names (gateway/httppath.c, the part of http_serve() that does not
 * need lws) and whether the Origin / API key of a handshake are accepted
 * (limits_origin_ok, limits_key_ok, with the lists limits_init() splits out
 * of the configuration).
 *
 * The input is up to six lines: path, Origin, Host, allowed_origins,
 * api_keys, presented key (missing lines are empty).  The path reaches the
 * router the way lws hands it over: a path of HTTPPATH_URI_MAX bytes or more
 * does not fit the copy and arrives as "".  Beyond "no crash, no leak"
 * (ASan, UBSan) every verdict is checked against its definition written out
 * here a second way.
 *
 * Seeds: tests/fuzz/seeds-http.
 */
#include <ctype.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"
#include "gateway/limits.h"
#include "gateway/creq.h"
#include "gateway/httppath.h"

#define CHECK(cond, ...)                                                                 \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "fuzz_http: %s (line %d): ", #cond, __LINE__);               \
            fprintf(stderr, __VA_ARGS__);                                                \
            fputc('\n', stderr);                                                         \
            abort();                                                                     \
        }                                                                                \
    } while (0)

enum { L_PATH, L_ORIGIN, L_HOST, L_ORIGINS, L_KEYS, L_KEY, L_COUNT };

/* Header values as lws gives them: at most 255 bytes in the gateway's
 * buffers, NUL-terminated (a NUL in the input ends the value). */
static void take(char *dst, size_t cap, const uint8_t *p, size_t n)
{
    size_t k = 0;
    while (k < n && k + 1 < cap && p[k])
        k++;
    memcpy(dst, p, k);
    dst[k] = 0;
}

static void fuzz_path(const char *raw, size_t n)
{
    char uri[HTTPPATH_URI_MAX] = "";
    if (n < sizeof uri) /* lws_hdr_copy refuses a value that does not fit */
        take(uri, sizeof uri, (const uint8_t *)raw, n);
    enum httppath_ep ep = httppath_route(uri);
    enum httppath_ep want = !strcmp(uri, "/health")    ? HTTPPATH_HEALTH
                            : !strcmp(uri, "/ready")   ? HTTPPATH_READY
                            : !strcmp(uri, "/metrics") ? HTTPPATH_METRICS
                                                       : HTTPPATH_NOT_FOUND;
    CHECK(ep == want, "'%s' routed to %d, not %d", uri, ep, want);
    CHECK(httppath_route(NULL) == HTTPPATH_NOT_FOUND, "NULL routed");
}

/* The list entries limits_init() must have split out of `s`, counted the
 * slow way: maximal runs without a comma, trimmed of white space. */
static size_t count_entries(const char *s)
{
    size_t n = 0;
    for (const char *p = s;;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        bool blank = true;
        for (size_t i = 0; i < len; i++)
            blank = blank && isspace((unsigned char)p[i]);
        n += !blank;
        if (!e)
            return n;
        p = e + 1;
    }
}

static void check_list(char **a, size_t n, const char *src)
{
    CHECK(n == count_entries(src), "%zu entries from '%s', expected %zu", n, src, count_entries(src));
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(a[i]);
        CHECK(len > 0, "empty entry");
        CHECK(!strchr(a[i], ','), "entry with a comma");
        CHECK(!isspace((unsigned char)a[i][0]) && !isspace((unsigned char)a[i][len - 1]), "entry '%s' not trimmed",
              a[i]);
        CHECK(strstr(src, a[i]) != NULL, "entry '%s' not in the list", a[i]);
    }
}

static void fuzz_limits(const char *origin, const char *host, const char *origins, const char *keys,
                        const char *key)
{
    static struct rill_config c;
    struct limits g;
    snprintf(c.allowed_origins, sizeof c.allowed_origins, "%s", origins);
    snprintf(c.api_keys, sizeof c.api_keys, "%s", keys);
    /* The Host check takes its list from the same line (allowed_hosts). */
    snprintf(c.allowed_hosts, sizeof c.allowed_hosts, "%s", origins);
    int rc = limits_init(&g, &c, "", 0);
    CHECK(rc == 0, "limits_init: %d", rc);
    check_list(g.origins, g.n_origins, c.allowed_origins);
    check_list(g.keys, g.n_keys, c.api_keys);

    bool any = false, listed = false;
    for (size_t i = 0; i < g.n_origins; i++) {
        any = any || !strcmp(g.origins[i], "*");
        listed = listed || !strcasecmp(g.origins[i], origin);
    }
    CHECK(g.any_origin == any, "any_origin %d", g.any_origin);
    bool same = false;
    if (host[0]) {
        size_t h = strlen(host), o = strlen(origin);
        same = (o == 7 + h && !strncasecmp(origin, "http://", 7) && !strcasecmp(origin + 7, host)) ||
               (o == 8 + h && !strncasecmp(origin, "https://", 8) && !strcasecmp(origin + 8, host));
    }
    bool want = !origin[0] || any || (g.n_origins ? listed : same);
    CHECK(limits_origin_ok(&g, origin, host) == want, "origin '%s' host '%s' origins '%s': %d", origin, host,
          origins, !want);
    /* CORS (server.c) asks without a Host: only the list or "*" can allow. */
    bool want_cors = !origin[0] || any || (g.n_origins && listed);
    CHECK(limits_origin_ok(&g, origin, NULL) == want_cors, "CORS verdict for '%s'", origin);

    bool key_listed = false;
    for (size_t i = 0; i < g.n_keys; i++)
        key_listed = key_listed || !strcmp(g.keys[i], key);
    CHECK(limits_key_ok(&g, key) == (!g.n_keys || key_listed), "key '%s' with %zu keys", key, g.n_keys);
    CHECK(limits_key_ok(&g, NULL) == !g.n_keys, "no key with %zu keys", g.n_keys);
    /* Host: any when nothing is listed or "*" is; a listed name itself is
     * always allowed; no Host is never allowed when there is a list. */
    bool host_ok = limits_host_ok(&g, host);
    if (!g.n_hosts || g.any_host)
        CHECK(host_ok, "host '%s' refused with no list", host);
    else if (!host[0])
        CHECK(!host_ok, "an empty Host allowed by '%s'", origins);
    for (size_t i = 0; i < g.n_hosts; i++)
        CHECK(limits_host_ok(&g, g.hosts[i]), "listed host '%s' refused", g.hosts[i]);
    limits_fini(&g);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rlog_set_level(RLOG_ERROR); /* limits_init says how many keys, every time */
    const char *line[L_COUNT];
    size_t len[L_COUNT];
    size_t at = 0;
    for (int i = 0; i < L_COUNT; i++) {
        const uint8_t *nl = at < size ? memchr(data + at, '\n', size - at) : NULL;
        size_t end = nl ? (size_t)(nl - data) : size;
        line[i] = (const char *)data + (at < size ? at : size);
        len[i] = at < size ? end - at : 0;
        at = end + 1;
    }
    fuzz_path(line[L_PATH], len[L_PATH]);

    char origin[256], host[256], origins[CFG_STR_MAX], keys[CFG_STR_MAX], key[CREQ_KEY_MAX + 16];
    take(origin, sizeof origin, (const uint8_t *)line[L_ORIGIN], len[L_ORIGIN]);
    take(host, sizeof host, (const uint8_t *)line[L_HOST], len[L_HOST]);
    take(origins, sizeof origins, (const uint8_t *)line[L_ORIGINS], len[L_ORIGINS]);
    take(keys, sizeof keys, (const uint8_t *)line[L_KEYS], len[L_KEYS]);
    take(key, sizeof key, (const uint8_t *)line[L_KEY], len[L_KEY]);
    fuzz_limits(origin, host, origins, keys, key);
    return 0;
}
