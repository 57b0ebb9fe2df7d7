/* batchctl.c — per-worker upper bound on the batch cap from memory and
 * pressure.  See batchctl.h for the rules. */
#include "supervisor/batchctl.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "err.h"

void batchctl_config_from(const struct rill_config *c, struct batchctl_config *out)
{
    memset(out, 0, sizeof *out);
    out->min_batch = (uint32_t)c->min_batch;
    out->max_batch = (uint32_t)c->max_batch;
    out->initial = 0;
    out->min_interval_ns = 1000000000ull;
    out->forget_ns = 60000000000ull;
    out->mem_headroom = 0.1;
    out->kv_bytes_per_token = 0;
    out->assumed_tokens = 256;
}

int batchctl_init(struct batchctl *b, const struct batchctl_config *cfg)
{
    memset(b, 0, sizeof *b);
    if (cfg->min_batch == 0 || cfg->min_batch > cfg->max_batch || !(cfg->mem_headroom >= 0 && cfg->mem_headroom <= 0.9))
        return RILL_E_BAD_CONFIG;
    b->cfg = *cfg;
    b->level = PRESSURE_NORMAL;
    return 0;
}

void batchctl_set_share(struct batchctl *b, uint64_t share_bytes) { b->share_bytes = share_bytes; }

const char *batchctl_why_name(enum batchctl_why why)
{
    static const char *const names[] = {"memory", "pressure", "recover"};
    return (unsigned)why < BATCHCTL_WHY_COUNT ? names[why] : "?";
}

static struct batchctl_worker *find(struct batchctl *b, const char *id)
{
    for (size_t i = 0; i < BATCHCTL_MAX_WORKERS; i++)
        if (b->w[i].in_use && !strcmp(b->w[i].id, id))
            return &b->w[i];
    return NULL;
}

const struct batchctl_worker *batchctl_find(const struct batchctl *b, const char *id)
{
    return find((struct batchctl *)b, id);
}

void batchctl_forget(struct batchctl *b, const char *id)
{
    struct batchctl_worker *w = find(b, id);
    if (w)
        memset(w, 0, sizeof *w);
}

/* --- arithmetic ---------------------------------------------------------------------- */

static uint32_t clamp(const struct batchctl *b, uint64_t v)
{
    if (v < b->cfg.min_batch)
        return b->cfg.min_batch;
    if (v > b->cfg.max_batch)
        return b->cfg.max_batch;
    return (uint32_t)v;
}

static uint64_t since(uint64_t now, uint64_t t) { return now > t ? now - t : 0; }

/* +25 %, at least +1: small enough that one step cannot throw the memory
 * back over a threshold it just left, big enough to climb from 16 to 64 in
 * seven steps. */
static uint64_t step_up(uint32_t bound) { return (uint64_t)bound + (bound / 4 ? bound / 4 : 1); }

/* Where a worker's bound may climb to: its goal (initial), at most the
 * memory bound less the headroom, and a step below a bound where pressure
 * came back. */
static uint32_t climb_top(const struct batchctl *b, struct batchctl_worker *w, bool has_mem, uint32_t mem,
                          uint64_t now)
{
    uint64_t top = b->cfg.initial ? b->cfg.initial : b->cfg.max_batch;
    if (has_mem && (uint64_t)floor(mem * (1 - b->cfg.mem_headroom)) < top)
        top = (uint64_t)floor(mem * (1 - b->cfg.mem_headroom));
    if (w->pressed_at && since(now, w->pressed_ns) >= b->cfg.forget_ns)
        w->pressed_at = 0;
    if (w->pressed_at) {
        uint64_t cap = w->pressed_at - (w->pressed_at / 4 ? w->pressed_at / 4 : 1);
        if (cap < top)
            top = cap;
    }
    return clamp(b, top);
}

/* The bound after the cuts for every level entered between `from` (exclusive)
 * and `to` (inclusive). */
static uint32_t pressure_cut(const struct batchctl *b, uint32_t bound, uint32_t active, int from, int to)
{
    uint64_t v = bound;
    if (from < PRESSURE_WARNING && to >= PRESSURE_WARNING)
        v /= 2;
    if (from < PRESSURE_CRITICAL && to >= PRESSURE_CRITICAL)
        v /= 2;
    if (from < PRESSURE_EMERGENCY && to >= PRESSURE_EMERGENCY) {
        uint64_t a = active > b->cfg.min_batch ? active : b->cfg.min_batch;
        if (a < v)
            v = a;
    }
    return clamp(b, v);
}

/* KV bytes of one sequence: the measured estimate, floored by the
 * configured one; 0 when neither is known. */
static double per_seq(const struct batchctl *b, const struct batchctl_worker *w)
{
    double conf = (double)b->cfg.kv_bytes_per_token * (double)b->cfg.assumed_tokens;
    return w->kv_per_seq > conf ? w->kv_per_seq : conf;
}

/* How many sequences fit this worker's share; false when there is no memory
 * bound.  `why` gets the reason text for a cut. */
static bool memory_bound(const struct batchctl *b, const struct batchctl_worker *w, const struct proto_heartbeat *hb,
                         uint32_t *out, char *why, size_t len)
{
    *out = b->cfg.max_batch;
    double ps = per_seq(b, w);
    if (!b->share_bytes || !(ps > 0))
        return false;
    uint64_t base = hb->rss_bytes > hb->kv_bytes ? hb->rss_bytes - hb->kv_bytes : 0;
    uint64_t room = b->share_bytes > base ? b->share_bytes - base : 0;
    double n = floor((double)room / ps);
    *out = clamp(b, n > (double)b->cfg.max_batch ? b->cfg.max_batch : (uint64_t)n);
    char s1[32], s2[32], s3[32];
    snprintf(why, len, "memory: %.0f sequences of %s fit the %s left of the %s share", n,
             pressure_fmt_bytes(s1, sizeof s1, (uint64_t)ps), pressure_fmt_bytes(s2, sizeof s2, room),
             pressure_fmt_bytes(s3, sizeof s3, b->share_bytes));
    return true;
}

/* --- changes -------------------------------------------------------------------------- */

static void apply(struct batchctl *b, struct batchctl_worker *w, uint32_t bound, enum batchctl_why why,
                  const char *reason, uint64_t now, struct batchctl_change *out)
{
    out->changed = true;
    out->old_bound = w->bound;
    out->bound = bound;
    out->why = why;
    snprintf(out->reason, sizeof out->reason, "%s", reason);
    w->bound = bound;
    w->last_change_ns = w->last_send_ns = now;
    b->changes[why]++;
}

static struct batchctl_worker *enroll(struct batchctl *b, const char *id, uint32_t active)
{
    for (size_t i = 0; i < BATCHCTL_MAX_WORKERS; i++) {
        struct batchctl_worker *w = &b->w[i];
        if (w->in_use)
            continue;
        memset(w, 0, sizeof *w);
        w->in_use = true;
        snprintf(w->id, sizeof w->id, "%s", id);
        w->bound = clamp(b, b->cfg.initial ? b->cfg.initial : b->cfg.max_batch);
        w->mem_bound = b->cfg.max_batch;
        if (b->level != PRESSURE_NORMAL) {
            /* born under pressure: start cut, climb back to the initial
             * bound once it is over */
            w->recovering = true;
            w->bound = pressure_cut(b, w->bound, active, PRESSURE_NORMAL, (int)b->level);
        }
        return w;
    }
    return NULL;
}

int batchctl_heartbeat(struct batchctl *b, const struct proto_heartbeat *hb, uint64_t now,
                       struct batchctl_change *out)
{
    memset(out, 0, sizeof *out);
    if (!hb->id[0])
        return RILL_E_BAD_REQUEST;
    snprintf(out->id, sizeof out->id, "%s", hb->id);
    struct batchctl_worker *w = find(b, hb->id);
    if (!w && !(w = enroll(b, hb->id, hb->active)))
        return RILL_E_FULL;
    const struct batchctl_config *c = &b->cfg;
    out->bound = out->old_bound = w->bound;
    w->active = hb->active;

    if (hb->active > 0 && hb->kv_bytes > 0) {
        double sample = (double)hb->kv_bytes / hb->active;
        w->kv_per_seq = sample > w->kv_per_seq ? sample : w->kv_per_seq + (sample - w->kv_per_seq) * 0.1;
    }
    char mem_why[PROTO_NOTE_LEN + 1] = "";
    uint32_t mem;
    bool has_mem = memory_bound(b, w, hb, &mem, mem_why, sizeof mem_why);
    w->mem_bound = mem;

    /* Step times are not read: latency is the worker's to answer. */
    bool can = !w->last_change_ns || since(now, w->last_change_ns) >= c->min_interval_ns;
    if (can && w->bound > mem) {
        apply(b, w, mem, BATCHCTL_WHY_MEMORY, mem_why, now, out);
    } else if (can && b->level == PRESSURE_NORMAL &&
               (!b->normal_since_ns || since(now, b->normal_since_ns) >= c->min_interval_ns)) {
        /* climbs wait a min_interval after pressure ends */
        uint32_t top = climb_top(b, w, has_mem, mem, now);
        if (w->bound < top) {
            uint32_t nb = step_up(w->bound) < top ? (uint32_t)step_up(w->bound) : top;
            char why[PROTO_NOTE_LEN + 1];
            if (w->recovering)
                snprintf(why, sizeof why, "recovering after pressure: %u -> %u of %u", w->bound, nb, top);
            else
                snprintf(why, sizeof why, "climbing back: %u -> %u of %u (%s)", w->bound, nb, top,
                         has_mem ? "memory allows it" : "no memory bound");
            apply(b, w, nb, BATCHCTL_WHY_RECOVER, why, now, out);
        }
        if (w->bound >= top)
            w->recovering = false; /* back, or as far as memory allows */
    }

    if (!out->changed && hb->batch_limit != w->bound &&
        (!w->last_send_ns || since(now, w->last_send_ns) >= c->min_interval_ns)) {
        out->resend = true;
        snprintf(out->reason, sizeof out->reason, "resync: worker has %u, bound is %u", hb->batch_limit, w->bound);
        w->last_send_ns = now;
        b->resends++;
    }
    return 0;
}

int batchctl_pressure(struct batchctl *b, enum pressure_level level, uint64_t now, struct batchctl_change *out,
                      size_t cap)
{
    if ((unsigned)level >= PRESSURE_LEVELS)
        return RILL_E_BAD_REQUEST;
    int old = (int)b->level;
    if ((int)level == old)
        return 0;
    b->level = level;
    if (level == PRESSURE_NORMAL)
        b->normal_since_ns = now ? now : 1;
    if ((int)level < old)
        return 0; /* easing pressure never raises a bound by itself */

    int n = 0;
    for (size_t i = 0; i < BATCHCTL_MAX_WORKERS; i++) {
        struct batchctl_worker *w = &b->w[i];
        if (!w->in_use)
            continue;
        if (old == PRESSURE_NORMAL) {
            /* Pressure back while the bound was still recovering from the
             * last episode, or soon after: the bound it has reached is
             * where memory runs out.  Recovery stays a step below it for a
             * while, or the bound would cycle between the cut and the
             * same wall every few seconds. */
            bool again = w->recovering || (w->episode_ns && since(now, w->episode_ns) < b->cfg.forget_ns);
            if (again) {
                w->pressed_at = w->bound;
                w->pressed_ns = now;
            }
            w->episode_ns = now ? now : 1;
            w->recovering = true;
        }
        uint32_t nb = pressure_cut(b, w->bound, w->active, old, (int)level);
        if (nb == w->bound)
            continue;
        char why[PROTO_NOTE_LEN + 1];
        if (level == PRESSURE_EMERGENCY)
            snprintf(why, sizeof why, "pressure emergency: %u -> %u (the active sequences)", w->bound, nb);
        else
            snprintf(why, sizeof why, "pressure %s%s%s: %u -> %u", pressure_level_name(level),
                     old != (int)level - 1 ? " from " : "", old != (int)level - 1 ? pressure_level_name(old) : "",
                     w->bound, nb);
        struct batchctl_change scratch, *o = (size_t)n < cap ? &out[n] : &scratch;
        memset(o, 0, sizeof *o);
        snprintf(o->id, sizeof o->id, "%s", w->id);
        apply(b, w, nb, BATCHCTL_WHY_PRESSURE, why, now, o);
        if (o != &scratch)
            n++;
    }
    return n;
}
