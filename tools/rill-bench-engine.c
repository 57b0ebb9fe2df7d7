/* rill-bench-engine — how fast the engine decodes and prefills, through the
 * engine API (engine_open, sched_submit, sched_step with a no-op output): no
 * gateway, no ring, no processes except in the worker comparison.
 *
 *   rill-bench-engine [--models-dir DIR] [--json FILE] [--threads N] [--quick]
 *                     [--models 24M,134M] [--dtypes f32,f16,q8_0,...] [--batches 1,8,32,64]
 *                     [--runs N] [--run-seconds S] [--compare-batches 8,32] [--no-compare]
 *                     [--mkmodel PATH] [--no-kernels | --kernels-only] [--kern-json FILE]
 *
 * For every model (24M: dim 288, 6 layers, 6 heads, ffn 768, vocab 32000;
 * 134M: dim 768, 12 layers, 12 heads, ffn 2048, vocab 32000; made by
 * rill-mkmodel into --models-dir when missing) in every dtype (f32, f16,
 * q8_0, q6_K, q5_K_M, q4_K_M and q4_0 by default; bf16 and pure q4_K on
 * request; the quantized ones as llama-quantize mixes them, so that they
 * compare with llama.cpp's files of the same names):
 *   - decode tokens/s at 1, 8, 32 and 64 concurrent sequences with
 *     32-token prompts (batch 1 is the single-stream figure): the sequences
 *     are prefilled, two steps warm up, then --runs windows of pure decode
 *     steps are timed (each about --run-seconds long) and the median window
 *     is the figure — the machine is shared and noisy;
 *   - prefill tokens/s: a 128-token prompt in one step, median of --runs;
 *   - what each decode figure implies: weight bytes read per second (every
 *     step streams every matrix once, whatever the batch), KV-cache bytes read
 *     per second, and the FLOP rate (2 per weight per token, plus attention).
 * Then one worker with 2 threads against two workers with 1 thread each
 * (fork: each child opens its own engine and decodes half the sequences,
 * both timed over the same windows): aggregate tokens/s of both setups.
 *
 * Targets (one worker, 2 threads, 32-token prompts) are printed next to the
 * figures with how far each is from its target.
 *
 * First, when 134M is among the models (or with --kernels-only): the F32
 * matrix kernels alone at the 134M shapes, batch 32 and 64, as GFLOP/s and
 * as a share of this machine's FP32 FMA peak measured in the same run at the
 * widest vector width the CPU has (--kern-json writes them); the decode rows
 * then show the whole step's GFLOP/s over that peak too.
 * --quick is a smoke run (batches 1 and 8, 2 short runs, compare at 8).
 */
#include "common/clock.h"
#include "common/config.h"
#include "common/err.h"
#include "common/jsonw.h"
#include "common/log.h"
#include "worker/engine.h"
#include "worker/kern.h"
#include "worker/model.h"
#include "worker/pool.h"
#include "worker/sched.h"
#include "tools/lib/machlim.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_RUNS    16
#define MAX_BATCHES 8
#define PROMPT      32     /* tokens of each decode request's prompt */
#define PREFILL     128    /* tokens of the prefill request */
#define CTX         768    /* context of the benchmark engines */
#define MAX_STEPS   100    /* decode steps in one timed window, at most */
#define MIN_STEPS   3

static const char *const shape_names[] = {"24M", "134M"};
static const char *const dtype_names[] = {"f32", "f16", "q8_0", "q6_K", "q5_K_M", "q4_K_M", "q4_0", "bf16", "q4_K"};
#define N_DTYPES 9

struct target {
    const char *model, *dtype;
    double single, agg32;
};
static const struct target targets[] = {
    {"134M", "f32", 34, 300},
    {"134M", "f16", 57, 300},
    {"134M", "q8_0", 87, 300},
    {"24M", "f32", 200, 1200},
};

struct opts {
    const char *models_dir, *json, *mkmodel, *kern_json;
    int threads;
    bool quick, compare, kernels, kernels_only;
    bool model_on[2], dtype_on[N_DTYPES];
    uint32_t batches[MAX_BATCHES], n_batches;
    uint32_t cmp_batches[MAX_BATCHES], n_cmp;
    int runs;
    double run_s;
};

/* ---- small things ----------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *v, int n)
{
    if (n <= 0)
        return NAN;
    double s[MAX_RUNS];
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

static double vmin(const double *v, int n)
{
    double m = INFINITY;
    for (int i = 0; i < n; i++)
        m = fmin(m, v[i]);
    return m;
}

static double vmax(const double *v, int n)
{
    double m = -INFINITY;
    for (int i = 0; i < n; i++)
        m = fmax(m, v[i]);
    return m;
}

/* Busy CPU seconds of the whole machine (from /proc/stat) and of this
 * process: their difference over a window is what other processes took —
 * the noise next to a figure. */
struct cpu_sample {
    double machine, self, wall;
};

static struct cpu_sample cpu_sample(void)
{
    struct cpu_sample c = {0};
    FILE *f = fopen("/proc/stat", "r");
    unsigned long long v[8] = {0};
    if (f) {
        if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                   &v[6], &v[7]) == 8) {
            double hz = (double)sysconf(_SC_CLK_TCK);
            c.machine = (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / hz; /* all but idle and iowait */
        }
        fclose(f);
    }
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    c.self = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    c.wall = (double)clock_ns() / 1e9;
    return c;
}

/* Cores' worth of CPU that other processes used between a and b. */
static double others_cores(struct cpu_sample a, struct cpu_sample b)
{
    double w = b.wall - a.wall;
    if (w <= 0)
        return NAN;
    double o = ((b.machine - a.machine) - (b.self - a.self)) / w;
    return o < 0 ? 0 : o;
}

static int noop_emit(void *ctx, const struct proto_token *t)
{
    (void)ctx;
    (void)t;
    return 0;
}
static void noop_flush(void *ctx) { (void)ctx; }
static const struct sched_out noop_out = {NULL, noop_emit, noop_flush};

static const struct target *find_target(const char *model, const char *dtype)
{
    for (size_t i = 0; i < sizeof targets / sizeof *targets; i++)
        if (!strcmp(targets[i].model, model) && !strcmp(targets[i].dtype, dtype))
            return &targets[i];
    return NULL;
}

static bool parse_list(const char *s, uint32_t *out, uint32_t *n, uint32_t max)
{
    *n = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *end;
        long v = strtol(t, &end, 10);
        if (*end || v < 1 || v > 4096 || *n == max)
            return false;
        out[(*n)++] = (uint32_t)v;
    }
    return *n > 0;
}

static bool parse_names(const char *s, const char *const *names, int n_names, bool *on)
{
    for (int i = 0; i < n_names; i++)
        on[i] = false;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int i = 0;
        while (i < n_names && strcasecmp(t, names[i]))
            i++;
        if (i == n_names)
            return false;
        on[i] = true;
    }
    return true;
}

/* ---- models ---------------------------------------------------------------------------- */

static void default_mkmodel(char *out, size_t cap)
{
    char exe[PATH_MAX];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (k <= 0) {
        snprintf(out, cap, "rill-mkmodel");
        return;
    }
    exe[k] = 0;
    char *slash = strrchr(exe, '/');
    if (slash)
        *slash = 0;
    snprintf(out, cap, "%s/rill-mkmodel", exe);
}

static int ensure_model(const struct opts *o, const char *shape, const char *dtype, char *path, size_t cap)
{
    snprintf(path, cap, "%s/%s-%s.gguf", o->models_dir, shape, dtype);
    if (access(path, R_OK) == 0)
        return 0;
    if (mkdir(o->models_dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "rill-bench-engine: cannot create %s: %s\n", o->models_dir, strerror(errno));
        return RILL_E_IO;
    }
    char cmd[PATH_MAX * 3];
    /* llama-quantize's mixes (q4_0: q6_K output), except q4_K: every matrix */
    snprintf(cmd, sizeof cmd, "'%s' --shape %s --%s %s --seed 1 --out '%s'", o->mkmodel, shape,
             strcmp(dtype, "q4_K") ? "mix" : "dtype", dtype, path);
    fprintf(stderr, "making %s\n", path);
    if (system(cmd) != 0) {
        fprintf(stderr, "rill-bench-engine: failed: %s\n", cmd);
        return RILL_E_IO;
    }
    return 0;
}

/* What one step costs in weights and arithmetic. */
struct cost {
    double weight_bytes;     /* read per step (packed matrices) */
    double flops_per_token;  /* 2 per matrix weight */
    double attn_flops_per_pos; /* per token, per position attended (QK and AV, all layers) */
    double kv_bytes_per_pos; /* per token, per position attended (K and V, all layers) */
};

static double packed_row_bytes(enum wtype t, uint32_t cols)
{
    /* Q8_0 is packed with a float scale per 32 int8; the other block types
     * stay as in the file. */
    return t == WT_Q8_0 ? 36.0 * cols / 32 : (double)wtype_row_bytes(t, cols);
}

static struct cost model_cost(const struct model *m)
{
    const struct model_config *c = &m->cfg;
    struct cost k = {0};
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const struct layer_weights *L = &m->layers[l];
        const struct wmat *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (int i = 0; i < 7; i++) {
            k.weight_bytes += ws[i]->rows * packed_row_bytes(ws[i]->type, ws[i]->cols);
            k.flops_per_token += 2.0 * ws[i]->rows * ws[i]->cols;
        }
    }
    k.weight_bytes += m->output.rows * packed_row_bytes(m->output.type, m->output.cols);
    k.flops_per_token += 2.0 * m->output.rows * m->output.cols;
    k.attn_flops_per_pos = 4.0 * c->n_heads * c->head_dim * c->n_layers;
    k.kv_bytes_per_pos = 2.0 * c->n_kv_heads * c->head_dim * sizeof(float) * c->n_layers;
    return k;
}

/* ---- the engine ------------------------------------------------------------------------------ */

static int open_engine(const char *path, int threads, uint32_t max_batch, struct engine *e)
{
    struct rill_config c;
    cfg_defaults(&c);
    char why[512] = "", v[64];
    int rc = cfg_set(&c, "model", path, why, sizeof why);
    snprintf(v, sizeof v, "%d", threads);
    rc = rc ? rc : cfg_set(&c, "threads", v, why, sizeof why);
    snprintf(v, sizeof v, "%u", max_batch);
    rc = rc ? rc : cfg_set(&c, "max_batch", v, why, sizeof why);
    snprintf(v, sizeof v, "%d", CTX);
    rc = rc ? rc : cfg_set(&c, "context", v, why, sizeof why);
    rc = rc ? rc : cfg_set(&c, "prefill_chunk", "512", why, sizeof why);
    /* The adaptive controller must not move the batch under the benchmark. */
    rc = rc ? rc : cfg_set(&c, "target_latency_ms", "60000", why, sizeof why);
    rc = rc ? rc : cfg_set(&c, "max_latency_ms", "60000", why, sizeof why);
    rc = rc ? rc : engine_open(&c, false, e, why, sizeof why);
    if (rc)
        fprintf(stderr, "rill-bench-engine: %s: %s: %s\n", path, rill_err_name(rc), why);
    return rc;
}

static int submit_n(struct engine *e, uint64_t id0, uint32_t n, uint32_t prompt_len, uint32_t max_tokens)
{
    int32_t toks[1024]; /* the longest prompt here: --vs-llama's 512 */
    uint32_t V = e->model->cfg.vocab;
    if (prompt_len > sizeof toks / sizeof *toks)
        return RILL_E_TOO_LARGE;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t x = (id0 + i) * 0x9e3779b97f4a7c15ull;
        for (uint32_t k = 0; k < prompt_len; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            toks[k] = (int32_t)(300 + x % (V - 300)); /* ordinary tokens, no control ones */
        }
        struct proto_submit q = {.id = id0 + i, .prompt_tokens = toks, .n_prompt_tokens = prompt_len,
                                 .max_tokens = max_tokens, .top_p = 1, .repetition_penalty = 1,
                                 .has_seed = true, .seed = id0 + i};
        char why[256] = "";
        int rc = sched_submit(e->sched, &q, clock_ns(), why, sizeof why);
        if (rc) {
            fprintf(stderr, "rill-bench-engine: submit: %s: %s\n", rill_err_name(rc), why);
            return rc;
        }
    }
    return 0;
}

static int drain(struct engine *e)
{
    int rc = sched_abort_all(e->sched, RILL_E_CANCELLED, &noop_out);
    while (!rc && sched_busy(e->sched)) {
        int r = sched_step(e->sched, &noop_out);
        rc = r < 0 ? r : 0;
    }
    return rc;
}

/* A decode measurement of n sequences. */
struct dec {
    double rate[MAX_RUNS];   /* tokens/s of each window */
    double t0[MAX_RUNS], t1[MAX_RUNS]; /* window bounds, s of CLOCK_MONOTONIC */
    uint64_t tokens[MAX_RUNS];
    int runs;
    uint32_t steps;          /* per window */
    double prefill_rate;     /* prompt tokens/s of the prefill steps */
    double mean_batch;       /* decode rows per timed step */
    double mean_pos;         /* mean position attended over the windows */
    double others;           /* cores used by other processes during the windows */
    int rc;
};

/* Prefill n sequences of PROMPT tokens, warm up, then time `runs` windows of
 * pure decode steps.  Steps per window: about run_s seconds, from the
 * warm-up steps' time (same for every window, so that they compare). */
static void decode_bench(struct engine *e, uint32_t n, int runs, double run_s, uint32_t fixed_steps,
                         struct dec *d)
{
    memset(d, 0, sizeof *d);
    uint32_t max_tokens = CTX - PROMPT - 1;
    d->rc = submit_n(e, 1000, n, PROMPT, max_tokens);
    if (d->rc)
        return;
    struct sched_stats st;
    double pf_s = 0;
    uint64_t pf_rows = 0;
    uint32_t generated = 0; /* decode steps so far (tokens each sequence has) */
    for (int guard = 0;; guard++) {
        uint64_t t0 = clock_ns();
        int rc = sched_step(e->sched, &noop_out);
        double dt = (double)(clock_ns() - t0) / 1e9;
        if (rc < 0 || guard > 100000) {
            d->rc = rc < 0 ? rc : RILL_E_INTERNAL;
            return;
        }
        sched_stats(e->sched, &st);
        if (st.last_rows > st.last_batch) {
            pf_s += dt;
            pf_rows += st.last_rows - st.last_batch;
        }
        if (st.last_batch == n && st.last_rows == n)
            break; /* every sequence is decoding */
    }
    generated = 2;
    d->prefill_rate = pf_s > 0 ? (double)pf_rows / pf_s : NAN;
    /* Warm up: two more steps, timed to size the windows. */
    double warm = 0;
    for (int k = 0; k < 2; k++) {
        uint64_t t0 = clock_ns();
        int rc = sched_step(e->sched, &noop_out);
        warm = (double)(clock_ns() - t0) / 1e9;
        if (rc < 0) {
            d->rc = rc;
            return;
        }
        generated++;
    }
    uint32_t steps = fixed_steps;
    if (!steps) {
        double s = run_s / (warm > 1e-6 ? warm : 1e-6);
        steps = s < MIN_STEPS ? MIN_STEPS : s > MAX_STEPS ? MAX_STEPS : (uint32_t)s;
    }
    uint32_t room = (max_tokens - generated - 1) / (uint32_t)runs;
    if (steps > room)
        steps = room;
    d->steps = steps;
    uint64_t batch_sum = 0, n_steps = 0;
    double pos_sum = 0;
    struct cpu_sample c0 = cpu_sample();
    for (int r = 0; r < runs; r++) {
        uint64_t tok = 0, t0 = clock_ns();
        for (uint32_t k = 0; k < steps; k++) {
            int rc = sched_step(e->sched, &noop_out);
            if (rc < 0) {
                d->rc = rc;
                return;
            }
            sched_stats(e->sched, &st);
            tok += st.last_batch;
            batch_sum += st.last_batch;
            n_steps++;
            pos_sum += PROMPT + generated;
            generated++;
        }
        uint64_t t1 = clock_ns();
        d->t0[r] = (double)t0 / 1e9;
        d->t1[r] = (double)t1 / 1e9;
        d->tokens[r] = tok;
        d->rate[r] = (double)tok / ((double)(t1 - t0) / 1e9);
        d->runs = r + 1;
    }
    d->others = others_cores(c0, cpu_sample());
    d->mean_batch = n_steps ? (double)batch_sum / (double)n_steps : 0;
    d->mean_pos = n_steps ? pos_sum / (double)n_steps : 0;
    d->rc = drain(e);
}

/* Prefill of one PREFILL-token prompt, `runs` times: prompt tokens per
 * second of the steps that prefilled it (the scheduler sizes prefill chunks
 * to keep a step under max_step_ms, so it may take several steps). */
static int prefill_bench(struct engine *e, int runs, double *rate)
{
    for (int r = 0; r < runs; r++) {
        int rc = submit_n(e, 50000 + (uint64_t)r, 1, PREFILL, 1);
        if (rc)
            return rc;
        double t = 0;
        uint64_t rows = 0;
        while (sched_busy(e->sched)) {
            uint64_t t0 = clock_ns();
            int n = sched_step(e->sched, &noop_out);
            double dt = (double)(clock_ns() - t0) / 1e9;
            if (n < 0)
                return n;
            struct sched_stats st;
            sched_stats(e->sched, &st);
            if (st.last_rows > st.last_batch) {
                t += dt;
                rows += st.last_rows - st.last_batch;
            }
        }
        rate[r] = rows == PREFILL && t > 0 ? PREFILL / t : NAN;
    }
    return 0;
}

/* ---- two workers of one thread ---------------------------------------------------------------- */

struct child_res {
    int rc;
    int runs;
    uint32_t steps;
    double cpu_s;            /* this worker's CPU time over its windows */
    double rate[MAX_RUNS], t0[MAX_RUNS], t1[MAX_RUNS];
    uint64_t tokens[MAX_RUNS];
};

static int read_full(int fd, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t k = read(fd, (char *)buf + got, n - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        got += (size_t)k;
    }
    return 0;
}

/* Two forked workers, each with its own 1-thread engine and n/2 sequences.
 * Both get ready (load, pack, prefill, warm up), then start together and
 * time the same number of windows of `steps` steps.  The aggregate of a
 * window is the sum of the two workers' rates. */
static int two_workers(const char *path, uint32_t n, int runs, uint32_t steps, double *agg, double *wall_rate,
                       double *others)
{
    int ready[2], go[2], res[2];
    if (pipe(ready) || pipe(go) || pipe(res))
        return RILL_E_IO;
    fflush(NULL);
    pid_t pid[2];
    for (int w = 0; w < 2; w++) {
        pid[w] = fork();
        if (pid[w] < 0)
            return RILL_E_IO;
        if (pid[w] == 0) {
            close(ready[0]);
            close(go[1]);
            close(res[0]);
            struct child_res cr = {0};
            struct engine e;
            uint32_t mine = n / 2 + (w == 0 ? n % 2 : 0);
            cr.rc = open_engine(path, 1, mine, &e);
            if (!cr.rc)
                cr.rc = submit_n(&e, 1000 + (uint64_t)w * 100000, mine, PROMPT, CTX - PROMPT - 1);
            /* Prefill and warm up alone, then wait for the other. */
            struct sched_stats st;
            for (int guard = 0; !cr.rc; guard++) {
                int r = sched_step(e.sched, &noop_out);
                if (r < 0 || guard > 100000) {
                    cr.rc = r < 0 ? r : RILL_E_INTERNAL;
                    break;
                }
                sched_stats(e.sched, &st);
                if (st.last_batch == mine && st.last_rows == mine)
                    break;
            }
            for (int k = 0; !cr.rc && k < 2; k++) {
                int r = sched_step(e.sched, &noop_out);
                cr.rc = r < 0 ? r : 0;
            }
            char c = 'r';
            if (write(ready[1], &c, 1) != 1 || read_full(go[0], &c, 1))
                _exit(1);
            struct cpu_sample c0 = cpu_sample();
            for (int r = 0; !cr.rc && r < runs; r++) {
                uint64_t tok = 0, t0 = clock_ns();
                for (uint32_t k = 0; k < steps; k++) {
                    int x = sched_step(e.sched, &noop_out);
                    if (x < 0) {
                        cr.rc = x;
                        break;
                    }
                    sched_stats(e.sched, &st);
                    tok += st.last_batch;
                }
                uint64_t t1 = clock_ns();
                cr.t0[r] = (double)t0 / 1e9;
                cr.t1[r] = (double)t1 / 1e9;
                cr.tokens[r] = tok;
                cr.rate[r] = (double)tok / ((double)(t1 - t0) / 1e9);
                cr.runs = r + 1;
            }
            cr.steps = steps;
            cr.cpu_s = cpu_sample().self - c0.self;
            if (write(res[1], &cr, sizeof cr) != (ssize_t)sizeof cr)
                _exit(1);
            _exit(0);
        }
    }
    close(ready[1]);
    close(go[0]);
    close(res[1]);
    char c;
    int rc = 0;
    for (int w = 0; w < 2; w++)
        if (read_full(ready[0], &c, 1))
            rc = RILL_E_INTERNAL;
    char gg[2] = {'g', 'g'};
    struct cpu_sample c0 = cpu_sample();
    if (write(go[1], gg, 2) != 2)
        rc = RILL_E_IO;
    struct child_res cr[2];
    for (int w = 0; w < 2; w++)
        if (read_full(res[0], &cr[w], sizeof cr[w]))
            rc = RILL_E_INTERNAL;
    struct cpu_sample c1 = cpu_sample();
    for (int w = 0; w < 2; w++) {
        int status;
        waitpid(pid[w], &status, 0);
    }
    close(ready[0]);
    close(go[1]);
    close(res[0]);
    if (rc)
        return rc;
    if (cr[0].rc || cr[1].rc)
        return cr[0].rc ? cr[0].rc : cr[1].rc;
    int k = cr[0].runs < cr[1].runs ? cr[0].runs : cr[1].runs;
    double sums[MAX_RUNS];
    uint64_t tokens = 0;
    double t0 = INFINITY, t1 = 0;
    for (int r = 0; r < k; r++) {
        sums[r] = cr[0].rate[r] + cr[1].rate[r];
        tokens += cr[0].tokens[r] + cr[1].tokens[r];
        t0 = fmin(t0, fmin(cr[0].t0[r], cr[1].t0[r]));
        t1 = fmax(t1, fmax(cr[0].t1[r], cr[1].t1[r]));
    }
    *agg = median(sums, k);
    *wall_rate = (double)tokens / (t1 - t0);
    /* Machine CPU over the windows less both workers' (and ours, idle). */
    double o = c1.wall > c0.wall ? ((c1.machine - c0.machine) - (c1.self - c0.self) - cr[0].cpu_s - cr[1].cpu_s) /
                                       (c1.wall - c0.wall)
                                 : NAN;
    *others = o < 0 ? 0 : o;
    return 0;
}

/* ---- results ------------------------------------------------------------------------------------ */

struct row {
    const char *model, *dtype;
    uint32_t batch;
    struct dec d;
    double decode, prefill, prefill_prompt;   /* medians */
    double weight_gbs, kv_gbs, gflops;
    double target;                            /* 0: none */
    double cmp_one, cmp_two, cmp_two_wall;    /* 0: not compared */
    double cmp_two_others;
    double peak;                              /* FMA peak of the kernel section; 0: not measured */
};

static void print_gap(double v, double target)
{
    if (target <= 0) {
        printf("  %9s %12s", "-", "");
        return;
    }
    double gap = (v / target - 1) * 100;
    printf("  %9.0f %+6.0f%% %-5s", target, gap, v >= target ? "ok" : "MISS");
}

static int write_json(const char *path, const struct row *rows, int n, const struct opts *o, uint32_t threads)
{
    size_t cap = 8192 + (size_t)n * 2048;
    char *buf = malloc(cap);
    if (!buf)
        return RILL_E_NOMEM;
    struct jsonw w;
    jsonw_init(&w, buf, cap);
    jsonw_arr_begin(&w);
    for (int i = 0; i < n; i++) {
        const struct row *r = &rows[i];
        jsonw_obj_begin(&w);
        jsonw_key_str(&w, "model", r->model);
        jsonw_key_str(&w, "dtype", r->dtype);
        jsonw_key_uint(&w, "batch", r->batch);
        jsonw_key_double(&w, "decode_tokens_per_s", r->decode, 2);
        jsonw_key_double(&w, "prefill_tokens_per_s", r->prefill, 2);
        jsonw_key_uint(&w, "prefill_prompt_tokens", (uint64_t)r->prefill_prompt);
        jsonw_key_uint(&w, "prompt_tokens", PROMPT);
        jsonw_key_uint(&w, "threads", threads);
        jsonw_key_uint(&w, "runs", (uint64_t)r->d.runs);
        jsonw_key_uint(&w, "steps_per_run", r->d.steps);
        jsonw_key(&w, "decode_runs_tokens_per_s");
        jsonw_arr_begin(&w);
        for (int k = 0; k < r->d.runs; k++)
            jsonw_double(&w, r->d.rate[k], 2);
        jsonw_arr_end(&w);
        jsonw_key_double(&w, "decode_best_tokens_per_s", vmax(r->d.rate, r->d.runs), 2);
        jsonw_key_double(&w, "mean_batch", r->d.mean_batch, 2);
        jsonw_key_double(&w, "other_processes_cores", r->d.others, 2);
        jsonw_key_double(&w, "weight_gb_per_s", r->weight_gbs, 3);
        jsonw_key_double(&w, "kv_gb_per_s", r->kv_gbs, 3);
        jsonw_key_double(&w, "gflop_per_s", r->gflops, 3);
        if (r->peak > 0) {
            jsonw_key_double(&w, "fma_peak_gflop_per_s", r->peak, 1);
            jsonw_key_double(&w, "gflop_over_peak", r->gflops / r->peak, 4);
        }
        if (r->target > 0) {
            jsonw_key_double(&w, "target_decode_tokens_per_s", r->target, 0);
            jsonw_key_double(&w, "vs_target", r->decode / r->target, 3);
        }
        if (r->cmp_two > 0) {
            jsonw_key_double(&w, "one_worker_2_threads_tokens_per_s", r->cmp_one, 2);
            jsonw_key_double(&w, "two_workers_1_thread_tokens_per_s", r->cmp_two, 2);
            jsonw_key_double(&w, "two_workers_wall_tokens_per_s", r->cmp_two_wall, 2);
            jsonw_key_double(&w, "two_workers_other_processes_cores", r->cmp_two_others, 2);
        }
        jsonw_key_bool(&w, "quick", o->quick);
        jsonw_obj_end(&w);
    }
    jsonw_arr_end(&w);
    int rc = 0;
    if (!jsonw_ok(&w)) {
        rc = RILL_E_TOO_LARGE;
    } else {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = 0;
            mkdir(dir, 0755); /* the usual build/bench/; an error shows at fopen */
        }
        FILE *f = fopen(path, "w");
        if (!f || fwrite(buf, 1, jsonw_len(&w), f) != jsonw_len(&w) || fputc('\n', f) == EOF)
            rc = RILL_E_IO;
        if (f && fclose(f))
            rc = RILL_E_IO;
    }
    free(buf);
    return rc;
}

/* ---- the matrix kernels alone, against the FMA peak ------------------------------------------------
 *
 * The F32 products of one 134M decode step (the shapes of wq/wk/wv/wo,
 * w_gate/w_up, w_down and the output matrix) at batch 32 and 64, run on a
 * pool of `threads` in the forward pass's tasks, next to this machine's
 * FP32 FMA peak measured in the same run with the widest vectors the CPU
 * has (tools/lib/machlim.h): the best of passes before and after the
 * kernels (kb_peak), since other processes can only lower it and a peak
 * caught in a busy moment would flatter the kernels.  The "step" line weighs the shapes as one
 * token uses them (12 layers of 4 + 2 + 1 matrices, then the output). */

#define KB_PEAK_PASSES 1
#define KB_SHAPES 4
#define KB_BATCHES 2

struct kb_shape {
    const char *name;
    uint32_t rows, cols, per_token; /* matrices of this shape per token */
};
static const struct kb_shape kb_shapes[KB_SHAPES] = {
    {"wq/wk/wv/wo", 768, 768, 48},
    {"w_gate/w_up", 2048, 768, 24},
    {"w_down", 768, 2048, 12},
    {"output", 32000, 768, 1},
};
static const uint32_t kb_batches[KB_BATCHES] = {32, 64};

struct kb_job {
    const struct kmat *m;
    const float *x;
    float *y;
    uint32_t B, chunk;
};

static void kb_task(void *ctx, uint32_t task, uint32_t thread)
{
    (void)thread;
    const struct kb_job *j = ctx;
    uint32_t n0 = task * j->chunk, n1 = n0 + j->chunk < j->m->rows ? n0 + j->chunk : j->m->rows;
    kern_matmul(j->m, j->x, j->m->cols, j->B, j->y, j->m->rows, n0, n1);
}

struct kb_result {
    double peak, peak_avx2, peak_avx512, peak_others;
    double gflops[KB_SHAPES][KB_BATCHES], best[KB_SHAPES][KB_BATCHES], others[KB_SHAPES][KB_BATCHES];
    double step[KB_BATCHES]; /* the shapes weighed as one token uses them */
    uint32_t threads;
};

/* Median GFLOP/s of `runs` timed runs of B rows through m (each run about
 * run_s seconds, repeating the product), split as forward.c splits it. */
static double kb_time(struct pool *p, const struct kmat *m, const float *x, float *y, uint32_t B, int runs,
                      double run_s, double *best, double *others)
{
    uint32_t threads = pool_threads(p);
    uint32_t chunk = m->rows / (threads * 8);
    chunk = chunk < 12 ? 12 : (chunk + 11) / 12 * 12; /* forward.c's rule */
    struct kb_job j = {m, x, y, B, chunk};
    uint32_t tasks = (m->rows + chunk - 1) / chunk;
    double flop = 2.0 * m->rows * m->cols * B;
    uint64_t t0 = clock_ns();
    pool_run(p, kb_task, &j, tasks); /* warm: pages, caches */
    double one = (double)(clock_ns() - t0) / 1e9;
    int reps = (int)(run_s / (one > 1e-6 ? one : 1e-6)) + 1;
    double r[MAX_RUNS];
    struct cpu_sample c0 = cpu_sample();
    for (int k = 0; k < runs; k++) {
        t0 = clock_ns();
        for (int i = 0; i < reps; i++)
            pool_run(p, kb_task, &j, tasks);
        r[k] = flop * reps / ((double)(clock_ns() - t0) / 1e9) / 1e9;
    }
    *others = others_cores(c0, cpu_sample());
    *best = vmax(r, runs);
    return median(r, runs);
}

/* KB_PEAK_PASSES more measurements of the peak into res, the best kept:
 * with every thread, and with one thread times the threads (one free core
 * is easier to find on a shared machine than two, and the cores are alike). */
static int kb_peak(uint32_t threads, struct kb_result *res)
{
    for (int i = 0; i < 2 * KB_PEAK_PASSES; i++) {
        struct machlim ml;
        int rc = machlim_measure(i % 2 ? 1 : (int)threads, &ml);
        if (rc)
            return rc;
        double k = i % 2 ? threads : 1;
        if (ml.peak * k > res->peak) {
            res->peak = ml.peak * k;
            res->peak_others = ml.others;
        }
        res->peak_avx2 = fmax(res->peak_avx2, ml.peak_avx2 * k);
        res->peak_avx512 = fmax(res->peak_avx512, ml.peak_avx512 * k);
    }
    return 0;
}

static int kernel_bench(uint32_t threads, int runs, double run_s, struct kb_result *res)
{
    memset(res, 0, sizeof *res);
    res->threads = threads;
    int rc = kb_peak(threads, res);
    if (rc)
        return rc;
    printf("\nF32 matrix kernels alone (%s, %u threads), GFLOP/s median of %d runs:\n", kern_isa_name(kern_isa()),
           threads, runs);
    printf("  %-12s %11s", "matrix", "rows x cols");
    for (int bi = 0; bi < KB_BATCHES; bi++)
        printf("   batch %2u GFLOP/s  ÷ peak  others", kb_batches[bi]);
    printf("\n");
    struct pool *p = pool_create(threads);
    if (!p)
        return RILL_E_NOMEM;
    double secs[KB_BATCHES] = {0}, flops[KB_BATCHES] = {0};
    for (int si = 0; si < KB_SHAPES && !rc; si++) {
        const struct kb_shape *s = &kb_shapes[si];
        uint32_t bmax = kb_batches[KB_BATCHES - 1];
        struct wmat w = {.type = WT_F32, .rows = s->rows, .cols = s->cols, .row_bytes = (size_t)s->cols * 4};
        float *wd = malloc((size_t)s->rows * s->cols * sizeof *wd), *x = malloc((size_t)bmax * s->cols * sizeof *x),
              *y = malloc((size_t)bmax * s->rows * sizeof *y);
        struct kmat m = {0};
        if (!wd || !x || !y) {
            rc = RILL_E_NOMEM;
        } else {
            uint64_t st = 0x9e3779b97f4a7c15ull;
            for (size_t i = 0; i < (size_t)s->rows * s->cols; i++) {
                st ^= st << 13, st ^= st >> 7, st ^= st << 17;
                wd[i] = (float)(st >> 40) / (float)(1 << 24) - 0.5f;
            }
            for (size_t i = 0; i < (size_t)bmax * s->cols; i++)
                x[i] = (float)(i % 97) / 97.0f - 0.5f;
            w.data = wd;
            rc = kern_pack(&w, &m);
        }
        if (!rc) {
            for (int bi = 0; bi < KB_BATCHES; bi++) {
                double g = kb_time(p, &m, x, y, kb_batches[bi], runs, run_s, &res->best[si][bi], &res->others[si][bi]);
                res->gflops[si][bi] = g;
                double f = 2.0 * s->rows * s->cols * kb_batches[bi] * s->per_token;
                flops[bi] += f;
                secs[bi] += f / (g * 1e9);
            }
        }
        kern_unpack_free(&m);
        free(wd);
        free(x);
        free(y);
    }
    pool_free(p);
    if (rc || (rc = kb_peak(threads, res)) != 0)
        return rc;
    for (int si = 0; si < KB_SHAPES; si++) {
        printf("  %-12s %5u x %-5u", kb_shapes[si].name, kb_shapes[si].rows, kb_shapes[si].cols);
        for (int bi = 0; bi < KB_BATCHES; bi++)
            printf("   %17.1f  %5.1f%%  %6.2f", res->gflops[si][bi], 100 * res->gflops[si][bi] / res->peak,
                   res->others[si][bi]);
        printf("\n");
    }
    printf("  %-24s", "a 134M step's products");
    for (int bi = 0; bi < KB_BATCHES; bi++) {
        res->step[bi] = flops[bi] / secs[bi] / 1e9;
        printf("   %17.1f  %5.1f%%  %6s", res->step[bi], 100 * res->step[bi] / res->peak, "");
    }
    printf("\n  against the FP32 FMA peak measured in this run: %.0f GFLOP/s (%.0f per core; avx2 %.0f, avx512 %.0f; "
           "best of %d passes, half with 1 thread x %u; others %.2f cores)\n",
           res->peak, res->peak / threads, res->peak_avx2, res->peak_avx512, 4 * KB_PEAK_PASSES, threads,
           res->peak_others);
    return 0;
}

static int write_kern_json(const char *path, const struct kb_result *r)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return RILL_E_IO;
    fprintf(f, "{\"kernels\": \"%s\", \"threads\": %u, \"fma_peak_gflop_per_s\": %.1f, \"fma_peak_avx2\": %.1f, "
               "\"fma_peak_avx512\": %.1f, \"fma_peak_other_processes_cores\": %.2f, \"matrices\": [",
            kern_isa_name(kern_isa()), r->threads, r->peak, r->peak_avx2, r->peak_avx512, r->peak_others);
    for (int si = 0; si < KB_SHAPES; si++)
        for (int bi = 0; bi < KB_BATCHES; bi++)
            fprintf(f, "%s\n  {\"matrix\": \"%s\", \"rows\": %u, \"cols\": %u, \"batch\": %u, \"gflop_per_s\": %.1f, "
                       "\"best_gflop_per_s\": %.1f, \"over_peak\": %.4f, \"other_processes_cores\": %.2f}",
                    si || bi ? "," : "", kb_shapes[si].name, kb_shapes[si].rows, kb_shapes[si].cols, kb_batches[bi],
                    r->gflops[si][bi], r->best[si][bi], r->gflops[si][bi] / r->peak, r->others[si][bi]);
    fprintf(f, "],\n \"step_134m\": [");
    for (int bi = 0; bi < KB_BATCHES; bi++)
        fprintf(f, "%s{\"batch\": %u, \"gflop_per_s\": %.1f, \"over_peak\": %.4f}", bi ? ", " : "", kb_batches[bi],
                r->step[bi], r->step[bi] / r->peak);
    fprintf(f, "]}\n");
    return fclose(f) ? RILL_E_IO : 0;
}

/* ---- against llama.cpp: pp512 and tg128 as llama-bench, ANCHORS' ratios ------------------------------
 *
 * --vs-llama measures what /work/shared/ANCHORS.md measured for llama.cpp
 * (llama-bench -t 2 -p 512 -n 128): pp512 is one step of a 512-token prompt
 * (logits of the last row only), tg128 is 128 one-token decode steps from an
 * empty context.  Because machines differ, the comparison is by ratios
 * measured in the same sitting (tools/lib/machlim.h): decode GB/s of weights
 * (every matrix once a token, the untied token table not counted) over the
 * read bandwidth, and prefill GFLOP/s (2 per layer-matrix weight) over the
 * FP32 FMA peak.  Repetitions alternate between the files (one pass over all
 * of them per repetition), so that a slow minute of the shared machine
 * spreads over every figure instead of sinking one. */

struct anchor {
    const char *shape, *dtype;
    double mib, pp, tg, dec_ratio, pf_ratio; /* llama.cpp, ANCHORS.md */
};

static const struct anchor anchors[] = {
    {"small-134m", "f16", 209, 632, 100.8, 0.69, 0.48},   {"small-134m", "q8_0", 111, 603, 159.0, 0.58, 0.46},
    {"small-134m", "q6_K", 86, 467, 212.5, 0.60, 0.35},   {"small-134m", "q5_K_M", 77, 360, 171.8, 0.43, 0.27},
    {"small-134m", "q4_K_M", 68, 356, 188.4, 0.42, 0.27}, {"small-134m", "q4_0", 65, 690, 214.2, 0.45, 0.52},
    {"llama3-1b", "f16", 2357, 74, 13.7, 1.06, 0.64},     {"llama3-1b", "q8_0", 1252, 71, 16.5, 0.67, 0.62},
    {"llama3-1b", "q6_K", 967, 42, 24.9, 0.79, 0.36},     {"llama3-1b", "q5_K_M", 862, 41, 22.2, 0.63, 0.36},
    {"llama3-1b", "q4_K_M", 763, 53, 23.0, 0.57, 0.46},   {"llama3-1b", "q4_0", 728, 87, 30.2, 0.72, 0.76},
};
#define N_ANCHORS (int)(sizeof anchors / sizeof *anchors)
/* ANCHORS' machine: 32 GB/s read, 224 GFLOP/s FP32 FMA (2 cores). */
#define ANCHOR_BW   32.0
#define ANCHOR_PEAK 224.0

static const char *const vs_shapes[] = {"small-134m", "llama3-1b"};
static const char *const vs_dtypes[] = {"f16", "q8_0", "q6_K", "q5_K_M", "q4_K_M", "q4_0"};
#define VS_SHAPES 2
#define VS_DTYPES 6
#define VS_PP 512
#define VS_TG 128
#define VS_MAX_REPS 16

struct vs_opts {
    bool shape_on[VS_SHAPES], dtype_on[VS_DTYPES];
    int reps;
    const char *json, *table;
};

/* A text whose BPE allows llama3-1b's 128256 tokens (the kept corpus allows
 * about 80000): pseudo-random words.  The content does not matter for speed. */
static int vs_corpus(const char *dir, char *path, size_t cap)
{
    snprintf(path, cap, "%s/random-words.txt", dir);
    if (access(path, R_OK) == 0)
        return 0;
    FILE *f = fopen(path, "w");
    if (!f)
        return RILL_E_IO;
    uint64_t x = 0x2545f4914f6cdd1dull;
    for (int w = 0; w < 400000; w++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        int len = 2 + (int)(x % 7);
        for (int i = 0; i < len; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            fputc('a' + (int)(x % 26), f);
        }
        fputc(' ', f);
    }
    return fclose(f) ? RILL_E_IO : 0;
}

static int vs_model(const struct opts *o, const char *shape, const char *dtype, char *path, size_t cap)
{
    snprintf(path, cap, "%s/%s-%s.gguf", o->models_dir, shape, dtype);
    if (access(path, R_OK) == 0)
        return 0;
    if (mkdir(o->models_dir, 0755) != 0 && errno != EEXIST)
        return RILL_E_IO;
    char cmd[PATH_MAX * 4], corpus[PATH_MAX];
    if (!strcmp(shape, "small-134m")) {
        snprintf(cmd, sizeof cmd, "'%s' --shape 134M --mix %s --seed 1 --out '%s'", o->mkmodel, dtype, path);
    } else {
        int rc = vs_corpus(o->models_dir, corpus, sizeof corpus);
        if (rc)
            return rc;
        snprintf(cmd, sizeof cmd,
                 "'%s' --dim 2048 --layers 16 --heads 32 --kv-heads 8 --ffn 8192 --vocab 128256 --tied --ctx 4096 "
                 "--corpus '%s' --mix %s --seed 1 --out '%s'",
                 o->mkmodel, corpus, dtype, path);
    }
    fprintf(stderr, "making %s\n", path);
    return system(cmd) == 0 ? 0 : RILL_E_IO;
}

static int vs_open(const char *path, int threads, struct engine *e)
{
    struct rill_config c;
    cfg_defaults(&c);
    char why[512] = "", v[64];
    int rc = cfg_set(&c, "model", path, why, sizeof why);
    snprintf(v, sizeof v, "%d", threads);
    rc = rc ? rc : cfg_set(&c, "threads", v, why, sizeof why);
    rc = rc ? rc : cfg_set(&c, "max_batch", "1", why, sizeof why);
    rc = rc ? rc : cfg_set(&c, "context", "1024", why, sizeof why);
    rc = rc ? rc : cfg_set(&c, "prefill_chunk", "512", why, sizeof why);
    /* one step of 512 prompt rows, however long it takes */
    rc = rc ? rc : cfg_set(&c, "max_step_ms", "60000", why, sizeof why);
    rc = rc ? rc : cfg_set(&c, "target_latency_ms", "60000", why, sizeof why);
    rc = rc ? rc : cfg_set(&c, "max_latency_ms", "60000", why, sizeof why);
    rc = rc ? rc : engine_open(&c, false, e, why, sizeof why);
    if (rc)
        fprintf(stderr, "rill-bench-engine: %s: %s: %s\n", path, rill_err_name(rc), why);
    return rc;
}

/* Run the request submitted last to its end; the seconds of its steps with
 * prompt rows and of its decode steps after the first, and how many of each
 * rows there were. */
struct vs_steps {
    double pf_s, dec_s;
    uint32_t pf_rows, pf_steps, dec_steps;
};

static int vs_run(struct engine *e, struct vs_steps *r)
{
    memset(r, 0, sizeof *r);
    bool first_decode = true;
    while (sched_busy(e->sched)) {
        uint64_t t0 = clock_ns();
        int n = sched_step(e->sched, &noop_out);
        double dt = (double)(clock_ns() - t0) / 1e9;
        if (n < 0)
            return n;
        struct sched_stats st;
        sched_stats(e->sched, &st);
        if (st.last_rows > st.last_batch) {
            r->pf_s += dt;
            r->pf_rows += st.last_rows - st.last_batch;
            r->pf_steps++;
        } else if (st.last_batch) {
            if (first_decode) /* the 1-token prompt's own step */
                first_decode = false;
            else
                r->dec_s += dt, r->dec_steps++;
        }
    }
    return 0;
}

static uint64_t vs_next_id = 900000;

/* pp512: one 512-token prompt, max 1 token; tg128: a 1-token prompt, then
 * VS_TG decode steps (a sequence that ends early, at EOS, is continued by a
 * new one until VS_TG steps were timed). */
static int vs_pp(struct engine *e, double *rate, uint32_t *steps)
{
    int rc = submit_n(e, vs_next_id++, 1, VS_PP, 1);
    struct vs_steps r;
    rc = rc ? rc : vs_run(e, &r);
    if (rc)
        return rc;
    *rate = r.pf_rows == VS_PP && r.pf_s > 0 ? VS_PP / r.pf_s : NAN;
    *steps = r.pf_steps;
    return 0;
}

static int vs_tg(struct engine *e, double *rate)
{
    double t = 0;
    uint32_t n = 0;
    for (int guard = 0; n < VS_TG && guard < 20; guard++) {
        int rc = submit_n(e, vs_next_id++, 1, 1, VS_TG - n + 1);
        struct vs_steps r;
        rc = rc ? rc : vs_run(e, &r);
        if (rc)
            return rc;
        t += r.dec_s;
        n += r.dec_steps;
    }
    *rate = n >= VS_TG && t > 0 ? n / t : NAN;
    return 0;
}

/* Bytes of weights a token reads (ANCHORS' count: every matrix once, the
 * file's bytes, the untied token table left out) and the layer matrices'
 * weights (prefill's FLOPs are twice that a token). */
static void vs_cost(const struct model *m, double *bytes, double *params)
{
    *bytes = 0;
    *params = 0;
    for (uint32_t l = 0; l < m->cfg.n_layers; l++) {
        const struct layer_weights *L = &m->layers[l];
        const struct wmat *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (int i = 0; i < 7; i++) {
            *bytes += (double)ws[i]->rows * (double)wtype_row_bytes(ws[i]->type, ws[i]->cols);
            *params += (double)ws[i]->rows * ws[i]->cols;
        }
    }
    *bytes += (double)m->output.rows * (double)wtype_row_bytes(m->output.type, m->output.cols);
}

struct vs_row {
    const struct anchor *a;
    char path[PATH_MAX];
    double bytes, params;
    double pp[VS_MAX_REPS], tg[VS_MAX_REPS], pp_others[VS_MAX_REPS], tg_others[VS_MAX_REPS];
    int n;
    uint32_t pp_steps;
    bool failed;
    /* medians and ratios */
    double pp_med, tg_med, dec_gbs, pf_gflops, dec_ratio, pf_ratio, vs_dec, vs_pf;
};

/* Wait (up to 3 s) for other processes to use under a quarter of a core:
 * a short lull is often there; a machine busy for minutes is not waited
 * out (the figures then say how busy it was). */
static double vs_quiet(void)
{
    double b = NAN;
    for (int i = 0; i < 6; i++) {
        b = machlim_busy(0.5);
        if (!(b > 0.25))
            break;
    }
    return b;
}

static int vs_main(const struct opts *o, const struct vs_opts *v, uint32_t threads)
{
    struct vs_row *rows = calloc(N_ANCHORS, sizeof *rows);
    if (!rows)
        return 1;
    int n = 0, failures = 0;
    for (int si = 0; si < VS_SHAPES; si++)
        for (int di = 0; di < VS_DTYPES; di++) {
            if (!v->shape_on[si] || !v->dtype_on[di])
                continue;
            for (int k = 0; k < N_ANCHORS; k++)
                if (!strcmp(anchors[k].shape, vs_shapes[si]) && !strcmp(anchors[k].dtype, vs_dtypes[di]))
                    rows[n].a = &anchors[k];
            if (vs_model(o, vs_shapes[si], vs_dtypes[di], rows[n].path, sizeof rows[n].path)) {
                fprintf(stderr, "rill-bench-engine: cannot make %s %s\n", vs_shapes[si], vs_dtypes[di]);
                failures++;
                continue;
            }
            n++;
        }
    struct machlim ml[VS_MAX_REPS];
    double bw[VS_MAX_REPS], pk[VS_MAX_REPS], p2[VS_MAX_REPS];
    uint64_t t_start = clock_ns();
    printf("rill-bench-engine --vs-llama: %u threads, kernels %s, %d repetitions alternated over %d files\n",
           threads, kern_isa_name(kern_isa()), v->reps, n);
    for (int r = 0; r < v->reps; r++) {
        vs_quiet();
        if (machlim_measure((int)threads, &ml[r])) {
            fprintf(stderr, "rill-bench-engine: cannot measure the machine\n");
            free(rows);
            return 1;
        }
        bw[r] = ml[r].read_gbs, pk[r] = ml[r].peak, p2[r] = ml[r].peak_avx2;
        printf("rep %d: read %.1f GB/s, FMA peak %.0f GFLOP/s (avx2 %.0f), others %.2f cores\n", r + 1,
               ml[r].read_gbs, ml[r].peak, ml[r].peak_avx2, ml[r].others);
        for (int i = 0; i < n; i++) {
            struct vs_row *w = &rows[i];
            if (w->failed)
                continue;
            struct engine e;
            if (vs_open(w->path, (int)threads, &e)) {
                w->failed = true;
                failures++;
                continue;
            }
            vs_cost(e.model, &w->bytes, &w->params);
            /* warm-up: a short prompt teaches the scheduler a prompt row's
             * cost (so that the 512 go in one step), and a few decode steps;
             * then a whole pp512 of other tokens, as llama-bench warms up
             * with the test itself: the timed one then does not pay the
             * first touch of the KV cache's and the scratch rows' pages
             * (~11% of a 134M pp512 on our virtual machines) */
            int rc = submit_n(&e, vs_next_id++, 1, 64, 4);
            struct vs_steps ws;
            rc = rc ? rc : vs_run(&e, &ws);
            rc = rc ? rc : submit_n(&e, vs_next_id++, 1, VS_PP, 1);
            rc = rc ? rc : vs_run(&e, &ws);
            vs_quiet();
            struct cpu_sample c0 = cpu_sample();
            rc = rc ? rc : vs_pp(&e, &w->pp[w->n], &w->pp_steps);
            struct cpu_sample c1 = cpu_sample();
            vs_quiet();
            struct cpu_sample c2 = cpu_sample();
            rc = rc ? rc : vs_tg(&e, &w->tg[w->n]);
            struct cpu_sample c3 = cpu_sample();
            engine_close(&e);
            if (rc) {
                fprintf(stderr, "rill-bench-engine: %s %s: %s\n", w->a->shape, w->a->dtype, rill_err_name(rc));
                w->failed = true;
                failures++;
                continue;
            }
            w->pp_others[w->n] = others_cores(c0, c1);
            w->tg_others[w->n] = others_cores(c2, c3);
            printf("  %-10s %-6s pp512 %7.1f tok/s (%u step%s, others %.2f)  tg128 %6.1f tok/s (others %.2f)\n",
                   w->a->shape, w->a->dtype, w->pp[w->n], w->pp_steps, w->pp_steps == 1 ? "" : "s",
                   w->pp_others[w->n], w->tg[w->n], w->tg_others[w->n]);
            fflush(stdout);
            w->n++;
        }
    }
    double BW = median(bw, v->reps), PK = median(pk, v->reps), P2 = median(p2, v->reps);
    double others_all[2 * VS_MAX_REPS * N_ANCHORS];
    int n_oth = 0;
    /* the table: markdown, also written to --vs-table */
    char *tab = NULL;
    size_t tab_len = 0;
    FILE *t = open_memstream(&tab, &tab_len);
    if (!t) {
        free(rows);
        return 1;
    }
    fprintf(t,
            "Machine (median of %d passes, same sitting): read bandwidth %.1f GB/s, FP32 FMA peak %.0f GFLOP/s "
            "(AVX2 %.0f). ANCHORS' machine: %.0f GB/s, %.0f GFLOP/s. %u threads, kernels %s.\n\n",
            v->reps, BW, PK, P2, ANCHOR_BW, ANCHOR_PEAK, threads, kern_isa_name(kern_isa()));
    fprintf(t, "| shape | type | MiB/token | pp512 tok/s [range] | tg128 tok/s [range] | decode GB/s ÷ BW | "
               "llama.cpp | rill÷llama (decode) | prefill GFLOP/s ÷ peak | llama.cpp | rill÷llama (prefill) | "
               "(÷ AVX2 peak) |\n");
    fprintf(t, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int i = 0; i < n; i++) {
        struct vs_row *w = &rows[i];
        if (!w->n)
            continue;
        w->pp_med = median(w->pp, w->n);
        w->tg_med = median(w->tg, w->n);
        w->dec_gbs = w->tg_med * w->bytes / 1e9;
        w->pf_gflops = 2 * w->params * w->pp_med / 1e9;
        w->dec_ratio = w->dec_gbs / BW;
        w->pf_ratio = w->pf_gflops / PK;
        w->vs_dec = w->dec_ratio / w->a->dec_ratio;
        w->vs_pf = w->pf_ratio / w->a->pf_ratio;
        for (int k = 0; k < w->n; k++) {
            others_all[n_oth++] = w->pp_others[k];
            others_all[n_oth++] = w->tg_others[k];
        }
        fprintf(t, "| %s | %s | %.0f | %.1f [%.1f–%.1f] | %.1f [%.1f–%.1f] | %.2f | %.2f | %.2f | %.3f | %.2f | %.2f | %.2f |\n",
                w->a->shape, w->a->dtype, w->bytes / 1048576.0, w->pp_med, vmin(w->pp, w->n), vmax(w->pp, w->n),
                w->tg_med, vmin(w->tg, w->n), vmax(w->tg, w->n), w->dec_ratio, w->a->dec_ratio, w->vs_dec,
                w->pf_ratio, w->a->pf_ratio, w->vs_pf, w->pf_gflops / P2 / w->a->pf_ratio);
    }
    double omed = NAN, omax = NAN;
    if (n_oth) {
        omax = vmax(others_all, n_oth);
        qsort(others_all, (size_t)n_oth, sizeof *others_all, cmp_double);
        omed = others_all[n_oth / 2];
    }
    fprintf(t, "\nrill÷llama is rill's ratio over llama.cpp's (ANCHORS.md, where the FMA peak was the same with "
               "AVX2 and AVX-512); the last column divides by this machine's AVX2 peak instead, for CPUs whose "
               "AVX-512 FMA is twice as wide.\n");
    fprintf(t, "\nOther processes during the measurements: median %.2f, max %.2f cores (of %ld). %.0f s in all.\n",
            omed, omax, sysconf(_SC_NPROCESSORS_ONLN), (double)(clock_ns() - t_start) / 1e9);
    fclose(t);
    printf("\n%s", tab);
    if (v->table) {
        FILE *f = fopen(v->table, "w");
        if (!f || fputs(tab, f) == EOF)
            failures++;
        if (f)
            fclose(f);
    }
    free(tab);
    if (v->json) {
        FILE *f = fopen(v->json, "w");
        if (!f) {
            failures++;
        } else {
            fprintf(f, "{\"threads\": %u, \"kernels\": \"%s\", \"read_gb_per_s\": %.2f, \"fma_peak_gflop_per_s\": %.1f, "
                       "\"fma_peak_avx2\": %.1f, \"other_processes_cores_median\": %.2f, "
                       "\"other_processes_cores_max\": %.2f, \"rows\": [",
                    threads, kern_isa_name(kern_isa()), BW, PK, P2, omed, omax);
            bool first = true;
            for (int i = 0; i < n; i++) {
                struct vs_row *w = &rows[i];
                if (!w->n)
                    continue;
                fprintf(f, "%s\n {\"shape\": \"%s\", \"dtype\": \"%s\", \"mib_per_token\": %.1f, \"reps\": %d, "
                           "\"pp512_tokens_per_s\": %.2f, \"pp512_min\": %.2f, \"pp512_max\": %.2f, \"pp512_steps\": %u, "
                           "\"tg128_tokens_per_s\": %.2f, \"tg128_min\": %.2f, \"tg128_max\": %.2f, "
                           "\"decode_gb_per_s\": %.2f, \"decode_over_bandwidth\": %.3f, "
                           "\"prefill_gflop_per_s\": %.1f, \"prefill_over_peak\": %.4f, "
                           "\"llama_decode_over_bandwidth\": %.2f, \"llama_prefill_over_peak\": %.2f, "
                           "\"vs_llama_decode\": %.3f, \"vs_llama_prefill\": %.3f}",
                        first ? "" : ",", w->a->shape, w->a->dtype, w->bytes / 1048576.0, w->n, w->pp_med,
                        vmin(w->pp, w->n), vmax(w->pp, w->n), w->pp_steps, w->tg_med, vmin(w->tg, w->n),
                        vmax(w->tg, w->n), w->dec_gbs, w->dec_ratio, w->pf_gflops, w->pf_ratio, w->a->dec_ratio,
                        w->a->pf_ratio, w->vs_dec, w->vs_pf);
                first = false;
            }
            fprintf(f, "\n]}\n");
            if (fclose(f))
                failures++;
        }
    }
    free(rows);
    return failures ? 1 : 0;
}

/* ---- main ----------------------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: rill-bench-engine [options]\n"
            "  --models-dir DIR        where the benchmark models are (made if missing; default build/bench-models)\n"
            "  --json FILE             write the rows as JSON\n"
            "  --threads N             compute threads of the one-worker figures (default: every core)\n"
            "  --quick                 smoke run: batches 1,8, 2 short runs, compare at 8\n"
            "  --models LIST           24M,134M (default both)\n"
            "  --dtypes LIST           f32,f16,q8_0,q6_K,q5_K_M,q4_K_M,q4_0 (the default), bf16, q4_K\n"
            "  --batches LIST          concurrent sequences (default 1,8,32,64)\n"
            "  --runs N                timed windows per figure, the median is reported (default 5)\n"
            "  --run-seconds S         length of one decode window (default 0.4)\n"
            "  --compare-batches LIST  sequences for 1 worker x 2 threads vs 2 workers x 1 thread (default 8,32)\n"
            "  --no-compare            skip that comparison\n"
            "  --mkmodel PATH          rill-mkmodel to make missing models (default: next to this binary)\n"
            "  --vs-llama              instead: pp512 and tg128 as llama-bench, against ANCHORS.md's llama.cpp\n"
            "                          ratios (decode / read bandwidth, prefill / FMA peak, measured here too)\n"
            "  --vs-shapes LIST        small-134m,llama3-1b (default both)\n"
            "  --vs-dtypes LIST        f16,q8_0,q6_K,q5_K_M,q4_K_M,q4_0 (default all)\n"
            "  --reps N                --vs-llama repetitions, alternated over the files (default 3)\n"
            "  --vs-json FILE, --vs-table FILE  where --vs-llama writes its JSON and markdown table\n"
            "  --isa avx2|scalar       kernels of a narrower instruction set than the CPU's (A/B of the kernels)\n"
            "  --no-kernels            skip the F32 matrix kernels alone against the FMA peak (run first when\n"
            "                          134M is among the models)\n"
            "  --kernels-only          only that; --kern-json FILE writes it as JSON\n");
}

int main(int argc, char **argv)
{
    char mk[PATH_MAX];
    default_mkmodel(mk, sizeof mk);
    struct opts o = {.models_dir = "build/bench-models", .mkmodel = mk, .threads = 0, .compare = true,
                     .model_on = {true, true}, .dtype_on = {true, true, true, true, true, true, true},
                     .batches = {1, 8, 32, 64}, .n_batches = 4, .cmp_batches = {8, 32}, .n_cmp = 2,
                     .runs = 5, .run_s = 0.4, .kernels = true};
    bool runs_given = false, batches_given = false, cmp_given = false, rs_given = false, vs = false;
    struct vs_opts vo = {.shape_on = {true, true}, .dtype_on = {true, true, true, true, true, true}, .reps = 3};
    enum { O_DIR = 256, O_JSON, O_THREADS, O_QUICK, O_MODELS, O_DTYPES, O_BATCHES, O_RUNS, O_RUNS_S, O_CMP,
           O_NOCMP, O_MK, O_HELP, O_VS, O_VS_SHAPES, O_VS_DTYPES, O_REPS, O_VS_JSON, O_VS_TABLE, O_ISA,
           O_NOKERN, O_KERN_ONLY, O_KERN_JSON };
    static const struct option lo[] = {
        {"models-dir", 1, 0, O_DIR}, {"json", 1, 0, O_JSON},       {"threads", 1, 0, O_THREADS},
        {"quick", 0, 0, O_QUICK},    {"models", 1, 0, O_MODELS},   {"dtypes", 1, 0, O_DTYPES},
        {"batches", 1, 0, O_BATCHES}, {"runs", 1, 0, O_RUNS},      {"run-seconds", 1, 0, O_RUNS_S},
        {"compare-batches", 1, 0, O_CMP}, {"no-compare", 0, 0, O_NOCMP}, {"mkmodel", 1, 0, O_MK},
        {"help", 0, 0, O_HELP},      {"vs-llama", 0, 0, O_VS},     {"vs-shapes", 1, 0, O_VS_SHAPES},
        {"vs-dtypes", 1, 0, O_VS_DTYPES}, {"reps", 1, 0, O_REPS},  {"vs-json", 1, 0, O_VS_JSON},
        {"vs-table", 1, 0, O_VS_TABLE}, {"isa", 1, 0, O_ISA}, {"no-kernels", 0, 0, O_NOKERN},
        {"kernels-only", 0, 0, O_KERN_ONLY}, {"kern-json", 1, 0, O_KERN_JSON}, {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case O_DIR: o.models_dir = optarg; break;
        case O_JSON: o.json = optarg; break;
        case O_THREADS: o.threads = atoi(optarg); break;
        case O_QUICK: o.quick = true; break;
        case O_MODELS:
            if (!parse_names(optarg, shape_names, 2, o.model_on)) {
                fprintf(stderr, "rill-bench-engine: --models takes 24M,134M\n");
                return 2;
            }
            break;
        case O_DTYPES:
            if (!parse_names(optarg, dtype_names, N_DTYPES, o.dtype_on)) {
                fprintf(stderr, "rill-bench-engine: --dtypes takes f32,f16,q8_0,q6_K,q5_K_M,q4_K_M,q4_0,bf16,q4_K\n");
                return 2;
            }
            break;
        case O_BATCHES:
            if (!parse_list(optarg, o.batches, &o.n_batches, MAX_BATCHES)) {
                fprintf(stderr, "rill-bench-engine: bad --batches '%s'\n", optarg);
                return 2;
            }
            batches_given = true;
            break;
        case O_RUNS:
            o.runs = atoi(optarg);
            if (o.runs < 1 || o.runs > MAX_RUNS) {
                fprintf(stderr, "rill-bench-engine: --runs takes 1..%d\n", MAX_RUNS);
                return 2;
            }
            runs_given = true;
            break;
        case O_RUNS_S:
            o.run_s = atof(optarg);
            rs_given = true;
            if (!(o.run_s > 0)) {
                fprintf(stderr, "rill-bench-engine: bad --run-seconds\n");
                return 2;
            }
            break;
        case O_CMP:
            if (!parse_list(optarg, o.cmp_batches, &o.n_cmp, MAX_BATCHES)) {
                fprintf(stderr, "rill-bench-engine: bad --compare-batches '%s'\n", optarg);
                return 2;
            }
            cmp_given = true;
            break;
        case O_NOCMP: o.compare = false; break;
        case O_NOKERN: o.kernels = false; break;
        case O_KERN_ONLY: o.kernels_only = true; break;
        case O_KERN_JSON: o.kern_json = optarg; break;
        case O_MK: o.mkmodel = optarg; break;
        case O_HELP: usage(stdout); return 0;
        case O_VS: vs = true; break;
        case O_VS_SHAPES:
            if (!parse_names(optarg, vs_shapes, VS_SHAPES, vo.shape_on)) {
                fprintf(stderr, "rill-bench-engine: --vs-shapes takes small-134m,llama3-1b\n");
                return 2;
            }
            break;
        case O_VS_DTYPES:
            if (!parse_names(optarg, vs_dtypes, VS_DTYPES, vo.dtype_on)) {
                fprintf(stderr, "rill-bench-engine: --vs-dtypes takes f16,q8_0,q6_K,q5_K_M,q4_K_M,q4_0\n");
                return 2;
            }
            break;
        case O_REPS:
            vo.reps = atoi(optarg);
            if (vo.reps < 1 || vo.reps > VS_MAX_REPS) {
                fprintf(stderr, "rill-bench-engine: --reps takes 1..%d\n", VS_MAX_REPS);
                return 2;
            }
            break;
        case O_VS_JSON: vo.json = optarg; break;
        case O_VS_TABLE: vo.table = optarg; break;
        case O_ISA:
            if (strcmp(optarg, "avx2") && strcmp(optarg, "scalar")) {
                fprintf(stderr, "rill-bench-engine: --isa takes avx2 or scalar\n");
                return 2;
            }
            kern_set_isa(strcmp(optarg, "avx2") ? KERN_SCALAR : KERN_AVX2); /* before any matrix is packed */
            break;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }
    if (o.quick) {
        if (!runs_given)
            o.runs = 2;
        if (!rs_given)
            o.run_s = 0.15;
        if (!batches_given) {
            o.batches[0] = 1, o.batches[1] = 8;
            o.n_batches = 2;
        }
        if (!cmp_given) {
            o.cmp_batches[0] = 8;
            o.n_cmp = 1;
        }
    }
    rlog_init("bench", NULL, RLOG_WARN, false, 2);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    uint32_t threads = o.threads > 0 ? (uint32_t)o.threads : (uint32_t)(ncpu > 0 ? ncpu : 1);
    if (vs)
        return vs_main(&o, &vo, threads);
    uint32_t max_batch = 1;
    for (uint32_t i = 0; i < o.n_batches; i++)
        max_batch = o.batches[i] > max_batch ? o.batches[i] : max_batch;
    printf("rill-bench-engine: %u threads (%ld cores), kernels %s, %d runs of ~%.2f s per figure (median), "
           "%d-token prompts, prefill of %d tokens%s\n",
           threads, ncpu, kern_isa_name(kern_isa()), o.runs, o.run_s, PROMPT, PREFILL, o.quick ? " [quick]" : "");

    struct row *rows = calloc(2 * N_DTYPES * MAX_BATCHES, sizeof *rows);
    int n_rows = 0, failures = 0;
    uint64_t t_start = clock_ns();
    struct kb_result kb = {0};
    if (o.kernels_only || (o.kernels && o.model_on[1])) {
        int rc = kernel_bench(threads, o.runs, o.quick ? 0.05 : 0.2, &kb);
        if (rc) {
            fprintf(stderr, "rill-bench-engine: kernels: %s\n", rill_err_name(rc));
            failures++;
        } else if (o.kern_json && (rc = write_kern_json(o.kern_json, &kb)) != 0) {
            fprintf(stderr, "rill-bench-engine: writing %s: %s\n", o.kern_json, rill_err_name(rc));
            failures++;
        } else if (o.kern_json) {
            printf("wrote %s\n", o.kern_json);
        }
        if (o.kernels_only) {
            free(rows);
            return failures ? 1 : 0;
        }
    }
    for (int si = 0; si < 2; si++) {
        if (!o.model_on[si])
            continue;
        for (int di = 0; di < N_DTYPES; di++) {
            if (!o.dtype_on[di])
                continue;
            const char *shape = shape_names[si], *dtype = dtype_names[di];
            char path[PATH_MAX];
            if (ensure_model(&o, shape, dtype, path, sizeof path)) {
                failures++;
                continue;
            }
            struct engine e;
            uint64_t tl = clock_ns();
            if (open_engine(path, (int)threads, max_batch, &e)) {
                failures++;
                continue;
            }
            double load_s = (double)(clock_ns() - tl) / 1e9;
            struct cost k = model_cost(e.model);
            double pf[MAX_RUNS];
            int rc = prefill_bench(&e, o.runs, pf);
            double pf_med = rc ? NAN : median(pf, o.runs);
            printf("\n%s %s: %.1f MB of packed weights, %.0f MFLOP per token; loaded in %.1f s; "
                   "prefill of %d tokens: %.1f tok/s [%.1f-%.1f]\n",
                   shape, dtype, k.weight_bytes / 1e6, k.flops_per_token / 1e6, load_s, PREFILL, pf_med,
                   vmin(pf, o.runs), vmax(pf, o.runs));
            printf("  %5s %11s %19s %11s %8s %8s %8s %7s %7s  %9s %12s\n", "batch", "decode t/s", "[min-max]",
                   "prefill t/s", "wt GB/s", "kv GB/s", "GFLOP/s", "÷ peak", "others", "target", "vs target");
            for (uint32_t bi = 0; bi < o.n_batches; bi++) {
                uint32_t b = o.batches[bi];
                struct row *r = &rows[n_rows];
                memset(r, 0, sizeof *r);
                r->model = shape;
                r->dtype = dtype;
                r->batch = b;
                decode_bench(&e, b, o.runs, o.run_s, 0, &r->d);
                if (r->d.rc) {
                    fprintf(stderr, "rill-bench-engine: %s %s batch %u: %s\n", shape, dtype, b,
                            rill_err_name(r->d.rc));
                    failures++;
                    drain(&e);
                    continue;
                }
                r->decode = median(r->d.rate, r->d.runs);
                /* batch 1: the 128-token prompt; batch n: n prompts of 32 */
                r->prefill = b == 1 ? pf_med : r->d.prefill_rate;
                r->prefill_prompt = b == 1 ? PREFILL : (double)b * PROMPT;
                double steps_s = r->decode / (r->d.mean_batch > 0 ? r->d.mean_batch : b);
                r->weight_gbs = steps_s * k.weight_bytes / 1e9;
                r->kv_gbs = r->decode * k.kv_bytes_per_pos * r->d.mean_pos / 1e9;
                r->gflops = r->decode * (k.flops_per_token + k.attn_flops_per_pos * r->d.mean_pos) / 1e9;
                const struct target *t = find_target(shape, dtype);
                r->target = t && b == 1 ? t->single : t && b == 32 ? t->agg32 : 0;
                r->peak = kb.peak;
                char pk[16] = "-";
                if (kb.peak > 0)
                    snprintf(pk, sizeof pk, "%.1f%%", 100 * r->gflops / kb.peak);
                printf("  %5u %11.1f %8s%8.1f-%-8.1f %11.1f %8.2f %8.2f %8.2f %7s %7.2f", b, r->decode, "",
                       vmin(r->d.rate, r->d.runs), vmax(r->d.rate, r->d.runs), r->prefill, r->weight_gbs, r->kv_gbs,
                       r->gflops, pk, r->d.others);
                print_gap(r->decode, r->target);
                printf("\n");
                fflush(stdout);
                n_rows++;
            }
            engine_close(&e);

            if (!o.compare)
                continue;
            for (uint32_t ci = 0; ci < o.n_cmp; ci++) {
                uint32_t b = o.cmp_batches[ci];
                /* One worker, 2 threads: the row above when it ran with 2
                 * threads at this batch, else measured now. */
                struct row *same = NULL;
                for (int i = 0; i < n_rows; i++)
                    if (rows[i].model == shape && rows[i].dtype == dtype && rows[i].batch == b)
                        same = &rows[i];
                double one = NAN;
                uint32_t steps = same ? same->d.steps : 0;
                if (same && threads == 2) {
                    one = same->decode;
                } else {
                    struct engine e2;
                    struct dec d;
                    if (open_engine(path, 2, b, &e2) == 0) {
                        decode_bench(&e2, b, o.runs, o.run_s, 0, &d);
                        if (!d.rc) {
                            one = median(d.rate, d.runs);
                            steps = d.steps;
                        }
                        engine_close(&e2);
                    }
                }
                double two = NAN, wall = NAN, two_others = NAN;
                if (!steps)
                    steps = 10;
                int rc2 = two_workers(path, b, o.runs, steps, &two, &wall, &two_others);
                if (rc2) {
                    fprintf(stderr, "rill-bench-engine: two workers, %s %s, %u sequences: %s\n", shape, dtype, b,
                            rill_err_name(rc2));
                    failures++;
                    continue;
                }
                printf("  %u sequences: 1 worker x 2 threads %.1f tok/s (others %.2f), 2 workers x 1 thread %.1f tok/s "
                       "(%.1f over the wall clock; others %.2f): %.2fx\n",
                       b, one, same ? same->d.others : NAN, two, wall, two_others, two / one);
                fflush(stdout);
                if (same) {
                    same->cmp_one = one;
                    same->cmp_two = two;
                    same->cmp_two_wall = wall;
                    same->cmp_two_others = two_others;
                }
            }
        }
    }

    /* Summary against the targets. */
    printf("\ntargets (1 worker x 2 threads, %d-token prompts):\n", PROMPT);
    for (size_t ti = 0; ti < sizeof targets / sizeof *targets; ti++) {
        const struct target *t = &targets[ti];
        const struct row *r1 = NULL, *r32 = NULL;
        for (int i = 0; i < n_rows; i++)
            if (!strcmp(rows[i].model, t->model) && !strcmp(rows[i].dtype, t->dtype)) {
                if (rows[i].batch == 1)
                    r1 = &rows[i];
                if (rows[i].batch == 32)
                    r32 = &rows[i];
            }
        printf("  %-4s %-4s single-stream ", t->model, t->dtype);
        if (r1)
            printf("%7.1f / %4.0f tok/s (%+4.0f%%)", r1->decode, t->single, (r1->decode / t->single - 1) * 100);
        else
            printf("%26s", "not measured");
        printf("   32 sequences ");
        if (r32)
            printf("%7.1f / %4.0f tok/s (%+4.0f%%)", r32->decode, t->agg32, (r32->decode / t->agg32 - 1) * 100);
        else
            printf("%26s", "not measured");
        printf("\n");
    }
    if (threads != 2)
        printf("  (measured with %u threads, not 2)\n", threads);
    printf("total %.0f s\n", (double)(clock_ns() - t_start) / 1e9);

    if (o.json) {
        int rc = write_json(o.json, rows, n_rows, &o, threads);
        if (rc) {
            fprintf(stderr, "rill-bench-engine: writing %s: %s\n", o.json, rill_err_name(rc));
            failures++;
        } else {
            printf("wrote %s\n", o.json);
        }
    }
    free(rows);
    return failures ? 1 : 0;
}
