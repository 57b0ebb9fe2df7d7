#!/usr/bin/env bash
# bench-standard.sh BUILD_DIR [run|save|compare] [bench-compare options...]
#
# The standard benchmark set of the regression check: shorter than
# `make bench` (2 to 4 minutes on 2 cores instead of much longer) and the
# same every time, so that a baseline and a later run measure the same thing.
#   ring    ringbench, RING_REPEATS (3) invocations of --runs 3 --seconds 0.3;
#           ring.json holds the medians of the invocations and each of them in
#           repeats[] (bench-compare's noise for the ring figures);
#   engine  ENGINE_REPEATS (3) invocations of rill-bench-engine on the 24M
#           model in f32, f16 and q8_0 at batches 1, 8 and 32, 3 timed windows
#           of 0.3 s each, no worker comparison; engine.json holds per row the
#           medians of the invocations, each invocation's figures in
#           repeats{} and every timed window in decode_runs_tokens_per_s;
#   fanout  bench-fanout.sh at 100 and 1000 streams, 3 runs of 4 s each,
#           1000 idle connections;
#   memory  bench-memory.py (MEMORY_ARGS): the stack's summed peak RSS over
#           the engine alone's at 1, 8 and 32 streams (134M F32); its
#           memory.json is a rill-bench --save file, which bench-compare
#           reads like any other (a different token or a ratio above 1.10
#           fails the set).
#   kernel-peak  KERNEL_REPEATS (3) invocations of rill-bench-engine
#           --kernels-only: the FP32 FMA peak measured in the run and the
#           134M step's F32 products at batch 32 and 64 over it; written as
#           a rill-bench --save file (one run per invocation);
#   ttft    bench-ttft.sh, TTFT_RUNS (3) runs of each load against a fresh
#           pipeline (134M F32, one worker): Poisson arrivals (RATE 2.5/s
#           for TTFT_DURATION 10 s, ~8 in flight) and a burst of 32; its
#           ttft-poisson.json and ttft-burst.json are rill-bench --save
#           files (time to first token and inter-token p50/p99, tokens/s).
# Each writes BUILD_DIR/bench/NAME.json as `make bench` does, plus meta.json
# (date, git commit, machine, what ran).
#
#   run      the set into BUILD_DIR/bench/
#   save     the set, then BUILD_DIR/bench/{ring,engine,fanout,memory,meta}.json are
#            kept in BUILD_DIR/bench-baseline/ (the previous baseline moves
#            to bench-baseline.prev/).  Baselines stay out of git: their
#            figures belong to one machine.
#   compare  the set, then build/bench-compare BASELINE CURRENT with the
#            remaining arguments (--threshold PCT, --fail-on-regression...);
#            its exit status is this script's.
#
# Environment (optional): RING_REPEATS=3, ENGINE_REPEATS=3, ENGINE_ARGS
# (replaces the engine options above), FANOUT_STREAMS="100 1000", FANOUT_RUNS=3, FANOUT_DURATION=4,
# FANOUT_IDLE=1000; bench-fanout.sh's QUIET_WAIT (5 here) and MAX_OTHER
# (150 here, % of a core: on a busy shared machine its retries would triple
# the time; runs above it are still marked noisy in fanout.json).  Changing
# them between save and compare makes the two sets differ.
set -euo pipefail

B=${1:?usage: tools/bench-standard.sh BUILD_DIR [run|save|compare] [bench-compare options]}
MODE=${2:-run}
shift $(($# >= 2 ? 2 : 1))
case $MODE in run | save | compare) ;; *)
    echo "bench-standard: unknown mode '$MODE' (run, save or compare)" >&2
    exit 2
    ;;
esac
[ -d "$B" ] || { echo "bench-standard: no build directory $B: build first" >&2; exit 2; }
B=$(cd "$B" && pwd)
TOP=$(cd "$(dirname "$0")/.." && pwd)
OUT=$B/bench
BASE=$B/bench-baseline
PY=/usr/bin/python3

# Before minutes of benchmarks: is there anything to compare with?
if [ "$MODE" = compare ] && [ ! -f "$BASE/meta.json" ]; then
    echo "bench-standard: no baseline in $BASE: run make bench-save first" >&2
    exit 2
fi
for bin in ringbench rill-bench-engine rill-mkmodel rill-bench rill-worker rill-gateway bench-compare \
    rill-bench-memory rill-supervisor; do
    [ -x "$B/$bin" ] || { echo "bench-standard: $B/$bin is missing: build it first" >&2; exit 2; }
done

RING_REPEATS=${RING_REPEATS:-3}
ENGINE_REPEATS=${ENGINE_REPEATS:-3}
ENGINE_ARGS=${ENGINE_ARGS:-"--models 24M --dtypes f32,f16,q8_0 --batches 1,8,32 --runs 3 --run-seconds 0.3 --no-compare"}
FANOUT_STREAMS=${FANOUT_STREAMS:-"100 1000"}
FANOUT_RUNS=${FANOUT_RUNS:-3}
FANOUT_DURATION=${FANOUT_DURATION:-4}
FANOUT_IDLE=${FANOUT_IDLE:-1000}
MEMORY_ARGS=${MEMORY_ARGS:-}
TTFT_RUNS=${TTFT_RUNS:-3}
TTFT_DURATION=${TTFT_DURATION:-10}
KERNEL_REPEATS=${KERNEL_REPEATS:-3}

mkdir -p "$OUT"
# What this set did not write must not be compared: stale files of an
# earlier `make bench` would be.
rm -f "$OUT/ring.json" "$OUT/engine.json" "$OUT/fanout.json" "$OUT/memory.json" "$OUT/meta.json" "$OUT"/ring-[0-9]*.json \
    "$OUT/ttft-poisson.json" "$OUT/ttft-burst.json" "$OUT/kernel-peak.json" \
    "$OUT"/engine-[0-9]*.json
t0=$SECONDS
# The benchmarks' own tables: shown when saving or just running, not above
# the comparison.
shown() { if [ "$MODE" = compare ]; then "$@" >/dev/null; else "$@"; fi; }

echo "bench-standard: ring ($RING_REPEATS x ringbench)" >&2
RING_FILES=()
for r in $(seq "$RING_REPEATS"); do
    shown "$B/ringbench" --runs 3 --seconds 0.3 --wakeups 2000 --json "$OUT/ring-$r.json"
    RING_FILES+=("$OUT/ring-$r.json")
done
"$PY" - "$OUT/ring.json" "${RING_FILES[@]}" <<'EOF'
import json, statistics, sys
out, paths = sys.argv[1], sys.argv[2:]
runs = [json.load(open(p)) for p in paths]
res = dict(runs[0])
for k in ("records_per_s", "wake_p50_us", "wake_p99_us", "wake_max_us"):
    res[k] = statistics.median(r[k] for r in runs)
for i, row in enumerate(res["throughput"]):
    row["records_per_s"] = statistics.median(r["throughput"][i]["records_per_s"] for r in runs)
res["repeats"] = runs
res["note"] = "medians of %d ringbench invocations (tools/bench-standard.sh); repeats[] holds each" % len(runs)
with open(out, "w") as f:
    json.dump(res, f, indent=1)
    f.write("\n")
EOF
rm -f "${RING_FILES[@]}"

echo "bench-standard: engine ($ENGINE_REPEATS x rill-bench-engine $ENGINE_ARGS)" >&2
ENGINE_FILES=()
for r in $(seq "$ENGINE_REPEATS"); do
    # shellcheck disable=SC2086
    shown "$B/rill-bench-engine" --models-dir "$B/bench-models" $ENGINE_ARGS --json "$OUT/engine-$r.json"
    ENGINE_FILES+=("$OUT/engine-$r.json")
done
"$PY" - "$OUT/engine.json" "${ENGINE_FILES[@]}" <<'EOF'
import json, statistics, sys
out, paths = sys.argv[1], sys.argv[2:]
invocations = [json.load(open(p)) for p in paths]
rows = []
for row in invocations[0]:
    key = (row["model"], row["dtype"], row["batch"])
    same = [r for inv in invocations for r in inv if (r["model"], r["dtype"], r["batch"]) == key]
    merged = dict(row)
    reps = {}
    for k in ("decode_tokens_per_s", "prefill_tokens_per_s"):
        reps[k] = [r[k] for r in same]
        merged[k] = statistics.median(reps[k])
    merged["decode_runs_tokens_per_s"] = [x for r in same for x in r["decode_runs_tokens_per_s"]]
    merged["other_processes_cores"] = statistics.median(r["other_processes_cores"] for r in same)
    merged["repeats"] = reps
    rows.append(merged)
with open(out, "w") as f:
    json.dump(rows, f, indent=1)
    f.write("\n")
EOF
rm -f "${ENGINE_FILES[@]}"

echo "bench-standard: fan-out (streams $FANOUT_STREAMS, $FANOUT_RUNS runs of $FANOUT_DURATION s)" >&2
STREAMS=$FANOUT_STREAMS RUNS=$FANOUT_RUNS DURATION=$FANOUT_DURATION WARMUP=1 IDLE_CONNS=$FANOUT_IDLE \
    QUIET_WAIT=${QUIET_WAIT:-5} MAX_OTHER=${MAX_OTHER:-150} shown "$TOP/tools/bench-fanout.sh" "$B"

echo "bench-standard: memory (bench-memory.py $MEMORY_ARGS)" >&2
# shellcheck disable=SC2086
shown "$PY" "$TOP/tools/bench-memory.py" --build "$B" --json "$OUT/memory.json" $MEMORY_ARGS

echo "bench-standard: kernels against the FMA peak ($KERNEL_REPEATS x rill-bench-engine --kernels-only)" >&2
KERN_FILES=()
for r in $(seq "$KERNEL_REPEATS"); do
    shown "$B/rill-bench-engine" --models-dir "$B/bench-models" --kernels-only --kern-json "$OUT/kern-$r.json"
    KERN_FILES+=("$OUT/kern-$r.json")
done
"$PY" - "$OUT/kernel-peak.json" "$TOP" "${KERN_FILES[@]}" <<'EOF'
import json, os, sys
out, top, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path.insert(0, os.path.join(top, "tools", "lib"))
import benchsave
runs = [json.load(open(p)) for p in paths]
figures = [("fma_peak_gflop_per_s", "FP32 FMA peak", "GFLOP/s", "higher", "median",
            [d["fma_peak_gflop_per_s"] for d in runs])]
for b in (32, 64):
    figures.append(("step_134m_b%d_over_peak_pct" % b, "134M step's products at batch %d over the peak" % b, "%",
                    "higher", "median", [100 * next(x["over_peak"] for x in d["step_134m"] if x["batch"] == b)
                                         for d in runs]))
benchsave.write(out, top, "rill-bench-engine --kernels-only, %d invocations (tools/bench-standard.sh)" % len(runs),
                figures, runs)
EOF
rm -f "${KERN_FILES[@]}"

echo "bench-standard: first token (bench-ttft.sh, $TTFT_RUNS runs of poisson and burst)" >&2
RUNS=$TTFT_RUNS DURATION=$TTFT_DURATION LOADS="poisson burst" shown "$TOP/tools/bench-ttft.sh" "$B"

"$PY" - "$OUT/meta.json" "$TOP" "$((SECONDS - t0))" "$RING_REPEATS" "$ENGINE_REPEATS" "$ENGINE_ARGS" \
    "$FANOUT_STREAMS" "$FANOUT_RUNS" "$FANOUT_DURATION" "$FANOUT_IDLE" "$MEMORY_ARGS" "$TTFT_RUNS" "$TTFT_DURATION" \
    "$KERNEL_REPEATS" <<'EOF'
import json, os, socket, subprocess, sys, time
out, top, secs, ring_rep, engine_rep, engine, streams, runs, dur, idle, memory, ttft_runs, ttft_dur, kern_rep = sys.argv[1:]

def git(*args):
    try:
        return subprocess.run(["git", "-C", top, *args], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""

cpu = None
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
meta = {
    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "commit": git("rev-parse", "--short", "HEAD") or None,
    "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    "machine": {"nproc": os.cpu_count(), "cpu_model": cpu, "hostname": socket.gethostname()},
    "command": "tools/bench-standard.sh",
    "set": {
        "ring": "ringbench --runs 3 --seconds 0.3 --wakeups 2000, %s invocations" % ring_rep,
        "engine": "rill-bench-engine %s, %s invocations" % (engine, engine_rep),
        "fanout": "bench-fanout.sh STREAMS='%s' RUNS=%s DURATION=%s WARMUP=1 IDLE_CONNS=%s" % (streams, runs, dur, idle),
        "memory": ("bench-memory.py " + memory).strip(),
        "kernel_peak": "rill-bench-engine --kernels-only, %s invocations" % kern_rep,
        "ttft": "bench-ttft.sh RUNS=%s DURATION=%s LOADS='poisson burst'" % (ttft_runs, ttft_dur),
    },
    "seconds": int(secs),
}
with open(out, "w") as f:
    json.dump(meta, f, indent=1)
    f.write("\n")
EOF
echo "bench-standard: the set took $((SECONDS - t0)) s; results in $OUT" >&2

case $MODE in
save)
    rm -rf "$BASE.new"
    mkdir -p "$BASE.new"
    cp "$OUT/ring.json" "$OUT/engine.json" "$OUT/fanout.json" "$OUT/memory.json" "$OUT/ttft-poisson.json" \
        "$OUT/ttft-burst.json" "$OUT/kernel-peak.json" "$OUT/meta.json" "$BASE.new/"
    if [ -d "$BASE" ]; then
        rm -rf "$BASE.prev"
        mv "$BASE" "$BASE.prev"
    fi
    mv "$BASE.new" "$BASE"
    echo "bench-standard: baseline saved in $BASE (not in git; the previous one, if any, in $BASE.prev)" >&2
    ;;
compare)
    exec "$B/bench-compare" "$@" "$BASE" "$OUT"
    ;;
esac
