"""Benchmark: replay -> firewall -> sink, over Kafka and --local, same looped capture.

    python bench/firewall_throughput.py --loop 200 --out bench/results/firewall.json

end_to_end_pps counts everything, including (over Kafka) broker checks, topic
creation and worker start-up. processing_pps counts from the first packet
published (workers already own their partitions) to the last one accounted
for at the sink: the throughput of replay -> firewall -> sink itself.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from rich.console import Console

from snf.harness.oneshot import RunOptions, run_pipeline
from snf.ingress.replay import ReplayOptions
from snf.pipeline.model import EGRESS

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = ROOT.parent / "shared" / "traffic" / "zeek-http-bro.org.pcap"
PIPELINE = ROOT / "pipelines" / "perimeter.yaml"


def measure(local: bool, loop: int, batch: int) -> dict:
    console = Console(stderr=True, quiet=True)
    opts = RunOptions(
        local=local, timeout=120, replay=ReplayOptions(loop=loop, max_packets=batch, progress=False)
    )
    t0 = time.perf_counter()
    result = run_pipeline(PIPELINE, [CAPTURE], opts, console)
    wall = time.perf_counter() - t0
    return {
        "mode": result.mode,
        "packets": result.replay.packets,
        "batches": result.replay.batches,
        "replay_pps": round(result.replay.pps),
        "end_to_end_seconds": round(wall, 3),
        "end_to_end_pps": round(result.replay.packets / wall),
        "processing_seconds": round(result.processing_seconds, 3),
        "processing_pps": round(result.processing_pps),
        "egress": result.collector.count(EGRESS),
        "duplicates": result.collector.duplicates,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--loop", type=int, default=200)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "firewall.json")
    args = ap.parse_args()
    local = measure(True, args.loop, args.batch)
    kafka = measure(False, args.loop, args.batch)
    report = {
        "benchmark": "replay -> firewall -> sink",
        "capture": CAPTURE.name,
        "loop": args.loop,
        "batch_packets": args.batch,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "local": local,
        "kafka": kafka,
        "same_output": local["egress"] == kafka["egress"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
