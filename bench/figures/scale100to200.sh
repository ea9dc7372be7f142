#!/usr/bin/env bash
# scale100to200: a running 100-replica service scaled to 200 → all 200 running (5 hosts,
# 3 managers). n = BENCH_SCALE_REPS (default 3), scaling back to 100 between reps.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
REPS=${BENCH_SCALE_REPS:-3}
svc_lab
svc_create sc 100 || die "service create failed"
svc_wait sc 100 600 || die "100 tasks not running"
samples=()
for rep in $(seq 1 "$REPS"); do
  T0=$(now_ms)
  sI 1 service scale -d sc=200 >/dev/null || die "scale failed"
  svc_wait sc 200 600 || die "rep $rep: 200 not running"
  samples+=("$(( $(now_ms) - T0 ))")
  log "rep $rep: ${samples[-1]} ms"
  sI 1 service scale -d sc=100 >/dev/null
  svc_wait sc 100 600 || die "rep $rep: not back to 100"
done
printf '%s\n' "${samples[@]}" | stats scale100to200_ms ms
