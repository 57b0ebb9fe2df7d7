/* test_config.c — the config table: defaults, file, flags, and the errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"
#include "common/err.h"

static char path[64];

static void write_file(const char *text)
{
    snprintf(path, sizeof path, "/tmp/rill-test-config-%d.ini", (int)getpid());
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_config_defaults_are_the_documented_ones(void **state)
{
    (void)state;
    struct rill_config c;
    cfg_defaults(&c);
    assert_string_equal(c.listen, "127.0.0.1:8765");
    assert_string_equal(c.ws_path, "/stream");
    assert_int_equal(c.max_message_bytes, 1 << 20);
    assert_int_equal(c.ring_bytes, 4 << 20);
    assert_int_equal(c.max_batch, 64);
    assert_true(c.telemetry);
    assert_true(c.sampling_rate == 1.0);
    assert_true(c.target_latency_ms == 50.0);
}

static void test_config_file_sets_keys_in_their_sections(void **state)
{
    (void)state;
    write_file("[gateway]\nlisten = 0.0.0.0:9000\nmax_message_bytes = 64K\n[worker]\nmax_batch = 8\n"
               "target_latency_ms = 25.5\n[telemetry]\ntelemetry = false\n");
    struct rill_config c;
    cfg_defaults(&c);
    char why[256] = "";
    assert_int_equal(cfg_load_file(&c, path, why, sizeof why), 0);
    assert_string_equal(c.listen, "0.0.0.0:9000");
    assert_int_equal(c.max_message_bytes, 65536);
    assert_int_equal(c.max_batch, 8);
    assert_true(c.target_latency_ms == 25.5);
    assert_false(c.telemetry);
    unlink(path);
}

static void expect_file_error(const char *text, const char *msg)
{
    write_file(text);
    struct rill_config c;
    cfg_defaults(&c);
    char why[256] = "";
    assert_int_equal(cfg_load_file(&c, path, why, sizeof why), RILL_E_BAD_CONFIG);
    if (!strstr(why, msg))
        fail_msg("error '%s' does not say '%s'", why, msg);
    unlink(path);
}

static void test_config_file_errors_name_the_key(void **state)
{
    (void)state;
    expect_file_error("[worker]\nmax_batchh = 3\n", "unknown key 'max_batchh' in [worker]");
    expect_file_error("[gateway]\nmax_batch = 3\n", "key 'max_batch' belongs in [worker], not [gateway]");
    expect_file_error("[worker]\nmax_batch = lots\n", "bad value 'lots' for max_batch");
    expect_file_error("[worker]\nmax_batch = 0\n", "bad value '0' for max_batch");
    expect_file_error("[gateway]\nmax_message_bytes = 12Q\n", "max_message_bytes");
    expect_file_error("[telemetry]\ntelemetry = maybe\n", "expected true or false");
    expect_file_error("[worker]\nmax_batch = 1\n[worker\n", "syntax error");
}

static int other_args(int argc, char **argv, int i, void *ctx)
{
    (void)argc;
    if (!strcmp(argv[i], "--prompt")) {
        *(const char **)ctx = argv[i + 1];
        return 2;
    }
    return 0;
}

static void test_config_flags_override_the_file_wherever_they_stand(void **state)
{
    (void)state;
    write_file("[worker]\nmax_batch = 8\nthreads = 1\n");
    char *argv[] = {"prog", "--max-batch", "16", "--config", path, "--prompt", "hi", "--threads=2", NULL};
    struct rill_config c;
    cfg_defaults(&c);
    const char *prompt = NULL;
    char why[256] = "";
    assert_int_equal(cfg_parse_args(&c, 8, argv, other_args, &prompt, why, sizeof why), 0);
    assert_int_equal(c.max_batch, 16);
    assert_int_equal(c.threads, 2);
    assert_string_equal(prompt, "hi");
    char *bad[] = {"prog", "--no-such-thing", "1", NULL};
    assert_int_equal(cfg_parse_args(&c, 3, bad, other_args, &prompt, why, sizeof why), RILL_E_BAD_CONFIG);
    assert_non_null(strstr(why, "unknown option '--no-such-thing'"));
    char *missing[] = {"prog", "--threads", NULL};
    assert_int_equal(cfg_parse_args(&c, 2, missing, NULL, NULL, why, sizeof why), RILL_E_BAD_CONFIG);
    assert_non_null(strstr(why, "needs a value"));
    unlink(path);
}

static void test_config_round_trips_through_child_arguments(void **state)
{
    (void)state;
    struct rill_config a, b;
    cfg_defaults(&a);
    char why[256];
    assert_int_equal(cfg_set(&a, "max_batch", "12", why, sizeof why), 0);
    assert_int_equal(cfg_set(&a, "sampling_rate", "0.25", why, sizeof why), 0);
    assert_int_equal(cfg_set(&a, "api_keys", "k1,k2", why, sizeof why), 0);
    char **argv;
    int argc;
    assert_int_equal(cfg_to_args(&a, &argv, &argc), 0);
    char **full = calloc((size_t)argc + 2, sizeof *full);
    full[0] = "child";
    memcpy(full + 1, argv, (size_t)argc * sizeof *argv);
    cfg_defaults(&b);
    assert_int_equal(cfg_parse_args(&b, argc + 1, full, NULL, NULL, why, sizeof why), 0);
    assert_int_equal(b.max_batch, 12);
    assert_true(b.sampling_rate == 0.25);
    /* Secrets never travel as arguments (the supervisor passes a file). */
    for (int i = 0; i < argc; i++)
        assert_null(strstr(argv[i], "k1"));
    assert_string_equal(b.api_keys, "");
    snprintf(b.api_keys, sizeof b.api_keys, "%s", a.api_keys);
    assert_memory_equal(&a, &b, offsetof(struct rill_config, config_file));
    free(full);
    cfg_free_args(argv, argc);
}

static void test_config_secret_flags_are_blanked_in_argv(void **state)
{
    (void)state;
    struct rill_config c;
    cfg_defaults(&c);
    char a0[] = "rill", a1[] = "--api_keys", a2[] = "sekrit,other", a3[] = "--api_keys=sekrit2", a4[] = "--max_batch",
         a5[] = "8";
    char *argv[] = {a0, a1, a2, a3, a4, a5, NULL};
    char why[256];
    assert_int_equal(cfg_parse_args(&c, 6, argv, NULL, NULL, why, sizeof why), 0);
    assert_string_equal(c.api_keys, "sekrit2");
    assert_string_equal(a2, "************");
    assert_string_equal(a3, "--api_keys=*******");
    assert_string_equal(a5, "8"); /* not a secret: untouched */
    assert_int_equal(c.max_batch, 8);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_defaults_are_the_documented_ones),
        cmocka_unit_test(test_config_file_sets_keys_in_their_sections),
        cmocka_unit_test(test_config_file_errors_name_the_key),
        cmocka_unit_test(test_config_flags_override_the_file_wherever_they_stand),
        cmocka_unit_test(test_config_round_trips_through_child_arguments),
        cmocka_unit_test(test_config_secret_flags_are_blanked_in_argv),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
