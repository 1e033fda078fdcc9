"""Subscription scale: what 10, 1,000 and 10,000 subscriptions of one bus cost.

For each count, in a fresh child process (so counts do not share threads or memory): connects
to ``memory://`` (or ``--url``), subscribes that many plain handlers of ``concurrency=1`` to
distinct topics, then measures the OS threads the subscriptions added (``Threads:`` of
/proc/self/status), the resident memory they added, the CPU the idle process uses over
``--idle`` seconds (user + system time of every thread, from ``resource.getrusage``), the time
to subscribe them all and the time to close the bus. Prints one JSON line per count.

    python bench/bench_scale.py                      # 10, 1000, 10000 on memory://
    python bench/bench_scale.py --counts 1000 --url nats://127.0.0.1:4222

The issue's target: 10,000 subscriptions add at most 16 OS threads and under 1% of a core
idle, subscribe in under 1 s and close in under 1 s.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(url: str, count: int, idle: float, settle: float) -> dict[str, object]:
    import polybus

    def handler(event: polybus.Event) -> None:
        pass

    bus = polybus.connect(url)
    # The runtime, the connection and the first dispatcher threads are not the subscriptions'.
    bus.subscribe("scale.warmup", handler).close()
    threads_before, rss_before = status("Threads"), status("VmRSS")

    start = time.perf_counter()
    subs = [bus.subscribe(f"scale.{i}", handler) for i in range(count)]
    subscribe_s = time.perf_counter() - start

    threads, rss = status("Threads"), status("VmRSS")
    # The lanes the core just started settle within a second (about 0.02 s of CPU per 1,000
    # subscriptions); what is measured is the idle state after that.
    time.sleep(settle)
    cpu, wall = cpu_seconds(), time.perf_counter()
    time.sleep(idle)
    idle_core = (cpu_seconds() - cpu) / (time.perf_counter() - wall)

    start = time.perf_counter()
    bus.close()
    close_s = time.perf_counter() - start
    assert all(s.closed for s in subs)
    return {
        "lang": "python",
        "url": url,
        "subscriptions": count,
        "threads_added": threads - threads_before,
        "threads_total": threads,
        "rss_added_mb": round((rss - rss_before) / 1024, 1),
        "rss_mb": round(rss / 1024, 1),
        "idle_cpu_core": round(idle_core, 4),
        "subscribe_s": round(subscribe_s, 3),
        "close_s": round(close_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="memory://")
    parser.add_argument("--counts", default="10,1000,10000", help="comma-separated")
    parser.add_argument("--idle", type=float, default=2.0, help="idle seconds measured")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds waited after subscribing before the idle measurement")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.url, args.child, args.idle, args.settle)), flush=True)
        return
    for count in (int(c) for c in args.counts.split(",")):
        subprocess.run(
            [sys.executable, __file__, "--url", args.url, "--idle", str(args.idle),
             "--settle", str(args.settle), "--child", str(count)],
            check=True,
        )


if __name__ == "__main__":
    main()
