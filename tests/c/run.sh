#!/usr/bin/env bash
# Builds and runs the C tests against the static libpolybus; see tests/c/README in SCHEMA terms:
#   api_*    the API on the memory backend      build_*  header and link checks
#   int_*    needs brokers                      leak_*   run under valgrind (no leaks allowed)
# The int_* tests need the brokers of tests/harness/setup.sh (a missing broker fails them); they
# read POLYBUS_TEST_NATS_URL, POLYBUS_TEST_JETSTREAM_URL and POLYBUS_TEST_NATS_AUTH_URL, whose
# defaults are the harness's ports.
# Then conformance.py runs the conformance scenarios (tests/conformance) through the C callback
# path, loading the shared libpolybus.so that the same `cargo build --release -p polybus-ffi`
# makes (the crate is also a cdylib); it covers every backend of features.json, so it needs the
# brokers too, and reads the POLYBUS_TEST_* variables of tests/conformance/SCHEMA.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
lib="${CARGO_TARGET_DIR:-$root/target}/release/libpolybus.a"
# The leak tests link a build on the system allocator, so valgrind sees every allocation.
leak_target="$root/build/target-leak"
leak_lib="$leak_target/release/libpolybus.a"
cargo build --quiet --locked --release -p polybus-ffi --no-default-features --features polybus_core/memory \
  --target-dir "$leak_target"
out="$root/build/c-tests"
mkdir -p "$out"
[ -f "$lib" ] || { echo "missing $lib: run cargo build --release -p polybus-ffi" >&2; exit 1; }
cflags=(-std=c11 -Wall -Wextra -Werror -pedantic -I"$root/include")
link=("$lib" -lssl -lcrypto -lz -lm -ldl -lpthread)
passed=0 failed=0

run() { # name, command...
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok   $name"; else failed=$((failed + 1)); echo "FAIL $name"; fi
}

# The header alone compiles as C11 and as C++17 without warnings.
printf '#include "polybus.h"\nint main(void) { return POLYBUS_ABI_VERSION == 2 ? 0 : 1; }\n' > "$out/header_only.c"
run build_header_c11 gcc "${cflags[@]}" -c "$out/header_only.c" -o "$out/header_c.o"
run build_header_cxx17 g++ -std=c++17 -Wall -Wextra -Werror -pedantic -I"$root/include" -x c++ -c "$out/header_only.c" -o "$out/header_cxx.o"

# build_symbols.c must name every function the header declares.
missing=$(grep -oE '\bpolybus_[a-z_]+\(' "$root/include/polybus.h" | tr -d '(' | sort -u |
  while read -r sym; do grep -q "&$sym,$" "$here/build_symbols.c" || echo "$sym"; done)
if [ -n "$missing" ]; then echo "build_symbols.c misses: $missing" >&2; failed=$((failed + 1)); fi

for src in "$here"/*.c; do
  name=$(basename "$src" .c)
  case "$name" in
    api_* | build_* | int_* | leak_*) ;;
    *) echo "tests/c/$name.c: unknown prefix (use api_, int_, build_ or leak_)" >&2; exit 1 ;;
  esac
  if ! gcc "${cflags[@]}" -D_POSIX_C_SOURCE=200809L "$src" "${link[@]}" -o "$out/$name"; then
    failed=$((failed + 1)); echo "FAIL $name (compile)"; continue
  fi
  run "$name" "$out/$name"
  case "$name" in
    leak_* | api_*)
      gcc "${cflags[@]}" -D_POSIX_C_SOURCE=200809L "$src" "$leak_lib" -lm -ldl -lpthread -o "$out/$name-sysalloc"
      run "$name (valgrind)" valgrind -q --leak-check=full --show-possibly-lost=no \
        --errors-for-leak-kinds=definite --error-exitcode=3 "$out/$name-sysalloc" ;;
  esac
done

# The conformance scenarios, with every handler a C callback (polybus_subscribe).
run conformance_c python3 "$here/conformance.py"
echo "c: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
