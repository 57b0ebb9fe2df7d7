"""Many clients at once: 200 connections streaming together from one worker
(batch up to 256).  Every stream completes, positions 0..n-1 in order, no
token lost or duplicated, each equal to the worker's standalone output for
its prompt and seed (the worker's kernels are batch-invariant, so a token
does not depend on what else shared its step)."""
import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

import rillclient as rc
from rillclient import GREEDY, JSON, MSGPACK, SAMPLED, Client, run, sampling

N_CLIENTS = 200
N_TOKENS = 48


def job(i):
    """Client i's request: 100 distinct prompt/sampling pairs, each used twice."""
    k = i % 100
    params = sampling(GREEDY) if k % 4 == 0 else sampling(SAMPLED, seed=1000 + k)
    return f"Client {k} asks about topic {k * 7 % 13}", N_TOKENS - (k % 5), params


SEND_PATHS = {
    # name: (gateway flags, the start-up log line that names the path)
    "io_uring": (["--send_threads", "1", "--send_uring", "true"], "in one io_uring submission"),
    "send": (["--send_threads", "1", "--send_uring", "false"], "with one send() per connection"),
    "threads": (["--send_threads", "2"], "from the send threads"),
}


@pytest.mark.parametrize("path", sorted(SEND_PATHS))
def test_200_concurrent_clients_get_exact_streams(pipelines, tiny_model, path):
    """Each way a ring batch's frames leave (writer.h): one io_uring
    submission, one send() per connection, or two send threads.  The
    streams must be the same."""
    flags, line = SEND_PATHS[path]
    p = pipelines(tiny_model, gateway_args=["--max_connections", "1000"] + flags,
                         worker_args=["--max_batch", "256"])
    log = p.log("gateway")
    if path == "io_uring" and ("io_uring unavailable" in log or "io_uring waits" in log):
        pytest.skip("this kernel refuses io_uring (or parks a non-blocking send): the gateway uses send()")
    assert line in log, log[-2000:]
    jobs = [job(i) for i in range(N_CLIENTS)]
    with ThreadPoolExecutor(2) as ex:
        want = list(ex.map(lambda j: rc.expected(tiny_model, *j), jobs[:100]))
    want = want + want

    async def main():
        before = rc.metric(p.port, "rill_gateway_tokens_total")
        # Every connection open before anyone asks: they all stream together.
        clients = await asyncio.gather(*[Client.connect(p.url, JSON if i % 2 else MSGPACK)
                                         for i in range(N_CLIENTS)])
        assert rc.metric(p.port, "rill_gateway_connections") == N_CLIENTS
        for i, c in enumerate(clients):
            await c.generate(*jobs[i][:2], jobs[i][2], gid=f"c{i}")
        gens = await asyncio.gather(*[c.wait_done(f"c{i}", timeout=120) for i, c in enumerate(clients)])
        await asyncio.gather(*[c.close() for c in clients])
        gens = [g for (g,) in gens]
        for i, g in enumerate(gens):
            rc.check_complete(g, want[i])
        batches = [g.terminal["summary"]["most_common_batch_size"] for g in gens]
        after = rc.metric(p.port, "rill_gateway_tokens_total")
        assert after - before == sum(len(w) for w in want)
        return batches

    batches = run(main())
    # They did share steps (not one after another).
    assert max(batches) > 1, batches
