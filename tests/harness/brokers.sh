#!/usr/bin/env bash
# The broker harness: starts, stops and restarts the test brokers on loopback, idempotently.
#
#   eval "$(bash tests/harness/brokers.sh start nats)"   # starts (or finds) nats-server -js
#   eval "$(bash tests/harness/brokers.sh start redis)"  # starts (or finds) redis-server
#   bash tests/harness/brokers.sh restart nats           # kill + start, same port, same storage
#   bash tests/harness/brokers.sh stop nats
#   bash tests/harness/brokers.sh status
#
# Brokers:
#   nats       nats-server with JetStream on $POLYBUS_NATS_PORT (default 4222), storage under
#              build/brokers/nats/, monitoring on 127.0.0.1:$POLYBUS_NATS_MONITOR_PORT (8222).
#   nats-auth  nats-server requiring user "polybus" / password "secret" on
#              $POLYBUS_NATS_AUTH_PORT (default 4223), no JetStream (authentication tests).
#   redis      redis-server on $POLYBUS_REDIS_PORT (default 6390), no RDB snapshots, AOF on with
#              fsync on every write (so `restart` after a kill keeps every accepted event),
#              data under build/brokers/redis/.
#   redis-acl  redis-server on $POLYBUS_REDIS_ACL_PORT (default 6391) with the ACL user
#              "polybus" / password "secret" and the default user disabled (authentication tests).
#   redis-tls  redis-server speaking only TLS on $POLYBUS_REDIS_TLS_PORT (default 6392), with a CA,
#              a server and a client certificate generated once under build/brokers/redis-tls/tls
#              (ca.crt, client.crt, client.key); client certificates are optional.
#   redis-cluster  a 3-node Redis Cluster on $POLYBUS_REDIS_CLUSTER_PORT (default 7001) and the next
#              two ports: see tests/harness/redis-cluster.sh.
#   kafka      Apache Kafka (KRaft) on $POLYBUS_KAFKA_PORT (default 9092), SASL on 9093: see
#              tests/harness/kafka-broker.sh, which brokers.sh hands `kafka` to.
#
# `start` prints `export POLYBUS_TEST_<BACKEND>_URL=...` lines for eval; everything else goes to
# stderr. The PID, port and log of each broker live in build/brokers/<name>/ ($POLYBUS_BROKER_STATE
# instead of build/brokers when set: with other ports, a second set of brokers beside the first). A broker that does
# not come up within $POLYBUS_BROKER_START_TIMEOUT seconds (default 20) fails the command and its
# log is printed.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
state="${POLYBUS_BROKER_STATE:-$root/build/brokers}"
mkdir -p "$state"

log() { echo "brokers: $*" >&2; }

ensure_redis_server() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
  log "installing redis-server and redis-tools (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq redis-server redis-tools >/dev/null 2>&1; then
    apt-get update -qq >&2
    apt-get install -y -qq redis-server redis-tools >/dev/null
  fi
  command -v redis-server >/dev/null || { log "redis-server could not be installed"; exit 1; }
  # The package may start a system instance (on 6379); ours run on their own ports and are
  # left alone by it, and it is left alone by us.
}

is_redis() { case "$1" in redis|redis-acl|redis-tls) return 0 ;; *) return 1 ;; esac; }

# The certificates of redis-tls: a CA, a server certificate for 127.0.0.1 and localhost, and a
# client certificate, made once with openssl.
redis_tls_files() {
  local d="$state/redis-tls/tls"
  [ -f "$d/client.key" ] && return 0
  mkdir -p "$d"
  log "generating the TLS certificates of redis-tls in $d"
  (
    cd "$d"
    # Version 3 certificates with the extensions rustls requires.
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=polybus test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr 2>/dev/null
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile server.ext -out server.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=polybus client" -keyout client.key -out client.csr 2>/dev/null
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=clientAuth" >client.ext
    openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile client.ext -out client.crt 2>/dev/null
    rm -f ./*.csr ./*.ext
  )
}

redis_ping() { # broker, port
  local auth=()
  [ "$1" = redis-acl ] && auth=(--user polybus --pass secret --no-auth-warning)
  [ "$1" = redis-tls ] && auth=(--tls --cacert "$state/redis-tls/tls/ca.crt")
  [ "$(redis-cli -h 127.0.0.1 -p "$2" "${auth[@]}" ping 2>/dev/null)" = PONG ]
}

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
    redis) echo "${POLYBUS_REDIS_PORT:-6390}" ;;
    redis-acl) echo "${POLYBUS_REDIS_ACL_PORT:-6391}" ;;
    redis-tls) echo "${POLYBUS_REDIS_TLS_PORT:-6392}" ;;
    *) log "unknown broker $1 (known: nats, nats-auth, redis, redis-acl, redis-tls, kafka)"; exit 2 ;;
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
    if is_redis "$name"; then
      if redis_ping "$name" "$port"; then return 0; fi
    elif [ -n "$mon" ]; then
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
    redis)
      local port
      port=$(cat "$state/redis/port")
      echo "export POLYBUS_TEST_REDIS_URL=redis://127.0.0.1:$port"
      echo "export POLYBUS_TEST_REDIS_PUBSUB_URL=redis+pubsub://127.0.0.1:$port"
      ;;
    redis-acl)
      echo "export POLYBUS_TEST_REDIS_ACL_URL=redis://127.0.0.1:$(cat "$state/redis-acl/port")"
      ;;
    redis-tls)
      echo "export POLYBUS_TEST_REDIS_TLS_URL=rediss://127.0.0.1:$(cat "$state/redis-tls/port")"
      echo "export POLYBUS_TEST_REDIS_TLS_DIR=$state/redis-tls/tls"
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
  if is_redis "$name"; then ensure_redis_server; else ensure_nats_server; fi
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
  if is_redis "$name"; then
    mkdir -p "$dir/data"
    [ "$name" = redis-tls ] && redis_tls_files
    # Our own instance: loopback only, in the foreground of its own session (stopped by PID),
    # no RDB snapshots; AOF with an fsync per write, so a killed server loses nothing it
    # acknowledged and a restart keeps the streams and consumer groups.
    {
      echo "bind 127.0.0.1"
      echo "port $port"
      echo "daemonize no"
      if [ "$name" = redis-tls ]; then
        # TLS only: no plain port.
        echo "port 0"
        echo "tls-port $port"
        echo "tls-cert-file $dir/tls/server.crt"
        echo "tls-key-file $dir/tls/server.key"
        echo "tls-ca-cert-file $dir/tls/ca.crt"
        echo "tls-auth-clients optional"
      fi
      echo "dir $dir/data"
      echo "save \"\""
      echo "appendonly yes"
      echo "appendfsync always"
      echo "protected-mode yes"
      if [ "$name" = redis-acl ]; then
        echo "user default off"
        echo "user polybus on >secret ~* &* +@all"
      fi
    } >"$dir/redis.conf"
    setsid redis-server "$dir/redis.conf" >>"$dir/server.log" 2>&1 </dev/null &
  else
    # setsid: the broker outlives this shell and is stopped by PID only.
    setsid nats-server "${args[@]}" >>"$dir/server.log" 2>&1 </dev/null &
  fi
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
  for name in nats nats-auth redis redis-acl redis-tls; do
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
# Kafka has a script of its own (a JVM broker from Maven Central's jars).
if [ "$name" = kafka ]; then exec bash "$root/tests/harness/kafka-broker.sh" "$cmd"; fi
# So has the 3-node Redis Cluster.
if [ "$name" = redis-cluster ]; then exec bash "$root/tests/harness/redis-cluster.sh" "$cmd"; fi
case "$cmd" in
  start) [ -n "$name" ] || { log "usage: $0 start nats|nats-auth|redis|redis-acl|redis-tls|kafka"; exit 2; }; port_of "$name" >/dev/null; start "$name" ;;
  stop) [ -n "$name" ] || { log "usage: $0 stop nats|nats-auth|redis|redis-acl|redis-tls|kafka"; exit 2; }; port_of "$name" >/dev/null; stop "$name" ;;
  # A crash and a restart: the process is killed (no clean shutdown), the storage is kept and
  # the server comes back on the same port.
  restart) [ -n "$name" ] || { log "usage: $0 restart nats|nats-auth|redis|redis-acl|redis-tls|kafka"; exit 2; }; port_of "$name" >/dev/null; stop "$name" kill; start "$name" keep ;;
  status)
    status
    bash "$root/tests/harness/redis-cluster.sh" status
    bash "$root/tests/harness/kafka-broker.sh" status ;;
  *) log "usage: $0 start|stop|restart NAME | status"; exit 2 ;;
esac
