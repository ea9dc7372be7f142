#!/usr/bin/env bash
# net_macvlan_tcp: TCP throughput (iperf3, BENCH_MV_SECS s each, default 3) between two tasks of
# one service on a macvlan network on two lab hosts (2-host swarm, 1 manager): the network is
# the lab's own LAN (10.98.0.0/24, parent shl-eth0: the lab hosts' eth0, addresses from 10.98.0.192/28), and beside it
# in the same run the plain underlay between the same two hosts (host 1 → host 2 over the
# lab's veths and switch bridge: the very wire the macvlan children share). BENCH_MV_ROUNDS
# (default 5) rounds measure all four, in alternating order so that they share the noise.
# iperf3 runs in the lab hosts, entered into the tasks' network namespaces
# (/run/shoal/netns/<container id>). The line's median is macvlan's with one stream; veth= is
# the underlay's, ratio= macvlan/underlay (goal ≥ 0.9: nothing but the macvlan device is added
# on the path); p4=, veth4=, ratio4= the same with four streams.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
ROUNDS=${BENCH_MV_ROUNDS:-5}
SECS=${BENCH_MV_SECS:-3}
PORT=5201
command -v iperf3 >/dev/null || die "iperf3 is needed (deploy/prereqs installs it)"
command -v busybox >/dev/null || die "busybox-static is needed"
WORK=$(mktemp -d /tmp/shl-bench.XXXXXX)
srv_pid=""   # the iperf3 server we started and have not reaped yet
cleanup() { [ -n "$srv_pid" ] && kill "$srv_pid" 2>/dev/null; lab_down; rm -rf "$WORK"; }
trap 'cleanup; lab_unlock' EXIT
lab_lock
[ -e /run/netns/shl-sw ] && die "our lab is already up (deploy/lab down first)"
lab up 2 --managers 1 --no-demo >&2 || die "deploy/lab up failed"
bench_image bench:mv 2 sh sleep

sI 1 network create -d macvlan --subnet "$NET.0/24" --gateway "$NET.254" --ip-range "$NET.192/28" \
  -o parent=shl-eth0 benchmv >/dev/null || die "network create failed"
sI 1 service create -d --name ipf --network benchmv --replicas 2 --replicas-max-per-node 1 \
  --stop-grace-period 1s bench:mv sleep 1000000 >/dev/null || die "service create failed"
svc_wait ipf 2 60 || die "the two tasks did not start"
tasks=$(svc_tasks ipf | sort)
[ "$(wc -l <<< "$tasks")" = 2 ] || die "expected a task on each host: $tasks"
read -r h_a c_a ip_a _ <<< "$(sed -n 1p <<< "$tasks")"
read -r h_b c_b ip_b _ <<< "$(sed -n 2p <<< "$tasks")"
[ "$h_a" != "$h_b" ] || die "both tasks on host $h_a"
ns_a=/run/shoal/netns/$c_a ns_b=/run/shoal/netns/$c_b
kind=$(timeout 10 "$LAB" exec "$h_a" -- nsenter --net="$ns_a" ip -o -d link show eth0 | grep -o 'macvlan mode [a-z]*')
log "tasks $ip_a (host $h_a) -> $ip_b (host $h_b) on benchmv (eth0: ${kind:-not macvlan?})"

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
  G=$(python3 -c 'import json,sys; print("%.3f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))' <<< "$out") \
    && [ -n "$G" ]
}

mv1=() mv4=() ve1=() ve4=()
for r in $(seq 1 "$ROUNDS"); do
  order="mv1 ve1 mv4 ve4"; [ $((r % 2)) = 0 ] && order="ve4 mv4 ve1 mv1"
  for w in $order; do
    case $w in
      mv1) gbps "$h_b" "$ns_b" "$h_a" "$ns_a" "$ip_b" 1 || die "macvlan run $r failed"; mv1+=("$G") ;;
      mv4) gbps "$h_b" "$ns_b" "$h_a" "$ns_a" "$ip_b" 4 || die "macvlan run $r failed"; mv4+=("$G") ;;
      ve1) gbps "$h_b" "" "$h_a" "" "$NET.$h_b" 1 || die "underlay run $r failed"; ve1+=("$G") ;;
      ve4) gbps "$h_b" "" "$h_a" "" "$NET.$h_b" 4 || die "underlay run $r failed"; ve4+=("$G") ;;
    esac
    log "round $r: $w $G Gbit/s"
  done
done
sI 1 service rm ipf >/dev/null
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "NA" }'; }
m_ve1=$(printf '%s\n' "${ve1[@]}" | median) m_mv4=$(printf '%s\n' "${mv4[@]}" | median) m_ve4=$(printf '%s\n' "${ve4[@]}" | median)
line=$(printf '%s\n' "${mv1[@]}" | stats net_macvlan_tcp Gbit/s)
m_mv1=$(sed -n 's/.* median=\([^ ]*\).*/\1/p' <<< "$line")
echo "$line veth=$m_ve1 ratio=$(ratio "$m_mv1" "$m_ve1") p4=$m_mv4 veth4=$m_ve4 ratio4=$(ratio "$m_mv4" "$m_ve4")"
