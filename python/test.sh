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
wheels="$root/build/wheels"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    # Debian ships the venv module separately (python3-venv); fall back to virtualenv.
    if ! "$python" -m venv "$venv" 2>/dev/null; then
        rm -rf "$venv"
        "$python" -m pip install --quiet --user --break-system-packages virtualenv
        "$python" -m virtualenv --quiet "$venv"
    fi
fi
py="$venv/bin/python"

# Tools, installed once.
need=()
for spec in "maturin>=1.5,<2:maturin" "pytest>=8:pytest" "pytest-timeout:pytest_timeout" "mypy:mypy"; do
    module="${spec##*:}"
    "$py" -c "import $module" 2>/dev/null || need+=("${spec%:*}")
done
if ((${#need[@]})); then
    "$py" -m pip install --quiet --disable-pip-version-check "${need[@]}"
fi

# The wheel (abi3), built and installed.
rm -f "$wheels"/polybus-*.whl
"$venv/bin/maturin" build --release --quiet --manifest-path "$here/Cargo.toml" --out "$wheels" \
    --interpreter "$py"
"$py" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall \
    "$wheels"/polybus-*.whl

# From tests/, so that `import polybus` finds the installed wheel, not the source tree.
cd "$here/tests"
echo "== stubtest"
"$py" -m mypy.stubtest polybus._polybus --allowlist "$here/stubtest-allowlist.txt"
echo "== pytest"
"$py" -m pytest -c "$here/pyproject.toml" --rootdir "$here" --timeout=120 "$@" "$here/tests"
