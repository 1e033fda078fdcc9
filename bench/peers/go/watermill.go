package main

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	wnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
)

// watermillRound publishes n events in chunks of 4096 (one Publish call per chunk, each
// message with Watermill's own UUID) to one subscriber acknowledging each message, timed from
// the first publish to the last message received. afterChunk runs after each chunk.
func watermillRound(pub message.Publisher, sub message.Subscriber, topic string, n int,
	afterChunk func()) run {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	messages, err := sub.Subscribe(ctx, topic)
	if err != nil {
		fail(err)
	}
	// A subscription on another connection (watermill-nats) may not be in place on the server
	// when Subscribe returns: probe until one message made it through, so none of the run's
	// is published into the void. A late probe is acknowledged and not counted.
	probe := func() *message.Message {
		m := message.NewMessage(watermill.NewUUID(), nil)
		m.Metadata.Set("probe", "1")
		return m
	}
	for ready := false; !ready; {
		if err := pub.Publish(topic, probe()); err != nil {
			fail(err)
		}
		afterChunk()
		select {
		case m := <-messages:
			m.Ack()
			ready = true
		case <-time.After(100 * time.Millisecond):
		}
	}
	done := make(chan struct{})
	go func() {
		for seen := 0; seen < n; {
			m, ok := <-messages
			if !ok {
				fail(errors.New("watermill: the subscription ended before the last event"))
			}
			m.Ack()
			if m.Metadata.Get("probe") == "" {
				seen++
			}
		}
		close(done)
	}()
	payload := make([]byte, size)
	u := start()
	for sent := 0; sent < n; sent += chunk {
		batch := make([]*message.Message, min(chunk, n-sent))
		for i := range batch {
			batch[i] = message.NewMessage(watermill.NewUUID(), payload)
		}
		if err := pub.Publish(topic, batch...); err != nil {
			fail(err)
		}
		afterChunk()
	}
	<-done
	r := u.stop(n)
	if err := sub.Close(); err != nil {
		fail(err)
	}
	if err := pub.Close(); err != nil {
		fail(err)
	}
	return r
}

// watermillGoChannel is Watermill's in-process Pub/Sub (gochannel), its output channel
// buffered by a chunk.
func watermillGoChannel(n int) run {
	ps := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: chunk}, nil)
	return watermillRound(ps, ps, unique()+".events", n, func() {})
}

// watermillNats is watermill-nats on NATS core (JetStream disabled), its publisher's
// connection flushed per chunk like the nats.go peer's.
func watermillNats(url string, n int) run {
	nc, err := nats.Connect(url)
	if err != nil {
		fail(err)
	}
	core := wnats.JetStreamConfig{Disabled: true}
	pub, err := wnats.NewPublisherWithNatsConn(nc, wnats.PublisherPublishConfig{
		Marshaler: &wnats.NATSMarshaler{}, SubjectCalculator: wnats.DefaultSubjectCalculator,
		JetStream: core,
	}, nil)
	if err != nil {
		fail(err)
	}
	sub, err := wnats.NewSubscriber(wnats.SubscriberConfig{URL: url, JetStream: core}, nil)
	if err != nil {
		fail(err)
	}
	return watermillRound(pub, sub, unique()+".events", n, func() {
		if err := nc.Flush(); err != nil {
			fail(err)
		}
	})
}

// watermillRedis is watermill-redisstream: XADD per message, a consumer group reading from
// the start of the stream, XACK per message.
func watermillRedis(url string, n int) run {
	opt, err := redis.ParseURL(url)
	if err != nil {
		fail(err)
	}
	pub, err := redisstream.NewPublisher(redisstream.PublisherConfig{
		Client: redis.NewClient(opt),
	}, nil)
	if err != nil {
		fail(err)
	}
	sub, err := redisstream.NewSubscriber(redisstream.SubscriberConfig{
		Client: redis.NewClient(opt), ConsumerGroup: "bench", OldestId: "0",
	}, nil)
	if err != nil {
		fail(err)
	}
	stream := unique() + ":events"
	defer func() {
		c := redis.NewClient(opt)
		c.Del(context.Background(), stream)
		_ = c.Close()
	}()
	return watermillRound(pub, sub, stream, n, func() {})
}

// watermillKafka is watermill-kafka (Sarama underneath): its synchronous publisher made
// idempotent with acks=all, and a consumer group of its own reading from the oldest offset of
// a fresh one-partition topic (created by SubscribeInitialize), auto-committing every second
// (Sarama's default) and fetching with a 100 ms max wait.
func watermillKafka(url string, n int) run {
	brokers := strings.Split(strings.TrimPrefix(url, "kafka://"), ",")
	topic := unique() + ".events"
	pc := wkafka.DefaultSaramaSyncPublisherConfig()
	pc.Version = sarama.V2_8_0_0 // Watermill's default (1.0) is older than Kafka 4 accepts
	pc.Producer.Idempotent = true
	pc.Producer.RequiredAcks = sarama.WaitForAll
	pc.Net.MaxOpenRequests = 1
	pub, err := wkafka.NewPublisher(wkafka.PublisherConfig{
		Brokers: brokers, Marshaler: wkafka.DefaultMarshaler{}, OverwriteSaramaConfig: pc,
	}, nil)
	if err != nil {
		fail(err)
	}
	sc := wkafka.DefaultSaramaSubscriberConfig()
	sc.Version = sarama.V2_8_0_0
	sc.Consumer.Offsets.Initial = sarama.OffsetOldest
	sc.Consumer.MaxWaitTime = 100 * time.Millisecond
	sub, err := wkafka.NewSubscriber(wkafka.SubscriberConfig{
		Brokers: brokers, Unmarshaler: wkafka.DefaultMarshaler{}, OverwriteSaramaConfig: sc,
		ConsumerGroup:          topic + "-g",
		InitializeTopicDetails: &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1},
	}, nil)
	if err != nil {
		fail(err)
	}
	if err := sub.SubscribeInitialize(topic); err != nil {
		fail(err)
	}
	defer func() {
		admin, err := sarama.NewClusterAdmin(brokers, sc)
		if err == nil {
			_ = admin.DeleteTopic(topic)
			_ = admin.Close()
		}
	}()
	return watermillRound(pub, sub, topic, n, func() {})
}
