"""Turns the JSON lines of bench/run.sh into the table of BENCHMARKS.md."""

import json
import platform
import subprocess
import sys
from datetime import datetime, timezone

TARGETS = {"rust": 5_000_000, "c": None, "go": 2_000_000, "python": 1_000_000, "node": 1_000_000}


def main(results: str, out: str) -> None:
    rows = [json.loads(line) for line in open(results) if line.strip()]
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Benchmarks",
        "",
        "Events per second from `publish` to the handler on `memory://`: 64-byte payloads, one",
        "publisher and one subscriber in one process, the handler counting events. Each language",
        "runs beside its in-process peer, measured in the same run. Higher is better. The",
        "`kafka://` rows run against the harness's Kafka broker on loopback, beside librdkafka",
        "used directly (rdkafka's producer and consumer with the same settings).",
        "",
        "Command: `make bench` (that is, `bash bench/run.sh`; `POLYBUS_BENCH_EVENTS` sets the count).",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {cores} cores ({cpu}), "
        f"{platform.system()} {platform.release()}.",
        "",
        "| language | case | events | seconds | events/s | target |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        target = TARGETS.get(r["lang"])
        peer = "(peer" in r["case"]
        broker = "kafka" in r["case"] or "://" in r["case"]
        t = "" if peer or broker or target is None else f"{target:,}"
        lines.append(
            f"| {r['lang']} | {r['case']} | {r['events']:,} | {r['seconds']:.3f} | "
            f"{r['events_per_sec']:,} | {t} |"
        )
    lines.append("")
    lines += broker_table(rows)
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

def broker_table(rows: list) -> list:
    """Batch publish on each broker: every language beside the Rust core, same run, same broker."""
    batch = {}
    for r in rows:
        case = r["case"]
        if "://" in case and ("publish_batch" in case or "PublishBatch" in case or "(peer)" in case):
            scheme = next(t for t in case.split() if "://" in t)
            lang = case.replace(scheme, "").strip() if "(peer)" in case else r["lang"]
            batch[(scheme, lang)] = r["events_per_sec"]
    schemes = sorted({s for s, _ in batch})
    if not schemes:
        return []
    lines = [
        "Batch publish on each broker (chunks of 4,096, one subscriber, publish to last handled),",
        "each language beside the Rust core in the same run; the target is at least 0.8x. The",
        "peers are the clients a service would use instead, the same way (async-nats in Rust;",
        "nats.go, its jetstream PublishAsync and go-redis pipelined in Go; nats-py and redis-py",
        "in Python; nats.js and ioredis in Node), plain and with the",
        "CloudEvents headers or stream fields polybus's wire carries. One run: the spread",
        "between runs on this 2-core machine is about 20-40% on the broker rows.",
        "",
        "| broker | language | events/s | the core's | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for scheme in schemes:
        core = batch.get((scheme, "rust"))
        peers = sorted(lang for s, lang in batch if s == scheme and "(peer)" in lang)
        for lang in ["rust", "c", "go", "python", "node", *peers]:
            rate = batch.get((scheme, lang))
            if rate is None:
                continue
            ratio = f"{rate / core:.2f}x" if core else ""
            ref = f"{core:,}" if core else ""
            lines.append(f"| {scheme} | {lang} | {rate:,} | {ref} | {ratio} |")
    lines.append("")
    return lines


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
