#!/usr/bin/env bash
# run_true_ms on the peer: `docker run --rm busybox:local true` on a 1-host Docker
# (swarm.sh up 1 1), the CLI in the root namespace on the host's socket, measured like ours.
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
. "$HERE/../lib.sh"
. "$HERE/lib.sh"
REPS=${BENCH_RUN_TRUE_REPS:-30}

peer_check
trap peer_down EXIT
"$PEER/swarm.sh" up 1 1 >&2 || die "swarm.sh up 1 1 failed"
d 1 run --rm busybox:local true >/dev/null 2>&1 || die "a first docker run failed"
samples=()
for k in $(seq 1 "$REPS"); do
  t0=$(date +%s%N)
  td 60 1 run --rm busybox:local true >/dev/null 2>&1 || die "docker run $k failed"
  t1=$(date +%s%N)
  samples+=("$(( (t1 - t0) / 1000000 ))")
done
printf '%s\n' "${samples[@]}" | stats run_true_ms ms
