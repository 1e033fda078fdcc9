package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// kafkaFranz is franz-go with the settings of the Rust peer (core/benches/pubsub.rs): a fresh
// topic of one partition, an idempotent producer with acks=all (linger 5 ms), its records
// produced asynchronously and every chunk's awaited (ProduceSync of the chunk), and a consumer
// group of its own reading from the earliest offset, auto-committing (every 5 s, the default)
// and fetching with a 100 ms max wait, in place (the partition assigned) before the first
// publish.
func kafkaFranz(url string, n int, headers bool) time.Duration {
	ctx := context.Background()
	servers := strings.Split(strings.TrimPrefix(url, "kafka://"), ",")
	topic := unique() + ".events"
	adm, err := kgo.NewClient(kgo.SeedBrokers(servers...))
	if err != nil {
		fail(err)
	}
	defer adm.Close()
	admin := kadm.NewClient(adm)
	if _, err := admin.CreateTopic(ctx, 1, 1, nil, topic); err != nil {
		fail(err)
	}
	defer func() { _, _ = admin.DeleteTopic(ctx, topic) }()
	producer, err := kgo.NewClient(kgo.SeedBrokers(servers...),
		kgo.RequiredAcks(kgo.AllISRAcks()), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		fail(err)
	}
	defer producer.Close()
	assigned := make(chan struct{})
	var once sync.Once
	consumer, err := kgo.NewClient(kgo.SeedBrokers(servers...),
		kgo.ConsumerGroup(topic+"-g"), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(100*time.Millisecond),
		kgo.OnPartitionsAssigned(func(context.Context, *kgo.Client, map[string][]int32) {
			once.Do(func() { close(assigned) })
		}))
	if err != nil {
		fail(err)
	}
	defer consumer.Close()
	// The subscription is in place once the group assigned the partition.
	select {
	case <-assigned:
	case <-time.After(30 * time.Second):
		fail(errors.New("kafka: the group assigned no partition within 30 s"))
	}
	done := make(chan struct{})
	go func() {
		for seen := 0; seen < n; {
			fetches := consumer.PollFetches(ctx)
			if err := fetches.Err(); err != nil && !errors.Is(err, context.Canceled) {
				fail(err)
			}
			seen += fetches.NumRecords()
		}
		close(done)
	}()
	payload := make([]byte, 64)
	var id [16]byte
	start := time.Now()
	for sent := 0; sent < n; sent += chunk {
		records := make([]*kgo.Record, min(chunk, n-sent))
		for i := range records {
			records[i] = &kgo.Record{Topic: topic, Value: payload}
			if headers {
				_, _ = rand.Read(id[:])
				records[i].Headers = []kgo.RecordHeader{
					{Key: "ce_specversion", Value: []byte("1.0")},
					{Key: "ce_id", Value: []byte(hex.EncodeToString(id[:]))},
					{Key: "ce_type", Value: []byte("bench.events")},
					{Key: "ce_time", Value: []byte("2026-12-07T13:30:00.123456Z")},
				}
			}
		}
		if err := producer.ProduceSync(ctx, records...).FirstErr(); err != nil {
			fail(err)
		}
	}
	<-done
	return time.Since(start)
}
