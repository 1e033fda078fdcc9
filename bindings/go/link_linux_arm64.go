//go:build !dynamic

package polybus

// Links the static libpolybus.a by full path: with -lpolybus the linker would silently prefer
// libpolybus.so when both are in target/release. Build it with
// `cargo build --release -p polybus-ffi` from the repository root.

// #cgo LDFLAGS: ${SRCDIR}/../../target/release/libpolybus.a -lssl -lcrypto -lz -lm -ldl -lpthread
import "C"
