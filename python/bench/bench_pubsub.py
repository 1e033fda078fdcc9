"""Publish-to-handler throughput: one publisher, one subscriber, 64-byte payloads, memory://.

Publishes N events (in a loop of ``publish``, then with ``publish_many``) and stops the clock
when the handler has seen all N. Prints one JSON line per case (the format bench/run.sh
collects); ``--events`` or ``POLYBUS_BENCH_EVENTS`` sets N.

    python bench/bench_pubsub.py --events 1000000
"""

from __future__ import annotations

import argparse
import json
import os
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
    default = int(os.environ.get("POLYBUS_BENCH_EVENTS", "1000000"))
    parser.add_argument("--events", type=int, default=default)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    for case, pipelined in (("python publish", False), ("python publish_many", True)):
        rate = max(run(args.events, pipelined) for _ in range(args.rounds))
        line = {"lang": "python", "case": case, "events": args.events,
                "seconds": round(args.events / rate, 4), "events_per_sec": round(rate)}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
