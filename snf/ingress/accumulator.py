"""Batcher: captured packets -> per-partition PacketBatches, shared by every producer.

The capture agent (Kafka) and the --local runner both batch through this
class, so the two modes see the same packet ids and the same partitioning.
Packets are parsed once per chunk (snf.packet.parse, fixed offsets), routed by the
FlowRouter (by flow, or by the key of the chain's first custom-keyed
function: snf.pipeline.routing), and appended to the pending batch of their partition; a batch is
cut when it reaches max_packets or max_bytes, or when the caller cuts them all (`cut_all`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from snf.core.contract import NetworkFunction
from snf.packet.batch import RECORD_DTYPE, PacketBatch, PacketRow
from snf.packet.capture_file import CapturedPacket
from snf.packet.fragments import FlowRouter
from snf.packet.parse import parse_batch
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
        self.stats = BatcherStats()
        # One pending batch per partition (and so one link type at a time).
        self._pending: dict[int, list[PacketRow]] = {}
        self._pending_bytes: dict[int, int] = {}
        self._pending_linktype: dict[int, int] = {}
        self._next_batch_id = 0

    def add(self, packets: Sequence[CapturedPacket]) -> list[tuple[int, PacketBatch]]:
        """Route a chunk of packets; return the (partition, batch) pairs that filled up."""
        ready: list[tuple[int, PacketBatch]] = []
        start = 0
        # Consecutive runs of one link type: a batch carries a single link type.
        while start < len(packets):
            linktype = packets[start].linktype
            end = start + 1
            while end < len(packets) and packets[end].linktype == linktype:
                end += 1
            ready.extend(self._add_run(linktype, packets[start:end]))
            start = end
        return ready

    def _add_run(
        self, linktype: int, run: Sequence[CapturedPacket]
    ) -> list[tuple[int, PacketBatch]]:
        datas = [p.data for p in run]
        ts = [p.ts_ns for p in run]
        headers = parse_batch(linktype, datas)
        hashes = None
        if self.keyers:
            # Keys read packet bytes (and times) only: a bare batch is enough.
            rec = np.zeros(len(run), dtype=RECORD_DTYPE)
            rec["ts_ns"] = ts
            rec["cap_len"] = [len(d) for d in datas]
            batch = PacketBatch(linktype, rec, b"".join(datas))
            hashes = key_hashes(self.keyers, batch, headers)
        parts = self.router.route(headers, ts, self.partitions, hashes)
        ready = []
        seq = self.seq
        src = self.source_id
        pending = self._pending
        sizes = self._pending_bytes
        linktypes = self._pending_linktype
        per_part = self.stats.per_partition
        for p, pkt, part in zip(run, datas, parts, strict=True):
            rows = pending.get(part)
            if rows is not None and linktypes[part] != linktype:
                # One link type per batch: cut the other one first, so the
                # partition still receives its packets in capture order.
                ready.append(self._cut(part))
                rows = None
            if rows is None:
                rows = pending[part] = []
                sizes[part] = 0
                linktypes[part] = linktype
            rows.append((p.ts_ns, p.orig_len, pkt, src, seq, ""))
            seq += 1
            sizes[part] += len(pkt)
            per_part[part] = per_part.get(part, 0) + 1
            if len(rows) >= self.max_packets or sizes[part] >= self.max_bytes:
                ready.append(self._cut(part))
        self.stats.packets += len(run)
        self.stats.last_ts_ns = max(self.stats.last_ts_ns, max(ts))
        self.stats.bytes += sum(len(d) for d in datas)
        self.seq = seq
        return ready

    def _cut(self, part: int) -> tuple[int, PacketBatch]:
        rows = self._pending.pop(part)
        self._pending_bytes.pop(part)
        linktype = self._pending_linktype.pop(part)
        batch = PacketBatch.from_rows(linktype, rows, batch_id=self._next_batch_id)
        self._next_batch_id += 1
        self.stats.batches += 1
        return part, batch

    def cut_all(self) -> list[tuple[int, PacketBatch]]:
        """Cut every pending batch, in partition order."""
        return [self._cut(part) for part in sorted(self._pending)]
