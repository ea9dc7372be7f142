#!/usr/bin/env bash
# failover: leader failover time with 3 managers.
# Each rep: find the raft leader, `deploy/lab kill` its host (SIGKILL to everything on it)
# at t0, then on another manager retry `shoal node update --label-add bench=… <its node id>`
# until one exits 0 (a committed write); failover_ms = t_ack - t0. The retry loop runs
# inside that host (one `deploy/lab exec`, set up before t0), so each attempt costs one CLI
# process start and nothing more.
# Then the killed host is started again and we wait for 3 ready nodes with a leader.
# Knobs: BENCH_FAILOVER_REPS (10), BENCH_CALL_TIMEOUT (3 s per CLI attempt).
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
REPS=${BENCH_FAILOVER_REPS:-10}
CALL_T=${BENCH_CALL_TIMEOUT:-3}

trap 'lab_down; lab_unlock' EXIT
lab_lock
[ -e /run/netns/shl-sw ] && die "our lab is already up (deploy/lab down first)"
lab up 3 --managers 3 --no-demo >&2 || die "deploy/lab up failed"
declare -A ID
for i in 1 2 3; do
  ID[$i]=$(node_id 1 "$i")
  [ -n "${ID[$i]}" ] || die "no node id for host $i in node ls"
done

samples=() failed=0
for rep in $(seq 1 "$REPS"); do
  wait_until 60 all_ready 3 || die "rep $rep: 3 ready nodes with a leader not reached within 60 s"
  L=$(leader_index) || die "rep $rep: no leader"
  for O in 1 2 3; do [ "$O" != "$L" ] && break; done
  # the retry loop is set up inside host O first and released right after the kill,
  # so the lab's exec setup is not counted; it prints the time of the first acked write
  go=/tmp/shoal-lab/bench-failover-go
  rm -f "$go" "$go.ready"
  lab exec "$O" -- bash -c '
    touch "$1.ready"
    end=$(( $(date +%s%3N) + 60000 ))   # the bench may die before it releases us
    while [ ! -e "$1" ]; do [ "$(date +%s%3N)" -lt "$end" ] || exit 2; sleep 0.01; done
    end=$(( $(date +%s%3N) + 30000 ))
    while [ "$(date +%s%3N)" -lt "$end" ]; do
      if timeout "$2" shoal node update --label-add "bench=$RANDOM" "$3" >/dev/null 2>&1; then
        date +%s%3N; exit 0
      fi
      sleep 0.05
    done
    exit 1' failover "$go" "$CALL_T" "${ID[$O]}" > "$go.ack" &
  waiter=$!
  wait_until 10 test -e "$go.ready" || die "rep $rep: retry loop on host $O did not start"
  t0=$(now_ms)
  lab kill "$L" >&2 || die "deploy/lab kill $L failed"
  touch "$go"
  wait "$waiter"
  t_ack=$(cat "$go.ack")
  if [ -n "$t_ack" ]; then
    samples+=($(( t_ack - t0 )))
    log "rep $rep: killed shl-h$L (leader), write acked via shl-h$O after $(( t_ack - t0 )) ms"
  else
    failed=$((failed + 1))
    log "rep $rep: killed shl-h$L (leader), NO write acked via shl-h$O within 30 s"
  fi
  lab start "$L" >&2 || die "deploy/lab start $L failed"
done
wait_until 60 all_ready 3 || log "cluster not ready after the last rep"
line=$(printf '%s\n' "${samples[@]}" | stats failover_ms ms)
[ "$failed" -gt 0 ] && line="$line failed=$failed"
echo "$line"
[ ${#samples[@]} -gt 0 ]
