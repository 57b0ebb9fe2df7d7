/* test_scale.c — the supervisor's scaling rules (supervisor/scale.h): the
 * queue adds a worker only after its wait and within max, emergency
 * pressure unloads the least-loaded worker down to min and owes it back,
 * the debt is paid when the level is normal (or forgiven when idle),
 * idleness retires one, and the cooldown keeps decisions apart.
 * Deterministic: synthetic slots on a scripted clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "config.h"
#include "err.h"
#include "supervisor/scale.h"

#define SEC 1000000000ull
#define MiB (1024ull * 1024)

struct sim {
    struct scale s;
    struct scale_worker w[4];
    struct scale_input in;
};

static void sim_init(struct sim *m, int min, int max, int running)
{
    struct scale_config c = {.min = min, .max = max, .up_queued = 2, .up_ns = 3 * SEC, .down_ns = 30 * SEC,
                             .cooldown_ns = 10 * SEC, .warning = 0.75};
    memset(m, 0, sizeof *m);
    scale_init(&m->s, &c);
    for (int i = 0; i < 4; i++)
        m->w[i] = (struct scale_worker){.slot = i < running ? SCALE_SLOT_READY : i < max ? SCALE_SLOT_OFF
                                                                                         : SCALE_SLOT_GONE,
                                        .batch_cap = 8, .rss = 100 * MiB};
    m->in = (struct scale_input){m->w, max, PRESSURE_NORMAL, true, 1000 * MiB, 300 * MiB, 1 * SEC};
}

static bool step(struct sim *m, uint64_t dt, struct scale_decision *d)
{
    m->in.now_ns += dt;
    return scale_decide(&m->s, &m->in, d);
}

static void load(struct sim *m, int k, uint32_t active, uint32_t queued)
{
    m->w[k].active = active;
    m->w[k].queued = queued;
}

static void test_scale_config_defaults_keep_the_fixed_worker_count(void **state)
{
    (void)state;
    struct rill_config c;
    cfg_defaults(&c);
    c.workers = 3;
    struct scale_config s;
    char why[128];
    assert_int_equal(scale_config_from(&c, &s, why, sizeof why), 3);
    assert_int_equal(s.min, 3);
    assert_int_equal(s.max, 3);
    c.max_workers = 5;
    assert_int_equal(scale_config_from(&c, &s, why, sizeof why), 3);
    assert_int_equal(s.min, 3);
    assert_int_equal(s.max, 5);
    c.min_workers = 4; /* workers below min: start min */
    assert_int_equal(scale_config_from(&c, &s, why, sizeof why), 4);
    c.min_workers = 6;
    assert_int_equal(scale_config_from(&c, &s, why, sizeof why), RILL_E_BAD_CONFIG);
    assert_non_null(strstr(why, "min_workers (6) is more than max_workers (5)"));
}

static void test_scale_adds_a_worker_after_the_queue_held_for_up_s(void **state)
{
    (void)state;
    struct sim m;
    struct scale_decision d;
    sim_init(&m, 1, 2, 1);
    load(&m, 0, 8, 2); /* 2 waiting per ready worker: the threshold */
    assert_false(step(&m, 0, &d));
    assert_false(step(&m, 2 * SEC, &d));
    load(&m, 0, 8, 1); /* dips: the wait starts again */
    assert_false(step(&m, SEC / 2, &d));
    load(&m, 0, 8, 2);
    assert_false(step(&m, SEC / 2, &d));
    assert_false(step(&m, 3 * SEC - 1, &d));
    assert_true(step(&m, 1, &d));
    assert_int_equal(d.dir, SCALE_UP);
    assert_int_equal(d.why, SCALE_WHY_QUEUE);
    assert_int_equal(d.slot, 1);
    assert_int_equal(d.before, 1);
    assert_int_equal(d.after, 2);
    assert_int_equal(m.s.events[SCALE_WHY_QUEUE], 1);
    /* At max: however long the queue, nothing more. */
    m.w[1].slot = SCALE_SLOT_READY;
    load(&m, 1, 8, 9);
    assert_false(step(&m, 60 * SEC, &d));
}

static void test_scale_does_not_add_while_starting_or_without_memory_headroom(void **state)
{
    (void)state;
    struct sim m;
    struct scale_decision d;
    sim_init(&m, 1, 3, 2);
    load(&m, 0, 8, 4);
    load(&m, 1, 8, 4);
    m.w[2].slot = SCALE_SLOT_STARTING; /* one on its way: wait for it */
    m.w[3].slot = SCALE_SLOT_OFF;
    m.in.n = 4;
    m.s.c.max = 4;
    assert_false(step(&m, 0, &d));
    assert_false(step(&m, 10 * SEC, &d));
    m.w[2].slot = SCALE_SLOT_READY;
    load(&m, 2, 8, 4);
    /* 700 MiB used + a worker's 100 MiB > 75% of 1000 MiB. */
    m.in.used = 700 * MiB;
    assert_false(step(&m, 0, &d));
    assert_false(step(&m, 10 * SEC, &d));
    m.in.used = 650 * MiB; /* 750 <= 750: fits */
    assert_true(step(&m, SEC, &d));
    assert_int_equal(d.slot, 3);
    /* Any level above normal refuses too. */
    sim_init(&m, 1, 2, 1);
    load(&m, 0, 8, 5);
    m.in.level = PRESSURE_WARNING;
    assert_false(step(&m, 0, &d));
    assert_false(step(&m, 10 * SEC, &d));
}

static void test_scale_unloads_the_least_loaded_under_emergency_down_to_min_and_gives_it_back(void **state)
{
    (void)state;
    struct sim m;
    struct scale_decision d;
    sim_init(&m, 1, 3, 3);
    load(&m, 0, 2, 1);
    load(&m, 1, 1, 0);
    load(&m, 2, 1, 0); /* ties with w1: the highest slot goes */
    m.in.level = PRESSURE_EMERGENCY;
    assert_true(step(&m, 0, &d));
    assert_int_equal(d.dir, SCALE_DOWN);
    assert_int_equal(d.why, SCALE_WHY_PRESSURE);
    assert_int_equal(d.slot, 2);
    assert_true(d.migrate);
    assert_int_equal(d.after, 2);
    m.w[2].slot = SCALE_SLOT_OFF;
    /* The next unload waits for the cooldown. */
    assert_false(step(&m, 10 * SEC - 1, &d));
    assert_true(step(&m, 1, &d));
    assert_int_equal(d.slot, 1);
    m.w[1].slot = SCALE_SLOT_OFF;
    /* At min: the last worker stays. */
    assert_false(step(&m, 60 * SEC, &d));
    assert_int_equal(m.s.owed, 2);
    /* Critical: nothing comes back yet; normal: one at a time. */
    m.in.level = PRESSURE_CRITICAL;
    assert_false(step(&m, 60 * SEC, &d));
    m.in.level = PRESSURE_NORMAL;
    assert_true(step(&m, 0, &d));
    assert_int_equal(d.dir, SCALE_UP);
    assert_int_equal(d.why, SCALE_WHY_PRESSURE_RELIEVED);
    assert_int_equal(d.slot, 1);
    assert_false(d.migrate);
    m.w[1].slot = SCALE_SLOT_READY;
    load(&m, 1, 1, 1);
    assert_false(step(&m, 10 * SEC - 1, &d));
    assert_true(step(&m, 1, &d));
    assert_int_equal(d.why, SCALE_WHY_PRESSURE_RELIEVED);
    assert_int_equal(d.slot, 2);
    assert_int_equal(m.s.owed, 0);
    assert_int_equal(m.s.events[SCALE_WHY_PRESSURE], 2);
    assert_int_equal(m.s.events[SCALE_WHY_PRESSURE_RELIEVED], 2);
}

static void test_scale_unloads_at_once_after_an_addition(void **state)
{
    (void)state;
    struct sim m;
    struct scale_decision d;
    sim_init(&m, 1, 2, 1);
    load(&m, 0, 8, 4);
    assert_false(step(&m, 0, &d));
    assert_true(step(&m, 3 * SEC, &d));
    assert_int_equal(d.why, SCALE_WHY_QUEUE);
    m.w[1].slot = SCALE_SLOT_READY;
    m.in.level = PRESSURE_EMERGENCY; /* the new worker was one too many */
    assert_true(step(&m, 1, &d));
    assert_int_equal(d.why, SCALE_WHY_PRESSURE);
    assert_int_equal(d.slot, 1);
}

static void test_scale_forgives_an_unload_when_the_load_is_gone(void **state)
{
    (void)state;
    struct sim m;
    struct scale_decision d;
    sim_init(&m, 1, 3, 3);
    m.in.level = PRESSURE_EMERGENCY;
    assert_true(step(&m, 0, &d));
    m.w[2].slot = SCALE_SLOT_OFF;
    m.in.level = PRESSURE_NORMAL;
    load(&m, 0, 1, 0); /* 1 running: fits in half of the other's cap (4) */
    assert_false(step(&m, 20 * SEC, &d));
    assert_int_equal(m.s.owed, 0);
}

static void test_scale_retires_the_least_busy_when_idle_for_down_s(void **state)
{
    (void)state;
    struct sim m;
    struct scale_decision d;
    sim_init(&m, 1, 2, 2);
    /* 5 running: more than half of one worker's cap (8 / 2): not idle. */
    load(&m, 0, 3, 0);
    load(&m, 1, 2, 0);
    assert_false(step(&m, 0, &d));
    assert_false(step(&m, 60 * SEC, &d));
    load(&m, 0, 3, 0);
    load(&m, 1, 1, 0); /* 4: the boundary, idle */
    assert_false(step(&m, 0, &d));
    assert_false(step(&m, 30 * SEC - 1, &d));
    assert_true(step(&m, 1, &d));
    assert_int_equal(d.dir, SCALE_DOWN);
    assert_int_equal(d.why, SCALE_WHY_IDLE);
    assert_int_equal(d.slot, 1);
    assert_false(d.migrate);
    /* At min: nothing more. */
    m.w[1].slot = SCALE_SLOT_OFF;
    load(&m, 0, 0, 0);
    assert_false(step(&m, 60 * SEC, &d));
    /* A request waiting anywhere is not idle. */
    sim_init(&m, 1, 2, 2);
    load(&m, 1, 0, 1);
    assert_false(step(&m, 0, &d));
    assert_false(step(&m, 60 * SEC, &d));
}

static void test_scale_names(void **state)
{
    (void)state;
    assert_string_equal(scale_why_name(SCALE_WHY_QUEUE), "queue");
    assert_string_equal(scale_why_name(SCALE_WHY_PRESSURE_RELIEVED), "pressure_relieved");
    assert_string_equal(scale_why_name(SCALE_WHY_PRESSURE), "pressure");
    assert_string_equal(scale_why_name(SCALE_WHY_IDLE), "idle");
    assert_int_equal(scale_why_dir(SCALE_WHY_PRESSURE_RELIEVED), SCALE_UP);
    assert_int_equal(scale_why_dir(SCALE_WHY_IDLE), SCALE_DOWN);
    assert_string_equal(scale_dir_name(SCALE_DOWN), "down");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scale_config_defaults_keep_the_fixed_worker_count),
        cmocka_unit_test(test_scale_adds_a_worker_after_the_queue_held_for_up_s),
        cmocka_unit_test(test_scale_does_not_add_while_starting_or_without_memory_headroom),
        cmocka_unit_test(test_scale_unloads_the_least_loaded_under_emergency_down_to_min_and_gives_it_back),
        cmocka_unit_test(test_scale_unloads_at_once_after_an_addition),
        cmocka_unit_test(test_scale_forgives_an_unload_when_the_load_is_gone),
        cmocka_unit_test(test_scale_retires_the_least_busy_when_idle_for_down_s),
        cmocka_unit_test(test_scale_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
