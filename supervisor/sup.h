/* sup.h — the supervisor: starts the gateway and the workers, watches them
 * over the control plane, restarts the dead and the hung, reads memory
 * pressure and moves batch bounds, drains everything on a signal.
 *
 * Files in the run dir (mode 0700): control.sock (the control ROUTER),
 * supervisor.pid, children (pids, for a successor to clean up after a
 * kill -9), supervisor.prom (the supervisor's and workers' metrics in
 * Prometheus text, which the gateway appends to its /metrics) and
 * supervisor.json (the same for the dashboard), both rewritten atomically
 * twice a second.
 *
 * stdout carries exactly one line, "rill ready at http://HOST:PORT/", once
 * every process has said hello; logs go to stderr (or log_file).  Under
 * systemd (NOTIFY_SOCKET) it also sends READY=1.
 */
#ifndef RILL_SUP_H
#define RILL_SUP_H

#include "common/config.h"

/* Run until stopped.  Returns the process exit code (0 after a clean
 * drain). */
int sup_run(const struct rill_config *c);

#endif
