/* rill-worker — generates tokens.
 *
 *   rill-worker [--config FILE] [--key value ...]          serve (see serve.h)
 *   rill-worker --model M --prompt TEXT [-n N] [--json] [--top-logprobs K]
 *               [--temperature T] [--top-p P] [--top-k K] [--min-p P]
 *               [--repeat-penalty R] [--presence-penalty P] [--frequency-penalty F]
 *               [--seed S] [--stop STR]...
 *                                                          one generation to stdout
 *   rill-worker --model M --tokenize TEXT                  token ids, one line
 */
#include "common/memtune.h"
#include "common/clock.h"
#include "common/config.h"
#include "common/err.h"
#include "common/jsonw.h"
#include "common/tokjson.h"
#include "common/log.h"
#include "common/sampling.h"
#include "common/procstat.h"
#include "common/rundir.h"
#include "engine.h"
#include "serve.h"
#include "tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct cli {
    const char *prompt, *tokenize;
    long n;
    bool json, help;
    struct proto_submit req;
    bool has_seed;
};

static int parse_num(const char *s, double lo, double hi, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !isfinite(v) || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* Arguments that are not config keys. */
static int cli_arg(int argc, char **argv, int i, void *ctx)
{
    struct cli *cl = ctx;
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    double d;
    if (!strcmp(a, "--json")) {
        cl->json = true;
        return 1;
    }
    if (!strcmp(a, "--ignore-eos")) {
        cl->req.ignore_eos = true;
        return 1;
    }
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
        cl->help = true;
        return 1;
    }
    if (!v)
        return 0;
    if (!strcmp(a, "--prompt")) { cl->prompt = v; return 2; }
    if (!strcmp(a, "--tokenize")) { cl->tokenize = v; return 2; }
#define NUM(flag, lo, hi, dst)                                                   \
    if (!strcmp(a, flag)) {                                                      \
        if (parse_num(v, lo, hi, &d)) {                                          \
            fprintf(stderr, "rill-worker: bad value '%s' for %s\n", v, flag);    \
            return RILL_E_BAD_CONFIG;                                            \
        }                                                                        \
        dst;                                                                     \
        return 2;                                                                \
    }
/* The sampling flags take the same limits as the gateway (common/sampling.h). */
#define NUM_P(flag, sp, dst) NUM(flag, sampling_ranges[sp].lo, sampling_ranges[sp].hi, dst)
    NUM("-n", 1, 1e7, cl->n = (long)d)
    NUM("--max-tokens", 1, 1e7, cl->n = (long)d)
    NUM_P("--temperature", SAMPLING_TEMPERATURE, cl->req.temperature = (float)d)
    NUM_P("--top-p", SAMPLING_TOP_P, cl->req.top_p = (float)d)
    NUM_P("--top-k", SAMPLING_TOP_K, cl->req.top_k = (uint32_t)d)
    NUM_P("--min-p", SAMPLING_MIN_P, cl->req.min_p = (float)d)
    NUM_P("--repeat-penalty", SAMPLING_REPETITION_PENALTY, cl->req.repetition_penalty = (float)d)
    NUM_P("--presence-penalty", SAMPLING_PRESENCE_PENALTY, cl->req.presence_penalty = (float)d)
    NUM_P("--frequency-penalty", SAMPLING_FREQUENCY_PENALTY, cl->req.frequency_penalty = (float)d)
    NUM_P("--top-logprobs", SAMPLING_TOP_LOGPROBS, cl->req.top_logprobs = (uint32_t)d)
    NUM("--seed", 0, 1.8e19, (cl->req.seed = strtoull(v, NULL, 10), cl->has_seed = true))
#undef NUM
#undef NUM_P
    if (!strcmp(a, "--stop")) {
        if (cl->req.n_stop >= PROTO_MAX_STOP || strlen(v) == 0 || strlen(v) > PROTO_STOP_LEN) {
            fprintf(stderr, "rill-worker: at most %d stop strings of 1..%d bytes\n", PROTO_MAX_STOP, PROTO_STOP_LEN);
            return RILL_E_BAD_CONFIG;
        }
        snprintf(cl->req.stop[cl->req.n_stop++], PROTO_STOP_LEN + 1, "%s", v);
        return 2;
    }
    return 0;
}

/* --- one generation to stdout -------------------------------------------------------- */

struct standalone {
    const struct tok *tok;
    bool json;
    uint64_t t0;
    uint32_t n;
    double first_ms, sum_ms;
    double lat[65536];
    int finish;
    int error;
};

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* An alternative's text in the --json lines. */
static bool top_piece(const void *ctx, int32_t id, const char **bytes, size_t *len)
{
    return tok_piece(ctx, id, bytes, len) == 0;
}

static int print_token(void *ctx, const struct proto_token *t)
{
    struct standalone *sa = ctx;
    double ms = t->latency_us / 1000.0;
    if (t->token_id >= 0) {
        if (sa->n == 0)
            sa->first_ms = ms;
        if (sa->n < sizeof sa->lat / sizeof sa->lat[0])
            sa->lat[sa->n] = ms;
        sa->sum_ms += ms;
        sa->n++;
    }
    if (t->flags & PROTO_TOK_LAST)
        sa->finish = proto_tok_finish(t->flags);
    if (t->flags & PROTO_TOK_ERROR)
        sa->error = t->error;
    if (!sa->json) {
        fwrite(t->text, 1, t->text_len, stdout);
        fflush(stdout);
        return 0;
    }
    if (t->token_id < 0 && !t->text_len)
        return 0;
    char buf[8192];
    struct jsonw w;
    jsonw_init(&w, buf, sizeof buf);
    jsonw_obj_begin(&w);
    const struct tokjson_opts o = {.logprob_digits = 6, .piece = top_piece, .piece_ctx = sa->tok};
    tokjson_fields(&w, t, &o);
    if (t->flags & PROTO_TOK_LAST)
        jsonw_key_str(&w, "finish", proto_finish_name(proto_tok_finish(t->flags)));
    jsonw_obj_end(&w);
    fwrite(buf, 1, jsonw_len(&w), stdout);
    fputc('\n', stdout);
    fflush(stdout);
    return 0;
}

static void no_flush(void *ctx) { (void)ctx; }

static int run_standalone(struct engine *e, struct cli *cl)
{
    struct standalone *sa = calloc(1, sizeof *sa);
    if (!sa)
        return 1;
    sa->tok = e->model->tok;
    sa->json = cl->json;
    struct proto_submit *r = &cl->req;
    r->id = 1;
    r->prompt = cl->prompt;
    r->prompt_len = (uint32_t)strlen(cl->prompt);
    r->max_tokens = (uint32_t)cl->n;
    r->has_seed = cl->has_seed;
    char why[256] = "";
    uint64_t t0 = clock_ns();
    int rc = sched_submit(e->sched, r, t0, why, sizeof why);
    if (rc) {
        fprintf(stderr, "rill-worker: request rejected: %s: %s\n", rill_err_name(rc), why);
        free(sa);
        return 2;
    }
    struct sched_out out = {sa, print_token, no_flush};
    while (sched_busy(e->sched)) {
        int n = sched_step(e->sched, &out);
        if (n < 0) {
            fprintf(stderr, "rill-worker: step failed: %s\n", rill_err_name(n));
            free(sa);
            return 1;
        }
    }
    double total_ms = clock_ms_since(t0);
    uint32_t k = sa->n < 65536 ? sa->n : 65536;
    qsort(sa->lat, k, sizeof sa->lat[0], cmp_double);
    double p95 = k ? sa->lat[procstat_rank(k, 0.95)] : 0;
    double decode_ms = sa->sum_ms - sa->first_ms;
    double tps = sa->n > 1 && decode_ms > 0 ? (sa->n - 1) * 1000.0 / decode_ms : 0;
    if (cl->json) {
        printf("{\"summary\":{\"total_tokens\":%u,\"time_to_first_token_ms\":%.3f,\"average_token_latency_ms\":%.3f,"
               "\"p95_token_latency_ms\":%.3f,\"decode_tokens_per_s\":%.2f,\"total_ms\":%.3f,\"finish\":\"%s\"}}\n",
               sa->n, sa->first_ms, sa->n ? sa->sum_ms / sa->n : 0, p95, tps, total_ms,
               proto_finish_name((enum proto_finish)sa->finish));
    } else {
        printf("\n");
    }
    fprintf(stderr, "rill-worker: %u tokens, first after %.1f ms, then %.2f tokens/s (%.1f ms/token, p95 %.1f), "
                    "finish: %s\n",
            sa->n, sa->first_ms, tps, sa->n > 1 ? decode_ms / (sa->n - 1) : 0, p95,
            proto_finish_name((enum proto_finish)sa->finish));
    int err = sa->error;
    free(sa);
    return err ? 1 : 0;
}

static int run_tokenize(const struct model *m, const char *text)
{
    size_t len = strlen(text), cap = len + 16, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids)
        return 1;
    int rc = tok_encode(m->tok, text, len, tok_add_bos(m->tok), ids, cap, &n);
    if (rc) {
        fprintf(stderr, "rill-worker: tokenize failed: %s\n", rill_err_name(rc));
        free(ids);
        return 1;
    }
    for (size_t i = 0; i < n; i++)
        printf("%s%d", i ? " " : "", ids[i]);
    printf("\n");
    free(ids);
    return 0;
}

int main(int argc, char **argv)
{
    memtune_apply(argv); /* first: it may re-execute the process (common/memtune.h) */
    struct rill_config c;
    cfg_defaults(&c);
    struct cli cl = {.n = 64};
    cl.req.temperature = PROTO_DEFAULT_TEMPERATURE;
    cl.req.top_p = PROTO_DEFAULT_TOP_P;
    cl.req.top_k = PROTO_DEFAULT_TOP_K;
    cl.req.min_p = PROTO_DEFAULT_MIN_P;
    cl.req.repetition_penalty = PROTO_DEFAULT_REP_PENALTY;
    char why[512] = "";
    int rc = cfg_parse_args(&c, argc, argv, cli_arg, &cl, why, sizeof why);
    if (rc) {
        fprintf(stderr, "rill-worker: %s\n", why);
        return 2;
    }
    if (cl.help) {
        printf("usage: rill-worker [--config FILE] [--key value ...]\n"
               "       rill-worker --model M --prompt TEXT [-n N] [--json] [--top-logprobs K] [--temperature T]\n"
               "                   [--top-p P] [--top-k K] [--min-p P] [--repeat-penalty R] [--presence-penalty P]\n"
               "                   [--frequency-penalty F] [--seed S] [--stop STR] [--ignore-eos]\n"
               "       rill-worker --model M --tokenize TEXT\n\nconfig keys:");
        cfg_print_help();
        return 0;
    }
    char id[16];
    snprintf(id, sizeof id, "w%lld", (long long)c.worker_id);
    cfg_setup_log(&c, "worker", id);
    bool oneshot = cl.prompt || cl.tokenize;
    if (oneshot) {
        c.max_batch = c.max_batch < 4 ? c.max_batch : 4;
        if (!c.kv_cache_bytes)
            c.kv_cache_bytes = 64 << 20;
    }
    struct engine e;
    rc = engine_open(&c, isatty(2), &e, why, sizeof why);
    if (rc) {
        fprintf(stderr, "rill-worker: %s: %s\n", c.model, why[0] ? why : rill_err_name(rc));
        if (oneshot || !c.control[0])
            return rc == RILL_E_IO ? 3 : 4;
        /* Supervised: a restart would load the same file again. */
        char run_dir[CFG_STR_MAX];
        cfg_run_dir(&c, run_dir, sizeof run_dir);
        rundir_write_cause(run_dir, id, "model: %s: %s", c.model, why[0] ? why : rill_err_name(rc));
        return RUNDIR_EXIT_STARTUP;
    }
    int status;
    if (cl.tokenize)
        status = run_tokenize(e.model, cl.tokenize);
    else if (cl.prompt)
        status = run_standalone(&e, &cl);
    else
        status = serve_run(&c, &e) ? (c.control[0] ? RUNDIR_EXIT_STARTUP : 1) : 0;
    engine_close(&e);
    return status;
}
