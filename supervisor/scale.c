/* scale.c — see scale.h for the rules. */
#include "supervisor/scale.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "err.h"

int scale_config_from(const struct rill_config *c, struct scale_config *out, char *why, size_t why_len)
{
    memset(out, 0, sizeof *out);
    int w = (int)c->workers;
    out->min = c->min_workers ? (int)c->min_workers : w;
    out->max = c->max_workers ? (int)c->max_workers : (w > out->min ? w : out->min);
    if (out->min > out->max) {
        snprintf(why, why_len, "min_workers (%d) is more than max_workers (%d)", out->min, out->max);
        return RILL_E_BAD_CONFIG;
    }
    out->up_queued = c->scale_up_queued;
    out->up_ns = (uint64_t)(c->scale_up_s * 1e9);
    out->down_ns = (uint64_t)(c->scale_down_s * 1e9);
    out->cooldown_ns = (uint64_t)(c->scale_cooldown_s * 1e9);
    out->warning = c->pressure_warning;
    return w < out->min ? out->min : w > out->max ? out->max : w;
}

void scale_init(struct scale *s, const struct scale_config *c)
{
    assert(c->min >= 1 && c->min <= c->max);
    memset(s, 0, sizeof *s);
    s->c = *c;
}

const char *scale_why_name(enum scale_why why)
{
    static const char *const names[] = {"queue", "pressure_relieved", "pressure", "idle"};
    return (unsigned)why < SCALE_WHY_COUNT ? names[why] : "?";
}

const char *scale_dir_name(enum scale_dir dir)
{
    return dir == SCALE_UP ? "up" : dir == SCALE_DOWN ? "down" : "none";
}

enum scale_dir scale_why_dir(enum scale_why why)
{
    return why == SCALE_WHY_QUEUE || why == SCALE_WHY_PRESSURE_RELIEVED ? SCALE_UP : SCALE_DOWN;
}

int scale_running(const struct scale_input *in)
{
    int n = 0;
    for (int i = 0; i < in->n; i++)
        n += in->w[i].slot <= SCALE_SLOT_RESTARTING;
    return n;
}

/* What the rules look at, summed over the slots. */
struct tally {
    int running, ready, starting, off;
    uint64_t active, queued, caps, rss;
    int with_rss;
};

static struct tally tally(const struct scale_input *in)
{
    struct tally t = {0};
    for (int i = 0; i < in->n; i++) {
        const struct scale_worker *w = &in->w[i];
        t.running += w->slot <= SCALE_SLOT_RESTARTING;
        t.starting += w->slot == SCALE_SLOT_STARTING || w->slot == SCALE_SLOT_RESTARTING;
        t.off += w->slot == SCALE_SLOT_OFF;
        if (w->slot != SCALE_SLOT_READY)
            continue;
        t.ready++;
        t.active += w->active;
        t.queued += w->queued;
        t.caps += w->batch_cap;
        if (w->rss) {
            t.rss += w->rss;
            t.with_rss++;
        }
    }
    return t;
}

/* The ready worker to stop: the fewest requests (by `key`), ties the
 * highest slot. */
static int pick_ready(const struct scale_input *in, bool count_queued)
{
    int best = -1;
    uint64_t best_load = 0;
    for (int i = 0; i < in->n; i++) {
        const struct scale_worker *w = &in->w[i];
        if (w->slot != SCALE_SLOT_READY)
            continue;
        uint64_t load = w->active + (count_queued ? w->queued : 0);
        if (best < 0 || load <= best_load) {
            best = i;
            best_load = load;
        }
    }
    return best;
}

static int first_off(const struct scale_input *in)
{
    for (int i = 0; i < in->n; i++)
        if (in->w[i].slot == SCALE_SLOT_OFF)
            return i;
    return -1;
}

/* Whether one more worker fits: level normal, and with a known budget the
 * ready workers' mean RSS on top of what is used stays under warning. */
static bool room_for_one(const struct scale *s, const struct scale_input *in, const struct tally *t)
{
    if (in->level != PRESSURE_NORMAL)
        return false;
    if (!in->have_budget || !in->budget || !t->with_rss)
        return true;
    uint64_t one = t->rss / (uint64_t)t->with_rss;
    return (double)(in->used + one) <= s->c.warning * (double)in->budget;
}

/* Rule 4's test without its wait: nothing waits and the running sequences
 * fit in half of the other workers' caps. */
static bool idle_now(const struct tally *t)
{
    if (t->ready < 2 || t->queued)
        return false;
    return 2 * t->active * (uint64_t)t->ready <= (uint64_t)(t->ready - 1) * t->caps;
}

static bool decided(struct scale *s, const struct scale_input *in, struct scale_decision *out, enum scale_why why,
                    int slot, int running)
{
    out->dir = scale_why_dir(why);
    out->why = why;
    out->slot = slot;
    out->migrate = why == SCALE_WHY_PRESSURE;
    out->before = running;
    out->after = running + (out->dir == SCALE_UP ? 1 : -1);
    s->events[why]++;
    s->last_ns = in->now_ns;
    if (why == SCALE_WHY_PRESSURE)
        s->last_unload_ns = in->now_ns;
    s->queue_since_ns = s->idle_since_ns = 0;
    s->last = *out;
    return true;
}

bool scale_decide(struct scale *s, const struct scale_input *in, struct scale_decision *out)
{
    memset(out, 0, sizeof *out);
    out->slot = -1;
    const struct tally t = tally(in);
    uint64_t now = in->now_ns;
    bool cooled = !s->last_ns || now - s->last_ns >= s->c.cooldown_ns;

    /* The timers run whatever else happens, so that a condition that held
     * through a cooldown fires as soon as it ends. */
    bool queue = t.ready && !t.starting && (double)t.queued >= s->c.up_queued * t.ready;
    if (!queue)
        s->queue_since_ns = 0;
    else if (!s->queue_since_ns)
        s->queue_since_ns = now;
    bool idle = !t.starting && idle_now(&t);
    if (!idle)
        s->idle_since_ns = 0;
    else if (!s->idle_since_ns)
        s->idle_since_ns = now;

    if (in->level == PRESSURE_EMERGENCY && t.running > s->c.min &&
        (!s->last_unload_ns || now - s->last_unload_ns >= s->c.cooldown_ns)) {
        int k = pick_ready(in, true);
        if (k >= 0) {
            snprintf(out->detail, sizeof out->detail, "emergency memory pressure (%.0f%% of the budget)",
                     in->have_budget && in->budget ? 100.0 * (double)in->used / (double)in->budget : 0.0);
            s->owed++;
            return decided(s, in, out, SCALE_WHY_PRESSURE, k, t.running);
        }
    }
    if (!cooled)
        return false;
    bool can_add = t.running < s->c.max && !t.starting && t.off > 0 && room_for_one(s, in, &t);
    if (s->owed && in->level == PRESSURE_NORMAL) {
        if (idle) {
            s->owed = 0; /* the load no longer needs it */
        } else if (can_add) {
            s->owed--;
            snprintf(out->detail, sizeof out->detail, "memory pressure is back to normal (%.0f%% of the budget)",
                     in->have_budget && in->budget ? 100.0 * (double)in->used / (double)in->budget : 0.0);
            return decided(s, in, out, SCALE_WHY_PRESSURE_RELIEVED, first_off(in), t.running);
        }
    }
    if (queue && can_add && now - s->queue_since_ns >= s->c.up_ns) {
        snprintf(out->detail, sizeof out->detail, "%.1f requests waiting per ready worker for %.1f s",
                 (double)t.queued / t.ready, (double)(now - s->queue_since_ns) / 1e9);
        return decided(s, in, out, SCALE_WHY_QUEUE, first_off(in), t.running);
    }
    if (idle && t.running > s->c.min && now - s->idle_since_ns >= s->c.down_ns) {
        snprintf(out->detail, sizeof out->detail,
                 "nothing waiting and %llu sequences running for %.1f s (the others' caps hold %llu)",
                 (unsigned long long)t.active, (double)(now - s->idle_since_ns) / 1e9,
                 (unsigned long long)(t.caps * (uint64_t)(t.ready - 1) / (uint64_t)t.ready));
        return decided(s, in, out, SCALE_WHY_IDLE, pick_ready(in, false), t.running);
    }
    return false;
}
