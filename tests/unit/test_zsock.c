/* test_zsock.c — ZeroMQ helpers between two real processes: a DEALER in a
 * forked child (with its own context) talks to a ROUTER in the parent over
 * ipc:// in a temporary directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <msgpack.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "err.h"
#include "zsock.h"

#define REPLY_OFFSET 1000000u

/* --- msgpack payloads: {"type": str, "seq": uint} --------------------------------- */

struct packed {
    msgpack_sbuffer sb;
};

static void pack_msg(struct packed *p, const char *type, uint64_t seq)
{
    msgpack_sbuffer_init(&p->sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &p->sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    msgpack_pack_str_with_body(&pk, "type", 4);
    msgpack_pack_str_with_body(&pk, type, strlen(type));
    msgpack_pack_str_with_body(&pk, "seq", 3);
    msgpack_pack_uint64(&pk, seq);
}

static void packed_free(struct packed *p) { msgpack_sbuffer_destroy(&p->sb); }

/* The "seq" of a payload, or -1 if it is not one of ours. */
static int64_t unpack_seq(const void *data, size_t len)
{
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    int64_t seq = -1;
    if (msgpack_unpack_next(&u, data, len, NULL) == MSGPACK_UNPACK_SUCCESS &&
        u.data.type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < u.data.via.map.size; i++) {
            msgpack_object_kv *kv = &u.data.via.map.ptr[i];
            if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == 3 &&
                memcmp(kv->key.via.str.ptr, "seq", 3) == 0 &&
                kv->val.type == MSGPACK_OBJECT_POSITIVE_INTEGER)
                seq = (int64_t)kv->val.via.u64;
        }
    }
    msgpack_unpacked_destroy(&u);
    return seq;
}

static int send_seq(void *dealer, uint64_t seq, int flags)
{
    struct packed p;
    pack_msg(&p, "req", seq);
    int rc = zs_send(dealer, p.sb.data, p.sb.size, flags);
    packed_free(&p);
    return rc;
}

static int reply_seq(void *router, const struct zs_id *to, uint64_t seq, int flags)
{
    struct packed p;
    pack_msg(&p, "rep", seq);
    int rc = zs_router_send(router, to, p.sb.data, p.sb.size, flags);
    packed_free(&p);
    return rc;
}

/* Receive on a DEALER and return the seq, or a negative rill error. */
static int64_t recv_seq(void *dealer, int flags)
{
    zmq_msg_t m;
    int rc = zs_recv(dealer, &m, flags);
    if (rc < 0)
        return rc;
    int64_t seq = unpack_seq(zmq_msg_data(&m), zmq_msg_size(&m));
    zmq_msg_close(&m);
    return seq;
}

/* Receive on a ROUTER and return the seq (or a negative rill error), *from set. */
static int64_t router_recv_seq(void *router, struct zs_id *from, int flags)
{
    zmq_msg_t m;
    int rc = zs_router_recv(router, from, &m, flags);
    if (rc < 0)
        return rc;
    int64_t seq = unpack_seq(zmq_msg_data(&m), zmq_msg_size(&m));
    zmq_msg_close(&m);
    return seq;
}

/* --- children ------------------------------------------------------------------------ */

/* In a child, cmocka's asserts would jump into the parent's copy of the
 * runner: children report by exit status instead. */
#define CCHECK(cond)                                                                     \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "child %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            _exit(3);                                                                    \
        }                                                                                \
    } while (0)

struct child_args {
    const char *endpoint;
    int aux_fd; /* a pipe end for "I am done sending", or -1 */
    int n;
};

typedef int (*child_fn)(const struct child_args *a);

static pid_t spawn(child_fn fn, const struct child_args *a)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(30); /* a wedged child dies rather than hanging the suite */
        _exit(fn(a));
    }
    assert_true(pid > 0);
    return pid;
}

static void wait_ok(pid_t pid)
{
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("child failed: %s %d", WIFEXITED(st) ? "exit" : "signal",
                 WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
}

/* A fresh context and a connected DEALER called `name`, after fork. */
static void child_dealer(const char *endpoint, const char *name, void **ctx, void **dealer)
{
    struct zs_id id;
    CCHECK(zs_ctx_new(ctx) == 0);
    CCHECK(zs_id_from_str(&id, name) == 0);
    CCHECK(zs_dealer(*ctx, &id, false, dealer) == 0);
    CCHECK(zs_connect(*dealer, endpoint) == 0);
}

static void child_done(void **ctx, void **dealer)
{
    zs_close(dealer);
    zs_ctx_term(ctx);
}

/* --- fixture: a ROUTER bound in a temp dir ----------------------------------------- */

struct fx {
    char dir[64];
    char ep[ZS_ENDPOINT_MAX];
    void *ctx;
    void *router;
};

static int fx_setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/rill-zs-XXXXXX");
    if (!mkdtemp(f->dir) || zs_endpoint_ipc(f->ep, sizeof f->ep, f->dir, "r.sock") < 0 ||
        zs_ctx_new(&f->ctx) < 0 || zs_router(f->ctx, &f->router) < 0 ||
        zs_bind(f->router, f->ep) < 0)
        return -1;
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fx *f = *state;
    char path[128];
    zs_close(&f->router);
    zs_ctx_term(&f->ctx);
    static const char *const names[] = {"r.sock", "stale.sock", "nobody.sock"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", f->dir, names[i]);
        unlink(path);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

/* --- request / reply ---------------------------------------------------------------- */

static int child_request_reply(const struct child_args *a)
{
    void *ctx, *d;
    child_dealer(a->endpoint, "child", &ctx, &d);
    for (int i = 0; i < a->n; i++) {
        CCHECK(send_seq(d, (uint64_t)i, 0) == 0);
        CCHECK(recv_seq(d, 0) == (int64_t)i + REPLY_OFFSET);
    }
    child_done(&ctx, &d);
    return 0;
}

static void test_zsock_request_reply_in_order_between_processes(void **state)
{
    struct fx *f = *state;
    const int n = 2000;

    struct stat st;
    assert_int_equal(stat(f->ep + strlen("ipc://"), &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0600);

    struct child_args a = {f->ep, -1, n};
    pid_t pid = spawn(child_request_reply, &a);
    struct zs_id want, from;
    zs_id_from_str(&want, "child");
    for (int i = 0; i < n; i++) {
        assert_int_equal(router_recv_seq(f->router, &from, 0), i);
        assert_true(zs_id_eq(&from, &want));
        assert_int_equal(reply_seq(f->router, &from, (uint64_t)i + REPLY_OFFSET, 0), 0);
    }
    wait_ok(pid);
}

/* --- errors ------------------------------------------------------------------------- */

static void test_zsock_router_send_to_unknown_identity_fails(void **state)
{
    struct fx *f = *state;
    struct zs_id nobody;
    zs_id_from_str(&nobody, "nobody");
    assert_int_equal(reply_seq(f->router, &nobody, 1, 0), RILL_E_PEER_DEAD);
    assert_int_equal(reply_seq(f->router, &nobody, 1, ZS_DONTWAIT), RILL_E_PEER_DEAD);
    /* and the socket is still usable: nothing was left half-sent */
    zmq_msg_t m;
    struct zs_id from;
    assert_int_equal(zs_router_recv(f->router, &from, &m, ZS_DONTWAIT), RILL_E_AGAIN);
    assert_int_equal(reply_seq(f->router, &nobody, 2, ZS_DONTWAIT), RILL_E_PEER_DEAD);
}

static int child_malformed(const struct child_args *a)
{
    void *ctx, *d;
    child_dealer(a->endpoint, "child", &ctx, &d);
    /* two frames from a DEALER: the ROUTER sees three */
    CCHECK(zmq_send(d, "a", 1, ZMQ_SNDMORE) == 1);
    CCHECK(zmq_send(d, "b", 1, 0) == 1);
    CCHECK(send_seq(d, 7, 0) == 0);
    /* and the parent sends us a two-frame message, then a good one */
    zmq_msg_t m;
    CCHECK(zs_recv(d, &m, 0) == RILL_E_BAD_FORMAT);
    CCHECK(recv_seq(d, 0) == 8);
    CCHECK(recv_seq(d, ZS_DONTWAIT) == RILL_E_AGAIN);
    CCHECK(send_seq(d, 9, 0) == 0);
    child_done(&ctx, &d);
    return 0;
}

static void test_zsock_malformed_multipart_is_consumed_and_reported(void **state)
{
    struct fx *f = *state;
    struct child_args a = {f->ep, -1, 0};
    pid_t pid = spawn(child_malformed, &a);

    struct zs_id from, want;
    zmq_msg_t m;
    zs_id_from_str(&want, "child");
    assert_int_equal(zs_router_recv(f->router, &from, &m, 0), RILL_E_BAD_FORMAT);
    assert_true(zs_id_eq(&from, &want)); /* known, so a bad_request can be answered */
    memset(&from, 0, sizeof from);
    assert_int_equal(router_recv_seq(f->router, &from, 0), 7);
    assert_true(zs_id_eq(&from, &want));

    assert_int_equal(zmq_send(f->router, from.bytes, from.len, ZMQ_SNDMORE), from.len);
    assert_int_equal(zmq_send(f->router, "x", 1, ZMQ_SNDMORE), 1);
    assert_int_equal(zmq_send(f->router, "y", 1, 0), 1);
    assert_int_equal(reply_seq(f->router, &from, 8, 0), 0);
    assert_int_equal(router_recv_seq(f->router, &from, 0), 9);
    wait_ok(pid);
}

/* --- the ZMQ_FD edge rule ----------------------------------------------------------- */

static int child_burst(const struct child_args *a)
{
    void *ctx, *d;
    child_dealer(a->endpoint, "burst", &ctx, &d);
    for (int i = 0; i < a->n; i++)
        CCHECK(send_seq(d, (uint64_t)i, 0) == 0);
    CCHECK(write(a->aux_fd, "s", 1) == 1);
    for (int i = 0; i < a->n; i++)
        CCHECK(recv_seq(d, 0) == (int64_t)i + REPLY_OFFSET);
    child_done(&ctx, &d);
    return 0;
}

static void test_zsock_fd_edge_rule_drains_a_burst_with_few_wakeups(void **state)
{
    struct fx *f = *state;
    const int n = 1000;
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    struct child_args a = {f->ep, pfd[1], n};
    pid_t pid = spawn(child_burst, &a);
    close(pfd[1]);
    char c;
    assert_int_equal(read(pfd[0], &c, 1), 1); /* the child has sent them all */
    close(pfd[0]);

    int fd;
    assert_int_equal(zs_fd(f->router, &fd), 0);
    int got = 0, wakeups = 0;
    while (got < n) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, 5000);
        if (r == 0)
            fail_msg("poll timed out with %d of %d received: an edge was lost", got, n);
        assert_true(r > 0);
        wakeups++;
        /* the rule: drain while ZMQ_EVENTS says POLLIN, re-checking after
         * every send (the reply below) */
        while (zs_readable(f->router)) {
            struct zs_id from;
            int64_t seq = router_recv_seq(f->router, &from, ZS_DONTWAIT);
            assert_int_equal(seq, got);
            assert_int_equal(reply_seq(f->router, &from, (uint64_t)seq + REPLY_OFFSET, ZS_DONTWAIT), 0);
            got++;
        }
    }
    print_message("%d messages in %d poll wake-ups\n", n, wakeups);
    assert_true(wakeups <= n / 20);

    /* idle: the fd must not stay readable (a busy loop) once drained */
    int idle = 0;
    uint64_t t0 = clock_ns();
    while (clock_ms_since(t0) < 300) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 50) > 0) {
            idle++;
            zs_readable(f->router); /* reading ZMQ_EVENTS re-arms the fd */
        }
    }
    print_message("%d wake-ups while idle for 300 ms\n", idle);
    assert_true(idle <= 10);
    wait_ok(pid);
}

/* --- dead peers ----------------------------------------------------------------------- */

static int child_doomed(const struct child_args *a)
{
    void *ctx, *d;
    child_dealer(a->endpoint, "doomed", &ctx, &d);
    CCHECK(send_seq(d, 1, 0) == 0);
    for (;;)
        pause(); /* never reads: what the parent sends piles up */
    return 0;
}

static void test_zsock_close_with_dead_peer_does_not_hang(void **state)
{
    char dir[64], ep[ZS_ENDPOINT_MAX], ep_none[ZS_ENDPOINT_MAX];
    void *ctx, *router, *dealer;
    snprintf(dir, sizeof dir, "/tmp/rill-zs-XXXXXX");
    assert_non_null(mkdtemp(dir));
    assert_int_equal(zs_endpoint_ipc(ep, sizeof ep, dir, "r.sock"), 0);
    assert_int_equal(zs_endpoint_ipc(ep_none, sizeof ep_none, dir, "nobody.sock"), 0);
    assert_int_equal(zs_ctx_new(&ctx), 0);
    assert_int_equal(zs_router(ctx, &router), 0);
    assert_int_equal(zs_bind(router, ep), 0);

    struct child_args a = {ep, -1, 0};
    pid_t pid = spawn(child_doomed, &a);
    struct zs_id peer;
    assert_int_equal(router_recv_seq(router, &peer, 0), 1);

    /* fill the way to the child until the HWM pushes back */
    static char blob[1024];
    int queued = 0, rc;
    while ((rc = zs_router_send(router, &peer, blob, sizeof blob, ZS_DONTWAIT)) == 0 &&
           queued < 100000)
        queued++;
    assert_int_equal(rc, RILL_E_AGAIN);
    print_message("%d messages queued to the child when its HWM pushed back\n", queued);

    /* and a DEALER with messages queued for a peer that never came */
    assert_int_equal(zs_dealer(ctx, NULL, false, &dealer), 0);
    assert_int_equal(zs_connect(dealer, ep_none), 0);
    for (int i = 0; i < 100; i++)
        assert_int_equal(send_seq(dealer, (uint64_t)i, ZS_DONTWAIT), 0);

    assert_int_equal(kill(pid, SIGKILL), 0);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);

    /* the ROUTER learns the peer is gone: sends fail, never pile up.  Like an
     * event loop, keep reading: libzmq takes a disconnected peer out of the
     * ROUTER when a read reaches the end of that peer's stream. */
    uint64_t t0 = clock_ns();
    for (;;) {
        struct zs_id from;
        zmq_msg_t m;
        assert_int_equal(zs_router_recv(router, &from, &m, ZS_DONTWAIT), RILL_E_AGAIN);
        rc = zs_router_send(router, &peer, blob, sizeof blob, ZS_DONTWAIT);
        if (rc == RILL_E_PEER_DEAD || clock_ms_since(t0) > 1000)
            break;
        assert_int_equal(rc, RILL_E_AGAIN);
        usleep(1000);
    }
    assert_int_equal(rc, RILL_E_PEER_DEAD);
    print_message("the dead peer was noticed after %.2f ms\n", clock_ms_since(t0));

    t0 = clock_ns();
    unsigned left = alarm(3); /* a hang here (linger) is reported, not waited out */
    zs_close(&dealer);
    zs_close(&router);
    zs_ctx_term(&ctx);
    double ms = clock_ms_since(t0);
    alarm(left);
    print_message("close + term with queued messages: %.2f ms\n", ms);
    assert_true(ms < 1000);
    assert_null(ctx);
    unlink(ep + strlen("ipc://"));
    rmdir(dir);
}

/* --- endpoints --------------------------------------------------------------------------- */

static void test_zsock_bind_refuses_a_live_endpoint_and_replaces_a_stale_one(void **state)
{
    struct fx *f = *state;
    void *ctx2, *r2;
    assert_int_equal(zs_ctx_new(&ctx2), 0);
    assert_int_equal(zs_router(ctx2, &r2), 0);
    assert_int_equal(zs_bind(r2, f->ep), RILL_E_EXISTS); /* f->router lives there */

    /* a socket file whose owner died without unlinking it */
    char ep[ZS_ENDPOINT_MAX];
    assert_int_equal(zs_endpoint_ipc(ep, sizeof ep, f->dir, "stale.sock"), 0);
    const char *path = ep + strlen("ipc://");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    assert_true(strlen(path) < sizeof sa.sun_path);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(s >= 0);
    assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(chmod(path, 0666), 0);
    close(s);
    assert_int_equal(zs_bind(r2, ep), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    char last[ZS_ENDPOINT_MAX];
    assert_int_equal(zs_last_endpoint(r2, last, sizeof last), 0);
    assert_string_equal(last, ep);

    zs_close(&r2);
    zs_ctx_term(&ctx2);
}

static void test_zsock_endpoint_helpers_check_lengths(void **state)
{
    char buf[ZS_ENDPOINT_MAX], dir[200];
    assert_int_equal(zs_endpoint_ipc(buf, sizeof buf, "/run/rill", "w0.sock"), 0);
    assert_string_equal(buf, "ipc:///run/rill/w0.sock");
    assert_int_equal(zs_endpoint_ipc(buf, 10, "/run/rill", "w0.sock"), RILL_E_TOO_LARGE);
    memset(dir, 'd', sizeof dir - 1);
    dir[0] = '/';
    dir[sizeof dir - 1] = '\0';
    assert_int_equal(zs_endpoint_ipc(buf, sizeof buf, dir, "w0.sock"), RILL_E_BAD_CONFIG);

    void *ctx, *r;
    assert_int_equal(zs_ctx_new(&ctx), 0);
    assert_int_equal(zs_router(ctx, &r), 0);
    char longep[300];
    snprintf(longep, sizeof longep, "ipc://%s/x.sock", dir);
    assert_int_equal(zs_bind(r, longep), RILL_E_BAD_CONFIG);
    assert_int_equal(zs_bind(r, "nonsense://x"), RILL_E_BAD_CONFIG);
    assert_int_equal(zs_bind(r, "tcp://127.0.0.1:*"), 0);
    assert_int_equal(zs_last_endpoint(r, buf, sizeof buf), 0);
    assert_true(strncmp(buf, "tcp://127.0.0.1:", 16) == 0);
    zs_close(&r);
    zs_ctx_term(&ctx);
}

/* --- poll, immediate, identities -------------------------------------------------------- */

static void test_zsock_poll_watches_sockets_and_fds(void **state)
{
    struct fx *f = *state;
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    struct zs_poll p;
    zs_poll_init(&p);
    int ir = zs_poll_add(&p, f->router, -1, ZMQ_POLLIN);
    int ip = zs_poll_add(&p, NULL, pfd[0], ZMQ_POLLIN);
    assert_int_equal(ir, 0);
    assert_int_equal(ip, 1);

    uint64_t t0 = clock_ns();
    assert_int_equal(zs_poll_wait(&p, 50), 0);
    assert_true(clock_ms_since(t0) >= 40);

    assert_int_equal(write(pfd[1], "x", 1), 1);
    assert_int_equal(zs_poll_wait(&p, 1000), 1);
    assert_true(zs_poll_revents(&p, ip) & ZMQ_POLLIN);
    assert_false(zs_poll_revents(&p, ir) & ZMQ_POLLIN);

    void *d;
    struct zs_id id;
    zs_id_from_str(&id, "local");
    assert_int_equal(zs_dealer(f->ctx, &id, true, &d), 0);
    assert_int_equal(zs_connect(d, f->ep), 0);
    assert_int_equal(send_seq(d, 42, 0), 0); /* blocks until connected (IMMEDIATE) */
    char c;
    assert_int_equal(read(pfd[0], &c, 1), 1);
    assert_int_equal(zs_poll_wait(&p, 2000), 1);
    assert_true(zs_poll_revents(&p, ir) & ZMQ_POLLIN);
    struct zs_id from;
    assert_int_equal(router_recv_seq(f->router, &from, ZS_DONTWAIT), 42);
    assert_true(zs_id_eq(&from, &id));

    for (int i = 2; i < ZS_POLL_MAX; i++)
        assert_int_equal(zs_poll_add(&p, NULL, pfd[0], ZMQ_POLLIN), i);
    assert_int_equal(zs_poll_add(&p, NULL, pfd[0], ZMQ_POLLIN), RILL_E_FULL);
    zs_close(&d);
    close(pfd[0]);
    close(pfd[1]);
}

static void test_zsock_immediate_dealer_without_peer_says_again(void **state)
{
    struct fx *f = *state;
    char ep[ZS_ENDPOINT_MAX];
    void *d;
    assert_int_equal(zs_endpoint_ipc(ep, sizeof ep, f->dir, "nobody.sock"), 0);
    assert_int_equal(zs_dealer(f->ctx, NULL, true, &d), 0);
    assert_int_equal(zs_connect(d, ep), 0);
    assert_int_equal(send_seq(d, 1, ZS_DONTWAIT), RILL_E_AGAIN);
    assert_false(zs_writable(d));
    assert_int_equal(recv_seq(d, ZS_DONTWAIT), RILL_E_AGAIN);
    zs_close(&d);
    assert_null(d);
}

static void test_zsock_identities(void **state)
{
    struct fx *f = *state;
    struct zs_id a, b;
    char buf[ZS_ID_STR_MAX];
    assert_int_equal(zs_id_from_str(&a, "w0"), 0);
    assert_int_equal(zs_id_from_str(&b, "w0"), 0);
    assert_true(zs_id_eq(&a, &b));
    assert_int_equal(zs_id_from_str(&b, "w1"), 0);
    assert_false(zs_id_eq(&a, &b));
    assert_string_equal(zs_id_str(&a, buf, sizeof buf), "w0");

    uint8_t raw[] = {0x00, 0x6b, 0x8b, 0x45, 0x67};
    assert_int_equal(zs_id_set(&b, raw, sizeof raw), 0);
    assert_string_equal(zs_id_str(&b, buf, sizeof buf), "0x006b8b4567");

    uint8_t big[256];
    memset(big, 0xff, sizeof big);
    assert_int_equal(zs_id_set(&b, big, 256), RILL_E_TOO_LARGE);
    assert_int_equal(zs_id_set(&b, big, 255), 0);
    assert_true(strlen(zs_id_str(&b, buf, sizeof buf)) == 2 + 510);
    assert_int_equal(zs_id_set(&b, big, 0), RILL_E_BAD_CONFIG);

    /* zmq keeps ids starting with a zero byte for the ones it makes up */
    void *d = NULL;
    assert_int_equal(zs_id_set(&b, raw, sizeof raw), 0);
    assert_int_equal(zs_dealer(f->ctx, &b, false, &d), RILL_E_BAD_CONFIG);
    assert_null(d);
}

static void on_alarm(int sig)
{
    static const char msg[] = "test_zsock: timed out (a hang: linger, a lost edge, a lost peer)\n";
    if (write(2, msg, sizeof msg - 1) < 0) { /* nothing better to do */ }
    _exit(2);
}

int main(void)
{
    signal(SIGALRM, on_alarm);
    alarm(120); /* a hang is a failure, not a stuck CI job */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_zsock_request_reply_in_order_between_processes, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_zsock_router_send_to_unknown_identity_fails, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_zsock_malformed_multipart_is_consumed_and_reported, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_zsock_fd_edge_rule_drains_a_burst_with_few_wakeups, fx_setup, fx_teardown),
        cmocka_unit_test(test_zsock_close_with_dead_peer_does_not_hang),
        cmocka_unit_test_setup_teardown(test_zsock_bind_refuses_a_live_endpoint_and_replaces_a_stale_one, fx_setup, fx_teardown),
        cmocka_unit_test(test_zsock_endpoint_helpers_check_lengths),
        cmocka_unit_test_setup_teardown(test_zsock_poll_watches_sockets_and_fds, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_zsock_immediate_dealer_without_peer_says_again, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_zsock_identities, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
