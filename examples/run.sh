#!/usr/bin/env bash
# The demo: builds what it needs, then runs a subscriber and a publisher in each language on
# one bus per language (POLYBUS_URL, default memory://, the in-process backend).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
export POLYBUS_URL="${POLYBUS_URL:-memory://}"

bash tests/harness/setup.sh
echo "== building (first run takes a few minutes)"
# Two builds: with --example, cargo builds only that target, not the C library.
cargo build --quiet --release -p polybus-ffi
cargo build --quiet --release -p polybus --example demo
mkdir -p build/demo
gcc -O2 -std=c11 -Wall -Iinclude examples/c/demo.c target/release/libpolybus.a -lssl -lcrypto -lz -lm -ldl -lpthread -o build/demo/c-demo
(source bindings/go/cgo-env.sh && cd examples/go && go build -o "$root/build/demo/go-demo" .)
quiet() { "$@" >build/demo/build.log 2>&1 || { cat build/demo/build.log >&2; return 1; }; }
quiet bash python/build.sh
quiet bash node/build.sh

echo "== demo on $POLYBUS_URL"
echo "-- rust";   target/release/examples/demo
echo "-- c";      build/demo/c-demo
echo "-- go";     build/demo/go-demo
echo "-- python"; build/venv-python/bin/python examples/python/demo.py
echo "-- node";   node examples/node/demo.mjs
