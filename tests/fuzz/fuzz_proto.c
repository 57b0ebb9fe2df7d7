/* fuzz_proto.c — libFuzzer target for the message decoder and the token
 * record decoder.
 *
 * Every input goes to both decoders.  Beyond "no crash, no leak, no huge
 * allocation" (ASan, UBSan, -rss_limit_mb) it checks the round trip: what
 * decodes must encode, the encoding must decode, and encoding that again must
 * give the same bytes; a token record must re-encode to exactly its input
 * (the layout is canonical).  Seeds: tests/fuzz/seeds (written by
 * RILL_PROTO_SEEDS=tests/fuzz/seeds build/tests/test_proto).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "err.h"
#include "proto.h"

#define CHECK(cond, ...)                                                                 \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "fuzz_proto: %s (line %d): ", #cond, __LINE__);              \
            fprintf(stderr, __VA_ARGS__);                                                \
            fputc('\n', stderr);                                                         \
            abort();                                                                     \
        }                                                                                \
    } while (0)

static void fuzz_message(const uint8_t *data, size_t size)
{
    static struct proto_msg m, m2; /* static: 23 KiB each */
    char why[160];
    int rc = proto_decode(data, size, &m, why, sizeof why);
    if (rc) {
        CHECK(rc == RILL_E_BAD_REQUEST || rc == RILL_E_TOO_LARGE || rc == RILL_E_NOMEM, "rc %d", rc);
        CHECK(why[0] != '\0', "an error without a reason");
        CHECK(m.type == PROTO_NONE && !m.owned_, "error left a message behind");
        return;
    }
    msgpack_sbuffer a, b;
    msgpack_sbuffer_init(&a);
    msgpack_sbuffer_init(&b);
    rc = proto_encode(&m, &a, why, sizeof why);
    CHECK(rc == 0, "decoded %s does not encode: %d %s", proto_type_name(m.type), rc, why);
    rc = proto_decode(a.data, a.size, &m2, why, sizeof why);
    CHECK(rc == 0, "re-encoded %s does not decode: %d %s", proto_type_name(m.type), rc, why);
    CHECK(m2.type == m.type, "type changed");
    rc = proto_encode(&m2, &b, why, sizeof why);
    CHECK(rc == 0, "second encode: %d %s", rc, why);
    CHECK(a.size == b.size && memcmp(a.data, b.data, a.size) == 0, "round trip not stable");
    proto_msg_free(&m);
    proto_msg_free(&m2);
    msgpack_sbuffer_destroy(&a);
    msgpack_sbuffer_destroy(&b);
}

static void fuzz_token(const uint8_t *data, size_t size)
{
    struct proto_token t;
    int rc = proto_token_decode(data, size, &t);
    if (rc) {
        CHECK(rc == RILL_E_BAD_FORMAT, "rc %d", rc);
        return;
    }
    CHECK(size == proto_token_size(t.n_top, t.text_len), "size");
    CHECK(t.text >= (const char *)data && t.text + t.text_len <= (const char *)data + size,
          "text outside the input");
    uint8_t buf[PROTO_TOK_MAX_SIZE];
    int n = proto_token_encode(buf, sizeof buf, &t);
    CHECK(n > 0 && (size_t)n == size, "re-encode gave %d for %zu bytes", n, size);
    CHECK(memcmp(buf, data, size) == 0, "token record round trip not exact");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_message(data, size);
    fuzz_token(data, size);
    return 0;
}
