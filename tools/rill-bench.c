/* rill-bench — a WebSocket load generator for rill-gateway.
 *
 *   rill-bench [--url ws://127.0.0.1:8765/stream] [--protocol json|msgpack]
 *              [--prompt TEXT | --prompt-file FILE] [--max-tokens N]
 *              [--temperature T] [--top-p P] [--seed S] [--key KEY]
 *              [--connections N] (--concurrency C | --rate R | --burst N) [--streams-per-conn K]
 *              [--max-tokens-range LO:HI] [--prompt-words LO:HI] [--arrival-seed S]
 *              [--duration S] [--requests N] [--warmup S] [--ramp STREAMS_PER_S]
 *              [--retry-ms MS] [--fanout] [--idle] [--gateway-pid PID]
 *              [--worker-pid PID] [--json FILE] [--quiet] [--event-loop libev|poll]
 *              [--repeat N] [--pause S] [--save FILE] [--compare BASELINE.json]
 *              [--threshold PCT] [--tail-threshold PCT] [--fail-on-regression]
 *
 * One thread, one lws client context, many connections.  Closed loop
 * (--concurrency C): C generations in flight, spread over the connections;
 * each slot sends its next request when the previous one ends (after
 * --retry-ms when it ended in an error).  Open loop (--rate R): Poisson
 * arrivals at R requests/s, each on the next connection with a free stream
 * (none free: counted as client_saturated, not sent).  Burst (--burst N):
 * N connections open first, then N generations are sent at once, one per
 * connection, and the run ends when all N have ended (nothing is resent).
 *
 * Lengths: --max-tokens-range LO:HI draws each request's max_tokens, and
 * --prompt-words LO:HI each prompt's length in words (the prompt's words
 * repeated), uniformly; arrivals and lengths come from --arrival-seed, so two
 * runs with one seed send the same requests at the same offsets.  The
 * concurrency reached (generations sent and not yet ended, sampled every
 * tick of the measured window: mean and max) is reported with the results.
 *
 * Phases: ramp (connect; closed loop: every slot started — with --fanout,
 * every slot has its first token), warmup (--warmup s), measure (--duration
 * s, or until --requests requests sent in the window have ended), stop (close
 * everything; the gateway cancels what is still running).  Only the measured
 * window counts, except time to first token, which falls back to every
 * request when none was sent in the window (the fan-out case).  A closed-loop
 * --requests run without warmup measures from the first send.
 *
 * --fanout asks for params.timestamps and records, per token, client receive
 * time (CLOCK_MONOTONIC) minus the worker's gen_us: the latency the gateway
 * and the client add to a token (same host only).  It also records the
 * time the frame's bytes reached the client's socket (the kernel's receive
 * timestamp, SO_TIMESTAMPING) minus gen_us: the gateway's part alone,
 * without the time the frame then waits for this client to read it.  On
 * loopback the bytes reach the socket inside the gateway's send.  --idle only connects:
 * the gateway's RSS growth per idle connection (--gateway-pid required).
 *
 * Inter-token latency is between client receive times: tokens that arrive
 * in one coalesced "tokens" frame count 0 after the first — what the
 * client saw.  Receive times are taken when lws hands the frame over, so a
 * busy client adds its own delay: the bench's CPU, the watched processes'
 * CPU and everybody else's on the machine are reported with the results.
 *
 * The loop: lws with its libev plugin (epoll) by default — lws's own poll()
 * scans every connection on every wake-up, which at thousands of
 * connections costs the client more than reading its frames.  The run's
 * clock is two timerfds adopted into the loop (a 5 ms tick, and the next
 * open-loop arrival), which wake either kind of loop.
 *
 * Regression checks: --repeat N runs the whole measurement (connect, ramp,
 * warmup, window, stop) N times, --pause s apart, and reports per figure
 * the median of the runs and their noise, (max - min) / median.  --save
 * FILE writes those figures, every run's values and full results, and where
 * they come from (date, git commit, machine, command line).  --compare
 * BASELINE (a --save file of an earlier run) hands both to bench-compare
 * (next to this binary), which prints each figure's change and flags it
 * REGRESSION or improved when it is beyond max(threshold, noise of either
 * side).  Figures: tokens/s, per-stream tokens/s, TTFT and inter-token
 * p50/p95/p99, added latency p50/p99 (--fanout), errors, gateway CPU and RSS
 * (--gateway-pid), RSS per idle connection (--idle).
 */
#include "common/clock.h"
#include "common/err.h"
#include "common/hist.h"
#include "common/jsonw.h"
#include "common/log.h"
#include "tools/lib/benchfig.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <libwebsockets.h>
#include <math.h>
#include <msgpack.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/errqueue.h>
#include <linux/net_tstamp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BENCH_MAX_CONNECTING 256      /* handshakes in flight at once */
#define BENCH_TICK_US        5000
#define BENCH_RAMP_TIMEOUT_S 60.0
#define BENCH_STOP_TIMEOUT_S 3.0
#define BENCH_ID_BITS        20       /* request id = generation << 20 | slot */
#define BENCH_MAX_SLOTS      (1u << BENCH_ID_BITS)
#define BENCH_MAX_REPEAT     100
#define BENCH_SAVE_FORMAT    1        /* "rill_bench_save" of --save files */
#define BENCH_EXIT_REGRESSION 4       /* --fail-on-regression and one was flagged */

/* --- options -------------------------------------------------------------------------- */

struct opts {
    const char *url;
    bool msgpack;
    const char *prompt, *prompt_file;
    long max_tokens;                 /* 0: the server's default */
    long max_tokens_lo, max_tokens_hi; /* --max-tokens-range (0: unset) */
    long prompt_words_lo, prompt_words_hi; /* --prompt-words (0: unset) */
    long burst;                      /* --burst N (0: not a burst) */
    bool has_arrival_seed;
    unsigned long long arrival_seed;
    double temperature, top_p;
    bool has_temperature, has_top_p, has_seed;
    unsigned long long seed;
    const char *key;
    long connections;                /* 0: the mode's default */
    long concurrency;
    double rate;
    long streams_per_conn;
    double duration;                 /* 0: unset */
    long requests;                   /* 0: unset */
    double warmup;
    double ramp;                     /* slot starts per second, 0: all at once */
    double retry_ms;
    bool fanout, idle, quiet, poll_loop;
    int gateway_pid, worker_pid;
    const char *json;
    long repeat;                     /* whole measurements; the figures are their medians */
    double pause;                    /* seconds between them */
    const char *save, *compare;
    double threshold, tail_threshold; /* %, for bench-compare */
    bool has_tail_threshold, fail_on_regression;
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: rill-bench [options]\n"
            "  --url URL              ws://HOST:PORT/stream (default ws://127.0.0.1:8765/stream)\n"
            "  --protocol json|msgpack  rill.json.v1 (default) or rill.msgpack.v1\n"
            "  --prompt TEXT          prompt of every request (default \"Once upon a time\")\n"
            "  --prompt-file FILE     one prompt per line, used in turn\n"
            "  --max-tokens N         max_tokens of every request (default: the server's)\n"
            "  --temperature T, --top-p P, --seed S   sampling parameters\n"
            "  --key KEY              API key (sent in a hello message)\n"
            "  --connections N        WebSocket connections (default: closed loop one per stream, open loop 16)\n"
            "  --concurrency C        closed loop: C generations in flight\n"
            "  --rate R               open loop: Poisson arrivals at R requests/s\n"
            "  --burst N              N generations sent at once (after N connections open); ends when all end\n"
            "  --max-tokens-range LO:HI  each request's max_tokens drawn uniformly from LO..HI\n"
            "  --prompt-words LO:HI   each prompt LO..HI words long (the prompt's words repeated)\n"
            "  --arrival-seed S       seed of arrivals and lengths (default: from the clock)\n"
            "  --streams-per-conn K   open loop: at most K in flight per connection (default 16)\n"
            "  --duration S           measured seconds (default 10 unless --requests)\n"
            "  --requests N           end after N requests sent in the window have ended\n"
            "  --warmup S             seconds after the ramp before measuring (default 0)\n"
            "  --ramp R               closed loop: start at most R streams per second (default: all at once)\n"
            "  --retry-ms MS          closed loop: pause of a slot after an error (default 100)\n"
            "  --fanout               ask for timestamps; report added latency per token\n"
            "  --idle                 only connect; report gateway RSS per idle connection\n"
            "  --gateway-pid PID      report the gateway's CPU and RSS over the window\n"
            "  --worker-pid PID       report the worker's CPU too\n"
            "  --json FILE            write the results as JSON\n"
            "  --quiet                print nothing but errors (use with --json)\n"
            "  --event-loop libev|poll  the client's loop: libev (epoll, default) or lws's poll(), which\n"
            "                         scans every connection per wake-up and costs the client CPU\n"
            "regression checks:\n"
            "  --repeat N             run the whole measurement N times (default 1); figures are the medians,\n"
            "                         noise is (max - min) / median of the runs; --json gets the last run\n"
            "  --pause S              seconds between repeats, for the server to drop the cancelled streams\n"
            "                         (default 2); with --idle only the first run sees a fresh gateway\n"
            "  --save FILE            write the figures (median, noise, every run), every run's results and\n"
            "                         the date, git commit, machine and command line\n"
            "  --compare BASELINE     compare with an earlier --save file (through bench-compare): baseline,\n"
            "                         now, change, noise of both, and REGRESSION / improved / ~\n"
            "  --threshold PCT        change that counts for throughputs and medians (default 10)\n"
            "  --tail-threshold PCT   the same for p95/p99 figures (default twice --threshold)\n"
            "  --fail-on-regression   exit 4 when --compare flagged a regression\n"
            "exit: 0; 1 error; 2 bad arguments; 3 nothing was received; 4 regression (--fail-on-regression)\n");
}

static int num_arg(const char *name, const char *v, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (end == v || *end || errno || !isfinite(d) || d < lo || d > hi) {
        fprintf(stderr, "rill-bench: bad value '%s' for --%s (expected %g .. %g)\n", v, name, lo, hi);
        return RILL_E_BAD_CONFIG;
    }
    *out = d;
    return 0;
}

enum {
    O_URL = 1, O_PROTOCOL, O_PROMPT, O_PROMPT_FILE, O_MAX_TOKENS, O_TEMPERATURE, O_TOP_P, O_SEED, O_KEY,
    O_CONNECTIONS, O_CONCURRENCY, O_RATE, O_SPC, O_DURATION, O_REQUESTS, O_WARMUP, O_RAMP, O_RETRY, O_FANOUT,
    O_IDLE, O_GW_PID, O_W_PID, O_JSON, O_QUIET, O_EVLOOP, O_REPEAT, O_PAUSE, O_SAVE, O_COMPARE, O_THRESHOLD,
    O_TAIL_THRESHOLD, O_FAIL_REGRESSION, O_BURST, O_MT_RANGE, O_PROMPT_WORDS, O_ARRIVAL_SEED, O_HELP
};

/* "LO:HI" with lo <= hi, both in [min, max]. */
static int range_arg(const char *name, const char *v, long min, long max, long *lo, long *hi)
{
    char *end;
    errno = 0;
    long a = strtol(v, &end, 10), c = a;
    if (*end == ':')
        c = strtol(end + 1, &end, 10);
    if (end == v || *end || errno || a < min || c > max || a > c) {
        fprintf(stderr, "rill-bench: bad value '%s' for --%s (expected LO:HI within %ld .. %ld)\n", v, name, min,
                max);
        return RILL_E_BAD_CONFIG;
    }
    *lo = a;
    *hi = c;
    return 0;
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
    static const struct option lo[] = {
        {"url", 1, 0, O_URL},           {"protocol", 1, 0, O_PROTOCOL},     {"prompt", 1, 0, O_PROMPT},
        {"prompt-file", 1, 0, O_PROMPT_FILE}, {"max-tokens", 1, 0, O_MAX_TOKENS},
        {"temperature", 1, 0, O_TEMPERATURE}, {"top-p", 1, 0, O_TOP_P},   {"seed", 1, 0, O_SEED},
        {"key", 1, 0, O_KEY},           {"connections", 1, 0, O_CONNECTIONS}, {"concurrency", 1, 0, O_CONCURRENCY},
        {"rate", 1, 0, O_RATE},         {"streams-per-conn", 1, 0, O_SPC},  {"duration", 1, 0, O_DURATION},
        {"requests", 1, 0, O_REQUESTS}, {"warmup", 1, 0, O_WARMUP},         {"ramp", 1, 0, O_RAMP},
        {"retry-ms", 1, 0, O_RETRY},    {"fanout", 0, 0, O_FANOUT},         {"idle", 0, 0, O_IDLE},
        {"gateway-pid", 1, 0, O_GW_PID}, {"worker-pid", 1, 0, O_W_PID},     {"json", 1, 0, O_JSON},
        {"quiet", 0, 0, O_QUIET},       {"event-loop", 1, 0, O_EVLOOP},     {"repeat", 1, 0, O_REPEAT},
        {"pause", 1, 0, O_PAUSE},       {"save", 1, 0, O_SAVE},             {"compare", 1, 0, O_COMPARE},
        {"threshold", 1, 0, O_THRESHOLD}, {"tail-threshold", 1, 0, O_TAIL_THRESHOLD},
        {"fail-on-regression", 0, 0, O_FAIL_REGRESSION}, {"help", 0, 0, O_HELP},
        {"burst", 1, 0, O_BURST},       {"max-tokens-range", 1, 0, O_MT_RANGE},
        {"prompt-words", 1, 0, O_PROMPT_WORDS}, {"arrival-seed", 1, 0, O_ARRIVAL_SEED},
        {0, 0, 0, 0}};
    memset(o, 0, sizeof *o);
    o->url = "ws://127.0.0.1:8765/stream";
    o->prompt = "Once upon a time";
    o->retry_ms = 100;
    o->repeat = 1;
    o->pause = 2;
    o->threshold = 10;
    int ch;
    double d;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        const char *v = optarg;
        int rc = 0;
        switch (ch) {
        case O_URL: o->url = v; break;
        case O_PROTOCOL:
            if (!strcmp(v, "json") || !strcmp(v, "rill.json.v1"))
                o->msgpack = false;
            else if (!strcmp(v, "msgpack") || !strcmp(v, "rill.msgpack.v1"))
                o->msgpack = true;
            else {
                fprintf(stderr, "rill-bench: bad value '%s' for --protocol (json or msgpack)\n", v);
                return RILL_E_BAD_CONFIG;
            }
            break;
        case O_PROMPT: o->prompt = v; break;
        case O_PROMPT_FILE: o->prompt_file = v; break;
        case O_MAX_TOKENS: rc = num_arg("max-tokens", v, 1, 1048576, &d); o->max_tokens = (long)d; break;
        case O_TEMPERATURE: rc = num_arg("temperature", v, 0, 100, &o->temperature); o->has_temperature = true; break;
        case O_TOP_P: rc = num_arg("top-p", v, 0, 1, &o->top_p); o->has_top_p = true; break;
        case O_SEED: rc = num_arg("seed", v, 0, 9007199254740991.0, &d); o->seed = (unsigned long long)d; o->has_seed = true; break;
        case O_KEY: o->key = v; break;
        case O_CONNECTIONS: rc = num_arg("connections", v, 1, 1000000, &d); o->connections = (long)d; break;
        case O_CONCURRENCY: rc = num_arg("concurrency", v, 1, BENCH_MAX_SLOTS - 1, &d); o->concurrency = (long)d; break;
        case O_RATE: rc = num_arg("rate", v, 1e-3, 1e7, &o->rate); break;
        case O_SPC: rc = num_arg("streams-per-conn", v, 1, 65536, &d); o->streams_per_conn = (long)d; break;
        case O_DURATION: rc = num_arg("duration", v, 0.01, 1e6, &o->duration); break;
        case O_REQUESTS: rc = num_arg("requests", v, 1, 1e12, &d); o->requests = (long)d; break;
        case O_WARMUP: rc = num_arg("warmup", v, 0, 1e6, &o->warmup); break;
        case O_RAMP: rc = num_arg("ramp", v, 0, 1e9, &o->ramp); break;
        case O_RETRY: rc = num_arg("retry-ms", v, 0, 1e6, &o->retry_ms); break;
        case O_FANOUT: o->fanout = true; break;
        case O_IDLE: o->idle = true; break;
        case O_GW_PID: rc = num_arg("gateway-pid", v, 1, 1 << 30, &d); o->gateway_pid = (int)d; break;
        case O_W_PID: rc = num_arg("worker-pid", v, 1, 1 << 30, &d); o->worker_pid = (int)d; break;
        case O_JSON: o->json = v; break;
        case O_QUIET: o->quiet = true; break;
        case O_EVLOOP:
            if (!strcmp(v, "poll") || !strcmp(v, "libev"))
                o->poll_loop = !strcmp(v, "poll");
            else {
                fprintf(stderr, "rill-bench: bad value '%s' for --event-loop (libev or poll)\n", v);
                return RILL_E_BAD_CONFIG;
            }
            break;
        case O_REPEAT: rc = num_arg("repeat", v, 1, BENCH_MAX_REPEAT, &d); o->repeat = (long)d; break;
        case O_PAUSE: rc = num_arg("pause", v, 0, 3600, &o->pause); break;
        case O_SAVE: o->save = v; break;
        case O_COMPARE: o->compare = v; break;
        case O_THRESHOLD: rc = num_arg("threshold", v, 0, 10000, &o->threshold); break;
        case O_TAIL_THRESHOLD:
            rc = num_arg("tail-threshold", v, 0, 10000, &o->tail_threshold);
            o->has_tail_threshold = true;
            break;
        case O_FAIL_REGRESSION: o->fail_on_regression = true; break;
        case O_BURST: rc = num_arg("burst", v, 1, BENCH_MAX_SLOTS - 1, &d); o->burst = (long)d; break;
        case O_MT_RANGE: rc = range_arg("max-tokens-range", v, 1, 1048576, &o->max_tokens_lo, &o->max_tokens_hi); break;
        case O_PROMPT_WORDS:
            rc = range_arg("prompt-words", v, 1, 100000, &o->prompt_words_lo, &o->prompt_words_hi);
            break;
        case O_ARRIVAL_SEED:
            rc = num_arg("arrival-seed", v, 0, 9007199254740991.0, &d);
            o->arrival_seed = (unsigned long long)d;
            o->has_arrival_seed = true;
            break;
        case O_HELP: usage(stdout); exit(0);
        default:
            fprintf(stderr, "rill-bench: unknown or incomplete option '%s'\n", argv[optind - 1]);
            usage(stderr);
            return RILL_E_BAD_CONFIG;
        }
        if (rc)
            return rc;
    }
    if (optind < argc) {
        fprintf(stderr, "rill-bench: unexpected argument '%s'\n", argv[optind]);
        return RILL_E_BAD_CONFIG;
    }
    /* A missing baseline shows now, not after the whole run. */
    if (o->compare && access(o->compare, R_OK)) {
        fprintf(stderr, "rill-bench: cannot read the baseline %s: %s (make one with --save)\n", o->compare,
                strerror(errno));
        return RILL_E_BAD_CONFIG;
    }
    if (o->fail_on_regression && !o->compare) {
        fprintf(stderr, "rill-bench: --fail-on-regression needs --compare\n");
        return RILL_E_BAD_CONFIG;
    }
    if (o->idle) {
        if (!o->connections || !o->gateway_pid) {
            fprintf(stderr, "rill-bench: --idle needs --connections and --gateway-pid\n");
            return RILL_E_BAD_CONFIG;
        }
        if (!o->duration)
            o->duration = 1;
        return 0;
    }
    if (o->burst) {
        /* A burst is a closed loop whose slots send once, all in the window. */
        if (o->concurrency || o->rate || o->fanout || o->requests) {
            fprintf(stderr, "rill-bench: --burst goes without --concurrency, --rate, --fanout and --requests\n");
            return RILL_E_BAD_CONFIG;
        }
        o->concurrency = o->burst;
        o->requests = o->burst;
        o->warmup = 0;
        if (!o->duration)
            o->duration = 600; /* a bound, in case some never end */
    }
    if (!o->concurrency == !o->rate) {
        fprintf(stderr, "rill-bench: give one of --concurrency (closed loop), --rate (open loop) or --burst\n");
        return RILL_E_BAD_CONFIG;
    }
    if (o->fanout && o->rate) {
        fprintf(stderr, "rill-bench: --fanout is a closed-loop mode (--concurrency)\n");
        return RILL_E_BAD_CONFIG;
    }
    if (!o->duration && !o->requests)
        o->duration = 10;
    if (!o->streams_per_conn)
        o->streams_per_conn = 16;
    if (!o->connections)
        o->connections = o->concurrency ? o->concurrency : 16;
    if (o->concurrency && o->connections > o->concurrency)
        o->connections = o->concurrency;
    return 0;
}

/* --- state ---------------------------------------------------------------------------------- */

enum slot_state { SL_FREE, SL_WAIT, SL_QUEUED, SL_INFLIGHT };
enum phase { PH_RAMP, PH_WARMUP, PH_MEASURE, PH_STOP, PH_DONE };
enum conn_state { CN_NEW, CN_CONNECTING, CN_OPEN, CN_DOWN };

/* One generation slot.  A closed-loop slot belongs to one connection for
 * the whole run; an open-loop slot is taken from the free list per request. */
struct slot {
    uint32_t idx;
    enum slot_state st;
    struct bconn *c;
    uint32_t gen;                    /* id = gen << BENCH_ID_BITS | idx */
    uint64_t retry_at;               /* SL_WAIT: not before */
    uint64_t t_send, t_first, t_last;
    uint32_t n_tokens;
    bool in_window;                  /* sent during the measured window */
    bool started;                    /* has ever been sent (ramp) */
    bool got_first;                  /* has ever had a token (fan-out ramp) */
    uint32_t next_free;
};

struct outmsg {
    struct outmsg *next;
    struct slot *slot;               /* a generate: its send time is the write */
    size_t len;
    unsigned char data[];            /* LWS_PRE headroom, then the message */
};

struct bconn {
    uint32_t idx;
    enum conn_state st;
    struct lws *wsi;
    struct outmsg *q_head, *q_tail;
    uint32_t inflight;               /* open loop: slots on this connection */
    uint64_t reconnect_at;
    bool want_close;
    unsigned char *rx;
    size_t rx_len, rx_cap;
};

/* Error tallies: the wire codes, then the bench's own. */
enum { ERR_CLOSED = RILL_ERR_COUNT, ERR_BAD_FRAME, ERR_OTHER, ERR_SLOTS };

struct proc_sample {
    bool ok;
    uint64_t ticks, main_ticks;      /* utime + stime: process, its main thread */
    uint64_t rss_kb;                 /* VmRSS */
    uint64_t anon_kb, shmem_kb;      /* of which private, and shared memory (the token ring) */
};

struct bench {
    struct opts o;
    char url_buf[512];
    const char *host, *path_tail;
    char path[512];
    int port;
    bool tls;
    char **prompts;
    size_t n_prompts, next_prompt;
    struct lws_context *ctx;
    int tick_fd, arrival_fd;         /* timerfds adopted into the lws loop */
    msgpack_zone zone;
    uint64_t rng;
    /* connections and slots */
    struct bconn *conns;
    uint32_t n_conns, n_open, n_connecting, next_connect, rr;
    uint64_t conn_errors, conn_drops;
    struct slot *slots;
    uint32_t n_slots, free_head;
    uint32_t started_slots, first_slots;
    /* phases */
    enum phase ph;
    uint64_t t0, t_ramp_done, t_measure, t_end, t_stop;
    double next_arrival_s;           /* open loop, seconds after t_measure0 */
    uint64_t t_arrivals0;
    /* window counters */
    uint64_t sent, sent_window, done_window, completed, errored;
    uint64_t errors[ERR_SLOTS];
    uint64_t client_saturated;
    uint64_t tokens, frames, bytes_in, tokens_all; /* frames: token frames only */
    uint64_t negative_added;
    struct hist ttft_window, ttft_all, itl, added, added_sock;
    uint64_t frame_rx_ns;        /* the frame being read reached the socket then (0: unknown) */
    char prompt_buf[65536];          /* --prompt-words: the prompt being sent */
    uint64_t inflight;               /* sent and not ended */
    uint64_t inflight_max, inflight_sum, inflight_ticks; /* sampled each measured tick */
    double *rates;
    size_t n_rates, cap_rates;
    /* processes */
    struct proc_sample gw0, gw1, wk0, wk1;
    uint64_t gw_rss_max_kb, gw_rss_start_kb, idle_rss_before_kb, idle_rss_after_kb;
    uint32_t open_at_end;
    struct rusage ru0, ru1;
    uint64_t sys_busy0, sys_busy1;   /* every core's busy ticks (/proc/stat) */
    bool stop_signal;
    bool ctx_destroying;
    bool ever_open, fatal;
};

static volatile sig_atomic_t got_signal;
static void on_signal(int sig) { (void)sig; got_signal = 1; }
static void on_evlib_signal(void *handle, int sig) { (void)handle; (void)sig; got_signal = 1; }

static double secs(uint64_t ns) { return (double)ns / 1e9; }

static uint64_t rng_next(struct bench *b)
{
    uint64_t x = b->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    b->rng = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* Exponential inter-arrival time for a Poisson process of `rate` per second. */
static double rng_exp(struct bench *b, double rate)
{
    double u = ((double)(rng_next(b) >> 11) + 1.0) / 9007199254740993.0; /* (0, 1] */
    return -log(u) / rate;
}

/* --- /proc ----------------------------------------------------------------------------------- */

static int read_file(const char *path, char *buf, size_t n)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return RILL_E_IO;
    size_t k = fread(buf, 1, n - 1, f);
    buf[k] = 0;
    fclose(f);
    return k ? 0 : RILL_E_IO;
}

/* utime + stime of a /proc/.../stat file, in clock ticks. */
static int stat_ticks(const char *path, uint64_t *out)
{
    char buf[1024];
    if (read_file(path, buf, sizeof buf))
        return RILL_E_IO;
    const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    if (!p)
        return RILL_E_BAD_FORMAT;
    p++;
    /* After ')': field 3 (state) ... field 14 utime, 15 stime. */
    unsigned long long ut, st;
    if (sscanf(p, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return RILL_E_BAD_FORMAT;
    *out = ut + st;
    return 0;
}

/* RssAnon and RssShmem: the gateway maps every worker's token ring, whose
 * touched pages count in its VmRSS without being its own memory. */
static void proc_rss_parts_kb(int pid, uint64_t *anon, uint64_t *shmem)
{
    char path[64], buf[4096];
    unsigned long long v;
    *anon = *shmem = 0;
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    if (read_file(path, buf, sizeof buf))
        return;
    const char *p = strstr(buf, "RssAnon:");
    if (p && sscanf(p + 8, " %llu", &v) == 1)
        *anon = v;
    p = strstr(buf, "RssShmem:");
    if (p && sscanf(p + 9, " %llu", &v) == 1)
        *shmem = v;
}

static int proc_rss_kb(int pid, uint64_t *kb)
{
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    if (read_file(path, buf, sizeof buf))
        return RILL_E_IO;
    const char *p = strstr(buf, "VmRSS:");
    unsigned long long v;
    if (!p || sscanf(p + 6, " %llu", &v) != 1)
        return RILL_E_BAD_FORMAT;
    *kb = v;
    return 0;
}

static void proc_sample(int pid, struct proc_sample *s)
{
    memset(s, 0, sizeof *s);
    if (!pid)
        return;
    char path[96];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    if (stat_ticks(path, &s->ticks))
        return;
    snprintf(path, sizeof path, "/proc/%d/task/%d/stat", pid, pid);
    if (stat_ticks(path, &s->main_ticks))
        return;
    s->ok = proc_rss_kb(pid, &s->rss_kb) == 0;
    if (s->ok)
        proc_rss_parts_kb(pid, &s->anon_kb, &s->shmem_kb);
}

/* Busy clock ticks of all cores together (everything but idle and iowait). */
static uint64_t sys_busy_ticks(void)
{
    char buf[512];
    unsigned long long v[8] = {0};
    if (read_file("/proc/stat", buf, sizeof buf) ||
        sscanf(buf, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
               &v[7]) < 4)
        return 0;
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]; /* user nice system irq softirq steal */
}

static double cpu_pct(uint64_t ticks, double wall_s)
{
    return wall_s > 0 ? 100.0 * (double)ticks / (double)sysconf(_SC_CLK_TCK) / wall_s : 0;
}

static double tv_s(struct timeval tv) { return (double)tv.tv_sec + tv.tv_usec / 1e6; }

/* --- prompts ---------------------------------------------------------------------------------- */

static int load_prompts(struct bench *b)
{
    if (!b->o.prompt_file) {
        b->prompts = malloc(sizeof *b->prompts);
        if (!b->prompts || !(b->prompts[0] = strdup(b->o.prompt)))
            return RILL_E_NOMEM;
        b->n_prompts = 1;
        return 0;
    }
    FILE *f = fopen(b->o.prompt_file, "r");
    if (!f) {
        fprintf(stderr, "rill-bench: cannot read %s: %s\n", b->o.prompt_file, strerror(errno));
        return RILL_E_IO;
    }
    char *line = NULL;
    size_t cap = 0, n_cap = 0;
    ssize_t len;
    int rc = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        if (!len)
            continue;
        if (b->n_prompts == n_cap) {
            n_cap = n_cap ? n_cap * 2 : 64;
            char **p = realloc(b->prompts, n_cap * sizeof *p);
            if (!p) {
                rc = RILL_E_NOMEM;
                break;
            }
            b->prompts = p;
        }
        if (!(b->prompts[b->n_prompts] = strdup(line))) {
            rc = RILL_E_NOMEM;
            break;
        }
        b->n_prompts++;
    }
    free(line);
    fclose(f);
    if (!rc && !b->n_prompts) {
        fprintf(stderr, "rill-bench: %s has no prompts\n", b->o.prompt_file);
        rc = RILL_E_BAD_CONFIG;
    }
    return rc;
}

/* --- messages out ----------------------------------------------------------------------------- */

static struct outmsg *msg_new(const void *data, size_t len, struct slot *s)
{
    struct outmsg *m = malloc(sizeof *m + LWS_PRE + len);
    if (!m)
        return NULL;
    m->next = NULL;
    m->slot = s;
    m->len = len;
    memcpy(m->data + LWS_PRE, data, len);
    return m;
}

static void conn_push(struct bconn *c, struct outmsg *m)
{
    if (c->q_tail)
        c->q_tail->next = m;
    else
        c->q_head = m;
    c->q_tail = m;
    if (c->wsi && c->st == CN_OPEN)
        lws_callback_on_writable(c->wsi);
}

static int mpw_sbuf(void *data, const char *buf, size_t len) { return msgpack_sbuffer_write(data, buf, len); }

static void mp_kstr(msgpack_packer *pk, const char *k, const char *v)
{
    size_t kl = strlen(k), vl = strlen(v);
    msgpack_pack_str(pk, kl);
    msgpack_pack_str_body(pk, k, kl);
    msgpack_pack_str(pk, vl);
    msgpack_pack_str_body(pk, v, vl);
}

static void mp_k(msgpack_packer *pk, const char *k)
{
    size_t kl = strlen(k);
    msgpack_pack_str(pk, kl);
    msgpack_pack_str_body(pk, k, kl);
}

static uint64_t slot_id(const struct slot *s) { return (uint64_t)s->gen << BENCH_ID_BITS | s->idx; }

/* The generate message of slot s (a new generation of it). */
static uint64_t rng_next(struct bench *b);

/* A uniform draw from lo..hi. */
static long rng_range(struct bench *b, long lo, long hi)
{
    return lo + (long)(rng_next(b) % (uint64_t)(hi - lo + 1));
}

/* The prompt's words, repeated to `words` words, into b->prompt_buf (cut
 * short when it is full). */
static const char *prompt_of_words(struct bench *b, const char *prompt, long words)
{
    size_t n = 0, cap = sizeof b->prompt_buf;
    const char *p = prompt;
    for (long k = 0; k < words; k++) {
        while (*p == ' ')
            p++;
        if (!*p) {
            p = prompt;
            while (*p == ' ')
                p++;
            if (!*p)
                break; /* a prompt of no words */
        }
        size_t len = strcspn(p, " ");
        if (n + len + 2 > cap)
            break;
        if (n)
            b->prompt_buf[n++] = ' ';
        memcpy(b->prompt_buf + n, p, len);
        n += len;
        p += len;
    }
    b->prompt_buf[n] = 0;
    return b->prompt_buf;
}

static struct outmsg *build_generate(struct bench *b, struct slot *s)
{
    const struct opts *o = &b->o;
    const char *prompt = b->prompts[b->next_prompt++ % b->n_prompts];
    if (o->prompt_words_lo)
        prompt = prompt_of_words(b, prompt, rng_range(b, o->prompt_words_lo, o->prompt_words_hi));
    long max_tokens = o->max_tokens_lo ? rng_range(b, o->max_tokens_lo, o->max_tokens_hi) : o->max_tokens;
    uint32_t n_params = o->has_temperature + o->has_top_p + o->has_seed + o->fanout;
    if (o->msgpack) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, mpw_sbuf);
        msgpack_pack_map(&pk, 3 + (max_tokens > 0) + (n_params > 0));
        mp_kstr(&pk, "type", "generate");
        mp_k(&pk, "id");
        msgpack_pack_uint64(&pk, slot_id(s));
        mp_kstr(&pk, "prompt", prompt);
        if (max_tokens > 0) {
            mp_k(&pk, "max_tokens");
            msgpack_pack_uint32(&pk, (uint32_t)max_tokens);
        }
        if (n_params) {
            mp_k(&pk, "params");
            msgpack_pack_map(&pk, n_params);
            if (o->has_temperature) {
                mp_k(&pk, "temperature");
                msgpack_pack_double(&pk, o->temperature);
            }
            if (o->has_top_p) {
                mp_k(&pk, "top_p");
                msgpack_pack_double(&pk, o->top_p);
            }
            if (o->has_seed) {
                mp_k(&pk, "seed");
                msgpack_pack_uint64(&pk, o->seed);
            }
            if (o->fanout) {
                mp_k(&pk, "timestamps");
                msgpack_pack_true(&pk);
            }
        }
        struct outmsg *m = msg_new(sb.data, sb.size, s);
        msgpack_sbuffer_destroy(&sb);
        return m;
    }
    size_t cap = strlen(prompt) * 6 + 512;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    struct jsonw w;
    jsonw_init(&w, buf, cap);
    jsonw_obj_begin(&w);
    jsonw_key_str(&w, "type", "generate");
    jsonw_key_uint(&w, "id", slot_id(s));
    jsonw_key_str(&w, "prompt", prompt);
    if (max_tokens > 0)
        jsonw_key_uint(&w, "max_tokens", (uint64_t)max_tokens);
    if (n_params) {
        jsonw_key(&w, "params");
        jsonw_obj_begin(&w);
        if (o->has_temperature)
            jsonw_key_double(&w, "temperature", o->temperature, 6);
        if (o->has_top_p)
            jsonw_key_double(&w, "top_p", o->top_p, 6);
        if (o->has_seed)
            jsonw_key_uint(&w, "seed", o->seed);
        if (o->fanout)
            jsonw_key_bool(&w, "timestamps", true);
        jsonw_obj_end(&w);
    }
    jsonw_obj_end(&w);
    struct outmsg *m = jsonw_ok(&w) ? msg_new(buf, jsonw_len(&w), s) : NULL;
    free(buf);
    return m;
}

static int send_hello(struct bench *b, struct bconn *c)
{
    struct outmsg *m = NULL;
    if (b->o.msgpack) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, mpw_sbuf);
        msgpack_pack_map(&pk, 2);
        mp_kstr(&pk, "type", "hello");
        mp_kstr(&pk, "key", b->o.key);
        m = msg_new(sb.data, sb.size, NULL);
        msgpack_sbuffer_destroy(&sb);
    } else {
        char buf[1024];
        struct jsonw w;
        jsonw_init(&w, buf, sizeof buf);
        jsonw_obj_begin(&w);
        jsonw_key_str(&w, "type", "hello");
        jsonw_key_str(&w, "key", b->o.key);
        jsonw_obj_end(&w);
        if (jsonw_ok(&w))
            m = msg_new(buf, jsonw_len(&w), NULL);
    }
    if (!m)
        return RILL_E_NOMEM;
    conn_push(c, m);
    return 0;
}

/* --- slots --------------------------------------------------------------------------------------- */

static bool measuring(const struct bench *b) { return b->ph == PH_MEASURE; }

static int slot_send(struct bench *b, struct slot *s)
{
    s->gen++;
    struct outmsg *m = build_generate(b, s);
    if (!m)
        return RILL_E_NOMEM;
    s->st = SL_QUEUED;
    s->t_send = clock_ns(); /* replaced by the write time */
    s->t_first = s->t_last = 0;
    s->n_tokens = 0;
    s->in_window = measuring(b);
    if (!s->started) {
        s->started = true;
        b->started_slots++;
    }
    b->sent++;
    b->inflight++;
    if (s->in_window)
        b->sent_window++;
    conn_push(s->c, m);
    return 0;
}

static struct slot *slot_by_id(struct bench *b, uint64_t id)
{
    uint32_t idx = (uint32_t)(id & (BENCH_MAX_SLOTS - 1));
    if (idx >= b->n_slots)
        return NULL;
    struct slot *s = &b->slots[idx];
    if ((s->st != SL_INFLIGHT && s->st != SL_QUEUED) || slot_id(s) != id)
        return NULL;
    return s;
}

static void add_rate(struct bench *b, const struct slot *s)
{
    if (s->n_tokens < 2 || s->t_last <= s->t_first)
        return;
    if (b->n_rates == b->cap_rates) {
        size_t cap = b->cap_rates ? b->cap_rates * 2 : 1024;
        double *r = realloc(b->rates, cap * sizeof *r);
        if (!r)
            return;
        b->rates = r;
        b->cap_rates = cap;
    }
    b->rates[b->n_rates++] = (double)(s->n_tokens - 1) / secs(s->t_last - s->t_first);
}

static bool may_send(const struct bench *b)
{
    if (b->ph >= PH_STOP)
        return false;
    if (b->o.requests && b->ph == PH_MEASURE && b->sent_window >= (uint64_t)b->o.requests)
        return false;
    return true;
}

/* A generation ended (err_slot < 0: complete).  Closed loop: the slot sends
 * its next one (after retry_ms on an error); open loop: back to the pool. */
static void slot_end(struct bench *b, struct slot *s, int err_slot, uint64_t now)
{
    bool count = measuring(b);
    if (b->inflight)
        b->inflight--;
    if (count) {
        if (err_slot < 0)
            b->completed++;
        else {
            b->errored++;
            b->errors[err_slot]++;
        }
        if (err_slot < 0)
            add_rate(b, s);
    }
    if (s->in_window)
        b->done_window++;
    s->in_window = false;
    if (b->o.rate) {
        if (s->c->inflight)
            s->c->inflight--;
        s->st = SL_FREE;
        s->next_free = b->free_head;
        b->free_head = s->idx;
        return;
    }
    if (err_slot < 0 && may_send(b) && s->c->st == CN_OPEN && !b->o.burst) {
        if (slot_send(b, s) == 0)
            return;
    }
    s->st = SL_WAIT;
    s->retry_at = now + (err_slot < 0 ? 0 : (uint64_t)(b->o.retry_ms * 1e6));
}

/* --- messages in ------------------------------------------------------------------------------------ */

static void on_token(struct bench *b, struct slot *s, bool has_gen, uint64_t gen_us, uint64_t now, bool first_in_frame)
{
    b->tokens_all++;
    if (!s)
        return;
    if (s->st == SL_QUEUED) /* a reply raced the write bookkeeping: cannot happen, but be safe */
        s->st = SL_INFLIGHT;
    bool count = measuring(b);
    if (!s->n_tokens) {
        hist_record(&b->ttft_all, (now - s->t_send) / 1000);
        if (s->in_window)
            hist_record(&b->ttft_window, (now - s->t_send) / 1000);
        s->t_first = now;
        if (!s->got_first) {
            s->got_first = true;
            b->first_slots++;
        }
    } else if (count) {
        hist_record(&b->itl, first_in_frame ? (now - s->t_last) / 1000 : 0);
    }
    s->t_last = now;
    s->n_tokens++;
    if (count) {
        b->tokens++;
        if (has_gen) {
            uint64_t now_us = now / 1000;
            if (now_us >= gen_us)
                hist_record(&b->added, now_us - gen_us);
            else
                b->negative_added++;
            uint64_t rx_us = b->frame_rx_ns / 1000;
            if (b->frame_rx_ns && rx_us >= gen_us)
                hist_record(&b->added_sock, rx_us - gen_us);
        }
    }
}

static int err_slot_of(const char *code)
{
    int rc = code ? rill_err_from_name(code) : 0;
    int i = rc ? rill_err_index(rc) : -1;
    return i >= 0 ? i : ERR_OTHER;
}

/* An error frame: a generation's end when it names one, else the connection's. */
static void on_error(struct bench *b, struct bconn *c, struct slot *s, const char *code, uint64_t now)
{
    int e = err_slot_of(code);
    if (s) {
        slot_end(b, s, e, now);
        return;
    }
    if (measuring(b)) {
        b->errors[e]++;
        b->errored++;
    }
    (void)c;
}

/* --- when a frame reached the client's socket (--fanout) -------------------------------
 *
 * lws reads a connection with recv().  This file defines recv, and the
 * binary exports it (Makefile: --export-dynamic-symbol=recv), so lws's
 * calls come here: on a socket that asked for receive timestamps, it reads
 * with recvmsg() and keeps the kernel's timestamp of the last bytes read
 * (for TCP: of the last segment), converted to CLOCK_MONOTONIC.  Other
 * sockets read as recv() does. */
static struct {
    uint64_t *ns;      /* per fd: the last read's timestamp; UINT64_MAX: not asked */
    int cap;
    int64_t rt_minus_mono;
} rx;

static void rx_time_start(int fd)
{
    if (fd < 0)
        return;
    if (!rx.cap) {
        struct timespec rt, mo;
        clock_gettime(CLOCK_REALTIME, &rt);
        clock_gettime(CLOCK_MONOTONIC, &mo);
        rx.rt_minus_mono = ((int64_t)rt.tv_sec - mo.tv_sec) * 1000000000 + (rt.tv_nsec - mo.tv_nsec);
    }
    if (fd >= rx.cap) {
        int cap = rx.cap ? rx.cap : 1024;
        while (cap <= fd)
            cap *= 2;
        uint64_t *p = realloc(rx.ns, (size_t)cap * sizeof *p);
        if (!p)
            return;
        for (int i = rx.cap; i < cap; i++)
            p[i] = UINT64_MAX;
        rx.ns = p;
        rx.cap = cap;
    }
    int on = SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE;
    rx.ns[fd] = setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPING, &on, sizeof on) ? UINT64_MAX : 0;
}

/* The kernel's receive time of fd's last read (CLOCK_MONOTONIC ns), or 0. */
static uint64_t rx_time(int fd)
{
    return fd >= 0 && fd < rx.cap && rx.ns[fd] != UINT64_MAX ? rx.ns[fd] : 0;
}

ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    if (fd < 0 || fd >= rx.cap || rx.ns[fd] == UINT64_MAX)
        return recvfrom(fd, buf, len, flags, NULL, NULL);
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    union {
        char b[CMSG_SPACE(sizeof(struct scm_timestamping))];
        struct cmsghdr align;
    } cb;
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cb.b, .msg_controllen = sizeof cb.b};
    ssize_t n = recvmsg(fd, &m, flags);
    if (n <= 0)
        return n;
    for (struct cmsghdr *h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h)) {
        if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_TIMESTAMPING)
            continue;
        struct scm_timestamping ts;
        memcpy(&ts, CMSG_DATA(h), sizeof ts);
        int64_t t = (int64_t)ts.ts[0].tv_sec * 1000000000 + ts.ts[0].tv_nsec - rx.rt_minus_mono;
        if (ts.ts[0].tv_sec && t > 0)
            rx.ns[fd] = (uint64_t)t;
    }
    return n;
}

static const cJSON *jget(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }

static void json_token(struct bench *b, struct slot *s, const cJSON *t, uint64_t now, bool first)
{
    const cJSON *g = b->o.fanout ? jget(t, "gen_us") : NULL;
    bool has = cJSON_IsNumber(g);
    on_token(b, s, has, has ? (uint64_t)g->valuedouble : 0, now, first);
}

static void handle_json(struct bench *b, struct bconn *c, const char *buf, size_t len, uint64_t now)
{
    cJSON *root = cJSON_ParseWithLength(buf, len);
    const cJSON *ty = root ? jget(root, "type") : NULL;
    if (!cJSON_IsString(ty)) {
        if (measuring(b))
            b->errors[ERR_BAD_FRAME]++;
        cJSON_Delete(root);
        return;
    }
    const char *t = ty->valuestring;
    const cJSON *id = jget(root, "id");
    struct slot *s = cJSON_IsNumber(id) && id->valuedouble >= 0 ? slot_by_id(b, (uint64_t)id->valuedouble) : NULL;
    if (!strncmp(t, "token", 5) && measuring(b))
        b->frames++;
    if (!strcmp(t, "token")) {
        json_token(b, s, jget(root, "token"), now, true);
    } else if (!strcmp(t, "tokens")) {
        const cJSON *arr = jget(root, "tokens"), *it;
        bool first = true;
        cJSON_ArrayForEach(it, arr)
        {
            json_token(b, s, it, now, first);
            first = false;
        }
    } else if (!strcmp(t, "complete")) {
        if (s)
            slot_end(b, s, -1, now);
    } else if (!strcmp(t, "error")) {
        const cJSON *e = jget(root, "error");
        const cJSON *code = e ? jget(e, "code") : NULL;
        on_error(b, c, s, cJSON_IsString(code) ? code->valuestring : NULL, now);
    } else if (!strcmp(t, "accepted") && s) {
        s->st = SL_INFLIGHT;
    }
    cJSON_Delete(root);
}

static const msgpack_object *mget(const msgpack_object *o, const char *k)
{
    if (o->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t kl = strlen(k);
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object_kv *kv = &o->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == kl && !memcmp(kv->key.via.str.ptr, k, kl))
            return &kv->val;
    }
    return NULL;
}

static bool mstr_is(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);
    return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == n && !memcmp(o->via.str.ptr, s, n);
}

static void mp_token(struct bench *b, struct slot *s, const msgpack_object *t, uint64_t now, bool first)
{
    const msgpack_object *g = b->o.fanout && t ? mget(t, "gen_us") : NULL;
    bool has = g && g->type == MSGPACK_OBJECT_POSITIVE_INTEGER;
    on_token(b, s, has, has ? g->via.u64 : 0, now, first);
}

static void handle_msgpack(struct bench *b, struct bconn *c, const char *buf, size_t len, uint64_t now)
{
    msgpack_object root;
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack(buf, len, &off, &b->zone, &root);
    const msgpack_object *ty = ur == MSGPACK_UNPACK_SUCCESS ? mget(&root, "type") : NULL;
    if (!ty || ty->type != MSGPACK_OBJECT_STR) {
        if (measuring(b))
            b->errors[ERR_BAD_FRAME]++;
        msgpack_zone_clear(&b->zone);
        return;
    }
    const msgpack_object *id = mget(&root, "id");
    struct slot *s = id && id->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? slot_by_id(b, id->via.u64) : NULL;
    if ((mstr_is(ty, "token") || mstr_is(ty, "tokens")) && measuring(b))
        b->frames++;
    if (mstr_is(ty, "token")) {
        mp_token(b, s, mget(&root, "token"), now, true);
    } else if (mstr_is(ty, "tokens")) {
        const msgpack_object *arr = mget(&root, "tokens");
        if (arr && arr->type == MSGPACK_OBJECT_ARRAY)
            for (uint32_t i = 0; i < arr->via.array.size; i++)
                mp_token(b, s, &arr->via.array.ptr[i], now, i == 0);
    } else if (mstr_is(ty, "complete")) {
        if (s)
            slot_end(b, s, -1, now);
    } else if (mstr_is(ty, "error")) {
        const msgpack_object *e = mget(&root, "error");
        const msgpack_object *code = e ? mget(e, "code") : NULL;
        char name[64] = "";
        if (code && code->type == MSGPACK_OBJECT_STR && code->via.str.size < sizeof name)
            memcpy(name, code->via.str.ptr, code->via.str.size);
        on_error(b, c, s, name[0] ? name : NULL, now);
    } else if (mstr_is(ty, "accepted") && s) {
        s->st = SL_INFLIGHT;
    }
    msgpack_zone_clear(&b->zone);
}

static void on_frame(struct bench *b, struct bconn *c, const void *buf, size_t len, uint64_t now)
{
    if (measuring(b))
        b->bytes_in += len;
    if (b->o.msgpack)
        handle_msgpack(b, c, buf, len, now);
    else
        handle_json(b, c, buf, len, now);
}

/* --- connections ---------------------------------------------------------------------------------- */

static int conn_open(struct bench *b, struct bconn *c)
{
    struct lws_client_connect_info ci;
    memset(&ci, 0, sizeof ci);
    ci.context = b->ctx;
    ci.address = b->host;
    ci.port = b->port;
    ci.path = b->path;
    ci.host = b->host;
    ci.protocol = b->o.msgpack ? "rill.msgpack.v1" : "rill.json.v1";
    ci.userdata = c;
    ci.pwsi = &c->wsi;
    if (b->tls)
        ci.ssl_connection = LCCSCF_USE_SSL | LCCSCF_ALLOW_SELFSIGNED | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK;
    c->st = CN_CONNECTING;
    c->want_close = false;
    b->n_connecting++;
    if (!lws_client_connect_via_info(&ci)) {
        /* lws has already reported CLIENT_CONNECTION_ERROR when it could. */
        if (c->st == CN_CONNECTING) {
            c->st = CN_DOWN;
            b->n_connecting--;
            b->conn_errors++;
            c->reconnect_at = clock_ns() + 500000000ull;
        }
        return RILL_E_IO;
    }
    return 0;
}

/* The connection is gone: its generations end (counted as connection_closed
 * while measuring), it reconnects later unless the run is stopping. */
static void conn_down(struct bench *b, struct bconn *c, bool was_open)
{
    uint64_t now = clock_ns();
    if (c->st == CN_CONNECTING)
        b->n_connecting--;
    if (c->st == CN_OPEN)
        b->n_open--;
    c->st = CN_DOWN;
    c->wsi = NULL;
    c->reconnect_at = now + 500000000ull;
    for (struct outmsg *m = c->q_head, *n; m; m = n) {
        n = m->next;
        free(m);
    }
    c->q_head = c->q_tail = NULL;
    free(c->rx);
    c->rx = NULL;
    c->rx_len = c->rx_cap = 0;
    if (b->ph >= PH_STOP)
        return;
    if (was_open)
        b->conn_drops++;
    else
        b->conn_errors++;
    for (uint32_t i = 0; i < b->n_slots; i++) {
        struct slot *s = &b->slots[i];
        if (s->c == c && (s->st == SL_QUEUED || s->st == SL_INFLIGHT))
            slot_end(b, s, ERR_CLOSED, now);
    }
}

static int conn_writable(struct bench *b, struct bconn *c)
{
    if (c->want_close) {
        lws_close_reason(c->wsi, LWS_CLOSE_STATUS_NORMAL, NULL, 0);
        return -1;
    }
    struct outmsg *m = c->q_head;
    if (!m)
        return 0;
    c->q_head = m->next;
    if (!c->q_head)
        c->q_tail = NULL;
    int n = lws_write(c->wsi, m->data + LWS_PRE, m->len, b->o.msgpack ? LWS_WRITE_BINARY : LWS_WRITE_TEXT);
    if (m->slot && m->slot->st == SL_QUEUED) {
        m->slot->t_send = clock_ns();
        m->slot->st = SL_INFLIGHT;
    }
    free(m);
    if (n < 0)
        return -1;
    if (c->q_head)
        lws_callback_on_writable(c->wsi);
    return 0;
}

static int conn_receive(struct bench *b, struct bconn *c, const void *in, size_t len, uint64_t now)
{
    bool first = lws_is_first_fragment(c->wsi), final = lws_is_final_fragment(c->wsi);
    if (first && final && !lws_remaining_packet_payload(c->wsi)) {
        on_frame(b, c, in, len, now);
        return 0;
    }
    if (first)
        c->rx_len = 0;
    if (c->rx_len + len > c->rx_cap) {
        size_t cap = c->rx_cap ? c->rx_cap : 8192;
        while (cap < c->rx_len + len)
            cap *= 2;
        unsigned char *p = realloc(c->rx, cap);
        if (!p)
            return -1;
        c->rx = p;
        c->rx_cap = cap;
    }
    memcpy(c->rx + c->rx_len, in, len);
    c->rx_len += len;
    if (final && !lws_remaining_packet_payload(c->wsi)) {
        on_frame(b, c, c->rx, c->rx_len, now);
        c->rx_len = 0;
    }
    return 0;
}

static void on_tick(struct bench *b);
static void on_arrival(struct bench *b);

static int bench_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    struct lws_context *ctx = lws_get_context(wsi);
    struct bench *b = ctx ? lws_context_user(ctx) : NULL;
    struct bconn *c = user;
    if (b && reason == LWS_CALLBACK_RAW_RX_FILE) {
        int fd = lws_get_socket_fd(wsi);
        uint64_t expirations;
        if (read(fd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
            return -1;
        if (fd == b->tick_fd)
            on_tick(b);
        else if (fd == b->arrival_fd && b->ph == PH_MEASURE)
            on_arrival(b);
        return 0;
    }
    if (!b || !c)
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    switch (reason) {
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        if (b->o.fanout)
            rx_time_start(lws_get_socket_fd(wsi));
        if (c->st == CN_CONNECTING)
            b->n_connecting--;
        c->st = CN_OPEN;
        c->wsi = wsi;
        b->n_open++;
        b->ever_open = true;
        if (b->o.key && send_hello(b, c))
            return -1;
        if (c->q_head)
            lws_callback_on_writable(wsi);
        return 0;
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        if (!b->o.quiet && b->conn_errors < 5)
            rlog_warn("connection %u: %s", c->idx, in ? (const char *)in : "error");
        if (c->st == CN_CONNECTING)
            conn_down(b, c, false);
        return 0;
    case LWS_CALLBACK_CLIENT_CLOSED:
        if (c->st != CN_DOWN)
            conn_down(b, c, c->st == CN_OPEN);
        return 0;
    case LWS_CALLBACK_CLIENT_RECEIVE:
        b->frame_rx_ns = b->o.fanout ? rx_time(lws_get_socket_fd(wsi)) : 0;
        return conn_receive(b, c, in, len, clock_ns());
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        return conn_writable(b, c);
    case LWS_CALLBACK_WSI_DESTROY:
        if (c->st == CN_CONNECTING || c->st == CN_OPEN)
            conn_down(b, c, c->st == CN_OPEN);
        return 0;
    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static const struct lws_protocols protocols[] = {
    {"rill.json.v1", bench_callback, 0, 0, 0, NULL, 0},
    {"rill.msgpack.v1", bench_callback, 0, 0, 1, NULL, 0},
    {"rill-bench-timer", bench_callback, 0, 0, 2, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0}};

/* --- the run's clock ----------------------------------------------------------------------------- */

static void snapshot_start(struct bench *b, uint64_t now)
{
    b->t_measure = now;
    proc_sample(b->o.gateway_pid, &b->gw0);
    proc_sample(b->o.worker_pid, &b->wk0);
    b->gw_rss_start_kb = b->gw0.rss_kb;
    b->gw_rss_max_kb = b->gw0.rss_kb;
    getrusage(RUSAGE_SELF, &b->ru0);
    b->sys_busy0 = sys_busy_ticks();
}

static void snapshot_end(struct bench *b, uint64_t now)
{
    b->t_end = now;
    b->open_at_end = b->n_open;
    proc_sample(b->o.gateway_pid, &b->gw1);
    proc_sample(b->o.worker_pid, &b->wk1);
    if (b->gw1.rss_kb > b->gw_rss_max_kb)
        b->gw_rss_max_kb = b->gw1.rss_kb;
    getrusage(RUSAGE_SELF, &b->ru1);
    b->sys_busy1 = sys_busy_ticks();
    /* Streams still running count with what they delivered so far. */
    for (uint32_t i = 0; i < b->n_slots; i++)
        if (b->slots[i].st == SL_INFLIGHT && b->o.fanout)
            add_rate(b, &b->slots[i]);
}

static void begin_stop(struct bench *b, uint64_t now)
{
    b->ph = PH_STOP;
    b->t_stop = now;
    for (uint32_t i = 0; i < b->n_conns; i++) {
        struct bconn *c = &b->conns[i];
        if (c->st == CN_OPEN && c->wsi) {
            c->want_close = true;
            lws_callback_on_writable(c->wsi);
        }
    }
}

static bool ramp_done(const struct bench *b)
{
    if (b->n_connecting || b->next_connect < b->n_conns)
        return false;
    if (b->o.idle || b->o.rate || b->o.burst)
        return b->n_open == b->n_conns || b->o.idle || b->o.rate;
    if (b->o.fanout)
        return b->first_slots == b->n_slots;
    return b->started_slots == b->n_slots;
}

static void progress(struct bench *b, uint64_t now)
{
    static uint64_t last;
    if (b->o.quiet || now - last < 1000000000ull)
        return;
    last = now;
    static const char *names[] = {"ramp", "warmup", "measure", "stop", "done"};
    fprintf(stderr, "rill-bench: %-7s %6.1f s  open %u/%u  slots started %u first-token %u  tokens %llu\n",
            names[b->ph], secs(now - b->t0), b->n_open, b->n_conns, b->started_slots, b->first_slots,
            (unsigned long long)b->tokens_all);
}

/* Open-loop arrivals, at their exact (µs) times. */
static void arm_at(int fd, uint64_t at_ns)
{
    struct itimerspec it = {{0, 0}, {(time_t)(at_ns / 1000000000ull), (long)(at_ns % 1000000000ull)}};
    if (!at_ns)
        it.it_value.tv_nsec = 1; /* zero would disarm it */
    timerfd_settime(fd, TFD_TIMER_ABSTIME, &it, NULL);
}

static void on_arrival(struct bench *b)
{
    uint64_t now = clock_ns();
    while (b->t_arrivals0 + (uint64_t)(b->next_arrival_s * 1e9) <= now) {
        b->next_arrival_s += rng_exp(b, b->o.rate);
        if (!may_send(b))
            return;
        struct bconn *c = NULL;
        for (uint32_t k = 0; k < b->n_conns; k++) {
            struct bconn *x = &b->conns[(b->rr + k) % b->n_conns];
            if (x->st == CN_OPEN && x->inflight < (uint32_t)b->o.streams_per_conn) {
                c = x;
                b->rr = (b->rr + k + 1) % b->n_conns;
                break;
            }
        }
        if (!c || b->free_head == UINT32_MAX) {
            if (measuring(b))
                b->client_saturated++;
            continue;
        }
        struct slot *s = &b->slots[b->free_head];
        b->free_head = s->next_free;
        s->c = c;
        c->inflight++;
        if (slot_send(b, s)) {
            c->inflight--;
            s->st = SL_FREE;
            s->next_free = b->free_head;
            b->free_head = s->idx;
        }
    }
    arm_at(b->arrival_fd, b->t_arrivals0 + (uint64_t)(b->next_arrival_s * 1e9));
}

static void on_tick(struct bench *b)
{
    uint64_t now = clock_ns();
    if (got_signal && b->ph < PH_STOP) {
        b->stop_signal = true;
        if (b->ph == PH_MEASURE)
            snapshot_end(b, now);
        begin_stop(b, now);
    }
    /* Connections: a bounded number of handshakes at once; reconnect the dropped. */
    if (b->ph < PH_STOP) {
        while (b->n_connecting < BENCH_MAX_CONNECTING && b->next_connect < b->n_conns)
            conn_open(b, &b->conns[b->next_connect++]);
        for (uint32_t i = 0; i < b->next_connect && b->n_connecting < BENCH_MAX_CONNECTING; i++)
            if (b->conns[i].st == CN_DOWN && now >= b->conns[i].reconnect_at && !b->o.idle)
                conn_open(b, &b->conns[i]);
    }
    /* Closed loop: start or restart the slots that may go. */
    if (b->o.concurrency && may_send(b) && (!b->o.burst || b->ph == PH_MEASURE)) {
        uint64_t allowed = b->n_slots;
        if (b->o.ramp > 0 && b->ph == PH_RAMP)
            allowed = (uint64_t)(secs(now - b->t0) * b->o.ramp) + 1;
        for (uint32_t i = 0; i < b->n_slots && may_send(b); i++) {
            struct slot *s = &b->slots[i];
            if ((s->st == SL_FREE || (s->st == SL_WAIT && now >= s->retry_at)) && s->c->st == CN_OPEN) {
                if (!s->started && b->started_slots >= allowed)
                    continue;
                slot_send(b, s);
            }
        }
    }
    switch (b->ph) {
    case PH_RAMP:
        if (!b->ever_open && b->conn_errors && secs(now - b->t0) > 5) {
            rlog_error("cannot connect to %s (%llu attempts failed)", b->o.url, (unsigned long long)b->conn_errors);
            b->fatal = true;
            b->t_measure = b->t_end = now;
            begin_stop(b, now);
            break;
        }
        if (ramp_done(b) || secs(now - b->t0) > BENCH_RAMP_TIMEOUT_S) {
            if (!ramp_done(b))
                rlog_warn("ramp not done after %.0f s (%u/%u connections open, %u/%u streams going): measuring anyway",
                          BENCH_RAMP_TIMEOUT_S, b->n_open, b->n_conns, b->first_slots, b->n_slots);
            b->t_ramp_done = now;
            b->ph = PH_WARMUP;
        }
        break;
    case PH_WARMUP: {
        double warm = b->o.idle && b->o.warmup < 1 ? 1 : b->o.warmup;
        if (secs(now - b->t_ramp_done) >= warm) {
            snapshot_start(b, now);
            if (b->o.idle)
                b->idle_rss_after_kb = b->gw0.rss_kb;
            b->ph = PH_MEASURE;
            if (b->o.rate) {
                b->t_arrivals0 = now;
                b->next_arrival_s = rng_exp(b, b->o.rate);
                on_arrival(b);
            }
        }
        break;
    }
    case PH_MEASURE: {
        static uint64_t next_rss;
        b->inflight_sum += b->inflight;
        b->inflight_ticks++;
        if (b->inflight > b->inflight_max)
            b->inflight_max = b->inflight;
        if (b->o.gateway_pid && now >= next_rss) {
            uint64_t kb;
            if (proc_rss_kb(b->o.gateway_pid, &kb) == 0 && kb > b->gw_rss_max_kb)
                b->gw_rss_max_kb = kb;
            next_rss = now + 100000000ull;
        }
        bool by_time = b->o.duration && secs(now - b->t_measure) >= b->o.duration;
        bool by_count = b->o.requests && b->done_window >= (uint64_t)b->o.requests;
        if (by_time || by_count) {
            snapshot_end(b, now);
            begin_stop(b, now);
        }
        break;
    }
    case PH_STOP:
        if (!b->n_open && !b->n_connecting)
            b->ph = PH_DONE;
        else if (secs(now - b->t_stop) > BENCH_STOP_TIMEOUT_S)
            b->ph = PH_DONE;
        break;
    case PH_DONE:
        break;
    }
    progress(b, now);
    /* An event-library loop (libev) runs inside lws_service() until the
     * context is destroyed from within it; teardown destroys it again. */
    if (b->ph == PH_DONE && !b->o.poll_loop && !b->ctx_destroying) {
        b->ctx_destroying = true;
        lws_context_destroy(b->ctx);
    }
}

/* --- results --------------------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *c)
{
    double x = *(const double *)a, y = *(const double *)c;
    return x < y ? -1 : x > y;
}

static double quantile(const double *v, size_t n, double q)
{
    if (!n)
        return 0;
    size_t k = (size_t)ceil(q * (double)n);
    return v[k ? k - 1 : 0];
}

static double pct_ms(const struct hist *h, double q) { return h->count ? hist_percentile(h, q) / 1000.0 : 0; }

static void json_hist(struct jsonw *w, const char *key, const struct hist *h)
{
    jsonw_key(w, key);
    jsonw_obj_begin(w);
    jsonw_key_uint(w, "count", h->count);
    jsonw_key_double(w, "p50", pct_ms(h, 0.50), 3);
    jsonw_key_double(w, "p90", pct_ms(h, 0.90), 3);
    jsonw_key_double(w, "p95", pct_ms(h, 0.95), 3);
    jsonw_key_double(w, "p99", pct_ms(h, 0.99), 3);
    jsonw_key_double(w, "max", h->count ? h->max / 1000.0 : 0, 3);
    jsonw_key_double(w, "mean", hist_mean(h) / 1000.0, 3);
    jsonw_obj_end(w);
}

struct results {
    double window_s, tokens_per_s, tokens_per_frame, stream_median, stream_p10;
    double gw_cpu, gw_main_cpu, wk_cpu, bench_cpu, bench_user, bench_sys;
    double sys_busy, other_cpu;      /* all cores (100 = one core), and what is not ours */
    const struct hist *ttft;
    const char *ttft_scope;
    uint64_t unfinished;
};

static const char *err_name_of(int i)
{
    if (i == ERR_CLOSED)
        return "connection_closed";
    if (i == ERR_BAD_FRAME)
        return "bad_frame";
    if (i == ERR_OTHER)
        return "other";
    return rill_err_name(-(i + 1));
}

static void compute(struct bench *b, struct results *r)
{
    memset(r, 0, sizeof *r);
    r->window_s = b->t_end > b->t_measure ? secs(b->t_end - b->t_measure) : 0;
    r->tokens_per_s = r->window_s > 0 ? b->tokens / r->window_s : 0;
    r->tokens_per_frame = b->frames ? (double)b->tokens / b->frames : 0;
    if (b->n_rates)
        qsort(b->rates, b->n_rates, sizeof *b->rates, cmp_double);
    r->stream_median = quantile(b->rates, b->n_rates, 0.5);
    r->stream_p10 = quantile(b->rates, b->n_rates, 0.1);
    if (b->gw0.ok && b->gw1.ok) {
        r->gw_cpu = cpu_pct(b->gw1.ticks - b->gw0.ticks, r->window_s);
        r->gw_main_cpu = cpu_pct(b->gw1.main_ticks - b->gw0.main_ticks, r->window_s);
    }
    if (b->wk0.ok && b->wk1.ok)
        r->wk_cpu = cpu_pct(b->wk1.ticks - b->wk0.ticks, r->window_s);
    if (r->window_s > 0) {
        r->bench_user = 100.0 * (tv_s(b->ru1.ru_utime) - tv_s(b->ru0.ru_utime)) / r->window_s;
        r->bench_sys = 100.0 * (tv_s(b->ru1.ru_stime) - tv_s(b->ru0.ru_stime)) / r->window_s;
        r->bench_cpu = r->bench_user + r->bench_sys;
    }
    if (b->sys_busy0 && b->sys_busy1 >= b->sys_busy0) {
        r->sys_busy = cpu_pct(b->sys_busy1 - b->sys_busy0, r->window_s);
        r->other_cpu = r->sys_busy - r->gw_cpu - r->wk_cpu - r->bench_cpu;
        if (r->other_cpu < 0)
            r->other_cpu = 0; /* tick rounding */
    }
    r->ttft = b->ttft_window.count ? &b->ttft_window : &b->ttft_all;
    r->ttft_scope = b->ttft_window.count ? "window" : "all";
    for (uint32_t i = 0; i < b->n_slots; i++)
        r->unfinished += b->slots[i].st == SL_INFLIGHT || b->slots[i].st == SL_QUEUED;
}

/* The results of one run as JSON text (what --json writes); the caller
 * frees *out. */
static int result_json(const struct bench *b, const struct results *r, char **out)
{
    size_t cap = 16384;
    char *buf = malloc(cap);
    *out = NULL;
    if (!buf)
        return RILL_E_NOMEM;
    const struct opts *o = &b->o;
    struct jsonw w;
    jsonw_init(&w, buf, cap);
    jsonw_obj_begin(&w);
    jsonw_key_str(&w, "mode", o->idle ? "idle" : o->rate ? "open" : o->burst ? "burst" : "closed");
    jsonw_key_uint(&w, "burst", (uint64_t)o->burst);
    if (o->max_tokens_lo) {
        jsonw_key_int(&w, "max_tokens_lo", o->max_tokens_lo);
        jsonw_key_int(&w, "max_tokens_hi", o->max_tokens_hi);
    }
    if (o->prompt_words_lo) {
        jsonw_key_int(&w, "prompt_words_lo", o->prompt_words_lo);
        jsonw_key_int(&w, "prompt_words_hi", o->prompt_words_hi);
    }
    if (o->has_arrival_seed)
        jsonw_key_uint(&w, "arrival_seed", o->arrival_seed);
    jsonw_key_bool(&w, "fanout", o->fanout);
    jsonw_key_str(&w, "protocol", o->msgpack ? "rill.msgpack.v1" : "rill.json.v1");
    jsonw_key_str(&w, "url", o->url);
    jsonw_key_uint(&w, "connections", b->n_conns);
    jsonw_key_uint(&w, "concurrency", (uint64_t)o->concurrency);
    jsonw_key_double(&w, "rate", o->rate, 3);
    jsonw_key_int(&w, "max_tokens", o->max_tokens);
    jsonw_key_double(&w, "window_s", r->window_s, 3);
    jsonw_key_bool(&w, "interrupted", b->stop_signal);
    jsonw_key_uint(&w, "connections_open_at_end", b->open_at_end);
    jsonw_key_uint(&w, "connection_errors", b->conn_errors);
    jsonw_key_uint(&w, "connection_drops", b->conn_drops);
    if (!o->idle) {
        jsonw_key(&w, "requests");
        jsonw_obj_begin(&w);
        jsonw_key_uint(&w, "sent", b->sent_window);
        jsonw_key_uint(&w, "completed", b->completed);
        jsonw_key_uint(&w, "errored", b->errored);
        jsonw_key_uint(&w, "unfinished_at_end", r->unfinished);
        jsonw_key_uint(&w, "client_saturated", b->client_saturated);
        jsonw_key(&w, "errors");
        jsonw_obj_begin(&w);
        for (int i = 0; i < ERR_SLOTS; i++)
            if (b->errors[i])
                jsonw_key_uint(&w, err_name_of(i), b->errors[i]);
        jsonw_obj_end(&w);
        jsonw_obj_end(&w);
        json_hist(&w, "ttft_ms", r->ttft);
        jsonw_key_str(&w, "ttft_scope", r->ttft_scope);
        json_hist(&w, "itl_ms", &b->itl);
        jsonw_key(&w, "concurrency_reached");
        jsonw_obj_begin(&w);
        jsonw_key_double(&w, "mean", b->inflight_ticks ? (double)b->inflight_sum / b->inflight_ticks : 0, 2);
        jsonw_key_uint(&w, "max", b->inflight_max);
        jsonw_obj_end(&w);
        jsonw_key(&w, "stream_tokens_per_s");
        jsonw_obj_begin(&w);
        jsonw_key_uint(&w, "streams", b->n_rates);
        jsonw_key_double(&w, "median", r->stream_median, 2);
        jsonw_key_double(&w, "p10", r->stream_p10, 2);
        jsonw_obj_end(&w);
        jsonw_key_uint(&w, "tokens", b->tokens);
        jsonw_key_double(&w, "tokens_per_s", r->tokens_per_s, 1);
        jsonw_key_uint(&w, "frames", b->frames);
        jsonw_key_double(&w, "tokens_per_frame", r->tokens_per_frame, 3);
        jsonw_key_uint(&w, "bytes_in", b->bytes_in);
        if (o->fanout) {
            json_hist(&w, "added_latency_ms", &b->added);
            json_hist(&w, "added_at_socket_ms", &b->added_sock);
            jsonw_key_uint(&w, "added_latency_negative", b->negative_added);
        }
    }
    if (o->gateway_pid) {
        jsonw_key(&w, "gateway");
        jsonw_obj_begin(&w);
        jsonw_key_int(&w, "pid", o->gateway_pid);
        jsonw_key_double(&w, "cpu_pct", r->gw_cpu, 1);
        jsonw_key_double(&w, "main_thread_cpu_pct", r->gw_main_cpu, 1);
        jsonw_key_uint(&w, "rss_kb", b->gw1.rss_kb);
        jsonw_key_uint(&w, "rss_anon_kb", b->gw1.anon_kb);
        jsonw_key_uint(&w, "rss_shmem_kb", b->gw1.shmem_kb);
        jsonw_key_uint(&w, "rss_start_kb", b->gw_rss_start_kb);
        jsonw_key_uint(&w, "rss_max_kb", b->gw_rss_max_kb);
        jsonw_obj_end(&w);
    }
    if (o->worker_pid) {
        jsonw_key(&w, "worker");
        jsonw_obj_begin(&w);
        jsonw_key_int(&w, "pid", o->worker_pid);
        jsonw_key_double(&w, "cpu_pct", r->wk_cpu, 1);
        jsonw_key_uint(&w, "rss_kb", b->wk1.rss_kb);
        jsonw_obj_end(&w);
    }
    jsonw_key(&w, "bench");
    jsonw_obj_begin(&w);
    jsonw_key_double(&w, "cpu_pct", r->bench_cpu, 1);
    jsonw_key_double(&w, "user_pct", r->bench_user, 1);
    jsonw_key_double(&w, "sys_pct", r->bench_sys, 1);
    jsonw_key_int(&w, "cores", sysconf(_SC_NPROCESSORS_ONLN));
    jsonw_obj_end(&w);
    jsonw_key(&w, "system");
    jsonw_obj_begin(&w);
    jsonw_key_double(&w, "busy_cpu_pct", r->sys_busy, 1);
    jsonw_key_double(&w, "other_cpu_pct", r->other_cpu, 1);
    jsonw_obj_end(&w);
    if (o->idle) {
        jsonw_key(&w, "idle");
        jsonw_obj_begin(&w);
        jsonw_key_uint(&w, "connections", b->open_at_end);
        jsonw_key_uint(&w, "rss_before_kb", b->idle_rss_before_kb);
        jsonw_key_uint(&w, "rss_after_kb", b->gw1.rss_kb);
        double per = b->open_at_end ? ((double)b->gw1.rss_kb - (double)b->idle_rss_before_kb) / b->open_at_end : 0;
        jsonw_key_double(&w, "rss_per_conn_kb", per, 3);
        jsonw_obj_end(&w);
    }
    jsonw_obj_end(&w);
    if (!jsonw_ok(&w) || jsonw_len(&w) >= cap) {
        free(buf);
        return RILL_E_INTERNAL;
    }
    buf[jsonw_len(&w)] = 0;
    *out = buf;
    return 0;
}

/* Write text and a newline to path (replacing it). */
static int write_text(const char *path, const char *text)
{
    size_t len = strlen(text);
    int rc = 0;
    FILE *f = fopen(path, "w");
    if (!f || fwrite(text, 1, len, f) != len || fputc('\n', f) == EOF)
        rc = RILL_E_IO;
    if (f && fclose(f))
        rc = RILL_E_IO;
    if (rc)
        fprintf(stderr, "rill-bench: cannot write %s: %s\n", path, strerror(errno));
    return rc;
}

static void print_hist(const char *name, const struct hist *h, const char *note)
{
    printf("  %-16s p50 %8.2f  p90 %8.2f  p95 %8.2f  p99 %8.2f  max %8.2f ms  (%llu%s)\n", name, pct_ms(h, 0.5),
           pct_ms(h, 0.90), pct_ms(h, 0.95), pct_ms(h, 0.99), h->count ? h->max / 1000.0 : 0, (unsigned long long)h->count, note);
}

static void print_table(const struct bench *b, const struct results *r)
{
    const struct opts *o = &b->o;
    const char *proto = o->msgpack ? "rill.msgpack.v1" : "rill.json.v1";
    if (o->idle) {
        double per = b->open_at_end ? ((double)b->gw1.rss_kb - (double)b->idle_rss_before_kb) / b->open_at_end : 0;
        printf("rill-bench idle: %u of %u connections open (%s)\n", b->open_at_end, b->n_conns, proto);
        printf("  gateway rss      %llu kB before, %llu kB with them: %.2f kB per idle connection\n",
               (unsigned long long)b->idle_rss_before_kb, (unsigned long long)b->gw1.rss_kb, per);
        return;
    }
    if (o->rate)
        printf("rill-bench open loop: %.1f requests/s over %u connections, %s, %.2f s measured%s\n", o->rate,
               b->n_conns, proto, r->window_s, b->stop_signal ? " (interrupted)" : "");
    else
        printf("rill-bench closed loop%s: %ld streams over %u connections, %s, %.2f s measured%s\n",
               o->burst ? " burst" : o->fanout ? " fan-out" : "", o->concurrency, b->n_conns, proto, r->window_s,
               b->stop_signal ? " (interrupted)" : "");
    printf("  requests         sent %llu, completed %llu, errored %llu, running at the end %llu",
           (unsigned long long)b->sent_window, (unsigned long long)b->completed, (unsigned long long)b->errored,
           (unsigned long long)r->unfinished);
    if (b->client_saturated)
        printf(", not sent (no free stream) %llu", (unsigned long long)b->client_saturated);
    printf("\n");
    if (b->errored) {
        printf("  errors          ");
        for (int i = 0; i < ERR_SLOTS; i++)
            if (b->errors[i])
                printf(" %s %llu", err_name_of(i), (unsigned long long)b->errors[i]);
        printf("\n");
    }
    if (b->conn_errors || b->conn_drops)
        printf("  connections      %llu failed to open, %llu dropped\n", (unsigned long long)b->conn_errors,
               (unsigned long long)b->conn_drops);
    print_hist("first token", r->ttft, !strcmp(r->ttft_scope, "all") ? ", incl. ramp" : "");
    print_hist("inter-token", &b->itl, "");
    printf("  in flight        mean %.2f, max %llu (sampled every %d ms of the window)\n",
           b->inflight_ticks ? (double)b->inflight_sum / b->inflight_ticks : 0, (unsigned long long)b->inflight_max,
           BENCH_TICK_US / 1000);
    printf("  stream tokens/s  median %.2f, p10 %.2f (%zu streams)\n", r->stream_median, r->stream_p10, b->n_rates);
    printf("  tokens           %llu = %.0f tokens/s; %llu frames, %.3f tokens/frame, %.1f MB in\n",
           (unsigned long long)b->tokens, r->tokens_per_s, (unsigned long long)b->frames, r->tokens_per_frame,
           b->bytes_in / 1e6);
    if (o->fanout) {
        print_hist("added latency", &b->added, "");
        print_hist("added at socket", &b->added_sock, "");
        if (b->negative_added)
            printf("  (%llu tokens arrived 'before' their gen_us: not the same host?)\n",
                   (unsigned long long)b->negative_added);
    }
    if (o->gateway_pid)
        printf("  gateway          cpu %.1f%% (service thread %.1f%%), rss %llu kB (private %llu, shared %llu; "
               "max %llu, at start %llu)\n",
               r->gw_cpu, r->gw_main_cpu, (unsigned long long)b->gw1.rss_kb, (unsigned long long)b->gw1.anon_kb,
               (unsigned long long)b->gw1.shmem_kb, (unsigned long long)b->gw_rss_max_kb,
               (unsigned long long)b->gw_rss_start_kb);
    if (o->worker_pid)
        printf("  worker           cpu %.1f%%, rss %llu kB\n", r->wk_cpu, (unsigned long long)b->wk1.rss_kb);
    printf("  bench (client)   cpu %.1f%% (user %.1f, sys %.1f) of %ld cores\n", r->bench_cpu, r->bench_user,
           r->bench_sys, sysconf(_SC_NPROCESSORS_ONLN));
    printf("  machine          busy %.1f%%, of which other processes %.1f%%%s\n", r->sys_busy, r->other_cpu,
           o->gateway_pid && o->worker_pid ? "" : " (processes not watched count as other)");
}

/* --- set-up ------------------------------------------------------------------------------------------ */

static int parse_url(struct bench *b)
{
    snprintf(b->url_buf, sizeof b->url_buf, "%s", b->o.url);
    const char *prot, *ads, *path;
    int port;
    if (lws_parse_uri(b->url_buf, &prot, &ads, &port, &path) || !ads[0]) {
        fprintf(stderr, "rill-bench: bad --url '%s' (want ws://HOST:PORT/PATH)\n", b->o.url);
        return RILL_E_BAD_CONFIG;
    }
    if (!strcmp(prot, "wss") || !strcmp(prot, "https"))
        b->tls = true;
    else if (strcmp(prot, "ws") && strcmp(prot, "http")) {
        fprintf(stderr, "rill-bench: bad scheme '%s' in --url (ws or wss)\n", prot);
        return RILL_E_BAD_CONFIG;
    }
    b->host = ads;
    b->port = port;
    snprintf(b->path, sizeof b->path, "/%s", path);
    return 0;
}

static int raise_fd_limit(size_t need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl))
        return RILL_E_IO;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < need) {
        fprintf(stderr, "rill-bench: %zu connections need %zu file descriptors; the limit is %llu (ulimit -n)\n",
                need - 64, need, (unsigned long long)rl.rlim_cur);
        return RILL_E_BAD_CONFIG;
    }
    return 0;
}

static int setup(struct bench *b)
{
    const struct opts *o = &b->o;
    int rc;
    if ((rc = parse_url(b)) || (rc = load_prompts(b)))
        return rc;
    b->n_conns = (uint32_t)o->connections;
    if ((rc = raise_fd_limit((size_t)b->n_conns + 64)))
        return rc;
    if (o->concurrency) {
        b->n_slots = (uint32_t)o->concurrency;
    } else if (o->rate) {
        uint64_t n = (uint64_t)b->n_conns * (uint64_t)o->streams_per_conn;
        b->n_slots = n < BENCH_MAX_SLOTS - 1 ? (uint32_t)n : BENCH_MAX_SLOTS - 1;
    }
    b->tick_fd = b->arrival_fd = -1;
    b->conns = calloc(b->n_conns, sizeof *b->conns);
    b->slots = calloc(b->n_slots ? b->n_slots : 1, sizeof *b->slots);
    if (!b->conns || !b->slots)
        return RILL_E_NOMEM;
    for (uint32_t i = 0; i < b->n_conns; i++)
        b->conns[i].idx = i;
    b->free_head = UINT32_MAX;
    for (uint32_t i = b->n_slots; i-- > 0;) {
        struct slot *s = &b->slots[i];
        s->idx = i;
        if (o->concurrency) {
            s->c = &b->conns[i % b->n_conns];
        } else {
            s->next_free = b->free_head;
            b->free_head = i;
        }
    }
    hist_init(&b->ttft_window);
    hist_init(&b->ttft_all);
    hist_init(&b->itl);
    hist_init(&b->added);
    hist_init(&b->added_sock);
    if (!msgpack_zone_init(&b->zone, 8192))
        return RILL_E_NOMEM;
    b->rng = (uint64_t)clock_ns() ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;
    if (o->has_arrival_seed)
        b->rng = (o->arrival_seed + 1) * 0x9e3779b97f4a7c15ull; /* xorshift needs a non-zero state */

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = protocols;
    info.user = b;
    /* No fd_limit_per_thread: below the process limit it makes lws look
     * every fd up by a linear scan (wsi_from_fd's "slow fds handling"), a
     * cost per event that grows with the connections.  The rlimit was raised
     * to fit them instead. */
    info.timeout_secs = 30;
    info.connect_timeout_secs = 20;
    info.pt_serv_buf_size = 65536; /* the read buffer: whole coalesced frames in one callback */
    if (b->tls)
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    /* lws's own loop is poll(): O(connections) per wake-up, which with
     * thousands of connections makes the client, not the gateway, the
     * bottleneck.  The libev plugin (epoll) is O(ready fds). */
    if (!o->poll_loop) {
        info.options |= LWS_SERVER_OPTION_LIBEV;
        info.signal_cb = on_evlib_signal;
    }
    lws_set_log_level(LLL_ERR, NULL);
    b->ctx = lws_create_context(&info);
    if (!b->ctx && !o->poll_loop) {
        rlog_warn("the libev event loop is not available: falling back to poll()");
        info.options &= ~(uint64_t)LWS_SERVER_OPTION_LIBEV;
        info.signal_cb = NULL;
        b->ctx = lws_create_context(&info);
    }
    if (!b->ctx) {
        fprintf(stderr, "rill-bench: cannot create the libwebsockets context\n");
        return RILL_E_IO;
    }
    /* The run's clock: timerfds in the loop, so that ticks and arrivals wake
     * it whatever the event library (lws timers need the loop awake). */
    struct lws_vhost *vh = lws_get_vhost_by_name(b->ctx, "default");
    if (!vh)
        return RILL_E_INTERNAL;
    int *fds[2] = {&b->tick_fd, &b->arrival_fd};
    for (int i = 0; i < 2; i++) {
        lws_sock_file_fd_type u;
        u.filefd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (u.filefd < 0)
            return RILL_E_IO;
        *fds[i] = u.filefd;
        if (!lws_adopt_descriptor_vhost(vh, LWS_ADOPT_RAW_FILE_DESC, u, "rill-bench-timer", NULL))
            return RILL_E_IO; /* lws closed it */
    }
    return 0;
}

static void teardown(struct bench *b)
{
    if (b->ctx)
        lws_context_destroy(b->ctx);
    for (uint32_t i = 0; b->conns && i < b->n_conns; i++) {
        for (struct outmsg *m = b->conns[i].q_head, *n; m; m = n) {
            n = m->next;
            free(m);
        }
        free(b->conns[i].rx);
    }
    free(b->conns);
    free(b->slots);
    free(b->rates);
    for (size_t i = 0; i < b->n_prompts; i++)
        free(b->prompts[i]);
    free(b->prompts);
    msgpack_zone_destroy(&b->zone);
}

/* --- one run --------------------------------------------------------------------------------------------- */

/* One whole measurement with its own context and connections: ramp,
 * warmup, window, stop.  *json gets its results as JSON text (the caller
 * frees it); *nothing is set when no token and no completion came back.
 * Returns 0 or an error (RILL_E_BAD_CONFIG: what the options asked for
 * cannot be done). */
static int run_once(const struct opts *o, char **json, bool *nothing, bool *interrupted)
{
    *json = NULL;
    *nothing = *interrupted = false;
    struct bench *b = calloc(1, sizeof *b);
    if (!b)
        return RILL_E_NOMEM;
    b->o = *o;
    int rc = setup(b);
    if (rc)
        goto out;
    if (o->idle && proc_rss_kb(o->gateway_pid, &b->idle_rss_before_kb)) {
        fprintf(stderr, "rill-bench: cannot read /proc/%d/status\n", o->gateway_pid);
        rc = RILL_E_IO;
        goto out;
    }
    b->t0 = clock_ns();
    b->ph = PH_RAMP;
    /* A closed-loop run of N requests without warmup counts from the first
     * send, so that its N requests are exactly the ones it reports on. */
    if (o->concurrency && o->requests && !o->warmup && !o->fanout) {
        b->t_ramp_done = b->t0;
        snapshot_start(b, b->t0);
        b->ph = PH_MEASURE;
    }
    struct itimerspec every = {{0, BENCH_TICK_US * 1000}, {0, 1}};
    timerfd_settime(b->tick_fd, 0, &every, NULL);
    while (b->ph != PH_DONE)
        if (lws_service(b->ctx, 0) < 0)
            break;
    if (!b->t_end) {
        snapshot_end(b, clock_ns()); /* the loop broke before the window ended */
        if (!b->t_measure)
            b->t_measure = b->t_end;
    }
    struct results r;
    compute(b, &r);
    if (!o->quiet)
        print_table(b, &r);
    rc = b->fatal ? RILL_E_IO : result_json(b, &r, json);
    *interrupted = b->stop_signal;
    *nothing = o->idle ? b->open_at_end == 0 : (b->tokens == 0 && b->completed == 0);
out:
    teardown(b);
    free(b);
    return rc;
}

/* --- figures over runs ------------------------------------------------------------------------------------ */

/* What a regression check looks at, found by path in each run's results; a
 * figure is kept when the runs have it (added latency: --fanout; gateway:
 * --gateway-pid; idle: --idle).  Tails (p95/p99) swing more from run to
 * run and get bench-compare's wider --tail-threshold. */
struct figure_def {
    const char *name, *label, *unit, *path;
    bool higher_is_better;
    const char *kind;                /* "median" (and throughputs), "tail", "count" */
};

static const struct figure_def figure_defs[] = {
    {"tokens_per_s", "tokens/s, aggregate", "", "tokens_per_s", true, "median"},
    {"stream_tokens_per_s", "tokens/s per stream, median", "", "stream_tokens_per_s.median", true, "median"},
    {"ttft_p50_ms", "time to first token p50", "ms", "ttft_ms.p50", false, "median"},
    {"ttft_p95_ms", "time to first token p95", "ms", "ttft_ms.p95", false, "tail"},
    {"ttft_p99_ms", "time to first token p99", "ms", "ttft_ms.p99", false, "tail"},
    {"itl_p50_ms", "inter-token p50", "ms", "itl_ms.p50", false, "median"},
    {"itl_p95_ms", "inter-token p95", "ms", "itl_ms.p95", false, "tail"},
    {"itl_p99_ms", "inter-token p99", "ms", "itl_ms.p99", false, "tail"},
    {"added_latency_p50_ms", "added latency p50", "ms", "added_latency_ms.p50", false, "median"},
    {"added_latency_p99_ms", "added latency p99", "ms", "added_latency_ms.p99", false, "tail"},
    {"added_at_socket_p50_ms", "added latency at the socket p50", "ms", "added_at_socket_ms.p50", false, "median"},
    {"added_at_socket_p99_ms", "added latency at the socket p99", "ms", "added_at_socket_ms.p99", false, "tail"},
    {"errors", "errors", "", "requests.errored", false, "count"},
    {"gateway_cpu_pct", "gateway CPU", "%", "gateway.cpu_pct", false, "median"},
    {"gateway_rss_kb", "gateway RSS", "kB", "gateway.rss_kb", false, "median"},
    {"idle_rss_per_conn_kb", "gateway RSS per idle connection", "kB", "idle.rss_per_conn_kb", false, "median"},
};
#define N_FIGURES (sizeof figure_defs / sizeof *figure_defs)

struct figure {
    double v[BENCH_MAX_REPEAT];      /* in run order */
    size_t n;
    double median, spread;           /* spread: (max - min) / |median|, NAN below two runs */
};

/* Each figure's runs, median and spread from the runs' JSON results. */
static int figures_of(char *const *runs, size_t n_runs, struct figure *fig)
{
    memset(fig, 0, N_FIGURES * sizeof *fig);
    for (size_t k = 0; k < n_runs; k++) {
        cJSON *j = cJSON_Parse(runs[k]);
        if (!j)
            return RILL_E_INTERNAL;
        for (size_t i = 0; i < N_FIGURES; i++) {
            double x = benchfig_num(j, figure_defs[i].path);
            if (!isnan(x) && fig[i].n < BENCH_MAX_REPEAT)
                fig[i].v[fig[i].n++] = x;
        }
        cJSON_Delete(j);
    }
    for (size_t i = 0; i < N_FIGURES; i++) {
        struct figure *f = &fig[i];
        double s[BENCH_MAX_REPEAT];
        memcpy(s, f->v, f->n * sizeof *s); /* f->v stays in run order */
        benchfig_median_noise(s, f->n, &f->median, &f->spread);
    }
    return 0;
}

static void print_figures(const struct figure *fig, size_t n_runs)
{
    printf("rill-bench: %zu runs: each figure's median, and its noise = (max - min) / median\n", n_runs);
    for (size_t i = 0; i < N_FIGURES; i++) {
        const struct figure *f = &fig[i];
        if (!f->n)
            continue;
        char label[96];
        snprintf(label, sizeof label, "%s%s%s", figure_defs[i].label, *figure_defs[i].unit ? " " : "",
                 figure_defs[i].unit);
        char med[32], x[32], noise[16] = "-";
        bool count = !strcmp(figure_defs[i].kind, "count");
        benchfig_fmt(med, sizeof med, f->median, count);
        if (!isnan(f->spread))
            snprintf(noise, sizeof noise, "%.1f%%", 100 * f->spread);
        printf("  %-36s %10s  noise %6s  runs", label, med, noise);
        for (size_t k = 0; k < f->n; k++) {
            benchfig_fmt(x, sizeof x, f->v[k], count);
            printf(" %s", x);
        }
        printf("\n");
    }
}

/* --- --save ----------------------------------------------------------------------------------------------- */

/* The first line a shell command prints, or "" (git outside a repository). */
static void first_line_of(const char *cmd, char *out, size_t n)
{
    out[0] = 0;
    FILE *p = popen(cmd, "r");
    if (!p)
        return;
    if (!fgets(out, (int)n, p))
        out[0] = 0;
    out[strcspn(out, "\r\n")] = 0;
    pclose(p);
}

static void cpu_model(char *out, size_t n)
{
    out[0] = 0;
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (colon && !strncmp(line, "model name", 10)) {
            colon++;
            colon += strspn(colon, " \t");
            colon[strcspn(colon, "\r\n")] = 0;
            snprintf(out, n, "%s", colon);
            break;
        }
    }
    fclose(f);
}

/* argv as one shell-quoted line. */
static char *command_line(int argc, char **argv)
{
    size_t cap = 1;
    for (int i = 0; i < argc; i++)
        cap += 4 * strlen(argv[i]) + 3;
    char *s = malloc(cap), *p = s;
    if (!s)
        return NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        bool plain = *a && strspn(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:=,+@%") ==
                               strlen(a);
        if (i)
            *p++ = ' ';
        if (plain) {
            p += sprintf(p, "%s", a);
            continue;
        }
        *p++ = '\'';
        for (; *a; a++)
            p += *a == '\'' ? sprintf(p, "'\\''") : sprintf(p, "%c", *a);
        *p++ = '\'';
    }
    *p = 0;
    return s;
}

/* The --save file: format, where the figures come from, the figures
 * (median, spread, every run) and every run's full results. */
static int write_save(const char *path, const struct opts *o, const char *command, char *const *runs, size_t n_runs,
                      const struct figure *fig, bool interrupted)
{
    size_t cap = 16384 + 8 * strlen(command) + N_FIGURES * (512 + 32 * n_runs);
    for (size_t k = 0; k < n_runs; k++)
        cap += strlen(runs[k]) + 16;
    char *buf = malloc(cap);
    if (!buf)
        return RILL_E_NOMEM;
    char date[32], commit[64], dirty[8], cpu[256];
    time_t now = time(NULL);
    struct tm tm;
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
    first_line_of("git rev-parse --short HEAD 2>/dev/null", commit, sizeof commit);
    first_line_of("git status --porcelain --untracked-files=no 2>/dev/null | head -n 1", dirty, sizeof dirty);
    cpu_model(cpu, sizeof cpu);
    struct utsname un;
    if (uname(&un))
        snprintf(un.nodename, sizeof un.nodename, "unknown");

    struct jsonw w;
    jsonw_init(&w, buf, cap);
    jsonw_obj_begin(&w);
    jsonw_key_int(&w, "rill_bench_save", BENCH_SAVE_FORMAT);
    jsonw_key(&w, "meta");
    jsonw_obj_begin(&w);
    jsonw_key_str(&w, "date", date);
    jsonw_key(&w, "commit");
    commit[0] ? jsonw_str(&w, commit) : jsonw_null(&w);
    jsonw_key_bool(&w, "dirty", dirty[0] != 0);
    jsonw_key(&w, "machine");
    jsonw_obj_begin(&w);
    jsonw_key_int(&w, "nproc", sysconf(_SC_NPROCESSORS_ONLN));
    jsonw_key(&w, "cpu_model");
    cpu[0] ? jsonw_str(&w, cpu) : jsonw_null(&w);
    jsonw_key_str(&w, "hostname", un.nodename);
    jsonw_obj_end(&w);
    jsonw_key_str(&w, "command", command);
    jsonw_key_uint(&w, "repeat", n_runs);
    jsonw_key_uint(&w, "repeat_asked", (uint64_t)o->repeat);
    jsonw_key_bool(&w, "interrupted", interrupted);
    jsonw_key_str(&w, "spread", "(max - min) / |median| of the runs, in %; null below two runs");
    jsonw_obj_end(&w);
    jsonw_key(&w, "figures");
    jsonw_arr_begin(&w);
    for (size_t i = 0; i < N_FIGURES; i++) {
        const struct figure *f = &fig[i];
        const struct figure_def *d = &figure_defs[i];
        if (!f->n)
            continue;
        jsonw_obj_begin(&w);
        jsonw_key_str(&w, "name", d->name);
        jsonw_key_str(&w, "label", d->label);
        jsonw_key_str(&w, "unit", d->unit);
        jsonw_key_str(&w, "better", d->higher_is_better ? "higher" : "lower");
        jsonw_key_str(&w, "kind", d->kind);
        jsonw_key_double(&w, "median", f->median, 4);
        jsonw_key_double(&w, "spread_pct", 100 * f->spread, 2); /* NAN: null */
        jsonw_key(&w, "runs");
        jsonw_arr_begin(&w);
        for (size_t k = 0; k < f->n; k++)
            jsonw_double(&w, f->v[k], 4);
        jsonw_arr_end(&w);
        jsonw_obj_end(&w);
    }
    jsonw_arr_end(&w);
    jsonw_key(&w, "runs");
    jsonw_arr_begin(&w);
    for (size_t k = 0; k < n_runs; k++)
        jsonw_raw(&w, runs[k], strlen(runs[k]));
    jsonw_arr_end(&w);
    jsonw_obj_end(&w);
    int rc = RILL_E_INTERNAL;
    if (jsonw_ok(&w) && jsonw_len(&w) < cap) {
        buf[jsonw_len(&w)] = 0;
        rc = write_text(path, buf);
    }
    free(buf);
    return rc;
}

/* --- --compare ------------------------------------------------------------------------------------------- */

/* bench-compare next to this binary: one comparer for every benchmark's
 * files, so that the table and the verdicts are the same everywhere. */
static int compare_tool(char *out, size_t n)
{
    char self[4096];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0)
        return RILL_E_IO;
    self[len] = 0;
    char *slash = strrchr(self, '/');
    if (!slash)
        return RILL_E_IO;
    *slash = 0;
    snprintf(out, n, "%s/bench-compare", self);
    return access(out, X_OK) ? RILL_E_NOT_FOUND : 0;
}

/* Run bench-compare BASELINE CURRENT; its exit status, or -1. */
static int run_compare(const struct opts *o, const char *current)
{
    char tool[4096], thr[32], tail[32];
    if (compare_tool(tool, sizeof tool))
        return -1;
    snprintf(thr, sizeof thr, "%g", o->threshold);
    snprintf(tail, sizeof tail, "%g", o->tail_threshold);
    const char *argv[10];
    int n = 0;
    argv[n++] = tool;
    argv[n++] = "--threshold";
    argv[n++] = thr;
    if (o->has_tail_threshold) {
        argv[n++] = "--tail-threshold";
        argv[n++] = tail;
    }
    if (o->fail_on_regression)
        argv[n++] = "--fail-on-regression";
    argv[n++] = o->compare;
    argv[n++] = current;
    argv[n] = NULL;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        execv(tool, (char *const *)argv);
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* --- main --------------------------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    rlog_init("bench", NULL, RLOG_INFO, false, 2);
    struct opts o;
    if (parse_opts(argc, argv, &o))
        return 2;
    if (o.quiet)
        rlog_set_level(RLOG_ERROR);
    char tool[4096];
    if (o.compare && compare_tool(tool, sizeof tool)) {
        fprintf(stderr, "rill-bench: --compare needs bench-compare next to this binary (make B/bench-compare)\n");
        return 2;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    char *runs[BENCH_MAX_REPEAT] = {0};
    size_t n_runs = 0;
    bool nothing = false, interrupted = false;
    int rc = 0;
    for (long k = 0; k < o.repeat && !interrupted; k++) {
        if (k && o.pause > 0) {
            struct timespec ts = {(time_t)o.pause, (long)((o.pause - (double)(time_t)o.pause) * 1e9)};
            while (nanosleep(&ts, &ts) && errno == EINTR && !got_signal)
                ;
            if (got_signal) {
                interrupted = true;
                break;
            }
        }
        if (o.repeat > 1 && !o.quiet)
            printf("%srill-bench: run %ld of %ld\n", k ? "\n" : "", k + 1, o.repeat);
        rc = run_once(&o, &runs[n_runs], &nothing, &interrupted);
        if (rc)
            break;
        n_runs++;
        if (o.json && (rc = write_text(o.json, runs[n_runs - 1])))
            break;
        if (nothing) {
            fprintf(stderr, "rill-bench: run %ld received nothing%s\n", k + 1,
                    o.save || o.compare ? ": nothing saved or compared" : "");
            break;
        }
    }

    int exit_code = rc == RILL_E_BAD_CONFIG ? 2 : rc ? 1 : nothing ? 3 : 0;
    if (!exit_code && n_runs && (o.save || o.compare)) {
        struct figure fig[N_FIGURES];
        char tmp[4096] = "", *command = command_line(argc, argv);
        const char *save = o.save;
        rc = command ? figures_of(runs, n_runs, fig) : RILL_E_NOMEM;
        if (!rc && n_runs > 1 && !o.quiet)
            print_figures(fig, n_runs);
        if (!rc && !save) {
            const char *dir = getenv("TMPDIR");
            snprintf(tmp, sizeof tmp, "%s/rill-bench-XXXXXX.json", dir && *dir ? dir : "/tmp");
            int fd = mkstemps(tmp, 5);
            if (fd < 0) {
                fprintf(stderr, "rill-bench: cannot make a temporary file: %s\n", strerror(errno));
                rc = RILL_E_IO;
                tmp[0] = 0;
            } else {
                close(fd);
                save = tmp;
            }
        }
        if (!rc)
            rc = write_save(save, &o, command, runs, n_runs, fig, interrupted);
        if (!rc && o.save && !o.quiet)
            printf("rill-bench: saved %zu run%s to %s\n", n_runs, n_runs == 1 ? "" : "s", o.save);
        if (!rc && o.compare) {
            int c = run_compare(&o, save);
            if (c == 1 && o.fail_on_regression)
                exit_code = BENCH_EXIT_REGRESSION;
            else if (c != 0)
                exit_code = 1; /* bench-compare said why */
        }
        if (rc)
            exit_code = 1;
        if (tmp[0])
            unlink(tmp);
        free(command);
    }
    for (size_t k = 0; k < n_runs; k++)
        free(runs[k]);
    return exit_code;
}
