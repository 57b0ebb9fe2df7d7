/* sample.c — see sample.h. */
#include "sample.h"
#include "common/hash.h"

#include <assert.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct sampler {
    uint32_t vocab;
    float *l;      /* penalized logits */
    float *p;      /* unnormalized probabilities of kept tokens (0 = dropped) */
    float *sel;    /* selection scratch */
    int32_t *ids;  /* candidate tokens, in id order */
    uint32_t *count; /* occurrences in the output; all 0 between calls */
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
    s->ids = malloc(vocab * sizeof *s->ids);
    s->count = calloc(vocab, sizeof *s->count);
    if (!s->l || !s->p || !s->sel || !s->ids || !s->count) {
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
    free(s->ids);
    free(s->count);
    free(s);
}

double sample_uniform(uint64_t seed, uint32_t position)
{
    uint64_t x = hash_u64(seed ^ hash_u64(0x726f6c6cull + position));
    return (double)(x >> 11) * 0x1.0p-53;
}

/* The k-th largest value of v[0..n) (k >= 1), by quickselect (v is
 * reordered). */
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

/* exp(x) for x <= 0, four at a time (Cephes' expf polynomial, about 1 ulp;
 * below -87, or NaN, gives 0).  Several times faster than libm's exp, which
 * was most of a token's sampling time, and the same bits on every machine:
 * plain IEEE float operations lane by lane, nothing contracted into FMAs
 * (this file is built for baseline x86-64). */
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

static inline v4f exp_neg4(v4f x)
{
    const v4f lim = {-87.0f, -87.0f, -87.0f, -87.0f};
    v4i keep = x >= lim; /* all ones where x is in range (false for NaN) */
    x = (v4f)(((v4i)x & keep) | ((v4i)lim & ~keep));
    v4f n = x * 1.44269504088896341f;
    n = (n - 12582912.0f) + 12582912.0f; /* round to nearest integer */
    v4f r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    v4f r2 = r * r;
    v4f y = r * 1.9875691500e-4f + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * r2 + r + 1.0f;
    v4i e = (__builtin_convertvector(n, v4i) + 127) << 23; /* 2^n; n >= -126 here */
    y = y * (v4f)e;
    return (v4f)((v4i)y & keep);
}

/* out[i] = exp((l[id_i] - mx) * scale), id_i = ids[i] or i when ids is NULL. */
static void exp_shifted(const float *l, const int32_t *ids, uint32_t n, float mx, float scale, float *out)
{
    uint32_t i = 0;
    if (!ids)
        for (; i + 4 <= n; i += 4) {
            v4f x;
            memcpy(&x, l + i, sizeof x);
            v4f y = exp_neg4((x - mx) * scale);
            memcpy(out + i, &y, sizeof y);
        }
    for (; i < n; i += 4) {
        v4f x;
        for (int j = 0; j < 4; j++) {
            uint32_t k = i + (uint32_t)j < n ? i + (uint32_t)j : n - 1;
            x[j] = ((ids ? l[ids[k]] : l[k]) - mx) * scale;
        }
        v4f y = exp_neg4(x);
        for (int j = 0; j < 4 && i + (uint32_t)j < n; j++)
            out[i + (uint32_t)j] = y[j];
    }
}

/* The largest value of l[0..n), NaN skipped (-inf when there is none). */
static float max_of(const float *l, uint32_t n)
{
    v4f m = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    uint32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        v4f x;
        memcpy(&x, l + i, sizeof x);
        v4i gt = x > m;
        m = (v4f)(((v4i)x & gt) | ((v4i)m & ~gt));
    }
    float mx = -INFINITY;
    for (int j = 0; j < 4; j++)
        if (m[j] > mx)
            mx = m[j];
    for (; i < n; i++)
        if (l[i] > mx)
            mx = l[i];
    return mx;
}

/* log of the sum of exp(l[i] - mx) over the vocabulary, in eight partial
 * sums (a fixed order: the same result on every machine). */
static float log_sum_exp(const float *l, uint32_t V, float mx)
{
    v4f a0 = {0}, a1 = {0};
    uint32_t i = 0;
    for (; i + 8 <= V; i += 8) {
        v4f x0, x1;
        memcpy(&x0, l + i, sizeof x0);
        memcpy(&x1, l + i + 4, sizeof x1);
        a0 += exp_neg4(x0 - mx);
        a1 += exp_neg4(x1 - mx);
    }
    double sum = 0;
    for (; i < V; i++)
        sum += exp_neg4((v4f){l[i] - mx, 0, 0, 0})[0];
    for (int j = 0; j < 4; j++)
        sum += (double)a0[j] + (double)a1[j];
    return mx + (float)log(sum);
}

/* The top-p threshold: the largest t such that the values >= t hold at
 * least `goal` of the mass.  Quickselect on mass (v[0..n) is reordered),
 * O(n) expected; n >= 1 and values > 0. */
static float mass_threshold(float *v, uint32_t n, double goal)
{
    uint32_t lo = 0, hi = n;
    double above = 0; /* mass of the values known to be above [lo, hi) */
    for (;;) {
        float pivot = v[lo + (hi - lo) / 2];
        /* [lo, lt) > pivot, [lt, i) == pivot, [gt, hi) < pivot */
        uint32_t lt = lo, i = lo, gt = hi;
        double m_gt = 0, m_eq = 0;
        while (i < gt) {
            float x = v[i];
            if (x > pivot) {
                v[i++] = v[lt];
                v[lt++] = x;
                m_gt += x;
            } else if (x < pivot) {
                v[i] = v[--gt];
                v[gt] = x;
            } else {
                i++;
                m_eq += x;
            }
        }
        if (above + m_gt >= goal && lt > lo) {
            hi = lt;
            continue;
        }
        if (above + m_gt + m_eq >= goal || gt == hi)
            return pivot; /* (or rounding left a sliver: keep everything) */
        above += m_gt + m_eq;
        lo = gt;
    }
}

/* Drop the candidates whose probability is 0, keeping id order. */
static uint32_t compact(int32_t *ids, float *pr, uint32_t n)
{
    uint32_t m = 0;
    for (uint32_t i = 0; i < n; i++)
        if (pr[i] > 0) {
            ids[m] = ids[i];
            pr[m++] = pr[i];
        }
    return m;
}

static int cmp_id(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Top-k below this uses a best-first list; above, selection over a copy. */
#define TOPK_LIST_MAX 64

void sample_next(struct sampler *s, const float *logits, const struct sample_params *p, const int32_t *history,
                 uint32_t n_history, uint32_t position, uint32_t n_top, struct sample_result *out)
{
    uint32_t V = s->vocab;
    float *l = s->l;
    memcpy(l, logits, V * sizeof *l);

    if (p->repetition_penalty > 0 && p->repetition_penalty != 1.0f && n_history) {
        uint32_t w = p->penalty_window ? p->penalty_window : 64;
        uint32_t from = n_history > w ? n_history - w : 0;
        /* Penalize each distinct token once (the window is short: look back
         * for an earlier occurrence rather than clear a vocabulary of marks). */
        for (uint32_t i = from; i < n_history; i++) {
            int32_t t = history[i];
            if (t < 0 || (uint32_t)t >= V)
                continue;
            bool seen = false;
            for (uint32_t j = from; j < i && !seen; j++)
                seen = history[j] == t;
            if (!seen)
                l[t] = l[t] > 0 ? l[t] / p->repetition_penalty : l[t] * p->repetition_penalty;
        }
    }

    if ((p->presence_penalty != 0 || p->frequency_penalty != 0) && position) {
        /* OpenAI's penalties count the output only: positions [0, position)
         * are the last `position` tokens of the history, whether generated
         * here or given back as a resumed request's prompt tokens. */
        assert(position <= n_history);
        const int32_t *gen = history + n_history - position;
        for (uint32_t i = 0; i < position; i++)
            if (gen[i] >= 0 && (uint32_t)gen[i] < V)
                s->count[gen[i]]++;
        /* Each distinct token once; clearing its count leaves the array
         * zeroed for the next call in O(output), not O(vocab). */
        for (uint32_t i = 0; i < position; i++) {
            int32_t t = gen[i];
            if (t < 0 || (uint32_t)t >= V || !s->count[t])
                continue;
            l[t] -= (float)s->count[t] * p->frequency_penalty + p->presence_penalty;
            s->count[t] = 0;
        }
    }

    /* The model distribution: log-softmax of l. */
    float mx = max_of(l, V);
    int32_t argmax = 0; /* the first token at the max (ties: the lower id) */
    for (uint32_t i = 0; i < V; i++)
        if (l[i] == mx) {
            argmax = (int32_t)i;
            break;
        }
    float lse = log_sum_exp(l, V, mx);

    int32_t chosen = argmax;
    if (p->temperature > 0) {
        float inv_t = 1.0f / p->temperature;
        int32_t *ids = s->ids;
        float *pr = s->p;
        uint32_t n = 0;
        /* Candidates in id order: the top k by logit (ties by lower id),
         * or every token. */
        if (p->top_k > 0 && p->top_k < V) {
            uint32_t k = p->top_k;
            if (k <= TOPK_LIST_MAX) {
                for (uint32_t i = 0; i < V; i++)
                    if (n < k || l[i] > pr[k - 1]) /* most tokens stop here */
                        top_insert(ids, pr, &n, k, (int32_t)i, l[i]);
                qsort(ids, n, sizeof *ids, cmp_id);
            } else {
                memcpy(s->sel, l, V * sizeof *l);
                float kth = kth_largest(s->sel, V, k);
                uint32_t above = 0;
                for (uint32_t i = 0; i < V; i++)
                    above += l[i] > kth;
                uint32_t ties_left = k - above;
                for (uint32_t i = 0; i < V; i++)
                    if (l[i] > kth || (l[i] == kth && ties_left && ties_left--))
                        ids[n++] = (int32_t)i;
            }
        } else {
            for (uint32_t i = 0; i < V; i++)
                ids[i] = (int32_t)i;
            n = V;
        }
        /* Temperature; the max token gets 1, and a NaN logit nothing. */
        exp_shifted(l, n == V ? NULL : ids, n, mx, inv_t, pr);
        if (p->min_p > 0)
            for (uint32_t i = 0; i < n; i++)
                if (pr[i] < p->min_p)
                    pr[i] = 0;
        n = compact(ids, pr, n);
        double total = 0;
        for (uint32_t i = 0; i < n; i++)
            total += pr[i];
        if (p->top_p > 0 && p->top_p < 1 && n > 1) {
            /* The smallest top set whose mass reaches top_p of the total
             * (ties with its smallest value kept). */
            memcpy(s->sel, pr, n * sizeof *pr);
            float t = mass_threshold(s->sel, n, p->top_p * total);
            total = 0;
            for (uint32_t i = 0; i < n; i++) {
                if (pr[i] < t)
                    pr[i] = 0;
                total += pr[i];
            }
            n = compact(ids, pr, n);
        }
        /* One draw, walking the kept tokens in id order. */
        double target = sample_uniform(p->seed, position) * total, acc = 0;
        chosen = n ? ids[n - 1] : argmax; /* rounding at the very end of the walk */
        for (uint32_t i = 0; i < n; i++) {
            acc += pr[i];
            if (acc > target) {
                chosen = ids[i];
                break;
            }
        }
    }

    out->token = chosen;
    out->logprob = l[chosen] - lse;
    out->n_top = 0;
    if (n_top > SAMPLE_MAX_TOP)
        n_top = SAMPLE_MAX_TOP;
    if (n_top) {
        for (uint32_t i = 0; i < V; i++)
            if (out->n_top < n_top || l[i] > out->top_logprobs[n_top - 1])
                top_insert(out->top_ids, out->top_logprobs, &out->n_top, n_top, (int32_t)i, l[i]);
        for (uint32_t i = 0; i < out->n_top; i++)
            out->top_logprobs[i] -= lse;
    }
}
