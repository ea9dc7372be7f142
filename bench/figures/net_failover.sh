#!/usr/bin/env bash
# net_failover: how long a VIP keeps sending new connections to a backend whose host crashed,
# counted from the moment the managers declare the host down (issue 13: "from down to no more
# traffic to the dead backend", goal <= 0.5 s).
#
# Lab: 4 hosts, 1 manager (host 1, the leader). Service `be` (3 tasks, one per worker host 2, 3,
# 4; in each task's network namespace a python3 server, started on its host, accepts and closes
# connections with a backlog of 4096, so a live backend never drops one; busybox httpd did, under
# this load) and a client task `cli` on host 1, all on one overlay. In the client
# task's network namespace, BENCH_FAILOVER_THREADS (8) threads (python3) open and close TCP
# connections to be's VIP in a loop, each attempt with a 0.5 s connect timeout, and record its
# start time and whether it connected. Each rep: `deploy/lab kill 4` (SIGKILL to everything on
# the host) at t_kill; the leader declares it down at t_down (the time stamp of its log line
# "marking node down" for shl-h4, so the figure includes writing that status through Raft, the
# views going out, the node handing its view to netd and netd's element batch in the client's
# namespace); the client runs on until 3 s after t_down. The live
# backends accept every connection (a rep with a failed attempt before the kill stops the figure),
# so an attempt that failed (refused or timed out) is one the VIP sent to the dead backend; t_last
# is the start of the last such attempt.
#   failover = t_last - t_down (0 when no attempt after t_down went to the dead backend)
# is the line's sample (ms); down= is the median of t_down - t_kill (liveness, for context),
# and after= the total number of attempts sent to the dead backend after t_down over all reps.
# A rep in which no attempt at all failed after t_kill did not test anything and fails the
# figure. Then host 4 is started again and the next rep waits for its task and three
# answering backends. Knobs: BENCH_FAILOVER_REPS (3), BENCH_FAILOVER_THREADS (8),
# BENCH_FAILOVER_KEEP=DIR keeps each rep's attempts ("START_MS OK" lines after "kill T down T").
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
REPS=${BENCH_FAILOVER_REPS:-3}
THREADS=${BENCH_FAILOVER_THREADS:-8}
PORT=8000
VICTIM=4
command -v busybox >/dev/null || die "busybox-static is needed"
lab_lock
[ -e /run/netns/shl-sw ] && { lab_unlock; die "our lab is already up (deploy/lab down first)"; }
WORK=$(mktemp -d /tmp/shl-bench.XXXXXX)
client_pid=
pids=()   # servers we started
cleanup() {
  [ -n "$client_pid" ] && kill "$client_pid" 2>/dev/null
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  lab_down; rm -rf "$WORK"; lab_unlock
}
trap cleanup EXIT
lab up 4 --managers 1 --no-demo >&2 || die "deploy/lab up failed"
bench_image bench:fo 4 sh sleep

sI 1 network create -d overlay benchfo >/dev/null || die "network create failed"
sI 1 service create -d --name be --network benchfo --replicas 3 --replicas-max-per-node 1 \
  --constraint node.role==worker --stop-grace-period 1s bench:fo sleep 1000000 \
  >/dev/null || die "service create be failed"
sI 1 service create -d --name cli --network benchfo --constraint node.role==manager \
  --stop-grace-period 1s bench:fo sleep 1000000 >/dev/null || die "service create cli failed"
svc_wait cli 1 60 || die "the client did not start"

read -r h_c c_c _ <<< "$(svc_tasks cli)"
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
cat > "$WORK/server.py" <<'EOF'
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(4096)
while True:
    s.accept()[0].close()
EOF
cat > "$WORK/direct.py" <<'EOF'
# direct.py PORT ADDR...: every address accepts a connection on PORT
import socket, sys
for a in sys.argv[2:]:
    socket.create_connection((a, int(sys.argv[1])), timeout=1).close()
EOF
declare -A served   # container id -> 1: its server was started
serve_all() { # a server in each running be task that has none
  local h c a
  while read -r h c a _; do
    [ -z "$c" ] || [ -n "${served[$c]:-}" ] && continue
    timeout 3600 "$LAB" exec "$h" -- nsenter --net="/run/shoal/netns/$c" python3 "$WORK/server.py" "$PORT" \
      >> "$WORK/server.log" 2>&1 &
    pids+=("$!"); served[$c]=1
  done <<< "$(svc_tasks be)"
}
backends_answer() {
  local addrs; addrs=$(svc_tasks be | awk '{print $3}')
  [ "$(wc -w <<< "$addrs")" = 3 ] && svc_tasks be | grep -q "^$VICTIM " \
    && in_client python3 "$WORK/direct.py" "$PORT" $addrs 2>/dev/null \
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
  serve_all
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
  [ -n "${BENCH_FAILOVER_KEEP:-}" ] && mkdir -p "$BENCH_FAILOVER_KEEP" \
    && printf 'kill %s down %s\n' "$t_kill" "$t_down" | cat - "$WORK/attempts.$rep" > "$BENCH_FAILOVER_KEEP/attempts.$rep"
  read -r n_bad_kill t_last n_after n_all n_bad_before <<< "$(awk -v k="$t_kill" -v d="$t_down" '
    $2 == 0 && $1 >= k { bad++; if ($1 > last) last = $1; if ($1 >= d) after++ }
    $2 == 0 && $1 < k { before++ }
    { all++ } END { printf "%.0f %.0f %.0f %.0f %.0f\n", bad, last, after, all, before }' "$WORK/attempts.$rep")"
  [ "$n_bad_before" = 0 ] || die "rep $rep: $n_bad_before attempts failed before the kill: a failure does not tell the dead backend"
  [ "$n_bad_kill" -gt 0 ] || die "rep $rep: no attempt after the kill went to the dead backend ($n_all attempts): nothing measured"
  f=$(( t_last - t_down )); [ "$f" -lt 0 ] && f=0
  samples+=("$f"); downs+=("$(( t_down - t_kill ))"); after_total=$(( after_total + n_after ))
  log "rep $rep: down $(( t_down - t_kill )) ms after the kill; last attempt to the dead backend $(( t_last - t_down )) ms after down; $n_bad_kill of $n_all attempts failed after the kill, $n_after after down"
  lab start "$VICTIM" >&2 || die "rep $rep: deploy/lab start $VICTIM failed"
done
[ ${#samples[@]} = "$REPS" ] || die "$REPS reps, ${#samples[@]} measured"
line=$(printf '%s\n' "${samples[@]}" | stats net_failover ms)
echo "$line down=$(printf '%s\n' "${downs[@]}" | median) after=$after_total"
