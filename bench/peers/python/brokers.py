"""The Python clients a Python service would pick instead of polybus, on the same brokers and
workload as polybus's broker rows (bench/run.sh): events of ``POLYBUS_BENCH_SIZE`` bytes
(default 64) in chunks of 4096, one subscriber in the same process, from the first publish to
the last event received, on a fresh subject, stream or topic, after an unreported warm-up round
of a quarter; ``POLYBUS_BENCH_BROKER_EVENTS`` events (default 200,000). One JSON line per case.

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

``POLYBUS_BENCH_CASE`` picks another mode:

- ``latency``: nats-py on each nats:// URL (the others are skipped), one message published and
  flushed at a time at a fixed rate of ``POLYBUS_BENCH_LATENCY_RATE`` a second (default 5,000)
  for ``POLYBUS_BENCH_LATENCY_SECONDS`` (default 4) after a second of warm-up at that rate whose
  samples are left out, to a subscription callback; 64-byte payloads carrying their send time;
  the percentiles of the time from just before each publish to the callback, as polybus's
  latency rows. Case ``nats:// latency nats-py (peer)``, a line with ``rate``, ``p50_us``,
  ``p99_us``, ``p999_us`` and ``max_us`` (only these lines).
- ``single``: each durable client publishing one event at a time, each confirmed before the
  next, ``POLYBUS_BENCH_SINGLE_EVENTS`` events (default 3,000), the consumer of its case above:
  ``js.publish`` awaited per message (``jetstream:// nats-py js.publish one at a time
  (peer)``), one ``XADD`` per event (``redis:// redis-py XADD one at a time (peer)``),
  ``produce`` then ``flush()`` per record (``kafka:// confluent-kafka produce+flush one at a
  time (peer)``); nats:// is skipped.

Anything else (unset, ``broker``) runs the cases above.

Every throughput line carries ``lang``, ``case``, ``events``, ``seconds``, ``events_per_sec``,
``size`` (payload bytes), ``cpu_us_per_event`` (this process's user and system CPU time during
the measured run, per event, in microseconds) and ``rss_mb`` (its peak resident set during the
measured run, in MiB: the peak is reset through /proc/self/clear_refs before it).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import nats
import redis
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

# The run's measure, shared with polybus's Python bench (bench/meter.py).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from meter import Meter

CHUNK = 4096
SIZE = int(os.environ.get("POLYBUS_BENCH_SIZE") or 64)
PAYLOAD = b"x" * SIZE
LATENCY_SIZE = 64

#: Publishes n events to a JetStream subject: (js, subject, n).
JetStreamPublisher = Callable[[JetStreamContext, str, int], Awaitable[None]]
#: Publishes n events to a Redis stream: (client, stream, n).
RedisPublisher = Callable[[redis.Redis, str, int], None]
#: Publishes n records: (produce(value, headers=...), flush() raising unless all confirmed, n).
KafkaPublisher = Callable[[Callable[..., None], Callable[[], None], int], None]


def env_int(name: str, default: int) -> int:
    """The integer in environment variable ``name``, or ``default`` when unset or empty."""
    return int(os.environ.get(name) or default)


def ce_id() -> str:
    """A fresh event id, as polybus's wire carries one per event."""
    return str(uuid.uuid4())


def emit(line: dict[str, Any]) -> None:
    """Prints one JSON line."""
    print(json.dumps(line), flush=True)


def measure(
    case: str, n: int, run: Callable[[int], Meter | Coroutine[Any, Any, Meter]]
) -> None:
    """An unreported warm-up round of a quarter of ``n`` events, then ``n`` events, printed as
    ``case``. ``run(k)`` runs a round of k events (a coroutine is run in a new event loop)."""

    def round_of(k: int) -> Meter:
        result = run(k)
        return asyncio.run(result) if isinstance(result, Coroutine) else result

    round_of(max(1, n // 4))
    emit(round_of(n).line(case, SIZE))


async def nats_core(url: str, n: int, headers: bool) -> Meter:
    """nats-py core: publishes buffered and flushed per chunk, one subscription callback."""
    nc = await nats.connect(url)
    subject = f"peer{uuid.uuid4().hex}.events"
    done = asyncio.Event()
    seen = 0

    async def cb(_msg: Any) -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            done.set()

    await nc.subscribe(subject, cb=cb)
    await nc.flush()
    with Meter(n) as meter:
        for sent in range(0, n, CHUNK):
            for _ in range(min(CHUNK, n - sent)):
                if headers:
                    await nc.publish(
                        subject,
                        PAYLOAD,
                        headers={
                            "ce-specversion": "1.0",
                            "ce-id": ce_id(),
                            "ce-type": "bench.events",
                            "ce-time": "2026-12-07T13:30:00.123456Z",
                        },
                    )
                else:
                    await nc.publish(subject, PAYLOAD)
            await nc.flush()
        await asyncio.wait_for(done.wait(), 300)
    await nc.close()
    return meter


async def nats_jetstream(url: str, n: int, publish: JetStreamPublisher) -> Meter:
    """nats-py JetStream: ``publish`` into a fresh stream, read by a pull consumer fetching up
    to a chunk and acknowledging each message."""
    nc = await nats.connect(url.replace("jetstream://", "nats://", 1))
    js = nc.jetstream()
    name = f"peer{uuid.uuid4().hex}"
    subject = f"{name}.events"
    await js.add_stream(name=name.upper(), subjects=[f"{name}.>"])
    psub = await js.pull_subscribe(
        subject,
        durable="bench",
        stream=name.upper(),
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=CHUNK),
    )

    async def consume() -> None:
        seen = 0
        while seen < n:
            try:
                msgs = await psub.fetch(batch=min(CHUNK, n - seen), timeout=1)
            except TimeoutError:  # nothing within a second: fetch again
                continue
            for msg in msgs:
                await msg.ack()
            seen += len(msgs)

    reader = asyncio.create_task(consume())
    with Meter(n) as meter:
        await publish(js, subject, n)
        await asyncio.wait_for(reader, 300)
    await psub.unsubscribe()
    await js.delete_stream(name.upper())
    await nc.close()
    return meter


async def js_publish_async(
    js: JetStreamContext, subject: str, n: int, headers: bool
) -> None:
    """``publish_async`` per message, every PubAck awaited per chunk; with ``headers``, the
    ce- headers and Nats-Msg-Id (the event id) polybus publishes."""
    for sent in range(0, n, CHUNK):
        acks = []
        for _ in range(min(CHUNK, n - sent)):
            if headers:
                event_id = ce_id()
                ack = await js.publish_async(
                    subject,
                    PAYLOAD,
                    headers={
                        "ce-specversion": "1.0",
                        "ce-id": event_id,
                        "ce-type": "bench.events",
                        "ce-time": "2026-12-07T13:30:00.123456Z",
                        "Nats-Msg-Id": event_id,
                    },
                )
            else:
                ack = await js.publish_async(subject, PAYLOAD)
            acks.append(ack)
        await asyncio.wait_for(asyncio.gather(*acks), 30)


async def js_publish_one_at_a_time(js: JetStreamContext, subject: str, n: int) -> None:
    """``js.publish`` per message, its PubAck awaited before the next."""
    for _ in range(n):
        await js.publish(subject, PAYLOAD)


def redis_streams(url: str, n: int, publish: RedisPublisher) -> Meter:
    """redis-py: ``publish`` into a fresh stream, read by a consumer group with XREADGROUP and
    a pipelined XACK per batch read, on a thread."""
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
    with Meter(n) as meter:
        publish(pub, stream, n)
        if not done.wait(300):
            raise RuntimeError("redis: the reader did not see every event")
    pub.delete(stream)
    return meter


def xadd_pipelined(pub: redis.Redis, stream: str, n: int, fields: bool) -> None:
    """XADD pipelined per chunk; with ``fields``, polybus's five stream fields."""
    for sent in range(0, n, CHUNK):
        p = pub.pipeline(transaction=False)
        for _ in range(min(CHUNK, n - sent)):
            if fields:
                p.xadd(
                    stream,
                    {
                        "payload": PAYLOAD,
                        "ce_specversion": "1.0",
                        "ce_id": ce_id(),
                        "ce_type": "bench.events",
                        "ce_time": "2026-12-07T13:30:00.123456Z",
                    },
                )
            else:
                p.xadd(stream, {"data": PAYLOAD})
        p.execute()


def xadd_one_at_a_time(pub: redis.Redis, stream: str, n: int) -> None:
    """One XADD per event, its reply awaited before the next."""
    for _ in range(n):
        pub.xadd(stream, {"data": PAYLOAD})


def kafka(url: str, n: int, publish: KafkaPublisher) -> Meter:
    """confluent-kafka: ``publish`` with an idempotent producer into a fresh one-partition
    topic, read by a consumer group of its own from the earliest offset, on a thread."""
    servers = url.removeprefix("kafka://")
    topic = f"peer{uuid.uuid4().hex}.events"
    # Its log level spares stderr an info line librdkafka may print as it closes (an unserved
    # event in its background queue).
    admin = AdminClient({"bootstrap.servers": servers, "log_level": 5})
    created = admin.create_topics(
        [NewTopic(topic, num_partitions=1, replication_factor=1)]
    )
    created[topic].result()
    while admin.list_topics(topic, timeout=10).topics[topic].error is not None:
        time.sleep(0.01)  # until the broker's metadata has the new topic
    producer = Producer(
        {
            "bootstrap.servers": servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
    )
    consumer = Consumer(
        {
            "bootstrap.servers": servers,
            "group.id": f"{topic}-g",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "fetch.wait.max.ms": 100,
        }
    )
    assigned = threading.Event()
    consumer.subscribe([topic], on_assign=lambda _consumer, _partitions: assigned.set())
    # The subscription is in place once the group assigned it.
    while not assigned.is_set():
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

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failed.append(str(err))

    def flush() -> None:
        if producer.flush(30) or failed:
            raise RuntimeError(f"kafka: publishes not confirmed: {failed[:1]}")

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    with Meter(n) as meter:
        publish(
            functools.partial(producer.produce, topic, on_delivery=delivered), flush, n
        )
        if not done.wait(300) or failed:
            raise RuntimeError(
                f"kafka: the consumer did not see every event: {failed[:1]}"
            )
    reader.join()
    consumer.close()
    producer.close()
    admin.delete_topics([topic])[topic].result()
    return meter


def produce_chunked(
    produce: Callable[..., None], flush: Callable[[], None], n: int, headers: bool
) -> None:
    """``produce`` per record, flushed (every delivery confirmed) per chunk; with
    ``headers``, the ce_ record headers polybus's records carry."""
    for sent in range(0, n, CHUNK):
        for _ in range(min(CHUNK, n - sent)):
            if headers:
                produce(
                    PAYLOAD,
                    headers=[
                        ("ce_specversion", b"1.0"),
                        ("ce_id", ce_id().encode()),
                        ("ce_type", b"bench.events"),
                        ("ce_time", b"2026-12-07T13:30:00.123456Z"),
                    ],
                )
            else:
                produce(PAYLOAD)
        flush()


def produce_one_at_a_time(
    produce: Callable[..., None], flush: Callable[[], None], n: int
) -> None:
    """``produce`` then ``flush()`` per record: each confirmed before the next."""
    for _ in range(n):
        produce(PAYLOAD)
        flush()


class Latency:
    """Publish-to-callback latencies at a fixed rate, as core/benches/pubsub.rs's ``Latency``.

    Each payload carries the time just before its publish (``time.perf_counter_ns()``,
    little-endian, bytes 0 to 8) and its sequence number (bytes 8 to 16); the callback records
    how long it took to arrive, leaving out the first second's (the warm-up).
    """

    def __init__(self, rate: int, seconds: int) -> None:
        self.rate = rate
        self.warm = rate
        self.total = self.warm + rate * seconds
        self.seen = 0
        self.samples: list[int] = []
        self.done = asyncio.Event()
        self._padding = bytes(LATENCY_SIZE - 16)

    def arrived(self, payload: bytes) -> None:
        """Records the latency of ``payload`` (called on the event loop)."""
        now = time.perf_counter_ns()
        if int.from_bytes(payload[8:16], "little") >= self.warm:
            self.samples.append(now - int.from_bytes(payload[:8], "little"))
        self.seen += 1
        if self.seen == self.total:
            self.done.set()

    async def send(self, publish: Callable[[bytes], Awaitable[None]]) -> None:
        """Awaits ``publish`` with each payload at ``start + i * gap``, catching up (without
        sleeping) when behind, so lateness does not accumulate."""
        gap = 1e9 / self.rate
        start = time.perf_counter_ns()
        for i in range(self.total):
            delay = start + i * gap - time.perf_counter_ns()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
            sent = time.perf_counter_ns().to_bytes(8, "little")
            await publish(sent + i.to_bytes(8, "little") + self._padding)

    async def line(self, case: str) -> dict[str, Any] | None:
        """The JSON line once every event arrived (30 s at most), else None (said on stderr)."""
        try:
            await asyncio.wait_for(self.done.wait(), 30)
        except TimeoutError:
            print(
                f"{case}: only {self.seen} of {self.total} events arrived",
                file=sys.stderr,
            )
            return None
        v = sorted(self.samples)

        def at(q: float) -> float:
            return round(v[min(int(len(v) * q), len(v) - 1)] / 1000, 1)

        return {
            "lang": "python",
            "case": case,
            "events": len(v),
            "rate": self.rate,
            "p50_us": at(0.5),
            "p99_us": at(0.99),
            "p999_us": at(0.999),
            "max_us": round(v[-1] / 1000, 1),
        }


async def nats_latency(url: str, rate: int, seconds: int) -> None:
    """nats-py: each message published then flushed, to a subscription callback."""
    lat = Latency(rate, seconds)
    nc = await nats.connect(url)
    subject = f"peer{uuid.uuid4().hex}.latency"

    async def cb(msg: Any) -> None:
        lat.arrived(msg.data)

    async def publish(payload: bytes) -> None:
        await nc.publish(subject, payload)
        await nc.flush()

    await nc.subscribe(subject, cb=cb)
    await nc.flush()
    await lat.send(publish)
    line = await lat.line("nats:// latency nats-py (peer)")
    await nc.close()
    if line is not None:
        emit(line)


def main() -> None:
    """Runs the cases of the mode ``POLYBUS_BENCH_CASE`` picks (see the module docstring)."""
    urls = [
        u.strip()
        for u in os.environ.get("POLYBUS_BENCH_URL", "").split(",")
        if u.strip()
    ]
    mode = os.environ.get("POLYBUS_BENCH_CASE", "")
    if mode == "latency":
        rate = env_int("POLYBUS_BENCH_LATENCY_RATE", 5_000)
        seconds = env_int("POLYBUS_BENCH_LATENCY_SECONDS", 4)
        for url in urls:
            if url.startswith("nats://"):
                asyncio.run(nats_latency(url, rate, seconds))
    elif mode == "single":
        n = env_int("POLYBUS_BENCH_SINGLE_EVENTS", 3_000)
        for url in urls:
            if url.startswith("jetstream://"):
                measure(
                    "jetstream:// nats-py js.publish one at a time (peer)",
                    n,
                    functools.partial(
                        nats_jetstream, url, publish=js_publish_one_at_a_time
                    ),
                )
            elif url.startswith("redis://"):
                measure(
                    "redis:// redis-py XADD one at a time (peer)",
                    n,
                    functools.partial(redis_streams, url, publish=xadd_one_at_a_time),
                )
            elif url.startswith("kafka://"):
                measure(
                    "kafka:// confluent-kafka produce+flush one at a time (peer)",
                    n,
                    functools.partial(kafka, url, publish=produce_one_at_a_time),
                )
    else:
        n = env_int("POLYBUS_BENCH_BROKER_EVENTS", 200_000)
        for url in urls:
            if url.startswith("nats://"):
                for headers in (False, True):
                    name = "with the ce- headers (peer)" if headers else "(peer)"
                    run = functools.partial(nats_core, url, headers=headers)
                    measure(f"nats:// nats-py {name}", n, run)
            elif url.startswith("jetstream://"):
                for headers in (False, True):
                    name = "with the ce- headers (peer)" if headers else "(peer)"
                    publish = functools.partial(js_publish_async, headers=headers)
                    run = functools.partial(nats_jetstream, url, publish=publish)
                    measure(f"jetstream:// nats-py publish_async {name}", n, run)
            elif url.startswith("redis://"):
                for fields in (False, True):
                    name = (
                        "pipelined with the ce_ fields (peer)"
                        if fields
                        else "pipelined (peer)"
                    )
                    run = functools.partial(
                        redis_streams,
                        url,
                        publish=functools.partial(xadd_pipelined, fields=fields),
                    )
                    measure(f"redis:// redis-py {name}", n, run)
            elif url.startswith("kafka://"):
                for headers in (False, True):
                    name = "with the ce_ headers (peer)" if headers else "(peer)"
                    run = functools.partial(
                        kafka,
                        url,
                        publish=functools.partial(produce_chunked, headers=headers),
                    )
                    measure(f"kafka:// confluent-kafka {name}", n, run)


if __name__ == "__main__":
    main()
