/* test_gguf.c — the GGUF reader and writer: a round trip of every metadata
 * and tensor type, and every class of broken or hostile file, each with its
 * error code and message.  Hostile counts and lengths run in a child process
 * whose address space is capped, so "does not allocate hugely" is checked,
 * not hoped (except under sanitizers, which need their large reservations). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/err.h"
#include "worker/gguf.h"
#include "tools/lib/ggufw.h"
#include "worker/model.h"

/* ---- helpers ------------------------------------------------------------- */

static char tmpdir[64];

static int setup_dir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/rill-test-gguf-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int remove_dir(void **state)
{
    (void)state;
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

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

/* Parse exactly `len` bytes copied into their own allocation, so that ASan
 * sees any read past the end. */
static int open_bytes(const uint8_t *bytes, size_t len, char *why, size_t why_len)
{
    uint8_t *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, bytes, len);
    struct gguf *g = NULL;
    why[0] = 0;
    int rc = gguf_open_mem(copy, len, &g, why, why_len);
    if (rc == 0) {
        assert_non_null(g);
        gguf_close(g);
    }
    free(copy);
    return rc;
}

static void expect_error(const uint8_t *bytes, size_t len, int code, const char *substr)
{
    char why[512];
    int rc = open_bytes(bytes, len, why, sizeof why);
    if (rc != code || !strstr(why, substr))
        fail_msg("expected %s with \"%s\", got %s: \"%s\"", rill_err_name(code), substr,
                 rill_err_name(rc), why);
}

static size_t find_bytes(const uint8_t *hay, size_t n, const void *needle, size_t k)
{
    void *p = memmem(hay, n, needle, k);
    assert_non_null(p);
    return (size_t)((const uint8_t *)p - hay);
}

/* Offset of a tensor info's fields, from its (unique) name. */
struct info_at {
    size_t name, n_dims, dims, type, offset;
};
static struct info_at info_of(const uint8_t *b, size_t n, const char *name, uint32_t n_dims)
{
    struct info_at a;
    a.name = find_bytes(b, n, name, strlen(name)) - 8;
    a.n_dims = a.name + 8 + strlen(name);
    a.dims = a.n_dims + 4;
    a.type = a.dims + 8 * n_dims;
    a.offset = a.type + 4;
    return a;
}

/* Raw GGUF bytes for hostile files the writer would refuse to make. */
struct raw {
    uint8_t b[4096];
    size_t n;
};
static void r_u32(struct raw *r, uint32_t v) { memcpy(r->b + r->n, &v, 4); r->n += 4; }
static void r_u64(struct raw *r, uint64_t v) { memcpy(r->b + r->n, &v, 8); r->n += 8; }
static void r_str(struct raw *r, const char *s)
{
    r_u64(r, strlen(s));
    memcpy(r->b + r->n, s, strlen(s));
    r->n += strlen(s);
}
static void r_header(struct raw *r, uint64_t n_tensors, uint64_t n_kv)
{
    r->n = 0;
    r_u32(r, GGUF_MAGIC);
    r_u32(r, 3);
    r_u64(r, n_tensors);
    r_u64(r, n_kv);
}
static void r_zeros(struct raw *r, size_t n)
{
    memset(r->b + r->n, 0, n);
    r->n += n;
}

/* A small good file with a bit of everything: metadata of several types
 * including a string array, three tensors of three types. */
static const char *const vocab[] = {"<unk>", "", "hello", "w\xc3\xb6rld", "a b"};
static void write_small(const char *path)
{
    char why[256];
    struct gguf_writer *w;
    assert_int_equal(gguf_w_open(path, 0, &w, why, sizeof why), 0);
    gguf_w_kv_str(w, "general.architecture", "llama");
    gguf_w_kv_u32(w, "llama.block_count", 4);
    gguf_w_kv_arr_str(w, "tokenizer.ggml.tokens", vocab, NULL, 5);
    float sc[5] = {0, -1, -2, -3, -4};
    gguf_w_kv_arr(w, "tokenizer.ggml.scores", GGUF_F32, sc, 5);
    uint64_t ne_a[2] = {32, 3}, ne_b[1] = {7}, ne_c[2] = {64, 2};
    gguf_w_add_tensor(w, "blk.3.attn_q.weight", GGUF_T_F32, 2, ne_a);
    gguf_w_add_tensor(w, "output_norm.weight", GGUF_T_F16, 1, ne_b);
    gguf_w_add_tensor(w, "token_embd.weight", GGUF_T_Q8_0, 2, ne_c);
    float x[128];
    for (int i = 0; i < 128; i++)
        x[i] = (float)i / 17.0f - 3.0f;
    gguf_w_data_f32(w, x, 96);
    gguf_w_data_f32(w, x, 7);
    gguf_w_data_f32(w, x, 128);
    assert_int_equal(gguf_w_finish(w), 0);
}

/* ---- round trip ---------------------------------------------------------- */

static void test_gguf_round_trips_every_metadata_type(void **state)
{
    (void)state;
    const char *path = tpath("meta.gguf");
    char why[256] = "";
    struct gguf_writer *w;
    assert_int_equal(gguf_w_open(path, 0, &w, why, sizeof why), 0);
    gguf_w_kv_u8(w, "k.u8", 250);
    gguf_w_kv_i8(w, "k.i8", -100);
    gguf_w_kv_u16(w, "k.u16", 65000);
    gguf_w_kv_i16(w, "k.i16", -30000);
    gguf_w_kv_u32(w, "k.u32", 4000000000u);
    gguf_w_kv_i32(w, "k.i32", -2000000000);
    gguf_w_kv_u64(w, "k.u64", UINT64_MAX);
    gguf_w_kv_i64(w, "k.i64", INT64_MIN);
    gguf_w_kv_f32(w, "k.f32", 1.5e-5f);
    gguf_w_kv_f64(w, "k.f64", 1e300);
    gguf_w_kv_bool(w, "k.bool", true);
    gguf_w_kv_str(w, "k.str", "h\xc3\xa9llo");
    gguf_w_kv_strn(w, "k.strnul", "a\0b", 3);
    gguf_w_kv_str(w, "k.empty", "");
    uint8_t a_u8[3] = {1, 2, 255};
    int8_t a_i8[3] = {-1, 0, 127};
    uint16_t a_u16[2] = {7, 65535};
    int16_t a_i16[2] = {-7, 32767};
    uint32_t a_u32[2] = {7, 4294967295u};
    int32_t a_i32[3] = {-1, 2, -3};
    uint64_t a_u64[2] = {0, UINT64_MAX};
    int64_t a_i64[2] = {INT64_MIN, INT64_MAX};
    float a_f32[3] = {0.5f, -1.0f, 3.25f};
    double a_f64[2] = {0.1, -2.5};
    uint8_t a_bool[3] = {1, 0, 1};
    gguf_w_kv_arr(w, "a.u8", GGUF_U8, a_u8, 3);
    gguf_w_kv_arr(w, "a.i8", GGUF_I8, a_i8, 3);
    gguf_w_kv_arr(w, "a.u16", GGUF_U16, a_u16, 2);
    gguf_w_kv_arr(w, "a.i16", GGUF_I16, a_i16, 2);
    gguf_w_kv_arr(w, "a.u32", GGUF_U32, a_u32, 2);
    gguf_w_kv_arr(w, "a.i32", GGUF_I32, a_i32, 3);
    gguf_w_kv_arr(w, "a.u64", GGUF_U64, a_u64, 2);
    gguf_w_kv_arr(w, "a.i64", GGUF_I64, a_i64, 2);
    gguf_w_kv_arr(w, "a.f32", GGUF_F32, a_f32, 3);
    gguf_w_kv_arr(w, "a.f64", GGUF_F64, a_f64, 2);
    gguf_w_kv_arr(w, "a.bool", GGUF_BOOL, a_bool, 3);
    gguf_w_kv_arr(w, "a.empty", GGUF_I32, NULL, 0);
    gguf_w_kv_arr_str(w, "a.str", vocab, NULL, 5);
    const char *with_nul[2] = {"x\0y", "z"};
    uint32_t lens[2] = {3, 1};
    gguf_w_kv_arr_str(w, "a.strlen", with_nul, lens, 2);
    assert_int_equal(gguf_w_finish(w), 0);

    struct gguf *g;
    assert_int_equal(gguf_open(path, &g, why, sizeof why), 0);
    assert_int_equal(gguf_version(g), 3);
    assert_int_equal(gguf_alignment(g), 32);
    assert_int_equal(gguf_n_tensors(g), 0);
    assert_int_equal(gguf_n_kv(g), 28);

    uint32_t u32;
    uint64_t u64;
    int64_t i64;
    float f;
    bool b;
    struct gguf_str s;
    assert_int_equal(gguf_get_u32(g, "k.u8", &u32, why, sizeof why), 0);
    assert_int_equal(u32, 250);
    assert_int_equal(gguf_get_i64(g, "k.i8", &i64, why, sizeof why), 0);
    assert_int_equal(i64, -100);
    assert_int_equal(gguf_get_u32(g, "k.u16", &u32, why, sizeof why), 0);
    assert_int_equal(u32, 65000);
    assert_int_equal(gguf_get_i64(g, "k.i16", &i64, why, sizeof why), 0);
    assert_int_equal(i64, -30000);
    assert_int_equal(gguf_get_u32(g, "k.u32", &u32, why, sizeof why), 0);
    assert_int_equal(u32, 4000000000u);
    assert_int_equal(gguf_get_i64(g, "k.i32", &i64, why, sizeof why), 0);
    assert_int_equal(i64, -2000000000);
    assert_int_equal(gguf_get_u64(g, "k.u64", &u64, why, sizeof why), 0);
    assert_true(u64 == UINT64_MAX);
    assert_int_equal(gguf_get_i64(g, "k.i64", &i64, why, sizeof why), 0);
    assert_true(i64 == INT64_MIN);
    assert_int_equal(gguf_get_f32(g, "k.f32", &f, why, sizeof why), 0);
    assert_true(f == 1.5e-5f);
    assert_int_equal(gguf_get_f32(g, "k.f64", &f, why, sizeof why), 0);
    assert_true(isinf(f)); /* 1e300 does not fit a float */
    assert_true(gguf_find(g, "k.f64")->v.f == 1e300);
    assert_int_equal(gguf_get_bool(g, "k.bool", &b, why, sizeof why), 0);
    assert_true(b);
    assert_int_equal(gguf_get_str(g, "k.str", &s, why, sizeof why), 0);
    assert_true(gguf_str_eq(s, "h\xc3\xa9llo"));
    assert_int_equal(gguf_get_str(g, "k.strnul", &s, why, sizeof why), 0);
    assert_int_equal(s.len, 3);
    assert_memory_equal(s.s, "a\0b", 3);
    char buf[16];
    assert_int_equal(gguf_get_str_buf(g, "k.empty", buf, sizeof buf, why, sizeof why), 0);
    assert_string_equal(buf, "");
    assert_int_equal(gguf_get_str_buf(g, "k.str", buf, 4, why, sizeof why), RILL_E_BAD_FORMAT);
    assert_int_equal(gguf_get_str_buf(g, "k.strnul", buf, sizeof buf, why, sizeof why), RILL_E_BAD_FORMAT);
    assert_non_null(strstr(why, "NUL"));

    /* Getters: absent, wrong type, out of range — each told apart. */
    why[0] = 0;
    assert_int_equal(gguf_get_u32(g, "no.such.key", &u32, why, sizeof why), RILL_E_NOT_FOUND);
    assert_string_equal(why, "");
    assert_int_equal(gguf_get_u32(g, "k.i8", &u32, why, sizeof why), RILL_E_BAD_FORMAT);
    assert_non_null(strstr(why, "'k.i8'"));
    assert_non_null(strstr(why, "negative"));
    assert_int_equal(gguf_get_u32(g, "k.u64", &u32, why, sizeof why), RILL_E_BAD_FORMAT);
    assert_non_null(strstr(why, "out of range"));
    assert_int_equal(gguf_get_i64(g, "k.u64", &i64, why, sizeof why), RILL_E_BAD_FORMAT);
    assert_int_equal(gguf_get_u32(g, "k.str", &u32, why, sizeof why), RILL_E_BAD_FORMAT);
    assert_non_null(strstr(why, "'k.str' is a string, expected an integer"));
    assert_int_equal(gguf_get_f32(g, "k.u8", &f, why, sizeof why), RILL_E_BAD_FORMAT);
    assert_int_equal(gguf_get_bool(g, "k.u8", &b, why, sizeof why), RILL_E_BAD_FORMAT);
    assert_int_equal(gguf_get_str(g, "k.u8", &s, why, sizeof why), RILL_E_BAD_FORMAT);

    const struct gguf_kv *kv;
    uint64_t n;
    assert_int_equal(gguf_get_arr(g, "a.u8", GGUF_U8, &kv, &n, why, sizeof why), 0);
    assert_int_equal(n, 3);
    assert_int_equal(gguf_arr_u64(kv, 2), 255);
    assert_int_equal(gguf_get_arr(g, "a.i8", GGUF_I8, &kv, &n, why, sizeof why), 0);
    assert_int_equal(gguf_arr_i64(kv, 0), -1);
    assert_int_equal(gguf_arr_i64(kv, 2), 127);
    assert_int_equal(gguf_get_arr(g, "a.u16", GGUF_U16, &kv, &n, why, sizeof why), 0);
    assert_int_equal(gguf_arr_u64(kv, 1), 65535);
    assert_int_equal(gguf_get_arr(g, "a.i16", GGUF_I16, &kv, &n, why, sizeof why), 0);
    assert_int_equal(gguf_arr_i64(kv, 0), -7);
    assert_int_equal(gguf_get_arr(g, "a.u32", GGUF_U32, &kv, &n, why, sizeof why), 0);
    assert_int_equal(gguf_arr_u64(kv, 1), 4294967295u);
    assert_int_equal(gguf_get_arr(g, "a.i32", GGUF_I32, &kv, &n, why, sizeof why), 0);
    assert_int_equal(n, 3);
    assert_int_equal(gguf_arr_i64(kv, 2), -3);
    assert_int_equal(gguf_get_arr(g, "a.u64", GGUF_U64, &kv, &n, why, sizeof why), 0);
    assert_true(gguf_arr_u64(kv, 1) == UINT64_MAX);
    assert_int_equal(gguf_get_arr(g, "a.i64", GGUF_I64, &kv, &n, why, sizeof why), 0);
    assert_true(gguf_arr_i64(kv, 0) == INT64_MIN);
    assert_true(gguf_arr_i64(kv, 1) == INT64_MAX);
    assert_int_equal(gguf_get_arr(g, "a.f32", GGUF_F32, &kv, &n, why, sizeof why), 0);
    assert_true(gguf_arr_f32(kv, 2) == 3.25f);
    assert_int_equal(gguf_get_arr(g, "a.f64", GGUF_F64, &kv, &n, why, sizeof why), 0);
    assert_true(gguf_arr_f32(kv, 0) == 0.1f);
    assert_int_equal(gguf_get_arr(g, "a.bool", GGUF_BOOL, &kv, &n, why, sizeof why), 0);
    assert_int_equal(gguf_arr_u64(kv, 0), 1);
    assert_int_equal(gguf_arr_u64(kv, 1), 0);
    assert_int_equal(gguf_get_arr(g, "a.empty", GGUF_I32, &kv, &n, why, sizeof why), 0);
    assert_int_equal(n, 0);
    assert_int_equal(gguf_get_arr(g, "a.str", GGUF_STR, &kv, &n, why, sizeof why), 0);
    assert_int_equal(n, 5);
    for (int i = 0; i < 5; i++)
        assert_true(gguf_str_eq(gguf_arr_str(kv, (uint64_t)i), vocab[i]));
    assert_int_equal(gguf_get_arr(g, "a.strlen", GGUF_STR, &kv, &n, why, sizeof why), 0);
    s = gguf_arr_str(kv, 0);
    assert_int_equal(s.len, 3);
    assert_memory_equal(s.s, "x\0y", 3);
    /* Wrong element type, and not an array at all. */
    assert_int_equal(gguf_get_arr(g, "a.str", GGUF_I32, &kv, &n, why, sizeof why), RILL_E_BAD_FORMAT);
    assert_non_null(strstr(why, "array of string, expected an array of i32"));
    assert_int_equal(gguf_get_arr(g, "k.u8", GGUF_U8, &kv, &n, why, sizeof why), RILL_E_BAD_FORMAT);
    /* Element getters of the wrong kind or index give zero, never garbage. */
    assert_int_equal(gguf_arr_str(kv = gguf_find(g, "a.u8"), 0).len, 0);
    assert_int_equal(gguf_arr_u64(gguf_find(g, "a.u8"), 99), 0);
    assert_true(gguf_arr_f32(gguf_find(g, "a.str"), 0) == 0.0f);

    /* Iteration sees the pairs in file order. */
    assert_true(gguf_str_eq(gguf_kv_at(g, 0)->key, "k.u8"));
    assert_int_equal(gguf_kv_at(g, 0)->type, GGUF_U8);
    assert_null(gguf_kv_at(g, 28));
    gguf_close(g);
}

static void check_tensors(const char *path, uint32_t alignment, const float *x)
{
    char why[256];
    struct gguf *g;
    assert_int_equal(gguf_open(path, &g, why, sizeof why), 0);
    assert_int_equal(gguf_alignment(g), alignment);
    assert_int_equal(gguf_n_tensors(g), 5);
    assert_int_equal(gguf_data_offset(g) % alignment, 0);

    const struct gguf_tensor *t = gguf_find_tensor(g, "t.f32");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], 64);
    assert_int_equal(t->ne[1], 3);
    assert_int_equal(t->ne[2], 1);
    assert_int_equal(t->type, GGUF_T_F32);
    assert_int_equal(t->n_elems, 192);
    assert_int_equal(t->n_bytes, 768);
    assert_memory_equal(t->data, x, 768);

    t = gguf_find_tensor(g, "t.f16");
    assert_int_equal(t->type, GGUF_T_F16);
    assert_int_equal(t->n_dims, 3);
    assert_int_equal(t->ne[2], 2);
    for (int i = 0; i < 64; i++) {
        uint16_t h;
        memcpy(&h, (const uint8_t *)t->data + 2 * i, 2);
        assert_int_equal(h, f32_to_f16(x[i]));
    }

    t = gguf_find_tensor(g, "t.q8_0");
    assert_int_equal(t->type, GGUF_T_Q8_0);
    assert_int_equal(t->n_bytes, 4 * 34);
    uint8_t q[4 * 34];
    gguf_quantize_q8_0(x, q, 128);
    assert_memory_equal(t->data, q, sizeof q);

    t = gguf_find_tensor(g, "t.bf16");
    assert_int_equal(t->type, GGUF_T_BF16);
    uint16_t h;
    memcpy(&h, t->data, 2);
    uint32_t bits;
    memcpy(&bits, &x[0], 4);
    assert_int_equal(h, bits >> 16); /* x[0] = -3 is exact in bf16 */

    t = gguf_find_tensor(g, "t.q4_0");
    assert_int_equal(t->type, GGUF_T_Q4_0);
    assert_string_equal(gguf_ttype_name(t->type), "q4_0");
    assert_int_equal(t->n_bytes, 2 * 18);
    for (int i = 0; i < 36; i++)
        assert_int_equal(((const uint8_t *)t->data)[i], i);

    for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
        t = gguf_tensor_at(g, i);
        assert_int_equal(t->offset % alignment, 0);
        assert_int_equal(((const uint8_t *)t->data - (const uint8_t *)gguf_base(g)) % alignment, 0);
    }
    assert_null(gguf_find_tensor(g, "t.none"));
    assert_null(gguf_find_tensor(g, "t.f3"));
    gguf_close(g);
}

static void write_tensors(const char *path, uint32_t alignment, const float *x)
{
    char why[256];
    struct gguf_writer *w;
    assert_int_equal(gguf_w_open(path, alignment, &w, why, sizeof why), 0);
    gguf_w_kv_str(w, "general.name", "tensors");
    uint64_t ne1[2] = {64, 3}, ne2[3] = {32, 1, 2}, ne3[1] = {128}, ne4[2] = {2, 5}, ne5[1] = {64};
    gguf_w_add_tensor(w, "t.f32", GGUF_T_F32, 2, ne1);
    gguf_w_add_tensor(w, "t.f16", GGUF_T_F16, 3, ne2);
    gguf_w_add_tensor(w, "t.q8_0", GGUF_T_Q8_0, 1, ne3);
    gguf_w_add_tensor(w, "t.bf16", GGUF_T_BF16, 2, ne4);
    gguf_w_add_tensor(w, "t.q4_0", GGUF_T_Q4_0, 1, ne5);
    /* Data in uneven pieces: the writer moves from tensor to tensor. */
    gguf_w_data(w, x, 100);
    gguf_w_data(w, (const uint8_t *)x + 100, 768 - 100);
    gguf_w_data_f32(w, x, 64);
    gguf_w_data_f32(w, x, 128);
    gguf_w_data_f32(w, x, 10);
    uint8_t raw[36];
    for (int i = 0; i < 36; i++)
        raw[i] = (uint8_t)i;
    gguf_w_data(w, raw, 36);
    assert_int_equal(gguf_w_finish(w), 0);
}

static void test_gguf_round_trips_tensors_of_each_type_with_alignment(void **state)
{
    (void)state;
    float x[192];
    for (int i = 0; i < 192; i++)
        x[i] = (float)i * 0.03125f - 3.0f;
    write_tensors(tpath("t32.gguf"), 0, x);
    check_tensors(tpath("t32.gguf"), 32, x);
    write_tensors(tpath("t64.gguf"), 64, x);
    check_tensors(tpath("t64.gguf"), 64, x);
    write_tensors(tpath("t4k.gguf"), 4096, x);
    check_tensors(tpath("t4k.gguf"), 4096, x);
}

static void test_gguf_reads_version_2_and_the_empty_file_of_version_3(void **state)
{
    (void)state;
    struct raw r;
    char why[256];
    r_header(&r, 0, 0);
    assert_int_equal(open_bytes(r.b, r.n, why, sizeof why), 0);
    r.b[4] = 2;
    assert_int_equal(open_bytes(r.b, r.n, why, sizeof why), 0);
}

static void test_gguf_type_tables_know_common_types(void **state)
{
    (void)state;
    assert_string_equal(gguf_ttype_name(GGUF_T_Q4_K), "q4_K");
    assert_int_equal(gguf_ttype_block(GGUF_T_Q4_K), 256);
    assert_int_equal(gguf_ttype_size(GGUF_T_Q4_K), 144);
    assert_int_equal(gguf_ttype_size(GGUF_T_Q6_K), 210);
    assert_int_equal(gguf_ttype_size(GGUF_T_Q8_0), 34);
    assert_int_equal(gguf_ttype_size(GGUF_T_BF16), 2);
    assert_string_equal(gguf_ttype_name(GGUF_T_IQ4_XS), "iq4_xs");
    assert_null(gguf_ttype_name(4));  /* removed from ggml */
    assert_null(gguf_ttype_name(99));
    assert_int_equal(gguf_ttype_from_name("q5_K"), GGUF_T_Q5_K);
    assert_int_equal(gguf_ttype_from_name("nope"), -1);
    assert_int_equal(gguf_ttype_bytes(GGUF_T_Q8_0, 64), 68);
    assert_int_equal(gguf_ttype_bytes(GGUF_T_Q8_0, 33), 0);
    assert_int_equal(gguf_ttype_bytes(GGUF_T_F32, UINT64_MAX / 2), 0); /* overflow */
    assert_string_equal(gguf_vtype_name(GGUF_ARR), "array");
    assert_string_equal(gguf_vtype_name(77), "?");
}

/* ---- the writer's own contract -------------------------------------------- */

static void test_gguf_writer_replaces_the_target_only_on_finish(void **state)
{
    (void)state;
    const char *path = tpath("atomic.gguf");
    char why[256];
    FILE *f = fopen(path, "w");
    fputs("old", f);
    fclose(f);
    struct gguf_writer *w;
    assert_int_equal(gguf_w_open(path, 0, &w, why, sizeof why), 0);
    gguf_w_kv_u32(w, "x", 1);
    uint64_t ne[1] = {4};
    gguf_w_add_tensor(w, "t", GGUF_T_F32, 1, ne);
    float x[4] = {1, 2, 3, 4};
    gguf_w_data_f32(w, x, 4);
    size_t n;
    uint8_t *old = slurp(path, &n);
    assert_int_equal(n, 3); /* still the old file */
    free(old);
    assert_int_equal(gguf_w_finish(w), 0);
    struct gguf *g;
    assert_int_equal(gguf_open(path, &g, why, sizeof why), 0);
    gguf_close(g);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "ls %s | grep -c tmp > /dev/null", tmpdir);
    assert_int_not_equal(system(cmd), 0); /* no temporary left */
}

static void test_gguf_writer_errors_are_sticky_and_leave_no_file(void **state)
{
    (void)state;
    const char *path = tpath("sticky.gguf");
    char why[256] = "";
    struct gguf_writer *w;
    assert_int_equal(gguf_w_open(path, 0, &w, why, sizeof why), 0);
    gguf_w_kv_u32(w, "dup", 1);
    assert_int_equal(gguf_w_kv_u32(w, "dup", 2), RILL_E_BAD_REQUEST);
    assert_non_null(strstr(why, "duplicate metadata key 'dup'"));
    uint64_t ne[1] = {4};
    assert_int_equal(gguf_w_add_tensor(w, "t", GGUF_T_F32, 1, ne), RILL_E_BAD_REQUEST);
    assert_int_equal(gguf_w_finish(w), RILL_E_BAD_REQUEST);
    assert_int_equal(access(path, F_OK), -1);

    /* Missing data is caught at finish. */
    assert_int_equal(gguf_w_open(path, 0, &w, why, sizeof why), 0);
    gguf_w_add_tensor(w, "t", GGUF_T_F32, 1, ne);
    float x[2] = {1, 2};
    gguf_w_data_f32(w, x, 2);
    assert_int_equal(gguf_w_finish(w), RILL_E_BAD_REQUEST);
    assert_non_null(strstr(why, "tensor 't' got 8 of its 16 bytes"));
    assert_int_equal(access(path, F_OK), -1);

    /* Bad declarations. */
    uint64_t bad[2] = {33, 1}, zero[1] = {0};
    assert_int_equal(gguf_w_open(path, 0, &w, why, sizeof why), 0);
    assert_int_equal(gguf_w_add_tensor(w, "q", GGUF_T_Q8_0, 2, bad), RILL_E_BAD_REQUEST);
    gguf_w_abort(w);
    assert_int_equal(gguf_w_open(path, 0, &w, why, sizeof why), 0);
    assert_int_equal(gguf_w_add_tensor(w, "z", GGUF_T_F32, 1, zero), RILL_E_BAD_REQUEST);
    gguf_w_abort(w);
    assert_int_equal(gguf_w_open(path, 0, &w, why, sizeof why), 0);
    assert_int_equal(gguf_w_add_tensor(w, "u", 99, 1, ne), RILL_E_BAD_REQUEST);
    gguf_w_abort(w);
    /* Too much data, and metadata after data started. */
    assert_int_equal(gguf_w_open(path, 0, &w, why, sizeof why), 0);
    gguf_w_add_tensor(w, "t", GGUF_T_F32, 1, ne);
    float y[8] = {0};
    assert_int_equal(gguf_w_data_f32(w, y, 8), RILL_E_BAD_REQUEST);
    gguf_w_abort(w);
    assert_int_equal(gguf_w_open(path, 0, &w, why, sizeof why), 0);
    gguf_w_add_tensor(w, "t", GGUF_T_F32, 1, ne);
    gguf_w_data_f32(w, y, 2);
    assert_int_equal(gguf_w_kv_u32(w, "late", 1), RILL_E_BAD_REQUEST);
    gguf_w_abort(w);
    assert_int_equal(gguf_w_open(path, 3, &w, why, sizeof why), RILL_E_BAD_REQUEST);
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(gguf_w_open("/nonexistent-dir/x.gguf", 0, &w, why, sizeof why), RILL_E_IO);
}

/* ---- broken files ------------------------------------------------------------ */

static void test_gguf_rejects_wrong_magic(void **state)
{
    (void)state;
    const char *path = tpath("magic.gguf");
    write_small(path);
    size_t n;
    uint8_t *b = slurp(path, &n);
    memcpy(b, "\x7f" "ELF", 4);
    expect_error(b, n, RILL_E_BAD_FORMAT, "not a GGUF file (magic 7f 45 4c 46");
    free(b);
}

static void test_gguf_rejects_unsupported_versions(void **state)
{
    (void)state;
    const char *path = tpath("version.gguf");
    write_small(path);
    size_t n;
    uint8_t *b = slurp(path, &n);
    uint32_t v = 4;
    memcpy(b + 4, &v, 4);
    expect_error(b, n, RILL_E_UNSUPPORTED, "unsupported GGUF version 4");
    v = 1;
    memcpy(b + 4, &v, 4);
    expect_error(b, n, RILL_E_UNSUPPORTED, "unsupported GGUF version 1");
    v = 0x03000000;
    memcpy(b + 4, &v, 4);
    expect_error(b, n, RILL_E_UNSUPPORTED, "big-endian");
    free(b);
}

/* Every prefix of a good file fails cleanly, and the message says where:
 * the header, a metadata pair, a tensor info, or a tensor's data. */
static void test_gguf_rejects_truncation_at_every_offset(void **state)
{
    (void)state;
    const char *path = tpath("trunc.gguf");
    write_small(path);
    size_t n;
    uint8_t *b = slurp(path, &n);
    struct gguf *g;
    char why[512];
    assert_int_equal(gguf_open(path, &g, why, sizeof why), 0);
    size_t data_off = (size_t)gguf_data_offset(g), end = 0;
    for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(g, i);
        if (data_off + t->offset + t->n_bytes > end)
            end = data_off + t->offset + t->n_bytes;
    }
    gguf_close(g);
    size_t infos = info_of(b, n, "blk.3.attn_q.weight", 2).name;
    size_t kv_tokens = find_bytes(b, n, "tokenizer.ggml.tokens", 21);
    assert_true(24 < kv_tokens && kv_tokens < infos && infos < data_off && data_off < n);

    /* The padding after the last tensor is not needed. */
    for (size_t len = end; len <= n; len++)
        assert_int_equal(open_bytes(b, len, why, sizeof why), 0);
    for (size_t len = 0; len < end; len++) {
        int rc = open_bytes(b, len, why, sizeof why);
        if (rc != RILL_E_BAD_FORMAT)
            fail_msg("prefix of %zu bytes: %s (%s)", len, rill_err_name(rc), why);
        /* (Short prefixes are refused by the header's counts before any
         * pair is read: "3 tensor infos cannot fit in ...".) */
        const char *want = len < data_off ? "truncated file" : "past the end of the file";
        const char *also = len < 24 ? "offset"
                           : len < infos ? (strstr(why, "cannot fit") ? "cannot fit" : "metadata pair")
                           : len < data_off ? (strstr(why, "data section") ? "data section" : "tensor info")
                                            : "data section";
        if (!strstr(why, want) || !strstr(why, also))
            fail_msg("prefix of %zu bytes: \"%s\" lacks \"%s\" or \"%s\"", len, why, want, also);
    }
    /* A few, named. */
    expect_error(b, 10, RILL_E_BAD_FORMAT, "truncated file: tensor count needs 8 bytes at offset 8, file has 10");
    expect_error(b, kv_tokens + 3, RILL_E_BAD_FORMAT, "truncated file: key of metadata pair 2");
    expect_error(b, kv_tokens + 30, RILL_E_BAD_FORMAT, "('tokenizer.ggml.tokens')");
    struct info_at last = info_of(b, n, "token_embd.weight", 2);
    expect_error(b, infos + 12, RILL_E_BAD_FORMAT, "3 tensor infos cannot fit");
    expect_error(b, last.name + 12, RILL_E_BAD_FORMAT, "name of tensor info 2 is a string of 17 bytes");
    expect_error(b, last.type + 2, RILL_E_BAD_FORMAT,
                 "truncated file: type of tensor info 2 ('token_embd.weight') needs 4 bytes");
    expect_error(b, last.offset + 7, RILL_E_BAD_FORMAT, "data offset of tensor info 2");
    expect_error(b, last.offset + 8, RILL_E_BAD_FORMAT, "the data section would start at");
    expect_error(b, end - 1, RILL_E_BAD_FORMAT, "tensor 'token_embd.weight' data past the end of the file");

    /* The same through a real file. */
    const char *tp = tpath("trunc2.gguf");
    FILE *f = fopen(tp, "wb");
    fwrite(b, 1, data_off + 8, f);
    fclose(f);
    assert_int_equal(gguf_open(tp, &g, why, sizeof why), RILL_E_BAD_FORMAT);
    assert_non_null(strstr(why, "past the end of the file"));
    f = fopen(tp, "wb");
    fclose(f);
    assert_int_equal(gguf_open(tp, &g, why, sizeof why), RILL_E_BAD_FORMAT);
    assert_non_null(strstr(why, "truncated file: magic needs 4 bytes at offset 0, file has 0"));
    assert_int_equal(gguf_open(tpath("absent.gguf"), &g, why, sizeof why), RILL_E_IO);
    assert_int_equal(gguf_open(tmpdir, &g, why, sizeof why), RILL_E_IO);
    free(b);
}

static void test_gguf_rejects_tensor_data_past_the_end(void **state)
{
    (void)state;
    const char *path = tpath("past.gguf");
    write_small(path);
    size_t n;
    uint8_t *b = slurp(path, &n);
    struct info_at a = info_of(b, n, "blk.3.attn_q.weight", 2);
    uint64_t off = 1ull << 20;
    memcpy(b + a.offset, &off, 8);
    expect_error(b, n, RILL_E_BAD_FORMAT, "tensor 'blk.3.attn_q.weight' data past the end of the file");
    /* offset + size must not wrap around */
    off = UINT64_MAX - 31;
    memcpy(b + a.offset, &off, 8);
    expect_error(b, n, RILL_E_BAD_FORMAT, "tensor 'blk.3.attn_q.weight' data past the end of the file");
    /* unaligned */
    off = 4;
    memcpy(b + a.offset, &off, 8);
    expect_error(b, n, RILL_E_BAD_FORMAT, "data offset 4 is not a multiple of the alignment (32)");
    free(b);
}

static void test_gguf_rejects_unknown_tensor_type(void **state)
{
    (void)state;
    const char *path = tpath("type.gguf");
    write_small(path);
    size_t n;
    uint8_t *b = slurp(path, &n);
    struct info_at a = info_of(b, n, "output_norm.weight", 1);
    uint32_t t = 99;
    memcpy(b + a.type, &t, 4);
    expect_error(b, n, RILL_E_BAD_FORMAT, "unknown tensor type 99 for tensor 'output_norm.weight'");
    t = 5; /* a type ggml removed */
    memcpy(b + a.type, &t, 4);
    expect_error(b, n, RILL_E_BAD_FORMAT, "unknown tensor type 5");
    /* a known block type whose row length is not whole blocks (7 elements of q8_0) */
    t = GGUF_T_Q8_0;
    memcpy(b + a.type, &t, 4);
    expect_error(b, n, RILL_E_BAD_FORMAT, "not a multiple of the q8_0 block (32)");
    free(b);
}

static void test_gguf_rejects_bad_dimensions(void **state)
{
    (void)state;
    const char *path = tpath("dims.gguf");
    write_small(path);
    size_t n;
    uint8_t *b = slurp(path, &n);
    struct info_at a = info_of(b, n, "blk.3.attn_q.weight", 2);
    uint64_t ne;
    uint32_t nd;

    ne = 0;
    memcpy(b + a.dims + 8, &ne, 8);
    expect_error(b, n, RILL_E_BAD_FORMAT, "tensor 'blk.3.attn_q.weight' has dimension ne[1] = 0");
    ne = 1ull << 40; /* 32 x 2^40 x f32: the element count fits, the data does not */
    memcpy(b + a.dims + 8, &ne, 8);
    expect_error(b, n, RILL_E_BAD_FORMAT, "past the end of the file");
    ne = 1ull << 62; /* 32 x 2^62 overflows */
    memcpy(b + a.dims + 8, &ne, 8);
    expect_error(b, n, RILL_E_BAD_FORMAT, "overflow");
    ne = 1ull << 57; /* 2^62 elements fit in int64, their 2^64 bytes do not */
    memcpy(b + a.dims + 8, &ne, 8);
    expect_error(b, n, RILL_E_BAD_FORMAT, "too large");
    ne = UINT64_MAX;
    memcpy(b + a.dims + 8, &ne, 8);
    expect_error(b, n, RILL_E_BAD_FORMAT, "ne[1]");
    ne = 3;
    memcpy(b + a.dims + 8, &ne, 8);
    nd = 5;
    memcpy(b + a.n_dims, &nd, 4);
    expect_error(b, n, RILL_E_BAD_FORMAT, "has 5 dimensions (1 to 4 are allowed)");
    nd = 0;
    memcpy(b + a.n_dims, &nd, 4);
    expect_error(b, n, RILL_E_BAD_FORMAT, "has 0 dimensions");
    free(b);
}

static void test_gguf_rejects_bad_alignment_and_duplicates(void **state)
{
    (void)state;
    char why[256];
    struct gguf_writer *w;
    const char *path = tpath("align.gguf");
    assert_int_equal(gguf_w_open(path, 0, &w, why, sizeof why), 0);
    gguf_w_kv_u32(w, "general.alignment", 24);
    assert_int_equal(gguf_w_finish(w), 0);
    size_t n;
    uint8_t *b = slurp(path, &n);
    expect_error(b, n, RILL_E_BAD_FORMAT, "general.alignment = 24 is not a power of two");
    free(b);
    assert_int_equal(gguf_w_open(path, 0, &w, why, sizeof why), 0);
    gguf_w_kv_str(w, "general.alignment", "32");
    assert_int_equal(gguf_w_finish(w), 0);
    b = slurp(path, &n);
    expect_error(b, n, RILL_E_BAD_FORMAT, "'general.alignment' is a string");
    free(b);

    /* Duplicates, made by renaming a key / a tensor to its neighbour's name. */
    assert_int_equal(gguf_w_open(path, 0, &w, why, sizeof why), 0);
    gguf_w_kv_u32(w, "k.aa", 1);
    gguf_w_kv_u32(w, "k.bb", 2);
    uint64_t ne[1] = {8};
    gguf_w_add_tensor(w, "t.aa", GGUF_T_F32, 1, ne);
    gguf_w_add_tensor(w, "t.bb", GGUF_T_F32, 1, ne);
    float x[16] = {0};
    gguf_w_data_f32(w, x, 8);
    gguf_w_data_f32(w, x, 8);
    assert_int_equal(gguf_w_finish(w), 0);
    b = slurp(path, &n);
    expect_error(b, n, 0, ""); /* the original is fine */
    uint8_t *c = malloc(n);
    memcpy(c, b, n);
    memcpy(c + find_bytes(c, n, "k.bb", 4), "k.aa", 4);
    expect_error(c, n, RILL_E_BAD_FORMAT, "duplicate metadata key 'k.aa'");
    memcpy(c, b, n);
    memcpy(c + find_bytes(c, n, "t.bb", 4), "t.aa", 4);
    expect_error(c, n, RILL_E_BAD_FORMAT, "duplicate tensor name 't.aa'");
    free(c);
    free(b);
}

/* ---- hostile files --------------------------------------------------------------- */

/* Run fn in a child whose address space is capped at 256 MB more than now,
 * so that an attempt to allocate for a fake count fails the test instead of
 * passing by luck.  Sanitizers reserve terabytes of address space, so under
 * them the cap is not applied (ASan reports huge allocations itself). */
static void in_capped_child(void (*fn)(void))
{
#ifdef RILL_SANITIZE
    fn();
#else
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct rlimit rl;
        getrlimit(RLIMIT_AS, &rl);
        FILE *f = fopen("/proc/self/statm", "r");
        unsigned long pages = 0;
        if (f) {
            if (fscanf(f, "%lu", &pages) != 1)
                pages = 0;
            fclose(f);
        }
        rl.rlim_cur = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + (256u << 20);
        setrlimit(RLIMIT_AS, &rl);
        fn();
        _exit(0);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("hostile-file child failed (status %d)", st);
#endif
}

/* In the child, cmocka's assertions cannot report: exit with a code instead. */
static void child_expect(const uint8_t *bytes, size_t len, const char *substr)
{
    char why[512];
    uint8_t *copy = malloc(len);
    memcpy(copy, bytes, len);
    struct gguf *g = NULL;
    int rc = gguf_open_mem(copy, len, &g, why, sizeof why);
    free(copy);
    if (rc != RILL_E_BAD_FORMAT || !strstr(why, substr)) {
        fprintf(stderr, "expected bad_format with \"%s\", got %s: \"%s\"\n", substr, rill_err_name(rc), why);
        _exit(1);
    }
}

static void hostile_lengths(void)
{
    struct raw r;
    /* A key of 2^63 bytes. */
    r_header(&r, 0, 1);
    r_u64(&r, 1ull << 63);
    r_zeros(&r, 32);
    child_expect(r.b, r.n, "key of metadata pair 0 is a string of 9223372036854775808 bytes");
    /* A string value of 2^63 bytes, and of 2^64 - 1. */
    r_header(&r, 0, 1);
    r_str(&r, "general.name");
    r_u32(&r, GGUF_STR);
    r_u64(&r, 1ull << 63);
    r_zeros(&r, 16);
    child_expect(r.b, r.n, "value of metadata pair 0 ('general.name') is a string of 9223372036854775808 bytes");
    r.n -= 24;
    r_u64(&r, UINT64_MAX);
    child_expect(r.b, r.n, "string of 18446744073709551615 bytes");
    /* A tensor name of 2^63 bytes. */
    r_header(&r, 1, 0);
    r_u64(&r, 1ull << 63);
    r_zeros(&r, 40);
    child_expect(r.b, r.n, "name of tensor info 0 is a string of 9223372036854775808 bytes");
}

static void hostile_counts(void)
{
    struct raw r;
    static const uint32_t types[] = {GGUF_U32, GGUF_U8, GGUF_STR, GGUF_F64};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        r_header(&r, 0, 1);
        r_str(&r, "tokenizer.ggml.tokens");
        r_u32(&r, GGUF_ARR);
        r_u32(&r, types[i]);
        r_u64(&r, 1ull << 60);
        r_zeros(&r, 64);
        child_expect(r.b, r.n, "has 1152921504606846976");
    }
    /* A string array whose count fits the bytes but whose strings do not. */
    r_header(&r, 0, 1);
    r_str(&r, "a");
    r_u32(&r, GGUF_ARR);
    r_u32(&r, GGUF_STR);
    r_u64(&r, 8);
    r_u64(&r, 1);
    r.b[r.n++] = 'x';
    r_u64(&r, 1ull << 62);
    r_zeros(&r, 50);
    child_expect(r.b, r.n, "element 1 of the string of metadata pair 0 ('a')");
    /* Header counts of 2^60. */
    r_header(&r, 1ull << 60, 0);
    r_zeros(&r, 64);
    child_expect(r.b, r.n, "1152921504606846976 tensor infos cannot fit in the 64 bytes after the metadata at offset 24");
    r_header(&r, 0, 1ull << 60);
    r_zeros(&r, 64);
    child_expect(r.b, r.n, "1152921504606846976 metadata pairs cannot fit");
    r_header(&r, UINT64_MAX, UINT64_MAX);
    child_expect(r.b, r.n, "cannot fit");
    /* Unknown value type, nested array. */
    r_header(&r, 0, 1);
    r_str(&r, "k");
    r_u32(&r, 13);
    r_zeros(&r, 8);
    child_expect(r.b, r.n, "unknown value type 13 for metadata 'k'");
    r_header(&r, 0, 1);
    r_str(&r, "k");
    r_u32(&r, GGUF_ARR);
    r_u32(&r, GGUF_ARR);
    r_u64(&r, 1);
    r_zeros(&r, 16);
    child_expect(r.b, r.n, "nested array");
}

static void test_gguf_string_length_of_2_pow_63_is_refused_without_allocating(void **state)
{
    (void)state;
    in_capped_child(hostile_lengths);
}

static void test_gguf_array_count_of_2_pow_60_is_refused_without_allocating(void **state)
{
    (void)state;
    in_capped_child(hostile_counts);
}

/* Random corruption of a good file: whatever the bytes, the reader returns
 * (0 or an error) and never reads outside them (ASan builds check that). */
static void test_gguf_survives_random_corruption(void **state)
{
    (void)state;
    const char *path = tpath("fuzz.gguf");
    write_small(path);
    size_t n;
    uint8_t *good = slurp(path, &n);
    uint8_t *b = malloc(n);
    uint64_t x = 0x1234567;
    int ok = 0, bad = 0;
    for (int iter = 0; iter < 20000; iter++) {
        memcpy(b, good, n);
        int flips = 1 + iter % 4;
        for (int k = 0; k < flips; k++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            size_t at = (size_t)(x >> 33) % n;
            /* mostly corrupt the structured front of the file */
            if (iter % 2)
                at %= (n < 400 ? n : 400);
            b[at] = (uint8_t)(x >> 20);
        }
        char why[256];
        int rc = open_bytes(b, n, why, sizeof why);
        if (rc == 0)
            ok++;
        else {
            bad++;
            assert_true(rc == RILL_E_BAD_FORMAT || rc == RILL_E_UNSUPPORTED);
            assert_true(why[0] != 0);
        }
    }
    assert_true(bad > 1000);
    free(b);
    free(good);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gguf_round_trips_every_metadata_type),
        cmocka_unit_test(test_gguf_round_trips_tensors_of_each_type_with_alignment),
        cmocka_unit_test(test_gguf_reads_version_2_and_the_empty_file_of_version_3),
        cmocka_unit_test(test_gguf_type_tables_know_common_types),
        cmocka_unit_test(test_gguf_writer_replaces_the_target_only_on_finish),
        cmocka_unit_test(test_gguf_writer_errors_are_sticky_and_leave_no_file),
        cmocka_unit_test(test_gguf_rejects_wrong_magic),
        cmocka_unit_test(test_gguf_rejects_unsupported_versions),
        cmocka_unit_test(test_gguf_rejects_truncation_at_every_offset),
        cmocka_unit_test(test_gguf_rejects_tensor_data_past_the_end),
        cmocka_unit_test(test_gguf_rejects_unknown_tensor_type),
        cmocka_unit_test(test_gguf_rejects_bad_dimensions),
        cmocka_unit_test(test_gguf_rejects_bad_alignment_and_duplicates),
        cmocka_unit_test(test_gguf_string_length_of_2_pow_63_is_refused_without_allocating),
        cmocka_unit_test(test_gguf_array_count_of_2_pow_60_is_refused_without_allocating),
        cmocka_unit_test(test_gguf_survives_random_corruption),
    };
    return cmocka_run_group_tests(tests, setup_dir, remove_dir);
}
