/* zsock.h — ZeroMQ helpers for rill's request and control planes (libzmq 4.3).
 *
 * The pattern (DESIGN.md): a server binds a ROUTER, each client connects a
 * DEALER.  A DEALER sends and receives one-frame messages [payload]; the
 * ROUTER sees [identity, payload] and answers by identity.  The payload is one
 * msgpack document; this part never looks inside it.
 *
 * Socket options, set on every socket made here:
 *   ZMQ_LINGER 0          a dead or slow peer never blocks zmq_close() or
 *                         zmq_ctx_term(); unsent messages are dropped on close
 *                         (the planes above resend what matters).
 *   ZMQ_SNDHWM/RCVHWM     ZS_HWM messages per peer, each way.
 *   ZMQ_MAXMSGSIZE        ZS_MAX_MSG: a peer sending more is disconnected
 *                         rather than allowed to make us allocate it.
 * ROUTERs add ZMQ_ROUTER_MANDATORY (a send to an identity that is not
 * connected fails with RILL_E_PEER_DEAD instead of vanishing, and a full
 * peer gives RILL_E_AGAIN instead of a silent drop) and ZMQ_ROUTER_HANDOVER
 * (a restarted peer that reconnects with the same identity takes it over
 * from its dead predecessor's connection).  DEALERs may add ZMQ_IMMEDIATE:
 * messages only queue on completed connections, so sending with nobody at
 * the other end gives RILL_E_AGAIN (with ZS_DONTWAIT) instead of piling up
 * for a peer that may never come; use it where "no worker" must be known at
 * once (gateway -> worker), not where the peer is expected to come up later.
 *
 * Errors: RILL_E_AGAIN (nothing to receive, or the peer's queue is full, with
 * ZS_DONTWAIT; also a blocking call interrupted by a signal), RILL_E_PEER_DEAD
 * (ROUTER: no such peer), RILL_E_BAD_FORMAT (a message with the wrong number
 * of frames: it has been consumed whole), RILL_E_SHUTTING_DOWN (the context
 * was terminated), RILL_E_BAD_CONFIG (bad endpoint or identity), RILL_E_EXISTS
 * (endpoint in use), RILL_E_TOO_LARGE, RILL_E_IO (anything else; errno kept).
 *
 * Event loops: ZMQ_FD (zs_fd()) is not a level-triggered "readable" fd.  It
 * becomes readable when the socket *may* have changed state, and any zmq call
 * on the socket (recv, send, ZMQ_EVENTS) may consume that signal.  The rule:
 *   1. poll()/epoll the fd for POLLIN (never POLLOUT);
 *   2. when it fires, drain: while (zs_readable(s)) receive with ZS_DONTWAIT;
 *   3. after every send on the socket (a reply while draining, say), check
 *      zs_readable() again before sleeping: the send may have eaten the edge
 *      for messages that arrived meanwhile, and poll() would not wake again.
 * Stop draining only when zs_readable() is false.  A spurious wake-up (fd
 * readable, nothing to read) is normal; reading ZMQ_EVENTS re-arms the fd.
 *
 * Threads: a zmq socket belongs to one thread at a time, and so do these
 * calls on it.  The context is thread-safe.  After fork(), the child must not
 * touch the parent's context or sockets (not even to close them): it makes
 * its own with zs_ctx_new().
 */
#ifndef RILL_ZSOCK_H
#define RILL_ZSOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#define ZS_HWM          10000             /* messages queued per peer, each way */
#define ZS_MAX_MSG      (16ll << 20)      /* largest message accepted, bytes */
#define ZS_ID_MAX       255               /* zmq's limit on a routing id */
#define ZS_ENDPOINT_MAX 128               /* "ipc://" + a 107-byte socket path + NUL */
#define ZS_ID_STR_MAX   (2 * ZS_ID_MAX + 4)
#define ZS_POLL_MAX     16
#define ZS_DONTWAIT     ZMQ_DONTWAIT

/* A ROUTER peer's identity: 1..255 opaque bytes. */
struct zs_id {
    uint8_t len;
    uint8_t bytes[ZS_ID_MAX];
};

/* --- contexts and sockets ----------------------------------------------------------- */

/* A new context (ZMQ_BLOCKY off, so even a socket made elsewhere without
 * linger cannot hang zs_ctx_term()).  RILL_E_IO on failure. */
int zs_ctx_new(void **out);

/* Terminate *ctx (every socket must be closed first, or this waits for them)
 * and set it to NULL.  Retries on EINTR.  NULL or *ctx == NULL is ignored. */
void zs_ctx_term(void **ctx);

/* A ROUTER with the options above.  Close with zs_close(). */
int zs_router(void *ctx, void **out);

/* A DEALER with the options above.  `id` (may be NULL: zmq then makes one up)
 * is the identity the ROUTER will see: 1..255 bytes, not starting with a zero
 * byte (zmq keeps those for generated ids) — RILL_E_BAD_CONFIG otherwise.
 * `immediate` sets ZMQ_IMMEDIATE. */
int zs_dealer(void *ctx, const struct zs_id *id, bool immediate, void **out);

/* Close *sock at once (linger 0) and set it to NULL.  NULL is ignored. */
void zs_close(void **sock);

/* --- endpoints -------------------------------------------------------------------- */

/* Bind to `endpoint` ("ipc://path", "tcp://host:port", "tcp://127.0.0.1:*"...).
 * For a filesystem ipc:// endpoint:
 *  - a socket file someone still listens on gives RILL_E_EXISTS (libzmq would
 *    silently unlink it and steal the address from a live process); a stale
 *    file left by a dead process is replaced;
 *  - the socket file is created with umask 077 and then chmod()ed to 0600, so
 *    only our uid can connect.  umask is process-wide: bind during start-up,
 *    before other threads create files (they would only get a stricter mode);
 *  - a path longer than a sockaddr_un allows is RILL_E_BAD_CONFIG.
 * Abstract ipc://@name endpoints have no file and no mode. */
int zs_bind(void *sock, const char *endpoint);

/* Connect to `endpoint`.  Returns at once: the connection is made (and
 * remade after a peer restarts) in the background. */
int zs_connect(void *sock, const char *endpoint);

/* "ipc://<run_dir>/<file>" into buf.  RILL_E_TOO_LARGE if buf is too small,
 * RILL_E_BAD_CONFIG if the path does not fit a unix socket address. */
int zs_endpoint_ipc(char *buf, size_t cap, const char *run_dir, const char *file);

/* The endpoint the socket last bound (with the real port for tcp://...:*). */
int zs_last_endpoint(void *sock, char *buf, size_t cap);

/* --- messages ----------------------------------------------------------------------- */

/* DEALER: send [buf, len] as one frame (copied).  flags: 0 or ZS_DONTWAIT. */
int zs_send(void *dealer, const void *buf, size_t len, int flags);

/* DEALER: receive one single-frame message into *payload (uninitialized
 * storage).  On 0, *payload is initialized and the caller owns it: read it
 * with zmq_msg_data()/zmq_msg_size(), release it with zmq_msg_close().  On
 * error nothing needs releasing; a multi-frame message has been drained and
 * gives RILL_E_BAD_FORMAT. */
int zs_recv(void *dealer, zmq_msg_t *payload, int flags);

/* ROUTER: send [buf, len] to peer `to` (the payload is copied).  Event loops
 * should pass ZS_DONTWAIT: with ROUTER_MANDATORY a blocking send to a full
 * peer waits for it.  RILL_E_PEER_DEAD for a peer that is not (or no longer)
 * connected.  libzmq drops a disconnected peer from the ROUTER when a receive
 * on the ROUTER reaches the end of that peer's stream: until then a dead
 * peer whose queue was full still answers RILL_E_AGAIN.  A loop that drains
 * its ROUTER (as it must, see above) sees RILL_E_PEER_DEAD within a
 * millisecond or so of the peer's death on ipc://. */
int zs_router_send(void *router, const struct zs_id *to, const void *buf, size_t len, int flags);

/* ROUTER: receive [identity, payload].  *from is set whenever a message was
 * read, even a malformed one (so the caller can answer bad_request); the
 * payload is as for zs_recv().  Any other frame count: drained, *from set,
 * RILL_E_BAD_FORMAT. */
int zs_router_recv(void *router, struct zs_id *from, zmq_msg_t *payload, int flags);

/* --- event-loop integration ------------------------------------------------------- */

/* The socket's ZMQ_FD into *fd (see the rule above).  The fd belongs to the
 * socket: never read, write or close it. */
int zs_fd(void *sock, int *fd);

/* Whether a whole message can be received now (ZMQ_EVENTS & ZMQ_POLLIN).
 * False also when the socket is unusable (context terminated). */
bool zs_readable(void *sock);

/* Whether a message can be sent now without blocking (ZMQ_POLLOUT). */
bool zs_writable(void *sock);

/* A set of up to ZS_POLL_MAX zmq sockets and plain fds for zmq_poll(). */
struct zs_poll {
    int n;
    zmq_pollitem_t items[ZS_POLL_MAX];
};

void zs_poll_init(struct zs_poll *p);

/* Watch a zmq socket (fd ignored) or, when sock is NULL, a plain fd, for
 * `events` (ZMQ_POLLIN, ZMQ_POLLOUT, ZMQ_POLLERR for fds).  Returns its index
 * (>= 0), or RILL_E_FULL. */
int zs_poll_add(struct zs_poll *p, void *sock, int fd, short events);

/* Wait up to timeout_ms (< 0: for ever, 0: just look).  Returns how many
 * items are ready (0 on timeout or when a signal interrupted the wait), or
 * RILL_E_SHUTTING_DOWN / RILL_E_IO.  zmq_poll is level-triggered for zmq
 * sockets: a socket with a message waiting is ready on every call. */
int zs_poll_wait(struct zs_poll *p, long timeout_ms);

/* The events item `index` got in the last zs_poll_wait(). */
short zs_poll_revents(const struct zs_poll *p, int index);

/* --- identities ----------------------------------------------------------------------- */

/* Copy `len` bytes (1..255) into *id; RILL_E_TOO_LARGE or RILL_E_BAD_CONFIG
 * (len 0). */
int zs_id_set(struct zs_id *id, const void *bytes, size_t len);

/* zs_id_set() with a C string ("w0", "gw1"). */
int zs_id_from_str(struct zs_id *id, const char *s);

bool zs_id_eq(const struct zs_id *a, const struct zs_id *b);

/* A printable form for logs into buf (ZS_ID_STR_MAX bytes are always
 * enough): the bytes themselves when they are all printable ASCII, else
 * "0x" and hex.  Returns buf. */
const char *zs_id_str(const struct zs_id *id, char *buf, size_t cap);

#endif
