"""A worker killed mid-stream: its generations wait for it to come back and
go on exactly where they were (failover: tests/e2e/test_failover.py has the
rest); /ready goes 503 while no worker is up, new requests get no_worker
meanwhile, and once the worker is restarted the gateway picks up its new
ring epoch."""
import os
import re
import signal

import conftest
import rillclient as rc
from rillclient import GREEDY, JSON, MSGPACK, SAMPLED, Client, run, sampling


def test_worker_killed_mid_stream_then_restarted(pipelines, small_model):
    p = pipelines(small_model)
    params = sampling(SAMPLED, seed=21)
    greedy = sampling(GREEDY)
    n = 160

    async def main():
        a = await Client.connect(p.url, JSON)
        b = await Client.connect(p.url, MSGPACK)
        await a.generate("Doomed one", n, params, gid="a1")
        await a.generate("Doomed two", n, params, gid="a2")
        await b.generate("Doomed three", n, greedy, gid=3)
        await a.until(lambda: a.gen("a1").tokens and a.gen("a2").tokens)
        await b.until(lambda: b.gen(3).tokens)
        os.kill(p.worker_procs[0].pid, signal.SIGKILL)
        p.worker_procs[0].wait()

        conftest.wait_for(lambda: conftest.http_get(p.port, "/ready")[0] == 503, what="/ready 503")
        assert rc.metric(p.port, "rill_gateway_workers_ready") == 0
        # The three wait for a worker; a new request is refused (recoverably),
        # not queued forever.
        assert rc.metric(p.port, "rill_gateway_active_streams") == 3
        await a.generate("Nobody home", 5, greedy, gid="none")
        (g,) = await a.wait_done("none")
        assert g.error and g.error["code"] == "no_worker" and g.error["recoverable"] is True, g.terminal

        p.restart_worker(0)
        a1, a2 = await a.wait_done("a1", "a2")
        (b3,) = await b.wait_done(3)
        for g, prompt, prm in ((a1, "Doomed one", params), (a2, "Doomed two", params), (b3, "Doomed three", greedy)):
            rc.check_complete(g, rc.expected(small_model, prompt, n, prm))
        assert isinstance(b3.terminal["id"], int)
        assert rc.metric(p.port, "rill_gateway_failovers_total") == 3
        # The same connections go on with the new worker.
        for c, gid in ((a, "again"), (b, 4)):
            g = await c.run("Back again", 20, params, gid=gid)
            rc.check_complete(g, rc.expected(small_model, "Back again", 20, params))
        await a.close()
        await b.close()

    run(main())
    epochs = re.findall(r"worker w0 is up: .*\(epoch ([0-9a-f]+)\)", p.log("gateway"))
    assert len(epochs) == 2 and epochs[0] != epochs[1], epochs


def test_two_workers_share_the_load_exactly(pipelines, tiny_model):
    p = pipelines(tiny_model, workers=2)
    jobs = [(f"Shared {k}", 30 + k, sampling(SAMPLED, seed=300 + k)) for k in range(24)]
    want = [rc.expected(tiny_model, *j) for j in jobs]

    async def main():
        clients = [await Client.connect(p.url, JSON if k % 2 else MSGPACK) for k in range(3)]
        for k, j in enumerate(jobs):
            await clients[k % 3].generate(*j, gid=f"j{k}")
        for k, c in enumerate(clients):
            await c.wait_done(*[f"j{i}" for i in range(k, len(jobs), 3)])
        gens = [clients[k % 3].gen(f"j{k}") for k in range(len(jobs))]
        for g, w in zip(gens, want):
            rc.check_complete(g, w)
        assert {g.accepted["worker"] for g in gens} == {"w0", "w1"}
        for c in clients:
            await c.close()
    run(main())


def test_killing_one_of_two_workers_moves_its_streams_to_the_other(pipelines, small_model):
    p = pipelines(small_model, workers=2)
    params = sampling(GREEDY)
    n = 120

    async def main():
        c = await Client.connect(p.url, JSON)
        ids = [f"s{k}" for k in range(4)]
        for gid in ids:
            await c.generate(f"Split {gid}", n, params, gid=gid)
        await c.until(lambda: all(c.gen(i).tokens for i in ids))
        on = {i: c.gen(i).accepted["worker"] for i in ids}
        assert sorted(on.values()) == ["w0", "w0", "w1", "w1"], on  # least loaded first
        os.kill(p.worker_procs[1].pid, signal.SIGKILL)
        p.worker_procs[1].wait()
        await c.wait_done(*ids)
        # Every stream ends as if nothing happened: the moved ones went on
        # on w0 from where they were, with no error, gap or duplicate.
        for i in ids:
            rc.check_complete(c.gen(i), rc.expected(small_model, f"Split {i}", n, params))
        conftest.wait_for(lambda: conftest.http_get(p.port, "/ready")[1].startswith("ready: 1 worker"),
                          what="/ready to count one worker")
        # New work goes to the worker that is left.
        g = await c.run("Survivor", 10, params, gid="after")
        rc.check_complete(g, rc.expected(small_model, "Survivor", 10, params))
        assert g.accepted["worker"] == "w0"
        await c.close()
    try:
        run(main())
    finally:
        # A worker killed for good leaves its ring behind (a restarted one
        # would have taken it over).
        try:
            os.unlink("/dev/shm" + conftest.ring_name(p.instance, 1))
        except FileNotFoundError:
            pass


def test_gateway_drain_on_sigterm(pipelines, small_model):
    """A first SIGTERM: running generations finish exactly, new ones are
    refused with shutting_down (recoverable), /ready says 503; then the
    gateway exits by itself."""
    p = pipelines(small_model)
    params = sampling(SAMPLED, seed=8)
    n = 150
    want = rc.expected(small_model, "Finish me", n, params)

    async def main():
        c = await Client.connect(p.url, MSGPACK)
        other = await Client.connect(p.url, JSON)
        await c.generate("Finish me", n, params, gid="run")
        await c.until(lambda: c.gen("run").tokens)
        p.gateway.send_signal(signal.SIGTERM)
        conftest.wait_for(lambda: conftest.http_get(p.port, "/ready")[0] == 503, what="/ready 503")
        await other.generate("Too late", 5, params, gid="late")
        (late,) = await other.wait_done("late")
        assert late.error and late.error["code"] == "shutting_down" and late.error["recoverable"] is True
        (g,) = await c.wait_done("run")
        rc.check_complete(g, want)
        assert p.gateway.wait(20) == 0
    run(main())


def test_kv_cache_pressure_loses_nothing(pipelines, tiny_model):
    """A worker with KV cache for 320 tokens: a request that could never fit
    is refused (memory_limit_exceeded, recoverable); six that fit one by
    one but not together all complete exactly (the worker preempts and
    recomputes; nothing accepted is dropped)."""
    p = pipelines(tiny_model, worker_args=["--kv_cache_bytes", "160K"])
    params = sampling(SAMPLED, seed=31)
    ids = [f"k{i}" for i in range(6)]
    want = {i: rc.expected(tiny_model, f"Share {i}", 100, params) for i in ids}

    async def main():
        async with await Client.connect(p.url, MSGPACK) as c:
            g = await c.run("Too much", 1000, params, gid="big")
            assert g.error and g.error["code"] == "memory_limit_exceeded" and g.error["recoverable"] is True
            for i in ids:
                await c.generate(f"Share {i}", 100, params, gid=i)
            for g in await c.wait_done(*ids):
                rc.check_complete(g, want[g.id])
    run(main())
    assert "preempted" in p.log("w0")


def test_fake_tokens_in_phases(pipelines, tiny_model):
    """The fan-out benchmark's worker (--fake_tokens, --fake_phases 4): every
    stream still gets all its tokens in order, and each step advances only
    the sequences of one phase (8 streams in 4 phases: 2 per step)."""
    p = pipelines(tiny_model, worker_args=("--fake_tokens", "true", "--fake_phases", "4",
                                            "--target_latency_ms", "20"))
    n = 30

    async def main():
        async with await Client.connect(p.url, MSGPACK) as c:
            # Submitted one by one and started before the next, so that the
            # gateway's request ids (the phase is id % 4) are consecutive.
            for i in range(8):
                await c.generate("phase", n, sampling(GREEDY), gid=i)
                await c.until(lambda i=i: c.gen(i).tokens)
            gens = await c.wait_done(*range(8))
        for g in gens:
            g.check_order()
            assert g.terminal["type"] == "complete", g.terminal
            assert len(g.tokens) == n
            assert g.terminal["summary"]["most_common_batch_size"] == 2, g.terminal["summary"]
    run(main())
