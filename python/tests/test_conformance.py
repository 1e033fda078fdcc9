"""The cross-language conformance scenarios (tests/conformance), run through the public API.

Each test is one scenario on one backend, named ``<backend>/<scenario id>`` as in every other
runner; SCHEMA.md describes the steps.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

import polybus

CONFORMANCE = Path(__file__).resolve().parents[2] / "tests" / "conformance"
FEATURES: dict[str, dict[str, Any]] = json.loads((CONFORMANCE / "features.json").read_text())
SCENARIOS = [json.loads(p.read_text()) for p in sorted((CONFORMANCE / "scenarios").glob("*.json"))]
TIMEOUT_SCALE = float(os.environ.get("POLYBUS_TEST_TIMEOUT_SCALE", "1"))


def backends() -> list[str]:
    chosen = os.environ.get("POLYBUS_TEST_BACKENDS")
    if not chosen:
        return list(FEATURES)
    names = [b.strip() for b in chosen.split(",") if b.strip()]
    unknown = [b for b in names if b not in FEATURES]
    assert not unknown, f"POLYBUS_TEST_BACKENDS names unknown backends {unknown}"
    return names


def backend_url(backend: str) -> str:
    return os.environ.get(f"POLYBUS_TEST_{backend.upper()}_URL", FEATURES[backend]["url"])


class Invocation:
    """One call of a recording handler."""

    def __init__(self, event: polybus.Event) -> None:
        self.event = event
        self.topic = event.topic
        self.payload = event.payload.decode()
        self.key = event.key
        self.headers = event.headers
        self.id = event.id
        self.type = event.type
        self.attempt = event.attempt
        self.succeeded: bool | None = None


class Recorder:
    """A handler that behaves as a scenario's ``handler`` object says and records every call."""

    def __init__(self, spec: dict[str, Any], changed: threading.Condition) -> None:
        self.spec = spec
        self.changed = changed
        self.invocations: list[Invocation] = []
        self.in_flight = 0
        self.peak = 0
        self.keys_in_flight: collections.Counter[str] = collections.Counter()
        self.key_overlap = False

    def __call__(self, event: polybus.Event) -> None:
        call = Invocation(event)
        with self.changed:
            self.invocations.append(call)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            if call.key is not None:
                self.key_overlap |= self.keys_in_flight[call.key] > 0
                self.keys_in_flight[call.key] += 1
        ok = False
        try:
            if self.spec.get("delay_ms"):
                time.sleep(self.spec["delay_ms"] / 1000)
            if self.spec.get("fail_always") or call.attempt <= self.spec.get("fail_times", 0):
                if self.spec.get("fail_with", "error") == "panic":
                    raise RuntimeError("the handler panicked (as the scenario asks)")
                raise ValueError("the handler failed (as the scenario asks)")
            ok = True
        finally:
            with self.changed:
                call.succeeded = ok
                self.in_flight -= 1
                if call.key is not None:
                    self.keys_in_flight[call.key] -= 1
                self.changed.notify_all()

    def finished(self) -> int:
        return sum(1 for c in self.invocations if c.succeeded is not None)

    def succeeded(self) -> int:
        return sum(1 for c in self.invocations if c.succeeded)


class Runner:
    """Runs one scenario's steps against one bus."""

    def __init__(self, backend: str, scenario: dict[str, Any]) -> None:
        config = {"url": backend_url(backend), "prefix": f"t.{uuid.uuid4().hex}"}
        config.update(scenario.get("config", {}))
        self.bus = polybus.connect(config)
        self.changed = threading.Condition()
        self.recorders: dict[str, Recorder] = {}
        self.subscriptions: dict[str, polybus.Subscription] = {}

    def step(self, step: dict[str, Any]) -> None:
        op = step["op"]
        action: Callable[[], None] = getattr(self, "op_" + op)(step)
        expected = step.get("expect_error")
        if expected is None:
            action()
            return
        with pytest.raises(polybus.PolybusError) as info:
            action()
        assert info.value.code == expected, f"{op}: expected {expected}, got {info.value!r}"

    def op_subscribe(self, step: dict[str, Any]) -> Callable[[], None]:
        def run() -> None:
            recorder = Recorder(step.get("handler", {}), self.changed)
            sub = self.bus.subscribe(step["pattern"], recorder, **step.get("options", {}))
            self.recorders[step["name"]] = recorder
            self.subscriptions[step["name"]] = sub

        return run

    def op_publish(self, step: dict[str, Any]) -> Callable[[], None]:
        def run() -> None:
            keys = step.get("keys")
            for i in range(step.get("count", 1)):
                payload: object
                if "json" in step:
                    payload = step["json"]
                elif "payload_size" in step:
                    payload = b"x" * step["payload_size"]
                else:
                    payload = step["payload"].replace("{i}", str(i))
                self.bus.publish(
                    step["topic"],
                    payload,
                    key=keys[i % len(keys)] if keys else step.get("key"),
                    headers=step.get("headers"),
                    id=step.get("id"),
                    type=step.get("type"),
                )

        return run

    def op_wait(self, step: dict[str, Any]) -> Callable[[], None]:
        def run() -> None:
            names = step.get("names") or [step["name"]]
            if "succeeded" in step:
                what, target = "succeeded", step["succeeded"]
            else:
                what, target = "count", step["count"]

            def seen() -> int:
                recorders = [self.recorders[n] for n in names]
                if what == "succeeded":
                    return sum(r.succeeded() for r in recorders)
                return sum(r.finished() for r in recorders)

            timeout = step.get("timeout_ms", 10_000) * TIMEOUT_SCALE / 1000
            with self.changed:
                ok = self.changed.wait_for(lambda: seen() >= target, timeout)
                assert ok, f"waited {timeout:.1f}s for {names} {what} >= {target}; saw {seen()}"

        return run

    def op_unsubscribe(self, step: dict[str, Any]) -> Callable[[], None]:
        return lambda: self.subscriptions[step["name"]].close()

    def op_close(self, step: dict[str, Any]) -> Callable[[], None]:
        return self.bus.close

    def op_expect(self, step: dict[str, Any]) -> Callable[[], None]:
        return lambda: check_recording(step["name"], self.recorders[step["name"]], step)

    def op_expect_total(self, step: dict[str, Any]) -> Callable[[], None]:
        def run() -> None:
            calls = [c for n in step["names"] for c in self.recorders[n].invocations]
            ok = [c.payload for c in calls if c.succeeded]
            if "succeeded" in step:
                assert len(ok) == step["succeeded"], f"{step['names']} succeeded {len(ok)} times"
            if step.get("distinct_payloads"):
                twice = [p for p, n in collections.Counter(ok).items() if n > 1]
                assert not twice, f"payloads that succeeded more than once: {twice}"

        return run

    def op_expect_stats(self, step: dict[str, Any]) -> Callable[[], None]:
        def run() -> None:
            stats = self.bus.stats()
            wanted = {k: v for k, v in step.items() if k != "op"}
            got = {k: stats[k] for k in wanted}
            assert got == wanted, f"stats {stats}"

        return run


def check_recording(name: str, r: Recorder, want: dict[str, Any]) -> None:
    calls = r.invocations
    checks = {k: v for k, v in want.items() if k not in ("op", "name")}
    for check, value in checks.items():
        where = f"handler {name!r}, check {check!r}"
        if check == "count":
            assert len(calls) == value, f"{where}: {len(calls)} invocations"
        elif check == "succeeded":
            assert r.succeeded() == value, f"{where}: {r.succeeded()} succeeded"
        elif check == "payloads":
            assert [c.payload for c in calls] == value, where
        elif check == "payloads_unordered":
            assert sorted(c.payload for c in calls) == sorted(value), where
        elif check == "attempts":
            assert [c.attempt for c in calls] == value, where
        elif check == "topics":
            assert [c.topic for c in calls] == value, where
        elif check in ("key", "id", "type"):
            assert all(getattr(c, check) == value for c in calls), (
                f"{where}: {[getattr(c, check) for c in calls]}"
            )
        elif check == "headers":
            for c in calls:
                for h, v in value.items():
                    assert h in c.headers and (c.headers[h] == v or (v == "*" and c.headers[h])), (
                        f"{where}: {c.headers}"
                    )
        elif check == "json":
            assert all(c.event.json() == value for c in calls), where
        elif check == "key_order":
            if value:
                by_key: dict[str, list[int]] = collections.defaultdict(list)
                for c in calls:
                    if c.succeeded and c.key is not None:
                        by_key[c.key].append(int(c.payload))
                for key, seq in by_key.items():
                    assert all(a < b for a, b in zip(seq, seq[1:])), f"{where}: {key}: {seq}"
        elif check == "no_overlap_per_key":
            assert not (value and r.key_overlap), f"{where}: two invocations of a key overlapped"
        elif check == "max_in_flight":
            assert r.peak <= value, f"{where}: peak {r.peak}"
        elif check == "min_peak_in_flight":
            assert r.peak >= value, f"{where}: peak {r.peak}"
        else:
            pytest.fail(f"{where}: unknown check")


def skip_reason(backend: str, scenario: dict[str, Any]) -> str | None:
    features = FEATURES[backend]
    for need in scenario.get("requires", []):
        if need.startswith("!"):
            if features.get(need[1:]):
                return f'backend has "{need[1:]}"'
        elif not features.get(need):
            return f'backend lacks "{need}"'
    if scenario.get("slow") and os.environ.get("POLYBUS_TEST_SLOW") != "1":
        return "slow scenario (set POLYBUS_TEST_SLOW=1)"
    return None


@pytest.mark.parametrize(
    ("backend", "scenario"),
    [(b, s) for b in backends() for s in SCENARIOS],
    ids=[f"{b}/{s['id']}" for b in backends() for s in SCENARIOS],
)
def test_scenario(backend: str, scenario: dict[str, Any]) -> None:
    reason = skip_reason(backend, scenario)
    if reason:
        pytest.skip(reason)
    runner = Runner(backend, scenario)
    try:
        for i, step in enumerate(scenario["steps"]):
            try:
                runner.step(step)
            except AssertionError as e:
                raise AssertionError(f"step {i} ({step['op']}): {e}") from None
    finally:
        runner.bus.close()
