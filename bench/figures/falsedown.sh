#!/usr/bin/env bash
# falsedown: nodes declared down while none is (5 hosts, 3 managers, 20 replicas) with both
# CPUs saturated for FALSEDOWN_S seconds (default 600): 2 busy loops per CPU, started here
# and ended by `timeout`. Counted from the managers' logs ("marking node down"); the line
# also says how often a node was suspect (heartbeats late or session lost) and how often its
# probe answers kept it up. Goal: 0.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
DUR=${FALSEDOWN_S:-600}
svc_lab
svc_create fd 20 || die "service create failed"
svc_wait fd 20 600 || die "20 tasks not running"
count() { cat /tmp/shoal-lab/h{1,2,3}/daemon.log 2>/dev/null | grep -c "$1"; }
downs0=$(count "marking node down"); sus0=$(count "node suspect"); kept0=$(count "keeping it up")
hogs=()
for _ in $(seq 1 $(( 2 * $(nproc) ))); do
  timeout "$DUR" sh -c 'while :; do :; done' &
  hogs+=("$!")
done
trap 'kill "${hogs[@]}" 2>/dev/null; lab_down; rm -rf "$WORK"' EXIT
log "saturating $(nproc) CPUs with ${#hogs[@]} busy loops for ${DUR}s"
for p in "${hogs[@]}"; do wait "$p" 2>/dev/null; done
downs=$(( $(count "marking node down") - downs0 ))
sus=$(( $(count "node suspect") - sus0 ))
kept=$(( $(count "keeping it up") - kept0 ))
ready=$(nodes_on 1 | awk '$3 == "ready"' | wc -l)
log "after: $ready of 5 nodes ready; $sus suspicions, $kept kept up by probe answers, $downs declared down"
echo "falsedown median=$downs n=1 unit=count seconds=$DUR suspicions=$sus kept_up=$kept"
