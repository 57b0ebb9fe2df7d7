/* test_tokenizer.c — worker/tokenizer.c: SPM and GPT-2 encoding (merge
 * priority, byte fallback, pre-tokenizers), pieces, decoding and streaming
 * detokenization, vocabulary validation.  Vocabularies are either made by
 * hand (to pin exact ids) or learned by bpe_train() from a small text. */
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

#define SP "\xe2\x96\x81" /* ▁ */
#define FFFD "\xef\xbf\xbd"

static const char TRAIN_TEXT[] =
    "The river runs past the old mill, and the miller counts the sacks of grain.\n"
    "Every morning the baker walks to the mill; every evening he walks home again.\n"
    "  Indented lines keep their spaces, and\ttabs keep their tabs.\n\n"
    "Numbers like 123, 4567 and 89 appear now and then: 2024, 1999, 42.\n"
    "Caf\xc3\xa9 cr\xc3\xa8me br\xc3\xbbl\xc3\xa9" "e, na\xc3\xafve fa\xc3\xa7" "ade, r\xc3\xa9sum\xc3\xa9.\n"
    "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe6\x96\x87\xe7\xab\xa0\xe3\x81\xa7\xe3\x81\x99\xe3\x80\x82"
    " \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xaf\xe9\x9b\xa3\xe3\x81\x97\xe3\x81\x84\xe3\x80\x82\n"
    "Party time \xf0\x9f\x8e\x89 and more party \xf0\x9f\x8e\x89\xf0\x9f\x8e\x89!\n"
    "The miller's daughter sang; the baker's son listened. They'll marry, we've heard.\n"
    "What is the price of grain? The price of grain is what the miller says it is.\n"
    "Rivers run, mills turn, bakers bake, and the town eats the bread of the river.\n";

/* ---- helpers ------------------------------------------------------------------ */

static uint64_t rng_state;
static uint32_t rnd(void)
{
    /* xorshift64*: a fixed seed gives the same sequences everywhere */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 2685821657736338717ull) >> 32);
}


/* An independent UTF-8 validator (RFC 3629 ranges). */
static bool valid_utf8(const char *p, size_t n)
{
    const uint8_t *s = (const uint8_t *)p;
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 1, cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2, cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3, cp = c & 0x07;
        } else {
            return false;
        }
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= n || (s[i + j] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + j] & 0x3F);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += k + 1;
    }
    return true;
}

static struct tok *train_tok(const char *text, size_t len, enum tok_kind kind, uint32_t size,
                             bool space_prefix, const char *pre)
{
    struct bpe_vocab v;
    char why[256];
    int rc = bpe_train(text, len, kind, size, &v, why, sizeof why);
    if (rc)
        fail_msg("bpe_train: %s (%s)", rill_err_name(rc), why);
    uint32_t *lens = malloc(v.n * sizeof *lens);
    uint32_t *mlens = malloc((v.n_merges + 1) * sizeof *mlens);
    struct tok_vocab tv;
    bpe_as_tok_vocab(&v, &tv, lens, mlens);
    tv.add_space_prefix = space_prefix;
    if (pre)
        tv.pre = pre;
    struct tok *t = NULL;
    rc = tok_create(&tv, &t, why, sizeof why);
    if (rc)
        fail_msg("tok_create: %s (%s)", rill_err_name(rc), why);
    free(lens), free(mlens);
    bpe_vocab_free(&v);
    return t;
}

/* A hand-made vocabulary: tokens given as strings (NUL-terminated), all
 * normal unless they look like the specials below. */
struct hand {
    const char *tok[400];
    uint32_t len[400];
    float score[400];
    int32_t type[400];
    const char *merge[64];
    uint32_t mlen[64];
    uint32_t n, nm;
};

static uint32_t hand_add(struct hand *h, const char *s, float score, int32_t type)
{
    h->tok[h->n] = s;
    h->len[h->n] = (uint32_t)strlen(s);
    h->score[h->n] = score;
    h->type[h->n] = type;
    return h->n++;
}

static char byte_names[256][8];

/* <unk> <s> </s> <0x00>..<0xFF>, as bpe_train lays them out. */
static void hand_spm_base(struct hand *h)
{
    memset(h, 0, sizeof *h);
    hand_add(h, "<unk>", 0, TOK_T_UNKNOWN);
    hand_add(h, "<s>", 0, TOK_T_CONTROL);
    hand_add(h, "</s>", 0, TOK_T_CONTROL);
    for (int b = 0; b < 256; b++) {
        snprintf(byte_names[b], sizeof byte_names[b], "<0x%02X>", b);
        hand_add(h, byte_names[b], 0, TOK_T_BYTE);
    }
}

static char gpt2_chars[256][4];

static const char *gpt2_char(int b)
{
    return gpt2_chars[b];
}

static void init_gpt2_chars(void)
{
    uint32_t n = 0;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        uint32_t cp = keep ? (uint32_t)b : 0x100 + n++;
        char *o = gpt2_chars[b];
        if (cp < 0x80) {
            o[0] = (char)cp, o[1] = 0;
        } else {
            o[0] = (char)(0xC0 | (cp >> 6)), o[1] = (char)(0x80 | (cp & 0x3F)), o[2] = 0;
        }
    }
}

static void hand_gpt2_base(struct hand *h)
{
    memset(h, 0, sizeof *h);
    init_gpt2_chars();
    for (int b = 0; b < 256; b++)
        hand_add(h, gpt2_char(b), 0, TOK_T_NORMAL);
}

static struct tok *hand_create(struct hand *h, enum tok_kind kind, const char *pre, int *rc_out,
                               char *why, size_t why_len)
{
    for (uint32_t i = 0; i < h->nm; i++)
        h->mlen[i] = (uint32_t)strlen(h->merge[i]);
    struct tok_vocab v = {
        .kind = kind, .n = h->n, .tokens = h->tok, .token_lens = h->len, .scores = h->score,
        .types = h->type, .n_merges = h->nm, .merges = h->merge, .merge_lens = h->mlen,
        .bos = kind == TOK_SPM ? 1 : -1, .eos = kind == TOK_SPM ? 2 : -1, .unk = kind == TOK_SPM ? 0 : -1,
        .pad = -1, .eot = -1, .add_bos = false, .add_space_prefix = false, .pre = pre,
    };
    struct tok *t = NULL;
    char buf[256];
    int rc = tok_create(&v, &t, why ? why : buf, why ? why_len : sizeof buf);
    if (rc_out)
        *rc_out = rc;
    return t;
}

static size_t encode(const struct tok *t, const char *s, bool bos, int32_t *ids, size_t cap)
{
    size_t n = 0;
    int rc = tok_encode(t, s, strlen(s), bos, ids, cap, &n);
    assert_int_equal(rc, 0);
    return n;
}

static char *decode_all(const struct tok *t, const int32_t *ids, size_t n, size_t *len)
{
    size_t need = tok_decode(t, ids, n, NULL, 0);
    char *out = malloc(need + 1);
    size_t got = tok_decode(t, ids, n, out, need);
    assert_int_equal(got, need);
    out[need] = 0;
    *len = need;
    return out;
}

/* The pieces of an encoding, joined with '|', for readable expectations. */
static void pieces(const struct tok *t, const int32_t *ids, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p;
        size_t l;
        assert_int_equal(tok_piece(t, ids[i], &p, &l), 0);
        if (i)
            out[o++] = '|';
        assert_true(o + l + 2 < cap);
        memcpy(out + o, p, l);
        o += l;
    }
    out[o] = 0;
}

/* ---- round trips ------------------------------------------------------------- */

static const char *const SAMPLES[] = {
    "Hello world",
    "the miller counts the grain",
    "caf\xc3\xa9 na\xc3\xafve",
    "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
    "party \xf0\x9f\x8e\x89\xf0\x9f\x8e\x89 time",
    "\xf0\x9f\x90\x8d snake is not in the training text",
    "  leading, inner   and trailing spaces   ",
    "line one\nline two\n\n\ttabbed\r\nwindows",
    " ",
    "\n",
    "x",
    "<s> and </s> and <0x41> are just text",
};

static void check_round_trip(const struct tok *t, const char *s, const char *prefix)
{
    size_t len = strlen(s), n, dl;
    int32_t *ids = malloc((4 * len + 8) * sizeof *ids);
    assert_int_equal(tok_encode(t, s, len, false, ids, 4 * len + 8, &n), 0);
    char *d = decode_all(t, ids, n, &dl);
    size_t pl = len ? strlen(prefix) : 0;
    assert_int_equal(dl, pl + len);
    assert_memory_equal(d, prefix, pl);
    assert_memory_equal(d + pl, s, len);
    free(d), free(ids);
}

static void test_spm_round_trip_gives_back_the_text_after_the_space_prefix(void **state)
{
    struct tok *t = train_tok(TRAIN_TEXT, sizeof TRAIN_TEXT - 1, TOK_SPM, 600, true, NULL);
    for (size_t i = 0; i < sizeof SAMPLES / sizeof SAMPLES[0]; i++)
        check_round_trip(t, SAMPLES[i], " ");
    check_round_trip(t, "", " "); /* empty stays empty: no prefix either */
    tok_free(t);
}

static void test_spm_round_trip_is_exact_without_space_prefix(void **state)
{
    struct tok *t = train_tok(TRAIN_TEXT, sizeof TRAIN_TEXT - 1, TOK_SPM, 600, false, NULL);
    for (size_t i = 0; i < sizeof SAMPLES / sizeof SAMPLES[0]; i++)
        check_round_trip(t, SAMPLES[i], "");
    check_round_trip(t, "", "");
    tok_free(t);
}

static void test_gpt2_round_trip_is_exact(void **state)
{
    const char *pres[] = {"gpt2", "llama-bpe", "smollm", "default", "qwen2"};
    for (size_t p = 0; p < sizeof pres / sizeof pres[0]; p++) {
        struct tok *t = train_tok(TRAIN_TEXT, sizeof TRAIN_TEXT - 1, TOK_GPT2, 600, false, pres[p]);
        for (size_t i = 0; i < sizeof SAMPLES / sizeof SAMPLES[0]; i++)
            check_round_trip(t, SAMPLES[i], "");
        check_round_trip(t, "", "");
        tok_free(t);
    }
}

static void test_empty_text_encodes_to_nothing_or_just_bos(void **state)
{
    struct tok *t = train_tok(TRAIN_TEXT, sizeof TRAIN_TEXT - 1, TOK_SPM, 600, true, NULL);
    int32_t ids[4];
    size_t n = 99;
    assert_int_equal(tok_encode(t, "", 0, false, ids, 4, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(tok_encode(t, NULL, 0, true, ids, 4, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], tok_bos(t));
    tok_free(t);
}

struct bad_case {
    const char *in;
    const char *out; /* what decoding gives back (no space prefix) */
};

static const struct bad_case BAD_UTF8[] = {
    {"a\xff" "b", "a" FFFD "b"},
    {"\xe6\x97", FFFD},                       /* 日 cut short at the end */
    {"\xe6\x97" "x", FFFD "x"},               /* ... and in the middle */
    {"\xed\xa0\x80", FFFD FFFD FFFD},         /* a surrogate: ED is its own subpart */
    {"\xc0\xaf", FFFD FFFD},                  /* overlong */
    {"\xf0\x9f\x8e", FFFD},                   /* 🎉 without its last byte */
    {"\xf0\x9f\x8e\xf0\x9f\x8e\x89", FFFD "\xf0\x9f\x8e\x89"},
    {"\x80\x80 ok", FFFD FFFD " ok"},
    {"\xf4\x90\x80\x80", FFFD FFFD FFFD FFFD}, /* above U+10FFFF */
    {"\xfe\xfe\xff\xff", FFFD FFFD FFFD FFFD},
};

static void check_bad(const struct tok *t)
{
    for (size_t i = 0; i < sizeof BAD_UTF8 / sizeof BAD_UTF8[0]; i++) {
        const char *in = BAD_UTF8[i].in;
        int32_t ids[64];
        size_t n, dl;
        assert_int_equal(tok_encode(t, in, strlen(in), false, ids, 64, &n), 0);
        char *d = decode_all(t, ids, n, &dl);
        assert_string_equal(d, BAD_UTF8[i].out);
        assert_true(valid_utf8(d, dl));
        free(d);
    }
}

static void test_invalid_utf8_is_encoded_and_decodes_to_replacement_chars(void **state)
{
    struct tok *t = train_tok(TRAIN_TEXT, sizeof TRAIN_TEXT - 1, TOK_SPM, 600, false, NULL);
    check_bad(t);
    tok_free(t);
    t = train_tok(TRAIN_TEXT, sizeof TRAIN_TEXT - 1, TOK_GPT2, 600, false, NULL);
    check_bad(t);
    tok_free(t);
    t = train_tok(TRAIN_TEXT, sizeof TRAIN_TEXT - 1, TOK_GPT2, 600, false, "llama-bpe");
    check_bad(t);
    tok_free(t);
}

/* ---- SPM segmentation on a hand-made vocabulary --------------------------------- */

static void test_spm_merges_the_best_scored_pair_first(void **state)
{
    struct hand h;
    int32_t ids[16];
    char got[128];
    /* "ab" outranks "bc": abc -> ab|c */
    hand_spm_base(&h);
    uint32_t a = hand_add(&h, "a", -100, 1), b = hand_add(&h, "b", -100, 1);
    uint32_t c = hand_add(&h, "c", -100, 1);
    uint32_t ab = hand_add(&h, "ab", -1, 1), bc = hand_add(&h, "bc", -5, 1);
    struct tok *t = hand_create(&h, TOK_SPM, NULL, NULL, NULL, 0);
    assert_non_null(t);
    assert_int_equal(encode(t, "abc", false, ids, 16), 2);
    assert_int_equal(ids[0], ab);
    assert_int_equal(ids[1], c);
    tok_free(t);

    /* the same tokens with the scores swapped: abc -> a|bc */
    h.score[ab] = -5, h.score[bc] = -1;
    t = hand_create(&h, TOK_SPM, NULL, NULL, NULL, 0);
    assert_int_equal(encode(t, "abc", false, ids, 16), 2);
    assert_int_equal(ids[0], a);
    assert_int_equal(ids[1], bc);
    tok_free(t);

    /* equal scores: the leftmost pair wins */
    h.score[ab] = -3, h.score[bc] = -3;
    t = hand_create(&h, TOK_SPM, NULL, NULL, NULL, 0);
    assert_int_equal(encode(t, "abc", false, ids, 16), 2);
    assert_int_equal(ids[0], ab);
    tok_free(t);

    /* a merge feeds the next: "abc" is reached through "bc" even though
     * "ab" scores better than "bc" alone would need */
    h.score[ab] = -5, h.score[bc] = -1;
    uint32_t abc = hand_add(&h, "abc", -2, 1);
    t = hand_create(&h, TOK_SPM, NULL, NULL, NULL, 0);
    assert_int_equal(encode(t, "abcab", false, ids, 16), 2);
    assert_int_equal(ids[0], abc);
    assert_int_equal(ids[1], ab);
    pieces(t, ids, 2, got, sizeof got);
    assert_string_equal(got, "abc|ab");
    tok_free(t);
    (void)b;
}

static void test_spm_runs_of_one_letter_pair_up_from_the_left(void **state)
{
    struct hand h;
    int32_t ids[16];
    hand_spm_base(&h);
    uint32_t a = hand_add(&h, "a", -100, 1), aa = hand_add(&h, "aa", -1, 1);
    struct tok *t = hand_create(&h, TOK_SPM, NULL, NULL, NULL, 0);
    assert_int_equal(encode(t, "aaaaa", false, ids, 16), 3);
    assert_int_equal(ids[0], aa);
    assert_int_equal(ids[1], aa);
    assert_int_equal(ids[2], a);
    tok_free(t);
}

static void test_spm_falls_back_to_byte_tokens_for_unknown_characters(void **state)
{
    struct hand h;
    int32_t ids[16];
    hand_spm_base(&h);
    uint32_t a = hand_add(&h, "a", -100, 1);
    hand_add(&h, SP, -100, 1);
    struct tok *t = hand_create(&h, TOK_SPM, NULL, NULL, NULL, 0);
    /* é = C3 A9 is not in the vocabulary; byte k is id 3+k */
    assert_int_equal(encode(t, "a\xc3\xa9", false, ids, 16), 3);
    assert_int_equal(ids[0], a);
    assert_int_equal(ids[1], 3 + 0xC3);
    assert_int_equal(ids[2], 3 + 0xA9);
    size_t dl;
    char *d = decode_all(t, ids, 3, &dl);
    assert_string_equal(d, "a\xc3\xa9");
    free(d);
    tok_free(t);
}

static void test_spm_space_becomes_the_meta_symbol_and_a_prefix(void **state)
{
    struct hand h;
    int32_t ids[16];
    hand_spm_base(&h);
    uint32_t sp = hand_add(&h, SP, -100, 1), a = hand_add(&h, "a", -100, 1);
    uint32_t spa = hand_add(&h, SP "a", -1, 1);
    struct tok_vocab v = {
        .kind = TOK_SPM, .n = h.n, .tokens = h.tok, .token_lens = h.len, .scores = h.score,
        .types = h.type, .bos = 1, .eos = 2, .unk = 0, .pad = -1, .eot = -1,
        .add_bos = true, .add_space_prefix = true,
    };
    struct tok *t;
    assert_int_equal(tok_create(&v, &t, NULL, 0), 0);
    /* "a a" -> ▁a▁a */
    assert_int_equal(encode(t, "a a", false, ids, 16), 2);
    assert_int_equal(ids[0], spa);
    assert_int_equal(ids[1], spa);
    /* "a  a" -> ▁a ▁ ▁a */
    assert_int_equal(encode(t, "a  a", true, ids, 16), 4);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], spa);
    assert_int_equal(ids[2], sp);
    assert_int_equal(ids[3], spa);
    assert_true(tok_add_bos(t));
    tok_free(t);
    (void)a;
}

static void test_bos_is_prepended_only_when_asked(void **state)
{
    struct tok *t = train_tok(TRAIN_TEXT, sizeof TRAIN_TEXT - 1, TOK_SPM, 600, true, NULL);
    int32_t a[64], b[64];
    size_t na = encode(t, "the miller", false, a, 64);
    size_t nb = encode(t, "the miller", true, b, 64);
    assert_int_equal(nb, na + 1);
    assert_int_equal(b[0], tok_bos(t));
    assert_memory_equal(b + 1, a, na * sizeof a[0]);
    tok_free(t);
}

static void test_control_token_text_is_never_recognized(void **state)
{
    /* "<s>" and "<0x41>" are vocabulary strings, but typed text must not
     * produce their ids */
    struct hand h;
    hand_spm_base(&h);
    const char *chars[] = {"<", "s", ">", "/", "0", "x", "4", "1"};
    for (size_t i = 0; i < 8; i++)
        hand_add(&h, chars[i], -100, 1);
    hand_add(&h, "<s", -1, 1);
    hand_add(&h, "<0", -1, 1);
    hand_add(&h, "<0x", -1, 1);
    hand_add(&h, "<0x4", -1, 1);
    hand_add(&h, "1>", -1, 1);
    struct tok *t = hand_create(&h, TOK_SPM, NULL, NULL, NULL, 0);
    int32_t ids[32];
    size_t n = encode(t, "<s></s><0x41>", true, ids, 32);
    assert_int_equal(ids[0], 1);
    for (size_t i = 1; i < n; i++) {
        assert_int_not_equal(ids[i], 1);
        assert_int_not_equal(ids[i], 2);
        assert_int_not_equal(ids[i], 3 + 0x41);
    }
    size_t dl;
    char *d = decode_all(t, ids + 1, n - 1, &dl);
    assert_string_equal(d, "<s></s><0x41>");
    free(d);
    tok_free(t);
}

/* ---- SPM against a naive reference --------------------------------------------------- */

/* llama.cpp's SPM loop written the obvious quadratic way: merge the adjacent
 * pair whose concatenation is the best-scored (normal) token, leftmost on
 * ties, until none is left; then every symbol is its token or its bytes. */
static size_t naive_spm(const struct bpe_vocab *v, const uint32_t *tlen, const char *text, size_t len,
                        int32_t *out)
{
    char buf[1024];
    size_t bl = 0;
    memcpy(buf, SP, 3), bl = 3;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ')
            memcpy(buf + bl, SP, 3), bl += 3;
        else
            buf[bl++] = text[i];
    }
    size_t start[1024], slen[1024], n = 0;
    for (size_t i = 0; i < bl;) {
        size_t cl = 1;
        uint8_t c = (uint8_t)buf[i];
        size_t want = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        if (want > 1 && i + want <= bl && valid_utf8(buf + i, want))
            cl = want;
        start[n] = i, slen[n] = cl, n++;
        i += cl;
    }
    for (;;) {
        long best = -1;
        float best_score = 0;
        for (size_t i = 0; i + 1 < n; i++) {
            size_t l = slen[i] + slen[i + 1];
            for (uint32_t id = 0; id < v->n; id++) {
                if (tlen[id] != l || v->types[id] != TOK_T_NORMAL ||
                    memcmp(v->tokens[id], buf + start[i], l) != 0)
                    continue;
                if (best < 0 || v->scores[id] > best_score)
                    best = (long)i, best_score = v->scores[id];
                break;
            }
        }
        if (best < 0)
            break;
        slen[best] += slen[best + 1];
        memmove(start + best + 1, start + best + 2, (n - best - 2) * sizeof start[0]);
        memmove(slen + best + 1, slen + best + 2, (n - best - 2) * sizeof slen[0]);
        n--;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t found = -1;
        for (uint32_t id = 0; id < v->n && found < 0; id++)
            if (tlen[id] == slen[i] && v->types[id] == TOK_T_NORMAL &&
                memcmp(v->tokens[id], buf + start[i], slen[i]) == 0)
                found = (int32_t)id;
        if (found >= 0)
            out[k++] = found;
        else
            for (size_t b = 0; b < slen[i]; b++)
                out[k++] = 3 + (uint8_t)buf[start[i] + b];
    }
    return k;
}

static void test_spm_matches_a_naive_reference_on_random_text(void **state)
{
    rng_state = 0x2545F4914F6CDD1Dull;
    struct bpe_vocab v;
    char why[128];
    assert_int_equal(bpe_train(TRAIN_TEXT, sizeof TRAIN_TEXT - 1, TOK_SPM, 620, &v, why, sizeof why), 0);
    uint32_t *lens = malloc(v.n * sizeof *lens);
    struct tok_vocab tv;
    bpe_as_tok_vocab(&v, &tv, lens, NULL);
    struct tok *t;
    assert_int_equal(tok_create(&tv, &t, why, sizeof why), 0);
    static const char *const bits[] = {
        "the", " the", " mill", "er", "baker", " ", "  ", "\n", "\t", ",", ".", "'s", "123",
        "caf\xc3\xa9", "\xe6\x97\xa5\xe6\x9c\xac", "\xf0\x9f\x8e\x89", "\xff", "\xe6\x97", "\x80",
        "river", "s", "a", "aa", "rr", "walks home", "The price of grain",
    };
    for (int round = 0; round < 150; round++) {
        char text[200];
        size_t len = 0;
        while (len < 120) {
            const char *b = bits[rnd() % (sizeof bits / sizeof bits[0])];
            size_t bl = strlen(b);
            memcpy(text + len, b, bl);
            len += bl;
        }
        int32_t want[1024], got[1024];
        size_t nw = naive_spm(&v, lens, text, len, want), ng;
        assert_int_equal(tok_encode(t, text, len, false, got, 1024, &ng), 0);
        if (ng != nw || memcmp(got, want, nw * sizeof want[0]) != 0)
            fail_msg("round %d: %zu ids, the reference gives %zu", round, ng, nw);
    }
    tok_free(t);
    free(lens);
    bpe_vocab_free(&v);
}

/* ---- GPT-2 ------------------------------------------------------------------------ */

/* Merges that build each target left to right, best ranked first. */
static void hand_gpt2_targets(struct hand *h, const char *const *targets, size_t nt)
{
    static char store[64][64], mstore[64][140];
    size_t ns = 0;
    for (size_t k = 0; k < nt; k++) {
        const uint8_t *s = (const uint8_t *)targets[k];
        char cur[64] = "";
        strcpy(cur, gpt2_char(s[0]));
        for (size_t i = 1; s[i]; i++) {
            const char *nx = gpt2_char(s[i]);
            char joined[64];
            snprintf(joined, sizeof joined, "%s%s", cur, nx);
            bool have = false;
            for (uint32_t j = 0; j < h->n; j++)
                if (strcmp(h->tok[j], joined) == 0)
                    have = true;
            if (!have) {
                snprintf(mstore[h->nm], sizeof mstore[0], "%s %s", cur, nx);
                h->merge[h->nm] = mstore[h->nm];
                h->nm++;
                strcpy(store[ns], joined);
                hand_add(h, store[ns++], 0, TOK_T_NORMAL);
            }
            strcpy(cur, joined);
        }
    }
}

static void split_as(const char *pre, const char *text, const char *want)
{
    static const char *const targets[] = {
        "Hello", " world", "'s", " 123456", "123", "456", " 12", "12", "34", "56",
        "'S", " \n\n", " \n", "\n\n", "world",
    };
    struct hand h;
    hand_gpt2_base(&h);
    hand_gpt2_targets(&h, targets, sizeof targets / sizeof targets[0]);
    char why[128];
    int rc;
    struct tok *t = hand_create(&h, TOK_GPT2, pre, &rc, why, sizeof why);
    if (!t)
        fail_msg("tok_create(%s): %s %s", pre, rill_err_name(rc), why);
    int32_t ids[64];
    char got[256];
    size_t n = encode(t, text, false, ids, 64);
    pieces(t, ids, n, got, sizeof got);
    if (strcmp(got, want) != 0)
        fail_msg("pre %s: \"%s\" split as [%s], want [%s]", pre, text, got, want);
    tok_free(t);
}

static void test_gpt2_pre_tokenizer_splits_words_contractions_and_numbers(void **state)
{
    split_as("gpt2", "Hello world's 123456", "Hello| world|'s| 123456");
    split_as("gpt2", "Hello world'S", "Hello| world|'|S");
    split_as("gpt2", "Hello  world", "Hello| | world");
    /* whitespace before a word stays one short of it */
    split_as("gpt2", "Hello \n\nworld", "Hello| \n|\n|world");
    split_as(NULL, "Hello world's 123456", "Hello| world|'s| 123456");
    /* Llama 3: case-insensitive contractions, numbers in threes without
     * their space, newlines kept together */
    split_as("llama-bpe", "Hello world's 123456", "Hello| world|'s| |123|456");
    split_as("llama-bpe", "Hello world'S", "Hello| world|'S");
    split_as("llama-bpe", "Hello \n\nworld", "Hello| \n\n|world");
    /* SmolLM: every digit alone */
    split_as("smollm", "Hello world's 123456", "Hello| world|'s| |1|2|3|4|5|6");
}

static void test_gpt2_merges_apply_by_rank_not_by_position(void **state)
{
    struct hand h;
    int32_t ids[16];
    hand_gpt2_base(&h);
    uint32_t bc = hand_add(&h, "bc", 0, 1), ab = hand_add(&h, "ab", 0, 1);
    h.merge[h.nm++] = "b c";
    h.merge[h.nm++] = "a b";
    struct tok *t = hand_create(&h, TOK_GPT2, "gpt2", NULL, NULL, 0);
    assert_int_equal(encode(t, "abc", false, ids, 16), 2);
    assert_int_equal(ids[0], 'a');
    assert_int_equal(ids[1], bc);
    tok_free(t);
    h.merge[0] = "a b", h.merge[1] = "b c";
    t = hand_create(&h, TOK_GPT2, "gpt2", NULL, NULL, 0);
    assert_int_equal(encode(t, "abc", false, ids, 16), 2);
    assert_int_equal(ids[0], ab);
    assert_int_equal(ids[1], 'c');
    tok_free(t);
}

static void test_llama3_takes_a_pre_token_that_is_a_whole_token_as_is(void **state)
{
    /* "abc" is a token no merge reaches: Llama 3 (ignore_merges) still
     * uses it, GPT-2 proper does not */
    struct hand h;
    int32_t ids[16];
    hand_gpt2_base(&h);
    uint32_t ab = hand_add(&h, "ab", 0, 1), abc = hand_add(&h, "abc", 0, 1);
    h.merge[h.nm++] = "a b";
    struct tok *t = hand_create(&h, TOK_GPT2, "llama-bpe", NULL, NULL, 0);
    assert_int_equal(encode(t, "abc", false, ids, 16), 1);
    assert_int_equal(ids[0], abc);
    tok_free(t);
    t = hand_create(&h, TOK_GPT2, "gpt2", NULL, NULL, 0);
    assert_int_equal(encode(t, "abc", false, ids, 16), 2);
    assert_int_equal(ids[0], ab);
    assert_int_equal(ids[1], 'c');
    tok_free(t);
    t = hand_create(&h, TOK_GPT2, "dbrx", NULL, NULL, 0); /* Llama 3's regex, not its rule */
    assert_int_equal(encode(t, "abc", false, ids, 16), 2);
    tok_free(t);
}

static void test_gpt2_pieces_map_the_byte_alphabet_back_to_bytes(void **state)
{
    struct hand h;
    hand_gpt2_base(&h);
    static const char *const targets[] = {" the", "\n\n"};
    hand_gpt2_targets(&h, targets, 2);
    uint32_t eot = hand_add(&h, "<|eot|>", 0, TOK_T_CONTROL);
    struct tok *t = hand_create(&h, TOK_GPT2, NULL, NULL, NULL, 0);
    int32_t ids[8];
    assert_int_equal(encode(t, " the", false, ids, 8), 1);
    const char *p;
    size_t l;
    assert_int_equal(tok_piece(t, ids[0], &p, &l), 0);
    assert_int_equal(l, 4);
    assert_memory_equal(p, " the", 4);
    assert_int_equal(tok_piece(t, 0x0A, &p, &l), 0);
    assert_int_equal(l, 1);
    assert_int_equal(p[0], '\n');
    assert_int_equal(tok_piece(t, 0xFF, &p, &l), 0);
    assert_int_equal(l, 1);
    assert_int_equal((uint8_t)p[0], 0xFF);
    assert_int_equal(tok_piece(t, (int32_t)eot, &p, &l), 0);
    assert_int_equal(l, 0);
    tok_free(t);
}

/* ---- pieces -------------------------------------------------------------------------- */

static void test_spm_pieces_restore_spaces_bytes_and_hide_controls(void **state)
{
    struct hand h;
    hand_spm_base(&h);
    uint32_t the = hand_add(&h, SP "the", -1, 1);
    struct tok *t = hand_create(&h, TOK_SPM, NULL, NULL, NULL, 0);
    const char *p;
    size_t l;
    assert_int_equal(tok_piece(t, (int32_t)the, &p, &l), 0);
    assert_int_equal(l, 4);
    assert_memory_equal(p, " the", 4);
    assert_int_equal(tok_piece(t, 3 + 0x0A, &p, &l), 0);
    assert_int_equal(l, 1);
    assert_int_equal(p[0], '\n');
    assert_int_equal(tok_piece(t, 3 + 0xF0, &p, &l), 0);
    assert_int_equal(l, 1);
    assert_int_equal((uint8_t)p[0], 0xF0);
    assert_int_equal(tok_piece(t, 1, &p, &l), 0);
    assert_int_equal(l, 0);
    assert_int_equal(tok_piece(t, 2, &p, &l), 0);
    assert_int_equal(l, 0);
    assert_int_equal(tok_piece(t, -1, &p, &l), RILL_E_BAD_REQUEST);
    assert_int_equal(tok_piece(t, (int32_t)h.n, &p, &l), RILL_E_BAD_REQUEST);
    assert_true(tok_is_eog(t, 2));
    assert_false(tok_is_eog(t, 1));
    assert_false(tok_is_eog(t, -1));
    assert_int_equal(tok_n_vocab(t), h.n);
    assert_int_equal(tok_bos(t), 1);
    assert_int_equal(tok_eos(t), 2);
    tok_free(t);
}

static void test_eot_ends_generation_too(void **state)
{
    struct hand h;
    hand_spm_base(&h);
    uint32_t eot = hand_add(&h, "<|eot_id|>", 0, TOK_T_CONTROL);
    struct tok_vocab v = {
        .kind = TOK_SPM, .n = h.n, .tokens = h.tok, .token_lens = h.len, .scores = h.score,
        .types = h.type, .bos = 1, .eos = 2, .unk = 0, .pad = -1, .eot = (int32_t)eot,
    };
    struct tok *t;
    assert_int_equal(tok_create(&v, &t, NULL, 0), 0);
    assert_true(tok_is_eog(t, (int32_t)eot));
    assert_true(tok_is_eog(t, 2));
    assert_false(tok_is_eog(t, 0));
    tok_free(t);
}

/* ---- encode capacity -------------------------------------------------------------------- */

static void test_encode_reports_the_full_count_when_ids_do_not_fit(void **state)
{
    struct tok *t = train_tok(TRAIN_TEXT, sizeof TRAIN_TEXT - 1, TOK_SPM, 600, true, NULL);
    int32_t all[256], few[3];
    size_t n_all, n_few;
    const char *s = "Every morning the baker walks to the mill";
    assert_int_equal(tok_encode(t, s, strlen(s), true, all, 256, &n_all), 0);
    assert_true(n_all > 3);
    assert_int_equal(tok_encode(t, s, strlen(s), true, few, 3, &n_few), RILL_E_TOO_LARGE);
    assert_int_equal(n_few, n_all);
    assert_memory_equal(few, all, sizeof few);
    assert_int_equal(tok_encode(t, s, strlen(s), true, NULL, 0, &n_few), RILL_E_TOO_LARGE);
    assert_int_equal(n_few, n_all);
    tok_free(t);
}

/* ---- streaming ----------------------------------------------------------------------- */

static void stream_matches_decode(const struct tok *t, const int32_t *ids, size_t n)
{
    size_t cap = n * 64 + 16;
    char *joined = malloc(cap);
    size_t jl = 0;
    struct tok_stream s;
    tok_stream_init(&s);
    for (size_t i = 0; i < n; i++) {
        char out[TOK_STREAM_MAX_TEXT];
        size_t k = tok_stream_push(t, &s, ids[i], out, sizeof out);
        assert_true(k <= sizeof out);
        if (!valid_utf8(out, k))
            fail_msg("push %zu of id %d gave invalid UTF-8", i, ids[i]);
        assert_true(jl + k <= cap);
        memcpy(joined + jl, out, k);
        jl += k;
    }
    char out[TOK_STREAM_MAX_TEXT];
    size_t k = tok_stream_flush(&s, out, sizeof out);
    assert_true(valid_utf8(out, k));
    memcpy(joined + jl, out, k);
    jl += k;
    assert_int_equal(s.n_held, 0);
    size_t dl;
    char *d = decode_all(t, ids, n, &dl);
    assert_true(valid_utf8(d, dl));
    if (dl != jl || memcmp(d, joined, dl) != 0)
        fail_msg("stream (%zu bytes) differs from decode (%zu bytes)", jl, dl);
    free(d), free(joined);
}

static void random_streams(const struct tok *t, int32_t byte_first, int n_seq)
{
    uint32_t nv = tok_n_vocab(t);
    int32_t ids[80];
    for (int s = 0; s < n_seq; s++) {
        size_t n = rnd() % 80;
        for (size_t i = 0; i < n; i++) {
            uint32_t r = rnd() % 100;
            if (r < 40) /* a byte token: splits characters, or is invalid */
                ids[i] = byte_first + (int32_t)(rnd() % 256);
            else if (r < 45) /* a UTF-8 lead byte, to start a split character */
                ids[i] = byte_first + 0xC2 + (int32_t)(rnd() % 51);
            else if (r < 55) /* a continuation byte */
                ids[i] = byte_first + 0x80 + (int32_t)(rnd() % 64);
            else if (r < 57) /* out of range: ignored by both */
                ids[i] = (int32_t)nv + (int32_t)(rnd() % 5);
            else
                ids[i] = (int32_t)(rnd() % nv);
        }
        stream_matches_decode(t, ids, n);
    }
}

static void test_stream_concatenation_equals_decode_on_random_sequences(void **state)
{
    rng_state = 0x9E3779B97F4A7C15ull;
    struct tok *t = train_tok(TRAIN_TEXT, sizeof TRAIN_TEXT - 1, TOK_SPM, 600, true, NULL);
    random_streams(t, 3, 3000); /* SPM byte tokens start at id 3 */
    tok_free(t);
    t = train_tok(TRAIN_TEXT, sizeof TRAIN_TEXT - 1, TOK_GPT2, 600, false, NULL);
    random_streams(t, 0, 3000); /* bpe_train puts GPT-2 byte b at id b */
    tok_free(t);
}

static size_t push(const struct tok *t, struct tok_stream *s, int32_t id, char *out)
{
    size_t k = tok_stream_push(t, s, id, out, TOK_STREAM_MAX_TEXT);
    out[k] = 0;
    return k;
}

static void test_stream_holds_a_split_character_until_it_is_complete(void **state)
{
    struct hand h;
    hand_spm_base(&h);
    hand_add(&h, "a", -1, 1);
    struct tok *t = hand_create(&h, TOK_SPM, NULL, NULL, NULL, 0);
    struct tok_stream s;
    char out[TOK_STREAM_MAX_TEXT + 1];
    tok_stream_init(&s);
    /* 🎉 = F0 9F 8E 89, one byte token each */
    assert_int_equal(push(t, &s, 3 + 0xF0, out), 0);
    assert_int_equal(push(t, &s, 3 + 0x9F, out), 0);
    assert_int_equal(push(t, &s, 3 + 0x8E, out), 0);
    assert_int_equal(s.n_held, 3);
    assert_int_equal(push(t, &s, 3 + 0x89, out), 4);
    assert_string_equal(out, "\xf0\x9f\x8e\x89");
    /* a character that can never finish is replaced, the next byte kept */
    assert_int_equal(push(t, &s, 3 + 0xE6, out), 0);
    assert_int_equal(push(t, &s, (int32_t)h.n - 1, out), 4);
    assert_string_equal(out, FFFD "a");
    /* an invalid byte alone */
    assert_int_equal(push(t, &s, 3 + 0xFF, out), 3);
    assert_string_equal(out, FFFD);
    /* control tokens say nothing and keep what is held */
    assert_int_equal(push(t, &s, 3 + 0xC3, out), 0);
    assert_int_equal(push(t, &s, 1, out), 0);
    assert_int_equal(push(t, &s, 3 + 0xA9, out), 2);
    assert_string_equal(out, "\xc3\xa9");
    /* the end of the sequence turns an unfinished character into U+FFFD */
    assert_int_equal(push(t, &s, 3 + 0xE6, out), 0);
    assert_int_equal(push(t, &s, 3 + 0x97, out), 0);
    assert_int_equal(tok_stream_flush(&s, out, sizeof out), 3);
    assert_memory_equal(out, FFFD, 3);
    assert_int_equal(tok_stream_flush(&s, out, sizeof out), 0);
    tok_free(t);
}

static void test_decode_writes_at_most_cap_bytes_and_returns_the_need(void **state)
{
    struct tok *t = train_tok(TRAIN_TEXT, sizeof TRAIN_TEXT - 1, TOK_SPM, 600, false, NULL);
    int32_t ids[64];
    size_t n = encode(t, "the miller counts", false, ids, 64);
    char buf[8];
    memset(buf, 'Z', sizeof buf);
    size_t need = tok_decode(t, ids, n, buf, 5);
    assert_int_equal(need, strlen("the miller counts"));
    assert_int_equal(buf[5], 'Z');
    assert_true(memcmp(buf, "the m", 5) == 0 || memcmp(buf, "the", 3) == 0);
    tok_free(t);
}

/* ---- bad vocabularies ------------------------------------------------------------------- */

static void test_spm_without_all_byte_tokens_is_rejected(void **state)
{
    struct hand h;
    hand_spm_base(&h);
    h.type[3 + 0x41] = TOK_T_NORMAL; /* <0x41> no longer a byte token */
    char why[128] = "";
    int rc;
    struct tok *t = hand_create(&h, TOK_SPM, NULL, &rc, why, sizeof why);
    assert_null(t);
    assert_int_equal(rc, RILL_E_BAD_FORMAT);
    assert_non_null(strstr(why, "0x41"));
}

static void test_special_ids_out_of_range_are_rejected(void **state)
{
    struct hand h;
    hand_spm_base(&h);
    struct tok_vocab v = {
        .kind = TOK_SPM, .n = h.n, .tokens = h.tok, .token_lens = h.len, .scores = h.score,
        .types = h.type, .bos = (int32_t)h.n, .eos = 2, .unk = 0, .pad = -1, .eot = -1,
    };
    struct tok *t = NULL;
    char why[128] = "";
    assert_int_equal(tok_create(&v, &t, why, sizeof why), RILL_E_BAD_FORMAT);
    assert_null(t);
    assert_non_null(strstr(why, "bos"));
    v.bos = 1, v.eos = -7;
    assert_int_equal(tok_create(&v, &t, why, sizeof why), RILL_E_BAD_FORMAT);
    v.eos = 2, v.types = NULL, v.scores = NULL;
    assert_int_equal(tok_create(&v, &t, why, sizeof why), RILL_E_BAD_FORMAT); /* SPM needs scores */
    v.scores = h.score, v.kind = (enum tok_kind)7;
    assert_int_equal(tok_create(&v, &t, why, sizeof why), RILL_E_UNSUPPORTED);
}

static void test_gpt2_merge_with_unknown_parts_is_rejected(void **state)
{
    struct hand h;
    hand_gpt2_base(&h);
    hand_add(&h, "ab", 0, 1);
    h.merge[h.nm++] = "a b";
    h.merge[h.nm++] = "ab zz";
    char why[128] = "";
    int rc;
    struct tok *t = hand_create(&h, TOK_GPT2, NULL, &rc, why, sizeof why);
    assert_null(t);
    assert_int_equal(rc, RILL_E_BAD_FORMAT);
    assert_non_null(strstr(why, "ab zz"));
    h.merge[1] = "nospace";
    t = hand_create(&h, TOK_GPT2, NULL, &rc, why, sizeof why);
    assert_null(t);
    assert_int_equal(rc, RILL_E_BAD_FORMAT);
}

static void test_gpt2_without_a_byte_char_is_rejected(void **state)
{
    struct hand h;
    hand_gpt2_base(&h);
    h.tok[0x20] = "space"; /* Ġ is gone */
    h.len[0x20] = 5;
    char why[128] = "";
    int rc;
    struct tok *t = hand_create(&h, TOK_GPT2, NULL, &rc, why, sizeof why);
    assert_null(t);
    assert_int_equal(rc, RILL_E_BAD_FORMAT);
    assert_non_null(strstr(why, "0x20"));
}

static void test_unknown_pre_tokenizer_is_unsupported_and_named(void **state)
{
    struct hand h;
    hand_gpt2_base(&h);
    char why[128] = "";
    int rc;
    struct tok *t = hand_create(&h, TOK_GPT2, "klingon-bpe", &rc, why, sizeof why);
    assert_null(t);
    assert_int_equal(rc, RILL_E_UNSUPPORTED);
    assert_non_null(strstr(why, "klingon-bpe"));
}

/* ---- long inputs --------------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void long_input(enum tok_kind kind)
{
    /* a vocabulary that knows runs of 'a' ("aa", "aaaa", ...) as well */
    size_t len = 1u << 20, tl = sizeof TRAIN_TEXT - 1;
    char *text = malloc(len);
    memcpy(text, TRAIN_TEXT, tl);
    memset(text + tl, 'a', 3000);
    struct tok *t = train_tok(text, tl + 3000, kind, 620, true, NULL);
    for (size_t i = 0; i < len; i++)
        text[i] = TRAIN_TEXT[i % tl];
    size_t cap = len + 2, n;
    int32_t *ids = malloc(cap * sizeof *ids);
    double t0 = now_s();
    assert_int_equal(tok_encode(t, text, len, false, ids, cap, &n), 0);
    double dt = now_s() - t0;
    print_message("%s: 1 MiB -> %zu tokens in %.3f s\n", kind == TOK_SPM ? "SPM" : "GPT-2", n, dt);
#ifndef RILL_SANITIZE
    assert_true(dt < 1.0);
#endif
    /* one long run of a single letter: the worst case for pair merging,
     * since no place in it is safe to cut at */
    memset(text, 'a', len);
    t0 = now_s();
    assert_int_equal(tok_encode(t, text, len, false, ids, cap, &n), 0);
    dt = now_s() - t0;
    print_message("%s: 1 MiB of 'a' -> %zu tokens in %.3f s\n", kind == TOK_SPM ? "SPM" : "GPT-2", n, dt);
#ifndef RILL_SANITIZE
    /* one million-symbol heap (nothing to cut the run at): n log n, some
     * times slower than text, yet nowhere near quadratic (which would take
     * hours); the bound leaves room for a loaded machine */
    assert_true(dt < 3.0);
#endif
    free(text), free(ids);
    tok_free(t);
}

static void test_one_mebibyte_encodes_in_well_under_a_second(void **state)
{
    long_input(TOK_SPM);
    long_input(TOK_GPT2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spm_round_trip_gives_back_the_text_after_the_space_prefix),
        cmocka_unit_test(test_spm_round_trip_is_exact_without_space_prefix),
        cmocka_unit_test(test_gpt2_round_trip_is_exact),
        cmocka_unit_test(test_empty_text_encodes_to_nothing_or_just_bos),
        cmocka_unit_test(test_invalid_utf8_is_encoded_and_decodes_to_replacement_chars),
        cmocka_unit_test(test_spm_merges_the_best_scored_pair_first),
        cmocka_unit_test(test_spm_runs_of_one_letter_pair_up_from_the_left),
        cmocka_unit_test(test_spm_falls_back_to_byte_tokens_for_unknown_characters),
        cmocka_unit_test(test_spm_space_becomes_the_meta_symbol_and_a_prefix),
        cmocka_unit_test(test_bos_is_prepended_only_when_asked),
        cmocka_unit_test(test_control_token_text_is_never_recognized),
        cmocka_unit_test(test_spm_matches_a_naive_reference_on_random_text),
        cmocka_unit_test(test_gpt2_pre_tokenizer_splits_words_contractions_and_numbers),
        cmocka_unit_test(test_gpt2_merges_apply_by_rank_not_by_position),
        cmocka_unit_test(test_llama3_takes_a_pre_token_that_is_a_whole_token_as_is),
        cmocka_unit_test(test_gpt2_pieces_map_the_byte_alphabet_back_to_bytes),
        cmocka_unit_test(test_spm_pieces_restore_spaces_bytes_and_hide_controls),
        cmocka_unit_test(test_eot_ends_generation_too),
        cmocka_unit_test(test_encode_reports_the_full_count_when_ids_do_not_fit),
        cmocka_unit_test(test_stream_concatenation_equals_decode_on_random_sequences),
        cmocka_unit_test(test_stream_holds_a_split_character_until_it_is_complete),
        cmocka_unit_test(test_decode_writes_at_most_cap_bytes_and_returns_the_need),
        cmocka_unit_test(test_spm_without_all_byte_tokens_is_rejected),
        cmocka_unit_test(test_special_ids_out_of_range_are_rejected),
        cmocka_unit_test(test_gpt2_merge_with_unknown_parts_is_rejected),
        cmocka_unit_test(test_gpt2_without_a_byte_char_is_rejected),
        cmocka_unit_test(test_unknown_pre_tokenizer_is_unsupported_and_named),
        cmocka_unit_test(test_one_mebibyte_encodes_in_well_under_a_second),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
