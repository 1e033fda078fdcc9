#!/usr/bin/env python3
"""The child process of the conformance step `child` for the C callback runner (conformance.py
beside it; tests/conformance/SCHEMA.md, "Child processes").

    POLYBUS_CONFORMANCE_CHILD='{...}' python3 tests/c/conformance_child.py

It drives libpolybus.so through ctypes, as conformance.py does (the same declarations): opens
a bus with `config` (polybus_open), subscribes `pattern` with `options` and a C callback that
works for `handler.delay_ms` and returns 0 (polybus_subscribe), writing one line per finished
invocation to its standard output (`{"payload": "<text>", "succeeded": true}`, flushed just
before the callback returns); publishes `publish.count` events, one polybus_publish each; waits
until `exit_after` invocations have finished (10 s times POLYBUS_TEST_TIMEOUT_SCALE; past it,
it exits with status 1 and says so on its standard error). Then it ends as a C program whose
main returns without cleaning up: no polybus_close, no polybus_subscription_free, no
polybus_free; the library stays loaded, its threads still running, and the process ends in
libc's exit(0), which is what returning from a C main does (the C atexit handlers run, then
every thread ends with the process).

Why exit(0) and not the end of the script: a Python script's end finalizes the interpreter
first, and a ctypes callback that a library thread starts after that point cannot enter
Python: CPython (before 3.14) ends such a thread with pthread_exit, whose forced unwind through
the library's Rust frames aborts the process ("FATAL: exception not rethrown", status -6). That
abort belongs to ctypes under a finalizing interpreter, which a C program does not have; Go's
child ends in os.Exit(0) for the same reason (what its main's return does).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
import time
from ctypes import byref, c_void_p
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conformance import (  # noqa: E402 - the runner's declarations of polybus.h
    CALL_FN,
    DROP_FN,
    OK,
    START_EARLIEST,
    START_NEW,
    load_library,
    polybus_bytes_t,
    polybus_error_t,
    polybus_event_t,
    polybus_handler_t,
    polybus_message_t,
    polybus_str_t,
    polybus_subscribe_options_t,
)

SPEC: dict[str, Any] = json.loads(os.environ["POLYBUS_CONFORMANCE_CHILD"])
DELAY = SPEC.get("handler", {}).get("delay_ms", 0) / 1000
WAIT = 10 * float(os.environ.get("POLYBUS_TEST_TIMEOUT_SCALE", "1"))
PUBLISH = SPEC["publish"]
EXIT_AFTER = SPEC["exit_after"]

lib = load_library()
changed = threading.Condition()
finished = 0


def fail(what: str, rc: int, err: polybus_error_t) -> None:
    name = lib.polybus_status_name(rc).decode()
    sys.exit(f"child: {what} failed: {name}: {err.message.decode(errors='replace')}")


def call(event: Any, context: int | None) -> int:
    global finished
    e: polybus_event_t = event.contents
    payload = ctypes.string_at(e.payload.ptr, e.payload.len) if e.payload.len else b""
    time.sleep(DELAY)  # the workload, not a synchronisation
    with changed:
        line = json.dumps({"payload": payload.decode("utf-8", "replace"), "succeeded": True})
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        finished += 1
        changed.notify_all()
    return 0


def drop(context: int | None) -> None:
    pass


# Module globals: the callbacks stay alive for as long as the library may call them.
c_call = CALL_FN(call)
c_drop = DROP_FN(drop)

bus = c_void_p()
err = polybus_error_t()
rc = lib.polybus_open(json.dumps(SPEC["config"]).encode(), None, byref(bus), byref(err))
if rc != OK:
    fail("polybus_open", rc, err)

opts = polybus_subscribe_options_t()
lib.polybus_subscribe_options_default(byref(opts))
for k, v in SPEC["options"].items():
    if k in ("group", "dead_letter"):
        setattr(opts, k, v.encode())
    elif k == "start":
        opts.start = START_EARLIEST if v == "earliest" else START_NEW
    else:
        setattr(opts, k, v)
subscription = c_void_p()
rc = lib.polybus_subscribe(
    bus,
    SPEC["pattern"].encode(),
    byref(opts),
    polybus_handler_t(None, c_call, c_drop),
    byref(subscription),
    byref(err),
)
if rc != OK:
    fail("polybus_subscribe", rc, err)

topic = PUBLISH["topic"].encode()
topic_buf = ctypes.create_string_buffer(topic, len(topic) + 1)
for i in range(PUBLISH.get("count", 1)):
    payload = PUBLISH["payload"].replace("{i}", str(i)).encode()
    payload_buf = ctypes.create_string_buffer(payload, len(payload) + 1)
    message = polybus_message_t()  # no key, headers, id, type or time: the defaults
    message.topic = polybus_str_t(ctypes.addressof(topic_buf), len(topic))
    message.payload = polybus_bytes_t(ctypes.addressof(payload_buf), len(payload))
    rc = lib.polybus_publish(bus, byref(message), None, byref(err))
    if rc != OK:
        fail(f"polybus_publish of event {i}", rc, err)

with changed:
    if not changed.wait_for(lambda: finished >= EXIT_AFTER, WAIT):
        sys.exit(f"child: {finished} of {EXIT_AFTER} invocations finished within {WAIT:g}s")
# The end of main: nothing is closed or freed. Every line written so far was flushed.
ctypes.CDLL(None).exit(0)
