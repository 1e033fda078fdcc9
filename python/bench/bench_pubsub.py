"""Publish-to-handler throughput: one publisher, one subscriber, 64-byte payloads, memory://.

Publishes N events (in a loop of ``publish``, then with ``publish_many``) and stops the clock
when the handler has seen all N. Prints one JSON line; ``--events`` sets N.

    python bench/bench_pubsub.py --events 1000000
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time

import polybus

PAYLOAD = b"x" * 64


def run(events: int, pipelined: bool) -> float:
    """Returns events per second from the first publish to the handler's last event."""
    done = threading.Event()
    seen = 0

    def handler(event: polybus.Event) -> None:
        nonlocal seen
        seen += 1
        if seen == events:
            done.set()

    with polybus.connect("memory://") as bus:
        bus.subscribe("bench.events", handler)
        start = time.perf_counter()
        if pipelined:
            bus.publish_many(("bench.events", PAYLOAD) for _ in range(events))
        else:
            publish = bus.publish
            for _ in range(events):
                publish("bench.events", PAYLOAD)
        if not done.wait(60):
            raise RuntimeError(f"the handler saw {seen} of {events} events")
        elapsed = time.perf_counter() - start
    return events / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    result = {
        "bench": "python/pubsub",
        "backend": "memory",
        "payload_bytes": len(PAYLOAD),
        "events": args.events,
        "python": platform.python_version(),
        "polybus": polybus.__version__,
        "publish_events_per_s": round(max(run(args.events, False) for _ in range(args.rounds))),
        "publish_many_events_per_s": round(max(run(args.events, True) for _ in range(args.rounds))),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
