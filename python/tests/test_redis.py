"""redis:// credentials through the Python package (the conformance scenarios run in
test_conformance.py on both Redis modes).

These tests need the `redis-acl` server of tests/harness/brokers.sh (`bash tests/harness/setup.sh`):
ACL user polybus / secret, the default user disabled. A missing server fails them.
POLYBUS_TEST_REDIS_ACL_URL points them elsewhere; POLYBUS_TEST_BACKENDS without `redis` leaves
them out.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from conftest import Collector

import polybus

ACL_URL = os.environ.get("POLYBUS_TEST_REDIS_ACL_URL", "redis://127.0.0.1:6391")

_chosen = os.environ.get("POLYBUS_TEST_BACKENDS")
pytestmark = pytest.mark.skipif(
    _chosen is not None and "redis" not in {b.strip() for b in _chosen.split(",")},
    reason="POLYBUS_TEST_BACKENDS leaves out redis",
)


def test_credentials_from_the_redis_section_carry_events() -> None:
    config: dict[str, Any] = {
        "url": ACL_URL,
        "prefix": f"pyacl{uuid.uuid4().hex[:12]}",
        "redis": {"username": "polybus", "password": "secret"},
    }
    with polybus.connect(config) as bus:
        seen = Collector()
        bus.subscribe("acl.ok", seen)
        bus.publish("acl.ok", b"hi")
        assert seen.wait(1)[0].payload == b"hi"


@pytest.mark.parametrize(
    "section",
    [{"username": "polybus", "password": "wrong"}, {}],
    ids=["wrong password", "no credentials"],
)
def test_refused_credentials_are_an_auth_error(section: dict[str, str]) -> None:
    with pytest.raises(polybus.AuthError) as raised:
        polybus.connect({"url": ACL_URL, "connect_timeout_ms": 5000, "redis": section})
    assert raised.value.code == "POLYBUS_ERR_AUTH"
    assert isinstance(raised.value, PermissionError)
    assert str(raised.value)
    assert "wrong" not in str(raised.value), "the password is not shown"


def test_bad_redis_settings_are_rejected() -> None:
    with pytest.raises(polybus.InvalidConfigError, match="colour"):
        polybus.connect({"url": ACL_URL, "redis": {"colour": "blue"}})
    with pytest.raises(polybus.InvalidConfigError, match="tls_cert and tls_key"):
        polybus.connect({"url": ACL_URL, "redis": {"tls_cert": "c.pem"}})
