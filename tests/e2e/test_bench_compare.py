"""bench-compare on synthetic bench JSON, and rill-bench --save / --compare
against a fake-token pipeline: the verdicts, their direction, the noise
rule, and the exit codes."""
import copy
import json
import os
import subprocess

import pytest

from conftest import binary, start_pipeline, make_model

META = {"date": "2024-01-01T00:00:00Z", "commit": "abc1234", "dirty": False,
        "machine": {"nproc": 2, "cpu_model": "Test CPU", "hostname": "h"}}


def ring():
    return {"records_per_s": 20000000, "wake_p50_us": 10.0, "wake_p99_us": 50.0, "wake_max_us": 900.0,
            "throughput": [], "runs": 3}


def engine():
    row = {"model": "24M", "dtype": "f32", "batch": 1, "decode_tokens_per_s": 100.0,
           "prefill_tokens_per_s": 2000.0, "threads": 2, "runs": 5,
           "decode_runs_tokens_per_s": [98.0, 99.0, 100.0, 101.0, 102.0], "quick": False}
    row8 = dict(row, batch=8, decode_tokens_per_s=400.0,
                decode_runs_tokens_per_s=[300.0, 380.0, 400.0, 420.0, 500.0])
    return [row, row8]


def fanout_run(streams, tps, p50, p99, rss=50000, errors=0):
    return {"concurrency": streams, "tokens_per_s": tps,
            "added_latency_ms": {"p50": p50, "p99": p99},
            "gateway": {"cpu_pct": 50.0, "rss_kb": rss}, "requests": {"errored": errors}}


def fanout(tps=(5000, 5000, 5000), p50=(2.0, 2.0, 2.0), errors=0):
    runs = [fanout_run(100, t, l, 4.0) for t, l in zip(tps, p50)]
    med = lambda xs: sorted(xs)[len(xs) // 2]
    row = {"streams": 100, "connections": 100, "runs": 3, "tokens_per_s": med(tps),
           "added_latency_p50_ms": med(p50), "added_latency_p99_ms": 4.0, "gateway_rss_kb": 50000,
           "gateway_cpu_pct": 50.0, "errors": errors}
    return {"rows": [row], "runs": runs, "setup": {"protocol": "rill.msgpack.v1"},
            "idle_connections": {"gateway_rss_per_idle_conn_kb": 5.0}}


def write_dir(path, ring_j, engine_j, fanout_j):
    os.makedirs(path, exist_ok=True)
    for name, doc in (("ring.json", ring_j), ("engine.json", engine_j), ("fanout.json", fanout_j),
                      ("meta.json", META)):
        with open(os.path.join(path, name), "w") as f:
            json.dump(doc, f)
    return str(path)


def compare(*args):
    return subprocess.run([binary("bench-compare"), *map(str, args)], capture_output=True, text=True, timeout=10)


def verdict(out, figure):
    """The last column of the table line that names `figure`."""
    lines = [l for l in out.splitlines() if figure in l and "%" in l]
    assert len(lines) == 1, f"{figure!r} in:\n{out}"
    return lines[0].split()[-1]


@pytest.fixture
def baseline(tmp_path):
    return write_dir(tmp_path / "base", ring(), engine(), fanout())


def test_identical_results_flag_nothing_and_exit_0(tmp_path, baseline):
    cur = write_dir(tmp_path / "cur", ring(), engine(), fanout())
    r = compare("--fail-on-regression", baseline, cur)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "REGRESSION" not in r.stdout.replace("0 REGRESSION", "")
    assert "0 REGRESSION, 0 improved" in r.stdout
    assert verdict(r.stdout, "24M f32 batch 1 decode tokens/s") == "~"


def test_slower_decode_is_a_regression_and_fails_only_when_asked(tmp_path, baseline):
    e = engine()
    e[0]["decode_tokens_per_s"] = 70.0
    e[0]["decode_runs_tokens_per_s"] = [69.0, 70.0, 71.0]
    cur = write_dir(tmp_path / "cur", ring(), e, fanout())
    r = compare(baseline, cur)
    assert r.returncode == 0
    assert verdict(r.stdout, "24M f32 batch 1 decode tokens/s") == "REGRESSION"
    assert "-30.0%" in r.stdout
    r = compare("--fail-on-regression", baseline, cur)
    assert r.returncode == 1


def test_direction_higher_throughput_and_lower_latency_are_improvements(tmp_path, baseline):
    rg = ring()
    rg["records_per_s"] = 30000000   # +50%: higher is better
    rg["wake_p50_us"] = 5.0          # -50%: lower is better
    rg["wake_p99_us"] = 80.0         # +60%: worse
    cur = write_dir(tmp_path / "cur", rg, engine(), fanout())
    r = compare("--fail-on-regression", baseline, cur)
    assert verdict(r.stdout, "records/s") == "improved"
    assert verdict(r.stdout, "wake-up p50 us") == "improved"
    assert verdict(r.stdout, "wake-up p99 us") == "REGRESSION"
    assert r.returncode == 1
    assert "ringbench writes only medians" in r.stdout  # no noise: threshold alone, and said


def test_a_change_within_the_measured_noise_is_not_flagged(tmp_path, baseline):
    # added latency p50 +25%, but the current runs spread over 48%: limit 48%.
    cur = write_dir(tmp_path / "cur", ring(), engine(), fanout(p50=(1.5, 2.5, 2.7)))
    r = compare(baseline, cur)
    line = [l for l in r.stdout.splitlines() if "added latency p50" in l][0]
    assert "+25.0%" in line and "48%" in line and line.split()[-1] == "~", line
    # batch 8's own decode runs spread 50%: -20% stays inside.
    e = engine()
    e[1]["decode_tokens_per_s"] = 320.0
    cur2 = write_dir(tmp_path / "cur2", ring(), e, fanout())
    assert verdict(compare(baseline, cur2).stdout, "24M f32 batch 8 decode tokens/s") == "~"


def test_threshold_option_moves_the_limit(tmp_path, baseline):
    f = fanout(tps=(4250, 4250, 4250))  # -15%
    cur = write_dir(tmp_path / "cur", ring(), engine(), f)
    assert verdict(compare(baseline, cur).stdout, "100 streams: tokens/s") == "REGRESSION"
    assert verdict(compare("--threshold", 20, baseline, cur).stdout, "100 streams: tokens/s") == "~"


def test_errors_appearing_from_none_are_a_regression(tmp_path, baseline):
    cur = write_dir(tmp_path / "cur", ring(), engine(), fanout(errors=3))
    r = compare(baseline, cur)
    line = [l for l in r.stdout.splitlines() if "errors" in l and "streams" in l][0]
    assert "from 0" in line and line.split()[-1] == "REGRESSION"


def test_a_row_missing_now_is_reported_not_flagged(tmp_path, baseline):
    e = engine()[:1]
    cur = write_dir(tmp_path / "cur", ring(), e, fanout())
    r = compare("--fail-on-regression", baseline, cur)
    assert r.returncode == 0
    assert "missing now" in r.stdout


def test_no_baseline_says_run_make_bench_save_first(tmp_path):
    cur = write_dir(tmp_path / "cur", ring(), engine(), fanout())
    r = compare(tmp_path / "nothing-here", cur)
    assert r.returncode == 2
    assert "run make bench-save first" in r.stderr


def test_files_of_different_kinds_are_refused(tmp_path, baseline):
    r = compare(os.path.join(baseline, "ring.json"), os.path.join(baseline, "engine.json"))
    assert r.returncode == 2
    assert "nothing to compare" in r.stderr


# --- rill-bench --save / --compare --------------------------------------------------------------

def bench(url, *args):
    return subprocess.run([binary("rill-bench"), "--url", url, "--fanout", "--concurrency", "4",
                           "--max-tokens", "400", "--duration", "0.4", "--repeat", "2", "--pause", "0.1",
                           "--quiet", *map(str, args)], capture_output=True, text=True, timeout=30)


def test_rill_bench_save_then_compare_flags_a_doctored_baseline(tmp_path):
    p = start_pipeline(make_model("tiny", "--shape", "tiny"), worker_args=("--fake_tokens", "true"))
    try:
        saved = tmp_path / "base.json"
        r = bench(p.url, "--save", saved)
        assert r.returncode == 0, r.stderr
        doc = json.loads(saved.read_text())
        assert doc["rill_bench_save"] == 1
        assert doc["meta"]["repeat"] == 2 and len(doc["runs"]) == 2
        assert doc["meta"]["machine"]["nproc"] >= 1 and "--save" in doc["meta"]["command"]
        figs = {f["name"]: f for f in doc["figures"]}
        for name in ("tokens_per_s", "ttft_p50_ms", "itl_p99_ms", "added_latency_p99_ms", "errors"):
            assert name in figs, name
        tps = figs["tokens_per_s"]
        assert tps["better"] == "higher" and len(tps["runs"]) == 2 and tps["median"] > 0

        # A baseline ten times faster: now is a regression, exit 4 when asked.
        fast = copy.deepcopy(doc)
        for f in fast["figures"]:
            if f["name"] == "tokens_per_s":
                f["median"] *= 10
                f["runs"] = [x * 10 for x in f["runs"]]
        (tmp_path / "fast.json").write_text(json.dumps(fast))
        r = bench(p.url, "--compare", tmp_path / "fast.json", "--fail-on-regression")
        assert r.returncode == 4, r.stdout + r.stderr
        assert verdict(r.stdout, "tokens/s, aggregate") == "REGRESSION"
        assert "noise base/now" in r.stdout
    finally:
        p.stop()
