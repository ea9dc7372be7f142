#!/usr/bin/env bash
# net_program: netd's overlay pass programming 1,000 remote endpoints (BENCH_NETPROG_ENDPOINTS;
# tasks spread over BENCH_NETPROG_PEERS fake peers, default 10, on one overlay network) on one
# host: the sandbox, its bridge and VXLAN device, and an FDB and a neighbour entry per endpoint.
# Runs `shoal bench net-program`, which drives netd's own pass (`Sandboxes::sync`) in a network
# namespace of its own (nothing outside it is touched) BENCH_NETPROG_ROUNDS times (default 10):
# each time from the view handed to the pass until a dump shows the kernel holding exactly every
# wanted entry, from nothing (the line's median) and then with one endpoint replaced (incr=, the
# incremental pass). pass= and incr_pass= are the same without the check's dump. Goal < 100 ms.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
need_bench_cmds
N=${BENCH_NETPROG_ENDPOINTS:-1000}
P=${BENCH_NETPROG_PEERS:-10}
R=${BENCH_NETPROG_ROUNDS:-10}
bin=${SHOAL_BIN:-$REPO/target/debug/shoal}
log "programming $N remote endpoints on $P peers, $R rounds"
out=$(timeout 300 "$bin" bench net-program --endpoints "$N" --peers "$P" --rounds "$R") \
  || die "shoal bench net-program failed"
field_of() { python3 -c 'import json,sys; print("%.2f" % json.load(sys.stdin)[sys.argv[1]])' "$1" <<< "$out"; }
line=$(python3 -c 'import json,sys; print("\n".join("%.2f" % x for x in json.load(sys.stdin)["cold_ms"]))' <<< "$out" \
  | stats net_program_ms ms)
echo "$line endpoints=$N peers=$P pass=$(field_of cold_pass_median_ms) incr=$(field_of incr_median_ms) incr_pass=$(field_of incr_pass_median_ms)"
