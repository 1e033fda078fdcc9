// Command go-peers measures the Go clients polybus's Go users would pick instead, the way their
// documentation recommends for throughput, on the same brokers and workload as polybus's broker
// rows (bench/run.sh): events of POLYBUS_BENCH_SIZE bytes (default 64) in chunks of 4096, one
// subscriber in the same process, from the first publish to the last event received, on a
// fresh subject, stream or topic, after an unreported warm-up round of a quarter. It prints one
// JSON line per case, each with "size" (the payload bytes), "cpu_us_per_event" (this process's
// user and system CPU time over the measured round, per event) and "rss_mb" (the process's
// peak resident set over the measured round, Linux only; 0 elsewhere).
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
//
// POLYBUS_BENCH_CASE picks other cases, as polybus-bench's does:
//
//   - latency: on nats:// only, nats.go's Publish then Flush per message to a plain
//     subscription, at POLYBUS_BENCH_LATENCY_RATE events a second (default 5,000) for
//     POLYBUS_BENCH_LATENCY_SECONDS (default 4) after a second of warm-up; it prints the
//     percentiles of publish-to-handler latency ("nats:// latency nats.go (peer)").
//   - single: each durable client publishing one event at a time, each confirmed before the
//     next, POLYBUS_BENCH_SINGLE_EVENTS events (default 3,000), to the consumer of its batch
//     case: nats.go jetstream's Publish, go-redis's XADD and franz-go's ProduceSync of one
//     record.
//   - fanout: polybus-bench's alone; nothing here.
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

// size is the payload size of every case (POLYBUS_BENCH_SIZE).
var size = 64

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
	size = count("POLYBUS_BENCH_SIZE", 64)
	urls := strings.Split(os.Getenv("POLYBUS_BENCH_URL"), ",")
	switch mode := os.Getenv("POLYBUS_BENCH_CASE"); mode {
	case "":
		n := count("POLYBUS_BENCH_BROKER_EVENTS", 200_000)
		for _, url := range urls {
			throughput(strings.TrimSpace(url), n)
		}
	case "latency":
		rate := count("POLYBUS_BENCH_LATENCY_RATE", 5000)
		seconds := count("POLYBUS_BENCH_LATENCY_SECONDS", 4)
		for _, url := range urls {
			if url = strings.TrimSpace(url); strings.HasPrefix(url, "nats://") {
				natsLatency(url, rate, seconds)
			}
		}
	case "single":
		n := count("POLYBUS_BENCH_SINGLE_EVENTS", 3000)
		for _, url := range urls {
			oneAtATime(strings.TrimSpace(url), n)
		}
	case "fanout":
		// Fan-out and groups are polybus-bench's cases; no peer runs them.
	default:
		fail(fmt.Errorf("POLYBUS_BENCH_CASE=%q: expected latency, single or fanout (or none)", mode))
	}
}

// throughput runs the batch cases of url's clients.
func throughput(url string, n int) {
	switch {
	case strings.HasPrefix(url, "memory://"):
		measure("memory:// watermill gochannel (peer)", n, watermillGoChannel)
	case strings.HasPrefix(url, "nats://"):
		pair(url, n, natsCore, "nats:// nats.go (peer)", "nats:// nats.go with the ce- headers (peer)")
		measure("nats:// watermill-nats (peer)", n, func(k int) run { return watermillNats(url, k) })
	case strings.HasPrefix(url, "jetstream://"):
		pair(url, n, natsJetStream, "jetstream:// nats.go PublishAsync (peer)",
			"jetstream:// nats.go PublishAsync with the ce- headers (peer)")
	case strings.HasPrefix(url, "redis://"):
		pair(url, n, redisStreams, "redis:// go-redis pipelined (peer)",
			"redis:// go-redis pipelined with the ce_ fields (peer)")
		measure("redis:// watermill-redisstream (peer)", min(n, slowEvents),
			func(k int) run { return watermillRedis(url, k) })
	case strings.HasPrefix(url, "kafka://"):
		pair(url, n, kafkaFranz, "kafka:// franz-go (peer)", "kafka:// franz-go with the ce_ headers (peer)")
		measure("kafka:// watermill-kafka, Sarama (peer)", min(n, slowEvents),
			func(k int) run { return watermillKafka(url, k) })
	}
}

// oneAtATime runs the one-at-a-time case of url's durable client, if it has one.
func oneAtATime(url string, n int) {
	bind := func(round func(string, int) run) func(int) run {
		return func(k int) run { return round(url, k) }
	}
	switch {
	case strings.HasPrefix(url, "jetstream://"):
		measure("jetstream:// nats.go jetstream Publish one at a time (peer)", n, bind(natsJetStreamOne))
	case strings.HasPrefix(url, "redis://"):
		measure("redis:// go-redis XADD one at a time (peer)", n, bind(redisStreamsOne))
	case strings.HasPrefix(url, "kafka://"):
		measure("kafka:// franz-go ProduceSync one at a time (peer)", n, bind(kafkaFranzOne))
	}
}

// measure runs an unreported warm-up round of a quarter of n events, then n events, and emits
// the second round as case name.
func measure(name string, n int, round func(int) run) {
	round(max(1, n/4))
	emit(name, n, round(n))
}

// pair measures a client twice: plain, and with polybus's wire (the CloudEvents headers or
// stream fields it carries).
func pair(url string, n int, round func(string, int, bool) run, plain, sameWire string) {
	measure(plain, n, func(k int) run { return round(url, k, false) })
	measure(sameWire, n, func(k int) run { return round(url, k, true) })
}

// slowEvents bounds the rounds of the peers that publish one message per round trip.
const slowEvents = 20_000

func unique() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "peer" + hex.EncodeToString(b[:])
}

func natsCore(url string, n int, headers bool) run {
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
	payload := make([]byte, size)
	var id [16]byte
	u := start()
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
	return u.stop(n)
}

// natsLatency is nats.go's latency: each message published and flushed, to a plain
// subscription, at rate a second for seconds after a second of warm-up.
func natsLatency(url string, rate, seconds int) {
	warm := rate
	l := newLatency(warm + rate*seconds)
	nc, err := nats.Connect(url)
	if err != nil {
		fail(err)
	}
	defer nc.Close()
	subject := unique() + ".latency"
	if _, err := nc.Subscribe(subject, func(m *nats.Msg) { l.arrived(m.Data) }); err != nil {
		fail(err)
	}
	if err := nc.Flush(); err != nil {
		fail(err)
	}
	l.run("nats:// latency nats.go (peer)", rate, warm, func(p []byte) {
		if err := nc.Publish(subject, p); err != nil {
			fail(err)
		}
		if err := nc.Flush(); err != nil {
			fail(err)
		}
	})
}

// jetStreamConsumer makes a fresh stream and a durable consumer on it, consumed (pulled) and
// each message acknowledged, the subscriber of the jetstream cases. It gives the JetStream
// context, the stream's subject, a channel closed once n messages were consumed and what
// removes it all.
func jetStreamConsumer(url string, n int) (js jetstream.JetStream, subject string, done <-chan struct{}, stop func()) {
	ctx := context.Background()
	nc, err := nats.Connect(strings.Replace(url, "jetstream://", "nats://", 1))
	if err != nil {
		fail(err)
	}
	js, err = jetstream.New(nc)
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
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: "bench", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 4096,
	})
	if err != nil {
		fail(err)
	}
	consumed := make(chan struct{})
	var seen atomic.Int64
	cc, err := cons.Consume(func(m jetstream.Msg) {
		_ = m.Ack()
		if seen.Add(1) == int64(n) {
			close(consumed)
		}
	})
	if err != nil {
		fail(err)
	}
	return js, name + ".events", consumed, func() {
		cc.Stop()
		_ = js.DeleteStream(ctx, strings.ToUpper(name))
		nc.Close()
	}
}

func natsJetStream(url string, n int, headers bool) run {
	js, subject, done, stop := jetStreamConsumer(url, n)
	defer stop()
	payload := make([]byte, size)
	var id [16]byte
	var err error
	u := start()
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
	return u.stop(n)
}

// natsJetStreamOne is jetstream's synchronous Publish, each PubAck awaited before the next
// publish, to the consumer of the PublishAsync case.
func natsJetStreamOne(url string, n int) run {
	js, subject, done, stop := jetStreamConsumer(url, n)
	defer stop()
	ctx := context.Background()
	payload := make([]byte, size)
	u := start()
	for range n {
		if _, err := js.Publish(ctx, subject, payload); err != nil {
			fail(err)
		}
	}
	<-done
	return u.stop(n)
}

// redisReader makes a fresh stream with a consumer group, read by XREADGROUP (up to a chunk
// a call) with the entries read acknowledged by pipelined XACK, the subscriber of the redis
// cases. It gives a client to publish with, the stream, a channel closed once n entries were
// read and what removes it all.
func redisReader(url string, n int) (pub *redis.Client, stream string, done <-chan struct{}, stop func()) {
	ctx := context.Background()
	opt, err := redis.ParseURL(url)
	if err != nil {
		fail(err)
	}
	pub, sub := redis.NewClient(opt), redis.NewClient(opt)
	stream = unique() + ":events"
	if err := pub.XGroupCreateMkStream(ctx, stream, "bench", "0").Err(); err != nil {
		fail(err)
	}
	read := make(chan struct{})
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
		close(read)
	}()
	return pub, stream, read, func() {
		pub.Del(ctx, stream)
		_ = sub.Close()
		_ = pub.Close()
	}
}

func redisStreams(url string, n int, fields bool) run {
	ctx := context.Background()
	pub, stream, done, stop := redisReader(url, n)
	defer stop()
	payload := make([]byte, size)
	var id [16]byte
	u := start()
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
	return u.stop(n)
}

// redisStreamsOne is one XADD per event, each reply awaited before the next, to the reader of
// the pipelined case.
func redisStreamsOne(url string, n int) run {
	ctx := context.Background()
	pub, stream, done, stop := redisReader(url, n)
	defer stop()
	payload := make([]byte, size)
	u := start()
	for range n {
		if err := pub.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"data", payload}}).Err(); err != nil {
			fail(err)
		}
	}
	<-done
	return u.stop(n)
}

func emit(name string, n int, r run) {
	line, _ := json.Marshal(map[string]any{
		"lang": "go", "case": name, "events": n, "seconds": r.elapsed.Seconds(),
		"events_per_sec": int64(float64(n) / r.elapsed.Seconds()),
		"size":           size, "cpu_us_per_event": r.cpuPerEvent, "rss_mb": r.rssMB,
	})
	fmt.Println(string(line))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "go-peers:", err)
	os.Exit(1)
}
