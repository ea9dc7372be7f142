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
