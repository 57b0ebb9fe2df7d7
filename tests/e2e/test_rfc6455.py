"""RFC 6455 conformance of the gateway as a WebSocket server (sections 5
and 7, and the UTF-8 rule of 8.1): what a server must refuse, with which
Close code, and that it then closes the TCP connection.

Raw sockets throughout: the handshake by hand, then frames built byte by
byte, so that the client can break every rule (no WebSocket library would
send these).  Each case acts like a conforming client once it is refused:
it reads the server's Close, answers with a Close, and expects the server to
close the TCP connection.
"""
import base64
import hashlib
import json
import os
import socket
import struct
import time
import zlib

import pytest

import rillclient as rc

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
HELLO = json.dumps({"type": "hello"}).encode()


def frame(op, payload=b"", fin=True, rsv=0, mask=True):
    """One client frame: masked (as 5.1 requires) unless told otherwise."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | rsv << 4 | op])
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack(">H", n)
    else:
        head += bytes([m | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code, reason=b""):
    return struct.pack(">H", code) + reason


class Raw:
    """A WebSocket client on a plain socket."""

    def __init__(self, port, proto="rill.json.v1", first=b"", ext=None):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16))
        req = (b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: %s\r\n\r\n"
               % (port, key, proto.encode()))
        if ext:
            req = req[:-2] + b"Sec-WebSocket-Extensions: %s\r\n\r\n" % ext.encode()
        # `first`: frames sent with the handshake, before its reply (4.1
        # says a client must wait for it; some do not).
        self.s.sendall(req + first)
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = self.s.recv(4096)
            assert d, "connection closed during the handshake"
            buf += d
        head, self.buf = buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101 "), head
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        assert b"sec-websocket-accept: " + accept.lower() in head.lower()
        self.deflate = b"permessage-deflate" in head.lower()
        self.inflater = zlib.decompressobj(-15)

    def send(self, data, bytewise=False):
        if not bytewise:
            self.s.sendall(data)
            return
        for i in range(len(data)):  # one byte a segment: headers split anywhere
            try:
                self.s.sendall(data[i:i + 1])
            except OSError:
                return  # refused before the end
            time.sleep(0.002)

    def _fill(self, deadline):
        self.s.settimeout(max(0.01, deadline - time.time()))
        try:
            d = self.s.recv(65536)
        except ConnectionResetError:
            d = b""
        if not d:
            raise EOFError
        self.buf += d

    def read_frame(self, timeout=5.0):
        """(fin, opcode, payload) of the server's next frame; EOFError when
        the TCP connection ends first."""
        deadline = time.time() + timeout
        while True:
            b = self.buf
            if len(b) >= 2:
                assert not b[1] & 0x80, "a server frame must not be masked"
                n, at = b[1] & 0x7f, 2
                if n == 126:
                    n, at = (struct.unpack(">H", b[2:4])[0] if len(b) >= 4 else None), 4
                elif n == 127:
                    n, at = (struct.unpack(">Q", b[2:10])[0] if len(b) >= 10 else None), 10
                if n is not None and len(b) >= at + n:
                    self.buf = b[at + n:]
                    data = b[at:at + n]
                    if self.deflate and b[0] & 0x40:  # one-frame compressed message
                        data = self.inflater.decompress(data + b"\x00\x00\xff\xff")
                    assert not b[0] & (0x30 if self.deflate else 0x70), "reserved bits in a server frame"
                    return bool(b[0] & 0x80), b[0] & 0x0f, data
            self._fill(deadline)

    def messages(self, timeout=5.0):
        """The next JSON text message (the server's keep-alive pings are
        answered; any other frame fails)."""
        while True:
            fin, op, data = self.read_frame(timeout)
            if op != OP_PING:
                break
            self.send(frame(OP_PONG, data))
        assert fin and op == OP_TEXT, (op, data)
        return json.loads(data)

    def expect_close(self, timeout=5.0):
        """The server's Close (nothing else may come first): (code, reason).
        Then answers it, as 5.5.1 asks, and checks that the server closes
        the TCP connection."""
        fin, op, data = self.read_frame(timeout)
        assert op == OP_CLOSE, f"expected a Close, got opcode {op:#x}: {data[:80]!r}"
        assert fin and len(data) >= 2, data
        code = struct.unpack(">H", data[:2])[0]
        try:
            self.s.sendall(frame(OP_CLOSE, data[:2]))
        except OSError:
            pass  # the server may have closed already
        self.expect_eof()
        return code, data[2:]

    def expect_eof(self, timeout=3.0):
        deadline = time.time() + timeout
        try:
            while True:
                self._fill(deadline)
        except EOFError:
            return
        except socket.timeout:
            raise AssertionError("the server did not close the TCP connection") from None

    def close(self):
        self.s.close()


@pytest.fixture(scope="module")
def gw(module_pipelines, tiny_model):
    p = module_pipelines(tiny_model)
    # A connection opened before all the cases, used again after them.
    p.bystander = Raw(p.port)
    yield p
    p.bystander.close()


def refused(gw, frames, bytewise=False, first=b""):
    c = Raw(gw.port, first=first)
    try:
        c.send(b"".join(frames), bytewise)
        return c.expect_close()
    finally:
        c.close()
        assert gw.gateway.poll() is None


# --- 5.1, 5.2: masking, reserved bits, opcodes, lengths ----------------------------------------

UNMASKED = [
    ("text", [frame(OP_TEXT, HELLO, mask=False)]),
    ("binary", [frame(OP_BINARY, b"\x81\xa4type\xa5hello", mask=False)]),
    ("empty_text", [frame(OP_TEXT, b"", mask=False)]),
    ("ping", [frame(OP_PING, b"x", mask=False)]),
    ("close", [frame(OP_CLOSE, close_payload(1000), mask=False)]),
    ("after_a_masked_frame", [frame(OP_PONG, b"unsolicited"), frame(OP_TEXT, HELLO, mask=False)]),
    ("continuation", [frame(OP_TEXT, b'{"type":', fin=False), frame(OP_CONT, b'"hello"}', mask=False)]),
    ("16bit_length", [frame(OP_BINARY, b"z" * 1000, mask=False)]),
    # Only the start of a big frame: the server closes as soon as it sees the
    # header, and bytes it never read would turn its FIN into a RST.
    ("64bit_length", [frame(OP_BINARY, b"z" * 70000, mask=False)[:200]]),
]


@pytest.mark.parametrize("frames", [c[1] for c in UNMASKED], ids=[c[0] for c in UNMASKED])
def test_unmasked_client_frame_is_refused_with_1002(gw, frames):
    code, why = refused(gw, frames)
    assert code == 1002
    assert why == b"client frame not masked"


def test_unmasked_frame_sent_a_byte_at_a_time_is_refused_with_1002(gw):
    code, _ = refused(gw, [frame(OP_TEXT, HELLO, mask=False)], bytewise=True)
    assert code == 1002


def test_unmasked_frame_sent_with_the_handshake_is_refused_with_1002(gw):
    code, _ = refused(gw, [], first=frame(OP_TEXT, HELLO, mask=False))
    assert code == 1002


@pytest.mark.parametrize("rsv", [1, 2, 4, 7], ids=["rsv3", "rsv2", "rsv1", "all"])
def test_reserved_bits_without_an_extension_are_refused_with_1002(gw, rsv):
    code, _ = refused(gw, [frame(OP_TEXT, HELLO, rsv=rsv)])
    assert code == 1002


@pytest.mark.parametrize("op", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF], ids=lambda o: f"op{o:x}")
def test_unknown_opcode_is_refused_with_1002(gw, op):
    code, _ = refused(gw, [frame(op, b"data")])
    assert code == 1002


# --- 5.4, 5.5: fragmentation and control frames ------------------------------------------------

def test_fragmented_ping_is_refused_with_1002(gw):
    code, _ = refused(gw, [frame(OP_PING, b"a", fin=False), frame(OP_CONT, b"b")])
    assert code == 1002


@pytest.mark.parametrize("n", [126, 200, 65536], ids=lambda n: f"{n}B")
@pytest.mark.parametrize("op", [OP_PING, OP_PONG, OP_CLOSE], ids=["ping", "pong", "close"])
def test_control_frame_over_125_bytes_is_refused_with_1002(gw, op, n):
    payload = close_payload(1000, b"r" * (n - 2)) if op == OP_CLOSE else b"p" * n
    code, why = refused(gw, [frame(op, payload)[:300]])  # (the start is enough: see UNMASKED)
    assert code == 1002
    assert why == b"control frame over 125 bytes"


def compressed(data):
    """A permessage-deflate payload (RFC 7692 7.2.1): the trailer removed."""
    z = zlib.compressobj(wbits=-15)
    out = z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def test_permessage_deflate_allows_rsv1_on_a_message_first_frame_only(gw):
    c = Raw(gw.port, ext="permessage-deflate; client_max_window_bits")
    try:
        assert c.deflate
        c.send(frame(OP_TEXT, compressed(HELLO), rsv=4))
        assert c.messages()["type"] == "hello"
        z = compressed(HELLO)
        c.send(frame(OP_TEXT, z[:5], rsv=4, fin=False) + frame(OP_CONT, z[5:]))
        assert c.messages()["type"] == "hello"
        c.send(frame(OP_PING, b"compressed?", rsv=4))  # RFC 7692 6.1: never on control frames
        assert c.expect_close() == (1002, b"reserved bits set")
    finally:
        c.close()


@pytest.mark.parametrize("rsv", [1, 2], ids=["rsv3", "rsv2"])
def test_permessage_deflate_still_refuses_the_other_reserved_bits(gw, rsv):
    c = Raw(gw.port, ext="permessage-deflate")
    try:
        assert c.deflate
        c.send(frame(OP_TEXT, compressed(HELLO), rsv=4 | rsv))
        assert c.expect_close()[0] == 1002
    finally:
        c.close()


def test_continuation_without_a_message_is_refused_with_1002(gw):
    code, _ = refused(gw, [frame(OP_CONT, b"orphan")])
    assert code == 1002


@pytest.mark.parametrize("op", [OP_TEXT, OP_BINARY])
def test_new_data_frame_inside_a_fragmented_message_is_refused_with_1002(gw, op):
    code, _ = refused(gw, [frame(OP_TEXT, b'{"type":', fin=False), frame(op, b'"hello"}')])
    assert code == 1002


def test_control_frames_may_come_between_fragments(gw):
    c = Raw(gw.port)
    try:
        c.send(frame(OP_TEXT, b'{"type":', fin=False) + frame(OP_PING, b"mid") + frame(OP_CONT, b'"hello"}'))
        fin, op, data = c.read_frame()
        assert (op, data) == (OP_PONG, b"mid")
        assert c.messages()["type"] == "hello"
    finally:
        c.close()


@pytest.mark.parametrize("payload", [b"", b"hello", bytes(range(125))], ids=["empty", "short", "125B"])
def test_ping_is_answered_with_a_pong_of_the_same_payload(gw, payload):
    c = Raw(gw.port)
    try:
        c.send(frame(OP_PING, payload))
        assert c.read_frame() == (True, OP_PONG, payload)
        c.send(frame(OP_TEXT, HELLO))  # and the connection goes on
        assert c.messages()["type"] == "hello"
    finally:
        c.close()


# --- 5.5.1, 7.4: Close payloads -----------------------------------------------------------------

def test_close_with_a_1_byte_body_is_refused_with_1002(gw):
    code, _ = refused(gw, [frame(OP_CLOSE, b"\x03")])
    assert code == 1002


BAD_CODES = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 10000, 65535]


@pytest.mark.parametrize("code", BAD_CODES)
def test_close_with_an_invalid_code_is_refused_with_1002(gw, code):
    got, _ = refused(gw, [frame(OP_CLOSE, close_payload(code, b"why"))])
    assert got == 1002


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999])
def test_close_with_a_valid_code_is_echoed(gw, code):
    c = Raw(gw.port)
    try:
        c.send(frame(OP_CLOSE, close_payload(code, "bye é".encode())))
        fin, op, data = c.read_frame()
        assert (fin, op) == (True, OP_CLOSE)
        assert data == close_payload(code, "bye é".encode())
        c.expect_eof()
    finally:
        c.close()


def test_close_without_a_body_is_answered(gw):
    c = Raw(gw.port)
    try:
        c.send(frame(OP_CLOSE))
        fin, op, data = c.read_frame()
        assert (op, data) == (OP_CLOSE, b"")
        c.expect_eof()
    finally:
        c.close()


@pytest.mark.parametrize("reason", [b"\xff", b"ok \xc3", b"\xed\xa0\x80 surrogate", b"\xc0\xaf overlong"],
                         ids=["ff", "truncated", "surrogate", "overlong"])
def test_close_reason_that_is_not_utf8_is_refused_with_1007(gw, reason):
    code, why = refused(gw, [frame(OP_CLOSE, close_payload(1000, reason))])
    assert code == 1007
    why.decode()  # what comes back is UTF-8 whatever the client sent


# --- 8.1: text must be UTF-8 --------------------------------------------------------------------

BAD_TEXT = [
    ("ff", [frame(OP_TEXT, b'{"type":"hello","x":"\xff"}')]),
    ("overlong", [frame(OP_TEXT, b'{"type":"hello","x":"\xc0\xaf"}')]),
    ("surrogate", [frame(OP_TEXT, b'{"type":"hello","x":"\xed\xa0\x80"}')]),
    ("ends_mid_character", [frame(OP_TEXT, b'{"type":"hello"}\xe2\x82')]),
    ("bad_in_second_fragment", [frame(OP_TEXT, b'{"type":"hello","x":"\xe2\x82', fin=False),
                                frame(OP_CONT, b'\x28"}')]),
    ("msgpack_protocol_too", None),
]


@pytest.mark.parametrize("frames", [c[1] for c in BAD_TEXT], ids=[c[0] for c in BAD_TEXT])
def test_text_that_is_not_utf8_is_refused_with_1007(gw, frames):
    if frames is None:  # a text frame on rill.msgpack.v1: still a text frame
        c = Raw(gw.port, proto="rill.msgpack.v1")
        try:
            c.send(frame(OP_TEXT, b"\x81\xa4type\xa5hello\xff"))
            code, _ = c.expect_close()
        finally:
            c.close()
    else:
        code, _ = refused(gw, frames)
    assert code == 1007


def test_utf8_character_split_between_fragments_is_accepted(gw):
    msg = json.dumps({"type": "hello", "client": {"name": "€ and 𝄞"}}, ensure_ascii=False).encode()
    cut = msg.index("€".encode()) + 1
    cut2 = msg.index("𝄞".encode()) + 2
    c = Raw(gw.port)
    try:
        c.send(frame(OP_TEXT, msg[:cut], fin=False) + frame(OP_CONT, msg[cut:cut2], fin=False) +
               frame(OP_CONT, msg[cut2:]))
        assert c.messages()["type"] == "hello"
    finally:
        c.close()


# --- no false alarms -----------------------------------------------------------------------------

def test_valid_frames_sent_a_byte_at_a_time_are_served(gw):
    """Frame headers split across reads anywhere, a 16-bit length, an empty frame."""
    c = Raw(gw.port)
    try:
        big = json.dumps({"type": "hello", "client": {"name": "x" * 300}}).encode()
        c.send(frame(OP_TEXT, b"", fin=False) + frame(OP_CONT, big[:150], fin=False) +
               frame(OP_PING, b"p") + frame(OP_CONT, big[150:]), bytewise=True)
        assert c.read_frame() == (True, OP_PONG, b"p")
        assert c.messages()["type"] == "hello"
    finally:
        c.close()


def test_valid_frames_sent_with_the_handshake_are_served(gw):
    c = Raw(gw.port, first=frame(OP_TEXT, HELLO) + frame(OP_PING, b"early"))
    try:
        got = [c.read_frame(), c.read_frame()]
        assert (True, OP_PONG, b"early") in got
        assert any(op == OP_TEXT and json.loads(d)["type"] == "hello" for _, op, d in got)
    finally:
        c.close()


def test_gateway_serves_everyone_after_the_refusals(gw, tiny_model):
    """The connection opened before the cases still works, and so do new
    ones: a generation streams exactly what the worker makes."""
    assert gw.gateway.poll() is None and gw.worker_procs[0].poll() is None
    gw.bystander.send(frame(OP_TEXT, HELLO))
    assert gw.bystander.messages()["type"] == "hello"
    p = rc.sampling(rc.GREEDY)

    async def main():
        async with await rc.Client.connect(gw.url, rc.JSON) as c:
            g = await c.run("After the storm", 8, p)
        rc.check_complete(g, rc.expected(tiny_model, "After the storm", 8, p))
    rc.run(main())
    assert gw.gateway.poll() is None
