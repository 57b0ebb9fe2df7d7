/* transport.c — see transport.h.
 *
 * Why a reader thread per ring and not an adopted fd: a futex has no fd.
 * The thread costs nothing while the ring is quiet (it sleeps in the kernel)
 * and wakes the service loop with lws_cancel_service() at most once per
 * batch of records (the `pending` flag dedups wake-ups).
 */
#include "transport.h"
#include "common/hash.h"
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
    struct transport *t;
    struct transport_worker *w;
};

static void notify(struct transport *t, struct transport_worker *w)
{
    if (!atomic_exchange(&w->pending, true))
        lws_cancel_service(t->ctx);
}

static void *reader_main(void *a)
{
    struct reader_arg *ra = a;
    struct transport *t = ra->t;
    struct transport_worker *w = ra->w;
    free(ra);
    uint64_t seen = ring_write_index(w->ring);
    notify(t, w); /* anything published before we started */
    while (!atomic_load(&w->reader_stop)) {
        ring_wait(w->ring, seen, READER_TICK_MS);
        uint64_t idx = ring_write_index(w->ring);
        if (idx != seen) {
            seen = idx;
            notify(t, w);
        } else if (!ring_producer_alive(w->ring)) {
            atomic_store(&w->dead, true);
            notify(t, w);
            break;
        }
    }
    return NULL;
}

/* --- one worker --------------------------------------------------------------------------- */

static void worker_down(struct transport *t, struct transport_worker *w, const char *why)
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
    transport_poll_rings(t);
    t->cb.on_worker_down(t->cb.ctx, w->idx);
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

static int adopt_fd(struct transport *t, void *sock, void *user, struct lws **out)
{
    int fd;
    if (zs_fd(sock, &fd))
        return RILL_E_IO;
    lws_sock_file_fd_type u;
    u.filefd = dup(fd);
    if (u.filefd < 0)
        return RILL_E_IO;
    struct lws *wsi = lws_adopt_descriptor_vhost(t->vh, LWS_ADOPT_RAW_FILE_DESC, u, TRANSPORT_LWS_PROTOCOL, NULL);
    if (!wsi)
        return RILL_E_IO; /* lws closed the dup */
    lws_set_opaque_user_data(wsi, user);
    *out = wsi;
    return 0;
}

static int worker_up(struct transport *t, struct transport_worker *w)
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
    if ((rc = zs_dealer(t->zctx, &id, false, &w->dealer)) || (rc = zs_connect(w->dealer, w->endpoint)) ||
        (rc = adopt_fd(t, w->dealer, w, &w->zwsi))) {
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
        ra->t = t;
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
    /* Say who we are, first: the worker then replays what a previous
     * gateway process left running on it (keep), for resumes, or drops it. */
    struct proto_msg hi = {.type = PROTO_ADOPT};
    hi.u.adopt.epoch = t->req_epoch;
    hi.u.adopt.keep = t->c->resume_window_s > 0;
    w->adopting = plane_send(w->dealer, NULL, &hi) == 0;
    w->adopt_since_ns = clock_ns();
    rlog_info("worker %s is up: %s, ring %s (epoch %016llx)", w->id, w->endpoint, w->ring_name,
              (unsigned long long)w->epoch);
    return 0;
}

static struct transport_worker *worker_slot(struct transport *t, const char *id)
{
    for (int i = 0; i < t->n_workers; i++)
        if (t->workers[i].in_use && !strcmp(t->workers[i].id, id))
            return &t->workers[i];
    for (int i = 0; i < TRANSPORT_MAX_WORKERS; i++)
        if (!t->workers[i].in_use) {
            struct transport_worker *w = &t->workers[i];
            memset(w, 0, sizeof *w);
            w->idx = i;
            w->in_use = true;
            snprintf(w->id, sizeof w->id, "%s", id);
            if (i >= t->n_workers)
                t->n_workers = i + 1;
            return w;
        }
    return NULL;
}

/* --- the supervisor's view ------------------------------------------------------------------------ */

static void send_heartbeat(struct transport *t);

static void on_workers_msg(struct transport *t, const struct proto_workers *ws)
{
    for (int i = 0; i < t->n_workers; i++) {
        struct transport_worker *w = &t->workers[i];
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
            worker_down(t, w, "the supervisor no longer lists it as ready");
    }
    for (int k = 0; k < ws->n_workers; k++) {
        const struct proto_worker_info *in = &ws->workers[k];
        if (in->state != PROTO_WSTATE_READY)
            continue;
        struct transport_worker *w = worker_slot(t, in->id);
        if (!w || w->up)
            continue;
        snprintf(w->ring_name, sizeof w->ring_name, "%s", in->ring);
        snprintf(w->endpoint, sizeof w->endpoint, "%s", in->endpoint);
        worker_up(t, w);
    }
    send_heartbeat(t); /* the supervisor learns at once what we can route to */
}

static void on_control_msg(struct transport *t, struct proto_msg *m)
{
    switch (m->type) {
    case PROTO_WORKERS:
        on_workers_msg(t, &m->u.workers);
        break;
    case PROTO_DRAIN:
    case PROTO_SHUTDOWN:
    case PROTO_STATS:
        t->cb.on_control(t->cb.ctx, m);
        break;
    default:
        break;
    }
}

/* --- service-thread entry points ------------------------------------------------------------------ */

void transport_on_fd(struct transport *t, struct lws *wsi)
{
    struct transport_worker *w = lws_get_opaque_user_data(wsi);
    void *sock = w ? w->dealer : t->control;
    if (!sock || (wsi != t->control_wsi && !w))
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
            t->cb.on_msg(t->cb.ctx, w->idx, &m); /* (workers answer in their rings: not expected) */
        else
            on_control_msg(t, &m);
        proto_msg_free(&m);
        if (w && !w->up)
            break;
    }
}

void transport_poll_rings(struct transport *t)
{
    uint64_t now = clock_ns();
    for (int i = 0; i < t->n_workers; i++) {
        struct transport_worker *w = &t->workers[i];
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
                if (m.type == PROTO_ADOPT)
                    w->adopting = false; /* the worker's replay is over */
                else
                    t->cb.on_msg(t->cb.ctx, w->idx, &m);
                proto_msg_free(&m);
                continue;
            }
            struct proto_token tok;
            if (kind != PROTO_TOK_KIND || proto_token_decode(d, len, &tok) != 0) {
                rlog_warn("worker %s: bad token record (%u bytes)", w->id, len);
                continue;
            }
            t->cb.on_token(t->cb.ctx, w->idx, &tok, now);
        }
        ring_release(w->ring);
        if (rc == RILL_E_BAD_FORMAT) {
            rlog_error("worker %s: its ring is corrupt", w->id);
            atomic_store(&w->dead, true);
        }
    }
    t->cb.on_batch_end(t->cb.ctx);
    for (int i = 0; i < t->n_workers; i++) {
        struct transport_worker *w = &t->workers[i];
        if (w->in_use && w->up && atomic_load(&w->dead))
            worker_down(t, w, "its token ring's producer died");
    }
}

int transport_pick(const struct transport *t, uint64_t exclude)
{
    int best = -1;
    for (int i = 0; i < t->n_workers; i++) {
        const struct transport_worker *w = &t->workers[i];
        if (!w->in_use || !w->up || w->draining || (exclude >> i & 1))
            continue;
        if (best < 0 || w->inflight < t->workers[best].inflight)
            best = i;
    }
    return best;
}

int transport_pick_affine(const struct transport *t, uint64_t exclude, uint64_t key)
{
    int least = transport_pick(t, exclude);
    if (!key || least < 0)
        return least;
    int best = -1;
    uint64_t best_score = 0;
    for (int i = 0; i < t->n_workers; i++) {
        const struct transport_worker *w = &t->workers[i];
        if (!w->in_use || !w->up || w->draining || (exclude >> i & 1))
            continue;
        /* By the worker's name, not its slot: the same worker wins after a
         * restart or a change in the table's order. */
        uint64_t score = hash_u64(key ^ hash_bytes(w->id, strlen(w->id)));
        if (best < 0 || score > best_score) {
            best = i;
            best_score = score;
        }
    }
    if (t->workers[best].inflight > t->workers[least].inflight + TRANSPORT_AFFINITY_SLACK)
        return least;
    return best;
}

int transport_ready(const struct transport *t)
{
    int n = 0;
    for (int i = 0; i < t->n_workers; i++)
        n += t->workers[i].in_use && t->workers[i].up && !t->workers[i].draining;
    return n;
}

bool transport_can_come_back(const struct transport *t)
{
    if (t->standalone || !t->control)
        return true; /* nobody tells us otherwise: a worker may start any time */
    for (int i = 0; i < t->n_workers; i++)
        if (t->workers[i].in_use && !t->workers[i].failed)
            return true;
    return t->n_workers == 0;
}

int transport_send(struct transport *t, int worker, const struct proto_msg *m)
{
    struct transport_worker *w = &t->workers[worker];
    if (!w->up || !w->dealer)
        return RILL_E_PEER_DEAD;
    /* Answers come back in the worker's ring, never on this socket: sending
     * never calls back into the stream layer. */
    return plane_send(w->dealer, NULL, m);
}

static void send_heartbeat(struct transport *t)
{
    struct proto_msg m = {.type = PROTO_HEARTBEAT};
    struct proto_heartbeat *h = &m.u.heartbeat;
    snprintf(h->id, sizeof h->id, "g0");
    h->seq = ++t->hb_seq;
    t->cb.fill_heartbeat(t->cb.ctx, h);
    /* How many workers this gateway can route to: the supervisor says
     * "ready" only once the gateway has them all, not when they said hello. */
    h->n_metrics = 1;
    snprintf(h->metrics[0].name, sizeof h->metrics[0].name, "workers_ready");
    h->metrics[0].value = transport_ready(t);
    plane_send(t->control, NULL, &m);
    if (t->control_wsi && zs_readable(t->control))
        transport_on_fd(t, t->control_wsi);
}

void transport_tick(struct transport *t, uint64_t now_ns)
{
    if (t->control && now_ns >= t->next_hb_ns) {
        send_heartbeat(t);
        t->next_hb_ns = now_ns + 100000000ull;
    }
    if (!t->standalone)
        return;
    /* Without a supervisor: bring workers up as their rings appear, and
     * again when a restarted worker publishes a new epoch. */
    for (int i = 0; i < t->n_workers; i++) {
        struct transport_worker *w = &t->workers[i];
        if (!w->in_use || w->up || now_ns - w->last_retry_ns < 500000000ull)
            continue;
        w->last_retry_ns = now_ns;
        worker_up(t, w);
    }
}

int transport_init(struct transport *t, const struct rill_config *c, struct lws_context *ctx, struct lws_vhost *vh,
                   uint32_t req_epoch, const struct transport_cb *cb)
{
    memset(t, 0, sizeof *t);
    t->c = c;
    t->ctx = ctx;
    t->vh = vh;
    t->req_epoch = req_epoch;
    t->started_ns = clock_ns();
    t->cb = *cb;
    int rc = zs_ctx_new(&t->zctx);
    if (rc)
        return rc;
    if (c->control[0]) {
        struct zs_id id;
        zs_id_from_str(&id, "g0");
        if ((rc = zs_dealer(t->zctx, &id, false, &t->control)) || (rc = zs_connect(t->control, c->control)) ||
            (rc = adopt_fd(t, t->control, NULL, &t->control_wsi))) {
            rlog_error("cannot connect to the supervisor at %s", c->control);
            return rc;
        }
        struct proto_msg m = {.type = PROTO_HELLO};
        m.u.hello.role = PROTO_ROLE_GATEWAY;
        snprintf(m.u.hello.id, sizeof m.u.hello.id, "g0");
        m.u.hello.pid = (int32_t)getpid();
        snprintf(m.u.hello.endpoint, sizeof m.u.hello.endpoint, "%s", c->listen);
        plane_send(t->control, NULL, &m);
        return 0;
    }
    /* Standalone: endpoint@ring, comma-separated. */
    t->standalone = true;
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
        struct transport_worker *w = worker_slot(t, id);
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

void transport_fini(struct transport *t)
{
    for (int i = 0; i < t->n_workers; i++) {
        struct transport_worker *w = &t->workers[i];
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
    zs_close(&t->control);
    zs_ctx_term(&t->zctx);
}

const char *transport_worker_id(const struct transport *t, int worker)
{
    return worker >= 0 && worker < t->n_workers ? t->workers[worker].id : "?";
}

void transport_inflight(struct transport *t, int worker, int delta)
{
    if (worker < 0 || worker >= t->n_workers)
        return;
    struct transport_worker *w = &t->workers[worker];
    if (delta > 0)
        w->inflight += (uint32_t)delta;
    else if (w->inflight >= (uint32_t)-delta)
        w->inflight -= (uint32_t)-delta;
    else
        w->inflight = 0;
}

bool transport_adopting(const struct transport *t, uint64_t now_ns)
{
    /* Just started: until every worker we know of is up and has replayed
     * (and we know of one), a resume may be for one of theirs. */
    if (now_ns - t->started_ns < TRANSPORT_ADOPT_WAIT_NS) {
        int known = 0, done = 0;
        for (int i = 0; i < t->n_workers; i++) {
            const struct transport_worker *w = &t->workers[i];
            if (!w->in_use || w->failed)
                continue;
            known++;
            done += w->up && !w->adopting;
        }
        if (!known || done < known)
            return true;
    }
    for (int i = 0; i < t->n_workers; i++) {
        const struct transport_worker *w = &t->workers[i];
        if (w->in_use && w->up && w->adopting && now_ns - w->adopt_since_ns < TRANSPORT_ADOPT_WAIT_NS)
            return true;
    }
    return false;
}
