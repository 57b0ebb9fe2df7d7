"""Function calling on /v1/chat/completions (gateway/oaijson.c, gateway/openai.c,
gateway/toolcall.c): the tools reach the model's chat template (a model with
Qwen2.5's template, which renders them), tool_choice "none" drops them,
"required" and a named function are refused by name, the `tool` role and
assistant tool_calls go back through the template, and the answer's text goes
through the tool-call parser unchanged when it holds no call.  The test models
write random text, so the parser's calls are tested in tests/unit/test_toolcall.c
on real template output; here it must let the text through, on both paths."""
import json
import os
import shutil
import subprocess

import pytest

import conftest
from rillclient import GREEDY, JSON, MSGPACK, Client, run, sampling
from test_openai import post, sse_events

VOCAB = os.path.join(conftest.ROOT, "..", "shared", "data", "vocab", "ggml-vocab-qwen2.gguf")
SHAPE = ["--dim", "256", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--ffn", "512", "--ctx", "1024"]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city today.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]
SEEDED = {"temperature": 0.9, "seed": 11}


@pytest.fixture(scope="module")
def gw(module_pipelines):
    if not os.path.exists(VOCAB):
        pytest.fail(f"{VOCAB} is missing: this test needs llama.cpp's vocabulary files in ../shared/data/vocab")
    model = conftest.make_model("tools-qwen2-q5_K_M", *SHAPE, "--vocab-from", VOCAB, "--arch", "qwen2",
                                "--rope-base", "1000000", "--dtype", "q5_K_M")
    return module_pipelines(model)


def chat(gw, **body):
    status, _, raw = post(gw.port, "/v1/chat/completions", dict(model="m", **body))
    return status, raw


def test_tools_reach_the_template(gw):
    s0, plain = chat(gw, messages=MESSAGES, max_tokens=1)
    s1, tools = chat(gw, messages=MESSAGES, tools=TOOLS, max_tokens=1)
    s2, auto = chat(gw, messages=MESSAGES, tools=TOOLS, tool_choice="auto", max_tokens=1)
    s3, none = chat(gw, messages=MESSAGES, tools=TOOLS, tool_choice="none", max_tokens=1)
    assert (s0, s1, s2, s3) == (200, 200, 200, 200), (plain, tools)
    p = [json.loads(r)["usage"]["prompt_tokens"] for r in (plain, tools, auto, none)]
    # Qwen2.5's template writes the schema and the <tool_call> instructions into the system turn
    assert p[1] > p[0] + 60, p
    assert p[2] == p[1] and p[3] == p[0], p


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_calls_are_refused_by_name(gw, choice):
    s, raw = chat(gw, messages=MESSAGES, tools=TOOLS, tool_choice=choice, max_tokens=1)
    assert s == 400, raw
    err = json.loads(raw)["error"]
    assert err["param"] == "tool_choice" and "auto" in err["message"], err


@pytest.mark.parametrize("tools, words", [
    ("x", "tools: expected a list"),
    ([{"type": "function"}], "tools[0]"),
    ([{"type": "code_interpreter"}], "tools[0]"),
])
def test_bad_tools_get_400(gw, tools, words):
    s, raw = chat(gw, messages=MESSAGES, tools=tools, max_tokens=1)
    assert s == 400, raw
    err = json.loads(raw)["error"]
    assert err["param"] == "tools" and words in err["message"], err


def test_completions_take_no_tools(gw):
    s, _, raw = post(gw.port, "/v1/completions", {"model": "m", "prompt": "x", "tools": TOOLS})
    assert s == 400 and json.loads(raw)["error"]["param"] == "tools", raw


def test_tool_results_go_back_through_the_template(gw):
    # OpenAI's shape: arguments as a JSON string, content null; the template gets the object
    history = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}]
    s, raw = chat(gw, messages=history, tools=TOOLS, max_tokens=1)
    assert s == 200, raw
    _, short = chat(gw, messages=MESSAGES, tools=TOOLS, max_tokens=1)
    grown = json.loads(raw)["usage"]["prompt_tokens"] - json.loads(short)["usage"]["prompt_tokens"]
    assert grown > 15, grown  # <tool_call>{...}</tool_call> and <tool_response>18 C, sunny</tool_response>
    s, raw = chat(gw, messages=MESSAGES + [{"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]}],
                  max_tokens=1)
    assert s == 400 and "tool_calls[0]" in json.loads(raw)["error"]["message"], raw


def test_text_without_calls_passes_the_parser_on_both_paths(gw):
    n = 24
    s, raw = chat(gw, messages=MESSAGES, tools=TOOLS, max_tokens=n, **SEEDED)
    assert s == 200, raw
    doc = json.loads(raw)
    msg = doc["choices"][0]["message"]
    s, raw = chat(gw, messages=MESSAGES, tools=TOOLS, max_tokens=n, stream=True, **SEEDED)
    assert s == 200
    chunks = sse_events(raw)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    calls = [c for c in chunks if c["choices"] and "tool_calls" in c["choices"][0]["delta"]]
    if "tool_calls" in msg:  # the random model wrote a call: both paths saw the same
        assert len(calls) > 0 and chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    else:
        assert calls == [] and text == msg["content"], (text, msg)
        assert doc["choices"][0]["finish_reason"] == chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_the_openai_npm_client_streams_with_tools(gw):
    nm = os.path.join(conftest.ROOT, "gateway", "web", "node_modules")
    if not os.path.isdir(os.path.join(nm, "openai")) or not shutil.which("node"):
        pytest.fail("the openai npm package is missing: run make deps")
    n = 16
    script = os.path.join(os.path.dirname(__file__), "openai_tools_client.cjs")
    r = subprocess.run(["node", script, f"http://127.0.0.1:{gw.port}/v1", str(n), json.dumps(SEEDED),
                        json.dumps(MESSAGES), json.dumps(TOOLS)],
                       capture_output=True, text=True, timeout=90, env=dict(os.environ, NODE_PATH=nm))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    st, ns = out["stream"], out["nonstream"]
    assert st["chunks"] > 2
    # the client's accumulator rebuilt from the chunks what the one-object answer says
    assert st["content"] == ns["content"] and st["finish"] == ns["finish"]
    assert [c["function"] for c in st["tool_calls"]] == [c["function"] for c in ns["tool_calls"]]
    assert st["finish"] == ("tool_calls" if ns["tool_calls"] else "length"), out


def test_websocket_generate_takes_tools_with_messages(gw):
    """The WebSocket's tools reach the template as /v1's do: greedy, the same
    text as the chat completion with tools, not the one without."""
    n = 12

    async def ws(extra):
        async with await Client.connect(gw.url, JSON) as c:
            body = {"type": "generate", "id": "t", "messages": MESSAGES, "max_tokens": n,
                    "params": sampling(GREEDY), **extra}
            await c.send({k: v for k, v in body.items() if v is not None})
            (g,) = await c.wait_done("t")
        return g

    with_tools, without = run(ws({"tools": TOOLS})), run(ws({}))
    assert with_tools.terminal["type"] == "complete", with_tools.terminal
    s, raw = chat(gw, messages=MESSAGES, tools=TOOLS, max_tokens=n, temperature=0)
    s0, raw0 = chat(gw, messages=MESSAGES, max_tokens=n, temperature=0)
    assert s == s0 == 200, raw
    text = "".join(t["text"] for t in with_tools.tokens)
    assert text == json.loads(raw)["choices"][0]["message"]["content"]
    assert "".join(t["text"] for t in without.tokens) == json.loads(raw0)["choices"][0]["message"]["content"]
    assert json.loads(raw)["usage"]["prompt_tokens"] != json.loads(raw0)["usage"]["prompt_tokens"]
    bad = run(ws({"messages": None, "prompt": "x", "tools": TOOLS}))
    assert bad.error["code"] == "bad_request" and "only with messages" in bad.error["message"], bad.terminal


def test_websocket_tool_turns_render_as_on_v1(gw):
    """An assistant turn with tool_calls and a tool result reach the template
    on the WebSocket as on /v1: greedy, the same answer (text and calls)."""
    history = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}]
    n = 12

    async def ws(proto):
        async with await Client.connect(gw.url, proto) as c:
            await c.send({"type": "generate", "id": "h", "messages": history, "tools": TOOLS, "max_tokens": n,
                          "params": sampling(GREEDY)})
            (g,) = await c.wait_done("h")
        return g

    s, raw = chat(gw, messages=history, tools=TOOLS, max_tokens=n, temperature=0)
    _, short = chat(gw, messages=MESSAGES, tools=TOOLS, max_tokens=1)
    assert s == 200, raw
    assert json.loads(raw)["usage"]["prompt_tokens"] > json.loads(short)["usage"]["prompt_tokens"] + 15
    msg = json.loads(raw)["choices"][0]["message"]
    for proto in (JSON, MSGPACK):
        g = run(ws(proto))
        assert g.terminal["type"] == "complete", g.terminal
        assert "".join(t["text"] for t in g.tokens) == (msg["content"] or "")
        assert [(c["name"], c["arguments"]) for c in g.calls] == \
            [(c["function"]["name"], c["function"]["arguments"]) for c in msg.get("tool_calls") or []]
