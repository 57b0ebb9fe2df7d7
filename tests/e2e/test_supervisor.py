"""The supervisor runs the pipeline: one command up, crashes and hangs
restarted, clean shutdown, and a dead predecessor's leftovers cleaned."""
import asyncio
import glob
import json
import os
import signal
import subprocess
import tempfile
import time
import uuid

import pytest
import websockets

from conftest import BUILD, binary, free_port, http_get, ring_name, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))


class Supervised:
    """deploy/rill-up in a subprocess, with its stdout line and stderr log."""

    def __init__(self, model, *args, workers=1, preexec=None, env=None, instance=None, port=None):
        self.instance = instance or "s" + uuid.uuid4().hex[:8]
        self.port = port or free_port()
        self.run_dir = os.path.join(tempfile.gettempdir(), f"rill-e2e-{self.instance}")
        self.log_path = os.path.join(tempfile.gettempdir(), f"rill-e2e-{uuid.uuid4().hex[:8]}.log")
        self.log = open(self.log_path, "w")
        e = dict(os.environ, RILL_BUILD=BUILD)
        e.update(env or {})
        self.proc = subprocess.Popen(
            [os.path.join(ROOT, "deploy", "rill-up"), "--model", model, "--port", str(self.port),
             "--workers", str(workers), "--instance", self.instance, "--run_dir", self.run_dir,
             "--threads_per_worker", "1", *args],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=e, preexec_fn=preexec)
        self.url = f"ws://127.0.0.1:{self.port}/stream"

    def wait_ready(self, timeout=30):
        line = self.proc.stdout.readline()
        assert line == f"rill ready at http://127.0.0.1:{self.port}/\n", f"stdout said {line!r}; log: {self.text()}"
        return line

    def text(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def pids(self, name):
        out = subprocess.run(["pgrep", "-f", f"{name}.*--instance {self.instance}"], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def worker_pid(self, k):
        # Children get the whole config as flags, then their own --worker_id last.
        for pid in self.pids("rill-worker"):
            try:
                args = open(f"/proc/{pid}/cmdline").read().split("\0")
            except OSError:
                continue
            ids = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--worker_id"]
            if ids and ids[-1] == str(k):
                return pid
        return None

    def stop(self, sig=signal.SIGINT, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rest = self.proc.stdout.read()
        return rest

    def leftovers(self):
        shm = glob.glob(f"/dev/shm{ring_name(self.instance, '*')}")
        run = os.path.exists(self.run_dir)
        procs = self.pids("rill-worker") + self.pids("rill-gateway")
        return shm, run, procs


@pytest.fixture
def supervised():
    made = []

    def make(*a, **kw):
        s = Supervised(*a, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop(signal.SIGKILL)
        for pid in s.pids("rill-worker") + s.pids("rill-gateway"):
            os.kill(pid, signal.SIGKILL)
        s.log.close()
        os.unlink(s.log_path)


async def generate(url, prompt="To be", n=16, **params):
    params.setdefault("temperature", 0)
    async with websockets.connect(url, compression=None) as ws:
        await ws.send(json.dumps({"type": "generate", "id": "q", "prompt": prompt, "max_tokens": n, "params": params}))
        tokens = []
        while True:
            m = json.loads(await ws.recv())
            if m["type"] == "token":
                tokens.append(m["token"])
            elif m["type"] == "tokens":
                tokens.extend(m["tokens"])
            elif m["type"] in ("complete", "error"):
                return tokens, m


def test_rill_up_streams_and_ctrl_c_leaves_nothing_behind(supervised, tiny_model):
    s = supervised(tiny_model, workers=2)
    s.wait_ready()
    status, body, _ = http_get(s.port, "/ready")
    assert status == 200 and "2 workers ready" in body
    tokens, end = asyncio.run(generate(s.url))
    assert end["type"] == "complete" and len(tokens) == 16
    assert [t["position"] for t in tokens] == list(range(16))
    # Nothing else was ever printed on stdout, and Ctrl-C drains and cleans.
    assert s.stop(signal.SIGINT) == ""
    assert s.proc.returncode == 0
    assert s.leftovers() == ([], False, [])
    assert "every process stopped" in s.text()


def test_killed_worker_is_restarted_and_its_clients_get_worker_lost(supervised, tiny_model):
    s = supervised(tiny_model, workers=1)
    s.wait_ready()

    async def long_then_kill():
        async with websockets.connect(s.url, compression=None) as ws:
            await ws.send(json.dumps({"type": "generate", "id": "long", "prompt": "x", "max_tokens": 2000,
                                      "params": {"temperature": 0}}))
            got = 0
            while True:
                m = json.loads(await ws.recv())
                if m["type"] in ("token", "tokens"):
                    got += 1
                    if got == 3:
                        os.kill(s.worker_pid(0), signal.SIGKILL)
                elif m["type"] in ("complete", "error"):
                    return m

    end = asyncio.run(long_then_kill())
    assert end["type"] == "error"
    assert end["error"]["code"] == "worker_lost" and end["error"]["recoverable"] is True
    wait_for(lambda: http_get(s.port, "/ready")[0] == 200, what="worker back")
    tokens, end = asyncio.run(generate(s.url))
    assert end["type"] == "complete" and len(tokens) == 16
    assert "w0 died (killed by signal 9" in s.text()
    # The supervisor rewrites its figures twice a second.
    wait_for(lambda: 'rill_process_restarts_total{process="w0"} 1' in http_get(s.port, "/metrics")[1],
             timeout=5, what="restart counted in /metrics")


def test_hung_worker_is_killed_and_restarted(supervised, tiny_model):
    s = supervised(tiny_model, "--heartbeat_timeout_ms", "500", workers=1)
    s.wait_ready()
    pid = s.worker_pid(0)
    os.kill(pid, signal.SIGSTOP)  # alive but silent
    wait_for(lambda: "sent no heartbeat" in s.text(), timeout=10, what="hang detected")
    wait_for(lambda: s.worker_pid(0) not in (None, pid) and http_get(s.port, "/ready")[0] == 200,
             timeout=15, what="worker restarted")
    tokens, end = asyncio.run(generate(s.url))
    assert end["type"] == "complete" and len(tokens) == 16


def test_a_worker_that_keeps_dying_is_given_up_and_reported(supervised, tmp_path):
    # A model file that is not GGUF: the worker exits at once, every time.
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a model" * 10)
    s = supervised(str(bad), "--restart_max", "2", "--restart_window_s", "60", workers=1)
    wait_for(lambda: "will not be restarted" in s.text(), timeout=20, what="give up")
    wait_for(lambda: http_get(s.port, "/metrics")[0] == 200 and
             'rill_process_failed{process="w0"} 1' in http_get(s.port, "/metrics")[1], timeout=10,
             what="failure in /metrics")
    status, body, _ = http_get(s.port, "/ready")
    assert status == 503
    assert "restarts within 60 s: giving up" in s.text()


def test_killed_supervisor_is_cleaned_up_by_the_next_start(supervised, tiny_model):
    s = supervised(tiny_model, workers=1)
    s.wait_ready()
    s.proc.kill()  # SIGKILL: no cleanup at all
    s.proc.wait()
    # Its children drain and exit on their own (parent-death signal) ...
    wait_for(lambda: not s.pids("rill-worker") and not s.pids("rill-gateway"), timeout=15, what="orphans gone")
    # ... leaving the run dir behind, which the next start of the instance cleans.
    assert os.path.exists(os.path.join(s.run_dir, "supervisor.pid"))
    again = supervised(tiny_model, workers=1, instance=s.instance, port=s.port)
    again.wait_ready()
    tokens, end = asyncio.run(generate(again.url))
    assert end["type"] == "complete"
    assert again.stop(signal.SIGINT) == ""
    assert again.proc.returncode == 0
    assert again.leftovers() == ([], False, [])


def test_second_signal_stops_at_once(supervised, tiny_model):
    s = supervised(tiny_model, workers=1)
    s.wait_ready()

    async def busy():
        async with websockets.connect(s.url, compression=None) as ws:
            await ws.send(json.dumps({"type": "generate", "prompt": "x", "max_tokens": 100000 // 100,
                                      "params": {"temperature": 0}}))
            await ws.recv()
            s.proc.send_signal(signal.SIGINT)
            time.sleep(0.2)
            s.proc.send_signal(signal.SIGINT)
            t0 = time.time()
            s.proc.wait(timeout=10)
            return time.time() - t0

    assert asyncio.run(busy()) < 5
    wait_for(lambda: s.leftovers() == ([], False, []), timeout=10, what="nothing left")


def test_the_example_config_lists_every_key_with_a_valid_default(tmp_path):
    """deploy/rill.ini, with every key uncommented, is accepted as it is."""
    text = open(os.path.join(ROOT, "deploy", "rill.ini")).read()
    lines = []
    for line in text.splitlines():
        if line.startswith("; ") and " = " in line and not line.startswith("; rill.ini"):
            lines.append(line[2:])
        elif not line.startswith(";"):
            lines.append(line)
    keys = [l.split(" = ")[0] for l in lines if " = " in l]
    cfg = tmp_path / "all.ini"
    cfg.write_text("\n".join(lines) + "\n")
    r = subprocess.run([binary("rill-supervisor"), "--config", str(cfg), "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    helped = [l.split()[0][2:] for l in r.stdout.splitlines() if l.startswith("  --")]
    assert sorted(keys) == sorted(helped)
