/* fuzz_gguf.c — libFuzzer target for the GGUF reader (worker/gguf.c): any
 * bytes must give a parsed file or an error, never a crash, a hang or a huge
 * allocation.
 *
 * What opens is then held to gguf.h: every string and every tensor's data
 * lies inside the input, offsets are aligned, sizes agree with the types;
 * every key and tensor name is found again by name (the hash sets), and
 * every typed getter agrees with the value's type and range; every array
 * element is read with the accessor its type allows.
 *
 * Seeds: tests/fuzz/seeds-gguf (small hand-made files: every value type,
 * alignment 64, version 2, an empty file) and, made by `make fuzz` and
 * never committed, a few small real models from rill-mkmodel.
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "worker/gguf.h"

#define CHECK(cond, ...)                                                                 \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "fuzz_gguf: %s (line %d): ", #cond, __LINE__);               \
            fprintf(stderr, __VA_ARGS__);                                                \
            fputc('\n', stderr);                                                         \
            abort();                                                                     \
        }                                                                                \
    } while (0)

static const uint8_t *lo, *hi; /* the input */

static void check_str(struct gguf_str s)
{
    CHECK(s.len == 0 || ((const uint8_t *)s.s >= lo && s.len <= (uint64_t)(hi - (const uint8_t *)s.s)),
          "string of %" PRIu64 " bytes outside the input", s.len);
}

static bool is_uint(enum gguf_vtype t) { return t == GGUF_U8 || t == GGUF_U16 || t == GGUF_U32 || t == GGUF_U64; }
static bool is_sint(enum gguf_vtype t) { return t == GGUF_I8 || t == GGUF_I16 || t == GGUF_I32 || t == GGUF_I64; }

/* The typed getters on one pair, against what its type says they give. */
static void check_getters(const struct gguf *g, const struct gguf_kv *kv, const char *key)
{
    char why[256];
    uint32_t u32;
    uint64_t u64;
    int64_t i64;
    float f;
    bool b;
    struct gguf_str s;
    bool neg = is_sint(kv->type) && kv->v.i < 0;
    bool integer = is_uint(kv->type) || is_sint(kv->type);
    uint64_t mag = is_uint(kv->type) ? kv->v.u : neg ? 0 - (uint64_t)kv->v.i : (uint64_t)kv->v.i;

    int rc = gguf_get_u64(g, key, &u64, why, sizeof why);
    CHECK(rc == (integer && !neg ? 0 : RILL_E_BAD_FORMAT), "get_u64 %d on a %s", rc, gguf_vtype_name(kv->type));
    CHECK(rc || u64 == mag, "get_u64 value");
    rc = gguf_get_u32(g, key, &u32, why, sizeof why);
    CHECK(rc == (integer && !neg && mag <= UINT32_MAX ? 0 : RILL_E_BAD_FORMAT), "get_u32 %d", rc);
    CHECK(rc || u32 == mag, "get_u32 value");
    rc = gguf_get_i64(g, key, &i64, why, sizeof why);
    CHECK(rc == (integer && (neg || mag <= INT64_MAX) ? 0 : RILL_E_BAD_FORMAT), "get_i64 %d", rc);
    CHECK(rc || (neg ? (uint64_t)0 - (uint64_t)i64 : (uint64_t)i64) == mag, "get_i64 value");
    rc = gguf_get_f32(g, key, &f, why, sizeof why);
    CHECK(rc == (kv->type == GGUF_F32 || kv->type == GGUF_F64 ? 0 : RILL_E_BAD_FORMAT), "get_f32 %d", rc);
    rc = gguf_get_bool(g, key, &b, why, sizeof why);
    CHECK(rc == (kv->type == GGUF_BOOL ? 0 : RILL_E_BAD_FORMAT), "get_bool %d", rc);
    rc = gguf_get_str(g, key, &s, why, sizeof why);
    CHECK(rc == (kv->type == GGUF_STR ? 0 : RILL_E_BAD_FORMAT), "get_str %d", rc);
    if (!rc) {
        char buf[64];
        rc = gguf_get_str_buf(g, key, buf, sizeof buf, why, sizeof why);
        bool fits = s.len < sizeof buf && !memchr(s.s, 0, s.len);
        CHECK(rc == (fits ? 0 : RILL_E_BAD_FORMAT), "get_str_buf %d", rc);
        CHECK(rc || (strlen(buf) == s.len && !memcmp(buf, s.s, s.len)), "get_str_buf value");
    }
    const struct gguf_kv *akv;
    uint64_t n;
    rc = gguf_get_arr(g, key, GGUF_STR, &akv, &n, why, sizeof why);
    CHECK(rc == (kv->type == GGUF_ARR && kv->v.arr.type == GGUF_STR ? 0 : RILL_E_BAD_FORMAT), "get_arr %d", rc);
    CHECK(rc || (akv == kv && n == kv->v.arr.n), "get_arr result");
}

static void check_array(const struct gguf_kv *kv)
{
    enum gguf_vtype t = kv->v.arr.type;
    CHECK(t < GGUF_VTYPE_COUNT && t != GGUF_ARR, "array of %d", t);
    volatile uint64_t sink = 0;
    for (uint64_t k = 0; k < kv->v.arr.n; k++) {
        if (t == GGUF_STR) {
            struct gguf_str s = gguf_arr_str(kv, k);
            check_str(s);
            if (s.len)
                sink += (unsigned char)s.s[s.len - 1];
        } else if (t == GGUF_F32 || t == GGUF_F64) {
            float f = gguf_arr_f32(kv, k);
            sink += f != f;
        } else {
            sink += gguf_arr_u64(kv, k) + (uint64_t)gguf_arr_i64(kv, k);
        }
    }
    /* Past the end, the accessors give zero values. */
    CHECK(gguf_arr_str(kv, kv->v.arr.n).len == 0 && gguf_arr_u64(kv, kv->v.arr.n) == 0 &&
              gguf_arr_f32(kv, kv->v.arr.n) == 0,
          "element past the end");
    (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct gguf *g;
    char why[256];
    memset(why, 0x55, sizeof why);
    int rc = gguf_open_mem(data, size, &g, why, sizeof why);
    if (rc) {
        CHECK(rc == RILL_E_BAD_FORMAT || rc == RILL_E_UNSUPPORTED || rc == RILL_E_NOMEM, "rc %d", rc);
        CHECK(memchr(why, 0, sizeof why) && why[0], "an error without a reason");
        return 0;
    }
    lo = data;
    hi = data + size;
    CHECK(gguf_version(g) == 2 || gguf_version(g) == 3, "version %u", gguf_version(g));
    uint32_t al = gguf_alignment(g);
    CHECK(al && !(al & (al - 1)), "alignment %u", al);
    CHECK(gguf_file_size(g) == size && gguf_base(g) == data, "size or base");
    CHECK(gguf_data_offset(g) % al == 0, "data offset %" PRIu64, gguf_data_offset(g));

    char key[128];
    for (uint64_t i = 0; i < gguf_n_kv(g); i++) {
        const struct gguf_kv *kv = gguf_kv_at(g, i);
        check_str(kv->key);
        CHECK(kv->type < GGUF_VTYPE_COUNT, "type %d", kv->type);
        if (kv->type == GGUF_STR)
            check_str(kv->v.str);
        if (kv->type == GGUF_ARR)
            check_array(kv);
        /* By name (a key with a NUL cannot be asked for). */
        if (kv->key.len < sizeof key && !memchr(kv->key.s, 0, kv->key.len)) {
            memcpy(key, kv->key.s, kv->key.len);
            key[kv->key.len] = 0;
            CHECK(gguf_find(g, key) == kv, "key %" PRIu64 " not found by name", i);
            check_getters(g, kv, key);
        }
    }
    CHECK(gguf_kv_at(g, gguf_n_kv(g)) == NULL, "pair past the end");

    uint64_t data_size = size - gguf_data_offset(g);
    for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(g, i);
        check_str(t->name);
        CHECK(t->n_dims >= 1 && t->n_dims <= GGUF_MAX_DIMS, "n_dims %u", t->n_dims);
        uint64_t ne = 1;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) {
            CHECK(t->ne[d] >= 1 && (d < (int)t->n_dims || t->ne[d] == 1), "ne[%d]", d);
            ne *= t->ne[d];
        }
        CHECK(ne == t->n_elems, "n_elems");
        CHECK(t->n_bytes && t->n_bytes == gguf_ttype_bytes(t->type, t->n_elems), "n_bytes");
        CHECK(t->offset % al == 0 && t->offset <= data_size && t->n_bytes <= data_size - t->offset,
              "tensor %" PRIu64 " data outside the file", i);
        CHECK((const uint8_t *)t->data == data + gguf_data_offset(g) + t->offset, "data pointer");
        volatile uint8_t last = ((const uint8_t *)t->data)[t->n_bytes - 1];
        (void)last;
        if (t->name.len < sizeof key && !memchr(t->name.s, 0, t->name.len)) {
            memcpy(key, t->name.s, t->name.len);
            key[t->name.len] = 0;
            CHECK(gguf_find_tensor(g, key) == t, "tensor %" PRIu64 " not found by name", i);
        }
    }
    CHECK(gguf_tensor_at(g, gguf_n_tensors(g)) == NULL, "tensor past the end");
    gguf_close(g);
    return 0;
}
