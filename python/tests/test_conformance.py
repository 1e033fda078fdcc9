"""The cross-language conformance scenarios (tests/conformance), run through the public API.

Each test is one scenario on one backend, named ``<backend>/<scenario id>`` as in every other
runner; SCHEMA.md describes the steps. Every scenario runs twice: with plain handlers through
:mod:`polybus`, and with ``async def`` handlers through :mod:`polybus.aio`
(``<backend>/<scenario id>[async]``), the steps awaited on the loop the handlers run on.

A ``child`` step runs conformance_child.py (beside this file) in a child process: through
:mod:`polybus` in the plain run, through :mod:`polybus.aio` in the ``[async]`` one. A scenario
with a ``restart_broker`` step must run while no other scenario runs: pytest runs the tests one
at a time (pytest-xdist is not used; under it such a scenario fails rather than break the
others).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Union

import pytest

import polybus
import polybus.aio

ROOT = Path(__file__).resolve().parents[2]
CONFORMANCE = ROOT / "tests" / "conformance"
#: The script a ``child`` step runs (SCHEMA.md "Child processes").
CHILD = Path(__file__).resolve().parent / "conformance_child.py"
FEATURES: dict[str, dict[str, Any]] = json.loads((CONFORMANCE / "features.json").read_text())
SCENARIOS = [json.loads(p.read_text()) for p in sorted((CONFORMANCE / "scenarios").glob("*.json"))]
TIMEOUT_SCALE = float(os.environ.get("POLYBUS_TEST_TIMEOUT_SCALE", "1"))

#: The fields each kind of step may have besides ``op`` (SCHEMA.md); anything else is an error,
#: the same strict reading as the Rust, Go and Node runners.
STEP_FIELDS: dict[str, set[str]] = {
    "subscribe": {"name", "pattern", "options", "handler", "expect_error"},
    "publish": {
        "topic", "payload", "json", "payload_size", "count", "keys", "key", "headers", "id",
        "type", "deadline_ms", "expect_error", "published_at_most",
    },
    "wait": {"name", "names", "count", "succeeded", "distinct_succeeded", "timeout_ms"},
    "restart_broker": set(),
    "child": {"name", "pattern", "options", "handler", "publish", "exit_after", "timeout_ms"},
    "unsubscribe": {"name", "expect_error"},
    "close": {"concurrent", "expect_error"},
    "expect": {
        "name", "count", "succeeded", "payloads", "payloads_unordered", "attempts", "topics",
        "key", "id", "type", "headers", "json", "key_order", "no_overlap_per_key",
        "max_in_flight", "min_peak_in_flight", "payloads_prefix", "self_close_ok",
        "finished_at_close", "min_retry_gaps_ms",
    },
    "expect_total": {"names", "succeeded", "distinct_payloads", "succeeded_set"},
    "expect_stats": {
        "published", "delivered", "acked", "failed", "retried", "dead_lettered", "dropped",
    },
}
OPTION_FIELDS = {
    "group", "concurrency", "max_attempts", "dead_letter", "start", "backoff_initial_ms",
    "backoff_max_ms", "queue_size", "batch_size",
}
HANDLER_FIELDS = {
    "fail_times", "fail_always", "fail_with", "delay_ms", "unsubscribe_self", "close_bus",
}
#: A child's handler only works for a while, then succeeds.
CHILD_HANDLER_FIELDS = {"delay_ms"}
CHILD_PUBLISH_FIELDS = {"topic", "payload", "count"}
SCENARIO_FIELDS = {"id", "description", "requires", "config", "steps", "slow"}
#: The keys of a backend in features.json that are not capabilities.
BACKEND_FIELDS = {"url", "broker"}
#: What ``key_order`` reads as an integer.
INTEGER = re.compile(r"-?[0-9]+")

Closer = Callable[[], Union[None, Awaitable[None]]]


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


def check_features() -> None:
    """Fails unless features.json reads strictly: each backend has a string ``url``, a
    ``broker`` (a string, or null for none) and otherwise only boolean capabilities."""
    for backend, features in FEATURES.items():
        assert isinstance(features.get("url"), str), f"features.json: {backend} has no string url"
        assert "broker" in features and (
            features["broker"] is None or isinstance(features["broker"], str)
        ), f"features.json: {backend}'s broker is neither a string nor null"
        for name, value in features.items():
            assert name in BACKEND_FIELDS or isinstance(value, bool), (
                f"features.json: {backend}.{name} is not a boolean capability"
            )


def is_uint(value: Any) -> bool:
    return type(value) is int and value >= 0


def check_scenario(scenario: dict[str, Any]) -> None:
    """Fails unless the scenario reads under SCHEMA.md's strict reading."""

    def only(what: str, fields: dict[str, Any], allowed: set[str]) -> None:
        unknown = sorted(set(fields) - allowed)
        assert not unknown, f"{what} has an unknown field {unknown[0]!r}"

    only("scenario", scenario, SCENARIO_FIELDS)
    for need in scenario.get("requires", []):
        name = need.removeprefix("!")
        assert name not in BACKEND_FIELDS and all(
            isinstance(f.get(name), bool) for f in FEATURES.values()
        ), f"requires names {need!r}, not a capability of features.json"
    for i, step in enumerate(scenario["steps"]):
        op = step.get("op")
        assert op in STEP_FIELDS, f"step {i}: unknown step op {op!r}"
        only(f"step {i} ({op})", step, STEP_FIELDS[op] | {"op"})
        only(f"step {i}: options", step.get("options", {}), OPTION_FIELDS)
        handler = step.get("handler", {})
        allowed = CHILD_HANDLER_FIELDS if op == "child" else HANDLER_FIELDS
        only(f"step {i}: handler", handler, allowed)
        assert not (handler.get("unsubscribe_self") is True and handler.get("close_bus") is True), (
            f"step {i}: a handler has at most one of unsubscribe_self and close_bus"
        )
        if "concurrent" in step:
            n = step["concurrent"]
            assert type(n) is int and n >= 1, (
                f"step {i}: concurrent {n!r} is not a positive integer"
            )
        assert "published_at_most" not in step or "expect_error" in step, (
            f"step {i}: published_at_most only goes with expect_error"
        )
        for field in ("deadline_ms", "published_at_most", "exit_after", "timeout_ms"):
            assert field not in step or is_uint(step[field]), (
                f"step {i}: {field} {step[field]!r} is not a non-negative integer"
            )
        if op == "wait":
            targets = [k for k in ("count", "succeeded", "distinct_succeeded") if k in step]
            assert len(targets) == 1, (
                f"step {i}: a wait step needs exactly one of "
                f'"count", "succeeded" and "distinct_succeeded" (has {targets})'
            )
            assert ("name" in step) != ("names" in step), (
                f'step {i}: a wait step needs exactly one of "name" and "names"'
            )
        if op == "child":
            for field in ("name", "pattern", "publish", "exit_after"):
                assert field in step, f"step {i}: a child step needs {field!r}"
            publish = step["publish"]
            assert isinstance(publish, dict), f"step {i}: publish is not an object"
            only(f"step {i}: publish", publish, CHILD_PUBLISH_FIELDS)
            assert isinstance(publish.get("topic"), str) and isinstance(
                publish.get("payload"), str
            ), f"step {i}: publish needs a string topic and payload"
            assert is_uint(publish.get("count", 1)), f"step {i}: publish count is not a count"


def shown(output: str | bytes | None, head: int = 20, tail: int = 40) -> str:
    """A child's standard error as subprocess gives it, as text: its first and last lines when
    it is long (a drain that fails may log a line per event)."""
    if isinstance(output, bytes):
        output = output.decode(errors="replace")
    lines = (output or "").splitlines()
    if len(lines) > head + tail:
        left_out = f"[... {len(lines) - head - tail} lines left out ...]"
        lines = lines[:head] + [left_out] + lines[-tail:]
    return "\n".join(lines)


class Invocation:
    """One call of a recording handler, or one a child process reported (which knows only its
    payload and whether it succeeded: the other fields are None)."""

    def __init__(self, event: polybus.Event | None, payload: str = "") -> None:
        self.event = event
        self.topic = event.topic if event else None
        self.payload = event.payload.decode() if event else payload
        self.key = event.key if event else None
        self.headers = event.headers if event else {}
        self.id = event.id if event else None
        self.type = event.type if event else None
        self.attempt = event.attempt if event else None
        #: None while in flight; whether it succeeded once it finished.
        self.succeeded: bool | None = None
        #: When it started (time.monotonic()), for min_retry_gaps_ms.
        self.started = 0.0


class Recorder:
    """A handler that behaves as a scenario's ``handler`` object says and records every call.

    ``__call__`` is the plain handler, ``handle_async`` the ``async def`` one; ``closer`` makes
    the ``unsubscribe_self`` / ``close_bus`` call (a coroutine function for the async one).
    """

    def __init__(self, spec: dict[str, Any], changed: threading.Condition) -> None:
        self.spec = spec
        self.changed = changed
        self.invocations: list[Invocation] = []
        self.in_flight = 0
        self.peak = 0
        self.keys_in_flight: collections.Counter[str] = collections.Counter()
        self.key_overlap = False
        self.closer: Closer | None = None
        #: How the closer's call ended: "ok", or the error's code; None until it is made.
        self.self_close: str | None = None
        #: Finished invocations each call of the latest close step saw; None before any.
        self.at_close: list[int] | None = None

    def _begin(self, event: polybus.Event) -> tuple[Invocation, bool]:
        call = Invocation(event)
        with self.changed:
            call.started = time.monotonic()
            self.invocations.append(call)
            first = len(self.invocations) == 1
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            if call.key is not None:
                self.key_overlap |= self.keys_in_flight[call.key] > 0
                self.keys_in_flight[call.key] += 1
        makes_call = first and (self.spec.get("unsubscribe_self") or self.spec.get("close_bus"))
        return call, bool(makes_call)

    def _fails(self, call: Invocation) -> bool:
        assert call.attempt is not None
        return bool(self.spec.get("fail_always")) or call.attempt <= self.spec.get("fail_times", 0)

    def _raise(self) -> None:
        if self.spec.get("fail_with", "error") == "panic":
            raise RuntimeError("the handler panicked (as the scenario asks)")
        raise ValueError("the handler failed (as the scenario asks)")

    def _end(self, call: Invocation, ok: bool) -> None:
        with self.changed:
            call.succeeded = ok
            self.in_flight -= 1
            if call.key is not None:
                self.keys_in_flight[call.key] -= 1
            self.changed.notify_all()

    def __call__(self, event: polybus.Event) -> None:
        call, makes_call = self._begin(event)
        ok = False
        try:
            if makes_call:
                try:
                    assert self.closer is not None, "the handler ran before subscribe returned"
                    self.closer()
                    self.self_close = "ok"
                except Exception as e:  # noqa: BLE001 - recorded, checked by self_close_ok
                    self.self_close = getattr(e, "code", repr(e))
            if self.spec.get("delay_ms"):
                time.sleep(self.spec["delay_ms"] / 1000)
            if self._fails(call):
                self._raise()
            ok = True
        finally:
            self._end(call, ok)

    async def handle_async(self, event: polybus.Event) -> None:
        call, makes_call = self._begin(event)
        ok = False
        try:
            if makes_call:
                try:
                    assert self.closer is not None, "the handler ran before subscribe returned"
                    result = self.closer()
                    assert result is not None, "an async handler's closer is a coroutine"
                    await result
                    self.self_close = "ok"
                except Exception as e:  # noqa: BLE001 - recorded, checked by self_close_ok
                    self.self_close = getattr(e, "code", repr(e))
            if self.spec.get("delay_ms"):
                await asyncio.sleep(self.spec["delay_ms"] / 1000)
            if self._fails(call):
                self._raise()
            ok = True
        finally:
            self._end(call, ok)

    def started(self) -> int:
        return len(self.invocations)

    def finished(self) -> int:
        return sum(1 for c in self.invocations if c.succeeded is not None)

    def succeeded(self) -> int:
        return sum(1 for c in self.invocations if c.succeeded)

    def succeeded_payloads(self) -> set[str]:
        return {c.payload for c in self.invocations if c.succeeded}


class Steps:
    """What the plain and the asyncio runner share: the recorders, waits and checks."""

    def __init__(self, backend: str, scenario: dict[str, Any]) -> None:
        self.config = {"url": backend_url(backend), "prefix": f"t.{uuid.uuid4().hex}"}
        self.config.update(scenario.get("config", {}))
        self.changed = threading.Condition()
        self.recorders: dict[str, Recorder] = {}
        self.broker: str | None = FEATURES[backend]["broker"]
        #: How many calls of the latest publish step returned success.
        self.published = 0

    def messages(self, step: dict[str, Any]) -> list[tuple[object, dict[str, Any]]]:
        """The payload and keyword arguments of each event a publish step publishes."""
        keys = step.get("keys")
        out: list[tuple[object, dict[str, Any]]] = []
        for i in range(step.get("count", 1)):
            payload: object
            if "json" in step:
                payload = step["json"]
            elif "payload_size" in step:
                payload = b"x" * step["payload_size"]
            else:
                payload = step["payload"].replace("{i}", str(i))
            kwargs = {
                "key": keys[i % len(keys)] if keys else step.get("key"),
                "headers": step.get("headers"),
                "id": step.get("id"),
                "type": step.get("type"),
            }
            out.append((payload, kwargs))
        return out

    def wait(self, step: dict[str, Any]) -> None:
        """Blocks until the step's handlers have enough finished (or successful) invocations."""
        names = step.get("names") or [step["name"]]
        recorders = [self.recorders[n] for n in names]
        what = next(k for k in ("count", "succeeded", "distinct_succeeded") if k in step)
        target = step[what]

        def seen() -> int:
            if what == "succeeded":
                return sum(r.succeeded() for r in recorders)
            if what == "distinct_succeeded":
                return len(set().union(*(r.succeeded_payloads() for r in recorders)))
            return sum(r.finished() for r in recorders)

        timeout = step.get("timeout_ms", 10_000) * TIMEOUT_SCALE / 1000
        with self.changed:
            if not self.changed.wait_for(lambda: seen() >= target, timeout):
                raise AssertionError(
                    f"waited {timeout:.1f}s for {names} {what} >= {target} (finished); saw "
                    f"{sum(r.started() for r in recorders)} started, "
                    f"{sum(r.finished() for r in recorders)} finished, "
                    f"{sum(r.succeeded() for r in recorders)} succeeded"
                    + (f" ({seen()} distinct)" if what == "distinct_succeeded" else "")
                )

    def deadline(self, step: dict[str, Any]) -> float | None:
        """The time.monotonic() by which a publish step's calls must be done, if it has one."""
        if "deadline_ms" not in step:
            return None
        ms: int = step["deadline_ms"]
        return time.monotonic() + ms / 1000

    def check_published(self, step: dict[str, Any]) -> None:
        """After a publish step failed as expected: at most ``published_at_most`` calls
        returned success before it."""
        most = step.get("published_at_most")
        assert most is None or self.published <= most, (
            f"{self.published} calls returned success before the failing one, "
            f"expected at most {most}"
        )

    def restart_broker(self) -> None:
        """Kills the backend's broker and starts it again, through the harness."""
        assert self.broker is not None, "restart_broker: the backend has no broker"
        assert "PYTEST_XDIST_WORKER" not in os.environ, (
            "restart_broker: the scenario must run while no other runs, not under pytest-xdist"
        )
        done = subprocess.run(
            ["bash", "tests/harness/brokers.sh", "restart", self.broker],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, (
            f"brokers.sh restart {self.broker} exited with {done.returncode}:\n"
            f"{done.stderr}{done.stdout}"
        )

    def child(self, step: dict[str, Any], use_async: bool) -> None:
        """Runs a group member in a child process until it exits; its lines become the
        recording of the handler ``name``."""
        spec = {
            "config": self.config,
            "pattern": step["pattern"],
            "options": step.get("options", {}),
            "handler": step.get("handler", {}),
            "publish": step["publish"],
            "exit_after": step["exit_after"],
        }
        env = dict(os.environ, POLYBUS_CONFORMANCE_CHILD=json.dumps(spec))
        command = [sys.executable, str(CHILD)] + (["async"] if use_async else [])
        timeout = step.get("timeout_ms", 10_000) * TIMEOUT_SCALE / 1000
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(
                f"the child did not exit within {timeout:.1f}s; its stderr:\n{shown(e.stderr)}"
            ) from None
        assert done.returncode == 0, (
            f"the child exited with status {done.returncode}; its stderr:\n{shown(done.stderr)}"
        )
        recorder = Recorder({}, self.changed)
        for line in done.stdout.splitlines():
            try:
                got = json.loads(line)
            except ValueError:
                got = None
            if not (
                isinstance(got, dict)
                and got.keys() == {"payload", "succeeded"}
                and isinstance(got["payload"], str)
                and isinstance(got["succeeded"], bool)
            ):
                raise AssertionError(f"the child wrote {line!r}, not a finished invocation")
            call = Invocation(None, got["payload"])
            call.succeeded = got["succeeded"]
            recorder.invocations.append(call)
        with self.changed:
            self.recorders[step["name"]] = recorder
            self.changed.notify_all()

    def closing(self) -> None:
        """Before a close step: forget what the previous one saw."""
        with self.changed:
            for r in self.recorders.values():
                r.at_close = []

    def closed(self) -> None:
        """As one close call returns: note what each handler has finished."""
        with self.changed:
            for r in self.recorders.values():
                assert r.at_close is not None
                r.at_close.append(r.finished())

    def check_close_results(
        self, step: dict[str, Any], results: list[BaseException | None]
    ) -> None:
        expected = step.get("expect_error")
        for i, err in enumerate(results):
            where = f"close call {i}"
            if expected is None:
                if err is not None:
                    raise AssertionError(f"{where} failed: {err!r}") from err
            else:
                got = getattr(err, "code", None) if isinstance(err, polybus.PolybusError) else err
                assert got == expected, f"{where}: expected {expected}, got {err!r}"

    def expect(self, step: dict[str, Any]) -> None:
        with self.changed:
            check_recording(step["name"], self.recorders[step["name"]], step)

    def expect_total(self, step: dict[str, Any]) -> None:
        calls = [c for n in step["names"] for c in self.recorders[n].invocations]
        ok = [c.payload for c in calls if c.succeeded]
        if "succeeded" in step:
            assert len(ok) == step["succeeded"], f"{step['names']} succeeded {len(ok)} times"
        if step.get("distinct_payloads"):
            twice = [p for p, n in collections.Counter(ok).items() if n > 1]
            assert not twice, f"payloads that succeeded more than once: {twice}"
        if "succeeded_set" in step:
            want = set(step["succeeded_set"])
            missing, extra = sorted(want - set(ok)), sorted(set(ok) - want)
            assert not missing and not extra, (
                f"the payloads that succeeded miss {missing} and have {extra} besides"
            )

    @staticmethod
    def expect_stats(stats: dict[str, int], step: dict[str, Any]) -> None:
        wanted = {k: v for k, v in step.items() if k != "op"}
        got = {k: stats[k] for k in wanted}
        assert got == wanted, f"stats {stats}"


class Runner(Steps):
    """Runs one scenario's steps against one bus of :mod:`polybus`, with plain handlers."""

    def __init__(self, backend: str, scenario: dict[str, Any]) -> None:
        super().__init__(backend, scenario)
        self.bus = polybus.connect(self.config)
        self.subscriptions: dict[str, polybus.Subscription] = {}

    def step(self, step: dict[str, Any]) -> None:
        op = step["op"]
        if op == "close":
            self.close(step)
            return
        action: Callable[[], None] = getattr(self, "op_" + op)(step)
        expected = step.get("expect_error")
        if expected is None:
            action()
            return
        with pytest.raises(polybus.PolybusError) as info:
            action()
        assert info.value.code == expected, f"{op}: expected {expected}, got {info.value!r}"
        self.check_published(step)

    def op_subscribe(self, step: dict[str, Any]) -> Callable[[], None]:
        def run() -> None:
            recorder = Recorder(step.get("handler", {}), self.changed)
            sub = self.bus.subscribe(step["pattern"], recorder, **step.get("options", {}))
            if recorder.spec.get("close_bus"):
                recorder.closer = self.bus.close
            else:
                recorder.closer = sub.close
            self.recorders[step["name"]] = recorder
            self.subscriptions[step["name"]] = sub

        return run

    def op_publish(self, step: dict[str, Any]) -> Callable[[], None]:
        def run() -> None:
            self.published = 0
            deadline = self.deadline(step)
            for payload, kwargs in self.messages(step):
                if deadline is not None:
                    # One deadline for the step: each call gets the time left of it.
                    kwargs["timeout"] = max(0.0, deadline - time.monotonic())
                self.bus.publish(step["topic"], payload, **kwargs)
                self.published += 1

        return run

    def op_wait(self, step: dict[str, Any]) -> Callable[[], None]:
        return lambda: self.wait(step)

    def op_unsubscribe(self, step: dict[str, Any]) -> Callable[[], None]:
        return lambda: self.subscriptions[step["name"]].close()

    def op_restart_broker(self, step: dict[str, Any]) -> Callable[[], None]:
        return self.restart_broker

    def op_child(self, step: dict[str, Any]) -> Callable[[], None]:
        return lambda: self.child(step, use_async=False)

    def close(self, step: dict[str, Any]) -> None:
        """Closes the bus from ``concurrent`` threads at once."""
        n = step.get("concurrent", 1)
        self.closing()
        results: list[BaseException | None] = [None] * n
        start = threading.Barrier(n)

        def one(i: int) -> None:
            start.wait()
            try:
                self.bus.close()
            except BaseException as e:  # noqa: BLE001 - checked below
                results[i] = e
            self.closed()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.check_close_results(step, results)

    def op_expect(self, step: dict[str, Any]) -> Callable[[], None]:
        return lambda: self.expect(step)

    def op_expect_total(self, step: dict[str, Any]) -> Callable[[], None]:
        return lambda: self.expect_total(step)

    def op_expect_stats(self, step: dict[str, Any]) -> Callable[[], None]:
        return lambda: self.expect_stats(self.bus.stats(), step)


class DeadlinePassed(Exception):
    """A publish step's deadline passed in the ``[async]`` run: :func:`asyncio.wait_for` raised
    its ``TimeoutError``, asyncio's form of ``POLYBUS_ERR_TIMEOUT``."""

    code = "POLYBUS_ERR_TIMEOUT"


class AsyncRunner(Steps):
    """Runs one scenario's steps against one bus of :mod:`polybus.aio`, with ``async def``
    handlers running on the loop that awaits the steps."""

    bus: polybus.aio.Bus

    def __init__(self, backend: str, scenario: dict[str, Any]) -> None:
        super().__init__(backend, scenario)
        self.subscriptions: dict[str, polybus.aio.Subscription] = {}

    async def connect(self) -> None:
        self.bus = await polybus.aio.connect(self.config)

    async def step(self, step: dict[str, Any]) -> None:
        op = step["op"]
        action: Callable[[], Awaitable[None]] = getattr(self, "op_" + op)(step)
        expected = step.get("expect_error")
        if op == "close" or expected is None:
            await action()
            return
        try:
            await action()
        except (polybus.PolybusError, DeadlinePassed) as e:
            assert e.code == expected, f"{op}: expected {expected}, got {e!r}"
            self.check_published(step)
            return
        pytest.fail(f"{op} should fail with {expected}")

    def op_subscribe(self, step: dict[str, Any]) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            recorder = Recorder(step.get("handler", {}), self.changed)
            options = step.get("options", {})
            sub = await self.bus.subscribe(step["pattern"], recorder.handle_async, **options)
            if recorder.spec.get("close_bus"):
                recorder.closer = self.bus.close
            else:
                recorder.closer = sub.close
            self.recorders[step["name"]] = recorder
            self.subscriptions[step["name"]] = sub

        return run

    def op_publish(self, step: dict[str, Any]) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            self.published = 0
            deadline = self.deadline(step)
            for payload, kwargs in self.messages(step):
                publish = self.bus.publish(step["topic"], payload, **kwargs)
                if deadline is None:
                    await publish
                else:
                    # asyncio's form of one deadline for the step: each call awaited for the
                    # time left of it (polybus.aio takes no timeout=; cancelling stops the wait).
                    try:
                        await asyncio.wait_for(publish, max(0.0, deadline - time.monotonic()))
                    except asyncio.TimeoutError as e:
                        if isinstance(e, polybus.PolybusError):
                            raise
                        raise DeadlinePassed(f"the step's deadline of {step['deadline_ms']} ms "
                                             "passed") from e
                self.published += 1

        return run

    def op_wait(self, step: dict[str, Any]) -> Callable[[], Awaitable[None]]:
        # Off the loop: the handlers need it meanwhile.
        return lambda: asyncio.to_thread(self.wait, step)

    def op_unsubscribe(self, step: dict[str, Any]) -> Callable[[], Awaitable[None]]:
        return lambda: self.subscriptions[step["name"]].close()

    def op_restart_broker(self, step: dict[str, Any]) -> Callable[[], Awaitable[None]]:
        # Off the loop: the handlers need it meanwhile.
        return lambda: asyncio.to_thread(self.restart_broker)

    def op_child(self, step: dict[str, Any]) -> Callable[[], Awaitable[None]]:
        return lambda: asyncio.to_thread(self.child, step, True)

    def op_close(self, step: dict[str, Any]) -> Callable[[], Awaitable[None]]:
        async def one() -> None:
            try:
                await self.bus.close()
            finally:
                self.closed()

        async def run() -> None:
            self.closing()
            results = await asyncio.gather(
                *(one() for _ in range(step.get("concurrent", 1))), return_exceptions=True
            )
            errors = [r if isinstance(r, BaseException) else None for r in results]
            self.check_close_results(step, errors)

        return run

    def op_expect(self, step: dict[str, Any]) -> Callable[[], Awaitable[None]]:
        return self._now(lambda: self.expect(step))

    def op_expect_total(self, step: dict[str, Any]) -> Callable[[], Awaitable[None]]:
        return self._now(lambda: self.expect_total(step))

    def op_expect_stats(self, step: dict[str, Any]) -> Callable[[], Awaitable[None]]:
        return self._now(lambda: self.expect_stats(self.bus.stats(), step))

    @staticmethod
    def _now(check: Callable[[], None]) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            check()

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
            assert [c.payload for c in calls] == value, f"{where}: {[c.payload for c in calls]}"
        elif check == "payloads_unordered":
            assert sorted(c.payload for c in calls) == sorted(value), where
        elif check == "payloads_prefix":
            got = [c.payload for c in calls]
            assert got == value[: len(got)], f"{where}: {got} is not a prefix of {value}"
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
            assert all(c.event is not None and c.event.json() == value for c in calls), where
        elif check == "key_order":
            if value:
                # Unkeyed invocations are not checked (SCHEMA.md).
                by_key: dict[str, list[int]] = collections.defaultdict(list)
                for c in calls:
                    if c.succeeded and c.key is not None:
                        if not INTEGER.fullmatch(c.payload):
                            pytest.fail(f"{where}: payload {c.payload!r} is not an integer")
                        by_key[c.key].append(int(c.payload))
                for key, seq in by_key.items():
                    assert all(a < b for a, b in zip(seq, seq[1:])), f"{where}: {key}: {seq}"
        elif check == "no_overlap_per_key":
            assert not (value and r.key_overlap), f"{where}: two invocations of a key overlapped"
        elif check == "max_in_flight":
            assert r.peak <= value, f"{where}: peak {r.peak}"
        elif check == "min_peak_in_flight":
            assert r.peak >= value, f"{where}: peak {r.peak}"
        elif check == "self_close_ok":
            assert r.self_close is not None, f"{where}: the handler never made its close call"
            assert (r.self_close == "ok") == value, f"{where}: the call ended {r.self_close}"
        elif check == "finished_at_close":
            assert r.at_close is not None, f"{where}: no close step ran"
            assert all(n == value for n in r.at_close), (
                f"{where}: the close calls returned when {r.at_close} invocations had finished"
            )
        elif check == "min_retry_gaps_ms":
            check_retry_gaps(where, calls, value)
        else:
            pytest.fail(f"{where}: unknown check")


def check_retry_gaps(where: str, calls: list[Invocation], want: Any) -> None:
    """For every event (by payload), the k-th gap between the starts of its consecutive
    invocations is at least ``want[k]`` ms (the last entry for gaps past the list)."""
    if not (
        isinstance(want, list)
        and want
        and all(type(n) is int and n >= 0 for n in want)
    ):
        pytest.fail(f"{where}: {want!r} is not a non-empty list of non-negative integers")
    by_payload: dict[str, list[Invocation]] = collections.defaultdict(list)
    for c in calls:
        by_payload[c.payload].append(c)
    gaps = 0
    for payload, cs in by_payload.items():
        ms = [(b.started - a.started) * 1000 for a, b in zip(cs, cs[1:])]
        for k, gap in enumerate(ms):
            gaps += 1
            floor = want[min(k, len(want) - 1)]
            assert gap >= floor, (
                f"{where}: payload {payload!r}: attempt {cs[k + 1].attempt} started {gap:.1f} ms "
                f"after attempt {cs[k].attempt}, expected at least {floor} ms "
                f"(gaps {[round(g, 1) for g in ms]} ms)"
            )
    assert gaps, f"{where}: no event had a second invocation"


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


CASES = [(b, s, a) for b in backends() for s in SCENARIOS for a in (False, True)]


@pytest.mark.parametrize(
    ("backend", "scenario", "use_async"),
    CASES,
    ids=[f"{b}/{s['id']}{'[async]' if a else ''}" for b, s, a in CASES],
)
def test_scenario(backend: str, scenario: dict[str, Any], use_async: bool) -> None:
    check_features()
    check_scenario(scenario)
    reason = skip_reason(backend, scenario)
    if reason:
        pytest.skip(reason)
    if use_async:
        asyncio.run(run_async(backend, scenario))
        return
    runner = Runner(backend, scenario)
    try:
        for i, step in enumerate(scenario["steps"]):
            try:
                runner.step(step)
            except AssertionError as e:
                raise AssertionError(f"step {i} ({step['op']}): {e}") from None
    finally:
        runner.bus.close()


async def run_async(backend: str, scenario: dict[str, Any]) -> None:
    runner = AsyncRunner(backend, scenario)
    await runner.connect()
    try:
        for i, step in enumerate(scenario["steps"]):
            try:
                await runner.step(step)
            except AssertionError as e:
                raise AssertionError(f"step {i} ({step['op']}): {e}") from None
    finally:
        await runner.bus.close()
