package polybus

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#include "polybus.h"

#if POLYBUS_ABI_VERSION != 2
#error "include/polybus.h describes a C ABI this package was not written for (POLYBUS_ABI_VERSION != 2)"
#endif
*/
import "C"

import (
	"fmt"
	"sync"
)

// ABIVersion is the version of the C ABI this package was written for; [Open] checks that the
// linked library reports the same.
const ABIVersion = 2

// Version returns the version of the linked polybus library, for example "0.1.0".
func Version() string {
	return C.GoString(C.polybus_version())
}

var checkABI = sync.OnceValue(func() error {
	if v := uint32(C.polybus_abi_version()); v != ABIVersion {
		return &Error{
			Code:    StatusAbiMismatch,
			Message: fmt.Sprintf("abi version mismatch: the library has ABI %d, this package needs %d", v, ABIVersion),
		}
	}
	return nil
})
