/* limits.h — who may connect and how much: API keys (compared in constant
 * time, never logged), allowed origins and Host names, connections per IP,
 * requests per second per key or IP (token bucket).
 *
 * Service thread only.  Sizes are bounded: max_connections for the IP
 * table, and buckets are pruned once refilled.
 */
#ifndef RILL_LIMITS_H
#define RILL_LIMITS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/config.h"

struct limits_bucket {
    char key[72];
    double tokens;
    uint64_t t_ns;
};

struct limits_ip {
    char ip[48];
    uint32_t n;
};

struct limits {
    const struct rill_config *c;
    const char *host;            /* the address the gateway listens on */
    int port;                    /* and its port */
    char **keys;
    size_t n_keys;
    char **origins;
    size_t n_origins;
    bool any_origin;
    char **hosts;                /* Host names clients may use (empty: any) */
    size_t n_hosts;
    bool any_host;
    struct limits_bucket *buckets;
    size_t n_buckets, cap_buckets;
    struct limits_ip *ips;
    size_t n_ips, cap_ips;
    uint32_t n_conns;            /* connections counted by limits_ip_acquire */
};

/* Split the configured lists (api_keys, api_keys_file, allowed_origins,
 * allowed_hosts).  RILL_E_IO (keys file unreadable), RILL_E_NOMEM.  Call
 * limits_fini() whatever it returns. */
int limits_init(struct limits *l, const struct rill_config *c, const char *host, int port);
void limits_fini(struct limits *l);
/* Whether `key` opens the gateway (any, or none, when no keys are set). */
bool limits_key_ok(const struct limits *l, const char *key);
bool limits_origin_ok(const struct limits *l, const char *origin, const char *host);
/* The Host header names this gateway (allowed_hosts, or the loopback names
 * by default when bound to loopback). */
bool limits_host_ok(const struct limits *l, const char *host);
bool limits_is_loopback(const char *host);
/* Count a connection from ip; false past max_connections in all or
 * max_connections_per_ip from it. */
bool limits_ip_acquire(struct limits *l, const char *ip);
void limits_ip_release(struct limits *l, const char *ip);
/* Take one token from the bucket of `key`; false when empty (rate limited). */
bool limits_rate_ok(struct limits *l, const char *key, uint64_t now_ns);
/* Forget buckets that have refilled (their state is the default again). */
void limits_prune(struct limits *l, uint64_t now_ns);
/* A short non-reversible name for a key, for buckets and logs. */
void limits_key_name(const char *key, char *out, size_t n);

#endif
