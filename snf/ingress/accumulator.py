"""Batcher: captured packets -> per-partition PacketBatches, shared by every producer.

The capture agent (Kafka) and the --local runner both batch through this
class, so the two modes see the same packet ids and the same partitioning.
Packets are parsed once per chunk (snf.packet.parse, fixed offsets), routed by the
FlowRouter (by flow, or by the key of the chain's first custom-keyed
function: snf.pipeline.routing), and appended to the pending batch of their partition; a batch is
cut when it reaches max_packets or max_bytes, or when the caller cuts them all (`cut_all`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from snf.core.contract import NetworkFunction
from snf.packet.batch import RECORD_DTYPE, PacketBatch
from snf.packet.capture_chunk import CaptureChunk
from snf.packet.capture_file import CapturedPacket
from snf.packet.fragments import FlowRouter
from snf.packet.headers import Headers
from snf.packet.parse import parse_buffer
from snf.pipeline.routing import key_hashes

__all__ = ["Batcher", "BatcherStats"]


@dataclass
class BatcherStats:
    packets: int = 0
    bytes: int = 0
    batches: int = 0
    per_partition: dict[int, int] = field(default_factory=dict)
    last_ts_ns: int = 0  # max packet time seen


class Batcher:
    def __init__(
        self,
        partitions: int,
        source_id: int,
        *,
        max_packets: int = 512,
        max_bytes: int = 512 * 1024,
        first_seq: int = 0,
        keyers: Sequence[NetworkFunction] = (),
        keep_headers: bool = False,
    ) -> None:
        self.partitions = partitions
        self.source_id = source_id
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.seq = first_seq
        self.router = FlowRouter()
        # The functions whose keys partition ingress (snf.pipeline.routing.plan, hop 0);
        # none: the flow hash.
        self.keyers = tuple(keyers)
        # Attach the routing parse to each batch, for a consumer in this process
        # (--local): it need not parse again. Over Kafka headers do not travel.
        self.keep_headers = keep_headers
        self.stats = BatcherStats()
        # One pending batch per partition (and so one link type at a time).
        self._pending: dict[int, _Pending] = {}
        self._next_batch_id = 0

    def add(self, packets: Sequence[CapturedPacket]) -> list[tuple[int, PacketBatch]]:
        """Route a list of packets; return the (partition, batch) pairs that filled up."""
        if not packets:
            return []
        chunk = CaptureChunk.from_packets(
            [p.ts_ns for p in packets],
            [p.orig_len for p in packets],
            [p.data for p in packets],
            [p.linktype for p in packets],
        )
        return self.add_chunk(chunk)

    def add_chunk(self, chunk: CaptureChunk) -> list[tuple[int, PacketBatch]]:
        """Route a chunk of packets; return the (partition, batch) pairs that filled up."""
        ready: list[tuple[int, PacketBatch]] = []
        kinds = chunk.linktype
        # Consecutive runs of one link type: a batch carries a single link type.
        bounds = [0, *(np.flatnonzero(kinds[1:] != kinds[:-1]) + 1).tolist(), len(chunk)]
        for start, end in itertools.pairwise(bounds):
            if end > start:
                run = chunk if end - start == len(chunk) else chunk.take(slice(start, end))
                ready.extend(self._add_run(int(kinds[start]), run))
        return ready

    def _add_run(self, linktype: int, run: CaptureChunk) -> list[tuple[int, PacketBatch]]:
        n = len(run)
        headers = parse_buffer(linktype, run.data, run.start, run.cap_len)
        hashes = None
        if self.keyers:
            # Keys read packet bytes (and times) only: a bare batch is enough.
            rec = np.zeros(n, dtype=RECORD_DTYPE)
            rec["ts_ns"] = run.ts_ns
            rec["cap_len"] = run.cap_len
            batch = PacketBatch(linktype, rec, run.payload())
            hashes = key_hashes(self.keyers, batch, headers)
        parts = np.asarray(
            self.router.route(headers, run.ts_ns, self.partitions, hashes), dtype=np.int64
        )
        segment = _Segment(run, self.seq, headers if self.keep_headers else None)
        # Stable grouping by partition keeps capture order within each one.
        order = np.argsort(parts, kind="stable")
        cuts = np.flatnonzero(np.diff(parts[order])) + 1
        ready: list[tuple[int, PacketBatch]] = []
        for group in np.split(order, cuts):
            if len(group):
                ready.extend(self._append(int(parts[group[0]]), linktype, segment, group))
        stats = self.stats
        for part, count in enumerate(np.bincount(parts, minlength=self.partitions).tolist()):
            if count:
                stats.per_partition[part] = stats.per_partition.get(part, 0) + count
        stats.packets += n
        stats.last_ts_ns = max(stats.last_ts_ns, int(run.ts_ns.max()))
        stats.bytes += int(run.cap_len.sum())
        self.seq += n
        return ready

    def _append(
        self, part: int, linktype: int, segment: _Segment, index: np.ndarray
    ) -> list[tuple[int, PacketBatch]]:
        """Add one partition's packets of a run, cutting at max_packets or max_bytes."""
        ready = []
        pending = self._pending.get(part)
        if pending is not None and pending.linktype != linktype:
            # One link type per batch: cut the other one first, so the
            # partition still receives its packets in capture order.
            ready.append(self._cut(part))
            pending = None
        sizes = np.cumsum(segment.run.cap_len[index])  # bytes up to and including each packet
        done = 0
        while done < len(index):
            if pending is None:
                pending = self._pending[part] = _Pending(linktype)
            # The batch closes at the first packet that reaches either limit.
            base = int(sizes[done - 1]) if done else 0
            by_bytes = int(np.searchsorted(sizes, base + self.max_bytes - pending.bytes))
            take = min(self.max_packets - pending.count, by_bytes + 1 - done, len(index) - done)
            pending.add(segment, index[done : done + take], int(sizes[done + take - 1]) - base)
            done += take
            if pending.count >= self.max_packets or pending.bytes >= self.max_bytes:
                ready.append(self._cut(part))
                pending = None
        return ready

    def _cut(self, part: int) -> tuple[int, PacketBatch]:
        pending = self._pending.pop(part)
        batch = pending.batch(self.source_id, self._next_batch_id)
        self._next_batch_id += 1
        self.stats.batches += 1
        return part, batch

    @property
    def pending(self) -> bool:
        """Whether any partition has a batch being filled."""
        return bool(self._pending)

    def cut_all(self) -> list[tuple[int, PacketBatch]]:
        """Cut every pending batch, in partition order."""
        return [self._cut(part) for part in sorted(self._pending)]


@dataclass(slots=True)
class _Segment:
    """A run of one link type, and the seq of its first packet."""

    run: CaptureChunk
    first_seq: int
    headers: Headers | None = None


@dataclass
class _Pending:
    """A partition's batch being filled: pieces of runs, in capture order."""

    linktype: int
    count: int = 0
    bytes: int = 0
    pieces: list[tuple[_Segment, np.ndarray]] = field(default_factory=list)

    def add(self, segment: _Segment, index: np.ndarray, nbytes: int) -> None:
        self.pieces.append((segment, index))
        self.count += len(index)
        self.bytes += nbytes

    def batch(self, source_id: int, batch_id: int) -> PacketBatch:
        rec = np.zeros(self.count, dtype=RECORD_DTYPE)
        at = 0
        payload = []
        heads = [s.headers.take(i.tolist()) for s, i in self.pieces if s.headers is not None]
        for segment, index in self.pieces:
            run, end = segment.run, at + len(index)
            rec["ts_ns"][at:end] = run.ts_ns[index]
            rec["orig_len"][at:end] = run.orig_len[index]
            rec["cap_len"][at:end] = run.cap_len[index]
            rec["seq"][at:end] = index + segment.first_seq
            payload.append(run.payload(index))
            at = end
        batch = PacketBatch(
            self.linktype, rec, b"".join(payload), (source_id,), ("",), batch_id=batch_id
        )
        if heads and len(heads) == len(self.pieces):
            batch.headers = Headers.concat(heads)
        return batch
