#!/usr/bin/env bash
# Builds the Node front end and runs its tests: installs the npm dependencies when needed,
# builds the native module (release), checks that the committed native.js and native.d.ts are
# what the build generates, then runs `node --test`. Works from any directory.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

# npm ci only when node_modules is missing or package-lock.json changed since the last install.
lock_hash="$(sha256sum package-lock.json | cut -d' ' -f1)"
stamp=node_modules/.polybus-lock-sha256
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$lock_hash" ]]; then
  npm ci --no-audit --no-fund
  echo "$lock_hash" >"$stamp"
fi

# Build, keeping the committed generated files to compare with what the build writes.
generated=(native.js native.d.ts)
committed="$(mktemp -d)"
trap 'rm -rf "$committed"' EXIT
for f in "${generated[@]}"; do
  if [[ -f "$f" ]]; then cp "$f" "$committed/$f"; fi
done
npx --no-install napi build --platform --release --js native.js --dts native.d.ts
for f in "${generated[@]}"; do
  if ! cmp -s "$f" "$committed/$f"; then
    echo "test.sh: $f was stale; the build regenerated it: commit the new version" >&2
    diff -u "$committed/$f" "$f" >&2 || true
    exit 1
  fi
done

node --test test/
