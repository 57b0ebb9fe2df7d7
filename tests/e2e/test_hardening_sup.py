"""Hardening (issue 11), the supervisor's side: a stop that drains (item 2),
start-up errors that exit with their cause (item 3), no secrets on command
lines or in environments (item 4)."""
import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import time

import pytest
import websockets

from conftest import Supervised, generate, http_get, make_model, wait_for

LONG = 400  # tokens: long enough to be running when the signal comes


async def long_streams(url, n, started, max_tokens=LONG):
    """n generations on one connection each; `started` is set once every one
    has its first token.  Returns [(tokens, terminal message)]."""
    async def one(k):
        async with websockets.connect(url, compression=None) as ws:
            await ws.send(json.dumps({"type": "generate", "id": f"d{k}", "prompt": f"Stream {k} says",
                                      "max_tokens": max_tokens, "params": {"temperature": 0}}))
            tokens = []
            first.add(k)
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if m["type"] == "token":
                    tokens.append(m["token"])
                elif m["type"] == "tokens":
                    tokens.extend(m["tokens"])
                elif m["type"] in ("complete", "error"):
                    return tokens, m
                if tokens and k not in have_token:
                    have_token.add(k)
                    if len(have_token) == n:
                        started.set()
    first, have_token = set(), set()
    return await asyncio.gather(*(one(k) for k in range(n)))


async def refused_while_draining(url):
    async with websockets.connect(url, compression=None) as ws:
        await ws.send(json.dumps({"type": "generate", "id": "late", "prompt": "x", "max_tokens": 4}))
        return json.loads(await asyncio.wait_for(ws.recv(), 10))


def drain_run(s, stop):
    """Start streams, call stop() once all run, check a late request is
    refused with shutting_down while they finish."""
    async def main():
        started = asyncio.Event()
        task = asyncio.create_task(long_streams(s.url, 3, started))
        await asyncio.wait_for(started.wait(), 60)
        stop()
        await asyncio.sleep(0.3)
        late = None
        try:
            late = await refused_while_draining(s.url)
        except (OSError, websockets.InvalidHandshake, websockets.ConnectionClosed):
            late = "closed"
        return await task, late
    return asyncio.run(main())


def check_drained(results, late):
    for tokens, end in results:
        assert end["type"] == "complete", end
        assert end["finish_reason"] == "length"
        assert [t["position"] for t in tokens] == list(range(LONG))
    assert late == "closed" or (late["type"] == "error" and late["error"]["code"] == "shutting_down"), late


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_drains_running_generations_then_exits_0(supervised, small_model, sig):
    s = supervised(small_model, workers=1)
    s.wait_ready()
    t0 = time.time()
    results, late = drain_run(s, lambda: s.proc.send_signal(sig))
    check_drained(results, late)
    s.proc.wait(timeout=30)
    assert s.proc.returncode == 0
    assert time.time() - t0 < 30  # drain_timeout_s
    wait_for(lambda: s.leftovers() == ([], False, []), timeout=30, what="nothing left behind")
    assert "worker_lost" not in s.text()


def test_a_drain_on_two_workers_finishes_both(supervised, small_model):
    s = supervised(small_model, workers=2)
    s.wait_ready()
    results, late = drain_run(s, lambda: s.proc.send_signal(signal.SIGTERM))
    check_drained(results, late)
    s.proc.wait(timeout=30)
    assert s.proc.returncode == 0
    wait_for(lambda: s.leftovers() == ([], False, []), timeout=30, what="nothing left behind")


def test_a_killed_supervisor_leaves_its_children_draining_not_dying(supervised, small_model):
    s = supervised(small_model, workers=1)
    s.wait_ready()
    results, late = drain_run(s, lambda: s.proc.kill())
    try:
        check_drained(results, late)
    except AssertionError:
        print(s.text()[-6000:])
        raise
    wait_for(lambda: not s.pids("rill-worker") and not s.pids("rill-gateway"), timeout=30, what="children gone")
    wait_for(lambda: s.leftovers() == ([], False, []), timeout=30, what="nothing left behind")


# --- item 3: start-up errors exit, with their cause ------------------------------------------

def gguf_with_tensor_type(src, dst, new_type, block):
    """A copy of the GGUF file src whose first F32 tensor with rows divisible
    by `block` is declared as ggml type new_type (its data left as is)."""
    data = bytearray(open(src, "rb").read())
    off = 4
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", data, off)
    off += 20
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def skip_value(off, t):
        if t in sizes:
            return off + sizes[t]
        if t == 8:
            (n,) = struct.unpack_from("<Q", data, off)
            return off + 8 + n
        assert t == 9, t
        et, n = struct.unpack_from("<IQ", data, off)
        off += 12
        for _ in range(n):
            off = skip_value(off, et)
        return off

    for _ in range(n_kv):
        (n,) = struct.unpack_from("<Q", data, off)
        off += 8 + n
        (t,) = struct.unpack_from("<I", data, off)
        off = skip_value(off + 4, t)
    for _ in range(n_tensors):
        (n,) = struct.unpack_from("<Q", data, off)
        off += 8 + n
        (nd,) = struct.unpack_from("<I", data, off)
        ne0 = struct.unpack_from("<Q", data, off + 4)[0]
        off += 4 + 8 * nd
        (t,) = struct.unpack_from("<I", data, off)
        if t == 0 and nd == 2 and ne0 % block == 0:
            struct.pack_into("<I", data, off, new_type)
            open(dst, "wb").write(bytes(data))
            return
        off += 4 + 8
    raise AssertionError("no tensor to change")


def start_fails(supervised, model, *args, within=20):
    t0 = time.time()
    s = supervised(model, *args, workers=1)
    try:
        s.proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {within} s; log: {s.text()[-3000:]}")
    took = time.time() - t0
    out = s.proc.stdout.read()
    assert s.proc.returncode != 0
    assert "rill ready" not in out
    lines = [l for l in s.text().splitlines() if l.strip()]
    # (A child still loading its model when the start is given up may take
    # a while to go on a loaded machine.)
    try:
        wait_for(lambda: s.leftovers() == ([], False, []), timeout=30, what="nothing left behind")
    except TimeoutError:
        raise AssertionError(f"left behind: {s.leftovers()}; log: {s.text()[-2000:]}")
    start_fails.last = s
    return lines[-1], took


def test_a_model_of_an_unsupported_type_is_a_start_up_error(supervised, tiny_model, tmp_path):
    bad = str(tmp_path / "iq4.gguf")
    gguf_with_tensor_type(tiny_model, bad, 20, 32)  # iq4_nl: a type rill does not compute
    last, took = start_fails(supervised, bad)
    assert last.startswith(f"rill: cannot start: model: {bad}: "), last
    assert "iq4_nl" in last and "not support" in last
    print(last)
    assert took < 15


def test_a_corrupt_model_file_is_a_start_up_error(supervised, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a model" * 10)
    last, _ = start_fails(supervised, str(bad))
    assert last.startswith(f"rill: cannot start: model: {bad}: "), last


def test_a_missing_model_is_refused_by_rill_up(supervised, tmp_path):
    last, _ = start_fails(supervised, str(tmp_path / "nowhere.gguf"))
    assert last == f"rill-up: no model at {tmp_path / 'nowhere.gguf'}"


def test_a_port_in_use_is_a_start_up_error(supervised, tiny_model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        t0 = time.time()
        s = supervised(tiny_model, workers=1, port=port)
        s.proc.wait(timeout=20)
        lines = [l for l in s.text().splitlines() if l.strip()]
        assert s.proc.returncode == 1
        assert lines[-1] == f"rill: cannot start: gateway: 127.0.0.1:{port} already in use", lines[-3:]
        assert time.time() - t0 < 15
    wait_for(lambda: s.leftovers() == ([], False, []), timeout=30, what="nothing left behind")


def test_an_address_that_cannot_be_bound_is_a_start_up_error(supervised, tiny_model):
    # (rill-up's --port, which the fixture passes, keeps the host.)
    last, _ = start_fails(supervised, tiny_model, "--listen", "192.0.2.1:9")
    port = start_fails.last.port
    assert last == f"rill: cannot start: gateway: 192.0.2.1:{port} cannot be bound: not an address of this machine"


def test_port_without_a_value_says_so():
    from conftest import binary
    r = subprocess.run([binary("rill-supervisor"), "--port"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2
    assert r.stderr.strip() == "rill-supervisor: --port needs a value (a port number)"


def test_after_ready_a_crashing_worker_is_restarted_for_ever(supervised, tiny_model):
    """restart_max only guards the start: once ready, the fourth crash in a
    window of restart_max 2 is restarted like the first."""
    s = supervised(tiny_model, "--restart_max", "2", "--restart_window_s", "600", workers=1)
    s.wait_ready()
    for k in range(4):
        pid = s.worker_pid(0)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: s.worker_pid(0) not in (None, pid) and http_get(s.port, "/ready")[0] == 200,
                 timeout=30, what=f"restart {k + 1}")
    tokens, end = asyncio.run(generate(s.url))
    assert end["type"] == "complete"
    assert "giving up" not in s.text()
    wait_for(lambda: 'rill_process_restarts_total{process="w0"} 4' in http_get(s.port, "/metrics")[1],
             timeout=5, what="restarts counted")


def test_after_ready_a_worker_that_cannot_start_again_stops_the_supervisor(supervised, tiny_model, tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(open(tiny_model, "rb").read())
    s = supervised(str(model), workers=1)
    s.wait_ready()
    model.write_bytes(b"gone bad" * 10)
    os.kill(s.worker_pid(0), signal.SIGKILL)
    s.proc.wait(timeout=30)
    assert s.proc.returncode == 1
    last = [l for l in s.text().splitlines() if l.strip()][-1]
    assert last.startswith(f"rill: stopped: model: {model}: "), last
    wait_for(lambda: s.leftovers() == ([], False, []), timeout=30, what="nothing left behind")


# --- item 4: secrets never on a command line ----------------------------------------------------

def proc_texts(pids):
    for pid in pids:
        for what in ("cmdline", "environ"):
            try:
                yield pid, what, open(f"/proc/{pid}/{what}", "rb").read()
            except OSError:
                pass


@pytest.mark.parametrize("how", ["flag", "flag=", "config"])
def test_api_keys_are_in_no_command_line_or_environment(supervised, tiny_model, tmp_path, how):
    secret = "k-" + os.urandom(12).hex()
    if how == "config":
        cfg = tmp_path / "rill.ini"
        cfg.write_text(f"[gateway]\napi_keys = other-key, {secret}\n")
        args = ("--config", str(cfg))
    elif how == "flag":
        args = ("--api_keys", f"other-key,{secret}")
    else:
        args = (f"--api_keys=other-key,{secret}",)
    s = supervised(tiny_model, *args, workers=1)
    s.wait_ready()
    pids = [s.proc.pid] + s.pids("rill-worker") + s.pids("rill-gateway")
    assert len(pids) == 3
    seen = [(pid, what) for pid, what, text in proc_texts(pids) if secret.encode() in text]
    assert seen == [], f"the key is readable in {seen}"
    # The keys work, from a 0600 file in the run dir.
    secrets = os.path.join(s.run_dir, "secrets")
    assert oct(os.stat(secrets).st_mode & 0o777) == "0o600"

    async def with_key(key):
        url = s.url + (f"?key={key}" if key else "")
        async with websockets.connect(url, compression=None) as ws:
            await ws.send(json.dumps({"type": "generate", "prompt": "x", "max_tokens": 2}))
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if m["type"] in ("complete", "error"):
                    return m
    assert asyncio.run(with_key(secret))["type"] == "complete"
    assert asyncio.run(with_key(None))["error"]["code"] == "unauthorized"
    assert s.stop(signal.SIGINT) == ""
    assert s.proc.returncode == 0
    assert not os.path.exists(secrets)
    assert secret not in s.text()
