/* test_model.c — binding a GGUF Llama model: config from metadata, weights of
 * each type (dequantized rows against the originals), the tokenizer from the
 * metadata, each class of bad model named in its error; the half-precision
 * conversions on every half; and a model made by rill-mkmodel itself.
 *
 * Models are written with the gguf writer in a temporary directory; the
 * rill-mkmodel test runs $RILL_TEST_BUILD/rill-mkmodel (build/ by default).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "tools/lib/bpe.h"
#include "worker/gguf.h"
#include "tools/lib/ggufw.h"
#include "worker/model.h"
#include "worker/tokenizer.h"
#include "testutil.h"

static char tmpdir[64];
static struct bpe_vocab spm_vocab, gpt2_vocab;

#define DIM 64
#define LAYERS 2
#define HEADS 4
#define KV_HEADS 2
#define HEAD_DIM (DIM / HEADS)
#define FFN 96
#define CTX 128
#define VOCAB 384

static const char corpus[] =
    "The quick brown fox jumps over the lazy dog. A stream of tokens flows from the "
    "worker to the gateway, one decode step at a time, and every client sees its own "
    "words arrive in order. Weights are random; the tokenizer is real. "
    "Pack my box with five dozen liquor jugs! 0123456789 - caf\xc3\xa9 na\xc3\xafve \xe2\x82\xac\n";

static int setup(void **state)
{
    (void)state;
    rlog_init("test", NULL, RLOG_WARN, false, 2);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/rill-test-model-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    char why[256];
    if (bpe_train(corpus, sizeof corpus - 1, TOK_SPM, VOCAB, &spm_vocab, why, sizeof why) ||
        bpe_train(corpus, sizeof corpus - 1, TOK_GPT2, VOCAB, &gpt2_vocab, why, sizeof why)) {
        fprintf(stderr, "bpe_train: %s\n", why);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    bpe_vocab_free(&spm_vocab);
    bpe_vocab_free(&gpt2_vocab);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static const char *tpath(const char *name)
{
    static char p[4][128];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", tmpdir, name);
    return p[k];
}

/* The weight at index i of tensor `name`: a hash, so the test can compute
 * the original of any element without keeping it. */
static float weight(const char *name, uint64_t i)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *p = name; *p; p++)
        h = (h ^ (uint8_t)*p) * 0x100000001b3ull;
    h ^= i * 0x9e3779b97f4a7c15ull;
    h = (h ^ (h >> 31)) * 0xbf58476d1ce4e5b9ull;
    h ^= h >> 29;
    return ((float)(h >> 40) / 16777216.0f - 0.5f) * 0.25f;
}

/* What to write, and what to break. */
struct spec {
    uint32_t type;            /* weight matrices */
    uint32_t norm_type;       /* norm vectors: F32 or F16 */
    bool tied;
    enum tok_kind tok;
    const char *arch;         /* general.architecture, default "llama" */
    const char *skip_tensor;  /* leave this tensor out */
    const char *skip_key;     /* leave this metadata out */
    const char *odd_tensor;   /* give this tensor the shape odd_ne */
    uint64_t odd_ne[2];
    const char *iq_tensor;    /* write this tensor as iq4_nl (a type rill does not compute) */
    uint32_t kv_heads_meta;   /* metadata head_count_kv if nonzero */
    int drop_tokens;          /* write this many fewer tokens */
};

static float norm_value(const char *name) { return strstr(name, "output_norm") ? 0.75f : 1.5f; }

static void write_model(const char *path, const struct spec *sp)
{
    char why[256] = "";
    struct gguf_writer *w;
    assert_int_equal(gguf_w_open(path, 0, &w, why, sizeof why), 0);
#define KEY(k) (!sp->skip_key || strcmp(sp->skip_key, k) != 0)
    if (KEY("general.architecture"))
        gguf_w_kv_str(w, "general.architecture", sp->arch ? sp->arch : "llama");
    gguf_w_kv_str(w, "general.name", "test-model");
    if (KEY("llama.embedding_length"))
        gguf_w_kv_u32(w, "llama.embedding_length", DIM);
    if (KEY("llama.block_count"))
        gguf_w_kv_u32(w, "llama.block_count", LAYERS);
    gguf_w_kv_u32(w, "llama.attention.head_count", HEADS);
    gguf_w_kv_u32(w, "llama.attention.head_count_kv", sp->kv_heads_meta ? sp->kv_heads_meta : KV_HEADS);
    gguf_w_kv_u32(w, "llama.feed_forward_length", FFN);
    gguf_w_kv_u64(w, "llama.context_length", CTX); /* any integer type will do */
    gguf_w_kv_f32(w, "llama.rope.freq_base", 500000.0f);
    gguf_w_kv_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-6f);

    const struct bpe_vocab *v = sp->tok == TOK_GPT2 ? &gpt2_vocab : &spm_vocab;
    uint32_t n_tok = v->n - (uint32_t)sp->drop_tokens;
    if (KEY("tokenizer.ggml.model"))
        gguf_w_kv_str(w, "tokenizer.ggml.model", sp->tok == TOK_GPT2 ? "gpt2" : "llama");
    gguf_w_kv_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->tokens, NULL, n_tok);
    gguf_w_kv_arr(w, "tokenizer.ggml.scores", GGUF_F32, v->scores, n_tok);
    gguf_w_kv_arr(w, "tokenizer.ggml.token_type", GGUF_I32, v->types, n_tok);
    if (sp->tok == TOK_GPT2) {
        gguf_w_kv_arr_str(w, "tokenizer.ggml.merges", (const char *const *)v->merges, NULL, v->n_merges);
        gguf_w_kv_str(w, "tokenizer.ggml.pre", "gpt2");
    }
    gguf_w_kv_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos);
    gguf_w_kv_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)v->eos);
#undef KEY

    struct {
        char name[64];
        uint32_t n_dims;
        uint64_t ne[2];
        bool norm;
    } t[3 + 9 * LAYERS];
    int n = 0;
#define ADD(nm, nd, c, r, isnorm)                                                                \
    do {                                                                                         \
        snprintf(t[n].name, sizeof t[n].name, "%s", nm);                                         \
        t[n].n_dims = nd;                                                                        \
        t[n].ne[0] = c;                                                                          \
        t[n].ne[1] = r;                                                                          \
        t[n].norm = isnorm;                                                                      \
        n++;                                                                                     \
    } while (0)
    ADD("token_embd.weight", 2, DIM, VOCAB, false);
    for (int l = 0; l < LAYERS; l++) {
        char nm[64];
#define L(x) (snprintf(nm, sizeof nm, "blk.%d." x ".weight", l), nm)
        ADD(L("attn_norm"), 1, DIM, 1, true);
        ADD(L("attn_q"), 2, DIM, HEADS * HEAD_DIM, false);
        ADD(L("attn_k"), 2, DIM, KV_HEADS * HEAD_DIM, false);
        ADD(L("attn_v"), 2, DIM, KV_HEADS * HEAD_DIM, false);
        ADD(L("attn_output"), 2, HEADS * HEAD_DIM, DIM, false);
        ADD(L("ffn_norm"), 1, DIM, 1, true);
        ADD(L("ffn_gate"), 2, DIM, FFN, false);
        ADD(L("ffn_up"), 2, DIM, FFN, false);
        ADD(L("ffn_down"), 2, FFN, DIM, false);
#undef L
    }
    ADD("output_norm.weight", 1, DIM, 1, true);
    if (!sp->tied)
        ADD("output.weight", 2, DIM, VOCAB, false);
#undef ADD

    uint32_t types[3 + 9 * LAYERS];
    for (int i = 0; i < n; i++) {
        types[i] = t[i].norm ? sp->norm_type : sp->type;
        if (sp->odd_tensor && strcmp(t[i].name, sp->odd_tensor) == 0) {
            t[i].ne[0] = sp->odd_ne[0];
            t[i].ne[1] = sp->odd_ne[1];
        }
        if (sp->iq_tensor && strcmp(t[i].name, sp->iq_tensor) == 0)
            types[i] = GGUF_T_IQ4_NL;
        if (sp->skip_tensor && strcmp(t[i].name, sp->skip_tensor) == 0)
            types[i] = UINT32_MAX;
        else
            gguf_w_add_tensor(w, t[i].name, types[i], t[i].n_dims, t[i].ne);
    }
    for (int i = 0; i < n; i++) {
        if (types[i] == UINT32_MAX)
            continue;
        uint64_t count = t[i].ne[0] * (t[i].n_dims > 1 ? t[i].ne[1] : 1);
        if (types[i] == GGUF_T_IQ4_NL) {
            size_t nb = (size_t)gguf_ttype_bytes(GGUF_T_IQ4_NL, count);
            uint8_t *z = calloc(nb, 1);
            gguf_w_data(w, z, nb);
            free(z);
            continue;
        }
        float *x = malloc(count * sizeof *x);
        for (uint64_t k = 0; k < count; k++)
            x[k] = t[i].norm ? norm_value(t[i].name) : weight(t[i].name, k);
        gguf_w_data_f32(w, x, (size_t)count);
        free(x);
    }
    if (gguf_w_finish(w) != 0)
        fail_msg("writing the test model: %s", why);
}

static struct spec good(uint32_t type)
{
    return (struct spec){.type = type, .norm_type = GGUF_T_F32, .tok = TOK_SPM};
}

static void expect_load_error(const struct spec *sp, int code, const char *substr)
{
    const char *path = tpath("bad.gguf");
    write_model(path, sp);
    struct model *m = (struct model *)1;
    char why[512] = "";
    int rc = model_load(path, false, &m, why, sizeof why);
    if (rc != code || !strstr(why, substr))
        fail_msg("expected %s with \"%s\", got %s: \"%s\"", rill_err_name(code), substr,
                 rill_err_name(rc), why);
    assert_null(m);
}

/* Every row of w against the original weights: exact for F32, the F16
 * rounding for F16, half a quantization step (plus the rounding of the
 * block scale to F16) for Q8_0. */
static void check_rows(const struct wmat *w, const char *name)
{
    float *row = malloc(w->cols * sizeof *row);
    for (uint32_t r = 0; r < w->rows; r++) {
        wmat_row_f32(w, r, row);
        for (uint32_t b = 0; b < w->cols; b += 32) {
            float amax = 0;
            for (uint32_t j = b; j < b + 32 && j < w->cols; j++)
                amax = fmaxf(amax, fabsf(weight(name, (uint64_t)r * w->cols + j)));
            for (uint32_t j = b; j < b + 32 && j < w->cols; j++) {
                float x = weight(name, (uint64_t)r * w->cols + j);
                float tol = w->type == WT_F32    ? 0.0f
                            : w->type == WT_F16  ? fmaxf(fabsf(x) * 0x1p-11f, 0x1p-25f)
                            : w->type == WT_BF16 ? fabsf(x) * 0x1p-8f
                                                 : amax / 127.0f * 0.5f + amax * 0x1p-10f;
                if (fabsf(row[j] - x) > tol)
                    fail_msg("%s row %u col %u: %g, original %g (tolerance %g)", name, r, j,
                             (double)row[j], (double)x, (double)tol);
            }
        }
    }
    free(row);
}

static void load_and_check(uint32_t type)
{
    const char *path = tpath("good.gguf");
    struct spec sp = good(type);
    write_model(path, &sp);
    struct model *m;
    char why[512] = "";
    int rc = model_load(path, true, &m, why, sizeof why);
    if (rc)
        fail_msg("model_load: %s: %s", rill_err_name(rc), why);

    const struct model_config *c = &m->cfg;
    assert_string_equal(c->arch, "llama");
    assert_string_equal(c->name, "test-model");
    assert_int_equal(c->dim, DIM);
    assert_int_equal(c->n_layers, LAYERS);
    assert_int_equal(c->n_heads, HEADS);
    assert_int_equal(c->n_kv_heads, KV_HEADS);
    assert_int_equal(c->head_dim, HEAD_DIM);
    assert_int_equal(c->rope_dim, HEAD_DIM); /* absent: the head dimension */
    assert_int_equal(c->ffn_dim, FFN);
    assert_int_equal(c->vocab, VOCAB);
    assert_int_equal(c->ctx, CTX);
    assert_true(c->rope_base == 500000.0f);
    assert_true(c->norm_eps == 1e-6f);
    assert_int_equal(c->dtype, (int)type);
    uint64_t per_layer = 2 * DIM + (uint64_t)DIM * HEADS * HEAD_DIM * 2 +
                         (uint64_t)DIM * KV_HEADS * HEAD_DIM * 2 + (uint64_t)DIM * FFN * 3;
    assert_int_equal(c->n_params, 2ull * DIM * VOCAB + DIM + LAYERS * per_layer);
    assert_false(m->tied_output);
    assert_non_null(m->tok);
    assert_int_equal(tok_n_vocab(m->tok), VOCAB);
    assert_int_equal(tok_bos(m->tok), spm_vocab.bos);
    assert_true(tok_add_bos(m->tok));
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(m->file_bytes, (size_t)st.st_size);

    assert_int_equal(m->tok_embd.rows, VOCAB);
    assert_int_equal(m->tok_embd.cols, DIM);
    assert_int_equal(m->tok_embd.row_bytes, wtype_row_bytes(type, DIM));
    check_rows(&m->tok_embd, "token_embd.weight");
    check_rows(&m->output, "output.weight");
    for (int l = 0; l < LAYERS; l++) {
        const struct layer_weights *lw = &m->layers[l];
        char nm[64];
        assert_int_equal(lw->wq.rows, HEADS * HEAD_DIM);
        assert_int_equal(lw->wq.cols, DIM);
        assert_int_equal(lw->wk.rows, KV_HEADS * HEAD_DIM);
        assert_int_equal(lw->wv.rows, KV_HEADS * HEAD_DIM);
        assert_int_equal(lw->wo.rows, DIM);
        assert_int_equal(lw->wo.cols, HEADS * HEAD_DIM);
        assert_int_equal(lw->w_gate.rows, FFN);
        assert_int_equal(lw->w_up.rows, FFN);
        assert_int_equal(lw->w_down.rows, DIM);
        assert_int_equal(lw->w_down.cols, FFN);
        assert_int_equal(lw->w_down.type, (int)type);
#define CHECK(field, s) (snprintf(nm, sizeof nm, "blk.%d." s ".weight", l), check_rows(&lw->field, nm))
        CHECK(wq, "attn_q");
        CHECK(wk, "attn_k");
        CHECK(wv, "attn_v");
        CHECK(wo, "attn_output");
        CHECK(w_gate, "ffn_gate");
        CHECK(w_up, "ffn_up");
        CHECK(w_down, "ffn_down");
#undef CHECK
        for (int i = 0; i < DIM; i++) {
            assert_true(lw->attn_norm[i] == 1.5f);
            assert_true(lw->ffn_norm[i] == 1.5f);
        }
    }
    for (int i = 0; i < DIM; i++)
        assert_true(m->out_norm[i] == 0.75f);
    model_free(m);
}

static void test_model_loads_f32_weights_in_place(void **state)
{
    (void)state;
    load_and_check(GGUF_T_F32);
}

static void test_model_loads_f16_weights_within_half_rounding(void **state)
{
    (void)state;
    load_and_check(GGUF_T_F16);
}

static void test_model_q8_0_rows_match_the_f32_originals_within_quantization_error(void **state)
{
    (void)state;
    load_and_check(GGUF_T_Q8_0);
}

static void test_model_loads_bf16_weights_within_bf16_rounding(void **state)
{
    (void)state;
    load_and_check(GGUF_T_BF16);
}

static void test_model_converts_f16_norm_vectors_to_f32(void **state)
{
    (void)state;
    struct spec sp = good(GGUF_T_F32);
    sp.norm_type = GGUF_T_F16;
    const char *path = tpath("f16norm.gguf");
    write_model(path, &sp);
    struct model *m;
    char why[256];
    assert_int_equal(model_load(path, false, &m, why, sizeof why), 0);
    for (int i = 0; i < DIM; i++) {
        assert_true(m->layers[1].ffn_norm[i] == 1.5f);
        assert_true(m->out_norm[i] == 0.75f);
    }
    assert_int_equal(m->cfg.dtype, WT_F32);
    model_free(m);
}

static void test_model_without_output_weight_ties_it_to_token_embd(void **state)
{
    (void)state;
    struct spec sp = good(GGUF_T_Q8_0);
    sp.tied = true;
    const char *path = tpath("tied.gguf");
    write_model(path, &sp);
    struct model *m;
    char why[256];
    assert_int_equal(model_load(path, false, &m, why, sizeof why), 0);
    assert_true(m->tied_output);
    assert_ptr_equal(m->output.data, m->tok_embd.data);
    assert_int_equal(m->output.rows, VOCAB);
    assert_int_equal(m->output.cols, DIM);
    assert_int_equal(m->cfg.n_params, (uint64_t)DIM * VOCAB + DIM +
                                          LAYERS * (2 * DIM + (uint64_t)DIM * DIM * 2 +
                                                    (uint64_t)DIM * KV_HEADS * HEAD_DIM * 2 +
                                                    (uint64_t)DIM * FFN * 3));
    model_free(m);
}

static void test_model_reads_a_gpt2_tokenizer_with_merges(void **state)
{
    (void)state;
    struct spec sp = good(GGUF_T_F16);
    sp.tok = TOK_GPT2;
    const char *path = tpath("gpt2.gguf");
    write_model(path, &sp);
    struct model *m;
    char why[256] = "";
    int rc = model_load(path, false, &m, why, sizeof why);
    if (rc)
        fail_msg("%s: %s", rill_err_name(rc), why);
    assert_int_equal(tok_n_vocab(m->tok), VOCAB);
    assert_false(tok_add_bos(m->tok)); /* byte-level BPE: no BOS unless the file says so */
    int32_t ids[64];
    size_t n;
    assert_int_equal(tok_encode(m->tok, "the fox", 7, false, ids, 64, &n), 0);
    assert_true(n >= 1 && n <= 7);
    model_free(m);
}

/* ---- bad models, each named ------------------------------------------------------ */

static void test_model_rejects_an_unsupported_architecture_by_name(void **state)
{
    (void)state;
    struct spec sp = good(GGUF_T_F32);
    sp.arch = "gpt2";
    expect_load_error(&sp, RILL_E_UNSUPPORTED, "architecture 'gpt2' is not supported (supported: llama, mistral3, qwen2, qwen3, phi3)");
    sp = good(GGUF_T_F32);
    sp.skip_key = "general.architecture";
    expect_load_error(&sp, RILL_E_BAD_FORMAT, "missing metadata 'general.architecture'");
}

static void test_model_rejects_a_missing_tensor_by_name(void **state)
{
    (void)state;
    struct spec sp = good(GGUF_T_F32);
    sp.skip_tensor = "blk.1.ffn_up.weight";
    expect_load_error(&sp, RILL_E_BAD_FORMAT, "missing tensor 'blk.1.ffn_up.weight'");
    sp.skip_tensor = "output_norm.weight";
    expect_load_error(&sp, RILL_E_BAD_FORMAT, "missing tensor 'output_norm.weight'");
    sp.skip_tensor = "token_embd.weight";
    expect_load_error(&sp, RILL_E_BAD_FORMAT, "missing tensor 'token_embd.weight'");
}

static void test_model_rejects_a_shape_disagreeing_with_the_metadata(void **state)
{
    (void)state;
    struct spec sp = good(GGUF_T_F32);
    /* attn_k written for 4 kv heads while the metadata says 2 */
    sp.odd_tensor = "blk.0.attn_k.weight";
    sp.odd_ne[0] = DIM;
    sp.odd_ne[1] = 4 * HEAD_DIM;
    expect_load_error(&sp, RILL_E_BAD_FORMAT,
                      "tensor 'blk.0.attn_k.weight' has shape [64, 64], expected [64, 32]");
    /* transposed ffn_down */
    sp.odd_tensor = "blk.1.ffn_down.weight";
    sp.odd_ne[0] = DIM;
    sp.odd_ne[1] = FFN;
    expect_load_error(&sp, RILL_E_BAD_FORMAT,
                      "tensor 'blk.1.ffn_down.weight' has shape [64, 96], expected [96, 64]");
    /* a norm of the wrong length */
    sp.odd_tensor = "blk.0.attn_norm.weight";
    sp.odd_ne[0] = DIM * 2;
    sp.odd_ne[1] = 1;
    expect_load_error(&sp, RILL_E_BAD_FORMAT,
                      "tensor 'blk.0.attn_norm.weight' has shape [128], expected [64]");
    /* metadata that disagrees with every k/v tensor */
    sp = good(GGUF_T_F32);
    sp.kv_heads_meta = 1;
    expect_load_error(&sp, RILL_E_BAD_FORMAT, "tensor 'blk.0.attn_k.weight' has shape [64, 32], expected [64, 16]");
    sp.kv_heads_meta = 3;
    expect_load_error(&sp, RILL_E_BAD_FORMAT, "head_count 4 is not a multiple of head_count_kv 3");
}

static void test_model_rejects_an_unsupported_tensor_type_by_name(void **state)
{
    (void)state;
    struct spec sp = good(GGUF_T_F32);
    sp.iq_tensor = "blk.1.attn_q.weight";
    expect_load_error(&sp, RILL_E_UNSUPPORTED,
                      "tensor 'blk.1.attn_q.weight' has type iq4_nl, which rill does not support "
                      "(supported: f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_K, q3_K, q4_K, q5_K, q6_K)");
}

static void test_model_rejects_missing_metadata_and_tokenizer_mismatch(void **state)
{
    (void)state;
    struct spec sp = good(GGUF_T_F32);
    sp.skip_key = "llama.block_count";
    expect_load_error(&sp, RILL_E_BAD_FORMAT, "missing metadata 'llama.block_count'");
    sp.skip_key = "llama.embedding_length";
    expect_load_error(&sp, RILL_E_BAD_FORMAT, "missing metadata 'llama.embedding_length'");
    sp.skip_key = "tokenizer.ggml.model";
    expect_load_error(&sp, RILL_E_BAD_FORMAT, "missing metadata 'tokenizer.ggml.model'");
    sp = good(GGUF_T_F32);
    sp.drop_tokens = 1;
    expect_load_error(&sp, RILL_E_BAD_FORMAT, "tokenizer.ggml.tokens has 383 tokens but token_embd.weight has 384 rows");
}

static void test_model_passes_file_errors_through(void **state)
{
    (void)state;
    struct model *m;
    char why[256];
    assert_int_equal(model_load(tpath("absent.gguf"), false, &m, why, sizeof why), RILL_E_IO);
    assert_non_null(strstr(why, "absent.gguf"));
    const char *path = tpath("notgguf.gguf");
    FILE *f = fopen(path, "w");
    fputs("this is not a model at all", f);
    fclose(f);
    assert_int_equal(model_load(path, false, &m, why, sizeof why), RILL_E_BAD_FORMAT);
    assert_non_null(strstr(why, "not a GGUF file"));
    /* A good model cut short in its weights. */
    struct spec sp = good(GGUF_T_F16);
    path = tpath("cut.gguf");
    write_model(path, &sp);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(truncate(path, st.st_size - 5000), 0);
    assert_int_equal(model_load(path, false, &m, why, sizeof why), RILL_E_BAD_FORMAT);
    assert_non_null(strstr(why, "data past the end of the file"));
}

/* ---- element types ------------------------------------------------------------------ */

static void test_f16_round_trips_all_65536_halves_exactly(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = f16_to_f32((uint16_t)h);
        uint16_t back = f32_to_f16(f);
        if (back != h)
            fail_msg("half 0x%04x -> %g -> 0x%04x", h, (double)f, back);
        /* and the float really is that half's value */
        uint32_t e = (h >> 10) & 0x1f, mant = h & 0x3ff;
        if (e != 31) {
            double want = e ? ldexp(1.0 + mant / 1024.0, (int)e - 15) : ldexp(mant, -24);
            if (h & 0x8000)
                want = -want;
            if ((double)f != want)
                fail_msg("half 0x%04x is %g, want %g", h, (double)f, want);
        } else if (mant == 0) {
            assert_true(isinf(f));
        } else {
            assert_true(isnan(f));
        }
    }
}

/* Halfway between two neighbouring halves goes to the even one; a hair off
 * halfway goes to the nearer one. */
static void test_f32_to_f16_rounds_to_nearest_even_everywhere(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 0x7bff; h++) {
        float lo = f16_to_f32((uint16_t)h), hi = f16_to_f32((uint16_t)(h + 1));
        float mid = (lo + hi) / 2; /* exact: halves have 11 significant bits */
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        if (f32_to_f16(mid) != even || f32_to_f16(-mid) != (0x8000 | even))
            fail_msg("midpoint of 0x%04x and next: got 0x%04x", h, f32_to_f16(mid));
        assert_int_equal(f32_to_f16(nextafterf(mid, 0)), h);
        assert_int_equal(f32_to_f16(nextafterf(mid, INFINITY)), h + 1);
    }
    assert_int_equal(f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(f32_to_f16(65519.99f), 0x7bff);
    assert_int_equal(f32_to_f16(65520.0f), 0x7c00); /* the tie goes to even: infinity */
    assert_int_equal(f32_to_f16(1e10f), 0x7c00);
    assert_int_equal(f32_to_f16(-INFINITY), 0xfc00);
    assert_int_equal(f32_to_f16(0x1p-24f), 0x0001);
    assert_int_equal(f32_to_f16(0x1p-25f), 0x0000); /* tie to even: zero */
    assert_int_equal(f32_to_f16(nextafterf(0x1p-25f, 1)), 0x0001);
    assert_int_equal(f32_to_f16(0x1p-26f), 0x0000);
    assert_int_equal(f32_to_f16(1e-30f), 0x0000);
    assert_int_equal(f32_to_f16(-0.0f), 0x8000);
    assert_int_equal(f32_to_f16(0x1.ff8p-15f), 0x03ff); /* the largest subnormal */
    assert_int_equal(f32_to_f16(0x1.ffcp-15f), 0x0400); /* halfway to the smallest normal: even */
    assert_true(isnan(f16_to_f32(f32_to_f16(NAN))));
    uint32_t payload_low = 0x7f800001; /* a NaN whose payload is in the dropped bits */
    float nan_low;
    memcpy(&nan_low, &payload_low, 4);
    assert_true((f32_to_f16(nan_low) & 0x7fff) > 0x7c00);
}

static void test_wtype_names_and_row_sizes(void **state)
{
    (void)state;
    assert_string_equal(wtype_name(WT_F32), "f32");
    assert_string_equal(wtype_name(WT_F16), "f16");
    assert_string_equal(wtype_name(WT_Q8_0), "q8_0");
    assert_int_equal(wtype_from_name("q8_0"), WT_Q8_0);
    assert_int_equal(wtype_from_name("f16"), WT_F16);
    assert_int_equal(wtype_from_name("q4_0"), WT_Q4_0);
    assert_int_equal(wtype_from_name("q4_K"), WT_Q4_K);
    assert_int_equal(wtype_from_name("bf16"), WT_BF16);
    assert_string_equal(wtype_name(WT_Q6_K), "q6_K");
    assert_int_equal(wtype_from_name("iq4_nl"), -1); /* known to ggml, not computed by rill */
    assert_int_equal(wtype_row_bytes(WT_F32, 288), 1152);
    assert_int_equal(wtype_row_bytes(WT_F16, 288), 576);
    assert_int_equal(wtype_row_bytes(WT_Q8_0, 288), 9 * 34);
    assert_int_equal(sizeof(struct q8_0_block), 34);
}

/* ---- rill-mkmodel --------------------------------------------------------------------- */

static void run_mkmodel(const char *bin, const char *corpus_path, const char *dtype,
                        const char *extra, const char *out)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s --shape tiny --dtype %s --seed 7 --corpus %s %s --out %s 2>%s/mk.log",
             bin, dtype, corpus_path, extra, out, tmpdir);
    if (system(cmd) != 0) {
        snprintf(cmd, sizeof cmd, "cat %s/mk.log >&2", tmpdir);
        int rc = system(cmd);
        (void)rc;
        fail_msg("rill-mkmodel failed");
    }
}

static void test_model_made_by_rill_mkmodel_loads_in_every_dtype(void **state)
{
    (void)state;
    char bin[512];
    snprintf(bin, sizeof bin, "%s/rill-mkmodel", tu_build_dir());
    if (access(bin, X_OK) != 0)
        fail_msg("%s not found: build it first (make %s)", bin, bin);
    /* A corpus of our own, so the test does not depend on the shipped one. */
    char corpus_path[128];
    snprintf(corpus_path, sizeof corpus_path, "%s", tpath("corpus.txt"));
    FILE *f = fopen(corpus_path, "w");
    fputs(corpus, f);
    tu_made_up_words(f); /* enough of them for 512 tokens */
    fclose(f);

    const char *dtypes[3] = {"f32", "f16", "q8_0"};
    struct model *m[3];
    char why[512] = "";
    for (int i = 0; i < 3; i++) {
        char out[128];
        snprintf(out, sizeof out, "%s", tpath(dtypes[i]));
        run_mkmodel(bin, corpus_path, dtypes[i], "", out);
        int rc = model_load(out, false, &m[i], why, sizeof why);
        if (rc)
            fail_msg("loading the %s model: %s: %s", dtypes[i], rill_err_name(rc), why);
        const struct model_config *c = &m[i]->cfg;
        assert_int_equal(c->dim, 64);
        assert_int_equal(c->n_layers, 2);
        assert_int_equal(c->n_heads, 4);
        assert_int_equal(c->n_kv_heads, 2);
        assert_int_equal(c->ffn_dim, 128);
        assert_int_equal(c->vocab, 512);
        assert_int_equal(c->ctx, 2048);
        assert_int_equal(c->dtype, wtype_from_name(dtypes[i]));
        assert_string_equal(c->name, "rill-tiny");
        assert_int_equal(tok_n_vocab(m[i]->tok), 512);
        int32_t ids[256];
        size_t n;
        assert_int_equal(tok_encode(m[i]->tok, "the quick fox", 13, true, ids, 256, &n), 0);
        assert_int_equal(ids[0], tok_bos(m[i]->tok));
    }
    /* Same seed, same weights: f16 and q8_0 are the f32 weights rounded. */
    float a[128], b[128];
    const struct wmat *w32 = &m[0]->layers[1].w_down, *w16 = &m[1]->layers[1].w_down,
                      *w8 = &m[2]->layers[1].w_down;
    double sum2 = 0;
    for (uint32_t r = 0; r < w32->rows; r++) {
        wmat_row_f32(w32, r, a);
        wmat_row_f32(w16, r, b);
        for (uint32_t j = 0; j < w32->cols; j++) {
            assert_true(fabsf(a[j] - b[j]) <= fmaxf(fabsf(a[j]) * 0x1p-11f, 0x1p-25f));
            sum2 += (double)a[j] * a[j];
        }
        wmat_row_f32(w8, r, b);
        for (uint32_t j = 0; j < w32->cols; j += 32) {
            float amax = 0;
            for (int k = 0; k < 32; k++)
                amax = fmaxf(amax, fabsf(a[j + k]));
            for (int k = 0; k < 32; k++)
                assert_true(fabsf(a[j + k] - b[j + k]) <= amax / 127 * 0.5f + amax * 0x1p-10f);
        }
    }
    /* weights have standard deviation 1/sqrt(fan_in) = 1/sqrt(128) */
    double sd = sqrt(sum2 / ((double)w32->rows * w32->cols));
    assert_true(fabs(sd - 1 / sqrt(128.0)) < 0.1 / sqrt(128.0));
    for (int i = 0; i < 3; i++)
        model_free(m[i]);

    /* --tied and the gpt2 tokenizer */
    char out[128];
    snprintf(out, sizeof out, "%s", tpath("tied-gpt2"));
    run_mkmodel(bin, corpus_path, "q8_0", "--tied --tokenizer gpt2", out);
    struct model *t;
    int rc = model_load(out, false, &t, why, sizeof why);
    if (rc)
        fail_msg("loading the tied gpt2 model: %s: %s", rill_err_name(rc), why);
    assert_true(t->tied_output);
    model_free(t);
}

/* Every matrix of m, in layer order (token_embd, per layer q k v o gate up
 * down, output) with its name. */
static int model_mats(const struct model *m, const struct wmat **mats, char names[][48])
{
    int n = 0;
    mats[n] = &m->tok_embd;
    snprintf(names[n++], 48, "token_embd");
    static const char *const nm[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
    for (uint32_t l = 0; l < m->cfg.n_layers; l++) {
        const struct layer_weights *L = &m->layers[l];
        const struct wmat *w[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (int i = 0; i < 7; i++) {
            mats[n] = w[i];
            snprintf(names[n++], 48, "blk.%u.%s", l, nm[i]);
        }
    }
    mats[n] = &m->output;
    snprintf(names[n++], 48, "output");
    return n;
}

static struct model *load_made(const char *bin, const char *corpus_path, const char *args, const char *name)
{
    char cmd[1024], out[128];
    snprintf(out, sizeof out, "%s", tpath(name));
    snprintf(cmd, sizeof cmd, "%s %s --seed 7 --corpus %s --out %s 2>%s/mk.log", bin, args, corpus_path, out, tmpdir);
    if (system(cmd) != 0) {
        snprintf(cmd, sizeof cmd, "cat %s/mk.log >&2", tmpdir);
        int rc = system(cmd);
        (void)rc;
        fail_msg("rill-mkmodel %s failed", args);
    }
    struct model *m;
    char why[512] = "";
    int rc = model_load(out, false, &m, why, sizeof why);
    if (rc)
        fail_msg("loading %s: %s: %s", name, rill_err_name(rc), why);
    return m;
}

/* rill-mkmodel writes every type; each loads with the type it was written
 * in, and its rows are the f32 model's (same seed) within the type's
 * quantization error.  The mixes give each tensor llama-quantize's type,
 * tied or not, and fall back from K types where rows are not whole
 * 256-blocks. */
static void test_model_made_by_rill_mkmodel_loads_in_every_type_and_mix(void **state)
{
    (void)state;
    char bin[512];
    snprintf(bin, sizeof bin, "%s/rill-mkmodel", tu_build_dir());
    if (access(bin, X_OK) != 0)
        fail_msg("%s not found: build it first (make %s)", bin, bin);
    char corpus_path[128];
    snprintf(corpus_path, sizeof corpus_path, "%s", tpath("corpus.txt"));
    FILE *f = fopen(corpus_path, "w");
    fputs(corpus, f);
    tu_made_up_words(f);
    fclose(f);
    const char *shape = "--dim 256 --layers 2 --heads 4 --kv-heads 2 --ffn 512 --vocab 512";
    char args[256];
    snprintf(args, sizeof args, "%s --dtype f32", shape);
    struct model *ref = load_made(bin, corpus_path, args, "all-f32");
    const struct wmat *rm[64], *qm[64];
    char names[64][48];
    int nm = model_mats(ref, rm, names);
    static const struct {
        const char *name;
        double rms; /* bound on the RMS error relative to the weights' RMS */
    } types[] = {{"f16", 0.001}, {"bf16", 0.005}, {"q8_0", 0.01}, {"q6_K", 0.03}, {"q5_K", 0.05},
                 {"q5_1", 0.05},  {"q5_0", 0.06},  {"q4_K", 0.1},  {"q4_1", 0.1},  {"q4_0", 0.12},
                 {"q3_K", 0.2},   {"q2_K", 0.4}};
    float *a = malloc(512 * sizeof *a), *b = malloc(512 * sizeof *b);
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        snprintf(args, sizeof args, "%s --dtype %s", shape, types[ti].name);
        char file[32];
        snprintf(file, sizeof file, "all-%s", types[ti].name);
        struct model *m = load_made(bin, corpus_path, args, file);
        enum wtype t = (enum wtype)wtype_from_name(types[ti].name);
        assert_int_equal(m->cfg.dtype, t);
        assert_int_equal(model_mats(m, qm, names), nm);
        for (int i = 0; i < nm; i++) {
            if ((int)qm[i]->type != (int)t)
                fail_msg("%s: %s has type %s", types[ti].name, names[i], wtype_name(qm[i]->type));
            double se = 0, sx = 0;
            for (uint32_t r = 0; r < qm[i]->rows; r++) {
                wmat_row_f32(rm[i], r, a);
                wmat_row_f32(qm[i], r, b);
                for (uint32_t k = 0; k < qm[i]->cols; k++) {
                    se += ((double)a[k] - b[k]) * ((double)a[k] - b[k]);
                    sx += (double)a[k] * a[k];
                }
            }
            if (sqrt(se / sx) > types[ti].rms)
                fail_msg("%s: %s differs from the f32 weights by %.4f (RMS, relative), more than %.4f",
                         types[ti].name, names[i], sqrt(se / sx), types[ti].rms);
        }
        model_free(m);
    }
    free(a);
    free(b);
    model_free(ref);

    /* q4_K_M over 8 layers: attn_v and ffn_down are q6_K in layers 0, 3, 6
     * and 7 (the first and last eighth, and (i - 1) % 3 == 2), the output
     * q6_K, everything else (token_embd too) q4_K. */
    snprintf(args, sizeof args, "--dim 256 --layers 8 --heads 4 --kv-heads 2 --ffn 512 --vocab 512 --dtype q4_K_M");
    struct model *m = load_made(bin, corpus_path, args, "q4_K_M");
    assert_int_equal(m->cfg.dtype, WT_Q4_K);
    assert_false(m->tied_output);
    nm = model_mats(m, qm, names);
    for (int i = 0; i < nm; i++) {
        unsigned l = 0;
        bool six = !strcmp(names[i], "output");
        if (sscanf(names[i], "blk.%u.", &l) == 1 && (strstr(names[i], "attn_v") || strstr(names[i], "ffn_down")))
            six = l == 0 || l == 3 || l == 6 || l == 7;
        if (qm[i]->type != (six ? WT_Q6_K : WT_Q4_K))
            fail_msg("q4_K_M: %s has type %s", names[i], wtype_name(qm[i]->type));
    }
    model_free(m);
    /* Tied: token_embd is the output matrix, so it is the q6_K one. */
    snprintf(args, sizeof args, "--dim 256 --layers 2 --heads 4 --kv-heads 2 --ffn 512 --vocab 512 --dtype q5_K_M --tied");
    m = load_made(bin, corpus_path, args, "q5_K_M-tied");
    assert_true(m->tied_output);
    assert_int_equal(m->tok_embd.type, WT_Q6_K);
    assert_ptr_equal(m->output.data, m->tok_embd.data);
    assert_int_equal(m->layers[1].wq.type, WT_Q5_K);
    assert_int_equal(m->layers[0].w_down.type, WT_Q5_K); /* of 2 layers, the last has more bits */
    assert_int_equal(m->layers[1].w_down.type, WT_Q6_K);
    model_free(m);
    /* Rows of 96: no K type fits; q5_1 where q5_K was meant, q8_0 where
     * q6_K was; ffn_down's rows of 256 keep their K types.  And q4_0's mix:
     * the output q6_K (rows of 256 here). */
    snprintf(args, sizeof args, "--dim 96 --layers 2 --heads 3 --kv-heads 3 --ffn 256 --vocab 509 --mix q5_K_M");
    m = load_made(bin, corpus_path, args, "q5_K_M-96");
    assert_int_equal(m->tok_embd.type, WT_Q5_1);
    assert_int_equal(m->layers[1].wq.type, WT_Q5_1);
    assert_int_equal(m->layers[0].wv.type, WT_Q5_1);
    assert_int_equal(m->layers[1].wv.type, WT_Q8_0);
    assert_int_equal(m->layers[0].w_down.type, WT_Q5_K);
    assert_int_equal(m->layers[1].w_down.type, WT_Q6_K);
    assert_int_equal(m->output.type, WT_Q8_0);
    model_free(m);
    snprintf(args, sizeof args, "--dim 256 --layers 2 --heads 4 --ffn 512 --vocab 512 --mix q4_0");
    m = load_made(bin, corpus_path, args, "q4_0-mix");
    assert_int_equal(m->cfg.dtype, WT_Q4_0);
    assert_int_equal(m->output.type, WT_Q6_K);
    assert_int_equal(m->tok_embd.type, WT_Q4_0);
    assert_int_equal(m->layers[1].w_down.type, WT_Q4_0);
    model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_loads_f32_weights_in_place),
        cmocka_unit_test(test_model_loads_f16_weights_within_half_rounding),
        cmocka_unit_test(test_model_q8_0_rows_match_the_f32_originals_within_quantization_error),
        cmocka_unit_test(test_model_loads_bf16_weights_within_bf16_rounding),
        cmocka_unit_test(test_model_converts_f16_norm_vectors_to_f32),
        cmocka_unit_test(test_model_without_output_weight_ties_it_to_token_embd),
        cmocka_unit_test(test_model_reads_a_gpt2_tokenizer_with_merges),
        cmocka_unit_test(test_model_rejects_an_unsupported_architecture_by_name),
        cmocka_unit_test(test_model_rejects_a_missing_tensor_by_name),
        cmocka_unit_test(test_model_rejects_a_shape_disagreeing_with_the_metadata),
        cmocka_unit_test(test_model_rejects_an_unsupported_tensor_type_by_name),
        cmocka_unit_test(test_model_rejects_missing_metadata_and_tokenizer_mismatch),
        cmocka_unit_test(test_model_passes_file_errors_through),
        cmocka_unit_test(test_f16_round_trips_all_65536_halves_exactly),
        cmocka_unit_test(test_f32_to_f16_rounds_to_nearest_even_everywhere),
        cmocka_unit_test(test_wtype_names_and_row_sizes),
        cmocka_unit_test(test_model_made_by_rill_mkmodel_loads_in_every_dtype),
        cmocka_unit_test(test_model_made_by_rill_mkmodel_loads_in_every_type_and_mix),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
