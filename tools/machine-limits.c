/* machine-limits — this machine's memory read bandwidth and FP32 FMA peak,
 * measured as /work/shared/ANCHORS.md did (tools/lib/machlim.h), so that
 * engine speeds compare with llama.cpp's as ratios.
 *
 *   machine-limits [--threads N] [--passes N] [--json FILE]
 *
 * Prints each pass (with the CPU other processes used meanwhile) and the
 * medians.  A pass starts only after the machine was quiet (others under
 * 0.1 core) for a second, or after 20 s of waiting (then it says so).
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/err.h"
#include "tools/lib/machlim.h"

#define MAX_PASSES 32

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    int threads = 0, passes = 4;
    const char *json = NULL;
    static const struct option lo[] = {
        {"threads", 1, 0, 't'}, {"passes", 1, 0, 'p'}, {"json", 1, 0, 'j'}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 't': threads = atoi(optarg); break;
        case 'p': passes = atoi(optarg); break;
        case 'j': json = optarg; break;
        default:
            fprintf(stderr, "usage: machine-limits [--threads N] [--passes N] [--json FILE]\n");
            return 2;
        }
    }
    if (passes < 1 || passes > MAX_PASSES) {
        fprintf(stderr, "machine-limits: --passes takes 1..%d\n", MAX_PASSES);
        return 2;
    }
    double bw[MAX_PASSES], pk[MAX_PASSES], p2[MAX_PASSES], p5[MAX_PASSES], oth[MAX_PASSES];
    int n_thr = 0;
    for (int i = 0; i < passes; i++) {
        int waited = 0;
        while (waited < 20 && machlim_busy(1.0) > 0.1)
            waited++;
        struct machlim m;
        int rc = machlim_measure(threads, &m);
        if (rc) {
            fprintf(stderr, "machine-limits: %s\n", rill_err_name(rc));
            return 1;
        }
        bw[i] = m.read_gbs, pk[i] = m.peak, p2[i] = m.peak_avx2, p5[i] = m.peak_avx512, oth[i] = m.others;
        n_thr = m.threads;
        printf("pass %d: read %.1f GB/s [%.1f-%.1f], FMA peak %.0f GFLOP/s (avx2 %.0f, avx512 %.0f), "
               "others %.2f cores%s\n",
               i + 1, m.read_gbs, m.read_min, m.read_max, m.peak, m.peak_avx2, m.peak_avx512, m.others,
               waited >= 20 ? " (machine busy)" : "");
    }
    double mb = median(bw, passes), mp = median(pk, passes), m2 = median(p2, passes), m5 = median(p5, passes),
           mo = median(oth, passes);
    printf("%d threads: read bandwidth %.1f GB/s, FP32 FMA peak %.0f GFLOP/s (avx2 %.0f, avx512 %.0f); "
           "others %.2f cores (median of %d passes)\n",
           n_thr, mb, mp, m2, m5, mo, passes);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) {
            perror(json);
            return 1;
        }
        fprintf(f,
                "{\"threads\": %d, \"passes\": %d, \"read_gb_per_s\": %.2f, \"fma_peak_gflop_per_s\": %.1f, "
                "\"fma_peak_avx2\": %.1f, \"fma_peak_avx512\": %.1f, \"other_processes_cores\": %.2f}\n",
                n_thr, passes, mb, mp, m2, m5, mo);
        fclose(f);
    }
    return 0;
}
