/* test_arch.c — the architectures rill loads, each held to a reference.
 *
 * For every feature of llama / mistral3 / qwen2 / qwen3 rill implements
 * (grouped-query attention, tied output, Llama 3.1 rope_freqs, linear RoPE
 * scaling, q/k/v biases, per-head q/k RMS norm, a head size that is not
 * dim / heads, NEOX RoPE), a model made by rill-mkmodel is run through the
 * fast forward pass and through a reference written here: a plain
 * double-precision forward pass that reads the GGUF file itself (metadata
 * keys and tensors by name, dequantized to floats through wmat_row_f32) —
 * not rill's model struct — so a tensor bound wrongly, or a feature
 * forgotten in the loader, shows as a difference.  Each test also runs the
 * reference with that one feature turned off and requires it to be far from
 * rill's logits: that is what a rill without the feature would give, so the
 * test fails if the feature goes.
 *
 * And the refusals: a file that would run silently wrong (unknown
 * architecture, a tensor the architecture does not use, a metadata key that
 * changes the math and is not implemented) fails to load with
 * RILL_E_UNSUPPORTED and a message naming it.  Those files are copies of a
 * made model with one key or tensor added or changed.
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
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "tools/lib/ggufw.h"
#include "worker/forward.h"
#include "worker/gguf.h"
#include "worker/kvcache.h"
#include "worker/model.h"
#include "worker/pool.h"
#include "testutil.h"

#define SEQ_LEN 40
#define MAX_CTX 256

static char tmpdir[64];

struct mspec {
    const char *name;
    const char *args;
};

#define GQA "--dim 128 --layers 2 --heads 4 --kv-heads 2 --ffn 256 --vocab 512 --ctx 256 "
static const struct mspec models[] = {
    {"llama-gqa", "--arch llama " GQA "--dtype f32"},
    {"llama3-freqs-tied", "--arch llama " GQA "--rope-base 500000 --rope-freqs --rope-orig-ctx 256 --tied --dtype f32"},
    {"llama-linear", "--arch llama " GQA "--rope-scale 4 --dtype f32"},
    /* Mistral Nemo's shape: heads of 64 while dim / heads is 32 (key_length). */
    {"llama-wide-heads", "--arch llama " GQA "--head-dim 64 --dtype f32"},
    {"mistral3", "--arch mistral3 " GQA "--dtype f32"},
    {"qwen2", "--arch qwen2 " GQA "--rope-base 1000000 --dtype f32"},
    {"qwen3", "--arch qwen3 " GQA "--head-dim 64 --rope-base 1000000 --dtype f32"},
    {"phi3", "--arch phi3 " GQA "--dtype f32"},
    /* K types need rows of 256: dim 256.  Int8 activations: a looser bound. */
    {"qwen2-q5_K_M", "--arch qwen2 --dim 256 --layers 2 --heads 4 --kv-heads 2 --ffn 512 --vocab 512 --tied "
                     "--dtype q5_K_M"},
    {"qwen3-q6_K", "--arch qwen3 --dim 256 --layers 2 --heads 4 --kv-heads 2 --head-dim 128 --ffn 512 "
                   "--vocab 512 --tied --dtype q6_K"},
    {"llama3-q4_K_M", "--arch llama --dim 256 --layers 2 --heads 4 --kv-heads 2 --ffn 512 --vocab 512 "
                      "--rope-base 500000 --rope-freqs --rope-orig-ctx 256 --tied --dtype q4_K_M"},
};
#define N_MODELS (sizeof models / sizeof models[0])

static const char *tpath(const char *name)
{
    static char p[8][160];
    static int k;
    k = (k + 1) % 8;
    snprintf(p[k], sizeof p[k], "%s/%s.gguf", tmpdir, name);
    return p[k];
}

static int setup(void **state)
{
    (void)state;
    rlog_init("test", NULL, RLOG_WARN, false, 2);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/rill-test-arch-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    char corpus[128], cmd[1024];
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", tmpdir);
    if (tu_write_corpus(corpus))
        return -1;
    for (size_t i = 0; i < N_MODELS; i++) {
        snprintf(cmd, sizeof cmd, "%s/rill-mkmodel %s --seed 3 --tokenizer gpt2 --corpus %s --out %s 2>%s/mk.log",
                 tu_build_dir(), models[i].args, corpus, tpath(models[i].name), tmpdir);
        if (system(cmd) != 0) {
            fprintf(stderr, "failed: %s\n", cmd);
            return -1;
        }
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- rill's logits -------------------------------------------------------------------- */

/* Logits of tok[0..n) decoded one position at a time; *out_model is the
 * loaded model (to check what it bound), freed by the caller. */
static float *rill_logits(const char *path, const int32_t *tok, uint32_t n, uint32_t *vocab)
{
    struct model *m;
    char why[512] = "";
    int rc = model_load(path, false, &m, why, sizeof why);
    if (rc)
        fail_msg("loading %s: %s: %s", path, rill_err_name(rc), why);
    const struct model_config *c = &m->cfg;
    struct pool *pool = pool_create(1);
    struct kv *kv;
    size_t per_tok = (size_t)c->n_layers * 2 * c->n_kv_heads * c->head_dim * sizeof(float);
    assert_int_equal(kv_create(c->n_layers, c->n_kv_heads * c->head_dim, 16, per_tok * MAX_CTX, &kv), 0);
    struct fwd *f;
    rc = fwd_create(m, kv, pool, 4, MAX_CTX, &f, why, sizeof why);
    if (rc)
        fail_msg("fwd_create %s: %s: %s", path, rill_err_name(rc), why);
    *vocab = c->vocab;
    float *out = malloc((size_t)n * c->vocab * sizeof(float));
    struct kv_seq s = {0};
    for (uint32_t p = 0; p < n; p++) {
        assert_int_equal(kv_reserve(kv, &s, p + 1), 0);
        struct fwd_row row = {tok[p], p, &s, 0};
        assert_int_equal(fwd_run(f, &row, 1, out + (size_t)p * c->vocab), 0);
    }
    kv_release(kv, &s);
    fwd_free(f);
    kv_free(kv);
    pool_free(pool);
    model_free(m);
    return out;
}

/* ---- the reference ---------------------------------------------------------------------- *
 *
 * Written from the architectures' definitions (llama.cpp's llama, qwen2 and
 * qwen3 graphs), reading the file with the GGUF reader only:
 *   x = token_embd[tok]
 *   per layer: h = rmsnorm(x) * attn_norm
 *              q = Wq h (+ bq), k = Wk h (+ bk), v = Wv h (+ bv)
 *              qwen3: each head of q and k rmsnormed with attn_q_norm / attn_k_norm
 *              RoPE on q and k: pair (2i, 2i+1) for llama/mistral3, (i, i + n_rot/2)
 *                for qwen2/qwen3; angle pos * base^(-2i/n_rot) / factor (linear
 *                scaling) / rope_freqs[i]
 *              query head j reads KV head j / (heads / kv_heads)
 *              x += Wo softmax(q k^T / sqrt(head_dim)) v (+ bo)
 *              x += Wdown (silu(Wgate h2) * Wup h2), h2 = rmsnorm(x) * ffn_norm
 *   logits = output (or token_embd) rmsnorm(x) * output_norm
 * `off` turns one feature off, to show what forgetting it would give. */

enum ref_off {
    OFF_NONE, OFF_BIAS, OFF_QK_NORM, OFF_ROPE_FREQS, OFF_ROPE_SCALE, OFF_ROPE_STYLE, OFF_GQA_GROUPS, OFF_FUSED_ORDER
};

struct rmat {
    struct wmat w;
    bool present;
};

struct ref {
    struct gguf *g;
    bool neox;
    uint32_t dim, layers, heads, kv_heads, hd, n_rot, ffn, vocab;
    double base, eps, scale;
    float *row; /* scratch, widest row */
};

static struct rmat ref_tensor(const struct ref *R, const char *name)
{
    struct rmat m = {0};
    const struct gguf_tensor *t = gguf_find_tensor(R->g, name);
    if (!t)
        return m;
    m.present = true;
    m.w.data = t->data;
    m.w.type = (enum wtype)t->type;
    m.w.cols = (uint32_t)t->ne[0];
    m.w.rows = (uint32_t)t->ne[1];
    m.w.row_bytes = wtype_row_bytes(m.w.type, m.w.cols);
    return m;
}

static struct rmat ref_layer_tensor(const struct ref *R, uint32_t l, const char *what)
{
    char nm[96];
    snprintf(nm, sizeof nm, "blk.%" PRIu32 ".%s", l, what);
    return ref_tensor(R, nm);
}

/* Rows [r0, r0 + rows) of a fused tensor. */
static struct rmat ref_rows(const struct rmat *m, uint32_t r0, uint32_t rows)
{
    struct rmat v = *m;
    assert_true(m->present && r0 + rows <= m->w.rows);
    v.w.data = (const uint8_t *)m->w.data + (size_t)r0 * m->w.row_bytes;
    v.w.rows = rows;
    return v;
}

static uint32_t ref_u32(const struct ref *R, const char *arch, const char *suffix, uint32_t dflt)
{
    char key[96];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    uint32_t v;
    return gguf_get_u32(R->g, key, &v, NULL, 0) == 0 ? v : dflt;
}

static double ref_f32(const struct ref *R, const char *arch, const char *suffix, double dflt)
{
    char key[96];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    float v;
    return gguf_get_f32(R->g, key, &v, NULL, 0) == 0 ? v : dflt;
}

static void ref_open(struct ref *R, const char *path)
{
    memset(R, 0, sizeof *R);
    char why[256] = "";
    assert_int_equal(gguf_open(path, &R->g, why, sizeof why), 0);
    char arch[32];
    assert_int_equal(gguf_get_str_buf(R->g, "general.architecture", arch, sizeof arch, NULL, 0), 0);
    R->neox = !strcmp(arch, "qwen2") || !strcmp(arch, "qwen3") || !strcmp(arch, "phi3");
    R->dim = ref_u32(R, arch, "embedding_length", 0);
    R->layers = ref_u32(R, arch, "block_count", 0);
    R->heads = ref_u32(R, arch, "attention.head_count", 0);
    R->kv_heads = ref_u32(R, arch, "attention.head_count_kv", R->heads);
    R->hd = ref_u32(R, arch, "attention.key_length", R->dim / R->heads);
    R->n_rot = ref_u32(R, arch, "rope.dimension_count", R->hd);
    R->ffn = ref_u32(R, arch, "feed_forward_length", 0);
    R->base = ref_f32(R, arch, "rope.freq_base", 10000);
    R->eps = ref_f32(R, arch, "attention.layer_norm_rms_epsilon", 1e-5);
    double factor = ref_f32(R, arch, "rope.scaling.factor", 0);
    char type[32] = "linear", key[96];
    snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
    gguf_get_str_buf(R->g, key, type, sizeof type, NULL, 0);
    R->scale = factor > 0 && !strcmp(type, "linear") ? 1.0 / factor : 1.0;
    R->vocab = (uint32_t)gguf_find_tensor(R->g, "token_embd.weight")->ne[1];
    uint32_t widest = R->dim > R->ffn ? R->dim : R->ffn;
    widest = widest > R->heads * R->hd ? widest : R->heads * R->hd;
    R->row = malloc((widest > R->vocab ? widest : R->vocab) * sizeof(float));
}

static void ref_close(struct ref *R)
{
    gguf_close(R->g);
    free(R->row);
}

static void rmsnorm_d(double *o, const double *x, const struct ref *R, const struct rmat *w, uint32_t n)
{
    double ss = 0;
    for (uint32_t i = 0; i < n; i++)
        ss += x[i] * x[i];
    double s = 1.0 / sqrt(ss / n + R->eps);
    wmat_row_f32(&w->w, 0, R->row);
    for (uint32_t i = 0; i < n; i++)
        o[i] = x[i] * s * R->row[i];
}

/* o = W x (+ b when present). */
static void matvec_d(const struct ref *R, double *o, const struct rmat *W, const struct rmat *b, const double *x)
{
    assert_true(W->present);
    for (uint32_t r = 0; r < W->w.rows; r++) {
        wmat_row_f32(&W->w, r, R->row);
        double s = 0;
        for (uint32_t k = 0; k < W->w.cols; k++)
            s += (double)R->row[k] * x[k];
        o[r] = s;
    }
    if (b && b->present) {
        wmat_row_f32(&b->w, 0, R->row);
        for (uint32_t r = 0; r < W->w.rows; r++)
            o[r] += R->row[r];
    }
}

static void rope_d(const struct ref *R, double *v, uint32_t n_heads, uint32_t pos, const struct rmat *freqs,
                   enum ref_off off)
{
    bool neox = off == OFF_ROPE_STYLE ? !R->neox : R->neox;
    float ff[256];
    uint32_t half = R->n_rot / 2;
    for (uint32_t i = 0; i < half; i++)
        ff[i] = 1.0f;
    if (freqs->present && off != OFF_ROPE_FREQS)
        wmat_row_f32(&freqs->w, 0, ff);
    double scale = off == OFF_ROPE_SCALE ? 1.0 : R->scale;
    for (uint32_t h = 0; h < n_heads; h++)
        for (uint32_t i = 0; i < half; i++) {
            double theta = pos * scale * pow(R->base, -2.0 * i / R->n_rot) / ff[i];
            double *a = v + (size_t)h * R->hd + (neox ? i : 2 * i), *b = a + (neox ? half : 1);
            double x0 = *a, x1 = *b;
            *a = x0 * cos(theta) - x1 * sin(theta);
            *b = x0 * sin(theta) + x1 * cos(theta);
        }
}

/* Logits (double) of tok[0..n), each position after the ones before. */
static double *ref_logits(const char *path, const int32_t *tok, uint32_t n, enum ref_off off)
{
    struct ref R;
    ref_open(&R, path);
    uint32_t dim = R.dim, hd = R.hd, qd = R.heads * hd, kvd = R.kv_heads * hd;
    size_t big = dim > R.ffn ? dim : R.ffn;
    big = big > qd ? big : qd;
    double *x = calloc(big, sizeof(double)), *h = calloc(big, sizeof(double)), *q = calloc(big, sizeof(double));
    double *k = calloc(big, sizeof(double)), *v = calloc(big, sizeof(double)), *att = calloc(big, sizeof(double));
    double *t = calloc(big, sizeof(double)), *g = calloc(big, sizeof(double)), *u = calloc(big, sizeof(double));
    double *sc = calloc(n, sizeof(double));
    double *kc = calloc((size_t)R.layers * n * kvd, sizeof(double)), *vc = calloc((size_t)R.layers * n * kvd, sizeof(double));
    double *out = calloc((size_t)n * R.vocab, sizeof(double));
    struct rmat emb = ref_tensor(&R, "token_embd.weight"), outw = ref_tensor(&R, "output.weight");
    struct rmat onorm = ref_tensor(&R, "output_norm.weight"), freqs = ref_tensor(&R, "rope_freqs.weight");
    if (!outw.present)
        outw = emb;
    for (uint32_t pos = 0; pos < n; pos++) {
        wmat_row_f32(&emb.w, (uint32_t)tok[pos], R.row);
        for (uint32_t i = 0; i < dim; i++)
            x[i] = R.row[i];
        for (uint32_t l = 0; l < R.layers; l++) {
            struct rmat an = ref_layer_tensor(&R, l, "attn_norm.weight");
            struct rmat wq = ref_layer_tensor(&R, l, "attn_q.weight"), wk = ref_layer_tensor(&R, l, "attn_k.weight");
            struct rmat wv = ref_layer_tensor(&R, l, "attn_v.weight"), wo = ref_layer_tensor(&R, l, "attn_output.weight");
            struct rmat bq = ref_layer_tensor(&R, l, "attn_q.bias"), bk = ref_layer_tensor(&R, l, "attn_k.bias");
            struct rmat bv = ref_layer_tensor(&R, l, "attn_v.bias"), bo = ref_layer_tensor(&R, l, "attn_output.bias");
            struct rmat qn = ref_layer_tensor(&R, l, "attn_q_norm.weight"), kn = ref_layer_tensor(&R, l, "attn_k_norm.weight");
            struct rmat fn = ref_layer_tensor(&R, l, "ffn_norm.weight"), wg = ref_layer_tensor(&R, l, "ffn_gate.weight");
            struct rmat wu = ref_layer_tensor(&R, l, "ffn_up.weight"), wd = ref_layer_tensor(&R, l, "ffn_down.weight");
            /* Phi-3: q, k, v rows of attn_qkv; gate rows, then up rows, of ffn_up. */
            struct rmat qkv = ref_layer_tensor(&R, l, "attn_qkv.weight");
            if (qkv.present) {
                wq = ref_rows(&qkv, 0, qd);
                wk = ref_rows(&qkv, qd, kvd);
                wv = ref_rows(&qkv, qd + kvd, kvd);
            }
            if (!wg.present) {
                struct rmat up = wu;
                bool swap = off == OFF_FUSED_ORDER;
                wg = ref_rows(&up, swap ? R.ffn : 0, R.ffn);
                wu = ref_rows(&up, swap ? 0 : R.ffn, R.ffn);
            }
            bool bias = off != OFF_BIAS;
            rmsnorm_d(h, x, &R, &an, dim);
            matvec_d(&R, q, &wq, bias ? &bq : NULL, h);
            matvec_d(&R, k, &wk, bias ? &bk : NULL, h);
            matvec_d(&R, v, &wv, bias ? &bv : NULL, h);
            if (qn.present && off != OFF_QK_NORM) {
                for (uint32_t j = 0; j < R.heads; j++)
                    rmsnorm_d(q + (size_t)j * hd, q + (size_t)j * hd, &R, &qn, hd);
                for (uint32_t j = 0; j < R.kv_heads; j++)
                    rmsnorm_d(k + (size_t)j * hd, k + (size_t)j * hd, &R, &kn, hd);
            }
            rope_d(&R, q, R.heads, pos, &freqs, off);
            rope_d(&R, k, R.kv_heads, pos, &freqs, off);
            double *kl = kc + (size_t)l * n * kvd, *vl = vc + (size_t)l * n * kvd;
            memcpy(kl + (size_t)pos * kvd, k, kvd * sizeof(double));
            memcpy(vl + (size_t)pos * kvd, v, kvd * sizeof(double));
            for (uint32_t j = 0; j < R.heads; j++) {
                /* The wrong grouping interleaves heads instead of blocking them. */
                uint32_t grp = off == OFF_GQA_GROUPS ? j % R.kv_heads : j / (R.heads / R.kv_heads);
                double mx = -INFINITY, sum = 0;
                for (uint32_t p = 0; p <= pos; p++) {
                    double s = 0;
                    for (uint32_t i = 0; i < hd; i++)
                        s += q[(size_t)j * hd + i] * kl[(size_t)p * kvd + (size_t)grp * hd + i];
                    sc[p] = s / sqrt((double)hd);
                    mx = fmax(mx, sc[p]);
                }
                for (uint32_t p = 0; p <= pos; p++)
                    sum += sc[p] = exp(sc[p] - mx);
                for (uint32_t i = 0; i < hd; i++) {
                    double o = 0;
                    for (uint32_t p = 0; p <= pos; p++)
                        o += sc[p] / sum * vl[(size_t)p * kvd + (size_t)grp * hd + i];
                    att[(size_t)j * hd + i] = o;
                }
            }
            matvec_d(&R, t, &wo, bias ? &bo : NULL, att);
            for (uint32_t i = 0; i < dim; i++)
                x[i] += t[i];
            rmsnorm_d(h, x, &R, &fn, dim);
            matvec_d(&R, g, &wg, NULL, h);
            matvec_d(&R, u, &wu, NULL, h);
            for (uint32_t i = 0; i < R.ffn; i++)
                g[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
            matvec_d(&R, t, &wd, NULL, g);
            for (uint32_t i = 0; i < dim; i++)
                x[i] += t[i];
        }
        rmsnorm_d(h, x, &R, &onorm, dim);
        matvec_d(&R, out + (size_t)pos * R.vocab, &outw, NULL, h);
    }
    double *bufs[] = {x, h, q, k, v, att, t, g, u, sc, kc, vc};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        free(bufs[i]);
    ref_close(&R);
    return out;
}

/* ---- comparing -------------------------------------------------------------------------- */

/* Token ids: a fixed pseudo-random walk. */
static void seq_tokens(uint32_t seed, uint32_t n, uint32_t V, int32_t *t)
{
    uint64_t x = 0x9e3779b97f4a7c15ull * (seed + 1);
    for (uint32_t k = 0; k < n; k++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        t[k] = (int32_t)(x % V);
    }
}

/* The worst |a - b| / max|b| over every position. */
static double worst_rel(const float *a, const double *b, uint32_t n, uint32_t V)
{
    double worst = 0;
    for (uint32_t p = 0; p < n; p++) {
        double scale = 0;
        for (uint32_t i = 0; i < V; i++)
            scale = fmax(scale, fabs(b[(size_t)p * V + i]));
        for (uint32_t i = 0; i < V; i++)
            worst = fmax(worst, fabs(a[(size_t)p * V + i] - b[(size_t)p * V + i]) / scale);
    }
    return worst;
}

/* Float kernels against the double reference: ~1e-6 measured (see
 * test_forward.c's REF_TOL); quantized weights compute with int8
 * activations, 2-4e-2 measured there.  A feature turned off must move the
 * reference at least ten times the bound away. */
#define TOL_F32 1e-4
#define TOL_QUANT 0.08

static const char *off_name(enum ref_off off)
{
    static const char *const n[] = {"nothing", "biases", "q/k norm", "rope_freqs", "rope scaling", "rope pairing",
                                    "GQA grouping", "gate/up order"};
    return n[off];
}

/* rill's logits against the reference, and against the reference without
 * each of `offs` (which rill must be far from). */
static void check_model(const char *name, const enum ref_off *offs, size_t n_offs)
{
    const char *path = tpath(name);
    bool quant = strstr(name, "q4_K") || strstr(name, "q5_K") || strstr(name, "q6_K");
    double tol = quant ? TOL_QUANT : TOL_F32;
    int32_t tok[SEQ_LEN];
    struct ref R;
    ref_open(&R, path);
    uint32_t V = R.vocab;
    ref_close(&R);
    seq_tokens(7, SEQ_LEN, V, tok);
    uint32_t vocab;
    float *fast = rill_logits(path, tok, SEQ_LEN, &vocab);
    assert_int_equal(vocab, V);
    double *ref = ref_logits(path, tok, SEQ_LEN, OFF_NONE);
    double w = worst_rel(fast, ref, SEQ_LEN, V);
    print_message("  %-18s worst |rill - reference| / max|logit|: %.2e (bound %.0e)\n", name, w, tol);
    if (w > tol)
        fail_msg("%s: rill is %.3g of the largest logit away from the reference (bound %g)", name, w, tol);
    free(ref);
    for (size_t i = 0; i < n_offs; i++) {
        double *off = ref_logits(path, tok, SEQ_LEN, offs[i]);
        double d = worst_rel(fast, off, SEQ_LEN, V);
        print_message("  %-18s   without %-13s %.2e away\n", name, off_name(offs[i]), d);
        if (d < 10 * tol)
            fail_msg("%s: the reference without %s is only %.3g from rill: the test could not see it missing", name,
                     off_name(offs[i]), d);
        free(off);
    }
    free(fast);
}

static void test_llama_with_grouped_query_attention_matches_the_reference(void **state)
{
    (void)state;
    const enum ref_off offs[] = {OFF_GQA_GROUPS};
    check_model("llama-gqa", offs, 1);
}

static void test_llama3_rope_freqs_and_tied_output_match_the_reference(void **state)
{
    (void)state;
    char why[256];
    struct model *m;
    assert_int_equal(model_load(tpath("llama3-freqs-tied"), false, &m, why, sizeof why), 0);
    assert_true(m->tied_output);
    assert_non_null(m->rope_freqs);
    /* Llama 3.1's factors: 1 for the fastest pair, 8 for the slowest. */
    assert_true(m->rope_freqs[0] == 1.0f);
    assert_true(m->rope_freqs[m->cfg.rope_dim / 2 - 1] == 8.0f);
    model_free(m);
    const enum ref_off offs[] = {OFF_ROPE_FREQS};
    check_model("llama3-freqs-tied", offs, 1);
}

static void test_llama_linear_rope_scaling_matches_the_reference(void **state)
{
    (void)state;
    const enum ref_off offs[] = {OFF_ROPE_SCALE};
    check_model("llama-linear", offs, 1);
}

static void test_llama_with_heads_wider_than_dim_over_heads_matches_the_reference(void **state)
{
    (void)state;
    const enum ref_off offs[] = {OFF_GQA_GROUPS};
    check_model("llama-wide-heads", offs, 1);
}

static void test_mistral3_matches_the_reference(void **state)
{
    (void)state;
    const enum ref_off offs[] = {OFF_ROPE_STYLE};
    check_model("mistral3", offs, 1);
}

static void test_qwen2_biases_and_neox_rope_match_the_reference(void **state)
{
    (void)state;
    const enum ref_off offs[] = {OFF_BIAS, OFF_ROPE_STYLE};
    check_model("qwen2", offs, 2);
}

static void test_qwen3_qk_norm_and_wider_heads_match_the_reference(void **state)
{
    (void)state;
    char why[256];
    struct model *m;
    assert_int_equal(model_load(tpath("qwen3"), false, &m, why, sizeof why), 0);
    assert_int_equal(m->cfg.head_dim, 64); /* not dim / heads = 32 */
    assert_int_equal(m->layers[0].wq.rows, 4 * 64);
    assert_int_equal(m->layers[0].wo.cols, 4 * 64);
    model_free(m);
    const enum ref_off offs[] = {OFF_QK_NORM, OFF_ROPE_STYLE};
    check_model("qwen3", offs, 2);
}

static void test_phi3_fused_qkv_and_gate_up_match_the_reference(void **state)
{
    (void)state;
    const enum ref_off offs[] = {OFF_FUSED_ORDER, OFF_ROPE_STYLE};
    check_model("phi3", offs, 2);
}

static void test_quantized_qwen2_qwen3_and_llama3_files_match_the_reference(void **state)
{
    (void)state;
    check_model("qwen2-q5_K_M", NULL, 0);
    check_model("qwen3-q6_K", NULL, 0);
    check_model("llama3-q4_K_M", NULL, 0);
}

/* ---- refusals ---------------------------------------------------------------------------------- */

/* An edit of a file's metadata or tensors, for copy_edited(). */
struct edit {
    const char *set_arch;      /* general.architecture */
    const char *add_key;       /* a metadata key to add (or replace) */
    enum gguf_vtype add_type;  /* GGUF_F32, GGUF_U32 or GGUF_STR */
    double add_num;
    const char *add_str;
    const char *add_tensor;    /* an extra F32 vector tensor of 8 */
};

static int copy_kv(struct gguf_writer *w, const char *key, const struct gguf_kv *kv)
{
    switch (kv->type) {
    case GGUF_U8: return gguf_w_kv_u8(w, key, (uint8_t)kv->v.u);
    case GGUF_I8: return gguf_w_kv_i8(w, key, (int8_t)kv->v.i);
    case GGUF_U16: return gguf_w_kv_u16(w, key, (uint16_t)kv->v.u);
    case GGUF_I16: return gguf_w_kv_i16(w, key, (int16_t)kv->v.i);
    case GGUF_U32: return gguf_w_kv_u32(w, key, (uint32_t)kv->v.u);
    case GGUF_I32: return gguf_w_kv_i32(w, key, (int32_t)kv->v.i);
    case GGUF_U64: return gguf_w_kv_u64(w, key, kv->v.u);
    case GGUF_I64: return gguf_w_kv_i64(w, key, kv->v.i);
    case GGUF_F32: return gguf_w_kv_f32(w, key, (float)kv->v.f);
    case GGUF_F64: return gguf_w_kv_f64(w, key, kv->v.f);
    case GGUF_BOOL: return gguf_w_kv_bool(w, key, kv->v.b);
    case GGUF_STR: return gguf_w_kv_strn(w, key, kv->v.str.s, kv->v.str.len);
    case GGUF_ARR:
        if (kv->v.arr.type != GGUF_STR)
            return gguf_w_kv_arr(w, key, kv->v.arr.type, kv->v.arr.data, kv->v.arr.n);
        {
            uint64_t n = kv->v.arr.n;
            const char **s = malloc((n + 1) * sizeof *s);
            uint32_t *len = malloc((n + 1) * sizeof *len);
            for (uint64_t i = 0; i < n; i++) {
                struct gguf_str e = gguf_arr_str(kv, i);
                s[i] = e.s;
                len[i] = (uint32_t)e.len;
            }
            int rc = gguf_w_kv_arr_str(w, key, s, len, n);
            free(s);
            free(len);
            return rc;
        }
    default: return RILL_E_BAD_FORMAT;
    }
}

/* A copy of model `name` with edit e applied, at tpath("edited"). */
static const char *copy_edited(const char *name, const struct edit *e)
{
    struct gguf *g;
    char why[256] = "";
    assert_int_equal(gguf_open(tpath(name), &g, why, sizeof why), 0);
    const char *out = tpath("edited");
    struct gguf_writer *w;
    assert_int_equal(gguf_w_open(out, 0, &w, why, sizeof why), 0);
    for (uint64_t i = 0; i < gguf_n_kv(g); i++) {
        const struct gguf_kv *kv = gguf_kv_at(g, i);
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)kv->key.len, kv->key.s);
        if (e->add_key && !strcmp(key, e->add_key))
            continue;
        if (e->set_arch && !strcmp(key, "general.architecture"))
            assert_int_equal(gguf_w_kv_str(w, key, e->set_arch), 0);
        else
            assert_int_equal(copy_kv(w, key, kv), 0);
    }
    if (e->add_key) {
        if (e->add_type == GGUF_STR)
            assert_int_equal(gguf_w_kv_str(w, e->add_key, e->add_str), 0);
        else if (e->add_type == GGUF_U32)
            assert_int_equal(gguf_w_kv_u32(w, e->add_key, (uint32_t)e->add_num), 0);
        else
            assert_int_equal(gguf_w_kv_f32(w, e->add_key, (float)e->add_num), 0);
    }
    for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(g, i);
        char tn[128];
        snprintf(tn, sizeof tn, "%.*s", (int)t->name.len, t->name.s);
        assert_int_equal(gguf_w_add_tensor(w, tn, t->type, t->n_dims, t->ne), 0);
    }
    uint64_t ne8[1] = {8};
    if (e->add_tensor)
        assert_int_equal(gguf_w_add_tensor(w, e->add_tensor, GGUF_T_F32, 1, ne8), 0);
    for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(g, i);
        assert_int_equal(gguf_w_data(w, t->data, t->n_bytes), 0);
    }
    float ones[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    if (e->add_tensor)
        assert_int_equal(gguf_w_data(w, ones, sizeof ones), 0);
    assert_int_equal(gguf_w_finish(w), 0);
    gguf_close(g);
    return out;
}

/* Loading `name` edited by e fails with `code` and a message holding each
 * of the NULL-terminated substrings. */
static void expect_refused(const char *name, const struct edit *e, int code, ...)
{
    const char *path = copy_edited(name, e);
    struct model *m = (struct model *)1;
    char why[512] = "";
    int rc = model_load(path, false, &m, why, sizeof why);
    if (rc != code)
        fail_msg("%s: expected %s, got %s: \"%s\"", name, rill_err_name(code), rill_err_name(rc), why);
    assert_null(m);
    va_list ap;
    va_start(ap, code);
    for (const char *s; (s = va_arg(ap, const char *));)
        if (!strstr(why, s))
            fail_msg("%s: the message \"%s\" does not name \"%s\"", name, why, s);
    va_end(ap);
    print_message("  refused: %s\n", why);
}

static void expect_loads(const char *name, const struct edit *e)
{
    const char *path = copy_edited(name, e);
    struct model *m;
    char why[512] = "";
    int rc = model_load(path, false, &m, why, sizeof why);
    if (rc)
        fail_msg("%s: expected to load, got %s: \"%s\"", name, rill_err_name(rc), why);
    model_free(m);
}

static void test_an_unknown_architecture_is_refused_by_name(void **state)
{
    (void)state;
    expect_refused("llama-gqa", &(struct edit){.set_arch = "gemma2"}, RILL_E_UNSUPPORTED,
                   "architecture 'gemma2' is not supported", "llama, mistral3, qwen2, qwen3, phi3", NULL);
    /* llama.cpp writes Mistral 7B / Nemo as llama; "mistral" is no GGUF architecture. */
    expect_refused("llama-gqa", &(struct edit){.set_arch = "mistral"}, RILL_E_UNSUPPORTED,
                   "architecture 'mistral' is not supported", NULL);
}

static void test_a_tensor_the_architecture_does_not_use_is_refused_by_name(void **state)
{
    (void)state;
    expect_refused("llama-gqa", &(struct edit){.add_tensor = "blk.0.ffn_up.bias"}, RILL_E_UNSUPPORTED,
                   "tensor 'blk.0.ffn_up.bias'", "'llama'", NULL);
    /* rope_freqs is llama's; qwen2 never applies it, so it must not be ignored. */
    expect_refused("qwen2", &(struct edit){.add_tensor = "rope_freqs.weight"}, RILL_E_UNSUPPORTED,
                   "tensor 'rope_freqs.weight'", "'qwen2'", NULL);
    /* qwen3 has no biases, qwen2 no o bias. */
    expect_refused("qwen3", &(struct edit){.add_tensor = "blk.1.attn_q.bias"}, RILL_E_UNSUPPORTED,
                   "tensor 'blk.1.attn_q.bias'", NULL);
    expect_refused("qwen2", &(struct edit){.add_tensor = "blk.0.attn_output.bias"}, RILL_E_UNSUPPORTED,
                   "tensor 'blk.0.attn_output.bias'", NULL);
    /* Phi-3 128k's long-context factors (longrope) are not computed. */
    expect_refused("phi3", &(struct edit){.add_tensor = "rope_factors_long.weight"}, RILL_E_UNSUPPORTED,
                   "tensor 'rope_factors_long.weight'", "'phi3'", NULL);
}

static void test_metadata_that_changes_the_math_is_refused_by_name(void **state)
{
    (void)state;
    struct {
        const char *model;
        struct edit e;
        const char *what;
    } cases[] = {
        {"llama-gqa", {.add_key = "llama.attn_logit_softcapping", .add_type = GGUF_F32, .add_num = 50},
         "attention logit softcapping"},
        {"llama-gqa", {.add_key = "llama.final_logit_softcapping", .add_type = GGUF_F32, .add_num = 30},
         "final logit softcapping"},
        {"qwen2", {.add_key = "qwen2.attention.sliding_window", .add_type = GGUF_U32, .add_num = 4096},
         "sliding-window attention"},
        {"qwen2", {.add_key = "qwen2.rope.scaling.type", .add_type = GGUF_STR, .add_str = "yarn"}, "yarn"},
        {"llama-gqa", {.add_key = "llama.rope.scaling.type", .add_type = GGUF_STR, .add_str = "longrope"}, "longrope"},
        {"mistral3", {.add_key = "mistral3.rope.scaling.yarn_log_multiplier", .add_type = GGUF_F32, .add_num = 1},
         "yarn"},
        {"qwen2", {.add_key = "qwen2.rope.scaling.yarn_attn_factor", .add_type = GGUF_F32, .add_num = 1}, "yarn"},
        {"llama-gqa", {.add_key = "llama.rope.freq_base_swa", .add_type = GGUF_F32, .add_num = 10000},
         "sliding-window attention"},
        {"mistral3", {.add_key = "mistral3.attention.temperature_scale", .add_type = GGUF_F32, .add_num = 0.1},
         "attention temperature"},
        {"llama-gqa", {.add_key = "llama.expert_count", .add_type = GGUF_U32, .add_num = 8}, "mixture of experts"},
        {"qwen3", {.add_key = "qwen3.some_future_key", .add_type = GGUF_F32, .add_num = 1}, "not implemented"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        expect_refused(cases[i].model, &cases[i].e, RILL_E_UNSUPPORTED, cases[i].e.add_key, cases[i].what, NULL);
    /* Values must also be as wide as keys. */
    expect_refused("qwen3",
                   &(struct edit){.add_key = "qwen3.attention.value_length", .add_type = GGUF_U32, .add_num = 32},
                   RILL_E_UNSUPPORTED, "value_length", NULL);
}

static void test_keys_at_their_neutral_value_load(void **state)
{
    (void)state;
    /* What converters write for dense models: zero experts, no window. */
    expect_loads("llama-gqa", &(struct edit){.add_key = "llama.expert_count", .add_type = GGUF_U32, .add_num = 0});
    expect_loads("qwen2", &(struct edit){.add_key = "qwen2.attention.sliding_window", .add_type = GGUF_U32});
    /* Phi-3's window is ignored, as llama.cpp ignores it; elsewhere it is refused. */
    expect_loads("phi3",
                 &(struct edit){.add_key = "phi3.attention.sliding_window", .add_type = GGUF_U32, .add_num = 2047});
    /* A scaling type "none" ignores the factor, as llama.cpp does. */
    const char *path = copy_edited(
        "llama-linear", &(struct edit){.add_key = "llama.rope.scaling.type", .add_type = GGUF_STR, .add_str = "none"});
    struct model *m;
    char why[256];
    assert_int_equal(model_load(path, false, &m, why, sizeof why), 0);
    assert_true(m->cfg.rope_freq_scale == 1.0f);
    model_free(m);
    assert_int_equal(model_load(tpath("llama-linear"), false, &m, why, sizeof why), 0);
    assert_true(m->cfg.rope_freq_scale == 0.25f);
    model_free(m);
}

/* ---- rill-mkmodel --vocab-from -------------------------------------------------------------- */

static bool same_kv(const struct gguf_kv *a, const struct gguf_kv *b)
{
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case GGUF_STR: return a->v.str.len == b->v.str.len && !memcmp(a->v.str.s, b->v.str.s, a->v.str.len);
    case GGUF_F32: case GGUF_F64: return a->v.f == b->v.f;
    case GGUF_BOOL: return a->v.b == b->v.b;
    case GGUF_ARR:
        if (a->v.arr.type != b->v.arr.type || a->v.arr.n != b->v.arr.n)
            return false;
        if (a->v.arr.type != GGUF_STR)
            return !memcmp(a->v.arr.data, b->v.arr.data, a->v.arr.n * gguf_vtype_size(a->v.arr.type));
        for (uint64_t i = 0; i < a->v.arr.n; i++) {
            struct gguf_str x = gguf_arr_str(a, i), y = gguf_arr_str(b, i);
            if (x.len != y.len || memcmp(x.s, y.s, x.len))
                return false;
        }
        return true;
    default: return a->v.u == b->v.u;
    }
}

static void test_mkmodel_vocab_from_copies_every_tokenizer_key(void **state)
{
    (void)state;
    const char *shared = getenv("RILL_SHARED_DIR");
    char src[512], cmd[1536];
    snprintf(src, sizeof src, "%s/data/vocab/ggml-vocab-qwen2.gguf", shared && *shared ? shared : "../shared");
    if (access(src, R_OK) != 0)
        fail_msg("%s is missing: this test needs llama.cpp's vocabulary files at ../shared beside the repository "
                 "(or RILL_SHARED_DIR)", src);
    const char *out = tpath("vocab-from");
    snprintf(cmd, sizeof cmd, "%s/rill-mkmodel --arch qwen2 --dim 64 --layers 1 --heads 2 --kv-heads 1 --ffn 64 "
             "--tied --dtype q8_0 --vocab-from %s --out %s 2>%s/mk.log", tu_build_dir(), src, out, tmpdir);
    assert_int_equal(system(cmd), 0);
    struct gguf *a, *b;
    char why[256] = "";
    assert_int_equal(gguf_open(src, &a, why, sizeof why), 0);
    assert_int_equal(gguf_open(out, &b, why, sizeof why), 0);
    uint32_t n_a = 0, n_b = 0;
    for (uint64_t i = 0; i < gguf_n_kv(a); i++) {
        const struct gguf_kv *kv = gguf_kv_at(a, i);
        if (kv->key.len < 10 || memcmp(kv->key.s, "tokenizer.", 10))
            continue;
        char key[128];
        snprintf(key, sizeof key, "%.*s", (int)kv->key.len, kv->key.s);
        const struct gguf_kv *copy = gguf_find(b, key);
        if (!copy || !same_kv(kv, copy))
            fail_msg("%s: '%s' is %s in the made file", src, key, copy ? "different" : "missing");
        n_a++;
    }
    for (uint64_t i = 0; i < gguf_n_kv(b); i++)
        n_b += gguf_kv_at(b, i)->key.len >= 10 && !memcmp(gguf_kv_at(b, i)->key.s, "tokenizer.", 10);
    assert_int_equal(n_b, n_a);
    assert_true(n_a >= 10); /* tokens, types, merges, pre, bos/eos/eot/pad, add_bos, chat_template */
    assert_non_null(gguf_find(b, "tokenizer.chat_template"));
    gguf_close(a);
    gguf_close(b);
    /* The vocabulary's size is the model's. */
    struct model *m;
    assert_int_equal(model_load(out, false, &m, why, sizeof why), 0);
    assert_int_equal(m->cfg.vocab, 151936);
    model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama_with_grouped_query_attention_matches_the_reference),
        cmocka_unit_test(test_llama3_rope_freqs_and_tied_output_match_the_reference),
        cmocka_unit_test(test_llama_linear_rope_scaling_matches_the_reference),
        cmocka_unit_test(test_llama_with_heads_wider_than_dim_over_heads_matches_the_reference),
        cmocka_unit_test(test_mistral3_matches_the_reference),
        cmocka_unit_test(test_qwen2_biases_and_neox_rope_match_the_reference),
        cmocka_unit_test(test_qwen3_qk_norm_and_wider_heads_match_the_reference),
        cmocka_unit_test(test_phi3_fused_qkv_and_gate_up_match_the_reference),
        cmocka_unit_test(test_quantized_qwen2_qwen3_and_llama3_files_match_the_reference),
        cmocka_unit_test(test_an_unknown_architecture_is_refused_by_name),
        cmocka_unit_test(test_a_tensor_the_architecture_does_not_use_is_refused_by_name),
        cmocka_unit_test(test_metadata_that_changes_the_math_is_refused_by_name),
        cmocka_unit_test(test_keys_at_their_neutral_value_load),
        cmocka_unit_test(test_mkmodel_vocab_from_copies_every_tokenizer_key),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
