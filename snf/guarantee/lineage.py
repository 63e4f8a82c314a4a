"""Lineage: where every output message came from, so consumers skip what a redo resends.

Every output message carries its lineage (origin function/partition, input
offset, index among that event's outputs) in the `snf-lineage` Kafka header.
A consumer keeps, per origin, the highest lineage it applied (`Watermarks`,
saved in each journal entry by a worker, kept in memory by the sink), so
outputs sent again by a redo after a crash are skipped. The capture agent's
batches carry the lineage of its replay session, so the first function drops
the packets a resumed replay sends again (`drop_replayed`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from snf.packet.batch import PacketBatch

__all__ = ["CAPTURE_ORIGIN", "LINEAGE_HEADER", "Lineage", "Watermarks", "drop_replayed"]

LINEAGE_HEADER = "snf-lineage"
# Lineage origin of the capture agent's batches: "capture:<session>/<partition>", the
# offset the batch's highest packet seq (a replay's seqs rise along each partition).
CAPTURE_ORIGIN = "capture:"


@dataclass(frozen=True, order=True)
class Lineage:
    """Where an output message came from: one event of one origin partition."""

    origin: str  # "function/partition", or "capture/<partition>" at ingress
    offset: int  # the input offset of the event that produced it
    index: int  # its position among that event's output messages

    def header(self) -> tuple[str, bytes]:
        return LINEAGE_HEADER, f"{self.origin}|{self.offset}|{self.index}".encode()

    @classmethod
    def from_headers(
        cls, headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None
    ) -> Lineage | None:
        if not headers:
            return None
        items = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in items:
            if name == LINEAGE_HEADER and value:
                origin, offset, index = bytes(value).decode().rsplit("|", 2)
                return cls(origin, int(offset), int(index))
        return None


@dataclass
class Watermarks:
    """Per origin, the highest (offset, index) applied on one input partition.

    One origin partition has one writer at a time, which writes each of its
    destination partitions in order, so anything at or below the mark is a
    message sent again by a redo (or by a zombie that already got fenced)."""

    marks: dict[str, tuple[int, int]] = field(default_factory=dict)

    def is_new(self, lineage: Lineage | None) -> bool:
        if lineage is None:
            return True  # not from an snf stage (e.g. a foreign producer): no dedup
        mark = self.marks.get(lineage.origin)
        return mark is None or (lineage.offset, lineage.index) > mark

    def advance(self, lineage: Lineage | None) -> None:
        if lineage is not None:
            self.marks[lineage.origin] = (lineage.offset, lineage.index)

    def copy(self) -> Watermarks:
        return Watermarks(dict(self.marks))

    def to_json(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in self.marks.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Watermarks:
        return cls({k: (int(v[0]), int(v[1])) for k, v in (data or {}).items()})


def drop_replayed(batch: PacketBatch, lineage: Lineage | None, marks: Watermarks) -> PacketBatch:
    """A capture agent's batch without the packets its session already delivered to
    this partition (seq at or below the mark): what a resumed replay sends again."""
    if lineage is None or not lineage.origin.startswith(CAPTURE_ORIGIN):
        return batch
    mark = marks.marks.get(lineage.origin)
    if mark is None:
        return batch
    keep = np.flatnonzero(batch.records["seq"] > mark[0])
    return batch if len(keep) == len(batch) else batch.select(keep.tolist())
