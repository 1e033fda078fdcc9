package polybus

/*
#include "polybus.h"

#cgo noescape polybus_queue_next_batch
#cgo nocallback polybus_queue_next_batch
#cgo noescape polybus_batch_complete
#cgo nocallback polybus_batch_complete
*/
import "C"

import (
	"bytes"
	"runtime"
	"sync"
	"sync/atomic"
)

// The size of a bus's delivery pool: at least minWorkers goroutines, so that a handler waiting
// on another subscription of its bus does not starve it; as many as the largest concurrency
// asked for, up to maxWorkers (the cap the C library puts on its own dispatcher threads).
const (
	minWorkers = 2
	maxWorkers = 4096
)

// pool is the set of goroutines that drain a bus's delivery queue. Every subscription of the
// bus feeds that one queue; each goroutine waits in polybus_queue_next_batch (woken by the
// core when a batch arrives, no polling), finds the subscription by the batch's token and runs
// its handler on the events. The pool grows with the largest concurrency any subscription
// asked for and never shrinks; its goroutines end when the queue does (the bus closed and
// every subscription drained).
type pool struct {
	mu   sync.Mutex
	size int // goroutines started
	wg   sync.WaitGroup

	// workers maps the goroutine id of each pool goroutine to its *worker, so that Close can
	// tell it is called from a handler (see currentGoroutineID).
	workers sync.Map
}

// worker is the state of one pool goroutine that Close looks at.
type worker struct {
	// sub is the subscription whose batch the goroutine is handling, nil between batches.
	sub atomic.Pointer[Subscription]
}

// grow starts goroutines serving b's queue until there are n, bounded by minWorkers and
// maxWorkers.
func (p *pool) grow(b *Bus, n int) {
	n = min(max(n, minWorkers), maxWorkers)
	p.mu.Lock()
	defer p.mu.Unlock()
	for ; p.size < n; p.size++ {
		p.wg.Add(1)
		go p.serve(b)
	}
}

// serve is the body of a pool goroutine: it handles batches until the queue ends.
func (p *pool) serve(b *Bus) {
	defer p.wg.Done()
	w := new(worker)
	id := currentGoroutineID()
	p.workers.Store(id, w)
	defer p.workers.Delete(id)
	var (
		cp     copier
		detail C.polybus_error_t
	)
	for {
		var batch C.polybus_event_batch_t
		switch C.polybus_queue_next_batch(b.queue, -1, &batch, &detail) {
		case C.POLYBUS_OK:
		case C.POLYBUS_NO_EVENTS:
			continue
		default:
			// POLYBUS_ERR_CLOSED: the queue is closed and every subscription has drained.
			return
		}
		v, ok := b.subs.Load(uint64(batch.token))
		if !ok {
			// The subscription is gone (its close timed out): hand the events back, no
			// failure counted.
			C.polybus_batch_complete(batch.batch, 0, nil, nil)
			continue
		}
		s := v.(*Subscription)
		w.sub.Store(s)
		s.handle(&batch, &cp)
		w.sub.Store(nil)
	}
}

// running returns the subscription whose handler the goroutine id is running, when id is one
// of the pool's goroutines (nil otherwise), and whether it is one of them.
func (p *pool) running(id int64) (*Subscription, bool) {
	v, ok := p.workers.Load(id)
	if !ok {
		return nil, false
	}
	return v.(*worker).sub.Load(), true
}

// currentGoroutineID returns the id of the calling goroutine, read from the first line of its
// stack trace ("goroutine 42 [running]:"). Go offers no other way; it costs about a
// microsecond, paid once per pool goroutine and once per Close.
func currentGoroutineID() int64 {
	var buf [64]byte
	line := buf[:runtime.Stack(buf[:], false)]
	line, ok := bytes.CutPrefix(line, []byte("goroutine "))
	if !ok {
		return -1
	}
	var id int64
	for _, c := range line {
		if c < '0' || c > '9' {
			break
		}
		id = id*10 + int64(c-'0')
	}
	return id
}
