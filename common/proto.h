/* proto.h — the messages of the request and control planes (msgpack) and the
 * token record of the token plane (fixed binary layout).
 *
 * Messages are msgpack maps with string keys; key "t" names the type
 * ("submit", "cancel", …) and the other keys are the field names below.
 * Every field is required unless marked optional; an optional field that is
 * absent decodes as zero.  Unknown keys are ignored (so a newer peer may add
 * fields) but still count against the size caps.
 *
 * Decoding is for bytes from the network: it never crashes, never allocates
 * more than a small multiple of the input (itself capped at PROTO_MAX_MSG),
 * and checks every type, range and length.  Encoding checks the same limits,
 * so whatever encodes also decodes, to an equal message.
 *
 * Strings go into fixed arrays, NUL-terminated, with the cap in bytes
 * (excluding the NUL) named next to them; they may not contain NUL bytes.
 * Only the submit's prompt and prompt_tokens live on the heap.
 *
 * The token record is not msgpack: one is written per generated token, so it
 * is a fixed little-endian layout the worker encodes straight into a ring
 * reservation (proto_token_size(), then proto_token_encode()).
 */
#ifndef RILL_PROTO_H
#define RILL_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack/sbuffer.h>
#include <msgpack/unpack.h>

#include "common/pressure_level.h"

/* --- caps ------------------------------------------------------------------- */

#define PROTO_MAX_MSG        (2u << 20) /* bytes of one encoded message */
#define PROTO_MAX_DEPTH      8          /* nesting of arrays and maps */
#define PROTO_MAX_PROMPT     (1u << 20) /* bytes */
#define PROTO_MAX_TOKENS     65536      /* prompt_tokens entries */
/* msgpack objects in one message (every key, value and element counts).
 * Bounds what msgpack-c allocates: a few dozen bytes per object. */
#define PROTO_MAX_OBJECTS    (PROTO_MAX_TOKENS + 4096)
#define PROTO_MAX_STOP       8
#define PROTO_STOP_LEN       64
#define PROTO_REASON_LEN     256 /* rejected.message */
#define PROTO_ID_LEN         32  /* "w0", "g0", "sup" */
#define PROTO_RING_LEN       64
#define PROTO_ENDPOINT_LEN   256
#define PROTO_MODEL_LEN      128
#define PROTO_NOTE_LEN       128 /* set_batch.reason, pressure.reason */
#define PROTO_MAX_METRICS    64
#define PROTO_METRIC_LEN     64
#define PROTO_MAX_WORKERS    64
#define PROTO_MAX_TOP        20 /* submit.top_logprobs, token record n_top */

/* Sampling defaults for a request that does not say (llama.cpp's), shared
 * by the gateway's protocol and the worker's command line so that the same
 * request gives the same stream either way. */
#define PROTO_DEFAULT_MAX_TOKENS  100
#define PROTO_DEFAULT_TEMPERATURE 0.8f
#define PROTO_DEFAULT_TOP_P       0.95f
#define PROTO_DEFAULT_TOP_K       40
#define PROTO_DEFAULT_MIN_P       0.05f
#define PROTO_DEFAULT_REP_PENALTY 1.0f

/* --- messages --------------------------------------------------------------- */

enum proto_type {
    PROTO_NONE = 0,
    /* request plane */
    PROTO_SUBMIT,
    PROTO_CANCEL,
    PROTO_ACCEPTED,
    PROTO_REJECTED,
    /* control plane */
    PROTO_HELLO,
    PROTO_HEARTBEAT,
    PROTO_SET_BATCH,
    PROTO_PRESSURE,
    PROTO_DRAIN,
    PROTO_SHUTDOWN,
    PROTO_WORKERS,
    PROTO_STATS,
    /* request plane, and the worker's ring */
    PROTO_ADOPT,
    PROTO_TYPE_COUNT
};

enum proto_role { PROTO_ROLE_WORKER = 1, PROTO_ROLE_GATEWAY, PROTO_ROLE_SUPERVISOR };

/* heartbeat.state: what a process says about itself */
enum proto_state { PROTO_STATE_STARTING = 0, PROTO_STATE_READY, PROTO_STATE_DRAINING };

/* workers[].state: what the supervisor knows about a worker */
enum proto_wstate {
    PROTO_WSTATE_DOWN = 0,
    PROTO_WSTATE_STARTING,
    PROTO_WSTATE_READY,
    PROTO_WSTATE_DRAINING,
    PROTO_WSTATE_FAILED
};

/* A piece of text of any length up to PROTO_MAX_TEXT.  After proto_decode()
 * `p` is heap memory owned by the message, with a NUL after the last byte;
 * to encode, point it at your bytes. */
struct proto_text {
    const char *p;
    uint32_t len;
};
#define PROTO_MAX_TEXT (768u << 10)

struct proto_submit {
    uint64_t id;
    /* prompt_len bytes, any content (it may contain NULs).  After
     * proto_decode() it is heap memory owned by the message, never NULL, with
     * a NUL after the last byte for convenience; to encode, point it at your
     * bytes (NULL allowed when prompt_len is 0). */
    const char *prompt;
    uint32_t prompt_len;          /* <= PROTO_MAX_PROMPT */
    /* optional: token ids (each >= 0) to use instead of / after the prompt
     * when a request resumes on another worker.  Same ownership as prompt;
     * NULL when n_prompt_tokens is 0.  Not sent when empty. */
    const int32_t *prompt_tokens;
    uint32_t n_prompt_tokens;     /* <= PROTO_MAX_TOKENS */
    uint32_t max_tokens;
    float temperature, top_p, min_p, repetition_penalty; /* finite */
    /* optional, OpenAI's: subtracted from the logit of each token already
     * in the output, once (presence) and per occurrence (frequency); 0 when
     * absent, and not sent when 0.  Limits: common/sampling.h. */
    float presence_penalty, frequency_penalty;
    uint32_t top_k;
    uint64_t seed;
    bool has_seed;                /* whether the client gave the seed */
    uint8_t n_stop;               /* <= PROTO_MAX_STOP */
    char stop[PROTO_MAX_STOP][PROTO_STOP_LEN + 1]; /* each non-empty */
    uint32_t skip;                /* first output position to emit */
    uint32_t top_logprobs;        /* 0..PROTO_MAX_TOP */
    int32_t priority;             /* optional, default 0 */
    /* Control-token text in the prompt ("<|im_start|>", "<s>") becomes the
     * control token (llama.cpp's parse_special).  Optional on the wire, true
     * when absent; false for untrusted text.  A zeroed struct says false:
     * set it when you build a submit. */
    bool parse_special;
    /* optional: a chat conversation (a JSON array of {role, content, ...},
     * as the OpenAI API's messages) that the worker renders with the
     * model's chat template, add_generation_prompt on, into the text it
     * tokenizes in place of `prompt` (control tokens parsed).  Heap memory
     * owned by the message after proto_decode(), like prompt; to encode,
     * point it at your bytes.  Not sent when empty; <= PROTO_MAX_TEXT. */
    struct proto_text messages;
    /* optional, with messages: the tools (a JSON array of OpenAI tool
     * schemas) the chat template renders.  Owned and sent as messages. */
    struct proto_text tools;
    /* optional, with skip: the token records of output positions just
     * before skip, as the gateway delivered them (each a u32 little-endian
     * length, then the record: proto_token_encode), for the worker to keep
     * for a restarted gateway (worker/journal.h), not to emit.  Owned and
     * sent as messages. */
    struct proto_text prior;
    /* optional (false when absent): end-of-generation tokens do not end
     * it; it runs to max_tokens or a stop string (vLLM's ignore_eos). */
    bool ignore_eos;
};

struct proto_cancel {
    uint64_t id;
};

/* Gateway -> worker, first on its request socket: "I am a new gateway
 * process (request ids <epoch:32><n:32>)".  keep: adopt what the worker
 * runs for earlier gateway processes (it answers in its ring with each
 * one's submit, accepted and kept records, then an adopt record of its
 * own: the replay is over); otherwise it cancels them.  Worker -> gateway,
 * in the ring: the end of that replay (epoch echoed, keep false). */
struct proto_adopt {
    uint32_t epoch;
    bool keep;
};

struct proto_accepted {
    uint64_t id;
    uint32_t queue_position;
    /* optional: the prompt's length in tokens, as the worker tokenized it
     * (the OpenAI API's usage.prompt_tokens); 0 from a worker that does
     * not say. */
    uint32_t prompt_tokens;
};

struct proto_rejected {
    uint64_t id;
    int32_t code;                 /* a RILL_E_* value: < 0 */
    char message[PROTO_REASON_LEN + 1];
};

struct proto_hello {
    enum proto_role role;
    char id[PROTO_ID_LEN + 1];    /* non-empty */
    int32_t pid;
    char ring[PROTO_RING_LEN + 1];        /* may be empty */
    char endpoint[PROTO_ENDPOINT_LEN + 1];
    char model[PROTO_MODEL_LEN + 1];
    uint32_t n_ctx;
    uint32_t max_batch;
    uint64_t epoch;               /* the ring's epoch */
};

/* Opaque bytes carried inline (histograms in hist_encode() form). */
#define PROTO_BLOB_MAX 4096
struct proto_blob {
    uint16_t len;                 /* 0: absent */
    uint8_t data[PROTO_BLOB_MAX];
};

struct proto_metric {
    char name[PROTO_METRIC_LEN + 1]; /* non-empty, unique in the message */
    double value;                 /* finite */
};

/* Floats must be finite (they end up in JSON): send 0 when there is no
 * sample yet. */
struct proto_heartbeat {
    char id[PROTO_ID_LEN + 1];    /* non-empty */
    uint64_t seq;
    uint32_t active;              /* running sequences */
    uint32_t queued;
    float step_ms, step_p50_ms, step_p99_ms;
    float tokens_per_s, prefill_tokens_per_s;
    uint64_t rss_bytes, kv_bytes, kv_capacity_bytes;
    uint32_t batch_cap;           /* the current cap */
    uint32_t batch_limit;         /* the supervisor's upper bound */
    uint64_t preemptions, tokens_total, requests_total;
    /* optional (0 when absent): the prefix cache's counters since the
     * worker started (admissions that looked, those that found a cached
     * prefix, their prompt tokens, the tokens found, blocks evicted) and
     * the blocks it holds now */
    uint64_t prefix_lookups, prefix_hits, prefix_lookup_tokens, prefix_hit_tokens, prefix_evictions;
    uint32_t prefix_blocks;
    uint8_t pressure_level;       /* enum pressure_level */
    uint8_t state;                /* enum proto_state */
    /* optional, encoded as a map name -> f64; not sent when empty */
    uint8_t n_metrics;            /* <= PROTO_MAX_METRICS */
    struct proto_metric metrics[PROTO_MAX_METRICS];
    /* optional: histograms since the last heartbeat (hist_encode form, in
     * microseconds / sequences); not sent when empty */
    struct proto_blob step_hist;  /* step times */
    struct proto_blob batch_hist; /* decode sequences per step */
};

struct proto_set_batch {
    uint32_t max_batch;
    char reason[PROTO_NOTE_LEN + 1];
};

struct proto_pressure_msg {
    uint8_t level;                /* enum pressure_level */
    char reason[PROTO_NOTE_LEN + 1];
};

struct proto_worker_info {
    char id[PROTO_ID_LEN + 1];    /* non-empty */
    char ring[PROTO_RING_LEN + 1];
    char endpoint[PROTO_ENDPOINT_LEN + 1];
    uint8_t state;                /* enum proto_wstate */
    uint64_t epoch;
};

struct proto_workers {
    uint8_t n_workers;            /* <= PROTO_MAX_WORKERS */
    struct proto_worker_info workers[PROTO_MAX_WORKERS];
};


/* The supervisor's figures for the gateway, twice a second: its own and the
 * workers' metrics as Prometheus text (appended to the gateway's /metrics)
 * and as JSON (the telemetry stream's "supervisor" object). */
struct proto_stats {
    struct proto_text prom;
    struct proto_text json;
};

/* One message.  drain and shutdown carry no fields.  About 23 KiB (the
 * workers list is inline), fine on a stack. */
struct proto_msg {
    enum proto_type type;
    union {
        struct proto_submit submit;
        struct proto_cancel cancel;
        struct proto_adopt adopt;
        struct proto_accepted accepted;
        struct proto_rejected rejected;
        struct proto_hello hello;
        struct proto_heartbeat heartbeat;
        struct proto_set_batch set_batch;
        struct proto_pressure_msg pressure;
        struct proto_workers workers;
        struct proto_stats stats;
    } u;
    /* Set by proto_decode() only: the message owns its heap buffers.  A
     * message you build yourself (zeroed) has it false, so proto_msg_free()
     * leaves your buffers alone. */
    bool owned_;
};

/* The wire name of a type ("submit"); NULL for one that is not a type. */
const char *proto_type_name(enum proto_type t);

/* The type whose wire name is `name`; PROTO_NONE if there is none. */
enum proto_type proto_type_from_name(const char *name);

/* "worker", "gateway", "supervisor"; NULL for anything else. */
const char *proto_role_name(enum proto_role r);

/* Append the msgpack encoding of `m` to `out` (initialised by the caller,
 * e.g. msgpack_sbuffer_init(); the caller frees it).  Returns 0, or
 * RILL_E_BAD_REQUEST (a field out of range, an empty string that must not
 * be, a non-finite float, a NULL buffer with a length, an unknown type),
 * RILL_E_TOO_LARGE (a length or count over its cap, a string without a NUL
 * within its cap), RILL_E_NOMEM.  On error nothing is
 * appended: `out` keeps its previous size.  With `why` (may be NULL,
 * `why_len` bytes) a failure says which field and why. */
int proto_encode(const struct proto_msg *m, msgpack_sbuffer *out, char *why, size_t why_len);

/* Decode one message of exactly `len` bytes into *out (the whole struct is
 * overwritten).  Returns 0 (then release it with proto_msg_free()), or:
 *   RILL_E_TOO_LARGE   input over PROTO_MAX_MSG, too many objects, or a
 *                      string / array / prompt over its cap;
 *   RILL_E_BAD_REQUEST malformed or truncated msgpack, trailing bytes, too
 *                      deep, not a map, a non-string key, a missing or
 *                      unknown "t", a missing required field, a repeated
 *                      key, a wrong type, an integer out of its range, a
 *                      non-finite float, a string with a NUL byte;
 *   RILL_E_NOMEM.
 * On error *out holds nothing to free, and `why` (may be NULL, `why_len`
 * bytes) names the field and the reason, e.g. "submit.max_tokens: integer
 * out of range".  Integers are accepted where floats are expected. */
int proto_decode(const void *buf, size_t len, struct proto_msg *out, char *why, size_t why_len);

/* Unpack untrusted msgpack of `len` bytes (at most `max_len`) without
 * letting a hostile header make msgpack-c allocate more than a small
 * multiple of the input: a non-allocating walk first checks every container
 * count against the bytes left, the depth (PROTO_MAX_DEPTH) and the number
 * of objects (PROTO_MAX_OBJECTS), and that exactly one object fills the
 * input.  Returns 0 with *up filled, or RILL_E_TOO_LARGE / RILL_E_BAD_REQUEST
 * / RILL_E_NOMEM with `why`.  Either way *up is initialized: the caller
 * calls msgpack_unpacked_destroy(up). */
int proto_unpack(const void *buf, size_t len, size_t max_len, msgpack_unpacked *up, char *why, size_t why_len);

/* Free what a decoded message owns and clear its pointers.  Does nothing for
 * a message you built yourself, nor twice.  NULL is ignored. */
void proto_msg_free(struct proto_msg *m);

/* --- token record ------------------------------------------------------------ */

/* The ring record kind of a token record (ring_reserve's `kind`). */
#define PROTO_TOK_KIND         1
/* A ring record that holds a whole message (msgpack, as on the planes):
 * a request's accepted / rejected travel in its worker's ring with its
 * tokens, so the gateway sees the request's life as one ordered sequence. */
#define PROTO_MSG_KIND         2
#define PROTO_TOK_VERSION      1
#define PROTO_MAX_TOKEN_TEXT   512
#define PROTO_TOK_HDR          52u /* bytes before the alternatives */
#define PROTO_TOK_MAX_SIZE     (PROTO_TOK_HDR + 8u * PROTO_MAX_TOP + PROTO_MAX_TOKEN_TEXT)

/* flags */
#define PROTO_TOK_FIRST        0x1u /* position 0 of the request's output (or
                                       the first record after a resume) */
#define PROTO_TOK_LAST         0x2u /* the request is finished: nothing follows */
#define PROTO_TOK_ERROR        0x4u /* `error` holds a RILL_E_* code */
#define PROTO_TOK_FINISH_SHIFT 8
#define PROTO_TOK_FINISH_MASK  0xff00u
/* A LAST record carries a finish reason, and only a LAST record does. */
enum proto_finish {
    PROTO_FINISH_NONE = 0,
    PROTO_FINISH_STOP,      /* a stop string matched */
    PROTO_FINISH_EOS,
    PROTO_FINISH_LENGTH,    /* max_tokens reached */
    PROTO_FINISH_CANCELLED,
    PROTO_FINISH_ERROR,
    PROTO_FINISH_COUNT
};
#define PROTO_TOK_FINISH(reason) ((uint32_t)(reason) << PROTO_TOK_FINISH_SHIFT)

static inline enum proto_finish proto_tok_finish(uint32_t flags)
{
    return (enum proto_finish)((flags & PROTO_TOK_FINISH_MASK) >> PROTO_TOK_FINISH_SHIFT);
}

/* "stop", "eos", "length", "cancelled", "error"; "none" for 0, NULL beyond. */
const char *proto_finish_name(enum proto_finish f);

struct proto_top {
    int32_t token_id;
    float logprob;
};

/* One token event.  Rules, checked by encode and decode:
 *  - token_id >= -1 (-1: the record carries no token, e.g. a terminal error);
 *  - flags has only the bits above; finish reason != NONE exactly when LAST;
 *  - error < 0 exactly when ERROR is set, else 0;
 *  - n_top <= PROTO_MAX_TOP, text_len <= PROTO_MAX_TOKEN_TEXT. */
struct proto_token {
    uint64_t req_id;
    uint32_t position;
    int32_t token_id;
    uint32_t flags;
    int32_t error;
    uint64_t t_gen_ns;     /* CLOCK_MONOTONIC ns when the step finished */
    uint32_t latency_us;   /* since the previous token, or since submission */
    float logprob;
    uint16_t batch;        /* sequences in the step */
    uint32_t mem_mb;       /* worker RSS */
    uint8_t n_top;
    struct proto_top top[PROTO_MAX_TOP];
    uint16_t text_len;
    /* text_len bytes of UTF-8 (not NUL-terminated).  After
     * proto_token_decode() it points into the decoded buffer and is valid as
     * long as that buffer is (for a ring: until ring_release()). */
    const char *text;
};

/* Encoded size of a record with `n_top` alternatives and `text_len` bytes of
 * text: PROTO_TOK_HDR + 8 * n_top + text_len (no validation). */
static inline size_t proto_token_size(unsigned n_top, unsigned text_len)
{
    return PROTO_TOK_HDR + 8u * (size_t)n_top + text_len;
}

/* Layout (little-endian, no alignment needed):
 *    0 u64 req_id      8 u64 t_gen_ns   16 u32 position   20 i32 token_id
 *   24 u32 flags      28 i32 error      32 u32 latency_us 36 f32 logprob
 *   40 u32 mem_mb     44 u16 batch      46 u16 text_len   48 u8 n_top
 *   49 u8 version     50 u16 0
 *   52 n_top x {i32 token_id, f32 logprob}, then text_len bytes of text. */

/* Write `t` into buf[0..cap) (e.g. a ring reservation of
 * proto_token_size(t->n_top, t->text_len) bytes).  Returns the number of
 * bytes written (> 0), RILL_E_BAD_FORMAT if `t` breaks a rule above, or
 * RILL_E_TOO_LARGE if cap is too small. */
int proto_token_encode(void *buf, size_t cap, const struct proto_token *t);

/* Read the record of exactly `len` bytes at `buf` into *t, checking every
 * length against `len`.  t->text points into `buf`.  Returns 0 or
 * RILL_E_BAD_FORMAT (short, wrong version or size, or a rule above broken). */
int proto_token_decode(const void *buf, size_t len, struct proto_token *t);

#endif
