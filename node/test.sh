#!/usr/bin/env bash
# Builds the Node front end (build.sh) and runs its tests: checks that the committed native.js
# and native.d.ts are what the build generates, then runs `node --test`. Works from any directory.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

# Build, keeping the committed generated files to compare with what the build writes.
generated=(native.js native.d.ts)
committed="$(mktemp -d)"
trap 'rm -rf "$committed"' EXIT
for f in "${generated[@]}"; do
  if [[ -f "$f" ]]; then cp "$f" "$committed/$f"; fi
done
bash ./build.sh
for f in "${generated[@]}"; do
  if ! cmp -s "$f" "$committed/$f"; then
    echo "test.sh: $f was stale; the build regenerated it: commit the new version" >&2
    diff -u "$committed/$f" "$f" >&2 || true
    exit 1
  fi
done

# The conformance scenarios run on their own, after the other files (which `node --test` may run
# in parallel, one process per file): a scenario with restart_broker kills the harness's broker,
# which would break any test using it meanwhile (tests/conformance/SCHEMA.md). Within its file
# the runner runs one scenario at a time.
others=()
for f in test/*.test.mjs; do
  [[ "$f" == test/conformance.test.mjs ]] || others+=("$f")
done
status=0
node --test "${others[@]}" || status=$?
node --test test/conformance.test.mjs || status=$?
exit "$status"
