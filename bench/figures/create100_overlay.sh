#!/usr/bin/env bash
# create100_overlay: `service create --replicas 100 --network benchov` → all 100 tasks running,
# on a 5-host lab with 3 managers, with the service on an overlay (each task gets an address
# from the managers and joins the overlay's sandbox on its node, plus a docker_gwbridge leg);
# beside it in the same run the same service on the default bridge (create100), the two in
# alternating order, BENCH_CREATE_REPS (default 3) of each. The line's median is the overlay's;
# bridge= the bridge's median, ratio= overlay/bridge (goal <= 1.2).
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
REPS=${BENCH_CREATE_REPS:-3}
svc_lab
sI 1 network create -d overlay benchov >/dev/null || die "network create failed"
# one NAME [ARGS]: a 100-replica sleeper service created and waited for; prints its time in ms
one() {
  local name=$1 t0 ms; shift
  t0=$(now_ms)
  sI 1 service create -d --name "$name" --replicas 100 --stop-grace-period 1s --restart-delay 0s "$@" \
    bench:svc sleep 1000000 >/dev/null || die "service create $name failed"
  svc_wait "$name" 100 600 || die "$name: 100 tasks not running"
  ms=$(( $(now_ms) - t0 ))
  sI 1 service rm "$name" >/dev/null
  wait_until 600 svc_gone || die "$name: containers left after rm"
  echo "$ms"
}
ov=() br=()
for rep in $(seq 1 "$REPS"); do
  order="ov br"; [ $((rep % 2)) = 0 ] && order="br ov"
  for w in $order; do
    if [ "$w" = ov ]; then ov+=("$(one "ov$rep" --network benchov)"); log "rep $rep: overlay ${ov[-1]} ms"
    else br+=("$(one "br$rep")"); log "rep $rep: bridge ${br[-1]} ms"; fi
  done
done
b_med=$(printf '%s\n' "${br[@]}" | median)
line=$(printf '%s\n' "${ov[@]}" | stats create100_overlay ms)
o_med=$(sed -n 's/.* median=\([^ ]*\).*/\1/p' <<< "$line")
echo "$line bridge=$b_med ratio=$(awk -v a="$o_med" -v b="$b_med" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "NA" }')"
