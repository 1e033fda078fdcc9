package polybus_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	polybus "github.com/polybus/polybus/bindings/go"
)

// benchBatch is the number of messages per PublishBatch call.
const benchBatch = 256

// benchBus opens a memory bus with one subscriber whose handler counts events and closes done
// after n of them: one publisher, one subscriber, 64-byte payloads.
func benchBus(b *testing.B, n int) (bus *polybus.Bus, done <-chan struct{}) {
	b.Helper()
	ctx := context.Background()
	bus, err := polybus.Open(ctx, "memory://")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { bus.Close() })
	ch := make(chan struct{})
	var count atomic.Int64
	_, err = bus.Subscribe(ctx, "bench.events", func(context.Context, *polybus.Event) error {
		if count.Add(1) == int64(n) {
			close(ch)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return bus, ch
}

// report waits until the subscriber has handled every event and reports events/s from the
// first publish to the last handler call.
func report(b *testing.B, start time.Time, done <-chan struct{}) {
	<-done
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}

// BenchmarkPublish measures Publish in a loop to a subscriber, publish to handler.
func BenchmarkPublish(b *testing.B) {
	bus, done := benchBus(b, b.N)
	payload := make([]byte, 64)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		if err := bus.Publish(ctx, "bench.events", payload); err != nil {
			b.Fatal(err)
		}
	}
	report(b, start, done)
}

// BenchmarkPublishBatch measures PublishBatch of 256 messages to a subscriber, publish to
// handler.
func BenchmarkPublishBatch(b *testing.B) {
	bus, done := benchBus(b, b.N)
	batch := make([]polybus.Message, benchBatch)
	for i := range batch {
		batch[i] = polybus.Message{Topic: "bench.events", Payload: make([]byte, 64)}
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for sent := 0; sent < b.N; sent += benchBatch {
		if err := bus.PublishBatch(ctx, batch[:min(benchBatch, b.N-sent)]); err != nil {
			b.Fatal(err)
		}
	}
	report(b, start, done)
}
