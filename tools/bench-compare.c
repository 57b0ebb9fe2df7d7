/* bench-compare — compare benchmark results with a baseline and flag
 * regressions.
 *
 *   bench-compare [--threshold PCT] [--tail-threshold PCT] [--fail-on-regression]
 *                 BASELINE CURRENT
 *
 * BASELINE and CURRENT are two directories (what `make bench-save` keeps in
 * build/bench-baseline/ and what the benchmarks write to build/bench/) or two
 * files of the same kind.  Kinds, told apart by their content:
 *   ring.json    ringbench: records_per_s (16 B, batch 64), wake-up p50/p99
 *   engine.json  rill-bench-engine: rows by model/dtype/batch, decode and
 *                prefill tokens/s
 *   fanout.json  bench-fanout.sh: rows by streams, tokens/s, added latency
 *                p50/p99, gateway CPU and RSS, errors; RSS per idle connection
 *   a --save file of rill-bench: its figures as they are named in it
 * In directory mode the three names above are compared, then every other
 * *.json of the baseline that is a rill-bench --save file.
 *
 * Each figure prints its baseline median, the current one, the change in %,
 * the run-to-run noise of both and a verdict: REGRESSION or improved when the
 * change goes the figure's bad or good way by more than
 *     limit = max(threshold, noise of the baseline, noise of the current run)
 * else `~`.  The threshold is --threshold (default 10%) for throughputs and
 * medians, --tail-threshold (default twice --threshold) for p95/p99 figures,
 * whose run-to-run swing is larger.
 *
 * Noise is the relative range of a figure's runs, (max - min) / |median|,
 * when the file holds them: rill-bench --save files (every run), fanout.json
 * (runs[] by streams), ring.json and engine.json rows when they carry
 * repeats (tools/bench-standard.sh runs those benchmarks several times and
 * keeps each invocation's figures).  Without repeats, engine decode rows
 * fall back to the range of their timed windows (decode_runs_tokens_per_s,
 * wider than the run-to-run range of the median), and figures with only a
 * median (ringbench's own ring.json, engine prefill) show "-": the threshold
 * alone decides, and the note under the table says so.
 *
 * Exit status: 0; 1 when a regression was flagged and --fail-on-regression
 * was given; 2 on bad arguments or unreadable input (a missing baseline
 * directory says "run make bench-save first").
 */
#include "common/err.h"
#include "tools/lib/benchfig.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Other processes' load (cores) that differs this much between the two
 * sides earns a warning: on a shared machine it moves every figure. */
#define BUSY_DIFF_CORES 0.3

enum better { HIGHER = 1, LOWER = -1 };
enum fkind { FK_MEDIAN, FK_TAIL, FK_COUNT };
enum verdict { V_SAME, V_REGRESSION, V_IMPROVED, V_MISSING, V_NEW };
enum file_kind { FILE_UNKNOWN, FILE_RING, FILE_ENGINE, FILE_FANOUT, FILE_SAVE };

struct cmp_opts {
    double threshold, tail_threshold; /* % */
    bool fail_on_regression;
};

/* One figure of a table: both medians and their relative noise (NAN: not
 * measured). */
struct fig {
    char name[128];
    int better;
    enum fkind kind;
    bool has_base, has_cur;
    double base, cur;
    double base_noise, cur_noise;
};

struct table {
    struct fig *figs;
    size_t n, cap;
    char note[512];                  /* what the noise column rests on, printed under the table */
};

struct tally {
    unsigned figures, regressions, improved, same, missing, added;
    unsigned files;
};

/* --- small things ----------------------------------------------------------------------- */

static const cJSON *jget(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *s = jget(o, k);
    return cJSON_IsString(s) ? s->valuestring : NULL;
}

static int read_text(const char *path, char **out)
{
    *out = NULL;
    FILE *f = fopen(path, "r");
    if (!f)
        return RILL_E_IO;
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    int rc = buf ? 0 : RILL_E_NOMEM;
    while (!rc) {
        if (len + 1 == cap) {
            char *p = realloc(buf, cap * 2);
            if (!p) {
                rc = RILL_E_NOMEM;
                break;
            }
            buf = p;
            cap *= 2;
        }
        size_t k = fread(buf + len, 1, cap - 1 - len, f);
        len += k;
        if (k == 0) {
            if (ferror(f))
                rc = RILL_E_IO;
            break;
        }
    }
    fclose(f);
    if (rc) {
        free(buf);
        return rc;
    }
    buf[len] = 0;
    *out = buf;
    return 0;
}

static int load_json(const char *path, cJSON **out)
{
    char *text;
    *out = NULL;
    int rc = read_text(path, &text);
    if (rc) {
        fprintf(stderr, "bench-compare: cannot read %s: %s\n", path, strerror(errno));
        return rc;
    }
    *out = cJSON_Parse(text);
    free(text);
    if (!*out) {
        fprintf(stderr, "bench-compare: %s is not JSON\n", path);
        return RILL_E_BAD_FORMAT;
    }
    return 0;
}

static enum file_kind kind_of(const cJSON *j)
{
    if (cJSON_IsArray(j)) {
        const cJSON *r = cJSON_GetArrayItem(j, 0);
        return r && jstr(r, "model") && jstr(r, "dtype") && cJSON_IsNumber(jget(r, "batch")) ? FILE_ENGINE
                                                                                            : FILE_UNKNOWN;
    }
    if (!cJSON_IsObject(j))
        return FILE_UNKNOWN;
    if (cJSON_IsNumber(jget(j, "rill_bench_save")))
        return FILE_SAVE;
    if (cJSON_IsNumber(jget(j, "records_per_s")) && cJSON_IsNumber(jget(j, "wake_p99_us")))
        return FILE_RING;
    if (cJSON_IsArray(jget(j, "rows")))
        return FILE_FANOUT;
    return FILE_UNKNOWN;
}

static const char *kind_name(enum file_kind k)
{
    static const char *names[] = {"unknown", "ring", "engine", "fan-out", "rill-bench --save"};
    return names[k];
}

/* --- tables ----------------------------------------------------------------------------- */

static struct fig *table_add(struct table *t, int better, enum fkind kind, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static struct fig *table_add(struct table *t, int better, enum fkind kind, const char *fmt, ...)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 32;
        struct fig *p = realloc(t->figs, cap * sizeof *p);
        if (!p)
            return NULL;
        t->figs = p;
        t->cap = cap;
    }
    struct fig *f = &t->figs[t->n++];
    memset(f, 0, sizeof *f);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->name, sizeof f->name, fmt, ap);
    va_end(ap);
    f->better = better;
    f->kind = kind;
    f->base = f->cur = f->base_noise = f->cur_noise = NAN;
    return f;
}

/* The figure named `name` in t, or NULL. */
static struct fig *table_find(struct table *t, const char *name)
{
    for (size_t i = 0; i < t->n; i++)
        if (!strcmp(t->figs[i].name, name))
            return &t->figs[i];
    return NULL;
}

/* Set one side (cur = false: the baseline) of a figure; a NAN value leaves
 * that side absent. */
static void fig_set(struct fig *f, bool cur, double v, double noise)
{
    if (!f || isnan(v))
        return;
    if (cur) {
        f->has_cur = true;
        f->cur = v;
        f->cur_noise = noise;
    } else {
        f->has_base = true;
        f->base = v;
        f->base_noise = noise;
    }
}

static double limit_of(const struct fig *f, const struct cmp_opts *o)
{
    double lim = f->kind == FK_TAIL ? o->tail_threshold : o->threshold;
    if (!isnan(f->base_noise))
        lim = fmax(lim, 100 * f->base_noise);
    if (!isnan(f->cur_noise))
        lim = fmax(lim, 100 * f->cur_noise);
    return lim;
}

static enum verdict judge(const struct fig *f, const struct cmp_opts *o, double *change)
{
    *change = NAN;
    if (!f->has_base)
        return V_NEW;
    if (!f->has_cur)
        return V_MISSING;
    if (f->base != 0)
        *change = 100 * (f->cur - f->base) / fabs(f->base);
    else
        *change = f->cur == 0 ? 0 : copysign(INFINITY, f->cur); /* errors from none: always beyond */
    if (fabs(*change) <= limit_of(f, o))
        return V_SAME;
    bool worse = (*change > 0) == (f->better == LOWER);
    return worse ? V_REGRESSION : V_IMPROVED;
}

static void fmt_pct(char *buf, size_t n, double v)
{
    if (isnan(v))
        snprintf(buf, n, "-");
    else
        snprintf(buf, n, "%.1f%%", 100 * v);
}

static void table_print(const struct table *t, const struct cmp_opts *o, struct tally *ty)
{
    static const char *vname[] = {"~", "REGRESSION", "improved", "missing now", "new"};
    int w = 6;
    for (size_t i = 0; i < t->n; i++)
        if ((int)strlen(t->figs[i].name) > w)
            w = (int)strlen(t->figs[i].name);
    printf("  %-*s %12s %12s %9s  %-15s %6s  %s\n", w, "figure", "baseline", "now", "change", "noise base/now",
           "limit", "verdict");
    for (size_t i = 0; i < t->n; i++) {
        const struct fig *f = &t->figs[i];
        double change;
        enum verdict v = judge(f, o, &change);
        char b[32], c[32], ch[32], nb[16], nc[16], noise[40], lim[16];
        benchfig_fmt(b, sizeof b, f->has_base ? f->base : NAN, f->kind == FK_COUNT);
        benchfig_fmt(c, sizeof c, f->has_cur ? f->cur : NAN, f->kind == FK_COUNT);
        if (isnan(change))
            snprintf(ch, sizeof ch, "-");
        else if (isinf(change))
            snprintf(ch, sizeof ch, "from 0");
        else
            snprintf(ch, sizeof ch, "%+.1f%%", change);
        fmt_pct(nb, sizeof nb, f->base_noise);
        fmt_pct(nc, sizeof nc, f->cur_noise);
        snprintf(noise, sizeof noise, "%s/%s", nb, nc);
        if (v == V_NEW || v == V_MISSING)
            snprintf(lim, sizeof lim, "-");
        else
            snprintf(lim, sizeof lim, "%.0f%%", limit_of(f, o));
        printf("  %-*s %12s %12s %9s  %-15s %6s  %s\n", w, f->name, b, c, ch, noise, lim, vname[v]);
        ty->figures++;
        switch (v) {
        case V_SAME: ty->same++; break;
        case V_REGRESSION: ty->regressions++; break;
        case V_IMPROVED: ty->improved++; break;
        case V_MISSING: ty->missing++; break;
        case V_NEW: ty->added++; break;
        }
    }
    if (t->note[0])
        printf("  (%s)\n", t->note);
    ty->files++;
}

static void table_free(struct table *t)
{
    free(t->figs);
    memset(t, 0, sizeof *t);
}

/* --- metadata ----------------------------------------------------------------------------- */

/* "2024-05-01T10:00:00Z, commit 09b3dfb (dirty), 2 x AMD EPYC" from a meta
 * object (rill-bench --save's, or meta.json of a saved directory). */
static void meta_line(const cJSON *m, char *buf, size_t n)
{
    if (!cJSON_IsObject(m)) {
        snprintf(buf, n, "no metadata");
        return;
    }
    const cJSON *mach = jget(m, "machine");
    const char *date = jstr(m, "date"), *commit = jstr(m, "commit"), *cpu = jstr(mach, "cpu_model");
    double nproc = benchfig_num(mach, "nproc");
    snprintf(buf, n, "%s, commit %s%s, %.0f x %s", date ? date : "date unknown", commit ? commit : "unknown",
             cJSON_IsTrue(jget(m, "dirty")) ? " (uncommitted changes)" : "", isnan(nproc) ? 0 : nproc,
             cpu ? cpu : "unknown CPU");
}

static void print_meta(const cJSON *base, const cJSON *cur)
{
    char b[512], c[512];
    meta_line(base, b, sizeof b);
    meta_line(cur, c, sizeof c);
    printf("  baseline: %s\n  now:      %s\n", b, c);
    const cJSON *mb = jget(base, "machine"), *mc = jget(cur, "machine");
    const char *cb = jstr(mb, "cpu_model"), *cc = jstr(mc, "cpu_model");
    double nb = benchfig_num(mb, "nproc"), nc = benchfig_num(mc, "nproc");
    if ((cb && cc && strcmp(cb, cc)) || (!isnan(nb) && !isnan(nc) && nb != nc))
        printf("  warning: different machines: the figures are not comparable\n");
}

/* --- the kinds -------------------------------------------------------------------------------- */

/* ring.json: the headline figures, with noise when bench-standard.sh added
 * the single runs as repeats[]. */
static int cmp_ring(const cJSON *base, const cJSON *cur, struct table *t)
{
    static const struct {
        const char *key, *label;
        int better;
        enum fkind kind;
    } specs[] = {
        {"records_per_s", "records/s (16 B, batch 64)", HIGHER, FK_MEDIAN},
        {"wake_p50_us", "wake-up p50 us", LOWER, FK_MEDIAN},
        {"wake_p99_us", "wake-up p99 us", LOWER, FK_TAIL},
    };
    bool unmeasured = false;
    for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) {
        struct fig *f = table_add(t, specs[i].better, specs[i].kind, "%s", specs[i].label);
        if (!f)
            return RILL_E_NOMEM;
        for (int side = 0; side < 2; side++) {
            const cJSON *j = side ? cur : base;
            double v = benchfig_num(j, specs[i].key), noise = NAN, vals[64];
            size_t n = 0;
            const cJSON *r;
            cJSON_ArrayForEach(r, jget(j, "repeats"))
            {
                double x = benchfig_num(r, specs[i].key);
                if (!isnan(x) && n < 64)
                    vals[n++] = x;
            }
            if (n >= 2) {
                double med;
                benchfig_median_noise(vals, n, &med, &noise);
            } else {
                unmeasured = true;
            }
            fig_set(f, side, v, noise);
        }
    }
    if (unmeasured)
        snprintf(t->note, sizeof t->note,
                 "noise not measured where '-': ringbench writes only medians; the threshold alone decides");
    return 0;
}

/* The relative range of the numbers in arr, NAN below two. */
static double noise_of(const cJSON *arr)
{
    double vals[256], med, noise;
    size_t n = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, arr)
    {
        if (cJSON_IsNumber(x) && n < 256)
            vals[n++] = x->valuedouble;
    }
    benchfig_median_noise(vals, n, &med, &noise);
    return noise;
}

/* engine.json: rows by model/dtype/batch.  Noise: the row's repeats{} (one
 * value per invocation) when present; else for decode the range of its
 * timed windows (or decode_min/max fields, should a later engine.json carry
 * them), and nothing for prefill. */
static int engine_side(const cJSON *rows, bool cur, struct table *t, bool *quick, bool *windows_only,
                       bool *unmeasured, double *others)
{
    const cJSON *r;
    cJSON_ArrayForEach(r, rows)
    {
        const char *model = jstr(r, "model"), *dtype = jstr(r, "dtype");
        double batch = benchfig_num(r, "batch");
        if (!model || !dtype || isnan(batch))
            continue;
        char name[128];
        snprintf(name, sizeof name, "%s %s batch %.0f decode tokens/s", model, dtype, batch);
        struct fig *f = table_find(t, name);
        if (!f && !(f = table_add(t, HIGHER, FK_MEDIAN, "%s", name)))
            return RILL_E_NOMEM;
        const cJSON *reps = jget(r, "repeats");
        double v = benchfig_num(r, "decode_tokens_per_s");
        double noise = noise_of(jget(reps, "decode_tokens_per_s"));
        if (isnan(noise)) {
            double mn = benchfig_num(r, "decode_min_tokens_per_s"), mx = benchfig_num(r, "decode_max_tokens_per_s");
            noise = !isnan(mn) && !isnan(mx) && v != 0 ? (mx - mn) / fabs(v)
                                                       : noise_of(jget(r, "decode_runs_tokens_per_s"));
            *windows_only |= !isnan(noise);
            *unmeasured |= isnan(noise);
        }
        fig_set(f, cur, v, noise);
        snprintf(name, sizeof name, "%s %s batch %.0f prefill tokens/s", model, dtype, batch);
        if (!(f = table_find(t, name)) && !(f = table_add(t, HIGHER, FK_MEDIAN, "%s", name)))
            return RILL_E_NOMEM;
        noise = noise_of(jget(reps, "prefill_tokens_per_s"));
        *unmeasured |= isnan(noise);
        fig_set(f, cur, benchfig_num(r, "prefill_tokens_per_s"), noise);
        *quick |= cJSON_IsTrue(jget(r, "quick"));
        double o = benchfig_num(r, "other_processes_cores");
        if (!isnan(o))
            *others = isnan(*others) ? o : fmax(*others, o);
    }
    return 0;
}

static int cmp_engine(const cJSON *base, const cJSON *cur, struct table *t)
{
    bool qb = false, qc = false, windows = false, unmeasured = false;
    double ob = NAN, oc = NAN;
    int rc = engine_side(base, false, t, &qb, &windows, &unmeasured, &ob);
    rc = rc ? rc : engine_side(cur, true, t, &qc, &windows, &unmeasured, &oc);
    if (rc)
        return rc;
    if (!isnan(ob) || !isnan(oc))
        printf("  other processes took up to %.2f cores during the baseline's rows, %.2f now\n", ob, oc);
    if (fabs(ob - oc) > BUSY_DIFF_CORES)
        printf("  warning: the machine was busier in one run: changes may be the machine's, not the code's\n");
    const cJSON *rb = cJSON_GetArrayItem(base, 0), *rcur = cJSON_GetArrayItem(cur, 0);
    if (qb != qc)
        printf("  warning: one of the engine runs is --quick, the other is not\n");
    if (benchfig_num(rb, "threads") != benchfig_num(rcur, "threads"))
        printf("  warning: engine threads differ (%.0f then %.0f)\n", benchfig_num(rb, "threads"), benchfig_num(rcur, "threads"));
    snprintf(t->note, sizeof t->note, "noise: range of the invocations of each row%s%s",
             windows ? "; decode without repeats: range of its timed windows" : "",
             unmeasured ? "; '-': median only, the threshold alone decides" : "");
    return 0;
}

/* fanout.json: rows by streams; noise from the single runs in runs[] of the
 * same concurrency. */
static int fanout_side(const cJSON *j, bool cur, struct table *t, bool *unmeasured, double *others)
{
    static const struct {
        const char *row_key, *run_path, *label;
        int better;
        enum fkind kind;
    } specs[] = {
        {"tokens_per_s", "tokens_per_s", "tokens/s", HIGHER, FK_MEDIAN},
        {"added_latency_p50_ms", "added_latency_ms.p50", "added latency p50 ms", LOWER, FK_MEDIAN},
        {"added_latency_p99_ms", "added_latency_ms.p99", "added latency p99 ms", LOWER, FK_TAIL},
        {"gateway_cpu_pct", "gateway.cpu_pct", "gateway CPU %", LOWER, FK_MEDIAN},
        {"gateway_rss_kb", "gateway.rss_kb", "gateway RSS kB", LOWER, FK_MEDIAN},
        {"errors", NULL, "errors (sum of runs)", LOWER, FK_COUNT},
    };
    const cJSON *row;
    cJSON_ArrayForEach(row, jget(j, "rows"))
    {
        double streams = benchfig_num(row, "streams");
        if (isnan(streams))
            continue;
        for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) {
            char name[128];
            snprintf(name, sizeof name, "%5.0f streams: %s", streams, specs[i].label);
            struct fig *f = table_find(t, name);
            if (!f && !(f = table_add(t, specs[i].better, specs[i].kind, "%s", name)))
                return RILL_E_NOMEM;
            double vals[64], med, noise = NAN;
            size_t n = 0;
            const cJSON *run;
            if (specs[i].run_path) {
                cJSON_ArrayForEach(run, jget(j, "runs"))
                {
                    double x = benchfig_num(run, specs[i].run_path);
                    if (benchfig_num(run, "concurrency") == streams && !isnan(x) && n < 64)
                        vals[n++] = x;
                }
                benchfig_median_noise(vals, n, &med, &noise);
                if (n < 2)
                    *unmeasured = true;
            }
            fig_set(f, cur, benchfig_num(row, specs[i].row_key), noise);
        }
    }
    double vals[64], med, noise;
    size_t n = 0;
    cJSON_ArrayForEach(row, jget(j, "rows"))
    {
        double x = benchfig_num(row, "other_cpu_pct");
        if (!isnan(x) && n < 64)
            vals[n++] = x;
    }
    benchfig_median_noise(vals, n, &med, &noise); /* sorts */
    *others = n ? vals[n - 1] : NAN;
    struct fig *f = table_find(t, "idle connections: gateway RSS per connection kB");
    if (!f && !(f = table_add(t, LOWER, FK_MEDIAN, "idle connections: gateway RSS per connection kB")))
        return RILL_E_NOMEM;
    fig_set(f, cur, benchfig_num(j, "idle_connections.gateway_rss_per_idle_conn_kb"), NAN);
    return 0;
}

static int cmp_fanout(const cJSON *base, const cJSON *cur, struct table *t)
{
    bool unmeasured = false;
    double ob = NAN, oc = NAN;
    int rc = fanout_side(base, false, t, &unmeasured, &ob);
    rc = rc ? rc : fanout_side(cur, true, t, &unmeasured, &oc);
    if (rc)
        return rc;
    if (!isnan(ob) || !isnan(oc))
        printf("  other processes took up to %.0f%% of a core during the baseline's rows, %.0f%% now\n", ob, oc);
    if (fabs(ob - oc) > 100 * BUSY_DIFF_CORES)
        printf("  warning: the machine was busier in one run: changes may be the machine's, not the code's\n");
    const char *pb = jstr(jget(base, "setup"), "protocol"), *pc = jstr(jget(cur, "setup"), "protocol");
    if (pb && pc && strcmp(pb, pc))
        printf("  warning: protocols differ (%s then %s)\n", pb, pc);
    snprintf(t->note, sizeof t->note,
             "noise: range of the runs of each row%s; errors and RSS per idle connection: the threshold alone",
             unmeasured ? " ('-': fewer than 2 runs)" : "");
    return 0;
}

/* A rill-bench --save file: figures named in it, with their runs. */
static int save_side(const cJSON *j, bool cur, struct table *t)
{
    const cJSON *x;
    cJSON_ArrayForEach(x, jget(j, "figures"))
    {
        const char *label = jstr(x, "label"), *name = jstr(x, "name"), *better = jstr(x, "better"),
                   *kind = jstr(x, "kind"), *unit = jstr(x, "unit");
        if (!name)
            continue;
        char full[128];
        snprintf(full, sizeof full, "%s%s%s", label ? label : name, unit && *unit ? " " : "", unit ? unit : "");
        struct fig *f = table_find(t, full);
        enum fkind k = kind && !strcmp(kind, "tail") ? FK_TAIL : kind && !strcmp(kind, "count") ? FK_COUNT : FK_MEDIAN;
        if (!f && !(f = table_add(t, better && !strcmp(better, "higher") ? HIGHER : LOWER, k, "%s", full)))
            return RILL_E_NOMEM;
        double vals[256], med, noise;
        size_t n = 0;
        const cJSON *v;
        cJSON_ArrayForEach(v, jget(x, "runs"))
        {
            if (cJSON_IsNumber(v) && n < 256)
                vals[n++] = v->valuedouble;
        }
        benchfig_median_noise(vals, n, &med, &noise);
        double m = benchfig_num(x, "median");
        fig_set(f, cur, isnan(m) ? med : m, noise);
    }
    return 0;
}

static int cmp_save(const cJSON *base, const cJSON *cur, struct table *t)
{
    int rc = save_side(base, false, t);
    rc = rc ? rc : save_side(cur, true, t);
    if (rc)
        return rc;
    const cJSON *mb = jget(base, "meta"), *mc = jget(cur, "meta");
    print_meta(mb, mc);
    /* The load itself, from the first run of each: a different load makes
     * different figures, whatever the code does. */
    static const char *load_keys[] = {"mode", "fanout", "protocol", "connections", "concurrency", "rate",
                                      "max_tokens"};
    const cJSON *rb0 = cJSON_GetArrayItem(jget(base, "runs"), 0), *rc0 = cJSON_GetArrayItem(jget(cur, "runs"), 0);
    char differ[256] = "";
    for (size_t i = 0; rb0 && rc0 && i < sizeof load_keys / sizeof *load_keys; i++) {
        const cJSON *x = jget(rb0, load_keys[i]), *y = jget(rc0, load_keys[i]);
        if (x && y && !cJSON_Compare(x, y, true))
            snprintf(differ + strlen(differ), sizeof differ - strlen(differ), "%s%s", differ[0] ? ", " : "",
                     load_keys[i]);
    }
    if (differ[0]) {
        const char *cb = jstr(mb, "command"), *cc = jstr(mc, "command");
        printf("  warning: the runs put different loads (%s): the figures are not comparable\n", differ);
        printf("  baseline command: %s\n  now command:      %s\n", cb ? cb : "?", cc ? cc : "?");
    }
    double rb = benchfig_num(mb, "repeat"), rcur = benchfig_num(mc, "repeat");
    snprintf(t->note, sizeof t->note, "noise: range of the runs (%.0f in the baseline, %.0f now)%s",
             isnan(rb) ? 1 : rb, isnan(rcur) ? 1 : rcur,
             (isnan(rb) || rb < 2) || (isnan(rcur) || rcur < 2) ? "; '-': one run, the threshold alone decides" : "");
    return 0;
}

/* --- files and directories ---------------------------------------------------------------- */

/* Compare two files of the same kind, printing one table. */
static int compare_files(const char *bpath, const char *cpath, const char *label, const struct cmp_opts *o,
                         struct tally *ty)
{
    cJSON *base = NULL, *cur = NULL;
    struct table t = {0};
    int rc = load_json(bpath, &base);
    rc = rc ? rc : load_json(cpath, &cur);
    if (rc)
        goto out;
    enum file_kind kb = kind_of(base), kc = kind_of(cur);
    if (kb == FILE_UNKNOWN || kb != kc) {
        fprintf(stderr, "bench-compare: %s is %s, %s is %s: nothing to compare\n", bpath, kind_name(kb), cpath,
                kind_name(kc));
        rc = RILL_E_BAD_FORMAT;
        goto out;
    }
    printf("\n== %s (%s) ==\n  baseline %s\n  now      %s\n", label, kind_name(kb), bpath, cpath);
    switch (kb) {
    case FILE_RING: rc = cmp_ring(base, cur, &t); break;
    case FILE_ENGINE: rc = cmp_engine(base, cur, &t); break;
    case FILE_FANOUT: rc = cmp_fanout(base, cur, &t); break;
    case FILE_SAVE: rc = cmp_save(base, cur, &t); break;
    case FILE_UNKNOWN: break;
    }
    if (!rc)
        table_print(&t, o, ty);
out:
    table_free(&t);
    cJSON_Delete(base);
    cJSON_Delete(cur);
    return rc;
}

static bool is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static bool is_save_file(const char *path)
{
    cJSON *j = NULL;
    char *text;
    if (read_text(path, &text))
        return false;
    j = cJSON_Parse(text);
    free(text);
    bool yes = kind_of(j) == FILE_SAVE;
    cJSON_Delete(j);
    return yes;
}

static int name_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int compare_dirs(const char *bdir, const char *cdir, const struct cmp_opts *o, struct tally *ty)
{
    static const char *known[] = {"ring.json", "engine.json", "fanout.json"};
    char bp[4096], cp[4096];
    cJSON *mb = NULL, *mc = NULL;
    snprintf(bp, sizeof bp, "%s/meta.json", bdir);
    snprintf(cp, sizeof cp, "%s/meta.json", cdir);
    if (is_file(bp))
        load_json(bp, &mb);
    if (is_file(cp))
        load_json(cp, &mc);
    printf("bench-compare: %s (baseline) against %s\n", bdir, cdir);
    print_meta(mb, mc);
    cJSON_Delete(mb);
    cJSON_Delete(mc);
    int rc = 0;
    for (size_t i = 0; i < sizeof known / sizeof *known; i++) {
        snprintf(bp, sizeof bp, "%s/%s", bdir, known[i]);
        snprintf(cp, sizeof cp, "%s/%s", cdir, known[i]);
        bool hb = is_file(bp), hc = is_file(cp);
        if (hb && hc) {
            int r = compare_files(bp, cp, known[i], o, ty);
            rc = rc ? rc : r;
        } else if (hb) {
            printf("\n== %s: in the baseline, not in %s (not run?) ==\n", known[i], cdir);
            ty->missing++;
        } else if (hc) {
            printf("\n== %s: no baseline (new; make bench-save to keep it) ==\n", known[i]);
        }
    }
    /* rill-bench --save files kept next to them. */
    DIR *d = opendir(bdir);
    if (!d)
        return RILL_E_IO;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 6 || strcmp(e->d_name + len - 5, ".json") || !strcmp(e->d_name, "meta.json"))
            continue;
        bool is_known = false;
        for (size_t i = 0; i < sizeof known / sizeof *known; i++)
            is_known |= !strcmp(e->d_name, known[i]);
        if (is_known)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char **p = realloc(names, cap * sizeof *p);
            if (!p) {
                rc = RILL_E_NOMEM;
                break;
            }
            names = p;
        }
        if (!(names[n] = strdup(e->d_name))) {
            rc = RILL_E_NOMEM;
            break;
        }
        n++;
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof *names, name_cmp);
    for (size_t i = 0; i < n; i++) {
        snprintf(bp, sizeof bp, "%s/%s", bdir, names[i]);
        snprintf(cp, sizeof cp, "%s/%s", cdir, names[i]);
        if (!rc && is_save_file(bp)) {
            if (is_file(cp)) {
                int r = compare_files(bp, cp, names[i], o, ty);
                rc = rc ? rc : r;
            } else {
                printf("\n== %s: in the baseline, not in %s ==\n", names[i], cdir);
                ty->missing++;
            }
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

/* --- main ---------------------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bench-compare [options] BASELINE CURRENT\n"
            "  BASELINE, CURRENT     two directories (ring.json, engine.json, fanout.json, rill-bench --save\n"
            "                        files) or two files of the same kind\n"
            "  --threshold PCT       change that counts for throughputs and medians (default 10)\n"
            "  --tail-threshold PCT  the same for p95/p99 figures (default twice --threshold)\n"
            "  --fail-on-regression  exit 1 when a regression is flagged\n"
            "A figure is flagged REGRESSION or improved when it moved its bad or good way by more than\n"
            "max(threshold, noise of the baseline, noise now); noise is (max - min) / median of its runs.\n"
            "Exit: 0; 1 regression with --fail-on-regression; 2 bad arguments or input.\n");
}

static int pct_arg(const char *name, const char *v, double *out)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (end == v || *end || errno || !isfinite(d) || d < 0 || d > 10000) {
        fprintf(stderr, "bench-compare: bad value '%s' for --%s (a percentage, 0 .. 10000)\n", v, name);
        return RILL_E_BAD_CONFIG;
    }
    *out = d;
    return 0;
}

int main(int argc, char **argv)
{
    enum { O_THRESHOLD = 1, O_TAIL, O_FAIL, O_HELP };
    static const struct option lo[] = {{"threshold", 1, 0, O_THRESHOLD},
                                       {"tail-threshold", 1, 0, O_TAIL},
                                       {"fail-on-regression", 0, 0, O_FAIL},
                                       {"help", 0, 0, O_HELP},
                                       {0, 0, 0, 0}};
    struct cmp_opts o = {.threshold = 10, .tail_threshold = NAN};
    int ch;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case O_THRESHOLD:
            if (pct_arg("threshold", optarg, &o.threshold))
                return 2;
            break;
        case O_TAIL:
            if (pct_arg("tail-threshold", optarg, &o.tail_threshold))
                return 2;
            break;
        case O_FAIL: o.fail_on_regression = true; break;
        case O_HELP: usage(stdout); return 0;
        default:
            fprintf(stderr, "bench-compare: unknown or incomplete option '%s'\n", argv[optind - 1]);
            usage(stderr);
            return 2;
        }
    }
    if (isnan(o.tail_threshold))
        o.tail_threshold = 2 * o.threshold;
    if (argc - optind != 2) {
        usage(stderr);
        return 2;
    }
    const char *base = argv[optind], *cur = argv[optind + 1];
    struct tally ty = {0};
    int rc;
    if (is_dir(base) || is_dir(cur)) {
        if (!is_dir(base)) {
            fprintf(stderr, "bench-compare: no baseline in %s (run make bench-save first)\n", base);
            return 2;
        }
        if (!is_dir(cur)) {
            fprintf(stderr, "bench-compare: %s is not a directory (the baseline %s is)\n", cur, base);
            return 2;
        }
        rc = compare_dirs(base, cur, &o, &ty);
    } else {
        if (!is_file(base)) {
            fprintf(stderr, "bench-compare: no baseline %s (run the benchmark with --save first)\n", base);
            return 2;
        }
        printf("bench-compare: %s (baseline) against %s\n", base, cur);
        const char *slash = strrchr(base, '/');
        rc = compare_files(base, cur, slash ? slash + 1 : base, &o, &ty);
    }
    if (rc)
        return 2;
    if (!ty.files) {
        fprintf(stderr, "bench-compare: nothing to compare in %s and %s\n", base, cur);
        return 2;
    }
    printf("\nbench-compare: %u figures: %u REGRESSION, %u improved, %u within limits (~)", ty.figures,
           ty.regressions, ty.improved, ty.same);
    if (ty.missing)
        printf(", %u missing now", ty.missing);
    if (ty.added)
        printf(", %u new", ty.added);
    printf("; threshold %.0f%% (p95/p99 %.0f%%) or the measured noise if larger\n", o.threshold, o.tail_threshold);
    return ty.regressions && o.fail_on_regression ? 1 : 0;
}
