/* chat.h — chat messages to prompt text through a model's chat template.
 *
 * The template is the model's tokenizer.chat_template (Jinja2 source, see
 * jinja.h) or one of the built-in fallbacks by name.  It is rendered as
 * Hugging Face's apply_chat_template does: the variables are `messages`, the
 * JSON array given ([{role, content, tool_calls?, tool_call_id?, ...}], passed
 * through as it is), `tools` (the JSON array given, or None when there is
 * none — HF passes None, so `tools is defined` is true and `tools is none`
 * tells), `documents` (None), `add_generation_prompt`, `bos_token`,
 * `eos_token`, and any extra variables of the object `extra_json`
 * (e.g. {"enable_thinking": false} for Qwen3, {"date_string": "..."}).
 *
 * A conversation the template refuses (raise_exception, e.g. "Conversation
 * roles must alternate user/assistant/user/assistant/...") gives
 * RILL_E_BAD_REQUEST with exactly the template's message in `why`; so does a
 * message the template cannot use (an undefined field used, a type error),
 * with jinja2's message.  Bad JSON is RILL_E_BAD_REQUEST too ("messages: ...").
 *
 * Thread safety: a struct chat_tmpl is immutable; any number of threads may
 * render with it at once.
 */
#ifndef RILL_CHAT_H
#define RILL_CHAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct chat_opts {
    const char *tools_json;   /* JSON array of tool schemas, or NULL: none */
    size_t tools_len;
    const char *extra_json;   /* JSON object of more template variables, or NULL */
    size_t extra_len;
    const char *bos_token;    /* NULL: "" */
    const char *eos_token;    /* NULL: "" */
    bool add_generation_prompt;
    int64_t now;              /* what strftime_now() formats (seconds since the epoch, local time); 0: now */
    size_t max_output;        /* bytes of prompt text at most; 0: 16 MiB */
};

struct chat_tmpl;

/* Parse a template once for many renders.  Errors as jinja_parse
 * (RILL_E_BAD_FORMAT with the line, RILL_E_UNSUPPORTED, RILL_E_TOO_LARGE,
 * RILL_E_NOMEM).  Free with chat_tmpl_free (NULL is ignored). */
int chat_tmpl_new(const char *tmpl, size_t tmpl_len, struct chat_tmpl **out, char *why, size_t why_len);
void chat_tmpl_free(struct chat_tmpl *t);

/* Render `messages_json` (len bytes, a JSON array).  Returns 0 and the text in
 * *out (malloc'd, NUL-terminated, the caller frees), its length in *out_len;
 * or RILL_E_BAD_REQUEST (bad JSON, the template refused the conversation or
 * failed on it), RILL_E_TOO_LARGE (output or work over the limits),
 * RILL_E_UNSUPPORTED (the template uses Jinja this subset lacks),
 * RILL_E_NOMEM; the message in `why`.  `*raised` (may be NULL) is set when the
 * error is the template's own raise_exception(). */
int chat_tmpl_render(const struct chat_tmpl *t, const char *messages_json, size_t len, const struct chat_opts *o,
                     char **out, size_t *out_len, int *raised, char *why, size_t why_len);

/* The same from one JSON object of variables (rill-chat-template's context
 * files): "messages" (an array) and any others as they are; the ones HF always
 * passes get HF's values when absent (tools and documents None,
 * add_generation_prompt false, bos_token and eos_token "").  Of `o` only now
 * and max_output count.  Errors as chat_tmpl_render ("context: ..."). */
int chat_tmpl_render_json(const struct chat_tmpl *t, const char *ctx_json, size_t len, const struct chat_opts *o,
                          char **out, size_t *out_len, int *raised, char *why, size_t why_len);

/* Parse and render once: chat_tmpl_new + chat_tmpl_render, errors of both. */
int chat_render(const char *tmpl, size_t tmpl_len, const char *messages_json, size_t len, const struct chat_opts *o,
                char **out, size_t *out_len, char *why, size_t why_len);

/* The Jinja source of a built-in template, for models without one:
 * "chatml" (<|im_start|>role\n...<|im_end|>), "llama3" (<|start_header_id|>),
 * "llama2" ([INST] <<SYS>>), "mistral" ([INST] ... [/INST]); NULL for
 * another name.  The string is static. */
const char *chat_builtin(const char *name);

#endif
