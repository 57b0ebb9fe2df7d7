#!/usr/bin/env bash
# bench-fanout.sh BUILD_DIR — how many streams one gateway thread fans out,
# with the model out of the way.
#
# Starts one rill-worker with --fake_tokens true (tokens without compute, one
# per running sequence every --target_latency_ms 20: 50 tokens/s per stream)
# and one standalone rill-gateway, then:
#   1. connects IDLE_CONNS idle clients to the fresh gateway: RSS per idle
#      connection = RSS growth / connections;
#   2. runs rill-bench --fanout at each of STREAMS concurrent streams, RUNS
#      times each: tokens/s delivered, added latency (client receive time -
#      the worker's gen_us, same host) p50/p99, the same at the client's
#      socket (the kernel's receive timestamp: the gateway's part without
#      the client's own read queue), gateway CPU and RSS, the gateway's CPU
#      per token and what one service thread would carry at that cost;
# and writes BUILD_DIR/bench/fanout.json (rows of medians over the runs, the
# idle figure, the targets, and every run's raw result) and prints a table.
#
# Everything it starts (processes, run dir, /dev/shm/rill-UID-INSTANCE-*) is
# removed on exit, failure or interrupt.
#
# Environment (all optional):
#   STREAMS="100 1000 5000"  RUNS=3  DURATION=8  WARMUP=2  PROTOCOL=msgpack
#   STREAMS_PER_CONN=1 (streams sharing one connection)  IDLE_CONNS=5000
#   GATEWAY_ARGS / WORKER_ARGS: extra flags for the gateway / worker.
#   PHASES=1        the worker advances its sequences in this many evenly
#                   spaced steps per 20 ms (--fake_phases): 1 is one worker
#                   stepping every stream at once, the worst burst; 16 is
#                   what 16 workers stepping at their own times would give.
#   OUT_NAME=fanout the result file, BUILD_DIR/bench/OUT_NAME.json.
#   QUIET_WAIT=30   seconds to wait before each run for the machine to be
#                   quiet (other processes under 15% of a core);
#   MAX_OTHER=25    a run during which other processes took more than this
#                   (% of a core) is repeated (up to 2 more tries per run),
#                   and kept, flagged "noisy", if no quiet try comes.
set -euo pipefail

B=${1:?usage: tools/bench-fanout.sh BUILD_DIR}
B=$(cd "$B" && pwd)
PY=/usr/bin/python3
STREAMS=${STREAMS:-"100 1000 5000"}
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
PROTOCOL=${PROTOCOL:-msgpack}
STREAMS_PER_CONN=${STREAMS_PER_CONN:-1}
IDLE_CONNS=${IDLE_CONNS:-5000}
QUIET_WAIT=${QUIET_WAIT:-30}
MAX_OTHER=${MAX_OTHER:-25}
GATEWAY_ARGS=${GATEWAY_ARGS:-}
WORKER_ARGS=${WORKER_ARGS:-}
PHASES=${PHASES:-1}
OUT_NAME=${OUT_NAME:-fanout}

for bin in rill-worker rill-gateway rill-bench rill-mkmodel; do
    [ -x "$B/$bin" ] || { echo "bench-fanout: $B/$bin is missing: build it first" >&2; exit 2; }
done

OUT=$B/bench
mkdir -p "$OUT" "$B/bench-models"
MODEL=$B/bench-models/tiny.gguf
if [ ! -f "$MODEL" ]; then
    "$B/rill-mkmodel" --shape tiny --out "$MODEL.tmp" >/dev/null
    mv "$MODEL.tmp" "$MODEL"
fi

INSTANCE=fan$$$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
RUN=$(mktemp -d "${TMPDIR:-/tmp}/rill-fanout-XXXXXX")
WPID= GPID=

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in $GPID $WPID; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in $GPID $WPID; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ $rc -ne 0 ] && [ -d "$RUN" ]; then
        for f in "$RUN"/*.log; do [ -f "$f" ] && { echo "--- $f (last lines)" >&2; tail -n 20 "$f" >&2; }; done
    fi
    rm -rf "$RUN"
    rm -f /dev/shm/rill-"$(id -u)-$INSTANCE"-*
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Whether GET /ready answers 200 (bash's /dev/tcp: no curl needed).
ready() {
    local line
    { exec 9<>"/dev/tcp/127.0.0.1/$PORT"; } 2>/dev/null || return 1
    printf 'GET /ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&9
    IFS= read -r -t 2 line <&9 || line=
    exec 9>&-
    [[ $line == *" 200"* ]]
}

# One configuration for every row: streams up to 5,000 (one sequence each),
# a ring big enough for a step of max_batch records.
MAX_STREAMS=0
for n in $STREAMS; do ((n > MAX_STREAMS)) && MAX_STREAMS=$n; done
((IDLE_CONNS > MAX_STREAMS)) && MAX_CONNS=$IDLE_CONNS || MAX_CONNS=$MAX_STREAMS
NEED_FDS=$((MAX_CONNS + 256))
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && (($(ulimit -n) < NEED_FDS)); then
    echo "bench-fanout: $MAX_CONNS connections need $NEED_FDS file descriptors; ulimit -n is $(ulimit -n)" >&2
    exit 2
fi

PORT=$(free_port)
COMMON=(--instance "$INSTANCE" --run_dir "$RUN" --log_level warn)
# shellcheck disable=SC2086
"$B/rill-worker" "${COMMON[@]}" --model "$MODEL" --threads 1 --fake_tokens true --fake_phases "$PHASES" \
    --max_batch 8192 --target_latency_ms 20 --max_latency_ms 1000 --ring_bytes 64M \
    $WORKER_ARGS >"$RUN/worker.log" 2>&1 &
WPID=$!
# shellcheck disable=SC2086
"$B/rill-gateway" "${COMMON[@]}" --listen "127.0.0.1:$PORT" \
    --worker_list "ipc://$RUN/w0.sock@/rill-$(id -u)-$INSTANCE-w0" \
    --max_connections $((MAX_CONNS + 64)) --max_conns_per_ip $((MAX_CONNS + 64)) \
    --max_streams_per_conn "$STREAMS_PER_CONN" --max_tokens_limit 4096 \
    $GATEWAY_ARGS >"$RUN/gateway.log" 2>&1 &
GPID=$!
for _ in $(seq 200); do
    ready && break
    kill -0 "$GPID" 2>/dev/null && kill -0 "$WPID" 2>/dev/null || { echo "bench-fanout: a process died at start" >&2; exit 1; }
    sleep 0.05
done
ready || { echo "bench-fanout: the gateway is not ready after 10 s" >&2; exit 1; }

URL="ws://127.0.0.1:$PORT/stream"
echo "bench-fanout: worker $WPID (fake tokens, every stream every 20 ms in $PHASES phase(s)), gateway $GPID on $URL, $PROTOCOL, $(nproc) cores" >&2

# Busy ticks of all cores (/proc/stat: user nice system irq softirq steal).
busy_ticks() {
    local _c u n s i w q sq st
    read -r _c u n s i w q sq st _ </proc/stat
    echo $((u + n + s + q + sq + st))
}

# Wait (at most QUIET_WAIT s) until the machine is quiet: a shared machine
# makes every figure worse.  Our worker and gateway idle at ~0.
wait_quiet() {
    local end=$((SECONDS + QUIET_WAIT)) a b hz
    hz=$(getconf CLK_TCK)
    while :; do
        a=$(busy_ticks); sleep 2; b=$(busy_ticks)
        (((b - a) * 100 < hz * 2 * 15)) && return 0
        ((SECONDS >= end)) && return 1
    done
}

other_cpu() { "$PY" -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["system"]["other_cpu_pct"]))' "$1"; }

# 1. RSS per idle connection, on the fresh gateway.
IDLE_JSON=$OUT/fanout-idle.json
wait_quiet || true
"$B/rill-bench" --url "$URL" --protocol "$PROTOCOL" --idle --connections "$IDLE_CONNS" \
    --duration 1 --gateway-pid "$GPID" --json "$IDLE_JSON" --quiet
sleep 1

# 2. Fan-out rows.  Long generations: the streams outlive ramp + warmup + window.
MAX_TOKENS=2000
RAW=()
for n in $STREAMS; do
    conns=$(((n + STREAMS_PER_CONN - 1) / STREAMS_PER_CONN))
    for r in $(seq "$RUNS"); do
        f=$OUT/fanout-$n-$r.json
        for try in 1 2 3; do
            rm -f "$f"
            wait_quiet || echo "bench-fanout: the machine is busy with other processes; running anyway" >&2
            "$B/rill-bench" --url "$URL" --protocol "$PROTOCOL" --fanout --concurrency "$n" --connections "$conns" \
                --max-tokens "$MAX_TOKENS" --ramp 5000 --warmup "$WARMUP" --duration "$DURATION" \
                --gateway-pid "$GPID" --worker-pid "$WPID" --json "$f" --quiet ||
                echo "bench-fanout: run failed (rc $?), its row is left out" >&2
            # Let the worker drop the cancelled streams before the next run.
            sleep 2
            [ -s "$f" ] || break
            other=$(other_cpu "$f")
            echo "bench-fanout: $n streams on $conns connections, run $r/$RUNS: other processes took $other% of a core" >&2
            ((other <= MAX_OTHER)) && break
            [ $try = 3 ] && echo "bench-fanout: kept as noisy" >&2
        done
        [ -s "$f" ] && RAW+=("$f")
    done
done
kill -0 "$GPID" 2>/dev/null || { echo "bench-fanout: the gateway died" >&2; exit 1; }

"$PY" - "$OUT/$OUT_NAME.json" "$IDLE_JSON" "$PROTOCOL" "$STREAMS_PER_CONN" "$MAX_OTHER" "$PHASES" "${RAW[@]}" <<'EOF'
import json, os, statistics, sys

out, idle_path, protocol, spc, max_other = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
phases = int(sys.argv[6])
raws = sys.argv[7:]
runs = {}
for p in raws:
    with open(p) as f:
        d = json.load(f)
    runs.setdefault(d["concurrency"], []).append(d)

def med(xs):
    return round(statistics.median(xs), 3) if xs else None

rows = []
for n in sorted(runs):
    rs = runs[n]
    rows.append({
        "streams": n,
        "connections": rs[0]["connections"],
        "runs": len(rs),
        "tokens_per_s": med([r["tokens_per_s"] for r in rs]),
        "added_latency_p50_ms": med([r["added_latency_ms"]["p50"] for r in rs]),
        "added_latency_p99_ms": med([r["added_latency_ms"]["p99"] for r in rs]),
        # when the bytes reached the client's socket (kernel receive
        # timestamp): the gateway's part, without the client's read queue
        "added_at_socket_p50_ms": med([r["added_at_socket_ms"]["p50"] for r in rs if "added_at_socket_ms" in r]),
        "added_at_socket_p99_ms": med([r["added_at_socket_ms"]["p99"] for r in rs if "added_at_socket_ms" in r]),
        # the gateway's CPU per delivered token, and what one service thread
        # would carry at that cost with every core to itself
        "gateway_us_per_token": med([r["gateway"]["cpu_pct"] * 1e4 / r["tokens_per_s"] for r in rs if r["tokens_per_s"]]),
        "service_thread_tokens_per_s_at_full_core": med([r["tokens_per_s"] * 100 / r["gateway"]["main_thread_cpu_pct"]
                                                         for r in rs if r["gateway"]["main_thread_cpu_pct"]]),
        "gateway_rss_kb": med([r["gateway"]["rss_kb"] for r in rs]),
        # VmRSS counts the touched pages of the worker's token ring (shared
        # memory); the private part is the gateway's own.
        "gateway_rss_private_kb": med([r["gateway"]["rss_anon_kb"] for r in rs]),
        "stream_tokens_per_s": med([r["stream_tokens_per_s"]["median"] for r in rs]),
        "tokens_per_frame": med([r["tokens_per_frame"] for r in rs]),
        "gateway_cpu_pct": med([r["gateway"]["cpu_pct"] for r in rs]),
        "gateway_service_thread_cpu_pct": med([r["gateway"]["main_thread_cpu_pct"] for r in rs]),
        "worker_cpu_pct": med([r["worker"]["cpu_pct"] for r in rs]),
        "bench_cpu_pct": med([r["bench"]["cpu_pct"] for r in rs]),
        "other_cpu_pct": med([r.get("system", {}).get("other_cpu_pct", 0) for r in rs]),
        "errors": sum(r["requests"]["errored"] for r in rs),
        "noisy_runs": sum(1 for r in rs if r["system"]["other_cpu_pct"] > max_other),
    })

with open(idle_path) as f:
    idle = json.load(f)["idle"]
cores = os.cpu_count()
result = {
    "rows": rows,
    "idle_connections": {
        "connections": idle["connections"],
        "gateway_rss_before_kb": idle["rss_before_kb"],
        "gateway_rss_after_kb": idle["rss_after_kb"],
        "gateway_rss_per_idle_conn_kb": idle["rss_per_conn_kb"],
    },
    "setup": {
        "protocol": protocol, "streams_per_connection": spc, "cores": cores,
        "worker": "fake_tokens, every stream advanced every 20 ms (50 tokens/s per stream), in %d phase(s)" % phases,
        "worker_phases": phases,
        "note": "gateway, worker and bench client share the cores: bench_cpu_pct and other_cpu_pct say how much "
                "the client and other processes took",
    },
    "targets": {"added_latency_p99_ms_at_1000": 5, "tokens_per_s": 150000, "rss_per_idle_conn_kb": 20},
    "runs": [json.load(open(p)) for p in raws],
}
with open(out, "w") as f:
    json.dump(result, f, indent=1)
    f.write("\n")

print(f"fan-out ({protocol}, {spc} stream(s) per connection, {cores} cores shared by worker, gateway and client; "
      f"medians of runs)")
hdr = f"{'streams':>8} {'tokens/s':>10} {'added p50':>10} {'added p99':>10} {'@sock p50':>10} {'@sock p99':>10} " \
      f"{'tok/frame':>9} {'stream t/s':>10} {'gw cpu%':>8} {'us/token':>8} {'thread cap':>10} {'gw rss kB':>10} " \
      f"{'(private)':>10} {'bench cpu%':>10} {'other cpu%':>10}"
print(hdr)
opt = lambda v, f: format(v, f) if v is not None else "-"
for r in rows:
    mark = "*" if r["noisy_runs"] else " "
    print(f"{r['streams']:>7}{mark} {r['tokens_per_s']:>10.0f} {r['added_latency_p50_ms']:>10.2f} "
          f"{r['added_latency_p99_ms']:>10.2f} {opt(r['added_at_socket_p50_ms'], '>10.2f')} "
          f"{opt(r['added_at_socket_p99_ms'], '>10.2f')} {r['tokens_per_frame']:>9.2f} {r['stream_tokens_per_s']:>10.2f} "
          f"{r['gateway_cpu_pct']:>8.1f} {opt(r['gateway_us_per_token'], '>8.2f')} "
          f"{opt(r['service_thread_tokens_per_s_at_full_core'], '>10.0f')} "
          f"{r['gateway_rss_kb']:>10.0f} {r['gateway_rss_private_kb']:>10.0f} "
          f"{r['bench_cpu_pct']:>10.1f} "
          f"{r['other_cpu_pct']:>10.1f}")
if any(r["noisy_runs"] for r in rows):
    print(f"* some runs had other processes above {max_other:.0f}% of a core (see runs[].system)")
i = result["idle_connections"]
print(f"idle: {i['connections']} connections, gateway RSS {i['gateway_rss_before_kb']} -> {i['gateway_rss_after_kb']} kB "
      f"= {i['gateway_rss_per_idle_conn_kb']:.2f} kB per idle connection")
r1k = [r for r in rows if r["streams"] == 1000]
best = max(rows, key=lambda r: r["tokens_per_s"], default=None)
sock = r1k[0]["added_at_socket_p99_ms"] if r1k else None
cap = r1k[0]["service_thread_tokens_per_s_at_full_core"] if r1k else None
print("targets: added p99 < 5 ms at 1,000 streams: "
      + (f"{r1k[0]['added_latency_p99_ms']:.2f} ms in the client" if r1k else "not measured")
      + (f", {sock:.2f} ms at its socket" if sock is not None else "")
      + "; >= 150,000 tokens/s per service thread: "
      + (f"{cap:.0f} at the cost measured at 1,000 streams, " if cap else "")
      + (f"best {best['tokens_per_s']:.0f} ({best['streams']} streams, {best['tokens_per_frame']:.1f} tokens/frame, "
         f"added p99 {best['added_latency_p99_ms']:.0f} ms)" if best else "not measured")
      + f"; < 20 kB per idle connection: {i['gateway_rss_per_idle_conn_kb']:.2f} kB")
print(f"wrote {out}")
EOF
