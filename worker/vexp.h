/* vexp.h — expf over arrays, eight or sixteen at a time, with exactly the
 * bits of glibc's expf.
 *
 * The worker's kernels must give the same bits in every instruction set
 * (kern.h), and the softmax and SiLU call expf once per score and per FFN
 * activation: glibc's scalar expf was half of prefill's attention time.  The
 * AVX2 and AVX-512 code here runs the algorithm of the expf that glibc picks
 * on a CPU with FMA and AVX2 (__expf_fma, sysdeps/ieee754/flt-32/e_expf.c
 * built with -mfma: the same table, polynomial, fused operations and
 * special cases), so each lane returns what expf() returns, NaN payloads
 * included (errno aside: the vector code never sets it).  tools/vexp-check.c
 * compares all 2^32 inputs (`make check-vexp`); test_vexp a sample of them.
 *
 * The scalar ISA calls expf() itself.  The vector ISAs need AVX2+FMA, and on
 * such CPUs glibc (2.27 and later) resolves expf to __expf_fma, which is
 * what they reproduce; a C library with another expf would make them
 * differ, which test_vexp would report.
 */
#ifndef RILL_VEXP_H
#define RILL_VEXP_H

#include <stddef.h>

#include "kern.h"

/* y[i] = expf(x[i]) for i < n, with isa's code (kern_isa_supported(isa)
 * must hold).  y may be x. */
void vexp_array(float *y, const float *x, size_t n, enum kern_isa isa);

/* s[i] = expf(s[i] - shift) for i < n: the softmax's exponentials. */
void vexp_shifted(float *s, size_t n, float shift, enum kern_isa isa);

/* g[i] = g[i] / (1 + expf(-g[i])) * u[i] for i < n: SwiGLU's activation,
 * silu(g) * u, each element as that C expression computes it. */
void vexp_silu_mul(float *g, const float *u, size_t n, enum kern_isa isa);

#endif
