/* limits.c — see limits.h. */
#include "limits.h"
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

int limits_init(struct limits *l, const struct rill_config *c, const char *host, int port)
{
    memset(l, 0, sizeof *l);
    l->c = c;
    l->host = host;
    l->port = port;
    int rc = split_list(c->api_keys, &l->keys, &l->n_keys);
    if (!rc && c->api_keys_file[0]) {
        FILE *f = fopen(c->api_keys_file, "r");
        if (!f) {
            rlog_error("cannot read api_keys_file %s", c->api_keys_file);
            return RILL_E_IO;
        }
        char line[1024];
        while (!rc && fgets(line, sizeof line, f)) {
            line[strcspn(line, "\r\n#")] = 0;
            rc = split_list(line, &l->keys, &l->n_keys);
        }
        fclose(f);
    }
    if (!rc)
        rc = split_list(c->allowed_origins, &l->origins, &l->n_origins);
    if (!rc)
        rc = split_list(c->allowed_hosts, &l->hosts, &l->n_hosts);
    /* By default a loopback gateway answers only to loopback names: a page
     * on any domain that resolves to 127.0.0.1 (DNS rebinding) would
     * otherwise reach it with its own name in Host.  Bound elsewhere, the
     * names it is reached by are the operator's to list. */
    if (!rc && !l->n_hosts && limits_is_loopback(l->host)) {
        static const char *const local[] = {"localhost", "127.0.0.1", "[::1]"};
        for (size_t i = 0; !rc && i < sizeof local / sizeof local[0]; i++)
            rc = split_list(local[i], &l->hosts, &l->n_hosts);
    }
    for (size_t i = 0; i < l->n_hosts; i++)
        if (!strcmp(l->hosts[i], "*"))
            l->any_host = true;
    for (size_t i = 0; i < l->n_origins; i++)
        if (!strcmp(l->origins[i], "*"))
            l->any_origin = true;
    if (l->n_keys)
        rlog_info("API keys required (%zu configured)", l->n_keys);
    return rc;
}

void limits_fini(struct limits *l)
{
    for (size_t i = 0; i < l->n_keys; i++) {
        memset(l->keys[i], 0, strlen(l->keys[i]));
        free(l->keys[i]);
    }
    free(l->keys);
    for (size_t i = 0; i < l->n_origins; i++)
        free(l->origins[i]);
    free(l->origins);
    for (size_t i = 0; i < l->n_hosts; i++)
        free(l->hosts[i]);
    free(l->hosts);
    free(l->buckets);
    free(l->ips);
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

bool limits_key_ok(const struct limits *l, const char *key)
{
    if (!l->n_keys)
        return true;
    if (!key)
        return false;
    bool ok = false;
    for (size_t i = 0; i < l->n_keys; i++)
        ok |= ct_equal(key, l->keys[i]); /* no early exit: every key is compared */
    return ok;
}

void limits_key_name(const char *key, char *out, size_t n)
{
    snprintf(out, n, "key:%016llx", (unsigned long long)hash_bytes(key, strlen(key)));
}

bool limits_origin_ok(const struct limits *l, const char *origin, const char *host)
{
    if (!origin || !origin[0] || l->any_origin)
        return true; /* not a browser, or anyone allowed */
    if (l->n_origins) {
        for (size_t i = 0; i < l->n_origins; i++)
            if (!strcasecmp(origin, l->origins[i]))
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
bool limits_host_ok(const struct limits *l, const char *host)
{
    if (l->any_host || !l->n_hosts)
        return true;
    if (!host || !host[0])
        return false;
    size_t len = strlen(host), name_len = len;
    const char *colon = strrchr(host, ':');
    if (colon && (host[0] != '[' || colon > strchr(host, ']')))
        name_len = (size_t)(colon - host);
    char port[16];
    snprintf(port, sizeof port, "%d", l->port);
    bool port_ok = name_len == len || !strcmp(host + name_len + 1, port);
    for (size_t i = 0; i < l->n_hosts; i++) {
        const char *a = l->hosts[i];
        if (!strcasecmp(a, host))
            return true;
        if (port_ok && strlen(a) == name_len && !strncasecmp(a, host, name_len))
            return true;
    }
    return false;
}

bool limits_ip_acquire(struct limits *l, const char *ip)
{
    const struct rill_config *c = l->c;
    if (l->n_conns >= (uint32_t)c->max_connections)
        return false;
    size_t i;
    for (i = 0; i < l->n_ips; i++)
        if (!strcmp(l->ips[i].ip, ip))
            break;
    if (i == l->n_ips) {
        if (l->n_ips == l->cap_ips) {
            size_t cap = l->cap_ips ? l->cap_ips * 2 : 16;
            struct limits_ip *a = realloc(l->ips, cap * sizeof *a);
            if (!a)
                return false;
            l->ips = a;
            l->cap_ips = cap;
        }
        snprintf(l->ips[i].ip, sizeof l->ips[i].ip, "%s", ip);
        l->ips[i].n = 0;
        l->n_ips++;
    }
    if (l->ips[i].n >= (uint32_t)c->max_conns_per_ip)
        return false;
    l->ips[i].n++;
    l->n_conns++;
    return true;
}

void limits_ip_release(struct limits *l, const char *ip)
{
    for (size_t i = 0; i < l->n_ips; i++)
        if (!strcmp(l->ips[i].ip, ip)) {
            if (l->ips[i].n)
                l->ips[i].n--;
            if (!l->ips[i].n)
                l->ips[i] = l->ips[--l->n_ips];
            break;
        }
    if (l->n_conns)
        l->n_conns--;
}

bool limits_rate_ok(struct limits *l, const char *key, uint64_t now_ns)
{
    double rate = l->c->rate_limit_rps, burst = l->c->rate_limit_burst;
    if (rate <= 0)
        return true;
    size_t i;
    for (i = 0; i < l->n_buckets; i++)
        if (!strcmp(l->buckets[i].key, key))
            break;
    if (i == l->n_buckets) {
        if (l->n_buckets == l->cap_buckets) {
            size_t cap = l->cap_buckets ? l->cap_buckets * 2 : 16;
            struct limits_bucket *a = realloc(l->buckets, cap * sizeof *a);
            if (!a)
                return false;
            l->buckets = a;
            l->cap_buckets = cap;
        }
        snprintf(l->buckets[i].key, sizeof l->buckets[i].key, "%s", key);
        l->buckets[i].tokens = burst;
        l->buckets[i].t_ns = now_ns;
        l->n_buckets++;
    }
    struct limits_bucket *b = &l->buckets[i];
    b->tokens += (double)(now_ns - b->t_ns) / 1e9 * rate;
    if (b->tokens > burst)
        b->tokens = burst;
    b->t_ns = now_ns;
    if (b->tokens < 1)
        return false;
    b->tokens -= 1;
    return true;
}

void limits_prune(struct limits *l, uint64_t now_ns)
{
    double rate = l->c->rate_limit_rps, burst = l->c->rate_limit_burst;
    for (size_t i = 0; i < l->n_buckets;) {
        const struct limits_bucket *b = &l->buckets[i];
        if (rate <= 0 || b->tokens + (double)(now_ns - b->t_ns) / 1e9 * rate >= burst)
            l->buckets[i] = l->buckets[--l->n_buckets];
        else
            i++;
    }
}
