"""Benchmark: the throughput cost of exactly-once (snf's journal and lineage dedup).

Two copies of a pipeline (default pipelines/edge.yaml) are run with `snf run -t`
(a subprocess each) over the same captures: one where every function has
`processing_guarantee: at_least_once`, one where every function has
`exactly_once` (the default: a journal entry with before-images per event, commits
only up to a settled point, lineage headers deduplicated downstream). The modes
alternate, their order flipped every repeat, so a drift of the machine's load
hits both alike.

Per run: processing pkt/s as `snf run` reports it (first packet published to the
last one accounted for at the sink, start-up excluded), the wall time with
start-up, and the egress count (the same in both modes, or the comparison is moot).
Default captures: the real ones in ../shared/traffic (*.pcap), looped. edge's
firewall drops nearly all of them (13 of 1,305 reach nat), so that measures fw
alone; `--captures pipelines/captures/edge.pcapng` loads the whole chain.

Usage: python bench/guarantee_cost.py [--brokers B] [--pipeline P] [--captures C ...]
                                      [--loop 20] [--repeats 3] [--quick]
                                      [--out bench/results/guarantee.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from snf.kafka import cluster

ROOT = Path(__file__).resolve().parents[1]
TRAFFIC = ROOT.parent / "shared" / "traffic"
MODES = ("at_least_once", "exactly_once")
# The title of `snf run`'s summary table (its --json has no processing time).
SUMMARY = re.compile(
    r"(\d+) packets in ([\d.]+)s \(([\d,]+) pkt/s\), ([\d.]+)s with start-up", re.S
)


def default_captures() -> list[Path]:
    # Only the plain captures: the sealed evaluation set is not ours to read.
    return [p for p in sorted(TRAFFIC.glob("*.pcap")) if "sealed" not in p.name]


def pipeline_copy(src: Path, mode: str, tmp: Path) -> Path:
    spec = yaml.safe_load(src.read_text())
    for fn in spec["functions"]:
        fn["processing_guarantee"] = mode
    path = tmp / f"{src.stem}-{mode}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_once(
    pipeline: Path, captures: list[Path], loop: int, brokers: str, tmp: Path
) -> dict[str, Any]:
    out = tmp / "run.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "snf", "run", str(pipeline), *map(str, captures)]
    cmd += ["-t", "-l", str(loop), "--brokers", brokers, "--json", str(out), "--no-progress"]
    env = os.environ | {"COLUMNS": "250"}  # rich wraps the summary's title at 80 otherwise
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    text = " ".join((proc.stdout + proc.stderr).split())
    m = SUMMARY.search(text)
    if proc.returncode or m is None or not out.exists():
        return {"error": f"exit {proc.returncode}: {text[-600:]}"}
    summary = json.loads(out.read_text())
    packets, seconds = int(m[1]), float(m[2])
    return {
        "packets": packets,
        "processing_s": seconds,
        "pps": round(packets / seconds),
        "with_startup_s": float(m[4]),
        "egress": summary.get("egress"),
        "duplicates_at_sink": summary.get("duplicates"),
        "functions_in": {fn: v["in"] for fn, v in summary.get("functions", {}).items()},
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in MODES:
        pps = [r["pps"] for r in runs if r["mode"] == mode and "pps" in r]
        out[mode] = {
            "runs": len(pps),
            "median_pps": round(statistics.median(pps)) if pps else None,
            "min_pps": min(pps, default=None),
            "max_pps": max(pps, default=None),
        }
    lo, eo = out["at_least_once"]["median_pps"], out["exactly_once"]["median_pps"]
    if lo and eo:
        out["ratio_exactly_over_at_least"] = round(eo / lo, 3)
        out["cost_pct"] = round(100 * (1 - eo / lo), 1)  # throughput given up for exactly-once
    egress = {r.get("egress") for r in runs if "egress" in r}
    out["egress_same_in_all_runs"] = len(egress) == 1
    return out


def show(console: Console, runs: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    table = Table(title="processing_guarantee: throughput per run")
    for name in ("#", "mode", "packets", "s", "pkt/s", "with start-up", "egress"):
        table.add_column(name, justify="left" if name == "mode" else "right")
    for i, r in enumerate(runs, 1):
        if "error" in r:
            table.add_row(str(i), r["mode"], "[red]error[/]", "", "", "", "")
            continue
        table.add_row(
            str(i),
            r["mode"],
            str(r["packets"]),
            f"{r['processing_s']:.2f}",
            f"{r['pps']:,}",
            f"{r['with_startup_s']:.1f}s",
            str(r["egress"]),
        )
    console.print(table)
    for mode in MODES:
        console.print(f"{mode}: median {summary[mode]['median_pps'] or 0:,} pkt/s")
    if "cost_pct" in summary:
        console.print(
            f"exactly_once / at_least_once = {summary['ratio_exactly_over_at_least']}"
            f" (cost {summary['cost_pct']}%)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", default=None)
    ap.add_argument("--pipeline", type=Path, default=ROOT / "pipelines" / "edge.yaml")
    ap.add_argument("--captures", type=Path, nargs="+", default=None)
    ap.add_argument("--loop", type=int, default=20, help="replay the captures N times")
    ap.add_argument("--repeats", type=int, default=3, help="runs per mode")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 repeat, -l 1")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "guarantee.json")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.loop = 1, 1
    brokers = cluster.resolve_brokers(args.brokers) or cluster.up().bootstrap
    captures = args.captures or default_captures()
    tmp = Path(tempfile.mkdtemp(prefix="snf-bench-guarantee-"))
    pipelines = {mode: pipeline_copy(args.pipeline, mode, tmp) for mode in MODES}
    order = [m for r in range(args.repeats) for m in (MODES if r % 2 == 0 else MODES[::-1])]
    report: dict[str, Any] = {
        "benchmark": "snf run -t throughput, at_least_once vs exactly_once on every function",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        },
        "brokers": brokers,
        "pipeline": str(args.pipeline),
        "captures": [p.name for p in captures],
        "loop": args.loop,
        "runs": [],
    }
    console = Console(stderr=True)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    started = time.perf_counter()
    try:
        with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("runs", total=len(order))
            for i, mode in enumerate(order):
                progress.update(task, description=mode)
                row = {"mode": mode, "repeat": i // len(MODES)}
                row |= run_once(pipelines[mode], captures, args.loop, brokers, tmp)
                report["runs"].append(row)
                msg = f"{mode}: " + (f"{row['pps']:,} pkt/s" if "pps" in row else row["error"])
                progress.console.print(msg, highlight=False)
                progress.advance(task)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report["summary"] = summarize(report["runs"])
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["seconds"] = round(time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    show(console, report["runs"], report["summary"])
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
