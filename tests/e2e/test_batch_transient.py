"""A CPU-contention transient (issue 11, item 8): other processes take the
CPU for a few seconds while the pipeline streams, then leave.  The worker's
latency cap may fall while the steps are slow, but must be back at its full
value within seconds once they are not; the supervisor's bound (memory only)
must not move at all; every request must complete.  The TTFT before, during
and after the contention is printed, not asserted: speed is for the
benchmarks, the cap's recovery is behaviour.

Under the old controllers (both halving on the same slow heartbeats, the
supervisor's bound climbing back 25 % per ten good heartbeats and holding a
minute below a batch it had cut) the bound fell to a few sequences and the
cap stayed there long after the CPU was free."""
import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest
import websockets

from conftest import BUILD, http_get


MAX_BATCH = 16
CLIENTS = 20        # more than MAX_BATCH: the batch stays full, some wait
WARM_S = 3.0        # load alone on the CPU
CONTEND_S = 5.0     # spinners on every core
RECOVER_S = 10.0    # the cap must be back at MAX_BATCH this soon after
TAIL_S = 1.0        # load after the recovery, for the TTFT after


def worker_gauges(port):
    """{name: value} of the rill_worker_* gauges of w0 in the gateway's /metrics."""
    _, body, _ = http_get(port, "/metrics")
    out = {}
    for m in re.finditer(r'^rill_worker_(\w+)\{process="w0"\} (\S+)$', body, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def spinner(seconds):
    """A process that keeps one core busy and exits by itself."""
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


@pytest.mark.skipif("/asan" in BUILD or "/tsan" in BUILD,
                    reason="recovery is measured in seconds of real steps; a sanitizer build's steps are several times slower "
                           "(the controller's logic is covered by test_adapt under the sanitizers)")
def test_batch_cap_returns_to_full_within_seconds_after_cpu_contention(supervised, small_model):
    # 24M f32 on one thread: ~10-20 ms a step at 16 sequences alone (up to
    # ~30 when other tests share the machine), 45-300 ms with every core
    # spun.  max 40 ms sits between the two.
    s = supervised(small_model, "--max_batch", str(MAX_BATCH), "--target_latency_ms", "20",
                   "--max_latency_ms", "40",
                   # memory pressure must not be what moves anything here
                   "--pressure_warning", "0", "--pressure_critical", "0", "--pressure_emergency", "0",
                   "--psi_warning", "0", "--psi_critical", "0", "--psi_emergency", "0")
    s.wait_ready()

    samples = []            # (t, cap, bound)
    stop_polling = threading.Event()
    t0 = time.monotonic()

    def poll():
        while not stop_polling.is_set():
            try:
                g = worker_gauges(s.port)
                if g.get("batch_cap", 0) > 0:  # 0 until the first heartbeat
                    samples.append((time.monotonic() - t0, g["batch_cap"], g["batch_bound"]))
            except OSError:
                pass
            time.sleep(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()

    phase = {"contend_at": None, "free_at": None, "stop": False}
    results = []            # (t_sent, ttft_s or None, end message type)

    async def client(k):
        n = 0
        while not phase["stop"]:
            async with websockets.connect(s.url, compression=None) as ws:
                sent = time.monotonic() - t0
                await ws.send(json.dumps({"type": "generate", "id": f"c{k}-{n}", "prompt": f"client {k}, story {n}:",
                                          "max_tokens": 32, "params": {"temperature": 0}}))
                first = None
                while True:
                    m = json.loads(await ws.recv())
                    if m["type"] in ("token", "tokens") and first is None:
                        first = time.monotonic() - t0 - sent
                    if m["type"] in ("complete", "error"):
                        break
                results.append((sent, first, m["type"], m.get("code")))
                n += 1

    def cap_now():
        return samples[-1][1] if samples else 0

    async def conductor():
        await asyncio.sleep(WARM_S)
        phase["contend_at"] = time.monotonic() - t0
        spin = [spinner(CONTEND_S) for _ in range((os.cpu_count() or 2) + 1)]
        await asyncio.get_running_loop().run_in_executor(None, lambda: [p.wait() for p in spin])
        phase["free_at"] = time.monotonic() - t0
        deadline = phase["free_at"] + RECOVER_S
        while time.monotonic() - t0 < deadline:
            # fresh samples only: the cap as read after the CPU was free
            if samples and samples[-1][0] > phase["free_at"] and cap_now() == MAX_BATCH:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(TAIL_S)
        phase["stop"] = True

    async def run():
        await asyncio.gather(conductor(), *(client(k) for k in range(CLIENTS)))

    try:
        asyncio.run(run())
    finally:
        stop_polling.set()
        poller.join(timeout=2)

    contend_at, free_at = phase["contend_at"], phase["free_at"]
    during = [c for t, c, _ in samples if contend_at <= t <= free_at]
    back = [t for t, c, _ in samples if t > free_at and c == MAX_BATCH]
    recovered_after = back[0] - free_at if back else None
    bounds = sorted({b for _, _, b in samples})
    ttft = {name: [f for t, f, kind, _ in results if lo <= t < hi and f is not None]
            for name, lo, hi in (("before", 0, contend_at), ("during", contend_at, free_at),
                                 ("after", free_at, float("inf")))}
    log = s.text()
    cap_lines = [l[l.index("batch cap"):][:150] for l in log.splitlines() if "worker/w0" in l and "batch cap:" in l]
    print(f"\nbatch transient: {len(results)} requests; contention {contend_at:.1f}-{free_at:.1f} s; "
          f"cap during it {min(during, default=float('nan')):.0f}..{max(during, default=float('nan')):.0f} "
          f"of {MAX_BATCH}; back to {MAX_BATCH} "
          + (f"{recovered_after:.1f} s after the CPU was free" if recovered_after is not None else "never")
          + f"; supervisor bounds seen {bounds}")
    for name, v in ttft.items():
        print(f"  TTFT {name:6s}: {len(v):3d} requests, p50 {pct(v, 0.5):.3f} s, p90 {pct(v, 0.9):.3f} s, "
              f"max {max(v, default=float('nan')):.3f} s")
    timeline, last = [], None
    for t, c, _ in samples:
        if c != last:
            timeline.append(f"{t:.1f}s:{c:.0f}")
            last = c
    print("  cap timeline: " + " ".join(timeline))
    for l in cap_lines[-12:]:
        print("  " + l)

    # The transient happened: the worker saw steps over max while the CPU was taken.
    # (When other load already kept steps slow, or the spinners never got
    # the worker's core, there was no transient to recover from.)
    if not any("above max" in l for l in cap_lines):
        pytest.skip("the contention did not slow the worker's steps: no transient to measure")
    # The cap is the worker's: back to full within seconds.
    assert recovered_after is not None and recovered_after <= RECOVER_S, \
        f"cap not back at {MAX_BATCH} within {RECOVER_S} s: {[(round(t, 1), c) for t, c, _ in samples[-20:]]}"
    # The bound is the supervisor's, on memory only: it never moved.
    assert bounds == [MAX_BATCH], re.findall(r"batch bound of w0: .*", log)
    # Nothing was lost to it.
    errors = [(kind, code) for _, _, kind, code in results if kind != "complete"]
    assert not errors
    assert len(ttft["during"]) > 0 and len(ttft["after"]) > 0
