/* memtune.c — see memtune.h. */
#include "memtune.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TCACHE_KEY "glibc.malloc.tcache_count"

void memtune_apply(char **argv)
{
    const char *off = getenv("RILL_MEMTUNE");
    if (off && !strcmp(off, "0"))
        return;
    const char *cur = getenv("GLIBC_TUNABLES");
    if (cur && strstr(cur, TCACHE_KEY))
        return; /* set already: by us before the exec, by a parent, or by the user */
    char v[4096];
    int n = cur && *cur ? snprintf(v, sizeof v, "%s:" TCACHE_KEY "=0", cur) : snprintf(v, sizeof v, TCACHE_KEY "=0");
    if (n < 0 || (size_t)n >= sizeof v || setenv("GLIBC_TUNABLES", v, 1))
        return;
    execv("/proc/self/exe", argv);
    /* Not fatal: the process works with the default allocator, only its
     * idle RSS is less tight.  Take the variable back so that children
     * do not believe the setting is in force. */
    if (cur)
        setenv("GLIBC_TUNABLES", cur, 1);
    else
        unsetenv("GLIBC_TUNABLES");
}
