/* rill-bench-memory — the non-streaming baseline of make bench-memory: the
 * engine alone, in this one process, generating N given sequences to their
 * end, greedily.
 *
 *   rill-bench-memory --requests FILE --json OUT [--config FILE] [--key value ...]
 *
 * FILE is a JSON array of {"prompt": TEXT, "max_tokens": N}.  Every request
 * is submitted at once, then the scheduler steps until all have ended (as a
 * worker does with N streams arriving together); nothing is streamed
 * anywhere.  The config keys are the worker's (cfg_parse_args, the same
 * defaults), and the engine is built by engine_open as the worker builds
 * it: give it the served worker's flags and it holds the same KV cache,
 * context, batch and scratch — no standalone shrinking (rill-worker
 * --prompt sizes its cache down; this does not).
 *
 * OUT: {"peak_rss_bytes": VmHWM of this process at the end, "rss_bytes",
 * "memory": engine_memory()'s parts, "kv_capacity_bytes", "context",
 * "max_batch", "threads", "sequences": [{"ids": [...], "finish": NAME}]}.
 * Exit 0, or 1 when a request is refused or a step fails, 2 on bad usage.
 */
#include "common/config.h"
#include "common/clock.h"
#include "common/err.h"
#include "common/procstat.h"
#include "common/proto.h"
#include "worker/engine.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cli {
    const char *requests, *json;
};

struct seq {
    int32_t *ids;
    uint32_t n, cap;
    int finish;       /* enum proto_finish, -1 until the last record */
    int error;
};

struct run {
    struct seq *seqs;
    uint32_t n;
};

static int cli_arg(int argc, char **argv, int i, void *ctx)
{
    struct cli *cl = ctx;
    if (i + 1 >= argc)
        return 0;
    if (!strcmp(argv[i], "--requests")) {
        cl->requests = argv[i + 1];
        return 2;
    }
    if (!strcmp(argv[i], "--json")) {
        cl->json = argv[i + 1];
        return 2;
    }
    return 0;
}

static int on_token(void *ctx, const struct proto_token *t)
{
    struct run *r = ctx;
    if (t->req_id == 0 || t->req_id > r->n)
        return 0;
    struct seq *s = &r->seqs[t->req_id - 1];
    if (t->token_id >= 0) {
        if (s->n == s->cap) {
            uint32_t cap = s->cap ? 2 * s->cap : 64;
            int32_t *ids = realloc(s->ids, cap * sizeof *ids);
            if (!ids)
                return RILL_E_NOMEM;
            s->ids = ids;
            s->cap = cap;
        }
        s->ids[s->n++] = t->token_id;
    }
    if (t->flags & PROTO_TOK_LAST)
        s->finish = (int)proto_tok_finish(t->flags);
    if (t->flags & PROTO_TOK_ERROR)
        s->error = t->error;
    return 0;
}

static void no_flush(void *ctx) { (void)ctx; }

static cJSON *read_requests(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = len >= 0 ? malloc((size_t)len + 1) : NULL;
    cJSON *j = NULL;
    if (buf && fread(buf, 1, (size_t)len, f) == (size_t)len) {
        buf[len] = 0;
        j = cJSON_Parse(buf);
    }
    free(buf);
    fclose(f);
    if (j && !cJSON_IsArray(j)) {
        cJSON_Delete(j);
        j = NULL;
    }
    return j;
}

static int write_result(const char *path, const struct engine *e, const struct run *r, double secs)
{
    struct engine_mem em;
    engine_memory(e, &em);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "peak_rss_bytes", (double)procstat_peak_rss(0));
    cJSON_AddNumberToObject(o, "rss_bytes", (double)procstat_rss(0));
    cJSON *m = cJSON_AddObjectToObject(o, "memory");
    cJSON_AddNumberToObject(m, "weights", (double)em.weights);
    cJSON_AddNumberToObject(m, "kv_cache", (double)em.kv_cache);
    cJSON_AddNumberToObject(m, "prefix_cache", (double)em.prefix_cache);
    cJSON_AddNumberToObject(m, "activations", (double)em.activations);
    struct sched_stats st;
    sched_stats(e->sched, &st);
    cJSON_AddNumberToObject(o, "kv_capacity_bytes", (double)st.kv_total);
    cJSON_AddNumberToObject(o, "context", e->max_ctx);
    cJSON_AddNumberToObject(o, "threads", e->threads);
    cJSON_AddNumberToObject(o, "seconds", secs);
    cJSON *seqs = cJSON_AddArrayToObject(o, "sequences");
    for (uint32_t i = 0; i < r->n; i++) {
        cJSON *s = cJSON_CreateObject();
        cJSON_AddItemToObject(s, "ids", cJSON_CreateIntArray((const int *)r->seqs[i].ids, (int)r->seqs[i].n));
        cJSON_AddStringToObject(s, "finish", proto_finish_name((enum proto_finish)r->seqs[i].finish));
        cJSON_AddItemToArray(seqs, s);
    }
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    FILE *f = text ? fopen(path, "w") : NULL;
    int ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f))
        ok = 0;
    free(text);
    return ok ? 0 : RILL_E_IO;
}

int main(int argc, char **argv)
{
    struct rill_config c;
    cfg_defaults(&c);
    struct cli cl = {0};
    char why[512] = "";
    int rc = cfg_parse_args(&c, argc, argv, cli_arg, &cl, why, sizeof why);
    if (rc || !cl.requests || !cl.json) {
        fprintf(stderr, "rill-bench-memory: %s\nusage: rill-bench-memory --requests FILE --json OUT "
                        "[--config FILE] [--key value ...] (the worker's config keys)\n",
                rc ? why : "--requests and --json are needed");
        return 2;
    }
    cfg_setup_log(&c, "bench-memory", "b0");
    cJSON *reqs = read_requests(cl.requests);
    if (!reqs) {
        fprintf(stderr, "rill-bench-memory: %s: not a JSON array of requests\n", cl.requests);
        return 2;
    }
    struct engine e;
    rc = engine_open(&c, false, &e, why, sizeof why);
    if (rc) {
        fprintf(stderr, "rill-bench-memory: %s: %s\n", c.model, why[0] ? why : rill_err_name(rc));
        cJSON_Delete(reqs);
        return 1;
    }
    struct run r = {.n = (uint32_t)cJSON_GetArraySize(reqs)};
    r.seqs = calloc(r.n ? r.n : 1, sizeof *r.seqs);
    int status = r.seqs ? 0 : 1;
    uint64_t t0 = clock_ns();
    for (uint32_t i = 0; !status && i < r.n; i++) {
        const cJSON *q = cJSON_GetArrayItem(reqs, (int)i);
        const cJSON *p = cJSON_GetObjectItem(q, "prompt"), *mt = cJSON_GetObjectItem(q, "max_tokens");
        if (!cJSON_IsString(p) || !cJSON_IsNumber(mt) || mt->valuedouble < 1) {
            fprintf(stderr, "rill-bench-memory: request %u needs a prompt and max_tokens >= 1\n", i);
            status = 2;
            break;
        }
        r.seqs[i].finish = -1;
        /* Greedy, as the stack is asked for: the same ids either way. */
        struct proto_submit q_ = {
            .id = i + 1, .prompt = p->valuestring, .prompt_len = (uint32_t)strlen(p->valuestring),
            .max_tokens = (uint32_t)mt->valuedouble, .temperature = 0, .top_p = PROTO_DEFAULT_TOP_P,
            .top_k = PROTO_DEFAULT_TOP_K, .min_p = PROTO_DEFAULT_MIN_P,
            .repetition_penalty = PROTO_DEFAULT_REP_PENALTY, .parse_special = true,
        };
        rc = sched_submit(e.sched, &q_, t0, why, sizeof why);
        if (rc) {
            fprintf(stderr, "rill-bench-memory: request %u refused: %s: %s\n", i, rill_err_name(rc), why);
            status = 1;
        }
    }
    struct sched_out out = {&r, on_token, no_flush};
    while (!status && sched_busy(e.sched)) {
        int n = sched_step(e.sched, &out);
        if (n < 0) {
            fprintf(stderr, "rill-bench-memory: step failed: %s\n", rill_err_name(n));
            status = 1;
        }
    }
    for (uint32_t i = 0; !status && i < r.n; i++)
        if (r.seqs[i].error || r.seqs[i].finish < 0) {
            fprintf(stderr, "rill-bench-memory: request %u ended with %s\n", i,
                    r.seqs[i].error ? rill_err_name(r.seqs[i].error) : "no last record");
            status = 1;
        }
    if (!status && write_result(cl.json, &e, &r, clock_ms_since(t0) / 1e3)) {
        fprintf(stderr, "rill-bench-memory: cannot write %s\n", cl.json);
        status = 1;
    }
    for (uint32_t i = 0; r.seqs && i < r.n; i++)
        free(r.seqs[i].ids);
    free(r.seqs);
    engine_close(&e);
    cJSON_Delete(reqs);
    return status;
}
