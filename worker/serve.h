/* serve.h — the worker process's loop: requests from the gateway over a
 * ZeroMQ ROUTER, control from the supervisor over a DEALER, token records
 * into the shared-memory ring, heartbeats every heartbeat_ms.
 *
 * Names: the worker is "w<worker_id>"; its ring is /rill-<uid>-<instance>-w<id>
 * (mode 0600), its request socket `endpoint` or ipc://<run_dir>/w<id>.sock.
 * SIGTERM/SIGINT or `drain`: finish every accepted request, admit none, exit.
 * A second signal or `shutdown`: end every request with an error record
 * (shutting_down) and exit.
 */
#ifndef RILL_SERVE_H
#define RILL_SERVE_H

#include "common/config.h"
#include "engine.h"

/* Run until drained or shut down.  Returns 0, or the error that stopped the
 * set-up (already logged and, under a supervisor, written as the run dir's
 * w<id>.cause: see common/rundir.h). */
int serve_run(const struct rill_config *c, struct engine *e);

#endif
