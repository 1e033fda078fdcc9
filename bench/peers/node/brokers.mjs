// The Node clients a Node service would pick instead of polybus, on the same brokers and
// workload as polybus's broker rows (bench/run.sh): 64-byte events in chunks of 4096, one
// subscriber in the same process, from the first publish to the last event received, on a fresh
// subject or stream, after an unreported warm-up round of a quarter. One JSON line per case.
//
//   POLYBUS_BENCH_URL=nats://127.0.0.1:4222,redis://127.0.0.1:6390 \
//     POLYBUS_BENCH_BROKER_EVENTS=200000 node bench/peers/node/brokers.mjs
//
// nats:// is nats.js (@nats-io/transport-node; publishes buffered, flushed per chunk), plain and
// with the CloudEvents headers polybus's wire carries; redis:// is ioredis with pipelined XADD
// and XREADGROUP + pipelined XACK per batch read, plain and with polybus's five stream fields.
import { randomUUID } from "node:crypto";
import { connect, headers as natsHeaders } from "@nats-io/transport-node";
import Redis from "ioredis";

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

const n = Number(process.env.POLYBUS_BENCH_BROKER_EVENTS ?? 200000);
for (const url of (process.env.POLYBUS_BENCH_URL ?? "").split(",").map((u) => u.trim())) {
  if (url.startsWith("nats://")) {
    for (const h of [false, true]) {
      await natsCore(url, Math.max(1, Math.floor(n / 4)), h);
      emit(`nats:// nats.js ${h ? "with the ce- headers (peer)" : "(peer)"}`, n, await natsCore(url, n, h));
    }
  } else if (url.startsWith("redis://")) {
    for (const f of [false, true]) {
      await redisStreams(url, Math.max(1, Math.floor(n / 4)), f);
      emit(`redis:// ioredis ${f ? "pipelined with the ce_ fields (peer)" : "pipelined (peer)"}`, n, await redisStreams(url, n, f));
    }
  }
}
