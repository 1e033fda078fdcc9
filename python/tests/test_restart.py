"""A NATS server killed and restarted under live buses, observed from Python: the connection
state goes `disconnected` and back to `connected` through the public API, the subscriptions
resume on `nats://` and `jetstream://`, and JetStream loses none of the events it accepted
before the kill.

The test starts its own nats-server (JetStream, storage under the test's tmp_path) on a free
loopback port, so the shared brokers of tests/harness/brokers.sh, which other suites use at
the same time, are never restarted. It needs the `nats-server` binary (on PATH, or
POLYBUS_TEST_NATS_SERVER); a missing binary fails it. POLYBUS_TEST_BACKENDS without `nats`
leaves it out.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

import pytest
from conftest import TIMEOUT

import polybus
import polybus.aio

# Reconnecting backs off up to 2 s between attempts, and a loaded 2-core runner is slow to
# start a JetStream server: the waits across a restart are generous (they end as soon as the
# condition holds).
RESTART_TIMEOUT = 6 * TIMEOUT

_chosen = os.environ.get("POLYBUS_TEST_BACKENDS")
pytestmark = pytest.mark.skipif(
    _chosen is not None and "nats" not in {b.strip() for b in _chosen.split(",")},
    reason="POLYBUS_TEST_BACKENDS leaves out nats",
)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def wait_until(condition: Callable[[], bool], what: str, timeout: float = RESTART_TIMEOUT) -> None:
    """Polls `condition` until it holds; fails after `timeout` seconds saying `what`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """A nats-server with JetStream of this test alone: one port and one storage directory,
    kept across `kill()` and `start()`."""

    def __init__(self, tmp_path: Path) -> None:
        binary = os.environ.get("POLYBUS_TEST_NATS_SERVER") or shutil.which("nats-server")
        if binary is None and os.access("/usr/sbin/nats-server", os.X_OK):
            binary = "/usr/sbin/nats-server"
        assert binary, "nats-server is not installed (needed by the restart test)"
        self.binary = binary
        self.port = free_port()
        self.store = tmp_path / "jetstream"
        self.log = tmp_path / "nats-server.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None, "already running"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd",
                 str(self.store)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # Ready once it greets a client with INFO (it listens after JetStream is up).
        wait_until(self._greets, f"nats-server on port {self.port} to accept clients")

    def _greets(self) -> bool:
        assert self.proc is not None
        code = self.proc.poll()
        assert code is None, f"nats-server exited with {code}: {self.log.read_text()[-2000:]}"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                return s.recv(4).startswith(b"INFO")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, as a crash."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
            self.proc = None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.kill()


def current(bus: polybus.Bus | polybus.aio.Bus) -> str:
    """The bus's connection state now (as a plain str: it changes between reads)."""
    return bus.connection_state


class StateLog:
    """A connection state callback that records the states, in order."""

    def __init__(self) -> None:
        self.states: list[str] = []
        self.changed = threading.Condition()

    def __call__(self, state: str) -> None:
        with self.changed:
            self.states.append(state)
            self.changed.notify_all()

    def wait_for(self, state: str, after: int = 0) -> int:
        """Waits until `state` is reported at an index >= `after`; returns that index."""
        def found() -> Optional[int]:
            for i in range(after, len(self.states)):
                if self.states[i] == state:
                    return i
            return None

        with self.changed:
            ok = self.changed.wait_for(lambda: found() is not None, RESTART_TIMEOUT)
            assert ok, f"saw states {self.states}, not {state!r} (from index {after})"
            index = found()
            assert index is not None
            return index


class Handled:
    """A handler recording payloads; it can be held blocked on its first call."""

    def __init__(self, hold: bool = False) -> None:
        self.payloads: list[bytes] = []
        self.changed = threading.Condition()
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, event: polybus.Event) -> None:
        self.entered.set()
        # Bounded, so a failing test cannot leave a dispatcher thread blocked for good.
        self.release.wait(RESTART_TIMEOUT)
        with self.changed:
            self.payloads.append(event.payload)
            self.changed.notify_all()

    def wait_for(self, wanted: set[bytes]) -> None:
        with self.changed:
            ok = self.changed.wait_for(lambda: wanted <= set(self.payloads), RESTART_TIMEOUT)
            assert ok, f"missing {sorted(wanted - set(self.payloads))}; handled {self.payloads}"


def test_nats_and_jetstream_survive_a_server_kill_and_restart(nats_server: NatsServer) -> None:
    common = {"connect_timeout_ms": 10000, "close_timeout_ms": 10000}
    nats_bus = polybus.connect({**common, "url": f"nats://{nats_server.url}",
                                "prefix": unique("pyrestart")})
    try:
        js_bus = polybus.connect({
            **common,
            "url": f"jetstream://{nats_server.url}",
            "prefix": unique("pyrestartjs"),
            # A short ack wait, so an ack lost with the server is redelivered soon.
            "jetstream": {"ack_wait_ms": 3000},
        })
    except BaseException:
        nats_bus.close()
        raise
    nats_seen, js_seen = Handled(), Handled(hold=True)
    try:
        buses = {"nats": nats_bus, "jetstream": js_bus}
        logs = {name: StateLog() for name in buses}
        for name, bus in buses.items():
            assert bus.connection_state == "connected", name
            bus.on_connection_state(logs[name])
        nats_bus.subscribe("orders.*", nats_seen)
        # A queue of one: the consumer pulls one event at a time, so while the handler is held
        # most of the events stay on the server, to be pulled from its storage after the
        # restart.
        js_bus.subscribe("jobs.*", js_seen, queue_size=1)

        # The plain NATS subscription works before the restart.
        nats_bus.publish("orders.created", b"before")
        nats_seen.wait_for({b"before"})

        # JetStream: events accepted (PubAck) while the handler is held on the first one, so
        # the server dies with them stored but not acked.
        before = {f"job-{i}".encode() for i in range(10)}
        for payload in sorted(before):
            js_bus.publish("jobs.run", payload)
        assert js_seen.entered.wait(RESTART_TIMEOUT), "the JetStream handler was not called"

        nats_server.kill()
        down = {name: log.wait_for("disconnected") for name, log in logs.items()}
        for name, bus in buses.items():
            assert bus.connection_state == "disconnected", name
        # The handler finishes while the server is down: its acks cannot reach it.
        js_seen.release.set()

        nats_server.start()
        for name, log in logs.items():
            log.wait_for("connected", after=down[name] + 1)
        wait_until(
            lambda: all(b.connection_state == "connected" for b in buses.values()),
            "both buses to report connected",
        )

        # An event published after the restart reaches each existing subscription.
        nats_bus.publish("orders.created", b"after")
        js_bus.publish("jobs.run", b"job-after")
        nats_seen.wait_for({b"before", b"after"})
        # At least once: none of the events stored before the kill is lost (duplicates are
        # allowed).
        js_seen.wait_for(before | {b"job-after"})
    finally:
        js_seen.release.set()
        try:
            nats_bus.close()
        finally:
            js_bus.close()

    for name, bus in buses.items():
        assert bus.connection_state == "closed", name
        # Changes only, in order: down, up again, and `closed` last.
        logs[name].wait_for("closed")
        states = logs[name].states
        assert states[0] == "disconnected" and "connected" in states, (name, states)
        assert states[-1] == "closed" and states.count("closed") == 1, (name, states)
        assert all(a != b for a, b in zip(states, states[1:])), (name, states)


def test_asyncio_bus_observes_the_restart_on_its_loop(nats_server: NatsServer) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        states: list[str] = []
        on_loop: list[bool] = []
        changed = asyncio.Condition()
        received: asyncio.Queue[bytes] = asyncio.Queue()

        async def wait_for(state: str, after: int = 0) -> int:
            async with changed:
                await asyncio.wait_for(
                    changed.wait_for(lambda: state in states[after:]), RESTART_TIMEOUT
                )
                return states.index(state, after)

        bus = await polybus.aio.connect({"url": f"nats://{nats_server.url}",
                                         "prefix": unique("pyrestartaio"),
                                         "close_timeout_ms": 10000})
        try:
            assert bus.connection_state == "connected"

            @bus.on_connection_state
            async def record(state: polybus.ConnectionState) -> None:
                on_loop.append(asyncio.get_running_loop() is loop)
                async with changed:
                    states.append(state)
                    changed.notify_all()

            async def handle(event: polybus.Event) -> None:
                await received.put(event.payload)

            await bus.subscribe("orders.*", handle)
            await bus.publish("orders.created", b"before")
            assert await asyncio.wait_for(received.get(), RESTART_TIMEOUT) == b"before"

            await asyncio.to_thread(nats_server.kill)
            down = await wait_for("disconnected")
            assert current(bus) == "disconnected"
            await asyncio.to_thread(nats_server.start)
            await wait_for("connected", after=down + 1)
            assert current(bus) == "connected"

            await bus.publish("orders.created", b"after")
            assert await asyncio.wait_for(received.get(), RESTART_TIMEOUT) == b"after"
        finally:
            await bus.close()
        await wait_for("closed")
        assert all(on_loop), "the callback ran on the loop that registered it"
        return states

    states = asyncio.run(main())
    assert states[0] == "disconnected" and "connected" in states, states
    assert states[-1] == "closed" and states.count("closed") == 1, states
