# bench/lib.sh — shared helpers for bench/figures/*.sh and bench/peer/*.sh (source it).
#
# Every figure prints exactly one line on stdout:  NAME median=… p90=… n=… unit=…
# and its progress on stderr.

BENCH_DIR=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
LAB=$REPO/deploy/lab
SHARED=${SHOAL_SHARED:-$(cd "$REPO/.." && pwd)/shared}
PEER=$SHARED/peer-swarm
NET=10.98.0

log() { echo "[$(date -u +%T)] $*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }
now_ms() { date +%s%3N; }
# busy_cs: the CPU time all cores have spent busy since boot (user, nice, system, irq, softirq,
# steal; not idle or iowait), in hundredths of a core-second
busy_cs() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }

# need_bench_cmds: the binary under test has `shoal bench` (the load generators are
# built only with `--features bench`), or the figure stops with what to do.
need_bench_cmds() {
  local b=${SHOAL_BIN:-$REPO/target/debug/shoal}
  "$b" bench --help >/dev/null 2>&1 \
    || die "$b has no load generators: build it with \`cargo build --release -p shoal --features bench\` and set SHOAL_BIN"
}

# ---------------------------------------------------------------- statistics
# numbers on stdin, one per line (anything non-numeric is ignored)
_nums() { grep -E '^-?[0-9]+(\.[0-9]+)?$' | sort -g; }
_fmt='function f(x) { return (x == int(x)) ? sprintf("%d", x) : sprintf("%.2f", x) }'
median() { _nums | awk "$_fmt"'{a[NR]=$1} END { if (!NR) { print "NA"; exit } print f(NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2) }'; }
pct() { # pct P: nearest-rank percentile
  _nums | awk -v p="$1" "$_fmt"'{a[NR]=$1} END { if (!NR) { print "NA"; exit } i = int(NR * p / 100); if (i < NR * p / 100) i++; if (i < 1) i = 1; print f(a[i]) }'
}
# stats NAME UNIT: numbers on stdin -> "NAME median=… p90=… n=… unit=UNIT"
stats() {
  local all; all=$(cat)
  printf '%s median=%s p90=%s n=%s unit=%s\n' "$1" \
    "$(median <<< "$all")" "$(pct 90 <<< "$all")" "$(_nums <<< "$all" | wc -l)" "$2"
}

# wait_until DEADLINE_S CMD...: run CMD every 0.1 s until it succeeds; 1 on timeout
wait_until() {
  local end=$(( $(now_ms) + $1 * 1000 )); shift
  while :; do
    "$@" && return 0
    [ "$(now_ms)" -ge "$end" ] && return 1
    sleep 0.1
  done
}

# ---------------------------------------------------------------- our lab
lab() { "$LAB" "$@"; }
# shoal_on I [TIMEOUT_S] -- ARGS...: the CLI on host I, bounded in time
shoal_on() {
  local i=$1 t=10; shift
  if [ "${1:-}" != -- ]; then t=$1; shift; fi
  shift
  timeout "$t" "$LAB" exec "$i" -- shoal "$@"
}
# lab_down: takes our lab down, unless another live process holds the lab lock: then the lab is
# that process's (a figure that waited for the lock and is stopped must not tear it down).
lab_down() {
  local holder; holder=$(tr -d '[:space:]' < "$LAB_LOCK" 2>/dev/null)
  if [ -n "$holder" ] && [ "$holder" != "$$" ] && [ -e "/proc/$holder" ]; then
    log "leaving the lab up: pid $holder holds the lab lock $LAB_LOCK"; return 0
  fi
  "$LAB" down >/dev/null 2>&1 || "$LAB" down >&2 || true
}

# lab_lock [WAIT_S]: takes the lab lock, the one lab tests take (tests/src/lab.rs), so a figure and
# a lab test never share the lab: /tmp/shoal-lab.lock, created exclusively (noclobber is O_EXCL),
# holding this shell's pid. While a live process holds it, waits (WAIT_S, default 1800 s, then
# dies saying who holds it); a lock whose holder is gone (no /proc/PID, or still empty after 5 s)
# is removed and taken. Taking it again in the same shell is a no-op. Call it before `lab up` and
# release it with lab_unlock in the figure's EXIT trap (after lab_down); a lock left by a figure
# that died anyway is stale, and the next taker removes it.
LAB_LOCK=/tmp/shoal-lab.lock
lab_lock() {
  local wait_s=${1:-1800} start holder age
  start=$(now_ms)
  while :; do
    if (set -o noclobber; echo "$$" > "$LAB_LOCK") 2>/dev/null; then return 0; fi
    holder=$(tr -d '[:space:]' < "$LAB_LOCK" 2>/dev/null)
    [ "$holder" = "$$" ] && return 0
    if [ -z "$holder" ]; then
      age=$(( $(date +%s) - $(stat -c %Y "$LAB_LOCK" 2>/dev/null || date +%s) ))
      [ "$age" -gt 5 ] && { rm -f "$LAB_LOCK"; continue; }
    elif [ ! -e "/proc/$holder" ]; then
      log "removing the stale lab lock of pid $holder"; rm -f "$LAB_LOCK"; continue
    fi
    [ $(( $(now_ms) - start )) -ge $(( wait_s * 1000 )) ] \
      && die "pid $holder has held the lab lock $LAB_LOCK for over $wait_s s; remove it if that process is not a lab test or a figure"
    [ -n "${_lab_lock_said:-}" ] || { log "waiting for the lab lock (held by pid $holder)"; _lab_lock_said=1; }
    sleep 0.2
  done
}
# lab_unlock: releases the lab lock if this shell holds it
lab_unlock() { [ "$(tr -d '[:space:]' < "$LAB_LOCK" 2>/dev/null)" = "$$" ] && rm -f "$LAB_LOCK"; return 0; }

# nodes_on I: `node ls --format json` on host I as lines "INDEX ID STATUS MANAGER_STATUS"
# (INDEX from hostname shl-hI, else from addr 10.98.0.I)
nodes_on() {
  shoal_on "$1" 10 -- node ls --format json 2>/dev/null | python3 -c '
import json, re, sys
a = json.load(sys.stdin)
if isinstance(a, dict):
    a = a.get("nodes", [])
for n in a:
    m = re.search(r"shl-h(\d+)$", str(n.get("hostname", ""))) or re.match(r"10\.98\.0\.(\d+)", str(n.get("addr", "")))
    print(m.group(1) if m else "?", n.get("id", "?"), str(n.get("status", "")).lower() or "-",
          str(n.get("manager_status") or "-").lower())'
}

# leader_index [MANAGERS]: index of the leader, asking managers 1..M (default 3) in turn
leader_index() {
  local i l
  for i in $(seq 1 "${1:-3}"); do
    l=$(nodes_on "$i" | awk '$4 == "leader" {print $1; exit}')
    [ -n "$l" ] && { echo "$l"; return 0; }
  done
  return 1
}

# all_ready_via I N: host I lists N nodes, all ready, one of them leader
all_ready_via() {
  nodes_on "$1" | awk -v n="$2" '{c++} $3 == "ready" {r++} $4 == "leader" {l++} END {exit !(c == n && r == n && l == 1)}'
}
all_ready() { # all_ready N [MANAGERS]: via any manager that answers
  local i
  for i in $(seq 1 "${2:-3}"); do all_ready_via "$i" "$1" && return 0; done
  return 1
}

node_id() { # node_id VIA I: id of host I's node
  nodes_on "$1" | awk -v i="$2" '$1 == i {print $2; exit}'
}

daemon_pid() { cat "/tmp/shoal-lab/h$1/daemon.pid"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null; }

# lab_with_image NAME APPLET...: a 1-host lab (no swarm) with a busybox image NAME (those
# applets) imported on it. Sets WORK (a temp dir; it and the lab go at exit). `s ARGS`
# then runs the CLI from the root namespace on that host's socket.
lab_with_image() {
  local name=$1; shift
  command -v busybox >/dev/null || die "busybox-static is needed"
  lab_lock
  [ -e /run/netns/shl-sw ] && { lab_unlock; die "our lab is already up (deploy/lab down first)"; }
  WORK=$(mktemp -d /tmp/shl-bench.XXXXXX)
  trap 'lab_down; rm -rf "$WORK"; lab_unlock' EXIT
  lab up 1 --no-swarm >&2 || die "deploy/lab up failed"
  bench_image "$name" 1 "$@"
}
# Every CLI call is bounded (BENCH_CLI_S, default 60 s): a daemon that stops answering ends the
# figure with a message instead of hanging it.
s() { timeout "${BENCH_CLI_S:-60}" "${SHOAL_BIN:-$REPO/target/debug/shoal}" -H unix:///tmp/shoal-lab/h1/run/shoal/shoal.sock "$@"; }

# ---------------------------------------------------------------- services (5 hosts, 3 managers)
# sI I ARGS...: the CLI against host I's local socket
sI() { local i=$1; shift; timeout "${BENCH_CLI_S:-60}" "${SHOAL_BIN:-$REPO/target/debug/shoal}" -H "unix:///tmp/shoal-lab/h$i/run/shoal/shoal.sock" "$@"; }

# svc_lab: a 5-host swarm (3 managers) with the busybox image bench:svc on every host
svc_lab() {
  command -v busybox >/dev/null || die "busybox-static is needed"
  lab_lock
  [ -e /run/netns/shl-sw ] && { lab_unlock; die "our lab is already up (deploy/lab down first)"; }
  WORK=$(mktemp -d /tmp/shl-bench.XXXXXX)
  trap 'lab_down; rm -rf "$WORK"; lab_unlock' EXIT
  lab up 5 --managers 3 --no-demo >&2 || die "deploy/lab up failed"
  bench_image bench:svc 5 sh sleep
}

# bench_image TAG N APPLET...: a busybox-static image (busybox, links for APPLETs, /etc/passwd)
# built under $WORK and imported as TAG on lab hosts 1..N
bench_image() {
  local tag=$1 n=$2 bb a i; shift 2
  bb=$(command -v busybox) || die "busybox-static is needed"
  mkdir -p "$WORK/rootfs/bin" "$WORK/rootfs/etc"
  cp "$bb" "$WORK/rootfs/bin/busybox"
  for a in "$@"; do ln -sf busybox "$WORK/rootfs/bin/$a"; done
  echo 'root:x:0:0:root:/:/bin/sh' > "$WORK/rootfs/etc/passwd"
  tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" .
  for i in $(seq 1 "$n"); do sI "$i" image import "$WORK/rootfs.tar" "$tag" >/dev/null || die "image import on host $i failed"; done
}

# svc_running SVC [MGR]: running tasks of SVC that are of its current spec (-1 if unknown)
svc_running() { svc_state "$1" "" "${2:-1}" | cut -d' ' -f1; }
# svc_nodes SVC: hostnames of SVC'"'"'s running tasks, one per line
svc_nodes() {
  sI 1 service ps --format json "$1" 2>/dev/null | python3 -c '
import json, sys
for t in json.load(sys.stdin):
    if t["task"]["desired"] == "running" and t["task"]["status"]["state"] == "running":
        print(t["node"])'
}
# svc_tasks SVC: "HOST CONTAINER_ID ADDRESS TASK_ID" of each running task of SVC (HOST: the lab
# host's number; ADDRESS: on its first cluster network, - without one)
svc_tasks() {
  sI 1 service ps --format json "$1" | python3 -c '
import json, sys
for t in json.load(sys.stdin):
    k = t["task"]
    if k["desired"] == "running" and k["status"]["state"] == "running":
        addr = k["networks"][0].get("addr") if k.get("networks") else None
        print(t["node"].removeprefix("shl-h"), k["status"]["container_id"], addr or "-", k["id"])'
}
svc_is() { [ "$(svc_running "$1")" = "$2" ]; }

# task_pair SVC NETWORK CREATE OPTIONS...: a 2-host lab (1 manager; the caller holds the lab lock
# and has WORK), image bench:pair, the cluster network `benchnet` made with the options (e.g. -d
# overlay --opt encrypted) and SVC's two tasks on it, one per host; sets h_a c_a ip_a ns_a (the first task's
# host, container, address, network namespace) and h_b c_b ip_b ns_b.
task_pair() {
  local svc=$1 tasks; shift
  [ -e /run/netns/shl-sw ] && die "our lab is already up (deploy/lab down first)"
  lab up 2 --managers 1 --no-demo >&2 || die "deploy/lab up failed"
  bench_image bench:pair 2 sh sleep
  sI 1 network create "$@" benchnet >/dev/null || die "network create failed"
  sI 1 service create -d --name "$svc" --network benchnet --replicas 2 --replicas-max-per-node 1 \
    --stop-grace-period 1s bench:pair sleep 1000000 >/dev/null || die "service create failed"
  svc_wait "$svc" 2 60 || die "the two tasks did not start"
  tasks=$(svc_tasks "$svc" | sort)
  [ "$(wc -l <<< "$tasks")" = 2 ] || die "expected a task on each host: $tasks"
  read -r h_a c_a ip_a _ <<< "$(sed -n 1p <<< "$tasks")"
  read -r h_b c_b ip_b _ <<< "$(sed -n 2p <<< "$tasks")"
  [ "$h_a" != "$h_b" ] || die "both tasks on host $h_a"
  ns_a=/run/shoal/netns/$c_a ns_b=/run/shoal/netns/$c_b
  log "tasks $ip_a (host $h_a) -> $ip_b (host $h_b) on benchnet $*"
}
# svc_failures SVC: "COUNT ERROR": how many of SVC's tasks failed or were rejected, and the
# newest one's error
svc_failures() { svc_state "$1" | cut -d' ' -f2-; }
# svc_state SVC [ENV] [MGR]: "RUNNING COUNT ERROR" from one `service ps` (on host MGR, default 1):
# how many tasks of SVC's newest spec run (with ENV, e.g. REP=2: of a spec whose env has it; -1 when
# the answer is unreadable), and svc_failures' two fields
svc_state() {
  sI "${3:-1}" service ps --format json "$1" 2>/dev/null | python3 -c '
import json, sys
try:
    a = json.load(sys.stdin)
except Exception:
    print(-1, 0, "-"); sys.exit()
env = sys.argv[1]
v = max([t["task"]["spec_version"] for t in a] or [0])
ok = lambda k: k["spec_version"] == v and (not env or env in (k["spec"].get("env") or []))
run = sum(1 for t in a if t["task"]["desired"] == "running" and t["task"]["status"]["state"] == "running" and ok(t["task"]))
bad = sorted((t["task"]["status"] for t in a if t["task"]["status"]["state"] in ("failed", "rejected")), key=lambda s: s.get("at_ms", 0))
print(run, len(bad), " ".join(str(bad[-1].get("err") or bad[-1].get("message") or "-").split()) if bad else "-")' "${2:-}"
}
# svc_wait SVC N DEADLINE_S [ENV]: until N tasks of SVC's current spec run (with ENV: a spec whose
# env has it; an update's first look may come before its new tasks exist). Fails with the reason on
# stderr at the deadline, or as soon as N of its tasks have failed: then something on the nodes
# is broken (a runtime or cgroup error) and waiting longer would only repeat it. One `service ps`
# a look, every 50 ms: the figures that end here (update100, create100_overlay) see convergence
# within a look's time (~60 ms) rather than the ~0.4 s two looks and a 0.2 s sleep took.
svc_wait() {
  local svc=$1 n=$2 secs=$3 env=${4:-} end run bad err
  end=$(( $(now_ms) + secs * 1000 ))
  while :; do
    read -r run bad err <<< "$(svc_state "$svc" "$env")"
    [ "${run:-}" = "$n" ] && return 0
    if [ "${bad:-0}" -ge "$n" ]; then
      log "$svc: $bad tasks failed or were rejected; the newest: ${err:--}"
      return 1
    fi
    if [ "$(now_ms)" -ge "$end" ]; then
      log "$svc: $run of $n tasks running after $secs s ($bad failed; the newest: ${err:--})"
      return 1
    fi
    sleep 0.05
  done
}
# svc_gone: no task container left on any host
svc_gone() { local i; for i in 1 2 3 4 5; do [ -z "$(sI "$i" ps -aq 2>/dev/null)" ] || return 1; done; }
# svc_create NAME N: creates a replicated sleeper service (detached). Its stop signal is KILL, as the
# peer's services have (PEER_SVC_OPTS): busybox `sleep` as PID 1 ignores SIGTERM, so a stop would
# otherwise wait out the grace period, which the peer's stops never do.
SVC_OPTS=(--stop-signal KILL --stop-grace-period 1s --restart-delay 0s)
svc_create() { sI 1 service create -d --name "$1" --replicas "$2" "${SVC_OPTS[@]}" bench:svc sleep 1000000 >/dev/null; }
# svc_create_follow NAME N: the same, returning once the CLI saw it converge (its watch stream), as
# `docker service create` without -d does on the peer
svc_create_follow() { BENCH_CLI_S=600 sI 1 service create --name "$1" --replicas "$2" "${SVC_OPTS[@]}" bench:svc sleep 1000000 >/dev/null; }

# fig_create N REPS: `service create --replicas N` → N running, REPS times (create100, create500): the
# CLI follows convergence as a user's does (and as the peer's docker CLI does), then one poll confirms
fig_create() {
  local n=$1 reps=$2 rep samples=() busy=() b0
  svc_lab
  for rep in $(seq 1 "$reps"); do
    T0=$(now_ms) b0=$(busy_cs)
    svc_create_follow "c$n-$rep" "$n" || die "service create failed"
    svc_wait "c$n-$rep" "$n" 600 || die "rep $rep: $n tasks not running"   # confirms what the CLI saw
    samples+=("$(( $(now_ms) - T0 ))") busy+=("$(( $(busy_cs) - b0 ))")
    log "rep $rep: ${samples[-1]} ms, the machine's cores busy $(awk -v c="${busy[-1]}" 'BEGIN { printf "%.2f", c / 100 }') s"
    sI 1 service rm "c$n-$rep" >/dev/null
    wait_until 600 svc_gone || die "rep $rep: containers left after rm"
  done
  # The cores' busy time beside the figure: what the create cost, which the wall time hides when
  # the machine is shared (a change's CPU shows here first).
  printf '%s\n' "${samples[@]}" | stats "create${n}_ms" ms | sed "s/\$/ busy_core_s=$(printf '%s\n' "${busy[@]}" | median | awk '{ printf "%.2f", $1 / 100 }')/"
}

# ---------------------------------------------------------------- stacks
# stack_file FILE IMAGE: the stack_deploy figure's Compose file, the same for us and the peer:
# 10 services of 2 sleeper replicas each, on the stack's default overlay network
stack_file() {
  local i
  {
    echo 'version: "3.8"'
    echo 'services:'
    for i in $(seq 1 10); do
      printf '  s%s:\n    image: %s\n    command: ["sleep", "1000000"]\n    stop_signal: KILL\n    stop_grace_period: 1s\n    deploy: {replicas: 2}\n' "$i" "$2"
    done
  } > "$1"
}
# stack_converged STACK: all 10 services of STACK run their 2 tasks (`stack services` counts them)
stack_converged() {
  sI 1 stack services --format json "$1" 2>/dev/null | python3 -c '
import json, sys
try:
    a = json.load(sys.stdin)
except Exception:
    sys.exit(1)
sys.exit(0 if len(a) == 10 and all(e["running"] == e["desired"] == 2 for e in a) else 1)'
}
# fig_stack_deploy REPS: `stack deploy` of the 10-service file → every task running, REPS times
fig_stack_deploy() {
  local reps=$1 rep samples=()
  svc_lab
  stack_file "$WORK/stack.yml" bench:svc
  for rep in $(seq 1 "$reps"); do
    T0=$(now_ms)
    sI 1 stack deploy -c "$WORK/stack.yml" --resolve-image never "st$rep" >/dev/null || die "stack deploy failed"
    T1=$(now_ms)
    wait_until 600 stack_converged "st$rep" || die "rep $rep: the stack did not converge"
    samples+=("$(( $(now_ms) - T0 ))")
    log "rep $rep: ${samples[-1]} ms (the deploy command $(( T1 - T0 )) ms)"
    BENCH_CLI_S=120 sI 1 stack rm "st$rep" >/dev/null || die "rep $rep: stack rm failed"
    wait_until 600 svc_gone || die "rep $rep: containers left after stack rm"
  done
  printf '%s\n' "${samples[@]}" | stats stack_deploy_ms ms
}
