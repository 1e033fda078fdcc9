"""Giving up a wait: the ``timeout=`` of the blocking calls and cancelled ``polybus.aio`` awaits.

The core decides what a call that gives up leaves behind; these tests check that Python reaches
it: the error and its text, a bus that goes on (or is closed, for close), and no thread left
blocked in a native wait.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import polybus
import polybus.aio
from conftest import TIMEOUT

#: Long enough that only the caller's deadline can end a wait in these tests.
LONG_MS = 60_000


class Blocked:
    """A memory bus whose one subscriber (``queue_size=1``, ``concurrency=1``) blocks in its
    handler until released, so that publishes and closes have to wait."""

    def __init__(self) -> None:
        self.bus = polybus.connect(
            {"url": "memory://", "publish_timeout_ms": LONG_MS, "close_timeout_ms": LONG_MS}
        )
        self.entered = threading.Event()
        self.release = threading.Event()
        self.handled: list[bytes] = []
        self.sub = self.bus.subscribe("t", self.handle, queue_size=1, concurrency=1)

    def handle(self, event: polybus.Event) -> None:
        self.entered.set()
        self.release.wait()
        self.handled.append(event.payload)

    def hold(self) -> None:
        """Publishes one event and waits until the handler is blocked on it."""
        self.bus.publish("t", b"held")
        assert self.entered.wait(TIMEOUT)

    def fill(self) -> polybus.PolybusTimeoutError:
        """Publishes until one publish has to wait, and returns its error (after 50 ms)."""
        for i in range(100):
            try:
                self.bus.publish("t", f"fill-{i}", timeout=0.05)
            except polybus.PolybusTimeoutError as e:
                return e
        pytest.fail("100 publishes never filled a queue of 1")


@pytest.fixture
def blocked() -> Iterator[Blocked]:
    b = Blocked()
    try:
        yield b
    finally:
        b.release.set()
        b.bus.close()


def polybus_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("polybus-dispatch")]


def test_cancelled_error_is_exported_and_is_not_asyncio_s() -> None:
    assert "CancelledError" in polybus.__all__
    assert polybus.CancelledError.code == "POLYBUS_ERR_CANCELLED"
    assert issubclass(polybus.CancelledError, polybus.PolybusError)
    assert issubclass(polybus.CancelledError, Exception)
    assert not issubclass(polybus.CancelledError, asyncio.CancelledError)
    assert not issubclass(polybus.CancelledError, concurrent.futures.CancelledError)


def test_a_publish_gives_up_at_its_timeout_and_the_bus_goes_on(blocked: Blocked) -> None:
    blocked.hold()
    err = blocked.fill()
    assert err.code == "POLYBUS_ERR_TIMEOUT" and isinstance(err, TimeoutError)
    text = str(err)
    assert "publish" in text and "the caller's deadline passed" in text, text
    assert "may still be published" in text, text
    assert not blocked.bus.closed
    blocked.release.set()
    # Waits for room as long as needed within its deadline.
    blocked.bus.publish("t", b"after", timeout=TIMEOUT)
    blocked.bus.close()
    assert blocked.handled[0] == b"held" and blocked.handled[-1] == b"after"
    stats = blocked.bus.stats()
    assert stats["acked"] == len(blocked.handled) and stats["dropped"] == 0


def test_a_batch_gives_up_at_its_timeout_and_says_how_many_were_published(
    blocked: Blocked,
) -> None:
    blocked.hold()
    blocked.fill()
    batch = [("t", f"batch-{i}") for i in range(10)]
    for publish in (blocked.bus.publish_batch, blocked.bus.publish_many):
        with pytest.raises(polybus.PolybusTimeoutError) as info:
            publish(batch, timeout=0.1)
        published = info.value.published
        assert published is not None and 0 <= published < len(batch)
        assert "the caller's deadline passed" in str(info.value), str(info.value)
    blocked.release.set()
    assert blocked.bus.publish_batch(batch, timeout=TIMEOUT) == len(batch)


def test_a_close_gives_up_at_its_timeout_but_the_bus_is_closed_and_drains(
    blocked: Blocked,
) -> None:
    blocked.hold()
    with pytest.raises(polybus.PolybusTimeoutError) as info:
        blocked.bus.close(timeout=0.05)
    text = str(info.value)
    assert "close" in text and "the caller's deadline passed" in text, text
    assert "drain goes on" in text, text
    assert blocked.bus.closed and blocked.sub.closed
    with pytest.raises(polybus.ClosedError):
        blocked.bus.publish("t", b"late")
    with pytest.raises(polybus.ClosedError):
        blocked.bus.publish_batch([("t", b"late")], timeout=1)
    # A second close with a deadline waits for the drain too, and gives up as well.
    with pytest.raises(polybus.PolybusTimeoutError):
        blocked.bus.close(timeout=0.05)
    blocked.release.set()
    blocked.bus.close()
    assert blocked.handled == [b"held"]
    stats = blocked.bus.stats()
    assert stats["acked"] == 1 and stats["dropped"] == 0
    assert polybus_threads() == []


def test_a_subscription_close_gives_up_at_its_timeout_but_drains(blocked: Blocked) -> None:
    blocked.hold()
    for close in (blocked.sub.close, blocked.sub.unsubscribe):
        with pytest.raises(polybus.PolybusTimeoutError, match="deadline"):
            close(timeout=0.05)
        assert blocked.sub.closed and not blocked.bus.closed
    blocked.release.set()
    blocked.sub.close(timeout=TIMEOUT)
    assert blocked.handled == [b"held"] and blocked.bus.stats()["acked"] == 1
    # The subscription is gone: the bus takes events nobody receives.
    blocked.bus.publish("t", b"unheard", timeout=TIMEOUT)
    blocked.bus.close(timeout=TIMEOUT)
    assert blocked.handled == [b"held"]


def test_timeouts_are_seconds_and_must_not_be_negative(bus: polybus.Bus) -> None:
    got: list[bytes] = []
    bus.subscribe("t", lambda e: got.append(e.payload))
    bus.publish("t", b"1", timeout=TIMEOUT)
    bus.publish("t", b"2", timeout=math.inf)  # too long to represent: no deadline
    assert bus.publish_batch([("t", b"3")], timeout=TIMEOUT) == 1
    for bad in (-1.0, math.nan):
        with pytest.raises(polybus.InvalidArgumentError, match="timeout"):
            bus.publish("t", b"x", timeout=bad)
        with pytest.raises(polybus.InvalidArgumentError, match="timeout"):
            bus.publish_batch([("t", b"x")], timeout=bad)
        with pytest.raises(polybus.InvalidArgumentError, match="timeout"):
            polybus.connect("memory://", timeout=bad)
    with pytest.raises(TypeError):
        bus.publish("t", b"x", timeout="1")  # type: ignore[arg-type]
    bus.close(timeout=TIMEOUT)
    assert got == [b"1", b"2", b"3"]


class SilentServer:
    """A TCP server on loopback that accepts one connection and never says a word;
    ``hung_up`` is set once the client closes it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = threading.Event()
        self.hung_up = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="silent-server", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return  # shut down before anyone came
        with conn:
            self.accepted.set()
            try:
                while conn.recv(4096):
                    pass
            except OSError:
                pass
        self.hung_up.set()

    def stop(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes a pending accept (Linux)
        except OSError:
            pass
        self.listener.close()
        self.thread.join(TIMEOUT)


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.stop()


def silent_config(server: SilentServer) -> dict[str, Any]:
    return {"url": f"nats://127.0.0.1:{server.port}", "connect_timeout_ms": LONG_MS}


def test_a_connect_gives_up_at_its_timeout_and_leaves_nothing_open(
    silent_server: SilentServer,
) -> None:
    with pytest.raises(polybus.PolybusTimeoutError) as info:
        polybus.connect(silent_config(silent_server), timeout=0.2)
    assert "connect: the caller's deadline passed" in str(info.value), str(info.value)
    assert silent_server.accepted.is_set()
    assert silent_server.hung_up.wait(TIMEOUT), "the connection was left open"


def test_the_native_side_of_an_aio_await_fails_with_cancelled_error(blocked: Blocked) -> None:
    blocked.hold()
    blocked.fill()
    cancel = polybus._polybus._Cancel()
    failures: list[BaseException] = []

    def wait_publish() -> None:
        try:
            p = blocked.bus._publish_nowait("t", b"waits")
            assert p is not None, "the queue was not full"
            p.wait(cancel)
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    waiter = threading.Thread(target=wait_publish)
    waiter.start()
    cancel.cancel()
    waiter.join(TIMEOUT)
    assert not waiter.is_alive()
    assert cancel.cancelled
    assert len(failures) == 1 and isinstance(failures[0], polybus.CancelledError), failures
    assert str(failures[0]).startswith("cancelled: publish")
    with pytest.raises(polybus.CancelledError) as info:
        blocked.bus._publish_batch([("t", b"x")], cancel)
    assert info.value.published == 0


def run(main: Any) -> Any:
    return asyncio.run(asyncio.wait_for(main, TIMEOUT))


async def start_waiting(bus: polybus.aio.Bus) -> asyncio.Task[None]:
    """Publishes until a publish has to wait off the loop, and returns the task awaiting it."""
    for i in range(100):
        task = asyncio.ensure_future(bus.publish("t", f"fill-{i}"))
        # One turn of the loop (not a timed wait): the task's first step runs, and either
        # publishes at once (done) or starts waiting off the loop.
        await asyncio.sleep(0)
        if not task.done():
            return task
        task.result()
    pytest.fail("100 publishes never filled a queue of 1")


async def blocked_aio_bus(
    release: threading.Event, entered: threading.Event, handled: list[bytes]
) -> tuple[polybus.aio.Bus, polybus.aio.Subscription]:
    """The asyncio twin of :class:`Blocked`: the bus and its blocked subscription."""
    bus = await polybus.aio.connect(
        {"url": "memory://", "publish_timeout_ms": LONG_MS, "close_timeout_ms": LONG_MS}
    )

    def handle(event: polybus.Event) -> None:
        entered.set()
        release.wait()
        handled.append(event.payload)

    sub = await bus.subscribe("t", handle, queue_size=1, concurrency=1)
    await bus.publish("t", b"held")
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, entered.wait, TIMEOUT)
    return bus, sub


def test_a_cancelled_aio_publish_frees_its_thread_and_the_bus_goes_on() -> None:
    release, entered = threading.Event(), threading.Event()
    handled: list[bytes] = []

    async def main() -> dict[str, int]:
        loop = asyncio.get_running_loop()
        # One thread for every wait off the loop: a publish still blocked after its task was
        # cancelled would hold it, and nothing else could run there.
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=1))
        bus, _ = await blocked_aio_bus(release, entered, handled)
        try:
            task = await start_waiting(bus)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            free = loop.run_in_executor(None, threading.get_ident)
            assert await asyncio.wait_for(free, TIMEOUT)
            # The queue is still full: the batch waits until wait_for cancels it.
            batch = bus.publish_batch([("t", b"b1"), ("t", b"b2")])
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(batch, 0.1)
            free = loop.run_in_executor(None, threading.get_ident)
            assert await asyncio.wait_for(free, TIMEOUT)
            assert not bus.closed
        finally:
            release.set()
        await bus.publish("t", b"after")
        await bus.close()
        return bus.stats()

    stats = run(main())
    assert handled[0] == b"held" and handled[-1] == b"after"
    assert stats["acked"] == len(handled) and stats["dropped"] == 0


def test_a_cancelled_aio_close_still_closes_and_a_second_one_waits_for_the_drain() -> None:
    release, entered = threading.Event(), threading.Event()
    handled: list[bytes] = []

    async def main() -> dict[str, int]:
        bus, sub = await blocked_aio_bus(release, entered, handled)
        try:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(bus.close(), 0.05)
            assert bus.closed and sub.closed
            with pytest.raises(polybus.ClosedError):
                await bus.publish("t", b"late")
        finally:
            release.set()
        await bus.close()
        return bus.stats()

    stats = run(main())
    assert handled == [b"held"]
    assert stats["acked"] == 1 and stats["dropped"] == 0
    assert polybus_threads() == []


def test_a_cancelled_aio_subscription_close_still_closes_and_drains() -> None:
    release, entered = threading.Event(), threading.Event()
    handled: list[bytes] = []

    async def main() -> dict[str, int]:
        bus, sub = await blocked_aio_bus(release, entered, handled)
        try:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(sub.close(), 0.05)
            assert sub.closed and not bus.closed
        finally:
            release.set()
        await sub.close()
        assert handled == [b"held"]
        await bus.publish("t", b"unheard")
        await bus.close()
        return bus.stats()

    stats = run(main())
    assert handled == [b"held"]
    assert stats["acked"] == 1 and stats["dropped"] == 0


def test_an_aio_connect_cancelled_by_wait_for_leaves_no_thread_and_no_connection(
    silent_server: SilentServer,
) -> None:
    before = set(threading.enumerate())
    outcome: list[BaseException] = []

    async def main() -> None:
        try:
            await asyncio.wait_for(polybus.aio.connect(silent_config(silent_server)), 0.2)
        except BaseException as e:  # noqa: BLE001 - checked below
            outcome.append(e)

    # In a thread of its own, so that a connect left blocked (which asyncio.run's executor
    # shutdown would wait for) shows as a runner that does not end, not as a slow pass.
    runner = threading.Thread(target=asyncio.run, args=(main(),), name="runner")
    runner.start()
    runner.join(TIMEOUT)
    assert not runner.is_alive(), "a thread is still blocked in the native connect"
    assert len(outcome) == 1, outcome
    assert isinstance(outcome[0], asyncio.TimeoutError), outcome
    assert not isinstance(outcome[0], polybus.PolybusError), outcome
    assert silent_server.accepted.is_set()
    assert silent_server.hung_up.wait(TIMEOUT), "the connection was left open"
    silent_server.thread.join(TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while True:
        left = [t.name for t in threading.enumerate() if t not in before]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.01)  # polling a condition, bounded by the deadline
    assert left == []
    assert threading.active_count() == len(before) - 1  # the server's thread ended too
