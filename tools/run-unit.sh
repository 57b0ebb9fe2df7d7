#!/usr/bin/env bash
# Run unit-test binaries one after the other; print a summary; fail if any failed.
# usage: run-unit.sh BUILD_DIR TEST...
set -u
build=$1; shift
failed=()
for t in "$@"; do
  name=$(basename "$t")
  start=$EPOCHREALTIME
  if RILL_TEST_BUILD="$build" "$t" >"$build/tests/$name.log" 2>&1; then
    printf '  ok    %-28s %6.2fs\n' "$name" "$(awk "BEGIN{print $EPOCHREALTIME - $start}")"
  else
    printf '  FAIL  %-28s (log: %s)\n' "$name" "$build/tests/$name.log"
    tail -n 30 "$build/tests/$name.log" | sed 's/^/        /'
    failed+=("$name")
  fi
done
if ((${#failed[@]})); then
  echo "unit tests failed: ${failed[*]}"
  exit 1
fi
echo "unit tests: all $# passed"
