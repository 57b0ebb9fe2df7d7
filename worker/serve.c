/* serve.c — see serve.h.
 *
 * One thread runs the loop: ZeroMQ messages are read between steps (a step
 * takes tens of milliseconds at most, so a cancel is seen before the next
 * one), each step's records go into the ring with one publish, and a
 * heartbeat leaves every heartbeat_ms.  New requests are tokenized on the
 * intake's thread (intake.h), not here: a long prompt would hold up every
 * running stream for as long as it takes.  A request is answered (accepted
 * or rejected) when it comes back tokenized, or at once when it can be
 * refused without its tokens.  Before a step the loop makes sure the
 * ring has room for everything the step can write, so the step itself never
 * blocks on a slow gateway; while the ring is full the worker only keeps up
 * its heartbeats and messages (backpressure).
 */
#include "serve.h"
#include "intake.h"
#include "journal.h"
#include "chat.h"
#include "gguf.h"
#include "model.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/hist.h"
#include "common/log.h"
#include "common/plane.h"
#include "common/ring.h"
#include "common/rundir.h"
#include "common/zsock.h"

#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t got_signal;
/* The supervisor died (its parent-death signal).  A flag, not a count: the
 * kernel sends that signal again each time the child is handed to another
 * of the dying supervisor's threads, and those must not read as a second
 * Ctrl-C that stops at once. */
static volatile sig_atomic_t parent_gone;

static void on_parent_gone(int sig)
{
    (void)sig;
    parent_gone = 1;
}

static void on_signal(int sig)
{
    (void)sig;
    got_signal++;
}

/* A step waits for the prompts that came just before it (admit_tokenized)
 * when the intake holds no more than ADMIT_WAIT_BYTES of them (~1 ms of
 * tokenizing), and never longer than ADMIT_WAIT_NS. */
#define ADMIT_WAIT_BYTES 2048u
#define ADMIT_WAIT_NS    2000000ull


struct server {
    const struct rill_config *c;
    struct engine *e;
    struct intake *intake;       /* requests being tokenized */
    struct journal *jrn;         /* what a restarted gateway adopts */
    bool busy_since_trim;        /* malloc_trim after bursts */
    uint64_t idle_since_ns;
    uint32_t kept_at_trim;
    bool fresh;                  /* a request went to the intake since the last step */
    struct ring *ring;
    char ring_name[RING_NAME_MAX];
    char id[PROTO_ID_LEN + 1];
    char endpoint[ZS_ENDPOINT_MAX];
    char own_socket[32];         /* our ipc socket's file in the run dir, or "" */
    void *zctx, *router, *control;
    struct hist step_us;         /* step times since the last heartbeat */
    struct hist batch_n;         /* decode sequences per step, same window */
    uint64_t hb_seq, next_hb_ns, last_hb_ns;
    uint64_t tokens_at_hb, prefill_at_hb;
    uint64_t rss;
    enum pressure_level pressure;
    bool draining, stop;
    uint64_t next_fake_step_ns;
};

/* --- the ring as the scheduler's output ----------------------------------------------- */

static int ring_emit(void *ctx, const struct proto_token *t)
{
    struct server *sv = ctx;
    size_t sz = proto_token_size(t->n_top, t->text_len);
    int err = 0;
    /* Room was checked before the step; the wait is a guard, not a plan. */
    void *p = ring_reserve(sv->ring, (uint32_t)sz, PROTO_TOK_KIND, 1000, &err);
    if (!p) {
        rlog_error("token ring full for 1 s: the gateway is not reading (%s)", rill_err_name(err));
        return err;
    }
    int n = proto_token_encode(p, sz, t);
    if (n < 0)
        return n;
    journal_record(sv->jrn, t, p, (size_t)n, t->t_gen_ns);
    return 0;
}

static void ring_flush(void *ctx)
{
    struct server *sv = ctx;
    ring_publish(sv->ring);
}

/* Bytes one step may write: a record per running or admissible sequence,
 * plus a pad record at the wrap. */
static size_t step_need(const struct server *sv)
{
    struct sched_stats st;
    sched_stats(sv->e->sched, &st);
    size_t recs = (size_t)st.running + st.waiting + st.cap + 1;
    size_t need = recs * (PROTO_TOK_MAX_SIZE + RING_REC_HDR + 8) + PROTO_TOK_MAX_SIZE + RING_REC_HDR;
    size_t half = ring_capacity(sv->ring) / 2;
    return need < half ? need : half;
}

/* --- messages --------------------------------------------------------------------------- */

/* A request's answer (accepted, rejected) goes into the ring, ahead of its
 * tokens: one ordered channel to the gateway, never a race between a reply
 * on the request socket and tokens in the ring. */
static int push_msg(void *ctx, const struct proto_msg *m)
{
    struct server *sv = ctx;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    char why[160] = "";
    int rc = proto_encode(m, &sb, why, sizeof why);
    if (!rc)
        rc = ring_push(sv->ring, sb.data, (uint32_t)sb.size, PROTO_MSG_KIND, 1000);
    msgpack_sbuffer_destroy(&sb);
    if (rc)
        rlog_warn("cannot write a %s record for the gateway: %s%s%s", proto_type_name(m->type), rill_err_name(rc),
                  why[0] ? ": " : "", why);
    return rc;
}

static int push_rec(void *ctx, const void *bytes, size_t len)
{
    struct server *sv = ctx;
    int rc = ring_push(sv->ring, bytes, (uint32_t)len, PROTO_TOK_KIND, 1000);
    if (rc)
        rlog_warn("cannot write a kept record for the gateway: %s", rill_err_name(rc));
    return rc;
}

static void reply(struct server *sv, const struct proto_msg *m)
{
    if (push_msg(sv, m) == 0)
        ring_publish(sv->ring);
}

/* A gateway process says who it is, first thing (before any request of
 * its own).  With keep, it takes over what its predecessors left here: the
 * journal's replay, then the end of it (journal.h).  Without, what they
 * left has nobody to go to: it is cancelled.  (One gateway process may run
 * requests of several epochs, its own and the ones it adopted.) */
static void on_adopt(struct server *sv, const struct proto_adopt *a)
{
    uint32_t n = 0;
    if (a->keep) {
        n = journal_count(sv->jrn);
        struct journal_sink sink = {sv, push_msg, push_rec};
        int rc = journal_replay(sv->jrn, &sink);
        if (rc)
            rlog_error("the replay for a restarted gateway stopped: %s", rill_err_name(rc));
    } else {
        uint32_t c = sched_cancel_matching(sv->e->sched, 0, 0) + intake_cancel_matching(sv->intake, 0, 0);
        if (c)
            rlog_info("gateway restarted: cancelled %u request(s) of its predecessor", c);
    }
    struct proto_msg m = {.type = PROTO_ADOPT};
    m.u.adopt.epoch = a->epoch;
    reply(sv, &m);
    if (n)
        rlog_info("a new gateway process adopted %u request(s) (%zu bytes of records)", n, journal_bytes(sv->jrn));
}

static void reply_rejected(struct server *sv, uint64_t id, int code, const char *why)
{
    struct proto_msg r = {.type = PROTO_REJECTED};
    r.u.rejected.id = id;
    r.u.rejected.code = code;
    snprintf(r.u.rejected.message, sizeof r.u.rejected.message, "%s", why && why[0] ? why : rill_err_name(code));
    rlog_debug("rejected request %llu: %s", (unsigned long long)id, r.u.rejected.message);
    reply(sv, &r);
}

/* A new request: what can be refused without its tokens is refused now;
 * the rest goes to the intake, and is answered when it comes back. */
static void on_submit(struct server *sv, struct proto_submit *req)
{
    char why[256] = "";
    int rc = sched_check(sv->e->sched, req, intake_count(sv->intake), why, sizeof why);
    if (!rc && intake_has(sv->intake, req->id)) {
        rill_why(why, sizeof why, "request id %llu is already in use", (unsigned long long)req->id);
        rc = RILL_E_DUPLICATE_ID;
    }
    if (rc) {
        reply_rejected(sv, req->id, rc, why);
        return;
    }
    /* Kept before the intake takes the prompt's buffers. */
    int jrc = journal_open(sv->jrn, req);
    if (jrc)
        rlog_warn("request %llu is not kept for a restarted gateway: %s", (unsigned long long)req->id, rill_err_name(jrc));
    if ((rc = intake_push(sv->intake, req, clock_ns()))) {
        journal_drop(sv->jrn, req->id);
        reply_rejected(sv, req->id, rc, why);
        return;
    }
    sv->fresh = true;
}

/* A tokenized request joins the scheduler's queue, or is refused. */
static void admit(struct server *sv, struct intake_job *j)
{
    char why[256] = "";
    int rc = j->rc;
    /* The prompt's own tokens (a failover's prefill of delivered ones is
     * not prompt); read now: sched_submit_prompt takes the tokens. */
    uint32_t n_prompt = j->prompt.n > j->req.n_prompt_tokens ? j->prompt.n - j->req.n_prompt_tokens : 0;
    if (rc)
        snprintf(why, sizeof why, "%s", j->why);
    else
        rc = sched_submit_prompt(sv->e->sched, &j->req, &j->prompt, j->t_arrive, why, sizeof why);
    if (rc) {
        journal_drop(sv->jrn, j->req.id);
        reply_rejected(sv, j->req.id, rc, why);
    } else {
        journal_accepted(sv->jrn, j->req.id, n_prompt);
        struct sched_stats st;
        sched_stats(sv->e->sched, &st);
        struct proto_msg r = {.type = PROTO_ACCEPTED};
        r.u.accepted.id = j->req.id;
        r.u.accepted.queue_position = st.waiting;
        r.u.accepted.prompt_tokens = n_prompt;
        reply(sv, &r);
        /* Cancelled while it was tokenized: it ends as a cancel that
         * came just after it was accepted would end it. */
        if (j->cancelled)
            sched_cancel(sv->e->sched, j->req.id);
    }
    intake_job_free(j);
}

/* Tokenized requests join the scheduler's queue, in the order they came.
 * Until `deadline` the loop waits for the intake: a request that has just
 * come with a short prompt is tokenized in well under a millisecond, and so
 * still joins the coming step, as when the loop tokenized it itself; a long
 * one joins a later step. */
static void admit_tokenized(struct server *sv, uint64_t deadline)
{
    for (;;) {
        struct intake_job *j;
        while ((j = intake_pop(sv->intake)))
            admit(sv, j);
        uint64_t now = clock_ns();
        if (!intake_count(sv->intake) || now >= deadline ||
            !intake_wait(sv->intake, (uint32_t)((deadline - now) / 1000)))
            return;
    }
}

/* Stopping: nothing in the intake will run here; another worker may take it. */
static void reject_intake(struct server *sv)
{
    intake_stop(sv->intake, RILL_E_SHUTTING_DOWN);
    struct intake_job *j;
    while ((j = intake_pop(sv->intake))) {
        journal_drop(sv->jrn, j->req.id);
        reply_rejected(sv, j->req.id, RILL_E_SHUTTING_DOWN, "the worker is shutting down");
        intake_job_free(j);
    }
}

static void on_request(struct server *sv, struct proto_msg *m)
{
    switch (m->type) {
    case PROTO_SUBMIT:
        on_submit(sv, &m->u.submit);
        break;
    case PROTO_ADOPT:
        on_adopt(sv, &m->u.adopt);
        break;
    case PROTO_CANCEL:
        /* Idempotent: an unknown id (already finished) needs no answer. */
        if (sched_cancel(sv->e->sched, m->u.cancel.id) == RILL_E_NOT_FOUND)
            intake_cancel(sv->intake, m->u.cancel.id);
        /* The gateway wants it no more from here (its client cancelled or
         * went away, or it moved to another worker): not one for a new
         * gateway to adopt from here, where it ends cancelled. */
        journal_drop(sv->jrn, m->u.cancel.id);
        break;
    default:
        rlog_warn("unexpected %s message on the request socket", proto_type_name(m->type));
    }
}

static void start_drain(struct server *sv, const char *why)
{
    if (sv->draining)
        return;
    sv->draining = true;
    sched_set_draining(sv->e->sched, true);
    rlog_info("draining (%s): finishing running requests, admitting none", why);
}

static void on_control(struct server *sv, struct proto_msg *m)
{
    switch (m->type) {
    case PROTO_SET_BATCH:
        sched_set_limit(sv->e->sched, m->u.set_batch.max_batch);
        rlog_info("supervisor bound on the batch: %u (%s)", m->u.set_batch.max_batch, m->u.set_batch.reason);
        break;
    case PROTO_PRESSURE: {
        enum pressure_level level = pressure_level_clamp(m->u.pressure.level);
        if (level != sv->pressure)
            rlog_info("memory pressure %s (%s)", pressure_level_name(level), m->u.pressure.reason);
        sv->pressure = level;
        sched_set_pressure(sv->e->sched, level);
        break;
    }
    case PROTO_DRAIN:
        start_drain(sv, "supervisor asked");
        break;
    case PROTO_SHUTDOWN:
        rlog_info("shutdown requested");
        sv->stop = true;
        break;
    default:
        break;
    }
}

static void send_hello(struct server *sv)
{
    struct proto_msg m = {.type = PROTO_HELLO};
    struct proto_hello *h = &m.u.hello;
    h->role = PROTO_ROLE_WORKER;
    snprintf(h->id, sizeof h->id, "%s", sv->id);
    h->pid = (int32_t)getpid();
    snprintf(h->ring, sizeof h->ring, "%s", sv->ring_name);
    snprintf(h->endpoint, sizeof h->endpoint, "%s", sv->endpoint);
    snprintf(h->model, sizeof h->model, "%s", sv->e->model->cfg.name[0] ? sv->e->model->cfg.name : "model");
    h->n_ctx = sv->e->max_ctx;
    h->max_batch = (uint32_t)sv->c->max_batch;
    h->epoch = ring_epoch(sv->ring);
    int rc = plane_send(sv->control, NULL, &m);
    if (rc)
        rlog_warn("cannot say hello to the supervisor: %s", rill_err_name(rc));
}

/* The memory breakdown, as the heartbeat's named metrics (the supervisor
 * shows them as rill_worker_memory_bytes{part=...}). */
static void memory_metrics(const struct server *sv, struct proto_heartbeat *h)
{
    struct engine_mem em;
    engine_memory(sv->e, &em);
    const struct { const char *part; uint64_t bytes; } parts[] = {
        {"weights", em.weights},
        {"kv_cache", em.kv_cache},
        {"prefix_cache", em.prefix_cache},
        {"activations", em.activations},
        {"ring", RING_HDR_BYTES + (uint64_t)ring_capacity(sv->ring)},
    };
    for (size_t i = 0; i < sizeof parts / sizeof parts[0] && h->n_metrics < PROTO_MAX_METRICS; i++) {
        struct proto_metric *m = &h->metrics[h->n_metrics++];
        snprintf(m->name, sizeof m->name, "memory_%s_bytes", parts[i].part);
        m->value = (double)parts[i].bytes;
    }
}

static void heartbeat(struct server *sv, uint64_t now)
{
    /* Under pressure, cached prefix blocks and blocks that sequences gave
     * back go back to the kernel now, not when the level next rises: that
     * is what lets the level fall again. */
    if (sv->pressure != PRESSURE_NORMAL)
        sched_trim(sv->e->sched);
    journal_sweep(sv->jrn, now);
    /* After a burst, the allocator's free memory and the pages of free KV
     * blocks go back to the system once the worker has been idle a second
     * (the gateway does the same): otherwise its RSS is the high-water mark
     * of every burst so far.  Cached prefix blocks stay. */
    bool idle = !sched_busy(sv->e->sched) && !intake_count(sv->intake);
    if (!idle) {
        sv->busy_since_trim = true;
        sv->idle_since_ns = 0;
    } else if (!sv->idle_since_ns) {
        sv->idle_since_ns = now;
    } else if ((sv->busy_since_trim || journal_count(sv->jrn) != sv->kept_at_trim) &&
               now - sv->idle_since_ns > 1000000000ull) {
        kv_trim(sv->e->kv);
        malloc_trim(0);
        sv->busy_since_trim = false;
        sv->kept_at_trim = journal_count(sv->jrn);
    }
    struct sched_stats st;
    sched_stats(sv->e->sched, &st);
    sv->rss = engine_rss_bytes();
    sched_set_mem_mb(sv->e->sched, (uint32_t)(sv->rss >> 20));
    double secs = sv->last_hb_ns ? (double)(now - sv->last_hb_ns) / 1e9 : 0;
    if (sv->control) {
        struct proto_msg m = {.type = PROTO_HEARTBEAT};
        struct proto_heartbeat *h = &m.u.heartbeat;
        snprintf(h->id, sizeof h->id, "%s", sv->id);
        h->seq = ++sv->hb_seq;
        h->active = st.running;
        h->queued = st.waiting;
        h->step_ms = (float)st.last_step_ms;
        h->step_p50_ms = (float)hist_percentile(&sv->step_us, 0.5) / 1000.0f;
        h->step_p99_ms = (float)hist_percentile(&sv->step_us, 0.99) / 1000.0f;
        h->tokens_per_s = secs > 0 ? (float)((double)(st.tokens - sv->tokens_at_hb) / secs) : 0;
        h->prefill_tokens_per_s = secs > 0 ? (float)((double)(st.prefill_tokens - sv->prefill_at_hb) / secs) : 0;
        h->rss_bytes = sv->rss;
        h->kv_bytes = st.kv_used;
        h->kv_capacity_bytes = st.kv_total;
        h->batch_cap = st.cap;
        h->batch_limit = sched_adapt(sv->e->sched)->limit;
        h->preemptions = st.preemptions;
        h->tokens_total = st.tokens;
        h->requests_total = st.requests;
        h->prefix_lookups = st.prefix_lookups;
        h->prefix_hits = st.prefix_hits;
        h->prefix_lookup_tokens = st.prefix_lookup_tokens;
        h->prefix_hit_tokens = st.prefix_hit_tokens;
        h->prefix_evictions = st.prefix_evictions;
        h->prefix_blocks = st.prefix_blocks;
        h->pressure_level = (uint8_t)sv->pressure;
        h->state = sv->draining ? PROTO_STATE_DRAINING : PROTO_STATE_READY;
        memory_metrics(sv, h);
        /* The window's distributions, for the supervisor to accumulate
         * (left out when they do not fit: the counters above still go). */
        size_t len;
        if (sv->step_us.count && hist_encode(&sv->step_us, h->step_hist.data, PROTO_BLOB_MAX, &len) == 0)
            h->step_hist.len = (uint16_t)len;
        if (sv->batch_n.count && hist_encode(&sv->batch_n, h->batch_hist.data, PROTO_BLOB_MAX, &len) == 0)
            h->batch_hist.len = (uint16_t)len;
        int rc = plane_send(sv->control, NULL, &m);
        if (rc && rc != RILL_E_AGAIN)
            rlog_warn("heartbeat not sent: %s", rill_err_name(rc));
    }
    hist_reset(&sv->step_us);
    hist_reset(&sv->batch_n);
    sv->tokens_at_hb = st.tokens;
    sv->prefill_at_hb = st.prefill_tokens;
    sv->last_hb_ns = now;
    sv->next_hb_ns = now + (uint64_t)sv->c->heartbeat_ms * 1000000ull;
}

/* Between layers of a step: a heartbeat that is due goes out now. */
static void on_progress(void *ctx)
{
    struct server *sv = ctx;
    uint64_t now = clock_ns();
    if (now >= sv->next_hb_ns)
        heartbeat(sv, now);
}

/* --- set-up ------------------------------------------------------------------------------- */


/* Token `id`'s string in the vocabulary ("<s>", "<|begin_of_text|>") into
 * buf: what a chat template's bos_token / eos_token stand for. */
static void token_text(const struct gguf *g, int32_t id, char *buf, size_t n)
{
    const struct gguf_kv *kv;
    uint64_t cnt;
    buf[0] = 0;
    if (id < 0 || gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_STR, &kv, &cnt, NULL, 0) || (uint64_t)id >= cnt)
        return;
    struct gguf_str s = gguf_arr_str(kv, (uint64_t)id);
    snprintf(buf, n, "%.*s", (int)(s.len < n ? s.len : n - 1), s.s);
}

/* Chat requests (submit.messages) are rendered with the model's
 * tokenizer.chat_template, or ChatML for a model without one (as llama.cpp's
 * server does).  A template this Jinja subset cannot parse does not stop the
 * worker: its chat requests are refused, saying why. */
static int setup_chat(struct server *sv)
{
    const struct model *m = sv->e->model;
    struct gguf_str src = {0};
    const char *origin = "tokenizer.chat_template";
    if (gguf_get_str(m->gguf, "tokenizer.chat_template", &src, NULL, 0) || !src.len) {
        src.s = chat_builtin("chatml");
        src.len = strlen(src.s);
        origin = "ChatML (the model has no tokenizer.chat_template)";
    }
    struct chat_tmpl *t = NULL;
    char twhy[200] = "", refuse[256] = "";
    int rc = chat_tmpl_new(src.s, (size_t)src.len, &t, twhy, sizeof twhy);
    if (rc == RILL_E_NOMEM)
        return rc;
    if (rc) {
        snprintf(refuse, sizeof refuse, "this model's chat template cannot be used: %s", twhy);
        rlog_warn("chat requests will be refused: %s", refuse);
    } else {
        rlog_info("chat template: %s", origin);
    }
    char bos[128], eos[128];
    token_text(m->gguf, tok_bos(m->tok), bos, sizeof bos);
    token_text(m->gguf, tok_eos(m->tok), eos, sizeof eos);
    return intake_set_chat(sv->intake, rc ? NULL : t, bos, eos, refuse);
}

static int setup(struct server *sv, char *why, size_t why_len)
{
    const struct rill_config *c = sv->c;
    snprintf(sv->id, sizeof sv->id, "w%lld", (long long)c->worker_id);
    if (cfg_ring_name(c, sv->id, sv->ring_name, sizeof sv->ring_name) != 0) {
        snprintf(why, why_len, "instance name too long for a ring name: '%s'", c->instance);
        return RILL_E_BAD_CONFIG;
    }
    char run_dir[CFG_STR_MAX];
    cfg_run_dir(c, run_dir, sizeof run_dir);
    if (mkdir(run_dir, 0700) != 0 && errno != EEXIST) {
        snprintf(why, why_len, "cannot create run dir %s: %s", run_dir, strerror(errno));
        return RILL_E_IO;
    }
    /* The reason names the ring and the cause (squatted name, /dev/shm too
     * small): serve_run logs it as the one line before the worker exits. */
    int rc = ring_create(sv->ring_name, (size_t)c->ring_bytes, &sv->ring, why, why_len);
    if (rc == RILL_E_NOMEM) {
        size_t n = strlen(why);
        snprintf(why + n, why_len - n, " (lower ring_bytes or give /dev/shm more room)");
    }
    if (rc)
        return rc;
    if (c->endpoint[0]) {
        snprintf(sv->endpoint, sizeof sv->endpoint, "%s", c->endpoint);
    } else {
        char file[32];
        snprintf(file, sizeof file, "%s.sock", sv->id);
        rc = zs_endpoint_ipc(sv->endpoint, sizeof sv->endpoint, run_dir, file);
        snprintf(sv->own_socket, sizeof sv->own_socket, "%s", file);
        if (rc) {
            snprintf(why, why_len, "run dir path too long for a socket: %s", run_dir);
            return rc;
        }
    }
    if ((rc = zs_ctx_new(&sv->zctx)) || (rc = zs_router(sv->zctx, &sv->router)))
        return rc;
    rc = zs_bind(sv->router, sv->endpoint);
    if (rc) {
        snprintf(why, why_len, "cannot bind %s: %s", sv->endpoint,
                 rc == RILL_E_EXISTS ? "another process listens there" : rill_err_name(rc));
        return rc;
    }
    if (c->control[0]) {
        struct zs_id zid;
        zs_id_from_str(&zid, sv->id);
        if ((rc = zs_dealer(sv->zctx, &zid, false, &sv->control)) || (rc = zs_connect(sv->control, c->control))) {
            snprintf(why, why_len, "cannot connect to the supervisor at %s", c->control);
            return rc;
        }
    }
    hist_init_prom(&sv->step_us, 1000000);
    hist_init(&sv->batch_n);
    rc = intake_create(sv->e->model->tok, sv->e->max_ctx, &sv->intake);
    if (rc)
        snprintf(why, why_len, "cannot start the tokenizer thread: %s", rill_err_name(rc));
    else if ((rc = setup_chat(sv)))
        snprintf(why, why_len, "cannot set up the chat template: %s", rill_err_name(rc));
    else if ((rc = journal_create((uint64_t)sv->c->journal_window_s * 1000000000ull, (size_t)sv->c->journal_bytes,
                                  (size_t)sv->c->journal_total_bytes, &sv->jrn)))
        snprintf(why, why_len, "cannot set up the journal: %s", rill_err_name(rc));
    return rc;
}

static void teardown(struct server *sv)
{
    intake_free(sv->intake);
    sv->intake = NULL;
    journal_free(sv->jrn);
    sv->jrn = NULL;
    zs_close(&sv->control);
    zs_close(&sv->router);
    zs_ctx_term(&sv->zctx);
    ring_close(sv->ring, true);
    sv->ring = NULL;
    /* ZeroMQ leaves an ipc socket file behind: ours goes with us, and the
     * run dir too when the supervisor died before us. */
    if (sv->own_socket[0]) {
        char run_dir[CFG_STR_MAX];
        cfg_run_dir(sv->c, run_dir, sizeof run_dir);
        const char *own[] = {sv->own_socket, NULL};
        if (sv->c->control[0])
            rundir_leave(run_dir, own);
        else
            rundir_unlink(run_dir, sv->own_socket);
    }
}

int serve_run(const struct rill_config *c, struct engine *e)
{
    struct server sv = {.c = c, .e = e};
    char why[512] = "";
    int rc = setup(&sv, why, sizeof why);
    if (rc) {
        rlog_error("%s", why[0] ? why : rill_err_name(rc));
        if (c->control[0]) {
            char run_dir[CFG_STR_MAX];
            cfg_run_dir(c, run_dir, sizeof run_dir);
            rundir_write_cause(run_dir, sv.id, "%s: %s", sv.id, why[0] ? why : rill_err_name(rc));
        }
        teardown(&sv);
        return rc;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (c->control[0])
    {
        /* An orphaned worker drains and exits. */
        struct sigaction pa = {.sa_handler = on_parent_gone};
        sigaction(RILL_PARENT_DEATH_SIGNAL, &pa, NULL);
        prctl(PR_SET_PDEATHSIG, RILL_PARENT_DEATH_SIGNAL);
        if (getppid() == 1)
            parent_gone = 1; /* it died before prctl */
    }
    if (sv.control)
        send_hello(&sv);
    fwd_set_progress(e->fwd, on_progress, &sv);
    rlog_info("worker %s ready: requests on %s, tokens in %s (epoch %016llx)", sv.id, sv.endpoint, sv.ring_name,
              (unsigned long long)ring_epoch(sv.ring));
    heartbeat(&sv, clock_ns());

    struct sched_out out = {&sv, ring_emit, ring_flush};
    int handled_signals = 0;
    while (!sv.stop) {
        uint64_t now = clock_ns();
        bool busy = sched_busy(e->sched);
        bool room = !busy || ring_wait_space(sv.ring, step_need(&sv), 0) == 0;
        long timeout = (long)((sv.next_hb_ns > now ? sv.next_hb_ns - now : 0) / 1000000);
        if (busy && room) {
            timeout = 0;
            if (c->fake_tokens && sv.next_fake_step_ns > now)
                timeout = (long)((sv.next_fake_step_ns - now + 999999) / 1000000);
        } else if (busy) {
            timeout = 1; /* the gateway is behind: look again soon */
        }
        struct zs_poll p;
        zs_poll_init(&p);
        zs_poll_add(&p, sv.router, -1, ZMQ_POLLIN);
        zs_poll_add(&p, NULL, intake_fd(sv.intake), ZMQ_POLLIN);
        if (sv.control)
            zs_poll_add(&p, sv.control, -1, ZMQ_POLLIN);
        zs_poll_wait(&p, timeout);

        struct proto_msg m;
        struct zs_id from;
        int r;
        while ((r = plane_recv(sv.router, &from, &m, why, sizeof why)) != RILL_E_AGAIN) {
            if (r == 0) {
                on_request(&sv, &m);
                proto_msg_free(&m);
            } else {
                rlog_warn("bad message on the request socket: %s", why);
            }
        }
        while (sv.control && (r = plane_recv(sv.control, NULL, &m, why, sizeof why)) != RILL_E_AGAIN) {
            if (r == 0) {
                on_control(&sv, &m);
                proto_msg_free(&m);
            } else {
                rlog_warn("bad message on the control socket: %s", why);
            }
        }
        if (parent_gone && !sv.draining)
            start_drain(&sv, "the supervisor is gone");
        if (got_signal > handled_signals) {
            handled_signals = got_signal;
            if (handled_signals == 1) {
                start_drain(&sv, "signal");
            } else {
                rlog_info("second signal: stopping now");
                sv.stop = true;
            }
        }
        if (sv.stop)
            break;
        bool wait = sv.fresh && intake_bytes(sv.intake) <= ADMIT_WAIT_BYTES;
        admit_tokenized(&sv, wait ? clock_ns() + ADMIT_WAIT_NS : 0);
        sv.fresh = false;

        now = clock_ns();
        if (sched_busy(e->sched) && (!c->fake_tokens || now >= sv.next_fake_step_ns) &&
            ring_wait_space(sv.ring, step_need(&sv), 0) == 0) {
            int n = sched_step(e->sched, &out);
            if (n < 0) {
                rlog_error("step failed: %s; ending every request", rill_err_name(n));
                sched_abort_all(e->sched, RILL_E_INTERNAL, &out);
            } else if (n > 0) {
                struct sched_stats st;
                sched_stats(e->sched, &st);
                hist_record(&sv.step_us, (uint64_t)(st.last_step_ms * 1000));
                if (st.last_batch)
                    hist_record(&sv.batch_n, st.last_batch);
            }
            if (c->fake_tokens) {
                /* On a fixed grid, so that poll's millisecond rounding does
                 * not slow the streams down; a late step does not bunch up. */
                uint64_t every = (uint64_t)(c->target_latency_ms * 1e6 / c->fake_phases);
                sv.next_fake_step_ns += every;
                if (sv.next_fake_step_ns + every < now)
                    sv.next_fake_step_ns = now + every;
            }
        }
        now = clock_ns();
        if (now >= sv.next_hb_ns)
            heartbeat(&sv, now);
        if (sv.draining && !sched_busy(e->sched) && !intake_count(sv.intake)) {
            rlog_info("drained: every request finished");
            break;
        }
    }
    reject_intake(&sv);
    if (sched_busy(e->sched))
        sched_abort_all(e->sched, RILL_E_SHUTTING_DOWN, &out);
    fwd_set_progress(e->fwd, NULL, NULL);
    teardown(&sv);
    return 0;
}
