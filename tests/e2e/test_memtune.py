"""rill's processes run without glibc's per-thread cache (common/memtune.h),
so that malloc_trim gives back every free page when they go idle: a process
re-executes itself once with glibc.malloc.tcache_count=0 in GLIBC_TUNABLES,
unless the tunable is already set (a user's own value wins) or RILL_MEMTUNE
is 0.  The soak (make check-soak) measures what this is for; this checks the
mechanism on a real gateway and a real standalone worker.
"""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import uuid

import conftest


def environ(pid):
    """The process's environment; glibc's start-up (2.36) cuts GLIBC_TUNABLES
    in place after each tunable, so the rest show as entries of their own."""
    env, last = {}, None
    with open(f"/proc/{pid}/environ", "rb") as f:
        for kv in f.read().decode().split("\0"):
            if kv.startswith("glibc.") and last == "GLIBC_TUNABLES":
                env[last] += ":" + kv
            elif "=" in kv:
                last, v = kv.split("=", 1)
                env[last] = v
    return env


def gateway_env(env):
    """GLIBC_TUNABLES of a running standalone gateway started with env."""
    port = conftest.free_port()
    run_dir = tempfile.mkdtemp(prefix="rill-memtune-")
    inst = "m" + uuid.uuid4().hex[:8]
    p = subprocess.Popen([conftest.binary("rill-gateway"), "--instance", inst, "--run_dir", run_dir,
                          "--listen", f"127.0.0.1:{port}",
                          "--worker_list", f"ipc://{run_dir}/w0.sock@{conftest.ring_name(inst, 0)}"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # The re-exec keeps the pid; wait until the process runs the gateway
        # (its listening socket), not the first image.
        conftest.wait_for(lambda: p.poll() is not None or _listening(port), what="the gateway to listen")
        assert p.poll() is None, f"the gateway exited with {p.returncode}"
        return environ(p.pid).get("GLIBC_TUNABLES")
    finally:
        p.terminate()
        p.wait(10)
        shutil.rmtree(run_dir, ignore_errors=True)


def _listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def base_env(**kw):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "RILL_MEMTUNE", "RILL_MEMTUNE_PID")}
    env.update(kw)
    return env


def test_the_gateway_runs_without_the_tcache():
    assert gateway_env(base_env()) == "glibc.malloc.tcache_count=0"


def test_other_tunables_are_kept():
    assert gateway_env(base_env(GLIBC_TUNABLES="glibc.malloc.arena_max=2")) == \
        "glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0"


def test_a_users_own_setting_wins():
    assert gateway_env(base_env(GLIBC_TUNABLES="glibc.malloc.tcache_count=3")) == "glibc.malloc.tcache_count=3"
    # Also when it is not the first tunable (which is all getenv() shows).
    assert gateway_env(base_env(GLIBC_TUNABLES="glibc.malloc.arena_max=2:glibc.malloc.tcache_count=3")) == \
        "glibc.malloc.arena_max=2:glibc.malloc.tcache_count=3"


def test_rill_memtune_0_turns_it_off():
    assert gateway_env(base_env(RILL_MEMTUNE="0")) is None


def test_the_standalone_worker_still_generates(small_model):
    """The re-exec passes every argument on: a standalone generation is the
    same with and without it."""
    args = [conftest.binary("rill-worker"), "--model", small_model, "--prompt", "Once upon", "-n", "8", "--temperature", "0", "--json"]
    def ids(env):
        out = subprocess.run(args, env=env, capture_output=True, check=True).stdout.decode()
        return [json.loads(line).get("id") for line in out.splitlines() if line.startswith('{"id"')]
    a = ids(base_env())
    assert len(a) == 8 and a == ids(base_env(RILL_MEMTUNE="0"))
