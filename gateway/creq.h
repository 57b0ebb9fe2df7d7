/* creq.h — what a client may send, parsed and checked.
 *
 * rill.json.v1 messages are JSON objects in text frames (parsed with cJSON);
 * rill.msgpack.v1 messages are the same objects as msgpack maps in binary
 * frames (unpacked with the bounded proto_unpack(), then converted to the
 * same cJSON tree), so both protocols go through one validator.
 *
 *   {"type":"generate", "id"?: string|integer, "prompt": string,
 *    "max_tokens"?: integer, "params"?: {"temperature", "top_p", "top_k",
 *    "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"
 *    (OpenAI's, -2..2, 0: off), "seed", "stop": [string], "top_logprobs",
 *    "timestamps": bool}}     timestamps: each token carries "gen_us", the
 *                             worker's CLOCK_MONOTONIC time of its step in µs
 *                             (comparable only on the same host)
 *     or, for "prompt", "messages": [{role, content, ...}] (chatmsg.h), and
 *     with them "tools"?: [...] and "tool_choice"?: "auto" | "none"
 *     (chatmsg_tools_chosen: anything else is refused)
 *   {"type":"cancel", "id"?}            without id: every generation of the connection
 *   {"type":"hello", "client"?: {...}, "key"?: string}
 *   {"type":"subscribe", "telemetry": bool}   one snapshot per second (docs/telemetry.md)
 *
 * Every field is checked before use; a bad one gives the code of the one
 * list (err.h) and a message naming the field:
 *   bad_request          malformed JSON/msgpack, not an object, unknown or
 *                        missing type, a field of the wrong type or range,
 *                        an unknown parameter;
 *   too_large            the message is over max_message_bytes;
 *   prompt_too_long      prompt over max_prompt_bytes;
 *   max_tokens_exceeded  max_tokens over max_tokens_limit.
 */
#ifndef RILL_CREQ_H
#define RILL_CREQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/proto.h"

#define CREQ_ID_MAX     64   /* bytes of a client's id */
#define CREQ_KEY_MAX    256
#define CREQ_CLIENT_MAX 128
#define CREQ_TOKEN_MAX  64   /* bytes of a resume token */

/* Sampling defaults when a request says nothing: proto.h's PROTO_DEFAULT_*. */

enum creq_type { CREQ_NONE = 0, CREQ_GENERATE, CREQ_CANCEL, CREQ_HELLO, CREQ_SUBSCRIBE, CREQ_RESUME };

/* A client's id as it was sent: a string, or an integer echoed as a number. */
struct creq_id {
    bool present;
    bool is_num;
    char s[CREQ_ID_MAX + 1];  /* the string, or the integer in decimal */
};

struct creq_limits {
    uint32_t max_message_bytes;
    uint32_t max_prompt_bytes;
    uint32_t max_tokens_limit;
};

struct creq {
    enum creq_type type;
    struct creq_id id;
    /* generate */
    char *prompt;               /* heap, NUL-terminated, prompt_len bytes */
    uint32_t prompt_len;
    char *messages;             /* or chat messages as JSON text (heap; NULL: none) */
    uint32_t messages_len;
    char *tools;                /* with messages: the tools as JSON text (heap; NULL: none) */
    uint32_t tools_len;
    uint32_t max_tokens;
    float temperature, top_p, min_p, repetition_penalty;
    float presence_penalty, frequency_penalty; /* 0 unless given */
    uint32_t top_k;
    uint64_t seed;
    bool has_seed;
    uint8_t n_stop;
    char stop[PROTO_MAX_STOP][PROTO_STOP_LEN + 1];
    uint32_t top_logprobs;
    bool timestamps;            /* params.timestamps: tokens carry gen_us */
    bool parse_special;         /* params.parse_special (default true): "<|im_start|>" is the control token */
    bool ignore_eos;            /* params.ignore_eos: end-of-generation tokens do not end it */
    /* hello */
    bool has_key;
    char key[CREQ_KEY_MAX + 1];
    char client[CREQ_CLIENT_MAX + 1]; /* client.name, for the log */
    /* subscribe */
    bool telemetry;
    /* resume */
    char resume_token[CREQ_TOKEN_MAX + 1];
    uint32_t from;              /* the first position the client wants */
};

/* Parse one message.  `binary` says which protocol framed it (msgpack when
 * true).  Returns 0 with *out filled (release with creq_free), or an error
 * code with `msg` saying what was wrong; out->id is filled whenever the id
 * itself was readable, so an error can name the request. */
int creq_parse(const void *buf, size_t len, bool binary, const struct creq_limits *lim, struct creq *out,
               char *msg, size_t msg_len);
void creq_free(struct creq *r);

/* Write the id as a JSON value (string or number) / a msgpack value. */
struct jsonw;
void creq_id_json(struct jsonw *w, const struct creq_id *id);

#endif
