#!/usr/bin/env bash
# run_pull_ms: `shoal run --rm IMAGE true` of a ~5 MB image this host does not have,
# pulled from a registry (Debian's docker-registry, plain HTTP on the host's loopback),
# to exit; beside it, in the same run, `shoal pull` of the same image alone, so that what
# `run` adds on top of its pull shows (`run_overhead`). The image is removed before every
# try. 1-host lab, no swarm. BENCH_RUN_PULL_REPS (default 10).
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
REPS=${BENCH_RUN_PULL_REPS:-10}
REG=/usr/bin/docker-registry
[ -x "$REG" ] || die "docker-registry is needed (deploy/prereqs installs it)"
lab_with_image bench:pull sh true
work=$WORK
# ~5 MB: busybox plus 3 MB that gzip cannot shrink
mkdir -p "$work/big/bin" "$work/big/data"
cp "$work/rootfs/bin/busybox" "$work/big/bin/busybox"
ln -s busybox "$work/big/bin/true"; ln -s busybox "$work/big/bin/sh"
head -c 3145728 /dev/urandom > "$work/big/data/blob"
tar -C "$work/big" -cf "$work/big.tar" .
mkdir -p "$work/registry"
cat > "$work/registry.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:5000
YML
"$LAB" exec 1 -- "$REG" serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
regpid=$!
trap 'kill "$regpid" 2>/dev/null; lab_down; rm -rf "$work"' EXIT
image=127.0.0.1:5000/bench/pull:v1
wait_until 20 s image import "$work/big.tar" "$image" >/dev/null || die "image import failed"
wait_until 20 s push "$image" >/dev/null 2>&1 || die "push to the lab registry failed: $(tail -n 5 "$work/registry.log")"
id=$(s image inspect "$image" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Id"])')
log "image $image: $(du -k "$work/big.tar" | cut -f1) KiB uncompressed"

cli=("${SHOAL_BIN:-$REPO/target/debug/shoal}" -H unix:///tmp/shoal-lab/h1/run/shoal/shoal.sock)
ms() { local t0 t1; t0=$(date +%s%N); timeout 60 "${cli[@]}" "$@" >/dev/null 2>&1 || return 1; t1=$(date +%s%N); awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f\n", (b - a) / 1e6}'; }
gone() { s image rm -f "$id" >/dev/null 2>&1; ! s image inspect "$image" >/dev/null 2>&1; }
runs=() pulls=()
for k in $(seq 1 "$REPS"); do
  gone || die "could not remove $image"
  runs+=("$(ms run --rm "$image" true || echo fail)")
  gone || die "could not remove $image"
  pulls+=("$(ms pull "$image" || echo fail)")
done
printf '%s\n' "${runs[@]}" "${pulls[@]}" | grep -q fail && die "a run or pull failed: runs ${runs[*]}; pulls ${pulls[*]}"
pull_med=$(printf '%s\n' "${pulls[@]}" | median)
line=$(printf '%s\n' "${runs[@]}" | stats run_pull_ms ms)
run_med=$(sed -n 's/.* median=\([^ ]*\).*/\1/p' <<< "$line")
over=$(awk -v a="$run_med" -v b="$pull_med" 'BEGIN { printf "%.1f", a - b }')
echo "$line pull=${pull_med} run_overhead=${over}"
