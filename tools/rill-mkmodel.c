/* rill-mkmodel — write a GGUF Llama-family model with deterministic random
 * weights and a real BPE tokenizer learned from a text (or copied from a real
 * model's vocabulary file).
 *
 * The weights are random but not arbitrary: each matrix is uniform with
 * standard deviation 1/sqrt(fan_in) (fan_in = its row length), norm weights
 * are 1, so activations keep their scale through the layers and sampling
 * gives varied text rather than one token forever.  Each tensor draws from its
 * own stream, seeded from (--seed, tensor name): the same seed gives the same
 * weights in every dtype, so an f32 and a q8_0 file of one seed differ only by
 * quantization.
 *
 * Weight types: --dtype TYPE writes every matrix in TYPE (f32, f16, bf16, q4_0,
 * q4_1, q5_0, q5_1, q8_0, q2_K, q3_K, q4_K, q5_K, q6_K); --mix NAME (or
 * --dtype NAME for the names with _S/_M/_L) chooses each tensor's type the
 * way llama-quantize does for that file type (see mix_type()), so files mix
 * types as downloaded ones do.  Norm vectors are always f32.
 *
 *   rill-mkmodel --shape 24M --dtype f32 --out models/default.gguf
 *   rill-mkmodel --shape tiny --dtype q8_0 --tokenizer gpt2 --out /tmp/t.gguf
 *   rill-mkmodel --shape 134M --dtype q4_K_M --out /tmp/q4km.gguf
 *
 * Architectures (--arch), each with llama.cpp's key and tensor names:
 *   llama     optionally with --rope-freqs (Llama 3.1's rope_freqs.weight,
 *             computed as llama.cpp's converter does from factor 8, low/high
 *             frequency factors 1 and 4 and --rope-orig-ctx) and
 *             --rope-scale F (linear RoPE scaling);
 *   mistral3  the llama layout under mistral3.* keys;
 *   qwen2     q/k/v biases (random, std ~0.3);
 *   qwen3     per-head q/k norm weights (random in [0.5, 1.5)); --head-dim
 *             may differ from dim / heads (written as attention.key_length);
 *   phi3      fused attn_qkv and ffn_up (gate rows, then up rows).
 * --vocab-from FILE copies every tokenizer.* key of a GGUF file (e.g. llama.cpp's
 * ggml-vocab-qwen2.gguf), and the vocabulary size with it:
 *   rill-mkmodel --arch qwen2 --dim 256 --layers 2 --heads 4 --kv-heads 2 --ffn 512 --tied \
 *       --rope-base 1000000 --vocab-from ggml-vocab-qwen2.gguf --dtype q5_K_M --out /tmp/q2.gguf
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
#include "tools/lib/ggufw.h"
#include "worker/model.h"
#include "worker/quant.h"

struct shape {
    const char *name;
    uint32_t dim, layers, heads, kv_heads, ffn, vocab;
};

static const struct shape shapes[] = {
    {"24M", 288, 6, 6, 6, 768, 32000},
    {"134M", 768, 12, 12, 12, 2048, 32000},
    {"tiny", 64, 2, 4, 2, 128, 512},
};

/* llama-quantize's file types (general.file_type) that rill can make. */
struct mix {
    const char *name;
    enum wtype base;
    uint32_t file_type;
};

static const struct mix mixes[] = {
    {"f32", WT_F32, 0},      {"f16", WT_F16, 1},       {"bf16", WT_BF16, 32},    {"q8_0", WT_Q8_0, 7},
    {"q4_0", WT_Q4_0, 2},    {"q4_1", WT_Q4_1, 3},     {"q5_0", WT_Q5_0, 8},     {"q5_1", WT_Q5_1, 9},
    {"q2_K", WT_Q2_K, 10},   {"q3_K_S", WT_Q3_K, 11},  {"q3_K_M", WT_Q3_K, 12},  {"q3_K_L", WT_Q3_K, 13},
    {"q4_K_S", WT_Q4_K, 14}, {"q4_K_M", WT_Q4_K, 15},  {"q5_K_S", WT_Q5_K, 16},  {"q5_K_M", WT_Q5_K, 17},
    {"q6_K", WT_Q6_K, 18},
};
#define N_MIXES (sizeof mixes / sizeof mixes[0])

enum arch { A_LLAMA, A_MISTRAL3, A_QWEN2, A_QWEN3, A_PHI3 };
static const char *const arch_names[] = {"llama", "mistral3", "qwen2", "qwen3", "phi3"};

struct opts {
    struct shape s;
    enum arch arch;
    uint32_t head_dim;          /* 0: dim / heads */
    float rope_base, rope_scale; /* rope_scale 0: no scaling keys */
    bool rope_freqs;
    uint32_t rope_orig_ctx;
    const char *vocab_from;
    uint32_t ctx;
    enum wtype dtype;           /* every matrix (when mix is NULL) */
    const struct mix *mix;      /* or per tensor, like llama-quantize */
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

/* What a tensor is, for choosing its type (and a vector's values). */
enum role { R_EMBD, R_Q, R_K, R_V, R_O, R_GATE, R_UP, R_DOWN, R_OUT, R_NORM, R_QK_NORM, R_BIAS, R_ROPE_FREQS, R_QKV };

struct tensor {
    char name[64];
    uint32_t n_dims;
    uint64_t ne[2];
    bool norm;
    enum role role;
    uint32_t layer;
    enum wtype type;
};

/* llama-quantize's "use more bits" layers: the first and last eighth, and
 * every third layer in between. */
static bool more_bits(uint32_t i, uint32_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

/* The type llama-quantize (llama_tensor_get_type, for the llama
 * architecture without an importance matrix) gives a tensor in file type m:
 * the output matrix (token_embd when tied) is q6_K; attn_v, ffn_down and
 * attn_output get more bits in some mixes and layers; a K type on rows that
 * are not whole 256-blocks falls back to q5_0 / q5_1 / q8_0 (llama.cpp uses
 * iq4_nl for q2_K and q3_K, which rill does not compute: q4_0 here). */
static enum wtype mix_type(const struct mix *m, const struct tensor *t, uint32_t n_layers, uint32_t n_gqa,
                           bool tied)
{
    enum wtype base = m->base, ty = base;
    const char *n = m->name;
    uint32_t i = t->layer;
    bool quantized = base != WT_F32 && base != WT_F16 && base != WT_BF16;
    if (!quantized)
        return base;
    if (t->role == R_OUT || (tied && t->role == R_EMBD)) {
        ty = base == WT_Q8_0 ? WT_Q8_0 : WT_Q6_K;
        if (t->ne[0] % QK_K)
            ty = WT_Q8_0;
        return ty;
    }
    if (t->role == R_V) {
        if (!strcmp(n, "q2_K"))
            ty = n_gqa >= 4 ? WT_Q4_K : WT_Q3_K;
        else if (!strcmp(n, "q3_K_M"))
            ty = i < 2 ? WT_Q5_K : WT_Q4_K;
        else if (!strcmp(n, "q3_K_L"))
            ty = WT_Q5_K;
        else if ((!strcmp(n, "q4_K_M") || !strcmp(n, "q5_K_M")) && more_bits(i, n_layers))
            ty = WT_Q6_K;
        else if (!strcmp(n, "q4_K_S") && i < 4)
            ty = WT_Q5_K;
    } else if (t->role == R_DOWN) {
        if (!strcmp(n, "q2_K"))
            ty = WT_Q3_K;
        else if (!strcmp(n, "q3_K_M"))
            ty = i < n_layers / 16 ? WT_Q5_K : WT_Q4_K;
        else if (!strcmp(n, "q3_K_L"))
            ty = WT_Q5_K;
        else if ((!strcmp(n, "q4_K_M") || !strcmp(n, "q5_K_M")) && more_bits(i, n_layers))
            ty = WT_Q6_K;
        else if (!strcmp(n, "q4_K_S") && i < n_layers / 8)
            ty = WT_Q5_K;
    } else if (t->role == R_QKV) {
        if (!strcmp(n, "q3_K_M") || !strcmp(n, "q3_K_L"))
            ty = WT_Q4_K;
        else if (!strcmp(n, "q4_K_M"))
            ty = WT_Q5_K;
        else if (!strcmp(n, "q5_K_M"))
            ty = WT_Q6_K;
    } else if (t->role == R_O) {
        if (!strcmp(n, "q2_K"))
            ty = WT_Q3_K;
        else if (!strcmp(n, "q3_K_M"))
            ty = WT_Q4_K;
        else if (!strcmp(n, "q3_K_L"))
            ty = WT_Q5_K;
    }
    if (t->ne[0] % QK_K && quant_block(ty) == QK_K)
        ty = ty == WT_Q4_K ? WT_Q5_0 : ty == WT_Q5_K ? WT_Q5_1 : ty == WT_Q6_K ? WT_Q8_0 : WT_Q4_0;
    return ty;
}

static int list_tensors(const struct opts *o, struct tensor **out, size_t *n_out)
{
    const struct shape *s = &o->s;
    size_t n = 0, cap = 4 + 14 * (size_t)s->layers;
    struct tensor *t = calloc(cap, sizeof *t);
    if (!t)
        return RILL_E_NOMEM;
    uint32_t hd = o->head_dim ? o->head_dim : s->dim / s->heads, q = s->heads * hd, kv = s->kv_heads * hd;
#define MAT(nm, cols, rows, r, l)                                                                   \
    (t[n] = (struct tensor){"", 2, {cols, rows}, false, r, l, WT_F32}, snprintf(t[n].name, 64, "%s", nm), n++)
#define VEC(nm, len, r, l) (t[n] = (struct tensor){"", 1, {len, 1}, true, r, l, WT_F32}, snprintf(t[n].name, 64, "%s", nm), n++)
    if (o->rope_freqs)
        VEC("rope_freqs.weight", hd / 2, R_ROPE_FREQS, 0);
    MAT("token_embd.weight", s->dim, s->vocab, R_EMBD, 0);
    for (uint32_t l = 0; l < s->layers; l++) {
        char nm[64];
#define L(x) (snprintf(nm, sizeof nm, "blk.%" PRIu32 "." x, l), nm)
        VEC(L("attn_norm.weight"), s->dim, R_NORM, l);
        if (o->arch == A_PHI3) {
            MAT(L("attn_qkv.weight"), s->dim, q + 2 * kv, R_QKV, l);
        } else {
            MAT(L("attn_q.weight"), s->dim, q, R_Q, l);
            MAT(L("attn_k.weight"), s->dim, kv, R_K, l);
            MAT(L("attn_v.weight"), s->dim, kv, R_V, l);
        }
        if (o->arch == A_QWEN2) {
            VEC(L("attn_q.bias"), q, R_BIAS, l);
            VEC(L("attn_k.bias"), kv, R_BIAS, l);
            VEC(L("attn_v.bias"), kv, R_BIAS, l);
        }
        if (o->arch == A_QWEN3) {
            VEC(L("attn_q_norm.weight"), hd, R_QK_NORM, l);
            VEC(L("attn_k_norm.weight"), hd, R_QK_NORM, l);
        }
        MAT(L("attn_output.weight"), q, s->dim, R_O, l);
        VEC(L("ffn_norm.weight"), s->dim, R_NORM, l);
        if (o->arch == A_PHI3) {
            MAT(L("ffn_up.weight"), s->dim, 2 * s->ffn, R_UP, l); /* gate, then up */
        } else {
            MAT(L("ffn_gate.weight"), s->dim, s->ffn, R_GATE, l);
            MAT(L("ffn_up.weight"), s->dim, s->ffn, R_UP, l);
        }
        MAT(L("ffn_down.weight"), s->ffn, s->dim, R_DOWN, l);
#undef L
    }
    VEC("output_norm.weight", s->dim, R_NORM, 0);
    if (!o->tied)
        MAT("output.weight", s->dim, s->vocab, R_OUT, 0);
#undef MAT
#undef VEC
    for (size_t i = 0; i < n; i++) {
        if (t[i].norm)
            continue;
        t[i].type = o->mix ? mix_type(o->mix, &t[i], s->layers, s->heads / s->kv_heads, o->tied) : o->dtype;
        if (t[i].ne[0] % quant_block(t[i].type)) {
            fprintf(stderr, "rill-mkmodel: %s has rows of %" PRIu64 ", not whole %s blocks of %" PRIu32 "\n",
                    t[i].name, t[i].ne[0], wtype_name(t[i].type), quant_block(t[i].type));
            free(t);
            return RILL_E_BAD_REQUEST;
        }
    }
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

/* Every tokenizer.* key of `src`, as it is there. */
static int copy_tokenizer(struct gguf_writer *w, const struct gguf *src)
{
    int rc = 0;
    for (uint64_t i = 0; i < gguf_n_kv(src) && rc == 0; i++) {
        const struct gguf_kv *kv = gguf_kv_at(src, i);
        if (kv->key.len < 10 || memcmp(kv->key.s, "tokenizer.", 10) != 0)
            continue;
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)(kv->key.len < 255 ? kv->key.len : 255), kv->key.s);
        switch (kv->type) {
        case GGUF_U8: rc = gguf_w_kv_u8(w, key, (uint8_t)kv->v.u); break;
        case GGUF_I8: rc = gguf_w_kv_i8(w, key, (int8_t)kv->v.i); break;
        case GGUF_U16: rc = gguf_w_kv_u16(w, key, (uint16_t)kv->v.u); break;
        case GGUF_I16: rc = gguf_w_kv_i16(w, key, (int16_t)kv->v.i); break;
        case GGUF_U32: rc = gguf_w_kv_u32(w, key, (uint32_t)kv->v.u); break;
        case GGUF_I32: rc = gguf_w_kv_i32(w, key, (int32_t)kv->v.i); break;
        case GGUF_U64: rc = gguf_w_kv_u64(w, key, kv->v.u); break;
        case GGUF_I64: rc = gguf_w_kv_i64(w, key, kv->v.i); break;
        case GGUF_F32: rc = gguf_w_kv_f32(w, key, (float)kv->v.f); break;
        case GGUF_F64: rc = gguf_w_kv_f64(w, key, kv->v.f); break;
        case GGUF_BOOL: rc = gguf_w_kv_bool(w, key, kv->v.b); break;
        case GGUF_STR: rc = gguf_w_kv_strn(w, key, kv->v.str.s, kv->v.str.len); break;
        case GGUF_ARR:
            if (kv->v.arr.type != GGUF_STR) {
                rc = gguf_w_kv_arr(w, key, kv->v.arr.type, kv->v.arr.data, kv->v.arr.n);
                break;
            }
            {
                uint64_t n = kv->v.arr.n;
                const char **strs = malloc((n ? n : 1) * sizeof *strs);
                uint32_t *lens = malloc((n ? n : 1) * sizeof *lens);
                if (!strs || !lens) {
                    free(strs);
                    free(lens);
                    return RILL_E_NOMEM;
                }
                for (uint64_t k = 0; k < n; k++) {
                    struct gguf_str e = gguf_arr_str(kv, k);
                    strs[k] = e.s;
                    lens[k] = (uint32_t)e.len;
                }
                rc = gguf_w_kv_arr_str(w, key, strs, lens, n);
                free(strs);
                free(lens);
            }
            break;
        default: rc = RILL_E_BAD_FORMAT; break;
        }
    }
    return rc;
}

/* Llama 3.1's RoPE frequency divisors, the way llama.cpp's converter makes
 * rope_freqs.weight from rope_scaling {factor 8, low_freq_factor 1,
 * high_freq_factor 4, original_max_position_embeddings}: 1 for short
 * wavelengths, the factor for long ones, a smooth blend between. */
static void llama3_rope_freqs(const struct opts *o, uint32_t hd, float *out)
{
    const double factor = 8, low = 1, high = 4, orig = o->rope_orig_ctx;
    for (uint32_t i = 0; i < hd / 2; i++) {
        double freq = pow((double)o->rope_base, -2.0 * i / hd), wavelen = 2 * M_PI / freq;
        if (wavelen < orig / high) {
            out[i] = 1.0f;
        } else if (wavelen > orig / low) {
            out[i] = (float)factor;
        } else {
            double smooth = (orig / wavelen - low) / (high - low);
            out[i] = (float)(1.0 / ((1 - smooth) / factor + smooth));
        }
    }
}

static int write_model(const struct opts *o, const struct bpe_vocab *v, const struct gguf *vocab_src,
                       uint64_t *n_params, uint64_t *bytes, char *why, size_t why_len)
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
    /* llama.cpp's general.file_type: that of the mix, or of the pure type
     * (the _S mix for a K type). */
    uint32_t file_type = o->mix ? o->mix->file_type : 0;
    for (size_t i = 0; !o->mix && i < N_MIXES; i++)
        if (mixes[i].base == o->dtype) {
            file_type = mixes[i].file_type;
            break;
        }
    const char *arch = arch_names[o->arch];
    uint32_t hd = o->head_dim ? o->head_dim : s->dim / s->heads;
    char key[96];
#define AK(suffix) (snprintf(key, sizeof key, "%s.%s", arch, suffix), key)
    gguf_w_kv_str(w, "general.architecture", arch);
    gguf_w_kv_str(w, "general.name", o->name);
    gguf_w_kv_u32(w, "general.file_type", file_type);
    enum wtype base = o->mix ? o->mix->base : o->dtype;
    if (base != WT_F32 && base != WT_F16 && base != WT_BF16)
        gguf_w_kv_u32(w, "general.quantization_version", 2);
    gguf_w_kv_u64(w, "rill.mkmodel.seed", o->seed);
    gguf_w_kv_u32(w, AK("context_length"), o->ctx);
    gguf_w_kv_u32(w, AK("embedding_length"), s->dim);
    gguf_w_kv_u32(w, AK("block_count"), s->layers);
    gguf_w_kv_u32(w, AK("feed_forward_length"), s->ffn);
    gguf_w_kv_u32(w, AK("rope.dimension_count"), hd);
    gguf_w_kv_u32(w, AK("attention.head_count"), s->heads);
    gguf_w_kv_u32(w, AK("attention.head_count_kv"), s->kv_heads);
    /* Qwen3's converter always writes the head size; others when it is
     * not dim / heads. */
    if (o->arch == A_QWEN3 || hd != s->dim / s->heads) {
        gguf_w_kv_u32(w, AK("attention.key_length"), hd);
        gguf_w_kv_u32(w, AK("attention.value_length"), hd);
    }
    gguf_w_kv_f32(w, AK("attention.layer_norm_rms_epsilon"), o->arch == A_QWEN2 || o->arch == A_QWEN3 ? 1e-6f : 1e-5f);
    gguf_w_kv_f32(w, AK("rope.freq_base"), o->rope_base);
    if (o->rope_scale > 0) {
        gguf_w_kv_str(w, AK("rope.scaling.type"), "linear");
        gguf_w_kv_f32(w, AK("rope.scaling.factor"), o->rope_scale);
    }
    gguf_w_kv_u32(w, AK("vocab_size"), s->vocab);
#undef AK
    if (vocab_src)
        rc = copy_tokenizer(w, vocab_src);
    else
        write_tokenizer(w, v);
    if (rc) {
        gguf_w_abort(w);
        free(t);
        snprintf(why, why_len, "copying the tokenizer keys failed");
        return rc;
    }

    /* Norm vectors stay F32 whatever the dtype, as llama.cpp does. */
    *n_params = 0;
    for (size_t i = 0; i < n_t; i++) {
        gguf_w_add_tensor(w, t[i].name, t[i].type, t[i].n_dims, t[i].ne);
        *n_params += t[i].ne[0] * t[i].ne[1];
    }

    /* Stream each tensor in chunks of whole rows: memory stays at one chunk
     * whatever the model size. */
    enum { CHUNK = 1 << 20 };
    float *buf = malloc(CHUNK * sizeof *buf);
    uint8_t *qbuf = malloc(CHUNK * sizeof(float)); /* every type's blocks are smaller than floats */
    if (!buf || !qbuf) {
        free(buf);
        free(qbuf);
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
            if (t[i].role == R_ROPE_FREQS)
                llama3_rope_freqs(o, hd, buf);
            for (size_t k = 0; k < n && t[i].role != R_ROPE_FREQS; k++)
                buf[k] = t[i].role == R_NORM ? 1.0f
                       : t[i].role == R_QK_NORM ? 1.0f + rng_uniform(&r, 0.5f)
                       : t[i].role == R_BIAS ? rng_uniform(&r, 0.5f)
                       : rng_uniform(&r, a);
            /* The writer encodes the float types and q8_0 (as before); the
             * other block types are quantized here. */
            enum wtype ty = t[i].type;
            if (ty == WT_F32 || ty == WT_F16 || ty == WT_BF16 || ty == WT_Q8_0) {
                rc = gguf_w_data_f32(w, buf, n);
            } else {
                quant_quantize(ty, buf, qbuf, n);
                rc = gguf_w_data(w, qbuf, wtype_row_bytes(ty, (uint32_t)cols) * nr);
            }
        }
    }
    free(buf);
    free(qbuf);
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
            "  --dtype TYPE            every matrix in TYPE: f32 (default), f16, bf16, q8_0, q4_0, q4_1,\n"
            "                          q5_0, q5_1, q2_K, q3_K, q4_K, q5_K, q6_K (norms are always f32);\n"
            "                          or a mix name below\n"
            "  --mix NAME              each tensor's type as llama-quantize chooses it for file type\n"
            "                          NAME: q2_K, q3_K_S, q3_K_M, q3_K_L, q4_K_S, q4_K_M, q5_K_S, q5_K_M,\n"
            "                          q6_K, q4_0, q4_1, q5_0, q5_1, q8_0, f16, bf16, f32\n"
            "  --tokenizer spm|gpt2    tokenizer kind (default spm)\n"
            "  --corpus PATH           text to learn the tokenizer from (default tools/data/corpus.txt)\n"
            "  --seed N                weights seed (default 1)\n"
            "  --tied                  no output.weight: the output shares token_embd\n"
            "  --name NAME             general.name (default rill-<shape>)\n"
            "  --arch A                llama (default), mistral3, qwen2 (q/k/v biases), qwen3 (q/k norms),\n"
            "                          phi3 (fused qkv and gate/up)\n"
            "  --head-dim N            head size when it is not dim / heads (written as key_length)\n"
            "  --rope-base F           rope.freq_base (default 10000)\n"
            "  --rope-freqs            llama: Llama 3.1's rope_freqs.weight (factor 8, low 1, high 4)\n"
            "  --rope-orig-ctx N       the original context those factors are computed for (default 8192)\n"
            "  --rope-scale F          linear RoPE scaling by F (rope.scaling.type linear)\n"
            "  --vocab-from FILE       copy every tokenizer.* key from a GGUF file (vocab size from it;\n"
            "                          no corpus is read)\n");
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
    struct opts o = {.s = shapes[0], .ctx = 2048, .dtype = WT_F32, .tok = TOK_SPM, .seed = 1,
                     .rope_base = 10000.0f, .rope_orig_ctx = 8192};
    const char *dtype_name = "f32";
    uint32_t over[7] = {0}; /* dim layers heads kv-heads ffn vocab ctx, 0 = not given */
    char name_buf[64];
    bool kv_given = false;
    enum { O_DIM = 256, O_LAYERS, O_HEADS, O_KV, O_FFN, O_VOCAB, O_CTX, O_DTYPE, O_TOK, O_SEED,
           O_TIED, O_CORPUS, O_OUT, O_SHAPE, O_NAME, O_HELP, O_MIX, O_ARCH, O_HEAD_DIM, O_ROPE_BASE,
           O_ROPE_FREQS, O_ROPE_ORIG, O_ROPE_SCALE, O_VOCAB_FROM };
    static const struct option lo[] = {
        {"shape", 1, 0, O_SHAPE}, {"dim", 1, 0, O_DIM},       {"layers", 1, 0, O_LAYERS},
        {"heads", 1, 0, O_HEADS}, {"kv-heads", 1, 0, O_KV},   {"ffn", 1, 0, O_FFN},
        {"vocab", 1, 0, O_VOCAB}, {"ctx", 1, 0, O_CTX},       {"dtype", 1, 0, O_DTYPE},
        {"tokenizer", 1, 0, O_TOK}, {"seed", 1, 0, O_SEED},   {"tied", 0, 0, O_TIED},
        {"corpus", 1, 0, O_CORPUS}, {"out", 1, 0, O_OUT},     {"name", 1, 0, O_NAME},
        {"help", 0, 0, O_HELP},   {"mix", 1, 0, O_MIX},       {"arch", 1, 0, O_ARCH},
        {"head-dim", 1, 0, O_HEAD_DIM}, {"rope-base", 1, 0, O_ROPE_BASE}, {"rope-freqs", 0, 0, O_ROPE_FREQS},
        {"rope-orig-ctx", 1, 0, O_ROPE_ORIG}, {"rope-scale", 1, 0, O_ROPE_SCALE},
        {"vocab-from", 1, 0, O_VOCAB_FROM}, {0, 0, 0, 0},
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
        case O_DTYPE:
        case O_MIX: {
            int t = c == O_DTYPE ? wtype_from_name(optarg) : -1;
            const struct mix *m = NULL;
            for (size_t i = 0; t < 0 && i < N_MIXES; i++)
                if (!strcasecmp(mixes[i].name, optarg))
                    m = &mixes[i];
            if (t < 0 && !m) {
                fprintf(stderr, "rill-mkmodel: unknown %s '%s' (see --help)\n", c == O_DTYPE ? "dtype" : "mix",
                        optarg);
                return 2;
            }
            o.mix = m;
            o.dtype = t >= 0 ? (enum wtype)t : m->base;
            dtype_name = optarg;
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
        case O_ARCH: {
            size_t i = 0;
            while (i < sizeof arch_names / sizeof *arch_names && strcmp(arch_names[i], optarg) != 0)
                i++;
            if (i == sizeof arch_names / sizeof *arch_names) {
                fprintf(stderr, "rill-mkmodel: unknown --arch '%s' (llama, mistral3, qwen2, qwen3, phi3)\n", optarg);
                return 2;
            }
            o.arch = (enum arch)i;
            break;
        }
        case O_HEAD_DIM:
        case O_ROPE_ORIG:
            if (!parse_u32(optarg, c == O_HEAD_DIM ? &o.head_dim : &o.rope_orig_ctx)) {
                fprintf(stderr, "rill-mkmodel: --%s needs a positive integer, not '%s'\n",
                        c == O_HEAD_DIM ? "head-dim" : "rope-orig-ctx", optarg);
                return 2;
            }
            break;
        case O_ROPE_BASE:
        case O_ROPE_SCALE: {
            char *end;
            double d = strtod(optarg, &end);
            if (end == optarg || *end || !(d > 0) || !isfinite(d)) {
                fprintf(stderr, "rill-mkmodel: --%s needs a positive number, not '%s'\n",
                        c == O_ROPE_BASE ? "rope-base" : "rope-scale", optarg);
                return 2;
            }
            *(c == O_ROPE_BASE ? &o.rope_base : &o.rope_scale) = (float)d;
            break;
        }
        case O_ROPE_FREQS: o.rope_freqs = true; break;
        case O_VOCAB_FROM: o.vocab_from = optarg; break;
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
    if (s->dim % s->heads && !o.head_dim)
        bad = "--dim must be a multiple of --heads (or give --head-dim)";
    else if (s->heads % s->kv_heads)
        bad = "--heads must be a multiple of --kv-heads";
    else if ((o.head_dim ? o.head_dim : s->dim / s->heads) % 2)
        bad = "the head dimension (--head-dim, or dim / heads) must be even";
    else if (s->vocab > INT32_MAX)
        bad = "--vocab is too large";
    else if (o.rope_freqs && o.arch != A_LLAMA && o.arch != A_MISTRAL3)
        bad = "--rope-freqs is a llama (and mistral3) tensor";
    else if (o.vocab_from && over[5])
        bad = "--vocab and --vocab-from exclude each other (the vocabulary file sets the size)";
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
    char why[512] = "";
    struct bpe_vocab v = {0};
    struct gguf *vsrc = NULL;
    int rc;
    if (o.vocab_from) {
        /* The tokenizer of a real model: its size is the model's vocabulary. */
        if ((rc = gguf_open(o.vocab_from, &vsrc, why, sizeof why))) {
            fprintf(stderr, "rill-mkmodel: --vocab-from %s: %s (%s)\n", o.vocab_from, why, rill_err_name(rc));
            return 1;
        }
        const struct gguf_kv *toks = gguf_find(vsrc, "tokenizer.ggml.tokens");
        if (!toks || toks->type != GGUF_ARR || toks->v.arr.type != GGUF_STR || toks->v.arr.n == 0 ||
            toks->v.arr.n > INT32_MAX) {
            fprintf(stderr, "rill-mkmodel: --vocab-from %s: no tokenizer.ggml.tokens array\n", o.vocab_from);
            gguf_close(vsrc);
            return 1;
        }
        o.s.vocab = (uint32_t)toks->v.arr.n;
    } else {
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
        rc = bpe_train(text, len, o.tok, s->vocab, &v, why, sizeof why);
        free(text);
        if (rc) {
            fprintf(stderr, "rill-mkmodel: learning the tokenizer from %s: %s (%s)\n", o.corpus, why,
                    rill_err_name(rc));
            return 1;
        }
    }
    double tok_ms = clock_ms_since(t0);

    uint64_t t1 = clock_ns(), n_params = 0, bytes = 0;
    rc = write_model(&o, &v, vsrc, &n_params, &bytes, why, sizeof why);
    if (vsrc)
        gguf_close(vsrc);
    else
        bpe_vocab_free(&v);
    if (rc) {
        fprintf(stderr, "rill-mkmodel: writing %s: %s (%s)\n", o.out, why[0] ? why : "failed",
                rill_err_name(rc));
        return 1;
    }
    double w_ms = clock_ms_since(t1);
    fprintf(stderr,
            "rill-mkmodel: wrote %s: %s '%s', dim %" PRIu32 ", %" PRIu32 " layers, %" PRIu32
            " heads (%" PRIu32 " kv), ffn %" PRIu32 ", vocab %" PRIu32 " (%s), ctx %" PRIu32
            ", %s%s, %.2fM params, %.1f MB; tokenizer %.2f s, weights %.2f s, total %.2f s\n",
            o.out, arch_names[o.arch], o.name, s->dim, s->layers, s->heads, s->kv_heads, s->ffn, s->vocab,
            o.vocab_from ? o.vocab_from : o.tok == TOK_SPM ? "spm" : "gpt2", o.ctx, dtype_name, o.tied ? ", tied" : "",
            (double)n_params / 1e6, (double)bytes / 1e6, tok_ms / 1e3, w_ms / 1e3,
            clock_ms_since(t0) / 1e3);
    return 0;
}
