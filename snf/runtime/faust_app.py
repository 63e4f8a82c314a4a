"""The Faust shell: the only module in snf that imports Faust.

One Faust app per (pipeline, function). Its id is the consumer group
(snf.names.group_id), its source is the function's input topic, and each
state table of the core is a Faust Table stored in RocksDB (rocksdict) and
backed by the changelog topic "<app id>-<table>-changelog". A table write
goes to the changelog partition of the event being processed, which is the
partition the batch came from: that is why every input is partitioned by
the function's key (docs/ARCHITECTURE.md, "Partitioning across functions").
The `pass` output goes through the stage's StageRouter (snf.routing), which
keeps the batch on its partition unless the next function's key moves some
packets; side ports and record ports stay on the event's partition.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import faust
from faust.streams import current_event

from snf import wire
from snf.engine import FunctionEngine, StageOutput
from snf.pipeline import Pipeline
from snf.routing import chain, deliveries, flush_expected, stage_router
from snf.state import BatchState

__all__ = ["FaustTableStore", "create_app", "run_worker"]

log = logging.getLogger("snf.worker")
ASSIGNMENT_FILE = "assignment.json"


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
    standby_replicas: int = 0,
    replication: int = 1,
    processing_guarantee: str = "at_least_once",
) -> faust.App:
    pf = pipeline.function(function_name)
    n = pipeline.partitions
    app = faust.App(
        pf.group_id,
        broker=",".join(f"kafka://{b}" for b in brokers.split(",")),
        store="rocksdb://",
        datadir=str(datadir),
        topic_partitions=n,
        topic_replication_factor=replication,
        table_standby_replicas=standby_replicas,
        processing_guarantee=processing_guarantee,
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
        port: app.topic(topic, key_serializer="raw", value_serializer="raw", partitions=n)
        for port, topic in pf.port_topics.items()
    }
    tables = {
        name: app.Table(name, partitions=n, key_type=bytes, default=None)
        for name in pf.state_tables
    }
    stage = pipeline.functions.index(pf)
    functions, hops = chain(pipeline)
    engine = FunctionEngine(functions[stage])
    router = stage_router(hops, stage, n)
    stores = {name: FaustTableStore(t) for name, t in tables.items()}

    async def send_records(out: StageOutput, partition: int, end: str = "") -> None:
        ports = pf.cls.record_ports if end else out.records
        for port in ports:
            for message in wire.encode_record_blocks(out.records.get(port, []), end=end):
                await outputs[port].send(value=message, partition=partition)

    async def on_flush(flush: wire.Flush, partition: int) -> None:
        out = engine.control(flush, partition, BatchState(stores))
        if out is None:
            return  # more markers to come from other upstream partitions
        await send_records(out, partition, end=flush.flush_id)
        if router is not None:  # pass the marker on, after this partition's packets
            forward = wire.Flush(flush.flush_id, flush.end_ts_ns, flush_expected(router.hop, n))
            targets = [partition] if forward.expected == 1 else range(n)
            for p in targets:
                await outputs["pass"].send(value=wire.encode_flush(forward), partition=p)

    async def on_event(msg: wire.PacketBatch | wire.Flush, partition: int) -> None:
        if isinstance(msg, wire.Flush):
            await on_flush(msg, partition)
            return
        out = engine.handle(msg, BatchState(stores))
        for port, p, batch in deliveries(out, partition, router):
            await outputs[port].send(value=wire.encode(batch), partition=p)
        if out.records:
            await send_records(out, partition)

    @app.agent(source, name=f"{pf.name}-agent")
    async def process(stream: Any) -> None:
        async for event in stream.events():
            partition = event.message.partition
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

    @app.on_rebalance_complete.connect
    async def record_assignment(sender: Any, **_: Any) -> None:
        # The supervisor reads this file to know the worker owns its partitions.
        mine = sorted(
            tp.partition for tp in app.consumer.assignment() if tp.topic == pf.input_topic
        )
        tmp = datadir / "assignment.json.tmp"
        tmp.write_text(json.dumps({"partitions": mine, "time": time.time()}))
        tmp.replace(datadir / ASSIGNMENT_FILE)
        log.info("%s assigned partitions %s", pf.name, mine)

    @app.timer(10.0)
    async def report() -> None:
        if engine.counters:
            log.info("%s counters %s", pf.name, dict(engine.counters))

    return app


def run_worker(
    pipeline: Pipeline,
    function_name: str,
    brokers: str,
    datadir: Path,
    *,
    loglevel: str = "info",
    **settings: Any,
) -> None:
    """Run one worker until SIGTERM/SIGINT (blocks)."""
    datadir.mkdir(parents=True, exist_ok=True)
    app = create_app(pipeline, function_name, brokers, datadir, **settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
