/* pressure.c — memory-pressure readings, budget and level with hysteresis,
 * PSI trigger.  See pressure.h for the rules. */
#include "supervisor/pressure.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "err.h"
#include "log.h"

/* Every file we read is small: meminfo is ~1.5 KiB, the rest a line or two.
 * A longer file is cut here, which at worst loses keys we do not use. */
#define TEXT_MAX 8192

/* --- parsing ---------------------------------------------------------------------- */

/* Next line of *p as [start, end); advances *p past the newline.  False at
 * the end of the text. */
static bool next_line(const char **p, const char **start, const char **end)
{
    if (!**p)
        return false;
    *start = *p;
    const char *nl = strchr(*p, '\n');
    *end = nl ? nl : *p + strlen(*p);
    *p = nl ? nl + 1 : *end;
    return true;
}

/* A decimal unsigned integer filling [s, e) exactly; strtoull alone would
 * take "-5", leading blanks and "0x10". */
static bool parse_u64(const char *s, const char *e, uint64_t *out)
{
    if (s >= e || (size_t)(e - s) > 20)
        return false;
    uint64_t v = 0;
    for (const char *c = s; c < e; c++) {
        if (*c < '0' || *c > '9')
            return false;
        unsigned d = (unsigned)(*c - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

/* A finite, non-negative decimal ("12.34") filling [s, e). */
static bool parse_pct(const char *s, const char *e, double *out)
{
    char tmp[32];
    size_t n = (size_t)(e - s);
    if (s >= e || n >= sizeof tmp)
        return false;
    for (const char *c = s; c < e; c++)
        if (!((*c >= '0' && *c <= '9') || *c == '.'))
            return false; /* no sign, exponent, nan or inf */
    memcpy(tmp, s, n);
    tmp[n] = 0;
    char *end;
    errno = 0;
    double v = strtod(tmp, &end);
    if (errno || end != tmp + n || !isfinite(v) || v < 0 || v > 100)
        return false;
    *out = v;
    return true;
}

/* One PSI line after its "some"/"full" word: key=value pairs separated by
 * blanks.  avg10 is required; unknown keys are skipped so that a kernel that
 * adds one does not blind us. */
static bool parse_psi_fields(const char *s, const char *e, double avg[3], uint64_t *total)
{
    bool have_avg10 = false;
    while (s < e) {
        while (s < e && (*s == ' ' || *s == '\t'))
            s++;
        if (s >= e)
            break;
        const char *tok = s;
        while (s < e && *s != ' ' && *s != '\t')
            s++;
        const char *eq = memchr(tok, '=', (size_t)(s - tok));
        if (!eq)
            return false;
        size_t klen = (size_t)(eq - tok);
        const char *v = eq + 1;
        if (klen == 5 && !memcmp(tok, "avg10", 5)) {
            if (!parse_pct(v, s, &avg[0]))
                return false;
            have_avg10 = true;
        } else if (klen == 5 && !memcmp(tok, "avg60", 5)) {
            if (!parse_pct(v, s, &avg[1]))
                return false;
        } else if (klen == 6 && !memcmp(tok, "avg300", 6)) {
            if (!parse_pct(v, s, &avg[2]))
                return false;
        } else if (klen == 5 && !memcmp(tok, "total", 5)) {
            if (!parse_u64(v, s, total))
                return false;
        }
    }
    return have_avg10;
}

int pressure_parse_psi(const char *text, struct pressure_psi *out)
{
    memset(out, 0, sizeof *out);
    if (!text)
        return RILL_E_BAD_FORMAT;
    struct pressure_psi p = {0};
    const char *cur = text, *s, *e;
    while (next_line(&cur, &s, &e)) {
        double avg[3] = {0, 0, 0};
        uint64_t total = 0;
        if (e - s >= 5 && !memcmp(s, "some ", 5)) {
            if (p.ok || !parse_psi_fields(s + 5, e, avg, &total))
                return RILL_E_BAD_FORMAT;
            p.ok = true;
            p.some_avg10 = avg[0], p.some_avg60 = avg[1], p.some_avg300 = avg[2];
            p.some_total_us = total;
        } else if (e - s >= 5 && !memcmp(s, "full ", 5)) {
            if (p.has_full || !parse_psi_fields(s + 5, e, avg, &total))
                return RILL_E_BAD_FORMAT;
            p.has_full = true;
            p.full_avg10 = avg[0], p.full_avg60 = avg[1], p.full_avg300 = avg[2];
            p.full_total_us = total;
        } else if (e > s) {
            return RILL_E_BAD_FORMAT;
        }
    }
    if (!p.ok)
        return RILL_E_BAD_FORMAT;
    *out = p;
    return 0;
}

/* "Key:   123 kB" -> bytes.  Only the kB unit exists in meminfo; a bare
 * number (HugePages_Total) is not what we look for. */
static bool meminfo_value(const char *s, const char *e, uint64_t *bytes)
{
    while (s < e && *s == ' ')
        s++;
    const char *num = s;
    while (s < e && *s >= '0' && *s <= '9')
        s++;
    uint64_t kb;
    if (!parse_u64(num, s, &kb))
        return false;
    if (e - s != 3 || memcmp(s, " kB", 3))
        return false;
    if (kb > UINT64_MAX / 1024)
        return false;
    *bytes = kb * 1024;
    return true;
}

int pressure_parse_meminfo(const char *text, uint64_t *total, uint64_t *available)
{
    *total = *available = 0;
    if (!text)
        return RILL_E_BAD_FORMAT;
    bool have_t = false, have_a = false;
    uint64_t t = 0, a = 0;
    const char *cur = text, *s, *e;
    while (next_line(&cur, &s, &e)) {
        if (e - s > 9 && !memcmp(s, "MemTotal:", 9)) {
            if (have_t || !meminfo_value(s + 9, e, &t))
                return RILL_E_BAD_FORMAT;
            have_t = true;
        } else if (e - s > 13 && !memcmp(s, "MemAvailable:", 13)) {
            if (have_a || !meminfo_value(s + 13, e, &a))
                return RILL_E_BAD_FORMAT;
            have_a = true;
        }
    }
    if (!have_t || !have_a || t == 0 || a > t)
        return RILL_E_BAD_FORMAT;
    *total = t;
    *available = a;
    return 0;
}

int pressure_parse_cg_value(const char *text, uint64_t *value, bool *unlimited)
{
    *value = 0;
    *unlimited = false;
    if (!text)
        return RILL_E_BAD_FORMAT;
    const char *e = text + strlen(text);
    if (e > text && e[-1] == '\n')
        e--;
    if (e - text == 3 && !memcmp(text, "max", 3)) {
        *value = UINT64_MAX;
        *unlimited = true;
        return 0;
    }
    uint64_t v;
    if (!parse_u64(text, e, &v))
        return RILL_E_BAD_FORMAT;
    *value = v;
    *unlimited = v >= PRESSURE_CG_UNLIMITED;
    return 0;
}

/* A group path as /proc/self/cgroup shows it: absolute, no "..", fits. */
static bool copy_cg_path(const char *s, const char *e, char *dst, size_t len)
{
    size_t n = (size_t)(e - s);
    if (n == 0 || s[0] != '/' || n >= len || memchr(s, 0, n))
        return false;
    for (const char *c = s; c + 1 < e; c++)
        if (c[0] == '.' && c[1] == '.' && (c == s || c[-1] == '/') && (c + 2 == e || c[2] == '/'))
            return false;
    memcpy(dst, s, n);
    dst[n] = 0;
    return true;
}

/* Whether the comma-separated list [s, e) names `what`. */
static bool list_has(const char *s, const char *e, const char *what)
{
    size_t w = strlen(what);
    while (s < e) {
        const char *c = memchr(s, ',', (size_t)(e - s));
        const char *end = c ? c : e;
        if ((size_t)(end - s) == w && !memcmp(s, what, w))
            return true;
        s = end + 1;
    }
    return false;
}

int pressure_parse_proc_cgroup(const char *text, char *v1_mem, size_t v1_len, char *v2, size_t v2_len)
{
    if (v1_mem && v1_len)
        v1_mem[0] = 0;
    if (v2 && v2_len)
        v2[0] = 0;
    if (!text)
        return RILL_E_BAD_FORMAT;
    int found = 0;
    const char *cur = text, *s, *e;
    while (next_line(&cur, &s, &e)) {
        /* hierarchy-id:controllers:path — the path may itself contain ':' */
        const char *c1 = memchr(s, ':', (size_t)(e - s));
        if (!c1)
            continue;
        const char *c2 = memchr(c1 + 1, ':', (size_t)(e - c1 - 1));
        if (!c2)
            continue;
        uint64_t hid;
        if (!parse_u64(s, c1, &hid))
            continue;
        if (hid == 0 && c2 == c1 + 1) {
            if (!(found & 2) && v2 && copy_cg_path(c2 + 1, e, v2, v2_len))
                found |= 2;
        } else if (list_has(c1 + 1, c2, "memory")) {
            if (!(found & 1) && v1_mem && copy_cg_path(c2 + 1, e, v1_mem, v1_len))
                found |= 1;
        }
    }
    return found;
}

/* --- reading files ----------------------------------------------------------------- */

/* Whole small file into buf (NUL-terminated).  /proc files say size 0, so
 * read until EOF. */
static int read_text(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return RILL_E_IO;
    size_t n = 0;
    while (n + 1 < len) {
        ssize_t k = read(fd, buf + n, len - 1 - n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            close(fd);
            return RILL_E_IO;
        }
        if (k == 0)
            break;
        n += (size_t)k;
    }
    close(fd);
    buf[n] = 0;
    return 0;
}

static bool join(char *dst, size_t len, const char *a, const char *b, const char *c)
{
    int n = snprintf(dst, len, "%s%s%s", a, b, c ? c : "");
    return n >= 0 && (size_t)n < len;
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* The directory of the process's group under `mount`, or the mount itself
 * when the group is not visible there (a cgroup namespace, or a container
 * that bind-mounts its group as the root). */
static bool group_dir(char *dst, size_t len, const char *mount, const char *group)
{
    if (!join(dst, len, mount, group, NULL))
        return false;
    if (exists(dst))
        return true;
    return join(dst, len, mount, "", NULL) && exists(dst);
}

static bool read_cg_file(const char *dir, const char *name, uint64_t *v, bool *unlimited)
{
    char path[PATH_MAX], text[256];
    return join(path, sizeof path, dir, "/", name) && read_text(path, text, sizeof text) == 0 &&
           pressure_parse_cg_value(text, v, unlimited) == 0;
}

/* The v2 mount: /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on
 * a hybrid one; cgroup.controllers exists only at a v2 root. */
static bool v2_mount(const char *root, char *dst, size_t len)
{
    static const char *const cands[] = {"/sys/fs/cgroup", "/sys/fs/cgroup/unified"};
    char probe[PATH_MAX];
    for (size_t i = 0; i < sizeof cands / sizeof cands[0]; i++)
        if (join(probe, sizeof probe, root, cands[i], "/cgroup.controllers") && exists(probe))
            return join(dst, len, root, cands[i], NULL);
    return false;
}

static void sample_cgroup(const char *root, struct pressure_reading *r)
{
    char path[PATH_MAX], text[TEXT_MAX], v1[PATH_MAX], v2[PATH_MAX], mount[PATH_MAX], dir[PATH_MAX];
    if (!join(path, sizeof path, root, "/proc/self/cgroup", NULL) || read_text(path, text, sizeof text))
        return;
    int found = pressure_parse_proc_cgroup(text, v1, sizeof v1, v2, sizeof v2);
    if (found < 0)
        return;

    if ((found & 2) && v2_mount(root, mount, sizeof mount) && strcmp(v2, "/") != 0 &&
        group_dir(dir, sizeof dir, mount, v2)) {
        /* At the root of the hierarchy memory.pressure is the system's PSI
         * again, and memory.current / memory.max do not exist. */
        if (join(path, sizeof path, dir, "/memory.pressure", NULL) && read_text(path, text, sizeof text) == 0)
            pressure_parse_psi(text, &r->cg_psi);
        uint64_t usage, limit;
        bool unl_u, unl_l;
        if (read_cg_file(dir, "memory.current", &usage, &unl_u)) {
            r->cgroup_version = 2;
            r->have_cg_usage = true;
            r->cg_usage = usage;
            if (read_cg_file(dir, "memory.max", &limit, &unl_l) && !unl_l) {
                r->have_cg_limit = true;
                r->cg_limit = limit;
            }
            return;
        }
    }
    if ((found & 1) && join(mount, sizeof mount, root, "/sys/fs/cgroup/memory", NULL) &&
        group_dir(dir, sizeof dir, mount, v1)) {
        uint64_t usage, limit;
        bool unl_u, unl_l;
        if (read_cg_file(dir, "memory.usage_in_bytes", &usage, &unl_u)) {
            r->cgroup_version = 1;
            r->have_cg_usage = true;
            r->cg_usage = usage;
            if (read_cg_file(dir, "memory.limit_in_bytes", &limit, &unl_l) && !unl_l) {
                r->have_cg_limit = true;
                r->cg_limit = limit;
            }
        }
    }
}

int pressure_sample(const char *root, struct pressure_reading *r)
{
    memset(r, 0, sizeof *r);
    if (!root)
        root = "";
    char path[PATH_MAX], text[TEXT_MAX];
    if (join(path, sizeof path, root, "/proc/pressure/memory", NULL) && read_text(path, text, sizeof text) == 0)
        pressure_parse_psi(text, &r->psi);
    if (join(path, sizeof path, root, "/proc/meminfo", NULL) && read_text(path, text, sizeof text) == 0)
        r->have_meminfo = pressure_parse_meminfo(text, &r->mem_total, &r->mem_available) == 0;
    sample_cgroup(root, r);
    return 0;
}

/* --- budget -------------------------------------------------------------------------- */

void pressure_account(struct pressure_reading *r, uint64_t budget_bytes)
{
    r->budget_src = PRESSURE_BUDGET_NONE;
    r->used_src = PRESSURE_USED_NONE;
    r->budget = r->used = 0;
    r->have_ratio = false;
    r->ratio = 0;

    bool cg_binding = r->have_cg_limit && r->have_cg_usage && r->cg_limit > 0 &&
                      (!r->have_meminfo || r->cg_limit < r->mem_total);
    if (budget_bytes) {
        r->budget_src = PRESSURE_BUDGET_CONFIG;
        r->budget = budget_bytes;
        r->used_src = PRESSURE_USED_RSS;
        r->used = r->workers_rss + r->others_rss;
    } else if (cg_binding) {
        r->budget_src = PRESSURE_BUDGET_CGROUP;
        r->budget = r->cg_limit;
        r->used_src = PRESSURE_USED_CGROUP;
        r->used = r->cg_usage;
    } else if (r->have_meminfo) {
        r->budget_src = PRESSURE_BUDGET_MEMTOTAL;
        r->budget = r->mem_total;
        r->used_src = PRESSURE_USED_MEMINFO;
        r->used = r->mem_total - r->mem_available;
    }
    if (r->budget) {
        r->have_ratio = true;
        r->ratio = (double)r->used / (double)r->budget;
    }
}

/* --- level ----------------------------------------------------------------------------- */

void pressure_thresholds_from_config(const struct rill_config *c, struct pressure_thresholds *th)
{
    memset(th, 0, sizeof *th);
    th->budget_bytes = c->memory_budget_bytes > 0 ? (uint64_t)c->memory_budget_bytes : 0;
    th->warning = c->pressure_warning;
    th->critical = c->pressure_critical;
    th->emergency = c->pressure_emergency;
    th->hysteresis = c->pressure_hysteresis;
    th->psi_warning = c->psi_warning;
    th->psi_critical = c->psi_critical;
    th->psi_emergency = c->psi_emergency;
    th->psi_hysteresis = fmin(0.5, 4 * c->pressure_hysteresis);
}

static bool in_range(double v, double lo, double hi) { return isfinite(v) && v >= lo && v <= hi; }

int pressure_init(struct pressure_monitor *m, const struct pressure_thresholds *th)
{
    memset(m, 0, sizeof *m);
    if (!in_range(th->warning, 0, 1) || !in_range(th->critical, 0, 1) || !in_range(th->emergency, 0, 1) ||
        !in_range(th->hysteresis, 0, 0.5) || !in_range(th->psi_warning, 0, 100) ||
        !in_range(th->psi_critical, 0, 100) || !in_range(th->psi_emergency, 0, 100) ||
        !in_range(th->psi_hysteresis, 0, 0.99))
        return RILL_E_BAD_CONFIG;
    /* enabled ratio thresholds must rise with the level */
    double prev = 0;
    const double ratio[3] = {th->warning, th->critical, th->emergency};
    for (int i = 0; i < 3; i++) {
        if (ratio[i] <= 0)
            continue;
        if (ratio[i] < prev)
            return RILL_E_BAD_CONFIG;
        prev = ratio[i];
    }
    if (th->psi_warning > 0 && th->psi_critical > 0 && th->psi_critical < th->psi_warning)
        return RILL_E_BAD_CONFIG;
    m->th = *th;
    m->level = PRESSURE_NORMAL;
    return 0;
}

const char *pressure_budget_src_name(enum pressure_budget_src s)
{
    switch (s) {
    case PRESSURE_BUDGET_CONFIG: return "configured";
    case PRESSURE_BUDGET_CGROUP: return "cgroup";
    case PRESSURE_BUDGET_MEMTOTAL: return "MemTotal";
    default: return "none";
    }
}

char *pressure_fmt_bytes(char *buf, size_t len, uint64_t b)
{
    const double gib = 1024.0 * 1024 * 1024, mib = 1024.0 * 1024;
    if (b >= (1ull << 30))
        snprintf(buf, len, "%.1f GiB", (double)b / gib);
    else if (b >= (10ull << 20))
        snprintf(buf, len, "%.0f MiB", (double)b / mib);
    else if (b >= (1ull << 20))
        snprintf(buf, len, "%.1f MiB", (double)b / mib);
    else if (b >= 1024)
        snprintf(buf, len, "%.0f KiB", (double)b / 1024);
    else
        snprintf(buf, len, "%llu B", (unsigned long long)b);
    return buf;
}

/* The signals of one reading, reduced to what the level rule looks at. */
struct signals {
    bool have_ratio, have_some, have_full;
    double ratio, some, full;
    bool some_cg, full_cg;        /* the worst PSI value came from the cgroup */
};

static struct signals signals_of(const struct pressure_reading *r)
{
    struct signals s = {.have_ratio = r->have_ratio, .ratio = r->ratio};
    const struct pressure_psi *src[2] = {&r->psi, &r->cg_psi};
    for (int i = 0; i < 2; i++) {
        if (!src[i]->ok)
            continue;
        if (!s.have_some || src[i]->some_avg10 > s.some) {
            s.some = src[i]->some_avg10;
            s.some_cg = i == 1;
        }
        s.have_some = true;
        if (src[i]->has_full && (!s.have_full || src[i]->full_avg10 > s.full)) {
            s.full = src[i]->full_avg10;
            s.full_cg = i == 1;
        }
        s.have_full |= src[i]->has_full;
    }
    return s;
}

/* Which signals reach `level`'s threshold (entry when `release` is false,
 * the lowered one otherwise).  Bit 0: ratio, bit 1: PSI. */
static unsigned reaches(const struct pressure_thresholds *th, const struct signals *s, int level, bool release)
{
    if (level == PRESSURE_NORMAL)
        return 3;
    const double ratio_t[] = {0, th->warning, th->critical, th->emergency};
    const double psi_t[] = {0, th->psi_warning, th->psi_critical, th->psi_emergency};
    unsigned hit = 0;
    double rt = ratio_t[level];
    if (s->have_ratio && rt > 0 && s->ratio >= (release ? rt - th->hysteresis : rt))
        hit |= 1;
    double pt = psi_t[level];
    bool have = level == PRESSURE_EMERGENCY ? s->have_full : s->have_some;
    double v = level == PRESSURE_EMERGENCY ? s->full : s->some;
    if (have && pt > 0 && v >= (release ? pt * (1 - th->psi_hysteresis) : pt))
        hit |= 2;
    return hit;
}

static int highest(const struct pressure_thresholds *th, const struct signals *s, bool release)
{
    for (int l = PRESSURE_EMERGENCY; l > PRESSURE_NORMAL; l--)
        if (reaches(th, s, l, release))
            return l;
    return PRESSURE_NORMAL;
}

static void ratio_text(char *buf, size_t len, const struct pressure_reading *r)
{
    char u[32], b[32];
    snprintf(buf, len, "used %s of %s %s budget (%.0f%%)", pressure_fmt_bytes(u, sizeof u, r->used),
             pressure_fmt_bytes(b, sizeof b, r->budget), pressure_budget_src_name(r->budget_src),
             r->ratio * 100);
}

/* "used 3.1 GiB of 4.0 GiB cgroup budget (78%) >= warning 75%; PSI some avg10 12.0% >= warning 10%" */
static void reason_rise(char *buf, size_t len, const struct pressure_thresholds *th, const struct pressure_reading *r,
                        const struct signals *s, int level)
{
    const double ratio_t[] = {0, th->warning, th->critical, th->emergency};
    const double psi_t[] = {0, th->psi_warning, th->psi_critical, th->psi_emergency};
    unsigned hit = reaches(th, s, level, false);
    const char *name = pressure_level_name(level);
    char a[112] = "", p[96] = "";
    if (hit & 1) {
        char t[80];
        ratio_text(t, sizeof t, r);
        snprintf(a, sizeof a, "%s >= %s %.0f%%", t, name, ratio_t[level] * 100);
    }
    if (hit & 2) {
        bool full = level == PRESSURE_EMERGENCY;
        snprintf(p, sizeof p, "%sPSI %s avg10 %.1f%% >= %s %.0f%%", (full ? s->full_cg : s->some_cg) ? "cgroup " : "",
                 full ? "full" : "some", full ? s->full : s->some, name, psi_t[level]);
    }
    snprintf(buf, len, "%s%s%s", a, a[0] && p[0] ? "; " : "", p);
}

/* Falling to `level`: every signal is below the release threshold of the
 * level above it; name them. */
static void reason_fall(char *buf, size_t len, const struct pressure_thresholds *th, const struct pressure_reading *r,
                        const struct signals *s, int level)
{
    int above = level + 1;
    const double ratio_t[] = {0, th->warning, th->critical, th->emergency};
    const double psi_t[] = {0, th->psi_warning, th->psi_critical, th->psi_emergency};
    const char *name = pressure_level_name(above);
    char a[112] = "", p[96] = "";
    if (s->have_ratio && ratio_t[above] > 0) {
        char t[80];
        ratio_text(t, sizeof t, r);
        snprintf(a, sizeof a, "%s < %s %.0f%% - %.0f%%", t, name, ratio_t[above] * 100, th->hysteresis * 100);
    }
    bool full = above == PRESSURE_EMERGENCY;
    if ((full ? s->have_full : s->have_some) && psi_t[above] > 0)
        snprintf(p, sizeof p, "PSI %s avg10 %.1f%% < %s %.1f%%", full ? "full" : "some", full ? s->full : s->some,
                 name, psi_t[above] * (1 - th->psi_hysteresis));
    snprintf(buf, len, "%s%s%s", a, a[0] && p[0] ? "; " : "", p);
}

bool pressure_update(struct pressure_monitor *m, struct pressure_reading *r)
{
    pressure_account(r, m->th.budget_bytes);
    m->last = *r;
    struct signals s = signals_of(r);
    if (!s.have_ratio && !s.have_some && !s.have_full)
        return false; /* blind: keep what we knew rather than fall to normal */

    int cur = (int)m->level;
    int rise = highest(&m->th, &s, false);
    int next;
    if (rise > cur) {
        next = rise;
        reason_rise(m->reason, sizeof m->reason, &m->th, r, &s, next);
    } else {
        /* The release thresholds are at or below the entry ones, so `hold`
         * >= `rise`: falling lands at the highest level still held. */
        int hold = highest(&m->th, &s, true);
        if (hold >= cur)
            return false;
        next = hold;
        reason_fall(m->reason, sizeof m->reason, &m->th, r, &s, next);
    }
    m->level = (enum pressure_level)next;
    m->transitions++;
    m->entered[next]++;
    return true;
}

/* --- PSI trigger ------------------------------------------------------------------------ */

int pressure_trigger_open(const char *path, uint32_t stall_us, uint32_t window_us, int *fd)
{
    *fd = -1;
    if (stall_us == 0 || stall_us >= window_us || window_us < 500000 || window_us > 10000000)
        return RILL_E_BAD_CONFIG;
    char auto_path[PATH_MAX];
    if (!path) {
        path = "/proc/pressure/memory";
        char text[TEXT_MAX], v2[PATH_MAX], mount[PATH_MAX], dir[PATH_MAX];
        if (read_text("/proc/self/cgroup", text, sizeof text) == 0 &&
            (pressure_parse_proc_cgroup(text, NULL, 0, v2, sizeof v2) & 2) && strcmp(v2, "/") != 0 &&
            v2_mount("", mount, sizeof mount) && join(dir, sizeof dir, mount, v2, NULL) &&
            join(auto_path, sizeof auto_path, dir, "/memory.pressure", NULL) && exists(auto_path))
            path = auto_path;
    }
    int f = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (f < 0) {
        int e = errno;
        rlog_info("PSI trigger: cannot open %s: %s", path, strerror(e));
        return e == ENOENT || e == EOPNOTSUPP ? RILL_E_UNSUPPORTED : RILL_E_IO;
    }
    char trig[64];
    int n = snprintf(trig, sizeof trig, "some %u %u", stall_us, window_us);
    /* The kernel wants the terminating NUL written too. */
    if (write(f, trig, (size_t)n + 1) < 0) {
        int e = errno;
        close(f);
        rlog_info("PSI trigger \"%s\" on %s refused: %s", trig, path, strerror(e));
        return e == EINVAL || e == EOPNOTSUPP || e == EBUSY ? RILL_E_UNSUPPORTED : RILL_E_IO;
    }
    *fd = f;
    return 0;
}
