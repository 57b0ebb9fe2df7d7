"""Fixtures for the end-to-end tests: real rill binaries, real sockets.

RILL_BUILD points at the build directory (the Makefile sets it); models are
made once per session with rill-mkmodel into $RILL_BUILD/test-models.
"""
import asyncio
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest
import websockets

BUILD = os.environ.get("RILL_BUILD", os.path.join(os.path.dirname(__file__), "..", "..", "build"))
BUILD = os.path.abspath(BUILD)
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def binary(name):
    path = os.path.join(BUILD, name)
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: run make first")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(name, *args):
    """A model file made by rill-mkmodel (cached across tests of a session)."""
    d = os.path.join(BUILD, "test-models")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, name + ".gguf")
    if not os.path.exists(path):
        subprocess.run([binary("rill-mkmodel"), *args, "--out", path], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return path


@pytest.fixture(scope="session")
def tiny_model():
    return make_model("tiny", "--shape", "tiny")


@pytest.fixture(scope="session")
def small_model():
    """The 24M shape: a real 32000-token vocabulary."""
    return make_model("24m-f32", "--shape", "24M", "--dtype", "f32")


def ring_name(instance, k):
    """The shm name of worker k's ring (cfg_ring_name in common/config.c)."""
    return f"/rill-{os.geteuid()}-{instance}-w{k}"


def wait_for(pred, timeout=20.0, what="condition"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


def http_get(port, path):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode(), dict(r.getheaders())
    finally:
        c.close()


class Pipeline:
    """Workers and a gateway started standalone (no supervisor)."""

    def __init__(self, model, workers=1, gateway_args=(), worker_args=(), threads=1, host="127.0.0.1"):
        self.instance = "t" + uuid.uuid4().hex[:8]
        self.run_dir = tempfile.mkdtemp(prefix="rill-e2e-")
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/stream"
        self.procs = []
        self.logs = []
        self.model = model
        self.worker_procs = []
        self.common = ["--instance", self.instance, "--run_dir", self.run_dir]
        endpoints = []
        for k in range(workers):
            self.worker_procs.append(self._start_worker(k, threads, worker_args))
            endpoints.append(f"ipc://{self.run_dir}/w{k}.sock@{ring_name(self.instance, k)}")
        self.gateway_argv = [binary("rill-gateway"), *self.common, "--listen", f"{host}:{self.port}",
                             "--worker_list", ",".join(endpoints), *gateway_args]
        self.gateway = self._spawn("gateway", self.gateway_argv)
        self.n_workers = workers
        wait_for(lambda: self._ready(workers), what="gateway ready")

    def restart_gateway(self, n=2):
        """kill -9 the gateway, start it again (its log: gateway<n>.log)."""
        self.gateway.kill()
        self.gateway.wait()
        self.gateway = self._spawn(f"gateway{n}", self.gateway_argv)
        wait_for(lambda: self._ready(self.n_workers), what="gateway ready again")

    def _spawn(self, name, argv):
        log = open(os.path.join(self.run_dir, name + ".log"), "w")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        self.logs.append(log)
        return p

    def _start_worker(self, k, threads, worker_args):
        return self._spawn(f"w{k}", [binary("rill-worker"), *self.common, "--model", self.model,
                                     "--worker_id", str(k), "--threads", str(threads), *worker_args])

    def restart_worker(self, k, threads=1, worker_args=()):
        self.worker_procs[k] = self._start_worker(k, threads, worker_args)

    def _ready(self, workers):
        try:
            status, body, _ = http_get(self.port, "/ready")
            return status == 200 and f"{workers} worker" in body
        except OSError:
            return False

    def log(self, name):
        with open(os.path.join(self.run_dir, name + ".log")) as f:
            return f.read()

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in self.logs:
            log.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def worker_stream(model, prompt, n, *extra):
    """The worker's standalone output for a prompt: the JSON token lines."""
    out = subprocess.run([binary("rill-worker"), "--model", model, "--prompt", prompt, "-n", str(n), "--json",
                          "--threads", "1", *extra], check=True, capture_output=True, text=True).stdout
    lines = [json.loads(l) for l in out.splitlines() if l.strip()]
    return [l for l in lines if "summary" not in l]


# --- helpers for the e2e suites (test_e2e_*.py) ---

def start_pipeline(model, **kw):
    """Pipeline(model, **kw) that stops whatever it started when the start
    fails (and shows the gateway's log, the usual place to look)."""
    p = Pipeline.__new__(Pipeline)
    try:
        p.__init__(model, **kw)
    except BaseException:
        if hasattr(p, "run_dir"):
            try:
                print("gateway log:\n" + p.log("gateway")[-4000:])
            except OSError:
                pass
        if hasattr(p, "procs"):
            p.stop()
        raise
    return p


def _pipeline_factory():
    """make(model, **kw) starts a pipeline (start_pipeline); every one made
    is stopped when the generator resumes."""
    made = []

    def make(model, **kw):
        p = start_pipeline(model, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


@pytest.fixture(scope="module")
def module_pipelines():
    """A factory of pipelines shared by one test module (stopped at its end)."""
    yield from _pipeline_factory()


@pytest.fixture
def pipelines():
    """A factory of pipelines for one test (stopped at its end)."""
    yield from _pipeline_factory()


# --- the whole pipeline under its supervisor (deploy/rill-up) ---

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

    def wait_ready(self, timeout=60):
        import select
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"no ready line within {timeout} s; log: {self.text()[-3000:]}"
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
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it exited between pgrep and now
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
