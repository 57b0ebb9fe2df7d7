#!/usr/bin/env python3
"""chaos.py — rill under failure and over time (issue 13, part 5).

    tools/chaos.py chaos --build B [--seconds 120] [--clients 200] [--json OUT]
    tools/chaos.py soak  --build B [--seconds 1800] [--clients 40] [--json OUT]

Both start the whole pipeline under its supervisor (deploy/rill-up, two
workers of one thread each, the 24M test model) and run many clients
against it, each one request after the other: JSON and msgpack
connections, greedy and seeded sampling, drawn from a fixed set of
requests whose undisturbed output is computed first with the worker's
standalone mode (as tests/e2e/rillclient.expected does).  Some
connections are dropped mid-stream (no close handshake) and the request
is resumed on a new connection with its resume_token, sometimes from a
position before the last one received (the overlap must be identical).
Every request must end `complete` with exactly the reference's tokens and
finish_reason: anything else is a mismatch (wrong tokens, order, finish)
or lost (an error, a stall, a resume that failed).

chaos: also kill -9 a random worker every 2-5 s (the supervisor restarts
it).  The gateway log names each generation that failed over and the
position it resumed from; the gap of an affected stream is the time from
the kill to the arrival of the token at that position (or of its end).
And kill -9 the gateway once, at 40% of the run (--gateway-kills N: N
times, evenly spaced): the supervisor restarts it, the workers replay what
they run to it, and every client reconnects (with backoff) and resumes
each generation it had from the last position it received; a request the
gateway had not accepted yet is sent again.

soak: no kills; steady load for the whole time.  At the end of warm-up and
at the end, the clients pause (connections stay open, nothing running) and
the RSS (RssAnon: the rings are shared memory) and fd count of the
supervisor, the gateway and each worker are read; RSS may grow < 1% (or
by less than SLACK_KB: page granularity on a small process), fds not at
all.  Samples every few seconds go to the JSON too.

Exit status: 0 when every check holds, 1 otherwise, 2 when the pipeline
could not run at all.
"""
import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import msgpack
import websockets

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
JSON_P = "rill.json.v1"
MSGPACK_P = "rill.msgpack.v1"

# Every sampling parameter, given explicitly: the worker CLI and the gateway
# have different defaults (rillclient.py says the same).
GREEDY = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}
SAMPLED = {"temperature": 0.9, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1}
CLI_FLAG = {"temperature": "--temperature", "top_p": "--top-p", "top_k": "--top-k", "min_p": "--min-p",
            "repetition_penalty": "--repeat-penalty", "seed": "--seed"}

PROMPTS = ["Once upon a time", "The river ran", "In the beginning the", "She opened the door and",
           "Tell me about the sea", "A quick brown fox", "The last train left", "Numbers: one, two,",
           "Dear diary, today", "The recipe needs", "Far away in the hills", "He said nothing, but"]

STALL_S = 180.0  # a request that hears nothing for this long is lost (--stall-s)
SLOW_S = 30.0    # one that hears nothing for this long is counted as starved

FAILOVER_RE = re.compile(r"request \d+ \(([^)]*)\): its worker stopped; running it again from position (\d+)")


# RSS growth under this many KiB is not counted against the 1% bound.
SLACK_KB = 256


def log(*a):
    print("chaos:", *a, file=sys.stderr, flush=True)


# --- the requests and their undisturbed output ------------------------------------------------

def make_jobs(n_jobs, seed):
    rnd = random.Random(seed)
    jobs = []
    for k in range(n_jobs):
        params = dict(GREEDY) if k % 2 == 0 else dict(SAMPLED, seed=1000 + k)
        jobs.append({"prompt": PROMPTS[k % len(PROMPTS)], "max_tokens": rnd.randint(24, 72), "params": params})
    return jobs


def _ref_key(worker, model, job):
    st_w, st_m = os.stat(worker), os.stat(model)
    ident = [st_w.st_size, st_w.st_mtime_ns, os.path.abspath(model), st_m.st_size, st_m.st_mtime_ns, job]
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _run_ref(worker, model, job):
    flags = []
    for k, v in job["params"].items():
        flags += [CLI_FLAG[k], str(v)]
    out = subprocess.run([worker, "--model", model, "--prompt", job["prompt"], "-n", str(job["max_tokens"]),
                          "--json", "--threads", "1", *flags], check=True, capture_output=True, text=True).stdout
    lines = [json.loads(l) for l in out.splitlines() if l.strip()]
    lines = [l for l in lines if "summary" not in l]
    return {"tokens": [[l["position"], l["id"], l["text"]] for l in lines],
            "finish": (lines[-1].get("finish") if lines else None) or "length"}


def references(build, model, jobs, cache_path):
    """Each job's standalone output, from the cache when the binary, model and
    job are the same."""
    worker = os.path.join(build, "rill-worker")
    try:
        with open(cache_path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        cache = {}
    keys = [_ref_key(worker, model, j) for j in jobs]
    todo = [(k, j) for k, j in zip(keys, jobs) if k not in cache]
    if todo:
        log(f"computing {len(todo)} reference outputs with the standalone worker")
        with ThreadPoolExecutor(2) as ex:
            for (k, _), r in zip(todo, ex.map(lambda kj: _run_ref(worker, model, kj[1]), todo)):
                cache[k] = r
        os.makedirs(os.path.dirname(cache_path), exist_ok=True)
        tmp = cache_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(cache, f)
        os.replace(tmp, cache_path)
    return [cache[k] for k in keys]


def ensure_model(build):
    """The e2e tests' 24M model (tests/e2e/conftest.py's small_model)."""
    d = os.path.join(build, "test-models")
    path = os.path.join(d, "24m-f32.gguf")
    if not os.path.exists(path):
        os.makedirs(d, exist_ok=True)
        subprocess.run([os.path.join(build, "rill-mkmodel"), "--shape", "24M", "--dtype", "f32", "--out", path],
                       check=True, stdout=subprocess.DEVNULL)
    return path


# --- the pipeline ---------------------------------------------------------------------------------

def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pipeline:
    """deploy/rill-up with two workers; its log is read line by line for the
    failovers it names."""

    def __init__(self, build, model, workers, log_path, extra=()):
        self.instance = "chaos" + uuid.uuid4().hex[:8]
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/stream"
        self.run_dir = os.path.join(tempfile.gettempdir(), f"rill-{self.instance}")
        self.workers = workers
        self.failovers = []  # (monotonic time read, client id, position)
        self.warnings = []   # warn and error lines before stop()
        self.stopping = False
        self.lock = threading.Lock()
        self.log_file = open(log_path, "w")
        env = dict(os.environ, RILL_BUILD=os.path.abspath(build))
        self.proc = subprocess.Popen(
            [os.path.join(ROOT, "deploy", "rill-up"), "--model", model, "--port", str(self.port),
             "--workers", str(workers), "--instance", self.instance, "--run_dir", self.run_dir,
             "--threads_per_worker", "1", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.reader = threading.Thread(target=self._read_log, daemon=True)
        self.reader.start()

    def _read_log(self):
        for line in self.proc.stderr:
            t = time.monotonic()
            self.log_file.write(line)
            if not self.stopping and re.search(r"Z (warn|error) ", line):
                with self.lock:
                    self.warnings.append(line.rstrip())
            m = FAILOVER_RE.search(line)
            if m:
                with self.lock:
                    self.failovers.append((t, m.group(1), int(m.group(2))))

    def wait_ready(self, timeout=120):
        import select
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("rill ready at"):
            raise RuntimeError(f"the pipeline did not start (stdout: {line!r}; see the log)")

    def _pids(self, name):
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    args = f.read().decode(errors="replace").split("\0")
            except OSError:
                continue
            if args and args[0].endswith(name) and self.instance in args:
                out.append((int(d), args))
        return out

    def worker_pid(self, k):
        for pid, args in self._pids("rill-worker"):
            ids = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--worker_id"]
            if ids and ids[-1] == str(k):
                return pid
        return None

    def gateway_pid(self):
        p = self._pids("rill-gateway")
        return p[0][0] if p else None

    def processes(self):
        """{name: pid} of every process of the pipeline."""
        out = {"supervisor": self.proc.pid, "gateway": self.gateway_pid()}
        for k in range(self.workers):
            out[f"w{k}"] = self.worker_pid(k)
        return out

    def metric(self, name):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(None, 1)[1])
        return None

    def worker_load(self):
        """{worker: [queued, running, batch cap]} from /metrics, or {} when it cannot say."""
        out = {}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return out
        for line in text.splitlines():
            for i, name in enumerate(("rill_worker_queued_requests{", "rill_worker_active_sequences{",
                                      "rill_worker_batch_cap{")):
                if line.startswith(name):
                    m = re.search(r'process="([^"]+)"', line)
                    if m:
                        out.setdefault(m.group(1), [None, None, None])[i] = float(line.rsplit(None, 1)[1])
        return out

    def stop(self):
        self.stopping = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for name in ("rill-worker", "rill-gateway"):  # only this instance's, by pid
            for pid, _ in self._pids(name):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.reader.join(timeout=5)
        self.log_file.close()
        return self.proc.returncode


def proc_sample(pid):
    """RssAnon and VmRSS (KiB) and open fds of a process, or None."""
    try:
        st = {}
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("RssAnon", "VmRSS"):
                    st[k] = int(v.split()[0])
        return {"rss_anon_kb": st["RssAnon"], "vm_rss_kb": st["VmRSS"], "fds": len(os.listdir(f"/proc/{pid}/fd"))}
    except (OSError, KeyError, TypeError):
        return None


# --- the clients ---------------------------------------------------------------------------------

class Req:
    def __init__(self, gid, job, ref):
        self.gid, self.job, self.ref = gid, job, ref
        self.got = []          # [position, id, text]
        self.arrival = {}      # position -> monotonic time it first arrived
        self.token = None      # resume_token
        self.expect_pos = 0    # the position the next token must have
        self.terminal = None
        self.t_end = None
        self.drops = []        # (monotonic time of a drop, of the resume that followed)
        self.problem = None    # what went wrong, when something did
        self.t_start = time.monotonic()
        self.t_last = self.t_start  # the last message
        self.silence = 0.0     # the longest time without a message


class Stats:
    def __init__(self):
        self.requests = 0
        self.completed = 0
        self.resumes = 0
        self.gateway_resumes = 0  # resumes after the gateway was killed
        self.replayed_overlap = 0
        self.refused = {}  # code -> refusals before acceptance, each tried again
        self.starved = 0   # requests that heard nothing for more than SLOW_S at some point
        self.durations = []  # seconds from generate to the end, of those that ended
        self.mismatches = []
        self.lost = []
        self.reqs = {}  # gid -> Req


async def _connect(url, proto):
    return await websockets.connect(url, subprotocols=[proto], compression=None, max_queue=None,
                                    ping_interval=None, open_timeout=20, max_size=16 << 20)


async def _reconnect(url, proto, rnd, give_up_s=30):
    """Connect, trying again with backoff and jitter while the gateway is
    down (restarting after a kill)."""
    deadline = time.monotonic() + give_up_s
    delay = 0.05
    while True:
        try:
            return await _connect(url, proto)
        except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake, websockets.InvalidStatus) as e:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(delay * rnd.uniform(0.5, 1.5))
            delay = min(delay * 2, 1.0)


async def _send(ws, proto, msg):
    await ws.send(msgpack.packb(msg, use_bin_type=True) if proto == MSGPACK_P else json.dumps(msg))


async def _recv(ws, proto, timeout):
    data = await asyncio.wait_for(ws.recv(), timeout)
    if proto == MSGPACK_P:
        if not isinstance(data, bytes):
            raise ValueError("a text frame on msgpack")
        return msgpack.unpackb(data, raw=False)
    if not isinstance(data, str):
        raise ValueError("a binary frame on JSON")
    return json.loads(data)


def _take(r, m, now):
    """One message for r; False when it ends r."""
    t = m.get("type")
    if m.get("id") != r.gid:
        r.problem = f"a message for another id: {m!r:.200}"
        return False
    if t == "accepted":
        r.token = m.get("resume_token")
    elif t == "resumed":
        if m.get("from") != r.expect_pos:
            r.problem = f"resumed from {m.get('from')}, asked {r.expect_pos}"
            return False
    elif t in ("token", "tokens"):
        for tk in ([m["token"]] if t == "token" else m["tokens"]):
            pos = tk["position"]
            if pos != r.expect_pos:
                r.problem = f"position {pos} where {r.expect_pos} was due"
                return False
            trip = [pos, tk["id"], tk["text"]]
            if pos < len(r.got):
                if r.got[pos] != trip:
                    r.problem = f"replayed position {pos} differs: {trip} vs {r.got[pos]}"
                    return False
            else:
                r.got.append(trip)
                r.arrival[pos] = now
            r.expect_pos += 1
    elif t in ("complete", "error"):
        r.terminal = m
        r.t_end = now
        return False
    elif t != "notice":
        r.problem = f"unexpected message {m!r:.200}"
        return False
    return True


class Load:
    """n clients, each one request after the other until stop() or pause()."""

    def __init__(self, url, jobs, refs, n, seed, drop_p, resume_back_p, stats):
        self.url, self.jobs, self.refs, self.n = url, jobs, refs, n
        self.seed, self.drop_p, self.resume_back_p, self.stats = seed, drop_p, resume_back_p, stats
        self.stopping = False
        self.paused = asyncio.Event()
        self.paused.set()            # set: running
        self.idle = 0                # clients waiting at the pause
        self.idle_changed = asyncio.Event()
        self.connected = 0
        self.close_on_pause = False  # a pause closes every connection (the soak's checkpoints)

    async def client(self, ci):
        rnd = random.Random(self.seed * 100003 + ci)
        proto = JSON_P if ci % 2 == 0 else MSGPACK_P
        ws = None
        nreq = 0
        try:
            while not self.stopping:
                if not self.paused.is_set():
                    if ws is not None and self.close_on_pause:
                        await ws.close()
                        self.connected -= 1
                        ws = None
                    self.idle += 1
                    self.idle_changed.set()
                    await self.paused.wait()
                    self.idle -= 1
                    continue
                if ws is None:
                    ws = await _reconnect(self.url, proto, rnd)
                    self.connected += 1
                k = rnd.randrange(len(self.jobs))
                self.stats.requests += 1
                for attempt in range(100):
                    r = Req(f"c{ci}r{nreq}" + (f"a{attempt}" if attempt else ""), self.jobs[k], self.refs[k])
                    self.stats.reqs[r.gid] = r
                    if ws is None:
                        ws = await _reconnect(self.url, proto, rnd)
                        self.connected += 1
                    ws, proto = await self.one(ws, proto, r, rnd)
                    if not self.refused(r):
                        break
                    # Refused before it was accepted (no worker ready, all
                    # busy) and recoverable: a client tries again.
                    code = "gateway_gone" if getattr(r, "resend", False) else r.terminal["error"]["code"]
                    self.stats.refused[code] = self.stats.refused.get(code, 0) + 1
                    await asyncio.sleep(rnd.uniform(0.2, 1.0))
                nreq += 1
                self.judge(r)
                if r.problem or r.terminal is None or r.terminal["type"] != "complete":
                    # Whatever is left of it must not reach the next request.
                    if ws is not None:
                        try:
                            await _send(ws, proto, {"type": "cancel"})
                        except websockets.ConnectionClosed:
                            pass
                        await ws.close()
                        self.connected -= 1
                        ws = None
                await asyncio.sleep(rnd.uniform(0, 0.3))
        finally:
            if ws is not None:
                self.connected -= 1
                await ws.close()

    async def one(self, ws, proto, r, rnd):
        job = r.job
        try:
            await _send(ws, proto, {"type": "generate", "id": r.gid, "prompt": job["prompt"],
                                    "max_tokens": job["max_tokens"], "params": job["params"]})
        except websockets.ConnectionClosed:
            r.resend = True  # it never reached the gateway: send it again
            self.connected -= 1
            return None, proto
        drop_at = rnd.randint(1, job["max_tokens"] - 1) if rnd.random() < self.drop_p else None
        while True:
            try:
                m = await _recv(ws, proto, STALL_S)
            except asyncio.TimeoutError:
                r.problem = f"nothing for {STALL_S:.0f} s"
                return ws, proto
            except websockets.ConnectionClosed as e:
                self.connected -= 1
                if r.token is None:
                    r.resend = True  # not accepted: the client sends it again
                    return None, proto
                # The gateway went away (killed): reconnect and resume from
                # what came, as rill-client.js does.
                t_drop = time.monotonic()
                try:
                    ws = await _reconnect(self.url, proto, rnd)
                except Exception as ce:
                    r.problem = f"could not reconnect after the gateway closed the connection ({e}): {ce!r}"
                    return None, proto
                self.connected += 1
                r.expect_pos = len(r.got)
                r.t_last = time.monotonic()
                await _send(ws, proto, {"type": "resume", "id": r.gid, "resume_token": r.token, "from": len(r.got)})
                self.stats.resumes += 1
                self.stats.gateway_resumes += 1
                r.drops.append((t_drop, time.monotonic()))
                continue
            now = time.monotonic()
            r.silence = max(r.silence, now - r.t_last)
            r.t_last = now
            if not _take(r, m, now):
                return ws, proto
            if drop_at is not None and r.token and len(r.got) >= drop_at:
                # The network goes away: no close handshake.
                t_drop = time.monotonic()
                ws.transport.abort()
                self.connected -= 1
                await asyncio.sleep(rnd.uniform(0, 1.0))
                proto = rnd.choice((JSON_P, MSGPACK_P))
                ws = await _reconnect(self.url, proto, rnd)
                self.connected += 1
                frm = len(r.got)
                if rnd.random() < self.resume_back_p:
                    frm -= rnd.randint(0, min(frm, 5))
                    self.stats.replayed_overlap += 1
                r.expect_pos = frm
                r.t_last = time.monotonic()  # the time away is the client's, not the server's
                await _send(ws, proto, {"type": "resume", "id": r.gid, "resume_token": r.token, "from": frm})
                self.stats.resumes += 1
                r.drops.append((t_drop, time.monotonic()))
                drop_at = len(r.got) + rnd.randint(1, 20) if rnd.random() < 0.2 else None

    @staticmethod
    def refused(r):
        t = r.terminal
        if getattr(r, "resend", False):
            return True
        return (t is not None and t["type"] == "error" and r.token is None and not r.got
                and t["error"].get("recoverable") and t["error"].get("code") in ("no_worker", "overloaded"))

    def judge(self, r):
        s = self.stats
        term = r.terminal
        if r.silence > SLOW_S:
            s.starved += 1
        if term is not None and not r.problem:
            s.durations.append(r.t_end - r.t_start)
        if r.problem and term is None and not r.problem.startswith(("position", "replayed", "resumed", "a message",
                                                                     "unexpected")):
            s.lost.append({"id": r.gid, "why": r.problem, "have": len(r.got)})
        elif r.problem:
            s.mismatches.append({"id": r.gid, "why": r.problem})
        elif term["type"] == "error":
            s.lost.append({"id": r.gid, "why": f"{term['error'].get('code')}: {term['error'].get('message')}",
                           "have": len(r.got)})
        elif r.got != r.ref["tokens"]:
            first = next((i for i, (a, b) in enumerate(zip(r.got, r.ref["tokens"])) if a != b),
                         min(len(r.got), len(r.ref["tokens"])))
            s.mismatches.append({"id": r.gid, "why": f"tokens differ from position {first} "
                                 f"(got {len(r.got)}, want {len(r.ref['tokens'])})",
                                 "got": r.got[first:first + 3], "want": r.ref["tokens"][first:first + 3]})
        elif term.get("finish_reason") != r.ref["finish"]:
            s.mismatches.append({"id": r.gid, "why": f"finish_reason {term.get('finish_reason')}, "
                                 f"want {r.ref['finish']}"})
        else:
            s.completed += 1

    async def pause(self, timeout=120):
        """Every client finishes its request and waits, connection open."""
        self.paused.clear()
        deadline = time.monotonic() + timeout
        while self.idle < self.n and time.monotonic() < deadline:
            self.idle_changed.clear()
            try:
                await asyncio.wait_for(self.idle_changed.wait(), 1)
            except asyncio.TimeoutError:
                pass
        return self.idle == self.n

    def resume(self):
        self.paused.set()


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# --- chaos ---------------------------------------------------------------------------------------

async def kill_loop(p, until, rnd, kills, down, gw_at=(), gw_kills=None):
    """kill -9 a random running worker every 2-5 s, and the gateway at the
    times in gw_at; also note the time with no worker process at all."""
    next_kill = time.monotonic() + rnd.uniform(2, 5)
    none_since = None
    gw_at = sorted(gw_at)
    while time.monotonic() < until:
        await asyncio.sleep(0.05)
        now = time.monotonic()
        if gw_at and now >= gw_at[0]:
            gw_at.pop(0)
            pid = p.gateway_pid()
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                    gw_kills.append({"t": now, "pid": pid})
                    log(f"killed the gateway (pid {pid})")
                except ProcessLookupError:
                    pass
        alive = [k for k in range(p.workers) if p.worker_pid(k)]
        if not alive and none_since is None:
            none_since = now
        elif alive and none_since is not None:
            down.append(now - none_since)
            none_since = None
        if now < next_kill:
            continue
        next_kill = now + rnd.uniform(2, 5)
        order = list(range(p.workers))
        rnd.shuffle(order)
        for k in order:
            pid = p.worker_pid(k)
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills.append({"t": time.monotonic(), "worker": k, "pid": pid})
                except ProcessLookupError:
                    continue
                break
    if none_since is not None:
        down.append(time.monotonic() - none_since)


def failover_gaps(p, kills, stats):
    """For each generation the gateway moved, the time from the kill before it
    to the arrival of the first token from its new worker (or its end)."""
    gaps, skipped, detect = [], 0, []
    with p.lock:
        fos = list(p.failovers)
    ktimes = [k["t"] for k in kills]
    for t_seen, gid, pos in fos:
        before = [t for t in ktimes if t <= t_seen]
        r = stats.reqs.get(gid)
        if not before or r is None:
            skipped += 1
            continue
        t_kill = before[-1]
        detect.append(t_seen - t_kill)
        t_next = r.arrival.get(pos, r.t_end if len(r.got) == pos else None)
        if t_next is None or any(d0 <= t_next and d1 >= t_kill for d0, d1 in r.drops):
            skipped += 1  # it ended otherwise, or its client was away meanwhile
            continue
        gaps.append((t_next - t_kill, pos > 0))
    return gaps, skipped, detect


async def run_chaos(a, p, jobs, refs):
    stats = Stats()
    load = Load(p.url, jobs, refs, a.clients, a.seed, a.drop_p, 0.2, stats)
    kills, down = [], []
    t0 = time.monotonic()
    until = t0 + a.seconds
    tasks = [asyncio.ensure_future(load.client(i)) for i in range(a.clients)]
    gw_kills = []
    n = a.gateway_kills
    gw_at = [t0 + a.seconds * (0.4 if n == 1 else 0.15 + 0.7 * i / max(n - 1, 1)) for i in range(n)]
    killer = asyncio.ensure_future(kill_loop(p, until, random.Random(a.seed), kills, down, gw_at, gw_kills))
    last = t0
    timeline = []
    loop = asyncio.get_running_loop()
    while time.monotonic() < until:
        await asyncio.sleep(1)
        timeline.append([round(time.monotonic() - t0, 1), await loop.run_in_executor(None, p.worker_load)])
        if time.monotonic() - last >= 10:
            last = time.monotonic()
            log(f"{last - t0:5.0f} s: {stats.requests} requests, {stats.completed} exact, {len(kills)} kills, "
                f"{stats.resumes} resumes, {len(stats.mismatches)} mismatches, {len(stats.lost)} lost")
    load.stopping = True
    await killer
    done, pending = await asyncio.wait(tasks, timeout=STALL_S + 30)
    for t in pending:
        t.cancel()
    errors = [t.exception() for t in done if not t.cancelled() and t.exception()]
    for e in errors[:5]:
        log(f"a client failed: {e!r}")
    # A client that died took its request with it.
    for r in stats.reqs.values():
        if r.terminal is None and r.problem is None and not getattr(r, "resend", False):
            stats.lost.append({"id": r.gid, "why": "its client failed", "have": len(r.got)})
    stats.gw_kills = [round(k["t"] - t0, 2) for k in gw_kills]
    return stats, kills, down, len(errors), [[round(k["t"] - t0, 2), k["worker"]] for k in kills], timeline


def chaos(a):
    build = os.path.abspath(a.build)
    out = a.json or os.path.join(build, "chaos", "chaos.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    model = ensure_model(build)
    jobs = make_jobs(a.jobs, a.seed)
    refs = references(build, model, jobs, a.refs_cache or os.path.join(os.path.dirname(model), "chaos-refs.json"))
    log_path = os.path.join(os.path.dirname(out), "chaos.log")
    p = Pipeline(build, model, 2, log_path, extra=a.extra)
    try:
        p.wait_ready()
        log(f"pipeline {p.instance} on port {p.port}: {a.clients} clients, {a.seconds:.0f} s, log {log_path}")
        stats, kills, down, client_errors, kill_times, timeline = asyncio.run(run_chaos(a, p, jobs, refs))
        metric_failovers = p.metric("rill_gateway_failovers_total")
    finally:
        rc = p.stop()
    gap_pairs, skipped, detect = failover_gaps(p, kills, stats)
    # For a generation lost with worker_lost: how long after its last
    # failover (failover_timeout_s says it should be at least that long).
    with p.lock:
        last_fo = {}
        for t_seen, gid, _ in p.failovers:
            last_fo[gid] = t_seen
    t_base = kills[0]["t"] - kill_times[0][0] if kills else 0  # the start of the load
    for x in stats.lost:
        r = stats.reqs.get(x["id"])
        if r is not None and r.t_end is not None:
            x["ended_s"] = round(r.t_end - t_base, 2)
            if x["id"] in last_fo:
                x["after_last_failover_s"] = round(r.t_end - last_fo[x["id"]], 2)
    gaps = [g for g, _ in gap_pairs]
    gaps_run = [g for g, had in gap_pairs if had]
    gaps_queued = [g for g, had in gap_pairs if not had]
    with p.lock:
        failovers = len(p.failovers)
    ms = lambda x: None if x is None else round(x * 1000, 1)
    res = {
        "seconds": a.seconds, "clients": a.clients, "workers": 2, "distinct_requests": len(jobs),
        "requests": stats.requests, "completed_exact": stats.completed, "kills": len(kills),
        "gateway_kills": len(stats.gw_kills), "gateway_kill_times": stats.gw_kills,
        "resumes_after_gateway_kill": stats.gateway_resumes,
        "pipeline_args": a.extra, "refused_then_retried": stats.refused,
        "resumes": stats.resumes, "resumes_from_earlier": stats.replayed_overlap,
        "failovers": failovers, "failovers_metric": metric_failovers,
        "mismatches": len(stats.mismatches), "lost": len(stats.lost),
        "gap_ms": {"n": len(gaps), "not_measured": skipped, "p50": ms(pct(gaps, 0.5)), "p99": ms(pct(gaps, 0.99)),
                   "max": ms(max(gaps) if gaps else None),
                   "had_tokens": {"n": len(gaps_run), "p50": ms(pct(gaps_run, 0.5)), "p99": ms(pct(gaps_run, 0.99))},
                   "had_none": {"n": len(gaps_queued), "p50": ms(pct(gaps_queued, 0.5)),
                                "p99": ms(pct(gaps_queued, 0.99))},
                   "kill_to_failover_logged": {"p50": ms(pct(detect, 0.5)), "p99": ms(pct(detect, 0.99))}},
        "starved_over_30s": stats.starved,
        "request_s": {"p50": round(pct(stats.durations, 0.5) or 0, 2), "p99": round(pct(stats.durations, 0.99) or 0, 2),
                      "max": round(max(stats.durations), 2) if stats.durations else None},
        "no_worker_alive_s": {"times": len(down), "total": round(sum(down), 2),
                              "longest": round(max(down), 2) if down else 0},
        "client_failures": client_errors, "supervisor_exit": rc,
        "mismatch_examples": stats.mismatches[:10], "lost_examples": stats.lost[:10],
        "kill_times": kill_times, "worker_queued_running_cap": timeline,
    }
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    g = res["gap_ms"]
    print(f"chaos: {a.seconds:.0f} s, 2 workers, {a.clients} clients (JSON and msgpack, greedy and seeded)")
    print(f"  requests        {stats.requests}  (complete and exact: {stats.completed}; refused before "
          f"acceptance and tried again: {stats.refused or 0})")
    print(f"  worker kills    {len(kills)}  (no worker process alive {res['no_worker_alive_s']['total']} s in all)")
    print(f"  gateway kills   {len(stats.gw_kills)}  (at {stats.gw_kills} s; {stats.gateway_resumes} generations "
          f"resumed on the restarted gateway, {stats.refused.get('gateway_gone', 0)} requests sent again)")
    print(f"  resumes         {stats.resumes}  ({stats.replayed_overlap} from an earlier position)")
    print(f"  failovers       {failovers}  (gateway metric: {metric_failovers})")
    print(f"  mismatches      {len(stats.mismatches)}")
    print(f"  lost            {len(stats.lost)}")
    print(f"  gap after kill  p50 {g['p50']} ms, p99 {g['p99']} ms, max {g['max']} ms over {g['n']} streams "
          f"({g['not_measured']} not measured: ended or disconnected)")
    print(f"                  streams that had tokens: p50 {g['had_tokens']['p50']} ms, p99 {g['had_tokens']['p99']} ms "
          f"({g['had_tokens']['n']}); still queued: p50 {g['had_none']['p50']} ms, p99 {g['had_none']['p99']} ms "
          f"({g['had_none']['n']})")
    print(f"                  the gateway moved them (its log line) p50 "
          f"{g['kill_to_failover_logged']['p50']} ms, p99 {g['kill_to_failover_logged']['p99']} ms after the kill")
    print(f"  request time    p50 {res['request_s']['p50']} s, p99 {res['request_s']['p99']} s, max "
          f"{res['request_s']['max']} s; {stats.starved} heard nothing for > {SLOW_S:.0f} s at some point")
    for x in (stats.mismatches[:5] + stats.lost[:5]):
        print("   ", x)
    print(f"  written to {out}")
    ok = not stats.mismatches and not stats.lost and client_errors == 0 and stats.requests > 0 and rc == 0
    return 0 if ok else 1


# --- soak ----------------------------------------------------------------------------------------

async def run_soak(a, p, jobs, refs):
    stats = Stats()
    load = Load(p.url, jobs, refs, a.clients, a.seed, a.drop_p, 0.2, stats)
    load.close_on_pause = True
    samples, checkpoints = [], {}
    t0 = time.monotonic()
    warm = min(a.warmup, a.seconds / 2)
    tasks = [asyncio.ensure_future(load.client(i)) for i in range(a.clients)]

    def sample(tag):
        row = {"t": round(time.monotonic() - t0, 1), "tag": tag, "connected": load.connected}
        for name, pid in p.processes().items():
            row[name] = proc_sample(pid) if pid else None
            if row[name]:
                row[name]["pid"] = pid
        samples.append(row)
        return row

    async def checkpoint(tag):
        quiet = await load.pause()
        await asyncio.sleep(2)  # the gateway closes what the pause left half done
        # Like with like: no connection open (the pause closed them all, so
        # what the last few allocated is not counted), nothing kept for a
        # resume (generations outlive
        # their connections by resume_window_s, the workers' journals keep
        # finished ones for journal_window_s), and the gateway idle long
        # enough to give its free memory back.
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + a.window_s + 15
        while time.monotonic() < deadline:
            kept = await loop.run_in_executor(None, p.metric, "rill_gateway_resumable_streams")
            if not kept:
                break
            await asyncio.sleep(1)
        await asyncio.sleep(max(0.0, a.window_s - 2) + 2)  # the journals' window, and the gateway's trim
        row = sample(tag)
        row["quiet"] = quiet
        for m in ("rill_gateway_active_streams", "rill_gateway_resumable_streams", "rill_gateway_connections"):
            row[m] = await loop.run_in_executor(None, p.metric, m)
        checkpoints[tag] = row
        log(f"{row['t']:6.0f} s {tag}: " + ", ".join(
            f"{n} {row[n]['rss_anon_kb']} KiB/{row[n]['fds']} fds" for n in ("supervisor", "gateway", "w0", "w1")
            if row.get(n)))
        load.resume()

    next_sample = t0
    warmed = False
    while time.monotonic() - t0 < a.seconds:
        await asyncio.sleep(0.5)
        now = time.monotonic()
        if not warmed and now - t0 >= warm:
            warmed = True
            await checkpoint("warm")
        if now >= next_sample:
            next_sample = now + a.sample_s
            sample("load")
    await checkpoint("end")
    load.stopping = True
    load.resume()
    done, pending = await asyncio.wait(tasks, timeout=STALL_S + 30)
    for t in pending:
        t.cancel()
    errors = [t.exception() for t in done if not t.cancelled() and t.exception()]
    for e in errors[:5]:
        log(f"a client failed: {e!r}")
    return stats, samples, checkpoints, len(errors)


def soak(a):
    build = os.path.abspath(a.build)
    out = a.json or os.path.join(build, "soak", "soak.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    model = ensure_model(build)
    jobs = make_jobs(a.jobs, a.seed)
    refs = references(build, model, jobs, a.refs_cache or os.path.join(os.path.dirname(model), "chaos-refs.json"))
    log_path = os.path.join(os.path.dirname(out), "soak.log")
    p = Pipeline(build, model, 2, log_path, extra=a.extra)
    try:
        p.wait_ready()
        log(f"pipeline {p.instance} on port {p.port}: {a.clients} clients, {a.seconds:.0f} s, log {log_path}")
        before = p.processes()
        stats, samples, cps, client_errors = asyncio.run(run_soak(a, p, jobs, refs))
        after = p.processes()
    finally:
        rc = p.stop()
    with p.lock:
        bad_log = list(p.warnings)
    procs = {}
    failed = []
    for name in ("supervisor", "gateway", "w0", "w1"):
        w, e = cps.get("warm", {}).get(name), cps.get("end", {}).get(name)
        if not w or not e:
            failed.append(f"{name}: not sampled")
            continue
        growth = (e["rss_anon_kb"] - w["rss_anon_kb"]) / w["rss_anon_kb"] * 100
        procs[name] = {"warm": w, "end": e, "rss_growth_pct": round(growth, 3), "fd_change": e["fds"] - w["fds"]}
        # 1% of the supervisor's ~2 MB is five pages: below SLACK_KB a change
        # is the allocator's page granularity, not a trend.
        if growth >= 1.0 and e["rss_anon_kb"] - w["rss_anon_kb"] > SLACK_KB:
            failed.append(f"{name}: RSS grew {growth:.2f}% after warm-up")
        if e["fds"] != w["fds"]:
            failed.append(f"{name}: fds {w['fds']} -> {e['fds']}")
    if before != after:
        failed.append(f"a process was replaced: {before} -> {after}")
    if not all(cps.get(t, {}).get("quiet") for t in ("warm", "end")):
        failed.append("the load did not pause for a checkpoint")
    res = {"seconds": a.seconds, "clients": a.clients, "warmup_s": min(a.warmup, a.seconds / 2),
           "requests": stats.requests, "completed_exact": stats.completed, "resumes": stats.resumes,
           "mismatches": len(stats.mismatches), "lost": len(stats.lost), "client_failures": client_errors,
           "log_warnings": len(bad_log), "log_warning_examples": bad_log[:10], "processes": procs,
           "failed": failed, "supervisor_exit": rc, "samples": samples,
           "mismatch_examples": stats.mismatches[:10], "lost_examples": stats.lost[:10]}
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"soak: {a.seconds:.0f} s, 2 workers, {a.clients} clients, warm-up {res['warmup_s']:.0f} s")
    print(f"  requests {stats.requests} (complete and exact: {stats.completed}), resumes {stats.resumes}, "
          f"mismatches {len(stats.mismatches)}, lost {len(stats.lost)}, log warnings {len(bad_log)}")
    print(f"  {'process':<11}{'RssAnon warm':>14}{'RssAnon end':>14}{'growth':>9}{'fds warm':>10}{'fds end':>9}")
    for name, v in procs.items():
        print(f"  {name:<11}{v['warm']['rss_anon_kb']:>10} KiB{v['end']['rss_anon_kb']:>10} KiB"
              f"{v['rss_growth_pct']:>8.2f}%{v['warm']['fds']:>10}{v['end']['fds']:>9}")
    for x in failed + stats.mismatches[:5] + stats.lost[:5] + bad_log[:5]:
        print("   ", x)
    print(f"  written to {out}")
    ok = (not failed and not stats.mismatches and not stats.lost and not client_errors and not bad_log
          and stats.requests > 0 and rc == 0)
    return 0 if ok else 1


def main():
    global STALL_S
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("chaos", "soak"))
    ap.add_argument("--build", default=os.environ.get("RILL_BUILD", os.path.join(ROOT, "build")))
    ap.add_argument("--seconds", type=float, default=None, help="default: 120 (chaos), 1800 (soak)")
    ap.add_argument("--clients", type=int, default=None, help="default: 200 (chaos), 40 (soak)")
    ap.add_argument("--jobs", type=int, default=32, help="distinct requests the clients draw from")
    ap.add_argument("--drop-p", type=float, default=0.25, help="share of requests whose connection drops")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--gateway-kills", type=int, default=1, help="chaos: kill -9 the gateway this many times")
    ap.add_argument("--stall-s", type=float, default=STALL_S, help="a request silent this long is lost")
    ap.add_argument("--warmup", type=float, default=90,
                    help="soak: warm-up seconds, at most half the run (the gateway keeps what it sent for "
                         "resume_window_s, 60 s: memory fills up over that time)")
    ap.add_argument("--sample-s", type=float, default=5, help="soak: seconds between samples")
    ap.add_argument("--window-s", type=float, default=15,
                    help="soak: resume_window_s and journal_window_s of the pipeline; each checkpoint waits them out")
    ap.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                    help="a config key for the pipeline (rill-up --KEY VALUE), e.g. --set restart_window_s 5")
    ap.add_argument("--refs-cache", default=None, help="default: BUILD/test-models/chaos-refs.json")
    ap.add_argument("--json", default=None, help="default: BUILD/chaos/chaos.json or BUILD/soak/soak.json")
    a = ap.parse_args()
    STALL_S = a.stall_s
    a.extra = [x for k, v in a.set for x in (f"--{k}", v)]
    if a.mode == "soak" and not any(k in ("resume_window_s", "journal_window_s") for k, _ in a.set):
        a.extra += ["--resume_window_s", str(int(a.window_s)), "--journal_window_s", str(int(a.window_s))]
    if a.seconds is None:
        a.seconds = 120.0 if a.mode == "chaos" else 1800.0
    if a.clients is None:
        a.clients = 200 if a.mode == "chaos" else 40
    try:
        return chaos(a) if a.mode == "chaos" else soak(a)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        print(f"chaos.py: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
