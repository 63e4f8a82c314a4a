"""Processor: what a worker does with one input record, without Faust.

Per record, in order (docs/FAULT-TOLERANCE.md, "The mechanism"):

1. skip a record this process already handled (Faust redelivers after a seek);
2. journaled: on first sight of the partition, plan its recovery from the
   journal and undo (`begin`); skip what an earlier owner did (before the
   recovery start) and what an upstream redo sends again (watermarks);
3. admit (snf.runtime.worker.admission): decode, check lineage and control
   data; a record that fails, or that the engine refuses, or that took
   worker processes down twice (snf.runtime.worker.attempts), goes to the
   function's dead-letter topic with the reason (dead_letters) and the
   worker goes on;
4. run the engine on the batch or end marker, state writes deferred;
5. journaled: write the journal entry (before-images, watermarks, settled
   point), then apply the state writes, then advance the watermarks; the
   core's reserved tables get no before-image (a recovery never undoes them),
   and when the batch wrote one the worker waits until Kafka acknowledged it
   (`durable`, the producer's flush) before any output goes out;
6. send the outputs, each with its lineage, and track their acks.

The Faust app (snf.runtime.worker.app) injects the state table and the send
function, and owns everything else: acks, commits, gaps, signals. Errors of
the shell (state, producer) propagate: the app exits at once, and a restarted
worker picks up from the last commit (crash-only). The unit tests run this
class on a dict and a list of sends (tests/unit/test_journal.py).

Each step is timed once per record into the worker's metrics
(snf.runtime.worker.metrics): decode, engine, journal, state_apply, reserve, produce.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from snf import wire
from snf.core.engine import FunctionEngine, StageOutput
from snf.core.tables import BatchState, Store
from snf.guarantee.journal import (
    JOURNAL_SLOTS,
    JournalEntry,
    Recovery,
    journal_key,
    journal_keys,
    table_key,
)
from snf.guarantee.lineage import CAPTURE_ORIGIN, Lineage, LineageError, drop_replayed
from snf.packet.batch import PacketBatch
from snf.pipeline.model import PipelineFunction
from snf.pipeline.routing import PipelinePlan
from snf.runtime.worker.admission import Admission
from snf.runtime.worker.attempts import MAX_TRIES, Attempts
from snf.runtime.worker.dead_letters import DeadLetter, dead_letter_headers
from snf.runtime.worker.metrics import WorkerMetrics
from snf.runtime.worker.outputs import Outputs, Send
from snf.runtime.worker.partition import PartitionState
from snf.runtime.worker.state_table import CountingStore, PrefixedStore

__all__ = ["InputRecord", "Processor"]

log = logging.getLogger("snf.worker")
# What one bad record can raise: it is dead-lettered, and the worker goes on.
REJECTED = (DeadLetter, wire.WireError, LineageError)


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One record of the function's input topic."""

    partition: int
    offset: int
    value: bytes | None  # None: a tombstone, which no snf writer sends
    headers: Sequence[tuple[str, bytes]] | None = None
    timestamp: float | None = None  # its Kafka timestamp (producer's send time), in s


class Processor:
    """The per-record protocol of one function's worker, over all its input partitions."""

    def __init__(
        self,
        fn: PipelineFunction,
        plan: PipelinePlan,
        table: Store,
        send: Send,
        metrics: WorkerMetrics | None = None,
        *,
        control_key: bytes | None = None,
        attempts_path: Path | None = None,
        durable: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.fn = fn
        self.table = CountingStore(table)
        self.engine = FunctionEngine(plan.cores[fn.name])
        self.counters = self.engine.counters
        self.outputs = Outputs(fn, plan, send, control_key)
        self.send = send
        self.admission = Admission(fn, plan.pipeline, control_key)
        self.attempts = Attempts(attempts_path)
        self.ends_expected = plan.ends_expected(fn.name)
        self.journaled = fn.journaled
        self.stores = {name: PrefixedStore(self.table, name) for name in fn.state_tables}
        core = self.engine.function
        self.reserved = [self.stores[name] for name in core.reserved_tables]
        self.durable = durable  # waits until every state write sent is acknowledged
        self.metrics = metrics or WorkerMetrics(fn.pipeline, fn.name, "")
        self.metrics.engine, self.metrics.stores = self.engine, self.stores
        self.metrics.changelog = self.table
        self.done: dict[int, int] = {}  # input partition -> last offset this process handled
        self.parts: dict[int, PartitionState] = {}  # input partition -> journal state
        self.first_output: set[int] = set()  # partitions that produced output since assignment

    async def handle(self, record: InputRecord) -> None:
        """Everything the worker does with one input record, except acking it."""
        partition, offset = record.partition, record.offset
        if offset <= self.done.get(partition, -1):
            # After a rebalance Faust seeks kept partitions back to the last commit,
            # and a fetch in flight across that seek delivers twice: handling it again
            # would apply its state effects twice and send its outputs again.
            self.counters["redelivered"] += 1
            return
        part = self.begin(partition, offset) if self.journaled else None
        if part is not None and offset < part.start:
            self.counters["skipped"] += 1  # done by an earlier owner: its effects are in
        else:
            died = self.attempts.start(partition, offset)
            try:
                if died >= MAX_TRIES:
                    raise DeadLetter("Crashed", f"{died} worker processes died handling it")
                started = time.perf_counter()
                lineage, message = self.admission.admit(record.value, record.headers)
                if part is not None and not part.marks.is_new(lineage):
                    self._skip(lineage, message)
                else:
                    since = self.metrics.lap("decode", started)
                    await self._process(message, record, lineage, part, since)
            except REJECTED as exc:
                await self._dead_letter(record, exc, part)
            self.attempts.done(partition)
        self.done[partition] = offset

    def begin(self, partition: int, offset: int) -> PartitionState:
        """On first sight of a partition since its assignment, plan its recovery
        from the journal entries in the (restored) table, and undo."""
        part = self.parts.get(partition)
        if part is not None:
            return part
        table = self.table
        entries = [JournalEntry.decode(raw) for key in journal_keys() if (raw := table.get(key))]
        recovery = Recovery.plan(entries)
        part = self.parts[partition] = PartitionState(recovery.start, recovery.marks)
        if recovery.undone:
            log.info(
                "%s: partition %d resumes at offset %d: %d events undone (%d keys) to run again",
                self.fn.name,
                partition,
                recovery.start,
                recovery.undone,
                len(recovery.undo),
            )
            self.counters["undone"] += recovery.undone
        for key, value in recovery.undo.items():
            if value is None:
                table.delete(key)
            else:
                table.set(key, value)
        self.engine.forget(partition)  # what the core derived may predate the undo
        if entries and offset > recovery.start:
            log.error(
                "%s: partition %d starts at %d, after its recovery point %d",
                self.fn.name,
                partition,
                offset,
                recovery.start,
            )
        return part

    def _skip(self, lineage: Lineage | None, message: PacketBatch | wire.EndMarker) -> None:
        """A copy sent again by an upstream redo: its effects are in already."""
        self.counters["duplicate_in"] += 1
        capture = lineage is not None and lineage.origin.startswith(CAPTURE_ORIGIN)
        if capture and isinstance(message, PacketBatch):  # a resumed replay's repeats only
            self.counters["duplicate_in_packets"] += len(message)

    async def _dead_letter(
        self, record: InputRecord, error: BaseException, part: PartitionState | None
    ) -> None:
        """The record to the function's DLQ with the reason; processing goes on."""
        fn, where = self.fn, (self.fn.input_topic, record.partition, record.offset)
        self.counters["dead_letters"] += 1
        if isinstance(error, wire.WireError):
            self.counters["bad_batch"] += 1
        log.error(
            "%s: dead-lettering %s/%d@%d: %s: %s",
            fn.name,
            *where,
            type(error).__name__,
            str(error)[:200],
        )
        headers = dead_letter_headers(record.headers, where, fn.name, error)
        # A tombstone is kept as an empty value: Kafka wants a key or a value.
        value = b"" if record.value is None else bytes(record.value)
        future = await self.send(fn.dlq_topic, value, record.partition, headers)  # type: ignore[arg-type]
        if part is not None:
            part.inflight.append((record.offset, [future]))  # settled once it is stored

    async def _process(
        self,
        message: PacketBatch | wire.EndMarker,
        record: InputRecord,
        lineage: Lineage | None,
        part: PartitionState | None,
        since: float,
    ) -> None:
        partition, offset, metrics = record.partition, record.offset, self.metrics
        if part is not None and isinstance(message, PacketBatch):
            n = len(message)
            message = drop_replayed(message, lineage, part.marks)  # a resumed replay's repeats
            if len(message) < n:
                self.counters["duplicate_in_packets"] += n - len(message)
        state = BatchState(self.stores, deferred=self.journaled, partition=partition)
        reserved = sum(store.writes for store in self.reserved)
        try:
            if isinstance(message, wire.EndMarker):
                # The topology, not the sender, knows how many origins feed this partition.
                marker = wire.EndMarker(
                    message.end_id, message.end_ts_ns, self.ends_expected, message.origin
                )
                out: StageOutput | None = self.engine.end_of_input(marker, partition, state)
            else:
                out = self.engine.handle(message, state)
                metrics.batches += 1
        except Exception as exc:  # the engine refused the core's answer: no state written
            state.discard()
            raise DeadLetter(type(exc).__name__, f"{self.fn.cls.kind}: {exc}") from exc
        since = metrics.lap("engine", since)
        if part is not None:
            since = await self._journal(part, offset, lineage, state, since)
        if self.durable is not None and sum(store.writes for store in self.reserved) != reserved:
            await self.durable()  # a reservation is in Kafka before anything relies on it
            since = metrics.lap("reserve", since)
        if out is None:
            return  # an end marker that completes nothing yet: no outputs
        if isinstance(message, wire.EndMarker):
            futures = await self.outputs.end(message, out, partition, offset)
            metrics.lap("produce", since)
        else:
            sent, futures = await self.outputs.packets(out, partition, offset)
            self.counters["out"] += sent
            metrics.lap("produce", since)
            if record.timestamp:  # clocks of two hosts may disagree a little: never < 0
                metrics.hop_latency.observe(max(0.0, time.time() - record.timestamp))
        if part is not None and futures:
            part.inflight.append((offset, futures))
        if futures and partition not in self.first_output:
            # What bench/chaos_suite.py measures a takeover by (kill -> first output).
            self.first_output.add(partition)
            log.info(
                "%s: first output of partition %d at %.6f", self.fn.name, partition, time.time()
            )

    async def _journal(
        self,
        part: PartitionState,
        offset: int,
        lineage: Lineage | None,
        state: BatchState,
        since: float,
    ) -> float:
        """The entry before the writes: offset, before-images, watermarks, settled point.
        Returns the perf_counter at its end; a wait for a full ring is timed apart."""
        settled = part.settled(offset)
        if offset - settled >= JOURNAL_SLOTS - 1:
            waited = time.perf_counter()
            while offset - settled >= JOURNAL_SLOTS - 1:  # the ring is full: wait
                await part.wait_oldest()
                settled = part.settled(offset)
            wait = time.perf_counter() - waited
            self.metrics.journal_wait += wait
            since += wait  # back-pressure is not the journal's own time
        reserved = self.engine.function.reserved_tables
        before = {
            table_key(name, key): self.stores[name].peek(key)
            for name, writes in state.pending().items()
            if name not in reserved  # promises a recovery must keep, never undo
            for key, _ in writes
        }
        entry = JournalEntry(offset, before, part.marks.copy(), lineage, settled)
        self.table.set(journal_key(offset), entry.encode())
        part.committable = settled
        since = self.metrics.lap("journal", since)
        state.apply()
        part.marks.advance(lineage)
        return self.metrics.lap("state_apply", since)

    # -- what the committer and the lifecycle ask -----------------------------------------

    def committable(self, partition: int) -> int | None:
        """The offset a commit may name for `partition` (None: nothing to commit)."""
        if self.journaled:
            # Only up to the settled point of an entry written: a successor restarts
            # there (snf.guarantee.journal.Recovery), never later.
            part = self.parts.get(partition)
            return None if part is None else part.committable
        last = self.done.get(partition)
        return None if last is None else last + 1

    def checkpoint_due(self, partition: int) -> int | None:
        """The next offset of an idle partition whose outputs are all acknowledged,
        when no entry says it is settled yet (else None): see `write_checkpoint`."""
        part, last = self.parts.get(partition), self.done.get(partition)
        if part is None or last is None or (part.committable or 0) > last:
            return None
        return last + 1 if part.settled(last + 1) == last + 1 else None

    def write_checkpoint(self, partition: int, at: int) -> bool:
        """Journal that offset `at` is settled, so a commit can reach it: without this
        the newest entry always names its own, last, event as unsettled, the group
        never shows zero lag (the autoscaler's idle signal), and every handoff would
        redo one event. False when the partition moved on meanwhile."""
        part = self.parts.get(partition)
        if part is None or self.done.get(partition) != at - 1:
            return False  # the agent moved on: its own entry says enough
        entry = JournalEntry(at, {}, part.marks.copy(), None, at)
        self.table.set(journal_key(at), entry.encode())
        part.committable = at
        return True

    def keep_only(self, partitions: Sequence[int]) -> None:
        """After a rebalance: forget the partitions that went elsewhere (if one comes
        back, its journal is read again; its new owner will have moved on)."""
        mine = set(partitions)
        for p in set(self.done) - mine:
            del self.done[p]
            self.engine.forget(p)
        for p in set(self.parts) - mine:
            del self.parts[p]
        self.first_output.intersection_update(mine)
