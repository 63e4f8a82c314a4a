"""FaustStateTable: the worker's StateTable over one Faust table (RocksDB, changelog).

Faust takes the partition of a read or write from the current event, so the
table is only valid inside stream iteration, or inside
faust_compat.standing_in_for_event for records the worker reads itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from snf.runtime.worker import faust_compat

__all__ = ["FaustStateTable"]


class FaustStateTable:
    __slots__ = ("table",)

    def __init__(self, table: Any) -> None:
        self.table = table  # faust.Table(key_type=bytes), JSON values

    def get(self, key: bytes) -> Any | None:
        return self.table.get(key)

    def set(self, key: bytes, value: Any) -> None:
        self.table[key] = value

    def delete(self, key: bytes) -> None:
        with contextlib.suppress(KeyError):
            del self.table[key]

    def items(self) -> Iterator[tuple[bytes, Any]]:
        return faust_compat.partition_items(self.table, faust_compat.current_partition())
