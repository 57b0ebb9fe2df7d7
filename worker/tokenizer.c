/* tokenizer.c — SentencePiece-style and GPT-2 byte-level BPE, as llama.cpp
 * runs them (llm_tokenizer_spm / llm_tokenizer_bpe), so that a GGUF model
 * sees the same ids here as there.
 *
 * Both encoders share one engine: the text is a doubly-linked list of
 * symbols, each symbol keeps at most one candidate merge with its right
 * neighbour, and an indexed 4-ary min-heap (one entry per symbol, so no stale
 * entries pile up) yields the best candidate.  SPM ranks candidates by the
 * score of the concatenated token (higher first), GPT-2 by merge rank (lower
 * first); both break ties towards the leftmost pair, like llama.cpp.  The
 * work is O(n log n) in the symbols of a piece; SPM text is first cut where no
 * vocabulary token can span (GPT-2 text is cut by its pre-tokenizer), so the
 * heap usually stays small.
 *
 * Before either runs, special tokens are cut out of the text as llama.cpp's
 * tokenizer_st_partition does (user-defined ones always, control ones when the
 * caller parses special text); the pieces between them are encoded apart.
 * tests/unit/test_vocab.c holds this to llama.cpp's own test-tokenizer-0 ids
 * on seven real vocabularies.
 *
 * Where this deliberately differs from llama.cpp:
 *  - SPM: only NORMAL and USER_DEFINED tokens can be formed from text.
 *    llama.cpp looks any string up, so text "<s>" would merge into the BOS
 *    control token and "<0x41>" into a byte token; the header promises that
 *    user text cannot inject control tokens (SentencePiece itself agrees).
 *  - Invalid UTF-8: each invalid byte is its own symbol (llama.cpp trusts the
 *    lead byte's length and may swallow following ASCII), so it always
 *    falls back to its own byte token and valid neighbours stay intact.  The
 *    GPT-2 pre-tokenizer never matches such a byte: it becomes a piece of
 *    its own between the regex's matches.
 */
#include "tokenizer.h"

#include "common/hash.h"
#include "common/utf8.h"
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "err.h"

#define TOK_MAX_RE 5

struct span {
    uint32_t off, len;
};

struct merge_slot {
    uint64_t key;      /* left id << 32 | right id; UINT64_MAX when empty */
    int32_t rank;
    int32_t result;
};

struct tok {
    enum tok_kind kind;
    uint32_t n;
    char *text;          /* every token string, back to back */
    struct span *str;    /* token i's string in text */
    char *pieces;        /* every token's decoded bytes, back to back */
    struct span *piece;
    float *score;
    uint8_t *type;

    /* string -> id for the tokens text may form (normal, user-defined):
     * open addressing, id+1 per slot, 0 empty */
    uint32_t *smap;
    uint32_t smask;
    uint32_t max_len;      /* longest of those, in bytes */

    /* SPM: every pair of adjacent characters found inside such a token
     * (packed code units, see pack_char).  Where two neighbouring characters
     * of a text are not such a pair, no merge can ever cross between them. */
    uint64_t *join;
    uint64_t join_mask;

    int32_t byte_tok[256]; /* SPM: <0xNN>; GPT-2: the byte's unicode char */
    uint16_t byte_cp[256]; /* GPT-2 byte -> code point of its char */

    /* GPT-2 */
    struct merge_slot *mmap;
    uint64_t mmask;
    pcre2_code *re[TOK_MAX_RE];
    int n_re;
    bool ignore_merges;

    /* Tokens whose text is cut out of a prompt before the pre-tokenizer and
     * BPE (llama.cpp's tokenizer_st_partition): CONTROL and UNKNOWN ones when
     * special text is parsed, USER_DEFINED ones always.  Longest text first
     * (ties by id); by_first[b]..by_first[b+1] index, into sp_first, those
     * whose text starts with byte b. */
    int32_t *special;
    uint32_t n_special;
    uint32_t *sp_first;
    uint32_t by_first[257];

    uint8_t *strip; /* per token TOK_LSTRIP | TOK_RSTRIP, or NULL */

    int32_t *eog; /* more end-of-generation ids than eos and eot */
    uint32_t n_eog;

    int32_t bos, eos, unk, pad, eot;
    bool add_bos, add_eos, add_space_prefix;
};

/* ---- small helpers -------------------------------------------------------- */


/* GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves,
 * the other 68 bytes are shifted to U+0100.. in byte order. */
static uint32_t gpt2_byte_cp(uint8_t b)
{
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE))
        return b;
    uint32_t n = 0;
    for (uint32_t x = 0; x < b; x++)
        if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE)))
            n++;
    return 0x100 + n;
}

static size_t put_cp(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    out[0] = (char)(0xE0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
}

/* Whether text may form this token type. */
static bool text_type(uint8_t ty)
{
    return ty == TOK_T_NORMAL || ty == TOK_T_USER;
}

/* ---- lookup tables ---------------------------------------------------------- */

static int32_t str_lookup(const struct tok *t, const char *s, size_t len)
{
    uint32_t i = (uint32_t)hash_bytes(s, len) & t->smask;
    for (;;) {
        uint32_t v = t->smap[i];
        if (v == 0)
            return -1;
        const struct span *sp = &t->str[v - 1];
        if (sp->len == len && memcmp(t->text + sp->off, s, len) == 0)
            return (int32_t)(v - 1);
        i = (i + 1) & t->smask;
    }
}

static void str_insert(struct tok *t, uint32_t id)
{
    const struct span *sp = &t->str[id];
    if (str_lookup(t, t->text + sp->off, sp->len) >= 0)
        return; /* duplicate string: the first id wins */
    uint32_t i = (uint32_t)hash_bytes(t->text + sp->off, sp->len) & t->smask;
    while (t->smap[i])
        i = (i + 1) & t->smask;
    t->smap[i] = id + 1;
}

static const struct merge_slot *merge_lookup(const struct tok *t, int32_t a, int32_t b)
{
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint64_t i = hash_u64(key) & t->mmask;
    for (;;) {
        const struct merge_slot *m = &t->mmap[i];
        if (m->key == key)
            return m;
        if (m->key == UINT64_MAX)
            return NULL;
        i = (i + 1) & t->mmask;
    }
}

/* A character's bytes (1..4) as one number; an invalid byte packs to itself,
 * which no valid 1-byte character (< 0x80) can equal. */
static inline uint64_t pack_char(const char *s, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v << 8 | (uint8_t)s[i];
    return v;
}

static bool join_has(const struct tok *t, uint64_t key)
{
    uint64_t i = hash_u64(key) & t->join_mask;
    for (;;) {
        if (t->join[i] == key)
            return true;
        if (t->join[i] == UINT64_MAX)
            return false;
        i = (i + 1) & t->join_mask;
    }
}

static int build_join(struct tok *t)
{
    uint64_t cap = 16, pairs = 0;
    for (uint32_t id = 0; id < t->n; id++)
        if (text_type(t->type[id]))
            pairs += t->str[id].len;
    while (cap < pairs * 2)
        cap <<= 1;
    t->join = malloc(cap * sizeof *t->join);
    if (!t->join)
        return RILL_E_NOMEM;
    memset(t->join, 0xFF, cap * sizeof *t->join);
    t->join_mask = cap - 1;
    for (uint32_t id = 0; id < t->n; id++) {
        if (!text_type(t->type[id]))
            continue;
        const char *s = t->text + t->str[id].off;
        uint32_t len = t->str[id].len;
        uint64_t prev = 0;
        for (uint32_t i = 0; i < len;) {
            int cl = utf8_scan((const uint8_t *)s + i, len - i);
            if (cl <= 0)
                cl = 1;
            uint64_t cp = pack_char(s + i, (size_t)cl);
            if (i > 0) {
                uint64_t key = prev << 32 | cp;
                uint64_t k = hash_u64(key) & t->join_mask;
                while (t->join[k] != UINT64_MAX && t->join[k] != key)
                    k = (k + 1) & t->join_mask;
                t->join[k] = key;
            }
            prev = cp;
            i += (uint32_t)cl;
        }
    }
    return 0;
}

/* ---- pre-tokenizers ------------------------------------------------------------ */

#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
#define RE_LLAMA3                                                                     \
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|" \
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_QWEN2                                                                      \
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|" \
    "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

/* The regex chains of llama.cpp (llm_tokenizer_bpe), by `tokenizer.ggml.pre`.
 * Each regex splits every fragment the previous one left; text between
 * matches is a fragment too. */
static const struct pre_def {
    const char *names[8];
    bool ignore_merges; /* a pre-token that is a whole token is taken as is */
    const char *re[TOK_MAX_RE];
} pre_defs[] = {
    {{"gpt2", "gpt-2", "mpt", "olmo", "jais", NULL}, false, {RE_GPT2}},
    {{"llama-bpe", "llama3", "llama-v3", "falcon3", "falcon-h1", "pixtral", NULL},
     true, {RE_LLAMA3}},
    {{"dbrx", "smaug-bpe", NULL}, false, {RE_LLAMA3}},
    {{"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", NULL},
     false, {"\\p{N}", RE_GPT2}},
    {{"qwen2", "stablelm2", "deepseek-r1-qwen", NULL}, false, {RE_QWEN2}},
    /* [CJK Unified Ideographs, U+0800..U+4E00, Hangul syllables and more]: as
     * llama.cpp writes it, overlapping ranges and all */
    {{"deepseek-coder", NULL}, false,
     {"[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+",
      "[\xe4\xb8\x80-\xe9\xbe\xa5\xe0\xa0\x80-\xe4\xb8\x80\xea\xb0\x80-\xed\x9f\xbf]+",
      "\\p{N}"}},
    {{"falcon", NULL}, false,
     {"[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]"}},
    {{"default", NULL}, false,
     {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"}},
};

static const struct pre_def *pre_find(const char *name)
{
    for (size_t i = 0; i < sizeof pre_defs / sizeof pre_defs[0]; i++)
        for (int k = 0; k < 8 && pre_defs[i].names[k]; k++)
            if (strcmp(pre_defs[i].names[k], name) == 0)
                return &pre_defs[i];
    return NULL;
}

/* ---- special tokens in text ------------------------------------------------------ */

/* Whether a token's text is cut out of a prompt: always (user-defined), only
 * when special text is parsed (control, unknown), or never. */
static bool cut_always(uint8_t ty) { return ty == TOK_T_USER; }
static bool cut_special(uint8_t ty) { return ty == TOK_T_CONTROL || ty == TOK_T_UNKNOWN; }

struct sp_key {
    uint32_t len;
    int32_t id;
};

static int sp_key_cmp(const void *a, const void *b)
{
    const struct sp_key *x = a, *y = b;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int build_specials(struct tok *t)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < t->n; i++)
        if (t->str[i].len && (cut_always(t->type[i]) || cut_special(t->type[i])))
            n++;
    struct sp_key *k = malloc((n ? n : 1) * sizeof *k);
    t->special = malloc((n ? n : 1) * sizeof *t->special);
    t->sp_first = malloc((n ? n : 1) * sizeof *t->sp_first);
    if (!k || !t->special || !t->sp_first) {
        free(k);
        return RILL_E_NOMEM;
    }
    n = 0;
    for (uint32_t i = 0; i < t->n; i++)
        if (t->str[i].len && (cut_always(t->type[i]) || cut_special(t->type[i])))
            k[n++] = (struct sp_key){t->str[i].len, (int32_t)i};
    qsort(k, n, sizeof *k, sp_key_cmp);
    for (uint32_t i = 0; i < n; i++)
        t->special[i] = k[i].id;
    t->n_special = n;
    free(k);
    /* bucket by first byte (a counting sort keeps the length order) */
    memset(t->by_first, 0, sizeof t->by_first);
    for (uint32_t i = 0; i < n; i++)
        t->by_first[(uint8_t)t->text[t->str[t->special[i]].off] + 1]++;
    for (int b = 0; b < 256; b++)
        t->by_first[b + 1] += t->by_first[b];
    uint32_t fill[256];
    memcpy(fill, t->by_first, sizeof fill);
    for (uint32_t i = 0; i < n; i++)
        t->sp_first[fill[(uint8_t)t->text[t->str[t->special[i]].off]]++] = i;
    return 0;
}

/* ---- create / free ------------------------------------------------------------ */

void tok_free(struct tok *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->n_re; i++)
        pcre2_code_free(t->re[i]);
    free(t->text);
    free(t->str);
    free(t->pieces);
    free(t->piece);
    free(t->score);
    free(t->type);
    free(t->smap);
    free(t->join);
    free(t->mmap);
    free(t->special);
    free(t->sp_first);
    free(t->eog);
    free(t->strip);
    free(t);
}

static int parse_byte_token(const char *s, uint32_t len)
{
    /* "<0xNN>" */
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0'
              : c >= 'A' && c <= 'F' ? c - 'A' + 10
              : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Decoded bytes of token id into out (room for 3x the token's length, since
 * a GPT-2 char outside the byte alphabet is copied as is). */
static size_t make_piece(const struct tok *t, uint32_t id, const uint8_t gpt2_inv[][2], char *out)
{
    const char *s = t->text + t->str[id].off;
    uint32_t len = t->str[id].len;
    uint8_t ty = t->type[id];
    size_t o = 0;
    if (t->kind == TOK_SPM) {
        if (ty == TOK_T_BYTE) {
            out[0] = (char)parse_byte_token(s, len);
            return 1;
        }
        if (ty == TOK_T_UNKNOWN) {
            memcpy(out, "\xe2\x96\x85", 3); /* llama.cpp shows <unk> as U+2585 */
            return 3;
        }
        if (!text_type(ty))
            return 0;
        for (uint32_t i = 0; i < len; i++) {
            if (i + 2 < len && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
                out[o++] = ' ';
                i += 2;
            } else {
                out[o++] = s[i];
            }
        }
        return o;
    }
    if (ty == TOK_T_USER) {
        memcpy(out, s, len);
        return len;
    }
    if (ty != TOK_T_NORMAL)
        return 0;
    for (uint32_t i = 0; i < len;) {
        int cl = utf8_scan((const uint8_t *)s + i, len - i);
        if (cl <= 0)
            cl = 1;
        uint32_t cp = 0;
        if (cl == 1)
            cp = (uint8_t)s[i];
        else if (cl == 2)
            cp = ((uint32_t)(s[i] & 0x1F) << 6) | (s[i + 1] & 0x3F);
        else
            cp = 0x110000; /* outside the alphabet */
        if (cp < 0x200 && gpt2_inv[cp][1]) {
            out[o++] = (char)gpt2_inv[cp][0];
        } else {
            memcpy(out + o, s + i, (size_t)cl);
            o += (size_t)cl;
        }
        i += (uint32_t)cl;
    }
    return o;
}

static int build_merges(struct tok *t, const struct tok_vocab *v, char *why, size_t why_len)
{
    uint64_t cap = 16;
    while (cap < (uint64_t)v->n_merges * 2)
        cap <<= 1;
    t->mmap = malloc(cap * sizeof *t->mmap);
    if (!t->mmap)
        return RILL_E_NOMEM;
    for (uint64_t i = 0; i < cap; i++)
        t->mmap[i].key = UINT64_MAX;
    t->mmask = cap - 1;

    char buf[512];
    for (uint32_t r = 0; r < v->n_merges; r++) {
        const char *m = v->merges[r];
        uint32_t ml = v->merge_lens ? v->merge_lens[r] : (uint32_t)(m ? strlen(m) : 0);
        if (!m) {
            rill_why(why, why_len, "merge %u is missing", r);
            return RILL_E_BAD_FORMAT;
        }
        /* llama.cpp splits at the first space after the first byte */
        const char *sp = ml > 1 ? memchr(m + 1, ' ', ml - 1) : NULL;
        if (!sp || sp + 1 >= m + ml) {
            rill_why(why, why_len, "merge %u \"%.*s\" is not \"a b\"", r, (int)(ml > 64 ? 64 : ml), m);
            return RILL_E_BAD_FORMAT;
        }
        size_t la = (size_t)(sp - m), lb = ml - la - 1;
        int32_t a = str_lookup(t, m, la), b = str_lookup(t, sp + 1, lb);
        if (a < 0 || b < 0) {
            rill_why(why, why_len, "merge %u \"%.*s\" names an unknown token", r,
                    (int)(ml > 64 ? 64 : ml), m);
            return RILL_E_BAD_FORMAT;
        }
        if (la + lb > sizeof buf)
            continue; /* no token is that long */
        memcpy(buf, m, la);
        memcpy(buf + la, sp + 1, lb);
        int32_t res = str_lookup(t, buf, la + lb);
        if (res < 0)
            continue; /* a merge into nothing could never be emitted: ignore it */
        uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
        uint64_t i = hash_u64(key) & t->mmask;
        while (t->mmap[i].key != UINT64_MAX && t->mmap[i].key != key)
            i = (i + 1) & t->mmask;
        if (t->mmap[i].key == key)
            continue; /* listed twice: the better rank stands */
        t->mmap[i].key = key;
        t->mmap[i].rank = (int32_t)r;
        t->mmap[i].result = res;
    }
    return 0;
}

static int build_regexes(struct tok *t, const char *pre, char *why, size_t why_len)
{
    const struct pre_def *d = pre_find(pre ? pre : "gpt2");
    if (!d) {
        rill_why(why, why_len, "unsupported pre-tokenizer \"%s\"", pre);
        return RILL_E_UNSUPPORTED;
    }
    t->ignore_merges = d->ignore_merges;
    for (int i = 0; i < TOK_MAX_RE && d->re[i]; i++) {
        int err;
        PCRE2_SIZE eoff;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)d->re[i], PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF,
                                       &err, &eoff, NULL);
        if (!re) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(err, msg, sizeof msg);
            rill_why(why, why_len, "pre-tokenizer regex %d: %s at %zu", i, (char *)msg, (size_t)eoff);
            return RILL_E_INTERNAL;
        }
        /* JIT is an optimisation only: the interpreter gives the same splits */
        (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
        t->re[t->n_re++] = re;
    }
    return 0;
}

int tok_create(const struct tok_vocab *v, struct tok **out, char *why, size_t why_len)
{
    rill_why(why, why_len, "%s", "");
    if (!out)
        return RILL_E_BAD_REQUEST;
    *out = NULL;
    if (!v) {
        rill_why(why, why_len, "no vocabulary");
        return RILL_E_BAD_FORMAT;
    }
    if (v->kind != TOK_SPM && v->kind != TOK_GPT2) {
        rill_why(why, why_len, "unsupported tokenizer kind %d", (int)v->kind);
        return RILL_E_UNSUPPORTED;
    }
    if (v->n == 0 || v->n > INT32_MAX || !v->tokens || !v->token_lens) {
        rill_why(why, why_len, "empty or incomplete vocabulary (%u tokens)", v->n);
        return RILL_E_BAD_FORMAT;
    }
    const int32_t specials[] = {v->bos, v->eos, v->unk, v->pad, v->eot};
    const char *special_names[] = {"bos", "eos", "unk", "pad", "eot"};
    for (int i = 0; i < 5; i++)
        if (specials[i] < -1 || specials[i] >= (int32_t)v->n) {
            rill_why(why, why_len, "%s id %d is outside the vocabulary of %u", special_names[i],
                    specials[i], v->n);
            return RILL_E_BAD_FORMAT;
        }
    if (v->kind == TOK_SPM && !v->scores) {
        rill_why(why, why_len, "SPM vocabulary without scores");
        return RILL_E_BAD_FORMAT;
    }
    if (v->kind == TOK_GPT2 && v->n_merges && !v->merges) {
        rill_why(why, why_len, "%u merges announced but none given", v->n_merges);
        return RILL_E_BAD_FORMAT;
    }

    struct tok *t = calloc(1, sizeof *t);
    if (!t)
        return RILL_E_NOMEM;
    int rc = RILL_E_NOMEM;
    t->kind = v->kind;
    t->n = v->n;
    t->bos = v->bos, t->eos = v->eos, t->unk = v->unk, t->pad = v->pad, t->eot = v->eot;
    t->add_bos = v->add_bos;
    t->add_eos = v->add_eos;
    t->add_space_prefix = v->add_space_prefix;

    size_t total = 0;
    for (uint32_t i = 0; i < v->n; i++) {
        if (!v->tokens[i] && v->token_lens[i]) {
            rill_why(why, why_len, "token %u has no text", i);
            rc = RILL_E_BAD_FORMAT;
            goto err;
        }
        total += v->token_lens[i];
    }
    t->text = malloc(total + 1);
    t->str = malloc(v->n * sizeof *t->str);
    t->score = malloc(v->n * sizeof *t->score);
    t->type = malloc(v->n);
    if (!t->text || !t->str || !t->score || !t->type)
        goto err;
    size_t off = 0;
    for (uint32_t i = 0; i < v->n; i++) {
        uint32_t l = v->token_lens[i];
        if (l)
            memcpy(t->text + off, v->tokens[i], l);
        t->str[i] = (struct span){(uint32_t)off, l};
        off += l;
        t->score[i] = v->scores ? v->scores[i] : 0.0f;
        if (v->types) {
            int32_t ty = v->types[i];
            if (ty < TOK_T_NORMAL || ty > TOK_T_BYTE) {
                rill_why(why, why_len, "token %u has unknown type %d", i, ty);
                rc = RILL_E_BAD_FORMAT;
                goto err;
            }
            t->type[i] = (uint8_t)ty;
        } else {
            /* no types in the file: infer what the ids and strings say */
            int32_t id = (int32_t)i;
            if (id == v->unk)
                t->type[i] = TOK_T_UNKNOWN;
            else if (id == v->bos || id == v->eos || id == v->eot || id == v->pad)
                t->type[i] = TOK_T_CONTROL;
            else if (v->kind == TOK_SPM && parse_byte_token(t->text + t->str[i].off, l) >= 0)
                t->type[i] = TOK_T_BYTE;
            else
                t->type[i] = TOK_T_NORMAL;
        }
    }
    if (total > UINT32_MAX) {
        rill_why(why, why_len, "vocabulary text too large");
        rc = RILL_E_BAD_FORMAT;
        goto err;
    }

    uint32_t cap = 16;
    while (cap < v->n * 2u && cap < (1u << 31))
        cap <<= 1;
    t->smap = calloc(cap, sizeof *t->smap);
    if (!t->smap)
        goto err;
    t->smask = cap - 1;
    for (uint32_t i = 0; i < v->n; i++)
        if (text_type(t->type[i])) {
            str_insert(t, i);
            if (t->str[i].len > t->max_len)
                t->max_len = t->str[i].len;
        }

    for (int b = 0; b < 256; b++)
        t->byte_tok[b] = -1;
    uint8_t gpt2_inv[0x200][2]; /* code point -> {byte, present} */
    memset(gpt2_inv, 0, sizeof gpt2_inv);
    if (t->kind == TOK_SPM) {
        for (uint32_t i = 0; i < v->n; i++) {
            if (t->type[i] != TOK_T_BYTE)
                continue;
            int b = parse_byte_token(t->text + t->str[i].off, t->str[i].len);
            if (b < 0) {
                rill_why(why, why_len, "byte token %u is \"%.*s\", not <0xNN>", i,
                        (int)(t->str[i].len > 32 ? 32 : t->str[i].len), t->text + t->str[i].off);
                rc = RILL_E_BAD_FORMAT;
                goto err;
            }
            if (t->byte_tok[b] < 0)
                t->byte_tok[b] = (int32_t)i;
        }
    } else {
        for (int b = 0; b < 256; b++) {
            char ch[4];
            uint32_t cp = gpt2_byte_cp((uint8_t)b);
            t->byte_cp[b] = (uint16_t)cp;
            size_t cl = put_cp(ch, cp);
            gpt2_inv[cp][0] = (uint8_t)b;
            gpt2_inv[cp][1] = 1;
            t->byte_tok[b] = str_lookup(t, ch, cl);
        }
    }
    for (int b = 0; b < 256; b++)
        if (t->byte_tok[b] < 0) {
            rill_why(why, why_len, "%s vocabulary has no token for byte 0x%02X",
                    t->kind == TOK_SPM ? "SPM" : "GPT-2", b);
            rc = RILL_E_BAD_FORMAT;
            goto err;
        }

    if (t->kind == TOK_SPM && build_join(t) < 0)
        goto err;
    if (t->kind == TOK_GPT2) {
        if ((rc = build_regexes(t, v->pre, why, why_len)) < 0)
            goto err;
        if ((rc = build_merges(t, v, why, why_len)) < 0)
            goto err;
        rc = RILL_E_NOMEM;
    }

    /* pieces: at most 3 bytes out per byte in (a lone GPT-2 byte char is 2
     * bytes in, 1 out; unknown is 3 bytes for any length) */
    t->pieces = malloc(total * 3 + 3 * (size_t)v->n + 1);
    t->piece = malloc(v->n * sizeof *t->piece);
    if (!t->pieces || !t->piece)
        goto err;
    off = 0;
    for (uint32_t i = 0; i < v->n; i++) {
        size_t l = make_piece(t, i, (const uint8_t(*)[2])gpt2_inv, t->pieces + off);
        t->piece[i] = (struct span){(uint32_t)off, (uint32_t)l};
        off += l;
    }
    if ((rc = build_specials(t)) < 0)
        goto err;
    rc = RILL_E_NOMEM;
    if (v->strip) {
        if (!(t->strip = malloc(v->n)))
            goto err;
        memcpy(t->strip, v->strip, v->n);
    }
    if (v->n_eog) {
        if (!v->eog) {
            rill_why(why, why_len, "%u end-of-generation ids announced but none given", v->n_eog);
            rc = RILL_E_BAD_FORMAT;
            goto err;
        }
        rc = RILL_E_NOMEM;
        if (!(t->eog = malloc(v->n_eog * sizeof *t->eog)))
            goto err;
        for (uint32_t i = 0; i < v->n_eog; i++) {
            if (v->eog[i] < 0 || v->eog[i] >= (int32_t)v->n) {
                rill_why(why, why_len, "end-of-generation id %d is outside the vocabulary of %u",
                         v->eog[i], v->n);
                rc = RILL_E_BAD_FORMAT;
                goto err;
            }
            t->eog[i] = v->eog[i];
        }
        t->n_eog = v->n_eog;
    }
    *out = t;
    return 0;
err:
    if (rc == RILL_E_NOMEM)
        rill_why(why, why_len, "out of memory");
    tok_free(t);
    return rc;
}

uint32_t tok_n_vocab(const struct tok *t) { return t->n; }
int32_t tok_bos(const struct tok *t) { return t->bos; }
int32_t tok_eos(const struct tok *t) { return t->eos; }
bool tok_add_bos(const struct tok *t) { return t->add_bos; }
bool tok_add_eos(const struct tok *t) { return t->add_eos; }

bool tok_is_eog(const struct tok *t, int32_t id)
{
    if (id < 0)
        return false;
    if (id == t->eos || id == t->eot)
        return true;
    for (uint32_t i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id)
            return true;
    return false;
}

int tok_piece(const struct tok *t, int32_t id, const char **bytes, size_t *len)
{
    if (id < 0 || (uint32_t)id >= t->n)
        return RILL_E_BAD_REQUEST;
    *bytes = t->pieces + t->piece[id].off;
    *len = t->piece[id].len;
    return 0;
}

/* ---- the merge engine ------------------------------------------------------------ */

/* Symbol i covers bytes [start, start+len) of the text being merged; it is
 * alive while len > 0.  A symbol in the heap has a candidate merge with its
 * right neighbour, into token cand_res. */
struct sym {
    uint32_t start, len;
    int32_t prev, next;
    int32_t id;        /* GPT-2: the token this symbol is; SPM: -1 until merged */
    int32_t cand_res;
};

/* Heap entries carry their key so that sifting never leaves the heap array
 * (the symbols are touched only to record positions): on a 1 MiB prompt this
 * is the difference between seconds and a fraction of one. */
struct hent {
    float key;   /* lower is better: -score (SPM) or merge rank (GPT-2) */
    int32_t sym; /* left symbol of the pair */
};

struct engine {
    const struct tok *t;
    const char *text;
    struct sym *sym;
    int32_t *hpos;     /* per symbol: its heap index, -1 if absent */
    struct hent *heap;
    uint32_t nheap;
};

static inline bool hent_less(const struct hent *x, const struct hent *y)
{
    return x->key < y->key || (x->key == y->key && x->sym < y->sym);
}

static inline void eng_set(struct engine *e, uint32_t i, struct hent h)
{
    e->heap[i] = h;
    e->hpos[h.sym] = (int32_t)i;
}

static void eng_up(struct engine *e, uint32_t i)
{
    struct hent h = e->heap[i];
    while (i > 0) {
        uint32_t p = (i - 1) / 4;
        if (!hent_less(&h, &e->heap[p]))
            break;
        eng_set(e, i, e->heap[p]);
        i = p;
    }
    eng_set(e, i, h);
}

/* A 4-ary heap: half the depth of a binary one, and the four children of a
 * node share a cache line. */
static void eng_down(struct engine *e, uint32_t i)
{
    struct hent h = e->heap[i];
    for (;;) {
        uint32_t c = 4 * i + 1, end = c + 4 < e->nheap ? c + 4 : e->nheap, m = c;
        if (c >= e->nheap)
            break;
        for (uint32_t k = c + 1; k < end; k++)
            if (hent_less(&e->heap[k], &e->heap[m]))
                m = k;
        if (!hent_less(&e->heap[m], &h))
            break;
        eng_set(e, i, e->heap[m]);
        i = m;
    }
    eng_set(e, i, h);
}

static void eng_remove(struct engine *e, int32_t s)
{
    int32_t p = e->hpos[s];
    if (p < 0)
        return;
    e->hpos[s] = -1;
    uint32_t last = --e->nheap;
    if ((uint32_t)p != last) {
        eng_set(e, (uint32_t)p, e->heap[last]);
        eng_down(e, (uint32_t)p);
        eng_up(e, (uint32_t)p);
    }
}

/* Recompute the candidate merge of symbol l with its right neighbour. */
static void eng_update(struct engine *e, int32_t l)
{
    if (l < 0)
        return;
    struct sym *a = &e->sym[l];
    int32_t r = a->next;
    float key = 0;
    bool ok = false;
    if (r >= 0) {
        const struct sym *b = &e->sym[r];
        if (e->t->kind == TOK_SPM) {
            int32_t id = a->len + b->len > e->t->max_len
                             ? -1 : str_lookup(e->t, e->text + a->start, a->len + b->len);
            if (id >= 0) {
                key = -e->t->score[id];
                a->cand_res = id;
                ok = true;
            }
        } else {
            const struct merge_slot *m = merge_lookup(e->t, a->id, b->id);
            if (m) {
                key = (float)m->rank;
                a->cand_res = m->result;
                ok = true;
            }
        }
    }
    if (!ok) {
        eng_remove(e, l);
        return;
    }
    struct hent h = {key, l};
    int32_t p = e->hpos[l];
    if (p < 0) {
        p = (int32_t)e->nheap++;
        eng_set(e, (uint32_t)p, h);
        eng_up(e, (uint32_t)p);
    } else {
        eng_set(e, (uint32_t)p, h);
        eng_down(e, (uint32_t)p);
        eng_up(e, (uint32_t)e->hpos[l]);
    }
}

/* Merge until no candidate is left.  The symbols first..first+n-1 are linked
 * in order, and to nothing outside. */
static void eng_run(struct engine *e, uint32_t first, uint32_t n)
{
    e->nheap = 0;
    for (uint32_t i = first; i < first + n; i++)
        e->hpos[i] = -1;
    for (uint32_t i = first; i + 1 < first + n; i++)
        eng_update(e, (int32_t)i);
    while (e->nheap) {
        int32_t l = e->heap[0].sym;
        struct sym *a = &e->sym[l];
        int32_t r = a->next;
        struct sym *b = &e->sym[r];
        eng_remove(e, r);
        a->len += b->len;
        a->id = a->cand_res;
        b->len = 0;
        a->next = b->next;
        if (b->next >= 0)
            e->sym[b->next].prev = l;
        eng_update(e, l);
        eng_update(e, a->prev);
    }
}

/* ---- encoding ------------------------------------------------------------------ */

struct emit {
    int32_t *ids;
    size_t cap, n;
};

static inline void emit(struct emit *o, int32_t id)
{
    if (o->n < o->cap)
        o->ids[o->n] = id;
    o->n++;
}

/* `prefix`: start the text with "▁" (llama.cpp does at the start of the
 * text and after each special token, when the vocabulary adds a space
 * prefix). */
static int spm_encode(const struct tok *t, const char *text, size_t len, bool prefix, struct emit *o)
{
    if (len == 0)
        return 0; /* llama.cpp adds no space prefix to an empty text */
    size_t cap = 3 + 3 * len;
    char *buf = malloc(cap);
    struct sym *sym = malloc(cap * sizeof *sym);
    struct hent *heap = malloc(cap * sizeof *heap);
    int32_t *hpos = malloc(cap * sizeof *hpos);
    if (!buf || !sym || !heap || !hpos) {
        free(buf), free(sym), free(heap), free(hpos);
        return RILL_E_NOMEM;
    }
    size_t bl = 0;
    if (prefix) {
        memcpy(buf, "\xe2\x96\x81", 3);
        bl = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(buf + bl, "\xe2\x96\x81", 3);
            bl += 3;
        } else {
            buf[bl++] = text[i];
        }
    }
    /* Cut the text where no token can span (see `join`): the pieces merge
     * independently, so each runs with a small, cache-resident heap and the
     * result is the same as one run over the whole text. */
    uint32_t n = 0;
    uint64_t prev_cp = 0;
    for (size_t i = 0; i < bl;) {
        int cl = utf8_scan((const uint8_t *)buf + i, bl - i);
        if (cl <= 0)
            cl = 1; /* an invalid byte stands alone and falls back to <0xNN> */
        uint64_t cp = pack_char(buf + i, (size_t)cl);
        bool link = n > 0 && join_has(t, prev_cp << 32 | cp);
        sym[n] = (struct sym){.start = (uint32_t)i, .len = (uint32_t)cl,
                              .prev = link ? (int32_t)n - 1 : -1, .next = -1, .id = -1};
        if (link)
            sym[n - 1].next = (int32_t)n;
        prev_cp = cp;
        n++;
        i += (size_t)cl;
    }
    struct engine e = {.t = t, .text = buf, .sym = sym, .heap = heap, .hpos = hpos};
    for (uint32_t s0 = 0, s1; s0 < n; s0 = s1) {
        for (s1 = s0 + 1; s1 < n && sym[s1].prev >= 0; s1++)
            ;
        eng_run(&e, s0, s1 - s0);
        for (int32_t i = (int32_t)s0; i >= 0; i = sym[i].next) {
            int32_t id = sym[i].id >= 0 ? sym[i].id : str_lookup(t, buf + sym[i].start, sym[i].len);
            if (id >= 0) {
                emit(o, id);
            } else {
                for (uint32_t k = 0; k < sym[i].len; k++)
                    emit(o, t->byte_tok[(uint8_t)buf[sym[i].start + k]]);
            }
        }
    }
    free(buf), free(sym), free(heap), free(hpos);
    return 0;
}

struct gpt2_ctx {
    const struct tok *t;
    struct emit *o;
    pcre2_match_data *md;
    struct engine e;
    char *mapped; /* ignore_merges: the pre-token in the byte alphabet */
};

static void gpt2_word(struct gpt2_ctx *c, const char *s, size_t n)
{
    const struct tok *t = c->t;
    if (t->ignore_merges) {
        size_t ml = 0;
        for (size_t i = 0; i < n; i++)
            ml += put_cp(c->mapped + ml, t->byte_cp[(uint8_t)s[i]]);
        int32_t id = str_lookup(t, c->mapped, ml);
        if (id >= 0) {
            emit(c->o, id);
            return;
        }
    }
    struct sym *sym = c->e.sym;
    for (size_t i = 0; i < n; i++)
        sym[i] = (struct sym){.start = (uint32_t)i, .len = 1, .prev = (int32_t)i - 1,
                              .next = i + 1 < n ? (int32_t)i + 1 : -1,
                              .id = t->byte_tok[(uint8_t)s[i]]};
    c->e.text = s;
    eng_run(&c->e, 0, (uint32_t)n);
    for (int32_t i = 0; i >= 0; i = sym[i].next)
        emit(c->o, sym[i].id);
}

/* Split [s, s+n) with regex `level` and hand every match and every gap
 * between matches to the next level, the last level to the merger. */
static int gpt2_split(struct gpt2_ctx *c, int level, const char *s, size_t n)
{
    if (n == 0)
        return 0;
    if (level == c->t->n_re) {
        gpt2_word(c, s, n);
        return 0;
    }
    size_t pos = 0, done = 0;
    while (pos < n) {
        int rc = pcre2_match(c->t->re[level], (PCRE2_SPTR)s, n, pos, 0, c->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) /* 0 only says the ovector is short: still a match */
            return RILL_E_INTERNAL;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) {
            /* none of the patterns matches empty; never loop if one did */
            pos = ms + 1;
            continue;
        }
        int r;
        if (ms > done && (r = gpt2_split(c, level + 1, s + done, ms - done)) < 0)
            return r;
        if ((r = gpt2_split(c, level + 1, s + ms, me - ms)) < 0)
            return r;
        pos = done = me;
    }
    if (done < n)
        return gpt2_split(c, level + 1, s + done, n - done);
    return 0;
}

static int gpt2_encode(const struct tok *t, const char *text, size_t len, struct emit *o)
{
    if (len == 0)
        return 0;
    struct gpt2_ctx c = {.t = t, .o = o};
    c.md = pcre2_match_data_create(1, NULL);
    c.e.t = t;
    c.e.sym = malloc(len * sizeof *c.e.sym);
    c.e.heap = malloc(len * sizeof *c.e.heap);
    c.e.hpos = malloc(len * sizeof *c.e.hpos);
    c.mapped = t->ignore_merges ? malloc(2 * len) : NULL;
    int rc = RILL_E_NOMEM;
    if (c.md && c.e.sym && c.e.heap && c.e.hpos && (c.mapped || !t->ignore_merges))
        rc = gpt2_split(&c, 0, text, len);
    pcre2_match_data_free(c.md);
    free(c.e.sym), free(c.e.heap), free(c.e.hpos), free(c.mapped);
    return rc;
}

/* A piece of the text: bytes to tokenize (id < 0) or a special token. */
struct frag {
    uint32_t off, len;
    int32_t id;
};

struct frags {
    struct frag *f;
    size_t n, cap;
};

static bool frags_push(struct frags *v, uint32_t off, uint32_t len, int32_t id)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 16;
        struct frag *f = realloc(v->f, cap * sizeof *f);
        if (!f)
            return false;
        v->f = f, v->cap = cap;
    }
    v->f[v->n++] = (struct frag){off, len, id};
    return true;
}

static bool cut_now(const struct tok *t, int32_t id, bool parse_special)
{
    return cut_always(t->type[id]) || (parse_special && cut_special(t->type[id]));
}

/* Cut special tokens out of text[0, len) as llama.cpp's tokenizer_st_partition
 * does: each token in turn, longest first, splits every text fragment left at
 * each of its occurrences (leftmost first, not overlapping), so a longer
 * token wins over a shorter one it overlaps.  One scan first finds which
 * tokens occur at all; only those make a pass, so plain text costs one scan. */
static int partition(const struct tok *t, const char *text, size_t len, bool parse_special, struct frags *out)
{
    uint8_t *present = NULL;
    int rc = RILL_E_NOMEM;
    struct frags tmp = {0};
    out->n = 0;
    if (!frags_push(out, 0, (uint32_t)len, -1))
        return RILL_E_NOMEM;
    for (size_t i = 0; i < len; i++) {
        uint8_t b = (uint8_t)text[i];
        for (uint32_t j = t->by_first[b]; j < t->by_first[b + 1]; j++) {
            uint32_t k = t->sp_first[j];
            int32_t id = t->special[k];
            const struct span *sp = &t->str[id];
            if (sp->len > len - i || (present && present[k]) || !cut_now(t, id, parse_special) ||
                memcmp(text + i, t->text + sp->off, sp->len) != 0)
                continue;
            if (!present && !(present = calloc(t->n_special, 1)))
                return RILL_E_NOMEM;
            present[k] = 1;
        }
    }
    for (uint32_t k = 0; present && k < t->n_special; k++) {
        if (!present[k])
            continue;
        const struct span *sp = &t->str[t->special[k]];
        const char *needle = t->text + sp->off;
        tmp.n = 0;
        for (size_t i = 0; i < out->n; i++) {
            struct frag f = out->f[i];
            if (f.id >= 0) {
                if (!frags_push(&tmp, f.off, f.len, f.id))
                    goto done;
                continue;
            }
            uint32_t at = f.off, end = f.off + f.len;
            uint8_t strip = t->strip ? t->strip[t->special[k]] : 0;
            const char *m;
            while (end - at >= sp->len && (m = memmem(text + at, end - at, needle, sp->len))) {
                uint32_t mo = (uint32_t)(m - text), le = mo;
                /* lstrip / rstrip: the token eats the whitespace beside it */
                while ((strip & TOK_LSTRIP) && le > at && isspace((uint8_t)text[le - 1]))
                    le--;
                if ((le > at && !frags_push(&tmp, at, le - at, -1)) ||
                    !frags_push(&tmp, mo, sp->len, t->special[k]))
                    goto done;
                at = mo + sp->len;
                while ((strip & TOK_RSTRIP) && at < end && isspace((uint8_t)text[at]))
                    at++;
            }
            if (at < end && !frags_push(&tmp, at, end - at, -1))
                goto done;
        }
        struct frags swap = *out;
        *out = tmp;
        tmp = swap;
    }
    rc = 0;
done:
    free(present);
    free(tmp.f);
    return rc;
}

/* The text's tokens, special ones cut out first; SentencePiece text after a
 * special token gets the space prefix again, as at the start (llama.cpp's
 * is_prev_special). */
static int encode_text(const struct tok *t, const char *text, size_t len, bool parse_special, struct emit *o)
{
    if (len == 0)
        return 0;
    struct frags fr = {0};
    int rc = partition(t, text, len, parse_special, &fr);
    bool prev_special = true;
    for (size_t i = 0; rc == 0 && i < fr.n; i++) {
        const struct frag *f = &fr.f[i];
        if (f->id >= 0) {
            emit(o, f->id);
            prev_special = true;
        } else if (t->kind == TOK_SPM) {
            rc = spm_encode(t, text + f->off, f->len, t->add_space_prefix && prev_special, o);
            prev_special = false;
        } else {
            rc = gpt2_encode(t, text + f->off, f->len, o);
        }
    }
    free(fr.f);
    return rc;
}

static int encode(const struct tok *t, const char *text, size_t len, bool bos, bool eos, bool parse_special,
                  int32_t *ids, size_t cap, size_t *n_out)
{
    struct emit o = {.ids = ids, .cap = ids ? cap : 0, .n = 0};
    *n_out = 0;
    if (len && !text)
        return RILL_E_BAD_REQUEST;
    if (len > UINT32_MAX / 4)
        return RILL_E_TOO_LARGE;
    if (bos && t->bos >= 0)
        emit(&o, t->bos);
    int rc = encode_text(t, text, len, parse_special, &o);
    if (rc < 0)
        return rc;
    if (eos && t->eos >= 0)
        emit(&o, t->eos);
    *n_out = o.n;
    return o.n > cap ? RILL_E_TOO_LARGE : 0;
}

int tok_encode(const struct tok *t, const char *text, size_t len, bool add_bos,
               int32_t *ids, size_t cap, size_t *n_out)
{
    return encode(t, text, len, add_bos, false, false, ids, cap, n_out);
}

int tok_encode_ex(const struct tok *t, const char *text, size_t len, unsigned flags,
                  int32_t *ids, size_t cap, size_t *n_out)
{
    bool special = flags & TOK_ENC_ADD_SPECIAL;
    return encode(t, text, len, special && t->add_bos, special && t->add_eos,
                  flags & TOK_ENC_PARSE_SPECIAL, ids, cap, n_out);
}

/* ---- decoding ------------------------------------------------------------------- */

static const char REPLACEMENT[3] = {'\xEF', '\xBF', '\xBD'};

/* Streaming: a byte-at-a-time decoder whose whole state is the valid but
 * unfinished prefix it holds.  (tok_decode below uses a look-ahead scanner
 * instead, so that each checks the other.) */

struct sink {
    char *out;
    size_t cap, n;
    bool full;
};

static bool sink_put(struct sink *k, const void *p, size_t n)
{
    if (k->full || k->n + n > k->cap) {
        k->full = true;
        return false;
    }
    memcpy(k->out + k->n, p, n);
    k->n += n;
    return true;
}

/* The range the next byte of a sequence must fall in, given the lead byte
 * and how many bytes are already held (>= 1); total is the sequence length. */
static void seq_expect(uint8_t lead, int held, int *total, uint8_t *lo, uint8_t *hi)
{
    *lo = 0x80, *hi = 0xBF;
    if (lead < 0xE0)
        *total = 2;
    else if (lead < 0xF0)
        *total = 3;
    else
        *total = 4;
    if (held == 1) {
        if (lead == 0xE0)
            *lo = 0xA0;
        else if (lead == 0xED)
            *hi = 0x9F;
        else if (lead == 0xF0)
            *lo = 0x90;
        else if (lead == 0xF4)
            *hi = 0x8F;
    }
}

static bool stream_byte(struct tok_stream *s, uint8_t b, struct sink *k)
{
    for (;;) {
        if (s->n_held == 0) {
            if (b < 0x80)
                return sink_put(k, &b, 1);
            if ((b >= 0xC2 && b <= 0xF4)) {
                s->held[0] = b;
                s->n_held = 1;
                return true;
            }
            return sink_put(k, REPLACEMENT, 3);
        }
        int total;
        uint8_t lo, hi;
        seq_expect(s->held[0], s->n_held, &total, &lo, &hi);
        if (b >= lo && b <= hi) {
            s->held[s->n_held++] = b;
            if (s->n_held < total)
                return true;
            s->n_held = 0;
            return sink_put(k, s->held, (size_t)total);
        }
        /* the held prefix can never finish: one U+FFFD for it, then b
         * starts afresh */
        s->n_held = 0;
        if (!sink_put(k, REPLACEMENT, 3))
            return false;
    }
}

void tok_stream_init(struct tok_stream *s)
{
    memset(s, 0, sizeof *s);
}

size_t tok_stream_push(const struct tok *t, struct tok_stream *s, int32_t id, char *out, size_t cap)
{
    struct sink k = {.out = out, .cap = cap};
    const char *p;
    size_t n;
    if (tok_piece(t, id, &p, &n) < 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (!stream_byte(s, (uint8_t)p[i], &k)) {
            /* out of room: the rest of this piece is dropped, and so is an
             * unfinished character, which could no longer be completed */
            s->n_held = 0;
            break;
        }
    }
    return k.n;
}

size_t tok_stream_flush(struct tok_stream *s, char *out, size_t cap)
{
    size_t n = 0;
    if (s->n_held && cap >= 3) {
        memcpy(out, REPLACEMENT, 3);
        n = 3;
    }
    s->n_held = 0;
    return n;
}

/* A read position in the concatenation of the pieces of ids[]. */
struct cursor {
    const struct tok *t;
    const int32_t *ids;
    size_t n, i, off;
};

static size_t cursor_peek(const struct cursor *c, uint8_t *b, size_t want)
{
    size_t got = 0, i = c->i, off = c->off;
    while (got < want && i < c->n) {
        const char *p;
        size_t len;
        if (tok_piece(c->t, c->ids[i], &p, &len) < 0)
            len = 0;
        while (off < len && got < want)
            b[got++] = (uint8_t)p[off++];
        if (off >= len)
            i++, off = 0;
    }
    return got;
}

static void cursor_skip(struct cursor *c, size_t k)
{
    while (k && c->i < c->n) {
        const char *p;
        size_t len;
        if (tok_piece(c->t, c->ids[c->i], &p, &len) < 0)
            len = 0;
        size_t take = len - c->off < k ? len - c->off : k;
        c->off += take;
        k -= take;
        if (c->off >= len)
            c->i++, c->off = 0;
    }
}

size_t tok_decode(const struct tok *t, const int32_t *ids, size_t n, char *out, size_t cap)
{
    struct cursor c = {.t = t, .ids = ids, .n = n};
    size_t need = 0;
    bool stop = false; /* once a unit does not fit, write nothing more */
    uint8_t b[4];
    size_t avail;
    while ((avail = cursor_peek(&c, b, 4)) > 0) {
        int r = utf8_scan(b, avail);
        const void *src = b;
        size_t wl, adv;
        if (r > 0) {
            wl = adv = (size_t)r;
        } else {
            src = REPLACEMENT;
            wl = 3;
            adv = r < 0 ? (size_t)-r : avail; /* 0: unfinished at the very end */
        }
        if (!stop && need + wl <= cap)
            memcpy(out + need, src, wl);
        else
            stop = true;
        need += wl;
        cursor_skip(&c, adv);
    }
    return need;
}
