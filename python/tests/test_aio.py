"""The asyncio API, polybus.aio."""

from __future__ import annotations

import asyncio
import datetime
import threading

import pytest

import polybus
import polybus.aio
from conftest import TIMEOUT


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


def test_publish_subscribe_close() -> None:
    async def main() -> None:
        got: list[polybus.Event] = []
        done = asyncio.Event()
        async with await polybus.aio.connect({"url": "memory://", "name": "svc"}) as bus:

            async def handler(event: polybus.Event) -> None:
                got.append(event)
                if len(got) == 4:
                    done.set()

            sub = await bus.subscribe("orders.*", handler, queue_size=2)
            await bus.publish("orders.created", {"id": 1}, key="k")
            assert (
                await bus.publish_many([("orders.a", b"1"), ("orders.b", b"2"), ("orders.c", b"3")])
                == 3
            )
            await done.wait()
            async with sub:
                assert sub.pattern == "orders.*" and not sub.closed
            assert sub.closed
        assert bus.closed
        assert got[0].json() == {"id": 1} and got[0].source == "svc"
        assert [e.payload for e in got[1:]] == [b"1", b"2", b"3"]
        assert bus.stats()["acked"] == 4
        with pytest.raises(polybus.ClosedError):
            await bus.publish("orders.created", b"x")

    run(main())


def test_backpressure_waits_off_the_loop() -> None:
    async def main() -> None:
        seen = 0
        async with await polybus.aio.connect("memory://") as bus:

            async def handler(event: polybus.Event) -> None:
                nonlocal seen
                await asyncio.sleep(0.001)
                seen += 1

            await bus.subscribe("a", handler, queue_size=1, batch_size=1)
            for i in range(20):
                await bus.publish("a", str(i))
        assert seen == 20

    run(main())


def test_decorator_and_plain_handlers() -> None:
    async def main() -> None:
        threads: set[str] = set()
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        async with await polybus.aio.connect("memory://") as bus:

            @bus.on("a")
            def plain(event: polybus.Event) -> None:
                threads.add(threading.current_thread().name)
                loop.call_soon_threadsafe(done.set)

            await bus.publish("a", b"x")
            await done.wait()
        assert threads and threading.current_thread().name not in threads

    run(main())


def test_a_failing_coroutine_is_retried_and_closing_inside_does_not_deadlock() -> None:
    async def main() -> None:
        attempts: list[int] = []
        bus = await polybus.aio.connect("memory://")

        async def handler(event: polybus.Event) -> None:
            attempts.append(event.attempt)
            if event.attempt < 2:
                raise RuntimeError("first try fails")
            await bus.close()

        await bus.subscribe("a", handler, backoff_initial_ms=1, backoff_max_ms=1)
        await bus.publish("a", b"x")
        while not bus.closed:
            await asyncio.sleep(0.01)
        await bus.close()
        assert attempts == [1, 2]
        assert bus.stats()["failed"] == 1

    run(main())


def test_publish_sets_the_event_time() -> None:
    async def main() -> None:
        got: list[polybus.Event] = []
        done = asyncio.Event()
        async with await polybus.aio.connect("memory://") as bus:

            async def handler(event: polybus.Event) -> None:
                got.append(event)
                done.set()

            await bus.subscribe("t", handler)
            await bus.publish("t", b"x", time=1_234_567_890.5)
            await done.wait()
            with pytest.raises(polybus.InvalidArgumentError):
                await bus.publish("t", b"x", time=-1.0)
        utc = datetime.timezone.utc
        assert got[0].time == datetime.datetime.fromtimestamp(1_234_567_890.5, utc)

    run(main())
