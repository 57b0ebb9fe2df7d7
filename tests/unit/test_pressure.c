/* test_pressure.c — the memory-pressure monitor: parsing PSI, meminfo and
 * cgroup files (good and garbage), reading fixture trees and the real
 * machine, budget selection, levels with hysteresis, the PSI trigger. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "err.h"
#include "supervisor/pressure.h"

#define GiB (1024ull * 1024 * 1024)
#define MiB (1024ull * 1024)

/* --- PSI ------------------------------------------------------------------------ */

static void test_pressure_parses_psi_some_and_full(void **state)
{
    struct pressure_psi p;
    assert_int_equal(pressure_parse_psi("some avg10=12.50 avg60=3.00 avg300=0.75 total=123456\n"
                                        "full avg10=4.25 avg60=1.00 avg300=0.10 total=7890\n",
                                        &p),
                     0);
    assert_true(p.ok);
    assert_true(p.has_full);
    assert_true(p.some_avg10 == 12.5 && p.some_avg60 == 3.0 && p.some_avg300 == 0.75);
    assert_true(p.full_avg10 == 4.25 && p.full_avg60 == 1.0 && p.full_avg300 == 0.1);
    assert_int_equal(p.some_total_us, 123456);
    assert_int_equal(p.full_total_us, 7890);
}

static void test_pressure_psi_without_full_line_or_newline(void **state)
{
    struct pressure_psi p;
    assert_int_equal(pressure_parse_psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=0", &p), 0);
    assert_true(p.ok);
    assert_false(p.has_full);
    /* a future kernel's extra key is skipped */
    assert_int_equal(pressure_parse_psi("some avg10=1.00 avg60=0.00 avg300=0.00 avg900=0.5 total=9\n", &p), 0);
    assert_true(p.some_avg10 == 1.0);
}

static void test_pressure_psi_malformed_is_unavailable(void **state)
{
    static const char *const bad[] = {
        "",
        "\n",
        "garbage",
        "full avg10=1.00 avg60=0.00 avg300=0.00 total=0\n", /* no some line */
        "some avg10=abc avg60=0.00 avg300=0.00 total=0\n",
        "some avg10=-1.00 avg60=0.00 avg300=0.00 total=0\n",
        "some avg10=nan avg60=0.00 avg300=0.00 total=0\n",
        "some avg10=inf avg60=0.00 avg300=0.00 total=0\n",
        "some avg10=1e5 avg60=0.00 avg300=0.00 total=0\n",
        "some avg10=100.01 avg60=0.00 avg300=0.00 total=0\n",
        "some avg60=1.00 avg300=0.00 total=0\n",             /* no avg10 */
        "some avg10= avg60=0.00 avg300=0.00 total=0\n",
        "some avg10=1.00 avg60=0.00 avg300=0.00 total=-5\n",
        "some avg10=1.00 total=99999999999999999999999\n",  /* overflows u64 */
        "some avg10=1.00 avg60\n",
        "some avg10=1.00\nsome avg10=2.00\n",                 /* twice */
        "some avg10=1.00\nfull avg10=x\n",
        "some avg10=1.00\nsomething else\n",
        "some\n",
        "\x01\x02\xff some avg10=1.00\n",
        "some avg10=0000000000000000000000000000001.0\n",    /* too long a number */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct pressure_psi p;
        memset(&p, 0xa5, sizeof p);
        int rc = pressure_parse_psi(bad[i], &p);
        if (rc != RILL_E_BAD_FORMAT)
            fail_msg("accepted bad PSI text #%zu: %s", i, bad[i]);
        assert_false(p.ok);
        assert_false(p.has_full);
    }
    struct pressure_psi p;
    assert_int_equal(pressure_parse_psi(NULL, &p), RILL_E_BAD_FORMAT);

    /* a long line of junk, no NUL until the end */
    char big[20000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    memcpy(big, "some ", 5);
    assert_int_equal(pressure_parse_psi(big, &p), RILL_E_BAD_FORMAT);
}

/* --- meminfo ---------------------------------------------------------------------- */

static const char MEMINFO[] = "MemTotal:       16384000 kB\n"
                              "MemFree:         1000000 kB\n"
                              "MemAvailable:    4096000 kB\n"
                              "Buffers:            4884 kB\n"
                              "HugePages_Total:       0\n"
                              "Hugepagesize:       2048 kB\n";

static void test_pressure_parses_meminfo(void **state)
{
    uint64_t t, a;
    assert_int_equal(pressure_parse_meminfo(MEMINFO, &t, &a), 0);
    assert_int_equal(t, 16384000ull * 1024);
    assert_int_equal(a, 4096000ull * 1024);
}

static void test_pressure_meminfo_malformed_is_unavailable(void **state)
{
    static const char *const bad[] = {
        "",
        "MemTotal:       16384000 kB\n",                              /* no MemAvailable (pre-3.14) */
        "MemAvailable:    4096000 kB\n",
        "MemTotal:       16384000 MB\nMemAvailable: 1 kB\n",          /* unknown unit */
        "MemTotal:       16384000\nMemAvailable: 1 kB\n",             /* no unit */
        "MemTotal: -5 kB\nMemAvailable: 1 kB\n",
        "MemTotal: 99999999999999999999 kB\nMemAvailable: 1 kB\n",   /* overflow */
        "MemTotal: 18014398509481984 kB\nMemAvailable: 1 kB\n",      /* overflows in bytes */
        "MemTotal: 100 kB\nMemAvailable: 200 kB\n",                   /* available > total */
        "MemTotal: 0 kB\nMemAvailable: 0 kB\n",
        "MemTotal: 100 kB\nMemTotal: 100 kB\nMemAvailable: 1 kB\n",
        "MemTotal: 1x0 kB\nMemAvailable: 1 kB\n",
        "MemTotal:",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t t = 1, a = 1;
        if (pressure_parse_meminfo(bad[i], &t, &a) != RILL_E_BAD_FORMAT)
            fail_msg("accepted bad meminfo #%zu", i);
        assert_int_equal(t, 0);
        assert_int_equal(a, 0);
    }
}

/* --- cgroup files ------------------------------------------------------------------- */

static void test_pressure_parses_cgroup_values(void **state)
{
    uint64_t v;
    bool unl;
    assert_int_equal(pressure_parse_cg_value("4294967296\n", &v, &unl), 0);
    assert_int_equal(v, 4 * GiB);
    assert_false(unl);
    assert_int_equal(pressure_parse_cg_value("max\n", &v, &unl), 0);
    assert_true(unl);
    /* what cgroup v1 says when there is no limit */
    assert_int_equal(pressure_parse_cg_value("9223372036854771712\n", &v, &unl), 0);
    assert_true(unl);
    assert_int_equal(pressure_parse_cg_value("0", &v, &unl), 0);
    assert_int_equal(v, 0);

    static const char *const bad[] = {"", "\n", "-1\n", "12a\n", "0x10\n", " 12\n", "max \n", "MAX\n",
                                      "18446744073709551616\n", "1 2\n", "12\n\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (pressure_parse_cg_value(bad[i], &v, &unl) != RILL_E_BAD_FORMAT)
            fail_msg("accepted bad cgroup value #%zu: '%s'", i, bad[i]);
}

static void test_pressure_parses_proc_self_cgroup(void **state)
{
    char v1[256], v2[256];
    /* a hybrid host: v1 controllers and an (empty) v2 hierarchy */
    assert_int_equal(pressure_parse_proc_cgroup("9:name=systemd:/\n8:pids:/\n4:memory:/process_api/9d65\n"
                                                "3:cpu,cpuacct:/\n0::/\n",
                                                v1, sizeof v1, v2, sizeof v2),
                     3);
    assert_string_equal(v1, "/process_api/9d65");
    assert_string_equal(v2, "/");
    /* memory co-mounted with other controllers */
    assert_int_equal(pressure_parse_proc_cgroup("5:cpuset,memory:/docker/abc\n", v1, sizeof v1, v2, sizeof v2), 1);
    assert_string_equal(v1, "/docker/abc");
    assert_string_equal(v2, "");
    /* unified only; a path with a colon in it */
    assert_int_equal(pressure_parse_proc_cgroup("0::/system.slice/a:b.scope\n", v1, sizeof v1, v2, sizeof v2), 2);
    assert_string_equal(v1, "");
    assert_string_equal(v2, "/system.slice/a:b.scope");
    /* garbage and escapes are ignored, never followed */
    assert_int_equal(pressure_parse_proc_cgroup("", v1, sizeof v1, v2, sizeof v2), 0);
    assert_int_equal(pressure_parse_proc_cgroup("junk\n::\nx::/a\n4:memory:relative\n", v1, sizeof v1, v2, sizeof v2),
                     0);
    assert_int_equal(pressure_parse_proc_cgroup("0::/a/../../etc\n4:memory:/..\n", v1, sizeof v1, v2, sizeof v2), 0);
    assert_int_equal(pressure_parse_proc_cgroup("0::/a/..b/c..\n", v1, sizeof v1, v2, sizeof v2), 2);
    /* a path longer than the buffer is missing, not truncated */
    assert_int_equal(pressure_parse_proc_cgroup("0::/0123456789abcdef\n", v1, sizeof v1, v2, 8), 0);
    assert_int_equal(pressure_parse_proc_cgroup(NULL, v1, sizeof v1, v2, sizeof v2), RILL_E_BAD_FORMAT);
}

/* --- fixture trees ---------------------------------------------------------------------- */

static void mkdirs(const char *path)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            mkdir(tmp, 0755);
            *p = '/';
        }
    }
    mkdir(tmp, 0755);
}

static void put(const char *root, const char *rel, const char *text)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s%s", root, rel);
    char *slash = strrchr(path, '/');
    *slash = 0;
    mkdirs(path);
    *slash = '/';
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static char *fixture_root(void)
{
    char *dir = strdup("/tmp/rill-test-pressure-XXXXXX");
    assert_non_null(mkdtemp(dir));
    return dir;
}

static void rm_tree(const char *dir)
{
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static const char PSI_CALM[] = "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
                               "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";

static void test_pressure_sample_reads_a_cgroup_v2_container(void **state)
{
    char *root = fixture_root();
    put(root, "/proc/pressure/memory", PSI_CALM);
    put(root, "/proc/meminfo", MEMINFO);
    put(root, "/proc/self/cgroup", "0::/kubepods/pod1/c1\n");
    put(root, "/sys/fs/cgroup/cgroup.controllers", "cpu memory\n");
    put(root, "/sys/fs/cgroup/kubepods/pod1/c1/memory.current", "3221225472\n");
    put(root, "/sys/fs/cgroup/kubepods/pod1/c1/memory.max", "4294967296\n");
    put(root, "/sys/fs/cgroup/kubepods/pod1/c1/memory.pressure",
        "some avg10=30.00 avg60=1.00 avg300=0.00 total=5\nfull avg10=2.00 avg60=0.00 avg300=0.00 total=1\n");
    struct pressure_reading r;
    assert_int_equal(pressure_sample(root, &r), 0);
    assert_true(r.psi.ok);
    assert_true(r.cg_psi.ok);
    assert_true(r.cg_psi.some_avg10 == 30.0);
    assert_int_equal(r.cgroup_version, 2);
    assert_true(r.have_cg_usage && r.have_cg_limit);
    assert_int_equal(r.cg_usage, 3 * GiB);
    assert_int_equal(r.cg_limit, 4 * GiB);
    assert_true(r.have_meminfo);
    pressure_account(&r, 0);
    assert_int_equal(r.budget_src, PRESSURE_BUDGET_CGROUP);
    assert_int_equal(r.used_src, PRESSURE_USED_CGROUP);
    assert_true(r.ratio == 0.75);

    /* memory.max "max": no limit, the budget is MemTotal */
    put(root, "/sys/fs/cgroup/kubepods/pod1/c1/memory.max", "max\n");
    assert_int_equal(pressure_sample(root, &r), 0);
    assert_true(r.have_cg_usage);
    assert_false(r.have_cg_limit);
    pressure_account(&r, 0);
    assert_int_equal(r.budget_src, PRESSURE_BUDGET_MEMTOTAL);
    rm_tree(root);
    free(root);
}

static void test_pressure_sample_reads_a_cgroup_v1_container(void **state)
{
    char *root = fixture_root();
    put(root, "/proc/meminfo", MEMINFO);
    /* hybrid: the v2 hierarchy exists but the process is at its root */
    put(root, "/proc/self/cgroup", "4:memory:/docker/abc\n0::/\n");
    put(root, "/sys/fs/cgroup/unified/cgroup.controllers", "");
    put(root, "/sys/fs/cgroup/unified/memory.pressure", "some avg10=99.00 avg60=0.00 avg300=0.00 total=5\n");
    put(root, "/sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes", "1073741824\n");
    put(root, "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", "2147483648\n");
    struct pressure_reading r;
    assert_int_equal(pressure_sample(root, &r), 0);
    assert_false(r.psi.ok); /* no /proc/pressure: PSI off */
    assert_false(r.cg_psi.ok); /* the v2 root's memory.pressure is not the group's */
    assert_int_equal(r.cgroup_version, 1);
    assert_int_equal(r.cg_usage, 1 * GiB);
    assert_int_equal(r.cg_limit, 2 * GiB);

    /* v1 without a limit */
    put(root, "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n");
    assert_int_equal(pressure_sample(root, &r), 0);
    assert_true(r.have_cg_usage);
    assert_false(r.have_cg_limit);
    rm_tree(root);
    free(root);
}

static void test_pressure_sample_uses_the_mount_root_when_the_group_is_not_visible(void **state)
{
    char *root = fixture_root();
    put(root, "/proc/self/cgroup", "4:memory:/docker/abc\n");
    put(root, "/sys/fs/cgroup/memory/memory.usage_in_bytes", "1048576\n");
    put(root, "/sys/fs/cgroup/memory/memory.limit_in_bytes", "2097152\n");
    struct pressure_reading r;
    assert_int_equal(pressure_sample(root, &r), 0);
    assert_int_equal(r.cgroup_version, 1);
    assert_int_equal(r.cg_usage, 1 * MiB);
    assert_int_equal(r.cg_limit, 2 * MiB);
    rm_tree(root);
    free(root);
}

static void test_pressure_sample_of_an_empty_or_broken_tree_reports_nothing(void **state)
{
    char *root = fixture_root();
    struct pressure_reading r;
    assert_int_equal(pressure_sample(root, &r), 0);
    assert_false(r.psi.ok || r.cg_psi.ok || r.have_meminfo || r.have_cg_usage || r.have_cg_limit);
    assert_int_equal(r.cgroup_version, 0);

    put(root, "/proc/pressure/memory", "\xff\xfe garbage");
    put(root, "/proc/meminfo", "MemTotal: lots\n");
    put(root, "/proc/self/cgroup", "0::/x\n");
    put(root, "/sys/fs/cgroup/cgroup.controllers", "");
    put(root, "/sys/fs/cgroup/x/memory.current", "many\n");
    put(root, "/sys/fs/cgroup/x/memory.pressure", "");
    assert_int_equal(pressure_sample(root, &r), 0);
    assert_false(r.psi.ok || r.cg_psi.ok || r.have_meminfo || r.have_cg_usage || r.have_cg_limit);
    pressure_account(&r, 0);
    assert_int_equal(r.budget_src, PRESSURE_BUDGET_NONE);
    assert_false(r.have_ratio);
    rm_tree(root);
    free(root);
}

/* --- budget ---------------------------------------------------------------------------------- */

static struct pressure_reading machine(uint64_t total, uint64_t avail)
{
    struct pressure_reading r = {.have_meminfo = true, .mem_total = total, .mem_available = avail};
    return r;
}

static void test_pressure_budget_selection_rules(void **state)
{
    /* plain host: MemTotal, used = MemTotal - MemAvailable */
    struct pressure_reading r = machine(16 * GiB, 12 * GiB);
    pressure_account(&r, 0);
    assert_int_equal(r.budget_src, PRESSURE_BUDGET_MEMTOTAL);
    assert_int_equal(r.used_src, PRESSURE_USED_MEMINFO);
    assert_int_equal(r.budget, 16 * GiB);
    assert_int_equal(r.used, 4 * GiB);
    assert_true(r.have_ratio && r.ratio == 0.25);

    /* a cgroup limit below the RAM: the limit and the group's usage */
    r.have_cg_usage = r.have_cg_limit = true;
    r.cg_limit = 4 * GiB;
    r.cg_usage = 3 * GiB;
    pressure_account(&r, 0);
    assert_int_equal(r.budget_src, PRESSURE_BUDGET_CGROUP);
    assert_int_equal(r.used, 3 * GiB);

    /* a limit above the RAM cannot bind: MemTotal */
    r.cg_limit = 64 * GiB;
    pressure_account(&r, 0);
    assert_int_equal(r.budget_src, PRESSURE_BUDGET_MEMTOTAL);

    /* a configured budget wins and counts the pipeline's own RSS */
    r.cg_limit = 4 * GiB;
    r.workers_rss = 1 * GiB;
    r.workers_kv = 512 * MiB; /* part of the RSS: not added again */
    r.others_rss = 1 * GiB;
    pressure_account(&r, 8 * GiB);
    assert_int_equal(r.budget_src, PRESSURE_BUDGET_CONFIG);
    assert_int_equal(r.used_src, PRESSURE_USED_RSS);
    assert_int_equal(r.budget, 8 * GiB);
    assert_int_equal(r.used, 2 * GiB);
    assert_true(r.ratio == 0.25);

    /* a limit without meminfo still counts */
    struct pressure_reading c = {.have_cg_usage = true, .have_cg_limit = true, .cg_usage = 1, .cg_limit = 4};
    pressure_account(&c, 0);
    assert_int_equal(c.budget_src, PRESSURE_BUDGET_CGROUP);

    /* nothing known, no configured budget: no ratio */
    struct pressure_reading none = {0};
    pressure_account(&none, 0);
    assert_int_equal(none.budget_src, PRESSURE_BUDGET_NONE);
    assert_false(none.have_ratio);
}

/* --- levels --------------------------------------------------------------------------------- */

static struct pressure_thresholds defaults(void)
{
    struct pressure_thresholds th = {
        .budget_bytes = 0,
        .warning = 0.75, .critical = 0.85, .emergency = 0.95, .hysteresis = 0.05,
        .psi_warning = 10, .psi_critical = 25, .psi_emergency = 50, .psi_hysteresis = 0.2,
    };
    return th;
}

/* A reading with used/budget = ratio of a 4 GiB machine and the given PSI
 * (negative: no PSI). */
static struct pressure_reading at(double ratio, double some, double full)
{
    struct pressure_reading r = machine(4 * GiB, (uint64_t)((1 - ratio) * 4 * GiB + 0.5));
    if (some >= 0) {
        r.psi.ok = r.psi.has_full = true;
        r.psi.some_avg10 = some;
        r.psi.full_avg10 = full;
    }
    return r;
}

static void test_pressure_thresholds_from_config(void **state)
{
    struct rill_config c;
    cfg_defaults(&c);
    struct pressure_thresholds th;
    pressure_thresholds_from_config(&c, &th);
    assert_true(th.warning == 0.75 && th.critical == 0.85 && th.emergency == 0.95);
    assert_true(th.psi_warning == 10 && th.psi_critical == 25 && th.psi_emergency == 50);
    assert_true(th.hysteresis == 0.05);
    assert_true(th.psi_hysteresis > 0.19 && th.psi_hysteresis < 0.21);
    assert_int_equal(th.budget_bytes, 0);
    struct pressure_monitor m;
    assert_int_equal(pressure_init(&m, &th), 0);
}

static void test_pressure_init_rejects_bad_thresholds(void **state)
{
    struct pressure_monitor m;
    struct pressure_thresholds th = defaults();
    th.critical = 0.7; /* below warning */
    assert_int_equal(pressure_init(&m, &th), RILL_E_BAD_CONFIG);
    th = defaults();
    th.psi_critical = 5;
    assert_int_equal(pressure_init(&m, &th), RILL_E_BAD_CONFIG);
    th = defaults();
    th.hysteresis = 0.6;
    assert_int_equal(pressure_init(&m, &th), RILL_E_BAD_CONFIG);
    th = defaults();
    th.warning = 0.0 / 0.0;
    assert_int_equal(pressure_init(&m, &th), RILL_E_BAD_CONFIG);
    th = defaults();
    th.psi_hysteresis = 1;
    assert_int_equal(pressure_init(&m, &th), RILL_E_BAD_CONFIG);
    /* a disabled level (0) does not count in the order */
    th = defaults();
    th.critical = 0;
    assert_int_equal(pressure_init(&m, &th), 0);
}

static void test_pressure_rises_at_once_and_names_the_reading(void **state)
{
    struct pressure_thresholds th = defaults();
    struct pressure_monitor m;
    assert_int_equal(pressure_init(&m, &th), 0);
    struct pressure_reading r = at(0.50, 0, 0);
    assert_false(pressure_update(&m, &r));
    assert_int_equal(m.level, PRESSURE_NORMAL);

    /* straight from normal to critical in one reading */
    r = at(0.86, 0, 0);
    assert_true(pressure_update(&m, &r));
    assert_int_equal(m.level, PRESSURE_CRITICAL);
    assert_non_null(strstr(m.reason, "used 3.4 GiB of 4.0 GiB MemTotal budget (86%) >= critical 85%"));
    assert_null(strstr(m.reason, "PSI"));

    r = at(0.96, 0, 0);
    assert_true(pressure_update(&m, &r));
    assert_int_equal(m.level, PRESSURE_EMERGENCY);
    assert_non_null(strstr(m.reason, ">= emergency 95%"));
    assert_int_equal(m.transitions, 2);
    assert_int_equal(m.entered[PRESSURE_CRITICAL], 1);
    assert_int_equal(m.entered[PRESSURE_EMERGENCY], 1);
}

static void test_pressure_falls_only_below_the_margin(void **state)
{
    struct pressure_thresholds th = defaults();
    struct pressure_monitor m;
    assert_int_equal(pressure_init(&m, &th), 0);
    struct pressure_reading r = at(0.78, 0, 0);
    assert_true(pressure_update(&m, &r));
    assert_int_equal(m.level, PRESSURE_WARNING);
    /* below the threshold but inside the margin: stays */
    const double stay[] = {0.74, 0.72, 0.705, 0.7001};
    for (size_t i = 0; i < sizeof stay / sizeof stay[0]; i++) {
        r = at(stay[i], 0, 0);
        assert_false(pressure_update(&m, &r));
        assert_int_equal(m.level, PRESSURE_WARNING);
    }
    r = at(0.69, 0, 0);
    assert_true(pressure_update(&m, &r));
    assert_int_equal(m.level, PRESSURE_NORMAL);
    assert_non_null(strstr(m.reason, "(69%) < warning 75% - 5%"));

    /* from emergency a big drop falls several levels at once, to the highest
     * level still held */
    r = at(0.97, 0, 0);
    assert_true(pressure_update(&m, &r));
    r = at(0.82, 0, 0); /* below emergency - 5%, above critical - 5% */
    assert_true(pressure_update(&m, &r));
    assert_int_equal(m.level, PRESSURE_CRITICAL);
    r = at(0.50, 0, 0);
    assert_true(pressure_update(&m, &r));
    assert_int_equal(m.level, PRESSURE_NORMAL);
}

static void test_pressure_psi_raises_levels_and_the_higher_signal_wins(void **state)
{
    struct pressure_thresholds th = defaults();
    struct pressure_monitor m;
    assert_int_equal(pressure_init(&m, &th), 0);
    struct pressure_reading r = at(0.10, 12, 0);
    assert_true(pressure_update(&m, &r));
    assert_int_equal(m.level, PRESSURE_WARNING);
    assert_non_null(strstr(m.reason, "PSI some avg10 12.0% >= warning 10%"));
    r = at(0.10, 30, 0);
    assert_true(pressure_update(&m, &r));
    assert_int_equal(m.level, PRESSURE_CRITICAL);
    /* full avg10, not some, decides emergency */
    r = at(0.10, 80, 49);
    assert_false(pressure_update(&m, &r));
    r = at(0.10, 80, 55);
    assert_true(pressure_update(&m, &r));
    assert_int_equal(m.level, PRESSURE_EMERGENCY);
    assert_non_null(strstr(m.reason, "PSI full avg10 55.0% >= emergency 50%"));

    /* both signals at warning: both named */
    assert_int_equal(pressure_init(&m, &th), 0);
    r = at(0.80, 11, 0);
    assert_true(pressure_update(&m, &r));
    assert_non_null(strstr(m.reason, ">= warning 75%; PSI some avg10 11.0% >= warning 10%"));

    /* PSI held above its margin keeps warning though the ratio is low */
    r = at(0.10, 8.5, 0);
    assert_false(pressure_update(&m, &r));
    r = at(0.10, 7.9, 0);
    assert_true(pressure_update(&m, &r));
    assert_int_equal(m.level, PRESSURE_NORMAL);
    assert_non_null(strstr(m.reason, "PSI some avg10 7.9% < warning 8.0%"));

    /* the ratio holds the level though PSI dropped to zero */
    r = at(0.90, 0, 0);
    assert_true(pressure_update(&m, &r));
    r = at(0.81, 0, 0);
    assert_false(pressure_update(&m, &r));
    assert_int_equal(m.level, PRESSURE_CRITICAL);
}

static void test_pressure_cgroup_psi_counts_when_the_host_is_calm(void **state)
{
    struct pressure_thresholds th = defaults();
    struct pressure_monitor m;
    assert_int_equal(pressure_init(&m, &th), 0);
    struct pressure_reading r = at(0.10, 0, 0);
    r.cg_psi.ok = true;
    r.cg_psi.some_avg10 = 26;
    assert_true(pressure_update(&m, &r));
    assert_int_equal(m.level, PRESSURE_CRITICAL);
    assert_non_null(strstr(m.reason, "cgroup PSI some avg10 26.0% >= critical 25%"));
}

static void test_pressure_blind_reading_keeps_the_level(void **state)
{
    struct pressure_thresholds th = defaults();
    struct pressure_monitor m;
    assert_int_equal(pressure_init(&m, &th), 0);
    struct pressure_reading r = at(0.90, -1, 0);
    assert_true(pressure_update(&m, &r));
    struct pressure_reading blind = {0};
    assert_false(pressure_update(&m, &blind));
    assert_int_equal(m.level, PRESSURE_CRITICAL);
}

/* A scripted series: each reading and the level expected after it. */
static void test_pressure_scripted_series_of_readings(void **state)
{
    struct pressure_thresholds th = defaults();
    struct pressure_monitor m;
    assert_int_equal(pressure_init(&m, &th), 0);
    static const struct {
        double ratio, some, full;
        int level;
    } script[] = {
        {0.40, 0, 0, PRESSURE_NORMAL},     {0.74, 0, 0, PRESSURE_NORMAL},
        {0.75, 0, 0, PRESSURE_WARNING},    {0.73, 0, 0, PRESSURE_WARNING},
        {0.86, 0, 0, PRESSURE_CRITICAL},   {0.83, 0, 0, PRESSURE_CRITICAL},
        {0.805, 0, 0, PRESSURE_CRITICAL},  {0.79, 0, 0, PRESSURE_WARNING},
        {0.60, 26, 0, PRESSURE_CRITICAL},  {0.60, 21, 0, PRESSURE_CRITICAL},
        {0.60, 19, 0, PRESSURE_WARNING},   {0.60, 9, 0, PRESSURE_WARNING},
        {0.60, 7, 0, PRESSURE_NORMAL},     {0.60, 9.9, 0, PRESSURE_NORMAL},
        {0.99, 60, 60, PRESSURE_EMERGENCY}, {0.92, 60, 45, PRESSURE_EMERGENCY},
        {0.89, 30, 39, PRESSURE_CRITICAL}, {0.10, 0, 0, PRESSURE_NORMAL},
    };
    for (size_t i = 0; i < sizeof script / sizeof script[0]; i++) {
        struct pressure_reading r = at(script[i].ratio, script[i].some, script[i].full);
        pressure_update(&m, &r);
        if ((int)m.level != script[i].level)
            fail_msg("step %zu (ratio %.2f some %.1f full %.1f): level %s, want %s", i, script[i].ratio,
                     script[i].some, script[i].full, pressure_level_name(m.level),
                     pressure_level_name(script[i].level));
    }
}

/* Readings hovering at a threshold with noise change the level once. */
static void test_pressure_no_flapping_when_hovering_at_a_threshold(void **state)
{
    struct pressure_thresholds th = defaults();
    struct pressure_monitor m;
    assert_int_equal(pressure_init(&m, &th), 0);
    uint64_t x = 12345;
    for (int i = 0; i < 10000; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        double noise = ((double)(x >> 11) / 9007199254740992.0 - 0.5) * 0.04; /* ±2% */
        double psi_noise = ((double)(x >> 40 & 0xffff) / 65535.0 - 0.5) * 3;   /* ±1.5 points */
        struct pressure_reading r = at(0.75 + noise, 10 + psi_noise, 0);
        pressure_update(&m, &r);
    }
    assert_int_equal(m.transitions, 1);
    assert_int_equal(m.level, PRESSURE_WARNING);
}

/* --- the machine ------------------------------------------------------------------------------ */

static void test_pressure_reading_this_machine_is_plausible(void **state)
{
    struct pressure_reading r;
    assert_int_equal(pressure_sample(NULL, &r), 0);
    assert_true(r.have_meminfo);
    assert_true(r.mem_total >= 64 * MiB && r.mem_total < (1ull << 50));
    assert_true(r.mem_available <= r.mem_total);
    if (r.psi.ok)
        assert_true(r.psi.some_avg10 >= 0 && r.psi.some_avg10 <= 100);
    if (r.have_cg_usage)
        assert_true(r.cg_usage > 0);
    if (r.have_cg_limit)
        assert_true(r.cg_limit > 0 && r.cg_limit < PRESSURE_CG_UNLIMITED);
    pressure_account(&r, 0);
    assert_true(r.have_ratio && r.ratio >= 0 && r.ratio <= 1.5);
    char u[32], b[32];
    print_message("  this machine: PSI %s (some %.2f%%), cgroup v%d usage %s, budget %s from %s, ratio %.3f\n",
                  r.psi.ok ? "yes" : "no", r.psi.some_avg10, r.cgroup_version,
                  r.have_cg_usage ? pressure_fmt_bytes(u, sizeof u, r.cg_usage) : "-",
                  pressure_fmt_bytes(b, sizeof b, r.budget), pressure_budget_src_name(r.budget_src), r.ratio);

    struct pressure_thresholds th = defaults();
    struct pressure_monitor m;
    assert_int_equal(pressure_init(&m, &th), 0);
    pressure_update(&m, &r); /* whatever the level, it must not fail */
}

static void test_pressure_trigger_on_this_machine(void **state)
{
    int fd;
    assert_int_equal(pressure_trigger_open(NULL, 0, PRESSURE_TRIGGER_WINDOW_US, &fd), RILL_E_BAD_CONFIG);
    assert_int_equal(pressure_trigger_open(NULL, 3000000, 2000000, &fd), RILL_E_BAD_CONFIG);
    assert_int_equal(pressure_trigger_open("/nonexistent/memory.pressure", 150000, 2000000, &fd),
                     RILL_E_UNSUPPORTED);
    assert_int_equal(fd, -1);

    int rc = pressure_trigger_open(NULL, PRESSURE_TRIGGER_STALL_US, PRESSURE_TRIGGER_WINDOW_US, &fd);
    if (rc) {
        print_message("  PSI trigger unavailable here (%s): skipped\n", rill_err_name(rc));
        skip();
    }
    assert_true(fd >= 0);
    struct pollfd p = {.fd = fd, .events = POLLPRI};
    int n = poll(&p, 1, 0);
    assert_true(n >= 0);
    assert_false(p.revents & (POLLERR | POLLNVAL));
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pressure_parses_psi_some_and_full),
        cmocka_unit_test(test_pressure_psi_without_full_line_or_newline),
        cmocka_unit_test(test_pressure_psi_malformed_is_unavailable),
        cmocka_unit_test(test_pressure_parses_meminfo),
        cmocka_unit_test(test_pressure_meminfo_malformed_is_unavailable),
        cmocka_unit_test(test_pressure_parses_cgroup_values),
        cmocka_unit_test(test_pressure_parses_proc_self_cgroup),
        cmocka_unit_test(test_pressure_sample_reads_a_cgroup_v2_container),
        cmocka_unit_test(test_pressure_sample_reads_a_cgroup_v1_container),
        cmocka_unit_test(test_pressure_sample_uses_the_mount_root_when_the_group_is_not_visible),
        cmocka_unit_test(test_pressure_sample_of_an_empty_or_broken_tree_reports_nothing),
        cmocka_unit_test(test_pressure_budget_selection_rules),
        cmocka_unit_test(test_pressure_thresholds_from_config),
        cmocka_unit_test(test_pressure_init_rejects_bad_thresholds),
        cmocka_unit_test(test_pressure_rises_at_once_and_names_the_reading),
        cmocka_unit_test(test_pressure_falls_only_below_the_margin),
        cmocka_unit_test(test_pressure_psi_raises_levels_and_the_higher_signal_wins),
        cmocka_unit_test(test_pressure_cgroup_psi_counts_when_the_host_is_calm),
        cmocka_unit_test(test_pressure_blind_reading_keeps_the_level),
        cmocka_unit_test(test_pressure_scripted_series_of_readings),
        cmocka_unit_test(test_pressure_no_flapping_when_hovering_at_a_threshold),
        cmocka_unit_test(test_pressure_reading_this_machine_is_plausible),
        cmocka_unit_test(test_pressure_trigger_on_this_machine),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
