/* jinja.h — a Jinja2 subset, enough to render the chat templates that model
 * files carry (tokenizer.chat_template) byte for byte as Hugging Face
 * transformers does: jinja2's ImmutableSandboxedEnvironment with
 * trim_blocks=True, lstrip_blocks=True, the loopcontrols extension, and the
 * globals raise_exception(msg) and strftime_now(fmt), tojson as HF defines it
 * (json.dumps(x, ensure_ascii=False, indent=..., separators=...)).
 *
 * What is there: text with {{ }}, {% %} and {# #} and their whitespace
 * control (-, +, trim_blocks, lstrip_blocks, the single trailing newline
 * dropped); for (tuple targets, `if` filter, else, loop.*, break/continue),
 * if/elif/else, set (names, tuples, namespace attributes, block set), macro
 * (positional, keyword and default arguments), filter blocks, raw blocks,
 * generation blocks (rendered as plain text); expressions with jinja2's precedence:
 * literals (strings with Python escapes, ints, floats, lists, tuples, dicts),
 * subscripts and slices, attributes, calls, filters, tests, `in`, `not in`,
 * chained comparisons, and/or/not, ~, + - * / // % **, inline if-else.
 * Values follow Python: str() and repr() of every type, float repr, 1 == 1.0,
 * truthiness, string length and slices in code points, and jinja2's default
 * Undefined (prints as "", iterates as empty, fails when used otherwise with
 * jinja2's message, e.g. "'dict object' has no attribute 'x'").
 * Not there: extends/include/import/block, call blocks, recursive loops,
 * star-arguments (*args, **kwargs), format specs in str.format and "%" other
 * than %s %r %d %i %f, integers past 64 bits, the printing of a generator or
 * a method (Python shows an address), case mapping beyond Latin, Greek and
 * Cyrillic; they fail with RILL_E_UNSUPPORTED or differ in that detail only,
 * never crash.
 *
 * Numbers from JSON: a JSON number is a Python int when its literal has no
 * fraction or exponent and a float otherwise ("1.0" stays 1.0), as Python's
 * json reads it — provided the cJSON tree came from jinja_json_parse, which
 * marks the float literals (a tree from cJSON_Parse gives integral values as
 * ints).  cJSON keeps a double, so integers beyond 2^53 lose precision;
 * Python ints are unbounded, rill's are int64 (overflow is an error).
 *
 * Templates are untrusted (they come from model files): parsing and
 * rendering are bounded — expression nesting, macro recursion, loop
 * iterations, evaluation steps, memory and output size (struct jinja_limits)
 * — and every failure is an error value with a message, never a crash.
 *
 * Thread safety: a parsed template is immutable; several threads may render
 * it at once.
 */
#ifndef RILL_JINJA_H
#define RILL_JINJA_H

#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

struct jinja_tmpl;

/* Bounds of one render; a zero field takes its default. */
struct jinja_limits {
    size_t max_output;    /* bytes of output (default 16 MiB) */
    size_t max_memory;    /* bytes of working memory (default 256 MiB) */
    uint64_t max_steps;   /* expressions and statements evaluated (default 50M) */
    uint64_t max_iters;   /* loop iterations in all (default 1M) */
    int max_depth;        /* macro calls in progress (default 100) */
};

/* Parse a template.  Returns 0 and *out (free with jinja_free), or
 * RILL_E_BAD_FORMAT with jinja2-like message and line ("line 3: unexpected
 * '}'", "line 1: Unexpected end of template. Jinja was looking for the
 * following tags: 'endfor' or 'else'..."), RILL_E_UNSUPPORTED for a tag this
 * subset lacks ("line 2: tag 'include' is not supported"), RILL_E_TOO_LARGE
 * for a template over 1 MiB or nested too deep, RILL_E_NOMEM. */
int jinja_parse(const char *src, size_t len, struct jinja_tmpl **out, char *why, size_t why_len);
void jinja_free(struct jinja_tmpl *t);

/* cJSON_ParseWithLength, and a number written with a fraction or an exponent
 * gets valuestring JINJA_JSON_FLOAT, so that it renders as a float even when
 * integral (1.0, 2e3).  NULL for bad JSON (or no memory); cJSON_Delete frees. */
#define JINJA_JSON_FLOAT "float"
cJSON *jinja_json_parse(const char *s, size_t len);

/* Render with the variables of the JSON object `ctx` (borrowed; NULL = none).
 * `now` is the time strftime_now() formats (local time, seconds since the
 * epoch; 0 = the current time).  Returns 0 and the text in *out (malloc'd,
 * NUL-terminated, the caller frees) and its length in *out_len; or
 *   RILL_E_BAD_REQUEST  the template failed on this input: raise_exception(msg)
 *                       (why is exactly msg), an undefined value used, a type
 *                       error (why is jinja2's / Python's message)
 *   RILL_E_UNSUPPORTED  a feature of Jinja this subset lacks
 *   RILL_E_TOO_LARGE    a limit of `lim` (NULL = defaults) was reached
 *   RILL_E_NOMEM
 * `*err_raised` (may be NULL) is set to 1 when the error came from
 * raise_exception(), else 0. */
int jinja_render(const struct jinja_tmpl *t, const cJSON *ctx, int64_t now, const struct jinja_limits *lim,
                 char **out, size_t *out_len, int *err_raised, char *why, size_t why_len);

#endif
