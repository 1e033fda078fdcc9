"""The native module of polybus (type stubs; the public names are re-exported by ``polybus``)."""

import asyncio
import datetime
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar, Literal, TypeVar, final

from typing_extensions import TypeAlias

__all__ = [
    "AbiMismatchError",
    "AuthError",
    "BackendError",
    "Bus",
    "CancelledError",
    "ClosedError",
    "Event",
    "HandlerError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidConfigError",
    "InvalidPatternError",
    "InvalidTopicError",
    "PanicError",
    "PayloadError",
    "PolybusConnectionError",
    "PolybusError",
    "PolybusTimeoutError",
    "Subscription",
    "TooLargeError",
    "UnsupportedError",
    "_Batch",
    "_Cancel",
    "_Dispatcher",
    "_PendingPublish",
    "_StateWatch",
    "__version__",
    "_connect",
    "connect",
]

__version__: str

_Handler: TypeAlias = Callable[[Event], Awaitable[object] | object]
_H = TypeVar("_H", bound=_Handler)
_ConnectionState: TypeAlias = Literal["connected", "disconnected", "closed"]
_C = TypeVar("_C", bound=Callable[[_ConnectionState], object])

def connect(config: str | Mapping[str, Any], *, timeout: float | None = None) -> Bus:
    """Connects to a bus.

    Blocks until connected, with the interpreter released; Ctrl-C interrupts it, and so does
    ``timeout`` passing (nothing is left open then).

    Args:
        config: A URL (``"memory://"``, ``"memory://NAME"`` shared in the process by name), a
            JSON object as text, or a dict with the fields ``url``, ``prefix``, ``name``,
            ``connect_timeout_ms``, ``publish_timeout_ms``, ``close_timeout_ms``,
            ``max_payload`` and the broker sections ``nats`` (credentials, TLS, client name),
            ``jetstream`` (stream and consumer settings), ``redis`` (servers, credentials,
            TLS, stream settings) and ``kafka`` (client id, SASL, TLS, topic and consumer
            settings, raw librdkafka ``properties``), each a dict.
        timeout: Seconds to wait at most, on top of ``connect_timeout_ms`` (None: no limit
            but that one). Unlike ``connect_timeout_ms``, a config field, it is this caller's
            deadline: the message of its error says so ("the caller's deadline passed").

    Returns:
        The connected bus.

    Raises:
        InvalidConfigError: The config cannot be parsed or names an unknown field.
        PolybusTimeoutError: Connecting took longer than ``connect_timeout_ms`` or
            ``timeout``.
        InvalidArgumentError: ``timeout`` is negative or NaN.
        PolybusConnectionError: The broker cannot be reached.
        AuthError: The broker rejected the credentials.
        TypeError: ``config`` is neither a string nor a mapping.

    Examples:
        >>> bus = connect({"url": "memory://", "name": "billing"}, timeout=5)
        >>> bus.close()
    """

def _connect(config: str | Mapping[str, Any], cancel: _Cancel) -> Bus:
    """:func:`connect`, giving up when ``cancel`` fires (internal: :mod:`polybus.aio`)."""

@final
class Bus:
    """A connection to an event bus. Made by :func:`connect`.

    Handlers run on the bus's dispatcher threads, a small pool owned by Python that serves
    every subscription of the bus (plain functions, up to ``concurrency`` of one subscription
    at once), or on the event loop that was running when they subscribed (``async def``
    functions). A handler that returns acknowledges its event; one that raises nacks it: the
    exception is logged to the ``polybus`` logger and the core redelivers the event with
    backoff up to ``max_attempts``, then dead-letters or drops it.

    After :meth:`close` every method but :meth:`stats` and :meth:`close` raises
    :class:`ClosedError`. A bus is a context manager that closes on exit.
    """

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""

    @property
    def connection_state(self) -> _ConnectionState:
        """The state of the connection to the broker.

        ``"connected"``; ``"disconnected"`` while the client reconnects (automatically:
        subscriptions survive it, publishes may wait or fail meanwhile); ``"closed"`` after
        :meth:`close`, for good. ``memory://`` is connected until closed. Readable after close.
        """

    def on_connection_state(self, callback: _C) -> _C:
        """Calls ``callback(state)`` whenever the connection state changes.

        The callback runs on a daemon thread owned by Python, one per registration, with the
        states in order (a change and its reversal may be seen as no change); the last call is
        ``"closed"``, after which the thread ends. An exception in the callback is logged to
        the ``polybus`` logger. Returns ``callback`` unchanged, so it works as a decorator.

        Raises:
            ClosedError: The bus is closed.
            TypeError: ``callback`` is not callable.

        Examples:
            >>> import threading
            >>> closed = threading.Event()
            >>> with connect("memory://") as bus:
            ...     @bus.on_connection_state
            ...     def changed(state: str) -> None:
            ...         if state == "closed":
            ...             closed.set()
            >>> closed.wait(5)
            True
        """

    def publish(
        self,
        topic: str,
        payload: object,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        id: str | None = None,
        type: str | None = None,
        time: datetime.datetime | float | None = None,
        timeout: float | None = None,
    ) -> None:
        """Publishes one event and returns once the backend has accepted it.

        Returns at once when the backend accepts the event without waiting (memory: it is
        queued to every matching subscription); otherwise waits with the interpreter released
        (a subscription's queue is full), up to ``publish_timeout_ms`` or ``timeout``.

        Args:
            topic: Dot-separated tokens, such as ``"orders.created"``.
            payload: ``bytes``, ``bytearray`` or ``memoryview`` as they are; ``str`` as UTF-8;
                any other value as JSON (with the header ``content-type: application/json``).
            key: The ordering key: events with one key are handled in publish order, one at a
                time.
            headers: Header names to values.
            id: The event id (default: a new UUIDv7).
            type: The event type (default: the topic).
            time: The event time (default: now): a ``datetime`` (a naive one is taken as
                UTC), or seconds since the Unix epoch (as ``time.time()`` gives them). It
                reaches handlers exactly, to the microsecond, as :attr:`Event.time`.
            timeout: Seconds to wait at most for the backend to accept the event (None: up to
                ``publish_timeout_ms``). Once it passes the call gives up, but the event may
                still be published: its place in the order was fixed when the publish started.
                0 gives up at once.

        Raises:
            ClosedError: The bus is closed.
            InvalidTopicError: The topic is not valid.
            TooLargeError: The payload exceeds ``max_payload``.
            InvalidArgumentError: A header or the key is not valid, ``time`` is before 1970,
                or ``timeout`` is negative or NaN.
            PayloadError: The payload cannot be encoded as JSON.
            PolybusTimeoutError: Not accepted within ``publish_timeout_ms``, or ``timeout``
                passed (the message says the caller's deadline passed and that the event may
                still be published).
            TypeError: ``time`` is neither a ``datetime`` nor a number.

        Examples:
            >>> with connect("memory://") as bus:
            ...     bus.publish("orders.created", {"id": 1}, key="order-1", timeout=1.5)
        """

    def _publish_nowait(
        self,
        topic: str,
        payload: object,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        id: str | None = None,
        type: str | None = None,
        time: datetime.datetime | float | None = None,
    ) -> _PendingPublish | None:
        """Starts a publish without waiting (internal: the asyncio front end's fast path).

        Returns:
            None when the backend accepted the event, else the publish to wait on.
        """

    def publish_batch(
        self,
        events: Iterable[tuple[str, object] | Mapping[str, Any]],
        *,
        timeout: float | None = None,
    ) -> int:
        """Publishes many events in order, pipelined: the fast path for bulk publishing.

        Every item is converted first (an item that cannot be converted raises before any event
        is published); then the events go to the core's pipelined publish in one call, with the
        interpreter released: as many publishes as the backend allows are in flight at once, so
        a broker's round trip is paid once per window, not once per event. Ctrl-C interrupts
        it on the main thread, and so does ``timeout`` passing. It stops at the first failure.

        Args:
            events: ``(topic, payload)`` pairs, or dicts with ``topic``, ``payload`` and
                optionally ``key``, ``headers``, ``id``, ``type`` and ``time``, as
                :meth:`publish` takes them.
            timeout: Seconds the whole batch may take at most (None: no limit but each event's
                ``publish_timeout_ms``). Once it passes no further event is started; the
                error's ``published`` counts those confirmed before it gave up, and those
                started after them may still be published.

        Returns:
            How many events were published (all of them).

        Raises:
            PolybusError: As :meth:`publish`, for the first event that failed; the message
                names its index (``event 2 of the batch: ...``) and the ``published`` attribute
                says how many events, from the first, were published before it.
            TypeError: An item is neither a pair nor a dict, or a field has the wrong type
                (``published`` is 0).
            PolybusTimeoutError: As :meth:`publish`, or ``timeout`` passed (``published`` says
                how many were confirmed before).
            InvalidArgumentError: As :meth:`publish`, or ``timeout`` is negative or NaN.

        Examples:
            >>> with connect("memory://") as bus:
            ...     bus.publish_batch((("orders.created", str(i)) for i in range(3)), timeout=5)
            3
        """

    def publish_many(
        self,
        events: Iterable[tuple[str, object] | Mapping[str, Any]],
        *,
        timeout: float | None = None,
    ) -> int:
        """The same as :meth:`publish_batch` (its former name)."""

    def _publish_batch(
        self, events: Iterable[tuple[str, object] | Mapping[str, Any]], cancel: _Cancel
    ) -> int:
        """:meth:`publish_batch`, giving up when ``cancel`` fires (internal)."""

    def subscribe(
        self,
        pattern: str,
        handler: _Handler,
        *,
        group: str | None = None,
        concurrency: int = 1,
        max_attempts: int = 5,
        dead_letter: str | None = None,
        start: Literal["new", "earliest"] = "new",
        backoff_initial_ms: int = 100,
        backoff_max_ms: int = 10000,
        queue_size: int = 1024,
        batch_size: int = 256,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Subscription:
        """Subscribes ``handler`` to ``pattern``.

        Args:
            pattern: Topics to receive: ``*`` matches one token, ``>`` the rest.
            handler: Called with each :class:`Event`. A plain function runs on a dispatcher
                thread; an ``async def`` function runs on ``loop``.
            group: Competing consumers: each event goes to one member of the group. None
                broadcasts.
            concurrency: Handlers in flight at once. Events with one key never overlap.
            max_attempts: Deliveries of one event before it is dead-lettered or dropped.
            dead_letter: Topic that receives events that failed ``max_attempts`` times.
            start: ``"new"``, or ``"earliest"`` on backends that keep history.
            backoff_initial_ms: First retry delay; it doubles on each further attempt.
            backoff_max_ms: Largest retry delay.
            queue_size: Events buffered before publishers wait.
            batch_size: Most events handed to a dispatcher thread at once.
            loop: The event loop coroutine handlers run on (default: the running loop).

        Returns:
            The running subscription.

        Raises:
            ClosedError: The bus is closed.
            InvalidPatternError: The pattern is not valid.
            InvalidArgumentError: An option is out of range, or a coroutine handler has no
                event loop.
            InvalidTopicError: ``dead_letter`` is not a valid topic.
            UnsupportedError: The backend cannot honour an option (``start="earliest"`` on
                ``memory://``).
            TypeError: ``handler`` is not callable.

        Examples:
            >>> with connect("memory://") as bus:
            ...     sub = bus.subscribe("orders.*", print, group="billing", concurrency=4)
        """

    def on(
        self,
        pattern: str,
        *,
        group: str | None = None,
        concurrency: int = 1,
        max_attempts: int = 5,
        dead_letter: str | None = None,
        start: Literal["new", "earliest"] = "new",
        backoff_initial_ms: int = 100,
        backoff_max_ms: int = 10000,
        queue_size: int = 1024,
        batch_size: int = 256,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Callable[[_H], _H]:
        """A decorator that subscribes the decorated handler and returns it unchanged.

        The options are those of :meth:`subscribe`; the subscription ends with the bus.

        Raises:
            ClosedError: The bus is closed.

        Examples:
            >>> with connect("memory://") as bus:
            ...     @bus.on("orders.*", group="billing")
            ...     def bill(event: Event) -> None:
            ...         pass
        """

    def stats(self) -> dict[str, int]:
        """The bus's counters since it was opened.

        Returns:
            ``published``, ``delivered`` (every attempt), ``acked``, ``failed``, ``retried``,
            ``dead_lettered`` and ``dropped``.
        """

    def close(self, *, timeout: float | None = None) -> None:
        """Closes the bus. Idempotent.

        New publishes and subscribes fail with :class:`ClosedError`; every subscription stops
        receiving and its queued and in-flight events are handled (bounded by
        ``close_timeout_ms``), with the interpreter released; then the connection is released
        and the dispatcher threads end. Called from one of this bus's handlers (or from the
        event loop its coroutine handlers need), it does not wait for the drain.

        A bus still open at interpreter exit is closed then, the same way.

        Args:
            timeout: Seconds to wait at most (None: up to ``close_timeout_ms``). Once it
                passes the call gives up, but the bus is closed anyway and its drain goes on in
                the background (still bounded by ``close_timeout_ms``); calling ``close()``
                again waits for it.

        Raises:
            PolybusTimeoutError: Handlers did not finish within ``close_timeout_ms`` (the rest
                was abandoned and counted as dropped), or ``timeout`` passed (the message says
                the caller's deadline passed and the drain goes on).
            InvalidArgumentError: ``timeout`` is negative or NaN.
        """

    def _close(self, cancel: _Cancel) -> None:
        """:meth:`close`, giving up when ``cancel`` fires (internal)."""

    def __enter__(self) -> Bus: ...
    def __exit__(
        self,
        *_exc: object,
    ) -> bool: ...

@final
class _PendingPublish:
    """A publish the backend has not accepted yet (internal)."""

    def wait(self, cancel: _Cancel | None = None) -> None:
        """Blocks, with the interpreter released, until the backend accepts the event or
        ``cancel`` fires."""

@final
class _Cancel:
    """A core cancel handle (internal): :mod:`polybus.aio` fires it when the task awaiting a
    native call is cancelled, so the call stops waiting at once."""

    def __init__(self) -> None: ...
    def cancel(self) -> None:
        """Fires the handle: the calls it guards stop waiting. Idempotent; any thread."""

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""

@final
class _StateWatch:
    """One registration of :meth:`Bus.on_connection_state` (internal)."""

    def next(self) -> _ConnectionState | None:
        """Blocks until the state changes; None once ``"closed"`` has been returned."""

@final
class _Batch:
    """One lane's events, handled by the asyncio dispatcher as one coroutine (internal)."""

    def events(self) -> list[Event]:
        """The events, in the order they must be handled."""

    def complete(self, handled: int, reason: str | None = None) -> None:
        """Reports how far the handler got: the first ``handled`` events succeeded; ``reason``,
        if given, is why the next one failed. The core delivers the rest again. Once only."""

    def ack_all(self) -> None:
        """Reports every event as handled. Once only."""

    def release(self) -> None:
        """Gives the batch back unhandled: the subscription's event loop is closed, so its
        handlers can never run again. No attempt is counted; the core stops the lane and leaves
        its events unacknowledged for the broker to deliver again. Once only."""

@final
class _Dispatcher:
    """The delivery queue of one bus and the dispatcher threads serving it (internal)."""

    def _serve(self) -> None:
        """The body of a dispatcher thread: takes batches until the bus is closed and drained."""

@final
class Subscription:
    """A running subscription, returned by :meth:`Bus.subscribe`.

    It runs until it is closed or its bus is, whether or not the object is kept. A context
    manager that closes on exit.
    """

    @property
    def pattern(self) -> str:
        """The pattern subscribed to."""

    @property
    def closed(self) -> bool:
        """Whether the subscription has been closed (by itself or by its bus)."""

    def close(self, *, timeout: float | None = None) -> None:
        """Stops receiving, lets queued and in-flight events finish, then returns. Idempotent.

        Called from one of its own handlers (or from the event loop its coroutine handlers
        need), it stops the subscription without waiting for the drain.

        Args:
            timeout: Seconds to wait at most (None: up to the bus's ``close_timeout_ms``).
                Once it passes the call gives up, but the subscription is closed anyway and
                its queued and in-flight events still finish, in the background.

        Raises:
            PolybusTimeoutError: Handlers did not finish within the bus's ``close_timeout_ms``,
                or ``timeout`` passed.
            InvalidArgumentError: ``timeout`` is negative or NaN.
        """

    def unsubscribe(self, *, timeout: float | None = None) -> None:
        """The same as :meth:`close`."""

    def _close(self, cancel: _Cancel) -> None:
        """:meth:`close`, giving up when ``cancel`` fires (internal)."""

    def __enter__(self) -> Subscription: ...
    def __exit__(
        self,
        *_exc: object,
    ) -> bool: ...

@final
class Event:
    """An event delivered to a handler: the published message plus the delivery attempt."""

    @property
    def topic(self) -> str:
        """The topic it was published on (without the bus prefix)."""

    @property
    def payload(self) -> bytes:
        """The payload, untouched."""

    @property
    def key(self) -> str | None:
        """The ordering key, or None."""

    @property
    def headers(self) -> dict[str, str]:
        """The headers, as a new dict."""

    @property
    def id(self) -> str:
        """The event id (a UUIDv7 unless the publisher set one)."""

    @property
    def type(self) -> str:
        """The event type (defaults to the topic)."""

    @property
    def source(self) -> str | None:
        """The publishing service's name (its bus ``name``), or None."""

    @property
    def time(self) -> datetime.datetime:
        """When it was published (or the time its publisher set), as a timezone-aware UTC
        ``datetime``, to the microsecond."""

    @property
    def attempt(self) -> int:
        """The delivery attempt: 1 on first delivery, 2 on the first retry, and so on."""

    def json(self) -> Any:
        """Decodes the payload as JSON.

        Raises:
            PayloadError: The payload is not valid JSON.
        """

class PolybusError(Exception):
    """The base of every polybus error. Its text is the core's, the same in every language:
    ``"kind: detail"``, such as ``invalid topic: "a..b": empty token at position 2``.

    Attributes:
        code: The C name of the status shared by every language, such as
            ``"POLYBUS_ERR_CLOSED"`` (None on this base class).
    """

    code: ClassVar[str | None]
    published: int | None
    """For the error of :meth:`Bus.publish_batch`: how many events, from the first, were
    published before the one that failed. None for other errors."""

class InvalidArgumentError(PolybusError, ValueError):
    """An argument was out of range (POLYBUS_ERR_INVALID_ARGUMENT)."""

    code: ClassVar[str]

class InvalidConfigError(PolybusError, ValueError):
    """The config could not be parsed or names an unknown setting (POLYBUS_ERR_INVALID_CONFIG)."""

    code: ClassVar[str]

class InvalidTopicError(PolybusError, ValueError):
    """A topic is not valid (POLYBUS_ERR_INVALID_TOPIC)."""

    code: ClassVar[str]

class InvalidPatternError(PolybusError, ValueError):
    """A subscription pattern is not valid (POLYBUS_ERR_INVALID_PATTERN)."""

    code: ClassVar[str]

class ClosedError(PolybusError):
    """The bus or subscription is closed (POLYBUS_ERR_CLOSED)."""

    code: ClassVar[str]

class UnsupportedError(PolybusError):
    """The backend cannot honour an option or pattern (POLYBUS_ERR_UNSUPPORTED)."""

    code: ClassVar[str]

class PolybusTimeoutError(PolybusError, TimeoutError):
    """An operation did not finish in time (POLYBUS_ERR_TIMEOUT): a limit of the config
    (``connect_timeout_ms``, ``publish_timeout_ms``, ``close_timeout_ms``) or the ``timeout``
    the caller gave, whose message says "the caller's deadline passed" and what the call left
    behind."""

    code: ClassVar[str]

class PolybusConnectionError(PolybusError, ConnectionError):
    """The broker could not be reached or the connection was lost (POLYBUS_ERR_CONNECTION)."""

    code: ClassVar[str]

class TooLargeError(PolybusError):
    """A payload exceeds ``max_payload`` (POLYBUS_ERR_TOO_LARGE)."""

    code: ClassVar[str]

class AuthError(PolybusError, PermissionError):
    """The broker rejected the credentials (POLYBUS_ERR_AUTH)."""

    code: ClassVar[str]

class BackendError(PolybusError):
    """The broker returned an error (POLYBUS_ERR_BACKEND)."""

    code: ClassVar[str]

class PayloadError(PolybusError, ValueError):
    """A payload could not be encoded or decoded as JSON (POLYBUS_ERR_PAYLOAD)."""

    code: ClassVar[str]

class HandlerError(PolybusError):
    """A handler failed (POLYBUS_ERR_HANDLER)."""

    code: ClassVar[str]

class PanicError(PolybusError):
    """A panic was caught at the API boundary (POLYBUS_ERR_PANIC)."""

    code: ClassVar[str]

class AbiMismatchError(PolybusError):
    """The library and its front end disagree on the ABI version (POLYBUS_ERR_ABI_MISMATCH)."""

    code: ClassVar[str]

class InternalError(PolybusError):
    """An internal invariant was broken (POLYBUS_ERR_INTERNAL)."""

    code: ClassVar[str]

class CancelledError(PolybusError):
    """A wait was cancelled (POLYBUS_ERR_CANCELLED): the cancel handle guarding a call fired
    before the call finished, and the call gave up, leaving behind what the core's rule says
    (connecting leaves nothing open, a publish may still be published, a close drains in the
    background). It is the status every language shares for a cancelled wait.

    In Python it is the outcome of the native side of a :mod:`polybus.aio` await whose task was
    cancelled; the task itself sees :class:`asyncio.CancelledError`, as asyncio expects. A
    ``timeout`` argument passing raises :class:`PolybusTimeoutError` instead. It is not
    :class:`asyncio.CancelledError` nor a subclass of it: it is an ``Exception``, caught by
    ``except PolybusError``, never by ``except asyncio.CancelledError``.
    """

    code: ClassVar[str]
