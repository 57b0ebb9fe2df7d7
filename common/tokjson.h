/* tokjson.h — a token record as JSON object fields, the one writer for
 * every place that shows tokens as JSON (the gateway's rill.json.v1 token
 * items, the worker's standalone --json lines):
 *
 *   "id":8204,"text":" quantum","position":12,"latency_ms":38.5,"logprob":-0.52
 *   [,"gen_us":..][,"top_logprobs":[{"id":..[,"text":..],"logprob":..},..]]
 *
 * The caller opens and closes the object, so it can add fields of its own.
 */
#ifndef RILL_TOKJSON_H
#define RILL_TOKJSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jsonw.h"
#include "proto.h"

struct tokjson_opts {
    int logprob_digits;          /* decimals of logprobs */
    bool gen_us;                 /* add the ring publish time (µs, CLOCK_MONOTONIC) */
    /* When set, each alternative carries its text: the bytes of token `id`,
     * or false to leave it out. */
    bool (*piece)(const void *ctx, int32_t id, const char **bytes, size_t *len);
    const void *piece_ctx;
};

void tokjson_fields(struct jsonw *w, const struct proto_token *t, const struct tokjson_opts *o);

#endif
