#!/usr/bin/env bash
# Start or stop a podman Docker-API service on a unix socket.
#
#   bash .ci/podman-service.sh start SOCKDIR   # prints DOCKER_HOST=unix://SOCKDIR/podman.sock
#   bash .ci/podman-service.sh stop  SOCKDIR
#   bash .ci/podman-service.sh status SOCKDIR
#
# start runs `podman --runtime runc system service --time=0 unix://SOCKDIR/podman.sock` in the
# background (own session, log in SOCKDIR/podman-service.log) with CONTAINERS_CONF set to
# $STACKGEN_CONTAINERS_CONF (default ${STACKGEN_CACHE:-~/.cache/stackgen-ci}/containers.conf),
# waits (at most 30 s) until the socket answers /_ping, and records SOCKDIR/podman.pid.
# stop kills that pid (TERM, then KILL after 10 s) and removes the pid file and socket.
# Containers started through the socket are not touched: remove them yourself.
set -euo pipefail

cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop|status SOCKDIR" >&2; exit 2; }
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
sock="$dir/podman.sock"; pidf="$dir/podman.pid"; log="$dir/podman-service.log"
CACHE="${STACKGEN_CACHE:-$HOME/.cache/stackgen-ci}"
conf="${STACKGEN_CONTAINERS_CONF:-$CACHE/containers.conf}"

running() { [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; }
ping() { curl -sf --max-time 2 --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; }

case "$cmd" in
  start)
    if running && ping; then echo "DOCKER_HOST=unix://$sock"; exit 0; fi
    command -v podman >/dev/null || { echo "podman is not installed (run .ci/provision.sh)" >&2; exit 1; }
    [ -f "$conf" ] || { echo "no containers.conf at $conf (run .ci/provision.sh)" >&2; exit 1; }
    rm -f "$sock" "$pidf"
    CONTAINERS_CONF="$conf" setsid podman --runtime runc system service --time=0 "unix://$sock" \
      >"$log" 2>&1 </dev/null &
    echo $! >"$pidf"
    for _ in $(seq 1 300); do
      if [ -S "$sock" ] && ping; then echo "DOCKER_HOST=unix://$sock"; exit 0; fi
      running || break
      sleep 0.1
    done
    echo "podman service did not come up on $sock; log:" >&2
    tail -n 20 "$log" >&2 || true
    if running; then kill "$(cat "$pidf")" 2>/dev/null || true; fi
    rm -f "$pidf"
    exit 1
    ;;
  stop)
    if [ -f "$pidf" ]; then
      pid="$(cat "$pidf")"
      if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
      fi
      rm -f "$pidf"
    fi
    rm -f "$sock"
    ;;
  status)
    if running && ping; then echo "running pid $(cat "$pidf") DOCKER_HOST=unix://$sock"; else echo "not running"; exit 1; fi
    ;;
  *) echo "usage: $0 start|stop|status SOCKDIR" >&2; exit 2 ;;
esac
