#!/usr/bin/env bash
# net_failover: how long a VIP keeps sending new connections to a backend whose host crashed,
# counted from the moment the managers declare the host down (issue 13: "from down to no more
# traffic to the dead backend", goal <= 0.5 s).
#
# Lab: 4 hosts, 1 manager (host 1, the leader). Service `be` (busybox httpd, 3 tasks, one per
# worker host 2, 3, 4) and a client task `cli` on host 1, all on one overlay. In the client
# task's network namespace, BENCH_FAILOVER_THREADS (8) threads (python3) open and close TCP
# connections to be's VIP in a loop, each attempt with a 0.5 s connect timeout, and record its
# start time and whether it connected. Each rep: `deploy/lab kill 4` (SIGKILL to everything on
# the host) at t_kill; the leader declares it down at t_down (the time stamp of its log line
# "marking node down" for shl-h4); the client runs on until 3 s after t_down. The live
# backends accept every connection, so an attempt that failed (refused by the dead task's
# namespace or timed out) is one the VIP sent to the dead backend; t_last is the start of the
# last such attempt.
#   failover = t_last - t_down (0 when no attempt after t_down went to the dead backend)
# is the line's sample (ms); down= is the median of t_down - t_kill (liveness, for context),
# and after= the total number of attempts sent to the dead backend after t_down over all reps.
# A rep in which no attempt at all failed after t_kill did not test anything and fails the
# figure. Then host 4 is started again and the next rep waits for its task and three
# answering backends. Knobs: BENCH_FAILOVER_REPS (3), BENCH_FAILOVER_THREADS (8).
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
REPS=${BENCH_FAILOVER_REPS:-3}
THREADS=${BENCH_FAILOVER_THREADS:-8}
PORT=80
VICTIM=4
bb=$(command -v busybox) || die "busybox-static is needed"
WORK=$(mktemp -d /tmp/shl-bench.XXXXXX)
client_pid=
cleanup() { [ -n "$client_pid" ] && kill "$client_pid" 2>/dev/null; lab_down; rm -rf "$WORK"; lab_unlock; }
trap cleanup EXIT
lab_lock
[ -e /run/netns/shl-sw ] && die "our lab is already up (deploy/lab down first)"
lab up 4 --managers 1 --no-demo >&2 || die "deploy/lab up failed"
mkdir -p "$WORK/rootfs/bin" "$WORK/rootfs/etc"
cp "$bb" "$WORK/rootfs/bin/busybox"
for a in sh sleep mkdir httpd; do ln -s busybox "$WORK/rootfs/bin/$a"; done
echo 'root:x:0:0:root:/:/bin/sh' > "$WORK/rootfs/etc/passwd"
tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" .
for i in 1 2 3 4; do sI "$i" image import "$WORK/rootfs.tar" bench:fo >/dev/null || die "image import on host $i failed"; done

sI 1 network create -d overlay benchfo >/dev/null || die "network create failed"
sI 1 service create -d --name be --network benchfo --replicas 3 --replicas-max-per-node 1 \
  --constraint node.role==worker --stop-grace-period 1s bench:fo sh -c 'mkdir -p /www && exec httpd -f -p 80 -h /www' \
  >/dev/null || die "service create be failed"
sI 1 service create -d --name cli --network benchfo --constraint node.role==manager \
  --stop-grace-period 1s bench:fo sleep 1000000 >/dev/null || die "service create cli failed"
svc_wait cli 1 60 || die "the client did not start"

# "HOST CONTAINER_ID ADDRESS" of each running task of SERVICE
tasks_of() {
  sI 1 service ps --format json "$1" | python3 -c '
import json, sys
for t in json.load(sys.stdin):
    k = t["task"]
    if k["desired"] == "running" and k["status"]["state"] == "running":
        print(t["node"].removeprefix("shl-h"), k["status"]["container_id"], k["networks"][0]["addr"])'
}
read -r h_c c_c _ <<< "$(tasks_of cli)"
vip=$(sI 1 service inspect be | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Endpoint"]["VirtualIPs"][0]["Addr"].split("/")[0])') \
  || die "no VIP for be"
in_client() { "$LAB" exec "$h_c" -- nsenter --net="/run/shoal/netns/$c_c" "$@"; }

cat > "$WORK/client.py" <<'EOF'
# client.py ADDR PORT THREADS STOPFILE: connection attempts until STOPFILE exists (at most
# 120 s); prints "START_MS OK" per attempt. Touches STOPFILE.started once looping.
import os, socket, sys, threading, time
addr, port, threads, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
end = time.time() + 120
recs = []
def loop():
    while time.time() < end and not os.path.exists(stop):
        t0 = time.time()
        try:
            c = socket.create_connection((addr, port), timeout=0.5)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST: no TIME_WAIT
            c.close(); ok = 1
        except OSError:
            ok = 0
        recs.append((t0, ok))
ts = [threading.Thread(target=loop) for _ in range(threads)]
for t in ts: t.start()
open(stop + ".started", "w").close()
for t in ts: t.join()
for t0, ok in recs: print("%d %d" % (t0 * 1000, ok))
EOF
cat > "$WORK/direct.py" <<'EOF'
# direct.py ADDR...: every address accepts a connection on port 80
import socket, sys
for a in sys.argv[1:]:
    socket.create_connection((a, 80), timeout=1).close()
EOF
backends_answer() {
  local addrs; addrs=$(tasks_of be | awk '{print $3}')
  [ "$(wc -w <<< "$addrs")" = 3 ] && tasks_of be | grep -q "^$VICTIM " \
    && in_client python3 "$WORK/direct.py" $addrs 2>/dev/null \
    && in_client python3 -c "import socket; [socket.create_connection(('$vip', $PORT), timeout=1).close() for _ in range(30)]" 2>/dev/null
}
# down_ms SINCE_BYTE: epoch ms of the leader's "marking node down" line for the victim
down_ms() {
  tail -c +"$(( $1 + 1 ))" /tmp/shoal-lab/h1/daemon.log | sed 's/\x1b\[[0-9;]*m//g' \
    | grep -m1 "marking node down.*hostname=shl-h$VICTIM" | awk '{print $1}' \
    | python3 -c 'import sys, datetime; l = sys.stdin.read().strip(); l and print(int(datetime.datetime.fromisoformat(l.replace("Z", "+00:00")).timestamp() * 1000))'
}
down_seen() { [ -n "$(down_ms "$1")" ]; }
past() { [ "$(now_ms)" -ge "$1" ]; }

samples=() downs=() after_total=0
for rep in $(seq 1 "$REPS"); do
  svc_wait be 3 120 || die "rep $rep: be's 3 tasks not running"
  wait_until 60 backends_answer || die "rep $rep: be's tasks do not all answer the client (one on host $VICTIM)"
  stop=$WORK/stop.$rep
  in_client python3 "$WORK/client.py" "$vip" "$PORT" "$THREADS" "$stop" > "$WORK/attempts.$rep" 2>"$WORK/client.$rep.err" &
  client_pid=$!
  wait_until 20 test -e "$stop.started" || die "rep $rep: the client did not start: $(cat "$WORK/client.$rep.err")"
  sleep 1   # a second of attempts before the kill, to see the dead backend was in use
  logsz=$(stat -c %s /tmp/shoal-lab/h1/daemon.log)
  t_kill=$(now_ms)
  lab kill "$VICTIM" >&2 || die "rep $rep: deploy/lab kill $VICTIM failed"
  wait_until 60 down_seen "$logsz" || die "rep $rep: shl-h$VICTIM not marked down within 60 s"
  t_down=$(down_ms "$logsz")
  wait_until 10 past $(( t_down + 3000 ))
  touch "$stop"
  wait "$client_pid"; client_pid=
  read -r n_bad_kill t_last n_after n_all <<< "$(awk -v k="$t_kill" -v d="$t_down" '
    $2 == 0 && $1 >= k { bad++; if ($1 > last) last = $1; if ($1 >= d) after++ }
    { all++ } END { print bad + 0, last + 0, after + 0, all + 0 }' "$WORK/attempts.$rep")"
  [ "$n_bad_kill" -gt 0 ] || die "rep $rep: no attempt after the kill went to the dead backend ($n_all attempts): nothing measured"
  f=$(( t_last - t_down )); [ "$f" -lt 0 ] && f=0
  samples+=("$f"); downs+=("$(( t_down - t_kill ))"); after_total=$(( after_total + n_after ))
  log "rep $rep: down $(( t_down - t_kill )) ms after the kill; last attempt to the dead backend $(( t_last - t_down )) ms after down; $n_bad_kill of $n_all attempts failed after the kill, $n_after after down"
  lab start "$VICTIM" >&2 || die "rep $rep: deploy/lab start $VICTIM failed"
done
line=$(printf '%s\n' "${samples[@]}" | stats net_failover ms)
echo "$line down=$(printf '%s\n' "${downs[@]}" | median) after=$after_total"
