"""Tool calls on the WebSocket (gateway/wstool.c, gateway/session.c): a
generation with tools gets tool_call events for the calls the model writes,
the tokens that wrote them carry no text (their positions stay contiguous),
and the complete says "tool_calls"; a malformed call, or one cut off by
max_tokens, is plain text; tool_choice "required" and named functions are
refused with bad_request; a resume replays the same events; in both
protocols.

A random model does not write tool calls, so this one is made to: one layer
whose attention and FFN write nothing (their output matrices are zero), so
the next token depends on the last one only, through one-hot embeddings and
output rows that map each token of a script to the next.  After the chat
template's last token ("\\n") two scripts are equally likely, and the seed
picks one: a Hermes call split over 22 tokens, or a malformed call."""
import os
import re
import struct

import pytest

import conftest
from rillclient import JSON, MSGPACK, Client, run

VOCAB = os.path.join(conftest.ROOT, "..", "shared", "data", "vocab", "ggml-vocab-qwen2.gguf")
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city today.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]
NL, IM_END, TOOL_CALL, END_TOOL_CALL = 198, 151645, 151657, 151658
DIM = 128

# The scripts, as Qwen2 vocabulary tokens (every one used once, so that each
# has one successor).  CALL: <tool_call>{"name": "get_weather", "arguments":{"city":"Paris"}}\n</tool_call>
CALL = [TOOL_CALL, 4913, 606, 788, 330, 455, 45922, 68936, 81, 497, 220, 56693, 1984, 27899, 2576, 22317, 8926, 3252,
        4272, 285, 95642, END_TOOL_CALL]
# BAD: Let me see. <tool_call>{"name": oops}</tool_call>  (ordinary tokens, none of CALL's)
BAD = [10061, 752, 1490, 13, 366, 14172, 13429, 88863, 12400, 68, 1, 25, 55909, 1690, 5361, 36127, 75, 49604, 654, 29]
CALL_TEXT = '<tool_call>{"name": "get_weather", "arguments":{"city":"Paris"}}\n</tool_call>'
BAD_TEXT = 'Let me see. <tool_call>{"name": oops}</tool_call>'


# --- the model ---------------------------------------------------------------------------------

def _gguf(data):
    """The KV pairs we need and the tensors (name: (dims, type, absolute offset)) of a GGUF file."""
    p = 4 + 4
    n_t, n_kv = struct.unpack_from("<QQ", data, p)
    p += 16
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def string(p):
        n = struct.unpack_from("<Q", data, p)[0]
        return data[p + 8:p + 8 + n].decode("utf-8", "replace"), p + 8 + n

    def value(t, p):
        if t == 8:
            return string(p)
        if t == 9:
            et, n = struct.unpack_from("<IQ", data, p)
            p += 12
            out = []
            for _ in range(n):
                v, p = value(et, p)
                out.append(v)
            return out, p
        fmt = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}[t]
        return struct.unpack_from(fmt, data, p)[0], p + sizes[t]

    kv = {}
    for _ in range(n_kv):
        k, p = string(p)
        t = struct.unpack_from("<I", data, p)[0]
        v, p = value(t, p + 4)
        kv[k] = v
    tensors = {}
    for _ in range(n_t):
        name, p = string(p)
        nd = struct.unpack_from("<I", data, p)[0]
        dims = struct.unpack_from(f"<{nd}Q", data, p + 4)
        t, off = struct.unpack_from("<IQ", data, p + 4 + 8 * nd)
        p += 4 + 8 * nd + 12
        tensors[name] = (dims, t, off)
    align = kv.get("general.alignment", 32)
    start = (p + align - 1) // align * align
    return kv, {k: (d, t, start + off) for k, (d, t, off) in tensors.items()}


def _bytes_of(vocab_tokens):
    """GPT-2's byte-level alphabet back to bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    back = {chr(c): b for b, c in zip(bs, cs)}
    return lambda i: bytes(back[ch] for ch in vocab_tokens[i]) if i not in (TOOL_CALL, END_TOOL_CALL) else \
        vocab_tokens[i].encode()


@pytest.fixture(scope="module")
def scripted():
    if not os.path.exists(VOCAB):
        pytest.fail(f"{VOCAB} is missing: this test needs llama.cpp's vocabulary files in ../shared/data/vocab")
    base = conftest.make_model("wstool-base-f16", "--arch", "llama", "--dim", str(DIM), "--layers", "1", "--heads", "2",
                               "--kv-heads", "2", "--ffn", "128", "--ctx", "1024", "--vocab-from", VOCAB,
                               "--dtype", "f16")
    data = bytearray(open(base, "rb").read())
    kv, tensors = _gguf(data)
    text_of = _bytes_of(kv["tokenizer.ggml.tokens"])
    bad = BAD
    assert len(set(CALL + BAD + [NL, IM_END])) == len(CALL) + len(BAD) + 2
    assert b"".join(text_of(i) for i in CALL).decode() == CALL_TEXT
    assert b"".join(text_of(i) for i in bad).decode() == BAD_TEXT
    path = os.path.join(os.path.dirname(base), "wstool-scripted.gguf")
    if not os.path.exists(path):
        for name in ("blk.0.attn_output.weight", "blk.0.ffn_down.weight"):
            dims, t, off = tensors[name]
            assert t == 1, (name, t)  # f16
            n = dims[0] * dims[1] * 2
            data[off:off + n] = bytes(n)
        succ = {}  # token -> the tokens that may follow it
        for script in (CALL, bad):
            for a, b in zip([NL] + script, script + [IM_END]):
                succ.setdefault(a, []).append(b)
        preds = {}
        for a, bs in succ.items():
            for b in bs:
                preds.setdefault(b, []).append(a)
        slot = {tok: k for k, tok in enumerate(succ)}  # each token that leads somewhere: its own dimension
        assert len(slot) <= DIM
        (_, t, emb), (_, t2, out) = tensors["token_embd.weight"], tensors["output.weight"]
        assert t == t2 == 1
        for tok, k in slot.items():
            row = [0.0] * DIM
            row[k] = 1.0
            data[emb + tok * DIM * 2:emb + (tok + 1) * DIM * 2] = struct.pack(f"<{DIM}e", *row)
        for tok, ps in preds.items():
            row = [0.0] * DIM
            for a in ps:
                row[slot[a]] = 8.0  # logit 8 * sqrt(DIM) = 90 after the norm; random rows give ~N(0, 1)
            data[out + tok * DIM * 2:out + (tok + 1) * DIM * 2] = struct.pack(f"<{DIM}e", *row)
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.rename(path + ".tmp", path)
    return path, bad, text_of


@pytest.fixture(scope="module")
def gw(module_pipelines, scripted):
    return module_pipelines(scripted[0])


@pytest.fixture(scope="module")
def seeds(gw, scripted):
    """A seed that picks the call's script, and one that picks the malformed one."""
    bad = scripted[1]
    found = {}

    async def first(seed):
        async with await Client.connect(gw.url, JSON) as c:
            await c.send({"type": "generate", "id": "s", "messages": MESSAGES, "tools": TOOLS, "max_tokens": 1,
                          "params": {"temperature": 1.0, "seed": seed}})
            (g,) = await c.wait_done("s")
            return g.tokens[0]["id"] if g.tokens else None

    for seed in range(1, 64):
        tok = run(first(seed))
        key = "call" if tok == CALL[0] else "bad" if tok == bad[0] else None
        assert key, f"seed {seed}: the scripted model began with token {tok}"
        found.setdefault(key, seed)
        if len(found) == 2:
            return found
    pytest.fail(f"64 seeds and only {found}")


async def _generate(gw, proto, seed, max_tokens=64, **extra):
    async with await Client.connect(gw.url, proto) as c:
        body = {"type": "generate", "id": "t", "messages": MESSAGES, "tools": TOOLS, "max_tokens": max_tokens,
                "params": {"temperature": 1.0, "seed": seed}, **extra}
        await c.send(body)
        (g,) = await c.wait_done("t")
    return g


def _text(g):
    return "".join(t["text"] for t in g.tokens)


# --- the tests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("proto", [JSON, MSGPACK])
def test_a_call_split_over_tokens_becomes_one_tool_call_event(gw, seeds, proto):
    g = run(_generate(gw, proto, seeds["call"]))
    g.check_order()
    assert g.terminal["type"] == "complete" and g.terminal["finish_reason"] == "tool_calls", g.terminal
    assert len(g.calls) == 1, g.calls
    call = g.calls[0]
    assert set(call) == {"type", "id", "index", "call_id", "name", "arguments"}, call
    assert call["id"] == "t" and call["index"] == 0 and call["name"] == "get_weather"
    assert re.fullmatch(r"call_[A-Za-z0-9]{24}", call["call_id"]), call
    assert call["arguments"] == '{"city":"Paris"}'
    # every token of the script still comes, in order, with no text: it all went into the call
    # (the end of turn too, as every generation's does)
    assert [t["id"] for t in g.tokens] == CALL + [IM_END], [t["id"] for t in g.tokens]
    assert _text(g) == ""
    # the call comes before the tokens that wrote it
    assert g.events[0][0] == "tool_call", [e[0] for e in g.events][:4]


@pytest.mark.parametrize("proto", [JSON, MSGPACK])
def test_a_malformed_call_is_plain_text(gw, seeds, scripted, proto):
    g = run(_generate(gw, proto, seeds["bad"]))
    g.check_order()
    assert g.calls == [] and _text(g) == BAD_TEXT, (g.calls, _text(g))
    assert [t["id"] for t in g.tokens] == BAD + [IM_END]
    assert g.terminal["type"] == "complete" and g.terminal["finish_reason"] != "tool_calls", g.terminal


@pytest.mark.parametrize("proto", [JSON, MSGPACK])
def test_a_call_cut_by_max_tokens_is_plain_text(gw, seeds, scripted, proto):
    g = run(_generate(gw, proto, seeds["call"], max_tokens=8))
    g.check_order()
    text_of = scripted[2]
    assert g.calls == [] and _text(g) == b"".join(text_of(i) for i in CALL[:8]).decode()
    assert g.terminal["finish_reason"] == "length", g.terminal


def test_tool_choice_none_leaves_the_text_alone(gw, seeds):
    g = run(_generate(gw, JSON, seeds["call"], tool_choice="none"))
    assert g.calls == [] and _text(g) == CALL_TEXT
    assert g.terminal["finish_reason"] != "tool_calls", g.terminal


@pytest.mark.parametrize("proto", [JSON, MSGPACK])
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}, 3])
def test_forcing_a_call_is_refused(gw, proto, choice):
    g = run(_generate(gw, proto, 1, tool_choice=choice))
    assert g.error and g.error["code"] == "bad_request", g.terminal
    assert g.error["message"].startswith("tool_choice:") and '"auto"' in g.error["message"], g.error
    assert g.tokens == [] and g.accepted is None


def test_tool_results_go_through_the_template(gw, seeds):
    history = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}]
    g = run(_generate(gw, JSON, seeds["call"], messages=history))
    assert g.terminal["finish_reason"] == "tool_calls" and len(g.calls) == 1, g.terminal
    g = run(_generate(gw, MSGPACK, 1, messages=MESSAGES + [{"role": "assistant", "tool_calls": [{"id": "x"}]}]))
    assert g.error["code"] == "bad_request" and "tool_calls[0]" in g.error["message"], g.error


@pytest.mark.parametrize("proto", [JSON, MSGPACK])
def test_a_resume_replays_the_same_events(gw, seeds, proto):
    """The reading is rebuilt from position 0: the same call id, and what
    came after the token at from - 1."""
    async def go():
        async with await Client.connect(gw.url, proto) as c:
            await c.send({"type": "generate", "id": "r", "messages": MESSAGES, "tools": TOOLS, "max_tokens": 64,
                          "params": {"temperature": 1.0, "seed": seeds["call"]}})
            (first,) = await c.wait_done("r")
        token = first.accepted["resume_token"]
        out = []
        for frm in (0, 5):
            async with await Client.connect(gw.url, proto) as c:
                await c.resume(token, frm, gid="r")
                (g,) = await c.wait_done("r")
                out.append(g)
        return first, out

    first, (all_again, from5) = run(go())
    assert first.calls and all_again.calls == first.calls  # the same call_id too
    assert [e[0] for e in all_again.events] == [e[0] for e in first.events]
    assert all_again.tokens == first.tokens and all_again.terminal["finish_reason"] == "tool_calls"
    # the call came before the token at position 4: not again
    assert from5.calls == [] and [t["position"] for t in from5.tokens] == list(range(5, len(CALL) + 1))
    assert from5.terminal["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("proto", [JSON, MSGPACK])
def test_ignore_eos_runs_past_the_end_of_turn(gw, seeds, scripted, proto):
    """(Issue 15 §1, here for the scripted model, the one that ends its turn
    for sure.)  params.ignore_eos: the end-of-turn token no longer ends the
    generation; it runs to max_tokens, and the same over /v1."""
    import json
    n = len(scripted[1]) + 6
    g = run(_generate(gw, proto, seeds["bad"], max_tokens=n))
    assert [t["id"] for t in g.tokens] == scripted[1] + [IM_END] and g.terminal["finish_reason"] == "eos"
    body = {"type": "generate", "id": "t", "messages": MESSAGES, "max_tokens": n,
            "params": {"temperature": 1.0, "seed": seeds["bad"], "ignore_eos": True}}

    async def go():
        async with await Client.connect(gw.url, proto) as c:
            await c.send(body)
            (g,) = await c.wait_done("t")
            return g
    g = run(go())
    g.check_order()
    assert [t["id"] for t in g.tokens][:len(scripted[1]) + 1] == scripted[1] + [IM_END]
    assert len(g.tokens) == n and g.terminal["finish_reason"] == "length", g.terminal
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    c.request("POST", "/v1/chat/completions", body=json.dumps({
        "model": "m", "messages": MESSAGES, "max_tokens": n, "temperature": 1.0, "seed": seeds["bad"],
        "ignore_eos": True}), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    status, doc = r.status, json.loads(r.read())
    c.close()
    assert status == 200, doc
    assert doc["choices"][0]["finish_reason"] == "length" and doc["usage"]["completion_tokens"] == n, doc
    body["params"]["ignore_eos"] = "yes"

    async def bad():
        async with await Client.connect(gw.url, proto) as c:
            await c.send(body)
            (g,) = await c.wait_done("t")
            return g
    g = run(bad())
    assert g.error["code"] == "bad_request" and "ignore_eos" in g.error["message"], g.terminal
