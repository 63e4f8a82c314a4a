"""Committer: offset commits that never run ahead of what a successor can redo.

Replaces Faust's commit, which goes by acked events (cleared by its revoke
handler before it commits, in faust-streaming 0.15.3) and does not wait for
its buffered table writes: work done since the last periodic commit would be
redone by the next owner, or worse, a commit could cover state a kill then
loses. Here a commit names, per partition, the Processor's committable offset
(journaled: the settled point of an entry already written), and only after
everything sent so far, journal entries included, is acknowledged by Kafka.
Idle partitions get a checkpoint entry first, so their commits reach the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from snf.runtime.worker import faust_compat
from snf.runtime.worker.coordination import Coordination
from snf.runtime.worker.processor import Processor

__all__ = ["COMMIT_INTERVAL", "Committer"]

COMMIT_INTERVAL = 1.0  # seconds; also Faust's broker_commit_interval
TP = Any  # Faust's TP(topic, partition)


class Committer:
    def __init__(
        self,
        processor: Processor,
        coord: Coordination,
        *,
        consumer: Callable[[], Any],
        producer: Callable[[], Any],
        in_event: Callable[[TP, int], contextlib.AbstractContextManager[None]],
    ) -> None:
        self.processor = processor
        self.coord = coord
        self.consumer = consumer  # Faust's consumer (created late, hence a getter)
        self.producer = producer
        self.in_event = in_event
        self.topic = processor.fn.input_topic
        self._lock = asyncio.Lock()  # one commit at a time

    async def wait_acked(self, timeout: float = 30.0) -> bool:
        """Until everything sent so far is acknowledged by Kafka (False on timeout).

        Faust's own flush gives up on its buffer (where table writes wait) after
        0.1 s without progress; committing after that could cover writes a kill
        then loses."""
        producer = self.producer()
        if not await faust_compat.send_buffered(producer, time.monotonic() + timeout):
            return False
        await producer.flush()
        return True

    async def commit(self, tps: Iterable[TP], *, with_checkpoint: bool = True) -> bool:
        """Commit, for `tps`, what the Processor says is committable, once acknowledged."""
        async with self._lock:
            return await self._commit([tp for tp in tps if tp.topic == self.topic], with_checkpoint)

    async def _commit(self, mine: list[TP], with_checkpoint: bool) -> bool:
        if self.processor.journaled and with_checkpoint:
            if not await self.wait_acked():  # settles the outputs a checkpoint needs
                return False
            await self.checkpoint(mine)
        # Taken before the wait that makes the journal entries durable.
        offsets = {tp: self.processor.committable(tp.partition) for tp in mine}
        handled = {tp: o for tp, o in offsets.items() if o is not None}
        if not handled or not await self.wait_acked():
            return False
        consumer = self.consumer()
        assigned = consumer.assignment()
        handled = {
            tp: o
            for tp, o in handled.items()
            if tp in assigned and (faust_compat.committed_offset(consumer, tp) or -1) < o
        }
        if not handled or not await faust_compat.commit(consumer, handled):
            return False
        faust_compat.record_committed(consumer, handled)  # so Faust never commits older
        return True

    async def checkpoint(self, tps: Iterable[TP]) -> bool:
        """Journal a settled point for each idle partition whose outputs are all
        acknowledged (Processor.write_checkpoint). Returns whether one was written."""
        wrote = False
        for tp in tps:
            at = self.processor.checkpoint_due(tp.partition)
            if at is None:
                continue
            async with self.coord.lock:
                with self.in_event(tp, at):
                    wrote = self.processor.write_checkpoint(tp.partition, at) or wrote
        return wrote
