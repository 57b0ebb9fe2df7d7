/* adapt.c — see adapt.h. */
#include "adapt.h"

#include <stdio.h>
#include <string.h>

static uint32_t clamp_cap(const struct adapt *a, uint32_t c)
{
    uint32_t hi = a->limit < a->max_cap ? a->limit : a->max_cap;
    if (c > hi)
        c = hi;
    if (c < a->min_cap)
        c = a->min_cap;
    return c;
}

void adapt_init(struct adapt *a, uint32_t min_cap, uint32_t max_cap, uint32_t initial, double target_ms,
                double max_ms)
{
    memset(a, 0, sizeof *a);
    a->min_cap = min_cap ? min_cap : 1;
    a->max_cap = max_cap < a->min_cap ? a->min_cap : max_cap;
    a->limit = a->max_cap;
    a->target_ms = target_ms;
    a->max_ms = max_ms < target_ms ? target_ms : max_ms;
    a->cap = clamp_cap(a, initial);
}

static bool set_cap(struct adapt *a, uint32_t c, const char *why)
{
    c = clamp_cap(a, c);
    if (c == a->cap)
        return false;
    snprintf(a->reason, sizeof a->reason, "%s (%u -> %u)", why, a->cap, c);
    if (c < a->cap)
        a->cooldown = ADAPT_COOLDOWN;
    a->cap = c;
    a->n = 0; /* a new cap needs fresh evidence */
    a->head = 0;
    return true;
}

bool adapt_step(struct adapt *a, double ms, uint32_t batch)
{
    if (batch == 0)
        return false;
    a->lat[a->head] = ms;
    a->bsz[a->head] = batch;
    a->head = (a->head + 1) % ADAPT_WINDOW;
    if (a->n < ADAPT_WINDOW)
        a->n++;
    if (a->cooldown)
        a->cooldown--;
    if (a->n < 3)
        return false;
    double sum = 0;
    bool saturated = true;
    for (int i = 1; i <= 3; i++) {
        uint32_t k = (a->head + ADAPT_WINDOW - (uint32_t)i) % ADAPT_WINDOW;
        sum += a->lat[k];
        saturated = saturated && a->bsz[k] >= a->cap;
    }
    double avg = sum / 3;
    char why[96];
    if (avg > a->max_ms) {
        uint32_t drop = a->cap / 4 ? a->cap / 4 : 1;
        snprintf(why, sizeof why, "step latency %.1f ms above max %.1f ms", avg, a->max_ms);
        a->ceiling = a->cap;
        a->pre_pressure_cap = 0; /* latency says the old cap was too much anyway */
        a->good_streak = 0;
        return set_cap(a, a->cap > drop ? a->cap - drop : a->min_cap, why);
    }
    if (avg < a->target_ms && saturated && !a->cooldown && a->pressure == 0) {
        /* Just under a cap that proved too slow: ask for a whole good window. */
        if (a->ceiling && a->cap + 1 >= a->ceiling) {
            if (a->n < ADAPT_WINDOW)
                return false;
            double wsum = 0;
            for (uint32_t i = 0; i < a->n; i++)
                wsum += a->lat[i];
            if (wsum / a->n >= a->target_ms)
                return false;
            a->ceiling = 0;
        }
        snprintf(why, sizeof why, "step latency %.1f ms under target %.1f ms at full batch", avg, a->target_ms);
        return set_cap(a, a->cap + 1, why);
    }
    return false;
}

bool adapt_pressure(struct adapt *a, int level)
{
    int old = a->pressure;
    a->pressure = level;
    if (old == 0 && level > 0)
        a->pre_pressure_cap = a->cap;
    if (level == 0 && old > 0) {
        a->cooldown = 0;
        bool changed = a->pre_pressure_cap > a->cap && set_cap(a, a->pre_pressure_cap, "memory pressure over");
        if (a->cap >= a->pre_pressure_cap)
            a->pre_pressure_cap = 0;
        return changed;
    }
    if (level <= old)
        return false;
    char why[64];
    snprintf(why, sizeof why, "memory pressure %s", level >= 3 ? "emergency" : level == 2 ? "critical" : "warning");
    uint32_t c = a->cap;
    for (int l = old; l < level && l < 2; l++)
        c = c / 2;
    return set_cap(a, c, why);
}

bool adapt_set_limit(struct adapt *a, uint32_t limit)
{
    a->limit = limit ? limit : 1;
    char why[64];
    snprintf(why, sizeof why, "supervisor bound %u", a->limit);
    /* Recovering from pressure: follow the bound back up to where we were. */
    uint32_t want = a->cap;
    if (a->pressure == 0 && a->pre_pressure_cap > want)
        want = a->pre_pressure_cap;
    bool changed = set_cap(a, want, why);
    if (a->cap >= a->pre_pressure_cap)
        a->pre_pressure_cap = 0;
    return changed;
}
