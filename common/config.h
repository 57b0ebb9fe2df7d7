/* config.h — rill's configuration: one table of every key, shared by all
 * processes, read from an INI file (libinih) and overridden by command-line
 * flags `--key value` (or `--key=value`).
 *
 * The file has sections ([rill], [gateway], [worker], [supervisor],
 * [telemetry]); a key must be in its own section.  Unknown keys, keys in the
 * wrong section and bad values are errors whose message names the key, the
 * value and what was expected.  The supervisor hands the same file (and the
 * flags it was given) to its children, so every process sees one config.
 *
 * Sizes accept K, M, G suffixes (binary: 1K = 1024).
 */
#ifndef RILL_CONFIG_H
#define RILL_CONFIG_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CFG_STR_MAX 512

/* X(type, section, key, default, min, max, help)
 * type: STR (char[CFG_STR_MAX]), INT (int64_t), DBL (double), BOOL, SIZE (int64_t bytes) */
#define RILL_CONFIG_KEYS(X)                                                                         \
    X(STR,  rill, instance,            "rill",           0, 0,      "deployment name; part of every shm and socket name") \
    X(STR,  rill, run_dir,             "",               0, 0,      "directory for sockets (mode 0700); default $XDG_RUNTIME_DIR/rill-<instance> or /tmp/rill-<uid>-<instance>") \
    X(STR,  rill, log_level,           "info",           0, 0,      "debug, info, warn, error or off") \
    X(BOOL, rill, log_json,            "false",          0, 0,      "one JSON object per log line") \
    X(STR,  rill, log_file,            "",               0, 0,      "append logs to this file instead of stderr") \
    X(STR,  rill, control,             "",               0, 0,      "supervisor control endpoint (the supervisor sets it for its children)") \
    X(STR,  gateway, listen,           "127.0.0.1:8765", 0, 0,      "HTTP and WebSocket address (host:port); loopback unless told otherwise") \
    X(STR,  gateway, ws_path,          "/stream",        0, 0,      "path of the WebSocket endpoint") \
    X(STR,  gateway, web_root,         "",               0, 0,      "directory of the web pages; default gateway/web next to the binaries") \
    X(SIZE, gateway, max_message_bytes, "1M",            256, 67108864, "largest WebSocket message a client may send") \
    X(SIZE, gateway, max_prompt_bytes, "256K",           1, 1048576, "largest prompt in bytes") \
    X(INT,  gateway, max_tokens_limit, "4096",           1, 1048576, "largest max_tokens a request may ask for") \
    X(INT,  gateway, max_streams_per_conn, "16",         1, 4096,   "generations one connection may run at once") \
    X(INT,  gateway, max_conns_per_ip, "1024",           1, 1000000, "connections from one IP address") \
    X(INT,  gateway, max_connections,  "10000",          1, 1000000, "connections in all") \
    X(DBL,  gateway, rate_limit_rps,   "0",              0, 1e6,    "requests per second per API key (or per IP without keys); 0: no limit") \
    X(DBL,  gateway, rate_limit_burst, "20",             1, 1e6,    "token-bucket burst for rate_limit_rps") \
    X(STR,  gateway, api_keys,         "",               0, 0,      "comma-separated API keys; empty: no key needed") \
    X(STR,  gateway, api_keys_file,    "",               0, 0,      "file with one API key per line") \
    X(STR,  gateway, allowed_origins,  "",               0, 0,      "comma-separated Origin values allowed; empty: same origin only; *: any") \
    X(STR,  gateway, allowed_hosts,    "",               0, 0,      "comma-separated Host names (name or name:port) clients may use; empty: localhost, 127.0.0.1 and [::1] when listening on loopback, any otherwise; *: any") \
    X(SIZE, gateway, client_buffer_bytes, "1M",          4096, 1073741824, "output a slow client may have queued before it gets slow_consumer") \
    X(INT,  gateway, coalesce_max_ms,  "50",             0, 10000,  "longest a token waits to be coalesced with later ones for a client that is behind") \
    X(BOOL, gateway, direct_write,     "true",           0, 0,      "write a connection's new tokens right after the ring batch that brought them, when its socket has room (false: wait for lws's writable callback)") \
    X(BOOL, gateway, send_uring,       "true",           0, 0,      "send a ring batch's frames through io_uring (one system call per 32 connections, not one per connection) where the kernel allows io_uring; false, or no io_uring: one send() per connection") \
    X(INT,  gateway, send_threads,     "1",              1, 16,     "threads that send the frames of one ring batch in parallel (the service thread and send_threads-1 more; worth it only with a core to spare); 1: the service thread alone") \
    X(INT,  gateway, ping_interval_s,  "20",             0, 3600,   "seconds an idle WebSocket may be silent before it is pinged (and 3x that before it is dropped)") \
    X(INT,  gateway, failover_timeout_s, "30",         0, 3600,   "how long a generation whose worker died waits for a worker to run it again before it ends with worker_lost") \
    X(INT,  gateway, resume_window_s,  "60",             0, 86400,  "how long a generation outlives its client's connection (running, then kept with its tokens) so that a resume can pick it up; 0: a dropped connection cancels its generations") \
    X(SIZE, gateway, resume_log_bytes, "256K",           0, 1073741824, "tokens kept per generation for resumes (older ones are dropped first)") \
    X(SIZE, gateway, resume_log_total_bytes, "256M",     0, 1099511627776, "tokens kept for resumes in all; past it a generation's oldest ones are dropped") \
    X(STR,  gateway, worker_list,      "",               0, 0,      "standalone: comma-separated workers as endpoint@ring (without a supervisor)") \
    X(STR,  worker, model,             "models/default.gguf", 0, 0, "GGUF model file") \
    X(INT,  worker, threads,           "0",              0, 256,    "compute threads (0: every core)") \
    X(INT,  worker, max_batch,         "64",             1, 65536,  "most sequences one decode step advances") \
    X(INT,  worker, min_batch,         "1",              1, 4096,   "the adaptive controller never goes below this") \
    X(SIZE, worker, kv_cache_bytes,    "0",              0, 1099511627776, "KV-cache memory (0: enough for max_batch sequences of 2048 tokens, at most 1/4 of RAM)") \
    X(INT,  worker, kv_block_tokens,   "16",             1, 1024,   "tokens per KV-cache block") \
    X(BOOL, worker, prefix_cache,      "true",           0, 0,      "keep the KV blocks of recent prompts and outputs, keyed by their tokens, and prefill only what a new request does not share with them (exact: the same tokens either way)") \
    X(SIZE, worker, prefix_cache_bytes, "256M",          0, 1099511627776, "KV blocks the prefix cache keeps idle at most (least recently used evicted past it); they are evicted first under memory pressure too") \
    X(INT,  worker, context,           "0",              0, 1048576, "context length (0: the model's)") \
    X(DBL,  worker, target_latency_ms, "50",             1, 60000,  "the batch cap rises while step time stays under this") \
    X(DBL,  worker, max_latency_ms,    "100",            1, 60000,  "the batch cap falls when step time rises above this") \
    X(INT,  worker, prefill_chunk,     "512",            1, 8192,   "most prompt tokens prefilled in one step") \
    X(DBL,  worker, max_step_ms,       "250",            10, 60000, "longest a step should take: prefill chunks are sized to stay under it (heartbeats go out between steps)") \
    X(SIZE, worker, ring_bytes,        "4M",             4096, 1073741824, "size of the worker's token ring") \
    X(INT,  worker, journal_window_s,  "60",             0, 86400,  "how long a finished request's records stay kept for a gateway that restarts (running ones are kept while they run); 0: keep nothing, a restarted gateway cancels what its predecessor left") \
    X(SIZE, worker, journal_bytes,     "256K",           0, 1073741824, "records kept per request for a restarted gateway (older ones dropped first)") \
    X(SIZE, worker, journal_total_bytes, "64M",          0, 1099511627776, "records kept in all for a restarted gateway (finished requests dropped first)") \
    X(INT,  worker, heartbeat_ms,      "100",            10, 60000, "heartbeat period") \
    X(STR,  worker, endpoint,          "",               0, 0,      "request socket (default ipc://<run_dir>/w<id>.sock)") \
    X(INT,  worker, worker_id,         "0",              0, 1023,   "this worker's number (w<id>)") \
    X(STR,  worker, matmul,            "native",         0, 0,      "matrix kernels: native (batch-invariant, exact) or blas (OpenBLAS sgemm for F32)") \
    X(BOOL, worker, fake_tokens,       "false",          0, 0,      "emit tokens without computing them (fan-out benchmark only)") \
    X(INT,  worker, fake_phases,       "1",              1, 1024,   "with fake_tokens: running sequences advance in this many evenly spaced steps per target_latency_ms, as that many workers stepping at different times would") \
    X(INT,  supervisor, workers,       "1",              1, 64,     "worker processes") \
    X(INT,  supervisor, min_workers,   "0",              0, 64,     "fewest workers the supervisor runs when it scales (0: workers)") \
    X(INT,  supervisor, max_workers,   "0",              0, 64,     "most workers the supervisor runs when it scales (0: workers, or min_workers if more); workers is how many start") \
    X(DBL,  supervisor, scale_up_queued, "2",            0.1, 1e6,  "requests waiting (not yet admitted) per ready worker that, held for scale_up_s, start another worker") \
    X(DBL,  supervisor, scale_up_s,    "3",              0, 3600,   "how long the queue must stay at scale_up_queued before a worker is added") \
    X(DBL,  supervisor, scale_down_s,  "30",             0, 86400,  "how long the load must fit in one worker fewer (nothing waiting, the running sequences under half of the others' batch caps) before one is drained and stopped") \
    X(DBL,  supervisor, scale_cooldown_s, "10",          0, 3600,   "least time between two scaling decisions (of either direction)") \
    X(INT,  supervisor, threads_per_worker, "0",         0, 256,    "threads of each worker (0: cores / workers)") \
    X(INT,  supervisor, restart_max,   "5",              0, 1000,   "restarts within restart_window_s before giving up on a process") \
    X(INT,  supervisor, restart_window_s, "60",          1, 86400,  "window for restart_max") \
    X(DBL,  supervisor, restart_healthy_s, "2",          0, 86400,  "a process that was ready this long before it died (killed from outside, not a crash loop) is restarted after the shortest delay, not a doubled one") \
    X(INT,  supervisor, heartbeat_timeout_ms, "1000",    100, 600000, "a worker silent this long is hung: killed and restarted") \
    X(INT,  supervisor, start_timeout_ms, "60000",       1000, 3600000, "how long a process may take to say hello") \
    X(INT,  supervisor, drain_timeout_s, "30",           0, 3600,   "how long a drain may take before processes are stopped") \
    X(INT,  supervisor, pressure_interval_ms, "100",     10, 60000, "memory-pressure sampling period") \
    X(SIZE, supervisor, memory_budget_bytes, "0",        0, 1099511627776, "memory the pipeline may use (0: the cgroup limit, else MemTotal)") \
    X(DBL,  supervisor, pressure_warning, "0.75",        0, 1,      "used/budget at which the level becomes warning") \
    X(DBL,  supervisor, pressure_critical, "0.85",       0, 1,      "used/budget at which the level becomes critical") \
    X(DBL,  supervisor, pressure_emergency, "0.95",      0, 1,      "used/budget at which the level becomes emergency") \
    X(DBL,  supervisor, psi_warning,   "10",             0, 100,    "PSI memory some avg10 (%) for warning") \
    X(DBL,  supervisor, psi_critical,  "25",             0, 100,    "PSI memory some avg10 (%) for critical") \
    X(DBL,  supervisor, psi_emergency, "50",             0, 100,    "PSI memory full avg10 (%) for emergency") \
    X(DBL,  supervisor, pressure_hysteresis, "0.05",     0, 0.5,    "a level is left only this far below its threshold") \
    X(BOOL, telemetry, telemetry,      "true",           0, 0,      "per-token telemetry records") \
    X(DBL,  telemetry, sampling_rate,  "1.0",            0, 1,      "fraction of tokens recorded per token (counters are always exact)")

#define CFG_FIELD_STR(name)  char name[CFG_STR_MAX]
#define CFG_FIELD_INT(name)  int64_t name
#define CFG_FIELD_DBL(name)  double name
#define CFG_FIELD_BOOL(name) bool name
#define CFG_FIELD_SIZE(name) int64_t name

struct rill_config {
#define CFG_FIELD_(type, sec, name, def, mn, mx, help) CFG_FIELD_##type(name);
    RILL_CONFIG_KEYS(CFG_FIELD_)
#undef CFG_FIELD_
    char config_file[CFG_STR_MAX];   /* the file read, if any */
};

/* Defaults for every key. */
void cfg_defaults(struct rill_config *c);

/* Read an INI file over the current values.  RILL_E_BAD_CONFIG with the
 * reason in `why` ("rill.ini:12: unknown key 'foo' in [worker]"), RILL_E_IO
 * if the file cannot be read. */
int cfg_load_file(struct rill_config *c, const char *path, char *why, size_t why_len);

/* Set one key from text (the flag and file paths both end here). */
int cfg_set(struct rill_config *c, const char *key, const char *value, char *why, size_t why_len);

/* Whether `key` is a config key. */
bool cfg_is_key(const char *key);

/* Whether `key` holds a secret (api_keys): never written into a child's
 * arguments by cfg_to_args, and blanked in our own argv by cfg_parse_args
 * once read, so that ps and /proc/PID/cmdline do not show it. */
bool cfg_is_secret(const char *key);

/* Parse argv: `--config FILE` is read first (wherever it appears), then every
 * `--key value` / `--key=value` is applied in order.  Arguments that are not
 * config keys are passed to `other` (may be NULL) which returns how many
 * argv entries it consumed (>= 1) or 0 if it does not know the argument
 * either, which is then an error "unknown option".  The values of secret
 * keys are overwritten in argv after they are read.  Returns 0 or
 * RILL_E_BAD_CONFIG / RILL_E_IO with `why`. */
typedef int (*cfg_other_fn)(int argc, char **argv, int i, void *ctx);
int cfg_parse_args(struct rill_config *c, int argc, char **argv, cfg_other_fn other, void *ctx,
                   char *why, size_t why_len);

/* Write every key but the secrets as `--key value` flags into argv-style
 * storage (for children): the supervisor passes its whole resolved config
 * down, and the secrets by a file (supervisor/sup.c). */
int cfg_to_args(const struct rill_config *c, char ***argv_out, int *argc_out);
void cfg_free_args(char **argv, int argc);

/* Print every key with its section, default and help on stdout (for --help). */
void cfg_print_help(void);

/* The resolved run directory (run_dir or its default). */
void cfg_run_dir(const struct rill_config *c, char *out, size_t n);

/* The shm name of worker `worker`'s ring ("w0"): /rill-<uid>-<instance>-<worker>.
 * The uid part keeps users of one host (each with the default instance) out
 * of each other's names, as the run dir does; it does not stop a squatter,
 * which ring_create() refuses.  RILL_E_BAD_CONFIG if it does not fit in `n`. */
int cfg_ring_name(const struct rill_config *c, const char *worker, char *out, size_t n);

/* What every ring name of this instance starts with, without the slash
 * ("rill-<uid>-<instance>-"), for ring_cleanup_stale(). */
void cfg_ring_prefix(const struct rill_config *c, char *out, size_t n);

/* The signal a supervised process gets when its supervisor dies
 * (prctl PR_SET_PDEATHSIG): it drains and exits, as on SIGTERM. */
#define RILL_PARENT_DEATH_SIGNAL SIGUSR1

/* Set up logging from the config for `component` / `id`. */
void cfg_setup_log(const struct rill_config *c, const char *component, const char *id);

#endif
