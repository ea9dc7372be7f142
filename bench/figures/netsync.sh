#!/usr/bin/env bash
# netsync: netd's netfilter rules for 1,000 containers with a published port each
# (BENCH_NETSYNC_PORTS), generated whole and applied in one `nft -f` transaction that
# replaces the table, as one sync does. Runs `shoal bench netsync`, which moves itself
# into a network namespace of its own first: nothing outside it is touched. Goal ≤ 100 ms.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
need_bench_cmds
N=${BENCH_NETSYNC_PORTS:-1000}
bin=${SHOAL_BIN:-$REPO/target/debug/shoal}
[ -x "$bin" ] || die "no shoal binary at $bin"
command -v nft >/dev/null || die "nft is needed (deploy/prereqs installs nftables)"
log "applying rules for $N published ports, 10 rounds"
out=$(timeout 120 "$bin" bench netsync --ports "$N" --rounds 10) || die "shoal bench netsync failed"
gen=$(python3 -c 'import json,sys; print("%.2f" % json.load(sys.stdin)["generate_median_ms"])' <<< "$out")
line=$(python3 -c 'import json,sys; print("\n".join("%.2f" % x for x in json.load(sys.stdin)["sync_ms"]))' <<< "$out" | stats netsync_ms ms)
echo "$line ports=$N generate_ms=$gen"
