#!/usr/bin/env bash
# idle_rss: the daemon's resident memory idle (1-host lab, no swarm, 5 s after ready), then
# with BENCH_IDLE_CONTAINERS (default 100) running containers, and what each container
# costs resident: its shim's RSS and PSS (PSS shares the binary's pages fairly), and the
# daemon's growth per container. The line's median is the idle RSS.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
N=${BENCH_IDLE_CONTAINERS:-100}
lab_with_image bench:idle sleep
pss_kib() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null; }
mib() { awk -v k="$1" 'BEGIN {printf "%.2f", k / 1024}'; }

sleep 5   # idle period after ready (deliberate)
pid=$(daemon_pid 1) || die "no daemon pid"
idle=()
for k in 1 2 3; do
  [ "$k" -gt 1 ] && sleep 1
  idle+=("$(mib "$(rss_kib "$pid")")")
done
log "starting $N containers"
for k in $(seq 1 "$N"); do s run -d --name "idle-$k" bench:idle sleep 100000 >/dev/null || die "container $k failed"; done
sleep 5   # settle (deliberate)
busy=$(rss_kib "$pid")
rss_sum=0 pss_sum=0 n=0
for f in /tmp/shoal-lab/h1/lib/containers/*/started.json; do
  sp=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["shim_pid"])' "$f")
  r=$(rss_kib "$sp"); p=$(pss_kib "$sp")
  [ -n "$r" ] || continue
  rss_sum=$((rss_sum + r)); pss_sum=$((pss_sum + ${p:-0})); n=$((n + 1))
done
[ "$n" -eq "$N" ] || die "found $n running shims, expected $N"
per_rss=$(awk -v s="$rss_sum" -v n="$n" 'BEGIN {printf "%.2f", s / n / 1024}')
per_pss=$(awk -v s="$pss_sum" -v n="$n" 'BEGIN {printf "%.2f", s / n / 1024}')
idle_med=$(printf '%s\n' "${idle[@]}" | median)
growth=$(awk -v b="$busy" -v i="$idle_med" -v n="$n" 'BEGIN {printf "%.3f", (b / 1024 - i) / n}')
log "daemon idle ${idle_med} MiB, with $n containers $(mib "$busy") MiB (+${growth} MiB each); shim RSS ${per_rss} MiB, PSS ${per_pss} MiB each"
for k in $(seq 1 "$N"); do s rm -f "idle-$k" >/dev/null 2>&1; done
line=$(printf '%s\n' "${idle[@]}" | stats idle_rss_mib MiB)
echo "$line with_${n}=$(mib "$busy") daemon_per_container=${growth} shim_rss=${per_rss} shim_pss=${per_pss}"
