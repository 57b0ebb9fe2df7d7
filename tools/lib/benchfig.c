/* benchfig.c — see benchfig.h. */
#include "benchfig.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

double benchfig_num(const cJSON *o, const char *path)
{
    char key[64];
    while (o && *path) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);
        if (n >= sizeof key)
            return NAN;
        memcpy(key, path, n);
        key[n] = 0;
        o = cJSON_GetObjectItemCaseSensitive(o, key);
        path += n + (dot != NULL);
    }
    return cJSON_IsNumber(o) ? o->valuedouble : NAN;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void benchfig_median_noise(double *v, size_t n, double *median, double *noise)
{
    *median = NAN;
    *noise = NAN;
    if (!n)
        return;
    qsort(v, n, sizeof *v, cmp_double);
    *median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    if (n >= 2 && *median != 0)
        *noise = (v[n - 1] - v[0]) / fabs(*median);
}

void benchfig_fmt(char *buf, size_t n, double v, bool count)
{
    double a = fabs(v);
    if (isnan(v))
        snprintf(buf, n, "-");
    else if (a >= 1000 || count || v == 0)
        snprintf(buf, n, "%.0f", v);
    else if (a >= 100)
        snprintf(buf, n, "%.1f", v);
    else if (a >= 1)
        snprintf(buf, n, "%.2f", v);
    else
        snprintf(buf, n, "%.3f", v);
}
