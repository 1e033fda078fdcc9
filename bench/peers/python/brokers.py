"""The Python clients a Python service would pick instead of polybus, on the same brokers and
workload as polybus's broker rows (bench/run.sh): 64-byte events in chunks of 4096, one
subscriber in the same process, from the first publish to the last event received, on a fresh
subject or stream, after an unreported warm-up round of a quarter. One JSON line per case.

    POLYBUS_BENCH_URL=nats://127.0.0.1:4222,redis://127.0.0.1:6390 \\
      POLYBUS_BENCH_BROKER_EVENTS=200000 python bench/peers/python/brokers.py

nats:// is nats-py (asyncio, publishes buffered and flushed per chunk), plain and with the
CloudEvents headers polybus's wire carries; redis:// is redis-py with pipelined XADD and
XREADGROUP + pipelined XACK per batch read, plain and with polybus's five stream fields.
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


def main() -> None:
    n = int(os.environ.get("POLYBUS_BENCH_BROKER_EVENTS", "200000"))
    for url in (u.strip() for u in os.environ.get("POLYBUS_BENCH_URL", "").split(",")):
        if url.startswith("nats://"):
            for headers in (False, True):
                asyncio.run(nats_core(url, max(1, n // 4), headers))
                name = "with the ce- headers (peer)" if headers else "(peer)"
                emit(f"nats:// nats-py {name}", n, asyncio.run(nats_core(url, n, headers)))
        elif url.startswith("redis://"):
            for fields in (False, True):
                redis_streams(url, max(1, n // 4), fields)
                name = "pipelined with the ce_ fields (peer)" if fields else "pipelined (peer)"
                emit(f"redis:// redis-py {name}", n, redis_streams(url, n, fields))


if __name__ == "__main__":
    main()
