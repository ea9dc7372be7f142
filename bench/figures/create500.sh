#!/usr/bin/env bash
# create500: `service create --replicas 500` → all 500 tasks running, on a 5-host lab with 3
# managers (sleeper tasks on the default bridge network), from the create call to the first
# poll that sees 500 running. Reps BENCH_CREATE_REPS (default 1). Docker Swarm: ~123 s here.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
fig_create 500 "${BENCH_CREATE_REPS:-1}"
