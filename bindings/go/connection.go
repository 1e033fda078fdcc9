package polybus

/*
#include "polybus.h"

#cgo noescape polybus_connection_state
#cgo nocallback polybus_connection_state
#cgo noescape polybus_connection_state_wait
#cgo nocallback polybus_connection_state_wait
*/
import "C"

import (
	"context"
	"strconv"
	"sync"
)

// ConnectionState is the state of a bus's connection to its broker.
//
// A memory:// bus is StateConnected until it is closed. A nats:// or jetstream:// bus moves
// between StateConnected and StateDisconnected as the connection drops and comes back:
// reconnection is automatic and subscriptions survive it. StateClosed is final, after Close.
type ConnectionState int32

// The connection states; the values are those of the C API (POLYBUS_STATE_*).
const (
	// StateConnected means publishes reach the broker.
	StateConnected ConnectionState = C.POLYBUS_STATE_CONNECTED
	// StateDisconnected means the connection was lost and the bus is reconnecting. Publishes
	// may wait or fail meanwhile.
	StateDisconnected ConnectionState = C.POLYBUS_STATE_DISCONNECTED
	// StateClosed means the bus was closed; the state never changes again.
	StateClosed ConnectionState = C.POLYBUS_STATE_CLOSED
)

// String returns "connected", "disconnected" or "closed", the names the core uses.
func (s ConnectionState) String() string {
	switch s {
	case StateConnected:
		return "connected"
	case StateDisconnected:
		return "disconnected"
	case StateClosed:
		return "closed"
	}
	return "ConnectionState(" + strconv.Itoa(int(s)) + ")"
}

// ConnectionState returns the state of the bus's connection to its broker. It never blocks.
// A closed bus (and a nil or unopened one) reports StateClosed.
func (b *Bus) ConnectionState() ConnectionState {
	c, err := b.acquire()
	if err != nil {
		return StateClosed
	}
	defer b.mu.RUnlock()
	var out C.int32_t
	if C.polybus_connection_state(c, &out, nil) != C.POLYBUS_OK {
		// Cannot fail on a live handle with a non-NULL out.
		return StateClosed
	}
	return ConnectionState(out)
}

// stateWatch follows a bus's connection state for WatchConnectionState. One goroutine per bus,
// started by the first watch, waits in the core for each change and publishes it here; every
// watch reads it and waits on changed, so a cancelled watch ends at once, whatever the core
// is doing.
//
// The goroutine waits with no timeout, so nothing polls: polybus_connection_state_wait
// returns when the state changes, and Close ends in StateClosed, which wakes it for the last
// time. That wait cannot be cancelled (the C call takes no cancel handle), which is why it is
// shared rather than made per watch: a watch whose context ended leaves nothing behind, and
// the one goroutine, parked in C on one OS thread, lives as long as the bus, even with no
// watch left. The alternatives were a wait per watch that outlives its context until the next
// change, or waking every 100ms to look at the context, which is what this replaced.
type stateWatch struct {
	once    sync.Once
	mu      sync.Mutex
	state   ConnectionState
	changed chan struct{} // closed when state changes, then replaced
}

// watchState returns the bus's stateWatch, starting the goroutine that follows the state on
// first use.
func (b *Bus) watchState() *stateWatch {
	w := &b.watch
	w.once.Do(func() {
		w.state = b.ConnectionState()
		w.changed = make(chan struct{})
		if w.state != StateClosed {
			go b.followState(w, w.state)
		}
	})
	return w
}

// current returns the latest state and a channel closed when it changes.
func (w *stateWatch) current() (ConnectionState, <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state, w.changed
}

// followState waits for each change of the state after known, and publishes it to w, until
// StateClosed.
func (b *Bus) followState(w *stateWatch, known ConnectionState) {
	for known != StateClosed {
		known = b.waitConnectionState(known)
		w.mu.Lock()
		w.state = known
		close(w.changed)
		w.changed = make(chan struct{})
		w.mu.Unlock()
	}
}

// waitConnectionState waits until the state differs from known, and returns the new state.
// It holds b.mu for reading meanwhile, so that Close cannot free the handle under the wait.
// The core sets StateClosed at the end of its close, before polybus_close returns (or, when
// Shutdown gave up, right after the drain release waits for), so release's b.mu.Lock waits
// for this at most until then.
func (b *Bus) waitConnectionState(known ConnectionState) ConnectionState {
	c, err := b.acquire()
	if err != nil {
		// Closed and released: the state is final.
		return StateClosed
	}
	var out C.int32_t
	st := C.polybus_connection_state_wait(c, C.int32_t(known), -1, &out, nil)
	b.mu.RUnlock()
	if st != C.POLYBUS_OK {
		// Cannot happen (known is a state the core reported): not to spin, the state is
		// taken as unchanged until the bus is closed.
		<-b.done
		return StateClosed
	}
	return ConnectionState(out)
}

// WatchConnectionState returns a channel that receives the current connection state, then
// every change of it. The channel is closed after StateClosed has been sent (when the bus is
// closed) or once ctx is done, whichever comes first.
//
// The channel holds one state: a reader that falls behind receives the latest state, not
// every state in between, so a short drop and its recovery may show as StateConnected alone.
// A goroutine serves the channel and ends with it; reading the channel is optional, the
// goroutine never blocks on it. Changes come from one goroutine per bus, started by the first
// watch, which waits in the core without polling and ends when the bus is closed.
func (b *Bus) WatchConnectionState(ctx context.Context) <-chan ConnectionState {
	ch := make(chan ConnectionState, 1)
	go func() {
		defer close(ch)
		if ctx.Err() != nil {
			return
		}
		if b == nil {
			ch <- StateClosed
			return
		}
		state, changed := b.watchState().current()
		ch <- state
		for state != StateClosed {
			select {
			case <-changed:
			case <-ctx.Done():
				return
			}
			state, changed = b.watchState().current()
			// This goroutine is the only sender: after dropping an unread stale state, the send
			// below cannot block.
			select {
			case <-ch:
			default:
			}
			ch <- state
		}
	}()
	return ch
}
