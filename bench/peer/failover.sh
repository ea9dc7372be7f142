#!/usr/bin/env bash
# failover on the peer Docker Swarm (3 hosts, 3 managers), measured like ours:
# kill -9 the leader's dockerd (`swarm.sh kill`) at t0, then on another manager retry
# `docker node update --label-add bench=… pl-hO` until it exits 0; failover_ms = t_ack - t0.
# Swarm's election timeout is ~10 s, so the default is 3 reps (BENCH_PEER_FAILOVER_REPS).
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
. "$HERE/../lib.sh"
. "$HERE/lib.sh"
REPS=${BENCH_PEER_FAILOVER_REPS:-3}
CALL_T=${BENCH_CALL_TIMEOUT:-3}

peer_check
trap peer_down EXIT
"$PEER/swarm.sh" up 3 3 >&2 || die "swarm.sh up 3 3 failed"
samples=() failed=0
for rep in $(seq 1 "$REPS"); do
  wait_until 120 peer_all_ready 3 || die "rep $rep: swarm not ready with a leader"
  L=$(peer_leader) || die "rep $rep: no leader"
  for O in 1 2 3; do [ "$O" != "$L" ] && break; done
  t0=$(now_ms)
  "$PEER/swarm.sh" kill "$L" KILL
  t_ack=""
  while [ $(( $(now_ms) - t0 )) -lt 60000 ]; do
    if td "$CALL_T" "$O" node update --label-add "bench=$RANDOM" "pl-h$O" >/dev/null 2>&1; then
      t_ack=$(now_ms); break
    fi
    sleep 0.05
  done
  if [ -n "$t_ack" ]; then
    samples+=($(( t_ack - t0 )))
    log "peer rep $rep: killed dockerd on pl-h$L (leader), write acked via pl-h$O after $(( t_ack - t0 )) ms"
  else
    failed=$((failed + 1)); log "peer rep $rep: no write acked within 60 s"
  fi
  "$PEER/swarm.sh" start "$L" >&2 || die "swarm.sh start $L failed"
done
line=$(printf '%s\n' "${samples[@]}" | stats failover_ms ms)
[ "$failed" -gt 0 ] && line="$line failed=$failed"
echo "$line"
[ ${#samples[@]} -gt 0 ]
