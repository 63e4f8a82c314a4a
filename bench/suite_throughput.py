"""Benchmark: each function core alone, and the example chains end to end.

    python bench/suite_throughput.py --out bench/results/suite.json [--kafka]

cores     one FunctionEngine per function (config from the integration test
          pipelines), in memory: parse + process + state flush per batch of
          512, over the eight real captures looped to ~100k packets, routed to
          4 partitions as the capture agent would.
chains    `snf run --local` of pipelines/edge.yaml and monitoring.yaml on
          their bundled captures looped; with --kafka also over a local broker
          (processing_pps: first packet published to last accounted for).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from rich.console import Console

from snf.core.engine import FunctionEngine
from snf.core.tables import BatchState
from snf.harness.oneshot import RunOptions, run_pipeline
from snf.ingress.accumulator import Batcher
from snf.ingress.replay import ReplayOptions
from snf.packet.capture_file import read_capture
from snf.pipeline.loader import load_pipeline
from snf.pipeline.routing import plan_pipeline

ROOT = Path(__file__).resolve().parents[1]
TRAFFIC = ROOT.parent / "shared" / "traffic"
CORES = ROOT / "tests" / "integration" / "pipelines"


def core_rates(target_packets: int) -> dict[str, dict]:
    packets = [p for path in sorted(TRAFFIC.glob("*.pcap")) for p in read_capture(path)]
    loops = max(1, target_packets // len(packets))
    out = {}
    for yaml in sorted(CORES.glob("*.yaml")):
        pipeline = load_pipeline(yaml)
        plan = plan_pipeline(pipeline)
        keyers = plan.ingress_hop.keyers
        batcher = Batcher(pipeline.partitions, 1, max_packets=512, keyers=keyers)
        batches = []
        for _ in range(loops):
            batches += batcher.add(packets)
        batches += batcher.cut_all()
        pf = pipeline.functions[0]
        fn = plan.cores[pf.name]
        engine = FunctionEngine(fn)
        stores = [BatchState.memory(pf.state_tables) for _ in range(pipeline.partitions)]
        t0 = time.perf_counter()
        for part, batch in batches:
            engine.handle(batch, BatchState(stores[part]))
        seconds = time.perf_counter() - t0
        n = sum(len(b) for _, b in batches)
        out[f"{pf.kind} ({yaml.name})"] = {
            "packets": n,
            "seconds": round(seconds, 3),
            "pps": round(n / seconds),
            "counters": dict(engine.counters),
        }
        print(f"{pf.kind:>14}: {n / seconds:>12,.0f} packets/s")
    return out


def chain_rate(name: str, loop: int, local: bool) -> dict:
    opts = RunOptions(local=local, timeout=120, replay=ReplayOptions(loop=loop, progress=False))
    capture = ROOT / "pipelines" / "captures" / f"{name}.pcapng"
    t0 = time.perf_counter()
    result = run_pipeline(ROOT / "pipelines" / f"{name}.yaml", [capture], opts, Console(quiet=True))
    wall = time.perf_counter() - t0
    row = {
        "mode": result.mode,
        "packets": result.replay.packets,
        "end_to_end_pps": round(result.replay.packets / wall),
        "processing_pps": round(result.processing_pps),
    }
    print(f"{name} ({result.mode}): {row['processing_pps']:,} packets/s")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--packets", type=int, default=100_000)
    ap.add_argument("--loop", type=int, default=100)
    ap.add_argument("--kafka", action="store_true", help="also run the chains over Kafka")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "suite.json")
    args = ap.parse_args()
    report = {
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "cores": core_rates(args.packets),
        "chains": [
            chain_rate(name, args.loop, local)
            for name in ("edge", "monitoring")
            for local in ((True, False) if args.kafka else (True,))
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
