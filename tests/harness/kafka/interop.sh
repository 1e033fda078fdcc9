#!/usr/bin/env bash
# Runs the plain Kafka client of the interop tests (Interop.java, see its header for the
# commands) with kafka-clients from the harness's jars. The class is compiled once into
# build/kafka/classes (keyed by the source's hash), so a call costs one JVM start.
#   POLYBUS_KAFKA_LIBS  the jars (default build/kafka/libs, fetched by kafka-broker.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
libs=${POLYBUS_KAFKA_LIBS:-$root/build/kafka/libs}
[ -d "$libs" ] || { echo "interop: no jars in $libs (run tests/harness/kafka-broker.sh start)" >&2; exit 1; }
hash=$(sha256sum "$here/Interop.java" | cut -c1-16)
classes="$root/build/kafka/classes/$hash"
if [ ! -f "$classes/Interop.class" ]; then
  mkdir -p "$classes"
  javac -nowarn -d "$classes" -cp "$libs/*" "$here/Interop.java"
fi
exec java -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xshare:auto \
  -Dlog4j2.configurationFile="$here/log4j2.xml" -cp "$classes:$libs/*" Interop "$@"
