"""An independent test client for the gateway's WebSocket protocols.

rill.json.v1 (text frames; the default when the client names no
subprotocol) and rill.msgpack.v1 (binary frames) carry the same messages.
The client checks the framing it receives (text for JSON, binary for
msgpack), expands "tokens" frames (several coalesced tokens) into single
token items, and keeps each generation's messages so a test can check their
order: accepted, tokens in position order, then one terminal message
(complete or error), nothing after it.
"""
import asyncio
import json
import socket
import subprocess
import time
from functools import lru_cache

import msgpack
import websockets

import conftest

JSON = "rill.json.v1"
MSGPACK = "rill.msgpack.v1"

# Every sampling parameter the worker CLI and the gateway both take.  The
# two have different defaults (the CLI: top_k 0, min_p 0; the gateway:
# top_k 40, min_p 0.05), so comparisons pass all of them explicitly.
GREEDY = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}
SAMPLED = {"temperature": 0.9, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1}

SUMMARY_FIELDS = ("total_tokens", "session_duration_sec", "time_to_first_token_ms", "average_token_latency_ms",
                  "p95_token_latency_ms", "average_throughput_tokens_per_sec",
                  "end_to_end_throughput_tokens_per_sec", "max_memory_usage_mb", "error_count", "error_rate",
                  "most_common_batch_size")

TIMEOUT = 60.0  # seconds any single await may take before the test fails
_connects = 0    # Client.connect calls so far


def sampling(base, seed=None, **more):
    p = dict(base)
    if seed is not None:
        p["seed"] = seed
    p.update(more)
    return p


def cli_flags(params):
    """The worker CLI flags for the same sampling parameters."""
    flag = {"temperature": "--temperature", "top_p": "--top-p", "top_k": "--top-k", "min_p": "--min-p",
            "repetition_penalty": "--repeat-penalty", "presence_penalty": "--presence-penalty",
            "frequency_penalty": "--frequency-penalty", "seed": "--seed"}
    out = []
    for k, v in params.items():
        if k == "stop":
            for s in v:
                out += ["--stop", s]
        elif k == "ignore_eos":
            out += ["--ignore-eos"] if v else []
        elif k in flag:
            out += [flag[k], str(v)]
    return out


class Stream(list):
    """[(position, token id, text)] and how it ended (.finish)."""
    finish = None


@lru_cache(maxsize=None)
def _expected(model, prompt, n, frozen):
    lines = conftest.worker_stream(model, prompt, n, *cli_flags(dict(frozen)))
    return tuple((l["position"], l["id"], l["text"]) for l in lines), lines[-1].get("finish") if lines else None


def expected(model, prompt, n, params):
    """The worker's standalone output for the prompt: a Stream."""
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items()))
    triples_, finish = _expected(model, prompt, n, frozen)
    out = Stream(triples_)
    out.finish = finish
    return out


def triples(tokens):
    return [(t["position"], t["id"], t["text"]) for t in tokens]


class Gen:
    """What one generation received."""

    def __init__(self, gid):
        self.id = gid
        self.accepted = None
        self.resumed = None      # the resumed message, on a connection that resumed it
        self.tokens = []         # token items, in arrival order
        self.calls = []          # tool_call messages, in arrival order
        self.events = []         # ("token", item) and ("tool_call", message), in arrival order
        self.frames = []         # "token" / "tokens" frame types, in order
        self.terminal = None     # the complete or error message
        self.after_terminal = []  # anything for this id after the terminal (a bug)

    @property
    def done(self):
        return self.terminal is not None

    @property
    def error(self):
        return self.terminal["error"] if self.terminal and self.terminal["type"] == "error" else None

    def check_order(self):
        """accepted (or resumed from k), then tokens at positions 0..n-1 (k..),
        then the terminal."""
        assert not self.after_terminal, f"{self.id}: messages after the terminal one: {self.after_terminal[:3]}"
        first = self.resumed["from"] if self.resumed else 0
        positions = [t["position"] for t in self.tokens]
        assert positions == list(range(first, first + len(positions))), f"{self.id}: positions {positions[:20]}..."
        if self.tokens:
            assert self.accepted is not None or self.resumed is not None, f"{self.id}: tokens without accepted"
        assert self.terminal is not None, f"{self.id}: no terminal message"


class ProtocolError(AssertionError):
    pass


class Client:
    def __init__(self, ws, proto):
        self.ws = ws
        self.proto = proto
        self.msgpack = proto == MSGPACK
        self.gens = {}
        self.others = []          # messages without a generation: hello, errors without id
        self._order = []          # ids of generate requests, in send order (for server-made ids)

    @classmethod
    async def connect(cls, url, proto=JSON, offer=None, headers=None, origin=None, **kw):
        """proto: the subprotocol to offer (None: offer none, which means JSON)."""
        if offer is None:
            offer = [proto] if proto else None
        kw.setdefault("open_timeout", 20)
        kw.setdefault("ping_interval", None)
        kw.setdefault("max_size", 16 << 20)
        # Unbounded: with a bounded queue the library stops reading when the
        # test is not calling recv(), and then cannot see the server's close
        # frame either (close() would wait out its close_timeout).
        kw.setdefault("max_queue", None)
        # Every other connection offers permessage-deflate: the gateway writes
        # compressed connections only from lws's writable callback and the
        # others directly after each ring batch, and the suite covers both.
        global _connects
        _connects += 1
        if _connects % 2 == 0:
            kw.setdefault("compression", None)
        ws = await websockets.connect(url, subprotocols=offer, extra_headers=headers or {}, origin=origin, **kw)
        if proto:
            if ws.subprotocol != proto:
                await ws.close()
                raise ProtocolError(f"asked for {proto}, the server chose {ws.subprotocol}")
        return cls(ws, proto or JSON)

    async def close(self):
        await self.ws.close()

    async def abort(self):
        """Drop the TCP connection without a closing handshake."""
        self.ws.transport.abort()
        await asyncio.sleep(0)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.ws.close()

    # --- sending ---

    async def send(self, msg):
        if self.msgpack:
            await self.ws.send(msgpack.packb(msg, use_bin_type=True))
        else:
            await self.ws.send(json.dumps(msg))

    async def send_raw(self, data):
        await self.ws.send(data)

    async def generate(self, prompt, max_tokens=None, params=None, gid=None, **extra):
        m = {"type": "generate", "prompt": prompt}
        if gid is not None:
            m["id"] = gid
        if max_tokens is not None:
            m["max_tokens"] = max_tokens
        if params is not None:
            m["params"] = params
        m.update(extra)
        await self.send(m)
        return gid

    async def resume(self, token, frm=0, gid=None):
        m = {"type": "resume", "resume_token": token, "from": frm}
        if gid is not None:
            m["id"] = gid
        await self.send(m)

    async def cancel(self, gid=None):
        m = {"type": "cancel"}
        if gid is not None:
            m["id"] = gid
        await self.send(m)

    # --- receiving ---

    async def recv(self, timeout=TIMEOUT):
        """One message, decoded; its frame type is checked."""
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        if self.msgpack:
            if not isinstance(data, bytes):
                raise ProtocolError(f"text frame on {MSGPACK}: {data[:200]!r}")
            return msgpack.unpackb(data, raw=False)
        if not isinstance(data, str):
            raise ProtocolError(f"binary frame on {JSON}: {data[:200]!r}")
        return json.loads(data)

    def _key(self, gid):
        return gid if not isinstance(gid, bytes) else gid.decode()

    def gen(self, gid):
        gid = self._key(gid)
        if gid not in self.gens:
            self.gens[gid] = Gen(gid)
        return self.gens[gid]

    def dispatch(self, m):
        t = m.get("type")
        if "id" not in m:
            self.others.append(m)
            return None
        g = self.gen(m["id"])
        if g.done:
            g.after_terminal.append(m)
            return g
        if t == "accepted":
            if g.accepted is not None or g.tokens:
                raise ProtocolError(f"{g.id}: accepted twice or after tokens")
            g.accepted = m
        elif t == "resumed":
            if g.resumed is not None or g.tokens:
                raise ProtocolError(f"{g.id}: resumed twice or after tokens")
            g.resumed = m
        elif t == "token":
            g.frames.append("token")
            g.tokens.append(m["token"])
            g.events.append(("token", m["token"]))
        elif t == "tokens":
            if not isinstance(m["tokens"], list) or len(m["tokens"]) < 2:
                raise ProtocolError(f"{g.id}: a tokens frame with {m['tokens']!r}")
            g.frames.append("tokens")
            g.tokens.extend(m["tokens"])
            g.events.extend(("token", x) for x in m["tokens"])
        elif t == "tool_call":
            g.calls.append(m)
            g.events.append(("tool_call", m))
        elif t in ("complete", "error"):
            g.terminal = m
        else:
            raise ProtocolError(f"unexpected message {m!r}")
        return g

    async def next_message(self, timeout=TIMEOUT):
        m = await self.recv(timeout)
        self.dispatch(m)
        return m

    async def until(self, pred, timeout=TIMEOUT):
        """Read and dispatch messages until pred() holds."""
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError("condition not met in time")
            await self.next_message(left)

    async def wait_done(self, *ids, timeout=TIMEOUT):
        """Read until every named generation has its terminal message."""
        ids = [self._key(i) for i in ids]
        await self.until(lambda: all(self.gen(i).done for i in ids), timeout)
        return [self.gen(i) for i in ids]

    async def wait_error(self, timeout=TIMEOUT):
        """The next error that names no generation."""
        n = len([m for m in self.others if m.get("type") == "error"])
        await self.until(lambda: len([m for m in self.others if m.get("type") == "error"]) > n, timeout)
        return [m for m in self.others if m.get("type") == "error"][-1]["error"]

    async def wait_closed(self, timeout=TIMEOUT):
        """Read (and dispatch) until the server closes the connection."""
        try:
            while True:
                await self.next_message(timeout)
        except websockets.ConnectionClosed:
            return self.ws.close_code

    async def run(self, prompt, max_tokens, params, gid=None, timeout=TIMEOUT):
        """One generation start to end on this connection."""
        if gid is None:
            gid = f"g{len(self.gens)}-{time.monotonic_ns()}"
        await self.generate(prompt, max_tokens, params, gid)
        (g,) = await self.wait_done(gid, timeout=timeout)
        return g


def check_complete(g, expect, finish="same"):
    """A generation that completed with exactly the expected stream (and,
    unless finish says otherwise, the same finish_reason)."""
    if finish == "same":
        finish = getattr(expect, "finish", None) or "length"
    g.check_order()
    assert g.terminal["type"] == "complete", f"{g.id}: ended with {g.terminal}"
    got = triples(g.tokens)
    assert got == expect, f"{g.id}: stream differs from the worker's standalone output:\n got {got[:8]}...\nwant {expect[:8]}..."
    if finish is not None:
        assert g.terminal["finish_reason"] == finish, g.terminal
    s = g.terminal["summary"]
    for f in SUMMARY_FIELDS:
        assert f in s, f"summary lacks {f}: {s}"
    assert s["total_tokens"] == len(expect)
    assert s["error_count"] == 0 and s["error_rate"] == 0
    return s


def raw_socket_rcvbuf(size):
    """A TCP socket with a small receive buffer (for clients that stop reading)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return s


# --- process and HTTP helpers ---

def fd_count(pid):
    import os
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid, kind="RssAnon"):
    """Resident memory of a process in KiB.  RssAnon by default: the token
    rings are shared memory, whose pages count in VmRSS as the reader
    touches them (up to the ring's size) without being a leak."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(kind + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {kind}")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def parse_prom(text):
    """Prometheus text format -> ({family: type}, {(name, frozenset(labels)): value})."""
    types, samples = {}, {}
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(None, 3)
            types[name] = typ.strip()
            continue
        if line.startswith("#"):
            continue
        if "{" in line:
            name, rest = line.split("{", 1)
            labels_s, value = rest.rsplit("}", 1)
            labels = {}
            for part in _split_labels(labels_s):
                k, v = part.split("=", 1)
                labels[k.strip()] = json.loads(v)
        else:
            name, value = line.split(None, 1)
            labels = {}
        samples[(name, frozenset(labels.items()))] = float(value.split()[0])
    return types, samples


def _split_labels(s):
    out, cur, q, esc = [], "", False, False
    for ch in s:
        if esc:
            cur += ch
            esc = False
        elif ch == "\\":
            cur += ch
            esc = True
        elif ch == '"':
            cur += ch
            q = not q
        elif ch == "," and not q:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return out


def metric(port, name, **labels):
    _, body, _ = conftest.http_get(port, "/metrics")
    _, samples = parse_prom(body)
    return samples.get((name, frozenset(labels.items())))


def promtool_check(text):
    """None when the text passes `promtool check metrics`; the complaint otherwise."""
    r = subprocess.run(["/usr/bin/promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    if r.returncode != 0:
        return (r.stdout + r.stderr).strip()
    return None


class Witness:
    """A client on its own connection that runs generations back to back and
    checks each one exactly, while the test does something nasty elsewhere:
    other clients' streams must go on untouched.

        async with Witness(url, model) as w:
            ... the nasty thing ...
            await w.more(2)      # two more whole generations after it
    """

    def __init__(self, url, model, proto=JSON, prompt="The witness says", n=24, params=None, **connect_kw):
        self.url, self.proto, self.prompt, self.n = url, proto, prompt, n
        self.params = params if params is not None else sampling(SAMPLED, seed=4242)
        self.expect = expected(model, prompt, n, self.params)
        self.connect_kw = connect_kw
        self.completed = 0
        self._stop = False
        self._progress = None
        self._task = None
        self.client = None

    async def __aenter__(self):
        self.client = await Client.connect(self.url, self.proto, **self.connect_kw)
        self._progress = asyncio.Event()
        self._task = asyncio.ensure_future(self._loop())
        await self.more(1)
        return self

    async def _loop(self):
        try:
            while not self._stop:
                g = await self.client.run(self.prompt, self.n, self.params)
                check_complete(g, self.expect)
                self.completed += 1
                self._progress.set()
        finally:
            self._progress.set()

    async def more(self, k=1, timeout=TIMEOUT):
        """Wait until k more generations have completed exactly."""
        target = self.completed + k
        deadline = time.monotonic() + timeout
        while self.completed < target:
            if self._task.done():
                self._task.result()  # raises what went wrong
                raise AssertionError("the witness stopped")
            self._progress.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError(f"the witness completed {self.completed}, wanted {target}")
            try:
                await asyncio.wait_for(self._progress.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def __aexit__(self, *exc):
        self._stop = True
        try:
            if exc[0] is None:
                await asyncio.wait_for(self._task, TIMEOUT)
            else:
                self._task.cancel()
        finally:
            await self.client.close()
        return False


def run(coro):
    """Run a test's coroutine to its end."""
    return asyncio.run(coro)
