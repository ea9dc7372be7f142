#!/usr/bin/env bash
# net_macvlan_tcp: net_overlay_tcp on a macvlan network — TCP throughput (iperf3, one and four
# streams) between two tasks on two lab hosts whose network is the lab's own LAN (10.98.0.0/24,
# parent shl-eth0: the lab hosts' eth0, addresses from 10.98.0.192/28), against the plain
# underlay between the same two hosts in the same run (veth=, ratio=: the very wire the macvlan
# children share). Goal ≥ 0.9: nothing but the macvlan device is added on the path.
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
BENCH_OVL_FIG=net_macvlan_tcp \
  BENCH_OVL_NET_OPTS="-d macvlan --subnet $NET.0/24 --gateway $NET.254 --ip-range $NET.192/28 -o parent=shl-eth0" \
  exec bash "$(dirname "$(readlink -f "$0")")/net_overlay_tcp.sh"
