"""make bench-memory in small: tools/bench-memory.py on the tiny model, one
and two streams — the stack's summed peak RSS over the engine alone's, the
same token ids, the breakdown from /metrics (a tiny model's ratio is large:
the gateway and the supervisor weigh more than its weights; the 1.10 bound
is for the 134M model of make bench-memory)."""
import json
import os
import subprocess
import sys

from conftest import BUILD

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_bench_memory_streams_the_baselines_tokens_and_sums_every_process(tiny_model, tmp_path):
    out = tmp_path / "memory.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "bench-memory.py"), "--build", BUILD,
                        "--model", tiny_model, "--streams", "1,2", "--max-tokens", "8", "--max-ratio", "100",
                        "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(out.read_text())
    assert d["rill_bench_save"] == 1 and d["failed"] == []
    assert [row["streams"] for row in d["rows"]] == [1, 2]
    for row in d["rows"]:
        assert row["tokens_match"] is True
        assert row["tokens"] == 8 * row["streams"]
        assert row["kv_capacity_match"] is True
        peaks = row["peak_rss_bytes"]
        assert set(peaks) == {"supervisor", "gateway", "w0", "baseline"}
        stack = peaks["supervisor"] + peaks["gateway"] + peaks["w0"]
        assert abs(row["ratio"] - stack / peaks["baseline"]) < 1e-3
        # /metrics: every process's peak RSS and the worker's parts.
        assert set(row["metrics_peak_rss_bytes"]) == {"supervisor", "g0", "w0"}
        assert all(v > 0 for v in row["metrics_peak_rss_bytes"].values())
        bd = row["breakdown_mib"]
        assert bd["weights"] > 0 and bd["activations"] > 0 and bd["ring"] == 4.0
        assert bd["gateway"] > 0 and bd["supervisor"] > 0
    assert "ratio" in r.stdout and "same" in r.stdout
