/* workers.c — the gateway's view of the workers: for each, its token ring
 * (read by the service thread, watched by a reader thread that sleeps on the
 * ring's futex) and a ZeroMQ DEALER to its request socket, whose ZMQ_FD is
 * adopted into the lws loop (as a dup(): lws closes what it adopts).
 *
 * Workers come from the supervisor's `workers` messages, or, without a
 * supervisor, from worker_list ("endpoint@ring,..."), re-opened when a
 * worker comes back with a new ring epoch.
 *
 * Why a reader thread per ring and not an adopted fd: a futex has no fd.
 * The thread costs nothing while the ring is quiet (it sleeps in the kernel)
 * and wakes the service loop with lws_cancel_service() at most once per
 * batch of records (the `pending` flag dedups wake-ups).
 */
#include "gw.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/log.h"
#include "common/plane.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define READER_TICK_MS 100

struct reader_arg {
    struct gw *g;
    struct gw_worker *w;
};

static void notify(struct gw *g, struct gw_worker *w)
{
    if (!atomic_exchange(&w->pending, true))
        lws_cancel_service(g->ctx);
}

static void *reader_main(void *a)
{
    struct reader_arg *ra = a;
    struct gw *g = ra->g;
    struct gw_worker *w = ra->w;
    free(ra);
    uint64_t seen = ring_write_index(w->ring);
    notify(g, w); /* anything published before we started */
    while (!atomic_load(&w->reader_stop)) {
        ring_wait(w->ring, seen, READER_TICK_MS);
        uint64_t idx = ring_write_index(w->ring);
        if (idx != seen) {
            seen = idx;
            notify(g, w);
        } else if (!ring_producer_alive(w->ring)) {
            atomic_store(&w->dead, true);
            notify(g, w);
            break;
        }
    }
    return NULL;
}

/* --- one worker --------------------------------------------------------------------------- */

static void worker_down(struct gw *g, struct gw_worker *w, const char *why)
{
    if (!w->up)
        return;
    w->up = false;
    if (w->reader_running) {
        atomic_store(&w->reader_stop, true);
        ring_wake_consumer(w->ring);
        pthread_join(w->reader, NULL);
        w->reader_running = false;
    }
    /* Whatever the worker published before it went is still good. */
    workers_poll_rings(g);
    session_worker_lost(g, w->idx);
    if (w->zwsi) {
        lws_set_opaque_user_data(w->zwsi, NULL);
        lws_set_timeout(w->zwsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        w->zwsi = NULL;
    }
    zs_close(&w->dealer);
    ring_close(w->ring, false);
    w->ring = NULL;
    w->inflight = 0;
    rlog_warn("worker %s is down: %s", w->id, why);
}

static int adopt_fd(struct gw *g, void *sock, void *user, struct lws **out)
{
    int fd;
    if (zs_fd(sock, &fd))
        return RILL_E_IO;
    lws_sock_file_fd_type u;
    u.filefd = dup(fd);
    if (u.filefd < 0)
        return RILL_E_IO;
    struct lws *wsi = lws_adopt_descriptor_vhost(g->vh_internal, LWS_ADOPT_RAW_FILE_DESC, u, GW_INTERNAL_PROTOCOL, NULL);
    if (!wsi)
        return RILL_E_IO; /* lws closed the dup */
    lws_set_opaque_user_data(wsi, user);
    *out = wsi;
    return 0;
}

static int worker_up(struct gw *g, struct gw_worker *w)
{
    char why[160] = "";
    int rc = ring_open(w->ring_name, &w->ring, why, sizeof why);
    if (rc) {
        rlog_debug("worker %s: ring %s not ready: %s", w->id, w->ring_name, why);
        return rc;
    }
    if (!ring_producer_alive(w->ring)) {
        ring_close(w->ring, false);
        w->ring = NULL;
        return RILL_E_PEER_DEAD;
    }
    w->epoch = ring_epoch(w->ring);
    struct zs_id id;
    zs_id_from_str(&id, "g0");
    if ((rc = zs_dealer(g->zctx, &id, false, &w->dealer)) || (rc = zs_connect(w->dealer, w->endpoint)) ||
        (rc = adopt_fd(g, w->dealer, w, &w->zwsi))) {
        rlog_error("worker %s: cannot connect to %s: %s", w->id, w->endpoint, rill_err_name(rc));
        zs_close(&w->dealer);
        ring_close(w->ring, false);
        w->ring = NULL;
        return rc;
    }
    atomic_store(&w->reader_stop, false);
    atomic_store(&w->dead, false);
    atomic_store(&w->pending, false);
    struct reader_arg *ra = malloc(sizeof *ra);
    if (ra) {
        ra->g = g;
        ra->w = w;
    }
    if (!ra || pthread_create(&w->reader, NULL, reader_main, ra) != 0) {
        free(ra);
        lws_set_timeout(w->zwsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        w->zwsi = NULL;
        zs_close(&w->dealer);
        ring_close(w->ring, false);
        w->ring = NULL;
        return RILL_E_NOMEM;
    }
    w->reader_running = true;
    w->up = true;
    w->draining = false;
    w->inflight = 0;
    /* Say who we are: a cancel of id <epoch:0> (never a real request) lets
     * the worker drop what a previous gateway process left running. */
    struct proto_msg hi = {.type = PROTO_CANCEL};
    hi.u.cancel.id = g->next_req_id & 0xffffffff00000000ull;
    plane_send(w->dealer, NULL, &hi);
    rlog_info("worker %s is up: %s, ring %s (epoch %016llx)", w->id, w->endpoint, w->ring_name,
              (unsigned long long)w->epoch);
    return 0;
}

static struct gw_worker *worker_slot(struct gw *g, const char *id)
{
    for (int i = 0; i < g->n_workers; i++)
        if (g->workers[i].in_use && !strcmp(g->workers[i].id, id))
            return &g->workers[i];
    for (int i = 0; i < GW_MAX_WORKERS; i++)
        if (!g->workers[i].in_use) {
            struct gw_worker *w = &g->workers[i];
            memset(w, 0, sizeof *w);
            w->idx = i;
            w->in_use = true;
            snprintf(w->id, sizeof w->id, "%s", id);
            if (i >= g->n_workers)
                g->n_workers = i + 1;
            return w;
        }
    return NULL;
}

/* --- the supervisor's view ------------------------------------------------------------------------ */

static void send_heartbeat(struct gw *g);

static void on_workers_msg(struct gw *g, const struct proto_workers *ws)
{
    for (int i = 0; i < g->n_workers; i++) {
        struct gw_worker *w = &g->workers[i];
        if (!w->in_use)
            continue;
        /* A draining worker is alive and finishing what it runs: its ring
         * stays read until it exits, it only takes nothing new. */
        bool listed_ready = false, listed_draining = false;
        for (int k = 0; k < ws->n_workers; k++)
            if (!strcmp(ws->workers[k].id, w->id) && ws->workers[k].epoch == w->epoch) {
                listed_ready |= ws->workers[k].state == PROTO_WSTATE_READY;
                listed_draining |= ws->workers[k].state == PROTO_WSTATE_DRAINING;
            }
        if (w->up && listed_draining && !w->draining) {
            w->draining = true;
            rlog_info("worker %s is draining: no new requests go to it", w->id);
        }
        w->failed = false;
        for (int k = 0; k < ws->n_workers; k++)
            if (!strcmp(ws->workers[k].id, w->id) && ws->workers[k].state == PROTO_WSTATE_FAILED)
                w->failed = true;
        if (w->up && !listed_ready && !listed_draining)
            worker_down(g, w, "the supervisor no longer lists it as ready");
    }
    for (int k = 0; k < ws->n_workers; k++) {
        const struct proto_worker_info *in = &ws->workers[k];
        if (in->state != PROTO_WSTATE_READY)
            continue;
        struct gw_worker *w = worker_slot(g, in->id);
        if (!w || w->up)
            continue;
        snprintf(w->ring_name, sizeof w->ring_name, "%s", in->ring);
        snprintf(w->endpoint, sizeof w->endpoint, "%s", in->endpoint);
        worker_up(g, w);
    }
    send_heartbeat(g); /* the supervisor learns at once what we can route to */
}

static void on_control_msg(struct gw *g, struct proto_msg *m)
{
    switch (m->type) {
    case PROTO_WORKERS:
        on_workers_msg(g, &m->u.workers);
        break;
    case PROTO_DRAIN:
        gw_begin_drain(g, "the supervisor asked");
        break;
    case PROTO_STATS: {
        /* Take the decoded buffers over: no copy. */
        free(g->sup_prom);
        free(g->sup_json);
        g->sup_prom = (char *)m->u.stats.prom.p;
        g->sup_prom_len = m->u.stats.prom.len;
        g->sup_json = (char *)m->u.stats.json.p;
        g->sup_json_len = m->u.stats.json.len;
        m->u.stats.prom.p = m->u.stats.json.p = NULL;
        g->sup_stats_ns = clock_ns();
        break;
    }
    case PROTO_SHUTDOWN:
        g->shutting_down = true;
        g->stop = true;
        lws_cancel_service(g->ctx);
        break;
    default:
        break;
    }
}

/* --- service-thread entry points ------------------------------------------------------------------ */

void workers_on_zmq(struct gw *g, struct lws *wsi)
{
    struct gw_worker *w = lws_get_opaque_user_data(wsi);
    void *sock = w ? w->dealer : g->control;
    if (!sock || (wsi != g->control_wsi && !w))
        return;
    struct proto_msg m;
    char why[200];
    int rc;
    while (zs_readable(sock)) {
        rc = plane_recv(sock, NULL, &m, why, sizeof why);
        if (rc == RILL_E_AGAIN)
            break;
        if (rc) {
            rlog_warn("bad message from %s: %s", w ? w->id : "the supervisor", why);
            continue;
        }
        if (w)
            session_on_worker_reply(g, w->idx, &m);
        else
            on_control_msg(g, &m);
        proto_msg_free(&m);
        if (w && !w->up)
            break;
    }
}

void workers_poll_rings(struct gw *g)
{
    uint64_t now = clock_ns();
    for (int i = 0; i < g->n_workers; i++) {
        struct gw_worker *w = &g->workers[i];
        if (!w->in_use || !w->ring)
            continue;
        atomic_store(&w->pending, false);
        const void *d;
        uint32_t len, kind;
        int rc;
        while ((rc = ring_next(w->ring, &d, &len, &kind)) == 0) {
            if (kind == PROTO_MSG_KIND) {
                struct proto_msg m;
                char why[160];
                if (proto_decode(d, len, &m, why, sizeof why) != 0) {
                    rlog_warn("worker %s: bad message record: %s", w->id, why);
                    continue;
                }
                session_on_worker_reply(g, w->idx, &m);
                proto_msg_free(&m);
                continue;
            }
            struct proto_token t;
            if (kind != PROTO_TOK_KIND || proto_token_decode(d, len, &t) != 0) {
                rlog_warn("worker %s: bad token record (%u bytes)", w->id, len);
                continue;
            }
            session_on_token(g, &t, now);
        }
        ring_release(w->ring);
        if (rc == RILL_E_BAD_FORMAT) {
            rlog_error("worker %s: its ring is corrupt", w->id);
            atomic_store(&w->dead, true);
        }
    }
    session_flush_writes(g);
    for (int i = 0; i < g->n_workers; i++) {
        struct gw_worker *w = &g->workers[i];
        if (w->in_use && w->up && atomic_load(&w->dead))
            worker_down(g, w, "its token ring's producer died");
    }
}

int workers_pick(struct gw *g, uint64_t exclude)
{
    int best = -1;
    for (int i = 0; i < g->n_workers; i++) {
        struct gw_worker *w = &g->workers[i];
        if (!w->in_use || !w->up || w->draining || (exclude >> i & 1))
            continue;
        if (best < 0 || w->inflight < g->workers[best].inflight)
            best = i;
    }
    return best;
}

int workers_ready(const struct gw *g)
{
    int n = 0;
    for (int i = 0; i < g->n_workers; i++)
        n += g->workers[i].in_use && g->workers[i].up && !g->workers[i].draining;
    return n;
}

bool workers_can_come_back(const struct gw *g)
{
    if (g->standalone || !g->control)
        return true; /* nobody tells us otherwise: a worker may start any time */
    for (int i = 0; i < g->n_workers; i++)
        if (g->workers[i].in_use && !g->workers[i].failed)
            return true;
    return g->n_workers == 0;
}

int workers_send(struct gw *g, int worker, const struct proto_msg *m)
{
    struct gw_worker *w = &g->workers[worker];
    if (!w->up || !w->dealer)
        return RILL_E_PEER_DEAD;
    /* Answers come back in the worker's ring, never on this socket: sending
     * never calls back into the stream layer. */
    return plane_send(w->dealer, NULL, m);
}

static void send_heartbeat(struct gw *g)
{
    struct proto_msg m = {.type = PROTO_HEARTBEAT};
    struct proto_heartbeat *h = &m.u.heartbeat;
    snprintf(h->id, sizeof h->id, "g0");
    h->seq = ++g->hb_seq;
    h->active = (uint32_t)g->map_used;
    h->tokens_total = g->m.tokens;
    h->requests_total = g->m.requests;
    h->state = g->shutting_down ? PROTO_STATE_DRAINING : PROTO_STATE_READY;
    /* How many workers this gateway can route to: the supervisor says
     * "ready" only once the gateway has them all, not when they said hello. */
    h->n_metrics = 1;
    snprintf(h->metrics[0].name, sizeof h->metrics[0].name, "workers_ready");
    h->metrics[0].value = workers_ready(g);
    plane_send(g->control, NULL, &m);
    if (g->control_wsi && zs_readable(g->control))
        workers_on_zmq(g, g->control_wsi);
}

void workers_tick(struct gw *g, uint64_t now_ns)
{
    if (g->control && now_ns >= g->next_hb_ns) {
        send_heartbeat(g);
        g->next_hb_ns = now_ns + 100000000ull;
    }
    if (!g->standalone)
        return;
    /* Without a supervisor: bring workers up as their rings appear, and
     * again when a restarted worker publishes a new epoch. */
    for (int i = 0; i < g->n_workers; i++) {
        struct gw_worker *w = &g->workers[i];
        if (!w->in_use || w->up || now_ns - w->last_retry_ns < 500000000ull)
            continue;
        w->last_retry_ns = now_ns;
        worker_up(g, w);
    }
}

int workers_init(struct gw *g)
{
    const struct rill_config *c = g->c;
    int rc = zs_ctx_new(&g->zctx);
    if (rc)
        return rc;
    if (c->control[0]) {
        struct zs_id id;
        zs_id_from_str(&id, "g0");
        if ((rc = zs_dealer(g->zctx, &id, false, &g->control)) || (rc = zs_connect(g->control, c->control)) ||
            (rc = adopt_fd(g, g->control, NULL, &g->control_wsi))) {
            rlog_error("cannot connect to the supervisor at %s", c->control);
            return rc;
        }
        struct proto_msg m = {.type = PROTO_HELLO};
        m.u.hello.role = PROTO_ROLE_GATEWAY;
        snprintf(m.u.hello.id, sizeof m.u.hello.id, "g0");
        m.u.hello.pid = (int32_t)getpid();
        snprintf(m.u.hello.endpoint, sizeof m.u.hello.endpoint, "%s", c->listen);
        plane_send(g->control, NULL, &m);
        return 0;
    }
    /* Standalone: endpoint@ring, comma-separated. */
    g->standalone = true;
    const char *p = c->worker_list;
    int n = 0;
    while (*p) {
        while (*p == ',' || *p == ' ')
            p++;
        if (!*p)
            break;
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        char item[600];
        snprintf(item, sizeof item, "%.*s", (int)len, p);
        char *at = strrchr(item, '@');
        if (!at || at == item || !at[1]) {
            rlog_error("worker_list entry '%s' is not endpoint@ring", item);
            return RILL_E_BAD_CONFIG;
        }
        *at = 0;
        char id[16];
        snprintf(id, sizeof id, "w%d", n++);
        struct gw_worker *w = worker_slot(g, id);
        if (!w)
            return RILL_E_BAD_CONFIG;
        snprintf(w->endpoint, sizeof w->endpoint, "%s", item);
        snprintf(w->ring_name, sizeof w->ring_name, "%s", at + 1);
        p += len;
    }
    if (!n)
        rlog_warn("no workers: set worker_list (endpoint@ring,...) or run under rill-supervisor");
    return 0;
}

void workers_fini(struct gw *g)
{
    for (int i = 0; i < g->n_workers; i++) {
        struct gw_worker *w = &g->workers[i];
        if (w->reader_running) {
            atomic_store(&w->reader_stop, true);
            ring_wake_consumer(w->ring);
            pthread_join(w->reader, NULL);
            w->reader_running = false;
        }
        zs_close(&w->dealer);
        ring_close(w->ring, false);
        w->ring = NULL;
    }
    zs_close(&g->control);
    zs_ctx_term(&g->zctx);
    free(g->sup_prom);
    free(g->sup_json);
    g->sup_prom = g->sup_json = NULL;
}
