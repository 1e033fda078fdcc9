"""Turns the JSON lines of bench/run.sh into BENCHMARKS.md and its charts (bench/charts/*.png).

In-process rows are listed as measured. Broker rows come from several interleaved rounds: each
case is given as its median, with the range of its rounds, beside the Rust core's median on the
same broker.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import datetime, timezone

TARGETS = {"rust": 5_000_000, "c": None, "go": 2_000_000, "python": 1_000_000, "node": 1_000_000}
CHARTS = "bench/charts"


def scheme_of(case: str) -> str | None:
    return next((t for t in case.split() if "://" in t), None)


def is_broker(r: dict) -> bool:
    s = scheme_of(r["case"])
    return s is not None and s != "memory://"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f", {int(line.split()[1]) // 1024 // 1024} GiB"
                break
    except OSError:
        pass
    return f"{cores} cores ({cpu}){mem}, {platform.system()} {platform.release()}"


ORDER = ["rust", "c", "go", "python", "node"]


def workload(r: dict) -> str:
    """Which table a line belongs to."""
    case = r["case"]
    if "p50_us" in r:
        return "latency"
    if "one at a time" in case:
        return "single"
    if "fan-out to 10" in case or "group of 4" in case:
        return "fanout"
    if not is_broker(r):
        return "local"
    if "publish_batch" in case or "PublishBatch" in case or "(peer)" in case:
        return "batch"
    return "other"


def label_of(r: dict) -> str:
    """polybus rows by language (and fan-out shape); peers as `<language>: <client>`."""
    case = r["case"]
    rest = case.replace(scheme_of(case) or "", "").replace("latency", "")
    if "(peer)" in case:
        rest = rest.replace("(peer)", "").replace("one at a time", "")
        return f"{r['lang']}: {' '.join(rest.split())}"
    for shape in ("fan-out to 10", "group of 4"):
        if shape in case:
            return f"{r['lang']}, {shape}"
    return r["lang"]


def label_key(label: str) -> tuple:
    lang, _, rest = label.partition(":")
    lang = lang.split(",")[0]
    return (bool(rest), ORDER.index(lang) if lang in ORDER else len(ORDER), label)


def med(rows: list, key: str) -> float | None:
    v = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(v) if v else None


def fmt(v: float | None, digits: int = 0) -> str:
    return "" if v is None else f"{v:,.{digits}f}"


def size_name(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def main(results: str, out: str) -> None:
    every = [json.loads(line) for line in open(results) if line.strip()]
    local = [r for r in every if workload(r) == "local"]
    lines = [
        "# Benchmarks",
        "",
        "Events per second from `publish` to the handler, one publisher and one subscriber in one",
        "process, the handler counting events. Higher is better. First in process (`memory://`),",
        "each language beside its in-process peer; then on the brokers at 64 B, 1 KiB and 64 KiB,",
        "each language beside the Rust core and beside the clients a service in that language",
        "would use instead, measured in the same run; durable publishes one at a time; fan-out",
        "and groups; latency at a fixed rate. Every throughput row also gives the CPU time the",
        "client process spent per event (all its threads, user and system; the brokers run in",
        "processes of their own) and its peak resident memory during the run.",
        "",
        "Command: `make bench` (that is, `bash bench/run.sh`; `POLYBUS_BENCH_EVENTS` sets the",
        "in-process count, `POLYBUS_BENCH_BROKER_EVENTS` the broker count at 64 B,",
        "`POLYBUS_BENCH_SIZES` the payload sizes, `POLYBUS_BENCH_ROUNDS` the broker rounds).",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {machine()}; the brokers are the test",
        "harness's, on loopback on the same machine (`tests/harness/brokers.sh`).",
        "",
        "## In process",
        "",
        "| language | case | events | seconds | events/s | target | CPU µs/event | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in local:
        target = TARGETS.get(r["lang"])
        peer = "(peer" in r["case"]
        t = "" if peer or target is None else f"{target:,}"
        lines.append(
            f"| {r['lang']} | {r['case']} | {r['events']:,} | {r['seconds']:.3f} | "
            f"{r['events_per_sec']:,} | {t} | {fmt(r.get('cpu_us_per_event'), 2)} | "
            f"{fmt(r.get('rss_mb'), 1)} |"
        )
    lines.append("")
    charts = Charts()
    charts.bars(
        "in-process",
        "memory:// and the in-process peers, events/s",
        [(f"{r['lang']} {r['case'].removeprefix(r['lang'] + ' ')}", r["events_per_sec"], None)
         for r in local],
    )
    batch = [r for r in every if workload(r) == "batch"]
    sizes = sorted({r.get("size", 64) for r in batch})
    for size in sizes:
        lines += compare_table(
            [r for r in batch if r.get("size", 64) == size],
            f"On the brokers, {size_name(size)} events",
            BATCH_INTRO if size == sizes[0] else [
                f"As above, with payloads of {size_name(size)}; fewer events per round."],
            charts if size == sizes[0] else None,
        )
    lines += compare_table(
        [r for r in every if workload(r) == "single"],
        "Durable publish, one at a time",
        SINGLE_INTRO,
        None,
    )
    lines += compare_table(
        [r for r in every if workload(r) == "fanout"],
        "Fan-out and groups",
        FANOUT_INTRO,
        None,
    )
    lines += latency_table([r for r in every if workload(r) == "latency"])
    lines += charts.markdown()
    with open(out, "w") as f:
        f.write("\n".join(lines))
    # The analysis (where the time goes) is kept by hand in bench/NOTES.md.
    try:
        with open("bench/NOTES.md") as f:
            extra = f.read()
    except OSError:
        extra = ""
    with open(out, "a") as f:
        f.write("\n" + extra if extra else "")


BATCH_INTRO = [
    "Batch publish (chunks of 4,096, one subscriber, from the first publish to the last event",
    "handled, after an unreported warm-up round), each language beside the Rust core; the",
    "target is at least 0.8x the core. The peers are the clients a service would use instead,",
    "each the way its documentation recommends for throughput: plain, and where polybus's",
    "wire carries more (the CloudEvents headers or stream fields, JetStream's `Nats-Msg-Id`),",
    "once more with the same wire. Every durable peer waits for the broker's confirmations",
    "and acknowledges what it consumes, as polybus does. The peak resident memory is the",
    "process's highest during the run (reset before it), so it includes what earlier cases of",
    "the same program left resident.",
]
SINGLE_INTRO = [
    "Each publish waits for the broker's confirmation before the next one starts (polybus's",
    "`publish` awaited; the peers' synchronous publish), one subscriber acknowledging what it",
    "handles: the round trip per event, which pipelining (the tables above) hides.",
]
FANOUT_INTRO = [
    "Ten subscriptions of one topic in one process, each handling every event, then four",
    "subscriptions in one group sharing the events (batch publish, chunks of 4,096). Events/s",
    "counts deliveries (ten per event published in the fan-out).",
]


def compare_table(rows: list, title: str, intro: list, charts: "Charts | None") -> list:
    """Each case's median over the rounds, its range and its ratio to the Rust core's."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        runs.setdefault((scheme_of(r["case"]) or "", label_of(r)), []).append(r)
    if not runs:
        return []
    rounds = max(len(v) for v in runs.values())
    lines = [f"## {title}", "", *intro, f"Median of {rounds} interleaved rounds, with the range.", "",
             "| backend | language or peer | events/s (median) | range | the core's | ratio "
             "| CPU µs/event | peak RSS MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for scheme in sorted({s for s, _ in runs}):
        labels = sorted((l for s, l in runs if s == scheme), key=label_key)
        bars = []
        for label in labels:
            v = runs[(scheme, label)]
            rate = int(med(v, "events_per_sec"))
            shape = "" if ":" in label else label.partition(", ")[2]
            core_rows = runs.get((scheme, f"rust, {shape}" if shape else "rust"))
            core = int(med(core_rows, "events_per_sec")) if core_rows else None
            rates = [r["events_per_sec"] for r in v]
            spread = f"{min(rates):,}–{max(rates):,}" if len(v) > 1 else ""
            ratio = f"{rate / core:.2f}x" if core else ""
            lines.append(
                f"| {scheme} | {label} | {rate:,} | {spread} | {fmt(core)} | {ratio} | "
                f"{fmt(med(v, 'cpu_us_per_event'), 1)} | {fmt(med(v, 'rss_mb'), 0)} |"
            )
            bars.append((label, rate, (min(rates), max(rates))))
        if charts is not None:
            charts.bars(scheme.removesuffix("://"), f"{scheme} batch publish, events/s (median)",
                        bars)
    lines.append("")
    return lines


def latency_table(rows: list) -> list:
    """Publish-to-handler latency at a fixed rate: the median of each percentile over rounds."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        runs.setdefault((scheme_of(r["case"]) or "", label_of(r)), []).append(r)
    if not runs:
        return []
    rate = rows[0]["rate"]
    lines = [
        "## Latency",
        "",
        f"From just before `publish` to the handler, {rate:,} events a second (below every",
        "broker's saturation here), each publish awaited (a durable broker's confirmation",
        "included), one subscriber in the same process, 64-byte events, after a second of",
        "warm-up; microseconds, the median of the rounds' percentiles. Every language on every",
        "backend, each language's NATS client beside it on `nats://` (published and flushed",
        "one by one).",
        "",
        "| backend | client | p50 µs | p99 µs | p99.9 µs | max µs |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for scheme, label in sorted(runs, key=lambda k: (k[0], label_key(k[1]))):
        v = runs[(scheme, label)]
        lines.append(
            f"| {scheme} | {label} | {fmt(med(v, 'p50_us'))} | {fmt(med(v, 'p99_us'))} | "
            f"{fmt(med(v, 'p999_us'))} | {fmt(med(v, 'max_us'))} |"
        )
    lines.append("")
    return lines


class Charts:
    """Horizontal bar charts, one PNG per table, when matplotlib is there."""

    def __init__(self) -> None:
        self.made: list[tuple[str, str]] = []
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            self.plt = plt
            os.makedirs(CHARTS, exist_ok=True)
        except ImportError:
            self.plt = None

    def bars(self, name: str, title: str, bars: list) -> None:
        if self.plt is None or not bars:
            return
        plt = self.plt
        labels = [b[0] for b in bars][::-1]
        values = [b[1] for b in bars][::-1]
        low = [b[1] - b[2][0] if b[2] else 0 for b in bars][::-1]
        high = [b[2][1] - b[1] if b[2] else 0 for b in bars][::-1]
        colors = ["#d9822b" if "(peer)" in l or ": " in l else "#2b6cb0" for l in labels]
        fig, ax = plt.subplots(figsize=(9, 0.35 * len(bars) + 1.2))
        ax.barh(labels, values, xerr=[low, high], color=colors, capsize=2)
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=8)
        ax.ticklabel_format(axis="x", style="plain")
        ax.xaxis.set_major_formatter(
            plt.matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
        fig.tight_layout()
        path = f"{CHARTS}/{name}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        self.made.append((title, path))

    def markdown(self) -> list:
        if not self.made:
            return []
        lines = ["## Charts", "", "Blue: polybus; orange: the peers. Whiskers: the range of the rounds.", ""]
        for title, path in self.made:
            lines += [f"![{title}]({path})", ""]
        return lines


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
