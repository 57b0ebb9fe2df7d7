/* zsock.c — see zsock.h. */
#include "zsock.h"
#include "err.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define IPC_PREFIX     "ipc://"
#define IPC_PREFIX_LEN 6
#define IPC_PATH_MAX   (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)

/* errno of a failed zmq call as a rill error. */
static int zerr(void)
{
    switch (errno) {
    case EAGAIN:
    case EINTR:
        return RILL_E_AGAIN;
    case EHOSTUNREACH:
        return RILL_E_PEER_DEAD;
    case ETERM:
        return RILL_E_SHUTTING_DOWN;
    default:
        return RILL_E_IO;
    }
}

/* --- contexts and sockets ----------------------------------------------------------- */

int zs_ctx_new(void **out)
{
    void *ctx = zmq_ctx_new();
    if (!ctx)
        return RILL_E_IO;
    zmq_ctx_set(ctx, ZMQ_BLOCKY, 0);
    *out = ctx;
    return 0;
}

void zs_ctx_term(void **ctx)
{
    if (!ctx || !*ctx)
        return;
    while (zmq_ctx_term(*ctx) == -1 && errno == EINTR)
        ;
    *ctx = NULL;
}

static int set_int(void *s, int opt, int v)
{
    return zmq_setsockopt(s, opt, &v, sizeof v);
}

static int socket_new(void *ctx, int type, void **out)
{
    void *s = zmq_socket(ctx, type);
    if (!s)
        return zerr();
    int64_t maxmsg = ZS_MAX_MSG;
    if (set_int(s, ZMQ_LINGER, 0) < 0 || set_int(s, ZMQ_SNDHWM, ZS_HWM) < 0 ||
        set_int(s, ZMQ_RCVHWM, ZS_HWM) < 0 ||
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) < 0)
        goto err;
    *out = s;
    return 0;
err:;
    int rc = zerr();
    zmq_close(s);
    return rc;
}

int zs_router(void *ctx, void **out)
{
    void *s;
    int rc = socket_new(ctx, ZMQ_ROUTER, &s);
    if (rc < 0)
        return rc;
    if (set_int(s, ZMQ_ROUTER_MANDATORY, 1) < 0 || set_int(s, ZMQ_ROUTER_HANDOVER, 1) < 0) {
        rc = zerr();
        zmq_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

int zs_dealer(void *ctx, const struct zs_id *id, bool immediate, void **out)
{
    if (id && (id->len == 0 || id->bytes[0] == 0))
        return RILL_E_BAD_CONFIG;
    void *s;
    int rc = socket_new(ctx, ZMQ_DEALER, &s);
    if (rc < 0)
        return rc;
    if ((id && zmq_setsockopt(s, ZMQ_ROUTING_ID, id->bytes, id->len) < 0) ||
        (immediate && set_int(s, ZMQ_IMMEDIATE, 1) < 0)) {
        rc = zerr();
        zmq_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

void zs_close(void **sock)
{
    if (!sock || !*sock)
        return;
    zmq_close(*sock);
    *sock = NULL;
}

/* --- endpoints -------------------------------------------------------------------- */

/* The filesystem path of an ipc:// endpoint, or NULL for other transports
 * and abstract (@) or wildcard (*) ipc endpoints. */
static const char *ipc_path(const char *endpoint)
{
    if (strncmp(endpoint, IPC_PREFIX, IPC_PREFIX_LEN) != 0)
        return NULL;
    const char *p = endpoint + IPC_PREFIX_LEN;
    return (*p == '@' || strcmp(p, "*") == 0) ? NULL : p;
}

/* Whether a process accepts connections on the unix socket at `path`.  A
 * file nobody listens on (its owner died) refuses: ECONNREFUSED. */
static bool ipc_listening(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    bool live = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return live;
}

int zs_bind(void *sock, const char *endpoint)
{
    const char *path = ipc_path(endpoint);
    if (!path) {
        if (zmq_bind(sock, endpoint) == 0)
            return 0;
        goto fail;
    }

    if (strlen(path) == 0 || strlen(path) > IPC_PATH_MAX)
        return RILL_E_BAD_CONFIG;
    /* Between this check and the bind another process may still win the
     * race; the check is against the common mistake (two workers with one
     * id), not against an adversary. */
    if (ipc_listening(path)) {
        rlog_error("zsock: %s is in use by a live process", endpoint);
        return RILL_E_EXISTS;
    }
    /* umask so the file is never, even briefly, connectable by others; the
     * chmod pins 0600 exactly (bind(2) makes 0777 & ~umask = 0700). */
    mode_t old = umask(077);
    int rc = zmq_bind(sock, endpoint);
    int saved = errno;
    umask(old);
    if (rc < 0) {
        errno = saved;
        goto fail;
    }
    if (chmod(path, 0600) < 0) {
        saved = errno;
        rlog_error("zsock: chmod 0600 %s: %s", path, strerror(saved));
        zmq_unbind(sock, endpoint);
        errno = saved;
        return RILL_E_IO;
    }
    return 0;

fail:;
    int e = errno;
    rlog_error("zsock: bind %s: %s", endpoint, zmq_strerror(e));
    errno = e;
    switch (e) {
    case EADDRINUSE:
        return RILL_E_EXISTS;
    case EINVAL:
    case EPROTONOSUPPORT:
    case ENODEV:
    case EADDRNOTAVAIL:
        return RILL_E_BAD_CONFIG;
    default:
        return zerr();
    }
}

int zs_connect(void *sock, const char *endpoint)
{
    const char *path = ipc_path(endpoint);
    if (path && (strlen(path) == 0 || strlen(path) > IPC_PATH_MAX))
        return RILL_E_BAD_CONFIG;
    if (zmq_connect(sock, endpoint) == 0)
        return 0;
    int e = errno;
    rlog_error("zsock: connect %s: %s", endpoint, zmq_strerror(e));
    errno = e;
    return (e == EINVAL || e == EPROTONOSUPPORT) ? RILL_E_BAD_CONFIG : zerr();
}

int zs_endpoint_ipc(char *buf, size_t cap, const char *run_dir, const char *file)
{
    int n = snprintf(buf, cap, IPC_PREFIX "%s/%s", run_dir, file);
    if (n < 0)
        return RILL_E_IO;
    if ((size_t)n - IPC_PREFIX_LEN > IPC_PATH_MAX)
        return RILL_E_BAD_CONFIG;
    if ((size_t)n >= cap)
        return RILL_E_TOO_LARGE;
    return 0;
}

int zs_last_endpoint(void *sock, char *buf, size_t cap)
{
    size_t len = cap;
    if (zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, buf, &len) < 0)
        return errno == EINVAL ? RILL_E_TOO_LARGE : zerr();
    return 0;
}

/* --- messages ----------------------------------------------------------------------- */

/* Read and drop the rest of a multipart message.  A message arrives whole or
 * not at all, so once its first frame is in, the others are there and these
 * receives never block. */
static void drain_rest(void *sock)
{
    zmq_msg_t part;
    int more = 1;
    zmq_msg_init(&part);
    while (more) {
        if (zmq_msg_recv(&part, sock, 0) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        more = zmq_msg_more(&part);
    }
    zmq_msg_close(&part);
}

int zs_send(void *dealer, const void *buf, size_t len, int flags)
{
    return zmq_send(dealer, buf, len, flags & ZMQ_DONTWAIT) < 0 ? zerr() : 0;
}

int zs_recv(void *dealer, zmq_msg_t *payload, int flags)
{
    zmq_msg_init(payload);
    if (zmq_msg_recv(payload, dealer, flags & ZMQ_DONTWAIT) < 0) {
        int rc = zerr();
        zmq_msg_close(payload);
        return rc;
    }
    if (zmq_msg_more(payload)) {
        drain_rest(dealer);
        zmq_msg_close(payload);
        return RILL_E_BAD_FORMAT;
    }
    return 0;
}

int zs_router_send(void *router, const struct zs_id *to, const void *buf, size_t len, int flags)
{
    flags &= ZMQ_DONTWAIT;
    if (to->len == 0)
        return RILL_E_BAD_CONFIG;
    /* The identity frame is where ROUTER_MANDATORY decides (unknown peer,
     * full peer); once it is accepted the payload frame goes to that pipe. */
    if (zmq_send(router, to->bytes, to->len, flags | ZMQ_SNDMORE) < 0)
        return zerr();
    if (zmq_send(router, buf, len, flags) < 0) {
        int e = errno;
        rlog_error("zsock: payload frame after identity failed: %s", zmq_strerror(e));
        errno = e;
        return zerr() == RILL_E_SHUTTING_DOWN ? RILL_E_SHUTTING_DOWN : RILL_E_IO;
    }
    return 0;
}

int zs_router_recv(void *router, struct zs_id *from, zmq_msg_t *payload, int flags)
{
    zmq_msg_t idm;
    zmq_msg_init(&idm);
    if (zmq_msg_recv(&idm, router, flags & ZMQ_DONTWAIT) < 0) {
        int rc = zerr();
        zmq_msg_close(&idm);
        return rc;
    }
    size_t idlen = zmq_msg_size(&idm);
    int more = zmq_msg_more(&idm);
    /* A ROUTER always prepends a 1..255-byte identity. */
    from->len = (uint8_t)(idlen <= ZS_ID_MAX ? idlen : ZS_ID_MAX);
    memcpy(from->bytes, zmq_msg_data(&idm), from->len);
    zmq_msg_close(&idm);
    if (!more)
        return RILL_E_BAD_FORMAT; /* [identity] alone: an empty message */

    zmq_msg_init(payload);
    if (zmq_msg_recv(payload, router, 0) < 0) {
        int rc = zerr();
        zmq_msg_close(payload);
        return rc;
    }
    if (zmq_msg_more(payload)) {
        drain_rest(router);
        zmq_msg_close(payload);
        return RILL_E_BAD_FORMAT;
    }
    return 0;
}

/* --- event-loop integration ------------------------------------------------------- */

int zs_fd(void *sock, int *fd)
{
    size_t len = sizeof *fd;
    return zmq_getsockopt(sock, ZMQ_FD, fd, &len) < 0 ? zerr() : 0;
}

static int events_of(void *sock)
{
    int ev = 0;
    size_t len = sizeof ev;
    /* EINTR: the signal interrupted command processing; ask again. */
    while (zmq_getsockopt(sock, ZMQ_EVENTS, &ev, &len) < 0) {
        if (errno != EINTR)
            return 0;
        len = sizeof ev;
    }
    return ev;
}

bool zs_readable(void *sock) { return events_of(sock) & ZMQ_POLLIN; }

bool zs_writable(void *sock) { return events_of(sock) & ZMQ_POLLOUT; }

void zs_poll_init(struct zs_poll *p) { p->n = 0; }

int zs_poll_add(struct zs_poll *p, void *sock, int fd, short events)
{
    if (p->n >= ZS_POLL_MAX)
        return RILL_E_FULL;
    p->items[p->n] = (zmq_pollitem_t){.socket = sock, .fd = sock ? -1 : fd, .events = events};
    return p->n++;
}

int zs_poll_wait(struct zs_poll *p, long timeout_ms)
{
    for (int i = 0; i < p->n; i++)
        p->items[i].revents = 0;
    int n = zmq_poll(p->items, p->n, timeout_ms);
    if (n >= 0)
        return n;
    if (errno == EINTR)
        return 0;
    return errno == ETERM ? RILL_E_SHUTTING_DOWN : RILL_E_IO;
}

short zs_poll_revents(const struct zs_poll *p, int index)
{
    return (index >= 0 && index < p->n) ? p->items[index].revents : 0;
}

/* --- identities ----------------------------------------------------------------------- */

int zs_id_set(struct zs_id *id, const void *bytes, size_t len)
{
    if (len == 0)
        return RILL_E_BAD_CONFIG;
    if (len > ZS_ID_MAX)
        return RILL_E_TOO_LARGE;
    id->len = (uint8_t)len;
    memcpy(id->bytes, bytes, len);
    return 0;
}

int zs_id_from_str(struct zs_id *id, const char *s) { return zs_id_set(id, s, strlen(s)); }

bool zs_id_eq(const struct zs_id *a, const struct zs_id *b)
{
    return a->len == b->len && memcmp(a->bytes, b->bytes, a->len) == 0;
}

const char *zs_id_str(const struct zs_id *id, char *buf, size_t cap)
{
    if (cap == 0)
        return buf;
    bool printable = id->len > 0;
    for (unsigned i = 0; i < id->len; i++)
        if (id->bytes[i] < 0x20 || id->bytes[i] > 0x7e)
            printable = false;
    if (printable) {
        snprintf(buf, cap, "%.*s", (int)id->len, (const char *)id->bytes);
        return buf;
    }
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (cap > 2) {
        buf[o++] = '0';
        buf[o++] = 'x';
    }
    for (unsigned i = 0; i < id->len && o + 2 < cap; i++) {
        buf[o++] = hex[id->bytes[i] >> 4];
        buf[o++] = hex[id->bytes[i] & 15];
    }
    buf[o] = '\0';
    return buf;
}
