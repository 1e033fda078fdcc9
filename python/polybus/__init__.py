"""polybus: one event bus for Rust, C, Go, Python and Node.

Publish events to dot-separated topics and subscribe handlers to patterns (``*`` matches one
token, ``>`` the rest). A handler that returns acknowledges its event; one that raises nacks
it, and the core retries it with exponential backoff up to ``max_attempts``, then publishes it
to the ``dead_letter`` topic (or drops it, counted in ``stats()``).

Plain handlers run on a bus's dispatcher threads (a small pool owned by Python that serves
every subscription of the bus), at most ``concurrency`` of one subscription at once;
``async def`` handlers run on the event loop that was running when they subscribed. Events
with the same ``key`` are handled in publish order and never concurrently. After ``close()``,
which lets queued and in-flight events finish, every call but ``stats()`` and ``close()``
raises :class:`ClosedError`. The blocking calls take ``timeout=`` (seconds) to give up their
wait (``PolybusTimeoutError``); in :mod:`polybus.aio`, cancelling the awaiting task does.

>>> import polybus
>>> seen = []
>>> with polybus.connect("memory://") as bus:
...     sub = bus.subscribe("orders.*", lambda e: seen.append(e.json()))
...     bus.publish("orders.created", {"id": 1})
>>> seen
[{'id': 1}]

The asyncio flavour, with the same method names, is :mod:`polybus.aio`.
"""

from typing import Literal

from . import aio
from ._polybus import (
    AbiMismatchError,
    AuthError,
    BackendError,
    Bus,
    CancelledError,
    ClosedError,
    Event,
    HandlerError,
    InternalError,
    InvalidArgumentError,
    InvalidConfigError,
    InvalidPatternError,
    InvalidTopicError,
    PanicError,
    PayloadError,
    PolybusConnectionError,
    PolybusError,
    PolybusTimeoutError,
    Subscription,
    TooLargeError,
    UnsupportedError,
    __version__,
    connect,
)

#: The state of a bus's connection: :attr:`Bus.connection_state` and the argument of
#: :meth:`Bus.on_connection_state` callbacks.
ConnectionState = Literal["connected", "disconnected", "closed"]

__all__ = [
    "AbiMismatchError",
    "AuthError",
    "BackendError",
    "Bus",
    "CancelledError",
    "ClosedError",
    "ConnectionState",
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
    "__version__",
    "aio",
    "connect",
]
