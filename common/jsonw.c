/* jsonw.c — see jsonw.h. */
#include "jsonw.h"
#include "utf8.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

void jsonw_init(struct jsonw *w, char *buf, size_t cap)
{
    memset(w, 0, sizeof *w);
    w->buf = buf;
    w->cap = cap;
}

static void put(struct jsonw *w, const char *s, size_t n)
{
    if (w->overflow || n > w->cap - w->len) {
        w->overflow = true;
        return;
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
}

static inline void putc_(struct jsonw *w, char c) { put(w, &c, 1); }

/* Before any value: a comma if a sibling came before, unless a key did. */
static void value_prefix(struct jsonw *w)
{
    if (w->after_key) {
        w->after_key = false;
        return;
    }
    if (w->depth > 0) {
        if (w->need_comma[w->depth - 1])
            putc_(w, ',');
        w->need_comma[w->depth - 1] = true;
    }
}

static void open_(struct jsonw *w, char c)
{
    value_prefix(w);
    putc_(w, c);
    if (w->depth >= JSONW_MAX_DEPTH) {
        w->overflow = true;
        return;
    }
    w->need_comma[w->depth++] = false;
}

static void close_(struct jsonw *w, char c)
{
    if (w->depth > 0)
        w->depth--;
    putc_(w, c);
}

void jsonw_obj_begin(struct jsonw *w) { open_(w, '{'); }
void jsonw_obj_end(struct jsonw *w) { close_(w, '}'); }
void jsonw_arr_begin(struct jsonw *w) { open_(w, '['); }
void jsonw_arr_end(struct jsonw *w) { close_(w, ']'); }


static void put_escaped(struct jsonw *w, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    putc_(w, '"');
    size_t i = 0, run = 0; /* run: start of bytes that need no escaping */
    while (i < n) {
        unsigned c = u[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0x80) {
            int k = utf8_scan(u + i, n - i);
            if (k > 0) {
                i += (size_t)k;
                continue;
            }
        }
        put(w, s + run, i - run);
        char esc[8];
        switch (c) {
        case '"': put(w, "\\\"", 2); break;
        case '\\': put(w, "\\\\", 2); break;
        case '\n': put(w, "\\n", 2); break;
        case '\r': put(w, "\\r", 2); break;
        case '\t': put(w, "\\t", 2); break;
        default:
            if (c < 0x20) {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                put(w, esc, 6);
            } else {
                put(w, "\xef\xbf\xbd", 3); /* U+FFFD for a byte that is not UTF-8 */
            }
        }
        i++;
        run = i;
    }
    put(w, s + run, i - run);
    putc_(w, '"');
}

void jsonw_key(struct jsonw *w, const char *key)
{
    value_prefix(w);
    put_escaped(w, key, strlen(key));
    putc_(w, ':');
    w->after_key = true;
}

void jsonw_strn(struct jsonw *w, const char *s, size_t n)
{
    value_prefix(w);
    put_escaped(w, s, n);
}

void jsonw_str(struct jsonw *w, const char *s) { jsonw_strn(w, s, strlen(s)); }

void jsonw_int(struct jsonw *w, int64_t v)
{
    char b[24];
    int n = snprintf(b, sizeof b, "%lld", (long long)v);
    value_prefix(w);
    put(w, b, (size_t)n);
}

void jsonw_uint(struct jsonw *w, uint64_t v)
{
    char b[24];
    int n = snprintf(b, sizeof b, "%llu", (unsigned long long)v);
    value_prefix(w);
    put(w, b, (size_t)n);
}

void jsonw_double(struct jsonw *w, double v, int prec)
{
    if (!isfinite(v)) {
        jsonw_null(w);
        return;
    }
    if (prec < 0)
        prec = 0;
    if (prec > 9)
        prec = 9;
    char b[40];
    int n = snprintf(b, sizeof b, "%.*f", prec, v);
    /* Trim trailing zeros ("12.500" -> "12.5", "3.000" -> "3"). */
    if (prec > 0 && n > 0 && memchr(b, '.', (size_t)n)) {
        while (n > 0 && b[n - 1] == '0')
            n--;
        if (n > 0 && b[n - 1] == '.')
            n--;
    }
    if (n == 2 && b[0] == '-' && b[1] == '0')
        b[0] = '0', n = 1;
    value_prefix(w);
    put(w, b, (size_t)n);
}

void jsonw_bool(struct jsonw *w, bool v)
{
    value_prefix(w);
    put(w, v ? "true" : "false", v ? 4 : 5);
}

void jsonw_null(struct jsonw *w)
{
    value_prefix(w);
    put(w, "null", 4);
}

void jsonw_raw(struct jsonw *w, const char *json, size_t n)
{
    value_prefix(w);
    put(w, json, n);
}
