/* intake.h — new requests are tokenized on a thread of their own.
 *
 * Tokenizing a maximum-size prompt (256 KiB of text, ~35k tokens of the 24M
 * model's vocabulary) takes ~100 ms.  Done on the worker's loop thread, as it
 * once was, every running stream waited that long for its next token.  The
 * loop hands each new request to the intake instead, goes on stepping, and
 * takes the request back, tokenized, when intake_fd() turns readable.
 *
 * One thread, first in first out: requests come back in the order they came
 * (admission keeps arrival order), and tokenizing never takes more than one
 * core, at a lower priority than the forward pass (nice 10: on busy cores a
 * maximum-size prompt takes ~1 s to come back instead of ~0.1 s, and the
 * steps it shares a core with slow by a few percent, not by half).  A short
 * prompt that comes after a long one waits for it.
 *
 * A cancel while a request is here is remembered (job->cancelled), not acted
 * on: the request is still tokenized and comes back, so that its client is
 * told exactly what it would have been told had the cancel come a moment
 * later (accepted, then a LAST record with finish cancelled; or rejected,
 * when the prompt is bad).
 *
 * Threads: every function is called from one thread (the loop); the
 * intake's own thread only tokenizes.
 */
#ifndef RILL_INTAKE_H
#define RILL_INTAKE_H

#include <stdbool.h>
#include <stdint.h>

#include "common/proto.h"
#include "common/zsock.h"
#include "prompt.h"
#include "tokenizer.h"

struct intake_job {
    struct proto_submit req;   /* a copy: its prompt and prompt_tokens belong to the job */
    uint64_t t_arrive;         /* the caller's clock when the request came */
    bool cancelled;            /* a cancel came while it was here */
    int rc;                    /* 0: `prompt` holds its tokens; else why it cannot run */
    struct prompt prompt;
    char why[256];
    /* the intake's */
    struct intake_job *next;
    bool done;
};

struct intake;

/* Start the thread.  The tokenizer is borrowed (it is immutable, so the
 * thread may share it); prompts are held to max_ctx tokens as
 * prompt_tokenize does.  Errors: RILL_E_NOMEM, RILL_E_IO (no thread or
 * eventfd). */
int intake_create(const struct tok *tk, uint32_t max_ctx, struct intake **out);

/* Stop the thread (after the prompt it is on) and free every job still here.
 * NULL is ignored. */
void intake_free(struct intake *in);

/* Readable while a tokenized job waits for intake_pop (level-triggered until
 * intake_pop returns NULL). */
int intake_fd(const struct intake *in);

/* Chat requests (submit.messages) are rendered with `tmpl` (taken over;
 * freed by intake_free) before they are tokenized, with the control tokens
 * of the text parsed; bos/eos are the texts the template's bos_token and
 * eos_token stand for (copied; NULL: "").  Without a template (NULL) a chat
 * request is refused as bad_request saying `why`.  Call it before the first
 * intake_push.  RILL_E_NOMEM. */
struct chat_tmpl;
int intake_set_chat(struct intake *in, struct chat_tmpl *tmpl, const char *bos, const char *eos, const char *why);

/* Take a request to tokenize.  Its prompt, prompt_tokens and messages move
 * into the job (they must be heap memory, as proto_decode() leaves them: a
 * megabyte prompt is not copied on the loop) and are NULL in *req after;
 * the rest is copied.  Returns 0, or RILL_E_NOMEM (then *req is untouched). */
int intake_push(struct intake *in, struct proto_submit *req, uint64_t t_arrive);

/* The next job, in the order they were pushed, once it is tokenized (NULL:
 * none is yet).  The caller owns it: intake_job_free. */
struct intake_job *intake_pop(struct intake *in);
void intake_job_free(struct intake_job *j);

/* Wait up to timeout_us for the oldest job to be tokenized.  Returns whether
 * intake_pop has one now. */
bool intake_wait(struct intake *in, uint32_t timeout_us);

/* Mark a job here cancelled.  0, or RILL_E_NOT_FOUND for an id that is not
 * here (popped already, or never pushed).  Idempotent. */
int intake_cancel(struct intake *in, uint64_t id);

/* Mark cancelled every job whose id has (id & mask) == value and is not
 * marked yet.  Returns how many. */
uint32_t intake_cancel_matching(struct intake *in, uint64_t mask, uint64_t value);

/* Whether a job with this id is here. */
bool intake_has(struct intake *in, uint64_t id);

/* Jobs here (pushed, not yet popped), and the bytes of their prompts. */
uint32_t intake_count(const struct intake *in);
uint64_t intake_bytes(const struct intake *in);

/* Stop the thread now, after the prompt it is on: the jobs it has not
 * started come back from intake_pop at once, with rc `code` (shutdown). */
void intake_stop(struct intake *in, int code);

#endif
