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
