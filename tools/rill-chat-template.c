/* rill-chat-template — render a chat template as the worker does (worker/chat.h).
 *
 *   rill-chat-template --template FILE.jinja CONTEXT.json
 *   rill-chat-template --gguf MODEL.gguf CONTEXT.json      (its tokenizer.chat_template)
 *   rill-chat-template --builtin chatml CONTEXT.json       (chatml, llama3, llama2, mistral)
 *   rill-chat-template --print-template --gguf MODEL.gguf  (the template's source)
 *   rill-chat-template --jsonl --template FILE A.json B.json ...
 *
 * CONTEXT.json is an object: "messages" (an array), and optionally "tools",
 * "bos_token", "eos_token", "add_generation_prompt"; every other key is one
 * more template variable.  --now SECONDS fixes what strftime_now() sees.
 *
 * Prints the rendering, byte for byte, to stdout.  Exit status: 0; 2 when
 * the template fails (syntax, raise_exception, a type error...: the message
 * on stderr, alone on its line, after "error: <code>: "); 1 for a usage, file
 * or JSON problem.  With --jsonl, one line per context file instead:
 * {"output": "..."} or {"code": "bad_request", "error": "...", "raised": true},
 * and the exit status is 0 (the tests use it to render many contexts in one
 * process).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "err.h"
#include "worker/chat.h"
#include "worker/gguf.h"

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    while (b) {
        n += fread(b + n, 1, cap - n, f);
        if (n < cap)
            break;
        char *nb = realloc(b, cap * 2);
        if (!nb) {
            free(b);
            b = NULL;
            break;
        }
        b = nb;
        cap *= 2;
    }
    if (ferror(f)) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b)
        b[n < cap ? n : cap - 1] = 0;
    *len = n;
    return b;
}

/* Render the context file at `path`; 0, or 2 with the message in why (1: unreadable). */
static int render_file(const struct chat_tmpl *t, const char *path, long long now, char **out, size_t *olen,
                       int *code, int *raised, char *why, size_t why_len)
{
    size_t clen;
    *out = NULL;
    *code = 0;
    char *ctext = slurp(path, &clen);
    if (!ctext) {
        snprintf(why, why_len, "cannot read %s", path);
        return 1;
    }
    struct chat_opts o = {.now = now};
    int rc = chat_tmpl_render_json(t, ctext, clen, &o, out, olen, raised, why, why_len);
    free(ctext);
    *code = rc;
    return rc ? 2 : 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: rill-chat-template (--template FILE | --gguf FILE | --builtin NAME) [--now SECONDS] "
                    "CONTEXT.json\n       rill-chat-template --print-template (--gguf FILE | --builtin NAME)\n");
}

int main(int argc, char **argv)
{
    const char *tpath = NULL, *gpath = NULL, *builtin = NULL;
    long long now = 0;
    int print_only = 0, jsonl = 0;
    static const struct option opts[] = {
        {"template", required_argument, 0, 't'}, {"gguf", required_argument, 0, 'g'},
        {"builtin", required_argument, 0, 'b'},  {"now", required_argument, 0, 'n'},
        {"print-template", no_argument, 0, 'p'}, {"help", no_argument, 0, 'h'},
        {"jsonl", no_argument, 0, 'j'},
        {0, 0, 0, 0}};
    for (int c; (c = getopt_long(argc, argv, "t:g:b:n:ph", opts, NULL)) != -1;) {
        switch (c) {
        case 't': tpath = optarg; break;
        case 'g': gpath = optarg; break;
        case 'b': builtin = optarg; break;
        case 'n': now = strtoll(optarg, NULL, 10); break;
        case 'p': print_only = 1; break;
        case 'j': jsonl = 1; break;
        case 'h': usage(); return 0;
        default: usage(); return 1;
        }
    }
    if (!!tpath + !!gpath + !!builtin != 1 || (print_only ? optind != argc : jsonl ? optind >= argc : optind + 1 != argc)) {
        usage();
        return 1;
    }

    char why[1024] = "";
    char *tmpl = NULL;
    size_t tlen = 0;
    if (tpath) {
        tmpl = slurp(tpath, &tlen);
        if (!tmpl) {
            fprintf(stderr, "rill-chat-template: cannot read %s\n", tpath);
            return 1;
        }
    } else if (gpath) {
        struct gguf *g;
        int rc = gguf_open(gpath, &g, why, sizeof why);
        if (rc) {
            fprintf(stderr, "rill-chat-template: %s: %s\n", gpath, why);
            return 1;
        }
        struct gguf_str s;
        rc = gguf_get_str(g, "tokenizer.chat_template", &s, why, sizeof why);
        if (rc) {
            fprintf(stderr, "rill-chat-template: %s: %s\n", gpath,
                    rc == RILL_E_NOT_FOUND ? "no tokenizer.chat_template" : why);
            gguf_close(g);
            return 1;
        }
        tmpl = malloc(s.len + 1);
        if (tmpl) {
            memcpy(tmpl, s.s, s.len);
            tmpl[s.len] = 0;
        }
        tlen = s.len;
        gguf_close(g);
    } else {
        const char *src = chat_builtin(builtin);
        if (!src) {
            fprintf(stderr, "rill-chat-template: no built-in template '%s'\n", builtin);
            return 1;
        }
        tmpl = strdup(src);
        tlen = strlen(src);
    }
    if (!tmpl) {
        fprintf(stderr, "rill-chat-template: out of memory\n");
        return 1;
    }
    if (print_only) {
        fwrite(tmpl, 1, tlen, stdout);
        free(tmpl);
        return 0;
    }

    int status = 0;
    struct chat_tmpl *t = NULL;
    int prc = chat_tmpl_new(tmpl, tlen, &t, why, sizeof why);
    for (int i = optind; i < argc; i++) {
        char *out = NULL;
        size_t olen = 0;
        int code = prc, raised = 0;
        int st = prc ? 2 : render_file(t, argv[i], now, &out, &olen, &code, &raised, why, sizeof why);
        if (!jsonl) {
            if (st == 0)
                fwrite(out, 1, olen, stdout);
            else if (st == 2)
                fprintf(stderr, "error: %s: %s\n", rill_err_name(code), why);
            else
                fprintf(stderr, "rill-chat-template: %s\n", why);
            status = st;
        } else {
            cJSON *line = cJSON_CreateObject();
            if (st == 0) {
                cJSON_AddStringToObject(line, "output", out);
            } else {
                cJSON_AddStringToObject(line, "code", st == 2 ? rill_err_name(code) : "usage");
                cJSON_AddStringToObject(line, "error", why);
                cJSON_AddBoolToObject(line, "raised", raised);
            }
            char *txt = cJSON_PrintUnformatted(line);
            if (txt)
                printf("%s\n", txt);
            free(txt);
            cJSON_Delete(line);
        }
        free(out);
        if (prc && !jsonl)
            break;
    }
    chat_tmpl_free(t);
    free(tmpl);
    return status;
}
