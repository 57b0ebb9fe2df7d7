/* test_jinja.c — the Jinja2 subset (worker/jinja.c) and the chat layer over it
 * (worker/chat.c): small templates whose exact outputs and error messages
 * are Python jinja2's (3.1, ImmutableSandboxedEnvironment(trim_blocks=True,
 * lstrip_blocks=True), HF's tojson; the tables were rendered by it), errors by
 * code, the limits, and broken templates that must fail cleanly.  Run under
 * ASan by `make check`, so a leak on any error path fails it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "common/err.h"
#include "worker/chat.h"
#include "worker/jinja.h"

struct golden {
    const char *name, *tmpl, *ctx, *want;
};

/* Generated with python3-jinja2 3.1.2 (see the header). */
static const struct golden goldens[] = {
    {"whitespace_control",
     "a\n  {% if true %}\n  b\n  {% endif %}\n c {# x #}\n{{ 1 }}\n",
     "{}",
     "a\n  b\n c 1"},
    {"dash_and_plus",
     "x  {{- 'y' -}}  z\n  {%+ if true %}k{% endif %}\n   {%- if true -%}  \n m {%- endif %}",
     "{}",
     "xyz\n  km"},
    {"loop_variables",
     "{% for x in ['a','b','c'] %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}{{ loop.previtem|default('-') }}{{ loop.nextitem|default('-') }}|{% endfor %}",
     "{}",
     "10TrueFalse33-b|21FalseFalse32ac|32FalseTrue31b-|"},
    {"loop_filter_else_break_continue",
     "{% for x in [1,2,3,4] if x is odd %}{{ x }}{{ loop.length }}{% else %}none{% endfor %}|{% for x in [] %}a{% else %}empty{% endfor %}|{% for x in range(10) %}{% if x == 3 %}{% continue %}{% endif %}{% if x > 5 %}{% break %}{% endif %}{{ x }}{% endfor %}|{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}",
     "{}",
     "1232|empty|01245|a=1;b=2;"},
    {"scopes_and_namespace",
     "{% set c = 0 %}{% for i in [1,2,3] %}{% set c = c + 1 %}{{ c }}{% endfor %}{{ c }}|{% set ns = namespace(c=0, s='') %}{% for i in [1,2,3] %}{% set ns.c = ns.c + i %}{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.c }} {{ ns.s }}",
     "{}",
     "1110|6 123"},
    {"macros",
     "{% macro m(a, b=2) %}{{ a }}-{{ b }}{% endmacro %}{{ m(1) }} {{ m(1, b=3) }} {{ m('x', 'y') }} {{ m() }}",
     "{}",
     "1-2 1-3 x-y -2"},
    {"filters",
     "{{ '  hi  '|trim }}|{{ [1,2,3]|length }}|{{ x|default('d') }}|{{ ''|default('e', true) }}|{{ 'ab'|upper }}|{{ {'b':1,'a':2}|items|list }}|{{ [1,'a']|join(',') }}|{{ [3,1]|first }}{{ [3,1]|last }}|{{ 'hello world'|capitalize }}|{{ 'hello-world x'|title }}|{{ 'aXa'|replace('a','b') }}|{{ '42'|int + 1 }}|{{ 3.7|int }}|{{ 'x'|int }}|{{ [{'n':'a','t':1},{'n':'b','t':2}]|selectattr('t','equalto',2)|map(attribute='n')|list }}|{{ [3,1,2]|sort }}|{{ ['a','B','a']|unique|list }}|{{ 'a\nb'|indent(2, first=true) }}|{{ 5|string ~ '' }}|{{ [1,2,3]|reject('odd')|list }}",
     "{}",
     "hi|3|d|e|AB|[('b', 1), ('a', 2)]|1,a|31|Hello world|Hello-World X|bXb|43|3|0|['b']|[1, 2, 3]|['a', 'B']|  a\n  b|5|[2]"},
    {"tojson",
     "{{ {'a': [1, 2.5, '\xc3""\xa9""\"\\n<>'], 'b': none, 'c': true}|tojson }}|{{ {'a': [1, {}], 'b': [], 'c': {'d': 'x'}}|tojson(indent=2) }}|{{ {'b': 1, 'a': 2}|tojson(sort_keys=true) }}|{{ '\xc3""\xa9""'|tojson(ensure_ascii=true) }}",
     "{}",
     "{\"a\": [1, 2.5, \"\xc3""\xa9""\\\"\\n<>\"], \"b\": null, \"c\": true}|{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": [],\n  \"c\": {\n    \"d\": \"x\"\n  }\n}|{\"a\": 2, \"b\": 1}|\"\\u00e9\""},
    {"string_methods",
     "{{ ' x '.strip() }}|{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x', 'c')) }}|{{ 'a,b,,c'.split(',') }}|{{ ' a b  c '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'xxhixx'.lstrip('x') }}{{ 'xxhixx'.rstrip('x') }}|{{ 'Hello'.upper() }}{{ 'Hello'.lower() }}|{{ 'hello wORLD'.title() }}|{{ 'aaa'.replace('a', 'b', 2) }}|{{ 'a-b'.find('-') }}|{{ '-'.join(['x', 'y']) }}|{{ d.get('k') }} {{ d.get('z', 5) }} {{ d.keys()|list }} {{ d.values()|list }}",
     "{\"d\": {\"k\": \"v\"}}",
     "x|TrueTrue|['a', 'b', '', 'c']|['a', 'b', 'c']|['a', 'b c']|hixxxxhi|HELLOhello|Hello World|bba|1|x-y|v 5 ['k'] ['v']"},
    {"slices_and_unicode",
     "{{ 'h\xc3""\xa9""llo\xf0""\x9f""\x98""\x80""'[::-1] }}|{{ 'h\xc3""\xa9""llo\xf0""\x9f""\x98""\x80""'|length }}|{{ [1,2,3,4][1:3] }}|{{ [1,2,3][-1] }}|{{ 'abcdef'[1::2] }}|{{ 'h\xc3""\xa9""llo'[1] }}|{{ [1,2,3][5:] }}|{{ (1,2,3)[::-2] }}",
     "{}",
     "\xf0""\x9f""\x98""\x80""oll\xc3""\xa9""h|6|[2, 3]|3|bdf|\xc3""\xa9""|[]|(3, 1)"},
    {"tests",
     "{{ x is defined }}{{ x is undefined }}{{ none is none }}{{ 'a' is string }}{{ {} is mapping }}{{ [] is iterable }}{{ 1 is number }}{{ true is boolean }}{{ 2 is equalto 2 }}{{ 'a' in 'cat' }}{{ 3 is odd }}{{ 1 is not string }}{{ 'x' is sequence }}{{ 1.5 is integer }}{{ 'a' not in ['b'] }}",
     "{}",
     "FalseTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueFalseTrue"},
    {"arithmetic_and_comparisons",
     "{{ 1 == 1.0 }}{{ 1 < 2 < 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 10 / 4 }} {{ 'a' ~ 1 ~ none }}|{{ 1 if false }}|{{ 'y' if true else 'n' }} {{ 'ab' * 3 }} {{ [1] + [2] }} {{ -(3) }} {{ not 0 }} {{ 0 or 'z' }} {{ 1 and 2 }}",
     "{}",
     "TrueTrue 3 -4 2 1024 2.5 a1None||y ababab [1, 2] -3 True z 2"},
    {"python_str_of_values",
     "{{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1.0 }} {{ 1e-5 }} {{ 1/3 }} {{ 2.5e15 }} {{ 1e16 }} {{ 100.0 }} {{ -0.5 }}|{{ [1, 'a', none, true, {'k': \"it's\"}, (1,), 1.5, 'q\"\\'', '\\n'] }}|{{ none }}|{{ x }}|{{ {'a': {'b': [false]}} }}",
     "{}",
     "0.30000000000000004 1e+20 1.0 1e-05 0.3333333333333333 2500000000000000.0 1e+16 100.0 -0.5|[1, 'a', None, True, {'k': \"it's\"}, (1,), 1.5, 'q\"\\'', '\\n']|None||{'a': {'b': [False]}}"},
    {"set_block_and_filter_block",
     "{% set x | upper %}ab{% endset %}{{ x }}|{% set y %}\n  c {{ 1 }}\n{% endset %}[{{ y }}]|{% filter trim %}  d  {% endfilter %}",
     "{}",
     "AB|[  c 1\n]|d"},
    {"raw_and_formatting",
     "{% raw %}{{ kept }}{% endraw %}|{{ '%s=%d' % ('n', 3) }}|{{ '{}-{x}'.format(1, x='y') }}|{{ '\\u00e9 \\x41'|length }}|{{ '\xc3""\x89""COLE \xc3""\xb1""'|lower }}{{ 'stra\xc3""\x9f""e'|upper }}",
     "{}",
     "{{ kept }}|n=3|1-y|3|\xc3""\xa9""cole \xc3""\xb1""STRASSE"},
    {"context_values",
     "{{ m[0].role }}:{{ m[0]['content'] }}|{{ m|length }}|{{ m[0].missing is defined }}|{{ n + 1 }} {{ f }} {{ b }} {{ z }}",
     "{\"m\": [{\"role\": \"user\", \"content\": \"h\\u00e9\"}], \"n\": 41, \"f\": 2.5, \"b\": true, \"z\": null}",
     "user:h\xc3""\xa9""|1|False|42 2.5 True None"},
};
static const struct golden failures[] = {
    {"raise_exception",
     "{{ raise_exception('boom: ' ~ 1) }}",
     "{}",
     "boom: 1"}, /* TemplateError */
    {"undefined_attribute_of_undefined",
     "{{ x.y }}",
     "{}",
     "'x' is undefined"}, /* UndefinedError */
    {"missing_key_then_attribute",
     "{{ d.k.z }}",
     "{\"d\": {}}",
     "'dict object' has no attribute 'k'"}, /* UndefinedError */
    {"list_index_out_of_range_then_attribute",
     "{{ l[3].x }}",
     "{\"l\": []}",
     "list object has no element 3"}, /* UndefinedError */
    {"str_plus_int",
     "{{ 'a' + 1 }}",
     "{}",
     "can only concatenate str (not \"int\") to str"}, /* TypeError */
    {"undefined_plus_str",
     "{{ u + 'a' }}",
     "{}",
     "'u' is undefined"}, /* UndefinedError */
    {"iterate_none",
     "{% for x in n %}{% endfor %}",
     "{\"n\": null}",
     "'NoneType' object is not iterable"}, /* TypeError */
    {"tojson_of_generator",
     "{{ [1]|map('string')|tojson }}",
     "{}",
     "Object of type generator is not JSON serializable"}, /* TypeError */
    {"unpack_mismatch",
     "{% for a, b in [[1, 2, 3]] %}{% endfor %}",
     "{}",
     "too many values to unpack (expected 2)"}, /* ValueError */
    {"list_append_is_unsafe",
     "{{ [].append(1) }}",
     "{}",
     "access to attribute 'append' of 'list' object is unsafe."}, /* SecurityError */
    {"set_attribute_of_non_namespace",
     "{% set d = {} %}{% set d.x = 1 %}",
     "{}",
     "cannot assign attribute on non-namespace object"}, /* TemplateRuntimeError */
};

/* Parse and render; returns the code, the output (or NULL) in *out. */
static int render(const char *tmpl, const char *ctx_json, const struct jinja_limits *lim, char **out, int *raised,
                  char *why, size_t why_len)
{
    struct jinja_tmpl *t = NULL;
    *out = NULL;
    why[0] = 0;
    int rc = jinja_parse(tmpl, strlen(tmpl), &t, why, why_len);
    if (rc) {
        assert_null(t);
        return rc;
    }
    cJSON *ctx = cJSON_Parse(ctx_json ? ctx_json : "{}");
    assert_non_null(ctx);
    size_t len = 0;
    rc = jinja_render(t, ctx, 1721995200, lim, out, &len, raised, why, why_len);
    if (rc == 0)
        assert_int_equal(len, strlen(*out));
    else
        assert_null(*out);
    cJSON_Delete(ctx);
    jinja_free(t);
    return rc;
}

static void test_jinja_renders_as_python_jinja2(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof goldens / sizeof goldens[0]; i++) {
        char *out, why[512];
        int rc = render(goldens[i].tmpl, goldens[i].ctx, NULL, &out, NULL, why, sizeof why);
        if (rc || strcmp(out, goldens[i].want))
            fail_msg("%s: rc %d (%s)\n want: %s\n got:  %s", goldens[i].name, rc, why, goldens[i].want,
                     out ? out : "(none)");
        free(out);
    }
}

static void test_jinja_runtime_errors_have_jinja2s_messages(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof failures / sizeof failures[0]; i++) {
        char *out, why[512];
        int raised = -1;
        int rc = render(failures[i].tmpl, failures[i].ctx, NULL, &out, &raised, why, sizeof why);
        if (rc != RILL_E_BAD_REQUEST || strcmp(why, failures[i].want))
            fail_msg("%s: rc %d, want bad_request\n want: %s\n got:  %s", failures[i].name, rc, failures[i].want,
                     why);
        assert_int_equal(raised, i == 0); /* only the first is raise_exception() */
        assert_null(out);
    }
}

static void expect(const char *tmpl, int code, const char *why_has)
{
    char *out, why[512];
    int rc = render(tmpl, "{}", NULL, &out, NULL, why, sizeof why);
    if (rc != code || !strstr(why, why_has))
        fail_msg("%s: rc %d (%s), want %d with \"%s\"", tmpl, rc, why, code, why_has);
    free(out);
}

static void test_jinja_syntax_errors_are_bad_format_with_the_line(void **state)
{
    (void)state;
    expect("{% if %}", RILL_E_BAD_FORMAT, "line 1: Expected an expression, got end of statement block");
    expect("a\n{% for x in y %}", RILL_E_BAD_FORMAT,
           "line 2: Unexpected end of template. Jinja was looking for the following tags: 'endfor' or 'else'.");
    expect("{{ 1 ", RILL_E_BAD_FORMAT, "unexpected end of template, expected '}}'");
    expect("{{ (1 }}", RILL_E_BAD_FORMAT, "unexpected '}'");
    expect("{{ 'abc }}", RILL_E_BAD_FORMAT, "a string that never ends");
    expect("{# never closed", RILL_E_BAD_FORMAT, "missing end of comment tag");
    expect("{% endfor %}", RILL_E_BAD_FORMAT, "Encountered unknown tag 'endfor'.");
    expect("{% frobnicate %}", RILL_E_BAD_FORMAT, "Encountered unknown tag 'frobnicate'.");
    expect("{{ x | nosuchfilter }}", RILL_E_BAD_FORMAT, "No filter named 'nosuchfilter'.");
    expect("{{ 1 is nosuchtest }}", RILL_E_BAD_FORMAT, "No test named 'nosuchtest'.");
    expect("{% include 'other.jinja' %}", RILL_E_UNSUPPORTED, "tag 'include' is not supported");
    expect("{{ x|wordwrap }}", RILL_E_UNSUPPORTED, "filter 'wordwrap' is not supported");
    expect("{{ f(*args) }}", RILL_E_UNSUPPORTED, "*args and **kwargs are not supported");
    expect("{{ 99999999999999999999 }}", RILL_E_UNSUPPORTED, "integer literal too large");
}

static void test_jinja_limits_stop_runaway_templates(void **state)
{
    (void)state;
    char *out, why[512];
    struct jinja_limits small = {.max_output = 1000};
    assert_int_equal(render("{% for i in range(1000) %}xxxxxxxxxx{% endfor %}", "{}", &small, &out, NULL, why,
                            sizeof why), RILL_E_TOO_LARGE);
    assert_non_null(strstr(why, "output over 1000 bytes"));
    struct jinja_limits iters = {.max_iters = 10};
    assert_int_equal(render("{% for i in range(11) %}{% endfor %}", "{}", &iters, &out, NULL, why, sizeof why),
                     RILL_E_TOO_LARGE);
    assert_int_equal(render("{% for i in range(10) %}{% endfor %}ok", "{}", &iters, &out, NULL, why, sizeof why), 0);
    assert_string_equal(out, "ok");
    free(out);
    /* recursion without end: Python stops at its recursion limit, rill at max_depth */
    assert_int_equal(render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "{}", NULL, &out, NULL, why,
                            sizeof why), RILL_E_TOO_LARGE);
    assert_non_null(strstr(why, "macro calls nested more than 100 deep"));
    struct jinja_limits mem = {.max_memory = 1 << 20};
    assert_int_equal(render("{{ 'x' * 100000000 }}", "{}", &mem, &out, NULL, why, sizeof why), RILL_E_TOO_LARGE);
    assert_int_equal(render("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                            "{% endfor %}", "{}", &mem, &out, NULL, why, sizeof why), RILL_E_TOO_LARGE);
    struct jinja_limits steps = {.max_steps = 1000};
    assert_int_equal(render("{% for i in range(100) %}{% for j in range(100) %}{% endfor %}{% endfor %}", "{}",
                            &steps, &out, NULL, why, sizeof why), RILL_E_TOO_LARGE);
    assert_int_equal(render("{{ range(100001)|length }}", "{}", NULL, &out, NULL, why, sizeof why), RILL_E_BAD_REQUEST);
    assert_non_null(strstr(why, "Range too big"));
}

static void test_jinja_broken_templates_fail_cleanly(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "{{", "{%", "{#", "{{}}", "{%%}", "{{ ] }}", "{{ (((( }}", "{% for %}", "{% for x %}", "{% for x in %}",
        "{% if 1 %}{% elif %}{% endif %}", "{% set %}", "{% set x = %}", "{% macro %}", "{% macro m( %}",
        "{% endmacro %}", "{{ 1 + }}", "{{ a. }}", "{{ a[ }}", "{{ a[1:2:3:4] }}", "{{ 'a' 'b }}", "{{ x is }}",
        "{{ x | }}", "{% filter %}x{% endfilter %}", "{% set x %}", "{{ {1: } }}", "{{ [1, 2 }}", "{{ \"\\x4\" }}",
        "{{ 1 if }}", "{% break %}", "{{ loop.index }}", "{{ x(1)(2) }}", "{{ -'a' }}", "{{ {}.x.y }}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *out = NULL, why[512];
        int rc = render(bad[i], "{}", NULL, &out, NULL, why, sizeof why);
        if (rc == 0) { /* a few are valid Jinja: then they must render something sane */
            assert_non_null(out);
            free(out);
            continue;
        }
        assert_true(rc == RILL_E_BAD_FORMAT || rc == RILL_E_BAD_REQUEST || rc == RILL_E_UNSUPPORTED);
        assert_true(why[0] != 0);
    }
    /* nesting deep enough to exhaust a naive parser's stack */
    char deep[4096];
    size_t n = 0;
    n += (size_t)snprintf(deep, sizeof deep, "{{ ");
    for (int i = 0; i < 1500; i++)
        deep[n++] = '(';
    deep[n] = 0;
    char *out, why[512];
    assert_int_equal(render(deep, "{}", NULL, &out, NULL, why, sizeof why), RILL_E_TOO_LARGE);
    n = 0;
    for (int i = 0; i < 400; i++)
        n += (size_t)snprintf(deep + n, sizeof deep - n, "{%% if 1 %%}");
    assert_int_equal(render(deep, "{}", NULL, &out, NULL, why, sizeof why), RILL_E_TOO_LARGE);
}

static void test_jinja_strftime_now_formats_the_injected_time(void **state)
{
    (void)state;
    setenv("TZ", "UTC", 1);
    tzset();
    char *out, why[512];
    assert_int_equal(render("{{ strftime_now('%d %b %Y %H:%M') }}", "{}", NULL, &out, NULL, why, sizeof why), 0);
    assert_string_equal(out, "26 Jul 2024 12:00");
    free(out);
}

static void test_jinja_a_parsed_template_renders_many_times(void **state)
{
    (void)state;
    struct jinja_tmpl *t;
    char why[256];
    const char *src = "{% for m in messages %}[{{ m }}]{% endfor %}";
    assert_int_equal(jinja_parse(src, strlen(src), &t, why, sizeof why), 0);
    for (int i = 0; i < 3; i++) {
        char js[64], *out;
        snprintf(js, sizeof js, "{\"messages\": [%d, \"x\"]}", i);
        cJSON *ctx = cJSON_Parse(js);
        assert_int_equal(jinja_render(t, ctx, 0, NULL, &out, NULL, NULL, why, sizeof why), 0);
        char want[32];
        snprintf(want, sizeof want, "[%d][x]", i);
        assert_string_equal(out, want);
        free(out);
        cJSON_Delete(ctx);
    }
    jinja_free(t);
    jinja_free(NULL);
}

static void test_jinja_json_parse_keeps_float_literals_floats(void **state)
{
    (void)state;
    const char *js = "{\"x\": 1.0, \"y\": 2, \"z\": [1e2, \"1.5\", -0.0, {\"w\": 3.25}], \"s\": \"9.0 \\\" 8\"}";
    cJSON *ctx = jinja_json_parse(js, strlen(js));
    assert_non_null(ctx);
    struct jinja_tmpl *t;
    char why[256], *out;
    const char *src = "{{ x }}|{{ y }}|{{ z }}|{{ s }}|{{ z|tojson }}";
    assert_int_equal(jinja_parse(src, strlen(src), &t, why, sizeof why), 0);
    assert_int_equal(jinja_render(t, ctx, 0, NULL, &out, NULL, NULL, why, sizeof why), 0);
    assert_string_equal(out, "1.0|2|[100.0, '1.5', -0.0, {'w': 3.25}]|9.0 \" 8|[100.0, \"1.5\", -0.0, {\"w\": 3.25}]");
    free(out);
    jinja_free(t);
    cJSON_Delete(ctx);
    assert_null(jinja_json_parse("{\"x\": 1.", 8));
}

static void test_chat_render_chatml_builtin(void **state)
{
    (void)state;
    const char *msgs = "[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hi \\\"you\\\"\"}]";
    const char *src = chat_builtin("chatml");
    assert_non_null(src);
    struct chat_opts o = {.add_generation_prompt = true};
    char *out, why[256];
    size_t len;
    assert_int_equal(chat_render(src, strlen(src), msgs, strlen(msgs), &o, &out, &len, why, sizeof why), 0);
    assert_string_equal(out, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi \"you\"<|im_end|>\n"
                             "<|im_start|>assistant\n");
    assert_int_equal(len, strlen(out));
    free(out);
    assert_non_null(chat_builtin("llama3"));
    assert_non_null(chat_builtin("llama2"));
    assert_non_null(chat_builtin("mistral"));
    assert_null(chat_builtin("nosuch"));
}

static void test_chat_render_passes_tools_tokens_and_extra_variables(void **state)
{
    (void)state;
    const char *tmpl = "{{ bos_token }}{{ tools is none }}{{ documents is none }}|{% for t in tools or [] %}"
                       "{{ t.name }}{% endfor %}|{{ enable_thinking }}{{ eos_token }}{{ add_generation_prompt }}";
    const char *msgs = "[]";
    char *out, why[256];
    struct chat_opts o = {.bos_token = "<s>", .eos_token = "</s>"};
    assert_int_equal(chat_render(tmpl, strlen(tmpl), msgs, 2, &o, &out, NULL, why, sizeof why), 0);
    assert_string_equal(out, "<s>TrueTrue||</s>False");
    free(out);
    o.tools_json = "[{\"name\":\"a\"},{\"name\":\"b\"}]";
    o.tools_len = strlen(o.tools_json);
    o.extra_json = "{\"enable_thinking\": false, \"messages\": \"ignored\"}";
    o.extra_len = strlen(o.extra_json);
    o.add_generation_prompt = true;
    assert_int_equal(chat_render(tmpl, strlen(tmpl), msgs, 2, &o, &out, NULL, why, sizeof why), 0);
    assert_string_equal(out, "<s>FalseTrue|ab|False</s>True");
    free(out);
}

static void test_chat_render_errors(void **state)
{
    (void)state;
    const char *src = chat_builtin("mistral");
    const char *two_users = "[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"b\"}]";
    char *out, why[256];
    struct chat_tmpl *t;
    assert_int_equal(chat_tmpl_new(src, strlen(src), &t, why, sizeof why), 0);
    int raised = 0;
    assert_int_equal(chat_tmpl_render(t, two_users, strlen(two_users), NULL, &out, NULL, &raised, why, sizeof why),
                     RILL_E_BAD_REQUEST);
    assert_string_equal(why, "Conversation roles must alternate user/assistant/user/assistant/...");
    assert_int_equal(raised, 1);
    assert_null(out);
    assert_int_equal(chat_tmpl_render(t, "[{", 2, NULL, &out, NULL, &raised, why, sizeof why), RILL_E_BAD_REQUEST);
    assert_string_equal(why, "messages: not valid JSON");
    assert_int_equal(raised, 0);
    assert_int_equal(chat_tmpl_render(t, "{}", 2, NULL, &out, NULL, NULL, why, sizeof why), RILL_E_BAD_REQUEST);
    assert_string_equal(why, "messages: expected a JSON array");
    struct chat_opts o = {.tools_json = "{", .tools_len = 1};
    assert_int_equal(chat_tmpl_render(t, "[]", 2, &o, &out, NULL, NULL, why, sizeof why), RILL_E_BAD_REQUEST);
    assert_string_equal(why, "tools: not valid JSON");
    struct chat_opts small = {.max_output = 8};
    const char *one = "[{\"role\":\"user\",\"content\":\"a long enough message\"}]";
    assert_int_equal(chat_tmpl_render(t, one, strlen(one), &small, &out, NULL, NULL, why, sizeof why),
                     RILL_E_TOO_LARGE);
    chat_tmpl_free(t);
    chat_tmpl_free(NULL);
    assert_int_equal(chat_render("{% if %}", 8, "[]", 2, NULL, &out, NULL, why, sizeof why), RILL_E_BAD_FORMAT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jinja_renders_as_python_jinja2),
        cmocka_unit_test(test_jinja_runtime_errors_have_jinja2s_messages),
        cmocka_unit_test(test_jinja_syntax_errors_are_bad_format_with_the_line),
        cmocka_unit_test(test_jinja_limits_stop_runaway_templates),
        cmocka_unit_test(test_jinja_broken_templates_fail_cleanly),
        cmocka_unit_test(test_jinja_strftime_now_formats_the_injected_time),
        cmocka_unit_test(test_jinja_a_parsed_template_renders_many_times),
        cmocka_unit_test(test_jinja_json_parse_keeps_float_literals_floats),
        cmocka_unit_test(test_chat_render_chatml_builtin),
        cmocka_unit_test(test_chat_render_passes_tools_tokens_and_extra_variables),
        cmocka_unit_test(test_chat_render_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
