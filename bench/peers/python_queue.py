"""Peer for the Python benchmark: a publisher thread handing events to a handler thread
through the standard library's queue.SimpleQueue, the in-process handoff Python offers."""

import json
import os
import queue
import threading
import time

n = int(os.environ.get("POLYBUS_BENCH_EVENTS", "1000000"))
q: "queue.SimpleQueue[bytes | None]" = queue.SimpleQueue()
payload = b"x" * 64
seen = 0


def handler(_: bytes) -> None:
    global seen
    seen += 1


def consume() -> None:
    while (item := q.get()) is not None:
        handler(item)


t = threading.Thread(target=consume)
start = time.perf_counter()
t.start()
for _ in range(n):
    q.put(payload)
q.put(None)
t.join()
secs = time.perf_counter() - start
assert seen == n
print(json.dumps({"lang": "python", "case": "python queue.SimpleQueue + thread (peer)",
                  "events": n, "seconds": round(secs, 4), "events_per_sec": round(n / secs)}))
