#!/usr/bin/env bash
# update100 on the peer Docker Swarm: a 100-replica service updated with
# --update-parallelism 0 (a new env) → 100 running tasks of the new spec.
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
. "$HERE/../lib.sh"
. "$HERE/lib.sh"
REPS=${BENCH_UPDATE_REPS:-1}
peer_svc_lab
d 1 service create "${PEER_SVC_OPTS[@]}" --name up --replicas 100 busybox:local sleep 1000000 >/dev/null || die "create failed"
wait_until 900 peer_is up 100 || die "100 not running"
samples=()
for rep in $(seq 1 "$REPS"); do
  T0=$(now_ms)
  d 1 service update --detach --no-resolve-image --update-parallelism 0 --env-add "REP=$rep" up >/dev/null || die "update failed"
  wait_until 900 peer_updated up "REP=$rep" 100 || die "rep $rep: update not done"
  samples+=("$(( $(now_ms) - T0 ))")
  log "peer rep $rep: ${samples[-1]} ms"
done
printf '%s\n' "${samples[@]}" | stats update100_ms ms
