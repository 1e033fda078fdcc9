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

// kafkaConsumer sets franz-go up with the settings of the Rust peer (core/benches/pubsub.rs):
// a fresh topic of one partition, an idempotent producer with acks=all (linger 5 ms), and a
// consumer group of its own reading from the earliest offset, auto-committing (every 5 s, the
// default) and fetching with a 100 ms max wait, in place (the partition assigned) before it
// returns. It gives the producer, the topic, a channel closed once n records were consumed and
// what removes it all.
func kafkaConsumer(url string, n int) (producer *kgo.Client, topic string, done <-chan struct{}, stop func()) {
	ctx := context.Background()
	servers := strings.Split(strings.TrimPrefix(url, "kafka://"), ",")
	topic = unique() + ".events"
	adm, err := kgo.NewClient(kgo.SeedBrokers(servers...))
	if err != nil {
		fail(err)
	}
	admin := kadm.NewClient(adm)
	if _, err := admin.CreateTopic(ctx, 1, 1, nil, topic); err != nil {
		fail(err)
	}
	producer, err = kgo.NewClient(kgo.SeedBrokers(servers...),
		kgo.RequiredAcks(kgo.AllISRAcks()), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		fail(err)
	}
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
	// The subscription is in place once the group assigned the partition.
	select {
	case <-assigned:
	case <-time.After(30 * time.Second):
		fail(errors.New("kafka: the group assigned no partition within 30 s"))
	}
	consumed := make(chan struct{})
	go func() {
		for seen := 0; seen < n; {
			fetches := consumer.PollFetches(ctx)
			if err := fetches.Err(); err != nil && !errors.Is(err, context.Canceled) {
				fail(err)
			}
			seen += fetches.NumRecords()
		}
		close(consumed)
	}()
	return producer, topic, consumed, func() {
		consumer.Close()
		producer.Close()
		_, _ = admin.DeleteTopic(ctx, topic)
		adm.Close()
	}
}

// kafkaFranz is franz-go (see kafkaConsumer) with its records produced asynchronously and
// every chunk's awaited (ProduceSync of the chunk).
func kafkaFranz(url string, n int, headers bool) run {
	ctx := context.Background()
	producer, topic, done, stop := kafkaConsumer(url, n)
	defer stop()
	payload := make([]byte, size)
	var id [16]byte
	u := start()
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
	return u.stop(n)
}

// kafkaFranzOne is franz-go's ProduceSync of one record at a time, each acknowledged before
// the next (ProduceSync stops the linger), to the consumer of the batch case.
func kafkaFranzOne(url string, n int) run {
	ctx := context.Background()
	producer, topic, done, stop := kafkaConsumer(url, n)
	defer stop()
	payload := make([]byte, size)
	u := start()
	for range n {
		if err := producer.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: payload}).FirstErr(); err != nil {
			fail(err)
		}
	}
	<-done
	return u.stop(n)
}
