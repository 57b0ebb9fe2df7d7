"""The Python client for users (clients/python/rill_client.py) reconnects and
resumes by itself (issue 13, part 4): its connection goes through a TCP
proxy that the test cuts mid-stream, and the text it yields is exactly an
undisturbed run's, in both protocols, however often the network goes."""
import asyncio
import os
import sys

import pytest

import rillclient as rc
import conftest
from rillclient import GREEDY, SAMPLED, run, sampling
from tcpproxy import TcpProxy

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "clients", "python"))
from rill_client import RillClient, RillError  # noqa: E402

N = 400  # about 2.5 s on the 24M model: room for two drops and their reconnects


@pytest.fixture(scope="module")
def gw(module_pipelines, small_model):
    # The proxy's port is in the Host the client sends.
    return module_pipelines(small_model, gateway_args=("--allowed_hosts", "*"))


@pytest.fixture
def proxy(gw):
    with TcpProxy(("127.0.0.1", gw.port)) as px:
        yield px


async def drop_after(g, px, counts, hold):
    """Cut the network when g has `count` more tokens than at the last cut,
    and (after the first) has been taken up again since."""
    base = 0
    for k, n in enumerate(counts):
        while (g.resumes < k or len(g.tokens) < base + n) and not g.ended:
            await asyncio.sleep(0.002)
        if g.ended:
            return
        px.cut(hold=hold)
        base = len(g.tokens)


@pytest.mark.parametrize("protocol", ["json", "msgpack"])
def test_python_client_resumes_after_the_network_drops_with_the_exact_text(gw, small_model, proxy, protocol):
    params = sampling(SAMPLED, seed=7) if protocol == "msgpack" else sampling(GREEDY)
    want = rc.expected(small_model, "The river ran", N, params)
    states = []

    async def main():
        async with RillClient(f"ws://127.0.0.1:{proxy.port}/stream", protocol=protocol, min_delay=0.05,
                              max_delay=0.4, on_status=lambda s, r: states.append((s, r))) as c:
            g = await c.generate("The river ran", max_tokens=N, params=params)
            cutter = asyncio.create_task(drop_after(g, proxy, (10, 20), hold=0.3))
            got = [t async for t in g]
            await cutter
            return c, g, got

    c, g, got = run(main())
    assert g.error is None and g.finish_reason == want.finish
    assert rc.triples(got) == list(want), "lost or repeated tokens across the drops"
    assert g.text == "".join(t for _, _, t in want)
    # It really went through two drops and came back each time.
    assert proxy.cuts == 2 and proxy.refused >= 1
    assert c.reconnects == 2 and g.resumes == 2
    assert ("waiting", 1) in states
    assert states[-1] == ("closed", 0)


def test_python_client_without_reconnect_reports_the_drop(gw, small_model, proxy):
    """The same drop with reconnect=False: the generation ends with the
    client's "disconnected" and the text stops where the drop was (so the
    test above cannot pass without the reconnect and resume)."""
    async def main():
        c = RillClient(f"ws://127.0.0.1:{proxy.port}/stream", reconnect=False)
        await c.connect()
        g = await c.generate("The river ran", max_tokens=N, params=sampling(GREEDY))
        await drop_after(g, proxy, (10,), hold=0)
        with pytest.raises(RillError) as e:
            await g.result()
        await c.close()
        return g, e.value

    g, err = run(main())
    assert err.code == "disconnected" and err.recoverable is True
    assert 10 <= len(g.tokens) < N


def test_python_client_resends_a_generation_that_was_never_accepted(gw, small_model, proxy):
    """Cut before the accepted frame: there is no token to resume with, so the
    generate goes again on the next connection, and the text is whole."""
    want = rc.expected(small_model, "Early cut", 40, sampling(GREEDY))

    async def main():
        async with RillClient(f"ws://127.0.0.1:{proxy.port}/stream", min_delay=0.05, max_delay=0.2) as c:
            proxy.cut(hold=0.3)  # the connection is gone before the generate leaves
            g = await c.generate("Early cut", max_tokens=40, params=sampling(GREEDY))
            return c, g, await g.result()

    c, g, text = run(main())
    assert rc.triples(g.tokens) == list(want)
    assert text == "".join(t for _, _, t in want)
    assert c.reconnects >= 1 and g.resumes == 0


def test_python_client_says_resume_failed_when_the_token_is_unknown(gw, small_model, proxy):
    """A gateway that no longer knows the generation (restarted, or past
    resume_window_s) refuses the resume: the generation ends with
    resume_failed, not recoverable, keeping the tokens it had."""
    async def main():
        async with RillClient(f"ws://127.0.0.1:{proxy.port}/stream", min_delay=0.05, max_delay=0.2) as c:
            g = await c.generate("Forgotten", max_tokens=200, params=sampling(GREEDY))
            while len(g.tokens) < 5:
                await asyncio.sleep(0.005)
            g.resume_token = "0" * len(g.resume_token)  # what a restarted gateway would make of it
            have = len(g.tokens)
            proxy.cut(hold=0.1)
            with pytest.raises(RillError) as e:
                await g.result()
            return g, have, e.value

    g, have, err = run(main())
    assert err.code == "resume_failed" and err.recoverable is False, err
    assert len(g.tokens) >= have


def test_python_client_raises_when_the_first_connection_fails():
    """Nothing to come back to: connect() says why instead of retrying for ever."""
    async def main():
        with pytest.raises(OSError):
            await RillClient(f"ws://127.0.0.1:{conftest.free_port()}/stream").connect()
    run(main())
