#!/usr/bin/env bash
# Builds the Node front end: installs the npm dependencies when needed (npm ci only when
# node_modules is missing or package-lock.json changed) and builds the native module in
# release mode, regenerating native.js and native.d.ts. Works from any directory.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

lock_hash="$(sha256sum package-lock.json | cut -d' ' -f1)"
stamp=node_modules/.polybus-lock-sha256
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$lock_hash" ]]; then
  npm ci --no-audit --no-fund
  echo "$lock_hash" >"$stamp"
fi

npx --no-install napi build --platform --release --js native.js --dts native.d.ts
