#!/usr/bin/env bash
# create500: `service create --replicas 500` → all 500 tasks running, on a 5-host lab with 3
# managers (sleeper tasks on the default bridge network). Measured from the create call to the
# first poll that sees 500 running; reps BENCH_CREATE_REPS (default 1).
# Docker Swarm on the same lab took ~123 s (shared/notes/peers-and-scale.md).
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
REPS=${BENCH_CREATE_REPS:-1}
svc_lab
samples=()
for rep in $(seq 1 "$REPS"); do
  T0=$(now_ms)
  svc_create "c500-$rep" 500 || die "service create failed"
  wait_until 600 svc_is "c500-$rep" 500 || die "rep $rep: 500 tasks not running within 600 s"
  samples+=("$(( $(now_ms) - T0 ))")
  log "rep $rep: ${samples[-1]} ms"
  sI 1 service rm "c500-$rep" >/dev/null
  wait_until 600 svc_gone || die "rep $rep: containers left after rm"
done
printf '%s\n' "${samples[@]}" | stats create500_ms ms
