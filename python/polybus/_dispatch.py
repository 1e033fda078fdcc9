"""The parts of event dispatch that are Python: coroutine handlers and failure logging.

The native module calls these from its dispatcher threads; nothing here is public API.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import threading
from collections.abc import Awaitable
from typing import Any, Callable

log = logging.getLogger("polybus")

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
    """Runs one batch as one coroutine on ``loop``; the batch is acknowledged when it ends."""
    try:
        asyncio.run_coroutine_threadsafe(_run(handler, batch, subscription), loop)
    except RuntimeError:
        # The loop is closed: dropping the batch nacks its events.
        log.error("event loop of subscription %r is closed; events nacked", subscription.pattern)


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
    batch.complete(None, "")


def watch_connection_state(watch: Any, callback: Callable[[str], object]) -> None:
    """Starts the daemon thread that runs ``callback`` on each connection state change."""
    thread = threading.Thread(
        target=_watch_state, args=(watch, callback), name="polybus-connection-state", daemon=True
    )
    thread.start()


def _watch_state(watch: Any, callback: Callable[[str], object]) -> None:
    while True:
        state = watch.next()
        if state is None:
            return
        try:
            callback(state)
        except Exception as exc:  # noqa: BLE001 - a failing callback must not end the watch
            log.error("connection state callback failed on %r: %s", state, exc, exc_info=exc)
