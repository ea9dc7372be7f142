#!/usr/bin/env bash
# nodeloss on the peer Docker Swarm: 20 replicas on 5 hosts; kill -9 worker 5's dockerd
# (`swarm.sh kill 5`) → 20 running again as `service ls` counts them, none on pl-h5.
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
. "$HERE/../lib.sh"
. "$HERE/lib.sh"
peer_svc_lab
d 1 service create "${PEER_SVC_OPTS[@]}" --name nl --replicas 20 busybox:local sleep 1000000 >/dev/null || die "create failed"
wait_until 600 peer_is nl 20 || die "20 not running"
off5() { ! td 10 1 service ps --filter desired-state=running --format '{{.Node}} {{.CurrentState}}' nl 2>/dev/null | grep -q '^pl-h5 Running'; }
healed() { peer_is nl 20 && off5; }
T0=$(now_ms)
"$PEER/swarm.sh" kill 5 KILL
wait_until 300 healed || die "host 5's tasks did not move"
echo "$(( $(now_ms) - T0 ))" | stats nodeloss_ms ms
