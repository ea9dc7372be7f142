#!/usr/bin/env bash
# manager_rss on the peer: dockerd + containerd VmRSS of an idle 1-manager Docker Swarm
# (swarm.sh up 1 1, 5 s idle, 3 samples 1 s apart).
set -uo pipefail
HERE=$(dirname "$(readlink -f "$0")")
. "$HERE/../lib.sh"
. "$HERE/lib.sh"

peer_check
trap peer_down EXIT
"$PEER/swarm.sh" up 1 1 >&2 || die "swarm.sh up 1 1 failed"
sleep 5   # idle period after ready (deliberate)
samples=()
for k in 1 2 3; do
  [ "$k" -gt 1 ] && sleep 1
  kib=0 parts=""
  for p in $("$PEER/lab.sh" pids 1); do
    comm=$(cat "/proc/$p/comm" 2>/dev/null) || continue
    case $comm in
      dockerd|containerd) r=$(rss_kib "$p"); kib=$((kib + ${r:-0})); parts+=" $comm=${r}KiB" ;;
    esac
  done
  [ "$kib" -gt 0 ] || die "no dockerd/containerd found on pl-h1"
  samples+=("$(awk -v k="$kib" 'BEGIN {printf "%.2f", k / 1024}')")
  log "peer sample $k:$parts"
done
printf '%s\n' "${samples[@]}" | stats manager_rss_mib MiB
