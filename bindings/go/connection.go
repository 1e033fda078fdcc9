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
)

// stateWaitMS bounds each wait for a state change, so a watching goroutine never sits in C for
// long and notices a cancelled context or a closing bus quickly.
const stateWaitMS = 100

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

// waitConnectionState waits at most stateWaitMS for the state to differ from known, and
// reports the new state and whether it differs.
func (b *Bus) waitConnectionState(known ConnectionState) (ConnectionState, bool) {
	c, err := b.acquire()
	if err != nil {
		// Closed and released: the state is final.
		return StateClosed, known != StateClosed
	}
	defer b.mu.RUnlock()
	var out C.int32_t
	if C.polybus_connection_state_wait(c, C.int32_t(known), stateWaitMS, &out, nil) != C.POLYBUS_OK {
		return known, false
	}
	return ConnectionState(out), true
}

// WatchConnectionState returns a channel that receives the current connection state, then
// every change of it. The channel is closed after StateClosed has been sent (when the bus is
// closed) or once ctx is done, whichever comes first.
//
// The channel holds one state: a reader that falls behind receives the latest state, not
// every state in between, so a short drop and its recovery may show as StateConnected alone.
// A goroutine serves the channel; it waits for changes in the core, in steps of at most 100ms,
// and ends with the channel. Reading the channel is optional: the goroutine never blocks on it.
func (b *Bus) WatchConnectionState(ctx context.Context) <-chan ConnectionState {
	ch := make(chan ConnectionState, 1)
	go func() {
		defer close(ch)
		if ctx.Err() != nil {
			return
		}
		state := b.ConnectionState()
		ch <- state
		for state != StateClosed && ctx.Err() == nil {
			next, changed := b.waitConnectionState(state)
			if !changed {
				continue
			}
			state = next
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
