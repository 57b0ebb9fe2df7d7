/* test_adapt.c — the worker's latency cap (worker/adapt.h): halving on
 * sustained slow steps, undoing a cut that did not help, multiplicative
 * recovery after a transient, growth, no oscillation, and the supervisor's
 * bound as the only memory signal.  Deterministic: scripted step times. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "worker/adapt.h"

/* A worker with `load` sequences to run: each step runs min(cap, load) of
 * them and takes step_ms(batch).  Keeps the lowest cap seen and how many
 * steps ran above max. */
struct sim {
    struct adapt a;
    uint32_t load;
    double contention;           /* step time multiplier (1: alone on the CPU) */
    double fixed_ms, per_seq_ms; /* step time = contention x (fixed + per_seq x batch) */
    uint32_t low, changes;
    uint64_t steps, slow_steps;
};

static void sim_init(struct sim *s, uint32_t initial, double fixed_ms, double per_seq_ms)
{
    memset(s, 0, sizeof *s);
    adapt_init(&s->a, 1, 64, initial, 50, 100);
    s->load = 64;
    s->contention = 1;
    s->fixed_ms = fixed_ms;
    s->per_seq_ms = per_seq_ms;
    s->low = s->a.cap;
}

static double sim_ms(const struct sim *s, uint32_t batch)
{
    return s->contention * (s->fixed_ms + s->per_seq_ms * batch);
}

static void sim_step(struct sim *s)
{
    uint32_t batch = s->a.cap < s->load ? s->a.cap : s->load;
    double ms = sim_ms(s, batch);
    s->changes += adapt_step(&s->a, ms, batch);
    s->steps++;
    s->slow_steps += ms > s->a.max_ms;
    if (s->a.cap < s->low)
        s->low = s->a.cap;
}

static void sim_run(struct sim *s, uint32_t steps)
{
    for (uint32_t i = 0; i < steps; i++)
        sim_step(s);
}

/* Steps until the cap is back at `want` (at most `limit`; limit + 1 if never). */
static uint32_t steps_until(struct sim *s, uint32_t want, uint32_t limit)
{
    for (uint32_t i = 0; i < limit; i++) {
        if (s->a.cap >= want)
            return i;
        sim_step(s);
    }
    return s->a.cap >= want ? limit : limit + 1;
}

/* --- the transient --------------------------------------------------------------------- */

static void test_adapt_recovers_from_a_transient_within_a_few_windows(void **state)
{
    /* 5 ms + 0.25 ms per sequence: 21 ms at 64 alone on the CPU.  Other
     * processes take the CPU for 30 windows and make every step 8x slower:
     * 168 ms at 64, where halving the batch helps (104 ms at 32, 72 ms at
     * 16), so the cap comes down: to 16, a recovery to 32 that is still
     * too slow and undone, then 24 (88 ms), a quarter under that ceiling.
     * Then the CPU is free again. */
    struct sim s;
    sim_init(&s, 64, 5, 0.25);
    sim_run(&s, 20 * ADAPT_WINDOW);
    assert_int_equal(s.changes, 0);
    assert_int_equal(s.a.cap, 64);

    s.contention = 8;
    sim_run(&s, 30 * ADAPT_WINDOW);
    print_message("  under contention: cap %u (lowest %u), %u changes\n", s.a.cap, s.low, s.changes);
    assert_int_equal(s.a.cap, 24);
    assert_int_equal(s.a.ceiling, 32);
    assert_int_equal(s.low, 16);
    assert_int_equal(s.a.prev, 64);

    s.contention = 1;
    uint32_t back = steps_until(&s, 64, 100 * ADAPT_WINDOW);
    print_message("  back to 64 in %u steps (%u windows)\n", back, back / ADAPT_WINDOW);
    /* Steps 8x faster than at the ceiling forget it; doubling per window:
     * 24 -> 48 -> 64 in two windows, at 21 ms a step well under a second
     * (the old cap climbed by one per step, after a cooldown, over a minute
     * of heartbeats). */
    assert_int_equal(back, 2 * ADAPT_WINDOW);
    assert_string_equal(s.a.reason, "recovering: step 17.0 ms within max 100.0 ms, back towards 64 (48 -> 64)");
    assert_int_equal(s.a.ceiling, 0);
    assert_int_equal(s.a.prev, 0);
    /* and it stays: no overshoot, no cut */
    uint32_t before = s.changes;
    sim_run(&s, 200 * ADAPT_WINDOW);
    assert_int_equal(s.changes, before);
    assert_int_equal(s.a.cap, 64);
}

static void test_adapt_does_not_cut_when_a_smaller_batch_is_not_faster(void **state)
{
    /* Step time that does not depend on the batch (a small model on a CPU
     * other processes are using): 300 ms whatever runs.  Halving cannot
     * help; it would only queue requests behind a batch of one (what was
     * measured: 64 -> 1, TTFT from 0.1 s to 12-50 s). */
    struct sim s;
    sim_init(&s, 64, 20, 0);
    sim_run(&s, 10 * ADAPT_WINDOW);
    s.contention = 15;
    uint32_t at_full = 0, n = 60 * ADAPT_WINDOW;
    for (uint32_t i = 0; i < n; i++) {
        sim_step(&s);
        at_full += s.a.cap == 64;
    }
    print_message("  batch-independent slowness: lowest cap %u, %u of %u steps at 64, %u changes\n", s.low, at_full,
                  n, s.changes);
    assert_int_equal(s.low, 32);           /* one halving tried */
    assert_int_equal(s.changes, 2);        /* and undone */
    assert_true(at_full >= n - 2 * ADAPT_WINDOW);
    assert_int_equal(s.a.cap, 64);
    assert_non_null(strstr(s.a.reason, "not what makes steps slow"));

    /* After ADAPT_HOLD slow windows it tries once more (the load may have
     * changed), and undoes it again. */
    sim_run(&s, ADAPT_HOLD * ADAPT_WINDOW);
    assert_int_equal(s.changes, 4);
    assert_int_equal(s.a.cap, 64);
    s.contention = 1;
    sim_run(&s, 10 * ADAPT_WINDOW);
    assert_int_equal(s.a.cap, 64);
}

static void test_adapt_halves_on_sustained_slow_steps_only(void **state)
{
    struct adapt a;
    adapt_init(&a, 1, 64, 64, 50, 100);
    /* three slow steps in a window of eight: the median is fast */
    for (int w = 0; w < 50; w++)
        for (int i = 0; i < ADAPT_WINDOW; i++)
            assert_false(adapt_step(&a, i < 3 ? 400 : 30, 64));
    assert_int_equal(a.cap, 64);
    /* idle steps are no evidence */
    for (int i = 0; i < 100; i++)
        assert_false(adapt_step(&a, 900, 0));
    assert_int_equal(a.cap, 64);
    /* a window of slow steps: halve the batch that ran */
    for (int i = 0; i < ADAPT_WINDOW - 1; i++)
        assert_false(adapt_step(&a, 150, 64));
    assert_true(adapt_step(&a, 150, 64));
    assert_int_equal(a.cap, 32);
    assert_int_equal(a.prev, 64);
    assert_string_equal(a.reason, "step 150.0 ms above max 100.0 ms at 64 sequences (64 -> 32)");

    /* a batch below the cap: it is that batch that is halved */
    adapt_init(&a, 1, 64, 64, 50, 100);
    for (int i = 0; i < ADAPT_WINDOW; i++)
        adapt_step(&a, 150, 10);
    assert_int_equal(a.cap, 5);

    /* never below min_cap */
    adapt_init(&a, 4, 64, 6, 50, 100);
    for (int i = 0; i < 20 * ADAPT_WINDOW; i++)
        adapt_step(&a, 2000.0 * a.cap, a.cap);
    assert_int_equal(a.cap, 4);
}

static void test_adapt_a_cut_waits_for_the_batch_to_shrink(void **state)
{
    /* A cut does not preempt: the 64 running sequences go on until they
     * finish.  Slow windows at 64 after the cut to 32 neither undo it nor
     * cut again. */
    struct adapt a;
    adapt_init(&a, 1, 64, 64, 50, 100);
    for (int i = 0; i < ADAPT_WINDOW; i++)
        adapt_step(&a, 160, 64);
    assert_int_equal(a.cap, 32);
    for (int i = 0; i < 10 * ADAPT_WINDOW; i++)
        assert_false(adapt_step(&a, 160, 64));
    assert_int_equal(a.cap, 32);
    /* down to 32 and within max: recovery is tried (the slow steps may
     * have been a transient) */
    for (int i = 0; i < ADAPT_WINDOW; i++)
        adapt_step(&a, 90, 32);
    assert_int_equal(a.cap, 64);
    for (int i = 0; i < ADAPT_WINDOW; i++)
        adapt_step(&a, 160, 64);
    assert_int_equal(a.cap, 64); /* one slow window may be noise */
    for (int i = 0; i < ADAPT_WINDOW; i++)
        adapt_step(&a, 160, 64);
    assert_int_equal(a.cap, 32); /* two: that rise hurt; back, and 64 is remembered */
    assert_int_equal(a.ceiling, 64);
    assert_non_null(strstr(a.reason, "right after a rise to 64"));
    for (int i = 0; i < 50 * ADAPT_WINDOW; i++)
        adapt_step(&a, 90, a.cap);
    assert_int_equal(a.cap, 32); /* 48 would be allowed, but 90 ms is over target: no growth */
}

static void test_adapt_one_slow_window_after_a_recovery_is_not_a_ceiling(void **state)
{
    /* What the e2e run showed: right after the cap came back, one window
     * was slow (another process for a moment).  It must not mark the cap
     * as too slow, or the recovery stops a quarter below it for a hold. */
    struct adapt a;
    adapt_init(&a, 1, 64, 64, 50, 100);
    int changes = 0;
    for (int i = 0; i < ADAPT_WINDOW; i++)
        changes += adapt_step(&a, 150, 64);
    for (int i = 0; i < ADAPT_WINDOW; i++)
        changes += adapt_step(&a, 60, 32);
    assert_int_equal(a.cap, 64);
    for (int i = 0; i < ADAPT_WINDOW; i++)
        changes += adapt_step(&a, 150, 64); /* noise */
    for (int i = 0; i < 20 * ADAPT_WINDOW; i++)
        changes += adapt_step(&a, 30, 64);
    assert_int_equal(changes, 2);
    assert_int_equal(a.cap, 64);
    assert_int_equal(a.ceiling, 0);
}

/* --- growth and no oscillation ------------------------------------------------------------ */

static void test_adapt_grows_only_under_target_at_full_batch(void **state)
{
    struct adapt a;
    adapt_init(&a, 1, 64, 4, 50, 100);
    for (int i = 0; i < 20 * ADAPT_WINDOW; i++)
        adapt_step(&a, 20, 2); /* fast, but the batch is not at the cap: no evidence */
    assert_int_equal(a.cap, 4);
    for (int i = 0; i < 20 * ADAPT_WINDOW; i++)
        adapt_step(&a, 60, a.cap); /* at the cap, between target and max: nothing moves */
    assert_int_equal(a.cap, 4);
    uint32_t seen[16], n = 0;
    for (int i = 0; i < 7 * ADAPT_WINDOW; i++)
        if (adapt_step(&a, 20, a.cap))
            seen[n++] = a.cap;
    static const uint32_t want[] = {5, 6, 7, 8, 10, 12, 15};
    assert_int_equal(n, 7);
    for (uint32_t i = 0; i < n; i++)
        assert_int_equal(seen[i], want[i]);
    assert_string_equal(a.reason, "step 20.0 ms under target 50.0 ms at full batch (12 -> 15)");
}

static void test_adapt_settles_under_a_real_overload_without_oscillating(void **state)
{
    /* 3 ms per sequence: caps above 33 are too slow, whatever the CPU. */
    struct sim s;
    sim_init(&s, 64, 0, 3);
    sim_run(&s, 400 * ADAPT_WINDOW);
    uint32_t early = s.changes;
    uint64_t slow_before = s.slow_steps;
    sim_run(&s, 400 * ADAPT_WINDOW);
    print_message("  overload: %u changes in the first 400 windows, %u in the next 400; cap %u; %llu of 3200 "
                  "steps slow\n",
                  early, s.changes - early, s.a.cap, (unsigned long long)(s.slow_steps - slow_before));
    /* 64 -> 32, a recovery to 64 that is too slow for two windows and
     * undone, and then nothing: 96 ms is within max but over target, so no
     * growth probes the wall again once the hold is over. */
    assert_int_equal(early, 3);
    assert_int_equal(s.a.cap, 32);
    assert_int_equal(s.changes, early);
    assert_int_equal(s.slow_steps, 3 * ADAPT_WINDOW);
}

/* --- the supervisor's bound and pressure ------------------------------------------------- */

static void test_adapt_follows_the_supervisor_bound_and_never_cuts_on_pressure(void **state)
{
    struct adapt a;
    adapt_init(&a, 2, 64, 64, 50, 100);
    /* memory is the supervisor's: the level alone does not move the cap */
    adapt_set_pressure(&a, PRESSURE_CRITICAL);
    assert_int_equal(a.cap, 64);
    assert_true(adapt_set_limit(&a, 16)); /* its bound comes with the level */
    assert_int_equal(a.cap, 16);
    assert_int_equal(a.own, 64);
    assert_string_equal(a.reason, "supervisor bound 16 (64 -> 16)");
    assert_false(adapt_set_limit(&a, 16));
    for (int i = 0; i < 50 * ADAPT_WINDOW; i++)
        assert_false(adapt_step(&a, 20, a.cap));
    assert_int_equal(a.cap, 16);
    assert_true(adapt_set_limit(&a, 0)); /* 0 counts as 1, within min_cap */
    assert_int_equal(a.cap, 2);

    /* slow under the bound: the latency cap is cut below the batch that ran */
    adapt_set_limit(&a, 16);
    for (int i = 0; i < ADAPT_WINDOW; i++)
        adapt_step(&a, 150, 16);
    assert_int_equal(a.own, 8);
    assert_int_equal(a.cap, 8);
    /* under pressure a good window does not raise the latency cap */
    for (int i = 0; i < 10 * ADAPT_WINDOW; i++)
        adapt_step(&a, 20, a.cap);
    assert_int_equal(a.own, 8);
    /* pressure over, the bound back: recovery doubles to where it was */
    adapt_set_pressure(&a, PRESSURE_NORMAL);
    assert_true(adapt_set_limit(&a, 64) == false); /* own (8) binds: nothing in force moved */
    uint32_t steps = 0;
    while (a.cap < 64 && steps < 100 * ADAPT_WINDOW) {
        adapt_step(&a, 20, a.cap);
        steps++;
    }
    assert_int_equal(a.cap, 64);
    assert_int_equal(steps, 3 * ADAPT_WINDOW); /* 8 -> 16 -> 32 -> 64 */
    adapt_set_pressure(&a, (enum pressure_level)9);
    assert_int_equal(a.pressure, PRESSURE_EMERGENCY);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adapt_recovers_from_a_transient_within_a_few_windows),
        cmocka_unit_test(test_adapt_does_not_cut_when_a_smaller_batch_is_not_faster),
        cmocka_unit_test(test_adapt_halves_on_sustained_slow_steps_only),
        cmocka_unit_test(test_adapt_a_cut_waits_for_the_batch_to_shrink),
        cmocka_unit_test(test_adapt_one_slow_window_after_a_recovery_is_not_a_ceiling),
        cmocka_unit_test(test_adapt_grows_only_under_target_at_full_batch),
        cmocka_unit_test(test_adapt_settles_under_a_real_overload_without_oscillating),
        cmocka_unit_test(test_adapt_follows_the_supervisor_bound_and_never_cuts_on_pressure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
