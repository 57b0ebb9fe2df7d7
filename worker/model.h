/* model.h — a Llama-family model bound to the tensors of a GGUF file.
 *
 * The weights stay in the file's read-only mmap (no copy): a `struct wmat`
 * points into it.  Only small tensors that are not F32 in the file (norm and
 * bias vectors) are converted to F32 in buffers the model owns.
 *
 * Supported general.architecture values, with llama.cpp's key and tensor
 * names (keys are "<arch>.<name>"):
 *   llama     Llama 1/2/3.x, Mistral 7B/Nemo, TinyLlama, SmolLM: grouped-query
 *             attention, optional q/k/v/o biases, optional rope_freqs.weight
 *             (Llama 3.1+ per-dimension frequency divisors), linear RoPE
 *             scaling (rope.scaling.type linear / rope.scaling.factor).
 *   mistral3  as llama (Ministral 3 style files without yarn scaling).
 *   qwen2     biases on q, k and v; NEOX RoPE.
 *   qwen3     per-head RMS norm of q and k before RoPE (attn_q_norm,
 *             attn_k_norm); head size attention.key_length, which may
 *             differ from embedding_length / head_count; NEOX RoPE.
 *   phi3      Phi-3 (mini 4k): q/k/v fused in attn_qkv (or apart), gate and up
 *             fused in ffn_up; NEOX RoPE; its attention.sliding_window is
 *             ignored, as llama.cpp does.  The long-context rope_factors_long /
 *             rope_factors_short tensors and longrope scaling are refused.
 * Tensor types F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K,
 * Q5_K and Q6_K (quant.h), mixed freely within a file.
 *
 * Nothing is run silently wrong: an unknown architecture, a tensor the
 * architecture does not use, and an "<arch>." metadata key rill does not
 * implement (sliding window, logit softcapping, yarn or other RoPE scaling,
 * experts, attention temperature, ...) are refused at load, naming it.
 * RoPE rotates adjacent pairs (2i, 2i+1) for llama/mistral3 (whose GGUF q/k
 * are permuted for that) and pairs (i, i + rope_dim/2) for qwen2/qwen3/phi3, as
 * llama.cpp's rope types NORM and NEOX.
 */
#ifndef RILL_MODEL_H
#define RILL_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* GGUF tensor type ids (ggml's numbering) of the types rill computes with. */
enum wtype {
    WT_F32 = 0, WT_F16 = 1, WT_Q4_0 = 2, WT_Q4_1 = 3, WT_Q5_0 = 6, WT_Q5_1 = 7, WT_Q8_0 = 8,
    WT_Q2_K = 10, WT_Q3_K = 11, WT_Q4_K = 12, WT_Q5_K = 13, WT_Q6_K = 14, WT_BF16 = 30
};
#define WT_COUNT 31 /* ids are below this */

#define Q8_0_BLOCK 32
struct q8_0_block { uint16_t d; int8_t qs[Q8_0_BLOCK]; }; /* d: IEEE half scale; 34 bytes */

/* A weight matrix of `rows` outputs by `cols` inputs, row-major: row r is the
 * `cols` weights of output r, `row_bytes` apart (GGUF ne[0] = cols,
 * ne[1] = rows).  Block types need cols to be whole blocks (32 or 256). */
struct wmat {
    const void *data;
    enum wtype type;
    uint32_t rows, cols;
    size_t row_bytes;
};

enum model_arch { ARCH_LLAMA, ARCH_MISTRAL3, ARCH_QWEN2, ARCH_QWEN3, ARCH_PHI3 };

/* How RoPE pairs a head's dimensions (llama.cpp's LLAMA_ROPE_TYPE_*). */
enum rope_style {
    ROPE_NORM, /* (2i, 2i+1) */
    ROPE_NEOX  /* (i, i + rope_dim/2) */
};

struct model_config {
    char arch[32];
    enum model_arch arch_id;
    char name[128];          /* general.name, may be empty */
    uint32_t dim;            /* llama.embedding_length */
    uint32_t n_layers;       /* llama.block_count */
    uint32_t n_heads;        /* llama.attention.head_count */
    uint32_t n_kv_heads;     /* llama.attention.head_count_kv (= n_heads if absent) */
    uint32_t head_dim;       /* attention.key_length (= dim / n_heads if absent) */
    uint32_t rope_dim;       /* llama.rope.dimension_count (= head_dim if absent) */
    uint32_t ffn_dim;        /* llama.feed_forward_length */
    uint32_t vocab;          /* rows of token_embd */
    uint32_t ctx;            /* llama.context_length */
    float rope_base;         /* llama.rope.freq_base (10000 if absent) */
    float rope_freq_scale;   /* 1 / rope.scaling.factor with linear scaling, else 1 */
    enum rope_style rope_style;
    float norm_eps;          /* llama.attention.layer_norm_rms_epsilon (1e-5 if absent) */
    enum wtype dtype;        /* the type of most weights (for reports) */
    uint64_t n_params;
};

struct layer_weights {
    const float *attn_norm;          /* dim */
    struct wmat wq, wk, wv, wo;      /* q: q_dim x dim (q_dim = n_heads*head_dim), k/v: kv_dim x dim, o: dim x q_dim */
    const float *bq, *bk, *bv, *bo;  /* biases of q (q_dim), k, v (kv_dim), o (dim); NULL when absent */
    const float *q_norm, *k_norm;    /* per-head RMS norm weights (head_dim), qwen3; NULL when absent */
    const float *ffn_norm;           /* dim */
    struct wmat w_gate, w_up;        /* ffn_dim x dim (views of one fused tensor in phi3) */
    struct wmat w_down;              /* dim x ffn_dim */
};

struct gguf;
struct tok;

struct model {
    struct model_config cfg;
    struct wmat tok_embd;            /* vocab x dim */
    struct layer_weights *layers;    /* n_layers */
    const float *out_norm;           /* dim */
    const float *rope_freqs;         /* rope_dim/2 divisors of RoPE's frequencies, or NULL */
    struct wmat output;              /* vocab x dim (= tok_embd when tied: no output.weight) */
    bool tied_output;
    struct tok *tok;                 /* the tokenizer from the file's metadata */
    struct gguf *gguf;               /* owns the mmap */
    void *owned;                     /* converted F32 norm and bias vectors */
    size_t file_bytes;
    double load_ms;
};

/* Load and check a model.  Every problem with the file is an error with a
 * message naming it in `why` (wrong magic, unsupported version, truncated
 * file, tensor data past the end, unknown or unsupported tensor type or
 * architecture (which), missing tensor (which), a shape that disagrees with
 * the metadata (which, and both shapes), a tensor the architecture does not
 * use (which), a metadata key that changes the math and is not implemented
 * (which)): RILL_E_BAD_FORMAT or RILL_E_UNSUPPORTED (unknown architecture,
 * unknown tensor, unimplemented key or RoPE scaling type, unsupported tensor
 * type); RILL_E_IO when the file cannot be read.
 * With `progress`, a progress line is drawn on stderr while the weights are
 * touched (when stderr is a terminal).  The load time goes to the log. */
int model_load(const char *path, bool progress, struct model **out, char *why, size_t why_len);
void model_free(struct model *m);

/* Bytes of one row of `cols` weights of type t (block types: whole blocks). */
size_t wtype_row_bytes(enum wtype t, uint32_t cols);
const char *wtype_name(enum wtype t);   /* ggml's names: "f32", "bf16", "q8_0", "q4_K", ... */
int wtype_from_name(const char *name);  /* -1 unless a type rill computes with */

/* Write row `r` of w, dequantized, into out[cols]. */
void wmat_row_f32(const struct wmat *w, uint32_t r, float *out);

/* IEEE half <-> float (exact, scalar; no F16C needed). */
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

#endif
