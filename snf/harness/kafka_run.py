"""The Kafka half of a one-shot run (`snf run` without --local).

Deploy the pipeline as a private run, replay its captures to ingress while a
sink thread reads every terminal, wait for every end marker, account for
every packet, tear down what the run started. snf.harness.oneshot imports
this module only for a Kafka run, so `--local` never loads a Kafka client.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from snf.egress.collector import Collector
from snf.egress.sink import KafkaSink
from snf.errors import SnfError
from snf.harness.run_options import RunError, RunOptions, RunResult, check_accounting
from snf.ingress.publisher import BatchPublisher
from snf.ingress.replay import ReplaySummary, replay
from snf.kafka import cluster
from snf.ops import deployment_dir as dp
from snf.ops.deploy import deploy, undeploy, wait_assigned
from snf.ops.worker_process import log_tail
from snf.packet.batch import PacketBatch
from snf.pipeline.model import Pipeline
from snf.pipeline.routing import plan_pipeline
from snf.wire import EndMarker

__all__ = ["crashing", "run_kafka"]

log = logging.getLogger("snf.harness.kafka_run")


def _run_name(base: str) -> str:
    return f"{base[:40]}-r{secrets.token_hex(3)}"


def run_kafka(
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
        collector = opts.collector if opts.collector is not None else Collector()
        summary = _publish_and_collect(run, brokers, captures, collector, opts, console, rundir)
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
    run: Pipeline,
    brokers: str,
    captures: Sequence[Path],
    opts: RunOptions,
    console: Console,
    collector: Collector,
) -> ReplaySummary:
    """Replay the captures to the run's ingress, then end every partition. With
    heads after ingress, the collector keeps the whole packets it will join
    heads with: this process has them, no need to read ingress back."""
    publisher = BatchPublisher(brokers, run.ingress_topic, session=run.name)
    keyers = plan_pipeline(run).ingress_hop.keyers  # how ingress is partitioned
    publish: Callable[[int, PacketBatch], None] = publisher
    if run.spec.ship == "heads":
        publish = _keeping(publisher, collector)
    if opts.on_published:
        publish = _counting(publish, opts.on_published)
    try:
        summary = replay(captures, run.partitions, publish, opts.replay, console, keyers=keyers)
        publisher.send_end_markers(EndMarker(run.name, summary.last_ts_ns), run.partitions)
    finally:
        publisher.close()
    return summary


def _publish_and_collect(
    run: Pipeline,
    brokers: str,
    captures: Sequence[Path],
    collector: Collector,
    opts: RunOptions,
    console: Console,
    rundir: Path,
) -> ReplaySummary:
    """Replay while a sink thread reads the terminals, so processing overlaps the
    replay as it does for a deployed pipeline; then wait for every end marker."""
    sink = KafkaSink.of(brokers, run, wholes=False)  # the copies are this process's
    publishing = threading.Event()
    publishing.set()
    failure: list[BaseException] = []
    complete = threading.Event()

    def read() -> None:
        try:
            if _drain(sink, collector, run.name, opts.timeout, publishing, rundir):
                complete.set()
        except BaseException as exc:  # re-raised by the main thread
            failure.append(exc)

    reader = threading.Thread(target=read, name="snf-sink", daemon=True)
    reader.start()
    try:
        summary = _publish(run, brokers, captures, opts, console, collector)
    finally:
        publishing.clear()
        _wait_for(reader, collector, opts, console)
        sink.close()
    if failure:
        raise failure[0]
    if not complete.is_set():
        raise RunError(
            f"{collector.total} of {summary.packets} packets accounted for, and the "
            f"end of input did not reach {', '.join(sink.unended(run.name))} "
            f"after {opts.timeout:.0f}s without progress; logs in {rundir}"
        )
    return summary


def _drain(
    sink: KafkaSink,
    collector: Collector,
    end_id: str,
    timeout: float,
    publishing: threading.Event,
    rundir: Path,
) -> bool:
    """Poll until the end `end_id` is in everywhere; False after `timeout` seconds
    without news once publishing is over (a paced replay may be quiet for long)."""
    last_news = time.monotonic()
    while not sink.ended(end_id):
        if sink.poll(collector) or publishing.is_set():
            last_news = time.monotonic()
        elif time.monotonic() - last_news > timeout:
            return False
        crashing(rundir)
    return True


def _wait_for(
    reader: threading.Thread, collector: Collector, opts: RunOptions, console: Console
) -> None:
    """Show the sink's progress until its thread is done."""
    progress = Progress(
        TextColumn("sink  "),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("packets accounted for"),
        TimeElapsedColumn(),
        console=console,
        disable=not opts.replay.progress,
    )
    with progress:
        task = progress.add_task("sink", total=None)
        while reader.is_alive():
            reader.join(0.1)
            progress.update(task, completed=collector.total)


def _keeping(
    publish: Callable[[int, PacketBatch], None], collector: Collector
) -> Callable[[int, PacketBatch], None]:
    """`publish`, keeping each batch's whole packets in the collector."""

    def kept(partition: int, batch: PacketBatch) -> None:
        collector.add_payloads(batch)
        publish(partition, batch)

    return kept


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
