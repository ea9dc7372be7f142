#!/usr/bin/env bash
# idle_rss on the peer: dockerd + containerd idle on 1 host (swarm.sh up 1 1), then with
# BENCH_IDLE_CONTAINERS (default 100) `docker run -d busybox:local sleep`, and each
# container's containerd-shim RSS and PSS. The line's median is the idle RSS.
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
. "$HERE/../lib.sh"
. "$HERE/lib.sh"
N=${BENCH_IDLE_CONTAINERS:-100}
pss_kib() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null; }

peer_check
trap peer_down EXIT
"$PEER/swarm.sh" up 1 1 >&2 || die "swarm.sh up 1 1 failed"
engine_kib() {
  local kib=0 p r
  for p in $("$PEER/lab.sh" pids 1); do
    case $(cat "/proc/$p/comm" 2>/dev/null) in
      dockerd|containerd) r=$(rss_kib "$p"); kib=$((kib + ${r:-0})) ;;
    esac
  done
  echo "$kib"
}
sleep 5   # idle period after ready (deliberate)
idle=()
for k in 1 2 3; do
  [ "$k" -gt 1 ] && sleep 1
  idle+=("$(awk -v k="$(engine_kib)" 'BEGIN {printf "%.2f", k / 1024}')")
done
log "starting $N containers on the peer"
for k in $(seq 1 "$N"); do td 60 1 run -d --name "idle-$k" busybox:local sleep 100000 >/dev/null || die "container $k failed"; done
sleep 5   # settle (deliberate)
busy=$(engine_kib)
rss_sum=0 pss_sum=0 n=0
for p in $("$PEER/lab.sh" pids 1); do
  case $(cat "/proc/$p/comm" 2>/dev/null) in
    containerd-shim*) r=$(rss_kib "$p"); q=$(pss_kib "$p"); rss_sum=$((rss_sum + ${r:-0})); pss_sum=$((pss_sum + ${q:-0})); n=$((n + 1)) ;;
  esac
done
idle_med=$(printf '%s\n' "${idle[@]}" | median)
log "peer engine idle ${idle_med} MiB, with $N containers $(awk -v k="$busy" 'BEGIN {printf "%.2f", k / 1024}') MiB; $n shims, RSS $(awk -v s="$rss_sum" -v n="$n" 'BEGIN {printf "%.2f", s / (n ? n : 1) / 1024}') MiB, PSS $(awk -v s="$pss_sum" -v n="$n" 'BEGIN {printf "%.2f", s / (n ? n : 1) / 1024}') MiB each"
printf '%s\n' "${idle[@]}" | stats idle_rss_mib MiB
