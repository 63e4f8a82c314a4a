"""The Faust shell: the only module in snf that imports Faust.

One Faust app per (pipeline, function). Its id is the consumer group
(snf.names.group_id), its source is the function's input topic, and each
state table of the core is a Faust Table stored in RocksDB (rocksdict) and
backed by the changelog topic "<app id>-<table>-changelog". A table write
goes to the changelog partition of the event being processed, which is the
partition the batch came from: that is why every input is partitioned by
the function's key (docs/ARCHITECTURE.md, "Partitioning across functions").
Links to other functions go through that function's StageRouter
(snf.routing), which keeps the batch on its partition unless the next
function's key moves some packets; terminal ports stay on the event's
partition. The worker writes assignment.json and stats.json into its
datadir for the supervisor and `snf status`, and with --health-port serves
/livez and /readyz for container probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import faust
from faust.streams import current_event

from snf import wire
from snf.engine import FunctionEngine, StageOutput
from snf.pipeline import Pipeline
from snf.routing import deliveries, plan_pipeline
from snf.runtime.health import start_health_server
from snf.runtime.stats import STATS_FILE, WorkerStats
from snf.state import BatchState

__all__ = ["FaustTableStore", "create_app", "run_worker"]

log = logging.getLogger("snf.worker")
ASSIGNMENT_FILE = "assignment.json"
STATS_INTERVAL = 2.0  # seconds between stats.json snapshots (snf status reads them)


class FaustTableStore:
    """snf.state.Store over a Faust table (only valid inside stream iteration)."""

    __slots__ = ("table",)

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, key: bytes) -> Any | None:
        return self.table.get(key)

    def set(self, key: bytes, value: Any) -> None:
        self.table[key] = value

    def delete(self, key: bytes) -> None:
        with contextlib.suppress(KeyError):
            del self.table[key]

    def items(self) -> Any:
        """The entries of the current event's partition only (the flush marker's)."""
        event = current_event()
        assert event is not None, "items() only runs while processing an event"
        store = self.table.data  # faust.stores.rocksdb.Store
        db = store._db_for_partition(event.message.partition)
        for key, value in store._visible_items(db):
            yield store._decode_key(key), store._decode_value(value)


def create_app(
    pipeline: Pipeline,
    function_name: str,
    brokers: str,
    datadir: Path,
    *,
    health_port: int | None = None,
) -> faust.App:
    pf = pipeline.function(function_name)
    n = pf.partitions
    app = faust.App(
        pf.group_id,
        broker=",".join(f"kafka://{b}" for b in brokers.split(",")),
        store="rocksdb://",
        datadir=str(datadir),
        topic_partitions=n,
        topic_replication_factor=pf.replication,
        table_standby_replicas=pf.standby_replicas,
        processing_guarantee=pf.processing_guarantee,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        # A killed worker's partitions move once its session expires: keep that short.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=1.0,
        producer_max_request_size=4 * 1024 * 1024,
    )
    source = app.topic(pf.input_topic, key_serializer="raw", value_serializer="raw", partitions=n)
    outputs = {
        r.topic: app.topic(
            r.topic, key_serializer="raw", value_serializer="raw", partitions=r.partitions
        )
        for routes in pf.routes.values()
        for r in routes
        if r.topic is not None
    }
    tables = {
        name: app.Table(name, partitions=n, key_type=bytes, default=None)
        for name in pf.state_tables
    }
    plan = plan_pipeline(pipeline)
    engine = FunctionEngine(plan.cores[pf.name])
    routers = plan.routers(pf.name)
    expected = plan.flush_expected(pf.name)
    stores = {name: FaustTableStore(t) for name, t in tables.items()}
    stats = WorkerStats(datadir / STATS_FILE, engine.counters)

    async def send_records(out: StageOutput, partition: int, end: str = "") -> None:
        ports = pf.cls.record_ports if end else out.records
        origin = f"{pf.name}/{partition}" if end else ""
        for port in ports:
            for route in pf.routes[port]:
                if route.topic is None:
                    continue
                blocks = wire.encode_record_blocks(
                    out.records.get(port, []), end=end, origin=origin
                )
                for message in blocks:
                    await outputs[route.topic].send(
                        value=message, partition=partition % route.partitions
                    )

    async def on_flush(flush: wire.Flush, partition: int) -> None:
        # The topology, not the sender, knows how many origins feed this partition.
        flush = wire.Flush(flush.flush_id, flush.end_ts_ns, expected, flush.origin)
        out = engine.control(flush, partition, BatchState(stores))
        if out is None:
            return  # more markers to come from other upstream partitions
        await send_records(out, partition, end=flush.flush_id)
        # Pass the marker on, after this partition's packets, to every packet destination.
        marker = wire.encode_flush(
            wire.Flush(flush.flush_id, flush.end_ts_ns, 1, f"{pf.name}/{partition}")
        )
        for topic, targets in plan.marker_targets(pf.name, partition):
            for p in targets:
                await outputs[topic].send(value=marker, partition=p)

    async def on_event(msg: wire.PacketBatch | wire.Flush, partition: int) -> None:
        if isinstance(msg, wire.Flush):
            await on_flush(msg, partition)
            return
        out = engine.handle(msg, BatchState(stores))
        sent = 0
        for _port, route, p, batch in deliveries(out, partition, pf, routers):
            await outputs[route.topic].send(value=wire.encode(batch), partition=p)
            sent += len(batch)
        engine.counters["out"] += sent
        if out.records:
            await send_records(out, partition)

    busy = asyncio.Event()  # set while an event is being processed
    done: dict[int, int] = {}  # input partition -> last offset this process handled

    @app.agent(source, name=f"{pf.name}-agent")
    async def process(stream: Any) -> None:
        async for event in stream.events():
            busy.set()
            partition, offset = event.message.partition, event.message.offset
            if offset <= done.get(partition, -1):
                # Delivered again to the process that handled it: after a rebalance
                # Faust seeks kept partitions back to the last commit, and a fetch
                # in flight across that seek delivers twice. Handling it again
                # would apply its state effects twice and re-emit its outputs.
                engine.counters["redelivered"] += 1
                event.ack()
                busy.clear()
                continue
            try:
                msg = wire.decode_any(event.value)
                if isinstance(msg, wire.RecordBlock):
                    raise wire.WireError("a records message on a packet topic")
            except wire.WireError as exc:
                engine.counters["bad_batch"] += 1
                log.error(
                    "skipping undecodable message at %s/%d@%d: %s",
                    event.message.topic,
                    partition,
                    event.message.offset,
                    exc,
                )
                continue
            try:
                await on_event(msg, partition)
            except Exception:
                # Core errors never get here (the engine turns them into drops):
                # this is the shell failing (state, producer). Die at once, as
                # crash-only software does: nothing is lost, since the offsets of
                # this event are not committed and the changelog holds the state,
                # so a restarted worker picks up exactly here.
                log.critical("%s: unrecoverable error; exiting", pf.name, exc_info=True)
                os._exit(70)  # EX_SOFTWARE; Faust would otherwise keep a dead agent
            # Acked now, not when the next event arrives: a drain commits it.
            done[partition] = offset
            event.ack()
            busy.clear()

    async def drain(timeout: float = 15.0) -> None:
        """A planned stop (scale-in, undeploy, rolling restart, pod eviction): finish
        the event in hand, take no other, commit, and only then leave the group.
        Faust's own stop commits only what was acked before it cancels the agent,
        so the successor would redo (and re-emit) the last events."""
        consumer = app.consumer
        consumer.stop_flow()
        app.flow_control.suspend()
        consumer.pause_partitions(consumer.assignment())
        deadline = time.monotonic() + timeout
        while busy.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await app.producer.flush()  # outputs reach Kafka before their input is committed
        await commit_handled(consumer.assignment())
        log.info("%s drained and committed; stopping", pf.name)

    async def commit_handled(tps: Any) -> None:
        """Commit, for `tps`, the offset after the last event this process handled.

        Faust's own commit goes by its ack records, which its revoke handler
        (faust-streaming 0.15.3) clears for the revoked partitions before it
        commits, and which a periodic commit in flight may predate: work done
        since the last periodic commit would be redone by the next owner (or by
        this process, which Faust seeks back after every rebalance).
        """
        consumer = app.consumer
        handled = {
            tp: done[tp.partition] + 1
            for tp in tps
            if tp.topic == pf.input_topic and tp.partition in done
        }
        if handled and await consumer._commit(handled):
            for tp, offset in handled.items():  # so Faust never commits an older offset
                if (consumer._committed_offset.get(tp) or -1) < offset:
                    consumer._committed_offset[tp] = offset

    @app.on_partitions_revoked.connect
    async def commit_on_revoke(sender: Any, revoked: Any, **_: Any) -> None:
        # Sent after Faust waited for the agent and flushed the producer.
        await commit_handled(revoked)

    @app.task
    async def graceful_stop() -> None:
        # Runs after Faust's worker installed its handlers, so this one wins.
        loop = asyncio.get_running_loop()

        async def stop() -> None:
            try:
                await drain()
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # then Faust's own shutdown

        loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(stop()))

    @app.on_rebalance_complete.connect
    async def record_assignment(sender: Any, **_: Any) -> None:
        # The supervisor reads this file to know the worker owns its partitions.
        mine = sorted(
            tp.partition for tp in app.consumer.assignment() if tp.topic == pf.input_topic
        )
        tmp = datadir / "assignment.json.tmp"
        tmp.write_text(json.dumps({"partitions": mine, "time": time.time()}))
        tmp.replace(datadir / ASSIGNMENT_FILE)
        for p in set(done) - set(mine):
            # Gone elsewhere: if it comes back, its new owner will have moved on.
            del done[p]
        log.info("%s assigned partitions %s", pf.name, mine)

    @app.timer(10.0)
    async def report() -> None:
        if engine.counters:
            log.info("%s counters %s", pf.name, dict(engine.counters))

    @app.timer(STATS_INTERVAL)
    async def write_stats() -> None:
        stats.write(
            assigned=sorted(
                tp.partition for tp in app.consumer.assignment() if tp.topic == pf.input_topic
            )
        )

    if health_port is not None:

        @app.task
        async def serve_health() -> None:
            # Ready once the first rebalance gave this worker its partitions.
            def ready() -> bool:
                return (datadir / ASSIGNMENT_FILE).exists() and not app.rebalancing

            app._snf_health = await start_health_server(health_port, ready)  # kept alive

    return app


def run_worker(
    pipeline: Pipeline,
    function_name: str,
    brokers: str,
    datadir: Path,
    *,
    loglevel: str = "info",
    health_port: int | None = None,
) -> None:
    """Run one worker until SIGTERM/SIGINT (blocks)."""
    datadir.mkdir(parents=True, exist_ok=True)
    (datadir / ASSIGNMENT_FILE).unlink(missing_ok=True)  # a restart is not ready yet
    app = create_app(pipeline, function_name, brokers, datadir, health_port=health_port)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
