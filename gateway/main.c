/* rill-gateway — clients' WebSocket and HTTP front: routes generations to
 * workers and fans their tokens out from the shared-memory rings.
 *
 *   rill-gateway [--config FILE] [--key value ...]
 */
#include "common/memtune.h"
#include "common/config.h"
#include "common/err.h"
#include "common/log.h"
#include "common/rundir.h"
#include "server.h"

#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <signal.h>

static int other_arg(int argc, char **argv, int i, void *ctx)
{
    (void)argc;
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
        *(int *)ctx = 1;
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    memtune_apply(argv); /* first: it may re-execute the process (common/memtune.h) */
    struct rill_config c;
    cfg_defaults(&c);
    int help = 0;
    char why[512] = "";
    if (cfg_parse_args(&c, argc, argv, other_arg, &help, why, sizeof why)) {
        fprintf(stderr, "rill-gateway: %s\n", why);
        return 2;
    }
    if (help) {
        printf("usage: rill-gateway [--config FILE] [--key value ...]\n\nconfig keys:");
        cfg_print_help();
        return 0;
    }
    cfg_setup_log(&c, "gateway", "g0");
    /* One descriptor per connection: take all the process may have. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (c.control[0])
        prctl(PR_SET_PDEATHSIG, RILL_PARENT_DEATH_SIGNAL); /* an orphaned gateway drains and exits (server.c) */
    /* server_run fails only while starting (and has said why): under a
     * supervisor, restarting would not help. */
    if (server_run(&c))
        return c.control[0] ? RUNDIR_EXIT_STARTUP : 1;
    return 0;
}
