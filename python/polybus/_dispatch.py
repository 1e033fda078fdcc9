"""The parts of event dispatch that are Python: coroutine handlers, failure logging and the
close of open buses at interpreter exit.

The native module calls these from its dispatcher threads; nothing here is public API.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import inspect
import logging
import threading
import weakref
from collections.abc import Awaitable
from typing import Any, Callable

log = logging.getLogger("polybus")

#: Every bus not yet garbage collected; those still open are closed at interpreter exit.
_buses: weakref.WeakSet[Any] = weakref.WeakSet()

#: The threads running connection state callbacks.
_watchers: set[threading.Thread] = set()

#: How long exit waits for a connection state callback still running after its bus closed.
_WATCHER_EXIT_WAIT = 5.0

#: The subscription whose handler runs in this thread or task. ``close()`` reads it so that a
#: handler closing its own subscription or bus does not wait for itself.
current: contextvars.ContextVar[Any] = contextvars.ContextVar("polybus_subscription", default=None)


def is_async(handler: Callable[..., Any]) -> bool:
    """Tells whether ``handler`` is a coroutine function (or an object whose ``__call__`` is)."""
    return inspect.iscoroutinefunction(handler) or (
        callable(handler) and inspect.iscoroutinefunction(type(handler).__call__)
    )


def log_failure(pattern: str, event: Any, exc: BaseException) -> str:
    """Logs a failed handler to the ``polybus`` logger and returns the nack reason."""
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    log.error(
        "handler for %r failed on %s (id %s, attempt %d): %s",
        pattern,
        event.topic,
        event.id,
        event.attempt,
        reason,
        exc_info=exc,
    )
    return reason


def schedule(
    loop: asyncio.AbstractEventLoop,
    handler: Callable[[Any], Awaitable[object]],
    batch: Any,
    subscription: Any,
) -> None:
    """Runs one batch as one coroutine on ``loop``; the batch is completed when it ends."""
    run = _run(handler, batch, subscription)
    try:
        asyncio.run_coroutine_threadsafe(run, loop)
    except RuntimeError:
        # The loop is closed: its handlers can never run again. The core decides what becomes
        # of the events (left unacknowledged for another member; no attempt counted).
        run.close()
        batch.release()
        log.error(
            "the event loop of subscription %r is closed; its events are left to be delivered "
            "again",
            subscription.pattern,
        )


async def _run(handler: Callable[[Any], Awaitable[object]], batch: Any, subscription: Any) -> None:
    current.set(subscription)
    for i, event in enumerate(batch.events()):
        try:
            await handler(event)
        except Exception as exc:  # noqa: BLE001 - any exception is a nack
            batch.complete(i, log_failure(subscription.pattern, event, exc))
            return
        except BaseException as exc:
            batch.complete(i, log_failure(subscription.pattern, event, exc))
            raise
    batch.ack_all()


def track(bus: Any) -> None:
    """Remembers a new bus, to close it at interpreter exit if it is still open then."""
    _buses.add(bus)


@atexit.register
def _close_open_buses() -> None:
    """Closes every bus still open, as ``close()`` would: each drains up to its
    ``close_timeout_ms``. The dispatcher threads end before the interpreter finalizes (a daemon
    thread that outlived it would be killed as it reattached, aborting the process), so queued
    events are handled, not dropped.
    """
    for bus in list(_buses):
        try:
            bus.close()
        except Exception as exc:  # noqa: BLE001 - every bus gets its close
            log.error("closing %r at exit failed: %s", bus, exc)
    for thread in list(_watchers):
        thread.join(_WATCHER_EXIT_WAIT)


def watch_connection_state(watch: Any, callback: Callable[[str], object]) -> None:
    """Starts the daemon thread that runs ``callback`` on each connection state change."""
    thread = threading.Thread(
        target=_watch_state, args=(watch, callback), name="polybus-connection-state", daemon=True
    )
    _watchers.add(thread)
    thread.start()


def _watch_state(watch: Any, callback: Callable[[str], object]) -> None:
    try:
        while True:
            state = watch.next()
            if state is None:
                return
            try:
                callback(state)
            except Exception as exc:  # noqa: BLE001 - a failing callback must not end the watch
                log.error("connection state callback failed on %r: %s", state, exc, exc_info=exc)
    finally:
        _watchers.discard(threading.current_thread())
