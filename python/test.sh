#!/usr/bin/env bash
# Builds the polybus wheel and runs the Python tests (stubtest, then pytest).
#
# Needs python3 (3.9+) with pip and venv, and a Rust toolchain. The virtualenv lives in
# build/venv-python at the repository root and is reused, so a second run only rebuilds.
# Extra arguments go to pytest, for example: python/test.sh -k conformance -x
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="$root/build/venv-python"
py="$venv/bin/python"

bash "$here/build.sh" "pytest>=8:pytest" "pytest-timeout:pytest_timeout" "mypy:mypy" \
    "nats-py>=2.6:nats"

# From tests/, so that `import polybus` finds the installed wheel, not the source tree.
cd "$here/tests"
echo "== stubtest"
"$py" -m mypy.stubtest polybus._polybus --allowlist "$here/stubtest-allowlist.txt"
echo "== pytest"
"$py" -m pytest -c "$here/pyproject.toml" --rootdir "$here" --timeout=120 --durations=15 "$@" "$here/tests"
