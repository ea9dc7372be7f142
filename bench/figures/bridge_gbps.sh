#!/usr/bin/env bash
# bridge_gbps: TCP throughput (iperf3, one stream, BENCH_BRIDGE_SECS s, default 3) between
# two containers on one user bridge network on one lab host (1-host lab, no swarm), and,
# beside it in the same run, over a plain veth pair between two bare network namespaces
# (shlb-a, shlb-b, 10.250.0.1/30 and .2, the containers' MTU) made inside the same lab
# host. BENCH_BRIDGE_ROUNDS (default 5) rounds measure both, in alternating order so that
# they share the noise. iperf3 runs in the lab host (its mount namespace and cgroup),
# entered into the containers' network namespaces (/run/shoal/netns/<id>) or the shlb-*
# ones. The line's median is the bridge's; veth= is the pair's median, ratio=bridge/veth.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
ROUNDS=${BENCH_BRIDGE_ROUNDS:-5}
SECS=${BENCH_BRIDGE_SECS:-3}
PORT=5201
lab_with_image bench:bridge sleep
command -v iperf3 >/dev/null || die "iperf3 is needed (deploy/prereqs installs it)"

h() { local t=$1; shift; timeout "$t" "$LAB" exec 1 -- "$@"; }   # on lab host 1, bounded
srv_pid=""   # the iperf3 server we started and have not reaped yet
cleanup() {
  [ -n "$srv_pid" ] && kill "$srv_pid" 2>/dev/null
  h 10 sh -c 'for n in shlb-a shlb-b; do [ -e "/run/netns/$n" ] && ip netns del "$n"; done; true' >&2
  lab_down; rm -rf "$WORK"
}
trap cleanup EXIT

# the two containers: full id and address of each
s network create benchnet >/dev/null || die "network create failed"
ids=() ips=()
for k in 1 2; do
  id=$(s run -d --name "bridge-$k" --network benchnet bench:bridge sleep 3600) || die "container $k failed"
  ip=$(s inspect "bridge-$k" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["endpoints"][0]["ip"])') \
    || die "no address for container $k"
  ids+=("$id"); ips+=("$ip")
done
ns_c1=/run/shoal/netns/${ids[0]} ns_c2=/run/shoal/netns/${ids[1]}
mtu=$(h 10 nsenter --net="$ns_c1" ip -o link show eth0 | sed -n 's/.* mtu \([0-9]*\) .*/\1/p')
[ -n "$mtu" ] || die "cannot read the containers' MTU"
log "containers ${ips[0]} -> ${ips[1]} on benchnet (mtu $mtu)"

# the plain veth pair, inside the lab host
h 10 sh -ec '
  ip netns add shlb-a; ip netns add shlb-b
  ip -n shlb-a link add shlb-v0 type veth peer name shlb-v1 netns shlb-b
  ip -n shlb-a link set shlb-v0 mtu "$1"; ip -n shlb-b link set shlb-v1 mtu "$1"
  ip -n shlb-a addr add 10.250.0.1/30 dev shlb-v0; ip -n shlb-b addr add 10.250.0.2/30 dev shlb-v1
  for n in shlb-a shlb-b; do ip -n $n link set lo up; done
  ip -n shlb-a link set shlb-v0 up; ip -n shlb-b link set shlb-v1 up' sh "$mtu" >&2 \
  || die "cannot create the veth pair"
ns_a=/run/netns/shlb-a ns_b=/run/netns/shlb-b
veth_up() { h 5 nsenter --net="$ns_a" ip -o link show shlb-v0 | grep -q LOWER_UP; }
wait_until 5 veth_up || die "the veth pair did not come up"

listening() { h 5 nsenter --net="$1" ss -Hltn "sport = :$PORT" | grep -q .; }
# gbps SERVER_NS CLIENT_NS SERVER_IP: one iperf3 run; sets G to the received Gbit/s
gbps() {
  local srv=$1 cli=$2 addr=$3 out rc
  G=""
  h $((SECS + 30)) nsenter --net="$srv" iperf3 -s -1 -p "$PORT" >> "$WORK/server.log" 2>&1 &
  srv_pid=$!
  wait_until 10 listening "$srv" || { log "iperf3 server in $srv not listening"; return 1; }
  out=$(h $((SECS + 20)) nsenter --net="$cli" iperf3 -c "$addr" -p "$PORT" -t "$SECS" -J); rc=$?
  wait "$srv_pid"; srv_pid=""   # -1: the server exits after this one test (timeout bounds it)
  [ $rc = 0 ] || { log "iperf3 client failed (exit $rc): $(tail -c 300 <<< "$out")"; return 1; }
  G=$(python3 -c 'import json,sys; print("%.3f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))' <<< "$out") \
    && [ -n "$G" ]
}

bridge=() veth=()
for r in $(seq 1 "$ROUNDS"); do
  order="bridge veth"; [ $((r % 2)) = 0 ] && order="veth bridge"
  for w in $order; do
    if [ "$w" = bridge ]; then
      gbps "$ns_c2" "$ns_c1" "${ips[1]}" || die "bridge measurement $r failed"; bridge+=("$G")
    else
      gbps "$ns_b" "$ns_a" 10.250.0.2 || die "veth measurement $r failed"; veth+=("$G")
    fi
    log "round $r: $w $G Gbit/s"
  done
done
s rm -f bridge-1 bridge-2 >/dev/null
s network rm benchnet >/dev/null
veth_med=$(printf '%s\n' "${veth[@]}" | median)
line=$(printf '%s\n' "${bridge[@]}" | stats bridge_gbps Gbit/s)
br_med=$(sed -n 's/.* median=\([^ ]*\).*/\1/p' <<< "$line")
ratio=$(awk -v a="$br_med" -v b="$veth_med" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "NA" }')
echo "$line veth=${veth_med} ratio=${ratio}"
