#!/usr/bin/env python3
"""bench-vs-llamacpp.py — rill's pipeline against llama.cpp's llama-server,
side by side on one GGUF: time to first token (TTFT) under a burst and under
Poisson arrivals.

    tools/bench-vs-llamacpp.py --build build [--llama-server PATH]
        [--model GGUF] [--runs 3] [--modes burst,poisson] [--prompts short,long]
        [--burst 32] [--burst-tokens 64] [--rate 2.5] [--rate-long 1.5] [--duration 20]
        [--warmup 3] [--max-tokens 64:128] [--threads 2] [--out FILE]

Both servers get the same requests from one client (this script, stdlib
only, one thread per request, one connection per request, the same code
path up to the wire format): the same prompts, max_tokens, greedy sampling
(temperature 0) and ignore_eos, so both generate the same number of tokens.
rill is driven through its WebSocket (`generate`, rill.json.v1), the way
rill-bench does; llama-server through `POST /completion` with
"stream": true (one SSE event per token).

Loads (each against a fresh server, started for the run and stopped after):
  burst N    N connections opened, then N requests sent at once
             (--burst-tokens tokens each); the run ends when all have ended;
  poisson R  arrivals at R/s (exponential gaps, --arrival-seed) for
             --warmup + --duration s, max_tokens drawn from --max-tokens;
             only requests sent after --warmup count; tokens/s counts
             tokens received in the window; every request is run to its end.
Prompts: "short" draws 4..40 words (as bench-ttft.sh), "long" 185..195
words (~200 tokens: ~1.05 a word); words are drawn from a fixed list with
the seed, so no two prompts share a prefix (no prompt cache helps).  Poisson
rates: --rate for short prompts, --rate-long for long ones.

Runs alternate between the servers (and which goes first) run by run.
Before each run (server started and warmed by one 4-token request) the
script waits, up to --quiet-timeout s, for the other processes on the
machine to use < --quiet-pct % of one core over 2 s (/proc/stat minus the
servers' and this script's own CPU); what it saw, and the other processes'
CPU during the run, are recorded.

llama-server runs with -t THREADS -np max(32, burst) -c np x per-request
context (--ctx-per, default: the longest prompt + max_tokens, rounded up to
256), continuous batching and flash attention at its defaults
(--llama-args adds flags).  rill runs one rill-worker (--threads THREADS)
and one rill-gateway, as tools/bench-ttft.sh starts them (--worker-args,
--gateway-args add flags).

Output: every run's figures and the medians per load and server (TTFT
p50/p90/p99, inter-token p50/p99, tokens/s, in flight mean/max, prompt
tokens, noise) in --out (default BUILD/bench/vs-llamacpp.json), and a
table with the ratios rill/llama.cpp.  Exit 0 (also when a goal is
missed: the goals are printed), 2 on bad setup, 1 when a run failed.
"""

import argparse
import base64
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")

WORDS = (
    "the of and to in is was that for on with as by at from his her they this had not are but "
    "be have one all were we when there can an your which their said if do will each about how up "
    "out them then she many some so these would other into has more two like him see time could "
    "no make than first been its who now people my made over did down only way find use may water "
    "long little very after words called just where most know get through back much before go "
    "good new write our used me man too any day same right look think also around another came "
    "come work three word must because does part even place well such here take why things help "
    "put years different away again off went old number great tell men say small every found "
    "still between name should home big give air line set own under read last never us left end "
    "along while might next sound below saw something thought both few those always looked show "
    "large often together asked house world going want school important until form food keep "
    "children feet land side without boy once animals life enough took sometimes four head above "
    "kind began almost live page got earth need far hand high year mother light parts country "
    "father let night following picture being study second eyes soon times story boys since white "
    "days ever paper hard near sentence better best across during today others however sure means "
    "knew its try told young miles sun ways thing whole hear example heard several change answer "
    "room sea against top turned learn point city play toward five using himself usually"
).split()

# The model's byte tokens <0x80>..<0xFF> (ids 131..258 in its SentencePiece
# vocabulary) banned on llama-server: a lone one (the model does write
# <0xC2> alone) is invalid UTF-8, on which llama-server's output parser
# (common_chat_peg_parse, run on /completion too) fails and ends the
# stream with a 500 error mid-generation.  rill sends such bytes as U+FFFD.
# Banning changes which tokens llama.cpp writes after that point, not how
# many, nor the work per step (128 logit adds).
BAN_HIGH_BYTES = [[i, False] for i in range(131, 259)]

PROMPT_WORDS = {"short": (4, 40), "long": (185, 195)}


def die(msg, rc=2):
    print(f"bench-vs-llamacpp: {msg}", file=sys.stderr)
    sys.exit(rc)


def pct(xs, p):
    """The p-th percentile (0..100) of xs, by linear interpolation."""
    if not xs:
        return 0.0
    s = sorted(xs)
    k = (len(s) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# --- the machine -------------------------------------------------------------------------------


def busy_ticks():
    """CPU ticks spent not idle by everything, summed over cores."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest is inside user)
    return v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)


def proc_ticks(pids):
    """utime + stime of the given processes (all their threads)."""
    t = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            t += int(rest[11]) + int(rest[12])
        except (OSError, IndexError, ValueError):
            pass
    return t


class CpuWatch:
    """Other processes' CPU (% of one core) between start() and stop()."""

    def __init__(self, pids):
        self.pids = list(pids) + [os.getpid()]

    def start(self):
        self.t0, self.b0, self.o0 = time.monotonic(), busy_ticks(), proc_ticks(self.pids)

    def stop(self):
        dt = time.monotonic() - self.t0
        busy = busy_ticks() - self.b0
        ours = proc_ticks(self.pids) - self.o0
        return {
            "other_cpu_pct": round(max(0, busy - ours) / CLK_TCK / dt * 100, 1),
            "ours_cpu_pct": round(ours / CLK_TCK / dt * 100, 1),
        }


def wait_quiet(pids, limit_pct, timeout_s):
    """Wait until the other processes use < limit_pct % of a core over 2 s."""
    t_end = time.monotonic() + timeout_s
    waited = 0.0
    while True:
        w = CpuWatch(pids)
        w.start()
        time.sleep(2.0)
        r = w.stop()
        if r["other_cpu_pct"] < limit_pct or time.monotonic() >= t_end:
            r["quiet"] = r["other_cpu_pct"] < limit_pct
            r["waited_s"] = round(waited, 1)
            with open("/proc/loadavg") as f:
                r["loadavg1"] = float(f.read().split()[0])
            return r
        waited += 2.0


# --- the requests ------------------------------------------------------------------------------


def make_requests(mode, prompts, a):
    """The list of requests both servers get: dicts of at (s), prompt, max_tokens."""
    rng = random.Random(f"{a.arrival_seed}-{mode}-{prompts}")
    lo_w, hi_w = PROMPT_WORDS[prompts]

    def prompt():
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo_w, hi_w)))

    if mode == "burst":
        return [{"at": 0.0, "prompt": prompt(), "max_tokens": a.burst_tokens} for _ in range(a.burst)]
    lo_t, hi_t = a.max_tokens
    reqs, t = [], 0.0
    while True:
        t += rng.expovariate(a.rate[prompts])
        if t >= a.warmup + a.duration:
            return reqs
        reqs.append({"at": t, "prompt": prompt(), "max_tokens": rng.randint(lo_t, hi_t)})


# --- the clients -------------------------------------------------------------------------------


class Result:
    def __init__(self, req):
        self.req = req
        self.t_send = None
        self.t_first = None
        self.t_end = None
        self.token_times = []  # receive time of every token (coalesced ones share it)
        self.n_tokens = 0
        self.prompt_tokens = None
        self.error = None


def http_head(sock):
    """Read an HTTP response head; returns (status, headers dict, leftover bytes)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = sock.recv(65536)
        if not d:
            raise ConnectionError("connection closed in the response head")
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, rest


class Reader:
    """Buffered reads on a socket, recording when data came."""

    def __init__(self, sock, pending=b""):
        self.sock, self.buf = sock, pending

    def fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise ConnectionError("connection closed")
        self.buf += d

    def exactly(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def line(self):
        while b"\n" not in self.buf:
            self.fill()
        out, _, self.buf = self.buf.partition(b"\n")
        return out.rstrip(b"\r")


class LlamaClient:
    """llama-server: POST /completion, stream, one SSE event per token."""

    name = "llama.cpp"

    def __init__(self, port):
        self.port = port

    def connect(self):
        return socket.create_connection(("127.0.0.1", self.port), timeout=300)

    def run(self, sock, r, go):
        q = r.req
        body = json.dumps({
            "prompt": q["prompt"], "n_predict": q["max_tokens"], "stream": True, "temperature": 0,
            "ignore_eos": True, "return_tokens": True, "logit_bias": BAN_HIGH_BYTES,
        }).encode()
        head = (f"POST /completion HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        go()
        r.t_send = time.monotonic()
        sock.sendall(head + body)
        status, hdrs, rest = http_head(sock)
        rd = Reader(sock, rest)
        chunked = "chunked" in hdrs.get("transfer-encoding", "").lower()
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        pending = b""
        while True:
            if chunked:
                size = int(rd.line().split(b";")[0], 16)
                if size == 0:
                    break
                data = rd.exactly(size)
                rd.exactly(2)
            else:
                try:
                    rd.fill()
                except ConnectionError:
                    break
                data, rd.buf = rd.buf, b""
            now = time.monotonic()
            pending += data
            while b"\n\n" in pending:
                ev, pending = pending.split(b"\n\n", 1)
                for ln in ev.split(b"\n"):
                    if not ln.startswith(b"data: "):
                        continue
                    d = json.loads(ln[6:])
                    if "error" in d:
                        raise RuntimeError(f"server error: {d['error']}")
                    n = len(d["tokens"]) if isinstance(d.get("tokens"), list) else (1 if d.get("content") else 0)
                    if d.get("stop"):
                        r.prompt_tokens = d.get("tokens_evaluated")
                        pred = d.get("tokens_predicted")
                        # the last event may carry the final token's text and the summary
                        if n and r.n_tokens < (pred or 0):
                            r.add(now, n)
                        if pred is not None and pred != r.n_tokens:
                            raise RuntimeError(f"counted {r.n_tokens} tokens, the server says {pred}")
                        r.t_end = now
                        return
                    if n:
                        r.add(now, n)
        raise RuntimeError("the stream ended without stop")


class Conn:
    """A socket and the bytes read past the WebSocket handshake."""

    def __init__(self, sock, pending):
        self.sock, self.pending = sock, pending

    def sendall(self, b):
        self.sock.sendall(b)

    def close(self):
        self.sock.close()


class RillClient:
    """rill-gateway: WebSocket generate (rill.json.v1)."""

    name = "rill"

    def __init__(self, port, path="/stream"):
        self.port, self.path = port, path

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=300)
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                   f"Sec-WebSocket-Protocol: rill.json.v1\r\n\r\n").encode())
        status, _, rest = http_head(s)
        if status != 101:
            raise RuntimeError(f"WebSocket upgrade answered {status}")
        return Conn(s, rest)

    @staticmethod
    def frame(payload, opcode=1):
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            hdr = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        return hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    def run(self, sock, r, go):
        q = r.req
        msg = json.dumps({
            "type": "generate", "id": "b", "prompt": q["prompt"], "max_tokens": q["max_tokens"],
            "params": {"temperature": 0, "ignore_eos": True},
        }).encode()
        fr = self.frame(msg)
        rd = Reader(sock.sock, sock.pending)
        go()
        r.t_send = time.monotonic()
        sock.sendall(fr)
        text = b""
        while True:
            b0, b1 = rd.exactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", rd.exactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", rd.exactly(8))[0]
            payload = rd.exactly(n)
            now = time.monotonic()
            op = b0 & 0x0F
            if op == 8:
                raise RuntimeError("the server closed the WebSocket")
            if op == 9:
                sock.sendall(self.frame(payload, 10))
                continue
            if op not in (0, 1):
                continue
            text += payload
            if not b0 & 0x80:
                continue
            d = json.loads(text)
            text = b""
            t = d.get("type")
            if t == "token":
                r.add(now, 1)
            elif t == "tokens":
                r.add(now, len(d["tokens"]))
            elif t == "complete":
                r.t_end = now
                return
            elif t == "error":
                raise RuntimeError(f"server error: {d.get('error')}")


def _add(self, now, n):
    if self.t_first is None:
        self.t_first = now
    self.token_times.extend([now] * n)
    self.n_tokens += n


Result.add = _add


def drive(client, reqs, mode):
    """Send reqs (burst: all at once after connecting; poisson: at their
    times) and return (results, t0, in-flight samples)."""
    results = [Result(q) for q in reqs]
    inflight = [0]
    lock = threading.Lock()
    threads = []

    def one(r, sock, go):
        counted = False
        try:
            if sock is None:
                sock = client.connect()
            with lock:
                inflight[0] += 1
                counted = True
            client.run(sock, r, go)
        except Exception as e:  # noqa: BLE001 — any failure is the request's error, reported
            r.error = f"{type(e).__name__}: {e}"
        finally:
            if counted:
                with lock:
                    inflight[0] -= 1
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass

    samples = []
    stop_sampling = threading.Event()

    def sampler():
        while not stop_sampling.is_set():
            with lock:
                samples.append((time.monotonic(), inflight[0]))
            time.sleep(0.01)

    if mode == "burst":
        socks = [client.connect() for _ in reqs]
        barrier = threading.Barrier(len(reqs) + 1)
        for r, s in zip(results, socks):
            th = threading.Thread(target=one, args=(r, s, barrier.wait), daemon=True)
            th.start()
            threads.append(th)
        sp = threading.Thread(target=sampler, daemon=True)
        sp.start()
        t0 = time.monotonic()
        barrier.wait()
    else:
        sp = threading.Thread(target=sampler, daemon=True)
        sp.start()
        t0 = time.monotonic()
        for r in results:
            d = t0 + r.req["at"] - time.monotonic()
            if d > 0:
                time.sleep(d)
            th = threading.Thread(target=one, args=(r, None, lambda: None), daemon=True)
            th.start()
            threads.append(th)
    for th in threads:
        th.join(600)
    stop_sampling.set()
    sp.join()
    return results, t0, samples


def figures(results, t0, samples, mode, a):
    """The run's figures from its results."""
    if mode == "burst":
        win_lo, win_hi = t0, max((r.t_end or t0) for r in results)
        meas = results
    else:
        win_lo, win_hi = t0 + a.warmup, t0 + a.warmup + a.duration
        meas = [r for r in results if r.req["at"] >= a.warmup]
    ok = [r for r in meas if r.error is None and r.t_first is not None]
    ttft = [(r.t_first - r.t_send) * 1000 for r in ok]
    itl = [(y - x) * 1000 for r in ok for x, y in zip(r.token_times, r.token_times[1:])]
    if mode == "burst":
        toks = sum(r.n_tokens for r in ok)
    else:
        toks = sum(1 for r in results if r.error is None for t in r.token_times if win_lo <= t < win_hi)
    span = max(1e-9, win_hi - win_lo)
    infl = [n for t, n in samples if win_lo <= t < win_hi]
    per_stream = [(r.n_tokens - 1) / (r.t_end - r.t_first) for r in ok if r.t_end and r.n_tokens > 1
                  and r.t_end > r.t_first]
    ptoks = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    return {
        "requests": {"sent": len(meas), "ok": len(ok), "errored": len(meas) - len(ok),
                     "errors": sorted({r.error for r in meas if r.error})[:5],
                     "tokens_expected": sum(r.req["max_tokens"] for r in meas),
                     "tokens_received": sum(r.n_tokens for r in ok)},
        "ttft_ms": {"p50": pct(ttft, 50), "p90": pct(ttft, 90), "p99": pct(ttft, 99), "max": max(ttft, default=0)},
        "itl_ms": {"p50": pct(itl, 50), "p99": pct(itl, 99)},
        "tokens_per_s": toks / span,
        "stream_tokens_per_s_median": statistics.median(per_stream) if per_stream else 0,
        "in_flight": {"mean": statistics.mean(infl) if infl else 0, "max": max(infl, default=0)},
        "prompt_tokens_mean": statistics.mean(ptoks) if ptoks else None,
        "window_s": span,
    }


# --- the servers -------------------------------------------------------------------------------


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def http_get_status(port, path):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        st, _, _ = http_head(s)
        s.close()
        return st
    except (OSError, ConnectionError, ValueError, IndexError):
        return None


class Server:
    def __init__(self, a, tmp):
        self.a, self.tmp, self.procs, self.port = a, tmp, [], None

    def wait_ready(self, path, timeout=60):
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if http_get_status(self.port, path) == 200:
                return
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{self.name}: a process died at start (logs in {self.tmp})")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: not ready in {timeout} s")

    def pids(self):
        return [p.pid for p in self.procs]

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []

    def tail(self):
        out = []
        for f in sorted(os.listdir(self.tmp)):
            if f.endswith(".log"):
                with open(os.path.join(self.tmp, f), errors="replace") as fh:
                    out.append(f"--- {f}\n" + "".join(fh.readlines()[-15:]))
        return "\n".join(out)


class LlamaServer(Server):
    name = "llama.cpp"

    def start(self):
        a = self.a
        self.port = free_port()
        cmd = [a.llama_server, "-m", a.model, "--host", "127.0.0.1", "--port", str(self.port),
               "-t", str(a.threads), "-np", str(a.np), "-c", str(a.np * a.ctx_per)] + a.llama_args.split()
        self.cmd = cmd
        log = open(os.path.join(self.tmp, "llama-server.log"), "w")
        self.procs = [subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)]
        self.wait_ready("/health", 120)
        return LlamaClient(self.port)


class RillServer(Server):
    name = "rill"

    def start(self):
        a = self.a
        self.port = free_port()
        self.instance = f"vl{os.getpid()}{random.randrange(1 << 24):06x}"
        common = ["--instance", self.instance, "--run_dir", self.tmp, "--log_level", a.rill_log_level]
        wcmd = [os.path.join(a.build, "rill-worker")] + common + ["--model", a.model, "--threads", str(a.threads)] \
            + a.worker_args.split()
        gcmd = [os.path.join(a.build, "rill-gateway")] + common + [
            "--listen", f"127.0.0.1:{self.port}",
            "--worker_list", f"ipc://{self.tmp}/w0.sock@/rill-{os.getuid()}-{self.instance}-w0"] + a.gateway_args.split()
        self.cmd = wcmd + ["&&"] + gcmd
        self.wlog = os.path.join(self.tmp, "worker.log")
        wl = open(self.wlog, "w")
        gl = open(os.path.join(self.tmp, "gateway.log"), "w")
        self.procs = [subprocess.Popen(wcmd, stdout=wl, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)]
        self.procs.append(subprocess.Popen(gcmd, stdout=gl, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        self.wait_ready("/ready", 60)
        return RillClient(self.port)

    def stop(self):
        super().stop()
        uid = os.getuid()
        for f in os.listdir("/dev/shm"):
            if f.startswith(f"rill-{uid}-{self.instance}-"):
                try:
                    os.unlink(os.path.join("/dev/shm", f))
                except OSError:
                    pass


# --- main --------------------------------------------------------------------------------------

FIGS = {
    "ttft_p50": lambda d: d["ttft_ms"]["p50"], "ttft_p90": lambda d: d["ttft_ms"]["p90"],
    "ttft_p99": lambda d: d["ttft_ms"]["p99"], "itl_p50": lambda d: d["itl_ms"]["p50"],
    "itl_p99": lambda d: d["itl_ms"]["p99"], "tok_s": lambda d: d["tokens_per_s"],
    "stream_tok_s": lambda d: d["stream_tokens_per_s_median"],
    "inflight_mean": lambda d: d["in_flight"]["mean"], "inflight_max": lambda d: d["in_flight"]["max"],
    "errored": lambda d: d["requests"]["errored"],
    "other_cpu_before": lambda d: d["machine"]["before"]["other_cpu_pct"],
    "other_cpu_during": lambda d: d["machine"]["during"]["other_cpu_pct"],
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default=os.path.join(SRC, "build"), help="rill's build dir (rill-worker, rill-gateway, rill-mkmodel)")
    p.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER", ""), help="llama-server binary (env LLAMA_SERVER)")
    p.add_argument("--model", default="", help="GGUF both load (default BUILD/bench-models/134m-f32.gguf, made with rill-mkmodel)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--modes", default="burst,poisson")
    p.add_argument("--prompts", default="short,long", help="short (4..40 words) and/or long (185..195 words, ~200 tokens)")
    p.add_argument("--burst", type=int, default=32)
    p.add_argument("--burst-tokens", type=int, default=64)
    p.add_argument("--rate", type=float, default=2.5, help="poisson arrivals per second, short prompts")
    p.add_argument("--rate-long", type=float, default=1.5, help="poisson arrivals per second, long prompts")
    p.add_argument("--duration", type=float, default=20)
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--max-tokens", default="64:128", help="poisson: max_tokens drawn from LO:HI")
    p.add_argument("--arrival-seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="compute threads of each server")
    p.add_argument("--ctx-per", type=int, default=0, help="llama-server context per slot (0: from the requests)")
    p.add_argument("--llama-args", default="", help="extra llama-server flags")
    p.add_argument("--worker-args", default="", help="extra rill-worker flags")
    p.add_argument("--gateway-args", default="", help="extra rill-gateway flags")
    p.add_argument("--rill-log-level", default="warn", help="debug: the worker logs each first token's trace")
    p.add_argument("--keep-logs", default="", help="copy each run's server logs into this directory")
    p.add_argument("--sides", default="llama.cpp,rill")
    p.add_argument("--quiet-pct", type=float, default=15, help="other processes' CPU (%% of a core) counted as quiet")
    p.add_argument("--quiet-timeout", type=float, default=300, help="longest wait for a quiet machine before a run (s)")
    p.add_argument("--out", default="")
    a = p.parse_args()
    lo, _, hi = a.max_tokens.partition(":")
    a.max_tokens = (int(lo), int(hi or lo))
    a.rate = {"short": a.rate, "long": a.rate_long}
    a.modes = [m for m in a.modes.split(",") if m]
    a.prompt_sets = [m for m in a.prompts.split(",") if m]
    a.sides = [s for s in a.sides.split(",") if s]
    for m in a.modes:
        if m not in ("burst", "poisson"):
            die(f"unknown mode {m!r} (burst, poisson)")
    for m in a.prompt_sets:
        if m not in PROMPT_WORDS:
            die(f"unknown prompt set {m!r} (short, long)")
    a.build = os.path.abspath(a.build)
    a.out = a.out or os.path.join(a.build, "bench", "vs-llamacpp.json")
    a.np = max(32, a.burst)
    if not a.ctx_per:
        longest = int(max(PROMPT_WORDS[m][1] for m in a.prompt_sets) * 1.6) + 8
        a.ctx_per = (longest + max(a.burst_tokens, a.max_tokens[1]) + 255) // 256 * 256
    return a


def check_setup(a):
    if "llama.cpp" in a.sides:
        if not a.llama_server or not os.access(a.llama_server, os.X_OK):
            die(f"no llama-server ({a.llama_server or 'give --llama-server PATH or LLAMA_SERVER'}): build it from "
                "llama.cpp's source, e.g.\n  git clone https://github.com/ggml-org/llama.cpp && cd llama.cpp && "
                "cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF && cmake --build build -j2 --target llama-server\n"
                "  (or the source node-llama-cpp ships: npm pack node-llama-cpp, llama/llama.cpp inside) and pass "
                "build/bin/llama-server")
        v = subprocess.run([a.llama_server, "--version"], capture_output=True, text=True)
        a.llama_version = (v.stdout + v.stderr).strip().replace("\n", "; ")
    if "rill" in a.sides:
        for b in ("rill-worker", "rill-gateway"):
            if not os.access(os.path.join(a.build, b), os.X_OK):
                die(f"{a.build}/{b} is missing: build it first (make B={os.path.relpath(a.build, SRC)} all)")
    if not a.model:
        a.model = os.path.join(a.build, "bench-models", "134m-f32.gguf")
        if not os.path.exists(a.model):
            mk = os.path.join(a.build, "rill-mkmodel")
            if not os.access(mk, os.X_OK):
                die(f"{a.model} is missing and so is {mk}")
            os.makedirs(os.path.dirname(a.model), exist_ok=True)
            subprocess.run([mk, "--shape", "134M", "--dtype", "f32", "--out", a.model + ".tmp"], cwd=SRC,
                           check=True, stdout=subprocess.DEVNULL)
            os.rename(a.model + ".tmp", a.model)
    if not os.path.exists(a.model):
        die(f"no model {a.model}")


def warm(client):
    r = Result({"prompt": "hello world", "max_tokens": 4})
    s = client.connect()
    try:
        client.run(s, r, lambda: None)
    finally:
        s.close()


def main():
    a = parse_args()
    check_setup(a)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    if a.keep_logs:
        os.makedirs(a.keep_logs, exist_ok=True)
    loads = [(m, ps) for ps in a.prompt_sets for m in a.modes]
    runs = {}
    failed = False
    for run in range(1, a.runs + 1):
        for mode, ps in loads:
            reqs = make_requests(mode, ps, a)
            order = a.sides if run % 2 else list(reversed(a.sides))
            for side in order:
                tmp = tempfile.mkdtemp(prefix="rill-vsl-")
                srv = LlamaServer(a, tmp) if side == "llama.cpp" else RillServer(a, tmp)
                try:
                    client = srv.start()
                    warm(client)
                    before = wait_quiet(srv.pids(), a.quiet_pct, a.quiet_timeout)
                    w = CpuWatch(srv.pids())
                    w.start()
                    results, t0, samples = drive(client, reqs, mode)
                    during = w.stop()
                    f = figures(results, t0, samples, mode, a)
                    f["machine"] = {"before": before, "during": during}
                    f["command"] = srv.cmd
                    runs.setdefault(f"{mode}-{ps}", {}).setdefault(side, []).append(f)
                    print(f"bench-vs-llamacpp: run {run} {mode} {ps} {side}: TTFT p50 {f['ttft_ms']['p50']:.0f} "
                          f"p99 {f['ttft_ms']['p99']:.0f} ms, {f['tokens_per_s']:.0f} tok/s, in flight "
                          f"{f['in_flight']['mean']:.1f}, errored {f['requests']['errored']}, other CPU before "
                          f"{before['other_cpu_pct']}% (waited {before['waited_s']} s) during {during['other_cpu_pct']}%",
                          file=sys.stderr, flush=True)
                    if f["requests"]["errored"]:
                        print(f"  errors: {f['requests']['errors']}", file=sys.stderr)
                        failed = True
                except Exception as e:  # noqa: BLE001 — reported with the server's logs, then the next run
                    print(f"bench-vs-llamacpp: run {run} {mode} {ps} {side} failed: {e}\n{srv.tail()}", file=sys.stderr)
                    failed = True
                finally:
                    srv.stop()
                    if a.keep_logs:
                        for fn in os.listdir(tmp):
                            if fn.endswith(".log"):
                                shutil.copy(os.path.join(tmp, fn), os.path.join(a.keep_logs, f"{mode}-{ps}-{run}-{fn}"))
                    shutil.rmtree(tmp, ignore_errors=True)

    summary = {}
    for load, by_side in runs.items():
        for side, rs in by_side.items():
            summary.setdefault(load, {})[side] = {
                k: {"median": statistics.median(fn(d) for d in rs), "runs": [round(fn(d), 3) for d in rs],
                    "noise_pct": round((max(fn(d) for d in rs) - min(fn(d) for d in rs))
                                       / (statistics.median(fn(d) for d in rs) or 1) * 100, 1)}
                for k, fn in FIGS.items()}
            pt = [d["prompt_tokens_mean"] for d in rs if d["prompt_tokens_mean"] is not None]
            if pt:
                summary[load][side]["prompt_tokens_mean"] = statistics.median(pt)
    goals = {}
    for load, s in summary.items():
        if "rill" in s and load.startswith("poisson"):
            goals[f"{load}: rill TTFT p99 < 200 ms"] = s["rill"]["ttft_p99"]["median"] < 200
        if "rill" in s and "llama.cpp" in s and load.startswith("burst"):
            r, l = s["rill"], s["llama.cpp"]
            goals[f"{load}: rill TTFT p99 <= llama.cpp's"] = r["ttft_p99"]["median"] <= l["ttft_p99"]["median"]
            goals[f"{load}: rill TTFT p50 <= 0.5 x llama.cpp's"] = r["ttft_p50"]["median"] <= 0.5 * l["ttft_p50"]["median"]
    doc = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": subprocess.run(["git", "-C", SRC, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "llama_server": getattr(a, "llama_version", None), "model": a.model, "threads": a.threads,
        "settings": {k: v for k, v in vars(a).items() if isinstance(v, (int, float, str, list, tuple))},
        "summary": summary, "goals": goals, "runs": runs,
    }
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)

    cols = ["ttft_p50", "ttft_p90", "ttft_p99", "itl_p50", "itl_p99", "tok_s", "stream_tok_s", "inflight_mean",
            "other_cpu_during"]
    print(f"medians of {a.runs} runs (noise: (max-min)/median of the runs, %); {a.out}")
    print(f"{'load':14} {'side':10} " + " ".join(f"{c:>16}" for c in cols))
    for load, s in summary.items():
        for side in a.sides:
            if side in s:
                print(f"{load:14} {side:10} " + " ".join(
                    f"{s[side][c]['median']:9.1f} ±{s[side][c]['noise_pct']:4.0f}%" for c in cols))
        if "rill" in s and "llama.cpp" in s:
            print(f"{load:14} {'rill/llama':10} " + " ".join(
                f"{(s['rill'][c]['median'] / s['llama.cpp'][c]['median'] if s['llama.cpp'][c]['median'] else 0):16.2f}"
                for c in cols))
    for g, ok in goals.items():
        print(f"goal {'met   ' if ok else 'MISSED'}  {g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
