/* vocab.c — see vocab.h.
 *
 * Besides copying the arrays, this is where llama.cpp's reading of a
 * vocabulary is reproduced: the defaults of the add_* flags, and the
 * end-of-generation set, which llama.cpp derives from token texts (its
 * llama_vocab::impl::load, "special_eog_ids"): the FIM pad/repo/file-separator
 * tokens, every token spelled like an end-of-turn marker, and EOS, EOT and EOM.
 * Tokens so spelled become CONTROL whatever the file says, as there.
 */
#include "vocab.h"

#include "common/err.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

struct vload {
    const struct gguf *g;
    char *why;
    size_t why_len;
};

static int opt_id(struct vload *L, const char *key, int32_t *out)
{
    uint32_t v;
    int rc = gguf_get_u32(L->g, key, &v, L->why, L->why_len);
    if (rc == RILL_E_NOT_FOUND || (rc == 0 && v == UINT32_MAX)) {
        *out = -1; /* UINT32_MAX: some converters' "none" */
        return 0;
    }
    if (rc)
        return rc;
    if (v > INT32_MAX)
        return rill_fail(L->why, L->why_len, RILL_E_BAD_FORMAT, "metadata '%s' = %" PRIu32 " is out of range",
                         key, v);
    *out = (int32_t)v;
    return 0;
}

static int opt_bool(struct vload *L, const char *key, bool *out, bool dflt)
{
    int rc = gguf_get_bool(L->g, key, out, L->why, L->why_len);
    if (rc == RILL_E_NOT_FOUND) {
        *out = dflt;
        return 0;
    }
    return rc;
}

/* An array of `n` elements, or NULL when absent; wrong element kind or count
 * is an error. */
static int opt_arr(struct vload *L, const char *key, bool want_str, bool want_float, uint64_t n,
                   const struct gguf_kv **out)
{
    *out = gguf_find(L->g, key);
    const struct gguf_kv *kv = *out;
    if (!kv)
        return 0;
    bool ok = kv->type == GGUF_ARR;
    if (ok) {
        enum gguf_vtype t = kv->v.arr.type;
        ok = want_str ? t == GGUF_STR
           : want_float ? (t == GGUF_F32 || t == GGUF_F64)
           : (t != GGUF_STR && t != GGUF_F32 && t != GGUF_F64 && t != GGUF_BOOL);
    }
    if (!ok)
        return rill_fail(L->why, L->why_len, RILL_E_BAD_FORMAT, "metadata '%s' is not an array of %s", key,
                         want_str ? "strings" : want_float ? "floats" : "integers");
    if (n != UINT64_MAX && kv->v.arr.n != n)
        return rill_fail(L->why, L->why_len, RILL_E_BAD_FORMAT,
                         "metadata '%s' has %" PRIu64 " entries, expected %" PRIu64 " (one per token)", key,
                         kv->v.arr.n, n);
    return 0;
}

static int strs_of(const struct gguf_kv *kv, const char ***strs, uint32_t **lens)
{
    uint64_t n = kv->v.arr.n;
    *strs = malloc((n ? n : 1) * sizeof **strs);
    *lens = malloc((n ? n : 1) * sizeof **lens);
    if (!*strs || !*lens)
        return RILL_E_NOMEM;
    for (uint64_t i = 0; i < n; i++) {
        struct gguf_str s = gguf_arr_str(kv, i);
        if (s.len > UINT32_MAX)
            return RILL_E_BAD_FORMAT;
        (*strs)[i] = s.s;
        (*lens)[i] = (uint32_t)s.len;
    }
    return 0;
}

/* ---- end of generation, as llama.cpp derives it ------------------------------ */

/* Which role a token text plays in llama.cpp's detection (llama-vocab.cpp,
 * "auto-detect special tokens by text"). */
enum eog_role { R_NONE, R_EOG, R_EOT_ONLY, R_EOM, R_FIM_PAD, R_FIM_REP, R_FIM_SEP };

static const struct {
    const char *text;
    enum eog_role role;
} eog_texts[] = {
    /* end of turn: EOT candidates and always end of generation */
    {"<|eot_id|>", R_EOG}, {"<|im_end|>", R_EOG}, {"<|end|>", R_EOG},
    {"<end_of_turn>", R_EOG}, {"<|endoftext|>", R_EOG}, {"<EOT>", R_EOG},
    /* an EOT candidate only (so end of generation only if it becomes EOT) */
    {"<\xef\xbd\x9c" "end\xe2\x96\x81" "of\xe2\x96\x81" "sentence\xef\xbd\x9c>", R_EOT_ONLY},
    {"<|eom_id|>", R_EOM},
    {"<|fim_pad|>", R_FIM_PAD}, {"<fim-pad>", R_FIM_PAD}, {"<PAD>", R_FIM_PAD},
    {"<|fim_repo|>", R_FIM_REP}, {"<|repo_name|>", R_FIM_REP}, {"<fim-repo>", R_FIM_REP},
    {"<REPO>", R_FIM_REP},
    {"<|file_sep|>", R_FIM_SEP},
};

static enum eog_role eog_role_of(const char *s, uint32_t len)
{
    if (len < 5 || s[0] != '<')
        return R_NONE;
    for (size_t i = 0; i < sizeof eog_texts / sizeof eog_texts[0]; i++)
        if (strlen(eog_texts[i].text) == len && memcmp(eog_texts[i].text, s, len) == 0)
            return eog_texts[i].role;
    return R_NONE;
}

#define VOCAB_MAX_EOG 64

/* Fill v->eot (when the file names none) and the end-of-generation list, and
 * mark the tokens spelled as end-of-turn markers CONTROL.  llama.cpp takes
 * the first match of its hash-map walk where several tokens qualify for one
 * role; here the lowest id wins, so the choice does not depend on hashing. */
static int derive_eog(struct vload *L, struct tok_vocab *v, int32_t *types, int32_t *eog, uint32_t *n_eog)
{
    int32_t eom, fim[3];
    int rc;
    if ((rc = opt_id(L, "tokenizer.ggml.eom_token_id", &eom)) ||
        (rc = opt_id(L, "tokenizer.ggml.fim_pad_token_id", &fim[0])) ||
        (rc = opt_id(L, "tokenizer.ggml.fim_rep_token_id", &fim[1])) ||
        (rc = opt_id(L, "tokenizer.ggml.fim_sep_token_id", &fim[2])))
        return rc;
    uint32_t n = 0;
    for (uint32_t id = 0; id < v->n; id++) {
        enum eog_role r = eog_role_of(v->tokens[id], v->token_lens[id]);
        if (r == R_NONE)
            continue;
        bool mark = false;
        if ((r == R_EOG || r == R_EOT_ONLY) && v->eot < 0) {
            v->eot = (int32_t)id;
            mark = true;
        }
        if (r == R_EOM && eom < 0)
            eom = (int32_t)id, mark = true;
        if (r >= R_FIM_PAD && fim[r - R_FIM_PAD] < 0)
            fim[r - R_FIM_PAD] = (int32_t)id, mark = true;
        if (r == R_EOG || r == R_EOM) {
            if (n < VOCAB_MAX_EOG)
                eog[n++] = (int32_t)id;
            mark = true;
        }
        if (mark && types)
            types[id] = TOK_T_CONTROL;
    }
    const int32_t named[] = {eom, fim[0], fim[1], fim[2]};
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++)
        if (named[i] >= 0 && n < VOCAB_MAX_EOG)
            eog[n++] = named[i];
    for (uint32_t i = 0; i < n; i++)
        if (eog[i] >= (int32_t)v->n)
            return rill_fail(L->why, L->why_len, RILL_E_BAD_FORMAT,
                             "end-of-generation id %d is outside the vocabulary of %u", eog[i], v->n);
    *n_eog = n;
    return 0;
}

/* ---- whitespace stripping, as llama.cpp sets it by model name ----------------- */

static bool text_is(const struct tok_vocab *v, uint32_t id, const char *s)
{
    return v->token_lens[id] == strlen(s) && memcmp(v->tokens[id], s, v->token_lens[id]) == 0;
}

/* llama.cpp gives Phi-3's special tokens RSTRIP (they eat the whitespace
 * after them in a prompt, as Phi-3's tokenizer_config says), keyed on
 * general.name because nothing in the tokenizer metadata tells Phi-3 apart.
 * *strip stays NULL for every other vocabulary. */
static int phi3_strip(const struct gguf *g, const struct tok_vocab *v, uint8_t **strip)
{
    struct gguf_str name;
    *strip = NULL;
    if (gguf_get_str(g, "general.name", &name, NULL, 0) != 0)
        return 0;
    char low[128];
    size_t n = name.len < sizeof low - 1 ? (size_t)name.len : sizeof low - 1;
    for (size_t i = 0; i < n; i++)
        low[i] = (char)tolower((uint8_t)name.s[i]);
    low[n] = 0;
    if (!strstr(low, "phi-3") && !strstr(low, "phi3"))
        return 0;
    if (!(*strip = calloc(v->n, 1)))
        return RILL_E_NOMEM;
    for (uint32_t id = 0; id < v->n; id++) {
        int32_t ty = v->types ? v->types[id] : TOK_T_NORMAL;
        bool special = ty == TOK_T_CONTROL || ty == TOK_T_USER || ty == TOK_T_UNKNOWN;
        if ((special || text_is(v, id, "</s>")) &&
            !text_is(v, id, "<unk>") && !text_is(v, id, "<s>") && !text_is(v, id, "<|endoftext|>"))
            (*strip)[id] = TOK_RSTRIP;
    }
    return 0;
}

/* ---- the loader -------------------------------------------------------------- */

int vocab_load(const struct gguf *g, struct tok **out, char *why, size_t why_len)
{
    struct vload Lv = {.g = g, .why = why, .why_len = why_len}, *L = &Lv;
    struct tok_vocab v = {0};
    struct gguf_str kind;
    *out = NULL;
    int rc = gguf_get_str(g, "tokenizer.ggml.model", &kind, why, why_len);
    if (rc == RILL_E_NOT_FOUND)
        return rill_fail(why, why_len, RILL_E_BAD_FORMAT,
                         "missing metadata 'tokenizer.ggml.model' (the file has no tokenizer)");
    if (rc)
        return rc;
    if (gguf_str_eq(kind, "llama")) {
        v.kind = TOK_SPM;
    } else if (gguf_str_eq(kind, "gpt2")) {
        v.kind = TOK_GPT2;
    } else {
        char k[32];
        size_t kl = kind.len < sizeof k - 1 ? (size_t)kind.len : sizeof k - 1;
        for (size_t i = 0; i < kl; i++)
            k[i] = (uint8_t)kind.s[i] < 0x20 ? '?' : kind.s[i];
        k[kl] = 0;
        return rill_fail(why, why_len, RILL_E_UNSUPPORTED,
                         "tokenizer '%s' is not supported (supported: llama, gpt2)", k);
    }

    const struct gguf_kv *tokens, *scores, *types, *merges;
    if ((rc = opt_arr(L, "tokenizer.ggml.tokens", true, false, UINT64_MAX, &tokens)))
        return rc;
    if (!tokens)
        return rill_fail(why, why_len, RILL_E_BAD_FORMAT, "missing metadata 'tokenizer.ggml.tokens'");
    uint64_t n = tokens->v.arr.n;
    if (n == 0 || n > INT32_MAX)
        return rill_fail(why, why_len, RILL_E_BAD_FORMAT, "tokenizer.ggml.tokens has %" PRIu64 " tokens", n);
    if ((rc = opt_arr(L, "tokenizer.ggml.scores", false, true, n, &scores)) ||
        (rc = opt_arr(L, "tokenizer.ggml.token_type", false, false, n, &types)) ||
        (rc = opt_arr(L, "tokenizer.ggml.merges", true, false, UINT64_MAX, &merges)))
        return rc;
    v.n = (uint32_t)n;
    if ((rc = opt_id(L, "tokenizer.ggml.bos_token_id", &v.bos)) ||
        (rc = opt_id(L, "tokenizer.ggml.eos_token_id", &v.eos)) ||
        (rc = opt_id(L, "tokenizer.ggml.unknown_token_id", &v.unk)) ||
        (rc = opt_id(L, "tokenizer.ggml.padding_token_id", &v.pad)) ||
        (rc = opt_id(L, "tokenizer.ggml.eot_token_id", &v.eot)) ||
        /* llama.cpp's defaults: SentencePiece models add BOS and a space
         * prefix unless they say otherwise; byte-level BPE ones do neither. */
        (rc = opt_bool(L, "tokenizer.ggml.add_bos_token", &v.add_bos, v.kind == TOK_SPM)) ||
        (rc = opt_bool(L, "tokenizer.ggml.add_eos_token", &v.add_eos, false)) ||
        (rc = opt_bool(L, "tokenizer.ggml.add_space_prefix", &v.add_space_prefix, v.kind == TOK_SPM)))
        return rc;
    char pre[64];
    rc = gguf_get_str_buf(g, "tokenizer.ggml.pre", pre, sizeof pre, why, why_len);
    if (rc && rc != RILL_E_NOT_FOUND)
        return rc;
    v.pre = rc == 0 ? pre : NULL;

    const char **tok_s = NULL, **merge_s = NULL;
    uint32_t *tok_l = NULL, *merge_l = NULL;
    float *sc = NULL;
    int32_t *ty = NULL;
    uint8_t *strip = NULL;
    int32_t eog[VOCAB_MAX_EOG];
    rc = strs_of(tokens, &tok_s, &tok_l);
    if (!rc && merges)
        rc = strs_of(merges, &merge_s, &merge_l);
    if (!rc && scores && !(sc = malloc(n * sizeof *sc)))
        rc = RILL_E_NOMEM;
    if (!rc && types && !(ty = malloc(n * sizeof *ty)))
        rc = RILL_E_NOMEM;
    if (rc) {
        rill_fail(why, why_len, rc, rc == RILL_E_NOMEM ? "out of memory for the vocabulary"
                                                        : "a token of 4 GB or more");
        goto out;
    }
    for (uint64_t i = 0; sc && i < n; i++)
        sc[i] = gguf_arr_f32(scores, i);
    for (uint64_t i = 0; ty && i < n; i++) {
        int64_t x = gguf_arr_i64(types, i);
        ty[i] = x < INT32_MIN || x > INT32_MAX ? 0 : (int32_t)x;
    }
    v.tokens = tok_s;
    v.token_lens = tok_l;
    v.scores = sc;
    v.types = ty;
    if (merges) {
        v.n_merges = (uint32_t)(merges->v.arr.n > UINT32_MAX ? UINT32_MAX : merges->v.arr.n);
        v.merges = merge_s;
        v.merge_lens = merge_l;
    }
    if ((rc = derive_eog(L, &v, ty, eog, &v.n_eog)))
        goto out;
    v.eog = eog;
    if ((rc = phi3_strip(g, &v, &strip))) {
        rill_fail(why, why_len, rc, "out of memory for the vocabulary");
        goto out;
    }
    v.strip = strip;
    char twhy[256] = "";
    rc = tok_create(&v, out, twhy, sizeof twhy);
    if (rc)
        rill_fail(why, why_len, rc, "tokenizer: %s", twhy);
out:
    free(tok_s);
    free(tok_l);
    free(merge_s);
    free(merge_l);
    free(sc);
    free(ty);
    free(strip);
    return rc;
}
