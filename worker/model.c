/* model.c — see model.h. */
#include "worker/model.h"
#include "worker/gguf.h"
#include "worker/quant.h"
#include "worker/tokenizer.h"
#include "worker/vocab.h"
#include "clock.h"
#include "err.h"
#include "log.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---- element types ------------------------------------------------------- */

size_t wtype_row_bytes(enum wtype t, uint32_t cols)
{
    uint32_t bs = quant_block(t);
    return bs ? (size_t)(cols / bs) * quant_block_bytes(t) : 0;
}

const char *wtype_name(enum wtype t)
{
    const char *n = quant_supported(t) ? gguf_ttype_name(t) : NULL;
    return n ? n : "?";
}

int wtype_from_name(const char *name)
{
    int t = gguf_ttype_from_name(name);
    return t >= 0 && quant_supported((enum wtype)t) ? t : -1;
}

float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000 | (mant << 13); /* inf, or NaN keeping its payload */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else {
        /* Subnormal: mant * 2^-24; shift the leading 1 up to the implicit bit. */
        uint32_t e = 113;
        while (!(mant & 0x400)) {
            mant <<= 1;
            e--;
        }
        bits = sign | (e << 23) | ((mant & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffff;
    if (ax > 0x7f800000) {
        /* NaN: keep the top payload bits; a payload only in the low bits
         * must not turn into infinity. */
        uint32_t m = (ax >> 13) & 0x3ff;
        return (uint16_t)(sign | 0x7c00 | (m ? m : 0x200));
    }
    /* 65520 is halfway between 65504 (the largest half) and 2^16; the tie
     * goes to the even side, which is infinity. */
    if (ax >= 0x477ff000)
        return (uint16_t)(sign | 0x7c00);
    if (ax >= 0x38800000) {
        /* Normal: rebias the exponent and round the 13 dropped bits to
         * nearest even; a carry out of the mantissa correctly bumps the
         * exponent. */
        uint32_t r = ax - (112u << 23);
        r += 0xfff + ((r >> 13) & 1);
        return (uint16_t)(sign | (r >> 13));
    }
    /* 2^-25 is halfway between 0 and the smallest subnormal: even is 0. */
    if (ax <= 0x33000000)
        return sign;
    /* Subnormal: value / 2^-24 = m * 2^(e - 126), rounded to nearest even. */
    uint32_t e = ax >> 23, m = (ax & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - e; /* 14..24 */
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1)))
        q++;
    return (uint16_t)(sign | q);
}

void wmat_row_f32(const struct wmat *w, uint32_t r, float *out)
{
    quant_dequant(w->type, (const uint8_t *)w->data + (size_t)r * w->row_bytes, out, w->cols);
}

/* ---- loading ------------------------------------------------------------- */

struct loader {
    struct model *m;
    struct gguf *g;
    char *why;
    size_t why_len;
    struct {
        const struct gguf_tensor *t;
        const float **dst;
    } *pending;                /* norm vectors to convert to F32 */
    size_t n_pending;
    uint64_t elems_by_type[WT_COUNT]; /* to name the model's dtype */
};

static int req_u32(struct loader *L, const char *key, uint32_t *out)
{
    int rc = gguf_get_u32(L->g, key, out, L->why, L->why_len);
    if (rc == RILL_E_NOT_FOUND)
        return rill_fail(L->why, L->why_len, RILL_E_BAD_FORMAT, "missing metadata '%s'", key);
    if (rc == 0 && *out == 0)
        return rill_fail(L->why, L->why_len, RILL_E_BAD_FORMAT, "metadata '%s' is 0", key);
    return rc;
}

static int opt_u32(struct loader *L, const char *key, uint32_t *out, uint32_t dflt)
{
    int rc = gguf_get_u32(L->g, key, out, L->why, L->why_len);
    if (rc == RILL_E_NOT_FOUND) {
        *out = dflt;
        return 0;
    }
    return rc;
}

static int opt_f32(struct loader *L, const char *key, float *out, float dflt)
{
    int rc = gguf_get_f32(L->g, key, out, L->why, L->why_len);
    if (rc == RILL_E_NOT_FOUND) {
        *out = dflt;
        return 0;
    }
    return rc;
}

/* A string from the file, cut to fit and with control bytes replaced, for
 * names that are only shown (general.name). */
static void copy_shown(struct gguf_str s, char *buf, size_t cap)
{
    size_t n = s.len < cap - 1 ? (size_t)s.len : cap - 1;
    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)s.s[i] < 0x20 ? '?' : s.s[i];
    buf[n] = 0;
}

static int read_config(struct loader *L)
{
    struct model_config *c = &L->m->cfg;
    int rc;
    struct gguf_str arch;
    rc = gguf_get_str(L->g, "general.architecture", &arch, L->why, L->why_len);
    if (rc == RILL_E_NOT_FOUND)
        return rill_fail(L->why, L->why_len, RILL_E_BAD_FORMAT, "missing metadata 'general.architecture'");
    if (rc)
        return rc;
    copy_shown(arch, c->arch, sizeof c->arch);
    if (!gguf_str_eq(arch, "llama"))
        return rill_fail(L->why, L->why_len, RILL_E_UNSUPPORTED,
                    "architecture '%s' is not supported (supported: llama)", c->arch);
    struct gguf_str name;
    if (gguf_get_str(L->g, "general.name", &name, NULL, 0) == 0)
        copy_shown(name, c->name, sizeof c->name);

    if ((rc = req_u32(L, "llama.embedding_length", &c->dim)) ||
        (rc = req_u32(L, "llama.block_count", &c->n_layers)) ||
        (rc = req_u32(L, "llama.attention.head_count", &c->n_heads)) ||
        (rc = req_u32(L, "llama.feed_forward_length", &c->ffn_dim)) ||
        (rc = req_u32(L, "llama.context_length", &c->ctx)) ||
        (rc = opt_u32(L, "llama.attention.head_count_kv", &c->n_kv_heads, c->n_heads)) ||
        (rc = opt_f32(L, "llama.rope.freq_base", &c->rope_base, 10000.0f)) ||
        (rc = opt_f32(L, "llama.attention.layer_norm_rms_epsilon", &c->norm_eps, 1e-5f)))
        return rc;
    if (c->dim % c->n_heads)
        return rill_fail(L->why, L->why_len, RILL_E_BAD_FORMAT,
                    "llama.embedding_length %" PRIu32 " is not a multiple of head_count %" PRIu32,
                    c->dim, c->n_heads);
    c->head_dim = c->dim / c->n_heads;
    if ((rc = opt_u32(L, "llama.rope.dimension_count", &c->rope_dim, c->head_dim)))
        return rc;
    if (c->n_kv_heads == 0 || c->n_heads % c->n_kv_heads)
        return rill_fail(L->why, L->why_len, RILL_E_BAD_FORMAT,
                    "llama.attention.head_count %" PRIu32
                    " is not a multiple of head_count_kv %" PRIu32,
                    c->n_heads, c->n_kv_heads);
    if (c->head_dim % 2 || c->rope_dim % 2 || c->rope_dim == 0 || c->rope_dim > c->head_dim)
        return rill_fail(L->why, L->why_len, RILL_E_BAD_FORMAT,
                    "rope dimension %" PRIu32 " does not fit head dimension %" PRIu32
                    " (both must be even, rope <= head)",
                    c->rope_dim, c->head_dim);
    /* Files whose head size is not dim / n_heads say so with key_length. */
    static const char *const head_keys[] = {"llama.attention.key_length",
                                            "llama.attention.value_length"};
    for (int i = 0; i < 2; i++) {
        uint32_t v;
        if ((rc = opt_u32(L, head_keys[i], &v, c->head_dim)))
            return rc;
        if (v != c->head_dim)
            return rill_fail(L->why, L->why_len, RILL_E_UNSUPPORTED,
                        "%s = %" PRIu32 " differs from embedding_length / head_count = %" PRIu32
                        ", which rill does not support",
                        head_keys[i], v, c->head_dim);
    }
    if (!(c->rope_base > 0) || !isfinite(c->rope_base) || !(c->norm_eps >= 0) || !isfinite(c->norm_eps))
        return rill_fail(L->why, L->why_len, RILL_E_BAD_FORMAT,
                    "bad llama.rope.freq_base %g or layer_norm_rms_epsilon %g",
                    (double)c->rope_base, (double)c->norm_eps);
    /* Each layer has nine tensors: a block count beyond that is a lie, and
     * must not size an allocation. */
    if ((uint64_t)c->n_layers * 9 > gguf_n_tensors(L->g))
        return rill_fail(L->why, L->why_len, RILL_E_BAD_FORMAT,
                    "llama.block_count = %" PRIu32 " but the file has only %" PRIu64 " tensors",
                    c->n_layers, gguf_n_tensors(L->g));
    return 0;
}

static void fmt_shape(char *buf, size_t cap, const uint64_t *ne, uint32_t n_dims)
{
    size_t n = 0;
    buf[n++] = '[';
    for (uint32_t d = 0; d < n_dims && n < cap; d++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%" PRIu64, d ? ", " : "", ne[d]);
    if (n < cap - 1) {
        buf[n++] = ']';
        buf[n] = 0;
    } else {
        buf[cap - 1] = 0;
    }
}

/* Find tensor `name`, check its type and that its shape is [cols, rows]
 * (rows == 0: a vector of cols). */
static int find_checked(struct loader *L, const char *name, uint64_t cols, uint64_t rows,
                        const struct gguf_tensor **out)
{
    const struct gguf_tensor *t = gguf_find_tensor(L->g, name);
    if (!t)
        return rill_fail(L->why, L->why_len, RILL_E_BAD_FORMAT, "missing tensor '%s'", name);
    if (!quant_supported((enum wtype)t->type))
        return rill_fail(L->why, L->why_len, RILL_E_UNSUPPORTED,
                    "tensor '%s' has type %s, which rill does not support (supported: f32, f16, bf16, "
                    "q4_0, q4_1, q5_0, q5_1, q8_0, q2_K, q3_K, q4_K, q5_K, q6_K)",
                    name, gguf_ttype_name(t->type));
    uint64_t want[GGUF_MAX_DIMS] = {cols, rows ? rows : 1, 1, 1};
    if (memcmp(t->ne, want, sizeof want) != 0) {
        const struct model_config *c = &L->m->cfg;
        char have_s[96], want_s[64];
        fmt_shape(have_s, sizeof have_s, t->ne, t->n_dims);
        fmt_shape(want_s, sizeof want_s, want, rows ? 2 : 1);
        return rill_fail(L->why, L->why_len, RILL_E_BAD_FORMAT,
                    "tensor '%s' has shape %s, expected %s from the metadata (dim %" PRIu32
                    ", heads %" PRIu32 ", kv heads %" PRIu32 ", head dim %" PRIu32 ", ffn %" PRIu32
                    ")",
                    name, have_s, want_s, c->dim, c->n_heads, c->n_kv_heads, c->head_dim,
                    c->ffn_dim);
    }
    /* The format's alignment is the file's choice (even 1 is legal); the
     * forward pass reads floats and halves in place, so it needs theirs
     * (block types are read byte by byte). */
    size_t need = t->type == WT_F32 ? 4 : t->type == WT_F16 || t->type == WT_BF16 ? 2 : 1;
    if ((uintptr_t)t->data % need)
        return rill_fail(L->why, L->why_len, RILL_E_UNSUPPORTED,
                    "tensor '%s' data is not %zu-byte aligned (general.alignment %" PRIu32 ")",
                    name, need, gguf_alignment(L->g));
    L->m->cfg.n_params += t->n_elems;
    L->elems_by_type[t->type] += t->n_elems;
    *out = t;
    return 0;
}

static int bind_mat(struct loader *L, const char *name, uint64_t cols, uint64_t rows, struct wmat *w)
{
    const struct gguf_tensor *t;
    int rc = find_checked(L, name, cols, rows, &t);
    if (rc)
        return rc;
    if (cols > UINT32_MAX || rows > UINT32_MAX)
        return rill_fail(L->why, L->why_len, RILL_E_UNSUPPORTED, "tensor '%s' is too large", name);
    w->data = t->data;
    w->type = (enum wtype)t->type;
    w->rows = (uint32_t)rows;
    w->cols = (uint32_t)cols;
    w->row_bytes = wtype_row_bytes(w->type, w->cols);
    return 0;
}

/* A norm vector of `dim` floats: in place when the file has it as F32;
 * otherwise noted, and converted by convert_vecs() once every tensor has
 * been checked (so that the buffer is sized by tensors that really exist,
 * never by metadata alone). */
static int bind_vec(struct loader *L, const char *name, uint32_t dim, const float **out)
{
    const struct gguf_tensor *t;
    int rc = find_checked(L, name, dim, 0, &t);
    if (rc)
        return rc;
    if (t->type == WT_F32) {
        *out = t->data;
        return 0;
    }
    L->pending[L->n_pending].t = t;
    L->pending[L->n_pending].dst = out;
    L->n_pending++;
    return 0;
}

static int convert_vecs(struct loader *L)
{
    uint32_t dim = L->m->cfg.dim;
    if (L->n_pending == 0)
        return 0;
    float *v = malloc(L->n_pending * dim * sizeof *v);
    if (!v)
        return rill_fail(L->why, L->why_len, RILL_E_NOMEM, "out of memory");
    L->m->owned = v;
    for (size_t i = 0; i < L->n_pending; i++, v += dim) {
        const struct gguf_tensor *t = L->pending[i].t;
        struct wmat w = {.data = t->data, .type = (enum wtype)t->type, .rows = 1, .cols = dim,
                         .row_bytes = wtype_row_bytes((enum wtype)t->type, dim)};
        wmat_row_f32(&w, 0, v);
        *L->pending[i].dst = v;
    }
    return 0;
}

static int bind_weights(struct loader *L)
{
    struct model *m = L->m;
    struct model_config *c = &m->cfg;
    int rc;
    const struct gguf_tensor *emb = gguf_find_tensor(L->g, "token_embd.weight");
    if (!emb)
        return rill_fail(L->why, L->why_len, RILL_E_BAD_FORMAT, "missing tensor 'token_embd.weight'");
    if (emb->ne[1] > INT32_MAX)
        return rill_fail(L->why, L->why_len, RILL_E_UNSUPPORTED, "vocabulary of %" PRIu64 " is too large",
                    emb->ne[1]);
    c->vocab = (uint32_t)emb->ne[1];

    /* n_layers was checked against the tensor count: these are small. */
    m->layers = calloc(c->n_layers, sizeof *m->layers);
    L->pending = calloc(2 * (size_t)c->n_layers + 1, sizeof *L->pending);
    if (!m->layers || !L->pending)
        return rill_fail(L->why, L->why_len, RILL_E_NOMEM, "out of memory");
    uint64_t q_dim = (uint64_t)c->n_heads * c->head_dim, kv_dim = (uint64_t)c->n_kv_heads * c->head_dim;
    if ((rc = bind_mat(L, "token_embd.weight", c->dim, c->vocab, &m->tok_embd)))
        return rc;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        struct layer_weights *lw = &m->layers[l];
        char nm[64];
#define NAME(s) (snprintf(nm, sizeof nm, "blk.%" PRIu32 "." s ".weight", l), nm)
        if ((rc = bind_vec(L, NAME("attn_norm"), c->dim, &lw->attn_norm)) ||
            (rc = bind_mat(L, NAME("attn_q"), c->dim, q_dim, &lw->wq)) ||
            (rc = bind_mat(L, NAME("attn_k"), c->dim, kv_dim, &lw->wk)) ||
            (rc = bind_mat(L, NAME("attn_v"), c->dim, kv_dim, &lw->wv)) ||
            (rc = bind_mat(L, NAME("attn_output"), q_dim, c->dim, &lw->wo)) ||
            (rc = bind_vec(L, NAME("ffn_norm"), c->dim, &lw->ffn_norm)) ||
            (rc = bind_mat(L, NAME("ffn_gate"), c->dim, c->ffn_dim, &lw->w_gate)) ||
            (rc = bind_mat(L, NAME("ffn_up"), c->dim, c->ffn_dim, &lw->w_up)) ||
            (rc = bind_mat(L, NAME("ffn_down"), c->ffn_dim, c->dim, &lw->w_down)))
            return rc;
#undef NAME
    }
    if ((rc = bind_vec(L, "output_norm.weight", c->dim, &m->out_norm)))
        return rc;
    m->tied_output = gguf_find_tensor(L->g, "output.weight") == NULL;
    if (m->tied_output)
        m->output = m->tok_embd;
    else if ((rc = bind_mat(L, "output.weight", c->dim, c->vocab, &m->output)))
        return rc;

    int best = 0;
    for (int i = 1; i < WT_COUNT; i++)
        if (L->elems_by_type[i] > L->elems_by_type[best])
            best = i;
    c->dtype = (enum wtype)best;
    return convert_vecs(L);
}

/* ---- tokenizer from metadata ------------------------------------------------ */

/* vocab_load reads the tokenizer.* keys (the same code loads a
 * vocabulary-only GGUF); here it must also fit the embedding. */
static int load_tokenizer(struct loader *L)
{
    int rc = vocab_load(L->g, &L->m->tok, L->why, L->why_len);
    if (rc)
        return rc;
    if (tok_n_vocab(L->m->tok) != L->m->cfg.vocab)
        return rill_fail(L->why, L->why_len, RILL_E_BAD_FORMAT,
                    "tokenizer.ggml.tokens has %" PRIu32 " tokens but token_embd.weight has %" PRIu32 " rows",
                    tok_n_vocab(L->m->tok), L->m->cfg.vocab);
    return 0;
}

/* ---- touching the weights ------------------------------------------------------- */

/* Read one byte of every page of the data section, so that the first
 * requests do not pay for page faults (and the progress line shows how far
 * a cold load from disk has come). */
static void touch_pages(struct model *m, bool progress)
{
    const uint8_t *base = gguf_base(m->gguf);
    uint64_t off = gguf_data_offset(m->gguf), size = gguf_file_size(m->gguf);
    if (off >= size)
        return;
    bool draw = progress && isatty(2);
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    /* Start read-ahead for the whole file at once; a hint, so its failure
     * (e.g. on a borrowed buffer) does not matter. */
    uintptr_t a = (uintptr_t)base & ~(uintptr_t)(page - 1);
    madvise((void *)a, size + ((uintptr_t)base - a), MADV_WILLNEED);
    volatile uint8_t sink = 0;
    uint8_t acc = 0;
    uint64_t total = size - off, step = total / 100 + 1, next = 0;
    int last = -1;
    const char *shown = m->cfg.name[0] ? m->cfg.name : "model";
    for (uint64_t i = 0; i < total; i += page) {
        acc ^= base[off + i];
        if (draw && i >= next) {
            int pct = (int)(i * 100 / total);
            if (pct != last) {
                fprintf(stderr, "\rloading %s (%.0f MB): %3d%%", shown, (double)total / 1e6, pct);
                last = pct;
            }
            next = i + step;
        }
    }
    sink = acc;
    (void)sink;
    if (draw)
        fprintf(stderr, "\rloading %s (%.0f MB): 100%%\n", shown, (double)total / 1e6);
}

int model_load(const char *path, bool progress, struct model **out, char *why, size_t why_len)
{
    uint64_t t0 = clock_ns();
    *out = NULL;
    struct model *m = calloc(1, sizeof *m);
    if (!m)
        return rill_fail(why, why_len, RILL_E_NOMEM, "out of memory");
    struct loader L = {.m = m, .why = why, .why_len = why_len};
    int rc = gguf_open(path, &m->gguf, why, why_len);
    if (rc)
        goto err;
    L.g = m->gguf;
    m->file_bytes = gguf_file_size(m->gguf);
    if ((rc = read_config(&L)) || (rc = bind_weights(&L)) || (rc = load_tokenizer(&L)))
        goto err;
    free(L.pending);
    touch_pages(m, progress);
    m->load_ms = clock_ms_since(t0);

    const struct model_config *c = &m->cfg;
    rlog_info("model %s: %s '%s', %" PRIu32 " layers, dim %" PRIu32 ", heads %" PRIu32 "/%" PRIu32
              " (kv), ffn %" PRIu32 ", vocab %" PRIu32 ", ctx %" PRIu32 ", %.1fM params, %s%s, "
              "%.1f MB, loaded in %.0f ms",
              path, c->arch, c->name, c->n_layers, c->dim, c->n_heads, c->n_kv_heads, c->ffn_dim,
              c->vocab, c->ctx, (double)c->n_params / 1e6, wtype_name(c->dtype),
              m->tied_output ? ", tied output" : "", (double)m->file_bytes / 1e6, m->load_ms);
    *out = m;
    return 0;
err:
    free(L.pending);
    model_free(m);
    return rc;
}

void model_free(struct model *m)
{
    if (!m)
        return;
    if (m->tok)
        tok_free(m->tok);
    gguf_close(m->gguf);
    free(m->layers);
    free(m->owned);
    free(m);
}
