"""Each core table as a prefix of the worker's single state table.

Over Kafka all of a function's tables (its core's, the engine's `control`
table and the journal) live in one table: one changelog partition per input
partition then holds every write in order, which the journal relies on
(snf.guarantee.journal). The worker sees that table as a snf.core.tables.Store
of the partition of the event in hand: Faust's table behind
snf.runtime.worker.faust_table, or a dict in the unit tests.

Both count what goes through them in plain integers (a few ns each), which
snf.runtime.worker.metrics reads only when /metrics is scraped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from snf.core.tables import Store
from snf.guarantee.journal import table_key

__all__ = ["CountingStore", "PrefixedStore"]


class PrefixedStore:
    """One core table inside the state table: a snf.core.tables.Store whose keys
    are prefixed by the table's name (`conn\\0<key>`). Counts the core's reads and
    the writes applied (BatchState reads a key once and writes it once per batch)."""

    __slots__ = ("prefix", "reads", "table", "writes")

    def __init__(self, table: Store, name: str) -> None:
        self.table = table
        self.prefix = table_key(name, b"")
        self.reads = 0
        self.writes = 0

    def get(self, key: bytes) -> Any | None:
        self.reads += 1
        return self.table.get(self.prefix + key)

    def peek(self, key: bytes) -> Any | None:
        """A read that is not the core's (the journal's before-image): not counted."""
        return self.table.get(self.prefix + key)

    def set(self, key: bytes, value: Any) -> None:
        self.writes += 1
        self.table.set(self.prefix + key, value)

    def delete(self, key: bytes) -> None:
        self.writes += 1
        self.table.delete(self.prefix + key)

    def items(self) -> Iterable[tuple[bytes, Any]]:
        prefix, n = self.prefix, len(self.prefix)
        for key, value in self.table.items():
            if key.startswith(prefix):
                yield key[n:], value


class CountingStore:
    """The state table itself, counting its writes: over Faust each set or delete
    is one changelog record (core tables, journal entries, undo, checkpoints)."""

    __slots__ = ("table", "writes")

    def __init__(self, table: Store) -> None:
        self.table = table
        self.writes = 0

    def get(self, key: bytes) -> Any | None:
        return self.table.get(key)

    def set(self, key: bytes, value: Any) -> None:
        self.writes += 1
        self.table.set(key, value)

    def delete(self, key: bytes) -> None:
        self.writes += 1
        self.table.delete(key)

    def items(self) -> Iterable[tuple[bytes, Any]]:
        return self.table.items()
