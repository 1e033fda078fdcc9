# Sourced by the scripts that build the Go package. Go's build cache does not notice changes to
# include/polybus.h or target/release/libpolybus.a (both live outside the package directory), so
# a fingerprint of the two goes into CGO_CFLAGS, which the cache does key on.
_polybus_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
_polybus_lib="${CARGO_TARGET_DIR:-$_polybus_root/target}/release/libpolybus.a"
CGO_CFLAGS="${CGO_CFLAGS:--g -O2} -DPOLYBUS_BUILD_FINGERPRINT=$(cat "$_polybus_root/include/polybus.h" "$_polybus_lib" | sha256sum | cut -c1-16)"
export CGO_CFLAGS
unset _polybus_root _polybus_lib
