/* wsconf.c — see wsconf.h: RFC 6455 rules lws 4.1 leaves to its user.
 *
 * Per connection (indexed by socket descriptor, used on the lws service
 * thread only) the client's byte stream goes through three states:
 *   HEAD     the HTTP request head, scanned for its end and its
 *            Sec-WebSocket-Key;
 *   OBSERVE  after the head, frames followed but nothing held back: the
 *            upgrade is not confirmed yet (ESTABLISHED), so these may still
 *            be HTTP bytes;
 *   ENFORCE  after ESTABLISHED, when the upgrade was the connection's first
 *            request (lws's key is the one in the first head): frames that
 *            break a rule are taken out of the stream.
 * Anything else (an upgrade after other requests on the connection, a head
 * we cannot read) is UNTRACKED: only the checks that need no frame headers
 * (Close payloads, UTF-8) apply to it.  Being wrong about where frames start
 * could only ever close the connection that confused us.
 */
#include "wsconf.h"
#include "common/log.h"
#include "common/utf8.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

enum { OP_CLOSE = 0x8 };

/* --- Close payloads and UTF-8 ------------------------------------------------------------------ */

static bool close_code_ok(unsigned code)
{
    /* 7.4.1 and the IANA registry (1012-1014 were registered after the
     * RFC); 1004-1006 and 1015 must never be sent; 3000-4999 belong to
     * libraries and applications.  lws 4.1 rewrites 1012-1015 and
     * 1016-2999 to 1002 before we see them. */
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

int wsconf_close_verdict(const uint8_t *p, size_t n)
{
    if (n == 0)
        return 0;
    if (n == 1 || !close_code_ok((unsigned)p[0] << 8 | p[1]))
        return LWS_CLOSE_STATUS_PROTOCOL_ERR;
    if (utf8_valid_prefix((const char *)p + 2, n - 2) != n - 2)
        return LWS_CLOSE_STATUS_INVALID_PAYLOAD;
    return 0;
}

bool wsconf_utf8_feed(struct wsconf_utf8 *u, const uint8_t *p, size_t n, bool final)
{
    size_t i = 0;
    if (!n)
        return !(final && u->n_held);
    if (u->n_held) {
        /* Finish the held character with the first bytes of this piece. */
        uint8_t c[4];
        size_t k = u->n_held;
        memcpy(c, u->held, k);
        while (k < 4 && i < n)
            c[k++] = p[i++];
        int r = utf8_scan(c, k);
        if (r < 0)
            return false;
        if (r == 0) { /* still unfinished: the piece was shorter than the rest of it */
            memcpy(u->held, c, k);
            u->n_held = (uint8_t)k;
            return !final;
        }
        i = (size_t)r - u->n_held;
        u->n_held = 0;
    }
    size_t v = i + utf8_valid_prefix((const char *)p + i, n - i);
    if (v == n)
        return true;
    /* What is left is either invalid or the start of a character that the
     * next piece finishes (utf8_scan says 0 only if it runs to the end). */
    if (utf8_scan(p + v, n - v) != 0 || final)
        return false;
    assert(n - v < 4);
    memcpy(u->held, p + v, n - v);
    u->n_held = (uint8_t)(n - v);
    return true;
}

/* --- frame headers ---------------------------------------------------------------------------- */

/* The header's length, once its second byte is known. */
static size_t hdr_need(const struct wsconf_frames *f)
{
    if (f->hdr_n < 2)
        return 2;
    uint8_t len7 = f->hdr[1] & 0x7f;
    return 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + (f->hdr[1] & 0x80 ? 4 : 0);
}

static uint64_t hdr_payload_len(const struct wsconf_frames *f)
{
    uint8_t len7 = f->hdr[1] & 0x7f;
    if (len7 < 126)
        return len7;
    uint64_t v = 0;
    for (int k = 0; k < (len7 == 126 ? 2 : 8); k++)
        v = v << 8 | f->hdr[2 + k];
    return v;
}

/* The rules of a whole header that lws does not check (or checks by
 * dropping the connection without a Close frame). */
static uint16_t hdr_verdict(const struct wsconf_frames *f, const char **why)
{
    uint8_t op = f->hdr[0] & 0x0f, len7 = f->hdr[1] & 0x7f, rsv = f->hdr[0] & 0x70;
    /* lws refuses reserved bits itself, but its parser is then out of step
     * and does not see the client's Close: the connection hangs for 5 s. */
    if ((rsv & 0x30) || (rsv && (!f->rsv1_ok || (op != 0x1 && op != 0x2)))) {
        *why = "reserved bits set"; /* 5.2; RFC 7692 6.1: RSV1 on a message's first frame only */
        return LWS_CLOSE_STATUS_PROTOCOL_ERR;
    }
    if (!(f->hdr[1] & 0x80)) {
        *why = "client frame not masked"; /* 5.1 */
        return LWS_CLOSE_STATUS_PROTOCOL_ERR;
    }
    if (op == OP_CLOSE && len7 == 1) {
        *why = "close frame with a 1-byte body"; /* 5.5.1: a body starts with a 2-byte code */
        return LWS_CLOSE_STATUS_PROTOCOL_ERR;
    }
    if ((op & 0x8) && len7 > 125) {
        *why = "control frame over 125 bytes"; /* 5.5 */
        return LWS_CLOSE_STATUS_PROTOCOL_ERR;
    }
    if (len7 == 127 && (f->hdr[2] & 0x80)) {
        *why = "frame length has its top bit set"; /* 5.2 */
        return LWS_CLOSE_STATUS_PROTOCOL_ERR;
    }
    return 0;
}

size_t wsconf_frames_feed(struct wsconf_frames *f, uint8_t *b, size_t n, bool enforce, size_t *held)
{
    size_t i = 0, out = 0;
    *held = 0;
    while (i < n) {
        if (f->left) {
            size_t k = f->left < n - i ? (size_t)f->left : n - i;
            if (!f->drop) {
                if (out != i)
                    memmove(b + out, b + i, k);
                out += k;
            }
            i += k;
            f->left -= k;
            continue;
        }
        /* A header: its first bytes may have gone on in an earlier call
         * (only while observing), and then it cannot be held back. */
        size_t start = i;
        bool begun = f->hdr_n > 0;
        while (i < n && f->hdr_n < hdr_need(f))
            f->hdr[f->hdr_n++] = b[i++];
        if (f->hdr_n < hdr_need(f)) {
            if (enforce && !begun) {
                *held = i - start;
                f->hdr_n = 0; /* read again from the front of the next bytes */
            } else {
                if (out != start)
                    memmove(b + out, b + start, i - start);
                out += i - start;
            }
            break;
        }
        const char *why = NULL;
        uint16_t code = hdr_verdict(f, &why);
        if (code && !f->bad) {
            f->bad = code;
            f->why = why;
        }
        /* After a broken rule only the client's Close goes on (lws is
         * waiting for it once it has sent its own). */
        f->drop = enforce && f->bad && (code || (f->hdr[0] & 0x0f) != OP_CLOSE);
        f->left = hdr_payload_len(f);
        f->hdr_n = 0;
        if (!f->drop) {
            if (out != start)
                memmove(b + out, b + start, i - start);
            out += i - start;
        }
    }
    assert(out + *held <= n);
    return out;
}

/* --- connections ---------------------------------------------------------------------------- */

enum conn_state { ST_NONE, ST_HEAD, ST_OBSERVE, ST_ENFORCE, ST_UNTRACKED };

struct conn {
    uint8_t state;          /* enum conn_state */
    /* HEAD: the request head as it streams by */
    uint8_t line_len;       /* characters on the current line (capped), CR not counted */
    uint8_t name_at;        /* characters of "sec-websocket-key:" matched from the line start */
    bool in_key, key_done, key_bad;
    uint8_t key_n;
    char key[32];           /* the Sec-WebSocket-Key (24 characters of base64) */
    /* frames */
    struct wsconf_frames fr;
    uint8_t held[WSCONF_HDR_MAX];
    uint8_t n_held;
    bool bad_seen_by_lws;   /* the bad frame went to lws (seen while observing) */
    uint16_t fail_code;     /* lws was asked to close with this code (0: not) */
    const char *fail_why;
    struct wsconf_utf8 u8;
    struct lws *wsi;
};

static struct conn *conns; /* by descriptor; the service thread's only */
static size_t n_conns;
static _Thread_local bool on_service_thread;

static struct conn *conn_of(int fd)
{
    return fd >= 0 && (size_t)fd < n_conns && conns[fd].state != ST_NONE ? &conns[fd] : NULL;
}

static void conn_accepted(int fd)
{
    if (fd < 0)
        return;
    if ((size_t)fd >= n_conns) {
        size_t n = n_conns ? n_conns : 256;
        while (n <= (size_t)fd)
            n *= 2;
        struct conn *c = realloc(conns, n * sizeof *c);
        if (!c)
            return; /* this connection goes unchecked */
        memset(c + n_conns, 0, (n - n_conns) * sizeof *c);
        conns = c;
        n_conns = n;
    }
    memset(&conns[fd], 0, sizeof conns[fd]);
    conns[fd].state = ST_HEAD;
}

/* Follow the request head; returns where it ends in b (n if it does not). */
static size_t head_feed(struct conn *c, const uint8_t *b, size_t n)
{
    static const char name[] = "sec-websocket-key:";
    for (size_t i = 0; i < n; i++) {
        uint8_t ch = b[i];
        if (ch == '\n') {
            if (!c->line_len) {
                c->state = c->key_n && !c->key_bad ? ST_OBSERVE : ST_UNTRACKED;
                return i + 1;
            }
            c->line_len = 0;
            c->name_at = 0;
            if (c->in_key)
                c->in_key = false, c->key_done = true;
            continue;
        }
        if (ch == '\r')
            continue;
        if (c->line_len < 255)
            c->line_len++;
        if (c->in_key) {
            if (ch == ' ' || ch == '\t') {
                if (c->key_n)
                    c->in_key = false, c->key_done = true;
            } else if (c->key_n < sizeof c->key) {
                c->key[c->key_n++] = (char)ch;
            } else {
                c->key_bad = true;
            }
            continue;
        }
        if (c->name_at + 1 == c->line_len && c->name_at < sizeof name - 1 && tolower(ch) == name[c->name_at]) {
            if (++c->name_at == sizeof name - 1) {
                if (c->key_done || c->key_n)
                    c->key_bad = true; /* two keys: lws and we might read different ones */
                c->in_key = true;
            }
        }
    }
    return n;
}

/* Ask lws to close with `code`: at the next writable callback
 * wsconf_callback says -1 (lws then sends the Close and drops the TCP
 * connection at once, where a -1 from the receive callback would have it
 * wait 5 s for the client's reply). */
static void conn_fail(struct conn *c, uint16_t code, const char *why)
{
    if (c->fail_code || !c->wsi)
        return;
    c->fail_code = code;
    c->fail_why = why;
    rlog_debug("websocket: failing a connection with %u (%s)", code, why);
    lws_close_reason(c->wsi, (enum lws_close_status)code, (unsigned char *)why, strlen(why));
    lws_callback_on_writable(c->wsi);
    /* In case the client stopped reading and no writable callback comes. */
    lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, 5);
}

/* Hand over held bytes first, then read. */
static ssize_t read_untracked(struct conn *c, int fd, void *buf, size_t len, int flags)
{
    if (c && c->n_held && len) {
        size_t k = c->n_held < len ? c->n_held : len;
        memcpy(buf, c->held, k);
        memmove(c->held, c->held + k, c->n_held - k);
        c->n_held = (uint8_t)(c->n_held - k);
        return (ssize_t)k;
    }
    return recvfrom(fd, buf, len, flags, NULL, NULL);
}

/* libc's recv(), for everyone but lws reading our WebSocket connections
 * (libzmq's threads call it too: the thread-local flag keeps them out). */
ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    struct conn *c = on_service_thread && !flags ? conn_of(fd) : NULL;
    if (!c || c->state == ST_UNTRACKED || len <= WSCONF_HDR_MAX) {
        if (c && c->state != ST_UNTRACKED) /* lws never asks for so little: stop checking */
            c->state = ST_UNTRACKED;
        return read_untracked(c, fd, buf, len, flags);
    }
    uint8_t *b = buf;
    size_t have = c->n_held;
    memcpy(b, c->held, have);
    ssize_t r = recvfrom(fd, b + have, len - have, 0, NULL, NULL);
    if (r < 0 && have)
        return -1; /* the held bytes stay held */
    if (r <= 0)
        return r; /* at the end, an unfinished header is of no use */
    c->n_held = 0;
    size_t n = have + (size_t)r, at = 0, held;
    if (c->state == ST_HEAD)
        at = head_feed(c, b, n);
    if (c->state == ST_OBSERVE && at < n) {
        /* Not confirmed yet as WebSocket: everything goes on. */
        wsconf_frames_feed(&c->fr, b + at, n - at, false, &held);
        return (ssize_t)n;
    }
    if (c->state != ST_ENFORCE)
        return (ssize_t)n;
    size_t out = wsconf_frames_feed(&c->fr, b, n, true, &held);
    memcpy(c->held, b + n - held, held);
    c->n_held = (uint8_t)held;
    if (c->fr.bad)
        conn_fail(c, c->fr.bad, c->fr.why);
    if (!out) {
        errno = EAGAIN; /* all held back or dropped: nothing for lws yet */
        return -1;
    }
    return (ssize_t)out;
}

static void conn_established(struct conn *c, struct lws *wsi)
{
    c->wsi = wsi;
    char key[sizeof c->key + 2];
    int n = lws_hdr_copy(wsi, key, sizeof key, WSI_TOKEN_KEY);
    /* The first head's key is lws's: the frames start right after it. */
    if (c->state == ST_OBSERVE && n > 0 && (size_t)n == c->key_n && !memcmp(key, c->key, c->key_n)) {
        c->state = ST_ENFORCE;
        /* lws takes permessage-deflate whenever it is offered (server.c
         * relies on it too); if it ever declined, it would refuse RSV1
         * itself. */
        char ext[256] = "";
        lws_hdr_copy(wsi, ext, sizeof ext, WSI_TOKEN_EXTENSIONS);
        c->fr.rsv1_ok = strstr(ext, "permessage-deflate") != NULL;
        if (c->fr.bad) { /* sent before our handshake reply (4.1 says it must not) */
            c->bad_seen_by_lws = true;
            conn_fail(c, c->fr.bad, c->fr.why);
        }
    } else {
        rlog_debug("websocket: frame headers of this connection are not checked (not upgraded on its first request)");
        c->state = ST_UNTRACKED;
    }
}

/* The Close the client sent is answered with ours: lws echoes the payload
 * (and then drops the connection at once), so it is rewritten in place —
 * lws does the same with the codes it refuses.  The reason is replaced too,
 * so that nothing invalid goes back. */
static void close_rewrite(uint8_t *p, size_t n, uint16_t code, const char *why)
{
    assert(n >= 2);
    p[0] = (uint8_t)(code >> 8);
    p[1] = (uint8_t)code;
    size_t k = strlen(why) < n - 2 ? strlen(why) : n - 2;
    memcpy(p + 2, why, k);
    memset(p + 2 + k, ' ', n - 2 - k);
}

int wsconf_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    on_service_thread = true;
    if (reason == LWS_CALLBACK_FILTER_NETWORK_CONNECTION) {
        conn_accepted(((struct lws_filter_network_conn_args *)user)->accept_fd);
        return WSCONF_GO_ON;
    }
    if (reason != LWS_CALLBACK_ESTABLISHED && reason != LWS_CALLBACK_RECEIVE &&
        reason != LWS_CALLBACK_SERVER_WRITEABLE && reason != LWS_CALLBACK_WS_PEER_INITIATED_CLOSE &&
        reason != LWS_CALLBACK_CLOSED)
        return WSCONF_GO_ON;
    struct conn *c = conn_of(lws_get_socket_fd(wsi));
    if (!c)
        return WSCONF_GO_ON;
    c->wsi = wsi;
    switch (reason) {
    case LWS_CALLBACK_ESTABLISHED:
        conn_established(c, wsi);
        return WSCONF_GO_ON;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        if (!c->fail_code)
            return WSCONF_GO_ON;
        lws_close_reason(wsi, (enum lws_close_status)c->fail_code, (unsigned char *)c->fail_why,
                         strlen(c->fail_why));
        return -1;
    case LWS_CALLBACK_RECEIVE:
        /* After a bad frame header lws gets no more data frames: what it
         * still hands over came before the bad frame and is handled as
         * usual — unless lws saw the bad frame too (it came with the
         * handshake), or the failure is about this message's text. */
        if (c->fail_code && (c->fail_code != c->fr.bad || c->bad_seen_by_lws))
            return 0;
        if (lws_frame_is_binary(wsi))
            return WSCONF_GO_ON;
        if (lws_is_first_fragment(wsi))
            memset(&c->u8, 0, sizeof c->u8);
        if (!wsconf_utf8_feed(&c->u8, in, len, lws_is_final_fragment(wsi))) {
            conn_fail(c, LWS_CLOSE_STATUS_INVALID_PAYLOAD, "text message not UTF-8");
            return 0;
        }
        return WSCONF_GO_ON;
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE: {
        uint16_t code = c->fail_code;
        const char *why = c->fail_why;
        if (!code) {
            code = (uint16_t)wsconf_close_verdict(in, len);
            why = code == LWS_CLOSE_STATUS_INVALID_PAYLOAD ? "close reason not UTF-8" : "invalid close payload";
        }
        if (!code)
            return WSCONF_GO_ON;
        if (len >= 2) {
            close_rewrite(in, len, code, why);
            return 0;
        }
        /* No room for a code in what lws echoes: it sends ours instead,
         * but then waits (5 s) for a reply the client will not send. */
        lws_close_reason(wsi, (enum lws_close_status)code, (unsigned char *)why, strlen(why));
        return -1;
    }
    case LWS_CALLBACK_CLOSED:
        c->state = ST_NONE;
        return WSCONF_GO_ON;
    default:
        return WSCONF_GO_ON;
    }
}
