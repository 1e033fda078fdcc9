"""The asyncio flavour of polybus: the same names as :mod:`polybus`, awaited.

Blocking work (connecting, waiting under backpressure, draining on close) runs off the event
loop, so the loop keeps running coroutine handlers meanwhile. Coroutine handlers run on the
loop that called :meth:`Bus.subscribe`; plain handlers run on dispatcher threads.

Cancelling a task that awaits :func:`connect`, :meth:`Bus.publish`, :meth:`Bus.publish_batch`
or a ``close`` (``task.cancel()``, :func:`asyncio.timeout`, :func:`asyncio.wait_for`) stops the
native wait at once and raises :class:`asyncio.CancelledError` (``TimeoutError`` from the
timeouts), as asyncio expects; what the call leaves behind is the core's rule, the same in
every language: connecting leaves nothing open, a publish may still be published, a batch
starts no further events, a close closes anyway and drains in the background.

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
import contextvars
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
T = TypeVar("T")


async def _off_loop(
    call: Callable[[_polybus._Cancel], T],
    abandoned: Callable[[T], Awaitable[object]] | None = None,
) -> T:
    """Runs the blocking native ``call`` off the loop, guarded by a core cancel handle.

    The native calls block a thread (with the interpreter released) until the core is done, so
    they run in the loop's default executor, as :func:`asyncio.to_thread` would run them (with
    the caller's context variables). Cancelling a thread is impossible, so cancelling the
    awaiting task alone would leave the thread blocked until the call's own timeout
    (``publish_timeout_ms``, ``connect_timeout_ms``, ``close_timeout_ms``). Instead each call
    gets a core cancel handle: when the task is cancelled, the handle fires, the core stops
    the native wait at once, and this waits for the thread to return before letting
    :class:`asyncio.CancelledError` propagate. So when the cancellation is seen, no thread is
    left blocked and what the call left behind is settled; the call's own outcome (its
    :class:`polybus.CancelledError`, mostly) is dropped, as the task asked for none. Had the
    call finished anyway (a race), ``abandoned`` gets its result.
    """
    cancel = _polybus._Cancel()
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    future = loop.run_in_executor(None, context.run, call, cancel)
    try:
        # Shielded: the executor's future outlives a cancellation of this task, so its
        # outcome can still be waited for below.
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel.cancel()
        try:
            result = await future
        except Exception:  # noqa: BLE001 - the call gave up, as the task asked
            pass
        else:
            if abandoned is not None:
                await abandoned(result)
        raise


async def connect(config: str | Mapping[str, Any]) -> Bus:
    """Connects to a bus without blocking the event loop.

    Cancelling the awaiting task (or an :func:`asyncio.timeout` passing) stops connecting at
    once and leaves nothing open.

    Args:
        config: A URL (``"memory://"``), a JSON object as text, or a dict of config fields.

    Returns:
        The connected bus.

    Raises:
        InvalidConfigError: The config cannot be parsed.
        PolybusTimeoutError: Connecting took longer than ``connect_timeout_ms``.
        PolybusConnectionError: The broker cannot be reached.
    """

    async def close(bus: _polybus.Bus) -> None:
        # Connected just as the task was cancelled: nobody can have it, so nothing stays open.
        await asyncio.get_running_loop().run_in_executor(None, bus.close)

    return Bus(await _off_loop(functools.partial(_polybus._connect, config), close))


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
        """Stops receiving and waits, off the loop, until queued and in-flight events finish.

        Cancelling the awaiting task stops the wait at once; the subscription is closed anyway
        and its queued and in-flight events still finish, in the background.
        """
        await _off_loop(self._native._close)

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

        Cancelling the awaiting task stops the wait at once; the event may still be published
        (its place in the order was fixed when the publish started).

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
            await _off_loop(pending.wait)

    async def publish_batch(self, events: Iterable[Any]) -> int:
        """Publishes ``(topic, payload)`` pairs or dicts in order, pipelined; see
        :meth:`polybus.Bus.publish_batch`.

        ``events`` is read on the loop; the publish (one call of the core's pipelined
        publish) runs off it, so the loop keeps running meanwhile. Cancelling the awaiting task
        stops it at once: no further events are started; those already started may still be
        published.

        Returns:
            How many events were published (all of them).

        Raises:
            PolybusError: As :meth:`publish`, for the first event that failed; its
                ``published`` attribute says how many events before it were published.
        """
        items = list(events)
        return await _off_loop(functools.partial(self._native._publish_batch, items))

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
        """Closes the bus, waiting off the loop for queued and in-flight events to finish.

        Cancelling the awaiting task stops the wait at once; the bus is closed anyway and its
        queued and in-flight events still finish, in the background. Awaiting ``close()``
        again waits for them.
        """
        await _off_loop(self._native._close)

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
