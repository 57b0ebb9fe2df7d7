"""Protocol conformance of rill.json.v1 and rill.msgpack.v1.

Every stream is compared exactly (token ids, texts, positions) with the
worker's standalone output for the same prompt and sampling parameters.
The worker CLI and the gateway have different sampling defaults (CLI:
top_k 0, min_p 0; gateway: top_k 40, min_p 0.05), so every parameter is
passed explicitly to both.
"""
import json
import time

import pytest

import conftest
import rillclient as rc
from rillclient import GREEDY, JSON, MSGPACK, SAMPLED, Client, run, sampling

PROTOS = [JSON, MSGPACK]


@pytest.fixture(scope="module")
def tiny(module_pipelines, tiny_model):
    return module_pipelines(tiny_model)


@pytest.fixture(scope="module")
def small(module_pipelines, small_model):
    """The 24M model: a real 32000-token vocabulary, and slow enough (~6 ms
    a token on one thread) that a long generation is still running when a
    test acts on it."""
    return module_pipelines(small_model)


def counters(port):
    names = ("rill_gateway_tokens_total", "rill_gateway_frames_total", "rill_gateway_coalesced_tokens_total",
             "rill_gateway_requests_total", "rill_gateway_requests_completed_total")
    _, body, _ = conftest.http_get(port, "/metrics")
    _, samples = rc.parse_prom(body)
    return {n: samples[(n, frozenset())] for n in names}


# --- one generation, both protocols, exact streams -------------------------------------------------

CASES = [
    ("greedy", "Once upon a time", sampling(GREEDY)),
    ("sampled", "The meaning of life is", sampling(SAMPLED, seed=1234)),
    ("hot", "Hello", sampling(GREEDY, temperature=1.5, seed=99)),
]


@pytest.mark.parametrize("proto", PROTOS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_stream_equals_worker_output_tiny(tiny, tiny_model, proto, case):
    _, prompt, params = case
    n = 60
    want = rc.expected(tiny_model, prompt, n, params)
    assert len(want) == n

    async def main():
        before = counters(tiny.port)
        async with await Client.connect(tiny.url, proto) as c:
            g = await c.run(prompt, n, params, gid="one")
        after = counters(tiny.port)
        rc.check_complete(g, want)
        assert g.accepted["worker"] == "w0"
        # The gateway's counters add up with what this client saw.
        d = {k: after[k] - before[k] for k in after}
        assert d["rill_gateway_tokens_total"] == n
        assert d["rill_gateway_requests_total"] == 1 and d["rill_gateway_requests_completed_total"] == 1
        assert d["rill_gateway_coalesced_tokens_total"] == n - len(g.frames)
    run(main())


@pytest.mark.parametrize("proto", PROTOS)
@pytest.mark.parametrize("case", CASES[:2], ids=[c[0] for c in CASES[:2]])
def test_stream_equals_worker_output_24m(small, small_model, proto, case):
    """A 32000-token vocabulary: multi-byte pieces, byte fallback, leading spaces."""
    _, prompt, params = case
    n = 40
    want = rc.expected(small_model, prompt, n, params)

    async def main():
        async with await Client.connect(small.url, proto) as c:
            g = await c.run(prompt, n, params)
        rc.check_complete(g, want)
    run(main())


def test_summary_fields_are_numbers_that_agree(tiny, tiny_model):
    n = 30
    params = sampling(GREEDY)

    async def main():
        async with await Client.connect(tiny.url, MSGPACK) as c:
            g = await c.run("Summary", n, params)
        s = rc.check_complete(g, rc.expected(tiny_model, "Summary", n, params))
        for f in rc.SUMMARY_FIELDS:
            assert isinstance(s[f], (int, float)) and not isinstance(s[f], bool), (f, s[f])
            assert s[f] >= 0, (f, s[f])
        for f in ("total_tokens", "max_memory_usage_mb", "error_count", "most_common_batch_size"):
            assert isinstance(s[f], int), (f, s[f])
        assert s["most_common_batch_size"] >= 1
        assert s["max_memory_usage_mb"] >= 1
        # The latencies summarized are the tokens' own.
        lat = sorted(t["latency_ms"] for t in g.tokens)
        assert lat[0] - 1e-3 <= s["p95_token_latency_ms"] <= lat[-1] + 1e-3
        assert abs(s["average_token_latency_ms"] - sum(lat) / n) < 0.01
    run(main())


def test_gateway_defaults(tiny, tiny_model):
    """Nothing but a seed: max_tokens 100 and the gateway's sampling defaults
    (temperature 0.8, top_p 0.95, top_k 40, min_p 0.05, repetition_penalty 1,
    from creq.h; the worker CLI's own defaults differ: top_k 0, min_p 0)."""
    defaults = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.0,
                "seed": 77}
    want = rc.expected(tiny_model, "Defaults", 100, defaults)

    async def main():
        async with await Client.connect(tiny.url, JSON) as c:
            await c.send({"type": "generate", "id": "d", "prompt": "Defaults", "params": {"seed": 77}})
            (g,) = await c.wait_done("d")
        rc.check_complete(g, want)
    run(main())


def test_empty_prompt_is_the_bos_alone(tiny, tiny_model):
    params = sampling(GREEDY)

    async def main():
        async with await Client.connect(tiny.url, MSGPACK) as c:
            g = await c.run("", 10, params)
        rc.check_complete(g, rc.expected(tiny_model, "", 10, params))
    run(main())


def test_big_message_from_fragments(tiny):
    """A 200 KB message (under max_message_bytes, in many frames' worth of
    reads): assembled whole; its prompt is then over the model's context."""
    prompt = "word " * 40000

    async def main():
        async with await Client.connect(tiny.url, JSON) as c:
            await c.generate(prompt, 4, sampling(GREEDY), gid="big")
            (g,) = await c.wait_done("big")
            assert g.error and g.error["code"] == "context_length_exceeded", g.terminal
            await c.ws.send(json.dumps({"type": "generate", "id": "big2", "prompt": prompt[:3000], "max_tokens": 3})[i:i + 1000]
                            for i in range(0, 3100, 1000))
            (g,) = await c.wait_done("big2")
            assert g.terminal["type"] == "complete" and len(g.tokens) == 3, g.terminal
    run(main())


def test_json_is_the_default_subprotocol(tiny, tiny_model):
    params = sampling(GREEDY)

    async def main():
        c = await Client.connect(tiny.url, proto=None)  # offers no subprotocol
        async with c:
            assert c.ws.subprotocol is None
            g = await c.run("Default", 12, params)  # recv() insists on text frames
        rc.check_complete(g, rc.expected(tiny_model, "Default", 12, params))
    run(main())


@pytest.mark.parametrize("proto", PROTOS)
def test_tokens_frames_carry_consecutive_tokens(tiny, tiny_model, proto):
    """A client that does not read for a while gets what piled up as
    "tokens" frames (several tokens of one stream in one frame)."""
    n = 1500
    params = sampling(GREEDY)
    want = rc.expected(tiny_model, "Pile up", n, params)

    async def main():
        async with await Client.connect(tiny.url, proto) as c:
            await c.generate("Pile up", n, params, gid="pile")
            # Stop reading until the worker has produced the whole stream.
            conftest.wait_for(lambda: rc.metric(tiny.port, "rill_gateway_active_streams") == 0,
                              what="the generation to end")
            (g,) = await c.wait_done("pile")
        rc.check_complete(g, want)
        assert "tokens" in g.frames, g.frames
    run(main())


def test_hello(tiny):
    async def main():
        for proto in PROTOS:
            async with await Client.connect(tiny.url, proto) as c:
                await c.send({"type": "hello", "client": {"name": "e2e", "version": "1"}})
                await c.until(lambda: c.others)
                h = c.others[0]
                assert h["type"] == "hello" and h["server"] == "rill" and h["protocol"] == proto, h
                assert h["authenticated"] is True  # no keys configured
                assert h["max_tokens_limit"] == 4096 and h["max_streams"] == 16
    run(main())


def test_stop_string_ends_like_the_worker(tiny, tiny_model):
    n = 60
    params = sampling(GREEDY)
    full = rc.expected(tiny_model, "Stop here", n, params)
    # A stop string taken from the middle of the output.
    text = "".join(t for _, _, t in full)
    stop = text[len(text) // 2:len(text) // 2 + 3]
    params_stop = dict(params, stop=[stop])
    want = rc.expected(tiny_model, "Stop here", n, params_stop)
    assert len(want) < n

    async def main():
        for proto in PROTOS:
            async with await Client.connect(tiny.url, proto) as c:
                g = await c.run("Stop here", n, params_stop)
            rc.check_complete(g, want, finish="stop")
            assert stop not in "".join(t["text"] for t in g.tokens)
    run(main())


def test_top_logprobs_match_the_worker(tiny, tiny_model):
    n = 20
    params = sampling(SAMPLED, seed=5)
    lines = conftest.worker_stream(tiny_model, "Alternatives", n, *rc.cli_flags(params), "--top-logprobs", "3")

    async def main():
        async with await Client.connect(tiny.url, MSGPACK) as c:
            g = await c.run("Alternatives", n, dict(params, top_logprobs=3))
        rc.check_complete(g, [(l["position"], l["id"], l["text"]) for l in lines])
        for t, l in zip(g.tokens, lines):
            assert [a["id"] for a in t["top_logprobs"]] == [a["id"] for a in l["top_logprobs"]]
            assert abs(t["logprob"] - l["logprob"]) < 1e-4
    run(main())


def test_timestamps_carry_the_generation_time(tiny, tiny_model):
    """params.timestamps: every token has gen_us, the worker's CLOCK_MONOTONIC
    time in microseconds — between this client's send and receive (same host)."""
    n = 25
    params = sampling(GREEDY)

    async def main():
        for proto in PROTOS:
            async with await Client.connect(tiny.url, proto) as c:
                t0 = time.monotonic_ns() // 1000
                g = await c.run("Clock", n, dict(params, timestamps=True))
                t1 = time.monotonic_ns() // 1000
                rc.check_complete(g, rc.expected(tiny_model, "Clock", n, params))
                stamps = [t["gen_us"] for t in g.tokens]
                assert all(isinstance(s, int) for s in stamps)
                assert stamps == sorted(stamps)
                assert t0 <= stamps[0] and stamps[-1] <= t1, (t0, stamps[0], stamps[-1], t1)
                g = await c.run("Clock", n, params)
                assert not any("gen_us" in t for t in g.tokens)
    run(main())


# --- ids and several generations per connection ---------------------------------------------------

@pytest.mark.parametrize("proto", PROTOS)
def test_several_generations_at_once_told_apart_by_id(tiny, tiny_model, proto):
    jobs = [(f"job-{k}", f"Prompt number {k}", 20 + 7 * k, sampling(SAMPLED, seed=100 + k)) for k in range(6)]
    jobs.append((17, "Numeric id", 33, sampling(GREEDY)))  # an integer id comes back as an integer
    want = {gid: rc.expected(tiny_model, p, n, params) for gid, p, n, params in jobs}

    async def main():
        async with await Client.connect(tiny.url, proto) as c:
            for gid, p, n, params in jobs:
                await c.generate(p, n, params, gid=gid)
            gens = await c.wait_done(*[j[0] for j in jobs])
            for g in gens:
                rc.check_complete(g, want[g.id])
            assert isinstance(c.gen(17).terminal["id"], int)
            assert not c.others
    run(main())


@pytest.mark.parametrize("proto", PROTOS)
def test_server_makes_ids_when_the_client_gives_none(tiny, tiny_model, proto):
    params = sampling(GREEDY)
    sizes = (5, 9, 14)

    async def main():
        async with await Client.connect(tiny.url, proto) as c:
            for n in sizes:
                await c.generate("No id", n, params)
            await c.until(lambda: len([g for g in c.gens.values() if g.done]) == len(sizes))
        ids = list(c.gens)
        assert len(set(ids)) == len(sizes), ids
        assert all(isinstance(i, str) and i for i in ids), ids
        by_len = {}
        for g in c.gens.values():
            assert g.accepted is not None
            by_len[len(g.tokens)] = g
        assert sorted(by_len) == sorted(sizes)
        for n, g in by_len.items():
            rc.check_complete(g, rc.expected(tiny_model, "No id", n, params))
    run(main())


@pytest.mark.parametrize("proto", PROTOS)
def test_server_made_ids_never_collide_with_the_clients(tiny, tiny_model, proto):
    """A client that names a generation "gen-1" itself, then asks for one
    without an id: the server's id must be another one."""
    params = sampling(GREEDY)
    n_long = 1500
    long_want = rc.expected(tiny_model, "Mine", n_long, params)

    async def main():
        async with await Client.connect(tiny.url, proto) as c:
            await c.generate("Mine", n_long, params, gid="gen-1")
            await c.generate("Theirs", 5, params)
            await c.until(lambda: len([g for g in c.gens.values() if g.done]) == 2)
        assert len(c.gens) == 2, list(c.gens)
        rc.check_complete(c.gen("gen-1"), long_want)
        (other,) = [g for k, g in c.gens.items() if k != "gen-1"]
        rc.check_complete(other, rc.expected(tiny_model, "Theirs", 5, params))
    run(main())


# --- cancel ----------------------------------------------------------------------------------------

LONG = 1500   # ~9 s of the 24M model on one thread: still running when cancelled


def check_prefix(model, prompt, params, g):
    want = rc.expected(model, prompt, 32, params)
    got = rc.triples(g.tokens)
    k = min(len(got), len(want))
    assert got[:k] == want[:k]


@pytest.mark.parametrize("proto", PROTOS)
def test_cancel_ends_with_complete_cancelled(small, small_model, proto):
    params = sampling(SAMPLED, seed=7)

    async def main():
        async with await Client.connect(small.url, proto) as c:
            await c.generate("Cancel me", LONG, params, gid="x")
            await c.until(lambda: c.gen("x").tokens)
            await c.cancel("x")
            await c.cancel("x")  # twice is the same as once
            (g,) = await c.wait_done("x")
            g.check_order()
            assert g.terminal["type"] == "complete", g.terminal
            assert g.terminal["finish_reason"] == "cancelled"
            assert 0 < len(g.tokens) < LONG
            assert g.terminal["summary"]["total_tokens"] == len(g.tokens)
            check_prefix(small_model, "Cancel me", params, g)
            # The connection goes on: no error came, and a new generation runs.
            assert not c.others
            p = sampling(GREEDY)
            rc.check_complete(await c.run("After", 8, p), rc.expected(small_model, "After", 8, p))
            assert not c.others
    run(main())


def test_cancel_before_the_first_token(small):
    """A cancel right behind its generate: still one terminal message,
    complete with finish_reason cancelled."""
    async def main():
        async with await Client.connect(small.url, MSGPACK) as c:
            await c.generate("Never mind", LONG, sampling(GREEDY), gid="early")
            await c.cancel("early")
            (g,) = await c.wait_done("early")
            g.check_order()
            assert g.terminal["type"] == "complete" and g.terminal["finish_reason"] == "cancelled", g.terminal
            assert len(g.tokens) < LONG
            assert not c.others
    run(main())


def test_cancel_of_unknown_id_is_not_found(tiny):
    async def main():
        for proto in PROTOS:
            async with await Client.connect(tiny.url, proto) as c:
                await c.cancel("nobody")
                (g,) = await c.wait_done("nobody")
                assert g.error and g.error["code"] == "not_found" and g.error["recoverable"] is False
    run(main())


def test_cancel_after_complete_is_not_found(tiny, tiny_model):
    params = sampling(GREEDY)

    async def main():
        async with await Client.connect(tiny.url, JSON) as c:
            g = await c.run("Done", 5, params, gid="done")
            rc.check_complete(g, rc.expected(tiny_model, "Done", 5, params))
            await c.cancel("done")
            m = await c.recv()
            assert m["type"] == "error" and m["id"] == "done" and m["error"]["code"] == "not_found", m
    run(main())


def test_cancel_without_id_cancels_every_generation_of_the_connection(small, small_model):
    params = sampling(GREEDY)
    ids = ["a", "b", "c"]

    async def main():
        async with await Client.connect(small.url, JSON) as other, \
                await Client.connect(small.url, JSON) as c:
            # Another connection's generation is not touched by this cancel.
            await other.generate("Other", 60, params, gid="a")
            for gid in ids:
                await c.generate(f"All of them {gid}", LONG, params, gid=gid)
            await c.until(lambda: all(c.gen(i).tokens for i in ids))
            await c.cancel()
            gens = await c.wait_done(*ids)
            for g in gens:
                g.check_order()
                assert g.terminal["type"] == "complete" and g.terminal["finish_reason"] == "cancelled", g.terminal
                assert len(g.tokens) < LONG
                check_prefix(small_model, f"All of them {g.id}", params, g)
            (o,) = await other.wait_done("a")
            rc.check_complete(o, rc.expected(small_model, "Other", 60, params))
            # Nothing left running: a cancel without id now does nothing at all.
            await c.cancel()
            rc.check_complete(await c.run("Again", 6, params), rc.expected(small_model, "Again", 6, params))
            assert not c.others
    run(main())


# --- permessage-deflate and the two write paths --------------------------------------------------

@pytest.mark.parametrize("proto", PROTOS)
def test_deflate_and_plain_clients_get_the_same_stream(tiny, tiny_model, proto):
    """A client that offers permessage-deflate gets it (and is written from
    lws's writable callback); one that does not is written directly after
    each ring batch.  Both see the worker's exact stream, at the same time."""
    prompt, n, params = "Once upon a time", 50, sampling(SAMPLED, seed=77)
    want = rc.expected(tiny_model, prompt, n, params)

    async def main():
        async with await Client.connect(tiny.url, proto, compression="deflate") as z, \
                await Client.connect(tiny.url, proto, compression=None) as plain:
            assert any(e.name == "permessage-deflate" for e in z.ws.extensions)
            assert not plain.ws.extensions
            await z.generate(prompt, n, params, gid="z")
            await plain.generate(prompt, n, params, gid="p")
            await z.wait_done("z")
            await plain.wait_done("p")
            rc.check_complete(z.gen("z"), want)
            rc.check_complete(plain.gen("p"), want)
    run(main())
