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


def main(results: str, out: str) -> None:
    every = [json.loads(line) for line in open(results) if line.strip()]
    rows = [r for r in every if "events_per_sec" in r]
    latency = [r for r in every if "p50_us" in r]
    local = [r for r in rows if not is_broker(r)]
    lines = [
        "# Benchmarks",
        "",
        "Events per second from `publish` to the handler: 64-byte payloads, one publisher and one",
        "subscriber in one process, the handler counting events. Higher is better. First in",
        "process (`memory://`), each language beside its in-process peer, then on the brokers,",
        "each language beside the Rust core and beside the clients a service in that language",
        "would use instead, measured in the same run.",
        "",
        "Command: `make bench` (that is, `bash bench/run.sh`; `POLYBUS_BENCH_EVENTS` sets the",
        "in-process count, `POLYBUS_BENCH_BROKER_EVENTS` the broker count, `POLYBUS_BENCH_ROUNDS`",
        "the broker rounds).",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {machine()}; the brokers are the test",
        "harness's, on loopback on the same machine (`tests/harness/brokers.sh`).",
        "",
        "## In process",
        "",
        "| language | case | events | seconds | events/s | target |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in local:
        target = TARGETS.get(r["lang"])
        peer = "(peer" in r["case"]
        t = "" if peer or target is None else f"{target:,}"
        lines.append(
            f"| {r['lang']} | {r['case']} | {r['events']:,} | {r['seconds']:.3f} | "
            f"{r['events_per_sec']:,} | {t} |"
        )
    lines.append("")
    charts = Charts()
    charts.bars(
        "in-process",
        "memory:// and the in-process peers, events/s",
        [(f"{r['lang']} {r['case'].removeprefix(r['lang'] + ' ')}", r["events_per_sec"], None)
         for r in local],
    )
    lines += broker_table(rows, charts)
    lines += latency_table(latency)
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


def broker_table(rows: list, charts: "Charts") -> list:
    """Batch publish on each broker: every language beside the Rust core and the peers."""
    runs: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        case = r["case"]
        if not is_broker(r):
            continue
        if not ("publish_batch" in case or "PublishBatch" in case or "(peer)" in case):
            continue
        scheme = scheme_of(case)
        label = case.replace(scheme, "").strip() if "(peer)" in case else r["lang"]
        if "(peer)" in case:
            label = f"{r['lang']}: {label.removesuffix('(peer)').strip()}"
        runs.setdefault((scheme, label), []).append(r["events_per_sec"])
    schemes = sorted({s for s, _ in runs})
    if not schemes:
        return []
    rounds = max(len(v) for v in runs.values())
    lines = [
        "## On the brokers",
        "",
        "Batch publish (chunks of 4,096, one subscriber, from the first publish to the last event",
        "handled, after an unreported warm-up round), each language beside the Rust core; the",
        "target is at least 0.8x the core. The peers are the clients a service would use instead,",
        "each the way its documentation recommends for throughput: plain, and where polybus's",
        "wire carries more (the CloudEvents headers or stream fields, JetStream's `Nats-Msg-Id`),",
        "once more with the same wire. Every durable peer waits for the broker's confirmations",
        "and acknowledges what it consumes, as polybus does.",
        f"Median of {rounds} interleaved rounds, with the range of the rounds.",
        "",
        "| broker | language or peer | events/s (median) | range | the core's | ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    order = ["rust", "c", "go", "python", "node"]
    for scheme in schemes:
        med = {label: int(statistics.median(v)) for (s, label), v in runs.items() if s == scheme}
        core = med.get("rust")
        labels = [l for l in order if l in med]
        labels += sorted(l for l in med if l not in order)
        bars = []
        for label in labels:
            v = runs[(scheme, label)]
            rate = med[label]
            ratio = f"{rate / core:.2f}x" if core else ""
            ref = f"{core:,}" if core else ""
            spread = f"{min(v):,}–{max(v):,}" if len(v) > 1 else ""
            lines.append(f"| {scheme} | {label} | {rate:,} | {spread} | {ref} | {ratio} |")
            bars.append((label, rate, (min(v), max(v))))
        charts.bars(scheme.removesuffix("://"), f"{scheme} batch publish, events/s (median)", bars)
    lines.append("")
    return lines


def latency_table(rows: list) -> list:
    """Publish-to-handler latency at a fixed rate: the median of each percentile over rounds."""
    runs: dict[str, list[dict]] = {}
    for r in rows:
        runs.setdefault(r["case"], []).append(r)
    if not runs:
        return []
    rate = rows[0]["rate"]
    lines = [
        "## Latency",
        "",
        f"From just before `publish` to the handler, {rate:,} events a second (below every",
        "broker's saturation here), each publish awaited (a durable broker's confirmation",
        "included), one subscriber in the same process, 64-byte events, after a second of",
        "warm-up; microseconds, the median of the rounds' percentiles. Rust core on every",
        "backend, async-nats used directly beside it on `nats://`.",
        "",
        "| backend | client | p50 µs | p99 µs | p99.9 µs | max µs |",
        "|---|---|---:|---:|---:|---:|",
    ]

    def med(v: list, key: str) -> str:
        return f"{statistics.median(r[key] for r in v):,.0f}"

    for case in sorted(runs, key=lambda c: (scheme_of(c) or "", "(peer)" in c)):
        v = runs[case]
        scheme = scheme_of(case) or ""
        client = case.replace(scheme, "").replace("latency", "").replace("(peer)", "").strip()
        lines.append(
            f"| {scheme} | {client} | {med(v, 'p50_us')} | {med(v, 'p99_us')} | "
            f"{med(v, 'p999_us')} | {med(v, 'max_us')} |"
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
