#!/usr/bin/env bash
# run_true_ms: `shoal run --rm busybox true`, start to exit through the CLI and the
# daemon (1-host lab, no swarm; the CLI in the root namespace on the host's socket), on the
# default bridge; `none=` is the median of the same with `--network none`, in the same loop.
# Beside it, in the same run and on the same machine: an OCI runtime (crun if installed,
# else runc) running the same container's bundle with `true`, and the raw floor: `unshare`
# with the same namespaces + chroot into the same root. BENCH_RUN_TRUE_REPS (default 30).
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
REPS=${BENCH_RUN_TRUE_REPS:-30}
lab_with_image bench:true sh true sleep
work=$WORK
s run --rm bench:true true || die "a first run failed"   # warm caches
s run --rm --network none bench:true true || die "a first run without a network failed"

ms() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null 2>&1 || return 1; t1=$(date +%s%N); awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f\n", (b - a) / 1e6}'; }
ours=() none=() runtime=() floor=()
# The runtime's bundle: the container's own config (without a network: a bridge container's
# config names its netns under the lab host's /run, which the runtime here cannot see; its bind
# mounts' sources rewritten the same way), run with `true` on a copy of its root.
s run -d --network none --name bench-ref bench:true sh -c 'sleep 1000' >/dev/null || die "reference container failed"
id=$(s inspect bench-ref | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["record"]["id"])')
cdir=/tmp/shoal-lab/h1/lib/containers/$id
mkdir -p "$work/bundle"
python3 - "$cdir/bundle/config.json" "$work/bundle/config.json" "$work/rootfs" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
# Its bind mounts' sources as this namespace sees them (the lab host's /var/lib/shoal).
for m in c.get("mounts", []):
    if m.get("source", "").startswith("/var/lib/shoal/"):
        m["source"] = "/tmp/shoal-lab/h1/lib/" + m["source"][len("/var/lib/shoal/"):]
c["process"]["args"] = ["/bin/true"]
c["root"] = {"path": sys.argv[3], "readonly": True}
c["linux"]["cgroupsPath"] = "/shl-bench-runtime"
c["hostname"] = "bench"
json.dump(c, open(sys.argv[2], "w"))
PY
rt=$(command -v crun || command -v runc || true)
for k in $(seq 1 "$REPS"); do
  ours+=("$(ms s run --rm bench:true true)")
  none+=("$(ms s run --rm --network none bench:true true)")
  [ -n "$rt" ] && runtime+=("$(ms "$rt" --root "$work/rt-state" run --bundle "$work/bundle" "bench-$k")")
  floor+=("$(ms unshare -m -u -i -n -p -f chroot "$work/rootfs" /bin/true)")
done
s rm -f bench-ref >/dev/null
rmdir /sys/fs/cgroup/*/shl-bench-runtime /sys/fs/cgroup/shl-bench-runtime 2>/dev/null || true
rt_med=$(printf '%s\n' "${runtime[@]}" | median); fl_med=$(printf '%s\n' "${floor[@]}" | median)
none_med=$(printf '%s\n' "${none[@]}" | median)
log "runtime $(basename "${rt:-none}"): median ${rt_med} ms; floor (unshare+chroot): median ${fl_med} ms"
line=$(printf '%s\n' "${ours[@]}" | stats run_true_ms ms)
our_med=$(sed -n 's/.* median=\([^ ]*\).*/\1/p' <<< "$line")
ratio=$(awk -v a="$our_med" -v b="$fl_med" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "NA" }')
echo "$line none=${none_med} $(basename "${rt:-runtime}")=${rt_med} floor=${fl_med} ratio_floor=${ratio}"
