"""Every bad input, one at a time, each with its error code — and while it
happens, another client's generations go on exactly as before (a Witness
runs generations back to back on its own connection and checks each one
against the worker's standalone output).

Limits, origins, API keys and rate limits each get their own small gateway.
"""
import json

import msgpack
import pytest
import websockets

import conftest
import rillclient as rc
from rillclient import JSON, MSGPACK, Client, Witness, run

MAX_MESSAGE = 4096
MAX_PROMPT = 1024
MAX_TOKENS_LIMIT = 1000
CONTEXT = 64

RECOVERABLE = {"bad_request": False, "unauthorized": False, "forbidden_origin": False, "too_large": False,
               "prompt_too_long": False, "max_tokens_exceeded": False, "context_length_exceeded": False,
               "too_many_streams": True, "too_many_connections": True, "rate_limited": True,
               "worker_lost": True, "not_found": False, "duplicate_id": False, "slow_consumer": True,
               "no_worker": True}


@pytest.fixture(scope="module")
def strict(module_pipelines, tiny_model):
    """Small limits everywhere; a worker whose context is 64 tokens."""
    return module_pipelines(tiny_model, gateway_args=[
        "--max_message_bytes", str(MAX_MESSAGE), "--max_prompt_bytes", str(MAX_PROMPT),
        "--max_tokens_limit", str(MAX_TOKENS_LIMIT), "--max_streams_per_conn", "2"],
        worker_args=["--context", str(CONTEXT)])


@pytest.fixture(scope="module")
def strict_slow(module_pipelines, small_model):
    """The same limits on the 24M model (~4 ms a token, not the tiny one's
    ~0.1): a test that needs a generation still running when its next
    message arrives cannot lose that race on a busy machine."""
    return module_pipelines(small_model, gateway_args=[
        "--max_message_bytes", str(MAX_MESSAGE), "--max_prompt_bytes", str(MAX_PROMPT),
        "--max_tokens_limit", str(MAX_TOKENS_LIMIT), "--max_streams_per_conn", "2"],
        worker_args=["--context", str(CONTEXT)])


def check_error(err, code):
    assert err["code"] == code, err
    assert err["recoverable"] is RECOVERABLE[code], err
    assert isinstance(err["message"], str) and err["message"], err


async def next_error(c, timeout=rc.TIMEOUT):
    """The next error message, with or without an id."""
    while True:
        m = await c.next_message(timeout)
        if m.get("type") == "error":
            return m


async def still_works(c, model):
    """The connection still serves a generation exactly."""
    p = rc.sampling(rc.GREEDY)
    g = await c.run("Still here", 6, p)
    rc.check_complete(g, rc.expected(model, "Still here", 6, p))


def long_json(n):
    return json.dumps({"type": "generate", "prompt": "x" * n, "max_tokens": 1})


# (name, raw frame, expected code, id the error must carry or None)
JSON_CASES = [
    ("malformed", '{"type": "generate", ', "bad_request", None),
    ("not_json_at_all", "hello there", "bad_request", None),
    ("array", "[1, 2, 3]", "bad_request", None),
    ("string", '"generate"', "bad_request", None),
    ("number", "42", "bad_request", None),
    ("null", "null", "bad_request", None),
    ("trailing_garbage", '{"type": "hello"} {"type": "hello"}', "bad_request", None),
    ("unknown_type", '{"type": "frobnicate", "id": "u1"}', "bad_request", "u1"),
    ("missing_type", '{"id": "m1", "prompt": "hi"}', "bad_request", "m1"),
    ("type_not_string", '{"type": 7}', "bad_request", None),
    ("prompt_number", '{"type": "generate", "id": "p1", "prompt": 5}', "bad_request", "p1"),
    ("prompt_missing", '{"type": "generate", "id": "p2"}', "bad_request", "p2"),
    ("prompt_null", '{"type": "generate", "id": "p3", "prompt": null}', "bad_request", "p3"),
    ("prompt_with_nul", '{"type": "generate", "id": "p4", "prompt": "a\\u0000b"}', "bad_request", None),
    ("max_tokens_string", '{"type": "generate", "id": "t1", "prompt": "hi", "max_tokens": "10"}', "bad_request", "t1"),
    ("max_tokens_fraction", '{"type": "generate", "id": "t2", "prompt": "hi", "max_tokens": 1.5}', "bad_request", "t2"),
    ("max_tokens_negative", '{"type": "generate", "id": "t3", "prompt": "hi", "max_tokens": -1}', "bad_request", "t3"),
    ("max_tokens_zero", '{"type": "generate", "id": "t4", "prompt": "hi", "max_tokens": 0}', "bad_request", "t4"),
    ("max_tokens_bool", '{"type": "generate", "id": "t5", "prompt": "hi", "max_tokens": true}', "bad_request", "t5"),
    ("max_tokens_over_limit", '{"type": "generate", "id": "t6", "prompt": "hi", "max_tokens": %d}' % (MAX_TOKENS_LIMIT + 1),
     "max_tokens_exceeded", "t6"),
    ("max_tokens_huge", '{"type": "generate", "id": "t7", "prompt": "hi", "max_tokens": 1e300}', "max_tokens_exceeded", "t7"),
    ("params_array", '{"type": "generate", "id": "q1", "prompt": "hi", "params": [1]}', "bad_request", "q1"),
    ("params_string", '{"type": "generate", "id": "q2", "prompt": "hi", "params": "hot"}', "bad_request", "q2"),
    ("params_unknown_key", '{"type": "generate", "id": "q3", "prompt": "hi", "params": {"temprature": 1}}', "bad_request", "q3"),
    ("temperature_string", '{"type": "generate", "id": "q4", "prompt": "hi", "params": {"temperature": "hot"}}', "bad_request", "q4"),
    ("temperature_negative", '{"type": "generate", "id": "q5", "prompt": "hi", "params": {"temperature": -0.5}}', "bad_request", "q5"),
    ("top_p_over_one", '{"type": "generate", "id": "q6", "prompt": "hi", "params": {"top_p": 1.5}}', "bad_request", "q6"),
    ("top_k_fraction", '{"type": "generate", "id": "q7", "prompt": "hi", "params": {"top_k": 2.5}}', "bad_request", "q7"),
    ("top_k_negative", '{"type": "generate", "id": "q8", "prompt": "hi", "params": {"top_k": -1}}', "bad_request", "q8"),
    ("seed_negative", '{"type": "generate", "id": "q9", "prompt": "hi", "params": {"seed": -3}}', "bad_request", "q9"),
    ("seed_string", '{"type": "generate", "id": "q10", "prompt": "hi", "params": {"seed": "42"}}', "bad_request", "q10"),
    ("timestamps_string", '{"type": "generate", "id": "q11", "prompt": "hi", "params": {"timestamps": "yes"}}', "bad_request", "q11"),
    ("top_logprobs_too_many", '{"type": "generate", "id": "q12", "prompt": "hi", "params": {"top_logprobs": 21}}', "bad_request", "q12"),
    ("stop_numbers", '{"type": "generate", "id": "s1", "prompt": "hi", "params": {"stop": [1, 2]}}', "bad_request", "s1"),
    ("stop_number", '{"type": "generate", "id": "s2", "prompt": "hi", "params": {"stop": 7}}', "bad_request", "s2"),
    ("stop_empty_string", '{"type": "generate", "id": "s3", "prompt": "hi", "params": {"stop": [""]}}', "bad_request", "s3"),
    ("stop_too_many", json.dumps({"type": "generate", "id": "s4", "prompt": "hi", "params": {"stop": ["a"] * 9}}), "bad_request", "s4"),
    ("stop_too_long", json.dumps({"type": "generate", "id": "s5", "prompt": "hi", "params": {"stop": ["a" * 65]}}), "bad_request", "s5"),
    ("id_array", '{"type": "generate", "id": [1], "prompt": "hi"}', "bad_request", None),
    ("id_empty", '{"type": "generate", "id": "", "prompt": "hi"}', "bad_request", None),
    ("id_too_long", json.dumps({"type": "generate", "id": "i" * 65, "prompt": "hi"}), "bad_request", None),
    ("id_negative", '{"type": "generate", "id": -1, "prompt": "hi"}', "bad_request", None),
    ("type_cut_mid_character", json.dumps({"type": "a" + "é" * 20}, ensure_ascii=False), "bad_request", None),
    ("hello_key_number", '{"type": "hello", "key": 5}', "bad_request", None),
    ("hello_client_string", '{"type": "hello", "client": "me"}', "bad_request", None),
    ("too_large", long_json(MAX_MESSAGE + 10), "too_large", None),
    ("prompt_too_long", json.dumps({"type": "generate", "id": "L1", "prompt": "y" * (MAX_PROMPT + 1)}), "prompt_too_long", "L1"),
]


@pytest.mark.parametrize("name,frame,code,gid", JSON_CASES, ids=[c[0] for c in JSON_CASES])
def test_bad_json_input_gets_its_error_and_disturbs_no_one(strict, tiny_model, name, frame, code, gid):
    async def main():
        async with Witness(strict.url, tiny_model) as w:
            async with await Client.connect(strict.url, JSON) as c:
                await c.send_raw(frame)
                m = await next_error(c)
                check_error(m["error"], code)
                if gid is None:
                    assert "id" not in m, m
                else:
                    assert m.get("id") == gid, m
                await still_works(c, tiny_model)
            await w.more(1)
    run(main())


# (name, binary frame, expected code, id)
MSGPACK_CASES = [
    ("invalid_byte", b"\xc1", "bad_request", None),
    ("truncated_map", msgpack.packb({"type": "generate", "prompt": "hello"})[:-3], "bad_request", None),
    ("trailing_bytes", msgpack.packb({"type": "hello"}) + b"\x01", "bad_request", None),
    ("array", msgpack.packb([1, 2, 3]), "bad_request", None),
    ("string", msgpack.packb("generate"), "bad_request", None),
    ("integer_keys", msgpack.packb({1: 2}), "bad_request", None),
    ("ext_type", msgpack.packb({"type": "generate", "prompt": msgpack.ExtType(5, b"xx")}), "bad_request", None),
    ("unknown_type", msgpack.packb({"type": "frobnicate", "id": "u1"}), "bad_request", "u1"),
    ("prompt_number", msgpack.packb({"type": "generate", "id": "p1", "prompt": 5}), "bad_request", "p1"),
    ("prompt_with_nul", msgpack.packb({"type": "generate", "id": "p2", "prompt": "a\x00b"}), "bad_request", "p2"),
    ("max_tokens_string", msgpack.packb({"type": "generate", "id": "t1", "prompt": "hi", "max_tokens": "9"}), "bad_request", "t1"),
    ("max_tokens_over_limit", msgpack.packb({"type": "generate", "id": "t2", "prompt": "hi", "max_tokens": 10 ** 9}),
     "max_tokens_exceeded", "t2"),
    ("params_not_map", msgpack.packb({"type": "generate", "id": "q1", "prompt": "hi", "params": [1]}), "bad_request", "q1"),
    ("stop_not_strings", msgpack.packb({"type": "generate", "id": "s1", "prompt": "hi", "params": {"stop": [1]}}), "bad_request", "s1"),
    ("deep_nesting", msgpack.packb({"type": "hello", "client": {"a": [[[[[[[[[[1]]]]]]]]]]}}), "bad_request", None),
    ("too_large", msgpack.packb({"type": "generate", "prompt": "x" * (MAX_MESSAGE + 10)}), "too_large", None),
    # The error message quotes the type, cut at 32 bytes: in the middle of an
    # "é".  A msgpack str must still be UTF-8 (the client decodes strictly).
    ("type_cut_mid_character", msgpack.packb({"type": "a" + "é" * 20}), "bad_request", None),
    # An id that is not UTF-8 could not be echoed: refused (and not echoed).
    ("id_not_utf8", b"\x83\xa4type\xa8generate\xa2id\xa2\xc3\x28\xa6prompt\xa2hi", "bad_request", None),
    # A str that is not UTF-8 at all, quoted back.
    ("type_not_utf8", b"\x81\xa4type\xa3a\xff\xfe", "bad_request", None),
]


@pytest.mark.parametrize("name,frame,code,gid", MSGPACK_CASES, ids=[c[0] for c in MSGPACK_CASES])
def test_bad_msgpack_input_gets_its_error_and_disturbs_no_one(strict, tiny_model, name, frame, code, gid):
    async def main():
        async with Witness(strict.url, tiny_model, proto=MSGPACK) as w:
            async with await Client.connect(strict.url, MSGPACK) as c:
                await c.send_raw(frame)
                m = await next_error(c)
                check_error(m["error"], code)
                if gid is not None:
                    assert m.get("id") == gid, m
                await still_works(c, tiny_model)
            await w.more(1)
    run(main())


def test_binary_frame_on_json_is_bad_request(strict, tiny_model):
    async def main():
        async with Witness(strict.url, tiny_model) as w:
            async with await Client.connect(strict.url, JSON) as c:
                await c.send_raw(msgpack.packb({"type": "generate", "prompt": "hi"}))
                check_error((await next_error(c))["error"], "bad_request")
                await still_works(c, tiny_model)
            await w.more(1)
    run(main())


def test_json_id_not_utf8_fails_the_connection(strict, tiny_model):
    """A text frame whose bytes are not UTF-8 (in the id): RFC 6455 8.1 says
    fail the connection (1007, see test_rfc6455.py), so no error message."""
    from websockets.frames import Opcode

    async def main():
        async with await Client.connect(strict.url, JSON) as c:
            await c.ws.write_frame(True, Opcode.TEXT, b'{"type":"generate","id":"a\xff","prompt":"hi"}')
            assert await c.wait_closed() == 1007
            assert not c.others
        async with await Client.connect(strict.url, JSON) as c:
            await still_works(c, tiny_model)
    run(main())


def test_text_frame_on_msgpack_is_bad_request(strict, tiny_model):
    async def main():
        async with Witness(strict.url, tiny_model, proto=MSGPACK) as w:
            async with await Client.connect(strict.url, MSGPACK) as c:
                await c.send_raw(json.dumps({"type": "generate", "prompt": "hi"}))
                check_error((await next_error(c))["error"], "bad_request")
                await still_works(c, tiny_model)
            await w.more(1)
    run(main())


def test_fragmented_message_over_the_cap_is_too_large(strict, tiny_model):
    """A message sent as many small fragments is measured whole."""
    async def main():
        async with Witness(strict.url, tiny_model) as w:
            async with await Client.connect(strict.url, JSON) as c:
                text = long_json(MAX_MESSAGE * 2)
                await c.ws.send(text[i:i + 500] for i in range(0, len(text), 500))
                check_error((await next_error(c))["error"], "too_large")
                await still_works(c, tiny_model)
            await w.more(1)
    run(main())


def test_unknown_subprotocol_is_refused_at_the_handshake(strict):
    async def main():
        with pytest.raises((websockets.InvalidHandshake, websockets.ConnectionClosed, OSError)):
            c = await Client.connect(strict.url, proto=None, offer=["rill.nonsense.v1"])
            await c.close()
    run(main())


def test_other_path_is_refused_at_the_handshake(strict):
    async def main():
        with pytest.raises((websockets.InvalidHandshake, websockets.ConnectionClosed, OSError)):
            c = await Client.connect(strict.url.replace("/stream", "/elsewhere"), proto=JSON)
            await c.close()
    run(main())


def test_known_subprotocol_is_chosen_among_unknown_ones(strict, tiny_model):
    async def main():
        c = await Client.connect(strict.url, proto=MSGPACK, offer=["rill.nonsense.v1", MSGPACK])
        async with c:
            await still_works(c, tiny_model)
    run(main())


def test_context_length_exceeded_comes_from_the_worker(strict, tiny_model):
    prompt = "The quick brown fox jumps over the lazy dog. " * 12  # far over 64 tokens, under max_prompt_bytes
    assert len(prompt) < MAX_PROMPT

    async def main():
        async with Witness(strict.url, tiny_model) as w:
            async with await Client.connect(strict.url, JSON) as c:
                await c.generate(prompt, 4, rc.GREEDY, gid="ctx")
                (g,) = await c.wait_done("ctx")
                assert g.error, g.terminal
                check_error(g.error, "context_length_exceeded")
                assert g.accepted is None and not g.tokens
                await still_works(c, tiny_model)
            await w.more(1)
    run(main())


def test_max_tokens_beyond_the_context_comes_from_the_worker(strict, tiny_model):
    async def main():
        async with Witness(strict.url, tiny_model) as w:
            async with await Client.connect(strict.url, MSGPACK) as c:
                await c.generate("Hello", CONTEXT + 10, rc.GREEDY, gid="mt")
                (g,) = await c.wait_done("mt")
                assert g.error, g.terminal
                check_error(g.error, "max_tokens_exceeded")
                assert g.accepted is None and not g.tokens
                await still_works(c, tiny_model)
            await w.more(1)
    run(main())


def test_too_many_streams_on_one_connection(strict_slow, small_model):
    """max_streams_per_conn 2: a third generation while two run is refused;
    the two complete exactly."""
    p = rc.sampling(rc.GREEDY)
    n = CONTEXT - 8
    want = rc.expected(small_model, "Hi", n, p)
    strict = strict_slow

    async def main():
        async with Witness(strict.url, small_model) as w:
            async with await Client.connect(strict.url, JSON) as c:
                await c.generate("Hi", n, p, gid="a")
                await c.generate("Hi", n, p, gid="b")
                await c.generate("Hi", n, p, gid="c")
                a, b, third = await c.wait_done("a", "b", "c")
                check_error(third.error, "too_many_streams")
                assert third.accepted is None and not third.tokens
                rc.check_complete(a, want)
                rc.check_complete(b, want)
                await still_works(c, small_model)
            await w.more(1)
    run(main())


def test_duplicate_id_while_running(strict_slow, small_model):
    p = rc.sampling(rc.GREEDY)
    n = CONTEXT - 8
    want = rc.expected(small_model, "Hi", n, p)
    strict = strict_slow

    async def main():
        async with await Client.connect(strict.url, JSON) as c:
            await c.generate("Hi", n, p, gid="same")
            await c.generate("Hi", n, p, gid="same")
            # The second generate is refused with the id it named; the first
            # one's stream is untouched.
            err = None
            while True:
                m = await c.recv()
                if m["type"] == "error" and err is None:
                    err = m
                    check_error(m["error"], "duplicate_id")
                    assert m["id"] == "same"
                    continue
                c.dispatch(m)
                if m["type"] in ("complete", "error"):
                    break
            assert err is not None
            rc.check_complete(c.gen("same"), want)
            # Once it has ended, the id may be used again.
            g = await c.run("Hi", n, p, gid="same")
            rc.check_complete(g, want)
    run(main())


# --- origins ---------------------------------------------------------------------------------

def test_default_origin_policy_is_same_origin(strict, tiny_model):
    async def main():
        async with Witness(strict.url, tiny_model) as w:
            # A different origin: told why, then closed.
            c = await Client.connect(strict.url, JSON, origin="http://evil.example")
            check_error(await c.wait_error(), "forbidden_origin")
            await c.wait_closed()
            c = await Client.connect(strict.url, JSON, origin=f"http://localhost:{strict.port}")
            check_error(await c.wait_error(), "forbidden_origin")
            await c.wait_closed()
            # The same origin, and no origin at all (not a browser): served.
            for origin in (f"http://127.0.0.1:{strict.port}", None):
                async with await Client.connect(strict.url, JSON, origin=origin) as c:
                    await still_works(c, tiny_model)
            await w.more(1)
    run(main())


def test_allowed_origins_list(tiny_model):
    p = conftest.start_pipeline(tiny_model, gateway_args=["--allowed_origins", "http://a.example, https://b.example"])
    try:
        async def main():
            for origin in ("http://a.example", "https://b.example"):
                async with await Client.connect(p.url, JSON, origin=origin) as c:
                    await still_works(c, tiny_model)
            for origin in ("http://c.example", f"http://127.0.0.1:{p.port}", "http://a.example.evil"):
                c = await Client.connect(p.url, JSON, origin=origin)
                check_error(await c.wait_error(), "forbidden_origin")
                await c.wait_closed()
        run(main())
    finally:
        p.stop()


def test_any_origin(tiny_model):
    p = conftest.start_pipeline(tiny_model, gateway_args=["--allowed_origins", "*"])
    try:
        async def main():
            for origin in ("http://anything.example", "null"):
                async with await Client.connect(p.url, MSGPACK, origin=origin) as c:
                    await still_works(c, tiny_model)
        run(main())
    finally:
        p.stop()


# --- API keys and rate limits ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def keyed(module_pipelines, tiny_model):
    return module_pipelines(tiny_model, gateway_args=[
        "--api_keys", "key-one,key-two,key-three", "--rate_limit_rps", "0.2", "--rate_limit_burst", "3"])


def test_missing_key_is_unauthorized_on_generate(keyed):
    async def main():
        async with await Client.connect(keyed.url, JSON) as c:
            await c.send({"type": "hello", "client": {"name": "e2e"}})
            await c.until(lambda: any(m["type"] == "hello" for m in c.others))
            hello = [m for m in c.others if m["type"] == "hello"][0]
            assert hello["authenticated"] is False
            await c.generate("Hello", 3, rc.GREEDY, gid="nokey")
            (g,) = await c.wait_done("nokey")
            check_error(g.error, "unauthorized")
            assert not g.tokens
    run(main())


@pytest.mark.parametrize("how", ["bearer", "query", "hello"])
def test_wrong_key_is_unauthorized_and_closed(keyed, how):
    async def main():
        url, headers = keyed.url, {}
        if how == "bearer":
            headers = {"Authorization": "Bearer key-wrong"}
        elif how == "query":
            url += "?key=key-wrong"
        c = await Client.connect(url, JSON, headers=headers)
        if how == "hello":
            await c.send({"type": "hello", "key": "key-wrong"})
        check_error(await c.wait_error(), "unauthorized")
        await c.wait_closed()
        assert not c.gens
    run(main())


@pytest.mark.parametrize("how", ["bearer", "query", "hello"])
def test_right_key_is_accepted(keyed, tiny_model, how):
    key = {"bearer": "key-one", "query": "key-two", "hello": "key-two"}[how]

    async def main():
        url, headers = keyed.url, {}
        if how == "bearer":
            headers = {"Authorization": f"Bearer {key}"}
        elif how == "query":
            url += f"?lang=en&key={key}"
        else:
            url += "?lang=en"  # another query argument is not a key
        async with await Client.connect(url, MSGPACK, headers=headers) as c:
            await c.send({"type": "hello", "key": key} if how == "hello" else {"type": "hello"})
            await c.until(lambda: any(m["type"] == "hello" for m in c.others))
            hello = [m for m in c.others if m["type"] == "hello"][0]
            assert hello["authenticated"] is True and hello["protocol"] == MSGPACK
            await still_works(c, tiny_model)
    run(main())


def test_rate_limit_per_key(keyed, tiny_model):
    """burst 3 at 0.2/s: the fourth request in a row is refused, recoverably;
    another key is not affected."""
    p = rc.sampling(rc.GREEDY)
    want = rc.expected(tiny_model, "Rate", 4, p)

    async def main():
        async with await Client.connect(keyed.url + "?key=key-three", JSON) as c:
            for i in range(5):
                await c.generate("Rate", 4, p, gid=f"r{i}")
            gens = await c.wait_done(*[f"r{i}" for i in range(5)])
            for g in gens[:3]:
                rc.check_complete(g, want)
            for g in gens[3:]:
                check_error(g.error, "rate_limited")
                assert not g.tokens
        async with await Client.connect(keyed.url, JSON, headers={"Authorization": "Bearer key-one"}) as c:
            rc.check_complete(await c.run("Rate", 4, p), want)
    run(main())


# --- connections per IP --------------------------------------------------------------------------

def test_too_many_connections_from_one_ip(tiny_model):
    pl = conftest.start_pipeline(tiny_model, gateway_args=["--max_conns_per_ip", "3"])
    try:
        async def main():
            held = [await Client.connect(pl.url, JSON) for _ in range(3)]
            extra = await Client.connect(pl.url, JSON)
            check_error(await extra.wait_error(), "too_many_connections")
            await extra.wait_closed()
            # Those already in are served as before.
            for c in held:
                await still_works(c, tiny_model)
            # A closed connection frees its place.
            await held.pop().close()
            conftest.wait_for(lambda: rc.metric(pl.port, "rill_gateway_connections") == 2, what="connections 2")
            async with await Client.connect(pl.url, MSGPACK) as c:
                await still_works(c, tiny_model)
            for c in held:
                await c.close()
        run(main())
    finally:
        pl.stop()


# --- garbage -----------------------------------------------------------------------------------------

def mutations(seed, base, n):
    """n corrupted copies of base: bytes flipped, cut, repeated, spliced."""
    import random
    r = random.Random(seed)
    out = []
    for _ in range(n):
        b = bytearray(base)
        op = r.randrange(4)
        if op == 0:
            for _ in range(r.randint(1, 4)):
                b[r.randrange(len(b))] = r.randrange(256)
        elif op == 1:
            b = b[:r.randrange(len(b))]
        elif op == 2:
            i = r.randrange(len(b))
            b = b[:i] + b[i:i + r.randint(1, 8)] * r.randint(2, 5) + b[i:]
        else:
            b = bytes(r.randrange(256) for _ in range(r.randint(1, 64)))
        out.append(bytes(b))
    return out


@pytest.mark.parametrize("proto", [JSON, MSGPACK])
def test_garbage_never_crashes_anything(strict, tiny_model, proto):
    """300 corrupted messages on one connection: each gets an error or (when
    the corruption left a valid request) runs; the gateway and the worker
    stay up and the witness's streams stay exact."""
    from websockets.frames import Opcode
    base = {"type": "generate", "id": "g", "prompt": "Garbage in", "max_tokens": 3,
            "params": {"temperature": 0.5, "seed": 1, "stop": ["x"]}}
    raw = msgpack.packb(base) if proto == MSGPACK else json.dumps(base).encode()

    async def main():
        async with Witness(strict.url, tiny_model) as w:
            async with await Client.connect(strict.url, proto) as c:
                for k, m in enumerate(mutations(7 if proto == JSON else 8, raw, 300)):
                    # Text frames must be UTF-8 (or the connection fails:
                    # test_rfc6455.py), so the mutations are made UTF-8.
                    if proto == JSON:
                        m = m.decode("utf-8", "replace").encode()
                    await c.ws.write_frame(True, Opcode.BINARY if proto == MSGPACK else Opcode.TEXT, m)
                    if k % 50 == 49:
                        await w.more(1)
                await c.send({"type": "hello"})
                await c.until(lambda: any(m["type"] == "hello" for m in c.others))
                # Whatever ran, ran to its end.
                await c.until(lambda: all(g.done for g in c.gens.values()))
                await still_works(c, tiny_model)
            await w.more(1)
        assert strict.gateway.poll() is None and strict.worker_procs[0].poll() is None
    run(main())
