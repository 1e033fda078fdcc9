// The Go demo: a subscriber and a publisher on one bus (POLYBUS_URL, default memory://), in the
// shape users of due's event bus know: SetDefault, then Subscribe and Publish.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	polybus "github.com/polybus/polybus/bindings/go"
)

type Payload struct {
	Message string `json:"message"`
}

func main() {
	url := os.Getenv("POLYBUS_URL")
	if url == "" {
		url = "memory://"
	}
	ctx := context.Background()
	bus, err := polybus.Open(ctx, url)
	if err != nil {
		log.Fatalf("open %s: %v", url, err)
	}
	polybus.SetDefault(bus)

	seen := make(chan struct{}, 3)
	if _, err := polybus.Subscribe(ctx, "message", func(ctx context.Context, evt *polybus.Event) error {
		payload := &Payload{}
		if err := evt.Scan(payload); err != nil {
			return err
		}
		fmt.Printf("INFO[%s] go     evt id: %s, topic: %s, payload message: %s\n",
			time.Now().UTC().Format("15:04:05.000000"), evt.ID, evt.Topic, payload.Message)
		seen <- struct{}{}
		return nil
	}); err != nil {
		log.Fatalf("subscribe: %v", err)
	}
	for i := 0; i < 3; i++ {
		if err := polybus.Publish(ctx, "message", &Payload{Message: "hello world"}); err != nil {
			log.Fatalf("publish: %v", err)
		}
	}
	timeout := time.After(10 * time.Second)
	for i := 0; i < 3; i++ {
		select {
		case <-seen:
		case <-timeout:
			log.Fatal("the demo events did not arrive")
		}
	}
	if err := bus.Close(); err != nil {
		log.Fatalf("close: %v", err)
	}
}
