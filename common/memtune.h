/* memtune.h — the glibc malloc setting that rill's long-running processes
 * (gateway, worker, supervisor) run with, applied before anything else.
 *
 * glibc keeps, per thread, up to 7 freed chunks of each of 64 small sizes
 * (its tcache) outside the heap's free lists.  malloc_trim() cannot return
 * the pages those chunks sit on, and they sit wherever the last burst freed
 * them: in the soak, the gateway's idle RSS was 3.1-3.8 MiB and grew by
 * 150-350 KiB every 5 minutes, with 0.9 MiB in use.  Without the tcache,
 * malloc_trim() consolidates everything free (2.1 MiB idle, +56 KiB).  A
 * tunable can only be set in the environment before the process starts, so
 * this re-executes the process once with it set.
 */
#ifndef RILL_MEMTUNE_H
#define RILL_MEMTUNE_H

/* When GLIBC_TUNABLES says nothing of glibc.malloc.tcache_count (a user's
 * own setting wins) and RILL_MEMTUNE is not "0": add
 * glibc.malloc.tcache_count=0 to it and exec /proc/self/exe with argv.
 * Returns when nothing was to be done, or the exec failed (the process then
 * runs with glibc's defaults).  Call first in main(), before any thread,
 * descriptor or allocation worth keeping.  Children inherit the setting. */
void memtune_apply(char **argv);

#endif
