/* sampling.c — see sampling.h. */
#include "sampling.h"
#include "err.h"

#include <math.h>

const struct sampling_range sampling_ranges[SAMPLING_COUNT] = {
    [SAMPLING_TEMPERATURE] = {"temperature", 0, 10, false},
    [SAMPLING_TOP_P] = {"top_p", 0, 1, false},
    [SAMPLING_MIN_P] = {"min_p", 0, 1, false},
    [SAMPLING_REPETITION_PENALTY] = {"repetition_penalty", 0.01, 10, false},
    [SAMPLING_TOP_K] = {"top_k", 0, 1e9, true},
    [SAMPLING_TOP_LOGPROBS] = {"top_logprobs", 0, PROTO_MAX_TOP, true},
    /* OpenAI's range; 0 is off. */
    [SAMPLING_PRESENCE_PENALTY] = {"presence_penalty", -2, 2, false},
    [SAMPLING_FREQUENCY_PENALTY] = {"frequency_penalty", -2, 2, false},
};

bool sampling_ok(enum sampling_param p, double v)
{
    const struct sampling_range *r = &sampling_ranges[p];
    return isfinite(v) && v >= r->lo && v <= r->hi && (!r->integer || v == floor(v));
}

int sampling_check(const struct proto_submit *s, char *why, size_t why_len)
{
    const double v[SAMPLING_COUNT] = {
        [SAMPLING_TEMPERATURE] = s->temperature, [SAMPLING_TOP_P] = s->top_p,
        [SAMPLING_MIN_P] = s->min_p,             [SAMPLING_REPETITION_PENALTY] = s->repetition_penalty,
        [SAMPLING_TOP_K] = s->top_k,             [SAMPLING_TOP_LOGPROBS] = s->top_logprobs,
        [SAMPLING_PRESENCE_PENALTY] = s->presence_penalty,
        [SAMPLING_FREQUENCY_PENALTY] = s->frequency_penalty,
    };
    for (int p = 0; p < SAMPLING_COUNT; p++)
        if (!sampling_ok((enum sampling_param)p, v[p]))
            return rill_fail(why, why_len, RILL_E_BAD_REQUEST, "%s: %g is out of range [%g, %g]",
                             sampling_ranges[p].name, v[p], sampling_ranges[p].lo, sampling_ranges[p].hi);
    return 0;
}
