"""PartitionState: what a worker knows of one input partition it owns (journaled mode).

Made on first sight of the partition since its assignment, from the recovery
plan of its journal (snf.guarantee.journal.Recovery), and dropped when the
partition goes elsewhere.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from snf.guarantee.lineage import Watermarks

__all__ = ["PartitionState"]


@dataclass
class PartitionState:
    start: int  # events before it were done by an earlier owner (Recovery.start)
    marks: Watermarks  # input watermarks: the newest lineage applied per origin
    # events whose outputs are not all acknowledged yet: (offset, send futures)
    inflight: deque[tuple[int, Sequence[asyncio.Future]]] = field(default_factory=deque)
    committable: int | None = None  # the settled point of the newest entry written

    def settled(self, offset: int) -> int:
        """The offset before which every event's outputs are acknowledged, `offset`
        being the next event's. A failed send raises here: nothing more commits."""
        inflight = self.inflight
        while inflight and all(f.done() for f in inflight[0][1]):
            for f in inflight.popleft()[1]:
                f.result()
        return inflight[0][0] if inflight else offset

    async def wait_oldest(self) -> None:
        """Until the oldest event in flight has all its outputs acknowledged."""
        await asyncio.gather(*self.inflight[0][1])
