// Command polybus-bench measures events per second from publish to handler on memory://: one
// publisher, one subscriber, 64-byte payloads, the handler counting events. It prints one JSON
// line per case, as bench/run.sh expects, beside an in-process peer (a buffered Go channel).
//
//	POLYBUS_BENCH_EVENTS=2000000 go run ./cmd/polybus-bench
//
// Broker rows: with POLYBUS_BENCH_URL (one URL or several, comma-separated, for example
// nats://127.0.0.1:4222,jetstream://127.0.0.1:4222) it measures PublishBatch on each broker
// instead, as the Rust core's, Python's and Node's broker cases do: chunks of 4096, one
// subscriber, from the first publish to the last event handled, on a fresh prefix, after an
// unreported warm-up round of a quarter; POLYBUS_BENCH_BROKER_EVENTS events (default 200,000).
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
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

// count reads a positive count from the environment variable name, or gives def.
func count(name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil || v <= 0 {
		fail(fmt.Errorf("%s=%q is not a positive count", name, s))
	}
	return v
}

func main() {
	if urls := os.Getenv("POLYBUS_BENCH_URL"); urls != "" {
		n := count("POLYBUS_BENCH_BROKER_EVENTS", 200_000)
		for _, url := range strings.Split(urls, ",") {
			if url = strings.TrimSpace(url); url == "" {
				continue
			}
			runBroker(url, max(1, n/4))
			scheme := url[:strings.Index(url, "://")+3]
			emit("go "+scheme+" PublishBatch", n, runBroker(url, n))
		}
		return
	}
	n := count("POLYBUS_BENCH_EVENTS", 2_000_000)
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

// runBroker publishes n events to url in batches of 4096 on a fresh prefix and returns the
// time until the handler has seen the last one.
func runBroker(url string, n int) time.Duration {
	ctx := context.Background()
	var id [16]byte
	_, _ = rand.Read(id[:])
	cfg := map[string]any{"url": url, "prefix": "bench" + hex.EncodeToString(id[:])}
	if strings.HasPrefix(url, "redis") {
		// Streams untrimmed, so a lagging reader loses none.
		cfg["redis"] = map[string]any{"max_len": 0}
	}
	text, _ := json.Marshal(cfg)
	bus, err := polybus.OpenJSON(ctx, string(text))
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
	const chunk = 4096
	payload := make([]byte, 64)
	batch := make([]polybus.Message, chunk)
	for i := range batch {
		batch[i] = polybus.Message{Topic: "bench.events", Payload: payload}
	}
	start := time.Now()
	for sent := 0; sent < n; sent += chunk {
		if err := bus.PublishBatch(ctx, batch[:min(chunk, n-sent)]); err != nil {
			fail(err)
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
