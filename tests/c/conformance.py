#!/usr/bin/env python3
"""The conformance scenarios of tests/conformance, run through the C callback path.

Every handler is a C callback: a ctypes CFUNCTYPE passed to polybus_subscribe() in a
polybus_handler_t, run by the library on its dispatcher threads. Events are published with
polybus_publish(), one call each (a step's `deadline_ms` is one polybus_cancel_new() handle
passed to every call of the step), subscriptions and the bus are closed with
polybus_subscription_close() and polybus_close(), counters are read with polybus_stats(), and
errors are checked by the C name of the returned status (polybus_status_name()). Only the Python
standard library is used.

    cargo build --release -p polybus-ffi        # makes $CARGO_TARGET_DIR/release/libpolybus.so
    python3 tests/c/conformance.py [GLOB ...]   # GLOBs select tests by name, e.g. 'memory/*'

Tests are named <backend>/<scenario id>, as in every runner; tests/conformance/SCHEMA.md describes
the scenarios and the environment (POLYBUS_TEST_BACKENDS, POLYBUS_TEST_<BACKEND>_URL,
POLYBUS_TEST_TIMEOUT_SCALE, POLYBUS_TEST_SLOW). The library is loaded from
$CARGO_TARGET_DIR/release/libpolybus.so (default <repo>/target/release/libpolybus.so).

Besides the scenario's own checks, every test holds the C callback contract of polybus.h:
`call` gets the handler's `context`; `drop` runs exactly once, after the last `call` returned,
and no `call` follows it; a subscribe that fails has run `drop` before it returns; once
polybus_subscription_close() (from outside a callback) returns, `drop` has run; once the bus is
closed and freed, every handler's `drop` runs.

How the C path differs from the other languages' forms, and why:
- `json` in a publish step: C's JSON form is the POLYBUS_MESSAGE_JSON flag on JSON text the
  caller encoded (what the Go, Python and Node bindings send under the hood), so the value is
  encoded with json.dumps and published with that flag; the core then adds
  `content-type: application/json`, which 016 checks. The `json` check decodes the payload with
  json.loads (C has no decoding helper) and compares strictly (true is not 1).
- `fail_with`: C has no panics; "error" returns 1 and "panic" returns -1 (any non-zero fails).
- `delay_ms` sleeps in the callback: that is the workload, not a synchronisation.
- `unsubscribe_self` / `close_bus`: polybus_subscription_close() / polybus_close() called from
  inside the callback, which polybus.h says return at once there.
- a `close` with `concurrent: N` is N threads calling polybus_close() at once.
- a `child` step runs conformance_child.py (beside this file) with this Python: it drives the
  same libpolybus.so through ctypes (polybus_open, polybus_subscribe with a C callback,
  polybus_publish) and ends as a C main that returns without polybus_close or polybus_free
  does, in libc's exit(0), the library still loaded (SCHEMA.md "Child processes"; the child's
  docstring says why not through the interpreter's own exit).
- publish steps make one polybus_publish() call per event, as SCHEMA.md has it (one call each,
  so `published_at_most` counts calls); polybus_publish_batch() is left to the api_* tests.
- `restart_broker` runs `bash tests/harness/brokers.sh restart <broker>`. Tests run one at a
  time, so no other scenario runs meanwhile; one left hung by an earlier test (see below) would,
  so a restart fails instead when a hung test is still running.

A test that never returns (a call blocked for good inside the library) fails as hung after its
waits' deadlines plus 120 s (times POLYBUS_TEST_TIMEOUT_SCALE), and the run goes on.
"""

from __future__ import annotations

import collections
import ctypes
import fnmatch
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    byref,
    c_char,
    c_char_p,
    c_int32,
    c_int64,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
CONFORMANCE = ROOT / "tests" / "conformance"
HEADER = ROOT / "include" / "polybus.h"

# ---------------------------------------------------------------------------------------------
# The C ABI, declared as include/polybus.h lays it out (checked against the header with a C
# compiler before any test runs, see check_layout).

ABI_VERSION = 2  # POLYBUS_ABI_VERSION
ERROR_MESSAGE_SIZE = 512  # POLYBUS_ERROR_MESSAGE_SIZE
MESSAGE_JSON = 1  # POLYBUS_MESSAGE_JSON
START_NEW = 0  # POLYBUS_START_NEW
START_EARLIEST = 1  # POLYBUS_START_EARLIEST
OK = 0  # POLYBUS_OK

status_t = c_int32  # polybus_status_t is int32_t in C


class polybus_error_t(Structure):
    _fields_ = [("code", status_t), ("message", c_char * ERROR_MESSAGE_SIZE)]


class polybus_str_t(Structure):
    # ptr is `const char *` but not NUL-terminated: a c_void_p, read with string_at(ptr, len).
    _fields_ = [("ptr", c_void_p), ("len", c_size_t)]


class polybus_bytes_t(Structure):
    _fields_ = [("ptr", c_void_p), ("len", c_size_t)]


class polybus_header_t(Structure):
    _fields_ = [("name", polybus_str_t), ("value", polybus_str_t)]


class polybus_message_t(Structure):
    _fields_ = [
        ("topic", polybus_str_t),
        ("payload", polybus_bytes_t),
        ("key", polybus_str_t),
        ("headers", POINTER(polybus_header_t)),
        ("headers_len", c_size_t),
        ("id", polybus_str_t),
        ("type", polybus_str_t),
        ("time_unix_ns", c_int64),
        ("flags", c_uint32),
    ]


class polybus_event_t(Structure):
    _fields_ = [
        ("topic", polybus_str_t),
        ("payload", polybus_bytes_t),
        ("key", polybus_str_t),
        ("id", polybus_str_t),
        ("type", polybus_str_t),
        ("source", polybus_str_t),
        ("headers", POINTER(polybus_header_t)),
        ("headers_len", c_size_t),
        ("time_unix_ns", c_int64),
        ("attempt", c_uint32),
    ]


class polybus_stats_t(Structure):
    _fields_ = [
        ("published", c_uint64),
        ("delivered", c_uint64),
        ("acked", c_uint64),
        ("failed", c_uint64),
        ("retried", c_uint64),
        ("dead_lettered", c_uint64),
        ("dropped", c_uint64),
    ]


class polybus_subscribe_options_t(Structure):
    _fields_ = [
        ("group", c_char_p),
        ("concurrency", c_uint32),
        ("max_attempts", c_uint32),
        ("dead_letter", c_char_p),
        ("start", c_int32),
        ("backoff_initial_ms", c_uint64),
        ("backoff_max_ms", c_uint64),
        ("queue_size", c_uint32),
        ("batch_size", c_uint32),
    ]


CALL_FN = CFUNCTYPE(c_int32, POINTER(polybus_event_t), c_void_p)
DROP_FN = CFUNCTYPE(None, c_void_p)


class polybus_handler_t(Structure):
    _fields_ = [("context", c_void_p), ("call", CALL_FN), ("drop", DROP_FN)]


# Opaque handles (polybus_t, polybus_subscription_t, polybus_cancel_t) are c_void_p; a cancel
# handle is passed only by a publish step with `deadline_ms` (elsewhere None, which is NULL).
LAYOUT = {
    "polybus_error_t": polybus_error_t,
    "polybus_str_t": polybus_str_t,
    "polybus_bytes_t": polybus_bytes_t,
    "polybus_header_t": polybus_header_t,
    "polybus_message_t": polybus_message_t,
    "polybus_event_t": polybus_event_t,
    "polybus_stats_t": polybus_stats_t,
    "polybus_subscribe_options_t": polybus_subscribe_options_t,
    "polybus_handler_t": polybus_handler_t,
}
CONSTANTS = {
    "POLYBUS_ABI_VERSION": ABI_VERSION,
    "POLYBUS_ERROR_MESSAGE_SIZE": ERROR_MESSAGE_SIZE,
    "POLYBUS_MESSAGE_JSON": MESSAGE_JSON,
    "POLYBUS_START_NEW": START_NEW,
    "POLYBUS_START_EARLIEST": START_EARLIEST,
    "POLYBUS_OK": OK,
}


def library_path() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR") or str(ROOT / "target")
    return Path(target) / "release" / "libpolybus.so"


def load_library() -> ctypes.CDLL:
    path = library_path()
    if not path.is_file():
        sys.exit(f"missing {path}: run `cargo build --release -p polybus-ffi`")
    # CDLL (not PyDLL): the GIL is released during every call, so the dispatcher threads can run
    # their Python callbacks while this thread waits in polybus_close() and friends.
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        sys.exit(f"cannot load {path}: {e}")
    sigs: dict[str, tuple[Any, list[Any]]] = {
        "polybus_abi_version": (c_uint32, []),
        "polybus_version": (c_char_p, []),
        "polybus_status_name": (c_char_p, [c_int32]),
        "polybus_open": (
            status_t,
            [c_char_p, c_void_p, POINTER(c_void_p), POINTER(polybus_error_t)],
        ),
        "polybus_close": (status_t, [c_void_p, c_void_p, POINTER(polybus_error_t)]),
        "polybus_free": (None, [c_void_p]),
        "polybus_publish": (
            status_t,
            [c_void_p, POINTER(polybus_message_t), c_void_p, POINTER(polybus_error_t)],
        ),
        "polybus_subscribe_options_default": (None, [POINTER(polybus_subscribe_options_t)]),
        "polybus_subscribe": (
            status_t,
            [
                c_void_p,
                c_char_p,
                POINTER(polybus_subscribe_options_t),
                polybus_handler_t,  # by value, as the header declares
                POINTER(c_void_p),
                POINTER(polybus_error_t),
            ],
        ),
        "polybus_subscription_close": (status_t, [c_void_p, c_void_p, POINTER(polybus_error_t)]),
        "polybus_subscription_free": (None, [c_void_p]),
        "polybus_stats": (status_t, [c_void_p, POINTER(polybus_stats_t), POINTER(polybus_error_t)]),
        "polybus_cancel_new": (status_t, [c_int64, POINTER(c_void_p), POINTER(polybus_error_t)]),
        "polybus_cancel_free": (None, [c_void_p]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    if lib.polybus_abi_version() != ABI_VERSION:
        sys.exit(f"{path} has ABI {lib.polybus_abi_version()}; this runner speaks {ABI_VERSION}")
    return lib


def check_layout() -> str:
    """Compares the ctypes declarations with the header, compiled by a C compiler: every struct's
    size and alignment, every field's offset and size, and the constants used. Returns a note for
    the log; exits on a mismatch (every test would be undefined behaviour)."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if not cc:
        return "struct layout not checked (no C compiler)"
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "polybus.h"']
    lines.append("int main(void) {")
    expected = []
    for name, cls in LAYOUT.items():
        lines.append(f'  printf("{name} %zu %zu\\n", sizeof({name}), _Alignof({name}));')
        expected.append(f"{name} {ctypes.sizeof(cls)} {ctypes.alignment(cls)}")
        for field, ftype, *_ in cls._fields_:
            lines.append(
                f'  printf("{name}.{field} %zu %zu\\n", offsetof({name}, {field}),'
                f" sizeof((({name} *)0)->{field}));"
            )
            expected.append(f"{name}.{field} {getattr(cls, field).offset} {ctypes.sizeof(ftype)}")
    for name, value in CONSTANTS.items():
        lines.append(f'  printf("{name} %lld\\n", (long long){name});')
        expected.append(f"{name} {value}")
    lines += ["  return 0;", "}"]
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "layout.c", Path(tmp) / "layout"
        src.write_text("\n".join(lines) + "\n")
        build = subprocess.run(
            [cc, "-std=c11", "-I", str(HEADER.parent), str(src), "-o", str(exe)],
            capture_output=True,
            text=True,
        )
        if build.returncode != 0:
            sys.exit(f"layout check: {cc} failed:\n{build.stderr}")
        out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
        got = out.split("\n")
    wrong = [f"  header: {g!r}, ctypes: {e!r}" for g, e in zip(got, expected) if g != e]
    if wrong:
        sys.exit("the ctypes declarations do not match include/polybus.h:\n" + "\n".join(wrong))
    return f"struct layout and constants checked against include/polybus.h ({cc})"


# ---------------------------------------------------------------------------------------------
# The scenario files, read strictly: an unknown op, field, option, handler field or check is an
# error of the test, never ignored.

SCENARIO_FIELDS = {"id", "description", "requires", "config", "steps", "slow"}
STEP_FIELDS = {
    "subscribe": {"name", "pattern", "options", "handler", "expect_error"},
    "publish": {
        "topic", "payload", "json", "payload_size", "count", "keys", "key", "headers", "id",
        "type", "deadline_ms", "expect_error", "published_at_most",
    },
    "wait": {"name", "names", "count", "succeeded", "distinct_succeeded", "timeout_ms"},
    "restart_broker": set(),
    "child": {"name", "pattern", "options", "handler", "publish", "exit_after", "timeout_ms"},
    "unsubscribe": {"name", "expect_error"},
    "close": {"expect_error", "concurrent"},
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
CHILD_HANDLER_FIELDS = {"delay_ms"}  # a child's handler works for a while, then succeeds
CHILD_PUBLISH_FIELDS = {"topic", "payload", "count"}
BACKEND_FIELDS = {"url", "broker"}  # the keys of a backend in features.json besides capabilities


class ScenarioError(Exception):
    """The scenario file says something this runner does not know: a failure, never a skip."""


def is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def need(ok: bool, what: str) -> None:
    if not ok:
        raise ScenarioError(what)


def check_fields(what: str, obj: Any, allowed: set[str]) -> None:
    need(isinstance(obj, dict), f"{what} is not an object")
    unknown = sorted(set(obj) - allowed)
    need(not unknown, f"{what} has unknown field(s) {unknown}")


def validate_features(features: Any) -> None:
    """features.json, read strictly: every backend has a string `url`, a `broker` (a string, or
    null for none) and otherwise only boolean capabilities."""
    need(isinstance(features, dict) and bool(features), "features.json is not a non-empty object")
    for backend, f in features.items():
        need(isinstance(f, dict), f"{backend} is not an object")
        need(isinstance(f.get("url"), str), f"{backend} has no string url")
        need("broker" in f and (f["broker"] is None or isinstance(f["broker"], str)),
             f"{backend}: broker is neither a string nor null")
        for k, v in f.items():
            need(k in BACKEND_FIELDS or isinstance(v, bool),
                 f"{backend}.{k} is not a boolean capability")


def validate_options(opts: Any) -> None:
    check_fields("options", opts, OPTION_FIELDS)
    for k, v in opts.items():
        if k in ("group", "dead_letter"):
            need(isinstance(v, str), f"option {k} is not a string")
        elif k == "start":
            need(v in ("new", "earliest"), f"option start is {v!r}, not \"new\" or \"earliest\"")
        else:
            need(is_uint(v), f"option {k} is not a non-negative integer")


def validate_scenario(sc: dict[str, Any], features: dict[str, dict[str, Any]]) -> None:
    check_fields("scenario", sc, SCENARIO_FIELDS)
    need(isinstance(sc.get("id"), str), "scenario has no string id")
    need(is_str_list(sc.get("requires", [])), "requires is not a list of names")
    for req in sc.get("requires", []):
        cap = req.removeprefix("!")
        need(cap not in BACKEND_FIELDS
             and all(isinstance(f.get(cap), bool) for f in features.values()),
             f"requires names {req!r}, not a capability every backend of features.json lists")
    need(isinstance(sc.get("config", {}), dict), "config is not an object")
    need(isinstance(sc.get("slow", False), bool), "slow is not a boolean")
    need(isinstance(sc.get("steps"), list) and sc["steps"], "steps is not a non-empty list")
    for i, step in enumerate(sc["steps"], 1):
        try:
            validate_step(step)
        except ScenarioError as e:
            raise ScenarioError(f"step {i}: {e}") from None


def validate_step(step: Any) -> None:
    need(isinstance(step, dict), "not an object")
    op = step.get("op")
    need(op in STEP_FIELDS, f"unknown op {op!r}")
    check_fields(f"step {op!r}", step, STEP_FIELDS[op] | {"op"})
    if "expect_error" in step:
        need(isinstance(step["expect_error"], str) and step["expect_error"].startswith("POLYBUS_"),
             "expect_error is not a POLYBUS_* status name")
    if op == "subscribe":
        need(isinstance(step.get("name"), str), "subscribe needs a string name")
        need(isinstance(step.get("pattern"), str), "subscribe needs a string pattern")
        validate_options(step.get("options", {}))
        h = step.get("handler", {})
        check_fields("handler", h, HANDLER_FIELDS)
        for k in ("fail_times", "delay_ms"):
            need(is_uint(h.get(k, 0)), f"handler {k} is not a non-negative integer")
        for k in ("fail_always", "unsubscribe_self", "close_bus"):
            need(isinstance(h.get(k, False), bool), f"handler {k} is not a boolean")
        need(h.get("fail_with", "error") in ("error", "panic"),
             f"handler fail_with is {h.get('fail_with')!r}, not \"error\" or \"panic\"")
        need(not (h.get("unsubscribe_self") and h.get("close_bus")),
             "a handler has at most one of unsubscribe_self and close_bus")
    elif op == "publish":
        need(isinstance(step.get("topic"), str), "publish needs a string topic")
        forms = [k for k in ("payload", "json", "payload_size") if k in step]
        need(len(forms) == 1,
             f"publish needs exactly one of payload, json, payload_size (has {forms})")
        if "payload" in step:
            need(isinstance(step["payload"], str), "payload is not a string")
        if "payload_size" in step:
            need(is_uint(step["payload_size"]), "payload_size is not a non-negative integer")
        need(is_uint(step.get("count", 1)), "count is not a non-negative integer")
        if "keys" in step:
            need(is_str_list(step["keys"]) and step["keys"],
                 "keys is not a non-empty list of strings")
            need("key" not in step, "publish has both key and keys")
        for k in ("key", "id", "type"):
            if k in step:
                need(isinstance(step[k], str), f"{k} is not a string")
        if "headers" in step:
            need(isinstance(step["headers"], dict)
                 and all(isinstance(v, str) for v in step["headers"].values()),
                 "headers is not an object of strings")
        if "deadline_ms" in step:
            need(is_uint(step["deadline_ms"]), "deadline_ms is not a non-negative integer")
        if "published_at_most" in step:
            need("expect_error" in step, "published_at_most only goes with expect_error")
            need(is_uint(step["published_at_most"]),
                 "published_at_most is not a non-negative integer")
    elif op == "wait":
        need(("name" in step) != ("names" in step), "wait needs exactly one of name and names")
        targets = [k for k in ("count", "succeeded", "distinct_succeeded") if k in step]
        need(len(targets) == 1,
             f"wait needs exactly one of count, succeeded and distinct_succeeded (has {targets})")
        need(isinstance(step.get("name", ""), str) and is_str_list(step.get("names", [])),
             "wait names no handler by a string")
        need(is_uint(step[targets[0]]), "wait target is not a non-negative integer")
        need(is_uint(step.get("timeout_ms", 0)), "timeout_ms is not a non-negative integer")
    elif op == "child":
        need(isinstance(step.get("name"), str), "child needs a string name")
        need(isinstance(step.get("pattern"), str), "child needs a string pattern")
        validate_options(step.get("options", {}))
        h = step.get("handler", {})
        check_fields("handler", h, CHILD_HANDLER_FIELDS)
        need(is_uint(h.get("delay_ms", 0)), "handler delay_ms is not a non-negative integer")
        pub = step.get("publish")
        check_fields("publish", pub, CHILD_PUBLISH_FIELDS)
        need(isinstance(pub.get("topic"), str) and isinstance(pub.get("payload"), str),
             "publish needs a string topic and payload")
        need(is_uint(pub.get("count", 1)), "publish count is not a non-negative integer")
        need(is_uint(step.get("exit_after")), "exit_after is not a non-negative integer")
        need(is_uint(step.get("timeout_ms", 0)), "timeout_ms is not a non-negative integer")
    elif op == "unsubscribe":
        need(isinstance(step.get("name"), str), "unsubscribe needs a string name")
    elif op == "close":
        if "concurrent" in step:
            need(is_uint(step["concurrent"]) and step["concurrent"] >= 1,
                 "concurrent is not a positive integer")
    elif op == "expect":
        need(isinstance(step.get("name"), str), "expect needs a string name")
        for k in ("count", "succeeded", "max_in_flight", "min_peak_in_flight", "finished_at_close"):
            if k in step:
                need(is_uint(step[k]), f"{k} is not a non-negative integer")
        for k in ("payloads", "payloads_unordered", "payloads_prefix", "topics"):
            if k in step:
                need(is_str_list(step[k]), f"{k} is not a list of strings")
        if "attempts" in step:
            need(isinstance(step["attempts"], list) and all(is_uint(a) for a in step["attempts"]),
                 "attempts is not a list of integers")
        if "key" in step:
            need(step["key"] is None or isinstance(step["key"], str), "key is not a string or null")
        for k in ("id", "type"):
            if k in step:
                need(isinstance(step[k], str), f"{k} is not a string")
        if "headers" in step:
            need(isinstance(step["headers"], dict)
                 and all(isinstance(v, str) for v in step["headers"].values()),
                 "headers is not an object of strings")
        for k in ("key_order", "no_overlap_per_key", "self_close_ok"):
            if k in step:
                need(isinstance(step[k], bool), f"{k} is not a boolean")
        if "min_retry_gaps_ms" in step:
            g = step["min_retry_gaps_ms"]
            need(isinstance(g, list) and g and all(is_uint(n) for n in g),
                 "min_retry_gaps_ms is not a non-empty list of non-negative integers")
    elif op == "expect_total":
        need(is_str_list(step.get("names")), "expect_total needs a list of names")
        if "succeeded" in step:
            need(is_uint(step["succeeded"]), "succeeded is not a non-negative integer")
        need(isinstance(step.get("distinct_payloads", False), bool),
             "distinct_payloads is not a boolean")
        if "succeeded_set" in step:
            need(is_str_list(step["succeeded_set"]), "succeeded_set is not a list of strings")
    elif op == "expect_stats":
        need(len(step) > 1, "expect_stats names no counter")
        for k, v in step.items():
            if k != "op":
                need(is_uint(v), f"{k} is not a non-negative integer")


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality without Python's True == 1 and 1 == 1.0 leniency."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


# ---------------------------------------------------------------------------------------------
# Recording C callbacks.


INTEGER = re.compile(r"-?[0-9]+")


class Fail(Exception):
    """A failed check."""


def thread_name() -> str:
    """The OS name of the calling thread (the library names its threads "polybus-dispatch")."""
    try:
        return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()
    except OSError:
        return threading.current_thread().name


def view_bytes(v: polybus_str_t | polybus_bytes_t) -> bytes | None:
    """The bytes of a view in an event, or None for an absent string (ptr NULL)."""
    if not v.ptr:
        return None if isinstance(v, polybus_str_t) else b""
    return ctypes.string_at(v.ptr, v.len) if v.len else b""


def view_text(v: polybus_str_t) -> str | None:
    b = view_bytes(v)
    return None if b is None else b.decode("utf-8", "replace")


class Invocation:
    """One call of a recording handler, copied out of the event while the views are valid."""

    def __init__(self, e: polybus_event_t) -> None:
        self.topic = view_text(e.topic) or ""
        self.raw = view_bytes(e.payload) or b""
        self.payload = self.raw.decode("utf-8", "replace")
        self.key = view_text(e.key)
        self.id = view_text(e.id) or ""
        self.type = view_text(e.type) or ""
        self.headers: dict[str, str] = {}
        for i in range(e.headers_len):
            h = e.headers[i]
            self.headers[view_text(h.name) or ""] = view_text(h.value) or ""
        self.attempt = int(e.attempt)
        self.succeeded: bool | None = None  # None while in flight
        self.started = 0.0  # time.monotonic() when it started, for min_retry_gaps_ms


# CFUNCTYPE objects must outlive every call the library may make through them, i.e. until `drop`
# has returned. Dropping the last reference from inside `drop` itself would free the code being
# run, so they are kept for the life of the process (a few per test).
KEEP_ALIVE: list[Any] = []
_next_context = iter(range(1, 1 << 62))


class Recorder:
    """A C callback handler that behaves as a scenario's `handler` object says and records every
    call, plus the C-contract bookkeeping (context, drop)."""

    def __init__(self, run: "Run", name: str, spec: dict[str, Any]) -> None:
        self.run = run
        self.name = name
        self.spec = spec
        self.cond = run.cond
        self.context = next(_next_context)
        self.invocations: list[Invocation] = []
        self.in_flight = 0
        self.peak = 0
        self.keys_in_flight: collections.Counter[str | None] = collections.Counter()
        self.key_overlap = False
        self.finished = 0
        self.succeeded = 0
        self.drops = 0
        self.dropped_at: tuple[float, str] | None = None  # when and on which thread drop ran
        self.problems: list[str] = []  # broken C contract or a bug of this runner
        # How the unsubscribe_self / close_bus call ended: None (not made), "" (no error) or the
        # C name of the status it returned.
        self.self_close: str | None = None
        # The finished invocations each call of the latest close step saw as it returned.
        self.at_close: list[int] | None = None
        self.sub = c_void_p()  # set once polybus_subscribe returned
        self.sub_ready = threading.Event()

        def call(event: Any, context: int | None) -> int:
            try:
                return self.on_call(event.contents, context)
            except BaseException:  # a bug here must not ack: record it and nack
                self.problem("the runner's callback raised:\n" + traceback.format_exc())
                return 99

        def drop(context: int | None) -> None:
            try:
                self.on_drop(context)
            except BaseException:
                self.problem("the runner's drop raised:\n" + traceback.format_exc())

        self.c_call = CALL_FN(call)
        self.c_drop = DROP_FN(drop)
        KEEP_ALIVE.append((self.c_call, self.c_drop))

    def handler(self) -> polybus_handler_t:
        return polybus_handler_t(c_void_p(self.context), self.c_call, self.c_drop)

    def problem(self, what: str) -> None:
        with self.cond:
            self.problems.append(f"handler {self.name!r}: {what}")
            self.cond.notify_all()

    def on_call(self, e: polybus_event_t, context: int | None) -> int:
        call = Invocation(e)
        with self.cond:
            first = not self.invocations
            if context != self.context:
                self.problems.append(
                    f"handler {self.name!r}: call got context {context}, not {self.context}")
            if self.drops:
                self.problems.append(f"handler {self.name!r}: call after drop (C contract)")
            call.started = time.monotonic()
            self.invocations.append(call)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            if call.key is not None:
                self.key_overlap |= self.keys_in_flight[call.key] > 0
                self.keys_in_flight[call.key] += 1
            self.cond.notify_all()
        ok = False
        try:
            spec = self.spec
            # On the first invocation, before anything else: the in-callback close (polybus.h:
            # from inside a callback both return at once; one that waited for itself would never
            # return, this invocation would never finish, and the scenario's wait would run out).
            if first and spec.get("unsubscribe_self"):
                self.close_own_subscription()
            elif first and spec.get("close_bus"):
                self.close_bus()
            if spec.get("delay_ms"):
                time.sleep(spec["delay_ms"] / 1000)  # the workload, not a synchronisation
            ok = not (spec.get("fail_always") or call.attempt <= spec.get("fail_times", 0))
        finally:
            with self.cond:
                call.succeeded = ok
                self.in_flight -= 1
                self.finished += 1
                self.succeeded += ok
                if call.key is not None:
                    self.keys_in_flight[call.key] -= 1
                self.cond.notify_all()
        if ok:
            return 0
        return -1 if self.spec.get("fail_with") == "panic" else 1

    def close_own_subscription(self) -> None:
        # The handle is stored by the subscribing thread after polybus_subscribe returns; an event
        # cannot come before (each scenario has a fresh prefix), but wait for it rather than race.
        if not self.sub_ready.wait(10 * self.run.scale):
            with self.cond:
                self.self_close = ("no subscription handle (the handler ran before "
                                   "polybus_subscribe returned)")
            return
        err = polybus_error_t()
        rc = self.run.lib.polybus_subscription_close(self.sub, None, byref(err))
        self.in_callback_result(rc)

    def close_bus(self) -> None:
        err = polybus_error_t()
        rc = self.run.lib.polybus_close(self.run.bus, None, byref(err))
        self.in_callback_result(rc)

    def in_callback_result(self, rc: int) -> None:
        with self.cond:
            self.self_close = "" if rc == OK else self.run.status_name(rc)

    def on_drop(self, context: int | None) -> None:
        with self.cond:
            me = f"handler {self.name!r}"
            if context != self.context:
                self.problems.append(f"{me}: drop got context {context}, not {self.context}")
            if self.in_flight:
                self.problems.append(
                    f"{me}: drop ran with {self.in_flight} call(s) in flight (C contract)")
            self.drops += 1
            self.dropped_at = (time.monotonic(), thread_name())
            if self.drops > 1:
                self.problems.append(f"{me}: drop ran {self.drops} times (C contract)")
            self.cond.notify_all()


class ChildRecording:
    """The recording of a `child` step's handler: the finished invocations its child process
    wrote, in order (payload and outcome only). Read like a Recorder's by wait, expect and
    expect_total; it has no C callback of this process, so no drop to hold."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.invocations: list[Invocation] = []
        self.in_flight = 0
        self.peak = 0
        self.key_overlap = False
        self.finished = 0
        self.succeeded = 0
        self.self_close: str | None = None
        self.at_close: list[int] | None = None
        self.problems: list[str] = []

    def add(self, payload: str, succeeded: bool) -> None:
        call = Invocation.__new__(Invocation)
        call.topic, call.raw, call.payload = "", payload.encode(), payload
        call.key, call.id, call.type, call.headers = None, "", "", {}
        call.attempt, call.succeeded, call.started = 0, succeeded, 0.0
        self.invocations.append(call)
        self.finished += 1
        self.succeeded += succeeded


CHILD = Path(__file__).resolve().parent / "conformance_child.py"


def shown(output: str | bytes | None, head: int = 20, tail: int = 40) -> str:
    """A child's standard error as subprocess gives it, as text: its first and last lines when
    it is long."""
    if isinstance(output, bytes):
        output = output.decode(errors="replace")
    lines = (output or "").splitlines()
    if len(lines) > head + tail:
        left_out = f"[... {len(lines) - head - tail} lines left out ...]"
        lines = lines[:head] + [left_out] + lines[-tail:]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# One scenario on one bus.


class Run:
    def __init__(self, lib: ctypes.CDLL, url: str, broker: str | None, scenario: dict[str, Any],
                 scale: float) -> None:
        self.lib = lib
        self.url = url
        self.broker = broker
        self.scenario = scenario
        self.scale = scale
        self.cond = threading.Condition()
        self.bus = c_void_p()
        self.recorders: dict[str, Recorder | ChildRecording] = {}
        self.all_recorders: list[Recorder] = []
        self.subs: dict[str, c_void_p] = {}
        self.step_no = 0
        self.closing = ""  # what the test thread is blocked in, for a hang report
        self.config: dict[str, Any] = {}  # the bus's configuration, once open

    def status_name(self, rc: int) -> str:
        return str(self.lib.polybus_status_name(rc).decode())

    def check(self, what: str, rc: int, err: polybus_error_t, expected: str | None) -> None:
        """Checks a status against a step's expect_error (None: must succeed)."""
        name = self.status_name(rc)
        message = err.message.decode("utf-8", "replace")
        if expected is None:
            if rc != OK:
                raise Fail(f"{what} failed: {name}: {message}")
            return
        if rc == OK:
            raise Fail(f"{what} succeeded; expected {expected}")
        if name != expected:
            raise Fail(f"{what}: expected {expected}, got {name}: {message}")
        if err.code != rc:
            raise Fail(f"{what}: returned {name} but wrote code "
                       f"{self.status_name(err.code)} into polybus_error_t")
        if not message:
            raise Fail(f"{what}: {name} has no message")

    def problems(self) -> list[str]:
        with self.cond:
            return [p for r in self.all_recorders for p in r.problems]

    def raise_problems(self) -> None:
        found = self.problems()
        if found:
            raise Fail("\n".join(found))

    def recorder(self, name: str) -> Recorder | ChildRecording:
        if name not in self.recorders:
            raise Fail(f"no handler named {name!r}")
        return self.recorders[name]

    def deadline(self, ms: float) -> float:
        return time.monotonic() + ms * self.scale / 1000

    def open(self) -> None:
        self.config = {"url": self.url, "prefix": f"t.{uuid.uuid4().hex}"}
        self.config.update(self.scenario.get("config", {}))
        err = polybus_error_t()
        config = json.dumps(self.config).encode()
        rc = self.lib.polybus_open(config, None, byref(self.bus), byref(err))
        self.check(f"polybus_open {self.url}", rc, err, None)

    def run_steps(self) -> None:
        self.open()
        for i, step in enumerate(self.scenario["steps"], 1):
            self.step_no = i
            try:
                getattr(self, "op_" + step["op"])(step)
                self.raise_problems()
            except Fail as e:
                raise Fail(f"step {i} ({step['op']}): {e}") from None

    # -- steps ---------------------------------------------------------------------------------

    def op_subscribe(self, step: dict[str, Any]) -> None:
        name = step["name"]
        expected = step.get("expect_error")
        if name in self.recorders:
            raise Fail(f"a handler named {name!r} already exists")
        rec = Recorder(self, name, step.get("handler", {}))
        self.all_recorders.append(rec)
        opts = polybus_subscribe_options_t()
        self.lib.polybus_subscribe_options_default(byref(opts))
        for k, v in step.get("options", {}).items():
            if k in ("group", "dead_letter"):
                setattr(opts, k, v.encode())
            elif k == "start":
                opts.start = START_EARLIEST if v == "earliest" else START_NEW
            else:
                setattr(opts, k, v)
                if getattr(opts, k) != v:  # ctypes wraps silently
                    raise Fail(f"option {k}={v} does not fit the C field")
        err = polybus_error_t()
        sub = c_void_p()
        rc = self.lib.polybus_subscribe(
            self.bus, step["pattern"].encode(), byref(opts), rec.handler(), byref(sub), byref(err)
        )
        if rc == OK:
            rec.sub = sub
            rec.sub_ready.set()
            self.recorders[name] = rec
            self.subs[name] = sub
        self.check(f"polybus_subscribe {step['pattern']!r}", rc, err, expected)
        if rc != OK:
            # polybus.h: it takes the handler even when it fails, and calls drop before returning.
            failed = f"polybus_subscribe failed ({self.status_name(rc)})"
            if sub.value:
                raise Fail(f"{failed} but wrote a subscription")
            with self.cond:
                drops = rec.drops
            if drops != 1:
                raise Fail(f"{failed} and had run drop {drops} times when it returned; polybus.h "
                           "says it calls drop before returning")

    def op_publish(self, step: dict[str, Any]) -> None:
        keep: list[Any] = []  # the buffers the messages point into, alive for the call

        def text(s: str | None) -> polybus_str_t:
            if s is None:
                return polybus_str_t(None, 0)
            b = s.encode()
            buf = ctypes.create_string_buffer(b, len(b) + 1)  # never NULL, even for ""
            keep.append(buf)
            return polybus_str_t(ctypes.addressof(buf), len(b))

        def data(b: bytes) -> polybus_bytes_t:
            buf = ctypes.create_string_buffer(b, len(b) + 1)
            keep.append(buf)
            return polybus_bytes_t(ctypes.addressof(buf), len(b))

        headers = step.get("headers")
        header_array = None
        if headers:
            header_array = (polybus_header_t * len(headers))(
                *(polybus_header_t(text(k), text(v)) for k, v in headers.items())
            )
            keep.append(header_array)
        count = step.get("count", 1)
        keys = step.get("keys")
        messages = (polybus_message_t * max(count, 1))()
        for i in range(count):
            m = messages[i]
            m.topic = text(step["topic"])
            if "json" in step:
                m.payload = data(json.dumps(step["json"]).encode())
                m.flags = MESSAGE_JSON
            elif "payload_size" in step:
                m.payload = data(b"x" * step["payload_size"])
            else:
                m.payload = data(step["payload"].replace("{i}", str(i)).encode())
            m.key = text(keys[i % len(keys)] if keys else step.get("key"))
            if header_array is not None:
                m.headers = ctypes.cast(header_array, POINTER(polybus_header_t))
                m.headers_len = len(header_array)
            m.id = text(step.get("id"))
            m.type = text(step.get("type"))
        # One call each; a deadline is one handle for every call of the step.
        cancel = c_void_p()
        if "deadline_ms" in step:
            err = polybus_error_t()
            rc = self.lib.polybus_cancel_new(step["deadline_ms"], byref(cancel), byref(err))
            self.check(f"polybus_cancel_new({step['deadline_ms']})", rc, err, None)
        rc, err, published = OK, polybus_error_t(), 0
        try:
            for i in range(count):
                err = polybus_error_t()
                self.closing = f"polybus_publish (call {i + 1} of the step)"
                rc = self.lib.polybus_publish(self.bus, byref(messages[i]), cancel, byref(err))
                self.closing = ""
                if rc != OK:
                    break  # the step stops at the first failing call
                published += 1
            what = f"polybus_publish to {step['topic']!r}"
            if rc != OK and count > 1:
                what += f" (call {published + 1} of {count})"
            self.check(what, rc, err, step.get("expect_error"))
        finally:
            self.lib.polybus_cancel_free(cancel)
        most = step.get("published_at_most")
        if most is not None and published > most:
            raise Fail(f"{published} polybus_publish calls returned POLYBUS_OK before the failing "
                       f"one, expected at most {most}")

    def op_wait(self, step: dict[str, Any]) -> None:
        names = step["names"] if "names" in step else [step["name"]]
        recs = [self.recorder(n) for n in names]
        what = next(k for k in ("count", "succeeded", "distinct_succeeded") if k in step)
        target = step[what]
        ms = step.get("timeout_ms", 10_000)
        deadline = self.deadline(ms)

        # `count` counts finished invocations, `succeeded` successful ones, `distinct_succeeded`
        # the distinct payloads among the successful ones.
        def seen() -> int:
            if what == "distinct_succeeded":
                return len({c.payload for r in recs for c in r.invocations if c.succeeded})
            return sum(r.succeeded if what == "succeeded" else r.finished for r in recs)

        with self.cond:
            while seen() < target:
                if any(r.problems for r in self.all_recorders):
                    return  # reported by run_steps
                left = deadline - time.monotonic()
                if left <= 0:
                    started = sum(len(r.invocations) for r in recs)
                    finished = sum(r.finished for r in recs)
                    ok = sum(r.succeeded for r in recs)
                    distinct = f" ({seen()} distinct)" if what == "distinct_succeeded" else ""
                    raise Fail(f"waited {ms * self.scale / 1000:g}s for {names} {what} >= "
                               f"{target}; saw {started} started, {finished} finished, "
                               f"{ok} succeeded{distinct}")
                self.cond.wait(left)

    def op_unsubscribe(self, step: dict[str, Any]) -> None:
        name = step["name"]
        if name not in self.subs:
            raise Fail(f"no subscription named {name!r}")
        rec = self.recorders[name]
        assert isinstance(rec, Recorder)  # a child's recording has no subscription here
        err = polybus_error_t()
        self.closing = f"polybus_subscription_close({name!r})"
        rc = self.lib.polybus_subscription_close(self.subs[name], None, byref(err))
        returned = time.monotonic()
        self.closing = ""
        self.check(f"polybus_subscription_close {name!r}", rc, err, step.get("expect_error"))
        if rc == OK:
            # polybus.h: called outside a callback, it returns once every call has returned and
            # drop has run.
            with self.cond:
                if rec.in_flight:
                    raise Fail(f"polybus_subscription_close {name!r} returned with "
                               f"{rec.in_flight} call(s) in flight")
                if rec.drops != 1:
                    # Say when drop did run, if it does: that tells a late drop from a lost one.
                    self.cond.wait_for(lambda: rec.drops, 1)
                    late = "and it had not run 1 s later"
                    if rec.dropped_at:
                        at, thread = rec.dropped_at
                        late = f"it ran {(at - returned) * 1000:.2f} ms later, on thread {thread!r}"
                    raise Fail(f"polybus_subscription_close {name!r} returned POLYBUS_OK before "
                               f"the handler's drop ran ({late}); polybus.h promises that when it "
                               "returns \"every call has returned and drop has run\"")

    def op_close(self, step: dict[str, Any]) -> None:
        n = step.get("concurrent", 1)
        results: list[tuple[int, polybus_error_t] | None] = [None] * n

        recs = list(self.recorders.values())
        with self.cond:
            for r in recs:
                r.at_close = []

        def close(i: int) -> None:
            err = polybus_error_t()
            rc = self.lib.polybus_close(self.bus, None, byref(err))
            with self.cond:  # what had finished as this call returned
                for r in recs:
                    if r.at_close is not None:
                        r.at_close.append(r.finished)
            results[i] = (rc, err)

        self.closing = "polybus_close" + (f" from {n} threads" if n > 1 else "")
        threads = [threading.Thread(target=close, args=(i,), name=f"close-{i}") for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()  # a close that never returns hangs the test: the watchdog reports it
        self.closing = ""
        for i, (rc, err) in enumerate(r for r in results if r is not None):
            what = "polybus_close" + (f" (thread {i})" if n > 1 else "")
            self.check(what, rc, err, step.get("expect_error"))
        # After any close every handler is done: the recordings are final.
        with self.cond:
            busy = {r.name: r.in_flight for r in self.all_recorders if r.in_flight}
        if busy:
            raise Fail(f"polybus_close returned with calls in flight: {busy}")

    def op_expect(self, step: dict[str, Any]) -> None:
        name = step["name"]
        r = self.recorder(name)
        with self.cond:
            calls = list(r.invocations)
            succeeded, peak, overlap = r.succeeded, r.peak, r.key_overlap
        for check, want in step.items():
            if check in ("op", "name"):
                continue
            where = f"handler {name!r}, {check}"
            if check == "count":
                if len(calls) != want:
                    raise Fail(f"{where}: {len(calls)} invocations, expected {want}")
            elif check == "succeeded":
                if succeeded != want:
                    raise Fail(f"{where}: {succeeded} succeeded, expected {want}")
            elif check == "payloads":
                got = [c.payload for c in calls]
                if got != want:
                    raise Fail(f"{where}: {got}, expected {want}")
            elif check == "payloads_prefix":
                got = [c.payload for c in calls]
                if got != want[: len(got)] or len(got) > len(want):
                    raise Fail(f"{where}: {got}, expected a prefix of {want}")
            elif check == "self_close_ok":
                with self.cond:
                    result = r.self_close
                if result is None:
                    raise Fail(f"{where}: the handler never made its close call")
                if (result == "") != want:
                    raise Fail(f"{where}: the handler's close call ended "
                               f"{'without error' if result == '' else 'with ' + result}, expected "
                               f"{'no error' if want else 'an error'}")
            elif check == "finished_at_close":
                with self.cond:
                    seen = None if r.at_close is None else list(r.at_close)
                if seen is None:
                    raise Fail(f"{where}: no close step ran")
                if any(n != want for n in seen):
                    raise Fail(f"{where}: the close calls saw {seen} finished invocations as they "
                               f"returned, expected {want} for each")
            elif check == "payloads_unordered":
                got = sorted(c.payload for c in calls)
                if got != sorted(want):
                    raise Fail(f"{where}: {got}, expected {sorted(want)} in any order")
            elif check == "attempts":
                attempts = [c.attempt for c in calls]
                if attempts != want:
                    raise Fail(f"{where}: {attempts}, expected {want}")
            elif check == "topics":
                got = [c.topic for c in calls]
                if got != want:
                    raise Fail(f"{where}: {got}, expected {want}")
            elif check in ("key", "id", "type"):
                got = [getattr(c, check) for c in calls]
                if any(g != want for g in got):
                    raise Fail(f"{where}: {got}, expected every one {want!r}")
            elif check == "headers":
                for i, c in enumerate(calls):
                    for h, v in want.items():
                        g = c.headers.get(h)
                        if g is None or (g == "" if v == "*" else g != v):
                            raise Fail(f"{where}: invocation {i} has {h}={g!r}, expected {v!r} "
                                       f"({c.headers})")
            elif check == "json":
                for i, c in enumerate(calls):
                    try:
                        got = json.loads(c.raw)
                    except ValueError as e:
                        raise Fail(f"{where}: invocation {i}: payload {c.payload!r} is not "
                                   f"JSON ({e})") from None
                    if not json_equal(got, want):
                        raise Fail(f"{where}: invocation {i} decodes to {got!r}, expected {want!r}")
            elif check == "key_order":
                if want:
                    # Unkeyed invocations are not checked (SCHEMA.md).
                    last: dict[str, int] = {}
                    for c in calls:
                        if not c.succeeded or c.key is None:
                            continue
                        if not INTEGER.fullmatch(c.payload):
                            raise Fail(f"{where}: payload {c.payload!r} is not an integer")
                        n = int(c.payload)
                        if c.key in last and n <= last[c.key]:
                            raise Fail(f"{where}: key {c.key!r}: {n} handled after {last[c.key]}")
                        last[c.key] = n
            elif check == "no_overlap_per_key":
                if want and overlap:
                    raise Fail(f"{where}: two invocations with one key were in flight together")
            elif check == "max_in_flight":
                if peak > want:
                    raise Fail(f"{where}: peak {peak} in flight, expected at most {want}")
            elif check == "min_peak_in_flight":
                if peak < want:
                    raise Fail(f"{where}: peak {peak} in flight, expected at least {want}")
            elif check == "min_retry_gaps_ms":
                # For every event (by payload), the k-th gap between the starts of its
                # consecutive invocations is at least want[k] ms (the last entry past the list).
                by_payload: dict[str, list[Invocation]] = collections.defaultdict(list)
                for c in calls:
                    by_payload[c.payload].append(c)
                gaps = 0
                for payload, cs in by_payload.items():
                    ms = [(b.started - a.started) * 1000 for a, b in zip(cs, cs[1:])]
                    for k, gap in enumerate(ms):
                        gaps += 1
                        floor = want[min(k, len(want) - 1)]
                        if gap < floor:
                            raise Fail(f"{where}: payload {payload!r}: attempt {cs[k + 1].attempt} "
                                       f"started {gap:.1f} ms after attempt {cs[k].attempt}, "
                                       f"expected at least {floor} ms "
                                       f"(gaps {[round(g, 1) for g in ms]} ms)")
                if not gaps:
                    raise Fail(f"{where}: no event had a second invocation")
            else:  # validate_step lets no other field through
                raise Fail(f"{where}: unknown check")

    def op_expect_total(self, step: dict[str, Any]) -> None:
        recs = [self.recorder(n) for n in step["names"]]
        with self.cond:
            ok = [c.payload for r in recs for c in r.invocations if c.succeeded]
        if "succeeded" in step and len(ok) != step["succeeded"]:
            raise Fail(f"{step['names']} succeeded {len(ok)} times in total, expected "
                       f"{step['succeeded']}")
        if step.get("distinct_payloads"):
            twice = sorted(p for p, n in collections.Counter(ok).items() if n > 1)
            if twice:
                raise Fail(f"payloads that succeeded more than once: {twice}")
        if "succeeded_set" in step:
            want = set(step["succeeded_set"])
            missing, extra = sorted(want - set(ok)), sorted(set(ok) - want)
            if missing or extra:
                raise Fail(f"the payloads that succeeded miss {missing} and have {extra} besides")

    def op_restart_broker(self, step: dict[str, Any]) -> None:
        if self.broker is None:
            raise Fail("the backend has no broker to restart")
        # Tests run one at a time; only a test left hung by an earlier one can still be running.
        hung = [t.name for t in threading.enumerate()
                if t.name.startswith("test-") and t is not threading.current_thread()]
        if hung:
            raise Fail(f"a restart would break the tests still running (hung): {hung}")
        self.closing = f"brokers.sh restart {self.broker}"
        done = subprocess.run(["bash", "tests/harness/brokers.sh", "restart", self.broker],
                              cwd=ROOT, capture_output=True, text=True)
        self.closing = ""
        if done.returncode != 0:
            raise Fail(f"brokers.sh restart {self.broker} exited with {done.returncode}:\n"
                       f"{done.stderr}{done.stdout}")

    def op_child(self, step: dict[str, Any]) -> None:
        name = step["name"]
        if name in self.recorders:
            raise Fail(f"a handler named {name!r} already exists")
        spec = {
            "config": self.config,
            "pattern": step["pattern"],
            "options": step.get("options", {}),
            "handler": step.get("handler", {}),
            "publish": step["publish"],
            "exit_after": step["exit_after"],
        }
        env = dict(os.environ, POLYBUS_CONFORMANCE_CHILD=json.dumps(spec))
        timeout = step.get("timeout_ms", 10_000) * self.scale / 1000
        self.closing = f"the child process of {name!r}"
        try:
            done = subprocess.run([sys.executable, str(CHILD)], env=env, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise Fail(f"the child did not exit within {timeout:g}s; its stderr:\n"
                       f"{shown(e.stderr)}") from None
        finally:
            self.closing = ""
        if done.returncode != 0:
            raise Fail(f"the child exited with status {done.returncode}; its stderr:\n"
                       f"{shown(done.stderr)}")
        rec = ChildRecording(name)
        for line in done.stdout.splitlines():
            try:
                got = json.loads(line)
            except ValueError:
                got = None
            if not (isinstance(got, dict) and got.keys() == {"payload", "succeeded"}
                    and isinstance(got["payload"], str) and isinstance(got["succeeded"], bool)):
                raise Fail(f"the child wrote {line!r}, not a finished invocation")
            rec.add(got["payload"], got["succeeded"])
        with self.cond:
            self.recorders[name] = rec
            self.cond.notify_all()

    def op_expect_stats(self, step: dict[str, Any]) -> None:
        stats = polybus_stats_t()
        err = polybus_error_t()
        rc = self.lib.polybus_stats(self.bus, byref(stats), byref(err))
        self.check("polybus_stats", rc, err, None)
        got = {f[0]: getattr(stats, f[0]) for f in polybus_stats_t._fields_}
        wrong = {k: got[k] for k, v in step.items() if k != "op" and got[k] != v}
        if wrong:
            want = {k: v for k, v in step.items() if k != "op"}
            raise Fail(f"counters {wrong}, expected {want} (all: {got})")

    # -- the end of every test -----------------------------------------------------------------

    def finish(self) -> None:
        """Closes and frees everything, then holds the C contract: every handler's drop runs
        once. Raises Fail for what went wrong (after the test's own failure, if any, is kept)."""
        if not self.bus.value:
            return
        err = polybus_error_t()
        self.closing = "polybus_close (the end of the test)"
        rc = self.lib.polybus_close(self.bus, None, byref(err))
        self.closing = ""
        if rc != OK:
            # Handlers may still be running: freeing their subscriptions or the bus now could pull
            # the handles from under a callback that uses them. Leak them instead.
            raise Fail(f"polybus_close at the end of the test: {self.status_name(rc)}: "
                       f"{err.message.decode(errors='replace')}")
        self.closing = "polybus_subscription_free / polybus_free"
        for sub in self.subs.values():
            self.lib.polybus_subscription_free(sub)
        self.subs.clear()
        self.lib.polybus_free(self.bus)
        self.bus = c_void_p()
        self.closing = ""
        deadline = self.deadline(10_000)
        with self.cond:
            while any(r.drops == 0 for r in self.all_recorders):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [r.name for r in self.all_recorders if r.drops == 0]
                    raise Fail(f"drop never ran for {missing} after the bus and its subscriptions "
                               "were freed (C contract)")
                self.cond.wait(left)
        self.raise_problems()


# ---------------------------------------------------------------------------------------------
# The driver.


def skip_reason(features: dict[str, Any], scenario: dict[str, Any], slow: bool) -> str | None:
    for req in scenario.get("requires", []):
        if req.startswith("!"):
            if features.get(req[1:]) is True:
                return f'backend has "{req[1:]}"'
        elif features.get(req) is not True:
            return f'backend lacks "{req}"'
    if scenario.get("slow") and not slow:
        return "slow scenario (set POLYBUS_TEST_SLOW=1)"
    return None


def budget_seconds(scenario: dict[str, Any], scale: float) -> float:
    """How long a test may take before it counts as hung: its waits' deadlines plus a generous
    allowance for opening, publishing and draining."""
    waits = sum(s.get("timeout_ms", 10_000) for s in scenario.get("steps", [])
                if isinstance(s, dict) and s.get("op") in ("wait", "child"))
    return float((120 + waits / 1000) * scale)


def run_test(lib: ctypes.CDLL, url: str, broker: str | None, scenario: dict[str, Any],
             scale: float) -> tuple[str, str]:
    """Runs one test on a thread of its own, so that a call that never returns (a deadlock in a
    close) is reported as a failure instead of hanging the run. Returns (status, detail)."""
    outcome: list[tuple[str, str]] = []
    run = Run(lib, url, broker, scenario, scale)

    def body() -> None:
        error = None
        try:
            run.run_steps()
        except Fail as e:
            error = str(e)
        except Exception:
            error = "the runner raised:\n" + traceback.format_exc()
        try:
            run.finish()
        except Fail as e:
            error = error or f"at the end: {e}"
        except Exception:
            error = error or "the runner raised at the end:\n" + traceback.format_exc()
        outcome.append(("FAIL", error) if error else ("ok", ""))

    t = threading.Thread(target=body, name=f"test-{scenario['id']}", daemon=True)
    t.start()
    limit = budget_seconds(scenario, scale)
    t.join(limit)
    if t.is_alive():
        where = run.closing or f"step {run.step_no}"
        return "HUNG", f"still running after {limit:g}s, blocked in {where}"
    return outcome[0]


def main() -> int:
    started = time.monotonic()
    features: dict[str, dict[str, Any]] = json.loads((CONFORMANCE / "features.json").read_text())
    try:
        validate_features(features)
    except ScenarioError as e:
        sys.exit(f"tests/conformance/features.json: {e}")
    try:
        scale = float(os.environ.get("POLYBUS_TEST_TIMEOUT_SCALE", "1"))
    except ValueError:
        scale = -1
    if not (scale > 0 and math.isfinite(scale)):
        given = os.environ["POLYBUS_TEST_TIMEOUT_SCALE"]
        sys.exit(f"POLYBUS_TEST_TIMEOUT_SCALE={given!r} is not a positive number")
    slow = os.environ.get("POLYBUS_TEST_SLOW") == "1"
    backends = list(features)
    if os.environ.get("POLYBUS_TEST_BACKENDS"):
        backends = [b.strip() for b in os.environ["POLYBUS_TEST_BACKENDS"].split(",") if b.strip()]
        unknown = [b for b in backends if b not in features]
        if unknown:
            sys.exit(f"POLYBUS_TEST_BACKENDS names {unknown}, which features.json does not list")
    globs = sys.argv[1:]
    if any(g.startswith("-") for g in globs):
        print(__doc__)
        return 2

    scenarios: list[tuple[dict[str, Any], str | None]] = []  # (scenario, why it is invalid)
    for path in sorted((CONFORMANCE / "scenarios").glob("*.json")):
        sc: Any = None
        try:
            sc = json.loads(path.read_text())
            validate_scenario(sc, features)
            scenarios.append((sc, None))
        except (ValueError, ScenarioError) as e:
            sid = path.stem
            if isinstance(sc, dict) and isinstance(sc.get("id"), str):
                sid = sc["id"]
            scenarios.append(({"id": sid}, f"{path.name}: {e}"))

    lib = load_library()
    print(f"polybus {lib.polybus_version().decode()} from {library_path()}")
    print(check_layout())

    tally: dict[str, collections.Counter[str]] = {b: collections.Counter() for b in backends}
    failed: list[str] = []
    hung = False
    for backend in backends:
        url = os.environ.get(f"POLYBUS_TEST_{backend.upper()}_URL") or features[backend]["url"]
        for sc, invalid in scenarios:
            name = f"{backend}/{sc['id']}"
            if globs and not any(fnmatch.fnmatchcase(name, g) for g in globs):
                continue
            t0 = time.monotonic()
            if invalid:
                status, detail = "FAIL", f"invalid scenario: {invalid}"
            elif (reason := skip_reason(features[backend], sc, slow)) is not None:
                status, detail = "skip", reason
            else:
                status, detail = run_test(lib, url, features[backend]["broker"], sc, scale)
            took = time.monotonic() - t0
            if status == "HUNG":
                hung = True
                status = "FAIL"
            tally[backend][status] += 1
            if status == "ok":
                print(f"ok   {name} ({took:.2f}s)", flush=True)
            elif status == "skip":
                print(f"skip {name}: {detail}", flush=True)
            else:
                failed.append(name)
                print(f"FAIL {name} ({took:.2f}s): " + detail.replace("\n", "\n     "), flush=True)

    if globs and not failed and not sum(sum(c.values()) for c in tally.values()):
        print(f"no test matches {globs}")
        return 1
    print()
    for backend in backends:
        c = tally[backend]
        if sum(c.values()):
            print(f"{backend:14} {c['ok']:3} passed, {c['FAIL']:3} failed, {c['skip']:3} skipped")
    total = sum(tally.values(), collections.Counter())
    print(f"conformance_c: {total['ok']} passed, {total['FAIL']} failed, {total['skip']} skipped "
          f"in {time.monotonic() - started:.1f}s")
    for name in failed:
        print(f"  failed: {name}")
    code = 1 if failed else 0
    if hung:
        # A test thread is stuck inside the library; finalising the interpreter could wait for it
        # or run a callback into a torn-down interpreter.
        sys.stdout.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
