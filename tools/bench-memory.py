#!/usr/bin/env python3
"""bench-memory.py — memory, measured honestly (issue 16 §2).

For each count N of streams (1, 8, 32):
  stack     the whole pipeline under its supervisor (deploy/rill-up, one
            worker; tools/chaos.py's Pipeline) serves N WebSocket streams at
            once, one per connection, greedy, each to max_tokens;
            its peak RSS is the sum of every process's VmHWM
            (/proc/PID/status: supervisor, gateway, worker) read after the
            last stream ended;
  baseline  build/rill-bench-memory — the engine alone, one process, no
            streaming — generates the same N sequences to their end, given
            the served worker's own command line (its config keys), so it
            builds the same engine: the same KV cache (checked:
            kv_capacity_bytes must equal the worker's), context, batch,
            threads and scratch.  Its peak RSS is its VmHWM.
The token ids the stack streamed must equal the baseline's, sequence by
sequence; a difference fails the run (exit 1).  ratio = stack / baseline.

The breakdown: weights, KV cache, prefix cache, activations (the engine's
own accounts, engine_memory(); the worker's from /metrics,
rill_worker_memory_bytes{part=...}), the ring (shared memory: counted in the
worker's and the gateway's VmHWM alike, as a sum of VmHWM does), and the
gateway's and the supervisor's peak RSS (rill_process_peak_rss_bytes).

Model: the 134M F32 model the other benchmarks use (rill-mkmodel --shape
134M --dtype f32 into BUILD/bench-models), or --model.  Prompts: fixed
(chaos.PROMPTS with the stream's number).  Writes BUILD/bench/memory.json
(a rill-bench --save file as well, so bench-compare compares it) and prints
a table.  Exit 0; 1 on different tokens, a failed run, or a ratio above
--max-ratio (1.10); 2 when nothing could run.

usage: tools/bench-memory.py --build B [--streams 1,8,32] [--max-tokens 64]
           [--threads 1] [--model M] [--json OUT] [--max-ratio 1.10]
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chaos  # noqa: E402  (its Pipeline, prompts and greedy parameters)

import websockets  # noqa: E402

ROOT = chaos.ROOT
PARTS = ("weights", "kv_cache", "prefix_cache", "activations", "ring")
MIB = 1 << 20


def log(msg):
    print(f"bench-memory: {msg}", file=sys.stderr, flush=True)


def ensure_model(build):
    d = os.path.join(build, "bench-models")
    path = os.path.join(d, "134m-f32.gguf")
    if not os.path.exists(path):
        os.makedirs(d, exist_ok=True)
        subprocess.run([os.path.join(build, "rill-mkmodel"), "--shape", "134M", "--dtype", "f32",
                        "--out", path + ".tmp"], check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        os.replace(path + ".tmp", path)
    return path


def requests(n, max_tokens):
    return [{"prompt": f"{chaos.PROMPTS[k % len(chaos.PROMPTS)]} (story {k})", "max_tokens": max_tokens}
            for k in range(n)]


def peak_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def metrics(port):
    """rill_worker_memory_bytes and rill_process_peak_rss_bytes from /metrics."""
    out = {"worker": {}, "peak": {}}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("rill_worker_memory_bytes{"):
                labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.index("}")].split(","))
                out["worker"][labels["part"].strip('"')] = float(line.rsplit(None, 1)[1])
            elif line.startswith("rill_process_peak_rss_bytes{"):
                proc = line.split('process="', 1)[1].split('"', 1)[0]
                out["peak"][proc] = float(line.rsplit(None, 1)[1])
    return out


async def one_stream(url, k, req):
    ids = []
    async with websockets.connect(url, subprotocols=[chaos.JSON_P], max_size=None) as ws:
        await ws.send(json.dumps({"type": "generate", "id": f"m{k}", "prompt": req["prompt"],
                                  "max_tokens": req["max_tokens"], "params": chaos.GREEDY}))
        while True:
            m = json.loads(await asyncio.wait_for(ws.recv(), 600))
            if m["type"] == "token":
                ids.append(m["token"]["id"])
            elif m["type"] == "tokens":
                ids += [t["id"] for t in m["tokens"]]
            elif m["type"] == "complete":
                return {"ids": ids, "finish": m.get("finish_reason")}
            elif m["type"] == "error":
                raise RuntimeError(f"stream {k}: {m['error']}")


async def serve_all(url, reqs):
    return await asyncio.gather(*(one_stream(url, k, r) for k, r in enumerate(reqs)))


def run_stack(a, model, reqs, tmp):
    p = chaos.Pipeline(a.build, model, 1, os.path.join(tmp, f"stack-{len(reqs)}.log"),
                       extra=("--threads_per_worker", str(a.threads), "--log_level", "warn"))
    try:
        p.wait_ready()
        t0 = time.monotonic()
        seqs = asyncio.run(serve_all(p.url, reqs))
        secs = time.monotonic() - t0
        time.sleep(1.0)  # a heartbeat and a stats round after the end: the figures of the whole run
        procs = p.processes()
        with open(f"/proc/{procs['w0']}/cmdline", "rb") as f:
            worker_args = f.read().decode().split("\0")[1:-1]
        peaks = {name: peak_rss(pid) for name, pid in procs.items()}
        m = metrics(p.port)
        kv_cap = p.metric("rill_worker_kv_cache_capacity_bytes")
    finally:
        rc = p.stop()
    if rc not in (0, None):
        log(f"warning: the pipeline exited {rc}")
    return {"sequences": seqs, "seconds": round(secs, 2), "peak_rss_bytes": peaks,
            "peak_rss_sum_bytes": sum(peaks.values()), "metrics": m, "kv_capacity_bytes": kv_cap,
            "worker_args": worker_args}


def run_baseline(a, worker_args, reqs, tmp):
    rq = os.path.join(tmp, f"requests-{len(reqs)}.json")
    out = os.path.join(tmp, f"baseline-{len(reqs)}.json")
    with open(rq, "w") as f:
        json.dump(reqs, f)
    # The worker's own flags (its config keys; those of its place in the
    # pipeline — control socket, ring, id — do nothing here).
    subprocess.run([os.path.join(a.build, "rill-bench-memory"), *worker_args, "--log_level", "warn",
                    "--requests", rq, "--json", out], check=True)
    with open(out) as f:
        return json.load(f)


def same_tokens(n, stack, base):
    for k, (s, b) in enumerate(zip(stack["sequences"], base["sequences"])):
        if s["ids"] != b["ids"]:
            at = next((i for i, (x, y) in enumerate(zip(s["ids"], b["ids"])) if x != y),
                      min(len(s["ids"]), len(b["ids"])))
            log(f"MISMATCH at {n} streams: sequence {k} differs from position {at}: streamed "
                f"{s['ids'][at:at + 5]}... ({len(s['ids'])} ids), baseline {b['ids'][at:at + 5]}... "
                f"({len(b['ids'])} ids)")
            return False
    return len(stack["sequences"]) == len(base["sequences"])


def save_figures(rows, a):
    """The rill-bench --save shape, so that bench-compare reads memory.json."""
    figs = []

    def fig(name, label, value, unit):
        figs.append({"name": name, "label": label, "better": "lower", "kind": "median", "unit": unit,
                     "median": value, "runs": [value]})

    for r in rows:
        n = r["streams"]
        fig(f"ratio_{n}", f"memory {n:2d} streams: stack / baseline peak RSS", r["ratio"], "")
        fig(f"stack_{n}", f"memory {n:2d} streams: stack peak RSS", r["stack_peak_mib"], "MiB")
        fig(f"baseline_{n}", f"memory {n:2d} streams: baseline peak RSS", r["baseline_peak_mib"], "MiB")
        fig(f"gateway_{n}", f"memory {n:2d} streams: gateway peak RSS", r["breakdown_mib"]["gateway"], "MiB")
    return figs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", required=True)
    ap.add_argument("--streams", default="1,8,32")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="the worker's (and so the baseline's) threads")
    ap.add_argument("--model")
    ap.add_argument("--json")
    ap.add_argument("--max-ratio", type=float, default=1.10)
    a = ap.parse_args()
    a.build = os.path.abspath(a.build)
    for b in ("rill-bench-memory", "rill-worker", "rill-gateway", "rill-supervisor", "rill-mkmodel"):
        if not os.access(os.path.join(a.build, b), os.X_OK):
            log(f"{a.build}/{b} is missing: build it first")
            return 2
    model = os.path.abspath(a.model) if a.model else ensure_model(a.build)
    out = a.json or os.path.join(a.build, "bench", "memory.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="rill-bench-memory-") as tmp:
        for n in [int(x) for x in a.streams.split(",")]:
            reqs = requests(n, a.max_tokens)
            log(f"{n} streams: the stack")
            try:
                st = run_stack(a, model, reqs, tmp)
                log(f"{n} streams: the baseline (rill-bench-memory with the worker's flags)")
                bl = run_baseline(a, st["worker_args"], reqs, tmp)
            except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
                log(f"{n} streams: failed: {e}")
                return 2 if not rows else 1
            same = same_tokens(n, st, bl)
            same_kv = st["kv_capacity_bytes"] == bl["kv_capacity_bytes"]
            if not same_kv:
                log(f"KV CACHE DIFFERS at {n} streams: worker {st['kv_capacity_bytes']}, baseline "
                    f"{bl['kv_capacity_bytes']}: the comparison is not fair")
            ratio = st["peak_rss_sum_bytes"] / bl["peak_rss_bytes"]
            wm, peaks = st["metrics"]["worker"], st["peak_rss_bytes"]
            bd = {p: wm.get(p, 0) / MIB for p in PARTS}
            bd["worker_other"] = (peaks["w0"] - sum(wm.get(p, 0) for p in PARTS)) / MIB
            bd["gateway"] = peaks["gateway"] / MIB
            bd["supervisor"] = peaks["supervisor"] / MIB
            bbd = {p: bl["memory"][p] / MIB for p in PARTS if p in bl["memory"]}
            bbd["other"] = (bl["peak_rss_bytes"] - sum(bl["memory"].values())) / MIB
            row = {"streams": n, "max_tokens": a.max_tokens, "ratio": round(ratio, 4),
                   "stack_peak_mib": round(st["peak_rss_sum_bytes"] / MIB, 1),
                   "baseline_peak_mib": round(bl["peak_rss_bytes"] / MIB, 1),
                   "tokens_match": same, "kv_capacity_match": same_kv,
                   "kv_capacity_bytes": bl["kv_capacity_bytes"], "context": bl["context"],
                   "threads": bl["threads"],
                   "peak_rss_bytes": {**{k: v for k, v in peaks.items()}, "baseline": bl["peak_rss_bytes"]},
                   "breakdown_mib": {k: round(v, 1) for k, v in bd.items()},
                   "baseline_breakdown_mib": {k: round(v, 1) for k, v in bbd.items()},
                   "metrics_peak_rss_bytes": st["metrics"]["peak"],
                   "stack_seconds": st["seconds"], "baseline_seconds": round(bl["seconds"], 2),
                   "tokens": sum(len(s["ids"]) for s in st["sequences"])}
            rows.append(row)
            if not same:
                failed.append(f"{n} streams: token ids differ")
            if not same_kv:
                failed.append(f"{n} streams: KV cache sizes differ")
            if ratio > a.max_ratio:
                failed.append(f"{n} streams: ratio {ratio:.3f} > {a.max_ratio}")
    git = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    result = {
        "rill_bench_save": 1,
        "meta": {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": git.stdout.strip() or None,
                 "command": " ".join(sys.argv), "machine": {"nproc": os.cpu_count()}},
        "setup": {"model": model, "max_tokens": a.max_tokens, "threads": a.threads, "max_ratio": a.max_ratio,
                  "baseline": "rill-bench-memory with the served worker's flags: same engine, same KV cache"},
        "runs": [{"mode": "memory", "max_tokens": a.max_tokens}],
        "rows": rows,
        "figures": save_figures(rows, a),
        "failed": failed,
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    cols = ("weights", "kv_cache", "prefix_cache", "activations", "ring", "worker_other", "gateway", "supervisor")
    print(f"{'streams':>7} {'baseline':>9} {'stack':>9} {'ratio':>6} {'ids':>4} | "
          + " ".join(f"{c:>12}" for c in cols) + "   (MiB)")
    for r in rows:
        print(f"{r['streams']:7d} {r['baseline_peak_mib']:9.1f} {r['stack_peak_mib']:9.1f} {r['ratio']:6.3f} "
              f"{'same' if r['tokens_match'] else 'DIFF':>4} | "
              + " ".join(f"{r['breakdown_mib'][c]:12.1f}" for c in cols))
    for r in rows:
        print(f"{r['streams']:7d} baseline alone: "
              + ", ".join(f"{k} {v:.1f}" for k, v in r["baseline_breakdown_mib"].items()) + " MiB")
    print(f"baseline: rill-bench-memory with the worker's flags (KV cache "
          f"{rows[0]['kv_capacity_bytes'] / MIB:.0f} MiB reserved, context {rows[0]['context']}, "
          f"{rows[0]['threads']} thread(s)); {a.max_tokens} tokens a stream; results in {out}")
    for f in failed:
        log(f"FAILED: {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
