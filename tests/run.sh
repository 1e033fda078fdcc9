#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds once, then runs every suite in its own
# language's runner. Prints one line per suite and fails if any suite failed.
#   POLYBUS_TEST_ONLY="header lint rust c go python node"  to run a subset.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
export PATH="$root/build/tools/bin:$PATH"
only=" ${POLYBUS_TEST_ONLY:-header lint rust c go python node} "
mkdir -p build/logs

bash tests/harness/setup.sh || { echo "setup failed" >&2; exit 1; }

declare -a results=()
failed=0
suite() { # name, command...
  local name=$1; shift
  case "$only" in *" $name "*) ;; *) return 0 ;; esac
  echo "=== $name: $*"
  local start=$SECONDS
  if "$@"; then
    results+=("ok    $name ($((SECONDS - start)) s)")
  else
    results+=("FAIL  $name ($((SECONDS - start)) s)")
    failed=$((failed + 1))
  fi
}

check_header() {
  cbindgen --config ffi/cbindgen.toml --crate polybus-ffi --output include/polybus.h --verify ||
    { echo "include/polybus.h is stale: run make header and commit it" >&2; return 1; }
}

lint() {
  cargo fmt --all --check && cargo clippy --locked --workspace --all-targets -- -D warnings
}

suite header check_header
suite lint lint
suite rust cargo test --locked -p polybus -p polybus-ffi
# One release build of the C library serves C and Go; Python and Node share the target dir.
suite c bash -c 'cargo build --locked --release -p polybus-ffi && bash tests/c/run.sh'
suite go bash bindings/go/test.sh
suite python bash python/test.sh
suite node bash node/test.sh

echo
echo "=== summary"
printf '%s\n' "${results[@]}"
passed=$((${#results[@]} - failed))
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
