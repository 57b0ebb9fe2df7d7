/* pressure.h — the supervisor's memory-pressure monitor (the spec's
 * MemoryPressureMonitor): how close the pipeline is to running out of memory,
 * as one of the four levels of common/pressure_level.h (normal, warning,
 * critical, emergency) that the supervisor sends to every process.
 *
 * Signals.  Two kinds, the higher level of the two wins:
 *  - the ratio used / budget, against pressure_warning / _critical /
 *    _emergency (fractions of the budget);
 *  - PSI (pressure stall information): the share of the last 10 s during
 *    which tasks waited for memory.  "some avg10" >= psi_warning gives at
 *    least warning, >= psi_critical at least critical; "full avg10" (every
 *    task stalled) >= psi_emergency gives emergency.  PSI is read from
 *    /proc/pressure/memory and, when the process is in a non-root cgroup v2
 *    group, from that group's memory.pressure; the larger value is used, so a
 *    container that thrashes under its own limit counts even when the host
 *    is calm.  PSI sees trouble the ratio cannot (reclaim, swap storms)
 *    and the ratio sees it coming before anybody stalls.
 *
 * Budget and "used" (pressure_account()):
 *  - budget: memory_budget_bytes when configured; else the cgroup limit
 *    when there is one below MemTotal (a limit >= 2^62 — cgroup v1 says
 *    9223372036854771712 — or "max" means none, and a limit above the RAM
 *    cannot be reached before the RAM runs out); else MemTotal.
 *  - used: with a configured budget, the pipeline's own RSS — the workers'
 *    RSS from their heartbeats plus `others_rss` (gateways and the
 *    supervisor), because the budget is what the pipeline may use, not what
 *    the machine has; with a cgroup budget, the group's usage (it includes
 *    page cache the kernel can reclaim, which is what the limit counts too);
 *    with MemTotal, MemTotal - MemAvailable.
 *  KV-cache bytes are informational: they are part of the workers' RSS
 *  already and are not added again.
 *
 * Hysteresis.  Rising is immediate: the level is the highest one any signal
 * reaches.  A level is left downwards only when every signal is below the
 * threshold of the level above the new one minus a margin: `hysteresis`
 * (a fraction of the budget, so warning at 0.75 with 0.05 is left below
 * 0.70) for the ratio, and `psi_hysteresis` (a fraction of the PSI
 * threshold: 0.2 leaves warning at 10 % below 8 %) for PSI.  A reading that
 * hovers at a threshold thus changes the level once, not at every sample.
 * It may fall several levels at once.  A threshold <= 0 disables that
 * signal for that level.
 *
 * Missing files are normal (no PSI before Linux 4.20 or with psi=0, no
 * cgroup limit on a plain host): a reading says what it found, and a
 * reading with no usable signal at all leaves the level where it is.
 *
 * Not thread-safe; the supervisor's loop owns the monitor.
 */
#ifndef RILL_PRESSURE_H
#define RILL_PRESSURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/pressure_level.h"

struct rill_config;

#define PRESSURE_REASON_LEN 192

/* A cgroup limit at or above this is "no limit" (v1 reports 2^63 - 4096). */
#define PRESSURE_CG_UNLIMITED (1ull << 62)

/* One PSI file: /proc/pressure/memory or a group's memory.pressure.
 * Averages are percentages (0..100), totals microseconds of stall. */
struct pressure_psi {
    bool ok;                      /* the "some" line parsed */
    bool has_full;                /* the "full" line parsed */
    double some_avg10, some_avg60, some_avg300;
    double full_avg10, full_avg60, full_avg300;
    uint64_t some_total_us, full_total_us;
};

enum pressure_budget_src {
    PRESSURE_BUDGET_NONE = 0,     /* nothing known: no ratio */
    PRESSURE_BUDGET_CONFIG,       /* memory_budget_bytes */
    PRESSURE_BUDGET_CGROUP,       /* the cgroup's limit */
    PRESSURE_BUDGET_MEMTOTAL      /* MemTotal */
};

enum pressure_used_src {
    PRESSURE_USED_NONE = 0,
    PRESSURE_USED_RSS,            /* workers_rss + others_rss */
    PRESSURE_USED_CGROUP,         /* memory.current / memory.usage_in_bytes */
    PRESSURE_USED_MEMINFO         /* MemTotal - MemAvailable */
};

struct pressure_reading {
    /* from the system: pressure_sample() */
    struct pressure_psi psi;      /* /proc/pressure/memory */
    struct pressure_psi cg_psi;   /* the v2 group's memory.pressure (non-root group only) */
    int cgroup_version;           /* 1 or 2: where usage/limit came from; 0: neither */
    bool have_cg_usage;
    bool have_cg_limit;           /* a real limit (< PRESSURE_CG_UNLIMITED) */
    uint64_t cg_usage, cg_limit;  /* bytes */
    bool have_meminfo;            /* both MemTotal and MemAvailable */
    uint64_t mem_total, mem_available; /* bytes */

    /* from the caller, out of the latest heartbeats (0 when unknown) */
    uint64_t workers_rss;         /* sum of the workers' rss_bytes */
    uint64_t workers_kv;          /* sum of the workers' kv_bytes (informational) */
    uint64_t others_rss;          /* gateways + supervisor */

    /* derived: pressure_account() */
    enum pressure_budget_src budget_src;
    enum pressure_used_src used_src;
    uint64_t budget, used;        /* bytes */
    bool have_ratio;              /* budget > 0 and used known */
    double ratio;                 /* used / budget; 0 without have_ratio */
};

struct pressure_thresholds {
    uint64_t budget_bytes;        /* 0: cgroup limit, else MemTotal */
    double warning, critical, emergency; /* used/budget fractions, 0..1 */
    double hysteresis;            /* fraction of the budget, 0..0.5 */
    double psi_warning, psi_critical;    /* some avg10, percent */
    double psi_emergency;                /* full avg10, percent */
    double psi_hysteresis;        /* fraction of a PSI threshold, 0..<1 */
};

struct pressure_monitor {
    struct pressure_thresholds th;
    enum pressure_level level;
    uint64_t transitions;         /* level changes so far */
    uint64_t entered[PRESSURE_LEVELS]; /* times each level was entered */
    char reason[PRESSURE_REASON_LEN];  /* why the last change happened ("" before any) */
    struct pressure_reading last; /* the last reading given to pressure_update() */
};

/* --- parsing (contents of a file; never crash on garbage) -------------------- */

/* Parse a PSI file ("some avg10=1.50 avg60=… avg300=… total=…\nfull …").
 * Unknown keys are skipped; values must be finite, 0..100 for averages.
 * Returns 0 (out->ok set, out->has_full if the full line was there) or
 * RILL_E_BAD_FORMAT (out zeroed, ok false). */
int pressure_parse_psi(const char *text, struct pressure_psi *out);

/* Parse /proc/meminfo for MemTotal and MemAvailable (kB -> bytes).  Both
 * must be present and MemAvailable <= MemTotal: 0, else RILL_E_BAD_FORMAT
 * (outputs 0). */
int pressure_parse_meminfo(const char *text, uint64_t *total, uint64_t *available);

/* Parse one cgroup value file: a decimal byte count (v1 and v2) or "max"
 * (v2 memory.max).  *unlimited is set for "max" and for values >=
 * PRESSURE_CG_UNLIMITED (*value then holds the number, or UINT64_MAX for
 * "max").  0 or RILL_E_BAD_FORMAT. */
int pressure_parse_cg_value(const char *text, uint64_t *value, bool *unlimited);

/* Parse /proc/self/cgroup: the v2 group ("0::/path") and the v1 memory
 * controller's group ("N:…,memory,…:/path").  Either output may be NULL;
 * each found path is copied (it starts with '/'), a missing one is "".
 * Paths with ".." components are refused (treated as missing).  Returns a
 * bit set: 1 for v1 memory found, 2 for v2 found; 0 if neither (not an
 * error: the caller falls back).  RILL_E_BAD_FORMAT only for NULL text. */
int pressure_parse_proc_cgroup(const char *text, char *v1_mem, size_t v1_len, char *v2, size_t v2_len);

/* --- reading the machine ---------------------------------------------------- */

/* Fill the system part of *r from the files below `root` ("" or NULL for the
 * real ones; tests pass a fixture directory): /proc/pressure/memory,
 * /proc/meminfo, /proc/self/cgroup, then the group's files under
 * /sys/fs/cgroup (v2: the root or /sys/fs/cgroup/unified, whichever is a v2
 * mount; v1: /sys/fs/cgroup/memory).  When the group's directory is not
 * there (a container that sees its own group as the mount's root) the
 * mount's root is used.  The caller-provided and derived fields are zeroed.
 * Missing or malformed files leave their flags false; always returns 0. */
int pressure_sample(const char *root, struct pressure_reading *r);

/* Compute budget, used and ratio of *r (see the header comment) with
 * `budget_bytes` the configured budget (0: none). */
void pressure_account(struct pressure_reading *r, uint64_t budget_bytes);

/* --- the monitor ------------------------------------------------------------ */

/* Thresholds from the config's supervisor keys.  psi_hysteresis is not a
 * key: it is 4 x pressure_hysteresis (at most 0.5), because avg10 moves in
 * bigger relative jumps than a byte count does. */
void pressure_thresholds_from_config(const struct rill_config *c, struct pressure_thresholds *th);

/* Start at normal.  RILL_E_BAD_CONFIG when a value is out of range or the
 * enabled thresholds are not in order (warning <= critical <= emergency,
 * psi_warning <= psi_critical). */
int pressure_init(struct pressure_monitor *m, const struct pressure_thresholds *th);

/* Account *r (pressure_account with the configured budget, so r's derived
 * fields are filled on return), keep a copy in m->last and move the level.
 * Returns true when the level changed; m->reason then names the readings
 * that caused it ("used 3.1 GiB of 4.0 GiB budget (78%) >= warning 75%"). */
bool pressure_update(struct pressure_monitor *m, struct pressure_reading *r);

const char *pressure_budget_src_name(enum pressure_budget_src s);

/* "3.1 GiB", "400 MiB", "12.0 MiB", "512 KiB", "100 B" into buf. */
char *pressure_fmt_bytes(char *buf, size_t len, uint64_t bytes);

/* --- the PSI trigger --------------------------------------------------------- */

/* Register a PSI trigger: the kernel makes the returned fd readable with
 * POLLPRI when tasks stalled at least `stall_us` within a `window_us`
 * window ("some"), so the supervisor wakes at once under a sudden spike
 * instead of at its next sample.  PRESSURE_TRIGGER_STALL_US /
 * _WINDOW_US are the usual choice (150 ms in 2 s; an unprivileged process
 * needs a window that is a multiple of 2 s).  `path` NULL picks the process's
 * non-root v2 group's memory.pressure when there is one, else
 * /proc/pressure/memory.  On success *fd is owned by the caller (close(2)
 * it).  Errors, none fatal for the caller (it keeps sampling on its timer):
 * RILL_E_BAD_CONFIG (stall 0 or >= window, window outside 0.5..10 s),
 * RILL_E_UNSUPPORTED (no PSI, kernel refuses the trigger),
 * RILL_E_IO (permission or another failure; logged with its errno). */
#define PRESSURE_TRIGGER_STALL_US  150000u
#define PRESSURE_TRIGGER_WINDOW_US 2000000u
int pressure_trigger_open(const char *path, uint32_t stall_us, uint32_t window_us, int *fd);

#endif
