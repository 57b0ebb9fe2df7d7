"""OpenAI's presence_penalty and frequency_penalty (issue 15): over the
WebSocket's params and /v1/completions they reach the worker's sampler and
give exactly the worker's standalone output with the same penalties
(--presence-penalty / --frequency-penalty), which differs from the output
without them; out of range is refused by name."""
import json

import pytest

import conftest
from rillclient import GREEDY, expected, run
from test_openai import check_error, completion, post, ws_stream

PROMPT = "The capital of France is"
N = 32
PENALIZED = dict(GREEDY, frequency_penalty=1.0, presence_penalty=0.5)


@pytest.fixture(scope="module")
def gw(module_pipelines, small_model):
    return module_pipelines(small_model)


def test_frequency_penalty_changes_greedy_output_as_the_standalone_worker_does(gw, small_model):
    plain = expected(small_model, PROMPT, N, GREEDY)
    ref = expected(small_model, PROMPT, N, PENALIZED)
    assert len(plain) == N and len(ref) == N
    # The greedy run repeats itself: the penalties must change it.
    assert [t[1] for t in ref] != [t[1] for t in plain]

    tokens, end = ws_stream(gw.url, PROMPT, N, PENALIZED)
    assert [(t["position"], t["id"], t["text"]) for t in tokens] == list(ref)
    assert end["finish_reason"] == "length"
    tokens, _ = ws_stream(gw.url, PROMPT, N, GREEDY)
    assert [t["id"] for t in tokens] == [t[1] for t in plain]

    body = {k: v for k, v in PENALIZED.items()}
    doc = completion(gw.port, max_tokens=N, **body)
    assert doc["choices"][0]["text"] == "".join(t[2] for t in ref)
    assert doc["usage"]["completion_tokens"] == N


def test_out_of_range_penalties_are_refused_by_name(gw):
    for name, v in (("presence_penalty", 2.5), ("frequency_penalty", -2.01)):
        _, end = run(conftest.generate(gw.url, PROMPT, 4, **{name: v}))
        assert end["type"] == "error" and end["error"]["code"] == "bad_request", end
        assert f"params.{name}" in end["error"]["message"], end
        s, h, b = post(gw.port, "/v1/completions", {"model": "m", "prompt": PROMPT, name: v})
        e = check_error(s, h, b, 400, param=name, code="bad_request")
        assert name in e["message"] and "out of range" in e["message"], e
