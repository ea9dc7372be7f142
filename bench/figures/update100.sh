#!/usr/bin/env bash
# update100: a rolling update of a 100-replica service with --update-parallelism 0 (all at
# once, stop-first) → all 100 running the new spec (5 hosts, 3 managers). Docker Swarm took
# ~22-29 s. The tasks stop with SIGKILL, as the peer's (svc_create). n = BENCH_UPDATE_REPS (default 3).
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
REPS=${BENCH_UPDATE_REPS:-3}
svc_lab
svc_create up 100 || die "service create failed"
svc_wait up 100 600 || die "100 tasks not running"
samples=()
for rep in $(seq 1 "$REPS"); do
  T0=$(now_ms)
  sI 1 service update -d --update-parallelism 0 --env-add "REP=$rep" up >/dev/null || die "update failed"
  svc_wait up 100 600 "REP=$rep" || die "rep $rep: the update did not finish"
  samples+=("$(( $(now_ms) - T0 ))")
  log "rep $rep: ${samples[-1]} ms"
done
printf '%s\n' "${samples[@]}" | stats update100_ms ms
