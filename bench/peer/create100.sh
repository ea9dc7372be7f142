#!/usr/bin/env bash
# create100 on the peer Docker Swarm (5 hosts, 3 managers), measured like ours.
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
. "$HERE/../lib.sh"
. "$HERE/lib.sh"
peer_fig_create 100 "${BENCH_CREATE_REPS:-1}"
