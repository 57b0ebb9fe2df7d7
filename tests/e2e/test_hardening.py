"""Hardening (issue 11): what an attacker, an operator and a new user tried.

Each test here failed on the code before the fix it names:
- the handshake: no internal subprotocol is selectable, an unknown one is
  refused with 400 and a reason, the gateway never dies of it (item 1);
- Origin at any length, Host checked against DNS rebinding (item 5);
- prompts that are not valid text are refused, never cut (item 10);
- telemetry needs the key when keys are on; /metrics's rule (item 11).
The supervisor's items (drain, start-up errors, secrets) are in
test_hardening_sup.py.
"""
import asyncio
import base64
import json
import os
import socket

import msgpack
import pytest
import websockets

import conftest
from rillclient import GREEDY, JSON, MSGPACK, Client, check_complete, expected, run

@pytest.fixture(scope="module")
def gw(module_pipelines, tiny_model):
    return module_pipelines(tiny_model)


@pytest.fixture(scope="module")
def keyed(module_pipelines, tiny_model):
    return module_pipelines(tiny_model, gateway_args=["--api_keys", "k-right"])


def raw_request(port, lines, body=b"", timeout=5.0):
    """Send one raw HTTP/1.1 request; return (status, headers, body) as the
    server answered, or (None, {}, b"") when it dropped the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            if not head:
                return None, {}, b""
            status_line, *hdrs = head.decode("latin-1").split("\r\n")
            headers = {}
            for h in hdrs:
                k, _, v = h.partition(":")
                headers[k.strip().lower()] = v.strip()
            n = int(headers.get("content-length", "0") or 0)
            s.settimeout(2.0)
            while len(rest) < n:
                chunk = s.recv(65536)
                if not chunk:
                    break
                rest += chunk
            return int(status_line.split()[1]), headers, rest
        except (ConnectionResetError, socket.timeout):
            return None, {}, b""


def upgrade(port, protocol=None, host=None, origin=None, path="/stream"):
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host if host is not None else f'127.0.0.1:{port}'}",
             "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if host is False:
        lines = [l for l in lines if not l.startswith("Host:")]
    if protocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return raw_request(port, lines)


def gateway_pid(p):
    return p.procs[-1].pid


def still_serves(p, model):
    async def main():
        async with await Client.connect(p.url, JSON) as c:
            g = await c.run("Still here", 6, GREEDY)
            check_complete(g, expected(model, "Still here", 6, GREEDY))
    run(main())


# --- item 1: the handshake -------------------------------------------------------------------

# The internal protocol's name, names close to the real ones, and junk.
ODD_PROTOCOLS = ["rill-zmq", "rill-zmq, rill-zmq", "http", "http-only", "lws-raw", "raw-skt", "lws-ws-raw",
                 "rill.json.v2", "RILL.JSON.V1", "rill.json.v1x", "rill.json", "x" * 300, "a" * 1000, ",,,",
                 " , ", "rill-zmq;rill.json.v1", "\x01\x02"]


@pytest.mark.parametrize("name", ODD_PROTOCOLS, ids=[repr(n[:24]) for n in ODD_PROTOCOLS])
def test_unknown_or_internal_subprotocol_gets_400_with_a_reason(gw, tiny_model, name):
    pid = gateway_pid(gw)
    status, headers, body = upgrade(gw.port, name)
    assert status == 400, (status, headers, body)
    assert b"rill.json.v1" in body and b"rill.msgpack.v1" in body
    assert gw.procs[-1].poll() is None and gateway_pid(gw) == pid


def test_many_internal_subprotocol_handshakes_leave_the_gateway_up(gw, tiny_model):
    """Six such handshakes in 16 s made the supervisor give up on the
    gateway; twenty in a row now change nothing."""
    pid = gateway_pid(gw)
    for _ in range(20):
        status, _, _ = upgrade(gw.port, "rill-zmq")
        assert status == 400
    assert gw.procs[-1].poll() is None and gateway_pid(gw) == pid
    still_serves(gw, tiny_model)


@pytest.mark.parametrize("offer,chosen", [("rill-zmq, rill.json.v1", "rill.json.v1"),
                                          ("rill-zmq, rill.msgpack.v1", "rill.msgpack.v1"),
                                          ("nonsense, rill.msgpack.v1", "rill.msgpack.v1")])
def test_a_client_protocol_is_chosen_beside_an_internal_one(gw, offer, chosen):
    status, headers, _ = upgrade(gw.port, offer)
    assert status == 101
    assert headers.get("sec-websocket-protocol") == chosen


def test_no_subprotocol_is_json(gw):
    status, headers, _ = upgrade(gw.port)
    assert status == 101


# --- item 5: Origin and Host -------------------------------------------------------------------

@pytest.mark.parametrize("length", [255, 256, 300, 1000, 2000])
def test_a_long_origin_is_still_checked(gw, tiny_model, length):
    origin = "http://evil.example/" + "a" * (length - len("http://evil.example/"))
    assert len(origin) == length

    async def main():
        c = await Client.connect(gw.url, JSON, origin=origin)
        err = await c.wait_error()
        assert err["code"] == "forbidden_origin"
        await c.wait_closed()
    run(main())


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "rebind.attacker.test:{port}",
                                  "127.0.0.1.evil.example:{port}", "localhost.evil:{port}", "0.0.0.0:{port}"])
def test_a_foreign_host_is_refused_with_403(gw, host):
    host = host.format(port=gw.port)
    for path in ("/stream", "/metrics", "/ready", "/", "/dashboard/", "/app.js"):
        if path == "/stream":
            status, _, body = upgrade(gw.port, host=host)
        else:
            status, _, body = raw_request(gw.port, [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close"])
        assert status == 403, (path, status, body)
        assert b"Host" in body


def test_a_missing_host_is_refused(gw):
    status, _, body = upgrade(gw.port, host=False)
    assert status == 403 and b"Host header missing" in body


@pytest.mark.parametrize("host", ["localhost", "localhost:{port}", "127.0.0.1", "127.0.0.1:{port}", "LOCALHOST:{port}"])
def test_loopback_host_names_are_served(gw, host):
    host = host.format(port=gw.port)
    status, _, _ = upgrade(gw.port, host=host)
    assert status == 101
    status, _, body = raw_request(gw.port, ["GET /health HTTP/1.1", f"Host: {host}", "Connection: close"])
    assert status == 200 and body == b"ok\n"


def test_a_loopback_name_on_another_port_is_refused(gw):
    status, _, _ = raw_request(gw.port, ["GET /health HTTP/1.1", f"Host: localhost:{gw.port + 1}",
                                         "Connection: close"])
    assert status == 403


def test_allowed_hosts_lists_the_names(pipelines, tiny_model):
    p = pipelines(tiny_model, gateway_args=["--allowed_hosts", "rill.example, api.example:443, 127.0.0.1"])
    ok = ["rill.example", f"rill.example:{p.port}", "api.example:443", f"127.0.0.1:{p.port}"]
    bad = ["localhost", f"localhost:{p.port}", "[::1]", "api.example", "rill.example:1"]
    for host in ok:
        assert raw_request(p.port, ["GET /health HTTP/1.1", f"Host: {host}", "Connection: close"])[0] == 200, host
    for host in bad:
        assert raw_request(p.port, ["GET /health HTTP/1.1", f"Host: {host}", "Connection: close"])[0] == 403, host


# --- item 10: prompts that are not valid text ----------------------------------------------------

async def first_reply(ws):
    while True:
        m = await asyncio.wait_for(ws.recv(), 30)
        m = json.loads(m) if isinstance(m, str) else msgpack.unpackb(m, raw=False)
        if m["type"] in ("error", "accepted"):
            return m


def send_raw_json(p, text_bytes):
    """A text frame with exactly these bytes (valid UTF-8, possibly a raw NUL)."""
    async def main():
        async with websockets.connect(p.url, subprotocols=[JSON], compression=None) as ws:
            await ws.send(text_bytes.decode("utf-8"))
            return await first_reply(ws)
    return asyncio.run(main())


def test_a_raw_nul_byte_in_a_json_prompt_is_refused_not_cut(gw):
    m = send_raw_json(gw, b'{"type":"generate","id":"n","prompt":"before\x00after","max_tokens":2}')
    assert m["type"] == "error" and m["error"]["code"] == "bad_request"
    assert "NUL" in m["error"]["message"]


def test_an_escaped_nul_is_refused(gw):
    m = send_raw_json(gw, b'{"type":"generate","id":"n","prompt":"before\\u0000after","max_tokens":2}')
    assert m["type"] == "error" and m["error"]["code"] == "bad_request"


@pytest.mark.parametrize("prompt", ["a backslash then u0000: \\u0000", "\\\\u0000", "path C:\\u0000x"])
def test_the_literal_text_backslash_u0000_is_accepted(gw, tiny_model, prompt):
    async def main():
        async with await Client.connect(gw.url, JSON) as c:
            g = await c.run(prompt, 4, GREEDY)
            check_complete(g, expected(tiny_model, prompt, 4, GREEDY))
    run(main())


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"abc\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"ok \xf8\x88\x80\x80\x80"])
def test_a_msgpack_prompt_that_is_not_utf8_is_refused(gw, raw):
    async def main():
        async with websockets.connect(gw.url, subprotocols=[MSGPACK], compression=None) as ws:
            # A str field (fixstr header) whose bytes are not UTF-8.
            pk = msgpack.packb
            msg = (b"\x84" + pk("type") + pk("generate") + pk("id") + pk("u") + pk("prompt") +
                   bytes([0xa0 | len(raw)]) + raw + pk("max_tokens") + pk(2))
            await ws.send(msg)
            return await first_reply(ws)
    m = asyncio.run(main())
    assert m["type"] == "error" and m["error"]["code"] == "bad_request"
    assert "UTF-8" in m["error"]["message"]


def test_a_msgpack_prompt_with_a_nul_is_refused(gw):
    async def main():
        async with websockets.connect(gw.url, subprotocols=[MSGPACK], compression=None) as ws:
            await ws.send(msgpack.packb({"type": "generate", "id": "z", "prompt": "a\x00b", "max_tokens": 2}))
            return await first_reply(ws)
    m = asyncio.run(main())
    assert m["type"] == "error" and m["error"]["code"] == "bad_request"


def test_a_msgpack_utf8_prompt_is_accepted(gw, tiny_model):
    async def main():
        async with await Client.connect(gw.url, MSGPACK) as c:
            g = await c.run("naïve café ☕", 4, GREEDY)
            check_complete(g, expected(tiny_model, "naïve café ☕", 4, GREEDY))
    run(main())


# --- item 11: telemetry and /metrics with keys ---------------------------------------------------

def subscribe(url, key=None):
    async def main():
        u = url + (f"?key={key}" if key else "")
        async with websockets.connect(u, subprotocols=[JSON], compression=None) as ws:
            await ws.send(json.dumps({"type": "subscribe", "telemetry": True}))
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if m["type"] in ("error", "telemetry"):
                    return m
    return asyncio.run(main())


def test_telemetry_needs_the_key_when_keys_are_on(keyed):
    m = subscribe(keyed.url)
    assert m["type"] == "error" and m["error"]["code"] == "unauthorized"
    m = subscribe(keyed.url, "k-right")
    assert m["type"] == "telemetry"


def test_telemetry_without_keys_is_open(gw):
    assert subscribe(gw.url)["type"] == "telemetry"


def test_metrics_is_open_on_loopback(keyed):
    status, body, _ = conftest.http_get(keyed.port, "/metrics")
    assert status == 200 and "rill_gateway_requests_total" in body


def test_metrics_needs_the_key_off_loopback(pipelines, tiny_model):
    import http.client
    p = pipelines(tiny_model, gateway_args=["--api_keys", "k-right"], host="0.0.0.0")
    port = p.port

    def get(headers=None, path="/metrics"):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read().decode()
    status, body = get()
    assert status == 401 and "API key" in body
    assert get({"Authorization": "Bearer k-wrong"})[0] == 401
    status, body = get({"Authorization": "Bearer k-right"})
    assert status == 200 and "rill_gateway_requests_total" in body
    assert get(path="/metrics?key=k-right")[0] == 200
    assert get(path="/health")[0] == 200
