/* ggufw.c — see ggufw.h. */
#include "ggufw.h"
#include "common/err.h"
#include "worker/model.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- writer ------------------------------------------------------------- */

struct wbuf {
    uint8_t *p;
    size_t len, cap;
};

struct wtensor {
    char *name;
    uint32_t type;
    uint64_t n_bytes;
};

struct gguf_writer {
    char *path, *tmp;
    FILE *f;
    char *why;
    size_t why_len;
    int err;
    uint32_t alignment;
    struct wbuf kv, ti;
    uint64_t n_kv;
    char **keys;            /* for the duplicate check: writers write dozens, not millions */
    struct wtensor *t;
    uint64_t n_t, cap_t;
    uint64_t data_end;      /* offset after the last declared tensor (padded) */
    bool started;
    uint64_t cur, cur_done; /* tensor being written and its bytes so far */
    uint64_t written;
    void *scratch;          /* conversion buffer for gguf_w_data_f32 */
};

#define W_SCRATCH_ELEMS (64 * 1024) /* a multiple of every block size */

static int w_fail(struct gguf_writer *w, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int w_fail(struct gguf_writer *w, int code, const char *fmt, ...)
{
    if (w->err)
        return w->err;
    if (w->why && w->why_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(w->why, w->why_len, fmt, ap);
        va_end(ap);
    }
    w->err = code;
    return code;
}

static int wb_put(struct gguf_writer *w, struct wbuf *b, const void *p, size_t n)
{
    if (w->err || n == 0)
        return w->err;
    if (n > b->cap - b->len) {
        size_t cap = b->cap ? b->cap : 4096;
        while (n > cap - b->len) {
            if (cap > SIZE_MAX / 2)
                return w_fail(w, RILL_E_NOMEM, "metadata too large");
            cap *= 2;
        }
        uint8_t *q = realloc(b->p, cap);
        if (!q)
            return w_fail(w, RILL_E_NOMEM, "out of memory for %zu bytes of metadata", cap);
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

static int wb_u32(struct gguf_writer *w, struct wbuf *b, uint32_t v) { return wb_put(w, b, &v, 4); }
static int wb_u64(struct gguf_writer *w, struct wbuf *b, uint64_t v) { return wb_put(w, b, &v, 8); }
static int wb_str(struct gguf_writer *w, struct wbuf *b, const char *s, uint64_t len)
{
    wb_u64(w, b, len);
    return wb_put(w, b, s, len);
}

int gguf_w_open(const char *path, uint32_t alignment, struct gguf_writer **out, char *why, size_t why_len)
{
    *out = NULL;
    if (alignment == 0)
        alignment = GGUF_DEFAULT_ALIGNMENT;
    if (alignment & (alignment - 1))
        return rill_fail(why, why_len, RILL_E_BAD_REQUEST, "alignment %" PRIu32 " is not a power of two",
                    alignment);
    struct gguf_writer *w = calloc(1, sizeof *w);
    if (!w)
        return rill_fail(why, why_len, RILL_E_NOMEM, "out of memory");
    w->why = why;
    w->why_len = why_len;
    w->alignment = alignment;
    w->path = strdup(path);
    if (!w->path || asprintf(&w->tmp, "%s.tmp.%d", path, (int)getpid()) < 0) {
        w->tmp = NULL;
        gguf_w_abort(w);
        return rill_fail(why, why_len, RILL_E_NOMEM, "out of memory");
    }
    int fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || !(w->f = fdopen(fd, "wb"))) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        free(w->tmp);
        w->tmp = NULL; /* nothing to remove */
        gguf_w_abort(w);
        return rill_fail(why, why_len, RILL_E_IO, "cannot create %s.tmp.*: %s", path, strerror(e));
    }
    setvbuf(w->f, NULL, _IOFBF, 1 << 20);
    if (alignment != GGUF_DEFAULT_ALIGNMENT)
        gguf_w_kv_u32(w, "general.alignment", alignment);
    *out = w;
    return 0;
}

static int w_key(struct gguf_writer *w, const char *key, enum gguf_vtype t)
{
    if (w->err)
        return w->err;
    if (w->started)
        return w_fail(w, RILL_E_BAD_REQUEST, "metadata '%s' added after tensor data", key);
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0)
            return w_fail(w, RILL_E_BAD_REQUEST, "duplicate metadata key '%s'", key);
    char **k = realloc(w->keys, (w->n_kv + 1) * sizeof *k);
    if (!k)
        return w_fail(w, RILL_E_NOMEM, "out of memory");
    w->keys = k;
    if (!(k[w->n_kv] = strdup(key)))
        return w_fail(w, RILL_E_NOMEM, "out of memory");
    w->n_kv++;
    wb_str(w, &w->kv, key, strlen(key));
    return wb_u32(w, &w->kv, t);
}

static int w_scalar(struct gguf_writer *w, const char *key, enum gguf_vtype t, const void *v)
{
    w_key(w, key, t);
    return wb_put(w, &w->kv, v, gguf_vtype_size(t));
}

int gguf_w_kv_u8(struct gguf_writer *w, const char *key, uint8_t v) { return w_scalar(w, key, GGUF_U8, &v); }
int gguf_w_kv_i8(struct gguf_writer *w, const char *key, int8_t v) { return w_scalar(w, key, GGUF_I8, &v); }
int gguf_w_kv_u16(struct gguf_writer *w, const char *key, uint16_t v) { return w_scalar(w, key, GGUF_U16, &v); }
int gguf_w_kv_i16(struct gguf_writer *w, const char *key, int16_t v) { return w_scalar(w, key, GGUF_I16, &v); }
int gguf_w_kv_u32(struct gguf_writer *w, const char *key, uint32_t v) { return w_scalar(w, key, GGUF_U32, &v); }
int gguf_w_kv_i32(struct gguf_writer *w, const char *key, int32_t v) { return w_scalar(w, key, GGUF_I32, &v); }
int gguf_w_kv_u64(struct gguf_writer *w, const char *key, uint64_t v) { return w_scalar(w, key, GGUF_U64, &v); }
int gguf_w_kv_i64(struct gguf_writer *w, const char *key, int64_t v) { return w_scalar(w, key, GGUF_I64, &v); }
int gguf_w_kv_f32(struct gguf_writer *w, const char *key, float v) { return w_scalar(w, key, GGUF_F32, &v); }
int gguf_w_kv_f64(struct gguf_writer *w, const char *key, double v) { return w_scalar(w, key, GGUF_F64, &v); }

int gguf_w_kv_bool(struct gguf_writer *w, const char *key, bool v)
{
    uint8_t b = v;
    return w_scalar(w, key, GGUF_BOOL, &b);
}

int gguf_w_kv_strn(struct gguf_writer *w, const char *key, const char *s, uint64_t len)
{
    w_key(w, key, GGUF_STR);
    return wb_str(w, &w->kv, s, len);
}

int gguf_w_kv_str(struct gguf_writer *w, const char *key, const char *s)
{
    return gguf_w_kv_strn(w, key, s, strlen(s));
}

int gguf_w_kv_arr(struct gguf_writer *w, const char *key, enum gguf_vtype elem_type,
                  const void *elems, uint64_t n)
{
    if ((unsigned)elem_type >= GGUF_VTYPE_COUNT || elem_type == GGUF_STR || elem_type == GGUF_ARR)
        return w_fail(w, RILL_E_BAD_REQUEST, "metadata '%s': arrays of %s are not written this way",
                      key, gguf_vtype_name(elem_type));
    if (n > SIZE_MAX / 8)
        return w_fail(w, RILL_E_BAD_REQUEST, "metadata '%s': array too long", key);
    w_key(w, key, GGUF_ARR);
    wb_u32(w, &w->kv, elem_type);
    wb_u64(w, &w->kv, n);
    return wb_put(w, &w->kv, elems, (size_t)n * gguf_vtype_size(elem_type));
}

int gguf_w_kv_arr_str(struct gguf_writer *w, const char *key, const char *const *strs,
                      const uint32_t *lens, uint64_t n)
{
    w_key(w, key, GGUF_ARR);
    wb_u32(w, &w->kv, GGUF_STR);
    wb_u64(w, &w->kv, n);
    for (uint64_t i = 0; i < n; i++)
        wb_str(w, &w->kv, strs[i], lens ? lens[i] : strlen(strs[i]));
    return w->err;
}

static uint64_t pad_to(uint64_t off, uint32_t al) { return (al - off % al) % al; }

int gguf_w_add_tensor(struct gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                      const uint64_t *ne)
{
    if (w->err)
        return w->err;
    if (w->started)
        return w_fail(w, RILL_E_BAD_REQUEST, "tensor '%s' declared after tensor data", name);
    if (!gguf_ttype_name(type))
        return w_fail(w, RILL_E_BAD_REQUEST, "tensor '%s': unknown type %" PRIu32, name, type);
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return w_fail(w, RILL_E_BAD_REQUEST, "tensor '%s': %" PRIu32 " dimensions", name, n_dims);
    uint64_t n = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        if (ne[d] == 0 || ne[d] > INT64_MAX || n > INT64_MAX / ne[d])
            return w_fail(w, RILL_E_BAD_REQUEST, "tensor '%s': bad dimension %" PRIu64, name, ne[d]);
        n *= ne[d];
    }
    uint64_t nb = gguf_ttype_bytes(type, n);
    if (ne[0] % gguf_ttype_block(type) || nb == 0)
        return w_fail(w, RILL_E_BAD_REQUEST,
                      "tensor '%s': rows of %" PRIu64 " are not a multiple of the %s block", name,
                      ne[0], gguf_ttype_name(type));
    for (uint64_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return w_fail(w, RILL_E_BAD_REQUEST, "duplicate tensor '%s'", name);
    if (w->n_t == w->cap_t) {
        uint64_t cap = w->cap_t ? 2 * w->cap_t : 64;
        struct wtensor *t = realloc(w->t, cap * sizeof *t);
        if (!t)
            return w_fail(w, RILL_E_NOMEM, "out of memory");
        w->t = t;
        w->cap_t = cap;
    }
    struct wtensor *t = &w->t[w->n_t];
    if (!(t->name = strdup(name)))
        return w_fail(w, RILL_E_NOMEM, "out of memory");
    t->type = type;
    t->n_bytes = nb;
    w->n_t++;

    wb_str(w, &w->ti, name, strlen(name));
    wb_u32(w, &w->ti, n_dims);
    for (uint32_t d = 0; d < n_dims; d++)
        wb_u64(w, &w->ti, ne[d]);
    wb_u32(w, &w->ti, type);
    wb_u64(w, &w->ti, w->data_end);
    w->data_end += nb + pad_to(nb, w->alignment);
    return w->err;
}

static int w_write(struct gguf_writer *w, const void *p, size_t n)
{
    if (w->err)
        return w->err;
    if (n && fwrite(p, 1, n, w->f) != n)
        return w_fail(w, RILL_E_IO, "cannot write %s: %s", w->tmp, strerror(errno));
    w->written += n;
    return 0;
}

static int w_pad(struct gguf_writer *w)
{
    static const uint8_t zeros[256];
    uint64_t n = pad_to(w->written, w->alignment);
    while (n > 0 && !w->err) {
        size_t k = n > sizeof zeros ? sizeof zeros : (size_t)n;
        w_write(w, zeros, k);
        n -= k;
    }
    return w->err;
}

static int w_start(struct gguf_writer *w)
{
    if (w->err || w->started)
        return w->err;
    w->started = true;
    uint32_t hdr[2] = {GGUF_MAGIC, GGUF_VERSION};
    uint64_t counts[2] = {w->n_t, w->n_kv};
    w_write(w, hdr, sizeof hdr);
    w_write(w, counts, sizeof counts);
    w_write(w, w->kv.p, w->kv.len);
    w_write(w, w->ti.p, w->ti.len);
    if (w->n_t)
        w_pad(w);
    /* Infos and metadata are on their way to disk: free them now, the data
     * that follows may be large. */
    free(w->kv.p);
    free(w->ti.p);
    w->kv = w->ti = (struct wbuf){0};
    return w->err;
}

int gguf_w_data(struct gguf_writer *w, const void *bytes, size_t len)
{
    if (w_start(w))
        return w->err;
    const uint8_t *p = bytes;
    while (len > 0) {
        if (w->cur >= w->n_t)
            return w_fail(w, RILL_E_BAD_REQUEST, "tensor data beyond the declared tensors");
        struct wtensor *t = &w->t[w->cur];
        uint64_t left = t->n_bytes - w->cur_done;
        size_t k = len < left ? len : (size_t)left;
        if (w_write(w, p, k))
            return w->err;
        p += k;
        len -= k;
        w->cur_done += k;
        if (w->cur_done == t->n_bytes) {
            w_pad(w);
            w->cur++;
            w->cur_done = 0;
        }
    }
    return w->err;
}

static uint16_t f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000)
        return (uint16_t)((x >> 16) | 0x40); /* NaN stays NaN (quiet) */
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

void gguf_quantize_q8_0(const float *x, void *out, size_t n)
{
    struct q8_0_block *b = out;
    for (size_t i = 0; i < n / Q8_0_BLOCK; i++, x += Q8_0_BLOCK) {
        float amax = 0;
        for (int j = 0; j < Q8_0_BLOCK; j++)
            amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f;
        float id = d != 0 ? 1.0f / d : 0.0f;
        struct q8_0_block blk;
        blk.d = f32_to_f16(d);
        for (int j = 0; j < Q8_0_BLOCK; j++)
            blk.qs[j] = (int8_t)roundf(x[j] * id);
        memcpy(&b[i], &blk, sizeof blk);
    }
}

int gguf_w_data_f32(struct gguf_writer *w, const float *x, size_t n)
{
    if (w_start(w))
        return w->err;
    if (w->cur >= w->n_t)
        return w_fail(w, RILL_E_BAD_REQUEST, "tensor data beyond the declared tensors");
    uint32_t type = w->t[w->cur].type;
    if (type != GGUF_T_F32 && type != GGUF_T_F16 && type != GGUF_T_BF16 && type != GGUF_T_Q8_0)
        return w_fail(w, RILL_E_BAD_REQUEST, "tensor '%s': cannot encode floats as %s",
                      w->t[w->cur].name, gguf_ttype_name(type));
    if (n % gguf_ttype_block(type))
        return w_fail(w, RILL_E_BAD_REQUEST, "tensor '%s': %zu floats are not whole %s blocks",
                      w->t[w->cur].name, n, gguf_ttype_name(type));
    if (type == GGUF_T_F32)
        return gguf_w_data(w, x, n * sizeof *x);
    if (!w->scratch && !(w->scratch = malloc(W_SCRATCH_ELEMS * 2)))
        return w_fail(w, RILL_E_NOMEM, "out of memory");
    while (n > 0 && !w->err) {
        size_t k = n < W_SCRATCH_ELEMS ? n : W_SCRATCH_ELEMS;
        uint16_t *h = w->scratch;
        if (type == GGUF_T_Q8_0)
            gguf_quantize_q8_0(x, w->scratch, k);
        else
            for (size_t i = 0; i < k; i++)
                h[i] = type == GGUF_T_F16 ? f32_to_f16(x[i]) : f32_to_bf16(x[i]);
        gguf_w_data(w, w->scratch, gguf_ttype_bytes(type, k));
        x += k;
        n -= k;
    }
    return w->err;
}

uint64_t gguf_w_bytes(const struct gguf_writer *w) { return w->written; }

static void w_free(struct gguf_writer *w)
{
    if (w->f)
        fclose(w->f);
    if (w->tmp)
        unlink(w->tmp);
    for (uint64_t i = 0; i < w->n_kv; i++)
        free(w->keys[i]);
    free(w->keys);
    for (uint64_t i = 0; i < w->n_t; i++)
        free(w->t[i].name);
    free(w->t);
    free(w->kv.p);
    free(w->ti.p);
    free(w->scratch);
    free(w->tmp);
    free(w->path);
    free(w);
}

void gguf_w_abort(struct gguf_writer *w)
{
    if (w)
        w_free(w);
}

int gguf_w_finish(struct gguf_writer *w)
{
    w_start(w);
    if (!w->err && (w->cur < w->n_t))
        w_fail(w, RILL_E_BAD_REQUEST, "tensor '%s' got %" PRIu64 " of its %" PRIu64 " bytes",
               w->t[w->cur].name, w->cur_done, w->t[w->cur].n_bytes);
    if (!w->err && (fflush(w->f) != 0 || fsync(fileno(w->f)) != 0))
        w_fail(w, RILL_E_IO, "cannot write %s: %s", w->tmp, strerror(errno));
    if (!w->err) {
        FILE *f = w->f;
        w->f = NULL;
        if (fclose(f) != 0)
            w_fail(w, RILL_E_IO, "cannot write %s: %s", w->tmp, strerror(errno));
    }
    if (!w->err) {
        if (rename(w->tmp, w->path) != 0) {
            w_fail(w, RILL_E_IO, "cannot rename %s to %s: %s", w->tmp, w->path, strerror(errno));
        } else {
            free(w->tmp);
            w->tmp = NULL; /* nothing left to remove */
            /* Make the rename itself durable. */
            char *dir = strdup(w->path), *slash = dir ? strrchr(dir, '/') : NULL;
            if (dir) {
                const char *d = slash ? (slash == dir ? "/" : (*slash = 0, dir)) : ".";
                int dfd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                if (dfd >= 0) {
                    fsync(dfd);
                    close(dfd);
                }
                free(dir);
            }
        }
    }
    int rc = w->err;
    w_free(w);
    return rc;
}
