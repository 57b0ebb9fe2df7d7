/* server.h — the gateway process: serve HTTP and WebSocket on `listen`
 * until a second signal or the supervisor's shutdown (a first signal or a
 * drain refuses new generations and finishes the running ones). */
#ifndef RILL_SERVER_H
#define RILL_SERVER_H

#include "common/config.h"

/* Returns 0 after a clean stop, or the error that stopped the set-up (logged). */
int server_run(const struct rill_config *c);

#endif
