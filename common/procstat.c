/* procstat.c — see procstat.h. */
#include "procstat.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <unistd.h>

/* /proc/PID/<name>, or /proc/self/<name> for pid 0; NULL when it cannot
 * be opened (the process is gone). */
static FILE *proc_open(pid_t pid, const char *name)
{
    char path[64];
    if (pid)
        snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, name);
    else
        snprintf(path, sizeof path, "/proc/self/%s", name);
    return fopen(path, "r");
}

uint64_t procstat_rss(pid_t pid)
{
    FILE *f = proc_open(pid, "statm");
    if (!f)
        return 0;
    unsigned long size, rss;
    int n = fscanf(f, "%lu %lu", &size, &rss);
    fclose(f);
    return n == 2 ? (uint64_t)rss * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

uint64_t procstat_peak_rss(pid_t pid)
{
    FILE *f = proc_open(pid, "status");
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
