"""CatchUp: input records Faust's fetcher skipped or withholds, read directly.

Input offsets are contiguous, so a record whose offset jumps past the next
expected one means the fetcher dropped the records between: it can, around
the seeks of a recovery or rebalance (a batch fetched before the seek moves
its read offset past the records fetched again after it). `before` fills such
a gap before the record is handled. After some recoveries the fetcher also
never delivers a partition's records at all (observed: three of four
partitions silent for good), so `run_once`, on a timer, reads directly every
partition that has records waiting and made no progress for STALL_AFTER s.
Either way the records go through the same Processor, in offset order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

from snf.kafka.side_reader import SideReader
from snf.runtime.worker.coordination import Coordination
from snf.runtime.worker.processor import InputRecord, Processor

__all__ = ["CATCH_UP_CHUNK", "STALL_AFTER", "CatchUp"]

log = logging.getLogger("snf.worker")
STALL_AFTER = 1.0  # seconds a partition may have records waiting without progress
CATCH_UP_CHUNK = 32  # records read directly per partition in turn

TP = Any  # Faust's TP(topic, partition)


class CatchUp:
    def __init__(
        self,
        processor: Processor,
        side: SideReader,
        coord: Coordination,
        *,
        committed: Callable[[TP], int | None],
        assignment: Callable[[], Collection[TP]],
        in_event: Callable[[TP, int], contextlib.AbstractContextManager[None]],
    ) -> None:
        self.processor = processor
        self.side = side
        self.coord = coord
        self.committed = committed  # the group's committed offset, as Faust knows it
        self.assignment = assignment  # the partitions this worker owns now
        self.in_event = in_event  # stands in for Faust's current event (table access)
        self.topic = processor.fn.input_topic
        self.stalled: dict[TP, tuple[int, float]] = {}  # tp -> (next offset, since when)

    async def next_offset(self, tp: TP) -> int:
        """The offset the next record of `tp` must have."""
        last = self.processor.done.get(tp.partition)
        if last is not None:
            return last + 1
        committed = self.committed(tp)
        if committed is not None:
            return committed
        # Nothing committed: auto.offset.reset earliest.
        begins = await asyncio.to_thread(self.side.offsets, tp.topic, [tp.partition], end=False)
        return begins[tp.partition]

    async def before(self, tp: TP, offset: int) -> None:
        """Fill the gap before the record at `offset`, if there is one."""
        expected = await self.next_offset(tp)
        if offset > expected:
            await self.read_directly(tp, expected, offset)

    async def read_directly(self, tp: TP, start: int, end: int) -> None:
        """Handle the records [start, end) of `tp`, in order."""
        log.info(
            "%s: Faust skipped or withheld offsets %d..%d of partition %d; reading them directly",
            self.processor.fn.name,
            start,
            end - 1,
            tp.partition,
        )
        self.processor.counters["read_directly"] += end - start
        records = await asyncio.to_thread(self.side.read, tp.topic, tp.partition, start, end)
        for r in records:
            await self.processor.handle(InputRecord(tp.partition, r.offset, r.value, r.headers))

    async def run_once(self) -> None:
        """Read directly every partition that stalled (called on a timer)."""
        due, ends = await self._stalled()
        # Round robin in chunks: every stalled partition gets going again soon,
        # and the agent gets the lock between chunks.
        coord = self.coord
        while due and not coord.draining.is_set():
            for tp in list(due):
                async with coord.lock:
                    start, high = await self.next_offset(tp), ends[tp.partition]
                    if start >= high or tp not in self.assignment():
                        due.remove(tp)
                        self.stalled.pop(tp, None)
                        continue
                    coord.busy.set()
                    try:
                        with self.in_event(tp, start):
                            await self.read_directly(tp, start, min(high, start + CATCH_UP_CHUNK))
                    finally:
                        coord.busy.clear()

    async def _stalled(self) -> tuple[list[TP], dict[int, int]]:
        """Partitions with records waiting and no progress for STALL_AFTER seconds."""
        tps = [tp for tp in self.assignment() if tp.topic == self.topic]
        if not tps:
            return [], {}
        parts = [tp.partition for tp in tps]
        ends = await asyncio.to_thread(self.side.offsets, self.topic, parts, end=True)
        now = time.monotonic()
        due = []
        for tp in tps:
            start, high = await self.next_offset(tp), ends.get(tp.partition)
            if high is None or high <= start:
                self.stalled.pop(tp, None)
                continue
            since = self.stalled.get(tp)
            if since is None or since[0] != start:
                self.stalled[tp] = (start, now)
            elif now - since[1] >= STALL_AFTER:
                due.append(tp)
        return due, ends
