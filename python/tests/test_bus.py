"""The blocking API: publish, subscribe, events, errors, close."""

from __future__ import annotations

import asyncio
import datetime
import gc
import logging
import os
import signal
import threading
import time
import weakref

import pytest

import polybus
from conftest import TIMEOUT, Collector


def test_round_trip_keeps_every_field(bus: polybus.Bus, collector: Collector) -> None:
    named = polybus.connect({"url": "memory://", "name": "billing", "prefix": "app"})
    try:
        named.subscribe("orders.*", collector)
        before = time.time()
        named.publish(
            "orders.created",
            b"hello",
            key="order-1",
            headers={"tenant": "acme"},
            id="evt-1",
            type="order.created",
        )
        (event,) = collector.wait(1)
    finally:
        named.close()
    assert event.topic == "orders.created"
    assert event.payload == b"hello"
    assert event.key == "order-1"
    assert event.headers == {"tenant": "acme"}
    assert event.id == "evt-1"
    assert event.type == "order.created"
    assert event.source == "billing"
    assert event.attempt == 1
    assert event.time.tzinfo is datetime.timezone.utc
    assert before - 1 <= event.time.timestamp() <= time.time() + 1
    assert "orders.created" in repr(event)


def test_payload_forms(bus: polybus.Bus, collector: Collector) -> None:
    bus.subscribe("p", collector)
    bus.publish("p", "text é")
    bus.publish("p", bytearray(b"ba"))
    bus.publish("p", memoryview(b"mv"))
    bus.publish("p", {"order": 42, "items": ["a"]})
    bus.publish("p", None)
    events = collector.wait(5)
    assert [e.payload for e in events[:3]] == ["text é".encode(), b"ba", b"mv"]
    assert events[3].json() == {"order": 42, "items": ["a"]}
    assert events[3].headers == {"content-type": "application/json"}
    assert events[4].json() is None
    assert events[0].id != events[1].id
    assert events[0].type == "p"
    assert events[0].key is None and events[0].source is None


def test_json_payloads_are_compact_and_keep_a_publisher_content_type(
    bus: polybus.Bus, collector: Collector
) -> None:
    bus.subscribe("j", collector)
    value = {"a": [1, 2, {"b": None}], "s": "é", "t": True}
    bus.publish("j", value)
    bus.publish("j", value, headers={"content-type": "application/vnd.x+json"})
    bus.publish_batch([{"topic": "j", "payload": [1, "x"]}])
    events = collector.wait(3)
    # The text Go's json.Marshal and JS JSON.stringify give these values.
    assert events[0].payload == '{"a":[1,2,{"b":null}],"s":"é","t":true}'.encode()
    assert events[0].headers == {"content-type": "application/json"}
    assert events[1].headers == {"content-type": "application/vnd.x+json"}
    assert (events[2].payload, events[2].headers) == (
        b'[1,"x"]',
        {"content-type": "application/json"},
    )


def test_error_text_is_the_cores() -> None:
    with polybus.connect("memory://") as bus:
        with pytest.raises(polybus.InvalidTopicError) as topic:
            bus.publish("a..b", b"x")
        with pytest.raises(polybus.InvalidArgumentError) as start:
            bus.subscribe("a", print, start="middle")
    assert str(topic.value).startswith('invalid topic: topic "a..b": empty token')
    assert str(start.value).startswith("invalid argument: start must be")
    with pytest.raises(polybus.ClosedError) as closed:
        bus.publish("a", b"x")
    assert str(closed.value) == "closed: bus is closed"


def test_json_of_a_non_json_payload_is_a_payload_error(
    bus: polybus.Bus, collector: Collector
) -> None:
    bus.subscribe("p", collector)
    bus.publish("p", b"not json")
    (event,) = collector.wait(1)
    with pytest.raises(polybus.PayloadError) as info:
        event.json()
    assert info.value.code == "POLYBUS_ERR_PAYLOAD"


def test_decorator_subscribes_and_returns_the_handler(bus: polybus.Bus) -> None:
    got = Collector()

    @bus.on("orders.>", group="billing")
    def handler(event: polybus.Event) -> None:
        got(event)

    assert callable(handler) and handler.__name__ == "handler"
    bus.publish("orders.created.eu", b"x")
    assert got.wait(1)[0].topic == "orders.created.eu"


def test_handlers_run_on_dispatcher_threads(bus: polybus.Bus, collector: Collector) -> None:
    bus.subscribe("t", collector, concurrency=3)
    bus.publish_many(("t", str(i)) for i in range(30))
    collector.wait(30)
    assert threading.current_thread().name not in collector.threads
    assert all(name.startswith("polybus-dispatch-") for name in collector.threads)


def test_publish_many_keeps_order_and_counts(bus: polybus.Bus, collector: Collector) -> None:
    bus.subscribe("orders.*", collector, queue_size=16)
    items = [("orders.a", str(i)) for i in range(3000)]
    items.append({"topic": "orders.b", "payload": {"n": 1}, "key": "k", "headers": {"h": "v"}})
    assert bus.publish_many(iter(items)) == 3001
    events = collector.wait(3001)
    assert [e.payload.decode() for e in events[:3000]] == [str(i) for i in range(3000)]
    last = events[3000]
    assert (last.topic, last.key, last.headers["h"], last.json()) == (
        "orders.b",
        "k",
        "v",
        {"n": 1},
    )


def test_publish_batch_reports_the_failed_index_and_how_many_were_published(
    bus: polybus.Bus,
) -> None:
    with pytest.raises(polybus.InvalidTopicError, match="event 2 of the batch") as info:
        bus.publish_batch([("a", b""), ("b", b""), ("c..d", b""), ("e", b"")])
    assert info.value.published == 2
    assert bus.stats()["published"] == 2
    # Items are converted before any is published.
    with pytest.raises(TypeError, match="event 1 of the batch") as type_error:
        bus.publish_batch([("a", b""), 42])  # type: ignore[list-item]
    assert type_error.value.published == 0  # type: ignore[attr-defined]
    with pytest.raises(polybus.PayloadError, match="event 0 of the batch") as payload:
        bus.publish_many([("a", object())])
    assert payload.value.published == 0
    assert bus.stats()["published"] == 2
    assert polybus.ClosedError("x").published is None


def test_publish_batch_and_its_alias_count(bus: polybus.Bus, collector: Collector) -> None:
    bus.subscribe("n", collector)
    assert bus.publish_batch([]) == 0
    assert bus.publish_batch(("n", str(i)) for i in range(5)) == 5
    assert bus.publish_many([("n", "5")]) == 1
    assert [e.payload for e in collector.wait(6)] == [str(i).encode() for i in range(6)]


def test_publish_batch_from_another_thread(bus: polybus.Bus, collector: Collector) -> None:
    bus.subscribe("n", collector, queue_size=4)
    counts: list[int] = []
    thread = threading.Thread(
        target=lambda: counts.append(bus.publish_batch(("n", str(i)) for i in range(500)))
    )
    thread.start()
    thread.join(TIMEOUT)
    assert counts == [500]
    assert [e.payload for e in collector.wait(500)] == [str(i).encode() for i in range(500)]


def test_a_raising_handler_is_a_nack_that_is_retried(
    bus: polybus.Bus, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = Collector(fail=lambda e: e.attempt < 3)
    bus.subscribe("jobs", flaky, backoff_initial_ms=1, backoff_max_ms=2)
    with caplog.at_level(logging.ERROR, logger="polybus"):
        bus.publish("jobs", b"x")
        events = flaky.wait(3)
        bus.close()
    assert [e.attempt for e in events] == [1, 2, 3]
    stats = bus.stats()
    assert (stats["acked"], stats["failed"], stats["retried"]) == (1, 2, 2)
    failures = [r for r in caplog.records if r.name == "polybus"]
    assert len(failures) == 2 and failures[0].exc_info is not None
    assert "ValueError: refusing b'x'" in failures[0].getMessage()


def test_a_failure_skips_the_rest_of_its_batch_and_keeps_order(bus: polybus.Bus) -> None:
    failing = Collector(fail=lambda e: e.payload == b"2" and e.attempt == 1)
    bus.subscribe("jobs", failing, backoff_initial_ms=1, backoff_max_ms=1)
    bus.publish_many(("jobs", str(i)) for i in range(5))
    events = failing.wait(6)
    assert [e.payload.decode() for e in events] == ["0", "1", "2", "2", "3", "4"]


def test_dead_letter(bus: polybus.Bus) -> None:
    dead = Collector()
    bus.subscribe("jobs.dead", dead)
    bus.subscribe(
        "jobs.run",
        Collector(fail=lambda e: True),
        max_attempts=2,
        dead_letter="jobs.dead",
        backoff_initial_ms=1,
        backoff_max_ms=1,
    )
    bus.publish("jobs.run", b"x")
    (event,) = dead.wait(1)
    assert event.headers["polybus-dead-letter-attempts"] == "2"
    assert "ValueError" in event.headers["polybus-dead-letter-reason"]


@pytest.mark.parametrize(
    ("call", "error", "code"),
    [
        (lambda b: b.publish("", b"x"), polybus.InvalidTopicError, "POLYBUS_ERR_INVALID_TOPIC"),
        (lambda b: b.publish("a", b"x" * 2048), polybus.TooLargeError, "POLYBUS_ERR_TOO_LARGE"),
        (
            lambda b: b.publish("a", b"x", headers={"bad name": "v"}),
            polybus.InvalidArgumentError,
            "POLYBUS_ERR_INVALID_ARGUMENT",
        ),
        (
            lambda b: b.publish("a", b"x", key=""),
            polybus.InvalidArgumentError,
            "POLYBUS_ERR_INVALID_ARGUMENT",
        ),
        (lambda b: b.publish("a", object()), polybus.PayloadError, "POLYBUS_ERR_PAYLOAD"),
        (lambda b: b.publish("a", float("nan")), polybus.PayloadError, "POLYBUS_ERR_PAYLOAD"),
        (
            lambda b: b.subscribe("a.>.b", print),
            polybus.InvalidPatternError,
            "POLYBUS_ERR_INVALID_PATTERN",
        ),
        (
            lambda b: b.subscribe("a", print, concurrency=0),
            polybus.InvalidArgumentError,
            "POLYBUS_ERR_INVALID_ARGUMENT",
        ),
        (
            lambda b: b.subscribe("a", print, start="middle"),
            polybus.InvalidArgumentError,
            "POLYBUS_ERR_INVALID_ARGUMENT",
        ),
        (
            lambda b: b.subscribe("a", print, start="earliest"),
            polybus.UnsupportedError,
            "POLYBUS_ERR_UNSUPPORTED",
        ),
        (
            lambda b: b.subscribe("a", print, dead_letter="x..y"),
            polybus.InvalidTopicError,
            "POLYBUS_ERR_INVALID_TOPIC",
        ),
    ],
)
def test_bad_input_raises_the_matching_class(call, error, code) -> None:  # type: ignore[no-untyped-def]
    with polybus.connect({"url": "memory://", "max_payload": 1024}) as b:
        with pytest.raises(error) as info:
            call(b)
        assert info.value.code == code
        assert isinstance(info.value, polybus.PolybusError)
        assert b.stats()["published"] == 0


def test_wrong_python_types_are_type_errors(bus: polybus.Bus) -> None:
    with pytest.raises(TypeError):
        bus.subscribe("a", "not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        bus.publish("a", b"x", headers={"n": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        polybus.connect(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "config",
    [
        "nats-nope",
        "foo://x",
        '{"url": "memory://", "colour": 1}',
        {"url": "memory://", "colour": 1},
        {"url": "memory://", "prefix": "a..b"},
        {"url": object()},
    ],
)
def test_bad_config_is_an_invalid_config_error(config: object) -> None:
    with pytest.raises(polybus.InvalidConfigError) as info:
        polybus.connect(config)  # type: ignore[arg-type]
    assert info.value.code == "POLYBUS_ERR_INVALID_CONFIG"


def test_error_classes_follow_the_status_table() -> None:
    assert issubclass(polybus.PolybusTimeoutError, TimeoutError)
    assert issubclass(polybus.PolybusConnectionError, ConnectionError)
    assert polybus.ClosedError.code == "POLYBUS_ERR_CLOSED"
    assert polybus.PolybusError.code is None
    assert polybus.ClosedError.__module__ == "polybus"
    codes = [getattr(polybus, n).code for n in polybus.__all__ if n.endswith("Error")]
    assert len(set(codes)) == len(codes) == 18
    # Every class the native module generates from the status table is exported.
    native = {
        name
        for name, value in vars(polybus._polybus).items()
        if isinstance(value, type) and issubclass(value, polybus.PolybusError)
    }
    assert native == {n for n in polybus.__all__ if n.endswith("Error")}


def test_closed_bus_raises_closed_error(collector: Collector) -> None:
    bus = polybus.connect("memory://")
    sub = bus.subscribe("a", collector)
    bus.publish_many(("a", str(i)) for i in range(100))
    bus.close()
    assert len(collector.events) == 100  # close drained them
    assert bus.closed and sub.closed
    for call in (
        lambda: bus.publish("a", b"x"),
        lambda: bus.publish_many([("a", b"x")]),
        lambda: bus.subscribe("a", print),
        lambda: bus.on("a"),
    ):
        with pytest.raises(polybus.ClosedError):
            call()
    bus.close()
    sub.close()
    assert bus.stats()["acked"] == 100
    assert [t for t in threading.enumerate() if t.name.startswith("polybus")] == []


def test_subscription_close_and_context_manager(bus: polybus.Bus, collector: Collector) -> None:
    with bus.subscribe("a", collector) as sub:
        assert sub.pattern == "a" and not sub.closed
        bus.publish("a", b"1")
        collector.wait(1)
    assert sub.closed and "closed=True" in repr(sub)
    sub.unsubscribe()
    bus.publish("a", b"2")
    assert len(collector.events) == 1


def test_closing_from_inside_a_handler_does_not_deadlock() -> None:
    bus = polybus.connect("memory://")
    subs: list[polybus.Subscription] = []
    closed = threading.Event()

    def close_own(event: polybus.Event) -> None:
        subs[0].close()
        bus.close()
        closed.set()

    subs.append(bus.subscribe("a", close_own))
    bus.publish("a", b"x")
    assert closed.wait(TIMEOUT)
    bus.close()
    assert subs[0].closed
    with pytest.raises(polybus.ClosedError):
        bus.publish("a", b"y")


def test_coroutine_handlers_run_on_the_running_loop() -> None:
    async def main() -> tuple[list[bytes], set[int]]:
        loop_thread = threading.get_ident()
        done = asyncio.Event()
        seen: list[bytes] = []
        threads: set[int] = set()

        async def handler(event: polybus.Event) -> None:
            threads.add(threading.get_ident())
            await asyncio.sleep(0)
            seen.append(event.payload)
            if len(seen) == 3:
                done.set()

        with polybus.connect("memory://") as bus:
            bus.subscribe("a", handler)
            bus.publish_many(("a", str(i)) for i in range(3))
            await asyncio.wait_for(done.wait(), TIMEOUT)
        assert threads == {loop_thread}
        return seen, threads

    seen, _ = asyncio.run(main())
    assert seen == [b"0", b"1", b"2"]


def test_a_coroutine_handler_needs_a_loop(bus: polybus.Bus) -> None:
    async def handler(event: polybus.Event) -> None:
        pass

    with pytest.raises(polybus.InvalidArgumentError, match="event loop"):
        bus.subscribe("a", handler)


def test_ctrl_c_interrupts_a_publish_waiting_on_backpressure(bus: polybus.Bus) -> None:
    release = threading.Event()
    bus.subscribe("a", lambda e: release.wait(), queue_size=1, batch_size=1)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in range(10):
                bus.publish("a", b"x")
    finally:
        timer.cancel()
        release.set()
    assert time.monotonic() - started < 5


def test_handlers_and_subscriptions_are_freed_after_close() -> None:
    class Handler:
        def __call__(self, event: polybus.Event) -> None:
            pass

    refs = []
    for _ in range(20):
        with polybus.connect("memory://") as bus:
            h = Handler()
            refs.append(weakref.ref(h))
            bus.subscribe("a", h, concurrency=2)
            bus.publish_many(("a", b"x") for _ in range(100))
        del h, bus
    gc.collect()
    assert [r for r in refs if r() is not None] == []
    assert [t for t in threading.enumerate() if t.name.startswith("polybus")] == []


def test_publisher_set_time_round_trips(bus: polybus.Bus, collector: Collector) -> None:
    utc = datetime.timezone.utc
    aware = datetime.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=utc)
    paris = aware.astimezone(datetime.timezone(datetime.timedelta(hours=1)))
    naive = datetime.datetime(2001, 9, 9, 1, 46, 40, 999999)
    seconds = 1_700_000_000.654321
    bus.subscribe("t", collector)
    bus.publish("t", b"aware", time=aware)
    bus.publish("t", b"offset", time=paris)
    bus.publish("t", b"naive", time=naive)
    bus.publish("t", b"float", time=seconds)
    bus.publish("t", b"int", time=0)
    assert bus.publish_many([{"topic": "t", "payload": b"many", "time": aware}]) == 1
    events = collector.wait(6)
    assert all(e.time.tzinfo is utc for e in events)
    assert [e.time for e in events[:3]] == [aware, aware, naive.replace(tzinfo=utc)]
    assert events[3].time == datetime.datetime(2023, 11, 14, 22, 13, 20, 654321, tzinfo=utc)
    assert events[4].time == datetime.datetime(1970, 1, 1, tzinfo=utc)
    assert events[5].time == aware


@pytest.mark.parametrize(
    ("time", "error"),
    [
        (-0.5, polybus.InvalidArgumentError),
        (datetime.datetime(1969, 12, 31, 23, 59, 59), polybus.InvalidArgumentError),
        (float("nan"), polybus.InvalidArgumentError),
        ("2024-01-01T00:00:00Z", TypeError),
        (True, TypeError),
        (datetime.date(2024, 1, 1), TypeError),
    ],
    ids=repr,
)
def test_a_bad_time_is_a_clear_error(bus: polybus.Bus, time: object, error: type) -> None:
    with pytest.raises(error, match="time"):
        bus.publish("t", b"x", time=time)  # type: ignore[arg-type]
    with pytest.raises(error, match="time"):
        bus.publish_many([{"topic": "t", "payload": b"x", "time": time}])
    assert bus.stats()["published"] == 0
