#!/usr/bin/env bash
# Device call 1: start run.sh detached (setsid: it outlives this call, which the device tool needs
# since one call may run 10 minutes and the whole run takes ~12), then return at once. Follow with
# scripts/gpu/poll.sh in the same call and in the next one. MODE, RUN_BUDGET_S, REPS pass through.
# It runs a copy of run.sh from $WORK: the next call re-syncs the working tree, and bash reads a
# script while it runs.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${WORK:-/tmp/moecli-gpu}
mkdir -p "$work/out"
if [ -f "$work/run.pid" ] && kill -0 "$(cat "$work/run.pid")" 2> /dev/null; then
  echo "run.sh is already running (pid $(cat "$work/run.pid")): poll it"
  exit 0
fi
rm -f "$work/out/DONE"
cp "$repo/scripts/gpu/run.sh" "$work/run.sh"
REPO=$repo setsid nohup bash "$work/run.sh" > "$work/out/run.log" 2>&1 < /dev/null &
echo $! > "$work/run.pid"
echo "run.sh started (pid $!, MODE=${MODE:-full}, RUN_BUDGET_S=${RUN_BUDGET_S:-default}); log: $work/out/run.log"
