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

node --test test/
