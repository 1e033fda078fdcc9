"""Publish-to-handler benchmarks of polybus from Python: one JSON line per case (the format
bench/run.sh collects and bench/report.py reads).

In process (no ``POLYBUS_BENCH_URL``): one publisher, one subscriber, 64-byte payloads,
memory://. Publishes N events (in a loop of ``publish``, then with ``publish_many``) and stops
the clock when the handler has seen all N, the best of ``--rounds``; ``--events`` or
``POLYBUS_BENCH_EVENTS`` sets N. Cases ``python publish`` and ``python publish_many``.

    python bench/bench_pubsub.py --events 1000000

Broker rows: with ``POLYBUS_BENCH_URL`` (one URL or several, comma-separated, for example
``jetstream://127.0.0.1:4222,redis://127.0.0.1:6390,kafka://127.0.0.1:9092``) it measures
``publish_batch`` on each broker instead, as the Rust core's and Node's broker cases do: chunks
of 4096, one subscriber, from the first publish to the last event handled, on a fresh prefix,
after an unreported warm-up round of a quarter; ``POLYBUS_BENCH_BROKER_EVENTS`` events (default
200,000) of ``POLYBUS_BENCH_SIZE`` bytes (default 64). Case ``<scheme> publish_batch``.

``POLYBUS_BENCH_CASE`` picks another mode over the URLs of ``POLYBUS_BENCH_URL``:

- ``latency``: on each URL (memory:// included), ``publish`` (each returning once accepted,
  a durable broker's confirmation included) at a fixed rate of ``POLYBUS_BENCH_LATENCY_RATE``
  events a second (default 5,000) for ``POLYBUS_BENCH_LATENCY_SECONDS`` (default 4), after a
  second of warm-up at that rate whose samples are left out; 64-byte payloads carrying their
  send time; the percentiles of the time from just before each publish to its handler, as
  core/benches/pubsub.rs's latency case. Case ``<scheme> latency python``, a line with
  ``rate``, ``p50_us``, ``p99_us``, ``p999_us`` and ``max_us`` (only these lines).
- ``single``: on each durable URL (jetstream://, redis://, kafka://; the others are skipped),
  ``POLYBUS_BENCH_SINGLE_EVENTS`` events (default 3,000), each ``publish`` returning
  (confirmed) before the next, one subscriber, from the first publish to the last event
  handled, after an unreported warm-up of a quarter. Case ``<scheme> publish one at a time``.
- ``fanout``: on each URL, 10 subscriptions of one topic each receiving every event
  (``POLYBUS_BENCH_BROKER_EVENTS`` / 10 events published with ``publish_batch``; events and
  events a second count deliveries), case ``<scheme> fan-out to 10``; then 4 subscriptions of
  one group (a new one per run) sharing ``POLYBUS_BENCH_BROKER_EVENTS`` events, until their
  deliveries sum to them, case ``<scheme> group of 4`` (on kafka:// the topic has polybus's
  default single partition, so one member receives them all). Fresh prefix, unreported warm-up
  of a quarter, as the broker rows; the handlers count on any dispatcher thread, under a lock.

Anything else (unset, ``broker``) runs the in-process or broker rows above.

Every throughput line carries ``lang``, ``case``, ``events``, ``seconds``, ``events_per_sec``,
``size`` (payload bytes), ``cpu_us_per_event`` (this process's user and system CPU time during
the measured run, per event, in microseconds) and ``rss_mb`` (its peak resident set during the
measured run, in MiB: the peak is reset through /proc/self/clear_refs before it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import polybus

# The run's measure, shared with the peers' program (bench/meter.py).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
from meter import Meter

CHUNK = 4096
TOPIC = "bench.events"
LATENCY_SIZE = 64
DURABLE = ("jetstream://", "redis://", "kafka://")


def env_int(name: str, default: int) -> int:
    """The integer in environment variable ``name``, or ``default`` when unset or empty."""
    return int(os.environ.get(name) or default)


def scheme_of(url: str) -> str:
    """``nats://`` for ``nats://127.0.0.1:4222``."""
    return url[: url.index("://") + 3]


def config(url: str) -> dict[str, Any]:
    """A config on a fresh prefix (a new subject, stream or topic per run); Redis streams are
    left untrimmed, so a lagging reader loses none."""
    cfg: dict[str, Any] = {"url": url, "prefix": f"bench{uuid.uuid4().hex}"}
    if url.startswith("redis"):
        cfg["redis"] = {"max_len": 0}
    return cfg


def emit(line: dict[str, Any]) -> None:
    """Prints one JSON line."""
    print(json.dumps(line), flush=True)


class Countdown:
    """Deliveries counted by handlers on any threads; ``done`` is set once ``total`` arrived."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.seen = 0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def add(self, _event: object = None) -> None:
        """Counts one delivery (a handler for any number of subscriptions: thread-safe)."""
        with self._lock:
            self.seen += 1
            if self.seen == self.total:
                self.done.set()

    def handler(self, subscriptions: int) -> Callable[[object], None]:
        """The handler for ``subscriptions`` subscriptions: :meth:`add`, or for a single one
        (concurrency 1: its calls never overlap, whichever thread makes them) a lock-free
        counter, so the in-process cases time the handler they always did."""
        if subscriptions > 1:
            return self.add
        total, done = self.total, self.done

        def count(_event: object) -> None:
            self.seen += 1
            if self.seen == total:
                done.set()

        return count

    def wait(self, timeout: float = 300) -> None:
        """Blocks until every delivery arrived.

        Raises:
            RuntimeError: They did not within ``timeout`` seconds.
        """
        if not self.done.wait(timeout):
            raise RuntimeError(f"the handlers saw {self.seen} of {self.total} events")


def run(
    cfg: str | dict[str, Any],
    events: int,
    *,
    pipelined: bool = True,
    size: int = 64,
    subscribers: int = 1,
    grouped: bool = False,
) -> Meter:
    """Publishes ``events`` events of ``size`` bytes to ``subscribers`` subscriptions of one
    topic, and measures from the first publish to the last delivery.

    Args:
        cfg: The bus's config.
        events: Events published.
        pipelined: ``publish_batch`` in chunks of ``CHUNK``; otherwise one ``publish`` per
            event, each returning before the next starts.
        size: Payload bytes.
        subscribers: Subscriptions of the topic.
        grouped: All in one group, new for the run (each event goes to one of them; a Kafka
            group left behind by an earlier run cannot delay it); else each receives every
            event.

    Returns:
        The meter of the measured run; its ``events`` counts deliveries.
    """
    payload = b"x" * size
    count = Countdown(events if grouped else events * subscribers)
    handler = count.handler(subscribers)
    group = f"bench{uuid.uuid4().hex}" if grouped else None
    with polybus.connect(cfg) as bus:
        for _ in range(subscribers):
            bus.subscribe(TOPIC, handler, group=group)
        with Meter(count.total) as meter:
            if pipelined:
                for sent in range(0, events, CHUNK):
                    k = min(CHUNK, events - sent)
                    bus.publish_batch((TOPIC, payload) for _ in range(k))
            else:
                publish = bus.publish
                for _ in range(events):
                    publish(TOPIC, payload)
            count.wait()
    return meter


def measure(case: str, url: str, events: int, size: int, **options: Any) -> None:
    """An unreported warm-up run of a quarter of ``events`` on a fresh prefix, then the
    measured run on another, printed as ``case``; ``options`` are :func:`run`'s others."""
    run(config(url), max(1, events // 4), size=size, **options)
    emit(run(config(url), events, size=size, **options).line(case, size))


class Latency:
    """Publish-to-handler latencies at a fixed rate, as core/benches/pubsub.rs's ``Latency``.

    Each payload carries the time just before its publish (``time.perf_counter_ns()``,
    little-endian, bytes 0 to 8) and its sequence number (bytes 8 to 16); the handler records
    how long it took to arrive, leaving out the first second's (the warm-up).
    """

    def __init__(self, rate: int, seconds: int) -> None:
        self.rate = rate
        self.warm = rate
        self.count = Countdown(self.warm + rate * seconds)
        self.samples: list[int] = []
        self._lock = threading.Lock()
        self._padding = bytes(LATENCY_SIZE - 16)

    def handler(self, event: polybus.Event) -> None:
        """Records the latency of ``event``."""
        now = time.perf_counter_ns()
        payload = event.payload
        if int.from_bytes(payload[8:16], "little") >= self.warm:
            with self._lock:
                self.samples.append(now - int.from_bytes(payload[:8], "little"))
        self.count.add()

    def send(self, publish: Callable[[bytes], object]) -> None:
        """Calls ``publish`` with each payload at ``start + i * gap``, catching up (without
        sleeping) when behind, so lateness does not accumulate."""
        gap = 1e9 / self.rate
        start = time.perf_counter_ns()
        for i in range(self.count.total):
            delay = start + i * gap - time.perf_counter_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
            sent = time.perf_counter_ns().to_bytes(8, "little")
            publish(sent + i.to_bytes(8, "little") + self._padding)

    def line(self, case: str) -> dict[str, Any] | None:
        """The JSON line once every event arrived (30 s at most), else None (said on stderr)."""
        if not self.count.done.wait(30):
            print(
                f"{case}: only {self.count.seen} of {self.count.total} events arrived",
                file=sys.stderr,
            )
            return None
        with self._lock:
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


def latency(url: str, rate: int, seconds: int) -> None:
    """polybus ``publish`` at ``rate`` a second on ``url``, one subscriber: the latency line."""
    lat = Latency(rate, seconds)
    with polybus.connect(config(url)) as bus:
        bus.subscribe("bench.latency", lat.handler)
        publish = bus.publish
        lat.send(lambda payload: publish("bench.latency", payload))
        line = lat.line(f"{scheme_of(url)} latency python")
    if line is not None:
        emit(line)


def main() -> None:
    """Runs the cases of the mode ``POLYBUS_BENCH_CASE`` picks (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = env_int("POLYBUS_BENCH_EVENTS", 1_000_000)
    parser.add_argument("--events", type=int, default=default)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    urls = [u.strip() for u in os.environ.get("POLYBUS_BENCH_URL", "").split(",") if u.strip()]
    mode = os.environ.get("POLYBUS_BENCH_CASE", "")
    n = env_int("POLYBUS_BENCH_BROKER_EVENTS", 200_000)
    size = env_int("POLYBUS_BENCH_SIZE", 64)
    if mode == "latency":
        rate = env_int("POLYBUS_BENCH_LATENCY_RATE", 5_000)
        seconds = env_int("POLYBUS_BENCH_LATENCY_SECONDS", 4)
        for url in urls:
            latency(url, rate, seconds)
    elif mode == "single":
        single = env_int("POLYBUS_BENCH_SINGLE_EVENTS", 3_000)
        for url in (u for u in urls if u.startswith(DURABLE)):
            case = f"{scheme_of(url)} publish one at a time"
            measure(case, url, single, pipelined=False, size=size)
    elif mode == "fanout":
        for url in urls:
            scheme = scheme_of(url)
            measure(f"{scheme} fan-out to 10", url, max(1, n // 10), size=size, subscribers=10)
            measure(f"{scheme} group of 4", url, n, size=size, subscribers=4, grouped=True)
    elif urls:
        for url in urls:
            measure(f"{scheme_of(url)} publish_batch", url, n, size=size)
    else:
        for case, pipelined in (("python publish", False), ("python publish_many", True)):
            rounds = [
                run("memory://", args.events, pipelined=pipelined) for _ in range(args.rounds)
            ]
            emit(min(rounds, key=lambda m: m.seconds).line(case, 64))


if __name__ == "__main__":
    main()
