/* rundir.c — see rundir.h. */
#include "rundir.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

const char *const rundir_supervisor_files[] = {"control.sock", "supervisor.pid", "children", RUNDIR_SECRETS,
                                               RUNDIR_RESUME_KEY, NULL};

void rundir_unlink(const char *run_dir, const char *name)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", run_dir, name) < (int)sizeof path)
        unlink(path);
}

bool rundir_supervisor_gone(const char *run_dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/supervisor.pid", run_dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return true;
    int pid = 0;
    bool gone = fscanf(f, "%d", &pid) != 1 || pid <= 0 || (kill(pid, 0) != 0 && errno == ESRCH);
    fclose(f);
    if (gone)
        return true;
    /* Killed but not yet reaped by its own parent (a zombie), or the pid
     * reused by another program: gone all the same. */
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    char buf[256] = "";
    f = fopen(path, "r");
    if (!f)
        return true;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *comm = strchr(buf, '('), *end = strrchr(buf, ')');
    if (!comm || !end || end[1] != ' ')
        return true;
    return end[2] == 'Z' || end[2] == 'X' || strncmp(comm + 1, "rill-superv", 11) != 0;
}

void rundir_leave(const char *run_dir, const char *const own[])
{
    if (!run_dir || !run_dir[0])
        return;
    for (size_t i = 0; own && own[i]; i++)
        rundir_unlink(run_dir, own[i]);
    if (!rundir_supervisor_gone(run_dir))
        return;
    for (size_t i = 0; rundir_supervisor_files[i]; i++)
        rundir_unlink(run_dir, rundir_supervisor_files[i]);
    rmdir(run_dir); /* fails while another child still has its socket there */
}

void rundir_write_cause(const char *run_dir, const char *id, const char *fmt, ...)
{
    char path[PATH_MAX], msg[1024];
    if (!run_dir || !run_dir[0] || snprintf(path, sizeof path, "%s/%s.cause", run_dir, id) >= (int)sizeof path)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    msg[strcspn(msg, "\r\n")] = 0; /* one line */
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return;
    ssize_t w = write(fd, msg, strlen(msg));
    (void)w;
    close(fd);
}

bool rundir_take_cause(const char *run_dir, const char *id, char *out, size_t n)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s.cause", run_dir, id) >= (int)sizeof path || !n)
        return false;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return false;
    ssize_t r = read(fd, out, n - 1);
    close(fd);
    unlink(path);
    out[r > 0 ? r : 0] = 0;
    return r > 0;
}

/* Read exactly len bytes of an existing key file we can trust: 0; -2 when
 * there is none (or a short one of ours, left by a crash mid-write, now
 * removed); -1 when it cannot be trusted or read. */
static int read_key(const char *path, void *out, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return errno == ENOENT ? -2 : -1;
    struct stat st;
    ssize_t n = -1;
    bool ours = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() && (st.st_mode & 077) == 0;
    if (ours && (size_t)st.st_size == len)
        n = read(fd, out, len);
    close(fd);
    if (ours && (size_t)st.st_size < len) {
        unlink(path);
        return -2;
    }
    return n == (ssize_t)len ? 0 : -1;
}

int rundir_key(const char *run_dir, const char *name, void *out, size_t len)
{
    char path[PATH_MAX];
    if (!run_dir || !run_dir[0] || snprintf(path, sizeof path, "%s/%s", run_dir, name) >= (int)sizeof path)
        return -1;
    for (int attempt = 0; attempt < 2; attempt++) {
        int rc = read_key(path, out, len);
        if (rc != -2)
            return rc;
        if (getrandom(out, len, 0) != (ssize_t)len)
            return -1;
        /* No temporary file: a process killed here (a stop during start-up)
         * must leave nothing but the key itself, which the run dir's
         * cleanup removes; a short key is found and replaced above. */
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0) {
            if (errno == EEXIST)
                continue; /* another process made it first: read its key */
            return -1;
        }
        bool ok = write(fd, out, len) == (ssize_t)len;
        close(fd);
        return ok ? 0 : -1;
    }
    return -1;
}
