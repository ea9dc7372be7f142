#!/usr/bin/env bash
# sched10k: 10,000 tasks placed on 1,000 simulated nodes and applied, in process (`shoal
# bench sched`): the orchestrator and scheduler's pass, the Raft entry's encoding and the
# state machine's apply. (The write itself is split into entries of 2,000 changes.) Goal ≤ 1 s.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
need_bench_cmds
bin=${SHOAL_BIN:-$REPO/target/debug/shoal}
out=$(timeout 300 "$bin" bench sched --nodes 1000 --tasks 10000 --rounds 5) || die "shoal bench sched failed"
extra=$(python3 -c 'import json,sys; d=json.load(sys.stdin); print("plan_ms=%.0f encode_ms=%.0f apply_ms=%.0f entry_bytes=%d" % (d["plan_ms"], d["encode_ms"], d["apply_ms"], d["entry_bytes"]))' <<< "$out")
line=$(python3 -c 'import json,sys; print("\n".join("%.1f" % x for x in json.load(sys.stdin)["total_ms"]))' <<< "$out" | stats sched10k_ms ms)
echo "$line $extra"
