"""benchsave.py — write a rill-bench --save file (format 1) from Python, for
the benchmark scripts whose runs rill-bench does not make itself
(bench-ttft.sh, bench-standard.sh's kernel-peak); bench-compare reads it
like rill-bench's own."""
import json
import os
import socket
import statistics
import subprocess
import time


def _git(src, *args):
    try:
        out = subprocess.run(["git", "-C", src, *args], capture_output=True, text=True, timeout=20).stdout.strip()
        return out or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def write(path, src, command, figures, runs):
    """figures: (name, label, unit, better "higher"/"lower", kind
    "median"/"tail"/"count", values of every run); runs: each run's result."""
    out = []
    for name, label, unit, better, kind, v in figures:
        med = statistics.median(v)
        out.append({"name": name, "label": label, "unit": unit, "better": better, "kind": kind, "median": med,
                    "spread_pct": 100 * (max(v) - min(v)) / abs(med) if len(v) > 1 and med else None, "runs": v})
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": _git(src, "rev-parse", "--short", "HEAD"),
            "dirty": bool(_git(src, "status", "--porcelain", "--untracked-files=no")),
            "machine": {"nproc": os.cpu_count(), "cpu_model": _cpu_model(), "hostname": socket.gethostname()},
            "command": command, "repeat": len(runs), "repeat_asked": len(runs), "interrupted": False,
            "spread": "(max - min) / |median| of the runs, in %; null below two runs"}
    with open(path, "w") as f:
        json.dump({"rill_bench_save": 1, "meta": meta, "figures": out, "runs": runs}, f, indent=1)
        f.write("\n")
