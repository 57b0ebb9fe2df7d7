#!/usr/bin/env python3
"""bench-prefix.py — what the prefix cache does to time to first token.

Requests share a system prompt of about SYS tokens (default 500) and each
ends with its own user message of about USER tokens (20), one at a time
(rill-bench --concurrency 1 --max-tokens 1: time to first token is the
whole request), on the 134M F32 model (rill-mkmodel --shape 134M --dtype
f32, into BUILD/bench-models).  The whole pipeline runs under its
supervisor (deploy/rill-up, one worker), started afresh for every run, so
every run begins with an empty cache: its first request computes the system
prompt, the others find it.  Runs alternate without (prefix_cache=false)
and with the cache, RUNS times each; the result is the median over runs of
each run's TTFT p50, their ratio against the goal (<= 0.2), the cache's
counters from /metrics at the end of each run, and every run's raw result,
in BUILD/bench/prefix.json.

The system prompt is words of tools/data/corpus.txt, sized with the
server's own count (usage.prompt_tokens of POST /v1/completions) before the
first run; the token counts used are in the result.

usage: tools/bench-prefix.py --build BUILD [--runs 3] [--requests 16]
           [--sys-tokens 500] [--user-tokens 20] [--threads 0] [--goal 0.2]
"""
import argparse
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def log(msg):
    print(f"bench-prefix: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pipeline:
    """deploy/rill-up with one worker, stopped (drained) by stop()."""

    def __init__(self, build, model, prefix, threads):
        self.port = free_port()
        self.instance = "bp" + uuid.uuid4().hex[:8]
        self.run_dir = os.path.join(tempfile.gettempdir(), f"rill-bench-prefix-{self.instance}")
        self.log = tempfile.NamedTemporaryFile("w+", prefix="rill-bench-prefix-", suffix=".log", delete=False)
        env = dict(os.environ, RILL_BUILD=build)
        self.proc = subprocess.Popen(
            [os.path.join(ROOT, "deploy", "rill-up"), "--model", model, "--port", str(self.port), "--workers", "1",
             "--instance", self.instance, "--run_dir", self.run_dir, "--threads_per_worker", str(threads),
             "--log_level", "warn", "--prefix_cache", "true" if prefix else "false"],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line.startswith("rill ready at "):
            self.stop()
            self.log.seek(0)
            raise RuntimeError(f"the pipeline did not start: {line!r}\n{self.log.read()[-3000:]}")
        self.url = f"ws://127.0.0.1:{self.port}/stream"

    def http(self, method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            c.request(method, path, body=json.dumps(body) if body is not None else None,
                      headers={"Content-Type": "application/json"} if body is not None else {})
            r = c.getresponse()
            return r.status, r.read().decode()
        finally:
            c.close()

    def prompt_tokens(self, prompt):
        status, body = self.http("POST", "/v1/completions",
                                 {"model": "rill", "prompt": prompt, "max_tokens": 1, "temperature": 0})
        if status != 200:
            raise RuntimeError(f"/v1/completions answered {status}: {body[:300]}")
        return json.loads(body)["usage"]["prompt_tokens"]

    def prefix_metrics(self, want_lookups):
        """The worker's rill_worker_prefix_cache_* samples, once the heartbeat
        that carries want_lookups lookups has reached /metrics."""
        out = {}
        for _ in range(100):
            status, text = self.http("GET", "/metrics")
            out = {}
            for m in re.finditer(r'^rill_worker_prefix_cache_(\w+)\{process="w0"\} (\S+)$', text, re.M):
                out[m.group(1)] = float(m.group(2))
            if out.get("lookups_total", 0) >= want_lookups:
                break
            time.sleep(0.1)
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


def corpus_words():
    with open(os.path.join(ROOT, "tools", "data", "corpus.txt"), encoding="utf-8") as f:
        return f.read().split()


def sized(p, make, target, start):
    """make(n) for the n whose prompt_tokens is closest to target (a few tries)."""
    n, best = start, None
    for _ in range(6):
        t = p.prompt_tokens(make(n))
        if best is None or abs(t - target) < abs(best[1] - target):
            best = (n, t)
        if abs(t - target) <= 1:
            break
        n = max(1, n + round((target - t) * n / max(t, 1)))
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--sys-tokens", type=int, default=500)
    ap.add_argument("--user-tokens", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="the worker's threads (0: every core)")
    ap.add_argument("--goal", type=float, default=0.2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    out = a.out or os.path.join(build, "bench", "prefix.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    for b in ("rill-supervisor", "rill-gateway", "rill-worker", "rill-bench", "rill-mkmodel"):
        if not os.access(os.path.join(build, b), os.X_OK):
            sys.exit(f"bench-prefix: {build}/{b} is missing: build it first")
    model = os.path.join(build, "bench-models", "134m-f32.gguf")
    if not os.path.exists(model):
        os.makedirs(os.path.dirname(model), exist_ok=True)
        log(f"making {model}")
        subprocess.run([os.path.join(build, "rill-mkmodel"), "--shape", "134M", "--dtype", "f32",
                        "--out", model + ".tmp"], check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        os.rename(model + ".tmp", model)

    words = corpus_words()
    sys_text = lambda n: " ".join(words[:n])
    user_text = lambda i, n: f"Question {i}: " + " ".join(words[5000 + 37 * i:5000 + 37 * i + n]) + "?"
    tmp = tempfile.mkdtemp(prefix="rill-bench-prefix-")
    prompts = os.path.join(tmp, "prompts.txt")

    # Size the prompts with the model's tokenizer (on a pipeline without the cache).
    p = Pipeline(build, model, False, a.threads)
    try:
        n_sys, t_sys = sized(p, sys_text, a.sys_tokens, a.sys_tokens * 3 // 4)
        sys_prompt = sys_text(n_sys)
        n_user, t_total = sized(p, lambda n: sys_prompt + " " + user_text(0, n), t_sys + a.user_tokens,
                                a.user_tokens // 2)
    finally:
        p.stop()
    with open(prompts, "w") as f:
        for i in range(a.requests):
            f.write(sys_prompt + " " + user_text(i, n_user) + "\n")
    log(f"system prompt: {n_sys} words, {t_sys} tokens; with a user message: {t_total} tokens")

    runs = {"without": [], "with": []}
    for r in range(a.runs):
        for mode in ("without", "with"):
            p = Pipeline(build, model, mode == "with", a.threads)
            try:
                jf = os.path.join(tmp, f"{mode}-{r}.json")
                subprocess.run([os.path.join(build, "rill-bench"), "--url", p.url, "--prompt-file", prompts,
                                "--concurrency", "1", "--connections", "1", "--requests", str(a.requests),
                                "--max-tokens", "1", "--temperature", "0", "--json", jf, "--quiet"], check=True)
                res = json.load(open(jf))
                res["prefix_cache_metrics"] = p.prefix_metrics(a.requests if mode == "with" else 0)
            finally:
                p.stop()
            runs[mode].append(res)
            errs = res["requests"].get("errored", 0)
            log(f"run {r + 1}/{a.runs} {mode}: TTFT p50 {res['ttft_ms']['p50']:.1f} ms, "
                f"p90 {res['ttft_ms'].get('p90', 0):.1f} ms, {errs} errors; cache {res['prefix_cache_metrics']}")

    med = lambda xs: round(statistics.median(xs), 3) if xs else None

    def row(rs):
        return {
            "runs": len(rs),
            "ttft_p50_ms": med([x["ttft_ms"]["p50"] for x in rs]),
            "ttft_p50_ms_each": [x["ttft_ms"]["p50"] for x in rs],
            "ttft_p99_ms": med([x["ttft_ms"]["p99"] for x in rs]),
            "ttft_max_ms": med([x["ttft_ms"].get("max", 0) for x in rs]),
            "errors": sum(x["requests"].get("errored", 0) for x in rs),
            "token_hit_ratio": med([x["prefix_cache_metrics"].get("token_hit_ratio", 0) for x in rs]),
            "request_hit_ratio": med([x["prefix_cache_metrics"].get("request_hit_ratio", 0) for x in rs]),
        }

    w0, w1 = row(runs["without"]), row(runs["with"])
    ratio = round(w1["ttft_p50_ms"] / w0["ttft_p50_ms"], 4) if w0["ttft_p50_ms"] else None
    pairs = [round(b["ttft_ms"]["p50"] / x["ttft_ms"]["p50"], 4) for x, b in zip(runs["without"], runs["with"])]
    result = {
        "without": w0,
        "with": w1,
        "ttft_p50_ratio": ratio,
        "ttft_p50_ratio_of_each_pair": pairs,
        "goal_ttft_p50_ratio": a.goal,
        "meets_goal": ratio is not None and ratio <= a.goal,
        "setup": {"model": "134M f32 (rill-mkmodel)", "requests_per_run": a.requests,
                  "system_prompt_tokens": t_sys, "prompt_tokens": t_total, "system_prompt_words": n_sys,
                  "user_message_words": n_user, "concurrency": 1, "max_tokens": 1, "worker_threads": a.threads,
                  "cores": os.cpu_count(), "build": build,
                  "note": "each run starts a fresh pipeline (empty cache): its first request computes the "
                          "system prompt; TTFT is the client's (rill-bench), through the gateway"},
        "runs": runs,
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"prefix cache: {a.requests} requests one at a time, a {t_sys}-token system prompt + its own user "
          f"message ({t_total} tokens in all), 134M f32, {os.cpu_count()} cores; medians of {a.runs} runs")
    print(f"{'':>8} {'TTFT p50 ms':>12} {'p99 ms':>8} {'token hits':>10}  p50 of each run")
    for name, x in (("without", w0), ("with", w1)):
        each = " ".join(f"{v:.1f}" for v in x["ttft_p50_ms_each"])
        print(f"{name:>8} {x['ttft_p50_ms']:>12.1f} {x['ttft_p99_ms']:>8.1f} {x['token_hit_ratio']:>10.3f}  {each}")
    print(f"TTFT p50 with / without: {ratio} (goal <= {a.goal}); run by run: {pairs}")
    print(f"wrote {out}")
    for f in os.listdir(tmp):
        os.unlink(os.path.join(tmp, f))
    os.rmdir(tmp)
    return 0 if result["meets_goal"] else 1


if __name__ == "__main__":
    sys.exit(main())
