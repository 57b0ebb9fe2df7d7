/* sup.h — the supervisor: starts the gateway and the workers, watches them
 * over the control plane, restarts the dead and the hung, reads memory
 * pressure and moves batch bounds, drains everything on a signal.
 *
 * Files in the run dir (mode 0700): control.sock (the control ROUTER),
 * supervisor.pid, children (pids, for a successor to clean up after a
 * kill -9) and secrets (the API keys for the gateway, mode 0600).  Twice a
 * second it sends the gateway a `stats` message: its own and the workers'
 * metrics as Prometheus text (appended to the gateway's /metrics) and as
 * JSON (for the telemetry stream and the dashboard).
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
