/* procstat.c — see procstat.h. */
#include "procstat.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <unistd.h>

uint64_t procstat_rss(pid_t pid)
{
    char path[64];
    if (pid)
        snprintf(path, sizeof path, "/proc/%d/statm", (int)pid);
    else
        snprintf(path, sizeof path, "/proc/self/statm");
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    unsigned long size, rss;
    int n = fscanf(f, "%lu %lu", &size, &rss);
    fclose(f);
    return n == 2 ? (uint64_t)rss * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

uint64_t procstat_peak_rss(pid_t pid)
{
    char path[64];
    if (pid)
        snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    else
        snprintf(path, sizeof path, "/proc/self/status");
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[256];
    unsigned long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %lu kB", &kb) == 1)
            break;
    fclose(f);
    return (uint64_t)kb * 1024;
}

size_t procstat_rank(size_t n, double q)
{
    assert(n > 0 && q > 0 && q <= 1);
    size_t k = (size_t)ceil(q * (double)n);
    return k ? k - 1 : 0;
}
