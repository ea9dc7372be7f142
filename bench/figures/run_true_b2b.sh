#!/usr/bin/env bash
# run_true_b2b_ms: `shoal run --rm busybox true` on the default bridge, back to back (1-host lab,
# no swarm): each run starts while the last one's removal finishes after its answer, so it shows
# what a removal leaves the next run to wait on (netd's pass, the kernel's RTNL lock). `run_true`
# alternates bridge and `--network none` runs, which hides this. `none=`: the same loop with
# `--network none`. BENCH_RUN_TRUE_REPS (default 40).
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
REPS=${BENCH_RUN_TRUE_REPS:-40}
lab_with_image bench:true sh true
s run --rm bench:true true || die "a first run failed"   # warm caches
ms() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null 2>&1 || return 1; t1=$(date +%s%N); awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f\n", (b - a) / 1e6}'; }
bridge=() none=()
for k in $(seq 1 "$REPS"); do bridge+=("$(ms s run --rm bench:true true)"); done
for k in $(seq 1 "$REPS"); do none+=("$(ms s run --rm --network none bench:true true)"); done
echo "$(printf '%s\n' "${bridge[@]}" | stats run_true_b2b_ms ms) none=$(printf '%s\n' "${none[@]}" | median)"
