#!/usr/bin/env bash
# raft_writes: committed writes per second, 3 managers.
# C=4 loops run `shoal node update --label-add wI=N <leader node id>` back to back on the
# leader's host for BENCH_WRITE_SECS (10) s; rate = successes / elapsed wall time.
# Note: every write is a whole CLI process (start, connect, TLS, request), so this is a
# client-side figure, lower than what the raft log itself can commit. Each loop runs
# inside the host as one `deploy/lab exec`, so the lab's exec setup is not counted.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
SECS=${BENCH_WRITE_SECS:-10}
C=${BENCH_WRITE_CONC:-4}

[ -e /run/netns/shl-sw ] && die "our lab is already up (deploy/lab down first)"
tmp=$(mktemp -d /tmp/shl-bench.XXXXXX)
trap 'lab_down; rm -rf "$tmp"' EXIT
lab up 3 --managers 3 >&2 || die "deploy/lab up failed"
wait_until 60 all_ready 3 || die "3 ready nodes with a leader not reached"
L=$(leader_index) || die "no leader"
id=$(node_id "$L" "$L"); [ -n "$id" ] || die "no node id for the leader"
log "writing on shl-h$L (leader), $C loops, $SECS s"
t0=$(now_ms)
for i in $(seq 1 "$C"); do
  lab exec "$L" -- bash -c '
    end=$(( $(date +%s%3N) + $1 * 1000 )) n=0 ok=0
    while [ "$(date +%s%3N)" -lt "$end" ]; do
      n=$((n + 1))
      timeout 10 shoal node update --label-add "w$2=$n" "$3" >/dev/null 2>&1 && ok=$((ok + 1))
    done
    echo "$ok $n"' writes "$SECS" "$i" "$id" > "$tmp/$i" &
done
wait
t1=$(now_ms)
ok=$(cat "$tmp"/* | awk '{s += $1} END {print s + 0}')
tries=$(cat "$tmp"/* | awk '{s += $2} END {print s + 0}')
log "$ok of $tries writes succeeded in $(( t1 - t0 )) ms"
[ "$ok" -gt 0 ] || die "no write succeeded"
rate=$(awk -v o="$ok" -v ms=$(( t1 - t0 )) 'BEGIN {printf "%.1f", o * 1000 / ms}')
echo "raft_writes_per_s median=$rate n=1 unit=writes/s"
