/* prom.c — see prom.h. */
#include "prom.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void prom_init(struct prom_buf *b) { memset(b, 0, sizeof *b); }

void prom_free(struct prom_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

void prom_printf(struct prom_buf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (int tries = 0; tries < 2; tries++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if (b->p && (size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap : 4096;
        while (cap - b->len <= (size_t)n)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

void prom_family(struct prom_buf *b, const char *name, const char *type, const char *help)
{
    prom_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void value_text(double v, char *out, size_t n)
{
    if (isnan(v))
        snprintf(out, n, "NaN");
    else if (isinf(v))
        snprintf(out, n, v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 1e15)
        snprintf(out, n, "%.0f", v);
    else
        snprintf(out, n, "%.9g", v);
}

void prom_sample(struct prom_buf *b, const char *name, const char *labels, double value)
{
    char v[48];
    value_text(value, v, sizeof v);
    if (labels && labels[0])
        prom_printf(b, "%s{%s} %s\n", name, labels, v);
    else
        prom_printf(b, "%s %s\n", name, v);
}

void prom_counter(struct prom_buf *b, const char *name, const char *help, double value)
{
    prom_family(b, name, "counter", help);
    prom_sample(b, name, NULL, value);
}

void prom_gauge(struct prom_buf *b, const char *name, const char *help, double value)
{
    prom_family(b, name, "gauge", help);
    prom_sample(b, name, NULL, value);
}

void prom_histogram(struct prom_buf *b, const char *name, const char *help, const char *labels,
                    const struct hist *h, double units_per_second)
{
    uint64_t le[HIST_PROM_LE_COUNT];
    for (int i = 0; i < HIST_PROM_LE_COUNT; i++)
        le[i] = (uint64_t)llround(hist_prom_le_seconds[i] * units_per_second);
    prom_histogram_bounds(b, name, help, labels, h, le, HIST_PROM_LE_COUNT, units_per_second);
}

void prom_histogram_bounds(struct prom_buf *b, const char *name, const char *help, const char *labels,
                           const struct hist *h, const uint64_t *le, size_t n, double unit_scale)
{
    if (help)
        prom_family(b, name, "histogram", help);
    uint64_t cum[64];
    if (n > 64)
        n = 64;
    hist_cumulative(h, le, n, cum);
    const char *sep = labels && labels[0] ? "," : "";
    const char *lab = labels ? labels : "";
    for (size_t i = 0; i < n; i++)
        prom_printf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, lab, sep, (double)le[i] / unit_scale,
                    (unsigned long long)cum[i]);
    prom_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, lab, sep, (unsigned long long)h->count);
    char sum[48];
    value_text((double)h->sum / unit_scale, sum, sizeof sum);
    if (labels && labels[0]) {
        prom_printf(b, "%s_sum{%s} %s\n", name, labels, sum);
        prom_printf(b, "%s_count{%s} %llu\n", name, labels, (unsigned long long)h->count);
    } else {
        prom_printf(b, "%s_sum %s\n", name, sum);
        prom_printf(b, "%s_count %llu\n", name, (unsigned long long)h->count);
    }
}

void prom_label_escape(const char *in, char *out, size_t cap)
{
    size_t o = 0;
    for (; *in && o + 3 < cap; in++) {
        if (*in == '\\' || *in == '"') {
            out[o++] = '\\';
            out[o++] = *in;
        } else if (*in == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else {
            out[o++] = *in;
        }
    }
    out[o] = 0;
}
