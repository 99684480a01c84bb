#!/usr/bin/env bash
# Runs GoogleTest binaries one after another and prints one summary line at the end:
#   "TEST SUMMARY: <passed> passed, <failed> failed, <skipped> skipped (<n> binaries)".
# Usage: tests/run.sh TIMEOUT_SECONDS BINARY... ; extra gtest flags via GTEST_ARGS.
# Exit status is non-zero if any test failed or any binary crashed or timed out.
set -uo pipefail
timeout_s=$1
shift
passed=0 failed=0 skipped=0 broken=()
for bin in "$@"; do
  name=$(basename "$bin")
  echo "=== $name"
  log=$(mktemp)
  # --kill-after: a test that ignores SIGTERM is killed, never left behind.
  timeout --kill-after=30 "$timeout_s" "$bin" --gtest_brief=1 ${GTEST_ARGS:-} 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  p=$(grep -oP '^\[  PASSED  \] \K[0-9]+' "$log" | tail -1)
  # --gtest_brief prints one line per failed or skipped test, "[  FAILED  ] Suite.Name[, where
  # GetParam() = ...] (N ms)",
  # and no "listed below" summary: count those lines.
  f=$(grep -cP '^\[  FAILED  \] .* \([0-9]+ ms\)$' "$log")
  s=$(grep -cP '^\[  SKIPPED \] .* \([0-9]+ ms\)$' "$log")
  passed=$((passed + ${p:-0}))
  failed=$((failed + ${f:-0}))
  skipped=$((skipped + ${s:-0}))
  if [[ $rc -ne 0 && $f -eq 0 ]]; then
    # Crashed, timed out (124) or was killed before GoogleTest printed its summary.
    broken+=("$name (exit $rc)")
  fi
  rm -f "$log"
done
summary="TEST SUMMARY: $passed passed, $failed failed, $skipped skipped ($# binaries)"
if [[ ${#broken[@]} -gt 0 ]]; then
  summary="$summary; crashed or timed out: ${broken[*]}"
fi
echo "$summary"
[[ $failed -eq 0 && ${#broken[@]} -eq 0 ]]
