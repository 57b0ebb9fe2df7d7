/* log.c — see log.h. */
#include "log.h"
#include "clock.h"
#include "jsonw.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

static struct {
    char component[32];
    char id[32];
    int level;
    bool json;
    int fd;
} lg = {"rill", "", RLOG_INFO, false, 2};

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

void rlog_init(const char *component, const char *id, enum rlog_level level, bool json, int fd)
{
    snprintf(lg.component, sizeof lg.component, "%s", component ? component : "rill");
    snprintf(lg.id, sizeof lg.id, "%s", id ? id : "");
    lg.level = level;
    lg.json = json;
    lg.fd = fd;
}

int rlog_level_from_name(const char *name)
{
    for (int i = 0; i <= RLOG_OFF; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

void rlog_set_level(enum rlog_level level) { lg.level = level; }

bool rlog_enabled(enum rlog_level level) { return (int)level >= lg.level; }

void rlog_write(enum rlog_level level, const char *fmt, ...)
{
    if (!rlog_enabled(level))
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    uint64_t now = clock_wall_ns();
    time_t secs = (time_t)(now / 1000000000ull);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char ts[40];
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03uZ", (unsigned)(now / 1000000ull % 1000));

    char line[4096];
    struct jsonw w;
    if (lg.json) {
        jsonw_init(&w, line, sizeof line - 1);
        jsonw_obj_begin(&w);
        jsonw_key_str(&w, "ts", ts);
        jsonw_key_str(&w, "level", level_names[level]);
        jsonw_key_str(&w, "component", lg.component);
        if (lg.id[0])
            jsonw_key_str(&w, "id", lg.id);
        jsonw_key_int(&w, "pid", getpid());
        jsonw_key_str(&w, "msg", msg);
        jsonw_obj_end(&w);
        n = jsonw_len(&w);
    } else {
        int k = snprintf(line, sizeof line - 1, "%s %-5s %s%s%s[%d] %s", ts, level_names[level],
                         lg.component, lg.id[0] ? "/" : "", lg.id, (int)getpid(), msg);
        n = k < 0 ? 0 : (size_t)k >= sizeof line - 1 ? sizeof line - 2 : (size_t)k;
    }
    line[n++] = '\n';
    /* One write per line; a short write to a pipe of a line this size does not happen. */
    ssize_t r = write(lg.fd, line, n);
    (void)r;
}
