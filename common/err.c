/* err.c — names and flags of the error list in err.h. */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    bool recoverable;
} err_table[RILL_ERR_COUNT] = {
#define RILL_ERR_ROW_(sym, nm, rec) [RILL__IDX_##sym] = {nm, rec},
    RILL_ERR_LIST(RILL_ERR_ROW_)
#undef RILL_ERR_ROW_
};

int rill_err_index(int code)
{
    if (code >= 0 || code < -RILL_ERR_COUNT)
        return -1;
    return -code - 1;
}

const char *rill_err_name(int code)
{
    if (code == 0)
        return "ok";
    int i = rill_err_index(code);
    return i < 0 ? "internal" : err_table[i].name;
}

bool rill_err_recoverable(int code)
{
    int i = rill_err_index(code);
    return i < 0 ? true : err_table[i].recoverable;
}

int rill_err_from_name(const char *name)
{
    for (int i = 0; i < RILL_ERR_COUNT; i++)
        if (strcmp(err_table[i].name, name) == 0)
            return -(i + 1);
    return 0;
}

bool rill_err_is_wire(int code)
{
    int i = rill_err_index(code);
    return i >= 0 && i <= RILL__IDX_RESUME_FAILED; /* the last wire code */
}

int rill_err_wire(int code)
{
    return rill_err_is_wire(code) ? code : RILL_E_INTERNAL;
}

void rill_why(char *why, size_t why_len, const char *fmt, ...)
{
    if (!why || !why_len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
}

int rill_fail(char *why, size_t why_len, int code, const char *fmt, ...)
{
    if (why && why_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, why_len, fmt, ap);
        va_end(ap);
    }
    return code;
}
