/* test_batchctl.c — the supervisor's batch bound: memory and pressure only
 * (step latency is the worker's, worker/adapt.h), pressure cuts and gradual
 * recovery, the memory bound, pace and no oscillation.  Deterministic:
 * synthetic heartbeats on a scripted clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "err.h"
#include "supervisor/batchctl.h"

#define MS  1000000ull
#define SEC 1000000000ull
#define MiB (1024ull * 1024)
#define BEAT (100 * MS) /* the heartbeat period */

static struct batchctl_config base_cfg(void)
{
    struct batchctl_config c = {
        .min_batch = 1, .max_batch = 64, .initial = 0,
        .min_interval_ns = 1 * SEC, .forget_ns = 60 * SEC,
        .mem_headroom = 0.1, .kv_bytes_per_token = 0, .assumed_tokens = 256,
    };
    return c;
}

static struct proto_heartbeat beat(const char *id, uint32_t active, double p99, uint32_t limit)
{
    struct proto_heartbeat h;
    memset(&h, 0, sizeof h);
    snprintf(h.id, sizeof h.id, "%s", id);
    h.active = active;
    h.step_p99_ms = (float)p99;
    h.step_ms = (float)p99;
    h.batch_limit = limit;
    return h;
}

/* A worker that obeys: runs `active` sequences (or the bound when
 * `saturate`), reports the bound as its limit. */
struct sim {
    struct batchctl b;
    uint64_t now;
    uint32_t changes;
    uint32_t rises, cuts;
    uint64_t last_change_at;
    uint64_t min_gap;             /* shortest time between two changes */
    struct batchctl_change last;
};

static void sim_init(struct sim *s, const struct batchctl_config *c)
{
    memset(s, 0, sizeof *s);
    assert_int_equal(batchctl_init(&s->b, c), 0);
    s->now = 1000 * SEC;
    s->min_gap = UINT64_MAX;
}

static uint32_t bound_of(struct sim *s, const char *id)
{
    const struct batchctl_worker *w = batchctl_find(&s->b, id);
    return w ? w->bound : s->b.cfg.initial ? s->b.cfg.initial : s->b.cfg.max_batch;
}

static void note(struct sim *s, const struct batchctl_change *ch)
{
    if (!ch->changed)
        return;
    s->changes++;
    if (ch->bound > ch->old_bound)
        s->rises++;
    else
        s->cuts++;
    if (s->last_change_at && s->now - s->last_change_at < s->min_gap)
        s->min_gap = s->now - s->last_change_at;
    s->last_change_at = s->now;
    s->last = *ch;
}

/* One heartbeat of `id` at the current time, then the clock moves on. */
static struct batchctl_change sim_beat(struct sim *s, const char *id, uint32_t active, double p99)
{
    struct proto_heartbeat h = beat(id, active, p99, bound_of(s, id));
    struct batchctl_change ch;
    assert_int_equal(batchctl_heartbeat(&s->b, &h, s->now, &ch), 0);
    note(s, &ch);
    s->now += BEAT;
    return ch;
}

/* A saturated worker (active == bound) with p99 from `lat(bound)`. */
static void sim_run(struct sim *s, const char *id, uint64_t dur, double (*lat)(uint32_t, uint64_t *), uint64_t *rng)
{
    for (uint64_t t = 0; t < dur; t += BEAT) {
        uint32_t b = bound_of(s, id);
        sim_beat(s, id, b, lat(b, rng));
    }
}

static double fast(uint32_t b, uint64_t *rng) { return 20; }
static double slow(uint32_t b, uint64_t *rng) { return 500; }

/* --- config ------------------------------------------------------------------------------ */

static void test_batchctl_init_validates_the_config(void **state)
{
    struct batchctl b;
    struct batchctl_config c = base_cfg();
    assert_int_equal(batchctl_init(&b, &c), 0);
    c.min_batch = 0;
    assert_int_equal(batchctl_init(&b, &c), RILL_E_BAD_CONFIG);
    c = base_cfg();
    c.min_batch = 65;
    assert_int_equal(batchctl_init(&b, &c), RILL_E_BAD_CONFIG);
    c = base_cfg();
    c.mem_headroom = 0.95;
    assert_int_equal(batchctl_init(&b, &c), RILL_E_BAD_CONFIG);
    c = base_cfg();
    c.mem_headroom = 0.0 / 0.0;
    assert_int_equal(batchctl_init(&b, &c), RILL_E_BAD_CONFIG);

    struct rill_config rc;
    cfg_defaults(&rc);
    batchctl_config_from(&rc, &c);
    assert_int_equal(c.min_batch, 1);
    assert_int_equal(c.max_batch, 64);
    assert_int_equal(batchctl_init(&b, &c), 0);
    assert_string_equal(batchctl_why_name(BATCHCTL_WHY_RECOVER), "recover");
}

static void test_batchctl_bad_heartbeats_are_refused(void **state)
{
    struct sim s;
    struct batchctl_config c = base_cfg();
    sim_init(&s, &c);
    struct proto_heartbeat h = beat("", 1, 10, 64);
    struct batchctl_change ch;
    assert_int_equal(batchctl_heartbeat(&s.b, &h, s.now, &ch), RILL_E_BAD_REQUEST);
    char id[16];
    for (int i = 0; i < BATCHCTL_MAX_WORKERS; i++) {
        snprintf(id, sizeof id, "w%d", i);
        h = beat(id, 1, 10, 64);
        assert_int_equal(batchctl_heartbeat(&s.b, &h, s.now, &ch), 0);
    }
    h = beat("one-too-many", 1, 10, 64);
    assert_int_equal(batchctl_heartbeat(&s.b, &h, s.now, &ch), RILL_E_FULL);
    batchctl_forget(&s.b, "w3");
    assert_null(batchctl_find(&s.b, "w3"));
    assert_int_equal(batchctl_heartbeat(&s.b, &h, s.now, &ch), 0);
    assert_int_equal(batchctl_pressure(&s.b, (enum pressure_level)7, s.now, NULL, 0), RILL_E_BAD_REQUEST);
}

static void test_batchctl_resends_a_bound_the_worker_does_not_have(void **state)
{
    struct sim s;
    struct batchctl_config c = base_cfg();
    sim_init(&s, &c);
    struct batchctl_change ch;
    struct proto_heartbeat h = beat("w0", 0, 0, 64);
    assert_int_equal(batchctl_heartbeat(&s.b, &h, s.now, &ch), 0);
    assert_false(ch.changed || ch.resend);
    assert_int_equal(ch.bound, 64);

    h.batch_limit = 10; /* a restarted worker with its own default */
    s.now += BEAT;
    assert_int_equal(batchctl_heartbeat(&s.b, &h, s.now, &ch), 0);
    assert_true(ch.resend);
    assert_false(ch.changed);
    assert_int_equal(ch.bound, 64);
    /* not again at every heartbeat */
    s.now += BEAT;
    assert_int_equal(batchctl_heartbeat(&s.b, &h, s.now, &ch), 0);
    assert_false(ch.resend);
    s.now += SEC;
    assert_int_equal(batchctl_heartbeat(&s.b, &h, s.now, &ch), 0);
    assert_true(ch.resend);
    assert_int_equal(s.b.resends, 2);
}

/* --- latency is the worker's ------------------------------------------------------------- */

static void test_batchctl_slow_steps_do_not_move_the_bound(void **state)
{
    struct sim s;
    struct batchctl_config c = base_cfg();
    sim_init(&s, &c);
    /* a minute of steps five times over the worker's max, at the bound and
     * below it */
    sim_run(&s, "w0", 60 * SEC, slow, NULL);
    for (int i = 0; i < 300; i++)
        sim_beat(&s, "w0", 3, 500);
    assert_int_equal(s.changes, 0);
    assert_int_equal(bound_of(&s, "w0"), 64);

    /* nor do fast steps raise a bound past its goal */
    c.initial = 8;
    sim_init(&s, &c);
    sim_run(&s, "w0", 60 * SEC, fast, NULL);
    assert_int_equal(s.changes, 0);
    assert_int_equal(bound_of(&s, "w0"), 8);
    for (int w = 0; w < BATCHCTL_WHY_COUNT; w++)
        assert_null(strstr(batchctl_why_name((enum batchctl_why)w), "latency"));
}

static void test_batchctl_a_latency_transient_leaves_the_bound_at_max(void **state)
{
    /* What was measured: other processes take the CPU for a few seconds,
     * p99 goes far over max, then comes back.  The supervisor used to halve
     * its bound on the third slow heartbeat, on the same signal as the
     * worker, and climb back 25 % per ten good heartbeats at the bound. */
    struct sim s;
    struct batchctl_config c = base_cfg();
    sim_init(&s, &c);
    for (int i = 0; i < 30; i++)
        sim_beat(&s, "w0", 64, 20);
    for (int i = 0; i < 50; i++) { /* 5 s of contention: the worker's cap falls, p99 is 900 ms */
        struct batchctl_change ch = sim_beat(&s, "w0", 8, 900);
        assert_false(ch.changed || ch.resend);
    }
    for (int i = 0; i < 50; i++)
        sim_beat(&s, "w0", 64, 20);
    assert_int_equal(s.changes, 0);
    assert_int_equal(bound_of(&s, "w0"), 64);
}

static void test_batchctl_respects_min_and_max(void **state)
{
    struct sim s;
    struct batchctl_config c = base_cfg();
    c.min_batch = 2;
    c.max_batch = 12;
    c.initial = 100; /* clamped */
    sim_init(&s, &c);
    sim_beat(&s, "w0", 12, 20);
    assert_int_equal(bound_of(&s, "w0"), 12);

    /* normal -> emergency: a quarter (3), at most the 12 active */
    struct batchctl_change out[4];
    assert_int_equal(batchctl_pressure(&s.b, PRESSURE_EMERGENCY, s.now, out, 4), 1);
    assert_int_equal(out[0].bound, 3);
    assert_int_equal(batchctl_pressure(&s.b, PRESSURE_NORMAL, s.now, out, 4), 0);
    for (int i = 0; i < 200; i++) /* recovers to 12, not beyond */
        sim_beat(&s, "w0", 1, 5);
    assert_int_equal(bound_of(&s, "w0"), 12);
    assert_int_equal(batchctl_pressure(&s.b, PRESSURE_CRITICAL, s.now, out, 4), 1);
    assert_int_equal(out[0].bound, 3);
    /* critical -> emergency with 1 active: min_batch 2 */
    assert_int_equal(batchctl_pressure(&s.b, PRESSURE_EMERGENCY, s.now, out, 4), 1);
    assert_int_equal(out[0].bound, 2);

    /* min_batch 1: cuts stop at 1, never 0 */
    struct sim t;
    c = base_cfg();
    c.initial = 1;
    sim_init(&t, &c);
    sim_beat(&t, "w0", 1, 5);
    assert_int_equal(batchctl_pressure(&t.b, PRESSURE_EMERGENCY, t.now, out, 4), 0);
    assert_int_equal(bound_of(&t, "w0"), 1);
}

/* --- pressure ------------------------------------------------------------------------------ */

static void test_batchctl_halves_under_warning_and_again_under_critical(void **state)
{
    struct sim s;
    struct batchctl_config c = base_cfg();
    sim_init(&s, &c);
    sim_beat(&s, "w0", 40, 30);
    sim_beat(&s, "w1", 5, 30);
    struct batchctl_change out[BATCHCTL_MAX_WORKERS];

    assert_int_equal(batchctl_pressure(&s.b, PRESSURE_WARNING, s.now, out, BATCHCTL_MAX_WORKERS), 2);
    assert_int_equal(out[0].bound, 32);
    assert_int_equal(out[0].old_bound, 64);
    assert_int_equal(out[0].why, BATCHCTL_WHY_PRESSURE);
    assert_string_equal(out[0].reason, "pressure warning: 64 -> 32");
    /* the same level again: once per entry */
    assert_int_equal(batchctl_pressure(&s.b, PRESSURE_WARNING, s.now, out, BATCHCTL_MAX_WORKERS), 0);
    assert_int_equal(batchctl_pressure(&s.b, PRESSURE_CRITICAL, s.now, out, BATCHCTL_MAX_WORKERS), 2);
    assert_int_equal(bound_of(&s, "w0"), 16);
    /* down to warning changes nothing; critical again halves again */
    assert_int_equal(batchctl_pressure(&s.b, PRESSURE_WARNING, s.now, out, BATCHCTL_MAX_WORKERS), 0);
    assert_int_equal(bound_of(&s, "w0"), 16);
    assert_int_equal(batchctl_pressure(&s.b, PRESSURE_CRITICAL, s.now, out, BATCHCTL_MAX_WORKERS), 2);
    assert_int_equal(bound_of(&s, "w0"), 8);
    /* emergency: the active sequences (w1 runs 5) */
    assert_int_equal(batchctl_pressure(&s.b, PRESSURE_EMERGENCY, s.now, out, BATCHCTL_MAX_WORKERS), 1);
    assert_string_equal(out[0].id, "w1");
    assert_int_equal(out[0].bound, 5);
    assert_non_null(strstr(out[0].reason, "emergency"));
    assert_int_equal(s.b.changes[BATCHCTL_WHY_PRESSURE], 7);

    /* a jump from normal applies every level crossed */
    struct sim t;
    sim_init(&t, &c);
    sim_beat(&t, "w0", 64, 30);
    assert_int_equal(batchctl_pressure(&t.b, PRESSURE_CRITICAL, t.now, out, BATCHCTL_MAX_WORKERS), 1);
    assert_int_equal(out[0].bound, 16);
    assert_string_equal(out[0].reason, "pressure critical from normal: 64 -> 16");

    /* a worker that appears under pressure starts cut */
    sim_beat(&t, "w9", 0, 0);
    assert_int_equal(bound_of(&t, "w9"), 16);
}

static void test_batchctl_does_not_rise_under_pressure(void **state)
{
    struct sim s;
    struct batchctl_config c = base_cfg();
    c.initial = 16;
    sim_init(&s, &c);
    sim_beat(&s, "w0", 16, 20);
    struct batchctl_change out[4];
    assert_int_equal(batchctl_pressure(&s.b, PRESSURE_WARNING, s.now, out, 4), 1);
    sim_run(&s, "w0", 60 * SEC, fast, NULL);
    assert_int_equal(bound_of(&s, "w0"), 8);
    assert_int_equal(s.rises, 0);
    /* pressure over: it climbs back to its goal (16), but not within a
     * min_interval of the end, and by steps */
    uint64_t normal_at = s.now;
    assert_int_equal(batchctl_pressure(&s.b, PRESSURE_NORMAL, s.now, out, 4), 0);
    struct batchctl_change ch;
    do
        ch = sim_beat(&s, "w0", bound_of(&s, "w0"), 20);
    while (!ch.changed);
    assert_true(s.now - BEAT - normal_at >= SEC);
    assert_int_equal(ch.old_bound, 8);
    assert_int_equal(ch.bound, 10);
    assert_int_equal(ch.why, BATCHCTL_WHY_RECOVER);
    assert_string_equal(ch.reason, "recovering after pressure: 8 -> 10 of 16");
}

static void test_batchctl_recovers_gradually_after_pressure(void **state)
{
    struct sim s;
    struct batchctl_config c = base_cfg();
    sim_init(&s, &c);
    sim_beat(&s, "w0", 2, 10);
    struct batchctl_change out[4];
    batchctl_pressure(&s.b, PRESSURE_WARNING, s.now, out, 4);
    batchctl_pressure(&s.b, PRESSURE_CRITICAL, s.now, out, 4);
    assert_int_equal(bound_of(&s, "w0"), 16);
    for (int i = 0; i < 50; i++)
        sim_beat(&s, "w0", 2, 10);
    assert_int_equal(bound_of(&s, "w0"), 16);

    uint64_t normal_at = s.now;
    assert_int_equal(batchctl_pressure(&s.b, PRESSURE_NORMAL, s.now, out, 4), 0);
    assert_int_equal(bound_of(&s, "w0"), 16); /* no jump */
    uint32_t seen[16], n = 0;
    uint64_t first_at = 0;
    for (int i = 0; i < 300; i++) {
        struct batchctl_change ch = sim_beat(&s, "w0", 2, 10); /* light load: recovery needs no saturation */
        if (ch.changed) {
            assert_int_equal(ch.why, BATCHCTL_WHY_RECOVER);
            assert_true(ch.bound > ch.old_bound);
            assert_true(ch.bound <= ch.old_bound + ch.old_bound / 4 + 1);
            if (!first_at)
                first_at = s.now - BEAT;
            seen[n++] = ch.bound;
        }
    }
    assert_true(first_at - normal_at >= SEC);
    static const uint32_t want[] = {20, 25, 31, 38, 47, 58, 64};
    assert_int_equal(n, sizeof want / sizeof want[0]);
    for (uint32_t i = 0; i < n; i++)
        assert_int_equal(seen[i], want[i]);
    assert_true(s.min_gap >= SEC);
    assert_non_null(strstr(s.last.reason, "recovering after pressure: 58 -> 64 of 64"));
    /* back where it was: no more recovery, no rise without saturation */
    uint32_t before = s.changes;
    for (int i = 0; i < 300; i++)
        sim_beat(&s, "w0", 2, 10);
    assert_int_equal(s.changes, before);
}

static void test_batchctl_pressure_that_comes_back_at_a_bound_keeps_recovery_below_it(void **state)
{
    /* What the cgroup test showed: memory runs out at 5 sequences; each
     * warning halved the bound to 2 and recovery climbed back to 5, a
     * cycle every few seconds.  Once pressure returns while recovering,
     * recovery stops a step below that bound (for forget_ns). */
    struct sim s;
    struct batchctl_config c = base_cfg();
    sim_init(&s, &c);
    sim_beat(&s, "w0", 2, 10);
    struct batchctl_change out[4];
    batchctl_pressure(&s.b, PRESSURE_WARNING, s.now, out, 4);
    batchctl_pressure(&s.b, PRESSURE_CRITICAL, s.now, out, 4);
    batchctl_pressure(&s.b, PRESSURE_NORMAL, s.now, out, 4);
    /* recovering: the bound reaches 20, then pressure is back */
    while (bound_of(&s, "w0") < 20)
        sim_beat(&s, "w0", 2, 10);
    assert_int_equal(bound_of(&s, "w0"), 20);
    batchctl_pressure(&s.b, PRESSURE_WARNING, s.now, out, 4);
    assert_int_equal(bound_of(&s, "w0"), 10);
    batchctl_pressure(&s.b, PRESSURE_NORMAL, s.now, out, 4);
    for (int i = 0; i < 300; i++) /* 30 s */
        sim_beat(&s, "w0", 2, 10);
    assert_int_equal(bound_of(&s, "w0"), 15); /* 20 - 20/4, not 20 */
    /* and it stays there: no cycle */
    uint32_t before = s.changes;
    for (int i = 0; i < 200; i++)
        sim_beat(&s, "w0", 2, 10);
    assert_int_equal(s.changes, before);
}

static void test_batchctl_recovery_does_not_wait_for_latency(void **state)
{
    /* Slow steps after the pressure are the worker's to answer, with its own
     * cap: the memory bound climbs back all the same. */
    struct sim s;
    struct batchctl_config c = base_cfg();
    sim_init(&s, &c);
    sim_beat(&s, "w0", 64, 60);
    struct batchctl_change out[4];
    batchctl_pressure(&s.b, PRESSURE_WARNING, s.now, out, 4);
    batchctl_pressure(&s.b, PRESSURE_NORMAL, s.now, out, 4);
    assert_int_equal(bound_of(&s, "w0"), 32);
    for (int i = 0; i < 100; i++)
        sim_beat(&s, "w0", bound_of(&s, "w0"), 150);
    assert_int_equal(s.cuts, 0);
    assert_int_equal(s.rises, 4); /* 40, 50, 62, 64 */
    assert_int_equal(bound_of(&s, "w0"), 64);
}

/* --- memory ---------------------------------------------------------------------------------- */

static struct batchctl_change mem_beat(struct sim *s, const char *id, uint32_t active, uint64_t per_seq,
                                       uint64_t base, double p99)
{
    struct proto_heartbeat h = beat(id, active, p99, bound_of(s, id));
    h.kv_bytes = active * per_seq;
    h.rss_bytes = base + h.kv_bytes;
    struct batchctl_change ch;
    assert_int_equal(batchctl_heartbeat(&s->b, &h, s->now, &ch), 0);
    note(s, &ch);
    s->now += BEAT;
    return ch;
}

static void test_batchctl_memory_bound_caps_it(void **state)
{
    struct sim s;
    struct batchctl_config c = base_cfg();
    sim_init(&s, &c);
    batchctl_set_share(&s.b, 400 * MiB);
    /* 100 MiB of weights and buffers, 12 MiB of KV per sequence: 300 MiB
     * hold 25 sequences */
    struct batchctl_change ch = mem_beat(&s, "w0", 4, 12 * MiB, 100 * MiB, 20);
    assert_true(ch.changed);
    assert_int_equal(ch.bound, 25);
    assert_int_equal(ch.why, BATCHCTL_WHY_MEMORY);
    assert_string_equal(ch.reason, "memory: 25 sequences of 12 MiB fit the 300 MiB left of the 400 MiB share");
    const struct batchctl_worker *w = batchctl_find(&s.b, "w0");
    assert_int_equal(w->mem_bound, 25);

    /* saturated and fast: nothing raises it past memory */
    for (int i = 0; i < 600; i++)
        mem_beat(&s, "w0", bound_of(&s, "w0"), 12 * MiB, 100 * MiB, 20);
    assert_int_equal(bound_of(&s, "w0"), 25);
    assert_int_equal(s.changes, 1);

    /* sequences grow: the estimate follows at once, the bound follows at
     * the next allowed change */
    for (int i = 0; i < 20; i++)
        mem_beat(&s, "w0", 20, 20 * MiB, 100 * MiB, 20);
    assert_int_equal(bound_of(&s, "w0"), 15);
    /* they shrink back: the estimate decays slowly and rises stop 10 %
     * below the memory bound */
    for (int i = 0; i < 600; i++)
        mem_beat(&s, "w0", bound_of(&s, "w0"), 12 * MiB, 100 * MiB, 20);
    assert_true(bound_of(&s, "w0") <= 22 && bound_of(&s, "w0") > 15);

    /* a share smaller than the base: min_batch */
    batchctl_set_share(&s.b, 50 * MiB);
    for (int i = 0; i < 20; i++)
        mem_beat(&s, "w0", 1, 12 * MiB, 100 * MiB, 20);
    assert_int_equal(bound_of(&s, "w0"), 1);

    /* no share: no memory bound */
    batchctl_set_share(&s.b, 0);
    mem_beat(&s, "w0", 1, 12 * MiB, 100 * MiB, 20);
    assert_int_equal(batchctl_find(&s.b, "w0")->mem_bound, 64);
}

static void test_batchctl_configured_kv_estimate_bounds_an_idle_worker(void **state)
{
    struct sim s;
    struct batchctl_config c = base_cfg();
    c.kv_bytes_per_token = 64 * 1024; /* 64 KiB per token x 256 tokens = 16 MiB per sequence */
    c.assumed_tokens = 256;
    sim_init(&s, &c);
    batchctl_set_share(&s.b, 600 * MiB);
    struct batchctl_change ch = mem_beat(&s, "w0", 0, 0, 200 * MiB, 0);
    assert_true(ch.changed);
    assert_int_equal(ch.bound, 25);
    /* short sequences measured below the floor do not loosen it */
    for (int i = 0; i < 100; i++)
        mem_beat(&s, "w0", 10, 1 * MiB, 200 * MiB, 20);
    assert_int_equal(bound_of(&s, "w0"), 25);
}

/* --- no oscillation --------------------------------------------------------------------------- */

static double noise(uint64_t *rng, double amp)
{
    *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
    return ((double)(*rng >> 11) / 9007199254740992.0 * 2 - 1) * amp;
}

static void test_batchctl_no_oscillation_when_the_memory_bound_jitters(void **state)
{
    /* 300 MiB for the KV cache, sequences of 12 MiB +- 3 % (24 or 25 of
     * them fit), p99 all over the place around the worker's max: one cut to
     * memory, then nothing for 20 minutes. */
    struct sim s;
    struct batchctl_config c = base_cfg();
    sim_init(&s, &c);
    batchctl_set_share(&s.b, 400 * MiB);
    uint64_t rng = 42;
    for (int i = 0; i < 12000; i++) {
        uint64_t per_seq = (uint64_t)(12 * MiB * (1 + noise(&rng, 0.03)));
        mem_beat(&s, "w0", bound_of(&s, "w0"), per_seq, 100 * MiB, 100 + noise(&rng, 60));
    }
    print_message("  memory jitter: %u changes in 20 min, bound %u\n", s.changes, bound_of(&s, "w0"));
    assert_true(s.changes >= 1 && s.changes <= 2);
    assert_int_equal(s.rises, 0);
    assert_true(bound_of(&s, "w0") == 24 || bound_of(&s, "w0") == 25);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batchctl_init_validates_the_config),
        cmocka_unit_test(test_batchctl_bad_heartbeats_are_refused),
        cmocka_unit_test(test_batchctl_resends_a_bound_the_worker_does_not_have),
        cmocka_unit_test(test_batchctl_slow_steps_do_not_move_the_bound),
        cmocka_unit_test(test_batchctl_a_latency_transient_leaves_the_bound_at_max),
        cmocka_unit_test(test_batchctl_respects_min_and_max),
        cmocka_unit_test(test_batchctl_halves_under_warning_and_again_under_critical),
        cmocka_unit_test(test_batchctl_does_not_rise_under_pressure),
        cmocka_unit_test(test_batchctl_recovers_gradually_after_pressure),
        cmocka_unit_test(test_batchctl_pressure_that_comes_back_at_a_bound_keeps_recovery_below_it),
        cmocka_unit_test(test_batchctl_recovery_does_not_wait_for_latency),
        cmocka_unit_test(test_batchctl_memory_bound_caps_it),
        cmocka_unit_test(test_batchctl_configured_kv_estimate_bounds_an_idle_worker),
        cmocka_unit_test(test_batchctl_no_oscillation_when_the_memory_bound_jitters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
