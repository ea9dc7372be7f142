#!/usr/bin/env bash
# net_rekey_gap: the longest gap in a flow while every node's WireGuard key is replaced
# (`network rotate-keys`): a TCP request/response every 2 ms between two tasks on an encrypted
# overlay on two lab hosts (bench/rr.py gap), BENCH_REKEY_SECS (default 12) s per run with the
# rotation 3 s in, BENCH_REKEY_RUNS (default 3) runs, each waiting until both nodes said their
# new key. The line's median is the longest gap (ms) of the runs; base= is the longest gap of a
# run of the same length without a rotation (the noise floor here). Goal: ≤ 1000 ms.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
RUNS=${BENCH_REKEY_RUNS:-3}
SECS=${BENCH_REKEY_SECS:-12}
PORT=5302
RR=$REPO/bench/rr.py
WORK=$(mktemp -d /tmp/shl-bench.XXXXXX)
srv_pid=""
cleanup() { [ -n "$srv_pid" ] && kill "$srv_pid" 2>/dev/null; lab_down; rm -rf "$WORK"; }
trap 'cleanup; lab_unlock' EXIT
lab_lock
task_pair gap -d overlay --opt encrypted
on() { local host=$1 ns=$2; shift 3; timeout $((SECS + 60)) "$LAB" exec "$host" -- nsenter --net="$ns" "$@"; }
epochs() { # every node's key epoch, in node order
  # shellcheck disable=SC2046 # one id per word
  sI 1 node inspect $(sI 1 node ls -q) --format json \
    | python3 -c 'import json,sys; print(" ".join(str(n["key_epoch"]) for n in json.load(sys.stdin)))'
}
all_at() { [ "$(epochs)" = "$1 $1" ]; }
# run ROTATE(0|1) EPOCH: sets GAP (ms)
run() {
  on "$h_b" "$ns_b" -- python3 "$RR" serve "$PORT" $((SECS + 30)) >> "$WORK/server.log" 2>&1 &
  srv_pid=$!
  on "$h_a" "$ns_a" -- python3 "$RR" gap "$ip_b" "$PORT" "$SECS" > "$WORK/gap.out" 2>> "$WORK/gap.err" &
  local cli=$!
  if [ "$1" = 1 ]; then
    sleep 3   # the flow's steady state before the rotation: part of what is measured
    sI 1 network rotate-keys >/dev/null || die "rotate-keys failed"
    wait_until 30 all_at "$2" || die "the nodes did not say keys of epoch $2"
  fi
  wait "$cli" || die "the flow failed: $(cat "$WORK/gap.err")"
  kill "$srv_pid" 2>/dev/null; wait "$srv_pid" 2>/dev/null; srv_pid=""
  read -r GAP N < "$WORK/gap.out"
  log "rotate=$1: longest gap ${GAP} ms over $N round trips"
  [ -n "${GAP:-}" ]
}
all_at 0 || wait_until 30 all_at 0 || die "the nodes did not say their first keys"
run 0 0 || die "the baseline run failed"; base=$GAP
gaps=()
for r in $(seq 1 "$RUNS"); do run 1 "$r" || die "run $r failed"; gaps+=("$GAP"); done
echo "$(printf '%s\n' "${gaps[@]}" | stats net_rekey_gap ms) base=$base"
