#!/usr/bin/env bash
# create100: `service create --replicas 100` → all 100 tasks running, on a 5-host lab with 3
# managers (sleeper tasks on the default bridge network), from the create call to the first
# poll that sees 100 running. Reps BENCH_CREATE_REPS (default 3). Docker Swarm: ~20 s here.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
fig_create 100 "${BENCH_CREATE_REPS:-3}"
