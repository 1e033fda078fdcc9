"""The Python clients a Python service would pick instead of polybus, on the same brokers and
workload as polybus's broker rows (bench/run.sh): 64-byte events in chunks of 4096, one
subscriber in the same process, from the first publish to the last event received, on a fresh
subject, stream or topic, after an unreported warm-up round of a quarter. One JSON line per case.

    POLYBUS_BENCH_URL=nats://127.0.0.1:4222,jetstream://127.0.0.1:4222,redis://127.0.0.1:6390,kafka://127.0.0.1:9092 \\
      POLYBUS_BENCH_BROKER_EVENTS=200000 python bench/peers/python/brokers.py

nats:// is nats-py (asyncio, publishes buffered and flushed per chunk), plain and with the
CloudEvents headers polybus's wire carries; jetstream:// is nats-py's JetStream publish_async
(every PubAck awaited per chunk) with a pull consumer fetching up to a chunk and acknowledging
each message, plain and with the ce- headers plus Nats-Msg-Id (the event id), as polybus
publishes; redis:// is redis-py with pipelined XADD and XREADGROUP + pipelined XACK per batch
read, plain and with polybus's five stream fields; kafka:// is confluent-kafka (librdkafka) with
an idempotent producer (acks=all, linger.ms=5) flushed per chunk and a consumer group of its own
reading a fresh one-partition topic from the earliest offset in batches (librdkafka's
auto-commit), in place before the first publish, plain and with the ce_ record headers
polybus's records carry.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid

import nats
import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from nats.js.api import AckPolicy, ConsumerConfig

CHUNK = 4096
PAYLOAD = b"x" * 64


def emit(case: str, n: int, seconds: float) -> None:
    print(json.dumps({"lang": "python", "case": case, "events": n, "seconds": round(seconds, 4),
                      "events_per_sec": int(n / seconds)}), flush=True)


async def nats_core(url: str, n: int, headers: bool) -> float:
    nc = await nats.connect(url)
    subject = f"peer{uuid.uuid4().hex}.events"
    done = asyncio.Event()
    seen = 0

    async def cb(_msg) -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            done.set()

    await nc.subscribe(subject, cb=cb)
    await nc.flush()
    start = time.perf_counter()
    for sent in range(0, n, CHUNK):
        for _ in range(min(CHUNK, n - sent)):
            if headers:
                await nc.publish(subject, PAYLOAD, headers={
                    "ce-specversion": "1.0", "ce-id": str(uuid.uuid4()),
                    "ce-type": "bench.events", "ce-time": "2026-12-07T13:30:00.123456Z"})
            else:
                await nc.publish(subject, PAYLOAD)
        await nc.flush()
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.perf_counter() - start
    await nc.close()
    return elapsed


async def nats_jetstream(url: str, n: int, headers: bool) -> float:
    nc = await nats.connect(url.replace("jetstream://", "nats://", 1))
    js = nc.jetstream()
    name = f"peer{uuid.uuid4().hex}"
    subject = f"{name}.events"
    await js.add_stream(name=name.upper(), subjects=[f"{name}.>"])
    psub = await js.pull_subscribe(subject, durable="bench", stream=name.upper(), config=ConsumerConfig(
        ack_policy=AckPolicy.EXPLICIT, max_ack_pending=CHUNK))

    async def consume() -> None:
        seen = 0
        while seen < n:
            try:
                msgs = await psub.fetch(batch=min(CHUNK, n - seen), timeout=1)
            except asyncio.TimeoutError:  # nothing within a second: fetch again
                continue
            for msg in msgs:
                await msg.ack()
            seen += len(msgs)

    reader = asyncio.create_task(consume())
    start = time.perf_counter()
    for sent in range(0, n, CHUNK):
        acks = []
        for _ in range(min(CHUNK, n - sent)):
            if headers:
                event_id = str(uuid.uuid4())
                acks.append(await js.publish_async(subject, PAYLOAD, headers={
                    "ce-specversion": "1.0", "ce-id": event_id, "ce-type": "bench.events",
                    "ce-time": "2026-12-07T13:30:00.123456Z", "Nats-Msg-Id": event_id}))
            else:
                acks.append(await js.publish_async(subject, PAYLOAD))
        await asyncio.wait_for(asyncio.gather(*acks), 30)
    await asyncio.wait_for(reader, 300)
    elapsed = time.perf_counter() - start
    await psub.unsubscribe()
    await js.delete_stream(name.upper())
    await nc.close()
    return elapsed


def redis_streams(url: str, n: int, fields: bool) -> float:
    pub, sub = redis.Redis.from_url(url), redis.Redis.from_url(url)
    stream = f"peer{uuid.uuid4().hex}:events"
    pub.xgroup_create(stream, "bench", id="0", mkstream=True)
    done = threading.Event()

    def consume() -> None:
        seen = 0
        while seen < n:
            res = sub.xreadgroup("bench", "c", {stream: ">"}, count=CHUNK, block=1000)
            if not res:
                continue
            p = sub.pipeline(transaction=False)
            for _key, entries in res:
                for entry_id, _values in entries:
                    p.xack(stream, "bench", entry_id)
                    seen += 1
            p.execute()
        done.set()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    start = time.perf_counter()
    for sent in range(0, n, CHUNK):
        p = pub.pipeline(transaction=False)
        for _ in range(min(CHUNK, n - sent)):
            if fields:
                p.xadd(stream, {"payload": PAYLOAD, "ce_specversion": "1.0",
                                "ce_id": str(uuid.uuid4()), "ce_type": "bench.events",
                                "ce_time": "2026-12-07T13:30:00.123456Z"})
            else:
                p.xadd(stream, {"data": PAYLOAD})
        p.execute()
    if not done.wait(300):
        raise RuntimeError("redis: the reader did not see every event")
    elapsed = time.perf_counter() - start
    pub.delete(stream)
    return elapsed


def kafka(url: str, n: int, headers: bool) -> float:
    servers = url.removeprefix("kafka://")
    topic = f"peer{uuid.uuid4().hex}.events"
    # Its log level spares stderr an info line librdkafka may print as it closes (an unserved
    # event in its background queue).
    admin = AdminClient({"bootstrap.servers": servers, "log_level": 5})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result()
    while admin.list_topics(topic, timeout=10).topics[topic].error is not None:
        time.sleep(0.01)  # until the broker's metadata has the new topic
    producer = Producer({"bootstrap.servers": servers, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 5})
    consumer = Consumer({"bootstrap.servers": servers, "group.id": f"{topic}-g",
                         "auto.offset.reset": "earliest", "enable.auto.commit": True,
                         "fetch.wait.max.ms": 100})
    assigned = threading.Event()
    consumer.subscribe([topic], on_assign=lambda _consumer, _partitions: assigned.set())
    while not assigned.is_set():  # the subscription is in place once the group assigned it
        if consumer.poll(0.1) is not None:
            raise RuntimeError("kafka: a record in a fresh topic")
    done = threading.Event()
    failed: list[str] = []

    def consume() -> None:
        seen = 0
        while seen < n:
            for msg in consumer.consume(num_messages=min(CHUNK, n - seen), timeout=1):
                if msg.error():
                    failed.append(str(msg.error()))
                    done.set()
                    return
                seen += 1
        done.set()

    def delivered(err, _msg) -> None:
        if err is not None:
            failed.append(str(err))

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    start = time.perf_counter()
    for sent in range(0, n, CHUNK):
        for _ in range(min(CHUNK, n - sent)):
            if headers:
                producer.produce(topic, PAYLOAD, on_delivery=delivered, headers=[
                    ("ce_specversion", b"1.0"), ("ce_id", str(uuid.uuid4()).encode()),
                    ("ce_type", b"bench.events"), ("ce_time", b"2026-12-07T13:30:00.123456Z")])
            else:
                producer.produce(topic, PAYLOAD, on_delivery=delivered)
        if producer.flush(30) or failed:
            raise RuntimeError(f"kafka: publishes not confirmed: {failed[:1]}")
    if not done.wait(300) or failed:
        raise RuntimeError(f"kafka: the consumer did not see every event: {failed[:1]}")
    elapsed = time.perf_counter() - start
    reader.join()
    consumer.close()
    producer.close()
    admin.delete_topics([topic])[topic].result()
    return elapsed


def main() -> None:
    n = int(os.environ.get("POLYBUS_BENCH_BROKER_EVENTS", "200000"))
    for url in (u.strip() for u in os.environ.get("POLYBUS_BENCH_URL", "").split(",")):
        if url.startswith("nats://"):
            for headers in (False, True):
                asyncio.run(nats_core(url, max(1, n // 4), headers))
                name = "with the ce- headers (peer)" if headers else "(peer)"
                emit(f"nats:// nats-py {name}", n, asyncio.run(nats_core(url, n, headers)))
        elif url.startswith("jetstream://"):
            for headers in (False, True):
                asyncio.run(nats_jetstream(url, max(1, n // 4), headers))
                name = "with the ce- headers (peer)" if headers else "(peer)"
                emit(f"jetstream:// nats-py publish_async {name}", n,
                     asyncio.run(nats_jetstream(url, n, headers)))
        elif url.startswith("redis://"):
            for fields in (False, True):
                redis_streams(url, max(1, n // 4), fields)
                name = "pipelined with the ce_ fields (peer)" if fields else "pipelined (peer)"
                emit(f"redis:// redis-py {name}", n, redis_streams(url, n, fields))
        elif url.startswith("kafka://"):
            for headers in (False, True):
                kafka(url, max(1, n // 4), headers)
                name = "with the ce_ headers (peer)" if headers else "(peer)"
                emit(f"kafka:// confluent-kafka {name}", n, kafka(url, n, headers))


if __name__ == "__main__":
    main()
