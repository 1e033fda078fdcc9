"""TLS from Python: `rediss://` and Kafka's SSL listener with the TLS settings of the `redis`
and `kafka` config sections (`tls_ca`, `tls_cert`, `tls_key`), and the clear error of a
server whose certificate is not trusted.

These tests need the `redis-tls` server and the Kafka broker of tests/harness/setup.sh, with
the certificates the harness generated under build/brokers/; a missing broker or certificate
fails them. POLYBUS_TEST_REDIS_TLS_URL / POLYBUS_TEST_REDIS_TLS_DIR and
POLYBUS_TEST_KAFKA_SSL_URL / POLYBUS_TEST_KAFKA_TLS_DIR point them elsewhere (as for the Rust
tests); POLYBUS_TEST_BACKENDS without `redis` or `kafka` leaves those out.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT, Collector

import polybus

ROOT = Path(__file__).resolve().parents[2]
REDIS_TLS_URL = os.environ.get("POLYBUS_TEST_REDIS_TLS_URL", "rediss://127.0.0.1:6392")
REDIS_TLS_DIR = Path(
    os.environ.get("POLYBUS_TEST_REDIS_TLS_DIR", ROOT / "build" / "brokers" / "redis-tls" / "tls")
)
KAFKA_SSL_URL = os.environ.get("POLYBUS_TEST_KAFKA_SSL_URL", "kafka://127.0.0.1:9095")
KAFKA_TLS_DIR = Path(
    os.environ.get("POLYBUS_TEST_KAFKA_TLS_DIR", ROOT / "build" / "brokers" / "kafka" / "tls")
)

_chosen = os.environ.get("POLYBUS_TEST_BACKENDS")


def backend(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        _chosen is not None and name not in {b.strip() for b in _chosen.split(",")},
        reason=f"POLYBUS_TEST_BACKENDS leaves out {name}",
    )


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def tls_section(directory: Path, client_cert: bool) -> dict[str, str]:
    """The CA to trust and, for mutual TLS, the client certificate and key."""
    files = ["ca.crt", "client.crt", "client.key"] if client_cert else ["ca.crt"]
    for f in files:
        assert (directory / f).is_file(), f"{directory / f} is missing: run tests/harness/setup.sh"
    section = {"tls_ca": str(directory / "ca.crt")}
    if client_cert:
        section |= {"tls_cert": str(directory / "client.crt"),
                    "tls_key": str(directory / "client.key")}
    return section


def round_trip(config: dict[str, Any], payload: bytes) -> None:
    with polybus.connect(config) as bus:
        assert bus.connection_state == "connected"
        seen = Collector()
        bus.subscribe("tls.ok", seen)
        bus.publish("tls.ok", payload)
        got = seen.wait(1)
        assert [e.payload for e in got] == [payload]
        assert got[0].topic == "tls.ok"


def assert_untrusted(error: polybus.PolybusError) -> None:
    """A connection or timeout error that says the server's certificate was the problem (not
    merely the `ssl://` of librdkafka's broker name, which an unreachable broker shows too)."""
    assert isinstance(error, (polybus.PolybusConnectionError, polybus.PolybusTimeoutError)), error
    text = str(error).lower()
    reasons = ("certificate", "ssl handshake", "tls handshake")
    assert any(reason in text for reason in reasons), str(error)


@backend("redis")
@pytest.mark.parametrize("client_cert", [False, True], ids=["ca", "client certificate"])
def test_redis_tls_round_trip(client_cert: bool) -> None:
    config = {
        "url": REDIS_TLS_URL,
        "prefix": unique("pytls"),
        "redis": tls_section(REDIS_TLS_DIR, client_cert),
    }
    round_trip(config, b"secret payload")


@backend("redis")
def test_redis_tls_without_the_ca_is_refused() -> None:
    with pytest.raises(polybus.PolybusError) as raised:
        polybus.connect({"url": REDIS_TLS_URL, "connect_timeout_ms": 3000})
    assert_untrusted(raised.value)


@backend("kafka")
@pytest.mark.parametrize("client_cert", [False, True], ids=["ca", "client certificate"])
def test_kafka_tls_round_trip(client_cert: bool) -> None:
    config = {
        "url": KAFKA_SSL_URL,
        "prefix": unique("pytls"),
        "kafka": tls_section(KAFKA_TLS_DIR, client_cert),
    }
    round_trip(config, b"over tls")


@backend("kafka")
def test_kafka_tls_without_the_ca_is_refused() -> None:
    # SSL without a CA of its own: the system's CAs, which do not trust the harness's broker.
    # A connect timeout generous for a loaded machine, so librdkafka's handshake error comes
    # before the bus's own timeout (as in core/tests/kafka.rs).
    with pytest.raises(polybus.PolybusError) as raised:
        polybus.connect({
            "url": KAFKA_SSL_URL,
            "connect_timeout_ms": int(2 * TIMEOUT * 1000),
            "kafka": {"security_protocol": "ssl"},
        })
    assert_untrusted(raised.value)
