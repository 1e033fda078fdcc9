//go:build dynamic

package polybus

// With the dynamic build tag the package links libpolybus.so from target/release and records
// that directory as the run-time search path; set LD_LIBRARY_PATH to use another copy.

// #cgo LDFLAGS: -L${SRCDIR}/../../target/release -Wl,-rpath,${SRCDIR}/../../target/release -lpolybus -lm -ldl -lpthread
import "C"
