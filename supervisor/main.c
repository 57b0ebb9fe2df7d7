/* rill-supervisor — runs the pipeline: the gateway and N workers, restarted
 * when they die, throttled under memory pressure, drained on a signal.
 *
 *   rill-supervisor [--config FILE] [--port P] [--key value ...]
 * (deploy/rill-up is the friendly front: it also makes the default model.)
 */
#include "common/memtune.h"
#include "common/config.h"
#include "common/err.h"
#include "common/log.h"
#include "sup.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct extra {
    bool help;
    const char *port;
    bool port_missing;
};

static int other_arg(int argc, char **argv, int i, void *ctx)
{
    struct extra *x = ctx;
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
        x->help = true;
        return 1;
    }
    if (!strcmp(argv[i], "--port")) {
        if (i + 1 >= argc) {
            x->port_missing = true;
            return 1;
        }
        x->port = argv[i + 1];
        return 2;
    }
    return 0;
}

int main(int argc, char **argv)
{
    memtune_apply(argv); /* first: it may re-execute the process (common/memtune.h) */
    struct rill_config c;
    cfg_defaults(&c);
    struct extra x = {0};
    char why[512] = "";
    if (cfg_parse_args(&c, argc, argv, other_arg, &x, why, sizeof why)) {
        fprintf(stderr, "rill-supervisor: %s\n", why);
        return 2;
    }
    if (x.port_missing) {
        fprintf(stderr, "rill-supervisor: --port needs a value (a port number)\n");
        return 2;
    }
    if (x.help) {
        printf("usage: rill-supervisor [--config FILE] [--port P] [--key value ...]\n\nconfig keys:");
        cfg_print_help();
        return 0;
    }
    if (x.port) {
        /* --port P keeps the host of `listen` (loopback by default). */
        char *end;
        long p = strtol(x.port, &end, 10);
        char *colon = strrchr(c.listen, ':');
        if (*end || p < 0 || p > 65535 || !colon) {
            fprintf(stderr, "rill-supervisor: bad --port '%s'\n", x.port);
            return 2;
        }
        snprintf(colon + 1, sizeof c.listen - (size_t)(colon + 1 - c.listen), "%ld", p);
    }
    cfg_setup_log(&c, "supervisor", NULL);
    return sup_run(&c);
}
