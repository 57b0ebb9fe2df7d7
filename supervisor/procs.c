/* procs.c — see procs.h. */
#include "procs.h"
#include "common/rundir.h"
#include "common/err.h"
#include "common/log.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

void procs_init(struct procs *t, const struct procs_policy *pol, int workers)
{
    memset(t, 0, sizeof *t);
    t->pol = *pol;
    if (workers > PROTO_MAX_WORKERS)
        workers = PROTO_MAX_WORKERS;
    t->n = 1 + workers;
    snprintf(t->p[0].id, sizeof t->p[0].id, "g0");
    t->p[0].role = PROC_GATEWAY;
    for (int k = 0; k < workers; k++) {
        struct proc *p = &t->p[1 + k];
        snprintf(p->id, sizeof p->id, "w%d", k);
        p->role = PROC_WORKER;
        p->index = k;
    }
}

struct proc *procs_by_id(struct procs *t, const char *id)
{
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->p[i].id, id))
            return &t->p[i];
    return NULL;
}

struct proc *procs_by_pid(struct procs *t, pid_t pid)
{
    for (int i = 0; i < t->n; i++)
        if (t->p[i].pid == pid)
            return &t->p[i];
    return NULL;
}

const char *proc_state_name(enum proc_state s)
{
    static const char *const names[] = {"down", "starting", "ready", "draining", "backoff", "failed", "off"};
    return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "?";
}

void procs_describe_status(int status, char *out, size_t n)
{
    if (WIFEXITED(status))
        snprintf(out, n, "exit %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(out, n, "killed by signal %d (%s)%s", WTERMSIG(status), strsignal(WTERMSIG(status)),
                 WCOREDUMP(status) ? ", core dumped" : "");
    else
        snprintf(out, n, "status 0x%x", status);
}

int procs_spawn(struct proc *p, char *const argv[], char *const env_extra[], uint64_t now_ns)
{
    pid_t pid = fork();
    if (pid < 0)
        return RILL_E_IO;
    if (pid == 0) {
        /* The child: stdout joins stderr; the signals the supervisor blocks
         * (it reads them from a signalfd) are unblocked again. */
        dup2(2, 1);
        sigset_t all;
        sigfillset(&all);
        sigprocmask(SIG_UNBLOCK, &all, NULL);
        for (int i = 0; env_extra && env_extra[i]; i++)
            putenv(env_extra[i]);
        execv(argv[0], argv);
        fprintf(stderr, "rill-supervisor: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    p->pid = pid;
    p->state = PROC_STARTING;
    p->started_ns = now_ns;
    p->ready_ns = 0;
    p->last_hb_ns = 0;
    p->have_hb = false;
    p->killed_hung = false;
    p->retiring = false;
    return 0;
}

bool procs_on_exit(struct procs *t, struct proc *p, int status, uint64_t now_ns, bool stopping, bool forever)
{
    p->pid = 0;
    p->last_status = status;
    procs_describe_status(status, p->last_exit, sizeof p->last_exit);
    if (stopping) {
        p->state = PROC_DOWN;
        return false;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == RUNDIR_EXIT_STARTUP) {
        p->state = PROC_FAILED;
        snprintf(p->last_exit, sizeof p->last_exit, "cannot start (exit %d)", RUNDIR_EXIT_STARTUP);
        return false;
    }
    /* A process that stayed up for a whole window starts afresh. */
    uint64_t window = (uint64_t)t->pol.restart_window_s * 1000000000ull;
    if (p->ready_ns && now_ns - p->started_ns >= window)
        p->backoff_ms = 0;
    /* One that served a while (killed from outside, by the OOM killer) is
     * no crash loop: it comes back after the shortest delay.  One that dies
     * starting, or just after it is ready (a request that crashes it, run
     * again wherever it goes), backs off, doubling. */
    if (p->ready_ns && now_ns > p->ready_ns && now_ns - p->ready_ns >= t->pol.healthy_ns)
        p->backoff_ms = 0;
    uint32_t recent = 0;
    for (uint32_t i = 0; i < p->n_restart_hist && i < PROCS_HISTORY; i++)
        if (now_ns - p->restart_ns[i] < window)
            recent++;
    if (!forever && recent >= t->pol.restart_max) {
        p->state = PROC_FAILED;
        char why[96];
        snprintf(why, sizeof why, "%s; %u restarts within %u s: giving up", p->last_exit, recent,
                 t->pol.restart_window_s);
        snprintf(p->last_exit, sizeof p->last_exit, "%s", why);
        return false;
    }
    p->backoff_ms = p->backoff_ms ? p->backoff_ms * 2 : t->pol.base_ms;
    if (p->backoff_ms > t->pol.max_ms)
        p->backoff_ms = t->pol.max_ms;
    p->next_start_ns = now_ns + (uint64_t)p->backoff_ms * 1000000ull;
    p->restart_ns[p->n_restart_hist % PROCS_HISTORY] = now_ns;
    p->n_restart_hist++;
    p->restarts++;
    p->state = PROC_BACKOFF;
    return true;
}
