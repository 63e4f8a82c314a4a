"""Takeover helpers of the Faust worker that need no Faust (snf.runtime.worker.app).

PartitionState tracks, per input partition, the journal's settled point and
input watermarks (snf.guarantee.journal). SideReader reads what Faust's fetcher skipped
or withheld, with a plain consumer; SideEvent stands in for the Faust event
while the worker handles such a record.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from snf.guarantee.lineage import Watermarks

__all__ = ["PartitionState", "SideEvent", "SideReader"]


class SideEvent:
    """Stands in for a Faust event while the worker handles a record it read
    itself: Faust's tables take the partition from the current event."""

    def __init__(self, tp: Any, offset: int) -> None:
        self.message = SimpleNamespace(tp=tp, topic=tp.topic, partition=tp.partition, offset=offset)


class SideReader:
    """A plain consumer (no group) for records Faust's fetcher skips or withholds,
    and for end offsets without queueing behind Faust's fetch long-poll."""

    def __init__(self, brokers: str) -> None:
        self.brokers = brokers
        self.consumer: Any = None
        self.lock = threading.Lock()  # kafka-python's consumer is not thread-safe

    def _client(self) -> Any:
        if self.consumer is None:
            from kafka import KafkaConsumer  # only on these rare paths

            self.consumer = KafkaConsumer(
                bootstrap_servers=self.brokers.split(","),
                enable_auto_commit=False,
                max_partition_fetch_bytes=16 << 20,
            )
        return self.consumer

    def offsets(self, topic: str, partitions: list[int], *, end: bool) -> dict[int, int]:
        from kafka import TopicPartition

        with self.lock:
            tps = [TopicPartition(topic, p) for p in partitions]
            c = self._client()
            found = c.end_offsets(tps) if end else c.beginning_offsets(tps)
            return {tp.partition: o for tp, o in found.items()}

    def read(self, topic: str, partition: int, start: int, end: int) -> list[Any]:
        """Records [start, end) of one partition."""
        from kafka import TopicPartition

        with self.lock:
            tp, c = TopicPartition(topic, partition), self._client()
            c.assign([tp])
            c.seek(tp, start)
            out: list[Any] = []
            deadline = time.monotonic() + 60.0
            while c.position(tp) < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read {topic}/{partition} [{start}, {end})")
                out += [r for r in c.poll(timeout_ms=500).get(tp, []) if r.offset < end]
            return out


@dataclass
class PartitionState:
    """What this process knows of one input partition it owns (journaled mode)."""

    start: int  # events before it were done by an earlier owner (Recovery.start)
    marks: Watermarks  # input watermarks (snf.guarantee.journal)
    # events whose outputs are not all acknowledged yet: (offset, send futures)
    inflight: deque[tuple[int, list[Any]]] = field(default_factory=deque)
    committable: int | None = None  # the settled point of the newest entry written

    def settled(self, offset: int) -> int:
        """The offset before which every event's outputs are acknowledged."""
        inflight = self.inflight
        while inflight and all(f.done() for f in inflight[0][1]):
            for f in inflight.popleft()[1]:
                f.result()  # a failed send raises here: the worker dies, nothing commits
        return inflight[0][0] if inflight else offset

    async def wait_oldest(self) -> None:
        await asyncio.gather(*self.inflight[0][1])
