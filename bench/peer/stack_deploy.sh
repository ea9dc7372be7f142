#!/usr/bin/env bash
# stack_deploy on the peer Docker Swarm (5 hosts, 3 managers): `docker stack deploy` of the same
# 10-service Compose file (stack_file in ../lib.sh), measured like ours.
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
. "$HERE/../lib.sh"
. "$HERE/lib.sh"
peer_fig_stack_deploy "${BENCH_STACK_REPS:-3}"
