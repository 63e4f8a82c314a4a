"""Each core table as a prefix of the worker's single state table.

Over Kafka all of a function's tables (its core's, the engine's `control`
table and the journal) live in one table: one changelog partition per input
partition then holds every write in order, which the journal relies on
(snf.guarantee.journal). The worker sees that table as a snf.core.tables.Store
of the partition of the event in hand: Faust's table behind
snf.runtime.worker.faust_table, or a dict in the unit tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from snf.core.tables import Store
from snf.guarantee.journal import table_key

__all__ = ["PrefixedStore"]


class PrefixedStore:
    """One core table inside the state table: a snf.core.tables.Store whose keys
    are prefixed by the table's name (`conn\\0<key>`)."""

    __slots__ = ("prefix", "table")

    def __init__(self, table: Store, name: str) -> None:
        self.table = table
        self.prefix = table_key(name, b"")

    def get(self, key: bytes) -> Any | None:
        return self.table.get(self.prefix + key)

    def set(self, key: bytes, value: Any) -> None:
        self.table.set(self.prefix + key, value)

    def delete(self, key: bytes) -> None:
        self.table.delete(self.prefix + key)

    def items(self) -> Iterable[tuple[bytes, Any]]:
        prefix, n = self.prefix, len(self.prefix)
        for key, value in self.table.items():
            if key.startswith(prefix):
                yield key[n:], value
