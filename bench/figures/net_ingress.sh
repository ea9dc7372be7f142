#!/usr/bin/env bash
# net_ingress: HTTP requests per second and their p50/p99 latency from the lab's switch (shl-sw,
# 10.98.0.254: a client outside the cluster) to a port published through the routing mesh, on a
# 2-host swarm (1 manager) with one backend task on host 1: via host 1 (local=: the host has the
# backend) and via host 2 (the line's median: the host has none and forwards over the ingress
# overlay), beside the same task's host-mode port on host 1 (host=: the direct path, the
# baseline), and the percentage of the mesh's requests whose server saw the switch's own address
# (client_ip=, goal 100 %). The server is busybox httpd with a CGI that prints REMOTE_ADDR (as in
# tests/tests/lab_overlay.rs); the client is python3 in the switch's namespace, BENCH_INGRESS_CONC
# connections at a time (default 4; httpd closes each, so every request is a new connection), for
# BENCH_INGRESS_SECS s (default 3) per path, BENCH_INGRESS_ROUNDS rounds (default 5), the three
# paths in rotating order. The peer Docker Swarm's mesh cannot run on this kernel (no IPVS), so
# there is no peer figure. Takes the lab lock (lab_lock) like the lab tests.
set -uo pipefail
. "$(dirname "$(readlink -f "$0")")/../lib.sh"
ROUNDS=${BENCH_INGRESS_ROUNDS:-5}
SECS=${BENCH_INGRESS_SECS:-3}
CONC=${BENCH_INGRESS_CONC:-4}
command -v busybox >/dev/null || die "busybox-static is needed"
WORK=$(mktemp -d /tmp/shl-bench.XXXXXX)
cleanup() { lab_down; rm -rf "$WORK"; lab_unlock; }
trap cleanup EXIT
lab_lock
[ -e /run/netns/shl-sw ] && die "our lab is already up (deploy/lab down first)"
lab up 2 --managers 1 --no-demo >&2 || die "deploy/lab up failed"
bench_image bench:ing 2 sh httpd mkdir chmod sleep
WHOAMI='mkdir -p /www/cgi-bin && printf "#!/bin/sh\necho Content-Type: text/plain\necho\necho \$REMOTE_ADDR\n" > /www/cgi-bin/ip && chmod +x /www/cgi-bin/ip && exec httpd -f -p 80 -h /www'
sI 1 service create -d --name who --replicas 1 --constraint node.hostname==shl-h1 \
  -p 8080:80 -p published=8081,target=80,mode=host --stop-grace-period 1s \
  bench:ing sh -c "$WHOAMI" >/dev/null || die "service create failed"
svc_wait who 1 60 || die "the backend did not start"

cat > "$WORK/client.py" <<'PY'
import json, socket, sys, threading, time
host, port, secs, conc = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
# source ports of this run's own (LO:HI), so paths never reuse each other's 4-tuples at the backend
lo, hi = (int(x) for x in sys.argv[5].split(":"))
req = b"GET /cgi-bin/ip HTTP/1.0\r\nHost: x\r\n\r\n"
def counters():
    # TCP retransmissions and tail loss probes of this namespace
    c = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        rows = [l.split() for l in open(path)]
        for h, v in zip(rows[::2], rows[1::2]):
            c.update({h[0] + k: int(x) for k, x in zip(h[1:], v[1:]) if x.lstrip("-").isdigit()})
    return c.get("Tcp:RetransSegs", 0), c.get("TcpExt:TCPLossProbes", 0)
before = counters()
lat, seen, errors = [], {}, [0]
lock = threading.Lock()
end = time.monotonic() + secs
def worker(k):
    l, s, e = [], {}, 0
    sport = lo + k
    while time.monotonic() < end:
        sport = sport + conc if sport + conc <= hi else lo + k
        t = time.monotonic()
        try:
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            c.settimeout(5)
            try:
                c.bind(("0.0.0.0", sport))
            except OSError:
                c.close()
                continue
            c.connect((host, port))
            c.sendall(req)
            buf = b""
            while True:
                d = c.recv(4096)
                if not d:
                    break
                buf += d
            c.close()
        except OSError:
            e += 1
            continue
        l.append(time.monotonic() - t)
        # the CGI's last line (busybox httpd passes its headers through as they are)
        body = (buf.decode(errors="replace").strip().splitlines() or [""])[-1].strip()
        addr = body.strip("[]").removeprefix("::ffff:")
        s[addr] = s.get(addr, 0) + 1
    with lock:
        lat.extend(l); errors[0] += e
        for k, v in s.items():
            seen[k] = seen.get(k, 0) + v
ts = [threading.Thread(target=worker, args=(k,)) for k in range(conc)]
for t in ts: t.start()
for t in ts: t.join()
lat.sort()
pct = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))] * 1000 if lat else 0
after = counters()
print(json.dumps({"rps": len(lat) / secs, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "seen": seen, "errors": errors[0],
                  "requests": len(lat), "retrans": after[0] - before[0], "probes": after[1] - before[1]}))
PY
# srv_tcp: "RETRANS PROBES" of the backend task's namespace (the server's side)
read -r bh bc _ <<< "$(svc_tasks who)"
srv_tcp() {
  timeout 10 "$LAB" exec "$bh" -- nsenter --net="/run/shoal/netns/$bc" sh -c 'cat /proc/net/snmp /proc/net/netstat' | python3 -c '
import sys
rows = [l.split() for l in sys.stdin]
c = {}
for h, v in zip(rows[::2], rows[1::2]):
    c.update({h[0] + k: x for k, x in zip(h[1:], v[1:])})
print(c.get("Tcp:RetransSegs", 0), c.get("TcpExt:TCPLossProbes", 0))'
}
# run ADDR PORT [SECS]: one client run from the switch (JSON)
# Each path has source ports of its own: the backend sees the switch's address through every
# path, and a SYN that reuses a 4-tuple still in TIME_WAIT from another path (whose TCP
# timestamps have another offset: the client's offset goes with the address it dialled) is
# refused by PAWS and retried (TcpExtPAWSTimewait in the task): a cost of keeping the client's
# address when one client reaches a backend through several hosts, not of a path itself.
declare -A ports=([local]=20000:29999 [remote]=30000:39999 [host]=40000:49999)
run() { timeout $((SECS + 60)) "$LAB" sw -- python3 "$WORK/client.py" "$1" "$2" "${3:-$SECS}" "$CONC" "${ports[$4]}"; }
answers() { run "$1" "$2" 0.3 "$3" | python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)["rps"] == 0)'; }
declare -A addr=([local]=10.98.0.1 [remote]=10.98.0.2 [host]=10.98.0.1) port=([local]=8080 [remote]=8080 [host]=8081)
for p in local remote host; do
  wait_until 60 answers "${addr[$p]}" "${port[$p]}" "$p" || die "$p path (${addr[$p]}:${port[$p]}) does not answer"
done
log "backend on host 1; mesh via host 1 (local) and host 2 (remote), host-mode port 8081 on host 1"
: > "$WORK/results"
orders=("local remote host" "remote host local" "host local remote")
for r in $(seq 1 "$ROUNDS"); do
  for p in ${orders[$(( (r - 1) % 3 ))]}; do
    read -r s0 q0 <<< "$(srv_tcp)"
    out=$(run "${addr[$p]}" "${port[$p]}" "$SECS" "$p") || die "round $r: the $p run failed"
    read -r s1 q1 <<< "$(srv_tcp)"
    echo "$p $out" >> "$WORK/results"
    log "round $r: $p $(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("%.0f req/s p50 %.2f ms p99 %.2f ms seen %s errors %d; retransmitted segments: client %d (%d loss probes), server %d (%d loss probes) for %d requests" % (d["rps"], d["p50_ms"], d["p99_ms"], d["seen"], d["errors"], d["retrans"], d["probes"], int(sys.argv[2]), int(sys.argv[3]), d["requests"]))' "$out" $((s1 - s0)) $((q1 - q0)))"
  done
done
python3 - "$WORK/results" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    p, j = line.split(" ", 1)
    runs.setdefault(p, []).append(json.loads(j))
med = lambda p, k: statistics.median(r[k] for r in runs[p])
rem = sorted(r["rps"] for r in runs["remote"])
p90 = rem[min(len(rem) - 1, -(-len(rem) * 9 // 10) - 1)]
seen = {}
for p in ("local", "remote"):
    for r in runs[p]:
        for k, v in r["seen"].items():
            seen[k] = seen.get(k, 0) + v
total = sum(seen.values())
real = 100.0 * seen.get("10.98.0.254", 0) / total if total else 0.0
errs = sum(r["errors"] for rs in runs.values() for r in rs)
h = med("host", "rps")
print("net_ingress median=%.0f p90=%.0f n=%d unit=req/s p50=%.2fms p99=%.2fms local=%.0f local_p50=%.2fms local_p99=%.2fms "
      "host=%.0f host_p50=%.2fms host_p99=%.2fms ratio=%.2f local_ratio=%.2f client_ip=%.1f%% errors=%d" % (
      med("remote", "rps"), p90, len(rem), med("remote", "p50_ms"), med("remote", "p99_ms"), med("local", "rps"),
      med("local", "p50_ms"), med("local", "p99_ms"), h, med("host", "p50_ms"), med("host", "p99_ms"),
      med("remote", "rps") / h if h else 0, med("local", "rps") / h if h else 0, real, errs))
if real < 100:
    print("addresses the server saw through the mesh: %s" % seen, file=sys.stderr)
PY
