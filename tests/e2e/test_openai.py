"""The OpenAI-compatible HTTP API on the gateway's port (gateway/openai.c):
GET /v1/models, POST /v1/completions and /v1/chat/completions, answered as
one JSON object or as Server-Sent Events, with OpenAI's error shape, the
WebSocket path's keys, limits and metrics, and cancellation when the client
goes away.  Driven with http.client, raw sockets, curl and the official
`openai` npm package."""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

import conftest
from rillclient import cpu_ticks, metric, raw_socket_rcvbuf, run

PROMPT = "The capital of France is"
# Sampled, not greedy: the seed must reach the worker the same way on both paths.
SAMPLED = {"temperature": 0.9, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1, "seed": 7}
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def gw(module_pipelines, small_model):
    return module_pipelines(small_model)


def post(port, path, body, headers=None, method="POST"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def sse_events(raw):
    """The chunks of an event stream, checking its framing: every event is
    one "data: " line and a blank line, the last is [DONE]."""
    text = raw.decode()
    assert text.endswith("\n\n"), text[-200:]
    events = text.split("\n\n")[:-1]
    for e in events:
        assert e.startswith("data: ") and "\n" not in e, repr(e)
    assert events[-1] == "data: [DONE]"
    assert "data: [DONE]" not in events[:-1]
    return [json.loads(e[6:]) for e in events[:-1]]


def check_error(status, headers, body, want_status, param=None, code=None):
    assert status == want_status, body
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert set(doc) == {"error"} and set(doc["error"]) == ERROR_KEYS, doc
    e = doc["error"]
    assert isinstance(e["message"], str) and e["message"]
    assert e["param"] == param, doc
    if code is not None:
        assert e["code"] == code, doc
    return e


def ws_stream(url, prompt, n, params):
    tokens, end = run(conftest.generate(url, prompt, n, **params))
    assert end["type"] == "complete", end
    return tokens, end


def completion(port, **body):
    status, headers, raw = post(port, "/v1/completions", dict(dict(model="m", prompt=PROMPT), **body))
    assert status == 200, raw
    assert headers["content-type"] == "application/json"
    return json.loads(raw)


def stream_completion(port, **body):
    status, headers, raw = post(port, "/v1/completions", dict(dict(model="m", prompt=PROMPT, stream=True), **body))
    assert status == 200, raw
    assert headers["content-type"] == "text/event-stream"
    return sse_events(raw)


# --- completions -----------------------------------------------------------------------------

def test_models_lists_the_served_model(gw):
    status, body, headers = conftest.http_get(gw.port, "/v1/models")
    assert status == 200
    doc = json.loads(body)
    assert doc["object"] == "list" and len(doc["data"]) == 1
    m = doc["data"][0]
    assert m["object"] == "model" and m["owned_by"] == "rill" and isinstance(m["created"], int)
    status, body, _ = conftest.http_get(gw.port, "/v1/models/" + m["id"])
    assert status == 200 and json.loads(body)["id"] == m["id"]
    s, h, b = post(gw.port, "/v1/models/no-such-model", None, method="GET")
    check_error(s, h, b, 404, param="model", code="not_found")


def test_completion_equals_the_websocket_stream(gw):
    """The same request and seed: the same tokens as on the WebSocket, in one
    JSON object and as events, with the usage figures."""
    n = 24
    tokens, end = ws_stream(gw.url, PROMPT, n, SAMPLED)
    ws_text = "".join(t["text"] for t in tokens)
    assert len(tokens) == n and end["finish_reason"] == "length"
    # Whole characters only, so that the texts compare exactly.
    assert "\ufffd" not in ws_text, ws_text

    doc = completion(gw.port, max_tokens=n, **SAMPLED)
    assert doc["object"] == "text_completion" and doc["id"].startswith("cmpl-") and doc["model"]
    ch = doc["choices"]
    assert len(ch) == 1 and ch[0]["index"] == 0 and ch[0]["logprobs"] is None
    assert ch[0]["text"] == ws_text
    assert ch[0]["finish_reason"] == "length"
    u = doc["usage"]
    assert u["completion_tokens"] == n and u["prompt_tokens"] > 0
    assert u["total_tokens"] == u["prompt_tokens"] + n

    chunks = stream_completion(gw.port, max_tokens=n, stream_options={"include_usage": True}, **SAMPLED)
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop() != doc["id"]
    *choice_chunks, usage_chunk = chunks
    for c in choice_chunks:
        assert c["object"] == "text_completion" and len(c["choices"]) == 1 and c["usage"] is None
    assert "".join(c["choices"][0]["text"] for c in choice_chunks) == ws_text
    finishes = [c["choices"][0]["finish_reason"] for c in choice_chunks]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == u

    # Without include_usage: no usage anywhere.
    chunks = stream_completion(gw.port, max_tokens=n, **SAMPLED)
    assert all("usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == ws_text


def test_stop_string_and_logprobs_match_the_websocket(gw):
    tokens, _ = ws_stream(gw.url, PROMPT, 24, SAMPLED)
    text = "".join(t["text"] for t in tokens)
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop.strip(), text
    p = dict(SAMPLED, stop=[stop])
    ws_tokens, ws_end = ws_stream(gw.url, PROMPT, 24, dict(p, top_logprobs=0))
    assert ws_end["finish_reason"] == "stop"
    doc = completion(gw.port, max_tokens=24, logprobs=0, **dict(SAMPLED, stop=stop))
    ch = doc["choices"][0]
    assert ch["finish_reason"] == "stop"
    assert ch["text"] == "".join(t["text"] for t in ws_tokens) and stop not in ch["text"]
    lp = ch["logprobs"]
    assert lp["tokens"] == [t["text"] for t in ws_tokens]
    assert lp["token_logprobs"] == pytest.approx([t["logprob"] for t in ws_tokens], abs=1e-3)
    offsets = [0]
    for t in ws_tokens[:-1]:
        offsets.append(offsets[-1] + len(t["text"].encode()))
    assert lp["text_offset"] == offsets


def test_curl_streams_events_framed_exactly(gw):
    body = json.dumps({"model": "m", "prompt": PROMPT, "max_tokens": 6, "stream": True, **SAMPLED})
    r = subprocess.run(["curl", "-sS", "-N", "-D", "-", "-H", "Content-Type: application/json", "-d", body,
                        f"http://127.0.0.1:{gw.port}/v1/completions"], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    head, _, raw = r.stdout.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    hdr = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    assert hdr["content-type"] == "text/event-stream" and hdr["cache-control"] == "no-cache"
    assert "content-length" not in hdr
    chunks = sse_events(raw)
    assert len(chunks) == 7  # six tokens, then the finish
    assert chunks[-1]["choices"][0] == {"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}


# --- chat completions -------------------------------------------------------------------------

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
# What the worker renders them into: the test models have no template of
# their own, so ChatML (worker/chat.c's built-in), as llama.cpp's server does.
CHATML = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"


def chat(port, **body):
    status, headers, raw = post(port, "/v1/chat/completions", dict(model="m", **body))
    assert status == 200, raw
    return headers, raw


def test_chat_renders_messages_with_the_template(gw):
    """messages through the template: the same tokens as the rendered text
    sent as a completion prompt, in one object and as deltas."""
    n = 16
    ref = completion(gw.port, prompt=CHATML, max_tokens=n, **SAMPLED)
    text = ref["choices"][0]["text"]
    assert "\ufffd" not in text, text

    _, raw = chat(gw.port, messages=MESSAGES, max_tokens=n, **SAMPLED)
    doc = json.loads(raw)
    assert doc["object"] == "chat.completion" and doc["id"].startswith("chatcmpl-")
    ch = doc["choices"][0]
    assert ch["message"] == {"role": "assistant", "content": text}
    assert ch["finish_reason"] == "length" and ch["logprobs"] is None
    assert doc["usage"] == ref["usage"]

    # Content as text parts is the same conversation.
    parts = [MESSAGES[0], {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                       {"type": "text", "text": " there"}]}]
    _, raw = chat(gw.port, messages=parts, max_completion_tokens=n, **SAMPLED)
    assert json.loads(raw)["choices"][0]["message"]["content"] == text

    headers, raw = chat(gw.port, messages=MESSAGES, max_tokens=n, stream=True,
                        stream_options={"include_usage": True}, **SAMPLED)
    assert headers["content-type"] == "text/event-stream"
    chunks = sse_events(raw)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    first, *middle, last, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["choices"][0]["finish_reason"] is None
    assert all(set(c["choices"][0]["delta"]) == {"content"} and c["choices"][0]["finish_reason"] is None
               for c in middle)
    assert "".join(c["choices"][0]["delta"]["content"] for c in middle) == text
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"] == ref["usage"]


def test_chat_logprobs(gw):
    _, raw = chat(gw.port, messages=MESSAGES, max_tokens=6, logprobs=True, top_logprobs=3, **SAMPLED)
    ch = json.loads(raw)["choices"][0]
    items = ch["logprobs"]["content"]
    assert len(items) == 6
    assert "".join(i["token"] for i in items) == ch["message"]["content"]
    for i in items:
        assert bytes(i["bytes"]).decode() == i["token"] and i["logprob"] <= 0
        assert len(i["top_logprobs"]) == 3
        lps = [t["logprob"] for t in i["top_logprobs"]]
        assert lps == sorted(lps, reverse=True)


@pytest.mark.parametrize("body,param", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"content": "no role"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
    ({"messages": MESSAGES, "logprobs": "yes"}, "logprobs"),
    ({"messages": MESSAGES, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": MESSAGES, "tools": [{"type": "function"}]}, "tools"),
    ({"messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"},
     "tool_choice"),
    ({"messages": MESSAGES, "n": 3}, "n"),
])
def test_bad_chat_requests_get_400(gw, body, param):
    s, h, b = post(gw.port, "/v1/chat/completions", body)
    check_error(s, h, b, 400, param=param, code="bad_request")


# --- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("body,param,code", [
    (b"{bad json", None, "bad_request"),
    (b"[1, 2]", None, "bad_request"),
    ({}, "prompt", "bad_request"),
    ({"prompt": 5}, "prompt", "bad_request"),
    ({"prompt": ["a", "b"]}, "prompt", "bad_request"),
    ({"prompt": "x", "n": 2}, "n", "bad_request"),
    ({"prompt": "x", "presence_penalty": 2.5}, "presence_penalty", "bad_request"),
    ({"prompt": "x", "frequency_penalty": -3}, "frequency_penalty", "bad_request"),
    ({"prompt": "x", "ignore_eos": "yes"}, "ignore_eos", "bad_request"),
    ({"prompt": "x", "temperature": 11}, "temperature", "bad_request"),
    ({"prompt": "x", "top_p": "high"}, "top_p", "bad_request"),
    ({"prompt": "x", "seed": -1}, "seed", "bad_request"),
    ({"prompt": "x", "stop": ["a"] * 9}, "stop", "bad_request"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens", "bad_request"),
    ({"prompt": "x", "max_tokens": 100000}, "max_tokens", "max_tokens_exceeded"),
    ({"prompt": "x", "max_completion_tokens": 100000}, "max_completion_tokens", "max_tokens_exceeded"),
    ({"prompt": "x", "logprobs": 21}, "logprobs", "bad_request"),
])
def test_bad_requests_get_400_in_openai_shape(gw, body, param, code):
    s, h, b = post(gw.port, "/v1/completions", body)
    check_error(s, h, b, 400, param=param, code=code)


def test_neutral_values_and_unknown_fields_are_accepted(gw):
    doc = completion(gw.port, max_tokens=2, n=1, presence_penalty=0, frequency_penalty=0.0, ignore_eos=False,
                     echo=False, best_of=1, user="u1", top_k=-1, logit_bias={}, some_future_field={"x": [1]},
                     **{k: v for k, v in SAMPLED.items() if k != "top_k"})
    assert doc["usage"]["completion_tokens"] == 2


def test_context_length_and_paths(gw):
    s, h, b = post(gw.port, "/v1/completions", {"prompt": "hello " * 20000, "max_tokens": 1})
    check_error(s, h, b, 400, code="context_length_exceeded")
    s, h, b = post(gw.port, "/v1/nothing", {"prompt": "x"})
    check_error(s, h, b, 404, code="not_found")
    s, h, b = post(gw.port, "/v1/completions", None, method="GET")
    check_error(s, h, b, 404, code="not_found")


def test_body_over_the_cap_is_413(gw):
    big = json.dumps({"prompt": "x", "pad": "y" * (1 << 20)})
    s, h, b = post(gw.port, "/v1/completions", big)
    check_error(s, h, b, 413, code="too_large")
    # The connection's next request still works (the body was read to its end).
    assert completion(gw.port, max_tokens=1)["usage"]["completion_tokens"] == 1


def test_keys_and_rate_limit(pipelines, tiny_model):
    p = pipelines(tiny_model, gateway_args=["--api_keys", "k-one", "--rate_limit_rps", "0.01",
                                            "--rate_limit_burst", "2"])
    body = {"model": "m", "prompt": "a", "max_tokens": 1}
    check_error(*post(p.port, "/v1/completions", body), 401, code="invalid_api_key")
    check_error(*post(p.port, "/v1/completions", body, {"Authorization": "Bearer wrong"}), 401,
                code="invalid_api_key")
    check_error(*post(p.port, "/v1/models", None, {"Authorization": "Bearer wrong"}, method="GET"), 401,
                code="invalid_api_key")
    ok = {"Authorization": "Bearer k-one"}
    for _ in range(2):
        s, _, b = post(p.port, "/v1/completions", body, ok)
        assert s == 200, b
    check_error(*post(p.port, "/v1/completions", body, ok), 429, code="rate_limit_exceeded")
    assert metric(p.port, "rill_gateway_errors_total", code="rate_limited") == 1
    assert metric(p.port, "rill_gateway_errors_total", code="unauthorized") == 3


def test_no_worker_is_503():
    port = conftest.free_port()
    run_dir = tempfile.mkdtemp(prefix="rill-e2e-")
    g = subprocess.Popen([conftest.binary("rill-gateway"), "--instance", "tnoworkeroai", "--run_dir", run_dir,
                          "--listen", f"127.0.0.1:{port}",
                          "--worker_list", f"ipc://{run_dir}/w0.sock@/rill-tnoworkeroai-w0"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up():
            try:
                return conftest.http_get(port, "/health")[0] == 200
            except OSError:
                return False
        conftest.wait_for(up, what="gateway up")
        for stream in (False, True):
            s, h, b = post(port, "/v1/completions", {"prompt": "x", "stream": stream})
            e = check_error(s, h, b, 503, code="no_worker")
            assert e["type"] == "server_error"
    finally:
        g.terminate()
        g.wait(10)
        shutil.rmtree(run_dir, ignore_errors=True)


def test_drain_finishes_running_streams_and_refuses_new_ones(gw, pipelines, small_model):
    """SIGTERM: a running event stream still ends with its finish and [DONE];
    a new request meanwhile gets 503 shutting_down."""
    p = pipelines(small_model)
    s = raw_request(p.port, {"prompt": PROMPT, "max_tokens": 200, "stream": True, **SAMPLED})
    got = b""
    while got.count(b"data: ") < 2:
        more = s.recv(65536)
        assert more, got
        got += more
    p.gateway.send_signal(signal.SIGTERM)
    conftest.wait_for(lambda: "draining" in p.log("gateway"), timeout=5, what="the gateway draining")
    check_error(*post(p.port, "/v1/completions", {"prompt": "x", "max_tokens": 1}), 503, code="shutting_down")
    while True:
        more = s.recv(65536)
        if not more:
            break
        got += more
    s.close()
    head, _, body = got.partition(b"\r\n\r\n")
    chunks = sse_events(body)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    whole = completion(gw.port, max_tokens=200, **SAMPLED)["choices"][0]["text"]  # another pipeline, same model
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole
    assert p.gateway.wait(30) == 0


# --- the client going away, or not reading ----------------------------------------------------

def raw_request(port, body, rcvbuf=None):
    s = raw_socket_rcvbuf(rcvbuf) if rcvbuf else socket.socket()
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    data = json.dumps(body).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return s


def test_closing_the_connection_cancels_the_generation(gw):
    worker = gw.worker_procs[0].pid
    s = raw_request(gw.port, {"prompt": PROMPT, "max_tokens": 1500, "stream": True, **SAMPLED})
    got = b""
    while got.count(b"data: ") < 4:
        more = s.recv(4096)
        assert more, f"the connection closed after {got!r}"
        got += more
    assert got.startswith(b"HTTP/1.1 200 OK\r\n"), got
    assert metric(gw.port, "rill_gateway_active_streams") == 1
    busy0 = cpu_ticks(worker)
    time.sleep(0.5)
    assert cpu_ticks(worker) - busy0 >= 10, "the worker should be generating"
    s.close()
    conftest.wait_for(lambda: metric(gw.port, "rill_gateway_active_streams") == 0, timeout=5,
                      what="the stream released")
    time.sleep(0.3)  # the step under way, and the cancel's
    idle0 = cpu_ticks(worker)
    time.sleep(1.0)
    # 1500 tokens take several seconds: a worker still generating would burn ~100 ticks here.
    assert cpu_ticks(worker) - idle0 <= 5
    assert "the client closed its connection: cancelling" in gw.log("gateway")


def test_a_reader_that_stops_is_cut_off_as_slow(pipelines, small_model):
    p = pipelines(small_model, gateway_args=["--client_buffer_bytes", "4096"])
    s = raw_request(p.port, {"prompt": PROMPT, "max_tokens": 1500, "stream": True, **SAMPLED}, rcvbuf=2048)
    try:
        conftest.wait_for(lambda: metric(p.port, "rill_gateway_slow_consumers_total") == 1, timeout=30,
                          what="the slow client cut off")
        conftest.wait_for(lambda: metric(p.port, "rill_gateway_active_streams") == 0, timeout=5,
                          what="its stream released")
        assert metric(p.port, "rill_gateway_errors_total", code="slow_consumer") == 1
    finally:
        s.close()


# --- the official client -------------------------------------------------------------------

NODE_MODULES = os.path.join(conftest.ROOT, "gateway", "web", "node_modules")


def test_the_openai_npm_client(gw):
    if not os.path.isdir(os.path.join(NODE_MODULES, "openai")) or not shutil.which("node"):
        pytest.fail("the openai npm package is missing: run make deps")
    n = 12
    tokens, _ = ws_stream(gw.url, PROMPT, n, SAMPLED)
    ws_text = "".join(t["text"] for t in tokens)
    script = os.path.join(os.path.dirname(__file__), "openai_client.cjs")
    r = subprocess.run(["node", script, f"http://127.0.0.1:{gw.port}/v1", PROMPT, str(n), json.dumps(SAMPLED),
                        json.dumps(MESSAGES)],
                       capture_output=True, text=True, timeout=90, env=dict(os.environ, NODE_PATH=NODE_MODULES))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    st = out["stream"]
    assert st["text"] == ws_text and st["finish"] == "length"
    assert st["usage"]["completion_tokens"] == n and st["usage"]["total_tokens"] == st["usage"]["prompt_tokens"] + n
    ns = out["nonstream"]
    assert ns["text"] == ws_text and ns["finish"] == "length" and ns["usage"] == st["usage"]
    err = out["error"]
    assert err["status"] == 400 and err["param"] == "n" and err["type"] == "invalid_request_error"
    ch = out["chat_stream"]
    ref = completion(gw.port, prompt=CHATML, max_tokens=n, **SAMPLED)
    assert ch["role"] == "assistant" and ch["text"] == ref["choices"][0]["text"] and ch["finish"] == "length"
    assert ch["usage"] == ref["usage"]
    assert out["chat"] == {"role": "assistant", "text": ref["choices"][0]["text"], "finish": "length",
                           "usage": ref["usage"]}
    ab = out["abort"]
    assert ab["aborted"] and ab["got"] == 3, ab
    # The abort closed the connection: the generation is released, not run to its 1500 tokens.
    conftest.wait_for(lambda: metric(gw.port, "rill_gateway_active_streams") == 0, timeout=5,
                      what="the aborted stream released")
