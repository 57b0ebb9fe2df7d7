"""Memory pressure, for real: the pipeline runs in a cgroup v1 memory group
with a limit; a load whose KV caches would outgrow it drives the supervisor to
warning and critical.  Batch caps must go down, sequences be preempted and
recomputed, no process be OOM-killed, and every accepted request complete."""
import asyncio
import json
import os
import re
import signal
import uuid

import pytest
import websockets

from conftest import make_model, wait_for
from conftest import Supervised

CG_ROOT = "/sys/fs/cgroup/memory"
LIMIT = 300 << 20


@pytest.fixture
def cgroup():
    path = os.path.join(CG_ROOT, "rill-e2e-" + uuid.uuid4().hex[:8])
    try:
        os.mkdir(path)
        with open(os.path.join(path, "memory.limit_in_bytes"), "w") as f:
            f.write(str(LIMIT))
    except OSError as e:
        pytest.skip(f"cannot make a cgroup v1 memory group under {CG_ROOT} ({e}): "
                    "the pressure test needs root and the v1 memory controller")
    yield path
    # Every process has left by now; a group with none can be removed.
    for _ in range(100):
        try:
            os.rmdir(path)
            break
        except OSError:
            import time
            time.sleep(0.1)


def oom_kills(path):
    with open(os.path.join(path, "memory.oom_control")) as f:
        m = re.search(r"oom_kill (\d+)", f.read())
    return int(m.group(1)) if m else 0


async def stream(url, prompt, n):
    async with websockets.connect(url, compression=None, max_size=None) as ws:
        await ws.send(json.dumps({"type": "generate", "id": prompt, "prompt": prompt, "max_tokens": n,
                                  "params": {"temperature": 0}}))
        positions = []
        while True:
            m = json.loads(await ws.recv())
            if m["type"] == "token":
                positions.append(m["token"]["position"])
            elif m["type"] == "tokens":
                positions.extend(t["position"] for t in m["tokens"])
            elif m["type"] in ("complete", "error"):
                return positions, m


def test_memory_pressure_lowers_caps_preempts_and_completes_everything(cgroup):
    # A model whose KV cache is heavy for its compute: 24 layers of 128 dims
    # = 24 KiB of cache per token for ~6 MFLOP, so 32 sequences of 200
    # tokens want ~150 MiB of cache — past warning (40%, 120 MiB) and
    # critical (50%, 150 MiB) of a 300 MiB group over a base of ~70 MiB —
    # after seconds of compute.
    model = make_model("kvheavy", "--dim", "128", "--layers", "24", "--heads", "8", "--ffn", "256",
                       "--vocab", "4000", "--dtype", "q8_0")

    def into_cgroup():
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    s = Supervised(model, "--pressure_warning", "0.4", "--pressure_critical", "0.5", "--pressure_emergency", "0.97",
                   "--psi_warning", "0", "--psi_critical", "0", "--psi_emergency", "0",
                   "--max_batch", "64", "--threads_per_worker", "2",
                   # Latency must not be what lowers the caps here: pressure must.
                   "--target_latency_ms", "500", "--max_latency_ms", "900",
                   workers=1, preexec=into_cgroup)
    try:
        s.wait_ready()
        n = 192

        async def all_streams():
            return await asyncio.gather(*(stream(s.url, f"request {i}: once upon a time", n) for i in range(32)))

        results = asyncio.run(all_streams())
        for positions, end in results:
            assert end["type"] == "complete", end
            assert end["finish_reason"] == "length"
            assert positions == list(range(n))
        log = s.text()
        assert "memory pressure warning" in log, log[-3000:]
        assert "memory pressure critical" in log, log[-3000:]
        # The supervisor's bound fell on pressure, and the worker's cap with
        # it (memory is the supervisor's: the worker does not cut on the
        # level itself).
        assert re.search(r"batch bound of w0: \d+ -> \d+ \(.*pressure", log)
        assert re.search(r"worker/w0\[\d+\] batch cap: supervisor bound \d+ \(\d+ -> \d+\)", log)
        preempted = log.count("preempted request")
        assert preempted > 0
        assert oom_kills(cgroup) == 0
        assert "died" not in log                              # nothing crashed or was killed
        for line in log.splitlines():
            if "supervisor[" in line and ("memory pressure" in line or "batch bound" in line):
                print(line[11:200])
        levels = re.findall(r"supervisor\[\d+\] memory pressure (warning|critical|emergency|back to normal)", log)
        bounds = re.findall(r"batch bound of w0: (\d+ -> \d+)", log)
        print(f"\npressure test: {len(results)} of {len(results)} requests complete, {n} tokens each; "
              f"{preempted} preemptions; supervisor levels: {', '.join(levels)}; w0 bounds: {', '.join(bounds)}; "
              f"OOM kills 0")
    except AssertionError:
        print(s.text()[-6000:])
        raise
    finally:
        s.stop(signal.SIGINT)
        s.log.close()
        os.unlink(s.log_path)
    assert s.proc.returncode == 0
