/* sup.c — see sup.h.
 *
 * One thread, one poll: the control ROUTER, a signalfd (SIGCHLD, SIGTERM,
 * SIGINT, SIGHUP) and, when the kernel allows it, a PSI trigger fd that wakes
 * the loop early on a sudden memory stall.  Between events the loop does its
 * timed work: restarts whose backoff expired, hang checks, the pressure
 * sample, the stats files.
 */
#include "sup.h"
#include "batchctl.h"
#include "pressure.h"
#include "procs.h"
#include "scale.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/hist.h"
#include "common/jsonw.h"
#include "common/log.h"
#include "common/plane.h"
#include "common/procstat.h"
#include "common/prom.h"
#include "common/ring.h"
#include "common/rundir.h"
#include "common/zsock.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define TRIM_EVERY_NS 10000000000ull /* 10 s */

struct sup {
    const struct rill_config *c;
    struct rill_config child; /* what the children get */
    char run_dir[CFG_STR_MAX];
    char control_ep[ZS_ENDPOINT_MAX];
    char exe_dir[PATH_MAX];
    void *zctx, *router;
    struct procs t;
    struct pressure_monitor pm;
    struct batchctl bc;
    struct scale sc;
    int sigfd, psi_fd;
    bool announced, stopping, hard_stop;
    char fatal[512];             /* why the supervisor gave up (exits non-zero), or "" */
    uint64_t started_ns, next_pressure_ns, next_stats_ns, drain_deadline_ns;
    uint64_t next_trim_ns;       /* malloc_trim, every TRIM_EVERY_NS */
    uint32_t threads_per_worker;
    uint64_t hung_kills, pressure_msgs, set_batch_msgs;
    int initial_workers;         /* how many run at start (workers, within min..max) */
    /* Workers' distributions, accumulated from their heartbeats' windows. */
    struct hist *step_us;        /* per process slot */
    struct hist *batch_n;
};

/* --- paths and files ------------------------------------------------------------------ */

static void path_in(const struct sup *s, const char *file, char *out, size_t n)
{
    snprintf(out, n, "%s/%s", s->run_dir, file);
}

/* Write `len` bytes to run_dir/file atomically (temp + rename), mode 0600. */
static void write_file(const struct sup *s, const char *file, const char *data, size_t len)
{
    char path[PATH_MAX], tmp[PATH_MAX + 8];
    path_in(s, file, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    ssize_t w = write(fd, data, len);
    close(fd);
    if (w == (ssize_t)len)
        rename(tmp, path);
    else
        unlink(tmp);
}

static bool pid_is(pid_t pid, const char *prefix)
{
    char path[64], comm[64] = "";
    snprintf(path, sizeof path, "/proc/%d/comm", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    bool ok = fgets(comm, sizeof comm, f) && !strncmp(comm, prefix, strlen(prefix));
    fclose(f);
    return ok;
}

/* A predecessor of this instance: refuse to run beside a live one; clean up
 * after a dead one (its orphans, sockets, rings). */
static int clean_predecessor(struct sup *s, char *why, size_t why_len)
{
    char path[PATH_MAX];
    path_in(s, "supervisor.pid", path, sizeof path);
    FILE *f = fopen(path, "r");
    if (f) {
        int pid = 0;
        if (fscanf(f, "%d", &pid) == 1 && pid > 0 && pid != getpid() && kill(pid, 0) == 0 &&
            pid_is(pid, "rill-superv")) {
            fclose(f);
            snprintf(why, why_len, "instance '%s' is already running (supervisor pid %d, run dir %s)",
                     s->c->instance, pid, s->run_dir);
            return RILL_E_EXISTS;
        }
        fclose(f);
    }
    path_in(s, "children", path, sizeof path);
    f = fopen(path, "r");
    int killed = 0;
    if (f) {
        int pid;
        while (fscanf(f, "%d", &pid) == 1)
            if (pid > 0 && (pid_is(pid, "rill-worker") || pid_is(pid, "rill-gateway")) && kill(pid, SIGKILL) == 0)
                killed++;
        fclose(f);
    }
    if (killed) {
        rlog_warn("killed %d process(es) a dead predecessor left running", killed);
        usleep(200000);
    }
    DIR *d = opendir(s->run_dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.') {
                path_in(s, e->d_name, path, sizeof path);
                unlink(path);
            }
        closedir(d);
    }
    char prefix[96];
    cfg_ring_prefix(s->c, prefix, sizeof prefix);
    int rings = ring_cleanup_stale(prefix);
    if (rings)
        rlog_info("removed %d stale ring(s) of instance %s", rings, s->c->instance);
    return 0;
}

static void write_children(const struct sup *s)
{
    char buf[PROCS_MAX * 12 + 1];
    size_t n = 0;
    for (int i = 0; i < s->t.n; i++)
        if (s->t.p[i].pid)
            n += (size_t)snprintf(buf + n, sizeof buf - n, "%d\n", (int)s->t.p[i].pid);
    write_file(s, "children", buf, n);
}

/* The API keys reach the gateway in a 0600 file of the run dir, never as
 * arguments (any local user can read a process's command line): the keys
 * given as api_keys, then the lines of api_keys_file. */
static int pass_secrets(struct sup *s, char *why, size_t why_len)
{
    const struct rill_config *c = s->c;
    s->child.api_keys[0] = 0;
    if (!c->api_keys[0])
        return 0; /* api_keys_file, if any, is a path: the gateway reads it */
    char path[PATH_MAX];
    path_in(s, RUNDIR_SECRETS, path, sizeof path);
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        if (fd >= 0)
            close(fd);
        snprintf(why, why_len, "cannot write %s: %s", path, strerror(errno));
        return RILL_E_IO;
    }
    for (const char *p = c->api_keys; *p;) {
        size_t n = strcspn(p, ",");
        fprintf(f, "%.*s\n", (int)n, p);
        p += n + (p[n] == ',');
    }
    int rc = 0;
    if (c->api_keys_file[0]) {
        FILE *in = fopen(c->api_keys_file, "r");
        if (!in) {
            snprintf(why, why_len, "cannot read api_keys_file %s: %s", c->api_keys_file, strerror(errno));
            rc = RILL_E_IO;
        } else {
            char line[1024];
            while (fgets(line, sizeof line, in))
                fputs(line, f);
            fclose(in);
        }
    }
    if (fclose(f) != 0 && !rc) {
        snprintf(why, why_len, "cannot write %s", path);
        rc = RILL_E_IO;
    }
    snprintf(s->child.api_keys_file, sizeof s->child.api_keys_file, "%s", path);
    return rc;
}

/* --- talking to the children -------------------------------------------------------------- */

static void send_to(struct sup *s, const struct proc *p, const struct proto_msg *m)
{
    struct zs_id id;
    zs_id_from_str(&id, p->id);
    int rc = plane_send(s->router, &id, m);
    if (rc && rc != RILL_E_PEER_DEAD)
        rlog_warn("cannot send %s to %s: %s", proto_type_name(m->type), p->id, rill_err_name(rc));
}

/* Tell the gateway which workers are up (on every change). */
static void send_workers(struct sup *s)
{
    struct proc *g = &s->t.p[0];
    if (g->state != PROC_READY && g->state != PROC_DRAINING)
        return;
    struct proto_msg m = {.type = PROTO_WORKERS};
    struct proto_workers *w = &m.u.workers;
    for (int i = 1; i < s->t.n; i++) {
        const struct proc *p = &s->t.p[i];
        struct proto_worker_info *in = &w->workers[w->n_workers++];
        snprintf(in->id, sizeof in->id, "%s", p->id);
        snprintf(in->ring, sizeof in->ring, "%s", p->hello.ring);
        snprintf(in->endpoint, sizeof in->endpoint, "%s", p->hello.endpoint);
        in->epoch = p->hello.epoch;
        in->state = p->state == PROC_READY      ? PROTO_WSTATE_READY
                    : p->state == PROC_DRAINING ? PROTO_WSTATE_DRAINING
                    : p->state == PROC_FAILED   ? PROTO_WSTATE_FAILED
                    : p->state == PROC_STARTING ? PROTO_WSTATE_STARTING
                                                : PROTO_WSTATE_DOWN;
    }
    send_to(s, g, &m);
}

static void send_set_batch(struct sup *s, const struct batchctl_change *ch)
{
    struct proc *p = procs_by_id(&s->t, ch->id);
    if (!p || p->state != PROC_READY)
        return;
    struct proto_msg m = {.type = PROTO_SET_BATCH};
    m.u.set_batch.max_batch = ch->bound;
    snprintf(m.u.set_batch.reason, sizeof m.u.set_batch.reason, "%s", ch->reason);
    if (ch->changed)
        rlog_info("batch bound of %s: %u -> %u (%s)", ch->id, ch->old_bound, ch->bound, ch->reason);
    send_to(s, p, &m);
    s->set_batch_msgs++;
}

static void broadcast(struct sup *s, const struct proto_msg *m)
{
    for (int i = 0; i < s->t.n; i++)
        if (s->t.p[i].state == PROC_READY || s->t.p[i].state == PROC_DRAINING)
            send_to(s, &s->t.p[i], m);
}

/* --- starting ----------------------------------------------------------------------------------- */

static int start(struct sup *s, struct proc *p, uint64_t now)
{
    char **cargs;
    int cargc;
    if (cfg_to_args(&s->child, &cargs, &cargc))
        return RILL_E_NOMEM;
    char bin[PATH_MAX + 32], idx[16], thr[16];
    snprintf(bin, sizeof bin, "%s/%s", s->exe_dir, p->role == PROC_GATEWAY ? "rill-gateway" : "rill-worker");
    snprintf(idx, sizeof idx, "%d", p->index);
    snprintf(thr, sizeof thr, "%u", s->threads_per_worker);
    char **argv = calloc((size_t)cargc + 8, sizeof *argv);
    if (!argv) {
        cfg_free_args(cargs, cargc);
        return RILL_E_NOMEM;
    }
    int n = 0;
    argv[n++] = bin;
    for (int i = 0; i < cargc; i++)
        argv[n++] = cargs[i];
    if (p->role == PROC_WORKER) {
        argv[n++] = "--worker_id";
        argv[n++] = idx;
        argv[n++] = "--threads";
        argv[n++] = thr;
    }
    argv[n] = NULL;
    /* OpenBLAS must not start spinning threads of its own in a worker. */
    char *env[] = {"OPENBLAS_NUM_THREADS=1", NULL};
    int rc = procs_spawn(p, argv, p->role == PROC_WORKER ? env : NULL, now);
    free(argv);
    cfg_free_args(cargs, cargc);
    if (rc) {
        rlog_error("cannot start %s: %s", p->id, strerror(errno));
        return rc;
    }
    rlog_info("started %s (pid %d)", p->id, (int)p->pid);
    write_children(s);
    return 0;
}

/* Workers the gateway says it can route to (its heartbeat's metric). */
static int gateway_workers_ready(const struct sup *s)
{
    const struct proc *g = &s->t.p[0];
    if (!g->have_hb)
        return -1;
    for (int i = 0; i < g->hb.n_metrics; i++)
        if (!strcmp(g->hb.metrics[i].name, "workers_ready"))
            return (int)g->hb.metrics[i].value;
    return -1;
}

/* "Ready" means a client can be served: every process said hello and the
 * gateway has opened every worker's ring. */
static void announce_if_ready(struct sup *s)
{
    if (s->announced)
        return;
    int workers = 0;
    for (int i = 0; i < s->t.n; i++) {
        if (s->t.p[i].state == PROC_OFF)
            continue;
        if (s->t.p[i].state != PROC_READY)
            return;
        workers += s->t.p[i].role == PROC_WORKER;
    }
    if (gateway_workers_ready(s) < workers)
        return;
    s->announced = true;
    /* The one line on stdout. */
    printf("rill ready at http://%s/\n", s->c->listen);
    fflush(stdout);
    rlog_info("ready in %.0f ms: gateway on %s, %d worker(s)", (double)(clock_ns() - s->started_ns) / 1e6,
              s->c->listen, workers);
    const char *ns = getenv("NOTIFY_SOCKET");
    if (ns && (ns[0] == '/' || ns[0] == '@') && strlen(ns) < sizeof(((struct sockaddr_un *)0)->sun_path)) {
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd >= 0) {
            struct sockaddr_un a = {.sun_family = AF_UNIX};
            memcpy(a.sun_path, ns, strlen(ns));
            if (a.sun_path[0] == '@')
                a.sun_path[0] = 0;
            sendto(fd, "READY=1", 7, 0, (struct sockaddr *)&a, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(ns)));
            close(fd);
        }
    }
}

/* --- control messages ------------------------------------------------------------------------------ */

static void on_control(struct sup *s, const struct zs_id *from, struct proto_msg *m, uint64_t now)
{
    char idbuf[ZS_ID_STR_MAX];
    zs_id_str(from, idbuf, sizeof idbuf);
    struct proc *p = procs_by_id(&s->t, idbuf);
    if (!p) {
        rlog_warn("control message from unknown peer '%s'", idbuf);
        return;
    }
    switch (m->type) {
    case PROTO_HELLO:
        if (p->pid && m->u.hello.pid != p->pid) {
            rlog_warn("hello from %s with pid %d, expected %d: ignored", p->id, m->u.hello.pid, (int)p->pid);
            return;
        }
        if (p->state == PROC_OFF || p->retiring) {
            rlog_info("hello from %s, which is being stopped: ignored", p->id);
            return;
        }
        p->hello = m->u.hello;
        p->state = s->stopping ? PROC_DRAINING : PROC_READY;
        p->ready_ns = now;
        p->last_hb_ns = now;
        rlog_info("%s is ready after %.0f ms%s%s", p->id, (double)(now - p->started_ns) / 1e6,
                  p->hello.ring[0] ? ", ring " : "", p->hello.ring);
        if (p->role == PROC_WORKER) {
            batchctl_forget(&s->bc, p->id);
            /* A worker that starts under pressure hears about it at once. */
            if (s->pm.level != PRESSURE_NORMAL) {
                struct proto_msg pm = {.type = PROTO_PRESSURE};
                pm.u.pressure.level = (uint8_t)s->pm.level;
                snprintf(pm.u.pressure.reason, sizeof pm.u.pressure.reason, "%.*s", PROTO_NOTE_LEN, s->pm.reason);
                send_to(s, p, &pm);
            }
        }
        send_workers(s);
        if (s->stopping) {
            struct proto_msg d = {.type = PROTO_DRAIN};
            send_to(s, p, &d);
        }
        announce_if_ready(s);
        break;
    case PROTO_HEARTBEAT:
        p->hb = m->u.heartbeat;
        p->have_hb = true;
        p->last_hb_ns = now;
        if (p->role == PROC_WORKER) {
            int slot = (int)(p - s->t.p);
            struct hist win;
            if (m->u.heartbeat.step_hist.len &&
                hist_decode(&win, m->u.heartbeat.step_hist.data, m->u.heartbeat.step_hist.len) == 0)
                hist_merge(&s->step_us[slot], &win);
            if (m->u.heartbeat.batch_hist.len &&
                hist_decode(&win, m->u.heartbeat.batch_hist.data, m->u.heartbeat.batch_hist.len) == 0)
                hist_merge(&s->batch_n[slot], &win);
        }
        if (p->role == PROC_GATEWAY)
            announce_if_ready(s);
        if (p->role == PROC_WORKER && p->state == PROC_READY) {
            struct batchctl_change ch;
            if (batchctl_heartbeat(&s->bc, &m->u.heartbeat, now, &ch) == 0 && (ch.changed || ch.resend))
                send_set_batch(s, &ch);
        }
        break;
    default:
        rlog_warn("unexpected %s from %s", proto_type_name(m->type), p->id);
    }
}

/* --- exits, hangs, restarts ----------------------------------------------------------------------- */

static void begin_drain(struct sup *s, uint64_t now);

/* Workers that are running or will be restarted. */
static int workers_alive(const struct sup *s)
{
    int n = 0;
    for (int i = 1; i < s->t.n; i++)
        n += s->t.p[i].state != PROC_FAILED && s->t.p[i].state != PROC_DOWN && s->t.p[i].state != PROC_OFF;
    return n;
}

/* Workers started and not stopped by a scaling decision. */
static int workers_running(const struct sup *s)
{
    int n = 0;
    for (int i = 1; i < s->t.n; i++) {
        enum proc_state st = s->t.p[i].state;
        n += (st == PROC_STARTING || st == PROC_READY || st == PROC_DRAINING || st == PROC_BACKOFF) &&
             !s->t.p[i].retiring;
    }
    return n;
}

/* The supervisor gave up on p.  Before the pipeline was ready that is a
 * start-up error: stop, and exit non-zero with the cause.  After, it is fatal
 * only when nothing can serve any more (the gateway, or the last worker), so
 * that systemd or Kubernetes can act instead of a supervisor that stays up
 * serving nothing; otherwise the rest keep serving and the failure shows on
 * /ready, /metrics and in the log. */
static void give_up(struct sup *s, struct proc *p, const char *cause, uint64_t now)
{
    if (s->announced && p->role == PROC_WORKER && workers_alive(s) > 0)
        return;
    if (!s->fatal[0])
        snprintf(s->fatal, sizeof s->fatal, "%s", cause);
    begin_drain(s, now);
}

/* A worker a scaling decision stopped has exited: it stays off, and what
 * it leaves behind (its ring, its socket) goes now, not at the next start. */
static void stopped_by_scaling(struct sup *s, struct proc *p, int status)
{
    p->pid = 0;
    p->last_status = status;
    procs_describe_status(status, p->last_exit, sizeof p->last_exit);
    p->state = PROC_OFF;
    p->retiring = false;
    p->have_hb = false;
    memset(&p->hb, 0, sizeof p->hb);
    memset(&p->hello, 0, sizeof p->hello);
    batchctl_forget(&s->bc, p->id);
    char ring[PROTO_RING_LEN + 2], sock[48];
    if (cfg_ring_name(s->c, p->id, ring, sizeof ring) == 0)
        shm_unlink(ring);
    snprintf(sock, sizeof sock, "%s.sock", p->id);
    rundir_unlink(s->run_dir, sock);
    rlog_info("%s stopped (%s); %d worker(s) running", p->id, p->last_exit, workers_running(s));
}

static void reap_children(struct sup *s, uint64_t now)
{
    int status;
    pid_t pid;
    bool changed = false;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        struct proc *p = procs_by_pid(&s->t, pid);
        if (!p)
            continue;
        bool was_ready = p->state == PROC_READY;
        if (!s->stopping && (p->state == PROC_OFF || p->retiring)) {
            stopped_by_scaling(s, p, status);
            changed = true;
            continue;
        }
        bool restart = procs_on_exit(&s->t, p, status, now, s->stopping, s->announced);
        if (s->stopping) {
            rlog_info("%s exited (%s)", p->id, p->last_exit);
        } else if (restart) {
            rlog_warn("%s died (%s%s); restarting in %u ms", p->id, p->last_exit,
                      p->killed_hung ? ", killed as hung" : "", p->backoff_ms);
        } else {
            char cause[512];
            if (!rundir_take_cause(s->run_dir, p->id, cause, sizeof cause))
                snprintf(cause, sizeof cause, "%s %s: %s", p->id, p->ready_ns ? "kept dying" : "could not start",
                         p->last_exit);
            rlog_error("%s died and will not be restarted: %s", p->id, cause);
            give_up(s, p, cause, now);
        }
        if (p->role == PROC_WORKER)
            batchctl_forget(&s->bc, p->id);
        changed = changed || was_ready;
        memset(&p->hello, 0, sizeof p->hello);
    }
    if (changed)
        send_workers(s);
    write_children(s);
}

static void check_timeouts(struct sup *s, uint64_t now)
{
    const struct rill_config *c = s->c;
    for (int i = 0; i < s->t.n; i++) {
        struct proc *p = &s->t.p[i];
        if (p->state == PROC_BACKOFF && now >= p->next_start_ns && !s->stopping) {
            start(s, p, now);
            continue;
        }
        if (!p->pid || p->killed_hung)
            continue;
        if (p->retiring && now > p->retire_deadline_ns && !s->stopping) {
            /* Its requests fail over to the other workers (exactly). */
            rlog_warn("%s did not drain within %lld s: stopping it", p->id, (long long)c->drain_timeout_s);
            kill(p->pid, SIGKILL);
            p->killed_hung = true;
        } else if (p->state == PROC_STARTING && now - p->started_ns > (uint64_t)c->start_timeout_ms * 1000000ull) {
            rlog_error("%s did not say hello within %lld ms: killing it", p->id, (long long)c->start_timeout_ms);
            kill(p->pid, SIGKILL);
            p->killed_hung = true;
        } else if (p->state == PROC_READY && p->role == PROC_WORKER &&
                   now - p->last_hb_ns > (uint64_t)c->heartbeat_timeout_ms * 1000000ull) {
            rlog_error("%s sent no heartbeat for %.0f ms: hung, killing it", p->id, (double)(now - p->last_hb_ns) / 1e6);
            kill(p->pid, SIGKILL);
            p->killed_hung = true;
            s->hung_kills++;
        }
    }
}

/* --- memory pressure ---------------------------------------------------------------------------- */

static void sample_pressure(struct sup *s, uint64_t now)
{
    struct pressure_reading r;
    pressure_sample(NULL, &r);
    uint64_t workers = 0;
    for (int i = 1; i < s->t.n; i++) {
        const struct proc *p = &s->t.p[i];
        if (!p->pid)
            continue;
        /* The heartbeat's figure when fresh; /proc otherwise (a starting
         * worker has no heartbeat but may already hold its model). */
        uint64_t rss = p->have_hb ? p->hb.rss_bytes : procstat_rss(p->pid);
        r.workers_rss += rss;
        r.workers_kv += p->have_hb ? p->hb.kv_bytes : 0;
        workers++;
    }
    r.others_rss = procstat_rss(getpid()) + (s->t.p[0].pid ? procstat_rss(s->t.p[0].pid) : 0);
    pressure_account(&r, (uint64_t)s->c->memory_budget_bytes);
    int running = workers_running(s);
    if (workers && running && r.budget > r.others_rss)
        batchctl_set_share(&s->bc, (r.budget - r.others_rss) / (uint64_t)running);
    if (!pressure_update(&s->pm, &r))
        return;
    enum pressure_level lv = s->pm.level;
    if (lv == PRESSURE_NORMAL)
        rlog_info("memory pressure back to normal: %s", s->pm.reason);
    else
        rlog_warn("memory pressure %s: %s", pressure_level_name(lv), s->pm.reason);
    struct proto_msg m = {.type = PROTO_PRESSURE};
    m.u.pressure.level = (uint8_t)lv;
    snprintf(m.u.pressure.reason, sizeof m.u.pressure.reason, "%.*s", PROTO_NOTE_LEN, s->pm.reason);
    broadcast(s, &m);
    s->pressure_msgs++;
    struct batchctl_change ch[BATCHCTL_MAX_WORKERS];
    int n = batchctl_pressure(&s->bc, lv, now, ch, BATCHCTL_MAX_WORKERS);
    for (int i = 0; i < n; i++)
        if (ch[i].changed || ch[i].resend)
            send_set_batch(s, &ch[i]);
}

/* --- scaling ---------------------------------------------------------------------------------------- */

static enum scale_slot slot_of(const struct proc *p)
{
    if (p->retiring)
        return SCALE_SLOT_GONE;
    switch (p->state) {
    case PROC_READY: return SCALE_SLOT_READY;
    case PROC_STARTING: return SCALE_SLOT_STARTING;
    case PROC_BACKOFF: return SCALE_SLOT_RESTARTING;
    case PROC_OFF: return p->pid ? SCALE_SLOT_GONE : SCALE_SLOT_OFF;
    default: return SCALE_SLOT_GONE;
    }
}

/* Stop worker p at once, its requests moving to the others: the gateway
 * hears first that p is down (it fails p's generations over from the
 * tokens delivered, exactly), then p is killed.  SIGKILL, not a drain: a
 * drain would finish p's generations in place and free nothing for as long
 * as they run, and a worker told to stop would end them with errors that
 * could reach the gateway before the news that p is down.  Killed, p writes
 * nothing more; whichever the gateway sees first (the list, or p's ring
 * losing its producer) fails the same generations over. */
static void unload(struct sup *s, struct proc *p)
{
    assert(p->role == PROC_WORKER && p->pid && p->state == PROC_READY);
    p->state = PROC_OFF;
    batchctl_forget(&s->bc, p->id);
    send_workers(s);
    kill(p->pid, SIGKILL);
}

/* Stop worker p gently: nothing new goes to it, it finishes what it runs
 * (within drain_timeout_s, else it is unloaded), then exits. */
static void retire(struct sup *s, struct proc *p, uint64_t now)
{
    assert(p->role == PROC_WORKER && p->pid && p->state == PROC_READY);
    p->state = PROC_DRAINING;
    p->retiring = true;
    p->retire_deadline_ns = now + (uint64_t)s->c->drain_timeout_s * 1000000000ull;
    struct proto_msg d = {.type = PROTO_DRAIN};
    send_to(s, p, &d);
    send_workers(s);
}

static void scale_step(struct sup *s, uint64_t now)
{
    if (!s->announced || s->stopping)
        return;
    struct scale_worker w[PROCS_MAX];
    int n = s->t.n - 1;
    for (int i = 0; i < n; i++) {
        const struct proc *p = &s->t.p[1 + i];
        w[i] = (struct scale_worker){.slot = slot_of(p)};
        if (p->have_hb) {
            w[i].active = p->hb.active;
            w[i].queued = p->hb.queued;
            w[i].batch_cap = p->hb.batch_cap;
            w[i].rss = p->hb.rss_bytes;
        }
    }
    const struct pressure_reading *r = &s->pm.last;
    struct scale_input in = {w, n, s->pm.level, r->have_ratio, r->budget, r->used, now};
    struct scale_decision d;
    if (!scale_decide(&s->sc, &in, &d))
        return;
    struct proc *p = &s->t.p[1 + d.slot];
    rlog_info("scaling %s: %s %s (%s: %s); workers %d -> %d", scale_dir_name(d.dir),
              d.dir == SCALE_UP ? "starting" : d.migrate ? "unloading" : "draining", p->id, scale_why_name(d.why),
              d.detail, d.before, d.after);
    if (d.dir == SCALE_UP) {
        p->state = PROC_DOWN;
        if (start(s, p, now))
            p->state = PROC_OFF; /* it may be tried again: the next decision says so */
    } else if (d.migrate) {
        unload(s, p);
    } else {
        retire(s, p, now);
    }
}

/* --- stats files ------------------------------------------------------------------------------------- */

static void write_stats(struct sup *s, uint64_t now)
{
    struct prom_buf b;
    prom_init(&b);
    const struct pressure_reading *r = &s->pm.last;
    prom_gauge(&b, "rill_memory_pressure_level", "Memory-pressure level: 0 normal, 1 warning, 2 critical, 3 emergency.",
               (double)s->pm.level);
    prom_gauge(&b, "rill_memory_budget_bytes", "Memory the pipeline may use.", (double)r->budget);
    prom_gauge(&b, "rill_memory_used_bytes", "Memory the pipeline uses, against the budget.", (double)r->used);
    prom_gauge(&b, "rill_memory_psi_some_avg10", "PSI memory some avg10 (percent).", r->psi.ok ? r->psi.some_avg10 : 0);
    prom_gauge(&b, "rill_memory_psi_full_avg10", "PSI memory full avg10 (percent).",
               r->psi.has_full ? r->psi.full_avg10 : 0);
    prom_counter(&b, "rill_memory_pressure_transitions_total", "Memory-pressure level changes.",
                 (double)s->pm.transitions);
    prom_family(&b, "rill_batch_bound_changes_total", "counter", "Changes of workers' batch bounds, by reason.");
    for (int w = 0; w < BATCHCTL_WHY_COUNT; w++) {
        char lab[64];
        snprintf(lab, sizeof lab, "reason=\"%s\"", batchctl_why_name((enum batchctl_why)w));
        prom_sample(&b, "rill_batch_bound_changes_total", lab, (double)s->bc.changes[w]);
    }
    prom_counter(&b, "rill_supervisor_hung_kills_total", "Workers killed for missing heartbeats.",
                 (double)s->hung_kills);
    prom_gauge(&b, "rill_supervisor_workers", "Workers running (started and not stopped by a scaling decision).",
               (double)workers_running(s));
    prom_gauge(&b, "rill_supervisor_workers_min", "min_workers.", (double)s->sc.c.min);
    prom_gauge(&b, "rill_supervisor_workers_max", "max_workers.", (double)s->sc.c.max);
    prom_family(&b, "rill_supervisor_scale_events_total", "counter",
                "Workers started or stopped by the supervisor's scaling, by direction and reason.");
    for (int k = 0; k < SCALE_WHY_COUNT; k++) {
        char lab[80];
        snprintf(lab, sizeof lab, "direction=\"%s\",reason=\"%s\"", scale_dir_name(scale_why_dir((enum scale_why)k)),
                 scale_why_name((enum scale_why)k));
        prom_sample(&b, "rill_supervisor_scale_events_total", lab, (double)s->sc.events[k]);
    }
    static const struct { const char *name, *type, *help; } fam[] = {
        {"rill_process_up", "gauge", "1 when the process is ready."},
        {"rill_process_failed", "gauge", "1 when the supervisor gave up restarting the process."},
        {"rill_process_restarts_total", "counter", "Restarts of the process."},
        {"rill_worker_active_sequences", "gauge", "Sequences the worker is running."},
        {"rill_worker_queued_requests", "gauge", "Requests waiting in the worker."},
        {"rill_worker_batch_cap", "gauge", "The worker's current batch cap."},
        {"rill_worker_batch_bound", "gauge", "The supervisor's bound on the worker's batch cap."},
        {"rill_worker_step_seconds_p50", "gauge", "Median decode step time."},
        {"rill_worker_step_seconds_p99", "gauge", "99th percentile decode step time."},
        {"rill_worker_decode_tokens_per_second", "gauge", "Decode tokens per second."},
        {"rill_worker_prefill_tokens_per_second", "gauge", "Prefill tokens per second."},
        {"rill_worker_rss_bytes", "gauge", "Worker resident memory."},
        {"rill_worker_kv_cache_bytes", "gauge", "KV cache in use."},
        {"rill_worker_kv_cache_capacity_bytes", "gauge", "KV cache reserved."},
        {"rill_worker_preemptions_total", "counter", "Sequences preempted (and recomputed later)."},
        {"rill_worker_tokens_total", "counter", "Tokens generated."},
        {"rill_worker_requests_total", "counter", "Requests accepted."},
        {"rill_worker_prefix_cache_lookups_total", "counter",
         "Admissions that looked for a cached prefix (a recompute after preemption too)."},
        {"rill_worker_prefix_cache_hits_total", "counter", "Admissions that found a cached prefix."},
        {"rill_worker_prefix_cache_lookup_tokens_total", "counter", "Tokens of the admissions that looked."},
        {"rill_worker_prefix_cache_hit_tokens_total", "counter", "Tokens found in the prefix cache (not prefilled)."},
        {"rill_worker_prefix_cache_request_hit_ratio", "gauge", "hits_total / lookups_total since the worker started."},
        {"rill_worker_prefix_cache_token_hit_ratio", "gauge",
         "hit_tokens_total / lookup_tokens_total since the worker started."},
        {"rill_worker_prefix_cache_blocks", "gauge", "KV blocks in the prefix cache (held or idle)."},
        {"rill_worker_prefix_cache_evictions_total", "counter",
         "Cached blocks evicted (for room, least recently used first, or under memory pressure)."},
    };
    for (size_t f = 0; f < sizeof fam / sizeof fam[0]; f++) {
        prom_family(&b, fam[f].name, fam[f].type, fam[f].help);
        for (int i = 0; i < s->t.n; i++) {
            const struct proc *p = &s->t.p[i];
            if (f >= 3 && p->role != PROC_WORKER)
                continue;
            char lab[64];
            snprintf(lab, sizeof lab, "process=\"%s\"", p->id);
            const struct proto_heartbeat *h = &p->hb;
            double v = 0;
            switch (f) {
            case 0: v = p->state == PROC_READY; break;
            case 1: v = p->state == PROC_FAILED; break;
            case 2: v = (double)p->restarts; break;
            case 3: v = h->active; break;
            case 4: v = h->queued; break;
            case 5: v = h->batch_cap; break;
            case 6: v = batchctl_find(&s->bc, p->id) ? batchctl_find(&s->bc, p->id)->bound : h->batch_limit; break;
            case 7: v = h->step_p50_ms / 1e3; break;
            case 8: v = h->step_p99_ms / 1e3; break;
            case 9: v = h->tokens_per_s; break;
            case 10: v = h->prefill_tokens_per_s; break;
            case 11: v = (double)h->rss_bytes; break;
            case 12: v = (double)h->kv_bytes; break;
            case 13: v = (double)h->kv_capacity_bytes; break;
            case 14: v = (double)h->preemptions; break;
            case 15: v = (double)h->tokens_total; break;
            case 16: v = (double)h->requests_total; break;
            case 17: v = (double)h->prefix_lookups; break;
            case 18: v = (double)h->prefix_hits; break;
            case 19: v = (double)h->prefix_lookup_tokens; break;
            case 20: v = (double)h->prefix_hit_tokens; break;
            case 21: v = h->prefix_lookups ? (double)h->prefix_hits / (double)h->prefix_lookups : 0; break;
            case 22:
                v = h->prefix_lookup_tokens ? (double)h->prefix_hit_tokens / (double)h->prefix_lookup_tokens : 0;
                break;
            case 23: v = h->prefix_blocks; break;
            case 24: v = (double)h->prefix_evictions; break;
            }
            prom_sample(&b, fam[f].name, lab, v);
        }
    }
    /* Where memory goes: each worker's own breakdown (its heartbeat's
     * memory_<part>_bytes), and every process's peak RSS (VmHWM) — the
     * figures of make bench-memory. */
    prom_family(&b, "rill_worker_memory_bytes", "gauge",
                "A worker's memory by part: weights, kv_cache, prefix_cache, activations, ring.");
    for (int i = 0; i < s->t.n; i++) {
        const struct proc *p = &s->t.p[i];
        for (int k = 0; p->role == PROC_WORKER && k < p->hb.n_metrics; k++) {
            const char *n = p->hb.metrics[k].name;
            size_t len = strlen(n);
            if (strncmp(n, "memory_", 7) || len < 7 + 6 + 1 || strcmp(n + len - 6, "_bytes") ||
                strspn(n, "abcdefghijklmnopqrstuvwxyz_") != len) /* a label value: nothing to escape */
                continue;
            char lab[64 + PROTO_METRIC_LEN];
            snprintf(lab, sizeof lab, "process=\"%s\",part=\"%.*s\"", p->id, (int)(len - 13), n + 7);
            prom_sample(&b, "rill_worker_memory_bytes", lab, p->hb.metrics[k].value);
        }
    }
    prom_family(&b, "rill_process_peak_rss_bytes", "gauge", "Peak resident memory of the process (VmHWM).");
    prom_sample(&b, "rill_process_peak_rss_bytes", "process=\"supervisor\"", (double)procstat_peak_rss(0));
    for (int i = 0; i < s->t.n; i++) {
        const struct proc *p = &s->t.p[i];
        uint64_t peak = p->pid > 0 ? procstat_peak_rss(p->pid) : 0;
        if (!peak)
            continue;
        char lab[64];
        snprintf(lab, sizeof lab, "process=\"%s\"", p->id);
        prom_sample(&b, "rill_process_peak_rss_bytes", lab, (double)peak);
    }
    static const uint64_t batch_le[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
    for (int i = 1; i < s->t.n; i++) {
        char lab[64];
        snprintf(lab, sizeof lab, "process=\"%s\"", s->t.p[i].id);
        prom_histogram(&b, "rill_worker_step_seconds", i == 1 ? "Time of a worker's steps (one forward pass)." : NULL,
                       lab, &s->step_us[i], 1e6);
    }
    for (int i = 1; i < s->t.n; i++) {
        char lab[64];
        snprintf(lab, sizeof lab, "process=\"%s\"", s->t.p[i].id);
        prom_histogram_bounds(&b, "rill_worker_batch_size", i == 1 ? "Sequences a decode step advanced." : NULL, lab,
                              &s->batch_n[i], batch_le, sizeof batch_le / sizeof batch_le[0], 1);
    }
    /* Both go to the gateway over the control plane: nothing on its event
     * loop reads a file. */
    struct proto_msg m = {.type = PROTO_STATS};
    if (!b.oom && b.len <= PROTO_MAX_TEXT) {
        m.u.stats.prom.p = b.p;
        m.u.stats.prom.len = (uint32_t)b.len;
    }

    /* The same, as JSON, for the dashboard. */
    size_t cap = 4096 + (size_t)s->t.n * 1024;
    char *buf = malloc(cap);
    if (!buf) {
        prom_free(&b);
        return;
    }
    struct jsonw w;
    jsonw_init(&w, buf, cap);
    jsonw_obj_begin(&w);
    jsonw_key_double(&w, "t", (double)now / 1e9, 3);
    jsonw_key(&w, "pressure");
    jsonw_obj_begin(&w);
    jsonw_key_str(&w, "level", pressure_level_name(s->pm.level));
    jsonw_key_str(&w, "reason", s->pm.reason);
    jsonw_key_uint(&w, "budget_bytes", r->budget);
    jsonw_key_uint(&w, "used_bytes", r->used);
    jsonw_key_double(&w, "ratio", r->ratio, 4);
    jsonw_key_double(&w, "psi_some_avg10", r->psi.ok ? r->psi.some_avg10 : 0, 2);
    jsonw_key_double(&w, "psi_full_avg10", r->psi.has_full ? r->psi.full_avg10 : 0, 2);
    jsonw_obj_end(&w);
    jsonw_key(&w, "scaling");
    jsonw_obj_begin(&w);
    jsonw_key_int(&w, "workers", workers_running(s));
    jsonw_key_int(&w, "min", s->sc.c.min);
    jsonw_key_int(&w, "max", s->sc.c.max);
    jsonw_key(&w, "events");
    jsonw_obj_begin(&w);
    for (int k = 0; k < SCALE_WHY_COUNT; k++)
        jsonw_key_uint(&w, scale_why_name((enum scale_why)k), s->sc.events[k]);
    jsonw_obj_end(&w);
    if (s->sc.last.dir != SCALE_NONE) {
        const struct scale_decision *d = &s->sc.last;
        jsonw_key(&w, "last");
        jsonw_obj_begin(&w);
        jsonw_key_str(&w, "direction", scale_dir_name(d->dir));
        jsonw_key_str(&w, "reason", scale_why_name(d->why));
        jsonw_key_str(&w, "worker", s->t.p[1 + d->slot].id);
        jsonw_key_str(&w, "detail", d->detail);
        jsonw_key_double(&w, "ago_s", (double)(now - s->sc.last_ns) / 1e9, 1);
        jsonw_obj_end(&w);
    }
    jsonw_obj_end(&w);
    jsonw_key(&w, "processes");
    jsonw_arr_begin(&w);
    for (int i = 0; i < s->t.n; i++) {
        const struct proc *p = &s->t.p[i];
        const struct proto_heartbeat *h = &p->hb;
        jsonw_obj_begin(&w);
        jsonw_key_str(&w, "id", p->id);
        jsonw_key_str(&w, "role", p->role == PROC_GATEWAY ? "gateway" : "worker");
        jsonw_key_str(&w, "state", proc_state_name(p->state));
        jsonw_key_int(&w, "pid", p->pid);
        jsonw_key_uint(&w, "restarts", p->restarts);
        jsonw_key_str(&w, "last_exit", p->last_exit);
        if (p->role == PROC_WORKER) {
            jsonw_key_uint(&w, "active", h->active);
            jsonw_key_uint(&w, "queued", h->queued);
            jsonw_key_uint(&w, "batch_cap", h->batch_cap);
            jsonw_key_uint(&w, "batch_bound", h->batch_limit);
            jsonw_key_double(&w, "step_p50_ms", h->step_p50_ms, 2);
            jsonw_key_double(&w, "step_p99_ms", h->step_p99_ms, 2);
            jsonw_key_double(&w, "tokens_per_s", h->tokens_per_s, 1);
            jsonw_key_uint(&w, "rss_bytes", h->rss_bytes);
            jsonw_key_uint(&w, "kv_bytes", h->kv_bytes);
            jsonw_key_uint(&w, "kv_capacity_bytes", h->kv_capacity_bytes);
            jsonw_key_uint(&w, "preemptions", h->preemptions);
            jsonw_key_uint(&w, "tokens_total", h->tokens_total);
            jsonw_key(&w, "prefix_cache");
            jsonw_obj_begin(&w);
            jsonw_key_uint(&w, "lookups", h->prefix_lookups);
            jsonw_key_uint(&w, "hits", h->prefix_hits);
            jsonw_key_uint(&w, "lookup_tokens", h->prefix_lookup_tokens);
            jsonw_key_uint(&w, "hit_tokens", h->prefix_hit_tokens);
            jsonw_key_uint(&w, "blocks", h->prefix_blocks);
            jsonw_key_uint(&w, "evictions", h->prefix_evictions);
            jsonw_obj_end(&w);
        }
        jsonw_obj_end(&w);
    }
    jsonw_arr_end(&w);
    jsonw_obj_end(&w);
    if (jsonw_ok(&w)) {
        m.u.stats.json.p = buf;
        m.u.stats.json.len = (uint32_t)jsonw_len(&w);
    }
    const struct proc *g = &s->t.p[0];
    if (g->state == PROC_READY || g->state == PROC_DRAINING)
        send_to(s, g, &m);
    prom_free(&b);
    free(buf);
}

/* --- signals and stopping ----------------------------------------------------------------------------- */

static void begin_drain(struct sup *s, uint64_t now)
{
    s->stopping = true;
    s->drain_deadline_ns = now + (uint64_t)s->c->drain_timeout_s * 1000000000ull;
    rlog_info("draining: the gateway refuses new requests, workers finish theirs (at most %lld s)",
              (long long)s->c->drain_timeout_s);
    struct proto_msg d = {.type = PROTO_DRAIN};
    for (int i = 0; i < s->t.n; i++) {
        struct proc *p = &s->t.p[i];
        if (p->state == PROC_READY) {
            send_to(s, p, &d);
            p->state = PROC_DRAINING;
        } else if (p->pid && p->state == PROC_STARTING) {
            kill(p->pid, SIGTERM); /* nothing accepted yet: just stop */
        } else if (!p->pid) {
            p->state = PROC_DOWN;
        }
    }
    send_workers(s);
}

static void kill_all(struct sup *s, int sig)
{
    for (int i = 0; i < s->t.n; i++)
        if (s->t.p[i].pid)
            kill(s->t.p[i].pid, sig);
}

static bool any_alive(const struct sup *s)
{
    for (int i = 0; i < s->t.n; i++)
        if (s->t.p[i].pid)
            return true;
    return false;
}

static void on_signals(struct sup *s, uint64_t now)
{
    struct signalfd_siginfo si;
    while (read(s->sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGCHLD) {
            reap_children(s, now);
        } else if (!s->stopping) {
            rlog_info("signal %u", si.ssi_signo);
            begin_drain(s, now);
        } else if (!s->hard_stop) {
            rlog_info("second signal: stopping everything now");
            s->hard_stop = true;
            kill_all(s, SIGKILL);
        }
    }
}

/* --- the loop ----------------------------------------------------------------------------------------- */

static int setup(struct sup *s, char *why, size_t why_len)
{
    const struct rill_config *c = s->c;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        snprintf(why, why_len, "cannot find my own binary");
        return RILL_E_IO;
    }
    exe[n] = 0;
    *strrchr(exe, '/') = 0;
    snprintf(s->exe_dir, sizeof s->exe_dir, "%s", exe);
    cfg_run_dir(c, s->run_dir, sizeof s->run_dir);
    if (mkdir(s->run_dir, 0700) != 0 && errno != EEXIST) {
        snprintf(why, why_len, "cannot create run dir %s: %s", s->run_dir, strerror(errno));
        return RILL_E_IO;
    }
    struct stat st;
    if (stat(s->run_dir, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != getuid()) {
        snprintf(why, why_len, "run dir %s is not a directory of mine", s->run_dir);
        return RILL_E_IO;
    }
    chmod(s->run_dir, 0700);
    int rc = clean_predecessor(s, why, why_len);
    if (rc)
        return rc;
    char pid[24];
    int len = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    write_file(s, "supervisor.pid", pid, (size_t)len);
    if ((rc = zs_endpoint_ipc(s->control_ep, sizeof s->control_ep, s->run_dir, "control.sock"))) {
        snprintf(why, why_len, "run dir path too long for a socket: %s", s->run_dir);
        return rc;
    }
    if ((rc = zs_ctx_new(&s->zctx)) || (rc = zs_router(s->zctx, &s->router)) || (rc = zs_bind(s->router, s->control_ep))) {
        snprintf(why, why_len, "cannot bind the control socket %s", s->control_ep);
        return rc;
    }
    s->child = *c;
    snprintf(s->child.run_dir, sizeof s->child.run_dir, "%s", s->run_dir);
    snprintf(s->child.control, sizeof s->child.control, "%s", s->control_ep);
    s->child.config_file[0] = 0;
    if ((rc = pass_secrets(s, why, why_len)))
        return rc;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    s->threads_per_worker = c->threads_per_worker > 0  ? (uint32_t)c->threads_per_worker
                            : c->threads > 0           ? (uint32_t)c->threads
                            : cores > c->workers       ? (uint32_t)(cores / c->workers)
                                                       : 1;
    struct pressure_thresholds th;
    pressure_thresholds_from_config(c, &th);
    if ((rc = pressure_init(&s->pm, &th))) {
        snprintf(why, why_len, "bad pressure thresholds (warning < critical < emergency expected)");
        return rc;
    }
    struct batchctl_config bcfg;
    batchctl_config_from(c, &bcfg);
    if ((rc = batchctl_init(&s->bc, &bcfg))) {
        snprintf(why, why_len, "bad batch controller settings");
        return rc;
    }
    struct procs_policy pol = {(uint32_t)c->restart_max, (uint32_t)c->restart_window_s, 100, 10000,
                               (uint64_t)(c->restart_healthy_s * 1e9)};
    struct scale_config scfg;
    int initial = scale_config_from(c, &scfg, why, why_len);
    if (initial < 0)
        return initial;
    scale_init(&s->sc, &scfg);
    s->initial_workers = initial;
    procs_init(&s->t, &pol, scfg.max);
    for (int i = 1 + initial; i < s->t.n; i++)
        s->t.p[i].state = PROC_OFF;
    s->step_us = calloc((size_t)s->t.n, sizeof *s->step_us);
    s->batch_n = calloc((size_t)s->t.n, sizeof *s->batch_n);
    if (!s->step_us || !s->batch_n) {
        snprintf(why, why_len, "out of memory");
        return RILL_E_NOMEM;
    }
    for (int i = 0; i < s->t.n; i++) {
        hist_init_prom(&s->step_us[i], 1000000);
        hist_init(&s->batch_n[i]);
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL);
    s->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    signal(SIGPIPE, SIG_IGN);
    s->psi_fd = -1;
    if (pressure_trigger_open(NULL, PRESSURE_TRIGGER_STALL_US, PRESSURE_TRIGGER_WINDOW_US, &s->psi_fd) != 0)
        s->psi_fd = -1;
    return 0;
}

static void teardown(struct sup *s)
{
    zs_close(&s->router);
    zs_ctx_term(&s->zctx);
    if (s->psi_fd >= 0)
        close(s->psi_fd);
    if (s->sigfd >= 0)
        close(s->sigfd);
    for (size_t i = 0; rundir_supervisor_files[i]; i++)
        rundir_unlink(s->run_dir, rundir_supervisor_files[i]);
    /* Sockets the children should have removed, if they could not, and
     * causes nobody read. */
    for (int i = 0; i < s->t.n; i++) {
        char f[48];
        snprintf(f, sizeof f, "%s.sock", s->t.p[i].id);
        rundir_unlink(s->run_dir, f);
        snprintf(f, sizeof f, "%s.cause", s->t.p[i].id);
        rundir_unlink(s->run_dir, f);
    }
    if (rmdir(s->run_dir) != 0 && errno != ENOENT)
        rlog_warn("run dir %s not removed: %s", s->run_dir, strerror(errno));
    char prefix[96];
    cfg_ring_prefix(s->c, prefix, sizeof prefix);
    ring_cleanup_stale(prefix);
}

int sup_run(const struct rill_config *c)
{
    struct sup *s = calloc(1, sizeof *s);
    if (!s)
        return 1;
    s->c = c;
    s->sigfd = -1;
    s->started_ns = clock_ns();
    char why[512] = "";
    int rc = setup(s, why, sizeof why);
    if (rc) {
        rlog_error("%s", why[0] ? why : rill_err_name(rc));
        if (rc != RILL_E_EXISTS)
            teardown(s);
        free(s->step_us);
        free(s->batch_n);
        free(s);
        return rc == RILL_E_EXISTS ? 3 : 1;
    }
    rlog_info("supervisor of instance %s: %d worker(s) (%d to %d) x %u thread(s), model %s, run dir %s", c->instance,
              s->initial_workers, s->sc.c.min, s->sc.c.max, s->threads_per_worker, c->model, s->run_dir);
    uint64_t now = clock_ns();
    for (int i = 1; i < s->t.n; i++)
        if (s->t.p[i].state != PROC_OFF)
            start(s, &s->t.p[i], now);
    start(s, &s->t.p[0], now);

    while (!(s->stopping && !any_alive(s))) {
        now = clock_ns();
        long timeout = 100;
        if (s->next_pressure_ns > now) {
            long ms = (long)((s->next_pressure_ns - now) / 1000000);
            timeout = ms < timeout ? ms : timeout;
        } else {
            timeout = 0;
        }
        struct zs_poll p;
        zs_poll_init(&p);
        zs_poll_add(&p, s->router, -1, ZMQ_POLLIN);
        int sig_idx = zs_poll_add(&p, NULL, s->sigfd, ZMQ_POLLIN);
        int psi_idx = s->psi_fd >= 0 ? zs_poll_add(&p, NULL, s->psi_fd, ZMQ_POLLPRI) : -1;
        zs_poll_wait(&p, timeout);
        now = clock_ns();
        if (zs_poll_revents(&p, sig_idx))
            on_signals(s, now);
        struct proto_msg m;
        struct zs_id from;
        int r;
        while ((r = plane_recv(s->router, &from, &m, why, sizeof why)) != RILL_E_AGAIN) {
            if (r == 0) {
                on_control(s, &from, &m, now);
                proto_msg_free(&m);
            } else {
                rlog_warn("bad control message: %s", why);
            }
        }
        if (psi_idx >= 0 && zs_poll_revents(&p, psi_idx))
            s->next_pressure_ns = 0; /* a stall: sample now */
        if (now >= s->next_pressure_ns) {
            sample_pressure(s, now);
            scale_step(s, now);
            s->next_pressure_ns = now + (uint64_t)c->pressure_interval_ms * 1000000ull;
        }
        check_timeouts(s, now);
        if (now >= s->next_stats_ns) {
            write_stats(s, now);
            s->next_stats_ns = now + 500000000ull;
        }
        if (now >= s->next_trim_ns) {
            /* The stats text built twice a second grows with its counters'
             * digits, and each longer buffer lands higher in the heap,
             * whose freed pages glibc keeps: the 30-minute soak saw +68 KiB
             * in steps.  Trimming a 2 MiB heap costs microseconds. */
            malloc_trim(0);
            s->next_trim_ns = now + TRIM_EVERY_NS;
        }
        if (s->stopping && !s->hard_stop && now > s->drain_deadline_ns) {
            rlog_warn("drain took longer than %lld s: stopping the rest", (long long)c->drain_timeout_s);
            kill_all(s, SIGTERM);
            s->drain_deadline_ns = now + 2000000000ull;
            s->hard_stop = true;
        } else if (s->hard_stop && now > s->drain_deadline_ns) {
            kill_all(s, SIGKILL);
        }
    }
    rlog_info("every process stopped; cleaning up");
    teardown(s);
    int status = 0;
    if (s->fatal[0]) {
        /* The one line an operator reads (rill-up, journalctl). */
        fprintf(stderr, "rill: %s: %s\n", s->announced ? "stopped" : "cannot start", s->fatal);
        status = 1;
    }
    free(s->step_us);
    free(s->batch_n);
    free(s);
    return status;
}
