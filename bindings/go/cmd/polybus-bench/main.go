// Command polybus-bench measures events per second from publish to handler on memory://: one
// publisher, one subscriber, 64-byte payloads, the handler counting events. It prints one JSON
// line per case, as bench/run.sh expects, beside an in-process peer (a buffered Go channel).
//
//	POLYBUS_BENCH_EVENTS=2000000 go run ./cmd/polybus-bench
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	polybus "github.com/polybus/polybus/bindings/go"
)

const batchSize = 1024

type result struct {
	Lang         string  `json:"lang"`
	Case         string  `json:"case"`
	Events       int     `json:"events"`
	Seconds      float64 `json:"seconds"`
	EventsPerSec int64   `json:"events_per_sec"`
}

func main() {
	n := 2_000_000
	if s := os.Getenv("POLYBUS_BENCH_EVENTS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v <= 0 {
			fail(fmt.Errorf("POLYBUS_BENCH_EVENTS=%q is not a positive count", s))
		}
		n = v
	}
	emit("go Bus.Publish", n, runBus(n, false))
	emit("go Bus.PublishBatch", n, runBus(n, true))
	emit("go chan (peer)", n, runChan(n))
}

// runBus publishes n events, one at a time or in batches, and returns the time until the
// handler has seen the last one.
func runBus(n int, batched bool) time.Duration {
	ctx := context.Background()
	bus, err := polybus.Open(ctx, "memory://")
	if err != nil {
		fail(err)
	}
	defer bus.Close()
	done := make(chan struct{})
	var seen atomic.Int64
	_, err = bus.Subscribe(ctx, "bench.events", func(context.Context, *polybus.Event) error {
		if seen.Add(1) == int64(n) {
			close(done)
		}
		return nil
	})
	if err != nil {
		fail(err)
	}
	payload := make([]byte, 64)
	batch := make([]polybus.Message, batchSize)
	for i := range batch {
		batch[i] = polybus.Message{Topic: "bench.events", Payload: payload}
	}
	start := time.Now()
	if batched {
		for sent := 0; sent < n; sent += batchSize {
			if err := bus.PublishBatch(ctx, batch[:min(batchSize, n-sent)]); err != nil {
				fail(err)
			}
		}
	} else {
		for range n {
			if err := bus.Publish(ctx, "bench.events", payload); err != nil {
				fail(err)
			}
		}
	}
	<-done
	return time.Since(start)
}

// runChan is the peer: the same workload through a buffered channel to one goroutine.
func runChan(n int) time.Duration {
	ch := make(chan []byte, 1024)
	done := make(chan struct{})
	go func() {
		seen := 0
		for range ch {
			if seen++; seen == n {
				close(done)
			}
		}
	}()
	start := time.Now()
	for range n {
		ch <- make([]byte, 64)
	}
	<-done
	close(ch)
	return time.Since(start)
}

func emit(name string, n int, d time.Duration) {
	line, _ := json.Marshal(result{
		Lang: "go", Case: name, Events: n, Seconds: d.Seconds(),
		EventsPerSec: int64(float64(n) / d.Seconds()),
	})
	fmt.Println(string(line))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "polybus-bench:", err)
	os.Exit(1)
}
