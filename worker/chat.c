/* chat.c — chat messages through a Jinja chat template (see chat.h). */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/err.h"
#include "worker/chat.h"
#include "worker/jinja.h"

struct chat_tmpl {
    struct jinja_tmpl *j;
};

/* The fallbacks, as Jinja, in the forms their models' own templates have. */
static const struct {
    const char *name, *src;
} builtins[] = {
    {"chatml",
     "{% for message in messages %}"
     "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
     "{% endfor %}"
     "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"},
    {"llama3",
     "{% for message in messages %}"
     "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
     "message['content'] | trim + '<|eot_id|>' %}"
     "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
     "{{ content }}"
     "{% endfor %}"
     "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"},
    {"llama2",
     "{% if messages[0]['role'] == 'system' %}"
     "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
     "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
     "{% for message in loop_messages %}"
     "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
     "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
     "{% endif %}"
     "{% if loop.index0 == 0 and system_message != false %}"
     "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
     "{% else %}{% set content = message['content'] %}{% endif %}"
     "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
     "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
     "{% endfor %}"},
    {"mistral",
     "{{ bos_token }}"
     "{% for message in messages %}"
     "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
     "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
     "{% endif %}"
     "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
     "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
     "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
     "{% endfor %}"},
};

const char *chat_builtin(const char *name)
{
    for (size_t i = 0; name && i < sizeof builtins / sizeof builtins[0]; i++)
        if (!strcmp(builtins[i].name, name))
            return builtins[i].src;
    return NULL;
}

int chat_tmpl_new(const char *tmpl, size_t tmpl_len, struct chat_tmpl **out, char *why, size_t why_len)
{
    *out = NULL;
    struct chat_tmpl *t = calloc(1, sizeof *t);
    if (!t)
        return rill_fail(why, why_len, RILL_E_NOMEM, "out of memory");
    int rc = jinja_parse(tmpl, tmpl_len, &t->j, why, why_len);
    if (rc) {
        free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void chat_tmpl_free(struct chat_tmpl *t)
{
    if (!t)
        return;
    jinja_free(t->j);
    free(t);
}

/* jinja_json_parse (floats stay floats), with the failure said. */
static cJSON *parse_json(const char *what, const char *s, size_t len, int want_type, char *why, size_t why_len)
{
    cJSON *j = jinja_json_parse(s, len);
    if (!j) {
        rill_why(why, why_len, "%s: not valid JSON", what);
        return NULL;
    }
    if (!(j->type & want_type)) {
        rill_why(why, why_len, "%s: expected a JSON %s", what, want_type == cJSON_Array ? "array" : "object");
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

int chat_tmpl_render(const struct chat_tmpl *t, const char *messages_json, size_t len, const struct chat_opts *o,
                     char **out, size_t *out_len, int *raised, char *why, size_t why_len)
{
    static const struct chat_opts none = {0};
    *out = NULL;
    if (raised)
        *raised = 0;
    if (!o)
        o = &none;
    int rc = RILL_E_BAD_REQUEST;
    cJSON *ctx = NULL, *msgs = NULL, *tools = NULL;
    if (o->extra_json) {
        ctx = parse_json("extra variables", o->extra_json, o->extra_len, cJSON_Object, why, why_len);
        if (!ctx)
            return rc;
    } else if (!(ctx = cJSON_CreateObject())) {
        return rill_fail(why, why_len, RILL_E_NOMEM, "out of memory");
    }
    msgs = parse_json("messages", messages_json ? messages_json : "", messages_json ? len : 0, cJSON_Array, why,
                      why_len);
    if (!msgs)
        goto out;
    if (o->tools_json) {
        tools = parse_json("tools", o->tools_json, o->tools_len, cJSON_Array, why, why_len);
        if (!tools)
            goto out;
    } else {
        tools = cJSON_CreateNull();
    }
    /* Later keys win over extra ones of the same name, as HF's render(**kwargs) */
    const char *fixed[] = {"messages", "tools", "documents", "add_generation_prompt", "bos_token", "eos_token"};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        cJSON_DeleteItemFromObjectCaseSensitive(ctx, fixed[i]);
    cJSON_AddItemToObject(ctx, "messages", msgs);
    msgs = NULL;
    cJSON_AddItemToObject(ctx, "tools", tools);
    tools = NULL;
    if (!cJSON_AddNullToObject(ctx, "documents") ||
        !cJSON_AddBoolToObject(ctx, "add_generation_prompt", o->add_generation_prompt) ||
        !cJSON_AddStringToObject(ctx, "bos_token", o->bos_token ? o->bos_token : "") ||
        !cJSON_AddStringToObject(ctx, "eos_token", o->eos_token ? o->eos_token : "")) {
        rc = rill_fail(why, why_len, RILL_E_NOMEM, "out of memory");
        goto out;
    }
    struct jinja_limits lim = {.max_output = o->max_output};
    rc = jinja_render(t->j, ctx, o->now, &lim, out, out_len, raised, why, why_len);
out:
    cJSON_Delete(msgs);
    cJSON_Delete(tools);
    cJSON_Delete(ctx);
    return rc;
}

int chat_tmpl_render_json(const struct chat_tmpl *t, const char *ctx_json, size_t len, const struct chat_opts *o,
                          char **out, size_t *out_len, int *raised, char *why, size_t why_len)
{
    static const struct chat_opts none = {0};
    *out = NULL;
    if (raised)
        *raised = 0;
    if (!o)
        o = &none;
    cJSON *ctx = parse_json("context", ctx_json ? ctx_json : "", ctx_json ? len : 0, cJSON_Object, why, why_len);
    if (!ctx)
        return RILL_E_BAD_REQUEST;
    int rc = RILL_E_BAD_REQUEST;
    if (!cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(ctx, "messages"))) {
        rill_why(why, why_len, "context: \"messages\" is not an array");
        goto out;
    }
    /* what HF passes when the caller does not: tools and documents None, no generation prompt */
    cJSON_DeleteItemFromObjectCaseSensitive(ctx, "documents");
    if ((!cJSON_HasObjectItem(ctx, "tools") && !cJSON_AddNullToObject(ctx, "tools")) ||
        !cJSON_AddNullToObject(ctx, "documents") ||
        (!cJSON_HasObjectItem(ctx, "add_generation_prompt") && !cJSON_AddFalseToObject(ctx, "add_generation_prompt")) ||
        (!cJSON_HasObjectItem(ctx, "bos_token") && !cJSON_AddStringToObject(ctx, "bos_token", "")) ||
        (!cJSON_HasObjectItem(ctx, "eos_token") && !cJSON_AddStringToObject(ctx, "eos_token", ""))) {
        rc = rill_fail(why, why_len, RILL_E_NOMEM, "out of memory");
        goto out;
    }
    struct jinja_limits lim = {.max_output = o->max_output};
    rc = jinja_render(t->j, ctx, o->now, &lim, out, out_len, raised, why, why_len);
out:
    cJSON_Delete(ctx);
    return rc;
}

int chat_render(const char *tmpl, size_t tmpl_len, const char *messages_json, size_t len, const struct chat_opts *o,
                char **out, size_t *out_len, char *why, size_t why_len)
{
    struct chat_tmpl *t;
    *out = NULL;
    int rc = chat_tmpl_new(tmpl, tmpl_len, &t, why, why_len);
    if (rc)
        return rc;
    rc = chat_tmpl_render(t, messages_json, len, o, out, out_len, NULL, why, why_len);
    chat_tmpl_free(t);
    return rc;
}
