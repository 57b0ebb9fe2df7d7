/* jinja.c — the Jinja2 subset of jinja.h: a lexer and a recursive-descent
 * parser that follow jinja2's own (lexer.py, parser.py) rule by rule, and a
 * tree-walking evaluator over Python-like values.
 *
 * Memory: a parsed template lives in one arena (its nodes and constant
 * strings), a render in another (every value it makes); values are immutable
 * once made (jinja2's sandbox forbids list.append and the like), except a
 * namespace's attributes, so they are shared freely and the whole render is
 * freed at once.  Errors unwind with longjmp to the entry point: an evaluator
 * where almost every operation can fail would otherwise test a status after
 * each call, and since all memory lives in the arena the jump leaks nothing.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "worker/jinja.h"

#define MAX_SRC  (1u << 20) /* template bytes */
#define MAX_NEST 200        /* parser recursion; nesting of values walked recursively */

/* ---- failing ---------------------------------------------------------------------------- */

struct fail {
    jmp_buf jb;
    int code;
    int raised; /* the error is raise_exception()'s */
    char msg[1024];
};

__attribute__((format(printf, 3, 4))) _Noreturn static void failf(struct fail *f, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->msg, sizeof f->msg, fmt, ap);
    va_end(ap);
    f->code = code;
    longjmp(f->jb, 1);
}

/* ---- arena -------------------------------------------------------------------------------- */

struct chunk {
    struct chunk *next;
    size_t cap, used, pad_; /* four words: data stays 16-byte aligned */
    char data[];
};

struct arena {
    struct chunk *head;
    size_t total, cap;
    struct fail *f;
};

#define BIG_ALLOC 32768

static void *aalloc(struct arena *a, size_t n)
{
    if (n > ((size_t)1 << 40))
        failf(a->f, RILL_E_TOO_LARGE, "template needs more than %zu bytes of memory", a->cap);
    n = n ? (n + 15) & ~(size_t)15 : 16;
    struct chunk *h = a->head;
    if (h && h->cap - h->used >= n) {
        void *p = h->data + h->used;
        h->used += n;
        return p;
    }
    size_t sz = n > BIG_ALLOC ? n : 65536;
    if (sz > a->cap || a->total > a->cap - sz)
        failf(a->f, RILL_E_TOO_LARGE, "template needs more than %zu bytes of memory", a->cap);
    struct chunk *c = malloc(sizeof *c + sz);
    if (!c)
        failf(a->f, RILL_E_NOMEM, "out of memory");
    c->cap = sz;
    c->used = n;
    a->total += sz;
    if (n > BIG_ALLOC && h) { /* keep the current chunk's free space in use */
        c->next = h->next;
        h->next = c;
    } else {
        c->next = h;
        a->head = c;
    }
    return c->data;
}

static void afree(struct arena *a)
{
    for (struct chunk *c = a->head, *nx; c; c = nx) {
        nx = c->next;
        free(c);
    }
    a->head = NULL;
    a->total = 0;
}

/* ---- values ------------------------------------------------------------------------------- */

enum jt { T_UNDEF, T_NONE, T_BOOL, T_INT, T_FLOAT, T_STR, T_LIST, T_DICT, T_NS, T_MACRO, T_METHOD, T_FUNC, T_LOOP };
enum lkind { L_LIST, L_TUPLE, L_GEN };

struct jstr {
    size_t len, ncp; /* bytes, code points */
    char p[];        /* NUL-terminated */
};
struct jv;
struct jlist {
    size_t n;
    int kind;
    struct jv *v;
};
struct jdict { /* dicts, and namespaces (the one mutable value) */
    size_t n, cap;
    struct jv *k, *v;
};
struct jundef {
    const char *msg; /* jinja2's message when the value is used */
};
struct jmeth {
    const struct jv *self;
    const char *name;
};
struct loopst {
    size_t index0, length;
    const struct jv *items;
    const struct jlist *changed; /* loop.changed()'s last arguments (NULL: none yet) */
};
struct node;

struct jv {
    int t;
    int markup; /* T_STR: a markupsafe.Markup (from |safe, |escape): `+` escapes a plain operand */
    union {
        bool b;
        int64_t i;
        double f;
        const struct jstr *s;
        const struct jlist *l;
        struct jdict *d;
        const struct jundef *u;
        const struct jmeth *m;
        const struct node *mac;
        int fn;
        struct loopst *lp;
    };
};

static const struct jv V_NONE = {.t = T_NONE};
static struct jv jbool(bool b) { return (struct jv){.t = T_BOOL, .b = b}; }
static struct jv jint(int64_t i) { return (struct jv){.t = T_INT, .i = i}; }
static struct jv jflt(double f) { return (struct jv){.t = T_FLOAT, .f = f}; }

static size_t count_cp(const char *p, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)p[i] & 0xC0) != 0x80;
    return c;
}

static struct jstr *snew(struct arena *a, const char *p, size_t n)
{
    struct jstr *s = aalloc(a, sizeof *s + n + 1);
    s->len = n;
    s->ncp = count_cp(p, n);
    if (n)
        memcpy(s->p, p, n);
    s->p[n] = 0;
    return s;
}

/* ---- text helpers: UTF-8 and Python's whitespace ---------------------------------------- */

static bool py_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f ||
           c == 0x3000;
}

/* The code point at p (of n > 0 bytes) and its length; a bad byte is itself. */
static uint32_t utf8_dec(const char *p, size_t n, size_t *l)
{
    const unsigned char *u = (const unsigned char *)p;
    if (u[0] < 0x80 || n < 2) {
        *l = 1;
        return u[0];
    }
    if ((u[0] & 0xE0) == 0xC0 && (u[1] & 0xC0) == 0x80) {
        *l = 2;
        return ((uint32_t)(u[0] & 0x1F) << 6) | (u[1] & 0x3F);
    }
    if ((u[0] & 0xF0) == 0xE0 && n >= 3 && (u[1] & 0xC0) == 0x80 && (u[2] & 0xC0) == 0x80) {
        *l = 3;
        return ((uint32_t)(u[0] & 0x0F) << 12) | ((uint32_t)(u[1] & 0x3F) << 6) | (u[2] & 0x3F);
    }
    if ((u[0] & 0xF8) == 0xF0 && n >= 4 && (u[1] & 0xC0) == 0x80 && (u[2] & 0xC0) == 0x80 && (u[3] & 0xC0) == 0x80) {
        *l = 4;
        return ((uint32_t)(u[0] & 0x07) << 18) | ((uint32_t)(u[1] & 0x3F) << 12) | ((uint32_t)(u[2] & 0x3F) << 6) |
               (u[3] & 0x3F);
    }
    *l = 1;
    return u[0];
}

static size_t utf8_enc(uint32_t c, char *o)
{
    if (c < 0x80) {
        o[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (char)(0xC0 | (c >> 6));
        o[1] = (char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (char)(0xE0 | (c >> 12));
        o[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    if (c > 0x10FFFF)
        c = 0xFFFD;
    o[0] = (char)(0xF0 | (c >> 18));
    o[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((c >> 6) & 0x3F));
    o[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

/* Bytes of whitespace (Python's str.isspace) at the start / end of p[0..n). */
static size_t ws_prefix(const char *p, size_t n)
{
    size_t i = 0, l;
    while (i < n && py_space(utf8_dec(p + i, n - i, &l)))
        i += l;
    return i;
}

static size_t ws_suffix(const char *p, size_t n)
{
    size_t e = n;
    while (e > 0) {
        size_t b = e - 1, l;
        while (b > 0 && e - b < 4 && ((unsigned char)p[b] & 0xC0) == 0x80)
            b--;
        uint32_t c = utf8_dec(p + b, e - b, &l);
        if (b + l != e || !py_space(c))
            break;
        e = b;
    }
    return n - e;
}

/* Byte offset of code point `k` in s (s->len if k >= s->ncp). */
static size_t cp_off(const struct jstr *s, size_t k)
{
    if (s->ncp == s->len)
        return k < s->len ? k : s->len;
    size_t i = 0, c = 0;
    while (i < s->len && c < k) {
        i++;
        while (i < s->len && ((unsigned char)s->p[i] & 0xC0) == 0x80)
            i++;
        c++;
    }
    return i;
}

/* ---- syntax tree ---------------------------------------------------------------------------- */

enum nk {
    /* expressions */
    N_CONST, N_NAME, N_ATTR, N_ITEM, N_SLICE, N_CALL, N_FILTER, N_TEST, N_BIN, N_NOT, N_NEG, N_POS, N_AND, N_OR,
    N_COND, N_LIST, N_TUPLE, N_DICT, N_CMP, N_HOLE,
    /* statements */
    S_BODY, S_TEXT, S_OUT, S_IF, S_FOR, S_SET, S_SETBLOCK, S_MACRO, S_FILTERBLK, S_BREAK, S_CONTINUE
};

enum op {
    OP_NONE, OP_ADD, OP_SUB, OP_DIV, OP_FDIV, OP_MUL, OP_MOD, OP_POW, OP_TILDE, OP_LBRACK, OP_RBRACK, OP_LPAREN,
    OP_RPAREN, OP_LBRACE, OP_RBRACE, OP_EQ, OP_NE, OP_GT, OP_GE, OP_LT, OP_LE, OP_ASSIGN, OP_DOT, OP_COLON,
    OP_PIPE, OP_COMMA, OP_SEMI, OP_IN, OP_NOTIN
};

/* One node; which fields a kind uses is said at its parser function. */
struct node {
    int kind, op, line;
    struct node *a, *b, *c, *d;
    struct node **v, **v2; /* v: items, args, bodies; v2: kwarg values, dict values */
    int n, n2;
    const char **names; /* kwarg names, targets, parameters */
    int nn;
    int *ops;           /* N_CMP: the operator before each of v */
    const char *s;      /* a name */
    struct jv val;      /* N_CONST, S_TEXT */
};

struct jinja_tmpl {
    struct arena ar;
    struct node *root;
};

/* ---- lexer ------------------------------------------------------------------------------------ */

enum tk { TK_TEXT, TK_VBEGIN, TK_VEND, TK_BBEGIN, TK_BEND, TK_NAME, TK_STR, TK_INT, TK_FLOAT, TK_OP, TK_EOF };

struct tok {
    enum tk k;
    int op, line;
    const struct jstr *s; /* TEXT, NAME, STR */
    int64_t i;
    double f;
};

struct ps {
    struct fail f;
    struct arena *ar;
    const char *src;
    size_t len;
    struct tok *t;
    size_t nt, cap, i;
    int depth;
    size_t line_pos; /* line counting: the line of line_pos is line */
    int line;
};

static int line_of(struct ps *P, size_t pos)
{
    if (pos < P->line_pos) { /* never happens in order, but stay right */
        P->line_pos = 0;
        P->line = 1;
    }
    for (; P->line_pos < pos && P->line_pos < P->len; P->line_pos++)
        P->line += P->src[P->line_pos] == '\n';
    return P->line;
}

static struct tok *push_tok(struct ps *P, enum tk k, size_t pos)
{
    if (P->nt == P->cap) {
        size_t nc = P->cap ? P->cap * 2 : 256;
        struct tok *t = aalloc(P->ar, nc * sizeof *t);
        if (P->nt)
            memcpy(t, P->t, P->nt * sizeof *t);
        P->t = t;
        P->cap = nc;
    }
    struct tok *t = &P->t[P->nt++];
    memset(t, 0, sizeof *t);
    t->k = k;
    t->line = line_of(P, pos);
    return t;
}

static bool at(const char *s, size_t n, size_t pos, const char *lit)
{
    size_t l = strlen(lit);
    return pos + l <= n && memcmp(s + pos, lit, l) == 0;
}

static bool is_hex(int c) { return (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'f'); }
static int hexv(int c) { return c <= '9' ? c - '0' : (c | 32) - 'a' + 10; }

/* A string literal's body, unescaped as Python's "unicode-escape" codec does. */
static struct jstr *unescape(struct ps *P, const char *p, size_t n, int line)
{
    char *o = aalloc(P->ar, n + 1), *w = o;
    for (size_t i = 0; i < n;) {
        if (p[i] != '\\' || i + 1 >= n) {
            *w++ = p[i++];
            continue;
        }
        char c = p[i + 1];
        i += 2;
        uint32_t cp;
        int want = 0;
        switch (c) {
        case '\n': continue;
        case '\\': *w++ = '\\'; continue;
        case '\'': *w++ = '\''; continue;
        case '"': *w++ = '"'; continue;
        case 'a': *w++ = '\a'; continue;
        case 'b': *w++ = '\b'; continue;
        case 'f': *w++ = '\f'; continue;
        case 'n': *w++ = '\n'; continue;
        case 'r': *w++ = '\r'; continue;
        case 't': *w++ = '\t'; continue;
        case 'v': *w++ = '\v'; continue;
        case 'x': want = 2; break;
        case 'u': want = 4; break;
        case 'U': want = 8; break;
        case 'N': failf(&P->f, RILL_E_UNSUPPORTED, "line %d: \\N{...} escapes are not supported", line);
        default:
            if (c >= '0' && c <= '7') {
                cp = (uint32_t)(c - '0');
                for (int k = 0; k < 2 && i < n && p[i] >= '0' && p[i] <= '7'; k++)
                    cp = cp * 8 + (uint32_t)(p[i++] - '0');
                w += utf8_enc(cp, w);
                continue;
            }
            *w++ = '\\';
            *w++ = c;
            continue;
        }
        cp = 0;
        for (int k = 0; k < want; k++) {
            if (i >= n || !is_hex(p[i]))
                failf(&P->f, RILL_E_BAD_FORMAT, "line %d: truncated \\%c escape in a string", line, c);
            cp = cp * 16 + (uint32_t)hexv(p[i++]);
        }
        if (cp > 0x10FFFF)
            failf(&P->f, RILL_E_BAD_FORMAT, "line %d: illegal Unicode character in a string", line);
        w += utf8_enc(cp, w); /* \x and \u escapes never take more bytes than they spell */
    }
    return snew(P->ar, o, (size_t)(w - o));
}

static void push_text(struct ps *P, const char *p, size_t n, size_t pos)
{
    if (!n)
        return;
    struct tok *t = push_tok(P, TK_TEXT, pos);
    t->s = snew(P->ar, p, n);
}

static const struct { const char *s; int op; } ops2[] = {
    {"//", OP_FDIV}, {"**", OP_POW}, {"==", OP_EQ}, {"!=", OP_NE}, {">=", OP_GE}, {"<=", OP_LE},
};
static const char ops1_c[] = "+-/*%~[](){}><=.:|,;";
static const int ops1_op[] = {OP_ADD, OP_SUB, OP_DIV, OP_MUL, OP_MOD, OP_TILDE, OP_LBRACK, OP_RBRACK, OP_LPAREN,
                              OP_RPAREN, OP_LBRACE, OP_RBRACE, OP_GT, OP_LT, OP_ASSIGN, OP_DOT, OP_COLON, OP_PIPE,
                              OP_COMMA, OP_SEMI};

/* The inside of {{ }} or {% %} from *pos; returns whether the end consumed
 * a newline last (jinja2's line_starting for lstrip_blocks). */
static bool lex_tag(struct ps *P, size_t *pp, bool var)
{
    const char *s = P->src;
    size_t n = P->len, pos = *pp;
    char stack[MAX_NEST];
    int bal = 0;
    for (;;) {
        if (pos >= n)
            failf(&P->f, RILL_E_BAD_FORMAT, "line %d: unexpected end of template, expected '%s'",
                  line_of(P, pos), var ? "}}" : "%}");
        if (bal == 0) {
            bool nl = false;
            size_t e = 0;
            if (var && at(s, n, pos, "-}}")) {
                e = pos + 3;
                e += ws_prefix(s + e, n - e);
                nl = s[e - 1] == '\n';
            } else if (var && at(s, n, pos, "}}")) {
                e = pos + 2;
            } else if (!var && at(s, n, pos, "+%}")) {
                e = pos + 3;
            } else if (!var && at(s, n, pos, "-%}")) {
                e = pos + 3;
                e += ws_prefix(s + e, n - e);
                nl = s[e - 1] == '\n';
            } else if (!var && at(s, n, pos, "%}")) {
                e = pos + 2;
                if (e < n && s[e] == '\n') { /* trim_blocks */
                    e++;
                    nl = true;
                }
            }
            if (e) {
                push_tok(P, var ? TK_VEND : TK_BEND, pos);
                *pp = e;
                return nl;
            }
        }
        unsigned char c = (unsigned char)s[pos];
        if (c == ' ' || (c >= '\t' && c <= '\r')) {
            pos++;
            continue;
        }
        if (c >= '0' && c <= '9') {
            char num[64];
            size_t k = 0, st = pos;
            bool isf = false;
            while (pos < n && ((s[pos] >= '0' && s[pos] <= '9') || (s[pos] == '_' && pos + 1 < n && s[pos + 1] >= '0' && s[pos + 1] <= '9'))) {
                if (s[pos] != '_' && k < sizeof num - 1)
                    num[k++] = s[pos];
                pos++;
            }
            bool after_dot = st > 0 && s[st - 1] == '.';
            if (!after_dot && pos + 1 < n && s[pos] == '.' && s[pos + 1] >= '0' && s[pos + 1] <= '9') {
                isf = true;
                if (k < sizeof num - 1)
                    num[k++] = s[pos];
                pos++;
                while (pos < n && ((s[pos] >= '0' && s[pos] <= '9') || (s[pos] == '_' && pos + 1 < n && s[pos + 1] >= '0' && s[pos + 1] <= '9'))) {
                    if (s[pos] != '_' && k < sizeof num - 1)
                        num[k++] = s[pos];
                    pos++;
                }
            }
            if (!after_dot && pos < n && (s[pos] | 32) == 'e') {
                size_t q = pos + 1;
                if (q < n && (s[q] == '+' || s[q] == '-'))
                    q++;
                if (q < n && s[q] >= '0' && s[q] <= '9') {
                    isf = true;
                    while (pos < q && k < sizeof num - 1)
                        num[k++] = s[pos++];
                    while (pos < n && ((s[pos] >= '0' && s[pos] <= '9') || s[pos] == '_')) {
                        if (s[pos] != '_' && k < sizeof num - 1)
                            num[k++] = s[pos];
                        pos++;
                    }
                }
            }
            num[k] = 0;
            if (k >= sizeof num - 1)
                failf(&P->f, RILL_E_UNSUPPORTED, "line %d: number literal too long", line_of(P, st));
            struct tok *t = push_tok(P, isf ? TK_FLOAT : TK_INT, st);
            if (isf) {
                t->f = strtod(num, NULL);
            } else {
                char *end;
                errno = 0;
                unsigned long long v = strtoull(num, &end, 10);
                if (v > INT64_MAX || errno == ERANGE)
                    failf(&P->f, RILL_E_UNSUPPORTED, "line %d: integer literal too large", t->line);
                t->i = (int64_t)v;
            }
            continue;
        }
        if (c == '_' || (unsigned)((c | 32) - 'a') < 26u) {
            size_t st = pos;
            while (pos < n && (s[pos] == '_' || (unsigned)(((unsigned char)s[pos] | 32) - 'a') < 26u || (s[pos] >= '0' && s[pos] <= '9')))
                pos++;
            struct tok *t = push_tok(P, TK_NAME, st);
            t->s = snew(P->ar, s + st, pos - st);
            continue;
        }
        if (c == '\'' || c == '"') {
            size_t st = pos++;
            while (pos < n && s[pos] != (char)c) {
                if (s[pos] == '\\' && pos + 1 < n)
                    pos++;
                pos++;
            }
            if (pos >= n)
                failf(&P->f, RILL_E_BAD_FORMAT, "line %d: unexpected char '%c' (a string that never ends)",
                      line_of(P, st), c);
            struct tok *t = push_tok(P, TK_STR, st);
            t->s = unescape(P, s + st + 1, pos - st - 1, t->line);
            pos++;
            continue;
        }
        int op = 0;
        for (size_t k = 0; k < sizeof ops2 / sizeof ops2[0] && !op; k++)
            if (at(s, n, pos, ops2[k].s)) {
                op = ops2[k].op;
                pos += 2;
            }
        if (!op) {
            const char *q = c ? strchr(ops1_c, c) : NULL;
            if (!q)
                failf(&P->f, RILL_E_BAD_FORMAT, "line %d: unexpected char '%c'", line_of(P, pos), c);
            op = ops1_op[q - ops1_c];
            pos++;
        }
        struct tok *t = push_tok(P, TK_OP, pos - 1);
        t->op = op;
        if (op == OP_LPAREN || op == OP_LBRACK || op == OP_LBRACE) {
            if (bal >= MAX_NEST)
                failf(&P->f, RILL_E_TOO_LARGE, "line %d: brackets nested too deep", t->line);
            stack[bal++] = (char)op;
        } else if (op == OP_RPAREN || op == OP_RBRACK || op == OP_RBRACE) {
            int want = op == OP_RPAREN ? OP_LPAREN : op == OP_RBRACK ? OP_LBRACK : OP_LBRACE;
            if (bal == 0)
                failf(&P->f, RILL_E_BAD_FORMAT, "line %d: unexpected '%c'", t->line, c);
            if (stack[bal - 1] != want)
                failf(&P->f, RILL_E_BAD_FORMAT, "line %d: unexpected '%c', expected '%c'", t->line, c,
                      stack[bal - 1] == OP_LPAREN ? ')' : stack[bal - 1] == OP_LBRACK ? ']' : '}');
            bal--;
        }
    }
}

static size_t skip_ws(const char *s, size_t n, size_t pos)
{
    while (pos < n && (s[pos] == ' ' || (s[pos] >= '\t' && s[pos] <= '\r')))
        pos++;
    return pos;
}

/* {% raw %}...{% endraw %} at *pp (just past "{%" and its sign): the body is
 * text as it stands; whitespace control as jinja2's raw_begin / raw_end rules.
 * Returns false (nothing consumed) when the tag is not "raw". */
static bool lex_raw(struct ps *P, size_t *pp, bool *line_starting)
{
    const char *s = P->src;
    size_t n = P->len, q = skip_ws(s, n, *pp);
    if (!at(s, n, q, "raw"))
        return false;
    q = skip_ws(s, n, q + 3);
    size_t c0;
    bool ls = false;
    if (at(s, n, q, "-%}")) {
        c0 = q + 3;
        c0 += ws_prefix(s + c0, n - c0);
        ls = s[c0 - 1] == '\n';
    } else if (at(s, n, q, "%}")) {
        c0 = q + 2;
    } else {
        return false;
    }
    for (size_t i = c0; i + 1 < n; i++) {
        if (s[i] != '{' || s[i + 1] != '%')
            continue;
        size_t j = i + 2;
        char sign = j < n && (s[j] == '-' || s[j] == '+') ? s[j] : 0;
        j = skip_ws(s, n, j + (sign ? 1 : 0));
        if (!at(s, n, j, "endraw"))
            continue;
        j = skip_ws(s, n, j + 6);
        size_t e = 0;
        bool nl = false;
        if (at(s, n, j, "+%}")) {
            e = j + 3;
        } else if (at(s, n, j, "-%}")) {
            e = j + 3;
            e += ws_prefix(s + e, n - e);
            nl = s[e - 1] == '\n';
        } else if (at(s, n, j, "%}")) {
            e = j + 2;
            if (e < n && s[e] == '\n') {
                e++;
                nl = true;
            }
        } else {
            continue;
        }
        size_t tlen = i - c0;
        if (sign == '-') {
            tlen -= ws_suffix(s + c0, tlen);
        } else if (sign != '+') {
            size_t lp = tlen;
            while (lp > 0 && s[c0 + lp - 1] != '\n')
                lp--;
            if (lp > 0 || ls) {
                size_t k = lp;
                while (k < tlen && (s[c0 + k] == ' ' || s[c0 + k] == '\t' || s[c0 + k] == '\r' ||
                                    s[c0 + k] == '\v' || s[c0 + k] == '\f'))
                    k++;
                if (k == tlen && k > lp)
                    tlen = lp;
            }
        }
        push_text(P, s + c0, tlen, c0);
        *pp = e;
        *line_starting = nl;
        return true;
    }
    failf(&P->f, RILL_E_BAD_FORMAT, "line %d: Missing end of raw directive", line_of(P, *pp));
}

static void lex(struct ps *P)
{
    const char *s = P->src;
    size_t n = P->len, pos = 0;
    bool line_starting = true;
    while (pos < n) {
        size_t st = pos;
        int kind = 0;
        for (; st + 1 < n; st++)
            if (s[st] == '{' && (s[st + 1] == '{' || s[st + 1] == '%' || s[st + 1] == '#')) {
                kind = s[st + 1];
                break;
            }
        if (!kind) {
            push_text(P, s + pos, n - pos, pos);
            break;
        }
        size_t tlen = st - pos, after = st + 2;
        char sign = after < n && (s[after] == '-' || s[after] == '+') ? s[after] : 0;
        if (sign == '-') {
            tlen -= ws_suffix(s + pos, tlen);
        } else if (sign != '+' && kind != '{') { /* lstrip_blocks */
            size_t lp = tlen;
            while (lp > 0 && s[pos + lp - 1] != '\n')
                lp--;
            if (lp > 0 || line_starting) {
                size_t k = lp;
                while (k < tlen && (s[pos + k] == ' ' || s[pos + k] == '\t' || s[pos + k] == '\r' ||
                                    s[pos + k] == '\v' || s[pos + k] == '\f'))
                    k++;
                if (k == tlen && k > lp)
                    tlen = lp;
            }
        }
        push_text(P, s + pos, tlen, pos);
        pos = after + (sign ? 1 : 0);
        if (kind == '#') {
            size_t e = 0;
            bool nl = false;
            for (size_t i = pos; i < n && !e; i++) {
                if (at(s, n, i, "+#}")) {
                    e = i + 3;
                } else if (at(s, n, i, "-#}")) {
                    e = i + 3;
                    e += ws_prefix(s + e, n - e);
                    nl = s[e - 1] == '\n';
                } else if (at(s, n, i, "#}")) {
                    e = i + 2;
                    if (e < n && s[e] == '\n') {
                        e++;
                        nl = true;
                    }
                }
            }
            if (!e)
                failf(&P->f, RILL_E_BAD_FORMAT, "line %d: missing end of comment tag", line_of(P, st));
            pos = e;
            line_starting = nl;
            continue;
        }
        if (kind == '%' && lex_raw(P, &pos, &line_starting))
            continue;
        push_tok(P, kind == '{' ? TK_VBEGIN : TK_BBEGIN, st);
        line_starting = lex_tag(P, &pos, kind == '{');
    }
    push_tok(P, TK_EOF, n);
}

/* ---- parser (jinja2's parser.py, function for function) ------------------------------------ */

static struct tok *cur(struct ps *P) { return &P->t[P->i]; }
static struct tok *peek(struct ps *P) { return &P->t[P->i + (P->t[P->i].k != TK_EOF)]; }
static void adv(struct ps *P)
{
    if (P->t[P->i].k != TK_EOF)
        P->i++;
}
static bool is_op(struct ps *P, int op) { return cur(P)->k == TK_OP && cur(P)->op == op; }
static bool is_name(struct ps *P, const char *nm) { return cur(P)->k == TK_NAME && !strcmp(cur(P)->s->p, nm); }
static bool skip_op(struct ps *P, int op)
{
    if (!is_op(P, op))
        return false;
    adv(P);
    return true;
}
static bool skip_name(struct ps *P, const char *nm)
{
    if (!is_name(P, nm))
        return false;
    adv(P);
    return true;
}

static const char *tok_desc(struct tok *t, char *buf, size_t cap)
{
    switch (t->k) {
    case TK_TEXT: return "template data";
    case TK_VBEGIN: return "begin of print statement";
    case TK_VEND: return "end of print statement";
    case TK_BBEGIN: return "begin of statement block";
    case TK_BEND: return "end of statement block";
    case TK_NAME: snprintf(buf, cap, "'%s'", t->s->p); return buf;
    case TK_STR: return "string";
    case TK_INT: return "integer";
    case TK_FLOAT: return "float";
    case TK_EOF: return "end of template";
    case TK_OP: break;
    }
    static const char *const names[] = {"", "+", "-", "/", "//", "*", "%", "**", "~", "[", "]", "(", ")", "{", "}",
                                        "==", "!=", ">", ">=", "<", "<=", "=", ".", ":", "|", ",", ";"};
    snprintf(buf, cap, "'%s'", t->op < (int)(sizeof names / sizeof names[0]) ? names[t->op] : "?");
    return buf;
}

_Noreturn static void unexpected(struct ps *P, const char *wanted)
{
    char b[96];
    struct tok *t = cur(P);
    if (wanted)
        failf(&P->f, RILL_E_BAD_FORMAT, "line %d: expected %s, got %s", t->line, wanted, tok_desc(t, b, sizeof b));
    failf(&P->f, RILL_E_BAD_FORMAT, "line %d: unexpected %s", t->line, tok_desc(t, b, sizeof b));
}

static void expect_op(struct ps *P, int op, const char *what)
{
    if (!skip_op(P, op))
        unexpected(P, what);
}

static const char *expect_name(struct ps *P)
{
    if (cur(P)->k != TK_NAME)
        unexpected(P, "name");
    const char *s = cur(P)->s->p;
    adv(P);
    return s;
}

static void expect_bend(struct ps *P)
{
    if (cur(P)->k != TK_BEND)
        unexpected(P, "end of statement block");
    adv(P);
}

static struct node *mk(struct ps *P, int kind, int line)
{
    struct node *n = aalloc(P->ar, sizeof *n);
    memset(n, 0, sizeof *n);
    n->kind = kind;
    n->line = line;
    return n;
}

/* A growable list of nodes (or names) while parsing. */
struct nvec {
    struct node **v;
    const char **s;
    int n, cap;
};
static void nv_push(struct ps *P, struct nvec *x, struct node *nd, const char *s)
{
    if (x->n == x->cap) {
        int nc = x->cap ? x->cap * 2 : 8;
        struct node **v = aalloc(P->ar, (size_t)nc * sizeof *v);
        const char **ss = aalloc(P->ar, (size_t)nc * sizeof *ss);
        if (x->n) {
            memcpy(v, x->v, (size_t)x->n * sizeof *v);
            memcpy(ss, x->s, (size_t)x->n * sizeof *ss);
        }
        x->v = v;
        x->s = ss;
        x->cap = nc;
    }
    x->v[x->n] = nd;
    x->s[x->n] = s;
    x->n++;
}

static void enter(struct ps *P)
{
    if (++P->depth > MAX_NEST)
        failf(&P->f, RILL_E_TOO_LARGE, "line %d: template nested too deep", cur(P)->line);
}

static struct node *p_expr(struct ps *P, bool condexpr);
static struct node *p_tuple(struct ps *P, bool simplified, bool condexpr, const char *extra_end, bool explicit_parens);
static struct node *p_unary(struct ps *P, bool with_filter);
static struct node *p_primary(struct ps *P);
static struct node *p_postfix(struct ps *P, struct node *nd);
static struct node *p_filter(struct ps *P, struct node *nd, bool start_inline);

/* (args, kwargs) of a call at '(' : n->v/n positional, n->names/v2/n2 keyword. */
static void p_call_args(struct ps *P, struct node *nd)
{
    expect_op(P, OP_LPAREN, "'('");
    struct nvec pos = {0}, kw = {0};
    bool first = true;
    while (!is_op(P, OP_RPAREN)) {
        if (!first) {
            expect_op(P, OP_COMMA, "','");
            if (is_op(P, OP_RPAREN))
                break;
        }
        first = false;
        if (is_op(P, OP_MUL) || is_op(P, OP_POW))
            failf(&P->f, RILL_E_UNSUPPORTED, "line %d: *args and **kwargs are not supported", cur(P)->line);
        if (cur(P)->k == TK_NAME && peek(P)->k == TK_OP && peek(P)->op == OP_ASSIGN) {
            const char *k = cur(P)->s->p;
            adv(P);
            adv(P);
            nv_push(P, &kw, p_expr(P, true), k);
        } else {
            if (kw.n)
                failf(&P->f, RILL_E_BAD_FORMAT, "line %d: invalid syntax for function call expression", cur(P)->line);
            nv_push(P, &pos, p_expr(P, true), NULL);
        }
    }
    adv(P);
    nd->v = pos.v;
    nd->n = pos.n;
    nd->v2 = kw.v;
    nd->names = kw.s;
    nd->n2 = kw.n;
}

static struct node *p_subscribed(struct ps *P)
{
    int line = cur(P)->line;
    struct node *a[3] = {NULL, NULL, NULL};
    if (is_op(P, OP_COLON)) {
        adv(P);
    } else {
        struct node *e = p_expr(P, true);
        if (!is_op(P, OP_COLON))
            return e;
        adv(P);
        a[0] = e;
    }
    if (is_op(P, OP_COLON)) {
        /* a[1] stays empty */
    } else if (!is_op(P, OP_RBRACK) && !is_op(P, OP_COMMA)) {
        a[1] = p_expr(P, true);
    }
    if (is_op(P, OP_COLON)) {
        adv(P);
        if (!is_op(P, OP_RBRACK) && !is_op(P, OP_COMMA))
            a[2] = p_expr(P, true);
    }
    struct node *nd = mk(P, N_SLICE, line);
    nd->v = aalloc(P->ar, 3 * sizeof *nd->v);
    memcpy(nd->v, a, sizeof a);
    nd->n = 3;
    return nd;
}

static struct node *p_subscript(struct ps *P, struct node *obj)
{
    struct tok *t = cur(P);
    int line = t->line;
    adv(P);
    if (t->op == OP_DOT) {
        struct tok *a = cur(P);
        if (a->k == TK_NAME) {
            adv(P);
            struct node *nd = mk(P, N_ATTR, line);
            nd->a = obj;
            nd->s = a->s->p;
            return nd;
        }
        if (a->k != TK_INT)
            unexpected(P, "name or number");
        adv(P);
        struct node *k = mk(P, N_CONST, line);
        k->val = jint(a->i);
        struct node *nd = mk(P, N_ITEM, line);
        nd->a = obj;
        nd->b = k;
        return nd;
    }
    struct nvec args = {0};
    while (!is_op(P, OP_RBRACK)) {
        if (args.n)
            expect_op(P, OP_COMMA, "','");
        nv_push(P, &args, p_subscribed(P), NULL);
    }
    adv(P);
    if (args.n == 0)
        failf(&P->f, RILL_E_BAD_FORMAT, "line %d: expected an expression in []", line);
    struct node *key;
    if (args.n == 1) {
        key = args.v[0];
    } else {
        for (int i = 0; i < args.n; i++)
            if (args.v[i]->kind == N_SLICE)
                failf(&P->f, RILL_E_UNSUPPORTED, "line %d: a slice inside a tuple subscript is not supported", line);
        key = mk(P, N_TUPLE, line);
        key->v = args.v;
        key->n = args.n;
    }
    if (key->kind == N_SLICE) {
        key->a = obj;
        return key;
    }
    struct node *nd = mk(P, N_ITEM, line);
    nd->a = obj;
    nd->b = key;
    return nd;
}

static struct node *p_postfix(struct ps *P, struct node *nd)
{
    for (;;) {
        if (is_op(P, OP_DOT) || is_op(P, OP_LBRACK)) {
            nd = p_subscript(P, nd);
        } else if (is_op(P, OP_LPAREN)) {
            struct node *c = mk(P, N_CALL, cur(P)->line);
            c->a = nd;
            p_call_args(P, c);
            nd = c;
        } else {
            return nd;
        }
    }
}

static const char *dotted_name(struct ps *P)
{
    const char *nm = expect_name(P);
    while (is_op(P, OP_DOT)) { /* jinja2 allows dotted filter names; none of ours has a dot */
        adv(P);
        const char *more = expect_name(P);
        size_t l = strlen(nm) + strlen(more) + 2;
        char *j = aalloc(P->ar, l);
        snprintf(j, l, "%s.%s", nm, more);
        nm = j;
    }
    return nm;
}

/* nd | name(args) ... ; with start_inline the first '|' was already taken. */
static struct node *p_filter(struct ps *P, struct node *nd, bool start_inline)
{
    while (is_op(P, OP_PIPE) || start_inline) {
        if (!start_inline)
            adv(P);
        start_inline = false;
        struct node *f = mk(P, N_FILTER, cur(P)->line);
        f->s = dotted_name(P);
        if (is_op(P, OP_LPAREN))
            p_call_args(P, f);
        f->a = nd;
        nd = f;
    }
    return nd;
}

static struct node *p_test(struct ps *P, struct node *nd)
{
    struct node *t = mk(P, N_TEST, cur(P)->line);
    adv(P); /* 'is' */
    if (skip_name(P, "not"))
        t->op = 1;
    t->s = dotted_name(P);
    t->a = nd;
    struct tok *c = cur(P);
    if (is_op(P, OP_LPAREN)) {
        p_call_args(P, t);
    } else if ((c->k == TK_NAME || c->k == TK_STR || c->k == TK_INT || c->k == TK_FLOAT ||
                (c->k == TK_OP && (c->op == OP_LPAREN || c->op == OP_LBRACK || c->op == OP_LBRACE))) &&
               !is_name(P, "else") && !is_name(P, "or") && !is_name(P, "and")) {
        if (is_name(P, "is"))
            failf(&P->f, RILL_E_BAD_FORMAT, "line %d: You cannot chain multiple tests with is", c->line);
        struct node *arg = p_postfix(P, p_primary(P));
        t->v = aalloc(P->ar, sizeof *t->v);
        t->v[0] = arg;
        t->n = 1;
    }
    return t;
}

static struct node *p_filter_expr(struct ps *P, struct node *nd)
{
    for (;;) {
        if (is_op(P, OP_PIPE)) {
            nd = p_filter(P, nd, false);
        } else if (is_name(P, "is")) {
            nd = p_test(P, nd);
        } else if (is_op(P, OP_LPAREN)) {
            struct node *c = mk(P, N_CALL, cur(P)->line);
            c->a = nd;
            p_call_args(P, c);
            nd = c;
        } else {
            return nd;
        }
    }
}

static struct node *p_primary(struct ps *P)
{
    struct tok *t = cur(P);
    struct node *nd;
    enter(P);
    if (t->k == TK_NAME) {
        const char *s = t->s->p;
        adv(P);
        if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "false") || !strcmp(s, "False")) {
            nd = mk(P, N_CONST, t->line);
            nd->val = jbool(s[0] == 't' || s[0] == 'T');
        } else if (!strcmp(s, "none") || !strcmp(s, "None")) {
            nd = mk(P, N_CONST, t->line);
            nd->val = V_NONE;
        } else {
            nd = mk(P, N_NAME, t->line);
            nd->s = s;
        }
    } else if (t->k == TK_STR) {
        const struct jstr *s = t->s;
        adv(P);
        while (cur(P)->k == TK_STR) { /* adjacent literals join */
            const struct jstr *b = cur(P)->s;
            struct jstr *j = aalloc(P->ar, sizeof *j + s->len + b->len + 1);
            memcpy(j->p, s->p, s->len);
            memcpy(j->p + s->len, b->p, b->len + 1);
            j->len = s->len + b->len;
            j->ncp = s->ncp + b->ncp;
            s = j;
            adv(P);
        }
        nd = mk(P, N_CONST, t->line);
        nd->val = (struct jv){.t = T_STR, .s = s};
    } else if (t->k == TK_INT || t->k == TK_FLOAT) {
        adv(P);
        nd = mk(P, N_CONST, t->line);
        nd->val = t->k == TK_INT ? jint(t->i) : jflt(t->f);
    } else if (is_op(P, OP_LPAREN)) {
        adv(P);
        nd = p_tuple(P, false, true, NULL, true);
        expect_op(P, OP_RPAREN, "')'");
    } else if (is_op(P, OP_LBRACK)) {
        adv(P);
        struct nvec items = {0};
        while (!is_op(P, OP_RBRACK)) {
            if (items.n)
                expect_op(P, OP_COMMA, "','");
            if (is_op(P, OP_RBRACK))
                break;
            nv_push(P, &items, p_expr(P, true), NULL);
        }
        adv(P);
        nd = mk(P, N_LIST, t->line);
        nd->v = items.v;
        nd->n = items.n;
    } else if (is_op(P, OP_LBRACE)) {
        adv(P);
        struct nvec ks = {0}, vs = {0};
        while (!is_op(P, OP_RBRACE)) {
            if (ks.n)
                expect_op(P, OP_COMMA, "','");
            if (is_op(P, OP_RBRACE))
                break;
            nv_push(P, &ks, p_expr(P, true), NULL);
            expect_op(P, OP_COLON, "':'");
            nv_push(P, &vs, p_expr(P, true), NULL);
        }
        adv(P);
        nd = mk(P, N_DICT, t->line);
        nd->v = ks.v;
        nd->v2 = vs.v;
        nd->n = ks.n;
    } else {
        unexpected(P, NULL);
    }
    P->depth--;
    return nd;
}

static struct node *p_unary(struct ps *P, bool with_filter)
{
    struct node *nd;
    enter(P);
    int line = cur(P)->line;
    if (is_op(P, OP_SUB) || is_op(P, OP_ADD)) {
        int k = is_op(P, OP_SUB) ? N_NEG : N_POS;
        adv(P);
        nd = mk(P, k, line);
        nd->a = p_unary(P, false);
    } else {
        nd = p_primary(P);
    }
    nd = p_postfix(P, nd);
    if (with_filter)
        nd = p_filter_expr(P, nd);
    P->depth--;
    return nd;
}

static struct node *bin(struct ps *P, int op, struct node *a, struct node *b, int line)
{
    struct node *nd = mk(P, N_BIN, line);
    nd->op = op;
    nd->a = a;
    nd->b = b;
    return nd;
}

static struct node *p_pow(struct ps *P)
{
    struct node *l = p_unary(P, true);
    while (is_op(P, OP_POW)) {
        int line = cur(P)->line;
        adv(P);
        l = bin(P, OP_POW, l, p_unary(P, true), line);
    }
    return l;
}

static struct node *p_math2(struct ps *P)
{
    struct node *l = p_pow(P);
    while (is_op(P, OP_MUL) || is_op(P, OP_DIV) || is_op(P, OP_FDIV) || is_op(P, OP_MOD)) {
        int op = cur(P)->op, line = cur(P)->line;
        adv(P);
        l = bin(P, op, l, p_pow(P), line);
    }
    return l;
}

static struct node *p_concat(struct ps *P)
{
    struct node *l = p_math2(P);
    while (is_op(P, OP_TILDE)) {
        int line = cur(P)->line;
        adv(P);
        l = bin(P, OP_TILDE, l, p_math2(P), line);
    }
    return l;
}

static struct node *p_math1(struct ps *P)
{
    struct node *l = p_concat(P);
    while (is_op(P, OP_ADD) || is_op(P, OP_SUB)) {
        int op = cur(P)->op, line = cur(P)->line;
        adv(P);
        l = bin(P, op, l, p_concat(P), line);
    }
    return l;
}

static struct node *p_compare(struct ps *P)
{
    int line = cur(P)->line;
    struct node *first = p_math1(P);
    struct nvec rest = {0};
    int ops[64], nops = 0;
    for (;;) {
        int op;
        struct tok *t = cur(P);
        if (t->k == TK_OP && (t->op == OP_EQ || t->op == OP_NE || t->op == OP_LT || t->op == OP_LE ||
                              t->op == OP_GT || t->op == OP_GE)) {
            op = t->op;
            adv(P);
        } else if (skip_name(P, "in")) {
            op = OP_IN;
        } else if (is_name(P, "not") && peek(P)->k == TK_NAME && !strcmp(peek(P)->s->p, "in")) {
            adv(P);
            adv(P);
            op = OP_NOTIN;
        } else {
            break;
        }
        if (nops == 64)
            failf(&P->f, RILL_E_TOO_LARGE, "line %d: comparison chain too long", line);
        ops[nops++] = op;
        nv_push(P, &rest, p_math1(P), NULL);
    }
    if (!nops)
        return first;
    struct node *nd = mk(P, N_CMP, line);
    nd->a = first;
    nd->v = rest.v;
    nd->n = rest.n;
    nd->ops = aalloc(P->ar, (size_t)nops * sizeof *nd->ops);
    memcpy(nd->ops, ops, (size_t)nops * sizeof *ops);
    return nd;
}

static struct node *p_not(struct ps *P)
{
    if (is_name(P, "not")) {
        int line = cur(P)->line;
        adv(P);
        enter(P);
        struct node *nd = mk(P, N_NOT, line);
        nd->a = p_not(P);
        P->depth--;
        return nd;
    }
    return p_compare(P);
}

static struct node *p_and(struct ps *P)
{
    struct node *l = p_not(P);
    while (is_name(P, "and")) {
        int line = cur(P)->line;
        adv(P);
        struct node *nd = mk(P, N_AND, line);
        nd->a = l;
        nd->b = p_not(P);
        l = nd;
    }
    return l;
}

static struct node *p_or(struct ps *P)
{
    struct node *l = p_and(P);
    while (is_name(P, "or")) {
        int line = cur(P)->line;
        adv(P);
        struct node *nd = mk(P, N_OR, line);
        nd->a = l;
        nd->b = p_and(P);
        l = nd;
    }
    return l;
}

static struct node *p_condexpr(struct ps *P)
{
    enter(P);
    struct node *e1 = p_or(P);
    while (is_name(P, "if")) {
        int line = cur(P)->line;
        adv(P);
        struct node *nd = mk(P, N_COND, line);
        nd->a = p_or(P);
        nd->b = e1;
        if (skip_name(P, "else"))
            nd->c = p_condexpr(P);
        e1 = nd;
    }
    P->depth--;
    return e1;
}

static struct node *p_expr(struct ps *P, bool condexpr)
{
    return condexpr ? p_condexpr(P) : p_or(P);
}

static bool tuple_end(struct ps *P, const char *extra_end)
{
    struct tok *t = cur(P);
    if (t->k == TK_VEND || t->k == TK_BEND || t->k == TK_EOF || (t->k == TK_OP && t->op == OP_RPAREN))
        return true;
    return extra_end && is_name(P, extra_end);
}

static struct node *p_tuple(struct ps *P, bool simplified, bool condexpr, const char *extra_end, bool explicit_parens)
{
    int line = cur(P)->line;
    struct nvec items = {0};
    bool is_tuple = false;
    for (;;) {
        if (items.n)
            expect_op(P, OP_COMMA, "','");
        if (tuple_end(P, extra_end))
            break;
        nv_push(P, &items, simplified ? p_postfix(P, p_primary(P)) : p_expr(P, condexpr), NULL);
        if (is_op(P, OP_COMMA))
            is_tuple = true;
        else
            break;
    }
    if (!is_tuple) {
        if (items.n)
            return items.v[0];
        if (!explicit_parens) {
            char b[96];
            failf(&P->f, RILL_E_BAD_FORMAT, "line %d: Expected an expression, got %s", cur(P)->line,
                  tok_desc(cur(P), b, sizeof b));
        }
    }
    struct node *nd = mk(P, N_TUPLE, line);
    nd->v = items.v;
    nd->n = items.n;
    return nd;
}

/* ---- statements ------------------------------------------------------------------------------ */

static struct node *p_body(struct ps *P, const char *const *ends);

/* Names to assign: one name (op 0), a tuple of names (op 1), ns.attr (op 2, s = attr). */
static void p_target(struct ps *P, struct node *st, bool with_ns, const char *extra_end)
{
    int line = cur(P)->line;
    if (with_ns && cur(P)->k == TK_NAME && peek(P)->k == TK_OP && peek(P)->op == OP_DOT) {
        st->names = aalloc(P->ar, sizeof *st->names);
        st->names[0] = expect_name(P);
        st->nn = 1;
        adv(P);
        st->s = expect_name(P);
        st->op = 2;
        return;
    }
    struct node *t = p_tuple(P, true, true, extra_end, false);
    if (t->kind == N_NAME) {
        st->names = aalloc(P->ar, sizeof *st->names);
        st->names[0] = t->s;
        st->nn = 1;
        return;
    }
    if (t->kind != N_TUPLE || t->n == 0)
        failf(&P->f, RILL_E_BAD_FORMAT, "line %d: can't assign to this expression", line);
    st->names = aalloc(P->ar, (size_t)t->n * sizeof *st->names);
    for (int i = 0; i < t->n; i++) {
        if (t->v[i]->kind != N_NAME)
            failf(&P->f, RILL_E_BAD_FORMAT, "line %d: can't assign to this expression", line);
        st->names[i] = t->v[i]->s;
    }
    st->nn = t->n;
    st->op = 1;
}

static const char *ends_for[] = {"endfor", "else", NULL};
static const char *ends_endfor[] = {"endfor", NULL};
static const char *ends_if[] = {"elif", "else", "endif", NULL};
static const char *ends_endif[] = {"endif", NULL};
static const char *ends_set[] = {"endset", NULL};
static const char *ends_macro[] = {"endmacro", NULL};
static const char *ends_filter[] = {"endfilter", NULL};
static const char *ends_gen[] = {"endgeneration", NULL};

static struct node *p_for(struct ps *P, int line)
{
    struct node *st = mk(P, S_FOR, line);
    p_target(P, st, false, "in");
    if (!skip_name(P, "in"))
        unexpected(P, "'in'");
    st->a = p_tuple(P, false, false, "recursive", false);
    if (skip_name(P, "if"))
        st->b = p_expr(P, true);
    if (is_name(P, "recursive"))
        failf(&P->f, RILL_E_UNSUPPORTED, "line %d: recursive loops are not supported", line);
    expect_bend(P);
    st->c = p_body(P, ends_for);
    if (skip_name(P, "else")) {
        expect_bend(P);
        st->d = p_body(P, ends_endfor);
    }
    adv(P); /* endfor */
    expect_bend(P);
    return st;
}

static struct node *p_if(struct ps *P, int line)
{
    struct node *st = mk(P, S_IF, line);
    struct nvec conds = {0}, bodies = {0};
    for (;;) {
        nv_push(P, &conds, p_tuple(P, false, false, NULL, false), NULL);
        expect_bend(P);
        nv_push(P, &bodies, p_body(P, ends_if), NULL);
        if (skip_name(P, "elif"))
            continue;
        if (skip_name(P, "else")) {
            expect_bend(P);
            st->c = p_body(P, ends_endif);
        }
        adv(P); /* endif */
        expect_bend(P);
        break;
    }
    st->v = conds.v;
    st->v2 = bodies.v;
    st->n = conds.n;
    return st;
}

static struct node *p_set(struct ps *P, int line)
{
    struct node *st = mk(P, S_SET, line);
    p_target(P, st, true, NULL);
    if (skip_op(P, OP_ASSIGN)) {
        st->a = p_tuple(P, false, true, NULL, false);
        expect_bend(P);
        return st;
    }
    if (st->op != 0)
        unexpected(P, "'='");
    st->kind = S_SETBLOCK;
    if (skip_op(P, OP_PIPE)) {
        struct node *h = mk(P, N_HOLE, line);
        st->b = p_filter(P, h, true);
    }
    expect_bend(P);
    st->a = p_body(P, ends_set);
    adv(P);
    expect_bend(P);
    return st;
}

static struct node *p_macro(struct ps *P, int line)
{
    struct node *st = mk(P, S_MACRO, line);
    st->s = expect_name(P);
    expect_op(P, OP_LPAREN, "'('");
    struct nvec ps = {0};
    bool defaults = false;
    while (!is_op(P, OP_RPAREN)) {
        if (ps.n)
            expect_op(P, OP_COMMA, "','");
        if (is_op(P, OP_RPAREN))
            break;
        const char *nm = expect_name(P);
        struct node *def = NULL;
        if (skip_op(P, OP_ASSIGN)) {
            def = p_expr(P, true);
            defaults = true;
        } else if (defaults) {
            failf(&P->f, RILL_E_BAD_FORMAT, "line %d: non-default argument follows default argument", line);
        }
        nv_push(P, &ps, def, nm);
    }
    adv(P);
    expect_bend(P);
    st->names = ps.s;
    st->v = ps.v;
    st->nn = st->n = ps.n;
    st->a = p_body(P, ends_macro);
    adv(P);
    expect_bend(P);
    return st;
}

static struct node *p_statement(struct ps *P)
{
    struct tok *t = cur(P);
    if (t->k != TK_NAME)
        failf(&P->f, RILL_E_BAD_FORMAT, "line %d: tag name expected", t->line);
    const char *nm = t->s->p;
    int line = t->line;
    adv(P);
    enter(P);
    struct node *st;
    if (!strcmp(nm, "for")) {
        st = p_for(P, line);
    } else if (!strcmp(nm, "if")) {
        st = p_if(P, line);
    } else if (!strcmp(nm, "set")) {
        st = p_set(P, line);
    } else if (!strcmp(nm, "macro")) {
        st = p_macro(P, line);
    } else if (!strcmp(nm, "filter")) {
        st = mk(P, S_FILTERBLK, line);
        struct node *h = mk(P, N_HOLE, line);
        st->b = p_filter(P, h, true);
        expect_bend(P);
        st->a = p_body(P, ends_filter);
        adv(P);
        expect_bend(P);
    } else if (!strcmp(nm, "generation")) { /* HF's assistant-mask tag: its body renders as is */
        expect_bend(P);
        st = p_body(P, ends_gen);
        adv(P);
        expect_bend(P);
    } else if (!strcmp(nm, "break") || !strcmp(nm, "continue")) {
        st = mk(P, nm[0] == 'b' ? S_BREAK : S_CONTINUE, line);
        expect_bend(P);
    } else if (!strcmp(nm, "include") || !strcmp(nm, "extends") || !strcmp(nm, "block") ||
               !strcmp(nm, "import") || !strcmp(nm, "from") || !strcmp(nm, "call") || !strcmp(nm, "with") ||
               !strcmp(nm, "autoescape") || !strcmp(nm, "do") || !strcmp(nm, "trans")) {
        failf(&P->f, RILL_E_UNSUPPORTED, "line %d: tag '%s' is not supported", line, nm);
    } else {
        failf(&P->f, RILL_E_BAD_FORMAT, "line %d: Encountered unknown tag '%s'.", line, nm);
    }
    P->depth--;
    return st;
}

static bool in_list(const char *s, const char *const *l)
{
    for (; l && *l; l++)
        if (!strcmp(s, *l))
            return true;
    return false;
}

/* Statements until a {% name %} with name in `ends` (left at the name), or
 * the end of the template when ends is NULL. */
static struct node *p_body(struct ps *P, const char *const *ends)
{
    struct node *body = mk(P, S_BODY, cur(P)->line);
    struct nvec v = {0};
    enter(P);
    for (;;) {
        struct tok *t = cur(P);
        if (t->k == TK_EOF) {
            if (ends) {
                char w[160] = "";
                for (const char *const *e = ends; *e; e++)
                    snprintf(w + strlen(w), sizeof w - strlen(w), "%s'%s'", e == ends ? "" : " or ", *e);
                failf(&P->f, RILL_E_BAD_FORMAT,
                      "line %d: Unexpected end of template. Jinja was looking for the following tags: %s.",
                      t->line, w);
            }
            break;
        }
        if (t->k == TK_TEXT) {
            struct node *x = mk(P, S_TEXT, t->line);
            x->val = (struct jv){.t = T_STR, .s = t->s};
            nv_push(P, &v, x, NULL);
            adv(P);
        } else if (t->k == TK_VBEGIN) {
            adv(P);
            struct node *x = mk(P, S_OUT, t->line);
            x->a = p_tuple(P, false, true, NULL, false);
            if (cur(P)->k != TK_VEND)
                unexpected(P, "end of print statement");
            adv(P);
            nv_push(P, &v, x, NULL);
        } else if (t->k == TK_BBEGIN) {
            adv(P);
            if (cur(P)->k == TK_NAME && in_list(cur(P)->s->p, ends))
                break;
            if (cur(P)->k == TK_NAME && !strncmp(cur(P)->s->p, "end", 3))
                failf(&P->f, RILL_E_BAD_FORMAT, "line %d: Encountered unknown tag '%s'.", cur(P)->line,
                      cur(P)->s->p);
            nv_push(P, &v, p_statement(P), NULL);
        } else {
            unexpected(P, NULL);
        }
    }
    P->depth--;
    body->v = v.v;
    body->n = v.n;
    return body;
}

/* ---- render state ------------------------------------------------------------------------- */

struct buf {
    char *p;
    size_t len, cap;
};

struct scope {
    struct scope *parent;
    size_t n, cap;
    const char **k;
    struct jv *v;
};

struct rs {
    struct fail f;
    struct arena ar;
    struct jinja_limits lim;
    uint64_t steps, iters;
    int depth, vdepth;
    struct buf *out;
    struct scope *root;
    int64_t now;
    int loopctl; /* 1 break, 2 continue: set by the statement, cleared by its loop */
    struct jv hole;
};

_Noreturn static void __attribute__((format(printf, 2, 3))) rerr(struct rs *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->f.msg, sizeof r->f.msg, fmt, ap);
    va_end(ap);
    r->f.code = RILL_E_BAD_REQUEST;
    longjmp(r->f.jb, 1);
}

static void bput(struct rs *r, struct buf *b, const char *p, size_t n)
{
    if (!n)
        return;
    if (b->cap - b->len < n) {
        if (n > r->lim.max_output || b->len > r->lim.max_output - n)
            failf(&r->f, RILL_E_TOO_LARGE, "template output over %zu bytes", r->lim.max_output);
        size_t nc = b->cap ? b->cap * 2 : 256;
        while (nc - b->len < n)
            nc *= 2;
        char *q = aalloc(&r->ar, nc);
        if (b->len)
            memcpy(q, b->p, b->len);
        b->p = q;
        b->cap = nc;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}
static void bputs(struct rs *r, struct buf *b, const char *s) { bput(r, b, s, strlen(s)); }
static void bputc(struct rs *r, struct buf *b, char c) { bput(r, b, &c, 1); }

static struct jv mkstr(struct rs *r, const char *p, size_t n) { return (struct jv){.t = T_STR, .s = snew(&r->ar, p, n)}; }
static struct jv mkcstr(struct rs *r, const char *s) { return mkstr(r, s, strlen(s)); }
static struct jv buf_str(struct rs *r, struct buf *b) { return mkstr(r, b->p, b->len); }

static struct jlist *mklist(struct rs *r, size_t n, int kind)
{
    struct jlist *l = aalloc(&r->ar, sizeof *l);
    l->n = n;
    l->kind = kind;
    l->v = n ? aalloc(&r->ar, n * sizeof *l->v) : NULL;
    return l;
}
static struct jv jlistv(const struct jlist *l) { return (struct jv){.t = T_LIST, .l = l}; }

static struct jv mkundef(struct rs *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static struct jv mkundef(struct rs *r, const char *fmt, ...)
{
    char m[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    struct jundef *u = aalloc(&r->ar, sizeof *u);
    u->msg = snew(&r->ar, m, strlen(m))->p;
    return (struct jv){.t = T_UNDEF, .u = u};
}

_Noreturn static void undef_fail(struct rs *r, struct jv u) { rerr(r, "%s", u.u->msg); }

static void vd_enter(struct rs *r)
{
    if (++r->vdepth > MAX_NEST)
        failf(&r->f, RILL_E_TOO_LARGE, "values nested more than %d deep", MAX_NEST);
}

/* Python's type(x).__name__. */
static const char *tname(struct jv v)
{
    switch (v.t) {
    case T_UNDEF: return "Undefined";
    case T_NONE: return "NoneType";
    case T_BOOL: return "bool";
    case T_INT: return "int";
    case T_FLOAT: return "float";
    case T_STR: return "str";
    case T_LIST: return v.l->kind == L_TUPLE ? "tuple" : v.l->kind == L_GEN ? "generator" : "list";
    case T_DICT: return "dict";
    case T_NS: return "Namespace";
    case T_MACRO: return "Macro";
    case T_METHOD: return "builtin_function_or_method";
    case T_FUNC: return "function";
    case T_LOOP: return "LoopContext";
    }
    return "object";
}

/* jinja2's object_type_repr: "dict object", "None", ... */
static const char *otype(struct jv v, char *b, size_t cap)
{
    if (v.t == T_NONE)
        return "None";
    if (v.t == T_NS)
        return "jinja2.utils.Namespace object";
    if (v.t == T_LOOP)
        return "jinja2.runtime.LoopContext object";
    if (v.t == T_MACRO)
        return "jinja2.runtime.Macro object";
    snprintf(b, cap, "%s object", tname(v));
    return b;
}

static bool truthy(struct jv v)
{
    switch (v.t) {
    case T_UNDEF: case T_NONE: return false;
    case T_BOOL: return v.b;
    case T_INT: return v.i != 0;
    case T_FLOAT: return v.f != 0;
    case T_STR: return v.s->len != 0;
    case T_LIST: return v.l->kind == L_GEN || v.l->n != 0;
    case T_DICT: return v.d->n != 0;
    default: return true;
    }
}

static bool is_num(struct jv v) { return v.t == T_INT || v.t == T_FLOAT || v.t == T_BOOL; }
static double num_d(struct jv v) { return v.t == T_FLOAT ? v.f : v.t == T_BOOL ? (double)v.b : (double)v.i; }
static int64_t num_i(struct jv v) { return v.t == T_BOOL ? (int64_t)v.b : v.i; }

/* Python's repr(float): the shortest digits that read back the same. */
static void float_repr(double d, char *o, size_t cap)
{
    if (isnan(d)) {
        snprintf(o, cap, "nan");
        return;
    }
    if (isinf(d)) {
        snprintf(o, cap, d < 0 ? "-inf" : "inf");
        return;
    }
    char e[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(e, sizeof e, "%.*e", prec - 1, d);
        if (strtod(e, NULL) == d)
            break;
    }
    /* e is [-]D[.DDD]e[+-]XX: take the digits and the exponent */
    char dig[24];
    int nd = 0, neg = e[0] == '-';
    const char *p = e + neg;
    for (; *p && *p != 'e'; p++)
        if (*p != '.')
            dig[nd++] = *p;
    while (nd > 1 && dig[nd - 1] == '0')
        nd--;
    dig[nd] = 0;
    int x = atoi(p + 1);
    char *w = o;
    size_t left = cap;
#define OUT(...) do { int k_ = snprintf(w, left, __VA_ARGS__); if (k_ < 0 || (size_t)k_ >= left) return; w += k_; left -= (size_t)k_; } while (0)
    if (neg)
        OUT("-");
    if (x >= 16 || x < -4) {
        OUT("%c", dig[0]);
        if (nd > 1)
            OUT(".%s", dig + 1);
        OUT("e%c%02d", x < 0 ? '-' : '+', x < 0 ? -x : x);
    } else if (x < 0) {
        OUT("0.");
        for (int i = -1; i > x; i--)
            OUT("0");
        OUT("%s", dig);
    } else {
        for (int i = 0; i <= x; i++)
            OUT("%c", i < nd ? dig[i] : '0');
        OUT(".");
        if (nd > x + 1)
            OUT("%s", dig + x + 1);
        else
            OUT("0");
    }
#undef OUT
}

static bool py_printable(uint32_t c)
{
    if (c < 0x20 || c == 0x7f || (c >= 0x80 && c <= 0xa0) || c == 0xad)
        return false;
    if (c == 0x1680 || (c >= 0x2000 && c <= 0x200f) || (c >= 0x2028 && c <= 0x202f) ||
        (c >= 0x205f && c <= 0x2064) || c == 0x3000 || c == 0xfeff || (c >= 0xd800 && c <= 0xdfff) ||
        (c >= 0xe000 && c <= 0xf8ff) || c == 0xfff9 || c == 0xfffa || c == 0xfffb)
        return false;
    return true;
}

static void str_repr(struct rs *r, struct buf *b, const struct jstr *s)
{
    char q = memchr(s->p, '\'', s->len) && !memchr(s->p, '"', s->len) ? '"' : '\'';
    bputc(r, b, q);
    for (size_t i = 0; i < s->len;) {
        size_t l;
        uint32_t c = utf8_dec(s->p + i, s->len - i, &l);
        char e[16];
        if (c == (uint32_t)q || c == '\\') {
            e[0] = '\\';
            e[1] = (char)c;
            bput(r, b, e, 2);
        } else if (c == '\n') {
            bputs(r, b, "\\n");
        } else if (c == '\r') {
            bputs(r, b, "\\r");
        } else if (c == '\t') {
            bputs(r, b, "\\t");
        } else if (!py_printable(c)) {
            snprintf(e, sizeof e, c < 0x100 ? "\\x%02x" : c < 0x10000 ? "\\u%04x" : "\\U%08x", c);
            bputs(r, b, e);
        } else {
            bput(r, b, s->p + i, l);
        }
        i += l;
    }
    bputc(r, b, q);
}

static void py_str(struct rs *r, struct buf *b, struct jv v, bool repr);

static void seq_repr(struct rs *r, struct buf *b, const struct jlist *l)
{
    if (l->kind == L_GEN) {
        bputs(r, b, "<generator object>");
        return;
    }
    bputc(r, b, l->kind == L_TUPLE ? '(' : '[');
    for (size_t i = 0; i < l->n; i++) {
        if (i)
            bputs(r, b, ", ");
        py_str(r, b, l->v[i], true);
    }
    if (l->kind == L_TUPLE && l->n == 1)
        bputc(r, b, ',');
    bputc(r, b, l->kind == L_TUPLE ? ')' : ']');
}

static void dict_repr(struct rs *r, struct buf *b, const struct jdict *d)
{
    bputc(r, b, '{');
    for (size_t i = 0; i < d->n; i++) {
        if (i)
            bputs(r, b, ", ");
        py_str(r, b, d->k[i], true);
        bputs(r, b, ": ");
        py_str(r, b, d->v[i], true);
    }
    bputc(r, b, '}');
}

/* str(v) (or repr(v)) as Python writes it. */
static void py_str(struct rs *r, struct buf *b, struct jv v, bool repr)
{
    char t[64];
    vd_enter(r);
    switch (v.t) {
    case T_UNDEF:
        if (repr)
            bputs(r, b, "Undefined");
        break;
    case T_NONE: bputs(r, b, "None"); break;
    case T_BOOL: bputs(r, b, v.b ? "True" : "False"); break;
    case T_INT: snprintf(t, sizeof t, "%lld", (long long)v.i); bputs(r, b, t); break;
    case T_FLOAT: float_repr(v.f, t, sizeof t); bputs(r, b, t); break;
    case T_STR:
        if (repr)
            str_repr(r, b, v.s);
        else
            bput(r, b, v.s->p, v.s->len);
        break;
    case T_LIST: seq_repr(r, b, v.l); break;
    case T_DICT: dict_repr(r, b, v.d); break;
    case T_NS: bputs(r, b, "<Namespace "); dict_repr(r, b, v.d); bputc(r, b, '>'); break;
    case T_MACRO: snprintf(t, sizeof t, "<Macro '%.40s'>", v.mac->s); bputs(r, b, t); break;
    case T_METHOD: snprintf(t, sizeof t, "<built-in method %.40s>", v.m->name); bputs(r, b, t); break;
    case T_FUNC: bputs(r, b, "<function>"); break;
    case T_LOOP:
        snprintf(t, sizeof t, "<LoopContext %zu/%zu>", v.lp->index0 + 1, v.lp->length);
        bputs(r, b, t);
        break;
    }
    r->vdepth--;
}

static const struct jstr *to_jstr(struct rs *r, struct jv v)
{
    if (v.t == T_STR)
        return v.s;
    struct buf b = {0};
    py_str(r, &b, v, false);
    return snew(&r->ar, b.p ? b.p : "", b.len);
}

/* ---- equality, order, membership --------------------------------------------------------------- */

static bool py_eq(struct rs *r, struct jv a, struct jv b);

static const struct jv *dict_find(struct rs *r, const struct jdict *d, struct jv k)
{
    for (size_t i = 0; i < d->n; i++)
        if (py_eq(r, d->k[i], k))
            return &d->v[i];
    return NULL;
}

static const struct jv *dict_get(const struct jdict *d, const char *k)
{
    size_t kl = strlen(k);
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t == T_STR && d->k[i].s->len == kl && !memcmp(d->k[i].s->p, k, kl))
            return &d->v[i];
    return NULL;
}

static bool py_eq(struct rs *r, struct jv a, struct jv b)
{
    if (is_num(a) && is_num(b)) {
        if (a.t != T_FLOAT && b.t != T_FLOAT)
            return num_i(a) == num_i(b);
        return num_d(a) == num_d(b);
    }
    if (a.t != b.t)
        return false;
    switch (a.t) {
    case T_UNDEF: case T_NONE: return true;
    case T_STR: return a.s->len == b.s->len && !memcmp(a.s->p, b.s->p, a.s->len);
    case T_LIST:
        if (a.l == b.l)
            return true;
        if (a.l->kind != b.l->kind || a.l->kind == L_GEN || a.l->n != b.l->n)
            return false;
        vd_enter(r);
        for (size_t i = 0; i < a.l->n; i++)
            if (!py_eq(r, a.l->v[i], b.l->v[i])) {
                r->vdepth--;
                return false;
            }
        r->vdepth--;
        return true;
    case T_DICT:
        if (a.d == b.d)
            return true;
        if (a.d->n != b.d->n)
            return false;
        vd_enter(r);
        for (size_t i = 0; i < a.d->n; i++) {
            const struct jv *o = dict_find(r, b.d, a.d->k[i]);
            if (!o || !py_eq(r, a.d->v[i], *o)) {
                r->vdepth--;
                return false;
            }
        }
        r->vdepth--;
        return true;
    case T_NS: return a.d == b.d;
    case T_MACRO: return a.mac == b.mac;
    case T_FUNC: return a.fn == b.fn;
    case T_METHOD: return a.m == b.m;
    case T_LOOP: return a.lp == b.lp;
    }
    return false;
}

static const char *cmp_sym(int op)
{
    return op == OP_LT ? "<" : op == OP_LE ? "<=" : op == OP_GT ? ">" : ">=";
}

/* a <op> b for the order operators, with Python's TypeError otherwise. */
static int py_cmp3(struct rs *r, struct jv a, struct jv b, int op)
{
    if (a.t == T_UNDEF)
        undef_fail(r, a);
    if (b.t == T_UNDEF)
        undef_fail(r, b);
    if (is_num(a) && is_num(b)) {
        if (a.t != T_FLOAT && b.t != T_FLOAT)
            return num_i(a) < num_i(b) ? -1 : num_i(a) > num_i(b);
        double x = num_d(a), y = num_d(b);
        if (isnan(x) || isnan(y))
            return 2; /* unordered: every comparison false */
        return x < y ? -1 : x > y;
    }
    if (a.t == T_STR && b.t == T_STR) {
        size_t m = a.s->len < b.s->len ? a.s->len : b.s->len;
        int c = memcmp(a.s->p, b.s->p, m);
        if (c)
            return c < 0 ? -1 : 1;
        return a.s->len < b.s->len ? -1 : a.s->len > b.s->len;
    }
    if (a.t == T_LIST && b.t == T_LIST && a.l->kind == b.l->kind && a.l->kind != L_GEN) {
        for (size_t i = 0; i < a.l->n && i < b.l->n; i++)
            if (!py_eq(r, a.l->v[i], b.l->v[i]))
                return py_cmp3(r, a.l->v[i], b.l->v[i], op);
        return a.l->n < b.l->n ? -1 : a.l->n > b.l->n;
    }
    rerr(r, "'%s' not supported between instances of '%s' and '%s'", cmp_sym(op), tname(a), tname(b));
}

static bool py_cmp(struct rs *r, struct jv a, struct jv b, int op)
{
    int c = py_cmp3(r, a, b, op);
    if (c == 2)
        return false;
    switch (op) {
    case OP_LT: return c < 0;
    case OP_LE: return c <= 0;
    case OP_GT: return c > 0;
    default: return c >= 0;
    }
}

static bool py_in(struct rs *r, struct jv a, struct jv b)
{
    switch (b.t) {
    case T_UNDEF: return false;
    case T_STR:
        if (a.t == T_UNDEF)
            undef_fail(r, a);
        if (a.t != T_STR)
            rerr(r, "'in <string>' requires string as left operand, not %s", tname(a));
        if (a.s->len == 0)
            return true;
        return memmem(b.s->p, b.s->len, a.s->p, a.s->len) != NULL;
    case T_LIST:
        for (size_t i = 0; i < b.l->n; i++)
            if (py_eq(r, b.l->v[i], a))
                return true;
        return false;
    case T_DICT: return dict_find(r, b.d, a) != NULL;
    default: rerr(r, "argument of type '%s' is not iterable", tname(b));
    }
}

/* ---- JSON out: Python's json.dumps ------------------------------------------------------------- */

struct jopt {
    const char *indent; /* NULL: one line */
    const char *item_sep, *key_sep;
    bool sort_keys, ascii;
};

static void json_str(struct rs *r, struct buf *b, const char *p, size_t n, bool ascii)
{
    bputc(r, b, '"');
    for (size_t i = 0; i < n;) {
        size_t l;
        uint32_t c = utf8_dec(p + i, n - i, &l);
        char e[16];
        switch (c) {
        case '"': bputs(r, b, "\\\""); break;
        case '\\': bputs(r, b, "\\\\"); break;
        case '\n': bputs(r, b, "\\n"); break;
        case '\r': bputs(r, b, "\\r"); break;
        case '\t': bputs(r, b, "\\t"); break;
        case '\b': bputs(r, b, "\\b"); break;
        case '\f': bputs(r, b, "\\f"); break;
        default:
            if (c < 0x20 || (ascii && c > 0x7e)) {
                if (c >= 0x10000) {
                    uint32_t v = c - 0x10000;
                    snprintf(e, sizeof e, "\\u%04x\\u%04x", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
                } else {
                    snprintf(e, sizeof e, "\\u%04x", c);
                }
                bputs(r, b, e);
            } else {
                bput(r, b, p + i, l);
            }
        }
        i += l;
    }
    bputc(r, b, '"');
}

static void json_nl(struct rs *r, struct buf *b, const struct jopt *o, int level)
{
    bputc(r, b, '\n');
    for (int i = 0; i < level; i++)
        bputs(r, b, o->indent);
}

static void json_key(struct rs *r, struct buf *b, struct jv k, const struct jopt *o)
{
    char t[64];
    switch (k.t) {
    case T_STR: json_str(r, b, k.s->p, k.s->len, o->ascii); return;
    case T_INT: snprintf(t, sizeof t, "\"%lld\"", (long long)k.i); break;
    case T_BOOL: snprintf(t, sizeof t, "\"%s\"", k.b ? "true" : "false"); break;
    case T_NONE: snprintf(t, sizeof t, "\"null\""); break;
    case T_FLOAT: t[0] = '"'; float_repr(k.f, t + 1, sizeof t - 2); strcat(t, "\""); break;
    default: rerr(r, "keys must be str, int, float, bool or None, not %s", tname(k));
    }
    bputs(r, b, t);
}

static void json_dump(struct rs *r, struct buf *b, struct jv v, const struct jopt *o, int level)
{
    char t[64];
    vd_enter(r);
    switch (v.t) {
    case T_NONE: bputs(r, b, "null"); break;
    case T_BOOL: bputs(r, b, v.b ? "true" : "false"); break;
    case T_INT: snprintf(t, sizeof t, "%lld", (long long)v.i); bputs(r, b, t); break;
    case T_FLOAT:
        if (isnan(v.f))
            bputs(r, b, "NaN");
        else if (isinf(v.f))
            bputs(r, b, v.f < 0 ? "-Infinity" : "Infinity");
        else {
            float_repr(v.f, t, sizeof t);
            bputs(r, b, t);
        }
        break;
    case T_STR: json_str(r, b, v.s->p, v.s->len, o->ascii); break;
    case T_LIST:
        if (v.l->kind == L_GEN)
            rerr(r, "Object of type generator is not JSON serializable");
        if (!v.l->n) {
            bputs(r, b, "[]");
            break;
        }
        bputc(r, b, '[');
        for (size_t i = 0; i < v.l->n; i++) {
            if (i)
                bputs(r, b, o->item_sep);
            if (o->indent)
                json_nl(r, b, o, level + 1);
            json_dump(r, b, v.l->v[i], o, level + 1);
        }
        if (o->indent)
            json_nl(r, b, o, level);
        bputc(r, b, ']');
        break;
    case T_DICT: {
        const struct jdict *d = v.d;
        if (!d->n) {
            bputs(r, b, "{}");
            break;
        }
        size_t *ord = aalloc(&r->ar, d->n * sizeof *ord);
        for (size_t i = 0; i < d->n; i++)
            ord[i] = i;
        if (o->sort_keys) { /* insertion sort: stable, and dicts here are small */
            for (size_t i = 0; i < d->n; i++)
                if (d->k[i].t != T_STR)
                    rerr(r, "'<' not supported between instances of '%s' and 'str'", tname(d->k[i]));
            for (size_t i = 1; i < d->n; i++)
                for (size_t j = i; j > 0 && py_cmp(r, d->k[ord[j]], d->k[ord[j - 1]], OP_LT); j--) {
                    size_t x = ord[j];
                    ord[j] = ord[j - 1];
                    ord[j - 1] = x;
                }
        }
        bputc(r, b, '{');
        for (size_t i = 0; i < d->n; i++) {
            if (i)
                bputs(r, b, o->item_sep);
            if (o->indent)
                json_nl(r, b, o, level + 1);
            json_key(r, b, d->k[ord[i]], o);
            bputs(r, b, o->key_sep);
            json_dump(r, b, d->v[ord[i]], o, level + 1);
        }
        if (o->indent)
            json_nl(r, b, o, level);
        bputc(r, b, '}');
        break;
    }
    default: rerr(r, "Object of type %s is not JSON serializable", tname(v));
    }
    r->vdepth--;
}

/* ---- scopes ---------------------------------------------------------------------------------------- */

static struct scope *scope_new(struct rs *r, struct scope *parent)
{
    struct scope *s = aalloc(&r->ar, sizeof *s);
    memset(s, 0, sizeof *s);
    s->parent = parent;
    return s;
}

static void scope_set(struct rs *r, struct scope *s, const char *k, struct jv v)
{
    for (size_t i = 0; i < s->n; i++)
        if (!strcmp(s->k[i], k)) {
            s->v[i] = v;
            return;
        }
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 8;
        const char **nk = aalloc(&r->ar, nc * sizeof *nk);
        struct jv *nv = aalloc(&r->ar, nc * sizeof *nv);
        if (s->n) {
            memcpy(nk, s->k, s->n * sizeof *nk);
            memcpy(nv, s->v, s->n * sizeof *nv);
        }
        s->k = nk;
        s->v = nv;
        s->cap = nc;
    }
    s->k[s->n] = k;
    s->v[s->n] = v;
    s->n++;
}

enum fn { FN_RAISE = 1, FN_STRFTIME, FN_NAMESPACE, FN_RANGE, FN_DICT, FN_OTHER };
static const struct { const char *name; int fn; } globals[] = {
    {"raise_exception", FN_RAISE}, {"strftime_now", FN_STRFTIME}, {"namespace", FN_NAMESPACE},
    {"range", FN_RANGE}, {"dict", FN_DICT}, {"lipsum", FN_OTHER}, {"cycler", FN_OTHER}, {"joiner", FN_OTHER},
};

static struct jv lookup(struct rs *r, struct scope *s, const char *k)
{
    for (; s; s = s->parent)
        for (size_t i = s->n; i-- > 0;)
            if (!strcmp(s->k[i], k))
                return s->v[i];
    for (size_t i = 0; i < sizeof globals / sizeof globals[0]; i++)
        if (!strcmp(globals[i].name, k))
            return (struct jv){.t = T_FUNC, .fn = globals[i].fn};
    return mkundef(r, "'%s' is undefined", k);
}

/* ---- dicts ---------------------------------------------------------------------------------------- */

static struct jdict *dict_new(struct rs *r, size_t cap)
{
    struct jdict *d = aalloc(&r->ar, sizeof *d);
    d->n = 0;
    d->cap = cap ? cap : 4;
    d->k = aalloc(&r->ar, d->cap * sizeof *d->k);
    d->v = aalloc(&r->ar, d->cap * sizeof *d->v);
    return d;
}

static void dict_set(struct rs *r, struct jdict *d, struct jv k, struct jv v)
{
    for (size_t i = 0; i < d->n; i++)
        if (py_eq(r, d->k[i], k)) {
            d->v[i] = v;
            return;
        }
    if (d->n == d->cap) {
        size_t nc = d->cap * 2;
        struct jv *nk = aalloc(&r->ar, nc * sizeof *nk), *nv = aalloc(&r->ar, nc * sizeof *nv);
        memcpy(nk, d->k, d->n * sizeof *nk);
        memcpy(nv, d->v, d->n * sizeof *nv);
        d->k = nk;
        d->v = nv;
        d->cap = nc;
    }
    d->k[d->n] = k;
    d->v[d->n] = v;
    d->n++;
}

/* ---- attributes and items ------------------------------------------------------------------------ */

static const char *const str_methods[] = {
    "capitalize", "casefold", "center", "count", "encode", "endswith", "expandtabs", "find", "format",
    "format_map", "index", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier", "islower",
    "isnumeric", "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower", "lstrip", "maketrans",
    "partition", "removeprefix", "removesuffix", "replace", "rfind", "rindex", "rjust", "rpartition", "rsplit",
    "rstrip", "split", "splitlines", "startswith", "strip", "swapcase", "title", "translate", "upper", "zfill", NULL};
static const char *const dict_methods[] = {"copy", "fromkeys", "get", "items", "keys", "values", NULL};
static const char *const dict_mutators[] = {"clear", "pop", "popitem", "setdefault", "update", NULL};
static const char *const list_methods[] = {"copy", "count", "index", NULL};
static const char *const list_mutators[] = {"append", "clear", "extend", "insert", "pop", "remove", "reverse", "sort", NULL};

static struct jv mkmeth(struct rs *r, struct jv self, const char *name)
{
    struct jv *s = aalloc(&r->ar, sizeof *s);
    *s = self;
    struct jmeth *m = aalloc(&r->ar, sizeof *m);
    m->self = s;
    m->name = name;
    return (struct jv){.t = T_METHOD, .m = m};
}

/* Python's getattr(obj, name) as the sandbox allows it; ok=false when there
 * is no such attribute (the caller then tries obj[name] or gives Undefined). */
static struct jv py_getattr(struct rs *r, struct jv obj, const char *name, bool *ok)
{
    *ok = true;
    const char *const *meth = NULL, *const *mut = NULL;
    switch (obj.t) {
    case T_STR: meth = str_methods; break;
    case T_DICT: meth = dict_methods; mut = dict_mutators; break;
    case T_LIST:
        if (obj.l->kind == L_LIST) {
            meth = list_methods;
            mut = list_mutators;
        } else if (obj.l->kind == L_TUPLE) {
            meth = list_methods + 1;
        }
        break;
    case T_NS: {
        const struct jv *v = dict_get(obj.d, name);
        if (v)
            return *v;
        break;
    }
    case T_LOOP: {
        const struct loopst *lp = obj.lp;
        size_t i = lp->index0, n = lp->length;
        if (!strcmp(name, "index")) return jint((int64_t)i + 1);
        if (!strcmp(name, "index0")) return jint((int64_t)i);
        if (!strcmp(name, "revindex")) return jint((int64_t)(n - i));
        if (!strcmp(name, "revindex0")) return jint((int64_t)(n - i - 1));
        if (!strcmp(name, "first")) return jbool(i == 0);
        if (!strcmp(name, "last")) return jbool(i + 1 == n);
        if (!strcmp(name, "length")) return jint((int64_t)n);
        if (!strcmp(name, "depth")) return jint(1);
        if (!strcmp(name, "depth0")) return jint(0);
        if (!strcmp(name, "previtem"))
            return i > 0 ? lp->items[i - 1] : mkundef(r, "there is no previous item");
        if (!strcmp(name, "nextitem"))
            return i + 1 < n ? lp->items[i + 1] : mkundef(r, "there is no next item");
        if (!strcmp(name, "cycle") || !strcmp(name, "changed"))
            return mkmeth(r, obj, name);
        break;
    }
    default: break;
    }
    if (meth && in_list(name, meth))
        return mkmeth(r, obj, name);
    if (mut && in_list(name, mut))
        return mkundef(r, "access to attribute '%s' of '%s' object is unsafe.", name, tname(obj));
    *ok = false;
    return V_NONE;
}

static struct jv undef_attr(struct rs *r, struct jv obj, const char *name)
{
    char b[64];
    return mkundef(r, "'%s' has no attribute '%s'", otype(obj, b, sizeof b), name);
}

/* obj.name (jinja2's Environment.getattr: the attribute, then obj[name]). */
static struct jv get_attr(struct rs *r, struct jv obj, const char *name)
{
    if (obj.t == T_UNDEF)
        undef_fail(r, obj);
    if (name[0] == '_' && obj.t != T_DICT)
        return mkundef(r, "access to attribute '%s' of '%s' object is unsafe.", name, tname(obj));
    bool ok;
    struct jv v = py_getattr(r, obj, name, &ok);
    if (ok)
        return v;
    if (obj.t == T_DICT) {
        const struct jv *x = dict_get(obj.d, name);
        if (x)
            return *x;
    }
    return undef_attr(r, obj, name);
}

static bool int_like(struct jv v) { return v.t == T_INT || v.t == T_BOOL; }

/* obj[key] (jinja2's Environment.getitem: the item, then the attribute if
 * key is a string). */
static struct jv get_item(struct rs *r, struct jv obj, struct jv key)
{
    char b[64];
    if (obj.t == T_UNDEF)
        undef_fail(r, obj);
    if (obj.t == T_DICT) {
        const struct jv *x = dict_find(r, obj.d, key);
        if (x)
            return *x;
    } else if ((obj.t == T_LIST && obj.l->kind != L_GEN) || obj.t == T_STR) {
        if (int_like(key)) {
            int64_t n = obj.t == T_LIST ? (int64_t)obj.l->n : (int64_t)obj.s->ncp, i = num_i(key);
            if (i < 0)
                i += n;
            if (i >= 0 && i < n) {
                if (obj.t == T_LIST)
                    return obj.l->v[i];
                size_t o = cp_off(obj.s, (size_t)i), e = cp_off(obj.s, (size_t)i + 1);
                return mkstr(r, obj.s->p + o, e - o);
            }
        }
    }
    if (key.t == T_STR) {
        bool ok;
        struct jv v = py_getattr(r, obj, key.s->p, &ok);
        if (ok)
            return v;
        return undef_attr(r, obj, key.s->p);
    }
    struct buf kb = {0};
    py_str(r, &kb, key, true);
    bputc(r, &kb, 0);
    return mkundef(r, "%s has no element %s", otype(obj, b, sizeof b), kb.p);
}

/* Python's slice indices for a sequence of n. */
static size_t slice_idx(struct rs *r, struct jv obj, const struct node *sl, struct scope *s, int64_t n,
                        int64_t *start, int64_t *step);
static struct jv eval(struct rs *r, const struct node *nd, struct scope *s);

static struct jv do_slice(struct rs *r, struct jv obj, const struct node *sl, struct scope *s)
{
    if (obj.t == T_UNDEF)
        undef_fail(r, obj);
    int64_t n;
    if (obj.t == T_STR)
        n = (int64_t)obj.s->ncp;
    else if (obj.t == T_LIST && obj.l->kind != L_GEN)
        n = (int64_t)obj.l->n;
    else {
        char b[64];
        return mkundef(r, "%s has no element slice", otype(obj, b, sizeof b));
    }
    int64_t start, step;
    size_t cnt = slice_idx(r, obj, sl, s, n, &start, &step);
    if (obj.t == T_LIST) {
        struct jlist *l = mklist(r, cnt, obj.l->kind);
        for (size_t i = 0; i < cnt; i++)
            l->v[i] = obj.l->v[start + (int64_t)i * step];
        return jlistv(l);
    }
    if (step == 1) {
        size_t o = cp_off(obj.s, (size_t)start), e = cp_off(obj.s, (size_t)start + cnt);
        return mkstr(r, obj.s->p + o, e - o);
    }
    struct buf b = {0};
    for (size_t i = 0; i < cnt; i++) {
        size_t k = (size_t)(start + (int64_t)i * step);
        size_t o = cp_off(obj.s, k), e = cp_off(obj.s, k + 1);
        bput(r, &b, obj.s->p + o, e - o);
    }
    return mkstr(r, b.p ? b.p : "", b.len);
}

static size_t slice_idx(struct rs *r, struct jv obj, const struct node *sl, struct scope *s, int64_t n,
                        int64_t *start, int64_t *stepp)
{
    (void)obj;
    struct jv v[3];
    for (int i = 0; i < 3; i++) {
        v[i] = sl->v[i] ? eval(r, sl->v[i], s) : V_NONE;
        if (v[i].t == T_UNDEF)
            undef_fail(r, v[i]);
        if (v[i].t != T_NONE && !int_like(v[i]))
            rerr(r, "slice indices must be integers or None or have an __index__ method");
    }
    int64_t step = v[2].t == T_NONE ? 1 : num_i(v[2]);
    if (step == 0)
        rerr(r, "slice step cannot be zero");
    int64_t lo, hi;
    if (step > 0) {
        lo = v[0].t == T_NONE ? 0 : num_i(v[0]);
        hi = v[1].t == T_NONE ? n : num_i(v[1]);
        if (lo < 0) lo = lo + n < 0 ? 0 : lo + n;
        if (lo > n) lo = n;
        if (hi < 0) hi = hi + n < 0 ? 0 : hi + n;
        if (hi > n) hi = n;
        *start = lo;
        *stepp = step;
        return hi > lo ? (size_t)((hi - lo + step - 1) / step) : 0;
    }
    lo = v[0].t == T_NONE ? n - 1 : num_i(v[0]);
    hi = v[1].t == T_NONE ? -1 : num_i(v[1]);
    if (v[0].t != T_NONE) {
        if (lo < 0) lo = lo + n < 0 ? -1 : lo + n;
        if (lo >= n) lo = n - 1;
    }
    if (v[1].t != T_NONE) {
        if (hi < 0) hi = hi + n < 0 ? -1 : hi + n;
        if (hi >= n) hi = n - 1;
    }
    *start = lo;
    *stepp = step;
    return lo > hi ? (size_t)((lo - hi - step - 1) / -step) : 0;
}

/* The items a for loop (or list()) goes through. */
static const struct jlist *iter_list(struct rs *r, struct jv v)
{
    switch (v.t) {
    case T_UNDEF: return mklist(r, 0, L_LIST);
    case T_LIST: return v.l;
    case T_DICT: {
        struct jlist *l = mklist(r, v.d->n, L_LIST);
        memcpy(l->v, v.d->k, v.d->n * sizeof *l->v);
        return l;
    }
    case T_STR: {
        struct jlist *l = mklist(r, v.s->ncp, L_LIST);
        for (size_t i = 0, o = 0; i < v.s->ncp; i++) {
            size_t e = o + 1;
            while (e < v.s->len && ((unsigned char)v.s->p[e] & 0xC0) == 0x80)
                e++;
            l->v[i] = mkstr(r, v.s->p + o, e - o);
            o = e;
        }
        return l;
    }
    default: rerr(r, "'%s' object is not iterable", tname(v));
    }
}

/* ---- calls: arguments ------------------------------------------------------------------------- */

struct args {
    struct jv *v;
    int n;
    const char **kn;
    struct jv *kv;
    int nk;
};

static bool arg(const struct args *a, int pos, const char *name, struct jv *out)
{
    if (pos >= 0 && pos < a->n) {
        *out = a->v[pos];
        return true;
    }
    for (int i = 0; name && i < a->nk; i++)
        if (!strcmp(a->kn[i], name)) {
            *out = a->kv[i];
            return true;
        }
    return false;
}

static struct jv arg_or(const struct args *a, int pos, const char *name, struct jv dflt)
{
    struct jv v;
    return arg(a, pos, name, &v) ? v : dflt;
}

static const struct jstr *arg_str(struct rs *r, const struct args *a, int pos, const char *name, const char *what)
{
    struct jv v;
    if (!arg(a, pos, name, &v) || v.t == T_NONE)
        return NULL;
    if (v.t != T_STR)
        rerr(r, "%s arg must be None or str", what);
    return v.s;
}

_Noreturn static void unsupported(struct rs *r, const char *what, const char *name)
{
    failf(&r->f, RILL_E_UNSUPPORTED, "%s '%s' is not supported", what, name);
}

/* ---- strings ------------------------------------------------------------------------------------ */

static bool in_chars(uint32_t c, const struct jstr *chars)
{
    if (!chars)
        return py_space(c);
    for (size_t i = 0, l; i < chars->len; i += l)
        if (utf8_dec(chars->p + i, chars->len - i, &l) == c)
            return true;
    return false;
}

/* str.strip / lstrip / rstrip: mode 1 left, 2 right, 3 both. */
static struct jv py_strip(struct rs *r, const struct jstr *s, const struct jstr *chars, int mode)
{
    size_t b = 0, e = s->len, l;
    if (mode & 1)
        while (b < e && in_chars(utf8_dec(s->p + b, e - b, &l), chars))
            b += l;
    if (mode & 2)
        while (e > b) {
            size_t k = e - 1;
            while (k > b && ((unsigned char)s->p[k] & 0xC0) == 0x80)
                k--;
            if (!in_chars(utf8_dec(s->p + k, e - k, &l), chars))
                break;
            e = k;
        }
    return mkstr(r, s->p + b, e - b);
}

/* Case mapping for the scripts chat text mostly uses: ASCII, Latin-1, Latin
 * Extended-A, Greek, Cyrillic (Python maps all of Unicode; beyond these a
 * letter is left as it is). */
static uint32_t cp_upper(uint32_t c)
{
    if (c >= 'a' && c <= 'z') return c - 32;
    if (c < 0xb5) return c;
    if (c == 0xb5) return 0x39c;
    if ((c >= 0xe0 && c <= 0xfe && c != 0xf7)) return c - 32;
    if (c == 0xff) return 0x178;
    if (c >= 0x100 && c <= 0x17f) {
        if (c == 0x131) return 'I';
        if (c == 0x17f) return 'S';
        if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e)) return (c & 1) ? c : c - 1;
        if (c == 0x138 || c == 0x149) return c;
        return (c & 1) ? c - 1 : c;
    }
    if (c >= 0x3b1 && c <= 0x3c9 && c != 0x3c2) return c - 32;
    if (c == 0x3c2) return 0x3a3;
    if (c == 0x3ac) return 0x386;
    if (c >= 0x3ad && c <= 0x3af) return c - 37;
    if (c == 0x3cc) return 0x38c;
    if (c == 0x3cd || c == 0x3ce) return c - 63;
    if (c >= 0x430 && c <= 0x44f) return c - 32;
    if (c >= 0x450 && c <= 0x45f) return c - 80;
    return c;
}

static uint32_t cp_lower(uint32_t c)
{
    if (c >= 'A' && c <= 'Z') return c + 32;
    if (c < 0xc0) return c;
    if (c >= 0xc0 && c <= 0xde && c != 0xd7) return c + 32;
    if (c == 0x178) return 0xff;
    if (c >= 0x100 && c <= 0x17f) {
        if (c == 0x130) return 'i';
        if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e)) return (c & 1) ? c + 1 : c;
        if (c == 0x131 || c == 0x138 || c == 0x149 || c == 0x17f) return c;
        return (c & 1) ? c : c + 1;
    }
    if (c >= 0x391 && c <= 0x3a9 && c != 0x3a2) return c + 32;
    if (c == 0x386) return 0x3ac;
    if (c >= 0x388 && c <= 0x38a) return c + 37;
    if (c == 0x38c) return 0x3cc;
    if (c == 0x38e || c == 0x38f) return c + 63;
    if (c >= 0x410 && c <= 0x42f) return c + 32;
    if (c >= 0x400 && c <= 0x40f) return c + 80;
    return c;
}

static bool cp_cased(uint32_t c) { return cp_upper(c) != c || cp_lower(c) != c || c == 0xdf; }

static struct jv py_case(struct rs *r, const struct jstr *s, int how)
{
    /* how: 0 lower, 1 upper, 2 capitalize, 3 str.title, 4 jinja2's title filter */
    struct buf b = {0};
    bool prev_cased = false, word_start = true;
    for (size_t i = 0, l; i < s->len; i += l) {
        uint32_t c = utf8_dec(s->p + i, s->len - i, &l);
        bool up;
        switch (how) {
        case 0: up = false; break;
        case 1: up = true; break;
        case 2: up = i == 0; break;
        case 3: up = !prev_cased; break;
        default: up = word_start; break;
        }
        char e[8];
        if (up && c == 0xdf) { /* ß */
            bputs(r, &b, how == 1 ? "SS" : "Ss");
        } else {
            uint32_t m = up ? cp_upper(c) : cp_lower(c);
            if (m == c)
                bput(r, &b, s->p + i, l);
            else
                bput(r, &b, e, utf8_enc(m, e));
        }
        prev_cased = cp_cased(c);
        if (how == 4)
            word_start = c == ' ' || (c >= '\t' && c <= '\r') || c == '-' || c == '(' || c == '{' || c == '[' ||
                         c == '<';
    }
    return mkstr(r, b.p ? b.p : "", b.len);
}

static struct jv py_replace(struct rs *r, const struct jstr *s, const struct jstr *old, const struct jstr *new,
                            int64_t count)
{
    struct buf b = {0};
    size_t i = 0;
    int64_t done = 0;
    if (old->len == 0) {
        while (i <= s->len) {
            if (count >= 0 && done >= count) {
                bput(r, &b, s->p + i, s->len - i);
                break;
            }
            bput(r, &b, new->p, new->len);
            done++;
            if (i == s->len)
                break;
            size_t e = i + 1;
            while (e < s->len && ((unsigned char)s->p[e] & 0xC0) == 0x80)
                e++;
            bput(r, &b, s->p + i, e - i);
            i = e;
        }
        return mkstr(r, b.p ? b.p : "", b.len);
    }
    while (i < s->len) {
        const char *f = count >= 0 && done >= count ? NULL : memmem(s->p + i, s->len - i, old->p, old->len);
        if (!f) {
            bput(r, &b, s->p + i, s->len - i);
            break;
        }
        bput(r, &b, s->p + i, (size_t)(f - (s->p + i)));
        bput(r, &b, new->p, new->len);
        i = (size_t)(f - s->p) + old->len;
        done++;
    }
    return mkstr(r, b.p ? b.p : "", b.len);
}

static struct jv py_split(struct rs *r, const struct jstr *s, const struct jstr *sep, int64_t maxsplit, bool right)
{
    struct jv parts[1];
    size_t n = 0, cap = 8;
    struct jv *v = aalloc(&r->ar, cap * sizeof *v);
    (void)parts;
#define PUSH(p_, l_) do { if (n == cap) { struct jv *nv_ = aalloc(&r->ar, cap * 2 * sizeof *nv_); memcpy(nv_, v, n * sizeof *v); v = nv_; cap *= 2; } v[n++] = mkstr(r, (p_), (l_)); } while (0)
    if (!sep) {
        if (right && maxsplit >= 0)
            unsupported(r, "method", "str.rsplit without a separator");
        size_t i = 0, l;
        int64_t done = 0;
        for (;;) {
            while (i < s->len && py_space(utf8_dec(s->p + i, s->len - i, &l)))
                i += l;
            if (i >= s->len)
                break;
            if (maxsplit >= 0 && done >= maxsplit) {
                PUSH(s->p + i, s->len - i);
                break;
            }
            size_t st = i;
            while (i < s->len && !py_space(utf8_dec(s->p + i, s->len - i, &l)))
                i += l;
            PUSH(s->p + st, i - st);
            done++;
        }
    } else {
        if (sep->len == 0)
            rerr(r, "empty separator");
        if (!right) {
            size_t i = 0;
            int64_t done = 0;
            for (;;) {
                const char *f = maxsplit >= 0 && done >= maxsplit ? NULL : memmem(s->p + i, s->len - i, sep->p, sep->len);
                if (!f) {
                    PUSH(s->p + i, s->len - i);
                    break;
                }
                PUSH(s->p + i, (size_t)(f - (s->p + i)));
                i = (size_t)(f - s->p) + sep->len;
                done++;
            }
        } else { /* from the right, then reversed */
            size_t e = s->len;
            int64_t done = 0;
            for (;;) {
                size_t k = e;
                bool found = false;
                if (!(maxsplit >= 0 && done >= maxsplit))
                    while (k >= sep->len) {
                        if (!memcmp(s->p + k - sep->len, sep->p, sep->len)) {
                            found = true;
                            break;
                        }
                        k--;
                    }
                if (!found) {
                    PUSH(s->p, e);
                    break;
                }
                PUSH(s->p + k, e - k);
                e = k - sep->len;
                done++;
            }
            for (size_t i = 0; i < n / 2; i++) {
                struct jv t = v[i];
                v[i] = v[n - 1 - i];
                v[n - 1 - i] = t;
            }
        }
    }
#undef PUSH
    struct jlist *l = mklist(r, 0, L_LIST);
    l->n = n;
    l->v = v;
    return jlistv(l);
}

static bool affix(struct rs *r, const struct jstr *s, struct jv x, bool end)
{
    if (x.t == T_LIST && x.l->kind == L_TUPLE) {
        for (size_t i = 0; i < x.l->n; i++)
            if (affix(r, s, x.l->v[i], end))
                return true;
        return false;
    }
    if (x.t != T_STR)
        rerr(r, "%s first arg must be str or a tuple of str, not %s", end ? "endswith" : "startswith", tname(x));
    if (x.s->len > s->len)
        return false;
    return !memcmp(s->p + (end ? s->len - x.s->len : 0), x.s->p, x.s->len);
}

/* The str methods templates call, one branch each (as call_filter). */
static struct jv str_method(struct rs *r, const struct jstr *s, const char *m, const struct args *a)
{
    struct jv x;
    if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip"))
        return py_strip(r, s, arg_str(r, a, 0, NULL, m), m[0] == 'l' ? 1 : m[0] == 'r' ? 2 : 3);
    if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
        if (!arg(a, 0, NULL, &x))
            rerr(r, "%s() takes at least 1 argument (0 given)", m);
        if (a->n > 1)
            unsupported(r, "argument", "start/end of startswith/endswith");
        return jbool(affix(r, s, x, m[0] == 'e'));
    }
    if (!strcmp(m, "split") || !strcmp(m, "rsplit")) {
        struct jv ms = arg_or(a, 1, "maxsplit", jint(-1));
        if (!int_like(ms))
            rerr(r, "'%s' object cannot be interpreted as an integer", tname(ms));
        return py_split(r, s, arg_str(r, a, 0, "sep", "sep"), num_i(ms), m[0] == 'r');
    }
    if (!strcmp(m, "upper")) return py_case(r, s, 1);
    if (!strcmp(m, "lower") || !strcmp(m, "casefold")) return py_case(r, s, 0);
    if (!strcmp(m, "capitalize")) return py_case(r, s, 2);
    if (!strcmp(m, "title")) return py_case(r, s, 3);
    if (!strcmp(m, "replace")) {
        struct jv o, n2;
        if (!arg(a, 0, NULL, &o) || !arg(a, 1, NULL, &n2) || o.t != T_STR || n2.t != T_STR)
            rerr(r, "replace() arguments must be str");
        struct jv c = arg_or(a, 2, "count", jint(-1));
        return py_replace(r, s, o.s, n2.s, int_like(c) ? num_i(c) : -1);
    }
    if (!strcmp(m, "find") || !strcmp(m, "rfind") || !strcmp(m, "index") || !strcmp(m, "rindex") || !strcmp(m, "count")) {
        if (!arg(a, 0, NULL, &x) || x.t != T_STR)
            rerr(r, "must be str, not %s", tname(x));
        if (a->n > 1)
            unsupported(r, "argument", "start/end of find/count");
        if (m[0] == 'c') {
            if (!x.s->len)
                return jint((int64_t)s->ncp + 1);
            int64_t c = 0;
            for (const char *p = s->p, *f; (f = memmem(p, s->len - (size_t)(p - s->p), x.s->p, x.s->len)); p = f + x.s->len)
                c++;
            return jint(c);
        }
        const char *f = NULL;
        if (m[0] != 'r') {
            f = memmem(s->p, s->len, x.s->p, x.s->len);
        } else {
            for (size_t k = s->len + 1; k-- > 0 && !f;)
                if (k + x.s->len <= s->len && !memcmp(s->p + k, x.s->p, x.s->len))
                    f = s->p + k;
        }
        if (!f) {
            if (!strcmp(m, "index") || !strcmp(m, "rindex"))
                rerr(r, "substring not found");
            return jint(-1);
        }
        return jint((int64_t)count_cp(s->p, (size_t)(f - s->p)));
    }
    if (!strcmp(m, "join")) {
        if (!arg(a, 0, NULL, &x))
            rerr(r, "join() takes exactly one argument (0 given)");
        const struct jlist *l = iter_list(r, x);
        struct buf b = {0};
        for (size_t i = 0; i < l->n; i++) {
            if (l->v[i].t != T_STR)
                rerr(r, "sequence item %zu: expected str instance, %s found", i, tname(l->v[i]));
            if (i)
                bput(r, &b, s->p, s->len);
            bput(r, &b, l->v[i].s->p, l->v[i].s->len);
        }
        return mkstr(r, b.p ? b.p : "", b.len);
    }
    if (!strcmp(m, "removeprefix") || !strcmp(m, "removesuffix")) {
        if (!arg(a, 0, NULL, &x) || x.t != T_STR)
            rerr(r, "%s() argument must be str", m);
        if (affix(r, s, x, m[6] == 's'))
            return m[6] == 's' ? mkstr(r, s->p, s->len - x.s->len) : mkstr(r, s->p + x.s->len, s->len - x.s->len);
        return (struct jv){.t = T_STR, .s = s};
    }
    if (!strcmp(m, "splitlines")) {
        struct buf dummy = {0};
        (void)dummy;
        size_t n = 0, cap = 8, i = 0, st = 0;
        struct jv *v = aalloc(&r->ar, cap * sizeof *v);
        while (i < s->len) {
            size_t l;
            uint32_t c = utf8_dec(s->p + i, s->len - i, &l);
            bool br = c == '\n' || c == '\r' || c == '\v' || c == '\f' || (c >= 0x1c && c <= 0x1e) || c == 0x85 ||
                      c == 0x2028 || c == 0x2029;
            if (!br) {
                i += l;
                continue;
            }
            if (n == cap) {
                struct jv *nv = aalloc(&r->ar, cap * 2 * sizeof *nv);
                memcpy(nv, v, n * sizeof *v);
                v = nv;
                cap *= 2;
            }
            v[n++] = mkstr(r, s->p + st, i - st);
            i += l;
            if (c == '\r' && i < s->len && s->p[i] == '\n')
                i++;
            st = i;
        }
        if (st < s->len) {
            if (n == cap) {
                struct jv *nv = aalloc(&r->ar, (cap + 1) * sizeof *nv);
                memcpy(nv, v, n * sizeof *v);
                v = nv;
            }
            v[n++] = mkstr(r, s->p + st, s->len - st);
        }
        struct jlist *l = mklist(r, 0, L_LIST);
        l->n = n;
        l->v = v;
        return jlistv(l);
    }
    if (!strcmp(m, "format")) { /* {} {0} {name} and {{ }}; no format specs */
        struct buf b = {0};
        int autonum = 0;
        for (size_t i = 0; i < s->len; i++) {
            char c = s->p[i];
            if ((c == '{' || c == '}') && i + 1 < s->len && s->p[i + 1] == c) {
                bputc(r, &b, c);
                i++;
                continue;
            }
            if (c == '}')
                rerr(r, "Single '}' encountered in format string");
            if (c != '{') {
                bputc(r, &b, c);
                continue;
            }
            size_t e = i + 1;
            while (e < s->len && s->p[e] != '}')
                e++;
            if (e >= s->len)
                rerr(r, "Single '{' encountered in format string");
            const char *f = s->p + i + 1;
            size_t fl = e - i - 1;
            struct jv v;
            if (memchr(f, ':', fl) || memchr(f, '!', fl) || memchr(f, '.', fl) || memchr(f, '[', fl))
                unsupported(r, "format", "specs, conversions and fields in str.format");
            if (fl == 0 || (f[0] >= '0' && f[0] <= '9')) {
                int idx = fl ? atoi(f) : autonum++;
                if (!arg(a, idx, NULL, &v) || idx >= a->n)
                    rerr(r, "Replacement index %d out of range for positional args tuple", idx);
            } else {
                char nm[128];
                snprintf(nm, sizeof nm, "%.*s", (int)(fl < 127 ? fl : 127), f);
                if (!arg(a, -1, nm, &v))
                    rerr(r, "'%s'", nm);
            }
            py_str(r, &b, v, false);
            i = e;
        }
        return mkstr(r, b.p ? b.p : "", b.len);
    }
    if (!strncmp(m, "is", 2) && m[2]) {
        bool all = s->len > 0, any_cased = false;
        for (size_t i = 0; i < s->len; i++) {
            unsigned char c = (unsigned char)s->p[i];
            bool d = c >= '0' && c <= '9', lo = c >= 'a' && c <= 'z', up = c >= 'A' && c <= 'Z';
            bool sp = c == ' ' || (c >= '\t' && c <= '\r');
            if (!strcmp(m, "isdigit") || !strcmp(m, "isdecimal") || !strcmp(m, "isnumeric")) all &= d;
            else if (!strcmp(m, "isalpha")) all &= lo || up;
            else if (!strcmp(m, "isalnum")) all &= lo || up || d;
            else if (!strcmp(m, "isspace")) all &= sp;
            else if (!strcmp(m, "islower")) { all &= !up; any_cased |= lo; }
            else if (!strcmp(m, "isupper")) { all &= !lo; any_cased |= up; }
            else unsupported(r, "method", m);
        }
        if (!strcmp(m, "islower") || !strcmp(m, "isupper"))
            all = all && any_cased;
        return jbool(all);
    }
    unsupported(r, "method str.", m);
}

/* ---- tests ---------------------------------------------------------------------------------------- */

static bool call_test(struct rs *r, const char *name, struct jv v, const struct args *a)
{
    struct jv x;
    bool has = arg(a, 0, NULL, &x);
    if (!strcmp(name, "defined")) return v.t != T_UNDEF;
    if (!strcmp(name, "undefined")) return v.t == T_UNDEF;
    if (!strcmp(name, "none")) return v.t == T_NONE;
    if (!strcmp(name, "string")) return v.t == T_STR;
    if (!strcmp(name, "number")) return is_num(v);
    if (!strcmp(name, "integer")) return v.t == T_INT;
    if (!strcmp(name, "float")) return v.t == T_FLOAT;
    if (!strcmp(name, "boolean")) return v.t == T_BOOL;
    if (!strcmp(name, "true")) return v.t == T_BOOL && v.b;
    if (!strcmp(name, "false")) return v.t == T_BOOL && !v.b;
    if (!strcmp(name, "mapping")) return v.t == T_DICT;
    if (!strcmp(name, "iterable")) return v.t == T_STR || v.t == T_LIST || v.t == T_DICT || v.t == T_UNDEF;
    if (!strcmp(name, "sequence"))
        return v.t == T_STR || (v.t == T_LIST && v.l->kind != L_GEN) || v.t == T_DICT || v.t == T_UNDEF;
    if (!strcmp(name, "callable")) return v.t == T_MACRO || v.t == T_METHOD || v.t == T_FUNC || v.t == T_LOOP;
    if (!strcmp(name, "escaped")) return false;
    if (!strcmp(name, "sameas")) {
        if (!has)
            rerr(r, "test 'sameas' needs an argument");
        if (v.t != x.t)
            return false;
        if (v.t == T_NONE || v.t == T_UNDEF) return v.t == T_NONE;
        if (v.t == T_BOOL) return v.b == x.b;
        return py_eq(r, v, x) && (v.t == T_INT || v.t == T_STR ? true : v.l == x.l);
    }
    static const struct { const char *n; int op; } cmps[] = {
        {"equalto", OP_EQ}, {"eq", OP_EQ}, {"==", OP_EQ}, {"ne", OP_NE}, {"!=", OP_NE}, {"lt", OP_LT},
        {"lessthan", OP_LT}, {"<", OP_LT}, {"le", OP_LE}, {"<=", OP_LE}, {"gt", OP_GT}, {"greaterthan", OP_GT},
        {">", OP_GT}, {"ge", OP_GE}, {">=", OP_GE}};
    for (size_t i = 0; i < sizeof cmps / sizeof cmps[0]; i++)
        if (!strcmp(name, cmps[i].n)) {
            if (!has)
                rerr(r, "test '%s' needs an argument", name);
            if (cmps[i].op == OP_EQ) return py_eq(r, v, x);
            if (cmps[i].op == OP_NE) return !py_eq(r, v, x);
            return py_cmp(r, v, x, cmps[i].op);
        }
    if (!strcmp(name, "in")) {
        if (!has)
            rerr(r, "test 'in' needs an argument");
        return py_in(r, v, x);
    }
    if (!strcmp(name, "odd") || !strcmp(name, "even") || !strcmp(name, "divisibleby")) {
        if (v.t == T_UNDEF)
            undef_fail(r, v);
        if (!int_like(v))
            unsupported(r, "test on a non-integer", name);
        int64_t d = name[0] == 'd' ? (has && int_like(x) ? num_i(x) : 0) : 2;
        if (d == 0)
            rerr(r, "integer division or modulo by zero");
        int64_t m = num_i(v) % d;
        return name[0] == 'o' ? m != 0 : m == 0;
    }
    if (!strcmp(name, "lower") || !strcmp(name, "upper")) {
        struct args none = {0};
        return truthy(str_method(r, to_jstr(r, v), name[0] == 'l' ? "islower" : "isupper", &none));
    }
    if (!strcmp(name, "filter") || !strcmp(name, "test"))
        unsupported(r, "test", name);
    failf(&r->f, RILL_E_BAD_FORMAT, "No test named '%s'.", name);
}

/* ---- filters ------------------------------------------------------------------------------------ */

static struct jv call_filter(struct rs *r, const char *name, struct jv v, const struct args *a);
static struct jv binop(struct rs *r, int op, struct jv a, struct jv b);

/* attribute="a.b.0" as jinja2's make_attrgetter reads it (getitem per part). */
static struct jv attr_path(struct rs *r, struct jv v, const struct jstr *path)
{
    const char *p = path->p;
    while (1) {
        const char *dot = strchr(p, '.');
        size_t l = dot ? (size_t)(dot - p) : strlen(p);
        bool digits = l > 0;
        for (size_t i = 0; i < l; i++)
            digits &= p[i] >= '0' && p[i] <= '9';
        struct jv key = digits ? jint(strtoll(p, NULL, 10)) : mkstr(r, p, l);
        v = get_item(r, v, key);
        if (!dot)
            return v;
        p = dot + 1;
    }
}

static struct jv gen_of(struct rs *r, struct jv *items, size_t n)
{
    struct jlist *l = mklist(r, 0, L_GEN);
    l->n = n;
    l->v = items;
    return jlistv(l);
}

/* select / reject / selectattr / rejectattr */
static struct jv select_items(struct rs *r, struct jv v, const struct args *a, bool by_attr, bool keep)
{
    const struct jlist *l = iter_list(r, truthy(v) ? v : mkundef(r, "empty")); /* jinja2: `if value:` */
    struct jv *out = aalloc(&r->ar, (l->n ? l->n : 1) * sizeof *out);
    size_t n = 0;
    int first = by_attr ? 1 : 0;
    const struct jstr *attr = NULL;
    if (by_attr) {
        struct jv at;
        if (!arg(a, 0, NULL, &at) || at.t != T_STR)
            rerr(r, "Missing parameter for attribute name");
        attr = at.s;
    }
    struct jv tn;
    bool has_test = arg(a, first, NULL, &tn);
    if (has_test && tn.t != T_STR)
        rerr(r, "test name must be a string");
    struct args ta = {a->n > first + 1 ? a->v + first + 1 : NULL, a->n > first + 1 ? a->n - first - 1 : 0, NULL, NULL, 0};
    for (size_t i = 0; i < l->n; i++) {
        r->steps++;
        struct jv x = attr ? attr_path(r, l->v[i], attr) : l->v[i];
        bool ok = has_test ? call_test(r, tn.s->p, x, &ta) : truthy(x);
        if (ok == keep)
            out[n++] = l->v[i];
    }
    return gen_of(r, out, n);
}

/* Stable merge sort of v by keys. */
static void msort(struct rs *r, struct jv *v, struct jv *keys, size_t n, bool rev)
{
    if (n < 2)
        return;
    size_t h = n / 2;
    msort(r, v, keys, h, rev);
    msort(r, v + h, keys + h, n - h, rev);
    struct jv *tv = aalloc(&r->ar, n * sizeof *tv), *tk = aalloc(&r->ar, n * sizeof *tk);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        bool take_right = rev ? py_cmp(r, keys[i], keys[j], OP_LT) : py_cmp(r, keys[j], keys[i], OP_LT);
        if (take_right) {
            tv[k] = v[j];
            tk[k++] = keys[j++];
        } else {
            tv[k] = v[i];
            tk[k++] = keys[i++];
        }
    }
    while (i < h) {
        tv[k] = v[i];
        tk[k++] = keys[i++];
    }
    while (j < n) {
        tv[k] = v[j];
        tk[k++] = keys[j++];
    }
    memcpy(v, tv, n * sizeof *v);
    memcpy(keys, tk, n * sizeof *keys);
}

static struct jv fold_key(struct rs *r, struct jv x, bool case_sensitive)
{
    return x.t == T_STR && !case_sensitive ? py_case(r, x.s, 0) : x;
}

static int64_t py_int_of_str(const struct jstr *s, int base, bool *ok)
{
    size_t b = ws_prefix(s->p, s->len), e = s->len - ws_suffix(s->p, s->len);
    *ok = false;
    if (b >= e)
        return 0;
    char t[64];
    size_t k = 0;
    for (size_t i = b; i < e; i++) {
        if (s->p[i] == '_') {
            if (i == b || i + 1 == e || s->p[i + 1] == '_')
                return 0;
            continue;
        }
        if (k >= sizeof t - 1)
            return 0;
        t[k++] = s->p[i];
    }
    t[k] = 0;
    char *end;
    errno = 0;
    long long v = strtoll(t, &end, base);
    if (*end || errno || end == t || t[0] == ' ')
        return 0;
    *ok = true;
    return v;
}



static struct jv f_tojson(struct rs *r, struct jv v, const struct args *a)
{
    struct jopt o = {NULL, ", ", ": ", false, false};
    o.ascii = truthy(arg_or(a, 0, "ensure_ascii", jbool(false)));
    struct jv ind = arg_or(a, 1, "indent", V_NONE);
    if (ind.t == T_STR) {
        o.indent = ind.s->p;
    } else if (int_like(ind)) {
        int64_t n = num_i(ind);
        if (n > 256)
            failf(&r->f, RILL_E_TOO_LARGE, "tojson indent %lld too large", (long long)n);
        char *sp = aalloc(&r->ar, (size_t)(n > 0 ? n : 0) + 1);
        memset(sp, ' ', (size_t)(n > 0 ? n : 0));
        sp[n > 0 ? n : 0] = 0;
        o.indent = sp;
    } else if (ind.t != T_NONE) {
        rerr(r, "can't multiply sequence by non-int of type '%s'", tname(ind));
    }
    if (o.indent)
        o.item_sep = ",";
    struct jv seps = arg_or(a, 2, "separators", V_NONE);
    if (seps.t == T_LIST && seps.l->n == 2 && seps.l->v[0].t == T_STR && seps.l->v[1].t == T_STR) {
        o.item_sep = seps.l->v[0].s->p;
        o.key_sep = seps.l->v[1].s->p;
    } else if (seps.t != T_NONE) {
        rerr(r, "separators must be a pair of strings");
    }
    o.sort_keys = truthy(arg_or(a, 3, "sort_keys", jbool(false)));
    struct buf b = {0};
    json_dump(r, &b, v, &o, 0);
    return buf_str(r, &b);
}

static struct jv f_indent(struct rs *r, struct jv v, const struct args *a)
{
    const struct jstr *s = to_jstr(r, v);
    struct jv w = arg_or(a, 0, "width", jint(4));
    const char *ind;
    if (w.t == T_STR) {
        ind = w.s->p;
    } else if (int_like(w)) {
        int64_t n = num_i(w) > 0 ? num_i(w) : 0;
        if (n > 256)
            failf(&r->f, RILL_E_TOO_LARGE, "indent width %lld too large", (long long)n);
        char *sp = aalloc(&r->ar, (size_t)n + 1);
        memset(sp, ' ', (size_t)n);
        sp[n] = 0;
        ind = sp;
    } else {
        rerr(r, "can't multiply sequence by non-int of type '%s'", tname(w));
    }
    bool first = truthy(arg_or(a, 1, "first", jbool(false))), blank = truthy(arg_or(a, 2, "blank", jbool(false)));
    /* s + "\n", split into lines as str.splitlines() */
    struct buf t = {0};
    bput(r, &t, s->p, s->len);
    bputc(r, &t, '\n');
    struct jstr *ts = snew(&r->ar, t.p, t.len);
    struct args none = {0};
    struct jv lines = str_method(r, ts, "splitlines", &none);
    struct buf b = {0};
    if (first)
        bputs(r, &b, ind);
    for (size_t i = 0; i < lines.l->n; i++) {
        const struct jstr *ln = lines.l->v[i].s;
        if (i) {
            bputc(r, &b, '\n');
            if (blank || ln->len)
                bputs(r, &b, ind);
        }
        bput(r, &b, ln->p, ln->len);
    }
    return mkstr(r, b.p ? b.p : "", b.len);
}

static struct jv f_length(struct rs *r, struct jv v)
{
    switch (v.t) {
    case T_UNDEF: return jint(0);
    case T_STR: return jint((int64_t)v.s->ncp);
    case T_DICT: return jint((int64_t)v.d->n);
    case T_LIST:
        if (v.l->kind != L_GEN)
            return jint((int64_t)v.l->n);
        break;
    default: break;
    }
    rerr(r, "object of type '%s' has no len()", tname(v));
}

/* markupsafe.escape of a plain string. */
static struct jv html_escape(struct rs *r, const struct jstr *s)
{
    struct buf b = {0};
    for (size_t i = 0; i < s->len; i++) {
        switch (s->p[i]) {
        case '&': bputs(r, &b, "&amp;"); break;
        case '<': bputs(r, &b, "&lt;"); break;
        case '>': bputs(r, &b, "&gt;"); break;
        case '"': bputs(r, &b, "&#34;"); break;
        case '\'': bputs(r, &b, "&#39;"); break;
        default: bputc(r, &b, s->p[i]);
        }
    }
    return mkstr(r, b.p ? b.p : "", b.len);
}

/* jinja2's filters, one branch each, dispatched by name.  Long, but each
 * branch is a few lines that read against jinja2's filters.py; a table of
 * function pointers would only split every filter in two places. */
static struct jv call_filter(struct rs *r, const char *name, struct jv v, const struct args *a)
{
    struct jv x;
    if (!strcmp(name, "tojson")) return f_tojson(r, v, a);
    bool mk = v.t == T_STR && v.markup; /* str methods of a Markup give a Markup */
    if (!strcmp(name, "trim")) {
        struct jv o = py_strip(r, to_jstr(r, v), arg_str(r, a, 0, "chars", "strip"), 3);
        o.markup = mk;
        return o;
    }
    if (!strcmp(name, "length") || !strcmp(name, "count")) return f_length(r, v);
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        struct jv dv = arg_or(a, 0, "default_value", mkstr(r, "", 0));
        bool boolean = truthy(arg_or(a, 1, "boolean", jbool(false)));
        return v.t == T_UNDEF || (boolean && !truthy(v)) ? dv : v;
    }
    if (!strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "capitalize") || !strcmp(name, "title")) {
        struct jv o = py_case(r, to_jstr(r, v), name[0] == 'u' ? 1 : name[0] == 'l' ? 0 : name[0] == 'c' ? 2 : 4);
        o.markup = mk;
        return o;
    }
    if (!strcmp(name, "string"))
        return (struct jv){.t = T_STR, .s = to_jstr(r, v), .markup = v.t == T_STR && v.markup};
    if (!strcmp(name, "safe"))
        return (struct jv){.t = T_STR, .s = to_jstr(r, v), .markup = 1};
    if (!strcmp(name, "escape") || !strcmp(name, "e")) {
        struct jv e = v.t == T_STR && v.markup ? v : html_escape(r, to_jstr(r, v));
        e.markup = 1;
        return e;
    }
    if (!strcmp(name, "replace")) {
        struct jv o, n2;
        if (!arg(a, 0, "old", &o) || !arg(a, 1, "new", &n2))
            rerr(r, "replace() needs old and new");
        struct jv c = arg_or(a, 2, "count", V_NONE);
        return py_replace(r, to_jstr(r, v), to_jstr(r, o), to_jstr(r, n2), int_like(c) && num_i(c) ? num_i(c) : -1);
    }
    if (!strcmp(name, "items")) {
        if (v.t == T_UNDEF)
            return gen_of(r, NULL, 0);
        if (v.t != T_DICT)
            rerr(r, "Can only get item pairs from a mapping.");
        struct jv *out = aalloc(&r->ar, (v.d->n ? v.d->n : 1) * sizeof *out);
        for (size_t i = 0; i < v.d->n; i++) {
            struct jlist *p = mklist(r, 2, L_TUPLE);
            p->v[0] = v.d->k[i];
            p->v[1] = v.d->v[i];
            out[i] = jlistv(p);
        }
        return gen_of(r, out, v.d->n);
    }
    if (!strcmp(name, "list")) {
        const struct jlist *l = iter_list(r, v);
        struct jlist *o = mklist(r, l->n, L_LIST);
        if (l->n)
            memcpy(o->v, l->v, l->n * sizeof *o->v);
        return jlistv(o);
    }
    if (!strcmp(name, "join")) {
        const struct jlist *l = iter_list(r, v);
        struct jv sep = arg_or(a, 0, "d", mkstr(r, "", 0));
        const struct jstr *ss = to_jstr(r, sep), *attr = arg_str(r, a, 1, "attribute", "attribute");
        struct buf b = {0};
        for (size_t i = 0; i < l->n; i++) {
            if (i)
                bput(r, &b, ss->p, ss->len);
            py_str(r, &b, attr ? attr_path(r, l->v[i], attr) : l->v[i], false);
        }
        return mkstr(r, b.p ? b.p : "", b.len);
    }
    if (!strcmp(name, "first")) {
        const struct jlist *l = iter_list(r, v);
        return l->n ? l->v[0] : mkundef(r, "No first item, sequence was empty.");
    }
    if (!strcmp(name, "last")) {
        if (v.t == T_LIST && v.l->kind == L_GEN)
            rerr(r, "'generator' object is not reversible");
        const struct jlist *l = iter_list(r, v);
        return l->n ? l->v[l->n - 1] : mkundef(r, "No last item, sequence was empty.");
    }
    if (!strcmp(name, "reverse")) {
        if (v.t == T_STR) {
            struct jv *keys = NULL;
            (void)keys;
            const struct jlist *l = iter_list(r, v);
            struct buf b = {0};
            for (size_t i = l->n; i-- > 0;)
                bput(r, &b, l->v[i].s->p, l->v[i].s->len);
            return mkstr(r, b.p ? b.p : "", b.len);
        }
        const struct jlist *l = iter_list(r, v);
        struct jlist *o = mklist(r, l->n, L_GEN);
        for (size_t i = 0; i < l->n; i++)
            o->v[i] = l->v[l->n - 1 - i];
        return jlistv(o);
    }
    if (!strcmp(name, "map")) {
        const struct jlist *l = iter_list(r, truthy(v) ? v : mkundef(r, "empty")); /* jinja2: `if value:` */
        struct jv *out = aalloc(&r->ar, (l->n ? l->n : 1) * sizeof *out);
        const struct jstr *attr = NULL;
        struct jv dflt;
        bool has_dflt = false;
        for (int i = 0; i < a->nk; i++)
            if (!strcmp(a->kn[i], "attribute") && a->kv[i].t == T_STR)
                attr = a->kv[i].s;
            else if (!strcmp(a->kn[i], "default")) {
                dflt = a->kv[i];
                has_dflt = true;
            }
        if (!attr && (a->n < 1 || a->v[0].t != T_STR))
            rerr(r, "map requires a filter argument");
        struct args fa = {a->n > 0 ? a->v + 1 : NULL, a->n > 0 ? a->n - 1 : 0, NULL, NULL, 0};
        for (size_t i = 0; i < l->n; i++) {
            r->steps++;
            if (attr) {
                out[i] = attr_path(r, l->v[i], attr);
                if (out[i].t == T_UNDEF && has_dflt)
                    out[i] = dflt;
            } else {
                out[i] = call_filter(r, a->v[0].s->p, l->v[i], &fa);
            }
        }
        return gen_of(r, out, l->n);
    }
    if (!strcmp(name, "select")) return select_items(r, v, a, false, true);
    if (!strcmp(name, "reject")) return select_items(r, v, a, false, false);
    if (!strcmp(name, "selectattr")) return select_items(r, v, a, true, true);
    if (!strcmp(name, "rejectattr")) return select_items(r, v, a, true, false);
    if (!strcmp(name, "unique")) {
        const struct jlist *l = iter_list(r, v);
        bool cs = truthy(arg_or(a, 0, "case_sensitive", jbool(false)));
        const struct jstr *attr = arg_str(r, a, 1, "attribute", "attribute");
        struct jv *out = aalloc(&r->ar, (l->n ? l->n : 1) * sizeof *out);
        struct jv *seen = aalloc(&r->ar, (l->n ? l->n : 1) * sizeof *seen);
        size_t n = 0;
        for (size_t i = 0; i < l->n; i++) {
            struct jv k = fold_key(r, attr ? attr_path(r, l->v[i], attr) : l->v[i], cs);
            if ((k.t == T_LIST && k.l->kind != L_TUPLE) || k.t == T_DICT || k.t == T_NS)
                rerr(r, "unhashable type: '%s'", tname(k));
            bool dup = false;
            for (size_t j = 0; j < n && !dup; j++) {
                r->steps++;
                dup = py_eq(r, seen[j], k);
            }
            if (!dup) {
                seen[n] = k;
                out[n++] = l->v[i];
            }
        }
        if (r->steps > r->lim.max_steps)
            failf(&r->f, RILL_E_TOO_LARGE, "template took more than %llu steps", (unsigned long long)r->lim.max_steps);
        return gen_of(r, out, n);
    }
    if (!strcmp(name, "sort") || !strcmp(name, "dictsort")) {
        bool ds = name[0] == 'd';
        const struct jlist *l;
        if (ds) {
            struct args none = {0};
            l = iter_list(r, call_filter(r, "items", v, &none));
        } else {
            l = iter_list(r, v);
        }
        bool rev = truthy(arg_or(a, ds ? 3 : 0, "reverse", jbool(false)));
        bool cs = truthy(arg_or(a, ds ? 0 : 1, "case_sensitive", jbool(false)));
        const struct jstr *attr = ds ? NULL : arg_str(r, a, 2, "attribute", "attribute");
        int by_value = 0;
        if (ds) {
            struct jv by = arg_or(a, 1, "by", V_NONE);
            by_value = by.t == T_STR && !strcmp(by.s->p, "value");
        }
        struct jlist *o = mklist(r, l->n, L_LIST);
        struct jv *keys = aalloc(&r->ar, (l->n ? l->n : 1) * sizeof *keys);
        for (size_t i = 0; i < l->n; i++) {
            o->v[i] = l->v[i];
            struct jv k = ds ? l->v[i].l->v[by_value] : attr ? attr_path(r, l->v[i], attr) : l->v[i];
            keys[i] = fold_key(r, k, cs);
        }
        msort(r, o->v, keys, o->n, rev);
        return jlistv(o);
    }
    if (!strcmp(name, "int")) {
        struct jv dflt = arg_or(a, 0, "default", jint(0));
        struct jv base = arg_or(a, 1, "base", jint(10));
        bool ok;
        switch (v.t) {
        case T_INT: return v;
        case T_BOOL: return jint(v.b);
        case T_FLOAT:
            if (!isfinite(v.f))
                rerr(r, "cannot convert float %s to integer", isnan(v.f) ? "NaN" : "infinity");
            if (fabs(v.f) >= 9.2e18)
                unsupported(r, "integer", "over 64 bits");
            return jint((int64_t)v.f);
        case T_STR: {
            int64_t i = py_int_of_str(v.s, int_like(base) ? (int)num_i(base) : 10, &ok);
            if (ok)
                return jint(i);
            char *end;
            double d = strtod(v.s->p, &end); /* Python's float() reads no hex */
            if (end != v.s->p && end[ws_prefix(end, strlen(end))] == 0 && isfinite(d) && fabs(d) < 9.2e18 &&
                !strpbrk(v.s->p, "xX"))
                return jint((int64_t)d);
            return dflt;
        }
        default: return dflt;
        }
    }
    if (!strcmp(name, "float")) {
        struct jv dflt = arg_or(a, 0, "default", jflt(0));
        if (is_num(v))
            return jflt(num_d(v));
        if (v.t == T_STR) {
            char *end;
            double d = strtod(v.s->p, &end);
            if (end != v.s->p && end[ws_prefix(end, strlen(end))] == 0 && !strpbrk(v.s->p, "xX"))
                return jflt(d);
        }
        return dflt;
    }
    if (!strcmp(name, "abs")) {
        if (v.t == T_FLOAT) return jflt(fabs(v.f));
        if (int_like(v)) {
            if (num_i(v) == INT64_MIN)
                unsupported(r, "integer", "over 64 bits");
            return jint(num_i(v) < 0 ? -num_i(v) : num_i(v));
        }
        if (v.t == T_UNDEF)
            undef_fail(r, v);
        rerr(r, "bad operand type for abs(): '%s'", tname(v));
    }
    if (!strcmp(name, "round")) {
        struct jv p = arg_or(a, 0, "precision", jint(0));
        struct jv m = arg_or(a, 1, "method", V_NONE);
        if (v.t == T_UNDEF)
            undef_fail(r, v);
        if (!is_num(v))
            rerr(r, "type %s doesn't define __round__ method", tname(v));
        int64_t pr = int_like(p) ? num_i(p) : 0;
        if (pr < 0 || pr > 17)
            unsupported(r, "round precision", "outside 0..17");
        double d = num_d(v), sc = pow(10, (double)pr);
        if (m.t == T_STR && !strcmp(m.s->p, "floor"))
            return jflt(floor(d * sc) / sc);
        if (m.t == T_STR && !strcmp(m.s->p, "ceil"))
            return jflt(ceil(d * sc) / sc);
        if (int_like(v))
            return jint(num_i(v));
        char t[400];
        snprintf(t, sizeof t, "%.*f", (int)pr, d);
        return jflt(strtod(t, NULL));
    }
    if (!strcmp(name, "attr")) {
        if (!arg(a, 0, "name", &x) || x.t != T_STR)
            rerr(r, "attr needs a name");
        bool ok;
        if (v.t == T_UNDEF)
            undef_fail(r, v);
        struct jv y = py_getattr(r, v, x.s->p, &ok);
        return ok ? y : undef_attr(r, v, x.s->p);
    }
    if (!strcmp(name, "sum")) {
        const struct jlist *l = iter_list(r, v);
        const struct jstr *attr = arg_str(r, a, 0, "attribute", "attribute");
        struct jv acc = arg_or(a, 1, "start", jint(0));
        for (size_t i = 0; i < l->n; i++)
            acc = binop(r, OP_ADD, acc, attr ? attr_path(r, l->v[i], attr) : l->v[i]);
        return acc;
    }
    if (!strcmp(name, "min") || !strcmp(name, "max")) {
        const struct jlist *l = iter_list(r, v);
        bool cs = truthy(arg_or(a, 0, "case_sensitive", jbool(false)));
        const struct jstr *attr = arg_str(r, a, 1, "attribute", "attribute");
        if (!l->n)
            return mkundef(r, "No aggregated item, sequence was empty.");
        size_t best = 0;
        struct jv bk = fold_key(r, attr ? attr_path(r, l->v[0], attr) : l->v[0], cs);
        for (size_t i = 1; i < l->n; i++) {
            struct jv k = fold_key(r, attr ? attr_path(r, l->v[i], attr) : l->v[i], cs);
            if (py_cmp(r, k, bk, name[1] == 'i' ? OP_LT : OP_GT)) {
                best = i;
                bk = k;
            }
        }
        return l->v[best];
    }
    if (!strcmp(name, "indent")) return f_indent(r, v, a);
    if (!strcmp(name, "wordcount")) {
        struct args none = {0};
        return jint((int64_t)str_method(r, to_jstr(r, v), "split", &none).l->n);
    }
    static const char *const known[] = {"batch", "center", "filesizeformat", "forceescape", "format", "groupby",
                                        "pprint", "slice", "striptags", "truncate", "urlencode", "urlize",
                                        "wordwrap", "xmlattr", NULL};
    if (in_list(name, known))
        unsupported(r, "filter", name);
    failf(&r->f, RILL_E_BAD_FORMAT, "No filter named '%s'.", name);
}

/* ---- arithmetic ---------------------------------------------------------------------------------- */

static const char *op_sym(int op)
{
    switch (op) {
    case OP_ADD: return "+";
    case OP_SUB: return "-";
    case OP_MUL: return "*";
    case OP_DIV: return "/";
    case OP_FDIV: return "//";
    case OP_MOD: return "%";
    case OP_POW: return "** or pow()";
    default: return "?";
    }
}

_Noreturn static void overflow(struct rs *r)
{
    failf(&r->f, RILL_E_UNSUPPORTED, "integer overflow (rill's integers are 64-bit)");
}

static struct jv arith(struct rs *r, int op, struct jv a, struct jv b)
{
    if (a.t != T_FLOAT && b.t != T_FLOAT && op != OP_DIV) {
        int64_t x = num_i(a), y = num_i(b), z;
        switch (op) {
        case OP_ADD: if (__builtin_add_overflow(x, y, &z)) overflow(r); return jint(z);
        case OP_SUB: if (__builtin_sub_overflow(x, y, &z)) overflow(r); return jint(z);
        case OP_MUL: if (__builtin_mul_overflow(x, y, &z)) overflow(r); return jint(z);
        case OP_FDIV:
        case OP_MOD:
            if (y == 0)
                rerr(r, op == OP_FDIV ? "integer division or modulo by zero" : "integer modulo by zero");
            if (x == INT64_MIN && y == -1)
                overflow(r);
            z = x / y;
            if (x % y != 0 && ((x < 0) != (y < 0)))
                z--;
            return op == OP_FDIV ? jint(z) : jint(x - z * y);
        case OP_POW:
            if (y >= 0) {
                int64_t acc = 1;
                for (int64_t i = 0; i < y; i++) {
                    if (__builtin_mul_overflow(acc, x, &acc))
                        overflow(r);
                    if (acc == 0 || acc == 1)
                        break;
                }
                return jint(acc);
            }
            break;
        default: break;
        }
    }
    double x = num_d(a), y = num_d(b);
    switch (op) {
    case OP_ADD: return jflt(x + y);
    case OP_SUB: return jflt(x - y);
    case OP_MUL: return jflt(x * y);
    case OP_DIV:
        if (y == 0)
            rerr(r, a.t != T_FLOAT && b.t != T_FLOAT ? "division by zero" : "float division by zero");
        return jflt(x / y);
    case OP_FDIV:
        if (y == 0)
            rerr(r, "float floor division by zero");
        return jflt(floor(x / y));
    case OP_MOD: {
        if (y == 0)
            rerr(r, "float modulo");
        double m = fmod(x, y);
        if (m != 0 && ((m < 0) != (y < 0)))
            m += y;
        return jflt(m);
    }
    case OP_POW:
        if (x == 0 && y < 0)
            rerr(r, "0.0 cannot be raised to a negative power");
        return jflt(pow(x, y));
    }
    rerr(r, "bad operator");
}

static struct jv repeat(struct rs *r, struct jv seq, int64_t n)
{
    if (n < 0)
        n = 0;
    if (seq.t == T_STR) {
        if (seq.s->len && (uint64_t)n > r->lim.max_output / seq.s->len)
            failf(&r->f, RILL_E_TOO_LARGE, "string repeated past the output limit");
        struct buf b = {0};
        for (int64_t i = 0; i < n; i++)
            bput(r, &b, seq.s->p, seq.s->len);
        return mkstr(r, b.p ? b.p : "", b.len);
    }
    if (seq.l->n && (uint64_t)n > (r->lim.max_memory / sizeof(struct jv)) / seq.l->n)
        failf(&r->f, RILL_E_TOO_LARGE, "list repeated past the memory limit");
    struct jlist *l = mklist(r, seq.l->n * (size_t)n, seq.l->kind);
    for (int64_t i = 0; i < n; i++)
        if (seq.l->n)
            memcpy(l->v + (size_t)i * seq.l->n, seq.l->v, seq.l->n * sizeof *l->v);
    return jlistv(l);
}

/* printf-style str % args: %s %r %d %i %f (with a precision) and %%. */
static struct jv py_percent(struct rs *r, const struct jstr *f, struct jv args)
{
    const struct jv *av = &args;
    size_t na = 1, k = 0;
    if (args.t == T_LIST && args.l->kind == L_TUPLE) {
        av = args.l->v;
        na = args.l->n;
    }
    struct buf b = {0};
    for (size_t i = 0; i < f->len; i++) {
        if (f->p[i] != '%') {
            bputc(r, &b, f->p[i]);
            continue;
        }
        if (++i >= f->len)
            rerr(r, "incomplete format");
        int prec = -1;
        if (f->p[i] == '.') {
            prec = 0;
            while (++i < f->len && f->p[i] >= '0' && f->p[i] <= '9' && prec < 100)
                prec = prec * 10 + (f->p[i] - '0');
            if (i >= f->len)
                rerr(r, "incomplete format");
        }
        char conv = f->p[i], t[400];
        if (conv == '%') {
            bputc(r, &b, '%');
            continue;
        }
        if (conv != 's' && conv != 'r' && conv != 'd' && conv != 'i' && conv != 'f')
            unsupported(r, "format", "of % other than %s %r %d %i %f");
        if (k >= na)
            rerr(r, "not enough arguments for format string");
        struct jv x = av[k++];
        if (conv == 's' || conv == 'r') {
            py_str(r, &b, x, conv == 'r');
            continue;
        }
        if (!is_num(x))
            rerr(r, "%%%c format: a real number is required, not %s", conv, tname(x));
        if (conv == 'f')
            snprintf(t, sizeof t, "%.*f", prec < 0 ? 6 : prec, num_d(x));
        else if (x.t == T_FLOAT)
            snprintf(t, sizeof t, "%.0f", trunc(x.f));
        else
            snprintf(t, sizeof t, "%lld", (long long)num_i(x));
        bputs(r, &b, t);
    }
    if (k < na)
        rerr(r, "not all arguments converted during string formatting");
    return mkstr(r, b.p ? b.p : "", b.len);
}

static struct jv binop(struct rs *r, int op, struct jv a, struct jv b)
{
    if (op == OP_TILDE) {
        struct buf bb = {0};
        py_str(r, &bb, a, false);
        py_str(r, &bb, b, false);
        return mkstr(r, bb.p ? bb.p : "", bb.len);
    }
    if (a.t == T_UNDEF)
        undef_fail(r, a);
    if (b.t == T_UNDEF)
        undef_fail(r, b);
    if (is_num(a) && is_num(b))
        return arith(r, op, a, b);
    bool aseq = a.t == T_STR || (a.t == T_LIST && a.l->kind != L_GEN);
    bool bseq = b.t == T_STR || (b.t == T_LIST && b.l->kind != L_GEN);
    if (op == OP_ADD) {
        if (a.t == T_STR && b.t == T_STR && (a.markup || b.markup)) {
            struct jv x = a.markup ? a : html_escape(r, a.s), y = b.markup ? b : html_escape(r, b.s);
            x.markup = y.markup = 0;
            struct jv o = binop(r, OP_ADD, x, y);
            o.markup = 1;
            return o;
        }
        if (a.t == T_STR && b.t == T_STR) {
            struct jstr *s = aalloc(&r->ar, sizeof *s + a.s->len + b.s->len + 1);
            memcpy(s->p, a.s->p, a.s->len);
            memcpy(s->p + a.s->len, b.s->p, b.s->len + 1);
            s->len = a.s->len + b.s->len;
            s->ncp = a.s->ncp + b.s->ncp;
            return (struct jv){.t = T_STR, .s = s};
        }
        if (a.t == T_LIST && b.t == T_LIST && a.l->kind == b.l->kind && a.l->kind != L_GEN) {
            struct jlist *l = mklist(r, a.l->n + b.l->n, a.l->kind);
            if (a.l->n)
                memcpy(l->v, a.l->v, a.l->n * sizeof *l->v);
            if (b.l->n)
                memcpy(l->v + a.l->n, b.l->v, b.l->n * sizeof *l->v);
            return jlistv(l);
        }
        if (aseq)
            rerr(r, "can only concatenate %s (not \"%s\") to %s", tname(a), tname(b), tname(a));
    }
    if (op == OP_MUL) {
        if (aseq && int_like(b))
            return repeat(r, a, num_i(b));
        if (bseq && int_like(a))
            return repeat(r, b, num_i(a));
        if (aseq || bseq)
            rerr(r, "can't multiply sequence by non-int of type '%s'", tname(aseq ? b : a));
    }
    if (op == OP_MOD && a.t == T_STR)
        return py_percent(r, a.s, b);
    rerr(r, "unsupported operand type(s) for %s: '%s' and '%s'", op_sym(op), tname(a), tname(b));
}

/* ---- calls ------------------------------------------------------------------------------------- */

static void exec_body(struct rs *r, const struct node *b, struct scope *s);

static struct jv call_macro(struct rs *r, const struct node *m, const struct args *a)
{
    if (a->n > m->nn)
        rerr(r, "macro '%s' takes not more than %d argument(s)", m->s, m->nn);
    for (int k = 0; k < a->nk; k++) {
        int i = 0;
        while (i < m->nn && strcmp(m->names[i], a->kn[k]))
            i++;
        if (i == m->nn)
            rerr(r, "macro '%s' takes no keyword argument '%s'", m->s, a->kn[k]);
        if (i < a->n)
            rerr(r, "macro '%s' got multiple values for argument '%s'", m->s, a->kn[k]);
    }
    if (++r->depth > r->lim.max_depth)
        failf(&r->f, RILL_E_TOO_LARGE, "macro calls nested more than %d deep", r->lim.max_depth);
    struct scope *ms = scope_new(r, r->root);
    for (int i = 0; i < m->nn; i++) {
        struct jv v;
        if (!arg(a, i, m->names[i], &v))
            v = m->v[i] ? eval(r, m->v[i], ms) : mkundef(r, "parameter '%s' was not provided", m->names[i]);
        scope_set(r, ms, m->names[i], v);
    }
    struct buf b = {0}, *saved = r->out;
    r->out = &b;
    exec_body(r, m->a, ms);
    r->out = saved;
    r->loopctl = 0;
    r->depth--;
    return buf_str(r, &b);
}

static struct jv call_global(struct rs *r, int fn, const struct args *a)
{
    struct jv x;
    switch (fn) {
    case FN_RAISE: {
        const struct jstr *m = arg(a, 0, "message", &x) ? to_jstr(r, x) : snew(&r->ar, "", 0);
        snprintf(r->f.msg, sizeof r->f.msg, "%s", m->p);
        r->f.code = RILL_E_BAD_REQUEST;
        r->f.raised = 1;
        longjmp(r->f.jb, 1);
    }
    case FN_STRFTIME: {
        if (!arg(a, 0, "format", &x) || x.t != T_STR)
            rerr(r, "strftime() argument 1 must be str");
        time_t t = r->now ? (time_t)r->now : time(NULL);
        struct tm tm;
        localtime_r(&t, &tm);
        char out[512];
        size_t n = x.s->len ? strftime(out, sizeof out, x.s->p, &tm) : 0;
        return mkstr(r, out, n);
    }
    case FN_NAMESPACE:
    case FN_DICT: {
        struct jdict *d = dict_new(r, (size_t)a->nk + 4);
        if (a->n > 1)
            rerr(r, "%s expected at most 1 argument, got %d", fn == FN_DICT ? "dict" : "namespace", a->n);
        if (a->n == 1) {
            if (a->v[0].t != T_DICT)
                unsupported(r, "argument", "of namespace()/dict() other than a dict");
            for (size_t i = 0; i < a->v[0].d->n; i++)
                dict_set(r, d, a->v[0].d->k[i], a->v[0].d->v[i]);
        }
        for (int i = 0; i < a->nk; i++)
            dict_set(r, d, mkcstr(r, a->kn[i]), a->kv[i]);
        return (struct jv){.t = fn == FN_DICT ? T_DICT : T_NS, .d = d};
    }
    case FN_RANGE: {
        int64_t p[3] = {0, 0, 1};
        if (a->n < 1 || a->n > 3)
            rerr(r, "range expected at least 1 argument, got %d", a->n);
        for (int i = 0; i < a->n; i++) {
            if (!int_like(a->v[i]))
                rerr(r, "'%s' object cannot be interpreted as an integer", tname(a->v[i]));
            p[a->n == 1 ? 1 : i] = num_i(a->v[i]);
        }
        if (p[2] == 0)
            rerr(r, "range() arg 3 must not be zero");
        int64_t n = p[2] > 0 ? (p[1] > p[0] ? (p[1] - p[0] + p[2] - 1) / p[2] : 0)
                             : (p[0] > p[1] ? (p[0] - p[1] - p[2] - 1) / -p[2] : 0);
        if (n > 100000)
            rerr(r, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        struct jlist *l = mklist(r, (size_t)n, L_LIST);
        for (int64_t i = 0; i < n; i++)
            l->v[i] = jint(p[0] + i * p[2]);
        return jlistv(l);
    }
    default: unsupported(r, "function", "lipsum/cycler/joiner");
    }
}

static struct jv call_method(struct rs *r, struct jv self, const char *m, const struct args *a)
{
    struct jv x;
    switch (self.t) {
    case T_STR: return str_method(r, self.s, m, a);
    case T_DICT:
        if (!strcmp(m, "items") || !strcmp(m, "keys") || !strcmp(m, "values")) {
            struct jlist *l = mklist(r, self.d->n, L_LIST);
            for (size_t i = 0; i < self.d->n; i++) {
                if (m[0] == 'k') {
                    l->v[i] = self.d->k[i];
                } else if (m[0] == 'v') {
                    l->v[i] = self.d->v[i];
                } else {
                    struct jlist *p = mklist(r, 2, L_TUPLE);
                    p->v[0] = self.d->k[i];
                    p->v[1] = self.d->v[i];
                    l->v[i] = jlistv(p);
                }
            }
            return jlistv(l);
        }
        if (!strcmp(m, "get")) {
            if (!arg(a, 0, NULL, &x))
                rerr(r, "get expected at least 1 argument, got 0");
            const struct jv *f = dict_find(r, self.d, x);
            return f ? *f : arg_or(a, 1, NULL, V_NONE);
        }
        if (!strcmp(m, "copy"))
            return self;
        break;
    case T_LIST:
        if (!strcmp(m, "copy"))
            return self;
        if (!strcmp(m, "count") || !strcmp(m, "index")) {
            if (!arg(a, 0, NULL, &x))
                rerr(r, "%s() takes exactly one argument (0 given)", m);
            int64_t c = 0;
            for (size_t i = 0; i < self.l->n; i++)
                if (py_eq(r, self.l->v[i], x)) {
                    if (m[0] == 'i')
                        return jint((int64_t)i);
                    c++;
                }
            if (m[0] == 'i')
                rerr(r, "%s.index(x): x not in %s", tname(self), tname(self));
            return jint(c);
        }
        break;
    case T_LOOP:
        if (!strcmp(m, "cycle")) {
            if (a->n == 0)
                rerr(r, "no items for cycling given");
            return a->v[self.lp->index0 % (size_t)a->n];
        }
        if (!strcmp(m, "changed")) {
            struct jlist *now = mklist(r, (size_t)a->n, L_TUPLE);
            if (a->n)
                memcpy(now->v, a->v, (size_t)a->n * sizeof *now->v);
            bool same = self.lp->changed && py_eq(r, jlistv(self.lp->changed), jlistv(now));
            self.lp->changed = now;
            return jbool(!same);
        }
        break;
    default: break;
    }
    unsupported(r, "method", m);
}

static struct jv call_value(struct rs *r, struct jv f, const struct args *a)
{
    switch (f.t) {
    case T_UNDEF: undef_fail(r, f);
    case T_MACRO: return call_macro(r, f.mac, a);
    case T_FUNC: return call_global(r, f.fn, a);
    case T_METHOD: return call_method(r, *f.m->self, f.m->name, a);
    case T_LOOP: unsupported(r, "call of", "loop (recursive loops)");
    default: rerr(r, "'%s' object is not callable", tname(f));
    }
}

/* ---- evaluation ---------------------------------------------------------------------------------- */

static void step(struct rs *r)
{
    if (++r->steps > r->lim.max_steps)
        failf(&r->f, RILL_E_TOO_LARGE, "template took more than %llu steps", (unsigned long long)r->lim.max_steps);
}

static void eval_args(struct rs *r, const struct node *nd, struct scope *s, struct args *a)
{
    a->n = nd->n;
    a->nk = nd->n2;
    a->kn = nd->names;
    a->v = nd->n ? aalloc(&r->ar, (size_t)nd->n * sizeof *a->v) : NULL;
    a->kv = nd->n2 ? aalloc(&r->ar, (size_t)nd->n2 * sizeof *a->kv) : NULL;
    for (int i = 0; i < nd->n; i++)
        a->v[i] = eval(r, nd->v[i], s);
    for (int i = 0; i < nd->n2; i++)
        a->kv[i] = eval(r, nd->v2[i], s);
}

static struct jv eval(struct rs *r, const struct node *nd, struct scope *s)
{
    step(r);
    struct args a;
    switch (nd->kind) {
    case N_CONST: return nd->val;
    case N_HOLE: return r->hole;
    case N_NAME: return lookup(r, s, nd->s);
    case N_ATTR: return get_attr(r, eval(r, nd->a, s), nd->s);
    case N_ITEM: {
        struct jv o = eval(r, nd->a, s);
        return get_item(r, o, eval(r, nd->b, s));
    }
    case N_SLICE: return do_slice(r, eval(r, nd->a, s), nd, s);
    case N_CALL: {
        struct jv f = eval(r, nd->a, s);
        eval_args(r, nd, s, &a);
        return call_value(r, f, &a);
    }
    case N_FILTER: {
        struct jv v = eval(r, nd->a, s);
        eval_args(r, nd, s, &a);
        return call_filter(r, nd->s, v, &a);
    }
    case N_TEST: {
        struct jv v = eval(r, nd->a, s);
        eval_args(r, nd, s, &a);
        return jbool(call_test(r, nd->s, v, &a) != (nd->op == 1));
    }
    case N_BIN: {
        struct jv x = eval(r, nd->a, s);
        return binop(r, nd->op, x, eval(r, nd->b, s));
    }
    case N_NOT: return jbool(!truthy(eval(r, nd->a, s)));
    case N_NEG:
    case N_POS: {
        struct jv x = eval(r, nd->a, s);
        if (x.t == T_UNDEF)
            undef_fail(r, x);
        if (!is_num(x))
            rerr(r, "bad operand type for unary %c: '%s'", nd->kind == N_NEG ? '-' : '+', tname(x));
        if (nd->kind == N_POS)
            return x.t == T_BOOL ? jint(x.b) : x;
        if (x.t == T_FLOAT)
            return jflt(-x.f);
        if (num_i(x) == INT64_MIN)
            overflow(r);
        return jint(-num_i(x));
    }
    case N_AND: {
        struct jv x = eval(r, nd->a, s);
        return truthy(x) ? eval(r, nd->b, s) : x;
    }
    case N_OR: {
        struct jv x = eval(r, nd->a, s);
        return truthy(x) ? x : eval(r, nd->b, s);
    }
    case N_COND:
        if (truthy(eval(r, nd->a, s)))
            return eval(r, nd->b, s);
        if (nd->c)
            return eval(r, nd->c, s);
        return mkundef(r, "the inline if-expression on line %d evaluated to false and no else section was defined.",
                       nd->line);
    case N_LIST:
    case N_TUPLE: {
        struct jlist *l = mklist(r, (size_t)nd->n, nd->kind == N_LIST ? L_LIST : L_TUPLE);
        for (int i = 0; i < nd->n; i++)
            l->v[i] = eval(r, nd->v[i], s);
        return jlistv(l);
    }
    case N_DICT: {
        struct jdict *d = dict_new(r, (size_t)nd->n);
        for (int i = 0; i < nd->n; i++) {
            struct jv k = eval(r, nd->v[i], s);
            if (k.t == T_LIST && k.l->kind != L_TUPLE)
                rerr(r, "unhashable type: '%s'", tname(k));
            if (k.t == T_DICT || k.t == T_NS)
                rerr(r, "unhashable type: '%s'", tname(k));
            dict_set(r, d, k, eval(r, nd->v2[i], s));
        }
        return (struct jv){.t = T_DICT, .d = d};
    }
    case N_CMP: {
        struct jv x = eval(r, nd->a, s);
        for (int i = 0; i < nd->n; i++) {
            struct jv y = eval(r, nd->v[i], s);
            bool ok;
            switch (nd->ops[i]) {
            case OP_EQ: ok = py_eq(r, x, y); break;
            case OP_NE: ok = !py_eq(r, x, y); break;
            case OP_IN: ok = py_in(r, x, y); break;
            case OP_NOTIN: ok = !py_in(r, x, y); break;
            default: ok = py_cmp(r, x, y, nd->ops[i]); break;
            }
            if (!ok)
                return jbool(false);
            x = y;
        }
        return jbool(true);
    }
    default: break;
    }
    failf(&r->f, RILL_E_INTERNAL, "bad expression node %d", nd->kind);
}

/* ---- statements -------------------------------------------------------------------------------- */

static void assign(struct rs *r, struct scope *s, const struct node *st, struct jv v)
{
    if (st->op == 0) {
        scope_set(r, s, st->names[0], v);
        return;
    }
    if (v.t == T_UNDEF)
        undef_fail(r, v);
    if (v.t != T_LIST && v.t != T_STR && v.t != T_DICT)
        rerr(r, "cannot unpack non-iterable %s object", tname(v));
    const struct jlist *l = iter_list(r, v);
    if (l->n < (size_t)st->nn)
        rerr(r, "not enough values to unpack (expected %d, got %zu)", st->nn, l->n);
    if (l->n > (size_t)st->nn)
        rerr(r, "too many values to unpack (expected %d)", st->nn);
    for (int i = 0; i < st->nn; i++)
        scope_set(r, s, st->names[i], l->v[i]);
}

static struct jv apply_filters(struct rs *r, const struct node *chain, struct jv v, struct scope *s)
{
    struct jv saved = r->hole;
    r->hole = v;
    struct jv out = eval(r, chain, s);
    r->hole = saved;
    return out;
}

static struct jv render_to_str(struct rs *r, const struct node *body, struct scope *s)
{
    struct buf b = {0}, *saved = r->out;
    r->out = &b;
    exec_body(r, body, s);
    r->out = saved;
    return buf_str(r, &b);
}

static void exec_for(struct rs *r, const struct node *st, struct scope *s)
{
    const struct jlist *src = iter_list(r, eval(r, st->a, s));
    const struct jv *items = src->v;
    size_t n = src->n;
    struct scope *it = scope_new(r, s);
    if (st->b) { /* the loop's `if`: filter first, so that loop.length and loop.last count what runs */
        struct jv *kept = aalloc(&r->ar, (n ? n : 1) * sizeof *kept);
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            it->n = 0;
            assign(r, it, st, items[i]);
            if (truthy(eval(r, st->b, it)))
                kept[k++] = items[i];
        }
        items = kept;
        n = k;
    }
    if (n == 0) {
        if (st->d)
            exec_body(r, st->d, s);
        return;
    }
    struct loopst *lp = aalloc(&r->ar, sizeof *lp);
    lp->length = n;
    lp->items = items;
    for (size_t i = 0; i < n; i++) {
        if (++r->iters > r->lim.max_iters)
            failf(&r->f, RILL_E_TOO_LARGE, "template ran more than %llu loop iterations",
                  (unsigned long long)r->lim.max_iters);
        step(r);
        lp->index0 = i;
        it->n = 0; /* each iteration starts from the enclosing scope, as in jinja2 */
        assign(r, it, st, items[i]);
        scope_set(r, it, "loop", (struct jv){.t = T_LOOP, .lp = lp});
        exec_body(r, st->c, it);
        if (r->loopctl) {
            int c = r->loopctl;
            r->loopctl = 0;
            if (c == 1)
                break;
        }
    }
}

static void exec_stmt(struct rs *r, const struct node *st, struct scope *s)
{
    step(r);
    switch (st->kind) {
    case S_TEXT: bput(r, r->out, st->val.s->p, st->val.s->len); return;
    case S_OUT: {
        struct jv v = eval(r, st->a, s);
        if (v.t == T_STR)
            bput(r, r->out, v.s->p, v.s->len);
        else
            py_str(r, r->out, v, false);
        return;
    }
    case S_BODY: exec_body(r, st, s); return;
    case S_IF:
        for (int i = 0; i < st->n; i++)
            if (truthy(eval(r, st->v[i], s))) {
                exec_body(r, st->v2[i], s);
                return;
            }
        if (st->c)
            exec_body(r, st->c, s);
        return;
    case S_FOR: exec_for(r, st, s); return;
    case S_SET: {
        struct jv v = eval(r, st->a, s);
        if (st->op == 2) {
            struct jv ns = lookup(r, s, st->names[0]);
            if (ns.t != T_NS)
                rerr(r, "cannot assign attribute on non-namespace object");
            dict_set(r, ns.d, mkcstr(r, st->s), v);
            return;
        }
        assign(r, s, st, v);
        return;
    }
    case S_SETBLOCK: {
        struct jv v = render_to_str(r, st->a, scope_new(r, s));
        if (st->b)
            v = apply_filters(r, st->b, v, s);
        scope_set(r, s, st->names[0], v);
        return;
    }
    case S_FILTERBLK: {
        struct jv v = apply_filters(r, st->b, render_to_str(r, st->a, scope_new(r, s)), s);
        const struct jstr *t = to_jstr(r, v);
        bput(r, r->out, t->p, t->len);
        return;
    }
    case S_MACRO: scope_set(r, s, st->s, (struct jv){.t = T_MACRO, .mac = st}); return;
    case S_BREAK: r->loopctl = 1; return;
    case S_CONTINUE: r->loopctl = 2; return;
    default: failf(&r->f, RILL_E_INTERNAL, "bad statement node %d", st->kind);
    }
}

static void exec_body(struct rs *r, const struct node *b, struct scope *s)
{
    for (int i = 0; i < b->n && !r->loopctl; i++)
        exec_stmt(r, b->v[i], s);
}

/* ---- the API -------------------------------------------------------------------------------------- */

int jinja_parse(const char *src, size_t len, struct jinja_tmpl **out, char *why, size_t why_len)
{
    *out = NULL;
    if (len > MAX_SRC)
        return rill_fail(why, why_len, RILL_E_TOO_LARGE, "template of %zu bytes (at most %u)", len, MAX_SRC);
    struct jinja_tmpl *t = calloc(1, sizeof *t);
    struct ps *P = calloc(1, sizeof *P);
    if (!t || !P) {
        free(t);
        free(P);
        return rill_fail(why, why_len, RILL_E_NOMEM, "out of memory");
    }
    t->ar.cap = 64u << 20;
    t->ar.f = &P->f;
    P->ar = &t->ar;
    P->line = 1;
    if (setjmp(P->f.jb)) {
        int code = P->f.code;
        rill_why(why, why_len, "%s", P->f.msg);
        afree(&t->ar);
        free(t);
        free(P);
        return code;
    }
    /* newlines as jinja2 reads them: \r\n and \r are \n; one trailing newline is dropped */
    char *s = aalloc(&t->ar, len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n')
                i++;
        } else {
            s[n++] = src[i];
        }
    }
    if (n && s[n - 1] == '\n')
        n--;
    s[n] = 0;
    P->src = s;
    P->len = n;
    lex(P);
    t->root = p_body(P, NULL);
    free(P);
    *out = t;
    return 0;
}

void jinja_free(struct jinja_tmpl *t)
{
    if (!t)
        return;
    afree(&t->ar);
    free(t);
}

/* Mark, in document order, the number nodes whose literal has a fraction or
 * an exponent: flags[] holds one entry per number literal of the text. */
static void mark_floats(cJSON *j, const bool *flags, size_t n, size_t *k, int depth, bool *ok)
{
    for (; j && *ok; j = j->next) {
        if (cJSON_IsNumber(j)) {
            if (*k >= n) {
                *ok = false;
                return;
            }
            if (flags[(*k)++] && !j->valuestring) {
                j->valuestring = malloc(sizeof JINJA_JSON_FLOAT);
                if (!j->valuestring) {
                    *ok = false;
                    return;
                }
                memcpy(j->valuestring, JINJA_JSON_FLOAT, sizeof JINJA_JSON_FLOAT);
            }
        } else if ((cJSON_IsArray(j) || cJSON_IsObject(j)) && depth < 1000) {
            mark_floats(j->child, flags, n, k, depth + 1, ok);
        }
    }
}

cJSON *jinja_json_parse(const char *s, size_t len)
{
    cJSON *j = cJSON_ParseWithLength(s, len);
    if (!j)
        return NULL;
    /* one flag per number literal outside strings: cJSON read the same
     * literals in the same order */
    size_t n = 0, cap = 0;
    bool *flags = NULL, ok = true;
    for (size_t i = 0; i < len && ok; i++) {
        char c = s[i];
        if (c == '"') {
            for (i++; i < len && s[i] != '"'; i++)
                if (s[i] == '\\')
                    i++;
            continue;
        }
        if (c != '-' && (c < '0' || c > '9'))
            continue;
        bool f = false;
        for (; i < len && (s[i] == '-' || s[i] == '+' || s[i] == '.' || (s[i] | 32) == 'e' ||
                           (s[i] >= '0' && s[i] <= '9')); i++)
            f |= s[i] == '.' || (s[i] | 32) == 'e';
        i--;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 64;
            bool *nf = realloc(flags, nc * sizeof *nf);
            if (!nf) {
                ok = false;
                break;
            }
            flags = nf;
            cap = nc;
        }
        flags[n++] = f;
    }
    size_t k = 0;
    if (ok)
        mark_floats(j, flags, n, &k, 0, &ok);
    free(flags);
    if (!ok) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

static struct jv from_cjson(struct rs *r, const cJSON *j, int depth)
{
    if (depth > MAX_NEST)
        failf(&r->f, RILL_E_TOO_LARGE, "context nested more than %d deep", MAX_NEST);
    if (cJSON_IsNull(j))
        return V_NONE;
    if (cJSON_IsBool(j))
        return jbool(cJSON_IsTrue(j));
    if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (j->valuestring && !strcmp(j->valuestring, JINJA_JSON_FLOAT))
            return jflt(d);
        if (isfinite(d) && d == floor(d) && fabs(d) < 9.2e18)
            return jint((int64_t)d);
        return jflt(d);
    }
    if (cJSON_IsString(j))
        return mkcstr(r, j->valuestring ? j->valuestring : "");
    if (cJSON_IsArray(j)) {
        size_t n = (size_t)cJSON_GetArraySize(j), i = 0;
        struct jlist *l = mklist(r, n, L_LIST);
        for (const cJSON *c = j->child; c && i < n; c = c->next)
            l->v[i++] = from_cjson(r, c, depth + 1);
        return jlistv(l);
    }
    if (cJSON_IsObject(j)) {
        struct jdict *d = dict_new(r, (size_t)cJSON_GetArraySize(j));
        for (const cJSON *c = j->child; c; c = c->next)
            dict_set(r, d, mkcstr(r, c->string ? c->string : ""), from_cjson(r, c, depth + 1));
        return (struct jv){.t = T_DICT, .d = d};
    }
    return V_NONE;
}

int jinja_render(const struct jinja_tmpl *t, const cJSON *ctx, int64_t now, const struct jinja_limits *lim,
                 char **out, size_t *out_len, int *err_raised, char *why, size_t why_len)
{
    *out = NULL;
    if (out_len)
        *out_len = 0;
    if (err_raised)
        *err_raised = 0;
    struct rs *r = calloc(1, sizeof *r);
    if (!r)
        return rill_fail(why, why_len, RILL_E_NOMEM, "out of memory");
    if (lim)
        r->lim = *lim;
    if (!r->lim.max_output) r->lim.max_output = 16u << 20;
    if (!r->lim.max_memory) r->lim.max_memory = 256u << 20;
    if (!r->lim.max_steps) r->lim.max_steps = 50000000;
    if (!r->lim.max_iters) r->lim.max_iters = 1000000;
    if (!r->lim.max_depth) r->lim.max_depth = 100;
    if (r->lim.max_depth > 200)
        r->lim.max_depth = 200; /* each macro level is a few C frames */
    r->ar.cap = r->lim.max_memory;
    r->ar.f = &r->f;
    r->now = now;
    if (setjmp(r->f.jb)) {
        int code = r->f.code;
        if (err_raised)
            *err_raised = r->f.raised;
        rill_why(why, why_len, "%s", r->f.msg);
        afree(&r->ar);
        free(r);
        return code;
    }
    r->root = scope_new(r, NULL);
    if (ctx && cJSON_IsObject(ctx))
        for (const cJSON *c = ctx->child; c; c = c->next)
            if (c->string)
                scope_set(r, r->root, snew(&r->ar, c->string, strlen(c->string))->p, from_cjson(r, c, 1));
    struct buf b = {0};
    r->out = &b;
    exec_body(r, t->root, r->root);
    char *o = malloc(b.len + 1);
    if (!o) {
        afree(&r->ar);
        free(r);
        return rill_fail(why, why_len, RILL_E_NOMEM, "out of memory");
    }
    if (b.len)
        memcpy(o, b.p, b.len);
    o[b.len] = 0;
    *out = o;
    if (out_len)
        *out_len = b.len;
    afree(&r->ar);
    free(r);
    return 0;
}
