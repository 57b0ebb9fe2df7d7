/* log.h — one line per event on stderr (or a file): time, level, component,
 * pid, message.  With JSON output each line is one JSON object:
 *   {"ts":"2026-11-29T23:07:00.123Z","level":"info","component":"worker",
 *    "id":"w0","pid":1234,"msg":"..."}
 *
 * Logging is for events, not for the token path: each call formats and writes
 * one line with a single write(2), so lines of different processes sharing a
 * file never interleave mid-line.  Thread-safe.
 */
#ifndef RILL_LOG_H
#define RILL_LOG_H

#include <stdbool.h>

enum rlog_level { RLOG_DEBUG, RLOG_INFO, RLOG_WARN, RLOG_ERROR, RLOG_OFF };

/* Set up the process's log.  `component` ("worker", "gateway", …) and `id`
 * ("w0", may be NULL) are copied.  `fd` is where lines go (2 for stderr). */
void rlog_init(const char *component, const char *id, enum rlog_level level, bool json, int fd);

/* Level from its name ("debug", "info", "warn", "error", "off"); -1 if unknown. */
int rlog_level_from_name(const char *name);

void rlog_set_level(enum rlog_level level);
bool rlog_enabled(enum rlog_level level);

void rlog_write(enum rlog_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define rlog_debug(...) do { if (rlog_enabled(RLOG_DEBUG)) rlog_write(RLOG_DEBUG, __VA_ARGS__); } while (0)
#define rlog_info(...)  rlog_write(RLOG_INFO, __VA_ARGS__)
#define rlog_warn(...)  rlog_write(RLOG_WARN, __VA_ARGS__)
#define rlog_error(...) rlog_write(RLOG_ERROR, __VA_ARGS__)

#endif
