"""Gateway restart (issue 13, part 3): kill -9 of the gateway mid-stream.
The workers keep generating; each keeps what a new gateway process needs
(the submit, the output's ids, its records: worker/journal.h) and replays
it when the new gateway says `adopt`.  Resume tokens are a MAC under a key
in the run dir, so the new gateway accepts its predecessor's.  Clients
resume every open generation and get exactly the rest of it."""
import asyncio
import os

import conftest
import rillclient as rc
from rillclient import GREEDY, JSON, MSGPACK, SAMPLED, Client, run, sampling


def test_streams_resume_exactly_after_the_gateway_is_killed(pipelines, small_model):
    p = pipelines(small_model)
    jobs = [  # gid, prompt, max_tokens, params
        ("g", "Through a restart", 160, sampling(GREEDY)),
        ("s", "Sampled through a restart", 160, sampling(SAMPLED, seed=77)),
        ("short", "Done while it was down", 12, sampling(GREEDY)),
    ]
    want = {gid: rc.expected(small_model, prompt, n, params) for gid, prompt, n, params in jobs}

    async def main():
        a = await Client.connect(p.url, MSGPACK)
        for gid, prompt, n, params in jobs:
            await a.generate(prompt, n, params, gid=gid)
        await a.until(lambda: all(len(a.gen(g).tokens) >= 5 for g in ("g", "s")) and a.gen("short").accepted)
        tokens = {gid: a.gen(gid).accepted["resume_token"] for gid, *_ in jobs}
        have = {gid: len(a.gen(gid).tokens) for gid, *_ in jobs}
        got = {gid: list(a.gen(gid).tokens) for gid, *_ in jobs}
        p.restart_gateway()
        await a.abort()
        b = await Client.connect(p.url, JSON)
        for gid, *_ in jobs:
            await b.resume(tokens[gid], have[gid], gid=gid)
        done = await b.wait_done(*tokens)
        for g in done:
            assert g.resumed == {"type": "resumed", "id": g.id, "from": have[g.id]}, g.resumed
            g.check_order()
            assert g.terminal["type"] == "complete", g.terminal
            assert rc.triples(got[g.id][:have[g.id]]) + rc.triples(g.tokens) == list(want[g.id]), g.id
        # A token the old gateway never gave out is still refused.
        bad = tokens["g"][:-4] + ("0000" if tokens["g"][-4:] != "0000" else "1111")
        await b.resume(bad, 0, gid="bad")
        (g,) = await b.wait_done("bad")
        assert g.error["code"] == "resume_failed", g.terminal
        await b.close()
    run(main())
    assert "adopted" in p.log("gateway2"), p.log("gateway2")[-2000:]


def test_a_restarted_gateway_without_resume_cancels_what_was_left(pipelines, small_model):
    p = pipelines(small_model, gateway_args=("--resume_window_s", "0"))

    async def main():
        a = await Client.connect(p.url, JSON)
        await a.generate("Left behind", 400, sampling(GREEDY), gid="x")
        await a.until(lambda: a.gen("x").tokens)
        p.restart_gateway()
        await a.abort()
    run(main())
    conftest.wait_for(lambda: "cancelled 1 request(s) of its predecessor" in p.log("w0"), timeout=10,
                      what="the worker to cancel the old gateway's request")


def test_adopted_and_new_streams_fail_over_together_exactly(pipelines, small_model):
    """After a restart one gateway runs requests of two epochs (adopted and
    its own); a worker's death moves both kinds to the other worker, which
    must cancel neither."""
    import signal
    p = pipelines(small_model, workers=2)
    old = [(f"o{i}", f"Before the restart {i}", 200, sampling(GREEDY if i % 2 else SAMPLED, seed=i)) for i in range(4)]
    new = [(f"n{i}", f"After the restart {i}", 120, sampling(SAMPLED, seed=10 + i)) for i in range(2)]
    want = {gid: rc.expected(small_model, prompt, n, params) for gid, prompt, n, params in old + new}

    async def main():
        a = await Client.connect(p.url, JSON)
        for gid, prompt, n, params in old:
            await a.generate(prompt, n, params, gid=gid)
        await a.until(lambda: all(len(a.gen(g).tokens) >= 3 for g, *_ in old))
        tokens = {g: a.gen(g).accepted["resume_token"] for g, *_ in old}
        got = {g: list(a.gen(g).tokens) for g, *_ in old}
        p.restart_gateway()
        await a.abort()
        b = await Client.connect(p.url, MSGPACK)
        for g, *_ in old:
            await b.resume(tokens[g], len(got[g]), gid=g)
        for gid, prompt, n, params in new:
            await b.generate(prompt, n, params, gid=gid)
        await b.until(lambda: all(len(b.gen(g).tokens) >= 2 for g, *_ in old + new))
        p.worker_procs[0].send_signal(signal.SIGKILL)
        done = await b.wait_done(*[g for g, *_ in old + new])
        for g in done:
            g.check_order()
            assert g.terminal["type"] == "complete" and g.terminal["finish_reason"] != "cancelled", (g.id, g.terminal)
            before = rc.triples(got[g.id][:b.gen(g.id).resumed["from"]]) if g.id in got else []
            assert before + rc.triples(g.tokens) == list(want[g.id]), g.id
        await b.close()
    run(main())
    assert rc.metric(p.port, "rill_gateway_failovers_total") >= 1

