#!/usr/bin/env bash
# Run one libFuzzer target for a bounded time and say in one line how far it
# got.  Used by `make fuzz`; by hand:
#   tests/fuzz/run.sh NAME BINARY SECONDS LOGDIR [libFuzzer flags and corpus dirs...]
# The first corpus dir is where new inputs go.  libFuzzer's own output goes
# to LOGDIR/NAME.log; the line printed is built from its final statistics
# (-print_final_stats) and last status line: executions, executions per
# second, coverage (edges), corpus (inputs/bytes) and peak RSS.  A finding
# (crash, leak, timeout, out-of-memory) fails the run, shows the end of the
# log and leaves the input as LOGDIR/NAME-{crash,leak,timeout,oom}-*.
set -u
name=$1 bin=$2 secs=$3 logdir=$4
shift 4
mkdir -p "$logdir"
log=$logdir/$name.log
# Single process (no -jobs/-workers): the machine is shared.
"$bin" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="$logdir/$name-" "$@" >"$log" 2>&1
rc=$?
stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -n 1; }
runs=$(stat number_of_executed_units)
rate=$(stat average_exec_per_sec)
rss=$(stat peak_rss_mb)
took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
# The last status line: "#N DONE cov: C ft: F corp: K/SIZE ...".
last=$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -n 1)
cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9]*[A-Za-z]*\).*/\1/p' <<<"$last")
if [ $rc -eq 0 ]; then
    printf 'fuzz %-8s %10s runs in %s s (%s/s), coverage %s, corpus %s, peak RSS %s MB, no finding\n' \
        "$name" "${runs:-?}" "${took:-$secs}" "${rate:-?}" "${cov:-?}" "${corp:-?}" "${rss:-?}"
    exit 0
fi
echo "fuzz $name: FINDING after ${runs:-?} runs (exit $rc); the end of $log:" >&2
tail -n 60 "$log" >&2
ls "$logdir/$name-"* 2>/dev/null >&2
exit 1
