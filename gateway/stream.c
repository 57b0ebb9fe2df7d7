/* stream.c — see stream.h. */
#include "stream.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/procstat.h"
#include "common/reclog.h"
#include "common/siphash.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* --- the table: open addressing, linear probing, tombstones ------------------------------- */

#define TOMB ((struct stream *)1)
#define AFFINITY_BYTES 256
#define FAILOVER_PRIOR 64 /* records a failover hands the new worker */
#define FAILOVER_PRIORITY 1 /* submit.priority of a failover (new requests: 0) */

static uint32_t slot_of(uint64_t id, uint32_t cap) { return (uint32_t)hash_u64(id) & (cap - 1); }

/* Rebuild: twice the size when filling up with live entries, the same size
 * when it is mostly tombstones. */
static int map_grow(struct stream_table *t)
{
    uint32_t cap = !t->cap ? 1024 : (t->used + 1) * 4 > t->cap ? t->cap * 2 : t->cap;
    struct stream **m = calloc(cap, sizeof *m);
    if (!m)
        return RILL_E_NOMEM;
    for (uint32_t i = 0; i < t->cap; i++) {
        struct stream *s = t->map[i];
        if (!s || s == TOMB)
            continue;
        uint32_t k = slot_of(s->req_id, cap);
        while (m[k])
            k = (k + 1) & (cap - 1);
        m[k] = s;
    }
    free(t->map);
    t->map = m;
    t->cap = cap;
    t->tombs = 0;
    return 0;
}

static int map_put(struct stream_table *t, struct stream *s)
{
    /* At most half full, tombstones included, so probes stay short. */
    if ((t->used + t->tombs + 1) * 2 > t->cap && map_grow(t))
        return RILL_E_NOMEM;
    uint32_t k = slot_of(s->req_id, t->cap);
    while (t->map[k] && t->map[k] != TOMB)
        k = (k + 1) & (t->cap - 1);
    if (t->map[k] == TOMB)
        t->tombs--;
    t->map[k] = s;
    t->used++;
    return 0;
}

static struct stream *map_get(const struct stream_table *t, uint64_t id)
{
    if (!t->cap)
        return NULL;
    uint32_t k = slot_of(id, t->cap);
    for (uint32_t n = 0; n < t->cap && t->map[k]; n++, k = (k + 1) & (t->cap - 1))
        if (t->map[k] != TOMB && t->map[k]->req_id == id)
            return t->map[k];
    return NULL;
}

static void map_del(struct stream_table *t, uint64_t id)
{
    if (!t->cap)
        return;
    uint32_t k = slot_of(id, t->cap);
    for (uint32_t n = 0; n < t->cap && t->map[k]; n++, k = (k + 1) & (t->cap - 1))
        if (t->map[k] != TOMB && t->map[k]->req_id == id) {
            t->map[k] = TOMB;
            t->used--;
            t->tombs++;
            return;
        }
}

void stream_table_init(struct stream_table *t, struct transport *tp, uint32_t epoch, uint64_t failover_timeout_ns)
{
    memset(t, 0, sizeof *t);
    t->tp = tp;
    t->failover_timeout_ns = failover_timeout_ns;
    t->next_req_id = (uint64_t)epoch << 32;
}

static void free_stream(struct stream *s);
static int keep_id(struct stream *s, uint32_t pos, int32_t id);
static const unsigned char *log_record(const struct stream *s, uint32_t pos, size_t *len);

void stream_table_fini(struct stream_table *t)
{
    /* What is left has no owner: streams kept for a resume (their
     * connections closed them into the table), freed without a word to the
     * workers, which are gone or going too. */
    for (uint32_t i = 0; i < t->cap; i++)
        if (t->map[i] && t->map[i] != TOMB)
            free_stream(t->map[i]);
    free(t->map);
    t->map = NULL;
    t->cap = t->used = t->tombs = 0;
}

/* --- life ------------------------------------------------------------------------------------- */

struct stream *stream_new(struct stream_table *t, void *owner, const struct stream_events *ev, const struct creq_id *cid,
                          struct proto_submit *submit, uint64_t now_ns)
{
    struct stream *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->owner = owner;
    s->ev = ev;
    s->cid = *cid;
    s->worker = -1;
    s->state = STREAM_QUEUED;
    s->req_id = ++t->next_req_id;
    s->t_submit_ns = now_ns;
    s->submit = *submit;
    s->submit.id = s->req_id;
    /* The first AFFINITY_BYTES of what the worker will tokenize (a shared
     * system prompt, usually).  Shorter prompts span a block or two of the
     * cache at most: they go to the least loaded worker. */
    const char *text = submit->messages.len ? submit->messages.p : submit->prompt;
    size_t tl = submit->messages.len ? submit->messages.len : submit->prompt_len;
    if (text && tl >= AFFINITY_BYTES)
        s->affinity = hash_bytes(text, AFFINITY_BYTES) | 1;
    /* Every request has a seed, so that running it again gives the same
     * tokens: the client's, or one drawn here and kept. */
    if (!s->submit.has_seed) {
        if (getrandom(&s->submit.seed, sizeof s->submit.seed, 0) != sizeof s->submit.seed)
            s->submit.seed = hash_u64(now_ns ^ s->req_id);
        s->submit.has_seed = true;
    }
    if (map_put(t, s)) {
        free(s);
        return NULL;
    }
    submit->prompt = NULL; /* the stream owns them now */
    submit->messages = (struct proto_text){0};
    submit->tools = (struct proto_text){0};
    return s;
}

/* s ends: what its worker or the routing decided. */
static void conclude(struct stream_table *t, struct stream *s, int code, int finish, const char *msg)
{
    if (s->state == STREAM_DONE)
        return;
    if (s->waiting_since_ns) {
        s->waiting_since_ns = 0;
        t->waiting--;
    }
    s->state = STREAM_DONE;
    if (s->worker >= 0) { /* its worker is done with it (a kept stream is not its load) */
        transport_inflight(t->tp, s->worker, -1);
        s->worker = -1;
    }
    if (s->detached_ns && !s->retired) { /* ended with nobody to tell: only kept now */
        s->retired = true;
        t->retired++;
    }
    s->term_code = code;
    s->finish = finish;
    snprintf(s->term_msg, sizeof s->term_msg, "%s", msg ? msg : "");
    s->t_last_ns = s->t_last_ns ? s->t_last_ns : clock_ns();
    s->ev->ended(s->ev->ctx, s);
}

/* The gateway ends s (its client cannot take it): the worker stops too. */
void stream_end(struct stream_table *t, struct stream *s, int code, int finish, const char *msg)
{
    stream_cancel(t, s);
    conclude(t, s, code, finish, msg);
}

bool stream_recoverable(const struct stream *s)
{
    return !s->term_final && rill_err_recoverable(rill_err_wire(s->term_code));
}

/* The records of the last FAILOVER_PRIOR positions delivered, for the new
 * worker to keep (proto.h: submit.prior): if this gateway dies too before
 * its client has them, a new one still finds them there. */
static int prior_records(const struct stream *s, struct obuf *out)
{
    uint32_t from = s->next_pos > FAILOVER_PRIOR ? s->next_pos - FAILOVER_PRIOR : 0;
    for (uint32_t pos = from; pos < s->next_pos; pos++) {
        size_t len;
        const unsigned char *r = log_record(s, pos, &len);
        if (!r)
            continue;
        unsigned char hdr[4] = {(unsigned char)len, (unsigned char)(len >> 8), (unsigned char)(len >> 16),
                                (unsigned char)(len >> 24)};
        if (obuf_put(out, hdr, 4) || obuf_put(out, r, len))
            return RILL_E_NOMEM;
    }
    return 0;
}

/* Send s to the least-loaded worker that has not refused it.  When none
 * can take it: a stream failing over waits (may_wait) while a worker is
 * ready or can come back; any other ends with the reason. */
static void route(struct stream_table *t, struct stream *s, uint64_t now_ns, bool may_wait)
{
    for (;;) {
        int w = transport_pick_affine(t->tp, s->tried, s->affinity);
        if (w < 0) {
            bool any = transport_ready(t->tp) > 0, back = transport_can_come_back(t->tp);
            if (may_wait && s->refusal != RILL_E_SHUTTING_DOWN && (any || back) && t->failover_timeout_ns) {
                if (!s->waiting_since_ns) {
                    s->waiting_since_ns = now_ns;
                    t->waiting++;
                }
            } else if (s->failovers) {
                s->term_final = !any && !back;
                conclude(t, s, RILL_E_WORKER_LOST, PROTO_FINISH_ERROR,
                         "the worker running this generation stopped, and no worker can take it over");
            } else if (s->refusal == RILL_E_SHUTTING_DOWN) {
                conclude(t, s, RILL_E_SHUTTING_DOWN, PROTO_FINISH_ERROR, "the workers are shutting down");
            } else if (any || back) {
                conclude(t, s, any ? RILL_E_OVERLOADED : RILL_E_NO_WORKER, PROTO_FINISH_ERROR,
                         any ? "every worker is busy: try again" : "no worker is ready");
            } else {
                s->term_final = true;
                conclude(t, s, RILL_E_NO_WORKER, PROTO_FINISH_ERROR,
                         "no worker is ready, and none will come back (the supervisor gave up on them)");
            }
            return;
        }
        s->worker = w;
        s->tried |= 1ull << w;
        if (s->failovers) { /* the tokens delivered so far are the rest of the prompt */
            s->submit.prompt_tokens = s->ids;
            s->submit.n_prompt_tokens = s->next_pos;
            s->submit.skip = s->next_pos;
        }
        struct proto_msg m = {.type = PROTO_SUBMIT};
        m.u.submit = s->submit;
        /* A stream its worker left has a client waiting mid-answer (or
         * since before the newer requests came): ahead of them in the new
         * worker's queue. */
        if (s->failovers)
            m.u.submit.priority = FAILOVER_PRIORITY;
        struct obuf prior = {0};
        if (s->failovers && prior_records(s, &prior) == 0 && prior.len)
            m.u.submit.prior = (struct proto_text){(const char *)obuf_data(&prior), (uint32_t)prior.len};
        int rc = transport_send(t->tp, w, &m);
        obuf_free(&prior);
        rlog_debug("request %llu (%s) to worker %s: %s", (unsigned long long)s->req_id, s->cid.s,
                   transport_worker_id(t->tp, w), rill_err_name(rc));
        if (rc == 0) {
            transport_inflight(t->tp, w, +1);
            s->awaiting_reply = true;
            if (s->waiting_since_ns) {
                s->waiting_since_ns = 0;
                t->waiting--;
            }
            return;
        }
        rlog_warn("cannot send request to worker %s: %s", transport_worker_id(t->tp, w), rill_err_name(rc));
        s->worker = -1;
    }
}

void stream_start(struct stream_table *t, struct stream *s)
{
    assert(s->state == STREAM_QUEUED && s->worker < 0);
    route(t, s, clock_ns(), false);
}

/* s's worker is gone: run it again elsewhere from what was delivered. */
static void failover(struct stream_table *t, struct stream *s, uint64_t now_ns)
{
    if (s->worker >= 0)
        transport_inflight(t->tp, s->worker, -1);
    s->worker = -1;
    s->awaiting_reply = false;
    s->tried = 0;
    s->refusal = 0;
    if (s->next_pos >= s->submit.max_tokens) { /* all delivered but the end */
        conclude(t, s, 0, PROTO_FINISH_LENGTH, NULL);
        return;
    }
    s->failovers++;
    t->failovers++;
    rlog_info("request %llu (%s): its worker stopped; running it again from position %u", (unsigned long long)s->req_id,
              s->cid.s, s->next_pos);
    route(t, s, now_ns, true);
}

/* Release the detached streams whose window has passed (once a second). */
static void sweep_detached(struct stream_table *t, uint64_t now_ns)
{
    if (!t->detached || now_ns < t->next_sweep_ns)
        return;
    t->next_sweep_ns = now_ns + 1000000000ull;
    for (uint32_t i = 0; i < t->cap && t->detached; i++) {
        struct stream *s = t->map[i];
        if (s && s != TOMB && s->detached_ns && now_ns > s->detached_ns &&
            now_ns - s->detached_ns > t->resume_window_ns) {
            rlog_debug("request %llu: nobody resumed it within resume_window_s: %s", (unsigned long long)s->req_id,
                       s->state == STREAM_DONE ? "dropped" : "cancelled");
            stream_release(t, s); /* cancels it at its worker if it still runs */
        }
    }
}

void stream_table_tick(struct stream_table *t, uint64_t now_ns)
{
    sweep_detached(t, now_ns);
    if (!t->waiting)
        return;
    for (uint32_t i = 0; i < t->cap && t->waiting; i++) {
        struct stream *s = t->map[i];
        if (!s || s == TOMB || !s->waiting_since_ns)
            continue;
        /* waiting_since may be later than now: a worker went down while
         * this tick ran (clock read before it). */
        if (now_ns > s->waiting_since_ns && now_ns - s->waiting_since_ns > t->failover_timeout_ns) {
            char m[160];
            snprintf(m, sizeof m,
                     "the worker running this generation stopped, and no worker took it over within "
                     "failover_timeout_s (%llu s)",
                     (unsigned long long)(t->failover_timeout_ns / 1000000000ull));
            conclude(t, s, RILL_E_WORKER_LOST, PROTO_FINISH_ERROR, m);
            continue;
        }
        s->tried = 0;
        route(t, s, now_ns, true);
    }
}

void stream_cancel(struct stream_table *t, struct stream *s)
{
    /* The worker ignores a second cancel of the same request. */
    if (s->worker < 0 || s->state == STREAM_DONE)
        return;
    struct proto_msg m = {.type = PROTO_CANCEL};
    m.u.cancel.id = s->req_id;
    transport_send(t->tp, s->worker, &m);
}

void stream_release(struct stream_table *t, struct stream *s)
{
    stream_cancel(t, s);
    if (s->waiting_since_ns)
        t->waiting--;
    if (s->detached_ns)
        t->detached--;
    if (s->retired)
        t->retired--;
    t->log_total -= s->log.len;
    map_del(t, s->req_id);
    if (s->worker >= 0)
        transport_inflight(t->tp, s->worker, -1);
    free_stream(s);
}

/* The stream's memory, and nothing else. */
static void free_stream(struct stream *s)
{
    reclog_free(&s->log);
    obuf_free(&s->out.pending);
    free(s->out.pend_gen_ns);
    free((void *)s->submit.prompt);
    free((void *)s->submit.messages.p);
    free((void *)s->submit.tools.p);
    free(s->lat_ms);
    free(s->ids);
    free(s);
}

/* --- records ---------------------------------------------------------------------------------- */

/* A request a previous gateway process left on `worker` (its replay, see
 * worker/journal.h): kept detached, as if its client had dropped, for a
 * resume.  The submit runs it again from where it is: prompt_tokens are its
 * output so far. */
static void adopt(struct stream_table *t, int worker, struct proto_submit *sub)
{
    if (!t->resume_window_ns)
        return;
    struct stream *had = map_get(t, sub->id);
    if (had) {
        /* Two workers replay it (a cancel that never reached the one it
         * left, which then still kept it): the first is kept, and said. */
        if (had->adopted)
            rlog_warn("request %llu: replayed by two workers; kept the first", (unsigned long long)sub->id);
        return;
    }
    struct stream *s = calloc(1, sizeof *s);
    if (!s)
        return;
    s->req_id = sub->id;
    s->worker = worker;
    s->tried = 1ull << worker;
    s->state = STREAM_QUEUED;
    s->awaiting_reply = true;
    s->adopted = s->adopt_first = true;
    s->t_submit_ns = clock_ns();
    s->cid.present = true;
    snprintf(s->cid.s, sizeof s->cid.s, "%016llx", (unsigned long long)sub->id);
    for (uint32_t i = 0; i < sub->n_prompt_tokens; i++)
        if (keep_id(s, i, sub->prompt_tokens[i])) {
            free_stream(s);
            return;
        }
    s->next_pos = sub->n_prompt_tokens;
    s->submit = *sub;
    s->submit.prompt_tokens = NULL; /* a failover adds the ids again (route) */
    s->submit.n_prompt_tokens = 0;
    s->submit.skip = 0;
    s->submit.prior = (struct proto_text){0};
    s->failovers = 0;
    const char *text = sub->messages.len ? sub->messages.p : sub->prompt;
    size_t tl = sub->messages.len ? sub->messages.len : sub->prompt_len;
    if (text && tl >= AFFINITY_BYTES)
        s->affinity = hash_bytes(text, AFFINITY_BYTES) | 1;
    if (map_put(t, s)) {
        s->submit.prompt = NULL;
        s->submit.messages = (struct proto_text){0};
        s->submit.tools = (struct proto_text){0};
        free_stream(s);
        return;
    }
    sub->prompt = NULL; /* the stream owns them now */
    sub->messages = (struct proto_text){0};
    sub->tools = (struct proto_text){0};
    transport_inflight(t->tp, worker, +1);
    stream_detach(t, s, s->t_submit_ns);
    rlog_info("request %llu: adopted from worker %s at position %u, for a resume", (unsigned long long)s->req_id,
              transport_worker_id(t->tp, worker), s->next_pos);
}

void stream_on_msg(struct stream_table *t, int worker, struct proto_msg *m)
{
    if (m->type == PROTO_SUBMIT) {
        adopt(t, worker, &m->u.submit);
        return;
    }
    if (m->type == PROTO_ACCEPTED) {
        struct stream *s = map_get(t, m->u.accepted.id);
        if (s && s->worker == worker && s->state == STREAM_QUEUED) {
            s->state = STREAM_ACCEPTED;
            s->ev->accepted(s->ev->ctx, s);
        }
        return;
    }
    if (m->type != PROTO_REJECTED)
        return;
    struct stream *s = map_get(t, m->u.rejected.id);
    if (!s || s->worker != worker || !s->awaiting_reply)
        return;
    s->awaiting_reply = false;
    int code = m->u.rejected.code;
    transport_inflight(t->tp, worker, -1);
    s->worker = -1;
    if (code == RILL_E_OVERLOADED || code == RILL_E_SHUTTING_DOWN) {
        s->refusal = code;
        route(t, s, clock_ns(), s->failovers > 0); /* another worker may have room */
        return;
    }
    conclude(t, s, code, PROTO_FINISH_ERROR, m->u.rejected.message);
}

/* The figures the summary needs, per token. */
static void note_token(struct stream *s, const struct proto_token *tk, uint64_t now_ns)
{
    if (!s->t_first_ns)
        s->t_first_ns = now_ns;
    s->t_last_ns = now_ns;
    double ms = tk->latency_us / 1000.0;
    if (s->n_tokens >= s->lat_cap) {
        uint32_t cap = s->lat_cap ? s->lat_cap * 2 : 64;
        float *a = realloc(s->lat_ms, cap * sizeof *a);
        if (a) {
            s->lat_ms = a;
            s->lat_cap = cap;
        }
    }
    if (s->n_tokens < s->lat_cap)
        s->lat_ms[s->n_tokens] = (float)ms;
    s->lat_sum_ms += ms;
    s->n_tokens++;
    if (tk->mem_mb > s->max_mem_mb)
        s->max_mem_mb = tk->mem_mb;
    for (int i = 0; i < 8; i++)
        if (s->batch_cnt[i] == 0 || s->batch_val[i] == tk->batch) {
            s->batch_val[i] = tk->batch;
            s->batch_cnt[i]++;
            break;
        }
}

/* Drop the older half of s's log. */
static void log_drop_front(struct stream_table *t, struct stream *s)
{
    uint32_t k;
    t->log_total -= reclog_drop_front(&s->log, &k);
    s->log_first += k;
}

/* Keep token record tk in s's log, for resumes (within the caps: the
 * oldest go first). */
static int log_append(struct stream_table *t, struct stream *s, const struct proto_token *tk)
{
    if (!t->resume_window_ns)
        return 0;
    size_t need = proto_token_size(tk->n_top, tk->text_len);
    if (s->log.n == 0)
        s->log_first = tk->position;
    while (s->log.n && (s->log.len + need > t->log_cap || t->log_total + need > t->log_total_cap))
        log_drop_front(t, s);
    if (need > t->log_cap || t->log_total + need > t->log_total_cap) {
        s->log_first = tk->position + 1; /* nothing kept: resumes from here on only */
        return 0;
    }
    if (s->log.n == 0)
        s->log_first = tk->position;
    unsigned char *d = reclog_reserve(&s->log, need);
    if (!d)
        return RILL_E_NOMEM;
    int n = proto_token_encode(d, need, tk);
    if (n < 0)
        return n;
    reclog_commit(&s->log, (size_t)n);
    t->log_total += (size_t)n;
    return 0;
}

/* The kept record of position pos, encoded: NULL when it is not kept. */
static const unsigned char *log_record(const struct stream *s, uint32_t pos, size_t *len)
{
    if (pos < s->log_first || pos - s->log_first >= s->log.n)
        return NULL;
    return reclog_get(&s->log, pos - s->log_first, len);
}

int stream_log_get(const struct stream *s, uint32_t pos, struct proto_token *tk)
{
    size_t len;
    const unsigned char *r = log_record(s, pos, &len);
    if (!r)
        return RILL_E_NOT_FOUND;
    return proto_token_decode(r, len, tk) ? RILL_E_BAD_FORMAT : 0;
}

/* --- resume ------------------------------------------------------------------------------ */

void stream_table_resume(struct stream_table *t, uint64_t window_ns, size_t log_cap, size_t log_total_cap)
{
    t->resume_window_ns = window_ns;
    t->log_cap = log_cap;
    t->log_total_cap = log_total_cap;
}

void stream_table_key(struct stream_table *t, const uint8_t key[STREAM_KEY_LEN])
{
    memcpy(t->key, key, STREAM_KEY_LEN);
}

/* The MAC of (request id, key name): hex, 32 digits and a NUL. */
static void token_mac(const struct stream_table *t, uint64_t id, const char *key_name, char out[33])
{
    unsigned char in[8 + sizeof ((struct stream *)0)->key_name];
    size_t kl = strnlen(key_name, sizeof ((struct stream *)0)->key_name);
    for (int i = 0; i < 8; i++)
        in[i] = (unsigned char)(id >> (8 * i));
    memcpy(in + 8, key_name, kl);
    uint8_t mac[16];
    siphash128(t->key, in, 8 + kl, mac);
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", mac[i]);
}

void stream_resume_token(const struct stream_table *t, const struct stream *s, char out[STREAM_TOKEN_LEN])
{
    char mac[33];
    token_mac(t, s->req_id, s->key_name, mac);
    snprintf(out, STREAM_TOKEN_LEN, "%016llx.%s", (unsigned long long)s->req_id, mac);
}

/* Equal in time that does not depend on where they differ. */
static bool same_mac(const char *a, const char *b)
{
    unsigned char d = 0;
    for (int i = 0; i < 32; i++)
        d |= (unsigned char)(a[i] ^ b[i]);
    return d == 0;
}

struct stream *stream_by_token(struct stream_table *t, const char *token, const char *key_name, bool *genuine)
{
    *genuine = false;
    if (strlen(token) != STREAM_TOKEN_LEN - 1 || token[16] != '.')
        return NULL;
    char hex[17];
    memcpy(hex, token, 16);
    hex[16] = 0;
    char *end;
    uint64_t id = strtoull(hex, &end, 16);
    if (*end)
        return NULL;
    /* The MAC binds the token to the key it was given under: another key's
     * holder cannot use it, here or after a restart. */
    char mac[33];
    token_mac(t, id, key_name ? key_name : "", mac);
    if (!same_mac(mac, token + 17))
        return NULL;
    *genuine = true;
    struct stream *s = map_get(t, id);
    if (s && s->adopted && !s->key_name[0] && key_name)
        snprintf(s->key_name, sizeof s->key_name, "%s", key_name); /* learnt from its first resume */
    return s && !strcmp(s->key_name, key_name ? key_name : "") ? s : NULL;
}

static void no_accepted(void *ctx, struct stream *s) { (void)ctx, (void)s; }
static int no_token(void *ctx, struct stream *s, const struct proto_token *t, uint64_t now_ns)
{
    (void)ctx, (void)s, (void)t, (void)now_ns;
    return 0;
}
static void no_ended(void *ctx, struct stream *s) { (void)ctx, (void)s; }

/* What a stream without an owner tells: nothing (its log keeps the tokens). */
static const struct stream_events detached_events = {NULL, no_accepted, no_token, no_ended};

void stream_detach(struct stream_table *t, struct stream *s, uint64_t now_ns)
{
    if (!t->resume_window_ns) {
        stream_release(t, s);
        return;
    }
    s->owner = NULL;
    s->ev = &detached_events;
    s->next = NULL;
    obuf_free(&s->out.pending);
    s->out.n_pending = 0;
    if (!s->detached_ns)
        t->detached++;
    s->detached_ns = now_ns ? now_ns : 1;
}

void stream_retire(struct stream_table *t, struct stream *s, uint64_t now_ns)
{
    assert(s->state == STREAM_DONE);
    if (!t->resume_window_ns) {
        stream_release(t, s);
        return;
    }
    if (!s->retired)
        t->retired++;
    s->retired = true;
    stream_detach(t, s, now_ns);
}

void stream_attach(struct stream_table *t, struct stream *s, void *owner, const struct stream_events *ev)
{
    assert(s->detached_ns);
    s->detached_ns = 0;
    t->detached--;
    if (s->retired)
        t->retired--;
    s->retired = false;
    s->owner = owner;
    s->ev = ev;
    t->resumes++;
}

/* Keep the id of the token at position pos (for running it again). */
static int keep_id(struct stream *s, uint32_t pos, int32_t id)
{
    if (pos >= s->ids_cap) {
        uint32_t cap = s->ids_cap ? s->ids_cap * 2 : 64;
        while (cap <= pos)
            cap *= 2;
        int32_t *a = realloc(s->ids, cap * sizeof *a);
        if (!a)
            return RILL_E_NOMEM;
        s->ids = a;
        s->ids_cap = cap;
    }
    s->ids[pos] = id;
    return 0;
}

void stream_on_token(struct stream_table *t, int worker, const struct proto_token *tk, uint64_t now_ns)
{
    struct stream *s = map_get(t, tk->req_id);
    if (!s || s->state == STREAM_DONE || s->worker != worker)
        return; /* abandoned by its client, ended, or from a worker it left */
    if (s->state == STREAM_QUEUED) {
        /* The ring carries a request's accepted ahead of its tokens: a token
         * first is a worker's bug, not a race. */
        rlog_warn("request %llu: a token before its accepted: dropped", (unsigned long long)tk->req_id);
        return;
    }
    if (s->adopt_first && tk->token_id >= 0) {
        /* The first kept record of an adopted stream: its log starts here
         * (its ids before are known from the submit). */
        s->adopt_first = false;
        if (tk->position <= s->next_pos)
            s->next_pos = tk->position;
    }
    if (tk->token_id >= 0) {
        if (tk->position < s->next_pos) {
            /* Delivered already (cannot happen with one record stream per
             * worker); the same token, or the run is not reproducible. */
            if (tk->position < s->ids_cap && tk->token_id != s->ids[tk->position])
                rlog_error("request %llu: position %u came again as token %d, not %d: the run is not "
                           "reproducible", (unsigned long long)tk->req_id, tk->position, tk->token_id,
                           s->ids[tk->position]);
            return;
        }
        if (tk->position != s->next_pos)
            rlog_warn("request %llu: token position %u, expected %u", (unsigned long long)tk->req_id, tk->position,
                      s->next_pos);
        if (keep_id(s, tk->position, tk->token_id) || log_append(t, s, tk)) {
            stream_end(t, s, RILL_E_INTERNAL, PROTO_FINISH_ERROR, "out of memory");
            return;
        }
        s->next_pos = tk->position + 1;
        s->state = STREAM_STREAMING;
        note_token(s, tk, now_ns);
        if (s->ev->token(s->ev->ctx, s, tk, now_ns))
            return;
    }
    if (tk->flags & PROTO_TOK_LAST) {
        if (tk->flags & PROTO_TOK_ERROR)
            conclude(t, s, tk->error, proto_tok_finish(tk->flags), rill_err_name(tk->error));
        else
            conclude(t, s, 0, proto_tok_finish(tk->flags), NULL);
    }
}

void stream_worker_lost(struct stream_table *t, int worker)
{
    uint64_t now = clock_ns();
    for (uint32_t i = 0; i < t->cap; i++) {
        struct stream *s = t->map[i];
        if (s && s != TOMB && s->worker == worker && s->state != STREAM_DONE)
            failover(t, s, now);
    }
}

/* --- the summary ------------------------------------------------------------------------------ */

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

void stream_summary(struct stream *s, struct stream_summary *u)
{
    memset(u, 0, sizeof *u);
    u->total_tokens = s->n_tokens;
    uint64_t end = s->t_last_ns ? s->t_last_ns : s->t_submit_ns;
    u->duration_s = (double)(end - s->t_submit_ns) / 1e9;
    u->ttft_ms = s->t_first_ns ? (double)(s->t_first_ns - s->t_submit_ns) / 1e6 : 0;
    uint32_t n = s->n_tokens < s->lat_cap ? s->n_tokens : s->lat_cap;
    if (n) {
        u->avg_ms = s->lat_sum_ms / s->n_tokens;
        qsort(s->lat_ms, n, sizeof *s->lat_ms, cmp_float);
        u->p95_ms = s->lat_ms[procstat_rank(n, 0.95)];
        u->avg_tps = s->lat_sum_ms > 0 ? s->n_tokens * 1000.0 / s->lat_sum_ms : 0;
    }
    u->e2e_tps = u->duration_s > 0 ? s->n_tokens / u->duration_s : 0;
    u->max_mem_mb = s->max_mem_mb;
    u->errors = s->term_code ? 1 : 0;
    uint32_t best = 0;
    for (int i = 0; i < 8; i++)
        if (s->batch_cnt[i] > best) {
            best = s->batch_cnt[i];
            u->batch = s->batch_val[i];
        }
}
