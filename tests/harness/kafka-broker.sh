#!/usr/bin/env bash
# The Apache Kafka broker of the tests: KRaft combined mode (broker and controller in one JVM)
# on loopback, from Maven Central's jars (no Docker, no tarball). Called by brokers.sh for the
# broker name `kafka`; usable on its own:
#
#   eval "$(bash tests/harness/kafka-broker.sh start)"   # fetches the jars once, formats once
#   bash tests/harness/kafka-broker.sh restart            # kill -9 + start, same storage and ports
#   bash tests/harness/kafka-broker.sh stop | status
#
# Listeners (all on 127.0.0.1):
#   PLAINTEXT       $POLYBUS_KAFKA_PORT (default 9092)
#   SASL_PLAINTEXT  $POLYBUS_KAFKA_SASL_PORT (default 9093): user "polybus", password "secret",
#                   mechanisms PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512
#   CONTROLLER      $POLYBUS_KAFKA_CONTROLLER_PORT (default 9094)
#   SSL             $POLYBUS_KAFKA_SSL_PORT (default 9095): TLS with a certificate for 127.0.0.1
#                   signed by a CA generated once (build/brokers/kafka/tls/ca.crt); client
#                   certificates are requested, not required (client.crt, client.key)
# Jars: build/kafka/libs (tests/harness/kafka/pom.xml, re-fetched when the pom changes).
# State: build/brokers/kafka/ (pid, server.properties, server.log, data/).
# `start` prints `export POLYBUS_TEST_KAFKA_URL=...`, `POLYBUS_TEST_KAFKA_SASL_URL=...` and
# `POLYBUS_KAFKA_LIBS=...` for eval; everything else goes to stderr. It waits until the broker
# answers (its "started" log line and an open port), at most $POLYBUS_BROKER_START_TIMEOUT
# seconds (default 60), and prints the log when it does not come up.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
libs="$root/build/kafka/libs"
dir="${POLYBUS_BROKER_STATE:-$root/build/brokers}/kafka"
port=${POLYBUS_KAFKA_PORT:-9092}
sasl_port=${POLYBUS_KAFKA_SASL_PORT:-9093}
ctl_port=${POLYBUS_KAFKA_CONTROLLER_PORT:-9094}
ssl_port=${POLYBUS_KAFKA_SSL_PORT:-9095}

log() { echo "kafka: $*" >&2; }

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
running_pid() {
  [ -f "$dir/pid" ] || return 0
  local pid
  pid=$(cat "$dir/pid")
  if pid_alive "$pid"; then echo "$pid"; fi
}
tcp_ready() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The jars, fetched once per pom version.
fetch_jars() {
  local stamp
  stamp=$(sha256sum "$here/kafka/pom.xml" | cut -d' ' -f1)
  if [ -f "$libs/.stamp" ] && [ "$(cat "$libs/.stamp")" = "$stamp" ]; then return 0; fi
  command -v mvn >/dev/null || { log "mvn (Maven) is required to fetch the Kafka jars"; exit 1; }
  command -v java >/dev/null || { log "java (17+) is required to run Kafka"; exit 1; }
  log "fetching the Kafka jars from Maven Central into build/kafka/libs"
  rm -rf "$libs"
  mkdir -p "$libs"
  mvn -q -B -Dstyle.color=never -f "$here/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$libs" -DincludeScope=runtime >&2
  echo "$stamp" >"$libs/.stamp"
}

# A CA, a broker certificate for 127.0.0.1 (key and chain in one PEM file, as Kafka's PEM
# keystore takes it) and a client certificate, made once with openssl.
tls_files() {
  local d="$dir/tls"
  [ -f "$d/client.key" ] && return 0
  command -v openssl >/dev/null || { log "openssl is required for the SSL listener"; exit 1; }
  mkdir -p "$d"
  (
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=polybus kafka test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout broker.key -out broker.csr 2>/dev/null
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" >broker.ext
    openssl x509 -req -in broker.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile broker.ext -out broker.crt 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in broker.key -out broker.pk8 2>/dev/null
    cat broker.pk8 broker.crt >broker.pem
    openssl req -newkey rsa:2048 -nodes -subj "/CN=polybus client" -keyout client.key -out client.csr 2>/dev/null
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=clientAuth" >client.ext
    openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile client.ext -out client.crt 2>/dev/null
    rm -f ./*.csr ./*.ext broker.pk8
  )
}

write_config() {
  mkdir -p "$dir/data"
  cat >"$dir/server.properties" <<EOF
# Written by tests/harness/kafka-broker.sh: one KRaft node, loopback only, tuned for tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$ctl_port
listeners=PLAINTEXT://127.0.0.1:$port,SASL_PLAINTEXT://127.0.0.1:$sasl_port,SSL://127.0.0.1:$ssl_port,CONTROLLER://127.0.0.1:$ctl_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SASL_PLAINTEXT://127.0.0.1:$sasl_port,SSL://127.0.0.1:$ssl_port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,CONTROLLER:PLAINTEXT
listener.name.ssl.ssl.keystore.type=PEM
listener.name.ssl.ssl.keystore.location=$dir/tls/broker.pem
listener.name.ssl.ssl.truststore.type=PEM
listener.name.ssl.ssl.truststore.location=$dir/tls/ca.crt
listener.name.ssl.ssl.client.auth=requested
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_polybus="secret";
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
log.dirs=$dir/data
# A 2-core test machine: one partition for the offsets topic, no replication, no waiting for
# more members before the first rebalance, short sessions allowed.
num.partitions=1
offsets.topic.num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# After a kill the restarted node waits for its previous registration to expire before it
# serves again: a short broker session makes a restart take seconds, not the default 9+ s.
broker.session.timeout.ms=2000
broker.heartbeat.interval.ms=500
group.min.session.timeout.ms=1000
group.consumer.min.session.timeout.ms=1000
# polybus creates its topics through the admin API.
auto.create.topics.enable=false
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
log.flush.interval.messages=9223372036854775807
EOF
}

format_storage() {
  [ -f "$dir/data/meta.properties" ] && return 0
  log "formatting the KRaft storage in build/brokers/kafka/data"
  java -cp "$libs/*" -Dlog4j2.configurationFile="$here/kafka/log4j2.xml" kafka.tools.StorageTool \
    format --config "$dir/server.properties" --cluster-id "polybus-test-cluster0" \
    --add-scram 'SCRAM-SHA-256=[name=polybus,password=secret]' \
    --add-scram 'SCRAM-SHA-512=[name=polybus,password=secret]' >>"$dir/server.log" 2>&1 || {
      log "formatting failed; its log:"
      cat "$dir/server.log" >&2
      exit 1
    }
}

exports() {
  echo "export POLYBUS_TEST_KAFKA_URL=kafka://127.0.0.1:$port"
  echo "export POLYBUS_TEST_KAFKA_SASL_URL=kafka://127.0.0.1:$sasl_port"
  echo "export POLYBUS_TEST_KAFKA_SSL_URL=kafka://127.0.0.1:$ssl_port"
  echo "export POLYBUS_TEST_KAFKA_TLS_DIR=$dir/tls"
  echo "export POLYBUS_KAFKA_LIBS=$libs"
}

start() {
  mkdir -p "$dir"
  if [ -n "$(running_pid)" ]; then exports; return 0; fi
  local p
  for p in "$port" "$sasl_port" "$ssl_port" "$ctl_port"; do
    if tcp_ready "$p"; then
      log "port $p is already taken by another process; set POLYBUS_KAFKA_PORT, POLYBUS_KAFKA_SASL_PORT, POLYBUS_KAFKA_SSL_PORT, POLYBUS_KAFKA_CONTROLLER_PORT"
      exit 1
    fi
  done
  fetch_jars
  tls_files
  write_config
  format_storage
  log "starting kafka on 127.0.0.1:$port (SASL $sasl_port)"
  local mark
  mark=$(wc -l <"$dir/server.log" 2>/dev/null || echo 0)
  # setsid: the broker outlives this shell and is stopped by PID only. A small heap and a
  # quick-starting JIT; the broker's own threads are few (see server.properties).
  setsid java -Xms256m -Xmx768m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$here/kafka/log4j2.xml" \
    -cp "$libs/*" kafka.Kafka "$dir/server.properties" >>"$dir/server.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$dir/pid"
  local deadline=$((SECONDS + ${POLYBUS_BROKER_START_TIMEOUT:-60}))
  while [ $SECONDS -lt $deadline ]; do
    if ! pid_alive "$pid"; then
      log "kafka exited while starting; its log:"
      tail -n 60 "$dir/server.log" >&2
      rm -f "$dir/pid"
      exit 1
    fi
    if tail -n +"$((mark + 1))" "$dir/server.log" | grep -q "Kafka Server started" && tcp_ready "$port"; then
      exports
      return 0
    fi
    sleep 0.2
  done
  log "kafka did not start within ${POLYBUS_BROKER_START_TIMEOUT:-60} s; its log:"
  tail -n 60 "$dir/server.log" >&2
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/pid"
  exit 1
}

stop() {
  local pid
  pid=$(running_pid)
  if [ -z "$pid" ]; then rm -f "$dir/pid"; return 0; fi
  log "stopping kafka (pid $pid)"
  if [ "${1:-}" = kill ]; then kill -KILL "$pid" 2>/dev/null || true; else kill -TERM "$pid" 2>/dev/null || true; fi
  local deadline=$((SECONDS + 20))
  while pid_alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  pid_alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
  while pid_alive "$pid"; do sleep 0.05; done
  rm -f "$dir/pid"
}

case "${1:-status}" in
  start) start ;;
  stop) stop ;;
  # A crash and a restart: killed (no clean shutdown), storage kept, same ports.
  restart) stop kill; start ;;
  status)
    pid=$(running_pid)
    if [ -n "$pid" ]; then echo "kafka: running (pid $pid, port $port)"; else echo "kafka: stopped"; fi ;;
  *) log "usage: $0 start|stop|restart|status"; exit 2 ;;
esac
