"""The Faust shell: the only module in snf that imports Faust.

One Faust app per (pipeline, function). Its id is the consumer group
(snf.pipeline.names.group_id), its source is the function's input topic, and each
state table of the core is a Faust Table stored in RocksDB (rocksdict) and
backed by the changelog topic "<app id>-<table>-changelog". A table write
goes to the changelog partition of the event being processed, which is the
partition the batch came from: that is why every input is partitioned by
the function's key (docs/ARCHITECTURE.md, "Partitioning across functions").
Links to other functions go through that function's StageRouter
(snf.pipeline.routing), which keeps the batch on its partition unless the next
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
import shutil
import signal
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import faust.transport.drivers.aiokafka as faust_aiokafka
from faust.streams import _current_event, current_event

from snf import wire
from snf.core.engine import FunctionEngine, StageOutput
from snf.core.tables import STATE_TABLE, BatchState
from snf.guarantee.journal import (
    JOURNAL_SLOTS,
    JournalEntry,
    Recovery,
    journal_key,
    journal_keys,
    table_key,
)
from snf.guarantee.lineage import CAPTURE_ORIGIN, Lineage, drop_replayed
from snf.pipeline.model import Pipeline
from snf.pipeline.routing import deliveries, plan_pipeline
from snf.runtime.worker.health import start_health_server
from snf.runtime.worker.stats import STATS_FILE, WorkerStats
from snf.runtime.worker.takeover import PartitionState, SideEvent, SideReader

__all__ = ["FaustTableStore", "create_app", "run_worker"]

log = logging.getLogger("snf.worker")
ASSIGNMENT_FILE = "assignment.json"
CLEAN_STOP_FILE = "clean-stop"  # written by a drain: the local tables match the changelog
# A worker stopped (SIGSTOP) this long may have been fenced out of its group:
# on SIGCONT it exits before sending anything more, and restarts clean.
STALL_LIMIT = 4.0
COMMIT_INTERVAL = 1.0  # seconds; also Faust's broker_commit_interval
STALL_AFTER = 1.0  # seconds a partition may have records waiting without progress
CATCH_UP_CHUNK = 32  # records read directly per partition in turn
STATS_INTERVAL = 2.0  # seconds between stats.json snapshots (snf status reads them)


class FaustTableStore:
    """snf.core.tables.Store for one core table, inside the function's single Faust
    table (keys prefixed by the table name; only valid inside stream iteration).

    One Faust table means one changelog partition per input partition, written
    in the order of the writes: the journal (snf.guarantee.journal) relies on that."""

    __slots__ = ("prefix", "table")

    def __init__(self, table: Any, name: str) -> None:
        self.table = table
        self.prefix = table_key(name, b"")

    def get(self, key: bytes) -> Any | None:
        return self.table.get(self.prefix + key)

    def set(self, key: bytes, value: Any) -> None:
        self.table[self.prefix + key] = value

    def delete(self, key: bytes) -> None:
        with contextlib.suppress(KeyError):
            del self.table[self.prefix + key]

    def items(self) -> Any:
        """The entries of the current event's partition only (the flush marker's)."""
        event = current_event()
        assert event is not None, "items() only runs while processing an event"
        store = self.table.data  # faust.stores.rocksdb.Store
        db = store._db_for_partition(event.message.partition)
        prefix, n = self.prefix, len(self.prefix)
        for key, value in store._visible_items(db):
            key = store._decode_key(key)
            if key.startswith(prefix):
                yield key[n:], store._decode_value(value)


FETCH_MAX_WAIT_MS = 200


def _shorter_fetch_wait() -> None:
    """Faust hard-codes fetch_max_wait_ms=1500 for its consumer. Its recovery's
    requests (highwaters, start offsets) queue behind that long-poll on the same
    connection, so each step of a takeover took up to 1.5 s (see
    docs/FAULT-TOLERANCE.md). 200 ms: a few more idle fetches, a faster takeover."""
    thread_cls = faust_aiokafka.AIOKafkaConsumerThread
    if getattr(thread_cls, "_snf_fetch_wait", False):
        return
    create = thread_cls._create_worker_consumer

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the fetcher starts
        return consumer

    thread_cls._create_worker_consumer = create_worker_consumer
    thread_cls._snf_fetch_wait = True


@contextlib.contextmanager
def as_current_event(tp: Any, offset: int) -> Iterator[None]:
    """Table access outside the agent (a record read directly, a checkpoint): Faust's
    tables take the partition from the current event, so stand one in."""
    held = SideEvent(tp, offset)  # referenced here: the context keeps a weak reference
    token = _current_event.set(weakref.ref(held))  # type: ignore[arg-type]
    try:
        yield
    finally:
        _current_event.reset(token)


def create_app(
    pipeline: Pipeline,
    function_name: str,
    brokers: str,
    datadir: Path,
    *,
    health_port: int | None = None,
) -> faust.App:
    _shorter_fetch_wait()
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
        processing_guarantee="at_least_once",  # exactly_once is snf.guarantee.journal's
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        # A killed worker's partitions move once its session expires: keep that short.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=0.5,  # a survivor learns of a rebalance sooner
        broker_commit_interval=COMMIT_INTERVAL,
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
    # All core tables live in one Faust table, so one changelog partition per
    # input partition holds every state write and journal entry, in order.
    table = app.Table(STATE_TABLE, partitions=n, key_type=bytes, default=None)
    plan = plan_pipeline(pipeline)
    engine = FunctionEngine(plan.cores[pf.name])
    routers = plan.routers(pf.name)
    expected = plan.ends_expected(pf.name)
    stores = {name: FaustTableStore(table, name) for name in pf.state_tables}
    stats = WorkerStats(datadir / STATS_FILE, engine.counters)
    journaled = pf.journaled

    class Emitter:
        """Sends one event's output messages, each stamped with its lineage."""

        def __init__(self, partition: int, offset: int) -> None:
            self.origin = f"{pf.name}/{partition}"
            self.offset = offset
            self.index = 0
            self.futures: list[Any] = []

        async def send(self, topic: str, value: bytes, partition: int) -> None:
            headers = [Lineage(self.origin, self.offset, self.index).header()]
            self.index += 1
            # force: send now. Faust would otherwise attach it to the event and
            # publish it only at the next offset commit (up to a second later).
            fut = await outputs[topic].send(
                value=value, partition=partition, headers=headers, force=True
            )
            self.futures.append(fut)

    async def send_records(out: StageOutput, partition: int, emit: Emitter, end: str = "") -> None:
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
                    await emit.send(route.topic, message, partition % route.partitions)

    def on_flush(flush: wire.EndMarker, partition: int, state: BatchState) -> StageOutput | None:
        # The topology, not the sender, knows how many origins feed this partition.
        flush = wire.EndMarker(flush.end_id, flush.end_ts_ns, expected, flush.origin)
        return engine.end_of_input(flush, partition, state)

    async def emit_flush(
        flush: wire.EndMarker, out: StageOutput, partition: int, emit: Emitter
    ) -> None:
        await send_records(out, partition, emit, end=flush.end_id)
        # Pass the marker on, after this partition's packets, to every packet destination.
        marker = wire.encode_end_marker(
            wire.EndMarker(flush.end_id, flush.end_ts_ns, 1, f"{pf.name}/{partition}")
        )
        for topic, targets in plan.marker_targets(pf.name, partition):
            for p in targets:
                await emit.send(topic, marker, p)

    async def emit_packets(out: StageOutput, partition: int, emit: Emitter) -> None:
        sent = 0
        for _port, route, p, batch in deliveries(out, partition, pf, routers):
            await emit.send(route.topic, wire.encode(batch), p)
            sent += len(batch)
        engine.counters["out"] += sent
        if out.records:
            await send_records(out, partition, emit)

    async def on_event(
        msg: wire.PacketBatch | wire.EndMarker, partition: int, offset: int, lineage: Lineage | None
    ) -> None:
        part = parts.get(partition)
        if part is not None and isinstance(msg, wire.PacketBatch):
            n = len(msg)
            msg = drop_replayed(msg, lineage, part.marks)  # a resumed replay's repeats
            if len(msg) < n:
                engine.counters["duplicate_in_packets"] += n - len(msg)
        state = BatchState(stores, deferred=journaled)
        if isinstance(msg, wire.EndMarker):
            out = on_flush(msg, partition, state)
        else:
            out = engine.handle(msg, state)
        if part is not None:
            settled = part.settled(offset)
            while offset - settled >= JOURNAL_SLOTS - 1:  # the ring is full: wait
                await part.wait_oldest()
                settled = part.settled(offset)
            before = {
                table_key(name, key): stores[name].get(key)
                for name, writes in state.pending().items()
                for key, _ in writes
            }
            entry = JournalEntry(offset, before, part.marks.copy(), lineage, settled)
            table[journal_key(offset)] = entry.encode()
            part.committable = settled
            state.apply()
            part.marks.advance(lineage)
        emit = Emitter(partition, offset)
        if isinstance(msg, wire.EndMarker):
            if out is not None:
                await emit_flush(msg, out, partition, emit)
        else:
            await emit_packets(out, partition, emit)
        if part is not None and emit.futures:
            part.inflight.append((offset, emit.futures))
        if emit.futures and partition not in first_output:
            # What bench/chaos_suite.py measures a takeover by (kill -> first output).
            first_output.add(partition)
            log.info("%s: first output of partition %d at %.6f", pf.name, partition, time.time())

    busy = asyncio.Event()  # set while an event is being processed
    done: dict[int, int] = {}  # input partition -> last offset this process handled
    parts: dict[int, PartitionState] = {}  # input partition -> journal state (journaled)
    first_output: set[int] = set()  # partitions that produced output since assignment

    async def expected_offset(tp: Any) -> int:
        """The offset the next record of `tp` must have."""
        last = done.get(tp.partition)
        if last is not None:
            return last + 1
        committed = app.consumer._committed_offset.get(tp)
        if committed is not None:
            return committed
        # Nothing committed: auto.offset.reset earliest.
        begins = await asyncio.to_thread(side.offsets, tp.topic, [tp.partition], end=False)
        return begins[tp.partition]

    def begin(partition: int, offset: int) -> PartitionState:
        """On first sight of a partition since its assignment, plan its recovery
        from the journal entries in the local (restored) table, and undo."""
        part = parts.get(partition)
        if part is not None:
            return part
        entries = [JournalEntry.decode(raw) for key in journal_keys() if (raw := table.get(key))]
        plan = Recovery.plan(entries)
        part = parts[partition] = PartitionState(plan.start, plan.marks)
        if plan.undone:
            log.info(
                "%s: partition %d resumes at offset %d: %d events undone (%d keys) to run again",
                pf.name,
                partition,
                plan.start,
                plan.undone,
                len(plan.undo),
            )
            engine.counters["undone"] += plan.undone
        for key, value in plan.undo.items():
            if value is None:
                with contextlib.suppress(KeyError):
                    del table[key]
            else:
                table[key] = value
        if entries and offset > plan.start:
            log.error(
                "%s: partition %d starts at %d, after its recovery point %d",
                pf.name,
                partition,
                offset,
                plan.start,
            )
        return part

    async def handle(topic: str, partition: int, offset: int, value: bytes, headers: Any) -> None:
        """Everything the worker does with one input record, except acking it."""
        if offset <= done.get(partition, -1):
            # Delivered again to the process that handled it: after a rebalance
            # Faust seeks kept partitions back to the last commit, and a fetch
            # in flight across that seek delivers twice. Handling it again
            # would apply its state effects twice and re-emit its outputs.
            engine.counters["redelivered"] += 1
            return
        lineage = Lineage.from_headers(headers)
        if journaled:
            part = begin(partition, offset)
            skip = offset < part.start
            if skip or not part.marks.is_new(lineage):
                # Done before a takeover (skip), or a copy sent again by an
                # upstream redo: its effects are in already.
                engine.counters["skipped" if skip else "duplicate_in"] += 1
                if not skip and lineage is not None and lineage.origin.startswith(CAPTURE_ORIGIN):
                    # A resumed replay's batch of repeats only: count its packets too.
                    with contextlib.suppress(wire.WireError):
                        engine.counters["duplicate_in_packets"] += len(wire.decode_any(value))
                done[partition] = offset
                return
        try:
            msg = wire.decode_any(value)
            if isinstance(msg, wire.RecordBlock):
                raise wire.WireError("a records message on a packet topic")
        except wire.WireError as exc:
            engine.counters["bad_batch"] += 1
            log.error("skipping undecodable message at %s/%d@%d: %s", topic, partition, offset, exc)
            done[partition] = offset
            return
        try:
            await on_event(msg, partition, offset, lineage)
        except Exception:
            # Core errors never get here (the engine turns them into drops):
            # this is the shell failing (state, producer). Die at once, as
            # crash-only software does: nothing is lost, since the offsets of
            # this event are not committed and the changelog holds the state,
            # so a restarted worker picks up exactly here.
            log.critical("%s: unrecoverable error; exiting", pf.name, exc_info=True)
            os._exit(70)  # EX_SOFTWARE; Faust would otherwise keep a dead agent
        done[partition] = offset

    async def fill_gap(tp: Any, start: int, end: int) -> None:
        """Handle the records [start, end) that Faust's fetcher skipped.

        Its fetcher can drop records around the seeks of a recovery or rebalance
        (a batch fetched before the seek moves its read offset past the records
        fetched again after it). Input offsets here are contiguous, so a jump is
        such a drop: the missing records are read with a side consumer and
        handled in order, inside the current event (same partition)."""
        log.info(
            "%s: Faust skipped or withheld offsets %d..%d of partition %d; reading them directly",
            pf.name,
            start,
            end - 1,
            tp.partition,
        )
        engine.counters["read_directly"] += end - start
        records = await asyncio.to_thread(side.read, tp.topic, tp.partition, start, end)
        for r in records:
            await handle(tp.topic, tp.partition, r.offset, r.value, r.headers)

    side = SideReader(brokers)
    lock = asyncio.Lock()  # one record at a time, from the agent or from catch_up
    draining = asyncio.Event()

    @app.agent(source, name=f"{pf.name}-agent")
    async def process(stream: Any) -> None:
        async for event in stream.events():
            busy.set()
            message = event.message
            async with lock:
                expected = await expected_offset(message.tp)
                if message.offset > expected:
                    try:
                        await fill_gap(message.tp, expected, message.offset)
                    except Exception:
                        log.critical("%s: cannot fill a gap; exiting", pf.name, exc_info=True)
                        os._exit(70)
                await handle(
                    message.topic, message.partition, message.offset, event.value, message.headers
                )
            # Acked now, not when the next event arrives: a drain commits it.
            event.ack()
            busy.clear()

    stalled: dict[Any, tuple[int, float]] = {}  # tp -> (expected offset, since when)

    @app.timer(0.5)
    async def catch_up() -> None:
        """Handle records Faust's fetcher withholds. After some recoveries it never
        delivers a partition's records (observed: three of four partitions silent
        for good), so a partition with records waiting and no progress for
        STALL_AFTER seconds is read directly, like a gap."""
        if draining.is_set() or app.rebalancing:
            return
        tps = [tp for tp in app.consumer.assignment() if tp.topic == pf.input_topic]
        if not tps:
            return
        ends = await asyncio.to_thread(
            side.offsets, pf.input_topic, [tp.partition for tp in tps], end=True
        )
        now = time.monotonic()
        due = []
        for tp in tps:
            expected, high = await expected_offset(tp), ends.get(tp.partition)
            if high is None or high <= expected:
                stalled.pop(tp, None)
                continue
            since = stalled.get(tp)
            if since is None or since[0] != expected:
                stalled[tp] = (expected, now)
            elif now - since[1] >= STALL_AFTER:
                due.append(tp)
        # Round robin in chunks: every stalled partition gets going again soon,
        # and the agent gets the lock between chunks.
        while due and not draining.is_set():
            for tp in list(due):
                async with lock:
                    expected, high = await expected_offset(tp), ends[tp.partition]
                    if expected >= high or tp not in app.consumer.assignment():
                        due.remove(tp)
                        stalled.pop(tp, None)
                        continue
                    busy.set()
                    try:
                        with as_current_event(tp, expected):
                            await fill_gap(tp, expected, min(high, expected + CATCH_UP_CHUNK))
                    except Exception:
                        log.critical("%s: cannot catch up; exiting", pf.name, exc_info=True)
                        os._exit(70)
                    finally:
                        busy.clear()

    async def drain(timeout: float = 15.0) -> None:
        """A planned stop (scale-in, undeploy, rolling restart, pod eviction): finish
        the event in hand, take no other, commit, and only then leave the group.
        Faust's own stop commits only what was acked before it cancels the agent,
        so the successor would redo (and re-emit) the last events."""
        consumer = app.consumer
        draining.set()
        consumer.stop_flow()
        app.flow_control.suspend()
        consumer.pause_partitions(consumer.assignment())
        deadline = time.monotonic() + timeout
        while (busy.is_set() or lock.locked()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await commit_settled(consumer.assignment())
        if await flush_all():
            (datadir / CLEAN_STOP_FILE).touch()  # the local tables match the changelog
        log.info("%s drained and committed; stopping; counters %s", pf.name, dict(engine.counters))

    async def flush_all(timeout: float = 30.0) -> bool:
        """Wait until everything sent so far is acknowledged by Kafka.

        Faust's own flush gives up on its buffer (where table writes wait) after
        0.1 s without progress; committing after that could cover writes a
        kill then loses."""
        producer = app.producer
        deadline = time.monotonic() + timeout
        while producer.buffer.size:
            if time.monotonic() > deadline:
                return False
            await producer.buffer.flush()
        await producer.flush()
        return True

    async def checkpoint(tps: list[Any]) -> bool:
        """For each idle partition whose outputs are all acknowledged, journal that
        its next offset is settled, so a commit can reach it: without this the
        newest entry always names its own, last, event as unsettled, the group
        never shows zero lag (the autoscaler's idle signal), and every handoff
        would redo one event. Returns whether an entry was written."""
        wrote = False
        for tp in tps:
            part, last = parts.get(tp.partition), done.get(tp.partition)
            if part is None or last is None or (part.committable or 0) > last:
                continue
            if part.settled(last + 1) != last + 1:
                continue  # outputs still in flight
            async with lock:
                if done.get(tp.partition) != last:
                    continue  # the agent moved on meanwhile: its entry says enough
                with as_current_event(tp, last + 1):
                    entry = JournalEntry(last + 1, {}, part.marks.copy(), None, last + 1)
                    table[journal_key(last + 1)] = entry.encode()
                part.committable = last + 1
                wrote = True
        return wrote

    commit_lock = asyncio.Lock()

    @app.timer(COMMIT_INTERVAL)
    async def periodic_commit() -> None:
        # Faust commits only partitions with acks newer than its last commit, and
        # records read directly (fill_gap) are never Faust-acked: commit ourselves.
        if not draining.is_set() and not app.rebalancing:
            await commit_settled(app.consumer.assignment())

    async def commit_settled(tps: Any, *, with_checkpoint: bool = True) -> bool:
        async with commit_lock:
            return await _commit_settled(tps, with_checkpoint)

    async def _commit_settled(tps: Any, with_checkpoint: bool) -> bool:
        """Commit, for `tps`, the offset after the last event this process handled,
        once everything it sent (outputs, state, journal) is acknowledged.

        Replaces Faust's commit, which goes by ack records (cleared by its revoke
        handler before it commits, in faust-streaming 0.15.3) and does not wait
        for its buffered table writes: work done since the last periodic commit
        would be redone by the next owner, or worse, a commit could cover state
        a kill then loses.
        """
        consumer = app.consumer
        mine = [tp for tp in tps if tp.topic == pf.input_topic]
        if journaled:
            # Only up to the settled point of an entry that will be durable: a
            # successor restarts there (snf.guarantee.journal.Recovery), never later.
            if with_checkpoint:
                if not await flush_all():  # settles the outputs a checkpoint needs
                    return False
                await checkpoint(mine)
            # Taken before the flush that makes the entries durable.
            found = {tp: parts[tp.partition].committable for tp in mine if tp.partition in parts}
            handled = {tp: c for tp, c in found.items() if c is not None}
            if not handled or not await flush_all():
                return False
        else:
            handled = {tp: done[tp.partition] + 1 for tp in mine if tp.partition in done}
            if not handled or not await flush_all():
                return False
        mine = consumer.assignment()
        handled = {
            tp: o
            for tp, o in handled.items()
            if tp in mine and (consumer._committed_offset.get(tp) or -1) < o
        }
        if not handled or not await consumer._commit(handled):
            return False
        for tp, offset in handled.items():  # so Faust never commits an older offset
            if (consumer._committed_offset.get(tp) or -1) < offset:
                consumer._committed_offset[tp] = offset
        return True

    @app.on_partitions_revoked.connect
    async def commit_on_revoke(sender: Any, revoked: Any, **_: Any) -> None:
        # Sent after Faust waited for the agent and flushed the producer. No
        # checkpoint: the tables of revoked partitions are being closed.
        await commit_settled(revoked, with_checkpoint=False)

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

        async def settled_commit_offsets(offsets: Any, start_new_transaction: bool = True) -> bool:
            return await commit_settled(set(offsets))

        app.consumer._commit_offsets = settled_commit_offsets  # Faust's periodic commit too

    @app.task
    async def fence_on_stall() -> None:
        """A worker stopped longer than its session was replaced: its partitions
        have a new owner. Exit on SIGCONT, before anything it still holds is sent
        (a Python signal handler runs before the event loop resumes)."""
        last_tick = time.monotonic()

        def on_continue(signum: int, frame: Any) -> None:
            stalled = time.monotonic() - last_tick
            if stalled > STALL_LIMIT:
                os.write(2, f"snf: stopped {stalled:.1f} s, possibly fenced; exiting\n".encode())
                os._exit(75)  # EX_TEMPFAIL: the supervisor restarts it

        signal.signal(signal.SIGCONT, on_continue)
        while True:
            last_tick = time.monotonic()
            await asyncio.sleep(0.25)

    @app.on_rebalance_complete.connect
    async def record_assignment(sender: Any, **_: Any) -> None:
        # The supervisor reads this file to know the worker owns its partitions.
        mine = sorted(
            tp.partition for tp in app.consumer.assignment() if tp.topic == pf.input_topic
        )
        tmp = datadir / "assignment.json.tmp"
        # The member id lets the supervisor evict this worker from the group the
        # moment it dies, rather than after its session timeout.
        member = app.consumer._thread._ensure_consumer()._coordinator.member_id
        record = {
            "partitions": mine,
            "time": time.time(),
            "group": pf.group_id,
            "member_id": member,
        }
        tmp.write_text(json.dumps(record))
        tmp.replace(datadir / ASSIGNMENT_FILE)
        for p in set(done) - set(mine):
            # Gone elsewhere: if it comes back, its new owner will have moved on.
            del done[p]
        for p in set(parts) - set(mine):
            del parts[p]  # read its journal again if it comes back
        first_output.intersection_update(mine)
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
    clean = datadir / CLEAN_STOP_FILE
    if not clean.exists():
        # After a crash the local RocksDB may hold writes that never reached the
        # changelog (Faust writes locally first): restore from the changelog.
        shutil.rmtree(datadir / "v1" / "tables", ignore_errors=True)
    clean.unlink(missing_ok=True)
    app = create_app(pipeline, function_name, brokers, datadir, health_port=health_port)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
