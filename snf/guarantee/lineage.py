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

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from snf.guarantee.control_auth import AUTH_HEADER, sign, verify
from snf.packet.batch import PacketBatch

__all__ = [
    "CAPTURE_ORIGIN",
    "LINEAGE_HEADER",
    "MAX_LINEAGE_VALUE",
    "Lineage",
    "LineageError",
    "Watermarks",
    "drop_replayed",
    "lineage_value",
    "signed",
]

LINEAGE_HEADER = "snf-lineage"
# Lineage origin of the capture agent's batches: "capture:<session>/<partition>", the
# offset the batch's highest packet seq (a replay's seqs rise along each partition).
CAPTURE_ORIGIN = "capture:"
# Bounds on what a header may claim (anyone who can write a topic can write one):
# offsets and seqs stay below 2^53, far beyond any real run and exact in JSON.
MAX_LINEAGE_BYTES = 256
MAX_LINEAGE_VALUE = 1 << 53
MAX_CAPTURE_ORIGINS = 32  # capture sessions remembered per input partition
_ORIGIN = re.compile(r"(capture:[A-Za-z0-9._-]{1,64}|[a-z][a-z0-9-]{0,47})/[0-9]{1,5}")
_DIGITS = re.compile(r"[0-9]{1,16}")


@dataclass(frozen=True, order=True)
class Lineage:
    """Where an output message came from: one event of one origin partition."""

    origin: str  # "function/partition", or "capture/<partition>" at ingress
    offset: int  # the input offset of the event that produced it
    index: int  # its position among that event's output messages

    def header(self) -> tuple[str, bytes]:
        return LINEAGE_HEADER, f"{self.origin}|{self.offset}|{self.index}".encode()

    def headers(self, value: bytes, key: bytes | None) -> list[tuple[str, bytes]]:
        """The headers that carry this lineage on `value`: with a control key, also
        its `snf-auth` tag, without which readers do not trust it (control_auth)."""
        header = self.header()
        if key is None:
            return [header]
        return [header, (AUTH_HEADER, sign(key, header[1], value))]

    @classmethod
    def from_headers(
        cls, headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None
    ) -> Lineage | None:
        """The lineage a message's headers carry, None without one.

        Raises LineageError on a malformed one: headers come from anyone who can
        write the topic, so the value is bounded before it is parsed."""
        value = lineage_value(headers)
        return None if value is None else cls.parse(value)

    @classmethod
    def parse(cls, value: bytes) -> Lineage:
        if len(value) > MAX_LINEAGE_BYTES:
            raise LineageError(
                f"lineage header of {len(value)} bytes (at most {MAX_LINEAGE_BYTES})"
            )
        try:
            origin, offset, index = bytes(value).decode("ascii").rsplit("|", 2)
        except (UnicodeDecodeError, ValueError):
            raise LineageError("lineage header is not ASCII 'origin|offset|index'") from None
        if not _ORIGIN.fullmatch(origin) or not (
            _DIGITS.fullmatch(offset) and _DIGITS.fullmatch(index)
        ):
            raise LineageError(f"lineage header {value[:80]!r} is not 'origin|offset|index'")
        lineage = cls(origin, int(offset), int(index))
        if lineage.offset >= MAX_LINEAGE_VALUE or lineage.index >= MAX_LINEAGE_VALUE:
            raise LineageError(f"lineage {lineage.offset}|{lineage.index} out of range")
        return lineage


class LineageError(ValueError):
    """A malformed snf-lineage header."""


def signed(
    headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None, value: bytes, key: bytes
) -> bool:
    """Whether `headers` carry a lineage whose `snf-auth` tag is valid for `value`."""
    raw = lineage_value(headers)
    return raw is not None and verify(key, raw, bytes(value), lineage_value(headers, AUTH_HEADER))


def lineage_value(
    headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None, name: str = LINEAGE_HEADER
) -> bytes | None:
    """The raw value of header `name` (the first), None if absent or empty."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        if key == name and value:
            return bytes(value)
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
        if lineage is None:
            return
        marks, origin = self.marks, lineage.origin
        if origin not in marks and origin.startswith(CAPTURE_ORIGIN):
            # Every replay is a new session: keep the newest few, so the marks (in
            # every journal entry) stay small. A replay resumed after that many
            # newer ones may deliver some packets twice.
            sessions = [o for o in marks if o.startswith(CAPTURE_ORIGIN)]
            for old in sessions[: max(0, len(sessions) - MAX_CAPTURE_ORIGINS + 1)]:
                del marks[old]
        marks[origin] = (lineage.offset, lineage.index)

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
