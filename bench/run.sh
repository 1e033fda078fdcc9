#!/usr/bin/env bash
# Runs every benchmark in one go and writes BENCHMARKS.md: events per second from publish to
# handler on memory://, 64-byte payloads, one publisher and one subscriber, for Rust, C, Go,
# Python and Node, each beside its language's in-process peer measured in the same run.
#   POLYBUS_BENCH_EVENTS=N   events per case (default 2,000,000; Python uses a quarter)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
n=${POLYBUS_BENCH_EVENTS:-2000000}
out=build/bench
mkdir -p "$out"
results="$out/results.jsonl"
: >"$results"

bash tests/harness/setup.sh
# The in-process cases run without the Kafka broker (its JVM compiles for a while after it
# starts, which would slow them down); it is started again for the Kafka cases at the end.
bash tests/harness/brokers.sh stop kafka
echo "== rust"
POLYBUS_BENCH_EVENTS=$n cargo bench --quiet -p polybus --bench pubsub 2>/dev/null | grep '^{' | tee -a "$results"

echo "== c"
cargo build --quiet --release -p polybus-ffi
gcc -O2 -std=c11 -Iinclude bench/c/pubsub.c target/release/libpolybus.a -lssl -lcrypto -lz -lm -ldl -lpthread -o "$out/c-pubsub"
POLYBUS_BENCH_EVENTS=$n "$out/c-pubsub" | tee -a "$results"

echo "== go"
(source bindings/go/cgo-env.sh && cd bindings/go && POLYBUS_BENCH_EVENTS=$n go run ./cmd/polybus-bench) | grep '^{' | tee -a "$results"

echo "== python"
bash python/build.sh >/dev/null
py="$root/build/venv-python/bin/python"
POLYBUS_BENCH_EVENTS=$((n / 4)) "$py" python/bench/bench_pubsub.py | grep '^{' | tee -a "$results"
POLYBUS_BENCH_EVENTS=$((n / 4)) "$py" bench/peers/python_queue.py | tee -a "$results"

echo "== node"
bash node/build.sh >/dev/null
# Each way of publishing in a process of its own: V8 keeps the heap an earlier case grew
# (`unawaited_all` holds every pending publish, gigabytes), which slowed the cases after it.
for mode in await_each unawaited unawaited_all publish_batch; do
  POLYBUS_BENCH_MODES=$mode POLYBUS_BENCH_EVENTS=$n node node/bench/bench_pubsub.mjs | grep '^{' | tee -a "$results"
done
POLYBUS_BENCH_EVENTS=$n node bench/peers/node_eventemitter.mjs | tee -a "$results"

# The Go event-bus peer in process: Watermill's gochannel (bench/peers/go, its own module).
(cd bench/peers/go && POLYBUS_BENCH_URL=memory:// POLYBUS_BENCH_BROKER_EVENTS=$((n / 10)) go run .) | grep '^{' | tee -a "$results"

# The broker rows: each language on every broker beside the Rust core, and beside the clients
# a service in that language would use instead (the peers: modules, environments and packages
# of their own under bench/peers, never dependencies of the libraries). POLYBUS_BENCH_ROUNDS
# rounds (default 3), each running every program once in turn, so a slow moment of the machine
# falls on one round of each rather than on one program; the report gives each case's median
# and range. Each round: batch publish at every size of POLYBUS_BENCH_SIZES (bytes; larger
# payloads get fewer events, 64 MiB of payload at most), durable publish one at a time, fan-out
# to 10 and a group of 4, latency at a fixed rate.
rounds=${POLYBUS_BENCH_ROUNDS:-3}
sizes=${POLYBUS_BENCH_SIZES:-64 1024 65536}
events=${POLYBUS_BENCH_BROKER_EVENTS:-100000}
eval "$(bash tests/harness/brokers.sh start nats)"
eval "$(bash tests/harness/brokers.sh start redis)"
eval "$(bash tests/harness/brokers.sh start kafka)"
brokers="nats://127.0.0.1:4222,jetstream://127.0.0.1:4222,redis://127.0.0.1:6390,$POLYBUS_TEST_KAFKA_URL"
[ -x build/venv-bench/bin/python ] || python3 -m venv build/venv-bench
build/venv-bench/bin/pip install -q -r bench/peers/python/requirements.txt
(cd bench/peers/node && npm ci --no-audit --no-fund --silent)
(cd bench/peers/go && go build -o "$root/$out/go-peers" .)
(source bindings/go/cgo-env.sh && cd bindings/go && go build -o "$root/$out/go-polybus-bench" ./cmd/polybus-bench)
cargo bench --quiet -p polybus --bench pubsub --no-run 2>/dev/null

# One workload ($1: its POLYBUS_BENCH_CASE, empty for batch publish) on the URLs $2: the Rust
# core (beside its client crates), then polybus and the peers from Go, Python and Node.
workload() (
  export POLYBUS_BENCH_URL=$2
  if [ -n "$1" ]; then export POLYBUS_BENCH_CASE=$1; else unset POLYBUS_BENCH_CASE; fi
  POLYBUS_BENCH_CASE=${1:-broker} cargo bench --quiet -p polybus --bench pubsub 2>/dev/null | grep '^{'
  (source bindings/go/cgo-env.sh && "$out/go-polybus-bench") | grep '^{'
  "$py" python/bench/bench_pubsub.py | grep '^{'
  node node/bench/bench_pubsub.mjs | grep '^{' | grep '://'
  # The peers have no fan-out case (a subscription per subscriber is the client's own affair).
  if [ "$1" != fanout ]; then
    "$out/go-peers" | grep '^{'
    build/venv-bench/bin/python bench/peers/python/brokers.py | grep '^{'
    node bench/peers/node/brokers.mjs | grep '^{'
  fi
)

for round in $(seq 1 "$rounds"); do
  for size in $sizes; do
    echo "== brokers, round $round of $rounds: batch publish, $size-byte events"
    POLYBUS_BENCH_SIZE=$size POLYBUS_BENCH_BROKER_EVENTS=$(( size <= 64 ? events : (67108864 / size < events ? 67108864 / size : events) )) \
      workload "" "$brokers" | tee -a "$results"
  done
  echo "== brokers, round $round of $rounds: durable publish one at a time"
  workload single "$brokers" | tee -a "$results"
  echo "== brokers, round $round of $rounds: fan-out to 10, a group of 4"
  workload fanout "memory://,$brokers" | tee -a "$results"
  echo "== brokers, round $round of $rounds: latency"
  workload latency "memory://,$brokers" | tee -a "$results"
done

echo "== scale (subscriptions: threads, memory, idle CPU, subscribe and close times)"
scale="$out/scale.jsonl"
: >"$scale"
(source bindings/go/cgo-env.sh && cd bindings/go && go run ./cmd/polybus-scale) | grep '^{' | tee -a "$scale"
"$py" python/bench/bench_scale.py | grep '^{' | tee -a "$scale"
node node/bench/bench_scale.mjs | grep '^{' | tee -a "$scale"

build/venv-bench/bin/python bench/report.py "$results" BENCHMARKS.md
echo "wrote BENCHMARKS.md"
