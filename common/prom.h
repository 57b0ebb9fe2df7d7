/* prom.h — writing metrics in the Prometheus text exposition format
 * (version 0.0.4): families with # HELP and # TYPE, samples with labels,
 * histograms as _bucket{le=...} / _sum / _count.
 *
 * Output goes to a growable buffer; nothing here keeps state between
 * scrapes, so every process renders its own counters the same way.
 */
#ifndef RILL_PROM_H
#define RILL_PROM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hist.h"

struct prom_buf {
    char *p;
    size_t len, cap;
    bool oom;   /* an allocation failed: the text is incomplete */
};

void prom_init(struct prom_buf *b);
void prom_free(struct prom_buf *b);
void prom_printf(struct prom_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* "# HELP name help" and "# TYPE name type" (type: counter, gauge, histogram). */
void prom_family(struct prom_buf *b, const char *name, const char *type, const char *help);

/* "name{labels} value" — labels is the inside of the braces (`code="x"`) or
 * NULL.  Values print as integers when they are whole. */
void prom_sample(struct prom_buf *b, const char *name, const char *labels, double value);

/* One family + sample. */
void prom_counter(struct prom_buf *b, const char *name, const char *help, double value);
void prom_gauge(struct prom_buf *b, const char *name, const char *help, double value);

/* A histogram family from `h`, whose samples are in units of which
 * `units_per_second` make a second (h should have been set up with
 * hist_init_prom(h, units_per_second) so the le counts are exact).  Writes
 * the HELP/TYPE lines when `help` is not NULL (pass NULL for a second
 * labelled series of the same family). */
void prom_histogram(struct prom_buf *b, const char *name, const char *help, const char *labels,
                    const struct hist *h, double units_per_second);

/* The same with explicit upper bounds `le` (n of them, ascending, in the
 * histogram's units; written divided by `unit_scale`), for distributions
 * that are not latencies (batch sizes). */
void prom_histogram_bounds(struct prom_buf *b, const char *name, const char *help, const char *labels,
                           const struct hist *h, const uint64_t *le, size_t n, double unit_scale);

/* Escape a label value (backslash, quote, newline) into out. */
void prom_label_escape(const char *in, char *out, size_t cap);

#endif
