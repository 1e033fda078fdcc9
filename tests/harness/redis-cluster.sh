#!/usr/bin/env bash
# A 3-node Redis Cluster on loopback (three redis-server processes, --cluster-enabled yes, no
# replicas), for the redis+cluster:// tests. Called by brokers.sh for the broker name
# `redis-cluster`; usable on its own:
#
#   eval "$(bash tests/harness/redis-cluster.sh start)"   # creates the cluster once
#   bash tests/harness/redis-cluster.sh stop | status
#
# Ports $POLYBUS_REDIS_CLUSTER_PORT (default 7001) and the next two; data, logs and PIDs under
# build/brokers/redis-cluster/<port>/. AOF with an fsync per write, like the single server.
# `start` prints `export POLYBUS_TEST_REDIS_CLUSTER_URL=redis+cluster://...` for eval and waits
# until every node reports cluster_state:ok (at most $POLYBUS_BROKER_START_TIMEOUT seconds,
# default 30).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dir="${POLYBUS_BROKER_STATE:-$root/build/brokers}/redis-cluster"
first=${POLYBUS_REDIS_CLUSTER_PORT:-7001}
ports=("$first" "$((first + 1))" "$((first + 2))")

log() { echo "redis-cluster: $*" >&2; }
pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
node_pid() {
  local f="$dir/$1/pid"
  [ -f "$f" ] || return 0
  local pid
  pid=$(cat "$f")
  if pid_alive "$pid"; then echo "$pid"; fi
}
cli() { local port=$1; shift; redis-cli -h 127.0.0.1 -p "$port" "$@"; }

exports() {
  local hosts=()
  local p
  for p in "${ports[@]}"; do hosts+=("127.0.0.1:$p"); done
  echo "export POLYBUS_TEST_REDIS_CLUSTER_URL=redis+cluster://$(IFS=,; echo "${hosts[*]}")"
}

cluster_ok() {
  local p
  for p in "${ports[@]}"; do
    cli "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  done
}

start() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
    bash "$root/tests/harness/brokers.sh" start redis >/dev/null # installs the Debian packages
  local p pid running=0
  for p in "${ports[@]}"; do
    if [ -n "$(node_pid "$p")" ]; then running=$((running + 1)); continue; fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      log "port $p is already taken by another process; set POLYBUS_REDIS_CLUSTER_PORT"
      exit 1
    fi
    mkdir -p "$dir/$p"
    cat >"$dir/$p/redis.conf" <<EOF
bind 127.0.0.1
port $p
daemonize no
dir $dir/$p
save ""
appendonly yes
appendfsync always
protected-mode yes
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout 2000
EOF
    log "starting node 127.0.0.1:$p"
    setsid redis-server "$dir/$p/redis.conf" >>"$dir/$p/server.log" 2>&1 </dev/null &
    echo $! >"$dir/$p/pid"
  done
  local deadline=$((SECONDS + ${POLYBUS_BROKER_START_TIMEOUT:-30}))
  for p in "${ports[@]}"; do
    until [ "$(cli "$p" ping 2>/dev/null)" = PONG ]; do
      pid=$(node_pid "$p")
      if [ -z "$pid" ] || [ $SECONDS -ge $deadline ]; then
        log "node $p did not start; its log:"
        tail -n 30 "$dir/$p/server.log" >&2
        exit 1
      fi
      sleep 0.1
    done
  done
  # A node that knows no slots has never been part of the cluster: create it once.
  if ! cli "${ports[0]}" cluster info | grep -q '^cluster_slots_assigned:16384'; then
    log "creating the cluster"
    local hosts=()
    for p in "${ports[@]}"; do hosts+=("127.0.0.1:$p"); done
    redis-cli --cluster create "${hosts[@]}" --cluster-replicas 0 --cluster-yes >>"$dir/create.log" 2>&1 || {
      log "cluster create failed:"
      cat "$dir/create.log" >&2
      exit 1
    }
  fi
  until cluster_ok; do
    if [ $SECONDS -ge $deadline ]; then
      log "the cluster did not reach cluster_state:ok"
      cli "${ports[0]}" cluster info >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  exports
}

stop() { # [kill]: -9, no clean shutdown
  local p pid sig=TERM
  [ "${1:-}" = kill ] && sig=KILL
  for p in "${ports[@]}"; do
    pid=$(node_pid "$p")
    [ -n "$pid" ] || continue
    log "stopping node $p (pid $pid)"
    kill -"$sig" "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while pid_alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
    pid_alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$dir/$p/pid"
  done
}

case "${1:-status}" in
  start) start ;;
  stop) stop ;;
  # A crash and a restart: every node killed (-9), data kept (AOF, fsync per write), same ports.
  restart) stop kill; start ;;
  status)
    up=0
    for p in "${ports[@]}"; do [ -n "$(node_pid "$p")" ] && up=$((up + 1)); done
    if [ "$up" -eq 3 ]; then echo "redis-cluster: running (ports ${ports[*]})"; else echo "redis-cluster: $up of 3 nodes running"; fi ;;
  *) log "usage: $0 start|stop|restart|status"; exit 2 ;;
esac
