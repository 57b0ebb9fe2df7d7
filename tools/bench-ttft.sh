#!/usr/bin/env bash
# bench-ttft.sh BUILD_DIR [BASE_BUILD_DIR] — time to first token under load.
#
# Two loads, each against a fresh pipeline (one rill-worker on the 134M F32
# model made by rill-mkmodel into BUILD_DIR/bench-models, one rill-gateway):
#   poisson  rill-bench --rate RATE for DURATION s after WARMUP s, max_tokens
#            drawn from MAX_TOKENS (LO:HI), prompts of PROMPT_WORDS words,
#            arrivals and lengths from SEED (every run sends the same ones);
#            at the defaults ~8-11 generations are in flight;
#   burst    rill-bench --burst BURST (BURST_TOKENS max_tokens each).
# Each is run RUNS times; with BASE_BUILD_DIR the runs alternate between its
# worker and gateway (the code before a change) and BUILD_DIR's, so both see
# the same machine.  rill-bench is always BUILD_DIR's.  Every run's result is
# BUILD_DIR/bench/ttft-<binaries>-<load>-<run>.json; BUILD_DIR/bench/ttft.json
# holds the medians per binaries and load (TTFT p50/p90/p99, inter-token
# p50/p99, tokens/s, per-stream tokens/s, concurrency reached) and how busy
# the machine was (load average, other processes' CPU); a table is printed.
# BUILD_DIR/bench/ttft-<load>.json (poisson, burst) hold BUILD_DIR's runs as
# a rill-bench --save file (figures with median, spread and every run), which
# bench-compare reads (tools/bench-standard.sh keeps them in its set).
#
# Everything it starts (processes, run dir, /dev/shm/rill-UID-INSTANCE-*) is
# removed on exit, failure or interrupt.
#
# Environment (all optional):
#   RUNS=3 RATE=2.5 DURATION=20 WARMUP=3 MAX_TOKENS=64:128 PROMPT_WORDS=4:40
#   SEED=1 BURST=32 BURST_TOKENS=64 THREADS=0 (the worker's, 0: every core)
#   LOADS="poisson burst"  WORKER_ARGS / GATEWAY_ARGS: extra flags.
#   TRACE_DIR=DIR   keep each run's worker log there (with WORKER_ARGS="--log_level
#                   debug": every first token's trace, sched.c)
set -euo pipefail

B=${1:?usage: tools/bench-ttft.sh BUILD_DIR [BASE_BUILD_DIR]}
B=$(cd "$B" && pwd)
BASE=${2:-}
[ -n "$BASE" ] && BASE=$(cd "$BASE" && pwd)
SRC=$(cd "$(dirname "$0")/.." && pwd)
PY=/usr/bin/python3
RUNS=${RUNS:-3}
RATE=${RATE:-2.5}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
MAX_TOKENS=${MAX_TOKENS:-64:128}
PROMPT_WORDS=${PROMPT_WORDS:-4:40}
SEED=${SEED:-1}
BURST=${BURST:-32}
BURST_TOKENS=${BURST_TOKENS:-64}
THREADS=${THREADS:-0}
LOADS=${LOADS:-poisson burst}
WORKER_ARGS=${WORKER_ARGS:-}
GATEWAY_ARGS=${GATEWAY_ARGS:-}

for d in $B $BASE; do
    for bin in rill-worker rill-gateway; do
        [ -x "$d/$bin" ] || { echo "bench-ttft: $d/$bin is missing: build it first" >&2; exit 2; }
    done
done
for bin in rill-bench rill-mkmodel; do
    [ -x "$B/$bin" ] || { echo "bench-ttft: $B/$bin is missing: build it first" >&2; exit 2; }
done

OUT=$B/bench
mkdir -p "$OUT" "$B/bench-models"
MODEL=$B/bench-models/134m-f32.gguf
if [ ! -f "$MODEL" ]; then
    (cd "$SRC" && "$B/rill-mkmodel" --shape 134M --dtype f32 --out "$MODEL.tmp" >/dev/null)
    mv "$MODEL.tmp" "$MODEL"
fi

RUN=$(mktemp -d "${TMPDIR:-/tmp}/rill-ttft-XXXXXX")
WPID= GPID= INSTANCE=

stop_pipeline() {
    for pid in $GPID $WPID; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in $GPID $WPID; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    [ -n "$INSTANCE" ] && rm -f /dev/shm/rill-"$(id -u)-$INSTANCE"-*
    WPID= GPID= INSTANCE=
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pipeline
    if [ $rc -ne 0 ]; then
        for f in "$RUN"/*.log; do [ -f "$f" ] && { echo "--- $f (last lines)" >&2; tail -n 20 "$f" >&2; }; done
    fi
    rm -rf "$RUN"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

ready() {
    local line
    { exec 9<>"/dev/tcp/127.0.0.1/$PORT"; } 2>/dev/null || return 1
    printf 'GET /ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&9
    IFS= read -r -t 2 line <&9 || line=
    exec 9>&-
    [[ $line == *" 200"* ]]
}

# start_pipeline DIR: a fresh worker and gateway of DIR's binaries.
start_pipeline() {
    local d=$1
    INSTANCE=tt$$$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
    PORT=$(free_port)
    local common=(--instance "$INSTANCE" --run_dir "$RUN" --log_level warn)
    # shellcheck disable=SC2086
    "$d/rill-worker" "${common[@]}" --model "$MODEL" --threads "$THREADS" $WORKER_ARGS >"$RUN/worker.log" 2>&1 &
    WPID=$!
    # shellcheck disable=SC2086
    "$d/rill-gateway" "${common[@]}" --listen "127.0.0.1:$PORT" \
        --worker_list "ipc://$RUN/w0.sock@/rill-$(id -u)-$INSTANCE-w0" $GATEWAY_ARGS >"$RUN/gateway.log" 2>&1 &
    GPID=$!
    for _ in $(seq 600); do
        ready && return 0
        kill -0 "$GPID" 2>/dev/null && kill -0 "$WPID" 2>/dev/null || { echo "bench-ttft: a process died at start" >&2; exit 1; }
        sleep 0.05
    done
    echo "bench-ttft: the pipeline was not ready in 30 s" >&2
    exit 1
}

SIDES=new
[ -n "$BASE" ] && SIDES="base new"
for run in $(seq "$RUNS"); do
    for side in $SIDES; do
        d=$B
        [ "$side" = base ] && d=$BASE
        for load in $LOADS; do
            start_pipeline "$d"
            out=$OUT/ttft-$side-$load-$run.json
            read -r load1 _ < /proc/loadavg
            if [ "$load" = poisson ]; then
                "$B/rill-bench" --url "ws://127.0.0.1:$PORT/stream" --rate "$RATE" --duration "$DURATION" \
                    --warmup "$WARMUP" --max-tokens-range "$MAX_TOKENS" --prompt-words "$PROMPT_WORDS" \
                    --arrival-seed "$SEED" --temperature 0 --gateway-pid "$GPID" --worker-pid "$WPID" \
                    --json "$out" --quiet
            else
                "$B/rill-bench" --url "ws://127.0.0.1:$PORT/stream" --burst "$BURST" --max-tokens "$BURST_TOKENS" \
                    --temperature 0 --gateway-pid "$GPID" --worker-pid "$WPID" --json "$out" --quiet
            fi
            "$PY" - "$out" "$load1" <<'PYEOF'
import json, sys
p, l = sys.argv[1], float(sys.argv[2])
d = json.load(open(p)); d["loadavg1_before"] = l
json.dump(d, open(p, "w"), indent=1)
PYEOF
            echo "bench-ttft: $side $load run $run done (load average before $load1)" >&2
            [ -n "${TRACE_DIR:-}" ] && cp "$RUN/worker.log" "$TRACE_DIR/worker-$side-$load-$run.log"
            stop_pipeline
        done
    done
done

"$PY" - "$OUT" "$RUNS" "$SIDES" "$LOADS" "$SRC" <<'PYEOF'
import json, os, statistics, sys
out, runs, sides, loads, src = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split(), sys.argv[5]
figs = {
    "ttft_p50": lambda d: d["ttft_ms"]["p50"], "ttft_p90": lambda d: d["ttft_ms"]["p90"],
    "ttft_p99": lambda d: d["ttft_ms"]["p99"], "itl_p50": lambda d: d["itl_ms"]["p50"],
    "itl_p99": lambda d: d["itl_ms"]["p99"], "tokens_per_s": lambda d: d["tokens_per_s"],
    "stream_tokens_per_s": lambda d: d["stream_tokens_per_s"]["median"],
    "in_flight_mean": lambda d: d["concurrency_reached"]["mean"],
    "in_flight_max": lambda d: d["concurrency_reached"]["max"],
    "errored": lambda d: d["requests"]["errored"],
    "other_cpu_pct": lambda d: d["system"]["other_cpu_pct"], "loadavg1": lambda d: d["loadavg1_before"],
}
res = {}
for load in loads:
    for side in sides:
        rs = [json.load(open(f"{out}/ttft-{side}-{load}-{r}.json")) for r in range(1, runs + 1)]
        res.setdefault(load, {})[side] = {k: {"median": statistics.median(f(d) for d in rs),
                                              "runs": [f(d) for d in rs]} for k, f in figs.items()}
json.dump({"runs": runs, "results": res}, open(f"{out}/ttft.json", "w"), indent=1)
# The new side's runs as a rill-bench --save file (its figures named as
# rill-bench names them), for bench-compare.
sys.path.insert(0, os.path.join(src, "tools", "lib"))
import benchsave
saved = (("tokens_per_s", "tokens/s, aggregate", "", "tokens_per_s", "higher", "median"),
         ("stream_tokens_per_s", "tokens/s per stream, median", "", "stream_tokens_per_s", "higher", "median"),
         ("ttft_p50_ms", "time to first token p50", "ms", "ttft_p50", "lower", "median"),
         ("ttft_p99_ms", "time to first token p99", "ms", "ttft_p99", "lower", "tail"),
         ("itl_p50_ms", "inter-token p50", "ms", "itl_p50", "lower", "median"),
         ("itl_p99_ms", "inter-token p99", "ms", "itl_p99", "lower", "tail"),
         ("errors", "errors", "", "errored", "lower", "count"))
for load in loads:
    rs = [json.load(open(f"{out}/ttft-new-{load}-{r}.json")) for r in range(1, runs + 1)]
    figures = [(name, label, unit, better, kind, res[load]["new"][key]["runs"])
               for name, label, unit, key, better, kind in saved]
    benchsave.write(f"{out}/ttft-{load}.json", src,
                    "tools/bench-ttft.sh (%s, %d runs, each against a fresh pipeline)" % (load, runs), figures, rs)
cols = list(figs)
print("load     side  " + " ".join(f"{c:>12}" for c in cols))
for load in loads:
    for side in sides:
        print(f"{load:8} {side:5} " + " ".join(f"{res[load][side][c]['median']:12.2f}" for c in cols))
    if "base" in sides:
        b, n = res[load]["base"], res[load]["new"]
        print(f"{load:8} n/b   " + " ".join(f"{(n[c]['median'] / b[c]['median'] if b[c]['median'] else 0):12.2f}" for c in cols))
PYEOF
