#!/usr/bin/env bash
# net_vip_connrate: new TCP connections per second from a client task to a service's VIP,
# divided by the rate to its tasks' own addresses taken in turn, measured in the same run on a
# 3-host swarm (1 manager): service `be` (3 tasks, one per host) and a client task, all on one
# overlay. A counting server (python3) listens in each backend task's network namespace; the
# client (python3, entered into the client task's namespace) opens and closes connections for
# BENCH_VIP_SECS s (default 3) per run, BENCH_VIP_ROUNDS rounds (default 5), VIP and direct in
# alternating order. The line's median is the VIP's rate; direct= the direct rate's median,
# ratio= VIP/direct (goal >= 0.95), share= the largest deviation of a backend's share of the
# VIP's connections from an even third (goal within 10 %).
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
ROUNDS=${BENCH_VIP_ROUNDS:-5}
SECS=${BENCH_VIP_SECS:-3}
PORT=8000
command -v busybox >/dev/null || die "busybox-static is needed"
WORK=$(mktemp -d /tmp/shl-bench.XXXXXX)
pids=()   # counting servers we started
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; lab_down; rm -rf "$WORK"; }
trap 'cleanup; lab_unlock' EXIT
lab_lock
[ -e /run/netns/shl-sw ] && die "our lab is already up (deploy/lab down first)"
lab up 3 --managers 1 --no-demo >&2 || die "deploy/lab up failed"
bench_image bench:vip 3 sh sleep

sI 1 network create -d overlay benchvip >/dev/null || die "network create failed"
for s in "be 3" "cli 1"; do
  read -r name n <<< "$s"
  sI 1 service create -d --name "$name" --network benchvip --replicas "$n" --replicas-max-per-node 1 \
    --stop-grace-period 1s bench:vip sleep 1000000 >/dev/null || die "service create $name failed"
done
svc_wait be 3 60 || die "the backends did not start"
svc_wait cli 1 60 || die "the client did not start"
backends=$(svc_tasks be)
read -r h_c c_c _ <<< "$(svc_tasks cli)"
vip=$(sI 1 service inspect be | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Endpoint"]["VirtualIPs"][0]["Addr"].split("/")[0])') \
  || die "no VIP for be"
log "client on host $h_c; VIP $vip; backends: $(awk '{print $3 "@h" $1}' <<< "$backends" | tr '\n' ' ')"

# A counting server in each backend's namespace: it writes its count to a file on SIGTERM.
cat > "$WORK/server.py" <<'EOF'
import signal, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(4096)
n = 0
def done(*_):
    open(sys.argv[2], "w").write(str(n)); sys.exit(0)
signal.signal(signal.SIGTERM, done)
while True:
    c, _ = s.accept(); n += 1; c.close()
EOF
cat > "$WORK/client.py" <<'EOF'
import socket, sys, time
addrs, port, secs = sys.argv[1].split(","), int(sys.argv[2]), float(sys.argv[3])
n, end = 0, time.monotonic() + secs
while time.monotonic() < end:
    c = socket.create_connection((addrs[n % len(addrs)], port), timeout=2)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST: no TIME_WAIT pile-up
    c.close(); n += 1
print("%.1f" % (n / secs))
EOF
k=0
while read -r h c a _; do
  k=$((k + 1))
  timeout $((ROUNDS * SECS * 4 + 120)) "$LAB" exec "$h" -- nsenter --net="/run/shoal/netns/$c" \
    python3 "$WORK/server.py" "$PORT" "$WORK/count.$k" >> "$WORK/server.log" 2>&1 &
  pids+=("$!")
done <<< "$backends"
first=$(awk 'NR == 1 {print $3}' <<< "$backends")
# Direct runs take the backends in turn (the same mix of local and remote tasks as the VIP's).
all=$(awk '{print $3}' <<< "$backends" | paste -sd,)
# rate ADDR [SECS]: the client's connections per second to ADDR
rate() { timeout $((SECS + 30)) "$LAB" exec "$h_c" -- nsenter --net="/run/shoal/netns/$c_c" python3 "$WORK/client.py" "$1" "$PORT" "${2:-$SECS}"; }
up() { rate "$first" 0.2 >/dev/null 2>&1; }
wait_until 20 up || die "the backends' servers do not answer"

# The VIP's share per backend: the servers count every connection; the direct runs' are spread
# evenly (in turn), so a third of their total is subtracted from each.
viprates=() direct=() direct_total=0
for r in $(seq 1 "$ROUNDS"); do
  order="vip direct"; [ $((r % 2)) = 0 ] && order="direct vip"
  for w in $order; do
    if [ "$w" = vip ]; then R=$(rate "$vip") || die "VIP run $r failed"; viprates+=("$R")
    else R=$(rate "$all") || die "direct run $r failed"; direct+=("$R"); direct_total=$(awk -v t="$direct_total" -v r="$R" -v s="$SECS" 'BEGIN {printf "%d", t + r * s}'); fi
    log "round $r: $w $R conn/s"
  done
done
for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
wait "${pids[@]}" 2>/dev/null; pids=()
counts=$(for k in 1 2 3; do echo "$(cat "$WORK/count.$k" 2>/dev/null || echo 0)"; done)
share=$(python3 -c '
import sys
c = [int(x) for x in sys.argv[1].split()]
c = [x - int(sys.argv[2]) / 3 for x in c]   # the direct runs went to each in turn
t = sum(c)
print("%.1f%%" % (max(abs(x / t - 1 / 3) for x in c) * 300) if t > 0 else "NA")' "$counts" "$direct_total")
log "connections per backend (with the direct runs'): $(tr '\n' ' ' <<< "$counts")"
d_med=$(printf '%s\n' "${direct[@]}" | median)
line=$(printf '%s\n' "${viprates[@]}" | stats net_vip_connrate conn/s)
v_med=$(sed -n 's/.* median=\([^ ]*\).*/\1/p' <<< "$line")
echo "$line direct=$d_med ratio=$(awk -v a="$v_med" -v b="$d_med" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "NA" }') share=$share"
