#!/usr/bin/env bash
# spurious_elections: elections caused by CPU starvation alone (no failure injected).
# 3 managers; read every manager's raft term (`shoal info --format json` .raft_term) and the
# leader, saturate both CPUs for BENCH_LOAD_SECS (600) with BENCH_LOAD_PROCS (4) busy loops (each bounded by
# `timeout`), sampling the leader every 5 s, then read the terms again.
# count = max(largest term increase over the managers, leader changes seen).
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
SECS=${BENCH_LOAD_SECS:-600}

terms() { # one line "t1 t2 t3"
  local i t out=()
  for i in 1 2 3; do
    t=$(shoal_on "$i" 10 -- info --format json 2>/dev/null |
        python3 -c 'import json,sys; print(int(json.load(sys.stdin)["raft_term"]))' 2>/dev/null) ||
      die "no raft_term from \`shoal info --format json\` on host $i"
    out+=("$t")
  done
  echo "${out[*]}"
}

loads=()
cleanup() {
  local p
  for p in "${loads[@]}"; do kill "$p" 2>/dev/null; done
  lab_down
}
trap 'cleanup; lab_unlock' EXIT
lab_lock
[ -e /run/netns/shl-sw ] && die "our lab is already up (deploy/lab down first)"
lab up 3 --managers 3 --no-demo >&2 || die "deploy/lab up failed"
wait_until 60 all_ready 3 || die "3 ready nodes with a leader not reached"
before=$(terms); L0=$(leader_index) || die "no leader"
log "before: terms=($before) leader=shl-h$L0; saturating the CPUs with ${BENCH_LOAD_PROCS:-4} busy loops for $SECS s"

# More busy loops than cores, so the managers compete for every time slice.
for k in $(seq 1 "${BENCH_LOAD_PROCS:-4}"); do
  timeout "$SECS" sh -c 'while :; do :; done' &
  loads+=($!)
done
changes=0 last=$L0
end=$(( $(now_ms) + SECS * 1000 ))
while [ "$(now_ms)" -lt "$end" ]; do
  sleep 5
  l=$(leader_index) || l=none
  if [ "$l" != "$last" ]; then
    changes=$((changes + 1)); log "leader changed: shl-h$last -> shl-h$l"; last=$l
  fi
done
wait "${loads[@]}" 2>/dev/null
loads=()
wait_until 60 all_ready 3 || log "cluster not ready after the load"
after=$(terms); L1=$(leader_index) || L1=none
log "after: terms=($after) leader=shl-h$L1 (leader changes seen: $changes)"
[ "$L1" != "$last" ] && changes=$((changes + 1))
inc=$(paste -d' ' <(tr ' ' '\n' <<< "$before") <(tr ' ' '\n' <<< "$after") |
      awk '{d = $2 - $1; if (d > m) m = d} END {print m + 0}')
count=$(( inc > changes ? inc : changes ))
echo "spurious_elections median=$count n=1 unit=count"
