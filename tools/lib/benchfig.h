/* benchfig.h — what the benchmark tools share when they read results back:
 * a number at a dotted path of a JSON result, and the median and noise of a
 * figure's runs.
 *
 * Noise is (max - min) / |median| of the runs: on a shared machine it is the
 * honest measure of how far apart two runs of the same code land, and what a
 * change must exceed before a comparison calls it real.
 */
#ifndef RILL_BENCHFIG_H
#define RILL_BENCHFIG_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

/* The number at a dotted path of o ("ttft_ms.p50"); NAN when a part of the
 * path is missing, is not an object, or the end is not a number. */
double benchfig_num(const cJSON *o, const char *path);

/* The median and noise of v[0..n).  Sorts v in place.  *median is NAN when
 * n is 0; *noise is NAN below two values or at a zero median. */
void benchfig_median_noise(double *v, size_t n, double *median, double *noise);

/* v with the decimals it deserves ("-" for NAN; counts as integers). */
void benchfig_fmt(char *buf, size_t n, double v, bool count);

#endif
