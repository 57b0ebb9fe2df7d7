/* test_wsconf.c — the pure parts of the gateway's RFC 6455 checks: Close
 * payload verdicts, UTF-8 across fragments, and the frame-header tracker
 * (bad frames removed, headers split anywhere held back and completed). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/wsconf.h"

/* --- Close payloads ------------------------------------------------------------------------- */

static int verdict(unsigned code, const char *reason)
{
    uint8_t p[128] = {(uint8_t)(code >> 8), (uint8_t)code};
    size_t n = strlen(reason);
    memcpy(p + 2, reason, n);
    return wsconf_close_verdict(p, 2 + n);
}

static void test_close_verdict_follows_the_code_ranges(void **state)
{
    (void)state;
    const unsigned ok[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999};
    const unsigned bad[] = {0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 10000, 65535};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        assert_int_equal(verdict(ok[i], "fine"), 0);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(verdict(bad[i], ""), 1002);
    assert_int_equal(wsconf_close_verdict(NULL, 0), 0);
    const uint8_t one[] = {0x03};
    assert_int_equal(wsconf_close_verdict(one, 1), 1002);
}

static void test_close_reason_must_be_utf8(void **state)
{
    (void)state;
    assert_int_equal(verdict(1000, "bye \xc3\xa9 \xf0\x9d\x84\x9e"), 0);
    assert_int_equal(verdict(1000, "\xff"), 1007);
    assert_int_equal(verdict(1000, "cut \xc3"), 1007);
    assert_int_equal(verdict(1000, "\xed\xa0\x80"), 1007); /* a surrogate */
    assert_int_equal(verdict(1000, "\xc0\xaf"), 1007);     /* overlong */
    assert_int_equal(verdict(5000, "\xff"), 1002);         /* the code is looked at first */
}

/* --- UTF-8 across pieces -------------------------------------------------------------------- */

static bool feed_split(const char *s, size_t a, size_t b)
{
    struct wsconf_utf8 u = {0};
    size_t n = strlen(s);
    const uint8_t *p = (const uint8_t *)s;
    return wsconf_utf8_feed(&u, p, a, false) && wsconf_utf8_feed(&u, p + a, b - a, false) &&
           wsconf_utf8_feed(&u, p + b, n - b, true);
}

static void test_utf8_split_anywhere_is_accepted(void **state)
{
    (void)state;
    const char *s = "a\xc3\xa9\xe2\x82\xac\xf0\x9d\x84\x9e z";
    size_t n = strlen(s);
    for (size_t a = 0; a <= n; a++)
        for (size_t b = a; b <= n; b++)
            assert_true(feed_split(s, a, b));
}

static void test_utf8_errors_are_found_whatever_the_split(void **state)
{
    (void)state;
    const char *bad[] = {"ab\xff", "\xe2\x82\x28z", "\xed\xa0\x80", "\xc0\xaf", "\xf4\x90\x80\x80", "ok\xe2\x82"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        size_t n = strlen(bad[k]);
        for (size_t a = 0; a <= n; a++)
            for (size_t b = a; b <= n; b++)
                assert_false(feed_split(bad[k], a, b));
    }
    /* An unfinished character is fine until the last piece. */
    struct wsconf_utf8 u = {0};
    assert_true(wsconf_utf8_feed(&u, (const uint8_t *)"\xe2", 1, false));
    assert_true(wsconf_utf8_feed(&u, NULL, 0, false));
    assert_false(wsconf_utf8_feed(&u, NULL, 0, true));
}

/* --- frames ---------------------------------------------------------------------------------- */

static size_t mkframe(uint8_t *out, int fin, int rsv, int op, bool mask, const uint8_t *payload, uint64_t n)
{
    size_t k = 0;
    out[k++] = (uint8_t)((fin ? 0x80 : 0) | rsv << 4 | op);
    uint8_t m = mask ? 0x80 : 0;
    if (n < 126) {
        out[k++] = (uint8_t)(m | n);
    } else if (n < 65536) {
        out[k++] = m | 126;
        out[k++] = (uint8_t)(n >> 8);
        out[k++] = (uint8_t)n;
    } else {
        out[k++] = m | 127;
        for (int i = 7; i >= 0; i--)
            out[k++] = (uint8_t)(n >> (8 * i));
    }
    static const uint8_t key[4] = {0x11, 0x22, 0x33, 0x44};
    if (mask) {
        memcpy(out + k, key, 4);
        k += 4;
    }
    for (uint64_t i = 0; payload && i < n; i++)
        out[k++] = payload[i] ^ (mask ? key[i % 4] : 0);
    return k;
}

/* Feed `in` in pieces of `step` bytes the way recv() does: held bytes go
 * in front of the next piece.  Returns the bytes that went on. */
static size_t stream(struct wsconf_frames *f, const uint8_t *in, size_t n, size_t step, bool enforce, uint8_t *out)
{
    uint8_t buf[70000];
    size_t held = 0, got = 0;
    for (size_t at = 0; at < n; at += step) {
        size_t k = n - at < step ? n - at : step;
        memcpy(buf + held, in + at, k);
        size_t len = held + k, h;
        size_t o = wsconf_frames_feed(f, buf, len, enforce, &h);
        memcpy(out + got, buf, o);
        got += o;
        memmove(buf, buf + len - h, h);
        held = h;
        assert_true(h < WSCONF_HDR_MAX);
    }
    return got;
}

static void test_valid_frames_go_on_unchanged_in_pieces_of_any_size(void **state)
{
    (void)state;
    static uint8_t in[70000 + 200], out[sizeof in];
    static uint8_t big[66000];
    memset(big, 'b', sizeof big);
    size_t n = 0;
    n += mkframe(in + n, 1, 0, 0x1, true, (const uint8_t *)"{\"type\":\"hello\"}", 16);
    n += mkframe(in + n, 0, 0, 0x2, true, NULL, 0);
    n += mkframe(in + n, 0, 0, 0x0, true, big, 300);          /* 16-bit length */
    n += mkframe(in + n, 1, 0, 0x9, true, (const uint8_t *)"ping", 4);
    n += mkframe(in + n, 1, 0, 0x0, true, big, sizeof big);   /* 64-bit length */
    n += mkframe(in + n, 1, 0, 0x8, true, (const uint8_t *)"\x03\xe8", 2);
    const size_t steps[] = {1, 2, 3, 5, 7, 13, 14, 15, 100, 4096, sizeof in};
    for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
        struct wsconf_frames f = {0};
        memset(out, 0, sizeof out);
        size_t got = stream(&f, in, n, steps[s], true, out);
        assert_int_equal(f.bad, 0);
        assert_int_equal(got, n);
        assert_memory_equal(out, in, n);
    }
}

static void test_a_bad_frame_and_what_follows_are_removed_but_the_close(void **state)
{
    (void)state;
    uint8_t in[600], out[600];
    uint8_t pay[200];
    memset(pay, 'p', sizeof pay);
    size_t n = 0, good = mkframe(in, 1, 0, 0x1, true, pay, 20);
    n = good;
    n += mkframe(in + n, 1, 0, 0x1, false, pay, 30); /* not masked */
    n += mkframe(in + n, 1, 0, 0x2, true, pay, 40);  /* fine, but after it */
    size_t close_at = n;
    n += mkframe(in + n, 1, 0, 0x8, true, (const uint8_t *)"\x03\xe8", 2);
    for (size_t step = 1; step <= n; step++) {
        struct wsconf_frames f = {0};
        size_t got = stream(&f, in, n, step, true, out);
        assert_int_equal(f.bad, 1002);
        assert_string_equal(f.why, "client frame not masked");
        assert_int_equal(got, good + (n - close_at));
        assert_memory_equal(out, in, good);
        assert_memory_equal(out + good, in + close_at, n - close_at);
    }
}

static void test_header_rules(void **state)
{
    (void)state;
    uint8_t pay[200] = {0}, in[300], out[300];
    struct {
        int rsv, op, fin;
        bool mask;
        size_t n;
        bool rsv1_ok;
        int want;
    } cases[] = {
        {0, 0x1, 1, true, 10, false, 0},
        {0, 0x1, 1, false, 10, false, 1002},  /* unmasked */
        {0, 0x9, 1, true, 125, false, 0},     /* the largest control frame */
        {0, 0x9, 1, true, 126, false, 1002},
        {0, 0xA, 1, true, 200, false, 1002},
        {0, 0x8, 1, true, 1, false, 1002},    /* a 1-byte Close body */
        {0, 0x8, 1, true, 0, false, 0},
        {4, 0x1, 1, true, 10, false, 1002},   /* RSV1 without permessage-deflate */
        {4, 0x1, 1, true, 10, true, 0},
        {4, 0x2, 0, true, 10, true, 0},
        {4, 0x0, 1, true, 10, true, 1002},    /* RSV1 on a continuation */
        {4, 0x9, 1, true, 1, true, 1002},     /* RSV1 on a control frame */
        {2, 0x1, 1, true, 10, true, 1002},
        {1, 0x1, 1, true, 10, false, 1002},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct wsconf_frames f = {.rsv1_ok = cases[i].rsv1_ok};
        size_t n = mkframe(in, cases[i].fin, cases[i].rsv, cases[i].op, cases[i].mask, pay, cases[i].n);
        size_t held;
        memcpy(out, in, n);
        size_t got = wsconf_frames_feed(&f, out, n, true, &held);
        assert_int_equal(f.bad, cases[i].want);
        assert_int_equal(got, cases[i].want ? 0 : n);
        assert_int_equal(held, 0);
    }
    /* A 64-bit length must have its top bit clear. */
    struct wsconf_frames f = {0};
    uint8_t h[14] = {0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4};
    size_t held;
    assert_int_equal(wsconf_frames_feed(&f, h, sizeof h, true, &held), 0);
    assert_int_equal(f.bad, 1002);
}

static void test_observing_passes_everything_and_remembers(void **state)
{
    (void)state;
    uint8_t in[100], buf[100];
    size_t n = mkframe(in, 1, 0, 0x1, false, (const uint8_t *)"hi", 2);
    n += mkframe(in + n, 1, 0, 0x1, true, (const uint8_t *)"there", 5);
    for (size_t cut = 1; cut < n; cut++) {
        struct wsconf_frames f = {0};
        size_t held;
        memcpy(buf, in, n);
        assert_int_equal(wsconf_frames_feed(&f, buf, cut, false, &held), cut);
        assert_int_equal(held, 0);
        /* Enforcing from here on: a header begun while observing cannot be held. */
        size_t got = wsconf_frames_feed(&f, buf + cut, n - cut, true, &held);
        assert_int_equal(held, 0);
        assert_int_equal(f.bad, 1002);
        /* The rest of a frame whose header went on while observing goes on
         * too (bytes 0-3: the bad frame; 4-9: the next header; 10-14: its
         * payload); frames after the bad one are removed. */
        assert_int_equal(got, cut >= 2 && cut < 4 ? 4 - cut : cut >= 10 ? n - cut : 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_close_verdict_follows_the_code_ranges),
        cmocka_unit_test(test_close_reason_must_be_utf8),
        cmocka_unit_test(test_utf8_split_anywhere_is_accepted),
        cmocka_unit_test(test_utf8_errors_are_found_whatever_the_split),
        cmocka_unit_test(test_valid_frames_go_on_unchanged_in_pieces_of_any_size),
        cmocka_unit_test(test_a_bad_frame_and_what_follows_are_removed_but_the_close),
        cmocka_unit_test(test_header_rules),
        cmocka_unit_test(test_observing_passes_everything_and_remembers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
