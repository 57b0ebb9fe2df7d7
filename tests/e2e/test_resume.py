"""Resume after reconnect (issue 13, part 2): a dropped connection does not
end its generations; any connection takes one up again with its
resume_token and the position to go on from, and gets exactly the rest:
the logged tokens, then the live ones, then the end."""
import asyncio
import time

import pytest

import conftest
import rillclient as rc
from rillclient import GREEDY, JSON, MSGPACK, SAMPLED, Client, run, sampling


@pytest.fixture(scope="module")
def gw(module_pipelines, small_model):
    return module_pipelines(small_model)


@pytest.mark.parametrize("proto", [JSON, MSGPACK])
def test_a_dropped_connection_resumes_exactly_where_it_was(gw, small_model, proto):
    n = 120
    params = sampling(SAMPLED, seed=33)
    want = rc.expected(small_model, "Resume me", n, params)

    async def main():
        a = await Client.connect(gw.url, proto)
        await a.generate("Resume me", n, params, gid="r1")
        await a.until(lambda: len(a.gen("r1").tokens) >= 10)
        token = a.gen("r1").accepted["resume_token"]
        have = len(a.gen("r1").tokens)
        await a.abort()  # no close handshake: the network went away
        b = await Client.connect(gw.url, JSON if proto == MSGPACK else MSGPACK)
        await b.resume(token, have, gid="again")
        (g,) = await b.wait_done("again")
        assert g.resumed == {"type": "resumed", "id": "again", "from": have}, g.resumed
        g.check_order()
        assert g.terminal["type"] == "complete", g.terminal
        # Before the drop and after the resume: the whole stream, once.
        assert rc.triples(a.gen("r1").tokens[:have]) + rc.triples(g.tokens) == list(want)
        await b.close()
    run(main())


def test_a_generation_that_finished_meanwhile_is_replayed_with_its_end(gw, small_model):
    n = 30
    want = rc.expected(small_model, "Finished alone", n, sampling(GREEDY))

    async def main():
        a = await Client.connect(gw.url, JSON)
        await a.generate("Finished alone", n, sampling(GREEDY), gid="f")
        await a.until(lambda: a.gen("f").accepted is not None)
        token = a.gen("f").accepted["resume_token"]
        await a.abort()
        # It runs on without a client, and ends.
        conftest.wait_for(lambda: rc.metric(gw.port, "rill_gateway_active_streams") == 0, what="it ends")
        b = await Client.connect(gw.url, JSON)
        await b.resume(token, 0, gid="f")
        (g,) = await b.wait_done("f")
        rc.check_complete(g, want)
        # Once more, from the middle: the end comes again.
        await b.resume(token, 20, gid="f2")
        (g2,) = await b.wait_done("f2")
        g2.check_order()
        assert rc.triples(g2.tokens) == list(want[20:]) and g2.terminal["type"] == "complete", g2.terminal
        await b.close()
    run(main())


def test_a_new_connection_takes_over_from_a_half_open_one(gw, small_model):
    n = 150
    want = rc.expected(small_model, "Half open", n, sampling(GREEDY))

    async def main():
        a = await Client.connect(gw.url, JSON)
        await a.generate("Half open", n, sampling(GREEDY), gid="h")
        await a.until(lambda: len(a.gen("h").tokens) >= 5)
        token = a.gen("h").accepted["resume_token"]
        have = len(a.gen("h").tokens)
        # a stays open (the client thinks it is dead); b takes the stream.
        b = await Client.connect(gw.url, JSON)
        await b.resume(token, have, gid="h")
        (g,) = await b.wait_done("h")
        assert rc.triples(a.gen("h").tokens[:have]) + rc.triples(g.tokens) == list(want)
        # a got at most what was in flight before the take-over, and no end.
        await asyncio.sleep(0.2)
        while True:
            try:
                await a.next_message(0.2)
            except asyncio.TimeoutError:
                break
        assert a.gen("h").terminal is None
        assert rc.triples(a.gen("h").tokens) == list(want[:len(a.gen("h").tokens)])
        await a.close()
        await b.close()
    run(main())


def test_resume_errors_say_what_is_wrong(gw, small_model):
    async def main():
        a = await Client.connect(gw.url, JSON)
        await a.generate("Errors", 400, sampling(GREEDY), gid="e")
        await a.until(lambda: len(a.gen("e").tokens) >= 3)
        token = a.gen("e").accepted["resume_token"]
        b = await Client.connect(gw.url, MSGPACK)
        bad = token[:-4] + ("0000" if token[-4:] != "0000" else "1111")
        await b.resume(bad, 0, gid="x1")
        (g,) = await b.wait_done("x1")
        assert g.error["code"] == "resume_failed" and g.error["recoverable"] is False, g.terminal
        await b.resume("not-a-token", 0, gid="x2")
        (g,) = await b.wait_done("x2")
        assert g.error["code"] == "resume_failed", g.terminal
        await b.resume(token, 10 ** 6, gid="x3")
        (g,) = await b.wait_done("x3")
        assert g.error["code"] == "bad_request" and "beyond" in g.error["message"], g.terminal
        await b.send({"type": "resume", "id": "x4", "from": 1})
        (g,) = await b.wait_done("x4")
        assert g.error["code"] == "bad_request" and "resume_token" in g.error["message"], g.terminal
        await b.send({"type": "resume", "id": "x5", "resume_token": token, "from": -1})
        (g,) = await b.wait_done("x5")
        assert g.error["code"] == "bad_request" and "from" in g.error["message"], g.terminal
        # The stream was not disturbed by any of it.
        await a.cancel("e")
        (e,) = await a.wait_done("e")
        assert e.terminal["type"] == "complete" and e.terminal["finish_reason"] == "cancelled"
        e.check_order()
        await a.close()
        await b.close()
    run(main())


def test_the_window_ends_and_the_log_is_bounded(pipelines, small_model):
    p = pipelines(small_model, gateway_args=("--resume_window_s", "1", "--resume_log_bytes", "600"))

    async def main():
        a = await Client.connect(p.url, JSON)
        await a.generate("Small log", 200, sampling(GREEDY), gid="s")
        await a.until(lambda: len(a.gen("s").tokens) >= 40)
        token = a.gen("s").accepted["resume_token"]
        # 600 bytes keep the last few dozen records, not the first ones.
        b = await Client.connect(p.url, JSON)
        await b.resume(token, 0, gid="s0")
        (g,) = await b.wait_done("s0")
        assert g.error["code"] == "resume_failed" and "no longer kept" in g.error["message"], g.terminal
        await a.abort()
        await b.close()
        # Nobody resumes within the window: it is cancelled at its worker.
        t0 = time.monotonic()
        conftest.wait_for(lambda: rc.metric(p.port, "rill_gateway_active_streams") == 0, timeout=10,
                          what="the abandoned generation to end")
        assert time.monotonic() - t0 < 5
        c = await Client.connect(p.url, JSON)
        await c.resume(token, 0, gid="late")
        (g,) = await c.wait_done("late")
        assert g.error["code"] == "resume_failed", g.terminal
        await c.close()
    run(main())


def test_window_zero_cancels_with_the_connection(pipelines, small_model):
    p = pipelines(small_model, gateway_args=("--resume_window_s", "0"))

    async def main():
        a = await Client.connect(p.url, JSON)
        await a.generate("No resume", 2000, sampling(GREEDY), gid="z")
        await a.until(lambda: a.gen("z").tokens)
        assert "resume_token" not in a.gen("z").accepted
        await a.abort()
        conftest.wait_for(lambda: rc.metric(p.port, "rill_gateway_active_streams") == 0, timeout=5,
                          what="the generation to be cancelled with its connection")
    run(main())


def test_a_normal_close_ends_the_generations(gw, small_model):
    """Close status 1000 is the client saying it is done (a drop, 1001 or
    no close frame, keeps them for a resume): they end at once and their
    resume token no longer answers."""
    async def main():
        a = await Client.connect(gw.url, MSGPACK)
        await a.generate("Done with it", 2000, sampling(GREEDY), gid="d")
        await a.until(lambda: a.gen("d").tokens)
        token = a.gen("d").accepted["resume_token"]
        await a.close()  # websockets sends 1000
        conftest.wait_for(lambda: rc.metric(gw.port, "rill_gateway_active_streams") == 0, timeout=5,
                          what="the generation to end with its normal close")
        b = await Client.connect(gw.url, JSON)
        await b.resume(token, 0, gid="d")
        (g,) = await b.wait_done("d")
        assert g.error["code"] == "resume_failed", g.terminal
        await b.close()
    run(main())
