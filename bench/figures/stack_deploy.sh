#!/usr/bin/env bash
# stack_deploy: `stack deploy` of a Compose file with 10 services of 2 sleeper replicas (on the
# stack's default overlay network) → all 20 tasks running, on a 5-host lab with 3 managers, from
# the deploy call to the first poll that sees every service converged. Reps BENCH_STACK_REPS
# (default 3). The peer runs `docker stack deploy` of the same file (bench/peer/stack_deploy.sh).
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
fig_stack_deploy "${BENCH_STACK_REPS:-3}"
