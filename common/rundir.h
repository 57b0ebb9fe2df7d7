/* rundir.h — the run directory's files, and leaving it clean.
 *
 * The run dir (mode 0700) holds the control and request sockets, the
 * supervisor's pid, children list, stats and the secrets it hands its
 * children.  The supervisor removes it on exit; when the supervisor died
 * first (kill -9), the last of its children to exit removes it instead, so
 * nothing is left behind either way.
 */
#ifndef RILL_RUNDIR_H
#define RILL_RUNDIR_H

#include <stdbool.h>
#include <stddef.h>

/* The files the supervisor writes in the run dir (NULL-terminated). */
extern const char *const rundir_supervisor_files[];

/* The file where the supervisor puts the secrets its children need (API
 * keys), mode 0600: never on a command line or in an environment. */
#define RUNDIR_SECRETS "secrets"

/* The key of the gateway's resume tokens (rundir_key), kept here so that a
 * restarted gateway checks the tokens its predecessor gave out; removed with
 * the run dir. */
#define RUNDIR_RESUME_KEY "resume.key"

/* The len-byte secret in run_dir/name (mode 0600, ours): read, or made from
 * the kernel's randomness when there is none yet.  0, or -1 (no run dir,
 * an untrustworthy file, I/O). */
int rundir_key(const char *run_dir, const char *name, void *out, size_t len);

/* Whether the supervisor that wrote run_dir/supervisor.pid is gone (no such
 * file, or no such process). */
bool rundir_supervisor_gone(const char *run_dir);

/* A child leaves: unlink its own files (names in run_dir, NULL-terminated,
 * may be NULL); when the supervisor is gone, its files too; then remove the
 * directory if that left it empty.  Best effort: errors are ignored. */
void rundir_leave(const char *run_dir, const char *const own[]);

/* The exit status of a supervised process that cannot start for a reason
 * a restart will not fix (a bad model file, a port in use, a full
 * /dev/shm): before exiting with it, the process writes the one-line cause
 * to run_dir/<id>.cause (rundir_write_cause), which the supervisor prints
 * as it exits non-zero itself.  78 is sysexits' EX_CONFIG. */
#define RUNDIR_EXIT_STARTUP 78

/* Write the cause (printf format) to run_dir/<id>.cause, mode 0600.
 * Best effort. */
void rundir_write_cause(const char *run_dir, const char *id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Read (and remove) run_dir/<id>.cause into out; false when there is none. */
bool rundir_take_cause(const char *run_dir, const char *id, char *out, size_t n);

/* Unlink name in run_dir (best effort). */
void rundir_unlink(const char *run_dir, const char *name);

#endif
