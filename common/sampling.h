/* sampling.h — the sampling parameters' limits, one table for every place
 * that takes them: the gateway's client parser, the worker's admission and
 * the worker's command line.  (Two copies once disagreed: temperature up
 * to 10 at the gateway, up to 100 in the worker.) */
#ifndef RILL_SAMPLING_H
#define RILL_SAMPLING_H

#include <stdbool.h>
#include <stddef.h>

#include "proto.h"

enum sampling_param {
    SAMPLING_TEMPERATURE,
    SAMPLING_TOP_P,
    SAMPLING_MIN_P,
    SAMPLING_REPETITION_PENALTY,
    SAMPLING_TOP_K,
    SAMPLING_TOP_LOGPROBS,
    SAMPLING_PRESENCE_PENALTY,
    SAMPLING_FREQUENCY_PENALTY,
    SAMPLING_COUNT
};

struct sampling_range {
    const char *name;   /* as clients spell it ("temperature") */
    double lo, hi;      /* inclusive */
    bool integer;
};

extern const struct sampling_range sampling_ranges[SAMPLING_COUNT];

/* Whether v is allowed for parameter p (finite, in range, whole if it must be). */
bool sampling_ok(enum sampling_param p, double v);

/* Check every sampling parameter of a submit; RILL_E_BAD_REQUEST naming the
 * first one out of range (in why), or 0. */
int sampling_check(const struct proto_submit *s, char *why, size_t why_len);

#endif
