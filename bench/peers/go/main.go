// Command go-peers measures the Go clients polybus's Go users would pick instead, the way their
// documentation recommends for throughput, on the same brokers and workload as polybus's broker
// rows (bench/run.sh): 64-byte events in chunks of 4096, one subscriber in the same process,
// from the first publish to the last event received, on a fresh subject, stream or topic, after
// an unreported warm-up round of a quarter. It prints one JSON line per case.
//
//	POLYBUS_BENCH_URL=nats://127.0.0.1:4222,jetstream://127.0.0.1:4222,redis://127.0.0.1:6390,kafka://127.0.0.1:9092,memory:// \
//	  POLYBUS_BENCH_BROKER_EVENTS=200000 go run .
//
// nats:// runs nats.go twice: plain messages, and with the CloudEvents headers polybus's wire
// carries (a fresh id per event). jetstream:// is nats.go's jetstream PublishAsync (every
// PubAck awaited per chunk) with a pull consumer acknowledging each message, plain and with
// the ce- headers plus Nats-Msg-Id (the event id, which the server de-duplicates on), as
// polybus publishes. redis:// is go-redis v9 with pipelined XADD, and XREADGROUP + pipelined
// XACK per batch read, once with one field per entry and once with the CloudEvents fields
// polybus's entries carry. kafka:// is franz-go (kafka.go), plain and with the ce_ record
// headers polybus's records carry.
//
// The event-bus view, Watermill (watermill.go): gochannel on memory://, watermill-nats on
// nats://, watermill-redisstream on redis:// and watermill-kafka (Sarama) on kafka://, each
// with Watermill's own wire (a UUID per message) and an Ack per message. watermill-redisstream
// and watermill-kafka write one message per round trip (about 2,300 a second here), so they
// run at most slowEvents events: a rate, not a total, is what is compared.
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

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
)

const chunk = 4096

func main() {
	n := 200_000
	if s := os.Getenv("POLYBUS_BENCH_BROKER_EVENTS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v <= 0 {
			fail(fmt.Errorf("POLYBUS_BENCH_BROKER_EVENTS=%q is not a positive count", s))
		}
		n = v
	}
	for _, url := range strings.Split(os.Getenv("POLYBUS_BENCH_URL"), ",") {
		url = strings.TrimSpace(url)
		switch {
		case strings.HasPrefix(url, "memory://"):
			measure("memory:// watermill gochannel (peer)", n, watermillGoChannel)
		case strings.HasPrefix(url, "nats://"):
			pair(url, n, natsCore, "nats:// nats.go (peer)", "nats:// nats.go with the ce- headers (peer)")
			measure("nats:// watermill-nats (peer)", n, func(k int) time.Duration { return watermillNats(url, k) })
		case strings.HasPrefix(url, "jetstream://"):
			pair(url, n, natsJetStream, "jetstream:// nats.go PublishAsync (peer)",
				"jetstream:// nats.go PublishAsync with the ce- headers (peer)")
		case strings.HasPrefix(url, "redis://"):
			pair(url, n, redisStreams, "redis:// go-redis pipelined (peer)",
				"redis:// go-redis pipelined with the ce_ fields (peer)")
			measure("redis:// watermill-redisstream (peer)", min(n, slowEvents),
				func(k int) time.Duration { return watermillRedis(url, k) })
		case strings.HasPrefix(url, "kafka://"):
			pair(url, n, kafkaFranz, "kafka:// franz-go (peer)", "kafka:// franz-go with the ce_ headers (peer)")
			measure("kafka:// watermill-kafka, Sarama (peer)", min(n, slowEvents),
				func(k int) time.Duration { return watermillKafka(url, k) })
		}
	}
}

// measure runs an unreported warm-up round of a quarter of n events, then n events, and emits
// the second round as case name.
func measure(name string, n int, round func(int) time.Duration) {
	round(max(1, n/4))
	emit(name, n, round(n))
}

// pair measures a client twice: plain, and with polybus's wire (the CloudEvents headers or
// stream fields it carries).
func pair(url string, n int, round func(string, int, bool) time.Duration, plain, sameWire string) {
	measure(plain, n, func(k int) time.Duration { return round(url, k, false) })
	measure(sameWire, n, func(k int) time.Duration { return round(url, k, true) })
}

// slowEvents bounds the rounds of the peers that publish one message per round trip.
const slowEvents = 20_000

func unique() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "peer" + hex.EncodeToString(b[:])
}

func natsCore(url string, n int, headers bool) time.Duration {
	nc, err := nats.Connect(url)
	if err != nil {
		fail(err)
	}
	defer nc.Close()
	subject := unique() + ".events"
	done := make(chan struct{})
	var seen atomic.Int64
	sub, err := nc.Subscribe(subject, func(*nats.Msg) {
		if seen.Add(1) == int64(n) {
			close(done)
		}
	})
	if err != nil {
		fail(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	if err := nc.Flush(); err != nil {
		fail(err)
	}
	payload := make([]byte, 64)
	var id [16]byte
	start := time.Now()
	for sent := 0; sent < n; sent += chunk {
		for range min(chunk, n-sent) {
			if headers {
				_, _ = rand.Read(id[:])
				m := nats.NewMsg(subject)
				m.Data = payload
				m.Header.Set("ce-specversion", "1.0")
				m.Header.Set("ce-id", hex.EncodeToString(id[:]))
				m.Header.Set("ce-type", "bench.events")
				m.Header.Set("ce-time", "2026-12-07T13:30:00.123456Z")
				err = nc.PublishMsg(m)
			} else {
				err = nc.Publish(subject, payload)
			}
			if err != nil {
				fail(err)
			}
		}
		if err := nc.Flush(); err != nil {
			fail(err)
		}
	}
	<-done
	return time.Since(start)
}

func natsJetStream(url string, n int, headers bool) time.Duration {
	ctx := context.Background()
	nc, err := nats.Connect(strings.Replace(url, "jetstream://", "nats://", 1))
	if err != nil {
		fail(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		fail(err)
	}
	name := unique()
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: strings.ToUpper(name), Subjects: []string{name + ".>"},
	})
	if err != nil {
		fail(err)
	}
	defer func() { _ = js.DeleteStream(ctx, strings.ToUpper(name)) }()
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: "bench", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 4096,
	})
	if err != nil {
		fail(err)
	}
	done := make(chan struct{})
	var seen atomic.Int64
	cc, err := cons.Consume(func(m jetstream.Msg) {
		_ = m.Ack()
		if seen.Add(1) == int64(n) {
			close(done)
		}
	})
	if err != nil {
		fail(err)
	}
	defer cc.Stop()
	subject := name + ".events"
	payload := make([]byte, 64)
	var id [16]byte
	start := time.Now()
	for sent := 0; sent < n; sent += chunk {
		for range min(chunk, n-sent) {
			if headers {
				_, _ = rand.Read(id[:])
				eventID := hex.EncodeToString(id[:])
				m := nats.NewMsg(subject)
				m.Data = payload
				m.Header.Set("ce-specversion", "1.0")
				m.Header.Set("ce-id", eventID)
				m.Header.Set("ce-type", "bench.events")
				m.Header.Set("ce-time", "2026-12-07T13:30:00.123456Z")
				m.Header.Set(jetstream.MsgIDHeader, eventID)
				_, err = js.PublishMsgAsync(m)
			} else {
				_, err = js.PublishAsync(subject, payload)
			}
			if err != nil {
				fail(err)
			}
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(30 * time.Second):
			fail(fmt.Errorf("jetstream: publishes not confirmed within 30 s"))
		}
	}
	<-done
	return time.Since(start)
}

func redisStreams(url string, n int, fields bool) time.Duration {
	ctx := context.Background()
	opt, err := redis.ParseURL(url)
	if err != nil {
		fail(err)
	}
	pub, sub := redis.NewClient(opt), redis.NewClient(opt)
	defer pub.Close()
	defer sub.Close()
	stream := unique() + ":events"
	defer pub.Del(ctx, stream)
	if err := pub.XGroupCreateMkStream(ctx, stream, "bench", "0").Err(); err != nil {
		fail(err)
	}
	done := make(chan struct{})
	go func() {
		seen := 0
		for seen < n {
			res, err := sub.XReadGroup(ctx, &redis.XReadGroupArgs{
				Group: "bench", Consumer: "c", Streams: []string{stream, ">"}, Count: chunk,
				Block: time.Second,
			}).Result()
			if err == redis.Nil {
				continue
			}
			if err != nil {
				fail(err)
			}
			p := sub.Pipeline()
			for _, s := range res {
				for _, m := range s.Messages {
					p.XAck(ctx, stream, "bench", m.ID)
					seen++
				}
			}
			if _, err := p.Exec(ctx); err != nil {
				fail(err)
			}
		}
		close(done)
	}()
	payload := make([]byte, 64)
	var id [16]byte
	start := time.Now()
	for sent := 0; sent < n; sent += chunk {
		p := pub.Pipeline()
		for range min(chunk, n-sent) {
			values := []any{"data", payload}
			if fields {
				_, _ = rand.Read(id[:])
				values = []any{"payload", payload, "ce_specversion", "1.0",
					"ce_id", hex.EncodeToString(id[:]), "ce_type", "bench.events",
					"ce_time", "2026-12-07T13:30:00.123456Z"}
			}
			p.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: values})
		}
		if _, err := p.Exec(ctx); err != nil {
			fail(err)
		}
	}
	<-done
	return time.Since(start)
}

func emit(name string, n int, d time.Duration) {
	line, _ := json.Marshal(map[string]any{
		"lang": "go", "case": name, "events": n, "seconds": d.Seconds(),
		"events_per_sec": int64(float64(n) / d.Seconds()),
	})
	fmt.Println(string(line))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "go-peers:", err)
	os.Exit(1)
}
