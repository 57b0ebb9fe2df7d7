/* telemetry.c — the gateway's per-token records and the telemetry stream
 * (docs/telemetry.md): one JSON snapshot per second to every connection that
 * subscribed, with the last second's rates and latency percentiles and, under
 * a supervisor, its view of memory pressure and the workers.
 *
 * The token path only increments counters and records into histograms
 * (fixed arrays, no allocation, no lock: one thread).  sampling_rate thins
 * the per-token histogram records, never the counters.
 */
#include "gw.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonw.h"
#include "common/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void telemetry_init(struct gw *g)
{
    hist_init(&g->tel.ttft_us);
    hist_init(&g->tel.itl_us);
    hist_init(&g->tel.gen_itl_us);
    g->tel.rng = 0x9e3779b97f4a7c15ull ^ g->next_req_id;
    g->tel.prev_ns = clock_ns();
    g->tel.next_ns = g->tel.prev_ns + 1000000000ull;
}

bool telemetry_sample(struct gw *g)
{
    double rate = g->c->telemetry ? g->c->sampling_rate : 0;
    if (rate >= 1)
        return true;
    if (rate <= 0)
        return false;
    uint64_t x = g->tel.rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    g->tel.rng = x;
    return (double)(x >> 11) * 0x1.0p-53 < rate;
}

void telemetry_token(struct gw *g, uint64_t gen_itl_us)
{
    hist_record(&g->m.gen_itl_us, gen_itl_us);
    hist_record(&g->tel.gen_itl_us, gen_itl_us);
}

void telemetry_delivery(struct gw *g, uint64_t delivery_us)
{
    hist_record(&g->m.itl_us, delivery_us);
    hist_record(&g->tel.itl_us, delivery_us);
}

void telemetry_ttft(struct gw *g, uint64_t ttft_us)
{
    hist_record(&g->m.ttft_us, ttft_us);
    hist_record(&g->tel.ttft_us, ttft_us);
}

void telemetry_subscribe(struct conn *c, bool on)
{
    struct gw *g = c->gw;
    if (on == c->subscribed)
        return;
    if (on) {
        c->sub_prev = NULL;
        c->sub_next = g->tel.subs;
        if (g->tel.subs)
            g->tel.subs->sub_prev = c;
        g->tel.subs = c;
        /* The first snapshot right away: a dashboard has something to show. */
        g->tel.next_ns = 0;
        lws_cancel_service(g->ctx);
    } else {
        if (c->sub_prev)
            c->sub_prev->sub_next = c->sub_next;
        else
            g->tel.subs = c->sub_next;
        if (c->sub_next)
            c->sub_next->sub_prev = c->sub_prev;
        c->sub_prev = c->sub_next = NULL;
    }
    c->subscribed = on;
}

static void percentiles(struct jsonw *w, const char *key, const struct hist *h)
{
    jsonw_key(w, key);
    jsonw_obj_begin(w);
    jsonw_key_double(w, "p50", (double)hist_percentile(h, 0.50) / 1000.0, 3);
    jsonw_key_double(w, "p95", (double)hist_percentile(h, 0.95) / 1000.0, 3);
    jsonw_key_double(w, "p99", (double)hist_percentile(h, 0.99) / 1000.0, 3);
    jsonw_key_uint(w, "count", h->count);
    jsonw_obj_end(w);
}

/* The supervisor's latest JSON (its stats message), when it is fresh enough
 * to be worth showing.  Returns its length (0: none). */
static size_t supervisor_json(const struct gw *g, const char **out)
{
    if (!g->sup_json_len || clock_ns() - g->sup_stats_ns > 5000000000ull)
        return 0;
    *out = g->sup_json;
    return g->sup_json_len;
}

/* Start the next one-second window of the snapshot's rates and percentiles. */
static void next_window(struct gw *g, uint64_t now)
{
    struct gw_tel *t = &g->tel;
    hist_reset(&t->ttft_us);
    hist_reset(&t->itl_us);
    hist_reset(&t->gen_itl_us);
    t->prev = g->m;
    t->prev_ns = now;
    t->next_ns = now + 1000000000ull;
}

void telemetry_tick(struct gw *g, uint64_t now)
{
    struct gw_tel *t = &g->tel;
    if (!t->subs) {
        /* Nobody listens: keep the windows from growing stale. */
        if (now >= t->next_ns)
            next_window(g, now);
        return;
    }
    if (now < t->next_ns)
        return;
    double secs = (double)(now - t->prev_ns) / 1e9;
    if (secs < 0.001)
        secs = 0.001;
    const struct gw_metrics *m = &g->m, *p = &t->prev;
    const char *sup = NULL;
    size_t sl = supervisor_json(g, &sup);
    size_t cap = 64 * 1024 + sl;
    char *buf = malloc(cap);
    if (!buf)
        return;
    struct jsonw w;
    jsonw_init(&w, buf, cap);
    jsonw_obj_begin(&w);
    jsonw_key_str(&w, "type", "telemetry");
    jsonw_key_uint(&w, "time_ms", clock_wall_ns() / 1000000);
    jsonw_key_double(&w, "interval_s", secs, 3);
    jsonw_key(&w, "gateway");
    jsonw_obj_begin(&w);
    jsonw_key_double(&w, "tokens_per_s", (double)(m->tokens - p->tokens) / secs, 1);
    jsonw_key_double(&w, "requests_per_s", (double)(m->requests - p->requests) / secs, 2);
    jsonw_key_double(&w, "completed_per_s", (double)(m->requests_ok - p->requests_ok) / secs, 2);
    jsonw_key_double(&w, "frames_per_s", (double)(m->frames - p->frames) / secs, 1);
    jsonw_key_double(&w, "bytes_out_per_s", (double)(m->bytes_out - p->bytes_out) / secs, 0);
    jsonw_key_uint(&w, "active_streams", g->map_used);
    jsonw_key_uint(&w, "connections", g->n_conns);
    percentiles(&w, "ttft_ms", &t->ttft_us);
    percentiles(&w, "inter_token_ms", &t->gen_itl_us);
    percentiles(&w, "delivery_ms", &t->itl_us);
    jsonw_key(&w, "errors_per_s");
    jsonw_obj_begin(&w);
    for (int i = 0; i < RILL_ERR_COUNT; i++)
        if (m->errors[i] > p->errors[i])
            jsonw_key_double(&w, rill_err_name(-(i + 1)), (double)(m->errors[i] - p->errors[i]) / secs, 2);
    jsonw_obj_end(&w);
    jsonw_key(&w, "errors_total");
    jsonw_obj_begin(&w);
    for (int i = 0; i < RILL_ERR_COUNT; i++)
        if (m->errors[i])
            jsonw_key_uint(&w, rill_err_name(-(i + 1)), m->errors[i]);
    jsonw_obj_end(&w);
    jsonw_key_int(&w, "workers_ready", transport_ready(&g->tp));
    jsonw_obj_end(&w);
    if (sl) {
        jsonw_key(&w, "supervisor");
        jsonw_raw(&w, sup, sl);
    }
    jsonw_obj_end(&w);
    if (jsonw_ok(&w)) {
        for (struct conn *c = t->subs, *next; c; c = next) {
            next = c->sub_next; /* conn_queue may close a slow subscriber */
            struct obuf b = {0};
            if (obuf_put(&b, buf, jsonw_len(&w)) == 0)
                conn_queue(c, &b, false);
        }
    } else {
        rlog_warn("telemetry snapshot did not fit %zu bytes", cap);
    }
    free(buf);
    next_window(g, now);
}
