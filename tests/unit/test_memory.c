/* test_memory.c — the memory accounts of make bench-memory and of
 * rill_worker_memory_bytes / rill_process_peak_rss_bytes in /metrics:
 * kv_bytes_resident (worker/kvcache.h), engine_memory (worker/engine.h),
 * procstat_peak_rss (common/procstat.h).
 *
 * The engine test runs the tiny model that $RILL_TEST_BUILD/rill-mkmodel
 * (build/ by default) makes in a temporary directory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/config.h"
#include "common/log.h"
#include "common/procstat.h"
#include "common/proto.h"
#include "worker/engine.h"
#include "worker/forward.h"
#include "worker/kvcache.h"
#include "worker/sched.h"
#include "testutil.h"

static char tmpdir[64];
static char tiny_path[160];

static int setup(void **state)
{
    (void)state;
    rlog_init("test", NULL, RLOG_ERROR, false, 2);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/rill-test-memory-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(tiny_path, sizeof tiny_path, "%s/tiny.gguf", tmpdir);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s/rill-mkmodel --shape tiny --out %s >/dev/null 2>&1", tu_build_dir(), tiny_path);
    if (system(cmd) != 0) {
        fprintf(stderr, "failed: %s (build it first: make %s/rill-mkmodel)\n", cmd, tu_build_dir());
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(tiny_path);
    rmdir(tmpdir);
    return 0;
}

static void test_kv_resident_counts_written_blocks_until_they_are_trimmed(void **state)
{
    (void)state;
    struct kv *kv;
    assert_int_equal(kv_create(2, 64, 16, 64 << 20, &kv), 0);
    size_t bb = kv_block_bytes(kv);
    assert_int_equal(kv_bytes_resident(kv), 0);
    struct kv_seq a = {0}, b = {0};
    assert_int_equal(kv_reserve(kv, &a, 40), 0); /* 3 blocks */
    assert_int_equal(kv_bytes_resident(kv), 3 * bb);
    assert_int_equal(kv_reserve(kv, &b, 16), 0);
    assert_int_equal(kv_bytes_resident(kv), 4 * bb);
    /* Given back but not trimmed: the pages are still ours. */
    kv_release(kv, &a);
    assert_int_equal(kv_bytes_resident(kv), 4 * bb);
    /* A new sequence takes a freed (written) block first: nothing new. */
    assert_int_equal(kv_reserve(kv, &a, 16), 0);
    assert_int_equal(kv_bytes_resident(kv), 4 * bb);
    kv_release(kv, &a);
    assert_int_equal(kv_trim(kv), 3 * bb);
    assert_int_equal(kv_bytes_resident(kv), bb); /* b's block, still held */
    kv_release(kv, &b);
    kv_trim(kv);
    assert_int_equal(kv_bytes_resident(kv), 0);
    kv_free(kv);
}

static void test_peak_rss_is_at_least_the_rss_and_keeps_a_peak_that_is_gone(void **state)
{
    (void)state;
    uint64_t before = procstat_peak_rss(0);
    assert_true(before > 0);
    assert_true(before + (1 << 20) >= procstat_rss(0));
    size_t n = 64 << 20;
    char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    memset(p, 1, n);
    uint64_t during = procstat_rss(0);
    munmap(p, n);
    uint64_t after = procstat_peak_rss(0);
    /* statm and status may lag each other by a few pages (per-thread RSS
     * counters): 1 MiB of slack. */
    assert_true(after + (1 << 20) >= during);
    assert_true(after >= before + n - (1 << 20));
    assert_true(procstat_rss(0) < during - n / 2);
    assert_true(procstat_peak_rss(getpid()) >= after);
    assert_int_equal(procstat_peak_rss(999999999), 0);
}

static int no_emit(void *ctx, const struct proto_token *t)
{
    (void)ctx;
    (void)t;
    return 0;
}

static void no_flush(void *ctx) { (void)ctx; }

static void test_engine_memory_parts_add_up_to_what_the_engine_holds(void **state)
{
    (void)state;
    struct rill_config c;
    cfg_defaults(&c);
    char why[256] = "";
    assert_int_equal(cfg_set(&c, "model", tiny_path, why, sizeof why), 0);
    assert_int_equal(cfg_set(&c, "threads", "1", why, sizeof why), 0);
    struct engine e;
    assert_int_equal(engine_open(&c, false, &e, why, sizeof why), 0);
    struct engine_mem m;
    engine_memory(&e, &m);
    assert_int_equal(m.activations, fwd_scratch_bytes(e.fwd));
    assert_int_equal(m.weights, fwd_weight_bytes(e.fwd));
    assert_true(m.weights > 0 && m.weights <= 2 * e.model->file_bytes);
    assert_int_equal(m.kv_cache, 0);
    assert_int_equal(m.prefix_cache, 0);

    /* A prompt of more than a block: after it ends, its full blocks stay
     * cached (idle, prefix_cache), the rest is free but written (kv_cache). */
    static const char prompt[] = "Once upon a time there was a river that ran through the hills and the town";
    struct proto_submit q = {.id = 1, .prompt = prompt, .prompt_len = sizeof prompt - 1, .max_tokens = 24,
                             .temperature = 0, .top_p = 1, .repetition_penalty = 1, .parse_special = true};
    assert_int_equal(sched_submit(e.sched, &q, 0, why, sizeof why), 0);
    struct sched_out out = {NULL, no_emit, no_flush};
    while (sched_busy(e.sched))
        assert_true(sched_step(e.sched, &out) >= 0);
    engine_memory(&e, &m);
    struct kv_prefix_stats ps;
    kv_prefix_stats(e.kv, &ps);
    assert_true(ps.idle > 0);
    assert_int_equal(m.prefix_cache, (uint64_t)ps.idle * kv_block_bytes(e.kv));
    assert_int_equal(m.kv_cache + m.prefix_cache, kv_bytes_resident(e.kv));
    assert_true(m.kv_cache > 0);
    engine_close(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_resident_counts_written_blocks_until_they_are_trimmed),
        cmocka_unit_test(test_peak_rss_is_at_least_the_rss_and_keeps_a_peak_that_is_gone),
        cmocka_unit_test(test_engine_memory_parts_add_up_to_what_the_engine_holds),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
