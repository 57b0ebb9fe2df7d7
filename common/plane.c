/* plane.c — see plane.h. */
#include "plane.h"
#include "err.h"

#include <stdio.h>

int plane_send(void *sock, const struct zs_id *to, const struct proto_msg *m)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    int rc = proto_encode(m, &sb, NULL, 0);
    if (!rc)
        rc = to ? zs_router_send(sock, to, sb.data, sb.size, ZS_DONTWAIT) : zs_send(sock, sb.data, sb.size, ZS_DONTWAIT);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

int plane_recv(void *sock, struct zs_id *from, struct proto_msg *m, char *why, size_t why_len)
{
    zmq_msg_t msg;
    int rc = from ? zs_router_recv(sock, from, &msg, ZS_DONTWAIT) : zs_recv(sock, &msg, ZS_DONTWAIT);
    if (rc) {
        if (rc == RILL_E_BAD_FORMAT && why)
            snprintf(why, why_len, "message with the wrong number of frames");
        return rc;
    }
    rc = proto_decode(zmq_msg_data(&msg), zmq_msg_size(&msg), m, why, why_len);
    zmq_msg_close(&msg);
    return rc;
}
