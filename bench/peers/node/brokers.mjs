// The Node clients a Node service would pick instead of polybus, on the same brokers and
// workload as polybus's broker rows (bench/run.sh): POLYBUS_BENCH_SIZE-byte events (default 64)
// in chunks of 4096, one subscriber in the same process, from the first publish to the last
// event received, on a fresh subject, stream or topic, after an unreported warm-up round of a
// quarter. One JSON line per case, with `size` (payload bytes), `cpu_us_per_event` (this
// process's user+system CPU time during the measured run, per event) and `rss_mb` (the peak
// resident set during the measured run).
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
//
// POLYBUS_BENCH_CASE picks another case:
//   latency  nats.js on nats:// only: publish then await flush per message at a fixed rate,
//            POLYBUS_BENCH_LATENCY_RATE events a second (default 5000) for
//            POLYBUS_BENCH_LATENCY_SECONDS (default 4) after a second of warm-up, one
//            subscription; case `nats:// latency nats.js (peer)` with p50, p99, p99.9 and max
//            in µs. Only latency lines are printed.
//   single   each durable client publishing one event at a time, each confirmation awaited
//            before the next (js.publish, XADD, producer.send of one record), the same
//            consumers as above: POLYBUS_BENCH_SINGLE_EVENTS events (default 3000).
import { readFileSync, writeFileSync } from "node:fs";
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { AckPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, headers as natsHeaders } from "@nats-io/transport-node";
import Redis from "ioredis";
import { Kafka, logLevel } from "kafkajs";

const CHUNK = 4096;
const SIZE = Number(process.env.POLYBUS_BENCH_SIZE ?? 64);
const PAYLOAD = Buffer.alloc(SIZE, 120);
const CE_TIME = "2026-12-07T13:30:00.123456Z";

const fresh = () => `peer${randomUUID().replaceAll("-", "")}`;

/**
 * Starts measuring this process's CPU time and peak resident set (the kernel's peak is reset
 * first); the returned function stops and gives the usage fields of a line for `n` events.
 */
function usage() {
  try {
    writeFileSync("/proc/self/clear_refs", "5");
  } catch {}
  const cpu = process.cpuUsage();
  return (n) => {
    const { user, system } = process.cpuUsage(cpu);
    let rss = null;
    try {
      const hwm = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync("/proc/self/status", "utf8"));
      if (hwm) rss = +(Number(hwm[1]) / 1024).toFixed(1);
    } catch {}
    return { cpu_us_per_event: +((user + system) / n).toFixed(2), rss_mb: rss };
  };
}

function emit(name, r) {
  console.log(JSON.stringify({
    lang: "node", case: name, events: r.events, seconds: r.seconds, events_per_sec: Math.round(r.events / r.seconds),
    size: SIZE, cpu_us_per_event: r.cpu_us_per_event, rss_mb: r.rss_mb,
  }));
}

/**
 * Opens a peer with `open(url, n)` (clients and a consumer in place, `done` resolving once it
 * received n events), times `publish(peer, n)` until then, and closes it.
 */
async function timed(open, publish, url, n) {
  const peer = await open(url, n);
  const stop = usage();
  const start = process.hrtime.bigint();
  await publish(peer, n);
  await peer.done;
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const used = stop(n);
  await peer.close();
  return { events: n, seconds, ...used };
}

/** An unreported warm-up round of a quarter of `n`, then the measured round, printed as `name`. */
async function measure(name, open, publish, url, n) {
  await timed(open, publish, url, Math.max(1, Math.floor(n / 4)));
  emit(name, await timed(open, publish, url, n));
}

/** Publishes `n` events `CHUNK` at a time: `add` starts one, `flush` waits for a chunk. */
async function chunked(n, add, flush) {
  for (let sent = 0; sent < n; sent += CHUNK) {
    for (let i = 0; i < Math.min(CHUNK, n - sent); i++) add();
    await flush();
  }
}

/** The ce- headers of polybus's NATS wire, with the event id `id`. */
function ceHeaders(id) {
  const h = natsHeaders();
  h.set("ce-specversion", "1.0");
  h.set("ce-id", id);
  h.set("ce-type", "bench.events");
  h.set("ce-time", CE_TIME);
  return h;
}

// nats.js, core NATS: one subscription counting messages.
async function openNats(url, n) {
  const nc = await connect({ servers: url.replace("nats://", "") });
  const subject = `${fresh()}.events`;
  let seen = 0;
  let finished;
  const done = new Promise((resolve) => (finished = resolve));
  nc.subscribe(subject, { callback: () => { if (++seen === n) finished(); } });
  await nc.flush();
  return { nc, subject, done, close: () => nc.close() };
}

// Buffered publishes, flushed per chunk; plain or with the ce- headers.
const natsPublish = (withHeaders) => ({ nc, subject }, n) =>
  chunked(n, () => nc.publish(subject, PAYLOAD, withHeaders ? { headers: ceHeaders(randomUUID()) } : undefined),
    () => nc.flush());

// @nats-io/jetstream: a fresh stream and a pull consumer (consume()) acknowledging each message.
async function openJetStream(url, n) {
  const nc = await connect({ servers: url.replace("jetstream://", "") });
  const jsm = await jetstreamManager(nc);
  const name = fresh();
  const stream = name.toUpperCase();
  await jsm.streams.add({ name: stream, subjects: [`${name}.>`] });
  await jsm.consumers.add(stream, { durable_name: "bench", ack_policy: AckPolicy.Explicit, max_ack_pending: CHUNK });
  const js = jetstream(nc);
  const messages = await (await js.consumers.get(stream, "bench")).consume();
  const done = (async () => {
    let seen = 0;
    for await (const m of messages) {
      m.ack();
      if (++seen === n) break;
    }
  })();
  const close = async () => {
    await messages.close();
    await jsm.streams.delete(stream);
    await nc.close();
  };
  return { js, subject: `${name}.events`, done, close };
}

// Pipelined publishes, every PubAck of a chunk awaited together; plain or with the ce- headers
// and Nats-Msg-Id.
const jetStreamPublish = (withHeaders) => ({ js, subject }, n) => {
  const acks = [];
  return chunked(n, () => {
    if (withHeaders) {
      const id = randomUUID();
      acks.push(js.publish(subject, PAYLOAD, { headers: ceHeaders(id), msgID: id }));
    } else {
      acks.push(js.publish(subject, PAYLOAD));
    }
  }, () => Promise.all(acks.splice(0)));
};

// One at a time: each js.publish awaited (its PubAck) before the next.
async function jetStreamPublishEach({ js, subject }, n) {
  for (let i = 0; i < n; i++) await js.publish(subject, PAYLOAD);
}

// ioredis: a fresh stream and a group reader, XREADGROUP of up to a chunk + pipelined XACK.
async function openRedis(url, n) {
  const pub = new Redis(url);
  const sub = new Redis(url);
  const stream = `${fresh()}:events`;
  await pub.xgroup("CREATE", stream, "bench", "0", "MKSTREAM");
  const done = (async () => {
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
  const close = async () => {
    await pub.del(stream);
    pub.disconnect();
    sub.disconnect();
  };
  return { pub, stream, done, close };
}

// Pipelined XADD, one pipeline per chunk; plain or with polybus's five stream fields.
const redisPublish = (fields) => ({ pub, stream }, n) => {
  let p = pub.pipeline();
  return chunked(n, () => {
    if (fields) {
      p.xadd(stream, "*", "payload", PAYLOAD, "ce_specversion", "1.0", "ce_id", randomUUID(),
        "ce_type", "bench.events", "ce_time", CE_TIME);
    } else {
      p.xadd(stream, "*", "data", PAYLOAD);
    }
  }, () => {
    const full = p;
    p = pub.pipeline();
    return full.exec();
  });
};

// One at a time: each XADD awaited before the next.
async function redisPublishEach({ pub, stream }, n) {
  for (let i = 0; i < n; i++) await pub.xadd(stream, "*", "data", PAYLOAD);
}

// kafkajs: a fresh one-partition topic, an idempotent producer (acks=all) and a consumer group of
// its own reading from the beginning batch by batch, in place before the first publish.
async function openKafka(url, n) {
  const client = new Kafka({ brokers: url.replace("kafka://", "").split(","), logLevel: logLevel.ERROR });
  const topic = `${fresh()}.events`;
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
  const close = async () => {
    await consumer.disconnect();
    await producer.disconnect();
    await admin.deleteTopics({ topics: [topic] });
    await admin.disconnect();
  };
  return { producer, topic, done, close };
}

// A send is one record batch, which the broker takes up to its message.max.bytes (1 MiB by
// default): larger payloads split a chunk in several sends (64-byte ones never do).
const KAFKA_RECORDS_PER_SEND = Math.max(1, Math.floor(960_000 / (SIZE + 140)));

// Each chunk in one send (or as few as the broker takes); plain or with the ce_ record headers.
const kafkaPublish = (withHeaders) => ({ producer, topic }, n) => {
  const messages = [];
  return chunked(n, () => {
    messages.push(withHeaders ? {
      value: PAYLOAD,
      headers: { ce_specversion: "1.0", ce_id: randomUUID(), ce_type: "bench.events", ce_time: CE_TIME },
    } : { value: PAYLOAD });
  }, async () => {
    while (messages.length > 0) {
      await producer.send({ topic, acks: -1, messages: messages.splice(0, KAFKA_RECORDS_PER_SEND) });
    }
  });
};

// One at a time: each send of one record awaited before the next.
async function kafkaPublishEach({ producer, topic }, n) {
  for (let i = 0; i < n; i++) await producer.send({ topic, acks: -1, messages: [{ value: PAYLOAD }] });
}

/**
 * Publish-to-handler latency at a fixed rate, as the Rust core's `Latency` (core/benches/pubsub.rs):
 * `rate` events a second for one warm-up second (unreported) and `seconds` more, event i sent at
 * start + i * gap (at once when behind) with `send`; the first 8 bytes of the 64-byte payload
 * carry the send time, `arrived` takes it back.
 */
class Latency {
  constructor(rate, seconds) {
    this.rate = rate;
    this.warm = rate;
    this.expect = rate * (seconds + 1);
    this.samples = new Float64Array(rate * seconds);
    this.seen = 0;
    this.finished = new Promise((resolve) => (this.done = resolve));
  }

  payload() {
    const p = Buffer.alloc(64, 7);
    p.writeBigUInt64LE(process.hrtime.bigint());
    return p;
  }

  /** Records one arrival (arrival order is publish order: one subscription, flushed publishes). */
  arrived(data) {
    const sent = new DataView(data.buffer, data.byteOffset, data.byteLength).getBigUint64(0, true);
    const ns = Number(process.hrtime.bigint() - sent);
    if (this.seen >= this.warm && this.seen < this.expect) this.samples[this.seen - this.warm] = ns;
    if (++this.seen === this.expect) this.done();
  }

  /** Sends every event on schedule, waits (30 s at most) for all, prints the percentiles. */
  async run(name, send) {
    const gap = 1e9 / this.rate;
    const start = process.hrtime.bigint();
    for (let i = 0; i < this.expect; i++) {
      const wait = i * gap - Number(process.hrtime.bigint() - start);
      if (wait > 0) await sleep(Math.ceil(wait / 1e6));
      await send(this.payload());
    }
    const timeout = new AbortController();
    const late = sleep(30_000, true, { signal: timeout.signal }).catch(() => false);
    const timedOut = await Promise.race([this.finished.then(() => false), late]);
    timeout.abort();
    if (timedOut) {
      console.error(`${name}: only ${this.seen} of ${this.expect} events arrived`);
      return;
    }
    const v = this.samples.sort();
    const at = (q) => +(v[Math.min(Math.floor(v.length * q), v.length - 1)] / 1000).toFixed(1);
    console.log(JSON.stringify({
      lang: "node", case: name, events: v.length, rate: this.rate,
      p50_us: at(0.5), p99_us: at(0.99), p999_us: at(0.999), max_us: +(v[v.length - 1] / 1000).toFixed(1),
    }));
  }
}

// Latency: nats.js publishing and flushing each message at a fixed rate, one subscription.
async function natsLatency(url, rate, seconds) {
  const lat = new Latency(rate, seconds);
  const nc = await connect({ servers: url.replace("nats://", "") });
  const subject = `${fresh()}.latency`;
  nc.subscribe(subject, { callback: (_, m) => lat.arrived(m.data) });
  await nc.flush();
  await lat.run("nats:// latency nats.js (peer)", async (p) => {
    nc.publish(subject, p);
    await nc.flush();
  });
  await nc.close();
}

const urls = (process.env.POLYBUS_BENCH_URL ?? "").split(",").map((u) => u.trim()).filter(Boolean);
const benchCase = process.env.POLYBUS_BENCH_CASE ?? "";
if (benchCase === "latency") {
  const rate = Number(process.env.POLYBUS_BENCH_LATENCY_RATE ?? 5000);
  const seconds = Number(process.env.POLYBUS_BENCH_LATENCY_SECONDS ?? 4);
  for (const url of urls.filter((u) => u.startsWith("nats://"))) await natsLatency(url, rate, seconds);
} else if (benchCase === "single") {
  // One at a time: each durable client's publish of one event awaited before the next.
  const n = Number(process.env.POLYBUS_BENCH_SINGLE_EVENTS ?? 3000);
  for (const url of urls) {
    if (url.startsWith("jetstream://")) {
      await measure("jetstream:// @nats-io/jetstream publish one at a time (peer)", openJetStream, jetStreamPublishEach, url, n);
    } else if (url.startsWith("redis://")) {
      await measure("redis:// ioredis XADD one at a time (peer)", openRedis, redisPublishEach, url, n);
    } else if (url.startsWith("kafka://")) {
      await measure("kafka:// kafkajs send one at a time (peer)", openKafka, kafkaPublishEach, url, n);
    }
  }
} else {
  // Throughput: each client pipelined as its documentation recommends, plain and with polybus's
  // wire (headers or fields).
  const n = Number(process.env.POLYBUS_BENCH_BROKER_EVENTS ?? 200000);
  for (const url of urls) {
    for (const wire of [false, true]) {
      if (url.startsWith("nats://")) {
        await measure(`nats:// nats.js ${wire ? "with the ce- headers (peer)" : "(peer)"}`, openNats, natsPublish(wire), url, n);
      } else if (url.startsWith("jetstream://")) {
        await measure(`jetstream:// @nats-io/jetstream ${wire ? "with the ce- headers (peer)" : "(peer)"}`,
          openJetStream, jetStreamPublish(wire), url, n);
      } else if (url.startsWith("redis://")) {
        await measure(`redis:// ioredis ${wire ? "pipelined with the ce_ fields (peer)" : "pipelined (peer)"}`,
          openRedis, redisPublish(wire), url, n);
      } else if (url.startsWith("kafka://")) {
        await measure(`kafka:// kafkajs ${wire ? "with the ce_ headers (peer)" : "(peer)"}`, openKafka, kafkaPublish(wire), url, n);
      }
    }
  }
}
