"""The measure of one benchmark run, shared by the Python bench programs (polybus's,
python/bench/bench_pubsub.py, and the peers', bench/peers/python/brokers.py): wall time, CPU
time and peak resident set of the process over the measured part of a run. Standard library
only, so it loads in either program's environment.
"""

from __future__ import annotations

import resource
import time
from typing import Any, final


@final
class Meter:
    """Wall time, CPU time and peak resident set of this process over a ``with`` block: the
    measured part of a run of ``events`` events (or deliveries)."""

    def __init__(self, events: int) -> None:
        self.events = events
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.rss_mb = 0.0
        self._start = 0.0
        self._cpu = 0.0

    @staticmethod
    def cpu() -> float:
        """User plus system CPU seconds of the process so far (every thread)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def __enter__(self) -> Meter:
        try:  # "5" resets the peak resident set (VmHWM) to the current one
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        self._cpu = self.cpu()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
        self.cpu_seconds = self.cpu() - self._cpu
        try:
            with open("/proc/self/status") as f:
                kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
            self.rss_mb = round(kb / 1024, 1)
        except (OSError, StopIteration, ValueError):
            self.rss_mb = 0.0

    def line(self, case: str, size: int) -> dict[str, Any]:
        """The JSON line of a throughput case."""
        return {
            "lang": "python",
            "case": case,
            "events": self.events,
            "seconds": round(self.seconds, 4),
            "events_per_sec": round(self.events / self.seconds),
            "size": size,
            "cpu_us_per_event": round(self.cpu_seconds * 1e6 / self.events, 2),
            "rss_mb": self.rss_mb,
        }
