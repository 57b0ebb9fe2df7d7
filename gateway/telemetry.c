/* telemetry.c — see telemetry.h. */
#include "telemetry.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/jsonw.h"
#include "common/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void telemetry_init(struct telemetry *t, const struct rill_config *c, struct metrics *m, uint64_t seed)
{
    memset(t, 0, sizeof *t);
    t->c = c;
    t->m = m;
    hist_init(&t->ttft_us);
    hist_init(&t->itl_us);
    hist_init(&t->gen_itl_us);
    t->rng = 0x9e3779b97f4a7c15ull ^ seed;
    t->prev_ns = clock_ns();
    t->next_ns = t->prev_ns + 1000000000ull;
}

void telemetry_fini(struct telemetry *t)
{
    free(t->subs);
    t->subs = NULL;
    t->n_subs = t->cap_subs = 0;
}

bool telemetry_sample(struct telemetry *t)
{
    double rate = t->c->telemetry ? t->c->sampling_rate : 0;
    if (rate >= 1)
        return true;
    if (rate <= 0)
        return false;
    uint64_t x = t->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    t->rng = x;
    return (double)(x >> 11) * 0x1.0p-53 < rate;
}

void telemetry_token(struct telemetry *t, uint64_t gen_itl_us)
{
    hist_record(&t->m->gen_itl_us, gen_itl_us);
    hist_record(&t->gen_itl_us, gen_itl_us);
}

void telemetry_delivery(struct telemetry *t, uint64_t delivery_us)
{
    hist_record(&t->m->itl_us, delivery_us);
    hist_record(&t->itl_us, delivery_us);
}

void telemetry_ttft(struct telemetry *t, uint64_t ttft_us)
{
    hist_record(&t->m->ttft_us, ttft_us);
    hist_record(&t->ttft_us, ttft_us);
}

int telemetry_subscribe(struct telemetry *t, struct writer *w, bool on)
{
    size_t i = 0;
    while (i < t->n_subs && t->subs[i] != w)
        i++;
    if (on == (i < t->n_subs))
        return 0;
    if (!on) {
        t->subs[i] = t->subs[--t->n_subs];
        return 0;
    }
    if (t->n_subs == t->cap_subs) {
        size_t cap = t->cap_subs ? 2 * t->cap_subs : 8;
        struct writer **a = realloc(t->subs, cap * sizeof *a);
        if (!a)
            return RILL_E_NOMEM;
        t->subs = a;
        t->cap_subs = cap;
    }
    t->subs[t->n_subs++] = w;
    /* The first snapshot right away: a dashboard has something to show. */
    t->snapshot_now = true;
    return 0;
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

/* Start the next one-second window of the snapshot's rates and percentiles. */
static void next_window(struct telemetry *t, uint64_t now)
{
    hist_reset(&t->ttft_us);
    hist_reset(&t->itl_us);
    hist_reset(&t->gen_itl_us);
    t->prev = *t->m;
    t->prev_ns = now;
    t->next_ns = now + 1000000000ull;
}

void telemetry_tick(struct telemetry *t, uint64_t now, const struct telemetry_gauges *g)
{
    if (!t->n_subs) {
        /* Nobody listens: keep the windows from growing stale. */
        if (now >= t->next_ns)
            next_window(t, now);
        return;
    }
    if (now < t->next_ns && !t->snapshot_now)
        return;
    t->snapshot_now = false;
    double secs = (double)(now - t->prev_ns) / 1e9;
    if (secs < 0.001)
        secs = 0.001;
    const struct metrics *m = t->m, *p = &t->prev;
    const char *sup = g->supervisor_json;
    size_t sl = sup ? g->supervisor_json_len : 0;
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
    jsonw_key_uint(&w, "active_streams", g->active_streams);
    jsonw_key_uint(&w, "connections", g->connections);
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
    jsonw_key_int(&w, "workers_ready", g->workers_ready);
    jsonw_obj_end(&w);
    if (sl) {
        jsonw_key(&w, "supervisor");
        jsonw_raw(&w, sup, sl);
    }
    jsonw_obj_end(&w);
    if (jsonw_ok(&w)) {
        /* Backwards: a slow subscriber may leave the list meanwhile. */
        for (size_t i = t->n_subs; i-- > 0;) {
            if (i >= t->n_subs)
                continue;
            struct obuf b = {0};
            if (obuf_put(&b, buf, jsonw_len(&w)) == 0)
                writer_queue(t->subs[i], &b, false);
        }
    } else {
        rlog_warn("telemetry snapshot did not fit %zu bytes", cap);
    }
    free(buf);
    next_window(t, now);
}
