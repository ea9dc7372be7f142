#!/usr/bin/env bash
# net_overlay_tcp: TCP throughput (iperf3, BENCH_OVL_SECS s each, default 3) between two tasks
# of one service on a VXLAN overlay on two lab hosts (2-host swarm, 1 manager), with one stream
# and with four, and beside it in the same run the plain underlay between the same two hosts
# (host 1 → host 2 over the lab's veths and switch bridge: what the overlay is carried over).
# BENCH_OVL_ROUNDS (default 5) rounds measure all four, in alternating order so that they share
# the noise. iperf3 runs in the lab hosts, entered into the tasks' network namespaces
# (/run/shoal/netns/<container id>). The line's median is the overlay's with one stream;
# veth= is the underlay's, ratio= overlay/underlay; p4=, veth4=, ratio4= the same with four
# streams. The kernel's VXLAN bound here is about 0.76 (notes/multihost-networking.md).
# Also on the line: retr= (the overlay's one-stream TCP retransmits, median per run), netd_cpu=
# (both hosts' netd CPU seconds per overlay run, median) and rcvbuf_drops= (UDP receive-buffer
# errors on both hosts over all overlay runs: the datagrams a tunnel lost).
# bench/figures/net_encrypted_tcp.sh runs this with BENCH_OVL_FIG=net_encrypted_tcp and
# BENCH_OVL_NET_OPTS="-d overlay --opt encrypted" (WireGuard in netd instead of the kernel's
# VXLAN), and net_macvlan_tcp.sh with a macvlan network on the lab's own LAN.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
ROUNDS=${BENCH_OVL_ROUNDS:-5}
SECS=${BENCH_OVL_SECS:-3}
PORT=5201
FIG=${BENCH_OVL_FIG:-net_overlay_tcp}
read -r -a NET_OPTS <<< "${BENCH_OVL_NET_OPTS:--d overlay}"
command -v iperf3 >/dev/null || die "iperf3 is needed (deploy/prereqs installs it)"
command -v busybox >/dev/null || die "busybox-static is needed"
WORK=$(mktemp -d /tmp/shl-bench.XXXXXX)
srv_pid=""   # the iperf3 server we started and have not reaped yet
cleanup() { [ -n "$srv_pid" ] && kill "$srv_pid" 2>/dev/null; lab_down; rm -rf "$WORK"; }
trap 'cleanup; lab_unlock' EXIT
lab_lock
task_pair ipf "${NET_OPTS[@]}"
link=$(timeout 10 "$LAB" exec "$h_a" -- nsenter --net="$ns_a" ip -o -d link show eth0)
log "eth0: mtu $(sed -n 's/.* mtu \([0-9]*\) .*/\1/p' <<< "$link") $(grep -o 'macvlan mode [a-z]*' <<< "$link")"
# netd's CPU seconds (user + system) on both hosts, and their UDP receive-buffer errors
netd_cpu() {
  local i pid t=0
  for i in 1 2; do
    pid=$(cat "/tmp/shoal-lab/h$i/netd.pid")
    t=$(awk -v t="$t" -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", t + ($14 + $15) / hz }' "/proc/$pid/stat")
  done
  echo "$t"
}
rcvbuf_errors() {
  local i n=0 e
  for i in 1 2; do
    e=$(timeout 10 "$LAB" exec "$i" -- awk '/^Udp:/ { if (h) { print $6; exit } h = 1 }' /proc/net/snmp)
    n=$((n + ${e:-0}))
  done
  echo "$n"
}
drops0=$(rcvbuf_errors)

# on HOST [NETNS] -- CMD: CMD on lab host HOST, in NETNS if given (else the host's own)
on() {
  local host=$1 ns=$2; shift 3
  if [ -n "$ns" ]; then timeout $((SECS + 30)) "$LAB" exec "$host" -- nsenter --net="$ns" "$@"
  else timeout $((SECS + 30)) "$LAB" exec "$host" -- "$@"; fi
}
listening() { on "$1" "$2" -- ss -Hltn "sport = :$PORT" | grep -q .; }
# gbps SRV_HOST SRV_NS CLI_HOST CLI_NS ADDR STREAMS: one iperf3 run; sets G to the received Gbit/s
gbps() {
  local sh=$1 sn=$2 ch=$3 cn=$4 addr=$5 p=$6 out rc
  G=""
  on "$sh" "$sn" -- iperf3 -s -1 -p "$PORT" >> "$WORK/server.log" 2>&1 &
  srv_pid=$!
  wait_until 10 listening "$sh" "$sn" || { log "iperf3 server on host $sh not listening"; return 1; }
  out=$(on "$ch" "$cn" -- iperf3 -c "$addr" -p "$PORT" -t "$SECS" -P "$p" -J); rc=$?
  wait "$srv_pid"; srv_pid=""
  [ $rc = 0 ] || { log "iperf3 client failed (exit $rc): $(tail -c 300 <<< "$out")"; return 1; }
  read -r G R < <(python3 -c 'import json,sys; e = json.load(sys.stdin)["end"]; print("%.3f %d" % (e["sum_received"]["bits_per_second"] / 1e9, e["sum_sent"].get("retransmits", 0)))' <<< "$out") \
    && [ -n "$G" ]
}

ov1=() ov4=() ve1=() ve4=() retr=() cpu=()
for r in $(seq 1 "$ROUNDS"); do
  order="ov1 ve1 ov4 ve4"; [ $((r % 2)) = 0 ] && order="ve4 ov4 ve1 ov1"
  for w in $order; do
    case $w in
      ov1) c0=$(netd_cpu)
           gbps "$h_b" "$ns_b" "$h_a" "$ns_a" "$ip_b" 1 || die "overlay run $r failed"; ov1+=("$G") retr+=("$R")
           cpu+=("$(awk -v a="$c0" -v b="$(netd_cpu)" 'BEGIN { printf "%.2f", b - a }')") ;;
      ov4) gbps "$h_b" "$ns_b" "$h_a" "$ns_a" "$ip_b" 4 || die "overlay run $r failed"; ov4+=("$G") ;;
      ve1) gbps "$h_b" "" "$h_a" "" "$NET.$h_b" 1 || die "underlay run $r failed"; ve1+=("$G") ;;
      ve4) gbps "$h_b" "" "$h_a" "" "$NET.$h_b" 4 || die "underlay run $r failed"; ve4+=("$G") ;;
    esac
    log "round $r: $w $G Gbit/s"
  done
done
sI 1 service rm ipf >/dev/null
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "NA" }'; }
m_ve1=$(printf '%s\n' "${ve1[@]}" | median) m_ov4=$(printf '%s\n' "${ov4[@]}" | median) m_ve4=$(printf '%s\n' "${ve4[@]}" | median)
line=$(printf '%s\n' "${ov1[@]}" | stats "$FIG" Gbit/s)
m_ov1=$(sed -n 's/.* median=\([^ ]*\).*/\1/p' <<< "$line")
m_retr=$(printf '%s\n' "${retr[@]}" | median) m_cpu=$(printf '%s\n' "${cpu[@]}" | median)
echo "$line veth=$m_ve1 ratio=$(ratio "$m_ov1" "$m_ve1") p4=$m_ov4 veth4=$m_ve4 ratio4=$(ratio "$m_ov4" "$m_ve4")" \
  "retr=$m_retr netd_cpu=$m_cpu rcvbuf_drops=$(( $(rcvbuf_errors) - drops0 ))"
