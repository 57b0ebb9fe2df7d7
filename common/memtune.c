/* memtune.c — see memtune.h. */
#include "memtune.h"

#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TCACHE_KEY "glibc.malloc.tcache_count"
#define ENV_KEY "GLIBC_TUNABLES="
#define MARK_KEY "RILL_MEMTUNE_PID"

/* GLIBC_TUNABLES as the process was started with it, into v.  glibc's
 * start-up (2.36) writes a NUL after each tunable's value in place, so
 * getenv() sees only the first one, and /proc/self/environ shows the others
 * as entries of their own right after it: join them back.  false when there
 * is none (or it cannot be read). */
static bool started_with(char *v, size_t cap)
{
    static char env[65536];
    int fd = open("/proc/self/environ", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    size_t n = 0;
    ssize_t k;
    while (n < sizeof env - 1 && (k = read(fd, env + n, sizeof env - 1 - n)) > 0)
        n += (size_t)k;
    close(fd);
    env[n] = '\0';
    for (size_t i = 0; i < n; i += strlen(env + i) + 1) {
        if (strncmp(env + i, ENV_KEY, strlen(ENV_KEY)))
            continue;
        size_t len = (size_t)snprintf(v, cap, "%s", env + i + strlen(ENV_KEY));
        for (i += strlen(env + i) + 1; i < n && !strncmp(env + i, "glibc.", 6); i += strlen(env + i) + 1)
            len += (size_t)snprintf(v + (len < cap ? len : cap - 1), len < cap ? cap - len : 1, ":%s", env + i);
        return len < cap;
    }
    return false;
}

void memtune_apply(char **argv)
{
    const char *off = getenv("RILL_MEMTUNE");
    if (off && !strcmp(off, "0"))
        return;
    char cur[4096] = "";
    bool has = started_with(cur, sizeof cur);
    if (has && strstr(cur, TCACHE_KEY))
        return; /* set already: by us before the exec, by a parent, or by the user */
    /* Once per process: the exec keeps the pid, so a tunable that did not
     * reach the new image cannot make it exec again and again. */
    char pid[32];
    snprintf(pid, sizeof pid, "%ld", (long)getpid());
    const char *mark = getenv(MARK_KEY);
    if (mark && !strcmp(mark, pid))
        return;
    char v[sizeof cur + 64];
    snprintf(v, sizeof v, "%s%s" TCACHE_KEY "=0", cur, *cur ? ":" : "");
    if (setenv("GLIBC_TUNABLES", v, 1) || setenv(MARK_KEY, pid, 1))
        return;
    execv("/proc/self/exe", argv);
    /* Not fatal: the process works with the default allocator, only its
     * idle RSS is less tight. */
    unsetenv(MARK_KEY);
}
