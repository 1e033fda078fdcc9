"""kafka:// through the Python package: SASL, errors, and a plain Kafka client reading and
writing polybus events (the conformance scenarios run in test_conformance.py).

These tests need the Kafka broker of tests/harness/kafka-broker.sh (`bash tests/harness/setup.sh`);
a missing broker fails them. POLYBUS_TEST_KAFKA_URL and POLYBUS_TEST_KAFKA_SASL_URL point them
elsewhere; POLYBUS_TEST_BACKENDS without `kafka` leaves them out.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time
import uuid

import pytest
from conftest import Collector

import polybus

KAFKA_URL = os.environ.get("POLYBUS_TEST_KAFKA_URL", "kafka://127.0.0.1:9092")
SASL_URL = os.environ.get("POLYBUS_TEST_KAFKA_SASL_URL", "kafka://127.0.0.1:9093")
INTEROP = pathlib.Path(__file__).resolve().parents[2] / "tests" / "harness" / "kafka" / "interop.sh"

_chosen = os.environ.get("POLYBUS_TEST_BACKENDS")
pytestmark = pytest.mark.skipif(
    _chosen is not None and "kafka" not in {b.strip() for b in _chosen.split(",")},
    reason="POLYBUS_TEST_BACKENDS leaves out kafka",
)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def interop(*args: str) -> str:
    """Runs the harness's plain Kafka client (kafka-clients)."""
    done = subprocess.run(["bash", str(INTEROP), *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"interop {args}: {done.stderr}"
    return done.stdout


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_sasl_wrong_password_is_an_auth_error_and_the_right_one_works(mechanism: str) -> None:
    section = {"sasl_mechanism": mechanism, "username": "polybus", "password": "wrong"}
    with pytest.raises(polybus.AuthError) as raised:
        polybus.connect({"url": SASL_URL, "connect_timeout_ms": 5000, "kafka": section})
    assert raised.value.code == "POLYBUS_ERR_AUTH"
    assert "authentication" in str(raised.value).lower()
    assert "wrong" not in str(raised.value), "the password is not shown"

    section["password"] = "secret"
    with polybus.connect({"url": SASL_URL, "prefix": unique("pysasl"), "kafka": section}) as bus:
        seen = Collector()
        bus.subscribe("sasl.ok", seen)
        bus.publish("sasl.ok", mechanism)
        assert seen.wait(1)[0].payload == mechanism.encode()


def test_unreachable_broker_fails_within_the_connect_timeout() -> None:
    started = time.monotonic()
    with pytest.raises((polybus.PolybusConnectionError, polybus.PolybusTimeoutError)) as raised:
        polybus.connect({"url": "kafka://127.0.0.1:1", "connect_timeout_ms": 2000})
    assert "127.0.0.1:1" in str(raised.value)
    assert time.monotonic() - started < 2 + 2


def test_bad_kafka_settings_are_rejected() -> None:
    with pytest.raises(polybus.InvalidConfigError, match="kafka.compression"):
        polybus.connect({"url": KAFKA_URL, "kafka": {"compression": "brotli"}})
    with pytest.raises(polybus.InvalidConfigError, match="colour"):
        polybus.connect({"url": KAFKA_URL, "kafka": {"colour": "blue"}})


def test_a_plain_kafka_client_reads_and_writes_polybus_events() -> None:
    prefix = unique("pyinterop")
    bootstrap = KAFKA_URL.split("://", 1)[1]
    with polybus.connect({"url": KAFKA_URL, "prefix": prefix, "name": "py-interop"}) as bus:
        payload = bytes(range(256))
        bus.publish("orders.created", payload, key="order-7", headers={"tenant": "acme"}, id="py-1")
        line = interop("consume", bootstrap, f"{prefix}.orders.created", "1", "20000").splitlines()[0]
        record = json.loads(line)
        assert record["value_hex"] == payload.hex()
        assert record["key"] == "order-7"
        headers = record["headers"]
        assert headers["ce_id"] == "py-1"
        assert headers["ce_source"] == "py-interop"
        assert headers["ce_specversion"] == "1.0"
        assert headers["ce_type"] == "orders.created"
        assert headers["tenant"] == "acme"

        seen = Collector()
        bus.subscribe("plain.in", seen)
        interop("produce", bootstrap, f"{prefix}.plain.in", "k-1", "00ff10", "ce_id=plain-1", "origin=java")
        event = seen.wait(1)[0]
        assert event.payload == b"\x00\xff\x10"
        assert event.key == "k-1"
        assert event.id == "plain-1"
        assert event.headers["origin"] == "java"
