#!/usr/bin/env bash
# net_encrypted_tcp: net_overlay_tcp on an encrypted overlay (`--opt encrypted`: WireGuard in
# netd, boringtun, over a TUN with offloads) — one and four iperf3 streams between two tasks on
# two hosts, against the plain underlay in the same run (veth=, ratio=), with the one-stream
# retransmits (retr=), netd's CPU seconds per run (netd_cpu=) and the UDP receive-buffer drops
# over the runs (rcvbuf_drops=). Goal on the 2-core machine: ≥ 2 Gbit/s for one stream (floor
# 1 Gbit/s) with no receive-buffer drops.
BENCH_OVL_FIG=net_encrypted_tcp BENCH_OVL_NET_OPTS="-d overlay --opt encrypted" \
  exec bash "$(dirname "$(readlink -f "$0")")/net_overlay_tcp.sh"
