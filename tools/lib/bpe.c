/* bpe.c — learn a BPE vocabulary (see bpe.h).
 *
 * Classic incremental BPE: the text is cut into words (SPM: "▁"-prefixed
 * whitespace-separated words; GPT-2: the GPT-2 pre-tokenizer's pieces), equal
 * words are counted once, and every symbol occurrence of every distinct word
 * is a node of a doubly-linked list.  Each adjacent pair of symbols has a
 * count (summed word frequencies) and a list of where it occurs; a max-heap
 * holds (count, pair) entries, pushed again whenever a count changes, stale
 * ones being skipped when popped.  One merge therefore costs the number of
 * its occurrences, not a rescan of the text.
 *
 * Determinism: ties between equal counts go to the pair whose left string,
 * then right string, is smaller in byte order; occurrences are merged left to
 * right; hash tables are only ever probed, never iterated.
 *
 * When no pair is left inside words (every word is one symbol) and the
 * vocabulary is still short, the words are joined in text order into one
 * sequence and merging continues across word boundaries.  No piece grows past
 * BPE_MAX_PIECE bytes, and pieces that would spell a special token ("<s>",
 * "<0x41>", "<|end_of_text|>") are never made.
 *
 * Cost: the 32,000-token vocabulary of the 512 KB shipped corpus takes about
 * 0.3 s (x86-64, -O2).
 */
#include "bpe.h"

#include "common/hash.h"
#include "common/utf8.h"
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "err.h"

#define DEAD UINT32_MAX
#define NONE UINT32_MAX

/* No piece longer than this (bytes).  Without a cap, merging across words
 * on a small text ends in pieces that are whole speeches (the sum of their
 * lengths grows quadratically), which helps no model and slows everything. */
#define BPE_MAX_PIECE 48

static const char SPM_SPACE[] = "\xe2\x96\x81"; /* U+2581 */
static const char *const GPT2_RE =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
static const char GPT2_BOS[] = "<|begin_of_text|>";
static const char GPT2_EOS[] = "<|end_of_text|>";

struct span {
    uint32_t off, len;
};

struct pair {
    uint32_t a, b;
    int64_t count;
    uint32_t *pos; /* left positions where (a, b) occurs or occurred */
    uint32_t npos, cpos;
    uint32_t stamp;
    bool banned; /* would spell a reserved token */
};

struct hentry {
    int64_t count;
    uint32_t pair;
};

struct trainer {
    enum tok_kind kind;

    /* symbols: strings in an arena, string -> id table */
    char *arena;
    size_t alen, acap;
    struct span *sym;
    uint32_t nsym, csym;
    uint32_t *smap, smask; /* id+1, 0 empty */

    /* symbol occurrences */
    uint32_t *psym;
    int32_t *pprev, *pnext;
    uint32_t *pcnt;
    uint32_t npos;

    /* pairs */
    struct pair *pairs;
    uint32_t npairs, cpairs;
    uint32_t *pmap, pmask; /* pair index+1, 0 empty */

    struct hentry *heap;
    size_t nheap, cheap;

    uint32_t *changed;
    size_t nchanged, cchanged;
    uint32_t stamp;
};

static bool grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return true;
    size_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q)
        return false;
    *p = q;
    *cap = c;
    return true;
}

#define GROW(ptr, capv, need)                                                 \
    ({                                                                         \
        size_t c_ = (capv);                                                    \
        bool ok_ = grow((void **)&(ptr), &c_, (need), sizeof *(ptr));          \
        (capv) = c_;                                                           \
        ok_;                                                                   \
    })

/* Length of the valid UTF-8 character at s, or 0 if the bytes there are not
 * one (invalid or cut short). */
static int utf8_len(const uint8_t *s, size_t n)
{
    int k = utf8_scan(s, n);
    return k > 0 ? k : 0;
}

/* ---- symbols ---------------------------------------------------------------- */

static uint32_t sym_find(const struct trainer *tr, const char *s, size_t len)
{
    if (!tr->smap)
        return NONE;
    uint32_t i = (uint32_t)hash_bytes(s, len) & tr->smask;
    for (;;) {
        uint32_t v = tr->smap[i];
        if (!v)
            return NONE;
        const struct span *sp = &tr->sym[v - 1];
        if (sp->len == len && memcmp(tr->arena + sp->off, s, len) == 0)
            return v - 1;
        i = (i + 1) & tr->smask;
    }
}

static bool smap_rehash(struct trainer *tr, uint32_t cap)
{
    uint32_t *m = calloc(cap, sizeof *m);
    if (!m)
        return false;
    for (uint32_t id = 0; id < tr->nsym; id++) {
        const struct span *sp = &tr->sym[id];
        uint32_t i = (uint32_t)hash_bytes(tr->arena + sp->off, sp->len) & (cap - 1);
        while (m[i])
            i = (i + 1) & (cap - 1);
        m[i] = id + 1;
    }
    free(tr->smap);
    tr->smap = m;
    tr->smask = cap - 1;
    return true;
}

/* A new symbol for a string not yet known; NONE on allocation failure. */
static uint32_t sym_add(struct trainer *tr, const char *s, size_t len)
{
    if (!GROW(tr->arena, tr->acap, tr->alen + len) || !GROW(tr->sym, tr->csym, tr->nsym + 1u))
        return NONE;
    memcpy(tr->arena + tr->alen, s, len);
    tr->sym[tr->nsym] = (struct span){(uint32_t)tr->alen, (uint32_t)len};
    tr->alen += len;
    tr->nsym++;
    if (!tr->smap || (tr->nsym * 2u) > tr->smask) {
        uint32_t cap = 64;
        while (cap < tr->nsym * 4u)
            cap <<= 1;
        if (!smap_rehash(tr, cap))
            return NONE;
    } else {
        const struct span *sp = &tr->sym[tr->nsym - 1];
        uint32_t i = (uint32_t)hash_bytes(tr->arena + sp->off, sp->len) & tr->smask;
        while (tr->smap[i])
            i = (i + 1) & tr->smask;
        tr->smap[i] = tr->nsym;
    }
    return tr->nsym - 1;
}

static int sym_cmp(const struct trainer *tr, uint32_t x, uint32_t y)
{
    const struct span *a = &tr->sym[x], *b = &tr->sym[y];
    size_t l = a->len < b->len ? a->len : b->len;
    int c = memcmp(tr->arena + a->off, tr->arena + b->off, l);
    if (c)
        return c;
    return a->len < b->len ? -1 : a->len > b->len;
}

/* ---- pairs and the heap ---------------------------------------------------------- */

static bool pmap_rehash(struct trainer *tr, uint32_t cap)
{
    uint32_t *m = calloc(cap, sizeof *m);
    if (!m)
        return false;
    for (uint32_t k = 0; k < tr->npairs; k++) {
        uint64_t key = (uint64_t)tr->pairs[k].a << 32 | tr->pairs[k].b;
        uint32_t i = (uint32_t)hash_u64(key) & (cap - 1);
        while (m[i])
            i = (i + 1) & (cap - 1);
        m[i] = k + 1;
    }
    free(tr->pmap);
    tr->pmap = m;
    tr->pmask = cap - 1;
    return true;
}

/* The index of pair (a, b), created when absent; NONE on allocation failure. */
static uint32_t pair_get(struct trainer *tr, uint32_t a, uint32_t b)
{
    uint64_t key = (uint64_t)a << 32 | b;
    uint32_t i = (uint32_t)hash_u64(key) & tr->pmask;
    for (;;) {
        uint32_t v = tr->pmap[i];
        if (!v)
            break;
        if (tr->pairs[v - 1].a == a && tr->pairs[v - 1].b == b)
            return v - 1;
        i = (i + 1) & tr->pmask;
    }
    if (!GROW(tr->pairs, tr->cpairs, tr->npairs + 1u))
        return NONE;
    uint32_t k = tr->npairs++;
    tr->pairs[k] = (struct pair){.a = a, .b = b};
    if (tr->npairs * 2u > tr->pmask) {
        if (!pmap_rehash(tr, (tr->pmask + 1) * 2))
            return NONE;
    } else {
        tr->pmap[i] = k + 1;
    }
    return k;
}

static bool mark_changed(struct trainer *tr, uint32_t k)
{
    if (tr->pairs[k].stamp == tr->stamp)
        return true;
    tr->pairs[k].stamp = tr->stamp;
    if (!GROW(tr->changed, tr->cchanged, tr->nchanged + 1))
        return false;
    tr->changed[tr->nchanged++] = k;
    return true;
}

static bool pair_add(struct trainer *tr, uint32_t a, uint32_t b, int64_t w, uint32_t pos)
{
    uint32_t k = pair_get(tr, a, b);
    if (k == NONE)
        return false;
    struct pair *p = &tr->pairs[k];
    p->count += w;
    if (!GROW(p->pos, p->cpos, p->npos + 1u))
        return false;
    p->pos[p->npos++] = pos;
    return mark_changed(tr, k);
}

static bool pair_sub(struct trainer *tr, uint32_t a, uint32_t b, int64_t w)
{
    uint32_t k = pair_get(tr, a, b);
    if (k == NONE)
        return false;
    tr->pairs[k].count -= w;
    return mark_changed(tr, k);
}

/* Heap order: higher count first, then the smaller (left, right) strings. */
static bool h_before(const struct trainer *tr, const struct hentry *x, const struct hentry *y)
{
    if (x->count != y->count)
        return x->count > y->count;
    const struct pair *p = &tr->pairs[x->pair], *q = &tr->pairs[y->pair];
    int c = sym_cmp(tr, p->a, q->a);
    if (c)
        return c < 0;
    return sym_cmp(tr, p->b, q->b) < 0;
}

static bool h_push(struct trainer *tr, uint32_t k)
{
    if (!GROW(tr->heap, tr->cheap, tr->nheap + 1))
        return false;
    size_t i = tr->nheap++;
    tr->heap[i] = (struct hentry){tr->pairs[k].count, k};
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!h_before(tr, &tr->heap[i], &tr->heap[p]))
            break;
        struct hentry t = tr->heap[i];
        tr->heap[i] = tr->heap[p];
        tr->heap[p] = t;
        i = p;
    }
    return true;
}

static struct hentry h_pop(struct trainer *tr)
{
    struct hentry top = tr->heap[0];
    tr->heap[0] = tr->heap[--tr->nheap];
    size_t i = 0, n = tr->nheap;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && h_before(tr, &tr->heap[l], &tr->heap[m]))
            m = l;
        if (r < n && h_before(tr, &tr->heap[r], &tr->heap[m]))
            m = r;
        if (m == i)
            break;
        struct hentry t = tr->heap[i];
        tr->heap[i] = tr->heap[m];
        tr->heap[m] = t;
        i = m;
    }
    return top;
}

static void pairs_reset(struct trainer *tr)
{
    for (uint32_t k = 0; k < tr->npairs; k++)
        free(tr->pairs[k].pos);
    tr->npairs = 0;
    tr->nheap = 0;
    free(tr->pmap);
    tr->pmap = NULL;
}

/* Count every adjacent pair of the occurrence lists and fill the heap. */
static bool pairs_build(struct trainer *tr)
{
    pairs_reset(tr);
    if (!pmap_rehash(tr, 1024))
        return false;
    tr->stamp++;
    tr->nchanged = 0;
    for (uint32_t i = 0; i < tr->npos; i++) {
        int32_t j = tr->pnext[i];
        if (j >= 0 && !pair_add(tr, tr->psym[i], tr->psym[j], tr->pcnt[i], i))
            return false;
    }
    for (uint32_t k = 0; k < tr->npairs; k++)
        if (!h_push(tr, k))
            return false;
    return true;
}

static int cmp_u32(const void *x, const void *y)
{
    uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
    return a < b ? -1 : a > b;
}

/* Replace every occurrence of pair k by symbol c, left to right. */
static bool merge_pair(struct trainer *tr, uint32_t k, uint32_t c)
{
    tr->stamp++;
    tr->nchanged = 0;
    uint32_t a = tr->pairs[k].a, b = tr->pairs[k].b;
    uint32_t *pos = tr->pairs[k].pos, npos = tr->pairs[k].npos;
    tr->pairs[k].pos = NULL;
    tr->pairs[k].npos = tr->pairs[k].cpos = 0;
    qsort(pos, npos, sizeof *pos, cmp_u32);
    bool ok = true;
    for (uint32_t x = 0; x < npos && ok; x++) {
        uint32_t i = pos[x];
        if (x && pos[x - 1] == i)
            continue;
        if (tr->psym[i] != a)
            continue;
        int32_t j = tr->pnext[i];
        if (j < 0 || tr->psym[j] != b)
            continue;
        int64_t w = tr->pcnt[i];
        int32_t p = tr->pprev[i], n = tr->pnext[j];
        if (p >= 0)
            ok = ok && pair_sub(tr, tr->psym[p], a, w) && pair_add(tr, tr->psym[p], c, w, (uint32_t)p);
        if (n >= 0)
            ok = ok && pair_sub(tr, b, tr->psym[n], w) && pair_add(tr, c, tr->psym[n], w, i);
        tr->psym[i] = c;
        tr->pnext[i] = n;
        if (n >= 0)
            tr->pprev[n] = (int32_t)i;
        tr->psym[j] = DEAD;
        tr->pnext[j] = tr->pprev[j] = -1;
        tr->pairs[k].count -= w;
    }
    free(pos);
    /* every occurrence is gone (overlaps like "aaa" were discounted through
     * their neighbour), so nothing of (a, b) is left to count */
    tr->pairs[k].count = 0;
    for (size_t x = 0; x < tr->nchanged && ok; x++) {
        struct pair *p = &tr->pairs[tr->changed[x]];
        if (p->count > 0 && !p->banned && tr->changed[x] != k)
            ok = h_push(tr, tr->changed[x]);
    }
    return ok;
}

/* ---- words ------------------------------------------------------------------------ */

struct words {
    struct span *w;       /* distinct words in the word text */
    uint32_t *count;
    uint32_t nw, cw, ccount;
    uint32_t *map, mask;  /* word index+1 */
    uint32_t *occ;        /* word index of every occurrence, in text order */
    size_t nocc, cocc;
    const char *text;
};

static bool words_add(struct words *ws, size_t off, size_t len)
{
    if (len == 0)
        return true;
    const char *s = ws->text + off;
    uint32_t i = (uint32_t)hash_bytes(s, len) & ws->mask;
    uint32_t id = NONE;
    for (;;) {
        uint32_t v = ws->map[i];
        if (!v)
            break;
        const struct span *sp = &ws->w[v - 1];
        if (sp->len == len && memcmp(ws->text + sp->off, s, len) == 0) {
            id = v - 1;
            break;
        }
        i = (i + 1) & ws->mask;
    }
    if (id == NONE) {
        if (!GROW(ws->w, ws->cw, ws->nw + 1u))
            return false;
        if (!GROW(ws->count, ws->ccount, ws->nw + 1u))
            return false;
        id = ws->nw++;
        ws->w[id] = (struct span){(uint32_t)off, (uint32_t)len};
        ws->count[id] = 0;
        ws->map[i] = id + 1;
        if (ws->nw * 2u > ws->mask) {
            uint32_t cap = (ws->mask + 1) * 2;
            uint32_t *m = calloc(cap, sizeof *m);
            if (!m)
                return false;
            for (uint32_t k = 0; k < ws->nw; k++) {
                uint32_t h = (uint32_t)hash_bytes(ws->text + ws->w[k].off, ws->w[k].len) & (cap - 1);
                while (m[h])
                    h = (h + 1) & (cap - 1);
                m[h] = k + 1;
            }
            free(ws->map);
            ws->map = m;
            ws->mask = cap - 1;
        }
    }
    ws->count[id]++;
    if (!GROW(ws->occ, ws->cocc, ws->nocc + 1))
        return false;
    ws->occ[ws->nocc++] = id;
    return true;
}

static bool is_ascii_ws(uint8_t c)
{
    return c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/* SPM words over the escaped text ("▁" for every space): a word is "▁"
 * followed by non-space characters, or such characters at the start of a
 * line; runs of other ASCII whitespace (newlines, tabs) are words of their
 * own.  Invalid UTF-8 bytes end a word and are left out: a vocabulary piece
 * must be valid UTF-8, and such bytes are encoded through <0xNN> anyway. */
static bool spm_words(struct words *ws, size_t len)
{
    const uint8_t *s = (const uint8_t *)ws->text;
    size_t start = 0, i = 0;
    int kind = 0; /* of the current word: 0 none, 1 text, 2 whitespace run */
    while (i < len) {
        int cl = utf8_len(s + i, len - i);
        if (cl == 0) {
            if (!words_add(ws, start, i - start))
                return false;
            i++;
            start = i;
            kind = 0;
            continue;
        }
        bool space = cl == 3 && memcmp(s + i, SPM_SPACE, 3) == 0;
        int k = is_ascii_ws(s[i]) ? 2 : 1;
        if (space || (kind && k != kind)) {
            if (!words_add(ws, start, i - start))
                return false;
            start = i;
        }
        kind = k;
        i += (size_t)cl;
    }
    return words_add(ws, start, len - start);
}

/* GPT-2 words: the pieces of the GPT-2 regex, and the gaps between them. */
static int gpt2_words(struct words *ws, size_t len, char *why, size_t why_len)
{
    int err;
    PCRE2_SIZE eoff;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)GPT2_RE, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &eoff, NULL);
    if (!re) {
        rill_why(why, why_len, "GPT-2 regex does not compile (%d)", err);
        return RILL_E_INTERNAL;
    }
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    int rc = md ? 0 : RILL_E_NOMEM;
    size_t pos = 0, done = 0;
    while (rc == 0 && pos < len) {
        int m = pcre2_match(re, (PCRE2_SPTR)ws->text, len, pos, 0, md, NULL);
        if (m == PCRE2_ERROR_NOMATCH)
            break;
        if (m < 0) {
            rc = RILL_E_INTERNAL;
            break;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (ov[1] <= ov[0]) {
            pos = ov[0] + 1;
            continue;
        }
        if ((ov[0] > done && !words_add(ws, done, ov[0] - done)) ||
            !words_add(ws, ov[0], ov[1] - ov[0]))
            rc = RILL_E_NOMEM;
        pos = done = ov[1];
    }
    if (rc == 0 && done < len && !words_add(ws, done, len - done))
        rc = RILL_E_NOMEM;
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return rc;
}

/* ---- occurrence lists -------------------------------------------------------------- */

static bool pos_reserve(struct trainer *tr, size_t n)
{
    free(tr->psym), free(tr->pprev), free(tr->pnext), free(tr->pcnt);
    tr->psym = malloc(n * sizeof *tr->psym);
    tr->pprev = malloc(n * sizeof *tr->pprev);
    tr->pnext = malloc(n * sizeof *tr->pnext);
    tr->pcnt = malloc(n * sizeof *tr->pcnt);
    tr->npos = 0;
    return tr->psym && tr->pprev && tr->pnext && tr->pcnt;
}

static void pos_push(struct trainer *tr, uint32_t s, uint32_t cnt, bool link)
{
    uint32_t i = tr->npos++;
    tr->psym[i] = s;
    tr->pcnt[i] = cnt;
    tr->pnext[i] = -1;
    tr->pprev[i] = link ? (int32_t)i - 1 : -1;
    if (link)
        tr->pnext[i - 1] = (int32_t)i;
}

/* ---- reserved strings ---------------------------------------------------------------- */

static bool reserved(enum tok_kind kind, const char *s, size_t n)
{
    if (kind == TOK_GPT2)
        return (n == sizeof GPT2_BOS - 1 && !memcmp(s, GPT2_BOS, n)) ||
               (n == sizeof GPT2_EOS - 1 && !memcmp(s, GPT2_EOS, n));
    if ((n == 5 && !memcmp(s, "<unk>", 5)) || (n == 3 && !memcmp(s, "<s>", 3)) ||
        (n == 4 && !memcmp(s, "</s>", 4)))
        return true;
    if (n == 6 && !memcmp(s, "<0x", 3) && s[5] == '>') {
        for (int i = 3; i < 5; i++)
            if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'A' && s[i] <= 'F') ||
                  (s[i] >= 'a' && s[i] <= 'f')))
                return false;
        return true;
    }
    return false;
}

/* ---- output --------------------------------------------------------------------------- */

void bpe_vocab_free(struct bpe_vocab *v)
{
    if (!v)
        return;
    if (v->tokens)
        for (uint32_t i = 0; i < v->n; i++)
            free(v->tokens[i]);
    if (v->merges)
        for (uint32_t i = 0; i < v->n_merges; i++)
            free(v->merges[i]);
    free(v->tokens);
    free(v->scores);
    free(v->types);
    free(v->merges);
    memset(v, 0, sizeof *v);
}

static size_t gpt2_map(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        uint32_t cp = b;
        if (!((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)) {
            uint32_t k = 0;
            for (uint32_t x = 0; x < b; x++)
                if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE))
                    k++;
            cp = 0x100 + k;
        }
        if (cp < 0x80) {
            out[o++] = (char)cp;
        } else {
            out[o++] = (char)(0xC0 | (cp >> 6));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    out[o] = 0;
    return o;
}

static char *dup_str(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

static char *sym_str(const struct trainer *tr, uint32_t id, enum tok_kind kind)
{
    const struct span *sp = &tr->sym[id];
    if (kind == TOK_SPM)
        return dup_str(tr->arena + sp->off, sp->len);
    char *p = malloc(2 * (size_t)sp->len + 1);
    if (p)
        gpt2_map(tr->arena + sp->off, sp->len, p);
    return p;
}

struct char_rank {
    uint32_t sym;
    uint64_t freq;
};

static int cmp_char(const void *x, const void *y, void *ctx)
{
    const struct char_rank *a = x, *b = y;
    if (a->freq != b->freq)
        return a->freq > b->freq ? -1 : 1;
    return sym_cmp(ctx, a->sym, b->sym);
}

/* ---- training -------------------------------------------------------------------------- */

static void trainer_free(struct trainer *tr)
{
    pairs_reset(tr);
    free(tr->pairs);
    free(tr->heap);
    free(tr->changed);
    free(tr->arena);
    free(tr->sym);
    free(tr->smap);
    free(tr->psym), free(tr->pprev), free(tr->pnext), free(tr->pcnt);
}

/* Join every word occurrence, as currently segmented, into one sequence. */
static bool join_words(struct trainer *tr, const struct words *ws, const uint32_t *wstart)
{
    size_t total = 0;
    uint32_t *segs = malloc((ws->nw + 1) * sizeof *segs); /* symbols per word */
    if (!segs)
        return false;
    for (uint32_t w = 0; w < ws->nw; w++) {
        uint32_t k = 0;
        for (int32_t i = (int32_t)wstart[w]; i >= 0; i = tr->pnext[i])
            k++;
        segs[w] = k;
    }
    for (size_t o = 0; o < ws->nocc; o++)
        total += segs[ws->occ[o]];
    uint32_t *flat = NULL; /* each word's symbols, word after word */
    uint32_t *first = malloc((ws->nw + 1) * sizeof *first);
    size_t nflat = 0;
    for (uint32_t w = 0; w < ws->nw; w++)
        nflat += segs[w];
    flat = malloc((nflat + 1) * sizeof *flat);
    if (!flat || !first || total > UINT32_MAX) {
        free(segs), free(flat), free(first);
        return false;
    }
    nflat = 0;
    for (uint32_t w = 0; w < ws->nw; w++) {
        first[w] = (uint32_t)nflat;
        for (int32_t i = (int32_t)wstart[w]; i >= 0; i = tr->pnext[i])
            flat[nflat++] = tr->psym[i];
    }
    bool ok = pos_reserve(tr, total + 1);
    for (size_t o = 0; ok && o < ws->nocc; o++) {
        uint32_t w = ws->occ[o];
        for (uint32_t k = 0; k < segs[w]; k++)
            pos_push(tr, flat[first[w] + k], 1, tr->npos > 0);
    }
    free(segs), free(flat), free(first);
    return ok;
}

int bpe_train(const char *text, size_t len, enum tok_kind kind, uint32_t vocab_size,
              struct bpe_vocab *out, char *why, size_t why_len)
{
    rill_why(why, why_len, "%s", "");
    if (!out || (len && !text))
        return RILL_E_BAD_REQUEST;
    memset(out, 0, sizeof *out);
    if (kind != TOK_SPM && kind != TOK_GPT2) {
        rill_why(why, why_len, "unknown tokenizer kind %d", (int)kind);
        return RILL_E_UNSUPPORTED;
    }
    if (len > UINT32_MAX / 4) {
        rill_why(why, why_len, "training text too large (%zu bytes)", len);
        return RILL_E_BAD_REQUEST;
    }

    struct trainer tr = {.kind = kind};
    struct words ws = {0};
    char *wtext = NULL;
    uint32_t *wstart = NULL, *new_tok = NULL, (*mlist)[2] = NULL;
    struct char_rank *chars = NULL;
    int rc = RILL_E_NOMEM;

    /* the text the words are cut from */
    size_t wlen = 0;
    if (kind == TOK_SPM) {
        wtext = malloc(3 + 3 * len + 1);
        if (!wtext)
            goto out;
        if (len) {
            memcpy(wtext, SPM_SPACE, 3);
            wlen = 3;
        }
        for (size_t i = 0; i < len; i++) {
            if (text[i] == ' ') {
                memcpy(wtext + wlen, SPM_SPACE, 3);
                wlen += 3;
            } else {
                wtext[wlen++] = text[i];
            }
        }
    } else {
        wtext = malloc(len + 1);
        if (!wtext)
            goto out;
        if (len)
            memcpy(wtext, text, len);
        wlen = len;
    }
    ws.text = wtext;
    ws.mask = 1023;
    ws.map = calloc(ws.mask + 1, sizeof *ws.map);
    if (!ws.map)
        goto out;
    if (kind == TOK_SPM) {
        if (!spm_words(&ws, wlen))
            goto out;
    } else if ((rc = gpt2_words(&ws, wlen, why, why_len)) < 0) {
        goto out;
    }
    rc = RILL_E_NOMEM;

    /* base symbols: the 256 bytes (GPT-2) or every character (SPM) */
    if (kind == TOK_GPT2)
        for (int b = 0; b < 256; b++) {
            char c = (char)b;
            if (sym_add(&tr, &c, 1) == NONE)
                goto out;
        }
    size_t total_chars = 0;
    for (uint32_t w = 0; w < ws.nw; w++) {
        const uint8_t *s = (const uint8_t *)wtext + ws.w[w].off;
        for (uint32_t i = 0; i < ws.w[w].len;) {
            int cl = kind == TOK_SPM ? utf8_len(s + i, ws.w[w].len - i) : 1;
            if (cl == 0)
                cl = 1; /* cannot happen: spm_words cut invalid bytes out */
            if (sym_find(&tr, (const char *)s + i, (size_t)cl) == NONE &&
                sym_add(&tr, (const char *)s + i, (size_t)cl) == NONE)
                goto out;
            i += (uint32_t)cl;
            total_chars++;
        }
    }
    uint32_t n_base = tr.nsym;
    uint32_t n_fixed = kind == TOK_SPM ? 3 + 256 + n_base : 256 + 2;
    if (vocab_size < n_fixed) {
        rill_why(why, why_len, "vocabulary size %u is below the %u base tokens of this text",
                vocab_size, n_fixed);
        rc = RILL_E_BAD_REQUEST;
        goto out;
    }

    /* occurrence lists of the distinct words */
    if (!pos_reserve(&tr, total_chars + 1))
        goto out;
    wstart = malloc((ws.nw + 1) * sizeof *wstart);
    if (!wstart)
        goto out;
    for (uint32_t w = 0; w < ws.nw; w++) {
        const uint8_t *s = (const uint8_t *)wtext + ws.w[w].off;
        wstart[w] = tr.npos;
        for (uint32_t i = 0; i < ws.w[w].len;) {
            int cl = kind == TOK_SPM ? utf8_len(s + i, ws.w[w].len - i) : 1;
            if (cl == 0)
                cl = 1;
            pos_push(&tr, sym_find(&tr, (const char *)s + i, (size_t)cl), ws.count[w],
                     i > 0);
            i += (uint32_t)cl;
        }
    }
    if (!pairs_build(&tr))
        goto out;

    uint32_t want = vocab_size - n_fixed, n_new = 0;
    size_t n_merges = 0, cmerges = 0;
    new_tok = malloc((want + 1) * sizeof *new_tok);
    if (!new_tok)
        goto out;
    bool joined = false;
    char *cat = NULL;
    size_t ccat = 0;
    while (n_new < want) {
        if (tr.nheap == 0) {
            if (joined) {
                rill_why(why, why_len, "the text allows only %u of the %u tokens asked for",
                        n_fixed + n_new, vocab_size);
                rc = RILL_E_BAD_REQUEST;
                free(cat);
                goto out;
            }
            /* merges inside words ran out: go on across words */
            joined = true;
            if (!join_words(&tr, &ws, wstart) || !pairs_build(&tr)) {
                free(cat);
                goto out;
            }
            continue;
        }
        struct hentry e = h_pop(&tr);
        struct pair *p = &tr.pairs[e.pair];
        if (p->banned || p->count <= 0 || e.count != p->count)
            continue;
        const struct span *sa = &tr.sym[p->a], *sb = &tr.sym[p->b];
        size_t cl = (size_t)sa->len + sb->len;
        if (cl > BPE_MAX_PIECE) {
            p->banned = true;
            continue;
        }
        if (!GROW(cat, ccat, cl)) {
            free(cat);
            goto out;
        }
        memcpy(cat, tr.arena + sa->off, sa->len);
        memcpy(cat + sa->len, tr.arena + sb->off, sb->len);
        if (reserved(kind, cat, cl)) {
            p->banned = true;
            continue;
        }
        uint32_t c = sym_find(&tr, cat, cl);
        if (c == NONE) {
            if ((c = sym_add(&tr, cat, cl)) == NONE) {
                free(cat);
                goto out;
            }
            new_tok[n_new++] = c;
        }
        if (kind == TOK_GPT2) {
            if (!GROW(mlist, cmerges, n_merges + 1)) {
                free(cat);
                goto out;
            }
            mlist[n_merges][0] = p->a;
            mlist[n_merges][1] = p->b;
            n_merges++;
        }
        if (!merge_pair(&tr, e.pair, c)) {
            free(cat);
            goto out;
        }
    }
    free(cat);

    /* the vocabulary */
    out->kind = kind;
    out->n = vocab_size;
    out->tokens = calloc(vocab_size, sizeof *out->tokens);
    out->scores = calloc(vocab_size, sizeof *out->scores);
    out->types = calloc(vocab_size, sizeof *out->types);
    if (!out->tokens || !out->scores || !out->types)
        goto out;
    uint32_t id = 0;
    if (kind == TOK_SPM) {
        out->unk = 0, out->bos = 1, out->eos = 2;
        const char *sp[3] = {"<unk>", "<s>", "</s>"};
        const int32_t st[3] = {TOK_T_UNKNOWN, TOK_T_CONTROL, TOK_T_CONTROL};
        for (int i = 0; i < 3; i++, id++) {
            out->tokens[id] = dup_str(sp[i], strlen(sp[i]));
            out->types[id] = st[i];
        }
        for (int b = 0; b < 256; b++, id++) {
            char buf[8];
            snprintf(buf, sizeof buf, "<0x%02X>", b);
            out->tokens[id] = dup_str(buf, 6);
            out->types[id] = TOK_T_BYTE;
        }
        /* characters, most frequent first; scored below every merge since
         * no merge can produce a single character */
        chars = calloc(n_base + 1, sizeof *chars);
        if (!chars)
            goto out;
        for (uint32_t k = 0; k < n_base; k++)
            chars[k].sym = k;
        for (uint32_t w = 0; w < ws.nw; w++) {
            const uint8_t *s = (const uint8_t *)wtext + ws.w[w].off;
            for (uint32_t i = 0; i < ws.w[w].len;) {
                int cl = utf8_len(s + i, ws.w[w].len - i);
                if (cl == 0)
                    cl = 1;
                chars[sym_find(&tr, (const char *)s + i, (size_t)cl)].freq += ws.count[w];
                i += (uint32_t)cl;
            }
        }
        qsort_r(chars, n_base, sizeof *chars, cmp_char, &tr);
        for (uint32_t k = 0; k < n_base; k++, id++) {
            out->tokens[id] = sym_str(&tr, chars[k].sym, kind);
            out->scores[id] = -(float)(n_new + k);
            out->types[id] = TOK_T_NORMAL;
        }
        for (uint32_t k = 0; k < n_new; k++, id++) {
            out->tokens[id] = sym_str(&tr, new_tok[k], kind);
            out->scores[id] = -(float)k;
            out->types[id] = TOK_T_NORMAL;
        }
    } else {
        for (uint32_t k = 0; k < 256 + n_new; k++, id++) {
            out->tokens[id] = sym_str(&tr, k < 256 ? k : new_tok[k - 256], kind);
            out->types[id] = TOK_T_NORMAL;
            out->scores[id] = k < 256 ? 0.0f : -(float)(k - 256);
        }
        out->bos = (int32_t)id;
        out->tokens[id] = dup_str(GPT2_BOS, strlen(GPT2_BOS));
        out->types[id++] = TOK_T_CONTROL;
        out->eos = (int32_t)id;
        out->tokens[id] = dup_str(GPT2_EOS, strlen(GPT2_EOS));
        out->types[id++] = TOK_T_CONTROL;
        out->unk = -1;
        out->merges = calloc(n_merges + 1, sizeof *out->merges);
        if (!out->merges)
            goto out;
        out->n_merges = (uint32_t)n_merges;
        for (size_t m = 0; m < n_merges; m++) {
            const struct span *sa = &tr.sym[mlist[m][0]], *sb = &tr.sym[mlist[m][1]];
            char *s = malloc(2 * ((size_t)sa->len + sb->len) + 2);
            if (!s)
                goto out;
            size_t o = gpt2_map(tr.arena + sa->off, sa->len, s);
            s[o++] = ' ';
            gpt2_map(tr.arena + sb->off, sb->len, s + o);
            out->merges[m] = s;
        }
    }
    for (uint32_t i = 0; i < vocab_size; i++)
        if (!out->tokens[i])
            goto out;
    rc = 0;
out:
    if (rc < 0) {
        bpe_vocab_free(out);
        if (rc == RILL_E_NOMEM)
            rill_why(why, why_len, "out of memory");
    }
    trainer_free(&tr);
    free(ws.w), free(ws.count), free(ws.map), free(ws.occ);
    free(wtext), free(wstart), free(new_tok), free(mlist), free(chars);
    return rc;
}

void bpe_as_tok_vocab(const struct bpe_vocab *v, struct tok_vocab *tv,
                      uint32_t *scratch_lens, uint32_t *scratch_merge_lens)
{
    memset(tv, 0, sizeof *tv);
    tv->kind = v->kind;
    tv->n = v->n;
    tv->tokens = (const char *const *)v->tokens;
    for (uint32_t i = 0; i < v->n; i++)
        scratch_lens[i] = (uint32_t)strlen(v->tokens[i]);
    tv->token_lens = scratch_lens;
    tv->scores = v->scores;
    tv->types = v->types;
    tv->n_merges = v->n_merges;
    tv->merges = (const char *const *)v->merges;
    if (v->n_merges) {
        for (uint32_t i = 0; i < v->n_merges; i++)
            scratch_merge_lens[i] = (uint32_t)strlen(v->merges[i]);
        tv->merge_lens = scratch_merge_lens;
    }
    tv->bos = v->bos;
    tv->eos = v->eos;
    tv->unk = v->unk;
    tv->pad = -1;
    tv->eot = -1;
    tv->add_bos = true;
    tv->add_space_prefix = true;
    tv->pre = v->kind == TOK_GPT2 ? "gpt2" : NULL;
}
