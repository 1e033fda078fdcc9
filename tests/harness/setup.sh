#!/usr/bin/env bash
# Installs what the build and the tests need, idempotently and cached under build/:
# Debian packages (valgrind), cbindgen (into build/tools). The language toolchains (Rust, Go,
# Python, Node, gcc) are expected on the machine; each binding's test.sh installs its own
# packages (maturin and pytest into a venv, @napi-rs/cli from package-lock.json, Go modules).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tools="$root/build/tools"
mkdir -p "$tools/bin"

need_apt=()
command -v valgrind >/dev/null || need_apt+=(valgrind)
command -v gcc >/dev/null || need_apt+=(gcc)
command -v g++ >/dev/null || need_apt+=(g++)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
# librdkafka (built from source by the kafka feature) links OpenSSL and zlib.
[ -f /usr/include/openssl/ssl.h ] || need_apt+=(libssl-dev)
[ -f /usr/include/zlib.h ] || need_apt+=(zlib1g-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

for tool in cargo go python3 node npm java javac mvn; do
  command -v "$tool" >/dev/null || { echo "setup: $tool is required but not installed" >&2; exit 1; }
done

cbindgen_version=0.29.4
if ! "$tools/bin/cbindgen" --version 2>/dev/null | grep -q "$cbindgen_version"; then
  echo "setup: installing cbindgen $cbindgen_version into build/tools"
  cargo install --quiet --locked --root "$tools" --version "$cbindgen_version" cbindgen
fi

# The broker the nats and jetstream backends of every conformance runner use (features.json's
# default URLs match the harness's default port). Idempotent: an already running one is kept.
bash "$root/tests/harness/brokers.sh" start nats >/dev/null
# A server that requires credentials, for every language's wrong-password test
# (POLYBUS_TEST_NATS_AUTH_URL, default nats://127.0.0.1:4223; user polybus, password secret).
bash "$root/tests/harness/brokers.sh" start nats-auth >/dev/null
# The Redis server of the redis and redis_pubsub backends (POLYBUS_TEST_REDIS_URL, default
# redis://127.0.0.1:6390) and one with an ACL user for the authentication tests
# (POLYBUS_TEST_REDIS_ACL_URL, default redis://127.0.0.1:6391; user polybus, password secret).
bash "$root/tests/harness/brokers.sh" start redis >/dev/null
bash "$root/tests/harness/brokers.sh" start redis-acl >/dev/null
# Redis over TLS only, with certificates generated once (POLYBUS_TEST_REDIS_TLS_URL, default
# rediss://127.0.0.1:6392; POLYBUS_TEST_REDIS_TLS_DIR holds ca.crt, client.crt, client.key).
bash "$root/tests/harness/brokers.sh" start redis-tls >/dev/null
# A 3-node Redis Cluster for redis+cluster:// (POLYBUS_TEST_REDIS_CLUSTER_URL, default
# redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003).
bash "$root/tests/harness/brokers.sh" start redis-cluster >/dev/null
# Apache Kafka in KRaft mode from Maven Central's jars (fetched once into build/kafka/libs), for
# the kafka backend (POLYBUS_TEST_KAFKA_URL, default kafka://127.0.0.1:9092) and its SASL tests
# (POLYBUS_TEST_KAFKA_SASL_URL, default kafka://127.0.0.1:9093; user polybus, password secret).
bash "$root/tests/harness/brokers.sh" start kafka >/dev/null
