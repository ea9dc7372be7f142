#!/usr/bin/env bash
# manager_rss: resident memory of an idle single-manager swarm's daemon.
# 1-host lab, swarm init (deploy/lab waits until the node is ready), 5 s idle, then 3
# samples of the daemon pid's VmRSS, 1 s apart. netd's RSS goes to stderr only. (The peer
# figure counts dockerd + containerd.) The daemon's RssAnon and RssFile go to stderr too.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"

trap 'lab_down; lab_unlock' EXIT
lab_lock
[ -e /run/netns/shl-sw ] && die "our lab is already up (deploy/lab down first)"
# The binary's pages already in the page cache are mapped around each fault (fault-around), so
# a binary run much just before (by another figure) shows megabytes more of RssFile: start from
# none of its pages cached, so that two builds compare alike.
bin=${SHOAL_BIN:-$REPO/target/debug/shoal}
python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fdatasync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$bin" \
  || die "cannot drop $bin from the page cache"
lab up 1 --managers 1 --no-demo >&2 || die "deploy/lab up failed"
sleep 5   # idle period after ready (deliberate)
pid=$(daemon_pid 1) || die "no daemon pid"
npid=$(cat /tmp/shoal-lab/h1/netd.pid 2>/dev/null)
samples=()
for k in 1 2 3; do
  [ "$k" -gt 1 ] && sleep 1
  kib=$(rss_kib "$pid"); [ -n "$kib" ] || die "daemon (pid $pid) is gone"
  samples+=("$(awk -v k="$kib" 'BEGIN {printf "%.2f", k / 1024}')")
  log "sample $k: daemon VmRSS ${kib} KiB ($(grep -E '^Rss(Anon|File)' /proc/"$pid"/status | tr -s ' \t\n' ' ')), netd VmRSS $(rss_kib "$npid") KiB"
done
printf '%s\n' "${samples[@]}" | stats manager_rss_mib MiB
