#!/usr/bin/env bash
# bench-telemetry.sh BUILD_DIR — what per-token telemetry costs: aggregate
# tokens/s with the gateway's per-token records on (telemetry=true,
# sampling_rate 1) and off (telemetry=false), alternating on/off RUNS times (ABBA) in
# one run so that both see the same machine, medians compared as a ratio.
# The pipeline is the 24M model, one worker with every core, rill-bench closed
# loop.  Writes BUILD/bench/telemetry.json.
set -euo pipefail
B=$(cd "${1:-build}" && pwd)
RUNS=${RUNS:-4}
DURATION=${DURATION:-8}
CONC=${CONC:-16}
here=$(cd "$(dirname "$0")/.." && pwd)
model=$B/bench-models/24M-f32.gguf
[ -f "$model" ] || { mkdir -p "$B/bench-models"; "$B/rill-mkmodel" --shape 24M --dtype f32 --out "$model" >/dev/null 2>&1; }
mkdir -p "$B/bench"
run_dir=$(mktemp -d /tmp/rill-tel-XXXX)
inst="tel$$"
pids=()
cleanup() {
  for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run_dir"; rm -f /dev/shm/rill-"$(id -u)-$inst"-* 2>/dev/null || true
}
trap cleanup EXIT

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

one_run() { # $1: true|false -> tokens/s
  local tel=$1 port; port=$(free_port)
  "$B/rill-worker" --instance "$inst" --run_dir "$run_dir" --model "$model" --log_level warn &
  local w=$!
  sleep 0.3
  "$B/rill-gateway" --instance "$inst" --run_dir "$run_dir" --listen "127.0.0.1:$port" --log_level warn \
      --worker_list "ipc://$run_dir/w0.sock@/rill-$(id -u)-$inst-w0" --telemetry "$tel" --sampling_rate 1 &
  local g=$!
  pids=("$w" "$g")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.05; done
  "$B/rill-bench" --url "ws://127.0.0.1:$port/stream" --concurrency "$CONC" --max-tokens 48 --temperature 0 \
      --warmup 1 --duration "$DURATION" --quiet --json "$run_dir/r.json"
  # The gateway first, so that it does not log the worker's exit as a loss.
  kill "$g"; wait "$g" 2>/dev/null || true
  kill "$w"; wait "$w" 2>/dev/null || true
  pids=()
  /usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tokens_per_s"])' "$run_dir/r.json"
}

on=(); off=()
for i in $(seq "$RUNS"); do
  # ABBA order: whichever setting runs first in a pair pays for a cold
  # start, so the pairs take turns.
  if (( i % 2 )); then on+=("$(one_run true)"); off+=("$(one_run false)")
  else off+=("$(one_run false)"); on+=("$(one_run true)"); fi
  echo "bench-telemetry: run $i/$RUNS: on ${on[-1]} tokens/s, off ${off[-1]} tokens/s" >&2
done
/usr/bin/python3 - "$B/bench/telemetry.json" "${on[*]}" "${off[*]}" <<'PY'
import json, statistics, sys
on = [float(x) for x in sys.argv[2].split()]
off = [float(x) for x in sys.argv[3].split()]
mon, moff = statistics.median(on), statistics.median(off)
spread = lambda v: (max(v) - min(v)) / statistics.median(v) if statistics.median(v) else 0
row = {"telemetry_on_tokens_per_s": mon, "telemetry_off_tokens_per_s": moff,
       "ratio_on_over_off": round(mon / moff, 4) if moff else None,
       "noise_on": round(spread(on), 4), "noise_off": round(spread(off), 4), "runs_on": on, "runs_off": off}
json.dump(row, open(sys.argv[1], "w"), indent=1)
print(f"telemetry on {mon:.1f} tokens/s, off {moff:.1f} tokens/s: on/off = {row['ratio_on_over_off']} "
      f"(run-to-run spread {row['noise_on']:.1%} on, {row['noise_off']:.1%} off)")
PY
