#!/usr/bin/env bash
# Device call 2 (and the end of call 1): wait for run.sh while copying what it has written to
# $OUT every few seconds, for at most SECONDS (default 540: under the tool's 10-minute call limit,
# and a cut-off call still returns the last copy); then say where the run stands.
#
#   [RUN_END_IN=S] bash scripts/gpu/poll.sh [SECONDS]
#
# RUN_END_IN=S moves the run's deadline to S seconds from now (compare.py reads it before each
# run): the call that knows how much of the lease is left says when the last run must end.
set -uo pipefail
wait_s=${1:-540}
work=${WORK:-/tmp/moecli-gpu}
out=$work/out
dest=${OUT:-}
if [ -n "${RUN_END_IN:-}" ]; then
  echo "$(( $(date +%s) + RUN_END_IN ))" > "$work/deadline"
  echo "--- the last run must end within ${RUN_END_IN} s"
fi

copy() {  # at most 8 files come back from $OUT, 16 MiB each
  [ -n "$dest" ] || return 0
  for f in results.json results.md run.log machine.txt timings.txt; do
    [ -f "$out/$f" ] && cp "$out/$f" "$dest/$f"
  done
  [ -f "$out/build.log" ] && tail -c 4000000 "$out/build.log" > "$dest/build.log"
}

end=$(( $(date +%s) + wait_s ))
while [ ! -f "$out/DONE" ] && [ "$(date +%s)" -lt "$end" ]; do
  copy
  sleep 5
done
copy
echo "--- step: $(cat "$out/STEP" 2> /dev/null || echo 'not started')"
tail -n 30 "$out/run.log" 2> /dev/null
if [ -f "$out/DONE" ]; then
  echo "--- run.sh has ended, exit code $(cat "$out/DONE")"
  awk '/^#### What must hold/ {show = 1; next} /^####/ {show = 0} show' "$out/results.md" 2> /dev/null
else
  echo "--- still running: poll again (bash scripts/gpu/poll.sh)"
fi
