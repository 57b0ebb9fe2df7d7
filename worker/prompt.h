/* prompt.h — a request's prompt as token ids: its text tokenized (with BOS
 * when the model adds one; control-token text such as "<|im_start|>" becomes
 * the control token when req->parse_special), then the prompt_tokens it
 * carries, checked against the context.
 *
 * A pure function of the tokenizer and the request: it may run on any
 * thread (the intake runs it off the loop, sched_submit on the caller's).
 */
#ifndef RILL_PROMPT_H
#define RILL_PROMPT_H

#include <stddef.h>
#include <stdint.h>

#include "common/proto.h"
#include "tokenizer.h"

/* Token ids in a heap buffer of `cap` (the context + 1: a sequence grows
 * into it as it generates). */
struct prompt {
    int32_t *tokens;
    uint32_t n, cap;
};

/* Fill *p for req (p is overwritten; free it with prompt_free, also after an
 * error).  Errors, with `why`: RILL_E_CONTEXT_LENGTH (more than max_ctx
 * tokens), RILL_E_BAD_REQUEST (a prompt_tokens id outside the vocabulary),
 * RILL_E_NOMEM.  An empty result is not an error here (sched_submit_prompt
 * refuses it). */
int prompt_tokenize(const struct tok *tk, uint32_t max_ctx, const struct proto_submit *req, struct prompt *p,
                    char *why, size_t why_len);

void prompt_free(struct prompt *p);

#endif
