/* test_sched.c — the scheduler through its API: sched_submit (whole, or in
 * its two halves around prompt_tokenize), sched_step, sched_cancel, with the
 * records of a struct sched_out collected in memory.
 *
 * What a client relies on: a request ends exactly once, for the reason it
 * should (length, eos, stop, cancelled), its records are numbered 0..n-1
 * with FIRST on the first and LAST only on the last, its text is the
 * decoded tokens cut before a stop string with nothing held back lost, and
 * its tokens do not depend on what else the worker runs: not on the batch,
 * not on preemption and recompute, not on being resumed elsewhere with
 * `skip`.  Every bad request is refused with its own code.
 *
 * The engine is built by engine_open() from a config, as the worker does,
 * on models that $RILL_TEST_BUILD/rill-mkmodel (build/ by default) makes in
 * a temporary directory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/err.h"
#include "common/log.h"
#include "common/proto.h"
#include "worker/engine.h"
#include "worker/gguf.h"
#include "tools/lib/ggufw.h"
#include "worker/prompt.h"
#include "worker/sched.h"
#include "worker/tokenizer.h"
#include "testutil.h"

static char tmpdir[64];
static char model_path[160], nobos_path[160];

/* ---- models ------------------------------------------------------------------------- */

/* Copy a GGUF file with tokenizer.ggml.add_bos_token = false: a model whose
 * empty prompt is empty. */
static int copy_without_bos(const char *src, const char *dst)
{
    char why[256] = "";
    struct gguf *g;
    if (gguf_open(src, &g, why, sizeof why))
        return -1;
    struct gguf_writer *w;
    if (gguf_w_open(dst, 0, &w, why, sizeof why)) {
        gguf_close(g);
        return -1;
    }
    for (uint64_t i = 0; i < gguf_n_kv(g); i++) {
        const struct gguf_kv *kv = gguf_kv_at(g, i);
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)kv->key.len, kv->key.s);
        if (!strcmp(key, "general.alignment"))
            continue;
        if (!strcmp(key, "tokenizer.ggml.add_bos_token")) {
            gguf_w_kv_bool(w, key, false);
            continue;
        }
        switch (kv->type) {
        case GGUF_U8: gguf_w_kv_u8(w, key, (uint8_t)kv->v.u); break;
        case GGUF_I8: gguf_w_kv_i8(w, key, (int8_t)kv->v.i); break;
        case GGUF_U16: gguf_w_kv_u16(w, key, (uint16_t)kv->v.u); break;
        case GGUF_I16: gguf_w_kv_i16(w, key, (int16_t)kv->v.i); break;
        case GGUF_U32: gguf_w_kv_u32(w, key, (uint32_t)kv->v.u); break;
        case GGUF_I32: gguf_w_kv_i32(w, key, (int32_t)kv->v.i); break;
        case GGUF_U64: gguf_w_kv_u64(w, key, kv->v.u); break;
        case GGUF_I64: gguf_w_kv_i64(w, key, kv->v.i); break;
        case GGUF_F32: gguf_w_kv_f32(w, key, (float)kv->v.f); break;
        case GGUF_F64: gguf_w_kv_f64(w, key, kv->v.f); break;
        case GGUF_BOOL: gguf_w_kv_bool(w, key, kv->v.b); break;
        case GGUF_STR: gguf_w_kv_strn(w, key, kv->v.str.s, kv->v.str.len); break;
        case GGUF_ARR:
            if (kv->v.arr.type == GGUF_STR) {
                uint64_t n = kv->v.arr.n;
                const char **s = malloc(n * sizeof *s);
                uint32_t *l = malloc(n * sizeof *l);
                for (uint64_t k = 0; k < n; k++) {
                    struct gguf_str e = gguf_arr_str(kv, k);
                    s[k] = e.s;
                    l[k] = (uint32_t)e.len;
                }
                gguf_w_kv_arr_str(w, key, s, l, n);
                free(s);
                free(l);
            } else {
                gguf_w_kv_arr(w, key, kv->v.arr.type, kv->v.arr.data, kv->v.arr.n);
            }
            break;
        default: break;
        }
    }
    for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(g, i);
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.s);
        gguf_w_add_tensor(w, name, t->type, t->n_dims, t->ne);
    }
    for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(g, i);
        gguf_w_data(w, t->data, t->n_bytes);
    }
    int rc = gguf_w_finish(w);
    gguf_close(g);
    if (rc)
        fprintf(stderr, "copy_without_bos: %s\n", why);
    return rc ? -1 : 0;
}

static int setup(void **state)
{
    (void)state;
    rlog_init("test", NULL, RLOG_ERROR, false, 2);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/rill-test-sched-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    char corpus[128], cmd[1024];
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", tmpdir);
    if (tu_write_corpus(corpus))
        return -1;
    snprintf(model_path, sizeof model_path, "%s/tiny.gguf", tmpdir);
    snprintf(nobos_path, sizeof nobos_path, "%s/tiny-nobos.gguf", tmpdir);
    snprintf(cmd, sizeof cmd, "%s/rill-mkmodel --shape tiny --dtype f32 --seed 7 --corpus %s --out %s 2>%s/mk.log",
             tu_build_dir(), corpus, model_path, tmpdir);
    if (system(cmd) != 0) {
        fprintf(stderr, "failed: %s (build it first: make %s/rill-mkmodel)\n", cmd, tu_build_dir());
        return -1;
    }
    return copy_without_bos(model_path, nobos_path);
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- an engine and its output ------------------------------------------------------------ */

struct rec {
    uint64_t id;
    uint32_t pos;
    int32_t tok;
    uint32_t flags;
    int32_t error;
    uint16_t batch;
    uint16_t text_len;
    char text[PROTO_MAX_TOKEN_TEXT];
};

struct coll {
    struct rec *r;
    size_t n, cap;
    uint64_t flushes;
};

static int coll_emit(void *ctx, const struct proto_token *t)
{
    struct coll *c = ctx;
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 1024;
        c->r = realloc(c->r, c->cap * sizeof *c->r);
        assert_non_null(c->r);
    }
    struct rec *r = &c->r[c->n++];
    r->id = t->req_id;
    r->pos = t->position;
    r->tok = t->token_id;
    r->flags = t->flags;
    r->error = t->error;
    r->batch = t->batch;
    assert_true(t->text_len <= PROTO_MAX_TOKEN_TEXT);
    r->text_len = t->text_len;
    memcpy(r->text, t->text, t->text_len);
    return 0;
}

static void coll_flush(void *ctx) { ((struct coll *)ctx)->flushes++; }

struct rig {
    struct engine e;
    struct sched *s;
    struct coll c;
    struct sched_out out;
};

struct rig_opts {
    const char *model;
    int threads, max_batch, prefill_chunk, context, block_tokens;
    const char *kv_bytes;
    const char *target_latency_ms; /* NULL: 10000 */
    const char *max_step_ms;       /* NULL: the default */
};

static void rig_open(struct rig *r, const struct rig_opts *o)
{
    memset(r, 0, sizeof *r);
    struct rill_config c;
    cfg_defaults(&c);
    char why[512] = "", v[32];
    assert_int_equal(cfg_set(&c, "model", o->model ? o->model : model_path, why, sizeof why), 0);
#define SETI(key, val, def)                                                      \
    do {                                                                         \
        snprintf(v, sizeof v, "%d", (val) ? (val) : (def));                      \
        if (cfg_set(&c, key, v, why, sizeof why))                                \
            fail_msg("cfg_set %s %s: %s", key, v, why);                          \
    } while (0)
    SETI("threads", o->threads, 1);
    SETI("max_batch", o->max_batch, 32);
    SETI("prefill_chunk", o->prefill_chunk, 64);
    SETI("context", o->context, 1024);
    SETI("kv_block_tokens", o->block_tokens, 16);
#undef SETI
    if (o->kv_bytes)
        assert_int_equal(cfg_set(&c, "kv_cache_bytes", o->kv_bytes, why, sizeof why), 0);
    /* A slow shared machine must not make the controller shrink the batch
     * below what a test counts on (it never changes tokens, only timing). */
    assert_int_equal(cfg_set(&c, "target_latency_ms", o->target_latency_ms ? o->target_latency_ms : "10000", why,
                             sizeof why),
                     0);
    assert_int_equal(cfg_set(&c, "max_latency_ms", "60000", why, sizeof why), 0);
    if (o->max_step_ms)
        assert_int_equal(cfg_set(&c, "max_step_ms", o->max_step_ms, why, sizeof why), 0);
    int rc = engine_open(&c, false, &r->e, why, sizeof why);
    if (rc)
        fail_msg("engine_open: %s: %s", rill_err_name(rc), why);
    r->s = r->e.sched;
    r->out = (struct sched_out){&r->c, coll_emit, coll_flush};
}

static void rig_close(struct rig *r)
{
    engine_close(&r->e);
    free(r->c.r);
    memset(r, 0, sizeof *r);
}

/* One step: returns its rows; exactly one flush per step. */
static int step(struct rig *r)
{
    uint64_t f0 = r->c.flushes;
    int rc = sched_step(r->s, &r->out);
    if (rc < 0)
        fail_msg("sched_step: %s", rill_err_name(rc));
    assert_int_equal(r->c.flushes, f0 + 1);
    return rc;
}

static void drive(struct rig *r)
{
    for (int i = 0; sched_busy(r->s); i++) {
        if (i > 200000)
            fail_msg("the scheduler does not finish");
        step(r);
    }
}

static struct proto_submit req(uint64_t id, const char *prompt, uint32_t max_tokens)
{
    struct proto_submit q = {0};
    q.id = id;
    q.prompt = prompt;
    q.prompt_len = prompt ? (uint32_t)strlen(prompt) : 0;
    q.max_tokens = max_tokens;
    q.temperature = 0;
    q.top_p = 1;
    q.repetition_penalty = 1;
    q.seed = id * 7919 + 1;
    q.has_seed = true;
    return q;
}

static struct proto_submit sampled(uint64_t id, const char *prompt, uint32_t max_tokens, uint64_t seed)
{
    struct proto_submit q = req(id, prompt, max_tokens);
    q.temperature = 0.9f;
    q.top_k = 40;
    q.top_p = 0.95f;
    q.seed = seed;
    return q;
}

static void submit_ok(struct rig *r, const struct proto_submit *q)
{
    char why[256] = "";
    int rc = sched_submit(r->s, q, 0, why, sizeof why);
    if (rc)
        fail_msg("submit %llu: %s: %s", (unsigned long long)q->id, rill_err_name(rc), why);
}

/* What one request produced, checked as the client would check it. */
struct outcome {
    uint32_t n_rec;
    int32_t *tok;            /* the token ids (records with a token) */
    uint32_t n_tok;
    uint32_t first_pos;
    enum proto_finish finish;
    int32_t error;
    char *text;              /* concatenated record texts */
    size_t text_len;
    uint32_t *rec_text_len;  /* per token record */
    uint32_t *rec_text_off;
};

static void outcome_free(struct outcome *o)
{
    free(o->tok);
    free(o->text);
    free(o->rec_text_len);
    free(o->rec_text_off);
    memset(o, 0, sizeof *o);
}

/* Gather the records of `id`, checking: positions first_pos, first_pos+1,
 * … without gaps; FIRST on the first record only; LAST on the last only,
 * exactly once, with a finish reason (and only it has one); ERROR iff an
 * error code; a token on every record but a final cancel/error one. */
static void gather(const struct rig *r, uint64_t id, uint32_t first_pos, struct outcome *o)
{
    memset(o, 0, sizeof *o);
    size_t n = 0;
    for (size_t i = 0; i < r->c.n; i++)
        n += r->c.r[i].id == id;
    o->tok = calloc(n + 1, sizeof *o->tok);
    o->rec_text_len = calloc(n + 1, sizeof *o->rec_text_len);
    o->rec_text_off = calloc(n + 1, sizeof *o->rec_text_off);
    o->text = malloc(n * PROTO_MAX_TOKEN_TEXT + 1);
    o->first_pos = first_pos;
    bool last_seen = false;
    for (size_t i = 0; i < r->c.n; i++) {
        const struct rec *e = &r->c.r[i];
        if (e->id != id)
            continue;
        if (last_seen)
            fail_msg("request %llu: a record after LAST", (unsigned long long)id);
        uint32_t k = o->n_rec++;
        if (e->pos != first_pos + k)
            fail_msg("request %llu: record %u has position %u, expected %u", (unsigned long long)id, k, e->pos,
                     first_pos + k);
        if (!!(e->flags & PROTO_TOK_FIRST) != (k == 0))
            fail_msg("request %llu: FIRST flag %s on record %u", (unsigned long long)id,
                     k == 0 ? "missing" : "set", k);
        enum proto_finish fin = proto_tok_finish(e->flags);
        if (e->flags & PROTO_TOK_LAST) {
            last_seen = true;
            if (fin == PROTO_FINISH_NONE)
                fail_msg("request %llu: LAST without a finish reason", (unsigned long long)id);
            o->finish = fin;
        } else if (fin != PROTO_FINISH_NONE) {
            fail_msg("request %llu: finish reason %u on a record that is not LAST", (unsigned long long)id, fin);
        }
        assert_int_equal(!!(e->flags & PROTO_TOK_ERROR), e->error < 0);
        if (e->error)
            o->error = e->error;
        if (e->tok < 0) {
            if (!(e->flags & PROTO_TOK_LAST))
                fail_msg("request %llu: a record without a token that is not LAST", (unsigned long long)id);
        } else {
            o->rec_text_off[o->n_tok] = (uint32_t)o->text_len;
            o->rec_text_len[o->n_tok] = e->text_len;
            o->tok[o->n_tok++] = e->tok;
        }
        memcpy(o->text + o->text_len, e->text, e->text_len);
        o->text_len += e->text_len;
    }
    o->text[o->text_len] = 0;
    if (!last_seen)
        fail_msg("request %llu: no LAST record (%u records)", (unsigned long long)id, o->n_rec);
}

/* The decoded text of the ids (NUL-terminated, malloc'd). */
static char *decode(const struct rig *r, const int32_t *ids, uint32_t n, size_t *len)
{
    size_t need = tok_decode(r->e.model->tok, ids, n, NULL, 0);
    char *s = malloc(need + 1);
    *len = tok_decode(r->e.model->tok, ids, n, s, need);
    s[*len] = 0;
    return s;
}

static void assert_text_is_decoded_tokens(const struct rig *r, const struct outcome *o, const char *what)
{
    size_t n;
    char *d = decode(r, o->tok, o->n_tok, &n);
    if (n != o->text_len || memcmp(d, o->text, n) != 0)
        fail_msg("%s: the records' texts (%zu bytes) differ from tok_decode of their tokens (%zu bytes):\n"
                 "  records: \"%s\"\n  decoded: \"%s\"", what, o->text_len, n, o->text, d);
    free(d);
}

static void assert_same_tokens(const struct outcome *want, const struct outcome *got, const char *what)
{
    uint32_t n = want->n_tok < got->n_tok ? want->n_tok : got->n_tok;
    for (uint32_t i = 0; i < n; i++)
        if (want->tok[i] != got->tok[i])
            fail_msg("%s: position %u is token %d, alone it was %d", what, got->first_pos + i, got->tok[i],
                     want->tok[i]);
    if (want->n_tok != got->n_tok || want->finish != got->finish)
        fail_msg("%s: %u tokens finishing %s, alone %u finishing %s", what, got->n_tok,
                 proto_finish_name(got->finish), want->n_tok, proto_finish_name(want->finish));
}

/* Run one request alone in a fresh engine and gather it. */
static void run_alone(const struct proto_submit *q, struct outcome *o)
{
    struct rig r;
    rig_open(&r, &(struct rig_opts){0});
    submit_ok(&r, q);
    drive(&r);
    gather(&r, q->id, q->skip, o);
    if (o->finish != PROTO_FINISH_STOP && !q->skip)
        assert_text_is_decoded_tokens(&r, o, "a request alone");
    rig_close(&r);
}

static const char *const prompts[] = {
    "The quick brown fox",
    "A stream of tokens flows from the worker to the gateway, one decode step at a time,",
    "kalo mi",
    "sha vex orin qua ble dro st",
    "Pack my box",
    "tu",
    "renka lozequa phyl inor vexsha tumi dro blest kalo renmi",
    "one decode step",
};
#define N_PROMPTS (sizeof prompts / sizeof prompts[0])

/* ---- finishing ---------------------------------------------------------------------------------- */

static void test_max_tokens_ends_with_finish_length_at_exactly_max_tokens_records(void **state)
{
    (void)state;
    struct rig r;
    rig_open(&r, &(struct rig_opts){0});
    static const uint32_t max[] = {1, 2, 5, 17, 64};
    for (uint32_t i = 0; i < 5; i++) {
        struct proto_submit q = req(100 + i, prompts[i], max[i]);
        submit_ok(&r, &q);
    }
    drive(&r);
    for (uint32_t i = 0; i < 5; i++) {
        struct outcome o;
        gather(&r, 100 + i, 0, &o);
        if (o.finish != PROTO_FINISH_LENGTH)
            fail_msg("request %u (max_tokens %u) finished %s after %u records", i, max[i],
                     proto_finish_name(o.finish), o.n_rec);
        assert_int_equal(o.n_rec, max[i]);
        assert_int_equal(o.n_tok, max[i]);
        assert_text_is_decoded_tokens(&r, &o, "max_tokens");
        outcome_free(&o);
    }
    struct sched_stats st;
    sched_stats(r.s, &st);
    assert_int_equal(st.finished, 5);
    assert_int_equal(st.running + st.waiting, 0);
    rig_close(&r);
}

static void test_eos_ends_with_finish_eos(void **state)
{
    (void)state;
    /* A random model rarely picks EOS greedily; at temperature 2 about one
     * draw in vocab is EOS, so some of 16 long seeded streams must end by
     * it.  Every stream ends either by EOS (with EOS its last token and
     * only there) or by length. */
    struct rig r;
    rig_open(&r, &(struct rig_opts){.max_batch = 16});
    int32_t eos = tok_eos(r.e.model->tok);
    assert_true(eos >= 0);
    const uint32_t max = 900;
    for (uint32_t i = 0; i < 16; i++) {
        struct proto_submit q = sampled(200 + i, prompts[i % N_PROMPTS], max, 1000 + i);
        q.temperature = 2.0f;
        q.top_k = 0;
        q.top_p = 1;
        submit_ok(&r, &q);
    }
    drive(&r);
    uint32_t n_eos = 0;
    for (uint32_t i = 0; i < 16; i++) {
        struct outcome o;
        gather(&r, 200 + i, 0, &o);
        for (uint32_t k = 0; k + 1 < o.n_tok; k++)
            if (o.tok[k] == eos)
                fail_msg("request %u: EOS at position %u did not end it", i, k);
        if (o.finish == PROTO_FINISH_EOS) {
            n_eos++;
            assert_int_equal(o.tok[o.n_tok - 1], eos);
            assert_true(o.n_tok < max);
        } else {
            assert_int_equal(o.finish, PROTO_FINISH_LENGTH);
            assert_int_equal(o.n_tok, max);
        }
        assert_text_is_decoded_tokens(&r, &o, "eos run");
        outcome_free(&o);
    }
    print_message("  %u of 16 sampled streams ended by EOS\n", n_eos);
    assert_true(n_eos > 0);
    rig_close(&r);
}

/* ---- stop strings --------------------------------------------------------------------------- */

struct ref_run {
    struct outcome o;        /* greedy, no stop strings, 48 tokens */
    const char *prompt;
};

static void ref_run(struct ref_run *rr, const char *prompt, uint32_t max)
{
    struct proto_submit q = req(1, prompt, max);
    rr->prompt = prompt;
    run_alone(&q, &rr->o);
    assert_int_equal(rr->o.finish, PROTO_FINISH_LENGTH);
}

static bool ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return false;
    return true;
}

/* Run the reference request again with stop strings; check that it stops
 * where the earliest match in the reference text begins, after the token
 * that completed it, with the text before the match and nothing else. */
static void check_stop(const struct ref_run *rr, const char *const *stops, int n_stops, const char *what)
{
    const struct outcome *R = &rr->o;
    size_t cut = SIZE_MAX, end = 0;
    for (int i = 0; i < n_stops; i++) {
        const char *m = memmem(R->text, R->text_len, stops[i], strlen(stops[i]));
        if (m && (size_t)(m - R->text) < cut) {
            cut = (size_t)(m - R->text);
            end = cut + strlen(stops[i]);
        } else if (m && (size_t)(m - R->text) == cut && cut + strlen(stops[i]) < end) {
            end = cut + strlen(stops[i]);
        }
    }
    struct proto_submit q = req(1, rr->prompt, R->n_tok);
    q.n_stop = (uint8_t)n_stops;
    for (int i = 0; i < n_stops; i++)
        snprintf(q.stop[i], sizeof q.stop[i], "%s", stops[i]);
    struct outcome o;
    run_alone(&q, &o);
    if (cut == SIZE_MAX) {
        /* No match: everything comes out, held-back prefixes included. */
        assert_int_equal(o.finish, PROTO_FINISH_LENGTH);
        assert_int_equal(o.n_tok, R->n_tok);
        if (o.text_len != R->text_len || memcmp(o.text, R->text, R->text_len))
            fail_msg("%s: text \"%s\", expected \"%s\"", what, o.text, R->text);
    } else {
        /* The token whose text reaches past the match's end completes it. */
        uint32_t k = 0;
        while (k < R->n_tok && R->rec_text_off[k] + R->rec_text_len[k] < end)
            k++;
        if (o.finish != PROTO_FINISH_STOP)
            fail_msg("%s: finished %s, expected stop", what, proto_finish_name(o.finish));
        assert_int_equal(o.n_tok, k + 1);
        for (uint32_t i = 0; i < o.n_tok; i++)
            assert_int_equal(o.tok[i], R->tok[i]);
        if (o.text_len != cut || memcmp(o.text, R->text, cut))
            fail_msg("%s: text \"%s\" (%zu bytes), expected the %zu bytes before the stop string: \"%.*s\"", what,
                     o.text, o.text_len, cut, (int)cut, R->text);
    }
    outcome_free(&o);
}

static void test_stop_strings_end_the_text_before_them(void **state)
{
    (void)state;
    struct ref_run rr;
    ref_run(&rr, prompts[1], 48);
    const struct outcome *R = &rr.o;
    /* A stop string inside one token's text, for a few tokens. */
    int tried = 0;
    for (uint32_t j = 3; j < R->n_tok && tried < 4; j += 5) {
        uint32_t l = R->rec_text_len[j];
        const char *t = R->text + R->rec_text_off[j];
        if (l < 2 || !ascii(t, l))
            continue;
        char s[PROTO_STOP_LEN + 1], what[96];
        snprintf(s, sizeof s, "%.*s", (int)(l < PROTO_STOP_LEN ? l : PROTO_STOP_LEN), t);
        snprintf(what, sizeof what, "stop \"%s\" (token %u's text)", s, j);
        check_stop(&rr, (const char *const[]){s}, 1, what);
        tried++;
    }
    assert_true(tried > 0);
    /* One that never matches: the whole text, finish length. */
    check_stop(&rr, (const char *const[]){"\x01\x02"}, 1, "a stop string that never matches");
    outcome_free(&rr.o);
}

static void test_stop_string_split_across_tokens_and_held_text(void **state)
{
    (void)state;
    struct ref_run rr;
    ref_run(&rr, prompts[1], 48);
    const struct outcome *R = &rr.o;
    char s[PROTO_STOP_LEN + 1];
    int tried2 = 0, tried3 = 0, held = 0;
    for (uint32_t j = 2; j + 2 < R->n_tok; j++) {
        const char *a = R->text + R->rec_text_off[j], *b = R->text + R->rec_text_off[j + 1],
                   *c = R->text + R->rec_text_off[j + 2];
        uint32_t la = R->rec_text_len[j], lb = R->rec_text_len[j + 1], lc = R->rec_text_len[j + 2];
        if (!ascii(a, la) || !ascii(b, lb) || !ascii(c, lc) || la < 2 || lb < 1 || lc < 1 || lb > 40)
            continue;
        char what[96];
        if (tried2 < 3) {
            /* Two tokens: the end of token j and the start of token j+1. */
            snprintf(s, sizeof s, "%.*s%.*s", 2, a + la - 2, 1, b);
            snprintf(what, sizeof what, "stop \"%s\" across tokens %u-%u", s, j, j + 1);
            check_stop(&rr, (const char *const[]){s}, 1, what);
            tried2++;
        }
        if (tried3 < 3) {
            /* Three tokens: the last byte of j, all of j+1, the first of j+2. */
            snprintf(s, sizeof s, "%.*s%.*s%.*s", 1, a + la - 1, (int)lb, b, 1, c);
            snprintf(what, sizeof what, "stop \"%s\" across tokens %u-%u", s, j, j + 2);
            check_stop(&rr, (const char *const[]){s}, 1, what);
            tried3++;
        }
        if (held < 4) {
            /* A prefix of the stop string ends token j, so its bytes are held
             * back; the string never completes, so they must come out later. */
            snprintf(s, sizeof s, "%.*s\x01", 2, a + la - 2);
            snprintf(what, sizeof what, "held-back prefix of token %u", j);
            check_stop(&rr, (const char *const[]){s}, 1, what);
            held++;
        }
    }
    assert_true(tried2 > 0 && tried3 > 0 && held > 0);

    /* Several stop strings: the earliest match wins, whichever is listed first. */
    uint32_t j1 = 4, j2 = R->n_tok - 6;
    char late[PROTO_STOP_LEN + 1], early[PROTO_STOP_LEN + 1];
    snprintf(late, sizeof late, "%.*s", (int)(R->rec_text_len[j2] < 6 ? R->rec_text_len[j2] : 6),
             R->text + R->rec_text_off[j2]);
    snprintf(early, sizeof early, "%.*s", (int)(R->rec_text_len[j1] < 6 ? R->rec_text_len[j1] : 6),
             R->text + R->rec_text_off[j1]);
    if (late[0] && early[0])
        check_stop(&rr, (const char *const[]){late, early, "\x02never"}, 3, "earliest of three stop strings");
    /* A stop string in the first token's text: the text before it, maybe none. */
    snprintf(s, sizeof s, "%.*s", R->rec_text_len[0] < 2 ? (int)R->rec_text_len[0] : 2, R->text);
    if (s[0])
        check_stop(&rr, (const char *const[]){s}, 1, "stop string in the first token");
    /* The whole text as the stop string (up to the cap). */
    snprintf(s, sizeof s, "%.*s", (int)(R->text_len < PROTO_STOP_LEN ? R->text_len : PROTO_STOP_LEN), R->text);
    check_stop(&rr, (const char *const[]){s}, 1, "a long stop string");
    outcome_free(&rr.o);
}

static void test_token_texts_concatenate_to_the_decoded_token_ids(void **state)
{
    (void)state;
    struct rig r;
    rig_open(&r, &(struct rig_opts){0});
    for (uint32_t i = 0; i < N_PROMPTS; i++) {
        struct proto_submit q = i % 2 ? sampled(300 + i, prompts[i], 60, 77 + i) : req(300 + i, prompts[i], 60);
        if (i % 3 == 2)
            q.temperature = 1.5f; /* more varied pieces, multibyte ones included */
        submit_ok(&r, &q);
    }
    drive(&r);
    for (uint32_t i = 0; i < N_PROMPTS; i++) {
        struct outcome o;
        gather(&r, 300 + i, 0, &o);
        char what[32];
        snprintf(what, sizeof what, "request %u", i);
        assert_text_is_decoded_tokens(&r, &o, what);
        outcome_free(&o);
    }
    rig_close(&r);
}

/* ---- independence of the batch ----------------------------------------------------------------- */

static void test_seeded_sampling_is_deterministic_and_independent_of_the_batch(void **state)
{
    (void)state;
    /* 16 requests (seeded sampling with various settings, and greedy ones),
     * each run alone, then all together with 2 threads, small prefill
     * chunks so prompts prefill while others decode, and staggered
     * arrivals — every one must produce its tokens alone. */
    enum { N = 16 };
    struct proto_submit q[N];
    struct outcome alone[N];
    for (uint32_t i = 0; i < N; i++) {
        q[i] = i % 4 == 3 ? req(400 + i, prompts[i % N_PROMPTS], 24 + i)
                          : sampled(400 + i, prompts[i % N_PROMPTS], 24 + i, 5000 + i);
        if (i % 4 == 1) {
            q[i].top_k = 0;
            q[i].min_p = 0.05f;
            q[i].repetition_penalty = 1.3f;
        }
        if (i % 4 == 2)
            q[i].temperature = 1.7f;
        run_alone(&q[i], &alone[i]);
    }
    /* Alone twice: deterministic. */
    struct outcome again;
    run_alone(&q[0], &again);
    assert_same_tokens(&alone[0], &again, "request 0 alone, second run");
    outcome_free(&again);

    for (int round = 0; round < 2; round++) {
        struct rig r;
        rig_open(&r, &(struct rig_opts){.threads = 2, .prefill_chunk = round ? 5 : 64});
        for (uint32_t i = 0; i < N; i++) {
            submit_ok(&r, &q[i]);
            if (round == 1 && i % 3 == 0)
                for (int k = 0; k < 2; k++)
                    step(&r);
        }
        drive(&r);
        for (uint32_t i = 0; i < N; i++) {
            struct outcome o;
            gather(&r, q[i].id, 0, &o);
            char what[64];
            snprintf(what, sizeof what, "request %u among %u (round %d)", i, N, round);
            assert_same_tokens(&alone[i], &o, what);
            outcome_free(&o);
        }
        struct sched_stats st;
        sched_stats(r.s, &st);
        print_message("  round %d: %llu steps for %llu tokens\n", round, (unsigned long long)st.steps,
                      (unsigned long long)st.tokens);
        rig_close(&r);
    }
    for (uint32_t i = 0; i < N; i++)
        outcome_free(&alone[i]);
}

/* ---- preemption ---------------------------------------------------------------------------------- */

static void check_preempted(const struct rig_opts *ro, bool pressure)
{
    enum { N = 10 };
    struct proto_submit q[N];
    struct outcome alone[N];
    for (uint32_t i = 0; i < N; i++) {
        q[i] = i % 2 ? sampled(500 + i, prompts[i % N_PROMPTS], 40, 900 + i) : req(500 + i, prompts[i % N_PROMPTS], 40);
        run_alone(&q[i], &alone[i]);
    }
    struct rig r;
    rig_open(&r, ro);
    for (uint32_t i = 0; i < N; i++)
        submit_ok(&r, &q[i]);
    if (pressure) {
        for (int k = 0; k < 12; k++)
            step(&r);
        struct sched_stats st;
        sched_stats(r.s, &st);
        assert_int_equal(st.running, N);
        /* Critical: the level alone moves no cap (memory is the
         * supervisor's); its bound, quartered, comes with it, and the
         * newest give back their memory. */
        sched_set_pressure(r.s, PRESSURE_CRITICAL);
        sched_stats(r.s, &st);
        assert_int_equal(st.cap, 16);
        assert_int_equal(st.preemptions, 0);
        sched_set_limit(r.s, 4);
        sched_stats(r.s, &st);
        assert_int_equal(st.cap, 4);
        assert_int_equal(st.running, 4);
        assert_int_equal(st.preemptions, N - 4);
        for (int k = 0; k < 5; k++)
            step(&r);
        /* Still critical, the supervisor's bound falls below the running
         * sequences (their caches grew): they are shed to it. */
        uint64_t before = st.preemptions;
        uint32_t running = st.running;
        sched_set_limit(r.s, 1);
        sched_stats(r.s, &st);
        assert_int_equal(st.running, 1);
        assert_int_equal(st.preemptions, before + running - 1);
        for (int k = 0; k < 10; k++)
            step(&r);
        sched_set_pressure(r.s, PRESSURE_NORMAL);
        sched_set_limit(r.s, 16);
    }
    drive(&r);
    struct sched_stats st;
    sched_stats(r.s, &st);
    print_message("  %llu preemptions\n", (unsigned long long)st.preemptions);
    assert_true(st.preemptions > 0);
    assert_int_equal(st.finished, N);
    for (uint32_t i = 0; i < N; i++) {
        struct outcome o;
        gather(&r, q[i].id, 0, &o);
        char what[64];
        snprintf(what, sizeof what, "request %u after preemption", i);
        assert_same_tokens(&alone[i], &o, what);
        assert_text_is_decoded_tokens(&r, &o, what);
        outcome_free(&o);
        outcome_free(&alone[i]);
    }
    rig_close(&r);
}

static void test_preempted_requests_recompute_exactly_when_the_kv_cache_is_full(void **state)
{
    (void)state;
    /* Tiny model: a 16-token block is 2 layers x K,V x 16 x 32 floats = 8 KiB.
     * 12 blocks hold 192 positions; ten requests of up to ~60 positions
     * need 40 blocks. */
    check_preempted(&(struct rig_opts){.kv_bytes = "96K", .prefill_chunk = 16}, false);
}

static void test_preempted_requests_recompute_exactly_under_critical_pressure(void **state)
{
    (void)state;
    check_preempted(&(struct rig_opts){.max_batch = 16}, true);
}

/* ---- resume ------------------------------------------------------------------------------------- */

static void test_resume_with_skip_continues_with_exactly_the_remaining_tokens(void **state)
{
    (void)state;
    struct proto_submit base[4] = {
        sampled(600, prompts[1], 40, 4242),
        req(601, prompts[3], 40),
        sampled(602, prompts[6], 40, 99),
        req(603, prompts[3], 40),
    };
    base[2].repetition_penalty = 1.4f; /* the history (prompt + delivered) matters */
    base[2].top_k = 0;
    /* OpenAI's penalties count the output, the delivered part included */
    base[3].frequency_penalty = 1.5f;
    base[3].presence_penalty = 0.5f;
    for (int b = 0; b < 4; b++) {
        struct outcome full;
        run_alone(&base[b], &full);
        assert_true(full.n_tok > 8);
        if (b == 3) { /* the penalties change this greedy run (req 601 has none) */
            struct outcome plain;
            struct proto_submit q = base[3];
            q.id = 699;
            q.frequency_penalty = q.presence_penalty = 0;
            run_alone(&q, &plain);
            uint32_t n = plain.n_tok < full.n_tok ? plain.n_tok : full.n_tok;
            assert_true(plain.n_tok != full.n_tok || memcmp(plain.tok, full.tok, n * sizeof *full.tok));
            outcome_free(&plain);
        }
        uint32_t ks[] = {1, 5, full.n_tok / 2, full.n_tok - 1};
        for (int ki = 0; ki < 4; ki++) {
            uint32_t k = ks[ki];
            struct proto_submit q = base[b];
            q.id = 700 + (uint64_t)b * 10 + (uint64_t)ki;
            q.prompt_tokens = full.tok;
            q.n_prompt_tokens = k;
            q.skip = k;
            struct outcome o;
            run_alone(&q, &o); /* gather checks positions start at k, FIRST on the first */
            char what[64];
            snprintf(what, sizeof what, "request %d resumed at %u", b, k);
            if (o.n_tok != full.n_tok - k || o.finish != full.finish)
                fail_msg("%s: %u tokens finishing %s, expected %u finishing %s", what, o.n_tok,
                         proto_finish_name(o.finish), full.n_tok - k, proto_finish_name(full.finish));
            for (uint32_t i = 0; i < o.n_tok; i++)
                if (o.tok[i] != full.tok[k + i])
                    fail_msg("%s: position %u is %d, uninterrupted %d", what, k + i, o.tok[i], full.tok[k + i]);
            /* The text from position k on is what the uninterrupted run sent from there. */
            size_t off = full.rec_text_off[k];
            if (o.text_len != full.text_len - off || memcmp(o.text, full.text + off, o.text_len))
                fail_msg("%s: text \"%s\", expected \"%s\"", what, o.text, full.text + off);
            outcome_free(&o);
        }
        outcome_free(&full);
    }
}

static void test_resume_across_a_held_back_or_matching_stop_string(void **state)
{
    (void)state;
    /* Uninterrupted greedy run; token k-1's text ends with byte c. */
    struct ref_run rr;
    ref_run(&rr, prompts[1], 30);
    const struct outcome *R = &rr.o;
    uint32_t k = 6;
    while (k < R->n_tok - 2 && (R->rec_text_len[k - 1] == 0 || R->rec_text_len[k] == 0 ||
                                !ascii(R->text + R->rec_text_off[k - 1], R->rec_text_len[k - 1] + R->rec_text_len[k])))
        k++;
    assert_true(k < R->n_tok - 2);
    char c = R->text[R->rec_text_off[k] - 1], d = R->text[R->rec_text_off[k]];

    /* 1. Stop "c\x01" never matches; c is held at the resume point.  The
     *    resumed request sends it with record k, as the uninterrupted one did. */
    struct proto_submit q = req(1200, prompts[1], 30);
    q.n_stop = 1;
    snprintf(q.stop[0], sizeof q.stop[0], "%c\x01", c);
    struct outcome full, o;
    run_alone(&q, &full);
    assert_int_equal(full.finish, PROTO_FINISH_LENGTH);
    assert_int_equal(full.text_len, R->text_len);
    q.id = 1201;
    q.prompt_tokens = full.tok;
    q.n_prompt_tokens = k;
    q.skip = k;
    run_alone(&q, &o);
    assert_int_equal(o.n_tok, full.n_tok - k);
    size_t off = full.rec_text_off[k];
    if (o.text_len != full.text_len - off || memcmp(o.text, full.text + off, o.text_len))
        fail_msg("resumed at %u with a held byte: text \"%s\", expected \"%s\"", k, o.text, full.text + off);
    outcome_free(&o);
    outcome_free(&full);

    /* 2. Stop "cd" spans the resume point: the resumed request stops at
     *    position k, sending the text before the match that was not yet sent
     *    (here none: c was held back, then cut). */
    q = req(1202, prompts[1], 30);
    q.n_stop = 1;
    snprintf(q.stop[0], sizeof q.stop[0], "%c%c", c, d);
    run_alone(&q, &full);
    if (full.finish == PROTO_FINISH_STOP && full.n_tok == k + 1) {
        q.id = 1203;
        q.prompt_tokens = full.tok;
        q.n_prompt_tokens = k;
        q.skip = k;
        run_alone(&q, &o);
        assert_int_equal(o.finish, PROTO_FINISH_STOP);
        assert_int_equal(o.n_tok, 1);
        assert_int_equal(o.tok[0], full.tok[k]);
        off = full.rec_text_off[k];
        if (o.text_len != full.text_len - off || memcmp(o.text, full.text + off, o.text_len))
            fail_msg("resumed at %u across a stop string: text \"%s\", expected \"%s\"", k, o.text,
                     full.text + off);
        outcome_free(&o);
    } else {
        /* "cd" occurred earlier in the text; then the case is not exercised. */
        print_message("  (\"%c%c\" occurs before token %u: case 2 skipped)\n", c, d, k);
    }
    outcome_free(&full);
    outcome_free(&rr.o);
}

/* ---- cancel ------------------------------------------------------------------------------------------ */

static void test_cancel_ends_with_a_last_record_and_is_idempotent(void **state)
{
    (void)state;
    struct outcome b_alone;
    struct proto_submit qa = req(800, prompts[0], 50), qb = sampled(801, prompts[1], 30, 31);
    run_alone(&qb, &b_alone);

    struct rig r;
    rig_open(&r, &(struct rig_opts){0});
    submit_ok(&r, &qa);
    submit_ok(&r, &qb);
    for (int k = 0; k < 5; k++)
        step(&r);
    assert_int_equal(sched_cancel(r.s, 800), 0);
    assert_int_equal(sched_cancel(r.s, 800), 0); /* twice: the same as once */
    step(&r);
    assert_int_equal(sched_cancel(r.s, 800), RILL_E_NOT_FOUND); /* gone now */
    drive(&r);
    struct outcome a, b;
    gather(&r, 800, 0, &a);
    assert_int_equal(a.finish, PROTO_FINISH_CANCELLED);
    assert_int_equal(a.error, 0);
    assert_true(a.n_tok >= 1 && a.n_tok < 50);
    assert_int_equal(a.n_rec, a.n_tok + 1); /* the LAST record carries no token */
    assert_text_is_decoded_tokens(&r, &a, "cancelled");
    gather(&r, 801, 0, &b);
    assert_same_tokens(&b_alone, &b, "the other request of the batch");
    struct sched_stats st;
    sched_stats(r.s, &st);
    assert_int_equal(st.cancelled, 1);
    /* Unknown, and finished. */
    assert_int_equal(sched_cancel(r.s, 123456), RILL_E_NOT_FOUND);
    assert_int_equal(sched_cancel(r.s, 801), RILL_E_NOT_FOUND);
    outcome_free(&a);
    outcome_free(&b);
    outcome_free(&b_alone);
    rig_close(&r);
}

static void test_cancel_of_a_waiting_request_emits_first_and_last(void **state)
{
    (void)state;
    struct rig r;
    rig_open(&r, &(struct rig_opts){.max_batch = 1});
    struct proto_submit qa = req(810, prompts[0], 20), qb = req(811, prompts[2], 20);
    submit_ok(&r, &qa);
    submit_ok(&r, &qb);
    step(&r);
    struct sched_stats st;
    sched_stats(r.s, &st);
    assert_int_equal(st.waiting, 1);
    assert_int_equal(sched_cancel(r.s, 811), 0);
    assert_int_equal(sched_cancel(r.s, 811), 0);
    drive(&r);
    struct outcome o;
    gather(&r, 811, 0, &o); /* one record: FIRST and LAST, position 0, no token */
    assert_int_equal(o.n_rec, 1);
    assert_int_equal(o.n_tok, 0);
    assert_int_equal(o.finish, PROTO_FINISH_CANCELLED);
    outcome_free(&o);
    gather(&r, 810, 0, &o);
    assert_int_equal(o.finish, PROTO_FINISH_LENGTH);
    assert_int_equal(o.n_tok, 20);
    outcome_free(&o);
    rig_close(&r);
}

static void test_cancel_sends_the_held_back_text(void **state)
{
    (void)state;
    /* The last byte of the text at the cancel is held back as a possible
     * start of a stop string that never completes; the cancel record must
     * carry it. */
    struct ref_run rr;
    ref_run(&rr, prompts[1], 30);
    const struct outcome *R = &rr.o;
    uint32_t k = 0; /* cancel after k+1 tokens, k's text nonempty */
    for (k = 2; k < R->n_tok - 1 && R->rec_text_len[k] == 0; k++)
        ;
    assert_true(R->rec_text_len[k] > 0);
    char c = R->text[R->rec_text_off[k] + R->rec_text_len[k] - 1];
    struct rig r;
    rig_open(&r, &(struct rig_opts){0});
    struct proto_submit q = req(821, prompts[1], 30);
    q.n_stop = 1;
    snprintf(q.stop[0], sizeof q.stop[0], "%c\x01", c);
    submit_ok(&r, &q);
    while (r.c.n < k + 1)
        step(&r);
    assert_int_equal(r.c.n, k + 1);
    assert_int_equal(sched_cancel(r.s, 821), 0);
    drive(&r);
    struct outcome o;
    gather(&r, 821, 0, &o);
    assert_int_equal(o.finish, PROTO_FINISH_CANCELLED);
    assert_int_equal(o.n_tok, k + 1);
    assert_text_is_decoded_tokens(&r, &o, "cancelled with a held-back byte");
    size_t tail = o.text_len - (o.rec_text_off[k] + o.rec_text_len[k]);
    assert_int_equal(tail, 1); /* the held byte, sent by the cancel record */
    assert_int_equal(o.text[o.text_len - 1], c);
    outcome_free(&o);
    outcome_free(&rr.o);
    rig_close(&r);
}

/* ---- rejections --------------------------------------------------------------------------------- */

static int try_submit(struct rig *r, const struct proto_submit *q)
{
    char why[256] = "";
    return sched_submit(r->s, q, 0, why, sizeof why);
}

static void test_bad_requests_are_rejected_by_code(void **state)
{
    (void)state;
    struct rig r;
    rig_open(&r, &(struct rig_opts){.context = 64, .kv_bytes = "64K"}); /* 8 blocks of 16 */
    struct proto_submit q = req(900, "hello", 4);
    assert_int_equal(try_submit(&r, &q), 0);
    assert_int_equal(try_submit(&r, &q), RILL_E_DUPLICATE_ID);

    /* The context is 64: prompts are counted exactly with prompt_tokens. */
    int32_t ids[80];
    for (int i = 0; i < 80; i++)
        ids[i] = 5 + i;
    q = req(901, NULL, 1);
    q.prompt_tokens = ids;
    q.n_prompt_tokens = 64;
    assert_int_equal(try_submit(&r, &q), RILL_E_CONTEXT_LENGTH);
    q.n_prompt_tokens = 80;
    assert_int_equal(try_submit(&r, &q), RILL_E_CONTEXT_LENGTH);
    q.n_prompt_tokens = 63; /* 63 + 1 = 64: fits exactly */
    assert_int_equal(try_submit(&r, &q), 0);
    q = req(902, NULL, 55);
    q.prompt_tokens = ids;
    q.n_prompt_tokens = 10; /* 10 + 55 > 64 */
    assert_int_equal(try_submit(&r, &q), RILL_E_MAX_TOKENS);
    q.max_tokens = 54;
    assert_int_equal(try_submit(&r, &q), 0);
    /* A long text prompt. */
    char longp[2048] = "";
    for (int i = 0; i < 60; i++)
        strcat(longp, "the quick brown fox ");
    q = req(903, longp, 1);
    assert_int_equal(try_submit(&r, &q), RILL_E_CONTEXT_LENGTH);

    /* Sampling values out of range, and other malformed requests. */
    struct proto_submit bad[12];
    for (int i = 0; i < 12; i++)
        bad[i] = req(910 + (uint64_t)i, "hi", 4);
    bad[0].temperature = -0.5f;
    bad[1].temperature = NAN;
    bad[2].temperature = INFINITY;
    bad[3].top_p = 1.5f;
    bad[4].top_p = -0.1f;
    bad[5].min_p = 2.0f;
    bad[6].repetition_penalty = -1.0f;
    bad[7].repetition_penalty = NAN;
    bad[8].top_logprobs = PROTO_MAX_TOP + 1;
    bad[9].max_tokens = 0;
    int32_t oov = (int32_t)r.e.model->cfg.vocab;
    bad[10].prompt_tokens = &oov;
    bad[10].n_prompt_tokens = 1;
    bad[11].prompt_tokens = ids;
    bad[11].n_prompt_tokens = 2;
    bad[11].skip = 3; /* more than carried */
    for (int i = 0; i < 12; i++) {
        int rc = try_submit(&r, &bad[i]);
        if (rc != RILL_E_BAD_REQUEST)
            fail_msg("bad request %d: %s, expected bad_request", i, rill_err_name(rc));
    }
    /* skip leaving nothing of max_tokens. */
    q = req(930, "hi", 3);
    q.prompt_tokens = ids;
    q.n_prompt_tokens = 3;
    q.skip = 3;
    assert_int_equal(try_submit(&r, &q), RILL_E_BAD_REQUEST);
    /* A rejected id leaves no trace: it can be used now. */
    q = req(910, "hi", 4);
    assert_int_equal(try_submit(&r, &q), 0);

    /* Empty prompt: this model adds BOS, so it is one token and fine. */
    q = req(940, "", 3);
    assert_int_equal(try_submit(&r, &q), 0);

    /* Draining and emergency pressure turn requests away (recoverably). */
    sched_set_draining(r.s, true);
    q = req(950, "hi", 2);
    assert_int_equal(try_submit(&r, &q), RILL_E_SHUTTING_DOWN);
    sched_set_draining(r.s, false);
    sched_set_pressure(r.s, PRESSURE_EMERGENCY);
    assert_int_equal(try_submit(&r, &q), RILL_E_OVERLOADED);
    sched_set_pressure(r.s, PRESSURE_NORMAL);
    assert_int_equal(try_submit(&r, &q), 0);
    drive(&r);
    /* Finished ids are free again. */
    q = req(900, "hello", 4);
    assert_int_equal(try_submit(&r, &q), 0);
    drive(&r);
    rig_close(&r);

    /* A request that needs more KV cache than the worker has at all. */
    rig_open(&r, &(struct rig_opts){.kv_bytes = "32K"}); /* 4 blocks: 64 positions */
    q = req(960, NULL, 60);
    q.prompt_tokens = ids;
    q.n_prompt_tokens = 10;
    assert_int_equal(try_submit(&r, &q), RILL_E_MEMORY_LIMIT);
    q.max_tokens = 54;
    assert_int_equal(try_submit(&r, &q), 0);
    drive(&r);
    struct outcome o;
    gather(&r, 960, 0, &o);
    assert_int_equal(o.n_tok, 54);
    outcome_free(&o);
    rig_close(&r);

    /* A model that adds no BOS: the empty prompt is empty. */
    rig_open(&r, &(struct rig_opts){.model = nobos_path});
    assert_false(tok_add_bos(r.e.model->tok));
    q = req(970, "", 3);
    assert_int_equal(try_submit(&r, &q), RILL_E_BAD_REQUEST);
    q.prompt = NULL;
    assert_int_equal(try_submit(&r, &q), RILL_E_BAD_REQUEST);
    q = req(971, "x", 3);
    assert_int_equal(try_submit(&r, &q), 0);
    drive(&r);
    rig_close(&r);
}

/* ---- submit in two halves (the worker loop tokenizes off its thread) ------------------------------ */

/* sched_check, prompt_tokenize, sched_submit_prompt: what serve does with
 * the intake in between.  Returns sched_submit_prompt's result (or the
 * first half's error). */
static int submit_halves(struct rig *r, const struct proto_submit *q, uint32_t elsewhere, bool drain_between)
{
    char why[256] = "";
    int rc = sched_check(r->s, q, elsewhere, why, sizeof why);
    if (rc)
        return rc;
    struct prompt p;
    rc = prompt_tokenize(r->e.model->tok, r->e.max_ctx, q, &p, why, sizeof why);
    if (rc) {
        prompt_free(&p);
        return rc;
    }
    if (drain_between)
        sched_set_draining(r->s, true);
    rc = sched_submit_prompt(r->s, q, &p, 0, why, sizeof why);
    assert_null(p.tokens); /* taken over, also on an error */
    if (drain_between)
        sched_set_draining(r->s, false);
    return rc;
}

static void test_a_request_tokenized_elsewhere_runs_as_if_submitted_whole(void **state)
{
    (void)state;
    struct rig r;
    rig_open(&r, &(struct rig_opts){.context = 128});
    /* The same request twice (same seed), once each way: the same tokens. */
    struct proto_submit a = sampled(1, prompts[1], 24, 99), b = sampled(2, prompts[1], 24, 99);
    submit_ok(&r, &a);
    assert_int_equal(submit_halves(&r, &b, 0, false), 0);
    drive(&r);
    struct outcome oa, ob;
    gather(&r, 1, 0, &oa);
    gather(&r, 2, 0, &ob);
    assert_same_tokens(&oa, &ob, "tokenized elsewhere");
    assert_int_equal(oa.text_len, ob.text_len);
    assert_memory_equal(oa.text, ob.text, oa.text_len);
    outcome_free(&oa);
    outcome_free(&ob);

    /* The errors are sched_submit's, from the half that can tell. */
    struct proto_submit q = req(3, "hi", 4);
    submit_ok(&r, &q);
    assert_int_equal(submit_halves(&r, &q, 0, false), RILL_E_DUPLICATE_ID);
    char longp[2048] = "";
    for (int i = 0; i < 60; i++)
        strcat(longp, "the quick brown fox ");
    q = req(4, longp, 1);
    assert_int_equal(submit_halves(&r, &q, 0, false), RILL_E_CONTEXT_LENGTH);
    q = req(5, "hi", 127);
    assert_int_equal(submit_halves(&r, &q, 0, false), RILL_E_MAX_TOKENS);
    /* Requests held elsewhere count toward the queue (1024 here). */
    q = req(6, "hi", 4);
    char why[256];
    struct sched_stats st;
    sched_stats(r.s, &st);
    assert_int_equal(sched_check(r.s, &q, 1023 - st.waiting, why, sizeof why), 0);
    assert_int_equal(sched_check(r.s, &q, 1024 - st.waiting, why, sizeof why), RILL_E_OVERLOADED);
    /* The state may change while a prompt is tokenized: queueing checks again. */
    assert_int_equal(submit_halves(&r, &q, 0, true), RILL_E_SHUTTING_DOWN);
    assert_int_equal(submit_halves(&r, &q, 1, false), 0);
    drive(&r);
    rig_close(&r);
}

/* ---- positions ------------------------------------------------------------------------------------- */

static void test_positions_run_from_zero_with_first_and_last_flags(void **state)
{
    (void)state;
    /* Many requests of every kind at once; gather() checks each one's
     * records: positions 0..n-1 (or skip..), FIRST on the first only, LAST
     * on the last only, a finish reason exactly on LAST. */
    struct rig r;
    rig_open(&r, &(struct rig_opts){.max_batch = 6, .prefill_chunk = 8});
    int32_t carried[3] = {40, 41, 42};
    uint32_t n = 0;
    for (uint32_t i = 0; i < 20; i++) {
        struct proto_submit q = i % 2 ? sampled(1000 + i, prompts[i % N_PROMPTS], 1 + i * 3, i)
                                      : req(1000 + i, prompts[i % N_PROMPTS], 1 + i * 3);
        if (i % 5 == 4) {
            q.prompt_tokens = carried;
            q.n_prompt_tokens = 3;
            q.skip = 3;
            q.max_tokens += 3;
        }
        if (i % 7 == 6) {
            q.n_stop = 1;
            snprintf(q.stop[0], sizeof q.stop[0], "e");
        }
        submit_ok(&r, &q);
        n++;
        step(&r);
    }
    assert_int_equal(sched_cancel(r.s, 1019), 0);
    drive(&r);
    for (uint32_t i = 0; i < n; i++) {
        struct outcome o;
        gather(&r, 1000 + i, i % 5 == 4 ? 3 : 0, &o);
        if (o.finish == PROTO_FINISH_LENGTH)
            assert_int_equal(o.n_tok, 1 + i * 3);
        outcome_free(&o);
    }
    /* Nothing but these requests' records came out. */
    for (size_t k = 0; k < r.c.n; k++)
        assert_true(r.c.r[k].id >= 1000 && r.c.r[k].id < 1000 + n);
    /* Idle steps run nothing and still flush once. */
    assert_int_equal(step(&r), 0);
    rig_close(&r);
}

/* ---- chunked prefill --------------------------------------------------------------------------- */

static void test_prefill_never_takes_more_than_prefill_chunk_rows_in_a_step(void **state)
{
    (void)state;
    /* prefill_chunk is "most prompt tokens prefilled in one step": a long
     * prompt joining running streams must not stall them longer than that,
     * whether or not the scheduler has learned its cost model yet. */
    struct rig r;
    rig_open(&r, &(struct rig_opts){.max_batch = 4, .prefill_chunk = 8});
    struct proto_submit a = req(1100, prompts[5], 60); /* a short prompt: no cost model learned from it */
    submit_ok(&r, &a);
    for (int k = 0; k < 3; k++)
        step(&r);
    int32_t ids[100];
    for (int i = 0; i < 100; i++)
        ids[i] = 10 + i;
    struct proto_submit b = req(1101, NULL, 10);
    b.prompt_tokens = ids;
    b.n_prompt_tokens = 100;
    submit_ok(&r, &b);
    uint32_t worst = 0, steps = 0;
    while (sched_busy(r.s)) {
        step(&r);
        struct sched_stats st;
        sched_stats(r.s, &st);
        uint32_t prefill = st.last_rows - st.last_batch;
        if (prefill > worst)
            worst = prefill;
        steps++;
    }
    rig_close(&r);
    if (worst > 8)
        fail_msg("a step ran %u prompt rows with prefill_chunk 8", worst);
}

static bool has_record(const struct rig *r, uint64_t id)
{
    for (size_t i = 0; i < r->c.n; i++)
        if (r->c.r[i].id == id)
            return true;
    return false;
}

static void test_a_due_first_token_gets_its_whole_prompt_in_one_step_while_others_decode(void **state)
{
    (void)state;
    /* target_latency_ms 1 with a model whose decode step takes more than
     * 1 ms (~17M parameters): a step with decode rows leaves prefill only
     * its minimum (16 rows).  A request waiting past FIRST_TOKEN_DUE_MS
     * (submitted at time 0 here) may stretch the step to max_step_ms (60000)
     * instead: its 59-token prompt is prefilled, and
     * sampled, in the next step, not four steps of 16 behind the decoding
     * stream. */
    char path[192], cmd[1024];
    snprintf(path, sizeof path, "%s/slow.gguf", tmpdir);
    snprintf(cmd, sizeof cmd,
             "%s/rill-mkmodel --shape tiny --dim 512 --ffn 2048 --layers 4 --heads 8 --kv-heads 8 --dtype f32 "
             "--corpus %s/corpus.txt --out %s 2>%s/mk-slow.log",
             tu_build_dir(), tmpdir, path, tmpdir);
    assert_int_equal(system(cmd), 0);
    struct rig r;
    rig_open(&r, &(struct rig_opts){.model = path, .max_batch = 4, .prefill_chunk = 64, .target_latency_ms = "1",
                                    .max_step_ms = "60000"});
    int32_t ids[60];
    for (int i = 0; i < 60; i++)
        ids[i] = 10 + i;
    struct proto_submit a = req(1200, NULL, 200);
    a.prompt_tokens = ids;
    a.n_prompt_tokens = 40; /* >= 8 rows: the prefill cost model is learned from it */
    submit_ok(&r, &a);
    for (int k = 0; k < 4; k++)
        step(&r);
    assert_true(has_record(&r, 1200));
    struct proto_submit b = req(1201, NULL, 5);
    b.prompt_tokens = ids + 1; /* not a cached prefix of a's */
    b.n_prompt_tokens = 59;
    submit_ok(&r, &b);
    int steps = 0;
    while (!has_record(&r, 1201) && steps < 20) {
        step(&r);
        steps++;
    }
    struct sched_stats st;
    sched_stats(r.s, &st);
    rig_close(&r);
    if (steps != 1)
        fail_msg("the due request's first token came after %d steps (want 1)", steps);
}

/* Queue q as arriving now (submit_ok's requests arrived at time 0: long
 * overdue, as far as the scheduler's deadlines go). */
static void submit_now(struct rig *r, const struct proto_submit *q)
{
    char why[256] = "";
    int rc = sched_submit(r->s, q, clock_ns(), why, sizeof why);
    if (rc)
        fail_msg("submit %llu: %s: %s", (unsigned long long)q->id, rill_err_name(rc), why);
}

/* The first record's index of id in what was emitted (-1: none). */
static long first_record(const struct rig *r, uint64_t id)
{
    for (size_t i = 0; i < r->c.n; i++)
        if (r->c.r[i].id == id)
            return (long)i;
    return -1;
}

/* Queue a 60-token request (id, `skip` of them delivered already: 0 for a
 * new prompt) and a new 6-token prompt (id + 1), the short one first when
 * `short_first`, with 16 prompt rows a step; run both to their end.  *early:
 * which of the two had a record after the first step (bit 0: the long one,
 * bit 1: the short one); *i_long, *i_short: the index of each one's first
 * record. */
static void long_and_short(uint64_t id, uint32_t skip, bool short_first, unsigned *early, long *i_long, long *i_short)
{
    struct rig r;
    rig_open(&r, &(struct rig_opts){.max_batch = 4, .prefill_chunk = 16});
    int32_t ids[70];
    for (int i = 0; i < 70; i++)
        ids[i] = 10 + i;
    struct proto_submit a = req(id, NULL, skip + 10), b = req(id + 1, NULL, 3);
    a.prompt_tokens = ids;
    a.n_prompt_tokens = 60;
    a.skip = skip;
    b.prompt_tokens = ids + 61; /* not a prefix of a's */
    b.n_prompt_tokens = 6;
    if (short_first)
        submit_now(&r, &b);
    submit_now(&r, &a);
    if (!short_first)
        submit_now(&r, &b);
    step(&r);
    *early = (unsigned)has_record(&r, id) | (unsigned)has_record(&r, id + 1) << 1;
    drive(&r);
    *i_long = first_record(&r, id);
    *i_short = first_record(&r, id + 1);
    rig_close(&r);
    assert_true(*i_long >= 0 && *i_short >= 0);
}

static void test_the_shortest_prompt_is_prefilled_first(void **state)
{
    (void)state;
    /* The 60-token prompt arrived first: the 6-token one's first token still
     * comes in the first step (admission order would give it after the long
     * one's four). */
    unsigned early;
    long il, is;
    long_and_short(1300, 0, false, &early, &il, &is);
    if (early != 2)
        fail_msg("after one step: %s (first records at %ld and %ld)",
                 early & 1 ? "the 60-token prompt had its first token" : "the 6-token prompt waited", is, il);
    assert_true(il > is);
}

static void test_a_resumed_stream_is_prefilled_before_a_shorter_new_prompt(void **state)
{
    (void)state;
    /* A stream resumed after a failover (40 prompt tokens and 20 its client
     * has, skip 20) is as late as a decoding stream: it goes ahead of a
     * new 6-token prompt that arrived before it, although its rest is
     * longer. */
    unsigned early;
    long il, is;
    long_and_short(1500, 20, true, &early, &il, &is);
    if (il > is)
        fail_msg("the resumed stream's next token (record %ld) came after the new prompt's first (%ld)", il, is);
}

static void test_a_long_prompt_is_not_starved_by_a_stream_of_short_ones(void **state)
{
    (void)state;
    /* Two new 8-token prompts every step fill the 16 prompt rows a step
     * has; shortest-first alone would leave a 40-token prompt waiting for
     * as long as they keep coming.  Once it has waited
     * PREFILL_AGE_LIMIT_MS (1 s) for its first token, it goes first. */
    struct rig r;
    rig_open(&r, &(struct rig_opts){.max_batch = 8, .prefill_chunk = 16});
    int32_t ids[200];
    for (int i = 0; i < 200; i++)
        ids[i] = 10 + i % 150;
    struct proto_submit a = req(1400, NULL, 2);
    a.prompt_tokens = ids;
    a.n_prompt_tokens = 40;
    submit_now(&r, &a);
    uint64_t t0 = clock_ns();
    uint64_t next = 1401;
    double ms = 0;
    uint64_t shorts_first = 0;
    while (!has_record(&r, 1400) && ms < 5000) {
        for (int k = 0; k < 2; k++) {
            struct proto_submit b = req(next, NULL, 1);
            b.prompt_tokens = ids + 41 + (next % 100); /* a new prompt each time */
            b.n_prompt_tokens = 8;
            next++;
            submit_now(&r, &b);
        }
        step(&r);
        ms = clock_ms_since(t0);
    }
    bool served = has_record(&r, 1400);
    for (uint64_t id = 1401; id < next; id++)
        shorts_first += first_record(&r, id) >= 0 && (!served || first_record(&r, id) < first_record(&r, 1400));
    drive(&r);
    rig_close(&r);
    if (!served)
        fail_msg("the 40-token prompt had no first token after %.0f ms of short prompts", ms);
    /* It did wait: the short ones went first until it aged. */
    assert_true(shorts_first > 10);
    if (ms < 900)
        fail_msg("the 40-token prompt went first after %.0f ms, before its age limit", ms);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_max_tokens_ends_with_finish_length_at_exactly_max_tokens_records),
        cmocka_unit_test(test_eos_ends_with_finish_eos),
        cmocka_unit_test(test_stop_strings_end_the_text_before_them),
        cmocka_unit_test(test_stop_string_split_across_tokens_and_held_text),
        cmocka_unit_test(test_token_texts_concatenate_to_the_decoded_token_ids),
        cmocka_unit_test(test_seeded_sampling_is_deterministic_and_independent_of_the_batch),
        cmocka_unit_test(test_preempted_requests_recompute_exactly_when_the_kv_cache_is_full),
        cmocka_unit_test(test_preempted_requests_recompute_exactly_under_critical_pressure),
        cmocka_unit_test(test_resume_with_skip_continues_with_exactly_the_remaining_tokens),
        cmocka_unit_test(test_resume_across_a_held_back_or_matching_stop_string),
        cmocka_unit_test(test_cancel_ends_with_a_last_record_and_is_idempotent),
        cmocka_unit_test(test_cancel_of_a_waiting_request_emits_first_and_last),
        cmocka_unit_test(test_cancel_sends_the_held_back_text),
        cmocka_unit_test(test_bad_requests_are_rejected_by_code),
        cmocka_unit_test(test_a_request_tokenized_elsewhere_runs_as_if_submitted_whole),
        cmocka_unit_test(test_positions_run_from_zero_with_first_and_last_flags),
        cmocka_unit_test(test_prefill_never_takes_more_than_prefill_chunk_rows_in_a_step),
        cmocka_unit_test(test_a_due_first_token_gets_its_whole_prompt_in_one_step_while_others_decode),
        cmocka_unit_test(test_the_shortest_prompt_is_prefilled_first),
        cmocka_unit_test(test_a_long_prompt_is_not_starved_by_a_stream_of_short_ones),
        cmocka_unit_test(test_a_resumed_stream_is_prefilled_before_a_shorter_new_prompt),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
