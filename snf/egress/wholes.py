"""WholeStore: whole copies of packets, by id, to join heads with their tails.

Topics after ingress may carry packet heads (snf.packet.heads); the whole
packet travelled once, on ingress. A reader of terminal topics keeps the
ingress copies here (the capture agent's own batches in `snf run`, the
ingress topic in `snf sink`) and joins: head + whole[len(head):full_len].
Functions never change a packet's length past its head, so the result is
the packet the function would have produced from the whole packet.

Memory is bounded by `max_bytes` of payload and `max_packets` index
entries (~150 bytes each): the oldest copies go first (`evicted`); a head
whose copy is gone is kept as it is and counted (`missing`).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence

import numpy as np

from snf.packet.batch import PacketBatch

__all__ = ["WholeStore"]

PacketId = tuple[int, int]
_first = operator.itemgetter(0)
_second = operator.itemgetter(1)


class WholeStore:
    def __init__(self, max_bytes: int | None = None, max_packets: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_packets = max_packets
        self.bytes = 0
        self.evicted = 0  # packets whose copy was dropped to stay within max_bytes
        self.missing = 0  # heads joined without a copy (kept as heads)
        self._segments: dict[int, bytes] = {}  # segment number -> ingress batch payload
        self._ids: dict[int, list[PacketId]] = {}  # segment number -> its packet ids
        self._at: dict[PacketId, tuple[int, int]] = {}  # id -> (segment, start in it)
        self._next = 0

    def __len__(self) -> int:
        return len(self._at)

    def add(self, batch: PacketBatch) -> None:
        """Keep the whole packets of a batch (heads in it are skipped)."""
        rec = batch.records
        whole = rec["full_len"] == 0
        if not whole.any():
            return
        sources = np.asarray(batch.sources, dtype=np.uint64)[rec["source"][whole]]
        ids = list(zip(sources.tolist(), rec["seq"][whole].tolist(), strict=True))
        starts = np.asarray(batch.offsets[:-1], dtype=np.int64)[whole].tolist()
        seg = self._next
        self._next += 1
        self._segments[seg] = batch.payload
        self._ids[seg] = ids
        self._at.update(zip(ids, zip(itertools.repeat(seg), starts), strict=True))
        self.bytes += len(batch.payload)
        while len(self._ids) > 1 and self._over():
            self._evict()

    def _over(self) -> bool:
        return (self.max_bytes is not None and self.bytes > self.max_bytes) or (
            self.max_packets is not None and len(self._at) > self.max_packets
        )

    def _evict(self) -> None:
        seg = next(iter(self._ids))
        gone = self._ids.pop(seg)
        self.bytes -= len(self._segments.pop(seg))
        at = self._at
        for pid in gone:
            if at.get(pid, (-1,))[0] == seg:  # not since replaced by a newer copy
                del at[pid]
                self.evicted += 1

    def has_all(self, batch: PacketBatch) -> bool:
        """Whether every head of `batch` has its whole copy here."""
        cut = np.flatnonzero(batch.records["full_len"] > 0).tolist()
        if not cut:
            return True
        ids = batch.packet_ids()
        return all(map(self._at.__contains__, map(ids.__getitem__, cut)))

    def join(
        self,
        ids: Sequence[PacketId],
        datas: list[bytes],
        head_len: np.ndarray,
        full_len: np.ndarray,
    ) -> list[bytes]:
        """datas with each head (full_len > 0) completed from its whole copy."""
        cut = np.flatnonzero(full_len > 0)
        if not len(cut):
            return datas
        want = cut.tolist()
        locs = list(map(self._at.get, map(ids.__getitem__, want)))
        known = np.fromiter(map(operator.is_not, locs, itertools.repeat(None)), bool, len(locs))
        self.missing += len(locs) - int(known.sum())
        found = np.flatnonzero(known).tolist()
        if not found:
            return datas
        locs = list(map(locs.__getitem__, found))
        rows = cut[found]
        start = np.fromiter(map(_second, locs), dtype=np.int64, count=len(locs))
        lo = (start + head_len[rows]).tolist()
        hi = (start + full_len[rows]).tolist()
        segments = map(self._segments.__getitem__, map(_first, locs))
        tails = map(operator.getitem, segments, map(slice, lo, hi))
        out = list(datas)
        heads = map(out.__getitem__, rows.tolist())
        for i, joined in zip(rows.tolist(), map(bytes.__add__, heads, tails), strict=True):
            out[i] = joined
        return out
