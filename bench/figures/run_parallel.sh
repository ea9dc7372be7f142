#!/usr/bin/env bash
# run_parallel: 48 `shoal run -d` of a sleeper on the default bridge from 8 clients at once
# (6 each) against one host's daemon (1-host lab, no swarm), from the first call to the last
# answer; then all removed. Shows whether a node's starts run side by side (each one's netns,
# netd attach and overlay root) or queue behind one another. BENCH_RUN_PARALLEL_REPS (default 3).
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
REPS=${BENCH_RUN_PARALLEL_REPS:-3}
lab_with_image bench:true sh true sleep
s run --rm bench:true true >/dev/null || die "a first run failed"   # warm caches
one() {
  local t0 ms c failed=$WORK/failed
  rm -f "$failed"
  t0=$(now_ms)
  for c in $(seq 1 8); do
    ( for k in $(seq 1 6); do
        s run -d --name "par$c-$k" bench:true sleep 1000 >/dev/null || touch "$failed"
      done ) &
  done
  wait
  ms=$(( $(now_ms) - t0 ))
  [ -e "$failed" ] && die "a run -d failed"
  [ "$(s ps -q | wc -l)" = 48 ] || die "not 48 containers running"
  s rm -f $(s ps -aq) >/dev/null || die "removing the containers failed"
  echo "$ms"
}
r=()
for i in $(seq 1 "$REPS"); do r+=("$(one)"); log "rep $i: ${r[-1]} ms"; done
printf '%s\n' "${r[@]}" | stats run_parallel ms
