/* test_procs.c — the supervisor's restart policy (supervisor/procs.c): a
 * crash loop backs off, doubling; a process that served a while and was
 * killed from outside comes back after the shortest delay; too many
 * restarts in the window give up. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>

#include <cmocka.h>

#include "supervisor/procs.h"

#define MS 1000000ull
#define SEC 1000000000ull
#define KILLED 9 /* wait status: killed by SIGKILL */

static struct procs t;

static void setup(uint32_t restart_max)
{
    struct procs_policy pol = {restart_max, 60, 100, 10000, 2 * SEC};
    procs_init(&t, &pol, 1);
}

/* w0 starts at `start`, is ready at `ready` (0: never), is killed at `died`. */
static uint32_t life(uint64_t start, uint64_t ready, uint64_t died)
{
    struct proc *p = procs_by_id(&t, "w0");
    p->pid = 1234;
    p->state = PROC_READY;
    p->started_ns = start;
    p->ready_ns = ready;
    assert_true(procs_on_exit(&t, p, KILLED, died, false, true));
    assert_int_equal(p->state, PROC_BACKOFF);
    assert_int_equal(p->next_start_ns, died + (uint64_t)p->backoff_ms * MS);
    return p->backoff_ms;
}

static void test_a_crash_loop_backs_off_doubling(void **state)
{
    (void)state;
    setup(0);
    uint64_t now = 10 * SEC;
    uint32_t want = 100;
    for (int i = 0; i < 9; i++) {
        /* dies 50 ms after it is ready, again and again */
        assert_int_equal(life(now, now + 500 * MS, now + 550 * MS), want);
        want = want * 2 > 10000 ? 10000 : want * 2;
        now += SEC;
    }
    /* never ready at all: the same */
    assert_int_equal(life(now, 0, now + 3 * SEC), 10000);
}

static void test_a_process_that_served_comes_back_at_once(void **state)
{
    (void)state;
    setup(0);
    uint64_t now = 10 * SEC;
    /* it had backed off up to 800 ms ... */
    for (int i = 0; i < 4; i++, now += SEC)
        life(now, now + 100 * MS, now + 200 * MS);
    /* ... then served 3 s before a kill -9: the shortest delay again, each time */
    for (int i = 0; i < 5; i++, now += 10 * SEC)
        assert_int_equal(life(now, now + 500 * MS, now + 3500 * MS), 100);
}

static void test_too_many_restarts_in_the_window_give_up(void **state)
{
    (void)state;
    setup(3);
    struct proc *p = procs_by_id(&t, "w0");
    uint64_t now = 10 * SEC;
    for (int i = 0; i < 3; i++, now += 5 * SEC)
        life(now, now + 500 * MS, now + 3 * SEC);
    p->pid = 1;
    p->state = PROC_READY;
    p->ready_ns = now;
    assert_false(procs_on_exit(&t, p, KILLED, now + 3 * SEC, false, false));
    assert_int_equal(p->state, PROC_FAILED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_crash_loop_backs_off_doubling),
        cmocka_unit_test(test_a_process_that_served_comes_back_at_once),
        cmocka_unit_test(test_too_many_restarts_in_the_window_give_up),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
