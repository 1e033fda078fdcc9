package polybus_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	polybus "github.com/polybus/polybus/bindings/go"
)

func Example() {
	ctx := context.Background()
	bus, err := polybus.Open(ctx, "memory://")
	if err != nil {
		panic(err)
	}
	_, err = bus.Subscribe(ctx, "orders.*", func(_ context.Context, e *polybus.Event) error {
		fmt.Printf("%s: %s (attempt %d)\n", e.Topic, e.Payload, e.Attempt)
		return nil
	})
	if err != nil {
		panic(err)
	}
	if err := bus.Publish(ctx, "orders.created", "order 1"); err != nil {
		panic(err)
	}
	// Close drains: the handler has run when it returns.
	if err := bus.Close(); err != nil {
		panic(err)
	}
	// Output: orders.created: order 1 (attempt 1)
}

func ExampleEvent_Scan() {
	type order struct {
		ID    int      `json:"id"`
		Items []string `json:"items"`
	}
	ctx := context.Background()
	bus, err := polybus.Open(ctx, "memory://")
	if err != nil {
		panic(err)
	}
	defer bus.Close()
	done := make(chan struct{})
	_, err = bus.Subscribe(ctx, "orders.created", func(_ context.Context, e *polybus.Event) error {
		defer close(done)
		var o order
		if err := e.Scan(&o); err != nil {
			return err
		}
		fmt.Println(o.ID, o.Items)
		return nil
	})
	if err != nil {
		panic(err)
	}
	// A value that is not a []byte or string is published as JSON.
	if err := bus.Publish(ctx, "orders.created", order{ID: 42, Items: []string{"book"}}); err != nil {
		panic(err)
	}
	<-done
	// Output: 42 [book]
}

func ExampleBus_Subscribe_group() {
	ctx := context.Background()
	bus, err := polybus.OpenConfig(ctx, polybus.Config{URL: "memory://", Name: "billing"})
	if err != nil {
		panic(err)
	}
	handled := make(chan string, 4)
	handler := func(_ context.Context, e *polybus.Event) error {
		handled <- string(e.Payload)
		return nil
	}
	// Two members of the group "billing" share the events; each event goes to one of them.
	for range 2 {
		_, err := bus.Subscribe(ctx, "invoices.>", handler,
			polybus.WithGroup("billing"), polybus.WithConcurrency(2), polybus.WithMaxAttempts(3))
		if err != nil {
			panic(err)
		}
	}
	for i := range 4 {
		if err := bus.Publish(ctx, "invoices.created", fmt.Sprint(i)); err != nil {
			panic(err)
		}
	}
	if err := bus.Close(); err != nil {
		panic(err)
	}
	fmt.Println(len(handled), "events handled once each")
	// Output: 4 events handled once each
}

func ExampleBus_PublishMessage() {
	ctx := context.Background()
	bus, err := polybus.Open(ctx, "memory://")
	if err != nil {
		panic(err)
	}
	_, err = bus.Subscribe(ctx, "orders.>", func(_ context.Context, e *polybus.Event) error {
		fmt.Println(e.Topic, e.Key, e.Headers["tenant"], e.ID, e.Type, string(e.Payload))
		return nil
	})
	if err != nil {
		panic(err)
	}
	err = bus.PublishMessage(ctx, polybus.Message{
		Topic:   "orders.created",
		Payload: []byte("hi"),
		Key:     "order-7",
		Headers: map[string]string{"tenant": "acme"},
		ID:      "evt-1",
		Type:    "order.created",
	})
	if err != nil {
		panic(err)
	}
	if err := bus.Close(); err != nil {
		panic(err)
	}
	// Output: orders.created order-7 acme evt-1 order.created hi
}

func ExampleBus_Subscribe_retry() {
	ctx := context.Background()
	bus, err := polybus.Open(ctx, "memory://")
	if err != nil {
		panic(err)
	}
	// A handler error (or panic) is a nack: the core delivers the event again.
	_, err = bus.Subscribe(ctx, "jobs.run", func(_ context.Context, e *polybus.Event) error {
		fmt.Println("attempt", e.Attempt)
		if e.Attempt < 3 {
			return errors.New("not yet")
		}
		return nil
	}, polybus.WithBackoffInitial(time.Millisecond), polybus.WithMaxAttempts(5))
	if err != nil {
		panic(err)
	}
	if err := bus.Publish(ctx, "jobs.run", nil); err != nil {
		panic(err)
	}
	if err := bus.Close(); err != nil {
		panic(err)
	}
	stats, _ := bus.Stats()
	fmt.Println("failed", stats.Failed, "acked", stats.Acked)
	// Output:
	// attempt 1
	// attempt 2
	// attempt 3
	// failed 2 acked 1
}

func ExampleSetDefault() {
	ctx := context.Background()
	bus, err := polybus.Open(ctx, "memory://")
	if err != nil {
		panic(err)
	}
	polybus.SetDefault(bus)
	defer polybus.SetDefault(nil)

	_, err = polybus.Subscribe(ctx, "greetings", func(_ context.Context, e *polybus.Event) error {
		fmt.Println(string(e.Payload))
		return nil
	})
	if err != nil {
		panic(err)
	}
	if err := polybus.Publish(ctx, "greetings", []byte("hello")); err != nil {
		panic(err)
	}
	if err := bus.Close(); err != nil {
		panic(err)
	}
	// Output: hello
}

func ExampleError() {
	ctx := context.Background()
	bus, err := polybus.Open(ctx, "memory://")
	if err != nil {
		panic(err)
	}
	bus.Close()
	err = bus.Publish(ctx, "orders.created", "late")
	fmt.Println(errors.Is(err, polybus.ErrClosed))
	var pe *polybus.Error
	if errors.As(err, &pe) {
		fmt.Println(pe.Code)
	}
	// Output:
	// true
	// POLYBUS_ERR_CLOSED
}

func ExampleBus_WatchConnectionState() {
	ctx := context.Background()
	bus, err := polybus.Open(ctx, "memory://")
	if err != nil {
		panic(err)
	}
	fmt.Println(bus.ConnectionState())
	states := bus.WatchConnectionState(ctx)
	fmt.Println("watching:", <-states)
	if err := bus.Close(); err != nil {
		panic(err)
	}
	// The channel reports the close, then ends.
	for s := range states {
		fmt.Println("watching:", s)
	}
	// Output:
	// connected
	// watching: connected
	// watching: closed
}

func ExampleBus_Shutdown() {
	bus, err := polybus.Open(context.Background(), "memory://")
	if err != nil {
		panic(err)
	}
	started, release := make(chan struct{}), make(chan struct{})
	_, err = bus.Subscribe(context.Background(), "orders.*", func(context.Context, *polybus.Event) error {
		close(started)
		<-release // a slow handler
		return nil
	})
	if err != nil {
		panic(err)
	}
	if err := bus.Publish(context.Background(), "orders.created", "order 1"); err != nil {
		panic(err)
	}
	<-started

	// Shutdown stops waiting when its context ends; the bus is closed either way.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err = bus.Shutdown(ctx)
	fmt.Println(errors.Is(err, context.DeadlineExceeded), errors.Is(err, polybus.ErrTimeout))
	fmt.Println(err)
	fmt.Println(errors.Is(bus.Publish(context.Background(), "orders.created", "late"), polybus.ErrClosed))

	// The drain went on in the background; Close waits for it.
	close(release)
	if err := bus.Close(); err != nil {
		panic(err)
	}
	st, _ := bus.Stats()
	fmt.Println("acked:", st.Acked)
	// Output:
	// true true
	// timed out: close: the caller's deadline passed; the bus is closed and its drain goes on in the background
	// true
	// acked: 1
}
