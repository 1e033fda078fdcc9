// The Node clients a Node service would pick instead of polybus, on the same brokers and
// workload as polybus's broker rows (bench/run.sh): 64-byte events in chunks of 4096, one
// subscriber in the same process, from the first publish to the last event received, on a fresh
// subject, stream or topic, after an unreported warm-up round of a quarter. One JSON line per case.
//
//   POLYBUS_BENCH_URL=nats://127.0.0.1:4222,jetstream://127.0.0.1:4222,redis://127.0.0.1:6390,kafka://127.0.0.1:9092 \
//     POLYBUS_BENCH_BROKER_EVENTS=200000 node bench/peers/node/brokers.mjs
//
// nats:// is nats.js (@nats-io/transport-node; publishes buffered, flushed per chunk), plain and
// with the CloudEvents headers polybus's wire carries; jetstream:// is @nats-io/jetstream with
// pipelined publishes (every PubAck awaited per chunk) and a pull consumer (consume())
// acknowledging each message, plain and with the ce- headers plus Nats-Msg-Id (the event id),
// as polybus publishes; redis:// is ioredis with pipelined XADD and XREADGROUP + pipelined XACK
// per batch read, plain and with polybus's five stream fields; kafka:// is kafkajs (the prebuilt
// binary of @confluentinc/kafka-javascript is served from GitHub, not npm) with an idempotent
// producer (acks=all) sending each chunk in one call, and a consumer group of its own reading a
// fresh one-partition topic from the beginning batch by batch (auto-commit after each batch),
// in place before the first publish; plain and with the ce_ record headers polybus's records
// carry.
import { randomUUID } from "node:crypto";
import { AckPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, headers as natsHeaders } from "@nats-io/transport-node";
import Redis from "ioredis";
import { Kafka, logLevel } from "kafkajs";

const CHUNK = 4096;
const PAYLOAD = Buffer.alloc(64, 120);

function emit(name, n, seconds) {
  console.log(JSON.stringify({ lang: "node", case: name, events: n, seconds, events_per_sec: Math.round(n / seconds) }));
}

async function natsCore(url, n, withHeaders) {
  const nc = await connect({ servers: url.replace("nats://", "") });
  const subject = `peer${randomUUID().replaceAll("-", "")}.events`;
  let seen = 0;
  let finished;
  const done = new Promise((resolve) => (finished = resolve));
  nc.subscribe(subject, { callback: () => { if (++seen === n) finished(); } });
  await nc.flush();
  const start = process.hrtime.bigint();
  for (let sent = 0; sent < n; sent += CHUNK) {
    for (let i = 0; i < Math.min(CHUNK, n - sent); i++) {
      if (withHeaders) {
        const h = natsHeaders();
        h.set("ce-specversion", "1.0");
        h.set("ce-id", randomUUID());
        h.set("ce-type", "bench.events");
        h.set("ce-time", "2026-12-07T13:30:00.123456Z");
        nc.publish(subject, PAYLOAD, { headers: h });
      } else {
        nc.publish(subject, PAYLOAD);
      }
    }
    await nc.flush();
  }
  await done;
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  await nc.close();
  return seconds;
}

async function natsJetStream(url, n, withHeaders) {
  const nc = await connect({ servers: url.replace("jetstream://", "") });
  const jsm = await jetstreamManager(nc);
  const name = `peer${randomUUID().replaceAll("-", "")}`;
  const stream = name.toUpperCase();
  const subject = `${name}.events`;
  await jsm.streams.add({ name: stream, subjects: [`${name}.>`] });
  await jsm.consumers.add(stream, { durable_name: "bench", ack_policy: AckPolicy.Explicit, max_ack_pending: CHUNK });
  const js = jetstream(nc);
  const messages = await (await js.consumers.get(stream, "bench")).consume();
  const consume = (async () => {
    let seen = 0;
    for await (const m of messages) {
      m.ack();
      if (++seen === n) break;
    }
  })();
  const start = process.hrtime.bigint();
  for (let sent = 0; sent < n; sent += CHUNK) {
    const acks = [];
    for (let i = 0; i < Math.min(CHUNK, n - sent); i++) {
      if (withHeaders) {
        const id = randomUUID();
        const h = natsHeaders();
        h.set("ce-specversion", "1.0");
        h.set("ce-id", id);
        h.set("ce-type", "bench.events");
        h.set("ce-time", "2026-12-07T13:30:00.123456Z");
        acks.push(js.publish(subject, PAYLOAD, { headers: h, msgID: id }));
      } else {
        acks.push(js.publish(subject, PAYLOAD));
      }
    }
    await Promise.all(acks);
  }
  await consume;
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  await messages.close();
  await jsm.streams.delete(stream);
  await nc.close();
  return seconds;
}

async function redisStreams(url, n, fields) {
  const pub = new Redis(url);
  const sub = new Redis(url);
  const stream = `peer${randomUUID().replaceAll("-", "")}:events`;
  await pub.xgroup("CREATE", stream, "bench", "0", "MKSTREAM");
  const consume = (async () => {
    let seen = 0;
    while (seen < n) {
      const res = await sub.xreadgroup("GROUP", "bench", "c", "COUNT", CHUNK, "BLOCK", 1000, "STREAMS", stream, ">");
      if (!res) continue;
      const p = sub.pipeline();
      for (const [, entries] of res) {
        for (const [id] of entries) {
          p.xack(stream, "bench", id);
          seen++;
        }
      }
      await p.exec();
    }
  })();
  const start = process.hrtime.bigint();
  for (let sent = 0; sent < n; sent += CHUNK) {
    const p = pub.pipeline();
    for (let i = 0; i < Math.min(CHUNK, n - sent); i++) {
      if (fields) {
        p.xadd(stream, "*", "payload", PAYLOAD, "ce_specversion", "1.0", "ce_id", randomUUID(),
          "ce_type", "bench.events", "ce_time", "2026-12-07T13:30:00.123456Z");
      } else {
        p.xadd(stream, "*", "data", PAYLOAD);
      }
    }
    await p.exec();
  }
  await consume;
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  await pub.del(stream);
  pub.disconnect();
  sub.disconnect();
  return seconds;
}

async function kafka(url, n, withHeaders) {
  const client = new Kafka({ brokers: url.replace("kafka://", "").split(","), logLevel: logLevel.ERROR });
  const topic = `peer${randomUUID().replaceAll("-", "")}.events`;
  const admin = client.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic, numPartitions: 1, replicationFactor: 1 }], waitForLeaders: true });
  const producer = client.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const consumer = client.consumer({ groupId: `${topic}-g`, maxWaitTimeInMs: 100 });
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  const joined = new Promise((resolve) => consumer.on(consumer.events.GROUP_JOIN, resolve));
  let seen = 0;
  let finished;
  const done = new Promise((resolve) => (finished = resolve));
  await consumer.run({ eachBatch: async ({ batch }) => { if ((seen += batch.messages.length) >= n) finished(); } });
  await joined; // the subscription is in place once the group assigned the partition
  const start = process.hrtime.bigint();
  for (let sent = 0; sent < n; sent += CHUNK) {
    const messages = [];
    for (let i = 0; i < Math.min(CHUNK, n - sent); i++) {
      messages.push(withHeaders ? {
        value: PAYLOAD,
        headers: { ce_specversion: "1.0", ce_id: randomUUID(), ce_type: "bench.events", ce_time: "2026-12-07T13:30:00.123456Z" },
      } : { value: PAYLOAD });
    }
    await producer.send({ topic, acks: -1, messages });
  }
  await done;
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  await consumer.disconnect();
  await producer.disconnect();
  await admin.deleteTopics({ topics: [topic] });
  await admin.disconnect();
  return seconds;
}

const n = Number(process.env.POLYBUS_BENCH_BROKER_EVENTS ?? 200000);
for (const url of (process.env.POLYBUS_BENCH_URL ?? "").split(",").map((u) => u.trim())) {
  if (url.startsWith("nats://")) {
    for (const h of [false, true]) {
      await natsCore(url, Math.max(1, Math.floor(n / 4)), h);
      emit(`nats:// nats.js ${h ? "with the ce- headers (peer)" : "(peer)"}`, n, await natsCore(url, n, h));
    }
  } else if (url.startsWith("jetstream://")) {
    for (const h of [false, true]) {
      await natsJetStream(url, Math.max(1, Math.floor(n / 4)), h);
      emit(`jetstream:// @nats-io/jetstream ${h ? "with the ce- headers (peer)" : "(peer)"}`, n, await natsJetStream(url, n, h));
    }
  } else if (url.startsWith("redis://")) {
    for (const f of [false, true]) {
      await redisStreams(url, Math.max(1, Math.floor(n / 4)), f);
      emit(`redis:// ioredis ${f ? "pipelined with the ce_ fields (peer)" : "pipelined (peer)"}`, n, await redisStreams(url, n, f));
    }
  } else if (url.startsWith("kafka://")) {
    for (const h of [false, true]) {
      await kafka(url, Math.max(1, Math.floor(n / 4)), h);
      emit(`kafka:// kafkajs ${h ? "with the ce_ headers (peer)" : "(peer)"}`, n, await kafka(url, n, h));
    }
  }
}
