/* config.c — see config.h. */
#include "config.h"
#include "err.h"
#include "log.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum cfg_type { T_STR, T_INT, T_DBL, T_BOOL, T_SIZE };

struct cfg_def {
    enum cfg_type type;
    const char *section, *key, *def, *help;
    double min, max;
    size_t offset;
};

#define CFG_T_STR  T_STR
#define CFG_T_INT  T_INT
#define CFG_T_DBL  T_DBL
#define CFG_T_BOOL T_BOOL
#define CFG_T_SIZE T_SIZE

static const struct cfg_def defs[] = {
#define CFG_DEF_(type, sec, name, def, mn, mx, help) \
    {CFG_T_##type, #sec, #name, def, help, mn, mx, offsetof(struct rill_config, name)},
    RILL_CONFIG_KEYS(CFG_DEF_)
#undef CFG_DEF_
};
#define N_DEFS (sizeof defs / sizeof defs[0])

static const struct cfg_def *find(const char *key)
{
    for (size_t i = 0; i < N_DEFS; i++)
        if (strcmp(defs[i].key, key) == 0)
            return &defs[i];
    return NULL;
}

bool cfg_is_key(const char *key) { return find(key) != NULL; }

bool cfg_is_secret(const char *key) { return !strcmp(key, "api_keys"); }

/* /proc/PID/cmdline reads the argv strings in place: blank them. */
static void scrub(char *v)
{
    for (; *v; v++)
        *v = '*';
}

static int parse_int(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end)
        return -1;
    *out = v;
    return 0;
}

static int parse_size(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0 || !isfinite(v))
        return -1;
    double mult = 1;
    if (*end) {
        switch (*end) {
        case 'k': case 'K': mult = 1024.0; break;
        case 'm': case 'M': mult = 1024.0 * 1024; break;
        case 'g': case 'G': mult = 1024.0 * 1024 * 1024; break;
        case 't': case 'T': mult = 1024.0 * 1024 * 1024 * 1024; break;
        default: return -1;
        }
        end++;
        if (*end == 'i')
            end++;
        if (*end == 'B' || *end == 'b')
            end++;
        if (*end)
            return -1;
    }
    v *= mult;
    if (v > 9.2e18)
        return -1;
    *out = (int64_t)v;
    return 0;
}

static int set_def(struct rill_config *c, const struct cfg_def *d, const char *value, char *why, size_t why_len)
{
    void *field = (char *)c + d->offset;
    int64_t iv;
    double dv;
    char *end;
    switch (d->type) {
    case T_STR:
        if (strlen(value) >= CFG_STR_MAX) {
            rill_why(why, why_len, "value for %s is too long (%zu bytes, at most %d)", d->key, strlen(value),
                    CFG_STR_MAX - 1);
            return RILL_E_BAD_CONFIG;
        }
        snprintf(field, CFG_STR_MAX, "%s", value);
        return 0;
    case T_BOOL:
        if (!strcmp(value, "true") || !strcmp(value, "1") || !strcmp(value, "yes") || !strcmp(value, "on"))
            *(bool *)field = true;
        else if (!strcmp(value, "false") || !strcmp(value, "0") || !strcmp(value, "no") || !strcmp(value, "off"))
            *(bool *)field = false;
        else {
            rill_why(why, why_len, "bad value '%s' for %s: expected true or false", value, d->key);
            return RILL_E_BAD_CONFIG;
        }
        return 0;
    case T_INT:
    case T_SIZE:
        if ((d->type == T_INT ? parse_int(value, &iv) : parse_size(value, &iv)) != 0 || (double)iv < d->min ||
            (double)iv > d->max) {
            rill_why(why, why_len, "bad value '%s' for %s: expected %s in [%.0f, %.0f]", value, d->key,
                    d->type == T_INT ? "an integer" : "a size (bytes, K, M, G)", d->min, d->max);
            return RILL_E_BAD_CONFIG;
        }
        *(int64_t *)field = iv;
        return 0;
    case T_DBL:
        errno = 0;
        dv = strtod(value, &end);
        if (errno || end == value || *end || !isfinite(dv) || dv < d->min || dv > d->max) {
            rill_why(why, why_len, "bad value '%s' for %s: expected a number in [%g, %g]", value, d->key, d->min,
                    d->max);
            return RILL_E_BAD_CONFIG;
        }
        *(double *)field = dv;
        return 0;
    }
    return RILL_E_BAD_CONFIG;
}

void cfg_defaults(struct rill_config *c)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < N_DEFS; i++) {
        int rc = set_def(c, &defs[i], defs[i].def, NULL, 0);
        assert(rc == 0 && "every default is a valid value");
        (void)rc;
    }
}

int cfg_set(struct rill_config *c, const char *key, const char *value, char *why, size_t why_len)
{
    const struct cfg_def *d = find(key);
    if (!d) {
        rill_why(why, why_len, "unknown config key '%s'", key);
        return RILL_E_BAD_CONFIG;
    }
    return set_def(c, d, value, why, why_len);
}

struct ini_ctx {
    struct rill_config *c;
    const char *path;
    char *why;
    size_t why_len;
    int rc;
    FILE *f;
    int lineno; /* Debian's inih does not pass line numbers: our reader counts */
};

static char *cfg_read_line(char *str, int num, void *stream)
{
    struct ini_ctx *x = stream;
    char *r = fgets(str, num, x->f);
    if (r)
        x->lineno++;
    return r;
}

static int ini_on_key(void *user, const char *section, const char *name, const char *value)
{
    struct ini_ctx *x = user;
    int lineno = x->lineno;
    if (x->rc)
        return 0;
    const struct cfg_def *d = find(name);
    if (!d) {
        rill_why(x->why, x->why_len, "%s:%d: unknown key '%s' in [%s]", x->path, lineno, name, section);
        x->rc = RILL_E_BAD_CONFIG;
        return 0;
    }
    if (strcmp(section, d->section) != 0) {
        rill_why(x->why, x->why_len, "%s:%d: key '%s' belongs in [%s], not [%s]", x->path, lineno, name,
                d->section, section);
        x->rc = RILL_E_BAD_CONFIG;
        return 0;
    }
    char inner[256];
    int rc = set_def(x->c, d, value, inner, sizeof inner);
    if (rc) {
        rill_why(x->why, x->why_len, "%s:%d: %s", x->path, lineno, inner);
        x->rc = rc;
        return 0;
    }
    return 1;
}

int cfg_load_file(struct rill_config *c, const char *path, char *why, size_t why_len)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        rill_why(why, why_len, "cannot read config file %s: %s", path, strerror(errno));
        return RILL_E_IO;
    }
    struct ini_ctx x = {c, path, why, why_len, 0, f, 0};
    int r = ini_parse_stream(cfg_read_line, &x, ini_on_key, &x);
    fclose(f);
    if (x.rc)
        return x.rc;
    if (r != 0) {
        rill_why(why, why_len, "%s:%d: syntax error", path, r);
        return RILL_E_BAD_CONFIG;
    }
    snprintf(c->config_file, sizeof c->config_file, "%s", path);
    return 0;
}

int cfg_parse_args(struct rill_config *c, int argc, char **argv, cfg_other_fn other, void *ctx, char *why,
                   size_t why_len)
{
    /* The file first, so that flags override it wherever they stand. */
    for (int i = 1; i < argc; i++) {
        const char *path = NULL;
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc) {
                rill_why(why, why_len, "--config needs a file");
                return RILL_E_BAD_CONFIG;
            }
            path = argv[i + 1];
        } else if (!strncmp(argv[i], "--config=", 9)) {
            path = argv[i] + 9;
        }
        if (path) {
            int rc = cfg_load_file(c, path, why, why_len);
            if (rc)
                return rc;
        }
    }
    for (int i = 1; i < argc;) {
        const char *a = argv[i];
        if (!strcmp(a, "--config")) {
            i += 2;
            continue;
        }
        if (!strncmp(a, "--config=", 9)) {
            i++;
            continue;
        }
        if (!strncmp(a, "--", 2) && a[2]) {
            char key[128];
            const char *eq = strchr(a + 2, '=');
            size_t klen = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
            if (klen < sizeof key) {
                memcpy(key, a + 2, klen);
                key[klen] = 0;
                for (char *p = key; *p; p++)
                    if (*p == '-')
                        *p = '_';
                if (cfg_is_key(key)) {
                    char *val;
                    if (eq) {
                        val = argv[i] + (eq - a) + 1;
                        i++;
                    } else if (i + 1 < argc) {
                        val = argv[i + 1];
                        i += 2;
                    } else {
                        rill_why(why, why_len, "option --%s needs a value", key);
                        return RILL_E_BAD_CONFIG;
                    }
                    int rc = cfg_set(c, key, val, why, why_len);
                    if (cfg_is_secret(key))
                        scrub(val);
                    if (rc)
                        return rc;
                    continue;
                }
            }
        }
        int used = other ? other(argc, argv, i, ctx) : 0;
        if (used < 0)
            return used;
        if (used == 0) {
            rill_why(why, why_len, "unknown option '%s' (see --help)", a);
            return RILL_E_BAD_CONFIG;
        }
        i += used;
    }
    return 0;
}

static char *value_text(const struct rill_config *c, const struct cfg_def *d)
{
    const void *field = (const char *)c + d->offset;
    char buf[64];
    switch (d->type) {
    case T_STR: return strdup((const char *)field);
    case T_BOOL: return strdup(*(const bool *)field ? "true" : "false");
    case T_INT:
    case T_SIZE: snprintf(buf, sizeof buf, "%lld", (long long)*(const int64_t *)field); return strdup(buf);
    case T_DBL: snprintf(buf, sizeof buf, "%.17g", *(const double *)field); return strdup(buf);
    }
    return strdup("");
}

int cfg_to_args(const struct rill_config *c, char ***argv_out, int *argc_out)
{
    char **argv = calloc(2 * N_DEFS + 1, sizeof *argv);
    if (!argv)
        return RILL_E_NOMEM;
    int n = 0;
    for (size_t i = 0; i < N_DEFS; i++) {
        if (cfg_is_secret(defs[i].key))
            continue;
        char flag[128];
        snprintf(flag, sizeof flag, "--%s", defs[i].key);
        argv[n++] = strdup(flag);
        argv[n++] = value_text(c, &defs[i]);
        if (!argv[n - 1] || !argv[n - 2]) {
            cfg_free_args(argv, n);
            return RILL_E_NOMEM;
        }
    }
    *argv_out = argv;
    *argc_out = n;
    return 0;
}

void cfg_free_args(char **argv, int argc)
{
    if (!argv)
        return;
    for (int i = 0; i < argc; i++)
        free(argv[i]);
    free(argv);
}

void cfg_print_help(void)
{
    const char *sec = "";
    for (size_t i = 0; i < N_DEFS; i++) {
        if (strcmp(sec, defs[i].section)) {
            sec = defs[i].section;
            printf("\n[%s]\n", sec);
        }
        printf("  --%-22s %s (default: %s)\n", defs[i].key, defs[i].help, defs[i].def[0] ? defs[i].def : "\"\"");
    }
}

void cfg_run_dir(const struct rill_config *c, char *out, size_t n)
{
    if (c->run_dir[0]) {
        snprintf(out, n, "%s", c->run_dir);
        return;
    }
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    if (xdg && *xdg && access(xdg, W_OK) == 0)
        snprintf(out, n, "%s/rill-%s", xdg, c->instance);
    else
        snprintf(out, n, "/tmp/rill-%u-%s", (unsigned)getuid(), c->instance);
}

void cfg_ring_prefix(const struct rill_config *c, char *out, size_t n)
{
    snprintf(out, n, "rill-%u-%s-", (unsigned)geteuid(), c->instance);
}

int cfg_ring_name(const struct rill_config *c, const char *worker, char *out, size_t n)
{
    int len = snprintf(out, n, "/rill-%u-%s-%s", (unsigned)geteuid(), c->instance, worker);
    return len < 0 || (size_t)len >= n ? RILL_E_BAD_CONFIG : 0;
}

void cfg_setup_log(const struct rill_config *c, const char *component, const char *id)
{
    int level = rlog_level_from_name(c->log_level);
    int fd = 2;
    if (c->log_file[0]) {
        int f = open(c->log_file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (f >= 0)
            fd = f;
    }
    rlog_init(component, id, level < 0 ? RLOG_INFO : (enum rlog_level)level, c->log_json, fd);
    if (level < 0)
        rlog_warn("unknown log_level '%s', using info", c->log_level);
}
