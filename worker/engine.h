/* engine.h — a model ready to serve: the model, compute threads, KV cache,
 * forward pass and scheduler, sized from the config.  The worker process,
 * the engine benchmark and the tests build it the same way.
 */
#ifndef RILL_ENGINE_H
#define RILL_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "forward.h"
#include "kvcache.h"
#include "model.h"
#include "pool.h"
#include "sched.h"

struct engine {
    struct model *model;
    struct pool *pool;
    struct kv *kv;
    struct fwd *fwd;
    struct sched *sched;
    uint32_t max_ctx;
    uint32_t threads;
};

/* Load c->model and build everything.  With `progress`, the load draws a
 * progress line on a terminal.  Errors (with `why`): those of model_load,
 * fwd_create, and RILL_E_NOMEM. */
int engine_open(const struct rill_config *c, bool progress, struct engine *e, char *why, size_t why_len);
void engine_close(struct engine *e);

/* The KV-cache size the config asks for: kv_cache_bytes, or enough for
 * max_batch sequences of min(ctx, 2048) tokens, at most a quarter of RAM. */
size_t engine_kv_bytes(const struct rill_config *c, const struct model_config *mc, uint32_t max_ctx);

/* Where the engine's memory goes, in bytes (each an estimate of resident
 * memory from what the engine allocated, not read from the kernel):
 *   weights       fwd_weight_bytes(): packed matrices + file pages kept;
 *   kv_cache      KV blocks written and not trimmed, except idle cached ones;
 *   prefix_cache  idle cached prefix blocks (held by no sequence: what
 *                 eviction frees first);
 *   activations   the forward pass's scratch (max_batch + prefill_chunk rows).
 * The rest of a process's RSS (code, libraries, tokenizer, heap) is none of
 * these.  Cheap: no system call. */
struct engine_mem {
    uint64_t weights, kv_cache, prefix_cache, activations;
};
void engine_memory(const struct engine *e, struct engine_mem *m);

/* Resident set size of this process in bytes (0 if unknown). */
uint64_t engine_rss_bytes(void);

#endif
