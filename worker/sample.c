/* sample.c — see sample.h. */
#include "sample.h"
#include "common/hash.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct sampler {
    uint32_t vocab;
    float *l;      /* penalized logits */
    float *p;      /* unnormalized probabilities of kept tokens (0 = dropped) */
    float *sel;    /* selection scratch */
};

struct sampler *sampler_create(uint32_t vocab)
{
    struct sampler *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->vocab = vocab;
    s->l = malloc(vocab * sizeof *s->l);
    s->p = malloc(vocab * sizeof *s->p);
    s->sel = malloc(vocab * sizeof *s->sel);
    if (!s->l || !s->p || !s->sel) {
        sampler_free(s);
        return NULL;
    }
    return s;
}

void sampler_free(struct sampler *s)
{
    if (!s)
        return;
    free(s->l);
    free(s->p);
    free(s->sel);
    free(s);
}

double sample_uniform(uint64_t seed, uint32_t position)
{
    uint64_t x = hash_u64(seed ^ hash_u64(0x726f6c6cull + position));
    return (double)(x >> 11) * 0x1.0p-53;
}

/* The k-th largest value of v[0..n) (k >= 1), by quickselect on a copy. */
static float kth_largest(float *v, uint32_t n, uint32_t k)
{
    uint32_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float pivot = v[lo + (hi - lo) / 2];
        uint32_t i = lo, j = hi;
        while (i <= j) {
            while (v[i] > pivot)
                i++;
            while (v[j] < pivot)
                j--;
            if (i <= j) {
                float t = v[i];
                v[i] = v[j];
                v[j] = t;
                i++;
                if (j == 0)
                    break;
                j--;
            }
        }
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            return v[want];
    }
    return v[want];
}

/* Insert (id, v) into a best-first list of at most k, ties by lower id. */
static void top_insert(int32_t *ids, float *vals, uint32_t *n, uint32_t k, int32_t id, float v)
{
    if (*n == k && !(v > vals[k - 1]))
        return;
    uint32_t i = *n < k ? (*n)++ : k - 1;
    while (i > 0 && v > vals[i - 1]) {
        ids[i] = ids[i - 1];
        vals[i] = vals[i - 1];
        i--;
    }
    ids[i] = id;
    vals[i] = v;
}

void sample_next(struct sampler *s, const float *logits, const struct sample_params *p, const int32_t *history,
                 uint32_t n_history, uint32_t position, uint32_t n_top, struct sample_result *out)
{
    uint32_t V = s->vocab;
    float *l = s->l;
    memcpy(l, logits, V * sizeof *l);

    if (p->repetition_penalty > 0 && p->repetition_penalty != 1.0f && n_history) {
        uint32_t w = p->penalty_window ? p->penalty_window : 64;
        uint32_t from = n_history > w ? n_history - w : 0;
        /* Penalize each distinct token once: mark with p[] as scratch. */
        memset(s->p, 0, V * sizeof *s->p);
        for (uint32_t i = from; i < n_history; i++) {
            int32_t t = history[i];
            if (t < 0 || (uint32_t)t >= V || s->p[t] != 0)
                continue;
            s->p[t] = 1;
            l[t] = l[t] > 0 ? l[t] / p->repetition_penalty : l[t] * p->repetition_penalty;
        }
    }

    /* The model distribution: log-softmax of l. */
    float mx = -INFINITY;
    int32_t argmax = 0;
    for (uint32_t i = 0; i < V; i++)
        if (l[i] > mx) {
            mx = l[i];
            argmax = (int32_t)i;
        }
    double sum = 0;
    for (uint32_t i = 0; i < V; i++)
        sum += exp((double)(l[i] - mx));
    float lse = mx + (float)log(sum);

    int32_t chosen = argmax;
    if (p->temperature > 0) {
        float inv_t = 1.0f / p->temperature;
        float *pr = s->p;
        for (uint32_t i = 0; i < V; i++) {
            float e = expf((l[i] - mx) * inv_t); /* the max token gets 1 */
            pr[i] = e > 0 ? e : 0;               /* and a NaN logit gets nothing */
        }
        if (p->top_k > 0 && p->top_k < V) {
            memcpy(s->sel, pr, V * sizeof *pr);
            float kth = kth_largest(s->sel, V, p->top_k);
            /* Keep values above the k-th, and ties with it by lower id, k in all. */
            uint32_t above = 0;
            for (uint32_t i = 0; i < V; i++)
                above += pr[i] > kth;
            uint32_t ties_left = p->top_k - above;
            for (uint32_t i = 0; i < V; i++) {
                if (pr[i] > kth)
                    continue;
                if (pr[i] == kth && ties_left) {
                    ties_left--;
                    continue;
                }
                pr[i] = 0;
            }
        }
        if (p->min_p > 0)
            for (uint32_t i = 0; i < V; i++)
                if (pr[i] < p->min_p)
                    pr[i] = 0;
        double total = 0;
        for (uint32_t i = 0; i < V; i++)
            total += pr[i];
        if (p->top_p > 0 && p->top_p < 1) {
            /* Smallest threshold t whose kept mass {pr >= t} still reaches
             * top_p of the total: bisection on t in (0, 1]. */
            double goal = p->top_p * total, lo = 0, hi = 1;
            for (int it = 0; it < 40; it++) {
                double mid = (lo + hi) / 2, m = 0;
                for (uint32_t i = 0; i < V; i++)
                    if (pr[i] >= mid)
                        m += pr[i];
                if (m >= goal)
                    lo = mid;
                else
                    hi = mid;
            }
            total = 0;
            for (uint32_t i = 0; i < V; i++) {
                if (pr[i] < lo)
                    pr[i] = 0;
                total += pr[i];
            }
        }
        double target = sample_uniform(p->seed, position) * total, acc = 0;
        chosen = -1;
        int32_t last_kept = argmax;
        for (uint32_t i = 0; i < V; i++) {
            if (pr[i] <= 0)
                continue;
            last_kept = (int32_t)i;
            acc += pr[i];
            if (acc > target) {
                chosen = (int32_t)i;
                break;
            }
        }
        if (chosen < 0) /* rounding at the very end of the walk */
            chosen = last_kept;
    }

    out->token = chosen;
    out->logprob = l[chosen] - lse;
    out->n_top = 0;
    if (n_top > SAMPLE_MAX_TOP)
        n_top = SAMPLE_MAX_TOP;
    if (n_top) {
        for (uint32_t i = 0; i < V; i++)
            top_insert(out->top_ids, out->top_logprobs, &out->n_top, n_top, (int32_t)i, l[i]);
        for (uint32_t i = 0; i < out->n_top; i++)
            out->top_logprobs[i] -= lse;
    }
}
