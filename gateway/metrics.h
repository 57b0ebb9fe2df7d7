/* metrics.h — the gateway's counters and cumulative histograms: plain data,
 * written by the layers that see each event (writer: frames and bytes;
 * session: requests, tokens, errors) on the service thread, read by
 * /metrics (http.c) and the telemetry snapshot (telemetry.c).
 */
#ifndef RILL_METRICS_H
#define RILL_METRICS_H

#include <stdint.h>

#include "common/err.h"
#include "common/hist.h"

struct metrics {
    uint64_t requests, requests_ok;
    uint64_t tokens, frames, coalesced_tokens, bytes_out, bytes_in;
    uint64_t connections_total;
    uint64_t errors[RILL_ERR_COUNT];  /* by rill_err_index() of the wire code */
    uint64_t slow_closed;
    uint64_t http_refused;       /* requests and upgrades refused (Host, subprotocol) */
    struct hist ttft_us;         /* submit -> first token at the gateway */
    struct hist itl_us;          /* ring publish -> frame written (delivery) */
    struct hist gen_itl_us;      /* between tokens at the worker */
};

#endif
