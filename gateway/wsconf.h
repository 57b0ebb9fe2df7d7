/* wsconf.h — the RFC 6455 rules (sections 5 and 7) that libwebsockets 4.1
 * does not enforce on a server, enforced for the gateway's connections.
 *
 * lws 4.1.6 already fails with 1002 on unknown opcodes, fragmented control
 * frames and continuation errors.  What it lets through, or gets wrong:
 *   - client frames without a mask (5.1: the server MUST fail with 1002);
 *   - control frames over 125 bytes and 64-bit lengths with the top bit set
 *     (5.2, 5.5): it drops the TCP connection without a Close frame;
 *   - reserved bits (5.2): it sends 1002, but then misreads the client's
 *     Close and keeps the connection for 5 s;
 *   - Close frames with a 1-byte body or a code outside the valid ranges
 *     (5.5.1, 7.4), which it echoes back, and Close reasons that are not
 *     UTF-8 (5.5.1, 8.1);
 *   - text messages that are not UTF-8 (8.1: MUST fail, 7.4.1: 1007).
 * Each of these now fails the connection with the Close code 7.4.1 names.
 *
 * lws has no API for the mask bit or the length of a frame it refuses, so
 * the checks on the frame header read the client's bytes as they come off
 * the socket: wsconf.c defines recv(), which lws calls through the PLT and
 * which therefore takes the place of libc's for it (ELF symbol
 * interposition).  It follows the frame headers of the gateway's own
 * WebSocket connections only (accepted by lws, upgraded on their first
 * request, read on the lws service thread) and passes every other call
 * straight to recvfrom().  A frame that breaks a rule never reaches lws:
 * it is dropped with everything after it except the client's Close, and
 * lws is asked to close with the code.  Not header-checked (the other
 * checks still apply): a connection upgraded after earlier HTTP requests on
 * it (a proxy reusing a keep-alive connection), and TLS (the first head's
 * key, read in ciphertext, never matches lws's).
 */
#ifndef RILL_WSCONF_H
#define RILL_WSCONF_H

#include <libwebsockets.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { WSCONF_GO_ON = 1 };

/* To be called first from the protocols' lws callback with its arguments,
 * for every reason (it looks at FILTER_NETWORK_CONNECTION, which lws gives
 * to protocols[0] only, ESTABLISHED, RECEIVE, SERVER_WRITEABLE,
 * WS_PEER_INITIATED_CLOSE and CLOSED).  Service thread only.
 * Returns WSCONF_GO_ON: handle the event as usual; otherwise the value the
 * callback must return at once, without handling the event (0: the event
 * is consumed, e.g. a message of a connection being failed; -1: close, the
 * Close code is set with lws_close_reason). */
int wsconf_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len);

/* --- the pure parts, for the unit tests ------------------------------------------------------- */

/* The Close code to fail with for a client's Close payload p[0..n), or 0
 * when it is valid: no body, or a valid code (1000-1003, 1007-1014,
 * 3000-4999) and a UTF-8 reason.  1002 for a 1-byte body or a bad code,
 * 1007 for a reason that is not UTF-8. */
int wsconf_close_verdict(const uint8_t *p, size_t n);

/* UTF-8 checked across the fragments of a text message: a character may be
 * split between two of them. */
struct wsconf_utf8 {
    uint8_t held[4]; /* the start of a character the last fragment ended in */
    uint8_t n_held;
};

/* Feed the next piece (zero the struct at the start of a message); `final`
 * for the last piece.  False once the message cannot be UTF-8. */
bool wsconf_utf8_feed(struct wsconf_utf8 *u, const uint8_t *p, size_t n, bool final);

/* Frame headers followed through a client's byte stream. */
enum { WSCONF_HDR_MAX = 14 }; /* 2 + 8 (64-bit length) + 4 (mask key) */

struct wsconf_frames {
    uint8_t hdr[WSCONF_HDR_MAX];
    uint8_t hdr_n;      /* header bytes of the current frame read so far */
    bool drop;          /* the current frame's payload is not handed on */
    uint64_t left;      /* payload bytes of the current frame still to come */
    bool rsv1_ok;       /* permessage-deflate: RSV1 marks a compressed message */
    uint16_t bad;       /* the first broken rule's Close code (0: none) */
    const char *why;    /* and what it was (a static string) */
};

/* Follow b[0..n), the next bytes of the stream (zero the struct at the
 * stream's start).  With `enforce`, the frames from the first bad one on
 * are removed from b (except Close frames after it, so lws sees the
 * client's reply to its Close), and a header split at the end of b is held
 * back: *held is set to its length, those last bytes of b are to be put in
 * front of the next bytes.  Without, everything stays (*held is 0) and only
 * f->bad is set.  Returns how many bytes, moved to the front of b, go on. */
size_t wsconf_frames_feed(struct wsconf_frames *f, uint8_t *b, size_t n, bool enforce, size_t *held);

#endif
