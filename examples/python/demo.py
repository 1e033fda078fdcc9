"""The Python demo: a subscriber and a publisher on one bus (POLYBUS_URL, default memory://)."""

import os
import threading
from datetime import datetime, timezone

import polybus

done = threading.Semaphore(0)

with polybus.connect(os.environ.get("POLYBUS_URL", "memory://")) as bus:

    @bus.on("message")
    def on_message(evt: polybus.Event) -> None:
        payload = evt.json()
        now = datetime.now(timezone.utc).strftime("%H:%M:%S.%f")
        print(
            f"INFO[{now}] python evt id: {evt.id}, topic: {evt.topic}, "
            f"payload message: {payload['message']}",
            flush=True,
        )
        done.release()

    for _ in range(3):
        bus.publish("message", {"message": "hello world"})
    for _ in range(3):
        if not done.acquire(timeout=10):
            raise SystemExit("the demo events did not arrive")
