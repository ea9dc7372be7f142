#!/usr/bin/env bash
# net_encrypted_lat: latency between two tasks on an encrypted overlay (WireGuard in netd) on two
# lab hosts (2-host swarm, 1 manager), against the plain underlay between the same hosts in the
# same run: ping (BENCH_LAT_PINGS, default 1000, 10 ms apart: the p99 of 200 was their second
# worst) and TCP request/response (64 bytes, BENCH_LAT_RR round trips, default 2000; bench/rr.py),
# BENCH_LAT_ROUNDS (default 3) rounds in alternating order. The line's median is the encrypted TCP
# round trip's p50 in µs; rr_p99=, ping_p50=/ping_p99= (µs) with their veth= counterparts and
# ratios (encrypted / underlay).
# Goal: ≤ 4× the underlay.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
ROUNDS=${BENCH_LAT_ROUNDS:-3}
PINGS=${BENCH_LAT_PINGS:-1000}
RRN=${BENCH_LAT_RR:-2000}
PORT=5301
RR=$REPO/bench/rr.py
WORK=$(mktemp -d /tmp/shl-bench.XXXXXX)
srv_pid=""
cleanup() { [ -n "$srv_pid" ] && kill "$srv_pid" 2>/dev/null; lab_down; rm -rf "$WORK"; }
trap 'cleanup; lab_unlock' EXIT
lab_lock
task_pair lat -d overlay --opt encrypted

on() { # on HOST NETNS|"" -- CMD
  local host=$1 ns=$2; shift 3
  if [ -n "$ns" ]; then timeout 120 "$LAB" exec "$host" -- nsenter --net="$ns" "$@"
  else timeout 120 "$LAB" exec "$host" -- "$@"; fi
}
# pings SRC_HOST SRC_NS ADDR: sets P50 P99 (µs)
pings() {
  read -r P50 P99 < <(on "$1" "$2" -- ping -n -c "$PINGS" -i 0.01 "$3" \
    | sed -n 's/.* time=\([0-9.]*\) ms.*/\1/p' | sort -g \
    | awk '{a[NR]=$1} END { if (!NR) exit 1; printf "%.0f %.0f\n", a[int((NR+1)/2)]*1000, a[int(NR*0.99+0.999)]*1000 }')
  [ -n "${P50:-}" ]
}
# rrs SRV_HOST SRV_NS CLI_HOST CLI_NS ADDR: sets P50 P99 (µs)
rrs() {
  on "$1" "$2" -- python3 "$RR" serve "$PORT" 60 >> "$WORK/server.log" 2>&1 &
  srv_pid=$!
  read -r P50 P99 < <(on "$3" "$4" -- python3 "$RR" rr "$5" "$PORT" "$RRN")
  kill "$srv_pid" 2>/dev/null; wait "$srv_pid" 2>/dev/null; srv_pid=""
  [ -n "${P50:-}" ]
}
enc_rr=() enc_rr99=() ve_rr=() ve_rr99=() enc_p=() enc_p99=() ve_p=() ve_p99=()
for r in $(seq 1 "$ROUNDS"); do
  order="er vr ep vp"; [ $((r % 2)) = 0 ] && order="vp ep vr er"
  for w in $order; do
    case $w in
      er) rrs "$h_b" "$ns_b" "$h_a" "$ns_a" "$ip_b" || die "encrypted rr $r failed"; enc_rr+=("$P50") enc_rr99+=("$P99") ;;
      vr) rrs "$h_b" "" "$h_a" "" "$NET.$h_b" || die "underlay rr $r failed"; ve_rr+=("$P50") ve_rr99+=("$P99") ;;
      ep) pings "$h_a" "$ns_a" "$ip_b" || die "encrypted ping $r failed"; enc_p+=("$P50") enc_p99+=("$P99") ;;
      vp) pings "$h_a" "" "$NET.$h_b" || die "underlay ping $r failed"; ve_p+=("$P50") ve_p99+=("$P99") ;;
    esac
    log "round $r: $w p50=${P50}us p99=${P99}us"
  done
done
m() { printf '%s\n' "$@" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "NA" }'; }
line=$(printf '%s\n' "${enc_rr[@]}" | stats net_encrypted_lat us)
a=$(m "${enc_rr[@]}") b=$(m "${ve_rr[@]}") a99=$(m "${enc_rr99[@]}") b99=$(m "${ve_rr99[@]}")
pa=$(m "${enc_p[@]}") pb=$(m "${ve_p[@]}") pa99=$(m "${enc_p99[@]}") pb99=$(m "${ve_p99[@]}")
echo "$line veth=$b ratio=$(ratio "$a" "$b") rr_p99=$a99 veth_p99=$b99 ratio_p99=$(ratio "$a99" "$b99")" \
  "ping_p50=$pa veth_ping_p50=$pb ping_ratio=$(ratio "$pa" "$pb") ping_p99=$pa99 veth_ping_p99=$pb99 ping_ratio_p99=$(ratio "$pa99" "$pb99")"
