"""A TCP proxy for tests: what a client's network does, on cue.

    with TcpProxy(("127.0.0.1", gateway_port)) as px:
        url = f"ws://127.0.0.1:{px.port}/stream"
        ...
        px.cut(hold=1.0)   # every connection through it reset, new ones refused for 1 s

cut() resets both sides of every connection (SO_LINGER 0: an RST, as when a
network goes away under a connection and the host notices), so the client
sees its socket fail and the gateway sees the connection drop.  While held,
new connections are accepted and reset at once (the client's reconnects
fail and back off).  Threads, no asyncio: it serves browsers and asyncio
clients alike.
"""
import socket
import struct
import threading
import time


def _reset(s):
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # Wakes the pump thread blocked in recv() without sending a FIN, so
        # that the close below really closes (and sends the RST).
        s.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


class TcpProxy:
    def __init__(self, target, host="127.0.0.1"):
        self.target = target
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.pairs = []
        self.held_until = 0.0
        self.accepted = 0   # connections passed through
        self.refused = 0    # connections reset while held
        self.cuts = 0
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            if time.monotonic() < self.held_until:
                self.refused += 1
                _reset(c)
                continue
            try:
                u = socket.create_connection(self.target, timeout=5)
                u.settimeout(None)
            except OSError:
                _reset(c)
                continue
            for s in (c, u):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.pairs.append((c, u))
                self.accepted += 1
            threading.Thread(target=self._pump, args=(c, u), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                b = src.recv(65536)
                if not b:
                    break
                dst.sendall(b)
        except OSError:
            pass
        # One side ended: so does the other (a proxy that half-closes would
        # keep connections the test means to be gone).
        with self.lock:
            pair = next((p for p in self.pairs if src in p), None)
            if pair:
                self.pairs.remove(pair)
        if pair:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def cut(self, hold=0.0):
        """Reset every connection now; refuse new ones for `hold` seconds.
        Returns how many connections were cut."""
        self.held_until = time.monotonic() + hold
        with self.lock:
            pairs, self.pairs = self.pairs, []
            self.cuts += 1
        for c, u in pairs:
            _reset(c)
            _reset(u)
        return len(pairs)

    @property
    def open_connections(self):
        with self.lock:
            return len(self.pairs)

    def close(self):
        self.closed = True
        try:
            self.lsock.close()
        except OSError:
            pass
        self.cut()
