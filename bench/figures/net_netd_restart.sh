#!/usr/bin/env bash
# net_netd_restart: how soon an encrypted overlay carries traffic again after a netd restart. Two
# tasks on an encrypted overlay on two lab hosts (2-host swarm, 1 manager); the first pings the
# second every 10 ms; 2 s in, netd on the second's host is killed (-9), and restarted 1 s later on
# its old state (its TUN and routes outlived it; it re-handshakes with its peer). The figure is
# the time from the restart's start to the first echo reply after it (ms), BENCH_RESTART_RUNS
# (default 3) runs; down= is how many replies came while netd was down (0: traffic stopped, it
# never went around netd), ready= the median time until the restarted netd answered its API.
# Goal (issue 15): traffic resumes within 2 s.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
RUNS=${BENCH_RESTART_RUNS:-3}
WORK=$(mktemp -d /tmp/shl-bench.XXXXXX)
ping_pid=""
cleanup() { [ -n "$ping_pid" ] && kill "$ping_pid" 2>/dev/null; lab_down; rm -rf "$WORK"; }
trap 'cleanup; lab_unlock' EXIT
lab_lock
task_pair rs -d overlay --opt encrypted
now() { date +%s.%N; }
# run R: sets RESUME READY (ms) and DOWN (replies while netd was down)
run() {
  timeout 60 "$LAB" exec "$h_a" -- nsenter --net="$ns_a" ping -D -n -i 0.01 -w 10 "$ip_b" > "$WORK/ping.$1" 2>&1 &
  ping_pid=$!
  sleep 2 # the flow's steady state first
  local killed started ready
  "$LAB" kill-netd "$h_b" >/dev/null || die "kill-netd failed"
  killed=$(now)
  sleep 1
  started=$(now)
  "$LAB" start-netd "$h_b" >/dev/null || die "start-netd failed"
  ready=$(now)
  wait "$ping_pid"; ping_pid=""
  read -r RESUME DOWN < <(sed -n 's/^\[\([0-9.]*\)\] .* bytes from .*/\1/p' "$WORK/ping.$1" | awk -v k="$killed" -v s="$started" '
    $1 > k + 0.05 && $1 < s { down++ }
    $1 >= s && !first { first = $1 }
    END { if (!first) exit 1; printf "%.0f %d\n", (first - s) * 1000, down }')
  [ -n "${RESUME:-}" ] || die "run $1: no reply after netd's restart: $(tail -3 "$WORK/ping.$1")"
  READY=$(awk -v a="$started" -v b="$ready" 'BEGIN { printf "%.0f", (b - a) * 1000 }')
  log "run $1: replies again ${RESUME} ms after the restart began (netd answering after ${READY} ms); ${DOWN} replies while down"
}
resumes=() readies=() downs=0
for r in $(seq 1 "$RUNS"); do
  run "$r"
  resumes+=("$RESUME") readies+=("$READY") downs=$((downs + DOWN))
done
echo "$(printf '%s\n' "${resumes[@]}" | stats net_netd_restart ms) down=$downs ready=$(printf '%s\n' "${readies[@]}" | median)"
