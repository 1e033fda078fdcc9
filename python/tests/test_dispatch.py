"""Deliveries multiplexed at the boundary: every subscription of a bus feeds one queue, served by
a small pool of dispatcher threads (not a thread per subscription)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import polybus
from conftest import TIMEOUT, Collector


def os_threads() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


def dispatchers() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("polybus-dispatch-")]


def test_many_subscriptions_share_a_few_threads(bus: polybus.Bus) -> None:
    got = Collector()
    bus.subscribe("warm.up", got)
    before = os_threads()
    subs = [bus.subscribe(f"t.{i}", got) for i in range(2000)]
    assert os_threads() - before <= 16
    assert len(dispatchers()) == 2
    bus.publish_batch((f"t.{i}", str(i)) for i in range(0, 2000, 100))
    assert sorted(e.topic for e in got.wait(20)) == sorted(f"t.{i}" for i in range(0, 2000, 100))
    for s in subs[:1000]:
        s.close()
    assert all(s.closed for s in subs[:1000])
    bus.close()
    assert dispatchers() == []


def test_the_pool_grows_to_the_largest_concurrency(bus: polybus.Bus) -> None:
    barrier = threading.Barrier(5, timeout=TIMEOUT)
    names: set[str] = set()

    def handler(event: polybus.Event) -> None:
        names.add(threading.current_thread().name)
        barrier.wait()  # passes only when 5 handlers of this subscription run at once

    bus.subscribe("small", print)
    assert len(dispatchers()) == 2
    collector = Collector()
    bus.subscribe("wide", lambda e: (handler(e), collector(e)), concurrency=5, batch_size=1)
    assert len(dispatchers()) == 5
    # One event per lane: a second round could put two events on one lane (the least loaded
    # lane, ties broken round-robin, counts a lane's event until it is acknowledged), and the
    # barrier would then wait for a fifth handler that runs after it.
    bus.publish_batch(("wide", str(i)) for i in range(5))
    collector.wait(5)
    assert len(names) == 5


def test_a_slow_subscription_does_not_hold_up_the_others(bus: polybus.Bus) -> None:
    release = threading.Event()
    started = threading.Event()

    def slow(event: polybus.Event) -> None:
        started.set()
        release.wait(TIMEOUT)

    fast = Collector()
    bus.subscribe("slow", slow)
    bus.subscribe("fast", fast)
    try:
        bus.publish("slow", b"x")
        assert started.wait(TIMEOUT)
        bus.publish_batch(("fast", str(i)) for i in range(10))
        assert len(fast.wait(10)) == 10
    finally:
        release.set()


def test_unsubscribe_drains_like_close(bus: polybus.Bus) -> None:
    collector = Collector()
    sub = bus.subscribe("a", collector, batch_size=4)
    bus.publish_batch(("a", str(i)) for i in range(200))
    sub.unsubscribe()  # returns once every queued event was handled
    assert len(collector.events) == 200 and sub.closed
    bus.publish("a", b"late")
    # Closing drains whatever was delivered: a late event that reached the handler would be
    # counted by now.
    bus.close()
    assert len(collector.events) == 200
    assert bus.stats()["acked"] == 200


def test_closing_from_its_own_handler_stops_without_waiting(bus: polybus.Bus) -> None:
    collector = Collector()
    subs: list[polybus.Subscription] = []
    closed = threading.Event()

    def handler(event: polybus.Event) -> None:
        collector(event)
        if event.payload == b"0":
            subs[0].close()  # from inside: stops now, the rest of its queue still drains
            closed.set()

    subs.append(bus.subscribe("a", handler))
    bus.publish_batch(("a", str(i)) for i in range(5))
    assert closed.wait(TIMEOUT)
    assert subs[0].closed
    bus.close()
    assert dispatchers() == []


def test_coroutine_subscriptions_do_not_add_threads() -> None:
    async def main() -> int:
        seen: list[str] = []
        done = asyncio.Event()

        async def handler(event: polybus.Event) -> None:
            seen.append(event.topic)
            if len(seen) == 100:
                done.set()

        with polybus.connect("memory://") as bus:
            for i in range(100):
                bus.subscribe(f"c.{i}", handler)
            count = len(dispatchers())
            bus.publish_batch((f"c.{i}", b"x") for i in range(100))
            await asyncio.wait_for(done.wait(), TIMEOUT)
        return count

    assert asyncio.run(main()) == 2
