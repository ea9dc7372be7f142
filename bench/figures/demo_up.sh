#!/usr/bin/env bash
# demo_up: wall time of the README's first command, `deploy/lab up 5 --managers 3`, from a
# built binary (SHOAL_BIN, or target/debug/shoal) to the demo answering: network, registry,
# 5 hosts, swarm, the demo images built and pushed, service `demo` converged, and then the
# printed command (run here as it is printed) returning the page. `up` bounds each of its own
# waits (nodes 60 s, demo tasks 120 s, its page 30 s); the whole rep is bounded by
# BENCH_DEMO_UP_TIMEOUT (300 s). `deploy/lab down` between reps is not counted.
# Knobs: BENCH_DEMO_UP_REPS (3), BENCH_DEMO_UP_TIMEOUT (300).
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
REPS=${BENCH_DEMO_UP_REPS:-3}
LIMIT=${BENCH_DEMO_UP_TIMEOUT:-300}

bin=${SHOAL_BIN:-$REPO/target/debug/shoal}
[ -x "$bin" ] || die "no shoal binary at $bin: cargo build -p shoal first, or set SHOAL_BIN"
export SHOAL_BIN=$bin
OUT=$(mktemp /tmp/shl-bench-demo.XXXXXX)
trap 'lab_down; rm -f "$OUT"; lab_unlock' EXIT
lab_lock
[ -e /run/netns/shl-sw ] && die "our lab is already up (deploy/lab down first)"

samples=()
for rep in $(seq 1 "$REPS"); do
  lab_down
  T0=$(now_ms)
  timeout "$LIMIT" "$LAB" up 5 --managers 3 > "$OUT" || { cat "$OUT" >&2; die "rep $rep: deploy/lab up failed or took over $LIMIT s"; }
  cmd=$(tail -n 1 "$OUT" | sed 's/^ *//')
  [[ $cmd == "deploy/lab sw -- "* ]] || { cat "$OUT" >&2; die "rep $rep: up did not end with the demo's command"; }
  # shellcheck disable=SC2086
  page=$(cd "$REPO" && timeout 10 $cmd) || die "rep $rep: \`$cmd\` failed"
  T1=$(now_ms)
  grep -q "shoal demo v1" <<< "$page" || die "rep $rep: the demo's page is not the demo's: $page"
  samples+=("$(( T1 - T0 ))")
  log "rep $rep: ${samples[-1]} ms ($(grep container <<< "$page"))"
done
printf '%s\n' "${samples[@]}" | stats demo_up_ms ms
