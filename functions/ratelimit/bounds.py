"""Bounded state of the policer: sweeps and eviction over its bucket and frag tables.

A helper of snf.functions.ratelimit. A stored bucket is one that is not full
(absent = full), and it becomes full again, by refill, at a packet time fixed
by its value: last + ceil((cap - tokens) / rate). From then on the stored
value and no value mean the same, so a sweep deletes it: memory back, no
verdict changed. A full table (max_entries) evicts the bucket that refills
first (the one closest to absent anyway). Per partition, an ExpiryIndex
(snf.core.expiry) per table, rebuilt from the tables after forget().
"""

from __future__ import annotations

from typing import Any

from snf.core.expiry import ExpiryIndex, PartitionIndexes
from snf.core.tables import BatchState, TableView
from snf.packet.fragments import FRAG_TTL_NS

__all__ = ["BucketExpiry"]

Bucket = tuple[int, int] | None  # (tokens, last_ts_ns); None: full (absent)


class BucketExpiry:
    """Due times of the buckets and fragment records of each partition."""

    def __init__(self, cap: int, rate: int, max_entries: int) -> None:
        self.cap = cap
        self.rate = max(1, rate)
        self.max_entries = max_entries
        self._buckets = PartitionIndexes("bucket", self.bucket_due)
        self._frags = PartitionIndexes("frag", self.frag_due)

    def bucket_due(self, key: bytes, value: Any) -> tuple[int, bool]:
        tokens, last = int(value[0]), int(value[1])
        return last + -(-(self.cap - tokens) // self.rate), False

    @staticmethod
    def frag_due(key: bytes, value: Any) -> tuple[int, bool]:
        return int(value[0]) + FRAG_TTL_NS + 1, False

    def indexes(self, state: BatchState) -> tuple[ExpiryIndex, ExpiryIndex]:
        return self._buckets.of(state), self._frags.of(state)

    def forget(self, partition: int) -> None:
        self._buckets.forget(partition)
        self._frags.forget(partition)

    def sweep(self, state: BatchState, now: int, limit: int) -> None:
        """Delete the buckets full again and the fragment records expired by `now`."""
        for name, index in zip(("bucket", "frag"), self.indexes(state), strict=True):
            view = state.table(name)
            for key in index.expired(now, limit):
                view.delete(key)
                index.discard(key)

    def make_room(
        self,
        key: bytes,
        table: TableView,
        index: ExpiryIndex,
        work: dict[bytes, Bucket],
        before: dict[bytes, Bucket],
        dirty: set[bytes],
    ) -> int:
        """Before `key` stores a bucket: if that takes a new slot of a full table,
        evict the bucket that refills first (it becomes full). Returns 0 or 1."""
        self.flush(index, work, dirty)
        if key in index or len(index) < self.max_entries:
            return 0
        victim = index.victim()
        if victim is None:
            return 0
        if victim not in work:
            stored = table.get(victim)
            before[victim] = None if stored is None else (int(stored[0]), int(stored[1]))
        work[victim] = None
        index.discard(victim)
        return 1

    def flush(self, index: ExpiryIndex, work: dict[bytes, Bucket], dirty: set[bytes]) -> None:
        """Bring the index up to this batch's buckets (changed keys in `dirty`)."""
        index.refresh(dirty, work, self.bucket_due)
        dirty.clear()
