/* rill-mkmodel — write a GGUF Llama model with deterministic random weights
 * and a real BPE tokenizer learned from a text.
 *
 * The weights are random but not arbitrary: each matrix is uniform with
 * standard deviation 1/sqrt(fan_in) (fan_in = its row length), norm weights
 * are 1, so activations keep their scale through the layers and sampling
 * gives varied text rather than one token forever.  Each tensor draws from its
 * own stream, seeded from (--seed, tensor name): the same seed gives the same
 * weights in every dtype, so an f32 and a q8_0 file of one seed differ only by
 * quantization.
 *
 *   rill-mkmodel --shape 24M --dtype f32 --out models/default.gguf
 *   rill-mkmodel --shape tiny --dtype q8_0 --tokenizer gpt2 --out /tmp/t.gguf
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "err.h"
#include "hash.h"
#include "tools/lib/bpe.h"
#include "worker/gguf.h"
#include "worker/model.h"

struct shape {
    const char *name;
    uint32_t dim, layers, heads, kv_heads, ffn, vocab;
};

static const struct shape shapes[] = {
    {"24M", 288, 6, 6, 6, 768, 32000},
    {"134M", 768, 12, 12, 12, 2048, 32000},
    {"tiny", 64, 2, 4, 2, 128, 512},
};

struct opts {
    struct shape s;
    uint32_t ctx;
    enum wtype dtype;
    enum tok_kind tok;
    uint64_t seed;
    bool tied;
    const char *corpus, *out, *name;
};

/* ---- randomness: splitmix64 seeds xoshiro256** ---------------------------- */

struct rng {
    uint64_t s[4];
};

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(struct rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

static void rng_seed(struct rng *r, uint64_t seed, const char *name)
{
    uint64_t x = seed;
    for (const char *p = name; *p; p++) /* FNV-1a of the name, folded into the seed */
        x = (x ^ (uint8_t)*p) * 0x100000001b3ull;
    for (int i = 0; i < 4; i++)
        r->s[i] = hash_u64_next(&x);
}

/* Uniform in [-a, a): 24 random bits, exact in a float. */
static float rng_uniform(struct rng *r, float a)
{
    return ((float)(rng_next(r) >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * a;
}

/* ---- the model ------------------------------------------------------------ */

struct tensor {
    char name[64];
    uint32_t n_dims;
    uint64_t ne[2];
    bool norm;
};

static int list_tensors(const struct opts *o, struct tensor **out, size_t *n_out)
{
    const struct shape *s = &o->s;
    size_t n = 0, cap = 3 + 9 * (size_t)s->layers;
    struct tensor *t = calloc(cap, sizeof *t);
    if (!t)
        return RILL_E_NOMEM;
    uint32_t hd = s->dim / s->heads, q = s->heads * hd, kv = s->kv_heads * hd;
#define MAT(nm, cols, rows) (t[n] = (struct tensor){"", 2, {cols, rows}, false}, snprintf(t[n].name, 64, "%s", nm), n++)
#define VEC(nm, len) (t[n] = (struct tensor){"", 1, {len, 1}, true}, snprintf(t[n].name, 64, "%s", nm), n++)
    MAT("token_embd.weight", s->dim, s->vocab);
    for (uint32_t l = 0; l < s->layers; l++) {
        char nm[64];
#define L(x) (snprintf(nm, sizeof nm, "blk.%" PRIu32 "." x ".weight", l), nm)
        VEC(L("attn_norm"), s->dim);
        MAT(L("attn_q"), s->dim, q);
        MAT(L("attn_k"), s->dim, kv);
        MAT(L("attn_v"), s->dim, kv);
        MAT(L("attn_output"), q, s->dim);
        VEC(L("ffn_norm"), s->dim);
        MAT(L("ffn_gate"), s->dim, s->ffn);
        MAT(L("ffn_up"), s->dim, s->ffn);
        MAT(L("ffn_down"), s->ffn, s->dim);
#undef L
    }
    VEC("output_norm.weight", s->dim);
    if (!o->tied)
        MAT("output.weight", s->dim, s->vocab);
#undef MAT
#undef VEC
    *out = t;
    *n_out = n;
    return 0;
}

static int write_tokenizer(struct gguf_writer *w, const struct bpe_vocab *v)
{
    bool spm = v->kind == TOK_SPM;
    gguf_w_kv_str(w, "tokenizer.ggml.model", spm ? "llama" : "gpt2");
    if (!spm)
        gguf_w_kv_str(w, "tokenizer.ggml.pre", "gpt2");
    gguf_w_kv_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->tokens, NULL, v->n);
    if (v->scores)
        gguf_w_kv_arr(w, "tokenizer.ggml.scores", GGUF_F32, v->scores, v->n);
    if (v->types)
        gguf_w_kv_arr(w, "tokenizer.ggml.token_type", GGUF_I32, v->types, v->n);
    if (!spm)
        gguf_w_kv_arr_str(w, "tokenizer.ggml.merges", (const char *const *)v->merges, NULL, v->n_merges);
    if (v->bos >= 0)
        gguf_w_kv_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos);
    if (v->eos >= 0)
        gguf_w_kv_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)v->eos);
    if (v->unk >= 0)
        gguf_w_kv_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)v->unk);
    gguf_w_kv_bool(w, "tokenizer.ggml.add_bos_token", true);
    return gguf_w_kv_bool(w, "tokenizer.ggml.add_space_prefix", spm);
}

static int write_model(const struct opts *o, const struct bpe_vocab *v, uint64_t *n_params,
                       uint64_t *bytes, char *why, size_t why_len)
{
    const struct shape *s = &o->s;
    struct tensor *t;
    size_t n_t;
    int rc = list_tensors(o, &t, &n_t);
    if (rc)
        return rc;
    struct gguf_writer *w;
    if ((rc = gguf_w_open(o->out, 0, &w, why, why_len))) {
        free(t);
        return rc;
    }
    /* llama.cpp's general.file_type: ALL_F32, MOSTLY_F16, MOSTLY_Q8_0. */
    uint32_t file_type = o->dtype == WT_F32 ? 0 : o->dtype == WT_F16 ? 1 : 7;
    gguf_w_kv_str(w, "general.architecture", "llama");
    gguf_w_kv_str(w, "general.name", o->name);
    gguf_w_kv_u32(w, "general.file_type", file_type);
    if (o->dtype == WT_Q8_0)
        gguf_w_kv_u32(w, "general.quantization_version", 2);
    gguf_w_kv_u64(w, "rill.mkmodel.seed", o->seed);
    gguf_w_kv_u32(w, "llama.context_length", o->ctx);
    gguf_w_kv_u32(w, "llama.embedding_length", s->dim);
    gguf_w_kv_u32(w, "llama.block_count", s->layers);
    gguf_w_kv_u32(w, "llama.feed_forward_length", s->ffn);
    gguf_w_kv_u32(w, "llama.rope.dimension_count", s->dim / s->heads);
    gguf_w_kv_u32(w, "llama.attention.head_count", s->heads);
    gguf_w_kv_u32(w, "llama.attention.head_count_kv", s->kv_heads);
    gguf_w_kv_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    gguf_w_kv_f32(w, "llama.rope.freq_base", 10000.0f);
    gguf_w_kv_u32(w, "llama.vocab_size", s->vocab);
    write_tokenizer(w, v);

    /* Norm vectors stay F32 whatever the dtype, as llama.cpp does. */
    uint32_t wt = o->dtype == WT_F32 ? GGUF_T_F32 : o->dtype == WT_F16 ? GGUF_T_F16 : GGUF_T_Q8_0;
    *n_params = 0;
    for (size_t i = 0; i < n_t; i++) {
        gguf_w_add_tensor(w, t[i].name, t[i].norm ? GGUF_T_F32 : wt, t[i].n_dims, t[i].ne);
        *n_params += t[i].ne[0] * t[i].ne[1];
    }

    /* Stream each tensor in chunks of whole rows: memory stays at one chunk
     * whatever the model size. */
    enum { CHUNK = 1 << 20 };
    float *buf = malloc(CHUNK * sizeof *buf);
    if (!buf) {
        gguf_w_abort(w);
        free(t);
        return RILL_E_NOMEM;
    }
    for (size_t i = 0; i < n_t && rc == 0; i++) {
        uint64_t cols = t[i].ne[0], rows = t[i].ne[1];
        uint64_t rows_per = CHUNK / cols ? CHUNK / cols : 1;
        float a = sqrtf(3.0f / (float)cols); /* uniform [-a, a) has std 1/sqrt(cols) */
        struct rng r;
        rng_seed(&r, o->seed, t[i].name);
        for (uint64_t r0 = 0; r0 < rows && rc == 0; r0 += rows_per) {
            uint64_t nr = rows - r0 < rows_per ? rows - r0 : rows_per;
            size_t n = (size_t)(nr * cols);
            for (size_t k = 0; k < n; k++)
                buf[k] = t[i].norm ? 1.0f : rng_uniform(&r, a);
            rc = gguf_w_data_f32(w, buf, n);
        }
    }
    free(buf);
    free(t);
    if (rc) {
        gguf_w_abort(w);
        return rc;
    }
    *bytes = gguf_w_bytes(w);
    return gguf_w_finish(w);
}

/* ---- the corpus ------------------------------------------------------------ */

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (cap - n < 65536) {
            cap = cap ? 2 * cap : 1 << 20;
            char *b = realloc(buf, cap);
            if (!b) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = b;
        }
        size_t k = fread(buf + n, 1, cap - n, f);
        n += k;
        if (k == 0)
            break;
    }
    bool bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

/* The default corpus is found from the working directory (the repository
 * root, where make runs) or else next to the binary (build/ or build/asan/). */
static char *find_corpus(char *path, size_t cap)
{
    static const char *const rel[] = {"/../tools/data/corpus.txt", "/../../tools/data/corpus.txt"};
    if (access("tools/data/corpus.txt", R_OK) == 0)
        return snprintf(path, cap, "tools/data/corpus.txt"), path;
    char exe[PATH_MAX];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (k <= 0)
        return NULL;
    exe[k] = 0;
    char *slash = strrchr(exe, '/');
    if (slash)
        *slash = 0;
    for (size_t i = 0; i < sizeof rel / sizeof *rel; i++) {
        snprintf(path, cap, "%s%s", exe, rel[i]);
        if (access(path, R_OK) == 0)
            return path;
    }
    return NULL;
}

/* ---- main -------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: rill-mkmodel [options] --out PATH\n"
            "  --shape 24M|134M|tiny   preset (default 24M); the flags below override it\n"
            "  --dim N --layers N --heads N --kv-heads N --ffn N --vocab N\n"
            "  --ctx N                 context length (default 2048)\n"
            "  --dtype f32|f16|q8_0    weight type (default f32; norms are always f32)\n"
            "  --tokenizer spm|gpt2    tokenizer kind (default spm)\n"
            "  --corpus PATH           text to learn the tokenizer from (default tools/data/corpus.txt)\n"
            "  --seed N                weights seed (default 1)\n"
            "  --tied                  no output.weight: the output shares token_embd\n"
            "  --name NAME             general.name (default rill-<shape>)\n");
}

static bool parse_u32(const char *s, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || v == 0 || v > UINT32_MAX || s[0] == '-')
        return false;
    *out = (uint32_t)v;
    return true;
}

int main(int argc, char **argv)
{
    struct opts o = {.s = shapes[0], .ctx = 2048, .dtype = WT_F32, .tok = TOK_SPM, .seed = 1};
    uint32_t over[7] = {0}; /* dim layers heads kv-heads ffn vocab ctx, 0 = not given */
    char name_buf[64];
    bool kv_given = false;
    enum { O_DIM = 256, O_LAYERS, O_HEADS, O_KV, O_FFN, O_VOCAB, O_CTX, O_DTYPE, O_TOK, O_SEED,
           O_TIED, O_CORPUS, O_OUT, O_SHAPE, O_NAME, O_HELP };
    static const struct option lo[] = {
        {"shape", 1, 0, O_SHAPE}, {"dim", 1, 0, O_DIM},       {"layers", 1, 0, O_LAYERS},
        {"heads", 1, 0, O_HEADS}, {"kv-heads", 1, 0, O_KV},   {"ffn", 1, 0, O_FFN},
        {"vocab", 1, 0, O_VOCAB}, {"ctx", 1, 0, O_CTX},       {"dtype", 1, 0, O_DTYPE},
        {"tokenizer", 1, 0, O_TOK}, {"seed", 1, 0, O_SEED},   {"tied", 0, 0, O_TIED},
        {"corpus", 1, 0, O_CORPUS}, {"out", 1, 0, O_OUT},     {"name", 1, 0, O_NAME},
        {"help", 0, 0, O_HELP},   {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case O_SHAPE: {
            size_t i, n = sizeof shapes / sizeof *shapes;
            for (i = 0; i < n && strcasecmp(shapes[i].name, optarg) != 0; i++)
                ;
            if (i == n) {
                fprintf(stderr, "rill-mkmodel: unknown shape '%s' (24M, 134M, tiny)\n", optarg);
                return 2;
            }
            o.s = shapes[i];
            break;
        }
        case O_DIM: case O_LAYERS: case O_HEADS: case O_KV: case O_FFN: case O_VOCAB: case O_CTX:
            if (!parse_u32(optarg, &over[c - O_DIM])) {
                fprintf(stderr, "rill-mkmodel: --%s needs a positive integer, not '%s'\n",
                        lo[c - O_DIM + 1].name, optarg);
                return 2;
            }
            kv_given |= c == O_KV;
            break;
        case O_DTYPE: {
            int t = wtype_from_name(optarg);
            if (t < 0) {
                fprintf(stderr, "rill-mkmodel: unknown dtype '%s' (f32, f16, q8_0)\n", optarg);
                return 2;
            }
            o.dtype = (enum wtype)t;
            break;
        }
        case O_TOK:
            if (strcmp(optarg, "spm") == 0)
                o.tok = TOK_SPM;
            else if (strcmp(optarg, "gpt2") == 0)
                o.tok = TOK_GPT2;
            else {
                fprintf(stderr, "rill-mkmodel: unknown tokenizer '%s' (spm, gpt2)\n", optarg);
                return 2;
            }
            break;
        case O_SEED: {
            char *end;
            errno = 0;
            o.seed = strtoull(optarg, &end, 0);
            if (errno || end == optarg || *end) {
                fprintf(stderr, "rill-mkmodel: bad --seed '%s'\n", optarg);
                return 2;
            }
            break;
        }
        case O_TIED: o.tied = true; break;
        case O_CORPUS: o.corpus = optarg; break;
        case O_OUT: o.out = optarg; break;
        case O_NAME: o.name = optarg; break;
        case O_HELP: usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || !o.out) {
        usage(stderr);
        return 2;
    }
    uint32_t *fields[] = {&o.s.dim, &o.s.layers, &o.s.heads, &o.s.kv_heads, &o.s.ffn, &o.s.vocab, &o.ctx};
    for (int i = 0; i < 7; i++)
        if (over[i])
            *fields[i] = over[i];
    if (over[2] && !kv_given) /* --heads alone means plain multi-head attention */
        o.s.kv_heads = o.s.heads;
    const struct shape *s = &o.s;
    const char *bad = NULL;
    if (s->dim % s->heads)
        bad = "--dim must be a multiple of --heads";
    else if (s->heads % s->kv_heads)
        bad = "--heads must be a multiple of --kv-heads";
    else if ((s->dim / s->heads) % 2)
        bad = "the head dimension (dim / heads) must be even";
    else if (o.dtype == WT_Q8_0 && (s->dim % 32 || s->ffn % 32))
        bad = "q8_0 needs --dim and --ffn to be multiples of 32";
    else if (s->vocab > INT32_MAX)
        bad = "--vocab is too large";
    if (bad) {
        fprintf(stderr, "rill-mkmodel: %s\n", bad);
        return 2;
    }
    if (!o.name) {
        bool custom = false;
        for (int i = 0; i < 6; i++)
            custom |= over[i] != 0;
        if (custom)
            snprintf(name_buf, sizeof name_buf, "rill-d%" PRIu32 "-l%" PRIu32, s->dim, s->layers);
        else
            snprintf(name_buf, sizeof name_buf, "rill-%s", s->name);
        o.name = name_buf;
    }

    uint64_t t0 = clock_ns();
    char corpus_path[PATH_MAX + 64];
    if (!o.corpus && !(o.corpus = find_corpus(corpus_path, sizeof corpus_path))) {
        fprintf(stderr, "rill-mkmodel: no corpus: tools/data/corpus.txt not found (give --corpus PATH)\n");
        return 1;
    }
    size_t len;
    char *text = read_file(o.corpus, &len);
    if (!text) {
        fprintf(stderr, "rill-mkmodel: cannot read %s: %s\n", o.corpus, strerror(errno));
        return 1;
    }
    char why[512] = "";
    struct bpe_vocab v;
    int rc = bpe_train(text, len, o.tok, s->vocab, &v, why, sizeof why);
    free(text);
    if (rc) {
        fprintf(stderr, "rill-mkmodel: learning the tokenizer from %s: %s (%s)\n", o.corpus, why,
                rill_err_name(rc));
        return 1;
    }
    double tok_ms = clock_ms_since(t0);

    uint64_t t1 = clock_ns(), n_params = 0, bytes = 0;
    rc = write_model(&o, &v, &n_params, &bytes, why, sizeof why);
    bpe_vocab_free(&v);
    if (rc) {
        fprintf(stderr, "rill-mkmodel: writing %s: %s (%s)\n", o.out, why[0] ? why : "failed",
                rill_err_name(rc));
        return 1;
    }
    double w_ms = clock_ms_since(t1);
    fprintf(stderr,
            "rill-mkmodel: wrote %s: llama '%s', dim %" PRIu32 ", %" PRIu32 " layers, %" PRIu32
            " heads (%" PRIu32 " kv), ffn %" PRIu32 ", vocab %" PRIu32 " (%s), ctx %" PRIu32
            ", %s%s, %.2fM params, %.1f MB; tokenizer %.2f s, weights %.2f s, total %.2f s\n",
            o.out, o.name, s->dim, s->layers, s->heads, s->kv_heads, s->ffn, s->vocab,
            o.tok == TOK_SPM ? "spm" : "gpt2", o.ctx, wtype_name(o.dtype), o.tied ? ", tied" : "",
            (double)n_params / 1e6, (double)bytes / 1e6, tok_ms / 1e3, w_ms / 1e3,
            clock_ms_since(t0) / 1e3);
    return 0;
}
