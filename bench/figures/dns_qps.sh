#!/usr/bin/env bash
# dns_qps: netd's embedded DNS (127.0.0.11) as a container sees it: queries per second
# for another container's name with 16 queries in flight, then the latency of each answer
# at 1,000 queries/s (BENCH_DNS_RATE). The client is `shoal bench dns` run inside the
# asking container's network namespace. n = rounds (BENCH_DNS_ROUNDS, default 3) of 3 s
# each. Goals: ≥ 15,000 QPS; p50 ≤ 100 µs at 1k QPS.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
need_bench_cmds
ROUNDS=${BENCH_DNS_ROUNDS:-3}
RATE=${BENCH_DNS_RATE:-1000}
lab_with_image bench:dns sleep
s network create benchdns >/dev/null || die "network create failed"
s run -d --name target --network benchdns bench:dns sleep 3600 >/dev/null || die "target container failed"
asker=$(s run -d --name asker --network benchdns bench:dns sleep 3600) || die "asker container failed"
qps=() p50=() p90=()
for r in $(seq 1 "$ROUNDS"); do
  out=$(timeout 60 "$LAB" exec 1 -- nsenter --net="/run/shoal/netns/$asker" shoal bench dns --name target --seconds 3 --rate "$RATE") \
    || die "shoal bench dns failed (round $r)"
  read -r q a b < <(python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.0f %.1f %.1f" % (d["qps"], d["p50_us"], d["p90_us"]))' <<< "$out")
  log "round $r: $q queries/s; at $RATE/s p50 ${a} µs, p90 ${b} µs"
  qps+=("$q"); p50+=("$a"); p90+=("$b")
done
line=$(printf '%s\n' "${qps[@]}" | stats dns_qps q/s)
echo "$line p50_us=$(printf '%s\n' "${p50[@]}" | median) p90_us=$(printf '%s\n' "${p90[@]}" | median) at_rate=$RATE"
