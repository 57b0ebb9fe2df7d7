"""Hardening (issue 11), the supervisor's side: a stop that drains (item 2),
start-up errors that exit with their cause (item 3), no secrets on command
lines or in environments (item 4)."""
import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import time

import pytest
import websockets

from conftest import Supervised, generate, http_get, make_model, wait_for

LONG = 400  # tokens: long enough to be running when the signal comes


async def long_streams(url, n, started, max_tokens=LONG):
    """n generations on one connection each; `started` is set once every one
    has its first token.  Returns [(tokens, terminal message)]."""
    async def one(k):
        async with websockets.connect(url, compression=None) as ws:
            await ws.send(json.dumps({"type": "generate", "id": f"d{k}", "prompt": f"Stream {k} says",
                                      "max_tokens": max_tokens, "params": {"temperature": 0}}))
            tokens = []
            first.add(k)
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if m["type"] == "token":
                    tokens.append(m["token"])
                elif m["type"] == "tokens":
                    tokens.extend(m["tokens"])
                elif m["type"] in ("complete", "error"):
                    return tokens, m
                if tokens and k not in have_token:
                    have_token.add(k)
                    if len(have_token) == n:
                        started.set()
    first, have_token = set(), set()
    return await asyncio.gather(*(one(k) for k in range(n)))


async def refused_while_draining(url):
    async with websockets.connect(url, compression=None) as ws:
        await ws.send(json.dumps({"type": "generate", "id": "late", "prompt": "x", "max_tokens": 4}))
        return json.loads(await asyncio.wait_for(ws.recv(), 10))


def drain_run(s, stop):
    """Start streams, call stop() once all run, check a late request is
    refused with shutting_down while they finish."""
    async def main():
        started = asyncio.Event()
        task = asyncio.create_task(long_streams(s.url, 3, started))
        await asyncio.wait_for(started.wait(), 60)
        stop()
        await asyncio.sleep(0.3)
        late = None
        try:
            late = await refused_while_draining(s.url)
        except (OSError, websockets.InvalidHandshake, websockets.ConnectionClosed):
            late = "closed"
        return await task, late
    return asyncio.run(main())


def check_drained(results, late):
    for tokens, end in results:
        assert end["type"] == "complete", end
        assert end["finish_reason"] == "length"
        assert [t["position"] for t in tokens] == list(range(LONG))
    assert late == "closed" or (late["type"] == "error" and late["error"]["code"] == "shutting_down"), late


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_drains_running_generations_then_exits_0(supervised, small_model, sig):
    s = supervised(small_model, workers=1)
    s.wait_ready()
    t0 = time.time()
    results, late = drain_run(s, lambda: s.proc.send_signal(sig))
    check_drained(results, late)
    s.proc.wait(timeout=30)
    assert s.proc.returncode == 0
    assert time.time() - t0 < 30  # drain_timeout_s
    wait_for(lambda: s.leftovers() == ([], False, []), timeout=10, what="nothing left behind")
    assert "worker_lost" not in s.text()


def test_a_drain_on_two_workers_finishes_both(supervised, small_model):
    s = supervised(small_model, workers=2)
    s.wait_ready()
    results, late = drain_run(s, lambda: s.proc.send_signal(signal.SIGTERM))
    check_drained(results, late)
    s.proc.wait(timeout=30)
    assert s.proc.returncode == 0
    wait_for(lambda: s.leftovers() == ([], False, []), timeout=10, what="nothing left behind")


def test_a_killed_supervisor_leaves_its_children_draining_not_dying(supervised, small_model):
    s = supervised(small_model, workers=1)
    s.wait_ready()
    results, late = drain_run(s, lambda: s.proc.kill())
    try:
        check_drained(results, late)
    except AssertionError:
        print(s.text()[-6000:])
        raise
    wait_for(lambda: not s.pids("rill-worker") and not s.pids("rill-gateway"), timeout=30, what="children gone")
    wait_for(lambda: s.leftovers() == ([], False, []), timeout=10, what="nothing left behind")
