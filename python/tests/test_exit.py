"""Exit without close: a bus left open is closed at interpreter exit, draining its queued events,
and the process ends normally (it used to abort with SIGABRT, "FATAL: exception not rethrown",
when a dispatcher thread reattached to a finalizing interpreter).

Each case runs in a child process, as a user's script would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import TIMEOUT

BACKENDS = {
    "memory": "memory://",
    "nats": os.environ.get("POLYBUS_TEST_NATS_URL", "nats://127.0.0.1:4222"),
    "jetstream": os.environ.get("POLYBUS_TEST_JETSTREAM_URL", "jetstream://127.0.0.1:4222"),
    "redis": os.environ.get("POLYBUS_TEST_REDIS_URL", "redis://127.0.0.1:6390"),
}


def run_child(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=6 * TIMEOUT,
    )


def handled(tmp_path: Path) -> int:
    count = tmp_path / "count"
    return len(count.read_text()) if count.exists() else 0


# The repro of the issue, with a handler that counts (one character per event).
CHILD = """
    import threading, time, uuid
    import polybus

    lock = threading.Lock()

    def handler(event):
        time.sleep(0.05)
        with lock, open("count", "a") as f:
            f.write("x")

    bus = polybus.connect({{"url": {url!r}, "prefix": "exit" + uuid.uuid4().hex}})
    bus.subscribe("x.y", handler, concurrency=4)
    for _ in range(100):
        bus.publish("x.y", b"e")
    time.sleep(0.2)
"""


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_exit_without_close_handles_every_queued_event(tmp_path: Path, backend: str) -> None:
    child = run_child(tmp_path, CHILD.format(url=BACKENDS[backend]))
    assert child.returncode == 0, child.stderr
    assert "FATAL" not in child.stderr
    assert handled(tmp_path) == 100


def test_exit_after_closing_from_inside_a_handler(tmp_path: Path) -> None:
    child = run_child(
        tmp_path,
        """
        import threading, time
        import polybus

        lock = threading.Lock()
        bus = polybus.connect("memory://")

        def handler(event):
            if event.payload == b"close":
                bus.close()  # does not wait for itself; the rest drains in the background
                return
            time.sleep(0.01)
            with lock, open("count", "a") as f:
                f.write("x")

        bus.subscribe("a", handler, concurrency=2)
        bus.publish_batch([("a", b"close")] + [("a", b"e")] * 50)
        """,
    )
    assert child.returncode == 0, child.stderr
    assert "FATAL" not in child.stderr


def test_exit_with_a_slow_handler_waits_at_most_the_close_timeout(tmp_path: Path) -> None:
    # The drain is bounded by close_timeout_ms: the events left are dropped (as close() drops
    # them), the timeout is logged, and the process still exits normally.
    child = run_child(
        tmp_path,
        """
        import time
        import polybus

        bus = polybus.connect({"url": "memory://", "close_timeout_ms": 200})
        bus.subscribe("a", lambda e: time.sleep(0.1), batch_size=1)
        bus.publish_batch([("a", b"e")] * 100)
        """,
    )
    assert child.returncode == 0, child.stderr
    assert "FATAL" not in child.stderr
    assert "did not finish within 200 ms" in child.stderr


def test_exit_with_a_connection_state_callback(tmp_path: Path) -> None:
    child = run_child(
        tmp_path,
        """
        import polybus

        bus = polybus.connect("memory://")

        @bus.on_connection_state
        def changed(state):
            with open("count", "a") as f:
                f.write("x")

        bus.subscribe("a", print)
        """,
    )
    assert child.returncode == 0, child.stderr
    assert handled(tmp_path) == 1  # "closed", reported at exit
