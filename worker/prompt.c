/* prompt.c — see prompt.h. */
#include "prompt.h"
#include "common/err.h"

#include <stdlib.h>
#include <string.h>

int prompt_tokenize(const struct tok *tk, uint32_t max_ctx, const struct proto_submit *req, struct prompt *p,
                    char *why, size_t why_len)
{
    /* Tokenize into a buffer of the context's size: more does not fit anyway
     * (tok_encode still counts them, for the error). */
    size_t cap = (size_t)max_ctx + 1, n = 0;
    *p = (struct prompt){.tokens = malloc(cap * sizeof *p->tokens), .cap = (uint32_t)cap};
    if (!p->tokens)
        return RILL_E_NOMEM;
    int rc = 0;
    if (req->prompt_len || !req->n_prompt_tokens) {
        /* as llama.cpp's server: BOS/EOS as the vocabulary says, and
         * control-token text parsed unless the request says the text is
         * untrusted */
        unsigned flags = TOK_ENC_ADD_SPECIAL | (req->parse_special ? TOK_ENC_PARSE_SPECIAL : 0);
        rc = tok_encode_ex(tk, req->prompt ? req->prompt : "", req->prompt_len, flags, p->tokens, cap, &n);
        if (rc == RILL_E_TOO_LARGE) {
            rill_why(why, why_len, "prompt is %zu tokens, the context is %u", n, max_ctx);
            return RILL_E_CONTEXT_LENGTH;
        }
        if (rc)
            return rc;
    }
    p->n = (uint32_t)n;
    uint32_t vocab = tok_n_vocab(tk);
    for (uint32_t i = 0; i < req->n_prompt_tokens; i++) {
        int32_t t = req->prompt_tokens[i];
        if (t < 0 || (uint32_t)t >= vocab) {
            rill_why(why, why_len, "prompt_tokens[%u] = %d is not a token of this model", i, t);
            return RILL_E_BAD_REQUEST;
        }
        if (p->n >= max_ctx) {
            rill_why(why, why_len, "prompt is over %u tokens, the context is %u", p->n, max_ctx);
            return RILL_E_CONTEXT_LENGTH;
        }
        p->tokens[p->n++] = t;
    }
    return 0;
}

void prompt_free(struct prompt *p)
{
    free(p->tokens);
    *p = (struct prompt){0};
}
