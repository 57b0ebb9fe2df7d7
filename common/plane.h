/* plane.h — one proto message over one ZeroMQ socket: the request and
 * control planes' send and receive, so that every process encodes, caps and
 * decodes the same way.
 */
#ifndef RILL_PLANE_H
#define RILL_PLANE_H

#include "proto.h"
#include "zsock.h"

/* Encode and send.  `to` is the peer for a ROUTER, NULL for a DEALER.
 * Never blocks (ZS_DONTWAIT): a full or gone peer is RILL_E_AGAIN /
 * RILL_E_PEER_DEAD, an unencodable message RILL_E_BAD_REQUEST. */
int plane_send(void *sock, const struct zs_id *to, const struct proto_msg *m);

/* Receive and decode one message without blocking.  For a ROUTER pass
 * `from`, for a DEALER NULL.  Returns 0 (release *m with proto_msg_free()),
 * RILL_E_AGAIN when nothing is waiting, or a decode error with `why` filled
 * (the message is consumed either way). */
int plane_recv(void *sock, struct zs_id *from, struct proto_msg *m, char *why, size_t why_len);

#endif
