/* gguf.h — GGUF files (the llama.cpp model format): a reader over a read-only
 * mmap.  (The writer, which only the model maker and the tests use, is
 * tools/lib/ggufw.h.)
 *
 * Layout (little-endian): "GGUF", u32 version, u64 n_tensors, u64 n_kv; n_kv
 * metadata pairs {string key, u32 value type, value}; n_tensors tensor infos
 * {string name, u32 n_dims, u64 ne[n_dims], u32 tensor type, u64 offset};
 * padding to `general.alignment` (default 32); the data section, where each
 * tensor starts at its offset (a multiple of the alignment).  A string is
 * {u64 len, bytes} without a NUL; an array is {u32 elem type, u64 n, elems}.
 *
 * The reader parses untrusted files: every count and length is checked
 * against the bytes that remain before anything is allocated or read, sizes
 * are computed without overflow, and every tensor's data must lie inside the
 * file at an aligned offset.  Memory it allocates is proportional to what the
 * file really contains (a count of 2^60 in a small file is an error, never an
 * allocation).  A problem is RILL_E_BAD_FORMAT (or RILL_E_UNSUPPORTED for a
 * version rill does not read) with a message in `why`, e.g.
 *   not a GGUF file (magic 7f 45 4c 46, expected "GGUF")
 *   truncated file: key of metadata pair 3 needs 8 bytes at offset 120, file has 123
 *   tensor 'blk.3.attn_q.weight' data past the end of the file (...)
 *   unknown tensor type 99 for tensor 'x'
 * The reader knows the sizes of every ggml tensor type, so a file of types
 * rill cannot compute with still opens; model.c refuses those by name.
 *
 * Strings the reader returns point into the mapping (not NUL-terminated) and
 * live until gguf_close().  A struct gguf is immutable once open and may be
 * read by several threads.
 */
#ifndef RILL_GGUF_H
#define RILL_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GGUF_MAGIC             0x46554747u /* "GGUF" little-endian */
#define GGUF_VERSION           3
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS          4

/* Metadata value types (the numbering is the file's). */
enum gguf_vtype {
    GGUF_U8 = 0, GGUF_I8 = 1, GGUF_U16 = 2, GGUF_I16 = 3, GGUF_U32 = 4,
    GGUF_I32 = 5, GGUF_F32 = 6, GGUF_BOOL = 7, GGUF_STR = 8, GGUF_ARR = 9,
    GGUF_U64 = 10, GGUF_I64 = 11, GGUF_F64 = 12,
    GGUF_VTYPE_COUNT
};

/* Tensor types (ggml's numbering; gaps are types ggml removed). */
enum gguf_ttype {
    GGUF_T_F32 = 0, GGUF_T_F16 = 1, GGUF_T_Q4_0 = 2, GGUF_T_Q4_1 = 3,
    GGUF_T_Q5_0 = 6, GGUF_T_Q5_1 = 7, GGUF_T_Q8_0 = 8, GGUF_T_Q8_1 = 9,
    GGUF_T_Q2_K = 10, GGUF_T_Q3_K = 11, GGUF_T_Q4_K = 12, GGUF_T_Q5_K = 13,
    GGUF_T_Q6_K = 14, GGUF_T_Q8_K = 15, GGUF_T_IQ2_XXS = 16, GGUF_T_IQ2_XS = 17,
    GGUF_T_IQ3_XXS = 18, GGUF_T_IQ1_S = 19, GGUF_T_IQ4_NL = 20, GGUF_T_IQ3_S = 21,
    GGUF_T_IQ2_S = 22, GGUF_T_IQ4_XS = 23, GGUF_T_I8 = 24, GGUF_T_I16 = 25,
    GGUF_T_I32 = 26, GGUF_T_I64 = 27, GGUF_T_F64 = 28, GGUF_T_IQ1_M = 29,
    GGUF_T_BF16 = 30, GGUF_T_TQ1_0 = 34, GGUF_T_TQ2_0 = 35, GGUF_T_MXFP4 = 39
};

/* "u32", "string", "array", …; "?" for a value outside the enum. */
const char *gguf_vtype_name(uint32_t t);
/* Bytes of one value of a fixed-size metadata type (0 for string and array). */
uint32_t gguf_vtype_size(uint32_t t);

/* Name ("q4_K"), elements per block and bytes per block of a tensor type;
 * NULL / 0 for a type id ggml does not define. */
const char *gguf_ttype_name(uint32_t t);
uint32_t gguf_ttype_block(uint32_t t);
uint32_t gguf_ttype_size(uint32_t t);
/* The id of a type name, -1 if unknown. */
int gguf_ttype_from_name(const char *name);
/* Bytes of `n` elements of type t: 0 if t is unknown, n is not a multiple of
 * the block size, or the size does not fit in a uint64_t. */
uint64_t gguf_ttype_bytes(uint32_t t, uint64_t n);

/* A length-prefixed string inside the file. */
struct gguf_str {
    const char *s;
    uint64_t len;
};

/* One metadata pair.  Scalars are widened: integers into u (unsigned types) or
 * i (signed types), f32/f64 into f.  An array's elements stay in the file,
 * read them with the gguf_arr_* functions. */
struct gguf_kv {
    struct gguf_str key;
    enum gguf_vtype type;
    union {
        uint64_t u;
        int64_t i;
        double f;
        bool b;
        struct gguf_str str;
        struct {
            enum gguf_vtype type; /* element type (never GGUF_ARR: nested arrays are refused) */
            uint64_t n;
            const uint8_t *data;  /* n packed elements (not aligned) */
            const uint64_t *str_off; /* GGUF_STR: offset of element i from data (owned by the gguf) */
        } arr;
    } v;
};

struct gguf_tensor {
    struct gguf_str name;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS]; /* ne[0] is the row length; dims past n_dims are 1 */
    uint32_t type;              /* enum gguf_ttype, known to gguf_ttype_name() */
    uint64_t offset;            /* from the start of the data section */
    uint64_t n_elems;
    uint64_t n_bytes;
    const void *data;           /* inside the mapping, n_bytes long */
};

struct gguf;

/* Map and parse the file at `path`.  Returns 0 and *out (free with
 * gguf_close), RILL_E_IO if it cannot be opened or mapped, RILL_E_BAD_FORMAT
 * or RILL_E_UNSUPPORTED (message in `why`, which may be NULL), RILL_E_NOMEM. */
int gguf_open(const char *path, struct gguf **out, char *why, size_t why_len);
/* Parse `len` bytes at `data` (borrowed: they must outlive the gguf).  For
 * tests and fuzzing; same checks and errors as gguf_open. */
int gguf_open_mem(const void *data, size_t len, struct gguf **out, char *why, size_t why_len);
void gguf_close(struct gguf *g);

uint32_t gguf_version(const struct gguf *g);
uint32_t gguf_alignment(const struct gguf *g);
uint64_t gguf_file_size(const struct gguf *g);
/* The whole file and where its data section starts (for touching pages). */
const void *gguf_base(const struct gguf *g);
uint64_t gguf_data_offset(const struct gguf *g);

uint64_t gguf_n_kv(const struct gguf *g);
const struct gguf_kv *gguf_kv_at(const struct gguf *g, uint64_t i);
/* The pair with key `key`, or NULL.  (Keys are unique: a file with a
 * duplicate key or tensor name does not open.) */
const struct gguf_kv *gguf_find(const struct gguf *g, const char *key);

uint64_t gguf_n_tensors(const struct gguf *g);
const struct gguf_tensor *gguf_tensor_at(const struct gguf *g, uint64_t i);
const struct gguf_tensor *gguf_find_tensor(const struct gguf *g, const char *name);

/* Typed getters by key.  Each returns 0 and the value, RILL_E_NOT_FOUND when
 * the key is absent (nothing written to `why`), or RILL_E_BAD_FORMAT with a
 * message naming the key when the value has the wrong type or is out of range.
 * get_u32/get_u64/get_i64 accept every integer type whose value fits; get_f32
 * accepts f32 and f64; get_bool accepts bool only. */
int gguf_get_u32(const struct gguf *g, const char *key, uint32_t *out, char *why, size_t why_len);
int gguf_get_u64(const struct gguf *g, const char *key, uint64_t *out, char *why, size_t why_len);
int gguf_get_i64(const struct gguf *g, const char *key, int64_t *out, char *why, size_t why_len);
int gguf_get_f32(const struct gguf *g, const char *key, float *out, char *why, size_t why_len);
int gguf_get_bool(const struct gguf *g, const char *key, bool *out, char *why, size_t why_len);
int gguf_get_str(const struct gguf *g, const char *key, struct gguf_str *out, char *why, size_t why_len);
/* The string copied into buf[cap] with a NUL; RILL_E_BAD_FORMAT if it does
 * not fit or contains a NUL byte. */
int gguf_get_str_buf(const struct gguf *g, const char *key, char *buf, size_t cap, char *why, size_t why_len);
/* An array: *kv is the pair (read its elements with gguf_arr_*), *n its count.
 * RILL_E_BAD_FORMAT if the value is not an array of `elem_type`. */
int gguf_get_arr(const struct gguf *g, const char *key, enum gguf_vtype elem_type,
                 const struct gguf_kv **kv, uint64_t *n, char *why, size_t why_len);

/* Element i (< n) of an array, converted.  The caller has checked the element
 * type: arr_str needs GGUF_STR, arr_f32 GGUF_F32 or GGUF_F64, arr_i64 and
 * arr_u64 any integer type (or bool) — otherwise they return a zero value. */
struct gguf_str gguf_arr_str(const struct gguf_kv *kv, uint64_t i);
float gguf_arr_f32(const struct gguf_kv *kv, uint64_t i);
int64_t gguf_arr_i64(const struct gguf_kv *kv, uint64_t i);
uint64_t gguf_arr_u64(const struct gguf_kv *kv, uint64_t i);

/* Whether a gguf_str equals the C string s. */
bool gguf_str_eq(struct gguf_str a, const char *s);

#endif
