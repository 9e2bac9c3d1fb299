#!/usr/bin/env bash
# Make sure a Docker engine answers, on a fresh Debian machine too.
#   deploy/docker/dockerd.sh start   reuse a running daemon, else install docker.io if missing and start
#                                    dockerd (no bridge/iptables: containers use --network=host);
#                                    records the pid in $STATE_DIR/dockerd.pid only when it started one
#   deploy/docker/dockerd.sh stop    stop the daemon only if `start` started it
# Uses Debian's client /usr/bin/docker: the `docker` first on PATH may be a newer client with no daemon.
set -euo pipefail
DOCKER=${DOCKER:-/usr/bin/docker}
STATE_DIR=${STATE_DIR:-/tmp/ragcluster-dockerd}
START_TIMEOUT=${START_TIMEOUT:-60}
mkdir -p "$STATE_DIR"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

start() {
    if [ -x "$DOCKER" ] && "$DOCKER" info >/dev/null 2>&1; then
        echo "dockerd: reusing the running daemon"
        return 0
    fi
    if [ ! -x /usr/sbin/dockerd ] || [ ! -x "$DOCKER" ]; then
        echo "dockerd: installing Debian's docker.io"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            docker.io containerd runc iptables >/dev/null
    fi
    echo "dockerd: starting (log: $STATE_DIR/dockerd.log)"
    as_root /usr/sbin/dockerd --bridge=none --iptables=false --ip-masq=false \
        >"$STATE_DIR/dockerd.log" 2>&1 &
    echo $! >"$STATE_DIR/dockerd.pid"
    local deadline=$((SECONDS + START_TIMEOUT))
    until "$DOCKER" info >/dev/null 2>&1; do
        if ! kill -0 "$(cat "$STATE_DIR/dockerd.pid")" 2>/dev/null; then
            echo "dockerd: exited during start-up" >&2; tail -20 "$STATE_DIR/dockerd.log" >&2; return 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            echo "dockerd: not answering after ${START_TIMEOUT}s" >&2; tail -20 "$STATE_DIR/dockerd.log" >&2; return 1
        fi
        sleep 0.5
    done
    echo "dockerd: up (pid $(cat "$STATE_DIR/dockerd.pid"))"
}

stop() {
    [ -f "$STATE_DIR/dockerd.pid" ] || { echo "dockerd: not started by us, left running"; return 0; }
    local pid; pid=$(cat "$STATE_DIR/dockerd.pid")
    rm -f "$STATE_DIR/dockerd.pid"
    kill -0 "$pid" 2>/dev/null || return 0
    as_root kill -TERM "$pid"
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then as_root kill -KILL "$pid"; fi
    echo "dockerd: stopped (pid $pid)"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
