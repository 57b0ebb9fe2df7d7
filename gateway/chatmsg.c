/* chatmsg.c — see chatmsg.h. */
#include "chatmsg.h"
#include "common/err.h"
#include "common/utf8.h"

#include <stdlib.h>
#include <string.h>

/* Valid UTF-8, and not a string its parser marked as holding a NUL
 * (valueint -1: cJSON would have cut it there). */
static int text_ok(const cJSON *j)
{
    size_t n = strlen(j->valuestring);
    return j->valueint != -1 && utf8_valid_prefix(j->valuestring, n) == n;
}

/* Content given as parts becomes the one string templates expect; parts
 * that are not text are refused. */
static int join_parts(cJSON *m, const cJSON *c, int i, char *msg, size_t msg_len)
{
    size_t n = 0;
    for (const cJSON *e = c->child; e; e = e->next) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(e, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(e, "text");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") || !cJSON_IsString(text) || !text_ok(text))
            return rill_fail(msg, msg_len, RILL_E_BAD_REQUEST,
                             "messages[%d].content: only text parts ({\"type\":\"text\",\"text\":...}) are supported", i);
        n += strlen(text->valuestring);
    }
    char *joined = malloc(n + 1), *at = joined;
    if (!joined)
        return rill_fail(msg, msg_len, RILL_E_NOMEM, "out of memory");
    for (const cJSON *e = c->child; e; e = e->next) {
        const char *t = cJSON_GetObjectItemCaseSensitive(e, "text")->valuestring;
        size_t k = strlen(t);
        memcpy(at, t, k);
        at += k;
    }
    *at = 0;
    cJSON *str = cJSON_CreateString(joined);
    free(joined);
    if (!str || !cJSON_ReplaceItemInObjectCaseSensitive(m, "content", str)) {
        cJSON_Delete(str);
        return rill_fail(msg, msg_len, RILL_E_NOMEM, "out of memory");
    }
    return 0;
}

/* An assistant's tool_calls as OpenAI sends them back: arguments is a JSON
 * string.  Templates (Llama 3.1, Hermes) write it with tojson, as the
 * object HF expects: a string holding an object becomes the object. */
static int take_tool_calls(cJSON *calls, int i, char *msg, size_t msg_len)
{
    if (!cJSON_IsArray(calls))
        return rill_fail(msg, msg_len, RILL_E_BAD_REQUEST, "messages[%d].tool_calls: expected a list", i);
    int k = 0;
    for (cJSON *c = calls->child; c; c = c->next, k++) {
        cJSON *fn = cJSON_IsObject(c) ? cJSON_GetObjectItemCaseSensitive(c, "function") : NULL;
        const cJSON *name = cJSON_IsObject(fn) ? cJSON_GetObjectItemCaseSensitive(fn, "name") : NULL;
        if (!cJSON_IsString(name) || !text_ok(name))
            return rill_fail(msg, msg_len, RILL_E_BAD_REQUEST,
                             "messages[%d].tool_calls[%d]: expected {\"function\":{\"name\":...,\"arguments\":...}}", i, k);
        const cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
        if (!cJSON_IsString(args))
            continue;
        cJSON *obj = cJSON_Parse(args->valuestring);
        if (!cJSON_IsObject(obj)) {
            cJSON_Delete(obj);
            continue; /* not JSON: the template gets the string */
        }
        if (!cJSON_ReplaceItemInObjectCaseSensitive(fn, "arguments", obj)) {
            cJSON_Delete(obj);
            return rill_fail(msg, msg_len, RILL_E_NOMEM, "out of memory");
        }
    }
    return 0;
}

int chatmsg_take(cJSON *messages, size_t cap, char **out, uint32_t *out_len, char *msg, size_t msg_len)
{
    if (!cJSON_IsArray(messages) || !messages->child)
        return rill_fail(msg, msg_len, RILL_E_BAD_REQUEST, "messages: expected a non-empty list of messages");
    int i = 0;
    for (cJSON *m = messages->child; m; m = m->next, i++) {
        const cJSON *role = cJSON_IsObject(m) ? cJSON_GetObjectItemCaseSensitive(m, "role") : NULL;
        if (!cJSON_IsString(role) || !text_ok(role))
            return rill_fail(msg, msg_len, RILL_E_BAD_REQUEST, "messages[%d]: an object with a string role expected", i);
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
        int rc;
        if (cJSON_IsArray(c) && (rc = join_parts(m, c, i, msg, msg_len)))
            return rc;
        c = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (c && !cJSON_IsNull(c) && !cJSON_IsString(c))
            return rill_fail(msg, msg_len, RILL_E_BAD_REQUEST,
                             "messages[%d].content: expected a string or a list of parts", i);
        if (cJSON_IsString(c) && !text_ok(c))
            return rill_fail(msg, msg_len, RILL_E_BAD_REQUEST, "messages[%d].content: not valid UTF-8 text (or a NUL in it)", i);
        cJSON *calls = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
        if (calls && !cJSON_IsNull(calls) && (rc = take_tool_calls(calls, i, msg, msg_len)))
            return rc;
    }
    char *text = cJSON_PrintUnformatted(messages);
    if (!text)
        return rill_fail(msg, msg_len, RILL_E_NOMEM, "out of memory");
    size_t n = strlen(text);
    if (n > cap) {
        cJSON_free(text);
        return rill_fail(msg, msg_len, RILL_E_PROMPT_TOO_LONG, "messages: %zu bytes of JSON, at most %zu allowed", n,
                         cap);
    }
    *out = malloc(n + 1);
    if (!*out) {
        cJSON_free(text);
        return rill_fail(msg, msg_len, RILL_E_NOMEM, "out of memory");
    }
    memcpy(*out, text, n + 1);
    *out_len = (uint32_t)n;
    cJSON_free(text);
    return 0;
}

int chatmsg_tools(const cJSON *tools, size_t cap, char **out, uint32_t *out_len, char *msg, size_t msg_len)
{
    *out = NULL;
    *out_len = 0;
    if (!cJSON_IsArray(tools))
        return rill_fail(msg, msg_len, RILL_E_BAD_REQUEST, "tools: expected a list of tools");
    if (!tools->child)
        return 0;
    int i = 0;
    for (const cJSON *t = tools->child; t; t = t->next, i++) {
        const cJSON *type = cJSON_IsObject(t) ? cJSON_GetObjectItemCaseSensitive(t, "type") : NULL;
        const cJSON *fn = cJSON_IsObject(t) ? cJSON_GetObjectItemCaseSensitive(t, "function") : NULL;
        const cJSON *name = cJSON_IsObject(fn) ? cJSON_GetObjectItemCaseSensitive(fn, "name") : NULL;
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "function") || !cJSON_IsString(name) ||
            !name->valuestring[0] || !text_ok(name))
            return rill_fail(msg, msg_len, RILL_E_BAD_REQUEST,
                             "tools[%d]: expected {\"type\":\"function\",\"function\":{\"name\":...}}", i);
    }
    char *text = cJSON_PrintUnformatted(tools);
    if (!text)
        return rill_fail(msg, msg_len, RILL_E_NOMEM, "out of memory");
    size_t n = strlen(text);
    if (n > cap) {
        cJSON_free(text);
        return rill_fail(msg, msg_len, RILL_E_PROMPT_TOO_LONG, "tools: %zu bytes of JSON, at most %zu allowed", n, cap);
    }
    *out = malloc(n + 1);
    if (!*out) {
        cJSON_free(text);
        return rill_fail(msg, msg_len, RILL_E_NOMEM, "out of memory");
    }
    memcpy(*out, text, n + 1);
    *out_len = (uint32_t)n;
    cJSON_free(text);
    return 0;
}

int chatmsg_tools_chosen(const cJSON *tools, const cJSON *choice, size_t cap, char **out, uint32_t *out_len,
                         const char **param, char *msg, size_t msg_len)
{
    *out = NULL;
    *out_len = 0;
    *param = "tools";
    if (!tools || cJSON_IsNull(tools) || (cJSON_IsArray(tools) && !tools->child))
        return 0;
    if (cJSON_IsArray(tools) && choice && !cJSON_IsNull(choice)) {
        if (cJSON_IsString(choice) && !strcmp(choice->valuestring, "none"))
            return 0;
        if (!cJSON_IsString(choice) || strcmp(choice->valuestring, "auto")) {
            *param = "tool_choice";
            return rill_fail(msg, msg_len, RILL_E_BAD_REQUEST,
                             "tool_choice: only \"auto\" and \"none\" are supported (rill does not force a call)");
        }
    }
    int rc = chatmsg_tools(tools, cap, out, out_len, msg, msg_len);
    if (rc == RILL_E_NOMEM)
        *param = "";
    return rc;
}
