"""The prefix cache end to end: the whole pipeline under its supervisor, once
with prefix_cache=true and once with false, the same requests (a shared
system prompt of a few hundred tokens, then each its own user message;
greedy and seeded; one after the other, then several at once) must stream
exactly the same tokens and text; with the cache the worker's counters in
/metrics show the hits, without it they stay at zero.
"""
import asyncio
import os
import re
import time

from conftest import generate, http_get

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

with open(os.path.join(ROOT, "tools", "data", "corpus.txt"), encoding="utf-8") as _f:
    _WORDS = _f.read().split()
SYSTEM = "System: " + " ".join(_WORDS[:260]) + "\nUser: "
USERS = [" ".join(_WORDS[4000 + 23 * i:4000 + 23 * i + 12]) + "?" for i in range(8)]


def prefix_metrics(port):
    _, body, _ = http_get(port, "/metrics")
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^rill_worker_prefix_cache_(\w+)\{process="w0"\} (\S+)$', body, re.M)}


def params(i):
    return {"temperature": 0} if i % 2 == 0 else {"temperature": 0.9, "top_k": 40, "seed": 1000 + i}


async def requests(url):
    """Four one after the other, then four at once: (ids, text, finish) each."""
    out = []
    for i in range(4):
        toks, end = await generate(url, SYSTEM + USERS[i], n=12, **params(i))
        out.append(([t["id"] for t in toks], "".join(t["text"] for t in toks), end.get("finish_reason")))
    rest = await asyncio.gather(*(generate(url, SYSTEM + USERS[i], n=12, **params(i)) for i in range(4, 8)))
    for toks, end in rest:
        out.append(([t["id"] for t in toks], "".join(t["text"] for t in toks), end.get("finish_reason")))
    return out


def run(supervised, model, on):
    s = supervised(model, "--prefix_cache", "true" if on else "false")
    s.wait_ready()
    got = asyncio.run(requests(s.url))
    # The worker's heartbeat reaches the supervisor's /metrics text shortly after.
    m = {}
    for _ in range(100):
        m = prefix_metrics(s.port)
        if m.get("lookups_total", 0) >= (8 if on else 0) and "blocks" in m:
            break
        time.sleep(0.1)
    return got, m


def test_the_same_tokens_with_and_without_the_prefix_cache_and_the_hits_in_metrics(supervised, small_model):
    off, m_off = run(supervised, small_model, False)
    on, m_on = run(supervised, small_model, True)
    for i, (a, b) in enumerate(zip(off, on)):
        assert len(a[0]) > 0
        assert b == a, f"request {i} ({'seeded' if i % 2 else 'greedy'}) differs with the prefix cache"
    assert m_off["lookups_total"] == 0 and m_off["hit_tokens_total"] == 0 and m_off["blocks"] == 0, m_off
    # One after the other, each after the first finds the system prompt; the
    # four at once find it too (the sequential ones left it cached).
    assert m_on["lookups_total"] == 8, m_on
    assert m_on["hits_total"] == 7, m_on
    assert m_on["hit_tokens_total"] >= 7 * 200, m_on
    assert m_on["hit_tokens_total"] < m_on["lookup_tokens_total"], m_on
    assert 0 < m_on["token_hit_ratio"] < 1 and abs(m_on["request_hit_ratio"] - 7 / 8) < 1e-6, m_on
    assert m_on["blocks"] > 0 and m_on["evictions_total"] == 0, m_on
