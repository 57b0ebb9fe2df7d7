"""The short form of `make chaos` (issue 13, part 5): tools/chaos.py for 20 s
with 24 clients on 2 supervised workers, a worker killed with SIGKILL every
2-5 s and a quarter of the connections dropped mid-stream and resumed.
Every request must end complete with exactly the standalone worker's
tokens: on a gateway without failover or resume it loses requests."""
import json
import os
import subprocess
import sys

import conftest


def test_chaos_short_run_is_exact_and_loses_nothing(tmp_path, small_model):
    out = tmp_path / "chaos.json"
    r = subprocess.run([sys.executable, os.path.join(conftest.ROOT, "tools", "chaos.py"), "chaos",
                        "--build", conftest.BUILD, "--seconds", "20", "--clients", "24", "--json", str(out),
                        # The gateway's kill -9 is in `make chaos`; here it could hit the
                        # one loss it still has (a worker killed just before it: see
                        # docs/architecture.md), and test_gateway_restart covers it exactly.
                        "--gateway-kills", "0"],
                       capture_output=True, text=True, timeout=300)
    report = r.stdout + r.stderr[-4000:]
    assert out.exists(), report
    res = json.loads(out.read_text())
    assert res["mismatches"] == 0, res["mismatch_examples"]
    assert res["lost"] == 0, res["lost_examples"]
    assert r.returncode == 0, report
    # The run proved something: workers died under running streams, which
    # went on elsewhere, and clients came back with resume.
    assert res["kills"] >= 4, res
    assert res["failovers"] >= 1 and res["failovers"] == res["failovers_metric"], res
    assert res["resumes"] >= 10, res
    assert res["requests"] >= 50 and res["completed_exact"] == res["requests"], res
