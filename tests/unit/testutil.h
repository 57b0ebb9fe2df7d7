/* testutil.h — what several unit tests share: where the build is, and the
 * made-up corpus the tests' tiny models learn their tokenizer from. */
#ifndef RILL_TESTUTIL_H
#define RILL_TESTUTIL_H

#include <stdio.h>

/* $RILL_TEST_BUILD, or "build". */
const char *tu_build_dir(void);

/* Made-up words from a fixed generator: enough text for a 512-token
 * vocabulary, the same on every run. */
void tu_made_up_words(FILE *f);

/* A corpus file: one English line with a few multi-byte characters, then
 * tu_made_up_words().  0, or -1 when the file cannot be written. */
int tu_write_corpus(const char *path);

#endif
