"""Publish-to-handler throughput: one publisher, one subscriber, 64-byte payloads, memory://.

Publishes N events (in a loop of ``publish``, then with ``publish_many``) and stops the clock
when the handler has seen all N. Prints one JSON line per case (the format bench/run.sh
collects); ``--events`` or ``POLYBUS_BENCH_EVENTS`` sets N.

    python bench/bench_pubsub.py --events 1000000

Broker rows: with ``POLYBUS_BENCH_URL`` (one URL or several, comma-separated, for example
``jetstream://127.0.0.1:4222,redis://127.0.0.1:6390,kafka://127.0.0.1:9092``) it measures
``publish_batch`` on each broker instead, as the Rust core's and Node's broker cases do: chunks
of 4096, one subscriber, from the first publish to the last event handled, on a fresh prefix,
after an unreported warm-up round of a quarter; ``POLYBUS_BENCH_BROKER_EVENTS`` events (default
200,000).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid

import polybus

PAYLOAD = b"x" * 64


CHUNK = 4096


def run(events: int, pipelined: bool, config: str | dict = "memory://") -> float:
    """Returns events per second from the first publish to the handler's last event."""
    done = threading.Event()
    seen = 0

    def handler(event: polybus.Event) -> None:
        nonlocal seen
        seen += 1
        if seen == events:
            done.set()

    with polybus.connect(config) as bus:
        bus.subscribe("bench.events", handler)
        start = time.perf_counter()
        if pipelined:
            for sent in range(0, events, CHUNK):
                k = min(CHUNK, events - sent)
                bus.publish_batch(("bench.events", PAYLOAD) for _ in range(k))
        else:
            publish = bus.publish
            for _ in range(events):
                publish("bench.events", PAYLOAD)
        if not done.wait(300):
            raise RuntimeError(f"the handler saw {seen} of {events} events")
        elapsed = time.perf_counter() - start
    return events / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = int(os.environ.get("POLYBUS_BENCH_EVENTS", "1000000"))
    parser.add_argument("--events", type=int, default=default)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    urls = [u.strip() for u in os.environ.get("POLYBUS_BENCH_URL", "").split(",") if u.strip()]
    if urls:
        n = int(os.environ.get("POLYBUS_BENCH_BROKER_EVENTS", "200000"))
        for url in urls:
            def config() -> dict:
                # A fresh prefix per round; Redis streams untrimmed, so a lagging reader loses none.
                cfg: dict = {"url": url, "prefix": f"bench{uuid.uuid4().hex}"}
                if url.startswith("redis"):
                    cfg["redis"] = {"max_len": 0}
                return cfg
            run(max(1, n // 4), True, config())
            rate = run(n, True, config())
            scheme = url[: url.index("://") + 3]
            line = {"lang": "python", "case": f"{scheme} publish_batch", "events": n,
                    "seconds": round(n / rate, 4), "events_per_sec": round(rate)}
            print(json.dumps(line), flush=True)
        return
    for case, pipelined in (("python publish", False), ("python publish_many", True)):
        rate = max(run(args.events, pipelined) for _ in range(args.rounds))
        line = {"lang": "python", "case": case, "events": args.events,
                "seconds": round(args.events / rate, 4), "events_per_sec": round(rate)}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
