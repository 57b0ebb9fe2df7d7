/* chatmsg.h — chat messages from a client ([{role, content, ...}], as the
 * OpenAI API has them), checked for shape and turned into the JSON text the
 * worker renders with the model's chat template.  One check for every
 * protocol that accepts messages (the WebSocket generate, /v1/chat).
 *
 * Checked here: a non-empty array of objects, each with a string role;
 * content a string, null, or a list of text parts ({"type":"text","text":..},
 * joined into one string as vLLM and llama.cpp do); all text valid UTF-8;
 * no NUL (a parser marks a string that held one with valueint -1, as
 * creq.c does, since cJSON would cut it there); the JSON text at most
 * `cap` bytes.  What else a template wants (roles
 * alternating, a system message first, …) it says itself when it renders.
 */
#ifndef RILL_CHATMSG_H
#define RILL_CHATMSG_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

/* messages is modified (parts joined).  On success *out is malloc'd JSON
 * text of *out_len bytes (NUL after).  Errors: RILL_E_BAD_REQUEST and
 * RILL_E_PROMPT_TOO_LONG with the reason in msg (naming the message by
 * index), RILL_E_NOMEM. */
int chatmsg_take(cJSON *messages, size_t cap, char **out, uint32_t *out_len, char *msg, size_t msg_len);

/* The tools of a chat (OpenAI's [{"type":"function","function":{"name",
 * "description","parameters"}}]) for the template: each must be a function
 * with a non-empty name.  An empty list: *out NULL, 0.  Else *out is malloc'd
 * JSON text of *out_len bytes.  Errors as chatmsg_take ("tools..."). */
int chatmsg_tools(const cJSON *tools, size_t cap, char **out, uint32_t *out_len, char *msg, size_t msg_len);

/* A request's tools with its tool_choice, as every protocol takes them:
 * tools absent, null or [] are none; tool_choice absent, null or "auto"
 * sends them (checked by chatmsg_tools), "none" drops them (*out NULL).
 * Anything else ("required", a named function) is refused: rill does not
 * constrain sampling, so it cannot promise a call, and treating it as
 * "auto" would be a silent lie.  Errors as chatmsg_tools; *param says which
 * field was wrong ("tools" or "tool_choice"; "" for RILL_E_NOMEM). */
int chatmsg_tools_chosen(const cJSON *tools, const cJSON *choice, size_t cap, char **out, uint32_t *out_len,
                         const char **param, char *msg, size_t msg_len);

#endif
