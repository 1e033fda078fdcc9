#!/usr/bin/env bash
# Builds libpolybus, checks the generated code is current, then vets and tests the Go package.
# Usage: bindings/go/test.sh [go test flags...]   (from anywhere)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

echo "== cargo build --release -p polybus-ffi"
# Incremental: a no-op when target/release/libpolybus.a is up to date.
(cd "$root" && cargo build --release -p polybus-ffi)

cd "$here"
source "$here/cgo-env.sh"

echo "== go generate (status_gen.go from include/polybus.h)"
go generate ./...
if ! git -C "$root" diff --exit-code -- bindings/go/status_gen.go; then
	echo "status_gen.go was stale: it has been regenerated above; review and commit it" >&2
	exit 1
fi

echo "== gofmt"
unformatted="$(gofmt -l .)"
if [[ -n "$unformatted" ]]; then
	echo "not gofmt-ed: $unformatted" >&2
	exit 1
fi

echo "== go vet"
go vet ./...

echo "== go test -race"
# -v for each test's duration (slow tests stay visible); only the result lines are shown.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
go test -race -count=1 -v "$@" ./... >"$log" 2>&1 || status=$?
grep -E '^(\s*--- (PASS|FAIL|SKIP)|ok |FAIL|panic:)' "$log" || true
if [[ $status -ne 0 ]]; then
	echo "== go test failed; its full output:" >&2
	cat "$log" >&2
fi
exit $status
