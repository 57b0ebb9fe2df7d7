/* err.h — the one list of rill's error codes.
 *
 * Functions return 0 on success or a negative rill_err.  Codes in the first
 * group travel on the wire (WebSocket error.code, worker `rejected`); the
 * second group is for local failures (files, configuration, shared memory)
 * and is reported to clients as `internal`.
 *
 * Each code has a stable name (the wire string) and a `recoverable` flag:
 * recoverable means the same request may succeed if the client retries later
 * (overload, worker loss); not recoverable means the request itself is wrong.
 */
#ifndef RILL_ERR_H
#define RILL_ERR_H

#include <stdbool.h>
#include <stddef.h>

/* X(enum suffix, wire name, recoverable) — order is the numbering; append only. */
#define RILL_ERR_LIST(X)                                                       \
    X(BAD_REQUEST,        "bad_request",             false)                    \
    X(UNAUTHORIZED,       "unauthorized",            false)                    \
    X(FORBIDDEN_ORIGIN,   "forbidden_origin",        false)                    \
    X(TOO_LARGE,          "too_large",               false)                    \
    X(PROMPT_TOO_LONG,    "prompt_too_long",         false)                    \
    X(MAX_TOKENS,         "max_tokens_exceeded",     false)                    \
    X(CONTEXT_LENGTH,     "context_length_exceeded", false)                    \
    X(TOO_MANY_STREAMS,   "too_many_streams",        true)                     \
    X(TOO_MANY_CONNS,     "too_many_connections",    true)                     \
    X(RATE_LIMITED,       "rate_limited",            true)                     \
    X(OVERLOADED,         "overloaded",              true)                     \
    X(SHUTTING_DOWN,      "shutting_down",           true)                     \
    X(MEMORY_LIMIT,       "memory_limit_exceeded",   true)                     \
    X(WORKER_LOST,        "worker_lost",             true)                     \
    X(CANCELLED,          "cancelled",               false)                    \
    X(TIMEOUT,            "timeout",                 true)                     \
    X(SLOW_CONSUMER,      "slow_consumer",           true)                     \
    X(NOT_FOUND,          "not_found",               false)                    \
    X(DUPLICATE_ID,       "duplicate_id",            false)                    \
    X(NO_WORKER,          "no_worker",               true)                     \
    X(INTERNAL,           "internal",                true)                     \
    X(RESUME_FAILED,      "resume_failed",           false)                    \
    /* local codes: never sent as such */                                      \
    X(NOMEM,              "out_of_memory",           true)                     \
    X(IO,                 "io_error",                true)                     \
    X(BAD_FORMAT,         "bad_format",              false)                    \
    X(UNSUPPORTED,        "unsupported",             false)                    \
    X(BAD_CONFIG,         "bad_config",              false)                    \
    X(AGAIN,              "again",                   true)                     \
    X(FULL,               "full",                    true)                     \
    X(PEER_DEAD,          "peer_dead",               true)                     \
    X(EXISTS,             "exists",                  false)

enum rill_err_index_ {
#define RILL_ERR_ENUM_(sym, name, rec) RILL__IDX_##sym,
    RILL_ERR_LIST(RILL_ERR_ENUM_)
#undef RILL_ERR_ENUM_
    RILL_ERR_COUNT /* number of codes, for tables indexed by rill_err_index() */
};

/* The values functions return: RILL_OK, or RILL_E_<NAME> == -(index+1). */
#define RILL_ERR_VALUE_(sym, name, rec) RILL_E_##sym = -(RILL__IDX_##sym + 1),
enum rill_err { RILL_OK = 0, RILL_ERR_LIST(RILL_ERR_VALUE_) };
#undef RILL_ERR_VALUE_

/* The wire name of a code ("bad_request"); "ok" for 0, "internal" for an
 * unknown value.  Never NULL; the string is static. */
const char *rill_err_name(int code);

/* Whether a client may retry the request that got this code. */
bool rill_err_recoverable(int code);

/* The code whose wire name is `name`, or 0 if there is none. */
int rill_err_from_name(const char *name);

/* Index 0..RILL_ERR_COUNT-1 of a negative code, or -1 if out of range. */
int rill_err_index(int code);

/* Whether the code may be sent to clients as it is; local codes are sent as
 * `internal`. */
bool rill_err_is_wire(int code);

/* The code to put on the wire for `code` (local ones become RILL_E_INTERNAL). */
int rill_err_wire(int code);

/* Write a formatted reason into why[0 .. why_len) for the caller to show
 * (nothing when why is NULL or why_len is 0). */
void rill_why(char *why, size_t why_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The same, returning `code`: the tail of an error path,
 *   return rill_fail(why, why_len, RILL_E_BAD_FORMAT, "tensor '%s' ...", name); */
int rill_fail(char *why, size_t why_len, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
