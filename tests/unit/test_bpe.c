/* test_bpe.c — tools/lib/bpe.c: the vocabularies bpe_train() learns (layout,
 * size, determinism, limits) and what the tokenizer makes of them on the
 * shipped corpus (tools/data/corpus.txt). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "err.h"
#include "tools/lib/bpe.h"
#include "worker/tokenizer.h"

#define SP "\xe2\x96\x81"

static const char SMALL[] =
    "the cat sat on the mat; the cat ate the rat.\n"
    "a rat sat on a hat, and the hat sat on the mat.\n"
    "caf\xc3\xa9 au lait, s'il vous pla\xc3\xaet \xe2\x80\x94 \xe6\x97\xa5\xe6\x9c\xac.\n";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The corpus, found from this source file's path (the Makefile compiles from
 * the tree's root and runs the tests there), or from a directory above the
 * current one when a test is run by hand inside build/. */
static char *load_corpus(size_t *len)
{
    char path[1024];
    const char *self = __FILE__, *tail = "tests/unit/test_bpe.c";
    size_t sl = strlen(self), tl = strlen(tail);
    size_t pl = sl >= tl && strcmp(self + sl - tl, tail) == 0 ? sl - tl : 0;
    const char *ups[] = {"", "../", "../../", "../../../"};
    FILE *f = NULL;
    for (size_t i = 0; i < 4 && !f; i++) {
        if (pl && self[0] == '/' && i > 0)
            break; /* an absolute path needs no climbing */
        snprintf(path, sizeof path, "%s%.*stools/data/corpus.txt", ups[i], (int)pl, self);
        f = fopen(path, "rb");
    }
    if (!f)
        fail_msg("cannot find tools/data/corpus.txt from %s", self);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    buf[n] = 0;
    *len = (size_t)n;
    return buf;
}

static void train(const char *text, size_t len, enum tok_kind kind, uint32_t size,
                  struct bpe_vocab *v)
{
    char why[256];
    int rc = bpe_train(text, len, kind, size, v, why, sizeof why);
    if (rc)
        fail_msg("bpe_train(%u): %s (%s)", size, rill_err_name(rc), why);
}

static struct tok *make_tok(const struct bpe_vocab *v)
{
    uint32_t *lens = malloc(v->n * sizeof *lens);
    uint32_t *mlens = malloc((v->n_merges + 1) * sizeof *mlens);
    struct tok_vocab tv;
    bpe_as_tok_vocab(v, &tv, lens, mlens);
    struct tok *t = NULL;
    char why[256];
    int rc = tok_create(&tv, &t, why, sizeof why);
    if (rc)
        fail_msg("tok_create: %s (%s)", rill_err_name(rc), why);
    free(lens), free(mlens);
    return t;
}

static int find(const struct bpe_vocab *v, const char *s)
{
    for (uint32_t i = 0; i < v->n; i++)
        if (strcmp(v->tokens[i], s) == 0)
            return (int)i;
    return -1;
}

static void assert_same_vocab(const struct bpe_vocab *a, const struct bpe_vocab *b)
{
    assert_int_equal(a->n, b->n);
    assert_int_equal(a->n_merges, b->n_merges);
    assert_int_equal(a->bos, b->bos);
    assert_int_equal(a->eos, b->eos);
    for (uint32_t i = 0; i < a->n; i++) {
        assert_string_equal(a->tokens[i], b->tokens[i]);
        assert_true(a->scores[i] == b->scores[i]);
        assert_int_equal(a->types[i], b->types[i]);
    }
    for (uint32_t i = 0; i < a->n_merges; i++)
        assert_string_equal(a->merges[i], b->merges[i]);
}

static void assert_unique(const struct bpe_vocab *v)
{
    /* a sort of the strings would do; n is small enough for this in tests */
    char **copy = malloc(v->n * sizeof *copy);
    memcpy(copy, v->tokens, v->n * sizeof *copy);
    for (uint32_t i = 1; i < v->n; i++) {
        char *x = copy[i];
        uint32_t j = i;
        while (j > 0 && strcmp(copy[j - 1], x) > 0) {
            copy[j] = copy[j - 1];
            j--;
        }
        copy[j] = x;
    }
    for (uint32_t i = 1; i < v->n; i++)
        if (strcmp(copy[i - 1], copy[i]) == 0)
            fail_msg("token \"%s\" appears twice", copy[i]);
    free(copy);
}

/* ---- layout ------------------------------------------------------------------- */

static void test_spm_vocabulary_layout_is_specials_bytes_chars_then_merges(void **state)
{
    struct bpe_vocab v;
    train(SMALL, sizeof SMALL - 1, TOK_SPM, 340, &v);
    assert_int_equal(v.n, 340);
    assert_int_equal(v.kind, TOK_SPM);
    assert_int_equal(v.unk, 0);
    assert_int_equal(v.bos, 1);
    assert_int_equal(v.eos, 2);
    assert_string_equal(v.tokens[0], "<unk>");
    assert_string_equal(v.tokens[1], "<s>");
    assert_string_equal(v.tokens[2], "</s>");
    assert_int_equal(v.types[0], TOK_T_UNKNOWN);
    assert_int_equal(v.types[1], TOK_T_CONTROL);
    assert_int_equal(v.types[2], TOK_T_CONTROL);
    for (int b = 0; b < 256; b++) {
        char want[8];
        snprintf(want, sizeof want, "<0x%02X>", b);
        assert_string_equal(v.tokens[3 + b], want);
        assert_int_equal(v.types[3 + b], TOK_T_BYTE);
    }
    /* every character of the text is a token, "▁" included */
    const char *chars[] = {"t", "h", SP, ";", "\n", "\xc3\xa9", "\xc3\xae", "\xe2\x80\x94",
                           "\xe6\x97\xa5", "'"};
    for (size_t i = 0; i < sizeof chars / sizeof chars[0]; i++)
        if (find(&v, chars[i]) < 3 + 256)
            fail_msg("character \"%s\" is not in the vocabulary", chars[i]);
    /* learned pieces come after the characters, scored in merge order: the
     * first merge scores 0, every later one less, every character less still */
    uint32_t first_merge = 0;
    for (uint32_t i = 259; i < v.n && !first_merge; i++)
        if (v.scores[i] == 0.0f)
            first_merge = i;
    assert_true(first_merge > 259);
    for (uint32_t i = first_merge + 1; i < v.n; i++)
        assert_true(v.scores[i] < v.scores[i - 1]);
    for (uint32_t i = 259; i < first_merge; i++)
        assert_true(v.scores[i] < v.scores[v.n - 1]); /* characters rank below every merge */
    assert_int_equal(v.n_merges, 0);
    assert_null(v.merges);
    assert_int_not_equal(find(&v, SP "the"), -1);
    assert_unique(&v);
    bpe_vocab_free(&v);
}

static void test_gpt2_vocabulary_layout_is_bytes_merges_then_specials(void **state)
{
    struct bpe_vocab v;
    train(SMALL, sizeof SMALL - 1, TOK_GPT2, 320, &v);
    assert_int_equal(v.n, 320);
    assert_int_equal(v.bos, 318);
    assert_int_equal(v.eos, 319);
    assert_int_equal(v.unk, -1);
    assert_string_equal(v.tokens[318], "<|begin_of_text|>");
    assert_string_equal(v.tokens[319], "<|end_of_text|>");
    assert_int_equal(v.types[318], TOK_T_CONTROL);
    assert_string_equal(v.tokens['a'], "a");
    assert_string_equal(v.tokens[' '], "\xc4\xa0"); /* Ġ */
    assert_string_equal(v.tokens['\n'], "\xc4\x8a"); /* Ċ */
    assert_int_not_equal(find(&v, "\xc4\xa0the"), -1); /* "Ġthe" */
    /* every merge joins two tokens into a token */
    assert_true(v.n_merges >= 320 - 258);
    for (uint32_t m = 0; m < v.n_merges; m++) {
        char a[128], b[128], ab[256];
        const char *sp = strchr(v.merges[m] + 1, ' ');
        assert_non_null(sp);
        snprintf(a, sizeof a, "%.*s", (int)(sp - v.merges[m]), v.merges[m]);
        snprintf(b, sizeof b, "%s", sp + 1);
        snprintf(ab, sizeof ab, "%s%s", a, b);
        if (find(&v, a) < 0 || find(&v, b) < 0 || find(&v, ab) < 0)
            fail_msg("merge %u \"%s\" does not join tokens into a token", m, v.merges[m]);
    }
    assert_unique(&v);
    bpe_vocab_free(&v);
}

/* ---- size, determinism, limits --------------------------------------------------- */

static void test_vocabulary_has_exactly_the_size_asked(void **state)
{
    size_t len;
    char *corpus = load_corpus(&len);
    const uint32_t sizes[] = {512, 1000, 4000};
    for (size_t k = 0; k < 2; k++)
        for (size_t i = 0; i < 3; i++) {
            struct bpe_vocab v;
            train(corpus, len, k ? TOK_GPT2 : TOK_SPM, sizes[i], &v);
            assert_int_equal(v.n, sizes[i]);
            assert_unique(&v);
            struct tok *t = make_tok(&v);
            assert_int_equal(tok_n_vocab(t), sizes[i]);
            tok_free(t);
            bpe_vocab_free(&v);
        }
    free(corpus);
}

static void test_training_twice_gives_the_same_vocabulary(void **state)
{
    size_t len;
    char *corpus = load_corpus(&len);
    for (int k = 0; k < 2; k++) {
        struct bpe_vocab a, b;
        train(corpus, len, k ? TOK_GPT2 : TOK_SPM, 6000, &a);
        train(corpus, len, k ? TOK_GPT2 : TOK_SPM, 6000, &b);
        assert_same_vocab(&a, &b);
        bpe_vocab_free(&a);
        bpe_vocab_free(&b);
    }
    /* and a smaller vocabulary is a prefix of a larger one */
    struct bpe_vocab s, l;
    train(corpus, len, TOK_GPT2, 1000, &s);
    train(corpus, len, TOK_GPT2, 3000, &l);
    for (uint32_t i = 0; i < 998; i++)
        assert_string_equal(s.tokens[i], l.tokens[i]);
    bpe_vocab_free(&s);
    bpe_vocab_free(&l);
    free(corpus);
}

static void test_merges_go_across_words_once_words_are_whole(void **state)
{
    /* four distinct words allow only a few merges inside words; the 12 word
     * occurrences then allow at most 11 more */
    const char text[] = "ab cd ab cd ab cd ef gh ef gh ab cd";
    struct bpe_vocab v;
    char why[128];
    uint32_t base = 3 + 256 + 9; /* a b c d e f g h ▁ */
    train(text, sizeof text - 1, TOK_SPM, base + 12, &v);
    assert_int_not_equal(find(&v, SP "ab" SP "cd"), -1);
    bpe_vocab_free(&v);
    /* but a text cannot give more than it has */
    assert_int_equal(bpe_train(text, sizeof text - 1, TOK_SPM, base + 500, &v, why, sizeof why),
                     RILL_E_BAD_REQUEST);
    assert_non_null(strstr(why, "allows only"));
    assert_null(v.tokens);
}

static void test_size_below_the_base_tokens_is_a_bad_request(void **state)
{
    struct bpe_vocab v;
    char why[128] = "";
    assert_int_equal(bpe_train(SMALL, sizeof SMALL - 1, TOK_SPM, 270, &v, why, sizeof why),
                     RILL_E_BAD_REQUEST);
    assert_non_null(strstr(why, "270"));
    assert_int_equal(bpe_train(SMALL, sizeof SMALL - 1, TOK_GPT2, 257, &v, why, sizeof why),
                     RILL_E_BAD_REQUEST);
    assert_int_equal(bpe_train(SMALL, sizeof SMALL - 1, (enum tok_kind)9, 1000, &v, why, sizeof why),
                     RILL_E_UNSUPPORTED);
    /* the empty text has no characters: only the fixed tokens fit */
    assert_int_equal(bpe_train("", 0, TOK_SPM, 259, &v, why, sizeof why), 0);
    assert_int_equal(v.n, 259);
    bpe_vocab_free(&v);
    assert_int_equal(bpe_train("", 0, TOK_GPT2, 300, &v, why, sizeof why), RILL_E_BAD_REQUEST);
}

static void test_reserved_strings_are_never_learned(void **state)
{
    char text[4096] = "";
    for (int i = 0; i < 60; i++)
        strcat(text, "<s>x</s> <0x41> <unk> <|end_of_text|> ");
    for (int k = 0; k < 2; k++) {
        struct bpe_vocab v;
        train(text, strlen(text), k ? TOK_GPT2 : TOK_SPM, k ? 290 : 300, &v);
        assert_unique(&v);
        if (k == 0) {
            assert_int_equal(find(&v, "<s>"), 1);
            assert_int_equal(find(&v, "</s>"), 2);
            assert_int_equal(find(&v, "<0x41>"), 3 + 0x41);
            assert_int_equal(find(&v, "<unk>"), 0);
        } else {
            assert_int_equal(find(&v, "<|end_of_text|>"), (int)v.eos);
        }
        /* and the text still comes back whole */
        struct tok *t = make_tok(&v);
        int32_t *ids = malloc(sizeof text * sizeof *ids);
        size_t n;
        assert_int_equal(tok_encode(t, text, strlen(text), false, ids, sizeof text, &n), 0);
        char *out = malloc(sizeof text + 8);
        size_t dl = tok_decode(t, ids, n, out, sizeof text + 8);
        size_t skip = k ? 0 : 1; /* the SPM space prefix */
        assert_int_equal(dl, strlen(text) + skip);
        assert_memory_equal(out + skip, text, strlen(text));
        free(ids), free(out);
        tok_free(t);
        bpe_vocab_free(&v);
    }
}

static void test_no_piece_is_longer_than_48_bytes(void **state)
{
    size_t len;
    char *corpus = load_corpus(&len);
    struct bpe_vocab v;
    train(corpus, len, TOK_SPM, 32000, &v);
    size_t longest = 0;
    for (uint32_t i = 0; i < v.n; i++)
        if (strlen(v.tokens[i]) > longest)
            longest = strlen(v.tokens[i]);
    assert_true(longest <= 48);
    bpe_vocab_free(&v);
    free(corpus);
}

/* ---- on the corpus --------------------------------------------------------------------- */

static void corpus_32000(enum tok_kind kind)
{
    const char *name = kind == TOK_SPM ? "SPM" : "GPT-2";
    size_t len;
    char *corpus = load_corpus(&len);
    struct bpe_vocab v;
    double t0 = now_s();
    train(corpus, len, kind, 32000, &v);
    double dt_train = now_s() - t0;
    struct tok *t = make_tok(&v);

    int32_t *ids = malloc((len + 2) * sizeof *ids);
    size_t n;
    t0 = now_s();
    assert_int_equal(tok_encode(t, corpus, len, false, ids, len + 2, &n), 0);
    double dt_enc = now_s() - t0;
    print_message("%s 32000: trained on %zu bytes in %.3f s; encoded in %.3f s to %zu tokens, "
                  "%.2f bytes/token\n", name, len, dt_train, dt_enc, n, (double)len / (double)n);
    assert_true(n * 3 < len); /* far fewer tokens than bytes */
#ifndef RILL_SANITIZE
    assert_true(dt_train < 5.0);
#endif
    char *out = malloc(len + 8);
    size_t dl = tok_decode(t, ids, n, out, len + 8);
    size_t skip = kind == TOK_SPM ? 1 : 0;
    assert_int_equal(dl, len + skip);
    assert_memory_equal(out + skip, corpus, len);

    /* a frequent word of the corpus is one piece */
    const char *word = " Coriolanus";
    assert_int_equal(tok_encode(t, word + (kind == TOK_SPM), strlen(word) - (kind == TOK_SPM), false,
                                ids, 8, &n), 0);
    if (kind == TOK_SPM) {
        assert_int_equal(n, 1);
    } else {
        assert_int_equal(tok_encode(t, word, strlen(word), false, ids, 8, &n), 0);
        assert_int_equal(n, 1);
    }
    const char *p;
    size_t pl;
    assert_int_equal(tok_piece(t, ids[0], &p, &pl), 0);
    assert_int_equal(pl, strlen(word));
    assert_memory_equal(p, word, pl);

    free(out), free(ids), free(corpus);
    tok_free(t);
    bpe_vocab_free(&v);
}

static void test_corpus_32000_trains_fast_and_compresses_spm(void **state)
{
    corpus_32000(TOK_SPM);
}

static void test_corpus_32000_trains_fast_and_compresses_gpt2(void **state)
{
    corpus_32000(TOK_GPT2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spm_vocabulary_layout_is_specials_bytes_chars_then_merges),
        cmocka_unit_test(test_gpt2_vocabulary_layout_is_bytes_merges_then_specials),
        cmocka_unit_test(test_vocabulary_has_exactly_the_size_asked),
        cmocka_unit_test(test_training_twice_gives_the_same_vocabulary),
        cmocka_unit_test(test_merges_go_across_words_once_words_are_whole),
        cmocka_unit_test(test_size_below_the_base_tokens_is_a_bad_request),
        cmocka_unit_test(test_reserved_strings_are_never_learned),
        cmocka_unit_test(test_no_piece_is_longer_than_48_bytes),
        cmocka_unit_test(test_corpus_32000_trains_fast_and_compresses_spm),
        cmocka_unit_test(test_corpus_32000_trains_fast_and_compresses_gpt2),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
