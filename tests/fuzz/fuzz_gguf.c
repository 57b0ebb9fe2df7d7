/* fuzz_gguf.c — libFuzzer target for the GGUF reader: any bytes must give a
 * parsed file or an error, never a crash, a hang or a huge allocation. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "worker/gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct gguf *g;
    char why[256];
    if (gguf_open_mem(data, size, &g, why, sizeof why) != 0)
        return 0;
    /* Touch everything the reader says is there. */
    volatile uint64_t sink = 0;
    for (uint64_t i = 0; i < gguf_n_kv(g); i++) {
        const struct gguf_kv *kv = gguf_kv_at(g, i);
        sink += kv->key.len;
        if (kv->type == GGUF_ARR && kv->v.arr.type == GGUF_STR)
            for (uint64_t k = 0; k < kv->v.arr.n && k < 64; k++) {
                struct gguf_str s = gguf_arr_str(kv, k);
                if (s.len)
                    sink += (unsigned char)s.s[s.len - 1];
            }
    }
    for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
        const struct gguf_tensor *t = gguf_tensor_at(g, i);
        if (t->n_bytes)
            sink += ((const unsigned char *)t->data)[t->n_bytes - 1];
    }
    (void)sink;
    gguf_close(g);
    return 0;
}
