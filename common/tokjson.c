/* tokjson.c — see tokjson.h. */
#include "tokjson.h"

void tokjson_fields(struct jsonw *w, const struct proto_token *t, const struct tokjson_opts *o)
{
    jsonw_key_int(w, "id", t->token_id);
    jsonw_key(w, "text");
    jsonw_strn(w, t->text, t->text_len);
    jsonw_key_uint(w, "position", t->position);
    jsonw_key_double(w, "latency_ms", t->latency_us / 1000.0, 3);
    jsonw_key_double(w, "logprob", t->logprob, o->logprob_digits);
    if (o->gen_us)
        jsonw_key_uint(w, "gen_us", t->t_gen_ns / 1000);
    if (!t->n_top)
        return;
    jsonw_key(w, "top_logprobs");
    jsonw_arr_begin(w);
    for (unsigned i = 0; i < t->n_top; i++) {
        jsonw_obj_begin(w);
        jsonw_key_int(w, "id", t->top[i].token_id);
        const char *p;
        size_t pl;
        if (o->piece && o->piece(o->piece_ctx, t->top[i].token_id, &p, &pl)) {
            jsonw_key(w, "text");
            jsonw_strn(w, p, pl);
        }
        jsonw_key_double(w, "logprob", t->top[i].logprob, o->logprob_digits);
        jsonw_obj_end(w);
    }
    jsonw_arr_end(w);
}
