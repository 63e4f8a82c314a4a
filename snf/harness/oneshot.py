"""`snf run`: the one-shot run of a pipeline over a capture.

Kafka mode: broker (started if none answers) -> topics -> worker processes ->
replay -> sink until every packet is accounted for (passed + dropped = sent)
-> results -> teardown of everything this run started. --local runs the
same cores in-process as the reference.

A run uses its own pipeline instance name (<pipeline>-r<hex>), so its topics,
groups and changelogs never meet those of another run or a deployed pipeline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from snf.harness.run_options import RunError, RunOptions, RunResult
from snf.ingress.replay import check_captures, replay
from snf.pipeline.loader import load_pipeline
from snf.pipeline.model import EGRESS, Pipeline
from snf.runtime.local import LocalPipeline

__all__ = [
    "RunError",
    "RunOptions",
    "RunResult",
    "create_topics",
    "run_pipeline",
    "summary_table",
]

log = logging.getLogger("snf.harness.oneshot")


def run_pipeline(
    pipeline_path: Path, captures: Sequence[Path], opts: RunOptions, console: Console | None = None
) -> RunResult:
    console = console or Console(stderr=True)
    pipeline = load_pipeline(pipeline_path)  # validates everything before anything starts
    captures = [Path(c) for c in captures]
    check_captures(captures)
    started = time.perf_counter()
    if opts.local:
        local = LocalPipeline(pipeline)
        hop = local.ingress_hop
        summary = replay(
            captures,
            pipeline.partitions,
            local,
            opts.replay,
            console,
            keyers=hop.keyers,
            keep_headers=True,
        )
        local.end_of_input(pipeline.name, summary.last_ts_ns)
        elapsed = time.perf_counter() - started
        result = RunResult(
            pipeline, summary, local.collector, elapsed, "local", elapsed, local.port_totals()
        )
    else:
        from snf.harness.kafka_run import run_kafka  # Kafka clients load only when needed

        result = run_kafka(pipeline_path, pipeline, captures, opts, console, started)
    _write_outputs(result, opts, console)
    return result


def create_topics(brokers: str, pipeline: Pipeline) -> list[str]:
    """Every topic of a pipeline, changelogs included (snf.ops.deploy.apply_topics)."""
    from snf.ops.deploy import apply_topics, plan

    return apply_topics(plan(pipeline, brokers))


def _write_outputs(result: RunResult, opts: RunOptions, console: Console) -> None:
    if opts.out:
        Path(opts.out).parent.mkdir(parents=True, exist_ok=True)  # as --events does
        n = result.collector.write_pcapng(opts.out)
        console.print(f"wrote {n} packets to {opts.out}")
    if opts.events:
        for path in result.collector.write_events(opts.events):
            console.print(f"wrote {path}")


def port_counts(result: RunResult) -> dict[str, tuple[int | None, dict[str, int | None]]]:
    """Per function: packets in and per packet port out (None where the sink
    cannot tell, e.g. a port whose only destinations are functions or discard
    next to another such port)."""
    pipeline, col = result.pipeline, result.collector
    terminals = pipeline.terminals()
    inputs: dict[str, int | None] = {pipeline.graph.entry: result.replay.packets}
    out: dict[str, tuple[int | None, dict[str, int | None]]] = {}
    for name in pipeline.graph.order:
        pf = pipeline.function(name)
        n_in = inputs.get(name)
        counts: dict[str, int | None] = {}
        if result.port_totals is not None:
            exact = result.port_totals[name]
            out[name] = (exact.get("in", 0), {p: exact.get(p, 0) for p in pf.cls.ports})
            continue
        for port in pf.cls.ports:
            counts[port] = None
            for r in pf.routes[port]:
                key = pf.terminal_key(port, r.dest)
                if key is not None and r.topic and len(terminals[r.topic]) == 1:
                    counts[port] = col.count(key)  # the topic's only writer
        unknown = [p for p, c in counts.items() if c is None]
        if len(unknown) == 1 and n_in is not None:
            counts[unknown[0]] = n_in - sum(c or 0 for c in counts.values())
        out[name] = (n_in, counts)
        for port, c in counts.items():
            for r in pf.routes[port]:
                if r.dest.kind == "function":
                    t = r.dest.target
                    prev = inputs.get(t, 0)
                    inputs[t] = None if c is None or prev is None else prev + c
    return out


def summary_table(result: RunResult) -> Table:
    """Per function: packets in, out per port (and where to), drop reasons, records."""
    col = result.collector
    s = result.replay
    table = Table(
        title=f"{result.pipeline.name} ({result.mode}): {s.packets} packets in "
        f"{result.processing_seconds:.2f}s ({result.processing_pps:,.0f} pkt/s), "
        f"{result.seconds:.1f}s with start-up"
    )
    for name in ("function", "in", "out", "reasons", "records"):
        table.add_column(name, justify="right" if name == "in" else "left")
    counts = port_counts(result)
    for pf in result.pipeline.ordered():
        n_in, by_port = counts[pf.name]
        outs, reasons, records = [], [], []
        for port in pf.cls.ports:
            dests = ",".join(str(r.dest) for r in pf.routes[port] if r.dest.kind != "port")
            n = by_port[port]
            arrow = f"→{dests}" if dests else ""
            outs.append(f"{port}{arrow} {'?' if n is None else n}")
            key = pf.terminal_key(port, pf.routes[port][0].dest)
            if port != "pass" and key is not None:
                for reason, k in sorted(col.reasons(key).items()):
                    reasons.append(f"{port}:{reason or '-'}={k}")
        for port in pf.cls.record_ports:
            key = pf.terminal_key(port, pf.routes[port][0].dest)
            n = len(col.records.get(key, {})) if key else 0
            records.append(f"{port} {n}")
        cells = ("\n".join(outs), "\n".join(reasons), "\n".join(records))
        table.add_row(pf.name, "?" if n_in is None else str(n_in), *cells)
    table.add_row("[bold]egress[/]", "", str(col.count(EGRESS)), "", "")
    return table
