"""The NATS backends from Python: connection state, credentials, the config sections, and
interop with a plain NATS client (nats-py) on the wire format of docs/wire-format.md.

These tests need the brokers of tests/harness/brokers.sh (`bash tests/harness/setup.sh`); a
missing broker fails them. POLYBUS_TEST_NATS_URL, POLYBUS_TEST_JETSTREAM_URL and
POLYBUS_TEST_NATS_AUTH_URL point them elsewhere; POLYBUS_TEST_BACKENDS without `nats` leaves
them out.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from typing import Any

import nats
import pytest
from conftest import TIMEOUT, Collector

import polybus

NATS_URL = os.environ.get("POLYBUS_TEST_NATS_URL", "nats://127.0.0.1:4222")
JETSTREAM_URL = os.environ.get("POLYBUS_TEST_JETSTREAM_URL", "jetstream://127.0.0.1:4222")
AUTH_URL = os.environ.get("POLYBUS_TEST_NATS_AUTH_URL", "nats://127.0.0.1:4223")

_chosen = os.environ.get("POLYBUS_TEST_BACKENDS")
pytestmark = pytest.mark.skipif(
    _chosen is not None and "nats" not in {b.strip() for b in _chosen.split(",")},
    reason="POLYBUS_TEST_BACKENDS leaves out nats",
)


def plain_url(url: str) -> str:
    """The URL a plain NATS client takes for a polybus `nats://` or `jetstream://` URL."""
    return "nats://" + url.split("://", 1)[1]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


class StateLog:
    """A connection state callback that records the states and the threads it ran on."""

    def __init__(self) -> None:
        self.states: list[str] = []
        self.threads: list[threading.Thread] = []
        self.changed = threading.Condition()

    def __call__(self, state: str) -> None:
        with self.changed:
            self.states.append(state)
            self.threads.append(threading.current_thread())
            self.changed.notify_all()

    def wait_for(self, state: str) -> list[str]:
        with self.changed:
            ok = self.changed.wait_for(lambda: state in self.states, TIMEOUT)
        assert ok, f"saw states {self.states}, not {state!r}"
        return self.states


# -- connection state ------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["memory://", NATS_URL, JETSTREAM_URL])
def test_connection_state(url: str) -> None:
    bus = polybus.connect(url)
    assert bus.connection_state == "connected"
    states = StateLog()
    assert bus.on_connection_state(states) is states
    bus.close()
    assert bus.connection_state == "closed"
    assert states.wait_for("closed") == ["closed"]
    # The callback ran on a Python-owned thread, which ends after `closed`.
    (thread,) = set(states.threads)
    assert thread is not threading.main_thread()
    assert thread.name == "polybus-connection-state"
    thread.join(TIMEOUT)
    assert not thread.is_alive()


def test_on_connection_state_arguments() -> None:
    bus = polybus.connect("memory://")
    with pytest.raises(TypeError):
        bus.on_connection_state(42)  # type: ignore[type-var]

    def failing(state: str) -> None:
        raise RuntimeError("callback failure is logged, not fatal")

    bus.on_connection_state(failing)
    states = StateLog()
    bus.on_connection_state(states)
    bus.close()
    states.wait_for("closed")
    with pytest.raises(polybus.ClosedError):
        bus.on_connection_state(states)
    assert bus.connection_state == "closed"


def test_on_connection_state_asyncio() -> None:
    async def main() -> list[tuple[str, bool]]:
        seen: list[tuple[str, bool]] = []
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        bus = await polybus.aio.connect(NATS_URL)
        assert bus.connection_state == "connected"

        @bus.on_connection_state
        async def changed(state: polybus.ConnectionState) -> None:
            seen.append((state, asyncio.get_running_loop() is loop))
            if state == "closed":
                done.set()

        await bus.close()
        await asyncio.wait_for(done.wait(), TIMEOUT)
        assert bus.connection_state == "closed"
        return seen

    assert asyncio.run(main()) == [("closed", True)]


# -- connecting ------------------------------------------------------------------------------


def test_wrong_credentials_are_an_auth_error() -> None:
    timeout_ms = 5000
    started = time.monotonic()
    with pytest.raises(polybus.AuthError) as raised:
        polybus.connect(
            {
                "url": AUTH_URL,
                "connect_timeout_ms": timeout_ms,
                "nats": {"user": "polybus", "password": "wrong"},
            }
        )
    elapsed = time.monotonic() - started
    assert raised.value.code == "POLYBUS_ERR_AUTH"
    assert isinstance(raised.value, PermissionError)
    assert str(raised.value), "an AuthError says what was rejected"
    assert elapsed < timeout_ms / 1000 + 1, f"took {elapsed:.1f} s"


def test_credentials_from_the_nats_section() -> None:
    config: dict[str, Any] = {
        "url": AUTH_URL,
        "nats": {"user": "polybus", "password": "secret", "connection_name": "py-auth-test"},
    }
    with polybus.connect(config) as bus:
        assert bus.connection_state == "connected"
        seen = Collector()
        bus.subscribe("auth.checked", seen)
        bus.publish("auth.checked", b"ok")
        assert seen.wait(1)[0].payload == b"ok"


def test_credentials_in_the_url() -> None:
    host = AUTH_URL.split("://", 1)[1]
    with polybus.connect(f"nats://polybus:secret@{host}") as bus:
        assert bus.connection_state == "connected"
    with pytest.raises(polybus.AuthError):
        polybus.connect(f"nats://polybus:wrong@{host}")


def test_unreachable_server() -> None:
    started = time.monotonic()
    with pytest.raises((polybus.PolybusConnectionError, polybus.PolybusTimeoutError)) as raised:
        polybus.connect({"url": "nats://127.0.0.1:1", "connect_timeout_ms": 2000})
    assert raised.value.code in ("POLYBUS_ERR_CONNECTION", "POLYBUS_ERR_TIMEOUT")
    assert str(raised.value)
    assert time.monotonic() - started < 2 + 1


def test_unknown_fields_of_the_sections_are_rejected() -> None:
    with pytest.raises(polybus.InvalidConfigError, match="colour"):
        polybus.connect({"url": NATS_URL, "nats": {"colour": "blue"}})
    with pytest.raises(polybus.InvalidConfigError, match="storage"):
        polybus.connect({"url": JETSTREAM_URL, "jetstream": {"storage": "tape"}})
    with pytest.raises(polybus.InvalidConfigError, match="user and password"):
        polybus.connect({"url": NATS_URL, "nats": {"user": "polybus"}})


def test_jetstream_section_reaches_the_broker() -> None:
    prefix = unique("pyjs")
    stream = prefix.upper() + "_STREAM"
    config = {
        "url": JETSTREAM_URL,
        "prefix": prefix,
        "jetstream": {"stream": stream, "storage": "memory", "max_age_ms": 60_000},
    }
    with polybus.connect(config) as bus:
        seen = Collector()
        bus.subscribe("orders.*", seen, group="billing")
        bus.publish("orders.created", b"kept")
        assert seen.wait(1)[0].payload == b"kept"

    async def inspect() -> Any:
        nc = await nats.connect(plain_url(JETSTREAM_URL))
        try:
            js = nc.jetstream()
            info = await js.stream_info(stream)
            await js.delete_stream(stream)
            return info.config
        finally:
            await nc.close()

    cfg = asyncio.run(inspect())
    assert getattr(cfg.storage, "value", cfg.storage) == "memory"
    assert cfg.max_age == pytest.approx(60.0)
    assert cfg.subjects == [f"{prefix}.>"]


# -- interop with a plain NATS client --------------------------------------------------------


def test_plain_client_reads_a_polybus_event() -> None:
    prefix = unique("pyinterop")
    payload = bytes(range(256)) + b'\x00{"not": "json"'

    async def main() -> Any:
        nc = await nats.connect(plain_url(NATS_URL))
        try:
            sub = await nc.subscribe(f"{prefix}.orders.created")
            await nc.flush()
            with polybus.connect({"url": NATS_URL, "prefix": prefix, "name": "py-billing"}) as bus:
                bus.publish(
                    "orders.created",
                    payload,
                    key="order-7",
                    headers={"tenant": "acme"},
                    id="evt-interop-1",
                    time=1714564800.123456,
                )
            return await sub.next_msg(timeout=TIMEOUT)
        finally:
            await nc.close()

    msg = asyncio.run(main())
    assert msg.subject == f"{prefix}.orders.created"
    assert msg.data == payload
    headers = msg.headers or {}
    assert headers.get("ce-specversion") == "1.0"
    assert headers.get("ce-id") == "evt-interop-1"
    assert headers.get("ce-type") == "orders.created"
    assert headers.get("ce-source") == "py-billing"
    assert headers.get("ce-time") == "2024-05-01T12:00:00.123456Z"
    assert headers.get("ce-partitionkey") == "order-7"
    assert headers.get("tenant") == "acme"


def test_plain_client_publish_reaches_a_polybus_handler() -> None:
    prefix = unique("pyinterop")
    payload = b"\xff\xfe raw \x00 bytes"
    seen = Collector()

    async def main() -> None:
        nc = await nats.connect(plain_url(NATS_URL))
        try:
            with polybus.connect({"url": NATS_URL, "prefix": prefix}) as bus:
                bus.subscribe("orders.*", seen)
                await nc.publish(
                    f"{prefix}.orders.paid",
                    payload,
                    headers={
                        "ce-specversion": "1.0",
                        "ce-id": "from-nats-py",
                        "ce-type": "com.example.paid",
                        "ce-source": "nats-py",
                        "ce-partitionkey": "order-9",
                        "tenant": "acme",
                    },
                )
                await nc.publish(f"{prefix}.orders.bare", b"no headers")
                await nc.flush()
                await asyncio.to_thread(seen.wait, 2)
        finally:
            await nc.close()

    asyncio.run(main())
    rich, bare = sorted(seen.events, key=lambda e: e.topic != "orders.paid")
    assert rich.topic == "orders.paid"
    assert rich.payload == payload
    assert rich.id == "from-nats-py"
    assert rich.type == "com.example.paid"
    assert rich.source == "nats-py"
    assert rich.key == "order-9"
    assert rich.headers == {"tenant": "acme"}
    assert rich.attempt == 1
    assert bare.topic == "orders.bare"
    assert bare.payload == b"no headers"
    assert bare.type == "orders.bare"
    assert bare.key is None
