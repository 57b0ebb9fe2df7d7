/* engine.c — see engine.h. */
#include "engine.h"
#include "common/procstat.h"
#include "common/err.h"
#include "common/log.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

void openblas_set_num_threads(int num_threads);

size_t engine_kv_bytes(const struct rill_config *c, const struct model_config *mc, uint32_t max_ctx)
{
    if (c->kv_cache_bytes > 0)
        return (size_t)c->kv_cache_bytes;
    size_t per_token = (size_t)mc->n_layers * 2 * mc->n_kv_heads * mc->head_dim * sizeof(float);
    size_t tokens = (size_t)c->max_batch * (max_ctx < 2048 ? max_ctx : 2048);
    size_t want = per_token * tokens;
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    size_t quarter = pages > 0 && psz > 0 ? (size_t)pages * (size_t)psz / 4 : want;
    return want < quarter ? want : quarter;
}

void engine_memory(const struct engine *e, struct engine_mem *m)
{
    struct kv_prefix_stats ps;
    kv_prefix_stats(e->kv, &ps);
    uint64_t resident = kv_bytes_resident(e->kv);
    uint64_t idle = (uint64_t)ps.idle * kv_block_bytes(e->kv);
    assert(idle <= resident); /* an idle cached block was written */
    m->weights = fwd_weight_bytes(e->fwd);
    m->kv_cache = resident - idle;
    m->prefix_cache = idle;
    m->activations = fwd_scratch_bytes(e->fwd);
}

uint64_t engine_rss_bytes(void) { return procstat_rss(0); }

int engine_open(const struct rill_config *c, bool progress, struct engine *e, char *why, size_t why_len)
{
    memset(e, 0, sizeof *e);
    /* Our pool runs the matrix products; OpenBLAS must not spin threads of
     * its own on the same cores. */
    openblas_set_num_threads(1);
    int rc = model_load(c->model, progress, &e->model, why, why_len);
    if (rc)
        return rc;
    const struct model_config *mc = &e->model->cfg;
    e->max_ctx = c->context > 0 ? (uint32_t)c->context : mc->ctx;
    if (e->max_ctx == 0)
        e->max_ctx = 2048;
    e->pool = pool_create((uint32_t)c->threads);
    if (!e->pool) {
        engine_close(e);
        return RILL_E_NOMEM;
    }
    e->threads = pool_threads(e->pool);
    size_t kv_bytes = engine_kv_bytes(c, mc, e->max_ctx);
    rc = kv_create(mc->n_layers, mc->n_kv_heads * mc->head_dim, (uint32_t)c->kv_block_tokens, kv_bytes, &e->kv);
    if (rc) {
        snprintf(why, why_len, "cannot reserve %zu MiB of KV cache", kv_bytes >> 20);
        engine_close(e);
        return rc;
    }
    /* Fake tokens compute no keys or values worth keeping. */
    kv_prefix_enable(e->kv, c->prefix_cache && !c->fake_tokens);
    kv_prefix_limit(e->kv, (size_t)c->prefix_cache_bytes);
    uint32_t max_rows = (uint32_t)c->max_batch + (uint32_t)c->prefill_chunk;
    rc = fwd_create(e->model, e->kv, e->pool, max_rows, e->max_ctx, &e->fwd, why, why_len);
    if (rc) {
        engine_close(e);
        return rc;
    }
    if (!strcmp(c->matmul, "blas")) {
        fwd_set_matmul(e->fwd, FWD_BLAS, 1);
    } else if (strcmp(c->matmul, "native")) {
        snprintf(why, why_len, "bad value '%s' for matmul: expected native or blas", c->matmul);
        engine_close(e);
        return RILL_E_BAD_CONFIG;
    }
    struct sched_config sc = {
        .max_batch = (uint32_t)c->max_batch,
        .min_batch = (uint32_t)c->min_batch,
        .initial_batch = (uint32_t)c->max_batch,
        .prefill_chunk = (uint32_t)c->prefill_chunk,
        .max_ctx = e->max_ctx,
        .max_queue = 1024,
        .target_latency_ms = c->target_latency_ms,
        .max_latency_ms = c->max_latency_ms,
        .max_step_ms = c->max_step_ms,
        .fake_tokens = c->fake_tokens,
        .fake_phases = (uint32_t)c->fake_phases,
    };
    rc = sched_create(e->model, e->fwd, e->kv, &sc, &e->sched);
    if (rc) {
        engine_close(e);
        return rc;
    }
    rlog_info("engine: %u threads, context %u, KV cache %zu MiB in %u blocks of %u tokens (prefix cache %s), "
              "scratch %zu KiB",
              e->threads, e->max_ctx, kv_bytes >> 20, kv_blocks_total(e->kv), kv_block_tokens(e->kv),
              kv_prefix_enabled(e->kv) ? "on" : "off", fwd_scratch_bytes(e->fwd) >> 10);
    return 0;
}

void engine_close(struct engine *e)
{
    sched_free(e->sched);
    fwd_free(e->fwd);
    kv_free(e->kv);
    pool_free(e->pool);
    model_free(e->model);
    memset(e, 0, sizeof *e);
}
