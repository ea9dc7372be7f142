#!/usr/bin/env bash
# nodeloss: kill -9 every process of a worker (a host crash) → its tasks running elsewhere
# (20 replicas on 5 hosts, 3 managers). Reps kill host 5, then host 4 (the two workers).
# Docker Swarm took ~20 s; goal ≤ 2 s.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
svc_lab
svc_create nl 20 || die "service create failed"
svc_wait nl 20 600 || die "20 tasks not running"
healed() { svc_is nl 20 && ! svc_nodes nl | grep -qx "shl-h$VICTIM"; }
samples=()
for VICTIM in 5 4; do
  svc_nodes nl | grep -qx "shl-h$VICTIM" || die "host $VICTIM runs no task"
  T0=$(now_ms)
  lab kill "$VICTIM" >/dev/null || die "kill failed"
  wait_until 120 healed || die "host $VICTIM's tasks did not move"
  samples+=("$(( $(now_ms) - T0 ))")
  log "host $VICTIM: ${samples[-1]} ms"
done
printf '%s\n' "${samples[@]}" | stats nodeloss_ms ms
