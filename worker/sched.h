/* sched.h — continuous batching: which rows each step runs, and what comes
 * out of it.
 *
 * Requests wait in a queue (priority, then arrival), join the running set
 * between steps while the batch cap and the KV cache allow, and leave when
 * they finish.  A step has three parts:
 *   plan    who runs: cancelled sequences end (their LAST record goes
 *           out) and finished ones leave, waiting ones are admitted, the
 *           newest are preempted when the cache is short (below); then the
 *           rows: first one per running sequence that has all but its last
 *           token cached (decoding), then chunks of the prompts still
 *           prefilling, in admission order, within a token budget that
 *           keeps the step near the target latency while others decode (the
 *           whole prefill_chunk when nothing decodes), so a long prompt
 *           never stalls running streams;
 *   run     one forward pass over all of those rows;
 *   commit  each row that ends its sequence's known tokens yields logits,
 *           the sampler picks a token, the detokenizer turns it into text
 *           (held back while it may begin a stop string), and one token
 *           record per sequence goes to the emitter; the step ends with one
 *           flush (one ring publish); what finished or was cancelled
 *           meanwhile leaves at once.
 *
 * Memory: KV blocks are reserved as sequences grow.  When none are left, or
 * under critical pressure, the newest running sequences are preempted: their
 * cache is freed and they go back to the front of the queue with every token
 * they had, to be recomputed later.  Because the forward pass is
 * batch-invariant, a recomputed sequence continues exactly as it would have.
 *
 * Prefix cache (kvcache.h; when the cache has it on): at admission a
 * sequence attaches the longest cached prefix of its tokens (all but the
 * last, whose row gives the logits) and prefills only the rest; after each
 * step the full blocks a sequence computed are published, prompt and output
 * alike, so a system prompt, a conversation's earlier turns, a preempted
 * sequence and a resumed one (skip > 0: prompt + delivered tokens) are
 * computed once.  Idle cached blocks count as free: a reservation evicts
 * them, least recently used first, before anything is preempted, and under
 * memory pressure they go first (sched_trim).
 *
 * Positions: the output of a request is numbered 0, 1, 2, …; a resumed
 * request (skip > 0) carries its delivered tokens and emits from `skip` on.
 */
#ifndef RILL_SCHED_H
#define RILL_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "adapt.h"
#include "common/pressure_level.h"
#include "common/proto.h"
#include "forward.h"
#include "kvcache.h"
#include "model.h"
#include "prompt.h"

struct sched_config {
    uint32_t max_batch;        /* upper bound of the cap */
    uint32_t min_batch;
    uint32_t initial_batch;
    uint32_t prefill_chunk;    /* most prompt rows in one step */
    uint32_t max_ctx;          /* positions per sequence */
    uint32_t max_queue;        /* waiting requests before `overloaded` */
    double target_latency_ms;
    double max_latency_ms;
    double max_step_ms;        /* prefill chunks keep a step under this */
    bool fake_tokens;          /* fan-out benchmark: no model compute */
    uint32_t fake_phases;      /* with fake_tokens: a step advances the sequences of one phase
                                * (id % fake_phases); 0 or 1: all of them */
};

/* Where token records go: emit() once per record, flush() once per step. */
struct sched_out {
    void *ctx;
    /* Returns 0, or an error that stops the step (the record is lost: only
     * when the ring is gone). */
    int (*emit)(void *ctx, const struct proto_token *t);
    void (*flush)(void *ctx);
};

struct sched_stats {
    uint32_t running, waiting, prefilling;
    uint32_t cap;
    uint64_t steps, tokens, prefill_tokens, requests, preemptions, finished, cancelled;
    double last_step_ms;
    uint32_t last_batch;      /* decode rows in the last step */
    uint32_t last_rows;       /* all rows in the last step */
    size_t kv_used, kv_total;
    /* Prefix cache: admissions that looked (each admission, a recompute
     * after preemption too), those that found a cached prefix, their tokens
     * and the tokens found; published blocks now; blocks evicted so far. */
    uint64_t prefix_lookups, prefix_hits, prefix_lookup_tokens, prefix_hit_tokens, prefix_evictions;
    uint32_t prefix_blocks;
};

struct sched;

/* The model, forward pass and cache are borrowed.  Errors: RILL_E_NOMEM. */
int sched_create(const struct model *m, struct fwd *f, struct kv *kv, const struct sched_config *cfg,
                 struct sched **out);
void sched_free(struct sched *s);

/* Queue a request.  Tokenizes the prompt (and appends prompt_tokens) on the
 * caller's thread: sched_check + prompt_tokenize + sched_submit_prompt.
 * Returns 0, or: RILL_E_DUPLICATE_ID (id in use), RILL_E_BAD_REQUEST (empty
 * prompt, a token id out of range, skip beyond the tokens, bad sampling
 * values), RILL_E_CONTEXT_LENGTH (prompt does not fit the context),
 * RILL_E_MAX_TOKENS (prompt + max_tokens beyond the context),
 * RILL_E_MEMORY_LIMIT (more KV cache than there is), RILL_E_OVERLOADED
 * (queue full or emergency pressure), RILL_E_SHUTTING_DOWN (draining),
 * RILL_E_NOMEM.  `why` says more. */
int sched_submit(struct sched *s, const struct proto_submit *req, uint64_t now_ns, char *why, size_t why_len);

/* The same in two halves, for a caller that tokenizes elsewhere (the worker
 * loop: a long prompt takes ~100 ms to tokenize, which running streams must
 * not wait for).
 *
 * sched_check: what can be refused before tokenizing (draining, pressure,
 * queue full counting `elsewhere` requests the caller holds as waiting,
 * duplicate id among the requests here, sampling values, max_tokens).
 * Cheap; the errors are sched_submit's.
 *
 * sched_submit_prompt: queue req with its tokens *p (from prompt_tokenize),
 * taking them over in every case (*p is empty after).  Checks again what
 * sched_check checks (the state may have changed meanwhile), then what
 * needs the tokens.  now_ns is when the request arrived: its first token's
 * latency counts from there.  Errors: sched_submit's. */
int sched_check(const struct sched *s, const struct proto_submit *req, uint32_t elsewhere, char *why,
                size_t why_len);
int sched_submit_prompt(struct sched *s, const struct proto_submit *req, struct prompt *p, uint64_t now_ns,
                        char *why, size_t why_len);

/* Cancel: the sequence is freed before the next step and a LAST record
 * (finish cancelled) is emitted.  Idempotent while it is alive;
 * RILL_E_NOT_FOUND for an id that is not (or no longer) here. */
int sched_cancel(struct sched *s, uint64_t id);

/* Run one step (plan, run, commit) if there is work.  Returns the number of
 * rows run (0 when none could run: idle, everything waiting for memory, or
 * fake_phases' other phase), or a negative error from the forward pass or
 * the emitter.  A call that succeeds flushes exactly once. */
int sched_step(struct sched *s, const struct sched_out *out);

/* Cancel every request whose id has (id & mask) == value (the requests of
 * a gateway that is gone).  Returns how many. */
uint32_t sched_cancel_matching(struct sched *s, uint64_t mask, uint64_t value);

/* End every request now with a LAST record carrying `code` (shutdown).
 * Returns the first emitter error, if any. */
int sched_abort_all(struct sched *s, int code, const struct sched_out *out);

/* Whether there is anything to do (running, waiting or pending cancels). */
bool sched_busy(const struct sched *s);

/* The memory-pressure level (out-of-range values are clamped).  The cap
 * does not move on it — memory is the supervisor's, whose bound comes with
 * the level (sched_set_limit) — but the latency cap stops rising while it
 * is not normal; from critical, running sequences above the cap are
 * preempted (now and whenever the bound falls); at emergency nothing is
 * admitted. */
void sched_set_pressure(struct sched *s, enum pressure_level level);
/* Under memory pressure (the level of sched_set_pressure): evict idle
 * cached prefix blocks (least recently used first: a quarter of them at
 * warning, all from critical), then return the free KV blocks' memory to
 * the kernel.  Nothing at normal.  Returns the bytes released. */
size_t sched_trim(struct sched *s);
/* The supervisor's upper bound on the cap (memory). */
void sched_set_limit(struct sched *s, uint32_t limit);
/* Stop admitting new requests (drain). */
void sched_set_draining(struct sched *s, bool draining);

void sched_stats(const struct sched *s, struct sched_stats *st);
struct adapt *sched_adapt(struct sched *s);

/* Worker RSS in MB, put into every record (updated by the caller). */
void sched_set_mem_mb(struct sched *s, uint32_t mb);

#endif
