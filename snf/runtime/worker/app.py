"""The Faust wiring of one function's worker: the only module that builds Faust objects.

One Faust app per (pipeline, function). Its id is the consumer group
(snf.pipeline.names.group_id), its source the function's input topic, and all
its state one Faust Table stored in RocksDB (rocksdict) and backed by the
changelog "<app id>-state-changelog". A table write goes to the changelog
partition of the event being processed, which is the partition the batch came
from: that is why every input is partitioned by the function's key
(docs/ARCHITECTURE.md, "Partitioning across functions").

What happens to a record is the Processor's; this module only connects it:
the agent hands each record to it (after CatchUp filled any gap), timers run
CatchUp, the Committer and the stats, and the Lifecycle takes over SIGTERM,
SIGCONT and rebalances. Private Faust APIs are used only through faust_compat.
With a health port, the same server answers probes and Prometheus (/metrics).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust

from snf.core.tables import STATE_TABLE
from snf.guarantee.control_auth import key_from_env
from snf.kafka.admin import cluster_replication
from snf.kafka.security import WorkerAuth, worker_auth
from snf.kafka.side_reader import SideReader
from snf.pipeline.model import Pipeline, PipelineFunction
from snf.pipeline.routing import plan_pipeline
from snf.runtime.worker import faust_compat
from snf.runtime.worker.attempts import ATTEMPTS_FILE
from snf.runtime.worker.catch_up import CatchUp
from snf.runtime.worker.commit import COMMIT_INTERVAL, Committer
from snf.runtime.worker.coordination import Coordination
from snf.runtime.worker.faust_table import FaustStateTable
from snf.runtime.worker.files import StatsWriter, WorkerFiles
from snf.runtime.worker.health import start_health_server
from snf.runtime.worker.lifecycle import Lifecycle, die, prepare_datadir
from snf.runtime.worker.metrics import WorkerMetrics, instance_name
from snf.runtime.worker.processor import InputRecord, Processor

__all__ = ["broker_credentials", "create_app", "run_worker"]

log = logging.getLogger("snf.worker")
FETCH_MAX_WAIT_MS = 200  # Faust's 1500 delayed every step of a takeover (faust_compat)
CATCH_UP_INTERVAL = 0.5
STATS_INTERVAL = 2.0  # seconds between stats.json snapshots (snf status reads them)
REPORT_INTERVAL = 10.0  # seconds between counter lines in the log


@dataclass
class WorkerParts:
    """The named parts of one worker, connected to its Faust app by create_app."""

    coord: Coordination
    files: WorkerFiles
    processor: Processor
    catch_up: CatchUp
    committer: Committer
    lifecycle: Lifecycle
    stats: StatsWriter
    state: FaustStateTable


def create_app(
    pipeline: Pipeline,
    function_name: str,
    brokers: str,
    datadir: Path,
    *,
    health_port: int | None = None,
    health_host: str = "0.0.0.0",
) -> faust.App:
    faust_compat.check_versions()
    faust_compat.shorten_fetch_wait(FETCH_MAX_WAIT_MS)
    fn = pipeline.function(function_name)
    app = _faust_app(fn, brokers, datadir)
    parts = _parts(app, pipeline, fn, brokers, datadir)
    _connect(app, parts)
    if health_port is not None:
        _serve_health(app, parts, health_port, health_host)
    return app


def _faust_app(fn: PipelineFunction, brokers: str, datadir: Path) -> faust.App:
    return faust.App(
        fn.group_id,
        broker=",".join(f"kafka://{b}" for b in brokers.split(",")),
        store="rocksdb://",
        datadir=str(datadir),
        topic_partitions=fn.partitions,
        # Faust creates only its assignor topic; snf created the rest (snf.ops.deploy).
        topic_replication_factor=fn.replication or cluster_replication(brokers),
        table_standby_replicas=fn.standby_replicas,
        processing_guarantee="at_least_once",  # exactly_once is snf.guarantee's
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        # A killed worker's partitions move once its session expires: keep that short.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=0.5,  # a survivor learns of a rebalance sooner
        broker_commit_interval=COMMIT_INTERVAL,
        producer_max_request_size=4 * 1024 * 1024,
        broker_credentials=broker_credentials(worker_auth()),
    )


def broker_credentials(auth: WorkerAuth | None) -> faust.types.auth.CredentialsT | None:
    """Faust's credentials for the process's Kafka settings (snf.kafka.security)."""
    if auth is None:
        return None
    if auth.protocol == "SSL":
        assert auth.ssl_context is not None
        return faust.SSLCredentials(auth.ssl_context)
    # SASL_SSL when given a context, SASL_PLAINTEXT without.
    return faust.SASLCredentials(
        username=auth.username,
        password=auth.password,
        mechanism=auth.mechanism,
        ssl_context=auth.ssl_context,
    )


def _parts(
    app: faust.App, pipeline: Pipeline, fn: PipelineFunction, brokers: str, datadir: Path
) -> WorkerParts:
    """The state table, the output topics, and the parts that use them."""
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    outputs = {
        r.topic: app.topic(r.topic, partitions=r.partitions, **raw)
        for routes in fn.routes.values()
        for r in routes
        if r.topic is not None
    }
    outputs[fn.dlq_topic] = app.topic(fn.dlq_topic, partitions=fn.partitions, **raw)
    # All tables of the core live in one Faust table, so one changelog partition
    # per input partition holds every state write and journal entry, in order.
    table = app.Table(STATE_TABLE, partitions=fn.partitions, key_type=bytes, default=None)

    async def send(topic: str, value: bytes, partition: int, headers: Any) -> asyncio.Future:
        # force: now. Faust would otherwise attach the message to the event and
        # publish it only at the next offset commit (up to a second later).
        return await outputs[topic].send(
            value=value, partition=partition, headers=headers, force=True
        )

    coord, files = Coordination(), WorkerFiles(datadir)
    metrics = WorkerMetrics(fn.pipeline, fn.name, instance_name())
    state = FaustStateTable(table)
    key = control_key()
    processor = Processor(
        fn,
        plan_pipeline(pipeline),
        state,
        send,
        metrics,
        control_key=key,
        attempts_path=datadir / ATTEMPTS_FILE,
        durable=lambda: app.producer.flush(),  # changelog writes and outputs, acknowledged
    )
    metrics.lag = lambda: _lag(app, processor)
    catch_up = CatchUp(
        processor,
        SideReader(brokers),
        coord,
        committed=lambda tp: faust_compat.committed_offset(app.consumer, tp),
        assignment=lambda: app.consumer.assignment(),
        in_event=faust_compat.standing_in_for_event,
    )
    committer = Committer(
        processor,
        coord,
        consumer=lambda: app.consumer,
        producer=lambda: app.producer,
        in_event=faust_compat.standing_in_for_event,
    )
    lifecycle = Lifecycle(app, processor, committer, coord, files)
    stats = StatsWriter(files, processor.counters)
    return WorkerParts(coord, files, processor, catch_up, committer, lifecycle, stats, state)


def _connect(app: faust.App, w: WorkerParts) -> None:
    """The agent, the timers, the rebalance signals and the lifecycle tasks."""
    fn, coord = w.processor.fn, w.coord
    source = app.topic(
        fn.input_topic, partitions=fn.partitions, key_serializer="raw", value_serializer="raw"
    )

    @app.agent(source, name=f"{fn.name}-agent")
    async def process(stream: Any) -> None:
        async for event in stream.events():
            coord.busy.set()
            message = event.message
            async with coord.lock:
                try:
                    await w.catch_up.before(message.tp, message.offset)
                    record = InputRecord(
                        message.partition,
                        message.offset,
                        event.value,
                        message.headers,
                        message.timestamp,  # the producer's send time (CreateTime), in s
                    )
                    await w.processor.handle(record)
                except Exception:
                    # Core errors never get here (the engine turns them into drops):
                    # this is the shell failing (state, producer, a gap it cannot read).
                    die(f"{fn.name}: unrecoverable error at offset {message.offset}")
            event.ack()  # now, not when the next event arrives: a drain commits it
            coord.busy.clear()

    @app.timer(CATCH_UP_INTERVAL)
    async def read_stalled() -> None:
        if coord.draining.is_set() or app.rebalancing:
            return
        try:
            await w.catch_up.run_once()
        except Exception:
            die(f"{fn.name}: cannot catch up")

    @app.timer(COMMIT_INTERVAL)
    async def periodic_commit() -> None:
        # Faust commits only partitions with acks newer than its last commit, and
        # records read directly (catch_up) are never Faust-acked.
        if not coord.draining.is_set() and not app.rebalancing:
            await w.committer.commit(app.consumer.assignment())

    @app.on_partitions_revoked.connect
    async def commit_on_revoke(sender: Any, revoked: Any, **_: Any) -> None:
        # Sent after Faust waited for the agent and flushed the producer. No
        # checkpoint: the tables of revoked partitions are being closed.
        await w.committer.commit(revoked, with_checkpoint=False)
        w.state.forget()  # what comes back may have been written by another owner

    @app.on_rebalance_complete.connect
    async def record_assignment(sender: Any, **_: Any) -> None:
        w.state.forget()  # recovery and standby promotion wrote behind the cache
        w.lifecycle.record_assignment()

    app.task(w.lifecycle.take_over_stops)
    app.task(w.lifecycle.fence_on_stall)

    @app.timer(REPORT_INTERVAL)
    async def report() -> None:
        if w.processor.counters:
            log.info("%s counters %s", fn.name, dict(w.processor.counters))

    @app.timer(STATS_INTERVAL)
    async def write_stats() -> None:
        w.stats.write(assigned=w.lifecycle.assigned())


def control_key() -> bytes | None:
    key = key_from_env()
    if key is None:
        log.warning(
            "no SNF_CONTROL_KEY: lineage and end markers are checked for shape and"
            " origin only, not authenticated (docs/FAULT-TOLERANCE.md)"
        )
    return key


def _lag(app: faust.App, processor: Processor) -> dict[int, int]:
    """Per input partition, messages behind the high watermark of the consumer's
    last fetch: known in memory, no request (`snf status` asks the broker)."""
    consumer, topic = app.consumer, processor.fn.input_topic
    lag = {}
    for tp in consumer.assignment():
        high = consumer.highwater(tp) if tp.topic == topic else None
        done = processor.done.get(tp.partition)
        at = done + 1 if done is not None else faust_compat.committed_offset(consumer, tp)
        if high is not None and at is not None:
            lag[tp.partition] = max(0, high - at)
    return lag


def _serve_health(app: faust.App, w: WorkerParts, port: int, host: str) -> None:
    @app.task
    async def serve_health() -> None:
        # Ready once the first rebalance gave this worker its partitions.
        def ready() -> bool:
            return w.files.assignment_path.exists() and not app.rebalancing

        registry = w.processor.metrics.registry
        server = await start_health_server(port, ready, host, registry=registry)
        app.snf_health = server  # kept alive
        w.stats.health_port = server.sockets[0].getsockname()[1]  # port 0: the one picked


def run_worker(
    pipeline: Pipeline,
    function_name: str,
    brokers: str,
    datadir: Path,
    *,
    loglevel: str = "info",
    health_port: int | None = None,
    health_host: str = "0.0.0.0",
) -> None:
    """Run one worker until SIGTERM/SIGINT (blocks)."""
    prepare_datadir(datadir)
    app = create_app(
        pipeline, function_name, brokers, datadir, health_port=health_port, health_host=health_host
    )
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
