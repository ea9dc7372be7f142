#!/usr/bin/env bash
# create_timeline: where the time of a create500 goes. `service create --replicas N` (N from
# BENCH_TIMELINE_N, default 500) on create500's lab (5 hosts, 3 managers, sleepers on the default
# bridge) with the timeline's events on (RUST_LOG …,shoal::timeline=debug; proto/src/timeline.rs),
# then bench/timeline.py prints on stderr, per step (orchestrator, allocator, scheduler, Raft
# commit, dispatch, node accept, start slot, pull check, runtime lock, netns + netd attach, prepare, shim,
# running, report sent, report written, the CLI seeing it), p50/p90/p99/max of the step's own
# duration and of the time since `service create`. Its line: the time until the CLI sees all N
# running (as create500's, one rep). BENCH_TIMELINE_KEEP=DIR keeps the logs (daemons' and netds') and the table there.
# BENCH_TIMELINE_NETWORK=overlay puts the service on an overlay (as create100_overlay's) instead.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
N=${BENCH_TIMELINE_N:-500}
[[ $N =~ ^[1-9][0-9]*$ ]] || die "BENCH_TIMELINE_N must be a positive number of replicas, not '$N'"
NET=${BENCH_TIMELINE_NETWORK:-bridge}
case $NET in bridge|overlay) ;; *) die "BENCH_TIMELINE_NETWORK must be bridge or overlay, not '$NET'" ;; esac
command -v python3 >/dev/null || die "python3 is needed (bench/timeline.py reads the logs)"
# The lab's filter (as create500 runs with), and the timeline's target.
export RUST_LOG="${RUST_LOG:-info},shoal::timeline=debug"
svc_lab
args=()
if [ "$NET" = overlay ]; then
  sI 1 network create -d overlay benchov >/dev/null || die "network create failed"
  args=(--network benchov)
fi
T0=$(now_ms)
sI 1 service create -d --name tl --replicas "$N" --stop-grace-period 1s --restart-delay 0s "${args[@]}" \
  bench:svc sleep 1000000 >/dev/null || die "service create failed"
python3 "$BENCH_DIR/timeline.py" watch tl "$N" 600 "$WORK/seen.json" -- \
  timeout "${BENCH_CLI_S:-60}" "${SHOAL_BIN:-$REPO/target/debug/shoal}" -H unix:///tmp/shoal-lab/h1/run/shoal/shoal.sock \
  || die "$N tasks not running"
logs=()
for i in 1 2 3 4 5; do logs+=("/tmp/shoal-lab/h$i/daemon.log"); done
python3 "$BENCH_DIR/timeline.py" table "$T0" "$WORK/seen.json" "${logs[@]}" > "$WORK/table.txt" \
  || die "the timeline's table failed"
cat "$WORK/table.txt" >&2
if [ -n "${BENCH_TIMELINE_KEEP:-}" ]; then
  mkdir -p "$BENCH_TIMELINE_KEEP"
  cp "$WORK/table.txt" "$WORK/seen.json" "$BENCH_TIMELINE_KEEP/"
  for i in 1 2 3 4 5; do
    cp "/tmp/shoal-lab/h$i/daemon.log" "$BENCH_TIMELINE_KEEP/h$i.log"
    cp "/tmp/shoal-lab/h$i/netd.log" "$BENCH_TIMELINE_KEEP/h$i-netd.log" 2>/dev/null
  done
fi
T1=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["t1"])' "$WORK/seen.json")
echo "$(( T1 - T0 ))" | stats create_timeline ms
