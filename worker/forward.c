/* forward.c — see forward.h.  Reads top to bottom like llama2.c's forward():
 * embed, then per layer attention and feed-forward with residuals, then the
 * final norm and the output projection — but over a matrix of rows, with
 * every matrix product and the attention spread over the thread pool.
 */
#include "forward.h"
#include "kern.h"
#include "vexp.h"
#include "common/err.h"

#include <cblas.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* OpenBLAS extension: we run it single-threaded inside our own tasks. */
void openblas_set_num_threads(int num_threads);

/* A layer's matrices, packed for the kernels. */
struct fwd_layer {
    struct kmat wq, wk, wv, wo, w_gate, w_up, w_down;
};

struct fwd {
    const struct model *m;
    struct fwd_layer *L;
    struct kmat output;
    struct kv *kv;
    struct pool *pool;
    uint32_t max_rows, max_ctx;
    uint32_t dim, kv_dim, q_dim, hd, ffn;
    enum fwd_matmul mode;
    uint32_t blas_min_rows;
    struct kern_act act; /* the input of the current matrix products */
    void (*progress)(void *ctx);
    void *progress_ctx;

    /* Scratch, max_rows rows each. */
    float *x;      /* residual stream, dim */
    float *xb;     /* normed input of a sublayer, dim */
    float *q;      /* q_dim */
    float *k, *v;  /* kv_dim */
    float *att;    /* attention output, q_dim */
    float *tmp;    /* sublayer output before the residual add, dim */
    float *hb, *hb2; /* ffn */
    float *xs;     /* normed rows that want logits, dim */
    float *scores; /* per thread, KERN_ATT_ROWS x max_ctx */
    uint32_t *att_first; /* the step's attention groups: rows [att_first[i], att_first[i+1]) */
    uint32_t n_att;
    void **blockptr; /* per thread, 2 x max_blocks: a sequence's K and V blocks */
    uint32_t max_blocks;
    float *rope_cos, *rope_sin; /* [max_ctx][rope_dim/2] */
    size_t scratch_bytes;
    size_t packed_bytes;   /* the kmat copies */
    size_t released_bytes; /* the file's pages given back after packing */
};

static float *alloc_floats(struct fwd *f, size_t n)
{
    f->scratch_bytes += n * sizeof(float);
    return aligned_alloc(64, ((n * sizeof(float)) + 63) / 64 * 64);
}

/* The packed copy is what the kernels read: the file's pages of this
 * matrix need not stay in our resident set (they stay in the page cache,
 * and come back if the scalar or OpenBLAS path reads them). */
static size_t release_source(const struct wmat *w)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)w->data + page - 1) & ~(page - 1);
    uintptr_t b = ((uintptr_t)w->data + (uintptr_t)w->rows * w->row_bytes) & ~(page - 1);
    if (b <= a || madvise((void *)a, b - a, MADV_DONTNEED))
        return 0;
    return b - a;
}

int fwd_create(const struct model *m, struct kv *kv, struct pool *pool, uint32_t max_rows, uint32_t max_ctx,
               struct fwd **out, char *why, size_t why_len)
{
    *out = NULL;
    const struct model_config *c = &m->cfg;
    if (c->head_dim % 8 || c->head_dim > KERN_MAX_HEAD_DIM || c->rope_dim % 2 || c->rope_dim > c->head_dim || c->n_kv_heads == 0 ||
        c->n_heads % c->n_kv_heads) {
        rill_why(why, why_len, "unsupported attention shape: head_dim %u, rope_dim %u, heads %u/%u (need head_dim %% 8 == 0)",
                c->head_dim, c->rope_dim, c->n_heads, c->n_kv_heads);
        return RILL_E_UNSUPPORTED;
    }
    struct fwd *f = calloc(1, sizeof *f);
    if (!f)
        return RILL_E_NOMEM;
    f->m = m;
    f->kv = kv;
    f->pool = pool;
    f->max_rows = max_rows;
    f->max_ctx = max_ctx;
    f->dim = c->dim;
    f->hd = c->head_dim;
    f->q_dim = c->n_heads * c->head_dim;
    f->kv_dim = c->n_kv_heads * c->head_dim;
    f->ffn = c->ffn_dim;
    f->L = calloc(c->n_layers, sizeof *f->L);
    if (!f->L) {
        fwd_free(f);
        return RILL_E_NOMEM;
    }
    int rc = kern_pack(&m->output, &f->output);
    for (uint32_t l = 0; !rc && l < c->n_layers; l++) {
        const struct layer_weights *W = &m->layers[l];
        struct fwd_layer *P = &f->L[l];
        const struct wmat *src[] = {&W->wq, &W->wk, &W->wv, &W->wo, &W->w_gate, &W->w_up, &W->w_down};
        struct kmat *dst[] = {&P->wq, &P->wk, &P->wv, &P->wo, &P->w_gate, &P->w_up, &P->w_down};
        for (size_t i = 0; !rc && i < 7; i++) {
            rc = kern_pack(src[i], dst[i]);
            if (rc == RILL_E_UNSUPPORTED)
                rill_why(why, why_len, "unsupported shape: layer %u has a %s matrix with %u columns (need a multiple "
                        "of %u)", l, wtype_name(src[i]->type), src[i]->cols,
                        quant_block(src[i]->type) > 8 ? quant_block(src[i]->type) : 8);
            else if (!rc)
                f->released_bytes += release_source(src[i]);
        }
    }
    if (rc) {
        if (rc == RILL_E_UNSUPPORTED && why && !why[0])
            rill_why(why, why_len, "unsupported shape: the output matrix has %u columns", m->output.cols);
        fwd_free(f);
        return rc;
    }
    if (!m->tied_output)
        f->released_bytes += release_source(&m->output);
    f->packed_bytes = f->output.bytes;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const struct fwd_layer *P = &f->L[l];
        f->packed_bytes += P->wq.bytes + P->wk.bytes + P->wv.bytes + P->wo.bytes + P->w_gate.bytes + P->w_up.bytes +
                           P->w_down.bytes;
    }
    size_t R = max_rows;
    f->x = alloc_floats(f, R * f->dim);
    f->xb = alloc_floats(f, R * f->dim);
    f->q = alloc_floats(f, R * f->q_dim);
    f->k = alloc_floats(f, R * f->kv_dim);
    f->v = alloc_floats(f, R * f->kv_dim);
    f->att = alloc_floats(f, R * f->q_dim);
    f->tmp = alloc_floats(f, R * f->dim);
    f->hb = alloc_floats(f, R * f->ffn);
    f->hb2 = alloc_floats(f, R * f->ffn);
    f->xs = alloc_floats(f, R * f->dim);
    f->scores = alloc_floats(f, (size_t)pool_threads(pool) * KERN_ATT_ROWS * max_ctx);
    f->att_first = calloc((size_t)max_rows + 1, sizeof *f->att_first);
    f->max_blocks = kv_blocks_for(kv, max_ctx);
    f->blockptr = calloc((size_t)pool_threads(pool) * 2 * f->max_blocks, sizeof *f->blockptr);
    uint32_t half = c->rope_dim / 2;
    f->rope_cos = alloc_floats(f, (size_t)max_ctx * (half ? half : 1));
    f->rope_sin = alloc_floats(f, (size_t)max_ctx * (half ? half : 1));
    uint32_t widest = f->dim > f->q_dim ? f->dim : f->q_dim;
    widest = widest > f->ffn ? widest : f->ffn;
    if (kern_act_reserve(&f->act, max_rows, widest)) {
        fwd_free(f);
        return RILL_E_NOMEM;
    }
    if (!f->x || !f->xb || !f->q || !f->k || !f->v || !f->att || !f->tmp || !f->hb || !f->hb2 || !f->xs ||
        !f->scores || !f->att_first || !f->blockptr || !f->rope_cos || !f->rope_sin) {
        fwd_free(f);
        return RILL_E_NOMEM;
    }
    /* theta_i = pos * scale * base^(-2i/rope_dim) / rope_freqs[i], computed
     * in double once: linear scaling (scale = 1/factor) and Llama 3.1's
     * per-dimension divisors, as ggml_rope_ext applies them. */
    for (uint32_t p = 0; p < max_ctx; p++)
        for (uint32_t i = 0; i < half; i++) {
            double freq = (double)c->rope_freq_scale * pow((double)c->rope_base, -2.0 * i / (double)c->rope_dim);
            if (m->rope_freqs)
                freq /= (double)m->rope_freqs[i];
            double a = p * freq;
            f->rope_cos[(size_t)p * half + i] = (float)cos(a);
            f->rope_sin[(size_t)p * half + i] = (float)sin(a);
        }
    *out = f;
    return 0;
}

void fwd_free(struct fwd *f)
{
    if (!f)
        return;
    for (uint32_t l = 0; f->L && l < f->m->cfg.n_layers; l++) {
        struct fwd_layer *P = &f->L[l];
        struct kmat *ms[] = {&P->wq, &P->wk, &P->wv, &P->wo, &P->w_gate, &P->w_up, &P->w_down};
        for (size_t i = 0; i < 7; i++)
            kern_unpack_free(ms[i]);
    }
    free(f->L);
    free(f->blockptr);
    free(f->att_first);
    kern_act_free(&f->act);
    kern_unpack_free(&f->output);
    float *bufs[] = {f->x, f->xb, f->q, f->k, f->v, f->att, f->tmp, f->hb, f->hb2, f->xs, f->scores,
                     f->rope_cos, f->rope_sin};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
    free(f);
}

void fwd_set_matmul(struct fwd *f, enum fwd_matmul mode, uint32_t min_rows)
{
    f->mode = mode;
    f->blas_min_rows = min_rows ? min_rows : 1;
    if (mode == FWD_BLAS)
        openblas_set_num_threads(1);
}

struct pool *fwd_pool(const struct fwd *f) { return f->pool; }

size_t fwd_scratch_bytes(const struct fwd *f) { return f->scratch_bytes; }

size_t fwd_weight_bytes(const struct fwd *f)
{
    size_t file = f->m->file_bytes > f->released_bytes ? f->m->file_bytes - f->released_bytes : 0;
    return f->packed_bytes + file;
}

void fwd_set_progress(struct fwd *f, void (*fn)(void *ctx), void *ctx)
{
    f->progress = fn;
    f->progress_ctx = ctx;
}

/* --- matrix products on the pool -------------------------------------------- */

struct mm_out {
    const struct kmat *w;
    float *y;
    uint32_t ldy;
    uint32_t first_task; /* tasks [first_task, next's first_task) are this matrix's */
};

struct mm_job {
    const struct fwd *f;
    const struct kern_act *act;
    const float *x;
    uint32_t ldx, B, chunk;
    uint32_t n_out;
    struct mm_out out[3];
};

static void mm_task(void *ctx, uint32_t task, uint32_t thread)
{
    (void)thread;
    const struct mm_job *j = ctx;
    uint32_t i = j->n_out - 1;
    while (task < j->out[i].first_task)
        i--;
    const struct mm_out *o = &j->out[i];
    uint32_t n0 = (task - o->first_task) * j->chunk;
    uint32_t n1 = n0 + j->chunk < o->w->rows ? n0 + j->chunk : o->w->rows;
    if (j->f->mode == FWD_BLAS && o->w->type == WT_F32 && j->B >= j->f->blas_min_rows) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)j->B, (int)(n1 - n0), (int)o->w->cols, 1.0f,
                    j->x, (int)j->ldx, (const float *)o->w->src->data + (size_t)n0 * o->w->cols, (int)o->w->cols,
                    0.0f, o->y + n0, (int)o->ldy);
        return;
    }
    kern_matmul_act(o->w, j->act, o->y, o->ldy, n0, n1);
}

/* y_i = x W_i^T for up to three matrices sharing the input x [B][ldx]. */
static void matmul(struct fwd *f, const float *x, uint32_t ldx, uint32_t B, uint32_t n_out,
                   const struct kmat *w0, float *y0, uint32_t ldy0, const struct kmat *w1, float *y1, uint32_t ldy1,
                   const struct kmat *w2, float *y2, uint32_t ldy2)
{
    struct mm_job j = {.f = f, .act = &f->act, .x = x, .ldx = ldx, .B = B, .n_out = n_out};
    const struct kmat *ws[3] = {w0, w1, w2};
    /* Quantized once here for every task of every matrix that needs it;
     * the room was reserved at creation, so this cannot fail. */
    if (kern_act_prepare(&f->act, x, ldx, B, w0->cols, ws, n_out))
        abort();
    float *ys[3] = {y0, y1, y2};
    uint32_t ldys[3] = {ldy0, ldy1, ldy2};
    uint32_t total_rows = 0;
    for (uint32_t i = 0; i < n_out; i++)
        total_rows += ws[i]->rows;
    /* Enough tasks for the pool to balance (a core may be busy with another
     * process), each a multiple of 12 rows so that every tile shape fits.
     * A prompt's products get twice as many, in multiples of 24 rows (whole
     * pairs of groups for the blocked kernels): the threads wait on the last
     * task's straggler, which is then half as long. */
    uint32_t threads = pool_threads(f->pool);
    bool prompt = B >= 64;
    uint32_t chunk = total_rows / (threads * (prompt ? 16 : 8));
    chunk = chunk < 12 ? 12 : prompt ? (chunk + 23) / 24 * 24 : (chunk + 11) / 12 * 12;
    j.chunk = chunk;
    uint32_t t = 0;
    for (uint32_t i = 0; i < n_out; i++) {
        j.out[i] = (struct mm_out){ws[i], ys[i], ldys[i], t};
        t += (ws[i]->rows + chunk - 1) / chunk;
    }
    pool_run(f->pool, mm_task, &j, t);
}

#define MATMUL1(f, x, ldx, B, w, y, ldy) matmul(f, x, ldx, B, 1, w, y, ldy, NULL, NULL, 0, NULL, NULL, 0)

/* --- attention ---------------------------------------------------------------------- */

struct att_job {
    const struct fwd *f;
    const struct fwd_row *rows;
    uint32_t layer;
};

/* A group of up to KERN_ATT_ROWS rows of one sequence at consecutive
 * positions (a prompt's) and one head: softmax(q k^T / sqrt(hd)) v of each
 * row over positions 0..pos, the group's keys and values read once for all
 * its rows.  Tasks go head by head (task = head * groups + group), so that
 * the tasks running together read one head's keys and values, which stay in
 * cache, instead of every head's. */
static void att_task(void *ctx, uint32_t task, uint32_t thread)
{
    const struct att_job *j = ctx;
    const struct fwd *f = j->f;
    const struct model_config *c = &f->m->cfg;
    uint32_t h = task / f->n_att, gi = task % f->n_att;
    uint32_t r0 = f->att_first[gi], R = f->att_first[gi + 1] - r0;
    const struct fwd_row *row = &j->rows[r0];
    uint32_t g = h / (c->n_heads / c->n_kv_heads);
    uint32_t hd = f->hd;
    const float *q = f->q + (size_t)r0 * f->q_dim + (size_t)h * hd;
    float *s = f->scores + (size_t)thread * KERN_ATT_ROWS * f->max_ctx;
    uint32_t n[KERN_ATT_ROWS];
    for (uint32_t i = 0; i < R; i++)
        n[i] = row[i].pos + 1;
    uint32_t bt = kv_block_tokens(f->kv);
    /* The sequence's blocks, as pointers to this head's keys and values. */
    uint32_t nb = (n[R - 1] + bt - 1) / bt;
    const float **kb = (const float **)(f->blockptr + (size_t)thread * 2 * f->max_blocks);
    const float **vb = kb + f->max_blocks;
    for (uint32_t b = 0; b < nb; b++) {
        kb[b] = kv_k(f->kv, row->kv, j->layer, b * bt) + (size_t)g * hd;
        vb[b] = kv_v(f->kv, row->kv, j->layer, b * bt) + (size_t)g * hd;
    }
    kern_attention_rows(q, f->q_dim, R, hd, kb, vb, f->kv_dim, bt, n, 1.0f / sqrtf((float)hd), s, f->max_ctx,
                        f->att + (size_t)r0 * f->q_dim + (size_t)h * hd, f->q_dim);
}

/* SwiGLU's activation, a few rows per task: hb = silu(hb) * hb2. */
struct silu_job {
    const struct fwd *f;
    uint32_t n;
};

#define SILU_ROWS 4

static void silu_task(void *ctx, uint32_t task, uint32_t thread)
{
    (void)thread;
    const struct silu_job *j = ctx;
    const struct fwd *f = j->f;
    uint32_t r0 = task * SILU_ROWS, r1 = r0 + SILU_ROWS < j->n ? r0 + SILU_ROWS : j->n;
    /* vexp's expf is glibc's bit for bit in every ISA: the same bits as the
     * scalar g / (1 + expf(-g)) * u */
    vexp_silu_mul(f->hb + (size_t)r0 * f->ffn, f->hb2 + (size_t)r0 * f->ffn, (size_t)(r1 - r0) * f->ffn, kern_isa());
}

/* Rotate pairs of the first rope_dim dims of each head by theta_i: adjacent
 * pairs (2i, 2i+1) in NORM style, (i, i + rope_dim/2) in NEOX style. */
static void rope(const struct fwd *f, float *vec, uint32_t n_heads, uint32_t pos)
{
    uint32_t half = f->m->cfg.rope_dim / 2;
    uint32_t stride = f->m->cfg.rope_style == ROPE_NEOX ? 1 : 2, off = f->m->cfg.rope_style == ROPE_NEOX ? half : 1;
    const float *cs = f->rope_cos + (size_t)pos * half, *sn = f->rope_sin + (size_t)pos * half;
    for (uint32_t h = 0; h < n_heads; h++) {
        float *v = vec + (size_t)h * f->hd;
        for (uint32_t i = 0; i < half; i++) {
            float *a = v + (size_t)i * stride, *b = a + off;
            float x0 = *a, x1 = *b;
            *a = x0 * cs[i] - x1 * sn[i];
            *b = x0 * sn[i] + x1 * cs[i];
        }
    }
}

static void add_bias(float *x, const float *b, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        x[i] += b[i];
}

/* Qwen3's q/k norm: each head's vector RMS-normed with its own weights. */
static void head_norm(const struct fwd *f, float *vec, uint32_t n_heads, const float *w)
{
    for (uint32_t h = 0; h < n_heads; h++)
        kern_rmsnorm(vec + (size_t)h * f->hd, vec + (size_t)h * f->hd, w, f->hd, f->m->cfg.norm_eps);
}

/* The per-row steps between the matrix products, a few rows per task on
 * the pool (alone on the calling thread they were a tenth of a prompt's
 * step, with the other threads idle).  Rows are independent and each is
 * computed as before, so the bits do not depend on who runs it. */
enum row_step {
    ROW_NORM,     /* xb = rmsnorm(x, norm) */
    ROW_QKV,      /* biases, q/k norms and rope of q and k; k and v into the cache */
    ROW_ADD_NORM, /* tmp += bias (if any); x += tmp; then ROW_NORM if norm */
};

struct row_job {
    const struct fwd *f;
    const struct fwd_row *rows;
    uint32_t n, layer;
    enum row_step step;
    const float *norm, *bias;
};

#define ROW_TASK_ROWS 8

static void row_task(void *ctx, uint32_t task, uint32_t thread)
{
    (void)thread;
    const struct row_job *j = ctx;
    const struct fwd *f = j->f;
    const struct model_config *c = &f->m->cfg;
    const struct layer_weights *L = &f->m->layers[j->layer];
    uint32_t dim = f->dim, r1 = (task + 1) * ROW_TASK_ROWS < j->n ? (task + 1) * ROW_TASK_ROWS : j->n;
    for (uint32_t r = task * ROW_TASK_ROWS; r < r1; r++) {
        float *x = f->x + (size_t)r * dim;
        if (j->step == ROW_QKV) {
            float *q = f->q + (size_t)r * f->q_dim, *k = f->k + (size_t)r * f->kv_dim;
            if (L->bq)
                add_bias(q, L->bq, f->q_dim);
            if (L->bk)
                add_bias(k, L->bk, f->kv_dim);
            if (L->bv)
                add_bias(f->v + (size_t)r * f->kv_dim, L->bv, f->kv_dim);
            if (L->q_norm)
                head_norm(f, q, c->n_heads, L->q_norm);
            if (L->k_norm)
                head_norm(f, k, c->n_kv_heads, L->k_norm);
            rope(f, q, c->n_heads, j->rows[r].pos);
            rope(f, k, c->n_kv_heads, j->rows[r].pos);
            memcpy(kv_k(f->kv, j->rows[r].kv, j->layer, j->rows[r].pos), k, f->kv_dim * sizeof(float));
            memcpy(kv_v(f->kv, j->rows[r].kv, j->layer, j->rows[r].pos), f->v + (size_t)r * f->kv_dim,
                   f->kv_dim * sizeof(float));
            continue;
        }
        if (j->step == ROW_ADD_NORM) {
            float *t = f->tmp + (size_t)r * dim;
            if (j->bias)
                add_bias(t, j->bias, dim);
            for (uint32_t i = 0; i < dim; i++)
                x[i] += t[i];
        }
        if (j->norm)
            kern_rmsnorm(f->xb + (size_t)r * dim, x, j->norm, dim, c->norm_eps);
    }
}

static void rows_run(struct fwd *f, const struct fwd_row *rows, uint32_t n, uint32_t layer, enum row_step step,
                     const float *norm, const float *bias)
{
    struct row_job j = {f, rows, n, layer, step, norm, bias};
    pool_run(f->pool, row_task, &j, (n + ROW_TASK_ROWS - 1) / ROW_TASK_ROWS);
}

/* --- the pass ------------------------------------------------------------------------------ */

int fwd_run(struct fwd *f, const struct fwd_row *rows, uint32_t n, float *logits)
{
    const struct model *m = f->m;
    const struct model_config *c = &m->cfg;
    uint32_t dim = f->dim;
    if (n == 0)
        return 0;
    if (n > f->max_rows)
        return RILL_E_TOO_LARGE;
    uint32_t n_logits = 0;
    for (uint32_t r = 0; r < n; r++) {
        if (rows[r].token < 0 || (uint32_t)rows[r].token >= c->vocab || rows[r].pos >= f->max_ctx)
            return RILL_E_BAD_REQUEST;
        if (rows[r].logits_row >= 0 && (uint32_t)rows[r].logits_row + 1 > n_logits)
            n_logits = (uint32_t)rows[r].logits_row + 1;
    }

    for (uint32_t r = 0; r < n; r++)
        kern_row(&m->tok_embd, (uint32_t)rows[r].token, f->x + (size_t)r * dim);
    /* Attention groups: runs of rows of one sequence at consecutive positions. */
    f->n_att = 0;
    for (uint32_t r = 0; r < n; r++)
        if (r == 0 || r - f->att_first[f->n_att - 1] == KERN_ATT_ROWS || rows[r].kv != rows[r - 1].kv ||
            rows[r].pos != rows[r - 1].pos + 1)
            f->att_first[f->n_att++] = r;
    f->att_first[f->n_att] = n;

    for (uint32_t l = 0; l < c->n_layers; l++) {
        const struct layer_weights *L = &m->layers[l];
        const struct fwd_layer *P = &f->L[l];

        /* Attention (the previous layer's last step normed the input). */
        if (l == 0)
            rows_run(f, rows, n, l, ROW_NORM, L->attn_norm, NULL);
        matmul(f, f->xb, dim, n, 3, &P->wq, f->q, f->q_dim, &P->wk, f->k, f->kv_dim, &P->wv, f->v, f->kv_dim);
        rows_run(f, rows, n, l, ROW_QKV, NULL, NULL);
        struct att_job aj = {f, rows, l};
        pool_run(f->pool, att_task, &aj, f->n_att * c->n_heads);
        MATMUL1(f, f->att, f->q_dim, n, &P->wo, f->tmp, dim);
        rows_run(f, rows, n, l, ROW_ADD_NORM, L->ffn_norm, L->bo);

        /* Feed-forward: down(silu(gate(x)) * up(x)). */
        matmul(f, f->xb, dim, n, 2, &P->w_gate, f->hb, f->ffn, &P->w_up, f->hb2, f->ffn, NULL, NULL, 0);
        struct silu_job sj = {f, n};
        pool_run(f->pool, silu_task, &sj, (n + SILU_ROWS - 1) / SILU_ROWS);
        MATMUL1(f, f->hb, f->ffn, n, &P->w_down, f->tmp, dim);
        /* with the next layer's attention norm */
        rows_run(f, rows, n, l, ROW_ADD_NORM, l + 1 < c->n_layers ? m->layers[l + 1].attn_norm : NULL, NULL);
        if (f->progress)
            f->progress(f->progress_ctx);
    }

    if (n_logits == 0)
        return 0;
    for (uint32_t r = 0; r < n; r++)
        if (rows[r].logits_row >= 0)
            kern_rmsnorm(f->xs + (size_t)rows[r].logits_row * dim, f->x + (size_t)r * dim, m->out_norm, dim,
                         c->norm_eps);
    MATMUL1(f, f->xs, dim, n_logits, &f->output, logits, c->vocab);
    return 0;
}
