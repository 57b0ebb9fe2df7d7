/* vexp-check — compare the vector expf (worker/vexp.h) with glibc's expf on
 * all 2^32 float bit patterns, for each vector ISA this CPU has, and the
 * SiLU (vexp_silu_mul) with the scalar expression on all of them too.
 *
 *   vexp-check [--threads N] [--no-silu]
 *
 * Prints, per ISA, the inputs compared, the mismatches (the first few with
 * their bits), and the seconds spent; exits 1 if any differ.  `make
 * check-vexp` runs it.
 */
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker/kern.h"
#include "worker/vexp.h"

#define CHUNK 65536u
#define NCHUNKS (1u << 16) /* CHUNK * NCHUNKS = 2^32 */
#define SHOW 8

struct check {
    enum kern_isa isa;
    bool silu;
    atomic_uint next;
    atomic_ullong bad;
    atomic_int shown;
};

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static void *check_thread(void *arg)
{
    struct check *c = arg;
    float *x = malloc(CHUNK * sizeof *x), *ref = malloc(CHUNK * sizeof *ref), *got = malloc(CHUNK * sizeof *got);
    /* SiLU's second factor: a fixed finite value, so that NaN and infinity
     * results come from g alone */
    float *u = malloc(CHUNK * sizeof *u);
    for (uint32_t i = 0; i < CHUNK; i++)
        u[i] = 1.0f + (float)(i % 7) * 0.25f;
    for (;;) {
        uint32_t ch = atomic_fetch_add(&c->next, 1);
        if (ch >= NCHUNKS)
            break;
        for (uint32_t i = 0; i < CHUNK; i++) {
            uint32_t b = ch * CHUNK + i;
            memcpy(&x[i], &b, sizeof b);
        }
        if (c->silu) {
            memcpy(ref, x, CHUNK * sizeof *x);
            memcpy(got, x, CHUNK * sizeof *x);
            vexp_silu_mul(ref, u, CHUNK, KERN_SCALAR);
            vexp_silu_mul(got, u, CHUNK, c->isa);
        } else {
            for (uint32_t i = 0; i < CHUNK; i++)
                ref[i] = expf(x[i]); /* glibc's, called here directly */
            vexp_array(got, x, CHUNK, c->isa);
        }
        uint64_t bad = 0;
        for (uint32_t i = 0; i < CHUNK; i++) {
            if (bits(ref[i]) == bits(got[i]))
                continue;
            bad++;
            if (atomic_fetch_add(&c->shown, 1) < SHOW)
                fprintf(stderr, "  %s %s(%a) [0x%08x]: got %a [0x%08x], glibc %a [0x%08x]\n",
                        kern_isa_name(c->isa), c->silu ? "silu" : "expf", x[i], bits(x[i]), got[i], bits(got[i]),
                        ref[i], bits(ref[i]));
        }
        atomic_fetch_add(&c->bad, bad);
    }
    free(x);
    free(ref);
    free(got);
    free(u);
    return NULL;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    int threads = 1;
    bool silu = true;
    static const struct option lo[] = {{"threads", 1, 0, 't'}, {"no-silu", 0, 0, 's'}, {"help", 0, 0, 'h'}, {0}};
    for (int o; (o = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
        if (o == 't' && atoi(optarg) > 0 && atoi(optarg) <= 64) {
            threads = atoi(optarg);
        } else if (o == 's') {
            silu = false;
        } else {
            fprintf(stderr, "usage: vexp-check [--threads N] [--no-silu]\n");
            return 2;
        }
    }
    uint64_t total_bad = 0;
    int runs = 0;
    for (int isa = KERN_AVX2; isa <= KERN_AVX512; isa++) {
        if (!kern_isa_supported((enum kern_isa)isa)) {
            printf("%-7s not supported by this CPU: skipped\n", kern_isa_name((enum kern_isa)isa));
            continue;
        }
        for (int s = 0; s <= (int)silu; s++) {
            struct check c = {.isa = (enum kern_isa)isa, .silu = s};
            double t0 = now();
            pthread_t th[64];
            for (int i = 0; i < threads; i++)
                pthread_create(&th[i], NULL, check_thread, &c);
            for (int i = 0; i < threads; i++)
                pthread_join(th[i], NULL);
            unsigned long long bad = atomic_load(&c.bad);
            printf("%-7s %-4s all 4294967296 inputs: %llu mismatches  (%.1f s, %d thread%s)\n",
                   kern_isa_name(c.isa), s ? "silu" : "expf", bad, now() - t0, threads, threads > 1 ? "s" : "");
            fflush(stdout);
            total_bad += bad;
            runs++;
        }
    }
    if (!runs) {
        printf("no vector ISA on this CPU: nothing to check\n");
        return 0;
    }
    return total_bad ? 1 : 0;
}
