/* procs.h — the supervisor's process table: the gateway and the workers,
 * each with its state, its last hello and heartbeat, and its restart
 * history.
 *
 * Restart policy: a process that dies is started again after a backoff that
 * doubles from restart_base_ms (capped at restart_max_ms) and resets once it
 * has stayed up for restart_window_s.  Before the pipeline is first ready,
 * more than restart_max restarts within restart_window_s, or one exit with
 * RUNDIR_EXIT_STARTUP, and the supervisor gives up on that process (state
 * FAILED); after, crashes are restarted for ever, and only a start-up exit
 * gives up.  What the supervisor does then is sup.c's decision.
 */
#ifndef RILL_PROCS_H
#define RILL_PROCS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/proto.h"

#define PROCS_MAX (1 + PROTO_MAX_WORKERS)
#define PROCS_HISTORY 64

enum proc_role { PROC_GATEWAY = 0, PROC_WORKER = 1 };

enum proc_state {
    PROC_DOWN = 0,     /* not running, nothing scheduled */
    PROC_STARTING,     /* spawned, no hello yet */
    PROC_READY,        /* said hello */
    PROC_DRAINING,     /* asked to drain */
    PROC_BACKOFF,      /* died; will be started again at next_start_ns */
    PROC_FAILED,       /* died too often: given up */
    PROC_OFF           /* stopped by a scaling decision (supervisor/scale.h): started
                        * again only by another; with a pid, it is being stopped */
};

struct proc {
    char id[PROTO_ID_LEN + 1];   /* "g0", "w0", … */
    enum proc_role role;
    int index;                   /* worker number */
    pid_t pid;                   /* 0 when not running */
    enum proc_state state;
    uint64_t started_ns, ready_ns, last_hb_ns, next_start_ns;
    uint64_t restarts;           /* in all */
    uint64_t restart_ns[PROCS_HISTORY]; /* recent restart times (ring) */
    uint32_t n_restart_hist;
    uint32_t backoff_ms;
    int last_status;             /* wait status of the last exit */
    char last_exit[96];          /* "killed by signal 9", "exit 3" */
    struct proto_hello hello;
    struct proto_heartbeat hb;
    bool have_hb;
    bool killed_hung;            /* we killed it for silence */
    bool retiring;               /* draining to stop (scaled down): PROC_OFF once it exits */
    uint64_t retire_deadline_ns; /* killed if still running then */
};

struct procs_policy {
    uint32_t restart_max;        /* restarts allowed within the window */
    uint32_t restart_window_s;
    uint32_t base_ms, max_ms;    /* backoff */
    uint64_t healthy_ns;         /* ready this long before dying: the backoff starts again at base_ms */
};

struct procs {
    struct proc p[PROCS_MAX];
    int n;
    struct procs_policy pol;
};

void procs_init(struct procs *t, const struct procs_policy *pol, int workers);

struct proc *procs_by_id(struct procs *t, const char *id);
struct proc *procs_by_pid(struct procs *t, pid_t pid);
const char *proc_state_name(enum proc_state s);

/* Start a process: fork, then in the child exec argv[0] with argv (stdout
 * joined to stderr, so that the supervisor's stdout only carries its ready
 * line) and env_extra (NULL-terminated "K=V" strings, may be NULL) added to
 * the environment.  Returns 0 with p->pid set, or RILL_E_IO. */
int procs_spawn(struct proc *p, char *const argv[], char *const env_extra[], uint64_t now_ns);

/* A process exited with wait status `status`.  Decides what happens next:
 * BACKOFF with next_start_ns (returns true), or FAILED (returns false, with
 * the reason in p->last_exit) when it exited with RUNDIR_EXIT_STARTUP (a
 * cause a restart will not fix) or, unless `forever`, when it died more
 * than restart_max times within restart_window_s.  `forever` (the pipeline
 * has been ready): crashes are restarted with capped backoff however often
 * they come.  `stopping`: the supervisor is shutting down, so the process
 * just goes DOWN (false). */
bool procs_on_exit(struct procs *t, struct proc *p, int status, uint64_t now_ns, bool stopping, bool forever);

/* Describe a wait status ("exit 0", "killed by signal 9"). */
void procs_describe_status(int status, char *out, size_t n);

#endif
