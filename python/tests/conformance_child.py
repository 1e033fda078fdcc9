"""The child process of the conformance step ``child`` (tests/conformance/SCHEMA.md, "Child
processes"): a group member that leaves its script without closing its bus.

    POLYBUS_CONFORMANCE_CHILD='{...}' python conformance_child.py          # through polybus
    POLYBUS_CONFORMANCE_CHILD='{...}' python conformance_child.py async    # through polybus.aio

It opens a bus with ``config``, subscribes ``pattern`` with ``options`` and a handler that works
for ``handler.delay_ms`` and succeeds, writing one line per finished invocation to its standard
output (``{"payload": "<text>", "succeeded": true}``, flushed); publishes ``publish.count``
events; waits until ``exit_after`` invocations have finished (10 s times
POLYBUS_TEST_TIMEOUT_SCALE; past it, it exits with status 1); then its script ends with the
bus and the subscription open, as a program that forgets to close them does. The bus is
closed by polybus's own close at interpreter exit, which drains: the events still queued for
this member are handled (and written) before the process ends. With ``async``, the handler is
an ``async def`` run by ``asyncio.run(main())``, and ``main`` returns with the bus open, so the
loop is gone by the time the interpreter exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from typing import Any

import polybus
import polybus.aio

SPEC: dict[str, Any] = json.loads(os.environ["POLYBUS_CONFORMANCE_CHILD"])
DELAY = SPEC.get("handler", {}).get("delay_ms", 0) / 1000
WAIT = 10 * float(os.environ.get("POLYBUS_TEST_TIMEOUT_SCALE", "1"))
PUBLISH = SPEC["publish"]
EXIT_AFTER = SPEC["exit_after"]

finished = 0
changed = threading.Condition()


def report(event: polybus.Event) -> None:
    """Writes the line of a finished invocation, just before the handler returns."""
    global finished
    with changed:
        line = json.dumps({"payload": event.payload.decode(), "succeeded": True})
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        finished += 1
        changed.notify_all()


def give_up() -> None:
    sys.exit(f"child: {finished} of {EXIT_AFTER} invocations finished within {WAIT:g}s")


def payloads() -> list[str]:
    return [PUBLISH["payload"].replace("{i}", str(i)) for i in range(PUBLISH.get("count", 1))]


def main() -> tuple[polybus.Bus, polybus.Subscription]:
    def handler(event: polybus.Event) -> None:
        time.sleep(DELAY)  # the workload, not a synchronisation
        report(event)

    bus = polybus.connect(SPEC["config"])
    subscription = bus.subscribe(SPEC["pattern"], handler, **SPEC["options"])
    for payload in payloads():
        bus.publish(PUBLISH["topic"], payload)
    with changed:
        if not changed.wait_for(lambda: finished >= EXIT_AFTER, WAIT):
            give_up()
    return bus, subscription


async def main_async() -> tuple[polybus.aio.Bus, polybus.aio.Subscription]:
    async def handler(event: polybus.Event) -> None:
        await asyncio.sleep(DELAY)  # the workload, not a synchronisation
        report(event)

    bus = await polybus.aio.connect(SPEC["config"])
    subscription = await bus.subscribe(SPEC["pattern"], handler, **SPEC["options"])
    for payload in payloads():
        await bus.publish(PUBLISH["topic"], payload)

    def wait() -> bool:
        with changed:
            return bool(changed.wait_for(lambda: finished >= EXIT_AFTER, WAIT))

    # Off the loop: the handlers run on it.
    if not await asyncio.to_thread(wait):
        give_up()
    return bus, subscription


# Kept until the interpreter exits, as a script's globals are; nothing is closed here.
if sys.argv[1:] == ["async"]:
    left_open_async = asyncio.run(main_async())
else:
    left_open = main()
