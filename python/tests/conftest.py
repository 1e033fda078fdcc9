"""Shared fixtures: a fresh in-process bus per test, and waits with deadlines."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Callable

import pytest

import polybus

TIMEOUT = 10 * float(os.environ.get("POLYBUS_TEST_TIMEOUT_SCALE", "1"))


@pytest.fixture
def bus() -> Iterator[polybus.Bus]:
    b = polybus.connect("memory://")
    try:
        yield b
    finally:
        b.close()


class Collector:
    """A handler that records events and lets a test wait for a number of them."""

    def __init__(self, fail: Callable[[polybus.Event], bool] = lambda e: False) -> None:
        self.events: list[polybus.Event] = []
        self.threads: set[str] = set()
        self.fail = fail
        self.changed = threading.Condition()

    def __call__(self, event: polybus.Event) -> None:
        with self.changed:
            self.events.append(event)
            self.threads.add(threading.current_thread().name)
            self.changed.notify_all()
        if self.fail(event):
            raise ValueError(f"refusing {event.payload!r}")

    def wait(self, count: int) -> list[polybus.Event]:
        with self.changed:
            ok = self.changed.wait_for(lambda: len(self.events) >= count, TIMEOUT)
        assert ok, f"saw {len(self.events)} of {count} events"
        return self.events


@pytest.fixture
def collector() -> Collector:
    return Collector()
