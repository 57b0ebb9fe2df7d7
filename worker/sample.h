/* sample.h — choosing the next token from logits.
 *
 * Order of operations (llama.cpp's defaults, documented so clients can rely
 * on it): repetition penalty over the last `penalty_window` tokens, then
 * OpenAI's presence and frequency penalties over the output so far (for
 * each token t that occurred c > 0 times among output positions
 * [0, position): logit -= c * frequency_penalty + presence_penalty), then
 * greedy when temperature is 0; otherwise temperature, top-k, min-p, top-p,
 * and one draw.  The draw uses u = sample_uniform(seed, position): the random
 * stream is a function of (seed, position) only, so a seeded request samples
 * the same tokens whatever else the worker is doing, and a request resumed on
 * another worker continues exactly.
 *
 * No sorting of the vocabulary: top-k (by logit, ties by lower id) keeps a
 * best-first list or selects, top-p finds its threshold by quickselect on
 * mass (the smallest top set whose probability reaches top_p, ties with its
 * smallest member kept), and the draw walks the kept tokens in id order —
 * O(vocab) per token, about 0.1 ms at 32000 tokens with the defaults.
 * Probabilities use a float exp of fixed arithmetic, the same bits on every
 * machine.
 *
 * logprob is the log-probability of the chosen token under the model's
 * distribution after the penalties, before temperature and
 * truncation (what OpenAI-style APIs report).
 */
#ifndef RILL_SAMPLE_H
#define RILL_SAMPLE_H

#include <stdint.h>

#define SAMPLE_MAX_TOP 20

struct sample_params {
    float temperature;        /* 0: greedy */
    uint32_t top_k;           /* 0: off */
    float top_p;              /* 1: off */
    float min_p;              /* 0: off */
    float repetition_penalty; /* 1: off */
    uint32_t penalty_window;  /* tokens looked back for the penalty (64) */
    float presence_penalty;   /* 0: off */
    float frequency_penalty;  /* 0: off */
    uint64_t seed;
};

struct sample_result {
    int32_t token;
    float logprob;
    uint32_t n_top;
    int32_t top_ids[SAMPLE_MAX_TOP];
    float top_logprobs[SAMPLE_MAX_TOP];
};

struct sampler;

/* Scratch for a vocabulary of `vocab` tokens (one per thread). */
struct sampler *sampler_create(uint32_t vocab);
void sampler_free(struct sampler *s);

/* Pick the token at output position `position` from `logits` (vocab floats,
 * not modified).  `history` holds the sequence's tokens so far (prompt and
 * output) for the penalties; its last `position` tokens are the output
 * (position <= n_history when a presence or frequency penalty is on).  Fills n_top alternatives (0..SAMPLE_MAX_TOP, best
 * first, ties by lower id). */
void sample_next(struct sampler *s, const float *logits, const struct sample_params *p, const int32_t *history,
                 uint32_t n_history, uint32_t position, uint32_t n_top, struct sample_result *out);

/* The uniform number in [0, 1) drawn at `position` of a stream seeded `seed`. */
double sample_uniform(uint64_t seed, uint32_t position);

#endif
