"""Worker failover (issue 13, part 1): a generation whose worker is killed
goes on, on another worker or on the restarted one, from the position the
client had reached — no error, no gap, no duplicate, and exactly the tokens
of an undisturbed run, greedy and seeded sampling alike (the kernels are
batch-invariant and the sampler draws from (seed, position))."""
import asyncio
import os
import random
import signal

import conftest
import rillclient as rc
from rillclient import GREEDY, JSON, MSGPACK, SAMPLED, Client, run, sampling


def _jobs(tag, n):
    """Half greedy, half seeded; the seedless sampled one has a seed the
    gateway drew, so it can only be compared with itself (its length)."""
    return [(f"{tag} greedy {k}", n, sampling(GREEDY)) for k in range(3)] + \
           [(f"{tag} seeded {k}", n, sampling(SAMPLED, seed=700 + k)) for k in range(3)]


def _kill_at_random_points(p, small_model, workers, kills, seed):
    rnd = random.Random(seed)
    n = 200
    jobs = _jobs(f"w{workers}", n)
    want = [rc.expected(small_model, *j) for j in jobs]

    async def main():
        cs = [await Client.connect(p.url, JSON), await Client.connect(p.url, MSGPACK)]
        for k, j in enumerate(jobs):
            await cs[k % 2].generate(*j, gid=f"j{k}")
        await cs[0].generate("Unseeded sampled", n, sampling(SAMPLED), gid="free")
        gens = lambda: [cs[k % 2].gen(f"j{k}") for k in range(len(jobs))]
        for i, c in enumerate(cs):
            await c.until(lambda: all(c.gen(f"j{k}").tokens for k in range(i, len(jobs), 2)))
        for _ in range(kills):
            # Kill while streams are mid-way, at a random moment.
            await asyncio.sleep(rnd.uniform(0.05, 0.6))
            if all(g.done for g in gens()):
                break
            k = rnd.randrange(workers)
            os.kill(p.worker_procs[k].pid, signal.SIGKILL)
            p.worker_procs[k].wait()
            await asyncio.sleep(rnd.uniform(0.0, 0.3))
            p.restart_worker(k)
            conftest.wait_for(lambda: p._ready(workers), what="worker back")
        for k in range(len(jobs)):
            await cs[k % 2].wait_done(f"j{k}")
        (free,) = await cs[0].wait_done("free")
        for g, w in zip(gens(), want):
            rc.check_complete(g, w)
        free.check_order()
        assert free.terminal["type"] == "complete", free.terminal
        for c in cs:
            await c.close()
        return rc.metric(p.port, "rill_gateway_failovers_total")

    failovers = run(main())
    assert failovers >= 1, "no stream was running on a killed worker: the test proved nothing"


def test_failover_is_exact_on_one_worker(pipelines, small_model):
    p = pipelines(small_model, workers=1)
    _kill_at_random_points(p, small_model, workers=1, kills=3, seed=1)


def test_failover_is_exact_on_two_workers(pipelines, small_model):
    p = pipelines(small_model, workers=2)
    try:
        _kill_at_random_points(p, small_model, workers=2, kills=4, seed=2)
    finally:
        for k in range(2):
            try:
                os.unlink("/dev/shm" + conftest.ring_name(p.instance, k))
            except FileNotFoundError:
                pass


def test_worker_lost_only_after_failover_timeout(pipelines, small_model):
    """No worker comes back within failover_timeout_s: then, and only then,
    worker_lost, saying why."""
    p = pipelines(small_model, gateway_args=("--failover_timeout_s", "1"))

    async def main():
        c = await Client.connect(p.url, JSON)
        await c.generate("Left alone", 400, sampling(GREEDY), gid="x")
        await c.until(lambda: c.gen("x").tokens)
        os.kill(p.worker_procs[0].pid, signal.SIGKILL)
        p.worker_procs[0].wait()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        (g,) = await c.wait_done("x")
        waited = loop.time() - t0
        assert g.error and g.error["code"] == "worker_lost", g.terminal
        assert "failover_timeout_s (1 s)" in g.error["message"], g.error
        assert 0.9 < waited < 5, waited
        # What came before is the true beginning of the stream.
        want = rc.expected(small_model, "Left alone", 400, sampling(GREEDY))
        got = rc.triples(g.tokens)
        assert got == list(want[:len(got)])
        await c.close()
    try:
        run(main())
    finally:
        try:
            os.unlink("/dev/shm" + conftest.ring_name(p.instance, 0))
        except FileNotFoundError:
            pass
