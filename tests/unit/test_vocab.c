/* test_vocab.c — worker/vocab.c and worker/tokenizer.c on real vocabularies:
 * llama.cpp's vocabulary-only GGUF files and its test-tokenizer-0 strings
 * (../shared/data/vocab, see its README).  Every string of every file must
 * give exactly the ids llama.cpp gives (add_special=false,
 * parse_special=false); the end-of-generation set, BOS/EOS and add_bos must be
 * llama.cpp's; control-token text becomes the control token only when asked.
 *
 * The data lives beside the clone (../shared, as in CI), or where
 * $RILL_SHARED_DIR says.  Without it the tests fail: a tokenizer check that
 * silently skips proves nothing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "err.h"
#include "worker/gguf.h"
#include "worker/tokenizer.h"
#include "worker/vocab.h"

#define N_STRINGS 46 /* test strings per .inp file */

static char vocab_dir[4096];

static void find_vocab_dir(void)
{
    const char *env = getenv("RILL_SHARED_DIR");
    snprintf(vocab_dir, sizeof vocab_dir, "%s/data/vocab", env && *env ? env : "../shared");
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        *len = (size_t)n;
    }
    return buf;
}

static struct tok *load(const char *name)
{
    char path[4200], why[256] = "";
    snprintf(path, sizeof path, "%s/ggml-vocab-%s.gguf", vocab_dir, name);
    struct gguf *g = NULL;
    int rc = gguf_open(path, &g, why, sizeof why);
    if (rc)
        fail_msg("cannot open %s: %s (%s) -- the tokenizer test data must be at ../shared beside the "
                 "clone, or set RILL_SHARED_DIR", path, rill_err_name(rc), why);
    struct tok *t = NULL;
    rc = vocab_load(g, &t, why, sizeof why);
    gguf_close(g);
    if (rc)
        fail_msg("vocab_load(%s): %s (%s)", path, rill_err_name(rc), why);
    return t;
}

/* The ids decode to the text again (SentencePiece: after the space prefix
 * its encoding added), whole and streamed token by token. */
static void check_decode(const struct tok *t, const char *name, const char *s, size_t len, const int32_t *ids,
                         size_t n)
{
    static char whole[8192], streamed[8192];
    size_t nw = tok_decode(t, ids, n, whole, sizeof whole);
    assert_true(nw < sizeof whole);
    struct tok_stream st;
    tok_stream_init(&st);
    size_t ns = 0;
    for (size_t i = 0; i < n; i++)
        ns += tok_stream_push(t, &st, ids[i], streamed + ns, sizeof streamed - ns);
    ns += tok_stream_flush(&st, streamed + ns, sizeof streamed - ns);
    assert_int_equal(ns, nw);
    assert_memory_equal(streamed, whole, nw);
    size_t skip = len && nw == len + 1 && whole[0] == ' ' ? 1 : 0; /* the SPM space prefix */
    if (nw - skip != len || memcmp(whole + skip, s, len) != 0)
        fail_msg("%s: \"%.*s\" decodes to \"%.*s\"", name, (int)len, s, (int)nw, whole);
}

/* Encode every string of `pair`'s .inp with t and compare with its .out;
 * prints each mismatch and returns how many matched. */
static int match_file(struct tok *t, const char *name, const char *pair)
{
    char path[4200];
    size_t inl, outl;
    snprintf(path, sizeof path, "%s/ggml-vocab-%s.gguf.inp", vocab_dir, pair);
    char *inp = slurp(path, &inl);
    snprintf(path, sizeof path, "%s/ggml-vocab-%s.gguf.out", vocab_dir, pair);
    char *outp = slurp(path, &outl);
    if (!inp || !outp)
        fail_msg("cannot read %s (and its .inp) -- the tokenizer test data must be at ../shared", path);
    static const char SEP[] = "\n__ggml_vocab_test__\n";
    int n = 0, ok = 0;
    char *s = inp, *line = outp;
    int32_t *got = malloc(4096 * sizeof *got), want[1024];
    for (char *e; (e = strstr(s, SEP)) != NULL; s = e + strlen(SEP), n++) {
        char *nl = strchr(line, '\n');
        assert_non_null(nl); /* one .out line per string */
        *nl = 0;
        size_t nw = 0;
        for (char *p = line, *q; nw < 1024; p = q) {
            long v = strtol(p, &q, 10);
            if (q == p)
                break;
            want[nw++] = (int32_t)v;
        }
        line = nl + 1;
        size_t ng = 0;
        int rc = tok_encode(t, s, (size_t)(e - s), false, got, 4096, &ng);
        assert_int_equal(rc, 0);
        check_decode(t, name, s, (size_t)(e - s), got, ng);
        if (ng == nw && memcmp(got, want, nw * sizeof *got) == 0) {
            ok++;
            continue;
        }
        printf("  %s: string %d \"%.*s\": got", name, n, (int)(e - s > 40 ? 40 : e - s), s);
        for (size_t i = 0; i < ng && i < 24; i++)
            printf(" %d", got[i]);
        printf("\n  %*s want", (int)strlen(name) + 12, "");
        for (size_t i = 0; i < nw && i < 24; i++)
            printf(" %d", want[i]);
        printf("\n");
    }
    printf("%s: %d of %d strings give llama.cpp's ids\n", name, ok, n);
    assert_int_equal(n, N_STRINGS);
    free(got), free(inp), free(outp);
    return ok;
}

static void check_file(const char *name, const char *pair)
{
    struct tok *t = load(name);
    int ok = match_file(t, name, pair);
    tok_free(t);
    assert_int_equal(ok, N_STRINGS);
}

static void test_vocab_llama_spm_matches_llama_cpp(void **st) { (void)st; check_file("llama-spm", "llama-spm"); }
static void test_vocab_phi3_matches_llama_cpp(void **st) { (void)st; check_file("phi-3", "phi-3"); }
static void test_vocab_llama_bpe_matches_llama_cpp(void **st) { (void)st; check_file("llama-bpe", "llama-bpe"); }
static void test_vocab_qwen2_matches_llama_cpp(void **st) { (void)st; check_file("qwen2", "qwen2"); }
/* Qwen3 shares Qwen2's BPE part: llama.cpp gives the qwen2 ids for it too */
static void test_vocab_qwen3_matches_llama_cpp(void **st) { (void)st; check_file("qwen3", "qwen2"); }
static void test_vocab_gpt2_matches_llama_cpp(void **st) { (void)st; check_file("gpt-2", "gpt-2"); }
static void test_vocab_deepseek_coder_matches_llama_cpp(void **st)
{
    (void)st;
    check_file("deepseek-coder", "deepseek-coder");
}

/* ---- special ids -------------------------------------------------------------- */

/* Every id that ends generation equals `want` (ascending), nothing more. */
static void assert_eog_set(const struct tok *t, const int32_t *want, size_t n)
{
    size_t k = 0;
    for (uint32_t id = 0; id < tok_n_vocab(t); id++) {
        if (!tok_is_eog(t, (int32_t)id))
            continue;
        if (k >= n || want[k] != (int32_t)id)
            fail_msg("id %u ends generation; expected %d next", id, k < n ? want[k] : -1);
        k++;
    }
    assert_int_equal(k, n);
    assert_false(tok_is_eog(t, -1));
    assert_false(tok_is_eog(t, (int32_t)tok_n_vocab(t)));
}

static void test_vocab_llama3_special_ids_are_llama_cpps(void **st)
{
    (void)st;
    struct tok *t = load("llama-bpe");
    assert_int_equal(tok_bos(t), 128000);
    assert_int_equal(tok_eos(t), 128001);
    assert_true(tok_add_bos(t));
    assert_false(tok_add_eos(t));
    const int32_t eog[] = {128001, 128009};
    assert_eog_set(t, eog, 2);
    tok_free(t);
}

static void test_vocab_qwen_special_ids_are_llama_cpps(void **st)
{
    (void)st;
    const char *names[] = {"qwen2", "qwen3"};
    for (int i = 0; i < 2; i++) {
        struct tok *t = load(names[i]);
        assert_int_equal(tok_bos(t), 151643);
        assert_int_equal(tok_eos(t), 151645);
        assert_false(tok_add_bos(t));
        /* <|endoftext|> <|im_end|> <|fim_pad|> <|repo_name|> <|file_sep|> */
        const int32_t eog[] = {151643, 151645, 151662, 151663, 151664};
        assert_eog_set(t, eog, 5);
        tok_free(t);
    }
}

static void test_vocab_spm_adds_bos_by_default(void **st)
{
    (void)st;
    struct tok *t = load("llama-spm");
    assert_int_equal(tok_bos(t), 1);
    assert_int_equal(tok_eos(t), 2);
    assert_true(tok_add_bos(t));
    const int32_t eog[] = {2};
    assert_eog_set(t, eog, 1);
    tok_free(t);
}

/* ---- special-token text ------------------------------------------------------- */

static size_t enc(const struct tok *t, const char *s, unsigned flags, int32_t *ids, size_t cap)
{
    size_t n = 0;
    assert_int_equal(tok_encode_ex(t, s, strlen(s), flags, ids, cap, &n), 0);
    assert_true(n <= cap);
    return n;
}

static bool contains(const int32_t *ids, size_t n, int32_t id)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] == id)
            return true;
    return false;
}

static void test_vocab_control_text_becomes_control_token_only_when_parsed(void **st)
{
    (void)st;
    struct tok *t = load("qwen2");
    int32_t a[64], b[64], c[64];
    const char *chat = "<|im_start|>user\nHi there<|im_end|>\n";
    size_t na = enc(t, chat, TOK_ENC_PARSE_SPECIAL, a, 64);
    /* the pieces between the markers are tokenized on their own */
    size_t nb = enc(t, "user\nHi there", 0, b, 64);
    assert_int_equal(na, nb + 3);
    assert_int_equal(a[0], 151644);
    assert_memory_equal(a + 1, b, nb * sizeof *b);
    assert_int_equal(a[nb + 1], 151645);
    assert_int_equal(a[nb + 2], enc(t, "\n", 0, c, 64) == 1 ? c[0] : -1);
    /* untrusted text: the same characters stay text */
    size_t nc = enc(t, chat, 0, c, 64);
    assert_false(contains(c, nc, 151644));
    assert_false(contains(c, nc, 151645));
    assert_true(nc > na);
    tok_free(t);

    t = load("llama-bpe");
    na = enc(t, "<|begin_of_text|>Hello<|eot_id|>", TOK_ENC_PARSE_SPECIAL, a, 64);
    nb = enc(t, "Hello", 0, b, 64);
    assert_int_equal(na, nb + 2);
    assert_int_equal(a[0], 128000);
    assert_memory_equal(a + 1, b, nb * sizeof *b);
    assert_int_equal(a[na - 1], 128009);
    /* with the vocabulary's BOS as well (add_bos): two BOS, as llama.cpp */
    na = enc(t, "<|begin_of_text|>Hello", TOK_ENC_ADD_SPECIAL | TOK_ENC_PARSE_SPECIAL, a, 64);
    assert_int_equal(na, nb + 2);
    assert_int_equal(a[0], 128000);
    assert_int_equal(a[1], 128000);
    tok_free(t);
}

/* SentencePiece: text after a control token gets the space prefix again, as
 * at the start of the text (llama.cpp's is_prev_special). */
static void test_vocab_spm_control_text_and_space_prefix(void **st)
{
    (void)st;
    struct tok *t = load("llama-spm");
    int32_t a[64], b[64], c[64];
    size_t na = enc(t, "<s>Hello</s>world", TOK_ENC_PARSE_SPECIAL, a, 64);
    size_t nb = enc(t, "Hello", 0, b, 64), nc = enc(t, "world", 0, c, 64);
    assert_int_equal(na, 1 + nb + 1 + nc);
    assert_int_equal(a[0], 1);
    assert_memory_equal(a + 1, b, nb * sizeof *b);
    assert_int_equal(a[1 + nb], 2);
    assert_memory_equal(a + 2 + nb, c, nc * sizeof *c);
    /* not parsed: no BOS or EOS from the text */
    na = enc(t, "<s>Hello</s>world", 0, a, 64);
    assert_false(contains(a, na, 1));
    assert_false(contains(a, na, 2));
    /* ADD_SPECIAL alone: BOS from add_bos, then the text */
    na = enc(t, "Hello", TOK_ENC_ADD_SPECIAL, a, 64);
    assert_int_equal(na, nb + 1);
    assert_int_equal(a[0], 1);
    assert_memory_equal(a + 1, b, nb * sizeof *b);
    tok_free(t);
}

/* Phi-3 (by general.name, as llama.cpp): special tokens eat the whitespace
 * after them; other SentencePiece vocabularies keep it. */
static void test_vocab_phi3_special_tokens_strip_whitespace_after(void **st)
{
    (void)st;
    struct tok *t = load("phi-3");
    int32_t a[64], b[64], c[64];
    size_t na = enc(t, "<|user|>\nHello<|end|>\n<|assistant|>", TOK_ENC_PARSE_SPECIAL, a, 64);
    size_t nb = enc(t, "Hello", 0, b, 64);
    assert_int_equal(na, nb + 3);
    assert_int_equal(a[0], 32010);
    assert_memory_equal(a + 1, b, nb * sizeof *b);
    assert_int_equal(a[nb + 1], 32007);
    assert_int_equal(a[nb + 2], 32001);
    /* "</s>" is user-defined in Phi-3: cut out even from plain text */
    na = enc(t, "a</s>  b", 0, a, 64);
    nb = enc(t, "a", 0, b, 64);
    size_t nc = enc(t, "b", 0, c, 64);
    assert_int_equal(na, nb + 1 + nc);
    assert_memory_equal(a, b, nb * sizeof *b);
    assert_int_equal(a[nb], 2);
    assert_memory_equal(a + nb + 1, c, nc * sizeof *c);
    /* Phi-3's end of generation: <|endoftext|> (EOS) and <|end|> */
    const int32_t eog[] = {32000, 32007};
    assert_eog_set(t, eog, 2);
    tok_free(t);

    t = load("llama-spm");
    na = enc(t, "<s>\nHello", TOK_ENC_PARSE_SPECIAL, a, 64);
    nb = enc(t, "\nHello", 0, b, 64);
    assert_int_equal(na, nb + 1);
    assert_int_equal(a[0], 1);
    assert_memory_equal(a + 1, b, nb * sizeof *b);
    tok_free(t);
}

/* User-defined added tokens (Qwen3's <think>, <tool_call>) are matched even in
 * plain text, as llama.cpp and Hugging Face do. */
static void test_vocab_user_defined_tokens_match_without_parsing(void **st)
{
    (void)st;
    struct tok *t = load("qwen3");
    int32_t a[64], b[64];
    size_t na = enc(t, "<think>\nhm</think>", 0, a, 64);
    size_t nb = enc(t, "\nhm", 0, b, 64);
    assert_int_equal(na, nb + 2);
    assert_int_equal(a[0], 151667);
    assert_memory_equal(a + 1, b, nb * sizeof *b);
    assert_int_equal(a[na - 1], 151668);
    na = enc(t, "<tool_call>", 0, a, 64);
    assert_int_equal(na, 1);
    assert_int_equal(a[0], 151657);
    tok_free(t);
}

int main(void)
{
    find_vocab_dir();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vocab_llama_spm_matches_llama_cpp),
        cmocka_unit_test(test_vocab_phi3_matches_llama_cpp),
        cmocka_unit_test(test_vocab_llama_bpe_matches_llama_cpp),
        cmocka_unit_test(test_vocab_qwen2_matches_llama_cpp),
        cmocka_unit_test(test_vocab_qwen3_matches_llama_cpp),
        cmocka_unit_test(test_vocab_gpt2_matches_llama_cpp),
        cmocka_unit_test(test_vocab_deepseek_coder_matches_llama_cpp),
        cmocka_unit_test(test_vocab_llama3_special_ids_are_llama_cpps),
        cmocka_unit_test(test_vocab_qwen_special_ids_are_llama_cpps),
        cmocka_unit_test(test_vocab_spm_adds_bos_by_default),
        cmocka_unit_test(test_vocab_control_text_becomes_control_token_only_when_parsed),
        cmocka_unit_test(test_vocab_spm_control_text_and_space_prefix),
        cmocka_unit_test(test_vocab_phi3_special_tokens_strip_whitespace_after),
        cmocka_unit_test(test_vocab_user_defined_tokens_match_without_parsing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
