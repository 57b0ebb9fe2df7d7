/* limits.c — who may connect and how much: API keys (compared in constant
 * time, never logged), allowed origins, connections per IP, requests per
 * second per key (token bucket).
 */
#include "gw.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/hash.h"
#include "common/log.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Split a comma-separated list into trimmed, non-empty strings (appended). */
static int split_list(const char *s, char ***out, size_t *n)
{
    const char *p = s;
    while (*p) {
        while (*p == ',' || isspace((unsigned char)*p))
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > p && isspace((unsigned char)t[-1]))
            t--;
        if (t > p) {
            char **a = realloc(*out, (*n + 1) * sizeof *a);
            if (!a)
                return RILL_E_NOMEM;
            *out = a;
            a[*n] = strndup(p, (size_t)(t - p));
            if (!a[*n])
                return RILL_E_NOMEM;
            (*n)++;
        }
        p = e;
    }
    return 0;
}

int limits_init(struct gw *g)
{
    const struct rill_config *c = g->c;
    int rc = split_list(c->api_keys, &g->keys, &g->n_keys);
    if (!rc && c->api_keys_file[0]) {
        FILE *f = fopen(c->api_keys_file, "r");
        if (!f) {
            rlog_error("cannot read api_keys_file %s", c->api_keys_file);
            return RILL_E_IO;
        }
        char line[1024];
        while (!rc && fgets(line, sizeof line, f)) {
            line[strcspn(line, "\r\n#")] = 0;
            rc = split_list(line, &g->keys, &g->n_keys);
        }
        fclose(f);
    }
    if (!rc)
        rc = split_list(c->allowed_origins, &g->origins, &g->n_origins);
    if (!rc)
        rc = split_list(c->allowed_hosts, &g->hosts, &g->n_hosts);
    /* By default a loopback gateway answers only to loopback names: a page
     * on any domain that resolves to 127.0.0.1 (DNS rebinding) would
     * otherwise reach it with its own name in Host.  Bound elsewhere, the
     * names it is reached by are the operator's to list. */
    if (!rc && !g->n_hosts && limits_is_loopback(g->host)) {
        static const char *const local[] = {"localhost", "127.0.0.1", "[::1]"};
        for (size_t i = 0; !rc && i < sizeof local / sizeof local[0]; i++)
            rc = split_list(local[i], &g->hosts, &g->n_hosts);
    }
    for (size_t i = 0; i < g->n_hosts; i++)
        if (!strcmp(g->hosts[i], "*"))
            g->any_host = true;
    for (size_t i = 0; i < g->n_origins; i++)
        if (!strcmp(g->origins[i], "*"))
            g->any_origin = true;
    if (g->n_keys)
        rlog_info("API keys required (%zu configured)", g->n_keys);
    return rc;
}

void limits_fini(struct gw *g)
{
    for (size_t i = 0; i < g->n_keys; i++) {
        memset(g->keys[i], 0, strlen(g->keys[i]));
        free(g->keys[i]);
    }
    free(g->keys);
    for (size_t i = 0; i < g->n_origins; i++)
        free(g->origins[i]);
    free(g->origins);
    for (size_t i = 0; i < g->n_hosts; i++)
        free(g->hosts[i]);
    free(g->hosts);
    free(g->buckets);
    free(g->ips);
}

/* Equal in time that depends only on the longer length, not on where the
 * strings differ. */
static bool ct_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), n = la > lb ? la : lb;
    unsigned char d = (unsigned char)(la != lb);
    for (size_t i = 0; i < n; i++)
        d |= (unsigned char)((i < la ? a[i] : 0) ^ (i < lb ? b[i] : 0));
    return d == 0;
}

bool limits_key_ok(const struct gw *g, const char *key)
{
    if (!g->n_keys)
        return true;
    if (!key)
        return false;
    bool ok = false;
    for (size_t i = 0; i < g->n_keys; i++)
        ok |= ct_equal(key, g->keys[i]); /* no early exit: every key is compared */
    return ok;
}

void limits_key_name(const char *key, char *out, size_t n)
{
    snprintf(out, n, "key:%016llx", (unsigned long long)hash_bytes(key, strlen(key)));
}

bool limits_origin_ok(const struct gw *g, const char *origin, const char *host)
{
    if (!origin || !origin[0] || g->any_origin)
        return true; /* not a browser, or anyone allowed */
    if (g->n_origins) {
        for (size_t i = 0; i < g->n_origins; i++)
            if (!strcasecmp(origin, g->origins[i]))
                return true;
        return false;
    }
    /* Default: same origin only. */
    if (!host || !host[0])
        return false;
    const char *rest = !strncasecmp(origin, "http://", 7) ? origin + 7 : !strncasecmp(origin, "https://", 8) ? origin + 8 : NULL;
    return rest && !strcasecmp(rest, host);
}

bool limits_is_loopback(const char *host)
{
    return !strcmp(host, "localhost") || !strncmp(host, "127.", 4) || !strcmp(host, "::1") ||
           !strcmp(host, "[::1]");
}

/* Host is "name", "name:port", "[v6]" or "[v6]:port".  An allowed entry
 * without a port matches the name with no port or this gateway's port; one
 * with a port matches exactly. */
bool limits_host_ok(const struct gw *g, const char *host)
{
    if (g->any_host || !g->n_hosts)
        return true;
    if (!host || !host[0])
        return false;
    size_t len = strlen(host), name_len = len;
    const char *colon = strrchr(host, ':');
    if (colon && (host[0] != '[' || colon > strchr(host, ']')))
        name_len = (size_t)(colon - host);
    char port[16];
    snprintf(port, sizeof port, "%d", g->port);
    bool port_ok = name_len == len || !strcmp(host + name_len + 1, port);
    for (size_t i = 0; i < g->n_hosts; i++) {
        const char *a = g->hosts[i];
        if (!strcasecmp(a, host))
            return true;
        if (port_ok && strlen(a) == name_len && !strncasecmp(a, host, name_len))
            return true;
    }
    return false;
}

bool limits_ip_acquire(struct gw *g, const char *ip)
{
    const struct rill_config *c = g->c;
    if (g->n_conns >= (uint32_t)c->max_connections)
        return false;
    size_t i;
    for (i = 0; i < g->n_ips; i++)
        if (!strcmp(g->ips[i].ip, ip))
            break;
    if (i == g->n_ips) {
        if (g->n_ips == g->cap_ips) {
            size_t cap = g->cap_ips ? g->cap_ips * 2 : 16;
            struct ip_count *a = realloc(g->ips, cap * sizeof *a);
            if (!a)
                return false;
            g->ips = a;
            g->cap_ips = cap;
        }
        snprintf(g->ips[i].ip, sizeof g->ips[i].ip, "%s", ip);
        g->ips[i].n = 0;
        g->n_ips++;
    }
    if (g->ips[i].n >= (uint32_t)c->max_conns_per_ip)
        return false;
    g->ips[i].n++;
    g->n_conns++;
    return true;
}

void limits_ip_release(struct gw *g, const char *ip)
{
    for (size_t i = 0; i < g->n_ips; i++)
        if (!strcmp(g->ips[i].ip, ip)) {
            if (g->ips[i].n)
                g->ips[i].n--;
            if (!g->ips[i].n)
                g->ips[i] = g->ips[--g->n_ips];
            break;
        }
    if (g->n_conns)
        g->n_conns--;
}

bool limits_rate_ok(struct gw *g, const char *key, uint64_t now_ns)
{
    double rate = g->c->rate_limit_rps, burst = g->c->rate_limit_burst;
    if (rate <= 0)
        return true;
    size_t i;
    for (i = 0; i < g->n_buckets; i++)
        if (!strcmp(g->buckets[i].key, key))
            break;
    if (i == g->n_buckets) {
        if (g->n_buckets == g->cap_buckets) {
            size_t cap = g->cap_buckets ? g->cap_buckets * 2 : 16;
            struct bucket *a = realloc(g->buckets, cap * sizeof *a);
            if (!a)
                return false;
            g->buckets = a;
            g->cap_buckets = cap;
        }
        snprintf(g->buckets[i].key, sizeof g->buckets[i].key, "%s", key);
        g->buckets[i].tokens = burst;
        g->buckets[i].t_ns = now_ns;
        g->n_buckets++;
    }
    struct bucket *b = &g->buckets[i];
    b->tokens += (double)(now_ns - b->t_ns) / 1e9 * rate;
    if (b->tokens > burst)
        b->tokens = burst;
    b->t_ns = now_ns;
    if (b->tokens < 1)
        return false;
    b->tokens -= 1;
    return true;
}

void limits_prune(struct gw *g, uint64_t now_ns)
{
    double rate = g->c->rate_limit_rps, burst = g->c->rate_limit_burst;
    for (size_t i = 0; i < g->n_buckets;) {
        const struct bucket *b = &g->buckets[i];
        if (rate <= 0 || b->tokens + (double)(now_ns - b->t_ns) / 1e9 * rate >= burst)
            g->buckets[i] = g->buckets[--g->n_buckets];
        else
            i++;
    }
}
