"""rill_client — a small asyncio client for rill's WebSocket protocol that
reconnects and resumes by itself.

    import asyncio
    from rill_client import RillClient

    async def main():
        async with RillClient("ws://127.0.0.1:8765/stream") as rill:
            g = await rill.generate("Once upon a time", max_tokens=50, params={"temperature": 0})
            async for token in g:                  # one dict per token, in position order
                print(token["text"], end="", flush=True)
            print("\\n", g.finish_reason, g.summary["total_tokens"])

    asyncio.run(main())

Both subprotocols: protocol="json" (rill.json.v1, the default) or "msgpack"
(rill.msgpack.v1).  Needs `websockets` (10.4 or later) and, for msgpack,
`msgpack`.

When the connection drops (anything but close()), the client reconnects
with exponential backoff and jitter and sends, for every open generation,
{"type": "resume", "resume_token": ..., "from": <last received position + 1>}:
the gateway keeps a dropped connection's generations running for
resume_window_s (60 s by default) and replays what was missed, so what a
Generation yields has nothing lost and nothing twice.  A generation that was
sent but not yet accepted is sent again (none of its tokens can have been
delivered).  A resume the gateway refuses (the window passed; a gateway that
restarted does not know the token) ends the generation with RillError
"resume_failed" (not recoverable); the tokens received stay in g.tokens.
With reconnect=False a drop ends every open generation with RillError
"disconnected" (recoverable), and the client stays closed.

The client's state ("connecting", "open", "waiting", "closed") and the
generations waiting to be resumed are passed to on_status(state, resuming),
when given.
"""
import asyncio
import itertools
import json
import random

import websockets

try:
    import msgpack
except ImportError:  # only the msgpack subprotocol needs it
    msgpack = None

__all__ = ["RillClient", "Generation", "RillError"]

PROTOCOLS = {"json": "rill.json.v1", "msgpack": "rill.msgpack.v1"}


class RillError(Exception):
    """An error frame of one generation (code, message, recoverable), or the
    client's own "disconnected"."""

    def __init__(self, code="internal", message="", recoverable=False):
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.recoverable = recoverable


_END = object()


class Generation:
    """One generation.  Iterate it (async for) for its tokens; it ends
    normally on complete (finish_reason, summary are set) or raises its
    RillError.  result() waits for the end and returns the text."""

    def __init__(self, client, gid, request):
        self.client = client
        self.id = gid
        self.request = request
        self.tokens = []
        self.worker = None
        self.resume_token = None
        self.next_position = 0   # the first position not received yet
        self.resumes = 0         # how many times it was taken up again
        self.finish_reason = None
        self.summary = None
        self.error = None
        self.ended = False
        self._accepted = False
        self._cancelled = False
        self._conn = None        # the connection it was last sent on
        self._q = asyncio.Queue()
        self._done = asyncio.get_running_loop().create_future()

    @property
    def text(self):
        return "".join(t["text"] for t in self.tokens)

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self._q.get()
        if item is _END:
            self._q.put_nowait(_END)  # iterating again ends at once
            if self.error is not None:
                raise self.error
            raise StopAsyncIteration
        return item

    async def result(self):
        """Wait for the end; the whole text, or the RillError."""
        await asyncio.shield(self._done)
        if self.error is not None:
            raise self.error
        return self.text

    async def cancel(self):
        if not self.ended:
            self._cancelled = True
            await self.client._cancel(self)

    def _token(self, t):
        # A replay that overlaps what arrived before the drop: once only.
        pos = t.get("position")
        if isinstance(pos, int):
            if pos < self.next_position:
                return
            self.next_position = pos + 1
        self.tokens.append(t)
        self._q.put_nowait(t)

    def _end(self, finish_reason=None, summary=None, error=None):
        if self.ended:
            return
        self.ended = True
        self.finish_reason, self.summary, self.error = finish_reason, summary, error
        self.client._gens.pop(self.id, None)
        self._q.put_nowait(_END)
        if not self._done.done():
            self._done.set_result(None)


class RillClient:
    """A connection to rill's gateway that reconnects and resumes."""

    def __init__(self, url="ws://127.0.0.1:8765/stream", *, protocol="json", key=None, client="rill-python",
                 reconnect=True, min_delay=0.25, max_delay=8.0, on_status=None, connect_kwargs=None):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}")
        if protocol == "msgpack" and msgpack is None:
            raise RuntimeError("the msgpack protocol needs the msgpack package")
        self.url = url
        self.protocol = protocol
        self.key = key
        self.client_name = client
        self.reconnect = reconnect
        self.min_delay, self.max_delay = min_delay, max_delay
        self.on_status = on_status
        self.connect_kwargs = connect_kwargs or {}
        self.state = "idle"
        self.server = None        # the server's hello
        self.reconnects = 0       # connections made after the first
        self.last_error = None    # why the last connection attempt failed
        self._gens = {}
        self._ws = None
        self._open = None         # set while a connection is open
        self._task = None
        self._stopped = False
        self._seq = itertools.count(1)

    async def __aenter__(self):
        await self.connect()
        return self

    async def __aexit__(self, *exc):
        await self.close()

    @property
    def resuming(self):
        return sum(1 for g in self._gens.values() if g.resume_token and g._conn is None)

    async def connect(self):
        """Connect.  The first connection's failure is raised (OSError, or
        websockets.InvalidHandshake when the gateway refuses it); reconnects
        after that are the client's own business."""
        if self._task is None:
            self._stopped = False
            self._open = asyncio.Event()
            self._task = asyncio.create_task(self._run())
        try:
            await self._wait_open()
        except BaseException:
            if self._task.done():
                self._task = None
            raise
        return self

    async def close(self):
        """Close for good: open generations are cancelled (the gateway would
        keep them for a resume otherwise) and end with "disconnected"."""
        self._stopped = True
        ws = self._ws
        if ws is not None and self._gens:
            try:
                await self._send_on(ws, {"type": "cancel"})
            except websockets.ConnectionClosed:
                pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if ws is not None:
            await ws.close()
        for g in list(self._gens.values()):
            g._end(error=RillError("disconnected", "closed", True))
        self._status("closed")

    async def generate(self, prompt, max_tokens=None, params=None, id=None):
        """Start a generation; returns its Generation once it is sent."""
        gid = id if id is not None else f"py-{next(self._seq)}"
        msg = {"type": "generate", "id": gid, "prompt": prompt}
        if max_tokens is not None:
            msg["max_tokens"] = max_tokens
        if params:
            msg["params"] = params
        g = Generation(self, gid, msg)
        self._gens[gid] = g
        ws = self._ws
        if ws is not None:
            g._conn = ws
            try:
                await self._send_on(ws, msg)
            except websockets.ConnectionClosed:
                pass  # the reader sees the drop; the generation goes on the next connection
        return g

    # --- the connection loop ---

    async def _wait_open(self):
        while not self._open.is_set():
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RillError("disconnected", "closed", True)
            opened = asyncio.ensure_future(self._open.wait())
            await asyncio.wait([opened, self._task], return_when=asyncio.FIRST_COMPLETED)
            opened.cancel()

    async def _run(self):
        attempt = 0
        first = True
        while True:
            self._status("connecting")
            try:
                ws = await websockets.connect(self.url, subprotocols=[PROTOCOLS[self.protocol]],
                                              **self.connect_kwargs)
            except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake) as e:
                if first:
                    raise  # nothing to come back to: connect() says why
                why = self.last_error = f"cannot connect: {e}"
            else:
                attempt = 0
                if not first:
                    self.reconnects += 1
                first = False
                why = await self._serve(ws)
            self._open.clear()
            if self._stopped or not self.reconnect:
                self._drop_all(why)
                self._status("closed")
                return
            cap = min(self.max_delay, self.min_delay * 2 ** attempt)
            attempt += 1
            self._status("waiting")
            await asyncio.sleep(cap / 2 + random.random() * cap / 2)

    async def _serve(self, ws):
        """One connection: hello, every open generation sent or resumed, then
        frames until it closes.  Returns why it closed."""
        self._ws = ws
        try:
            hello = {"type": "hello", "client": {"name": self.client_name}}
            if self.key:
                hello["key"] = self.key
            await self._send_on(ws, hello)
            for g in list(self._gens.values()):
                if g._conn is ws:
                    continue
                g._conn = ws
                if g.resume_token:
                    await self._send_on(ws, {"type": "resume", "id": g.id, "resume_token": g.resume_token,
                                             "from": g.next_position})
                else:
                    await self._send_on(ws, g.request)
                if g._cancelled:
                    await self._send_on(ws, {"type": "cancel", "id": g.id})
            self._open.set()
            self._status("open")
            async for data in ws:
                self._dispatch(self._decode(data))
            return f"closed ({ws.close_code})"
        except websockets.ConnectionClosed as e:
            return f"connection lost ({e})"
        finally:
            self._ws = None
            self._open.clear()
            self._detach(ws)

    def _detach(self, ws):
        """The connection is gone: what each generation on it does next."""
        again = self.reconnect and not self._stopped
        for g in list(self._gens.values()):
            if g._conn is not ws:
                continue
            g._conn = None
            if again and g.resume_token:
                continue  # resumed on the next connection
            if again and not g._accepted and not g._cancelled:
                continue  # never accepted: sent again, nothing can be lost or repeated
            if g._cancelled and not g._accepted:
                g._end(finish_reason="cancelled", summary={})
            else:
                g._end(error=RillError("disconnected", "connection lost", True))

    def _drop_all(self, why):
        for g in list(self._gens.values()):
            g._end(error=RillError("disconnected", why or "closed", True))

    def _status(self, state):
        self.state = state
        if self.on_status:
            self.on_status(state, self.resuming)

    # --- frames ---

    def _decode(self, data):
        if self.protocol == "msgpack":
            return msgpack.unpackb(data, raw=False)
        return json.loads(data)

    async def _send_on(self, ws, msg):
        await ws.send(msgpack.packb(msg, use_bin_type=True) if self.protocol == "msgpack" else json.dumps(msg))

    async def _cancel(self, g):
        ws = self._ws
        if ws is not None and g._conn is ws:
            try:
                await self._send_on(ws, {"type": "cancel", "id": g.id})
            except websockets.ConnectionClosed:
                pass  # sent after the generate or resume on the next connection

    def _dispatch(self, m):
        t = m.get("type")
        if t == "hello":
            self.server = m
            return
        g = self._gens.get(m.get("id"))
        if g is None:
            return
        if t == "accepted":
            g._accepted = True
            g.worker = m.get("worker")
            g.resume_token = m.get("resume_token")
        elif t == "resumed":
            g.resumes += 1
            if self.on_status:
                self.on_status(self.state, self.resuming)
        elif t == "token":
            g._token(m["token"])
        elif t == "tokens":
            for tok in m["tokens"]:
                g._token(tok)
        elif t == "complete":
            g._end(finish_reason=m.get("finish_reason"), summary=m.get("summary") or {})
        elif t == "error":
            e = m.get("error") or {}
            g._end(error=RillError(e.get("code", "internal"), e.get("message", ""), bool(e.get("recoverable"))))
