#!/usr/bin/env bash
# The broker harness: starts, stops and restarts the test brokers on loopback, idempotently.
#
#   eval "$(bash tests/harness/brokers.sh start nats)"   # starts (or finds) nats-server -js
#   bash tests/harness/brokers.sh restart nats           # kill + start, same port, same storage
#   bash tests/harness/brokers.sh stop nats
#   bash tests/harness/brokers.sh status
#
# Brokers:
#   nats       nats-server with JetStream on $POLYBUS_NATS_PORT (default 4222), storage under
#              build/brokers/nats/, monitoring on 127.0.0.1:$POLYBUS_NATS_MONITOR_PORT (8222).
#   nats-auth  nats-server requiring user "polybus" / password "secret" on
#              $POLYBUS_NATS_AUTH_PORT (default 4223), no JetStream (authentication tests).
#
# `start` prints `export POLYBUS_TEST_<BACKEND>_URL=...` lines for eval; everything else goes to
# stderr. The PID, port and log of each broker live in build/brokers/<name>/. A broker that does
# not come up within $POLYBUS_BROKER_START_TIMEOUT seconds (default 20) fails the command and its
# log is printed.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
state="$root/build/brokers"
mkdir -p "$state"

log() { echo "brokers: $*" >&2; }

ensure_nats_server() {
  command -v nats-server >/dev/null && return 0
  log "installing nats-server (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq nats-server >/dev/null 2>&1; then
    apt-get update -qq >&2
    apt-get install -y -qq nats-server >/dev/null
  fi
  command -v nats-server >/dev/null || { log "nats-server could not be installed"; exit 1; }
}

port_of() { # broker -> client port
  case "$1" in
    nats) echo "${POLYBUS_NATS_PORT:-4222}" ;;
    nats-auth) echo "${POLYBUS_NATS_AUTH_PORT:-4223}" ;;
    *) log "unknown broker $1 (known: nats, nats-auth)"; exit 2 ;;
  esac
}

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

running_pid() { # broker -> pid of the recorded, live process, or nothing
  local f="$state/$1/pid"
  [ -f "$f" ] || return 0
  local pid
  pid=$(cat "$f")
  if pid_alive "$pid"; then echo "$pid"; fi
}

tcp_ready() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_ready() { # broker, port, monitor-port-or-empty, pid
  local name=$1 port=$2 mon=$3 pid=$4
  local deadline=$((SECONDS + ${POLYBUS_BROKER_START_TIMEOUT:-20}))
  while [ $SECONDS -lt $deadline ]; do
    if ! pid_alive "$pid"; then
      log "$name exited while starting; its log:"
      cat "$state/$name/server.log" >&2 || true
      return 1
    fi
    if [ -n "$mon" ]; then
      # /healthz answers ok once the server (and JetStream) is ready.
      if curl -fsS --max-time 1 "http://127.0.0.1:$mon/healthz" >/dev/null 2>&1; then return 0; fi
    elif tcp_ready "$port"; then
      return 0
    fi
    sleep 0.1
  done
  log "$name did not become ready on 127.0.0.1:$port within ${POLYBUS_BROKER_START_TIMEOUT:-20} s; its log:"
  cat "$state/$name/server.log" >&2 || true
  return 1
}

exports() {
  case "$1" in
    nats)
      local port
      port=$(cat "$state/nats/port")
      echo "export POLYBUS_TEST_NATS_URL=nats://127.0.0.1:$port"
      echo "export POLYBUS_TEST_JETSTREAM_URL=jetstream://127.0.0.1:$port"
      ;;
    nats-auth)
      echo "export POLYBUS_TEST_NATS_AUTH_URL=nats://127.0.0.1:$(cat "$state/nats-auth/port")"
      ;;
  esac
}

start() {
  local name=$1
  local dir="$state/$name"
  mkdir -p "$dir"
  local pid
  pid=$(running_pid "$name")
  if [ -n "$pid" ]; then
    exports "$name"
    return 0
  fi
  ensure_nats_server
  # A restart reuses the recorded port, so clients reconnect to the same address.
  local port
  if [ -f "$dir/port" ] && [ "${2:-}" = keep ]; then port=$(cat "$dir/port"); else port=$(port_of "$name"); fi
  if tcp_ready "$port"; then
    log "port $port is already taken by another process; set POLYBUS_$(echo "$name" | tr a-z- A-Z_)_PORT"
    exit 1
  fi
  local args=(-a 127.0.0.1 -p "$port")
  local mon=""
  case "$name" in
    nats)
      mon="${POLYBUS_NATS_MONITOR_PORT:-8222}"
      [ "${2:-}" = keep ] && [ -f "$dir/monitor_port" ] && mon=$(cat "$dir/monitor_port")
      mkdir -p "$dir/data"
      # The monitor listens on the client address (-a), so it stays on loopback.
      args+=(-js -sd "$dir/data" -m "$mon")
      echo "$mon" >"$dir/monitor_port"
      ;;
    nats-auth)
      args+=(--user polybus --pass secret)
      ;;
  esac
  echo "$port" >"$dir/port"
  log "starting $name on 127.0.0.1:$port"
  # setsid: the broker outlives this shell and is stopped by PID only.
  setsid nats-server "${args[@]}" >>"$dir/server.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$dir/pid"
  wait_ready "$name" "$port" "$mon" "$pid" || { kill "$pid" 2>/dev/null || true; rm -f "$dir/pid"; exit 1; }
  exports "$name"
}

stop() {
  local name=$1
  local dir="$state/$name"
  local pid
  pid=$(running_pid "$name")
  if [ -z "$pid" ]; then
    rm -f "$dir/pid"
    return 0
  fi
  log "stopping $name (pid $pid)"
  if [ "${2:-}" = kill ]; then kill -KILL "$pid" 2>/dev/null || true; else kill -TERM "$pid" 2>/dev/null || true; fi
  local deadline=$((SECONDS + 10))
  while pid_alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
  pid_alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
  while pid_alive "$pid"; do sleep 0.05; done
  rm -f "$dir/pid"
}

status() {
  local name pid
  for name in nats nats-auth; do
    pid=$(running_pid "$name")
    if [ -n "$pid" ]; then
      echo "$name: running (pid $pid, port $(cat "$state/$name/port"))"
    else
      echo "$name: stopped"
    fi
  done
}

cmd=${1:-status}
name=${2:-}
case "$cmd" in
  start) [ -n "$name" ] || { log "usage: $0 start nats|nats-auth"; exit 2; }; port_of "$name" >/dev/null; start "$name" ;;
  stop) [ -n "$name" ] || { log "usage: $0 stop nats|nats-auth"; exit 2; }; port_of "$name" >/dev/null; stop "$name" ;;
  # A crash and a restart: the process is killed (no clean shutdown), the storage is kept and
  # the server comes back on the same port.
  restart) [ -n "$name" ] || { log "usage: $0 restart nats|nats-auth"; exit 2; }; port_of "$name" >/dev/null; stop "$name" kill; start "$name" keep ;;
  status) status ;;
  *) log "usage: $0 start|stop|restart NAME | status"; exit 2 ;;
esac
