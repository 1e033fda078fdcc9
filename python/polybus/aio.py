"""The asyncio flavour of polybus: the same names as :mod:`polybus`, awaited.

Blocking work (connecting, waiting under backpressure, draining on close) runs off the event
loop, so the loop keeps running coroutine handlers meanwhile. Coroutine handlers run on the
loop that called :meth:`Bus.subscribe`; plain handlers run on dispatcher threads.

>>> import asyncio, polybus.aio
>>> async def main():
...     got = asyncio.Event()
...     async with await polybus.aio.connect("memory://") as bus:
...         async def handler(event):
...             got.set()
...         await bus.subscribe("orders.*", handler)
...         await bus.publish("orders.created", b"hello")
...         await asyncio.wait_for(got.wait(), 5)
...     return bus.closed
>>> asyncio.run(main())
True
"""

from __future__ import annotations

import asyncio
import datetime
import functools
from collections.abc import Awaitable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, TypeVar, Union, final

from . import _dispatch, _polybus
from ._polybus import Event

if TYPE_CHECKING:
    from . import ConnectionState

__all__ = ["Bus", "Subscription", "connect"]

Handler = Callable[[Event], Union[Awaitable[object], object]]
H = TypeVar("H", bound=Handler)
StateCallback = Callable[["ConnectionState"], Union[Awaitable[object], object]]
C = TypeVar("C", bound=StateCallback)


async def connect(config: str | Mapping[str, Any]) -> Bus:
    """Connects to a bus without blocking the event loop.

    Args:
        config: A URL (``"memory://"``), a JSON object as text, or a dict of config fields.

    Returns:
        The connected bus.

    Raises:
        InvalidConfigError: The config cannot be parsed.
        PolybusTimeoutError: Connecting took longer than ``connect_timeout_ms``.
        PolybusConnectionError: The broker cannot be reached.
    """
    return Bus(await asyncio.to_thread(_polybus.connect, config))


@final
class Subscription:
    """A running subscription; ``await close()`` or ``async with`` ends it."""

    def __init__(self, native: _polybus.Subscription) -> None:
        self._native = native

    @property
    def pattern(self) -> str:
        """The pattern subscribed to."""
        return self._native.pattern

    @property
    def closed(self) -> bool:
        """Whether the subscription has been closed (by itself or by its bus)."""
        return self._native.closed

    async def close(self) -> None:
        """Stops receiving and waits, off the loop, until queued and in-flight events finish."""
        await asyncio.to_thread(self._native.close)

    async def unsubscribe(self) -> None:
        """The same as :meth:`close`."""
        await self.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return repr(self._native)


@final
class Bus:
    """A connection to an event bus, for asyncio code. Made by :func:`connect`."""

    def __init__(self, native: _polybus.Bus) -> None:
        self._native = native

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._native.closed

    @property
    def connection_state(self) -> ConnectionState:
        """``"connected"``, ``"disconnected"`` (reconnecting) or ``"closed"``."""
        return self._native.connection_state

    def on_connection_state(self, callback: C) -> C:
        """Calls ``callback(state)`` on the running event loop whenever the connection state
        changes; the last call is ``"closed"``. A coroutine function is run as a task.

        Must be called while the event loop runs. Returns ``callback``, so it works as a
        decorator.

        Raises:
            ClosedError: The bus is closed.
            TypeError: ``callback`` is not callable.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {type(callback).__name__}")
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Future[object]] = set()

        def run(state: ConnectionState) -> None:
            try:
                result = callback(state)
                if asyncio.iscoroutine(result):
                    task = asyncio.ensure_future(result)
                    tasks.add(task)
                    task.add_done_callback(done)
            except Exception as exc:  # noqa: BLE001 - logged, like a plain callback's
                _dispatch.log.error("connection state callback failed on %r: %s", state, exc,
                                    exc_info=exc)

        def done(task: asyncio.Future[object]) -> None:
            tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                _dispatch.log.error("connection state callback failed: %s", exc, exc_info=exc)

        def deliver(state: ConnectionState) -> None:
            try:
                loop.call_soon_threadsafe(run, state)
            except RuntimeError:
                pass  # the loop is closed: nobody is listening any more

        self._native.on_connection_state(deliver)
        return callback

    async def publish(
        self,
        topic: str,
        payload: object,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        id: str | None = None,
        type: str | None = None,
        time: datetime.datetime | float | None = None,
    ) -> None:
        """Publishes one event; waits off the loop only when the backend makes it wait.

        Args:
            topic: The topic, dot-separated (``orders.created``).
            payload: ``bytes`` or ``str`` as they are, any other value as JSON.
            key: The ordering key: events with one key are handled in order, one at a time.
            headers: Header names to values.
            id: The event id (default: a new UUIDv7).
            type: The event type (default: the topic).
            time: The event time (default: now): a ``datetime`` (a naive one is taken as
                UTC) or seconds since the Unix epoch.

        Raises:
            ClosedError: The bus is closed.
            InvalidTopicError: The topic is not valid.
            TooLargeError: The payload exceeds ``max_payload``.
            InvalidArgumentError: A header or the key is not valid, or ``time`` is before 1970.
            PayloadError: The payload cannot be encoded as JSON.
            PolybusTimeoutError: The backend did not accept it within ``publish_timeout_ms``.
            TypeError: ``time`` is neither a ``datetime`` nor a number.
        """
        pending = self._native._publish_nowait(
            topic, payload, key=key, headers=headers, id=id, type=type, time=time
        )
        if pending is not None:
            await asyncio.to_thread(pending.wait)

    async def publish_batch(self, events: Iterable[Any]) -> int:
        """Publishes ``(topic, payload)`` pairs or dicts in order, pipelined; see
        :meth:`polybus.Bus.publish_batch`.

        ``events`` is read on the loop; the publish (one call of the core's pipelined
        publish) runs off it, so the loop keeps running meanwhile.

        Returns:
            How many events were published (all of them).

        Raises:
            PolybusError: As :meth:`publish`, for the first event that failed; its
                ``published`` attribute says how many events before it were published.
        """
        items = list(events)
        return await asyncio.to_thread(self._native.publish_batch, items)

    async def publish_many(self, events: Iterable[Any]) -> int:
        """The same as :meth:`publish_batch`."""
        return await self.publish_batch(events)

    async def subscribe(self, pattern: str, handler: Handler, **options: Any) -> Subscription:
        """Subscribes ``handler`` to ``pattern``; see :meth:`polybus.Bus.subscribe`.

        A coroutine handler runs on the running event loop.
        """
        loop = asyncio.get_running_loop()
        subscribe = functools.partial(
            self._native.subscribe, pattern, handler, loop=loop, **options
        )
        return Subscription(await asyncio.to_thread(subscribe))

    def on(self, pattern: str, **options: Any) -> Callable[[H], H]:
        """A decorator that subscribes the decorated handler and returns it unchanged.

        Must be used while the event loop runs (coroutine handlers run on it).
        """
        return self._native.on(pattern, loop=asyncio.get_running_loop(), **options)

    def stats(self) -> dict[str, int]:
        """The bus's counters since it was opened."""
        return self._native.stats()

    async def close(self) -> None:
        """Closes the bus, waiting off the loop for queued and in-flight events to finish."""
        await asyncio.to_thread(self._native.close)

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return repr(self._native)
