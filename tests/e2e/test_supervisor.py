"""The supervisor runs the pipeline: one command up, crashes and hangs
restarted, clean shutdown, and a dead predecessor's leftovers cleaned."""
import asyncio
import json
import os
import signal
import subprocess
import time

import websockets

from conftest import ROOT, binary, generate, http_get, wait_for



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


def test_killed_worker_is_restarted_and_its_clients_go_on_on_it(supervised, tiny_model):
    """The supervisor restarts a killed worker; its running generation waits
    for it and goes on from where it was (failover), with every position
    once."""
    s = supervised(tiny_model, workers=1)
    s.wait_ready()

    async def long_then_kill():
        async with websockets.connect(s.url, compression=None) as ws:
            await ws.send(json.dumps({"type": "generate", "id": "long", "prompt": "x", "max_tokens": 300,
                                      "params": {"temperature": 0}}))
            got, positions = 0, []
            while True:
                m = json.loads(await ws.recv())
                if m["type"] in ("token", "tokens"):
                    got += 1
                    positions += [t["position"] for t in (m["tokens"] if m["type"] == "tokens" else [m["token"]])]
                    if got == 3:
                        os.kill(s.worker_pid(0), signal.SIGKILL)
                elif m["type"] in ("complete", "error"):
                    return m, positions

    end, positions = asyncio.run(long_then_kill())
    assert end["type"] == "complete", end
    assert positions == list(range(300)), positions
    wait_for(lambda: http_get(s.port, "/ready")[0] == 200, what="worker back")
    # The restarted worker serves.  Just after it came back, a recoverable
    # refusal (busy, not yet routed to) is what a client retries.
    for _ in range(5):
        tokens, end = asyncio.run(generate(s.url))
        if end["type"] == "complete" or not end["error"]["recoverable"]:
            break
        time.sleep(1)
    assert end["type"] == "complete" and len(tokens) == 16, end
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


def test_killed_supervisor_is_cleaned_up_by_the_next_start(supervised, tiny_model):
    s = supervised(tiny_model, workers=1)
    s.wait_ready()
    # SIGKILL to the whole tree at once: nobody cleans up ...
    # (The supervisor is stopped first: children that outlive it drain and
    # clean up after themselves, and one that dies first would be restarted.)
    children = s.pids("rill-worker") + s.pids("rill-gateway")
    s.proc.send_signal(signal.SIGSTOP)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    s.proc.kill()
    s.proc.wait()
    wait_for(lambda: not s.pids("rill-worker") and not s.pids("rill-gateway"), timeout=15, what="all gone")
    # ... leaving the run dir and the ring behind, which the next start of
    # the instance cleans.  (A supervisor killed alone is cleaned up after
    # by its children: test_hardening_sup.py.)
    assert os.path.exists(os.path.join(s.run_dir, "supervisor.pid"))
    assert s.leftovers()[0]
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
