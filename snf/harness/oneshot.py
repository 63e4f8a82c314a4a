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
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from snf.egress.collector import Collector
from snf.egress.sink import KafkaSink
from snf.errors import SnfError
from snf.ingress.publisher import BatchPublisher
from snf.ingress.replay import ReplayOptions, ReplaySummary, check_captures, replay
from snf.kafka import cluster
from snf.ops import deployment_dir as dp
from snf.ops.deploy import apply_topics, deploy, plan, undeploy, wait_assigned
from snf.ops.worker_process import log_tail
from snf.packet.batch import PacketBatch
from snf.pipeline.loader import load_pipeline
from snf.pipeline.model import EGRESS, Pipeline
from snf.pipeline.routing import plan_pipeline
from snf.runtime.local import LocalPipeline
from snf.wire import EndMarker

__all__ = [
    "RunError",
    "RunOptions",
    "RunResult",
    "create_topics",
    "run_pipeline",
    "summary_table",
]

log = logging.getLogger("snf.harness.oneshot")


class RunError(SnfError):
    """A run that could not account for every packet, or whose workers failed."""


@dataclass
class RunOptions:
    out: Path | None = None
    events: Path | None = None
    local: bool = False
    brokers: str | None = None
    replay: ReplayOptions = field(default_factory=ReplayOptions)
    timeout: float = 60.0  # give up after this long without a new packet at the sink
    keep: bool = False  # keep topics and the run directory
    rundir: Path | None = None
    loglevel: str = "info"
    # Hooks for `snf chaos` (snf.harness.chaos). The sink fills `collector` when given, so the
    # caller still holds what arrived when the run fails (lost packets are a verdict
    # there, not only an error); `on_published(n)` is called after each ingress batch
    # is handed to the producer, with the packets published so far (faults fire at a
    # fraction of the capture).
    collector: Collector | None = None
    on_published: Callable[[int], None] | None = None


@dataclass
class RunResult:
    pipeline: Pipeline
    replay: ReplaySummary
    collector: Collector
    seconds: float
    mode: str
    processing_seconds: float = 0.0  # from the first packet sent to the last accounted for
    # function -> port -> packets, when known exactly (--local counts in the engines)
    port_totals: dict[str, dict[str, int]] | None = None

    @property
    def processing_pps(self) -> float:
        return self.replay.packets / self.processing_seconds if self.processing_seconds else 0.0


def _run_name(base: str) -> str:
    return f"{base[:40]}-r{secrets.token_hex(3)}"


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
            captures, pipeline.partitions, local, opts.replay, console, keyers=hop.keyers
        )
        local.end_of_input(pipeline.name, summary.last_ts_ns)
        elapsed = time.perf_counter() - started
        result = RunResult(
            pipeline, summary, local.collector, elapsed, "local", elapsed, local.port_totals()
        )
    else:
        result = _run_kafka(pipeline_path, pipeline, captures, opts, console, started)
    _write_outputs(result, opts, console)
    return result


def _run_kafka(
    pipeline_path: Path,
    pipeline: Pipeline,
    captures: Sequence[Path],
    opts: RunOptions,
    console: Console,
    started: float,
) -> RunResult:
    brokers, started_cluster = _brokers(opts, console)
    run = pipeline.renamed(_run_name(pipeline.name), private=True)
    rundir = opts.rundir or Path(tempfile.mkdtemp(prefix=f"snf-{run.name}-"))
    deployed = False
    succeeded = False
    try:
        # A run is a deployment of its own: same topics, supervisor and workers.
        deploy(pipeline_path, brokers, name=run.name, private=True, directory=rundir, wait=None)
        deployed = True
        n = sum(pf.instances for pf in run.functions)
        console.print(f"run [bold]{run.name}[/] on {brokers}: {n} worker(s), logs in {rundir}")
        wait_assigned(rundir, run, 90.0)
        processing_started = time.perf_counter()
        summary = _publish(run, brokers, captures, opts, console)
        collector = opts.collector if opts.collector is not None else Collector()
        _collect(run, brokers, summary, collector, opts, console, rundir)
        check_accounting(run, summary.packets, collector)
        done = time.perf_counter()
        succeeded = True
        return RunResult(
            run, summary, collector, done - started, "kafka", done - processing_started
        )
    finally:
        if deployed:
            try:
                undeploy(rundir, delete_topics=not opts.keep, keep_directory=True)
            except SnfError as exc:
                log.warning("could not delete the run's topics: %s", exc)
        if started_cluster and not opts.keep:
            cluster.down()
        if succeeded and opts.rundir is None and not opts.keep:
            shutil.rmtree(rundir, ignore_errors=True)  # keep logs only when something failed


def _brokers(opts: RunOptions, console: Console) -> tuple[str, bool]:
    """The brokers to use, and whether this run started them (a local broker)."""
    brokers = cluster.resolve_brokers(opts.brokers)
    if brokers is not None and cluster.is_reachable(brokers):
        return brokers, False
    if opts.brokers:
        raise RunError(f"no Kafka broker answers at {opts.brokers}")
    console.print("[bold]starting a local Kafka broker[/] (snf kafka up)")
    return cluster.up().bootstrap, True


def _publish(
    run: Pipeline, brokers: str, captures: Sequence[Path], opts: RunOptions, console: Console
) -> ReplaySummary:
    """Replay the captures to the run's ingress, then end every partition."""
    publisher = BatchPublisher(brokers, run.ingress_topic, session=run.name)
    keyers = plan_pipeline(run).ingress_hop.keyers  # how ingress is partitioned
    publish = _counting(publisher, opts.on_published) if opts.on_published else publisher
    try:
        summary = replay(captures, run.partitions, publish, opts.replay, console, keyers=keyers)
        publisher.send_end_markers(EndMarker(run.name, summary.last_ts_ns), run.partitions)
    finally:
        publisher.close()
    return summary


def _collect(
    run: Pipeline,
    brokers: str,
    summary: ReplaySummary,
    collector: Collector,
    opts: RunOptions,
    console: Console,
    rundir: Path,
) -> None:
    """Read the terminals until every end marker is in (RunError if that stalls)."""
    sink = KafkaSink(brokers, run.sink_topics(), run.terminal_ends())
    progress = Progress(
        TextColumn("sink  "),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("packets accounted for"),
        TimeElapsedColumn(),
        console=console,
        disable=not opts.replay.progress,
    )
    try:
        with progress:
            task = progress.add_task("sink", total=summary.packets)
            complete = sink.collect(
                collector,
                opts.timeout,
                end_id=run.name,
                check=lambda: crashing(rundir),
                on_progress=lambda n: progress.update(task, completed=n),
            )
    finally:
        sink.close()
    if not complete:
        raise RunError(
            f"{collector.total} of {summary.packets} packets accounted for, and the "
            f"end of input did not reach {', '.join(sink.unended(run.name))} "
            f"after {opts.timeout:.0f}s without progress; logs in {rundir}"
        )


def _counting(
    publish: Callable[[int, PacketBatch], None], on_published: Callable[[int], None]
) -> Callable[[int, PacketBatch], None]:
    """`publish`, then report the running count of packets published."""
    sent = 0

    def counted(partition: int, batch: PacketBatch) -> None:
        nonlocal sent
        publish(partition, batch)
        sent += len(batch)
        on_published(sent)

    return counted


def crashing(rundir: Path, restarts: int = 3) -> None:
    """Raise RunError, with its log's tail, for a worker the supervisor keeps restarting."""
    state = dp.read_state(rundir) or {}
    for name, fn in (state.get("functions") or {}).items():
        for inst in fn.get("instances", []):
            if inst.get("restarts", 0) >= restarts:
                log_path = dp.workers_dir(rundir) / f"{name}-{inst['instance']}.log"
                raise RunError(
                    f"worker {name}/{inst['instance']} crashed {inst['restarts']} times "
                    f"(last exit {inst.get('last_exit')}):\n{log_tail(log_path)}"
                )


def check_accounting(pipeline: Pipeline, sent: int, collector: Collector) -> None:
    """Every packet came out somewhere (or was discarded), and only once unless
    the wiring fans out."""
    graph = pipeline.graph
    if collector.total > sent or (collector.total < sent and not graph.discards):
        raise RunError(f"{collector.total} distinct packets came out, {sent} went in")
    if collector.conflicts and not graph.fan_out:
        raise RunError(f"{collector.conflicts} packets came out of two different ports")


def create_topics(brokers: str, pipeline: Pipeline) -> list[str]:
    """Every topic of a pipeline, changelogs included (snf.ops.deploy.apply_topics)."""
    return apply_topics(plan(pipeline, brokers))


def _write_outputs(result: RunResult, opts: RunOptions, console: Console) -> None:
    if opts.out:
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
