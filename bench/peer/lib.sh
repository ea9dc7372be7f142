# bench/peer/lib.sh — helpers for the peer Docker Swarm figures (source after ../lib.sh).
# Uses shared/peer-swarm/{lab.sh,swarm.sh}: pl-* names, state in /tmp/pl, 10.99.0.0/24.

PL_ROOT=${PL_ROOT:-/tmp/pl}
export DOCKER_CLI_HINTS=false

# The peer needs Debian's docker.io, busybox-static and iperf3. swarm.sh would apt-get
# install whatever is missing; we never install anything: say what is missing and stop.
peer_check() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v docker >/dev/null || missing+=(docker-cli)
  { [ -x /usr/bin/busybox ] && /usr/bin/busybox --list >/dev/null 2>&1; } || missing+=(busybox-static)
  command -v iperf3 >/dev/null || missing+=(iperf3)
  if [ ${#missing[@]} -gt 0 ]; then  # exit 3 = "peer unavailable" for bench/run
    echo "bench: peer Docker Swarm not available: missing ${missing[*]} (install them first, e.g. apt-get install ${missing[*]}; this script does not)" >&2
    exit 3
  fi
  [ -x "$PEER/swarm.sh" ] && [ -x "$PEER/lab.sh" ] || die "no peer scripts in $PEER"
  [ -e /run/netns/pl-sw ] && die "the peer lab (pl-sw) is already up; not touching it"
  return 0
}
peer_down() {
  "$PEER/swarm.sh" down >/dev/null 2>&1 || true
  "$PEER/lab.sh" down >/dev/null 2>&1 || "$PEER/lab.sh" down >&2 || true
}
d() { local i=$1; shift; docker -H "unix://$PL_ROOT/h$i/docker.sock" "$@"; }
td() { local t=$1 i=$2; shift 2; timeout "$t" docker -H "unix://$PL_ROOT/h$i/docker.sock" "$@"; }

peer_leader() { # index of the swarm leader, via any of managers 1..3
  local i l
  for i in 1 2 3; do
    l=$(td 5 "$i" node ls --format '{{.Hostname}} {{.ManagerStatus}}' 2>/dev/null | awk '$2 == "Leader" {print $1; exit}')
    [ -n "$l" ] && { echo "${l#pl-h}"; return 0; }
  done
  return 1
}
peer_all_ready() { # N nodes Ready, exactly one Leader, no Unreachable manager (via any manager)
  local i
  for i in 1 2 3; do
    td 5 "$i" node ls --format '{{.Status}} {{.ManagerStatus}}' 2>/dev/null |
      awk -v n="$1" '{c++} $1 == "Ready" {r++} $2 == "Leader" {l++} $2 == "Unreachable" {u++}
                     END {exit !(c == n && r == n && l == 1 && !u)}' && return 0
  done
  return 1
}

# ---------------------------------------------------------------- services on the peer
PEER_SVC_OPTS=(--detach --no-resolve-image --stop-signal KILL)
peer_svc_lab() { # 5 hosts, 3 managers, busybox:local on every host
  peer_check
  trap peer_down EXIT
  "$PEER/swarm.sh" up 5 3 >&2 || die "swarm.sh up 5 3 failed"
  wait_until 120 peer_all_ready 5 || die "the peer swarm is not ready"
}
# peer_running SVC: tasks running as `service ls` counts them
peer_running() {
  td 10 1 service ls --filter "name=$1" --format '{{.Name}} {{.Replicas}}' 2>/dev/null |
    awk -v s="$1" '$1==s {split($2,a,"/"); print a[1]+0; f=1} END{if(!f) print -1}'
}
peer_is() { [ "$(peer_running "$1")" = "$2" ]; }
# peer_updated SVC ENV N: N running tasks carry ENV
peer_updated() {
  [ "$(td 20 1 service ps --filter desired-state=running --format '{{.ID}} {{.CurrentState}}' "$1" 2>/dev/null | grep -c ' Running')" -ge "$3" ] &&
  [ "$(td 20 1 service inspect -f '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' "$1" 2>/dev/null)" != updating ] &&
  [ "$(td 20 1 service ps --filter desired-state=running -q "$1" 2>/dev/null | wc -l)" -eq "$3" ]
}
peer_gone() { local i; for i in 1 2 3 4 5; do [ -z "$(td 10 "$i" ps -q 2>/dev/null)" ] || return 1; done; }
# peer_fig_create N REPS: the same on the peer
peer_fig_create() {
  local n=$1 reps=$2 rep samples=()
  peer_svc_lab
  for rep in $(seq 1 "$reps"); do
    T0=$(now_ms)
    d 1 service create "${PEER_SVC_OPTS[@]}" --name "c$n-$rep" --replicas "$n" busybox:local sleep 1000000 >/dev/null || die "create failed"
    wait_until 900 peer_is "c$n-$rep" "$n" || die "rep $rep: not running in time"
    samples+=("$(( $(now_ms) - T0 ))")
    log "peer rep $rep: ${samples[-1]} ms"
    d 1 service rm "c$n-$rep" >/dev/null
    wait_until 300 peer_gone || true
  done
  printf '%s\n' "${samples[@]}" | stats "create${n}_ms" ms
}

# peer_stack_converged STACK: all 10 services of STACK run 2/2 (`service ls` counts them)
peer_stack_converged() {
  [ "$(td 10 1 service ls --filter "label=com.docker.stack.namespace=$1" --format '{{.Replicas}}' 2>/dev/null |
    grep -c '^2/2')" = 10 ]
}
# peer_fig_stack_deploy REPS: `docker stack deploy` of the 10-service file → every task running
peer_fig_stack_deploy() {
  local reps=$1 rep samples=()
  peer_svc_lab
  PEER_WORK=$(mktemp -d /tmp/pl-bench.XXXXXX)
  trap 'peer_down; rm -rf "$PEER_WORK"' EXIT
  stack_file "$PEER_WORK/stack.yml" busybox:local
  for rep in $(seq 1 "$reps"); do
    T0=$(now_ms)
    d 1 stack deploy -c "$PEER_WORK/stack.yml" --resolve-image never "st$rep" >/dev/null || die "docker stack deploy failed"
    wait_until 600 peer_stack_converged "st$rep" || die "rep $rep: the stack did not converge"
    samples+=("$(( $(now_ms) - T0 ))")
    log "peer rep $rep: ${samples[-1]} ms"
    d 1 stack rm "st$rep" >/dev/null
    wait_until 300 peer_gone || true
  done
  printf '%s\n' "${samples[@]}" | stats stack_deploy_ms ms
}
