/* testutil.c — see testutil.h. */
#include "testutil.h"

#include <stdint.h>
#include <stdlib.h>

const char *tu_build_dir(void)
{
    const char *b = getenv("RILL_TEST_BUILD");
    return b && *b ? b : "build";
}

void tu_made_up_words(FILE *f)
{
    static const char *const syl[] = {"ka", "lo", "mi", "ren", "tu", "sha", "vex", "or",
                                      "in", "qua", "ble", "dro", "st", "ph", "yl", "ze"};
    uint64_t x = 42;
    for (int i = 0; i < 4000; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        int n = 1 + (int)(x >> 61);
        for (int k = 0; k < n; k++)
            fputs(syl[(x >> (8 + 4 * k)) & 15], f);
        fputc(i % 12 == 11 ? '\n' : ' ', f);
    }
}

int tu_write_corpus(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs("The quick brown fox jumps over the lazy dog. A stream of tokens flows from the worker "
          "to the gateway, one decode step at a time. caf\xc3\xa9 na\xc3\xafve \xe2\x82\xac\n", f);
    tu_made_up_words(f);
    return fclose(f);
}
