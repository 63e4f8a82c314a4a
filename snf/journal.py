"""Exactly-once effects over at-least-once Kafka: journal, undo/redo, lineage.

Pure logic (no Faust, no Kafka); snf.runtime.faust_app drives it. The why is
in docs/FAULT-TOLERANCE.md, "The mechanism". In short, per input partition:

- All state of a function is one changelog partition, written in order. Before
  an event's state writes, the shell writes one JournalEntry holding the
  event's offset, the *before*-images of the keys it is about to write, and
  its settled point: the offset before which every event's outputs are
  acknowledged. Nothing waits for acknowledgements on the way (the journal is
  a ring of slots, and only a full ring makes the worker wait).
- A new owner of the partition plans from the entries it restored
  (`Recovery`): it undoes every entry at or after the newest settled point,
  skips the events before it, and runs the rest again. Cores are
  deterministic, so a redo produces the same writes and outputs as the first
  run. Offsets are committed only up to a settled point found in a durable
  entry, so consumption never resumes past where the redo must begin.
- Every output message carries its lineage (origin function/partition, input
  offset, index among that event's outputs) in a Kafka header. A consumer
  keeps, per origin, the highest lineage it applied (`Watermarks`, saved in
  each journal entry), so outputs sent again by a redo are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from snf.batch import PacketBatch

__all__ = [
    "CAPTURE_ORIGIN",
    "JOURNAL_PREFIX",
    "JOURNAL_SLOTS",
    "LINEAGE_HEADER",
    "JournalEntry",
    "Lineage",
    "Recovery",
    "Watermarks",
    "drop_replayed",
    "journal_key",
    "journal_keys",
    "table_key",
    "untable_key",
]

LINEAGE_HEADER = "snf-lineage"
# Lineage origin of the capture agent's batches: "capture:<session>/<partition>", the
# offset the batch's highest packet seq (a replay's seqs rise along each partition).
CAPTURE_ORIGIN = "capture:"
# Entries live in a ring of JOURNAL_SLOTS keys per partition (each partition has its
# own RocksDB and changelog partition, so the keys repeat across partitions). A
# worker never has more than JOURNAL_SLOTS - 1 events between its settled point
# and its newest entry, so the ring always holds every entry a recovery needs.
JOURNAL_PREFIX = b"\x00journal:"
JOURNAL_SLOTS = 256


def journal_key(offset: int) -> bytes:
    return JOURNAL_PREFIX + b"%d" % (offset % JOURNAL_SLOTS)


def journal_keys() -> list[bytes]:
    return [JOURNAL_PREFIX + b"%d" % i for i in range(JOURNAL_SLOTS)]


_SEP = b"\x00"


def table_key(table: str, key: bytes) -> bytes:
    """Key of `key` of core table `table` in the function's single Faust table."""
    return table.encode() + _SEP + key


def untable_key(raw: bytes) -> tuple[str, bytes] | None:
    """(table, key) of a single-table key; None for the journal's own key."""
    table, sep, key = raw.partition(_SEP)
    if not sep or not table:
        return None
    return table.decode(), key


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


@dataclass
class JournalEntry:
    """Written before the state writes of the event at `offset`."""

    offset: int
    before: dict[bytes, Any]  # single-table key -> value before the event (None: absent)
    marks: Watermarks  # the input watermarks before the event
    lineage: Lineage | None  # the event's own lineage (None for foreign input)
    settled: int  # every event before this offset had its outputs acknowledged

    def marks_after(self) -> Watermarks:
        marks = self.marks.copy()
        marks.advance(self.lineage)
        return marks

    def to_json(self) -> dict[str, Any]:
        lin = self.lineage
        return {
            "o": self.offset,
            "s": self.settled,
            "b": [[k.hex(), v] for k, v in self.before.items()],
            "w": self.marks.to_json(),
            "l": None if lin is None else [lin.origin, lin.offset, lin.index],
        }

    def encode(self) -> str:
        # Stored as a JSON string: Faust's JSON codec would otherwise see bytes keys.
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | Mapping[str, Any]) -> JournalEntry:
        data = json.loads(raw) if isinstance(raw, str) else raw
        lin = data.get("l")
        return cls(
            offset=int(data["o"]),
            before={bytes.fromhex(k): v for k, v in data["b"]},
            marks=Watermarks.from_json(data.get("w")),
            lineage=None if lin is None else Lineage(lin[0], int(lin[1]), int(lin[2])),
            settled=int(data["s"]),
        )


@dataclass
class Recovery:
    """What a new owner of a partition does, from the journal entries it restored.

    Entry `e` promises: every event before `e.settled` had its outputs acknowledged
    when `e` was written. So the newest promise, S = max(settled), is where the
    work can restart: undo every entry at or after S, newest first (restoring its
    before-images, which also undoes a crashed event's partial writes), skip the
    events before S (their state is in, their outputs out), run S onwards again.
    An entry left by an earlier crashed owner past the newest one's events is
    undone too: cores are deterministic, so its before-images equal the state the
    newest owner had reached at that offset.
    """

    start: int  # S: the first offset to run again; earlier ones are skipped
    undo: dict[bytes, Any]  # single-table key -> its value before `start` (None: absent)
    marks: Watermarks  # the input watermarks before `start`
    undone: int = 0  # entries undone

    @classmethod
    def plan(cls, entries: Iterable[JournalEntry]) -> Recovery:
        entries = sorted(entries, key=lambda e: e.offset)
        if not entries:
            return cls(0, {}, Watermarks())
        start = max(e.settled for e in entries)
        redo = [e for e in entries if e.offset >= start]
        undo: dict[bytes, Any] = {}
        for e in redo:  # the oldest before-image of a key is its value before `start`
            for k, v in e.before.items():
                undo.setdefault(k, v)
        marks = redo[0].marks.copy() if redo else entries[-1].marks_after()
        return cls(start, undo, marks, len(redo))


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
