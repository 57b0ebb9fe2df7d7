"""Chat templates: rill's Jinja subset (worker/jinja.c, through rill-chat-template)
against Python's jinja2 set up as Hugging Face transformers sets it up, byte for byte.

Templates: the 17 of ../shared/data/chat-templates, the tokenizer.chat_template of
three vocabulary GGUF files (Llama 3, Qwen2.5, Qwen3), and rill's four built-in
fallbacks.  Each renders a set of conversations (system + user, multi-turn,
with and without the generation prompt, tool calls, tool results and a tools
list, unicode, quotes and newlines, conversations a template refuses, an empty
one); for every pair the output is identical, or both fail and, when the
template raised the error itself (raise_exception) or used an undefined value,
with the same message.
"""
import datetime
import json
import os
import struct
import subprocess

import pytest

try:  # the reference: Debian's python3-jinja2 (tools/deps.sh installs it)
    import jinja2
    import jinja2.ext
    import jinja2.sandbox
except ImportError:
    pytest.fail("python3-jinja2 is missing: it is the reference this test compares with "
                "(make deps installs it)", pytrace=False)

from conftest import ROOT, binary  # noqa: E402

SHARED = os.path.join(ROOT, "..", "shared", "data")
TEMPLATE_DIR = os.path.join(SHARED, "chat-templates")
VOCAB_DIR = os.path.join(SHARED, "vocab")
GGUF_TEMPLATES = ["ggml-vocab-llama-bpe.gguf", "ggml-vocab-qwen2.gguf", "ggml-vocab-qwen3.gguf"]
BUILTINS = ["chatml", "llama3", "llama2", "mistral"]
NOW = 1721995200  # 2024-07-26 12:00 UTC: what strftime_now() sees on both sides


# --- the reference: transformers' _compile_jinja_template -------------------------------------

class TemplateRaised(Exception):
    pass


def reference_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.fromtimestamp(NOW).strftime(fmt)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


ENV = reference_env()
_COMPILED = {}


def compiled(source):
    if source not in _COMPILED:
        _COMPILED[source] = ENV.from_string(source)
    return _COMPILED[source]


def reference(source, ctx):
    """(output, None) or (None, (exception class name, message))."""
    kw = {k: v for k, v in ctx.items()}
    kw.setdefault("tools", None)
    kw["documents"] = None
    kw["add_generation_prompt"] = bool(ctx.get("add_generation_prompt", False))
    kw.setdefault("bos_token", "")
    kw.setdefault("eos_token", "")
    try:
        return compiled(source).render(**kw), None
    except Exception as e:  # the template's own failure, as HF would see it
        return None, (type(e).__name__, str(e))


def gguf_chat_template(path):
    """tokenizer.chat_template of a GGUF file (a small reader, independent of rill's)."""
    with open(path, "rb") as f:
        d = f.read()
    assert d[:4] == b"GGUF"
    _, _, nkv = struct.unpack_from("<IQQ", d, 4)
    o = 24
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def skip(t, o):
        if t == 8:
            (n,) = struct.unpack_from("<Q", d, o)
            return o + 8 + n
        if t == 9:
            et, n = struct.unpack_from("<IQ", d, o)
            o += 12
            if et == 8:
                for _ in range(n):
                    o = skip(8, o)
                return o
            return o + sizes[et] * n
        return o + sizes[t]

    for _ in range(nkv):
        (n,) = struct.unpack_from("<Q", d, o)
        key = d[o + 8:o + 8 + n].decode()
        o += 8 + n
        (t,) = struct.unpack_from("<I", d, o)
        o += 4
        if key == "tokenizer.chat_template" and t == 8:
            (n,) = struct.unpack_from("<Q", d, o)
            return d[o + 8:o + 8 + n].decode()
        o = skip(t, o)
    raise AssertionError(f"{path}: no tokenizer.chat_template")


# --- the conversations ------------------------------------------------------------------------

WEATHER = {"type": "function", "function": {
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Unit of the temperature"},
        "days": {"type": "integer", "description": "Days ahead", "default": 0, "minimum": 0, "maximum": 7},
        "threshold": {"type": "number", "description": "Rain probability", "minimum": 0.0, "maximum": 1.0,
                      "default": 0.5},
    }, "required": ["city"]}}}
SEARCH = {"type": "function", "function": {
    "name": "search",
    "description": "Search the web.",
    "parameters": {"type": "object", "properties": {
        "query": {"type": "string", "description": "What to look for"},
        "tags": {"type": "array", "items": {"type": "string"}, "description": "Filters"},
        "limit": {"type": ["integer", "null"], "description": "At most this many"},
        "opts": {"type": "object", "additionalProperties": {"type": "string"},
                 "properties": {"lang": {"type": "string"}}, "description": "Options"},
    }, "required": ["query", "tags"]}}}
TOOLS = [WEATHER, SEARCH]

SYS = {"role": "system", "content": "You are a helpful assistant."}
U1 = {"role": "user", "content": "What is the capital of France?"}
A1 = {"role": "assistant", "content": "The capital of France is Paris."}
U2 = {"role": "user", "content": "And of Germany?"}
A2 = {"role": "assistant", "content": "Berlin."}
UNI = {"role": "user", "content": "  Héllo “wörld” — 'single' \"double\" \\ back\\slash\n\nnew\tlines 😀 中文 "
                                  "{{ not a tag }} {% nor this %}  \n"}
AUNI = {"role": "assistant", "content": "\n Ça va? ¡Sí! «ok» 🙂\n"}


def tool_call(args_as_string, call_id="call12345", name="get_weather", args=None):
    args = args or {"city": "Paris", "unit": "celsius", "threshold": 1.0, "days": 2}
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(args) if args_as_string else args}}


def tool_turns(args_as_string, content):
    return [
        SYS,
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": content, "tool_calls": [tool_call(args_as_string)]},
        {"role": "tool", "tool_call_id": "call12345", "name": "get_weather",
         "content": '{"temperature": 21, "sky": "clear"}'},
        {"role": "assistant", "content": "It is 21 °C and clear in Paris."},
        {"role": "user", "content": "Thanks!"},
    ]


CONVERSATIONS = {
    "system_user": {"messages": [SYS, U1], "add_generation_prompt": True},
    "user_only_nogen": {"messages": [U1], "add_generation_prompt": False},
    "multi_turn": {"messages": [SYS, U1, A1, U2], "add_generation_prompt": True},
    "multi_turn_nosys_nogen": {"messages": [U1, A1, U2, A2], "add_generation_prompt": False},
    "unicode_quotes_newlines": {"messages": [SYS, UNI, AUNI, UNI], "add_generation_prompt": True},
    "tools_list": {"messages": [SYS, U1], "tools": TOOLS, "add_generation_prompt": True},
    "tools_list_nosys": {"messages": [U1], "tools": TOOLS, "add_generation_prompt": True},
    "tool_call_dict_args": {"messages": tool_turns(False, ""), "tools": TOOLS, "add_generation_prompt": True},
    "tool_call_string_args": {"messages": tool_turns(True, None), "tools": TOOLS, "add_generation_prompt": True},
    "two_tool_calls": {"messages": [
        U1,
        {"role": "assistant", "content": None, "tool_calls": [
            tool_call(True, "call00001"),
            tool_call(True, "call00002", "search", {"query": "Paris \"weather\"", "tags": ["fr"]})]},
        {"role": "tool", "tool_call_id": "call00001", "content": "21 C"},
        {"role": "tool", "tool_call_id": "call00002", "content": "sunny"},
    ], "tools": TOOLS, "add_generation_prompt": True},
    # The tools above make Command R+ and Hermes recurse forever (a type list with "null": a
    # string is iterable), as in Python; these give them a tools list they can render.
    "tools_simple": {"messages": [SYS, U1], "tools": [WEATHER], "add_generation_prompt": True},
    "tool_call_simple": {"messages": tool_turns(False, ""), "tools": [WEATHER], "add_generation_prompt": False},
    "tool_call_simple_string_args": {"messages": tool_turns(True, ""), "tools": [WEATHER],
                                     "add_generation_prompt": True},
    "content_parts": {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Describe 'this' image"},
        {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}], "add_generation_prompt": True},
    "tool_result_object": {"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [tool_call(False, "abcdefghi")]},
        {"role": "tool", "tool_call_id": "abcdefghi",
         "content": {"temp": 21.5, "ok": True, "note": None, "tags": ["a", "b's"]}},
    ], "tools": [WEATHER], "add_generation_prompt": True},
    "roles_not_alternating": {"messages": [U1, U2], "add_generation_prompt": True},
    "assistant_first": {"messages": [A1, U1], "add_generation_prompt": True},
    "unknown_role": {"messages": [{"role": "narrator", "content": "Once upon a time"}, U1],
                     "add_generation_prompt": True},
    "empty": {"messages": [], "add_generation_prompt": True},
    "qwen3_thinking": {"messages": [
        U1, {"role": "assistant", "content": "<think>\nParis is the capital.\n</think>\n\nParis."}, U2,
    ], "add_generation_prompt": True, "enable_thinking": False},
    "extra_vars": {"messages": [SYS, U1], "add_generation_prompt": True, "bos_token": "<s>", "eos_token": "</s>",
                   "functions": json.dumps([WEATHER["function"]]), "datetime": "2024-07-26",
                   "builtin_tools": ["brave_search", "wolfram_alpha"], "tools_in_user_message": False,
                   "date_string": "03 Dec 2026"},
    "functions_and_date": {"messages": tool_turns(True, ""), "add_generation_prompt": True,
                           "functions": json.dumps(TOOLS, indent=2), "datetime": "Friday, July 26"},
    "special_tokens": {"messages": [SYS, U1, A1, U2], "add_generation_prompt": False,
                       "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
}


def template_sources():
    if not os.path.isdir(TEMPLATE_DIR) or not os.path.isdir(VOCAB_DIR):
        pytest.fail(f"{SHARED} is missing: the chat templates are test data this test needs")
    out = {}
    for name in sorted(os.listdir(TEMPLATE_DIR)):
        if name.endswith(".jinja"):
            out[name] = ("--template", os.path.join(TEMPLATE_DIR, name))
    for name in GGUF_TEMPLATES:
        out[name] = ("--gguf", os.path.join(VOCAB_DIR, name))
    for name in BUILTINS:
        out["builtin:" + name] = ("--builtin", name)
    return out


def source_of(kind, where):
    if kind == "--template":
        with open(where, encoding="utf-8", newline="") as f:
            return f.read()
    if kind == "--gguf":
        return gguf_chat_template(where)
    r = subprocess.run([binary("rill-chat-template"), "--print-template", "--builtin", where],
                       capture_output=True, check=True)
    return r.stdout.decode()


def rill(kind, where, ctx, tmp_path):
    p = tmp_path / "ctx.json"
    p.write_text(json.dumps(ctx, ensure_ascii=False), encoding="utf-8")
    return subprocess.run([binary("rill-chat-template"), kind, where, "--now", str(NOW), str(p)],
                          capture_output=True, timeout=30)


def rill_many(kind, where, convs, tmp_path):
    """rill's rendering of each conversation, in one process (--jsonl): a dict per conversation,
    {"output": text} or {"code": ..., "error": message, "raised": bool}."""
    paths = []
    for conv in convs:
        p = tmp_path / f"{conv}.json"
        p.write_text(json.dumps(CONVERSATIONS[conv], ensure_ascii=False), encoding="utf-8")
        paths.append(str(p))
    r = subprocess.run([binary("rill-chat-template"), "--jsonl", kind, where, "--now", str(NOW), *paths],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    lines = r.stdout.decode().splitlines()
    assert len(lines) == len(convs), r.stdout[:2000]
    return dict(zip(convs, (json.loads(x) for x in lines)))


def compare(conv, source, got):
    """None when rill agrees with jinja2 on this conversation, else what differs."""
    want, err = reference(source, CONVERSATIONS[conv])
    if err is None:
        if "output" not in got:
            return f"{conv}: jinja2 renders, rill fails: {got}"
        if got["output"] != want:
            return f"{conv}: output differs\n--- jinja2\n{want!r}\n--- rill\n{got['output']!r}"
        return None
    if "output" in got:
        return f"{conv}: jinja2 fails ({err[0]}: {err[1]}), rill renders {got['output'][:300]!r}"
    if got["raised"] != (err[0] == "TemplateError"):
        return f"{conv}: jinja2 fails with {err[0]}: {err[1]}; rill says raised={got['raised']}: {got['error']}"
    if err[0] in ("TemplateError", "UndefinedError") and got["error"] != err[1]:
        return f"{conv}: both fail, messages differ:\n jinja2: {err[1]!r}\n rill:   {got['error']!r}"
    return None


SOURCES = template_sources() if os.path.isdir(TEMPLATE_DIR) else {}


def test_shared_templates_are_there():
    srcs = template_sources()
    assert len(srcs) == 17 + 3 + 4, sorted(srcs)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_template_renders_as_jinja2(name, tmp_path):
    kind, where = SOURCES[name]
    source = source_of(kind, where)
    if kind == "--gguf":
        # rill reads the same template from the GGUF file; the conversations then run from a
        # copy (opening a 150k-token vocabulary per run would make this test slow)
        r = subprocess.run([binary("rill-chat-template"), "--print-template", "--gguf", where],
                           capture_output=True, check=True)
        assert r.stdout == source.encode()
        kind, where = "--template", str(tmp_path / "template.jinja")
        with open(where, "w", encoding="utf-8", newline="") as f:
            f.write(source)
    got = rill_many(kind, where, list(CONVERSATIONS), tmp_path)
    problems = [p for conv in CONVERSATIONS if (p := compare(conv, source, got[conv])) is not None]
    assert not problems, f"{name}: {len(problems)} of {len(CONVERSATIONS)} conversations differ:\n" + \
        "\n".join(problems)


def test_raise_exception_message_and_exit_status(tmp_path):
    """A conversation the template refuses: exit 2, the template's own message."""
    kind, where = SOURCES["google-gemma-2-2b-it.jinja"]
    got = rill(kind, where, CONVERSATIONS["roles_not_alternating"], tmp_path)
    assert got.returncode == 2
    assert got.stderr.decode() == \
        "error: bad_request: Conversation roles must alternate user/assistant/user/assistant/...\n"
    assert got.stdout == b""


def test_strftime_now_sees_the_injected_time(tmp_path):
    """Llama 3.2 dates its system prompt with strftime_now("%d %b %Y")."""
    kind, where = SOURCES["meta-llama-Llama-3.2-3B-Instruct.jinja"]
    got = rill(kind, where, CONVERSATIONS["system_user"], tmp_path)
    assert got.returncode == 0
    day = datetime.datetime.fromtimestamp(NOW).strftime("%d %b %Y")
    assert f"Today Date: {day}\n".encode() in got.stdout
