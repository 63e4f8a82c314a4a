"""Exactly-once effects over at-least-once Kafka: the journal, undo and redo.

Pure logic (no Faust, no Kafka); snf.runtime.worker.processor drives it. The why is
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
- Every output message carries its lineage (snf.guarantee.lineage), so outputs
  sent again by a redo are skipped downstream; each entry saves the input
  watermarks, so a new owner skips what its predecessor already applied.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from snf.guarantee.lineage import Lineage, Watermarks

__all__ = [
    "JOURNAL_PREFIX",
    "JOURNAL_SLOTS",
    "JournalEntry",
    "Recovery",
    "journal_key",
    "journal_keys",
    "table_key",
    "untable_key",
]

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
