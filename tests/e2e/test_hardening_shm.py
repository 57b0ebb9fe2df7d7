"""The worker's token ring against a hostile or cramped /dev/shm (issue 11,
items 6 and 7): a /dev/shm too small for the ring, and a ring name someone
else took first.  Either way the worker exits non-zero at once with one error
line that names the cause, and leaves what it found alone.

The small /dev/shm is a real 1 MiB tmpfs mounted in a private mount namespace
(`unshare -m`), so the machine's /dev/shm is never touched; squatting as
another user takes root.  Without the privilege the tests are skipped.
"""
import os
import re
import subprocess
import tempfile
import time
import uuid

import pytest

from conftest import binary, ring_name

NOBODY = 65534
PROMPT_S = 10  # "promptly": the tiny model loads in milliseconds


def _can_unshare():
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_worker(model, instance, prefix=(), ring_bytes="4M"):
    """rill-worker (standalone, like the e2e pipelines) started behind an
    optional command prefix; returns (returncode, stderr, seconds)."""
    run_dir = tempfile.mkdtemp(prefix="rill-e2e-shm-")
    argv = [*prefix, binary("rill-worker"), "--instance", instance, "--run_dir", run_dir, "--model", model,
            "--worker_id", "0", "--threads", "1", "--ring_bytes", ring_bytes]
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=PROMPT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the worker still ran after {PROMPT_S} s (it should have refused to start); "
                    f"stderr: {e.stderr!r}")
    finally:
        for f in os.listdir(run_dir):
            os.unlink(os.path.join(run_dir, f))
        os.rmdir(run_dir)
    return p.returncode, p.stderr, time.monotonic() - t0


def error_lines(stderr):
    return [l for l in stderr.splitlines() if re.search(r"\berror\b", l)]


@pytest.mark.skipif(not _can_unshare(), reason="needs unshare -m (root or CAP_SYS_ADMIN)")
@pytest.mark.parametrize("fill,free", [(False, "1.0 MiB"), (True, "0 KiB")], ids=["small", "full"])
def test_worker_refuses_a_dev_shm_too_small_for_its_ring(tiny_model, fill, free):
    """A 4 MiB ring in a 1 MiB /dev/shm (empty, or filled to the brim): the
    memory is reserved at creation, so the worker says why and exits 1 at once
    instead of dying of SIGBUS on a write (the full case did before) or
    running until the ring grows past what /dev/shm holds (the small one)."""
    instance = "h" + uuid.uuid4().hex[:8]
    setup = "mount -t tmpfs -o size=1m tmpfs /dev/shm"
    if fill:
        setup += " && { dd if=/dev/zero of=/dev/shm/fill bs=64k 2>/dev/null; true; }"
    rc, err, secs = run_worker(tiny_model, instance, ["unshare", "-m", "sh", "-c", setup + ' && exec "$@"', "sh"])
    assert rc == 1, f"exit {rc} (-7 is SIGBUS); stderr: {err}"
    assert secs < PROMPT_S
    want = (f"ring {ring_name(instance, 0)}: /dev/shm has {free} free, the ring needs 4.0 MiB "
            f"(lower ring_bytes or give /dev/shm more room)")
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].endswith(want), lines[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid takes root")
@pytest.mark.parametrize("uid,mode,why", [
    (NOBODY, 0o600, f"belongs to uid {NOBODY}, not to us (uid 0): another user holds the name"),
    (0, 0o644, "has mode 0644, but a ring is 0600 (others could read or write it)"),
], ids=["other-user", "loose-mode"])
def test_worker_refuses_a_ring_name_someone_else_took(tiny_model, uid, mode, why):
    """/dev/shm/rill-<uid>-<instance>-w0 made first by another user (or left
    readable by others): the worker neither uses nor replaces it; it exits 1
    at once with one line naming the object and its owner or mode."""
    instance = "h" + uuid.uuid4().hex[:8]
    name = ring_name(instance, 0)
    path = "/dev/shm" + name
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, 4096 + (4 << 20))
        os.write(fd, b"squatter's data")
        os.fchmod(fd, mode)
        os.fchown(fd, uid, uid)
        os.close(fd)
        rc, err, secs = run_worker(tiny_model, instance)
        assert rc == 1, f"exit {rc}; stderr: {err}"
        assert secs < PROMPT_S
        lines = error_lines(err)
        assert len(lines) == 1, err
        assert lines[0].endswith(f"ring {name}: {path} {why}; remove it or choose another instance"), lines[0]
        st = os.stat(path)
        assert (st.st_uid, st.st_mode & 0o777, st.st_size) == (uid, mode, 4096 + (4 << 20))
        with open(path, "rb") as f:
            assert f.read(15) == b"squatter's data"
    finally:
        os.unlink(path)
