#!/usr/bin/env bash
# raft_writes: durable writes per second through the control API on 3 lab
# managers. `shoal bench writes` runs BENCH_WRITE_CLIENTS (32) concurrent callers
# on the leader's host for BENCH_WRITE_SECS (10) s; each acknowledged call is one
# Raft entry committed (fsync'd) on a quorum. Also reports latency on stderr.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
need_bench_cmds
SECS=${BENCH_WRITE_SECS:-10}
C=${BENCH_WRITE_CLIENTS:-32}

trap 'lab_down; lab_unlock' EXIT
lab_lock
[ -e /run/netns/shl-sw ] && die "our lab is already up (deploy/lab down first)"
lab up 3 --managers 3 --no-demo >&2 || die "deploy/lab up failed"
wait_until 60 all_ready 3 || die "3 ready nodes with a leader not reached"
L=$(leader_index) || die "no leader"
id=$(node_id "$L" "$L"); [ -n "$id" ] || die "no node id for the leader"
log "writing on shl-h$L (leader), $C clients, $SECS s"
out=$(lab exec "$L" -- shoal bench writes --clients "$C" --seconds "$SECS" "$id") || die "shoal bench writes failed"
log "$out"
rate=$(python3 -c 'import json,sys; print("%.0f" % json.loads(sys.argv[1])["per_second"])' "$out")
p50=$(python3 -c 'import json,sys; print("%.2f" % json.loads(sys.argv[1])["p50_ms"])' "$out")
echo "raft_writes_per_s median=$rate n=1 unit=writes/s p50_ms=$p50 clients=$C"
