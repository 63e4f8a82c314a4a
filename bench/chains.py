"""Benchmark: the example chains, --local and over Kafka, each Kafka figure as a fraction
of the Kafka ceiling measured beside it.

    python bench/chains.py --out bench/results/chains.json [--only perimeter] [--batches 512]

Absolute rates move 2-3x between machines (and with whatever else runs on a
shared one), so every Kafka run is followed at once by the pass-through
ceiling (bench/kafka_ceiling.py) on the same capture, loop, batch size and
partitioning, with one pass-through process per function of the chain:
`ratio_to_ceiling` = the chain's processing rate / that ceiling.

chains      perimeter  pipelines/perimeter.yaml, zeek-http-bro.org.pcap x 200 (150,200 packets)
            edge       pipelines/edge.yaml, pipelines/captures/edge.pcapng x 100 (111,000)
            monitoring pipelines/monitoring.yaml, pipelines/captures/monitoring.pcapng,
                       looped to at least 50,000 packets
rates       processing_pps: first packet published to the last one accounted for
            (snf.harness.oneshot); --local: the whole in-process run
same_output --local and Kafka gave the same packets on every terminal (counts) and the
            same egress packets (a digest of id, time, length and bytes, in id order)
batches     packets per message; the capture agent also cuts a message at 512 KiB, so
            zeek-http-bro.org's ~660-byte packets never make more than ~800 a message
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import struct
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from kafka_ceiling import CLIENTS, broker, measure_ceiling, warm_up
from loadwatch import LoadWatch, add_disturbance_args, median_run
from provenance import changed_since, code_state
from rich.console import Console
from rich.table import Table

from snf.egress.collector import Collector
from snf.harness.oneshot import RunOptions, run_pipeline
from snf.ingress.replay import ReplayOptions
from snf.packet.capture_file import read_capture
from snf.pipeline.loader import load_pipeline
from snf.pipeline.model import EGRESS, Pipeline
from snf.pipeline.routing import plan_pipeline

ROOT = Path(__file__).resolve().parents[1]
TRAFFIC = ROOT.parent / "shared" / "traffic"
CAPTURES = ROOT / "pipelines" / "captures"


@dataclass(frozen=True)
class Chain:
    pipeline: Path
    capture: Path
    loop: int | None  # None: enough loops for MIN_PACKETS
    min_packets: int = 0


CHAINS = {
    "perimeter": Chain(
        ROOT / "pipelines" / "perimeter.yaml", TRAFFIC / "zeek-http-bro.org.pcap", 200
    ),
    "edge": Chain(ROOT / "pipelines" / "edge.yaml", CAPTURES / "edge.pcapng", 100),
    "monitoring": Chain(
        ROOT / "pipelines" / "monitoring.yaml", CAPTURES / "monitoring.pcapng", None, 50_000
    ),
}


def loops(chain: Chain, scale: float) -> int:
    """The chain's loop count, scaled down for quick runs (--scale)."""
    loop = chain.loop or math.ceil(chain.min_packets / sum(1 for _ in read_capture(chain.capture)))
    return max(1, round(loop * scale))


def output_of(collector: Collector) -> dict[str, Any]:
    """What a run put out: packets per terminal, records per record port, and a digest
    of the egress packets in id order (id, time, length, bytes)."""
    h = hashlib.blake2b(digest_size=16)
    egress = collector.packets.get(EGRESS, {})
    for pid in sorted(egress):
        p = egress[pid]
        h.update(struct.pack("<QQqII", pid[0], pid[1], p.ts_ns, p.orig_len, len(p.data)))
        h.update(p.data)
    return {
        "egress": len(egress),
        "egress_digest": h.hexdigest(),
        "terminals": {f"{f or '-'}.{port}": len(b) for (f, port), b in collector.packets.items()},
        "records": {f"{f}.{port}": len(b) for (f, port), b in collector.records.items()},
    }


def run_chain(chain: Chain, loop: int, batch: int, local: bool, brokers: str) -> dict[str, Any]:
    """One `snf run` (or `snf run --local`) of the chain, watched for disturbance."""
    replay_opts = ReplayOptions(loop=loop, max_packets=batch, progress=False)
    opts = RunOptions(local=local, brokers=brokers, timeout=120, replay=replay_opts)
    loadavg = [round(x, 2) for x in os.getloadavg()]
    with LoadWatch() as watch:
        t0 = time.perf_counter()
        result = run_pipeline(chain.pipeline, [chain.capture], opts, Console(quiet=True))
        wall = time.perf_counter() - t0
    return {
        "mode": result.mode,
        "packets": result.replay.packets,
        "messages": result.replay.batches,
        "mean_packets_per_message": round(result.replay.packets / result.replay.batches, 1),
        "processing_seconds": round(result.processing_seconds, 3),
        "pps": round(result.processing_pps),
        "end_to_end_seconds": round(wall, 3),
        "end_to_end_pps": round(result.replay.packets / wall),
        "duplicates": result.collector.duplicates,
        "output": output_of(result.collector),
        "loadavg": loadavg,
        "disturbance": watch.report(),
    }


def measure(
    name: str, batch: int, args: argparse.Namespace, brokers: str, console: Console
) -> dict[str, Any]:
    """--local, Kafka, then at once the ceilings, for one chain at one batch size."""
    chain = CHAINS[name]
    loop = loops(chain, args.scale)
    pipeline = load_pipeline(chain.pipeline)
    hops = len(pipeline.functions)  # one pass-through per function
    keyers = plan_pipeline(pipeline).ingress_hop.keyers  # partitioned as the capture agent does
    quiet = {"tries": args.tries, "max_share": args.max_disturbance}
    steady = partial(median_run, repeats=args.repeats, **quiet)
    local = steady(partial(run_chain, chain, loop, batch, True, brokers))
    kafka = steady(partial(run_chain, chain, loop, batch, False, brokers))
    shape = ([chain.capture], loop, batch, hops, args.client, pipeline.partitions)
    ceiling = partial(measure_ceiling, *shape, brokers=brokers, keyers=keyers)
    row = {"batch_packets": batch, "loop": loop, "hops": hops, "local": local, "kafka": kafka}
    row["ceiling"] = steady(ceiling)
    row["ratio_to_ceiling"] = round(kafka["pps"] / row["ceiling"]["pps"], 3)
    if ships_heads(pipeline):
        row["ceiling_heads"] = steady(partial(ceiling, ship="heads"))
        row["ratio_to_heads_ceiling"] = round(kafka["pps"] / row["ceiling_heads"]["pps"], 3)
    row["same_output"] = local["output"] == kafka["output"]
    heads = row.get("ceiling_heads", {}).get("pps")
    console.print(
        f"{name} batch {batch}: local {local['pps']:,}  kafka {kafka['pps']:,}  "
        f"ceiling {row['ceiling']['pps']:,} (heads {heads or 0:,}; {hops} hop(s))  "
        f"ratio {row['ratio_to_ceiling']:.2f}  same output: {row['same_output']}",
        highlight=False,
    )
    return row


def attempt(
    name: str, batch: int, args: argparse.Namespace, brokers: str, console: Console
) -> dict[str, Any]:
    """measure(), or the error that stopped it: the other figures are still worth having."""
    try:
        return measure(name, batch, args, brokers, console)
    except Exception as exc:  # a failed run (RunError, DeployError, CeilingError...)
        console.print(f"[red]{name} batch {batch} failed:[/] {exc}")
        return {"batch_packets": batch, "error": f"{type(exc).__name__}: {exc}"[:2000]}


def ships_heads(pipeline: Pipeline) -> bool:
    """Whether every topic after ingress carries heads (`ship: heads`, no payload reader
    downstream): then snf moves fewer bytes than the whole-message ceiling."""
    return all(r.heads for pf in pipeline.functions for r in pf.routes["pass"])


def show(console: Console, report: dict[str, Any]) -> None:
    table = Table(title=f"chains: Kafka vs the ceiling ({report['ceiling_client']} clients)")
    columns = ("chain", "batch", "packets", "--local", "Kafka", "ceiling", "ratio")
    for col in (*columns, "heads ceiling", "ratio ", "same"):
        table.add_column(col, justify="left" if col == "chain" else "right")
    for name, chain in report["chains"].items():
        for batch, row in chain["by_batch"].items():
            if "error" in row:
                table.add_row(name, batch, "[red]failed[/]", *[""] * 7)
                continue
            heads = row.get("ceiling_heads")
            table.add_row(
                name,
                f"{batch} ({row['kafka']['mean_packets_per_message']:.0f})",
                f"{row['kafka']['packets']:,}",
                f"{row['local']['pps']:,}",
                f"{row['kafka']['pps']:,}",
                f"{row['ceiling']['pps']:,} ({row['hops']})",
                f"{row['ratio_to_ceiling']:.2f}",
                f"{heads['pps']:,}" if heads else "-",
                f"{row['ratio_to_heads_ceiling']:.2f}" if heads else "-",
                "yes" if row["same_output"] else "[red]NO[/]",
            )
    console.print(table)
    console.print(
        "batch: asked (mean packets per message); ceiling: whole messages through "
        "(N) pass-through processes; heads ceiling: heads after ingress, as snf ships"
    )


def _arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(CHAINS), help="comma separated chains")
    ap.add_argument("--batches", default="256,512,1024,2048", help="packets per message")
    ap.add_argument("--client", default="snf", choices=CLIENTS, help="of the ceiling")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the loops (quick runs)")
    add_disturbance_args(ap, repeats=1)
    ap.add_argument(
        "--merge",
        action="store_true",
        help="replace only the measured cells (--only, --batches) in an existing --out",
    )
    ap.add_argument("--brokers", default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "chains.json")
    return ap.parse_args()


def _new_report(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "benchmark": "example chains, --local and Kafka, against the Kafka ceiling of the same run",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        },
        "ceiling_client": args.client,
        "max_disturbance": args.max_disturbance,
        "repeats": args.repeats,
        "code": code_state(),
        "chains": {},
    }


def main() -> None:
    args = _arguments()
    console = Console(stderr=True)
    names = args.only.split(",")
    unknown = set(names) - set(CHAINS)
    if unknown:
        raise SystemExit(f"unknown chain(s) {', '.join(sorted(unknown))}; of {', '.join(CHAINS)}")
    batches = [int(b) for b in args.batches.split(",")]
    report, now = _new_report(args), None
    if args.merge:
        # Re-measured cells replace theirs in an earlier run's file (a disturbed cell).
        report = json.loads(args.out.read_text())
        now = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "code": code_state()}
        now["loadavg"] = [round(x, 2) for x in os.getloadavg()]
        now["cells"] = [f"{n} {b}" for n in names for b in batches]
        report.setdefault("reruns", []).append(now)
    started = time.perf_counter()
    with broker(args.brokers) as bootstrap:
        warm_up(bootstrap, [CHAINS["perimeter"].capture], 4)
        for name in names:
            chain = CHAINS[name]
            entry = report["chains"].setdefault(name, {})
            entry["pipeline"] = str(chain.pipeline.relative_to(ROOT))
            entry["capture"] = chain.capture.name
            entry["functions"] = [f.name for f in load_pipeline(chain.pipeline).functions]
            cells = entry.setdefault("by_batch", {})
            for b in batches:
                cells[str(b)] = attempt(name, b, args, bootstrap, console)
    stamp = now if now is not None else report
    stamp["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    stamp["code"]["changed_during_run"] = changed_since(stamp["code"])
    if stamp["code"]["changed_during_run"]:
        console.print("[yellow]snf/ or functions/ changed during the run[/]")
    stamp["seconds"] = round(time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    show(console, report)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
