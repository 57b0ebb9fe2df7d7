/* adapt.c — see adapt.h. */
#include "adapt.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

static uint32_t clamp(const struct adapt *a, uint64_t c)
{
    if (c > a->max_cap)
        c = a->max_cap;
    if (c < a->min_cap)
        c = a->min_cap;
    return (uint32_t)c;
}

static uint32_t in_force(const struct adapt *a) { return clamp(a, a->own < a->limit ? a->own : a->limit); }

/* A quarter, at least one: the step of growth, and how far below a too-slow
 * cap rises stop. */
static uint32_t quarter(uint32_t c) { return c / 4 ? c / 4 : 1; }

void adapt_init(struct adapt *a, uint32_t min_cap, uint32_t max_cap, uint32_t initial, double target_ms,
                double max_ms)
{
    memset(a, 0, sizeof *a);
    a->min_cap = min_cap ? min_cap : 1;
    a->max_cap = max_cap < a->min_cap ? a->min_cap : max_cap;
    a->limit = a->max_cap;
    a->target_ms = target_ms;
    a->max_ms = max_ms < target_ms ? target_ms : max_ms;
    a->own = clamp(a, initial);
    a->cap = in_force(a);
    a->pressure = PRESSURE_NORMAL;
}

/* Move the latency cap; a new window starts whenever it or the cap in force
 * moves (evidence must come from the new cap).  True if either moved. */
static bool set_own(struct adapt *a, uint32_t own, const char *why)
{
    own = clamp(a, own);
    uint32_t old_own = a->own, old_cap = a->cap;
    a->own = own;
    a->cap = in_force(a);
    if (own == old_own && a->cap == old_cap)
        return false;
    if (a->cap != old_cap)
        snprintf(a->reason, sizeof a->reason, "%s (%u -> %u)", why, old_cap, a->cap);
    else
        snprintf(a->reason, sizeof a->reason, "%s (latency cap %u -> %u; the supervisor's bound %u holds)", why,
                 old_own, own, a->limit);
    a->n = 0;
    return true;
}

static double median(const double *v, uint32_t n)
{
    double s[ADAPT_WINDOW];
    memcpy(s, v, n * sizeof *s);
    for (uint32_t i = 1; i < n; i++) /* n is 8: insertion sort */
        for (uint32_t j = i; j > 0 && s[j - 1] > s[j]; j--) {
            double t = s[j];
            s[j] = s[j - 1];
            s[j - 1] = t;
        }
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

static void forget_ceiling(struct adapt *a)
{
    a->ceiling = a->hold = 0;
    a->ceiling_ms = 0;
}

/* A slow window: undo a cut that did not help, undo a rise that hurt, or
 * halve the batch that ran. */
static bool on_slow(struct adapt *a, double med, uint32_t batch)
{
    char why[128];
    if (a->cut_from && med > ADAPT_FUTILE * a->cut_ms) {
        uint32_t back = a->cut_from;
        snprintf(why, sizeof why,
                 "step %.1f ms after the cut, %.1f ms before: the batch is not what makes steps slow, cut undone", med,
                 a->cut_ms);
        if (a->cut_undoes_rise)
            forget_ceiling(a); /* the rise was not the cause either */
        if (a->prev && back >= a->prev)
            a->prev = 0;
        a->cut_from = 0;
        a->cut_undoes_rise = false;
        a->futile = ADAPT_HOLD;
        return set_own(a, back, why);
    }
    if (a->rose_from && batch > a->rose_from && !a->rise_suspect) {
        /* One slow window may be noise (another process for a moment):
         * the rise is blamed on the second in a row. */
        a->rise_suspect = true;
        return false;
    }
    if (a->rose_from && batch > a->rose_from) {
        uint32_t back = a->rose_from;
        snprintf(why, sizeof why, "step %.1f ms above max %.1f ms right after a rise to %u: back", med, a->max_ms,
                 a->own);
        a->ceiling = a->own;
        a->ceiling_ms = 0; /* the next good window at the cap below measures it */
        a->hold = ADAPT_HOLD;
        a->cut_from = a->own;
        a->cut_ms = med;
        a->cut_undoes_rise = true;
        a->rose_from = 0;
        a->rise_suspect = false;
        return set_own(a, back, why);
    }
    a->rose_from = 0; /* the batch did not grow past the old cap: the rise is not to blame */
    a->rise_suspect = false;
    if (a->futile) {
        a->futile--;
        return false;
    }
    uint32_t from = a->own < batch ? a->own : batch;
    uint32_t to = clamp(a, from / 2);
    if (to >= a->cap)
        return false; /* at the floor: nothing left to cut */
    snprintf(why, sizeof why, "step %.1f ms above max %.1f ms at %u sequences", med, a->max_ms, batch);
    if (!a->prev)
        a->prev = a->own;
    a->cut_from = a->own;
    a->cut_ms = med;
    a->cut_undoes_rise = false;
    return set_own(a, to, why);
}

/* A window that was not slow: the last change stands; recover towards prev
 * (doubling) or grow (by a quarter) when the evidence allows. */
static bool on_good(struct adapt *a, double med, bool saturated)
{
    a->cut_from = 0;
    a->cut_undoes_rise = false;
    a->rose_from = 0;
    a->rise_suspect = false;
    a->futile = 0;
    if (a->ceiling && !(a->ceiling_ms > 0)) {
        a->ceiling_ms = med;
    } else if (a->ceiling && med < a->ceiling_ms / 2) {
        /* Steps twice as fast as just below the ceiling when it was found:
         * whatever made it too slow (another process on the CPU) is gone,
         * and the recovery may go on. */
        forget_ceiling(a);
    }
    if (a->pressure != PRESSURE_NORMAL)
        return false;
    uint32_t top = a->max_cap;
    if (a->ceiling && a->ceiling - quarter(a->ceiling) < top)
        top = a->ceiling - quarter(a->ceiling);
    top = clamp(a, top);
    char why[128];
    uint32_t from = a->own, old_cap = a->cap;
    bool changed = false;
    if (a->prev > a->own) {
        uint64_t to = (uint64_t)a->own * 2;
        if (to > a->prev)
            to = a->prev;
        if (to > top)
            to = top;
        uint32_t target = a->prev;
        if (to >= a->prev)
            a->prev = 0; /* back */
        snprintf(why, sizeof why, "recovering: step %.1f ms within max %.1f ms, back towards %u", med, a->max_ms,
                 target);
        changed = to > a->own && set_own(a, (uint32_t)to, why);
    } else {
        a->prev = 0;
        if (med < a->target_ms && saturated && a->own < a->limit && a->own < top) {
            uint64_t to = (uint64_t)a->own + quarter(a->own);
            snprintf(why, sizeof why, "step %.1f ms under target %.1f ms at full batch", med, a->target_ms);
            changed = set_own(a, (uint32_t)(to < top ? to : top), why);
        }
    }
    /* A rise that reached the batch is judged by the next window. */
    if (changed && a->cap > old_cap)
        a->rose_from = from;
    return changed;
}

bool adapt_step(struct adapt *a, double ms, uint32_t batch)
{
    if (batch == 0)
        return false;
    assert(a->n < ADAPT_WINDOW);
    a->lat[a->n] = ms;
    a->bsz[a->n] = batch;
    if (++a->n < ADAPT_WINDOW)
        return false;
    double med = median(a->lat, a->n);
    uint32_t largest = 0, full = 0;
    for (uint32_t i = 0; i < a->n; i++) {
        largest = a->bsz[i] > largest ? a->bsz[i] : largest;
        full += a->bsz[i] >= a->cap;
    }
    bool saturated = full * 2 >= a->n;
    a->n = 0;
    a->windows++;
    if (a->hold && --a->hold == 0) {
        /* A recovery that a too-slow cap blocked for a whole hold is over:
         * from here on only growth (under target) raises the cap, or each
         * hold would end in the same probes of the same wall. */
        if (a->prev > a->own)
            a->prev = 0;
        forget_ceiling(a);
    }
    if (med <= a->max_ms)
        return on_good(a, med, saturated);
    /* A cut does not preempt: sequences above the new cap run until they
     * finish.  Until the batch is down to it, slow steps say nothing about
     * the cut. */
    if (a->cut_from && largest > a->cap)
        return false;
    return on_slow(a, med, largest);
}

bool adapt_set_limit(struct adapt *a, uint32_t limit)
{
    a->limit = limit ? limit : 1;
    uint32_t c = in_force(a);
    if (c == a->cap)
        return false;
    snprintf(a->reason, sizeof a->reason, "supervisor bound %u (%u -> %u)", a->limit, a->cap, c);
    a->cap = c;
    a->n = 0;
    /* The batch moved for a reason that is not ours: the next window says
     * nothing about the last cut or rise. */
    a->cut_from = 0;
    a->cut_undoes_rise = false;
    a->rose_from = 0;
    a->rise_suspect = false;
    return true;
}

void adapt_set_pressure(struct adapt *a, enum pressure_level level) { a->pressure = pressure_level_clamp((int)level); }
